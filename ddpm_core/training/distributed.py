"""Data-parallel training on torch.distributed: joining the run, rank helpers, one-line failures.

``torchrun`` starts one process per device (on one machine, or on several through its
rendezvous) and tells each its place in the environment: ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address. :func:`init_distributed` reads it and joins the
process group: NCCL when the process trains on a GPU (``cuda:LOCAL_RANK``), gloo on CPUs.
Without torchrun (no ``WORLD_SIZE``), or with a world of one, the run is a single process and
nothing here touches torch.distributed.

Every collective operation waits at most ``timeout_s`` for the other ranks. A rank that fails
ends its process; torchrun then stops the others, and a rank left waiting on one that hangs
ends with a one-line :class:`~ddpm_core.errors.DistributedError` instead of waiting forever.
Work only rank 0 does (reading the run directory, writing checkpoints and sample grids) must
finish within that timeout, which is why its default is generous.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist

from ddpm_core.defaults import DEFAULT_DIST_TIMEOUT_S
from ddpm_core.device import pick_device
from ddpm_core.errors import DDPMError, DistributedError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = DEFAULT_DIST_TIMEOUT_S
T = TypeVar("T")


class RemoteFailure(DistributedError):
    """Raised on the other ranks when work rank 0 did for all of them failed; rank 0 reports the
    error itself, so these ranks end quietly (exit status 2) instead of repeating it."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run: rank ``rank`` of ``world_size``, training on ``device``.

    A world of one (the default) is a plain single-process run: every helper is a no-op.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def enabled(self) -> bool:
        """Whether other ranks take part (a process group is joined)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that reads and writes the run directory."""
        return self.rank == 0

    def describe(self) -> str:
        """'rank 1 of 2' (for messages)."""
        return f"rank {self.rank} of {self.world_size}"

    def shard(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` items (``count`` divisible by the world size)."""
        share = count // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over the ranks (every rank must call it at the same point)."""
        if not self.enabled:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total)  # SUM: gloo has no AVG
        return total / self.world_size

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.enabled:
            dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (pickled between this run's own processes only)."""
        if not self.enabled:
            return value
        holder = [value if self.is_main else None]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def from_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` run by rank 0 alone (e.g. reading the run directory), its result on every rank.

        A user error there (:class:`DDPMError`, ``ValueError``, ``OSError``) is raised on rank 0,
        which reports it; the other ranks raise :class:`RemoteFailure` and end quietly.
        """
        if not self.enabled:
            return compute()
        if self.is_main:
            try:
                value = compute()
            except (DDPMError, ValueError, OSError):
                self.broadcast((False, None))
                raise
            return self.broadcast((True, value))[1]
        succeeded, value = self.broadcast(None)
        if not succeeded:
            raise RemoteFailure("rank 0 failed; it reports why")
        return value

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on rank 0 first, then on the others (e.g. reading the data once).

        When rank 0 fails in the block, the others never run it: they raise :class:`RemoteFailure`.
        The block must not use collective operations.
        """
        if not self.enabled:
            yield
            return
        if self.is_main:
            try:
                yield
            except BaseException:
                self.broadcast(False)
                raise
            self.broadcast(True)
            return
        if not self.broadcast(None):
            raise RemoteFailure("rank 0 failed; it reports why")
        yield

    def close(self) -> None:
        """Leave the process group (if one was joined)."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or anything else setting its environment)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def rank_device(name: str | None, local_rank: int) -> torch.device:
    """The device of the process with ``local_rank`` on its machine: ``cuda:LOCAL_RANK`` for CUDA.

    Raises:
        DistributedError: a single GPU (``cuda:N``) named for every rank, or more processes on this
            machine than it has GPUs.
    """
    device = pick_device(name)
    if device.type != "cuda":
        return device
    if device.index is not None:
        raise DistributedError(
            f"--device {name}: under torchrun each process trains on cuda:LOCAL_RANK; pass --device cuda or auto"
        )
    if local_rank >= torch.cuda.device_count():
        raise DistributedError(
            f"local rank {local_rank} but this machine has {torch.cuda.device_count()} GPUs: "
            "start at most one process per GPU (--nproc-per-node)"
        )
    return torch.device("cuda", local_rank)


def init_distributed(device: str | None = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the run torchrun started (NCCL on GPUs, gloo on CPUs), or describe a single process.

    Raises:
        DistributedError: the process group cannot be joined (the rendezvous failed or timed out).
        ValueError: ``device`` is not a device this machine has.
    """
    if timeout_s <= 0:
        raise ValueError("the distributed timeout must be positive")
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(device=pick_device(device), timeout_s=timeout_s)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    placed = rank_device(device, local_rank)
    backend = "nccl" if placed.type == "cuda" else "gloo"
    if placed.type == "cuda":
        torch.cuda.set_device(placed)
    try:
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=placed if placed.type == "cuda" else None,
        )
    except (RuntimeError, ValueError) as error:
        raise DistributedError(f"rank {rank} of {world_size} cannot join the run: {short_message(error)}") from None
    context = DistContext(rank, world_size, local_rank, placed, timeout_s)
    logger.info("joined as %s (%s on %s, timeout %.0f s)", context.describe(), backend, placed, timeout_s)
    return context


def short_message(error: BaseException) -> str:
    """The first sentence of ``error``'s message, without the C++ source location torch prefixes."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.split(r"(?<=[\w\]])\.\s", re.sub(r"^\[[^\]]*\]\s*", "", text))[0]


COLLECTIVE_FAILURES = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe", "nccl", "gloo")


@contextlib.contextmanager
def collective_errors(context: DistContext) -> Iterator[None]:
    """Turn a failed or timed-out collective operation into a one-line :class:`DistributedError`."""
    try:
        yield
    except RuntimeError as error:
        message = str(error).lower()
        collective = isinstance(error, dist.DistError) or any(marker in message for marker in COLLECTIVE_FAILURES)
        if not context.enabled or not collective:
            raise
        if "timed out" in message or "timeout" in message:
            why = f"no answer within the {context.timeout_s:g} s timeout (--dist-timeout): a rank hangs or stalls"
        else:
            why = "another rank ended: it failed (see its error) or was stopped"
        raise DistributedError(
            f"{context.describe()}: lost contact with the other ranks ({short_message(error)}); {why}. "
            "The run can continue from its last checkpoint with --resume"
        ) from None


def check_batch_split(batch_size: int, world_size: int, accumulate: int) -> None:
    """The global batch must split evenly into ranks x micro-batches.

    Raises:
        ValueError: it does not (or ``accumulate`` is not positive).
    """
    if accumulate < 1:
        raise ValueError("--accumulate must be at least 1")
    parts = world_size * accumulate
    if batch_size % parts:
        raise ValueError(
            f"the global batch {batch_size} (--batch-size) does not split evenly over {world_size} rank(s) x "
            f"{accumulate} micro-batch(es) (--accumulate); use a multiple of {parts}"
        )
