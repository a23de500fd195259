"""Running the catalogue against one controller: each case once, its judged result kept for every test of it.

A :class:`CertificationSession` is what the pytest plugin's ``evbench_certification`` fixture hands to the
catalogue's tests and what ``evbench certify`` reads afterwards to write its report. A case runs on the first
test that needs it; the tests of its other checks read the same result. An in-process controller runs on the
virtual clock (a case takes seconds); a controller by URL runs on the wall clock, scaled only when the user says
so (``speed``) — sound only for a controller whose own clock is scaled the same way, like ``evbench serve --speed``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.certification.catalogue import Case
from bench.report import RunResult, judge
from bench.runner import resolve_controller, run_scenario
from bench.trace import load_trace


@dataclass
class CaseRun:
    """What became of one case: its judged result, or why it did not run."""

    case: Case
    result: RunResult | None = None
    skipped: str | None = None
    error: str | None = None  # the run broke off (the trace so far is kept and still judged when it exists)
    wall_s: float = 0.0


@dataclass
class CertificationSession:
    """One controller, one catalogue run: options fixed for every case, results cached by case id."""

    controller: str
    trace_dir: Path
    ocpp: str | None = None  # every station on this version; None: each case's own
    speed: float | None = None  # wall-clock scale for a controller by URL; None: real time (virtual in-process)
    meter_port: int | None = None  # where the bench's site meter listens; None: each case's own (ephemeral)
    announce: Callable[[str], None] = lambda _: None
    runs: dict[str, CaseRun] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spec = resolve_controller(self.controller)  # a bad name fails here, before any case runs

    @property
    def external(self) -> bool:
        return self.spec.external

    def run(self, case: Case) -> CaseRun:
        """The case's run, running it the first time it is asked for."""
        if case.id in self.runs:
            return self.runs[case.id]
        outcome = CaseRun(case, skipped=case.skip_reason(external=self.external, ocpp=self.ocpp))
        self.runs[case.id] = outcome
        if outcome.skipped:
            return outcome
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        trace = self.trace_dir / f"{case.id}.db"
        trace.unlink(missing_ok=True)
        scenario = case.scenario_for(ocpp=self.ocpp, meter_port=self.meter_port)
        self.announce(f"case {case.id}: {case.description}")
        started = time.perf_counter()
        try:
            outcome.result = run_scenario(scenario, self.controller, trace=trace, speed=self.speed,
                                          announce=self.announce)
        except Exception as error:  # a broken run is a finding about it, and its trace is still judged
            outcome.error = f"{type(error).__name__}: {error}"
            if trace.exists():
                outcome.result = judge(trace, scenario.name, self.spec.name)
        outcome.wall_s = time.perf_counter() - started
        if outcome.result is not None and outcome.error is None:
            unbooted = never_booted(trace, [station.id for station in scenario.stations])
            if unbooted:  # nothing was judged: a controller that never answers must not pass by silence
                outcome.error = (f"{', '.join(unbooted)} never had a BootNotification accepted — is the controller "
                                 f"listening at {self.controller}?")
        return outcome


def never_booted(trace_path: Path, stations: list[str]) -> list[str]:
    """The stations whose BootNotification no answer in the trace accepted."""
    booted = set()
    for message in load_trace(trace_path).messages:
        if message["action"] == "BootNotification" and message["kind"] == "result":
            try:
                accepted = json.loads(message["payload"]).get("status") == "Accepted"
            except (ValueError, TypeError, AttributeError):  # a malformed answer accepts nothing
                accepted = False
            if accepted:
                booted.add(message["station"])
    return [station for station in stations if station not in booted]
