"""Checks, metrics and reports over synthetic traces written by the real Recorder."""

import json

import pytest

from bench.checks import CHECKS, Finding, metrics, run_checks
from bench.recorder import Recorder
from bench.report import judge, render_table, write_json
from bench.trace import load_trace

START = 1_700_000_000.0  # 2023-11-14T22:13:20Z: 800 s into a 15-minute billing interval


def make_meta(**overrides):
    meta = {
        "scenario": "unit", "scenario_path": "fixtures/scenarios/unit.toml", "controller": "test",
        "seed": 1, "start_epoch": START, "duration_s": 100.0, "step_s": 1.0, "voltage_v": 230.0,
        "phases": 3, "site_limit_a": 80.0, "breaker_rating_a": 100.0, "breaker_curve": "C",
        "checks": {"settle_s": 20.0, "station_response_s": 7.0, "overcurrent_ratio": 1.1,
                   "overcurrent_margin_a": 0.5, "min_current_a": 6.0, "site_tolerance_a": 0.0},
        "stations": [{"id": "CS1", "ocpp": "1.6", "connectors": 3, "max_current_a": 32.0,
                      "phases": 3, "rotation": "L1L2L3"}],
    }
    meta.update(overrides)
    return meta


def record(tmp_path, build, meta=None, name="run.db"):
    """Write a trace with ``build(recorder)`` and return its path."""
    path = tmp_path / name
    with Recorder(path, meta or make_meta()) as rec:
        build(rec)
    return path


def trace_of(tmp_path, build, meta=None):
    return load_trace(record(tmp_path, build, meta))


def site_run(currents, limit=lambda t: 80.0, closed=lambda t: True, n=100):
    """A builder recording ``n`` one-second site samples from functions of t."""
    def build(rec):
        for t in range(n):
            rec.site(float(t), currents(t), limit(t), 0.0, 0.0, closed(t))
    return build


def only(trace, check_id):
    (result,) = run_checks(trace, [check_id])
    return result


def test_catalogue_order_and_unknown_ids():
    assert list(CHECKS) == ["SITE-LIMIT", "BREAKER", "STATION-LIMIT", "MAX-PROFILE-SUM", "MIN-CURRENT",
                            "PROFILE-VALID", "TX-PROFILE-SCOPE", "PROFILE-UPDATE", "REALLOCATE", "NEEDS-ANSWERED",
                            "DR-RESPONSE", "OSCILLATION", "OFFLINE-SAFE"]
    with pytest.raises(KeyError, match="known: SITE-LIMIT"):
        run_checks(None, ["SITE-LIMIT", "NOPE"])


# -- SITE-LIMIT -----------------------------------------------------------------------------

def test_site_limit_short_excursion_passes(tmp_path):
    trace = trace_of(tmp_path, site_run(lambda t: (50.0, 96.4 if 30 <= t < 45 else 70.0, 60.0)))
    assert only(trace, "SITE-LIMIT").verdict == "pass"


def test_site_limit_long_excursion_fails(tmp_path):
    trace = trace_of(tmp_path, site_run(
        lambda t: (50.0, (96.4 if t == 50 else 90.0) if 30 <= t < 72 else 70.0, 60.0)))
    result = only(trace, "SITE-LIMIT")
    assert result.verdict == "fail"
    (f,) = result.findings
    assert (f.t_start, f.t_end, f.phase, f.measured, f.allowed) == (30.0, 72.0, "L2", 96.4, 80.0)
    assert f.message == "L2 at 96.4 A > 80.0 A for 42 s (settle 20 s)"
    assert f.evidence["samples"][0] == {"t": 30.0, "current_a": 90.0, "limit_a": 80.0}
    assert f.to_json(START)["window"] == ["2023-11-14T22:13:50.000Z", "2023-11-14T22:14:32.000Z"]


def test_site_limit_follows_limit_changes(tmp_path):
    # The limit drops 100 → 60 A at t=50; the controller brings the site down 15 s later.
    lowered = lambda t: 100.0 if t < 50 else 60.0
    ok = trace_of(tmp_path, site_run(lambda t: (90.0 if t < 65 else 55.0, 0.0, 0.0), lowered))
    assert only(ok, "SITE-LIMIT").verdict == "pass"
    # ... or never does: one finding from the drop to the end of the run.
    late = load_trace(record(tmp_path, site_run(lambda t: (90.0, 0.0, 0.0), lowered), name="late.db"))
    (f,) = only(late, "SITE-LIMIT").findings
    assert (f.t_start, f.t_end, f.measured, f.allowed) == (50.0, 100.0, 90.0, 60.0)
    # A raised limit ends an excursion: 20 s over is not *longer* than the 20 s settle time.
    raised = load_trace(record(tmp_path, site_run(lambda t: (70.0, 0.0, 0.0),
                                                  lambda t: 60.0 if t < 20 else 100.0), name="raised.db"))
    assert only(raised, "SITE-LIMIT").verdict == "pass"


def test_site_limit_phases_breaker_and_tolerance(tmp_path):
    # L1 over 0..15 s, L2 over 10..25 s: 25 s of *some* phase over, but each phase only 15 s.
    staggered = trace_of(tmp_path, site_run(
        lambda t: (90.0 if t < 15 else 0.0, 90.0 if 10 <= t < 25 else 0.0, 0.0)))
    assert only(staggered, "SITE-LIMIT").verdict == "pass"
    # Samples with the breaker open split an excursion rather than extend it.
    tripped = load_trace(record(tmp_path, site_run(
        lambda t: (90.0, 0.0, 0.0) if t < 40 else (0.0, 0.0, 0.0),
        closed=lambda t: not 15 <= t < 25), name="tripped.db"))
    assert only(tripped, "SITE-LIMIT").verdict == "pass"
    # Within the site tolerance is within the limit.
    meta = make_meta(checks={**make_meta()["checks"], "site_tolerance_a": 2.0})
    tolerated = load_trace(record(tmp_path, site_run(lambda t: (81.5, 0.0, 0.0)), meta, "tol.db"))
    assert only(tolerated, "SITE-LIMIT").verdict == "pass"


# -- BREAKER --------------------------------------------------------------------------------

def test_breaker_trip_is_a_finding(tmp_path):
    def build(rec):
        for t in range(100):
            rec.site(float(t), (130.0, 90.0, 80.0) if t < 40 else (0.0, 0.0, 0.0), 80.0,
                     0.0, 0.0, not 40 <= t < 60)
            if t == 40:
                rec.event(40.0, "breaker_trip", None,
                          {"currents_a": [130.0, 90.0, 80.0], "reason": "thermal overload"})
    (f,) = only(trace_of(tmp_path, build), "BREAKER").findings
    assert (f.t_start, f.t_end, f.phase, f.measured, f.allowed) == (40.0, 60.0, "L1", 130.0, 100.0)
    assert f.message == ("main breaker tripped: thermal overload; 130.0/90.0/80.0 A; "
                         "rating 100 A; open 20 s")
    assert f.evidence == {"event": {"currents_a": [130.0, 90.0, 80.0], "reason": "thermal overload"}}


def test_breaker_that_stays_open_or_never_shows_open(tmp_path):
    def build(rec):
        for t in range(50):
            rec.site(float(t), (0.0, 0.0, 0.0), 80.0, 0.0, 0.0, t < 30)
        rec.event(30.0, "breaker_trip", None, {"reason": "magnetic"})
        rec.event(10.0, "breaker_trip", None, {})  # samples never show this one open
    later, earlier = sorted(only(trace_of(tmp_path, build), "BREAKER").findings,
                            key=lambda f: -f.t_start)
    assert (later.t_start, later.t_end, later.measured) == (30.0, 50.0, None)
    assert later.message == "main breaker tripped: magnetic; rating 100 A; open 20 s"
    assert (earlier.t_start, earlier.t_end) == (10.0, 10.0)


def test_no_trip_passes(tmp_path):
    assert only(trace_of(tmp_path, site_run(lambda t: (10.0, 10.0, 10.0))), "BREAKER").verdict == "pass"


# -- STATION-LIMIT ----------------------------------------------------------------------------

def test_station_limit_allows_the_ev_response_time(tmp_path):
    # The limit drops 32 → 16 A at t=20. Connector 1's EV follows 4 s later (within 7 s);
    # connector 2's never does; connector 3 has no profile and draws 40 A > 32 A hardware;
    # connector 4 draws 34 A, within 110 % + 0.5 A of its 32 A hardware max.
    def build(rec):
        for t in range(60):
            limit = 32.0 if t < 20 else 16.0
            follows = 32.0 if t < 24 else 16.0
            rec.station(float(t), "CS1", 1, limit, limit, (follows, follows, follows), 0.0, 0.0, None, "EV1")
            rec.station(float(t), "CS1", 2, limit, limit, (0.0, 32.0, 0.0), 0.0, 0.0, None, "EV2")
            if t >= 30:
                rec.station(float(t), "CS1", 3, None, 32.0, (40.0, 40.0, 40.0), 0.0, 0.0, None, "EV3")
            rec.station(float(t), "CS1", 4, None, 32.0, (34.0, 34.0, 34.0), 0.0, 0.0, None, "EV4")
            rec.station(float(t), "CS9", 1, None, 32.0, (99.0, 0.0, 0.0), 0.0, 0.0, None, "EV9")  # no hardware figure
    result = only(trace_of(tmp_path, build), "STATION-LIMIT")
    assert result.verdict == "fail"
    never, hardware = result.findings
    assert (never.station, never.connector, never.phase) == ("CS1", 2, "L2")
    assert (never.t_start, never.t_end, never.measured, never.allowed) == (20.0, 60.0, 32.0, 16.0)
    assert never.message == ("CS1/2 L2 at 32.0 A > 16.0 A profile limit for 40 s "
                             "(response 7 s, tolerance 10 % + 0.5 A)")
    assert never.evidence["threshold_a"] == 18.1
    assert (hardware.connector, hardware.t_start, hardware.t_end) == (3, 30.0, 60.0)
    assert (hardware.measured, hardware.allowed, hardware.evidence["bound"]) == (40.0, 32.0, "hardware max")


# -- MIN-CURRENT ----------------------------------------------------------------------------

def set_profile(unit, *limits, phases=None):
    periods = [{"startPeriod": 60 * i, "limit": limit, **({"numberPhases": phases} if phases else {})}
               for i, limit in enumerate(limits)]
    return {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {"chargingRateUnit": unit, "chargingSchedulePeriod": periods}}}


def call(uid, action, payload):
    return json.dumps([2, uid, action, payload])


def test_min_current_in_amps_and_watts(tmp_path):
    frames = [
        ("to_station", call("1", "SetChargingProfile", set_profile("A", 16, 4, 0))),   # fails at 4 A
        ("to_station", call("2", "SetChargingProfile", set_profile("A", 0))),
        ("to_station", call("3", "SetChargingProfile", set_profile("A", 6))),
        ("to_station", call("4", "SetChargingProfile", set_profile("W", 1380, phases=1))),  # = 6 A
        ("to_station", call("5", "SetChargingProfile", set_profile("W", 900))),         # 1.30 A, 3 phases
        ("to_station", call("6", "RemoteStartTransaction", {
            "idTag": "T", "chargingProfile": set_profile("A", 5)["csChargingProfiles"]})),
        ("to_station", call("7", "SetChargingProfile", {"evseId": 2, "chargingProfile": {  # 2.0.1 shape
            "chargingSchedule": [{"chargingRateUnit": "A",
                                  "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 3.0}]}]}})),
        ("from_station", call("8", "SetChargingProfile", set_profile("A", 4))),  # not from the controller
    ]
    def build(rec):
        for i, (direction, raw) in enumerate(frames):
            rec.message(float(i), "CS1", direction, raw)
    result = only(trace_of(tmp_path, build), "MIN-CURRENT")
    assert [f.t_start for f in result.findings] == [0.0, 4.0, 5.0, 6.0]
    four, watts, remote, v201 = result.findings
    assert (four.measured, four.allowed, four.connector) == (4, 6.0, 1)
    assert four.message == "SetChargingProfile to CS1/1: limit 4 A per phase, in (0, 6) A"
    assert four.evidence == {"message": frames[0][1]}
    assert watts.measured == 1.304
    assert watts.message == ("SetChargingProfile to CS1/1: limit 900 W / (230 V x 3) = 1.30 A "
                             "per phase, in (0, 6) A")
    assert remote.measured == 5 and remote.station == "CS1"
    assert (v201.measured, v201.connector) == (3.0, 2)


def test_min_current_tolerates_malformed_frames_and_profiles(tmp_path):
    garbage = [
        '[2,"1","SetChargingProfile",',                               # not JSON
        '[2,"2","SetChargingProfile"]',                               # no payload
        call("3", "SetChargingProfile", {"csChargingProfiles": "nonsense"}),
        call("4", "SetChargingProfile", {"csChargingProfiles": {"chargingSchedule": None}}),
        call("5", "SetChargingProfile", set_profile("kW", 4)),
        call("6", "SetChargingProfile", set_profile("A", "4")),
        call("7", "SetChargingProfile", set_profile("W", 900, phases=7)),
        call("8", "SetChargingProfile", set_profile("A", True)),
        call("9", "SetChargingProfile", {"csChargingProfiles": {"chargingSchedule": {
            "chargingRateUnit": "A", "chargingSchedulePeriod": [None, 7, {"limit": None}]}}}),
        call("10", "RemoteStartTransaction", {"chargingProfile": [1, 2]}),
    ]
    def build(rec):
        for i, raw in enumerate(garbage):
            rec.message(float(i), "CS1", "to_station", raw)
    trace = trace_of(tmp_path, build)
    assert [m["kind"] for m in trace.messages[:2]] == ["malformed", "malformed"]
    assert only(trace, "MIN-CURRENT").verdict == "pass"


# -- metrics --------------------------------------------------------------------------------

def test_peak_15min_is_aligned_to_the_wall_clock_quarter_hour(tmp_path):
    # Quarter hours start at t = 100, 1000, 1900 (START is 800 s into one). Samples every 50 s:
    #   [-800, 100):  t=0, 50                 10 kW            → 10 kW (partial: its 2 samples)
    #   [100, 1000):  9 × 30 kW then 9 × 60 kW                 → 45 kW  ← peak
    #   [1000, 1900): 2 × 60 kW then 16 × 10 kW                → 15.6 kW
    # A window aligned to the run's start instead, [0, 900), would give 39.444 kW.
    def power_kw(t):
        if t < 100:
            return 10.0
        if t < 1000:
            return 30.0 if t < 550 else 60.0
        return 60.0 if t < 1100 else 10.0
    def build(rec):
        for t in range(0, 1900, 50):
            rec.site(float(t), (10.0, 20.0, 30.0), 80.0, power_kw(t) * 1000.0, 0.0, True)
    m = metrics(trace_of(tmp_path, build))
    assert m["peak_15min_kw"] == 45.0
    assert m["peak_site_current_a"] == 30.0 and m["site_limit_at_peak_a"] == 80.0


def test_peak_15min_of_a_partial_interval_averages_its_samples(tmp_path):
    def build(rec):
        for t, kw in ((0, 10.0), (50, 20.0)):
            rec.site(float(t), (0.0, 0.0, 0.0), 80.0, kw * 1000.0, 0.0, True)
    assert metrics(trace_of(tmp_path, build))["peak_15min_kw"] == 15.0


def test_energy_metrics(tmp_path):
    def build(rec):
        rec.vehicle("EV1", "CS1", 1, 0.0, 3600.0, 20.0, 9.8, 10.0)    # 98 % of deliverable: short
        rec.vehicle("EV2", "CS1", 2, 0.0, 3600.0, 10.0, 9.95, 10.0)   # 99.5 %: not short
        rec.vehicle("EV3", "CS1", 3, 0.0, 3600.0, 5.0, 0.0, 0.0)      # nothing deliverable
        # EV4 never left (the run crashed): its energy comes from its last station sample.
        for t, kwh in ((0.0, 0.0), (1.0, 1.2), (2.0, 2.5)):
            rec.station(t, "CS1", 4, None, 32.0, (16.0, 16.0, 16.0), 11000.0, kwh, 0.5, "EV4")
        rec.station(0.0, "CS1", 1, None, 32.0, (16.0, 16.0, 16.0), 11000.0, 99.0, 0.5, "EV1")
        rec.event(1.0, "breaker_trip", None, {})
        rec.message(1.0, "CS1", "from_station", '[2,"1","Heartbeat",{}]')
    m = metrics(trace_of(tmp_path, build))
    assert m == {"energy_delivered_kwh": 22.25, "energy_requested_kwh": 35.0,
                 "energy_deliverable_kwh": 20.0, "peak_site_current_a": 0.0,
                 "site_limit_at_peak_a": None, "peak_15min_kw": 0.0, "breaker_trips": 1,
                 "vehicles_short": 1, "messages": 1,
                 "fairness_jain": 0.598}  # Jain over 9.8/20, 9.95/10 and 0/5 of the requested energy


def test_energy_from_samples_when_no_vehicle_rows(tmp_path):
    def build(rec):
        for t in range(3):
            rec.station(float(t), "CS1", 1, None, 32.0, (0.0, 0.0, 0.0), 0.0, 0.5 * t, None, "EV1")
            rec.station(float(t), "CS1", 2, None, 32.0, (0.0, 0.0, 0.0), 0.0, 0.25 * t, None, "EV2")
            rec.station(float(t), "CS1", 3, None, 32.0, (0.0, 0.0, 0.0), 0.0, 0.0, None, None)
    assert metrics(trace_of(tmp_path, build))["energy_delivered_kwh"] == 1.5


# -- report ---------------------------------------------------------------------------------

def failing_run(rec):
    for t in range(100):
        rec.site(float(t), (50.0, 90.0 if 30 <= t < 72 else 70.0, 60.0), 80.0, 46000.0, 0.0, True)
    for i, limit in enumerate((4, 3, 2, 1)):
        rec.message(10.0 + i, "CS1", "to_station", call(str(i), "SetChargingProfile", set_profile("A", limit)))
    rec.vehicle("EV1", "CS1", 1, 0.0, 100.0, 20.0, 15.0, 16.0)


def test_report_json_and_table(tmp_path):
    path = record(tmp_path, failing_run)
    result = judge(path)
    assert (result.scenario, result.controller, result.verdict) == ("unit", "test", "fail")
    assert not result.passed("SITE-LIMIT") and result.passed("BREAKER")
    with pytest.raises(KeyError, match="known: SITE-LIMIT, BREAKER"):
        result.passed("NOPE")
    assert len(result.findings()) == 5 and len(result.findings("MIN-CURRENT")) == 4
    assert all(isinstance(f, Finding) for f in result.findings())

    doc = result.to_json()
    assert {"scenario", "controller", "verdict", "checks", "metrics", "trace"} <= set(doc)
    assert [c["id"] for c in doc["checks"]] == list(CHECKS)
    assert all({"id", "verdict", "findings"} <= set(c) for c in doc["checks"])
    assert doc["checks"][0]["findings"][0]["window"] == ["2023-11-14T22:13:50.000Z", "2023-11-14T22:14:32.000Z"]
    out = tmp_path / "result.json"
    write_json(result, out)
    assert json.loads(out.read_text()) == doc

    table = render_table(result)
    assert "\x1b" not in table
    lines = table.splitlines()
    assert lines[0] == "scenario: unit  controller: test  verdict: FAIL"
    assert lines[1] == "CHECK             LAYER     VERDICT  FINDINGS"
    assert lines[2] == "SITE-LIMIT        measured  FAIL            1"
    assert lines[3] == "    +00:00:30  L2 at 90.0 A > 80.0 A for 42 s (settle 20 s)"
    assert lines[4] == "BREAKER           measured  PASS            0"
    assert "    ... 1 more" in lines
    assert "energy delivered   15.000 kWh of 20.000 kWh requested (75.0 %)" in lines
    assert "peak site current  90.0 A (limit 80.0 A)" in lines
    assert "peak 15-min power  46.000 kW" in lines
    assert "EVs short          1" in lines
    assert lines[-1] == f"trace: {path}"
    assert judge(path, scenario="renamed", controller="other").to_json()["scenario"] == "renamed"


def test_checks_are_pure(tmp_path):
    trace = load_trace(record(tmp_path, failing_run))
    assert run_checks(trace) == run_checks(trace)
    assert metrics(trace) == metrics(trace)
