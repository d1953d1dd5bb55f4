"""API keys in fal's format: ``FAL_KEY="<key id>:<secret>"``, sent as ``Authorization: Key <key id>:<secret>``.

The id finds the row, the secret is compared by its SHA-256 (secrets are 256 random bits, so a
slow password hash buys nothing) in constant time. Only the hash is stored; the full key is shown
once, when it is created.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from .errors import LayerDiffuseError
from .store.contracts import ApiKey, KeyRing


class AuthenticationError(LayerDiffuseError):
    """Missing or invalid API key."""

    status_code = 401
    error_type = "unauthorized"


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    value: str  # the full "<key id>:<secret>" string, shown once


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_key(name: str, admin: bool) -> IssuedKey:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = ApiKey(
        id=key_id, name=name, admin=admin, created_at=time.time(), revoked_at=None, secret_hash=hash_secret(secret)
    )
    return IssuedKey(record, f"{key_id}:{secret}")


def issue_key(keys: KeyRing, name: str, *, admin: bool = False) -> IssuedKey:
    issued = _new_key(name, admin)
    keys.add(issued.key)
    return issued


def ensure_first_key(keys: KeyRing) -> IssuedKey | None:
    """On a store with no usable key, an admin key (shown once); None when keys exist. Atomic, so
    API nodes that start together on an empty database create one key between them."""
    issued = _new_key("admin (created on first start)", True)
    return issued if keys.add_first(issued.key) else None


def authenticate(keys: KeyRing, authorization: str | None) -> ApiKey:
    """The key behind an ``Authorization`` header, or :class:`AuthenticationError`.

    fal's form is ``Key <key id>:<secret>``; the key alone (``<key id>:<secret>``, as the server
    printed it and as the API reference's "Authorize" sends what is pasted) is taken too.
    """
    if not authorization:
        raise AuthenticationError("Missing API key: send 'Authorization: Key <key id>:<secret>'")
    scheme, _, credentials = authorization.strip().partition(" ")
    if not credentials and ":" in scheme:  # a bare key: no scheme has a colon in its name
        scheme, credentials = "Key", scheme
    if scheme.lower() != "key" or not credentials:
        raise AuthenticationError("Unsupported authorization scheme: send 'Authorization: Key <key id>:<secret>'")
    key_id, _, secret = credentials.strip().partition(":")
    record = keys.get(key_id) if secret else None
    if record is None or not hmac.compare_digest(record.secret_hash, hash_secret(secret)):
        raise AuthenticationError("Invalid API key")
    if record.revoked_at is not None:
        raise AuthenticationError("This API key has been revoked")
    return record
