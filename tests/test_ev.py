"""The EV model: pilot response with lag, the 6 A floor, CC-CV taper, stopping at target, energy."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulators.ev import EV, EVSpec


def make_ev(**overrides) -> EV:
    fields = dict(battery_kwh=60.0, initial_soc=0.2, target_soc=0.8)
    fields.update(overrides)
    return EV(EVSpec(**fields))


def run(ev: EV, start_s: float, end_s: float, dt_s: float = 1.0) -> list[float]:
    """Currents drawn by steps starting at start_s, start_s + dt_s, … before end_s."""
    currents_a = []
    steps = round((end_s - start_s) / dt_s)
    for k in range(steps):
        currents_a.append(ev.step(start_s + k * dt_s, dt_s))
    return currents_a


def test_no_offer_no_current():
    ev = make_ev()
    assert run(ev, 0, 5) == [0.0] * 5


def test_follows_a_lower_offer_after_the_lag_and_overdraws_meanwhile():
    ev = make_ev(response_lag_s=2.0)
    ev.offer(32.0, now_s=0.0)
    assert run(ev, 0, 4) == [0.0, 0.0, 32.0, 32.0]
    ev.offer(16.0, now_s=4.0)
    # 4 s and 5 s: still 32 A against a 16 A offer — the overdraw the bench measures.
    assert run(ev, 4, 8) == [32.0, 32.0, 16.0, 16.0]


def test_follows_a_higher_offer_after_the_lag():
    ev = make_ev(response_lag_s=3.0)
    ev.offer(10.0, now_s=0.0)
    run(ev, 0, 5)
    ev.offer(20.0, now_s=5.0)
    assert run(ev, 5, 10) == [10.0, 10.0, 10.0, 20.0, 20.0]


def test_several_changes_inside_one_lag_are_followed_in_order():
    ev = make_ev(response_lag_s=5.0)
    ev.offer(32.0, now_s=0.0)
    ev.offer(16.0, now_s=1.0)
    ev.offer(0.0, now_s=2.0)
    ev.offer(10.0, now_s=3.0)
    assert run(ev, 0, 10) == [0, 0, 0, 0, 0, 32.0, 16.0, 0.0, 10.0, 10.0]


def test_zero_lag_follows_at_once():
    ev = make_ev(response_lag_s=0.0)
    ev.offer(16.0, now_s=0.0)
    assert ev.step(0.0, 1.0) == 16.0


def test_offer_due_between_float_steps_is_not_missed():
    ev = make_ev(response_lag_s=0.5)
    ev.offer(16.0, now_s=0.0)
    now_s, drawn = 0.0, []
    for _ in range(6):
        drawn.append(ev.step(now_s, 0.1))
        now_s += 0.1  # 0.1 * 5 sums to 0.49999999999999994
    assert drawn == [0.0] * 5 + [16.0]


@pytest.mark.parametrize("offer_a", [0.1, 3.0, 5.99])
def test_offer_between_0_and_6_a_is_a_pause(offer_a):
    # IEC 61851-1 Annex A: an AC EV cannot charge below 6 A.
    ev = make_ev(response_lag_s=0.0)
    ev.offer(offer_a, now_s=0.0)
    assert run(ev, 0, 3) == [0.0] * 3
    ev.offer(6.0, now_s=3.0)
    assert ev.step(3.0, 1.0) == 6.0


@pytest.mark.parametrize("offer_a", [-5.0, math.nan])
def test_negative_or_nan_offer_is_a_pause(offer_a):
    ev = make_ev(response_lag_s=0.0)
    ev.offer(offer_a, now_s=0.0)
    assert ev.step(0.0, 1.0) == 0.0


def test_offer_above_the_on_board_charger_is_capped():
    ev = make_ev(max_current_a=16.0, response_lag_s=0.0)
    ev.offer(63.0, now_s=0.0)
    assert ev.step(0.0, 1.0) == 16.0


def test_not_supplied_draws_nothing_and_stores_nothing():
    ev = make_ev(response_lag_s=0.0)
    ev.offer(32.0, now_s=0.0)
    assert ev.step(0.0, 1.0, supplied=False) == 0.0
    assert ev.energy_kwh == 0.0 and ev.soc == 0.2 and ev.power_w == 0.0


def test_taper_above_the_knee():
    # Accepted current falls linearly from max at the knee to min at SoC 1.0.
    for soc, expected_a in [(0.5, 32.0), (0.8, 32.0), (0.9, 19.0), (0.95, 12.5)]:
        ev = make_ev(initial_soc=soc, target_soc=1.0, response_lag_s=0.0)
        ev.offer(32.0, now_s=0.0)
        assert ev.step(0.0, 1.0) == pytest.approx(expected_a)


def test_taper_does_not_raise_a_lower_offer():
    ev = make_ev(initial_soc=0.9, target_soc=1.0, response_lag_s=0.0)
    ev.offer(10.0, now_s=0.0)
    assert ev.step(0.0, 1.0) == 10.0


def test_knee_at_one_means_no_taper():
    ev = make_ev(initial_soc=0.99, target_soc=1.0, taper_knee_soc=1.0, response_lag_s=0.0)
    ev.offer(32.0, now_s=0.0)
    assert ev.step(0.0, 1.0) == 32.0


def test_stops_exactly_at_target_with_the_average_current_of_the_last_step():
    # 3 phases × 230 V × 10 A = 6.9 kW; 0.01 kWh to go → 5.217… s at 10 A.
    ev = make_ev(battery_kwh=1.0, initial_soc=0.5, target_soc=0.51, response_lag_s=0.0)
    ev.offer(10.0, now_s=0.0)
    drawn = run(ev, 0, 10)
    assert drawn[:5] == [10.0] * 5
    assert drawn[5] == pytest.approx(10.0 * (0.01 * 3.6e6 / 6900.0 - 5))
    assert drawn[6:] == [0.0] * 4
    assert ev.done and ev.soc == 0.51
    assert ev.energy_kwh == ev.requested_kwh
    assert ev.power_w == 0.0


def test_energy_accounting_matches_soc_with_efficiency():
    ev = make_ev(battery_kwh=50.0, initial_soc=0.1, target_soc=0.9, efficiency=0.9, response_lag_s=0.0)
    assert ev.requested_kwh == pytest.approx(0.8 * 50.0 / 0.9)
    ev.offer(16.0, now_s=0.0)
    drawn = run(ev, 0, 600, dt_s=60.0)
    grid_kwh = sum(drawn) * 230.0 * 3 * 60.0 / 3.6e6
    assert ev.energy_kwh == pytest.approx(grid_kwh)
    assert ev.soc == pytest.approx(0.1 + ev.energy_kwh * 0.9 / 50.0)


def test_one_phase_and_three_phase_power():
    for phases, expected_w in [(1, 16 * 230.0), (3, 3 * 16 * 230.0)]:
        ev = make_ev(phases=phases, response_lag_s=0.0)
        ev.offer(16.0, now_s=0.0)
        ev.step(0.0, 3600.0)
        assert ev.power_w == expected_w
        assert ev.energy_kwh == pytest.approx(expected_w / 1000.0)


def test_arriving_above_target_is_done_and_requests_nothing():
    ev = make_ev(initial_soc=0.9, target_soc=0.8, response_lag_s=0.0)
    ev.offer(32.0, now_s=0.0)
    assert ev.done and ev.requested_kwh == 0.0
    assert ev.step(0.0, 1.0) == 0.0


def test_offers_out_of_time_order_are_refused():
    ev = make_ev()
    ev.offer(16.0, now_s=10.0)
    with pytest.raises(ValueError, match="time order"):
        ev.offer(16.0, now_s=9.0)


@pytest.mark.parametrize(
    "overrides",
    [dict(phases=2), dict(battery_kwh=0.0), dict(target_soc=1.2), dict(max_current_a=5.0), dict(efficiency=0.0)],
)
def test_invalid_spec_is_refused_with_the_field_name(overrides):
    field = next(iter(overrides))
    with pytest.raises(ValueError, match=field):
        make_ev(**overrides)


# -- properties ----------------------------------------------------------------------------------

offers = st.lists(
    st.tuples(st.integers(0, 120), st.one_of(st.just(0.0), st.floats(0.0, 80.0))),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(
    battery_kwh=st.floats(0.5, 100.0),
    initial_soc=st.floats(0.0, 1.0),
    target_soc=st.floats(0.0, 1.0),
    max_current_a=st.floats(6.0, 63.0),
    phases=st.sampled_from([1, 3]),
    knee=st.floats(0.0, 1.0),
    lag_s=st.sampled_from([0.0, 1.0, 2.0, 2.5, 7.0]),
    efficiency=st.floats(0.5, 1.0),
    dt_s=st.sampled_from([0.5, 1.0, 10.0, 300.0]),
    offer_events=offers,
)
def test_energy_and_current_stay_within_bounds(
    battery_kwh, initial_soc, target_soc, max_current_a, phases, knee, lag_s, efficiency, dt_s, offer_events
):
    spec = EVSpec(
        battery_kwh=battery_kwh,
        initial_soc=initial_soc,
        target_soc=target_soc,
        max_current_a=max_current_a,
        phases=phases,
        taper_knee_soc=knee,
        response_lag_s=lag_s,
        efficiency=efficiency,
    )
    ev = EV(spec)
    events = sorted(offer_events, key=lambda e: e[0])
    made: list[tuple[float, float]] = []  # (time, limit) of offers made so far
    next_event = 0
    drawn_kwh = 0.0
    for k in range(int(160 / dt_s)):
        now_s = k * dt_s
        while next_event < len(events) and events[next_event][0] <= now_s:
            t_s, limit_a = events[next_event]
            ev.offer(limit_a, now_s=float(t_s))
            made.append((float(t_s), limit_a))
            next_event += 1
        in_force_a = 0.0
        for t_s, limit_a in made:
            if t_s + lag_s <= now_s:
                in_force_a = limit_a
        current_a = ev.step(now_s, dt_s)
        drawn_kwh += current_a * spec.voltage_v * phases * dt_s / 3.6e6
        assert 0.0 <= current_a <= max(in_force_a, 0.0)
        assert current_a <= max_current_a
        assert ev.energy_kwh <= ev.requested_kwh
        assert initial_soc <= ev.soc <= max(target_soc, initial_soc)
    assert ev.energy_kwh == pytest.approx(drawn_kwh, rel=1e-9, abs=1e-12)
    assert ev.soc == pytest.approx(initial_soc + ev.energy_kwh * efficiency / battery_kwh, abs=1e-12)


# -- ISO 15118 mode ----------------------------------------------------------------------------------


def test_basic_ev_states_no_needs_and_cannot_renegotiate():
    ev = make_ev()
    assert ev.needs() is None
    assert ev.change_needs(departure_s=100.0, target_soc=0.9) is None
    assert ev.requested_kwh == pytest.approx(36.0)  # unchanged: a basic EV cannot say it changed


def test_iso15118_needs_report_departure_energy_and_bounds():
    ev = make_ev(iso15118=True, departure_s=3600.0, max_current_a=16.0, phases=1,
                 discharge_max_current_a=10.0, min_soc=0.3)
    needs = ev.needs()
    assert needs.departure_s == 3600.0
    assert needs.energy_wh == pytest.approx(36_000.0)
    assert (needs.min_current_a, needs.max_current_a, needs.phases) == (6.0, 16.0, 1)
    assert (needs.discharge_max_current_a, needs.min_soc, needs.target_soc) == (10.0, 0.3, 0.8)
    ev.offer(16.0, 0.0)
    run(ev, 0.0, 600.0)
    # 16 A x 230 V x 1 phase for 598 s (2 s lag) ≈ 611 Wh less to go.
    assert ev.needs().energy_wh == pytest.approx(36_000.0 - 16 * 230 * 598 / 3600, rel=1e-9)


def test_renegotiation_changes_target_and_departure():
    ev = make_ev(iso15118=True, departure_s=3600.0, battery_kwh=10.0, initial_soc=0.5, target_soc=0.6)
    ev.offer(32.0, 0.0)
    run(ev, 0.0, 3600.0)
    assert ev.done and ev.soc == pytest.approx(0.6)
    needs = ev.change_needs(departure_s=7200.0, target_soc=0.8)
    assert not ev.done and needs.departure_s == 7200.0
    assert needs.energy_wh == pytest.approx(2000.0)
    run(ev, 3600.0, 7200.0)
    assert ev.done and ev.soc == pytest.approx(0.8) and ev.energy_kwh == pytest.approx(3.0)
    # Lowering the target below what is already in the battery: done, and nothing more is wanted.
    assert ev.change_needs(target_soc=0.55).energy_wh == 0.0 and ev.done


def test_invalid_iso_fields_are_refused():
    with pytest.raises(ValueError, match="discharge_max_current_a"):
        make_ev(discharge_max_current_a=-1.0)
    with pytest.raises(ValueError, match="min_soc"):
        make_ev(min_soc=1.5)
    with pytest.raises(ValueError, match="target_soc"):
        make_ev(iso15118=True).change_needs(target_soc=2.0)
