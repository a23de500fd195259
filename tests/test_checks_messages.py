"""The message checks (PROFILE-VALID, TX-PROFILE-SCOPE, PROFILE-UPDATE, MIN-CURRENT, NEEDS-ANSWERED) and
MAX-PROFILE-SUM, over traces written by the real Recorder, for OCPP 1.6 and 2.0.1 stations."""

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.checks import CHECKS, run_checks
from bench.checks.messages import CROSSING_S
from bench.recorder import Recorder, parse_frame
from bench.trace import Trace, load_trace

START = 1_700_000_000.0
T0 = "2023-11-14T22:13:20Z"  # START as RFC 3339
IN_1H = "2023-11-14T23:13:20Z"
IN_2H = "2023-11-15T00:13:20Z"


def make_meta(version="1.6", **checks):
    return {
        "scenario": "unit", "controller": "test", "start_epoch": START, "duration_s": 600.0, "step_s": 1.0,
        "voltage_v": 230.0,
        "checks": {"station_response_s": 7.0, "overcurrent_ratio": 1.1, "overcurrent_margin_a": 0.5, **checks},
        "stations": [{"id": "CS1", "ocpp": version, "connectors": 2, "max_current_a": 32.0, "phases": 3,
                      "rotation": "L1L2L3"}],
    }


class CallError:
    def __init__(self, code="NotSupported"):
        self.code = code


class Wire:
    """One station's OCPP-J conversation, written frame by frame into a Recorder."""

    def __init__(self, rec, station="CS1"):
        self.rec, self.station, self.ids = rec, station, itertools.count(1)

    def call(self, t, action, payload, answer=None, direction="to_station"):
        """Send a call; ``answer`` (a result payload or a CallError) comes back at once, None = never."""
        uid = str(next(self.ids))
        self.rec.message(t, self.station, direction, json.dumps([2, uid, action, payload]))
        if answer is not None:
            back = "from_station" if direction == "to_station" else "to_station"
            frame = ([4, uid, answer.code, "", {}] if isinstance(answer, CallError) else [3, uid, answer])
            self.rec.message(t, self.station, back, json.dumps(frame))
        return uid


class V16:
    """OCPP 1.6 spelling of the messages the checks read."""

    version, max_purpose, remote_start_action = "1.6", "ChargePointMaxProfile", "RemoteStartTransaction"

    @staticmethod
    def tx(n):
        return n

    @staticmethod
    def profile(id=1, stack=0, purpose="TxDefaultProfile", kind="Absolute", tx=None, limits=(16,), **extra):
        schedule = {"chargingRateUnit": "A",
                    "chargingSchedulePeriod": [{"startPeriod": 60 * i, "limit": lim} for i, lim in enumerate(limits)]}
        if kind != "Relative":
            schedule["startSchedule"] = T0
        profile = {"chargingProfileId": id, "stackLevel": stack, "chargingProfilePurpose": purpose,
                   "chargingProfileKind": kind, "chargingSchedule": schedule}
        if kind == "Recurring":
            profile["recurrencyKind"] = "Daily"
        if tx is not None:
            profile["transactionId"] = tx
        return {**profile, **extra}

    @staticmethod
    def schedule(profile):
        return profile["chargingSchedule"]

    @staticmethod
    def set(wire, t, connector, profile, status="Accepted"):
        answer = status if isinstance(status, CallError) or status is None else {"status": status}
        return wire.call(t, "SetChargingProfile", {"connectorId": connector, "csChargingProfiles": profile}, answer)

    @staticmethod
    def start(wire, t, connector, tx):
        wire.call(t, "StartTransaction", {"connectorId": connector, "idTag": "T", "meterStart": 0, "timestamp": T0},
                  {"transactionId": tx, "idTagInfo": {"status": "Accepted"}}, direction="from_station")

    @staticmethod
    def stop(wire, t, connector, tx):
        wire.call(t, "StopTransaction", {"transactionId": tx, "meterStop": 0, "timestamp": T0}, {},
                  direction="from_station")

    @staticmethod
    def remote_start(wire, t, connector, profile, status="Accepted"):
        wire.call(t, "RemoteStartTransaction", {"connectorId": connector, "idTag": "T", "chargingProfile": profile},
                  {"status": status})

    @staticmethod
    def clear(wire, t, status="Accepted", **criteria):
        wire.call(t, "ClearChargingProfile", criteria, {"status": status})


class V201:
    """OCPP 2.0.1 spelling of the same."""

    version, max_purpose, remote_start_action = "2.0.1", "ChargingStationMaxProfile", "RequestStartTransaction"

    @staticmethod
    def tx(n):
        return f"tx-{n}"

    @staticmethod
    def profile(id=1, stack=0, purpose="TxDefaultProfile", kind="Absolute", tx=None, limits=(16,), **extra):
        schedule = {"id": 1, "chargingRateUnit": "A",
                    "chargingSchedulePeriod": [{"startPeriod": 60 * i, "limit": lim} for i, lim in enumerate(limits)]}
        if kind != "Relative":
            schedule["startSchedule"] = T0
        profile = {"id": id, "stackLevel": stack, "chargingProfilePurpose": purpose, "chargingProfileKind": kind,
                   "chargingSchedule": [schedule]}
        if kind == "Recurring":
            profile["recurrencyKind"] = "Daily"
        if tx is not None:
            profile["transactionId"] = tx
        return {**profile, **extra}

    @staticmethod
    def schedule(profile):
        return profile["chargingSchedule"][0]

    @staticmethod
    def set(wire, t, connector, profile, status="Accepted"):
        answer = status if isinstance(status, CallError) or status is None else {"status": status}
        return wire.call(t, "SetChargingProfile", {"evseId": connector, "chargingProfile": profile}, answer)

    @staticmethod
    def start(wire, t, connector, tx, remote_start_id=None):
        info = {"transactionId": tx, **({"remoteStartId": remote_start_id} if remote_start_id is not None else {})}
        wire.call(t, "TransactionEvent", {"eventType": "Started", "timestamp": T0, "triggerReason": "Authorized",
                                          "seqNo": 0, "transactionInfo": info,
                                          "evse": {"id": connector, "connectorId": 1}}, {},
                  direction="from_station")

    @staticmethod
    def stop(wire, t, connector, tx):
        wire.call(t, "TransactionEvent", {"eventType": "Ended", "timestamp": T0, "triggerReason": "EVDeparted",
                                          "seqNo": 1, "transactionInfo": {"transactionId": tx}}, {},
                  direction="from_station")

    @staticmethod
    def remote_start(wire, t, connector, profile, status="Accepted"):
        wire.call(t, "RequestStartTransaction", {"evseId": connector, "remoteStartId": 42,
                                                 "idToken": {"idToken": "T", "type": "Central"},
                                                 "chargingProfile": profile}, {"status": status})

    @staticmethod
    def clear(wire, t, status="Accepted", **criteria):
        wire.call(t, "ClearChargingProfile", criteria, {"status": status})


BOTH = pytest.mark.parametrize("v", [V16, V201], ids=["1.6", "2.0.1"])


def trace_of(tmp_path, v, build, **checks):
    """Record ``build(wire)`` for a station speaking ``v`` and load it back."""
    path = tmp_path / "run.db"
    with Recorder(path, make_meta(v.version, **checks)) as rec:
        build(Wire(rec))
    return load_trace(path)


def failing(trace):
    """Failing check id -> the rules its findings cite (None for measured findings)."""
    return {r.id: [(f.evidence or {}).get("rule") for f in r.findings]
            for r in run_checks(trace) if r.verdict == "fail"}


def test_catalogue_order_and_sources():
    assert list(CHECKS) == ["SITE-LIMIT", "BREAKER", "STATION-LIMIT", "MAX-PROFILE-SUM", "MIN-CURRENT",
                            "PROFILE-VALID", "TX-PROFILE-SCOPE", "PROFILE-UPDATE", "REALLOCATE", "NEEDS-ANSWERED",
                            "DR-RESPONSE", "OSCILLATION", "OFFLINE-SAFE"]
    sources = {r.id: (r.layer, r.source) for r in run_checks(Trace(meta={}))}
    assert sources["MAX-PROFILE-SUM"] == ("measured", "1.6 §3.13.3; MicroOcppSimulator#21")
    assert sources["PROFILE-VALID"] == ("message", "K01.FR.03/06/16/38/39/40/41")
    assert sources["TX-PROFILE-SCOPE"] == ("message", "K01.FR.03/16; F01.FR.09/11; TC_K_37/60")
    assert sources["PROFILE-UPDATE"] == ("message", "TC_K_04/05/06/08/15")
    assert sources["NEEDS-ANSWERED"] == ("message", "K15–K17; TC_K_53/55/57/59")


# -- a well-behaved controller passes -----------------------------------------------------------

@BOTH
def test_a_clean_session_passes_every_check(tmp_path, v):
    def build(w):
        v.set(w, 0, 0, v.profile(id=1, purpose=v.max_purpose, limits=(32,)))
        v.set(w, 1, 0, v.profile(id=2, purpose="TxDefaultProfile", kind="Recurring", limits=(16, 10)))
        v.remote_start(w, 2, 1, v.profile(id=3, purpose="TxProfile", kind="Relative"))
        v.start(w, 3, 1, v.tx(7), *([42] if v is V201 else []))
        for t, limit in ((10, 12), (20, 8)):  # updates of the remote start's profile, reusing its id
            v.set(w, t, 1, v.profile(id=3, purpose="TxProfile", kind="Relative", tx=v.tx(7), limits=(limit,)))
        v.set(w, 30, 1, v.profile(id=4, stack=1, purpose="TxProfile", kind="Relative", tx=v.tx(7)))
        v.set(w, 40, 0, v.profile(id=1, purpose=v.max_purpose, limits=(24,)))  # max profile updated by id
        v.clear(w, 50, id=4) if v is V16 else v.clear(w, 50, chargingProfileId=4)
        v.stop(w, 60, 1, v.tx(7))
        v.start(w, 70, 2, v.tx(8))
        v.set(w, 71, 2, v.profile(id=3, purpose="TxProfile", kind="Relative", tx=v.tx(8)))  # the id, reused
        if v is V201:
            w.call(80, "NotifyEVChargingNeeds", {"evseId": 2, "chargingNeeds": {"requestedEnergyTransfer": "DC"}},
                   {"status": "Processing"}, direction="from_station")
            v.set(w, 130, 2, v.profile(id=3, purpose="TxProfile", kind="Relative", tx=v.tx(8), limits=(10,)))
        v.stop(w, 200, 2, v.tx(8))
        if v is V16:
            v.clear(w, 201)  # an empty clear is fine in 1.6 when no transaction would lose its TxProfile
    assert failing(trace_of(tmp_path, v, build)) == {}


# -- acceptance: each fault is caught by its check, and judging carries on ------------------------

@BOTH
def test_tx_profile_without_a_transaction(tmp_path, v):
    def build(w):
        v.set(w, 0, 1, v.profile(purpose="TxProfile", tx=v.tx(5)), status="Rejected")
        v.start(w, 10, 1, v.tx(6))
        v.set(w, 11, 1, v.profile(purpose="TxProfile", tx=v.tx(6)))  # fine: judging carries on
    trace = trace_of(tmp_path, v, build)
    rule = "1.6 §5.16" if v is V16 else "K01.FR.09"
    assert failing(trace) == {"TX-PROFILE-SCOPE": [rule]}
    (f,) = run_checks(trace, ["TX-PROFILE-SCOPE"])[0].findings
    assert (f.t_start, f.station, f.connector) == (0.0, "CS1", 1)
    assert f.message == (f"SetChargingProfile to CS1/1: TxProfile while no transaction runs on "
                         f"{'connector' if v is V16 else 'EVSE'} 1 ({rule})")
    assert f.evidence["message"] == trace.messages[0]["raw"]
    assert json.loads(f.evidence["answer"]) == [3, "1", {"status": "Rejected"}]


def test_tx_profile_without_transaction_id_in_2_0_1(tmp_path):
    # No transaction and no transactionId: out of scope, and malformed for 2.0.1 (K01.FR.03).
    idle = trace_of(tmp_path, V201, lambda w: V201.set(w, 0, 1, V201.profile(purpose="TxProfile")))
    assert failing(idle) == {"TX-PROFILE-SCOPE": ["K01.FR.09"], "PROFILE-VALID": ["K01.FR.03"]}

    def during(w):
        V201.start(w, 0, 1, "tx-1")
        V201.set(w, 1, 1, V201.profile(purpose="TxProfile"))
    assert failing(trace_of(tmp_path, V201, during)) == {"PROFILE-VALID": ["K01.FR.03"]}

    def in_1_6(w):  # 1.6 lets the station bind it to the running transaction (§7.8)
        V16.start(w, 0, 1, 1)
        V16.set(w, 1, 1, V16.profile(purpose="TxProfile"))
    assert failing(trace_of(tmp_path, V16, in_1_6)) == {}


@BOTH
def test_tx_profile_for_another_or_an_ended_transaction(tmp_path, v):
    def build(w):
        v.start(w, 0, 1, v.tx(1))
        v.set(w, 1, 1, v.profile(purpose="TxProfile", tx=v.tx(2)))  # not the one running
        v.start(w, 2, 2, v.tx(2))
        v.stop(w, 5, 1, v.tx(1))
        v.set(w, 15, 1, v.profile(purpose="TxProfile", tx=v.tx(1)))  # its transaction is long over
    rules = ("1.6 §5.16", "1.6 §5.16") if v is V16 else ("K01.FR.33", "K01.FR.09")
    assert failing(trace_of(tmp_path, v, build)) == {"TX-PROFILE-SCOPE": list(rules)}


@BOTH
def test_tx_profile_crossing_the_end_of_its_transaction_is_a_race_not_a_finding(tmp_path, v):
    def build(w):
        v.start(w, 0, 1, v.tx(1))
        v.stop(w, 5, 1, v.tx(1))  # the driver unplugs while the controller's decision is on the wire
        v.set(w, 5 + CROSSING_S, 1, v.profile(purpose="TxProfile", tx=v.tx(1)))
    assert failing(trace_of(tmp_path, v, build)) == {}


@BOTH
def test_relative_station_max_profile(tmp_path, v):
    trace = trace_of(tmp_path, v, lambda w: v.set(w, 0, 0, v.profile(purpose=v.max_purpose, kind="Relative")))
    assert failing(trace) == {"PROFILE-VALID": ["K01.FR.38"]}
    (f,) = run_checks(trace, ["PROFILE-VALID"])[0].findings
    assert f.message == (f"SetChargingProfile to CS1/0: a {v.max_purpose} cannot be Relative: "
                         "there is no transaction to start it (K01.FR.38)")


@BOTH
def test_four_amp_limit(tmp_path, v):
    def build(w):
        v.set(w, 0, 1, v.profile(limits=(16, 4)))
        v.remote_start(w, 1, 2, v.profile(id=2, purpose="TxProfile", kind="Relative", limits=(5,)))
    result = run_checks(trace_of(tmp_path, v, build), ["MIN-CURRENT"])[0]
    assert [(f.t_start, f.connector, f.measured) for f in result.findings] == [(0.0, 1, 4), (1.0, 2, 5)]
    assert result.findings[1].message.startswith(f"{v.remote_start_action} to CS1/2: limit 5 A")


def test_min_current_reads_every_schedule_of_a_2_0_1_profile(tmp_path):
    profile = V201.profile(purpose="TxProfile", tx="tx-1", limits=(16,))
    profile["chargingSchedule"].append({"id": 2, "chargingRateUnit": "W", "startSchedule": T0,
                                        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 2760,
                                                                    "numberPhases": 1}]})  # 12 A
    profile["chargingSchedule"].append({"id": 3, "chargingRateUnit": "W", "startSchedule": T0,
                                        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 2070}]})  # 3 A

    def build(w):
        V201.start(w, 0, 1, "tx-1")
        V201.set(w, 1, 1, profile)
    trace = trace_of(tmp_path, V201, build)
    assert failing(trace) == {"MIN-CURRENT": [None]}
    (f,) = run_checks(trace, ["MIN-CURRENT"])[0].findings
    assert (f.measured, f.connector) == (3.0, 1)


def test_duplicate_stack_levels_in_2_0_1(tmp_path):
    def build(w):
        V201.set(w, 0, 1, V201.profile(id=1, stack=2))
        V201.set(w, 1, 1, V201.profile(id=2, stack=2), status="Rejected")
    trace = trace_of(tmp_path, V201, build)
    assert failing(trace) == {"PROFILE-VALID": ["K01.FR.06"], "PROFILE-UPDATE": ["TC_K_04"]}
    (f,) = run_checks(trace, ["PROFILE-VALID"])[0].findings
    assert f.message == ("SetChargingProfile to CS1/1: profile 1 already holds TxDefaultProfile stackLevel 2 "
                         "there (the new one has id 2) (K01.FR.06)")
    assert f.t_start == 1.0


def test_duplicates_need_the_old_profile_still_installed_and_overlapping(tmp_path):
    def build(w):
        V201.set(w, 0, 1, V201.profile(id=1, validTo=IN_1H))
        V201.set(w, 1, 1, V201.profile(id=2, validFrom=IN_1H, validTo=IN_2H))  # follows it: no overlap
        V201.set(w, 2, 2, V201.profile(id=3))  # another EVSE
        V201.set(w, 3, 1, V201.profile(id=4, stack=1))  # another stackLevel
        V201.set(w, 4, 0, V201.profile(id=5, purpose="ChargingStationMaxProfile"), status="Rejected")
        V201.set(w, 5, 0, V201.profile(id=6, purpose="ChargingStationMaxProfile"))  # 5 was never installed
        V201.clear(w, 6, chargingProfileCriteria={"evseId": 1, "stackLevel": 0})  # removes 1 and 2
        V201.set(w, 7, 1, V201.profile(id=7, validTo=IN_1H))
    assert failing(trace_of(tmp_path, V201, build)) == {}


def test_two_tx_profiles_of_one_transaction_at_one_stack_level(tmp_path):
    # The RequestStartTransaction's profile is installed when its transaction starts (F01.FR.08) ...
    def build(w):
        V201.remote_start(w, 0, 1, V201.profile(id=9, stack=1, purpose="TxProfile", kind="Relative"))
        V201.start(w, 1, 1, "tx-1", remote_start_id=42)
        V201.set(w, 2, 1, V201.profile(id=10, stack=1, purpose="TxProfile", tx="tx-1", kind="Relative"))
    assert failing(trace_of(tmp_path, V201, build)) == {"PROFILE-VALID": ["K01.FR.39"],
                                                          "PROFILE-UPDATE": ["TC_K_04"]}

    # ... and dropped with it, so the next transaction starts afresh.
    def afresh(w):
        V201.start(w, 0, 1, "tx-1")
        V201.set(w, 1, 1, V201.profile(id=10, stack=1, purpose="TxProfile", tx="tx-1", kind="Relative"))
        V201.stop(w, 2, 1, "tx-1")
        V201.start(w, 3, 1, "tx-2")
        V201.set(w, 4, 1, V201.profile(id=11, stack=1, purpose="TxProfile", tx="tx-2", kind="Relative"))
    assert failing(trace_of(tmp_path, V201, afresh)) == {}


def test_a_new_id_for_an_installed_slot_in_1_6_is_an_update_finding_only(tmp_path):
    def build(w):
        V16.set(w, 0, 1, V16.profile(id=1, stack=2))
        V16.set(w, 1, 1, V16.profile(id=2, stack=2, validFrom=IN_1H))  # 1.6 replaces whatever the validity
        V16.set(w, 2, 1, V16.profile(id=2, stack=2, limits=(10,)))  # id 2 replaced 1: reusing it is right
    trace = trace_of(tmp_path, V16, build)
    assert failing(trace) == {"PROFILE-UPDATE": ["TC_K_04"]}
    (f,) = run_checks(trace, ["PROFILE-UPDATE"])[0].findings
    assert f.message == ("SetChargingProfile to CS1/1: new id 2 for the TxDefaultProfile at stackLevel 2 where "
                         "profile 1 is installed; an update reuses the id (1.6 replaces it silently) (TC_K_04)")


# -- PROFILE-VALID, rule by rule ------------------------------------------------------------------

def periods(*starts, limit=16, **extra):
    return [{"startPeriod": s, "limit": limit, **extra} for s in starts]


def without_start(profile, v):
    v.schedule(profile).pop("startSchedule")
    return profile


def with_periods(profile, v, new):
    v.schedule(profile)["chargingSchedulePeriod"] = new
    return profile


# (connector, make(v) -> profile, rule in 1.6 or None if allowed there, rule in 2.0.1)
SHAPES = {
    "max profile off connector 0": (1, lambda v: v.profile(purpose=v.max_purpose), "1.6 §5.16",
                                    "2.0.1 SetChargingProfileRequest.evseId"),
    "TxProfile on connector 0": (0, lambda v: v.profile(purpose="TxProfile", tx=v.tx(1)), "1.6 §5.16", "K01.FR.16"),
    "external constraints": (0, lambda v: v.profile(purpose="ChargingStationExternalConstraints"), "1.6 §7.8",
                             "K01.FR.22"),
    "Absolute without startSchedule": (1, lambda v: without_start(v.profile(), v), "1.6 §7.13", "K01.FR.40"),
    "Recurring without startSchedule": (1, lambda v: without_start(v.profile(kind="Recurring"), v), "1.6 §7.13",
                                        "K01.FR.40"),
    "Relative with startSchedule": (1, lambda v: v.profile(kind="Relative", limits=(16,)) | {
        "chargingSchedule": v.profile()["chargingSchedule"]}, None, "K01.FR.41"),
    "Recurring without recurrencyKind": (1, lambda v: {k: x for k, x in v.profile(kind="Recurring").items()
                                                       if k != "recurrencyKind"}, "1.6 §7.8",
                                         "2.0.1 ChargingProfileType.recurrencyKind"),
    "first period not at 0": (1, lambda v: with_periods(v.profile(), v, periods(10, 20)), "1.6 §7.14", "K01.FR.31"),
    "periods not ascending": (1, lambda v: with_periods(v.profile(), v, periods(0, 60, 60)), "1.6 §7.14",
                              "K01.FR.35"),
    "negative limit": (1, lambda v: v.profile(limits=(16, -1)), "1.6 §7.14", "2.0.1 ChargingSchedulePeriodType.limit"),
    "numberPhases 4": (1, lambda v: with_periods(v.profile(), v, periods(0, numberPhases=4)), "1.6 §7.14",
                       "2.0.1 ChargingSchedulePeriodType.numberPhases"),
    "negative stackLevel": (1, lambda v: v.profile(stack=-1), "1.6 §7.8", "2.0.1 ChargingProfileType.stackLevel"),
    "no id": (1, lambda v: {k: x for k, x in v.profile().items() if k not in ("id", "chargingProfileId")},
              "1.6 §7.8", "2.0.1 ChargingProfileType"),
    "other version's schedule": (1, lambda v: v.profile() | {"chargingSchedule": (
        V201 if v is V16 else V16).profile()["chargingSchedule"]}, "1.6 §7.8", "2.0.1 ChargingProfileType"),
    "validTo not a date": (1, lambda v: v.profile(validTo="tomorrow"), "1.6 §7.8", "2.0.1 ChargingProfileType"),
}


@BOTH
@pytest.mark.parametrize("fault", SHAPES)
def test_profile_valid_rules(tmp_path, v, fault):
    connector, make, rule16, rule201 = SHAPES[fault]
    rule = rule16 if v is V16 else rule201

    def build(w):
        v.start(w, 0, 1, v.tx(1))
        v.set(w, 1, connector, make(v))
    result = failing(trace_of(tmp_path, v, build))
    assert result == ({"PROFILE-VALID": [rule]} if rule else {})
    if rule:
        (f,) = run_checks(trace_of(tmp_path, v, build), ["PROFILE-VALID"])[0].findings
        assert f.message.endswith(f"({rule})") and f.evidence["rule"] == rule


@BOTH
def test_one_finding_per_message_and_rule_broken(tmp_path, v):
    bad = with_periods(v.profile(stack=-1), v, periods(5, 3, 2, numberPhases=0))
    result = run_checks(trace_of(tmp_path, v, lambda w: v.set(w, 0, 1, bad)), ["PROFILE-VALID"])[0]
    assert [f.evidence["rule"] for f in result.findings] == (
        ["1.6 §7.8", "1.6 §7.14", "1.6 §7.14", "1.6 §7.14"] if v is V16 else
        ["2.0.1 ChargingProfileType.stackLevel", "K01.FR.31", "2.0.1 ChargingSchedulePeriodType.numberPhases",
         "K01.FR.35"])
    assert [f.message.split(": ", 1)[1] for f in result.findings] == [
        "stackLevel -1 < 0" + (" (1.6 §7.8)" if v is V16 else " (2.0.1 ChargingProfileType.stackLevel)"),
        "the first period starts at 5, not 0" + (" (1.6 §7.14)" if v is V16 else " (K01.FR.31)"),
        "numberPhases 0 is not 1, 2 or 3" + (" (1.6 §7.14)" if v is V16 else
                                             " (2.0.1 ChargingSchedulePeriodType.numberPhases)"),
        "period 1 starts at 3 s, not after 5 s" + (" (1.6 §7.14)" if v is V16 else " (K01.FR.35)")]


# -- TX-PROFILE-SCOPE: remote starts ----------------------------------------------------------------

@BOTH
def test_remote_start_carries_a_tx_profile_without_transaction_id(tmp_path, v):
    def build(w):
        v.remote_start(w, 0, 1, v.profile(purpose="TxDefaultProfile", kind="Relative"))
        v.remote_start(w, 1, 2, v.profile(purpose="TxProfile", kind="Relative", tx=v.tx(3)))
    rules = ["1.6 §5.11", "1.6 §5.11"] if v is V16 else ["F01.FR.09", "F01.FR.11"]
    assert failing(trace_of(tmp_path, v, build)) == {"TX-PROFILE-SCOPE": rules}


# -- PROFILE-UPDATE: clears and refusals ----------------------------------------------------------

def test_an_empty_clear(tmp_path):
    def in_2_0_1(w):
        V201.clear(w, 0)
        V201.clear(w, 1, chargingProfileCriteria={})
        V201.clear(w, 2, chargingProfileCriteria={"chargingProfilePurpose": "TxDefaultProfile"})
    assert failing(trace_of(tmp_path, V201, in_2_0_1)) == {"PROFILE-UPDATE": ["K10.FR.02", "K10.FR.02"]}

    def in_1_6(w):
        V16.clear(w, 0)  # nothing runs yet
        V16.start(w, 1, 2, 9)
        V16.clear(w, 2, connectorId=1)
        V16.clear(w, 3)
    trace = trace_of(tmp_path, V16, in_1_6)
    assert failing(trace) == {"PROFILE-UPDATE": ["1.6 §5.5"]}
    (f,) = run_checks(trace, ["PROFILE-UPDATE"])[0].findings
    assert f.message == ("ClearChargingProfile to CS1: clears every profile, naming neither id nor criteria "
                         "while transaction(s) 9 run (1.6 §5.5)")


@BOTH
@pytest.mark.parametrize("refusal", ["Rejected", "NotSupported", CallError("NotSupported"), CallError("InternalError")])
def test_hammering_a_refusing_station(tmp_path, v, refusal):
    if refusal == "NotSupported" and v is V201:
        refusal = "Rejected"  # 2.0.1 has no NotSupported status; it answers a CallError instead

    def resend(times, every_s, status=refusal):
        def build(w):
            for k in range(times):
                v.set(w, k * every_s, 1, v.profile(), status=status)
        return trace_of(tmp_path, v, build)
    assert failing(resend(4, 5)) == {}  # the first sending and 3 re-sends
    assert failing(resend(20, 30)) == {}  # at most 2 re-sends in any 60 s
    assert failing(resend(20, 5, status="Accepted")) == {}  # identical but accepted: harmless
    result = run_checks(resend(5, 5), ["PROFILE-UPDATE"])[0]
    (f,) = result.findings
    assert (f.t_start, f.t_end, f.measured, f.allowed, f.unit) == (5.0, 20.0, 4.0, 3.0, "requests")
    assert f.evidence["resent_t"] == [5.0, 10.0, 15.0, 20.0] and f.evidence["rule"] == "TC_K_08/TC_K_15"
    # Hammering for ten minutes is one burst, one finding.
    (burst,) = run_checks(resend(120, 5), ["PROFILE-UPDATE"])[0].findings
    assert (burst.t_start, burst.t_end, burst.measured) == (5.0, 595.0, 119.0)


def test_retry_parameters_and_unknown_clears(tmp_path):
    def build(w):  # the first sending and 4 re-sends, a second apart
        for k in range(5):
            V16.clear(w, k, status="Unknown", id=99)
    assert failing(trace_of(tmp_path, V16, build)) == {"PROFILE-UPDATE": ["TC_K_08/TC_K_15"]}
    assert failing(trace_of(tmp_path, V16, build, profile_retry_limit=4)) == {}
    assert failing(trace_of(tmp_path, V16, build, profile_retry_window_s=3.0)) == {}


# -- NEEDS-ANSWERED -----------------------------------------------------------------------------

def needs_trace(tmp_path, answer, then=(), end_s=600.0, **checks):
    """NotifyEVChargingNeeds for EVSE 1 at t=10 with ``answer``; ``then(w)`` continues the conversation."""
    def build(w):
        V201.start(w, 0, 1, "tx-1")
        w.call(10, "NotifyEVChargingNeeds",
               {"evseId": 1, "chargingNeeds": {"requestedEnergyTransfer": "AC_three_phase",
                                               "acChargingParameters": {"energyAmount": 20000, "evMinCurrent": 6,
                                                                        "evMaxCurrent": 32, "evMaxVoltage": 400}}},
               answer, direction="from_station")
        for step in then:
            step(w)
        w.rec.site(end_s, (0.0, 0.0, 0.0), 80.0, 0.0, 0.0, True)
    return trace_of(tmp_path, V201, build, **checks)


def tx_profile_at(t, evse=1):
    return lambda w: V201.set(w, t, evse, V201.profile(id=5, purpose="TxProfile", tx="tx-1"))


@pytest.mark.parametrize("status", ["Accepted", "Processing"])
def test_needs_answered_and_followed_by_a_tx_profile(tmp_path, status):
    assert failing(needs_trace(tmp_path, {"status": status}, [tx_profile_at(70)])) == {}


@pytest.mark.parametrize(("answer", "rule", "text"), [
    ({"status": "Rejected"}, "K15.FR.03/05", "answered 'Rejected', not Accepted or Processing"),
    (CallError("InternalError"), "K15.FR.02", "answered with a CallError InternalError"),
    (None, "K15.FR.02", "not answered by the end of the run"),
])
def test_needs_badly_answered(tmp_path, answer, rule, text):
    trace = needs_trace(tmp_path, answer, [tx_profile_at(20)])
    assert failing(trace) == {"NEEDS-ANSWERED": [rule]}
    (f,) = run_checks(trace, ["NEEDS-ANSWERED"])[0].findings
    assert f.message == f"NotifyEVChargingNeeds from CS1/1: {text} ({rule})"
    assert (f.t_start, f.connector) == (10.0, 1)


def test_needs_not_followed_by_a_tx_profile(tmp_path):
    late = needs_trace(tmp_path, {"status": "Accepted"}, [tx_profile_at(71), tx_profile_at(20, evse=2)])
    (f,) = run_checks(late, ["NEEDS-ANSWERED"])[0].findings
    assert (f.t_start, f.t_end, f.evidence["rule"]) == (10.0, 70.0, "TC_K_53")
    assert f.message == ("NotifyEVChargingNeeds from CS1/1: no SetChargingProfile with a TxProfile for EVSE 1 "
                         "within 60 s (TC_K_53)")
    # A longer allowance, a session that ended first, or a run that did, excuse it.
    assert failing(needs_trace(tmp_path, {"status": "Accepted"}, [tx_profile_at(71)], needs_answer_s=90.0)) == {}
    assert failing(needs_trace(tmp_path, {"status": "Accepted"}, [lambda w: V201.stop(w, 40, 1, "tx-1")])) == {}
    assert failing(needs_trace(tmp_path, {"status": "Accepted"}, end_s=50.0)) == {}


# -- MAX-PROFILE-SUM ----------------------------------------------------------------------------

def sum_trace(tmp_path, currents, limits, n=60, offsets=(0.0, 0.0)):
    """Two connectors on CS1 sampled every second (``offsets`` shift each one's sampling); ``currents(t, c)``
    gives a connector's phase currents; ``limits`` are ``(t, limit_a)`` station_max_limit events."""
    path = tmp_path / "sum.db"
    with Recorder(path, make_meta()) as rec:
        for t, limit in limits:
            rec.event(t, "station_max_limit", "CS1", {"limit_a": limit})
        for t in range(n):
            for c, offset in zip((1, 2), offsets):
                rec.station(t + offset, "CS1", c, None, 32.0, currents(t, c), 0.0, 0.0, None, f"EV{c}")
    return load_trace(path)


def test_max_profile_sum_over_connectors(tmp_path):
    # Each connector within 16 A, together 20 A per phase against a 16 A station max (threshold 18.1 A).
    trace = sum_trace(tmp_path, lambda t, c: (10.0, 10.0, 10.0) if t >= 20 else (0.0, 0.0, 0.0), [(0.0, 16.0)])
    assert failing(trace) == {"MAX-PROFILE-SUM": [None]}
    (f,) = run_checks(trace, ["MAX-PROFILE-SUM"])[0].findings
    assert (f.station, f.phase, f.t_start, f.t_end, f.measured, f.allowed) == ("CS1", "L1", 20.0, 60.0, 20.0, 16.0)
    assert f.message == ("CS1 L1 at 20.0 A summed over its connectors > 16.0 A station max for 40 s "
                         "(response 7 s, tolerance 10 % + 0.5 A)")
    assert f.evidence["threshold_a"] == 18.1
    assert f.evidence["samples"][0] == {"t": 20.0, "limit_a": 16.0, "sum_a": [20.0, 20.0, 20.0],
                                        "connectors": [{"connector": 1, "currents_a": [10.0, 10.0, 10.0]},
                                                       {"connector": 2, "currents_a": [10.0, 10.0, 10.0]}]}


def test_max_profile_sum_follows_the_limit_and_allows_the_response_time(tmp_path):
    three_phase = lambda t, c: (10.0, 10.0, 10.0) if t < 25 else (8.0, 8.0, 8.0)
    # The limit drops 32 → 16 A at t=20 and the EVs follow 5 s later; later it goes away altogether.
    assert failing(sum_trace(tmp_path, three_phase, [(0.0, 32.0), (20.0, 16.0)])) == {}
    assert failing(sum_trace(tmp_path, lambda t, c: (20.0, 20.0, 20.0), [(0.0, 16.0), (5.0, None)])) == {}
    # Single-phase EVs on different station phases share no phase: 16 A + 16 A is 16 A per phase.
    spread = lambda t, c: (16.0, 0.0, 0.0) if c == 1 else (0.0, 16.0, 0.0)
    assert failing(sum_trace(tmp_path, spread, [(0.0, 16.0)])) == {}
    # No station_max_limit event: nothing to judge against.
    assert failing(sum_trace(tmp_path, lambda t, c: (30.0, 30.0, 30.0), [])) == {}


def test_max_profile_sum_holds_samples_taken_at_different_instants(tmp_path):
    trace = sum_trace(tmp_path, lambda t, c: (10.0, 10.0, 10.0), [(0.0, 16.0)], n=30, offsets=(0.0, 0.5))
    (f,) = run_checks(trace, ["MAX-PROFILE-SUM"])[0].findings
    assert (f.t_start, f.t_end, f.measured) == (0.5, 30.0, 20.0)  # connector 1's last sample holds one step
    # A limit that changes between samples counts from that instant.
    late = sum_trace(tmp_path, lambda t, c: (10.0, 10.0, 10.0), [(0.0, 32.0), (9.25, 16.0)], n=30)
    (f,) = run_checks(late, ["MAX-PROFILE-SUM"])[0].findings
    assert (f.t_start, f.t_end) == (9.25, 30.0)


# -- malformed input never makes a check raise -----------------------------------------------------

ACTIONS = ["SetChargingProfile", "ClearChargingProfile", "RemoteStartTransaction", "RequestStartTransaction",
           "StartTransaction", "StopTransaction", "TransactionEvent", "NotifyEVChargingNeeds", "Heartbeat"]
KEYS = ["connectorId", "evseId", "csChargingProfiles", "chargingProfile", "chargingProfileId", "id", "stackLevel",
        "chargingProfilePurpose", "chargingProfileKind", "recurrencyKind", "validFrom", "validTo", "transactionId",
        "chargingSchedule", "startSchedule", "chargingRateUnit", "chargingSchedulePeriod", "startPeriod", "limit",
        "numberPhases", "status", "eventType", "transactionInfo", "evse", "remoteStartId", "chargingProfileCriteria",
        "errorCode"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False),
                    st.sampled_from(["TxProfile", "TxDefaultProfile", "ChargePointMaxProfile", "Relative", "Absolute",
                                     "Recurring", "Accepted", "Rejected", "Started", "Ended", "A", "W", T0, "x"]))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
                    max_leaves=25)


def mutated(draw, value):
    """``value`` with, somewhere inside it, one entry replaced by arbitrary JSON."""
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        return {**value, key: mutated(draw, value[key])}
    if isinstance(value, list) and value and draw(st.booleans()):
        k = draw(st.integers(0, len(value) - 1))
        return [*value[:k], mutated(draw, value[k]), *value[k + 1:]]
    return draw(JSON)


@st.composite
def frames(draw):
    kind = draw(st.sampled_from(["call", "result", "error", "garbage", "near-valid"]))
    uid = draw(st.sampled_from(["1", "2", "3"]))
    payload = draw(st.dictionaries(st.sampled_from(KEYS), JSON, max_size=6))
    if kind == "near-valid":  # a well-formed profile message, or its answer, with one thing broken
        v = draw(st.sampled_from([V16, V201]))
        profile = v.profile(id=draw(st.integers(1, 2)), purpose=draw(st.sampled_from(
            ["TxProfile", "TxDefaultProfile", v.max_purpose])), tx=draw(st.sampled_from([None, v.tx(1)])))
        action, payload = draw(st.sampled_from([
            ("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": profile, "evseId": 1,
                                    "chargingProfile": profile}),
            (v.remote_start_action, {"connectorId": 1, "evseId": 1, "chargingProfile": profile}),
            ("TransactionEvent", {"eventType": "Started", "transactionInfo": {"transactionId": v.tx(1)},
                                  "evse": {"id": 1}}),
            ("StartTransaction", {"connectorId": 1}), ("StopTransaction", {"transactionId": v.tx(1)}),
            ("ClearChargingProfile", {"id": 1, "chargingProfileCriteria": {"evseId": 1}}),
            ("NotifyEVChargingNeeds", {"evseId": 1}),
        ]))
        if draw(st.booleans()):
            return json.dumps([3, uid, mutated(draw, {"status": "Accepted", "transactionId": v.tx(1)})])
        return json.dumps([2, uid, action, mutated(draw, payload)])
    if kind == "call":
        return json.dumps([2, uid, draw(st.sampled_from(ACTIONS)), payload])
    if kind == "result":
        return json.dumps([3, uid, payload])
    if kind == "error":
        return json.dumps([4, uid, "NotSupported", "", payload])
    return draw(st.sampled_from(['[2,"1","SetChargingProfile"]', "not json", "[]", '[3,"2",7]']))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sent=st.lists(st.tuples(st.sampled_from(["to_station", "from_station"]), frames(),
                               st.sampled_from(["CS1", "CS2"])), max_size=25),
       version=st.sampled_from(["1.6", "2.0.1", "9", None]), limits=st.lists(JSON, max_size=3))
def test_arbitrary_messages_never_make_a_check_raise(sent, version, limits):
    messages = []
    for t, (direction, raw, station) in enumerate(sent):
        kind, uid, action, payload = parse_frame(raw)
        messages.append({"t": float(t), "station": station, "direction": direction, "kind": kind,
                         "unique_id": uid, "action": action, "payload": payload, "raw": raw})
    meta = make_meta(version)
    events = [{"t": float(t), "kind": "station_max_limit", "station": "CS1", "detail": {"limit_a": limit}}
              for t, limit in enumerate(limits)]
    samples = {("CS1", 1): [(float(t), None, 32.0, 20.0, 20.0, 20.0, 0.0, 0.0, None, "EV1") for t in range(3)]}
    trace = Trace(meta=meta, messages=messages, events=events, stations=samples)
    for result in run_checks(trace):
        assert result.verdict in ("pass", "fail")
