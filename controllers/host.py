"""Runs an in-process controller the way a product runs: behind a real OCPP CSMS (1.6 and 2.0.1) and a Modbus client.

This module owns the product side of the wire for in-process controllers: a websockets server
that accepts charging stations at ``ws://HOST:PORT/<station id>``, answers their requests, turns
them into :mod:`controllers.api` calls, polls the site meter (and the chargers' sub-meters) over
Modbus TCP or RTU, and turns the controller's decisions into SetChargingProfile messages.

Versions. The server offers ``ocpp2.0.1`` and ``ocpp1.6`` and takes the first of those the station
also offers; the negotiated subprotocol picks the session class (:class:`_Station16` or
:class:`_Station201`). A station offering subprotocols but none of ours gets the handshake completed
without a subprotocol and is closed at once with a reason naming ours (OCPP-J 1.6 §3.2); one
offering no subprotocol at all is refused in the handshake (HTTP 400).

Decisions. A :class:`~controllers.api.Limit` becomes a TxProfile for the running transaction, with
one stable profile id per connector so that updates replace rather than accumulate (OCPP 1.6
§3.13.2; TC_K_04); limits are cut to one decimal in both versions, so a site sends the same
numbers whichever version its chargers speak. A :class:`~controllers.api.Profile` is sent as the
controller wrote it: the host checks it against the version's schema only to log a warning, then
puts exactly that payload on the wire, because a product may send wrong profiles and the bench has
to see what it sent. Both are sent again only when they change (or the station reconnects, or the
EV restates its charging needs).

Meters. Every ``meter_poll_s`` (start to start; a read slower than that delays the next one) the
host reads the site meter through :class:`~controllers.meter_client.MeterClient`, which times out,
retries and judges plausibility as a product does. A plausible read becomes ``on_site_reading``
with ``changed_at`` (when any value last changed: a frozen meter shows there); a failed one
becomes ``on_meter_unavailable``, and :attr:`ControllerHost.site_reading` keeps the last good
reading. Sub-meters (:attr:`~controllers.api.StationConfig.meter_unit`) are read on the same bus in
the same loop and become ``on_meter_sample`` with ``source`` "modbus"; a failed sub-meter read is
logged, not reported as the site meter's loss.

Battery. With a stationary battery configured (:attr:`~controllers.api.SiteConfig.battery`), its
inverter is read on the same bus in the same loop (``on_battery_reading``), and a
:class:`~controllers.api.BatterySetpoint` decision for :data:`~controllers.api.BATTERY` is written to
the inverter's power setpoint register when it changes (whole watts); a write that fails is written
again at the next allocation.

Grid signals. :meth:`ControllerHost.site_limit_changed` and :meth:`ControllerHost.grid_signal` are
how whoever runs the host (the bench, a lab's price feed) hands on what the grid operator or the
supplier said; both re-allocate at once.

It knows nothing of the bench: it takes a ``now`` callable for the time, so the same host serves
a virtual-time run and a real lab bench.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import json
import logging
import math
import time
from datetime import datetime, timezone
from typing import Any, Callable

import websockets
from ocpp import messages
from ocpp.exceptions import OCPPError
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action, AuthorizationStatus, RegistrationStatus
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from websockets.exceptions import NegotiationError

from controllers import ocpp_fastpath
from controllers.api import (
    BATTERY,
    BatteryReading,
    BatterySetpoint,
    ChargingNeeds,
    ConnectorKey,
    Controller,
    GridSignal,
    Limit,
    MeterEndpoint,
    MeterSample,
    Profile,
    Session,
    SiteReading,
)
from controllers.meter_client import InverterClient, MeterBus, MeterClient, MeterUnavailable, SiteMeterReading

ocpp_fastpath.install()
logging.getLogger("ocpp").setLevel(logging.CRITICAL)
_log = logging.getLogger("evbench.host")
_STOP_TIMEOUT_S = 5.0  # [s] of loop time a stop waits for the host's own tasks

SUBPROTOCOLS = ["ocpp2.0.1", "ocpp1.6"]  # in order of preference
_TX_PROFILE_ID_BASE = 1000  # profile id = base + connector: one id per connector, reused on updates
_FAILSAFE_PROFILE_ID = 1
# What a 2.0.1 station samples during a transaction (SampledDataCtrlr, 2.0.1 Part 2 J02): what the
# controller reads (per-phase currents, the offer, power, energy, SoC) and the energy register at
# the start and end, which make a session's energy.
_TX_UPDATED_MEASURANDS = "Current.Import,Current.Offered,Power.Active.Import,Energy.Active.Import.Register,SoC"
_TX_ENDED_MEASURANDS = "Energy.Active.Import.Register"


def _epoch(text: Any, fallback: float) -> float:
    parsed = _epoch_or_none(text)
    return fallback if parsed is None else parsed


def _epoch_or_none(text: Any) -> float | None:
    if not text or not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _select_subprotocol(connection: Any, offered: list[str]) -> str | None:
    if not offered:
        raise NegotiationError("missing subprotocol")
    # None completes the handshake without a subprotocol; _accept then closes it (OCPP-J 1.6 §3.2).
    return next((name for name in SUBPROTOCOLS if name in offered), None)


class _StationLink:
    """What a station's session offers the host whatever its version (mixed into the ChargePoint classes)."""

    host: ControllerHost
    sessions: dict[int, Session]
    version: str

    def _attach(self, station_id: str, host: ControllerHost) -> None:
        self.host = host
        # connector → running session. Kept by the host per station id, not per websocket: a
        # transaction outlives a dropped link (the station goes on charging) and must stay managed.
        self.sessions = host.sessions.setdefault(station_id, {})

    async def call_verbatim(self, action: str, payload: Any) -> None:
        """Send ``payload`` exactly as given and wait for the answer (one CALL at a time, OCPP-J 1.6 §4.1.1).

        The schema is checked only to log what is wrong: the station answers for itself.
        """
        unique_id = str(self._unique_id_generator())
        try:
            frame = messages.Call(unique_id, action, payload).to_json()
        except (TypeError, ValueError) as error:
            _log.warning("%s: the controller's %s is not JSON, not sent: %s", self.id, action, error)
            return
        try:
            await messages.validate_payload(messages.Call(unique_id, action, json.loads(frame)[3]),
                                            self._ocpp_version)
        except OCPPError as error:
            _log.warning("%s: the controller's %s breaks the OCPP %s schema (%s); sent as given",
                         self.id, action, self._ocpp_version, error)
        async with self._call_lock:
            await self._send(frame)
            await self._get_specific_response(unique_id, self._response_timeout)


class _Station16(_StationLink, ChargePoint16):
    """The CSMS side of one OCPP 1.6 station's websocket."""

    version = "1.6"

    def __init__(self, station_id: str, ws: Any, host: ControllerHost) -> None:
        super().__init__(station_id, ws, response_timeout=30)
        self._attach(station_id, host)

    async def configure(self) -> None:
        interval = self.host.controller.meter_value_interval_s
        if interval > 0:
            await self.call(call.ChangeConfiguration(key="MeterValueSampleInterval", value=str(int(interval))))
        failsafe = self.host.controller.failsafe_a(self.id)
        if failsafe is not None:
            await self.call(call.SetChargingProfile(connector_id=0, cs_charging_profiles=_profile16(
                _FAILSAFE_PROFILE_ID, 0, "TxDefaultProfile", failsafe, self.host.now(), None)))

    def tx_profile_request(self, connector_id: int, limit_a: float, now: float) -> Any:
        tx = self.sessions[connector_id].transaction_id
        return call.SetChargingProfile(connector_id=connector_id, cs_charging_profiles=_profile16(
            _TX_PROFILE_ID_BASE + connector_id, 1, "TxProfile", limit_a, now, tx))

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
            self.host.controller.on_meter_sample(_parse_sample(self.id, connector_id, entry, now), now)
        return call_result.MeterValues()


class _Station201(_StationLink, ChargePoint201):
    """The CSMS side of one OCPP 2.0.1 station's websocket; connector ids here are EVSE ids."""

    version = "2.0.1"

    def __init__(self, station_id: str, ws: Any, host: ControllerHost) -> None:
        super().__init__(station_id, ws, response_timeout=30)
        self._attach(station_id, host)

    async def configure(self) -> None:
        interval = self.host.controller.meter_value_interval_s
        if interval > 0:
            await self.call(call201.SetVariables(set_variable_data=[
                _sampled_data_variable("TxUpdatedInterval", str(int(interval))),
                _sampled_data_variable("TxUpdatedMeasurands", _TX_UPDATED_MEASURANDS),
                _sampled_data_variable("TxStartedMeasurands", _TX_ENDED_MEASURANDS),
                _sampled_data_variable("TxEndedMeasurands", _TX_ENDED_MEASURANDS),
            ]))
        failsafe = self.host.controller.failsafe_a(self.id)
        if failsafe is not None:
            await self.call(call201.SetChargingProfile(evse_id=0, charging_profile=_profile201(
                _FAILSAFE_PROFILE_ID, 0, "TxDefaultProfile", failsafe, self.host.now(), None)))

    def tx_profile_request(self, connector_id: int, limit_a: float, now: float) -> Any:
        tx = self.sessions[connector_id].transaction_id
        return call201.SetChargingProfile(evse_id=connector_id, charging_profile=_profile201(
            _TX_PROFILE_ID_BASE + connector_id, 1, "TxProfile", limit_a, now, tx))

    @on(Action201.boot_notification)
    def on_boot(self, charging_station: dict, **_: Any):
        now = self.host.now()
        self.host.controller.on_station_booted(self.id, charging_station.get("vendor_name", ""),
                                               charging_station.get("model", ""), now)
        return result201.BootNotification(current_time=_iso(now), interval=self.host.heartbeat_s, status="Accepted")

    @after(Action201.boot_notification)
    def after_boot(self, **_: Any):
        self.host.configure(self)

    @on(Action201.heartbeat)
    def on_heartbeat(self, **_: Any):
        return result201.Heartbeat(current_time=_iso(self.host.now()))

    @on(Action201.status_notification)
    def on_status(self, connector_status: str, evse_id: int, **_: Any):
        self.host.controller.on_status(self.id, evse_id, connector_status, self.host.now())
        return result201.StatusNotification()

    @on(Action201.authorize)
    def on_authorize(self, **_: Any):
        return result201.Authorize(id_token_info={"status": "Accepted"})

    @on(Action201.transaction_event)
    def on_transaction_event(self, event_type: str, timestamp: str, transaction_info: dict,
                             evse: dict | None = None, id_token: dict | None = None,
                             meter_value: list | None = None, **_: Any):
        now = self.host.now()
        tx = transaction_info["transaction_id"]
        evse_id = evse["id"] if evse else self._evse_of(tx)
        if evse_id is None:
            _log.warning("%s: TransactionEvent %s for unknown transaction %s without an evse", self.id, event_type, tx)
        elif event_type == "Started":
            self._started(evse_id, tx, id_token, timestamp, meter_value or [], now)
        elif event_type == "Updated":
            self._samples(evse_id, meter_value or [], now)
        elif event_type == "Ended":
            self._ended(evse_id, tx, meter_value or [], now)
        return result201.TransactionEvent(id_token_info={"status": "Accepted"} if id_token else None)

    def _evse_of(self, tx: str) -> int | None:
        return next((evse_id for evse_id, s in self.sessions.items() if s.transaction_id == tx), None)

    def _started(self, evse_id: int, tx: str, id_token: dict | None, timestamp: str, meter_value: list,
                 now: float) -> None:
        known = self.sessions.get(evse_id)
        if known is not None and known.transaction_id == tx:
            return  # the same Started again (resent from the station's offline queue)
        register = _register_wh(self.id, evse_id, meter_value, now)
        id_tag = id_token.get("id_token", "") if id_token else ""
        session = Session(self.id, evse_id, tx, id_tag, _epoch(timestamp, now), register or 0.0)
        self.sessions[evse_id] = session
        if register is not None:
            self.host.registers_wh[(self.id, evse_id)] = register
        self.host.controller.on_session_started(session, now)
        self.host.wake()

    def _ended(self, evse_id: int, tx: str, meter_value: list, now: float) -> None:
        session = self.sessions.get(evse_id)
        if session is None or session.transaction_id != tx:
            return
        key = (self.id, evse_id)
        del self.sessions[evse_id]
        self.host.sent.pop(key, None)
        last = self.host.registers_wh.pop(key, None)
        register = _register_wh(self.id, evse_id, meter_value, now)
        if register is None:
            register = last if last is not None else session.meter_start_wh
        self.host.controller.on_session_ended(session, register - session.meter_start_wh, now)
        self.host.wake()

    def _samples(self, evse_id: int, meter_value: list, now: float) -> None:
        for entry in meter_value:
            sample = _parse_sample(self.id, evse_id, entry, now)
            if sample.energy_wh is not None and evse_id in self.sessions:
                self.host.registers_wh[(self.id, evse_id)] = sample.energy_wh
            self.host.controller.on_meter_sample(sample, now)

    @on(Action201.meter_values)
    def on_meter_values(self, evse_id: int, meter_value: list, **_: Any):
        self._samples(evse_id, meter_value, self.host.now())
        return result201.MeterValues()

    @on(Action201.notify_ev_charging_needs)
    def on_charging_needs(self, evse_id: int, charging_needs: dict, **_: Any):
        now = self.host.now()
        session = self.sessions.get(evse_id)
        phases = self.host.controller.site.station(self.id).phases
        needs = _parse_needs(self.id, evse_id, session.transaction_id if session else None, charging_needs,
                             phases, now)
        self.host.controller.on_charging_needs(needs, now)
        # The EV waits for a schedule (K15–K17): send the decision for this EVSE again, even if unchanged.
        self.host.sent.pop((self.id, evse_id), None)
        self.host.sent_profiles.pop((self.id, evse_id), None)
        self.host.wake()
        return result201.NotifyEVChargingNeeds(status="Accepted")

    @on(Action201.notify_ev_charging_schedule)
    def on_charging_schedule(self, **_: Any):
        return result201.NotifyEVChargingSchedule(status="Accepted")

    @on(Action201.report_charging_profiles)
    def on_report_charging_profiles(self, **_: Any):
        return result201.ReportChargingProfiles()

    @on(Action201.notify_charging_limit)
    def on_notify_charging_limit(self, **_: Any):
        return result201.NotifyChargingLimit()

    @on(Action201.notify_event)
    def on_notify_event(self, **_: Any):
        return result201.NotifyEvent()

    @on(Action201.notify_report)
    def on_notify_report(self, **_: Any):
        return result201.NotifyReport()


_SESSION_CLASSES = {"ocpp1.6": _Station16, "ocpp2.0.1": _Station201}


def _parse_sample(station_id: str, connector_id: int, entry: dict, now: float) -> MeterSample:
    """One meterValue entry of either version (1.6: strings and ``unit``; 2.0.1: numbers and ``unitOfMeasure``)."""
    currents: dict[str, float] = {}
    fields: dict[str, float] = {}
    for value in entry.get("sampled_value", []):
        unit_of_measure = value.get("unit_of_measure") or {}
        try:
            number = float(value["value"]) * 10.0 ** int(unit_of_measure.get("multiplier", 0))
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
        measurand = value.get("measurand", "Energy.Active.Import.Register")
        unit = value.get("unit", unit_of_measure.get("unit"))
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


def _register_wh(station_id: str, connector_id: int, meter_value: list, now: float) -> float | None:
    """The last energy register reading in a list of meterValue entries, if any."""
    registers = [s.energy_wh for s in (_parse_sample(station_id, connector_id, e, now) for e in meter_value)
                 if s.energy_wh is not None]
    return registers[-1] if registers else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


_PHASES = {"AC_single_phase": 1, "AC_two_phase": 2, "AC_three_phase": 3}


def _parse_needs(station_id: str, evse_id: int, tx: int | str | None, needs: dict, default_phases: int,
                 now: float) -> ChargingNeeds:
    """A NotifyEVChargingNeeds ``chargingNeeds`` (snake_case keys); what is absent or unreadable becomes None."""
    ac = needs.get("ac_charging_parameters") or {}
    dc = needs.get("dc_charging_parameters") or {}
    custom = needs.get("custom_data") or {}
    if custom.get("vendor_id") != "org.evbench":
        custom = {}
    min_soc = _number(custom.get("ev_min_soc"))
    return ChargingNeeds(
        station_id=station_id,
        connector_id=evse_id,
        transaction_id=tx,
        received_at=now,
        departure=_epoch_or_none(needs.get("departure_time")),
        energy_wh=_number(ac.get("energy_amount", dc.get("energy_amount"))),
        min_current_a=_number(ac.get("ev_min_current")),
        max_current_a=_number(ac.get("ev_max_current")),
        phases=_PHASES.get(needs.get("requested_energy_transfer", ""), default_phases),
        discharge_max_current_a=_number(custom.get("ev_max_discharge_current")) or 0.0,
        min_soc=None if min_soc is None else min_soc / 100.0,  # percent, as OCPP's SoC measurand
    )


def _sampled_data_variable(name: str, value: str) -> dict:
    return {"component": {"name": "SampledDataCtrlr"}, "variable": {"name": name}, "attribute_value": value}


class ControllerHost:
    """An in-process controller behind a real OCPP 1.6 / 2.0.1 server and a real Modbus client.

    ``meter`` is the site meter to poll; None takes the installer's (``controller.site.meter``),
    and with neither no meter is read.
    """

    def __init__(self, controller: Controller, *, host: str = "127.0.0.1", port: int = 0,
                 meter: MeterEndpoint | None = None, now: Callable[[], float] = time.time,
                 heartbeat_s: int = 300) -> None:
        self.controller = controller
        self.host, self.port = host, port
        self.meter = meter if meter is not None else controller.site.meter
        self.site_reading: SiteReading | None = None  # the last good read of the site meter
        self._site_changed: tuple[SiteMeterReading, float] | None = None  # the last values and when they showed
        self._sub_meters_down: set[str] = set()
        self._inverter: InverterClient | None = None
        self._inverter_down = False
        self.sent_battery_w: float | None = None  # the last power setpoint written to the battery inverter
        self.now = now
        self.heartbeat_s = heartbeat_s
        self.stations: dict[str, _Station16 | _Station201] = {}
        self.sessions: dict[str, dict[int, Session]] = {}
        self.sent: dict[ConnectorKey, float] = {}  # last limit sent per connector
        self.sent_profiles: dict[ConnectorKey, dict] = {}  # last whole profile sent per connector
        self.registers_wh: dict[ConnectorKey, float] = {}  # last energy register of a 2.0.1 transaction
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
                                              select_subprotocol=_select_subprotocol,
                                              compression=None, ping_interval=None, max_size=2**20)
        self.port = self._server.sockets[0].getsockname()[1]
        self._tasks.append(asyncio.create_task(self._allocation_loop()))
        if self.meter is not None and self.controller.meter_poll_s > 0:
            bus, site, sub_meters = self._meter_clients(self.meter)
            battery = self.controller.site.battery
            if battery is not None:
                self._inverter = InverterClient(dataclasses.replace(self.meter, unit_id=battery.unit_id,
                                                                    model=battery.model), bus)
            self._tasks.append(asyncio.create_task(self._meter_loop(bus, site, sub_meters)))
        return self.url

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._inflight]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: in scaled time a cancelled meter poll was seen (1 run in ~5) never to finish
            # cancelling, and a stop must never hang the bench; what does not end in time is left behind.
            _, stuck = await asyncio.wait(tasks, timeout=_STOP_TIMEOUT_S)
            for task in stuck:
                _log.warning("host task %s did not stop within %g s", task.get_name(), _STOP_TIMEOUT_S)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def wake(self) -> None:
        """Re-run allocation now (a session started or ended, an EV stated its needs)."""
        self._wake.set()

    def site_limit_changed(self, limit_a: float) -> None:
        """A grid signal reached the site: pass it to the controller and re-allocate."""
        self.controller.on_site_limit(limit_a, self.now())
        self.wake()

    def grid_signal(self, signal: GridSignal) -> None:
        """The known prices or PV forecast changed: pass all of it to the controller and re-allocate."""
        self.controller.on_grid_signal(signal, self.now())
        self.wake()

    # -- stations ---------------------------------------------------------------------------------

    async def _accept(self, ws: Any) -> None:
        station_id = ws.request.path.rstrip("/").rsplit("/", 1)[-1]
        session_class = _SESSION_CLASSES.get(ws.subprotocol)
        if session_class is None or not station_id:
            await ws.close(1002, f"expected subprotocol {' or '.join(SUBPROTOCOLS)} and a station id in the path")
            return
        session = session_class(station_id, ws, self)
        self.stations[station_id] = session
        self.controller.on_station_connected(station_id, session.version, self.now())
        try:
            await session.start()
        except websockets.ConnectionClosed:
            pass
        finally:
            if self.stations.get(station_id) is session:
                del self.stations[station_id]
            for connector_id in session.sessions:
                self.sent.pop((station_id, connector_id), None)
            for key in [key for key in self.sent_profiles if key[0] == station_id]:
                del self.sent_profiles[key]
            self.controller.on_station_disconnected(station_id, self.now())

    def configure(self, session: _Station16 | _Station201) -> None:
        """After a boot: sampling and the failsafe default profile (what products do)."""
        self._spawn(self._configure(session))

    async def _configure(self, session: _Station16 | _Station201) -> None:
        try:
            await session.configure()
        except (websockets.ConnectionClosed, asyncio.TimeoutError):
            pass

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    # -- decisions ----------------------------------------------------------------------------------

    async def _allocation_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.controller.period_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                wanted = dict(self.controller.allocate(self.now()))
            except Exception as error:  # a controller bug must not stop the CSMS
                _log.exception("controller.allocate failed: %s", error)
                continue
            for key, decision in wanted.items():
                if key == BATTERY:
                    if isinstance(decision, BatterySetpoint):
                        self._send_battery_setpoint(decision)
                    else:
                        _log.error("controller.allocate returned %r for the battery, not a BatterySetpoint", decision)
                    continue
                try:
                    station_id, connector_id = key
                except (TypeError, ValueError):
                    _log.error("controller.allocate returned a decision for %r, not (station id, connector id)", key)
                    continue
                if isinstance(decision, Limit):
                    self._send_limit(station_id, connector_id, decision)
                elif isinstance(decision, Profile):
                    self._send_profile(station_id, connector_id, decision)
                else:
                    _log.error("controller.allocate returned %r for %r, not a Limit or a Profile", decision, key)

    def _send_limit(self, station_id: str, connector_id: int, limit: Limit) -> None:
        session = self.stations.get(station_id)
        if session is None or connector_id not in session.sessions:
            return
        limit_a = math.floor(max(limit.limit_a, 0.0) * 10) / 10  # the 1.6 schema allows one decimal
        if self.sent.get((station_id, connector_id)) == limit_a:
            return
        self.sent[(station_id, connector_id)] = limit_a
        request = session.tx_profile_request(connector_id, limit_a, self.now())
        self._spawn(self._set_limit(session, connector_id, limit_a, request))

    async def _set_limit(self, session: _Station16 | _Station201, connector_id: int, limit_a: float,
                         request: Any) -> None:
        answer = None
        try:
            answer = await session.call(request)
        except (websockets.ConnectionClosed, asyncio.TimeoutError):
            pass
        if answer is None or answer.status != "Accepted":
            # Not in force on the station: forget it, so the next allocation sends it again.
            key = (session.id, connector_id)
            if self.sent.get(key) == limit_a:
                del self.sent[key]

    def _send_battery_setpoint(self, setpoint: BatterySetpoint) -> None:
        inverter = self._inverter
        power_w = _number(setpoint.power_w)
        if inverter is None or power_w is None:
            if power_w is None:
                _log.error("controller.allocate returned a battery setpoint of %r W, not sent", setpoint.power_w)
            return
        power_w = float(round(power_w))
        if self.sent_battery_w == power_w:
            return
        self.sent_battery_w = power_w
        self._spawn(self._write_battery_setpoint(inverter, power_w))

    async def _write_battery_setpoint(self, inverter: InverterClient, power_w: float) -> None:
        try:
            await inverter.write_power_setpoint(power_w)
        except MeterUnavailable as error:
            _log.warning("battery setpoint %g W not written: %s", power_w, error)
            if self.sent_battery_w == power_w:
                self.sent_battery_w = None  # not in force: the next allocation writes it again

    def _send_profile(self, station_id: str, connector_id: int, profile: Profile) -> None:
        session = self.stations.get(station_id)
        key = (station_id, connector_id)
        if session is None or self.sent_profiles.get(key) == profile.payload:
            return
        # A copy: a controller that edits its dict in place has changed its decision.
        self.sent_profiles[key] = copy.deepcopy(profile.payload)
        self._spawn(self._set_profile(session, profile.payload))

    async def _set_profile(self, session: _Station16 | _Station201, payload: dict) -> None:
        # Sent once per change, whatever the answer: re-sending a refused profile would only flood the station.
        try:
            await session.call_verbatim("SetChargingProfile", payload)
        except (websockets.ConnectionClosed, asyncio.TimeoutError):
            pass

    # -- site meter -------------------------------------------------------------------------------

    def _meter_clients(self, site: MeterEndpoint) -> tuple[MeterBus, MeterClient, dict[str, MeterClient]]:
        """The bus, the site meter's client and each sub-meter's; a map that will not load raises here."""
        bus = MeterBus(site)
        sub_meters = {
            station.id: MeterClient(dataclasses.replace(site, unit_id=station.meter_unit,
                                                        model=station.meter_model or site.model), bus=bus)
            for station in self.controller.site.stations if station.meter_unit is not None
        }
        return bus, MeterClient(site, bus=bus), sub_meters

    async def _meter_loop(self, bus: MeterBus, site: MeterClient, sub_meters: dict[str, MeterClient]) -> None:
        loop = asyncio.get_running_loop()
        try:
            next_poll = loop.time()
            while True:
                try:
                    await self._read_site_meter(site)
                    for station_id, client in sub_meters.items():
                        await self._read_sub_meter(station_id, client)
                    if self._inverter is not None:
                        await self._read_inverter(self._inverter)
                except Exception as error:  # a controller bug in a hook must not stop the polling
                    _log.exception("meter poll failed: %s", error)
                next_poll = max(next_poll + self.controller.meter_poll_s, loop.time())
                await asyncio.sleep(next_poll - loop.time())
        finally:
            await bus.close()

    async def _read_site_meter(self, client: MeterClient) -> None:
        try:
            values = await client.read()
        except MeterUnavailable as error:
            self.controller.on_meter_unavailable(str(error), self.now())
            return
        now = self.now()
        if self._site_changed is None or self._site_changed[0] != values:
            self._site_changed = (values, now)
        self.site_reading = SiteReading(now, values.currents_a, values.power_w, values.import_kwh, values.voltages_v,
                                        values.export_kwh, values.frequency_hz, changed_at=self._site_changed[1])
        self.controller.on_site_reading(self.site_reading, now)

    async def _read_inverter(self, client: InverterClient) -> None:
        try:
            values = await client.read()
        except MeterUnavailable as error:
            if not self._inverter_down:  # log a failure once, not every poll
                self._inverter_down = True
                _log.warning("battery inverter read failed: %s", error)
            return
        self._inverter_down = False
        now = self.now()
        self.controller.on_battery_reading(BatteryReading(now, values.soc, values.power_w), now)

    async def _read_sub_meter(self, station_id: str, client: MeterClient) -> None:
        try:
            values = await client.read()
        except MeterUnavailable as error:
            if station_id not in self._sub_meters_down:  # log a failure once, not every poll
                self._sub_meters_down.add(station_id)
                _log.warning("%s: sub-meter read failed: %s", station_id, error)
            return
        self._sub_meters_down.discard(station_id)
        now = self.now()
        self.controller.on_meter_sample(MeterSample(station_id, 1, now, values.currents_a, power_w=values.power_w,
                                                    energy_wh=values.import_kwh * 1000.0, source="modbus"), now)


def _profile16(profile_id: int, stack_level: int, purpose: str, limit_a: float, now: float, tx: Any) -> dict:
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


def _profile201(profile_id: int, stack_level: int, purpose: str, limit_a: float, now: float, tx: Any) -> dict:
    profile = {
        "id": profile_id,
        "stack_level": stack_level,
        "charging_profile_purpose": purpose,
        "charging_profile_kind": "Absolute",
        "charging_schedule": [{
            "id": profile_id,
            "charging_rate_unit": "A",
            "start_schedule": _iso(now - 1),
            "charging_schedule_period": [{"start_period": 0, "limit": round(limit_a, 1)}],
        }],
    }
    if tx is not None:
        profile["transaction_id"] = tx
    return profile
