"""One worker thread per GPU: claim → run the engine → store the image → complete, with live logs.

GPU work is blocking, so it runs on its own thread, off the event loop; the API learns about
progress through the store (logs, state) and :class:`RequestEvents` wake-ups. Cancellation is
cooperative: the engine polls the store between denoising steps. When the queue holds several
requests that can share a sampler run, the worker claims them together and denoises them as one
batch (``max_batch_size``); each still gets its own seed, image, logs and result.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from ..engine.pipeline import GenerationResult, batch_key
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
# How far down the queue the worker looks for requests to batch with the one it claimed.
BATCH_WINDOW = 32
INTERNAL_ERROR = Completion(
    500,
    {"detail": "Internal error while generating the image", "error_type": "runner_server_error"},
    error="Internal error while generating the image",
    error_type="runner_server_error",
)


class Engine(Protocol):
    device: Any
    dtype: Any

    def generate_batch(
        self,
        requests: Sequence[GenerationParams],
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]: ...


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
        max_batch_size: int = 1,
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
        self.max_batch_size = max_batch_size
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
        """Run the next queued request, with compatible ones behind it as one batch; True when one ran."""
        for request_id in self.store.requests.expire_start_deadlines(self.clock()):
            self._finished(request_id)
        head = self.store.requests.claim_next(self.worker_id, self.clock())
        if head is None:
            return False
        jobs: list[_Job] = []
        for record in [head, *self._claim_companions(head)]:
            self.events.publish(record.id)
            if self.metrics is not None:
                self.metrics.observe_started(record)
            attempt = f" (attempt {record.attempts})" if record.attempts > 1 else ""
            self._log(record.id, f"Request started{attempt} on worker {self.worker_id}.")
            try:
                jobs.append(_Job(record, parse_params(record)))
            except ValidationError as error:
                self._complete(record.id, validation_completion(error))
        if not jobs:
            return True
        self.current_request = jobs[0].record.id
        self.report()
        with request_id_context(jobs[0].record.id):
            try:
                self._run_jobs(jobs)
            except _Interrupted:
                for job in jobs:
                    if job.live:
                        self._log(job.id, "The server is stopping; this request runs again when it restarts.", "WARN")
            except Exception:
                logger.exception("generation failed for %s", ", ".join(job.id for job in jobs))
                for job in jobs:
                    if job.live:
                        self._answer(job, INTERNAL_ERROR)
            finally:
                self.current_request = None
                self.requests_done += len(jobs)
                self.report()
        return True

    def _claim_companions(self, head: RequestRecord) -> list[RequestRecord]:
        """Queued requests that can share the head's sampler run (same size, steps, sampler, guidance).

        Only a window of the queue is looked at, so batching never reaches far past requests that
        were submitted earlier; they wait at most one batch longer.
        """
        if self.max_batch_size <= 1:
            return []
        try:
            key = batch_key(parse_params(head))
        except ValidationError:
            return []
        wanted = []
        for record in self.store.requests.queued(self.clock(), BATCH_WINDOW):
            if record.priority != head.priority:
                continue
            try:
                if batch_key(parse_params(record)) == key:
                    wanted.append(record.id)
            except ValidationError:
                continue
            if len(wanted) == self.max_batch_size - 1:
                break
        return self.store.requests.claim(wanted, self.worker_id, self.clock())

    def _run_jobs(self, jobs: list[_Job]) -> None:
        assert self.engine is not None
        engine = self.engine
        for job in jobs:
            params = job.params
            self._log(
                job.id,
                f"Model {self.model_name!r} on {engine.device} ({str(engine.dtype).removeprefix('torch.')}), "
                f"loaded in {self.load_seconds or 0:.1f} s at startup.",
            )
            batched = f", batched with {len(jobs) - 1} other request(s)" if len(jobs) > 1 else ""
            self._log(
                job.id,
                f"Generating {params.width}x{params.height}, {params.num_inference_steps} steps, "
                f"guidance {params.guidance_scale:g}, seed {params.seed}{batched}.",
            )

        def on_step(step: int, total: int) -> None:
            for job in jobs:
                if job.live:
                    self._log(job.id, f"Denoising step {step}/{total}", echo=False)
                    if step == total:
                        self._log(job.id, "Decoding the transparent image.")

        def should_cancel() -> bool:
            if self._stopping.is_set():
                return True
            for job in jobs:
                if job.live and self.store.requests.is_cancel_requested(job.id):
                    # The others in the batch go on; this one is answered now and its image dropped.
                    self._log(job.id, "Cancelled between denoising steps.", "WARN")
                    self._answer(job, cancelled_completion())
            return not any(job.live for job in jobs)

        started = time.perf_counter()
        try:
            results = engine.generate_batch([job.params for job in jobs], on_step=on_step, should_cancel=should_cancel)
        except GenerationCancelled:
            if any(job.live for job in jobs):  # not everyone cancelled: the server is stopping
                raise _Interrupted() from None
            return
        except LayerDiffuseError as error:
            for job in jobs:
                if job.live:
                    self._answer(job, error_completion(error))
            return
        inference_time = time.perf_counter() - started
        for job, result in zip(jobs, results, strict=True):
            if not job.live:  # cancelled during the run: already answered
                continue
            if self.metrics is not None:
                self.metrics.observe_generation(inference_time, result.timings)
            self._answer(job, self._output(job, result, inference_time))

    def _output(self, job: _Job, result: GenerationResult, inference_time: float) -> Completion:
        timings = result.timings
        self._log(
            job.id,
            f"Decoded in {timings.get('decoding', 0):.2f} s (VAE {timings.get('vae_decode', 0):.2f} s, "
            f"transparency {timings.get('transparent_decode', 0):.2f} s).",
        )
        if "safety_check" in timings and result.has_nsfw_concepts is not None:
            flagged = bool(result.has_nsfw_concepts[0])
            verdict = "flagged, image made transparent" if flagged else "nothing flagged"
            self._log(job.id, f"Safety check: {verdict} ({timings['safety_check']:.2f} s).")
        image = result.images[0]
        stored = store_image(
            image,
            blobs=self.blobs,
            catalog=self.store.files,
            base_url=self.base_url,
            key_id=job.record.key_id,
            request_id=job.id,
        )
        self._log(job.id, f"Uploaded {stored.file_name} ({stored.file_size} bytes).")
        output = build_output(stored, image.seed, result.has_nsfw_concepts)
        metrics = {"inference_time": round(inference_time, 4)}
        if result.batch_size > 1:
            metrics["batch_size"] = result.batch_size
        return Completion(200, output.model_dump(mode="json", exclude_none=True), metrics=metrics)

    def _answer(self, job: _Job, completion: Completion) -> None:
        job.answered = True
        self._complete(job.id, completion)

    def _complete(self, request_id: str, completion: Completion) -> None:
        if completion.ok:
            self._log(request_id, "Request completed.")
        elif completion.error_type != "client_cancelled":
            self._log(request_id, f"Request failed: {completion.error}", "ERROR")
        self.store.requests.complete(request_id, completion, self.clock())
        self._finished(request_id)

    def _log(self, request_id: str, message: str, level: str = "INFO", *, echo: bool = True) -> None:
        """A line of the request's own log (what clients see), also written to the process log."""
        self.store.requests.append_log(request_id, message, level, self.clock())
        self.events.publish(request_id, log_only=True)
        python_level = logging.getLevelNamesMapping().get("WARNING" if level == "WARN" else level, logging.INFO)
        logger.log(python_level if echo else logging.DEBUG, message, extra={"request_id": request_id})

    def _finished(self, request_id: str) -> None:
        self.events.publish(request_id)
        self.on_completed(request_id)


def parse_params(record: RequestRecord) -> GenerationParams:
    """The request's input as engine parameters, with its seed fixed (drawn now when absent)."""
    request = LayerDiffusionInput.model_validate(record.input)
    return GenerationParams(**request.model_dump()).with_seed()


@dataclass
class _Job:
    record: RequestRecord
    params: GenerationParams
    answered: bool = False

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def live(self) -> bool:
        return not self.answered


class _Interrupted(Exception):
    """The server is shutting down mid-request; the request is re-run after the restart."""
