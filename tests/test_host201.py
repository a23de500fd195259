"""The controller host (controllers/host.py) speaking OCPP 2.0.1, and whole-profile decisions on both versions.

The stations here are written in the test with the ``ocpp`` library's ChargePoint (not the bench's
emulators): they connect to the host over real websockets on 127.0.0.1, send the wire JSON a
2.0.1 (or 1.6) station would send, answer the host's calls, and keep every frame they receive, so
what is asserted is what crossed the wire and what the controller was told. Everything runs in
virtual time (``virtual_time.virtual``); the host's ``now`` is the test's SimClock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st
from ocpp.exceptions import OCPPError
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as result201
from virtual_time import Watch, virtual

from bench.clock import SimClock
from controllers.api import ChargingNeeds, Controller, Limit, MeterSample, Profile, Session, SiteConfig, StationConfig
from controllers.host import ControllerHost, _parse_needs, _parse_sample

START_EPOCH = 1_718_000_000.0
WATCH: Watch | None = None  # the running test's watch; stations and the probe poke it


def iso_z(epoch: float) -> str:
    """Whole seconds with a Z, as the host writes times."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _poke() -> None:
    if WATCH is not None:
        WATCH.poke()


class Probe(Controller):
    """Records every hook and decides whatever the test put in ``decisions``."""

    name = "probe"
    period_s = 5.0
    meter_poll_s = 0.0
    meter_value_interval_s = 15.0

    def __init__(self, site: SiteConfig | None = None, failsafe: float | None = 10.0) -> None:
        super().__init__(site or SiteConfig(limit_a=32.0))
        self.failsafe = failsafe
        self.calls: list[tuple[str, tuple]] = []
        self.decisions: dict[Any, Any] = {}

    def _hook(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        _poke()

    def of(self, name: str) -> list[tuple]:
        return [args for hook, args in self.calls if hook == name]

    def failsafe_a(self, station_id: str) -> float | None:
        return self.failsafe

    def on_station_connected(self, station_id, ocpp_version, now):
        self._hook("connected", station_id, ocpp_version)

    def on_station_booted(self, station_id, vendor, model, now):
        self._hook("booted", station_id, vendor, model)

    def on_station_disconnected(self, station_id, now):
        self._hook("disconnected", station_id)

    def on_status(self, station_id, connector_id, status, now):
        self._hook("status", station_id, connector_id, status)

    def on_session_started(self, session: Session, now):
        self._hook("started", session)

    def on_session_ended(self, session: Session, energy_wh: float, now):
        self._hook("ended", session, energy_wh)

    def on_meter_sample(self, sample: MeterSample, now):
        self._hook("sample", sample)

    def on_charging_needs(self, needs: ChargingNeeds, now):
        self._hook("needs", needs)

    def allocate(self, now):
        return self.decisions


# --------------------------------------------------------------------------------------------------------------
# A station written in the test
# --------------------------------------------------------------------------------------------------------------


class _Answers:
    """The station's side of the host's calls: accept what the host configures, keep the frames."""

    wire: Wire

    async def route_message(self, raw_msg):
        self.wire.received.append((self.wire.clock.epoch(), raw_msg))
        _poke()
        await super().route_message(raw_msg)  # type: ignore[misc]

    async def _send(self, message):
        self.wire.answered.append(message)
        await super()._send(message)  # type: ignore[misc]


class _Station201(_Answers, ChargePoint201):
    @on("SetVariables")
    def on_set_variables(self, set_variable_data: list, **_: Any):
        return result201.SetVariables(set_variable_result=[
            {"attribute_status": "Accepted", "component": d["component"], "variable": d["variable"]}
            for d in set_variable_data])

    @on("SetChargingProfile")
    def on_set_charging_profile(self, **_: Any):
        return result201.SetChargingProfile(status=self.wire.profile_answer)


class _Station16(_Answers, ChargePoint16):
    @on("ChangeConfiguration")
    def on_change_configuration(self, **_: Any):
        return result16.ChangeConfiguration(status="Accepted")

    @on("SetChargingProfile")
    def on_set_charging_profile(self, **_: Any):
        return result16.SetChargingProfile(status=self.wire.profile_answer)


@dataclass
class Wire:
    """One station's end of the websocket."""

    station_id: str
    clock: SimClock
    ws: Any = None
    cp: Any = None
    task: asyncio.Task | None = None
    received: list[tuple[float, str]] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # frames the station sent
    profile_answer: str = "Accepted"

    def calls(self, action: str) -> list[dict]:
        """Payloads of the CALLs of ``action`` the host sent, as on the wire."""
        return [frame[3] for frame in self.frames() if frame[0] == 2 and frame[2] == action]

    def frames(self) -> list[list]:
        return [json.loads(raw) for _, raw in self.received]

    def when(self, action: str) -> list[float]:
        """Epochs at which CALLs of ``action`` arrived."""
        return [t for t, raw in self.received if json.loads(raw)[0] == 2 and json.loads(raw)[2] == action]

    async def send(self, action: str, payload: dict) -> dict:
        """A CALL exactly as written here; returns the CALLRESULT payload (a CALLERROR raises)."""
        cp = self.cp
        unique_id = str(cp._unique_id_generator())
        async with cp._call_lock:
            await cp._send(json.dumps([2, unique_id, action, payload]))
            answer = await cp._get_specific_response(unique_id, 30)
        if answer.message_type_id == 4:
            raise answer.to_exception()
        return answer.payload

    async def close(self) -> None:
        await self.ws.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


@dataclass
class Rig:
    host: ControllerHost
    clock: SimClock
    watch: Watch
    wires: list[Wire] = field(default_factory=list)

    async def until(self, predicate, timeout_s: float = 120.0, what: str = "") -> Any:
        return await self.watch.until(predicate, timeout_s, what)

    def iso(self, offset_s: float = 0.0) -> str:
        return iso_z(self.clock.epoch() + offset_s)

    async def connect(self, station_id: str, version: str = "2.0.1", offer: list[str] | None = None) -> Wire:
        wire = Wire(station_id, self.clock)
        wire.ws = await websockets.connect(f"{self.host.url}/{station_id}", subprotocols=offer or [f"ocpp{version}"],
                                           proxy=None, compression=None, open_timeout=10)
        cls = _Station16 if wire.ws.subprotocol == "ocpp1.6" else _Station201
        wire.cp = cls(station_id, wire.ws, response_timeout=30)
        wire.cp.wire = wire
        wire.task = asyncio.create_task(wire.cp.start())
        self.wires.append(wire)
        return wire

    async def boot(self, station_id: str, version: str = "2.0.1") -> Wire:
        wire = await self.connect(station_id, version)
        if version == "2.0.1":
            answer = await wire.send("BootNotification", {
                "chargingStation": {"model": "virtual-ac", "vendorName": "evbench"}, "reason": "PowerUp"})
        else:
            answer = await wire.send("BootNotification", {"chargePointVendor": "evbench",
                                                          "chargePointModel": "virtual-ac"})
        assert answer["status"] == "Accepted"
        return wire

    async def start_tx(self, wire: Wire, evse_id: int = 1, tx: str = "CP1-1-1", register_wh: float | None = 1500.0,
                       id_token: str = "ALICE") -> dict:
        event = {
            "eventType": "Started", "timestamp": self.iso(), "triggerReason": "Authorized", "seqNo": 0,
            "transactionInfo": {"transactionId": tx, "chargingState": "Charging"},
            "evse": {"id": evse_id, "connectorId": 1},
            "idToken": {"idToken": id_token, "type": "ISO14443"},
        }
        if register_wh is not None:
            event["meterValue"] = [{"timestamp": self.iso(), "sampledValue": [
                {"value": register_wh, "context": "Transaction.Begin", "measurand": "Energy.Active.Import.Register"}]}]
        return await wire.send("TransactionEvent", event)

    async def end_tx(self, wire: Wire, tx: str = "CP1-1-1", register_wh: float | None = None) -> dict:
        event = {"eventType": "Ended", "timestamp": self.iso(), "triggerReason": "EVDeparted", "seqNo": 9,
                 "transactionInfo": {"transactionId": tx, "stoppedReason": "EVDisconnected"}}
        if register_wh is not None:
            event["meterValue"] = [{"timestamp": self.iso(), "sampledValue": [
                {"value": register_wh, "context": "Transaction.End"}]}]
        return await wire.send("TransactionEvent", event)


@asynccontextmanager
async def host_rig(controller: Controller):
    global WATCH
    WATCH = Watch()
    clock = SimClock(asyncio.get_running_loop(), START_EPOCH)
    host = ControllerHost(controller, now=clock.epoch)
    await host.start()
    rig = Rig(host, clock, WATCH)
    try:
        yield rig
    finally:
        for wire in rig.wires:
            await wire.close()
        await host.stop()
        WATCH = None


def _tx_profiles(wire: Wire) -> list[dict]:
    return [p for p in wire.calls("SetChargingProfile")
            if p["chargingProfile"]["chargingProfilePurpose"] == "TxProfile"]


# --------------------------------------------------------------------------------------------------------------
# Negotiation
# --------------------------------------------------------------------------------------------------------------


def test_the_host_speaks_201_and_16_and_closes_stations_offering_neither():
    async def main():
        probe = Probe()
        async with host_rig(probe) as rig:
            cp1 = await rig.connect("CP1", "2.0.1")
            assert cp1.ws.subprotocol == "ocpp2.0.1"
            cp2 = await rig.connect("CP2", "1.6")
            assert cp2.ws.subprotocol == "ocpp1.6"
            both = await rig.connect("CP3", offer=["ocpp1.6", "ocpp2.0.1"])
            assert both.ws.subprotocol == "ocpp2.0.1"  # the host's preference
            await rig.until(lambda: len(probe.of("connected")) == 3, what="three connections")
            assert probe.of("connected") == [("CP1", "2.0.1"), ("CP2", "1.6"), ("CP3", "2.0.1")]

            # Each speaks its own version with the host.
            await cp1.send("BootNotification", {"chargingStation": {"model": "m201", "vendorName": "v201"},
                                                "reason": "PowerUp"})
            await cp2.send("BootNotification", {"chargePointVendor": "v16", "chargePointModel": "m16"})
            assert probe.of("booted") == [("CP1", "v201", "m201"), ("CP2", "v16", "m16")]

            # Offering only a version the host does not speak: the handshake completes without a
            # subprotocol and the host closes the socket at once, saying what it speaks.
            async with websockets.connect(rig.host.url + "/CP4", subprotocols=["ocpp2.1"], proxy=None,
                                          open_timeout=10) as ws:
                assert ws.subprotocol is None
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
            assert "ocpp2.0.1 or ocpp1.6" in closed.value.rcvd.reason
            assert "CP4" not in rig.host.stations
            assert [c for c in probe.of("connected") if c[0] == "CP4"] == []

    virtual(main)


# --------------------------------------------------------------------------------------------------------------
# Boot configuration
# --------------------------------------------------------------------------------------------------------------


def test_boot_is_answered_then_sampling_and_the_failsafe_default_profile_are_configured():
    async def main():
        probe = Probe(failsafe=10.0)
        async with host_rig(probe) as rig:
            cp1 = await rig.connect("CP1")
            answer = await cp1.send("BootNotification", {
                "chargingStation": {"model": "virtual-ac", "vendorName": "evbench"}, "reason": "PowerUp"})
            assert answer == {"currentTime": rig.iso(), "interval": 300, "status": "Accepted"}
            await rig.until(lambda: cp1.calls("SetVariables") and cp1.calls("SetChargingProfile"), what="configuration")
            assert probe.of("booted") == [("CP1", "evbench", "virtual-ac")]

            (variables,) = cp1.calls("SetVariables")
            settings = {(d["component"]["name"], d["variable"]["name"]): d["attributeValue"]
                        for d in variables["setVariableData"]}
            assert settings[("SampledDataCtrlr", "TxUpdatedInterval")] == "15"
            measurands = settings[("SampledDataCtrlr", "TxUpdatedMeasurands")].split(",")
            assert {"Current.Import", "Current.Offered", "Power.Active.Import", "Energy.Active.Import.Register",
                    "SoC"} <= set(measurands)
            assert settings[("SampledDataCtrlr", "TxEndedMeasurands")] == "Energy.Active.Import.Register"

            (failsafe,) = cp1.calls("SetChargingProfile")
            assert failsafe == {"evseId": 0, "chargingProfile": {
                "id": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
                "chargingProfileKind": "Absolute",
                "chargingSchedule": [{"id": 1, "chargingRateUnit": "A", "startSchedule": rig.iso(-1),
                                      "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}]}]}}

            # Heartbeat, status and authorisation are answered.
            assert (await cp1.send("Heartbeat", {}))["currentTime"] == rig.iso()
            await cp1.send("StatusNotification", {"timestamp": rig.iso(), "connectorStatus": "Occupied", "evseId": 1,
                                                  "connectorId": 1})
            assert probe.of("status") == [("CP1", 1, "Occupied")]
            answer = await cp1.send("Authorize", {"idToken": {"idToken": "ALICE", "type": "ISO14443"}})
            assert answer["idTokenInfo"]["status"] == "Accepted"

    virtual(main)


def test_no_failsafe_and_no_sample_interval_configure_nothing():
    async def main():
        probe = Probe(failsafe=None)
        probe.meter_value_interval_s = 0.0
        async with host_rig(probe) as rig:
            cp1 = await rig.boot("CP1")
            await asyncio.sleep(30)
            assert [f for f in cp1.frames() if f[0] == 2] == []

    virtual(main)


# --------------------------------------------------------------------------------------------------------------
# Transactions and meter values
# --------------------------------------------------------------------------------------------------------------


def test_transaction_events_become_sessions_samples_and_energy():
    async def main():
        probe = Probe()
        async with host_rig(probe) as rig:
            cp1 = await rig.boot("CP1")
            started_at = rig.clock.epoch()
            answer = await rig.start_tx(cp1, evse_id=1, tx="CP1-1-1", register_wh=1500.0)
            assert answer == {"idTokenInfo": {"status": "Accepted"}}
            ((session,),) = probe.of("started")
            assert session == Session("CP1", 1, "CP1-1-1", "ALICE", started_at, 1500.0)
            assert isinstance(session.transaction_id, str)

            # Updated with 2.0.1 sampled values: numbers, per phase, unitOfMeasure with unit and multiplier.
            await asyncio.sleep(15)
            sampled = [
                {"value": 15.5, "measurand": "Current.Import", "phase": "L1"},
                {"value": 15.0, "measurand": "Current.Import", "phase": "L2"},
                {"value": 14.5, "measurand": "Current.Import", "phase": "L3"},
                {"value": 16, "measurand": "Current.Offered"},
                {"value": 10.7, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "kW"}},
                {"value": 2.5, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh",
                                                                                               "multiplier": 3}},
                {"value": 41, "measurand": "SoC", "unitOfMeasure": {"unit": "Percent"}},
            ]
            await cp1.send("TransactionEvent", {
                "eventType": "Updated", "timestamp": rig.iso(), "triggerReason": "MeterValuePeriodic", "seqNo": 1,
                "transactionInfo": {"transactionId": "CP1-1-1"},  # no evse: found by its transaction
                "meterValue": [{"timestamp": rig.iso(-2), "sampledValue": sampled}]})
            ((sample,),) = probe.of("sample")
            assert sample == MeterSample("CP1", 1, rig.clock.epoch() - 2, (15.5, 15.0, 14.5), 16.0, 10700.0, 2500.0,
                                         0.41)

            # MeterValues outside a TransactionEvent reach the controller too.
            await cp1.send("MeterValues", {"evseId": 1, "meterValue": [{"timestamp": rig.iso(), "sampledValue": [
                {"value": 3000, "measurand": "Energy.Active.Import.Register"}]}]})
            assert probe.of("sample")[-1][0].energy_wh == 3000.0

            # Ended with its own register: energy = end - start.
            await rig.end_tx(cp1, "CP1-1-1", register_wh=9500.0)
            ((ended, energy_wh),) = probe.of("ended")
            assert ended == session
            assert energy_wh == pytest.approx(8000.0)
            assert rig.host.sessions["CP1"] == {}

            # Ended without a meter value: the last register the station reported.
            await rig.start_tx(cp1, evse_id=2, tx="CP1-2-1", register_wh=100.0)
            await cp1.send("TransactionEvent", {
                "eventType": "Updated", "timestamp": rig.iso(), "triggerReason": "MeterValuePeriodic", "seqNo": 1,
                "transactionInfo": {"transactionId": "CP1-2-1"}, "evse": {"id": 2},
                "meterValue": [{"timestamp": rig.iso(), "sampledValue": [{"value": 700}]}]})
            await rig.end_tx(cp1, "CP1-2-1")
            assert probe.of("ended")[-1][1] == pytest.approx(600.0)

            # A transaction without a register at its start counts from 0; one the host never saw is ignored.
            await rig.start_tx(cp1, evse_id=1, tx="CP1-1-2", register_wh=None, id_token="BOB")
            assert probe.of("started")[-1][0].meter_start_wh == 0.0
            assert probe.of("started")[-1][0].id_tag == "BOB"
            await rig.end_tx(cp1, "UNKNOWN", register_wh=5.0)
            assert len(probe.of("ended")) == 2
            # The same Started again (resent from an offline queue) does not start a second session.
            await rig.start_tx(cp1, evse_id=1, tx="CP1-1-2", register_wh=None)
            assert len(probe.of("started")) == 3

    virtual(main)


# --------------------------------------------------------------------------------------------------------------
# Allocation -> TxProfile
# --------------------------------------------------------------------------------------------------------------


def test_limits_become_tx_profiles_with_the_transaction_and_a_stable_id_per_evse():
    async def main():
        probe = Probe()
        probe.decisions = {("CP1", 1): Limit(13.37), ("CP1", 2): Limit(20.0)}
        async with host_rig(probe) as rig:
            cp1 = await rig.boot("CP1")
            await rig.until(lambda: cp1.calls("SetChargingProfile"), what="failsafe")
            await asyncio.sleep(20)
            assert _tx_profiles(cp1) == []  # no transaction, no TxProfile
            await rig.start_tx(cp1, evse_id=1, tx="CP1-1-1")
            await rig.start_tx(cp1, evse_id=2, tx="CP1-2-1")
            await rig.until(lambda: len(_tx_profiles(cp1)) == 2, what="two TxProfiles")
            first, second = sorted(_tx_profiles(cp1), key=lambda p: p["evseId"])
            assert first == {"evseId": 1, "chargingProfile": {
                "id": 1001, "stackLevel": 1, "chargingProfilePurpose": "TxProfile", "chargingProfileKind": "Absolute",
                "chargingSchedule": [{"id": 1001, "chargingRateUnit": "A", "startSchedule": rig.iso(-1),
                                      "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 13.3}]}],
                "transactionId": "CP1-1-1"}}
            assert (second["chargingProfile"]["id"], second["chargingProfile"]["transactionId"]) == (1002, "CP1-2-1")
            assert second["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"] == 20.0

            # An update reuses the EVSE's profile id; unchanged limits are not sent again.
            probe.decisions[("CP1", 1)] = Limit(8.0)
            await rig.until(lambda: len(_tx_profiles(cp1)) == 3, what="update")
            update = _tx_profiles(cp1)[-1]["chargingProfile"]
            assert (update["id"], update["transactionId"]) == (1001, "CP1-1-1")
            assert update["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"] == 8.0
            await asyncio.sleep(60)
            assert len(_tx_profiles(cp1)) == 3

            # A station that refuses a TxProfile gets it again at the next allocation.
            cp1.profile_answer = "Rejected"
            probe.decisions[("CP1", 1)] = Limit(9.0)
            await rig.until(lambda: len(_tx_profiles(cp1)) == 5, what="refused, sent again")
            cp1.profile_answer = "Accepted"
            await rig.until(lambda: len(_tx_profiles(cp1)) == 6, what="accepted at last")
            await asyncio.sleep(30)
            assert len(_tx_profiles(cp1)) == 6

    virtual(main)


# --------------------------------------------------------------------------------------------------------------
# ISO 15118 charging needs
# --------------------------------------------------------------------------------------------------------------


def test_charging_needs_are_accepted_reach_the_controller_and_a_tx_profile_follows():
    async def main():
        site = SiteConfig(limit_a=32.0, stations=(StationConfig("CP1", phases=3, ocpp="2.0.1"),))
        probe = Probe(site)
        probe.decisions = {("CP1", 1): Limit(16.0)}
        async with host_rig(probe) as rig:
            cp1 = await rig.boot("CP1")
            await rig.start_tx(cp1, evse_id=1, tx="CP1-1-1")
            await rig.until(lambda: _tx_profiles(cp1), what="first TxProfile")
            await asyncio.sleep(30)
            assert len(_tx_profiles(cp1)) == 1

            departure = rig.clock.epoch() + 4 * 3600
            asked_at = rig.clock.epoch()
            answer = await cp1.send("NotifyEVChargingNeeds", {"evseId": 1, "chargingNeeds": {
                "requestedEnergyTransfer": "AC_single_phase", "departureTime": iso_z(departure),
                "acChargingParameters": {"energyAmount": 20000, "evMinCurrent": 6, "evMaxCurrent": 24,
                                         "evMaxVoltage": 400},
                "customData": {"vendorId": "org.evbench", "evMaxDischargeCurrent": 10, "evMinSoC": 20}}})
            assert answer == {"status": "Accepted"}
            ((needs,),) = probe.of("needs")
            assert needs == ChargingNeeds(station_id="CP1", connector_id=1, transaction_id="CP1-1-1",
                                          received_at=asked_at, departure=departure, energy_wh=20000.0,
                                          min_current_a=6.0, max_current_a=24.0, phases=1,
                                          discharge_max_current_a=10.0, min_soc=0.2)

            # NEEDS-ANSWERED: a TxProfile for that EVSE follows at once, even though the limit did not change.
            await rig.until(lambda: len(_tx_profiles(cp1)) == 2, timeout_s=60, what="TxProfile after the needs")
            assert cp1.when("SetChargingProfile")[-1] - asked_at <= 1.0
            assert _tx_profiles(cp1)[-1]["evseId"] == 1

            # Schedules the EV chose and other notifications are acknowledged.
            schedule = {"timeBase": rig.iso(), "evseId": 1, "chargingSchedule": {
                "id": 1, "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16}]}}
            assert await cp1.send("NotifyEVChargingSchedule", schedule) == {"status": "Accepted"}
            assert await cp1.send("NotifyChargingLimit", {"chargingLimit": {"chargingLimitSource": "EMS"},
                                                          "evseId": 1}) == {}
            assert await cp1.send("ReportChargingProfiles", {
                "requestId": 1, "chargingLimitSource": "CSO", "evseId": 0, "tbc": False,
                "chargingProfile": [_max_profile_201(1, 20.0)]}) == {}
            assert await cp1.send("NotifyEvent", {"generatedAt": rig.iso(), "seqNo": 0, "eventData": [
                {"eventId": 1, "timestamp": rig.iso(), "trigger": "Alerting", "actualValue": "x",
                 "eventNotificationType": "HardWiredNotification", "component": {"name": "EVSE"},
                 "variable": {"name": "Problem"}}]}) == {}
            assert await cp1.send("NotifyReport", {"requestId": 1, "generatedAt": rig.iso(), "seqNo": 0}) == {}

    virtual(main)


def test_charging_needs_with_missing_or_odd_fields_give_none_never_a_crash():
    async def main():
        site = SiteConfig(limit_a=32.0, stations=(StationConfig("CP1", phases=3, ocpp="2.0.1"),))
        probe = Probe(site)
        async with host_rig(probe) as rig:
            cp1 = await rig.boot("CP1")
            # A DC car without AC parameters or departure, before any transaction.
            await cp1.send("NotifyEVChargingNeeds", {"evseId": 2, "chargingNeeds": {
                "requestedEnergyTransfer": "DC", "dcChargingParameters": {"evMaxCurrent": 200, "evMaxVoltage": 800}}})
            # Someone else's customData, and ours with values that are not numbers.
            await cp1.send("NotifyEVChargingNeeds", {"evseId": 1, "chargingNeeds": {
                "requestedEnergyTransfer": "AC_three_phase",
                "customData": {"vendorId": "com.other", "evMaxDischargeCurrent": 10, "evMinSoC": 20}}})
            await cp1.send("NotifyEVChargingNeeds", {"evseId": 1, "chargingNeeds": {
                "requestedEnergyTransfer": "AC_two_phase",
                "customData": {"vendorId": "org.evbench", "evMaxDischargeCurrent": "lots", "evMinSoC": None}}})
            dc, other, odd = (args[0] for args in probe.of("needs"))
            assert (dc.connector_id, dc.transaction_id, dc.departure, dc.energy_wh, dc.min_current_a,
                    dc.max_current_a, dc.phases) == (2, None, None, None, None, None, 3)
            assert (other.phases, other.discharge_max_current_a, other.min_soc) == (3, 0.0, None)
            assert (odd.phases, odd.discharge_max_current_a, odd.min_soc) == (2, 0.0, None)
            # A schema-invalid one is refused by the CSMS's validation, and the session goes on.
            with pytest.raises(OCPPError):
                await cp1.send("NotifyEVChargingNeeds", {"evseId": 1, "chargingNeeds": {
                    "requestedEnergyTransfer": "AC_three_phase", "departureTime": "tomorrow"}})
            assert len(probe.of("needs")) == 3
            assert (await cp1.send("Heartbeat", {}))["currentTime"] == rig.iso()

    virtual(main)


# --------------------------------------------------------------------------------------------------------------
# Whole profiles
# --------------------------------------------------------------------------------------------------------------


def _max_profile_201(profile_id: int, limit_a: float, kind: str = "Absolute") -> dict:
    schedule = {"id": profile_id, "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit_a}]}
    if kind == "Absolute":
        schedule["startSchedule"] = "2024-06-10T06:00:00Z"
    return {"id": profile_id, "stackLevel": 0, "chargingProfilePurpose": "ChargingStationMaxProfile",
            "chargingProfileKind": kind, "chargingSchedule": [schedule]}


def test_profile_decisions_are_sent_verbatim_on_both_versions(caplog):
    async def main():
        probe = Probe(failsafe=None)
        max_201 = {"evseId": 0, "chargingProfile": _max_profile_201(7, 94.0)}
        max_16 = {"connectorId": 0, "csChargingProfiles": {
            "chargingProfileId": 7, "stackLevel": 0, "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Relative", "chargingSchedule": {
                "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 4.0}]}}}
        # Wrong on purpose (the bench must see them): a TxProfile without a transaction, no session there...
        tx_without_transaction = {"evseId": 1, "chargingProfile": {
            "id": 50, "stackLevel": 3, "chargingProfilePurpose": "TxProfile", "chargingProfileKind": "Relative",
            "chargingSchedule": [{"id": 50, "chargingRateUnit": "A",
                                  "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 4.0}]}]}}
        # ... and one the 2.0.1 schema refuses (a field 2.0.1 does not have, a 1.6-style schedule object).
        schema_invalid = {"evseId": 2, "chargingProfile": {
            "id": 51, "stackLevel": 1, "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Absolute",
            "bogus": True, "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": []}}}
        probe.decisions = {("CP1", 0): Profile(max_201), ("CP1", 1): Profile(tx_without_transaction),
                           ("CP1", 2): Profile(schema_invalid), ("CP2", 0): Profile(max_16)}
        async with host_rig(probe) as rig:
            cp1 = await rig.boot("CP1", "2.0.1")
            cp2 = await rig.boot("CP2", "1.6")
            await rig.until(lambda: len(cp1.calls("SetChargingProfile")) == 3 and cp2.calls("SetChargingProfile"),
                            what="profiles on both stations")
            sent_201 = cp1.calls("SetChargingProfile")
            assert sorted(sent_201, key=lambda p: p["evseId"]) == [max_201, tx_without_transaction, schema_invalid]
            assert cp2.calls("SetChargingProfile") == [max_16]
            # Verbatim down to the key order.
            raws = [raw for _, raw in cp1.received if '"bogus"' in raw]
            assert len(raws) == 1 and json.dumps(schema_invalid, separators=(",", ":")) in raws[0]
            # The station's own validation answered the invalid one with a CALLERROR; the host carried on.
            (invalid_id,) = [f[1] for f in cp1.frames() if f[0] == 2 and "bogus" in json.dumps(f)]
            (error,) = [json.loads(raw) for raw in cp1.answered if json.loads(raw)[:2] == [4, invalid_id]]
            assert error[2] == "TypeConstraintViolation"  # chargingSchedule must be an array

            # Re-sent only on change: not every period, whatever the station answered.
            await asyncio.sleep(60)
            assert len(cp1.calls("SetChargingProfile")) == 3
            assert len(cp2.calls("SetChargingProfile")) == 1

            # A controller that edits its dict in place has changed its decision.
            max_201["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"] = 47.0
            await rig.until(lambda: len(cp1.calls("SetChargingProfile")) == 4, what="edited profile")
            assert cp1.calls("SetChargingProfile")[-1] == max_201

            # A profile for a station that is not connected waits until it is.
            probe.decisions[("CP9", 0)] = Profile(max_201)
            await asyncio.sleep(10)
            cp9 = await rig.boot("CP9")
            await rig.until(lambda: cp9.calls("SetChargingProfile"), what="profile after connecting")
            assert cp9.calls("SetChargingProfile") == [max_201]

            # A reconnect sends the profiles again (the station may have lost them).
            await cp2.close()
            cp2 = await rig.boot("CP2", "1.6")
            await rig.until(lambda: cp2.calls("SetChargingProfile"), what="profile after reconnecting")
            assert cp2.calls("SetChargingProfile") == [max_16]

    with caplog.at_level(logging.WARNING, logger="evbench.host"):
        virtual(main)
    warnings = [r.getMessage() for r in caplog.records if r.name == "evbench.host"]
    assert any("CP1" in w and "schema" in w and "sent as given" in w for w in warnings)
    assert not any("CP2" in w for w in warnings)  # the Relative 4 A max profile is schema-valid 1.6


def test_bad_decisions_are_logged_and_the_host_carries_on(caplog):
    async def main():
        probe = Probe(failsafe=None)
        probe.decisions = {"CP1": Limit(10.0), ("CP1", 1): "sixteen amps",
                           ("CP1", 0): Profile({"evseId": 0, "chargingProfile": {1, 2}})}
        async with host_rig(probe) as rig:
            cp1 = await rig.boot("CP1")
            await rig.start_tx(cp1)
            await asyncio.sleep(20)
            assert cp1.calls("SetChargingProfile") == []
            probe.decisions = {("CP1", 1): Limit(10.0)}
            await rig.until(lambda: _tx_profiles(cp1), what="TxProfile once decisions make sense")

    with caplog.at_level(logging.WARNING, logger="evbench.host"):
        virtual(main)
    messages = " | ".join(r.getMessage() for r in caplog.records if r.name == "evbench.host")
    assert "not (station id, connector id)" in messages
    assert "not a Limit or a Profile" in messages
    assert "not JSON" in messages


# --------------------------------------------------------------------------------------------------------------
# Reconnects
# --------------------------------------------------------------------------------------------------------------


def test_a_transaction_survives_a_reconnect_and_stays_controlled():
    async def main():
        probe = Probe()
        probe.decisions = {("CP1", 1): Limit(12.0)}
        async with host_rig(probe) as rig:
            cp1 = await rig.boot("CP1")
            await rig.start_tx(cp1, tx="CP1-1-1", register_wh=0.0)
            await rig.until(lambda: _tx_profiles(cp1), what="first TxProfile")
            await cp1.close()
            await rig.until(lambda: probe.of("disconnected"), what="disconnect")
            assert probe.of("disconnected") == [("CP1",)]

            cp1 = await rig.boot("CP1")
            assert rig.host.sessions["CP1"][1].transaction_id == "CP1-1-1"
            # The new link gets the limit again, for the same transaction.
            await rig.until(lambda: _tx_profiles(cp1), what="TxProfile on the new link")
            assert _tx_profiles(cp1)[0]["chargingProfile"]["transactionId"] == "CP1-1-1"
            probe.decisions[("CP1", 1)] = Limit(7.0)
            await rig.until(lambda: len(_tx_profiles(cp1)) == 2, what="update on the new link")
            assert _tx_profiles(cp1)[-1]["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"] == [
                {"startPeriod": 0, "limit": 7.0}]
            # Updated and Ended on the new link belong to the session started on the old one.
            await rig.end_tx(cp1, "CP1-1-1", register_wh=4200.0)
            assert probe.of("ended") == [(probe.of("started")[0][0], 4200.0)]
            assert len(probe.of("started")) == 1

    virtual(main)


# --------------------------------------------------------------------------------------------------------------
# Parsing whatever a schema-valid message may carry (the parsers directly: hundreds of examples, no sockets)
# --------------------------------------------------------------------------------------------------------------

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=3),
                     max_leaves=8)
_numbers = st.integers() | st.floats()


@settings(max_examples=300, deadline=None)
@given(ac=st.none() | st.fixed_dictionaries({}, optional={
           "energy_amount": st.integers(), "ev_min_current": st.integers(), "ev_max_current": st.integers(),
           "ev_max_voltage": st.integers()}),
       transfer=st.sampled_from(["DC", "AC_single_phase", "AC_two_phase", "AC_three_phase"]),
       departure=st.none() | st.datetimes().map(lambda d: d.isoformat() + "Z") | st.text(max_size=30),
       custom=st.none() | st.fixed_dictionaries({"vendor_id": st.sampled_from(["org.evbench", "x"])}, optional={
           "ev_max_discharge_current": _json, "ev_min_soc": _json}))
def test_any_charging_needs_parse_to_numbers_or_none(ac, transfer, departure, custom):
    needs = {"requested_energy_transfer": transfer}
    for key, value in (("ac_charging_parameters", ac), ("departure_time", departure), ("custom_data", custom)):
        if value is not None:
            needs[key] = value
    parsed = _parse_needs("CP1", 1, None, needs, 3, START_EPOCH)
    for value in (parsed.departure, parsed.energy_wh, parsed.min_current_a, parsed.max_current_a, parsed.min_soc):
        assert value is None or (isinstance(value, float) and math.isfinite(value))
    assert math.isfinite(parsed.discharge_max_current_a)
    assert parsed.phases in (1, 2, 3)


@settings(max_examples=300, deadline=None)
@given(sampled=st.lists(st.fixed_dictionaries({"value": _numbers}, optional={
    "measurand": st.sampled_from(["Current.Import", "Current.Offered", "Power.Active.Import", "SoC", "Voltage",
                                  "Energy.Active.Import.Register"]),
    "phase": st.sampled_from(["L1", "L2", "L3", "N", "L1-N", "L1-L2"]),
    "unit_of_measure": st.fixed_dictionaries({}, optional={"unit": st.sampled_from(["Wh", "kWh", "W", "kW", "A"]),
                                                           "multiplier": st.integers()})}), max_size=8),
    timestamp=st.text(max_size=30))
def test_any_sampled_values_parse_to_a_sample(sampled, timestamp):
    sample = _parse_sample("CP1", 1, {"timestamp": timestamp, "sampled_value": sampled}, START_EPOCH)
    assert (sample.station_id, sample.connector_id) == ("CP1", 1)
    assert sample.currents_a is None or 1 <= len(sample.currents_a) <= 3
    assert math.isfinite(sample.timestamp)
