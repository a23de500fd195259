"""Smart orchestration, the seed article's third architecture: plan the day with a linear programme, hold the limit.

The plan is :mod:`controllers.smart_plan`'s: energy per EV per 15-minute interval over a rolling
horizon, against the tariff, the demand charge, the PV forecast, the stationary battery, the site
limit and each EV's departure and energy request. This controller gathers what the planner needs
and re-plans when something it plans with changes — a session starts or ends, an EV states its
charging needs, a grid signal or a new site limit arrives — and at every quarter hour.

Energy requests: an ISO 15118 EV's stated departure and energy (NotifyEVChargingNeeds, counted from
when it stated them); for any other EV the installer's defaults, ``[controller.options]``
``default_departure`` ("HH:MM", the next one after the session started; the bench's local time is
UTC) and ``default_energy_kwh``. An EV still plugged in after its departure wants its energy now.
When not every request fits, the planner serves the installer's priority groups first (fleet before
staff), stated requests before guessed ones, and among equals the session with the least energy.

Dispatch: the current interval's planned energy becomes a mean power and then a per-phase current
for each EV; what an EV cannot take (full, tapering) goes to EVs that still want energy, earliest
departure first. IEC 61851-1's 6 A minimum is not convex, so it is handled here, not in the programme:
planned currents under 6 A are rounded up to 6 A, earliest departure first, and what that adds is
taken back from the EVs leaving last. The result is always capped by the live budget of
:class:`~controllers.equal_share.EqualShare`'s loop on the site meter (the lowest priority group
trimmed first, each EV alike above 6 A), so the site limit holds when EVs draw differently from the plan and when the plan is
wrong. What the budget has left goes to EVs whose request is met — only when energy is at its
cheapest in the horizon now and no demand charge is at stake, so that it costs the least it can;
without any tariff that is always, and the controller is then roughly earliest-deadline-first
under the site limit.

Fallback: when the programme fails or takes longer than ``solve_budget_s`` of wall time (the
option; default 2 s — measured with :attr:`Smart.timer`, which tests replace), the controller shares
the budget as ``equal_share`` does and idles the battery until a re-plan succeeds.

The battery's setpoint is the plan's, its charging capped by the headroom the site meter shows.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping

from controllers.api import (BATTERY, BatteryReading, BatterySetpoint, ChargingNeeds, ConnectorKey, Decision,
                             GridSignal, MeterSample, Session, SiteConfig, SiteReading)
from controllers.earliest_deadline import EarliestDeadline
from controllers.equal_share import MIN_CURRENT_A, EqualShare
from controllers.smart_plan import INTERVAL_S, Plan, PlanError, PlanEV, PlanProblem, plan

DAY_S = 86_400.0
PRIORITY_WEIGHT = 4.0  # a higher priority group's shortfall costs this much more per group, so it comes first
STATED_WEIGHT = 2.0  # ... and a stated request's than a default's: above the planner's fairness factor (1.5)


def _number_option(options: Mapping[str, object], name: str, default: float, allow_zero: bool = False) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 if allow_zero else value > 0):
        raise ValueError(f"controller.options.{name}: expected a number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return float(value)


def _time_of_day_option(options: Mapping[str, object], name: str, default: str) -> float:
    """An "HH:MM" option as seconds after midnight."""
    value = options.get(name, default)
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value) if isinstance(value, str) else None
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f"controller.options.{name}: expected a time of day \"HH:MM\", got {value!r}")
    return int(match[1]) * 3600.0 + int(match[2]) * 60.0


class Smart(EarliestDeadline):
    name = "smart"
    # The wall clock the solve's time budget is measured on: a controller timing its own compute is
    # legitimate, but tests replace it, so that no test depends on how fast the machine is.
    timer: Callable[[], float] = staticmethod(time.perf_counter)

    def __init__(self, site: SiteConfig) -> None:
        super().__init__(site)
        self.solve_budget_s = _number_option(site.options, "solve_budget_s", 2.0)
        self.default_energy_kwh = _number_option(site.options, "default_energy_kwh", 20.0)
        self.default_departure_s = _time_of_day_option(site.options, "default_departure", "18:00")
        # Plan every request to be met this long before its departure (2 h): the plan assumes an EV takes full power
        # until full, but batteries taper near full (a bus from 80 % on takes hours), so energy planned for the
        # last minutes often cannot be taken. The margin is re-planned away as the departure approaches.
        self.finish_before_s = _number_option(site.options, "finish_before_s", 7200.0, allow_zero=True)
        self.signal = GridSignal()
        self.battery: BatteryReading | None = None
        self.plan: Plan | None = None
        self.plan_error: str | None = None  # why the last re-plan failed (the fallback is on), if it did
        self.solve_s: float | None = None  # wall time of the last solve
        self.departures: dict[ConnectorKey, float] = {}  # what the last plan took each EV's departure to be
        self.drawn_on: dict[ConnectorKey, int | None] = {}  # the charger phase a 1-phase EV drew on; None: all three
        self.switch_delay_s = _number_option(site.options, "switch_delay_s", 120.0, allow_zero=True)
        self._switched_at: dict[ConnectorKey, float] = {}  # when each EV last started or paused
        self.peak_kw = 0.0  # the highest 15-minute mean import seen (the demand charge's basis)
        self._base_loads: deque[tuple[float, float]] = deque()  # the last quarter hour's building load estimates [W]
        self._window: tuple[float, float, float] | None = None  # this quarter hour's first read: start, time, kWh
        self._replan = True
        self._next_plan_at = -math.inf
        self._now = -math.inf

    # -- what the product hears: everything that changes the plan asks for a new one ------------

    def on_session_started(self, session: Session, now: float) -> None:
        super().on_session_started(session, now)
        self._replan = True

    def on_session_ended(self, session: Session, energy_wh: float, now: float) -> None:
        super().on_session_ended(session, energy_wh, now)
        self.departures.pop((session.station_id, session.connector_id), None)
        self.drawn_on.pop((session.station_id, session.connector_id), None)
        self._switched_at.pop((session.station_id, session.connector_id), None)
        self._replan = True

    def on_charging_needs(self, needs: ChargingNeeds, now: float) -> None:
        super().on_charging_needs(needs, now)
        self._replan = True

    def on_grid_signal(self, signal: GridSignal, now: float) -> None:
        self.signal = signal
        self._replan = True

    def on_site_limit(self, limit_a: float, now: float) -> None:
        super().on_site_limit(limit_a, now)
        self._replan = True

    def on_battery_reading(self, reading: BatteryReading, now: float) -> None:
        self.battery = reading

    def on_site_reading(self, reading: SiteReading, now: float) -> None:
        super().on_site_reading(reading, now)
        self._estimate_base_load(reading)
        # The 15-minute mean import from the energy register, per clock quarter hour. (A billing
        # period is a month; a run is shorter, so the peak is never reset.)
        window_start = math.floor(reading.timestamp / INTERVAL_S) * INTERVAL_S
        if self._window is None or self._window[0] != window_start:
            if self._window is not None and reading.timestamp - self._window[1] >= INTERVAL_S / 2:
                hours = (reading.timestamp - self._window[1]) / 3600.0
                self.peak_kw = max(self.peak_kw, (reading.import_kwh - self._window[2]) / hours)
            self._window = (window_start, reading.timestamp, reading.import_kwh)

    # -- planning ---------------------------------------------------------------------------------

    def allocate(self, now: float) -> dict[ConnectorKey, Decision]:
        self._now = now
        if (self.sessions or self.site.battery is not None) and (self._replan or now >= self._next_plan_at):
            self._make_plan(now)
        decisions: dict[ConnectorKey, Decision] = dict(super().allocate(now))
        if self.site.battery is not None:
            decisions[BATTERY] = BatterySetpoint(self._battery_setpoint_w(now))
        return decisions

    def _make_plan(self, now: float) -> None:
        self._replan = False
        self._next_plan_at = math.floor(now / INTERVAL_S) * INTERVAL_S + INTERVAL_S
        problem = self.problem(now)
        started = self.timer()
        try:
            self.plan = plan(problem, time_limit_s=self.solve_budget_s)
            self.plan_error = None
        except PlanError as error:
            self.plan, self.plan_error = None, str(error)
        self.solve_s = self.timer() - started
        if self.plan is not None and self.solve_s > self.solve_budget_s:
            self.plan, self.plan_error = None, f"the solve took {self.solve_s:.2f} s of its {self.solve_budget_s:g} s"

    def problem(self, now: float) -> PlanProblem:
        """What the planner is told now: the plugged-in EVs, the tariff, PV, battery and the site's room."""
        evs = []
        self.departures = {}
        for key in self.sessions:
            departure, energy_kwh = self._request(key, now)
            self.departures[key] = departure
            phases = self._ev_phases(key)
            evs.append(PlanEV(key, departure, energy_kwh, self._ev_max_a(key) * self.site.voltage_v * phases,
                              phases, self._site_phase(key) if phases == 1 else None,
                              self.energy_wh.get(key, 0.0) / 1000.0, self._weight(key)))
        battery = self.site.battery
        return PlanProblem(
            start=now, limit_a=max(self.limit_a - self.margin_a, 0.0), evs=tuple(evs),
            voltage_v=self.site.voltage_v, phases=self.site.phases, prices=self.signal.prices,
            export_price_per_kwh=self.signal.export_price_per_kwh,
            demand_charge_per_kw=self.signal.demand_charge_per_kw, peak_so_far_kw=self.peak_kw,
            pv_forecast=self.signal.pv_forecast, base_load_w=self._base_load_w(now), battery=battery,
            battery_soc=self.battery.soc if battery is not None and self.battery is not None else None)

    def _weight(self, key: ConnectorKey) -> float:
        """How much a kWh short costs this EV against others: ×4 per installer priority group (fleet before staff),
        ×2 for a request the EV stated (ISO 15118) over the installer's default, which only guesses what a car wants."""
        stated = key in self.needs and self.needs[key].energy_wh is not None
        return PRIORITY_WEIGHT ** max(self.site.station(key[0]).priority, 0) * (STATED_WEIGHT if stated else 1.0)

    def _request(self, key: ConnectorKey, now: float) -> tuple[float, float]:
        """The EV's departure [epoch s] and the energy it still wants by then [kWh]."""
        taken_wh = self.energy_wh.get(key, 0.0)
        needs = self.needs.get(key)
        departure = needs.departure if needs is not None else None
        if departure is None:
            started = self.sessions[key].started_at
            departure = math.floor(started / DAY_S) * DAY_S + self.default_departure_s
            if departure <= started:
                departure += DAY_S
        if needs is not None and needs.energy_wh is not None:
            wanted_wh = needs.energy_wh - (taken_wh - self.energy_at_needs_wh.get(key, 0.0))
        else:
            wanted_wh = self.default_energy_kwh * 1000.0 - taken_wh
        # Still here after its departure (or inside the margin): it wants its energy as soon as it can.
        deadline = max(departure - self.finish_before_s, math.floor(now / INTERVAL_S) * INTERVAL_S + INTERVAL_S)
        return deadline, max(wanted_wh, 0.0) / 1000.0

    def on_meter_sample(self, sample: MeterSample, now: float) -> None:
        super().on_meter_sample(sample, now)
        key = (sample.station_id, sample.connector_id)
        if key in self.sessions and sample.source == "ocpp" and sample.currents_a and len(sample.currents_a) == 3:
            drawing = [i for i, current in enumerate(sample.currents_a) if current >= self.drawing_a]
            # Remembered for the session: a paused EV's samples show no phase at all, and taking it for a
            # three-phase one then turned its planned power into a third of the current, under 6 A, paused
            # it again — 0 ↔ 16 A every minute on the campus (OSCILLATION).
            if len(drawing) == 1:
                self.drawn_on[key] = drawing[0]
            elif drawing:
                self.drawn_on[key] = None

    def _ev_phases(self, key: ConnectorKey) -> int:
        """The EV's phases: as its needs say, else as its meter values showed (one phase drawing), else its station's."""
        if key in self.needs:
            return self.needs[key].phases
        if key in self.drawn_on:
            return 1 if self.drawn_on[key] is not None else 3
        return self.site.station(key[0]).phases

    def _site_phase(self, key: ConnectorKey) -> int:
        """The site phase a 1-phase EV draws on: the charger phase its samples showed (else the charger's L1, where
        1-phase EVs draw), through the charger's phase rotation as the installer wired it."""
        return self.site.station(key[0]).site_phase(self.drawn_on.get(key) or 0)

    def _ev_max_a(self, key: ConnectorKey) -> float:
        """What the EV can take per phase: its station's and its own maximum, or what it takes when that is less."""
        sample = self.samples.get(key)
        if key in self.saturated and sample is not None and sample.max_current_a is not None:
            return sample.max_current_a + self.saturation_a
        needs = self.needs.get(key)
        ev_max_a = needs.max_current_a if needs is not None and needs.max_current_a is not None else math.inf
        return min(self._station_max_a(key), ev_max_a)

    def _base_load_w(self, now: float) -> float:
        """The building's load: the least of the last quarter hour's estimates (0 before any).

        Each site reading gives one: what the meter shows less the EVs (by their last OCPP samples),
        the battery and the forecast PV. The samples lag the meter — an EV that has just left or
        just started shows in one and not the other — so single estimates overshoot both ways;
        the least is the safe side, since the live budget on the meter holds the limit anyway and a
        load guessed too high would hold back capacity for the whole plan.
        """
        recent = [w for t, w in self._base_loads if t > now - INTERVAL_S]
        return max(min(recent, default=0.0), 0.0)

    def _estimate_base_load(self, reading: SiteReading) -> None:
        ev_w = sum(sample.power_w if sample.power_w is not None
                   else sum(sample.currents_a or ()) * self.site.voltage_v for sample in self.samples.values())
        battery_w = self.battery.power_w if self.battery is not None else 0.0
        pv_w = sum(f.power_w for f in self.signal.pv_forecast if f.start <= reading.timestamp < f.end)
        self._base_loads.append((reading.timestamp, reading.power_w - ev_w - battery_w + pv_w))
        while self._base_loads and self._base_loads[0][0] <= reading.timestamp - INTERVAL_S:
            self._base_loads.popleft()

    # -- dispatch -------------------------------------------------------------------------------

    def _share(self, budget_a: float, keeps: dict[ConnectorKey, float]) -> dict[ConnectorKey, float]:
        if self.plan is None:
            return EqualShare._share(self, budget_a, keeps)
        order = sorted(self.sessions, key=lambda k: (self.departures.get(k, math.inf), self.sessions[k].started_at))
        can_use = {k: keeps.get(k, self._ev_max_a(k)) for k in order}
        planned = _round_to_minimum(order, self._planned_a(order, can_use), can_use)
        priority = {k: self.site.station(k[0]).priority for k in order}
        served_first = sorted(order, key=lambda k: -priority[k])  # stable: earliest departure first within a group
        shares = _cap_to_budget(served_first, planned, budget_a, priority)
        rest = budget_a - sum(shares.values())
        if self._cheapest_now():
            met = [k for k in order if shares[k] == 0.0 and self._request(k, self._now)[1] <= 0.0]
            shares.update(self._fill_equally(met, rest, keeps))
        shares = self._raise_into_room(self._delay_switching(shares, budget_a), budget_a)
        before = self.shares
        for key, value in shares.items():
            if (value > 0.0) != (before.get(key, 0.0) > 0.0):
                self._switched_at[key] = self._now
        return self._hold_steady(shares)

    def _raise_into_room(self, shares: dict[ConnectorKey, float], budget_a: float) -> dict[ConnectorKey, float]:
        """Lower at once; raise only into the room the budget has while every EV still draws its previous share.

        EVs lag their offers by seconds: when current moves between EVs, the raised one must not draw
        before the lowered one lets go. What does not fit now is raised a period later, when the
        lowered EVs' new shares are what they draw. (Deferring every raise whenever anything was
        lowered instead starved the campus: with the budget binding, something is always lowered.)
        Raises go in ``shares``' order (earliest departure first); 0 or >= 6 A as ever.
        """
        before = self.shares
        room_a = budget_a - sum(before.get(key, 0.0) for key in shares)
        raised = {}
        for key, value in shares.items():
            old = before.get(key, 0.0)
            if value <= old:
                raised[key] = value
                continue
            grant = old + min(value - old, max(room_a, 0.0))
            raised[key] = grant if grant >= MIN_CURRENT_A else old
            room_a -= raised[key] - old
        return raised

    def _delay_switching(self, shares: dict[ConnectorKey, float], budget_a: float) -> dict[ConnectorKey, float]:
        """No EV starts or pauses within ``switch_delay_s`` of its last start or pause, unless the budget needs it.

        The plan's current for an EV at the margin (the one the spare reaches last, the last 6 A that
        fits) moves with every EV's meter values; without a delay such EVs were started and paused
        every minute (OSCILLATION on the campus). Chargers and EVs also dislike it: each pause is a
        contactor cycle. A running EV kept beyond its pause keeps 6 A — only while the budget has it.
        """
        held = dict(shares)
        kept = []
        for key, value in shares.items():
            before = self.shares.get(key, 0.0)
            if self._now - self._switched_at.get(key, -math.inf) >= self.switch_delay_s:
                continue
            if before == 0.0 and value > 0.0:
                held[key] = 0.0
            elif before > 0.0 and value == 0.0:
                held[key] = min(before, MIN_CURRENT_A)
                kept.append(key)
        if sum(held.values()) > budget_a:
            held.update(dict.fromkeys(kept, 0.0))
        return held

    def _planned_a(self, order: list[ConnectorKey], can_use: dict[ConnectorKey, float]) -> dict[ConnectorKey, float]:
        """The plan's current for each EV now [A per phase], within what each can use.

        What the plan gives EVs that cannot take it (full, tapering, drawing less than their charger
        allows) goes to EVs that still want energy, earliest departure first: the plan meant that
        much to be delivered now, and it stays within the plan's power, so within its peak."""
        assert self.plan is not None
        volts = self.site.voltage_v
        phases = {k: self._ev_phases(k) for k in order}
        wanted = {k: self.plan.ev_power_w(k, self._now) / (volts * phases[k]) for k in order}
        planned = {k: min(wanted[k], can_use[k]) for k in order}
        spare_w = sum((wanted[k] - planned[k]) * volts * phases[k] for k in order)
        # EVs already charging first: the spare moves every time an EV's meter values do, and it should move
        # currents, not start and pause EVs. (Spread over all of them in proportion to their room instead, it
        # moved every bus of the depot by amps each time: 17 OSCILLATION findings against 2.)
        for key in sorted(order, key=lambda k: self.shares.get(k, 0.0) == 0.0):
            if spare_w <= 1e-6:
                break
            room_a = can_use[key] - planned[key]
            if room_a <= 0 or self._request(key, self._now)[1] <= 0:
                continue
            extra_a = min(room_a, spare_w / (volts * phases[key]))
            planned[key] += extra_a
            spare_w -= extra_a * volts * phases[key]
        return planned

    def _cheapest_now(self) -> bool:
        """Whether energy beyond the requests costs the least it can now: the cheapest interval, no demand charge."""
        assert self.plan is not None
        if self.signal.demand_charge_per_kw > 0:
            return False
        prices = [p.price_per_kwh for p in self.signal.prices if p.end > self._now]
        now_prices = [p.price_per_kwh for p in self.signal.prices if p.start <= self._now < p.end]
        return not prices or (bool(now_prices) and now_prices[0] <= min(prices))

    def _battery_setpoint_w(self, now: float) -> float:
        if self.plan is None:
            return 0.0  # the fallback idles the battery: the safe state without a plan
        power_w = self.plan.battery_power_w(now)
        # What it does now (+ charging), as its inverter last reported: that already shows on the site meter.
        now_w = self.battery.power_w if self.battery is not None else 0.0
        if power_w <= min(now_w, 0.0):
            return power_w  # discharging more: less import, always safe
        # (Judged here: EqualShare's allocate judges the meter only while sessions run.)
        if self.reading is None or self._meter_fault(self.reading, now) is not None:
            return min(power_w, now_w, 0.0)  # never more load than now where the controller cannot see it
        # More import — charging, or discharging less (at a quarter hour 143 kW of discharge stopped at once and
        # the site drew 1,104 A of its 900 A for 4 s) — only into the headroom the meter shows.
        # Meters show current magnitudes: while the site exports, charging first shrinks the current.
        worst_a = max(self.reading.currents_a)
        headroom_a = self.limit_a - self.margin_a + (worst_a if self.reading.power_w < 0 else -worst_a)
        headroom_w = headroom_a * self.site.voltage_v * self.site.phases
        return min(power_w, now_w + max(headroom_w, 0.0))


def _cap_to_budget(order: list[ConnectorKey], planned: dict[ConnectorKey, float], budget_a: float,
                   priority: Mapping[ConnectorKey, int] | None = None) -> dict[ConnectorKey, float]:
    """The planned currents within the live budget [A], 0 or >= 6 A each.

    When the budget is short of the plan (the building draws more than forecast, EVs more than
    planned), the lowest priority group gives first: each of its running EVs the same fraction of
    what it has above 6 A, so that the cut is spread over many EVs in steps the hysteresis holds —
    cutting the EVs last in line instead made each of them carry every swing of the meter loop, and
    cutting every group alike made the fleet's 32 A chargers swing most (OSCILLATION on the campus).
    When not even 6 A each fit, EVs in ``order`` (first served first) get 6 A, as many as fit, and
    the others pause.
    """
    priority = priority or {}
    shares = {k: (max(v, MIN_CURRENT_A) if v >= MIN_CURRENT_A - 1e-6 else 0.0) for k, v in planned.items()}
    excess_a = sum(shares.values()) - budget_a
    if excess_a <= 0:
        return shares
    for group in sorted({priority.get(k, 0) for k in shares}):
        members = [k for k in shares if priority.get(k, 0) == group and shares[k] > MIN_CURRENT_A]
        above_a = sum(shares[k] - MIN_CURRENT_A for k in members)
        if above_a <= 0:
            continue
        kept = max(1.0 - excess_a / above_a, 0.0)
        for key in members:
            shares[key] = MIN_CURRENT_A + kept * (shares[key] - MIN_CURRENT_A)
        excess_a -= above_a * (1.0 - kept)
        if excess_a <= 1e-9:
            return shares
    fits = int(max(budget_a, 0.0) // MIN_CURRENT_A)
    chosen = [k for k in order if shares[k] > 0][:fits]
    return {k: (MIN_CURRENT_A if k in chosen else 0.0) for k in shares}


def _round_to_minimum(order: list[ConnectorKey], planned: dict[ConnectorKey, float],
                      can_use: dict[ConnectorKey, float]) -> dict[ConnectorKey, float]:
    """Planned currents as 0 or >= 6 A (IEC 61851-1), keeping their sum where the others can give.

    Currents under 6 A become 6 A, in ``order`` (earliest departure first), as many as the small ones
    add up to, rounded up — energy now only helps a deadline; the rest pause. What that adds is taken
    from the EVs last in ``order``, none below 6 A.
    """
    rounded = dict(planned)
    small = [k for k in order if 0.0 < planned[k] < MIN_CURRENT_A]
    if not small:
        return rounded
    pool = sum(planned[k] for k in small)
    served = [k for k in small if can_use[k] >= MIN_CURRENT_A][:math.ceil(pool / MIN_CURRENT_A - 1e-9)]
    for key in small:
        rounded[key] = MIN_CURRENT_A if key in served else 0.0
    excess = MIN_CURRENT_A * len(served) - pool
    for key in reversed(order):
        if excess <= 0:
            break
        if key not in small and rounded[key] > MIN_CURRENT_A:
            cut = min(excess, rounded[key] - MIN_CURRENT_A)
            rounded[key] = max(rounded[key] - cut, MIN_CURRENT_A)
            excess -= cut
    return rounded
