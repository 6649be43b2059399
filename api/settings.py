"""One settings object for the API and the worker, read from the environment.

``REDIS_URL`` is read as is; every other setting is ``DDPM_<NAME>`` (for example
``DDPM_MODEL_DIR``, ``DDPM_RESULT_TTL_S``, ``DDPM_API_KEYS=key1,key2``). Torch-free.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    """Configuration shared by the API and the workers (they share nothing but Redis)."""

    model_config = SettingsConfigDict(env_prefix="DDPM_", extra="ignore", protected_namespaces=())

    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "DDPM_REDIS_URL"))
    key_prefix: str = "ddpm"
    queue_name: str = "ddpm"
    model_dir: Path = REPO_ROOT / "checkpoints"
    checkpoint: Path | None = None  # one extra checkpoint file, served under its file stem
    default_model: str = "mnist"
    result_ttl_s: int = Field(24 * 3600, ge=60)
    max_queue: int = Field(32, ge=1)  # queued jobs beyond this get 429
    max_n: int = Field(64, ge=1)
    min_steps: int = Field(10, ge=1)
    default_ddim_steps: int = Field(50, ge=1)
    max_guidance: float = 10.0
    api_keys: str = ""  # comma-separated; empty: no key needed
    # the worker
    device: str = "auto"  # auto: CUDA when present, else CPU
    torch_threads: int | None = None
    max_job_s: int = Field(2 * 3600, ge=1)
    visibility_timeout_s: int = Field(3 * 3600, ge=1)  # longer than the longest job
    heartbeat_s: float = Field(2.0, gt=0)
    stale_after_s: float = Field(60.0, gt=0)  # a running job without heartbeat this long is re-run
    max_attempts: int = Field(3, ge=1)
    preview_count: int = Field(20, ge=0)  # preview images per job
    gif_frames: int = Field(40, ge=2)
    progress_interval_s: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _visibility_outlasts_jobs(self) -> Settings:
        # a job still running when the broker's visibility timeout ends would be delivered twice
        if self.visibility_timeout_s <= self.max_job_s:
            raise ValueError(
                f"DDPM_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must exceed DDPM_MAX_JOB_S ({self.max_job_s})"
            )
        return self

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(key.strip() for key in self.api_keys.split(",") if key.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
