"""Worker heartbeats on SQL: each report replaces the worker's row."""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .contracts import WorkerState, WorkerStatus
from .tables import workers


class SqlWorkerRegistry:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    def report(self, status: WorkerStatus) -> None:
        values = asdict(status)
        values["state"] = status.state.value
        statement = self._insert(workers).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=[workers.c.id], set_={k: v for k, v in values.items() if k != "id"}
        )
        with self._engine.begin() as connection:
            connection.execute(statement)

    def all(self) -> list[WorkerStatus]:
        with self._engine.connect() as connection:
            rows = connection.execute(select(workers).order_by(workers.c.started_at)).all()
        return [WorkerStatus(**{**row._mapping, "state": WorkerState(row._mapping["state"])}) for row in rows]

    def forget_silent_since(self, cutoff: float) -> int:
        """Drop rows of workers that have not reported since ``cutoff`` (long gone)."""
        with self._engine.begin() as connection:
            return connection.execute(delete(workers).where(workers.c.heartbeat_at < cutoff)).rowcount
