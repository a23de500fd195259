"""What both OCPP station adapters share about their websocket: the recording and the reconnects.

:class:`RecordingSocket` is what the ``ocpp`` library gets instead of the websocket itself, so the
trace holds every frame exactly as it crossed the wire, malformed ones included. :class:`StationLink`
is the connection lifecycle of one emulated station — connect to ``url/<station id>`` with the
adapter's subprotocol, run the adapter's session, reconnect with exponential backoff — which
:mod:`emulators.ocpp16` and :mod:`emulators.ocpp201` build on. ``Record`` and ``Report`` are the
shapes of the two callables the runner gives a station: one for frames, one for events.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import websockets

Record = Callable[[str, str], None]  # (direction "to_station" | "from_station", raw frame)
Report = Callable[[str, dict], None]  # (event kind, detail)

_MAX_BACKOFF_S = 30.0


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
    connection fails or drops.
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

    async def run(self) -> None:
        """Stay connected until :meth:`stop`; reconnect with exponential backoff."""
        backoff_s = 1.0
        while not self._stopping:
            try:
                async with websockets.connect(
                    self.url, subprotocols=[self.SUBPROTOCOL], compression=None, proxy=None,
                    open_timeout=10, ping_interval=None, max_size=2**20,
                ) as ws:
                    backoff_s = 1.0
                    self._ws = ws
                    await self._session(ws)
            except asyncio.CancelledError:
                raise
            except (TimeoutError, OSError, websockets.WebSocketException) as error:
                if not self._stopping:
                    self.report("station_disconnected", {"error": repr(error)})
            self.online.clear()
            self.link = self._ws = None
            if self._stopping:
                break
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, _MAX_BACKOFF_S)

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            await self._ws.close()

    async def _session(self, ws: Any) -> None:
        raise NotImplementedError
