"""The worker's second stage: finishing a batch (PNG encoding, storing the files, completing its
requests) on a thread of its own, so that the GPU starts denoising the next batch meanwhile.

One thread, so batches finish in the order they were denoised and a request's files are written by
one writer; a bounded hand-over (:data:`WAITING_BATCHES` waiting besides the one in progress), so a
GPU faster than its encoder and store waits for them instead of piling decoded images up in memory.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Batches handed over that wait while another is finished: one keeps the GPU busy whenever
#: finishing a batch takes less time than denoising one; more would only hold more images.
WAITING_BATCHES = 1


class OutputStage:
    """Runs the work handed to it, in order, on one daemon thread started at the first hand-over.

    The work is responsible for its own failures (it answers its requests); an exception that
    escapes it is logged, and the stage goes on with the next.
    """

    def __init__(self, name: str = "worker-outputs", waiting: int = WAITING_BATCHES) -> None:
        self.name = name
        self._queue: queue.Queue[Callable[[], None]] = queue.Queue(maxsize=waiting)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, work: Callable[[], None]) -> None:
        """Hand ``work`` over; blocks while the stage already holds as much as it may."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                self._thread.start()
        self._queue.put(work)

    def drain(self) -> None:
        """Wait until everything handed over has run (at once when nothing was)."""
        self._queue.join()

    @property
    def on_stage_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _serve(self) -> None:
        while True:
            work = self._queue.get()
            try:
                work()
            except BaseException:  # the work answers its own requests; this keeps the stage alive
                logger.exception("finishing a batch failed")
            finally:
                self._queue.task_done()
