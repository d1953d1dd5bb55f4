"""Where weights come from: local paths, or files and folders of Hugging Face hub repos.

A weight reference is a string. It names a local file or folder when it starts with ``/``, ``./``,
``../`` or ``~`` or when it exists on disk; otherwise ``owner/repo`` is a hub repository and
``owner/repo/path/in/repo.safetensors`` one file in it. Hub files are looked up in the standard hub
cache (``HF_HOME`` / ``HF_HUB_CACHE``) and downloaded on first use unless ``HF_HUB_OFFLINE`` is set;
when a file is missing and cannot be fetched, :class:`MissingWeightsError` says which file, where
it was looked for, and what gets it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

from ...command_name import command
from ...errors import MissingWeightsError
from ..catalog import looks_local

_TRUTHY = {"1", "true", "yes", "on"}
_DOWNLOAD_ERRORS = (LocalEntryNotFoundError, EntryNotFoundError, HfHubHTTPError, OSError, ValueError)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE``, read at call time (the hub library reads it once at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY or bool(constants.HF_HUB_OFFLINE)


@dataclass(frozen=True)
class HubReference:
    """A repository on the hub, or one file in it."""

    repo_id: str
    filename: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}/{self.filename}" if self.filename else self.repo_id


def parse_reference(reference: str | Path) -> Path | HubReference:
    """Tell a local path from a hub reference (see the module docstring)."""
    text = str(reference)
    path = Path(text).expanduser()
    if isinstance(reference, Path) or looks_local(text) or path.exists():
        return path
    parts = text.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        return path  # not a hub id: treat as a (missing) local path and let the caller say so
    return HubReference("/".join(parts[:2]), "/".join(parts[2:]) or None)


def _missing(what: str, where: str, *, fix: str, flag: str, offline: bool, error: Exception) -> MissingWeightsError:
    reason = "HF_HUB_OFFLINE is set, so nothing was downloaded." if offline else f"Download failed: {error}"
    return MissingWeightsError(
        f"{what} is missing: {where}. {reason} Get it with `{command(fix)}` on a machine with network access "
        f"(then copy the Hugging Face cache over, or point HF_HOME at it), or pass a local path with {flag}."
    )


def resolve_file(reference: str | Path, *, what: str, flag: str, fix: str = "download") -> Path:
    """The local path of a weights file, downloading it into the hub cache if needed and allowed."""
    parsed = parse_reference(reference)
    if isinstance(parsed, Path):
        if not parsed.is_file():
            raise MissingWeightsError(f"{what} not found: no file at '{parsed}' (given with {flag}).")
        return parsed
    if parsed.filename is None:
        raise MissingWeightsError(
            f"{what}: '{reference}' names a hub repository, not a file in it; use owner/repo/filename ({flag})."
        )
    offline = hub_offline()
    try:
        return Path(hf_hub_download(parsed.repo_id, parsed.filename, local_files_only=offline))
    except _DOWNLOAD_ERRORS as error:
        raise _missing(
            what,
            f"'{parsed.filename}' of the hub repository '{parsed.repo_id}' is not in the cache "
            f"{constants.HF_HUB_CACHE}",
            fix=fix,
            flag=flag,
            offline=offline,
            error=error,
        ) from None


def resolve_folder(
    reference: str | Path,
    *,
    what: str,
    flag: str,
    allow_patterns: Sequence[str] | None = None,
    required: Sequence[str] = (),
    fix: str = "download",
) -> Path:
    """The local folder of a model repository (or part of it), downloading it if needed and allowed.

    Args:
        required: files that must be present in the result; guards against a half-filled cache.
    """
    parsed = parse_reference(reference)
    if isinstance(parsed, Path):
        folder = parsed
        if not folder.is_dir():
            raise MissingWeightsError(f"{what} not found: no folder at '{folder}' (given with {flag}).")
    else:
        if parsed.filename is not None:
            raise MissingWeightsError(f"{what}: '{reference}' names a file; a model folder or repo id is needed.")
        offline = hub_offline()
        try:
            folder = Path(
                snapshot_download(
                    parsed.repo_id, allow_patterns=list(allow_patterns or ["*"]), local_files_only=offline
                )
            )
        except _DOWNLOAD_ERRORS as error:
            raise _missing(
                what,
                f"the hub repository '{parsed.repo_id}' is not in the cache {constants.HF_HUB_CACHE}",
                fix=fix,
                flag=flag,
                offline=offline,
                error=error,
            ) from None
    absent = [name for name in required if not (folder / name).exists()]
    if absent:
        raise MissingWeightsError(
            f"{what} at '{folder}' is incomplete: {', '.join(absent)} missing. "
            f"Run `{command(fix)}` again or check {flag}."
        )
    return folder
