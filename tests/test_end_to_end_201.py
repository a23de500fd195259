"""End to end on OCPP 2.0.1: ISO 15118 vans at a depot, the same physics on 1.6 and 2.0.1, and
controllers that send wrong profiles — each caught by its named check while the run carries on.

Every run here is a real scenario through the runner: stations over real websockets, the host's
CSMS, the Modbus site meter, the recorder and the checks, in virtual time.
"""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.runner import run_scenario
from bench.scenario import Scenario, find_scenario, load_scenario, parse_scenario
from bench.trace import load_trace
from controllers.api import Limit, Profile
from controllers.equal_share import EqualShare


def verdicts(result) -> dict[str, str]:
    return {c.id: c.verdict for c in result.checks}


def when(text: str) -> str:
    """An RFC 3339 wire time as "YYYY-MM-DD HH:MM" UTC."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def with_ocpp(name: str, version: str):
    """A bundled scenario with every station switched to ``version``."""
    data = load_scenario(find_scenario(name)).model_dump()
    for station in data["stations"]:
        station["ocpp"] = version
    return Scenario.model_validate(data)


# -- the depot: ISO 15118 needs reach the controller, and a deadline-aware one uses them -------------------


def test_depot_needs_reach_the_controller_and_earliest_deadline_serves_early_leavers(tmp_path: Path) -> None:
    # 3 h 40 min: past the departures of the early leavers (18:30, 19:00, 19:30).
    edf = run_scenario("depot-iso15118", "earliest_deadline", trace=tmp_path / "edf.db", duration_s=13_200)
    fair = run_scenario("depot-iso15118", "equal_share", trace=tmp_path / "eq.db", duration_s=13_200)
    for result in (edf, fair):
        v = verdicts(result)
        for check in ("SITE-LIMIT", "BREAKER", "STATION-LIMIT", "MIN-CURRENT", "PROFILE-VALID",
                      "TX-PROFILE-SCOPE", "PROFILE-UPDATE", "NEEDS-ANSWERED", "MAX-PROFILE-SUM"):
            assert v[check] == "pass", (result.controller, check, result.findings(check)[:3])

    def delivered(path: Path) -> dict[str, float]:
        return {v["ev"]: v["delivered_kwh"] for v in load_trace(path).vehicles}

    by_edf, by_fair = delivered(tmp_path / "edf.db"), delivered(tmp_path / "eq.db")
    early = ("VAN01", "VAN02", "VAN03")
    assert sum(by_edf[v] for v in early) > sum(by_fair[v] for v in early) + 10.0  # kWh
    # VAN01 (45 kWh, 3 h) can be met, and earliest-deadline-first meets it; an equal share cannot.
    assert by_edf["VAN01"] >= 0.99 * 45.0 > by_fair["VAN01"]

    trace = load_trace(tmp_path / "edf.db")
    needs = [m for m in trace.messages if m["action"] == "NotifyEVChargingNeeds" and m["kind"] == "call"]
    # Seven ISO 15118 vans state their needs on arrival; the basic IEC 61851 van (VAN08) cannot.
    assert sorted({m["station"] for m in needs}) == ["CP01", "CP02", "CP03", "CP04", "CP05", "CP06", "CP07"]
    first = json.loads(next(m for m in needs if m["station"] == "CP01")["payload"])
    assert when(first["chargingNeeds"]["departureTime"]) == "2026-03-02 19:00"
    assert first["chargingNeeds"]["acChargingParameters"]["energyAmount"] == 45_000
    # VAN05's driver says at 18:00 they leave at 21:00: the station renegotiates (K15–K17).
    cp05 = [json.loads(m["payload"]) for m in needs if m["station"] == "CP05"]
    assert [when(n["chargingNeeds"]["departureTime"]) for n in cp05] == ["2026-03-02 23:00", "2026-03-02 21:00"]
    # Each needs message was followed by a TxProfile for its EVSE (what NEEDS-ANSWERED judges).
    schedules = {m["station"] for m in trace.messages
                 if m["action"] == "NotifyEVChargingSchedule" and m["kind"] == "call"}
    assert schedules == {m["station"] for m in needs}


def test_depot_external_constraints_cap_the_station(tmp_path: Path) -> None:
    # 20:00–21:00 the depot's energy manager holds CP08 at 16 A (ChargingStationExternalConstraints, K12). Without
    # a controller's profiles (uncontrolled) the constraint alone limits the station, so its lifting shows.
    result = run_scenario("depot-iso15118", "uncontrolled", trace=tmp_path / "t.db", duration_s=19_000)
    assert verdicts(result)["STATION-LIMIT"] == "pass"
    trace = load_trace(tmp_path / "t.db")
    samples = trace.stations[("CP08", 1)]
    during = [s for s in samples if 14_460 <= s[0] < 18_000]  # a minute in: the EV has followed
    assert during and max(s[1] for s in during) <= 16.0 and max(s[3] for s in during) <= 16.0 * 1.1 + 0.5
    after = [s for s in samples if 18_100 <= s[0]]
    assert after and all(s[1] is None or s[1] > 16.0 for s in after)  # lifted: only its hardware limits it
    sent = [m for m in trace.messages if m["station"] == "CP08" and m["kind"] == "call"
            and m["action"] in ("NotifyChargingLimit", "ClearedChargingLimit")]
    assert sent, "the station tells the CSMS about the local limit"


# -- one physics on both versions ---------------------------------------------------------------------


def test_same_scenario_on_16_and_201_gives_the_same_physics(tmp_path: Path) -> None:
    energy = {}
    for version in ("1.6", "2.0.1"):
        result = run_scenario(with_ocpp("workplace", version), "equal_share", trace=tmp_path / f"{version}.db",
                              duration_s=4 * 3600)
        assert result.verdict == "pass", (version, result.findings())
        energy[version] = result.metrics["energy_delivered_kwh"]
    assert energy["1.6"] > 50
    assert abs(energy["2.0.1"] - energy["1.6"]) <= 0.005 * energy["1.6"], energy


# -- controllers that send what they should not ---------------------------------------------------------

SMALL_SITE = """\
name = "two-stations"
stations = [
  {{ id = "CP01", ocpp = "{ocpp}", max_current_a = 32 }},
  {{ id = "CP02", ocpp = "{ocpp}", max_current_a = 32 }},
]
vehicles = [
  {{ id = "EV01", station = "CP01", arrival = "08:01", departure = "09:00", battery_kwh = 60, initial_soc = 0.2, target_soc = 0.8, max_current_a = 32 }},
]
[clock]
start = 2026-03-02T08:00:00Z
duration = "40m"
[site]
limit_a = 40
[site.breaker]
rating_a = 63
"""
START_ISO = "2026-03-02T08:00:00Z"


def _profile(version: str, connector: int, purpose: str, profile_id: int, stack: int, limit: float,
             kind: str = "Absolute") -> dict:
    """A SetChargingProfile payload in the station's version, as a controller would write it."""
    periods = [{"startPeriod": 0, "limit": limit}]
    if version == "1.6":
        purpose = "ChargePointMaxProfile" if purpose == "ChargingStationMaxProfile" else purpose
        schedule = {"chargingRateUnit": "A", "chargingSchedulePeriod": periods}
        if kind != "Relative":
            schedule["startSchedule"] = START_ISO
        return {"connectorId": connector, "csChargingProfiles": {
            "chargingProfileId": profile_id, "stackLevel": stack, "chargingProfilePurpose": purpose,
            "chargingProfileKind": kind, "chargingSchedule": schedule}}
    schedule = {"id": 1, "chargingRateUnit": "A", "chargingSchedulePeriod": periods}
    if kind != "Relative":
        schedule["startSchedule"] = START_ISO
    return {"evseId": connector, "chargingProfile": {
        "id": profile_id, "stackLevel": stack, "chargingProfilePurpose": purpose, "chargingProfileKind": kind,
        "chargingSchedule": [schedule]}}


class _Faulty(EqualShare):
    """equal_share plus one wrong decision; ``ocpp`` is learnt as a product learns it, from the connection."""

    def __init__(self, site) -> None:
        super().__init__(site)
        self.versions: dict[str, str] = {}

    def on_station_connected(self, station_id: str, ocpp_version: str, now: float) -> None:
        self.versions[station_id] = ocpp_version

    def allocate(self, now: float):
        decisions = dict(super().allocate(now))
        if self.versions.get("CP02"):
            decisions.update(self.fault(self.versions["CP02"]))
        return decisions


class TxProfileWithoutTransaction(_Faulty):
    """A TxProfile for CP02, where no car is plugged and no transaction runs."""

    def fault(self, version: str):
        return {("CP02", 1): Profile(_profile(version, 1, "TxProfile", 77, 1, 16.0))}


class RelativeMaxProfile(_Faulty):
    """A station max profile of kind Relative: it has no transaction to be relative to (K01.FR.38)."""

    def fault(self, version: str):
        return {("CP02", 0): Profile(_profile(version, 0, "ChargingStationMaxProfile", 78, 0, 32.0, "Relative"))}


class DuplicateStackLevel(_Faulty):
    """A second TxDefaultProfile at the failsafe's stack level 0 on the station, under a new id."""

    def fault(self, version: str):
        return {("CP02", 0): Profile(_profile(version, 0, "TxDefaultProfile", 79, 0, 20.0))}


class FourAmps(EqualShare):
    """Hands out 4 A: an AC EV cannot charge below 6 A (IEC 61851-1)."""

    def allocate(self, now: float):
        return {key: Limit(4.0) for key in super().allocate(now)}


FAULTS = [
    # (controller, version, the check that must catch it, words its finding must contain)
    pytest.param(TxProfileWithoutTransaction, "2.0.1", "TX-PROFILE-SCOPE", "", id="tx-without-transaction-201"),
    pytest.param(TxProfileWithoutTransaction, "1.6", "TX-PROFILE-SCOPE", "", id="tx-without-transaction-16"),
    pytest.param(RelativeMaxProfile, "2.0.1", "PROFILE-VALID", "K01.FR.38", id="relative-max-201"),
    pytest.param(RelativeMaxProfile, "1.6", "PROFILE-VALID", "Relative", id="relative-max-16"),
    pytest.param(FourAmps, "2.0.1", "MIN-CURRENT", "4 A", id="four-amps-201"),
    pytest.param(FourAmps, "1.6", "MIN-CURRENT", "4 A", id="four-amps-16"),
    pytest.param(DuplicateStackLevel, "2.0.1", "PROFILE-VALID", "K01.FR.06", id="duplicate-stack-level-201"),
]


@pytest.mark.parametrize(("controller", "version", "check", "words"), FAULTS)
def test_wrong_profiles_are_findings_of_the_named_check_and_the_run_carries_on(
        tmp_path: Path, controller, version: str, check: str, words: str) -> None:
    scenario = parse_scenario(tomllib.loads(SMALL_SITE.format(ocpp=version)))
    result = run_scenario(scenario, f"{__name__}:{controller.__name__}", trace=tmp_path / "t.db")
    v = verdicts(result)
    assert v[check] == "fail", v
    findings = result.findings(check)
    assert any(words in f.message for f in findings), [f.message for f in findings]
    assert all(f.evidence and "message" in f.evidence for f in findings)  # the offending frame is attached
    # The run carried on: physics to the end, the car charged, the measured layer still judged it.
    trace = load_trace(tmp_path / "t.db")
    assert trace.site[-1][0] >= 40 * 60 - 1
    assert v["BREAKER"] == "pass"
    if controller is FourAmps:
        assert result.metrics["energy_delivered_kwh"] == 0.0  # a 4 A pilot is a pause: the car never charged
    else:
        assert result.metrics["energy_delivered_kwh"] > 3.0
