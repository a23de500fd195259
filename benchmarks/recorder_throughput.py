"""Recorder write throughput: 500,000 station samples through Recorder.station, flushed once a
simulated minute as the bench does (plus the recorder's own auto-flush), timed to close.

Budget: >= 200,000 rows/s (10,000 stations at 1 s physics need 10,000 rows/s per real-time
second; an accelerated run needs many times that). Prints ``name=value unit``: the wall-clock
rate, and CPU time per row (the robust figure on a shared machine, as in LIBRARIES.md). The
loop that produces the rows is part of the measurement, as it would be in a run.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

try:
    from bench.recorder import Recorder
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.recorder import Recorder

ROWS = 500_000
STATIONS = 1_000
STEP_S = 1.0


def main() -> None:
    names = [f"CS{i:04d}" for i in range(STATIONS)]
    evs = [f"EV{i:04d}" for i in range(STATIONS)]
    with tempfile.TemporaryDirectory() as tmp:
        rec = Recorder(Path(tmp) / "bench.db", {"scenario": "throughput", "step_s": STEP_S})
        started, cpu_started = time.perf_counter(), time.process_time()
        t = 0.0
        written = 0
        while written < ROWS:
            for i in range(STATIONS):
                draw = 16.0 + (i % 7) * 0.1
                rec.station(t, names[i], 1, 16.0, 16.0, (draw, draw, draw), draw * 690.0,
                            t * 0.003, 0.5, evs[i])
            written += STATIONS
            t += STEP_S
            if t % 60.0 == 0.0:
                rec.flush()
        rec.close()
        elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"recorder_station_rows_per_s={written / elapsed:.0f} rows/s")
    print(f"recorder_station_cpu_per_row={cpu_s / written * 1e6:.2f} us")


if __name__ == "__main__":
    main()
