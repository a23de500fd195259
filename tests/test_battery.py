"""The stationary battery: its pure model, and its inverter commanded through the real host over Modbus."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from virtual_time import virtual

from bench.battery import StationaryBattery
from bench.clock import SimClock
from controllers.api import (
    BATTERY,
    BatteryConfig,
    BatteryReading,
    BatterySetpoint,
    Controller,
    GridSignal,
    MeterEndpoint,
    PricePeriod,
    SiteConfig,
)
from controllers.host import ControllerHost
from emulators.meter import MeterReading, MeterServer

START_EPOCH = 1_780_000_000.0


# --------------------------------------------------------------------------- pure model


def test_charging_stores_efficiency_of_the_energy_and_discharging_costs_more_than_it_gives():
    battery = StationaryBattery(100.0, 50_000.0, 50_000.0, efficiency=0.9, soc=0.5)
    assert battery.step(36_000.0, 100.0) == 36_000.0  # 1 kWh in
    assert battery.stored_kwh == pytest.approx(50.9)
    assert battery.step(-36_000.0, 100.0) == -36_000.0  # 1 kWh out
    assert battery.stored_kwh == pytest.approx(50.9 - 1 / 0.9)
    assert (battery.charged_kwh, battery.discharged_kwh) == (pytest.approx(1.0), pytest.approx(1.0))


def test_power_is_clamped_to_the_inverter_and_the_soc_window():
    battery = StationaryBattery(10.0, 5_000.0, 4_000.0, efficiency=1.0, soc=0.5, min_soc=0.1, max_soc=0.9)
    assert battery.step(9_000.0, 1.0) == 5_000.0
    assert battery.step(-9_000.0, 1.0) == -4_000.0
    # 4 kWh of room to 90 %: one hour at 5 kW takes it only to the window's top.
    assert battery.step(5_000.0, 3600.0) == pytest.approx(4_000.0, rel=1e-3)
    assert battery.soc == pytest.approx(0.9)
    assert battery.step(5_000.0, 1.0) == 0.0
    assert battery.step(math.nan, 1.0) == 0.0  # a setpoint that is no number idles


@settings(max_examples=200, deadline=None)
@given(setpoints=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), dt_s=st.floats(0.1, 900),
       soc=st.floats(0.1, 0.95), efficiency=st.floats(0.5, 1.0))
def test_soc_never_leaves_the_window_and_energy_adds_up(setpoints, dt_s, soc, efficiency):
    battery = StationaryBattery(50.0, 20_000.0, 30_000.0, efficiency=efficiency, soc=soc, min_soc=0.1, max_soc=0.95)
    start_kwh = battery.stored_kwh
    for setpoint in setpoints:
        power_w = battery.step(setpoint, dt_s)
        assert -30_000.0 - 1e-6 <= power_w <= 20_000.0 + 1e-6
        assert power_w == 0.0 or math.copysign(1, power_w) == math.copysign(1, setpoint)
        assert 0.1 - 1e-9 <= battery.soc <= 0.95 + 1e-9
    stored = start_kwh + battery.charged_kwh * efficiency - battery.discharged_kwh / efficiency
    assert battery.stored_kwh == pytest.approx(stored, abs=1e-6)


def test_impossible_parameters_are_refused():
    with pytest.raises(ValueError, match="min_soc < max_soc"):
        StationaryBattery(10.0, 1.0, 1.0, min_soc=0.9, max_soc=0.5)
    with pytest.raises(ValueError, match="efficiency"):
        StationaryBattery(10.0, 1.0, 1.0, efficiency=0.0)


# --------------------------------------------------------------------------- through the real host


class Planner(Controller):
    """Records the grid signals and battery readings it gets; discharges at 20 kW once it has a price."""

    def __init__(self, site: SiteConfig) -> None:
        super().__init__(site)
        self.signals: list[GridSignal] = []
        self.readings: list[BatteryReading] = []

    def on_grid_signal(self, signal: GridSignal, now: float) -> None:
        self.signals.append(signal)

    def on_battery_reading(self, reading: BatteryReading, now: float) -> None:
        self.readings.append(reading)

    def allocate(self, now: float):
        return {BATTERY: BatterySetpoint(-20_000.4)} if self.signals else {}


def _inverter_reading(power_w: float, soc: float) -> MeterReading:
    per_phase = power_w / 3
    return MeterReading((230.0,) * 3, (per_phase / 230.0,) * 3, (per_phase,) * 3, import_kwh=1.0, export_kwh=2.0,
                        soc=soc)


def test_grid_signal_and_battery_setpoint_go_through_the_real_host_and_modbus():
    async def main():
        meter = MeterServer("sdm630", port=0, device_id=1, sub_meters={2: "battery_inverter"})
        await meter.update(MeterReading((230.0,) * 3, (10.0,) * 3, (2300.0,) * 3, import_kwh=5.0))
        await meter.update(_inverter_reading(3000.0, 0.42), unit=2)
        await meter.start()
        site = SiteConfig(limit_a=100.0, meter=MeterEndpoint(port=meter.port),
                          battery=BatteryConfig(100.0, 50_000.0, 50_000.0, unit_id=2))
        planner = Planner(site)
        clock = SimClock(asyncio.get_running_loop(), START_EPOCH)
        host = ControllerHost(planner, now=clock.epoch)
        await host.start()
        try:
            await asyncio.sleep(3)
            assert planner.readings and planner.readings[-1].soc == pytest.approx(0.42)
            assert planner.readings[-1].power_w == pytest.approx(3000.0)
            assert meter.setpoint(2) == 0.0  # no decision yet: the battery idles
            signal = GridSignal(prices=(PricePeriod(START_EPOCH, START_EPOCH + 3600, 0.25),), currency="EUR")
            host.grid_signal(signal)
            await asyncio.sleep(2)
            assert planner.signals == [signal]
            assert meter.setpoint(2) == -20_000.0  # whole watts, through the inverter's int32 register
            assert host.sent_battery_w == -20_000.0
        finally:
            await host.stop()
            await meter.stop()

    virtual(main)


def test_the_inverter_refuses_writes_that_are_not_a_whole_setpoint():
    async def main():
        from pymodbus.client import AsyncModbusTcpClient

        seen = []
        async with MeterServer("sdm630", port=0, device_id=1, sub_meters={2: "battery_inverter"},
                               on_read=seen.append) as meter:
            client = AsyncModbusTcpClient("127.0.0.1", port=meter.port, timeout=1, retries=0)
            await client.connect()
            try:
                assert (await client.write_registers(0x20, [0xFFFF, 0xFC18], device_id=2)).isError() is False
                assert meter.setpoint(2) == -1000.0
                assert (await client.write_registers(0x21, [1], device_id=2)).isError()  # half a register
                assert (await client.write_registers(0x20, [0, 5], device_id=1)).isError()  # the site meter
                assert meter.setpoint(2) == -1000.0
                back = await client.read_holding_registers(0x20, count=2, device_id=2)
                assert back.registers == [0xFFFF, 0xFC18]
            finally:
                client.close()
        assert [e.outcome for e in seen] == ["written", "illegal_address", "illegal_function", "ok"]

    virtual(main)
