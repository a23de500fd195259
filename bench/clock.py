"""The bench's one clock: simulated time as the asyncio event loop's own time.

Everything in a run — station heartbeats, EV physics steps, the controller's poll period,
websockets' and pymodbus' internal timeouts — schedules itself on the event loop. So the
clock is the loop: :class:`SimLoop` is a selector event loop whose ``time()`` is the
simulation's time, in one of three modes:

- **virtual** (``speed=None``): when no socket is ready and nothing is still in flight, the
  loop jumps straight to its next timer instead of sleeping. A 12-hour scenario runs as fast as
  the CPU allows, and because every peer lives on this loop the interleaving depends only on the
  order of events, not on how busy the machine is: same scenario and seed, same trace.
- **scaled** (``speed=N``): time runs N times faster than the wall clock (watching a run live).
- **wall** (``speed=1``): real time, for hardware in the loop and external controllers.

Real sockets stay real: the loopback TCP connections between stations, controller host and
meter carry every byte. The only thing virtual is how long the loop waits when it has nothing
to do.
"""

from __future__ import annotations

import asyncio
import math
import os
import selectors
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable


class _VirtualSelector:
    """Wraps a real selector; when the loop would sleep, it advances simulated time instead."""

    def __init__(self, selector: selectors.BaseSelector, loop: "SimLoop") -> None:
        self._selector = selector
        self._loop = loop
        self._recent_activity = True

    def select(self, timeout: float | None = None) -> list:
        events = self._selector.select(0)
        if events or timeout == 0:
            self._recent_activity = bool(events) or self._recent_activity
            return events
        if self._recent_activity:
            # Linux delivers loopback segments inside the sender's syscall, except when softirq
            # work was deferred to ksoftirqd; yielding the CPU once lets that finish before we
            # conclude that nothing is in flight and let time jump.
            self._recent_activity = False
            os.sched_yield()
            events = self._selector.select(0)
            if events:
                self._recent_activity = True
                return events
        while self._loop._executor_jobs:
            # A worker thread will wake us through the self-pipe; time must not run ahead of it.
            events = self._selector.select(0.05)
            if events:
                self._recent_activity = True
                return events
        if timeout is None:
            # Nothing scheduled and nothing in flight: only the outside world can wake us.
            events = self._selector.select(None)
            self._recent_activity = True
            return events
        self._loop._virtual_now += timeout
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._selector, name)


class SimLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` is simulated time (see the module docstring).

    In scaled and wall mode the pace can change while the loop runs (:meth:`set_speed`,
    :meth:`pause`, :meth:`resume`, callable from any thread): simulated time stays continuous
    across a change, and while paused it stands still, so no timer fires; the loop then sleeps
    until I/O or ``call_soon_threadsafe`` wakes it. Virtual mode has no pace to change.
    """

    def __init__(self, speed: float | None = None) -> None:
        self._executor_jobs = 0
        self._virtual_now = 0.0
        self._pace_lock = threading.Lock()
        if speed is None:
            self._pace: _Pace | None = None
            selector = selectors.DefaultSelector()
            super().__init__(_VirtualSelector(selector, self))  # type: ignore[arg-type]
        else:
            super().__init__()
            try:
                check_speed(speed)
            except ValueError:
                self.close()
                raise
            now = time.monotonic()
            # Sim time starts at the monotonic clock's reading, so wall mode's time() is time.monotonic().
            self._pace = _Pace(now, now, float(speed), False)
            self._selector = _PacedSelector(self._selector, self)

    @property
    def speed(self) -> float | None:
        """Simulated seconds per wall second; None in virtual mode."""
        return None if self._pace is None else self._pace.speed

    @property
    def paused(self) -> bool:
        return self._pace is not None and self._pace.paused

    def time(self) -> float:
        pace = self._pace
        if pace is None:
            return self._virtual_now
        if pace.paused:
            return pace.sim_origin
        return pace.sim_origin + (time.monotonic() - pace.wall_origin) * pace.speed

    def set_speed(self, speed: float) -> None:
        """Run ``speed`` simulated seconds per wall second from now on; thread-safe."""
        check_speed(speed)
        self._repace(speed=float(speed))

    def pause(self) -> None:
        """Stop simulated time (timers wait) until :meth:`resume`; thread-safe."""
        self._repace(paused=True)

    def resume(self) -> None:
        self._repace(paused=False)

    def _repace(self, speed: float | None = None, paused: bool | None = None) -> None:
        if self._pace is None:
            raise RuntimeError("a virtual-time SimLoop runs as fast as it can: it has no speed to change or pause")
        with self._pace_lock:
            old = self._pace
            # One immutable pace, swapped in whole: time() on the loop thread never sees half a change.
            self._pace = _Pace(self.time(), time.monotonic(), old.speed if speed is None else speed,
                               old.paused if paused is None else paused)
        if not self.is_closed():
            # The loop may be sleeping for a timeout computed at the old pace: wake it to recompute.
            self.call_soon_threadsafe(_nothing)

    def run_in_executor(self, executor: Any, func: Callable, *args: Any) -> asyncio.Future:
        future = super().run_in_executor(executor, func, *args)
        self._executor_jobs += 1

        def _done(_: asyncio.Future) -> None:
            self._executor_jobs -= 1

        future.add_done_callback(_done)
        return future


@dataclass(frozen=True)
class _Pace:
    """Scaled/wall time: at wall ``wall_origin`` the simulation was at ``sim_origin``."""

    sim_origin: float
    wall_origin: float
    speed: float
    paused: bool


def check_speed(speed: float) -> None:
    """ValueError unless ``speed`` is a finite positive factor (simulated seconds per wall second)."""
    if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed: expected a positive factor (got {speed})")


def _nothing() -> None:
    pass


class _PacedSelector:
    """Real waiting, shortened by the speed factor; while paused, waiting for I/O only."""

    def __init__(self, selector: selectors.BaseSelector, loop: SimLoop) -> None:
        self._selector = selector
        self._loop = loop

    def select(self, timeout: float | None = None) -> list:
        pace = self._loop._pace
        assert pace is not None
        if timeout is None or timeout == 0:
            return self._selector.select(timeout)
        if pace.paused:
            return self._selector.select(None)
        return self._selector.select(timeout / pace.speed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._selector, name)


class SimClock:
    """Simulated wall-clock time of a run: the loop's time mapped onto the scenario's calendar.

    ``now_s()`` is seconds since the scenario start; ``epoch()`` is Unix time (what OCPP
    timestamps and charging profiles use).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, start_epoch: float) -> None:
        self._loop = loop
        self.start_epoch = start_epoch
        self._origin = loop.time()

    def now_s(self) -> float:
        return self._loop.time() - self._origin

    def epoch(self) -> float:
        return self.start_epoch + self.now_s()

    def iso(self, epoch: float | None = None) -> str:
        return iso_z(self.epoch() if epoch is None else epoch)

    async def sleep_until(self, t_s: float) -> None:
        delay = t_s - self.now_s()
        if delay > 0:
            await asyncio.sleep(delay)


def iso_z(epoch: float) -> str:
    """RFC 3339 UTC with a ``Z`` (some OCPP peers reject ``+00:00``; LIBRARIES.md)."""
    text = datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def run(main: Callable[[], Any], speed: float | None = None, loop: SimLoop | None = None) -> Any:
    """Run coroutine function ``main`` to completion on ``loop`` or a fresh :class:`SimLoop` at ``speed``;
    the loop is closed afterwards."""
    loop = SimLoop(speed) if loop is None else loop
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main())
    finally:
        try:
            _cancel_leftovers(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
