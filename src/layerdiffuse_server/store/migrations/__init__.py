"""Alembic migrations of the store's schema: the same revisions for SQLite and PostgreSQL."""
