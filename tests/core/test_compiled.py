"""BucketedForward: option resolution per device, padding to buckets, compile on the CPU."""

from __future__ import annotations

import pytest
import torch

from ddpm_core import NoiseSchedule, UNet, UNetConfig
from ddpm_core.batching import denoise_step
from ddpm_core.compiled import BucketedForward, power_of_two_buckets, resolve_forward_options
from ddpm_core.pipeline import Generation
from ddpm_core.samplers import make_sampler
from tests.tiny_models import TINY, perturbed


@pytest.fixture(scope="module")
def model() -> UNet:
    return perturbed(TINY)


def inputs(rows: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 1, 8, 8, generator=generator)
    t = torch.randint(0, 50, (rows,), generator=generator)
    labels = torch.randint(0, 4, (rows,), generator=generator)
    return x, t, labels


def test_buckets():
    assert power_of_two_buckets(1) == (1,)
    assert power_of_two_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert power_of_two_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    with pytest.raises(ValueError):
        power_of_two_buckets(0)


def test_cpu_options():
    eager = resolve_forward_options("cpu")
    assert not eager.compile and eager.dtype == torch.float32 and eager.buckets == () and eager.max_batch == 64
    compiled = resolve_forward_options("cpu", compile=True, max_batch=16)
    assert compiled.compile and compiled.mode is None and compiled.freezing and not compiled.cudagraphs
    assert compiled.dtype == torch.float32 and compiled.buckets == (1, 2, 4, 8, 16)
    autotuned = resolve_forward_options("cpu", compile=True, mode="max-autotune-no-cudagraphs", freezing=False)
    assert autotuned.mode == "max-autotune-no-cudagraphs" and not autotuned.freezing
    assert resolve_forward_options("cpu", buckets=(8, 2)).buckets == (2, 8)  # padding without compiling
    for bad in (
        {"precision": "bf16"},  # half precision is CUDA-only
        {"precision": "fp16"},
        {"precision": "int8"},
        {"compile": True, "mode": "reduce-overhead"},  # CUDA graphs
        {"mode": "max-autotune-no-cudagraphs"},  # a mode without compile
        {"compile": True, "max_batch": 16, "buckets": (4, 8)},
        {"max_batch": 0},
    ):
        with pytest.raises(ValueError):
            resolve_forward_options("cpu", **bad)


def test_cuda_options_resolve_without_a_gpu():
    options = resolve_forward_options("cuda", compile=True, bf16_supported=True)
    assert options.device_type == "cuda" and options.dtype == torch.bfloat16
    assert options.mode == "reduce-overhead" and options.cudagraphs and not options.freezing
    assert options.max_batch == 256 and options.buckets[-1] == 256 and len(options.buckets) == 9
    assert resolve_forward_options("cuda:0", bf16_supported=False).dtype == torch.float16
    assert resolve_forward_options("cuda", precision="fp32", bf16_supported=True).dtype == torch.float32
    no_graphs = resolve_forward_options("cuda", compile=True, mode="max-autotune-no-cudagraphs", bf16_supported=True)
    assert not no_graphs.cudagraphs
    eager = resolve_forward_options("cuda", bf16_supported=True)
    assert not eager.compile and not eager.cudagraphs and eager.dtype == torch.bfloat16


def test_nothing_cuda_runs_on_the_cpu(model, monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("a CUDA call on the CPU path")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", no_cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", no_cuda)
    monkeypatch.setattr(torch.cuda, "synchronize", no_cuda)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", no_cuda)
    monkeypatch.setattr(torch, "autocast", no_cuda)
    forward = BucketedForward(model, max_batch=4, buckets=(2, 4))
    assert forward.warmup().keys() == {2, 4}
    assert forward(*inputs(3)).shape == (3, 1, 8, 8)


def test_bf16_only_where_the_gpu_computes_it_natively(monkeypatch):
    for capability, dtype in (((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # emulation counts there
        assert resolve_forward_options("cuda").dtype == dtype, capability


def test_padding_does_not_change_the_real_rows(model):
    forward = BucketedForward(model, max_batch=8, buckets=(1, 2, 4, 8))
    assert [forward.bucket_for(rows) for rows in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    forward(*inputs(3))
    assert forward.padded_rows == 0 and forward.compiled_buckets == ()  # nothing installed: eager, unpadded
    for bucket in forward.buckets:  # a bucket's installed forward gets padded inputs of exactly its size
        forward.install(bucket, lambda x, t, y, size=bucket: model(x, t, y) if x.shape[0] == size else None)
    assert forward.compiled_buckets == (1, 2, 4, 8)
    with pytest.raises(ValueError, match="not one of the buckets"):
        forward.install(3, model)
    for rows in (1, 3, 5, 7):
        x, t, labels = inputs(rows, seed=rows)
        padded = forward(x, t, labels)
        with torch.inference_mode():
            exact = model(x, t, labels)
        assert padded.shape == exact.shape and padded.dtype == torch.float32
        torch.testing.assert_close(padded, exact, rtol=1e-4, atol=1e-5)
    assert forward.padded_rows == 0 + 1 + 3 + 1
    # more rows than the largest bucket: chunks of it
    x, t, labels = inputs(19, seed=19)
    with torch.inference_mode():
        exact = model(x, t, labels)
    torch.testing.assert_close(forward(x, t, labels), exact, rtol=1e-4, atol=1e-5)
    # a scalar timestep is broadcast, like the model does
    x, _, labels = inputs(3)
    with torch.inference_mode():
        torch.testing.assert_close(
            forward(x, torch.tensor(7), labels), model(x, torch.tensor(7), labels), rtol=1e-4, atol=1e-5
        )


@pytest.mark.e2e  # a real inductor compile (a C++ toolchain run): tens of seconds on 2 cores
def test_compile_on_cpu_pads_instead_of_recompiling():
    """One bucket (one compile): every batch of 1..4 rows reuses it."""
    small = perturbed(
        UNetConfig(
            image_size=8,
            in_channels=1,
            base_channels=4,
            channel_mult=(1,),
            num_res_blocks=1,
            attention_resolutions=(),
            dropout=0.0,
            num_classes=3,
            norm_groups=2,
        )
    )
    forward = BucketedForward(small, compile=True, max_batch=4, buckets=(4,))
    assert forward.options.freezing and forward.options.buckets == (4,)
    seconds = forward.warmup()
    assert set(seconds) == {4} and seconds[4] > 0 and forward.compile_seconds == seconds
    with torch.compiler.set_stance("fail_on_recompile"):
        for rows in (1, 3, 4, 2, 9):
            x, t, labels = inputs(rows, seed=rows)
            compiled = forward(x, t, labels)
            with torch.inference_mode():
                exact = small(x, t, labels)
            torch.testing.assert_close(compiled, exact, rtol=1e-4, atol=1e-4)
        # what the engine passes: inference tensors, a timestep expanded with stride 0
        with torch.inference_mode():
            x, _, labels = inputs(3)
            t = torch.tensor([17]).expand(3)
            torch.testing.assert_close(forward(x, t, labels), small(x, t, labels), rtol=1e-4, atol=1e-4)
        generation = Generation.for_model(
            small,
            make_sampler("ddim", NoiseSchedule.linear(50), 3),
            num_samples=2,
            sample_shape=(1, 8, 8),
            class_labels=[0, 1],
            guidance_scale=1.0,
        )
        while not generation.done:
            denoise_step([generation], forward)
