"""The pieces of training at scale, in one process: position-seeded sharded batches, gradient
accumulation, the metrics a user follows (log.jsonl, TensorBoard) and the command's options."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest
import torch

import ddpm_core.cli as cli
from ddpm_core import NoiseSchedule
from ddpm_core.data import CheckerboardData, load_mnist_data
from ddpm_core.models import MLPConfig, MLPDenoiser, UNet, UNetConfig
from ddpm_core.training import RunOptions, TrainConfig, Trainer
from ddpm_core.training.batches import ShardedBatches, make_loader, mix_seed
from tests.core.conftest import write_mnist_like

UNET = UNetConfig(
    image_size=28,
    base_channels=16,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(),
    num_classes=10,
    dropout=0.0,
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """12 images (3 shapes x 4) as MNIST IDX files."""
    return write_mnist_like(tmp_path_factory.mktemp("digits"), [0, 1, 7], copies=4)


def batches(data, world_size=1, rank=0, start=0, batch=6, seed=5):
    return ShardedBatches(
        data, global_batch=batch, seed=seed, start_position=start, steps=10, rank=rank, world_size=world_size
    )


@pytest.mark.parametrize("batch", [6, 8])  # 8 does not divide 12: batches straddle epochs
def test_ranks_take_disjoint_shares_that_make_up_the_one_process_batch(digits, batch):
    data = load_mnist_data(digits)
    whole = batches(data, batch=batch)
    for world_size in (2, 4 if batch == 8 else 3):
        shares = [batches(data, world_size, rank, batch=batch) for rank in range(world_size)]
        for step in range(len(whole)):
            parts = [share[step] for share in shares]
            positions = [torch.arange(step * batch, (step + 1) * batch)[share.part] for share in shares]
            assert all(
                len(a) and not set(a.tolist()) & set(b.tolist()) for a in positions for b in positions if a is not b
            )
            torch.testing.assert_close(torch.cat([part.indices for part in parts]), whole[step].indices, rtol=0, atol=0)
            torch.testing.assert_close(torch.cat([part.clean for part in parts]), whole[step].clean, rtol=0, atol=0)
            torch.testing.assert_close(torch.cat([part.labels for part in parts]), whole[step].labels, rtol=0, atol=0)


def test_every_epoch_visits_each_image_once_and_the_order_is_a_function_of_the_position(digits):
    data = load_mnist_data(digits)
    stream = batches(data)
    epochs = [torch.cat([stream[2 * epoch].indices, stream[2 * epoch + 1].indices]) for epoch in range(3)]
    assert all(sorted(epoch.tolist()) == list(range(12)) for epoch in epochs)
    assert not torch.equal(epochs[0], epochs[1])  # each epoch is shuffled anew
    resumed = batches(load_mnist_data(digits), start=4 * 6)  # a resumed run starts at its position
    assert torch.equal(resumed[0].indices, stream[4].indices) and torch.equal(resumed[1].clean, stream[5].clean)
    assert not torch.equal(batches(data, seed=6)[0].indices, stream[0].indices)
    images = stream[0].clean
    assert images.shape == (6, 1, 28, 28) and images.min() >= -1 and images.max() <= 1


def test_drawn_data_is_sharded_by_position_too():
    whole = batches(CheckerboardData(), batch=8)
    parts = [batches(CheckerboardData(), 2, rank, batch=8) for rank in range(2)]
    for step in (0, 3):
        torch.testing.assert_close(torch.cat([part[step].clean for part in parts]), whole[step].clean)
        assert torch.cat([part[step].indices for part in parts]).tolist() == list(range(step * 8, step * 8 + 8))
    assert not torch.equal(whole[0].clean, whole[1].clean)


def test_seeds_mix_and_the_loader_keeps_the_order(digits):
    assert len({mix_seed(0, 1, step) for step in range(1000)}) == 1000 and mix_seed(0, 1, 2) != mix_seed(0, 2, 1)
    stream = batches(load_mnist_data(digits))
    loaded = list(make_loader(stream, torch.device("cpu"), workers=2))  # worker processes, still in order
    assert len(loaded) == len(stream) and all(torch.equal(a.indices, stream[k].indices) for k, a in enumerate(loaded))
    with pytest.raises(ValueError, match=">= 0"):
        make_loader(stream, torch.device("cpu"), workers=-1)


def trainer(data, run_dir, steps=3, batch=6, model=None, **options):
    if model is None:
        torch.manual_seed(0)
        model = UNet(UNET)
    config = TrainConfig(max_steps=steps, batch_size=batch, warmup_steps=1, log_every=1, checkpoint_every=100)
    schedule = NoiseSchedule.linear(20, scale_to_length=True)
    run = RunOptions(**options)
    return Trainer(model, schedule, data, config, run_dir, device="cpu", progress=False, options=run)


def test_accumulated_micro_batches_train_as_the_whole_batch(digits, tmp_path):
    data = load_mnist_data(digits)
    whole, accumulated = trainer(data, tmp_path / "whole"), trainer(data, tmp_path / "micro", accumulate=3)
    whole.train()
    accumulated.train()
    weights = torch.cat([p.flatten() for p in whole.model.parameters()])
    pairs = zip(accumulated.model.parameters(), whole.model.parameters(), strict=True)
    difference = torch.cat([(a - b).flatten() for a, b in pairs])
    assert 0 < difference.norm() / weights.norm() < 1e-5  # the same step, summed in another order
    with pytest.raises(ValueError, match="multiple of 4"):
        trainer(data, tmp_path / "bad", accumulate=4)


def test_resume_is_exact_with_dropout_in_the_model(digits, tmp_path):
    """Dropout draws from the global generator, reseeded from (seed, step, rank) every step: 4 steps
    straight equal 2 + 2 resumed bit for bit even after the generator is disturbed."""
    data = load_mnist_data(digits)
    runs = []
    for run_dir, steps in (("straight", 4), ("split", 2), ("split", 4)):
        torch.manual_seed(0)
        run = trainer(data, tmp_path / run_dir, steps=steps, model=UNet(replace(UNET, dropout=0.3)))
        if run_dir == "split" and steps == 4:
            torch.manual_seed(123)  # disturbed: the steps reseed it
            run.resume()
        run.train()
        runs.append(run)
    for name, tensor in runs[0].model.state_dict().items():
        assert torch.equal(runs[2].model.state_dict()[name], tensor), name


def test_the_log_has_loss_lr_gradient_norm_images_per_second_and_eta(digits, tmp_path):
    trainer(load_mnist_data(digits), tmp_path / "run", steps=4).train()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2, 3, 4]
    for record in records:
        assert set(record) == {"step", "loss", "lr", "grad_norm", "images_per_s", "steps_per_s", "elapsed_s", "eta_s"}
        assert record["loss"] > 0 and record["grad_norm"] > 0 and record["images_per_s"] > 0 and record["eta_s"] >= 0
        assert record["images_per_s"] == pytest.approx(6 * record["steps_per_s"], rel=0.01)
    assert records[-1]["eta_s"] == 0 and records[0]["lr"] == 1e-3


def run_cli(capsys, *args) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = cli.main([str(arg) for arg in args])
    return code, capsys.readouterr().err.strip().splitlines()


def test_tensorboard_is_optional_with_a_one_line_error(digits, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    args = ["train", "--dataset", "checkerboard", "--out", tmp_path / "run", "--max-steps", 1, "--log", "tensorboard"]
    code, lines = run_cli(capsys, *args)
    assert code == 2 and lines == [
        "ddpm: error: --log tensorboard needs the tensorboard package: pip install tensorboard"
    ]
    assert not (tmp_path / "run").exists()


def test_tensorboard_gets_the_same_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    model = MLPDenoiser(MLPConfig(hidden_dim=16, num_layers=1))
    config = TrainConfig(max_steps=4, batch_size=8, log_every=2, checkpoint_every=100)
    options = RunOptions(tensorboard=True)
    run = Trainer(
        model, NoiseSchedule.cosine(20), CheckerboardData(), config, tmp_path, progress=False, options=options
    )
    run.train()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/images_per_s"} <= set(events.Tags()["scalars"])
    logged = [json.loads(line)["loss"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [event.step for event in events.Scalars("train/loss")] == [2, 4]
    assert [event.value for event in events.Scalars("train/loss")] == pytest.approx(logged, rel=1e-5)


def test_the_command_says_the_batch_is_global_and_refuses_a_batch_that_does_not_split(tmp_path, capsys):
    code, lines = run_cli(capsys, "train", "--dataset", "checkerboard", "--out", tmp_path / "run", "--batch-size", 10,
                          "--accumulate", 4)  # fmt: skip
    assert code == 2 and len(lines) == 1 and "global batch 10" in lines[0] and "multiple of 4" in lines[0]
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the global batch per optimiser step" in text and "--accumulate" in text and "--dist-timeout" in text


@pytest.mark.e2e  # dynamo traces the training forward and AOTAutograd its backward: seconds
def test_a_compiled_training_step_trains_as_the_eager_one(tmp_path, monkeypatch):
    """--compile goes through torch.compile; the 'aot_eager' backend captures the same graphs as
    inductor without its C++ build (benchmarks/bench_train.py --compile times the real one)."""
    calls = []

    def compile_for_test(module, **options):
        calls.append(module)
        return original(module, backend="aot_eager", **options)

    original = torch.compile
    monkeypatch.setattr(torch, "compile", compile_for_test)
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = MLPDenoiser(MLPConfig(hidden_dim=32, num_layers=2))
        config = TrainConfig(max_steps=3, batch_size=16, warmup_steps=1, log_every=1, checkpoint_every=100)
        run = Trainer(model, NoiseSchedule.cosine(20), CheckerboardData(), config, tmp_path / str(compiled),
                      progress=False, options=RunOptions(compile=compiled))  # fmt: skip
        run.train()
        results.append(torch.cat([p.detach().flatten() for p in run.model.parameters()]))
    assert len(calls) == 1
    assert (results[1] - results[0]).norm() / results[0].norm() < 1e-5
