"""The fake clock the tests of leases and deadlines run on: waits end when it is moved, not before."""

from __future__ import annotations

import asyncio
import threading

import pytest

from layerdiffuse_server.testing import FakeClock


def test_time_moves_only_when_advanced() -> None:
    clock = FakeClock(start=1000.0)
    assert (clock.time(), clock.monotonic()) == (1000.0, 0.0)
    clock.advance(2.5)
    assert (clock.time(), clock.monotonic()) == (1002.5, 2.5)


def test_a_wait_ends_when_the_clock_passes_its_end() -> None:
    clock = FakeClock()
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(clock.wait(threading.Event(), 5.0)))
    waiter.start()
    clock.wait_for_sleepers(1)
    clock.advance(4.9)
    assert clock.sleepers == 1 and not results  # not yet its end
    clock.advance(0.1)  # returns once the waiter has woken
    assert clock.sleepers == 0 and results == [False]
    waiter.join(5)


def test_a_wait_ends_early_when_its_event_is_set() -> None:
    clock = FakeClock()
    event = threading.Event()
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(clock.wait(event, 60.0)))
    waiter.start()
    clock.wait_for_sleepers(1)
    event.set()
    waiter.join(5)
    assert results == [True] and clock.monotonic() == 0.0


def test_waiting_for_sleepers_that_never_come_fails() -> None:
    with pytest.raises(AssertionError, match="not 1"):
        FakeClock().wait_for_sleepers(1, within=0.05)


def test_a_coroutine_waits_on_the_clock_beside_the_test_that_moves_it() -> None:
    clock = FakeClock()

    async def scenario() -> tuple[bool, bool]:
        event = asyncio.Event()
        waiting = asyncio.create_task(clock.wait_async(event, 5.0))
        await asyncio.sleep(0.02)
        clock.advance(5.0)  # on the waiter's own loop: must not block on it
        timed_out = await waiting
        event.set()
        return timed_out, await clock.wait_async(event, 5.0)

    assert asyncio.run(scenario()) == (False, True)
