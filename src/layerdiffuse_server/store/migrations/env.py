"""Alembic's entry point, run by :func:`layerdiffuse_server.store.migrate.upgrade` on a connection it
opened (and, on PostgreSQL, locked), never from a command line of its own."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
# SQLite alters tables by copying them ("batch" mode); PostgreSQL alters them in place.
context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
