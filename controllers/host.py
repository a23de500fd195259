"""Runs an in-process controller the way a product runs: behind a real OCPP 1.6 CSMS and a Modbus client.

This module owns the product side of the wire for in-process controllers: a websockets server
that accepts charging stations at ``ws://HOST:PORT/<station id>`` (subprotocol ``ocpp1.6``),
answers their requests, turns them into :mod:`controllers.api` calls, polls the site meter over
Modbus TCP, and turns the controller's decisions into SetChargingProfile messages — a TxProfile
when a transaction runs, with one stable profile id per connector so that updates replace
rather than accumulate (OCPP 1.6 §3.13.2; TC_K_04).

It knows nothing of the bench: it takes a ``now`` callable for the time, so the same host serves
a virtual-time run and a real lab bench.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from datetime import datetime, timezone
from typing import Any, Callable

import websockets
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action, AuthorizationStatus, RegistrationStatus

from controllers.api import Controller, Limit, MeterSample, Session, SiteReading
from controllers.meter_client import MeterUnavailable, SDM630Client
from controllers import ocpp_fastpath

ocpp_fastpath.install()
logging.getLogger("ocpp").setLevel(logging.CRITICAL)

SUBPROTOCOLS = ["ocpp1.6"]
_TX_PROFILE_ID_BASE = 1000  # profile id = base + connector: one id per connector, reused on updates
_FAILSAFE_PROFILE_ID = 1


def _epoch(text: str | None, fallback: float) -> float:
    if not text:
        return fallback
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return fallback


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class _StationSession(ChargePoint):
    """The CSMS side of one station's websocket."""

    def __init__(self, station_id: str, ws: Any, host: "ControllerHost") -> None:
        super().__init__(station_id, ws, response_timeout=30)
        self.host = host
        # connector → running session. Kept by the host per station id, not per websocket: a
        # transaction outlives a dropped link (the station goes on charging) and must stay managed.
        self.sessions: dict[int, Session] = host.sessions.setdefault(station_id, {})

    @on(Action.boot_notification)
    def on_boot(self, charge_point_vendor: str, charge_point_model: str, **_: Any):
        now = self.host.now()
        self.host.controller.on_station_booted(self.id, charge_point_vendor, charge_point_model, now)
        return call_result.BootNotification(current_time=_iso(now), interval=self.host.heartbeat_s,
                                            status=RegistrationStatus.accepted)

    @after(Action.boot_notification)
    def after_boot(self, **_: Any):
        self.host.configure(self)

    @on(Action.heartbeat)
    def on_heartbeat(self, **_: Any):
        return call_result.Heartbeat(current_time=_iso(self.host.now()))

    @on(Action.status_notification)
    def on_status(self, connector_id: int, status: str, **_: Any):
        self.host.controller.on_status(self.id, connector_id, status, self.host.now())
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_tag: str, **_: Any):
        return call_result.Authorize(id_tag_info={"status": AuthorizationStatus.accepted})

    @on(Action.start_transaction)
    def on_start_transaction(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **_: Any):
        now = self.host.now()
        tx = next(self.host.transaction_ids)
        session = Session(self.id, connector_id, tx, id_tag, _epoch(timestamp, now), float(meter_start))
        self.sessions[connector_id] = session
        self.host.controller.on_session_started(session, now)
        self.host.wake()
        return call_result.StartTransaction(transaction_id=tx, id_tag_info={"status": AuthorizationStatus.accepted})

    @on(Action.stop_transaction)
    def on_stop_transaction(self, meter_stop: int, timestamp: str, transaction_id: int, **_: Any):
        now = self.host.now()
        for connector_id, session in list(self.sessions.items()):
            if session.transaction_id == transaction_id:
                del self.sessions[connector_id]
                self.host.sent.pop((self.id, connector_id), None)
                self.host.controller.on_session_ended(session, float(meter_stop) - session.meter_start_wh, now)
                self.host.wake()
        return call_result.StopTransaction(id_tag_info={"status": AuthorizationStatus.accepted})

    @on(Action.meter_values)
    def on_meter_values(self, connector_id: int, meter_value: list, **_: Any):
        now = self.host.now()
        for entry in meter_value:
            sample = _parse_sample(self.id, connector_id, entry, now)
            if sample is not None:
                self.host.controller.on_meter_sample(sample, now)
        return call_result.MeterValues()


def _parse_sample(station_id: str, connector_id: int, entry: dict, now: float) -> MeterSample | None:
    currents: dict[str, float] = {}
    fields: dict[str, float] = {}
    for value in entry.get("sampled_value", []):
        try:
            number = float(value["value"])
        except (KeyError, TypeError, ValueError):
            continue
        measurand = value.get("measurand", "Energy.Active.Import.Register")
        unit = value.get("unit")
        if measurand == "Current.Import" and value.get("phase"):
            currents[value["phase"][:2]] = number
        elif measurand == "Current.Import":
            currents.setdefault("L1", number)
        elif measurand == "Current.Offered":
            fields["offered_a"] = number
        elif measurand == "Power.Active.Import":
            fields["power_w"] = number * 1000 if unit == "kW" else number
        elif measurand == "Energy.Active.Import.Register":
            fields["energy_wh"] = number * 1000 if unit == "kWh" else number
        elif measurand == "SoC":
            fields["soc"] = number / 100.0
    phase_currents = tuple(currents[p] for p in ("L1", "L2", "L3") if p in currents) or None
    return MeterSample(station_id, connector_id, _epoch(entry.get("timestamp"), now), phase_currents,
                       fields.get("offered_a"), fields.get("power_w"), fields.get("energy_wh"), fields.get("soc"))


class ControllerHost:
    """An in-process controller behind a real OCPP 1.6 server and a real Modbus client."""

    def __init__(self, controller: Controller, *, host: str = "127.0.0.1", port: int = 0,
                 meter: tuple[str, int, int] | None = None, now: Callable[[], float] = time.time,
                 heartbeat_s: int = 300) -> None:
        self.controller = controller
        self.host, self.port = host, port
        self.meter = meter
        self.now = now
        self.heartbeat_s = heartbeat_s
        self.stations: dict[str, _StationSession] = {}
        self.sessions: dict[str, dict[int, Session]] = {}
        self.sent: dict[tuple[str, int], float] = {}  # last limit sent per connector
        self.transaction_ids = itertools.count(1)
        self._server: Any = None
        self._tasks: list[asyncio.Task] = []
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> str:
        self._server = await websockets.serve(self._accept, self.host, self.port, subprotocols=SUBPROTOCOLS,
                                              compression=None, ping_interval=None, max_size=2**20)
        self.port = self._server.sockets[0].getsockname()[1]
        self._tasks.append(asyncio.create_task(self._allocation_loop()))
        if self.meter is not None and self.controller.meter_poll_s > 0:
            self._tasks.append(asyncio.create_task(self._meter_loop()))
        return self.url

    async def stop(self) -> None:
        for task in (*self._tasks, *self._inflight):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._inflight, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def wake(self) -> None:
        """Re-run allocation now (a session started or ended)."""
        self._wake.set()

    def site_limit_changed(self, limit_a: float) -> None:
        """A grid signal reached the site: pass it to the controller and re-allocate."""
        self.controller.on_site_limit(limit_a, self.now())
        self.wake()

    # -- stations ---------------------------------------------------------------------------------

    async def _accept(self, ws: Any) -> None:
        station_id = ws.request.path.rstrip("/").rsplit("/", 1)[-1]
        if ws.subprotocol not in SUBPROTOCOLS or not station_id:
            await ws.close(1002, "expected subprotocol ocpp1.6 and a station id in the path")
            return
        session = _StationSession(station_id, ws, self)
        self.stations[station_id] = session
        try:
            await session.start()
        except websockets.ConnectionClosed:
            pass
        finally:
            if self.stations.get(station_id) is session:
                del self.stations[station_id]
            for connector_id in session.sessions:
                self.sent.pop((station_id, connector_id), None)
            self.controller.on_station_disconnected(station_id, self.now())

    def configure(self, session: _StationSession) -> None:
        """After a boot: sampling interval and the failsafe default profile (what products do)."""
        task = asyncio.create_task(self._configure(session))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _configure(self, session: _StationSession) -> None:
        interval = self.controller.meter_value_interval_s
        try:
            if interval > 0:
                await session.call(call.ChangeConfiguration(key="MeterValueSampleInterval", value=str(int(interval))))
            failsafe = self.controller.failsafe_a(session.id)
            if failsafe is not None:
                await session.call(call.SetChargingProfile(connector_id=0, cs_charging_profiles=_profile(
                    _FAILSAFE_PROFILE_ID, 0, "TxDefaultProfile", failsafe, self.now(), None)))
        except (websockets.ConnectionClosed, asyncio.TimeoutError):
            pass

    # -- decisions ----------------------------------------------------------------------------------

    async def _allocation_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.controller.period_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                wanted = self.controller.allocate(self.now())
            except Exception as error:  # a controller bug must not stop the CSMS
                logging.getLogger("evbench.host").exception("controller.allocate failed: %s", error)
                continue
            for (station_id, connector_id), limit in wanted.items():
                self._send_limit(station_id, connector_id, limit)

    def _send_limit(self, station_id: str, connector_id: int, limit: Limit) -> None:
        session = self.stations.get(station_id)
        if session is None or connector_id not in session.sessions:
            return
        limit_a = math.floor(max(limit.limit_a, 0.0) * 10) / 10  # the 1.6 schema allows one decimal
        if self.sent.get((station_id, connector_id)) == limit_a:
            return
        self.sent[(station_id, connector_id)] = limit_a
        tx = session.sessions[connector_id].transaction_id
        profile = _profile(_TX_PROFILE_ID_BASE + connector_id, 1, "TxProfile", limit_a, self.now(), tx)
        task = asyncio.create_task(self._set_limit(session, connector_id, limit_a, profile))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _set_limit(self, session: _StationSession, connector_id: int, limit_a: float, profile: dict) -> None:
        answer = None
        try:
            answer = await session.call(call.SetChargingProfile(connector_id=connector_id,
                                                                cs_charging_profiles=profile))
        except (websockets.ConnectionClosed, asyncio.TimeoutError):
            pass
        if answer is None or answer.status != "Accepted":
            # Not in force on the station: forget it, so the next allocation sends it again.
            key = (session.id, connector_id)
            if self.sent.get(key) == limit_a:
                del self.sent[key]

    # -- site meter -------------------------------------------------------------------------------

    async def _meter_loop(self) -> None:
        host, port, unit = self.meter  # type: ignore[misc]
        client = SDM630Client(host, port, device_id=unit)
        try:
            while True:
                try:
                    reading = await client.read()
                    now = self.now()
                    self.controller.on_site_reading(
                        SiteReading(now, reading.currents_a, reading.power_w, reading.import_kwh), now)
                except MeterUnavailable as error:
                    self.controller.on_meter_unavailable(str(error), self.now())
                await asyncio.sleep(self.controller.meter_poll_s)
        finally:
            await client.close()


def _profile(profile_id: int, stack_level: int, purpose: str, limit_a: float, now: float, tx: Any) -> dict:
    profile = {
        "charging_profile_id": profile_id,
        "stack_level": stack_level,
        "charging_profile_purpose": purpose,
        "charging_profile_kind": "Absolute",
        "charging_schedule": {
            "charging_rate_unit": "A",
            "start_schedule": _iso(now - 1),
            "charging_schedule_period": [{"start_period": 0, "limit": round(limit_a, 1)}],
        },
    }
    if tx is not None:
        profile["transaction_id"] = tx
    return profile
