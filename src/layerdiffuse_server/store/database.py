"""Opening the database: engine options per dialect, schema creation and its version check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, insert, select, text, update
from sqlalchemy.engine import make_url

from ..errors import LayerDiffuseError
from . import tables
from .contracts import Store


class StoreError(LayerDiffuseError):
    """The database cannot be used."""

    status_code = 503
    error_type = "internal_error"


BUSY_TIMEOUT_MS = 10_000
PROBE_BUSY_TIMEOUT_MS = 2_000

# Schema versions that this release upgrades in place because it only added tables since.
ADDITIVE_UPGRADES_FROM = frozenset({1})


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _configure_sqlite(engine: Engine) -> None:
    # WAL lets readers (status polls) run while the worker writes; BEGIN IMMEDIATE takes the write
    # lock up front, so a read-then-write transaction waits (busy_timeout) instead of failing with
    # "database is locked" when another thread committed in between.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_database_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _ensure_schema(engine: Engine) -> None:
    tables.metadata.create_all(engine)
    with engine.begin() as connection:
        version = connection.execute(select(tables.schema_info.c.version)).scalar()
        if version is None:
            connection.execute(insert(tables.schema_info).values(version=tables.SCHEMA_VERSION))
        elif version in ADDITIVE_UPGRADES_FROM:
            # every change since that version was a new table, which create_all just made
            connection.execute(update(tables.schema_info).values(version=tables.SCHEMA_VERSION))
        elif version != tables.SCHEMA_VERSION:
            raise StoreError(
                f"the database at {engine.url!r} has schema version {version}, this release needs "
                f"{tables.SCHEMA_VERSION}; use a matching release or a new data directory"
            )


def open_store(url: str) -> Store:
    """Connect to (and if needed create) the database at ``url``: ``sqlite:///path`` or ``postgresql://…``."""
    from .sql_files import SqlFileCatalog
    from .sql_keys import SqlKeyRing
    from .sql_requests import SqlRequestQueue
    from .sql_webhooks import SqlWebhookOutbox
    from .sql_workers import SqlWorkerRegistry

    engine = create_database_engine(url)
    try:
        _ensure_schema(engine)
    except Exception as error:
        engine.dispose()
        if isinstance(error, StoreError):
            raise
        raise StoreError(f"cannot open the database {url!r}: {error}") from error
    return Store(
        requests=SqlRequestQueue(engine),
        keys=SqlKeyRing(engine),
        files=SqlFileCatalog(engine),
        webhooks=SqlWebhookOutbox(engine),
        workers=SqlWorkerRegistry(engine),
        url=url,
        check_writable=lambda: check_writable(engine),
    )


def check_writable(engine: Engine) -> None:
    """Raise unless a write transaction can start now (disk full, read-only file, lost primary …)."""
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        # a probe answers in seconds: it waits less for SQLite's write lock than requests do
        raw = connection.connection.dbapi_connection if sqlite else None
        if raw is not None:
            raw.execute(f"PRAGMA busy_timeout={PROBE_BUSY_TIMEOUT_MS}")
        transaction = connection.begin()  # SQLite: BEGIN IMMEDIATE takes the write lock
        try:
            if sqlite:
                connection.execute(update(tables.schema_info).values(version=tables.schema_info.c.version))
            elif connection.execute(text("SHOW transaction_read_only")).scalar() == "on":
                raise StoreError("the database is read-only")
        finally:
            transaction.rollback()
            if raw is not None:
                raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
