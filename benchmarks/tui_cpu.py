"""What the live terminal view costs: CPU % of one core at 10 refreshes/s with 200 stations.

The app runs headless (Textual's ``run_test``, which lays out and renders every frame but writes no
terminal bytes) against a stand-in LiveRun whose snapshots change like a busy site's: every refresh
the clock and site currents move and a tenth of the stations change their draw, SoC and energy (about
3 % of the table's cells); a history sample lands every 5 simulated seconds (speed ×10). The states
are built before measuring, so only the view's work is counted. Two variants: the app as it is
(only rows whose text changed are rendered again) and, for comparison, one whose station table
renders every visible row on every refresh. Target: ≤ 15 % of one core for the first.

    python benchmarks/tui_cpu.py [SECONDS]
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sys
import time
from datetime import datetime, timedelta

from bench.live import LiveState, StationRow
from bench.tui import EvbenchApp
from bench.tui_widgets import StationTable

STATIONS = 200
REFRESH_HZ = 10.0
SPEED = 10.0
CHANGING_SHARE = 0.10  # of the rows, per refresh
TERMINAL = (200, 60)


def site_states(count: int, seed: int = 1) -> list[LiveState]:
    """``count`` consecutive snapshots of a 200-station site, one per refresh at ×10."""
    rng = random.Random(seed)
    start = datetime(2026, 3, 2, 9, 0, 0)
    rows = [StationRow(station=f"CP{n:03d}", connector=1, ocpp="1.6" if n % 3 else "2.0.1", status="Charging",
                       limit_a=16.0, offered_a=16.0, currents_a=(16.0, 16.0, 16.0), power_w=11_040.0,
                       soc=rng.uniform(0.1, 0.6), energy_kwh=rng.uniform(0, 20), ev=f"EV{n:03d}", departure="17:30",
                       needs=None)
            for n in range(1, STATIONS + 1)]
    history: list[tuple[float, float, float, float, float]] = []
    states = []
    step_s = SPEED / REFRESH_HZ
    for k in range(count):
        t_s = k * step_s
        for y in rng.sample(range(STATIONS), int(STATIONS * CHANGING_SHARE)):
            row = rows[y]
            current_a = round(rng.uniform(12.0, 16.0), 1)
            rows[y] = dataclasses.replace(row, currents_a=(current_a,) * 3, power_w=current_a * 690.0,
                                          soc=min(1.0, row.soc + 0.001), energy_kwh=row.energy_kwh + 0.01)
        site_a = tuple(sum(r.currents_a[p] for r in rows) for p in range(3))
        if t_s % 5 == 0:
            history = (history + [(t_s, *site_a, 3400.0)])[-360:]
        states.append(LiveState(
            scenario="benchmark-200", controller="equal_share", t_s=t_s,
            clock=(start + timedelta(seconds=t_s)).strftime("%Y-%m-%d %H:%M:%S"), speed=SPEED, paused=False,
            finished=False, currents_a=site_a, limit_a=3400.0, breaker_closed=True, breaker_rating_a=4000.0,
            breaker_heat=0.2, building_a=0.0, pv_w=0.0, battery_w=0.0, power_w=sum(site_a) * 230.0,
            demand_15min_kw=sum(site_a) * 0.23, peak_15min_kw=sum(site_a) * 0.23, history=tuple(history),
            stations=tuple(rows), events=(), findings=(), verdict="PASS", link_up=True, meter_fault=None))
    return states


class ReplayedRun:
    """Hands out the prepared snapshots one per refresh (the app reads one per tick)."""

    def __init__(self, states: list[LiveState]) -> None:
        self._states = states
        self._next = 0

    def state(self) -> LiveState:
        state = self._states[min(self._next, len(self._states) - 1)]
        self._next += 1
        return state


class FullRedrawTable(StationTable):
    """The naive table: every visible row rendered again on every refresh, changed or not."""

    def show(self, rows) -> None:
        super().show(rows)
        self._strips = [None] * len(self._strips)
        self.refresh()


class FullRedrawApp(EvbenchApp):
    station_table_class = FullRedrawTable


async def cpu_share(app_class: type[EvbenchApp], seconds: float) -> float:
    """CPU seconds per wall second while ``app_class`` shows a changing 200-station site at 10 Hz."""
    states = site_states(int(seconds * REFRESH_HZ) + 20)
    app = app_class(ReplayedRun(states), refresh_hz=REFRESH_HZ)
    async with app.run_test(size=TERMINAL) as pilot:
        await pilot.pause(1.0)  # first layout and the full first fill are not the steady state
        wall0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        app.refresh_timer.stop()  # no refresh may land while the app tears its widgets down
    return cpu / wall


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    changed = asyncio.run(cpu_share(EvbenchApp, seconds))
    full = asyncio.run(cpu_share(FullRedrawApp, seconds))
    print(f"stations={STATIONS} refresh_hz={REFRESH_HZ:g} changing_rows_per_refresh={CHANGING_SHARE:.0%}")
    print(f"tui_cpu_changed_rows={changed * 100:.1f} %")
    print(f"tui_cpu_full_redraw={full * 100:.1f} %")
    print(f"target_changed_rows=15 % ({'met' if changed <= 0.15 else 'missed'})")


if __name__ == "__main__":
    main()
