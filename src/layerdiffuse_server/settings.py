"""Settings, read from the environment (``LAYERDIFFUSE_*``) once and passed down explicitly."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".cache" / "layerdiffuse"


class Settings(BaseSettings):
    """Where generated files live and which model to run.

    The Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``) is the hub library's
    own business; this only holds what belongs to us.
    """

    model_config = SettingsConfigDict(env_prefix="LAYERDIFFUSE_", extra="ignore")

    home: Path = Field(
        default_factory=_default_home,
        description="Directory for generated preset weights (tiny, sdxl-random) and other local state.",
    )
    model: str = Field(default="sdxl", description="Preset name: sdxl, tiny or sdxl-random.")
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N or mps.")
    dtype: str = Field(default="auto", description="auto, float32, float16 or bfloat16.")

    @property
    def presets_dir(self) -> Path:
        return self.home / "presets"
