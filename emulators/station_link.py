"""What both OCPP station adapters share about their websocket: the recording and the reconnects.

:class:`RecordingSocket` is what the ``ocpp`` library gets instead of the websocket itself, so the
trace holds every frame exactly as it crossed the wire, malformed ones included. :class:`StationLink`
is the connection lifecycle of one emulated station — connect to ``url/<station id>`` with the
adapter's subprotocol, run the adapter's session, reconnect with exponential backoff, or stay offline while the bench holds the link down — which
:mod:`emulators.ocpp16` and :mod:`emulators.ocpp201` build on. ``Record`` and ``Report`` are the
shapes of the two callables the runner gives a station: one for frames, one for events.
:class:`StationClock` is the station's own clock: the bench's, set to the CSMS's time when a boot is accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import websockets

from bench.clock import SimClock, iso_z

Record = Callable[[str, str], None]  # (direction "to_station" | "from_station", raw frame)
Report = Callable[[str, dict], None]  # (event kind, detail)

_MAX_BACKOFF_S = 30.0


#: [s] A CSMS time this far from the station's is adopted; closer, it is jitter (or the same clock, in-process).
CLOCK_SYNC_THRESHOLD_S = 2.0


class StationClock:
    """The station's clock: the bench's simulated time plus the offset to its CSMS's clock.

    Stations set their clock from BootNotification's ``currentTime`` (1.6 §6.4, 2.0.1 B01) — so profiles a CSMS
    schedules in its own time (``startSchedule`` = its "now") take effect when it means them to, whether the CSMS
    runs on this bench's calendar (in-process), on the real date (a product by URL) or on a scaled clock of its
    own (``evbench serve --speed``). Durations are the bench's; only the origin moves.
    """

    def __init__(self, clock: SimClock) -> None:
        self._clock = clock
        self.offset_s = 0.0

    @property
    def start_epoch(self) -> float:
        return self._clock.start_epoch + self.offset_s

    def now_s(self) -> float:
        return self._clock.now_s()

    def epoch(self) -> float:
        return self._clock.epoch() + self.offset_s

    def iso(self, epoch: float | None = None) -> str:
        return iso_z(self.epoch() if epoch is None else epoch)

    def sync(self, current_time: str | None) -> float | None:
        """Adopt the CSMS's ``currentTime`` when it differs by more than the threshold; the new offset, or None."""
        try:
            when = datetime.fromisoformat(str(current_time))
        except ValueError:
            return None  # an unreadable time is the CSMS's finding (schema check), not a reason to jump
        theirs = (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()  # OCPP times are UTC
        if abs(theirs - self.epoch()) <= CLOCK_SYNC_THRESHOLD_S:
            return None
        self.offset_s = theirs - self._clock.epoch()
        return self.offset_s


class RecordingSocket:
    """The websocket as the ocpp library sees it, copying every frame to the recorder."""

    def __init__(self, ws: Any, record: Record) -> None:
        self._ws = ws
        self._record = record

    async def recv(self) -> str:
        raw = await self._ws.recv()
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        self._record("to_station", raw)
        return raw

    async def send(self, raw: str) -> None:
        self._record("from_station", raw)
        await self._ws.send(raw)


class StationLink:
    """One station's connection to its CSMS; subclasses set ``SUBPROTOCOL`` and implement ``_session``.

    ``online`` is set while a session is booted; ``link`` is the adapter's ChargePoint of the
    current session (None between sessions). ``report`` gets ``station_disconnected`` each time a
    connection fails or drops. :meth:`disconnect` cuts the link and keeps it cut until :meth:`reconnect`
    (the bench's "controller link lost"); meanwhile the station charges on with the profiles it has.
    """

    SUBPROTOCOL = ""

    def __init__(self, station_id: str, url: str, record: Record, report: Report) -> None:
        self.url = url.rstrip("/") + "/" + station_id
        self.record = record
        self.report = report
        self.link: Any = None
        self._ws: Any = None
        self.online = asyncio.Event()
        self._stopping = False
        self._link_allowed = asyncio.Event()
        self._link_allowed.set()

    clock: StationClock
    model: Any  # the adapter's StationModel

    def _set_clock(self, current_time: str | None) -> None:
        """A boot was accepted: take the CSMS's time if ours is off, the plant's profile clock with it."""
        offset = self.clock.sync(current_time)
        if offset is not None:
            self.model.clock_offset_s = offset
            self.report("station_clock_set", {"offset_s": round(offset, 3), "csms_time": current_time})

    async def run(self) -> None:
        """Stay connected until :meth:`stop`; reconnect with exponential backoff."""
        backoff_s = 1.0
        while not self._stopping:
            await self._link_allowed.wait()
            if self._stopping:
                break
            try:
                async with websockets.connect(
                    self.url, subprotocols=[self.SUBPROTOCOL], compression=None, proxy=None,
                    open_timeout=10, ping_interval=None, max_size=2**20,
                ) as ws:
                    backoff_s = 1.0
                    self._ws = ws
                    if self._link_allowed.is_set():  # not cut while the handshake was under way
                        await self._session(ws)
            except asyncio.CancelledError:
                raise
            except (TimeoutError, OSError, websockets.WebSocketException) as error:
                if not self._stopping and self._link_allowed.is_set():
                    self.report("station_disconnected", {"error": repr(error)})
            self.online.clear()
            self.link = self._ws = None
            if self._stopping:
                break
            if not self._link_allowed.is_set():
                backoff_s = 1.0
                continue  # held down: no attempts until reconnect(), then one at once
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, _MAX_BACKOFF_S)

    async def stop(self) -> None:
        self._stopping = True
        self._link_allowed.set()  # a held-down run() must wake to end
        if self._ws is not None:
            await self._ws.close()

    async def disconnect(self) -> None:
        """Close the connection and stay offline, without reconnect attempts, until :meth:`reconnect`."""
        self._link_allowed.clear()
        if self._ws is not None:
            await self._ws.close()

    def reconnect(self) -> None:
        """End a :meth:`disconnect`: connect again at once (then with the usual backoff)."""
        self._link_allowed.set()

    async def _session(self, ws: Any) -> None:
        raise NotImplementedError
