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
import signal
import threading

import uvicorn

from ..settings import Settings
from .bootstrap import build_worker, open_core
from .engine_loader import checkpoint_loader, engine_loader
from .listeners import bind
from .serve import SignalFreeServer

logger = logging.getLogger(__name__)


def run_worker(settings: Settings) -> None:
    from ..worker.health import create_health_app

    if settings.public_url is None:
        logger.warning("no --public-url: image URLs will point at %s; set it to the API's address", settings.base_url)

    # Bound first: a taken port ends the process now, naming the address, not after the model loads.
    listener = bind(settings.host, settings.worker_port, "worker health") if settings.worker_port else None
    core = open_core(settings)
    worker = build_worker(
        core, engine_loader(settings), model_name=settings.model, load_checkpoint=checkpoint_loader(settings)
    )
    stopping = threading.Event()
    housekeeping = threading.Thread(
        target=core.housekeeper().run_until, args=(stopping,), name="housekeeping", daemon=True
    )
    housekeeping.start()
    worker.start()
    logger.info("worker %s started (model %s); store %s", worker.worker_id, settings.model, core.store.url)
    health = None
    if listener is not None:
        config = uvicorn.Config(
            create_health_app(worker, core.store, core.blobs, core.metrics),
            log_config=None,
            access_log=False,
            log_level=settings.log_level,
            lifespan="off",
        )
        health = SignalFreeServer(config)

    async def serve_until_signalled() -> None:
        signalled = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, signalled.set)
        serving = (
            asyncio.create_task(health.serve(sockets=[listener]))
            if health is not None and listener is not None
            else None
        )
        await signalled.wait()
        worker.begin_stop()  # claim nothing more, at once; the batch in hand goes on
        if health is not None and serving is not None:
            health.should_exit = True
            await serving

    try:
        asyncio.run(serve_until_signalled())
    finally:
        worker.stop()
        stopping.set()
        housekeeping.join(10)
        core.close()
        logger.info("worker %s stopped", worker.worker_id)
