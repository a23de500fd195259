"""Short real runs of the plant scenarios (depot-50-bus, campus-200): PV, battery, tariff, grid signals.

Each run keeps a few of the scenario's stations and cars, moves the cars' arrival to the first
minutes and lasts 20 simulated minutes, through the real OCPP host and the real Modbus meter.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import ClassVar

from bench.runner import run_scenario
from bench.scenario import find_scenario, parse_scenario
from bench.trace import load_trace
from controllers.api import BATTERY, BatteryReading, BatterySetpoint, GridSignal
from controllers.equal_share import EqualShare


class ChargingBattery(EqualShare):
    """Equal share for the cars; charges the battery at 30 kW once it has heard of prices and the battery."""

    signals: ClassVar[list[GridSignal]] = []
    readings: ClassVar[list[BatteryReading]] = []
    sites: ClassVar[list] = []

    def __init__(self, site) -> None:
        super().__init__(site)
        ChargingBattery.sites.append(site)

    def on_grid_signal(self, signal: GridSignal, now: float) -> None:
        ChargingBattery.signals.append(signal)

    def on_battery_reading(self, reading: BatteryReading, now: float) -> None:
        ChargingBattery.readings.append(reading)

    def allocate(self, now: float):
        decisions = dict(super().allocate(now))
        if self.signals and self.readings:
            decisions[BATTERY] = BatterySetpoint(30_000.0)
        return decisions


def trimmed(name: str, stations: int, start: str):
    data = tomllib.loads(find_scenario(name).read_text())
    data["stations"] = data["stations"][:stations]
    kept = {s["id"] for s in data["stations"]}
    data["vehicles"] = [dict(v, arrival=f"+{i + 1}m") for i, v in enumerate(v for v in data["vehicles"]
                                                                           if v["station"] in kept)]
    data["events"] = []
    data["clock"] = dict(data["clock"], start=start, duration="20m")
    return parse_scenario(data, name)


def test_depot_run_gets_day_ahead_prices_and_pv_and_prices_the_energy(tmp_path: Path) -> None:
    ChargingBattery.signals.clear()
    sc = trimmed("depot-50-bus", 3, "2026-06-16T04:00:00Z")
    sc.tariff.day_ahead_per_kwh = sc.tariff.day_ahead_per_kwh[1:]  # the run now starts on the 16th
    result = run_scenario(sc, "test_plant_scenarios:ChargingBattery", trace=tmp_path / "depot.db")
    signal = ChargingBattery.signals[0]
    assert signal.currency == "EUR" and signal.prices[0].price_per_kwh == 0.09 and signal.pv_forecast
    trace = load_trace(tmp_path / "depot.db")
    assert trace.meta["tariff"]["kind"] == "day_ahead"
    assert trace.plant and all(soc is None for *_, soc in trace.plant)  # PV, no battery
    assert result.metrics["pv_generated_kwh"] > 0
    assert result.metrics["import_cost"] > 0 and result.metrics["energy_delivered_kwh"] > 0
    assert result.metrics["breaker_trips"] == 0


def test_campus_run_commands_the_battery_through_modbus_and_records_it(tmp_path: Path) -> None:
    ChargingBattery.signals.clear()
    ChargingBattery.readings.clear()
    ChargingBattery.sites.clear()
    sc = trimmed("campus-200", 4, "2026-06-17T11:00:00Z")
    sc.controller.options = {"reserve_soc": 0.2}
    sc.stations[0].priority = 2
    result = run_scenario(sc, "test_plant_scenarios:ChargingBattery", trace=tmp_path / "campus.db")
    site = ChargingBattery.sites[0]
    assert site.battery.capacity_kwh == 500 and site.pv_peak_w == 500_000.0
    assert site.options == {"reserve_soc": 0.2} and site.stations[0].priority == 2
    # The installer's phase wiring reaches the controller: campus chargers rotate L1L2L3, L2L3L1, L3L1L2.
    assert [s.rotation for s in site.stations[:3]] == ["L1L2L3", "L2L3L1", "L3L1L2"]
    assert site.stations[1].site_phase(0) == 1
    assert ChargingBattery.readings and ChargingBattery.readings[0].soc == 0.5
    trace = load_trace(tmp_path / "campus.db")
    powers = [battery_w for _, _, battery_w, _ in trace.plant]
    assert powers[0] == 0.0 and max(powers) == 30_000.0  # idle until commanded, then as commanded
    assert trace.plant[-1][3] > 0.5
    assert result.metrics["battery_charged_kwh"] > 0 and result.metrics["battery_throughput_kwh"] > 0
    assert 0 <= result.metrics["pv_self_consumption"] <= 1
    assert result.metrics["demand_charge"] >= 0 and result.metrics["currency"] == "EUR"
    assert any(r[5] == "written" for r in trace.meter_reads)
