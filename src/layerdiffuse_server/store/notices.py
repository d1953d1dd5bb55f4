"""Change notices: who hears that a request was queued, started, logged to or completed.

SQL code collects notices while it changes rows and hands them to the feed with the transaction:

- :class:`LocalFeed` (SQLite) delivers them in this process once the transaction committed; other
  processes on the same file poll instead (SQLite cannot tell them);
- :class:`PostgresFeed` sends them with ``pg_notify`` inside the transaction, so PostgreSQL
  delivers them on commit, to every process (this one included) that listens on one connection
  of its own. Listening starts with the first subscriber, so a CLI command opens no extra
  connection. After a reconnect a ``RESYNC`` notice tells everyone to re-read, since notices sent
  while the connection was down are lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from sqlalchemy import Connection, text

from .contracts import Notice, NoticeKind

logger = logging.getLogger(__name__)

CHANNEL = "layerdiffuse_requests"
_RECONNECT_SECONDS = (0.5, 1.0, 2.0, 5.0)


class _Listeners:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Notice], None]] = []

    def add(self, listener: Callable[[Notice], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def deliver(self, notices: Iterable[Notice]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for notice in notices:
            for listener in listeners:
                try:
                    listener(notice)
                except Exception:  # one listener's bug must not keep the notice from the others
                    logger.exception("a change-notice listener failed")


class LocalFeed:
    """Notices within this process only."""

    shared = False

    def __init__(self) -> None:
        self._listeners = _Listeners()

    def subscribe(self, listener: Callable[[Notice], None]) -> Callable[[], None]:
        return self._listeners.add(listener)

    def before_commit(self, connection: Connection, notices: list[Notice]) -> None:
        pass

    def after_commit(self, notices: list[Notice]) -> None:
        if notices:
            self._listeners.deliver(notices)

    def close(self) -> None:
        pass


class PostgresFeed:
    """Notices through PostgreSQL's LISTEN/NOTIFY, to every process sharing the database."""

    shared = True

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._listeners = _Listeners()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def subscribe(self, listener: Callable[[Notice], None]) -> Callable[[], None]:
        remove = self._listeners.add(listener)
        with self._lock:
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(target=self._listen, name="store-notices", daemon=True)
                self._thread.start()
        return remove

    def before_commit(self, connection: Connection, notices: list[Notice]) -> None:
        # PostgreSQL folds identical notices of one transaction into one, which is what we want.
        for notice in notices:
            connection.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": CHANNEL, "payload": f"{notice.kind.value}:{notice.request_id}"},
            )

    def after_commit(self, notices: list[Notice]) -> None:
        pass  # delivered by the listener, which hears our own notifications too

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)

    def _listen(self) -> None:
        import psycopg

        failures = 0
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    failures = 0
                    self._listeners.deliver([Notice(NoticeKind.RESYNC)])
                    while not self._stopping.is_set():
                        for message in connection.notifies(timeout=1.0):
                            kind, _, request_id = message.payload.partition(":")
                            try:
                                notice = Notice(NoticeKind(kind), request_id)
                            except ValueError:
                                continue  # from a newer release: nothing for us
                            self._listeners.deliver([notice])
            except Exception as error:
                delay = _RECONNECT_SECONDS[min(failures, len(_RECONNECT_SECONDS) - 1)]
                failures += 1
                if not self._stopping.is_set():
                    logger.warning("lost the notification connection (%s); reconnecting in %.1f s", error, delay)
                    self._stopping.wait(delay)
