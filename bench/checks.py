"""The verdict: the check catalogue of SMART_CHARGING.md §3 as pure functions of a Trace.

Each check takes a loaded :class:`~bench.trace.Trace` and returns a :class:`CheckResult`; no
check does I/O, reads the clock or looks at anything but the trace, so re-judging a file gives
the same verdict (DESIGN.md, principle 4). Check parameters come from the trace's
``meta["checks"]`` (the scenario's ``[checks]``, whose defaults — ``bench.scenario.Checks`` —
also fill any gaps). :func:`metrics` computes the run's numbers (energy, peaks) from the
same trace.

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
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter

from bench.clock import iso_z
from bench.scenario import Checks, Site
from bench.trace import Trace

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
