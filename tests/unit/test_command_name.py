"""Messages name the ``layerdiffuse`` command as it can be typed on this host."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerdiffuse_server import command_name as module


@pytest.fixture
def venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fake environment: an interpreter and, beside it, the console script; nothing on PATH."""
    bin_dir = tmp_path / "project" / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").touch()
    script = bin_dir / "layerdiffuse"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    module.command_name.cache_clear()
    yield tmp_path / "project"
    module.command_name.cache_clear()


def test_a_checkout_names_the_script_in_its_venv(venv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(venv)
    assert module.command("keys create") == ".venv/bin/layerdiffuse keys create"


def test_elsewhere_the_full_path(venv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (venv.parent / "elsewhere").mkdir()
    monkeypatch.chdir(venv.parent / "elsewhere")
    assert module.command_name() == str(venv / ".venv" / "bin" / "layerdiffuse")


def test_on_path_the_bare_name(venv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(venv / ".venv" / "bin"))
    assert module.command("download") == "layerdiffuse download"


def test_without_a_console_script_the_bare_name(venv: Path) -> None:
    (venv / ".venv" / "bin" / "layerdiffuse").unlink()
    assert module.command_name() == "layerdiffuse"
