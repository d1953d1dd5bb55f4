"""The server's ed25519 key: webhook signatures in fal's header scheme, the JWKS that publishes the
public key, and the capabilities in storage tokens and upload URLs.

Message: ``"{request_id}\\n{user_id}\\n{timestamp}\\n{sha256_hex(body)}"``; a receiver written for
fal's webhooks verifies ours by pointing it at our ``/.well-known/jwks.json``.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    return f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()


class SigningKey:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key_bytes = raw
        self.key_id = _b64url(hashlib.sha256(raw).digest()[:12])

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """The server's signing key, created once (mode 0600) so published keys stay valid across restarts."""
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path} is not an ed25519 private key")
            return cls(key)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(pem)
        os.replace(temporary, path)
        return cls(key)

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    def verify(self, data: bytes, signature: bytes) -> bool:
        try:
            self._private_key.public_key().verify(signature, data)
        except Exception:
            return False
        return True

    def webhook_headers(self, request_id: str, user_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        signature = self._private_key.sign(signed_message(request_id, user_id, str(timestamp), body))
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
                    "x": _b64url(self.public_key_bytes),
                    "kid": self.key_id,
                    "use": "sig",
                    "alg": "EdDSA",
                }
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
        except Exception:
            continue
    return False
