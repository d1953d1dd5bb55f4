"""``layerdiffuse status``: what the server is doing, read from its store.

Reading the store rather than asking a server process means the report also works when the server
is down (its workers then show as silent) and covers every worker sharing the database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from rich.console import Console
from rich.table import Table

from ..command_name import command
from ..store.contracts import Priority, Store
from .metrics import outcome

RECENT_SECONDS = 3600.0


@dataclass(frozen=True)
class RunningRequest:
    request_id: str
    worker_id: str | None
    started_at: float | None
    running_seconds: float | None
    attempts: int


@dataclass(frozen=True)
class WorkerReport:
    id: str
    host: str
    pid: int
    model: str
    device: str
    state: str  # the worker's own state, or "silent" when its heartbeat stopped
    current_request: str | None
    requests_done: int
    error: str | None
    last_seen_seconds: float


@dataclass(frozen=True)
class StatusReport:
    database: str
    files: str | None  # where file bytes live, when the caller knows (the settings do, the store does not)
    queued: dict[str, int]
    running: list[RunningRequest]
    workers: list[WorkerReport]
    completed_last_hour: dict[str, int]
    generated_at: float


def collect_status(store: Store, now: float | None = None, *, files: str | None = None) -> StatusReport:
    now = time.time() if now is None else now
    depth = store.requests.queue_depth()
    running = [
        RunningRequest(
            request_id=record.id,
            worker_id=record.worker_id,
            started_at=record.started_at,
            running_seconds=round(now - record.started_at, 1) if record.started_at else None,
            attempts=record.attempts,
        )
        for record in store.requests.running()
    ]
    workers = []
    for worker in store.workers.all():
        workers.append(
            WorkerReport(
                id=worker.id,
                host=worker.host,
                pid=worker.pid,
                model=worker.model,
                device=worker.device,
                state=worker.observed_state(now),
                current_request=worker.current_request,
                requests_done=worker.requests_done,
                error=worker.error,
                last_seen_seconds=round(now - worker.heartbeat_at, 1),
            )
        )
    outcomes: dict[str, int] = {}
    for (status_code, error_type), count in store.requests.completed_since(now - RECENT_SECONDS).items():
        name = outcome(status_code, error_type)
        outcomes[name] = outcomes.get(name, 0) + count
    return StatusReport(
        database=store.url,
        files=files,
        queued={priority.name: depth.get(priority, 0) for priority in Priority},
        running=running,
        workers=workers,
        completed_last_hour=outcomes,
        generated_at=now,
    )


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def render_status(report: StatusReport, console: Console) -> None:
    queued = ", ".join(f"{count} {name}" for name, count in report.queued.items())
    console.print(f"[bold]Queue[/]: {sum(report.queued.values())} waiting ({queued}), {len(report.running)} running")
    # One line each: a separator between them is left dangling where a long URL wraps the line.
    console.print(f"[dim]store: {report.database}[/]", soft_wrap=True)
    if report.files:
        console.print(f"[dim]files: {report.files}[/]", soft_wrap=True)
    if report.running:
        table = Table("request", "worker", "started", "attempt", title="Running")
        for request in report.running:
            started = datetime.fromtimestamp(request.started_at).strftime("%H:%M:%S") if request.started_at else ""
            table.add_row(request.request_id, request.worker_id or "", started, str(request.attempts))
        console.print(table)
    if report.workers:
        table = Table("worker", "host:pid", "model", "device", "state", "request", "done", "last seen", title="Workers")
        colours = {"ready": "green", "busy": "cyan", "loading": "yellow", "failed": "red", "silent": "red"}
        for worker in report.workers:
            state = f"[{colours.get(worker.state, 'dim')}]{worker.state}[/]"
            if worker.error:
                state += f"\n[red]{worker.error}[/]"
            table.add_row(
                worker.id,
                f"{worker.host}:{worker.pid}",
                worker.model,
                worker.device,
                state,
                worker.current_request or "",
                str(worker.requests_done),
                _ago(worker.last_seen_seconds),
            )
        console.print(table)
    else:
        console.print(f"No worker has reported to this store: is `{command('serve')}` running on this data directory?")
    done = ", ".join(f"{count} {name}" for name, count in sorted(report.completed_last_hour.items())) or "none"
    console.print(f"[bold]Completed in the last hour[/]: {done}")
