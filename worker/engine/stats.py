"""The engine's counters (:class:`EngineStats`), a plain dataclass: no torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineStats:
    """Counters since the engine started (a snapshot from :meth:`Engine.stats`).

    ``rows`` counts real forward rows (samples plus unconditional copies, no padding);
    ``mean_rows_per_tick`` is the mean batch, ``occupancy`` that over ``max_batch``.
    """

    max_batch: int
    ticks: int = 0
    forward_calls: int = 0
    rows: int = 0
    job_steps: int = 0
    busy_seconds: float = 0.0
    forward_seconds: float = 0.0  # of busy_seconds, inside the forward (on a GPU: launching it)
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    queued: int = 0
    running: int = 0
    running_rows: int = 0
    padded_rows: int = 0
    buckets_compiled: int = 0  # forward buckets that run compiled code (the others run eagerly)
    buckets_total: int = 0
    host_copies: int = 0  # device-to-host copies of job outputs: at most one per tick
    host_bytes: int = 0  # bytes those copies carried
    row_seconds: float = 0.0  # a tick's seconds per forward row lately: a moving average (0 before the first)

    @property
    def mean_rows_per_tick(self) -> float:
        return self.rows / self.ticks if self.ticks else 0.0

    @property
    def occupancy(self) -> float:
        return self.mean_rows_per_tick / self.max_batch

    @property
    def host_seconds(self) -> float:
        """Busy seconds outside the forward: the tick's own cost (planning, the sampler step,
        the outputs; on a CPU everything but the model)."""
        return max(self.busy_seconds - self.forward_seconds, 0.0)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.busy_seconds if self.busy_seconds else 0.0
