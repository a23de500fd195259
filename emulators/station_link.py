"""What both OCPP station adapters share about their websocket: the recording and the reconnects.

:class:`RecordingSocket` is what the ``ocpp`` library gets instead of the websocket itself, so the
trace holds every frame exactly as it crossed the wire, malformed ones included. :class:`StationLink`
is the connection lifecycle of one emulated station — connect to ``url/<station id>`` with the
adapter's subprotocol, run the adapter's session, reconnect with exponential backoff, or stay offline while the bench holds the link down — which
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
