"""The Redis layout shared by the API and the workers, and the typed job record.

Per job, each with the result time to live:

* ``{p}:job:{id}`` hash: ``status``, ``spec`` (a :class:`~contract.spec.JobSpec` as JSON),
  ``step``, ``total``, ``created_at`` / ``started_at`` / ``finished_at`` / ``heartbeat_at``
  / ``sent_at`` (epoch seconds), ``worker``, ``attempts``, ``cancel``, ``error``, ``seconds``,
  ``check`` (the check of the samples, per class or of points, a :class:`DigitCheck` as JSON,
  written by the worker just before the job succeeds);
* ``{p}:events:{id}`` stream: entries ``event`` (type) and ``data`` (JSON), ids used as SSE ids;
* ``{p}:png:{id}``, ``{p}:gif:{id}``: the results; ``{p}:images:{id}`` hash of each sample's own
  PNG by its index (image models only; the OpenAI-compatible images API serves them);
* ``{p}:webhook:{id}``: the job's webhook delivery, if it asked for one (:mod:`contract.webhooks`).

Per client: ``{p}:idempotency:{scope}:{key}`` hash, the job an ``Idempotency-Key`` made (its
id, the request's fingerprint and its queue position then), for ``DDPM_IDEMPOTENCY_TTL_S``.

Shared: ``{p}:queue`` (sorted set of queued ids by submission time, for queue positions and
the queue cap), ``{p}:running`` (set of running ids, for recovering jobs of dead workers) and
``{p}:workers`` (sorted set of worker names by last heartbeat, for ``/readyz``); per worker,
``{p}:worker-stats:{name}`` (hash of its engine's counters, while it reports; its field
``row_seconds`` holds each model's recent seconds per forward row of its engine's ticks, by
weights, for ``GET /models``; its field ``queues`` the queues it consumes, for ``/readyz``).

Every status change goes through one of the scripts in :mod:`contract.transitions`.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contract.spec import JobSpec

CHECK_FIELD = "check"
TIMINGS_FIELD = "timings"  # the worker's phases of a succeeded job (JobTimings as JSON)
ROW_SECONDS_FIELD = "row_seconds"  # of a worker-stats hash: {weights_sha256: seconds per forward row} as JSON
QUEUES_FIELD = "queues"  # of a worker-stats hash: the broker queues the worker consumes, comma-separated
WEBHOOK_FIELD = "webhook_url"  # read by the transition scripts: a job that ends with it gets a delivery


class JobStatus(str, Enum):
    """A job's life: queued -> running -> one terminal status (running may go back to queued
    when its worker dies)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
TERMINAL_EVENTS = frozenset(status.value for status in TERMINAL)


def worker_name(pid: int, host: str | None = None) -> str:
    """The name a worker process reports under (``host:pid``), unique per process: a restarted
    worker never inherits the jobs its predecessor held."""
    return f"{host or socket.gethostname()}:{pid}"


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "ddpm"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    def result(self, job_id: str, kind: str) -> str:
        """``kind`` is ``png`` or ``gif``."""
        if kind not in ("png", "gif"):
            raise ValueError(f"unknown result kind {kind!r}")
        return f"{self.prefix}:{kind}:{job_id}"

    def images(self, job_id: str) -> str:
        """Each sample's PNG by index (hash fields "0", "1", ...)."""
        return f"{self.prefix}:images:{job_id}"

    def idempotency(self, scope: str, key_digest: str) -> str:
        """The job an Idempotency-Key made, under the caller's ``scope`` (both digests, never the key)."""
        return f"{self.prefix}:idempotency:{scope}:{key_digest}"

    @property
    def queue(self) -> str:
        return f"{self.prefix}:queue"

    @property
    def running(self) -> str:
        return f"{self.prefix}:running"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def worker_stats(self, worker: str) -> str:
        return f"{self.prefix}:worker-stats:{worker}"


CheckKind = Literal["classifier", "points"]


class SampleCheck(BaseModel):
    """What the evaluation classifier reads in one final sample."""

    model_config = ConfigDict(extra="ignore")

    index: int = Field(description="the sample's place in the PNG grid: row by row, from 0")
    label: int = Field(description="the class the classifier reads: its index among the model's classes")
    class_name: str = Field(description="the name of that class")
    digit: int | None = Field(
        None,
        description="the same as label (named when every model drew digits): the digit read for a digit model "
        "such as MNIST, whose classes are the digits 0-9",
    )
    confidence: float = Field(description="the classifier's softmax probability of that class")
    seed: int = Field(description="the seed of the sample shown (request it alone with this seed and n = 1)")
    matches: bool | None = Field(description="whether it reads as the class asked for; null without a class")
    redrawn: int = Field(
        0, description="how often it was drawn again (0: the first draw); its seed is seed + n * redrawn + index"
    )

    @model_validator(mode="before")
    @classmethod
    def _older_records(cls, data: Any) -> Any:
        """Records written before the per-class check name only the digit read."""
        if isinstance(data, dict) and "label" not in data and isinstance(data.get("digit"), int):
            data = {**data, "label": data["digit"], "class_name": data.get("class_name") or str(data["digit"])}
        return data


class PointsCheck(BaseModel):
    """How a 2D point model's final samples fit its data: the checkerboard's fraction on black squares."""

    model_config = ConfigDict(extra="ignore")

    measure: str = Field(description="what is measured, e.g. 'on_black_squares' (the checkerboard's squares)")
    fraction: float = Field(description="the fraction of the final samples the measure counts (higher is better)")
    count: int = Field(description="samples counted")
    total: int = Field(description="samples measured")
    reference: float = Field(description="the real data's fraction (1.0: every training point lies on them)")
    chance: float = Field(description="the fraction of points spread evenly over the square [-1, 1]^2")


class DigitCheck(BaseModel):
    """The check of a job's final samples, of one of two kinds (``kind``):

    * ``classifier``, the per-class check: an evaluation classifier paired to the model labels
      every final sample in the PNG's order (``samples``); a mismatch may be the classifier's error
      as well as the model's. Each sample says the class read by index (``label``, and ``digit``
      as records before named it) and by name (``class_name``);
    * ``points``: a 2D point model's samples measured against its data (``points``).

    ``skipped`` says why a job was not checked (no classifier or measure for its model); the
    other fields are then empty. The name stays ``DigitCheck``, as records and clients know it."""

    model_config = ConfigDict(extra="ignore")

    skipped: str | None = Field(None, description="why the samples were not checked; null when they were")
    kind: CheckKind | None = Field(
        None, description="classifier: each sample's class read; points: a measure of the points; null when skipped"
    )
    classifier: str | None = Field(None, description="the classifier's name (its file stem)")
    classifier_sha256: str | None = Field(None, description="SHA-256 of the classifier file")
    classifier_test_accuracy: float | None = Field(
        None, description="the classifier's accuracy on its held-out test images (MNIST's test set), from its file"
    )
    asked: int | None = Field(None, description="the class (index) asked for; null for unconditional samples")
    asked_class: str | None = Field(None, description="the name of the class asked for")
    matches: int | None = Field(None, description="final samples read as the class asked; null without a class")
    first_draw_matches: int | None = Field(None, description="samples of the first draw read as the class asked")
    redraw_rounds: int = Field(0, description="redraw rounds the job allowed (0: mismatches are kept)")
    rounds_run: int = Field(0, description="redraw rounds run")
    redrawn: int = Field(0, description="samples drawn again at least once")
    seconds: float | None = Field(None, description="time spent checking")
    samples: list[SampleCheck] = Field(default_factory=list, description="one per sample, in the PNG's order")
    points: PointsCheck | None = Field(None, description="the measure of a point model's samples (kind points)")

    @model_validator(mode="before")
    @classmethod
    def _older_records(cls, data: Any) -> Any:
        """Records written before checks had kinds were all classifier checks (or skipped)."""
        if isinstance(data, dict) and data.get("kind") is None and data.get("classifier") and not data.get("skipped"):
            data = {**data, "kind": "classifier"}
        return data


class JobTimings(BaseModel):
    """Where a succeeded job's time went on its worker, in seconds (from its claim to its
    results; storing them and the queue before are not in it)."""

    model_config = ConfigDict(frozen=True)

    load_s: float = Field(description="finding the model's engine (loading the model the first time)")
    generate_s: float = Field(description="the engine's steps of the first draw, shared with the jobs beside it")
    check_s: float = Field(description="the check of the samples, redraws included")
    encode_s: float = Field(description="the PNG, the GIF and each sample's own PNG")


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: the typed view of its hash."""

    id: str
    status: JobStatus
    spec: JobSpec
    step: int
    total: int
    attempts: int
    cancel_requested: bool
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    worker: str | None = None
    error: str | None = None
    seconds: float | None = None
    check: DigitCheck | None = None
    webhook_url: str | None = None
    timings: JobTimings | None = None

    @classmethod
    def from_hash(cls, job_id: str, fields: dict[str, str]) -> JobRecord:
        """Parse a job hash (as read with ``decode_responses=True``)."""
        return cls(
            id=job_id,
            status=JobStatus(fields["status"]),
            spec=JobSpec.from_json(fields["spec"]),
            step=int(fields.get("step") or 0),
            total=int(fields.get("total") or 0),
            attempts=int(fields.get("attempts") or 0),
            cancel_requested=fields.get("cancel") == "1",
            created_at=float(fields.get("created_at") or 0.0),
            started_at=_float(fields.get("started_at")),
            finished_at=_float(fields.get("finished_at")),
            heartbeat_at=_float(fields.get("heartbeat_at")),
            worker=fields.get("worker") or None,
            error=fields.get("error") or None,
            seconds=_float(fields.get("seconds")),
            check=_check(fields.get(CHECK_FIELD)),
            webhook_url=fields.get(WEBHOOK_FIELD) or None,
            timings=_parsed(JobTimings, fields.get(TIMINGS_FIELD)),
        )


def new_job_fields(spec: JobSpec, now: float, webhook_url: str | None = None) -> dict[str, str]:
    """The hash of a job just submitted (with the URL its end is announced to, if any)."""
    fields = {
        "status": JobStatus.QUEUED.value,
        "spec": spec.to_json(),
        "step": "0",
        "total": str(spec.steps),
        "attempts": "0",
        "created_at": repr(now),
        "sent_at": repr(now),
    }
    if webhook_url:
        fields[WEBHOOK_FIELD] = webhook_url
    return fields


def event_data(data: dict[str, Any]) -> str:
    """An event's JSON, compact."""
    return json.dumps(data, separators=(",", ":"))


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def _check(value: str | None) -> DigitCheck | None:
    return _parsed(DigitCheck, value)


def _parsed(model: type[BaseModel], value: str | None) -> Any:
    if not value:
        return None
    try:
        return model.model_validate_json(value)
    except ValidationError:  # an unreadable field never hides the job
        return None


def encode_row_seconds(seconds: dict[str, float]) -> str:
    """A worker's recent seconds per forward row by model weights, for its stats hash."""
    return json.dumps({key: round(value, 6) for key, value in seconds.items()}, sort_keys=True)


def decode_row_seconds(text: str | None) -> dict[str, float]:
    """:func:`encode_row_seconds`' value back (empty for a missing or garbled field)."""
    try:
        values = json.loads(text or "{}")
    except ValueError:
        return {}
    if not isinstance(values, dict):
        return {}
    return {str(key): float(value) for key, value in values.items() if isinstance(value, (int, float)) and value > 0}


def encode_queues(queues: list[str]) -> str:
    """The queues a worker consumes, for its stats hash."""
    return ",".join(sorted(queues))


def decode_queues(text: str | None) -> set[str]:
    """:func:`encode_queues`' value back (empty for a missing field: a worker that has not said)."""
    return {name for name in (text or "").split(",") if name}
