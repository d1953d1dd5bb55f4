"""The request manager's rules that need no model: admission, who may see a request, and telling
dead neighbours from live ones."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from layerdiffuse_server.errors import ServiceUnavailableError
from layerdiffuse_server.lifecycle import RequestManager, Submission
from layerdiffuse_server.lifecycle.local_processes import process_scope
from layerdiffuse_server.store import RequestState, Store, WorkerState, WorkerStatus
from layerdiffuse_server.store.contracts import ApiKey


@pytest.fixture
def manager(store: Store) -> RequestManager:
    return RequestManager(store, max_queue_length=10, max_attempts=2, lease_seconds=30)


def worker_row(worker_id: str, pid: int, *, state: WorkerState = WorkerState.BUSY, **changes: object) -> WorkerStatus:
    values = {
        "id": worker_id, "host": "h", "pid": pid, "model": "tiny", "device": "cpu", "state": state,
        "current_request": None, "requests_done": 0, "error": None, "started_at": time.time(),
        "heartbeat_at": time.time(), "scope": process_scope(),
    } | changes  # fmt: skip
    return WorkerStatus(**values)  # type: ignore[arg-type]


def test_invalid_input_is_stored_as_its_422_outcome(manager: RequestManager) -> None:
    record = manager.submit(Submission(key_id="k", app_id="a/b", input={"num_inference_steps": "20"}))
    assert record.state is RequestState.COMPLETED and record.status_code == 422
    assert record.response["detail"][0]["loc"] == ["body", "num_inference_steps"]
    queued = manager.submit(Submission(key_id="k", app_id="a/b", input={"width": 128, "height": 64}))
    assert queued.state is RequestState.QUEUED and queued.batch_key == "128x64:20:dpmpp_2m_karras:8.0"


def test_requests_are_visible_to_their_key_and_admins_only(manager: RequestManager) -> None:
    record = manager.submit(Submission(key_id="mine", app_id="a/b", input={}))

    def key(key_id: str, admin: bool = False) -> ApiKey:
        return ApiKey(key_id, "n", admin, 0.0, None, "h")

    assert manager.visible_to(key("mine"), record.id) is not None
    assert manager.visible_to(key("theirs"), record.id) is None
    assert manager.visible_to(key("root", admin=True), record.id) is not None


def test_admission_refuses_when_every_live_worker_failed_to_load(manager: RequestManager, store: Store) -> None:
    store.workers.report(worker_row("broken", os.getpid(), state=WorkerState.FAILED, error="weights are corrupt"))
    with pytest.raises(ServiceUnavailableError, match="weights are corrupt"):
        manager.submit(Submission(key_id="k", app_id="a/b", input={}))
    store.workers.report(worker_row("fine", os.getpid(), state=WorkerState.LOADING))
    assert manager.submit(Submission(key_id="k", app_id="a/b", input={})).state is RequestState.QUEUED


@pytest.mark.skipif(process_scope() is None, reason="needs Linux's /proc")
def test_only_workers_known_dead_on_this_machine_lose_their_leases_early(manager: RequestManager, store: Store) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    rows = {
        "dead-here": worker_row("dead-here", dead_pid),
        "alive-here": worker_row("alive-here", os.getpid()),
        "dead-elsewhere": worker_row("dead-elsewhere", dead_pid, scope="another-machine:1"),
        "stopped-here": worker_row("stopped-here", dead_pid, state=WorkerState.STOPPED),
    }
    held = {}
    for worker_id, row in rows.items():
        store.workers.report(row)
        request = manager.submit(Submission(key_id="k", app_id="a/b", input={}))
        [lease] = manager.claim(worker_id, 1)
        assert lease.id == request.id
        held[worker_id] = request.id
    assert manager.expire_dead_neighbours() == [held["dead-here"]]
    assert manager.reclaim_expired().requeued == [held["dead-here"]]
