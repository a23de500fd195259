"""A run watched and steered while it goes: the bench on a thread of its own, snapshots out, commands in.

:class:`LiveRun` runs a scenario with the same runner as ``evbench run`` (:class:`bench.runner._Run`), on a
scaled or wall-time :class:`bench.clock.SimLoop` in a background thread. A viewer such as the TUI never touches
a simulation object: after physics steps the bench publishes an immutable :class:`LiveState`, which any thread
reads without a lock (publishing is one reference swap), and every command — pause, speed, plug/unplug,
controller link, meter, site limit, stop — is handed to the bench's loop with ``call_soon_threadsafe`` and
returns at once. What a command did goes to the trace as the matching scenario event would
(``controller_link_lost``, ``meter_fault``, ``site_limit``, ``vehicle_arrived``, ...), and to the live event log.

The verdict so far comes from judging the trace file itself, on a helper thread, at most every few seconds of
wall time: the checks are the same code that judges the finished run, so "so far" never disagrees with "at the
end" about what a finding is; the recorder writes SQLite in WAL mode, so the reader never blocks the bench.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from bench import clock as bench_clock
from bench.clock import SimLoop, check_speed
from bench.recorder import Recorder
from bench.report import RunResult, judge
from bench.runner import (
    DEFAULT_CONTROLLER,
    DEFAULT_SCENARIO,
    CommandRefused,
    _meta,
    _Run,
    default_trace_path,
    resolve_controller,
)
from bench.scenario import Scenario, ScenarioError, find_scenario, load_scenario
from bench.site import Site, SiteSample
from emulators.profiles import ChargingProfile

HISTORY_EVERY_S = 5.0  # [sim s] between points of the site-current history
HISTORY_SPAN_S = 1800.0  # [sim s] the history reaches back this far
EVENT_LOG_SIZE = 200
_FRAME_SHOWN = 160  # characters of an OCPP frame shown in the event log
BILLING_INTERVAL_S = 900.0  # demand is billed per quarter hour of the clock
PUBLISH_EVERY_S = 0.02  # [wall s] snapshots between commands: 50/s is more than any screen refreshes
FLUSH_EVERY_S = 2.0  # [wall s] the trace is flushed at least this often, so the verdict so far is fresh
JUDGE_EVERY_S = 5.0  # [wall s] between judgements of the trace so far ...
JUDGE_SHARE = 0.2  # ... and never more than this share of the wall time spent judging
SCHEDULE_SPAN_S = 3600  # [s] how far a station detail's composite schedules look ahead
DEFAULT_SPEED = 10.0
# Events the runner records for the checks that mean nothing to a person watching.
_QUIET_EVENTS = frozenset({"station_max_limit", "meter_config"})


@dataclass(frozen=True, slots=True)
class StationRow:
    """One connector as the station table shows it. ``status`` is the connector's OCPP status, or ``Offline``
    while the station has no connection to the controller."""

    station: str
    connector: int
    ocpp: str  # "1.6" | "2.0.1"
    status: str
    limit_a: float | None  # composite profile limit [A per phase]; None = no profile limits it
    offered_a: float
    currents_a: tuple[float, float, float]
    power_w: float
    soc: float | None
    energy_kwh: float | None  # delivered in this session
    ev: str | None
    departure: str | None  # "17:30" (scenario clock, UTC)
    needs: str | None  # ISO 15118: "45.0 kWh by 19:00"; None for basic EVs and empty connectors


@dataclass(frozen=True, slots=True)
class LiveState:
    """The run at its latest published physics step. Immutable: read it from any thread."""

    scenario: str
    controller: str
    t_s: float  # scenario seconds
    clock: str  # "2026-03-02 09:15:07" (UTC)
    speed: float
    paused: bool
    finished: bool
    currents_a: tuple[float, float, float]
    limit_a: float
    breaker_closed: bool
    breaker_rating_a: float
    breaker_heat: float  # 0..1 of the thermal trip threshold, hottest phase
    building_a: float
    pv_w: float
    battery_w: float
    power_w: float
    demand_15min_kw: float  # average of the current billing interval so far
    peak_15min_kw: float  # the run's highest billing-interval average
    history: tuple[tuple[float, float, float, float, float], ...]  # (t_s, i1, i2, i3, limit_a)
    stations: tuple[StationRow, ...]  # every connector, in scenario order
    events: tuple[tuple[float, str, str | None, str], ...]  # (t_s, kind, station, text), newest last
    findings: tuple[tuple[str, str], ...]  # (check id, message)
    verdict: str  # "PASS" / "FAIL" so far, "—" before the first judgement
    link_up: bool
    meter_fault: str | None


@dataclass(frozen=True, slots=True)
class StationDetail:
    """A station's installed profiles and, per connector, its composite schedule for the next hour."""

    station: str
    ocpp: str
    profiles: tuple[tuple[int, str, int, str, str], ...]  # (connector/evse, purpose, stack level, kind, summary)
    schedules: tuple[tuple[int, tuple[tuple[int, float], ...]], ...]  # (connector, ((start offset s, limit A), ...))


class LiveRun:
    """One scenario run on a background thread, observed through :meth:`state` and steered by commands.

    The constructor checks its input like :func:`bench.runner.run_scenario` (raising ``ScenarioError`` /
    ``ControllerError``) and starts nothing. Commands are thread-safe and return at once; one that does not fit
    the run (no car to unplug, an unknown station) is refused in the event log, never raised.
    """

    def __init__(self, scenario: str | Path | Scenario = DEFAULT_SCENARIO, controller: str = DEFAULT_CONTROLLER, *,
                 speed: float = DEFAULT_SPEED, realtime: bool = False, trace: str | Path | None = None,
                 seed: int | None = None, duration_s: float | None = None) -> None:
        sc = scenario if isinstance(scenario, Scenario) else load_scenario(find_scenario(str(scenario)))
        spec = resolve_controller(controller)
        speed = 1.0 if realtime else speed
        check_speed(speed)
        length_s = sc.clock.duration_s if duration_s is None else duration_s
        if length_s <= 0:
            raise ScenarioError(f"must be > 0 (got {length_s})", field="duration")
        self.scenario = sc
        self.controller = spec
        self.seed = sc.seed if seed is None else seed
        self.duration_s = length_s
        self.trace_path = Path(trace) if trace is not None else default_trace_path(sc, spec.name)
        self._speed = float(speed)
        self._loop: SimLoop | None = None
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._result: RunResult | None = None
        self._error: BaseException | None = None
        self._snapshots = _Snapshots(sc, spec.name, self._speed)
        self._judge = _Judge(self.trace_path, self._snapshots)
        self._show_messages = False
        self._recorder: _LiveRecorder | None = None

    # -- life -------------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the bench thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError("this live run was started already")
        self._loop = SimLoop(self._speed)
        self._snapshots.loop = self._loop
        self._thread = threading.Thread(target=self._bench, name="evbench-live", daemon=True)
        self._thread.start()
        self._judge.start()

    def state(self) -> LiveState:
        """The latest snapshot."""
        return self._snapshots.state

    def stop(self, timeout_s: float = 60.0) -> RunResult:
        """End the run now, cleanly: the physics stops at its next step (``run_interrupted`` in the trace), the
        stations and controller shut down, the trace is closed and judged."""
        thread = self._started()
        if not self._done.is_set():
            self._submit("stop", lambda run: run.live_stop())
            self._resume_quietly()
        thread.join(timeout_s)
        if thread.is_alive():
            raise TimeoutError(f"the run did not end within {timeout_s} s")
        return self._outcome()

    def wait(self, timeout_s: float | None = None) -> RunResult | None:
        """The run's result once it has finished by itself; None if it is still going after ``timeout_s``."""
        thread = self._started()
        thread.join(timeout_s)
        return None if thread.is_alive() else self._outcome()

    # -- commands ---------------------------------------------------------------------------------------------------

    def pause(self) -> None:
        self._clock().pause()
        self._submit("pause", lambda run: None)

    def resume(self) -> None:
        self._clock().resume()
        self._submit("resume", lambda run: None)

    def set_speed(self, speed: float) -> None:
        check_speed(speed)
        self._clock().set_speed(speed)
        self._submit(f"speed x{speed:g}", lambda run: None)

    def plug(self, station: str, connector: int = 1) -> None:
        """A car arrives now: the connector's next scheduled vehicle if it is not yet due, else a default car
        (60 kWh, 20 → 80 %, 32 A, 3-phase) that stays to the end of the run."""
        self._submit(f"plug in {station}/{connector}", lambda run: run.live_plug(station, connector))

    def unplug(self, station: str, connector: int = 1) -> None:
        """The car on the connector leaves now."""
        self._submit(f"unplug {station}/{connector}", lambda run: run.live_unplug(station, connector))

    def drop_link(self) -> None:
        """Every station loses its connection to the controller until :meth:`restore_link`."""
        self._submit("drop the controller link", lambda run: run.live_drop_link())

    def restore_link(self) -> None:
        self._submit("restore the controller link", lambda run: run.live_restore_link())

    def fail_meter(self, fault: str = "unreachable") -> None:
        """The site meter goes ``fault`` (unreachable, frozen, garbage, word_order, slow)."""
        self._submit(f"fail the site meter ({fault})", lambda run: run.live_fail_meter(fault))

    def restore_meter(self) -> None:
        self._submit("restore the site meter", lambda run: run.live_restore_meter())

    def show_messages(self, on: bool) -> None:
        """Log every OCPP frame in ``events`` (kind ``ocpp``) from now on, or stop; off by default: a busy site
        sends thousands an hour, which would push everything else out of the 200-line log."""
        self._show_messages = on
        recorder = self._recorder
        if recorder is not None:
            recorder.show_messages = on

    def set_site_limit(self, limit_a: float) -> None:
        """A grid signal: the site limit becomes ``limit_a`` [A per phase]."""
        self._submit(f"site limit {limit_a:g} A", lambda run: run.live_set_site_limit(limit_a))

    def station_detail(self, station: str, timeout_s: float = 5.0) -> StationDetail:
        """The station's profiles and composite schedules, computed on the bench loop. Raises ``CommandRefused``
        for an unknown station, ``TimeoutError`` if the bench does not answer in ``timeout_s`` (wall) seconds."""
        answer: concurrent.futures.Future[StationDetail] = concurrent.futures.Future()

        def compute() -> None:
            try:
                answer.set_result(self._snapshots.detail(station))
            except Exception as error:  # handed to the caller's thread, raised there
                answer.set_exception(error)

        try:
            self._clock().call_soon_threadsafe(compute)
        except RuntimeError:
            raise CommandRefused("the run has ended") from None
        return answer.result(timeout_s)

    # -- the bench thread -------------------------------------------------------------------------------------------

    def _bench(self) -> None:
        assert self._loop is not None
        snapshots = self._snapshots
        try:
            recorder = _LiveRecorder(self.trace_path, _meta(self.scenario, self.controller.name, self.seed,
                                                            self.duration_s), snapshots.log)
            recorder.show_messages = self._show_messages
            self._recorder = recorder
            run = _Run(self.scenario, self.controller, recorder, self.seed, self.duration_s,
                       lambda line: snapshots.log(0.0, "info", None, line))
            run.observer = snapshots
            try:
                bench_clock.run(run.execute, loop=self._loop)
            finally:
                recorder.close()
            self._judge.stop()
            self._result = judge(self.trace_path, self.scenario.name, self.controller.name)
            snapshots.finish(self._result)
        except BaseException as error:
            self._error = error
            self._judge.stop()
            snapshots.finish(None, error)
        finally:
            self._done.set()

    def _submit(self, text: str, action: Callable[[_Run], Any]) -> None:
        try:
            self._clock().call_soon_threadsafe(self._snapshots.command, text, action)
        except RuntimeError:
            pass  # the loop has closed: the run is over and a command has nothing left to act on

    def _clock(self) -> SimLoop:
        if self._loop is None:
            raise RuntimeError("start() the live run first")
        return self._loop

    def _resume_quietly(self) -> None:
        try:
            self._clock().resume()
        except RuntimeError:
            pass  # closed

    def _started(self) -> threading.Thread:
        if self._thread is None:
            raise RuntimeError("start() the live run first")
        return self._thread

    def _outcome(self) -> RunResult:
        if self._error is not None:
            raise RuntimeError(f"the live run failed: {self._error!r}") from self._error
        assert self._result is not None
        return self._result


class _LiveRecorder(Recorder):
    """The trace recorder, also telling the live event log every event it records — and, while
    ``show_messages`` is on, every OCPP frame (``→`` sent to the station, ``←`` sent by it)."""

    def __init__(self, path: Path, meta: dict, on_event: Callable[..., None]) -> None:
        super().__init__(path, meta)
        self._on_event = on_event
        self.show_messages = False

    def message(self, t: float, station: str, direction: str, raw: str) -> None:
        super().message(t, station, direction, raw)
        if self.show_messages:
            arrow = "→" if direction == "to_station" else "←"
            text = raw if isinstance(raw, str) else str(raw)
            self._on_event(t, "ocpp", station, f"{arrow} {text[:_FRAME_SHOWN]}")

    def event(self, t: float, kind: str, station: str | None = None, detail: dict | None = None) -> None:
        super().event(t, kind, station, detail)
        if kind not in _QUIET_EVENTS:
            self._on_event(t, kind, station, _describe(kind, detail or {}))


class _Snapshots:
    """The bench-side half of a live run (runs on the bench loop): steps in, immutable states out, commands
    executed. Also the :class:`bench.runner.StepObserver` of the run."""

    def __init__(self, scenario: Scenario, controller: str, speed: float) -> None:
        self.scenario = scenario
        self.controller = controller
        self.speed = speed
        self.loop: SimLoop | None = None
        self.run: _Run | None = None
        self._start_epoch = scenario.clock.start.timestamp()
        self._step_s = scenario.clock.step_s
        self._ocpp = {s.id: s.ocpp for s in scenario.stations}
        self._pending: list[tuple[str, Callable[[_Run], Any]]] = []
        self._events: deque[tuple[float, str, str | None, str]] = deque(maxlen=EVENT_LOG_SIZE)
        self._events_tuple: tuple[tuple[float, str, str | None, str], ...] = ()
        self._history: deque[tuple[float, float, float, float, float]] = deque(
            maxlen=int(HISTORY_SPAN_S / HISTORY_EVERY_S))
        self._next_history_s = 0.0
        self._rows: dict[tuple[str, int], tuple[tuple, StationRow]] = {}
        self._interval = -1
        self._interval_j = 0.0
        self._interval_s = 0.0
        self._peak_kw = 0.0
        self._last_publish = 0.0
        self._last_flush = time.monotonic()
        self._last: tuple[float, Site, SiteSample, float] | None = None
        # Written by the judge thread, read here: each a single reference swap.
        self.verdict = "—"
        self.findings: tuple[tuple[str, str], ...] = ()
        self.judge_problem: str | None = None
        self.state = self._initial_state()

    # -- StepObserver -------------------------------------------------------------------------------------------

    def started(self, run: _Run) -> None:
        self.run = run
        pending, self._pending = self._pending, []
        for text, action in pending:
            self.command(text, action)

    def stepped(self, t: float, site: Site, sample: SiteSample, building_a: float) -> None:
        run = self.run
        assert run is not None
        if t >= self._next_history_s:
            i1, i2, i3 = sample.currents_a
            self._history.append((t, i1, i2, i3, run.limit_a))
            self._next_history_s = t + HISTORY_EVERY_S
        interval = int((self._start_epoch + t) // BILLING_INTERVAL_S)
        if interval != self._interval:
            self._interval, self._interval_j, self._interval_s = interval, 0.0, 0.0
        self._interval_j += sample.power_w * self._step_s
        self._interval_s += self._step_s
        # The interval's energy over the whole quarter hour: a lower bound of its final average, never above it.
        self._peak_kw = max(self._peak_kw, self._interval_j / BILLING_INTERVAL_S / 1000.0)
        self._last = (t, site, sample, building_a)
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_EVERY_S:
            self._last_flush = now
            run.recorder.flush()
        if now - self._last_publish >= PUBLISH_EVERY_S:
            self._publish(now)

    # -- commands and the log -----------------------------------------------------------------------------------

    def command(self, text: str, action: Callable[[_Run], Any]) -> None:
        """Carry out one command (on the bench loop); before the physics starts, when it does."""
        run = self.run
        if run is None:
            self._pending.append((text, action))
            return
        t = run.clock.now_s() if run.clock is not None else 0.0
        try:
            action(run)
        except CommandRefused as error:
            self.log(t, "command_refused", None, f"{text}: {error}")
        else:
            self.log(t, "command", None, text)
        self._publish(time.monotonic())

    def log(self, t: float, kind: str, station: str | None, text: str) -> None:
        """One line in the event log."""
        self._events.append((t, kind, station, text))
        self._events_tuple = ()

    # -- station detail -----------------------------------------------------------------------------------------

    def detail(self, station_id: str) -> StationDetail:
        run = self.run
        model = None if run is None else run.models.get(station_id)
        if run is None or run.clock is None or model is None:
            raise CommandRefused(f"no station {station_id!r} in this run")
        now = run.clock.epoch()
        engine = model.engine
        profiles = tuple((connector, p.purpose, p.stack_level, p.kind, _summary(p))
                         for connector, p in engine.profiles())
        schedules = []
        for port in model.ports.values():
            schedule = engine.composite_schedule(port.id, now, SCHEDULE_SPAN_S, "A", tx_start=port.tx_start_epoch,
                                                 phases=model.phases, no_limit_a=model.max_current_a)
            schedules.append((port.id, tuple((p.start_period_s, p.limit) for p in schedule.periods)))
        return StationDetail(station_id, self._ocpp[station_id], profiles, tuple(schedules))

    # -- snapshots ----------------------------------------------------------------------------------------------

    def finish(self, result: RunResult | None, error: BaseException | None = None) -> None:
        """The last snapshot, with the final verdict (or the error that ended the run)."""
        if result is not None:
            self.verdict = result.verdict.upper()
            self.findings = tuple((c.id, f.message) for c in result.checks for f in c.findings)
        if error is not None:
            self.log(self._last[0] if self._last else 0.0, "error", None, f"the run failed: {error!r}")
        self._publish(time.monotonic(), finished=True)

    def _publish(self, now: float, finished: bool = False) -> None:
        self._last_publish = now
        run, last, loop = self.run, self._last, self.loop
        problem, self.judge_problem = self.judge_problem, None
        if problem is not None:
            self.log(self.state.t_s, "judge_error", None, problem)
        speed = self.speed if loop is None or loop.speed is None else loop.speed
        paused = loop is not None and loop.paused
        if run is None or last is None:
            self.state = dataclasses.replace(self.state, speed=speed, paused=paused, finished=finished,
                                             events=self._event_log(), verdict=self.verdict, findings=self.findings)
            return
        t, site, sample, building_a = last
        self.state = LiveState(
            scenario=self.scenario.name, controller=self.controller, t_s=t, clock=self._clock_text(t),
            speed=speed, paused=paused, finished=finished,
            currents_a=sample.currents_a, limit_a=run.limit_a, breaker_closed=sample.closed,
            breaker_rating_a=site.breaker.rating_a, breaker_heat=max(site.breaker.thermal_load),
            building_a=building_a, pv_w=run.pv_w, battery_w=run.battery_w, power_w=sample.power_w,
            demand_15min_kw=self._interval_j / self._interval_s / 1000.0 if self._interval_s else 0.0,
            peak_15min_kw=self._peak_kw, history=tuple(self._history), stations=self._station_rows(run),
            events=self._event_log(), findings=self.findings, verdict=self.verdict,
            link_up=run.link_up, meter_fault=run.meter_fault)

    def _event_log(self) -> tuple[tuple[float, str, str | None, str], ...]:
        if not self._events_tuple and self._events:
            self._events_tuple = tuple(self._events)
        return self._events_tuple

    def _station_rows(self, run: _Run) -> tuple[StationRow, ...]:
        rows = []
        cache = self._rows
        for sid, model in run.models.items():
            online = run.stations[sid].online.is_set()
            for port in model.ports.values():
                ev = port.ev
                key = (online, port.status, port.limit_a, port.offered_a, port.currents_a, port.ev_id,
                       None if ev is None else ev.energy_kwh)
                cached = cache.get((sid, port.id))
                if cached is not None and cached[0] == key:
                    rows.append(cached[1])  # unchanged: the same object, so a viewer can skip it by identity
                    continue
                row = self._row(run, sid, port, online)
                cache[(sid, port.id)] = (key, row)
                rows.append(row)
        return tuple(rows)

    def _row(self, run: _Run, sid: str, port: Any, online: bool) -> StationRow:
        ev = port.ev
        departure = needs = None
        if ev is not None:
            entry = run.plugged.get(port.ev_id)
            if entry is not None:
                departure = self._hhmm(entry[0].departure_s)
            stated = ev.needs()
            if stated is not None:
                by = "" if stated.departure_s is None else f" by {self._hhmm(stated.departure_s)}"
                needs = f"{stated.energy_wh / 1000.0:.1f} kWh{by}"
        return StationRow(
            station=sid, connector=port.id, ocpp=self._ocpp[sid], status=port.status if online else "Offline",
            limit_a=port.limit_a, offered_a=port.offered_a, currents_a=port.currents_a, power_w=port.power_w,
            soc=None if ev is None else ev.soc, energy_kwh=None if ev is None else ev.energy_kwh, ev=port.ev_id,
            departure=departure, needs=needs)

    def _initial_state(self) -> LiveState:
        sc = self.scenario
        rows = tuple(StationRow(s.id, c, s.ocpp, "Offline", None, 0.0, (0.0, 0.0, 0.0), 0.0, None, None, None, None,
                                None)
                     for s in sc.stations for c in range(1, s.connectors + 1))
        return LiveState(
            scenario=sc.name, controller=self.controller, t_s=0.0, clock=self._clock_text(0.0), speed=self.speed,
            paused=False, finished=False, currents_a=(0.0, 0.0, 0.0), limit_a=sc.site.limit_a, breaker_closed=True,
            breaker_rating_a=sc.site.breaker.rating_a, breaker_heat=0.0, building_a=0.0, pv_w=0.0, battery_w=0.0,
            power_w=0.0, demand_15min_kw=0.0, peak_15min_kw=0.0, history=(), stations=rows, events=(), findings=(),
            verdict="—", link_up=True, meter_fault=None)

    def _clock_text(self, t: float) -> str:
        return datetime.fromtimestamp(self._start_epoch + t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

    def _hhmm(self, t: float) -> str:
        return datetime.fromtimestamp(self._start_epoch + t, tz=timezone.utc).strftime("%H:%M")


class _Judge:
    """Judges the trace so far on its own thread, every JUDGE_EVERY_S of wall time or more rarely when judging
    takes long (at most JUDGE_SHARE of the time), and hands verdict and findings to the snapshots."""

    def __init__(self, trace_path: Path, snapshots: _Snapshots) -> None:
        self._trace_path = trace_path
        self._snapshots = snapshots
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._judge_periodically, name="evbench-live-judge", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _judge_periodically(self) -> None:
        pause_s = JUDGE_EVERY_S
        while not self._stopping.wait(pause_s):
            began = time.monotonic()
            try:
                result = judge(self._trace_path)
            except Exception as error:  # a trace caught mid-write; the next judgement will see more
                self._snapshots.judge_problem = f"could not judge the trace so far: {error!r}"
            else:
                if self._stopping.is_set():
                    return  # the final judgement is the bench thread's
                self._snapshots.findings = tuple((c.id, f.message) for c in result.checks for f in c.findings)
                self._snapshots.verdict = result.verdict.upper()
            pause_s = max(JUDGE_EVERY_S, (time.monotonic() - began) / JUDGE_SHARE)


def _summary(profile: ChargingProfile) -> str:
    """One line about a profile: "16 A from 09:00, then 2 more periods, Daily, until 18:00"."""
    schedule = profile.schedule
    first = schedule.periods[0] if schedule.periods else None
    parts = [f"{first.limit:g} {schedule.rate_unit}" if first else "no periods"]
    if schedule.start_schedule is not None:
        parts[0] += f" from {_utc_hhmm(schedule.start_schedule)}"
    if len(schedule.periods) > 1:
        parts.append(f"then {len(schedule.periods) - 1} more period{'s' if len(schedule.periods) > 2 else ''}")
    if profile.recurrency_kind:
        parts.append(profile.recurrency_kind)
    if profile.valid_to is not None:
        parts.append(f"until {_utc_hhmm(profile.valid_to)}")
    return ", ".join(parts)


def _utc_hhmm(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%H:%M")


def _describe(kind: str, detail: dict) -> str:
    """One line for the event log from a trace event's detail."""
    d = detail
    if kind == "vehicle_arrived":
        return f"{d.get('ev')} plugged in on connector {d.get('connector')}"
    if kind == "vehicle_departed":
        return f"{d.get('ev')} left with {d.get('energy_kwh', 0):.1f} kWh, SoC {100 * d.get('soc', 0):.0f} %"
    if kind == "vehicle_full":
        return f"{d.get('ev')} is full ({d.get('energy_kwh', 0):.1f} kWh)"
    if kind == "breaker_trip":
        return f"breaker tripped ({d.get('reason')}) at {d.get('currents_a')} A"
    if kind in ("site_limit", "building_load"):
        return f"{kind.replace('_', ' ')} → {d.get('value_a')} A"
    if kind == "meter_fault":
        return f"meter unit {d.get('unit')} fails: {d.get('fault')}"
    if kind == "meter_restored":
        return f"meter unit {d.get('unit')} restored"
    if kind == "controller_link_lost":
        return "every station lost its link to the controller"
    if kind == "controller_link_restored":
        return "the stations' link to the controller is back"
    if kind == "profile_rejected":
        return f"profile {d.get('profile_id')} rejected on connector {d.get('connector')}: {d.get('reason')}"
    if kind == "station_connected":
        return "connected"
    text = ", ".join(f"{key}={value}" for key, value in d.items())
    return (f"{kind.replace('_', ' ')}: {text}" if text else kind.replace("_", " "))[:160]
