"""The controller host (controllers/host.py) against emulated OCPP 1.6 stations over real websockets.

Each test runs in virtual time on a :class:`bench.clock.SimLoop` (``bench.clock.run``): a
ControllerHost on an ephemeral port of 127.0.0.1, one or more :class:`emulators.ocpp16.Station16`
connected to ``host.url``, and where needed a real Modbus TCP :class:`emulators.meter.MeterServer`.
The host's ``now`` is the stations' SimClock, as in a bench run. What is asserted is what the
stations ended up with (configuration, installed profiles, offers) and what the controller was told.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import websockets

from bench.clock import SimClock
from controllers.api import (
    Controller,
    Limit,
    MeterEndpoint,
    MeterSample,
    Session,
    SiteConfig,
    SiteReading,
    StationConfig,
)
from controllers.equal_share import EqualShare
from controllers.host import ControllerHost
from emulators.ev import EV, EVSpec
from emulators.meter import MeterReading, MeterServer
from emulators.ocpp16 import Station16
from emulators.station import StationModel
from virtual_time import Watch, virtual

START_EPOCH = 1_718_000_000.0


WATCH: Watch | None = None  # the running test's watch; controllers poke it


class Probe(Controller):
    """A controller that records every hook and returns whatever limits the test put in ``limits``."""

    name = "probe"
    period_s = 5.0
    meter_poll_s = 1.0
    meter_value_interval_s = 15.0

    def __init__(self, site: SiteConfig | None = None, failsafe: float | None = 10.0) -> None:
        super().__init__(site or SiteConfig(limit_a=32.0))
        self.failsafe = failsafe
        self.calls: list[tuple[str, tuple]] = []
        self.limits: dict[tuple[str, int], float] = {}
        self.allocations = 0
        self.explode = False

    def _hook(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if WATCH is not None:
            WATCH.poke()

    def of(self, name: str) -> list[tuple]:
        return [args for hook, args in self.calls if hook == name]

    def failsafe_a(self, station_id: str) -> float | None:
        return self.failsafe

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

    def on_site_reading(self, reading: SiteReading, now):
        self._hook("site", reading)

    def on_meter_unavailable(self, error: str, now):
        self._hook("meter_unavailable", error)

    def allocate(self, now):
        self.allocations += 1
        if self.explode:
            raise RuntimeError("controller bug")
        return {key: Limit(value) for key, value in self.limits.items()}


@dataclass
class Emulated:
    station: Station16
    task: asyncio.Task
    recorded: list[tuple[str, str]] = field(default_factory=list)
    reports: list[tuple[str, dict]] = field(default_factory=list)
    physics_s: float = 0.0

    @property
    def model(self) -> StationModel:
        return self.station.model

    def tx_profiles(self, connector_id: int) -> list:
        return [p for c, p in self.model.engine.profiles(connector_id) if p.purpose == "TxProfile"]

    def problems(self) -> list[tuple[str, dict]]:
        return [(k, d) for k, d in self.reports if k not in ("station_connected", "station_disconnected")]

    def calls_received(self, action: str) -> list[dict]:
        """CALL payloads of ``action`` the station received, as on the wire."""
        out = []
        for direction, raw in self.recorded:
            if direction == "to_station" and raw.startswith("[2"):
                frame = json.loads(raw)
                if frame[2] == action:
                    out.append(frame[3])
        return out

    def step(self, clock: SimClock, seconds: int = 1) -> tuple[float, float, float]:
        currents = (0.0, 0.0, 0.0)
        for _ in range(seconds):
            self.physics_s += 1.0
            currents = self.model.step(clock.epoch(), self.physics_s, 1.0, True)
        return currents


@dataclass
class HostRig:
    host: ControllerHost
    clock: SimClock
    watch: Watch
    stations: dict[str, Emulated]

    async def until(self, predicate: Callable[[], Any], timeout_s: float = 600.0, what: str = "") -> Any:
        return await self.watch.until(predicate, timeout_s, what)

    def __getitem__(self, station_id: str) -> Emulated:
        return self.stations[station_id]

    async def add_station(self, station_id: str, connectors: int = 1) -> Emulated:
        emulated = Emulated(station=None, task=None)  # type: ignore[arg-type]

        def record(direction: str, raw: str) -> None:
            emulated.recorded.append((direction, raw))
            self.watch.poke()

        def report(kind: str, detail: dict) -> None:
            emulated.reports.append((kind, detail))
            self.watch.poke()

        emulated.station = Station16(StationModel(station_id, connectors=connectors), self.host.url, self.clock,
                                     record, report, meter_value_interval_s=60, heartbeat_interval_s=300)
        emulated.task = asyncio.create_task(emulated.station.run())
        self.stations[station_id] = emulated
        await asyncio.wait_for(emulated.station.online.wait(), 60)
        return emulated

    async def plug(self, station_id: str, connector_id: int = 1, id_tag: str = "TAG") -> int:
        emulated = self.stations[station_id]
        emulated.model.plug(connector_id, EV(EVSpec(battery_kwh=60, initial_soc=0.2, target_soc=0.9)),
                            f"EV-{station_id}-{connector_id}", id_tag)
        await emulated.station.plug_in(connector_id, id_tag)
        tx = emulated.model.ports[connector_id].transaction_id
        assert tx is not None, emulated.reports
        return tx


async def _stop_station(emulated: Emulated) -> None:
    await emulated.station.stop()
    try:
        await asyncio.wait_for(emulated.task, 15)
    except asyncio.TimeoutError:
        emulated.task.cancel()
        await asyncio.gather(emulated.task, return_exceptions=True)


@asynccontextmanager
async def host_rig(controller: Controller, stations: dict[str, int] | None = None,
                   meter: MeterEndpoint | None = None):
    """A started ControllerHost with ``stations`` ({id: connectors}) connected and booted; all stopped on exit."""
    global WATCH
    watch = Watch()
    WATCH = watch
    clock = SimClock(asyncio.get_running_loop(), START_EPOCH)
    host = ControllerHost(controller, meter=meter, now=clock.epoch)
    await host.start()
    rig = HostRig(host, clock, watch, {})
    try:
        for station_id, connectors in ({"CP1": 1} if stations is None else stations).items():
            await rig.add_station(station_id, connectors)
        yield rig
    finally:
        for emulated in rig.stations.values():
            await _stop_station(emulated)
        await host.stop()
        WATCH = None


async def configured(rig: HostRig, station_id: str, interval: str = "15") -> None:
    """Wait until the host's boot-time configuration reached the station."""
    emulated = rig[station_id]
    await rig.until(lambda: emulated.station.config.values["MeterValueSampleInterval"] == interval
                    and emulated.calls_received("SetChargingProfile"), what="boot configuration")


# --------------------------------------------------------------------------------------------------------------
# Boot configuration
# --------------------------------------------------------------------------------------------------------------


def test_boot_sets_sample_interval_and_failsafe_default_profile():
    async def main():
        probe = Probe(failsafe=10.0)
        async with host_rig(probe, {"CP1": 2}) as rig:
            cp1 = rig["CP1"]
            await configured(rig, "CP1")
            assert cp1.station.config.values["MeterValueSampleInterval"] == "15"
            (profile_row,) = cp1.model.engine.profiles()
            connector, profile = profile_row
            assert connector == 0
            assert (profile.id, profile.purpose, profile.stack_level) == (1, "TxDefaultProfile", 0)
            assert profile.schedule.rate_unit == "A"
            assert [p.limit for p in profile.schedule.periods] == [10.0]
            # In force now, for every connector.
            now = rig.clock.epoch()
            assert cp1.model.engine.limit_a(1, now, None) == pytest.approx(10.0)
            assert cp1.model.engine.limit_a(2, now, None) == pytest.approx(10.0)
            assert cp1.problems() == []
            # The controller heard the boot and the connectors' status.
            assert probe.of("booted") == [("CP1", "evbench", "virtual-ac")]
            await rig.until(lambda: len(probe.of("status")) == 2, what="two statuses")
            assert sorted(probe.of("status")) == [("CP1", 1, "Available"), ("CP1", 2, "Available")]

    virtual(main)


def test_no_failsafe_installs_no_profile():
    async def main():
        probe = Probe(failsafe=None)
        async with host_rig(probe) as rig:
            cp1 = rig["CP1"]
            await rig.until(lambda: cp1.station.config.values["MeterValueSampleInterval"] == "15",
                            what="sample interval")
            await asyncio.sleep(30)
            assert cp1.calls_received("SetChargingProfile") == []
            assert cp1.model.engine.profiles() == []

    virtual(main)


def test_every_boot_is_configured_again():
    async def main():
        probe = Probe()
        async with host_rig(probe) as rig:
            cp1 = rig["CP1"]
            await configured(rig, "CP1")
            cp1.station.config.change("MeterValueSampleInterval", "60")  # someone changed it locally
            await cp1.station._ws.close()  # the link drops; the station reconnects and boots again
            await rig.until(lambda: len(probe.of("booted")) == 2, what="second boot")
            assert probe.of("disconnected") == [("CP1",)]
            await configured(rig, "CP1")
            await rig.until(lambda: len(cp1.calls_received("ChangeConfiguration")) == 2, what="reconfigured")

    virtual(main)


# --------------------------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------------------------


def test_sessions_reach_the_controller_with_station_connector_and_transaction():
    async def main():
        probe = Probe()
        async with host_rig(probe, {"CP1": 1, "CP2": 2}) as rig:
            cp2 = rig["CP2"]
            tx = await rig.plug("CP2", 2, id_tag="ALICE")
            await rig.until(lambda: probe.of("started"), what="session started")
            (session,) = [args[0] for args in probe.of("started")]
            assert (session.station_id, session.connector_id, session.transaction_id) == ("CP2", 2, tx)
            assert session.id_tag == "ALICE"
            assert session.meter_start_wh == 0.0
            assert session.started_at == pytest.approx(rig.clock.epoch(), abs=1.0)
            assert ("CP2", 2, "Charging") in probe.of("status")

            cp2.step(rig.clock, 300)
            register = cp2.model.ports[2].meter_wh
            assert register > 100
            await cp2.station.unplug(2)
            await rig.until(lambda: probe.of("ended"), what="session ended")
            ((ended, energy_wh),) = probe.of("ended")
            assert ended == session
            assert energy_wh == pytest.approx(int(register))

            # Transaction ids are unique across stations.
            tx1 = await rig.plug("CP1", 1)
            assert tx1 != tx

    virtual(main)


# --------------------------------------------------------------------------------------------------------------
# Allocation -> SetChargingProfile
# --------------------------------------------------------------------------------------------------------------


def test_allocations_become_tx_profiles_with_a_stable_id_per_connector():
    async def main():
        probe = Probe(failsafe=10.0)
        probe.limits = {("CP1", 1): 12.0, ("CP1", 2): 20.0}
        async with host_rig(probe, {"CP1": 2}) as rig:
            cp1 = rig["CP1"]
            await configured(rig, "CP1")
            tx1 = await rig.plug("CP1", 1)
            tx2 = await rig.plug("CP1", 2)
            await rig.until(lambda: cp1.tx_profiles(1) and cp1.tx_profiles(2), what="TxProfiles")
            (p1,), (p2,) = cp1.tx_profiles(1), cp1.tx_profiles(2)
            assert (p1.transaction_id, p1.schedule.periods[0].limit) == (tx1, 12.0)
            assert (p2.transaction_id, p2.schedule.periods[0].limit) == (tx2, 20.0)
            assert p1.id != p2.id
            assert p1.stack_level == p2.stack_level
            ids = {1: p1.id, 2: p2.id}
            assert cp1.problems() == []  # nothing was rejected

            cp1.step(rig.clock, 1)
            assert cp1.model.ports[1].offered_a == pytest.approx(12.0)
            assert cp1.model.ports[2].offered_a == pytest.approx(20.0)

            # An update of one connector: same profile id, replaced rather than added.
            probe.limits[("CP1", 1)] = 8.0
            await rig.until(lambda: cp1.tx_profiles(1)[0].schedule.periods[0].limit == 8.0, what="update")
            assert [p.id for p in cp1.tx_profiles(1)] == [ids[1]]
            assert [p.id for p in cp1.tx_profiles(2)] == [ids[2]]
            sent = [p["csChargingProfiles"] for p in cp1.calls_received("SetChargingProfile")
                    if p["csChargingProfiles"]["chargingProfilePurpose"] == "TxProfile"]
            assert [(s["chargingProfileId"], s["transactionId"]) for s in sent] == [
                (ids[1], tx1), (ids[2], tx2), (ids[1], tx1)]
            cp1.step(rig.clock, 1)
            assert cp1.model.ports[1].offered_a == pytest.approx(8.0)

            # Unchanged limits are not sent again, however often allocate runs.
            allocations = probe.allocations
            await asyncio.sleep(60)
            assert probe.allocations >= allocations + 10
            assert len(cp1.calls_received("SetChargingProfile")) == 1 + 3
            assert cp1.problems() == []

    virtual(main)


def test_a_new_session_gets_its_limit_even_if_the_value_is_unchanged():
    async def main():
        probe = Probe()
        probe.limits = {("CP1", 1): 12.0}
        async with host_rig(probe) as rig:
            cp1 = rig["CP1"]
            await configured(rig, "CP1")
            tx = await rig.plug("CP1")
            await rig.until(lambda: cp1.tx_profiles(1), what="first TxProfile")
            await cp1.station.unplug(1)
            cp1.model.unplug(1)
            assert cp1.tx_profiles(1) == []  # the TxProfile ended with its transaction
            tx_again = await rig.plug("CP1")
            assert tx_again != tx
            await rig.until(lambda: cp1.tx_profiles(1), what="TxProfile for the new transaction")
            assert cp1.tx_profiles(1)[0].transaction_id == tx_again
            assert cp1.tx_profiles(1)[0].schedule.periods[0].limit == 12.0

    virtual(main)


def test_limits_for_unknown_connectors_or_without_a_session_are_not_sent():
    async def main():
        probe = Probe()
        probe.limits = {("NOPE", 1): 12.0, ("CP1", 1): 16.0}
        async with host_rig(probe) as rig:
            cp1 = rig["CP1"]
            await configured(rig, "CP1")
            await asyncio.sleep(30)  # several allocation periods, no session yet
            assert len(cp1.calls_received("SetChargingProfile")) == 1  # the failsafe only
            assert probe.allocations >= 5

    virtual(main)


def test_limit_is_sent_with_one_decimal_and_never_negative():
    async def main():
        probe = Probe()
        probe.limits = {("CP1", 1): 13.37}
        async with host_rig(probe) as rig:
            cp1 = rig["CP1"]
            await configured(rig, "CP1")
            await rig.plug("CP1")
            await rig.until(lambda: cp1.tx_profiles(1), what="TxProfile")
            assert cp1.tx_profiles(1)[0].schedule.periods[0].limit == pytest.approx(13.3)
            probe.limits[("CP1", 1)] = -4.0
            await rig.until(lambda: cp1.tx_profiles(1)[0].schedule.periods[0].limit == 0.0, what="0 A")
            assert cp1.problems() == []

    virtual(main)


# --------------------------------------------------------------------------------------------------------------
# Meter values and the site meter
# --------------------------------------------------------------------------------------------------------------


def test_meter_samples_reach_the_controller_parsed():
    async def main():
        probe = Probe(failsafe=10.0)
        async with host_rig(probe) as rig:
            cp1 = rig["CP1"]
            await configured(rig, "CP1")
            tx = await rig.plug("CP1")
            cp1.step(rig.clock, 10)  # the EV follows the 10 A failsafe after its lag
            port = cp1.model.ports[1]
            assert port.currents_a == (10.0, 10.0, 10.0)
            await rig.until(lambda: probe.of("sample"), what="a meter sample")
            (sample,) = [args[0] for args in probe.of("sample")][:1]
            assert (sample.station_id, sample.connector_id) == ("CP1", 1)
            assert sample.currents_a == (10.0, 10.0, 10.0)
            assert sample.max_current_a == 10.0
            assert sample.offered_a == 10.0
            assert sample.power_w == pytest.approx(10.0 * 230 * 3)
            assert sample.energy_wh == pytest.approx(port.meter_wh, abs=1)
            assert sample.soc == pytest.approx(port.ev.soc, abs=0.001)
            assert sample.timestamp == pytest.approx(rig.clock.epoch(), abs=15)
            # At the interval the host configured (15 s).
            n = len(probe.of("sample"))
            await asyncio.sleep(61)
            assert len(probe.of("sample")) - n == 4
            assert tx == cp1.model.ports[1].transaction_id

    virtual(main)


def _reading(currents: tuple[float, float, float], import_kwh: float) -> MeterReading:
    return MeterReading(voltages_v=(230.0, 230.0, 230.0), currents_a=currents,
                        power_w=tuple(c * 230.0 for c in currents), import_kwh=import_kwh)  # type: ignore[arg-type]


def test_site_meter_readings_reach_the_controller():
    async def main():
        meter = MeterServer(port=0, device_id=1)
        await meter.update(_reading((10.5, 11.0, 12.25), 1234.5))
        await meter.start()
        try:
            probe = Probe()
            async with host_rig(probe, meter=MeterEndpoint(port=meter.port)) as rig:
                await rig.until(lambda: probe.of("site"), what="a site reading")
                reading = probe.of("site")[0][0]
                assert reading.currents_a == (10.5, 11.0, 12.25)
                assert reading.power_w == pytest.approx((10.5 + 11.0 + 12.25) * 230.0)
                assert reading.import_kwh == pytest.approx(1234.5)
                assert reading.voltages_v == (230.0, 230.0, 230.0)
                assert (reading.export_kwh, reading.frequency_hz) == (0.0, 50.0)
                assert reading.changed_at == reading.timestamp == pytest.approx(rig.clock.epoch(), abs=1)

                await meter.update(_reading((20.0, 0.0, 5.5), 1240.0))
                await rig.until(lambda: probe.of("site")[-1][0].currents_a == (20.0, 0.0, 5.5), what="new reading")
                assert probe.of("site")[-1][0].import_kwh == pytest.approx(1240.0)
                # About one read per meter_poll_s (1 s); unchanged values keep the time they first showed.
                changed_at = probe.of("site")[-1][0].changed_at
                n = len(probe.of("site"))
                await asyncio.sleep(10)
                assert 8 <= len(probe.of("site")) - n <= 12
                last = probe.of("site")[-1][0]
                assert last.changed_at == changed_at and last.timestamp >= changed_at + 8

                # A frozen meter answers on, but what it shows stops changing.
                meter.set_fault("frozen")
                await meter.update(_reading((30.0, 30.0, 30.0), 1250.0))
                await asyncio.sleep(10)
                last = probe.of("site")[-1][0]
                assert last.currents_a == (20.0, 0.0, 5.5) and last.changed_at == changed_at
                meter.set_fault(None)
                await meter.update(_reading((30.0, 30.0, 30.0), 1250.0))
                await rig.until(lambda: probe.of("site")[-1][0].changed_at > changed_at, what="a change")
                assert probe.of("site")[-1][0].currents_a == (30.0, 30.0, 30.0)

                # The meter goes away: the controller is told, the host keeps the last good reading
                # and goes on serving the stations.
                await meter.stop()
                await rig.until(lambda: probe.of("meter_unavailable"), what="meter unavailable")
                assert rig.host.site_reading == probe.of("site")[-1][0]
                assert "Eastron SDM630 at 127.0.0.1" in probe.of("meter_unavailable")[0][0]
                await rig.plug("CP1")
                await rig.until(lambda: probe.of("started"), what="session after meter loss")
                # Back on the same port: readings resume.
                n = len(probe.of("site"))
                await meter.start()
                await rig.until(lambda: len(probe.of("site")) > n, what="readings after the meter came back")
        finally:
            await meter.stop()

    virtual(main)


def test_sub_meters_are_read_on_the_site_meters_bus_and_become_meter_samples(caplog):
    async def main():
        meter = MeterServer("sdm630", port=0, device_id=1, sub_meters={2: "em24", 3: "sdm630"})
        await meter.update(_reading((20.0, 20.0, 20.0), 1000.0))
        await meter.update(_reading((16.0, 0.0, 0.0), 12.5), unit=2)
        await meter.update(_reading((8.0, 8.0, 8.0), 7.0), unit=3)
        await meter.start()
        try:
            # The installer's configuration names the meter; the host reads it from there.
            site = SiteConfig(limit_a=32.0, meter=MeterEndpoint(port=meter.port),
                              stations=(StationConfig("CP1", meter_unit=2, meter_model="em24"),
                                        StationConfig("CP2", meter_unit=3), StationConfig("CP3")))
            probe = Probe(site)
            async with host_rig(probe, {}):
                await asyncio.sleep(5)
                samples = [args[0] for args in probe.of("sample")]
                assert {s.station_id for s in samples} == {"CP1", "CP2"}
                assert 8 <= len(samples) <= 12  # each sub-meter about once a second, with the site meter
                cp1 = [s for s in samples if s.station_id == "CP1"][-1]
                assert (cp1.connector_id, cp1.source, cp1.offered_a, cp1.soc) == (1, "modbus", None, None)
                assert cp1.currents_a == (16.0, 0.0, 0.0)
                assert cp1.power_w == pytest.approx(16.0 * 230.0)
                assert cp1.energy_wh == pytest.approx(12_500.0)
                cp2 = [s for s in samples if s.station_id == "CP2"][-1]
                assert cp2.currents_a == (8.0, 8.0, 8.0) and cp2.energy_wh == pytest.approx(7_000.0)

                # A failing sub-meter is logged once; it is not the site meter's loss.
                meter.set_fault("garbage", unit=2)
                n = len(probe.of("site"))
                await asyncio.sleep(10)
                assert len(probe.of("site")) - n >= 5
                assert probe.of("meter_unavailable") == []
                assert [s.station_id for s in (a[0] for a in probe.of("sample")[len(samples):])].count("CP1") <= 1
                meter.set_fault(None, unit=2)
                n = len(probe.of("sample"))
                await asyncio.sleep(5)
                assert any(a[0].station_id == "CP1" for a in probe.of("sample")[n:])
        finally:
            await meter.stop()

    with caplog.at_level(logging.WARNING, logger="evbench.host"):
        virtual(main)
    failures = [r.getMessage() for r in caplog.records if "sub-meter" in r.getMessage()]
    assert len(failures) == 1 and failures[0].startswith("CP1: sub-meter read failed")
    assert "implausible" in failures[0]


def test_a_controller_that_raises_on_a_site_reading_does_not_stop_the_meter_polling(caplog):
    class Fragile(Probe):
        def on_site_reading(self, reading, now):
            super().on_site_reading(reading, now)
            if len(self.of("site")) == 1:
                raise RuntimeError("controller bug")

    async def main():
        async with MeterServer(port=0) as meter:
            await meter.update(_reading((1.0, 2.0, 3.0), 1.0))
            probe = Fragile()
            async with host_rig(probe, {}, meter=MeterEndpoint(port=meter.port)):
                await asyncio.sleep(5)
                assert len(probe.of("site")) >= 4

    with caplog.at_level(logging.ERROR, logger="evbench.host"):
        virtual(main)
    assert any("meter poll failed" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------------------------
# Robustness
# --------------------------------------------------------------------------------------------------------------


def test_station_without_a_known_subprotocol_is_refused_and_others_are_served():
    async def main():
        probe = Probe()
        async with host_rig(probe, {}) as rig:
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(rig.host.url + "/ROGUE", proxy=None, open_timeout=10):
                    pass
            assert refused.value.response.status_code == 400
            # Only subprotocols the host does not speak: handshake without one, then closed (OCPP-J 1.6 §3.2).
            async with websockets.connect(rig.host.url + "/ROGUE2", subprotocols=["ocpp2.1"], proxy=None,
                                          open_timeout=10) as ws:
                assert ws.subprotocol is None
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 30)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
                assert "ocpp2.0.1 or ocpp1.6" in closed.value.rcvd.reason
            # A station id is required in the path.
            async with websockets.connect(rig.host.url + "/", subprotocols=["ocpp1.6"], proxy=None,
                                          open_timeout=10) as ws:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 30)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002

            await rig.add_station("CP1")
            await configured(rig, "CP1")
            assert set(rig.host.stations) == {"CP1"}
            assert probe.of("booted") == [("CP1", "evbench", "virtual-ac")]

    virtual(main)


def test_a_controller_that_raises_in_allocate_does_not_stop_the_host(caplog):
    async def main():
        probe = Probe()
        probe.explode = True
        probe.limits = {("CP1", 1): 11.0}
        async with host_rig(probe) as rig:
            cp1 = rig["CP1"]
            await configured(rig, "CP1")
            await rig.plug("CP1")
            await rig.until(lambda: probe.of("started"), what="session started")
            await asyncio.sleep(20)
            assert probe.allocations >= 3
            assert cp1.tx_profiles(1) == []
            # The CSMS still answers the station.
            await cp1.station.unplug(1)
            await rig.until(lambda: probe.of("ended"), what="session ended")
            cp1.model.unplug(1)
            # Once allocate works again, decisions flow.
            probe.explode = False
            await rig.plug("CP1")
            await rig.until(lambda: cp1.tx_profiles(1), what="TxProfile after recovery")
            assert cp1.tx_profiles(1)[0].schedule.periods[0].limit == 11.0

    with caplog.at_level(logging.ERROR, logger="evbench.host"):
        virtual(main)
    assert any("controller.allocate failed" in r.getMessage() for r in caplog.records)


def test_equal_share_splits_the_site_limit_between_stations():
    async def main():
        site = SiteConfig(limit_a=32.0, stations=(StationConfig("CP1"), StationConfig("CP2")))
        controller = EqualShare(site)
        meter = MeterServer(port=0, device_id=1)
        await meter.update(_reading((0.0, 0.0, 0.0), 0.0))
        await meter.start()
        try:
            async with host_rig(controller, {"CP1": 1, "CP2": 1}, meter=MeterEndpoint(port=meter.port)) as rig:
                cp1, cp2 = rig["CP1"], rig["CP2"]
                for cp in (cp1, cp2):
                    await rig.until(lambda cp=cp: cp.model.engine.profiles(0), what="failsafe")
                    (row,) = cp.model.engine.profiles(0)
                    # failsafe: floor(32 A / 2 stations)
                    assert row[1].schedule.periods[0].limit == 16.0
                    interval = str(int(controller.meter_value_interval_s))
                    await rig.until(lambda cp=cp: cp.station.config.values["MeterValueSampleInterval"] == interval,
                                    what="interval")

                # A tiny site: every second step the stations and show their sum on the meter.
                site_peak = [0.0]

                async def physics() -> None:
                    while True:
                        await asyncio.sleep(1)
                        total = [0.0, 0.0, 0.0]
                        for cp in (cp1, cp2):
                            for i, c in enumerate(cp.step(rig.clock, 1)):
                                total[i] += c
                        site_peak[0] = max(site_peak[0], *total)
                        await meter.update(_reading(tuple(total), 0.0))  # type: ignore[arg-type]

                physics_task = asyncio.create_task(physics())
                try:
                    await rig.plug("CP1")
                    await rig.plug("CP2")
                    await asyncio.sleep(300)
                    (p1,), (p2,) = cp1.tx_profiles(1), cp2.tx_profiles(1)
                    l1, l2 = p1.schedule.periods[0].limit, p2.schedule.periods[0].limit
                    assert l1 == pytest.approx(l2, abs=0.2)  # equal shares
                    assert 26.0 <= l1 + l2 <= 31.0 + 0.2  # the limit minus the margin, mostly used
                    # Settled: the site stays within its limit (SITE-LIMIT) over the next minute.
                    site_peak[0] = 0.0
                    await asyncio.sleep(60)
                    assert 26.0 <= site_peak[0] <= 32.0

                    # One EV leaves: the other gets its capacity (REALLOCATE).
                    await cp2.station.unplug(1)
                    cp2.model.unplug(1)
                    await asyncio.sleep(120)
                    assert cp1.tx_profiles(1)[0].schedule.periods[0].limit >= 28.0
                    assert cp1.model.ports[1].currents_a[0] <= 32.0
                finally:
                    physics_task.cancel()
                    await asyncio.gather(physics_task, return_exceptions=True)
        finally:
            await meter.stop()

    virtual(main)


def test_a_rejected_tx_profile_is_sent_again():
    async def main():
        probe = Probe()
        probe.limits = {("CP1", 1): 9.0}
        async with host_rig(probe) as rig:
            cp1 = rig["CP1"]
            await configured(rig, "CP1")
            real_set_profile = cp1.station.set_profile
            refusals = []

            def refuse_once(connector_id: int, profile: dict) -> str:
                if profile.get("charging_profile_purpose") == "TxProfile" and not refusals:
                    refusals.append(profile)
                    return "Rejected"  # e.g. too many profiles installed at that moment
                return real_set_profile(connector_id, profile)

            cp1.station.set_profile = refuse_once  # type: ignore[method-assign]
            await rig.plug("CP1")
            await rig.until(lambda: refusals, what="the refused TxProfile")
            await asyncio.sleep(60)  # twelve allocation periods
            assert cp1.tx_profiles(1), "the station never got the limit the controller wants"

    virtual(main)


def test_a_transaction_that_survives_a_reconnect_is_still_controlled():
    async def main():
        probe = Probe()
        probe.limits = {("CP1", 1): 12.0}
        async with host_rig(probe) as rig:
            cp1 = rig["CP1"]
            await configured(rig, "CP1")
            tx = await rig.plug("CP1")
            await rig.until(lambda: cp1.tx_profiles(1), what="first TxProfile")
            await cp1.station._ws.close()
            await rig.until(lambda: len(probe.of("booted")) == 2, what="second boot")
            await asyncio.wait_for(cp1.station.online.wait(), 60)
            assert cp1.model.ports[1].transaction_id == tx  # the transaction went on
            probe.limits[("CP1", 1)] = 7.0
            await asyncio.sleep(60)
            assert cp1.tx_profiles(1)[0].schedule.periods[0].limit == 7.0

    virtual(main)


def test_equal_share_keeps_the_failsafe_share_until_the_meter_is_read():
    async def main():
        site = SiteConfig(limit_a=32.0, stations=(StationConfig("CP1"), StationConfig("CP2")))
        controller = EqualShare(site)
        async with host_rig(controller, {"CP1": 1}) as rig:  # no site meter (yet)
            cp1 = rig["CP1"]
            await rig.until(lambda: cp1.model.engine.profiles(0), what="failsafe")
            await rig.plug("CP1")
            await asyncio.sleep(30)
            cp1.step(rig.clock, 5)
            assert cp1.model.ports[1].offered_a == pytest.approx(16.0)  # floor(32 A / 2 stations)

    virtual(main)
