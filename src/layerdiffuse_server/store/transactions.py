"""One write transaction that also carries the change notices it makes, so a notice is sent exactly
when (and only if) its change is committed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from sqlalchemy import Connection, Engine

from .contracts import Notice


class NoticeSender(Protocol):
    def before_commit(self, connection: Connection, notices: list[Notice]) -> None: ...
    def after_commit(self, notices: list[Notice]) -> None: ...


Transactions = Callable[[], AbstractContextManager[tuple[Connection, list[Notice]]]]


def transactions(engine: Engine, sender: NoticeSender) -> Transactions:
    @contextmanager
    def transaction() -> Iterator[tuple[Connection, list[Notice]]]:
        notices: list[Notice] = []
        with engine.begin() as connection:
            yield connection, notices
            sender.before_commit(connection, notices)
        sender.after_commit(notices)

    return transaction
