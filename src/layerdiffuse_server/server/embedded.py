"""``layerdiffuse serve``: the two roles in one process, the API node (:mod:`.api_node`) with a
worker beside it, on SQLite and local files in the data directory unless told otherwise."""

from __future__ import annotations

from ..settings import Settings
from .api_node import bind_api_listeners, serve_api
from .bootstrap import build_services
from .engine_loader import checkpoint_loader, engine_loader


def run_embedded(settings: Settings) -> None:
    listeners = bind_api_listeners(settings)
    services = build_services(
        settings, engine_loader(settings), model_name=settings.model, load_checkpoint=checkpoint_loader(settings)
    )
    serve_api(settings, services, listeners, role="serve")
