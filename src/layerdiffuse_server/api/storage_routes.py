"""fal's storage API on our file store, and the stable URLs files are served from.

- Python ``fal_client.upload``: ``POST /rest/storage/auth/token`` → short-lived bearer token, then
  ``POST /cdn/files/upload`` with the raw bytes → ``access_url``.
- JS ``fal.storage.upload`` and Python's fallback: ``POST /rest/storage/upload/initiate`` →
  ``upload_url`` (a signed, single-use URL: the JS client PUTs to it without credentials) + ``file_url``.

Tokens and upload URLs are capabilities signed with the service's ed25519 key, so no table holds
them and every API node accepts what any other issued; a revoked API key's tokens stop working at
once. Uploads may be any file within ``max_upload_bytes``, as on fal; one declared as PNG, JPEG or
WebP must decode as that format (:mod:`..files.content`).

Files are served from ``/files/{id}/{name}``: streamed through the API, or (``file_delivery =
redirect`` on an object store) answered with a redirect to a short-lived presigned URL, which
takes the bytes off the API nodes. Only the checked raster images are served ``inline``; every
other file (text, SVG, HTML, model weights) is ``Content-Disposition: attachment``. Served bytes
carry ``nosniff`` and a sandboxing CSP, so not even a file opened directly can run script in this
origin.

Every file is written through :class:`..files.StoredFiles`: its row, with an expiry, before its
bytes, so a failing database or object store never leaves bytes that no row names.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from ..auth import AuthenticationError, authenticate
from ..errors import LayerDiffuseError, NotFoundError
from ..files import check_content_type, check_upload, content_disposition, file_url, safe_file_name
from .bodies import budgeted_body, read_json_object
from .errors import error_response
from .payloads import error_responses
from .services import KeyDep, Services, ServicesDep

router = APIRouter(tags=["storage"])

TOKEN_LIFETIME = 3600.0
UPLOAD_URL_LIFETIME = 3600.0
PRESIGNED_URL_SECONDS = 300

#: What every served file carries: never sniffed, never a document that runs script here.
FILE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Cache-Control": "public, max-age=86400, immutable",
}


class UploadUrlError(LayerDiffuseError):
    """The upload URL is invalid, expired or already used."""

    status_code = 403
    error_type = "forbidden"


class InitiateUpload(BaseModel):
    file_name: str = Field(default="upload.bin", max_length=255)
    content_type: str = Field(default="application/octet-stream", max_length=255)


class StorageToken(BaseModel):
    token: str
    token_type: str
    base_url: str
    expires_at: str


class UploadedFile(BaseModel):
    access_url: str
    file_name: str
    content_type: str
    file_size: int


class InitiatedUpload(BaseModel):
    upload_url: str
    file_url: str


class WrittenUpload(BaseModel):
    file_url: str
    file_size: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _expiry(services: Services) -> float | None:
    hours = services.settings.retention_hours
    return services.manager.clock.time() + hours * 3600 if hours else None


def issue_token(services: Services, key_id: str, expires_at: float) -> str:
    claims = f"upload:{key_id}:{int(expires_at)}".encode()
    return f"{_b64(claims)}.{_b64(services.signing_keys.sign(claims))}"


def token_key_id(services: Services, token: str) -> str:
    """The API key a CDN token was issued to, if the token is genuine, unexpired and the key still active."""
    try:
        claims_text, signature = token.split(".", 1)
        claims = _unb64(claims_text)
        valid = services.signing_keys.verify(claims, _unb64(signature))
        kind, key_id, expires = claims.decode().split(":")
        expires_at = float(expires)
    except (ValueError, UnicodeDecodeError):
        valid, kind, key_id, expires_at = False, "", "", 0.0
    if not valid or kind != "upload" or expires_at < time.time():
        raise AuthenticationError("Invalid or expired storage token")
    key = services.store.keys.get(key_id)
    if key is None or key.revoked_at is not None:
        raise AuthenticationError("The API key of this storage token is no longer valid")
    return key_id


def _upload_claims(file_id: str, expires: int) -> bytes:
    return f"put:{file_id}:{expires}".encode()


def _check_upload_signature(services: Services, file_id: str, expires: int, signature: str) -> None:
    try:
        genuine = services.signing_keys.verify(_upload_claims(file_id, expires), _unb64(signature))
    except ValueError:
        genuine = False
    if expires < time.time() or not genuine:
        raise UploadUrlError("This upload URL is invalid or has expired")


@router.post(
    "/rest/storage/auth/token",
    summary="Token for direct uploads (fal_client.upload)",
    response_model=StorageToken,
    responses=error_responses(401),
)
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


@router.post(
    "/cdn/files/upload",
    summary="Upload a file's bytes with a storage token",
    response_model=UploadedFile,
    responses=error_responses(401, 413, 415, 503),
    openapi_extra={
        "requestBody": {
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in ("image/png", "application/octet-stream", "text/plain")
            }
        }
    },
)
async def cdn_upload(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_fal_file_name: Annotated[str | None, Header(max_length=1024)] = None,
) -> JSONResponse:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token:
        key_id = await anyio.to_thread.run_sync(token_key_id, services, token.strip())
    else:
        key_id = (await anyio.to_thread.run_sync(authenticate, services.store.keys, authorization)).id
    content_type = check_content_type(request.headers.get("content-type"))
    async with budgeted_body(request, services.settings.max_upload_bytes, services.body_budget()) as data:
        await anyio.to_thread.run_sync(
            lambda: check_upload(content_type, data, max_pixels=services.settings.max_upload_pixels)
        )
        record = await anyio.to_thread.run_sync(
            lambda: services.files.store(
                data,
                file_name=safe_file_name(x_fal_file_name),
                content_type=content_type,
                key_id=key_id,
                expires_at=_expiry(services),
            )
        )
    url = file_url(services.files_url, record.id, record.file_name)
    return JSONResponse(
        {"access_url": url, "file_name": record.file_name, "content_type": content_type, "file_size": len(data)}
    )


@router.post(
    "/rest/storage/upload/initiate",
    summary="Start an upload: a signed PUT URL and the file's URL",
    response_model=InitiatedUpload,
    responses=error_responses(401, 413, 415, 422),
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InitiateUpload"}}},
            "required": False,
        }
    },
)
async def initiate_upload(request: Request, services: ServicesDep, key: KeyDep) -> JSONResponse:
    body = InitiateUpload.model_validate(await read_json_object(request))
    content_type = check_content_type(body.content_type)
    expires = int(services.manager.clock.time() + UPLOAD_URL_LIFETIME)
    record = await anyio.to_thread.run_sync(
        lambda: services.files.initiate_upload(
            file_name=safe_file_name(body.file_name), content_type=content_type, key_id=key.id, writable_until=expires
        )
    )
    signature = _b64(services.signing_keys.sign(_upload_claims(record.id, expires)))
    upload_url = f"{services.base_url}/files/upload/{record.id}?expires={expires}&signature={signature}"
    return JSONResponse(
        {"upload_url": upload_url, "file_url": file_url(services.files_url, record.id, record.file_name)}
    )


@router.put(
    "/files/upload/{file_id}",
    summary="Write the bytes of an initiated upload (single use)",
    response_model=WrittenUpload,
    responses=error_responses(403, 413, 415, 422),
)
async def put_upload(
    file_id: str, request: Request, services: ServicesDep, expires: int = 0, signature: str = ""
) -> JSONResponse:
    _check_upload_signature(services, file_id, expires, signature)
    record = await anyio.to_thread.run_sync(services.files.get, file_id)
    if record is None or record.ready:
        raise UploadUrlError("This upload URL has already been used")
    async with budgeted_body(request, services.settings.max_upload_bytes, services.body_budget()) as data:
        max_pixels = services.settings.max_upload_pixels
        await anyio.to_thread.run_sync(lambda: check_upload(record.content_type, data, max_pixels=max_pixels))
        written = await anyio.to_thread.run_sync(
            lambda: services.files.write_upload(record, data, expires_at=_expiry(services))
        )
        if not written:
            raise UploadUrlError("This upload URL has already been used")
    return JSONResponse({"file_url": file_url(services.files_url, file_id, record.file_name), "file_size": len(data)})


FILE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file's bytes: PNG, JPEG and WebP inline, any other type as an attachment",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in ("image/png", "image/jpeg", "image/webp", "*/*")
        },
    },
    307: {"description": "Redirect to a short-lived presigned URL of the object store (file_delivery = redirect)"},
    **error_responses(404),
}


@router.head("/files/{file_id}/{file_name}", include_in_schema=False)
@router.get(
    "/files/{file_id}/{file_name}",
    summary="Download a stored file (no key: the URL is the capability)",
    response_class=Response,
    responses=FILE_DOC,
)
async def download(file_id: str, file_name: str, request: Request, services: ServicesDep) -> Response:
    record = await anyio.to_thread.run_sync(services.files.named, file_id, file_name)
    if record is None or not record.ready:
        return error_response(NotFoundError("File not found"))
    headers = {**FILE_HEADERS, "Content-Disposition": content_disposition(record.content_type, record.file_name)}
    if services.settings.file_delivery == "redirect":
        url = await anyio.to_thread.run_sync(
            lambda: services.files.presigned_url(record, expires_seconds=PRESIGNED_URL_SECONDS)
        )
        if url is not None:
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "private, max-age=60"})
    blob = await anyio.to_thread.run_sync(services.files.open, record)
    if blob is None:
        return error_response(NotFoundError("File not found"))
    headers["Content-Length"] = str(blob.size)
    if request.method == "HEAD":
        close = getattr(blob.chunks, "close", None)
        if close is not None:
            close()
        return Response(status_code=200, media_type=record.content_type, headers=headers)
    return StreamingResponse(blob.chunks, media_type=record.content_type, headers=headers)
