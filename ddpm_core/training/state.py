"""Exact training state for resume, stored without pickle.

``train_state.safetensors`` holds the model, EMA and optimiser tensors and the RNG states;
``train_state.json`` holds the step, optimiser hyper-parameters and the rest. Both are written
to temporary names and renamed, JSON last, so a crash never leaves a half-written state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ddpm_core.atomic import atomic_path
from ddpm_core.errors import CheckpointError

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


def save_training_state(
    run_dir: Path,
    *,
    tensors: dict[str, dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    info: dict[str, Any],
) -> None:
    """Write the state; ``tensors`` maps a prefix ('model', 'ema', 'rng', ...) to named tensors."""
    flat: dict[str, torch.Tensor] = {}
    for prefix, named in tensors.items():
        for name, tensor in named.items():
            flat[f"{prefix}.{name}"] = tensor.detach().to("cpu").contiguous()
    optimizer_state = optimizer.state_dict()
    scalars: dict[str, dict[str, float]] = {}
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.ndim > 0:
                flat[f"optim.{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = float(value)
    tensor_path = run_dir / STATE_TENSORS
    json_path = run_dir / STATE_JSON
    with atomic_path(tensor_path) as temporary:
        save_file(flat, str(temporary))
    document = {**info, "optimizer_param_groups": optimizer_state["param_groups"], "optimizer_scalars": scalars}
    with atomic_path(json_path) as temporary:  # last: the JSON names a complete tensor file
        temporary.write_text(json.dumps(document, indent=1))


def load_training_state(run_dir: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any]]:
    """Read the state back: (tensors by prefix, optimiser state dict without params' tensors, info)."""
    tensor_path, json_path = run_dir / STATE_TENSORS, run_dir / STATE_JSON
    if not tensor_path.is_file() or not json_path.is_file():
        raise CheckpointError(f"no training state to resume in {run_dir} (expected {STATE_TENSORS} and {STATE_JSON})")
    try:
        info = json.loads(json_path.read_text())
        flat = load_file(str(tensor_path))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read training state in {run_dir}: {error}") from None
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    optimizer_state: dict[int, dict[str, Any]] = {}
    for key, tensor in flat.items():
        prefix, name = key.split(".", 1)
        if prefix == "optim":
            index, field = name.split(".", 1)
            optimizer_state.setdefault(int(index), {})[field] = tensor
        else:
            tensors.setdefault(prefix, {})[name] = tensor
    for index, values in info.pop("optimizer_scalars").items():
        for key, value in values.items():
            optimizer_state.setdefault(int(index), {})[key] = torch.tensor(value, dtype=torch.float32)
    optimizer = {"state": optimizer_state, "param_groups": info.pop("optimizer_param_groups")}
    return tensors, optimizer, info
