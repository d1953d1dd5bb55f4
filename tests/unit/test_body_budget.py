"""The body budget: reservations wait for room, a body alone goes in whatever its size, waits end."""

from __future__ import annotations

import asyncio

import pytest

from layerdiffuse_server.api.body_budget import BodyBudget, BodyMemoryFullError


def test_reservations_wait_for_room_and_are_given_back() -> None:
    async def scenario() -> None:
        budget = BodyBudget(capacity=100, wait_seconds=5)
        first, second = budget.reservation(), budget.reservation()
        await first.grow_to(60)
        for size in (10, 20, 30, 40):  # a body without Content-Length reserves as it streams
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
