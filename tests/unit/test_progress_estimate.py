"""The "about N s left" line of a running request: the pace of the steps so far, said again when it changes."""

from __future__ import annotations

from layerdiffuse_server.worker.generation_worker import _Estimate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(estimate: _Estimate, clock: Clock, step_times: list[float], total: int) -> dict[int, str]:
    """Step ``i + 1`` arrives ``step_times[i]`` seconds after the one before; the lines said, by step."""
    said = {}
    for step, seconds in enumerate(step_times, start=1):
        clock.now += seconds
        line = estimate.after(step, total)
        if line:
            said[step] = line
    return said


def test_a_steady_run_is_estimated_once_from_the_steps_after_the_first() -> None:
    clock = Clock()
    # The first step also pays for the set-up (5 s); the others take 1 s each.
    said = run(_Estimate(clock(), clock=clock), clock, [5.0] + [1.0] * 19, total=20)
    assert said == {2: "Denoising at 1.00 s per step: about 18 s left, then decoding."}


def test_a_run_that_slows_down_says_so_with_the_new_pace() -> None:
    clock = Clock()
    # 1 s per step for the first 5 steps, then another process takes the cores: 4 s per step.
    said = run(_Estimate(clock(), clock=clock), clock, [1.0] * 5 + [4.0] * 15, total=20)
    assert said[2] == "Denoising at 1.00 s per step: about 18 s left, then decoding."
    later = [said[step] for step in sorted(said) if step > 2]
    assert later and all(line.startswith("Re-estimated: denoising at") for line in later)
    # Within a few steps of the change it says the truth (11 steps at 4 s), and then keeps quiet.
    assert max(said) <= 5 + 4
    assert later[-1] == "Re-estimated: denoising at 4.00 s per step: about 44 s left, then decoding."


def test_the_decode_estimate_is_added_and_named() -> None:
    clock = Clock()
    said = run(_Estimate(clock(), decode_seconds=6.0, clock=clock), clock, [2.0] * 4, total=10)
    assert said == {2: "Denoising at 2.00 s per step: about 22 s left, decoding included (6 s)."}


def test_a_slow_first_step_gives_an_early_estimate() -> None:
    clock = Clock()
    said = run(_Estimate(clock(), clock=clock), clock, [30.0], total=20)
    assert said == {1: "Denoising at 30.00 s per step: about 570 s left, then decoding."}


def test_nothing_is_said_at_the_last_step() -> None:
    clock = Clock()
    assert run(_Estimate(clock(), clock=clock), clock, [0.1, 0.1], total=2) == {}
