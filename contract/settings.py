"""One settings object for the API, the workers and ``ddpm serve``, read from the environment.

``REDIS_URL`` is read as is; every other setting is ``DDPM_<NAME>`` (for example
``DDPM_MODEL_DIR``, ``DDPM_RESULT_TTL_S``, ``DDPM_API_KEYS=key1,key2``). Torch-free.

Every limit a request is checked against lives here once (:class:`Limits`): the API builds its
request schema from it, so validation and ``/openapi.json`` always agree with the settings.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.samples import pixels_per_sample, sample_kind

REPO_ROOT = Path(__file__).resolve().parents[1]


class Limits(BaseModel):
    """The bounds of a generation request (also shown by ``GET /models``).

    How many samples one job may ask for depends on the model (:meth:`n_limit`): a point model
    up to ``max_points_per_job``; an image model as many images as fit in ``max_pixels_per_job``
    pixels (height x width), at most ``max_n`` and at least one."""

    model_config = ConfigDict(frozen=True)

    max_n: int = Field(description="most images in one job, whatever their size")
    max_pixels_per_job: int = Field(description="most image pixels (height x width, all samples) in one job")
    max_points_per_job: int = Field(description="most samples (points) in one job of a point model")
    min_steps: int | None = Field(
        description="fewest steps of every sampler that chooses its steps (DDPM_MIN_STEPS); null: each "
        "sampler's own (GET /models: samplers)"
    )
    max_guidance: float = Field(description="largest classifier-free guidance scale")

    def n_limit(self, sample_shape: Sequence[int]) -> int:
        """The most samples one job of a model with this sample shape may ask for."""
        if sample_kind(sample_shape) == "points":
            return self.max_points_per_job
        return max(1, min(self.max_n, self.max_pixels_per_job // pixels_per_sample(sample_shape)))

    @property
    def max_request_n(self) -> int:
        """The largest ``n`` any model may get (the request schema's bound)."""
        return max(self.max_n, self.max_points_per_job)


class Settings(BaseSettings):
    """Configuration shared by the API and the workers (they share nothing but Redis)."""

    model_config = SettingsConfigDict(
        env_prefix="DDPM_", extra="ignore", protected_namespaces=(), populate_by_name=True
    )

    # the Redis of the broker and the job store (ddpm serve: its embedded one, unless REDIS_URL is set)
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "DDPM_REDIS_URL"))
    key_prefix: str = "ddpm"  # the prefix of every Redis key of the service (several services may share a Redis)
    queue_name: str = "ddpm"  # the Celery queue the API sends jobs to and the workers take them from
    model_dir: Path = REPO_ROOT / "checkpoints"  # every *.safetensors here is offered, read at every call
    checkpoint: Path | None = None  # one extra checkpoint file, served under its file stem
    default_model: str = "mnist"  # the model of a request that names none
    result_ttl_s: int = Field(24 * 3600, ge=60)  # how long a job, its events and its results are kept
    max_queue: int = Field(32, ge=1)  # queued jobs beyond this get 429
    # request limits (see Limits)
    max_n: int = Field(64, ge=1, le=4096)  # images per job, whatever their size
    # most image pixels (height x width, all samples) in one job; 256 x 256: 64 MNIST digits (28 x 28,
    # capped by max_n), 16 images of 64 x 64
    max_pixels_per_job: int = Field(256 * 256, ge=1)
    max_points_per_job: int = Field(10_000, ge=1, le=1_000_000)  # samples per job of a point model
    # the fewest steps of every sampler that chooses them; None: each sampler's own (ddim 10, the
    # multistep solvers 5: ddpm_core.sampler_specs)
    min_steps: int | None = Field(None, ge=1)
    max_guidance: float = Field(10.0, ge=0, allow_inf_nan=False)  # largest classifier-free guidance scale
    api_keys: str = ""  # comma-separated; empty: no key needed
    protect_reads: bool = False  # with API keys: reading jobs, events and results needs a key too
    cors_origins: str = ""  # comma-separated origins allowed to call the API from a browser; none by default
    max_body_bytes: int = Field(16 * 1024, ge=1024)  # larger request bodies get 413 unread
    # rate limits on the endpoints that create jobs (POST /generate, POST /v1/images/generations),
    # per API key (per client address without keys), shared by every API replica through Redis:
    # limits in the `limits` notation, several separated by ";" (e.g. "5/minute" or
    # "100/hour;10/second"); empty: off
    rate_limit: str = ""
    idempotency_ttl_s: int = Field(24 * 3600, ge=1)  # how long an Idempotency-Key keeps its first answer
    images_timeout_s: float = Field(600.0, gt=0)  # how long POST /v1/images/generations waits for its job
    # webhooks (POST /generate's webhook_url): the Standard Webhooks signing secret ("whsec_" and
    # base64); without one, a webhook_url is refused
    webhook_secret: str = ""
    # comma-separated hosts, addresses or networks (CIDR) a webhook may reach although they are
    # loopback, private, link-local or otherwise not public (cloud-metadata addresses never)
    webhook_allowed_hosts: str = ""
    webhook_timeout_s: float = Field(5.0, gt=0, le=60)  # connect and read timeout of one delivery attempt
    webhook_max_response_bytes: int = Field(4096, ge=0, le=1 << 20)  # of a receiver's answer, read at most
    webhook_backoff_s: float = Field(5.0, gt=0)  # the first retry's delay; doubled at each failure (with jitter)
    webhook_backoff_max_s: float = Field(3600.0, gt=0)  # the longest delay between two attempts
    webhook_retry_for_s: float = Field(24 * 3600.0, gt=0)  # after this long since the first attempt, give up
    webhook_poll_s: float = Field(1.0, gt=0, le=60)  # how often the API's dispatcher looks for due deliveries
    # the worker
    device: str = "auto"  # auto: CUDA when present, else CPU
    torch_threads: int | None = None  # torch threads of a worker; None: torch's default
    jobs_in_flight: int = Field(16, ge=1, le=1024)  # jobs one worker process holds at once (its Celery threads)
    max_batch: int | None = Field(None, ge=1)  # rows per batched forward; None: 64 on CPU, 256 on CUDA
    compile: bool = True  # compile the forward's buckets in the background (eager until each is ready)
    compile_cache_dir: Path | None = None  # None: $XDG_CACHE_HOME/ddpm-service/compile (or ~/.cache/...)
    max_loaded_models: int = Field(4, ge=1)  # models (with their engines) a worker keeps; idle ones go first
    max_job_s: int = Field(2 * 3600, ge=1)  # a job running longer is cancelled by the engine and fails
    # the per-digit check: the evaluation classifier's file; None: mnist_classifier.safetensors in
    # the model directory; an empty string turns the check off
    classifier: str | None = None
    # the broker delivers a task message not acknowledged this long again (contract.broker); None:
    # max_job_s plus 5 minutes, so that a live job's message is never delivered twice
    visibility_timeout_s: int | None = Field(None, ge=1)
    # a queued job whose task was sent this long ago and whose message the broker no longer holds
    # (a worker died as it took it) is sent again
    lost_message_after_s: float = Field(10.0, gt=0)
    heartbeat_s: float = Field(2.0, gt=0)  # how often a worker reports itself and its running jobs
    stale_after_s: float = Field(60.0, gt=0)  # a running job without heartbeat this long is re-run
    worker_dead_after_s: float = Field(10.0, gt=0)  # a worker silent this long is dead: its jobs are re-run
    max_attempts: int = Field(3, ge=1)  # runs of a job (its first and re-runs after a worker died) before it fails
    preview_count: int = Field(20, ge=0)  # preview images per job
    gif_frames: int = Field(40, ge=2)  # frames of a job's denoising GIF
    progress_interval_s: float = Field(0.1, ge=0)  # least time between two progress events of a job

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.rate_limit.strip():
            from limits import parse_many  # the rate-limiting library's own notation

            try:
                parse_many(self.rate_limit)
            except ValueError as error:
                raise ValueError(
                    f"DDPM_RATE_LIMIT={self.rate_limit!r} is not a rate limit such as '5/minute' or "
                    f"'100/hour;10/second': {error}"
                ) from None
        if self.webhook_secret:
            webhook_key(self.webhook_secret)  # raises a clear error for a malformed secret
        return self

    @property
    def webhook_signing_key(self) -> bytes | None:
        """The HMAC key of the webhook signatures (the secret's base64 part, decoded), or None."""
        return webhook_key(self.webhook_secret) if self.webhook_secret else None

    @property
    def webhook_allowed_list(self) -> list[str]:
        return [host.strip() for host in self.webhook_allowed_hosts.split(",") if host.strip()]

    @property
    def limits(self) -> Limits:
        return Limits(
            max_n=self.max_n,
            max_pixels_per_job=self.max_pixels_per_job,
            max_points_per_job=self.max_points_per_job,
            min_steps=self.min_steps,
            max_guidance=self.max_guidance,
        )

    @property
    def compile_cache_path(self) -> Path:
        """Where compiled forwards are kept across restarts (``compile_cache_dir`` or the user's cache)."""
        if self.compile_cache_dir is not None:
            return Path(self.compile_cache_dir)
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "ddpm-service" / "compile"

    @property
    def broker_visibility_timeout_s(self) -> int:
        """The broker's visibility timeout: ``visibility_timeout_s``, else longer than any job."""
        return self.visibility_timeout_s or self.max_job_s + 300

    @property
    def classifier_path(self) -> Path | None:
        """The classifier file of the per-digit check, or None when the check is off."""
        if self.classifier is None:
            return Path(self.model_dir) / "mnist_classifier.safetensors"
        return Path(self.classifier) if self.classifier.strip() else None

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(key.strip() for key in self.api_keys.split(",") if key.strip())


WEBHOOK_SECRET_PREFIX = "whsec_"


def webhook_key(secret: str) -> bytes:
    """The key of a Standard Webhooks secret (``whsec_`` and the base64 of 24 to 64 random
    bytes); raises ValueError naming what is wrong."""
    how = (
        'make one with: python -c "import base64, secrets; '
        "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\""
    )
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        raise ValueError(f"DDPM_WEBHOOK_SECRET must start with {WEBHOOK_SECRET_PREFIX!r}; {how}")
    try:
        key = base64.b64decode(secret[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"DDPM_WEBHOOK_SECRET is not {WEBHOOK_SECRET_PREFIX!r} and base64; {how}") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"DDPM_WEBHOOK_SECRET holds {len(key)} bytes; it needs 24 to 64; {how}")
    return key


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
