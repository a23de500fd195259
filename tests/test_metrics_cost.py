"""Cost, demand charge, PV, battery and fairness metrics on hand-made traces."""

from __future__ import annotations

import pytest

from bench.checks.metrics import cost_metrics, jain_index, metrics, plant_metrics
from bench.trace import Trace

META = {"start_epoch": 0.0, "step_s": 900.0}


def site(powers_w: list[float]) -> list[tuple]:
    """One sample a quarter-hour, at the powers given."""
    return [(k * 900.0, 0.0, 0.0, 0.0, 100.0, p, 0.0, True) for k, p in enumerate(powers_w)]


def test_energy_cost_prices_each_sample_at_its_time_and_export_at_the_export_price():
    tariff = {"currency": "EUR", "export_price_per_kwh": 0.05, "demand_charge_per_kw": 10.0,
              "import_prices": [[0, 0.2], [1800, 0.4]]}
    # 40 kW for 15 min at 0.2, 20 kW at 0.2, 40 kW at 0.4, then 20 kW exported
    trace = Trace(meta=META | {"tariff": tariff}, site=site([40_000, 20_000, 40_000, -20_000]))
    m = cost_metrics(trace)
    assert m["import_cost"] == pytest.approx(10 * 0.2 + 5 * 0.2 + 10 * 0.4)
    assert m["export_revenue"] == pytest.approx(5 * 0.05)
    assert m["energy_cost"] == pytest.approx(7.0 - 0.25)
    assert m["peak_15min_import_kw"] == 40.0 and m["demand_charge"] == 400.0
    assert m["total_cost"] == pytest.approx(406.75) and m["currency"] == "EUR"


def test_export_does_not_lower_the_demand_peak():
    tariff = {"import_prices": [[0, 0.1]], "demand_charge_per_kw": 1.0}
    # two samples in one quarter-hour: 30 kW import, 30 kW export — net 0, billed import 15 kW
    trace = Trace(meta={"start_epoch": 0.0, "step_s": 450.0, "tariff": tariff},
                  site=[(0.0, 0, 0, 0, 100, 30_000.0, 0, True), (450.0, 0, 0, 0, 100, -30_000.0, 0, True)])
    assert cost_metrics(trace)["peak_15min_import_kw"] == 15.0
    assert metrics(trace)["peak_15min_kw"] == 0.0  # the net average, as before


def test_pv_self_consumption_and_battery_throughput():
    trace = Trace(meta=META, site=site([10_000, -20_000]),
                  plant=[(0.0, 40_000.0, 8_000.0, 0.5), (900.0, 40_000.0, -4_000.0, 0.49)])
    m = plant_metrics(trace)
    assert m["pv_generated_kwh"] == 20.0
    assert m["pv_self_consumption"] == pytest.approx(1 - 5 / 20)
    assert (m["battery_charged_kwh"], m["battery_discharged_kwh"], m["battery_throughput_kwh"]) == (2.0, 1.0, 3.0)


def test_a_run_without_tariff_or_plant_has_none_of_their_keys():
    m = metrics(Trace(meta=META, site=site([1000.0])))
    assert not {"energy_cost", "pv_generated_kwh", "battery_throughput_kwh"} & set(m)
    assert m["fairness_jain"] is None


def test_jain_index():
    assert jain_index([0.5, 0.5, 0.5]) == 1.0
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == 0.25
    assert jain_index([]) is None and jain_index([0.0, 0.0]) == 1.0
