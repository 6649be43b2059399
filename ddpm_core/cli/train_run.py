"""``ddpm train`` running (its options: :mod:`ddpm_core.cli.train`).

Train a model on MNIST, a folder of images, .npy arrays or the 2D checkerboard.

The data set is read and validated first; the model is then built for the data's sample shape
(image size and channels) and classes, so nothing is trained on data the model does not fit.
Started by torchrun, every process runs the command and trains data-parallel on its share of
each global batch (:mod:`ddpm_core.training.distributed`); without torchrun it is one process.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from ddpm_core.checkpoint import load_checkpoint
from ddpm_core.checkpoint_header import read_checkpoint_info
from ddpm_core.cli.common import make_sample_writer
from ddpm_core.cli.train_setup import (
    DEFAULTS,
    MODEL_OPTIONS,
    TRAIN_OPTIONS,
    build_new_model,
    build_schedule,
    data_options,
)
from ddpm_core.data import dataset_kind, load_training_data
from ddpm_core.errors import DDPMError, DistributedError, UsageError
from ddpm_core.history import training_history
from ddpm_core.models import build_model
from ddpm_core.schedule import NoiseSchedule
from ddpm_core.training import RunOptions, TrainConfig, Trainer
from ddpm_core.training.distributed import (
    DistContext,
    RemoteFailure,
    check_batch_split,
    init_distributed,
)
from ddpm_core.training.metrics import require_tensorboard
from ddpm_core.training.state import STATE_JSON

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    """Run ``ddpm train`` with parsed ``args``; returns the exit status.

    Under torchrun every process runs this; errors name the rank, and an error rank 0 reports for
    all (a missing run to resume, data it could not load) ends the other ranks quietly.
    """
    if args.log == "tensorboard":
        require_tensorboard()
    context = init_distributed(args.device, args.dist_timeout)
    if not context.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        status = train(args, context)
    except RemoteFailure:
        return 2
    except (DDPMError, ValueError, OSError) as error:
        if not context.enabled or isinstance(error, DistributedError):
            raise
        raise DistributedError(f"{context.describe()}: {error}") from None
    context.close()
    return status


def read_run(out: Path) -> tuple[dict, dict]:
    """The run to resume in ``out``: its checkpoint's header and its saved training options."""
    state_file = out / STATE_JSON
    if not state_file.is_file():
        raise UsageError(f"--resume: no training state in {out}")
    return read_checkpoint_info(out / "model.safetensors"), json.loads(state_file.read_text())["train_config"]


def train(args: argparse.Namespace, context: DistContext) -> int:
    """Build the data, model and schedule (rank 0 first), then train on this process's share."""
    kind = dataset_kind(args.dataset)
    if args.loss == "l2":
        args.loss = "mse"
    given_model = {key: getattr(args, key) for key in MODEL_OPTIONS if getattr(args, key, None) is not None}
    given_train = {key: getattr(args, key) for key in TRAIN_OPTIONS if getattr(args, key, None) is not None}
    model_options = {**DEFAULTS[kind]["model"], **given_model}
    train_options = {**DEFAULTS[kind]["train"], **given_train}
    if args.resume:  # rank 0 reads the run directory: the other ranks need no copy of it
        saved, saved_train = context.from_main(lambda: read_run(args.out))
        # The run's own model and schedule win; training options given now override the saved ones.
        train_options = {**saved_train, **given_train}

    history, source_name = [], ""  # what --init-from's weights went through before this run
    with context.main_first():  # rank 0 first: its errors (data it cannot read) end every rank
        config = TrainConfig(**train_options)
        check_batch_split(config.batch_size, context.world_size, args.accumulate)
        torch.manual_seed(config.seed)  # the initial weights (rank 0's, under torchrun) follow --seed
        if args.resume:
            saved_config = saved["model_config"]
            images = {"image_size": saved_config.get("image_size"), "channels": saved_config.get("in_channels")}
            unconditional = args.unconditional or not saved["class_names"]
            data = load_training_data(args.dataset, data_options(args, **images, unconditional=unconditional))
            if data.class_names != saved["class_names"]:
                raise UsageError(
                    f"--resume: the data's classes [{', '.join(data.class_names)}] differ from the run's "
                    f"[{', '.join(map(str, saved['class_names']))}]"
                )
            model = build_model(saved["model_kind"], saved_config)
            schedule = NoiseSchedule.from_config(saved["schedule"])
        else:
            data = load_training_data(args.dataset, data_options(args))
            model = build_new_model(kind, model_options, data)
            schedule = build_schedule(args, kind)
            if args.init_from:
                source = load_checkpoint(args.init_from)
                if source.model.config != model.config:
                    raise UsageError(
                        f"--init-from: {args.init_from} has model config {source.model.config}, not {model.config}"
                    )
                model.load_state_dict(source.model.state_dict())
                history = training_history(source.training)
                source_name = f"{args.init_from.name} (sha256 {source.weights_sha256})"
    options = RunOptions(
        accumulate=args.accumulate,
        compile=args.compile,
        data_workers=args.data_workers,
        tensorboard=args.log == "tensorboard",
    )
    trainer = Trainer(
        model,
        schedule,
        data,
        config,
        args.out,
        sample_writer=make_sample_writer(data, schedule),
        progress=not args.no_progress,
        options=options,
        context=context,
        history=history,
        source=source_name,
    )
    if args.resume:
        trainer.resume()
        if trainer.step >= config.max_steps:
            logger.info("run already has %d of %d steps", trainer.step, config.max_steps)
    parameters = sum(p.numel() for p in model.parameters())
    logger.info(
        "training %s on %s: %.2fM parameters, samples %s, %d classes, schedule %s, %s, device %s",
        type(model).__name__,
        data.name,
        parameters / 1e6,
        list(data.sample_shape),
        len(data.class_names),
        schedule.config,
        json.dumps({k: v for k, v in asdict(config).items() if k in ("batch_size", "max_steps", "learning_rate")}),
        trainer.device,
    )
    logger.info(
        "global batch %d = %d rank(s) x %d micro-batch(es) (--accumulate) of %d samples",
        config.batch_size,
        context.world_size,
        args.accumulate,
        config.batch_size // (context.world_size * args.accumulate),
    )
    path = trainer.train()
    if context.is_main:
        print(path)
    return 0
