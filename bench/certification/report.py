"""``evbench certify``: the catalogue run through pytest, and the report a vendor hands to a customer.

:func:`certify` runs :mod:`bench.certification.test_catalogue` with pytest (so the JUnit XML is pytest's own and
``-k``/``-m`` select as usual) and then writes, into the report folder, next to ``junit.xml``:

- ``certification.json`` — the controller, the verdict, every test (check × case) with its outcome and message,
  each check's overall verdict, and every case with its judged result;
- ``index.html`` — the check × case matrix, then each case with its site-current plot, linking to
  ``cases/<case>/index.html``, the full page of :mod:`bench.html_report` (plots, findings, metrics);
- ``traces/<case>.db`` — the recorded runs, re-judgeable with ``evbench report``.

Nothing here judges: verdicts are the tests' outcomes, which are the checks'.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench import html_report
from bench.certification import test_catalogue
from bench.certification.session import CaseRun, CertificationSession
from bench.checks import CHECKS
from bench.checks.core import CHECK_INFO
from bench.pytest_plugin import CERTIFICATION
from bench.trace import load_trace


@dataclass
class TestOutcome:
    """One test of the catalogue as pytest reported it."""

    name: str
    case: str
    check: str
    outcome: str  # "passed" | "failed" | "skipped" | "error"
    message: str = ""


@dataclass(eq=False)  # pytest keeps plugins in sets: identity hashing
class _Collector:
    """A pytest plugin object gathering the outcomes and, at the end, the session's case runs."""

    tests: list[TestOutcome] = field(default_factory=list)
    session: CertificationSession | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if report.when == "call" or (report.when == "setup" and not report.passed):
            outcome = report.outcome if report.when == "call" or report.skipped else "error"
            message = ""
            if report.skipped and isinstance(report.longrepr, tuple):
                message = str(report.longrepr[2]).removeprefix("Skipped: ")
            elif report.failed:
                message = report.longreprtext
            name = report.nodeid.rpartition("::")[2]
            case, check = props.get("case", ""), props.get("check", "")
            if not case:  # a skip before the test body ran: read the names from the test id
                check, case = _split_test_id(name)
            self.tests.append(TestOutcome(name, case, check, outcome, message))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.session = session.config.stash.get(CERTIFICATION, None)


def _split_test_id(name: str) -> tuple[str, str]:
    inner = name[name.find("[") + 1:name.rfind("]")]
    check = next((c for c in sorted(CHECKS, key=len, reverse=True) if inner.startswith(c)), "")
    return check, inner.rpartition("-")[2]


@dataclass
class Certification:
    """What a certify run produced: exit code and where its report is."""

    exit_code: int
    report_dir: Path
    tests: list[TestOutcome]
    verdict: str


def certify(controller: str, report_dir: Path, *, ocpp: str | None = None, speed: float | None = None,
            meter_port: int | None = None, catalogues: list[str] | None = None, select: str | None = None,
            markers: str | None = None, quiet: bool = True) -> Certification:
    """Run the catalogue against ``controller`` and write the report into ``report_dir``."""
    report_dir.mkdir(parents=True, exist_ok=True)
    # "-o addopts=": a checkout's own pytest settings (ours run the suite on every core) must not reach the catalogue.
    args = [test_catalogue.__file__, "-o", "addopts=", "-p", "no:cacheprovider",
            "--rootdir", str(Path(test_catalogue.__file__).parent),
            f"--junitxml={report_dir / 'junit.xml'}", "-o", "junit_family=xunit1", "-o", "junit_suite_name=evbench-certify",
            f"--evbench-controller={controller}", f"--evbench-traces={report_dir / 'traces'}", "-rfs"]
    args += ["-q"] if quiet else ["-v"]
    args += [f"--evbench-ocpp={ocpp}"] if ocpp else []
    args += [f"--evbench-speed={speed:g}"] if speed else []
    args += [f"--evbench-meter-port={meter_port}"] if meter_port is not None else []
    args += [f"--evbench-catalogue={folder}" for folder in catalogues or []]
    args += ["-k", select] if select else []
    args += ["-m", markers] if markers else []
    collector = _Collector()
    exit_code = int(pytest.main(args, plugins=[collector]))
    runs = list(collector.session.runs.values()) if collector.session else []
    verdict = "pass" if collector.tests and all(t.outcome in ("passed", "skipped") for t in collector.tests) else "fail"
    write_report(report_dir, controller, ocpp, collector.tests, runs, verdict)
    return Certification(exit_code, report_dir, collector.tests, verdict)


def check_verdicts(tests: list[TestOutcome]) -> dict[str, str]:
    """Each check's overall verdict over its tests: fail if any failed, pass if any passed, else skipped."""
    verdicts: dict[str, str] = {}
    for check_id in CHECKS:
        outcomes = {t.outcome for t in tests if t.check == check_id}
        if outcomes & {"failed", "error"}:
            verdicts[check_id] = "fail"
        elif "passed" in outcomes:
            verdicts[check_id] = "pass"
        elif outcomes:
            verdicts[check_id] = "skipped"
    return verdicts


def write_report(report_dir: Path, controller: str, ocpp: str | None, tests: list[TestOutcome], runs: list[CaseRun],
                 verdict: str) -> None:
    """certification.json, index.html and each case's page (see the module docstring)."""
    for run in runs:
        if run.result is not None:
            html_report.write_html(run.result, load_trace(run.result.trace_path), report_dir / "cases" / run.case.id)
    document = {
        "controller": controller,
        "ocpp": ocpp,
        "verdict": verdict,
        "written": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "checks": check_verdicts(tests),
        "tests": [t.__dict__ for t in tests],
        "cases": [_case_json(run) for run in runs],
    }
    (report_dir / "certification.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")
    (report_dir / "index.html").write_text(_index_html(document, tests, runs), encoding="utf-8")


def _case_json(run: CaseRun) -> dict:
    case = run.case
    return {
        "id": case.id, "description": case.description, "exercises": list(case.exercises),
        "extends": case.extends, "skipped": run.skipped, "error": run.error, "wall_s": round(run.wall_s, 1),
        "page": f"cases/{case.id}/index.html" if run.result is not None else None,
        "result": run.result.to_json() if run.result is not None else None,
    }


_COLOURS = {"passed": "#1e8449", "pass": "#1e8449", "failed": "#c0392b", "fail": "#c0392b", "error": "#c0392b",
            "skipped": "#7f8c8d"}


def _index_html(document: dict, tests: list[TestOutcome], runs: list[CaseRun]) -> str:
    e = html.escape
    case_ids = [run.case.id for run in runs]
    by_cell = {(t.check, t.case): t for t in tests}
    header = "".join(f"<th><a href='#{e(c)}'>{e(c)}</a></th>" for c in case_ids)
    rows = []
    for check_id, verdict in document["checks"].items():
        cells = []
        for case_id in case_ids:
            test = by_cell.get((check_id, case_id))
            if test is None:
                cells.append("<td></td>")
                continue
            label = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "skip"}[test.outcome]
            cells.append(f"<td style='color:{_COLOURS[test.outcome]}' title='{e(test.message[:300])}'><b>{label}</b></td>")
        info = CHECK_INFO[check_id]
        rows.append(f"<tr><td><b>{e(check_id)}</b><br><small>{e(info.layer)}</small></td>"
                    f"<td style='color:{_COLOURS[verdict]}'><b>{verdict.upper()}</b></td>{''.join(cells)}"
                    f"<td><small>{e(info.statement)}<br>source: {e(info.source)}</small></td></tr>")
    sections = []
    for run in runs:
        case = run.case
        if run.skipped:
            body = f"<p><i>Not run: {e(run.skipped)}</i></p>"
        elif run.result is None:
            body = f"<p style='color:#c0392b'>The run failed: {e(run.error or '')}</p>"
        else:
            failed = [c.id for c in run.result.checks if c.id in case.exercises and c.findings]
            body = (f"<p>{'Failed: ' + e(', '.join(failed)) if failed else 'Every exercised check passed.'}"
                    f"{' The run broke off: ' + e(run.error) if run.error else ''} "
                    f"<a href='cases/{e(case.id)}/index.html'>Findings, plots and metrics</a>.</p>"
                    f"<img src='cases/{e(case.id)}/{html_report.PLOTS[0]}' alt='site current of case {e(case.id)}'>")
        extends = "; ".join(f"{k} extends {v}" for k, v in case.extends.items())
        sections.append(f"<h3 id='{e(case.id)}'>{e(case.id)}</h3><p>{e(case.description)}<br><small>exercises "
                        f"{e(', '.join(case.exercises))}{'; ' + e(extends) if extends else ''}</small></p>{body}")
    verdict = document["verdict"].upper()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>evbench certification: {e(document['controller'])}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:.4em;vertical-align:top;text-align:left}}
img{{max-width:100%;margin:.5em 0}}</style></head><body>
<h1>Certification of {e(document['controller'])}: <span style="color:{_COLOURS[document['verdict']]}">{verdict}</span></h1>
<p>evbench ran its certification catalogue against this controller{' on OCPP ' + e(document['ocpp']) if document['ocpp'] else ''}:
short cases on one site, each judged by what the site actually drew (measured checks) and by what the controller
sent (message checks). Written {e(document['written'])}. Machine-readable: <a href="certification.json">certification.json</a>,
<a href="junit.xml">junit.xml</a>.</p>
<h2>Checks by case</h2>
<table><tr><th>check</th><th>verdict</th>{header}<th>what must hold</th></tr>{''.join(rows)}</table>
<h2>Cases</h2>{''.join(sections)}
</body></html>
"""

