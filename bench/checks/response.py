"""Measured checks of how the controller answers a change on the site: capacity an EV frees (REALLOCATE) and a grid
signal lowering or restoring the site limit (DR-RESPONSE).

Both judge at the site samples' instants, with each connector's sample in force then (a sample holds until the
connector's next one, its last for one physics step), so what the EVs were offered and drew lines up with what the
site drew. A *session* is one EV's run of samples on one connector.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter

from bench.checks.core import (
    DEFAULT_VOLTAGE_V,
    EVIDENCE_SAMPLES,
    Finding,
    _check,
    _is_number,
    _params,
    _seconds,
    _step_s,
)
from bench.trace import Trace

#: An EV follows its offer when it draws within this much of it: [A], or this share of the offer if that is more.
#: Further below, it takes less than it could — a full or tapering battery, a weaker on-board charger. The same
#: "1 A or 10 %" is REALLOCATE's tolerance on freed capacity left unused and on a site's distance under its limit.
#: ``SLACK_A`` is also the least room below what it could draw that makes an EV held back.
SLACK_A = 1.0
SLACK_SHARE = 0.1


def _slack(current_a: float) -> float:
    return max(SLACK_A, SLACK_SHARE * current_a)


def _number(x: object) -> float:
    """A recorded current or power as a number: a hand-made trace's None (or garbage) counts as nothing."""
    return float(x) if _is_number(x) else 0.0


# -- sessions, and the instants they hold at --------------------------------------------------

@dataclass(frozen=True)
class _Session:
    station: str
    connector: int
    ev: str
    samples: list[tuple]  # the trace's station samples, see bench.trace.Trace
    end_t: float  # when its last sample stops holding: the connector's next sample, or one step on


def _sessions(trace: Trace, step_s: float) -> list[_Session]:
    sessions = []
    for (station, connector), samples in trace.stations.items():
        runs = [list(run) for _, run in groupby(samples, itemgetter(9))]
        for k, run in enumerate(runs):
            end_t = run[-1][0] + step_s
            if k + 1 < len(runs):
                end_t = min(end_t, runs[k + 1][0][0])
            if run[0][9] is not None:
                sessions.append(_Session(station, connector, run[0][9], run, end_t))
    return sessions


def _spread(ts: Sequence[float], session: _Session, values: Sequence[float], into: list[float]) -> None:
    """Add ``values[j]`` (one per sample of ``session``) to ``into[i]`` at each instant ``ts[i]`` sample j holds at."""
    samples = session.samples
    n = len(ts)
    i = bisect.bisect_left(ts, samples[0][0])
    for j, value in enumerate(values):
        until = samples[j + 1][0] if j + 1 < len(samples) else session.end_t
        while i < n and ts[i] < until:
            into[i] += value
            i += 1


def _full_since(trace: Trace) -> dict[tuple[str, str], float]:
    """When each EV (by station and EV id) reported itself full: its first ``vehicle_full`` event."""
    full: dict[tuple[str, str], float] = {}
    for event in trace.events:
        ev = event["detail"].get("ev")
        if event["kind"] == "vehicle_full" and ev is not None and _is_number(event["t"]):
            full.setdefault((event["station"], ev), event["t"])
    return full


# -- REALLOCATE -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _EVState:
    """What REALLOCATE reads of one station sample: whether the EV is held below what it could draw, and by how much."""

    t: float
    draw_a: float  # highest phase current
    offer_a: float
    could_a: float  # what it could draw: the least of its station's and on-board charger's max and its observed ceiling
    held_a: float  # how far below could_a the controller holds it [A]; 0: not held back
    paused: bool  # held at an offer below min_current_a, where it cannot charge at all
    under: bool  # draws clearly less than offered
    steady: bool  # its offer has been unchanged for the EV response time: a draw below it is the EV's own doing
    full: bool  # said it is full (vehicle_full) and has not drawn since


def _ev_states(session: _Session, hardware_a: float | None, full_t: float | None, response_s: float,
               min_current_a: float) -> Iterator[_EVState]:
    """The session's samples as :class:`_EVState`, in order.

    An EV's ceiling shows when it draws clearly less than an offer it has had for ``response_s``: a draw below an
    offer just raised is the EV's lag, not its limit. The latest such draw is its ceiling from then on (a tapering
    battery's falls). It *follows* its offer when it draws within the slack of it, or is paused (an offer below
    ``min_current_a``). It is *held back* when it follows an offer more than the slack of what it could draw below
    that and is not full; paused only counts when a profile limit below ``min_current_a`` paused it, not when the
    station offers nothing for want of a transaction or of power.
    """
    hardware_a = math.inf if hardware_a is None else hardware_a
    ceiling_a = math.inf  # not seen yet
    offer_since, last_offer = -math.inf, None
    for sample in session.samples:
        t, limit_a, offer_a = sample[0], sample[1], sample[2]
        draw_a = max(sample[3], sample[4], sample[5])
        if offer_a != last_offer:
            offer_since, last_offer = t, offer_a
        if full_t is not None and t > full_t and draw_a >= SLACK_A:
            full_t = None  # it draws again: its needs changed (ISO 15118 renegotiation)
        full = full_t is not None and t >= full_t
        steady = t - offer_since >= response_s
        paused = offer_a < min_current_a
        under = not paused and draw_a < offer_a - _slack(offer_a)
        if under and steady and not full:
            ceiling_a = draw_a
        could_a = min(hardware_a, ceiling_a)
        held = (not full and not under
                and could_a - offer_a > (_slack(could_a) if could_a < math.inf else SLACK_A)
                and (not paused or (_is_number(limit_a) and limit_a < min_current_a)))
        yield _EVState(t, draw_a, offer_a, could_a, could_a - offer_a if held else 0.0, paused and held, under,
                       steady, full)


@dataclass(frozen=True)
class _Moment:
    """Capacity an EV freed: from ``t0``; the others' offers are judged ``reallocate_s`` after ``judged_from``."""

    t0: float
    judged_from: float
    freed_a: float
    causes: tuple[str, ...]


def _moments(session: _Session, states: list[_EVState], full_t: float | None, end_t: float,
             response_s: float) -> Iterator[_Moment]:
    """Where ``session``'s EV frees capacity. It leaves (its samples end before the run does): what it drew last.
    It says it is full: what it drew before. It draws clearly less than an offer it has had for the EV response
    time, and keeps doing so for that long again: the largest gap between offer and draw in that time, judged from
    its end (a draw that dips for a moment frees nothing)."""
    where = f"{session.station}/{session.connector}"
    if session.end_t < end_t - 1e-9:
        yield _Moment(session.end_t, session.end_t, states[-1].draw_a, (f"{session.ev} left {where}",))
    if full_t is not None:
        before = [s for s in states if s.t < full_t]
        if before and session.samples[0][0] <= full_t < session.end_t:
            yield _Moment(full_t, full_t, before[-1].draw_a, (f"{session.ev} on {where} was full",))
    k = 0
    while k < len(states):
        if not states[k].under or states[k].full:
            k += 1
            continue
        stop = k
        while stop < len(states) and states[stop].under and not states[stop].full:
            stop += 1
        run_end = states[stop].t if stop < len(states) else session.end_t
        first = next((j for j in range(k, stop) if states[j].steady), None)
        if first is not None and run_end - states[first].t >= response_s:
            t0 = states[first].t
            within = [s for s in states[first:stop] if s.t <= t0 + response_s]
            worst = max(within, key=lambda s: s.offer_a - s.draw_a)
            yield _Moment(t0, t0 + response_s, worst.offer_a - worst.draw_a,
                          (f"{session.ev} on {where} drew {worst.draw_a:.1f} A of {worst.offer_a:.1f} A offered",))
        k = stop


def _merged(moments: list[_Moment]) -> list[_Moment]:
    """Moments at the same instants as one (two EVs leaving together free their sum)."""
    merged: dict[tuple[float, float], _Moment] = {}
    for m in moments:
        key = (m.t0, m.judged_from)
        other = merged.get(key)
        merged[key] = m if other is None else _Moment(m.t0, m.judged_from, other.freed_a + m.freed_a,
                                                      other.causes + m.causes)
    return sorted(merged.values(), key=lambda m: (m.t0, m.judged_from))


def _holding_back_can_pay(tariff: object) -> bool:
    """Whether the trace's tariff rewards not using capacity now: prices that change, or a demand charge."""
    if not isinstance(tariff, dict):
        return False
    prices = {p[1] for p in tariff.get("import_prices") or [] if isinstance(p, list | tuple) and len(p) == 2}
    charge = tariff.get("demand_charge_per_kw")
    return len(prices) > 1 or (_is_number(charge) and charge > 0)


@_check("REALLOCATE", "measured",
        "capacity freed by a finished or under-drawing EV is offered to others within N s",
        "errata §2.46 (100 A → 94 A → 47/47 A → 94 A); EVerest #2628")
def _reallocate(trace: Trace) -> Iterator[Finding]:
    """Capacity is freed when an EV leaves, says it is full, or draws clearly less than its offer for a while
    (:func:`_moments`); ``reallocate_s`` later the EVs held back must have been offered it.

    At each site instant, what the controller could still hand out is the site's headroom (its limit minus its
    highest phase; none while the breaker is open), up to the sum of what the held-back EVs could take more
    (:func:`_ev_states`; a paused EV's only when the headroom reaches ``min_current_a``, the least it can charge at).
    Of that, what exceeds the amount already unused just before the moment — at most what was freed — is the freed
    capacity left unused. It is a finding when, at the deadline, that is more than 1 A or 10 % of what was freed
    (whichever is more) *and* the site is more than 1 A or 10 % of its limit below it: a site at its limit, within a
    controller's margin, passes, as does one whose other EVs are at their own or their station's max or that has no
    other EV. Moments freeing no more than that slack of the limit are not judged: leftovers that small are a
    matter of utilisation, not of reallocation. Nor is capacity already unused before the moment; and headroom is
    taken on the worst phase, so capacity a 1-phase EV frees on another phase is not judged either. The finding
    runs from the moment until the capacity is taken up (or the run ends) and names the EVs still held back at the
    deadline.
    Not judged on a run with a tariff whose import price varies or that charges for the peak: there, keeping
    capacity for cheaper hours or a lower 15-minute peak is what a smart controller is for, and whether the EVs
    still got their energy is what "EVs short" tells.
    """
    if _holding_back_can_pay(trace.meta.get("tariff")):
        return

    site = trace.site
    if not site:
        return
    params = _params(trace)
    reallocate_s, response_s = params["reallocate_s"], params["station_response_s"]
    min_current_a = params["min_current_a"]
    step_s = _step_s(trace)
    ts = [s[0] for s in site]
    end_t = ts[-1] + step_s
    hardware_a = {s.get("id"): s.get("max_current_a") for s in trace.meta.get("stations") or [] if isinstance(s, dict)}
    on_board_a = {v.get("id"): v.get("max_current_a") for v in trace.meta.get("vehicles") or [] if isinstance(v, dict)}
    full_since = _full_since(trace)
    sessions = _sessions(trace, step_s)

    def states_of(session: _Session) -> list[_EVState]:
        limits = [a for a in (hardware_a.get(session.station), on_board_a.get(session.ev)) if _is_number(a)]
        hw = min(limits) if limits else None
        return list(_ev_states(session, hw if _is_number(hw) else None, full_since.get((session.station, session.ev)),
                               response_s, min_current_a))

    held_a, paused_a = [0.0] * len(ts), [0.0] * len(ts)
    moments: list[_Moment] = []
    for session in sessions:
        states = states_of(session)
        _spread(ts, session, [0.0 if s.paused else s.held_a for s in states], held_a)
        _spread(ts, session, [s.held_a if s.paused else 0.0 for s in states], paused_a)
        moments += _moments(session, states, full_since.get((session.station, session.ev)), end_t, response_s)
    headroom = [s[4] - max(_number(s[1]), _number(s[2]), _number(s[3])) if s[7] and _is_number(s[4]) else None
                for s in site]
    usable = [0.0 if h is None else max(0.0, min(h, held + (paused if h >= min_current_a else 0.0)))
              for h, held, paused in zip(headroom, held_a, paused_a)]

    for moment in _merged(moments):
        freed_a = moment.freed_a
        deadline = moment.judged_from + reallocate_s
        before = bisect.bisect_left(ts, moment.t0) - 1
        limit_a = site[min(before + 1, len(ts) - 1)][4]
        if not _is_number(limit_a) or freed_a <= _slack(limit_a) or deadline >= end_t:
            continue  # no limit, less freed than a site may keep under it, or the run ended before the deadline
        baseline_a = usable[before] if before >= 0 else 0.0
        at = bisect.bisect_right(ts, deadline) - 1
        unused_a = _withheld(freed_a, baseline_a, usable[at], headroom[at], site[at][4])
        if unused_a is None:
            continue
        back = next((i for i in range(at + 1, len(ts))
                     if _withheld(freed_a, baseline_a, usable[i], headroom[i], site[i][4]) is None), None)
        t_end = ts[back] if back is not None else end_t
        held = []  # (session, its state) of the EVs held back at the deadline
        for session in sessions:
            if session.samples[0][0] <= ts[at] < session.end_t:
                state = states_of(session)[bisect.bisect_right([s[0] for s in session.samples], ts[at]) - 1]
                if state.held_a > 0:
                    held.append((session, state))
        stations = sorted({session.station for session, _ in held})
        names = ", ".join(f"{session.station}/{session.connector} at {state.offer_a:.1f} A"
                          + (f" (could take {state.could_a:.1f} A)" if math.isfinite(state.could_a) else "")
                          for session, state in held)
        limit_a = site[at][4]  # the deadline's, which the message quotes
        yield Finding(
            "REALLOCATE",
            f"{freed_a:.1f} A freed ({'; '.join(moment.causes)}) not reallocated: {unused_a:.1f} A of it unused "
            f"{_seconds(deadline - moment.t0)} s later, the site {headroom[at]:.1f} A under its {limit_a:g} A limit, "
            f"while {names} held back; unused for {_seconds(t_end - moment.t0)} s (reallocate {reallocate_s:g} s, "
            f"tolerance {_slack(freed_a):.1f} A freed, {_slack(limit_a):.1f} A under the limit)",
            moment.t0, t_end, station=stations[0] if len(stations) == 1 else None,
            connector=held[0][0].connector if len(held) == 1 else None,
            measured=round(unused_a, 3), allowed=round(_slack(freed_a), 3),
            evidence={"freed_a": round(freed_a, 3), "causes": list(moment.causes), "deadline_t": deadline,
                      "unused_before_a": round(baseline_a, 3), "headroom_a": round(headroom[at], 3),
                      "held": [{"station": session.station, "connector": session.connector, "ev": session.ev,
                                "offered_a": state.offer_a, "drawing_a": state.draw_a,
                                "could_a": state.could_a if math.isfinite(state.could_a) else None,
                                "room_a": round(state.held_a, 3)} for session, state in held],
                      "samples": [{"t": site[i][0], "currents_a": list(site[i][1:4]), "limit_a": site[i][4],
                                   "unused_a": round(min(freed_a, usable[i] - baseline_a), 3)}
                                  for i in range(at, min(at + EVIDENCE_SAMPLES, len(ts)))]})


def _withheld(freed_a: float, baseline_a: float, usable_a: float, headroom_a: float | None,
              limit_a: float) -> float | None:
    """The capacity freed (``freed_a``) still unused at an instant, if that is a fault — more than the slack of
    what was freed while the site is more than the slack of its limit under it; None if it is not."""
    unused_a = min(freed_a, usable_a - baseline_a)
    if unused_a > _slack(freed_a) and headroom_a is not None and headroom_a > _slack(limit_a):
        return unused_a
    return None


# -- DR-RESPONSE ----------------------------------------------------------------------------

@_check("DR-RESPONSE", "measured",
        "during a demand-response event the site is at or below the requested level within its ramp time",
        "seed: demand response; grid-limit smoke test (SMART_CHARGING §2)")
def _dr_response(trace: Trace) -> Iterator[Finding]:
    """Each ``site_limit`` event (a grid signal; ``detail.value_a`` A per phase) against the limit before it (the
    previous event's, else the run's ``site_limit_a``, else the site samples'), judged until the next one or the end
    of the run:

    - Lowered: the site must be at or below the new level within ``dr_ramp_s`` — every phase at most the level plus
      ``site_tolerance_a``; for a level of 0, site power below ``dr_zero_w``. When the building alone draws more
      than the level, no controller of EVs can comply: then only the EV part is judged, and the EVs must be off
      (their power below ``dr_zero_w``). An open breaker is a site at 0.
    - Raised (restored) while an EV that is not full is plugged in, and the new level leaves room for
      ``dr_restore_w`` above the building (and at least ``min_current_a`` per phase): the EVs must draw more than
      ``dr_restore_w`` within ``dr_restore_s``. The EVs' power, not the site's, since the building's would pass
      alone; once no EV that wants energy is left, there is nothing to wait for.

    The response time runs from the event to the first site sample that meets the level; the finding quotes it (or
    says the level was never met while it held). A level that held for no longer than its ramp or restore time is
    not judged. Staying at a lowered level afterwards is SITE-LIMIT's to judge."""
    site = trace.site
    events = sorted((e for e in trace.events if e["kind"] == "site_limit" and _is_number(e["t"])),
                    key=itemgetter("t"))
    if not site or not events:
        return
    params = _params(trace)
    ramp_s, zero_w, tolerance_a = params["dr_ramp_s"], params["dr_zero_w"], params["site_tolerance_a"]
    restore_s, restore_w = params["dr_restore_s"], params["dr_restore_w"]
    step_s = _step_s(trace)
    ts = [s[0] for s in site]
    end_t = ts[-1] + step_s
    voltage_v = trace.meta.get("voltage_v")
    voltage_v = voltage_v if _is_number(voltage_v) and voltage_v > 0 else DEFAULT_VOLTAGE_V
    phases = trace.meta.get("phases") if trace.meta.get("phases") in (1, 3) else 3

    ev_power_w, wanting = [0.0] * len(ts), [0.0] * len(ts)
    full_since = _full_since(trace)
    for session in _sessions(trace, step_s):
        full_t = full_since.get((session.station, session.ev))
        _spread(ts, session, [s[6] for s in session.samples], ev_power_w)
        _spread(ts, session, [0.0 if full_t is not None and s[0] >= full_t else 1.0 for s in session.samples],
                wanting)

    def worst_a(i: int) -> float:
        return max(_number(site[i][1]), _number(site[i][2]), _number(site[i][3]))

    def judged(i: int, level: float) -> str:
        """What meets a lowered level at instant i: the EVs alone when the building is over it."""
        if _number(site[i][6]) > level:
            return "ev_power"
        return "site_power" if level == 0 else "site_current"

    def lowered_to(level: float):
        def met(i: int) -> bool:
            if not site[i][7]:
                return True  # an open breaker: nothing flows
            how = judged(i, level)
            if how == "ev_power":
                return ev_power_w[i] < zero_w
            if how == "site_power":
                return _number(site[i][5]) < zero_w
            return worst_a(i) <= level + tolerance_a
        return met

    def restored(i: int) -> bool:
        return ev_power_w[i] > restore_w or not wanting[i] or not site[i][7]

    def shown(i: int) -> dict:
        s = site[i]
        return {"t": s[0], "currents_a": list(s[1:4]), "limit_a": s[4], "power_w": s[5], "building_a": s[6],
                "ev_power_w": round(ev_power_w[i], 1)}

    before = trace.meta.get("site_limit_a")
    before = before if _is_number(before) else None
    for k, event in enumerate(events):
        level = event["detail"].get("value_a")
        if not _is_number(level) or level < 0:
            continue  # no limit to hold the controller to
        t = event["t"]
        first = bisect.bisect_left(ts, t)
        if before is None and first > 0 and _is_number(site[first - 1][4]):
            before = site[first - 1][4]  # a trace without the run's limit: the one its samples show
        previous, before = before, level
        if previous is None or level == previous or first >= len(ts):
            continue
        until = events[k + 1]["t"] if k + 1 < len(events) else end_t
        lowered = level < previous
        if not lowered:
            room_a = level - _number(site[first][6])
            if not (wanting[first] and room_a >= params["min_current_a"]
                    and room_a * voltage_v * phases >= restore_w):
                continue  # nobody to restore, or no room for it
        window_s = ramp_s if lowered else restore_s
        if until - t <= window_s:
            continue  # the limit changed again before its time was up
        met = lowered_to(level) if lowered else restored
        due = max(bisect.bisect_right(ts, t + window_s), first)  # the instants up to the deadline
        if _first_met(ts, first, due, until, met) is not None:
            continue
        reached = _first_met(ts, due, len(ts), until, met)
        response_s = None if reached is None else ts[reached] - t
        t_end = ts[reached] if reached is not None else min(until, end_t)
        at = max(due - 1, first)  # the instant in force at the deadline
        if not lowered:
            what = f"EVs at {ev_power_w[at]:.0f} W, not above {restore_w:g} W,"
            how = "ev_power"
        elif (how := judged(at, level)) == "ev_power":
            what = (f"EVs at {ev_power_w[at]:.0f} W, not below {zero_w:g} W (the building alone draws "
                    f"{_number(site[at][6]):.1f} A > {level:g} A: only the EVs are judged),")
        elif how == "site_power":
            what = f"site at {_number(site[at][5]):.0f} W, not below {zero_w:g} W,"
        else:
            what = f"site at {worst_a(at):.1f} A > {level:g} A"
        outcome = (f"{'at or below' if lowered else 'above'} it after {_seconds(response_s)} s"
                   if response_s is not None else f"not within the {_seconds(t_end - t)} s the limit held")
        yield Finding(
            "DR-RESPONSE",
            f"{what} {_seconds(window_s)} s after the site limit was {'lowered' if lowered else 'raised'} from "
            f"{previous:g} to {level:g} A; {outcome} ({'ramp' if lowered else 'restore'} {window_s:g} s)",
            t, t_end, measured=None if response_s is None else round(response_s, 3), allowed=window_s, unit="s",
            evidence={"from_a": previous, "to_a": level, "response_s": response_s,
                      ("ramp_s" if lowered else "restore_s"): window_s, "judged": how, "at_event": shown(first),
                      "samples": [shown(i) for i in range(at, min(at + EVIDENCE_SAMPLES, len(ts)))]})


def _first_met(ts: list[float], start: int, stop: int, until: float, met) -> int | None:
    """The first instant ``start..stop-1`` before ``until`` that ``met``, None if none."""
    for i in range(start, stop):
        if ts[i] >= until:
            return None
        if met(i):
            return i
    return None
