"""``ddpm`` under torchrun for the distributed tests: the real command, plus probes and faults.

Set by environment:

- ``DDPM_TEST_PROBE=DIR``: each rank writes ``DIR/rank<R>.json`` at the end of the run: the
  data-set indices it trained on at each step and a digest of its EMA weights.
- ``DDPM_TEST_OUT_PER_RANK=1``: each rank's ``--out`` becomes ``OUT/rank<R>``, as on machines
  that share no file system: only ``OUT/rank0`` may ever appear.
- ``DDPM_TEST_FAULT=KIND:RANK:STEP``: rank RANK, about to run step STEP + 1, ``kill``s itself
  with SIGKILL (once rank 0 has saved step STEP), ``raise``s a data error, or ``hang``s.
- ``DDPM_TEST_COMPILE_BACKEND=NAME``: ``--compile`` uses this torch.compile backend (e.g.
  ``aot_eager``: the same graphs without inductor's C++ build).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path

import torch

from ddpm_core import cli
from ddpm_core.errors import DatasetError
from ddpm_core.training import Trainer

RANK = int(os.environ.get("RANK", "0"))  # a plain process (no torchrun) is rank 0 of 1
PROBE = os.environ.get("DDPM_TEST_PROBE")
FAULT = os.environ.get("DDPM_TEST_FAULT")
PER_RANK = bool(os.environ.get("DDPM_TEST_OUT_PER_RANK"))
seen: dict[int, list[int]] = {}


def rank0_saved(run_dir: Path, step: int) -> bool:
    """Whether rank 0's training state has reached ``step``."""
    state = (run_dir.parent / "rank0" if PER_RANK else run_dir) / "train_state.json"
    try:
        return json.loads(state.read_text())["step"] >= step
    except (OSError, ValueError):
        return False


def fault(trainer: Trainer) -> None:
    kind, rank, step = FAULT.split(":")
    if int(rank) != RANK or trainer.step != int(step):
        return
    if kind == "kill":
        while not rank0_saved(trainer.run_dir, trainer.step):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "raise":
        raise DatasetError("injected: this rank could not read its batch")
    if kind == "hang":
        time.sleep(3600)


original_step, original_train = Trainer.train_step, Trainer.train


def train_step(self: Trainer, shard):
    if FAULT:
        fault(self)
    seen[self.step] = shard.indices.tolist()
    return original_step(self, shard)


def train(self: Trainer) -> Path:
    path = original_train(self)
    if PROBE:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.ema.shadow.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
        probe = {"indices": seen, "ema_sha256": digest.hexdigest(), "world_size": self.context.world_size}
        Path(PROBE).mkdir(parents=True, exist_ok=True)
        (Path(PROBE) / f"rank{RANK}.json").write_text(json.dumps(probe))
    return path


Trainer.train_step, Trainer.train = train_step, train
if os.environ.get("DDPM_TEST_COMPILE_BACKEND"):
    torch.compile = partial(torch.compile, backend=os.environ["DDPM_TEST_COMPILE_BACKEND"])

if __name__ == "__main__":
    argv = sys.argv[1:]
    if PER_RANK:
        where = argv.index("--out") + 1
        argv[where] = str(Path(argv[where]) / f"rank{RANK}")
    sys.exit(cli.main(argv))
