"""Noise schedules and every term derived from them.

The forward process of Ho et al. (2020) adds Gaussian noise over ``T`` steps:

    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)                   (Ho eq. 2)
    q(x_t | x_0)     = N(sqrt(alphabar_t) x_0, (1 - alphabar_t) I)              (Ho eq. 4)

with ``alpha_t = 1 - beta_t`` and ``alphabar_t = prod_{s<=t} alpha_s``. All terms are
computed once, in float64, by pure functions and kept in one frozen :class:`NoiseSchedule`.
Samplers read them; the network never sees them.

The linear schedule keeps the betas it is given for any T: 1e-4 to 0.02 by default, the paper's
values for T = 1000. Scaling them by 1000 / T (improved-diffusion's choice, which keeps alphabar_T
near zero for a short schedule) happens only when asked (``scale_to_length=True``; ``ddpm train
--scale-betas``). A checkpoint stores the betas used, so a reloaded schedule is bit-identical.

Timesteps are 0-based here: index ``t`` in ``[0, T)`` stands for the paper's step ``t + 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ddpm_core.defaults import DEFAULT_BETA_END, DEFAULT_BETA_START

SCHEDULE_KINDS = ("linear", "cosine")
# A bound on T: a checkpoint's schedule config is untrusted, and each of the 13 derived terms
# takes 8 T bytes.
MAX_TRAIN_TIMESTEPS = 100_000


def linear_betas(
    num_train_timesteps: int,
    beta_start: float = DEFAULT_BETA_START,
    beta_end: float = DEFAULT_BETA_END,
    *,
    scale_to_length: bool = False,
) -> np.ndarray:
    """Betas rising linearly from ``beta_start`` to ``beta_end`` (Ho et al. 2020, section 4).

    The betas are the ones given, for any T. With ``scale_to_length`` both are first multiplied
    by 1000 / T (``beta_end`` capped at 0.999), as improved-diffusion does, so that a schedule
    meant for T = 1000 keeps alphabar_T near zero at another T.
    Returns a float64 array of shape (T,) whose first and last values are the betas used.
    """
    _check_num_steps(num_train_timesteps)
    if scale_to_length:
        scale = 1000.0 / num_train_timesteps
        beta_start, beta_end = beta_start * scale, min(beta_end * scale, 0.999)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    return np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)


def cosine_alphas_cumprod(num_train_timesteps: int, s: float = 0.008) -> np.ndarray:
    """alphabar(t) = f(t) / f(0), f(t) = cos(((t/T + s) / (1 + s)) * pi/2)^2 (Nichol & Dhariwal eq. 17).

    Returns float64 values at t = 0..T, shape (T + 1,), the first being 1.
    """
    _check_num_steps(num_train_timesteps)
    steps = np.arange(num_train_timesteps + 1, dtype=np.float64) / num_train_timesteps
    f = np.cos((steps + s) / (1.0 + s) * math.pi / 2.0) ** 2
    return f / f[0]


def cosine_betas(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the cosine schedule, beta_t = 1 - alphabar_t / alphabar_{t-1}, clipped at
    ``max_beta`` to avoid the singularity at t = T (Nichol & Dhariwal 2021, section 3.2).

    Returns a float64 array of shape (T,).
    """
    alphas_cumprod = cosine_alphas_cumprod(num_train_timesteps, s)
    betas = 1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return np.clip(betas, 0.0, max_beta)


def _check_num_steps(num_train_timesteps: int) -> None:
    if (
        not isinstance(num_train_timesteps, (int, np.integer))
        or isinstance(num_train_timesteps, bool)
        or not 1 <= num_train_timesteps <= MAX_TRAIN_TIMESTEPS
    ):
        raise ValueError(
            f"num_train_timesteps must be an integer in [1, {MAX_TRAIN_TIMESTEPS}], got {num_train_timesteps!r}"
        )


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.float64)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A beta schedule and its derived terms, all float64 arrays of shape (T,).

    Build one with :meth:`linear`, :meth:`cosine` or :meth:`from_betas`; ``config`` records how,
    so that a checkpoint can rebuild the same schedule.
    """

    betas: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)
    alphas: np.ndarray = field(init=False)
    alphas_cumprod: np.ndarray = field(init=False)
    alphas_cumprod_prev: np.ndarray = field(init=False)
    sqrt_alphas_cumprod: np.ndarray = field(init=False)
    sqrt_one_minus_alphas_cumprod: np.ndarray = field(init=False)
    sqrt_recip_alphas_cumprod: np.ndarray = field(init=False)
    sqrt_recipm1_alphas_cumprod: np.ndarray = field(init=False)
    posterior_variance: np.ndarray = field(init=False)
    posterior_log_variance_clipped: np.ndarray = field(init=False)
    posterior_mean_coef1: np.ndarray = field(init=False)
    posterior_mean_coef2: np.ndarray = field(init=False)
    _tables: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0:
            raise ValueError("betas must be a non-empty 1-D array")
        if not np.all((betas > 0.0) & (betas <= 1.0)):
            raise ValueError("betas must lie in (0, 1]")
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        # Posterior q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)                      (Ho eq. 6)
        # beta~_t = (1 - alphabar_{t-1}) / (1 - alphabar_t) * beta_t                 (Ho eq. 7)
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # mu~_t = coef1 * x_0 + coef2 * x_t                                          (Ho eq. 7)
        coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)
        # beta~_0 is 0; its log is clipped to beta~_1 as in Ho et al.'s code.
        log_var = np.log(np.append(posterior_variance[1], posterior_variance[1:])) if betas.size > 1 else np.log(betas)
        values = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": log_var,
            "posterior_mean_coef1": coef1,
            "posterior_mean_coef2": coef2,
        }
        for name, value in values.items():
            object.__setattr__(self, name, _readonly(value))
        object.__setattr__(self, "config", dict(self.config))
        object.__setattr__(self, "_tables", {})

    # ----------------------------------------------------------------- construction
    @classmethod
    def linear(
        cls,
        num_train_timesteps: int = 1000,
        beta_start: float = DEFAULT_BETA_START,
        beta_end: float = DEFAULT_BETA_END,
        *,
        scale_to_length: bool = False,
    ) -> NoiseSchedule:
        """The linear schedule of Ho et al. (2020) over T steps; see :func:`linear_betas`.

        ``config`` records the betas actually used (after any scaling), so :meth:`from_config`
        rebuilds exactly these betas.
        """
        betas = linear_betas(num_train_timesteps, beta_start, beta_end, scale_to_length=scale_to_length)
        config = {
            "kind": "linear",
            "num_train_timesteps": int(num_train_timesteps),
            "beta_start": float(betas[0]),
            "beta_end": float(betas[-1]),
        }
        return cls(betas, config)

    @classmethod
    def cosine(cls, num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """The cosine schedule of Nichol & Dhariwal (2021)."""
        config = {
            "kind": "cosine",
            "num_train_timesteps": int(num_train_timesteps),
            "s": float(s),
            "max_beta": float(max_beta),
        }
        return cls(cosine_betas(num_train_timesteps, s, max_beta), config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NoiseSchedule:
        """Rebuild a schedule from its ``config`` (as stored in a checkpoint)."""
        if not isinstance(config, dict):
            raise ValueError("schedule config must be a JSON object")
        options = dict(config)
        kind = options.pop("kind", None)
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}; expected one of {', '.join(SCHEDULE_KINDS)}")
        try:
            return getattr(cls, kind)(**options)
        except TypeError as error:
            raise ValueError(f"bad {kind} schedule config {config}: {error}") from None

    # ----------------------------------------------------------------- properties
    @property
    def num_train_timesteps(self) -> int:
        """T, the number of training timesteps."""
        return int(self.betas.shape[0])

    def __len__(self) -> int:
        return self.num_train_timesteps

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.config or {'num_train_timesteps': self.num_train_timesteps}})"

    # ----------------------------------------------------------------- respacing
    def respace(self, timesteps: Sequence[int]) -> NoiseSchedule:
        """The schedule restricted to ``timesteps`` (ascending), as in improved-diffusion.

        The kept ``alphas_cumprod`` are unchanged; betas are recomputed from them,
        beta'_i = 1 - alphabar_{t_i} / alphabar_{t_{i-1}}, so that q(x_t | x_0) is the same at
        every kept step. Keeping all T steps gives back the original schedule.
        """
        kept = np.asarray(list(timesteps), dtype=np.int64)
        if kept.ndim != 1 or kept.size == 0:
            raise ValueError("timesteps must be a non-empty sequence")
        if np.any(np.diff(kept) <= 0) or kept[0] < 0 or kept[-1] >= self.num_train_timesteps:
            raise ValueError("timesteps must be strictly increasing and within [0, T)")
        kept_alphas_cumprod = self.alphas_cumprod[kept]
        previous = np.append(1.0, kept_alphas_cumprod[:-1])
        betas = 1.0 - kept_alphas_cumprod / previous
        return NoiseSchedule(betas, {**self.config, "respaced_from": self.num_train_timesteps})

    # ----------------------------------------------------------------- forward process
    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0): sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps (Ho eq. 4).

        Args:
            original: clean samples x_0, shape (B, ...).
            noise: eps ~ N(0, I), same shape.
            timesteps: 0-based steps, shape (B,), integers in [0, T).
        Returns:
            x_t, shape (B, ...), in ``original``'s dtype.
        """
        if noise.shape != original.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != sample shape {tuple(original.shape)}")
        signal = self.gather("sqrt_alphas_cumprod", timesteps, original)
        sigma = self.gather("sqrt_one_minus_alphas_cumprod", timesteps, original)
        return signal * original + sigma * noise

    def gather(self, name: str, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Values of term ``name`` at ``timesteps`` (B,), shaped (B, 1, ..., 1) to broadcast
        against ``like``, on its device and in its dtype."""
        key = (name, like.device, like.dtype)
        table = self._tables.get(key)
        if table is None:  # cast once per device and dtype, so no host copy happens per call
            table = torch.tensor(getattr(self, name)).to(device=like.device, dtype=like.dtype)
            self._tables[key] = table
        index = torch.as_tensor(timesteps, device=like.device).to(torch.long).reshape(-1)
        return table[index].reshape(-1, *([1] * (like.ndim - 1)))
