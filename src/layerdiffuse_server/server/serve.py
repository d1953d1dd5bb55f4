"""Serving one app on plain HTTP and HTTPS at once (the Python client needs https, browsers and the
JS proxy mode are happy with http), with one lifespan, so one worker.

A stop (SIGTERM, Ctrl-C) is bounded: the signal starts the app's drain (``on_stop``: waiting
answers get a deadline, the worker stops claiming) and stops every listener; uvicorn gives open
connections ``grace_seconds`` plus a margin before it cancels them. The process then ends normally,
after the app's shutdown, with every listener done.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from .listeners import address
from .tls import TlsFiles

logger = logging.getLogger("layerdiffuse_server.server")


class SignalFreeServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its owner (who stops it with ``should_exit``).

    uvicorn's own handling would also re-raise the signal once it stopped, ending the process
    before its owner's shutdown code has run.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


#: Whether the uvicorn server logging is an extra listener of the app (one without its lifespan).
_extra_listener = contextvars.ContextVar("extra_listener", default=False)


class OneProcessStory(logging.Filter):
    """uvicorn's own lines once per process, in order: every server says it started and finished
    the process and that it is shutting down, so with two listeners each line came twice, the extra
    listener's "Finished server process" before the app's shutdown. The extra listeners keep only
    what is above INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _extra_listener.get() or record.levelno > logging.INFO


#: What uvicorn adds to the grace before it cancels connections that are still open.
SHUTDOWN_MARGIN_SECONDS = 5.0


def _url(scheme: str, listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"{scheme}://{address(host, port)}"


def serve_app(
    app: FastAPI,
    *,
    http: socket.socket,
    https: socket.socket | None,
    tls: TlsFiles | None,
    log_level: str,
    grace_seconds: float,
    on_stop: Callable[[], None],
    readiness: Callable[[], str | None] = lambda: "ready",
) -> None:
    """Serve on the bound sockets (see :mod:`.listeners`; ``https`` with ``tls``) until SIGTERM or
    SIGINT; return once every listener has finished (a second signal cuts the wait for open
    connections short). Once every listener is up, ``readiness`` is asked
    until it has something to say (the model loaded, or failed to), which is logged once."""
    # Logging is configured by the caller (text or JSON); uvicorn's access log is replaced by ours.
    common: dict[str, Any] = {
        "log_level": log_level,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": int(grace_seconds + SHUTDOWN_MARGIN_SECONDS),
    }
    listeners = [http]
    urls = [_url("http", http)]
    servers = [SignalFreeServer(uvicorn.Config(app, lifespan="on", **common))]
    if tls is not None and https is not None:
        ssl: dict[str, Any] = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
        listeners.append(https)
        urls.append(_url("https", https))
        servers.append(SignalFreeServer(uvicorn.Config(app, lifespan="off", **common, **ssl)))

    def signalled() -> None:
        if servers[0].should_exit:
            for server in servers:
                server.force_exit = True
            return
        on_stop()
        for server in servers:
            server.should_exit = True

    async def announce() -> None:
        # uvicorn names no address when it is handed bound sockets: the listeners are named here.
        while not all(server.started for server in servers):
            if servers[0].should_exit:
                return
            await asyncio.sleep(0.1)
        logger.info("Listening on %s", ", ".join(urls))
        while (message := readiness()) is None:
            if servers[0].should_exit:
                return
            await asyncio.sleep(0.1)
        logger.info(message)

    async def listen(server: uvicorn.Server, listener: socket.socket, extra: bool) -> None:
        _extra_listener.set(extra)  # in this listener's own task (and context) only
        await server.serve(sockets=[listener])

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, signalled)
        announcing = asyncio.create_task(announce())
        await asyncio.gather(
            *(
                listen(server, listener, extra=index > 0)
                for index, (server, listener) in enumerate(zip(servers, listeners, strict=True))
            )
        )
        announcing.cancel()

    story = OneProcessStory()
    uvicorn_logger = logging.getLogger("uvicorn.error")
    uvicorn_logger.addFilter(story)
    try:
        asyncio.run(serve())
    finally:
        uvicorn_logger.removeFilter(story)
