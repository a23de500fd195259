"""The verdict: the check catalogue of SMART_CHARGING.md §3 as pure functions of a Trace.

Each check takes a loaded :class:`~bench.trace.Trace` and returns a :class:`CheckResult`; no
check does I/O, reads the clock or looks at anything but the trace, so re-judging a file gives
the same verdict (DESIGN.md, principle 4). Check parameters come from the trace's
``meta["checks"]`` (the scenario's ``[checks]``, whose defaults — ``bench.scenario.Checks`` —
also fill any gaps). :func:`metrics` computes the run's numbers (energy, peaks) from the
same trace.

Message checks judge each message the controller sent against what its station had at that moment — the
transactions running and the profiles installed — replayed from the station's own messages and answers
(``_Ledger``), by the rules of the station's OCPP version (``meta["stations"][*]["ocpp"]``; 1.6 if absent).
Each message finding names the rule it broke and quotes the message and its answer.

Time model: samples are sample-and-hold — a sample's values hold until the next sample, and the
last sample holds for one physics step (``meta["step_s"]``). An excursion therefore lasts from its
first sample over the bound to the first sample back within it.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from operator import itemgetter

from bench.clock import iso_z
from bench.scenario import Checks, Site
from bench.trace import Trace
from emulators.profiles import ProfileEngine, ProfileError, parse_profile, parse_profile_201

PHASES = ("L1", "L2", "L3")

#: Parameters for a trace whose meta lacks them (a hand-made or older trace): the scenario
#: model's own defaults, so a scenario that leaves them out and a trace that does agree.
DEFAULT_PARAMS = Checks().model_dump()

#: Phase-to-neutral voltage [V] for W→A conversion when the trace's meta lacks it.
DEFAULT_VOLTAGE_V = Site.model_fields["voltage_v"].default

#: Samples quoted as evidence per finding (the first ones of the excursion).
EVIDENCE_SAMPLES = 5


# -- results --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    """One violation: what, when (sim seconds), where, measured vs allowed, and the evidence.
    ``to_json`` adds the window as wall-clock ISO 8601 ("Z") via the run's start epoch."""

    check: str
    message: str
    t_start: float
    t_end: float
    station: str | None = None
    connector: int | None = None
    phase: str | None = None
    measured: float | None = None
    allowed: float | None = None
    unit: str = "A"
    evidence: dict | None = None

    def to_json(self, start_epoch: float) -> dict:
        return {
            "check": self.check, "message": self.message,
            "window": [iso_z(start_epoch + self.t_start), iso_z(start_epoch + self.t_end)],
            "t_start": self.t_start, "t_end": self.t_end,
            "station": self.station, "connector": self.connector, "phase": self.phase,
            "measured": self.measured, "allowed": self.allowed, "unit": self.unit,
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class CheckResult:
    """A check's verdict over one trace: ``fail`` iff it has findings."""

    id: str
    statement: str
    source: str
    layer: str  # "measured" (what the site drew) | "message" (what the controller sent)
    verdict: str  # "pass" | "fail"
    findings: tuple[Finding, ...]

    def to_json(self, start_epoch: float) -> dict:
        return {"id": self.id, "verdict": self.verdict, "statement": self.statement,
                "source": self.source, "layer": self.layer,
                "findings": [f.to_json(start_epoch) for f in self.findings]}


#: The registry, in catalogue order (the order of the ``@_check`` definitions below).
CHECKS: dict[str, Callable[[Trace], CheckResult]] = {}


def _check(check_id: str, layer: str, statement: str, source: str):
    """Register ``find(trace) -> findings`` as the check ``check_id``."""
    def register(find: Callable[[Trace], Iterable[Finding]]) -> Callable[[Trace], CheckResult]:
        def check(trace: Trace) -> CheckResult:
            findings = tuple(sorted(find(trace), key=lambda f: f.t_start))
            return CheckResult(check_id, statement, source, layer,
                               "fail" if findings else "pass", findings)
        check.__name__ = check.__qualname__ = find.__name__.lstrip("_")
        check.__doc__ = find.__doc__
        CHECKS[check_id] = check
        return check
    return register


def run_checks(trace: Trace, ids: Iterable[str] | None = None) -> list[CheckResult]:
    """Run the given checks (default: all, in catalogue order) over ``trace``."""
    ids = list(CHECKS) if ids is None else list(ids)
    unknown = [i for i in ids if i not in CHECKS]
    if unknown:
        raise KeyError(f"unknown check id(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    return [CHECKS[i](trace) for i in ids]


# -- shared pieces --------------------------------------------------------------------------

def _params(trace: Trace) -> dict:
    given = trace.meta.get("checks")
    return {**DEFAULT_PARAMS, **(given if isinstance(given, dict) else {})}


def _step_s(trace: Trace) -> float:
    step = trace.meta.get("step_s")
    return float(step) if _is_number(step) and step > 0 else 1.0


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _seconds(x: float) -> str:
    """Duration for messages: "42", "42.5"."""
    return f"{x:.1f}".removesuffix(".0")


def _runs(ts: Sequence[float], over: Sequence[bool], end_t: float) -> Iterator[tuple[int, int, float]]:
    """Maximal runs of consecutive flagged samples, as ``(first, stop, t_end)``: samples
    ``first..stop-1`` are over; the run ends at the next sample (``ts[stop]``) or, if it is
    still going when the samples end, at ``end_t``."""
    n = len(ts)
    i = 0
    while i < n:
        if not over[i]:
            i += 1
            continue
        j = i + 1
        while j < n and over[j]:
            j += 1
        yield i, j, ts[j] if j < n else end_t
        i = j


# -- measured checks ------------------------------------------------------------------------

@_check("SITE-LIMIT", "measured",
        "grid-connection current per phase ≤ site limit, except excursions shorter than the settle "
        "time (EV response + meter delay + controller period)",
        "seed: managed charging; 1.6 §3.13.3")
def _site_limit(trace: Trace) -> Iterator[Finding]:
    """Per phase, each excursion above ``limit_a + site_tolerance_a`` (the limit of each sample,
    so a changed limit counts from its sample on) lasting longer than ``settle_s``. Samples with
    the breaker open are not excursions. Measured/allowed are from the sample with the largest
    excess."""
    site = trace.site
    if not site:
        return
    params = _params(trace)
    settle_s, tolerance_a = params["settle_s"], params["site_tolerance_a"]
    ts = [s[0] for s in site]
    end_t = ts[-1] + _step_s(trace)
    for column, phase in enumerate(PHASES, start=1):
        # s[4] limit_a, s[7] breaker_closed
        over = [s[7] and s[4] is not None and s[column] is not None and s[column] > s[4] + tolerance_a
                for s in site]
        for first, stop, t_end in _runs(ts, over, end_t):
            duration_s = t_end - ts[first]
            if duration_s <= settle_s:
                continue
            worst = max(site[first:stop], key=lambda s: s[column] - s[4])
            measured, allowed = worst[column], worst[4]
            tolerance = f", tolerance {tolerance_a:g} A" if tolerance_a else ""
            yield Finding(
                "SITE-LIMIT",
                f"{phase} at {measured:.1f} A > {allowed:.1f} A for {_seconds(duration_s)} s "
                f"(settle {settle_s:g} s{tolerance})",
                ts[first], t_end, phase=phase, measured=round(measured, 3), allowed=round(allowed, 3),
                evidence={"worst_t": worst[0], "threshold_a": round(allowed + tolerance_a, 3),
                          "samples": [{"t": s[0], "current_a": s[column], "limit_a": s[4]}
                                      for s in site[first:min(stop, first + EVIDENCE_SAMPLES)]]})


@_check("BREAKER", "measured",
        "the main breaker never trips (thermal-magnetic curve of the scenario's breaker)",
        'seed: "tripped the main breaker repeatedly"')
def _breaker(trace: Trace) -> Iterator[Finding]:
    """Each ``breaker_trip`` event. Its window runs from the trip while the site samples from
    that step on show the breaker open, to the first one showing it closed again (or the end of
    the run)."""
    site = trace.site
    ts = [s[0] for s in site]
    for event in trace.events:
        if event["kind"] != "breaker_trip":
            continue
        t, detail = event["t"], event["detail"]
        rating_a = detail.get("rating_a", trace.meta.get("breaker_rating_a"))
        i = bisect.bisect_left(ts, t)
        while i < len(ts) and ts[i] <= t and site[i][7]:  # the trip step's sample may precede the trip
            i += 1
        t_end = t
        while i < len(ts) and not site[i][7]:
            i += 1
            t_end = ts[i] if i < len(ts) else ts[-1] + _step_s(trace)
        currents = detail.get("currents_a", detail.get("currents"))
        currents = list(currents) if isinstance(currents, (list, tuple)) else []
        measured = phase = None
        if currents and all(_is_number(c) for c in currents):
            peak = max(range(len(currents)), key=currents.__getitem__)
            measured, phase = round(currents[peak], 3), PHASES[peak] if peak < 3 else None
        reason = detail.get("reason")
        parts = ["main breaker tripped" + (f": {reason}" if reason else "")]
        if measured is not None:
            parts.append("/".join(f"{c:.1f}" for c in currents) + " A")
        if _is_number(rating_a):
            parts.append(f"rating {rating_a:g} A")
        if t_end > t:
            parts.append(f"open {_seconds(t_end - t)} s")
        yield Finding("BREAKER", "; ".join(parts), t, t_end, station=event["station"], phase=phase,
                      measured=measured, allowed=rating_a if _is_number(rating_a) else None,
                      evidence={"event": detail})


@_check("STATION-LIMIT", "measured",
        "each EVSE draws ≤ its composite limit within the EV response time",
        "errata §2.41; libocpp")
def _station_limit(trace: Trace) -> Iterator[Finding]:
    """Per connector, each run where the highest phase current exceeds
    ``bound × overcurrent_ratio + overcurrent_margin_a`` for longer than ``station_response_s``;
    the bound of a sample is the lower of its composite limit (if any) and the station's
    hardware ``max_current_a`` (if known). One pass over both bounds, so an overdraw that breaks
    both is reported once, against the stricter."""
    params = _params(trace)
    response_s = params["station_response_s"]
    ratio, margin_a = params["overcurrent_ratio"], params["overcurrent_margin_a"]
    hardware_a = {s.get("id"): s.get("max_current_a")
                  for s in trace.meta.get("stations") or [] if isinstance(s, dict)}
    step_s = _step_s(trace)
    for (station, connector), samples in trace.stations.items():
        hw = hardware_a.get(station)
        hw = hw if _is_number(hw) else None
        # The bound of each sample: the stricter of its composite limit and the hardware max.
        if hw is None:
            bounds = [s[1] for s in samples]
        else:
            bounds = [hw if s[1] is None or s[1] > hw else s[1] for s in samples]
        over = [b is not None and max(s[3], s[4], s[5]) > b * ratio + margin_a
                for s, b in zip(samples, bounds)]
        ts = [s[0] for s in samples]
        for first, stop, t_end in _runs(ts, over, ts[-1] + step_s):
            duration_s = t_end - ts[first]
            if duration_s <= response_s:
                continue
            k = max(range(first, stop), key=lambda k: max(samples[k][3:6]) - bounds[k])
            worst, allowed = samples[k], bounds[k]
            measured = max(worst[3:6])
            phase = PHASES[worst[3:6].index(measured)]
            which = "profile limit" if worst[1] is not None and worst[1] == allowed else "hardware max"
            yield Finding(
                "STATION-LIMIT",
                f"{station}/{connector} {phase} at {measured:.1f} A > {allowed:.1f} A {which} for "
                f"{_seconds(duration_s)} s (response {response_s:g} s, "
                f"tolerance {round((ratio - 1) * 100, 1):g} % + {margin_a:g} A)",
                ts[first], t_end, station=station, connector=connector, phase=phase,
                measured=round(measured, 3), allowed=round(allowed, 3),
                evidence={"bound": which, "worst_t": worst[0],
                          "threshold_a": round(allowed * ratio + margin_a, 3),
                          "samples": [{"t": s[0], "limit_a": s[1], "offered_a": s[2],
                                       "currents_a": [s[3], s[4], s[5]], "ev": s[9]}
                                      for s in samples[first:min(stop, first + EVIDENCE_SAMPLES)]]})


@_check("MAX-PROFILE-SUM", "measured",
        "the sum over connectors ≤ the station max profile (not per connector)",
        "1.6 §3.13.3; MicroOcppSimulator#21")
def _max_profile_sum(trace: Trace) -> Iterator[Finding]:
    """Per station and phase, each run where the current summed over its connectors exceeds
    ``limit × overcurrent_ratio + overcurrent_margin_a`` for longer than ``station_response_s``, the limit
    being the station-wide one of the latest ``station_max_limit`` event (1.6 ChargePointMaxProfile, 2.0.1
    ChargingStationMaxProfile / external constraints; A per phase, None = none). The sum is taken per station
    phase, since the limit is per phase: two single-phase EVs on different phases do not add up. Each
    connector's sample holds until its next one (its last for one step), so connectors sampled at slightly
    different instants still sum; the instants where a hold expires or the limit changes are judged too."""
    params = _params(trace)
    response_s = params["station_response_s"]
    ratio, margin_a = params["overcurrent_ratio"], params["overcurrent_margin_a"]
    step_s = _step_s(trace)
    changes: dict[str, list[tuple[float, float | None]]] = {}
    for event in trace.events:
        if event["kind"] != "station_max_limit":
            continue
        limit = event["detail"].get("limit_a")
        if limit is None or _is_number(limit):
            changes.setdefault(event["station"], []).append((event["t"], limit))
    series: dict[str, list[tuple[int, list[tuple]]]] = {}
    for (station, connector), samples in trace.stations.items():
        if station in changes and samples:
            series.setdefault(station, []).append((connector, samples))
    for station, connectors in series.items():
        limits = sorted(changes[station], key=itemgetter(0))
        limit_ts = [t for t, _ in limits]
        instants = {s[0] for _, samples in connectors for s in samples}
        instants |= {samples[-1][0] + step_s for _, samples in connectors}
        instants |= {t for t in limit_ts if min(instants) < t < max(instants)}
        ts = sorted(instants)
        cursors = [0] * len(connectors)
        rows = []  # (t, limit_a, per-phase sums, [(connector, currents)])
        for t in ts:
            sums = [0.0, 0.0, 0.0]
            drawing = []
            for n, (connector, samples) in enumerate(connectors):
                k = cursors[n]
                while k + 1 < len(samples) and samples[k + 1][0] <= t:
                    k += 1
                cursors[n] = k
                sample = samples[k]
                if sample[0] > t or (k == len(samples) - 1 and t >= sample[0] + step_s - 1e-9):
                    continue  # not sampled yet, or its last sample no longer holds
                currents = sample[3:6]
                for phase in range(3):
                    sums[phase] += currents[phase]
                if any(currents):
                    drawing.append((connector, currents))
            at = bisect.bisect_right(limit_ts, t) - 1
            rows.append((t, limits[at][1] if at >= 0 else None, sums, drawing))
        over = [limit is not None and max(sums) > limit * ratio + margin_a for _, limit, sums, _ in rows]
        for first, stop, t_end in _runs(ts, over, ts[-1] + step_s):
            duration_s = t_end - ts[first]
            if duration_s <= response_s:
                continue
            worst_t, allowed, sums, _ = max(rows[first:stop], key=lambda r: max(r[2]) - r[1])
            measured = max(sums)
            phase = PHASES[sums.index(measured)]
            yield Finding(
                "MAX-PROFILE-SUM",
                f"{station} {phase} at {measured:.1f} A summed over its connectors > {allowed:.1f} A station "
                f"max for {_seconds(duration_s)} s (response {response_s:g} s, "
                f"tolerance {round((ratio - 1) * 100, 1):g} % + {margin_a:g} A)",
                ts[first], t_end, station=station, phase=phase,
                measured=round(measured, 3), allowed=round(allowed, 3),
                evidence={"worst_t": worst_t, "threshold_a": round(allowed * ratio + margin_a, 3),
                          "samples": [{"t": t, "limit_a": limit, "sum_a": [round(x, 3) for x in sums],
                                       "connectors": [{"connector": c, "currents_a": list(i)} for c, i in drawing]}
                                      for t, limit, sums, drawing in rows[first:min(stop, first + EVIDENCE_SAMPLES)]]})


# -- message checks -------------------------------------------------------------------------

# Where a controller-sent call carries charging profiles: action -> payload keys.
# 1.6: SetChargingProfile.csChargingProfiles, RemoteStartTransaction.chargingProfile;
# 2.0.1: SetChargingProfile.chargingProfile, RequestStartTransaction.chargingProfile.
_PROFILE_KEYS = {
    "SetChargingProfile": ("csChargingProfiles", "chargingProfile"),
    "RemoteStartTransaction": ("chargingProfile",),
    "RequestStartTransaction": ("chargingProfile",),
}


def _profile_limits_a(profile: object, voltage_v: float) -> Iterator[tuple[float, str]]:
    """Each schedule period's limit as A per phase, with how it was derived.

    1.6 has one ``chargingSchedule`` object, 2.0.1 a list of them. ``A`` is per phase; ``W`` is
    total, I = P / (V × numberPhases), numberPhases defaulting to 3 (1.6 §7.13). Anything
    malformed (missing unit, non-numeric limit, impossible phase count) is skipped: judging
    profile shape is PROFILE-VALID's business, not this check's.
    """
    if not isinstance(profile, dict):
        return
    schedules = profile.get("chargingSchedule")
    for schedule in schedules if isinstance(schedules, list) else [schedules]:
        if not isinstance(schedule, dict):
            continue
        unit = schedule.get("chargingRateUnit")
        periods = schedule.get("chargingSchedulePeriod")
        if unit not in ("A", "W") or not isinstance(periods, list):
            continue
        for period in periods:
            if not isinstance(period, dict) or not _is_number(period.get("limit")):
                continue
            limit = period["limit"]
            if unit == "A":
                yield limit, f"{limit:g} A"
                continue
            phases = period.get("numberPhases")
            phases = 3 if phases is None else phases
            if type(phases) is not int or not 1 <= phases <= 3:
                continue
            amps = limit / (voltage_v * phases)
            yield amps, f"{limit:g} W / ({voltage_v:g} V x {phases}) = {amps:.2f} A"


@_check("MIN-CURRENT", "message",
        "no AC limit strictly between 0 and 6 A (per phase)",
        "IEC 61851-1")
def _min_current(trace: Trace) -> Iterator[Finding]:
    """Each profile-carrying call to a station with any period limit in ``(0, min_current_a)``
    A per phase; one finding per message, quoting its lowest such limit."""
    min_a = _params(trace)["min_current_a"]
    voltage_v = trace.meta.get("voltage_v")
    voltage_v = voltage_v if _is_number(voltage_v) and voltage_v > 0 else DEFAULT_VOLTAGE_V
    for message in trace.messages:
        keys = _PROFILE_KEYS.get(message["action"])
        if keys is None or message["kind"] != "call" or message["direction"] != "to_station":
            continue
        try:
            payload = json.loads(message["payload"])
        except (TypeError, ValueError):
            continue
        if not isinstance(payload, dict):
            continue
        # 1e-9: a W limit that converts to exactly the minimum must not fail on float rounding.
        offending = [(amps, how) for key in keys
                     for amps, how in _profile_limits_a(payload.get(key), voltage_v)
                     if 0 < amps < min_a - 1e-9]
        if not offending:
            continue
        amps, how = min(offending)
        connector = payload.get("connectorId", payload.get("evseId"))
        connector = connector if type(connector) is int else None
        where = message["station"] + (f"/{connector}" if connector is not None else "")
        yield Finding(
            "MIN-CURRENT",
            f"{message['action']} to {where}: limit {how} per phase, in (0, {min_a:g}) A",
            message["t"], message["t"], station=message["station"], connector=connector,
            measured=round(float(amps), 3), allowed=float(min_a),
            evidence={"message": message["raw"]})


# -- the station's side, replayed from its messages -----------------------------------------

TX_PROFILE = "TxProfile"
PROFILE_KINDS = ("Absolute", "Recurring", "Relative")

#: Answers that refuse a profile request: 1.6 ChargingProfileStatus Rejected / NotSupported and
#: ClearChargingProfileStatus Unknown; 2.0.1 ChargingProfileStatusEnumType Rejected and
#: ClearChargingProfileStatusEnumType Unknown. A CallError refuses too.
REFUSALS = ("Rejected", "Unknown", "NotSupported")

_OTHER_DIRECTION = {"to_station": "from_station", "from_station": "to_station"}


@dataclass(frozen=True)
class _Dialect:
    """How one OCPP version spells the profile messages, and the clause behind each rule the checks apply."""

    connector_key: str  # SetChargingProfile's connector: 1.6 connectorId, 2.0.1 evseId
    connector_word: str
    profile_key: str  # SetChargingProfile's profile
    id_key: str  # the profile's id
    max_purpose: str
    purposes: tuple[str, ...]
    remote_start: str
    sources: dict[str, str]  # rule -> clause; a rule missing here does not apply in this version


_V16 = _Dialect(
    "connectorId", "connector", "csChargingProfiles", "chargingProfileId", "ChargePointMaxProfile",
    ("ChargePointMaxProfile", "TxDefaultProfile", TX_PROFILE), "RemoteStartTransaction",
    {"shape": "1.6 §7.8", "max-evse": "1.6 §5.16", "tx-evse": "1.6 §5.16", "max-relative": "K01.FR.38",
     "start-missing": "1.6 §7.13", "recurrency": "1.6 §7.8", "first-period": "1.6 §7.14",
     "ascending": "1.6 §7.14", "limit": "1.6 §7.14", "phases": "1.6 §7.14", "stack": "1.6 §7.8",
     "no-tx": "1.6 §5.16", "other-tx": "1.6 §5.16", "remote-purpose": "1.6 §5.11", "remote-tx-id": "1.6 §5.11",
     "update-id": "TC_K_04", "clear-empty": "1.6 §5.5", "retry": "TC_K_08/TC_K_15"})

_V201 = _Dialect(
    "evseId", "EVSE", "chargingProfile", "id", "ChargingStationMaxProfile",
    ("ChargingStationMaxProfile", "TxDefaultProfile", TX_PROFILE, "ChargingStationExternalConstraints"),
    "RequestStartTransaction",
    {"shape": "2.0.1 ChargingProfileType", "max-evse": "2.0.1 SetChargingProfileRequest.evseId",
     "tx-evse": "K01.FR.16", "external": "K01.FR.22", "max-relative": "K01.FR.38", "start-missing": "K01.FR.40",
     "start-extraneous": "K01.FR.41", "recurrency": "2.0.1 ChargingProfileType.recurrencyKind",
     "tx-id": "K01.FR.03", "first-period": "K01.FR.31", "ascending": "K01.FR.35",
     "limit": "2.0.1 ChargingSchedulePeriodType.limit", "phases": "2.0.1 ChargingSchedulePeriodType.numberPhases",
     "stack": "2.0.1 ChargingProfileType.stackLevel", "duplicate": "K01.FR.06", "duplicate-tx": "K01.FR.39",
     "no-tx": "K01.FR.09", "other-tx": "K01.FR.33", "remote-purpose": "F01.FR.09", "remote-tx-id": "F01.FR.11",
     "update-id": "TC_K_04", "clear-empty": "K10.FR.02", "retry": "TC_K_08/TC_K_15"})


def _dialects(trace: Trace) -> dict[str, _Dialect]:
    """Station id -> its dialect, from ``meta["stations"][*]["ocpp"]``; a station not listed speaks 1.6."""
    stations = trace.meta.get("stations")
    dialects = {}
    for station in stations if isinstance(stations, list) else []:
        if isinstance(station, dict) and isinstance(station.get("id"), str):
            dialects[station["id"]] = _V201 if str(station.get("ocpp", "1.6")).startswith("2") else _V16
    return dialects


def _whole(x: object) -> int | None:
    """A JSON integer, or None (bool is not one, though Python says it is)."""
    return x if type(x) is int else None


def _object(x: object) -> dict:
    return x if isinstance(x, dict) else {}


def _transaction_id(x: object) -> int | str | None:
    """1.6 transactionId is an integer, 2.0.1's a string; anything else is no id."""
    return x if type(x) in (int, str) else None


@dataclass(frozen=True)
class _Profile:
    """The fields of a wire charging profile the rules reason about: None where absent or of the wrong type.
    ``valid_from_s``/``valid_to_s`` are run seconds (``bad_times`` names a validFrom/validTo that is not an
    RFC 3339 date-time)."""

    id: int | None
    stack_level: int | None
    purpose: object
    kind: object
    transaction_id: int | str | None
    valid_from_s: float | None
    valid_to_s: float | None
    bad_times: tuple[str, ...]
    wire: dict = field(compare=False, repr=False)  # the profile as sent, for replaying it (OFFLINE-SAFE)

    def window(self, t: float) -> tuple[float, float]:
        """When it is valid if set at ``t``: an absent validFrom means from receipt, an absent validTo never ends."""
        return (t if self.valid_from_s is None else self.valid_from_s,
                math.inf if self.valid_to_s is None else self.valid_to_s)


def _read_profile(raw: object, dialect: _Dialect, start_epoch: float) -> _Profile | None:
    if not isinstance(raw, dict):
        return None
    times, bad = [], []
    for key in ("validFrom", "validTo"):
        text = raw.get(key)
        t = None if text is None else _run_seconds(text, start_epoch)
        if text is not None and t is None:
            bad.append(key)
        times.append(t)
    return _Profile(_whole(raw.get(dialect.id_key)), _whole(raw.get("stackLevel")),
                    raw.get("chargingProfilePurpose"), raw.get("chargingProfileKind"),
                    _transaction_id(raw.get("transactionId")), times[0], times[1], tuple(bad), raw)


def _run_seconds(text: object, start_epoch: float) -> float | None:
    """An RFC 3339 date-time as seconds since the run's start (no offset = UTC), or None if it is not one."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp() - start_epoch


@dataclass(frozen=True)
class _Installed:
    """A profile a station accepted, where, for which transaction, and when it is valid [run s]."""

    profile: _Profile
    connector: int
    transaction_id: int | str | None
    valid_from_s: float
    valid_to_s: float


def _same_slot(dialect: _Dialect, old: _Installed, new: _Installed) -> str | None:
    """The rule by which ``new`` takes ``old``'s place — None when the two may coexist.

    1.6 replaces the profile of the same purpose and stackLevel on the same connector, whatever its validity
    (§3.13.2, §5.16); 2.0.1 forbids that while their validity overlaps (K01.FR.06), and forbids two TxProfiles
    of one transaction at one stackLevel (K01.FR.39)."""
    p, q = old.profile, new.profile
    if p.purpose != q.purpose or p.stack_level != q.stack_level:
        return None
    if p.purpose == TX_PROFILE and old.transaction_id is not None and old.transaction_id == new.transaction_id:
        return "duplicate-tx"
    if old.connector != new.connector:
        return None
    if dialect is _V16 or (old.valid_from_s < new.valid_to_s and new.valid_from_s < old.valid_to_s):
        return "duplicate"
    return None


def _pair_answers(messages: list[dict]) -> dict[int, int]:
    """Index of each call -> index of the result or error that answers it (same station and unique id, the
    other direction, the first after it), as the recorder pairs them."""
    open_calls: dict[tuple, int] = {}
    answers: dict[int, int] = {}
    for i, message in enumerate(messages):
        uid = message.get("unique_id")
        if not isinstance(uid, str):
            continue
        kind, station = message.get("kind"), message.get("station")
        if kind == "call":
            open_calls[station, message.get("direction"), uid] = i
        elif kind in ("result", "error"):
            call = open_calls.pop((station, _OTHER_DIRECTION.get(message.get("direction")), uid), None)
            if call is not None:
                answers[call] = i
    return answers


def _payload(message: dict) -> dict | None:
    text = message.get("payload")
    if not isinstance(text, str):
        return None
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None


def _refused(answer: dict | None) -> bool:
    if answer is None:
        return False
    return answer.get("kind") == "error" or _object(_payload(answer)).get("status") in REFUSALS


class _Ledger:
    """What each station has, as far as its messages tell, replayed in recording order.

    ``running[station][connector]`` is the transaction running there: 1.6 from StartTransaction's answer to
    StopTransaction, 2.0.1 from the TransactionEvent that names its EVSE to the one that ends it.
    ``installed[station][profile id]`` are the profiles the station accepted: SetChargingProfile answered
    Accepted (replacing by id, and by :func:`_same_slot`), a remote start's profile once its transaction starts;
    removed by ClearChargingProfile answered Accepted and, for TxProfiles, by the end of their transaction.
    ``ended`` lists ``(station, connector, t)`` for each transaction end.
    """

    def __init__(self, trace: Trace) -> None:
        self.messages = trace.messages
        start_epoch = trace.meta.get("start_epoch")
        self.start_epoch = start_epoch if _is_number(start_epoch) else 0.0
        self._dialects = _dialects(trace)
        self._answers = _pair_answers(self.messages)
        self._answered = {answer: call for call, answer in self._answers.items()}
        self._open: dict[int, dict] = {}  # call index -> payload, for calls whose answer changes the state
        self.running: dict[str, dict[int, int | str]] = {}
        self.installed: dict[str, dict[int, _Installed]] = {}
        self.ended: list[tuple[str, int, float]] = []
        self._remote: dict[str, list[tuple[int | None, _Profile, object]]] = {}  # accepted, not started yet

    def dialect(self, station: object) -> _Dialect:
        return self._dialects.get(station, _V16) if isinstance(station, str) else _V16

    def answer(self, call: int) -> dict | None:
        answer = self._answers.get(call)
        return None if answer is None else self.messages[answer]

    def walk(self) -> Iterator[tuple[int, dict, dict | None]]:
        """Each message with its payload (None unless a JSON object). While a message is yielded the ledger
        shows the state just before it."""
        for i, message in enumerate(self.messages):
            payload = _payload(message)
            yield i, message, payload
            if payload is not None:
                self._apply(i, message, payload)

    def _apply(self, i: int, message: dict, payload: dict) -> None:
        kind, station, action, t = message.get("kind"), message.get("station"), message.get("action"), message["t"]
        if kind == "call":
            if message.get("direction") == "from_station":
                if action == "StopTransaction":
                    self._end(station, _transaction_id(payload.get("transactionId")), t)
                elif action == "TransactionEvent":
                    self._transaction_event(station, payload, t)
                elif action == "StartTransaction":
                    self._open[i] = payload
            elif action in ("SetChargingProfile", "ClearChargingProfile", self.dialect(station).remote_start):
                self._open[i] = payload
            return
        call = self._answered.get(i)
        request = self._open.pop(call, None) if call is not None else None
        if request is None or kind != "result":
            return
        action = self.messages[call].get("action")
        dialect = self.dialect(station)
        if action == "StartTransaction":
            self._start(station, _whole(request.get("connectorId")), _transaction_id(payload.get("transactionId")),
                        t, None)
        elif payload.get("status") != "Accepted":
            return
        elif action == "SetChargingProfile":
            connector = _whole(request.get(dialect.connector_key))
            profile = _read_profile(request.get(dialect.profile_key), dialect, self.start_epoch)
            if connector is not None and profile is not None:
                transaction = profile.transaction_id
                if profile.purpose == TX_PROFILE and transaction is None:
                    transaction = self.running.get(station, {}).get(connector)
                self._install(station, connector, profile, transaction, t)
        elif action == "ClearChargingProfile":
            self._clear(station, dialect, request)
        else:
            profile = _read_profile(request.get("chargingProfile"), dialect, self.start_epoch)
            if profile is not None:
                connector = _whole(request.get(dialect.connector_key))
                self._remote.setdefault(station, []).append((connector, profile, request.get("remoteStartId")))

    def _transaction_event(self, station: str, payload: dict, t: float) -> None:
        info = _object(payload.get("transactionInfo"))
        transaction = _transaction_id(info.get("transactionId"))
        if payload.get("eventType") == "Ended":
            self._end(station, transaction, t)
            return
        evse = _whole(_object(payload.get("evse")).get("id"))
        if self.running.get(station, {}).get(evse) != transaction:
            self._start(station, evse, transaction, t, info.get("remoteStartId"))

    def _start(self, station: str, connector: int | None, transaction: int | str | None, t: float,
               remote_start_id: object) -> None:
        if connector is None or transaction is None:
            return
        self.running.setdefault(station, {})[connector] = transaction
        waiting = self._remote.get(station, [])
        for k, (wanted, profile, wanted_id) in enumerate(waiting):
            if wanted in (None, connector) and (wanted_id is None or remote_start_id in (None, wanted_id)):
                del waiting[k]
                self._install(station, connector, profile, transaction, t)
                break

    def _end(self, station: str, transaction: int | str | None, t: float) -> None:
        running = self.running.get(station, {})
        connector = next((c for c, tx in running.items() if tx == transaction), None)
        if transaction is None or connector is None:
            return
        del running[connector]
        self.ended.append((station, connector, t))
        installed = self.installed.get(station, {})
        for key in [k for k, p in installed.items() if p.profile.purpose == TX_PROFILE and p.connector == connector]:
            del installed[key]

    def _install(self, station: str, connector: int, profile: _Profile, transaction: int | str | None,
                 t: float) -> None:
        if profile.id is None:
            return
        new = _Installed(profile, connector, transaction, *profile.window(t))
        installed = self.installed.setdefault(station, {})
        dialect = self.dialect(station)
        for key in [k for k, old in installed.items() if k == profile.id or _same_slot(dialect, old, new)]:
            del installed[key]
        installed[profile.id] = new

    def _clear(self, station: str, dialect: _Dialect, request: dict) -> None:
        """ClearChargingProfile answered Accepted: by id alone, else by every criterion given (1.6 §5.5, K10)."""
        installed = self.installed.get(station, {})
        if dialect is _V16:
            profile_id, criteria = request.get("id"), request
            connector = criteria.get("connectorId")
        else:
            profile_id, criteria = request.get("chargingProfileId"), _object(request.get("chargingProfileCriteria"))
            connector = criteria.get("evseId")
        if profile_id is not None:
            if type(profile_id) is int:
                installed.pop(profile_id, None)
            return
        purpose, stack_level = criteria.get("chargingProfilePurpose"), criteria.get("stackLevel")
        for key in [k for k, p in installed.items()
                    if connector in (None, p.connector) and purpose in (None, p.profile.purpose)
                    and stack_level in (None, p.profile.stack_level)]:
            del installed[key]


@dataclass(frozen=True)
class _Sent:
    """A charging profile the controller sent (SetChargingProfile, or a remote start's), seen against its
    station's state just before it went."""

    index: int
    message: dict
    dialect: _Dialect
    remote: bool  # carried by Remote/RequestStartTransaction
    connector: object  # as sent (validity is PROFILE-VALID's business)
    raw: object  # the wire profile
    profile: _Profile | None
    running: int | str | None  # the transaction running on that connector then
    installed: tuple[_Installed, ...]  # what the station had then

    def as_installed(self) -> _Installed | None:
        """This profile as the station would hold it, if it is identifiable enough to compare."""
        p, connector = self.profile, _whole(self.connector)
        if p is None or p.id is None or connector is None:
            return None
        transaction = p.transaction_id if p.transaction_id is not None or p.purpose != TX_PROFILE else self.running
        return _Installed(p, connector, transaction, *p.window(self.message["t"]))


def _sent(ledger: _Ledger, i: int, message: dict, payload: dict) -> _Sent | None:
    """The profile the controller's call at ``i`` carries, if it is a SetChargingProfile or a remote start
    with one (the ledger being at ``i``)."""
    station, action = message.get("station"), message.get("action")
    dialect = ledger.dialect(station)
    if action == "SetChargingProfile":
        raw = payload.get(dialect.profile_key)
    elif action == dialect.remote_start and payload.get("chargingProfile") is not None:
        raw = payload["chargingProfile"]
    else:
        return None
    connector = payload.get(dialect.connector_key)
    return _Sent(i, message, dialect, action != "SetChargingProfile", connector,
                 raw, _read_profile(raw, dialect, ledger.start_epoch),
                 ledger.running.get(station, {}).get(connector) if type(connector) is int else None,
                 tuple(ledger.installed.get(station, {}).values()))


def _sent_profiles(ledger: _Ledger) -> Iterator[_Sent]:
    for i, message, payload in _controller_calls(ledger):
        sent = _sent(ledger, i, message, payload)
        if sent is not None:
            yield sent


def _controller_calls(ledger: _Ledger) -> Iterator[tuple[int, dict, dict]]:
    for i, message, payload in ledger.walk():
        if message.get("kind") == "call" and message.get("direction") == "to_station" and payload is not None:
            yield i, message, payload


def _message_finding(check: str, ledger: _Ledger, index: int, rule: str, text: str, *, connector: object = None,
                     t_end: float | None = None, more_evidence: dict | None = None, **fields: object) -> Finding:
    """A finding about one message: "<action> to|from <station>[/<connector>]: <text> (<rule>)", with the rule,
    the message and its answer as evidence."""
    message = ledger.messages[index]
    connector = connector if type(connector) is int else None
    where = f"{message.get('station')}" + (f"/{connector}" if connector is not None else "")
    way = "to" if message.get("direction") == "to_station" else "from"
    answer = ledger.answer(index)
    return Finding(check, f"{message.get('action')} {way} {where}: {text} ({rule})", message["t"],
                   message["t"] if t_end is None else t_end, station=message.get("station"), connector=connector,
                   evidence={"rule": rule, "message": message.get("raw"),
                             "answer": None if answer is None else answer.get("raw"), **(more_evidence or {})},
                   **fields)


# -- profile checks ------------------------------------------------------------------------

def _shape_faults(sent: _Sent) -> Iterator[tuple[str, str]]:
    """The static rules of SMART_CHARGING.md §1 one profile breaks, as ``(rule, what)``: its own fields, and its
    purpose against the connector/EVSE it was sent to. For a remote start's profile the purpose rules are left
    to TX-PROFILE-SCOPE (it must be a TxProfile, whatever else it is)."""
    d, p, raw = sent.dialect, sent.profile, sent.raw
    if not sent.remote and (_whole(sent.connector) is None or sent.connector < 0):
        yield "shape", f"{d.connector_key} {sent.connector!r} is not a {d.connector_word} number >= 0"
    if p is None:
        yield "shape", f"the charging profile is {type(raw).__name__}, not an object"
        return
    if p.id is None:
        yield "shape", f"{d.id_key} is missing or not an integer"
    if p.stack_level is None:
        yield "shape", "stackLevel is missing or not an integer"
    elif p.stack_level < 0:
        yield "stack", f"stackLevel {p.stack_level} < 0"
    if p.purpose not in d.purposes:
        yield "shape", f"chargingProfilePurpose {p.purpose!r} is not one of {', '.join(d.purposes)}"
    if p.kind not in PROFILE_KINDS:
        yield "shape", f"chargingProfileKind {p.kind!r} is not one of {', '.join(PROFILE_KINDS)}"
    elif p.kind == "Recurring" and raw.get("recurrencyKind") not in ("Daily", "Weekly"):
        yield "recurrency", (f"a Recurring profile needs recurrencyKind Daily or Weekly, "
                             f"not {raw.get('recurrencyKind')!r}")
    for key in p.bad_times:
        yield "shape", f"{key} {raw[key]!r} is not an RFC 3339 date-time"
    if not sent.remote:
        connector = _whole(sent.connector)
        if p.purpose == d.max_purpose and connector not in (None, 0):
            yield "max-evse", f"a {p.purpose} belongs on {d.connector_word} 0, not {connector}"
        if p.purpose == TX_PROFILE and connector == 0:
            yield "tx-evse", f"a TxProfile needs a {d.connector_word} > 0, not 0"
        if p.purpose == "ChargingStationExternalConstraints" and "external" in d.sources:
            yield "external", "ChargingStationExternalConstraints are the station's energy manager's, never the CSMS's"
        if p.purpose == d.max_purpose and p.kind == "Relative":
            yield "max-relative", f"a {p.purpose} cannot be Relative: there is no transaction to start it"
        if p.purpose == TX_PROFILE and p.transaction_id is None and "tx-id" in d.sources:
            yield "tx-id", "a TxProfile needs the transactionId it is for"
    schedules = raw.get("chargingSchedule")
    if d is _V16:
        schedules = [schedules] if isinstance(schedules, dict) else None
    elif not (isinstance(schedules, list) and schedules and all(isinstance(s, dict) for s in schedules)):
        schedules = None
    if schedules is None:
        expected = "an object" if d is _V16 else "a list of 1 or more objects"
        yield "shape", f"chargingSchedule is {type(raw.get('chargingSchedule')).__name__}, not {expected}"
        return
    for schedule in schedules:
        yield from _schedule_faults(p, schedule, d)


def _schedule_faults(p: _Profile, schedule: dict, d: _Dialect) -> Iterator[tuple[str, str]]:
    start = schedule.get("startSchedule")
    if p.kind in ("Absolute", "Recurring") and start is None:
        yield "start-missing", f"an {p.kind} profile needs a startSchedule"
    if p.kind == "Relative" and start is not None and "start-extraneous" in d.sources:
        yield "start-extraneous", "a Relative profile must not have a startSchedule"
    if start is not None and _run_seconds(start, 0.0) is None:
        yield "shape", f"startSchedule {start!r} is not an RFC 3339 date-time"
    if schedule.get("chargingRateUnit") not in ("A", "W"):
        yield "shape", f"chargingRateUnit {schedule.get('chargingRateUnit')!r} is not A or W"
    periods = schedule.get("chargingSchedulePeriod")
    if not isinstance(periods, list) or not periods:
        yield "shape", "chargingSchedulePeriod is not a list of 1 or more periods"
        return
    previous = None
    for k, period in enumerate(periods):
        if not isinstance(period, dict):
            yield "shape", f"chargingSchedulePeriod[{k}] is not an object"
            continue
        start_period, limit, phases = _whole(period.get("startPeriod")), period.get("limit"), period.get("numberPhases")
        if start_period is None:
            yield "shape", f"chargingSchedulePeriod[{k}].startPeriod is missing or not an integer"
        elif k == 0 and start_period != 0:
            yield "first-period", f"the first period starts at {start_period}, not 0"
        elif previous is not None and start_period <= previous:
            yield "ascending", f"period {k} starts at {start_period} s, not after {previous} s"
        previous = start_period if start_period is not None else previous
        if not _is_number(limit):
            yield "shape", f"chargingSchedulePeriod[{k}].limit {limit!r} is not a number"
        elif limit < 0:
            yield "limit", f"limit {limit:g} < 0"
        if phases is not None and _whole(phases) not in (1, 2, 3):
            yield "phases", f"numberPhases {phases!r} is not 1, 2 or 3"


@_check("PROFILE-VALID", "message",
        "purpose/EVSE/kind/startSchedule/recurrency/stackLevel rules of §1",
        "K01.FR.03/06/16/38/39/40/41")
def _profile_valid(trace: Trace) -> Iterator[Finding]:
    """Each profile the controller sent (SetChargingProfile; a remote start's, but for the purpose rules) judged
    by the rules of its station's OCPP version: one finding per message and rule broken. In 2.0.1 also a
    profile that duplicates one the station has installed — same purpose, stackLevel and EVSE with overlapping
    validity (K01.FR.06), or a TxProfile at the stackLevel of its transaction's (K01.FR.39) — under a different
    id. (In 1.6 that replaces the old profile: PROFILE-UPDATE's business.)"""
    ledger = _Ledger(trace)
    for sent in _sent_profiles(ledger):
        faults: dict[str, str] = {}
        for rule, text in _shape_faults(sent):
            faults.setdefault(rule, text)
        new = sent.as_installed()
        if new is not None and not sent.remote and sent.dialect is _V201:
            for old in sent.installed:
                rule = _same_slot(_V201, old, new) if old.profile.id != new.profile.id else None
                if rule is not None:
                    faults.setdefault(rule, f"profile {old.profile.id} already holds {new.profile.purpose} "
                                            f"stackLevel {new.profile.stack_level} there (the new one has id "
                                            f"{new.profile.id})")
                    break
        for rule, text in faults.items():
            yield _message_finding("PROFILE-VALID", ledger, sent.index, sent.dialect.sources[rule], text,
                                   connector=sent.connector)


@_check("TX-PROFILE-SCOPE", "message",
        "TxProfile only with a transactionId during a transaction; remote start carries one without",
        "K01.FR.03/16; F01.FR.09/11; TC_K_37/60")
def _tx_profile_scope(trace: Trace) -> Iterator[Finding]:
    """A TxProfile sent to a connector/EVSE where no transaction runs at that moment, or naming another
    transaction than the one running there; a remote start whose profile is not a TxProfile or carries a
    transactionId. (A 2.0.1 TxProfile without transactionId during a transaction is PROFILE-VALID's K01.FR.03;
    1.6 allows leaving it out, §7.8.)"""
    ledger = _Ledger(trace)
    for sent in _sent_profiles(ledger):
        p, d = sent.profile, sent.dialect
        if p is None:
            continue
        if sent.remote:
            if p.purpose != TX_PROFILE:
                yield _message_finding("TX-PROFILE-SCOPE", ledger, sent.index, d.sources["remote-purpose"],
                                       f"the profile of a remote start must be a TxProfile, not {p.purpose!r}",
                                       connector=sent.connector)
            if sent.raw.get("transactionId") is not None:
                yield _message_finding("TX-PROFILE-SCOPE", ledger, sent.index, d.sources["remote-tx-id"],
                                       "the profile of a remote start must not carry a transactionId "
                                       f"({sent.raw['transactionId']!r}): its transaction does not exist yet",
                                       connector=sent.connector)
            continue
        if p.purpose != TX_PROFILE or not _whole(sent.connector):
            continue
        if sent.running is None:
            yield _message_finding("TX-PROFILE-SCOPE", ledger, sent.index, d.sources["no-tx"],
                                   f"TxProfile while no transaction runs on {d.connector_word} {sent.connector}",
                                   connector=sent.connector)
        elif p.transaction_id is not None and p.transaction_id != sent.running:
            yield _message_finding("TX-PROFILE-SCOPE", ledger, sent.index, d.sources["other-tx"],
                                   f"TxProfile for transaction {p.transaction_id!r}, but {sent.running!r} "
                                   f"runs there", connector=sent.connector)


def _canonical(payload: dict) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def _empty_clear(dialect: _Dialect, payload: dict) -> bool:
    """A ClearChargingProfile that names neither a profile id nor any criterion: it clears everything."""
    if dialect is _V16:
        return all(payload.get(k) is None for k in ("id", "connectorId", "chargingProfilePurpose", "stackLevel"))
    criteria = _object(payload.get("chargingProfileCriteria"))
    return payload.get("chargingProfileId") is None and all(
        criteria.get(k) is None for k in ("evseId", "chargingProfilePurpose", "stackLevel"))


@_check("PROFILE-UPDATE", "message",
        "updates reuse the profile id; clears by id or criteria; Unknown/NotSupported handled",
        "TC_K_04/05/06/08/15")
def _profile_update(trace: Trace) -> Iterator[Finding]:
    """Three ways to get updates wrong:

    - a SetChargingProfile with a new id where a profile of the same purpose and stackLevel is installed on that
      connector/EVSE (for TxProfiles: of the same transaction; in 2.0.1: with overlapping validity), instead of
      reusing its id — 1.6 replaces the old one silently, 2.0.1 rejects the new one (TC_K_04);
    - a ClearChargingProfile naming neither id nor criteria: in 2.0.1 always (K10.FR.02), in 1.6 while a
      transaction runs on the station, whose TxProfile it wipes (§5.5);
    - a request re-sent identically after the station refused it (Rejected, Unknown, NotSupported or a
      CallError) more than ``profile_retry_limit`` times within ``profile_retry_window_s``: one finding per burst.
    """
    params = _params(trace)
    retry_limit, window_s = params["profile_retry_limit"], params["profile_retry_window_s"]
    ledger = _Ledger(trace)
    last_sent: dict[tuple, int] = {}  # (station, action, payload) -> index of its latest sending
    retries: dict[tuple, list[tuple[int, int]]] = {}  # the same key -> (re-sending, the refused sending before)
    for i, message, payload in _controller_calls(ledger):
        action, station = message.get("action"), message.get("station")
        dialect = ledger.dialect(station)
        if action not in ("SetChargingProfile", "ClearChargingProfile"):
            continue
        key = (station, action, _canonical(payload))
        previous = last_sent.get(key)
        if previous is not None and _refused(ledger.answer(previous)):
            retries.setdefault(key, []).append((i, previous))
        last_sent[key] = i
        if action == "ClearChargingProfile":
            running = ledger.running.get(station)
            if _empty_clear(dialect, payload) and (dialect is _V201 or running):
                during = (f" while transaction(s) {', '.join(map(str, running.values()))} run" if running else "")
                yield _message_finding("PROFILE-UPDATE", ledger, i, dialect.sources["clear-empty"],
                                       f"clears every profile, naming neither id nor criteria{during}")
            continue
        sent = _sent(ledger, i, message, payload)
        new = sent.as_installed()
        old = next((old for old in sent.installed if new is not None and old.profile.id != new.profile.id
                    and _same_slot(dialect, old, new)), None)
        if old is not None:
            fate = "1.6 replaces it silently" if dialect is _V16 else "2.0.1 rejects the new one"
            yield _message_finding(
                "PROFILE-UPDATE", ledger, i, dialect.sources["update-id"],
                f"new id {new.profile.id} for the {new.profile.purpose} at stackLevel {new.profile.stack_level} "
                f"where profile {old.profile.id} is installed; an update reuses the id ({fate})",
                connector=new.connector)
    for key, indexes in retries.items():
        yield from _retry_bursts(ledger, key[0], indexes, retry_limit, window_s)


def _retry_bursts(ledger: _Ledger, station: str, retries: list[tuple[int, int]], limit: int,
                  window_s: float) -> Iterator[Finding]:
    """One finding per burst of re-sends: consecutive re-sends each of which has more than ``limit`` re-sends
    within the ``window_s`` up to it; the burst starts at the first re-send of its first such window."""
    ts = [ledger.messages[i]["t"] for i, _ in retries]
    bursts: list[tuple[int, int]] = []  # (first, last) positions in ``retries``
    first = 0
    for k, t in enumerate(ts):
        while t - ts[first] >= window_s:
            first += 1
        if k - first + 1 > limit:
            if bursts and bursts[-1][1] == k - 1:
                bursts[-1] = (bursts[-1][0], k)
            else:
                bursts.append((first, k))
    dialect = ledger.dialect(station)
    for start, end in bursts:
        index, refused = retries[start]
        refusal = ledger.answer(refused)
        why = ("a CallError " + str(_object(_payload(refusal)).get("errorCode"))
               if refusal.get("kind") == "error" else repr(_object(_payload(refusal)).get("status")))
        count = end - start + 1
        yield _message_finding(
            "PROFILE-UPDATE", ledger, index, dialect.sources["retry"],
            f"re-sent unchanged {count} times in {_seconds(ts[end] - ts[start])} s after the station answered "
            f"{why} (at most {limit} within {window_s:g} s)",
            t_end=ts[end], measured=float(count), allowed=float(limit), unit="requests",
            more_evidence={"refusal": refusal.get("raw"), "resent_t": ts[start:end + 1]})


def _end_t(trace: Trace) -> float:
    """When the run ended [s]: the last thing it recorded (a run cut short ends there, not at its planned
    duration), or — for a trace that recorded nothing — its planned duration."""
    ends = [trace.messages[-1]["t"]] if trace.messages else []
    ends += [trace.events[-1]["t"]] if trace.events else []
    ends += [trace.site[-1][0]] if trace.site else []
    ends += [samples[-1][0] for samples in trace.stations.values() if samples]
    ends = [t for t in ends if _is_number(t)]
    duration = trace.meta.get("duration_s")
    return max(ends) if ends else duration if _is_number(duration) else 0.0


@_check("NEEDS-ANSWERED", "message",
        "NotifyEVChargingNeeds answered and followed by a TxProfile within 60 s",
        "K15–K17; TC_K_53/55/57/59")
def _needs_answered(trace: Trace) -> Iterator[Finding]:
    """Each NotifyEVChargingNeeds a station sent must be answered Accepted or Processing (K15.FR.02/03/05: a
    Rejected, a CallError or no answer by the end of the run is a finding), and then be followed by a
    SetChargingProfile with a TxProfile for its evseId within ``needs_answer_s`` (TC_K_53) — unless the
    transaction on that EVSE ended first, or the run did."""
    needs_s = _params(trace)["needs_answer_s"]
    ledger = _Ledger(trace)
    needs: list[tuple[int, int | None]] = []  # (message index, evseId)
    profiles_t: dict[tuple[str, int], list[float]] = {}  # (station, EVSE) -> when a TxProfile was sent there
    for i, message, payload in ledger.walk():
        if message.get("kind") != "call":
            continue
        station, action = message.get("station"), message.get("action")
        if message.get("direction") == "from_station" and action == "NotifyEVChargingNeeds":
            needs.append((i, _whole(_object(payload).get("evseId"))))
        elif message.get("direction") == "to_station" and action == "SetChargingProfile" and payload is not None:
            dialect = ledger.dialect(station)
            evse = _whole(payload.get(dialect.connector_key))
            purpose = _object(payload.get(dialect.profile_key)).get("chargingProfilePurpose")
            if evse is not None and purpose == TX_PROFILE:
                profiles_t.setdefault((station, evse), []).append(message["t"])
    ends: dict[tuple[str, int], list[float]] = {}
    for station, connector, t in ledger.ended:
        ends.setdefault((station, connector), []).append(t)
    end_t = _end_t(trace)
    for i, evse in needs:
        message, answer = ledger.messages[i], ledger.answer(i)
        answered = _object(_payload(answer)) if answer is not None else {}
        if answer is None:
            yield _message_finding("NEEDS-ANSWERED", ledger, i, "K15.FR.02", "not answered by the end of the run",
                                   connector=evse)
        elif answer.get("kind") == "error":
            yield _message_finding("NEEDS-ANSWERED", ledger, i, "K15.FR.02",
                                   f"answered with a CallError {answered.get('errorCode')}", connector=evse)
        elif answered.get("status") not in ("Accepted", "Processing"):
            yield _message_finding("NEEDS-ANSWERED", ledger, i, "K15.FR.03/05",
                                   f"answered {answered.get('status')!r}, not Accepted or Processing",
                                   connector=evse)
        elif evse is not None:
            t, deadline = message["t"], message["t"] + needs_s
            key = (message.get("station"), evse)
            if (any(t <= sent <= deadline for sent in profiles_t.get(key, ()))
                    or any(t <= ended <= deadline for ended in ends.get(key, ())) or deadline > end_t):
                continue
            yield _message_finding("NEEDS-ANSWERED", ledger, i, "TC_K_53",
                                   f"no SetChargingProfile with a TxProfile for EVSE {evse} within {needs_s:g} s",
                                   connector=evse, t_end=deadline)


# -- the controller over time: flapping, and faults ----------------------------------------

#: OSCILLATION counts limit changes in every window of this length ending at a change (a rolling hour: a burst
#: that straddles a clock hour is not split in two halves that each pass).
OSCILLATION_WINDOW_S = 3600.0

#: Limit changes quoted as evidence per OSCILLATION finding (the first ones of the burst).
EVIDENCE_CHANGES = 20


@dataclass(frozen=True)
class _LimitChange:
    t: float
    from_a: float | None
    to_a: float | None
    reversal: bool  # the opposite direction to the connector's previous change in the same session


def _limit_changes(samples: list[tuple], min_step_a: float) -> list[_LimitChange]:
    """The changes of a connector's applied limit, session by session (a new EV's first limit is no change).

    A change counts once the limit is ``min_step_a`` or more away from where it last counted (its level at the
    session's start, or after its last counted change), so jitter below the step is no change, and a slow drift
    counts once per step. A profile limit appearing or vanishing (None: no profile limits the connector) counts.
    """
    changes: list[_LimitChange] = []
    level = direction = None
    previous_ev: object = object()  # matches no EV id, so the first sample starts a session
    for sample in samples:
        t, limit, ev = sample[0], sample[1], sample[9]
        limit = limit if _is_number(limit) else None
        if ev != previous_ev:
            previous_ev, level, direction = ev, limit, None
            continue
        if limit is None and level is None:
            continue
        if limit is not None and level is not None and abs(limit - level) < min_step_a:
            continue
        step = 0 if limit is None or level is None else (1 if limit > level else -1)
        changes.append(_LimitChange(t, level, limit, bool(step and direction and step != direction)))
        level, direction = limit, step or direction
    return changes


def _bursts(ts: list[float], bound: int, window_s: float) -> Iterator[tuple[int, int, int, int]]:
    """Maximal runs of changes in windows of ``window_s`` holding more than ``bound`` changes, as ``(first, last,
    peak, peak_first)``: changes ``first..last`` (indexes into ``ts``), the most in one window, and the first
    change of that window. Windows that share a change merge into one run."""
    burst: list[int] | None = None
    first = 0
    for k, t in enumerate(ts):
        while t - ts[first] >= window_s:
            first += 1
        n = k - first + 1
        if n <= bound:
            continue
        if burst is not None and first <= burst[1]:
            burst[1] = k
            if n > burst[2]:
                burst[2], burst[3] = n, first
            continue
        if burst is not None:
            yield tuple(burst)
        burst = [first, k, n, first]
    if burst is not None:
        yield tuple(burst)


def _meter_config(trace: Trace) -> dict | None:
    return next((e["detail"] for e in trace.events if e["kind"] == "meter_config"), None)


@_check("OSCILLATION", "measured",
        "limits do not flap: profile changes per station per hour ≤ bound",
        "SmartEVSE-3#123, evcc#19166")
def _oscillation(trace: Trace) -> Iterator[Finding]:
    """Per connector, the changes of the composite limit the station actually applied (``limit_a`` of its samples;
    see :func:`_limit_changes` for what counts as one), counted in a rolling hour: each burst of changes in which
    some hour holds more than ``max_limit_changes_per_hour`` is one finding, from its first change to its last.
    The evidence quotes the changes (time, from, to), how many reversed the direction of the one before — the mark
    of a loop chasing its own effect, as a controller faster than its meter does — and the meter's configuration
    (``meter_config`` event) when the trace has it."""
    params = _params(trace)
    bound, min_step_a = params["max_limit_changes_per_hour"], params["oscillation_min_step_a"]
    meter = _meter_config(trace)
    for (station, connector), samples in trace.stations.items():
        changes = _limit_changes(samples, min_step_a)
        ts = [c.t for c in changes]
        for first, last, peak, peak_first in _bursts(ts, bound, OSCILLATION_WINDOW_S):
            burst = changes[first:last + 1]
            reversals = sum(c.reversal for c in burst)
            yield Finding(
                "OSCILLATION",
                f"{station}/{connector} limit changed {peak} times within an hour (bound {bound}, steps of "
                f"{min_step_a:g} A or more); {len(burst)} changes over {_seconds(ts[last] - ts[first])} s, "
                f"{reversals} of them reversing the one before",
                ts[first], ts[last], station=station, connector=connector, measured=float(peak),
                allowed=float(bound), unit="changes/h",
                evidence={"changes": len(burst), "reversals": reversals,
                          "worst_hour": [ts[peak_first], ts[peak_first] + OSCILLATION_WINDOW_S],
                          "first_changes": [{"t": c.t, "from_a": c.from_a, "to_a": c.to_a}
                                            for c in burst[:EVIDENCE_CHANGES]],
                          "meter": meter})


@dataclass(frozen=True)
class _Outage:
    """A window in which the controller lost something it relies on: a meter (``meter_fault`` until its
    ``meter_restored``) or its link to the stations (``controller_link_lost`` until ``controller_link_restored``).
    ``station`` is the sub-meter's station, or the station whose link dropped (None: the site meter; every
    station's link)."""

    kind: str  # "meter" | "link"
    start: float
    end: float
    station: str | None
    unit: int | None  # the meter's Modbus unit id, when the event names it
    fault: str | None  # the meter fault

    def describe(self) -> str:
        if self.kind == "link":
            return "the controller link to " + (self.station or "every station") + " lost"
        meter = f"sub-meter of {self.station}" if self.station is not None else "site meter"
        unit = f" (unit {self.unit})" if self.unit is not None else ""
        return f"{meter}{unit} {self.fault or 'faulty'}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "start": self.start, "end": self.end, "station": self.station,
                "unit": self.unit, "fault": self.fault}


_OUTAGE_EVENTS = {"meter_fault": ("meter", True), "meter_restored": ("meter", False),
                  "controller_link_lost": ("link", True), "controller_link_restored": ("link", False)}


def _outages(trace: Trace) -> list[_Outage]:
    """The outage windows of the trace's events, in order of start. A meter's window ends at the ``meter_restored``
    naming its unit (or, when the restore names none, its station), at a new ``meter_fault`` of the same meter
    (the fault changed: a new window), or at the end of the run (its last record, held for one step); a link's
    likewise by station. Events whose time is not a number are ignored."""
    end_t = _end_t(trace) + _step_s(trace)
    done: list[_Outage] = []
    open_: list[_Outage] = []
    events = sorted((e for e in trace.events if e["kind"] in _OUTAGE_EVENTS and _is_number(e["t"])),
                    key=lambda e: e["t"])
    for event in events:
        kind, starts = _OUTAGE_EVENTS[event["kind"]]
        station = event["station"] if isinstance(event["station"], str) else None
        unit = _whole(event["detail"].get("unit")) if kind == "meter" else None
        fault = event["detail"].get("fault")
        # The same meter: the same unit when both name one, else the same station.
        ends = [o for o in open_ if o.kind == kind and (o.unit == unit if unit is not None and o.unit is not None
                                                        else o.station == station)]
        for outage in ends:
            open_.remove(outage)
            done.append(_Outage(kind, outage.start, event["t"], outage.station, outage.unit, outage.fault))
        if starts:
            open_.append(_Outage(kind, event["t"], end_t, station, unit,
                                 None if fault is None else str(fault)))
    return sorted(done + open_, key=lambda o: o.start)


def _merged(outages: list[_Outage]) -> Iterator[tuple[float, float, list[_Outage]]]:
    """Overlapping or touching outage windows as one ``(start, end, outages)``: the site is at risk throughout."""
    group: list[_Outage] = []
    start = end = 0.0
    for outage in outages:
        if group and outage.start <= end:
            group.append(outage)
            end = max(end, outage.end)
            continue
        if group:
            yield start, end, group
        group, start, end = [outage], outage.start, outage.end
    if group:
        yield start, end, group


def _reads_seen(trace: Trace, start: float, end: float, outages: list[_Outage]) -> dict:
    """What the controller read from the faulty meters of ``outages`` from ``start`` to ``end``: requests per
    outcome, and the oldest values it was served [s] (None: never served any)."""
    units = {o.unit for o in outages if o.kind == "meter"}
    if not units:
        return {}
    counts: dict[str, int] = {}
    oldest = None
    for t, unit, _, _, _, outcome, age_s in trace.meter_reads:
        if not (_is_number(t) and start <= t < end) or (None not in units and unit not in units):
            continue
        counts[str(outcome)] = counts.get(str(outcome), 0) + 1
        if _is_number(age_s) and (oldest is None or age_s > oldest):
            oldest = age_s
    return {"meter_reads": counts, "oldest_value_served_s": oldest}


#: [A] An applied limit this close above the failsafe is at the failsafe (W→A conversions, decimal rounding).
FAILSAFE_SLACK_A = 0.05


def _failsafe_engines(trace: Trace, outages: list[_Outage]) -> list[dict[str, ProfileEngine]]:
    """Per link outage, each station's profiles other than TxProfiles, as accepted by the time the link dropped
    (replayed from the messages), loaded into a profile engine: what the station falls back to without its
    controller. A profile the engine cannot parse is left out (PROFILE-VALID judges it)."""
    stations = {s.get("id"): s for s in trace.meta.get("stations") or [] if isinstance(s, dict)}
    voltage_v = trace.meta.get("voltage_v")
    voltage_v = voltage_v if _is_number(voltage_v) and voltage_v > 0 else DEFAULT_VOLTAGE_V
    ledger = _Ledger(trace)
    snapshots: list[dict[str, dict[int, _Installed]]] = []
    walk = ledger.walk()
    # The ledger applies a message when asked for the next one: ``upcoming`` is the first message not applied.
    upcoming = next(walk, None)
    for outage in outages:
        while upcoming is not None and upcoming[1]["t"] <= outage.start:
            upcoming = next(walk, None)
        snapshots.append({station: dict(installed) for station, installed in ledger.installed.items()})
    engines = []
    for snapshot in snapshots:
        by_station = {}
        for station, installed in snapshot.items():
            dialect = ledger.dialect(station)
            config = stations.get(station, {})
            connectors = max([_whole(config.get("connectors")) or 1] + [p.connector for p in installed.values()])
            phases = config.get("phases") if config.get("phases") in (1, 2, 3) else 3
            engine = ProfileEngine(connectors, voltage_v, phases, version="2.0.1" if dialect is _V201 else "1.6")
            parse = parse_profile_201 if dialect is _V201 else parse_profile
            for p in installed.values():
                if p.profile.purpose == TX_PROFILE:
                    continue
                try:
                    engine.set_profile(p.connector, parse(p.profile.wire), None)
                except ProfileError:
                    continue
            by_station[station] = engine
        engines.append(by_station)
    return engines


@_check("OFFLINE-SAFE", "measured",
        "when the controller link drops, stations fall back to their default/failsafe limit and the site stays "
        "within its limit",
        "seed: cloud as single point of failure")
def _offline_safe(trace: Trace) -> Iterator[Finding]:
    """Two rules over the outage windows (:func:`_outages`): a meter fault (``meter_fault`` → ``meter_restored``,
    or the end of the run) and a lost controller link (``controller_link_lost`` → ``controller_link_restored``).

    - The site: within the windows (overlapping ones merged), each excursion per phase above
      ``limit_a + site_tolerance_a`` lasting — inside the window — longer than ``settle_s``, as SITE-LIMIT judges
      it; the finding names the outage(s) and, for a meter, what the controller read from it meanwhile
      (``meter_reads``: requests per outcome, the oldest values served).
    - The stations, for a lost link: from ``station_response_s`` after the loss to the window's end, each run of
      samples whose applied limit is above the failsafe — the limit the station's own profiles give without
      TxProfiles (its TxDefaultProfile under its max profile), as accepted by the time of the loss and evaluated
      at each sample. A station without such a profile has nothing to fall back to: only the site rule judges it.
    """
    outages = _outages(trace)
    if not outages:
        return
    params = _params(trace)
    settle_s, tolerance_a, response_s = params["settle_s"], params["site_tolerance_a"], params["station_response_s"]
    site = trace.site
    ts = [s[0] for s in site]
    end_t = ts[-1] + _step_s(trace) if ts else 0.0
    excursions = []  # per phase: (first, stop, t_end) of each run of samples over the limit
    for column in (1, 2, 3):
        over = [s[7] and s[4] is not None and s[column] is not None and s[column] > s[4] + tolerance_a for s in site]
        excursions.append(list(_runs(ts, over, end_t)))
    for start, end, group in _merged(outages):
        for column, phase in enumerate(PHASES, start=1):
            for first, stop, run_end in excursions[column - 1]:
                t0, t1 = max(ts[first], start), min(run_end, end)
                if t1 - t0 <= settle_s:
                    continue
                during = [o for o in group if o.start < t1 and o.end > t0]
                causes = "; ".join(o.describe() for o in during)
                # The samples that hold inside the window: from the one in force at t0.
                inside = site[max(first, bisect.bisect_right(ts, t0, first, stop) - 1):
                              bisect.bisect_left(ts, t1, first, stop)]
                worst = max(inside, key=lambda s: s[column] - s[4])
                measured, allowed = worst[column], worst[4]
                yield Finding(
                    "OFFLINE-SAFE",
                    f"{phase} at {measured:.1f} A > {allowed:.1f} A for {_seconds(t1 - t0)} s while {causes} "
                    f"(settle {settle_s:g} s)",
                    t0, t1, phase=phase, measured=round(measured, 3), allowed=round(allowed, 3),
                    evidence={"outages": [o.to_json() for o in during],
                              **_reads_seen(trace, min(o.start for o in during), t1, during),
                              "worst_t": worst[0], "threshold_a": round(allowed + tolerance_a, 3),
                              "samples": [{"t": s[0], "current_a": s[column], "limit_a": s[4]}
                                          for s in inside[:EVIDENCE_SAMPLES]]})
    links = [o for o in outages if o.kind == "link"]
    if links:
        yield from _failsafe_findings(trace, links, response_s)


def _failsafe_findings(trace: Trace, links: list[_Outage], response_s: float) -> Iterator[Finding]:
    start_epoch = trace.meta.get("start_epoch")
    start_epoch = start_epoch if _is_number(start_epoch) else 0.0
    for outage, engines in zip(links, _failsafe_engines(trace, links)):
        due = outage.start + response_s
        for (station, connector), samples in trace.stations.items():
            engine = engines.get(station)
            if engine is None or (outage.station is not None and station != outage.station):
                continue
            if _whole(connector) is None or not 0 < connector <= engine.connectors:
                continue
            # (t, applied, failsafe) of each sample due at the failsafe; a session's Relative profiles start at its
            # first sample.
            judged = []
            session_start, previous_ev = None, object()
            for sample in samples:
                if sample[9] != previous_ev:
                    previous_ev, session_start = sample[9], sample[0]
                if not due <= sample[0] < outage.end:
                    continue
                failsafe = engine.limit_a(connector, start_epoch + sample[0], start_epoch + session_start)
                judged.append((sample[0], sample[1] if _is_number(sample[1]) else None, failsafe))
            over = [failsafe is not None and (applied is None or applied > failsafe + FAILSAFE_SLACK_A)
                    for _, applied, failsafe in judged]
            judged_ts = [t for t, _, _ in judged]
            end_t = min(outage.end, judged_ts[-1] + _step_s(trace)) if judged_ts else outage.end
            for first, stop, t_end in _runs(judged_ts, over, end_t):
                t, applied, failsafe = judged[first]
                shown = "no limit" if applied is None else f"limit {applied:g} A"
                yield Finding(
                    "OFFLINE-SAFE",
                    f"{station}/{connector} at {shown}, not its failsafe {failsafe:g} A, "
                    f"{_seconds(t - outage.start)} s after {outage.describe()} (response {response_s:g} s)",
                    t, t_end, station=station, connector=connector,
                    measured=None if applied is None else round(applied, 3), allowed=round(failsafe, 3),
                    evidence={"outage": outage.to_json(),
                              "samples": [{"t": t, "limit_a": a, "failsafe_a": f}
                                          for t, a, f in judged[first:min(stop, first + EVIDENCE_SAMPLES)]]})


# -- metrics --------------------------------------------------------------------------------

#: Demand charges bill the highest average over fixed 15-minute intervals (SMART_CHARGING §2).
BILLING_INTERVAL_S = 900

#: An EV is "short" when it got less than this share of what physics allowed it.
SHORT_SHARE = 0.99


def metrics(trace: Trace) -> dict:
    """The run's numbers, floats rounded to 3 decimals.

    - ``energy_delivered_kwh``: the vehicles table, plus — for EVs without a row there (a run that
      crashed before they left) — the last ``energy_kwh`` of their station samples.
    - ``energy_requested_kwh``, ``energy_deliverable_kwh``: sums over the vehicles table.
    - ``peak_site_current_a`` (any phase) and ``site_limit_at_peak_a`` (the limit at that sample).
    - ``peak_15min_kw``: site power averaged over 15-minute intervals aligned to the wall-clock
      hour (via ``meta["start_epoch"]``); a partial interval averages the samples it has.
    - ``breaker_trips``, ``vehicles_short`` (< 99 % of deliverable), ``messages``: counts.
    """
    vehicles = trace.vehicles
    delivered = sum((v["delivered_kwh"] or 0.0 for v in vehicles), 0.0)
    with_row = {v["ev"] for v in vehicles}
    last_energy: dict[tuple, float] = {}
    for key, samples in trace.stations.items():
        # EV ids change rarely along a connector: walk runs of one EV (in C), keep each run's last.
        for ev, run in groupby(samples, itemgetter(9)):
            if ev is not None and ev not in with_row:
                energy_kwh = deque(run, maxlen=1)[0][7]
                if energy_kwh is not None:
                    last_energy[key, ev] = energy_kwh
    delivered += sum(last_energy.values())

    peak_a, limit_at_peak_a = 0.0, None
    interval_sum_w: dict[int, float] = {}
    interval_n: dict[int, int] = {}
    start_epoch = trace.meta.get("start_epoch")
    start_epoch = start_epoch if _is_number(start_epoch) else 0.0
    for t, i1, i2, i3, limit_a, power_w, _, _ in trace.site:
        top = max(i1, i2, i3)
        if top > peak_a:
            peak_a, limit_at_peak_a = top, limit_a
        if power_w is not None:
            interval = math.floor((start_epoch + t) / BILLING_INTERVAL_S)
            interval_sum_w[interval] = interval_sum_w.get(interval, 0.0) + power_w
            interval_n[interval] = interval_n.get(interval, 0) + 1
    peak_15min_w = max((interval_sum_w[k] / interval_n[k] for k in interval_sum_w), default=0.0)

    return {
        "energy_delivered_kwh": round(delivered, 3),
        "energy_requested_kwh": round(sum((v["requested_kwh"] or 0.0 for v in vehicles), 0.0), 3),
        "energy_deliverable_kwh": round(sum((v["deliverable_kwh"] or 0.0 for v in vehicles), 0.0), 3),
        "peak_site_current_a": round(peak_a, 3),
        "site_limit_at_peak_a": None if limit_at_peak_a is None else round(limit_at_peak_a, 3),
        "peak_15min_kw": round(peak_15min_w / 1000.0, 3),
        "breaker_trips": sum(1 for e in trace.events if e["kind"] == "breaker_trip"),
        "vehicles_short": sum(1 for v in vehicles
                              if (v["deliverable_kwh"] or 0.0) > 0
                              and (v["delivered_kwh"] or 0.0) < SHORT_SHARE * v["deliverable_kwh"]),
        "messages": len(trace.messages),
    }
