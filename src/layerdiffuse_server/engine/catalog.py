"""Checks of the engine's choices (:mod:`..engine_choices`) and weight files, without loading the
engine. ``Settings`` types its fields with the choices; the CLI checks weight files with
:func:`check_choices` before it imports torch (seconds) or loads a model (longer), so a typo is
answered at once."""

from __future__ import annotations

import re
from pathlib import Path

from ..engine_choices import DECODER_PASSES, DEVICE_PATTERN, DEVICES, DTYPES, PRESETS

_DEVICE = re.compile(DEVICE_PATTERN)


def looks_local(reference: str) -> bool:
    """A weight reference written as a path (rather than a hub ``owner/repo``)."""
    return reference.startswith(("/", "./", "../", "~"))


def check_choices(
    *,
    model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    decoder_passes: int | None = None,
    files: dict[str, str | None] | None = None,
) -> list[str]:
    """What is wrong with these choices, one line per flag (empty when nothing is)."""
    problems = []
    if model is not None and model not in PRESETS:
        problems.append(f"--model: unknown preset {model!r}; choose one of {', '.join(PRESETS)}")
    if device is not None and not _DEVICE.match(device):
        problems.append(f"--device: {device!r} is not {DEVICES}")
    if dtype is not None and dtype not in DTYPES:
        problems.append(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if decoder_passes is not None and decoder_passes not in DECODER_PASSES:
        problems.append(f"--decoder-passes: {decoder_passes} is not one of {', '.join(map(str, DECODER_PASSES))}")
    for flag, reference in (files or {}).items():
        if reference and looks_local(reference) and not Path(reference).expanduser().exists():
            problems.append(f"{flag}: {reference} does not exist")
    return problems
