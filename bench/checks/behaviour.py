"""The controller over time: limits that flap (OSCILLATION) and what the site drew while the meter or the
controller link was gone (OFFLINE-SAFE)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

from bench.checks.core import (
    DEFAULT_VOLTAGE_V,
    EVIDENCE_SAMPLES,
    PHASES,
    Finding,
    _check,
    _end_t,
    _is_number,
    _params,
    _runs,
    _seconds,
    _step_s,
)
from bench.checks.ledger import _V201, TX_PROFILE, _Installed, _Ledger, _whole
from bench.trace import Trace
from emulators.profiles import (
    ProfileEngine,
    ProfileError,
    parse_profile,
    parse_profile_201,
)

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
