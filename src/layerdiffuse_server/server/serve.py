"""Serving one app on plain HTTP and HTTPS at once (the Python client needs https, browsers and the
JS proxy mode are happy with http), with one lifespan, so one worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from .tls import TlsFiles


class _SecondListener(uvicorn.Server):
    """Leaves signals to the first listener and stops when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve(app: FastAPI, host: str, port: int, tls: TlsFiles | None, tls_port: int, log_level: str) -> None:
    # Logging is configured by the caller (text or JSON); uvicorn's access log is replaced by ours.
    primary = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", log_config=None, access_log=False)
    )
    if tls is None or not tls_port:
        await primary.serve()
        return
    secondary = _SecondListener(
        uvicorn.Config(
            app,
            host=host,
            port=tls_port,
            log_level=log_level,
            lifespan="off",
            log_config=None,
            access_log=False,
            ssl_certfile=str(tls.cert),
            ssl_keyfile=str(tls.key),
        )
    )

    async def follow() -> None:
        while not primary.should_exit:
            await asyncio.sleep(0.2)
        secondary.should_exit = True

    async def run_primary() -> None:
        try:
            await primary.serve()
        finally:
            secondary.should_exit = True

    await asyncio.gather(run_primary(), secondary.serve(), follow())


def serve_app(app: FastAPI, *, host: str, port: int, tls: TlsFiles | None, tls_port: int, log_level: str) -> None:
    asyncio.run(_serve(app, host, port, tls, tls_port, log_level))
