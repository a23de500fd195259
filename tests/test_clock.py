"""SimLoop's pace in scaled and wall mode: speed changes, pause and resume keep simulated time continuous.

The pace arithmetic is checked against a fake monotonic clock (exact, no wall time); that a paused loop fires no
timer and wakes for a resume is checked on a running loop, where only the order of things is asserted.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from bench import clock as bench_clock
from bench.clock import SimLoop


class FakeWall:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> FakeWall:
    fake = FakeWall()
    monkeypatch.setattr(bench_clock, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


def test_speed_changes_keep_simulated_time_continuous(wall: FakeWall) -> None:
    loop = SimLoop(10)
    try:
        t0 = loop.time()
        wall.now += 1
        assert loop.time() == pytest.approx(t0 + 10)
        loop.set_speed(2)
        assert loop.time() == pytest.approx(t0 + 10)  # no jump at the change
        wall.now += 1
        assert loop.time() == pytest.approx(t0 + 12)
        assert loop.speed == 2
    finally:
        loop.close()


def test_pause_stops_simulated_time_and_resume_goes_on_from_there(wall: FakeWall) -> None:
    loop = SimLoop(5)
    try:
        t0 = loop.time()
        wall.now += 1
        loop.pause()
        assert loop.paused
        wall.now += 100
        assert loop.time() == pytest.approx(t0 + 5)
        loop.set_speed(50)  # a change while paused applies from the resume
        wall.now += 100
        assert loop.time() == pytest.approx(t0 + 5)
        loop.resume()
        wall.now += 1
        assert loop.time() == pytest.approx(t0 + 55)
    finally:
        loop.close()


def test_wall_mode_is_the_monotonic_clock_until_its_pace_changes(wall: FakeWall) -> None:
    loop = SimLoop(1)
    try:
        assert loop.time() == wall.now
        wall.now += 3
        assert loop.time() == wall.now
    finally:
        loop.close()


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_speed_must_be_a_positive_finite_factor(bad: float) -> None:
    with pytest.raises(ValueError, match="speed"):
        SimLoop(bad)
    loop = SimLoop(1)
    try:
        with pytest.raises(ValueError, match="speed"):
            loop.set_speed(bad)
    finally:
        loop.close()


def test_virtual_time_has_no_pace_to_change() -> None:
    loop = SimLoop(None)
    try:
        for change in (loop.pause, loop.resume, lambda: loop.set_speed(2)):
            with pytest.raises(RuntimeError, match="virtual"):
                change()
    finally:
        loop.close()


def test_a_paused_loop_fires_no_timer_until_resumed_from_another_thread() -> None:
    fired: list[str] = []

    async def main() -> None:
        loop = bench_clock.asyncio.get_running_loop()
        assert isinstance(loop, SimLoop)
        loop.pause()
        paused_at = loop.time()
        # 1 simulated second is a millisecond at this speed: only a standing clock keeps it from firing.
        loop.call_later(1.0, fired.append, "timer")
        checked = bench_clock.asyncio.Event()

        def from_outside() -> None:
            # Runs on the loop (woken by call_soon_threadsafe) while it is still paused.
            fired.append("checked")
            assert loop.time() == paused_at
            checked.set()

        def remote_control() -> None:
            threading.Event().wait(0.2)
            loop.call_soon_threadsafe(from_outside)
            threading.Event().wait(0.05)
            loop.resume()

        thread = threading.Thread(target=remote_control)
        thread.start()
        await checked.wait()
        await bench_clock.asyncio.sleep(2.0)
        thread.join()

    bench_clock.run(main, speed=1000)
    assert fired == ["checked", "timer"]
