"""The ``ddpm`` command end to end, in subprocesses, on data the tests write."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddpm_core import NoiseSchedule, UNet, UNetConfig, save_checkpoint

TINY_UNET = [
    "--base-channels",
    "8",
    "--channel-mult",
    "1,2",
    "--attention-resolutions",
    "",
    "--num-train-timesteps",
    "20",
]


def ddpm(*args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "ddpm_core", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(f"ddpm {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from tests.core.conftest import write_mnist_like

    root = tmp_path_factory.mktemp("cli")
    data = write_mnist_like(root / "mnist", [0, 1, 7], copies=4)
    ddpm(
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        data,
        "--out",
        root / "run",
        "--max-steps",
        12,
        "--batch-size",
        8,
        "--log-every",
        4,
        "--checkpoint-every",
        6,
        "--sample-every",
        12,
        "--no-progress",
        *TINY_UNET,
    )
    return root


def test_train_writes_checkpoint_log_and_samples(trained_run):
    run = trained_run / "run"
    assert (run / "model.safetensors").is_file() and (run / "train_state.json").is_file()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [4, 8, 12]
    assert all(entry["loss"] > 0 and entry["steps_per_s"] > 0 for entry in log)
    assert (run / "samples" / "step_0000012.png").is_file()


def test_sample_all_classes(trained_run):
    out = trained_run / "all.npy"
    ddpm(
        "sample",
        "--checkpoint",
        trained_run / "run" / "model.safetensors",
        "--all-classes",
        "--n",
        2,
        "--sampler",
        "ddim",
        "--steps",
        3,
        "--npy",
        out,
        "--png",
        trained_run / "all.png",
    )
    assert np.load(out).shape == (20, 1, 28, 28)
    from PIL import Image

    width, height = Image.open(trained_run / "all.png").size
    assert height > 4 * width  # ten rows of two


def test_sample_writes_png_gif_and_npy(trained_run):
    out = trained_run / "out"
    ddpm(
        "sample",
        "--checkpoint",
        trained_run / "run" / "model.safetensors",
        "--digit",
        7,
        "--n",
        3,
        "--sampler",
        "ddim",
        "--steps",
        5,
        "--guidance",
        1.5,
        "--seed",
        4,
        "--png",
        out / "a.png",
        "--gif",
        out / "a.gif",
        "--npy",
        out / "a.npy",
    )
    samples = np.load(out / "a.npy")
    assert samples.shape == (3, 1, 28, 28) and samples.dtype == np.float32
    assert samples.min() >= -1 and samples.max() <= 1
    from PIL import Image

    assert Image.open(out / "a.gif").n_frames >= 2
    assert Image.open(out / "a.png").size[0] > 28
    again = trained_run / "again.npy"
    ddpm(
        "sample",
        "--checkpoint",
        trained_run / "run" / "model.safetensors",
        "--digit",
        7,
        "--n",
        3,
        "--sampler",
        "ddim",
        "--steps",
        5,
        "--guidance",
        1.5,
        "--seed",
        4,
        "--npy",
        again,
    )
    np.testing.assert_array_equal(np.load(again), samples)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "{missing}", "--png", "x.png"], "does not exist"),
        (["--checkpoint", "{run}", "--digit", "10", "--png", "x.png"], "out of range"),
        (["--checkpoint", "{run}", "--sampler", "ddim", "--steps", "0", "--png", "x.png"], "num_inference_steps"),
        (["--checkpoint", "{run}"], "nothing to write"),
        (["--checkpoint", "{pickle}", "--png", "x.png"], "pickle"),
        (["--checkpoint", "{uncond}", "--digit", "1", "--png", "x.png"], "unconditional"),
    ],
)
def test_sample_errors_are_one_clear_line(trained_run, args, message):
    pickle_path = trained_run / "model.pt"
    torch.save({"w": torch.zeros(1)}, pickle_path)
    uncond = trained_run / "uncond.safetensors"
    save_checkpoint(
        uncond,
        UNet(
            UNetConfig(
                image_size=8, base_channels=8, channel_mult=(1,), attention_resolutions=(), num_classes=0, norm_groups=4
            )
        ),
        NoiseSchedule.linear(10),
        class_names=[],
        sample_shape=(1, 8, 8),
        dataset="test",
    )
    paths = {
        "missing": trained_run / "nope.safetensors",
        "run": trained_run / "run" / "model.safetensors",
        "pickle": pickle_path,
        "uncond": uncond,
    }
    result = ddpm("sample", *[a.format(**paths) for a in args], check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_bad_options_fail_cleanly(tmp_path):
    result = ddpm("train", "--dataset", "imagenet", "--out", tmp_path, check=False)
    assert result.returncode != 0 and "unknown dataset" in result.stderr and "Traceback" not in result.stderr
    result = ddpm("sample", "--checkpoint", "x", "--n", "many", check=False)
    assert result.returncode == 2 and "invalid int value" in result.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (broken / name).write_bytes(b"garbage")
    result = ddpm("train", "--dataset", "mnist", "--data-dir", broken, "--out", tmp_path / "r", check=False)
    assert result.returncode != 0 and "not an IDX file" in result.stderr and "Traceback" not in result.stderr


def test_export_sets_the_default_guidance(trained_run):
    from ddpm_core import load_checkpoint

    source = trained_run / "run" / "model.safetensors"
    target = trained_run / "served.safetensors"
    ddpm("export", "--checkpoint", source, "--out", target, "--default-guidance", 1.5)
    exported, original = load_checkpoint(target), load_checkpoint(source)
    assert exported.training["default_guidance"] == 1.5
    assert exported.training["steps"] == original.training["steps"]
    for name, tensor in original.model.state_dict().items():
        torch.testing.assert_close(exported.model.state_dict()[name], tensor, rtol=0, atol=0)
    result = ddpm("export", "--checkpoint", source, "--out", source, check=False)
    assert result.returncode == 2 and "must differ" in result.stderr
