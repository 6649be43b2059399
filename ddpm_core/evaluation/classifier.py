"""A small CNN used to judge generated images: its accuracy on them and the Fréchet distance in
its penultimate-layer features (an MNIST stand-in for Inception FID).

Built for MNIST (1 x 28 x 28, ten digits) by default; ``in_channels``, ``image_size`` and
``num_classes`` make it a classifier of any image data set a model is trained on (see
:mod:`ddpm_core.evaluation.pairing` for how one is paired to a model). Images enter as uint8
(N, C, S, S), or (N, S, S) when grey, real and generated alike, and go through :func:`preprocess`
(x / 127.5 - 1, the diffusion models' own scaling). Weights and config are stored as safetensors
with JSON metadata; nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ddpm_core.atomic import atomic_path
from ddpm_core.checkpoint import check_model_matches_header
from ddpm_core.checkpoint_header import file_sha256, read_raw_header, tensor_shapes
from ddpm_core.config import StoredConfig
from ddpm_core.errors import CheckpointError
from ddpm_core.evaluation.pairing import CLASSIFIER_FORMAT, CLASSIFIER_FORMAT_VERSION, ClassifierHeader

logger = logging.getLogger(__name__)

MAX_BLOCKS = 16  # per stage: a file's config is untrusted and building takes time linear in the depth


@dataclass(frozen=True)
class ClassifierConfig(StoredConfig):
    """Everything needed to rebuild a :class:`DigitClassifier`; stored in its file as JSON.

    Images of ``in_channels`` x ``image_size`` x ``image_size`` (MNIST's 1 x 28 x 28 by
    default); three stages of ``blocks`` 3x3 conv-BN-ReLU blocks with ``channels`` at S, S/2 and
    S/4 pixels (28, 14 and 7), global average pooling into a ``channels[-1]``-dimensional feature
    vector (the FID features), dropout, one linear layer.
    """

    channels: tuple[int, ...] = (32, 64, 96)
    blocks: tuple[int, ...] = (1, 1, 2)
    num_classes: int = 10
    dropout: float = 0.1
    in_channels: int = 1
    image_size: int = 28

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise ValueError("channels must be three positive integers")
        if len(self.blocks) != 3 or min(self.blocks) < 1:
            raise ValueError("blocks must be three positive integers")
        if max(self.blocks) > MAX_BLOCKS:
            raise ValueError(f"at most {MAX_BLOCKS} blocks per stage")
        if self.num_classes < 2:
            raise ValueError("num_classes must be at least 2")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.in_channels not in (1, 3):
            raise ValueError("in_channels must be 1 or 3")
        if not 4 <= self.image_size <= 1024:
            raise ValueError("image_size must be in [4, 1024]")

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """The images it reads: (C, S, S)."""
        return (self.in_channels, self.image_size, self.image_size)


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DigitClassifier(nn.Module):
    """(B, C, S, S) in [-1, 1] -> logits (B, num_classes); :meth:`features` -> (B, channels[-1]).

    (B, 1, 28, 28) for MNIST digits; the name stays from when digits were all it read."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_channels = config.in_channels
        for stage, (channels, blocks) in enumerate(zip(config.channels, config.blocks, strict=True)):
            if stage:
                layers.append(nn.MaxPool2d(2))  # 28 -> 14 -> 7
            for _ in range(blocks):
                layers.append(_conv_block(in_channels, channels))
                in_channels = channels
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(in_channels, config.num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (B, channels[-1]) of images (B, C, S, S)."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of images (B, C, S, S) in [-1, 1]."""
        return self.head(self.dropout(self.features(images)))


def preprocess(images: np.ndarray | torch.Tensor, sample_shape: tuple[int, ...] = (1, 28, 28)) -> torch.Tensor:
    """uint8 images (N, C, S, S), or (N, S, S) when grey -> float32 (N, C, S, S) in [-1, 1].

    ``sample_shape`` (C, S, S) is the shape the images must have (MNIST's by default)."""
    tensor = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))
    if tensor.ndim == 3 and sample_shape[0] == 1:
        tensor = tensor[:, None]
    if tensor.ndim != 4 or tuple(tensor.shape[1:]) != tuple(sample_shape):
        channels, height, width = sample_shape
        raise ValueError(f"expected {channels} x {height} x {width} images, got shape {tuple(tensor.shape)}")
    return tensor.float().div_(127.5).sub_(1.0)


@torch.inference_mode()
def classify(model: DigitClassifier, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels (N,) int64 and float64 features (N, D) of uint8 images (N, C, S, S) (or (N, S, S) grey)."""
    model.eval()
    labels, features = [], []
    for start in range(0, len(images), batch_size):
        batch = preprocess(images[start : start + batch_size], model.config.sample_shape)
        feature = model.features(batch)
        labels.append(model.head(feature).argmax(dim=1).numpy())
        features.append(feature.double().numpy())
    if not labels:
        return np.zeros(0, np.int64), np.zeros((0, model.config.channels[-1]))
    return np.concatenate(labels).astype(np.int64), np.concatenate(features)


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image (B, C, H, W) by up to ``max_shift`` pixels in x and y, padding with the background (-1)."""
    if max_shift <= 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (batch, 2), generator=generator)
    rows = (offsets[:, 0, None] + torch.arange(height))[:, None, :, None]  # (B, 1, H, 1)
    cols = (offsets[:, 1, None] + torch.arange(width))[:, None, None, :]  # (B, 1, 1, W)
    index = torch.arange(batch)[:, None, None, None]
    channel = torch.arange(images.shape[1])[None, :, None, None]
    return padded[index, channel, rows, cols]


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """How :func:`train_classifier` optimises: AdamW with a one-cycle rate, random shifts."""

    epochs: int = 4
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    max_shift: int = 2
    seed: int = 0


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    config: ClassifierConfig,
    train_config: ClassifierTrainConfig,
) -> DigitClassifier:
    """Train on uint8 images (N, C, S, S) (or (N, S, S) grey) with labels (N,): AdamW, one-cycle LR, random shifts.

    Deterministic for a given seed on one CPU thread.
    """
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError("need a non-empty set of images with one label each")
    if labels.min() < 0 or labels.max() >= config.num_classes:
        raise ValueError(f"labels must lie in [0, {config.num_classes - 1}]")
    torch.manual_seed(train_config.seed)
    generator = torch.Generator().manual_seed(train_config.seed)
    model = DigitClassifier(config)
    data = preprocess(images, config.sample_shape)
    targets = torch.as_tensor(labels, dtype=torch.long)
    steps_per_epoch = -(-len(data) // train_config.batch_size)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=train_config.learning_rate, weight_decay=train_config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=train_config.learning_rate, total_steps=train_config.epochs * steps_per_epoch
    )
    model.train()
    started = time.perf_counter()
    for epoch in range(train_config.epochs):
        order = torch.randperm(len(data), generator=generator)
        total_loss, correct = 0.0, 0
        for start in range(0, len(data), train_config.batch_size):
            index = order[start : start + train_config.batch_size]
            batch = random_shift(data[index], train_config.max_shift, generator)
            logits = model(batch)
            loss = F.cross_entropy(logits, targets[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(index)
            correct += int((logits.argmax(dim=1) == targets[index]).sum())
        logger.info(
            "classifier epoch %d/%d: loss %.4f, train accuracy %.4f (%.0f s)",
            epoch + 1,
            train_config.epochs,
            total_loss / len(data),
            correct / len(data),
            time.perf_counter() - started,
        )
    return model.eval()


def accuracy(model: DigitClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of uint8 images (N, C, S, S) (or (N, S, S) grey) classified as their labels (N,)."""
    predicted, _ = classify(model, images)
    return float((predicted == np.asarray(labels)).mean())


def save_classifier(path: str | Path, model: DigitClassifier, info: dict[str, Any] | None = None) -> Path:
    """Write weights with the config and ``info`` (e.g. test accuracy, training settings) as JSON metadata."""
    path = Path(path)
    metadata = {
        "format": CLASSIFIER_FORMAT,
        "format_version": CLASSIFIER_FORMAT_VERSION,
        "config": json.dumps(model.config.to_dict()),
        "info": json.dumps(info or {}),
    }
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path


@dataclass
class LoadedClassifier:
    """A classifier ready to use, with its file's ``info``, what it judges (``header``) and SHA-256."""

    path: Path
    model: DigitClassifier
    info: dict[str, Any]
    sha256: str
    header: ClassifierHeader


def load_classifier(path: str | Path) -> LoadedClassifier:
    """Load and validate a classifier file; the model comes back on the CPU in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"classifier {path} does not exist (train one with python -m ddpm_core.evaluation.train_classifier)"
        )
    header = read_raw_header(path)
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != CLASSIFIER_FORMAT:
        raise CheckpointError(f"{path} is not an MNIST classifier or other image classifier file")
    if metadata.get("format_version") != CLASSIFIER_FORMAT_VERSION:
        raise CheckpointError(f"{path}: classifier format version {metadata.get('format_version')} is not supported")
    try:
        config = ClassifierConfig.from_dict(json.loads(metadata["config"]))
        info = json.loads(metadata.get("info", "{}"))
        if not isinstance(info, dict):
            raise ValueError("info must be a JSON object")
        judges = ClassifierHeader.from_metadata(path.stem, config.to_dict(), info)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: bad classifier metadata: {error}") from None
    try:
        with torch.device("meta"):  # sizes and names are checked before anything is allocated
            skeleton = DigitClassifier(config)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: bad classifier config: {str(error).splitlines()[0]}") from None
    check_model_matches_header(path, skeleton, tensor_shapes(header))
    model = DigitClassifier(config)
    try:
        model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    except (SafetensorError, OSError, RuntimeError) as error:
        raise CheckpointError(f"{path}: cannot load classifier weights: {str(error).splitlines()[0]}") from None
    return LoadedClassifier(path=path, model=model.eval(), info=info, sha256=file_sha256(path), header=judges)
