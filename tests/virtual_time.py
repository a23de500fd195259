"""Shared by the protocol tests: run a coroutine in virtual time, wait for observable things in it, and tap a
test CSMS's websocket."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from bench import clock as bench_clock


def virtual(main: Callable[[], Any]) -> Any:
    """Run ``main`` on a fresh SimLoop in virtual time (waiting costs no wall time)."""
    return bench_clock.run(main)


class Watch:
    """Wakes waiters whenever something observable happened (a frame, a handler call)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def poke(self) -> None:
        self._event.set()

    async def until(self, predicate: Callable[[], Any], timeout_s: float = 600.0, what: str = "") -> Any:
        """Wait (virtual seconds) until ``predicate()`` is truthy; return its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout_s} virtual s waiting for {what or predicate}")
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), remaining)
            except asyncio.TimeoutError:
                pass


class Tap:
    """The CSMS's websocket as its ChargePoint sees it: every frame in and out is logged, and the watch poked."""

    def __init__(self, ws: Any, log: list[tuple[str, str]], watch: Watch) -> None:
        self.ws = ws
        self.log = log
        self.watch = watch

    async def recv(self) -> str:
        raw = await self.ws.recv()
        self.log.append(("in", raw))
        self.watch.poke()
        return raw

    async def send(self, raw: str) -> None:
        self.log.append(("out", raw))
        self.watch.poke()
        await self.ws.send(raw)
