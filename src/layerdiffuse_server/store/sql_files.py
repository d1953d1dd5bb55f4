"""The catalog of stored files on SQL; the bytes live in a blob store (:mod:`layerdiffuse_server.files`)."""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy import Engine, delete, insert, select, update

from .contracts import FileRecord
from .rows import from_row
from .tables import files


class SqlFileCatalog:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, record: FileRecord) -> None:
        with self._engine.begin() as connection:
            connection.execute(insert(files).values(**asdict(record)))

    def get(self, file_id: str) -> FileRecord | None:
        with self._engine.connect() as connection:
            row = connection.execute(select(files).where(files.c.id == file_id)).first()
        return from_row(FileRecord, row) if row else None

    def claim_upload(self, file_id: str) -> bool:
        # An unwritten upload has no size; -1 marks one being written.
        statement = (
            update(files).where(files.c.id == file_id, files.c.ready.is_(False), files.c.size.is_(None)).values(size=-1)
        )
        with self._engine.begin() as connection:
            return connection.execute(statement).rowcount == 1

    def unclaim_upload(self, file_id: str) -> None:
        statement = update(files).where(files.c.id == file_id, files.c.ready.is_(False)).values(size=None)
        with self._engine.begin() as connection:
            connection.execute(statement)

    def mark_ready(self, file_id: str, size: int, *, expires_at: float | None) -> bool:
        """Publish a pending file once; False if it was already published (upload URLs are single-use)."""
        statement = (
            update(files)
            .where(files.c.id == file_id, files.c.ready.is_(False))
            .values(ready=True, size=size, expires_at=expires_at)
        )
        with self._engine.begin() as connection:
            return connection.execute(statement).rowcount == 1

    def for_requests(self, request_ids: list[str]) -> list[FileRecord]:
        if not request_ids:
            return []
        with self._engine.connect() as connection:
            return [
                from_row(FileRecord, row)
                for row in connection.execute(select(files).where(files.c.request_id.in_(request_ids)))
            ]

    def delete(self, file_ids: list[str]) -> None:
        if file_ids:
            with self._engine.begin() as connection:
                connection.execute(delete(files).where(files.c.id.in_(file_ids)))

    def expired(self, now: float) -> list[FileRecord]:
        query = select(files).where(files.c.expires_at.is_not(None), files.c.expires_at <= now)
        with self._engine.connect() as connection:
            return [from_row(FileRecord, row) for row in connection.execute(query)]
