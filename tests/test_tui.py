"""The live terminal view (bench/tui.py) driven headless with Textual's Pilot.

Most tests drive :class:`bench.tui.EvbenchApp` against :class:`FakeLive`, which implements the
LiveRun API (bench/live.py) over canned snapshots and records every command, so a test presses
keys and asserts both on what the run was told and on what the widgets show. The acceptance test
runs a real LiveRun on a small scenario at high speed. The snapshot test renders the main screen at
a fixed state (pytest-textual-snapshot; `pytest --snapshot-update` accepts a deliberate change).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from textual.coordinate import Coordinate
from textual.widgets import RichLog, Static

from bench.live import LiveRun, LiveState, StationDetail, StationRow
from bench.tui import EvbenchApp, HelpScreen, SiteLimitScreen, StationDetailScreen
from bench.tui_widgets import STATION_COLUMNS, RunHeader, StationTable, phase_style

SIZE = (160, 48)


def station_row(station: str, status: str = "Charging", offered_a: float = 16.0, power_w: float = 11_040.0,
                **fields: Any) -> StationRow:
    charging = status == "Charging"
    row = StationRow(station=station, connector=1, ocpp="1.6", status=status, limit_a=32.0 if charging else None,
                     offered_a=offered_a, currents_a=(offered_a,) * 3 if charging else (0.0, 0.0, 0.0),
                     power_w=power_w if charging else 0.0, soc=0.42 if charging else None,
                     energy_kwh=3.25 if charging else None, ev="ID.3 58" if charging else None,
                     departure="17:30" if charging else None, needs=None)
    return dataclasses.replace(row, **fields)


def canned_state(**fields: Any) -> LiveState:
    stations = (station_row("CP01"), station_row("CP02"), station_row("CP03", ocpp="2.0.1",
                                                                         needs="45.0 kWh by 19:00"),
                station_row("CP04", status="Available", offered_a=0.0))
    state = LiveState(scenario="workplace", controller="equal_share", t_s=4507.0, clock="2026-03-02 09:15:07",
                      speed=10.0, paused=False, finished=False, currents_a=(58.0, 74.0, 83.0), limit_a=80.0,
                      breaker_closed=True, breaker_rating_a=100.0, breaker_heat=0.12, building_a=10.0, pv_w=0.0,
                      battery_w=0.0, power_w=49_450.0, demand_15min_kw=45.1, peak_15min_kw=54.6,
                      history=tuple((4507.0 - 5 * k, 40 + k % 20, 50 + k % 30, 60 + k % 25, 80.0)
                                    for k in range(360, 0, -1)),
                      stations=stations,
                      events=((4400.0, "arrival", "CP01", "ID.3 58 plugged in, 20 % → 80 % by 17:30"),
                              (4460.0, "arrival", "CP02", "ID.3 58 plugged in")),
                      findings=(), verdict="PASS", link_up=True, meter_fault=None)
    return dataclasses.replace(state, **fields)


class FakeLive:
    """The LiveRun API over a snapshot the test controls; commands are recorded and change the snapshot
    the obvious way (pause pauses, unplug empties the row), as the bench would."""

    def __init__(self, state: LiveState | None = None) -> None:
        self.current = state or canned_state()
        self.calls: list[tuple] = []
        self.result = object()

    def state(self) -> LiveState:
        return self.current

    def publish(self, **fields: Any) -> None:
        self.current = dataclasses.replace(self.current, **fields)

    def _row(self, station: str, **fields: Any) -> None:
        self.publish(stations=tuple(dataclasses.replace(r, **fields) if r.station == station else r
                                    for r in self.current.stations))

    def pause(self) -> None:
        self.calls.append(("pause",))
        self.publish(paused=True)

    def resume(self) -> None:
        self.calls.append(("resume",))
        self.publish(paused=False)

    def set_speed(self, speed: float) -> None:
        self.calls.append(("set_speed", speed))
        self.publish(speed=speed)

    def plug(self, station: str, connector: int = 1) -> None:
        self.calls.append(("plug", station, connector))
        self._row(station, status="Preparing")

    def unplug(self, station: str, connector: int = 1) -> None:
        self.calls.append(("unplug", station, connector))
        self._row(station, status="Available", currents_a=(0.0, 0.0, 0.0), power_w=0.0, offered_a=0.0)

    def drop_link(self) -> None:
        self.calls.append(("drop_link",))
        self.publish(link_up=False)

    def restore_link(self) -> None:
        self.calls.append(("restore_link",))
        self.publish(link_up=True)

    def fail_meter(self, fault: str = "unreachable") -> None:
        self.calls.append(("fail_meter", fault))
        self.publish(meter_fault=fault)

    def restore_meter(self) -> None:
        self.calls.append(("restore_meter",))
        self.publish(meter_fault=None)

    def show_messages(self, on: bool) -> None:
        self.calls.append(("show_messages", on))

    def set_site_limit(self, limit_a: float) -> None:
        self.calls.append(("set_site_limit", limit_a))
        self.publish(limit_a=limit_a)

    def station_detail(self, station: str, timeout_s: float = 5.0) -> StationDetail:
        self.calls.append(("station_detail", station))
        return StationDetail(station=station, ocpp="1.6",
                             profiles=((0, "ChargePointMaxProfile", 0, "Absolute", "80 A from 08:00"),
                                       (1, "TxProfile", 1, "Relative", "16 A from 09:14")),
                             schedules=((1, ((0, 16.0), (900, 8.0))),))

    def stop(self, timeout_s: float = 60.0) -> object:
        self.calls.append(("stop",))
        return self.result


def header_text(app: EvbenchApp) -> str:
    return str(app.query_one(RunHeader).render())


def cell(app: EvbenchApp, row: int, column: int) -> str:
    """The text the station table shows on screen at (row, column)."""
    table = app.query_one(StationTable)
    line_y = StationTable.HEADER_HEIGHT + row - table.scroll_offset.y
    assert StationTable.HEADER_HEIGHT <= line_y < table.size.height, f"row {row} is not on screen"
    line = table.render_line(line_y).text
    start = sum(width + 2 for _, width in STATION_COLUMNS[:column])
    return line[start:start + STATION_COLUMNS[column][1] + 2].strip()


def log_lines(app: EvbenchApp, log_id: str) -> list[str]:
    return [strip.text for strip in app.query_one(log_id, RichLog).lines]


async def shown(app: EvbenchApp, pilot) -> None:
    """Take the fake's latest snapshot now instead of waiting for the next refresh tick."""
    app.refresh_view()
    await pilot.pause()


# -- what the main screen shows ---------------------------------------------------------------------


async def test_main_screen_shows_the_snapshot() -> None:
    app = EvbenchApp(FakeLive())
    async with app.run_test(size=SIZE):
        header = header_text(app)
        for part in ("workplace", "equal_share", "2026-03-02 09:15:07", "×10", "PASS", "link up", "meter ok"):
            assert part in header
        table = app.query_one(StationTable)
        assert table.row_count == 4
        assert [cell(app, 0, x) for x in range(6)] == ["CP01", "1", "1.6", "Charging", "32.0", "16.0"]
        assert cell(app, 2, 12) == "45.0 kWh by 19:00"
        assert cell(app, 3, 3) == "Available" and cell(app, 3, 8) == "—"
        site = str(app.query_one("#site", Static).render())
        assert "limit 80.0 A" in site and "closed, heat 12%" in site and "83.0 A" in site
        assert "15-min demand 45.1 kW (peak 54.6 kW)" in site
        assert log_lines(app, "#events")[-1].startswith("09:14:20 arrival CP02")


@pytest.mark.parametrize(("current_a", "style"), [(0.0, "green"), (71.9, "green"), (72.0, "yellow"),
                                                  (80.0, "yellow"), (80.1, "bold red")])
def test_phase_bars_turn_yellow_near_the_limit_and_red_over_it(current_a: float, style: str) -> None:
    assert phase_style(current_a, 80.0) == style


def spy_on_row_renders(table: StationTable, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows the table renders from now on, in order."""
    rendered: list[int] = []
    original = table.render_row
    monkeypatch.setattr(table, "render_row", lambda row: (rendered.append(row), original(row))[1])
    return rendered


async def test_a_refresh_renders_only_the_rows_that_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    live = FakeLive()
    app = EvbenchApp(live)
    async with app.run_test(size=SIZE) as pilot:
        rendered = spy_on_row_renders(app.query_one(StationTable), monkeypatch)
        rows = list(live.current.stations)
        rows[1] = dataclasses.replace(rows[1], power_w=7_360.0, soc=0.43)
        live.publish(stations=tuple(rows), t_s=4508.0, clock="2026-03-02 09:15:08")
        await shown(app, pilot)
        assert rendered == [1]
        assert cell(app, 1, 7) == "7.4" and cell(app, 1, 8) == "43%" and cell(app, 0, 8) == "42%"
        rendered.clear()
        live.publish(t_s=4509.0, clock="2026-03-02 09:15:09")
        await shown(app, pilot)
        assert rendered == []


async def test_only_rows_on_screen_are_rendered_and_the_cursor_scrolls_the_others_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    live = FakeLive(canned_state(stations=tuple(station_row(f"CP{n:03d}") for n in range(1, 201))))
    app = EvbenchApp(live)
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(StationTable)
        visible = table.size.height - StationTable.HEADER_HEIGHT
        assert 5 < visible < 50
        rendered = spy_on_row_renders(table, monkeypatch)
        live.publish(stations=tuple(dataclasses.replace(row, soc=0.5) for row in live.current.stations))
        await shown(app, pilot)
        assert sorted(rendered) == list(range(visible))
        rendered.clear()
        await pilot.press("end")
        assert table.selected() == ("CP200", 1) and table.scroll_offset.y == 200 - visible
        assert sorted(rendered) == list(range(200 - visible, 200))
        assert cell(app, 199, 0) == "CP200" and cell(app, 199, 8) == "50%"
        await pilot.press("up", "pageup", "home")
        assert table.selected() == ("CP001", 1) and table.scroll_offset.y == 0


async def test_a_click_selects_a_row_and_a_click_on_the_selected_row_opens_it() -> None:
    live = FakeLive()
    app = EvbenchApp(live)
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(StationTable)
        header_y = table.content_region.y - table.region.y  # below the border
        await pilot.click(StationTable, offset=(5, header_y))
        assert table.selected() == ("CP01", 1)
        await pilot.click(StationTable, offset=(5, header_y + 1 + 2))
        assert table.selected() == ("CP03", 1) and not isinstance(app.screen, StationDetailScreen)
        await pilot.press("u")
        assert live.calls == [("unplug", "CP03", 1)]
        await pilot.click(StationTable, offset=(5, header_y + 1 + 2))
        assert isinstance(app.screen, StationDetailScreen) and app.screen.station == "CP03"


async def test_events_and_findings_are_appended_once_each_as_the_window_slides() -> None:
    live = FakeLive(canned_state(events=tuple((float(t), "tick", None, f"event {t}") for t in range(200))))
    app = EvbenchApp(live)
    async with app.run_test(size=SIZE) as pilot:
        assert len(log_lines(app, "#events")) == 200
        window = live.current.events[3:] + tuple((float(t), "tick", None, f"event {t}") for t in range(200, 203))
        live.publish(events=window, findings=(("SITE-LIMIT", "L3 at 83.0 A > 80.0 A for 25 s"),))
        await shown(app, pilot)
        lines = log_lines(app, "#events")
        assert len(lines) == 203 and lines[-1].endswith("tick event 202") and lines[-3].endswith("tick event 200")
        live.publish(findings=live.current.findings + (("BREAKER", "main breaker tripped"),))
        await shown(app, pilot)
        assert log_lines(app, "#findings") == ["SITE-LIMIT L3 at 83.0 A > 80.0 A for 25 s",
                                               "BREAKER main breaker tripped"]


# -- keys ------------------------------------------------------------------------------------------


async def test_space_pauses_and_resumes_and_the_header_says_paused() -> None:
    live = FakeLive()
    app = EvbenchApp(live)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("space")
        await shown(app, pilot)
        assert "PAUSED" in header_text(app) and "×10" not in header_text(app)
        await pilot.press("space")
        await shown(app, pilot)
        assert "PAUSED" not in header_text(app)
        assert live.calls == [("pause",), ("resume",)]


async def test_plus_and_minus_double_and_halve_the_speed() -> None:
    live = FakeLive()
    app = EvbenchApp(live)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("plus", "plus", "minus")
        await shown(app, pilot)
        assert live.calls == [("set_speed", 20.0), ("set_speed", 40.0), ("set_speed", 20.0)]
        assert "×20" in header_text(app)


async def test_unplug_and_plug_act_on_the_selected_row() -> None:
    live = FakeLive()
    app = EvbenchApp(live)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("down", "u")
        await shown(app, pilot)
        assert live.calls == [("unplug", "CP02", 1)]
        assert cell(app, 1, 3) == "Available" and cell(app, 0, 3) == "Charging"
        await pilot.press("down", "down", "p")
        assert live.calls[-1] == ("plug", "CP04", 1)


async def test_l_and_m_toggle_the_controller_link_and_the_meter() -> None:
    live = FakeLive()
    app = EvbenchApp(live)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("l", "m")
        await shown(app, pilot)
        assert "LINK DOWN" in header_text(app) and "METER UNREACHABLE" in header_text(app)
        await pilot.press("l", "m")
        await shown(app, pilot)
        assert "link up" in header_text(app) and "meter ok" in header_text(app)
        assert live.calls == [("drop_link",), ("fail_meter", "unreachable"), ("restore_link",), ("restore_meter",)]


async def test_o_toggles_the_ocpp_frames_in_the_event_log() -> None:
    live = FakeLive()
    app = EvbenchApp(live)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("o", "o")
        assert live.calls == [("show_messages", True), ("show_messages", False)]


async def test_s_asks_for_a_site_limit_and_refuses_nonsense() -> None:
    live = FakeLive()
    app = EvbenchApp(live)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")
        assert isinstance(app.screen, SiteLimitScreen)
        await pilot.press("minus", "5", "enter")
        assert isinstance(app.screen, SiteLimitScreen)
        assert "positive number" in str(app.screen.query_one("#limit-error", Static).render())
        await pilot.press("backspace", "backspace", "6", "3", ".", "5", "enter")
        assert not isinstance(app.screen, SiteLimitScreen)
        await pilot.press("s", "4", "escape")
        assert not isinstance(app.screen, SiteLimitScreen)
        assert live.calls == [("set_site_limit", 63.5)]


async def test_help_opens_and_closes_and_keys_do_not_reach_the_run_meanwhile() -> None:
    live = FakeLive()
    app = EvbenchApp(live)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        help_text = str(app.screen.query_one("#help-text", Static).render())
        assert "unplug the car" in help_text and "demand-response event: not available" in help_text
        await pilot.press("u", "space", "l")
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        assert live.calls == []


async def test_enter_opens_the_station_detail_with_profiles_and_schedule() -> None:
    live = FakeLive()
    app = EvbenchApp(live)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("down", "down", "enter")
        assert isinstance(app.screen, StationDetailScreen)
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert live.calls == [("station_detail", "CP03")]
        profiles = app.screen.query_one("#profiles")
        assert profiles.row_count == 2 and str(profiles.get_cell_at(Coordinate(1, 1))) == "TxProfile"
        schedule = str(app.screen.query_one("#schedules", Static).render())
        assert "+00:00   16.0 A" in schedule and "+15:00    8.0 A" in schedule
        await pilot.press("escape")
        assert not isinstance(app.screen, StationDetailScreen)


async def test_q_stops_the_run_and_the_app_returns_its_result() -> None:
    live = FakeLive()
    app = EvbenchApp(live)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")
        await app.workers.wait_for_complete()
        await pilot.pause()
    assert live.calls == [("stop",)]
    assert app.return_value is live.result


# -- acceptance: a real run ------------------------------------------------------------------------


async def wait_for(pilot, predicate, what: str, timeout_s: float = 30.0) -> None:
    """Poll the app (wall time: the run goes at its own scaled speed on its own thread) until ``predicate()``."""
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        await pilot.pause(0.05)
    rows = [[cell(pilot.app, y, column) for column in range(len(STATION_COLUMNS))] for y in range(4)]
    raise AssertionError(f"timed out waiting for {what}; the first rows read {rows}")


async def test_real_run_unplugging_a_car_raises_the_others_offers_under_equal_share(tmp_path) -> None:
    # The workplace at 07:00: no car has arrived yet. Plug the next scheduled cars of CP01-CP04 in from the
    # keyboard; equal_share shares 80 A between them. Unplug CP02: its row goes Available and the others get more.
    live = LiveRun("workplace", "equal_share", speed=50.0, trace=tmp_path / "live.db", duration_s=3600.0)
    live.start()
    app = EvbenchApp(live)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: all(cell(app, y, 3) == "Available" for y in range(4)), "stations booted")
            await pilot.press("p", "down", "p", "down", "p", "down", "p")
            # Shared four ways, every offer is under a three-way share of 80 A. (Waiting for that, not for a fixed
            # wall time: on a loaded machine the last car's first offer can come late, with the others still at
            # 80/3 A, and the unplug would then not raise them.)
            await wait_for(pilot, lambda: all(cell(app, y, 3) == "Charging" for y in range(4))
                           and all(0.0 < float(cell(app, y, 5)) < 80.0 / 3 - 1.0 for y in range(4)),
                           "four cars charging and sharing 80 A")
            offers_before = {y: float(cell(app, y, 5)) for y in (0, 3)}
            await pilot.press("up", "up", "u")
            await wait_for(pilot, lambda: cell(app, 1, 3) == "Available"
                           and all(float(cell(app, y, 5)) > offers_before[y] for y in (0, 3)),
                           "CP02 Available and CP01, CP04 offered more")
            assert any("unplug CP02/1" in line for line in log_lines(app, "#events"))
            await pilot.press("q")
            await wait_for(pilot, lambda: app.return_value is not None, "the run stopped and judged", 60.0)
        result = app.return_value
        assert result.trace_path == str(tmp_path / "live.db") and (tmp_path / "live.db").exists()
        assert {check.id for check in result.checks} >= {"SITE-LIMIT", "BREAKER"}
    finally:
        if live.wait(0) is None:
            live.stop()


# -- snapshot ----------------------------------------------------------------------------------------


def test_main_screen_snapshot(snap_compare) -> None:
    async def settle(pilot) -> None:
        pilot.app.refresh_timer.stop()
        await pilot.pause()
        pilot.app.refresh()

    live = FakeLive(canned_state(findings=(("SITE-LIMIT", "L3 at 83.0 A > 80.0 A for 25 s (settle 20 s)"),)))
    assert snap_compare(EvbenchApp(live), terminal_size=SIZE, run_before=settle)
