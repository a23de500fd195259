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
import os
import selectors
import time
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
    """An event loop whose ``time()`` is simulated time (see the module docstring)."""

    def __init__(self, speed: float | None = None) -> None:
        self.speed = speed
        self._executor_jobs = 0
        self._virtual_now = 0.0
        if speed is None:
            selector = selectors.DefaultSelector()
            super().__init__(_VirtualSelector(selector, self))  # type: ignore[arg-type]
        else:
            if speed <= 0:
                raise ValueError(f"speed: expected a positive factor (got {speed})")
            super().__init__()
            self._wall_origin = time.monotonic()
            if speed != 1:
                self._selector = _ScaledSelector(self._selector, speed)

    def time(self) -> float:
        if self.speed is None:
            return self._virtual_now
        if self.speed == 1:
            return time.monotonic()
        return self._wall_origin + (time.monotonic() - self._wall_origin) * self.speed

    def run_in_executor(self, executor: Any, func: Callable, *args: Any) -> asyncio.Future:
        future = super().run_in_executor(executor, func, *args)
        self._executor_jobs += 1

        def _done(_: asyncio.Future) -> None:
            self._executor_jobs -= 1

        future.add_done_callback(_done)
        return future


class _ScaledSelector:
    """Real waiting, shortened by the speed factor."""

    def __init__(self, selector: selectors.BaseSelector, speed: float) -> None:
        self._selector = selector
        self._speed = speed

    def select(self, timeout: float | None = None) -> list:
        return self._selector.select(None if timeout is None else timeout / self._speed)

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


def run(main: Callable[[], Any], speed: float | None = None) -> Any:
    """Run coroutine function ``main`` to completion on a fresh :class:`SimLoop`."""
    loop = SimLoop(speed)
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
