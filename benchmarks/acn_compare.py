"""Our controllers against acnportal's scheduling algorithms, on the same EV sessions (evbench issue 7).

One scenario's vehicles are charged twice: by acnportal's simulator (acnsim) under its RoundRobin, earliest deadline
first (SortedSchedulingAlgo sorted by estimated departure) and uncontrolled algorithms, and by evbench itself
(:func:`bench.runner.run_scenario`, virtual clock, real OCPP and Modbus) under our controllers. One table compares
them: energy delivered, peak site current and 15-minute power, energy cost (when the scenario has a ``[tariff]``),
site-limit violations and EVs short; then the issue's targets, met or not.

    python benchmarks/acn_compare.py [SCENARIO] [--controllers equal_share,earliest_deadline,priority,smart]
                                     [--period 1m] [--json PATH]

acnportal is an optional extra (``pip install 'evbench[acn]'``). How a scenario becomes an acnportal simulation is
:mod:`acn_site`'s docstring. What does not compare like with like — read the numbers with these in mind:

- Taper. Both sides taper above the EV's knee SoC along the same line from its max current, but ours ends at 6 A at
  SoC 1.0 (below 6 A an AC EV cannot charge) and acnportal's Linear2StageBattery at 0 A, approached exponentially:
  a target of 100 % is reached by ours, never quite by theirs.
- Information. acnportal's algorithms read every EV's true remaining energy and departure through its Interface;
  ours see only what OCPP and the site meter show — energy requests and departures only from ISO 15118 EVs. Basic
  IEC 61851 EVs get the run's end as acnportal's estimated departure (EDF serves them last, as our
  earliest_deadline does), but RoundRobin and EDF still stop offering to an EV whose request is met, where ours
  learn it when the EV stops drawing.
- Time. acnportal applies a pilot at once and for a whole period (1 minute here unless ``--period``); our EVs
  follow an offer after 0.5–2 s, our controllers act every few seconds on a meter read every second, and the site
  is sampled every clock step (1 s). Our peaks and violations include those lags; theirs are period averages,
  so the table also shows our peak of phase currents averaged over the same periods.
  acnportal's violations are counted as SITE-LIMIT counts ours: per phase, each excursion above limit + tolerance
  lasting longer than the settle time — with 1-minute periods any excursion at all.
- Breaker. acnportal has none: its uncontrolled run charges on through any overload, ours trips and stops.
- Energy. Delivered energy is capped at each EV's request on both sides (acnportal's uncontrolled overshoots
  within the last period); "EVs short" is the bench's rule on both sides: below 99 % of what the EV's max rate
  and stay allowed.
- Cost. One function prices both sides' site power — ours from the trace's samples, acnportal's per period with
  the building load and PV added — with :class:`bench.tariff.Tariff`: import energy at its price, export at the export
  price, plus the demand charge on the highest 15-minute average import.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.checks.metrics import BILLING_INTERVAL_S, SHORT_SHARE
from bench.runner import ControllerError, resolve_controller, run_scenario, site_tariff
from bench.scenario import (
    Scenario,
    ScenarioError,
    find_scenario,
    load_scenario,
    parse_duration,
)
from bench.tariff import Tariff
from bench.trace import load_trace

DEFAULT_SCENARIO = "workplace"
DEFAULT_CONTROLLERS = ("equal_share", "earliest_deadline", "priority", "smart")
_JOULES_PER_KWH = 3.6e6


@dataclass
class Row:
    """One algorithm's run, as the table shows it. Energies [kWh], currents [A per phase], power [kW]."""

    side: str  # "acnportal" or "evbench"
    algorithm: str
    sessions: int
    requested_kwh: float
    delivered_kwh: float  # capped at each EV's request
    peak_a: float  # highest phase current at the grid connection, building load included
    peak_period_a: float  # the same of phase currents averaged over acnportal's periods (theirs are such averages)
    peak_15min_kw: float  # highest 15-minute average site power, intervals aligned to the hour
    cost: float | None  # None without a tariff
    violations: int  # site-limit excursions, as SITE-LIMIT counts them
    evs_short: int
    wall_s: float
    breaker_trips: int = 0

    @property
    def delivered_pct(self) -> float:
        return 100.0 * self.delivered_kwh / self.requested_kwh if self.requested_kwh else 100.0

    def to_json(self) -> dict:
        return {**asdict(self), "delivered_pct": round(self.delivered_pct, 3)}


# -- what both sides are judged by --------------------------------------------------------------


def peak_15min_kw(epochs: np.ndarray, power_w: np.ndarray) -> float:
    """[kW] the highest average of ``power_w`` over 15-minute intervals aligned to the hour, as the bench bills it
    (an interval averages the samples it has)."""
    if not len(power_w):
        return 0.0
    intervals = np.floor(epochs / BILLING_INTERVAL_S).astype(np.int64)
    _, index, counts = np.unique(intervals, return_inverse=True, return_counts=True)
    sums = np.bincount(index, weights=power_w)
    return float(np.max(sums / counts)) / 1000.0


def site_cost(tariff: Tariff | None, epochs: np.ndarray, dt_s: float, power_w: np.ndarray) -> float | None:
    """What the site paid over samples of ``dt_s`` seconds starting at ``epochs``: import energy at its price,
    minus export at the export price, plus the demand charge on the highest 15-minute average import.
    None without a tariff, or where day-ahead prices do not cover the run."""
    if tariff is None:
        return None
    prices = [tariff.import_price(float(t)) for t in epochs]
    if any(p is None for p in prices):
        return None
    kwh = power_w * dt_s / _JOULES_PER_KWH
    energy = float(np.sum(np.maximum(kwh, 0.0) * np.array(prices, dtype=float)))
    export = float(np.sum(np.maximum(-kwh, 0.0))) * tariff.export_price_per_kwh
    demand = tariff.demand_charge_per_kw * peak_15min_kw(epochs, np.maximum(power_w, 0.0))
    return energy - export + demand


def peak_of_period_averages(ts: np.ndarray, currents_a: np.ndarray, period_s: float) -> float:
    """[A] the highest phase current averaged over periods [k·P, (k+1)·P) of samples at ``ts`` ((3, samples))."""
    if not len(ts):
        return 0.0
    _, index, counts = np.unique(np.floor(ts / period_s).astype(np.int64), return_inverse=True, return_counts=True)
    return float(max(np.max(np.bincount(index, weights=phase) / counts) for phase in currents_a))


def excursions(ts: np.ndarray, dt_s: float, over: np.ndarray, settle_s: float) -> int:
    """How many runs of consecutive True in ``over`` last longer than ``settle_s`` (samples ``dt_s`` apart)."""
    count, run_start = 0, None
    for i, flag in enumerate(over):
        if flag and run_start is None:
            run_start = i
        elif not flag and run_start is not None:
            count += ts[i] - ts[run_start] > settle_s
            run_start = None
    if run_start is not None:
        count += ts[-1] + dt_s - ts[run_start] > settle_s
    return int(count)


# -- acnportal's side ---------------------------------------------------------------------------


def acn_rows(scenario: Scenario, period_s: float) -> tuple[list[Row], dict[str, dict[str, float]], list[str]]:
    """acnportal's algorithms on the scenario: their rows, each EV's delivered kWh per algorithm, mapping notes."""
    import acn_site  # acnportal is an optional extra: import it only when its side runs

    site = acn_site.map_scenario(scenario, period_s)
    tariff = site_tariff(scenario)
    checks = scenario.checks
    ts = np.arange(site.n_periods) * period_s
    epochs = site.start_epoch + ts
    phase_matrix = site.phase_matrix()
    voltages = np.array([s.voltage_v for s in site.sessions])
    rows, per_ev = [], {}
    for algorithm in acn_site.ALGORITHMS:
        run = acn_site.simulate(site, algorithm)
        currents_a = phase_matrix @ run.rates_a + site.other_a  # (3, periods) at the grid connection
        power_w = voltages @ run.rates_a + site.other_a * site.voltage_v * 3
        over = (currents_a > site.limit_a + checks.site_tolerance_a)
        delivered = {s.vehicle: float(min(run.delivered_kwh.get(s.vehicle, 0.0), s.requested_kwh))
                     for s in site.sessions}
        rows.append(Row(
            side="acnportal", algorithm=algorithm, sessions=len(run.delivered_kwh),
            requested_kwh=sum(s.requested_kwh for s in site.sessions), delivered_kwh=sum(delivered.values()),
            peak_a=float(currents_a.max(initial=0.0)), peak_period_a=float(currents_a.max(initial=0.0)),
            peak_15min_kw=peak_15min_kw(epochs, power_w),
            cost=site_cost(tariff, epochs, period_s, power_w),
            violations=sum(excursions(ts, period_s, over[phase], checks.settle_s) for phase in range(3)),
            evs_short=sum(1 for s in site.sessions
                          if s.deliverable_kwh > 0 and delivered[s.vehicle] < SHORT_SHARE * s.deliverable_kwh),
            wall_s=run.wall_s))
        per_ev[algorithm] = delivered
    return rows, per_ev, site.notes


# -- our side -----------------------------------------------------------------------------------


def our_row(scenario: Scenario, name: str, folder: Path, period_s: float) -> tuple[Row, dict[str, float]]:
    """One of our controllers on the scenario through the bench: its row and each EV's delivered kWh."""
    wall0 = time.perf_counter()
    result = run_scenario(scenario, name, trace=folder / f"{name.replace(':', '_')}.db")
    wall_s = time.perf_counter() - wall0
    trace = load_trace(result.trace_path)
    m = result.metrics
    site = trace.site
    ts = np.array([s[0] for s in site])
    dt_s = float(np.median(np.diff(ts))) if len(ts) > 1 else scenario.clock.step_s
    currents_a = np.array([[s[1] for s in site], [s[2] for s in site], [s[3] for s in site]], dtype=float)
    power_w = np.array([s[5] or 0.0 for s in site], dtype=float)
    row = Row(side="evbench", algorithm=name, sessions=len(trace.vehicles),
              requested_kwh=m["energy_requested_kwh"], delivered_kwh=m["energy_delivered_kwh"],
              peak_a=m["peak_site_current_a"],
              peak_period_a=round(peak_of_period_averages(ts, currents_a, period_s), 3),  # as the metrics round
              peak_15min_kw=m["peak_15min_kw"],
              cost=site_cost(site_tariff(scenario), scenario.clock.start.timestamp() + ts, dt_s, power_w),
              violations=len(result.findings("SITE-LIMIT")), evs_short=m["vehicles_short"], wall_s=wall_s,
              breaker_trips=m["breaker_trips"])
    return row, {v["ev"]: v["delivered_kwh"] or 0.0 for v in trace.vehicles}


def loadable(name: str) -> str | None:
    """None if the controller can be built, else why not (a controller being written may not exist yet)."""
    try:
        resolve_controller(name)
    except ControllerError as error:
        return str(error).removeprefix("--controller: ")
    return None


# -- presenting ---------------------------------------------------------------------------------


def render(scenario: Scenario, period_s: float, rows: list[Row], notes: list[str], currency: str | None) -> str:
    """The table: a header on the scenario and the mapping, then one line per row."""
    sessions = rows[0].sessions if rows else len(scenario.vehicles)
    requested = rows[0].requested_kwh if rows else 0.0
    v = scenario.site.voltage_v
    lines = [(f"scenario {scenario.name}: {sessions} sessions, {requested:.1f} kWh requested, "
              f"site limit {scenario.site.limit_a:g} A per phase"),
             (f"acnportal: period {period_s / 60:g} min, EVSE voltage {v * 3:g} V for 3-phase EVs and {v:g} V for "
              f"1-phase EVs (rates in A per phase at {v:g} V phase to neutral)")]
    lines += [f"  note: {note}" for note in notes]
    cost_head = f"cost {currency}" if currency else "cost"
    period_head = f"{period_s / 60:g}-min A"
    head = (f"{'side':<10} {'algorithm':<18} {'delivered':>9} {'peak A':>7} {period_head:>9} {'peak 15-min kW':>14} "
            f"{cost_head:>10} {'violations':>10} {'EVs short':>9} {'wall s':>7}")
    lines += ["", head, "-" * len(head)]
    for r in rows:
        cost = f"{r.cost:.2f}" if r.cost is not None else "n/a"
        trips = f"  ({r.breaker_trips} breaker trips)" if r.breaker_trips else ""
        lines.append(f"{r.side:<10} {r.algorithm:<18} {r.delivered_pct:>8.1f}% {r.peak_a:>7.1f} "
                     f"{r.peak_period_a:>9.1f} {r.peak_15min_kw:>14.1f} {cost:>10} {r.violations:>10} "
                     f"{r.evs_short:>9} {r.wall_s:>7.1f}{trips}")
    return "\n".join(lines)


def targets(rows: list[Row]) -> list[dict]:
    """The issue's targets that these rows can judge: each with its numbers and whether it is met."""
    by = {(r.side, r.algorithm): r for r in rows}
    rr, edf = by.get(("acnportal", "round_robin")), by.get(("acnportal", "edf"))
    found = []
    if (ours := by.get(("evbench", "equal_share"))) and rr:
        gap = ours.delivered_pct - rr.delivered_pct
        found.append({"target": "equal_share within 2 points of acnportal's round_robin (energy delivered)",
                      "measured": f"{ours.delivered_pct:.1f} % vs {rr.delivered_pct:.1f} % ({gap:+.1f} points)",
                      "met": bool(abs(gap) <= 2.0)})
    if (ours := by.get(("evbench", "priority"))) and edf:
        found.append({"target": "priority at or above acnportal's edf (energy delivered)",
                      "measured": f"{ours.delivered_pct:.1f} % vs {edf.delivered_pct:.1f} %",
                      "met": bool(ours.delivered_pct >= edf.delivered_pct)})
    if (ours := by.get(("evbench", "smart"))) and edf:
        met: bool | None = bool(ours.delivered_kwh >= edf.delivered_kwh and ours.violations == 0)
        if met:
            met = None if ours.cost is None or edf.cost is None else bool(ours.cost < edf.cost)
        found.append({"target": "smart delivers at least edf's energy at lower cost with zero violations",
                      "measured": f"{ours.delivered_kwh:.1f} vs {edf.delivered_kwh:.1f} kWh, cost "
                                  f"{_money(ours.cost)} vs {_money(edf.cost)}, {ours.violations} violations",
                      "met": met})
    return found


def _money(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _controller_list(values: list[str]) -> list[str]:
    return [name for value in values for name in value.split(",") if name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="acn_compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", nargs="?", default=DEFAULT_SCENARIO, help="a bundled name or a file")
    parser.add_argument("--controllers", nargs="+", default=list(DEFAULT_CONTROLLERS), metavar="NAME",
                        help="our controllers, comma- or space-separated (default: %(default)s)")
    parser.add_argument("--period", default="1m", help="acnportal's period, a duration (default: %(default)s)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows, per-EV energy and targets")
    args = parser.parse_args(argv)
    try:
        period_s = parse_duration(args.period)
        if not 0 < period_s <= BILLING_INTERVAL_S:
            raise ValueError(f"expected a period > 0 and at most 15m (got {args.period!r})")
    except ValueError as error:
        print(f"acn_compare: --period: {error}", file=sys.stderr)
        return 2
    try:
        scenario = load_scenario(find_scenario(args.scenario))
    except ScenarioError as error:
        print(f"acn_compare: {error}", file=sys.stderr)
        return 2
    try:
        import acnportal  # noqa: F401  (only to say early that the extra is missing)
    except ImportError:
        print("acn_compare: acnportal is not installed: pip install 'evbench[acn]' (or pip install acnportal)",
              file=sys.stderr)
        return 2

    rows, per_ev, notes = acn_rows(scenario, period_s)
    with tempfile.TemporaryDirectory() as folder:
        for name in _controller_list(args.controllers):
            why = loadable(name)
            if why is not None:
                print(f"skipped {name}: {why}", file=sys.stderr)
                continue
            row, delivered = our_row(scenario, name, Path(folder), period_s)
            rows.append(row)
            per_ev[name] = delivered
    tariff = site_tariff(scenario)
    print(render(scenario, period_s, rows, notes, tariff.currency if tariff else None))
    found = targets(rows)
    if found:
        print()
    for t in found:
        verdict = {True: "met", False: "NOT met", None: "cannot judge (no tariff)"}[t["met"]]
        print(f"target: {t['target']}: {t['measured']} -> {verdict}")
    if args.json:
        args.json.write_text(json.dumps({
            "scenario": scenario.name, "period_s": period_s, "notes": notes,
            "rows": [r.to_json() for r in rows], "delivered_kwh_per_ev": per_ev, "targets": found,
        }, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
