"""OpenAI's Images API (``/v1/images/generations``, ``/v1/images/edits``, ``/v1/models``) beside
fal's, for the unmodified ``openai`` SDKs; see :mod:`.routes`."""

from .routes import router, served_models

__all__ = ["router", "served_models"]
