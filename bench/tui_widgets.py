"""The widgets of ``evbench tui``: each turns one part of a :class:`bench.live.LiveState` into text.

Every widget here has one ``show(...)`` entry point that the app calls on each refresh with the
latest snapshot, and each one repaints only when what it displays changed: at 10 refreshes/s with
200 stations a full repaint of everything costs most of a core, while a running site changes a
few per cent of its cells per refresh (LIBRARIES.md, Textual: 8 % vs 50–59 % of a core).

- :class:`RunHeader` — scenario, controller, sim clock, speed or PAUSED, verdict, link and meter.
- :class:`SitePanel` — per-phase bars against the limit, breaker, building/PV/battery, power, demand.
- :class:`PhasePlot` — L1–L3 and the limit over the snapshot's history (the last 30 minutes).
- :class:`StationTable` — one line per connector; only rows whose text changed are rendered again.

Nothing here talks to the run: widgets read immutable snapshots; commands go through the app.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

if TYPE_CHECKING:  # widgets only read snapshots' fields; the run itself is the app's business
    from bench.live import LiveState, StationRow

__all__ = ["NEAR_LIMIT", "STATION_COLUMNS", "PhasePlot", "RunHeader", "SitePanel", "StationTable", "phase_style",
           "station_cells"]

# A phase at or above 90 % of the limit is "near" it: there is less headroom left than one
# 16 A car's step on a typical 80–200 A site, so a person watching should look.
NEAR_LIMIT = 0.9
PHASE_COLOURS = ("bright_yellow", "bright_cyan", "bright_magenta")  # L1, L2, L3 in bars' labels and the plot
LIMIT_COLOUR = "red"


def phase_style(current_a: float, limit_a: float) -> str:
    """Green under 90 % of the limit, yellow from 90 % up to the limit, red over it."""
    if limit_a <= 0 or current_a > limit_a:
        return "bold red"
    return "yellow" if current_a >= NEAR_LIMIT * limit_a else "green"


class RunHeader(Static):
    """One line: what runs, where the sim clock is, how fast, and the verdict so far."""

    DEFAULT_CSS = "RunHeader { dock: top; height: 1; background: $panel; padding: 0 1; }"

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self._shown: tuple | None = None
        self.stopping = False

    def show(self, state: LiveState) -> None:
        key = (state.scenario, state.controller, state.clock, state.speed, state.paused, state.finished,
               state.verdict, state.link_up, state.meter_fault, self.stopping)
        if key == self._shown:
            return
        self._shown = key
        line = Text()
        line.append(f"{state.scenario}", style="bold")
        line.append(f" · {state.controller} · {state.clock} · ")
        if self.stopping:
            line.append("STOPPING…", style="bold reverse")
        elif state.finished:
            line.append("FINISHED", style="bold")
        elif state.paused:
            line.append("PAUSED", style="bold reverse yellow")
        else:
            line.append(f"×{state.speed:g}")
        line.append(" · verdict ")
        verdict_style = {"PASS": "bold green", "FAIL": "bold red"}.get(state.verdict, "dim")
        line.append(state.verdict, style=verdict_style)
        line.append(" · ")
        line.append("link up" if state.link_up else "LINK DOWN", style="" if state.link_up else "bold red")
        line.append(" · ")
        if state.meter_fault is None:
            line.append("meter ok")
        else:
            line.append(f"METER {state.meter_fault.upper()}", style="bold red")
        self.update(line, layout=False)  # one docked line: its size never depends on the text, so no re-layout


class SitePanel(Static):
    """The grid connection point: what each phase draws against the limit, and what else is on the site."""

    BAR_WIDTH = 24
    # The bar's full width is 125 % of the limit so the limit mark sits at 80 % and overshoot stays visible.
    BAR_HEADROOM = 1.25

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self._shown: tuple | None = None

    def show(self, state: LiveState) -> None:
        key = (tuple(round(i, 1) for i in state.currents_a), state.limit_a, state.breaker_closed,
               state.breaker_rating_a, round(state.breaker_heat, 2), round(state.building_a, 1), round(state.pv_w),
               round(state.battery_w), round(state.power_w), round(state.demand_15min_kw, 1),
               round(state.peak_15min_kw, 1))
        if key == self._shown:
            return
        self._shown = key
        text = Text()
        for phase, current_a in enumerate(state.currents_a):
            text.append(f"L{phase + 1} ", style=PHASE_COLOURS[phase])
            text.append_text(self._bar(current_a, state.limit_a))
            text.append(f" {current_a:6.1f} A\n", style=phase_style(current_a, state.limit_a))
        text.append(f"limit {state.limit_a:.1f} A · breaker {state.breaker_rating_a:g} A ")
        if state.breaker_closed:
            heat_style = "bold red" if state.breaker_heat >= NEAR_LIMIT else ""
            text.append(f"closed, heat {state.breaker_heat:.0%}\n", style=heat_style)
        else:
            text.append("OPEN (tripped)\n", style="bold reverse red")
        text.append(f"building {state.building_a:.1f} A · PV {state.pv_w / 1000:.1f} kW · "
                    f"battery {state.battery_w / 1000:+.1f} kW\n")
        text.append(f"power {state.power_w / 1000:.1f} kW · 15-min demand {state.demand_15min_kw:.1f} kW "
                    f"(peak {state.peak_15min_kw:.1f} kW)")
        self.update(text, layout=False)  # always six lines, in a panel the app sizes: no re-layout of the screen

    def _bar(self, current_a: float, limit_a: float) -> Text:
        full_scale_a = max(limit_a * self.BAR_HEADROOM, current_a, 1.0)
        filled = round(self.BAR_WIDTH * current_a / full_scale_a)
        limit_at = min(self.BAR_WIDTH - 1, round(self.BAR_WIDTH * limit_a / full_scale_a))
        bar = Text()
        style = phase_style(current_a, limit_a)
        for cell in range(self.BAR_WIDTH):
            if cell == limit_at:
                bar.append("│", style=f"bold {LIMIT_COLOUR}")
            else:
                bar.append("█" if cell < filled else "░", style=style if cell < filled else "grey30")
        return bar


class PhasePlot(Widget):
    """Site current per phase and the limit over the last 30 simulated minutes, drawn in text cells.

    A native widget rather than textual-plotext: history gains one sample per 5 simulated seconds,
    and at high speeds that is a redraw per refresh — plotext at 5 Hz alone cost ~29 % of a core
    (LIBRARIES.md). Each column shows the highest sample that falls in it, so short peaks stay visible.
    """

    DEFAULT_CSS = "PhasePlot { width: 1fr; height: 100%; }"
    AXIS_WIDTH = 6

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._history: Sequence[tuple[float, float, float, float, float]] = ()
        self._shown: tuple | None = None

    def show(self, history: Sequence[tuple[float, float, float, float, float]]) -> None:
        key = (len(history), history[-1] if history else None, history[0] if history else None)
        if key == self._shown:
            return
        self._shown = key
        self._history = history
        self.refresh()

    def render(self) -> Text:
        width = max(1, self.size.width - self.AXIS_WIDTH)
        height = max(2, self.size.height - 1)  # the last line is the legend
        columns = self._columns(width)
        top_a = max([limit for *_, limit in columns] + [max(c[:3]) for c in columns] + [1.0]) * 1.1
        grid: list[list[tuple[str, str]]] = [[(" ", "")] * width for _ in range(height)]

        def row_of(value_a: float) -> int:
            return height - 1 - min(height - 1, max(0, int(value_a / top_a * height)))

        for x, (i1, i2, i3, limit_a) in enumerate(columns):
            grid[row_of(limit_a)][x] = ("─", LIMIT_COLOUR)
            for phase, current_a in enumerate((i1, i2, i3)):
                grid[row_of(current_a)][x] = ("•", PHASE_COLOURS[phase])
        text = Text()
        for y, cells in enumerate(grid):
            label = f"{top_a * (height - y) / height:5.0f}" if y in (0, height // 2) else " " * 5
            text.append(label + "┤", style="dim")
            for char, style in cells:
                text.append(char, style=style)
            text.append("\n")
        span_min = (self._history[-1][0] - self._history[0][0]) / 60 if len(self._history) > 1 else 0.0
        text.append(f"{'A':>5} ", style="dim")
        for phase in range(3):
            text.append(f"• L{phase + 1} ", style=PHASE_COLOURS[phase])
        text.append("─ limit", style=LIMIT_COLOUR)
        text.append(f"  last {span_min:.0f} min", style="dim")
        return text

    def _columns(self, width: int) -> list[tuple[float, float, float, float]]:
        """The history spread over at most ``width`` columns (newest at the right), each the maximum of its samples."""
        samples = self._history
        if len(samples) <= width:
            return [sample[1:5] for sample in samples]
        columns: list[list[float]] = [[0.0, 0.0, 0.0, 0.0] for _ in range(width)]
        for index, sample in enumerate(samples):
            column = columns[index * width // len(samples)]
            for k in range(4):
                column[k] = max(column[k], sample[k + 1])
        return [tuple(column) for column in columns]


_STATUS_STYLES = {status: Style.parse(style) for status, style in (
    ("Charging", "green"), ("SuspendedEV", "yellow"), ("SuspendedEVSE", "yellow"), ("Preparing", "cyan"),
    ("Finishing", "cyan"), ("Available", "dim"), ("Unavailable", "bold red"), ("Faulted", "bold red"),
    ("Offline", "bold red"))}

# (column label, width): widths are fixed so a changed value never moves another column.
STATION_COLUMNS = (("Station", 12), ("Conn", 4), ("OCPP", 5), ("Status", 13), ("Limit A", 7), ("Offer A", 7),
                   ("L1 / L2 / L3 A", 16), ("kW", 6), ("SoC", 5), ("kWh", 6), ("EV", 14), ("Departs", 7),
                   ("Needs", 22))
CELL_PADDING = 1  # blank cells either side of every column's text
TABLE_WIDTH = sum(width + 2 * CELL_PADDING for _, width in STATION_COLUMNS)


def _number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def station_cells(row: StationRow) -> tuple[str, ...]:
    """One station row as the strings the table shows, in :data:`STATION_COLUMNS` order."""
    return (row.station, str(row.connector), row.ocpp, row.status, _number(row.limit_a), _number(row.offered_a),
            " ".join(f"{i:4.1f}" for i in row.currents_a), _number(row.power_w / 1000),
            "—" if row.soc is None else f"{row.soc:.0%}", _number(row.energy_kwh, 2), row.ev or "—",
            row.departure or "—", row.needs or "—")


def _fit(text: str, width: int) -> str:
    """``text`` padded to ``width`` cells, or cut with an ellipsis when it is longer."""
    if cell_len(text) > width:
        return set_cell_size(text, width - 1) + "…"
    return set_cell_size(text, width)


class StationTable(ScrollView, can_focus=True):
    """Every connector of the site, one line each under a fixed header, with a row cursor.

    Drawn with Textual's line API: each row's rendered line is kept, and a refresh re-renders only
    the rows whose displayed text changed — and only those on screen; a row scrolled out of view is
    rendered when it scrolls in. Textual's DataTable cannot do this: any cell update drops its whole
    render cache, so every frame with a change re-rendered every visible cell (80 % of a core with
    200 stations at 10 refreshes/s). Enter, or a click on the row under the cursor, posts
    :class:`StationTable.Selected`; a click on another row moves the cursor there.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Detail"),  # shown in the footer: the app opens the row's detail
        Binding("up", "cursor_up", "Up", show=False),
        Binding("down", "cursor_down", "Down", show=False),
        Binding("pageup", "cursor_page_up", "Page up", show=False),
        Binding("pagedown", "cursor_page_down", "Page down", show=False),
        Binding("home", "cursor_first", "First row", show=False),
        Binding("end", "cursor_last", "Last row", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {"station-table--header", "station-table--cursor",
                                             "station-table--even-row"}
    DEFAULT_CSS = """
    StationTable {
        background: $surface;
        color: $foreground;
        &:focus { background-tint: $foreground 5%; }
        & > .station-table--header { text-style: bold; background: $panel; color: $foreground; }
        &:focus > .station-table--header { background-tint: $foreground 5%; }
        & > .station-table--even-row { background: $surface-lighten-1 50%; }
        &:dark > .station-table--even-row { background: $surface-darken-1 40%; }
        & > .station-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        &:focus > .station-table--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: $block-cursor-text-style;
        }
    }
    """
    STATUS_COLUMN = 3
    HEADER_HEIGHT = 1

    class Selected(Message):
        """The user chose the connector under the cursor (Enter, or a click on the cursor row)."""

        def __init__(self, table: StationTable, station: str, connector: int) -> None:
            super().__init__()
            self.table = table
            self.station = station
            self.connector = connector

        @property
        def control(self) -> StationTable:
            return self.table

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.connectors: list[tuple[str, int]] = []
        self.cursor_row = 0
        self._rows: tuple[StationRow, ...] = ()
        self._shown: list[tuple[str, ...]] = []
        self._strips: list[Strip | None] = []  # per row, without the cursor; None until rendered or after a change
        self._header: Strip | None = None
        # (widget, header, cursor, even row) styles the cached strips were rendered with
        self._styles: tuple[Style, Style, Style, Style] | None = None
        self.virtual_size = Size(TABLE_WIDTH, self.HEADER_HEIGHT)

    # -- what the app calls -------------------------------------------------------------------------

    def show(self, rows: Sequence[StationRow]) -> None:
        """Show ``rows``; only rows whose displayed text changed are rendered again."""
        connectors = [(row.station, row.connector) for row in rows]
        if connectors != self.connectors:
            self._rebuild(rows, connectors)
            return
        previous_rows, self._rows = self._rows, tuple(rows)
        changed = []
        for index, row in enumerate(rows):
            if row is previous_rows[index]:
                continue  # the run republishes an unchanged row as the same object
            cells = station_cells(row)
            if cells == self._shown[index]:
                continue
            self._shown[index] = cells
            self._strips[index] = None
            changed.append(index)
        self._refresh_rows(changed)

    def selected(self) -> tuple[str, int] | None:
        """The (station, connector) under the cursor, or None while the site has no rows."""
        return self.connectors[self.cursor_row] if self.connectors else None

    def move_cursor(self, row: int) -> None:
        """Put the cursor on ``row`` (clamped to the table) and scroll it into view."""
        if not self._shown:
            return
        row = max(0, min(row, len(self._shown) - 1))
        previous, self.cursor_row = self.cursor_row, row
        self._scroll_into_view(row)
        self._refresh_rows([previous, row])

    @property
    def row_count(self) -> int:
        return len(self._shown)

    # -- keys and mouse -----------------------------------------------------------------------------

    def action_cursor_up(self) -> None:
        self.move_cursor(self.cursor_row - 1)

    def action_cursor_down(self) -> None:
        self.move_cursor(self.cursor_row + 1)

    def action_cursor_page_up(self) -> None:
        self.move_cursor(self.cursor_row - self._visible_rows())

    def action_cursor_page_down(self) -> None:
        self.move_cursor(self.cursor_row + self._visible_rows())

    def action_cursor_first(self) -> None:
        self.move_cursor(0)

    def action_cursor_last(self) -> None:
        self.move_cursor(len(self._shown) - 1)

    def action_select_cursor(self) -> None:
        if (selected := self.selected()) is not None:
            self.post_message(self.Selected(self, *selected))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < self.HEADER_HEIGHT:
            return
        row = offset.y - self.HEADER_HEIGHT + self.scroll_offset.y
        if row >= len(self._shown):
            return
        event.stop()
        if row == self.cursor_row:
            self.action_select_cursor()
        else:
            self.move_cursor(row)

    # -- the line API -------------------------------------------------------------------------------

    def render_lines(self, crop: Region) -> list[Strip]:
        styles = (self.rich_style, self.get_component_rich_style("station-table--header"),
                  self.get_component_rich_style("station-table--cursor"),
                  self.get_component_rich_style("station-table--even-row"))
        if styles != self._styles:  # theme or focus changed: every kept line is stale
            self._styles = styles
            self._strips = [None] * len(self._shown)
            self._header = None
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        assert self._styles is not None  # render_lines sets them before any line is asked for
        scroll_x, scroll_y = self.scroll_offset
        base_style, header_style, _, _ = self._styles
        if y < self.HEADER_HEIGHT:
            if self._header is None:
                self._header = self._render_cells(tuple(label for label, _ in STATION_COLUMNS), header_style)
            return self._header.crop_extend(scroll_x, scroll_x + self.size.width, header_style)
        row = y - self.HEADER_HEIGHT + scroll_y
        if row >= len(self._shown):
            return Strip.blank(self.size.width, base_style)
        return self.render_row(row).crop_extend(scroll_x, scroll_x + self.size.width, self._row_style(row))

    def render_row(self, row: int) -> Strip:
        """Row ``row`` as one line of the table's width; kept until its cells change (the cursor row is not kept)."""
        if row == self.cursor_row:
            return self._render_cells(self._shown[row], self._row_style(row), cursor=True)
        strip = self._strips[row]
        if strip is None:
            strip = self._strips[row] = self._render_cells(self._shown[row], self._row_style(row))
        return strip

    def _row_style(self, row: int) -> Style:
        assert self._styles is not None
        base_style, _, cursor_style, even_row_style = self._styles
        if row == self.cursor_row:
            return cursor_style
        return even_row_style if row % 2 == 0 else base_style

    def _render_cells(self, cells: tuple[str, ...], row_style: Style, cursor: bool = False) -> Strip:
        padding = " " * CELL_PADDING
        segments = []
        for column, ((_, width), text) in enumerate(zip(STATION_COLUMNS, cells)):
            style = row_style
            if column == self.STATUS_COLUMN and text in _STATUS_STYLES:
                # The cursor's colours win on the cursor row so it stays readable; elsewhere the status colour does.
                style = _STATUS_STYLES[text] + row_style if cursor else row_style + _STATUS_STYLES[text]
            segments.append(Segment(padding + _fit(text, width) + padding, style))
        return Strip(segments, TABLE_WIDTH)

    # -- helpers ------------------------------------------------------------------------------------

    def _rebuild(self, rows: Sequence[StationRow], connectors: list[tuple[str, int]]) -> None:
        self.connectors = connectors
        self._rows = tuple(rows)
        self._shown = [station_cells(row) for row in rows]
        self._strips = [None] * len(rows)
        self.cursor_row = max(0, min(self.cursor_row, len(rows) - 1))
        self.virtual_size = Size(TABLE_WIDTH, self.HEADER_HEIGHT + len(rows))
        self.refresh()

    def _visible_rows(self) -> int:
        return max(1, self.scrollable_content_region.height - self.HEADER_HEIGHT)

    def _scroll_into_view(self, row: int) -> None:
        top = self.scroll_offset.y
        if row < top:
            self.scroll_to(y=row, animate=False)
        elif row >= top + self._visible_rows():
            self.scroll_to(y=row - self._visible_rows() + 1, animate=False)

    def _refresh_rows(self, rows: Sequence[int]) -> None:
        """Repaint the lines of ``rows`` that are on screen; the others are rendered when they scroll in."""
        top = self.scroll_offset.y
        width = self.size.width
        lines = {row - top + self.HEADER_HEIGHT for row in rows if 0 <= row - top < self._visible_rows()}
        if lines:
            self.refresh(*(Region(0, y, width, 1) for y in sorted(lines)))
