"""Opening the database: engine options per dialect, driver errors translated, schema migrated.

``sqlite:///path`` is the embedded default. ``postgresql://user:password@host:port/db`` uses psycopg 3
(the ``postgres`` extra). A driver that is missing, a server that cannot be reached or a database
that refuses us ends as one :class:`~layerdiffuse_server.errors.StoreError` that names the URL
(without its password) and what to do, here and for every later statement.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, column, create_engine, event, table, text, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from ..errors import StoreError
from .contracts import Store
from .migrate import upgrade
from .notices import LocalFeed, PostgresFeed

#: Alembic's own table: the SQLite write probe rewrites its one row unchanged.
ALEMBIC_VERSION = table("alembic_version", column("version_num"))
BUSY_TIMEOUT_MS = 10_000
PROBE_BUSY_TIMEOUT_MS = 2_000


def redacted(url: str | URL) -> str:
    """The URL as it may be shown and logged: the password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


def _configure_sqlite(engine: Engine) -> None:
    # WAL lets readers (status polls) run while the worker writes; BEGIN IMMEDIATE takes the write
    # lock up front, so a read-then-write transaction waits (busy_timeout) instead of failing with
    # "database is locked" when another thread committed in between.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _switch_to_wal(cursor: Any) -> None:
    """Switching a new database file to WAL needs a moment alone with it, and SQLite answers "locked"
    at once rather than waiting when processes open one together (an API and a worker starting)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _translate_connection_errors(engine: Engine, shown_url: str) -> None:
    """Driver errors that mean "the database is not there" become our StoreError, at every statement."""

    @event.listens_for(engine, "handle_error")
    def _on_error(context: Any) -> None:
        error = context.sqlalchemy_exception
        if context.is_disconnect or (isinstance(error, DBAPIError) and error.connection_invalidated):
            raise StoreError(f"lost the connection to the database {shown_url}: {context.original_exception}")
        if context.connection is None and context.original_exception is not None:  # failed to connect
            reason = str(context.original_exception).strip().splitlines()[0]
            if engine.dialect.name == "sqlite":
                raise StoreError(f"cannot open the database {shown_url}: {reason}")
            raise StoreError(
                f"cannot connect to the database {shown_url}: {reason}. Is the server running, and does "
                "LAYERDIFFUSE_DATABASE_URL name it with the right user and password?"
            )


def database_url(url: str) -> URL:
    """The SQLAlchemy URL to connect with: ``postgresql://`` means psycopg 3, which must be installed."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(
            f"invalid database URL {url!r}: use sqlite:///path or postgresql://user:password@host:port/db"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        if importlib.util.find_spec("psycopg") is None:
            raise StoreError(
                f"the database {redacted(parsed)} needs the psycopg driver: "
                "pip install 'layerdiffuse-server[postgres]' (./scripts/setup installs it)"
            )
    elif backend != "sqlite":
        raise StoreError(f"unsupported database {redacted(parsed)}: use sqlite:///path or postgresql://…")
    return parsed


def create_database_engine(url: str) -> Engine:
    parsed = database_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 10})
        _configure_sqlite(engine)
    else:
        engine = create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)
    _translate_connection_errors(engine, redacted(parsed))
    return engine


def _require_utf8(url: URL) -> None:
    """Refuse a PostgreSQL database that is not UTF-8, by name. A ``SQL_ASCII`` one (what ``initdb``
    makes under the C locale, as in minimal containers) hands text back as bytes, which fails the
    first statement deep in SQLAlchemy with a ``TypeError`` that says nothing of the cause, and
    another encoding could not store every prompt. A server that cannot be reached is left to the
    engine, whose error says what to do about that."""
    import psycopg

    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(conninfo, connect_timeout=10) as connection:
            encoding = connection.info.parameter_status("server_encoding")
    except psycopg.Error:
        return
    if encoding is not None and encoding.upper() != "UTF8":
        raise StoreError(
            f"the database {redacted(url)} is encoded in {encoding}, and layerdiffuse-server needs UTF8: "
            "create it with CREATE DATABASE … ENCODING 'UTF8' TEMPLATE template0 (or initdb -E UTF8; "
            "the official postgres image does this)"
        )


def open_store(url: str, *, migrate: bool = True) -> Store:
    """Connect to (and, with ``migrate``, create or upgrade) the database at ``url``."""
    from .sql_files import SqlFileCatalog
    from .sql_keys import SqlKeyRing
    from .sql_requests import SqlRequestQueue
    from .sql_webhooks import SqlWebhookOutbox
    from .sql_workers import SqlWorkerRegistry
    from .transactions import transactions

    engine = create_database_engine(url)
    if engine.dialect.name == "postgresql":
        _require_utf8(engine.url)
    try:
        if migrate:
            upgrade(engine)
    except StoreError:
        engine.dispose()
        raise
    except Exception as error:
        engine.dispose()
        raise StoreError(f"cannot open the database {redacted(url)}: {error}") from error
    if engine.dialect.name == "postgresql":
        feed: LocalFeed | PostgresFeed = PostgresFeed(engine.url.set(drivername="postgresql").render_as_string(False))
    else:
        feed = LocalFeed()
    transaction = transactions(engine, feed)

    def close() -> None:
        feed.close()
        engine.dispose()

    return Store(
        requests=SqlRequestQueue(engine, transaction),
        keys=SqlKeyRing(engine),
        files=SqlFileCatalog(engine),
        webhooks=SqlWebhookOutbox(engine),
        workers=SqlWorkerRegistry(engine),
        notices=feed,
        url=redacted(url),
        check_writable=lambda: check_writable(engine),
        close=close,
    )


def check_writable(engine: Engine) -> None:
    """Raise unless a write transaction can start now (disk full, read-only file, lost primary …)."""
    sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.connect() as connection:
            # a probe answers in seconds: it waits less for SQLite's write lock than requests do
            raw = connection.connection.dbapi_connection if sqlite else None
            if raw is not None:
                raw.execute(f"PRAGMA busy_timeout={PROBE_BUSY_TIMEOUT_MS}")
            transaction = connection.begin()  # SQLite: BEGIN IMMEDIATE takes the write lock
            try:
                if sqlite:
                    connection.execute(update(ALEMBIC_VERSION).values(version_num=ALEMBIC_VERSION.c.version_num))
                elif connection.execute(text("SHOW transaction_read_only")).scalar() == "on":
                    raise StoreError("the database is read-only")
            finally:
                transaction.rollback()
                if raw is not None:
                    raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except StoreError:
        raise
    except Exception as error:
        raise StoreError(str(error).strip().splitlines()[0]) from error
