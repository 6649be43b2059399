"""What one sample of a model is, from its sample shape alone: an image (``C x H x W``) or a
point (a 1-D vector, e.g. ``(2,)`` for the 2D toy distributions). Torch-free.

The API bounds a job's sample count by this (:meth:`contract.settings.Limits.n_limit`) and
``GET /models`` shows it; the page shows points as a scatter plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

SampleKind = Literal["image", "points"]


def sample_kind(sample_shape: Sequence[int]) -> SampleKind:
    """``points`` for a 1-D sample shape, ``image`` otherwise."""
    return "points" if len(sample_shape) == 1 else "image"


def pixels_per_sample(sample_shape: Sequence[int]) -> int:
    """The pixels (height x width; channels not counted) of one image sample."""
    return math.prod(sample_shape[-2:]) if len(sample_shape) >= 2 else math.prod(sample_shape)
