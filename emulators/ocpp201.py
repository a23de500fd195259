"""OCPP 2.0.1 for an emulated charging station: translation between the wire and the station model.

This module owns the station side of OCPP 2.0.1 (JSON over websockets, subprotocol ``ocpp2.0.1``), the twin of
:mod:`emulators.ocpp16` on the same pure core: the connection and its reconnects, BootNotification, Heartbeat,
StatusNotification, Authorize, TransactionEvent (Started/Updated/Ended with meter values per phase), clock-aligned
MeterValues, Get/SetVariables for the variables it implements (:class:`_DeviceModel`), the smart-charging messages
(Set/Clear/GetChargingProfiles, ReportChargingProfiles, GetCompositeSchedule), Request Start/Stop, ISO 15118 charging
needs and schedules (NotifyEVChargingNeeds, NotifyEVChargingSchedule) and the external constraints of a local energy
manager (NotifyChargingLimit, ClearedChargingLimit). Every rule about what a profile *means* lives in
:mod:`emulators.profiles`, every physical fact in :mod:`emulators.station`, the EV's needs in :mod:`emulators.ev`.
This layer only translates and records: each raw frame in and out goes to ``record``.

Transactions start at PowerPathClosed (TxCtrlr.TxStartPoint): when the EV is plugged in *and* authorised. The station
makes the transaction ids itself (``<station>-<evse>-<n>``, deterministic so that runs reproduce) and starts the
transaction on the model before TransactionEvent Started goes out, so a TxProfile sent right behind it is judged
against a running transaction.

Bad input from the CSMS never takes the station down: a frame the RPC layer cannot read is answered with a CallError
(messageId "-1" when even that cannot be read, OCPP 2.0.1 Part 4), schema violations with the CallError the library
picks, semantically invalid profiles with ``Rejected`` and a ``statusInfo.reasonCode``, and anything unexpected with
an InternalError CallError — each also reported as a ``station_error``.

Standard references are OCPP 2.0.1 Part 2 use cases (B05/B06 variables, E transactions, F remote control, J meter
values, K smart charging).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result
from ocpp.v201.enums import Action

from bench.clock import SimClock
from controllers import ocpp_fastpath
from emulators.profiles import (
    EXTERNAL_CONSTRAINTS,
    TX,
    ChargingProfile,
    ProfileError,
    parse_profile_201,
    profile_to_json_201,
)
from emulators.station import Connector, StationModel
from emulators.station_link import Record, RecordingSocket, Report, StationClock, StationLink

ocpp_fastpath.install()
logging.getLogger("ocpp").setLevel(logging.CRITICAL)

SUBPROTOCOL = "ocpp2.0.1"
VENDOR_ID = "org.evbench"  # customData.vendorId of what this emulator adds to standard messages
_SECONDS_PER_DAY = 86_400
_TRANSACTION_ID_MAX_LENGTH = 36  # TransactionType.transactionId is identifierString[0..36]
_ADDITIONAL_INFO_MAX_LENGTH = 512  # StatusInfoType.additionalInfo
# Profile ids of the external constraints the bench installs: one per EVSE, far above what a CSMS numbers from.
_EXTERNAL_PROFILE_ID_BASE = 2_000_000_000

MEASURANDS = ("Current.Import", "Current.Offered", "Power.Active.Import", "Energy.Active.Import.Register", "SoC")

FollowUp = Callable[[], Awaitable[None]]


# --------------------------------------------------------------------------------------------------------------------
# The device model: the variables a CSMS may read and write (B05 SetVariables, B06 GetVariables)
# --------------------------------------------------------------------------------------------------------------------


def _whole_seconds(text: str) -> str | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return str(value) if value >= 0 else None


def _positive_seconds(text: str) -> str | None:
    value = _whole_seconds(text)
    return value if value is not None and int(value) > 0 else None


def _measurand_list(text: str) -> str | None:
    names = [name.strip() for name in text.split(",") if name.strip()]
    return ",".join(names) if all(name in MEASURANDS for name in names) else None


def _non_negative_decimal(text: str) -> str | None:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return text if value.is_finite() and value >= 0 else None


def _boolean(text: str) -> str | None:
    return text.lower() if text.lower() in ("true", "false") else None


@dataclass
class _Variable:
    """One variable's Actual value. ``accept`` turns a written value into the stored one (None: not acceptable); a
    variable without it is ReadOnly. ``live`` computes a ReadOnly value at each read."""

    value: str
    accept: Callable[[str], str | None] | None = None
    live: Callable[[], str] | None = None


HEARTBEAT_INTERVAL = ("OCPPCommCtrlr", "HeartbeatInterval")
TX_STARTED_MEASURANDS = ("SampledDataCtrlr", "TxStartedMeasurands")
TX_UPDATED_INTERVAL = ("SampledDataCtrlr", "TxUpdatedInterval")
TX_UPDATED_MEASURANDS = ("SampledDataCtrlr", "TxUpdatedMeasurands")
TX_ENDED_MEASURANDS = ("SampledDataCtrlr", "TxEndedMeasurands")
ALIGNED_INTERVAL = ("AlignedDataCtrlr", "Interval")
ALIGNED_MEASURANDS = ("AlignedDataCtrlr", "Measurands")
LIMIT_CHANGE_SIGNIFICANCE = ("SmartChargingCtrlr", "LimitChangeSignificance")
EXTERNAL_CONTROL_SIGNALS = ("SmartChargingCtrlr", "ExternalControlSignalsEnabled")


class _DeviceModel:
    """The station's variables (Part 2 Appendix 3 names), each answered as B05/B06 say.

    Components and variables are matched by name; instance and EVSE qualifiers are accepted as given (the variables
    here are station-wide). Only the Actual attribute exists. A changed interval sets ``changed[key]`` so that the
    loop waiting on it starts counting again from the change.
    """

    def __init__(self, model: StationModel, tx_updated_interval_s: float, heartbeat_interval_s: float) -> None:
        engine = model.engine
        everything = ",".join(MEASURANDS)
        self._variables: dict[tuple[str, str], _Variable] = {
            HEARTBEAT_INTERVAL: _Variable(str(int(heartbeat_interval_s)), _positive_seconds),
            TX_STARTED_MEASURANDS: _Variable("Energy.Active.Import.Register", _measurand_list),
            TX_UPDATED_INTERVAL: _Variable(str(int(tx_updated_interval_s)), _whole_seconds),
            TX_UPDATED_MEASURANDS: _Variable(everything, _measurand_list),
            TX_ENDED_MEASURANDS: _Variable("Energy.Active.Import.Register", _measurand_list),
            ALIGNED_INTERVAL: _Variable("0", _whole_seconds),  # 0 = no clock-aligned data (J01)
            ALIGNED_MEASURANDS: _Variable("Energy.Active.Import.Register,Power.Active.Import", _measurand_list),
            ("SmartChargingCtrlr", "Enabled"): _Variable("true"),
            ("SmartChargingCtrlr", "Available"): _Variable("true"),
            LIMIT_CHANGE_SIGNIFICANCE: _Variable("0.0", _non_negative_decimal),
            ("SmartChargingCtrlr", "RateUnit"): _Variable(",".join(engine.allowed_units)),
            ("SmartChargingCtrlr", "PeriodsPerSchedule"): _Variable(str(engine.max_periods)),
            ("SmartChargingCtrlr", "ProfileStackLevel"): _Variable(str(engine.max_stack_level)),
            # Entries[ChargingProfiles]: how many profiles are installed now; its bound is engine.max_profiles.
            ("SmartChargingCtrlr", "Entries"): _Variable("", live=lambda: str(len(engine.profiles()))),
            EXTERNAL_CONTROL_SIGNALS: _Variable("true", _boolean),
            ("TxCtrlr", "TxStartPoint"): _Variable("PowerPathClosed"),
        }
        self._components = {component for component, _ in self._variables}
        self.changed = {key: asyncio.Event() for key in self._variables}

    def text(self, key: tuple[str, str]) -> str:
        variable = self._variables[key]
        return variable.live() if variable.live is not None else variable.value

    def seconds(self, key: tuple[str, str]) -> float:
        return float(self.text(key))

    def measurands(self, key: tuple[str, str]) -> frozenset[str]:
        return frozenset(name for name in self.text(key).split(",") if name)

    def put(self, key: tuple[str, str], value: str) -> None:
        """Set a value the station itself learnt (e.g. the heartbeat interval from BootNotification)."""
        self._variables[key].value = value
        self.changed[key].set()

    def get_result(self, item: dict) -> dict:
        """One GetVariableResultType (B06) for one GetVariableDataType, both in the library's snake_case form."""
        component, variable = item["component"], item["variable"]
        result: dict[str, Any] = {"component": component, "variable": variable}
        attribute = item.get("attribute_type")
        if attribute is not None:
            result["attribute_type"] = attribute
        status = self._lookup(component["name"], variable["name"])
        if status == "Accepted" and attribute not in (None, "Actual"):
            status = "NotSupportedAttributeType"
        if status == "Accepted":
            result["attribute_value"] = self.text((component["name"], variable["name"]))
        result["attribute_status"] = status
        return result

    def set_result(self, item: dict) -> dict:
        """One SetVariableResultType (B05) for one SetVariableDataType; an accepted value takes effect at once."""
        component, variable = item["component"], item["variable"]
        result: dict[str, Any] = {"component": component, "variable": variable}
        attribute = item.get("attribute_type")
        if attribute is not None:
            result["attribute_type"] = attribute
        key = (component["name"], variable["name"])
        status = self._lookup(*key)
        reason = None
        if status == "Accepted" and attribute not in (None, "Actual"):
            status = "NotSupportedAttributeType"
        elif status == "Accepted":
            accept = self._variables[key].accept
            value = None if accept is None else accept(item["attribute_value"])
            if accept is None:
                status, reason = "Rejected", "ReadOnly"
            elif value is None:
                status, reason = "Rejected", "InvalidValue"
            else:
                self.put(key, value)
        result["attribute_status"] = status
        if reason is not None:
            result["attribute_status_info"] = {"reason_code": reason}
        return result

    def _lookup(self, component: str, variable: str) -> str:
        if (component, variable) in self._variables:
            return "Accepted"
        return "UnknownVariable" if component in self._components else "UnknownComponent"


# --------------------------------------------------------------------------------------------------------------------
# The websocket session
# --------------------------------------------------------------------------------------------------------------------


def _frame_problem(raw: str) -> tuple[str, str, str] | None:
    """(messageId, errorCode, description) for a frame the RPC layer cannot route, else None (Part 4, CALLERROR).

    Malformed CallResults and CallErrors are not answered (a response is never answered); the library drops them.
    """
    try:
        frame = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
        return "-1", "RpcFrameworkError", "the message is not valid JSON"
    if not isinstance(frame, list) or not frame:
        return "-1", "RpcFrameworkError", "a message is a non-empty JSON array"
    kind = frame[0]
    message_id = frame[1] if len(frame) > 1 and isinstance(frame[1], str) else None
    if type(kind) is not int or kind not in (2, 3, 4):
        return message_id or "-1", "MessageTypeNotSupported", f"MessageTypeId {kind!r} is not 2, 3 or 4"
    if kind != 2:
        return None
    if message_id is None:
        return "-1", "RpcFrameworkError", "the messageId cannot be read"
    if len(frame) != 4 or not isinstance(frame[2], str):
        return message_id, "RpcFrameworkError", "a CALL is [2, messageId, action, payload]"
    return None


class _Link(ChargePoint):
    """One websocket session with the CSMS; handlers for what the CSMS may ask."""

    def __init__(self, station: Station201, ws: Any) -> None:
        super().__init__(station.model.id, RecordingSocket(ws, station.record), response_timeout=30)
        self.station = station
        self._last_inbound = ""

    async def route_message(self, raw_msg: str) -> None:
        self._last_inbound = raw_msg
        try:
            problem = _frame_problem(raw_msg)
            if problem is not None:
                await self._send(json.dumps([4, *problem, {}]))
            else:
                await super().route_message(raw_msg)
        except websockets.ConnectionClosed:
            raise
        except Exception as error:  # noqa: BLE001 — a bug or absurd input must not end the session
            self.station.drop_follow_ups()
            frame = json.loads(raw_msg)  # _frame_problem let it through, so it is an array that parses
            if frame[0] == 2:  # and a CALL's messageId is a string
                await self._send(json.dumps([4, frame[1], "InternalError", str(error)[:200], {}]))
            else:
                self.station.report("station_error", {"error": repr(error), "request": raw_msg[:2000]})
        self.station.start_follow_ups()

    async def _send(self, message: str) -> None:
        if message.startswith("[4"):
            # A CallError answers the request in hand: whatever its handler meant to do next is off. Each is a
            # finding about the CSMS (or about the station).
            self.station.drop_follow_ups()
            self.station.report("station_error", {"callerror": message[:1000], "request": self._last_inbound[:2000]})
        await super()._send(message)

    # -- smart charging (K01, K08, K09, K10) ------------------------------------------------------------------------

    @on(Action.set_charging_profile)
    def on_set_charging_profile(self, evse_id: int, charging_profile: dict, **_: Any):
        return self.station.set_profile(evse_id, charging_profile)

    @on(Action.clear_charging_profile)
    def on_clear_charging_profile(self, charging_profile_id: int | None = None,
                                  charging_profile_criteria: dict | None = None, **_: Any):
        return self.station.clear_profiles(charging_profile_id, charging_profile_criteria or {})

    @on(Action.get_charging_profiles)
    def on_get_charging_profiles(self, request_id: int, charging_profile: dict, evse_id: int | None = None, **_: Any):
        return self.station.get_profiles(request_id, charging_profile, evse_id)

    @on(Action.get_composite_schedule)
    def on_get_composite_schedule(self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **_: Any):
        return self.station.composite_schedule(evse_id, duration, charging_rate_unit or "A")

    # -- device model (B05, B06) -------------------------------------------------------------------------------------

    @on(Action.get_variables)
    def on_get_variables(self, get_variable_data: list, **_: Any):
        variables = self.station.variables
        return call_result.GetVariables(get_variable_result=[variables.get_result(item) for item in get_variable_data])

    @on(Action.set_variables)
    def on_set_variables(self, set_variable_data: list, **_: Any):
        variables = self.station.variables
        return call_result.SetVariables(set_variable_result=[variables.set_result(item) for item in set_variable_data])

    # -- remote control (F01, F03, F05, F06) and the rest of the basics -------------------------------------------

    @on(Action.request_start_transaction)
    def on_request_start_transaction(self, id_token: dict, remote_start_id: int, evse_id: int | None = None,
                                     charging_profile: dict | None = None, **_: Any):
        return self.station.remote_start(id_token, remote_start_id, evse_id, charging_profile)

    @on(Action.request_stop_transaction)
    def on_request_stop_transaction(self, transaction_id: str, **_: Any):
        return self.station.remote_stop(transaction_id)

    @on(Action.trigger_message)
    def on_trigger_message(self, requested_message: str, evse: dict | None = None, **_: Any):
        return call_result.TriggerMessage(self.station.trigger(requested_message, evse))

    @on(Action.change_availability)
    def on_change_availability(self, operational_status: str, evse: dict | None = None, **_: Any):
        return call_result.ChangeAvailability(self.station.change_availability(operational_status, evse))

    @on(Action.reset)
    def on_reset(self, type: str, evse_id: int | None = None, **_: Any):
        return call_result.Reset(self.station.reset(evse_id))

    @on(Action.unlock_connector)
    def on_unlock_connector(self, evse_id: int, connector_id: int, **_: Any):
        return call_result.UnlockConnector(self.station.unlock(evse_id, connector_id))

    @on(Action.clear_cache)
    def on_clear_cache(self, **_: Any):
        return call_result.ClearCache("Accepted")  # it keeps no authorisation cache

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any):
        return call_result.DataTransfer("UnknownVendorId")


# --------------------------------------------------------------------------------------------------------------------
# The station
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Transaction:
    """What the station remembers of one running transaction (E01–E07)."""

    id: str
    id_token: dict
    remote_start_id: int | None = None
    charging_state: str = "EVConnected"  # as last reported to the CSMS
    seq_no: int = 0

    def next_seq_no(self) -> int:
        seq_no = self.seq_no
        self.seq_no += 1
        return seq_no


def _status_info(reason_code: str, additional_info: str) -> dict:
    return {"reason_code": reason_code, "additional_info": additional_info[:_ADDITIONAL_INFO_MAX_LENGTH]}


class Station201(StationLink):
    """An emulated OCPP 2.0.1 charging station: connects to ``url/<id>`` and keeps its session up.

    ``model`` must be a ``StationModel(..., version="2.0.1")``: its engine applies the 2.0.1 profile rules.
    ``meter_value_interval_s`` is SampledDataCtrlr.TxUpdatedInterval [s] and ``heartbeat_interval_s`` the heartbeat
    until the CSMS gives one [s]. ``record(direction, raw)`` gets every frame ("to_station" / "from_station");
    ``report(kind, detail)`` gets station_connected, station_disconnected, station_error and profile_rejected.
    """

    SUBPROTOCOL = SUBPROTOCOL

    def __init__(self, model: StationModel, url: str, clock: SimClock, record: Record, report: Report,
                 meter_value_interval_s: float = 60.0, heartbeat_interval_s: float = 300.0,
                 vendor: str = "evbench", product: str = "virtual-ac") -> None:
        if model.engine.version != "2.0.1":
            raise ValueError(f"Station201 needs a StationModel built with version='2.0.1', got {model.engine.version}")
        super().__init__(model.id, url, record, report)
        self.model = model
        self.clock = StationClock(clock)
        self.vendor, self.product = vendor, product
        self.variables = _DeviceModel(model, meter_value_interval_s, heartbeat_interval_s)
        self.link: _Link | None = None
        self._boot_reason = "PowerUp"
        self._tx_lock = asyncio.Lock()
        self._transactions: dict[int, _Transaction] = {}  # EVSE id -> its running transaction
        self._transaction_numbers = itertools.count(1)
        self._starting: set[int] = set()  # EVSEs promised to a RequestStartTransaction not yet carried out
        self._notified_limit_a: dict[int, float] = {}  # EVSE id -> external limit last sent in NotifyChargingLimit
        self._follow_ups: list[FollowUp] = []
        self._background: set[asyncio.Task] = set()

    # -- connection lifecycle -------------------------------------------------------------------------------------

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await super().stop()

    async def _session(self, ws: Any) -> None:
        link = _Link(self, ws)
        self.link = link
        listener = asyncio.create_task(link.start())
        helpers: list[asyncio.Task] = []
        try:
            if await self._boot(link, listener):
                self.report("station_connected", {"url": self.url})
                for port in self.model.ports.values():
                    await self._status(port.id, port.status)
                self.online.set()
                helpers = [
                    asyncio.create_task(self._every(HEARTBEAT_INTERVAL, self._heartbeat)),
                    asyncio.create_task(self._every(TX_UPDATED_INTERVAL, self._periodic_updates)),
                    asyncio.create_task(self._every(ALIGNED_INTERVAL, self._aligned_meter_values, aligned=True)),
                ]
            await listener
        except websockets.ConnectionClosed:
            pass
        finally:
            self.online.clear()
            self.drop_follow_ups()  # an answer that never went out promised nothing
            for task in (*helpers, listener):
                task.cancel()
            await asyncio.gather(*helpers, listener, return_exceptions=True)

    async def _boot(self, link: _Link, listener: asyncio.Task) -> bool:
        """B01–B03: BootNotification until Accepted, waiting the interval the CSMS asks for in between."""
        while not listener.done():
            response = await link.call(call.BootNotification(
                charging_station={"model": self.product, "vendor_name": self.vendor}, reason=self._boot_reason))
            if response is not None and response.status == "Accepted":
                self._set_clock(response.current_time)
                if response.interval > 0:
                    self.variables.put(HEARTBEAT_INTERVAL, str(int(response.interval)))
                self._boot_reason = "PowerUp"
                return True
            interval = response.interval if response is not None and response.interval > 0 else 30
            await asyncio.sleep(interval)
        return False

    async def _every(self, key: tuple[str, str], send: Callable[[], Awaitable[None]], aligned: bool = False) -> None:
        """Call ``send`` every ``key`` seconds (0 = never); a changed value starts the count again from the change.

        ``aligned`` readings fall on whole multiples of the interval after midnight UTC (J01 clock-aligned data).
        """
        changed = self.variables.changed[key]
        while True:
            interval_s = self.variables.seconds(key)
            changed.clear()
            if interval_s <= 0:
                await changed.wait()
                continue
            wait_s = interval_s
            if aligned:
                wait_s = interval_s - (self.clock.epoch() % _SECONDS_PER_DAY) % interval_s
                if wait_s < 0.5:  # on the boundary already, up to float error: the next one is meant
                    wait_s += interval_s
            try:
                await asyncio.wait_for(changed.wait(), wait_s)
                continue
            except TimeoutError:
                pass
            await send()

    async def _heartbeat(self) -> None:
        await self._call(call.Heartbeat())

    async def _call(self, payload: Any) -> Any:
        """Send a CALL; a dropped link or a CallError answer yields None instead of an exception."""
        link = self.link
        if link is None:
            return None
        try:
            return await link.call(payload)
        except (TimeoutError, websockets.ConnectionClosed) as error:
            self.report("station_error", {"action": type(payload).__name__, "error": repr(error)})
            return None

    # -- what handlers leave for after their answer ----------------------------------------------------------------

    def after_answer(self, follow_up: FollowUp) -> None:
        """Run ``follow_up`` once the answer to the request in hand has gone out (e.g. ReportChargingProfiles after
        GetChargingProfiles, TransactionEvent Started after RequestStartTransaction)."""
        self._follow_ups.append(follow_up)

    def drop_follow_ups(self) -> None:
        self._follow_ups.clear()

    def start_follow_ups(self) -> None:
        if not self._follow_ups:
            return
        follow_ups, self._follow_ups = self._follow_ups, []
        task = asyncio.get_running_loop().create_task(self._run_follow_ups(follow_ups))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_follow_ups(self, follow_ups: list[FollowUp]) -> None:
        for follow_up in follow_ups:
            try:
                await follow_up()
            except Exception as error:  # noqa: BLE001 — a failed follow-up is a finding, not the end of the station
                self.report("station_error", {"follow_up": getattr(follow_up, "__name__", repr(follow_up)),
                                              "error": repr(error)})

    # -- status, meter values and transaction events ------------------------------------------------------------------

    async def _status(self, evse_id: int, status: str) -> None:
        """G01 StatusNotification of the EVSE's one connector: Available, Occupied, Unavailable or Faulted."""
        self.model.ports[evse_id].status = status
        await self._call(call.StatusNotification(timestamp=self.clock.iso(), connector_status=status,
                                                 evse_id=evse_id, connector_id=1))

    def _meter_value(self, port: Connector, measurands: frozenset[str], context: str) -> dict | None:
        """One MeterValueType of ``port`` with the ``measurands`` asked for; None when there are none."""
        values: list[dict] = []
        if "Current.Import" in measurands:
            for i in range(3 if self.model.phases == 3 else 1):
                values.append({"value": round(port.currents_a[i], 2), "context": context,
                               "measurand": "Current.Import", "phase": f"L{i + 1}", "unit_of_measure": {"unit": "A"}})
        if "Current.Offered" in measurands:
            values.append({"value": round(port.offered_a, 1), "context": context, "measurand": "Current.Offered",
                           "unit_of_measure": {"unit": "A"}})
        if "Power.Active.Import" in measurands:
            values.append({"value": round(port.power_w), "context": context, "measurand": "Power.Active.Import",
                           "unit_of_measure": {"unit": "W"}})
        if "Energy.Active.Import.Register" in measurands:
            values.append({"value": round(port.meter_wh), "context": context,
                           "measurand": "Energy.Active.Import.Register", "unit_of_measure": {"unit": "Wh"}})
        if "SoC" in measurands and port.ev is not None:
            values.append({"value": round(port.ev.soc * 100, 1), "context": context, "measurand": "SoC",
                           "location": "EV", "unit_of_measure": {"unit": "Percent"}})
        if not values:
            return None
        return {"timestamp": self.clock.iso(), "sampled_value": values}

    def _offer_a(self, port: Connector) -> float:
        """The current the EVSE offers now [A per phase]: hardware max under the composite limit, 0 without a
        transaction (the same rule as StationModel.step, evaluated at this instant)."""
        if not port.charging_allowed:
            return 0.0
        limit = self.model.engine.limit_a(port.id, self.clock.epoch(), port.tx_start_epoch, self.model.phases)
        offer = self.model.max_current_a if limit is None else min(limit, self.model.max_current_a)
        return max(offer, 0.0)

    def _charging_state(self, port: Connector) -> str:
        """ChargingStateEnumType of ``port`` now: a full EV suspends itself, a zero offer is the EVSE's pause."""
        if port.ev is None:
            return "Idle"
        if port.ev.done:
            return "SuspendedEV"
        return "SuspendedEVSE" if self._offer_a(port) <= 0 else "Charging"

    async def _transaction_event(self, event_type: str, evse_id: int, tx: _Transaction, trigger_reason: str,
                                 meter_value: dict | None = None, stopped_reason: str | None = None) -> None:
        info: dict[str, Any] = {"transaction_id": tx.id, "charging_state": tx.charging_state}
        if event_type == "Started" and tx.remote_start_id is not None:
            info["remote_start_id"] = tx.remote_start_id
        if stopped_reason is not None:
            info["stopped_reason"] = stopped_reason
        await self._call(call.TransactionEvent(
            event_type=event_type, timestamp=self.clock.iso(), trigger_reason=trigger_reason,
            seq_no=tx.next_seq_no(), transaction_info=info,
            meter_value=None if meter_value is None else [meter_value],
            evse={"id": evse_id, "connector_id": 1},
            id_token=tx.id_token if event_type == "Started" else None,
        ))

    async def _periodic_updates(self) -> None:
        """E02: TransactionEvent Updated (MeterValuePeriodic) of every running transaction at TxUpdatedInterval."""
        await self._check_charging_states()
        measurands = self.variables.measurands(TX_UPDATED_MEASURANDS)
        for evse_id, tx in list(self._transactions.items()):
            port = self.model.ports[evse_id]
            await self._transaction_event("Updated", evse_id, tx, "MeterValuePeriodic",
                                          self._meter_value(port, measurands, "Sample.Periodic"))

    async def _aligned_meter_values(self) -> None:
        """J01: MeterValues of every EVSE at the clock-aligned AlignedDataCtrlr.Interval."""
        measurands = self.variables.measurands(ALIGNED_MEASURANDS)
        for port in self.model.ports.values():
            meter_value = self._meter_value(port, measurands, "Sample.Clock")
            if meter_value is not None:
                await self._call(call.MeterValues(evse_id=port.id, meter_value=[meter_value]))

    async def _check_charging_states(self) -> None:
        """E02 ChargingStateChanged for every transaction whose charging state differs from what was reported."""
        for evse_id, tx in list(self._transactions.items()):
            port = self.model.ports[evse_id]
            state = self._charging_state(port)
            if state != tx.charging_state and self._transactions.get(evse_id) is tx:
                tx.charging_state = state
                await self._transaction_event("Updated", evse_id, tx, "ChargingStateChanged")

    # -- what the bench does to the station -----------------------------------------------------------------------

    async def plug_in(self, connector_id: int, id_tag: str) -> None:
        """An EV (already placed on the model) is plugged into EVSE ``connector_id``: authorise and, if accepted,
        start the transaction (TxStartPoint PowerPathClosed) and tell the CSMS an ISO 15118 EV's needs."""
        await self.online.wait()
        async with self._tx_lock:
            await self._status(connector_id, "Occupied")
            port = self.model.ports[connector_id]
            iso15118 = port.ev is not None and port.ev.spec.iso15118
            id_token = {"id_token": id_tag, "type": "eMAID" if iso15118 else "ISO14443"}
            answer = await self._call(call.Authorize(id_token=id_token))
            status = None if answer is None else answer.id_token_info.get("status")
            if status != "Accepted":
                self.report("station_error", {"evse": connector_id, "error": "authorization not accepted",
                                              "answer": None if answer is None else answer.id_token_info})
                return
            await self._start_transaction(connector_id, id_token, "Authorized")

    async def _start_transaction(self, evse_id: int, id_token: dict, trigger_reason: str,
                                 remote_start_id: int | None = None, profile: ChargingProfile | None = None) -> None:
        port = self.model.ports[evse_id]
        if port.ev is None or port.transaction_id is not None:
            return
        if port.status != "Occupied":  # a remote start finds the EV plugged in without plug_in having said so
            await self._status(evse_id, "Occupied")
        tx_id = f"{self.model.id}-{evse_id}-{next(self._transaction_numbers)}"[-_TRANSACTION_ID_MAX_LENGTH:]
        tx = _Transaction(tx_id, id_token, remote_start_id)
        self.model.start_transaction(evse_id, tx_id, self.clock.epoch())
        self._transactions[evse_id] = tx
        # F01.FR.11: the station gives the RequestStartTransaction's TxProfile the new transaction's id.
        accepted = profile is not None and self._install(evse_id, dataclasses.replace(profile, transaction_id=tx_id))
        tx.charging_state = self._charging_state(port)
        await self._transaction_event("Started", evse_id, tx, trigger_reason, self._meter_value(
            port, self.variables.measurands(TX_STARTED_MEASURANDS), "Transaction.Begin"))
        await self._notify_ev_charging_needs(evse_id)
        if accepted:
            await self._notify_ev_charging_schedule(evse_id, profile.id)

    async def unplug(self, connector_id: int) -> None:
        """The EV leaves: end its transaction (E06 EVCommunicationLost / EVDisconnected), report Available."""
        self.model.unplug(connector_id)
        async with self._tx_lock:
            await self._stop_transaction(connector_id, "EVCommunicationLost", "EVDisconnected")
            await self._status(connector_id, "Available")

    async def _stop_transaction(self, evse_id: int, trigger_reason: str, stopped_reason: str) -> None:
        tx = self._transactions.pop(evse_id, None)
        if tx is None:
            return
        port = self.model.ports[evse_id]
        self.model.stop_transaction(evse_id)  # its TxProfiles end with it (K01: "only valid during the transaction")
        tx.charging_state = "Idle" if port.ev is None else "EVConnected"
        await self._transaction_event("Ended", evse_id, tx, trigger_reason, self._meter_value(
            port, self.variables.measurands(TX_ENDED_MEASURANDS), "Transaction.End"), stopped_reason)

    async def ev_full(self, connector_id: int) -> None:
        """The EV's battery reached its target: it suspends (E02 ChargingStateChanged to SuspendedEV)."""
        tx = self._transactions.get(connector_id)
        if tx is not None and tx.charging_state != "SuspendedEV":
            tx.charging_state = "SuspendedEV"
            await self._transaction_event("Updated", connector_id, tx, "ChargingStateChanged")

    async def renegotiate(self, connector_id: int) -> None:
        """The ISO 15118 EV's needs changed (``EV.change_needs``): the one cause for telling them again (K15–K17)."""
        if connector_id in self._transactions:
            await self._notify_ev_charging_needs(connector_id)

    async def set_external_constraints(self, evse_id: int, limit_a: float | None) -> bool:
        """The site's local energy manager limits EVSE ``evse_id`` (0 = the station) to ``limit_a`` [A per phase] from
        now on, or lifts its limit (None). Returns whether anything changed.

        Installs (replaces) an Absolute ChargingStationExternalConstraints profile and tells the CSMS with
        NotifyChargingLimit, source EMS (K12) — unless the change is below SmartChargingCtrlr.LimitChangeSignificance
        [%]; lifting it is ClearedChargingLimit (K13). While SmartChargingCtrlr.ExternalControlSignalsEnabled is false
        the station ignores such signals.
        """
        if self.variables.text(EXTERNAL_CONTROL_SIGNALS) != "true":
            return False
        engine = self.model.engine
        if limit_a is None:
            removed = engine.clear_external_constraints(evse_id) > 0
            self._notified_limit_a.pop(evse_id, None)
            if removed:
                await self._call(call.ClearedChargingLimit(charging_limit_source="EMS", evse_id=evse_id))
                await self._check_charging_states()
            return removed
        profile_id = _EXTERNAL_PROFILE_ID_BASE + evse_id
        profile = parse_profile_201({
            "id": profile_id, "stackLevel": 0, "chargingProfilePurpose": EXTERNAL_CONSTRAINTS,
            "chargingProfileKind": "Absolute",
            "chargingSchedule": [{"id": profile_id, "startSchedule": self.clock.iso(), "chargingRateUnit": "A",
                                  "chargingSchedulePeriod": [{"startPeriod": 0, "limit": float(limit_a)}]}],
        }, "externalConstraints")
        result = engine.set_external_constraints(evse_id, profile)
        if result.status != "Accepted":
            self.report("profile_rejected", {"evse": evse_id, "reason": result.reason,
                                             "reason_code": result.reason_code, "profile_id": profile_id})
            return False
        if self._significant(self._notified_limit_a.get(evse_id), limit_a):
            self._notified_limit_a[evse_id] = limit_a
            await self._call(call.NotifyChargingLimit(charging_limit={"charging_limit_source": "EMS"},
                                                      evse_id=evse_id))
        await self._check_charging_states()
        return True

    def _significant(self, previous_a: float | None, limit_a: float) -> bool:
        """Whether an external limit changed enough to notify: by at least LimitChangeSignificance [%] of the limit
        last notified (any change when that is 0)."""
        if previous_a is None:
            return True
        if limit_a == previous_a:
            return False
        significance_pct = float(self.variables.text(LIMIT_CHANGE_SIGNIFICANCE))
        return previous_a == 0 or abs(limit_a - previous_a) * 100 >= previous_a * significance_pct

    # -- ISO 15118 (K15–K17) ------------------------------------------------------------------------------------------

    async def _notify_ev_charging_needs(self, evse_id: int) -> None:
        """NotifyEVChargingNeeds with what an ISO 15118 EV said in ChargeParameterDiscovery; nothing for a basic EV.

        A bidirectional EV's discharge limit [A per phase] and minimum SoC [%] have no 2.0.1 field; they travel in
        ``customData`` (vendorId org.evbench) as evMaxDischargeCurrent and evMinSoC.
        """
        ev = self.model.ports[evse_id].ev
        needs = None if ev is None else ev.needs()
        if needs is None:
            return
        charging_needs: dict[str, Any] = {
            "requested_energy_transfer": "AC_three_phase" if needs.phases == 3 else "AC_single_phase",
            "ac_charging_parameters": {
                "energy_amount": round(needs.energy_wh),
                "ev_min_current": round(needs.min_current_a),
                "ev_max_current": round(needs.max_current_a),
                "ev_max_voltage": round(needs.max_voltage_v),
            },
        }
        if needs.departure_s is not None:
            charging_needs["departure_time"] = self.clock.iso(self.clock.start_epoch + needs.departure_s)
        if needs.discharge_max_current_a > 0:
            charging_needs["custom_data"] = {"vendor_id": VENDOR_ID,
                                             "ev_max_discharge_current": round(needs.discharge_max_current_a, 1),
                                             "ev_min_soc": round(needs.min_soc * 100)}
        await self._call(call.NotifyEVChargingNeeds(charging_needs=charging_needs, evse_id=evse_id))

    async def _notify_ev_charging_schedule(self, evse_id: int, schedule_id: int) -> None:
        """NotifyEVChargingSchedule: the schedule an ISO 15118 EV chose from the limits it was given — the EVSE's
        composite schedule under the EV's own maximum, from now to its departure (else for 24 h). The EV then follows
        it through the offer, which the model already makes from the same profiles."""
        port = self.model.ports[evse_id]
        needs = None if port.ev is None or port.transaction_id is None else port.ev.needs()
        if needs is None:
            return
        now = self.clock.epoch()
        duration_s = _SECONDS_PER_DAY
        if needs.departure_s is not None and self.clock.start_epoch + needs.departure_s - now >= 1:
            duration_s = int(self.clock.start_epoch + needs.departure_s - now)
        composite = self.model.engine.composite_schedule(evse_id, now, duration_s, "A", port.tx_start_epoch,
                                                         self.model.phases, self.model.max_current_a)
        periods: list[dict] = []
        for period in composite.periods:
            limit = round(min(float(period.limit), needs.max_current_a), 1)
            if not periods or periods[-1]["limit"] != limit:
                periods.append({"start_period": period.start_period_s, "limit": limit})
        await self._call(call.NotifyEVChargingSchedule(
            time_base=self.clock.iso(now), evse_id=evse_id,
            charging_schedule={"id": schedule_id, "duration": duration_s, "charging_rate_unit": "A",
                               "charging_schedule_period": periods}))

    # -- what the CSMS asks (called from the handlers) ---------------------------------------------------------------

    def set_profile(self, evse_id: int, snake_profile: dict) -> call_result.SetChargingProfile:
        """K01 SetChargingProfile: Accepted, or Rejected with the reason code and the rule in additionalInfo."""
        try:
            profile = parse_profile_201(ocpp_fastpath.snake_to_camel_case(snake_profile), "chargingProfile")
        except ProfileError as error:
            self.report("station_error", {"action": "SetChargingProfile", "error": str(error)})
            return call_result.SetChargingProfile("Rejected", _status_info("InvalidValue", str(error)))
        result = self.model.engine.set_profile(evse_id, profile, self.model.active_transaction(evse_id))
        if result.status != "Accepted":
            self._report_rejection(evse_id, profile.id, result.reason, result.reason_code)
            return call_result.SetChargingProfile("Rejected",
                                                  _status_info(result.reason_code or "InvalidProfile", result.reason))
        if profile.purpose == TX:
            self.after_answer(lambda: self._notify_ev_charging_schedule(evse_id, profile.id))
        self.after_answer(self._check_charging_states)
        return call_result.SetChargingProfile("Accepted")

    def _install(self, evse_id: int, profile: ChargingProfile) -> bool:
        result = self.model.engine.set_profile(evse_id, profile, self.model.active_transaction(evse_id))
        if result.status != "Accepted":
            self._report_rejection(evse_id, profile.id, result.reason, result.reason_code)
        return result.status == "Accepted"

    def _report_rejection(self, evse_id: int | None, profile_id: int, reason: str, reason_code: str) -> None:
        self.report("profile_rejected", {"evse": evse_id, "reason": reason, "reason_code": reason_code,
                                         "profile_id": profile_id})

    def clear_profiles(self, profile_id: int | None, criteria: dict) -> call_result.ClearChargingProfile:
        """K10 ClearChargingProfile by id, or by criteria (evseId, purpose, stackLevel): Accepted or Unknown."""
        status = self.model.engine.clear(profile_id, criteria.get("evse_id"), criteria.get("charging_profile_purpose"),
                                         criteria.get("stack_level"))
        if status == "Accepted":
            self.after_answer(self._check_charging_states)
        return call_result.ClearChargingProfile(status)

    def get_profiles(self, request_id: int, criteria: dict, evse_id: int | None) -> call_result.GetChargingProfiles:
        """K09 GetChargingProfiles: Accepted and then one ReportChargingProfiles per EVSE and limit source (the CSMS's
        own are "CSO", the energy manager's external constraints "EMS"), or NoProfiles."""
        rows = self.model.engine.select(ids=criteria.get("charging_profile_id"), evse_id=evse_id,
                                        purpose=criteria.get("charging_profile_purpose"),
                                        stack_level=criteria.get("stack_level"))
        sources = criteria.get("charging_limit_source")
        reports: dict[tuple[int, str], list[dict]] = {}
        for evse, profile in rows:
            source = "EMS" if profile.purpose == EXTERNAL_CONSTRAINTS else "CSO"
            if not sources or source in sources:
                wire = ocpp_fastpath.camel_to_snake_case(profile_to_json_201(profile))
                reports.setdefault((evse, source), []).append(wire)
        if not reports:
            return call_result.GetChargingProfiles("NoProfiles")

        async def report_all() -> None:
            groups = list(reports.items())
            for i, ((evse, source), profiles) in enumerate(groups):
                await self._call(call.ReportChargingProfiles(request_id=request_id, charging_limit_source=source,
                                                             charging_profile=profiles, evse_id=evse,
                                                             tbc=i < len(groups) - 1))

        self.after_answer(report_all)
        return call_result.GetChargingProfiles("Accepted")

    def composite_schedule(self, evse_id: int, duration_s: int, unit: str) -> call_result.GetCompositeSchedule:
        """K08 GetCompositeSchedule from now for ``duration_s``; EVSE 0 is the station, whose hardware can give every
        EVSE its maximum at once when no profile limits it."""
        if not 0 <= evse_id <= self.model.connectors:
            return call_result.GetCompositeSchedule(
                "Rejected", _status_info("UnknownEvse", f"evseId {evse_id} is not 0..{self.model.connectors}"))
        port = self.model.ports.get(evse_id)
        no_limit_a = self.model.max_current_a * (self.model.connectors if port is None else 1)
        start = self.clock.epoch()
        schedule = self.model.engine.composite_schedule(
            evse_id, start, int(duration_s), unit, tx_start=None if port is None else port.tx_start_epoch,
            phases=self.model.phases, no_limit_a=no_limit_a,
        )
        periods = []
        for p in schedule.periods:
            period: dict[str, Any] = {"start_period": p.start_period_s, "limit": round(float(p.limit), 1)}
            if p.number_phases is not None:
                period["number_phases"] = p.number_phases
            periods.append(period)
        return call_result.GetCompositeSchedule(
            status="Accepted",
            schedule={"evse_id": evse_id, "duration": int(duration_s), "schedule_start": self.clock.iso(start),
                      "charging_rate_unit": schedule.rate_unit, "charging_schedule_period": periods},
        )

    def remote_start(self, id_token: dict, remote_start_id: int, evse_id: int | None,
                     snake_profile: dict | None) -> call_result.RequestStartTransaction:
        """F01 RequestStartTransaction: Accepted when an EV is plugged into a free EVSE (the given one, else the
        first); the transaction then starts (trigger RemoteStart) with the request's TxProfile, if any."""
        profile = None
        if snake_profile is not None:
            try:
                profile = parse_profile_201(ocpp_fastpath.snake_to_camel_case(snake_profile), "chargingProfile")
            except ProfileError as error:
                self.report("station_error", {"action": "RequestStartTransaction", "error": str(error)})
                return call_result.RequestStartTransaction("Rejected", _status_info("InvalidValue", str(error)))
            if profile.purpose != TX or profile.transaction_id is not None:
                # F01.FR.09/11: a TxProfile, whose transactionId the station fills in (SMART_CHARGING.md
                # TX-PROFILE-SCOPE).
                reason = (f"the chargingProfile of RequestStartTransaction must be a TxProfile without transactionId, "
                          f"got {profile.purpose} with transactionId {profile.transaction_id!r}")
                self._report_rejection(evse_id, profile.id, reason, "InvalidProfile")
                return call_result.RequestStartTransaction("Rejected", _status_info("InvalidProfile", reason))
        for candidate in [evse_id] if evse_id else list(self.model.ports):
            port = self.model.ports.get(candidate)
            if port is None or port.ev is None or port.transaction_id is not None or candidate in self._starting:
                continue
            self._starting.add(candidate)

            async def start(evse: int = candidate) -> None:
                async with self._tx_lock:
                    self._starting.discard(evse)
                    await self._start_transaction(evse, id_token, "RemoteStart", remote_start_id, profile)

            self.after_answer(start)
            return call_result.RequestStartTransaction("Accepted")
        return call_result.RequestStartTransaction("Rejected")

    def remote_stop(self, transaction_id: str) -> call_result.RequestStopTransaction:
        """F03 RequestStopTransaction: Accepted for a running transaction, which then ends (RemoteStop / Remote)."""
        for evse_id, tx in self._transactions.items():
            if tx.id == transaction_id:

                async def stop(evse: int = evse_id) -> None:
                    async with self._tx_lock:
                        await self._stop_transaction(evse, "RemoteStop", "Remote")

                self.after_answer(stop)
                return call_result.RequestStopTransaction("Accepted")
        return call_result.RequestStopTransaction("Rejected")

    def trigger(self, requested: str, evse: dict | None) -> str:
        """F06 TriggerMessage: send the requested message after the answer."""
        evse_id = None if evse is None else evse.get("id")
        if evse_id is not None and evse_id not in self.model.ports:
            return "Rejected"
        ports = [self.model.ports[evse_id]] if evse_id else list(self.model.ports.values())

        async def status() -> None:
            for port in ports:
                await self._status(port.id, port.status)

        async def meter_values() -> None:
            measurands = self.variables.measurands(ALIGNED_MEASURANDS)
            for port in ports:
                meter_value = self._meter_value(port, measurands, "Trigger")
                if meter_value is not None:
                    await self._call(call.MeterValues(evse_id=port.id, meter_value=[meter_value]))

        async def transaction_events() -> None:
            measurands = self.variables.measurands(TX_UPDATED_MEASURANDS)
            for port in ports:
                tx = self._transactions.get(port.id)
                if tx is not None:
                    await self._transaction_event("Updated", port.id, tx, "Trigger",
                                                  self._meter_value(port, measurands, "Trigger"))

        async def boot() -> None:
            await self._call(call.BootNotification(charging_station={"model": self.product, "vendor_name": self.vendor},
                                                   reason="Triggered"))

        sends: dict[str, FollowUp] = {"StatusNotification": status, "MeterValues": meter_values,
                                      "TransactionEvent": transaction_events, "Heartbeat": self._heartbeat,
                                      "BootNotification": boot}
        if requested not in sends:
            return "NotImplemented"
        self.after_answer(sends[requested])
        return "Accepted"

    def change_availability(self, operational_status: str, evse: dict | None) -> str:
        """G03/G04 ChangeAvailability of one EVSE or (no evse) the station; Scheduled while a transaction runs."""
        evse_id = None if evse is None else evse.get("id")
        if evse_id is not None and evse_id != 0 and evse_id not in self.model.ports:
            return "Rejected"
        targets = [self.model.ports[evse_id]] if evse_id else list(self.model.ports.values())
        if operational_status == "Inoperative" and any(port.transaction_id is not None for port in targets):
            return "Scheduled"

        async def announce() -> None:
            for port in targets:
                operative = "Occupied" if port.ev is not None else "Available"
                await self._status(port.id, "Unavailable" if operational_status == "Inoperative" else operative)

        self.after_answer(announce)
        return "Accepted"

    def reset(self, evse_id: int | None) -> str:
        """B11/B12 Reset of the station: close the link after the answer; :meth:`run` reconnects and boots again
        (reason RemoteReset). An EVSE cannot be reset on its own here."""
        if evse_id is not None:
            return "Rejected"

        async def reboot() -> None:
            self._boot_reason = "RemoteReset"
            if self._ws is not None:
                await self._ws.close()

        self.after_answer(reboot)
        return "Accepted"

    def unlock(self, evse_id: int, connector_id: int) -> str:
        """F05 UnlockConnector: the cables are tethered, so there is no lock to open."""
        port = self.model.ports.get(evse_id)
        if port is None or connector_id != 1:
            return "UnknownConnector"
        if port.transaction_id is not None:
            return "OngoingAuthorizedTransaction"
        return "UnlockFailed"
