"""A data set's fingerprint: the SHA-256 of its images, labels and class names as loaded.

Two loads of the same data at the same size and channels give the same fingerprint, wherever
the files lie; changing one pixel, one label or one class name changes it. A classifier records
the fingerprint of the data it was trained on (:mod:`ddpm_core.evaluation.train_classifier`), so
it can be paired to models trained on that data (:mod:`ddpm_core.evaluation.pairing`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import torch

FINGERPRINT_VERSION = 1


def data_fingerprint(
    images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, class_names: Sequence[str]
) -> str:
    """Hex SHA-256 of uint8 images (N, C, H, W), integer labels (N,) and the class names."""
    images = np.ascontiguousarray(images.numpy() if torch.is_tensor(images) else images)
    labels = np.ascontiguousarray(labels.numpy() if torch.is_tensor(labels) else labels, dtype="<i8")
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"need uint8 images (N, C, H, W) with one label each, got {images.dtype} {images.shape}")
    digest = hashlib.sha256()
    head = {"version": FINGERPRINT_VERSION, "shape": list(images.shape), "class_names": [str(n) for n in class_names]}
    digest.update(json.dumps(head, sort_keys=True).encode())
    digest.update(labels.tobytes())
    digest.update(images.tobytes())
    return digest.hexdigest()
