"""The body budget: reservations wait for room, a body alone goes in whatever its size, waits end."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from layerdiffuse_server.api.bodies import read_limited_body
from layerdiffuse_server.api.body_budget import BodyBudget, BodyMemoryFullError


def test_reservations_wait_for_room_and_are_given_back() -> None:
    async def scenario() -> None:
        budget = BodyBudget(capacity=100, wait_seconds=5)
        first, second = budget.reservation(), budget.reservation()
        await first.grow_to(60)
        for size in (10, 20, 30, 40):  # a reservation may grow while there is room
            await asyncio.wait_for(second.grow_to(size), 1)
        waiting = asyncio.ensure_future(second.grow_to(50))
        await asyncio.sleep(0.05)
        assert not waiting.done() and budget.held == 100
        first.release()
        await asyncio.wait_for(waiting, 1)
        assert (budget.held, budget.peak) == (50, 100)
        second.release()
        assert budget.held == 0

    asyncio.run(scenario())


def test_a_body_larger_than_the_budget_goes_alone_and_a_wait_ends() -> None:
    async def scenario() -> None:
        budget = BodyBudget(capacity=10, wait_seconds=0.05)
        alone = budget.reservation()
        await alone.grow_to(50)
        await alone.grow_to(80)  # still alone: it may grow
        with pytest.raises(BodyMemoryFullError):
            await budget.reservation().grow_to(1)
        alone.release()
        assert budget.held == 0 and budget.peak == 80

    asyncio.run(scenario())


def chunked_request(chunks: list[bytes], sent: asyncio.Event) -> Request:
    """A request without Content-Length whose body arrives in ``chunks``, the last once ``sent`` is set."""
    pending = list(chunks)

    async def receive() -> dict[str, object]:
        if len(pending) == 1:
            await sent.wait()
        return {"type": "http.request", "body": pending.pop(0), "more_body": bool(pending)}

    return Request({"type": "http", "method": "POST", "headers": [], "path": "/"}, receive)


def test_bodies_without_a_length_reserve_their_limit_and_never_wait_for_each_other() -> None:
    async def scenario() -> None:
        budget = BodyBudget(capacity=100, wait_seconds=2)
        first_sent, second_sent = asyncio.Event(), asyncio.Event()
        first, second = budget.reservation(), budget.reservation()
        reading_first = asyncio.ensure_future(
            read_limited_body(chunked_request([b"a" * 30] * 2, first_sent), 60, first)
        )
        await asyncio.sleep(0.05)
        assert budget.held == 60  # the whole limit, before its first byte
        reading_second = asyncio.ensure_future(
            read_limited_body(chunked_request([b"b" * 30] * 2, second_sent), 60, second)
        )
        await asyncio.sleep(0.05)
        assert not reading_second.done() and budget.held == 60  # waits for room, holding nothing
        first_sent.set()
        assert await asyncio.wait_for(reading_first, 1) == b"a" * 60
        first.release()
        second_sent.set()
        assert await asyncio.wait_for(reading_second, 1) == b"b" * 60
        second.release()
        assert budget.held == 0 and budget.peak == 60

    asyncio.run(scenario())
