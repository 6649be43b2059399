"""The five systems through ``ddpm train / sample / export``, tiny and a couple of steps each, plus the
one-line errors for data the model cannot be trained on. The command runs in-process (``cli.main``)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm_core.cli as cli
from ddpm_core import NoiseSchedule, TrainConfig, Trainer, UNet, UNetConfig, load_checkpoint
from ddpm_core.checkpoint_header import read_checkpoint_info
from ddpm_core.cli.train_setup import DEFAULTS, build_new_model
from ddpm_core.data import load_npy_data
from ddpm_core.errors import DatasetError
from ddpm_core.models.unet import AttentionBlock, default_attention_resolutions
from tests.core.conftest import write_mnist_like

SPRITES = ["hero", "non-hero", "food", "spell", "side-facing"]
TINY = ["--base-channels", 8, "--num-res-blocks", 1, "--max-steps", 2, "--batch-size", 4, "--no-progress"]
FEW_STEPS = ["--sampler", "ddim", "--steps", 2, "--n", 2]


def ddpm(*args) -> int:
    return cli.main([str(arg) for arg in args])


def fails(capsys, *args) -> str:
    """Run ``ddpm`` expecting a one-line error; returns the line."""
    capsys.readouterr()
    assert ddpm(*args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddpm: error: "), lines
    return lines[0]


def write_sprites(directory, count=10, size=16):
    """images.npy (N, 16, 16, 3) uint8 and labels.npy one-hot (N, 5) float, as the sprites files are."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(directory / "images.npy", rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8))
    np.save(directory / "labels.npy", np.eye(5)[np.arange(count) % 5])
    return directory / "images.npy", directory / "labels.npy"


def write_flowers(directory, count=4, size=64):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(directory / f"img_{index}.png")
    return directory


@pytest.fixture(scope="module")
def sprites_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sprites")
    images, labels = write_sprites(root / "data")
    assert (
        ddpm(
            "train",
            "--dataset",
            f"npy:{images},{labels}",
            "--class-names",
            ",".join(SPRITES),
            "--out",
            root / "run",
            "--channel-mult",
            "1,2",
            "--num-train-timesteps",
            20,
            *TINY,
        )
        == 0
    )
    return root


def test_sprites_from_npy_store_their_class_names(sprites_run, capsys):
    checkpoint = sprites_run / "run" / "model.safetensors"
    info = read_checkpoint_info(checkpoint)
    assert info["class_names"] == SPRITES and info["sample_shape"] == [3, 16, 16]
    assert info["model_config"]["num_classes"] == 5 and info["model_config"]["attention_resolutions"] == [8]
    drawn = {}
    for label in ("hero", "0", "side-facing", "4"):
        out = sprites_run / f"{label}.npy"
        assert ddpm("sample", "--checkpoint", checkpoint, "--class", label, *FEW_STEPS, "--npy", out) == 0
        drawn[label] = np.load(out)
    assert drawn["hero"].shape == (2, 3, 16, 16)
    np.testing.assert_array_equal(drawn["hero"], drawn["0"])  # a name and its index are the same class
    np.testing.assert_array_equal(drawn["side-facing"], drawn["4"])
    assert not np.array_equal(drawn["hero"], drawn["side-facing"])
    line = fails(capsys, "sample", "--checkpoint", checkpoint, "--class", "villain", "--png", sprites_run / "x.png")
    assert "unknown class 'villain'" in line and "hero, non-hero, food, spell, side-facing" in line
    assert "unknown class '5'" in fails(capsys, "sample", "--checkpoint", checkpoint, "--class", "5", "--npy", "x")


def test_export_keeps_the_class_names(sprites_run):
    target = sprites_run / "served.safetensors"
    source = sprites_run / "run" / "model.safetensors"
    assert ddpm("export", "--checkpoint", source, "--out", target, "--default-guidance", 2) == 0
    exported = load_checkpoint(target)
    assert exported.class_names == SPRITES and exported.defaults.default_guidance == 2.0
    assert exported.class_index("spell") == 3


def test_flowers_flat_folder_unconditional_t350_keeps_the_given_betas(tmp_path, capsys):
    folder = write_flowers(tmp_path / "flowers")
    out = tmp_path / "run"
    linear = ["--schedule", "linear", "--beta-start", "1e-4", "--beta-end", "2e-2"]
    assert (
        ddpm("train", "--dataset", f"folder:{folder}", "--out", out, "--num-train-timesteps", 350, *linear, *TINY) == 0
    )
    loaded = load_checkpoint(out / "model.safetensors")
    assert loaded.class_names == [] and loaded.model.num_classes == 0 and loaded.sample_shape == (3, 64, 64)
    assert loaded.model.config.attention_resolutions == (16,)  # 3 levels (1,2,2) at 64 px: image_size / 4
    assert loaded.schedule.config == {
        "kind": "linear",
        "num_train_timesteps": 350,
        "beta_start": 1e-4,
        "beta_end": 0.02,
    }
    np.testing.assert_array_equal(loaded.schedule.betas, np.linspace(1e-4, 0.02, 350))  # not 2.86e-4..0.0571
    checkpoint = out / "model.safetensors"
    line = fails(capsys, "sample", "--checkpoint", checkpoint, "--class", "rose", "--npy", tmp_path / "x.npy")
    assert "unconditional model" in line and "--class is not allowed" in line
    assert "unconditional model" in fails(capsys, "sample", "--checkpoint", checkpoint, "--all-classes", "--npy", "x")
    assert ddpm("sample", "--checkpoint", checkpoint, *FEW_STEPS, "--npy", tmp_path / "f.npy") == 0
    assert np.load(tmp_path / "f.npy").shape == (2, 3, 64, 64)


def test_scale_betas_only_when_asked_and_the_checkpoint_keeps_what_was_trained(tmp_path):
    folder = write_flowers(tmp_path / "flowers", count=2, size=16)
    out = tmp_path / "run"
    assert (
        ddpm(
            "train", "--dataset", f"folder:{folder}", "--out", out, "--num-train-timesteps", 350, "--scale-betas", *TINY
        )
        == 0
    )
    loaded = load_checkpoint(out / "model.safetensors")
    expected = NoiseSchedule.linear(350, scale_to_length=True)
    assert loaded.schedule.betas[-1] == pytest.approx(0.02 * 1000 / 350)
    np.testing.assert_array_equal(loaded.schedule.betas, expected.betas)


def test_class_subfolders_are_classes_by_name(tmp_path):
    for name, colour in (("daisy", (250, 250, 250)), ("tulip", (250, 0, 0))):
        (tmp_path / "flowers" / name).mkdir(parents=True)
        for index in range(2):
            Image.new("RGB", (20, 20), colour).save(tmp_path / "flowers" / name / f"{index}.png")
    out = tmp_path / "run"
    folder = tmp_path / "flowers"
    assert (
        ddpm("train", "--dataset", f"folder:{folder}", "--out", out, "--image-size", 16, "--channel-mult", "1,2", *TINY)
        == 0
    )
    assert load_checkpoint(out / "model.safetensors").class_names == ["daisy", "tulip"]
    sample = ["sample", "--checkpoint", out / "model.safetensors", "--class", "tulip", *FEW_STEPS, "--npy"]
    assert ddpm(*sample, tmp_path / "t.npy") == 0
    assert np.load(tmp_path / "t.npy").shape == (2, 3, 16, 16)


def test_mnist_at_32_pixels_with_four_levels_cosine_and_l1(tmp_path):
    data = write_mnist_like(tmp_path / "mnist", [0, 1, 7], copies=2)
    out = tmp_path / "run"
    model = ["--image-size", 32, "--channel-mult", "1,2,2,2", "--schedule", "cosine", "--loss", "l1"]
    assert (
        ddpm(
            "train", "--dataset", "mnist", "--data-dir", data, "--out", out, *model, "--num-train-timesteps", 30, *TINY
        )
        == 0
    )
    checkpoint = out / "model.safetensors"
    loaded = load_checkpoint(checkpoint)
    assert loaded.sample_shape == (1, 32, 32) and loaded.class_names == [str(digit) for digit in range(10)]
    assert loaded.model.config.attention_resolutions == (8,) and loaded.schedule.config["kind"] == "cosine"
    assert loaded.training["train_config"]["loss"] == "l1"
    for flag, value in (("--digit", 7), ("--class", "7")):
        out_file = tmp_path / f"{flag[2:]}.npy"
        assert ddpm("sample", "--checkpoint", checkpoint, flag, value, *FEW_STEPS, "--npy", out_file) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "digit.npy"), np.load(tmp_path / "class.npy"))
    assert np.load(tmp_path / "digit.npy").shape == (2, 1, 32, 32)


def test_unconditional_mnist(tmp_path, capsys):
    data = write_mnist_like(tmp_path / "mnist", [0, 1], copies=2)
    out = tmp_path / "run"
    small = ["--channel-mult", "1,2", "--num-train-timesteps", 20]
    assert ddpm("train", "--dataset", "mnist", "--data-dir", data, "--out", out, "--unconditional", *small, *TINY) == 0
    loaded = load_checkpoint(out / "model.safetensors")
    assert loaded.class_names == [] and loaded.model.num_classes == 0 and loaded.dataset == "mnist"
    assert "unconditional" in fails(
        capsys, "sample", "--checkpoint", out / "model.safetensors", "--digit", 1, "--npy", "x"
    )


def test_checkerboard_mlp_linear_t100(tmp_path):
    out = tmp_path / "run"
    schedule = ["--schedule", "linear", "--num-train-timesteps", 100, "--scale-betas"]
    mlp = ["--hidden-dim", 128, "--num-layers", 3, "--max-steps", 2, "--batch-size", 16, "--no-progress"]
    assert ddpm("train", "--dataset", "checkerboard", "--out", out, *schedule, *mlp) == 0
    loaded = load_checkpoint(out / "model.safetensors")
    assert loaded.model_kind == "mlp" and loaded.model.config.hidden_dim == 128 and loaded.model.config.num_layers == 3
    assert loaded.schedule.num_train_timesteps == 100 and loaded.schedule.alphas_cumprod[-1] < 1e-3


@pytest.mark.parametrize("size, levels, expected", [(16, 1, ()), (16, 2, (8,)), (28, 3, (7,)), (64, 4, (16,))])
def test_default_attention_resolutions(size, levels, expected):
    assert default_attention_resolutions(size, levels) == expected


@pytest.mark.parametrize("size, attention", [(16, 4), (28, 7), (32, 8), (64, 16)])
def test_every_image_size_trains_with_default_attention(tmp_path, size, attention):
    if size == 28:
        dataset = ["--dataset", "mnist", "--data-dir", write_mnist_like(tmp_path / "mnist", [3, 5])]
    else:
        images, labels = write_sprites(tmp_path / "data", count=4, size=size)
        dataset = ["--dataset", f"npy:{images},{labels}"]
    out = tmp_path / "run"
    assert ddpm("train", *dataset, "--out", out, "--num-train-timesteps", 10, *TINY) == 0  # default 3 levels
    loaded = load_checkpoint(out / "model.safetensors")
    assert loaded.sample_shape[1:] == (size, size) and loaded.model.config.attention_resolutions == (attention,)
    assert sum(isinstance(module, AttentionBlock) for module in loaded.model.down.modules()) == 1
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"] == 2


def test_bad_data_fails_before_training_in_one_line(tmp_path, capsys):
    mixed = tmp_path / "mixed"
    write_flowers(mixed, count=1, size=64)
    Image.new("RGB", (32, 48)).save(mixed / "odd.png")
    line = fails(capsys, "train", "--dataset", f"folder:{mixed}", "--out", tmp_path / "r1", *TINY)
    assert "differ in size" in line and "64x64" in line and "32x48" in line
    assert not (tmp_path / "r1").exists()

    images, _ = write_sprites(tmp_path / "data", count=6)
    np.save(tmp_path / "data" / "short.npy", np.eye(5)[[0, 1, 2]])
    line = fails(
        capsys, "train", "--dataset", f"npy:{images},{tmp_path / 'data' / 'short.npy'}", "--out", tmp_path / "r2"
    )
    assert "has 3 labels for 6 images" in line

    np.save(tmp_path / "data" / "flat.npy", np.zeros((6, 768), np.uint8))
    line = fails(capsys, "train", "--dataset", f"npy:{tmp_path / 'data' / 'flat.npy'}", "--out", tmp_path / "r3")
    assert "rank 2" in line

    labels = tmp_path / "data" / "labels.npy"
    line = fails(
        capsys, "train", "--dataset", f"npy:{images},{labels}", "--class-names", "a,b,c", "--out", tmp_path / "r4"
    )
    assert "3 names for the 5 classes" in line

    data = write_mnist_like(tmp_path / "mnist", [1])
    line = fails(
        capsys, "train", "--dataset", "mnist", "--data-dir", data, "--out", tmp_path / "r5", "--channel-mult", "1,2,2,2"
    )
    assert "does not fit mnist (1 x 28 x 28 images)" in line and "divisible by 8" in line
    line = fails(
        capsys,
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        data,
        "--out",
        tmp_path / "r6",
        "--schedule",
        "cosine",
        "--beta-end",
        "0.01",
    )
    assert "--beta-end apply to the linear schedule" in line
    assert "--class-names applies to npy" in fails(
        capsys, "train", "--dataset", "mnist", "--class-names", "a", "--out", tmp_path / "r7"
    )
    assert not any((tmp_path / f"r{index}").exists() for index in range(2, 8))


def test_the_trainer_refuses_a_model_that_does_not_fit_the_data(tmp_path):
    images, labels = write_sprites(tmp_path / "data", count=4)
    data = load_npy_data(images, labels)
    config = TrainConfig(max_steps=1, batch_size=2)
    wrong_size = UNet(UNetConfig(image_size=28, in_channels=3, base_channels=8, num_classes=5))
    with pytest.raises(DatasetError, match=r"takes samples of shape \[3, 28, 28\] but npy:.* has \[3, 16, 16\]"):
        Trainer(wrong_size, NoiseSchedule.linear(10), data, config, tmp_path / "r", device="cpu")
    wrong_classes = UNet(
        UNetConfig(image_size=16, in_channels=3, base_channels=8, attention_resolutions=(), num_classes=3)
    )
    with pytest.raises(DatasetError, match="has 3 classes but npy:.* has 5"):
        Trainer(wrong_classes, NoiseSchedule.linear(10), data, config, tmp_path / "r", device="cpu")


@pytest.mark.parametrize(
    "kind, sample_shape, classes, options, millions",
    [
        ("mnist", (1, 32, 32), 10, {"base_channels": 64, "channel_mult": (1, 2, 4, 8), "num_res_blocks": 2}, 59.39),
        ("folder", (3, 64, 64), 0, {"base_channels": 64, "channel_mult": (1, 2, 4, 8), "num_res_blocks": 2}, 59.39),
    ],
    ids=["mnist-32px-64-128-256-512", "flowers-64px-64-128-256-512"],
)
def test_the_large_recipes_build_the_sizes_the_readme_gives(kind, sample_shape, classes, options, millions):
    data = SimpleNamespace(name=kind, sample_shape=sample_shape, class_names=[str(i) for i in range(classes)])
    with torch.device("meta"):
        model = build_new_model(kind, {**DEFAULTS[kind]["model"], **options}, data)
    count = sum(parameter.numel() for parameter in model.parameters())
    assert count / 1e6 == pytest.approx(millions, abs=0.01)
    assert model.config.attention_resolutions == (sample_shape[-1] // 4,)


def test_resume_reads_the_data_as_the_run_did(tmp_path, capsys):
    images, labels = write_sprites(tmp_path / "data", count=6, size=8)
    dataset = ["--dataset", f"npy:{images},{labels}", "--out", tmp_path / "run"]
    tiny = ["--channel-mult", "1,2", "--num-train-timesteps", 10, *TINY]
    assert ddpm("train", *dataset, "--class-names", ",".join(SPRITES), "--image-size", 16, *tiny) == 0
    line = fails(capsys, "train", *dataset, "--resume", "--max-steps", 4, "--no-progress")
    assert "--resume: the data's classes [0, 1, 2, 3, 4] differ from the run's [hero," in line
    resume = ["--resume", "--max-steps", 4, "--no-progress"]
    assert ddpm("train", *dataset, "--class-names", ",".join(SPRITES), *resume) == 0
    loaded = load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert loaded.training["steps"] == 4 and loaded.sample_shape == (3, 16, 16) and loaded.class_names == SPRITES
