"""The emulated OCPP 1.6J station (emulators/ocpp16.py) against a CSMS written here with the ``ocpp`` library.

Every test runs on a :class:`bench.clock.SimLoop` in virtual time (``bench.clock.run``): the station and
the CSMS talk over real websockets on 127.0.0.1, but waiting for a 60 s MeterValueSampleInterval or a
reconnect backoff costs no wall-clock time. Waits are bounded in *virtual* seconds; nothing here
measures the wall clock.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable
from unittest.mock import ANY

import pytest
import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action, AuthorizationStatus, RegistrationStatus

from bench.clock import SimClock, iso_z
from emulators.ev import EV, EVSpec
from emulators.ocpp16 import Station16
from emulators.station import StationModel
from emulators.station_link import CLOCK_SYNC_THRESHOLD_S
from virtual_time import Tap, Watch, virtual

START_EPOCH = 1_718_000_000.0  # 2024-06-10T06:13:20Z, a whole second
STATION_ID = "CP-TEST"


# --------------------------------------------------------------------------------------------------------------
# The CSMS of these tests
# --------------------------------------------------------------------------------------------------------------


class Csms(ChargePoint):
    """A minimal OCPP 1.6 central system: accepts everything, numbers transactions, logs requests."""

    def __init__(self, cp_id: str, connection: Tap, server: "CsmsServer") -> None:
        super().__init__(cp_id, connection, response_timeout=30)
        self.server = server

    def _got(self, action: str, payload: dict) -> None:
        self.server.requests.append((action, payload))
        self.server.watch.poke()

    @on(Action.boot_notification)
    def on_boot(self, **payload: Any):
        self._got("BootNotification", payload)
        if self.server.boot_answers:  # e.g. Pending first, to test the retry
            return call_result.BootNotification(current_time=self.server.now_iso(), interval=20,
                                                status=self.server.boot_answers.pop(0))
        return call_result.BootNotification(current_time=self.server.now_iso(), interval=300,
                                            status=RegistrationStatus.accepted)

    @on(Action.status_notification)
    def on_status(self, **payload: Any):
        self._got("StatusNotification", payload)
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_tag: str, **payload: Any):
        self._got("Authorize", {"id_tag": id_tag, **payload})
        status = AuthorizationStatus.invalid if id_tag in self.server.invalid_tags else AuthorizationStatus.accepted
        return call_result.Authorize(id_tag_info={"status": status})

    @on(Action.start_transaction)
    def on_start_transaction(self, call_unique_id: str, **payload: Any):
        tx = next(self.server.transaction_ids)
        self._got("StartTransaction", {**payload, "assigned_transaction_id": tx})
        if self.server.chase_start_conf is not None:
            self._chase = (call_unique_id, self.server.chase_start_conf(payload["connector_id"], tx))
        return call_result.StartTransaction(transaction_id=tx, id_tag_info={"status": AuthorizationStatus.accepted})

    async def _send(self, message: str) -> None:
        chase = getattr(self, "_chase", None)
        if chase is not None and message.startswith(f'[3,"{chase[0]}"'):
            # Right behind StartTransaction.conf, as a smart-charging CSMS does: a frame for the new
            # transaction, in the same TCP write so that the station reads both at once.
            self._chase = None
            tap = self._connection
            tap.log.extend([("out", message), ("out", chase[1])])
            ws = tap.ws
            ws.protocol.send_text(message.encode())
            ws.protocol.send_text(chase[1].encode())
            ws.transport.write(b"".join(ws.protocol.data_to_send()))
            return
        await super()._send(message)

    @on(Action.stop_transaction)
    def on_stop_transaction(self, **payload: Any):
        self._got("StopTransaction", payload)
        return call_result.StopTransaction(id_tag_info={"status": AuthorizationStatus.accepted})

    @on(Action.meter_values)
    def on_meter_values(self, **payload: Any):
        self._got("MeterValues", payload)
        return call_result.MeterValues()

    @on(Action.heartbeat)
    def on_heartbeat(self, **payload: Any):
        self._got("Heartbeat", payload)
        return call_result.Heartbeat(current_time=self.server.now_iso())

    async def raw_call(self, frame: list | str, timeout_s: float = 30.0) -> Any:
        """Send a CALL exactly as given (no schema check on our side); return the CallResult or CallError."""
        text = frame if isinstance(frame, str) else json.dumps(frame)
        unique_id = frame[1]
        async with self._call_lock:
            await self._send(text)
            return await self._get_specific_response(unique_id, timeout_s)


class CsmsServer:
    """The websockets server around :class:`Csms` (subprotocol ocpp1.6, ephemeral port)."""

    def __init__(self) -> None:
        self.watch = Watch()
        self.requests: list[tuple[str, dict]] = []
        self.frames: list[tuple[str, str]] = []  # ("in" | "out", raw) as the CSMS saw them
        self.transaction_ids = itertools.count(501)
        self.invalid_tags: set[str] = set()
        self.boot_answers: list[str] = []
        self.clock: SimClock | None = None  # the station's clock: its currentTime is ours, as on a synced site
        # (connector_id, transaction_id) -> raw frame sent immediately after the StartTransaction.conf
        self.chase_start_conf: Callable[[int, int], str] | None = None
        self.cp: Csms | None = None
        self.ws: Any = None
        self.connections = 0
        self._server: Any = None

    def now_iso(self) -> str:
        return iso_z(self.clock.epoch() if self.clock is not None else time.time())

    async def start(self) -> str:
        self._server = await websockets.serve(self._handler, "127.0.0.1", 0, subprotocols=["ocpp1.6"])
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}"

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

    def statuses(self, connector_id: int | None = None) -> list[str]:
        return [p["status"] for p in self.of("StatusNotification")
                if connector_id is None or p["connector_id"] == connector_id]


@dataclass
class Rig:
    csms: CsmsServer
    station: Station16
    model: StationModel
    clock: SimClock
    recorded: list[tuple[str, str]] = field(default_factory=list)
    reports: list[tuple[str, dict]] = field(default_factory=list)

    @property
    def cp(self) -> Csms:
        assert self.csms.cp is not None
        return self.csms.cp

    async def until(self, predicate: Callable[[], Any], timeout_s: float = 600.0, what: str = "") -> Any:
        return await self.csms.watch.until(predicate, timeout_s, what)

    def step(self, seconds: int = 1) -> None:
        """Advance the station's physics by ``seconds`` one-second steps (scenario time follows the clock)."""
        for _ in range(seconds):
            self._physics_s = getattr(self, "_physics_s", 0.0) + 1.0
            self.model.step(self.clock.epoch(), self._physics_s, 1.0, True)

    def problems(self) -> list[tuple[str, dict]]:
        """What the station reported other than having connected."""
        return [(kind, detail) for kind, detail in self.reports if kind != "station_connected"]


@asynccontextmanager
async def rig(connectors: int = 1, meter_value_interval_s: float = 60.0, heartbeat_interval_s: float = 300.0,
              boot_answers: tuple[str, ...] = (), csms_ahead_s: float = 0.0):
    """A CSMS server and one Station16 connected to it; both stopped on exit. The CSMS's clock runs
    ``csms_ahead_s`` ahead of the bench's (a product on the real date, the bench on the scenario's)."""
    csms = CsmsServer()
    csms.boot_answers = list(boot_answers)
    url = await csms.start()
    try:
        clock = SimClock(asyncio.get_running_loop(), START_EPOCH)
        csms.clock = SimClock(asyncio.get_running_loop(), START_EPOCH + csms_ahead_s) if csms_ahead_s else clock
        model = StationModel(STATION_ID, connectors=connectors)
        recorded: list[tuple[str, str]] = []
        reports: list[tuple[str, dict]] = []

        def record(direction: str, raw: str) -> None:
            recorded.append((direction, raw))
            csms.watch.poke()

        def report(kind: str, detail: dict) -> None:
            reports.append((kind, detail))
            csms.watch.poke()

        station = Station16(model, url, clock, record, report, meter_value_interval_s=meter_value_interval_s,
                            heartbeat_interval_s=heartbeat_interval_s)
        task = asyncio.create_task(station.run())
        try:
            await asyncio.wait_for(station.online.wait(), 60)
            yield Rig(csms, station, model, clock, recorded, reports)
        finally:
            await station.stop()
            try:
                await asyncio.wait_for(task, 15)
            except asyncio.TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        await csms.stop()


def ev(initial_soc: float = 0.2, **kw: Any) -> EV:
    return EV(EVSpec(battery_kwh=60.0, initial_soc=initial_soc, target_soc=0.9, **kw))


async def plug_and_charge(r: Rig, connector_id: int = 1, id_tag: str = "TAG1") -> int:
    """Put an EV on the model, plug it in, wait for Charging; return the transaction id."""
    r.model.plug(connector_id, ev(), f"EV{connector_id}", id_tag)
    await r.station.plug_in(connector_id, id_tag)
    await r.until(lambda: r.csms.statuses(connector_id)[-1:] == ["Charging"], what="status Charging")
    tx = r.model.ports[connector_id].transaction_id
    assert tx is not None
    return tx


def absolute_profile(pid: int, purpose: str, limit: float, start_epoch: float, stack: int = 0,
                     duration: int | None = None, tx: int | None = None) -> dict:
    """A csChargingProfiles payload in the ocpp library's snake_case form."""
    schedule: dict[str, Any] = {
        "charging_rate_unit": "A",
        "start_schedule": iso_z(start_epoch),
        "charging_schedule_period": [{"start_period": 0, "limit": limit}],
    }
    if duration is not None:
        schedule["duration"] = duration
    profile: dict[str, Any] = {
        "charging_profile_id": pid,
        "stack_level": stack,
        "charging_profile_purpose": purpose,
        "charging_profile_kind": "Absolute",
        "charging_schedule": schedule,
    }
    if tx is not None:
        profile["transaction_id"] = tx
    return profile


def wire_profile(limit: Any = 16.0, **overrides: Any) -> dict:
    """A csChargingProfiles payload as on the wire (camelCase), for raw frames."""
    profile = {
        "chargingProfileId": 77,
        "stackLevel": 0,
        "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "startSchedule": iso_z(START_EPOCH),
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
        },
    }
    profile.update(overrides)
    return profile


async def still_answers(r: Rig) -> None:
    answer = await r.cp.call(call.GetConfiguration(key=["HeartbeatInterval"]))
    assert answer is not None
    assert [k["key"] for k in answer.configuration_key] == ["HeartbeatInterval"]


# --------------------------------------------------------------------------------------------------------------
# Boot, status, transactions
# --------------------------------------------------------------------------------------------------------------


def test_boot_then_one_status_per_connector():
    async def main():
        async with rig(connectors=2) as r:
            boots = r.csms.of("BootNotification")
            assert len(boots) == 1
            assert boots[0]["charge_point_vendor"] == "evbench"
            assert r.csms.cp.id == STATION_ID  # the station connects to <url>/<id>
            assert r.csms.ws.subprotocol == "ocpp1.6"
            status = r.csms.of("StatusNotification")
            assert sorted(p["connector_id"] for p in status) == [1, 2]
            assert {p["status"] for p in status} == {"Available"}
            assert {p["error_code"] for p in status} == {"NoError"}
            # Status comes after the boot was accepted, never before.
            actions = [name for name, _ in r.csms.requests]
            assert actions[0] == "BootNotification"

    virtual(main)


def test_plug_in_authorizes_starts_transaction_and_unplug_stops_it():
    async def main():
        async with rig(connectors=2) as r:
            r.model.plug(2, ev(), "EV1", "TAG1")
            await r.station.plug_in(2, "TAG1")
            await r.until(lambda: r.csms.statuses(2)[-1:] == ["Charging"], what="Charging")

            assert [p["id_tag"] for p in r.csms.of("Authorize")] == ["TAG1"]
            (start,) = r.csms.of("StartTransaction")
            assert start["connector_id"] == 2 and start["id_tag"] == "TAG1" and start["meter_start"] == 0
            assert r.csms.statuses(2) == ["Available", "Preparing", "Charging"]
            assert r.model.ports[2].transaction_id == start["assigned_transaction_id"]
            assert r.model.ports[2].tx_start_epoch is not None
            assert r.model.ports[1].transaction_id is None  # the other connector is untouched
            # Authorize precedes StartTransaction on the wire.
            actions = [name for name, _ in r.csms.requests]
            assert actions.index("Authorize") < actions.index("StartTransaction")

            r.step(120)  # two minutes of charging put energy on the register
            register_wh = r.model.ports[2].meter_wh
            assert register_wh > 100

            await r.station.unplug(2)
            await r.until(lambda: r.csms.statuses(2)[-1:] == ["Available"], what="Available")
            (stop,) = r.csms.of("StopTransaction")
            assert stop["transaction_id"] == start["assigned_transaction_id"]
            assert stop["meter_stop"] == int(register_wh)
            assert stop["reason"] == "EVDisconnected"
            assert r.model.ports[2].transaction_id is None
            assert r.csms.statuses(2) == ["Available", "Preparing", "Charging", "Available"]

    virtual(main)


def test_authorization_refused_starts_no_transaction():
    async def main():
        async with rig() as r:
            r.csms.invalid_tags.add("STOLEN")
            r.model.plug(1, ev(), "EV1", "STOLEN")
            await r.station.plug_in(1, "STOLEN")
            await r.until(r.problems, what="a station report")
            assert r.csms.of("Authorize") and not r.csms.of("StartTransaction")
            assert r.model.ports[1].transaction_id is None
            assert [kind for kind, _ in r.problems()] == ["station_error"]
            await still_answers(r)

    virtual(main)


def test_pending_boot_is_retried_and_nothing_else_is_sent_before_acceptance():
    async def main():
        async with rig(boot_answers=("Pending", "Rejected")) as r:
            boots = r.csms.of("BootNotification")
            assert len(boots) == 3
            actions = [name for name, _ in r.csms.requests]
            assert actions[:3] == ["BootNotification"] * 3  # no StatusNotification while not accepted
            assert r.csms.statuses() == ["Available"]
            assert r.clock.now_s() >= 40  # waited the interval (20 s) the CSMS asked for, twice
            assert r.csms.connections == 1

    virtual(main)


def test_heartbeats_at_the_interval_the_csms_gave():
    async def main():
        async with rig() as r:
            booted = r.clock.now_s()
            await asyncio.sleep(650)
            # The CSMS answered interval=300: heartbeats at +300 and +600, no more.
            assert len(r.csms.of("Heartbeat")) == 2
            assert r.station.config.values["HeartbeatInterval"] == "300"
            assert r.clock.now_s() - booted >= 650

    virtual(main)


# --------------------------------------------------------------------------------------------------------------
# MeterValues and configuration
# --------------------------------------------------------------------------------------------------------------


def _sample_times(r: Rig) -> list[float]:
    """Epoch seconds of each MeterValues sample, from its (RFC 3339, Z) timestamp."""
    return [datetime.fromisoformat(mv["meter_value"][0]["timestamp"].replace("Z", "+00:00")).timestamp()
            for mv in r.csms.of("MeterValues")]


def test_meter_values_carry_all_measurands_at_the_sample_interval():
    async def main():
        async with rig(meter_value_interval_s=60) as r:
            tx = await plug_and_charge(r)
            r.step(10)  # the EV follows its offer after its 2 s lag
            port = r.model.ports[1]
            assert port.currents_a[0] > 6

            await r.until(lambda: len(r.csms.of("MeterValues")) >= 2, what="two MeterValues")
            first = r.csms.of("MeterValues")[0]
            assert first["connector_id"] == 1 and first["transaction_id"] == tx
            values = first["meter_value"][0]["sampled_value"]
            by_measurand: dict[str, list[dict]] = {}
            for v in values:
                by_measurand.setdefault(v["measurand"], []).append(v)
            currents = by_measurand["Current.Import"]
            assert [c["phase"] for c in currents] == ["L1", "L2", "L3"]
            assert all(c["unit"] == "A" for c in currents)
            assert [float(c["value"]) for c in currents] == pytest.approx(list(port.currents_a), abs=0.01)
            assert float(by_measurand["Current.Offered"][0]["value"]) == pytest.approx(port.offered_a, abs=0.05)
            assert float(by_measurand["Power.Active.Import"][0]["value"]) == pytest.approx(port.power_w, abs=1)
            assert by_measurand["Power.Active.Import"][0]["unit"] == "W"
            energy = by_measurand["Energy.Active.Import.Register"][0]
            assert energy["unit"] == "Wh" and float(energy["value"]) == pytest.approx(port.meter_wh, abs=1)
            soc = by_measurand["SoC"][0]
            assert soc["unit"] == "Percent" and float(soc["value"]) == pytest.approx(port.ev.soc * 100, abs=0.1)

            times = _sample_times(r)
            assert times[1] - times[0] == pytest.approx(60.0, abs=0.5)

    virtual(main)


def test_no_meter_values_without_a_transaction():
    async def main():
        async with rig(meter_value_interval_s=10) as r:
            await asyncio.sleep(100)
            assert r.csms.of("MeterValues") == []

    virtual(main)


def test_change_configuration_of_sample_interval_changes_the_cadence():
    async def main():
        async with rig(meter_value_interval_s=60) as r:
            await plug_and_charge(r)
            await r.until(lambda: len(r.csms.of("MeterValues")) >= 2, what="two samples at 60 s")
            answer = await r.cp.call(call.ChangeConfiguration(key="MeterValueSampleInterval", value="10"))
            assert answer.status == "Accepted"
            changed_at = r.clock.epoch()
            n = len(r.csms.of("MeterValues"))
            await r.until(lambda: len(r.csms.of("MeterValues")) >= n + 4, what="four samples at 10 s")
            times = [t for t in _sample_times(r) if t > changed_at]
            gaps = [b - a for a, b in zip(times, times[1:])]
            assert gaps and all(g == pytest.approx(10.0, abs=0.5) for g in gaps)
            assert times[0] - changed_at <= 10.5  # the new interval counts from the change

            answer = await r.cp.call(call.GetConfiguration(key=["MeterValueSampleInterval"]))
            assert answer.configuration_key == [{"key": "MeterValueSampleInterval", "readonly": False, "value": "10"}]

            # 0 switches sampling off.
            answer = await r.cp.call(call.ChangeConfiguration(key="MeterValueSampleInterval", value="0"))
            assert answer.status == "Accepted"
            n = len(r.csms.of("MeterValues"))
            await asyncio.sleep(300)
            assert len(r.csms.of("MeterValues")) == n

    virtual(main)


def test_meter_values_sampled_data_selects_the_measurands():
    async def main():
        async with rig(meter_value_interval_s=10) as r:
            answer = await r.cp.call(call.ChangeConfiguration(key="MeterValuesSampledData",
                                                              value="Energy.Active.Import.Register,Current.Offered"))
            assert answer.status == "Accepted"
            await plug_and_charge(r)
            r.step(5)
            await r.until(lambda: r.csms.of("MeterValues"), what="MeterValues")
            values = r.csms.of("MeterValues")[0]["meter_value"][0]["sampled_value"]
            assert sorted(v["measurand"] for v in values) == ["Current.Offered", "Energy.Active.Import.Register"]

    virtual(main)


def test_get_configuration_known_and_unknown_keys():
    async def main():
        async with rig(connectors=2) as r:
            answer = await r.cp.call(call.GetConfiguration(key=["NumberOfConnectors", "MeterValueSampleInterval",
                                                                "NoSuchKey"]))
            keys = {k["key"]: k for k in answer.configuration_key}
            assert set(keys) == {"NumberOfConnectors", "MeterValueSampleInterval"}
            assert keys["NumberOfConnectors"] == {"key": "NumberOfConnectors", "readonly": True, "value": "2"}
            assert keys["MeterValueSampleInterval"]["readonly"] is False
            assert keys["MeterValueSampleInterval"]["value"] == "60"
            assert answer.unknown_key == ["NoSuchKey"]

            everything = await r.cp.call(call.GetConfiguration())
            names = {k["key"] for k in everything.configuration_key}
            assert {"HeartbeatInterval", "MeterValueSampleInterval", "MeterValuesSampledData",
                    "ChargeProfileMaxStackLevel", "ChargingScheduleAllowedChargingRateUnit",
                    "ChargingScheduleMaxPeriods", "MaxChargingProfilesInstalled",
                    "SupportedFeatureProfiles"} <= names
            assert not everything.unknown_key

    virtual(main)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("NumberOfConnectors", "4", "Rejected"),  # read-only
        ("ChargeProfileMaxStackLevel", "99", "Rejected"),  # read-only
        ("NoSuchKey", "1", "NotSupported"),
        ("MeterValueSampleInterval", "abc", "Rejected"),  # not an integer
        ("MeterValueSampleInterval", "-5", "Rejected"),
        ("HeartbeatInterval", "120", "Accepted"),
    ],
)
def test_change_configuration_answers(key, value, expected):
    async def main():
        async with rig() as r:
            before = dict(r.station.config.values)
            answer = await r.cp.call(call.ChangeConfiguration(key=key, value=value))
            assert answer.status == expected
            read = await r.cp.call(call.GetConfiguration(key=[key]))
            if expected == "Accepted":
                assert read.configuration_key[0]["value"] == value
            elif expected == "Rejected":
                assert read.configuration_key[0]["value"] == before[key]
            else:
                assert read.unknown_key == [key]

    virtual(main)


# --------------------------------------------------------------------------------------------------------------
# Smart charging
# --------------------------------------------------------------------------------------------------------------


def test_tx_default_profile_on_connector_0_limits_the_offer():
    async def main():
        async with rig(connectors=2) as r:
            tx = await plug_and_charge(r, 1)
            r.step(3)
            assert r.model.ports[1].offered_a == pytest.approx(32.0)  # hardware max, no profile yet
            answer = await r.cp.call(call.SetChargingProfile(
                connector_id=0, cs_charging_profiles=absolute_profile(10, "TxDefaultProfile", 13.5,
                                                                      r.clock.epoch() - 1)))
            assert answer.status == "Accepted"
            r.step(1)
            assert r.model.ports[1].offered_a == pytest.approx(13.5)
            assert r.model.ports[1].limit_a == pytest.approx(13.5)
            # The EV follows the lower offer after its lag.
            r.step(5)
            assert r.model.ports[1].currents_a[0] == pytest.approx(13.5)
            assert tx == r.model.ports[1].transaction_id
            # Connector 0's default covers the other connector as well.
            assert r.model.engine.limit_a(2, r.clock.epoch(), None) == pytest.approx(13.5)

    virtual(main)


def test_the_station_takes_its_clock_from_the_csms_so_its_schedules_apply_when_meant():
    month = 30 * 86400.0

    async def main():
        async with rig(csms_ahead_s=month) as r:
            assert r.station.clock.epoch() == pytest.approx(r.csms.clock.epoch(), abs=1.0)
            assert ("station_clock_set", {"offset_s": pytest.approx(month, abs=1.0), "csms_time": ANY}) in r.reports
            await plug_and_charge(r)
            # Dated "now" in the CSMS's time: a month after the bench's calendar, yet in force at once.
            answer = await r.cp.call(call.SetChargingProfile(
                connector_id=0, cs_charging_profiles=absolute_profile(10, "TxDefaultProfile", 10.0,
                                                                      r.csms.clock.epoch() - 1)))
            assert answer.status == "Accepted"
            r.step(1)
            assert r.model.ports[1].offered_a == pytest.approx(10.0)
            sent = [json.loads(raw) for direction, raw in r.recorded if direction == "from_station"]
            status = next(m[3] for m in sent if m[0] == 2 and m[2] == "StatusNotification")
            assert status["timestamp"] >= iso_z(START_EPOCH + month)  # and it reports in that time

    virtual(main)


def test_a_csms_within_seconds_of_the_station_leaves_its_clock_alone():
    async def main():
        async with rig(csms_ahead_s=CLOCK_SYNC_THRESHOLD_S / 2) as r:
            assert r.station.clock.offset_s == 0.0
            assert not any(kind == "station_clock_set" for kind, _ in r.reports)

    virtual(main)


def test_tx_profile_accepted_during_a_transaction_and_dropped_at_its_end():
    async def main():
        async with rig() as r:
            tx = await plug_and_charge(r)
            answer = await r.cp.call(call.SetChargingProfile(
                connector_id=1, cs_charging_profiles=absolute_profile(20, "TxProfile", 8.0, r.clock.epoch() - 1,
                                                                      stack=1, tx=tx)))
            assert answer.status == "Accepted"
            r.step(1)
            assert r.model.ports[1].offered_a == pytest.approx(8.0)
            await r.station.unplug(1)
            assert [p.purpose for _, p in r.model.engine.profiles(1)] == []

    virtual(main)


def test_tx_profile_right_behind_start_transaction_conf_is_accepted():
    async def main():
        csms_frames: list[str] = []

        def tx_profile(connector_id: int, tx: int) -> str:
            profile = {
                "chargingProfileId": 90, "transactionId": tx, "stackLevel": 1,
                "chargingProfilePurpose": "TxProfile", "chargingProfileKind": "Relative",
                "chargingSchedule": {"chargingRateUnit": "A",
                                     "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 9.0}]},
            }
            frame = json.dumps([2, "chase-1", "SetChargingProfile",
                                {"connectorId": connector_id, "csChargingProfiles": profile}])
            csms_frames.append(frame)
            return frame

        async with rig() as r:
            r.csms.chase_start_conf = tx_profile
            await plug_and_charge(r)
            answer = await r.until(lambda: [raw for d, raw in r.recorded
                                            if d == "from_station" and raw.startswith('[3,"chase-1"')],
                                   what="answer to the chasing SetChargingProfile")
            assert csms_frames
            assert json.loads(answer[0])[2] == {"status": "Accepted"}, r.problems()

    virtual(main)


def test_tx_profile_without_transaction_is_rejected():
    async def main():
        async with rig() as r:
            answer = await r.cp.call(call.SetChargingProfile(
                connector_id=1, cs_charging_profiles=absolute_profile(21, "TxProfile", 8.0, START_EPOCH)))
            assert answer.status == "Rejected"
            assert r.model.engine.profiles() == []
            assert any(kind == "profile_rejected" for kind, _ in r.reports)

    virtual(main)


def test_tx_profile_for_another_transaction_is_rejected():
    async def main():
        async with rig() as r:
            tx = await plug_and_charge(r)
            answer = await r.cp.call(call.SetChargingProfile(
                connector_id=1, cs_charging_profiles=absolute_profile(22, "TxProfile", 8.0, START_EPOCH,
                                                                      tx=tx + 1000)))
            assert answer.status == "Rejected"
            assert r.model.engine.profiles() == []

    virtual(main)


def test_charge_point_max_profile_on_a_connector_is_rejected():
    async def main():
        async with rig() as r:
            answer = await r.cp.call(call.SetChargingProfile(
                connector_id=1, cs_charging_profiles=absolute_profile(30, "ChargePointMaxProfile", 20.0,
                                                                      START_EPOCH)))
            assert answer.status == "Rejected"
            answer = await r.cp.call(call.SetChargingProfile(
                connector_id=0, cs_charging_profiles=absolute_profile(30, "ChargePointMaxProfile", 20.0,
                                                                      START_EPOCH)))
            assert answer.status == "Accepted"
            assert [(c, p.purpose) for c, p in r.model.engine.profiles()] == [(0, "ChargePointMaxProfile")]

    virtual(main)


@pytest.mark.parametrize(
    ("payload", "error_code"),
    [
        pytest.param({"connectorId": 1, "csChargingProfiles": wire_profile(limit="abc")},
                     "TypeConstraintViolation", id="limit-abc"),
        pytest.param({"connectorId": 1, "csChargingProfiles": {k: v for k, v in wire_profile().items()
                                                               if k != "chargingSchedule"}},
                     "ProtocolError", id="no-chargingSchedule"),
        pytest.param({"connectorId": "one", "csChargingProfiles": wire_profile()},
                     "TypeConstraintViolation", id="connectorId-string"),
        pytest.param({"connectorId": 1, "csChargingProfiles": wire_profile(chargingProfileKind="Sometimes")},
                     "FormatViolation", id="kind-not-in-enum"),
        pytest.param({"connectorId": 1, "csChargingProfiles": wire_profile(limit=4.35)},
                     "FormatViolation", id="limit-two-decimals"),
        pytest.param({"connectorId": 1, "csChargingProfiles": wire_profile(), "extra": True},
                     "FormatViolation", id="extra-field"),
    ],
)
def test_schema_invalid_set_charging_profile_gets_a_call_error_and_station_keeps_answering(payload, error_code):
    async def main():
        async with rig() as r:
            unique_id = str(uuid.uuid4())
            answer = await r.cp.raw_call([2, unique_id, "SetChargingProfile", payload])
            assert answer.message_type_id == 4, answer  # CALLERROR, not CALLRESULT
            assert answer.unique_id == unique_id
            assert answer.error_code == error_code  # the code the ocpp library picks (OCPP-J 1.6 §4.2.3)
            assert r.model.engine.profiles() == []
            assert r.station.online.is_set() and r.csms.connections == 1
            await still_answers(r)

    virtual(main)


def test_non_finite_limit_gets_an_internal_error_and_is_reported():
    async def main():
        async with rig() as r:
            # JSON itself has no NaN, but Python's json (and many peers) read it; the schema check then fails
            # inside fastjsonschema with a ValueError, which the station's last-resort handler must catch.
            body = json.dumps({"connectorId": 1, "csChargingProfiles": wire_profile(limit=0)})
            frame = '[2,"nan-1","SetChargingProfile",' + body.replace('"limit": 0', '"limit": NaN') + "]"
            assert "NaN" in frame
            async with r.cp._call_lock:
                await r.cp._send(frame)
                answer = await r.cp._get_specific_response("nan-1", 30)
            assert answer.message_type_id == 4 and answer.error_code == "InternalError"
            assert [kind for kind, _ in r.problems()] == ["station_error"]
            assert r.model.engine.profiles() == []
            await still_answers(r)

    virtual(main)


def test_schema_invalid_set_charging_profile_is_reported_as_station_error():
    async def main():
        async with rig() as r:
            payload = {"connectorId": 1, "csChargingProfiles": {k: v for k, v in wire_profile().items()
                                                                if k != "chargingSchedule"}}
            answer = await r.cp.raw_call([2, "bad-1", "SetChargingProfile", payload])
            assert answer.message_type_id == 4
            assert any(kind == "station_error" for kind, _ in r.reports), r.reports

    virtual(main)


def test_semantically_invalid_profile_is_rejected_not_a_crash():
    async def main():
        async with rig() as r:
            # Schema-valid, but the first period must start at 0 and Absolute needs startSchedule.
            for bad in (
                wire_profile(chargingSchedule={"chargingRateUnit": "A",
                                               "startSchedule": iso_z(START_EPOCH),
                                               "chargingSchedulePeriod": [{"startPeriod": 5, "limit": 10}]}),
                wire_profile(chargingSchedule={"chargingRateUnit": "A",
                                               "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10}]}),
            ):
                answer = await r.cp.raw_call([2, str(uuid.uuid4()), "SetChargingProfile",
                                              {"connectorId": 1, "csChargingProfiles": bad}])
                assert answer.message_type_id == 3
                assert answer.payload == {"status": "Rejected"}
            assert r.model.engine.profiles() == []
            await still_answers(r)

    virtual(main)


@pytest.mark.parametrize(
    "frame",
    [
        "this is not json",
        "{\"an\": \"object\"}",
        "[2, \"no-payload\", \"Heartbeat\"]",
        "[9, \"x\", \"Heartbeat\", {}]",
        "",
        "[" * 100_000 + "]" * 100_000,  # nested past Python's recursion limit
    ],
    ids=["text", "object", "short-call", "bad-type", "empty", "deep"],
)
def test_garbage_frames_do_not_kill_the_station(frame):
    async def main():
        async with rig() as r:
            await r.cp._send(frame)
            await still_answers(r)
            assert r.csms.connections == 1  # same session, no reconnect
            assert ("to_station", frame) in r.recorded

    virtual(main)


def test_unknown_action_is_answered_not_implemented():
    async def main():
        async with rig() as r:
            answer = await r.cp.raw_call([2, "u1", "ReserveNow", {"connectorId": 1, "expiryDate": iso_z(START_EPOCH),
                                                                  "idTag": "X", "reservationId": 1}])
            assert answer.message_type_id == 4 and answer.error_code == "NotImplemented"
            answer = await r.cp.raw_call([2, "u2", "MakeCoffee", {}])
            assert answer.message_type_id == 4 and answer.error_code == "NotSupported"
            await still_answers(r)

    virtual(main)


def test_composite_schedule_combines_stack_levels_over_the_wire():
    async def main():
        async with rig() as r:
            t0 = r.clock.epoch()
            for profile in (
                absolute_profile(40, "TxDefaultProfile", 16.0, t0, stack=0),
                absolute_profile(41, "TxDefaultProfile", 10.0, t0, stack=1, duration=600),
            ):
                answer = await r.cp.call(call.SetChargingProfile(connector_id=1, cs_charging_profiles=profile))
                assert answer.status == "Accepted"
            assert r.clock.epoch() == t0  # virtual time: no second passed, so offsets are exact
            answer = await r.cp.call(call.GetCompositeSchedule(connector_id=1, duration=1200,
                                                               charging_rate_unit="A"))
            assert answer.status == "Accepted"
            assert answer.connector_id == 1
            schedule = answer.charging_schedule
            assert schedule["charging_rate_unit"] == "A"
            assert schedule["duration"] == 1200
            periods = [(p["start_period"], Decimal(str(p["limit"]))) for p in schedule["charging_schedule_period"]]
            assert periods == [(0, Decimal("10.0")), (600, Decimal("16.0"))]
            # The raw wire form is camelCase.
            raw = [json.loads(raw) for d, raw in r.csms.frames if d == "in" and raw.startswith("[3")]
            wire = raw[-1][2]
            assert wire["chargingSchedule"]["chargingSchedulePeriod"][1] == {"startPeriod": 600, "limit": 16.0}
            assert wire["scheduleStart"].endswith("Z")

            # Connector 0 has no ChargePointMaxProfile: the hardware maximum, one period.
            answer = await r.cp.call(call.GetCompositeSchedule(connector_id=0, duration=600))
            assert [(p["start_period"], float(p["limit"])) for p in answer.charging_schedule[
                "charging_schedule_period"]] == [(0, 32.0)]
            # A connector the station does not have.
            answer = await r.cp.call(call.GetCompositeSchedule(connector_id=7, duration=600))
            assert answer.status == "Rejected"

    virtual(main)


def test_composite_schedule_in_watts():
    async def main():
        async with rig() as r:
            answer = await r.cp.call(call.SetChargingProfile(
                connector_id=0, cs_charging_profiles=absolute_profile(45, "TxDefaultProfile", 16.0, START_EPOCH)))
            assert answer.status == "Accepted"
            answer = await r.cp.call(call.GetCompositeSchedule(connector_id=1, duration=300, charging_rate_unit="W"))
            schedule = answer.charging_schedule
            assert schedule["charging_rate_unit"] == "W"
            # I x V x phases: 16 A x 230 V x 3.
            assert [(p["start_period"], float(p["limit"])) for p in schedule["charging_schedule_period"]] == [
                (0, 16.0 * 230.0 * 3)]

    virtual(main)


def test_clear_charging_profile_by_id_then_unknown():
    async def main():
        async with rig() as r:
            answer = await r.cp.call(call.SetChargingProfile(
                connector_id=0, cs_charging_profiles=absolute_profile(55, "TxDefaultProfile", 12.0, START_EPOCH)))
            assert answer.status == "Accepted"
            assert (await r.cp.call(call.ClearChargingProfile(id=55))).status == "Accepted"
            assert r.model.engine.profiles() == []
            assert (await r.cp.call(call.ClearChargingProfile(id=55))).status == "Unknown"

            # By criteria: purpose on connector 0.
            await r.cp.call(call.SetChargingProfile(
                connector_id=0, cs_charging_profiles=absolute_profile(56, "TxDefaultProfile", 12.0, START_EPOCH)))
            answer = await r.cp.call(call.ClearChargingProfile(connector_id=0,
                                                               charging_profile_purpose="TxDefaultProfile"))
            assert answer.status == "Accepted"
            assert r.model.engine.profiles() == []

    virtual(main)


def test_same_purpose_and_stack_level_replaces_the_profile():
    async def main():
        async with rig() as r:
            for pid, limit in ((60, 12.0), (61, 9.0)):
                answer = await r.cp.call(call.SetChargingProfile(
                    connector_id=0, cs_charging_profiles=absolute_profile(pid, "TxDefaultProfile", limit,
                                                                          START_EPOCH)))
                assert answer.status == "Accepted"
            assert [p.id for _, p in r.model.engine.profiles()] == [61]
            assert r.model.engine.limit_a(1, r.clock.epoch(), None) == pytest.approx(9.0)

    virtual(main)


# --------------------------------------------------------------------------------------------------------------
# Remote start / stop
# --------------------------------------------------------------------------------------------------------------


def test_remote_start_and_stop_transaction():
    async def main():
        async with rig() as r:
            # Nothing plugged in: nothing to start.
            answer = await r.cp.call(call.RemoteStartTransaction(id_tag="REMOTE", connector_id=1))
            assert answer.status == "Rejected"

            r.model.plug(1, ev(), "EV1", "REMOTE")
            answer = await r.cp.call(call.RemoteStartTransaction(id_tag="REMOTE", connector_id=1))
            assert answer.status == "Accepted"
            await r.until(lambda: r.csms.of("StartTransaction"), what="StartTransaction")
            (start,) = r.csms.of("StartTransaction")
            assert start["connector_id"] == 1 and start["id_tag"] == "REMOTE"
            await r.until(lambda: r.csms.statuses(1)[-1:] == ["Charging"], what="Charging")
            tx = start["assigned_transaction_id"]
            assert r.model.ports[1].transaction_id == tx

            # A transaction that does not exist.
            answer = await r.cp.call(call.RemoteStopTransaction(transaction_id=tx + 99))
            assert answer.status == "Rejected"

            answer = await r.cp.call(call.RemoteStopTransaction(transaction_id=tx))
            assert answer.status == "Accepted"
            await r.until(lambda: r.csms.of("StopTransaction"), what="StopTransaction")
            (stop,) = r.csms.of("StopTransaction")
            assert stop["transaction_id"] == tx and stop["reason"] == "Remote"
            assert r.model.ports[1].transaction_id is None
            await r.until(lambda: r.csms.statuses(1)[-1:] == ["Finishing"], what="Finishing")

    virtual(main)


def test_remote_start_with_a_charging_profile_installs_it_for_the_transaction():
    async def main():
        async with rig() as r:
            r.model.plug(1, ev(), "EV1", "REMOTE")
            profile = {
                "charging_profile_id": 70, "stack_level": 2, "charging_profile_purpose": "TxProfile",
                "charging_profile_kind": "Relative",
                "charging_schedule": {"charging_rate_unit": "A",
                                      "charging_schedule_period": [{"start_period": 0, "limit": 11.0}]},
            }
            answer = await r.cp.call(call.RemoteStartTransaction(id_tag="REMOTE", connector_id=1,
                                                                 charging_profile=profile))
            assert answer.status == "Accepted"
            await r.until(lambda: r.csms.statuses(1)[-1:] == ["Charging"], what="Charging")
            await r.until(lambda: r.model.engine.profiles() or r.problems(), what="profile installed or refused")
            assert r.problems() == []
            assert [(c, p.id, p.purpose) for c, p in r.model.engine.profiles()] == [(1, 70, "TxProfile")]
            r.step(1)
            assert r.model.ports[1].offered_a == pytest.approx(11.0)

    virtual(main)


def test_trigger_message_is_supported_as_advertised():
    async def main():
        async with rig() as r:
            answer = await r.cp.call(call.GetConfiguration(key=["SupportedFeatureProfiles"]))
            assert "RemoteTrigger" in answer.configuration_key[0]["value"].split(",")
            reply = await r.cp.raw_call([2, "trig-1", "TriggerMessage",
                                         {"requestedMessage": "StatusNotification", "connectorId": 1}])
            assert reply.message_type_id == 3, f"CALLERROR {reply.error_code}"
            assert reply.payload["status"] == "Accepted"

    virtual(main)


# --------------------------------------------------------------------------------------------------------------
# Recording and reconnecting
# --------------------------------------------------------------------------------------------------------------


def test_every_frame_in_both_directions_is_recorded():
    async def main():
        async with rig(meter_value_interval_s=30) as r:
            await plug_and_charge(r)
            r.step(5)
            await r.cp.call(call.GetConfiguration(key=["NoSuchKey"]))
            await r.cp.call(call.SetChargingProfile(
                connector_id=0, cs_charging_profiles=absolute_profile(80, "TxDefaultProfile", 12.0, START_EPOCH)))
            await r.cp.raw_call([2, "bad", "SetChargingProfile", {"connectorId": 1}])
            await r.cp._send("not json at all")
            await r.until(lambda: len(r.csms.of("MeterValues")) >= 2, what="MeterValues")
            await r.station.unplug(1)
            await r.cp.call(call.GetConfiguration(key=["HeartbeatInterval"]))

            def station_view(direction: str) -> list[str]:
                return [raw for d, raw in r.recorded if d == direction]

            def csms_view(direction: str) -> list[str]:
                return [raw for d, raw in r.csms.frames if d == direction]

            await r.until(lambda: len(station_view("from_station")) == len(csms_view("in"))
                          and len(station_view("to_station")) == len(csms_view("out")), what="quiet link")
            assert station_view("from_station") == csms_view("in")
            assert station_view("to_station") == csms_view("out")
            assert len(r.recorded) > 20
            # Every CALL the station sent was answered, and the answers were recorded too.
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
            # After the new boot every connector reports its status again; the transaction survives.
            await r.until(lambda: len(r.csms.statuses()) >= 2 + 2 + 2, what="statuses after reboot")
            assert r.csms.statuses(1)[-1] == "Charging"
            assert r.csms.statuses(2)[-1] == "Available"
            assert r.model.ports[1].transaction_id == tx
            # The new session works both ways.
            await still_answers(r)
            await r.station.unplug(1)
            await r.until(lambda: r.csms.of("StopTransaction"), what="StopTransaction")
            assert r.csms.of("StopTransaction")[0]["transaction_id"] == tx

    virtual(main)


def test_keeps_retrying_while_the_csms_is_down():
    async def main():
        csms = CsmsServer()
        url = await csms.start()
        await csms.stop()  # the port is now closed
        port = int(url.rsplit(":", 1)[1])
        clock = SimClock(asyncio.get_running_loop(), START_EPOCH)
        reports: list[tuple[str, dict]] = []
        station = Station16(StationModel("CP-R"), url, clock, lambda d, raw: None,
                            lambda k, d: reports.append((k, d)))
        task = asyncio.create_task(station.run())
        try:
            await asyncio.sleep(100)
            attempts = sum(1 for kind, _ in reports if kind == "station_disconnected")
            # Exponential backoff 1, 2, 4, 8, 16, 30, 30 …: a handful of attempts in 100 s, not hundreds.
            assert 4 <= attempts <= 10
            assert not station.online.is_set()
            # The CSMS comes back on the same port: the station connects within the maximum backoff.
            server2 = CsmsServer()
            server2._server = await websockets.serve(server2._handler, "127.0.0.1", port, subprotocols=["ocpp1.6"])
            try:
                await asyncio.wait_for(station.online.wait(), 31)
                assert len(server2.of("BootNotification")) == 1
            finally:
                await station.stop()
                await server2.stop()
        finally:
            await station.stop()
            try:
                await asyncio.wait_for(task, 15)
            except asyncio.TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    virtual(main)


def test_disconnect_holds_the_station_offline_and_charging_until_reconnect():
    async def main():
        async with rig(connectors=1) as r:
            tx = await plug_and_charge(r, 1)
            await r.cp.call(call.SetChargingProfile(
                connector_id=1, cs_charging_profiles=absolute_profile(5, "TxProfile", 10.0, START_EPOCH, tx=tx)))
            await r.station.disconnect()
            assert not r.station.online.is_set()
            await asyncio.sleep(300)  # virtual: well past every backoff
            assert r.csms.connections == 1  # held down: not one reconnect attempt
            assert not any(kind == "station_disconnected" for kind, _ in r.reports)
            # The charger goes on with the profile it has, as a real one does without its CSMS.
            r.step(5)
            assert r.model.ports[1].offered_a == 10.0
            assert r.model.ports[1].transaction_id == tx
            r.station.reconnect()
            await asyncio.wait_for(r.station.online.wait(), 5)
            assert r.csms.connections == 2
            assert len(r.csms.of("BootNotification")) == 2
            await still_answers(r)

    virtual(main)
