"""REALLOCATE and DR-RESPONSE: over hand-made traces written by the real Recorder, and over real runs of the errata
§2.46 example (a site limit of 94 A, one station with two EVSEs: 94 A → 47/47 A → 94 A) and of a grid signal that
cuts the site to 0 and restores it, each against tiny in-test controllers that do and do not answer."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hand_traces import only, recorded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.runner import run_scenario
from bench.scenario import ScenarioError, parse_scenario
from bench.trace import load_trace
from controllers.api import Controller, Limit

START = 1_700_000_000.0
VOLTAGE_V = 230.0


def make_meta(limit_a=94.0, station_max_a=100.0, **checks):
    return {
        "scenario": "unit", "controller": "test", "start_epoch": START, "duration_s": 600.0, "step_s": 1.0,
        "voltage_v": VOLTAGE_V, "phases": 3, "site_limit_a": limit_a,
        "checks": {"station_response_s": 10.0, "min_current_a": 6.0, "site_tolerance_a": 0.5, **checks},
        "stations": [{"id": "CS1", "ocpp": "1.6", "connectors": 2, "max_current_a": station_max_a, "phases": 3,
                      "rotation": "L1L2L3"},
                     {"id": "CS2", "ocpp": "1.6", "connectors": 1, "max_current_a": 32.0, "phases": 3,
                      "rotation": "L1L2L3"}],
    }


def record(rec, n, connectors, limit=lambda t: 94.0, building=lambda t: 0.0, closed=lambda t: True):
    """``n`` one-second steps of a site whose EVs are ``connectors``: (station, connector) → ``state(t)``, which
    gives ``(ev, limit_a, offered_a, drawn_a)`` of a 3-phase EV or None (no EV plugged in). The site draws the
    building plus every EV, on each phase."""
    for t in range(n):
        total_a = building(t) if closed(t) else 0.0
        for (station, connector), state in connectors.items():
            now = state(t)
            if now is None:
                continue
            ev, limit_a, offered_a, drawn_a = now
            drawn_a = drawn_a if closed(t) else 0.0
            rec.station(float(t), station, connector, limit_a, offered_a if closed(t) else 0.0, (drawn_a,) * 3,
                        drawn_a * VOLTAGE_V * 3, 0.0, None, ev)
            total_a += drawn_a
        rec.site(float(t), (total_a,) * 3, limit(t), total_a * VOLTAGE_V * 3, building(t), closed(t))


def trace_of(tmp_path, build, meta=None, name="run.db"):
    return recorded(tmp_path, build, meta or make_meta(), name)


def following(ev, offer_at, until=None, since=0):
    """An EV that draws what it is offered (``offer_at(t)``), plugged in from ``since`` to ``until``."""
    def state(t):
        if t < since or (until is not None and t >= until):
            return None
        offer = offer_at(t)
        return ev, offer, offer, offer
    return state


# -- REALLOCATE -----------------------------------------------------------------------------

def errata(b_offer=lambda t: 47.0, n=300, a_leaves=100):
    """The errata §2.46 site after B arrived: A and B at 47/47 A under 94 A; A leaves at ``a_leaves``."""
    return lambda rec: record(rec, n, {("CS1", 1): following("A", lambda t: 47.0, until=a_leaves),
                                       ("CS1", 2): following("B", b_offer)})


def test_a_controller_that_never_reallocates_fails_naming_the_ev_held_back(tmp_path):
    result = only(trace_of(tmp_path, errata()), "REALLOCATE")
    assert result.verdict == "fail"
    (f,) = result.findings
    assert (f.t_start, f.t_end, f.station, f.connector) == (100.0, 300.0, "CS1", 2)
    assert (f.measured, f.allowed, f.unit) == (47.0, 4.7, "A")
    assert f.message == (
        "47.0 A freed (A left CS1/1) not reallocated: 47.0 A of it unused 60 s later, the site 47.0 A under its 94 A "
        "limit, while CS1/2 at 47.0 A (could take 100.0 A) held back; unused for 200 s (reallocate 60 s, tolerance "
        "4.7 A freed, 9.4 A under the limit)")
    assert f.evidence["held"] == [{"station": "CS1", "connector": 2, "ev": "B", "offered_a": 47.0, "drawing_a": 47.0,
                                   "could_a": 100.0, "room_a": 53.0}]
    assert (f.evidence["freed_a"], f.evidence["unused_before_a"], f.evidence["deadline_t"]) == (47.0, 0.0, 160.0)
    assert f.evidence["samples"][0] == {"t": 160.0, "currents_a": [47.0] * 3, "limit_a": 94.0, "unused_a": 47.0}


@pytest.mark.parametrize(("prices", "demand_charge", "judged"), [
    ([[0.0, 0.25]], 0.0, True),  # a flat price: nothing to wait for
    ([[0.0, 0.25], [120.0, 0.10]], 0.0, False),  # cheaper later: waiting can be the point
    ([[0.0, 0.25]], 15.0, False),  # a demand charge: a lower peak can be the point
])
def test_not_judged_where_the_tariff_rewards_holding_back(tmp_path, prices, demand_charge, judged):
    meta = {**make_meta(), "tariff": {"currency": "EUR", "export_price_per_kwh": 0.0, "kind": "time_of_use",
                                      "demand_charge_per_kw": demand_charge, "import_prices": prices}}
    result = only(trace_of(tmp_path, errata(), meta), "REALLOCATE")
    assert result.verdict == ("fail" if judged else "pass")


def test_equal_share_like_reallocation_within_the_time_passes_and_late_is_a_finding(tmp_path):
    on_time = trace_of(tmp_path, errata(lambda t: 47.0 if t < 130 else 93.0))
    assert only(on_time, "REALLOCATE").verdict == "pass"
    # Raised after 70 s: a finding that ends when the capacity was taken up.
    late = trace_of(tmp_path, errata(lambda t: 47.0 if t < 170 else 93.0), name="late.db")
    (f,) = only(late, "REALLOCATE").findings
    assert (f.t_start, f.t_end) == (100.0, 170.0)
    assert "unused for 70 s" in f.message
    # Raised in steps that leave less than the tolerance (4.7 A) unused by the deadline.
    steps = trace_of(tmp_path, errata(lambda t: 47.0 if t < 110 else 70.0 if t < 150 else 90.0), name="steps.db")
    assert only(steps, "REALLOCATE").verdict == "pass"


def test_passes_vacuously_without_another_ev(tmp_path):
    alone = trace_of(tmp_path, lambda rec: record(rec, 300, {("CS1", 1): following("A", lambda t: 94.0, until=100)}))
    assert only(alone, "REALLOCATE").verdict == "pass"


def test_passes_when_the_others_are_at_their_own_max(tmp_path):
    # B's station allows 32 A and B gets it: nothing to give B.
    at_hardware = trace_of(tmp_path, lambda rec: record(rec, 300, {
        ("CS1", 1): following("A", lambda t: 47.0, until=100), ("CS2", 1): following("B", lambda t: 32.0)}))
    assert only(at_hardware, "REALLOCATE").verdict == "pass"

    # B (a 20 A car on a 100 A EVSE) drew 20 A of 40 A offered for a minute: it was offered 20 A from then on,
    # which is all it takes.
    def b(t):
        offer = 40.0 if t < 60 else 20.0
        return "B", offer, offer, 20.0
    at_ceiling = trace_of(tmp_path, lambda rec: record(rec, 300, {
        ("CS1", 1): following("A", lambda t: 60.0, until=100), ("CS1", 2): b}), name="ceiling.db")
    assert only(at_ceiling, "REALLOCATE").verdict == "pass"
    # The same car offered 20 A all along never showed what it could take: it is held back at 20 A.
    unknown = trace_of(tmp_path, lambda rec: record(rec, 300, {
        ("CS1", 1): following("A", lambda t: 60.0, until=100), ("CS1", 2): following("B", lambda t: 20.0)}),
        name="unknown.db")
    assert only(unknown, "REALLOCATE").verdict == "fail"


def test_passes_when_the_site_is_at_its_limit(tmp_path):
    # A leaves as the grid lowers the limit to 50 A: B's 47 A is within 10 % of it.
    lowered = trace_of(tmp_path, lambda rec: record(
        rec, 300, {("CS1", 1): following("A", lambda t: 47.0, until=100), ("CS1", 2): following("B", lambda t: 47.0)},
        limit=lambda t: 94.0 if t < 100 else 50.0))
    assert only(lowered, "REALLOCATE").verdict == "pass"
    # The building takes what A freed.
    building = trace_of(tmp_path, lambda rec: record(
        rec, 300, {("CS1", 1): following("A", lambda t: 47.0, until=100), ("CS1", 2): following("B", lambda t: 47.0)},
        building=lambda t: 0.0 if t < 120 else 45.0), name="building.db")
    assert only(building, "REALLOCATE").verdict == "pass"
    # A new car takes 32 A of it (its station's max), B the rest; without B's share 15 A stay unused.
    def newcomer(b_raised):
        return lambda rec: record(rec, 300, {
            ("CS1", 1): following("A", lambda t: 47.0, until=100),
            ("CS1", 2): following("B", lambda t: 47.0 if t < 130 else b_raised),
            ("CS2", 1): following("C", lambda t: 32.0, since=130)})
    assert only(trace_of(tmp_path, newcomer(62.0), name="newcomer.db"), "REALLOCATE").verdict == "pass"
    (f,) = only(trace_of(tmp_path, newcomer(47.0), name="partly.db"), "REALLOCATE").findings
    assert f.measured == 15.0


def test_capacity_unused_before_the_moment_is_not_blamed_on_it(tmp_path):
    # The site was 20 A under its limit all along; B got what A freed, no more.
    trace = trace_of(tmp_path, lambda rec: record(rec, 300, {
        ("CS1", 1): following("A", lambda t: 37.0, until=100),
        ("CS1", 2): following("B", lambda t: 37.0 if t < 120 else 74.0)}))
    assert only(trace, "REALLOCATE").verdict == "pass"


def test_a_full_ev_frees_what_it_drew(tmp_path):
    def a(t):
        return "A", 47.0, 47.0, 47.0 if t < 100 else 0.0

    def build(b_offer):
        def run(rec):
            record(rec, 300, {("CS1", 1): a, ("CS1", 2): following("B", b_offer)})
            rec.event(100.0, "vehicle_full", "CS1", {"ev": "A", "energy_kwh": 30.0})
        return run
    (f,) = only(trace_of(tmp_path, build(lambda t: 47.0)), "REALLOCATE").findings
    assert f.t_start == 100.0 and "47.0 A freed (A on CS1/1 was full)" in f.message
    # A full car still offered 47 A is not held back; B raised in time passes.
    assert only(trace_of(tmp_path, build(lambda t: 47.0 if t < 140 else 93.0), name="ok.db"),
                "REALLOCATE").verdict == "pass"


def test_an_ev_drawing_clearly_less_than_offered_frees_the_rest(tmp_path):
    def a(t):  # offered 47 A all along, from t=100 it draws 20 A (a weak on-board charger after a phase change)
        return "A", 47.0, 47.0, 47.0 if t < 100 else 20.0
    trace = trace_of(tmp_path, lambda rec: record(rec, 300, {("CS1", 1): a,
                                                             ("CS1", 2): following("B", lambda t: 47.0)}))
    (f,) = only(trace, "REALLOCATE").findings
    # Freed from t=100; it has drawn less for the EV response time (10 s) by 110, so the deadline is 170.
    assert (f.t_start, f.t_end, f.evidence["deadline_t"], f.measured) == (100.0, 300.0, 170.0, 27.0)
    assert "A on CS1/1 drew 20.0 A of 47.0 A offered" in f.message


def test_an_ev_lagging_a_raised_offer_frees_nothing(tmp_path):
    # B's offer rises 20 → 60 A at t=100 and B follows 5 s later; A never has anything to give back.
    def b(t):
        offer = 20.0 if t < 100 else 60.0
        return "B", offer, offer, 20.0 if t < 105 else offer
    trace = trace_of(tmp_path, lambda rec: record(rec, 300, {("CS1", 1): following("A", lambda t: 20.0),
                                                             ("CS1", 2): b}))
    assert only(trace, "REALLOCATE").verdict == "pass"


def test_a_paused_ev_is_held_back_only_when_a_profile_paused_it(tmp_path):
    def paused(limit):
        def state(t):
            return "B", limit, 0.0, 0.0
        return state
    by_profile = trace_of(tmp_path, lambda rec: record(rec, 300, {
        ("CS1", 1): following("A", lambda t: 94.0, until=100), ("CS1", 2): paused(0.0)}))
    (f,) = only(by_profile, "REALLOCATE").findings
    assert f.measured == 94.0 and f.evidence["held"][0]["offered_a"] == 0.0
    # No profile limits it and nothing is offered: no transaction (or no power), nothing the controller holds back.
    no_transaction = trace_of(tmp_path, lambda rec: record(rec, 300, {
        ("CS1", 1): following("A", lambda t: 94.0, until=100), ("CS1", 2): paused(None)}), name="none.db")
    assert only(no_transaction, "REALLOCATE").verdict == "pass"


def test_not_judged_when_the_run_ends_first_or_the_breaker_is_open(tmp_path):
    short = trace_of(tmp_path, errata(n=150))
    assert only(short, "REALLOCATE").verdict == "pass"
    tripped = trace_of(tmp_path, lambda rec: record(
        rec, 300, {("CS1", 1): following("A", lambda t: 47.0, until=100), ("CS1", 2): following("B", lambda t: 47.0)},
        closed=lambda t: t < 100), name="tripped.db")
    assert only(tripped, "REALLOCATE").verdict == "pass"


def test_two_evs_leaving_together_are_one_moment(tmp_path):
    trace = trace_of(tmp_path, lambda rec: record(rec, 300, {
        ("CS1", 1): following("A", lambda t: 30.0, until=100), ("CS2", 1): following("C", lambda t: 30.0, until=100),
        ("CS1", 2): following("B", lambda t: 30.0)}))
    (f,) = only(trace, "REALLOCATE").findings
    assert f.evidence["freed_a"] == 60.0 and f.evidence["causes"] == ["A left CS1/1", "C left CS2/1"]
    assert f.measured == 60.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(delay=st.integers(min_value=0, max_value=150), reallocate=st.sampled_from([30.0, 60.0, 90.0]))
def test_it_fails_exactly_when_the_raise_comes_after_the_deadline(tmp_path, delay, reallocate):
    trace = trace_of(tmp_path, lambda rec: record(rec, 400, {
        ("CS1", 1): following("A", lambda t: 47.0, until=100),
        ("CS1", 2): following("B", lambda t: 47.0 if t < 100 + delay else 93.0)}),
        make_meta(reallocate_s=reallocate), name=f"d{delay}-{reallocate:g}.db")
    result = only(trace, "REALLOCATE")
    assert result.verdict == ("fail" if delay > reallocate else "pass")
    if result.findings:
        assert result.findings[0].t_end == 100.0 + delay


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.floats(min_value=20.0, max_value=500.0), kept=st.floats(min_value=0.0, max_value=1.0))
def test_a_share_of_the_freed_capacity_kept_back_fails_past_the_tolerances(tmp_path, limit, kept):
    # Two EVs at half the limit each; after A leaves, B gets the freed half except ``kept`` of it. B's EVSE allows
    # 630 A, so B stays held back throughout.
    half = limit / 2
    raised = half + half * (1 - kept)
    trace = trace_of(tmp_path, lambda rec: record(
        rec, 300, {("CS1", 1): following("A", lambda t: half, until=100),
                   ("CS1", 2): following("B", lambda t: half if t < 110 else raised)},
        limit=lambda t: limit), make_meta(limit_a=limit, station_max_a=630.0), name="kept.db")
    unused = half * kept
    expected = "fail" if unused > max(1.0, 0.1 * half) and unused > max(1.0, 0.1 * limit) else "pass"
    if abs(unused - max(1.0, 0.1 * half, 0.1 * limit)) > 1e-6:  # not on the boundary, where rounding decides
        assert only(trace, "REALLOCATE").verdict == expected


# -- DR-RESPONSE ----------------------------------------------------------------------------

def signalled(events, ev_draw, n=300, building=lambda t: 0.0, limit0=80.0, full_at=None):
    """A site whose limit follows ``events`` [(t, value_a)], recorded as the runner records them, with one EV on
    CS1/1 drawing ``ev_draw(t)``."""
    def limit(t):
        value = limit0
        for at, v in events:
            if at <= t:
                value = v
        return value

    def build(rec):
        for at, value in events:
            rec.event(float(at), "site_limit", None, {"value_a": value})
        if full_at is not None:
            rec.event(float(full_at), "vehicle_full", "CS1", {"ev": "A"})

        def a(t):
            return "A", limit(t), 32.0, ev_draw(t)
        record(rec, n, {("CS1", 1): a}, limit=limit, building=building)
    return build


def test_dr_lowered_limit_met_within_the_ramp_passes_and_late_fails_with_the_response_time(tmp_path):
    ok = trace_of(tmp_path, signalled([(100, 20.0)], lambda t: 32.0 if t < 106 else 16.0), make_meta(80.0))
    assert only(ok, "DR-RESPONSE").verdict == "pass"
    late = trace_of(tmp_path, signalled([(100, 20.0)], lambda t: 32.0 if t < 114 else 16.0), make_meta(80.0),
                    name="late.db")
    (f,) = only(late, "DR-RESPONSE").findings
    assert (f.t_start, f.t_end, f.measured, f.allowed, f.unit) == (100.0, 114.0, 14.0, 10.0, "s")
    assert f.message == ("site at 32.0 A > 20 A 10 s after the site limit was lowered from 80 to 20 A; at or below "
                         "it after 14 s (ramp 10 s)")
    assert f.evidence["response_s"] == 14.0 and f.evidence["judged"] == "site_current"
    assert f.evidence["samples"][0]["t"] == 110.0 and f.evidence["at_event"]["t"] == 100.0


def test_dr_never_met_while_the_limit_held(tmp_path):
    never = trace_of(tmp_path, signalled([(100, 20.0), (200, 80.0)], lambda t: 32.0), make_meta(80.0))
    (f,) = only(never, "DR-RESPONSE").findings
    assert (f.t_start, f.t_end, f.measured) == (100.0, 200.0, None)
    assert f.message.endswith("not within the 100 s the limit held (ramp 10 s)")


def test_dr_limit_zero_is_judged_on_power(tmp_path):
    off = trace_of(tmp_path, signalled([(100, 0.0)], lambda t: 32.0 if t < 104 else 0.0), make_meta(80.0))
    assert only(off, "DR-RESPONSE").verdict == "pass"
    # A trickle of 0.02 A is 13.8 W: not below 10 W.
    trickle = trace_of(tmp_path, signalled([(100, 0.0)], lambda t: 32.0 if t < 104 else 0.02), make_meta(80.0),
                       name="trickle.db")
    (f,) = only(trickle, "DR-RESPONSE").findings
    assert f.message.startswith("site at 14 W, not below 10 W, 10 s after the site limit was lowered from 80 to 0 A")
    assert f.evidence["judged"] == "site_power"
    # dr_zero_w is the scenario's to set.
    lenient = trace_of(tmp_path, signalled([(100, 0.0)], lambda t: 32.0 if t < 104 else 0.02),
                       make_meta(80.0, dr_zero_w=20.0), name="lenient.db")
    assert only(lenient, "DR-RESPONSE").verdict == "pass"


def test_dr_with_the_building_alone_over_the_level_only_the_evs_are_judged(tmp_path):
    def building(t):
        return 30.0
    evs_off = trace_of(tmp_path, signalled([(100, 20.0)], lambda t: 32.0 if t < 105 else 0.0, building=building),
                       make_meta(80.0))
    assert only(evs_off, "DR-RESPONSE").verdict == "pass"
    evs_on = trace_of(tmp_path, signalled([(100, 20.0)], lambda t: 32.0 if t < 105 else 6.0, building=building),
                      make_meta(80.0), name="on.db")
    (f,) = only(evs_on, "DR-RESPONSE").findings
    assert "the building alone draws 30.0 A > 20 A: only the EVs are judged" in f.message
    assert f.evidence["judged"] == "ev_power"


def test_dr_restored_limit_must_see_the_evs_draw_again(tmp_path):
    events = [(100, 0.0), (200, 80.0)]
    resumed = trace_of(tmp_path, signalled(events, lambda t: 0.0 if 103 <= t < 210 else 32.0), make_meta(80.0))
    assert only(resumed, "DR-RESPONSE").verdict == "pass"
    stuck = trace_of(tmp_path, signalled(events, lambda t: 0.0 if t >= 103 else 32.0), make_meta(80.0),
                     name="stuck.db")
    (f,) = only(stuck, "DR-RESPONSE").findings
    assert (f.t_start, f.t_end, f.measured, f.allowed) == (200.0, 300.0, None, 15.0)
    assert f.message == ("EVs at 0 W, not above 3000 W, 15 s after the site limit was raised from 0 to 80 A; not "
                         "within the 100 s the limit held (restore 15 s)")
    # A full car wants nothing; a restored limit the building fills leaves no room: neither is judged.
    full = trace_of(tmp_path, signalled(events, lambda t: 0.0 if t >= 103 else 32.0, full_at=150), make_meta(80.0),
                    name="full.db")
    assert only(full, "DR-RESPONSE").verdict == "pass"
    no_room = trace_of(tmp_path, signalled([(100, 0.0), (200, 12.0)], lambda t: 0.0 if t >= 103 else 32.0,
                                           building=lambda t: 10.0), make_meta(80.0), name="room.db")
    assert only(no_room, "DR-RESPONSE").verdict == "pass"


def test_dr_a_level_that_held_shorter_than_its_ramp_is_not_judged_and_bad_events_are_skipped(tmp_path):
    brief = trace_of(tmp_path, signalled([(100, 20.0), (105, 80.0)], lambda t: 32.0), make_meta(80.0))
    assert only(brief, "DR-RESPONSE").verdict == "pass"

    def bad(rec):
        rec.event(50.0, "site_limit")  # no value: not a limit
        rec.event(60.0, "site_limit", None, {"value_a": "low"})
        signalled([(100, 20.0)], lambda t: 32.0 if t < 104 else 16.0)(rec)
    assert only(trace_of(tmp_path, bad, make_meta(80.0), name="bad.db"), "DR-RESPONSE").verdict == "pass"


def test_dr_without_the_runs_limit_in_meta_reads_it_from_the_site_samples(tmp_path):
    meta = make_meta(80.0)
    del meta["site_limit_a"]
    (f,) = only(trace_of(tmp_path, signalled([(100, 20.0)], lambda t: 32.0), meta), "DR-RESPONSE").findings
    assert f.evidence["from_a"] == 80.0 and f.evidence["response_s"] is None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(delay=st.integers(min_value=1, max_value=40), ramp=st.sampled_from([2.0, 10.0, 20.0]))
def test_dr_fails_exactly_when_the_site_comes_down_after_the_ramp(tmp_path, delay, ramp):
    trace = trace_of(tmp_path, signalled([(100, 20.0)], lambda t: 32.0 if t < 100 + delay else 16.0),
                     make_meta(80.0, dr_ramp_s=ramp), name=f"d{delay}-{ramp:g}.db")
    result = only(trace, "DR-RESPONSE")
    assert result.verdict == ("fail" if delay > ramp else "pass")
    if result.findings:
        assert result.findings[0].measured == delay


# -- parameters -----------------------------------------------------------------------------

SCENARIO = """\
name = "{name}"
stations = [{{ id = "CS1", max_current_a = 100, connectors = 2 }}]
vehicles = [
  {{ id = "A", station = "CS1", connector = 1, arrival = "+10s", departure = "+10m", {car} }},
  {{ id = "B", station = "CS1", connector = 2, arrival = "+5m", departure = "+1h", {car} }},
]
{events}
[clock]
start = 2026-03-02T08:00:00Z
duration = "{duration}"
[site]
limit_a = 94
[site.breaker]
rating_a = 125
[checks]
{checks}
"""


def scenario(name="errata-2-46", events="", duration="15m", checks=""):
    car = "battery_kwh = 200, initial_soc = 0.2, target_soc = 0.9, max_current_a = 100"
    return parse_scenario(tomllib.loads(SCENARIO.format(name=name, events=events, duration=duration, checks=checks,
                                                        car=car)))


def test_checks_parameters_read_from_toml_with_their_aliases():
    checks = scenario(checks='reallocate = "90s"\ndr_ramp = "5s"\ndr_restore = "20s"\ndr_zero_w = 20\n'
                             "dr_restore_w = 1500").checks
    assert (checks.reallocate_s, checks.dr_ramp_s, checks.dr_restore_s, checks.dr_zero_w, checks.dr_restore_w) == (
        90.0, 5.0, 20.0, 20.0, 1500.0)
    defaults = scenario().checks
    assert (defaults.reallocate_s, defaults.dr_ramp_s, defaults.dr_restore_s, defaults.dr_zero_w,
            defaults.dr_restore_w) == (60.0, 10.0, 15.0, 10.0, 3000.0)
    with pytest.raises(ScenarioError, match="reallocate"):
        scenario(checks='reallocate = "-5s"')
    with pytest.raises(ScenarioError, match="dr_zero_w"):
        scenario(checks="dr_zero_w = 0")


# -- real runs ------------------------------------------------------------------------------

class ShareTheLimit(Controller):
    """The site limit split equally among the running sessions at every allocation, following the grid's limit: it
    reallocates when a car leaves. It reads no meter (the errata site has no other load)."""

    name = "share_the_limit"
    meter_poll_s = 0.0

    def __init__(self, site) -> None:
        super().__init__(site)
        self.limit_a = site.limit_a
        self.running: list[tuple[str, int]] = []

    def on_session_started(self, session, now: float) -> None:
        self.running.append((session.station_id, session.connector_id))

    def on_session_ended(self, session, energy_wh: float, now: float) -> None:
        self.running.remove((session.station_id, session.connector_id))

    def on_site_limit(self, limit_a: float, now: float) -> None:
        self.limit_a = limit_a

    def allocate(self, now: float):
        return {key: Limit(self.limit_a / len(self.running)) for key in self.running}


class NeverRaise(ShareTheLimit):
    """Cuts a car's share when another arrives but never raises it again: the capacity a leaving car frees stays
    unused (the errata's 47 A that should go back to 94 A)."""

    name = "never_raise"

    def __init__(self, site) -> None:
        super().__init__(site)
        self.given: dict[tuple[str, int], float] = {}

    def on_session_ended(self, session, energy_wh: float, now: float) -> None:
        super().on_session_ended(session, energy_wh, now)
        self.given.pop((session.station_id, session.connector_id), None)

    def allocate(self, now: float):
        for key, limit in super().allocate(now).items():
            self.given[key] = min(limit.limit_a, self.given.get(key, limit.limit_a))
        return {key: Limit(self.given[key]) for key in self.running}


class DeafToTheGrid(ShareTheLimit):
    """Never hears the grid's signals: it keeps sharing the limit it was configured with."""

    name = "deaf_to_the_grid"

    def on_site_limit(self, limit_a: float, now: float) -> None:
        pass


def offered(trace, connector, at):
    """CS1/``connector``'s offer at ``at`` [s] (its last sample before)."""
    return [s[2] for s in trace.stations[("CS1", connector)] if s[0] <= at][-1]


def test_errata_example_a_reallocating_controller_gives_b_94_a_again(tmp_path: Path) -> None:
    result = run_scenario(scenario(), f"{__name__}:ShareTheLimit", trace=tmp_path / "t.db")
    assert result.passed("REALLOCATE"), result.findings("REALLOCATE")
    trace = load_trace(tmp_path / "t.db")
    # A alone gets 94 A; B arrives at 5 min → 47/47 A; A leaves at 10 min → B back to 94 A.
    assert offered(trace, 1, 290) == 94.0
    assert offered(trace, 1, 590) == offered(trace, 2, 590) == 47.0
    assert offered(trace, 2, 600 + 60) == 94.0


def test_errata_example_a_controller_that_never_raises_fails(tmp_path: Path) -> None:
    result = run_scenario(scenario(), f"{__name__}:NeverRaise", trace=tmp_path / "t.db")
    (f,) = result.findings("REALLOCATE")
    assert (f.t_start, f.station, f.connector) == (600.0, "CS1", 2)
    assert f.t_end == 900.0  # still unused when the run ended
    assert f.measured == pytest.approx(47.0, abs=0.5)
    assert "A left CS1/1" in f.message and "CS1/2 at 47.0 A" in f.message


def test_errata_example_equal_share_passes(tmp_path: Path) -> None:
    result = run_scenario(scenario(), "equal_share", trace=tmp_path / "t.db")
    assert result.passed("REALLOCATE"), result.findings("REALLOCATE")


GRID_SIGNAL = """\
events = [
  { at = "+6m", kind = "site_limit", value_a = 0 },
  { at = "+8m", kind = "site_limit", value_a = 94 },
]"""


def test_a_grid_signal_to_zero_and_back_is_recorded_and_answered(tmp_path: Path) -> None:
    sc = scenario("grid-signal", GRID_SIGNAL, "10m")
    result = run_scenario(sc, f"{__name__}:ShareTheLimit", trace=tmp_path / "t.db")
    assert result.passed("DR-RESPONSE"), result.findings("DR-RESPONSE")
    trace = load_trace(tmp_path / "t.db")
    # The runner records the signal with its value, 0 included, and the site samples carry the limit.
    assert [(e["t"], e["detail"]) for e in trace.events if e["kind"] == "site_limit"] == [
        (360.0, {"value_a": 0.0}), (480.0, {"value_a": 94.0})]
    assert {s[4] for s in trace.site if 360 <= s[0] < 480} == {0.0}
    assert max(s[5] for s in trace.site if 370 <= s[0] < 480) < 10.0


def test_a_controller_deaf_to_the_grid_fails_dr_response(tmp_path: Path) -> None:
    result = run_scenario(scenario("grid-signal", GRID_SIGNAL, "10m"), f"{__name__}:DeafToTheGrid",
                          trace=tmp_path / "t.db")
    (f,) = result.findings("DR-RESPONSE")
    assert (f.t_start, f.t_end, f.measured) == (360.0, 480.0, None)
    assert f.message.startswith("site at ") and "lowered from 94 to 0 A; not within the 120 s" in f.message
