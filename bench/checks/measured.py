"""Measured checks of what the site and each station drew: SITE-LIMIT, BREAKER, STATION-LIMIT, MAX-PROFILE-SUM."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from operator import itemgetter

from bench.checks.core import (
    EVIDENCE_SAMPLES,
    PHASES,
    Finding,
    _check,
    _is_number,
    _params,
    _runs,
    _seconds,
    _step_s,
)
from bench.trace import Trace

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
