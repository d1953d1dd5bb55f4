"""The service's ed25519 keys: webhook signatures in fal's header scheme, the JWKS that publishes
the public keys, and the capabilities in storage tokens and upload URLs.

Every API node must sign and verify alike, so the key comes from configuration
(``LAYERDIFFUSE_SIGNING_KEY_FILE``); only the embedded server creates one in its data directory.
During a rotation the previous key (``LAYERDIFFUSE_SIGNING_PREVIOUS_KEY_FILES``, private or public
PEM) is still published in the JWKS and still accepted for tokens it signed; only the current key
signs.

Message: ``"{request_id}\\n{user_id}\\n{timestamp}\\n{sha256_hex(body)}"``; a receiver written for
fal's webhooks verifies ours by pointing it at our ``/.well-known/jwks.json``.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .command_name import command
from .errors import LayerDiffuseError


class SigningKeyError(LayerDiffuseError):
    """The signing key cannot be used."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    return f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    return _b64url(hashlib.sha256(_raw(public_key)).digest()[:12])


def generate_key_file(path: Path) -> Ed25519PrivateKey:
    """A new private key written to ``path`` (mode 0600, atomically); refuses to overwrite one."""
    if path.exists():
        raise SigningKeyError(f"{path} exists already; a signing key is never overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(pem)
    os.replace(temporary, path)
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise SigningKeyError(f"cannot read the signing key {path}: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an ed25519 private key (make one with `{command('signing-key PATH')}`)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The public half of a PEM file holding either an ed25519 private or public key."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SigningKeyError(f"cannot read the signing key {path}: {error}") from None
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as error:
        raise SigningKeyError(f"cannot read the public key {path}: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} is not an ed25519 key")
    return key


class SigningKeys:
    """The current private key, and the public keys of earlier ones still honoured."""

    def __init__(self, current: Ed25519PrivateKey, previous: Sequence[Ed25519PublicKey] = ()) -> None:
        self._current = current
        self.public_keys = [current.public_key(), *previous]
        self.key_id = key_id(current.public_key())

    @classmethod
    def from_files(cls, current: Path, previous: Sequence[Path] = ()) -> SigningKeys:
        return cls(load_private_key(current), [load_public_key(path) for path in previous])

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKeys:
        """The embedded server's key, created once in its data directory so published keys stay valid."""
        return cls(load_private_key(path) if path.exists() else generate_key_file(path))

    def sign(self, data: bytes) -> bytes:
        return self._current.sign(data)

    def verify(self, data: bytes, signature: bytes) -> bool:
        for public_key in self.public_keys:
            try:
                public_key.verify(signature, data)
            except InvalidSignature:
                continue
            return True
        return False

    def webhook_headers(self, request_id: str, user_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        signature = self._current.sign(signed_message(request_id, user_id, str(timestamp), body))
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": user_id,
            "X-Fal-Webhook-Timestamp": str(timestamp),
            "X-Fal-Webhook-Signature": signature.hex(),
        }

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": _b64url(_raw(public_key)),
                    "kid": key_id(public_key),
                    "use": "sig",
                    "alg": "EdDSA",
                }
                for public_key in self.public_keys
            ]
        }


def verify_signature(jwks: dict, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: try every published key on the signed message (used by tests and examples)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    message = signed_message(
        lowered["x-fal-webhook-request-id"],
        lowered["x-fal-webhook-user-id"],
        lowered["x-fal-webhook-timestamp"],
        body,
    )
    signature = bytes.fromhex(lowered["x-fal-webhook-signature"])
    for jwk in jwks.get("keys", []):
        raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
            return True
        except InvalidSignature:
            continue
    return False
