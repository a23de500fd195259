"""`evbench compare`: the seed article's comparison table, filled with what each controller did on one site.

This module owns the side-by-side: it runs each controller on the same scenario (virtual time, one after
another, every trace kept), reads from each judged run what the seed's table talks about — breaker trips,
SITE-LIMIT excursions, the 15-minute demand peak and its charge, energy cost, energy delivered against
requested, EVs short, fairness, PV self-consumption — and puts a price on each architecture: a cost of
ownership over ``years`` from per-port hardware costs and the measured running cost, against
``uncontrolled`` (simple plug-in) as the baseline.

:func:`compare` runs and reads traces; :func:`tabulate` (the table and the cost maths) is pure, from judged
results and a few numbers read from their traces; :func:`render_table`, :meth:`Comparison.to_json` and
:func:`write_chart` present it. Nothing here judges: verdicts come from ``bench.checks``.

How a simulated run becomes a year (the ``notes`` of every comparison repeat this):

- energy cost per year = the run's energy cost per operating day × ``days_per_year``; a run of up to 24 h
  is one operating day (the bundled scenarios cover a day's charging and nothing charges outside them),
  a longer one counts its days;
- demand charge per year = the run's demand charge × 12: the charge bills each month's highest 15-minute
  import (SMART_CHARGING.md §2), taken here as the run's peak, every month;
- cost of ownership = ports × per-port hardware and installation + ``years`` × (energy + demand charges +
  ports × subscription per port-year); no discounting, no maintenance, no avoided service upgrade.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from bench.clock import iso_z
from bench.report import RunResult
from bench.scenario import Scenario, find_scenario, load_scenario
from bench.trace import Trace, load_trace

# -- the seed's architectures and what a port of each costs -------------------------------------------------

#: The seed's three architectures, by the short name ``--tier`` takes.
ARCHITECTURES = {"simple": "simple plug-in", "managed": "managed charging", "smart": "smart orchestration"}

#: Which architecture each bundled controller is (DESIGN.md "Controllers").
ARCHITECTURE_OF = {"uncontrolled": "simple", "equal_share": "managed", "priority": "managed",
                   "earliest_deadline": "managed", "smart": "smart"}

#: The seed's "Typical Cost per Port" (hardware and installation), USD: low and high end of its range.
SEED_PORT_COST_RANGE_USD = {"simple": (500.0, 1000.0), "managed": (1500.0, 3000.0), "smart": (3000.0, 8000.0)}

#: Software/subscription per port and year when not given: 0. The seed names subscriptions as a TCO item
#: ("software subscriptions, maintenance") but gives no figure, and vendors' prices vary too widely for one.
DEFAULT_SUBSCRIPTION_PER_PORT_YEAR = 0.0

DEFAULT_CONTROLLERS = ("uncontrolled", "equal_share", "priority", "smart")
BASELINE = "uncontrolled"
BILLING_MONTHS_PER_YEAR = 12
DEFAULT_DAYS_PER_YEAR = 365
_DAY_S = 86_400.0

#: Below this share of the best delivery, a controller's lower cost is partly energy it did not deliver.
_SAME_SERVICE_SHARE = 0.99


class CompareError(ValueError):
    """A comparison that cannot be made. ``option`` names what was wrong (``"tier"``, ``"port_cost"``,
    ``"subscription"``, ``"controllers"``, ``"years"``, ``"days_per_year"``) so the CLI can name its flag."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def architecture_of(controller: str, tiers: Mapping[str, str] | None = None) -> str:
    """The architecture (``simple``, ``managed``, ``smart``) of ``controller``: ``tiers`` first, then the
    bundled controllers' own. Raises :class:`CompareError` (option ``tier``) for an unknown one."""
    tier = (tiers or {}).get(controller, ARCHITECTURE_OF.get(controller))
    if tier is None:
        raise CompareError("tier", f"which architecture is {controller!r}? give {controller}=simple, "
                                   f"{controller}=managed or {controller}=smart")
    if tier not in ARCHITECTURES:
        raise CompareError("tier", f"{controller}={tier}: expected simple, managed or smart")
    return tier


def parse_assignments(texts: Sequence[str]) -> dict[str, str]:
    """``["x:Y=managed"]`` → ``{"x:Y": "managed"}``, split at the last ``=``. Raises ValueError naming the text
    and what was expected."""
    parsed: dict[str, str] = {}
    for text in texts:
        name, sep, value = text.rpartition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ValueError(f"expected NAME=VALUE (got {text!r})")
        if name in parsed:
            raise ValueError(f"{name} is given twice")
        parsed[name] = value
    return parsed


def parse_amounts(texts: Sequence[str]) -> dict[str, float]:
    """``["smart=5,000"]`` → ``{"smart": 5000.0}`` (thousands separators allowed), as :func:`parse_assignments`."""
    amounts = {}
    for name, value in parse_assignments(texts).items():
        try:
            amounts[name] = float(value.replace(",", "").replace("_", ""))
        except ValueError:
            raise ValueError(f"{name}={value}: expected a number after '='") from None
    return amounts


@dataclass(frozen=True)
class PortCost:
    """What one port of a controller's architecture costs: hardware and installation once, software yearly."""

    hardware: float  # per port, once [currency]
    subscription_per_year: float  # per port and year [currency]
    source: str  # where ``hardware`` comes from, for the table


def port_costs(controllers: Sequence[str], architectures: Mapping[str, str], *,
               hardware: Mapping[str, float] | None = None,
               subscription: Mapping[str, float] | None = None) -> dict[str, PortCost]:
    """Each controller's :class:`PortCost`. ``hardware`` and ``subscription`` override by controller name or by
    architecture (``smart=5000``), a controller's own first; without one, hardware is the midpoint of the seed's
    range for its architecture and the subscription :data:`DEFAULT_SUBSCRIPTION_PER_PORT_YEAR`.
    Raises :class:`CompareError` for a name that is neither, or a negative or non-finite amount."""
    known = set(controllers) | set(ARCHITECTURES)
    for option, given in (("port_cost", hardware or {}), ("subscription", subscription or {})):
        for name, amount in given.items():
            if name not in known:
                raise CompareError(option, f"{name!r} is neither a compared controller ({', '.join(controllers)}) "
                                           f"nor an architecture (simple, managed, smart)")
            if not (math.isfinite(amount) and amount >= 0):
                raise CompareError(option, f"{name}={amount:g}: expected an amount >= 0")
    costs = {}
    for controller in controllers:
        tier = architectures[controller]
        low, high = SEED_PORT_COST_RANGE_USD[tier]
        given, yearly_given = hardware or {}, subscription or {}
        if controller in given or tier in given:
            port, source = given.get(controller, given.get(tier)), "given"
        else:
            port, source = (low + high) / 2, f"seed midpoint of {low:,.0f}–{high:,.0f} USD"
        yearly = yearly_given.get(controller, yearly_given.get(tier, DEFAULT_SUBSCRIPTION_PER_PORT_YEAR))
        costs[controller] = PortCost(hardware=float(port), subscription_per_year=float(yearly), source=source)
    return costs


# -- what is read from each run ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TraceFacts:
    """Numbers of one run that its metrics do not hold, read from its trace by :func:`trace_facts`.

    ``t_s``, ``site_top_a``, ``limit_a``: the site's samples (time since start [s], highest phase current [A],
    site limit [A]) for the chart. ``import_kwh``: energy imported at the grid connection; ``ev_discharged_kwh``:
    energy vehicles fed back (V2G); ``mean_import_price``: the tariff's import price averaged over the run's
    time (None without a tariff).
    """

    t_s: list[float]
    site_top_a: list[float]
    limit_a: list[float]
    import_kwh: float
    ev_discharged_kwh: float
    mean_import_price: float | None


def trace_facts(trace: Trace) -> TraceFacts:
    """:class:`TraceFacts` of a trace (samples are sample-and-hold, each lasting ``meta["step_s"]``)."""
    step_s = trace.meta.get("step_s")
    step_h = (step_s if isinstance(step_s, (int, float)) and step_s > 0 else 1.0) / 3600.0
    site = trace.site
    import_kwh = sum(s[5] for s in site if s[5] is not None and s[5] > 0) * step_h / 1000.0
    discharged_kwh = sum(-s[6] for samples in trace.stations.values() for s in samples
                         if s[6] is not None and s[6] < 0) * step_h / 1000.0
    return TraceFacts(
        t_s=[s[0] for s in site],
        site_top_a=[max(s[1], s[2], s[3]) for s in site],
        limit_a=[s[4] for s in site],
        import_kwh=import_kwh,
        ev_discharged_kwh=discharged_kwh,
        mean_import_price=_mean_price(trace.meta),
    )


def _mean_price(meta: dict) -> float | None:
    """The import price averaged over the run's time, from ``meta["tariff"]["import_prices"]`` steps."""
    tariff, duration_s = meta.get("tariff"), meta.get("duration_s")
    if not isinstance(tariff, dict) or not tariff.get("import_prices") or not duration_s:
        return None
    steps = [(float(t), float(price)) for t, price in tariff["import_prices"]]
    total = 0.0
    for (t, price), (t_next, _) in zip(steps, steps[1:] + [(float(duration_s), 0.0)]):
        total += price * (min(t_next, duration_s) - max(t, 0.0))
    return total / duration_s


# -- the comparison (pure) --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Measured:
    """What a controller did on the site, from its judged run (metrics and SITE-LIMIT / BREAKER findings)."""

    breaker_trips: int
    site_limit_excursions: int  # SITE-LIMIT findings (one per phase and excursion)
    site_limit_seconds: float  # time any phase was over the limit beyond the settle time [s]
    peak_site_current_a: float
    site_limit_at_peak_a: float | None
    peak_15min_kw: float  # highest 15-minute average import with a tariff, else of net power [kW]
    demand_charge: float | None  # over the run (one billing period) [currency]
    energy_cost: float | None  # import cost − export revenue over the run [currency]
    import_cost: float | None  # over the run [currency]
    energy_delivered_kwh: float
    energy_requested_kwh: float
    vehicles_short: int
    fairness_jain: float | None
    pv_self_consumption: float | None  # 0..1
    import_kwh: float
    ev_discharged_kwh: float
    failed_checks: list[str]


@dataclass(frozen=True)
class Ownership:
    """A controller's cost of ownership over the comparison's years, in the comparison's currency."""

    ports: int
    port_cost: float  # hardware and installation per port
    port_cost_source: str
    hardware: float  # ports × port_cost
    energy_per_year: float | None
    demand_charges_per_year: float | None
    subscription_per_year: float  # ports × subscription per port-year
    running_per_year: float | None  # energy + demand charges + subscription; None without a tariff
    total: float  # hardware + years × running (× subscriptions only, without a tariff)
    savings_per_year: float | None  # baseline's running cost − this one's
    payback_years: float | None  # extra hardware over the baseline ÷ savings; 0: none needed; None: never


@dataclass(frozen=True)
class Column:
    """One controller's column of the table."""

    controller: str
    architecture: str  # simple | managed | smart
    verdict: str
    trace: str
    measured: Measured
    ownership: Ownership
    evidence: dict[str, str]  # the seed's qualitative rows, as what was measured


@dataclass
class Comparison:
    """The table: one :class:`Column` per controller, how it was made, and the site current for the chart."""

    scenario: str
    baseline: str | None
    years: float
    days_per_year: float
    run_s: float
    scenario_s: float
    ports: int
    currency: str
    columns: list[Column]
    notes: list[str]
    mean_import_price: float | None = None
    start_epoch: float = 0.0
    # controller → (t [s], highest-phase site current [A]); the limit as (t, limit_a): the chart's, not the JSON's
    site_current: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict, repr=False)
    site_limit: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []), repr=False)

    def to_json(self) -> dict:
        return {
            "scenario": self.scenario, "baseline": self.baseline, "years": self.years,
            "days_per_year": self.days_per_year, "run_s": self.run_s, "scenario_s": self.scenario_s,
            "start": iso_z(self.start_epoch), "ports": self.ports, "currency": self.currency,
            "mean_import_price": _round(self.mean_import_price),
            "controllers": [asdict(column) for column in self.columns], "notes": self.notes,
        }


def _union_seconds(windows: Sequence[tuple[float, float]]) -> float:
    """Total length of the union of ``(start, end)`` windows: phases over at the same time count once."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(windows):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def measure(result: RunResult, facts: TraceFacts) -> Measured:
    """The :class:`Measured` row values of one judged run."""
    m = result.metrics
    over = result.findings("SITE-LIMIT")
    return Measured(
        breaker_trips=int(m.get("breaker_trips") or 0),
        site_limit_excursions=len(over),
        site_limit_seconds=round(_union_seconds([(f.t_start, f.t_end) for f in over]), 3),
        peak_site_current_a=float(m.get("peak_site_current_a") or 0.0),
        site_limit_at_peak_a=m.get("site_limit_at_peak_a"),
        peak_15min_kw=float(m.get("peak_15min_import_kw", m.get("peak_15min_kw")) or 0.0),
        demand_charge=m.get("demand_charge"),
        energy_cost=m.get("energy_cost"),
        import_cost=m.get("import_cost"),
        energy_delivered_kwh=float(m.get("energy_delivered_kwh") or 0.0),
        energy_requested_kwh=float(m.get("energy_requested_kwh") or 0.0),
        vehicles_short=int(m.get("vehicles_short") or 0),
        fairness_jain=m.get("fairness_jain"),
        pv_self_consumption=m.get("pv_self_consumption"),
        import_kwh=round(facts.import_kwh, 3),
        ev_discharged_kwh=round(facts.ev_discharged_kwh, 3),
        failed_checks=[c.id for c in result.checks if c.verdict != "pass"],
    )


def tabulate(runs: Sequence[tuple[RunResult, TraceFacts]], *, architectures: Mapping[str, str],
             costs: Mapping[str, PortCost], ports: int, run_s: float, scenario_s: float, years: float = 5,
             days_per_year: float = DEFAULT_DAYS_PER_YEAR) -> Comparison:
    """The comparison of judged runs of one scenario (pure: no I/O).

    ``runs``: each controller's judged result with its :class:`TraceFacts`, in column order.
    ``architectures`` and ``costs``: per controller (see :func:`architecture_of`, :func:`port_costs`).
    ``ports``: connectors on the site. ``run_s``: simulated seconds of each run; ``scenario_s``: the scenario's
    full length. The baseline is ``uncontrolled`` when compared, else none (no savings, no payback).
    """
    if not runs:
        raise CompareError("controllers", "expected at least one controller")
    _check_period(years, days_per_year)
    operating_days = max(run_s, _DAY_S) / _DAY_S
    first = runs[0][0].metrics
    has_tariff = "energy_cost" in first
    currency = str(first.get("currency") or "USD") if has_tariff else "USD"

    measures = [measure(result, facts) for result, facts in runs]
    owned = [_ownership(costs[result.controller], meas, ports=ports, years=years,
                        days=operating_days if has_tariff else None, days_per_year=days_per_year)
             for (result, _), meas in zip(runs, measures)]
    baseline = next((own for (result, _), own in zip(runs, owned) if result.controller == BASELINE), None)
    columns = [Column(controller=result.controller, architecture=architectures[result.controller],
                      verdict=result.verdict, trace=result.trace_path, measured=meas,
                      ownership=own if baseline is None or own is baseline else _against(own, baseline),
                      evidence=_evidence(meas, facts, currency if has_tariff else None))
               for (result, facts), meas, own in zip(runs, measures, owned)]
    comparison = Comparison(
        scenario=runs[0][0].scenario, baseline=BASELINE if baseline is not None else None, years=years,
        days_per_year=days_per_year, run_s=run_s, scenario_s=scenario_s, ports=ports, currency=currency,
        columns=columns, notes=[], mean_import_price=runs[0][1].mean_import_price,
        start_epoch=runs[0][0].start_epoch,
        site_current={r.controller: (f.t_s, f.site_top_a) for r, f in runs},
        site_limit=(runs[0][1].t_s, runs[0][1].limit_a))
    comparison.notes = _notes(comparison, has_tariff, operating_days)
    return comparison


def _ownership(cost: PortCost, meas: Measured, *, ports: int, years: float, days: float | None,
               days_per_year: float) -> Ownership:
    """One controller's cost of ownership without the baseline's comparison; ``days``: operating days in the
    run, None without a tariff (no running cost measured)."""
    subscription = ports * cost.subscription_per_year
    energy = demand = running = None
    if days is not None:
        energy = (meas.energy_cost or 0.0) / days * days_per_year
        demand = (meas.demand_charge or 0.0) * BILLING_MONTHS_PER_YEAR
        running = energy + demand + subscription
    hardware = ports * cost.hardware
    return Ownership(
        ports=ports, port_cost=cost.hardware, port_cost_source=cost.source, hardware=hardware,
        energy_per_year=energy, demand_charges_per_year=demand, subscription_per_year=subscription,
        running_per_year=running, total=hardware + years * (running if running is not None else subscription),
        savings_per_year=None, payback_years=None)


def _check_period(years: float, days_per_year: float) -> None:
    if not (math.isfinite(years) and years > 0):
        raise CompareError("years", f"expected a positive number of years (got {years:g})")
    if not (math.isfinite(days_per_year) and 0 < days_per_year <= 366):
        raise CompareError("days_per_year", f"expected 1..366 operating days a year (got {days_per_year:g})")


def _against(own: Ownership, baseline: Ownership) -> Ownership:
    """``own`` with its savings and payback against ``baseline``."""
    if own.running_per_year is None or baseline.running_per_year is None:
        return own
    savings = baseline.running_per_year - own.running_per_year
    extra = own.hardware - baseline.hardware
    if extra <= 0:
        payback = 0.0 if savings >= 0 else None  # cheaper to build: pays back at once unless it costs more to run
    else:
        payback = extra / savings if savings > 0 else None
    return replace(own, savings_per_year=savings, payback_years=payback)


def _evidence(meas: Measured, facts: TraceFacts, currency: str | None) -> dict[str, str]:
    """The seed's qualitative rows as what the bench measured for one controller."""
    limit = meas.site_limit_at_peak_a
    load = (f"peak {100 * meas.peak_site_current_a / limit:.0f} % of limit" if limit else
            f"peak {meas.peak_site_current_a:,.0f} A")
    trips = f"{meas.breaker_trips} trip{'s' if meas.breaker_trips != 1 else ''}"
    load += f", {_seconds(meas.site_limit_seconds)} over, {trips}"
    if currency is not None and meas.import_kwh > 0 and meas.import_cost is not None:
        paid = f"{meas.import_cost / meas.import_kwh:.3f} {currency}/kWh imported"
        cost = paid + (f" (mean price {facts.mean_import_price:.3f})" if facts.mean_import_price is not None else "")
    else:
        cost = "not measured (no tariff)" if currency is None else "nothing imported"
    renewables = ("not measured (no PV)" if meas.pv_self_consumption is None
                  else f"PV self-consumption {100 * meas.pv_self_consumption:.0f} %")
    v2g = (f"{meas.ev_discharged_kwh:,.1f} kWh fed back by EVs" if meas.ev_discharged_kwh > 0
           else "no EV discharged")
    return {"load control": load, "energy cost optimisation": cost, "renewable integration": renewables,
            "V2G": v2g, "user visibility": "not measured"}


def _notes(c: Comparison, has_tariff: bool, operating_days: float) -> list[str]:
    notes = []
    if c.run_s < c.scenario_s:
        notes.append(f"runs cut to {_hours(c.run_s)} of the scenario's {_hours(c.scenario_s)}: yearly costs count "
                     f"only those hours of each day, and 'EVs short' judges cars still plugged in at the cut by what "
                     f"they could have had until then")
    if has_tariff:
        notes.append(f"a year: energy cost per operating day ({operating_days:g} in the run) × {c.days_per_year:g} "
                     f"days; demand charge = the run's 15-minute import peak × rate, billed "
                     f"{BILLING_MONTHS_PER_YEAR} months a year")
    else:
        notes.append("no [tariff] in this scenario: running costs are not measured; the cost of ownership is "
                     "hardware and subscriptions only")
    notes.append("user visibility is not measured: every controller here reads the same OCPP meter values; "
                 "what a product shows its users is outside the bench")
    notes.append(f"cost of ownership = {c.ports} ports × cost per port + {c.years:g} × running cost a year "
                 f"(no discounting, maintenance, or avoided service upgrade)")
    if any(col.ownership.port_cost_source != "given" for col in c.columns) and c.currency != "USD":
        notes.append(f"port costs are the seed's USD figures counted 1:1 as {c.currency} (no exchange rate); "
                     f"give your own with --port-cost")
    notes.append("software subscription per port-year: "
                 + (f"{DEFAULT_SUBSCRIPTION_PER_PORT_YEAR:g} (the seed gives no figure)"
                    if all(col.ownership.subscription_per_year == 0 for col in c.columns) else "as given"))
    if c.baseline is None:
        notes.append(f"no savings or payback: {BASELINE} (the baseline) was not compared")
    best = max((col.measured.energy_delivered_kwh for col in c.columns), default=0.0)
    for col in c.columns:
        delivered = col.measured.energy_delivered_kwh
        if best > 0 and delivered < _SAME_SERVICE_SHARE * best:
            notes.append(f"{col.controller} delivered {100 * (1 - delivered / best):.0f} % less energy than the "
                         f"best: part of its lower energy cost is energy the EVs did not get")
    return notes


# -- running it -------------------------------------------------------------------------------------------------

def compare(scenario: str | Path | Scenario, controllers: Sequence[str] = DEFAULT_CONTROLLERS, *,
            years: float = 5, costs: Mapping[str, float] | None = None,
            subscriptions: Mapping[str, float] | None = None, tiers: Mapping[str, str] | None = None,
            days_per_year: float = DEFAULT_DAYS_PER_YEAR, duration_s: float | None = None,
            trace_dir: str | Path | None = None,
            on_progress: Callable[[str], None] = lambda _: None) -> Comparison:
    """Run every controller on ``scenario`` (virtual time, one after another) and tabulate them.

    ``costs`` / ``subscriptions``: per-port hardware and per-port-year software, by controller or architecture
    name (:func:`port_costs`). ``tiers``: the architecture of controllers the bench does not know. Traces go to
    ``trace_dir`` (default ``runs/compare-<scenario>-<UTC time>/``) as ``<controller>.db``. Everything is
    validated before the first run: :class:`CompareError`, or the runner's ``ScenarioError`` /
    ``ControllerError``.
    """
    # the runner imports the whole plant and protocol stack: only when running
    from bench.runner import (
        check_controller_config,
        resolve_controller,
        run_scenario,
        site_config,
    )

    sc = scenario if isinstance(scenario, Scenario) else load_scenario(find_scenario(str(scenario)))
    if not controllers:
        raise CompareError("controllers", "expected at least one controller")
    if len(set(controllers)) != len(controllers):
        raise CompareError("controllers", f"a controller is named twice in {', '.join(controllers)}")
    for controller in controllers:
        spec = resolve_controller(controller)
        if spec.external:
            raise CompareError("controllers", f"{controller}: compare runs in-process controllers in virtual time; "
                                              f"an external CSMS cannot be run again from the same start")
        check_controller_config(spec, site_config(sc))  # a refused [controller.options] now, not after other runs
    architectures = {c: architecture_of(c, tiers) for c in controllers}
    unit_costs = port_costs(controllers, architectures, hardware=costs, subscription=subscriptions)
    run_s = sc.clock.duration_s if duration_s is None else duration_s
    if not run_s > 0:
        raise CompareError("duration", f"expected a positive duration (got {run_s:g} s)")
    _check_period(years, days_per_year)  # now, not after an hour of runs

    if trace_dir is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        trace_dir = Path("runs") / f"compare-{sc.name}-{stamp}"
    runs = []
    for n, controller in enumerate(controllers, start=1):
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in controller)[:40]
        on_progress(f"[{n}/{len(controllers)}] {sc.name} with {controller} ({_hours(run_s)} simulated)")
        result = run_scenario(sc, controller, trace=Path(trace_dir) / f"{safe}.db", duration_s=run_s)
        runs.append((result, trace_facts(load_trace(result.trace_path))))
        on_progress(f"[{n}/{len(controllers)}] {controller}: {result.verdict}, trace {result.trace_path}")
    ports = sum(station.connectors for station in sc.stations)
    return tabulate(runs, architectures=architectures, costs=unit_costs, ports=ports, run_s=run_s,
                    scenario_s=sc.clock.duration_s, years=years, days_per_year=days_per_year)


# -- presenting it ----------------------------------------------------------------------------------------------

def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def _hours(seconds: float) -> str:
    hours = seconds / 3600.0
    return f"{hours:g} h" if hours == int(hours) else f"{hours:.2f} h"


def _seconds(seconds: float) -> str:
    return f"{seconds:,.0f} s" if seconds >= 1 or seconds == 0 else f"{seconds:.1f} s"


def _kwh(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:,.1f}"


def _money(x: float | None, currency: str) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.0f} {currency}" if abs(x) >= 100 else f"{x:,.2f} {currency}"


def _cells(c: Comparison, col: Column) -> list[tuple[str, str]]:
    """(row label, cell) pairs of one column, in the table's row order; a label "" starts a section."""
    m, o, cur = col.measured, col.ownership, c.currency
    limit = f" / {m.site_limit_at_peak_a:,.0f} A" if m.site_limit_at_peak_a is not None else ""
    share = f" ({100 * m.energy_delivered_kwh / m.energy_requested_kwh:.1f} %)" if m.energy_requested_kwh else ""
    if o.payback_years is None:
        payback = "baseline" if col.controller == c.baseline else ("never" if o.savings_per_year is not None else "n/a")
    else:
        payback = "at once" if o.payback_years == 0 else f"{o.payback_years:.1f} years"
    over = f"{m.site_limit_excursions} ({_seconds(m.site_limit_seconds)})" if m.site_limit_excursions else "0"
    return [
        ("architecture (seed)", ARCHITECTURES[col.architecture]),
        ("verdict", col.verdict.upper()),
        ("measured on the site", ""),
        ("breaker trips", str(m.breaker_trips)),
        ("SITE-LIMIT excursions (time over)", over),
        ("peak site current / limit", f"{m.peak_site_current_a:,.0f} A{limit}"),
        ("peak 15-min demand", f"{m.peak_15min_kw:,.1f} kW"),
        ("demand charge (run)", _money(m.demand_charge, cur)),
        ("energy cost (run)", _money(m.energy_cost, cur)),
        ("energy delivered / requested", f"{_kwh(m.energy_delivered_kwh)} / {_kwh(m.energy_requested_kwh)} kWh{share}"),
        ("EVs short at departure", str(m.vehicles_short)),
        ("fairness (Jain)", "n/a" if m.fairness_jain is None else f"{m.fairness_jain:.3f}"),
        ("PV self-consumption", "n/a" if m.pv_self_consumption is None else f"{100 * m.pv_self_consumption:.0f} %"),
        ("checks failed", ", ".join(m.failed_checks) or "none"),
        ("the seed's rows, as measured", ""),
        ("load control", col.evidence["load control"]),
        ("energy cost optimisation", col.evidence["energy cost optimisation"]),
        ("renewable integration", col.evidence["renewable integration"]),
        ("V2G support", col.evidence["V2G"]),
        ("user visibility", col.evidence["user visibility"]),
        (f"{c.years:g}-year cost of ownership ({c.ports} ports)", ""),
        ("cost per port", _money(o.port_cost, cur) + ("" if o.port_cost_source == "given" else " (seed mid)")),
        ("hardware + installation", _money(o.hardware, cur)),
        ("energy a year", _money(o.energy_per_year, cur)),
        ("demand charges a year", _money(o.demand_charges_per_year, cur)),
        ("subscriptions a year", _money(o.subscription_per_year, cur)),
        ("running cost a year", _money(o.running_per_year, cur)),
        (f"{c.years:g}-year total", _money(o.total, cur)),
        (f"savings a year vs {c.baseline or 'baseline'}", "—" if col.controller == c.baseline
         else _money(o.savings_per_year, cur)),
        ("payback", payback),
    ]


def render_table(c: Comparison) -> str:
    """The comparison as plain aligned text: one column per controller, the seed's table's layout."""
    cells = [_cells(c, col) for col in c.columns]
    labels = [label for label, _ in cells[0]]
    label_w = max(len(label) for label in labels)
    widths = [max([len(col.controller)] + [len(value) for _, value in column]) for col, column in zip(c.columns, cells)]
    head = (f"{c.scenario}: {len(c.columns)} controller{'s' if len(c.columns) != 1 else ''} on the same site, "
            f"{_hours(c.run_s)} simulated each")
    lines = [head, "", f"{'':<{label_w}}  " + "  ".join(f"{col.controller:<{w}}" for col, w in zip(c.columns, widths))]
    for row, label in enumerate(labels):
        values = [column[row][1] for column in cells]
        if not any(values):
            lines += ["", f"-- {label} --"]
            continue
        lines.append(f"{label:<{label_w}}  " + "  ".join(f"{v:<{w}}" for v, w in zip(values, widths)))
    lines += ["", "how these numbers were made:"] + [f"- {note}" for note in c.notes]
    return "\n".join(line.rstrip() for line in lines)


def write_json(c: Comparison, path: str | Path, *, chart: str | Path | None = None) -> None:
    """Write ``c.to_json()`` (with the chart's path, if any) as indented UTF-8 JSON."""
    document = c.to_json() | ({"chart": str(chart)} if chart is not None else {})
    Path(path).write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_chart(c: Comparison, path: str | Path) -> Path:
    """A PNG of each controller's site current (highest phase) over the run on one time axis, with the limit."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI machines or lab PCs
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    # Controllers that do the same draw the same line: widest first, so each stays visible under the next.
    widths = [0.9 + 0.7 * k for k in reversed(range(len(c.site_current)))]
    for (controller, (ts, amps)), width in zip(c.site_current.items(), widths):
        ax.plot([t / 3600.0 for t in ts], amps, label=controller, linewidth=width)
    limit_t, limit_a = c.site_limit
    if limit_t:
        ax.plot([t / 3600.0 for t in limit_t], limit_a, label="site limit", color="black", linewidth=1.4,
                linestyle="--")
    ax.set_xlabel(f"hours since {iso_z(c.start_epoch)}")
    ax.set_ylabel("A, highest phase")
    ax.set_title(f"{c.scenario}: site current at the grid connection per controller")
    ax.legend(loc="best", ncols=min(len(c.site_current) + 1, 5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
