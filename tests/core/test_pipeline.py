import pytest
import torch

from ddpm_core import DDIMSampler, DDPMSampler, GenerationCancelled, NoiseSchedule, UNet, UNetConfig, generate
from ddpm_core.pipeline import guided_model_output
from tests.tiny_models import TINY, perturbed


@pytest.fixture(scope="module")
def model():
    return perturbed(TINY)


def sampler(steps=8):
    s = DDIMSampler(NoiseSchedule.linear(50), eta=1.0)
    s.set_timesteps(steps)
    return s


def test_unet_shapes_and_configs():
    for config in (
        TINY,
        UNetConfig(
            image_size=16,
            in_channels=3,
            base_channels=8,
            channel_mult=(1, 2, 2),
            attention_resolutions=(8,),
            num_classes=0,
            norm_groups=4,
        ),
    ):
        net = UNet(config)
        x = torch.randn(2, config.in_channels, config.image_size, config.image_size)
        assert net(x, torch.tensor([3, 7])).shape == x.shape
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(image_size=28, channel_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="attention_resolutions"):
        UNetConfig(image_size=28, attention_resolutions=(5,))


def test_guidance_zero_is_the_plain_conditional_output(model):
    x = torch.randn(4, 1, 8, 8)
    labels = torch.tensor([0, 1, 2, 1])
    t = torch.tensor([20])
    plain = model(x, t.expand(4), labels)
    torch.testing.assert_close(guided_model_output(model, x, t, labels, 0.0, 3), plain)
    guided = guided_model_output(model, x, t, labels, 2.0, 3)
    unconditional = model(x, t.expand(4), torch.full((4,), 3))
    torch.testing.assert_close(guided, plain + 2.0 * (plain - unconditional), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(guided, plain)


def test_seeded_generation_is_deterministic(model):
    first = generate(model, sampler(), sample_shape=(1, 8, 8), class_labels=[0, 1], guidance_scale=1.5, seed=11)
    second = generate(model, sampler(), sample_shape=(1, 8, 8), class_labels=[0, 1], guidance_scale=1.5, seed=11)
    other = generate(model, sampler(), sample_shape=(1, 8, 8), class_labels=[0, 1], guidance_scale=1.5, seed=12)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.allclose(first, other)


def test_each_sample_depends_only_on_its_own_seed(model):
    batch = generate(model, sampler(), sample_shape=(1, 8, 8), class_labels=[2, 0, 1, None], guidance_scale=1.0, seed=5)
    alone = generate(model, sampler(), sample_shape=(1, 8, 8), class_labels=[1], guidance_scale=1.0, seed=[7])
    torch.testing.assert_close(batch[2:3], alone, rtol=1e-5, atol=1e-5)


def test_callback_and_cancellation(model):
    seen = []
    generate(
        model,
        sampler(6),
        sample_shape=(1, 8, 8),
        num_samples=2,
        seed=0,
        callback=lambda info: seen.append((info.step, info.total, info.sample.shape, info.pred_original_sample.shape)),
    )
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5, 6]
    assert all(s[1] == 6 and s[2] == (2, 1, 8, 8) and s[3] == (2, 1, 8, 8) for s in seen)
    calls = []

    def stop_after_three():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(GenerationCancelled) as cancelled:
        generate(
            model,
            DDPMSampler(NoiseSchedule.linear(50)),
            sample_shape=(1, 8, 8),
            num_samples=1,
            should_stop=stop_after_three,
        )
    assert cancelled.value.step == 3 and cancelled.value.total == 50


def test_bad_labels_are_refused(model):
    """One label check everywhere: the null label (num_classes) is not a class (None is how a
    caller asks for an unconditional row), and neither is anything past it."""
    for label in (model.num_classes, model.num_classes + 1, -1):
        with pytest.raises(ValueError, match=f"class label {label} must be between 0 and {model.num_classes - 1}"):
            generate(model, sampler(), sample_shape=(1, 8, 8), class_labels=[label])
    with pytest.raises(ValueError, match="guidance"):
        generate(model, sampler(), sample_shape=(1, 8, 8), num_samples=1, guidance_scale=-1)


def test_noise_comes_from_cpu_generators_whatever_the_device():
    """A seed gives the same noise on every device: the generators live on the CPU and the noise
    is copied to the sample's device (a CUDA generator, Philox, would draw other numbers)."""
    from ddpm_core.pipeline import sample_generators
    from ddpm_core.samplers import randn_like

    generators = sample_generators(5, 3, torch.device("cuda"))  # no GPU here: nothing CUDA is made
    assert [generator.device.type for generator in generators] == ["cpu"] * 3
    expected = torch.cat([torch.randn((1, 4), generator=torch.Generator().manual_seed(seed)) for seed in (5, 6, 7)])
    assert torch.equal(randn_like(torch.empty(3, 4), sample_generators(5, 3)), expected)
    on_meta = randn_like(torch.empty(3, 4, device="meta"), sample_generators(5, 3))
    assert on_meta.device.type == "meta" and on_meta.shape == (3, 4)
