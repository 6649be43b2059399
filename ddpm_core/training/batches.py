"""Every step's global batch as a pure function of (seed, position), split over the ranks.

The *position* counts the samples drawn since the run began (steps x global batch while the
batch size stays the same); it is all the training state keeps of the data, so a run resumes
with the same batches on any number of ranks:

- image data: sample ``p`` is image ``order_e[p mod N]`` of epoch ``e = p // N``, where
  ``order_e`` is a permutation of the N images drawn from (seed, e): each epoch visits every
  image once;
- other data (the 2D checkerboard): the global batch at position ``p`` is drawn by the data
  set from a generator seeded with (seed, p).

Rank r of W takes the r-th contiguous 1/W of the global batch, so two ranks never see the same
sample in a step and together they see exactly the batch one process would. The per-step
random draws of the loss (timesteps, noise, label dropout) are seeded the same way by
:func:`mix_seed`, from (seed, step).

:func:`make_loader` feeds the shards through a ``DataLoader``: worker processes prepare the
next steps' batches ahead of the device, into pinned memory on CUDA.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ddpm_core.data.datasets import ImageData, TrainingData

# stream tags for mix_seed: each kind of randomness draws from its own stream
EPOCH_ORDER, POINTS, NOISE, DROPOUT = 1, 2, 3, 4
PREFETCH_FACTOR = 4


def mix_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (e.g. seed, stream tag, step) via numpy's SeedSequence:
    nearby keys give unrelated seeds."""
    words = np.random.SeedSequence([int(key) for key in keys]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31 ^ int(words[1])) & (2**63 - 1)


class Shard(NamedTuple):
    """One rank's share of one step's global batch."""

    clean: torch.Tensor
    """(b, *sample_shape) float32 in [-1, 1], b = global batch / ranks."""
    labels: torch.Tensor
    """(b,) int64 class indices."""
    indices: torch.Tensor
    """(b,) int64: which images of the data set (image data) or which sample positions (drawn data)."""


class ShardedBatches(Dataset):
    """Item k: this rank's :class:`Shard` of the global batch at ``start_position + k * global_batch``.

    A map-style data set of ``steps`` items, so a ``DataLoader`` can prepare them in workers.
    """

    def __init__(
        self,
        data: TrainingData,
        *,
        global_batch: int,
        seed: int,
        start_position: int = 0,
        steps: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"the global batch {global_batch} does not split over {world_size} ranks")
        self.data = data
        self.global_batch = global_batch
        self.seed = seed
        self.start_position = start_position
        self.steps = max(0, steps)
        share = global_batch // world_size
        self.part = slice(rank * share, (rank + 1) * share)
        self._orders: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, k: int) -> Shard:
        if not 0 <= k < self.steps:
            raise IndexError(k)
        return self.shard_at(self.start_position + k * self.global_batch)

    def shard_at(self, position: int) -> Shard:
        """This rank's share of the global batch that starts at sample ``position``."""
        if isinstance(self.data, ImageData):
            index = self.global_indices(position)[self.part]
            clean = self.data.images[index].float().div_(127.5).sub_(1.0)
            return Shard(clean, self.data.labels[index], index)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, POINTS, position))
        clean, labels = self.data.sample_batch(self.global_batch, generator)
        positions = torch.arange(position, position + self.global_batch)
        return Shard(clean[self.part].contiguous(), labels[self.part].contiguous(), positions[self.part])

    def global_indices(self, position: int) -> torch.Tensor:
        """The image indices (B,) of the whole global batch starting at ``position`` (image data)."""
        count = len(self.data)
        positions = torch.arange(position, position + self.global_batch)
        epochs = positions // count
        index = torch.empty(self.global_batch, dtype=torch.long)
        for epoch in torch.unique(epochs).tolist():
            chosen = epochs == epoch
            index[chosen] = self.epoch_order(epoch)[positions[chosen] % count]
        return index

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The permutation (N,) of the images in ``epoch``, drawn from (seed, epoch); the last two kept."""
        order = self._orders.get(epoch)
        if order is None:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, EPOCH_ORDER, epoch))
            order = torch.randperm(len(self.data), generator=generator)
            if len(self._orders) >= 2:
                del self._orders[next(iter(self._orders))]  # the oldest drawn
            self._orders[epoch] = order
        return order


def default_workers(device: torch.device) -> int:
    """Data workers when none are asked for: 2 on a GPU; none on the CPU, where the step itself
    needs every core (batches of in-memory images take well under a millisecond to gather)."""
    return 2 if device.type == "cuda" else 0


def make_loader(batches: ShardedBatches, device: torch.device, workers: int | None = None) -> DataLoader:
    """A ``DataLoader`` over ``batches`` in order: ``workers`` processes (default
    :func:`default_workers`) prepare ``PREFETCH_FACTOR`` steps each ahead, pinned on CUDA so the
    copy to the device overlaps the step."""
    workers = default_workers(device) if workers is None else workers
    if workers < 0:
        raise ValueError("the number of data workers must be >= 0")
    return DataLoader(
        batches,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=PREFETCH_FACTOR if workers else None,
    )
