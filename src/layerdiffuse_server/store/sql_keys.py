"""API keys on SQL: only a hash of each secret is stored."""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy import Connection, Engine, func, insert, select, text, update

from .contracts import ApiKey
from .rows import from_row
from .tables import api_keys

#: Serialises first-key creation on PostgreSQL: nodes starting together on an empty database make one.
FIRST_KEY_LOCK = 0x6C646B79  # "ldky"


def _active_count(connection: Connection) -> int:
    return int(connection.execute(select(func.count()).where(api_keys.c.revoked_at.is_(None))).scalar_one())


class SqlKeyRing:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, key: ApiKey) -> None:
        with self._engine.begin() as connection:
            connection.execute(insert(api_keys).values(**asdict(key)))

    def add_first(self, key: ApiKey) -> bool:
        with self._engine.begin() as connection:  # SQLite: BEGIN IMMEDIATE already serialises
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": FIRST_KEY_LOCK})
            if _active_count(connection):
                return False
            connection.execute(insert(api_keys).values(**asdict(key)))
        return True

    def get(self, key_id: str) -> ApiKey | None:
        with self._engine.connect() as connection:
            row = connection.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        return from_row(ApiKey, row) if row else None

    def all(self) -> list[ApiKey]:
        with self._engine.connect() as connection:
            return [
                from_row(ApiKey, row) for row in connection.execute(select(api_keys).order_by(api_keys.c.created_at))
            ]

    def revoke(self, key_id: str, now: float) -> bool:
        statement = (
            update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=now)
        )
        with self._engine.begin() as connection:
            return connection.execute(statement).rowcount == 1

    def count_active(self) -> int:
        with self._engine.connect() as connection:
            return _active_count(connection)
