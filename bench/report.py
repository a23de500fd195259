"""What a user reads after a run: the judged result, as a terminal table or as JSON.

``judge`` is the one entry point from a trace file to a :class:`RunResult` (load, run every
check, compute metrics); ``render_table`` and ``write_json`` present it. Nothing here judges —
verdicts come from ``bench.checks`` — and nothing here runs a scenario.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bench.checks import CheckResult, Finding, metrics, run_checks
from bench.clock import iso_z
from bench.trace import load_trace


@dataclass
class RunResult:
    """One judged run: every check's result plus the run's metrics."""

    scenario: str
    controller: str
    trace_path: str
    checks: list[CheckResult]
    metrics: dict
    start_epoch: float

    @property
    def verdict(self) -> str:
        """``pass`` if every check passed, else ``fail``."""
        return "pass" if all(c.verdict == "pass" for c in self.checks) else "fail"

    def _check(self, check_id: str) -> CheckResult:
        for check in self.checks:
            if check.id == check_id:
                return check
        raise KeyError(f"no check {check_id!r} in this result; known: {', '.join(c.id for c in self.checks)}")

    def passed(self, check_id: str) -> bool:
        return self._check(check_id).verdict == "pass"

    def findings(self, check_id: str | None = None) -> list[Finding]:
        """Findings of one check, or of all checks in catalogue order."""
        if check_id is not None:
            return list(self._check(check_id).findings)
        return [f for check in self.checks for f in check.findings]

    def explain(self, check_id: str | None = None, max_findings: int = 10) -> str:
        """The findings of one check (or of every failed check) as readable lines: what a failing test prints."""
        checks = [self._check(check_id)] if check_id is not None else [c for c in self.checks if c.findings]
        lines = []
        for check in checks:
            lines.append(f"{check.id} ({check.layer}, {check.source}): {check.verdict.upper()}, "
                         f"{len(check.findings)} finding{'s' if len(check.findings) != 1 else ''}")
            for finding in check.findings[:max_findings]:
                lines.append(f"  {_offset(finding.t_start)}  {finding.message}")
            if len(check.findings) > max_findings:
                lines.append(f"  ... {len(check.findings) - max_findings} more (trace: {self.trace_path})")
        return "\n".join(lines) if lines else "every check passed"

    def assert_passed(self, *check_ids: str) -> None:
        """Raise AssertionError explaining every finding unless the named checks (default: all) passed."""
        failed = [c.id for c in self.checks if c.findings and (not check_ids or c.id in check_ids)]
        for check_id in check_ids:
            self._check(check_id)  # an unknown id is the test's mistake: say so
        if failed:
            raise AssertionError(f"{self.scenario} with {self.controller}:\n"
                                 + "\n".join(self.explain(c) for c in failed))

    def to_json(self) -> dict:
        return {
            "scenario": self.scenario,
            "controller": self.controller,
            "verdict": self.verdict,
            "start": iso_z(self.start_epoch),
            "checks": [c.to_json(self.start_epoch) for c in self.checks],
            "metrics": self.metrics,
            "trace": self.trace_path,
        }


def judge(trace_path: str | Path, scenario: str | None = None, controller: str | None = None) -> RunResult:
    """Judge a trace file; scenario and controller names default to the trace's meta."""
    trace = load_trace(trace_path)
    meta = trace.meta
    start_epoch = meta.get("start_epoch")
    return RunResult(
        scenario=scenario or str(meta.get("scenario") or Path(trace_path).stem),
        controller=controller or str(meta.get("controller") or "unknown"),
        trace_path=str(trace_path),
        checks=run_checks(trace),
        metrics=metrics(trace),
        start_epoch=float(start_epoch) if isinstance(start_epoch, (int, float)) else 0.0,
    )


def _offset(t: float) -> str:
    """Sim time as +HH:MM:SS since scenario start."""
    seconds = int(t)
    return f"+{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _number(value: object, unit: str, digits: int = 1) -> str:
    return f"{value:.{digits}f} {unit}" if isinstance(value, (int, float)) else "n/a"


def render_table(result: RunResult, max_findings: int = 3) -> str:
    """Plain-text summary (no colour codes): checks with their first findings, then metrics."""
    width = max([len("CHECK")] + [len(c.id) for c in result.checks])
    lines = [f"scenario: {result.scenario}  controller: {result.controller}  "
             f"verdict: {result.verdict.upper()}",
             f"{'CHECK':<{width}}  {'LAYER':<8}  VERDICT  FINDINGS"]
    for check in result.checks:
        lines.append(f"{check.id:<{width}}  {check.layer:<8}  {check.verdict.upper():<7}  "
                     f"{len(check.findings):>8}")
        for finding in check.findings[:max_findings]:
            lines.append(f"    {_offset(finding.t_start)}  {finding.message}")
        if len(check.findings) > max_findings:
            lines.append(f"    ... {len(check.findings) - max_findings} more")

    m = result.metrics
    delivered, requested = m.get("energy_delivered_kwh"), m.get("energy_requested_kwh")
    share = f" ({100.0 * delivered / requested:.1f} %)" if requested else ""
    limit = m.get("site_limit_at_peak_a")
    lines += [
        "",
        f"energy delivered   {_number(delivered, 'kWh', 3)} of {_number(requested, 'kWh', 3)} requested{share}",
        f"peak site current  {_number(m.get('peak_site_current_a'), 'A')}"
        + (f" (limit {_number(limit, 'A')})" if limit is not None else ""),
        f"peak 15-min power  {_number(m.get('peak_15min_kw'), 'kW', 3)}",
        f"breaker trips      {m.get('breaker_trips', 0)}",
        f"EVs short          {m.get('vehicles_short', 0)}",
        f"trace: {result.trace_path}",
    ]
    return "\n".join(lines)


def write_json(result: RunResult, path: str | Path) -> None:
    """Write ``result.to_json()`` as indented UTF-8 JSON."""
    Path(path).write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n",
                          encoding="utf-8")
