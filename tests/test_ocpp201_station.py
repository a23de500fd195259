"""The emulated OCPP 2.0.1 station (emulators/ocpp201.py) against a CSMS written here with the ``ocpp`` library.

Every test runs on a :class:`bench.clock.SimLoop` in virtual time: the station and the CSMS talk over real websockets
on 127.0.0.1, but waiting for a 60 s TxUpdatedInterval or a reconnect backoff costs no wall-clock time. Waits are
bounded in *virtual* seconds; nothing here measures the wall clock. The CSMS's ChargePoint validates every message the
station sends against the 2.0.1 schemas, so each test also checks the station's messages are well-formed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
import websockets
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result
from ocpp.v201.enums import Action
from virtual_time import Tap, Watch, virtual

from bench.clock import SimClock, iso_z
from emulators.ev import EV, EVSpec
from emulators.ocpp201 import Station201
from emulators.station import StationModel

START_EPOCH = 1_718_000_000.0  # 2024-06-10T06:13:20Z, a whole second
STATION_ID = "CP201"


# --------------------------------------------------------------------------------------------------------------------
# The CSMS of these tests
# --------------------------------------------------------------------------------------------------------------------


class Csms(ChargePoint):
    """A minimal OCPP 2.0.1 CSMS: accepts everything, logs every request (snake_case, as the library hands it over)."""

    def __init__(self, cs_id: str, connection: Tap, server: CsmsServer) -> None:
        super().__init__(cs_id, connection, response_timeout=30)
        self.server = server

    def _got(self, action: str, payload: dict) -> None:
        self.server.requests.append((action, payload))
        self.server.watch.poke()

    @on(Action.boot_notification)
    def on_boot(self, **payload: Any):
        self._got("BootNotification", payload)
        status = self.server.boot_answers.pop(0) if self.server.boot_answers else "Accepted"
        return call_result.BootNotification(current_time=self.server.now_iso(), interval=300 if status == "Accepted"
                                            else 20, status=status)

    @on(Action.status_notification)
    def on_status(self, **payload: Any):
        self._got("StatusNotification", payload)
        return call_result.StatusNotification()

    @on(Action.heartbeat)
    def on_heartbeat(self, **payload: Any):
        self._got("Heartbeat", payload)
        return call_result.Heartbeat(current_time=self.server.now_iso())

    @on(Action.authorize)
    def on_authorize(self, id_token: dict, **payload: Any):
        self._got("Authorize", {"id_token": id_token, **payload})
        status = "Invalid" if id_token["id_token"] in self.server.invalid_tags else "Accepted"
        return call_result.Authorize(id_token_info={"status": status})

    @on(Action.transaction_event)
    def on_transaction_event(self, **payload: Any):
        self._got("TransactionEvent", payload)
        return call_result.TransactionEvent()

    @on(Action.meter_values)
    def on_meter_values(self, **payload: Any):
        self._got("MeterValues", payload)
        return call_result.MeterValues()

    @on(Action.notify_ev_charging_needs)
    def on_needs(self, **payload: Any):
        self._got("NotifyEVChargingNeeds", payload)
        return call_result.NotifyEVChargingNeeds(status="Accepted")

    @on(Action.notify_ev_charging_schedule)
    def on_schedule(self, **payload: Any):
        self._got("NotifyEVChargingSchedule", payload)
        return call_result.NotifyEVChargingSchedule(status="Accepted")

    @on(Action.notify_charging_limit)
    def on_charging_limit(self, **payload: Any):
        self._got("NotifyChargingLimit", payload)
        return call_result.NotifyChargingLimit()

    @on(Action.cleared_charging_limit)
    def on_cleared_charging_limit(self, **payload: Any):
        self._got("ClearedChargingLimit", payload)
        return call_result.ClearedChargingLimit()

    @on(Action.report_charging_profiles)
    def on_report_charging_profiles(self, **payload: Any):
        self._got("ReportChargingProfiles", payload)
        return call_result.ReportChargingProfiles()

    async def raw_call(self, frame: list, timeout_s: float = 30.0) -> Any:
        """Send a CALL exactly as given (no schema check on our side); return the CallResult or CallError."""
        async with self._call_lock:
            await self._send(json.dumps(frame))
            return await self._get_specific_response(frame[1], timeout_s)


class CsmsServer:
    """The websockets server around :class:`Csms` (subprotocol ocpp2.0.1, ephemeral port)."""

    def __init__(self) -> None:
        self.watch = Watch()
        self.requests: list[tuple[str, dict]] = []
        self.frames: list[tuple[str, str]] = []  # ("in" | "out", raw) as the CSMS saw them
        self.invalid_tags: set[str] = set()
        self.boot_answers: list[str] = []
        self.clock: SimClock | None = None  # the station's clock: its currentTime is ours, as on a synced site
        self.cp: Csms | None = None
        self.ws: Any = None
        self.connections = 0
        self._server: Any = None

    def now_iso(self) -> str:
        return iso_z(self.clock.epoch() if self.clock is not None else time.time())

    async def start(self) -> str:
        self._server = await websockets.serve(self._handler, "127.0.0.1", 0, subprotocols=["ocpp2.0.1"])
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _handler(self, ws: Any) -> None:
        self.connections += 1
        self.ws = ws
        cp = Csms(ws.request.path.strip("/"), Tap(ws, self.frames, self.watch), self)
        self.cp = cp
        self.watch.poke()
        try:
            await cp.start()
        except websockets.ConnectionClosed:
            pass

    def of(self, action: str) -> list[dict]:
        return [payload for name, payload in self.requests if name == action]

    def statuses(self, evse_id: int | None = None) -> list[str]:
        return [p["connector_status"] for p in self.of("StatusNotification")
                if evse_id is None or p["evse_id"] == evse_id]

    def events(self, event_type: str | None = None) -> list[dict]:
        return [p for p in self.of("TransactionEvent") if event_type is None or p["event_type"] == event_type]

    def answers_in(self) -> list[list]:
        """Every CallResult/CallError frame the station sent, parsed."""
        return [json.loads(raw) for d, raw in self.frames if d == "in" and raw.startswith(("[3", "[4"))]


@dataclass
class Rig:
    csms: CsmsServer
    station: Station201
    model: StationModel
    clock: SimClock
    recorded: list[tuple[str, str]] = field(default_factory=list)
    reports: list[tuple[str, dict]] = field(default_factory=list)
    physics_s: float = 0.0

    @property
    def cp(self) -> Csms:
        assert self.csms.cp is not None
        return self.csms.cp

    async def until(self, predicate: Callable[[], Any], timeout_s: float = 600.0, what: str = "") -> Any:
        return await self.csms.watch.until(predicate, timeout_s, what)

    def step(self, seconds: int = 1) -> None:
        """Advance the station's physics by ``seconds`` one-second steps, as the runner does."""
        for _ in range(seconds):
            self.physics_s += 1.0
            self.model.step(self.clock.epoch(), self.physics_s, 1.0, True)

    def of_kind(self, kind: str) -> list[dict]:
        return [detail for k, detail in self.reports if k == kind]


@asynccontextmanager
async def rig(connectors: int = 1, meter_value_interval_s: float = 60.0, boot_answers: tuple[str, ...] = (),
              max_current_a: float = 32.0):
    """A CSMS server and one Station201 connected to it; both stopped on exit."""
    csms = CsmsServer()
    csms.boot_answers = list(boot_answers)
    url = await csms.start()
    try:
        clock = csms.clock = SimClock(asyncio.get_running_loop(), START_EPOCH)
        model = StationModel(STATION_ID, connectors=connectors, max_current_a=max_current_a, version="2.0.1")
        recorded: list[tuple[str, str]] = []
        reports: list[tuple[str, dict]] = []

        def record(direction: str, raw: str) -> None:
            recorded.append((direction, raw))
            csms.watch.poke()

        def report(kind: str, detail: dict) -> None:
            reports.append((kind, detail))
            csms.watch.poke()

        station = Station201(model, url, clock, record, report, meter_value_interval_s=meter_value_interval_s)
        task = asyncio.create_task(station.run())
        try:
            await asyncio.wait_for(station.online.wait(), 120)
            yield Rig(csms, station, model, clock, recorded, reports)
        finally:
            await station.stop()
            try:
                await asyncio.wait_for(task, 15)
            except TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        await csms.stop()


def ev(initial_soc: float = 0.2, target_soc: float = 0.9, **kw: Any) -> EV:
    return EV(EVSpec(battery_kwh=60.0, initial_soc=initial_soc, target_soc=target_soc, **kw))


async def plug_and_charge(r: Rig, evse_id: int = 1, id_tag: str = "TAG1", car: EV | None = None) -> str:
    """Put an EV on the model, plug it in, wait for TransactionEvent Started; return the transaction id."""
    r.model.plug(evse_id, car or ev(), f"EV{evse_id}", id_tag)
    n = len(r.csms.events("Started"))
    await r.station.plug_in(evse_id, id_tag)
    await r.until(lambda: len(r.csms.events("Started")) > n, what="TransactionEvent Started")
    tx = r.model.ports[evse_id].transaction_id
    assert tx is not None
    return tx


def profile(pid: int, purpose: str, periods: list[tuple[int, float]], start_epoch: float | None = None,
            stack: int = 0, kind: str = "Absolute", tx: str | None = None, duration: int | None = None,
            valid_from: float | None = None) -> dict:
    """A ChargingProfileType in the ocpp library's snake_case form."""
    schedule: dict[str, Any] = {"id": pid, "charging_rate_unit": "A",
                                "charging_schedule_period": [{"start_period": s, "limit": lim} for s, lim in periods]}
    if start_epoch is not None:
        schedule["start_schedule"] = iso_z(start_epoch)
    if duration is not None:
        schedule["duration"] = duration
    body: dict[str, Any] = {"id": pid, "stack_level": stack, "charging_profile_purpose": purpose,
                            "charging_profile_kind": kind, "charging_schedule": [schedule]}
    if valid_from is not None:
        body["valid_from"] = iso_z(valid_from)
    if tx is not None:
        body["transaction_id"] = tx
    return body


def variable(component: str, name: str, value: str | None = None, attribute: str | None = None) -> dict:
    item: dict[str, Any] = {"component": {"name": component}, "variable": {"name": name}}
    if value is not None:
        item["attribute_value"] = value
    if attribute is not None:
        item["attribute_type"] = attribute
    return item


async def read_variable(r: Rig, component: str, name: str) -> dict:
    answer = await r.cp.call(call.GetVariables(get_variable_data=[variable(component, name)]))
    (result,) = answer.get_variable_result
    return result


async def still_answers(r: Rig) -> None:
    result = await read_variable(r, "OCPPCommCtrlr", "HeartbeatInterval")
    assert result["attribute_status"] == "Accepted"


def by_measurand(meter_value: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for value in meter_value["sampled_value"]:
        out.setdefault(value["measurand"], []).append(value)
    return out


def periods_of(schedule: dict) -> list[tuple[int, float]]:
    return [(p["start_period"], p["limit"]) for p in schedule["charging_schedule_period"]]


def epoch_of(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


# --------------------------------------------------------------------------------------------------------------------
# Boot, heartbeat, status
# --------------------------------------------------------------------------------------------------------------------


def test_boot_then_one_status_per_evse():
    async def main():
        async with rig(connectors=2) as r:
            (boot,) = r.csms.of("BootNotification")
            assert boot["reason"] == "PowerUp"
            assert boot["charging_station"] == {"model": "virtual-ac", "vendor_name": "evbench"}
            assert r.cp.id == STATION_ID
            assert r.csms.ws.subprotocol == "ocpp2.0.1"
            status = r.csms.of("StatusNotification")
            assert sorted((p["evse_id"], p["connector_id"]) for p in status) == [(1, 1), (2, 1)]
            assert {p["connector_status"] for p in status} == {"Available"}
            assert all(p["timestamp"].endswith("Z") for p in status)
            assert next(name for name, _ in r.csms.requests) == "BootNotification"

    virtual(main)


def test_pending_boot_is_retried_before_anything_else_is_sent():
    async def main():
        async with rig(boot_answers=("Pending",)) as r:
            actions = [name for name, _ in r.csms.requests]
            assert actions[:2] == ["BootNotification"] * 2
            assert r.clock.now_s() >= 20  # the interval the Pending answer asked for

    virtual(main)


def test_heartbeats_at_the_interval_the_csms_gave():
    async def main():
        async with rig() as r:
            await asyncio.sleep(650)
            assert len(r.csms.of("Heartbeat")) == 2  # at +300 and +600 s
            assert (await read_variable(r, "OCPPCommCtrlr", "HeartbeatInterval"))["attribute_value"] == "300"

    virtual(main)


# --------------------------------------------------------------------------------------------------------------------
# Transactions
# --------------------------------------------------------------------------------------------------------------------


def test_plug_in_authorizes_and_runs_a_transaction_with_meter_values_until_unplug():
    async def main():
        async with rig(connectors=2, meter_value_interval_s=60) as r:
            tx = await plug_and_charge(r, 2, "TAG1")
            assert tx == f"{STATION_ID}-2-1"
            (authorize,) = r.csms.of("Authorize")
            assert authorize["id_token"] == {"id_token": "TAG1", "type": "ISO14443"}
            (started,) = r.csms.events("Started")
            assert started["trigger_reason"] == "Authorized" and started["seq_no"] == 0
            assert started["transaction_info"] == {"transaction_id": tx, "charging_state": "Charging"}
            assert started["evse"] == {"id": 2, "connector_id": 1}
            assert started["id_token"] == {"id_token": "TAG1", "type": "ISO14443"}
            (energy,) = started["meter_value"][0]["sampled_value"]
            assert energy["measurand"] == "Energy.Active.Import.Register" and energy["value"] == 0
            assert energy["context"] == "Transaction.Begin"
            assert r.csms.statuses(2) == ["Available", "Occupied"]
            actions = [name for name, _ in r.csms.requests]
            assert actions.index("Authorize") < actions.index("TransactionEvent")
            assert r.model.ports[1].transaction_id is None

            r.step(10)  # the EV follows its offer after its 2 s lag
            port = r.model.ports[2]
            assert port.currents_a[0] > 6
            await r.until(lambda: len(r.csms.events("Updated")) >= 2, what="two periodic updates")
            updates = r.csms.events("Updated")
            assert [u["trigger_reason"] for u in updates] == ["MeterValuePeriodic"] * 2
            assert [u["seq_no"] for u in updates] == [1, 2]
            times = [epoch_of(u["timestamp"]) for u in updates]
            assert times[1] - times[0] == pytest.approx(60.0, abs=0.5)
            values = by_measurand(updates[0]["meter_value"][0])
            assert [v["phase"] for v in values["Current.Import"]] == ["L1", "L2", "L3"]
            assert [v["value"] for v in values["Current.Import"]] == pytest.approx(list(port.currents_a), abs=0.01)
            assert values["Current.Offered"][0]["value"] == pytest.approx(port.offered_a, abs=0.05)
            assert values["Power.Active.Import"][0]["value"] == pytest.approx(port.power_w, abs=1)
            assert values["Power.Active.Import"][0]["unit_of_measure"]["unit"] == "W"
            assert values["Energy.Active.Import.Register"][0]["value"] == pytest.approx(port.meter_wh, abs=1)
            soc = values["SoC"][0]
            assert soc["unit_of_measure"]["unit"] == "Percent" and soc["location"] == "EV"
            assert soc["value"] == pytest.approx(port.ev.soc * 100, abs=0.1)
            assert {v["context"] for vs in values.values() for v in vs} == {"Sample.Periodic"}

            r.step(120)
            register_wh = port.meter_wh
            await r.station.unplug(2)
            await r.until(lambda: r.csms.events("Ended"), what="Ended")
            (ended,) = r.csms.events("Ended")
            assert ended["trigger_reason"] == "EVCommunicationLost"
            assert ended["transaction_info"]["stopped_reason"] == "EVDisconnected"
            assert ended["transaction_info"]["transaction_id"] == tx
            assert ended["seq_no"] == 3
            (energy,) = ended["meter_value"][0]["sampled_value"]
            assert energy["value"] == round(register_wh) and energy["context"] == "Transaction.End"
            await r.until(lambda: r.csms.statuses(2)[-1:] == ["Available"], what="Available")
            assert r.model.ports[2].transaction_id is None

    virtual(main)


def test_authorization_refused_starts_no_transaction():
    async def main():
        async with rig() as r:
            r.csms.invalid_tags.add("STOLEN")
            r.model.plug(1, ev(), "EV1", "STOLEN")
            await r.station.plug_in(1, "STOLEN")
            await r.until(lambda: r.of_kind("station_error"), what="a station report")
            assert r.csms.of("Authorize") and not r.csms.events()
            assert r.model.ports[1].transaction_id is None
            await still_answers(r)

    virtual(main)


def test_full_ev_reports_suspended_ev():
    async def main():
        async with rig() as r:
            car = ev(initial_soc=0.899, target_soc=0.9)
            await plug_and_charge(r, car=car)
            for _ in range(600):
                r.step()
                if car.done:
                    break
            assert car.done
            await r.station.ev_full(1)
            await r.until(lambda: r.csms.events("Updated"), what="Updated")
            (update,) = r.csms.events("Updated")
            assert update["trigger_reason"] == "ChargingStateChanged"
            assert update["transaction_info"]["charging_state"] == "SuspendedEV"

    virtual(main)


# --------------------------------------------------------------------------------------------------------------------
# Device model
# --------------------------------------------------------------------------------------------------------------------


def test_get_variables_answers_each_item():
    async def main():
        async with rig() as r:
            answer = await r.cp.call(call.GetVariables(get_variable_data=[
                variable("SampledDataCtrlr", "TxUpdatedInterval"),
                variable("SmartChargingCtrlr", "RateUnit"),
                variable("SmartChargingCtrlr", "ProfileStackLevel"),
                variable("TxCtrlr", "TxStartPoint"),
                variable("SmartChargingCtrlr", "NoSuchVariable"),
                variable("NoSuchCtrlr", "Enabled"),
                variable("SampledDataCtrlr", "TxUpdatedInterval", attribute="MaxSet"),
            ]))
            results = answer.get_variable_result
            assert [x["attribute_status"] for x in results] == [
                "Accepted", "Accepted", "Accepted", "Accepted", "UnknownVariable", "UnknownComponent",
                "NotSupportedAttributeType"]
            assert [x.get("attribute_value") for x in results[:4]] == [
                "60", "A,W", str(r.model.engine.max_stack_level), "PowerPathClosed"]
            assert results[4]["variable"] == {"name": "NoSuchVariable"}  # each result names what was asked

    virtual(main)


@pytest.mark.parametrize(
    ("component", "name", "value", "status", "reason"),
    [
        ("SmartChargingCtrlr", "RateUnit", "W", "Rejected", "ReadOnly"),
        ("TxCtrlr", "TxStartPoint", "Authorized", "Rejected", "ReadOnly"),
        ("SampledDataCtrlr", "TxUpdatedInterval", "soon", "Rejected", "InvalidValue"),
        ("SampledDataCtrlr", "TxUpdatedInterval", "-5", "Rejected", "InvalidValue"),
        ("SampledDataCtrlr", "TxUpdatedMeasurands", "SoC,Voltage.Magic", "Rejected", "InvalidValue"),
        ("OCPPCommCtrlr", "HeartbeatInterval", "0", "Rejected", "InvalidValue"),
        ("SmartChargingCtrlr", "ExternalControlSignalsEnabled", "maybe", "Rejected", "InvalidValue"),
        ("SmartChargingCtrlr", "LimitChangeSignificance", "12.5", "Accepted", None),
        ("AlignedDataCtrlr", "Measurands", "SoC,Current.Import", "Accepted", None),
        ("NoSuchCtrlr", "Interval", "5", "UnknownComponent", None),
        ("AlignedDataCtrlr", "Colour", "5", "UnknownVariable", None),
    ],
)
def test_set_variables_answers(component, name, value, status, reason):
    async def main():
        async with rig() as r:
            before = await read_variable(r, component, name)
            answer = await r.cp.call(call.SetVariables(set_variable_data=[variable(component, name, value)]))
            (result,) = answer.set_variable_result
            assert result["attribute_status"] == status
            assert result.get("attribute_status_info", {}).get("reason_code") == reason
            after = await read_variable(r, component, name)
            if status == "Accepted":
                assert after["attribute_value"] == value
            else:
                assert after == before

    virtual(main)


def test_tx_updated_interval_and_measurands_take_effect_at_once():
    async def main():
        async with rig(meter_value_interval_s=60) as r:
            await plug_and_charge(r)
            await r.until(lambda: r.csms.events("Updated"), what="an update at 60 s")
            answer = await r.cp.call(call.SetVariables(set_variable_data=[
                variable("SampledDataCtrlr", "TxUpdatedInterval", "10"),
                variable("SampledDataCtrlr", "TxUpdatedMeasurands", "Current.Offered"),
            ]))
            assert [x["attribute_status"] for x in answer.set_variable_result] == ["Accepted", "Accepted"]
            changed_at = r.clock.epoch()
            n = len(r.csms.events("Updated"))
            await r.until(lambda: len(r.csms.events("Updated")) >= n + 3, what="three updates at 10 s")
            new = r.csms.events("Updated")[n:]
            times = [epoch_of(u["timestamp"]) for u in new]
            assert times[0] - changed_at == pytest.approx(10.0, abs=0.5)  # counted from the change
            assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([10.0, 10.0], abs=0.5)
            assert {v["measurand"] for u in new for v in u["meter_value"][0]["sampled_value"]} == {"Current.Offered"}

            answer = await r.cp.call(call.SetVariables(set_variable_data=[
                variable("SampledDataCtrlr", "TxUpdatedInterval", "0")]))
            assert answer.set_variable_result[0]["attribute_status"] == "Accepted"
            n = len(r.csms.events("Updated"))
            await asyncio.sleep(300)
            assert len(r.csms.events("Updated")) == n  # 0 switches periodic updates off

    virtual(main)


def test_clock_aligned_meter_values():
    async def main():
        async with rig(connectors=2) as r:
            await asyncio.sleep(1000)
            assert r.csms.of("MeterValues") == []  # Interval 0: off
            answer = await r.cp.call(call.SetVariables(set_variable_data=[
                variable("AlignedDataCtrlr", "Interval", "900")]))
            assert answer.set_variable_result[0]["attribute_status"] == "Accepted"
            await r.until(lambda: len(r.csms.of("MeterValues")) >= 4, timeout_s=2000, what="two aligned rounds")
            samples = r.csms.of("MeterValues")
            assert sorted(m["evse_id"] for m in samples[:2]) == [1, 2]
            for sample in samples:
                (meter_value,) = sample["meter_value"]
                assert epoch_of(meter_value["timestamp"]) % 900 == pytest.approx(0, abs=0.01)
                assert {v["measurand"] for v in meter_value["sampled_value"]} == {
                    "Energy.Active.Import.Register", "Power.Active.Import"}
                assert {v["context"] for v in meter_value["sampled_value"]} == {"Sample.Clock"}

    virtual(main)


# --------------------------------------------------------------------------------------------------------------------
# Smart charging
# --------------------------------------------------------------------------------------------------------------------


def test_tc_k_41_composite_schedule_over_the_wire():
    """TC_K_41_CS: Max 10 A; TxDefault 6/10/8/15/8 A; Tx 8/11/16/6/12 A → 8 A, 10 A at 50 s, 6 A at 200 s, 10 A at
    240 s, shifted by the seconds since the profiles were set."""

    async def main():
        async with rig() as r:
            tx = await plug_and_charge(r)
            t0 = r.clock.epoch()
            for evse_id, body in (
                (0, profile(1, "ChargingStationMaxProfile", [(0, 10.0)], t0)),
                (0, profile(2, "TxDefaultProfile", [(0, 6.0), (60, 10.0), (120, 8.0), (180, 15.0), (260, 8.0)], t0)),
                (1, profile(3, "TxProfile", [(0, 8.0), (50, 11.0), (140, 16.0), (200, 6.0), (240, 12.0)], t0,
                            tx=tx)),
            ):
                answer = await r.cp.call(call.SetChargingProfile(evse_id=evse_id, charging_profile=body))
                assert answer.status == "Accepted", answer.status_info
            assert r.clock.epoch() == t0  # virtual time: no second passed, so the offsets are exact

            answer = await r.cp.call(call.GetCompositeSchedule(duration=300, evse_id=1, charging_rate_unit="A"))
            assert answer.status == "Accepted"
            schedule = answer.schedule
            assert schedule["evse_id"] == 1 and schedule["duration"] == 300
            assert schedule["charging_rate_unit"] == "A"
            assert epoch_of(schedule["schedule_start"]) == pytest.approx(t0, abs=0.001)
            assert periods_of(schedule) == [(0, 8.0), (50, 10.0), (200, 6.0), (240, 10.0)]
            wire = r.csms.answers_in()[-1][2]
            assert wire["schedule"]["chargingSchedulePeriod"][1] == {"startPeriod": 50, "limit": 10.0}
            assert wire["schedule"]["scheduleStart"].endswith("Z")

            await asyncio.sleep(20)
            answer = await r.cp.call(call.GetCompositeSchedule(duration=300, evse_id=1))
            assert periods_of(answer.schedule) == [(0, 8.0), (30, 10.0), (180, 6.0), (220, 10.0)]
            r.step(1)
            assert r.model.ports[1].offered_a == pytest.approx(8.0)

    virtual(main)


def test_tc_k_40_stacking_over_the_wire():
    """TC_K_40_CS (test-case errata 2025-04): TxDefault stackLevel 0 for 400 s (6/8/10 A at 0/100/200 s) under
    stackLevel 1 for 150 s (7/9 A at 0/100 s) → 7 A, 9 A at 100 s, 8 A at 150 s, 10 A at 200 s."""

    async def main():
        async with rig() as r:
            t0 = r.clock.epoch()
            for body in (profile(1, "TxDefaultProfile", [(0, 6.0), (100, 8.0), (200, 10.0)], t0, duration=400),
                         profile(2, "TxDefaultProfile", [(0, 7.0), (100, 9.0)], t0, stack=1, duration=150)):
                answer = await r.cp.call(call.SetChargingProfile(evse_id=1, charging_profile=body))
                assert answer.status == "Accepted", answer.status_info
            answer = await r.cp.call(call.GetCompositeSchedule(duration=350, evse_id=1, charging_rate_unit="A"))
            assert periods_of(answer.schedule) == [(0, 7.0), (100, 9.0), (150, 8.0), (200, 10.0)]
            await asyncio.sleep(120)
            answer = await r.cp.call(call.GetCompositeSchedule(duration=300, evse_id=1))
            assert periods_of(answer.schedule) == [(0, 9.0), (30, 8.0), (80, 10.0), (280, 32.0)]

    virtual(main)


def test_tc_k_21_valid_from_in_the_future_takes_effect_on_time_over_the_wire():
    """TC_K_21_CS's purpose: a profile whose validFrom lies 300 s ahead changes nothing until then, and takes effect
    at that second — in the composite schedule and in what the EVSE offers."""

    async def main():
        async with rig() as r:
            await plug_and_charge(r)
            t0 = r.clock.epoch()
            body = profile(5, "TxDefaultProfile", [(0, 6.0)], kind="Relative", valid_from=t0 + 300)
            answer = await r.cp.call(call.SetChargingProfile(evse_id=1, charging_profile=body))
            assert answer.status == "Accepted", answer.status_info
            answer = await r.cp.call(call.GetCompositeSchedule(duration=600, evse_id=1))
            assert periods_of(answer.schedule) == [(0, 32.0), (300, 6.0)]
            r.step(1)
            assert r.model.ports[1].offered_a == 32.0
            await asyncio.sleep(300 - (r.clock.epoch() - t0))
            r.step(1)
            assert r.model.ports[1].offered_a == 6.0

    virtual(main)


def test_errata_load_balancing_over_the_wire():
    """Errata §2.46's example through a 2.0.1 session: a ChargingStationMaxProfile of 94 A (a 100 A connection less
    6 A the station keeps) bounds both EVSEs together — 94 A for one session, 47/47 A for two, 94 A when one ends."""

    async def main():
        async with rig(connectors=2, max_current_a=100.0) as r:
            t0 = r.clock.epoch()
            answer = await r.cp.call(call.SetChargingProfile(evse_id=0, charging_profile=profile(
                1, "ChargingStationMaxProfile", [(0, 94.0)], t0 - 1)))
            assert answer.status == "Accepted"
            big = dict(max_current_a=100.0, target_soc=0.95)
            await plug_and_charge(r, 1, car=ev(**big))
            r.step(1)
            assert (r.model.ports[1].offered_a, r.model.ports[2].offered_a) == (94.0, 0.0)
            await plug_and_charge(r, 2, id_tag="TAG2", car=ev(**big))
            r.step(1)
            assert (r.model.ports[1].offered_a, r.model.ports[2].offered_a) == (47.0, 47.0)
            await r.station.unplug(1)
            r.step(1)
            assert r.model.ports[2].offered_a == 94.0
            answer = await r.cp.call(call.GetCompositeSchedule(duration=60, evse_id=0))
            assert periods_of(answer.schedule) == [(0, 94.0)]

    virtual(main)


def test_composite_schedule_of_the_station_and_of_an_unknown_evse():
    async def main():
        async with rig(connectors=2) as r:
            answer = await r.cp.call(call.GetCompositeSchedule(duration=600, evse_id=0))
            assert answer.status == "Accepted"
            assert periods_of(answer.schedule) == [(0, 64.0)]  # no profile: both EVSEs at their 32 A
            answer = await r.cp.call(call.GetCompositeSchedule(duration=600, evse_id=7))
            assert answer.status == "Rejected" and answer.status_info["reason_code"] == "UnknownEvse"

    virtual(main)


@pytest.mark.parametrize(
    ("case", "reason_code"),
    [
        ("tx_profile_without_transaction", "TxNotFound"),
        ("tx_profile_without_transaction_id", "MissingParam"),
        ("relative_station_max", "InvalidValue"),
        ("external_constraints_from_csms", "InvalidValue"),
        ("duplicate_stack_level", "DuplicateProfile"),
        ("negative_limit", "InvalidValue"),
    ],
)
def test_k01_rejections_arrive_with_a_reason_code(case, reason_code):
    async def main():
        async with rig(connectors=2) as r:
            t0 = r.clock.epoch()
            if case == "tx_profile_without_transaction":
                evse_id, body = 2, profile(20, "TxProfile", [(0, 10.0)], t0, tx="no-such-tx")
            elif case == "tx_profile_without_transaction_id":
                await plug_and_charge(r, 1)
                evse_id, body = 1, profile(20, "TxProfile", [(0, 10.0)], t0)
            elif case == "relative_station_max":
                evse_id, body = 0, profile(20, "ChargingStationMaxProfile", [(0, 10.0)], kind="Relative")
            elif case == "external_constraints_from_csms":
                evse_id, body = 1, profile(20, "ChargingStationExternalConstraints", [(0, 10.0)], t0)
            elif case == "duplicate_stack_level":
                first = await r.cp.call(call.SetChargingProfile(
                    evse_id=1, charging_profile=profile(19, "TxDefaultProfile", [(0, 12.0)], t0, stack=3)))
                assert first.status == "Accepted"
                evse_id, body = 1, profile(20, "TxDefaultProfile", [(0, 10.0)], t0, stack=3)
            else:
                evse_id, body = 1, profile(20, "TxDefaultProfile", [(0, -4.0)], t0)
            installed = r.model.engine.profiles()
            answer = await r.cp.call(call.SetChargingProfile(evse_id=evse_id, charging_profile=body))
            assert answer.status == "Rejected"
            assert answer.status_info["reason_code"] == reason_code
            assert answer.status_info["additional_info"]
            assert r.model.engine.profiles() == installed
            if case == "negative_limit":  # a type-level problem: a station_error, the CSMS sent nonsense
                assert r.of_kind("station_error")[-1]["action"] == "SetChargingProfile"
            else:
                (rejected,) = r.of_kind("profile_rejected")
                assert rejected["evse"] == evse_id and rejected["profile_id"] == 20
                assert rejected["reason_code"] == reason_code and rejected["reason"]

    virtual(main)


def test_clear_charging_profile_by_id_and_by_criteria():
    async def main():
        async with rig(connectors=2) as r:
            t0 = r.clock.epoch()
            for pid, evse_id, stack in ((30, 0, 0), (31, 1, 1), (32, 2, 1)):
                answer = await r.cp.call(call.SetChargingProfile(
                    evse_id=evse_id, charging_profile=profile(pid, "TxDefaultProfile", [(0, 12.0)], t0, stack=stack)))
                assert answer.status == "Accepted"
            assert (await r.cp.call(call.ClearChargingProfile(charging_profile_id=30))).status == "Accepted"
            assert (await r.cp.call(call.ClearChargingProfile(charging_profile_id=30))).status == "Unknown"
            answer = await r.cp.call(call.ClearChargingProfile(charging_profile_criteria={
                "evse_id": 2, "charging_profile_purpose": "TxDefaultProfile", "stack_level": 1}))
            assert answer.status == "Accepted"
            assert [(evse, p.id) for evse, p in r.model.engine.profiles()] == [(1, 31)]
            answer = await r.cp.call(call.ClearChargingProfile(charging_profile_criteria={
                "evse_id": 1, "charging_profile_purpose": "ChargingStationMaxProfile"}))
            assert answer.status == "Unknown"

    virtual(main)


def test_get_charging_profiles_reports_per_evse_and_source():
    async def main():
        async with rig(connectors=2) as r:
            t0 = r.clock.epoch()
            for pid, evse_id in ((40, 0), (41, 1)):
                answer = await r.cp.call(call.SetChargingProfile(
                    evse_id=evse_id, charging_profile=profile(pid, "TxDefaultProfile", [(0, 16.0)], t0)))
                assert answer.status == "Accepted"
            assert await r.station.set_external_constraints(1, 20.0)

            answer = await r.cp.call(call.GetChargingProfiles(request_id=7, charging_profile={}))
            assert answer.status == "Accepted"
            await r.until(lambda: len(r.csms.of("ReportChargingProfiles")) == 3, what="three reports")
            reports = r.csms.of("ReportChargingProfiles")
            assert [(x["evse_id"], x["charging_limit_source"], x.get("tbc")) for x in reports] == [
                (0, "CSO", True), (1, "CSO", True), (1, "EMS", False)]
            assert {x["request_id"] for x in reports} == {7}
            assert reports[0]["charging_profile"][0]["id"] == 40
            assert reports[1]["charging_profile"][0]["charging_schedule"][0]["charging_schedule_period"] == [
                {"start_period": 0, "limit": 16.0}]
            assert reports[2]["charging_profile"][0]["charging_profile_purpose"] == "ChargingStationExternalConstraints"

            answer = await r.cp.call(call.GetChargingProfiles(request_id=8, charging_profile={
                "charging_limit_source": ["EMS"]}))
            assert answer.status == "Accepted"
            await r.until(lambda: len(r.csms.of("ReportChargingProfiles")) == 4, what="the EMS report")
            last = r.csms.of("ReportChargingProfiles")[-1]
            assert (last["request_id"], last["evse_id"], last["charging_limit_source"]) == (8, 1, "EMS")

            answer = await r.cp.call(call.GetChargingProfiles(request_id=9, evse_id=2, charging_profile={}))
            assert answer.status == "NoProfiles"
            answer = await r.cp.call(call.GetChargingProfiles(request_id=10, charging_profile={
                "charging_profile_id": [41]}))
            assert answer.status == "Accepted"
            await r.until(lambda: len(r.csms.of("ReportChargingProfiles")) == 5, what="the report of profile 41")
            assert [p["id"] for p in r.csms.of("ReportChargingProfiles")[-1]["charging_profile"]] == [41]

    virtual(main)


# --------------------------------------------------------------------------------------------------------------------
# Remote start and stop
# --------------------------------------------------------------------------------------------------------------------


def test_request_start_with_a_profile_then_request_stop():
    async def main():
        async with rig() as r:
            token = {"id_token": "REMOTE", "type": "Central"}
            tx_profile = profile(50, "TxProfile", [(0, 11.0)], kind="Relative")
            answer = await r.cp.call(call.RequestStartTransaction(id_token=token, remote_start_id=5, evse_id=1,
                                                                  charging_profile=tx_profile))
            assert answer.status == "Rejected"  # nothing plugged in

            r.model.plug(1, ev(), "EV1", "REMOTE")
            default = profile(51, "TxDefaultProfile", [(0, 11.0)], kind="Relative")
            answer = await r.cp.call(call.RequestStartTransaction(id_token=token, remote_start_id=5, evse_id=1,
                                                                  charging_profile=default))
            assert answer.status == "Rejected" and answer.status_info["reason_code"] == "InvalidProfile"

            answer = await r.cp.call(call.RequestStartTransaction(id_token=token, remote_start_id=6, evse_id=1,
                                                                  charging_profile=tx_profile))
            assert answer.status == "Accepted" and answer.transaction_id is None
            await r.until(lambda: r.csms.events("Started"), what="Started")
            (started,) = r.csms.events("Started")
            tx = started["transaction_info"]["transaction_id"]
            assert started["trigger_reason"] == "RemoteStart"
            assert started["transaction_info"]["remote_start_id"] == 6
            assert started["id_token"] == token
            # F01.FR.11: the station filled in the transaction id.
            assert [(evse, p.id, p.transaction_id) for evse, p in r.model.engine.profiles()] == [(1, 50, tx)]
            r.step(1)
            assert r.model.ports[1].offered_a == pytest.approx(11.0)

            answer = await r.cp.call(call.RequestStopTransaction(transaction_id="no-such-tx"))
            assert answer.status == "Rejected"
            answer = await r.cp.call(call.RequestStopTransaction(transaction_id=tx))
            assert answer.status == "Accepted"
            await r.until(lambda: r.csms.events("Ended"), what="Ended")
            (ended,) = r.csms.events("Ended")
            assert ended["trigger_reason"] == "RemoteStop"
            assert ended["transaction_info"]["stopped_reason"] == "Remote"
            assert ended["transaction_info"]["charging_state"] == "EVConnected"
            assert r.model.ports[1].transaction_id is None
            assert r.model.engine.profiles() == []  # the TxProfile ended with its transaction
            assert r.csms.statuses(1) == ["Available", "Occupied"]  # the EV is still plugged in

    virtual(main)


# --------------------------------------------------------------------------------------------------------------------
# ISO 15118 and external constraints
# --------------------------------------------------------------------------------------------------------------------


def test_iso15118_ev_tells_its_needs_and_chooses_a_schedule():
    async def main():
        async with rig() as r:
            car = ev(initial_soc=0.2, target_soc=0.8, iso15118=True, departure_s=4 * 3600.0,
                     max_current_a=16.0, discharge_max_current_a=10.0, min_soc=0.3)
            tx = await plug_and_charge(r, car=car)
            assert r.csms.of("Authorize")[0]["id_token"]["type"] == "eMAID"
            await r.until(lambda: r.csms.of("NotifyEVChargingNeeds"), what="NotifyEVChargingNeeds")
            (needs,) = r.csms.of("NotifyEVChargingNeeds")
            assert needs["evse_id"] == 1
            charging_needs = needs["charging_needs"]
            assert charging_needs["requested_energy_transfer"] == "AC_three_phase"
            assert charging_needs["departure_time"] == iso_z(START_EPOCH + 4 * 3600)
            assert charging_needs["ac_charging_parameters"] == {
                "energy_amount": 36_000, "ev_min_current": 6, "ev_max_current": 16, "ev_max_voltage": 230}
            assert charging_needs["custom_data"] == {"vendor_id": "org.evbench", "ev_max_discharge_current": 10.0,
                                                     "ev_min_soc": 30}
            raw = next(raw for d, raw in r.csms.frames if d == "in" and "NotifyEVChargingNeeds" in raw)
            assert json.loads(raw)[3]["chargingNeeds"]["customData"] == {
                "vendorId": "org.evbench", "evMaxDischargeCurrent": 10.0, "evMinSoC": 30}

            t0 = r.clock.epoch()
            answer = await r.cp.call(call.SetChargingProfile(evse_id=1, charging_profile=profile(
                60, "TxProfile", [(0, 24.0), (1800, 8.0)], t0, tx=tx)))
            assert answer.status == "Accepted"
            await r.until(lambda: r.csms.of("NotifyEVChargingSchedule"), what="NotifyEVChargingSchedule")
            (chosen,) = r.csms.of("NotifyEVChargingSchedule")
            assert chosen["evse_id"] == 1
            assert epoch_of(chosen["time_base"]) == pytest.approx(t0, abs=0.001)
            schedule = chosen["charging_schedule"]
            assert schedule["charging_rate_unit"] == "A" and schedule["id"] == 60
            assert schedule["duration"] == pytest.approx(START_EPOCH + 4 * 3600 - t0, abs=1)  # until departure
            assert periods_of(schedule) == [(0, 16.0), (1800, 8.0)]  # 24 A is more than this EV can take

            car.change_needs(target_soc=0.5)
            await r.station.renegotiate(1)
            await r.until(lambda: len(r.csms.of("NotifyEVChargingNeeds")) == 2, what="renegotiated needs")
            renegotiated = r.csms.of("NotifyEVChargingNeeds")[1]["charging_needs"]
            assert renegotiated["ac_charging_parameters"]["energy_amount"] == 18_000

    virtual(main)


def test_remote_start_of_an_iso15118_ev_reports_needs_then_the_chosen_schedule():
    async def main():
        async with rig() as r:
            r.model.plug(1, ev(iso15118=True), "EV1", "REMOTE")
            answer = await r.cp.call(call.RequestStartTransaction(
                id_token={"id_token": "REMOTE", "type": "Central"}, remote_start_id=1, evse_id=1,
                charging_profile=profile(80, "TxProfile", [(0, 13.0)], kind="Relative")))
            assert answer.status == "Accepted"
            await r.until(lambda: r.csms.of("NotifyEVChargingSchedule"), what="NotifyEVChargingSchedule")
            actions = [name for name, _ in r.csms.requests if name != "StatusNotification"]
            assert actions[-3:] == ["TransactionEvent", "NotifyEVChargingNeeds", "NotifyEVChargingSchedule"]
            schedule = r.csms.of("NotifyEVChargingSchedule")[0]["charging_schedule"]
            assert periods_of(schedule) == [(0, 13.0)] and schedule["duration"] == 86_400  # no departure: 24 h

    virtual(main)


def test_basic_ev_sends_no_charging_needs():
    async def main():
        async with rig() as r:
            tx = await plug_and_charge(r)
            answer = await r.cp.call(call.SetChargingProfile(evse_id=1, charging_profile=profile(
                61, "TxProfile", [(0, 16.0)], r.clock.epoch(), tx=tx)))
            assert answer.status == "Accepted"
            await r.station.renegotiate(1)
            await still_answers(r)
            assert r.csms.of("NotifyEVChargingNeeds") == [] and r.csms.of("NotifyEVChargingSchedule") == []

    virtual(main)


def test_external_constraints_lower_the_offer_and_notify_the_csms():
    async def main():
        async with rig() as r:
            await plug_and_charge(r)
            r.step(1)
            assert r.model.ports[1].offered_a == pytest.approx(32.0)

            assert await r.station.set_external_constraints(1, 10.0)
            await r.until(lambda: r.csms.of("NotifyChargingLimit"), what="NotifyChargingLimit")
            (limit,) = r.csms.of("NotifyChargingLimit")
            assert limit == {"charging_limit": {"charging_limit_source": "EMS"}, "evse_id": 1}
            r.step(1)
            assert r.model.ports[1].offered_a == pytest.approx(10.0)
            answer = await r.cp.call(call.GetCompositeSchedule(duration=60, evse_id=1))
            assert periods_of(answer.schedule) == [(0, 10.0)]

            # The CSMS cannot clear what the energy manager set (K10).
            answer = await r.cp.call(call.ClearChargingProfile(charging_profile_criteria={
                "charging_profile_purpose": "ChargingStationExternalConstraints"}))
            assert answer.status == "Unknown"

            # A change below LimitChangeSignificance [%] is applied but not notified.
            await r.cp.call(call.SetVariables(set_variable_data=[
                variable("SmartChargingCtrlr", "LimitChangeSignificance", "20")]))
            assert await r.station.set_external_constraints(1, 9.0)
            assert await r.station.set_external_constraints(1, 7.0)
            await r.until(lambda: len(r.csms.of("NotifyChargingLimit")) == 2, what="the significant change")
            r.step(1)
            assert r.model.ports[1].offered_a == pytest.approx(7.0)

            assert await r.station.set_external_constraints(1, None)
            await r.until(lambda: r.csms.of("ClearedChargingLimit"), what="ClearedChargingLimit")
            assert r.csms.of("ClearedChargingLimit") == [{"charging_limit_source": "EMS", "evse_id": 1}]
            r.step(1)
            assert r.model.ports[1].offered_a == pytest.approx(32.0)
            assert len(r.csms.of("NotifyChargingLimit")) == 2

            await r.cp.call(call.SetVariables(set_variable_data=[
                variable("SmartChargingCtrlr", "ExternalControlSignalsEnabled", "false")]))
            assert not await r.station.set_external_constraints(1, 6.0)
            r.step(1)
            assert r.model.ports[1].offered_a == pytest.approx(32.0)

    virtual(main)


def test_a_zero_limit_suspends_the_evse():
    async def main():
        async with rig() as r:
            await plug_and_charge(r)
            assert await r.station.set_external_constraints(0, 0.0)
            await r.until(lambda: r.csms.events("Updated"), what="ChargingStateChanged")
            (update,) = r.csms.events("Updated")
            assert update["trigger_reason"] == "ChargingStateChanged"
            assert update["transaction_info"]["charging_state"] == "SuspendedEVSE"
            assert await r.station.set_external_constraints(0, None)
            await r.until(lambda: len(r.csms.events("Updated")) == 2, what="charging again")
            assert r.csms.events("Updated")[1]["transaction_info"]["charging_state"] == "Charging"

    virtual(main)


# --------------------------------------------------------------------------------------------------------------------
# The rest of the basics
# --------------------------------------------------------------------------------------------------------------------


def test_trigger_message_sends_what_was_asked():
    async def main():
        async with rig(connectors=2) as r:
            await plug_and_charge(r, 1)
            answer = await r.cp.call(call.TriggerMessage(requested_message="StatusNotification", evse={"id": 2}))
            assert answer.status == "Accepted"
            await r.until(lambda: len(r.csms.statuses(2)) == 2, what="triggered status")
            answer = await r.cp.call(call.TriggerMessage(requested_message="TransactionEvent"))
            assert answer.status == "Accepted"
            await r.until(lambda: r.csms.events("Updated"), what="triggered TransactionEvent")
            assert r.csms.events("Updated")[0]["trigger_reason"] == "Trigger"
            answer = await r.cp.call(call.TriggerMessage(requested_message="Heartbeat"))
            assert answer.status == "Accepted"
            await r.until(lambda: r.csms.of("Heartbeat"), what="triggered Heartbeat")
            answer = await r.cp.call(call.TriggerMessage(requested_message="StatusNotification", evse={"id": 9}))
            assert answer.status == "Rejected"
            answer = await r.cp.call(call.TriggerMessage(requested_message="LogStatusNotification"))
            assert answer.status == "NotImplemented"

    virtual(main)


def test_availability_reset_unlock_data_transfer_and_cache():
    async def main():
        async with rig(connectors=2) as r:
            await plug_and_charge(r, 1)
            answer = await r.cp.call(call.ChangeAvailability(operational_status="Inoperative", evse={"id": 2}))
            assert answer.status == "Accepted"
            await r.until(lambda: r.csms.statuses(2)[-1:] == ["Unavailable"], what="Unavailable")
            answer = await r.cp.call(call.ChangeAvailability(operational_status="Inoperative", evse={"id": 1}))
            assert answer.status == "Scheduled"  # a transaction runs there
            answer = await r.cp.call(call.ChangeAvailability(operational_status="Operative", evse={"id": 5}))
            assert answer.status == "Rejected"

            assert (await r.cp.call(call.UnlockConnector(evse_id=1, connector_id=1))).status == \
                "OngoingAuthorizedTransaction"
            assert (await r.cp.call(call.UnlockConnector(evse_id=2, connector_id=1))).status == "UnlockFailed"
            assert (await r.cp.call(call.UnlockConnector(evse_id=3, connector_id=1))).status == "UnknownConnector"
            assert (await r.cp.call(call.DataTransfer(vendor_id="acme"))).status == "UnknownVendorId"
            assert (await r.cp.call(call.ClearCache())).status == "Accepted"

            answer = await r.cp.call(call.Reset(type="Immediate"))
            assert answer.status == "Accepted"
            await r.until(lambda: len(r.csms.of("BootNotification")) == 2, what="boot after reset")
            assert r.csms.of("BootNotification")[1]["reason"] == "RemoteReset"
            assert r.csms.connections == 2

    virtual(main)


# --------------------------------------------------------------------------------------------------------------------
# Bad input, recording, reconnecting
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "message_id", "error_code"),
    [
        ("this is not json", "-1", "RpcFrameworkError"),
        ('{"an": "object"}', "-1", "RpcFrameworkError"),
        ("[" * 100_000 + "]" * 100_000, "-1", "RpcFrameworkError"),
        ('[2, "no-payload", "Heartbeat"]', "no-payload", "RpcFrameworkError"),
        ('[2, 17, "Heartbeat", {}]', "-1", "RpcFrameworkError"),
        ('[9, "x", "Heartbeat", {}]', "x", "MessageTypeNotSupported"),
        ('[2, "bad-profile", "SetChargingProfile", {"evseId": 1}]', "bad-profile", None),
        ('[2, "bad-type", "SetChargingProfile", {"evseId": "one", "chargingProfile": {}}]', "bad-type", None),
        (('[2, "u1", "ReserveNow", {"id": 1, "expiryDateTime": "2024-06-10T07:00:00Z",'
         ' "idToken": {"idToken": "X", "type": "Central"}}]'), "u1", "NotImplemented"),
    ],
)
def test_bad_frames_get_call_errors_and_the_session_survives(frame, message_id, error_code):
    async def main():
        async with rig() as r:
            await r.cp._send(frame)
            await r.until(lambda: any(a[0] == 4 for a in r.csms.answers_in()), what="a CallError")
            (error,) = [a for a in r.csms.answers_in() if a[0] == 4]
            assert error[1] == message_id
            if error_code is not None:
                assert error[2] == error_code
            assert r.of_kind("station_error")
            await still_answers(r)
            assert r.csms.connections == 1
            assert ("to_station", frame) in r.recorded

    virtual(main)


def test_every_frame_in_both_directions_is_recorded():
    async def main():
        async with rig(meter_value_interval_s=30) as r:
            tx = await plug_and_charge(r)
            r.step(5)
            await r.cp.call(call.SetChargingProfile(evse_id=1, charging_profile=profile(
                70, "TxProfile", [(0, 12.0)], r.clock.epoch(), tx=tx)))
            await r.cp._send("not json at all")
            await r.until(lambda: len(r.csms.events("Updated")) >= 2, what="updates")
            await r.station.unplug(1)
            await still_answers(r)

            def station_view(direction: str) -> list[str]:
                return [raw for d, raw in r.recorded if d == direction]

            def csms_view(direction: str) -> list[str]:
                return [raw for d, raw in r.csms.frames if d == direction]

            await r.until(lambda: len(station_view("from_station")) == len(csms_view("in"))
                          and len(station_view("to_station")) == len(csms_view("out")), what="quiet link")
            assert station_view("from_station") == csms_view("in")
            assert station_view("to_station") == csms_view("out")
            calls = [json.loads(raw)[1] for raw in station_view("from_station") if raw.startswith("[2")]
            answers = {json.loads(raw)[1] for raw in station_view("to_station") if raw[:2] in ("[3", "[4")}
            assert set(calls) <= answers

    virtual(main)


def test_reconnects_and_boots_again_after_the_csms_closes_the_socket():
    async def main():
        async with rig(connectors=2) as r:
            tx = await plug_and_charge(r, 1)
            before = r.clock.now_s()
            await r.csms.ws.close()
            await r.until(lambda: len(r.csms.of("BootNotification")) == 2, what="second boot")
            await asyncio.wait_for(r.station.online.wait(), 60)
            assert r.csms.connections == 2
            assert r.clock.now_s() - before >= 1.0  # the backoff, in virtual time
            await r.until(lambda: len(r.csms.statuses()) >= 2 + 1 + 2, what="statuses after the new boot")
            assert r.csms.statuses(1)[-1] == "Occupied" and r.csms.statuses(2)[-1] == "Available"
            assert r.model.ports[1].transaction_id == tx
            await still_answers(r)
            await r.station.unplug(1)
            await r.until(lambda: r.csms.events("Ended"), what="Ended on the new link")
            assert r.csms.events("Ended")[0]["transaction_info"]["transaction_id"] == tx

    virtual(main)


def test_a_station_model_of_the_other_version_is_refused():
    with pytest.raises(ValueError, match="2.0.1"):
        Station201(StationModel("CP16"), "ws://127.0.0.1:1", None, lambda d, raw: None,  # type: ignore[arg-type]
                   lambda k, d: None)
