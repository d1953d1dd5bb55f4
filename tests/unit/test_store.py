"""The SQL store's queue semantics on a real SQLite file."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from layerdiffuse_server.store import CancelOutcome, NewRequest, RequestState, Store, open_store
from layerdiffuse_server.store.contracts import Completion, Priority
from layerdiffuse_server.store.database import StoreError


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(f"sqlite:///{tmp_path / 'store.db'}")


def submit(store: Store, priority: Priority = Priority.normal, **fields: object) -> str:
    request = NewRequest(id=str(uuid.uuid4()), app_id="a/b", key_id="k", input={}, priority=priority, **fields)
    return store.requests.create(request, time.time()).id


def test_claims_follow_priority_then_arrival(store: Store) -> None:
    first, low, second = submit(store), submit(store, Priority.low), submit(store)
    order = [store.requests.claim_next("w", time.time()).id for _ in range(3)]  # type: ignore[union-attr]
    assert order == [first, second, low]
    assert store.requests.claim_next("w", time.time()) is None


def test_concurrent_workers_never_claim_the_same_request(store: Store) -> None:
    ids = {submit(store) for _ in range(40)}
    claimed: list[str] = []

    def work() -> None:
        while (record := store.requests.claim_next(threading.current_thread().name, time.time())) is not None:
            claimed.append(record.id)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids)


def test_completion_is_recorded_once_and_queues_its_webhook(store: Store) -> None:
    request_id = submit(store, webhook_url="https://example.com/hook")
    store.requests.claim_next("w", time.time())
    assert store.requests.complete(request_id, Completion(200, {"seed": 1}), time.time())
    assert not store.requests.complete(request_id, Completion(500, {"detail": "late"}), time.time())
    record = store.requests.get(request_id)
    assert record is not None and record.state is RequestState.COMPLETED and record.response == {"seed": 1}
    due = store.webhooks.claim_due(time.time(), lease_seconds=60, limit=10)
    assert [delivery.request_id for delivery in due] == [request_id]
    assert store.webhooks.claim_due(time.time(), lease_seconds=60, limit=10) == []  # leased
    assert [d.request_id for d in store.webhooks.claim_due(time.time() + 61, 60, 10)] == [request_id]


def test_cancel_outcomes(store: Store) -> None:
    queued, running = submit(store), submit(store)
    store.requests.claim_next("w", time.time())  # claims `queued` (first in line)
    assert store.requests.request_cancel(running, time.time()) is CancelOutcome.CANCELLED
    assert store.requests.request_cancel(queued, time.time()) is CancelOutcome.REQUESTED
    assert store.requests.is_cancel_requested(queued)
    assert store.requests.request_cancel(running, time.time()) is CancelOutcome.ALREADY_COMPLETED
    assert store.requests.request_cancel("missing", time.time()) is CancelOutcome.NOT_FOUND
    assert store.requests.get(running).error_type == "client_cancelled"  # type: ignore[union-attr]


def test_interrupted_requests_run_again_until_the_attempt_limit(store: Store) -> None:
    request_id = submit(store)
    store.requests.claim_next("w", time.time())
    assert store.requests.requeue_interrupted(max_attempts=2, now=time.time()) == ([request_id], [])
    store.requests.claim_next("w", time.time())  # second attempt, interrupted again
    assert store.requests.requeue_interrupted(max_attempts=2, now=time.time()) == ([], [request_id])
    record = store.requests.get(request_id)
    assert record is not None and record.status_code == 500 and record.error_type == "runner_disconnected"


def test_start_deadlines_expire_only_queued_requests(store: Store) -> None:
    late = submit(store, start_deadline=time.time() - 1)
    fine = submit(store, start_deadline=time.time() + 60)
    assert store.requests.claim_next("w", time.time()).id == fine  # type: ignore[union-attr]
    assert store.requests.expire_start_deadlines(time.time()) == [late]
    assert store.requests.get(late).status_code == 504  # type: ignore[union-attr]


def test_logs_and_retention(store: Store) -> None:
    request_id = submit(store)
    for index in range(3):
        store.requests.append_log(request_id, f"line {index}", "INFO", time.time())
    logs = store.requests.logs(request_id)
    assert [entry.message for entry in store.requests.logs(request_id, logs[0].seq)] == ["line 1", "line 2"]
    assert store.requests.delete_completed_before(time.time() + 10) == []  # still queued: kept
    store.requests.request_cancel(request_id, time.time())
    assert store.requests.delete_completed_before(time.time() + 10) == [request_id]
    assert store.requests.get(request_id) is None and store.requests.logs(request_id) == []


def test_a_database_from_another_schema_version_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    open_store(url).close()
    with create_engine(url).begin() as connection:
        connection.execute(text("UPDATE schema_info SET version = 99"))
    with pytest.raises(StoreError, match="schema version 99"):
        open_store(url)


def test_worker_reports_replace_their_row_and_silent_workers_are_forgotten(store: Store) -> None:
    from layerdiffuse_server.store import WorkerState, WorkerStatus

    def status(worker_id: str, state: WorkerState, heartbeat_at: float, done: int = 0) -> WorkerStatus:
        return WorkerStatus(worker_id, "host", 1, "tiny", "cpu", state, None, done, None, 100.0, heartbeat_at)

    store.workers.report(status("a", WorkerState.LOADING, 100.0))
    store.workers.report(status("a", WorkerState.READY, 110.0, done=3))
    store.workers.report(status("b", WorkerState.BUSY, 500.0))
    assert [(w.id, w.state, w.requests_done) for w in store.workers.all()] == [
        ("a", WorkerState.READY, 3),
        ("b", WorkerState.BUSY, 0),
    ]
    assert store.workers.forget_silent_since(200.0) == 1
    assert [worker.id for worker in store.workers.all()] == ["b"]


def test_running_and_recent_outcomes(store: Store) -> None:
    first, second = submit(store), submit(store)
    store.requests.claim_next("w1", 10.0)
    assert [(record.id, record.worker_id) for record in store.requests.running()] == [(first, "w1")]
    store.requests.complete(first, Completion(200, {}), 20.0)
    store.requests.request_cancel(second, 30.0)
    assert store.requests.running() == []
    assert store.requests.completed_since(15.0) == {(200, None): 1, (499, "client_cancelled"): 1}
    assert store.requests.completed_since(25.0) == {(499, "client_cancelled"): 1}


def test_claiming_named_requests_takes_only_those_still_queued(store: Store) -> None:
    first, second, third = submit(store), submit(store, Priority.low), submit(store)
    assert [record.id for record in store.requests.queued(time.time(), 10)] == [first, third, second]
    store.requests.request_cancel(third, time.time())
    claimed = store.requests.claim([second, third, first], "w1", time.time())
    assert [(record.id, record.state, record.worker_id) for record in claimed] == [
        (second, RequestState.RUNNING, "w1"),
        (first, RequestState.RUNNING, "w1"),
    ]
    assert store.requests.claim([first], "w2", time.time()) == []
    assert store.requests.queued(time.time(), 10) == []
