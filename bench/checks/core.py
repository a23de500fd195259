"""What every check shares: findings and results, the registry, check parameters, sample-and-hold runs.

Time model: samples are sample-and-hold — a sample's values hold until the next sample, and the
last sample holds for one physics step (``meta["step_s"]``). An excursion therefore lasts from its
first sample over the bound to the first sample back within it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from bench.clock import iso_z
from bench.scenario import Checks, Site
from bench.trace import Trace

PHASES = ("L1", "L2", "L3")

#: Parameters for a trace whose meta lacks them (a hand-made or older trace): the scenario
#: model's own defaults, so a scenario that leaves them out and a trace that does agree.
DEFAULT_PARAMS = Checks().model_dump()

#: Phase-to-neutral voltage [V] for W→A conversion when the trace's meta lacks it.
DEFAULT_VOLTAGE_V = Site.model_fields["voltage_v"].default

#: Samples quoted as evidence per finding (the first ones of the excursion).
EVIDENCE_SAMPLES = 5


# -- results --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    """One violation: what, when (sim seconds), where, measured vs allowed, and the evidence.
    ``to_json`` adds the window as wall-clock ISO 8601 ("Z") via the run's start epoch."""

    check: str
    message: str
    t_start: float
    t_end: float
    station: str | None = None
    connector: int | None = None
    phase: str | None = None
    measured: float | None = None
    allowed: float | None = None
    unit: str = "A"
    evidence: dict | None = None

    def to_json(self, start_epoch: float) -> dict:
        return {
            "check": self.check, "message": self.message,
            "window": [iso_z(start_epoch + self.t_start), iso_z(start_epoch + self.t_end)],
            "t_start": self.t_start, "t_end": self.t_end,
            "station": self.station, "connector": self.connector, "phase": self.phase,
            "measured": self.measured, "allowed": self.allowed, "unit": self.unit,
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class CheckResult:
    """A check's verdict over one trace: ``fail`` iff it has findings."""

    id: str
    statement: str
    source: str
    layer: str  # "measured" (what the site drew) | "message" (what the controller sent)
    verdict: str  # "pass" | "fail"
    findings: tuple[Finding, ...]

    def to_json(self, start_epoch: float) -> dict:
        return {"id": self.id, "verdict": self.verdict, "statement": self.statement,
                "source": self.source, "layer": self.layer,
                "findings": [f.to_json(start_epoch) for f in self.findings]}


#: The registry, in catalogue order (the order of the ``@_check`` definitions below).
CHECKS: dict[str, Callable[[Trace], CheckResult]] = {}


@dataclass(frozen=True)
class CheckInfo:
    """What a check is, known before any run: for selecting and naming tests of it."""

    id: str
    layer: str
    statement: str
    source: str


#: Every registered check's :class:`CheckInfo`, by id.
CHECK_INFO: dict[str, CheckInfo] = {}


def _check(check_id: str, layer: str, statement: str, source: str):
    """Register ``find(trace) -> findings`` as the check ``check_id``."""
    def register(find: Callable[[Trace], Iterable[Finding]]) -> Callable[[Trace], CheckResult]:
        def check(trace: Trace) -> CheckResult:
            findings = tuple(sorted(find(trace), key=lambda f: f.t_start))
            return CheckResult(check_id, statement, source, layer,
                               "fail" if findings else "pass", findings)
        check.__name__ = check.__qualname__ = find.__name__.lstrip("_")
        check.__doc__ = find.__doc__
        CHECKS[check_id] = check
        CHECK_INFO[check_id] = CheckInfo(check_id, layer, statement, source)
        return check
    return register


def run_checks(trace: Trace, ids: Iterable[str] | None = None) -> list[CheckResult]:
    """Run the given checks (default: all, in catalogue order) over ``trace``."""
    ids = list(CHECKS) if ids is None else list(ids)
    unknown = [i for i in ids if i not in CHECKS]
    if unknown:
        raise KeyError(f"unknown check id(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    return [CHECKS[i](trace) for i in ids]


# -- shared pieces --------------------------------------------------------------------------

def _params(trace: Trace) -> dict:
    given = trace.meta.get("checks")
    return {**DEFAULT_PARAMS, **(given if isinstance(given, dict) else {})}


def _step_s(trace: Trace) -> float:
    step = trace.meta.get("step_s")
    return float(step) if _is_number(step) and step > 0 else 1.0


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _seconds(x: float) -> str:
    """Duration for messages: "42", "42.5"."""
    return f"{x:.1f}".removesuffix(".0")


def _runs(ts: Sequence[float], over: Sequence[bool], end_t: float) -> Iterator[tuple[int, int, float]]:
    """Maximal runs of consecutive flagged samples, as ``(first, stop, t_end)``: samples
    ``first..stop-1`` are over; the run ends at the next sample (``ts[stop]``) or, if it is
    still going when the samples end, at ``end_t``."""
    n = len(ts)
    i = 0
    while i < n:
        if not over[i]:
            i += 1
            continue
        j = i + 1
        while j < n and over[j]:
            j += 1
        yield i, j, ts[j] if j < n else end_t
        i = j


def _end_t(trace: Trace) -> float:
    """When the run ended [s]: the last thing it recorded (a run cut short ends there, not at its planned
    duration), or — for a trace that recorded nothing — its planned duration."""
    ends = [trace.messages[-1]["t"]] if trace.messages else []
    ends += [trace.events[-1]["t"]] if trace.events else []
    ends += [trace.site[-1][0]] if trace.site else []
    ends += [samples[-1][0] for samples in trace.stations.values() if samples]
    ends = [t for t in ends if _is_number(t)]
    duration = trace.meta.get("duration_s")
    return max(ends) if ends else duration if _is_number(duration) else 0.0
