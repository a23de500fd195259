"""The grid connection point: phase wiring, sums, building profile and the IEC 60898-1 main breaker."""

from __future__ import annotations

import math

import pytest

from bench.site import (
    PHASE_ROTATIONS,
    Breaker,
    Site,
    building_load_a,
    ev_phase_currents,
    station_to_site,
)


def hold(breaker: Breaker, current_a: float, duration_s: float, dt_s: float = 1.0) -> float | None:
    """Carry current_a on all phases; the time at the end of the tripping step, or None."""
    for k in range(1, round(duration_s / dt_s) + 1):
        if breaker.step((current_a, current_a, current_a), dt_s):
            return k * dt_s
    return None


# -- IEC 60898-1 Table 7 ------------------------------------------------------------------------


@pytest.mark.parametrize("curve", ["B", "C", "D"])
def test_1_13_in_does_not_trip_within_one_hour_then_1_45_in_trips_within_one_hour(curve):
    breaker = Breaker(32.0, curve)
    assert hold(breaker, 1.13 * 32.0, 3600.0) is None  # test a
    assert breaker.closed
    tripped_after_s = hold(breaker, 1.45 * 32.0, 3600.0)  # test b, straight after a
    assert tripped_after_s is not None and tripped_after_s < 3600.0
    assert breaker.trip_reason == "thermal"


@pytest.mark.parametrize("curve", ["B", "C", "D"])
def test_1_45_in_trips_within_one_hour_from_cold(curve):
    tripped_after_s = hold(Breaker(16.0, curve), 1.45 * 16.0, 3600.0)
    assert tripped_after_s is not None and tripped_after_s < 3600.0


@pytest.mark.parametrize("curve", ["B", "C", "D"])
def test_2_55_in_trips_between_1_s_and_60_s_from_cold(curve):  # test c
    breaker = Breaker(25.0, curve)
    tripped_after_s = hold(breaker, 2.55 * 25.0, 120.0, dt_s=0.1)
    assert tripped_after_s is not None and 1.0 < tripped_after_s < 60.0
    assert 1.0 < breaker.trip_time_s(2.55 * 25.0) < 60.0


@pytest.mark.parametrize("curve, holds_at, trips_at", [("B", 3, 5), ("C", 5, 10), ("D", 10, 20)])
def test_magnetic_band(curve, holds_at, trips_at):  # tests d and e
    breaker = Breaker(20.0, curve)
    assert not breaker.step((holds_at * 20.0, 0.0, 0.0), 0.1)
    assert breaker.trip_time_s(holds_at * 20.0) > 0.1
    breaker = Breaker(20.0, curve)
    assert breaker.step((0.0, trips_at * 20.0, 0.0), 0.01)
    assert breaker.trip_reason == "magnetic" and not breaker.closed
    assert breaker.trip_time_s(trips_at * 20.0) == 0.0


def test_trip_time_closed_form():
    breaker = Breaker(32.0, "C")
    assert breaker.trip_time_s(1.13 * 32) == math.inf
    assert breaker.trip_time_s(1.30 * 32) == math.inf  # the ultimate tripping current
    assert breaker.trip_time_s(0.0) == math.inf
    times = [breaker.trip_time_s(x * 32) for x in (1.35, 1.45, 2.0, 2.55, 5.0, 9.9)]
    assert times == sorted(times, reverse=True)  # more current, sooner
    assert breaker.trip_time_s(-2.55 * 32) == breaker.trip_time_s(2.55 * 32)


def test_stepped_trip_agrees_with_the_closed_form():
    breaker = Breaker(16.0, "C")
    expected_s = breaker.trip_time_s(2.0 * 16.0)
    tripped_after_s = hold(breaker, 2.0 * 16.0, 600.0)
    assert expected_s <= tripped_after_s < expected_s + 1.0


def test_step_length_does_not_change_the_heat():
    fine, coarse = Breaker(16.0), Breaker(16.0)
    for _ in range(60):
        fine.step((18.0, 18.0, 18.0), 1.0)
    coarse.step((18.0, 18.0, 18.0), 60.0)
    assert fine.thermal_load == pytest.approx(coarse.thermal_load)


def test_tripped_breaker_stays_open_until_reset():
    breaker = Breaker(16.0, "B")
    assert breaker.step((100.0, 0.0, 0.0), 1.0)
    assert not breaker.step((0.0, 0.0, 0.0), 1.0)  # True only on the tripping step
    assert not breaker.step((100.0, 100.0, 100.0), 1.0)
    assert not breaker.closed and breaker.trip_reason == "magnetic"
    breaker.reset()
    assert breaker.closed and breaker.trip_reason == ""
    assert not breaker.step((10.0, 10.0, 10.0), 1.0)


def test_reclosing_a_hot_breaker_onto_the_overload_trips_sooner():
    breaker = Breaker(16.0, "C")
    first_s = hold(breaker, 2.0 * 16.0, 600.0)
    breaker.reset()
    second_s = hold(breaker, 2.0 * 16.0, 600.0)
    assert second_s < first_s


def test_each_phase_has_its_own_heat_and_any_phase_trips():
    breaker = Breaker(32.0, "C")
    # L2 alone at 2 In trips thermally while L1 and L3 sit cold.
    for k in range(1, 600):
        if breaker.step((0.0, 64.0, 0.0), 1.0):
            break
    assert breaker.trip_reason == "thermal"
    assert k == math.ceil(breaker.trip_time_s(64.0))
    l1, l2, l3 = breaker.thermal_load
    assert l1 == 0.0 and l3 == 0.0 and l2 >= 1.0
    # The heat does not add across phases: three phases at 1.2 In never trip.
    assert hold(Breaker(32.0, "C"), 1.2 * 32.0, 7200.0, dt_s=60.0) is None


def test_invalid_breaker_is_refused():
    with pytest.raises(ValueError, match="curve"):
        Breaker(32.0, "K")
    with pytest.raises(ValueError, match="rating_a"):
        Breaker(0.0)
    assert Breaker(32.0, "c").curve == "C"


# -- phase wiring ---------------------------------------------------------------------------------


def test_rotation_maps_station_phases_onto_site_phases():
    currents = (10.0, 20.0, 30.0)
    assert station_to_site(currents, "L1L2L3") == (10.0, 20.0, 30.0)
    # Station L1 → site L2, L2 → L3, L3 → L1.
    assert station_to_site(currents, "L2L3L1") == (30.0, 10.0, 20.0)
    assert station_to_site(currents, "L3L1L2") == (20.0, 30.0, 10.0)
    for rotation, wiring in PHASE_ROTATIONS.items():
        site = station_to_site(currents, rotation)
        assert all(site[wiring[i]] == currents[i] for i in range(3))


def test_single_phase_evs_spread_over_rotated_stations():
    one_phase = ev_phase_currents(16.0, 1)
    assert one_phase == (16.0, 0.0, 0.0)
    per_station = [station_to_site(one_phase, r) for r in ("L1L2L3", "L2L3L1", "L3L1L2")]
    assert per_station == [(16.0, 0.0, 0.0), (0.0, 16.0, 0.0), (0.0, 0.0, 16.0)]
    assert ev_phase_currents(16.0, 3) == (16.0, 16.0, 16.0)


def test_unknown_rotation_or_phase_count_is_refused():
    with pytest.raises(ValueError, match="rotation"):
        station_to_site((1.0, 2.0, 3.0), "L1L3L2")
    with pytest.raises(ValueError, match="phases"):
        ev_phase_currents(16.0, 2)


# -- the site -----------------------------------------------------------------------------------------


def test_site_sums_stations_and_building_per_phase():
    site = Site(230.0, Breaker(100.0, "C"))
    sample = site.step([(16.0, 0.0, 0.0), (0.0, 16.0, 0.0), (32.0, 32.0, 32.0)], (5.0, 6.0, 7.0), 3600.0)
    assert sample.currents_a == (53.0, 54.0, 39.0)
    assert sample.power_w == pytest.approx(230.0 * 146.0)
    assert sample.closed and not sample.tripped_now
    assert site.energy_import_kwh == pytest.approx(230.0 * 146.0 / 1000.0)


def test_site_with_no_stations_draws_the_building():
    site = Site(230.0, Breaker(63.0))
    sample = site.step([], (10.0, 10.0, 10.0), 1.0)
    assert sample.currents_a == (10.0, 10.0, 10.0)


def test_export_is_not_import():
    site = Site(230.0, Breaker(63.0))
    site.step([], (-10.0, -10.0, -10.0), 3600.0)
    assert site.energy_import_kwh == 0.0
    assert site.energy_export_kwh == pytest.approx(6.9)


def test_site_trip_cuts_everything_after_the_tripping_step():
    site = Site(230.0, Breaker(32.0, "C"))
    sample = site.step([(400.0, 400.0, 400.0)], (0.0, 0.0, 0.0), 1.0)  # > 10 In on every phase
    assert sample.tripped_now and not sample.closed
    assert sample.currents_a == (400.0, 400.0, 400.0)  # flowed until it tripped
    imported_kwh = site.energy_import_kwh
    sample = site.step([(400.0, 400.0, 400.0)], (5.0, 5.0, 5.0), 1.0)
    assert sample.currents_a == (0.0, 0.0, 0.0) and sample.power_w == 0.0
    assert not sample.tripped_now and not sample.closed
    assert site.energy_import_kwh == imported_kwh


# -- building profile -----------------------------------------------------------------------------


PROFILE = [(6 * 3600.0, 20.0), (18 * 3600.0, 35.0), (23 * 3600.0, 8.0)]


@pytest.mark.parametrize(
    "t_s, expected_a",
    [
        (0.0, 8.0),  # before the first point: last night's value
        (6 * 3600.0 - 1, 8.0),
        (6 * 3600.0, 20.0),  # at a point, that point holds
        (12 * 3600.0, 20.0),
        (18 * 3600.0, 35.0),
        (23 * 3600.0 + 5, 8.0),
        (86_400.0 + 7 * 3600.0, 20.0),  # the next day
        (3 * 86_400.0 + 19 * 3600.0, 35.0),
        (-3600.0, 8.0),  # one hour before midnight, day 0
    ],
)
def test_building_profile_steps_and_wraps_around_the_day(t_s, expected_a):
    assert building_load_a(PROFILE, t_s) == expected_a


def test_empty_building_profile_is_no_load():
    assert building_load_a([], 1234.0) == 0.0
