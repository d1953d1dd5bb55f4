"""Serving one app on plain HTTP and HTTPS at once (the Python client needs https, browsers and the
JS proxy mode are happy with http), with one lifespan, so one worker.

A stop (SIGTERM, Ctrl-C) is bounded: the moment uvicorn begins to exit, ``on_stop`` starts the
app's drain (waiting answers get a deadline, the worker stops claiming); uvicorn itself gives open
connections ``grace_seconds`` plus a margin before it cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

import uvicorn
from fastapi import FastAPI

from .tls import TlsFiles


class SignalFreeServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its owner (who stops it with ``should_exit``).

    uvicorn's own handling would also re-raise the signal once it stopped, ending the process
    before its owner's shutdown code has run.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


#: What uvicorn adds to the grace before it cancels connections that are still open.
SHUTDOWN_MARGIN_SECONDS = 5.0


def serve_app(
    app: FastAPI,
    *,
    host: str,
    port: int,
    tls: TlsFiles | None,
    tls_port: int,
    log_level: str,
    grace_seconds: float,
    on_stop: Callable[[], None],
) -> None:
    """Serve until a signal stops the first listener; the second follows it."""
    # Logging is configured by the caller (text or JSON); uvicorn's access log is replaced by ours.
    common = {
        "log_level": log_level,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": int(grace_seconds + SHUTDOWN_MARGIN_SECONDS),
    }
    primary = uvicorn.Server(uvicorn.Config(app, host=host, port=port, lifespan="on", **common))
    others: list[uvicorn.Server] = []
    if tls is not None and tls_port:
        ssl = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
        others.append(SignalFreeServer(uvicorn.Config(app, host=host, port=tls_port, lifespan="off", **common, **ssl)))

    async def follow() -> None:
        while not primary.should_exit:
            await asyncio.sleep(0.1)
        on_stop()
        for server in others:
            server.should_exit = True

    async def run_primary() -> None:
        try:
            await primary.serve()
        finally:
            for server in others:
                server.should_exit = True

    async def serve() -> None:
        await asyncio.gather(run_primary(), *(server.serve() for server in others), follow())

    asyncio.run(serve())
