"""How fast a scenario runs on the virtual clock through real OCPP and Modbus.

Prints `name=value unit` lines: simulated seconds per wall second, OCPP frames per wall second and
CPU microseconds per OCPP frame (the robust figure on a shared machine), for a bundled scenario.

    python benchmarks/run_speed.py [SCENARIO] [CONTROLLER] [DURATION]
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from bench.runner import run_scenario
from bench.scenario import parse_duration


def main() -> None:
    scenario = sys.argv[1] if len(sys.argv) > 1 else "workplace"
    controller = sys.argv[2] if len(sys.argv) > 2 else "equal_share"
    duration_s = parse_duration(sys.argv[3]) if len(sys.argv) > 3 else None
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "run.db"
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = run_scenario(scenario, controller, trace=trace, duration_s=duration_s)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        with sqlite3.connect(trace) as db:
            frames = db.execute("SELECT count(*) FROM messages").fetchone()[0]
            simulated_s = db.execute("SELECT max(t) FROM site_samples").fetchone()[0] or 0.0
    print(f"scenario={scenario} controller={controller} verdict={result.verdict}")
    print(f"simulated_s={simulated_s:.0f} s")
    print(f"wall_s={wall:.2f} s")
    print(f"cpu_s={cpu:.2f} s")
    print(f"speedup={simulated_s / wall:.0f} x")
    print(f"ocpp_frames={frames} frames")
    print(f"ocpp_frames_per_wall_s={frames / wall:.0f} frames/s")
    print(f"cpu_per_frame_incl_physics={cpu / max(frames, 1) * 1e6:.0f} us")


if __name__ == "__main__":
    main()
