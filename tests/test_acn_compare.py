"""benchmarks/acn_compare.py: a scenario mapped onto acnportal keeps its sessions, its energy and its limits.

Skips where acnportal (the optional ``acn`` extra) is not installed. The scenario is tiny (three EVs, 90 minutes):
two 3-phase cars and a 1-phase car on a rotated station, a building load, a site limit that only some of them fit
under, a departure restated mid-stay and an external cap on one station.
"""

from __future__ import annotations

import sys
from datetime import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("acnportal")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import acn_compare  # noqa: E402
import acn_site  # noqa: E402

from bench.scenario import parse_scenario  # noqa: E402
from bench.tariff import Tariff  # noqa: E402

PERIOD_S = 60.0


def tiny(minutes: int = 90) -> dict:
    """The scenario of the module docstring, cut to ``minutes`` (events after the end left out)."""
    events = [
        {"at": time(7, 30), "kind": "vehicle_needs", "vehicle": "EV3", "departure": "08:00"},
        {"at": time(7, 40), "kind": "external_limit", "station": "CP03", "value_a": 10},
    ]
    return {
        "name": "tiny",
        "clock": {"start": "2026-03-02T07:00:00Z", "duration": f"{minutes}m"},
        "site": {"limit_a": 40, "breaker": {"rating_a": 63}, "building_load": [["00:00", 4]]},
        "stations": [
            {"id": "CP01", "ocpp": "2.0.1", "max_current_a": 32},
            {"id": "CP02", "max_current_a": 32, "rotation": "L2L3L1"},
            {"id": "CP03", "ocpp": "2.0.1", "max_current_a": 16},
        ],
        "vehicles": [
            {"id": "EV1", "station": "CP01", "arrival": "07:00", "departure": "08:00", "battery_kwh": 40,
             "initial_soc": 0.2, "target_soc": 0.6, "max_current_a": 32, "iso15118": True},
            {"id": "EV2", "station": "CP02", "arrival": "07:10", "departure": "08:30", "battery_kwh": 30,
             "initial_soc": 0.3, "target_soc": 0.9, "max_current_a": 32, "phases": 1},
            {"id": "EV3", "station": "CP03", "arrival": "07:20", "departure": "08:20", "battery_kwh": 50,
             "initial_soc": 0.5, "target_soc": 0.95, "max_current_a": 16, "iso15118": True},
        ],
        "events": [e for e in events if e["at"].hour * 60 + e["at"].minute - 7 * 60 < minutes],
    }


@pytest.fixture(scope="module")
def site() -> acn_site.AcnSite:
    return acn_site.map_scenario(parse_scenario(tiny()), PERIOD_S)


@pytest.fixture(scope="module")
def runs(site: acn_site.AcnSite) -> dict[str, acn_site.AcnRun]:
    return {algorithm: acn_site.simulate(site, algorithm) for algorithm in acn_site.ALGORITHMS}


def test_every_vehicle_becomes_one_session_on_its_phases_and_times(site: acn_site.AcnSite) -> None:
    assert site.n_periods == 90
    by_vehicle = {s.vehicle: s for s in site.sessions}
    assert list(by_vehicle) == ["EV1", "EV2", "EV3"]
    assert by_vehicle["EV1"].grid_phases == (0, 1, 2) and by_vehicle["EV1"].voltage_v == 690
    assert by_vehicle["EV2"].grid_phases == (1,) and by_vehicle["EV2"].voltage_v == 230  # L1 of CP02 is grid L2
    assert (by_vehicle["EV2"].arrival, by_vehicle["EV2"].departure) == (10, 90)
    assert by_vehicle["EV2"].stated_departure == 90  # a basic EV states nothing: the run's end
    assert by_vehicle["EV3"].allowable_a == (0.0, *range(6, 17))
    assert by_vehicle["EV3"].requested_kwh == pytest.approx(22.5)
    assert site.departure_changes == {30: [("EV3", 60)]}
    assert site.station_caps_a["CP03"][39] == 16 and site.station_caps_a["CP03"][40] == 10
    assert np.all(site.other_a == 4)


def test_energy_is_conserved_and_every_session_is_simulated(site: acn_site.AcnSite,
                                                            runs: dict[str, acn_site.AcnRun]) -> None:
    voltages = np.array([s.voltage_v for s in site.sessions])
    for algorithm, run in runs.items():
        assert set(run.delivered_kwh) == {"EV1", "EV2", "EV3"}, algorithm
        # Rates × EVSE voltage over the periods are the energy acnportal's EVs counted, and its own aggregate power.
        from_rates_kwh = float(np.sum(voltages @ run.rates_a)) * PERIOD_S / 3.6e6
        assert from_rates_kwh == pytest.approx(sum(run.delivered_kwh.values()), rel=1e-9), algorithm
        assert float(run.power_kw.sum()) * PERIOD_S / 3600 == pytest.approx(from_rates_kwh, rel=1e-9), algorithm
        for i, session in enumerate(site.sessions):  # nothing flows outside a stay
            assert not run.rates_a[i, :session.arrival].any() and not run.rates_a[i, session.departure:].any()


def test_managed_algorithms_hold_the_limits_in_force_and_uncontrolled_does_not(
        site: acn_site.AcnSite, runs: dict[str, acn_site.AcnRun]) -> None:
    phases = site.phase_matrix()
    cp03 = [i for i, s in enumerate(site.sessions) if s.station == "CP03"]
    for algorithm in ("round_robin", "edf"):
        rates = runs[algorithm].rates_a
        currents = phases @ rates + site.other_a
        assert currents.max() <= site.limit_a.max() + 1e-6, algorithm
        assert rates[cp03, 40:].max() <= 10 + 1e-6, algorithm  # the external cap from 07:40
        offered = rates[rates > 0]
        assert offered.min() >= 6 - 1e-6, algorithm  # IEC 61851-1: nothing in (0, 6) A
    assert (phases @ runs["uncontrolled"].rates_a + site.other_a).max() > site.limit_a.max()


def test_acn_rows_agree_with_the_runs_and_with_the_sessions() -> None:
    scenario = parse_scenario(tiny())
    rows, per_ev, notes = acn_compare.acn_rows(scenario, PERIOD_S)
    assert [r.algorithm for r in rows] == list(acn_site.ALGORITHMS)
    assert notes == []
    requested = sum(v.requested_kwh for v in scenario.vehicles)
    for row in rows:
        assert row.sessions == len(scenario.vehicles)
        assert row.requested_kwh == pytest.approx(requested)
        assert row.delivered_kwh == pytest.approx(sum(per_ev[row.algorithm].values()))
        assert row.delivered_kwh <= requested + 1e-9
        assert row.cost is None  # no tariff
    by = {r.algorithm: r for r in rows}
    assert by["round_robin"].violations == by["edf"].violations == 0
    assert by["uncontrolled"].violations >= 1 and by["uncontrolled"].peak_a > 40


def test_excursions_count_like_site_limit() -> None:
    ts = np.arange(10) * 60.0
    over = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1], dtype=bool)
    assert acn_compare.excursions(ts, 60.0, over, settle_s=20.0) == 3
    assert acn_compare.excursions(ts, 60.0, over, settle_s=90.0) == 2  # the one-period excursion is within settle


def test_site_cost_prices_energy_export_and_the_15_minute_peak() -> None:
    start = 1_772_434_800.0  # 2026-03-02T07:00:00Z
    tariff = Tariff(start, time_of_use=[(0.0, 0.1), (8 * 3600.0, 0.3)], export_price_per_kwh=0.05,
                    demand_charge_per_kw=10.0)
    epochs = start + np.arange(120) * 60.0  # two hours of 1-minute samples: 07:00 at 0.1, 08:00 at 0.3
    power_w = np.full(120, 6000.0)
    power_w[60:75] = 12000.0  # the 08:00-08:15 interval is the peak
    power_w[75:90] = -2000.0  # exported
    expected = (6 * 0.1) + (12 * 0.25 * 0.3) + (6 * 0.5 * 0.3) - (2 * 0.25 * 0.05) + 10.0 * 12
    assert acn_compare.site_cost(tariff, epochs, 60.0, power_w) == pytest.approx(expected)
    assert acn_compare.site_cost(None, epochs, 60.0, power_w) is None
    assert acn_compare.peak_15min_kw(epochs, power_w) == pytest.approx(12.0)


def test_our_side_sees_the_same_sessions_and_energy_request(tmp_path: Path) -> None:
    scenario = parse_scenario(tiny(minutes=25))
    acn, _, _ = acn_compare.acn_rows(scenario, PERIOD_S)
    ours, delivered = acn_compare.our_row(scenario, "equal_share", tmp_path, PERIOD_S)
    assert ours.side == "evbench" and ours.algorithm == "equal_share"
    assert ours.sessions == acn[0].sessions == 3 and set(delivered) == {"EV1", "EV2", "EV3"}
    assert ours.requested_kwh == pytest.approx(acn[0].requested_kwh, abs=1e-3)
    assert ours.delivered_kwh == pytest.approx(sum(delivered.values()), abs=1e-2)
    assert ours.violations == 0 and ours.peak_period_a <= ours.peak_a
