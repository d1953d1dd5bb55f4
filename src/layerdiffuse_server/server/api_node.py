"""``layerdiffuse api``: the fal-compatible API on its HTTP and HTTPS listeners, with no worker and
no torch (workers run apart, on the shared store). ``serve`` runs the same API with a worker beside
it (:mod:`.embedded`).

The listeners are bound first, so a taken port ends the process at once with the address; then the
store opens, the first key is made, the TLS files are found or made and the banner printed. Once
the listeners are up the process logs once that it is ready (or that its model failed to load).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import LayerDiffuseError
from ..settings import Settings
from .bootstrap import Role, build_services
from .listeners import bind
from .tls import TlsFiles, local_tls

if TYPE_CHECKING:
    from ..api.services import Services


@dataclass
class ApiListeners:
    """The plain socket, and the HTTPS one when ``TLS_PORT`` is set."""

    http: socket.socket
    https: socket.socket | None


def bind_api_listeners(settings: Settings) -> ApiListeners:
    http = bind(settings.host, settings.port, "HTTP")
    try:
        https = bind(settings.host, settings.tls_port, "HTTPS") if settings.tls_port else None
    except LayerDiffuseError:
        http.close()
        raise
    return ApiListeners(http, https)


def tls_files(settings: Settings) -> TlsFiles | None:
    """The operator's certificate, or one from the local CA in the data directory; none without HTTPS."""
    if not settings.tls_port:
        return None
    if settings.tls_cert and settings.tls_key:
        return TlsFiles(settings.tls_cert, settings.tls_key, None)
    return local_tls(settings.data_dir / "tls", settings.tls_names)


def run_api(settings: Settings) -> None:
    listeners = bind_api_listeners(settings)
    serve_api(settings, build_services(settings, role="api"), listeners, role="api")


def serve_api(settings: Settings, services: Services, listeners: ApiListeners, *, role: Role) -> None:
    """Serve the API until SIGTERM or SIGINT (see :func:`.serve.serve_app`), with the banner."""
    from ..api import create_app
    from ..api.app import begin_drain
    from ..auth import ensure_first_key
    from .banner import print_banner
    from .serve import serve_app

    first_key = ensure_first_key(services.store.keys)
    tls = tls_files(settings)
    print_banner(settings, tls, first_key, role=role)
    serve_app(
        create_app(services),
        http=listeners.http,
        https=listeners.https,
        tls=tls,
        log_level=settings.log_level,
        grace_seconds=settings.shutdown_grace_seconds,
        on_stop=lambda: begin_drain(services),
        readiness=lambda: readiness(settings, services, https=tls is not None),
    )


def readiness(settings: Settings, services: Services, *, https: bool) -> str | None:
    """The line logged once the API can answer: where, and with which model (``None``: not yet)."""
    reach = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    addresses = f"http://{reach}:{settings.port}/" + (f" and https://{reach}:{settings.tls_port}/" if https else "")
    worker = services.local_worker
    if worker is None:
        return f"ready on {addresses}; requests wait in the queue for workers"
    if worker.load_error is not None:
        return f"not ready: the model failed to load ({worker.load_error}); requests are answered 503"
    if not worker.ready:
        return None
    return f"ready on {addresses} with model {worker.model_name}"  # the worker said how long it took
