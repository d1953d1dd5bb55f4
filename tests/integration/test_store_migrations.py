"""Schema migrations on SQLite and PostgreSQL: a new database, a database made by the releases
before migrations (upgraded in place, data kept), and nodes that migrate at the same moment."""

from __future__ import annotations

import threading
import time

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, insert, inspect, text

from layerdiffuse_server.errors import StoreError
from layerdiffuse_server.lifecycle import outcomes
from layerdiffuse_server.store import RequestState, open_store
from layerdiffuse_server.store.database import database_url
from layerdiffuse_server.store.migrate import head_revision
from layerdiffuse_server.store.tables import metadata

from ..fixtures import legacy_schema
from ..support.postgres import PostgresServer


def _engine(url: str):
    return create_engine(database_url(url))


def test_migrations_arrive_at_exactly_the_tables_the_queries_use(store_url: str) -> None:
    open_store(store_url).close()
    engine = _engine(store_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() == head_revision()
        differences = compare_metadata(context, metadata)
    engine.dispose()
    assert differences == []


def _legacy_database(url: str, version: int) -> None:
    """A database as the releases before migrations left it, with one request in each state."""
    engine = _engine(url)
    tables = [table for table in legacy_schema.metadata.sorted_tables if version >= 2 or table.name != "workers"]
    legacy_schema.metadata.create_all(engine, tables=tables)
    requests = legacy_schema.requests
    common = {"app_id": "fal-ai/layer-diffusion", "key_id": "key1", "priority": 0, "input": {"prompt": "x"}}
    with engine.begin() as connection:
        connection.execute(insert(legacy_schema.schema_info).values(version=version))
        for row in (
            {"id": "queued", "state": "IN_QUEUE", "created_at": 1.0, "attempts": 0},
            {"id": "running", "state": "IN_PROGRESS", "created_at": 2.0, "attempts": 1, "worker_id": "worker-old",
             "started_at": 3.0},
            {"id": "done", "state": "COMPLETED", "created_at": 4.0, "attempts": 1, "status_code": 200,
             "response": {"seed": 7}, "completed_at": 5.0, "webhook_url": "https://example.com/h"},
        ):  # fmt: skip
            connection.execute(insert(requests).values(**common, **row))
        connection.execute(
            insert(legacy_schema.api_keys).values(id="key1", name="n", admin=True, secret_hash="h", created_at=1.0)
        )
        connection.execute(
            insert(legacy_schema.request_logs).values(
                request_id="done", message="old line", level="INFO", timestamp=4.5
            )
        )
    engine.dispose()


@pytest.mark.parametrize("version", [1, 2])
def test_a_database_of_the_first_releases_is_upgraded_in_place(store_url: str, version: int) -> None:
    _legacy_database(store_url, version)
    store = open_store(store_url)
    try:
        assert store.requests.get("queued").state is RequestState.QUEUED  # type: ignore[union-attr]
        done = store.requests.get("done")
        assert done is not None and done.response == {"seed": 7} and done.status_code == 200
        assert [entry.message for entry in store.requests.logs("done")] == ["old line"]
        assert store.keys.get("key1") is not None and store.workers.all() == []
        # Its worker was of a release without leases: the next reclaim takes the request back.
        reclaimed = store.requests.reclaim_expired(
            time.time(), max_lost_runs=2, lost=outcomes.runner_lost(2), cancelled=outcomes.cancelled()
        )
        assert reclaimed.requeued == ["running"]
        engine = _engine(store_url)
        assert not inspect(engine).has_table("schema_info")
        engine.dispose()
    finally:
        store.close()


def test_a_database_of_an_unknown_schema_is_refused(store_url: str) -> None:
    _legacy_database(store_url, 2)
    engine = _engine(store_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE schema_info SET version = 99"))
    engine.dispose()
    with pytest.raises(StoreError, match="schema version 99"):
        open_store(store_url)


def test_nodes_that_start_together_migrate_once(store_url: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            open_store(store_url).close()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_an_unreachable_postgresql_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(StoreError) as raised:
        open_store("postgresql://layerdiffuse:s3cret@127.0.0.1:1/layerdiffuse")
    message = str(raised.value)
    assert "postgresql+psycopg://layerdiffuse:***@127.0.0.1:1/layerdiffuse" in message
    assert "s3cret" not in message and "LAYERDIFFUSE_DATABASE_URL" in message


def test_a_postgresql_database_that_is_not_utf8_is_refused_by_name(postgres_server: PostgresServer) -> None:
    """What initdb makes under the C locale (minimal containers): text would come back as bytes."""
    import psycopg

    name = "t_sql_ascii"
    with psycopg.connect(postgres_server.url(), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LOCALE 'C' TEMPLATE template0")
    with pytest.raises(StoreError, match="is encoded in SQL_ASCII, and layerdiffuse-server needs UTF8"):
        open_store(postgres_server.url(name))


def test_a_missing_driver_or_an_unknown_database_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "psycopg" else real_find_spec(name, *args)
    )
    with pytest.raises(StoreError, match=r"pip install 'layerdiffuse-server\[postgres\]'"):
        open_store("postgresql://user:pw@db/layerdiffuse")
    with pytest.raises(StoreError, match="unsupported database"):
        open_store("mysql://user:pw@db/layerdiffuse")
