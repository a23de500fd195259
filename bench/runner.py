"""One run of a scenario: plant, protocols and controller wired together on the bench's clock.

This module owns the order of things in a run. It starts the site meter (Modbus TCP on
loopback), the controller (in-process behind :class:`controllers.host.ControllerHost`, or an
external CSMS by URL), one OCPP station emulator per scenario station, then steps the physics
every ``clock.step`` simulated seconds: vehicles arrive and leave, stations offer currents from
their profile engines, EVs draw, PV feeds in and the battery follows the setpoint its inverter holds,
the site sums phases and the breaker heats. An in-process controller is handed the tariff and PV
forecast (:class:`controllers.api.GridSignal`) at the start and whenever day-ahead prices are
published during the run; an external one gets none (no protocol carries them here). Every sample and
every OCPP frame goes to the recorder as it happens; the verdict is computed from the trace
afterwards (:func:`bench.report.judge`). Whatever goes wrong, the trace is closed and kept.

A run can also be driven live (:mod:`bench.live`): a :class:`StepObserver` sees every physics step,
and the ``live_*`` methods are what a person at the bench can do mid-run — plug or unplug a car, cut or
restore the stations' link to the controller, fail or restore the site meter, change the site limit, stop.
They run on the run's own loop and record in the trace what they did, as scenario events do.
"""

from __future__ import annotations

import asyncio
import importlib
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Protocol

from bench import clock as bench_clock
from bench.clock import SimClock
from bench.recorder import Recorder
from bench.report import RunResult, judge
from bench.scenario import (
    Event,
    Scenario,
    ScenarioError,
    Vehicle,
    find_scenario,
    load_scenario,
)
from bench.battery import StationaryBattery
from bench.pv import PVSystem
from bench.site import Breaker, Site, SiteSample, inverter_currents, station_to_site
from bench.tariff import Tariff
from controllers.api import BatteryConfig, Controller, GridSignal, MeterEndpoint, SiteConfig, StationConfig
from controllers.host import ControllerHost
from controllers.register_map import load_register_map
from emulators.ev import EV, EVSpec
from emulators.meter import (
    MeterBehaviour,
    MeterModel,
    MeterReading,
    MeterServer,
    ReadEvent,
    current_resolution_a,
)
from emulators.ocpp16 import Station16
from emulators.ocpp201 import Station201
from emulators.station import StationModel

DEFAULT_SCENARIO = "workplace"
DEFAULT_CONTROLLER = "equal_share"
_FLUSH_EVERY_S = 60.0
# How far ahead a controller is told a time-of-use tariff and the PV forecast: the rest of the run
# and a day beyond, so a plan for the last hours can see the morning after.
_SIGNAL_HORIZON_S = 86_400.0


class ControllerError(ValueError):
    """The controller named on the command line cannot be found or built."""


class CommandRefused(ValueError):
    """A live command that does not fit the run as it is (no such station, no car to unplug, ...)."""


class StepObserver(Protocol):
    """Watches a live run from its loop: once when the physics starts, then after every step."""

    def started(self, run: "_Run") -> None: ...

    def stepped(self, t: float, site: Site, sample: SiteSample, building_a: float) -> None: ...


@dataclass(frozen=True)
class ControllerSpec:
    """What ``--controller`` named: an in-process class, or the URL of an external CSMS."""

    name: str
    factory: Callable[[SiteConfig], Controller] | None = None
    url: str | None = None

    @property
    def external(self) -> bool:
        return self.url is not None


def available_controllers() -> dict[str, str]:
    """Controllers installed under the ``evbench.controllers`` entry point group: name → target."""
    return {ep.name: ep.value for ep in entry_points(group="evbench.controllers")}


def resolve_controller(text: str) -> ControllerSpec:
    """``equal_share`` (an entry point), ``package.module:Class``, or ``ws://``/``wss://`` URL."""
    if text.startswith(("ws://", "wss://")):
        return ControllerSpec(text, url=text)
    target = available_controllers().get(text, text)
    if ":" not in target:
        known = ", ".join(sorted(available_controllers()))
        raise ControllerError(f"--controller: unknown controller {text!r}; expected one of {known}, "
                              "module:Class or a ws:// URL")
    module_name, _, class_name = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ControllerError(f"--controller: cannot load {target!r}: {error}") from None
    if not (isinstance(factory, type) and issubclass(factory, Controller)):
        raise ControllerError(f"--controller: {target!r} is not a controllers.api.Controller subclass")
    return ControllerSpec(text, factory=factory)


def check_controller_config(spec: ControllerSpec, site: SiteConfig) -> None:
    """Build the controller once on the installer's configuration so that a setting it refuses (a bad
    ``[controller.options]`` value) is bad input before anything starts, not a crash mid-run."""
    if spec.factory is None:
        return
    try:
        spec.factory(site)
    except (ValueError, TypeError) as error:
        raise ControllerError(f"{spec.name}: [controller.options]: {error}") from None


def site_config(scenario: Scenario, meter: MeterEndpoint | None = None) -> SiteConfig:
    """The installer's view of the site, which is all a controller is told: the limit, the chargers (and their
    sub-meters), and where the site meter is wired (``meter``: its port is only known once it listens)."""
    battery = scenario.site.battery
    return SiteConfig(
        limit_a=scenario.site.limit_a, phases=scenario.site.phases, voltage_v=scenario.site.voltage_v,
        stations=tuple(StationConfig(s.id, s.max_current_a, s.phases, s.connectors, s.ocpp, s.meter_unit,
                                     s.meter_model, s.priority, s.rotation)
                       for s in scenario.stations),
        meter=meter, period_s=scenario.controller.period_s, meter_poll_s=scenario.controller.meter_poll_s,
        battery=None if battery is None else BatteryConfig(
            battery.capacity_kwh, battery.max_charge_kw * 1000.0, battery.max_discharge_kw * 1000.0,
            battery.min_soc, battery.max_soc, battery.efficiency, battery.unit_id, battery.model),
        pv_peak_w=0.0 if scenario.site.pv is None else scenario.site.pv.peak_kw * 1000.0,
        options=dict(scenario.controller.options),
    )


def site_tariff(scenario: Scenario) -> Tariff | None:
    """The scenario's ``[tariff]`` as the pure model (:mod:`bench.tariff`), or None."""
    t = scenario.tariff
    if t is None:
        return None
    return Tariff(scenario.clock.start.timestamp(), time_of_use=t.import_price_per_kwh, day_ahead=t.day_ahead_per_kwh,
                  publish_s=t.day_ahead_publish_s, export_price_per_kwh=t.export_price_per_kwh,
                  demand_charge_per_kw=t.demand_charge_per_kw, currency=t.currency)


def site_pv(scenario: Scenario) -> PVSystem | None:
    """The scenario's ``[site.pv]`` as the pure model (:mod:`bench.pv`), or None."""
    pv = scenario.site.pv
    if pv is None:
        return None
    return PVSystem(pv.peak_kw * 1000.0, pv.sunrise_s, pv.sunset_s, pv.profile_s)


def grid_signal(tariff: Tariff | None, pv: PVSystem | None, now: float, run_end: float) -> GridSignal:
    """What a controller knows at ``now`` (epoch) of prices and PV: known prices, clear-sky forecast."""
    horizon = max(run_end, now) + _SIGNAL_HORIZON_S
    if tariff is None:
        forecast = () if pv is None else pv.forecast(now, horizon)
        return GridSignal(pv_forecast=forecast)
    prices = tariff.known_prices(now, horizon)
    known_until = prices[-1].end if prices else now
    return GridSignal(prices=prices, export_price_per_kwh=tariff.export_price_per_kwh,
                      demand_charge_per_kw=tariff.demand_charge_per_kw,
                      pv_forecast=() if pv is None else pv.forecast(now, known_until if tariff.day_ahead else horizon),
                      currency=tariff.currency)


def meter_endpoint(scenario: Scenario, port: int) -> MeterEndpoint:
    """Where the scenario's site meter listens, as an installer would configure it in a product."""
    m = scenario.site.meter
    return MeterEndpoint(model=m.model, host=m.host, port=port, serial_port=m.serial, baudrate=m.baudrate,
                         parity=m.parity, stopbits=m.stopbits, unit_id=m.unit_id)


def describe_meter(scenario: Scenario, port: int) -> str:
    """One line for a person wiring a controller to the bench's meter."""
    m = scenario.site.meter
    if m.serial:
        where = f"Modbus RTU on {m.serial} {m.baudrate} 8{m.parity}{m.stopbits}"
    else:
        where = f"Modbus TCP {m.host}:{port}"
    subs = [f"{s.id} unit {s.meter_unit} ({s.meter_model or m.model})" for s in scenario.stations
            if s.meter_unit is not None]
    return (f"site meter: {m.model} on {where} unit {m.unit_id}, refreshed every {m.update_interval_s:g} s"
            + (f"; sub-meters: {', '.join(subs)}" if subs else ""))


def _meta(scenario: Scenario, controller: str, seed: int, duration_s: float) -> dict:
    meta = {
        "scenario": scenario.name,
        "scenario_path": str(scenario.source or ""),
        "controller": controller,
        "seed": seed,
        "start_epoch": scenario.clock.start.timestamp(),
        "duration_s": duration_s,
        "step_s": scenario.clock.step_s,
        "voltage_v": scenario.site.voltage_v,
        "phases": scenario.site.phases,
        "site_limit_a": scenario.site.limit_a,
        "breaker_rating_a": scenario.site.breaker.rating_a,
        "breaker_curve": scenario.site.breaker.curve,
        "checks": scenario.checks.model_dump(),
        "stations": [{"id": s.id, "ocpp": s.ocpp, "connectors": s.connectors, "max_current_a": s.max_current_a,
                      "phases": s.phases, "rotation": s.rotation} for s in scenario.stations],
        # each car's on-board charger limit: what it could draw however much it is offered (REALLOCATE)
        "vehicles": [{"id": v.id, "max_current_a": v.max_current_a} for v in scenario.vehicles],
    }
    tariff = site_tariff(scenario)
    if tariff is not None:
        # The price in force at every moment of the run, as [t since start, price] steps: what the cost metrics read.
        start = tariff.start_epoch
        meta["tariff"] = {
            "currency": tariff.currency, "export_price_per_kwh": tariff.export_price_per_kwh,
            "demand_charge_per_kw": tariff.demand_charge_per_kw,
            "kind": "time_of_use" if tariff.time_of_use is not None else "day_ahead",
            "import_prices": [[p.start - start, p.price_per_kwh] for p in tariff.schedule(start, start + duration_s)],
        }
    if scenario.site.pv is not None:
        meta["pv_peak_w"] = scenario.site.pv.peak_kw * 1000.0
    if scenario.site.battery is not None:
        meta["battery"] = scenario.site.battery.model_dump()
    return meta


class _Run:
    """The live objects of one run; :meth:`execute` is the whole run."""

    def __init__(self, scenario: Scenario, controller: ControllerSpec, recorder: Recorder, seed: int,
                 duration_s: float, announce: Callable[[str], None]) -> None:
        self.scenario = scenario
        self.controller = controller
        self.recorder = recorder
        self.seed = seed
        self.rng = random.Random(seed)
        self.duration_s = duration_s
        self.announce = announce
        self.clock: SimClock | None = None
        self.meter: MeterServer | None = None
        self.host: ControllerHost | None = None
        self.stations: dict[str, Station16 | Station201] = {}
        self.models: dict[str, StationModel] = {}
        self.plugged: dict[str, tuple[Any, EV]] = {}  # vehicle id → (scenario vehicle, its EV)
        self.needs_later: dict[str, Any] = {}  # vehicle id → vehicle_needs event before it arrived
        self.background: set[asyncio.Task] = set()
        self.meter_models: dict[int, MeterModel] = {}  # unit id → what that meter shows of the truth
        self.sub_meter_units: dict[str, int] = {s.id: s.meter_unit for s in scenario.stations
                                                if s.meter_unit is not None}
        self.limit_a = scenario.site.limit_a
        self.building_override_a: float | None = None
        self.observer: StepObserver | None = None
        self.arrivals: list[Any] = sorted(scenario.vehicles, key=lambda v: (v.arrival_s, v.id))
        self.departures: list[Any] = sorted(scenario.vehicles, key=lambda v: (v.departure_s, v.id))
        self.stop_requested = False
        self.link_up = True
        self.meter_fault: str | None = None
        self._live_cars = 0
        self.tariff = site_tariff(scenario)
        self.pv = site_pv(scenario)
        b = scenario.site.battery
        self.battery = None if b is None else StationaryBattery(
            b.capacity_kwh, b.max_charge_kw * 1000.0, b.max_discharge_kw * 1000.0, b.efficiency, b.initial_soc,
            b.min_soc, b.max_soc)
        self.cloud_factor = 1.0
        self.pv_w = 0.0  # the plant this step, for a live view
        self.battery_w = 0.0

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def _now(self) -> float:
        assert self.clock is not None
        return self.clock.now_s()

    async def execute(self) -> None:
        sc = self.scenario
        loop = asyncio.get_running_loop()
        self.clock = SimClock(loop, sc.clock.start.timestamp())
        try:
            await self._start_meter()
            assert self.meter is not None
            endpoint = meter_endpoint(sc, self.meter.port)
            self.announce(describe_meter(sc, self.meter.port))
            if self.controller.external:
                url = self.controller.url
                self.announce(f"stations connect to {url}/<station id>")
            else:
                assert self.controller.factory is not None
                instance = self.controller.factory(site_config(sc, endpoint))
                self.host = ControllerHost(instance, meter=endpoint, now=self.clock.epoch)
                url = await self.host.start()
                self._send_grid_signal(0.0)
            for station in sc.stations:
                self._add_station(station, url)
            await self._physics()
        except asyncio.CancelledError:
            self.recorder.event(self._now(), "run_interrupted", None, {"reason": "cancelled"})
            raise
        finally:
            await self._shutdown()

    def _send_grid_signal(self, t: float) -> None:
        """Tell an in-process controller what is known at ``t`` of prices and PV (nothing to tell: nothing sent)."""
        if self.host is None or (self.tariff is None and self.pv is None):
            return
        start = self.scenario.clock.start.timestamp()
        signal = grid_signal(self.tariff, self.pv, start + t, start + self.duration_s)
        self.host.grid_signal(signal)
        self.recorder.event(t, "grid_signal", None, {
            "prices": len(signal.prices), "prices_until_s": signal.prices[-1].end - start if signal.prices else None,
            "pv_forecast": len(signal.pv_forecast)})

    async def _start_meter(self) -> None:
        """The site meter, the stations' sub-meters and the battery inverter: one Modbus server (a bus, or a
        gateway on TCP)."""
        m = self.scenario.site.meter
        subs = {s.meter_unit: s.meter_model or m.model for s in self.scenario.stations if s.meter_unit is not None}
        battery = self.scenario.site.battery
        devices = dict(subs)
        if battery is not None:
            devices[battery.unit_id] = battery.model
        self.meter = MeterServer(m.model, host=m.host, port=m.port, device_id=m.unit_id, serial_port=m.serial,
                                 baudrate=m.baudrate, parity=m.parity, stopbits=m.stopbits, sub_meters=devices,
                                 on_read=self._meter_read, seed=self.seed)
        site = MeterBehaviour(m.update_interval_s, m.delay_s, m.noise, m.ct_ratio)
        # Sub-meters sit on the station's own cables: no CT, otherwise the same kind of device.
        direct = MeterBehaviour(m.update_interval_s, m.delay_s, m.noise, None)
        for unit, model in {m.unit_id: m.model, **devices}.items():
            self.meter_models[unit] = MeterModel(site if unit == m.unit_id else direct, seed=self.seed + unit,
                                                 current_resolution_a=current_resolution_a(load_register_map(model)))
        self.recorder.event(0.0, "meter_config", None, {
            "model": m.model, "update_interval_s": m.update_interval_s, "delay_s": m.delay_s, "noise": m.noise,
            "ct_ratio": m.ct_ratio, "transport": f"rtu {m.serial}" if m.serial else "tcp", "unit": m.unit_id,
            "sub_meters": {str(u): model for u, model in subs.items()},
            **({"battery_inverter": {"unit": battery.unit_id, "model": battery.model}} if battery else {})})
        await self.meter.start()

    def _meter_read(self, read: ReadEvent) -> None:
        """Every request the meter got: the trace shows when the controller read stale or no data."""
        age_s = None
        if read.values_at is not None:
            # values_at is event-loop time; what was served was measured delay_s before it was published.
            age_s = asyncio.get_running_loop().time() - read.values_at + self.scenario.site.meter.delay_s
        self.recorder.meter_read(self._now(), read.unit, read.function_code, read.address, read.count,
                                 read.outcome, age_s)

    def _add_station(self, station: Any, url: str) -> None:
        assert self.clock is not None
        model = StationModel(station.id, station.connectors, station.max_current_a, station.phases,
                             self.scenario.site.voltage_v, version=station.ocpp)
        sid = station.id

        def record(direction: str, raw: str) -> None:
            self.recorder.message(self._now(), sid, direction, raw)

        def report(kind: str, detail: dict) -> None:
            self.recorder.event(self._now(), kind, sid, detail)

        adapter = Station201 if station.ocpp == "2.0.1" else Station16
        emulator = adapter(model, url, self.clock, record, report,
                           meter_value_interval_s=station.meter_value_interval_s,
                           heartbeat_interval_s=station.heartbeat_interval_s)
        self.models[sid] = model
        self.stations[sid] = emulator
        self._spawn(emulator.run())

    async def _physics(self) -> None:
        sc, rec, clock = self.scenario, self.recorder, self.clock
        assert clock is not None and self.meter is not None
        step_s = sc.clock.step_s
        voltage_v = sc.site.voltage_v
        site = Site(voltage_v, Breaker(sc.site.breaker.rating_a, sc.site.breaker.curve))
        arrivals, departures = self.arrivals, self.departures
        events = list(sc.events)
        plugged = self.plugged
        full: set[str] = set()
        station_limits: dict[str, float | None] = {}
        rotations = {s.id: s.rotation for s in sc.stations}
        start_epoch = clock.start_epoch
        site_unit = sc.site.meter.unit_id
        site_meter = self.meter_models[site_unit]
        sub_meters = [(sid, unit, self.meter_models[unit]) for sid, unit in self.sub_meter_units.items()]
        station_currents: dict[str, tuple[float, float, float]] = {}
        next_flush_s = _FLUSH_EVERY_S
        pv, battery = self.pv, self.battery
        plant = pv is not None or battery is not None
        battery_unit = sc.site.battery.unit_id if sc.site.battery is not None else None
        battery_meter = self.meter_models[battery_unit] if battery_unit is not None else None
        publications = ([] if self.tariff is None
                        else [e - start_epoch for e in self.tariff.publications(start_epoch, start_epoch + self.duration_s)])
        steps = int(round(self.duration_s / step_s))
        observer = self.observer
        if observer is not None:
            observer.started(self)
        end_s = self.duration_s
        for k in range(steps):
            t = k * step_s
            await clock.sleep_until(t)
            if self.stop_requested:
                end_s = t
                rec.event(t, "run_interrupted", None, {"reason": "stopped"})
                break
            while events and events[0].at_s <= t:
                self._apply_event(events.pop(0), t)
            while publications and publications[0] <= t:
                publications.pop(0)
                self._send_grid_signal(t)
            while departures and departures[0].departure_s <= t:
                vehicle = departures.pop(0)
                if vehicle.id in plugged:
                    # The plugged entry, not the schedule's: a car plugged in early (live) arrived then.
                    self._depart(*plugged.pop(vehicle.id), t)
            while arrivals and arrivals[0].arrival_s <= t:
                vehicle = arrivals.pop(0)
                if vehicle.departure_s > t:
                    plugged[vehicle.id] = (vehicle, self._arrive(vehicle, t))
            epoch = start_epoch + t
            supplied = site.breaker.closed
            phase_sums = []
            for sid, model in self.models.items():
                currents = model.step(epoch, t, step_s, supplied)
                station_currents[sid] = currents
                if sid not in station_limits or model.station_limit_a != station_limits[sid]:
                    # MAX-PROFILE-SUM judges each station's draw against this station-wide bound.
                    station_limits[sid] = model.station_limit_a
                    rec.event(t, "station_max_limit", sid, {"limit_a": model.station_limit_a})
                phase_sums.append(station_to_site(currents, rotations[sid]))
                for port in model.ports.values():
                    ev = port.ev
                    if ev is None:
                        continue
                    rec.station(t, sid, port.id, port.limit_a, port.offered_a, port.currents_a, port.power_w,
                                ev.energy_kwh, ev.soc, port.ev_id)
                    if ev.done and port.ev_id not in full:
                        full.add(port.ev_id)
                        rec.event(t, "vehicle_full", sid, {"ev": port.ev_id, "energy_kwh": round(ev.energy_kwh, 3)})
                        self._spawn(self.stations[sid].ev_full(port.id))
            building_a = (self.building_override_a if self.building_override_a is not None
                          else sc.site.building_load_at((start_epoch + t) % 86400))
            inverters_a = None
            if plant:
                # Inverters disconnect from a dead grid (anti-islanding, EN 50549-1 / VDE-AR-N 4105): no PV, no battery.
                pv_w = pv.clear_sky_w(epoch) * self.cloud_factor if pv is not None and supplied else 0.0
                battery_w = 0.0
                if battery is not None:
                    setpoint_w = self.meter.setpoint(battery_unit) if supplied else 0.0
                    battery_w = battery.step(setpoint_w, step_s)
                self.pv_w, self.battery_w = pv_w, battery_w
                inverters_a = inverter_currents(battery_w - pv_w, voltage_v, sc.site.phases)
            sample = site.step(phase_sums, (building_a, building_a, building_a), step_s, inverters_a)
            rec.site(t, sample.currents_a, self.limit_a, sample.power_w, building_a, sample.closed)
            if plant:
                rec.plant(t, self.pv_w, self.battery_w, None if battery is None else battery.soc)
            if sample.tripped_now:
                rec.event(t, "breaker_trip", None, {"currents_a": [round(i, 1) for i in sample.currents_a],
                                                    "reason": site.breaker.trip_reason,
                                                    "rating_a": sc.site.breaker.rating_a})
                rec.flush()
            # The meters see the truth through their own behaviour (refresh interval, delay, noise, CT).
            volts = (voltage_v,) * 3 if sample.closed else (0.0, 0.0, 0.0)
            i1, i2, i3 = sample.currents_a
            shown = site_meter.observe(t, MeterReading(
                voltages_v=volts, currents_a=(i1, i2, i3),
                power_w=(voltage_v * i1, voltage_v * i2, voltage_v * i3), import_kwh=site.energy_import_kwh,
                export_kwh=site.energy_export_kwh))
            if shown is not None:
                await self.meter.update(shown, site_unit)
            if battery_meter is not None:
                i1, i2, i3 = inverter_currents(self.battery_w, voltage_v, sc.site.phases)
                shown = battery_meter.observe(t, MeterReading(
                    voltages_v=volts, currents_a=(i1, i2, i3),
                    power_w=(voltage_v * i1, voltage_v * i2, voltage_v * i3), import_kwh=battery.charged_kwh,
                    export_kwh=battery.discharged_kwh, soc=battery.soc))
                if shown is not None:
                    await self.meter.update(shown, battery_unit)
            for sid, unit, meter_model in sub_meters:
                i1, i2, i3 = station_currents[sid]
                shown = meter_model.observe(t, MeterReading(
                    voltages_v=volts, currents_a=(i1, i2, i3),
                    power_w=(voltage_v * i1, voltage_v * i2, voltage_v * i3),
                    import_kwh=sum(port.meter_wh for port in self.models[sid].ports.values()) / 1000.0))
                if shown is not None:
                    await self.meter.update(shown, unit)
            if t >= next_flush_s:
                next_flush_s = t + _FLUSH_EVERY_S
                rec.flush()
            if observer is not None:
                observer.stepped(t, site, sample, building_a)
        else:
            await clock.sleep_until(steps * step_s)
        for vehicle, ev in plugged.values():
            self._record_vehicle(vehicle, ev, min(vehicle.departure_s, end_s))

    def _arrive(self, vehicle: Any, t: float) -> EV:
        station = self.scenario.station(vehicle.station)
        spec = EVSpec(battery_kwh=vehicle.battery_kwh, initial_soc=vehicle.initial_soc, target_soc=vehicle.target_soc,
                      max_current_a=vehicle.max_current_a, phases=min(vehicle.phases, station.phases),
                      taper_knee_soc=vehicle.taper_knee_soc,
                      # The seed varies each EV's lag within its configured bound.
                      response_lag_s=vehicle.response_lag_s * self.rng.uniform(0.25, 1.0),
                      voltage_v=self.scenario.site.voltage_v, iso15118=vehicle.iso15118,
                      departure_s=vehicle.departure_s, discharge_max_current_a=vehicle.discharge_max_current_a,
                      min_soc=vehicle.min_soc)
        ev = EV(spec)
        later = self.needs_later.pop(vehicle.id, None)
        if later is not None:
            ev.change_needs(later.departure_s, later.target_soc)
        self.models[station.id].plug(vehicle.connector, ev, vehicle.id, vehicle.id_tag)
        self.recorder.event(t, "vehicle_arrived", station.id, {"ev": vehicle.id, "connector": vehicle.connector})
        self._spawn(self.stations[station.id].plug_in(vehicle.connector, vehicle.id_tag))
        return ev

    def _depart(self, vehicle: Any, ev: EV, t: float) -> None:
        self._record_vehicle(vehicle, ev, t)
        self.recorder.event(t, "vehicle_departed", vehicle.station,
                            {"ev": vehicle.id, "energy_kwh": round(ev.energy_kwh, 3), "soc": round(ev.soc, 4)})
        # The car is gone at once (its current stops this step); the OCPP messages follow.
        self.models[vehicle.station].unplug(vehicle.connector)
        self._spawn(self.stations[vehicle.station].unplug(vehicle.connector))

    def _record_vehicle(self, vehicle: Any, ev: EV, until_s: float) -> None:
        station = self.scenario.station(vehicle.station)
        phases = min(vehicle.phases, station.phases)
        rate_a = min(vehicle.max_current_a, station.max_current_a)
        own_bound_kwh = rate_a * self.scenario.site.voltage_v * phases * max(until_s - vehicle.arrival_s, 0) / 3.6e6
        self.recorder.vehicle(vehicle.id, vehicle.station, vehicle.connector, vehicle.arrival_s, until_s,
                              ev.requested_kwh, ev.energy_kwh, min(ev.requested_kwh, own_bound_kwh))

    def _apply_event(self, event: Any, t: float) -> None:
        if event.kind == "site_limit":
            self.limit_a = event.value_a
            if self.host is not None:
                self.host.site_limit_changed(event.value_a)
        elif event.kind == "building_load":
            self.building_override_a = event.value_a
        elif event.kind == "cloud":
            self.cloud_factor = event.factor
            self.recorder.event(t, event.kind, None, {"factor": event.factor})
            return
        elif event.kind == "external_limit":
            station = self.stations[event.station]
            assert isinstance(station, Station201)  # the scenario allows it on 2.0.1 stations only
            self._spawn(station.set_external_constraints(0, event.value_a))
            self.recorder.event(t, event.kind, event.station, {"value_a": event.value_a})
            return
        elif event.kind == "vehicle_needs":
            self._change_needs(event, t)
            return
        elif event.kind in ("meter_fault", "meter_restored"):
            assert self.meter is not None
            unit = self.sub_meter_units[event.station] if event.station else self.scenario.site.meter.unit_id
            self.meter.set_fault(event.fault if event.kind == "meter_fault" else None, unit)
            detail = {"unit": unit, **({"fault": event.fault} if event.kind == "meter_fault" else {})}
            self.recorder.event(t, event.kind, event.station, detail)
            return
        self.recorder.event(t, event.kind, None, {"value_a": event.value_a})

    def _change_needs(self, event: Any, t: float) -> None:
        detail = {"ev": event.vehicle, "departure_s": event.departure_s, "target_soc": event.target_soc}
        entry = self.plugged.get(event.vehicle)
        if entry is None:
            self.needs_later[event.vehicle] = event  # it states them when it arrives
        else:
            vehicle, ev = entry
            needs = ev.change_needs(event.departure_s, event.target_soc)
            detail["energy_wh"] = None if needs is None else round(needs.energy_wh, 1)
            station = self.stations[vehicle.station]
            if isinstance(station, Station201):
                self._spawn(station.renegotiate(vehicle.connector))
        station_id = next(v.station for v in self.scenario.vehicles if v.id == event.vehicle)
        self.recorder.event(t, "vehicle_needs", station_id, detail)

    # -- live commands (on the run's loop, while the physics runs) ------------------------------------------------

    def live_plug(self, station_id: str, connector: int) -> str:
        """A car arrives now: the connector's next scheduled vehicle if it is not yet due, else a default car
        (60 kWh, 20 → 80 %, 32 A, 3-phase) that stays to the end of the run. Returns the vehicle id."""
        self._connector(station_id, connector)
        if self.models[station_id].ports[connector].ev is not None:
            raise CommandRefused(f"{station_id} connector {connector} already has a car")
        t = self._now()
        scheduled = next((v for v in self.arrivals if v.station == station_id and v.connector == connector), None)
        if scheduled is not None and scheduled.departure_s > t:
            self.arrivals.remove(scheduled)
            vehicle = scheduled.model_copy(update={"arrival_s": t})
        else:
            self._live_cars += 1
            vehicle = Vehicle.model_validate({
                "id": f"LIVE{self._live_cars:02d}", "station": station_id, "connector": connector, "arrival": t,
                "departure": max(self.duration_s, t + 1.0), "battery_kwh": 60, "initial_soc": 0.2,
                "target_soc": 0.8, "max_current_a": 32, "phases": 3})
        self.plugged[vehicle.id] = (vehicle, self._arrive(vehicle, t))
        return vehicle.id

    def live_unplug(self, station_id: str, connector: int) -> str:
        """The car on the connector leaves now. Returns its vehicle id."""
        self._connector(station_id, connector)
        ev_id = self.models[station_id].ports[connector].ev_id
        if ev_id is None or ev_id not in self.plugged:
            raise CommandRefused(f"{station_id} connector {connector} has no car")
        self._depart(*self.plugged.pop(ev_id), self._now())
        return ev_id

    def live_drop_link(self) -> None:
        """Every station loses its connection to the controller and stays offline until :meth:`live_restore_link`."""
        if not self.link_up:
            raise CommandRefused("the controller link is already down")
        self.link_up = False
        self.recorder.event(self._now(), "controller_link_lost", None, {})
        for station in self.stations.values():
            self._spawn(station.disconnect())

    def live_restore_link(self) -> None:
        if self.link_up:
            raise CommandRefused("the controller link is up")
        self.link_up = True
        self.recorder.event(self._now(), "controller_link_restored", None, {})
        for station in self.stations.values():
            station.reconnect()

    def live_fail_meter(self, fault: str) -> None:
        """The site meter goes ``fault``, as a scenario ``meter_fault`` event would make it."""
        self._apply_event(self._live_event(kind="meter_fault", fault=fault), self._now())
        self.meter_fault = fault

    def live_restore_meter(self) -> None:
        if self.meter_fault is None:
            raise CommandRefused("the site meter has no fault")
        self._apply_event(self._live_event(kind="meter_restored"), self._now())
        self.meter_fault = None

    def live_set_site_limit(self, limit_a: float) -> None:
        """A grid signal: the site limit becomes ``limit_a``, as a scenario ``site_limit`` event sets it."""
        self._apply_event(self._live_event(kind="site_limit", value_a=limit_a), self._now())

    def live_stop(self) -> None:
        """End the run at the next physics step, as if its duration were up (``run_interrupted`` says it was not)."""
        self.stop_requested = True

    def _live_event(self, **fields: Any) -> Event:
        try:
            return Event.model_validate({"at": self._now(), **fields})
        except ValueError as error:
            raise CommandRefused(str(error)) from None

    def _connector(self, station_id: str, connector: int) -> None:
        model = self.models.get(station_id)
        if model is None:
            raise CommandRefused(f"no station {station_id!r}")
        if connector not in model.ports:
            raise CommandRefused(f"{station_id} has no connector {connector}")

    async def _shutdown(self) -> None:
        for emulator in self.stations.values():
            await emulator.stop()
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        if self.host is not None:
            await self.host.stop()
        if self.meter is not None:
            await self.meter.stop()
        self.recorder.close()


def default_trace_path(scenario: Scenario, controller: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in controller)[:40]
    return Path("runs") / f"{scenario.name}-{safe}-{stamp}.db"


def run_scenario(scenario: str | Path | Scenario = DEFAULT_SCENARIO, controller: str = DEFAULT_CONTROLLER, *,
                 trace: str | Path | None = None, speed: float | None = None, realtime: bool = False,
                 duration_s: float | None = None, seed: int | None = None,
                 announce: Callable[[str], None] = lambda _: None) -> RunResult:
    """Run a scenario against a controller and judge it.

    ``scenario``: a bundled name (``"workplace"``), a path, or a loaded :class:`Scenario`.
    ``controller``: an entry-point name, ``module:Class`` or an external CSMS URL.
    Time: virtual (as fast as possible) for in-process controllers unless ``speed`` or
    ``realtime`` says otherwise; external controllers run on the wall clock.
    Raises :class:`ScenarioError` / :class:`ControllerError` on bad input, before anything starts.
    """
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(find_scenario(str(scenario)))
    spec = resolve_controller(controller)
    check_controller_config(spec, site_config(sc))
    if realtime or (spec.external and speed is None):
        speed = 1.0
    run_seed = sc.seed if seed is None else seed
    length_s = sc.clock.duration_s if duration_s is None else duration_s
    if length_s <= 0:
        raise ScenarioError(f"must be > 0 (got {length_s})", field="duration")
    trace_path = Path(trace) if trace is not None else default_trace_path(sc, spec.name)
    recorder = Recorder(trace_path, _meta(sc, spec.name, run_seed, length_s))
    run = _Run(sc, spec, recorder, run_seed, length_s, announce)
    try:
        bench_clock.run(run.execute, speed=speed)
    except KeyboardInterrupt:
        recorder.event(run._now() if run.clock else 0.0, "run_interrupted", None, {"reason": "KeyboardInterrupt"})
        raise
    finally:
        recorder.close()
    return judge(trace_path, sc.name, spec.name)
