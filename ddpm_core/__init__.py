"""ddpm_core: denoising diffusion models in PyTorch.

Schedules (:class:`NoiseSchedule`), samplers (:class:`DDPMSampler`, :class:`DDIMSampler`,
:class:`DPMSolverMultistepSampler`, :class:`UniPCSampler`),
networks (:class:`UNet`, :class:`MLPDenoiser`), the generation loop (:func:`generate`), the
trainer, data sets, safe checkpoints and rendering.

Attributes are imported lazily, so ``import ddpm_core.checkpoint_header`` stays torch-free.
"""

from __future__ import annotations

from ddpm_core.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "NoiseSchedule": "ddpm_core.schedule",
    "DDPMSampler": "ddpm_core.samplers",
    "DDIMSampler": "ddpm_core.samplers",
    "DPMSolverMultistepSampler": "ddpm_core.samplers",
    "UniPCSampler": "ddpm_core.samplers",
    "SamplerOutput": "ddpm_core.samplers",
    "make_sampler": "ddpm_core.samplers",
    "UNet": "ddpm_core.models",
    "UNetConfig": "ddpm_core.models",
    "MLPDenoiser": "ddpm_core.models",
    "MLPConfig": "ddpm_core.models",
    "generate": "ddpm_core.pipeline",
    "StepInfo": "ddpm_core.pipeline",
    "Trainer": "ddpm_core.training",
    "TrainConfig": "ddpm_core.training",
    "LoadedCheckpoint": "ddpm_core.checkpoint",
    "load_checkpoint": "ddpm_core.checkpoint",
    "save_checkpoint": "ddpm_core.checkpoint",
    "InferenceDefaults": "ddpm_core.checkpoint_header",
    "inference_defaults": "ddpm_core.checkpoint_header",
    "pick_device": "ddpm_core.device",
    "DDPMError": "ddpm_core.errors",
    "CheckpointError": "ddpm_core.errors",
    "DatasetError": "ddpm_core.errors",
    "GenerationCancelled": "ddpm_core.errors",
    "UsageError": "ddpm_core.errors",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
