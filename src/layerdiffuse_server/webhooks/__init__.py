"""Webhooks as fal sends them: the payload envelope, ed25519 signatures with a published JWKS,
retried delivery from a persisted outbox (targets are checked and pinned by :mod:`..outbound`)."""
