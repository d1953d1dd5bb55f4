"""The admission lanes: a key's fetches are held to its share, and its share goes when unused."""

from __future__ import annotations

import threading

import anyio

from layerdiffuse_server.api.admission_lanes import AdmissionLanes


def test_a_key_holds_at_most_its_share_of_the_fetch_lane() -> None:
    lanes = AdmissionLanes(inline=1, fetches=4, fetches_per_key=2)
    lock, running, most = threading.Lock(), {"a": 0, "b": 0}, {"a": 0, "b": 0}
    # Each admission waits for a second one of its key: two at once are proven, however slow the machine.
    pairs = {"a": threading.Barrier(2, timeout=30), "b": threading.Barrier(2, timeout=30)}

    def admit(key: str) -> None:
        with lock:
            running[key] += 1
            most[key] = max(most[key], running[key])
        pairs[key].wait()
        threading.Event().wait(0.02)  # a third one of the key would be counted while these two hold
        with lock:
            running[key] -= 1

    async def scenario() -> None:
        async with anyio.create_task_group() as group:
            for key in "aaaaaabb":
                group.start_soon(lanes.run, key, True, lambda key=key: admit(key))

    anyio.run(scenario)
    assert most == {"a": 2, "b": 2} and lanes._keys == {}
