"""The worker's output stage: a batch's images are encoded and stored, and its requests answered, on
a thread of their own while the worker claims the next batch; answers, cancels and stops mean what
they meant when that all happened on the worker's own thread.

The stage is held busy by work of the test's own (a batch handed over waits behind it), which says
exactly when a request sits between its last denoising step and its answer.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layerdiffuse_server.files import open_blob_store
from layerdiffuse_server.lifecycle import RequestManager, Submission
from layerdiffuse_server.store import RequestState, Store
from layerdiffuse_server.testing import FakeEngine
from layerdiffuse_server.worker import GenerationWorker

SMALL = {"prompt": "a glass bottle", "width": 64, "height": 64, "num_inference_steps": 2}


@pytest.fixture
def manager(store: Store) -> RequestManager:
    return RequestManager(store, max_queue_length=50, max_attempts=2, lease_seconds=0.6)


def _worker(manager: RequestManager, tmp_path: Path, **options: object) -> GenerationWorker:
    engine = FakeEngine()
    worker = GenerationWorker(
        manager,
        open_blob_store((tmp_path / "files").as_uri()),
        lambda: engine,
        base_url="http://x",
        model_name="fake",
        **options,  # type: ignore[arg-type]
    )
    worker.engine = engine
    return worker


def _submit(manager: RequestManager, seed: int) -> str:
    return manager.submit(Submission(key_id="k", app_id="fal-ai/layer-diffusion", input=SMALL | {"seed": seed})).id


@pytest.fixture
def held() -> Iterator[threading.Event]:
    """Released by the test (and at its end, whatever happens) to let the stage go on."""
    release = threading.Event()
    yield release
    release.set()


def _hold(worker: GenerationWorker, release: threading.Event) -> threading.Event:
    """Keep the worker's output stage busy until ``release``; the returned event says it is busy."""
    busy = threading.Event()

    def wait() -> None:
        busy.set()
        release.wait(30)

    worker._outputs.submit(wait)
    assert busy.wait(10)
    return busy


def _start_until_staged(worker: GenerationWorker, release: threading.Event) -> None:
    """Start the worker with its stage held, and wait until its request waits on the stage."""
    worker.start()
    _hold(worker, release)
    deadline = time.monotonic() + 10
    while not worker._staged:
        assert time.monotonic() < deadline, "the request never reached the stage"
        time.sleep(0.01)


def _wait_completed(store: Store, request_id: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while (record := store.requests.get(request_id)) is None or record.state is not RequestState.COMPLETED:
        assert time.monotonic() < deadline, f"{request_id} was not answered"
        time.sleep(0.02)


def test_a_request_is_answered_once_its_files_are_stored(manager: RequestManager, store: Store, tmp_path: Path) -> None:
    worker = _worker(manager, tmp_path, pipeline_outputs=True)
    ids = [_submit(manager, seed) for seed in (1, 2, 3)]
    worker.start()
    try:
        for request_id in ids:
            _wait_completed(store, request_id)
    finally:
        worker.stop(5)
    for request_id in ids:
        record = store.requests.get(request_id)
        assert record is not None and record.error is None
        (stored,) = store.files.for_requests([request_id])
        pixels = np.asarray(Image.open(io.BytesIO(worker.files.read(stored) or b"")))
        assert pixels.shape == (64, 64, 4)
        messages = [entry.message for entry in store.requests.logs(request_id)]
        assert any(message.startswith("Uploaded layer-diffusion-") for message in messages)
        assert messages[-1] == "Request completed."
    assert worker.requests_done == 3


def test_the_next_batch_denoises_while_the_last_one_waits_for_its_files(
    manager: RequestManager, store: Store, tmp_path: Path, held: threading.Event
) -> None:
    worker = _worker(manager, tmp_path, max_batch_size=1)
    first, second = _submit(manager, 1), _submit(manager, 2)
    _hold(worker, held)
    assert worker.run_once(pipelined=True)  # handed over, behind the test's work
    # The GPU is free: the second batch denoises meanwhile, and waits to be handed over (the stage
    # holds one batch besides the one it works on).
    running = threading.Thread(target=worker.run_once, kwargs={"pipelined": True})
    running.start()
    deadline = time.monotonic() + 10
    while len(worker._staged) < 2:
        assert time.monotonic() < deadline, "the second batch did not denoise"
        time.sleep(0.01)
    assert running.is_alive()  # bounded: a third batch would not be claimed yet
    for request_id in (first, second):
        record = store.requests.get(request_id)
        assert record is not None and record.state is RequestState.RUNNING
        assert not store.files.for_requests([request_id])
    held.set()
    running.join(10)
    worker._outputs.drain()
    for request_id in (first, second):
        _wait_completed(store, request_id)
        assert len(store.files.for_requests([request_id])) == 1


def test_a_lease_waiting_on_the_stage_is_still_renewed(
    manager: RequestManager, store: Store, tmp_path: Path, held: threading.Event
) -> None:
    worker = _worker(manager, tmp_path)
    request_id = _submit(manager, 4)
    _start_until_staged(worker, held)
    time.sleep(3 * manager.lease_seconds)  # several lease periods between its last step and its answer
    reclaimed = manager.reclaim_expired()
    assert request_id not in reclaimed.requeued + reclaimed.failed
    held.set()
    _wait_completed(store, request_id)
    worker.stop(5)
    record = store.requests.get(request_id)
    assert record is not None and record.error is None and record.lost_runs == 0


def test_a_cancel_after_the_last_step_stores_nothing(
    manager: RequestManager, store: Store, tmp_path: Path, held: threading.Event
) -> None:
    worker = _worker(manager, tmp_path)
    request_id = _submit(manager, 5)
    _hold(worker, held)
    assert worker.run_once(pipelined=True)
    manager.cancel(request_id)
    held.set()
    worker._outputs.drain()
    record = store.requests.get(request_id)
    assert record is not None and record.state is RequestState.COMPLETED and record.error_type == "client_cancelled"
    assert not store.files.for_requests([request_id])


def test_a_stop_waits_for_the_stage_within_its_grace(
    manager: RequestManager, store: Store, tmp_path: Path, held: threading.Event
) -> None:
    worker = _worker(manager, tmp_path, grace_seconds=10)
    request_id = _submit(manager, 6)
    _start_until_staged(worker, held)
    stopping = threading.Thread(target=worker.stop)
    stopping.start()
    time.sleep(0.3)
    assert stopping.is_alive()  # the files are not stored yet
    held.set()
    stopping.join(10)
    assert not stopping.is_alive()
    _wait_completed(store, request_id, seconds=1)
    assert len(store.files.for_requests([request_id])) == 1


def test_a_stop_past_its_grace_hands_the_waiting_request_back(
    manager: RequestManager, store: Store, tmp_path: Path, held: threading.Event
) -> None:
    worker = _worker(manager, tmp_path, grace_seconds=0.3)
    request_id = _submit(manager, 7)
    _start_until_staged(worker, held)
    worker.stop()  # the stage stays busy past the grace and the interrupt window
    record = store.requests.get(request_id)
    assert record is not None and record.state is RequestState.QUEUED and record.lost_runs == 0
    held.set()
    worker._outputs.drain()  # what the stage still does for it writes nothing
    assert store.requests.get(request_id) == record and not store.files.for_requests([request_id])
