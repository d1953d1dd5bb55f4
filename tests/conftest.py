"""Shared fixtures: the tiny preset is written once per test session and loaded once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from layerdiffuse_server.settings import Settings

KEYS_DIR = Path(__file__).parent / "fixtures" / "keys"


def read_key_table(name: str) -> list[list[str]]:
    """Rows of a reference key table: key, shape and (for the LoRA table) the diffusers target."""
    lines = (KEYS_DIR / name).read_text().splitlines()
    return [line.split("\t") for line in lines if line and not line.startswith("#")]


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.strip("[]").split(","))


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("layerdiffuse-home"), device="cpu")


@pytest.fixture(scope="session")
def tiny_folder(settings: Settings) -> Path:
    from layerdiffuse_server.engine.presets import ensure_random_preset

    return ensure_random_preset("tiny", settings.presets_dir)


@pytest.fixture(scope="session")
def tiny_pipeline(settings: Settings, tiny_folder: Path) -> Iterator[object]:
    from layerdiffuse_server.engine.pipeline import TransparentSDXLPipeline

    yield TransparentSDXLPipeline.from_preset("tiny", settings=settings, device="cpu")


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Tests that draw random tensors without their own generator still draw the same ones."""
    torch.manual_seed(0)
