"""Fixtures of the in-process API tests (see :mod:`.api_support`)."""

from .api_support import client, idle_client, queue_only, services

__all__ = ["client", "idle_client", "queue_only", "services"]
