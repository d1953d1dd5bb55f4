"""One worker per GPU: claim → run the engine → store the images → complete, with live logs.

Encoding and storing the images and completing the requests run on an output stage of their own
(:mod:`.output_stage`), so the GPU denoises the next batch meanwhile; until a request is answered
there its lease is renewed like that of the batch in hand, and a stop drains the stage within its
grace or hands back what is left.

GPU work is blocking, so it runs on a thread of its own, off any event loop. Everything about a
request's life goes through the :class:`~layerdiffuse_server.lifecycle.RequestManager`: what the
worker claims it holds under a lease that its heartbeat renews, and every log line and completion
it writes is fenced by that lease, so a worker that was given up for dead (stalled, cut off from
the database) cannot overwrite the work of the one that took over. Cancellation is cooperative:
the engine asks between denoising steps. When the queue holds several requests that can share a
sampler run, the worker claims them together and denoises them as one batch (``max_batch_size``
images: a request counts its ``num_images``); each still gets its own seeds, images, logs and result.
A request may name one of the operator's checkpoints (``model_name``): the worker loads it when a
batch needs it, holding at most ``max_loaded_models`` engines (see :mod:`.model_shelf`), and claims
requests for the ones it holds first.

A graceful stop claims nothing more, gives the batch in hand ``grace_seconds`` to finish, then
interrupts it between steps and hands its requests back to the queue without counting an attempt.
The bound holds on wall time (the worker's clock) however slow a step is: a batch that has not
reached a step boundary :data:`INTERRUPT_WAIT_SECONDS` after the grace is handed back by the stop
itself, and its thread, left inside the engine to end with the process, writes nothing more (each
of its writes is made under a lock that the hand-back takes, and checks first whether it still may).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from ..clock import Clock
from ..endpoints import endpoint_of, run_params
from ..engine_choices import DEFAULT_PNG_COMPRESSION, PngCompression
from ..errors import GenerationCancelled, InvalidInputError, LayerDiffuseError
from ..files import BlobStore, StoredFiles
from ..files.image_inputs import read_image_input
from ..images import has_transparency
from ..lifecycle import RequestManager, outcomes
from ..lifecycle.local_processes import process_scope
from ..model_profiles import profile_of
from ..observability import Metrics, request_id_context
from ..schemas import GenerationParams, LayerDiffusionInput, image_fields
from ..store.contracts import (
    Completion,
    Notice,
    NoticeKind,
    ReleaseOutcome,
    RequestRecord,
    WorkerState,
    WorkerStatus,
)
from .model_shelf import ModelShelf, free_device_memory
from .output_stage import OutputStage
from .outputs import StoredOutput, build_output, discard, store_images
from .partials import PartialImages, takes_partials

if TYPE_CHECKING:
    from ..results import GenerationResult

logger = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 1.0
#: Cancel flags are read from the store at most this often while a batch runs (and at once on a notice).
CANCEL_CHECK_SECONDS = 0.5
#: After the grace, how long an interrupted batch has to reach a step boundary and hand itself back
#: before the stop hands it back without waiting for the engine.
INTERRUPT_WAIT_SECONDS = 1.0
#: How long the stop waits for a write of the batch in hand (a log line, a stored image) to end.
WRITE_WAIT_SECONDS = 2.0


class Engine(Protocol):
    device: Any
    dtype: Any
    native_size: int  # the side of a request that names no size

    def generate_batch(
        self,
        requests: Sequence[GenerationParams],
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        on_partial: Callable[[int, list[Any]], None] | None = None,
    ) -> list[GenerationResult]: ...

    def generate_from_images(
        self,
        params: LayerDiffusionInput,
        images: dict[str, Any],
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        on_partial: Callable[[int, list[Any]], None] | None = None,
    ) -> GenerationResult:
        """One request of an endpoint with image inputs (``images``: field name → RGBA array)."""
        ...


@dataclass
class _Job:
    lease: RequestRecord
    claimed_at: float  # the worker clock's monotonic time
    params: LayerDiffusionInput | None = None  # parsed from the input when the job starts
    images: dict[str, Any] | None = None  # the image inputs, read from the store, for endpoints that have them
    answered: bool = False  # completed (by us, or elsewhere: cancel, lost lease)
    outputs: list[StoredOutput] = field(default_factory=list)
    ignored_words: list[str] | None = None  # for a model with a closed vocabulary: the prompt's unknown words
    staged: bool = False  # denoised, handed to the output stage, which finishes it

    @property
    def id(self) -> str:
        return self.lease.id

    @property
    def live(self) -> bool:
        return not self.answered


#: Step intervals the pace of a run is measured over: recent enough to follow a change of pace.
PACE_WINDOW = 4


@dataclass
class _Estimate:
    """How long a run has left, from the pace of its steps, said early and said again when it changes.

    The pace is that of the last few steps (never the first one alone, which also pays for the run's
    set-up), measured anew at every step, so a run that slows down (another process took the cores)
    says so instead of keeping an early promise. The first line comes at the third step or 2 s in
    (with a pace from two steps at least, unless the first one took 10 s); another whenever the
    estimate has moved by more than a quarter (and 2 s) from what the last line implied by now.

    Attributes:
        started: when the run began (the clock's time).
        decode_seconds: what decoding after the last step should take (the previous run's pace), if known.
        clock: seconds, monotonic (a parameter so that tests can drive it).
    """

    started: float
    decode_seconds: float | None = None
    clock: Callable[[], float] = time.monotonic
    steps: list[tuple[int, float]] = field(default_factory=list)  # (step, when) of the last few steps
    told: tuple[float, float] | None = None  # when the last line was said, and the seconds left it said

    def after(self, step: int, total: int) -> str | None:
        """The line to log after ``step`` of ``total``, or None when the last one still holds."""
        now = self.clock()
        self.steps = [*self.steps[-PACE_WINDOW:], (step, now)]
        if step >= total:
            return None
        (first, first_at), first_seen = self.steps[0], len(self.steps) == 1
        per_step = (now - self.started) / step if first_seen else (now - first_at) / (step - first)
        left = per_step * (total - step) + (self.decode_seconds or 0.0)
        if self.told is None:
            waited = now - self.started
            # Without a pace yet (one step seen), wait unless the wait itself is long.
            if (step < 3 and waited < 2.0) or (first_seen and waited < 10.0):
                return None
            opening = "Denoising at"
        else:
            told_at, told_left = self.told
            implied = max(0.0, told_left - (now - told_at))
            if abs(left - implied) <= max(2.0, 0.25 * implied):
                return None
            opening = "Re-estimated: denoising at"
        self.told = (now, left)
        then = f"decoding included ({self.decode_seconds:.0f} s)" if self.decode_seconds else "then decoding"
        return f"{opening} {per_step:.2f} s per step: about {left:.0f} s left, {then}."


class _Interrupted(Exception):
    """The worker is stopping mid-batch; its requests go back to the queue."""


class GenerationWorker:
    def __init__(
        self,
        manager: RequestManager,
        blobs: BlobStore,
        load_engine: Callable[[], Engine],
        *,
        base_url: str,
        model_name: str,
        load_checkpoint: Callable[[str], Engine] | None = None,
        max_loaded_models: int = 1,
        metrics: Metrics | None = None,
        device: str = "auto",
        max_batch_size: int = 1,
        grace_seconds: float = 20.0,
        clock: Clock | None = None,
        png_compression: PngCompression = DEFAULT_PNG_COMPRESSION,
        pipeline_outputs: bool = True,
    ) -> None:
        self.manager = manager
        #: What the worker's waits and intervals run on: its manager's, which times the leases, unless given.
        self.clock = clock or manager.clock
        self.store = manager.store
        self.blobs = blobs
        #: Inputs are read and outputs written through the owner of stored files, on the manager's clock.
        self.files = StoredFiles(blobs, manager.store.files, clock=manager.clock)
        self.base_url = base_url
        self.model_name = model_name
        self.metrics = metrics
        self.device = device
        self.max_batch_size = max_batch_size
        self.grace_seconds = grace_seconds
        self.png_compression: PngCompression = png_compression
        #: Whether the serving loop claims the next batch while the last one's images are encoded and
        #: stored (False: one batch at a time, end to end, as :meth:`run_once` does).
        self.pipeline_outputs = pipeline_outputs
        self._outputs = OutputStage()
        self._staged: list[_Job] = []  # the jobs the output stage holds (under ``_live_lock``)
        self.worker_id = f"worker-{uuid.uuid4().hex[:8]}"
        self.started_at = self.clock.time()
        self.requests_done = 0
        #: The engine in hand: the one the last batch ran on (its model's, or a checkpoint's).
        self.engine: Engine | None = None
        self._engine_name: str | None = None  # the checkpoint ``self.engine`` is of (None: the model's own)
        #: Every engine loaded, the model's own and the checkpoints requests named (``max_loaded_models``).
        self.models: ModelShelf[Engine] = ModelShelf(max_loaded_models)
        self._load_checkpoint = load_checkpoint
        self._native_size: int | None = None  # the model's: its checkpoints share it
        self.load_error: BaseException | None = None
        self.load_seconds: float | None = None
        self.current_request: str | None = None
        self._load_engine = load_engine
        self._decode_pace: float | None = None  # seconds per output pixel after the last step, last run
        self._wakeup = threading.Event()
        self._cancel_hint = threading.Event()
        self._stopping = threading.Event()  # claim nothing more
        self._interrupting = threading.Event()  # stop the batch in hand between steps
        self._heart_stops = threading.Event()  # the last beat: the worker thread is gone
        self._finished = threading.Event()  # the worker thread's loop has ended
        self._abandoned = threading.Event()  # the stop handed the batch back: its thread writes nothing more
        self._writes = threading.RLock()  # held by each write of the batch in hand, and by the hand-back
        self._jobs: list[_Job] = []  # the batch in hand
        self._stop_lock = threading.Lock()  # a second stop waits for the first
        self._stop_done = False
        #: The leases of the batch in hand: the only ones the heartbeat renews.
        self._live: dict[str, RequestRecord] = {}
        self._live_lock = threading.Lock()
        #: When the last heartbeat's renewal began, and what it still held then.
        self._held: tuple[float, set[str]] = (float("-inf"), set())
        self._thread: threading.Thread | None = None
        self._heartbeat_thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The model loaded once (a checkpoint switch that unloads it does not make the worker unready)."""
        return self.engine is not None or self.load_seconds is not None

    @property
    def native_size(self) -> int:
        """The side of a request that names no size: the model's (its checkpoints have the same)."""
        if self.engine is not None:
            return self.engine.native_size
        assert self._native_size is not None, "the model loaded once"
        return self._native_size

    def start(self) -> None:
        self._unsubscribe = self.manager.subscribe(self._heard)
        self.report()
        self._thread = threading.Thread(target=self._run, name="generation-worker", daemon=True)
        self._thread.start()
        self._heartbeat_thread = threading.Thread(target=self._beat, name="worker-heartbeat", daemon=True)
        self._heartbeat_thread.start()

    def _heard(self, notice: Notice) -> None:
        if notice.kind in (NoticeKind.QUEUED, NoticeKind.RESYNC):
            self._wakeup.set()
        if notice.kind in (NoticeKind.CANCEL, NoticeKind.RESYNC):
            self._cancel_hint.set()

    def wake(self) -> None:
        self._wakeup.set()

    def begin_stop(self) -> None:
        """Claim nothing more; the batch in hand goes on (see :meth:`stop`)."""
        self._stopping.set()
        self._wakeup.set()

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop within ``grace_seconds`` (default: the worker's own): the batch in hand finishes if it
        can, else it is interrupted and handed back; queued requests stay queued. A call while
        another runs waits for that one, and returns at once once it is done."""
        with self._stop_lock:
            if not self._stop_done:
                self._stop(grace_seconds)
                self._stop_done = True

    def _stop(self, grace_seconds: float | None) -> None:
        self.begin_stop()
        grace = self.grace_seconds if grace_seconds is None else grace_seconds
        if self._thread is not None:
            if not self.clock.wait(self._finished, grace):
                self._interrupting.set()
                self.clock.wait(self._finished, INTERRUPT_WAIT_SECONDS)  # a fast engine stops at its next step
            if self._finished.is_set():
                self._thread.join()  # only its return is left
            else:
                self._abandon()
        self._heart_stops.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(5)
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.report()

    def _abandon(self) -> None:
        """Hand the batch in hand back from here: its step does not end in time. Its thread stays in
        the engine until the process ends; from now on it writes nothing."""
        acquired = self._writes.acquire(timeout=WRITE_WAIT_SECONDS)
        try:
            self._abandoned.set()  # a write that outlasted the wait is fenced by the lease instead
        finally:
            if acquired:
                self._writes.release()
        with self._live_lock:
            jobs = [job for job in [*self._jobs, *self._staged] if job.live]
            for job in jobs:
                self._live.pop(job.id, None)
        self.current_request = None
        self._hand_back(jobs)
        if jobs:
            logger.warning("the batch in hand did not reach a step boundary in time; handed back without waiting")

    @property
    def stopped(self) -> bool:
        thread = self._thread
        return self._stopping.is_set() and (thread is None or not thread.is_alive() or self._abandoned.is_set())

    @property
    def state(self) -> WorkerState:
        if self.load_error is not None:
            return WorkerState.FAILED
        if self.stopped:
            return WorkerState.STOPPED
        if not self.ready:
            return WorkerState.LOADING
        return WorkerState.BUSY if self.current_request else WorkerState.READY

    def report(self) -> None:
        """Write this worker's row (state, current request, heartbeat) for ``status`` and metrics."""
        if self._abandoned.is_set() and (threading.current_thread() is self._thread or self._outputs.on_stage_thread):
            return  # the stop wrote the last row
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
                    heartbeat_at=self.clock.time(),
                    scope=process_scope(),
                )
            )
        except Exception:  # a missed heartbeat is not worth a request; the next one retries
            logger.warning("could not write the worker heartbeat", exc_info=True)

    def _beat(self) -> None:
        """Heartbeat: the status row and the leases, a few times per lease period, until the worker
        thread is gone (through a stop's grace period too: the batch in hand keeps its leases)."""
        interval = max(0.1, self.manager.lease_seconds / 3)
        while not self._heart_stops.is_set():
            try:
                began = self.clock.monotonic()
                with self._live_lock:
                    leases = list(self._live.values())
                self._held = (began, self.manager.renew(leases))
            except Exception:
                logger.warning("could not renew the leases of %s", self.worker_id, exc_info=True)
            self.report()
            self.clock.wait(self._heart_stops, interval)

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._outputs.drain()  # the batches denoised are finished (or, once interrupted, handed back)
            self._finished.set()

    def _serve(self) -> None:
        started = time.perf_counter()
        try:
            self.engine = self._load_engine()
        except BaseException as error:  # the process stays up to report it; requests wait for another worker
            self.load_error = error
            logger.exception("loading the model failed; this worker takes no requests")
            self.report()
            return
        self.load_seconds = time.perf_counter() - started
        self.models.put(None, self.engine)
        self._native_size = self.engine.native_size
        if self.metrics is not None:
            self.metrics.model_load.set(self.load_seconds)
        logger.info("model %r ready on %s in %.1f s", self.model_name, self.engine.device, self.load_seconds)
        self.report()
        while not self._stopping.is_set():
            try:
                ran = self.run_once(pipelined=self.pipeline_outputs)
            except Exception:  # the store is away: wait, then try again
                logger.warning("could not claim work", exc_info=True)
                ran = False
            if not ran:
                self.clock.wait(self._wakeup, IDLE_POLL_SECONDS)
                self._wakeup.clear()

    # -- one batch ----------------------------------------------------------------------------

    def run_once(self, *, pipelined: bool = False) -> bool:
        """Run the next queued request, with compatible ones behind it as one batch; True when one ran.

        Once denoised, the batch goes to the output stage (:mod:`.output_stage`), which encodes and
        stores its images and completes its requests. ``pipelined`` returns as soon as it is handed
        over, so that the next batch can start; otherwise this returns once it is answered.

        Whatever happens, no claimed request is left behind: what was not completed is handed back
        to the queue, or, where even that fails (the store is away), no longer renewed, so its lease
        runs out and another worker takes it over.
        """
        # A worker that can switch models takes requests for those it holds first (see the claim).
        prefer = self.models.names if self._load_checkpoint is not None else []
        leases = self.manager.claim(self.worker_id, self.max_batch_size, prefer=prefer)
        if not leases:
            return False
        claimed_at = self.clock.monotonic()
        jobs = [_Job(lease, claimed_at) for lease in leases]
        with self._writes:
            if self._abandoned.is_set():  # claimed while a stop gave up on this thread: straight back
                self._hand_back(jobs)
                return True
            with self._live_lock:
                self._live.update((lease.id, lease) for lease in leases)
            self._jobs = jobs
            self.current_request = leases[0].id
        try:
            self.report()
            with request_id_context(leases[0].id):
                self._start(jobs)
                runnable = [job for job in jobs if job.live]
                if runnable:
                    self._run_jobs(runnable)
        except _Interrupted:
            pass
        except Exception:
            self._fail_live(jobs, "generation")
        finally:
            in_hand = [job for job in jobs if not job.staged]  # the output stage answers the others
            with self._writes:
                if not self._abandoned.is_set():
                    self._hand_back([job for job in in_hand if job.live])
            self._jobs = []
            with self._live_lock:
                for job in in_hand:
                    self._live.pop(job.id, None)
            self.current_request = None
            self.requests_done += len(in_hand)
            self.report()
        if not pipelined:
            self._outputs.drain()
        return True

    def _start(self, jobs: list[_Job]) -> None:
        for job in jobs:
            lease = job.lease
            if self.metrics is not None:
                self.metrics.observe_started(lease)
            attempt = f" (attempt {lease.attempts})" if lease.attempts > 1 else ""
            self._log(job, f"Request started{attempt} on worker {self.worker_id}.")
            try:
                params = run_params(lease.app_id, lease.input, self.native_size)
                fields = image_fields(params)
                if fields:
                    job.images = {
                        name: read_image_input(getattr(params, name), files=self.files, field=name) for name in fields
                    }
                job.params = params
            except ValidationError as error:  # stored by an older release that checked less
                self._answer(job, outcomes.invalid_input(error))
            except InvalidInputError as error:  # an input image that is gone (expired) or unreadable
                self._answer(job, outcomes.rejected_input(error))

    def _hand_back(self, jobs: list[_Job]) -> None:
        for job in jobs:
            try:
                outcome = self.manager.release(job.lease)
            except Exception:
                logger.warning("could not hand %s back; its lease runs out instead", job.id, exc_info=True)
                continue
            if outcome is ReleaseOutcome.REQUEUED:
                logger.warning("%s goes back to the queue, unfinished", job.id)

    def _run_jobs(self, jobs: list[_Job]) -> None:
        batch = [job.params for job in jobs if job.params is not None]
        assert len(batch) == len(jobs), "only started jobs run"
        checkpoint = batch[0].model_name  # the batch key makes it every request's
        engine = self._engine_for(checkpoint, jobs)
        if engine is None:
            return  # it could not be loaded: the jobs are answered
        profile = profile_of(self.model_name)
        loaded = (
            f"loaded in {self.load_seconds or 0:.1f} s at startup"
            if checkpoint is None
            else f"a checkpoint under model {self.model_name!r}"
        )
        for job, params in zip(jobs, batch, strict=True):
            self._log(
                job,
                f"{self._label(checkpoint).capitalize()} on {engine.device} "
                f"({str(engine.dtype).removeprefix('torch.')}), {loaded}.",
            )
            batched = f", batched with {len(jobs) - 1} other request(s)" if len(jobs) > 1 else ""
            size = f"{params.width}x{params.height}" if params.width and params.height else "the input's size"
            seeds = (
                f"{params.num_images} images, seeds {params.fixed_seed}-{params.fixed_seed + params.num_images - 1}"
                if params.num_images > 1
                else f"seed {params.seed}"
            )
            self._log(
                job,
                f"Generating {endpoint_of(job.lease.app_id).title.lower()}: {size}, {params.num_inference_steps} "
                f"steps, guidance {params.guidance_scale:g}, {seeds}{batched}.",
            )
            job.ignored_words = profile.ignored_words(params.prompt)
            if job.ignored_words:
                self._log(job, profile.ignored_words_line(job.ignored_words), "WARN")

        sized = jobs[0].images is None  # with image inputs the size is the input's, known later
        decode_seconds = self._decode_estimate(batch) if sized else None
        estimate = _Estimate(self.clock.monotonic(), decode_seconds=decode_seconds, clock=self.clock.monotonic)

        def on_step(step: int, total: int) -> None:
            forecast = estimate.after(step, total)
            for job in jobs:
                if job.live:
                    self._log(job, f"Denoising step {step}/{total}", echo=False)
                    if forecast:
                        self._log(job, forecast)
                    if step == total:
                        count = job.params.num_images if job.params is not None else 1
                        self._log(job, "Decoding the transparent image." if count == 1 else f"Decoding {count} images.")

        last_check = [float("-inf")]

        def should_cancel() -> bool:
            if self._interrupting.is_set():
                return True
            self._drop_lost(jobs)
            due = self.clock.monotonic() - last_check[0] >= CANCEL_CHECK_SECONDS
            if self._cancel_hint.is_set() or due:
                self._cancel_hint.clear()
                last_check[0] = self.clock.monotonic()
                try:
                    cancelled = self.manager.cancel_requested([job.lease for job in jobs if job.live])
                except Exception:  # the store is away for a moment: ask again at the next step
                    logger.warning("could not read cancel requests", exc_info=True)
                    cancelled = set()
                for job in jobs:
                    if job.id in cancelled:
                        # The others in the batch go on; this one is answered now and its image dropped.
                        self._log(job, "Cancelled between denoising steps.", "WARN")
                        self._answer(job, outcomes.cancelled())
            return not any(job.live for job in jobs)

        partials = PartialImages(
            [job.lease for job in jobs],
            batch,
            files=self.files,
            base_url=self.base_url,
            log=lambda lease, line: self._log(next(job for job in jobs if job.lease is lease), line, echo=False),
            live=lambda lease: any(job.lease is lease and job.live for job in jobs),
            now=self.clock.time,
        )
        started = time.perf_counter()
        try:
            if jobs[0].images is not None:  # requests with image inputs run alone (see schemas.batch_key)
                method: Any = engine.generate_from_images
                extra = {"on_partial": partials} if partials.wanted and takes_partials(method) else {}
                results = [method(batch[0], jobs[0].images, on_step=on_step, should_cancel=should_cancel, **extra)]
            else:
                text_batch = [params for params in batch if isinstance(params, GenerationParams)]
                method = engine.generate_batch
                extra = {"on_partial": partials} if partials.wanted and takes_partials(method) else {}
                results = method(text_batch, on_step=on_step, should_cancel=should_cancel, **extra)
        except GenerationCancelled:
            if any(job.live for job in jobs):  # not everyone was cancelled: the worker is stopping
                raise _Interrupted() from None
            return
        except LayerDiffuseError as error:
            # An input the engine refuses by field (a mask that marks nothing) is answered as the
            # API answers invalid input: fal's 422 with a ``detail`` list that names the field.
            answer = outcomes.rejected_input(error) if isinstance(error, InvalidInputError) and error.field else None
            for job in jobs:
                if job.live:
                    self._answer(job, answer or outcomes.failed(error))
            return
        inference_time = time.perf_counter() - started
        self._learn_decode_pace(results)
        finishing = [(job, result) for job, result in zip(jobs, results, strict=True) if job.live]
        if not finishing:  # all cancelled or lost during the run: already answered
            return
        for job, _ in finishing:
            job.staged = True
        with self._live_lock:
            self._staged.extend(job for job, _ in finishing)
        self._outputs.submit(lambda: self._finish(finishing, inference_time))

    def _finish(self, finishing: list[tuple[_Job, GenerationResult]], inference_time: float) -> None:
        """On the output stage: encode and store each request's images and answer it, while the
        heartbeat still renews its lease. Once a stop interrupts, what is not answered goes back to
        the queue, as a batch interrupted between steps does."""
        jobs = [job for job, _ in finishing]
        try:
            with request_id_context(jobs[0].id):
                for job, result in finishing:
                    if self._interrupting.is_set():
                        raise _Interrupted()
                    self._drop_lost([job])
                    if not job.live:  # lost its lease while it waited
                        continue
                    if self.metrics is not None:
                        self.metrics.observe_generation(inference_time, result.timings)
                    self._answer(job, self._output(job, result, inference_time))
        except _Interrupted:
            pass
        except Exception:
            self._fail_live(jobs, "finishing")
        finally:
            with self._writes:
                if not self._abandoned.is_set():
                    self._hand_back([job for job in jobs if job.live])
            with self._live_lock:
                for job in jobs:
                    self._live.pop(job.id, None)
                self._staged = [job for job in self._staged if all(job is not done for done in jobs)]
            self.requests_done += len(jobs)
            self.report()

    def _fail_live(self, jobs: list[_Job], stage: str) -> None:
        """Called from an ``except`` block: the traceback goes to the log, and each request still
        live gets fal's generic internal error, which says nothing of the code behind it."""
        logger.exception("%s failed for %s", stage, ", ".join(job.id for job in jobs))
        for job in jobs:
            if job.live:
                self._answer(job, outcomes.internal_error())

    def _label(self, checkpoint: str | None) -> str:
        return f"model {self.model_name!r}" if checkpoint is None else f"checkpoint {checkpoint!r}"

    def _engine_for(self, checkpoint: str | None, jobs: list[_Job]) -> Engine | None:
        """The engine of ``checkpoint`` (None: the model's own), loaded now if it is not held, the least
        recently used ones unloaded first to make room; None when it cannot be loaded (the jobs are
        answered with why). Each job's log says when a load happens and how long it took."""
        if self.engine is not None and self.models.take(self._engine_name) is not self.engine:
            self.models.put(self._engine_name, self.engine)  # an engine given to the worker directly
        held = self.models.take(checkpoint)
        if held is not None:
            self.engine, self._engine_name = held, checkpoint
            return held
        label = self._label(checkpoint)
        if checkpoint is not None and self._load_checkpoint is None:
            # Refused before anything is unloaded: the model this worker holds stays loaded.
            refused = InvalidInputError(f"this worker loads no checkpoints, so not {checkpoint!r}", field="model_name")
            for job in jobs:
                self._answer(job, outcomes.rejected_input(refused))
            return None
        for job in jobs:
            self._log(job, f"Loading {label} (this worker does not hold it).")
        unloaded = self.models.make_room()
        if unloaded:
            if self._engine_name in unloaded:
                self.engine = None  # the last reference: its memory can go
            free_device_memory()
        started = time.perf_counter()
        try:
            load_checkpoint = self._load_checkpoint  # not None with a checkpoint: refused above
            if checkpoint is None or load_checkpoint is None:
                engine = self._load_engine()
            else:
                engine = load_checkpoint(checkpoint)
        except LayerDiffuseError as error:
            logger.warning("could not load %s: %s", label, error)
            refusal = outcomes.rejected_input(error) if isinstance(error, InvalidInputError) else outcomes.failed(error)
            for job in jobs:
                self._answer(job, refusal)
            return None
        seconds = time.perf_counter() - started
        self.models.put(checkpoint, engine)
        self.engine, self._engine_name = engine, checkpoint
        room = f" ({', '.join(self._label(name) for name in unloaded)} unloaded to make room)" if unloaded else ""
        for job in jobs:
            self._log(job, f"Loaded {label} in {seconds:.1f} s{room}.")
        return engine

    def _decode_estimate(self, batch: Sequence[LayerDiffusionInput]) -> float | None:
        """What decoding this batch after its last step should take, at the pace of the last run (if sized)."""
        if self._decode_pace is None:
            return None
        side = self.native_size
        pixels = sum(params.num_images * (params.width or side) * (params.height or side) for params in batch)
        return self._decode_pace * pixels

    def _learn_decode_pace(self, results: Sequence[GenerationResult]) -> None:
        """Seconds per output pixel of what follows the last step (decoding, safety check), for the next estimate."""
        pixels = sum(image.width * image.height for result in results for image in result.images)
        if results and pixels:
            timings = results[0].timings  # the batch's, shared by its requests
            self._decode_pace = (timings.get("decoding", 0.0) + timings.get("safety_check", 0.0)) / pixels

    def _drop_lost(self, jobs: list[_Job]) -> None:
        """Jobs whose lease a heartbeat after their claim no longer held were taken over: stop working on them."""
        renewed_at, held = self._held
        for job in jobs:
            if job.live and job.claimed_at < renewed_at and job.id not in held:
                job.answered = True
                logger.warning("lost the lease of %s (taken over by another worker); dropping it", job.id)

    def _output(self, job: _Job, result: GenerationResult, inference_time: float) -> Completion:
        timings = result.timings
        self._log(
            job,
            f"Decoded in {timings.get('decoding', 0):.2f} s (VAE {timings.get('vae_decode', 0):.2f} s, "
            f"transparency {timings.get('transparent_decode', 0):.2f} s).",
        )
        if "safety_check" in timings and result.has_nsfw_concepts is not None:
            flagged, count = sum(result.has_nsfw_concepts), len(result.has_nsfw_concepts)
            if not flagged:
                verdict = "nothing flagged"
            elif count == 1:
                verdict = "flagged, image made transparent"
            else:
                verdict = f"{flagged} of {count} images flagged and made transparent"
            self._log(job, f"Safety check: {verdict} ({timings['safety_check']:.2f} s).")
        transparency = self._check_transparency(job, result)
        for image in result.images:
            image.png(self.png_compression)  # encoded before the write lock, which a stop waits for only briefly
        if self._cancelled_meanwhile(job):
            self._log(job, "Cancelled while its images were encoded.", "WARN")
            return outcomes.cancelled()
        with self._writes:
            if self._abandoned.is_set():
                raise _Interrupted()
            stored = store_images(
                result.images,
                files=self.files,
                base_url=self.base_url,
                key_id=job.lease.key_id,
                request_id=job.id,
                compression=self.png_compression,
            )
            job.outputs.extend(stored)
        for item in stored:
            self._log(job, f"Uploaded {item.image.file_name} ({item.image.file_size} bytes).")
        output = build_output(
            [item.image for item in stored],
            result.images[0].seed,
            result.has_nsfw_concepts,
            transparency,
            job.ignored_words,
        )
        metrics = {"inference_time": round(inference_time, 4)}
        if result.batch_size > 1:
            metrics["batch_size"] = result.batch_size
        return outcomes.succeeded(
            output.model_dump(mode="json", exclude_none=True),
            metrics=metrics,
            file_ids=[item.file_id for item in stored],
        )

    def _cancelled_meanwhile(self, job: _Job) -> bool:
        """Whether a cancel came for ``job`` after its last denoising step (its files are not stored then)."""
        try:
            return job.id in self.manager.cancel_requested([job.lease])
        except Exception:  # the store is away for a moment: the completion is fenced all the same
            logger.warning("could not read the cancel request of %s", job.id, exc_info=True)
            return False

    def _check_transparency(self, job: _Job, result: GenerationResult) -> list[bool]:
        """Per image, whether its alpha carries anything (:func:`..images.has_transparency`), with a
        warning on the request's log for each transparent-layer image that came out without: a model
        that lost its transparency shows at once. Images the safety checker blanked are not warned of."""
        verdicts = [has_transparency(image.rgba) for image in result.images]
        if not endpoint_of(job.lease.app_id).transparent:
            return verdicts  # an opaque image is what the blended and background endpoints make
        count = len(result.images)
        for index, (image, transparent) in enumerate(zip(result.images, verdicts, strict=True)):
            if not transparent and not image.nsfw:
                which = f"Image {index + 1} of {count}" if count > 1 else "The image"
                self._log(
                    job,
                    f"{which} (seed {image.seed}) has no transparency: its alpha is the same nearly everywhere; "
                    "the model may have lost its transparent decoding.",
                    "WARN",
                )
        return verdicts

    def _answer(self, job: _Job, completion: Completion) -> None:
        with self._writes:
            if not self._abandoned.is_set():
                self._complete(job, completion)

    def _complete(self, job: _Job, completion: Completion) -> None:
        job.answered = True
        if completion.ok:
            self._log(job, "Request completed.")
        elif completion.error_type != "client_cancelled":
            self._log(job, f"Request failed: {completion.error}", "ERROR")
        if not self.manager.complete(job.lease, completion):
            # Completed meanwhile (a cancel, or another worker that took the request over): its
            # outcome stands, ours is dropped with the files it made.
            discard(job.outputs, files=self.files)
            logger.warning("%s was no longer ours to complete; its result was discarded", job.id)

    def _log(self, job: _Job, message: str, level: str = "INFO", *, echo: bool = True) -> None:
        """A line of the request's own log (what clients see), also written to the process log.

        Best effort: a line the store could not take is not worth the request. Only a refusal
        (the lease is no longer ours) stops the work on it.
        """
        if self._abandoned.is_set():
            return  # handed back: not even the process log hears of it (the interpreter may be exiting)
        python_level = logging.getLevelNamesMapping().get("WARNING" if level == "WARN" else level, logging.INFO)
        logger.log(python_level if echo else logging.DEBUG, message, extra={"request_id": job.id})
        try:
            with self._writes:
                if self._abandoned.is_set():
                    return
                held = self.manager.log(job.lease, message, level)
        except Exception:
            logger.warning("could not store a log line of %s", job.id, exc_info=True)
            return
        if not held and job.live:
            job.answered = True  # the lease is gone: nothing we do for it counts any more
            logger.warning("lost the lease of %s; dropping it", job.id)
