"""``layerdiffuse worker``: a GPU process that claims work from the shared store and runs it.

Any number of these run against one database and one file store, beside any number of API nodes.
Besides generating, each one does the service's housekeeping (taking back the requests of lost
workers, start timeouts, retention), so nothing depends on one process staying up. SIGTERM stops it
gracefully: it claims nothing more, finishes the batch in hand within ``shutdown_grace_seconds`` or
hands it back to the queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import uvicorn

from ..settings import Settings
from .bootstrap import build_worker, open_core
from .engine_options import EngineOptions

logger = logging.getLogger(__name__)


def run_worker(settings: Settings, options: EngineOptions) -> None:
    from ..worker.health import create_health_app

    core = open_core(settings)
    worker = build_worker(core, options.loader(settings), model_name=settings.model)
    stopping = threading.Event()
    housekeeping = threading.Thread(
        target=core.housekeeper().run_until, args=(stopping,), name="housekeeping", daemon=True
    )
    housekeeping.start()
    worker.start()
    logger.info("worker %s started (model %s); store %s", worker.worker_id, settings.model, core.store.url)
    health = create_health_app(worker, core.store, core.blobs, core.metrics)
    server = uvicorn.Server(
        uvicorn.Config(
            health,
            host=settings.host,
            port=settings.worker_port,
            log_config=None,
            access_log=False,
            log_level=settings.log_level,
            lifespan="off",
        )
    )

    async def serve() -> None:
        async def follow() -> None:
            while not server.should_exit:
                await asyncio.sleep(0.2)
            worker.begin_stop()  # claim nothing more, at once; the batch in hand goes on

        await asyncio.gather(server.serve(), follow())

    try:
        if settings.worker_port:
            asyncio.run(serve())
        else:
            _wait_for_signal()
    finally:
        worker.stop()
        stopping.set()
        housekeeping.join(10)
        core.close()
        logger.info("worker %s stopped", worker.worker_id)


def _wait_for_signal() -> None:
    """Without a health port, block until SIGINT or SIGTERM."""
    import signal

    received = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: received.set())
    while not received.wait(1.0):
        pass
