"""A scenario as acnportal's simulator sees it: its sessions, its network, its limits period by period, one run.

``map_scenario`` turns a :class:`bench.scenario.Scenario` into an :class:`AcnSite` — plain numbers in acnportal's
units (periods, amps per phase, volts per EVSE), no acnportal objects — and ``simulate`` runs one of acnportal's
algorithms on it (``acnsim.Simulator``) and returns the charging rates it applied. Judging those rates (peaks,
violations, cost) is ``acn_compare``'s business, as is running our own controllers.

The mapping, and why:
- Time: acnportal steps in periods of ``period`` minutes (5 by default); ``period_s`` here, 60 s unless told.
  Period k covers [k·P, (k+1)·P) seconds since clock.start; arrivals and departures round to the nearest period
  (exact for the bundled scenarios, whose times are whole minutes, at P = 60 s).
- Amps and volts: acnportal charges ``rate [A] × voltage [V]`` at each EVSE. A rate here is amps *per phase*, as
  everywhere in the bench, and the EVSE's voltage is the site's phase-to-neutral voltage × the EV's phases (690 V
  for a 3-phase EV on a 230 V site), so that power is the bench's I × U × phases. Every load sits between a phase
  and neutral at unity power factor, so every phase angle is 0 and a grid phase's current is the plain sum of the
  rates of the EVSEs drawing on it.
- EVSEs: one per vehicle session (a station that hosts several cars in one run gets one EVSE per car, so each keeps
  its own phase count and wiring), a ``FiniteRatesEVSE`` offering 0 or 6 A up to min(station, on-board charger) in
  whole amps: IEC 61851-1 allows no offer in (0, 6) A, and our controllers also move in whole amps.
- Constraints: one per grid phase over the EVSEs drawing on it (a 3-phase EV on all three, a 1-phase EV on its
  station's L1 after the station's rotation), magnitude = site limit − the other loads at the grid connection:
  building load minus PV feed-in (spread over three phases like the bench's inverter; clouds scale it). A station
  with several connectors, or whose ChargingStationExternalConstraints change in the run, also gets one per
  station phase. acnportal's constraints are static; :class:`_ScenarioNetwork` resets the magnitudes every period
  from the scenario's site_limit / building_load / external_limit / cloud events, building-load profile and PV,
  so acnportal's algorithms know the limit in force as ours learn it (events, meter).
- EVs: a ``Linear2StageBattery`` of capacity ``battery_kwh`` starting at ``initial_soc``, max power = max current ×
  voltage × phases, its transition at ``taper_knee_soc`` (an ideal ``Battery`` for a knee at 1.0); requested energy
  battery × (target − initial). An ISO 15118 EV's estimated departure is the one it states (and restates in
  ``vehicle_needs`` events, from the event's period on); a basic IEC 61851 EV states none, so it gets the run's
  end: acnportal's EDF then serves it last, as our earliest_deadline does.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from acnportal.acnsim import EV, ChargingNetwork, Current, EventQueue, FiniteRatesEVSE, PluginEvent, Simulator
from acnportal.acnsim.analysis import aggregate_power
from acnportal.acnsim.models import Battery, Linear2StageBattery
from acnportal.algorithms import (
    RoundRobin,
    SortedSchedulingAlgo,
    UncontrolledCharging,
    earliest_deadline_first,
    first_come_first_served,
)

from bench.runner import site_pv
from bench.scenario import Scenario
from bench.site import PHASE_ROTATIONS

#: acnportal's algorithms this benchmark runs, by the name the table shows.
ALGORITHMS = ("round_robin", "edf", "uncontrolled")

MIN_CURRENT_A = 6.0  # IEC 61851-1: no AC offer in (0, 6) A
_JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class AcnSession:
    """One vehicle's stay as an acnportal EV on its own EVSE. Times in periods, currents per phase [A]."""

    vehicle: str
    station: str
    evse_id: str
    grid_phases: tuple[int, ...]  # site phases it draws on: 0 = L1
    station_phases: tuple[int, ...]  # its station's phases it draws on (for per-station constraints)
    voltage_v: float  # [V] site voltage × the EV's phases
    allowable_a: tuple[float, ...]  # the EVSE's offers: 0 and 6 A .. max in whole amps
    arrival: int  # [period]
    departure: int  # [period] it leaves at the start of this period
    stated_departure: int  # [period] what acnportal's estimated_departure starts as
    battery_kwh: float
    initial_soc: float
    taper_knee_soc: float
    requested_kwh: float
    deliverable_kwh: float  # what the bench counts as physically possible (min of request and max rate × stay)

    @property
    def max_a(self) -> float:
        return self.allowable_a[-1]


@dataclass
class AcnSite:
    """A scenario in acnportal's terms. Arrays have one entry per period (``n_periods``)."""

    scenario: str
    period_s: float
    n_periods: int
    start_epoch: float  # [s] clock.start, for 15-minute intervals aligned to the hour
    voltage_v: float  # [V] phase to neutral
    sessions: list[AcnSession]
    limit_a: np.ndarray  # [A] per phase, the site limit in force at each period's start
    other_a: np.ndarray  # [A] per phase, what else flows at the grid connection: building load − PV feed-in
    station_caps_a: dict[str, np.ndarray]  # [A] per station phase, for stations needing their own constraint
    departure_changes: dict[int, list[tuple[str, int]]] = field(default_factory=dict)  # period → (vehicle, period)
    notes: list[str] = field(default_factory=list)  # what of the scenario acnportal does not see

    @property
    def period_min(self) -> float:
        return self.period_s / 60.0

    def phase_matrix(self) -> np.ndarray:
        """(3, sessions): 1 where a session draws on a site phase — phase currents = this @ rates."""
        matrix = np.zeros((3, len(self.sessions)))
        for i, session in enumerate(self.sessions):
            matrix[list(session.grid_phases), i] = 1.0
        return matrix


@dataclass
class AcnRun:
    """What one acnportal algorithm did: the rates it applied and the energy each EV took."""

    algorithm: str
    rates_a: np.ndarray  # (sessions, periods) [A per phase], averages over each period
    power_kw: np.ndarray  # (periods,) acnportal's aggregate power of the EVSEs [kW]
    delivered_kwh: dict[str, float]  # by vehicle, as acnportal's EVs counted it
    wall_s: float


def map_scenario(scenario: Scenario, period_s: float = 60.0) -> AcnSite:
    """The scenario's vehicles, limits and events in acnportal's terms (see the module docstring)."""
    if not period_s > 0:
        raise ValueError(f"period_s must be > 0, got {period_s!r}")
    end_s = scenario.end_s
    n_periods = max(1, math.ceil(end_s / period_s - 1e-9))
    starts_s = np.arange(n_periods) * period_s
    start_epoch = scenario.clock.start.timestamp()
    voltage_v = scenario.site.voltage_v
    notes: list[str] = []

    def period(t_s: float) -> int:
        return min(round(t_s / period_s), n_periods)

    limit_a = np.full(n_periods, scenario.site.limit_a)
    building_a = np.array([scenario.site.building_load_at((start_epoch + t) % 86400.0) for t in starts_s])
    cloud = np.ones(n_periods)
    external: dict[str, np.ndarray] = {}
    departure_changes: dict[int, list[tuple[str, int]]] = {}
    for event in scenario.events:  # sorted by time: later events overwrite earlier ones from their period on
        first = period(event.at_s)
        if event.kind == "site_limit":
            limit_a[first:] = event.value_a
        elif event.kind == "building_load":
            building_a[first:] = event.value_a  # the runner's override holds to the end, whatever the profile says
        elif event.kind == "external_limit":
            station = scenario.station(event.station)
            caps = external.setdefault(station.id, np.full(n_periods, station.max_current_a))
            caps[first:] = min(event.value_a, station.max_current_a)
        elif event.kind == "vehicle_needs":
            if event.departure_s is not None:
                departure_changes.setdefault(first, []).append((event.vehicle, period(event.departure_s)))
            if event.target_soc is not None:
                notes.append(f"{event.vehicle}'s new target_soc {event.target_soc:g} at +{event.at_s:g} s is not "
                             "mapped: acnportal keeps its first request")
        elif event.kind == "cloud":
            cloud[first:] = event.factor
        elif event.kind in ("meter_fault", "meter_restored"):
            notes.append(f"{event.kind} at +{event.at_s:g} s is not mapped: acnportal has no meter")

    pv = site_pv(scenario)
    pv_a = np.zeros(n_periods)
    if pv is not None and scenario.site.phases == 3:
        pv_a = np.array([pv.clear_sky_w(start_epoch + t) for t in starts_s]) * cloud / (3.0 * voltage_v)
    elif pv is not None:
        notes.append("PV on a 1-phase site is not mapped: acnportal's site sees no feed-in")
    if scenario.site.battery is not None:
        notes.append("the stationary battery idles on acnportal's side: its algorithms command none")

    sessions = []
    late = [vehicle.id for vehicle in scenario.vehicles if vehicle.departure_s > end_s]
    if late:
        notes.append(f"{len(late)} vehicles ({', '.join(late[:3])}{', ...' if len(late) > 3 else ''}) leave after "
                     "the run ends: both sides stop charging them at the end")
    for vehicle in scenario.vehicles:
        station = scenario.station(vehicle.station)
        phases = min(vehicle.phases, station.phases)
        wiring = PHASE_ROTATIONS[station.rotation]
        max_a = min(vehicle.max_current_a, station.max_current_a)
        arrival = min(period(vehicle.arrival_s), n_periods - 1)
        departure = max(period(vehicle.departure_s), arrival + 1)
        stated = departure if vehicle.iso15118 else n_periods
        stay_s = min(vehicle.departure_s, end_s) - vehicle.arrival_s
        own_bound_kwh = max_a * voltage_v * phases * max(stay_s, 0.0) / _JOULES_PER_KWH
        sessions.append(AcnSession(
            vehicle=vehicle.id, station=station.id, evse_id=f"{station.id}-{vehicle.connector}-{vehicle.id}",
            grid_phases=tuple(wiring[:phases]), station_phases=tuple(range(phases)),
            voltage_v=voltage_v * phases, allowable_a=_offers(max_a),
            arrival=arrival, departure=departure, stated_departure=max(stated, arrival + 1),
            battery_kwh=vehicle.battery_kwh, initial_soc=vehicle.initial_soc, taper_knee_soc=vehicle.taper_knee_soc,
            requested_kwh=vehicle.requested_kwh, deliverable_kwh=min(vehicle.requested_kwh, own_bound_kwh)))

    station_caps = dict(external)
    for station in scenario.stations:
        if station.connectors > 1 and station.id not in station_caps:
            station_caps[station.id] = np.full(n_periods, station.max_current_a)
    return AcnSite(scenario=scenario.name, period_s=period_s, n_periods=n_periods, start_epoch=start_epoch,
                   voltage_v=voltage_v, sessions=sessions, limit_a=limit_a, other_a=building_a - pv_a,
                   station_caps_a=station_caps, departure_changes=departure_changes, notes=notes)


def _offers(max_a: float) -> tuple[float, ...]:
    """0, then 6 A to ``max_a`` in whole amps (and ``max_a`` itself when it is not whole)."""
    offers = [0.0] + [float(a) for a in range(int(MIN_CURRENT_A), math.floor(max_a) + 1)]
    if max_a > offers[-1]:
        offers.append(float(max_a))
    return tuple(offers)


class _ScenarioNetwork(ChargingNetwork):
    """acnportal's charging network with the scenario's limits in force period by period.

    acnportal's ``Simulator`` calls ``post_charging_update`` once after each period's charging and before the next
    period's scheduling, so resetting ``magnitudes`` there is what the next schedule sees. The same hook restates an
    ISO 15118 EV's departure when the scenario's driver changes it.
    """

    def __init__(self, site: AcnSite, evs: dict[str, EV]) -> None:
        super().__init__()
        self._evs = evs
        self._changes = site.departure_changes
        self._period = 0
        for session in site.sessions:
            self.register_evse(FiniteRatesEVSE(session.evse_id, session.allowable_a), session.voltage_v, 0.0)
        schedule = []  # one row of magnitudes per constraint, in the order added
        budget_a = np.maximum(site.limit_a - site.other_a, 0.0)
        for phase in range(3):
            loads = [s.evse_id for s in site.sessions if phase in s.grid_phases]
            if loads:
                self.add_constraint(Current(loads), float(budget_a[0]), name=f"L{phase + 1}")
                schedule.append(budget_a)
        for station_id, caps_a in site.station_caps_a.items():
            for phase in range(3):
                loads = [s.evse_id for s in site.sessions if s.station == station_id and phase in s.station_phases]
                if loads:
                    self.add_constraint(Current(loads), float(caps_a[0]), name=f"{station_id}/L{phase + 1}")
                    schedule.append(caps_a)
        self._schedule = np.array(schedule) if schedule else np.zeros((0, site.n_periods))
        self._restate(0)

    def post_charging_update(self) -> None:
        self._period += 1
        if self._period < self._schedule.shape[1]:
            self.magnitudes = self._schedule[:, self._period].copy()
        self._restate(self._period)

    def _restate(self, period: int) -> None:
        for vehicle, departure in self._changes.get(period, ()):
            ev = self._evs[vehicle]
            ev.estimated_departure = max(departure, ev.arrival + 1)


def _scheduler(algorithm: str):
    if algorithm == "round_robin":
        return RoundRobin(first_come_first_served)
    if algorithm == "edf":
        return SortedSchedulingAlgo(earliest_deadline_first)
    if algorithm == "uncontrolled":
        return UncontrolledCharging()
    raise ValueError(f"unknown acnportal algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")


def simulate(site: AcnSite, algorithm: str) -> AcnRun:
    """Run one of :data:`ALGORITHMS` on ``site`` with acnportal's simulator."""
    scheduler = _scheduler(algorithm)
    evs = {}
    for s in site.sessions:
        max_kw = s.max_a * s.voltage_v / 1000.0
        start_kwh = s.initial_soc * s.battery_kwh
        battery = (Linear2StageBattery(s.battery_kwh, start_kwh, max_kw, transition_soc=s.taper_knee_soc)
                   if s.taper_knee_soc < 1.0 else Battery(s.battery_kwh, start_kwh, max_kw))
        evs[s.vehicle] = EV(s.arrival, s.departure, s.requested_kwh, s.evse_id, s.vehicle, battery,
                            estimated_departure=s.stated_departure)
    network = _ScenarioNetwork(site, evs)
    queue = EventQueue([PluginEvent(s.arrival, evs[s.vehicle]) for s in site.sessions])
    # acnportal keeps a naive start datetime and only reports it back: clock.start in UTC.
    start = datetime.fromtimestamp(site.start_epoch, UTC).replace(tzinfo=None)
    simulator = Simulator(network, scheduler, queue, start, period=site.period_min, verbose=False)
    wall0 = time.perf_counter()
    with warnings.catch_warnings():
        # Uncontrolled charging breaks the limit every period by design; acnportal warns each time.
        warnings.simplefilter("ignore", UserWarning)
        simulator.run()
    wall_s = time.perf_counter() - wall0
    rates = np.zeros((len(site.sessions), site.n_periods))
    width = min(simulator.charging_rates.shape[1], site.n_periods)
    rates[:, :width] = simulator.charging_rates[:, :width]
    power = np.zeros(site.n_periods)
    power[:width] = aggregate_power(simulator)[:width]
    delivered = {vehicle: ev.energy_delivered for vehicle, ev in simulator.ev_history.items()}
    return AcnRun(algorithm=algorithm, rates_a=rates, power_kw=power, delivered_kwh=delivered, wall_s=wall_s)
