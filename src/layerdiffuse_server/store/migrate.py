"""Bringing a database to the schema this release needs, with Alembic, whenever a process opens it.

Every node runs this at start. On PostgreSQL an advisory lock makes nodes that start together
migrate one after the other (the second finds nothing left to do); on SQLite the migration's
``BEGIN IMMEDIATE`` transaction does the same.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, text

from ..errors import StoreError

SCRIPT_LOCATION = "layerdiffuse_server.store:migrations"
MIGRATION_LOCK = 0x6C646D67  # "ldmg"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every migration the database lacks, atomically."""
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        raw = connection.connection.dbapi_connection if sqlite else None
        if raw is not None:
            # SQLite alters a table by copying it and dropping the original; with foreign keys on,
            # that drop would cascade to the rows that point at it (a request's logs). The pragma
            # only takes effect outside a transaction, hence here.
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                if not sqlite:
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
                command.upgrade(alembic_config(connection), revision)
        except CommandError as error:  # e.g. a revision from a newer release
            raise StoreError(
                f"cannot upgrade the database schema: {error}; was the database made by a newer release?"
            ) from None
        except RuntimeError as error:
            raise StoreError(str(error)) from None
        finally:
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=ON")
