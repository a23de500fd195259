"""``evbench tui``: a full-screen live view and remote control of one run.

This module owns the app: its layout, its keys and the screens they open. It never touches
simulation objects — the run lives on its own thread behind :class:`bench.live.LiveRun`; the
app reads the latest immutable :class:`~bench.live.LiveState` ``refresh_hz`` times a second and
sends commands through the LiveRun's thread-safe methods. Quitting ends the run cleanly
(``LiveRun.stop``: trace closed, verdict judged) and the app returns its ``RunResult``, so the
CLI prints and saves it exactly like ``evbench run``.

    result = EvbenchApp(live).run()

Widgets are in :mod:`bench.tui_widgets`.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, RichLog, Static
from textual.worker import Worker, WorkerState

from bench.report import RunResult
from bench.tui_widgets import PhasePlot, RunHeader, SitePanel, StationTable

if TYPE_CHECKING:  # the app only calls the LiveRun's methods and reads its snapshots
    from bench.live import LiveRun, LiveState, StationDetail

__all__ = ["EvbenchApp", "HelpScreen", "SiteLimitScreen", "StationDetailScreen"]

CLOCK_FORMAT = "%Y-%m-%d %H:%M:%S"
SPEED_STEP = 2.0

# What the help screen says, one line per key, in the footer's order. Demand response has no key: the
# bench has no demand-response events yet, so a bound key would do nothing; the help says so instead.
KEY_HELP = (
    ("space", "pause or resume the simulation clock (the controller, stations and EVs all stop together)"),
    ("+ / -", "run twice as fast / half as fast"),
    ("↑ / ↓", "select a station row"),
    ("p", ("plug a car into the selected connector now: its next scheduled vehicle if it is not due yet, "
           "else a default car (60 kWh, 20→80 %, 32 A, 3-phase) that stays to the end of the run")),
    ("u", "unplug the car at the selected connector now"),
    ("l", "drop / restore every station's link to the controller (OFFLINE-SAFE judges the fallback)"),
    ("m", "fail / restore the site meter (the controller's meter reads go unanswered)"),
    ("s", "change the site limit now, as a grid signal would"),
    ("enter", "open the selected station: its active charging profiles and composite schedule"),
    ("o", "show / hide every OCPP frame in the event log (→ to the station, ← from it)"),
    ("d", "demand-response event: not available — the bench has no demand-response events yet"),
    ("?", "this help"),
    ("q", "quit: the run ends cleanly, the trace is saved and the verdict printed, as `evbench run` does"),
)


class HelpScreen(ModalScreen[None]):
    """Every key of the main screen and what it does to the run."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 90; height: auto; max-height: 90%; border: round $accent; background: $surface;
                            padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        text = Text()
        text.append("evbench tui — keys\n\n", style="bold")
        for key, meaning in KEY_HELP:
            text.append(f"{key:>7}  ", style="bold cyan")
            text.append(f"{meaning}\n")
        text.append("\nBars: green under 90 % of the site limit, yellow from 90 % to the limit, red over it. "
                    "Esc closes this screen.", style="dim")
        with Vertical():
            yield Static(text, id="help-text")

    def action_close(self) -> None:
        self.dismiss()


class SiteLimitScreen(ModalScreen[float | None]):
    """Asks for a new site limit [A]; dismisses with it, or with None when cancelled."""

    DEFAULT_CSS = """
    SiteLimitScreen { align: center middle; }
    SiteLimitScreen > Vertical { width: 50; height: auto; border: round $accent; background: $surface; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current_a: float) -> None:
        super().__init__()
        self._current_a = current_a

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"New site limit per phase [A] (now {self._current_a:g} A); Enter sets it, Esc cancels.")
            yield Input(placeholder=f"{self._current_a:g}", id="limit-input")
            yield Static("", id="limit-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            limit_a = float(event.value)
        except ValueError:
            limit_a = math.nan
        if not math.isfinite(limit_a) or limit_a <= 0:
            self.query_one("#limit-error", Static).update(
                Text(f"expected a positive number of amperes (got {event.value!r})", style="red"))
            return
        self.dismiss(limit_a)

    def action_cancel(self) -> None:
        self.dismiss(None)


class StationDetailScreen(ModalScreen[None]):
    """One station's active charging profiles and, per connector, its composite schedule for the next hour."""

    DEFAULT_CSS = """
    StationDetailScreen { align: center middle; }
    StationDetailScreen > Vertical { width: 100; height: 80%; border: round $accent; background: $surface;
                                     padding: 0 1; }
    StationDetailScreen DataTable { height: auto; max-height: 12; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter,q", "close", "Close")]

    def __init__(self, live: LiveRun, station: str) -> None:
        super().__init__()
        self._live = live
        self.station = station
        self.detail: StationDetail | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(f"{self.station} — asking the bench…", style="bold"), id="detail-title")
            yield DataTable(id="profiles", cursor_type="none")
            with VerticalScroll():
                yield Static("", id="schedules")

    def on_mount(self) -> None:
        table = self.query_one("#profiles", DataTable)
        table.add_columns("Conn/EVSE", "Purpose", "Stack", "Kind", "Limit")
        # The detail is computed on the bench loop and can take a moment; the UI thread must not wait for it.
        self.run_worker(lambda: self._live.station_detail(self.station), thread=True, exit_on_error=False,
                        name="station-detail")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name != "station-detail":
            return
        title = self.query_one("#detail-title", Static)
        if event.state == WorkerState.ERROR:
            title.update(Text(f"{self.station}: no detail ({event.worker.error})", style="bold red"))
        elif event.state == WorkerState.SUCCESS:
            self._show(event.worker.result)

    def _show(self, detail: StationDetail) -> None:
        self.detail = detail
        self.query_one("#detail-title", Static).update(
            Text(f"{detail.station} (OCPP {detail.ocpp}) — {len(detail.profiles)} active profile(s)", style="bold"))
        table = self.query_one("#profiles", DataTable)
        for connector, purpose, stack_level, kind, summary in detail.profiles:
            table.add_row(str(connector), purpose, str(stack_level), kind, summary)
        text = Text()
        for connector, periods in detail.schedules:
            text.append(f"connector {connector}, composite schedule for the next hour:\n", style="bold")
            if not periods:
                text.append("  no limit (the station's maximum)\n", style="dim")
            for offset_s, limit_a in periods:
                text.append(f"  +{offset_s // 60:02d}:{offset_s % 60:02d}  {limit_a:5.1f} A\n")
        self.query_one("#schedules", Static).update(text)

    def action_close(self) -> None:
        self.dismiss()


class EvbenchApp(App[RunResult | None]):
    """The live view of one run; ``run()`` returns the run's RunResult once the user quits."""

    TITLE = "evbench"
    CSS = """
    #top { height: 11; }
    #site { width: 60; height: 100%; border: round $primary; border-title-align: left; }
    #plot { border: round $primary; border-title-align: left; }
    #stations { height: 1fr; border: round $primary; border-title-align: left; }
    #logs { height: 10; }
    #findings, #events { width: 1fr; border: round $primary; border-title-align: left; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "toggle_pause", "Pause"),
        Binding("plus", "faster", "Faster", key_display="+"),
        Binding("minus", "slower", "Slower", key_display="-"),
        Binding("p", "plug", "Plug in"),
        Binding("u", "unplug", "Unplug"),
        Binding("l", "toggle_link", "Link"),
        Binding("m", "toggle_meter", "Meter"),
        Binding("s", "site_limit", "Limit"),
        Binding("o", "toggle_messages", "OCPP"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]
    # Actions that change the run: only from the main screen, so a key typed on a dialog never reaches the site.
    RUN_COMMANDS = frozenset({"toggle_pause", "faster", "slower", "plug", "unplug", "toggle_link", "toggle_meter",
                              "site_limit"})
    station_table_class: type[StationTable] = StationTable

    def __init__(self, live: LiveRun, refresh_hz: float = 10.0) -> None:
        super().__init__()
        if not refresh_hz > 0:
            raise ValueError(f"refresh_hz: expected a positive rate (got {refresh_hz!r})")
        self.live = live
        self.refresh_hz = refresh_hz
        self.state: LiveState | None = None
        self._events_shown: tuple = ()
        self._messages_on = False
        self._findings_shown = 0
        self._clock_at_zero: datetime | None = None
        self._stopping = False

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        with Horizontal(id="top"):
            yield SitePanel(id="site")
            yield PhasePlot(id="plot")
        yield self.station_table_class(id="stations")
        with Horizontal(id="logs"):
            yield RichLog(id="findings", max_lines=500, wrap=True)
            yield RichLog(id="events", max_lines=500, wrap=False)
        yield Footer()

    def on_mount(self) -> None:
        for selector, title in (("#site", "site"), ("#plot", "site current, last 30 min"), ("#stations", "stations"),
                                ("#findings", "findings"), ("#events", "events")):
            self.query_one(selector).border_title = title
        self.query_one(StationTable).focus()
        self.refresh_view()
        self.refresh_timer = self.set_interval(1 / self.refresh_hz, self.refresh_view)

    # -- the view ---------------------------------------------------------------------------------

    def refresh_view(self) -> None:
        """Show the run's latest snapshot; widgets repaint only what changed since the last one."""
        state = self.live.state()
        if state is self.state:
            return
        self.state = state
        self.query_one(RunHeader).show(state)
        self.query_one(SitePanel).show(state)
        self.query_one(PhasePlot).show(state.history)
        self.query_one(StationTable).show(state.stations)
        self._append_findings(state)
        self._append_events(state)

    def _append_findings(self, state: LiveState) -> None:
        if len(state.findings) <= self._findings_shown:
            return
        log = self.query_one("#findings", RichLog)
        for check_id, message in state.findings[self._findings_shown:]:
            line = Text()
            line.append(f"{check_id} ", style="bold red")
            line.append(message)
            log.write(line)
        self._findings_shown = len(state.findings)

    def _append_events(self, state: LiveState) -> None:
        events = state.events
        if events == self._events_shown:
            return
        # The snapshot keeps the newest 200 events: the old window minus what fell off its front, then new ones.
        shown = self._events_shown
        dropped = next((d for d in range(len(shown) + 1) if events[:len(shown) - d] == shown[d:]), len(shown))
        fresh = events[len(shown) - dropped:]
        if self._clock_at_zero is None:
            self._clock_at_zero = datetime.strptime(state.clock, CLOCK_FORMAT) - timedelta(seconds=state.t_s)
        log = self.query_one("#events", RichLog)
        for t_s, kind, station, text in fresh:
            line = Text()
            line.append(f"{(self._clock_at_zero + timedelta(seconds=t_s)):%H:%M:%S} ", style="dim")
            line.append(f"{kind} ", style="cyan")
            if station is not None:
                line.append(f"{station} ", style="bold")
            line.append(text)
            log.write(line)
        self._events_shown = events

    # -- keys -------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in self.RUN_COMMANDS and len(self.screen_stack) > 1)

    def action_toggle_pause(self) -> None:
        if self.live.state().paused:
            self.live.resume()
        else:
            self.live.pause()

    def action_faster(self) -> None:
        self.live.set_speed(self.live.state().speed * SPEED_STEP)

    def action_slower(self) -> None:
        self.live.set_speed(self.live.state().speed / SPEED_STEP)

    def action_plug(self) -> None:
        if (selected := self.query_one(StationTable).selected()) is not None:
            self.live.plug(*selected)

    def action_unplug(self) -> None:
        if (selected := self.query_one(StationTable).selected()) is not None:
            self.live.unplug(*selected)

    def action_toggle_link(self) -> None:
        if self.live.state().link_up:
            self.live.drop_link()
        else:
            self.live.restore_link()

    def action_toggle_meter(self) -> None:
        if self.live.state().meter_fault is None:
            self.live.fail_meter()
        else:
            self.live.restore_meter()

    def action_site_limit(self) -> None:
        def apply(limit_a: float | None) -> None:
            if limit_a is not None:
                self.live.set_site_limit(limit_a)

        self.push_screen(SiteLimitScreen(self.live.state().limit_a), apply)

    def on_station_table_selected(self, event: StationTable.Selected) -> None:
        # The table takes Enter (and a click on the cursor row) for itself; choosing a row opens its detail.
        self.push_screen(StationDetailScreen(self.live, event.station))

    def action_toggle_messages(self) -> None:
        self._messages_on = not self._messages_on
        self.live.show_messages(self._messages_on)
        self.notify("OCPP frames shown in the event log" if self._messages_on else "OCPP frames hidden")

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        """End the run cleanly (trace closed, verdict judged) off the UI thread, then leave with its result."""
        if self._stopping:
            return
        self._stopping = True
        self.query_one(RunHeader).stopping = True
        self.query_one(RunHeader).show(self.live.state())
        self.run_worker(self.live.stop, thread=True, name="stop-run")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name == "stop-run" and event.state == WorkerState.SUCCESS:
            self.refresh_timer.stop()  # a refresh landing while the app tears its widgets down would find none
            self.exit(event.worker.result)
