"""One worker thread per GPU: claim → run the engine → store the image → complete, with live logs.

GPU work is blocking, so it runs on its own thread, off the event loop; the API learns about
progress through the store (logs, state) and :class:`RequestEvents` wake-ups. Cancellation is
cooperative: the engine polls the store between denoising steps.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import ValidationError

from ..engine.pipeline import GenerationResult
from ..errors import GenerationCancelled, LayerDiffuseError, validation_details
from ..events import RequestEvents
from ..files import BlobStore
from ..observability import Metrics, request_id_context
from ..schemas import GenerationParams, LayerDiffusionInput
from ..store.contracts import Completion, RequestRecord, Store, WorkerState, WorkerStatus
from ..store.sql_requests import cancelled_completion
from .outputs import build_output, store_image

logger = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 1.0
HEARTBEAT_SECONDS = 10.0


class Engine(Protocol):
    device: Any
    dtype: Any

    def generate(
        self,
        params: GenerationParams,
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult: ...


def validation_completion(error: ValidationError) -> Completion:
    """fal's 422 body: a list of ``{loc, msg, type}`` with ``loc`` starting at ``body``."""
    details = validation_details(error.errors(include_url=False), location="body")
    return Completion(422, {"detail": details}, error="Invalid input", error_type="validation_error")


def error_completion(error: LayerDiffuseError) -> Completion:
    return Completion(
        error.status_code,
        {"detail": error.message, "error_type": error.error_type},
        error=error.message,
        error_type=error.error_type,
    )


class GenerationWorker:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        load_engine: Callable[[], Engine],
        *,
        events: RequestEvents,
        base_url: str,
        model_name: str,
        max_attempts: int = 2,
        on_completed: Callable[[str], None] | None = None,
        metrics: Metrics | None = None,
        device: str = "auto",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.events = events
        self.base_url = base_url
        self.model_name = model_name
        self.max_attempts = max_attempts
        self.on_completed = on_completed or (lambda request_id: None)
        self.metrics = metrics
        self.device = device
        self.clock = clock
        self.worker_id = f"worker-{uuid.uuid4().hex[:8]}"
        self.started_at = clock()
        self.requests_done = 0
        self.engine: Engine | None = None
        self.load_error: BaseException | None = None
        self.load_seconds: float | None = None
        self.current_request: str | None = None
        self._load_engine = load_engine
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat_thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def start(self) -> None:
        requeued, failed = self.store.requests.requeue_interrupted(self.max_attempts, self.clock())
        for request_id in requeued:
            self._log(request_id, "The server stopped while this request was running; it runs again.", "WARN")
        for request_id in failed:
            self.on_completed(request_id)
        if requeued or failed:
            logger.warning("recovered interrupted requests: %d requeued, %d failed", len(requeued), len(failed))
        self.report()
        self._thread = threading.Thread(target=self._run, name="generation-worker", daemon=True)
        self._thread.start()
        self._heartbeat_thread = threading.Thread(target=self._beat, name="worker-heartbeat", daemon=True)
        self._heartbeat_thread.start()

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the request in hand (or let its cancel land), then stop; queued requests stay queued."""
        self._stopping.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout)
        self.report()

    @property
    def state(self) -> WorkerState:
        if self.load_error is not None:
            return WorkerState.FAILED
        if self._stopping.is_set() and (self._thread is None or not self._thread.is_alive()):
            return WorkerState.STOPPED
        if self.engine is None:
            return WorkerState.LOADING
        return WorkerState.BUSY if self.current_request else WorkerState.READY

    def report(self) -> None:
        """Write this worker's row (state, current request, heartbeat) for ``status`` and metrics."""
        engine_device = getattr(self.engine, "device", None)
        try:
            self.store.workers.report(
                WorkerStatus(
                    id=self.worker_id,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    model=self.model_name,
                    device=str(engine_device) if engine_device is not None else self.device,
                    state=self.state,
                    current_request=self.current_request,
                    requests_done=self.requests_done,
                    error=str(self.load_error) if self.load_error is not None else None,
                    started_at=self.started_at,
                    heartbeat_at=self.clock(),
                )
            )
        except Exception:  # a missed heartbeat is not worth a request; the next one retries
            logger.warning("could not write the worker heartbeat", exc_info=True)

    def _beat(self) -> None:
        while not self._stopping.wait(HEARTBEAT_SECONDS):
            self.report()

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self.engine = self._load_engine()
        except BaseException as error:  # the server stays up to report it; requests wait in the queue
            self.load_error = error
            logger.exception("loading the model failed; requests stay queued")
            self.report()
            return
        self.load_seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.model_load.set(self.load_seconds)
        logger.info("model %r ready on %s in %.1f s", self.model_name, self.engine.device, self.load_seconds)
        self.report()
        while not self._stopping.is_set():
            if not self.run_once():
                self._wakeup.wait(IDLE_POLL_SECONDS)
                self._wakeup.clear()

    # -- one request --------------------------------------------------------------------------

    def run_once(self) -> bool:
        """Run the next queued request, if any; True when one ran."""
        for request_id in self.store.requests.expire_start_deadlines(self.clock()):
            self._finished(request_id)
        record = self.store.requests.claim_next(self.worker_id, self.clock())
        if record is None:
            return False
        self.current_request = record.id
        self.report()
        self.events.publish(record.id)
        if self.metrics is not None:
            self.metrics.observe_started(record)
        with request_id_context(record.id):
            return self._run_claimed(record)

    def _run_claimed(self, record: RequestRecord) -> bool:
        try:
            completion = self._process(record)
        except _Interrupted:
            self._log(record.id, "The server is stopping; this request runs again when it restarts.", "WARN")
            return True
        except Exception:
            logger.exception("request %s failed", record.id)
            completion = Completion(
                500,
                {"detail": "Internal error while generating the image", "error_type": "runner_server_error"},
                error="Internal error while generating the image",
                error_type="runner_server_error",
            )
        finally:
            self.current_request = None
            self.requests_done += 1
            self.report()
        if completion.ok:
            self._log(record.id, "Request completed.")
        else:
            self._log(record.id, f"Request failed: {completion.error}", "ERROR")
        self.store.requests.complete(record.id, completion, self.clock())
        self._finished(record.id)
        return True

    def _process(self, record: RequestRecord) -> Completion:
        assert self.engine is not None
        attempt = f" (attempt {record.attempts})" if record.attempts > 1 else ""
        self._log(record.id, f"Request started{attempt} on worker {self.worker_id}.")
        try:
            request = LayerDiffusionInput.model_validate(record.input)
        except ValidationError as error:
            return validation_completion(error)
        params = GenerationParams(**request.model_dump()).with_seed()
        assert params.seed is not None
        self._log(
            record.id,
            f"Model {self.model_name!r} on {self.engine.device} ({str(self.engine.dtype).removeprefix('torch.')}), "
            f"loaded in {self.load_seconds or 0:.1f} s at startup.",
        )
        self._log(
            record.id,
            f"Generating {params.width}x{params.height}, {params.num_inference_steps} steps, "
            f"guidance {params.guidance_scale:g}, seed {params.seed}.",
        )

        def on_step(step: int, total: int) -> None:
            self._log(record.id, f"Denoising step {step}/{total}", echo=False)
            if step == total:
                self._log(record.id, "Decoding the transparent image.")

        def should_cancel() -> bool:
            return self._stopping.is_set() or self.store.requests.is_cancel_requested(record.id)

        started = time.perf_counter()
        try:
            result = self.engine.generate(params, on_step=on_step, should_cancel=should_cancel)
        except GenerationCancelled:
            if self.store.requests.is_cancel_requested(record.id):
                self._log(record.id, "Cancelled between denoising steps.", "WARN")
                return cancelled_completion()
            raise _Interrupted() from None
        except LayerDiffuseError as error:
            return error_completion(error)
        inference_time = time.perf_counter() - started
        timings = result.timings
        if self.metrics is not None:
            self.metrics.observe_generation(inference_time, timings)
        self._log(record.id, f"Decoded in {timings.get('decoding', 0):.2f} s.")
        if "safety_check" in timings:
            flagged = bool(result.has_nsfw_concepts and result.has_nsfw_concepts[0])
            verdict = "flagged, image made transparent" if flagged else "nothing flagged"
            self._log(record.id, f"Safety check: {verdict} ({timings['safety_check']:.2f} s).")
        image = result.images[0]
        stored = store_image(
            image,
            blobs=self.blobs,
            catalog=self.store.files,
            base_url=self.base_url,
            key_id=record.key_id,
            request_id=record.id,
        )
        self._log(record.id, f"Uploaded {stored.file_name} ({stored.file_size} bytes).")
        output = build_output(stored, image.seed, result.has_nsfw_concepts)
        return Completion(
            200,
            output.model_dump(mode="json", exclude_none=True),
            metrics={"inference_time": round(inference_time, 4)},
        )

    def _log(self, request_id: str, message: str, level: str = "INFO", *, echo: bool = True) -> None:
        """A line of the request's own log (what clients see), also written to the process log."""
        self.store.requests.append_log(request_id, message, level, self.clock())
        self.events.publish(request_id)
        python_level = logging.getLevelNamesMapping().get("WARNING" if level == "WARN" else level, logging.INFO)
        logger.log(python_level if echo else logging.DEBUG, message, extra={"request_id": request_id})

    def _finished(self, request_id: str) -> None:
        self.events.publish(request_id)
        self.on_completed(request_id)


class _Interrupted(Exception):
    """The server is shutting down mid-request; the request is re-run after the restart."""
