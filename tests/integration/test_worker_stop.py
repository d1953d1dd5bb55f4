"""A worker's graceful stop is bounded on wall time however slow a denoising step is: after the
grace, a batch stuck inside a step is handed back without waiting for it, keeps its attempts, and
the thread left in the engine writes nothing more."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerdiffuse_server.files import open_blob_store
from layerdiffuse_server.lifecycle import RequestManager, Submission
from layerdiffuse_server.store import RequestState, Store, open_store
from layerdiffuse_server.store.contracts import WorkerState
from layerdiffuse_server.testing import FakeEngine
from layerdiffuse_server.worker import GenerationWorker
from layerdiffuse_server.worker.generation_worker import INTERRUPT_WAIT_SECONDS

STEP_SECONDS = 4.0
GRACE = 0.5


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield opened
    opened.close()


def test_a_stop_does_not_wait_for_a_slow_step(store: Store, tmp_path: Path) -> None:
    manager = RequestManager(store, max_queue_length=10, max_attempts=2, lease_seconds=30)
    worker = GenerationWorker(
        manager,
        open_blob_store((tmp_path / "files").as_uri()),
        lambda: FakeEngine(step_seconds=STEP_SECONDS),
        base_url="http://x",
        model_name="fake",
        grace_seconds=GRACE,
    )
    request_id = manager.submit(Submission(key_id="k", app_id="a/b", input={"num_inference_steps": 3})).id
    worker.start()
    deadline = time.monotonic() + 10
    while worker.current_request != request_id:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.02)
    time.sleep(0.3)  # inside the first step

    started = time.monotonic()
    worker.stop()
    seconds = time.monotonic() - started
    assert seconds < GRACE + INTERRUPT_WAIT_SECONDS + 1, f"the stop took {seconds:.1f} s"

    record = store.requests.get(request_id)
    assert record is not None and record.state is RequestState.QUEUED and record.lost_runs == 0
    lines = [entry.message for entry in store.requests.logs(request_id)]
    time.sleep(STEP_SECONDS)  # the step the thread was in ends: it must write nothing
    assert [entry.message for entry in store.requests.logs(request_id)] == lines
    assert store.requests.get(request_id) == record and not store.files.for_requests([request_id])
    assert worker.stopped and [row.state for row in store.workers.all()] == [WorkerState.STOPPED]
