"""Where a request's LoRA comes from: its ``path`` resolved to a local safetensors file for the engine.

:class:`LoraSources` is the ``Callable[[str], Path]`` the worker hands the engine. By the path's
form (:mod:`.paths`):

- a URL of a file of this server (an upload made with either official client), recognised by the
  download route's path ``…/files/{id}/{name}`` and a ready catalogued file of that id and name,
  whatever the host, as image inputs are: its bytes are read from the file store (local or S3) and
  cached by file id. File URLs are capabilities (served without a key), so no key is asked for;
- any other URL: fetched once under the outbound-URL guard (:mod:`.fetch`) and cached by URL;
- ``owner/repo/file.safetensors``: ``hf_hub_download`` into the hub cache; with ``HF_HUB_OFFLINE``
  only the cache is used;
- a bare name: ``name`` or ``name.safetensors`` in the operator's LoRA folder.

Whatever the source, the file must be a safetensors file (its header is read: an 8-byte length,
then a JSON object) and at most ``max_lora_bytes``. A path that cannot be used is an
:class:`~..errors.InvalidInputError` naming it, so the request fails with fal's 422.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import httpx

from ..files.image_inputs import own_file
from ..files.stored_files import StoredFiles
from ..outbound import parse_networks
from ..store.contracts import FileRecord
from .cache import LoraCache
from .fetch import LoraFetchPolicy, download_lora
from .format import check_safetensors
from .paths import LoraPathKind, check_lora_path, folder_file_name, lora_path_kind, refusal, split_hub_path

if TYPE_CHECKING:
    from ..settings import Settings

_TRUTHY = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class LoraSources:
    """Resolves LoRA paths to local safetensors files; blocking (network, store, disk): call it off the event loop.

    Args:
        cache: Where fetched and copied files are kept.
        policy: Limits of URL fetches (and the size limit of every file).
        files: This server's stored files, for its own file URLs (None: every URL is fetched).
        folder: The operator's LoRA folder (None: bare names are refused).
        transport: The HTTP transport of fetches (tests); default: real connections.
    """

    cache: LoraCache
    policy: LoraFetchPolicy
    files: StoredFiles | None = None
    folder: Path | None = None
    transport: httpx.AsyncBaseTransport | None = None

    @classmethod
    def from_settings(cls, settings: Settings, files: StoredFiles | None) -> LoraSources:
        """The worker's resolver: the cache under the data directory, the guard's networks (those of
        webhooks and image inputs: all guard the server connecting where a request says)."""
        return cls(
            cache=LoraCache(settings.lora_cache_dir, settings.lora_disk_bytes),
            policy=LoraFetchPolicy(
                allowed_networks=parse_networks(settings.webhook_allowed_networks),
                max_bytes=settings.max_lora_bytes,
                timeout_seconds=settings.lora_fetch_timeout_seconds,
            ),
            files=files,
            folder=settings.lora_folder,
        )

    def __call__(self, path: str) -> Path:
        return self.resolve(path)

    def resolve(self, path: str) -> Path:
        """The local safetensors file ``path`` names, fetched or copied first where needed.

        Raises:
            InvalidInputError: The path has no acceptable form, names nothing, or names a file that
                is too large or no safetensors file (the message names the path).
        """
        try:
            checked = check_lora_path(path)
        except ValueError as error:
            raise refusal(str(error)) from None
        kind = lora_path_kind(checked)
        if kind is LoraPathKind.URL:
            return self._from_url(checked)
        if kind is LoraPathKind.HUB:
            return self._from_hub(checked)
        return self._from_folder(checked)

    def _from_url(self, url: str) -> Path:
        shown = _shorten(url)
        record = own_file(url, self.files) if self.files is not None else None
        if record is not None:
            return self._from_stored_file(record, shown)
        with self.cache.locked(url):
            cached = self.cache.lookup(url)
            if cached is not None:
                return cached

            def write(target: BinaryIO) -> None:
                size = download_lora(url, target, self.policy, shown=shown, transport=self.transport)
                check_safetensors(target, size, shown)

            return self.cache.store(url, write)

    def _from_stored_file(self, record: FileRecord, shown: str) -> Path:
        files = self.files
        assert files is not None  # a record was found in them
        if not record.ready:
            raise refusal(f"the LoRA file {shown} has not been uploaded yet")
        if record.size is not None and record.size > self.policy.max_bytes:
            raise refusal(_too_large(shown, self.policy.max_bytes))
        key = f"file:{record.id}"  # a stored file's bytes never change: its id is its content
        with self.cache.locked(key):
            cached = self.cache.lookup(key)
            if cached is not None:
                return cached

            def write(target: BinaryIO) -> None:
                blob = files.open(record)
                if blob is None:
                    raise refusal(f"the LoRA file {shown} is no longer stored")
                size = 0
                try:
                    for chunk in blob.chunks:
                        size += len(chunk)
                        if size > self.policy.max_bytes:
                            raise refusal(_too_large(shown, self.policy.max_bytes))
                        target.write(chunk)
                finally:
                    close = getattr(blob.chunks, "close", None)  # a generator's file or stream goes with it
                    if close is not None:
                        close()
                check_safetensors(target, size, shown)

            return self.cache.store(key, write)

    def _from_hub(self, path: str) -> Path:
        from huggingface_hub import constants, hf_hub_download

        repo_id, filename = split_hub_path(path)
        shown = _shorten(path)
        offline = _hub_offline()
        if not offline:
            self._check_hub_size(repo_id, filename, shown)
        try:
            local = Path(hf_hub_download(repo_id=repo_id, filename=filename, local_files_only=offline, token=False))
        except Exception as error:  # the hub library's own, its HTTP library's, the OS's: they vary by version
            if offline:
                reason = f"it is not in the hub cache {constants.HF_HUB_CACHE} and HF_HUB_OFFLINE is set"
            else:
                reason = f"the download failed ({type(error).__name__}: {_first_line(error)})"
            raise refusal(
                f"the LoRA file {filename!r} of the hub repository {repo_id!r} is not available: {reason}"
            ) from None
        return self._checked_local(local, shown)

    def _check_hub_size(self, repo_id: str, filename: str, shown: str) -> None:
        """Refuse a hub file over the size limit before it is downloaded into the cache. When its
        size cannot be asked for, the download says why (or, with the hub away, uses the cache)."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        try:
            size = get_hf_file_metadata(hf_hub_url(repo_id, filename), token=False).size
        except Exception:  # told by the download, which may still find the file in the cache
            return
        if size is not None and size > self.policy.max_bytes:
            raise refusal(_too_large(shown, self.policy.max_bytes))

    def _from_folder(self, name: str) -> Path:
        shown = _shorten(name)
        if self.folder is None:
            raise refusal(
                f"the LoRA path {shown} names a file in this server's LoRA folder, and this server has none "
                "(the operator sets LAYERDIFFUSE_LORA_FOLDER); give a URL or a hub path instead"
            )
        candidate = self.folder / folder_file_name(name)
        if not candidate.is_file():
            raise refusal(f"there is no LoRA named {shown} in this server's LoRA folder")
        return self._checked_local(candidate, shown)

    def _checked_local(self, path: Path, shown: str) -> Path:
        size = path.stat().st_size
        if size > self.policy.max_bytes:
            raise refusal(_too_large(shown, self.policy.max_bytes))
        with path.open("rb") as source:
            check_safetensors(source, size, shown, rewind=False)
        return path


def _hub_offline() -> bool:
    """``HF_HUB_OFFLINE``, read at call time (the hub library reads it once, at import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY or bool(constants.HF_HUB_OFFLINE)


def _first_line(error: Exception) -> str:
    return next(iter(str(error).splitlines()), "")


def _too_large(shown: str, max_bytes: int) -> str:
    return f"the LoRA file {shown} is larger than {max_bytes:,} bytes, the most this server accepts (max_lora_bytes)"


def _shorten(path: str) -> str:
    return repr(path if len(path) <= 100 else f"{path[:97]}...")
