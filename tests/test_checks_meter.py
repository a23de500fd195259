"""OSCILLATION and OFFLINE-SAFE over traces written by the real Recorder: flapping limits, meter faults and a
lost controller link, and the meter reads the trace keeps of them."""

import json
import sqlite3

import pytest
from hand_traces import only, recorded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.checks import CHECKS, run_checks
from bench.recorder import Recorder
from bench.scenario import Checks
from bench.trace import load_trace

START = 1_700_000_000.0
T0 = "2023-11-14T22:13:20Z"  # START as RFC 3339
HOUR = 3600.0


def make_meta(duration_s=HOUR, version="1.6", **checks):
    return {
        "scenario": "unit", "controller": "test", "start_epoch": START, "duration_s": duration_s, "step_s": 1.0,
        "voltage_v": 230.0, "site_limit_a": 80.0,
        "checks": {"settle_s": 20.0, "station_response_s": 10.0, "site_tolerance_a": 0.5, **checks},
        "stations": [{"id": "CS1", "ocpp": version, "connectors": 2, "max_current_a": 32.0, "phases": 3,
                      "rotation": "L1L2L3"},
                     {"id": "CS2", "ocpp": version, "connectors": 1, "max_current_a": 32.0, "phases": 3,
                      "rotation": "L1L2L3"}],
    }


def trace_of(tmp_path, build, meta=None, name="run.db"):
    return recorded(tmp_path, build, meta or make_meta(), name)


def limits(rec, limit_at, n, station="CS1", connector=1, ev=lambda t: "EV1"):
    """``n`` one-second samples of one connector whose applied limit is ``limit_at(t)``."""
    for t in range(n):
        limit = limit_at(t)
        rec.station(float(t), station, connector, limit, limit or 0.0, (min(limit or 0.0, 16.0),) * 3,
                    0.0, 0.0, None, ev(t))


def flapping(t):
    """±8 A around 20 A, the direction turning every 10–20 s: a loop faster than its meter."""
    return 28.0 if (t // 10) % 3 == 0 else 12.0


def well_behaved(t):
    """Limits an equal-share controller gives over a working day: a step at each arrival or departure (every 15
    minutes here) and a ramp of a few steps after it."""
    base = 32.0 - 2.0 * ((t // 900) % 8)
    since = t % 900
    return base - (3.0 if since < 20 else 1.5 if since < 40 else 0.0)


def test_both_checks_are_registered_in_catalogue_order():
    ids = list(CHECKS)
    assert ids.index("NEEDS-ANSWERED") < ids.index("OSCILLATION") < ids.index("OFFLINE-SAFE")


# -- OSCILLATION ----------------------------------------------------------------------------

def test_a_flapping_limit_fails_with_its_changes_as_evidence(tmp_path):
    trace = trace_of(tmp_path, lambda rec: limits(rec, flapping, 7200), make_meta(2 * HOUR))
    result = only(trace, "OSCILLATION")
    assert result.verdict == "fail"
    (f,) = result.findings
    assert (f.station, f.connector, f.unit, f.allowed) == ("CS1", 1, "changes/h", 60.0)
    # A change at every 10 s boundary but one in three: 240 in an hour.
    assert f.measured == 240.0
    assert f.evidence["changes"] == 479  # the whole burst: every change of the run but the first
    assert f.evidence["reversals"] == f.evidence["changes"] - 1  # each one turns back the one before
    assert f.evidence["first_changes"][:3] == [{"t": 10.0, "from_a": 28.0, "to_a": 12.0},
                                               {"t": 30.0, "from_a": 12.0, "to_a": 28.0},
                                               {"t": 40.0, "from_a": 28.0, "to_a": 12.0}]
    assert (f.t_start, f.t_end) == (10.0, 7180.0)
    assert f.message.startswith("CS1/1 limit changed 240 times within an hour (bound 60")


def test_a_well_behaved_limit_passes(tmp_path):
    trace = trace_of(tmp_path, lambda rec: limits(rec, well_behaved, 12 * 3600), make_meta(12 * HOUR))
    assert only(trace, "OSCILLATION").verdict == "pass"


def test_the_bound_is_per_rolling_hour(tmp_path):
    def changes_at(times):
        def build(rec):
            level = 10.0
            times_left = sorted(times)
            for t in range(int(max(times)) + 2):
                while times_left and times_left[0] <= t:
                    times_left.pop(0)
                    level = 20.0 if level == 10.0 else 10.0
                rec.station(float(t), "CS1", 1, level, level, (level,) * 3, 0.0, 0.0, None, "EV1")
        return build

    sixty = [1 + 60 * k for k in range(60)]  # one a minute: at the bound
    assert only(trace_of(tmp_path, changes_at(sixty), name="60.db"), "OSCILLATION").verdict == "pass"
    # 61 changes within 3599 s are one too many ...
    crowded = [1 + 59.98 * k for k in range(61)]
    (f,) = only(trace_of(tmp_path, changes_at([round(t) for t in crowded]), name="61.db"), "OSCILLATION").findings
    assert f.measured == 61.0
    # ... while 61 changes whose first and last are a full hour apart are not.
    spread = [1 + 60 * k for k in range(61)]
    assert only(trace_of(tmp_path, changes_at(spread), name="spread.db"), "OSCILLATION").verdict == "pass"
    # A burst straddling a clock hour is caught whole: 40 changes before 1 h and 40 after.
    straddling = [3000 + 15 * k for k in range(80)]
    (f,) = only(trace_of(tmp_path, changes_at(straddling), name="straddle.db"), "OSCILLATION").findings
    assert (f.measured, f.t_start, f.t_end) == (80.0, 3000.0, 3000.0 + 15 * 79)


def test_separate_bursts_are_separate_findings(tmp_path):
    def burst_twice(t):
        return flapping(t) if t < 1200 or 6000 <= t < 7200 else 20.0
    trace = trace_of(tmp_path, lambda rec: limits(rec, burst_twice, 8000), make_meta(8000.0))
    first, second = only(trace, "OSCILLATION").findings
    assert first.t_end < 6000.0 <= second.t_start


def test_jitter_below_the_step_is_no_change_and_a_drift_counts_per_step(tmp_path):
    jitter = trace_of(tmp_path, lambda rec: limits(rec, lambda t: 20.0 + (0.4 if t % 2 else -0.4), 3600),
                      name="jitter.db")
    assert only(jitter, "OSCILLATION").verdict == "pass"
    # A drift of 0.05 A/s moves 180 A in an hour: 180 changes of 1 A, none of them a reversal.
    drift = trace_of(tmp_path, lambda rec: limits(rec, lambda t: 200.0 - 0.05 * t, 3600), name="drift.db")
    (f,) = only(drift, "OSCILLATION").findings
    assert 175 <= f.measured <= 180 and f.evidence["reversals"] == 0
    # The step is a parameter: with 5 A steps the same drift is 36 changes.
    coarse = load_trace(tmp_path / "drift.db")
    coarse.meta["checks"]["oscillation_min_step_a"] = 5.0
    assert only(coarse, "OSCILLATION").verdict == "pass"
    coarse.meta["checks"]["max_limit_changes_per_hour"] = 30
    assert only(coarse, "OSCILLATION").verdict == "fail"


def test_the_scenario_sets_the_bound(tmp_path):
    # [checks] max_limit_changes_per_hour = 300, as the runner stores a scenario's checks in the trace's meta.
    meta = {**make_meta(), "checks": Checks.model_validate({"max_limit_changes_per_hour": 300}).model_dump()}
    assert only(trace_of(tmp_path, lambda rec: limits(rec, flapping, 3600), meta), "OSCILLATION").verdict == "pass"
    with pytest.raises(ValueError, match="max_limit_changes_per_hour"):
        Checks.model_validate({"max_limit_changes_per_hour": 0})


def test_a_new_session_is_no_change_but_a_profile_coming_and_going_is(tmp_path):
    # 120 EVs one after another, each with its own limit: not one change.
    sessions = trace_of(tmp_path, lambda rec: limits(rec, lambda t: 6.0 + (t // 30) % 2 * 10, 3600,
                                                     ev=lambda t: f"EV{t // 30}"), name="sessions.db")
    assert only(sessions, "OSCILLATION").verdict == "pass"
    # A profile cleared and set again every 20 s: 180 changes in the hour.
    cleared = trace_of(tmp_path, lambda rec: limits(rec, lambda t: None if (t // 20) % 2 else 16.0, 3600),
                       name="cleared.db")
    (f,) = only(cleared, "OSCILLATION").findings
    assert f.measured == 179.0 and f.evidence["first_changes"][0] == {"t": 20.0, "from_a": 16.0, "to_a": None}


def test_connectors_are_judged_apart_and_the_meter_configuration_is_quoted(tmp_path):
    meter = {"model": "sdm630", "update_interval_s": 10.0, "delay_s": 2.0, "noise": 0.0, "ct_ratio": None,
             "transport": "tcp"}

    def build(rec):
        rec.event(0.0, "meter_config", None, meter)
        limits(rec, flapping, 3600, connector=1)
        limits(rec, well_behaved, 3600, connector=2)
        limits(rec, well_behaved, 3600, station="CS2")
    (f,) = only(trace_of(tmp_path, build), "OSCILLATION").findings
    assert (f.station, f.connector) == ("CS1", 1)
    assert f.evidence["meter"] == meter


# -- OFFLINE-SAFE: meter faults -------------------------------------------------------------

def site(rec, current_at, n=600, limit=80.0):
    for t in range(n):
        rec.site(float(t), current_at(t), limit, 0.0, 0.0, True)


def test_a_meter_fault_the_site_rides_out_passes(tmp_path):
    def build(rec):
        rec.event(100.0, "meter_fault", None, {"fault": "unreachable", "unit": 1})
        site(rec, lambda t: (78.0, 60.0, 60.0))
        rec.event(400.0, "meter_restored", None, {"unit": 1})
    assert only(trace_of(tmp_path, build), "OFFLINE-SAFE").verdict == "pass"


def test_an_excursion_during_a_meter_fault_names_the_fault_and_what_the_controller_read(tmp_path):
    def build(rec):
        rec.event(100.0, "meter_fault", None, {"fault": "frozen", "unit": 1})
        site(rec, lambda t: (95.0 if 150 <= t < 300 else 70.0, 60.0, 60.0))
        for t in range(0, 600, 10):  # the controller polls every 10 s; frozen values grow old
            outcome, age = ("frozen", t - 100.0) if 100 <= t < 400 else ("ok", 0.5)
            rec.meter_read(float(t), 1, 4, 0, 80, outcome, age)
        rec.meter_read(150.0, 7, 4, 0, 80, "no_device", None)  # another unit: not this fault's
        rec.event(400.0, "meter_restored", None, {"unit": 1})
    result = only(trace_of(tmp_path, build), "OFFLINE-SAFE")
    (f,) = result.findings
    assert (f.t_start, f.t_end, f.phase, f.measured, f.allowed) == (150.0, 300.0, "L1", 95.0, 80.0)
    assert f.message == "L1 at 95.0 A > 80.0 A for 150 s while site meter (unit 1) frozen (settle 20 s)"
    assert f.evidence["outages"] == [{"kind": "meter", "start": 100.0, "end": 400.0, "station": None,
                                      "unit": 1, "fault": "frozen"}]
    # From the fault to the end of the excursion: 20 polls served frozen values, up to 190 s old.
    assert f.evidence["meter_reads"] == {"frozen": 20}
    assert f.evidence["oldest_value_served_s"] == 190.0


def test_only_the_part_inside_the_window_counts(tmp_path):
    # Over the limit from 50 s to 130 s; the meter fails at 120 s: 10 s of it in the window, under the settle time.
    def build(rec):
        rec.event(120.0, "meter_fault", None, {"fault": "garbage", "unit": 1})
        site(rec, lambda t: (95.0 if 50 <= t < 130 else 70.0, 0.0, 0.0))
        rec.event(500.0, "meter_restored", None, {"unit": 1})
    trace = trace_of(tmp_path, build)
    assert only(trace, "OFFLINE-SAFE").verdict == "pass"
    assert only(trace, "SITE-LIMIT").verdict == "fail"  # the excursion itself is SITE-LIMIT's
    # An excursion that starts inside and outlasts the window ends, for this check, at the restore.
    def late(rec):
        rec.event(100.0, "meter_fault", None, {"fault": "slow", "unit": 1})
        site(rec, lambda t: (95.0 if t >= 350 else 70.0, 0.0, 0.0))
        rec.event(400.0, "meter_restored", None, {"unit": 1})
    (f,) = only(trace_of(tmp_path, late, name="late.db"), "OFFLINE-SAFE").findings
    assert (f.t_start, f.t_end) == (350.0, 400.0)


def test_an_unrestored_fault_lasts_to_the_end_and_a_changed_fault_continues_the_window(tmp_path):
    def build(rec):
        rec.event(100.0, "meter_fault", None, {"fault": "frozen", "unit": 1})
        rec.event(200.0, "meter_fault", None, {"fault": "garbage", "unit": 1})
        site(rec, lambda t: (90.0 if 190 <= t else 70.0, 0.0, 0.0))
    (f,) = only(trace_of(tmp_path, build), "OFFLINE-SAFE").findings
    assert (f.t_start, f.t_end) == (190.0, 600.0)
    assert [o["fault"] for o in f.evidence["outages"]] == ["frozen", "garbage"]
    assert [(o["start"], o["end"]) for o in f.evidence["outages"]] == [(100.0, 200.0), (200.0, 600.0)]
    assert "site meter (unit 1) frozen; site meter (unit 1) garbage" in f.message


def test_a_restore_ends_only_its_own_meter(tmp_path):
    def build(rec):
        rec.event(100.0, "meter_fault", "CS1", {"fault": "unreachable", "unit": 2})
        rec.event(120.0, "meter_fault", None, {"fault": "word_order", "unit": 1})
        rec.event(150.0, "meter_restored", None, {"unit": 1})
        site(rec, lambda t: (90.0 if 200 <= t < 260 or 450 <= t < 500 else 70.0, 0.0, 0.0))
        rec.event(300.0, "meter_restored", "CS1", {})  # no unit: the restore names its meter by station
        rec.event(400.0, "meter_fault", None, {"fault": "frozen", "unit": 1})
        rec.event(405.0, "meter_restored", "CS1", {"unit": 2})  # not the site meter's restore
    sub, frozen = only(trace_of(tmp_path, build), "OFFLINE-SAFE").findings
    assert (sub.t_start, sub.t_end) == (200.0, 260.0)
    # Named: the sub-meter's fault, in force then; not the site meter's, over by 150 s.
    assert sub.message.endswith("while sub-meter of CS1 (unit 2) unreachable (settle 20 s)")
    assert (frozen.t_start, frozen.t_end) == (450.0, 500.0)
    assert frozen.message.endswith("while site meter (unit 1) frozen (settle 20 s)")


def test_no_outage_no_verdict_to_give(tmp_path):
    trace = trace_of(tmp_path, lambda rec: site(rec, lambda t: (120.0, 0.0, 0.0)))
    assert only(trace, "OFFLINE-SAFE").verdict == "pass"


# -- OFFLINE-SAFE: the controller link ------------------------------------------------------

class Wire:
    """One station's OCPP-J conversation, written frame by frame, each call answered at once."""

    def __init__(self, rec, station="CS1"):
        self.rec, self.station, self.n = rec, station, 0

    def call(self, t, action, payload, answer, direction="to_station"):
        self.n += 1
        uid = str(self.n)
        back = "from_station" if direction == "to_station" else "to_station"
        self.rec.message(t, self.station, direction, json.dumps([2, uid, action, payload]))
        self.rec.message(t, self.station, back, json.dumps([3, uid, answer]))


def profile16(id, purpose, limit, tx=None, kind="Absolute"):
    schedule = {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}
    if kind == "Absolute":
        schedule["startSchedule"] = T0
    profile = {"chargingProfileId": id, "stackLevel": 0 if purpose != "TxProfile" else 1,
               "chargingProfilePurpose": purpose, "chargingProfileKind": kind, "chargingSchedule": schedule}
    return profile if tx is None else {**profile, "transactionId": tx}


def profile201(id, purpose, limit, tx=None):
    schedule = {"id": id, "chargingRateUnit": "A", "startSchedule": T0,
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}
    profile = {"id": id, "stackLevel": 0 if purpose != "TxProfile" else 1, "chargingProfilePurpose": purpose,
               "chargingProfileKind": "Absolute", "chargingSchedule": [schedule]}
    return profile if tx is None else {**profile, "transactionId": tx}


def session16(rec, station="CS1", failsafe=10.0, tx_limit=20.0):
    """A 1.6 station with a TxDefault failsafe and a running transaction limited by a TxProfile."""
    wire = Wire(rec, station)
    wire.call(1.0, "SetChargingProfile", {"connectorId": 0, "csChargingProfiles": profile16(1, "TxDefaultProfile",
                                                                                            failsafe)},
              {"status": "Accepted"})
    wire.call(5.0, "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": T0},
              {"transactionId": 7, "idTagInfo": {"status": "Accepted"}}, direction="from_station")
    wire.call(6.0, "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": profile16(101, "TxProfile",
                                                                                            tx_limit, tx=7)},
              {"status": "Accepted"})


def applied(rec, limit_at, station="CS1", n=400):
    for t in range(n):
        rec.station(float(t), station, 1, limit_at(t), limit_at(t), (8.0, 8.0, 8.0), 0.0, 0.0, None, "EV1")


def test_a_station_that_falls_back_in_time_passes(tmp_path):
    def build(rec):
        session16(rec)
        rec.event(100.0, "controller_link_lost", None, {})
        applied(rec, lambda t: 20.0 if t < 105 else 10.0)
        site(rec, lambda t: (40.0, 40.0, 40.0), n=400)
        rec.event(300.0, "controller_link_restored", None, {})
    assert only(trace_of(tmp_path, build), "OFFLINE-SAFE").verdict == "pass"


def test_a_station_that_keeps_its_tx_profile_fails_until_the_link_returns(tmp_path):
    def build(rec):
        session16(rec)
        rec.event(100.0, "controller_link_lost", None, {})
        applied(rec, lambda t: 20.0)
        rec.event(300.0, "controller_link_restored", None, {})
    (f,) = only(trace_of(tmp_path, build), "OFFLINE-SAFE").findings
    assert (f.station, f.connector, f.measured, f.allowed) == ("CS1", 1, 20.0, 10.0)
    assert (f.t_start, f.t_end) == (110.0, 300.0)
    assert f.message == ("CS1/1 at limit 20 A, not its failsafe 10 A, 10 s after the controller link to every "
                         "station lost (response 10 s)")
    assert f.evidence["samples"][0] == {"t": 110.0, "limit_a": 20.0, "failsafe_a": 10.0}


def test_no_limit_at_all_is_not_the_failsafe_and_a_lost_link_threatens_the_site(tmp_path):
    def build(rec):
        session16(rec)
        rec.event(100.0, "controller_link_lost", "CS1", {})
        applied(rec, lambda t: 20.0 if t < 100 else None)
        site(rec, lambda t: (70.0 if t < 100 else 100.0, 0.0, 0.0), n=400)
    findings = only(trace_of(tmp_path, build), "OFFLINE-SAFE").findings
    station, phase = sorted(findings, key=lambda f: f.phase is not None)
    assert station.measured is None and station.message.startswith("CS1/1 at no limit, not its failsafe 10 A")
    assert station.t_end == 400.0  # never restored: to the end of the run
    assert (phase.phase, phase.t_start, phase.t_end) == ("L1", 100.0, 400.0)
    assert "while the controller link to CS1 lost" in phase.message


def test_a_link_lost_to_one_station_judges_only_that_station(tmp_path):
    def build(rec):
        session16(rec, "CS1")
        session16(rec, "CS2")
        rec.event(100.0, "controller_link_lost", "CS2", {})
        applied(rec, lambda t: 20.0, station="CS1")
        applied(rec, lambda t: 20.0 if t < 104 else 10.0, station="CS2")
    assert only(trace_of(tmp_path, build), "OFFLINE-SAFE").verdict == "pass"


def test_the_failsafe_is_what_the_station_held_when_the_link_dropped(tmp_path):
    # The failsafe is lowered to 6 A after the link came back: the first outage is judged against 10 A.
    def build(rec):
        session16(rec)
        rec.event(100.0, "controller_link_lost", None, {})
        rec.event(200.0, "controller_link_restored", None, {})
        Wire(rec).call(250.0, "SetChargingProfile",
                       {"connectorId": 0, "csChargingProfiles": profile16(1, "TxDefaultProfile", 6.0)},
                       {"status": "Accepted"})
        Wire(rec).call(251.0, "SetChargingProfile",  # a refused change changes nothing
                       {"connectorId": 0, "csChargingProfiles": profile16(1, "TxDefaultProfile", 3.0)},
                       {"status": "Rejected"})
        rec.event(300.0, "controller_link_lost", None, {})
        applied(rec, lambda t: 20.0 if t < 105 or 200 <= t < 305 else 10.0 if t < 300 else 6.0)
    assert only(trace_of(tmp_path, build), "OFFLINE-SAFE").verdict == "pass"


def test_a_station_without_a_failsafe_is_judged_by_the_site_alone(tmp_path):
    def build(rec):
        Wire(rec).call(5.0, "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": T0},
                       {"transactionId": 7, "idTagInfo": {"status": "Accepted"}}, direction="from_station")
        rec.event(100.0, "controller_link_lost", None, {})
        applied(rec, lambda t: 20.0)
        site(rec, lambda t: (40.0, 40.0, 40.0), n=400)
    assert only(trace_of(tmp_path, build), "OFFLINE-SAFE").verdict == "pass"


def test_ocpp201_failsafe_under_the_station_max(tmp_path):
    # TxDefault 16 A under a ChargingStationMaxProfile of 12 A: the station falls back to 12 A.
    def build(rec):
        wire = Wire(rec)
        wire.call(1.0, "SetChargingProfile", {"evseId": 0, "chargingProfile": profile201(1, "TxDefaultProfile", 16)},
                  {"status": "Accepted"})
        wire.call(2.0, "SetChargingProfile",
                  {"evseId": 0, "chargingProfile": profile201(2, "ChargingStationMaxProfile", 12)},
                  {"status": "Accepted"})
        wire.call(5.0, "TransactionEvent", {"eventType": "Started", "transactionInfo": {"transactionId": "tx1"},
                                            "evse": {"id": 1}, "timestamp": T0, "triggerReason": "Authorized",
                                            "seqNo": 0}, {}, direction="from_station")
        wire.call(6.0, "SetChargingProfile",
                  {"evseId": 1, "chargingProfile": profile201(101, "TxProfile", 20, tx="tx1")},
                  {"status": "Accepted"})
        rec.event(100.0, "controller_link_lost", None, {})
        applied(rec, lambda t: 12.0 if t < 100 else 16.0)
    (f,) = only(trace_of(tmp_path, build, make_meta(version="2.0.1")), "OFFLINE-SAFE").findings
    assert (f.measured, f.allowed, f.t_start) == (16.0, 12.0, 110.0)


# -- robustness -----------------------------------------------------------------------------

def test_old_traces_without_meter_reads_are_judged(tmp_path):
    def build(rec):
        rec.event(100.0, "meter_fault", None, {"fault": "frozen", "unit": 1})
        site(rec, lambda t: (95.0 if t >= 150 else 70.0, 0.0, 0.0))
        rec.meter_read(120.0, 1, 4, 0, 80, "frozen", 20.0)
    path = tmp_path / "run.db"
    with Recorder(path, make_meta()) as rec:
        build(rec)
    db = sqlite3.connect(path)
    db.execute("DROP TABLE meter_reads")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    trace = load_trace(path)
    assert trace.meter_reads == []
    (f,) = only(trace, "OFFLINE-SAFE").findings
    assert f.evidence["meter_reads"] == {} and f.evidence["oldest_value_served_s"] is None


#: Profiles a (hand-made) station accepted although no station could apply them: not an object; a first period
#: after 0 with a negative limit.
BAD_PROFILES = [
    7,
    {**profile16(1, "TxDefaultProfile", -1.0),
     "chargingSchedule": {"chargingRateUnit": "A", "startSchedule": T0,
                          "chargingSchedulePeriod": [{"startPeriod": 5, "limit": -1}]}},
]


def accept_profile(rec, profile):
    Wire(rec).call(2.0, "SetChargingProfile", {"connectorId": 0, "csChargingProfiles": profile}, {"status": "Accepted"})


def test_an_accepted_profile_no_station_could_apply_is_no_failsafe(tmp_path):
    def build(rec):
        accept_profile(rec, BAD_PROFILES[1])
        rec.event(100.0, "controller_link_lost", None, {})
        applied(rec, lambda t: 20.0)
    assert only(trace_of(tmp_path, build), "OFFLINE-SAFE").verdict == "pass"


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=False)
                           | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3), max_leaves=5)
events = st.lists(st.tuples(
    st.floats(-10, 700, allow_nan=False),
    st.sampled_from(["meter_fault", "meter_restored", "controller_link_lost", "controller_link_restored",
                     "meter_config"]),
    st.none() | st.sampled_from(["CS1", "CS2", "nowhere"]),
    st.dictionaries(st.sampled_from(["fault", "unit", "model", "update_interval_s"]), json_values, max_size=3)),
    max_size=8)
limit_values = st.none() | st.floats(-50, 100, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events, samples=st.lists(st.tuples(limit_values, st.sampled_from(["EV1", "EV2", None])), max_size=40),
       reads=st.lists(st.tuples(st.integers(-1, 300), st.sampled_from(["ok", "frozen", "no_device"]),
                                st.none() | st.floats(0, 1e6)), max_size=5),
       failsafe=st.sampled_from([None, profile16(1, "TxDefaultProfile", 10.0), *BAD_PROFILES]))
def test_malformed_events_and_samples_never_raise(tmp_path, events, samples, reads, failsafe):
    def build(rec):
        for t, kind, station, detail in events:
            rec.event(t, kind, station, detail)
        for k, (limit, ev) in enumerate(samples):
            rec.station(float(k * 15), "CS1", 1 + k % 3, limit, 0.0, (0.0, 0.0, 0.0), 0.0, 0.0, None, ev)
            rec.site(float(k * 15), (90.0, 0.0, 0.0), 80.0, 0.0, 0.0, bool(k % 4))
        for unit, outcome, age in reads:
            rec.meter_read(1.0, unit, 4, 0, 2, outcome, age)
        if failsafe is not None:
            accept_profile(rec, failsafe)
    trace = trace_of(tmp_path, build, name="fuzz.db")
    for result in run_checks(trace, ["OSCILLATION", "OFFLINE-SAFE"]):
        assert result.verdict in ("pass", "fail")
        for finding in result.findings:
            json.dumps(finding.to_json(START))


@pytest.mark.parametrize("check_id", ["OSCILLATION", "OFFLINE-SAFE"])
def test_an_empty_trace_passes(tmp_path, check_id):
    assert only(trace_of(tmp_path, lambda rec: None), check_id).verdict == "pass"
