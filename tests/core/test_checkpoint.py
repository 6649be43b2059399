import json
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ddpm_core import CheckpointError, NoiseSchedule, UNet, UNetConfig, generate, load_checkpoint, save_checkpoint
from ddpm_core.checkpoint_header import InferenceDefaults, inference_defaults, read_checkpoint_info
from ddpm_core.samplers import make_sampler

CONFIG = UNetConfig(
    image_size=8,
    base_channels=8,
    channel_mult=(1, 2),
    attention_resolutions=(),
    num_classes=2,
    norm_groups=4,
    dropout=0.0,
)


def make_model():
    torch.manual_seed(0)
    model = UNet(CONFIG)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def test_round_trip_gives_identical_samples(tmp_path):
    model, schedule = make_model(), NoiseSchedule.cosine(40)
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        model,
        schedule,
        class_names=["a", "b"],
        sample_shape=(1, 8, 8),
        dataset="test",
        training={"steps": 3},
    )
    loaded = load_checkpoint(path)
    assert loaded.model.config == CONFIG and loaded.class_names == ["a", "b"] and loaded.sample_shape == (1, 8, 8)
    assert loaded.schedule.config == schedule.config and loaded.training == {"steps": 3}
    assert len(loaded.weights_sha256) == 64
    kwargs = dict(sample_shape=(1, 8, 8), class_labels=[0, 1, None], guidance_scale=2.0, seed=3)
    before = generate(model, make_sampler("ddpm", schedule), **kwargs)
    after = generate(loaded.model, make_sampler("ddpm", loaded.schedule), **kwargs)
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    info = read_checkpoint_info(path)
    assert info["parameter_count"] == sum(p.numel() for p in model.parameters())


def test_pickled_torch_file_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.save(make_model().state_dict(), path)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)


def test_foreign_and_broken_files_are_refused(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="not a ddpm-service checkpoint"):
        load_checkpoint(plain)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 10)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_weights_that_disagree_with_the_config_are_refused(tmp_path):
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        make_model(),
        NoiseSchedule.linear(10),
        class_names=["a", "b"],
        sample_shape=(1, 8, 8),
        dataset="test",
    )
    data = path.read_bytes()
    header_size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + header_size])
    header["__metadata__"]["model_config"] = json.dumps({**CONFIG.to_dict(), "base_channels": 16})
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + header_size :])
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(path)


# ---------------------------------------------------------------- inference defaults


@pytest.mark.parametrize(
    "training, expected",
    [({}, 0.0), ({"default_guidance": 0}, 0.0), ({"default_guidance": 0.5}, 0.5), ({"default_guidance": None}, 0.0)],
)
def test_inference_defaults_parse_the_training_metadata(training, expected):
    defaults = inference_defaults(training)
    assert defaults == InferenceDefaults(default_guidance=expected)
    assert isinstance(defaults.default_guidance, float)


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "1.0", True, [1]])
def test_bad_inference_defaults_are_refused(value):
    with pytest.raises(CheckpointError, match="default_guidance"):
        inference_defaults({"default_guidance": value})
    with pytest.raises(ValueError):
        InferenceDefaults(default_guidance=value)


def test_loaded_checkpoint_has_its_defaults_and_bad_ones_are_refused_at_load(tmp_path):
    common = dict(class_names=["a", "b"], sample_shape=(1, 8, 8), dataset="test")
    path = save_checkpoint(
        tmp_path / "m.safetensors", make_model(), NoiseSchedule.linear(10), training={"default_guidance": 0}, **common
    )
    assert load_checkpoint(path).defaults.default_guidance == 0.0
    bad = save_checkpoint(
        tmp_path / "bad.safetensors",
        make_model(),
        NoiseSchedule.linear(10),
        training={"default_guidance": -2},
        **common,
    )
    with pytest.raises(CheckpointError, match="bad.safetensors.*default_guidance"):
        load_checkpoint(bad)


# ---------------------------------------------------------------- crafted headers


def write_safetensors(path, metadata, tensors=None):
    """A safetensors file written by hand: ``tensors`` maps names to (dtype, shape, bytes)."""
    header, data = {"__metadata__": metadata}, b""
    for name, (dtype, shape, payload) in (tensors or {}).items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def project_metadata(**model_config):
    return {
        "format": "ddpm-service.checkpoint",
        "format_version": "1",
        "model_kind": "unet",
        "model_config": json.dumps({**CONFIG.to_dict(), **model_config}),
        "schedule": json.dumps(NoiseSchedule.linear(10).config),
        "class_names": json.dumps(["a", "b"]),
        "sample_shape": json.dumps([1, 8, 8]),
        "dataset": "test",
        "training": "{}",
    }


@pytest.fixture
def huge_empty(tmp_path):
    """The reported attack: valid project metadata for a huge U-Net and no tensors at all."""
    return write_safetensors(tmp_path / "huge.safetensors", project_metadata(base_channels=4096))


def test_a_header_without_tensors_is_refused(huge_empty):
    with pytest.raises(CheckpointError, match="holds no tensors"):
        read_checkpoint_info(huge_empty)
    with pytest.raises(CheckpointError, match="holds no tensors"):
        load_checkpoint(huge_empty)


def test_a_huge_config_is_refused_before_allocation(tmp_path):
    path = write_safetensors(
        tmp_path / "m.safetensors", project_metadata(base_channels=4096), {"w": ("F32", [1], b"\0" * 4)}
    )
    assert read_checkpoint_info(path)["parameter_count"] == 1  # the header alone looks harmless
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"builds [\d,]+ parameters, over the limit of 500,000,000"):
        load_checkpoint(path)
    assert time.perf_counter() - started < 20


@pytest.mark.e2e  # a real process under an address-space limit
def test_sample_on_a_crafted_header_is_one_line_and_bounded(huge_empty):
    """The CLI refuses the file in one line, within a 2 GiB address space (the bug grew to 6.7 GB)."""

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    result = subprocess.run(
        [sys.executable, "-m", "ddpm_core", "sample", "--checkpoint", str(huge_empty), "--png", "x.png"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_memory,
        cwd=huge_empty.parent,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"ddpm: error: {huge_empty}: checkpoint holds no tensors"]


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"dtype": "F32", "shape": [2]}, "malformed data_offsets"),
        ({"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}, "unknown dtype"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "malformed shape"),
        ({"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}, "malformed shape"),
        ({"dtype": "F32", "shape": [1000], "data_offsets": [0, 4]}, "do not fit"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "run past the data"),
        ({"dtype": "F32", "shape": [], "data_offsets": [4, 8]}, "leave a gap"),
        ([1, 2], "not an object"),
    ],
)
def test_malformed_tensor_entries_are_refused(tmp_path, entry, message):
    header = json.dumps({"__metadata__": project_metadata(), "w": entry}).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint_info(path)


def test_trailing_data_that_no_tensor_covers_is_refused(tmp_path):
    path = write_safetensors(tmp_path / "m.safetensors", project_metadata(), {"w": ("F32", [1], b"\0" * 4)})
    path.write_bytes(path.read_bytes() + b"\0" * 64)
    with pytest.raises(CheckpointError, match="cover 4 of the 68 data bytes"):
        read_checkpoint_info(path)


def test_tensors_that_do_not_match_the_config_are_refused_before_loading(tmp_path, monkeypatch):
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        make_model(),
        NoiseSchedule.linear(10),
        class_names=["a", "b"],
        sample_shape=(1, 8, 8),
        dataset="test",
    )
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    header["renamed.weight"] = header.pop("input_conv.weight")
    header["__metadata__"]["model_config"] = json.dumps({**CONFIG.to_dict(), "num_classes": 3})
    header["__metadata__"]["class_names"] = json.dumps(["a", "b", "c"])
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size :])

    def no_load(*args, **kwargs):
        raise AssertionError("weights were read before the header was checked")

    monkeypatch.setattr("ddpm_core.checkpoint.load_file", no_load)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "weights do not match" in message and "missing input_conv.weight" in message
    assert (
        "unexpected renamed.weight" in message and "mismatched class_embed.weight [3, 32] (expected [4, 32])" in message
    )
    assert "\n" not in message


def test_the_parameter_bound_applies_to_the_header_and_the_model(tmp_path):
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        make_model(),
        NoiseSchedule.linear(10),
        class_names=["a", "b"],
        sample_shape=(1, 8, 8),
        dataset="test",
    )
    count = read_checkpoint_info(path)["parameter_count"]
    assert read_checkpoint_info(path, max_parameters=count)["parameter_count"] == count
    with pytest.raises(CheckpointError, match=f"holds {count:,} parameters, over the limit of {count - 1:,}"):
        read_checkpoint_info(path, max_parameters=count - 1)
    with pytest.raises(CheckpointError, match="over the limit"):
        load_checkpoint(path, max_parameters=count - 1)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("sample_shape", "[1, 16, 16]", r"sample_shape \[1, 16, 16\] does not match the model's \[1, 8, 8\]"),
        ("sample_shape", "[1, 100000, 100000]", "exceeds 16,777,216 elements"),
        ("sample_shape", "[1, -8, 8]", "positive integers"),
        ("schedule", json.dumps({"kind": "linear", "num_train_timesteps": 10**9}), "num_train_timesteps"),
        ("model_config", json.dumps({**CONFIG.to_dict(), "num_res_blocks": 10**6}), "at most 8 levels"),
        ("model_config", json.dumps({**CONFIG.to_dict(), "base_channels": "8"}), "base_channels='8'"),
        ("training", "[]", "training must be a JSON object"),
        ("class_names", '["a"]', "1 class names for a model of 2 classes"),
    ],
)
def test_bad_metadata_is_refused_in_one_line(tmp_path, field, value, message):
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        make_model(),
        NoiseSchedule.linear(10),
        class_names=["a", "b"],
        sample_shape=(1, 8, 8),
        dataset="test",
    )
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"][field] = value
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size :])
    with pytest.raises(CheckpointError, match=message) as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["mnist.safetensors", "mnist_classifier.safetensors", "checkerboard.safetensors"])
def test_the_shipped_checkpoints_still_load(name):
    path = Path(__file__).resolve().parents[2] / "checkpoints" / name
    if name == "checkerboard.safetensors":  # the 2D system: T = 100, linear betas scaled to 1e-3..0.2
        loaded = load_checkpoint(path)
        assert loaded.sample_shape == (2,) and loaded.dataset == "checkerboard" and loaded.num_classes == 0
        assert loaded.model.config.hidden_dim == 128 and loaded.model.config.num_layers == 3
        assert loaded.schedule.config == {
            "kind": "linear",
            "num_train_timesteps": 100,
            "beta_start": pytest.approx(1e-3),
            "beta_end": pytest.approx(0.2),
        }
        assert float(loaded.schedule.alphas_cumprod[-1]) < 1e-3  # x_T is noise
        assert path.stat().st_size < 1_000_000
    elif name == "mnist.safetensors":
        loaded = load_checkpoint(path)
        info = read_checkpoint_info(path)
        assert loaded.model.config.to_dict() == info["model_config"] and loaded.sample_shape == (1, 28, 28)
        assert info["parameter_count"] == sum(p.numel() for p in loaded.model.parameters())
        assert loaded.defaults.default_guidance == 0.5
    else:
        from ddpm_core.evaluation.classifier import ClassifierConfig, load_classifier

        assert load_classifier(path).model.config == ClassifierConfig()
