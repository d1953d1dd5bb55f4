"""fal's storage API on our file store, and the stable URLs files are served from.

- Python ``fal_client.upload``: ``POST /rest/storage/auth/token`` → short-lived bearer token, then
  ``POST /cdn/files/upload`` with the raw bytes → ``access_url``.
- JS ``fal.storage.upload`` and Python's fallback: ``POST /rest/storage/upload/initiate`` →
  ``upload_url`` (a signed, single-use URL: the JS client PUTs to it without credentials) + ``file_url``.

Tokens and upload URLs are capabilities signed with the server's ed25519 key, so no extra table
holds them; a revoked API key's tokens stop working at once.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from ..auth import AuthenticationError, authenticate
from ..errors import LayerDiffuseError
from ..files import file_url, new_file_id
from ..files.content import check_content
from ..store.contracts import FileRecord
from .payloads import read_json_object
from .services import KeyDep, Services, ServicesDep

router = APIRouter(tags=["storage"])

TOKEN_LIFETIME = 3600.0
UPLOAD_URL_LIFETIME = 3600.0
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class FileTooLargeError(LayerDiffuseError):
    """The file is larger than this server accepts."""

    status_code = 413
    error_type = "bad_request"


class UploadUrlError(LayerDiffuseError):
    """The upload URL is invalid, expired or already used."""

    status_code = 403
    error_type = "forbidden"


class InitiateUpload(BaseModel):
    file_name: str = Field(default="upload.bin", max_length=255)
    content_type: str = Field(default="application/octet-stream", max_length=255)


def safe_file_name(name: str | None, fallback: str = "upload.bin") -> str:
    cleaned = _UNSAFE_NAME.sub("_", (name or "").rsplit("/", 1)[-1]).strip("._")
    return cleaned[:200] or fallback


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _expiry(services: Services) -> float | None:
    hours = services.settings.retention_hours
    return time.time() + hours * 3600 if hours else None


def issue_token(services: Services, key_id: str, expires_at: float) -> str:
    claims = f"upload:{key_id}:{int(expires_at)}".encode()
    return f"{_b64(claims)}.{_b64(services.signing_key.sign(claims))}"


def token_key_id(services: Services, token: str) -> str:
    """The API key a CDN token was issued to, if the token is genuine, unexpired and the key still active."""
    try:
        claims_text, signature = token.split(".", 1)
        claims = _unb64(claims_text)
        valid = services.signing_key.verify(claims, _unb64(signature))
        kind, key_id, expires = claims.decode().split(":")
    except ValueError:
        valid, kind, key_id, expires = False, "", "", "0"
    if not valid or kind != "upload" or float(expires) < time.time():
        raise AuthenticationError("Invalid or expired storage token")
    key = services.store.keys.get(key_id)
    if key is None or key.revoked_at is not None:
        raise AuthenticationError("The API key of this storage token is no longer valid")
    return key_id


def upload_signature(services: Services, file_id: str, expires: int) -> str:
    return _b64(services.signing_key.sign(f"put:{file_id}:{expires}".encode()))


async def read_limited_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise FileTooLargeError(f"the file is {declared} bytes; this server accepts at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise FileTooLargeError(f"the file is larger than {limit} bytes, the most this server accepts")
        chunks.append(chunk)
    return b"".join(chunks)


def _save(services: Services, record: FileRecord, data: bytes) -> None:
    services.blobs.put(record.id, data)
    services.store.files.add(record)


@router.post("/rest/storage/auth/token", summary="Token for direct uploads (fal_client.upload)")
async def storage_token(services: ServicesDep, key: KeyDep) -> JSONResponse:
    expires_at = time.time() + TOKEN_LIFETIME
    return JSONResponse(
        {
            "token": issue_token(services, key.id, expires_at),
            "token_type": "Bearer",
            "base_url": f"{services.base_url}/cdn",
            "expires_at": datetime.fromtimestamp(expires_at, UTC).isoformat(),
        }
    )


@router.post("/cdn/files/upload", summary="Upload a file's bytes with a storage token")
async def cdn_upload(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
    x_fal_file_name: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token:
        key_id = await anyio.to_thread.run_sync(token_key_id, services, token.strip())
    else:
        key_id = (await anyio.to_thread.run_sync(authenticate, services.store.keys, authorization)).id
    data = await read_limited_body(request, services.settings.max_upload_bytes)
    content_type = check_content(request.headers.get("content-type"), data)
    record = FileRecord(
        id=new_file_id(),
        file_name=safe_file_name(x_fal_file_name),
        content_type=content_type,
        size=len(data),
        key_id=key_id,
        request_id=None,
        created_at=time.time(),
        expires_at=_expiry(services),
        ready=True,
    )
    await anyio.to_thread.run_sync(_save, services, record, data)
    url = file_url(services.base_url, record.id, record.file_name)
    return JSONResponse(
        {"access_url": url, "file_name": record.file_name, "content_type": content_type, "file_size": len(data)}
    )


@router.post("/rest/storage/upload/initiate", summary="Start an upload: a signed PUT URL and the file's URL")
async def initiate_upload(request: Request, services: ServicesDep, key: KeyDep) -> JSONResponse:
    body = InitiateUpload.model_validate(await read_json_object(request))
    content_type = check_content(body.content_type)
    record = FileRecord(
        id=new_file_id(),
        file_name=safe_file_name(body.file_name),
        content_type=content_type,
        size=None,
        key_id=key.id,
        request_id=None,
        created_at=time.time(),
        expires_at=_expiry(services),
        ready=False,
    )
    await anyio.to_thread.run_sync(services.store.files.add, record)
    expires = int(time.time() + UPLOAD_URL_LIFETIME)
    signature = upload_signature(services, record.id, expires)
    upload_url = f"{services.base_url}/files/upload/{record.id}?expires={expires}&signature={signature}"
    return JSONResponse(
        {"upload_url": upload_url, "file_url": file_url(services.base_url, record.id, record.file_name)}
    )


@router.put("/files/upload/{file_id}", summary="Write the bytes of an initiated upload (single use)")
async def put_upload(
    file_id: str, request: Request, services: ServicesDep, expires: int = 0, signature: str = ""
) -> JSONResponse:
    expected = upload_signature(services, file_id, expires)
    if expires < time.time() or not secrets.compare_digest(expected.encode(), signature.encode()):
        raise UploadUrlError("This upload URL is invalid or has expired")
    record = await anyio.to_thread.run_sync(services.store.files.get, file_id)
    if record is None or record.ready:
        raise UploadUrlError("This upload URL has already been used")
    data = await read_limited_body(request, services.settings.max_upload_bytes)
    check_content(record.content_type, data)
    await anyio.to_thread.run_sync(services.blobs.put, file_id, data)
    if not await anyio.to_thread.run_sync(services.store.files.mark_ready, file_id, len(data)):
        raise UploadUrlError("This upload URL has already been used")
    return JSONResponse({"file_url": file_url(services.base_url, file_id, record.file_name), "file_size": len(data)})


@router.get("/files/{file_id}/{file_name}", summary="Download a stored file")
async def download(file_id: str, file_name: str, services: ServicesDep) -> Response:
    record = await anyio.to_thread.run_sync(services.store.files.get, file_id)
    path = services.blobs.path(file_id) if record is not None and record.ready else None
    if record is None or path is None or record.file_name != file_name:
        return JSONResponse({"detail": "File not found"}, status_code=404)
    return FileResponse(
        path,
        media_type=record.content_type,
        headers={"Cache-Control": "public, max-age=86400, immutable", "X-Content-Type-Options": "nosniff"},
    )
