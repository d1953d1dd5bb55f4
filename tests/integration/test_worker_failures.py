"""The worker when the store fails under it: a request it cannot complete is not kept leased
forever, a log line it cannot write costs nothing, and a request is never left behind.

Leases run on a fake clock: one runs out when the test moves the clock past its end, not after a
real wait that a busy machine could stretch past a heartbeat.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from layerdiffuse_server.errors import StoreError
from layerdiffuse_server.files import open_blob_store
from layerdiffuse_server.lifecycle import RequestManager, Submission
from layerdiffuse_server.store import RequestState, Store
from layerdiffuse_server.testing import FakeClock, FakeEngine
from layerdiffuse_server.worker import GenerationWorker

LEASE = 30.0  # seconds of the fake clock
SMALL = {"width": 64, "height": 64, "num_inference_steps": 3}


class Flaky:
    """A store method that fails the first ``times`` calls whose message matches."""

    def __init__(self, method: Any, *, times: int = 1, when: str = "") -> None:
        self.method, self.left, self.when = method, times, when

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.left and self.when in repr(args):
            self.left -= 1
            raise StoreError("lost the connection to the database (simulated)")
        return self.method(*args, **kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def worker(store: Store, tmp_path: Path, clock: FakeClock) -> Iterator[GenerationWorker]:
    manager = RequestManager(store, max_queue_length=10, max_attempts=2, lease_seconds=LEASE, clock=clock)
    started = GenerationWorker(
        manager, open_blob_store((tmp_path / "files").as_uri()), FakeEngine, base_url="http://x", model_name="fake"
    )
    started.start()
    wait_for(lambda: started.ready, 10)
    yield started
    started.stop(1)  # needs no time to pass: the idle worker wakes to the stop at once


def wait_for(condition: Any, seconds: float = 15) -> None:
    """Real time, for the worker's threads to get on with it (no lease or deadline depends on it)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def test_a_completion_the_store_refused_is_taken_over(
    store: Store, worker: GenerationWorker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store.requests, "complete", Flaky(store.requests.complete))
    request_id = worker.manager.submit(Submission(key_id="k", app_id="a/b", input=SMALL)).id
    worker.wake()
    wait_for(lambda: worker.requests_done == 1)  # the run ended; the store refused its completion
    record = store.requests.get(request_id)
    assert record is not None and record.state is RequestState.RUNNING
    assert worker.manager.reclaim_expired().requeued == []  # what housekeeping does: the lease still holds

    clock.advance(LEASE + 1)  # no heartbeat renewed it (the worker let it go): the lease has run out
    assert worker.manager.reclaim_expired().requeued == [request_id]
    worker.wake()
    wait_for(lambda: store.requests.get(request_id).state is RequestState.COMPLETED)  # type: ignore[union-attr]
    record = store.requests.get(request_id)
    assert record is not None and record.status_code == 200 and record.attempts == 2
    ready = [file for file in store.files.for_requests([request_id]) if file.ready]
    assert len(ready) == 1


def test_a_log_line_the_store_refused_costs_nothing(
    store: Store, worker: GenerationWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store.requests, "append_log", Flaky(store.requests.append_log, times=2, when="Denoising"))
    request_id = worker.manager.submit(Submission(key_id="k", app_id="a/b", input=SMALL)).id
    worker.wake()
    wait_for(lambda: store.requests.get(request_id).state is RequestState.COMPLETED)  # type: ignore[union-attr]
    record = store.requests.get(request_id)
    assert record is not None and record.status_code == 200 and record.attempts == 1
