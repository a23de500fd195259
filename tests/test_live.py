"""bench/live.py: a scenario run on its own thread, read through snapshots and steered by commands.

A LiveRun runs in scaled time, so these tests use a small site at a high speed and wait for observable state with
bounded polls; they assert on what the snapshots and the trace show, never on how long anything took.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from bench import live as live_module
from bench.live import LiveRun, LiveState
from bench.runner import CommandRefused
from bench.scenario import parse_scenario
from bench.trace import load_trace

SPEED = 100.0


def scenario(limit_a: float = 40.0) -> Any:
    cars = [{"id": f"EV{i}", "station": f"CP0{i}", "arrival": 0, "departure": 7200, "battery_kwh": 80,
             "initial_soc": 0.1, "target_soc": 0.9, "max_current_a": 32} for i in (1, 2, 3)]
    cars.append({"id": "EV4", "station": "CP04", "arrival": 5400, "departure": 7000, "battery_kwh": 40,
                 "initial_soc": 0.5, "target_soc": 0.8, "max_current_a": 16})
    return parse_scenario({
        "name": "live-test",
        "clock": {"start": "2026-03-02T07:00:00Z", "duration": "2h", "step": "1s"},
        "site": {"phases": 3, "voltage_v": 230, "limit_a": limit_a, "breaker": {"rating_a": 100}},
        "stations": [{"id": f"CP0{i}", "max_current_a": 32} for i in (1, 2, 3, 4)],
        "vehicles": cars,
    })


@pytest.fixture
def start(tmp_path: Path):
    runs: list[LiveRun] = []

    def make(controller: str = "equal_share", **kw: Any) -> LiveRun:
        run = LiveRun(scenario(kw.pop("limit_a", 40.0)), controller, speed=kw.pop("speed", SPEED),
                      trace=tmp_path / f"run{len(runs)}.db", **kw)
        runs.append(run)
        run.start()
        return run

    yield make
    for run in runs:
        run.stop()


def until(run: LiveRun, predicate: Callable[[LiveState], Any], what: str, timeout_s: float = 30.0) -> LiveState:
    """Poll the snapshots until ``predicate`` holds (a bound on waiting, not a measurement)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = run.state()
        if predicate(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last state t_s={state.t_s}")
        time.sleep(0.02)


def row(state: LiveState, station: str, connector: int = 1):
    return next(r for r in state.stations if r.station == station and r.connector == connector)


def charging(state: LiveState, *stations: str) -> bool:
    return all(row(state, s).status == "Charging" and row(state, s).currents_a[0] > 6 for s in stations)


def event_kinds(trace_path: Path) -> list[tuple[str, str | None]]:
    return [(e["kind"], e["station"]) for e in load_trace(trace_path).events]


def test_start_then_stop_ends_cleanly_with_a_judged_trace(start) -> None:
    run = start()
    state = until(run, lambda s: s.t_s >= 30 and charging(s, "CP01", "CP02", "CP03"), "three sessions")
    assert state.scenario == "live-test" and state.controller == "equal_share"
    assert state.clock.startswith("2026-03-02 07:0")
    assert [r.station for r in state.stations] == ["CP01", "CP02", "CP03", "CP04"]
    assert row(state, "CP04").status == "Available" and row(state, "CP04").ev is None
    assert row(state, "CP01").ev == "EV1" and row(state, "CP01").departure == "09:00"
    assert state.history and state.history[-1][4] == 40.0
    result = run.stop()
    assert result.scenario == "live-test"
    assert Path(result.trace_path) == run.trace_path
    assert ("run_interrupted", None) in event_kinds(run.trace_path)
    final = run.state()
    assert final.finished and final.verdict == result.verdict.upper()
    assert run.stop() is not None  # stopping again is harmless


def test_snapshots_are_immutable_and_unchanged_rows_are_shared(start) -> None:
    run = start()
    first = until(run, lambda s: s.t_s >= 10, "t >= 10 s")
    later = until(run, lambda s: s.t_s >= first.t_s + 20, "20 s later")
    with pytest.raises(dataclasses.FrozenInstanceError):
        later.t_s = 0.0  # type: ignore[misc]
    assert first.t_s < later.t_s
    # CP04 idles throughout: its row is the very same object, so a viewer skips it by identity.
    assert row(first, "CP04") is row(later, "CP04")


def test_pause_freezes_time_and_resume_and_speed_move_it_on(start) -> None:
    run = start()
    until(run, lambda s: s.t_s >= 20, "t >= 20 s")
    run.pause()
    paused = until(run, lambda s: s.paused, "paused")
    time.sleep(0.3)  # at this speed, 30 simulated seconds if the clock still ran
    assert run.state().t_s == paused.t_s
    run.set_speed(300)
    run.resume()
    resumed = until(run, lambda s: not s.paused and s.t_s > paused.t_s, "running again")
    assert resumed.speed == 300
    assert ("command", "speed x300") in [(e[1], e[3]) for e in resumed.events]


def test_unplug_frees_the_connector_and_equal_share_raises_the_others(start) -> None:
    run = start()
    settled = until(run, lambda s: s.t_s >= 120 and charging(s, "CP01", "CP02", "CP03"), "shared limit")
    shares = [row(settled, s).offered_a for s in ("CP02", "CP03")]
    assert max(shares) < 16  # 40 A among three cars
    run.unplug("CP01")
    freed = until(run, lambda s: row(s, "CP01").status == "Available", "CP01 Available")
    assert row(freed, "CP01").ev is None and row(freed, "CP01").currents_a == (0.0, 0.0, 0.0)
    until(run, lambda s: all(row(s, c).offered_a >= max(shares) + 3 for c in ("CP02", "CP03")), "offers rise")
    run.stop()
    assert ("vehicle_departed", "CP01") in event_kinds(run.trace_path)


def test_plug_brings_the_next_car_early_then_a_default_car_and_refuses_a_taken_connector(start) -> None:
    run = start()
    until(run, lambda s: charging(s, "CP01"), "CP01 charging")
    run.plug("CP04")  # EV4 is due at 08:30: it comes now
    state = until(run, lambda s: row(s, "CP04").status == "Charging", "CP04 charging")
    assert row(state, "CP04").ev == "EV4" and row(state, "CP04").departure == "08:56"
    run.plug("CP04")
    until(run, lambda s: any(e[1] == "command_refused" and "CP04" in e[3] for e in s.events), "refusal")
    run.unplug("CP01")
    until(run, lambda s: row(s, "CP01").status == "Available", "CP01 free")
    run.plug("CP01")  # EV1's arrival is past: a default car, staying to the end
    state = until(run, lambda s: row(s, "CP01").status == "Charging", "default car charging")
    assert row(state, "CP01").ev == "LIVE01" and row(state, "CP01").departure == "09:00"
    run.unplug("CP09")
    until(run, lambda s: any(e[1] == "command_refused" and "CP09" in e[3] for e in s.events), "unknown station")
    run.stop()
    arrivals = [s for k, s in event_kinds(run.trace_path) if k == "vehicle_arrived"]
    assert arrivals.count("CP04") == 1 and arrivals.count("CP01") == 2


def test_dropped_link_takes_every_station_offline_until_restored(start) -> None:
    run = start()
    until(run, lambda s: charging(s, "CP01", "CP02", "CP03"), "three sessions")
    run.drop_link()
    down = until(run, lambda s: all(r.status == "Offline" for r in s.stations), "all offline")
    assert not down.link_up
    # The chargers keep charging on the profiles they have.
    offline = until(run, lambda s: s.t_s > down.t_s + 30, "30 s offline")
    assert all(row(offline, c).currents_a[0] > 6 for c in ("CP01", "CP02", "CP03"))
    run.restore_link()
    up = until(run, lambda s: all(r.status != "Offline" for r in s.stations), "all back")
    assert up.link_up and row(up, "CP01").status == "Charging"
    result = run.stop()
    kinds = event_kinds(run.trace_path)
    assert kinds.index(("controller_link_lost", None)) < kinds.index(("controller_link_restored", None))
    assert any(c.id == "OFFLINE-SAFE" for c in result.checks)


def test_meter_fault_and_site_limit_are_recorded_like_scenario_events(start) -> None:
    run = start()
    until(run, lambda s: s.t_s >= 10, "running")
    run.fail_meter("frozen")
    assert until(run, lambda s: s.meter_fault == "frozen", "meter fault").meter_fault == "frozen"
    run.restore_meter()
    until(run, lambda s: s.meter_fault is None, "meter restored")
    run.set_site_limit(25)
    lowered = until(run, lambda s: s.limit_a == 25, "new limit")
    assert lowered.history[-1][4] in (40.0, 25.0)
    run.fail_meter("melted")
    until(run, lambda s: any(e[1] == "command_refused" and "melted" in e[3] for e in s.events), "bad fault")
    run.stop()
    trace = load_trace(run.trace_path)
    kinds = [e["kind"] for e in trace.events]
    assert kinds.count("meter_fault") == 1 and kinds.count("meter_restored") == 1
    assert [e["detail"]["value_a"] for e in trace.events if e["kind"] == "site_limit"] == [25]


def test_ocpp_frames_reach_the_event_log_only_while_asked_for(start) -> None:
    run = start()
    until(run, lambda s: s.t_s >= 10, "running")
    assert not any(e[1] == "ocpp" for e in run.state().events)
    run.show_messages(True)
    shown = until(run, lambda s: any(e[1] == "ocpp" for e in s.events), "an OCPP frame in the log")
    frame = next(e for e in shown.events if e[1] == "ocpp")
    assert frame[2] in ("CP01", "CP02") and frame[3][:2] in ("→ ", "← ") and "[" in frame[3]
    run.show_messages(False)
    run.stop()


def test_station_detail_shows_the_failsafe_default_and_the_session_profile(start) -> None:
    run = start()
    until(run, lambda s: s.t_s >= 60 and charging(s, "CP01"), "CP01 charging")
    detail = run.station_detail("CP01")
    assert detail.station == "CP01" and detail.ocpp == "1.6"
    purposes = {(connector, purpose) for connector, purpose, *_ in detail.profiles}
    assert (0, "TxDefaultProfile") in purposes and (1, "TxProfile") in purposes
    assert all(summary for *_, summary in detail.profiles)
    ((connector, periods),) = detail.schedules
    assert connector == 1 and periods[0][0] == 0 and 6 <= periods[0][1] <= 32
    with pytest.raises(CommandRefused):
        run.station_detail("CP09")


def test_a_run_that_ends_by_itself_is_judged_and_waited_for(start) -> None:
    run = start(duration_s=90.0, speed=300)
    result = run.wait(60)
    assert result is not None and result.verdict in ("pass", "fail")
    state = run.state()
    assert state.finished and state.verdict == result.verdict.upper()
    assert ("run_interrupted", None) not in event_kinds(run.trace_path)


def test_the_verdict_so_far_comes_while_the_run_goes(start, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_module, "JUDGE_EVERY_S", 0.2)
    run = start("uncontrolled", limit_a=20.0)  # three cars at 32 A on a 20 A limit
    state = until(run, lambda s: s.verdict == "FAIL", "a failing verdict so far")
    assert not state.finished
    assert any(check == "SITE-LIMIT" for check, _ in state.findings)


def test_bad_input_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="speed"):
        LiveRun(scenario(), speed=0, trace=tmp_path / "x.db")
    with pytest.raises(ValueError, match="controller"):
        LiveRun(scenario(), "no_such_controller", trace=tmp_path / "x.db")
    run = LiveRun(scenario(), trace=tmp_path / "x.db")
    with pytest.raises(RuntimeError, match="start"):
        run.pause()
    assert not (tmp_path / "x.db").exists()
