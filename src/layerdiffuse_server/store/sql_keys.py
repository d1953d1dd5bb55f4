"""API keys on SQL: only a hash of each secret is stored."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from .contracts import ApiKey
from .tables import api_keys


def _key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        admin=bool(row.admin),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        secret_hash=row.secret_hash,
    )


class SqlKeyRing:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, key: ApiKey) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                insert(api_keys).values(
                    id=key.id,
                    name=key.name,
                    admin=key.admin,
                    secret_hash=key.secret_hash,
                    created_at=key.created_at,
                    revoked_at=key.revoked_at,
                )
            )

    def get(self, key_id: str) -> ApiKey | None:
        with self._engine.connect() as connection:
            row = connection.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        return _key(row) if row else None

    def all(self) -> list[ApiKey]:
        with self._engine.connect() as connection:
            return [_key(row) for row in connection.execute(select(api_keys).order_by(api_keys.c.created_at))]

    def revoke(self, key_id: str, now: float) -> bool:
        statement = (
            update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=now)
        )
        with self._engine.begin() as connection:
            return connection.execute(statement).rowcount == 1

    def count_active(self) -> int:
        with self._engine.connect() as connection:
            return int(connection.execute(select(func.count()).where(api_keys.c.revoked_at.is_(None))).scalar_one())
