"""The smart controller's planner (controllers/smart_plan.py): small linear programmes checked by hand.

Times start on a quarter hour, so intervals are whole 15 minutes (0.25 h); a 16 A three-phase site
at 230 V is 11.04 kW.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.api import BatteryConfig, PowerForecast, PricePeriod
from controllers.smart_plan import PlanEV, PlanProblem, boundaries, plan

T0 = 1_772_438_400.0  # 2026-03-02 08:00 UTC
HOUR = 3600.0
SITE_16A_KW = 16 * 230 * 3 / 1000  # 11.04 kW


def hourly(*prices: float) -> tuple[PricePeriod, ...]:
    return tuple(PricePeriod(T0 + h * HOUR, T0 + (h + 1) * HOUR, price) for h, price in enumerate(prices))


def per_hour(energy: tuple[float, ...]) -> list[float]:
    return [round(sum(energy[i:i + 4]), 6) for i in range(0, len(energy), 4)]


def test_intervals_are_clock_quarter_hours_up_to_the_last_departure():
    edges = boundaries(PlanProblem(start=T0 + 100, limit_a=16, evs=(PlanEV("a", T0 + 2 * HOUR, 1, 1000),)))
    assert edges[0] == T0 + 100 and edges[1] == T0 + 900  # the first interval ends on the quarter hour
    assert edges[-1] == T0 + 2 * HOUR and len(edges) == 9
    with_battery = PlanProblem(start=T0, limit_a=16, battery=BatteryConfig(10, 5000, 5000))
    assert len(boundaries(with_battery)) == 97  # a battery has no departure: the whole 24 h


def test_the_cheap_hour_is_used():
    ev = PlanEV("a", T0 + 4 * HOUR, energy_kwh=10.0, max_power_w=11_000)
    result = plan(PlanProblem(start=T0, limit_a=16, evs=(ev,), prices=hourly(0.30, 0.30, 0.10, 0.30)))
    assert per_hour(result.ev_kwh["a"]) == [0.0, 0.0, 10.0, 0.0]
    assert result.shortfall_kwh["a"] == pytest.approx(0.0)
    assert result.cost == pytest.approx(1.0)  # 10 kWh at 0.10


def test_every_deadline_is_met_when_it_can_be():
    # 20 kWh in 2 h under 11.04 kW: a must have its 8 kWh in the first hour, b the rest by the second.
    a = PlanEV("a", T0 + 1 * HOUR, energy_kwh=8.0, max_power_w=11_040)
    b = PlanEV("b", T0 + 2 * HOUR, energy_kwh=12.0, max_power_w=11_040)
    result = plan(PlanProblem(start=T0, limit_a=16, evs=(a, b)))
    assert sum(result.ev_kwh["a"]) == pytest.approx(8.0)
    assert sum(result.ev_kwh["b"]) == pytest.approx(12.0)
    assert per_hour(result.ev_kwh["a"])[1] == 0.0  # it has left
    assert result.shortfall_kwh == {"a": pytest.approx(0.0), "b": pytest.approx(0.0)}


def test_an_infeasible_request_still_solves_with_the_least_shortfall():
    alone = plan(PlanProblem(start=T0, limit_a=63, evs=(PlanEV("a", T0 + HOUR, 30.0, 11_000),)))
    assert alone.shortfall_kwh["a"] == pytest.approx(19.0)  # 11 kW for an hour, of 30 kWh
    two = (PlanEV("a", T0 + HOUR, 10.0, 11_040), PlanEV("b", T0 + HOUR, 10.0, 11_040))
    shared = plan(PlanProblem(start=T0, limit_a=16, evs=two))
    assert sum(shared.shortfall_kwh.values()) == pytest.approx(20.0 - SITE_16A_KW)


def test_when_not_every_request_fits_the_session_with_the_least_energy_is_served_first():
    # 11.04 kWh in the hour for two EVs wanting 20 kWh each. With one penalty for every kWh short, any split is
    # optimal and the solver's vertex gives it all to one of them; the tiers share it.
    even = plan(PlanProblem(start=T0, limit_a=16, evs=(PlanEV("a", T0 + HOUR, 20.0, 11_040),
                                                       PlanEV("b", T0 + HOUR, 20.0, 11_040))))
    tier_kwh = 20.0 / 12
    assert sum(even.ev_kwh["a"]) == pytest.approx(SITE_16A_KW / 2, abs=tier_kwh)
    assert sum(even.ev_kwh["a"]) + sum(even.ev_kwh["b"]) == pytest.approx(SITE_16A_KW)
    # b took 20 kWh before now, a nothing: a is served first.
    ahead = plan(PlanProblem(start=T0, limit_a=16, evs=(PlanEV("a", T0 + HOUR, 20.0, 11_040),
                                                        PlanEV("b", T0 + HOUR, 20.0, 11_040, taken_kwh=20.0))))
    assert sum(ahead.ev_kwh["a"]) == pytest.approx(SITE_16A_KW)
    assert ahead.shortfall_kwh == {"a": pytest.approx(20.0 - SITE_16A_KW), "b": pytest.approx(20.0)}
    # A weight (the installer's priority) comes before the energy taken.
    first = plan(PlanProblem(start=T0, limit_a=16, evs=(PlanEV("a", T0 + HOUR, 20.0, 11_040),
                                                        PlanEV("b", T0 + HOUR, 20.0, 11_040, taken_kwh=20.0,
                                                               weight=4.0))))
    assert sum(first.ev_kwh["b"]) == pytest.approx(SITE_16A_KW)


def test_the_battery_shifts_pv_to_later():
    # 10 kW of PV for two hours, 2 kW of building load all day, exporting earns nothing: the battery
    # stores the 16 kWh of surplus and gives it back to the building later instead of importing.
    problem = PlanProblem(start=T0, limit_a=16, prices=(PricePeriod(T0, T0 + 24 * HOUR, 0.30),),
                          pv_forecast=(PowerForecast(T0, T0 + 2 * HOUR, 10_000),), base_load_w=2_000,
                          battery=BatteryConfig(capacity_kwh=20, max_charge_w=10_000, max_discharge_w=10_000,
                                            min_soc=0.1, max_soc=0.95, efficiency=0.95),
                          battery_soc=0.1)
    result = plan(problem)
    assert sum(result.battery_kwh[:8]) == pytest.approx(16.0)  # all the surplus goes in
    assert min(result.battery_kwh[8:]) < 0  # and comes out later
    assert sum(result.export_kwh) == pytest.approx(0.0)
    stored = 16.0 * 0.95
    # 44 kWh of building load after the PV, less what the battery gives back (after its losses).
    assert sum(result.import_kwh) == pytest.approx(44.0 - stored * 0.95)
    assert result.cost == pytest.approx((44.0 - stored * 0.95) * 0.30)  # without the battery: 44 kWh × 0.30


def test_the_peak_term_flattens_the_import():
    ev = PlanEV("a", T0 + 4 * HOUR, energy_kwh=20.0, max_power_w=22_000)
    eager = plan(PlanProblem(start=T0, limit_a=63, evs=(ev,)))
    assert eager.peak_kw == pytest.approx(22.0)  # as fast as it can: earlier is preferred
    flat = plan(PlanProblem(start=T0, limit_a=63, evs=(ev,), demand_charge_per_kw=10.0))
    assert flat.peak_kw == pytest.approx(5.0)  # 20 kWh over 4 h
    assert max(flat.import_kwh) == pytest.approx(1.25)
    # A peak already billed this period is free to use again.
    billed = plan(PlanProblem(start=T0, limit_a=63, evs=(ev,), demand_charge_per_kw=10.0, peak_so_far_kw=10.0))
    assert billed.peak_kw == pytest.approx(10.0) and per_hour(billed.ev_kwh["a"])[:2] == [10.0, 10.0]


def test_one_phase_evs_count_on_their_phase_and_on_every_phase_when_it_is_unknown():
    phase_kw = 16 * 230 / 1000  # 3.68 kW per phase
    unknown = (PlanEV("a", T0 + HOUR, 10.0, 7_360, phases=1), PlanEV("b", T0 + HOUR, 10.0, 7_360, phases=1))
    result = plan(PlanProblem(start=T0, limit_a=16, evs=unknown))
    assert sum(result.ev_kwh["a"]) + sum(result.ev_kwh["b"]) == pytest.approx(phase_kw)
    known = (PlanEV("a", T0 + HOUR, 10.0, 7_360, phases=1, phase=0), PlanEV("b", T0 + HOUR, 10.0, 7_360, phases=1,
                                                                            phase=1))
    result = plan(PlanProblem(start=T0, limit_a=16, evs=known))
    assert sum(result.ev_kwh["a"]) == pytest.approx(phase_kw) and sum(result.ev_kwh["b"]) == pytest.approx(phase_kw)


def test_the_power_of_the_interval_containing_a_time():
    result = plan(PlanProblem(start=T0, limit_a=63, evs=(PlanEV("a", T0 + HOUR, 2.75, 11_000),)))
    assert result.ev_power_w("a", T0 + 60) == pytest.approx(11_000)  # 2.75 kWh in the first quarter hour
    assert result.ev_power_w("a", T0 + 1000) == 0.0
    assert result.ev_power_w("a", T0 + 2 * HOUR) == 0.0 and result.interval(T0 + 2 * HOUR) is None


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 5), limit_a=st.floats(6.0, 120.0), load_w=st.floats(0.0, 30_000.0),
       with_battery=st.booleans())
def test_plans_hold_the_site_power_stay_within_stays_and_never_exceed_a_request(data, n, limit_a, load_w,
                                                                                 with_battery):
    start = T0 + data.draw(st.floats(0.0, 900.0), label="start after the quarter hour")
    evs = tuple(PlanEV(i, start + data.draw(st.floats(-HOUR, 10 * HOUR), label=f"EV {i} leaves after"),
                       data.draw(st.floats(0.0, 80.0), label=f"EV {i} wants [kWh]"),
                       data.draw(st.floats(1_000.0, 22_080.0), label=f"EV {i} max [W]"),
                       data.draw(st.sampled_from([1, 3]), label=f"EV {i} phases")) for i in range(n))
    prices = tuple(PricePeriod(T0 + h * HOUR, T0 + (h + 1) * HOUR, data.draw(st.floats(-0.1, 0.6), label="price"))
                   for h in range(0, 24, 3))
    pv = (PowerForecast(T0 + 2 * HOUR, T0 + 6 * HOUR, data.draw(st.floats(0.0, 40_000.0), label="PV [W]")),)
    battery = BatteryConfig(30.0, 11_000, 11_000) if with_battery else None
    problem = PlanProblem(start=start, limit_a=limit_a, evs=evs, prices=prices, pv_forecast=pv, base_load_w=load_w,
                          battery=battery, battery_soc=0.5, demand_charge_per_kw=data.draw(st.floats(0.0, 20.0)),
                          export_price_per_kwh=0.05)
    result = plan(problem)
    edges = result.boundaries
    site_kw = limit_a * 230 * 3 / 1000
    for t in range(len(edges) - 1):
        hours = (edges[t + 1] - edges[t]) / HOUR
        pv_kw = pv[0].power_w / 1000 if pv[0].start < edges[t + 1] and edges[t] < pv[0].end else 0.0
        evs_kwh = sum(result.ev_kwh[ev.key][t] for ev in evs)
        battery_kwh = result.battery_kwh[t] if with_battery else 0.0
        if load_w / 1000 <= site_kw:
            assert evs_kwh + battery_kwh <= (site_kw - load_w / 1000 + pv_kw) * hours + 1e-6
        assert result.import_kwh[t] <= max(site_kw, load_w / 1000) * hours + 1e-6
        for ev in evs:
            stay_s = max(min(edges[t + 1], ev.departure) - edges[t], 0.0)
            assert result.ev_kwh[ev.key][t] <= ev.max_power_w / 1000 * stay_s / HOUR + 1e-6
    for ev in evs:
        assert sum(result.ev_kwh[ev.key]) <= ev.energy_kwh + 1e-6
