"""Hand-made traces for the check tests: written with the real Recorder and read back with the real loader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.checks import CheckResult, run_checks
from bench.recorder import Recorder
from bench.trace import Trace, load_trace


def recorded(tmp_path: Path, build: Callable[[Recorder], None], meta: dict, name: str = "run.db") -> Trace:
    """The trace ``build`` records into a fresh file under ``meta``."""
    path = tmp_path / name
    with Recorder(path, meta) as rec:
        build(rec)
    return load_trace(path)


def only(trace: Trace, check_id: str) -> CheckResult:
    """One check's result on ``trace``."""
    (result,) = run_checks(trace, [check_id])
    return result
