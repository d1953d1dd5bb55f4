"""What a request's LoRA ``path`` may say, told apart by its form alone (no file system, no network).

Three forms, as fal's endpoints take them:

- an ``http://`` or ``https://`` URL: a file of this server (an upload, found by the download
  route's path) or any other URL, fetched under the outbound-URL guard;
- ``owner/repo/path/in/repo.safetensors``: a file of a Hugging Face hub repository;
- a bare file name (no slash): a file in the operator's LoRA folder, ``name`` or
  ``name.safetensors``.

Only safetensors files are loaded: pickle formats (``.ckpt``, ``.pt``, ``.bin`` …) run code when
they are read. Names that say pickle are refused here; what a URL sends is checked as it arrives.
Local paths (``/…``, ``~…``, ``./…``, ``..``) are refused: a request names files, it does not reach
into the worker's disk. This module imports nothing heavy, so API nodes check paths at admission.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated

from pydantic import AfterValidator, Field

from ..errors import InvalidInputError
from ..outbound import MAX_URL_LENGTH, TargetRefused, normalize_webhook_url

#: The request field LoRA errors name.
LORA_FIELD = "loras"
SAFETENSORS_SUFFIX = ".safetensors"
#: Suffixes of formats that unpickle (run code) when loaded.
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".pkl", ".pickle")
#: ``.bin`` is pickle too in a hub repository or a folder of weights, but not in a URL: the fal
#: clients name an upload without a name ``upload.bin``, whatever it holds (its bytes are checked).
_NAMED_PICKLE_SUFFIXES = (*PICKLE_SUFFIXES, ".bin")
#: A hub user, organisation or repository name (the hub's own rule, less its length limit).
_HUB_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
#: A path segment inside a hub repository, and a file name in the LoRA folder.
_FILE_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._ +=,@()\[\]-]*$")

ACCEPTED_LORA_PATHS = (
    "an http(s) URL of a safetensors file, a Hugging Face file as owner/repo/file.safetensors, "
    "or the name of a file in this server's LoRA folder"
)


def refusal(message: str) -> InvalidInputError:
    """A LoRA that cannot be used, as the request's error (fal's 422, naming the ``loras`` field)."""
    return InvalidInputError(message, field=LORA_FIELD)


class LoraPathKind(enum.Enum):
    """Where a LoRA path points."""

    URL = "url"
    HUB = "hub"
    FOLDER = "folder"


def lora_path_kind(path: str) -> LoraPathKind:
    """Which form a path has, assuming :func:`check_lora_path` accepted it."""
    if path[:8].lower().startswith(("http://", "https://")):
        return LoraPathKind.URL
    return LoraPathKind.HUB if "/" in path else LoraPathKind.FOLDER


def check_lora_path(path: str) -> str:
    """The path in the form it is resolved in (a URL as it will be sent), if its form is acceptable.

    Raises:
        ValueError: The path has no acceptable form; the message names it and says what is accepted.
    """
    if not path.strip():
        raise ValueError(f"a LoRA path must be {ACCEPTED_LORA_PATHS}; got an empty value")
    shown = _shorten(path)
    if len(path) > MAX_URL_LENGTH:
        raise ValueError(f"the LoRA path {shown} is longer than {MAX_URL_LENGTH} characters")
    if any(ord(character) < 32 or character == "\\" for character in path):
        raise ValueError(f"the LoRA path {shown} contains a backslash or a control character")
    kind = lora_path_kind(path)
    if kind is LoraPathKind.URL:
        return _checked_url(path, shown)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", path):
        raise ValueError(f"the LoRA path {shown} is a URL of another scheme; only http:// and https:// are fetched")
    if path.startswith(("/", "~", ".")) or re.match(r"^[A-Za-z]:", path):
        raise ValueError(f"the LoRA path {shown} is a local path, which is not accepted; use {ACCEPTED_LORA_PATHS}")
    if kind is LoraPathKind.HUB:
        return _checked_hub_path(path, shown)
    return _checked_folder_name(path, shown)


#: A LoRA path in a pydantic model (``LoraWeight.path``): checked by its form when the request is
#: validated, so a bad path is fal's 422 at admission, before the request is queued.
LoraPath = Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH), AfterValidator(check_lora_path)]


def folder_file_name(name: str) -> str:
    """The file a bare name stands for in the LoRA folder: ``style`` is ``style.safetensors``."""
    return name if name.lower().endswith(SAFETENSORS_SUFFIX) else name + SAFETENSORS_SUFFIX


def split_hub_path(path: str) -> tuple[str, str]:
    """``owner/repo/dir/file.safetensors`` as (``owner/repo``, ``dir/file.safetensors``)."""
    owner, repo, filename = path.split("/", 2)
    return f"{owner}/{repo}", filename


def _checked_url(path: str, shown: str) -> str:
    try:
        url = normalize_webhook_url(path)
    except TargetRefused as refused:
        raise ValueError(f"the LoRA URL {shown} is refused: {refused.reason}") from None
    if url.path.lower().endswith(PICKLE_SUFFIXES):
        raise ValueError(_pickle_refusal(shown))
    return str(url)


def _checked_hub_path(path: str, shown: str) -> str:
    parts = path.split("/")
    if len(parts) < 3:
        raise ValueError(
            f"the LoRA path {shown} names a hub repository, not a file in it; use owner/repo/file.safetensors"
        )
    owner, repo, *inside = parts
    if not (_HUB_NAME.match(owner) and _HUB_NAME.match(repo)) or ".." in owner + repo or "--" in owner + repo:
        raise ValueError(f"the LoRA path {shown} does not start with a valid hub repository id (owner/repo)")
    if not all(_FILE_SEGMENT.match(segment) for segment in inside):
        raise ValueError(f"the LoRA path {shown} has an empty, hidden or invalid part in the file's path")
    return _checked_suffix(path, shown)


def _checked_folder_name(path: str, shown: str) -> str:
    if not _FILE_SEGMENT.match(path):
        raise ValueError(f"the LoRA name {shown} is not a valid file name")
    if path.lower().endswith(_NAMED_PICKLE_SUFFIXES):
        raise ValueError(_pickle_refusal(shown))
    return path


def _checked_suffix(path: str, shown: str) -> str:
    if path.lower().endswith(_NAMED_PICKLE_SUFFIXES):
        raise ValueError(_pickle_refusal(shown))
    if not path.lower().endswith(SAFETENSORS_SUFFIX):
        raise ValueError(f"the LoRA file {shown} is not a .safetensors file; only safetensors LoRAs are loaded")
    return path


def _pickle_refusal(shown: str) -> str:
    return (
        f"the LoRA file {shown} is a pickle format, which can run code when loaded; "
        "only .safetensors LoRAs are accepted"
    )


def _shorten(path: str) -> str:
    return repr(path if len(path) <= 100 else f"{path[:97]}...")
