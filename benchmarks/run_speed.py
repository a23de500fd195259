"""How fast a scenario runs on the virtual clock through real OCPP and Modbus.

Prints `name=value unit` lines: simulated seconds per wall second, OCPP frames per wall second and
CPU microseconds per OCPP frame (the robust figure on a shared machine), for a bundled scenario.

    python benchmarks/run_speed.py [SCENARIO] [CONTROLLER] [DURATION] [--json RESULT.json] [--trace RUN.db]

``--json`` writes the judged result (verdicts, energy, peaks) and ``--trace`` keeps the trace, so that a change
meant to make the bench faster can be shown to leave every result as it was.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from bench.report import write_json
from bench.runner import run_scenario
from bench.scenario import parse_duration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="workplace")
    parser.add_argument("controller", nargs="?", default="equal_share")
    parser.add_argument("duration", nargs="?", default=None, help="e.g. 12h; default: the scenario's")
    parser.add_argument("--json", type=Path, default=None, help="write the judged result as JSON here")
    parser.add_argument("--trace", type=Path, default=None, help="keep the run's trace here")
    args = parser.parse_args()
    duration_s = parse_duration(args.duration) if args.duration is not None else None
    with tempfile.TemporaryDirectory() as folder:
        trace = args.trace if args.trace is not None else Path(folder) / "run.db"
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = run_scenario(args.scenario, args.controller, trace=trace, duration_s=duration_s)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        with sqlite3.connect(trace) as db:
            frames = db.execute("SELECT count(*) FROM messages").fetchone()[0]
            simulated_s = db.execute("SELECT max(t) FROM site_samples").fetchone()[0] or 0.0
    if args.json is not None:
        write_json(result, args.json)
    print(f"scenario={args.scenario} controller={args.controller} verdict={result.verdict}")
    print(f"simulated_s={simulated_s:.0f} s")
    print(f"wall_s={wall:.2f} s")
    print(f"cpu_s={cpu:.2f} s")
    print(f"speedup={simulated_s / wall:.0f} x")
    print(f"ocpp_frames={frames} frames")
    print(f"ocpp_frames_per_wall_s={frames / wall:.0f} frames/s")
    print(f"cpu_per_frame_incl_physics={cpu / max(frames, 1) * 1e6:.0f} us")


if __name__ == "__main__":
    main()
