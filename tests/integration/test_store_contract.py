"""The store contract on every backend: a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from layerdiffuse_server.auth import ensure_first_key
from layerdiffuse_server.errors import QueueFullError
from layerdiffuse_server.lifecycle import outcomes
from layerdiffuse_server.store import CancelOutcome, NewRequest, Notice, NoticeKind, RequestState, Store, open_store
from layerdiffuse_server.store.contracts import Completion, FileRecord, Priority, ReleaseOutcome, RequestRecord

LEASE = 30.0


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


def submit(
    store: Store, priority: Priority = Priority.normal, *, key: str | None = "k", images: int = 1, **fields: object
) -> str:
    stored_input = {"num_images": images} if images != 1 else {}
    request = NewRequest(
        id=str(uuid.uuid4()), app_id="a/b", key_id="k", input=stored_input, priority=priority, batch_key=key, **fields
    )
    return store.requests.create(request, time.time()).id


def claim(store: Store, worker: str = "w", *, now: float | None = None, batch: int = 1) -> list[RequestRecord]:
    return store.requests.claim(worker, time.time() if now is None else now, lease_seconds=LEASE, max_batch=batch)


def test_claims_follow_priority_then_arrival(store: Store) -> None:
    first, low, second = submit(store), submit(store, Priority.low), submit(store)
    order = [claim(store)[0].id for _ in range(3)]
    assert order == [first, second, low]
    assert claim(store) == []


def test_concurrent_workers_never_claim_the_same_request(store: Store) -> None:
    ids = {submit(store) for _ in range(40)}
    claimed: list[str] = []

    def work() -> None:
        while leases := claim(store, threading.current_thread().name, batch=3):
            claimed.extend(lease.id for lease in leases)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids)


def test_a_batch_takes_the_head_and_compatible_requests_of_its_priority(store: Store) -> None:
    head = submit(store, key="64x64")
    other_size = submit(store, key="128x128")
    low = submit(store, Priority.low, key="64x64")
    same = [submit(store, key="64x64") for _ in range(3)]
    never = submit(store, key=None)
    leases = claim(store, batch=3)
    assert [lease.id for lease in leases] == [head, *same[:2]]
    assert {lease.batch_size for lease in leases} == {3}
    assert len({lease.lease_token for lease in leases}) == 1 and leases[0].lease_token
    assert [lease.id for lease in claim(store, batch=3)] == [other_size]
    assert [lease.id for lease in claim(store, batch=3)] == [same[2]]
    assert [lease.id for lease in claim(store, batch=3)] == [never]
    assert [lease.id for lease in claim(store, batch=3)] == [low]


def test_a_batch_counts_images_not_requests(store: Store) -> None:
    three, one, two, last = (submit(store, key="64x64", images=count) for count in (3, 1, 2, 1))
    assert [lease.id for lease in claim(store, batch=4)] == [three, one]  # 4 images: full
    assert [lease.id for lease in claim(store, batch=4)] == [two, last]
    big, small = submit(store, key="64x64", images=6), submit(store, key="64x64")
    assert [lease.id for lease in claim(store, batch=4)] == [big]  # more than a batch: alone
    assert [lease.id for lease in claim(store, batch=4)] == [small]
    first, blocked, behind = (submit(store, key="64x64", images=count) for count in (2, 3, 1))
    assert [lease.id for lease in claim(store, batch=4)] == [first]  # queue order: nothing jumps the 3
    assert [lease.id for lease in claim(store, batch=4)] == [blocked, behind]


def test_completion_is_recorded_once_publishes_its_files_and_queues_its_webhook(store: Store) -> None:
    request_id = submit(store, webhook_url="https://example.com/hook")
    lease = claim(store)[0]
    store.files.add(FileRecord("file-0001", "a.png", "image/png", 3, "k", request_id, 1.0, 99.0, ready=False))
    completion = Completion(200, {"seed": 1}, file_ids=["file-0001"])
    assert store.requests.complete(request_id, completion, time.time(), lease_token=lease.lease_token)
    assert not store.requests.complete(request_id, Completion(500, {"detail": "late"}), time.time())
    record = store.requests.get(request_id)
    assert record is not None and record.state is RequestState.COMPLETED and record.response == {"seed": 1}
    assert record.lease_token is None and record.worker_id is None
    published = store.files.get("file-0001")
    assert published is not None and published.ready and published.expires_at is None
    due = store.webhooks.claim_due(time.time(), lease_seconds=60, limit=10)
    assert [delivery.request_id for delivery in due] == [request_id]
    assert store.webhooks.claim_due(time.time(), lease_seconds=60, limit=10) == []  # leased
    assert [d.request_id for d in store.webhooks.claim_due(time.time() + 61, 60, 10)] == [request_id]


def test_only_the_lease_holder_logs_and_completes(store: Store) -> None:
    request_id = submit(store)
    lease = claim(store)[0]
    assert store.requests.append_log(request_id, "mine", "INFO", time.time(), lease_token=lease.lease_token)
    assert not store.requests.append_log(request_id, "forged", "INFO", time.time(), lease_token="other")
    assert not store.requests.complete(request_id, Completion(200, {}), time.time(), lease_token="other")
    assert [entry.message for entry in store.requests.logs(request_id)] == ["mine"]
    assert store.requests.get(request_id).state is RequestState.RUNNING  # type: ignore[union-attr]


def test_renewed_leases_are_kept_and_expired_ones_taken_back(store: Store) -> None:
    now = time.time()
    alive, dead = submit(store), submit(store)
    [alive_lease] = claim(store, "alive", now=now)
    old_lease = claim(store, "dead", now=now)[0]
    later = now + LEASE + 1
    assert store.requests.renew([alive_lease.lease_token], later - 5, LEASE) == {alive}  # type: ignore[list-item]
    reclaimed = store.requests.reclaim_expired(
        later, max_lost_runs=2, lost=outcomes.runner_lost(2), cancelled=outcomes.cancelled()
    )
    assert reclaimed.requeued == [dead] and reclaimed.failed == [] and reclaimed.cancelled == []
    assert store.requests.get(alive).state is RequestState.RUNNING  # type: ignore[union-attr]
    requeued = store.requests.get(dead)
    assert requeued is not None and requeued.state is RequestState.QUEUED
    assert (requeued.lost_runs, requeued.solo, requeued.worker_id) == (1, True, None)
    # The lost worker comes back too late: its writes are refused, and it no longer holds anything.
    assert store.requests.renew([old_lease.lease_token], later, LEASE) == set()  # type: ignore[list-item]
    assert not store.requests.complete(dead, Completion(200, {}), later, lease_token=old_lease.lease_token)
    assert not store.requests.append_log(dead, "late", "INFO", later, lease_token=old_lease.lease_token)


def test_a_loss_in_a_batch_is_not_counted_but_a_loss_alone_is(store: Store) -> None:
    now = time.time()
    first, second = submit(store), submit(store)
    assert len(claim(store, now=now, batch=2)) == 2

    def reclaim(at: float) -> object:
        return store.requests.reclaim_expired(
            at, max_lost_runs=2, lost=outcomes.runner_lost(2), cancelled=outcomes.cancelled()
        )

    reclaim(now + LEASE + 1)
    for request_id in (first, second):
        record = store.requests.get(request_id)
        assert record is not None and (record.lost_runs, record.solo) == (0, True)
    leases = claim(store, now=now + 40, batch=2)
    assert [lease.id for lease in leases] == [first]  # solo now: alone
    reclaim(now + 40 + LEASE + 1)
    assert store.requests.get(first).lost_runs == 1  # type: ignore[union-attr]
    claim(store, now=now + 80, batch=2)  # second, alone
    claim(store, now=now + 80, batch=2)  # first, alone again
    failed = reclaim(now + 80 + LEASE + 1)
    assert failed.failed == [first] and failed.requeued == [second]  # type: ignore[attr-defined]
    record = store.requests.get(first)
    assert record is not None and record.status_code == 500 and record.error_type == "runner_disconnected"


def test_a_graceful_hand_back_counts_nothing(store: Store) -> None:
    request_id, cancelled_id = submit(store), submit(store)
    lease, other = claim(store)[0], claim(store)[0]
    release = store.requests.release
    assert release(request_id, lease.lease_token, time.time(), outcomes.cancelled()) is ReleaseOutcome.REQUEUED  # type: ignore[arg-type]
    record = store.requests.get(request_id)
    assert record is not None and record.state is RequestState.QUEUED
    assert (record.lost_runs, record.solo, record.attempts) == (0, False, 1)
    assert release(request_id, lease.lease_token, time.time(), outcomes.cancelled()) is ReleaseOutcome.LOST  # type: ignore[arg-type]
    assert store.requests.request_cancel(cancelled_id, time.time(), outcomes.cancelled()) is CancelOutcome.REQUESTED
    assert release(cancelled_id, other.lease_token, time.time(), outcomes.cancelled()) is ReleaseOutcome.CANCELLED  # type: ignore[arg-type]
    assert store.requests.get(cancelled_id).status_code == 499  # type: ignore[union-attr]


def test_cancel_outcomes(store: Store) -> None:
    running, queued = submit(store), submit(store)
    claim(store)  # claims `running` (first in line)
    cancelled = outcomes.cancelled()
    assert store.requests.request_cancel(queued, time.time(), cancelled) is CancelOutcome.CANCELLED
    assert store.requests.request_cancel(running, time.time(), cancelled) is CancelOutcome.REQUESTED
    assert store.requests.cancel_requested([running, queued]) == {running, queued}
    assert store.requests.request_cancel(queued, time.time(), cancelled) is CancelOutcome.ALREADY_COMPLETED
    assert store.requests.request_cancel("missing", time.time(), cancelled) is CancelOutcome.NOT_FOUND
    assert store.requests.get(queued).error_type == "client_cancelled"  # type: ignore[union-attr]
    # Its worker went silent: the cancel ends it at once rather than waiting for the lease.
    gone = time.time() + LEASE + 1
    assert store.requests.request_cancel(running, gone, cancelled) is CancelOutcome.CANCELLED
    assert store.requests.get(running).status_code == 499  # type: ignore[union-attr]


def test_a_cancel_waiting_for_a_lost_worker_completes_at_reclaim(store: Store) -> None:
    request_id = submit(store)
    claim(store)
    store.requests.request_cancel(request_id, time.time(), outcomes.cancelled())
    reclaimed = store.requests.reclaim_expired(
        time.time() + LEASE + 1, max_lost_runs=2, lost=outcomes.runner_lost(2), cancelled=outcomes.cancelled()
    )
    assert reclaimed.cancelled == [request_id]
    assert store.requests.get(request_id).status_code == 499  # type: ignore[union-attr]


def test_start_deadlines_expire_only_queued_requests(store: Store) -> None:
    late = submit(store, start_deadline=time.time() - 1)
    fine = submit(store, start_deadline=time.time() + 60)
    assert claim(store)[0].id == fine
    assert store.requests.expire_start_deadlines(time.time(), outcomes.timed_out()) == [late]
    assert store.requests.get(late).status_code == 504  # type: ignore[union-attr]


def test_logs_and_retention(store: Store) -> None:
    request_id = submit(store)
    for index in range(3):
        store.requests.append_log(request_id, f"line {index}", "INFO", time.time())
    logs = store.requests.logs(request_id)
    assert [entry.message for entry in store.requests.logs(request_id, logs[0].seq)] == ["line 1", "line 2"]
    later = time.time() + 10
    assert store.requests.delete_completed_before(later, later) == []  # still queued: kept
    store.requests.request_cancel(request_id, time.time(), outcomes.cancelled())
    assert store.requests.delete_completed_before(later, later) == [request_id]
    assert store.requests.get(request_id) is None and store.requests.logs(request_id) == []


def test_the_queue_limit_holds_under_a_burst(store: Store) -> None:
    errors: list[Exception] = []

    def burst() -> None:
        for _ in range(10):
            request = NewRequest(id=str(uuid.uuid4()), app_id="a/b", key_id="k", input={})
            try:
                store.requests.create(request, time.time(), max_queued=25)
            except QueueFullError as error:
                errors.append(error)

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(store.requests.queue_depth().values()) == 25 and len(errors) == 15


def test_nodes_starting_together_create_one_first_key(store: Store) -> None:
    issued = []
    threads = [threading.Thread(target=lambda: issued.append(ensure_first_key(store.keys))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len([key for key in issued if key is not None]) == 1 and store.keys.count_active() == 1


def test_changes_are_announced_to_subscribers(store: Store) -> None:
    heard: list[Notice] = []
    arrived = threading.Event()

    def listener(notice: Notice) -> None:
        heard.append(notice)
        if notice.kind is NoticeKind.COMPLETED:
            arrived.set()

    unsubscribe = store.notices.subscribe(listener)
    time.sleep(0.5 if store.notices.shared else 0)  # the listening connection opens
    request_id = submit(store)
    lease = claim(store)[0]
    store.requests.append_log(request_id, "step", "INFO", time.time(), lease_token=lease.lease_token)
    store.requests.complete(request_id, Completion(200, {}), time.time(), lease_token=lease.lease_token)
    assert arrived.wait(10)
    unsubscribe()
    kinds = [notice.kind for notice in heard if notice.request_id == request_id]
    assert kinds == [NoticeKind.QUEUED, NoticeKind.STARTED, NoticeKind.LOG, NoticeKind.COMPLETED]


def test_leases_of_workers_known_dead_end_at_once(store: Store) -> None:
    gone, alive = submit(store), submit(store)
    claim(store, "gone-worker")
    claim(store, "live-worker")
    assert store.requests.expire_leases(["gone-worker"], time.time()) == [gone]
    reclaimed = store.requests.reclaim_expired(
        time.time(), max_lost_runs=2, lost=outcomes.runner_lost(2), cancelled=outcomes.cancelled()
    )
    assert reclaimed.requeued == [gone]
    assert store.requests.get(alive).state is RequestState.RUNNING  # type: ignore[union-attr]


def test_an_upload_is_written_by_one_put_only(store: Store) -> None:
    store.files.add(FileRecord("upload-0001", "a.png", "image/png", None, "k", None, 1.0, None, ready=False))
    assert store.files.claim_upload("upload-0001")
    assert not store.files.claim_upload("upload-0001")  # a second PUT at the same moment
    store.files.unclaim_upload("upload-0001")  # the first one's write failed: the URL works again
    assert store.files.claim_upload("upload-0001")
    assert store.files.mark_ready("upload-0001", 5, expires_at=77.0) and not store.files.claim_upload("upload-0001")
    written = store.files.get("upload-0001")
    assert written is not None and (written.ready, written.size, written.expires_at) == (True, 5, 77.0)
    assert not store.files.mark_ready("upload-0001", 5, expires_at=None)  # published once


def test_a_started_request_no_longer_times_out_as_unstarted(store: Store) -> None:
    request_id = submit(store, start_deadline=time.time() + 0.2)
    [lease] = claim(store)
    store.requests.release(request_id, lease.lease_token, time.time(), outcomes.cancelled())  # type: ignore[arg-type]
    assert store.requests.expire_start_deadlines(time.time() + 60, outcomes.timed_out()) == []
    assert [lease.id for lease in claim(store, now=time.time() + 60)] == [request_id]


def test_retention_marks_the_files_of_deleted_requests_for_the_file_sweep(store: Store) -> None:
    request_id = submit(store)
    store.files.add(FileRecord("output-0001", "a.png", "image/png", 3, "k", request_id, 1.0, None, ready=True))
    store.requests.request_cancel(request_id, time.time(), outcomes.cancelled())
    now = time.time() + 10
    assert store.requests.delete_completed_before(now, now) == [request_id]
    assert [record.id for record in store.files.expired(now)] == ["output-0001"]


def test_a_claim_takes_the_next_request_in_order_past_one_another_worker_holds(store: Store, store_url: str) -> None:
    if not store_url.startswith("postgresql"):
        pytest.skip("row locks that others skip are PostgreSQL's; SQLite serialises claims")
    from sqlalchemy import create_engine, text

    from layerdiffuse_server.store.database import database_url

    ids = [submit(store) for _ in range(40)]
    engine = create_engine(database_url(store_url))
    with engine.begin() as other_worker:  # a claim in progress elsewhere holds the head
        other_worker.execute(text("SELECT id FROM requests WHERE id = :id FOR UPDATE"), {"id": ids[0]})
        assert [lease.id for lease in claim(store)] == [ids[1]]
    engine.dispose()


def test_a_worker_takes_requests_for_the_models_it_holds_first_without_starving_others(store: Store) -> None:
    def claim_preferring(prefer: list[str | None], now: float) -> str:
        [lease] = store.requests.claim("w", now, lease_seconds=LEASE, max_batch=1, prefer=prefer, prefer_seconds=30)
        return lease.id

    plain = submit(store, key="64x64:2:euler:8.0")
    similar = submit(store, key="64x64:2:euler:8.0:model=a_b")  # "_" is no wildcard
    held = submit(store, key="64x64:2:euler:8.0:model=anime:loras=abc")
    alone = submit(store, key="alone:0123:model=anime")
    now = time.time()
    assert claim_preferring(["anime"], now) == held
    assert claim_preferring(["anime", "other"], now) == alone
    assert claim_preferring(["axb"], now) == plain  # none held is queued: the queue's order
    later = submit(store, key="64x64:2:euler:8.0")
    assert claim_preferring([None], now + 60) == similar  # the head waited too long: it goes first
    assert claim_preferring([None], now) == later
