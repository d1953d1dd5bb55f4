"""A worker's graceful stop is bounded however slow a denoising step is: after the grace, a batch
stuck inside a step is handed back without waiting for it, keeps its attempts, and the thread left
in the engine writes nothing more.

The step, the grace and the interrupt window all run on a fake clock, so the test says exactly
how far into the step the stop comes and ends, without waiting through any of it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from layerdiffuse_server.files import open_blob_store
from layerdiffuse_server.lifecycle import RequestManager, Submission
from layerdiffuse_server.store import RequestState, Store
from layerdiffuse_server.store.contracts import WorkerState
from layerdiffuse_server.testing import FakeClock, FakeEngine
from layerdiffuse_server.worker import GenerationWorker
from layerdiffuse_server.worker.generation_worker import INTERRUPT_WAIT_SECONDS

STEP_SECONDS = 4.0
GRACE = 0.5


def test_a_stop_does_not_wait_for_a_slow_step(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    manager = RequestManager(store, max_queue_length=10, max_attempts=2, lease_seconds=30, clock=clock)
    worker = GenerationWorker(
        manager,
        open_blob_store((tmp_path / "files").as_uri()),
        lambda: FakeEngine(step_seconds=STEP_SECONDS, clock=clock),
        base_url="http://x",
        model_name="fake",
        grace_seconds=GRACE,
    )
    request_id = manager.submit(Submission(key_id="k", app_id="a/b", input={"num_inference_steps": 3})).id
    worker.start()
    deadline = time.monotonic() + 10
    while worker.current_request != request_id:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.01)
    clock.wait_for_sleepers(2)  # the heartbeat between beats, the worker inside its first step

    stopping = threading.Thread(target=worker.stop)
    stopping.start()
    clock.wait_for_sleepers(3)  # the stop waits out the grace
    clock.advance(GRACE)
    clock.wait_for_sleepers(3)  # the grace is over: the batch is interrupted, and gets a last moment
    assert stopping.is_alive()
    clock.advance(INTERRUPT_WAIT_SECONDS)  # the step has STEP_SECONDS - 1.5 s to go: the stop ends now
    stopping.join(10)
    assert not stopping.is_alive(), "the stop waited for the step"

    record = store.requests.get(request_id)
    assert record is not None and record.state is RequestState.QUEUED and record.lost_runs == 0
    lines = [entry.message for entry in store.requests.logs(request_id)]
    clock.advance(STEP_SECONDS)  # the step the thread was in ends: it must write nothing
    left_in_the_engine = worker._thread
    assert left_in_the_engine is not None
    left_in_the_engine.join(10)
    assert not left_in_the_engine.is_alive()
    assert [entry.message for entry in store.requests.logs(request_id)] == lines
    assert store.requests.get(request_id) == record and not store.files.for_requests([request_id])
    assert worker.stopped and [row.state for row in store.workers.all()] == [WorkerState.STOPPED]
