"""The HTTP API: fal's run, queue and storage protocols for ``fal-ai/layer-diffusion``."""

from ..endpoints import APP_ID
from .app import create_app
from .services import Services

__all__ = ["APP_ID", "Services", "create_app"]
