import json
import struct

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
