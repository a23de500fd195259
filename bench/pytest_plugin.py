"""The bench as a pytest plugin: a fixture that runs a scenario against a controller and returns the verdict.

A QA engineer's test reads::

    def test_site_limit_held(run_scenario):
        result = run_scenario("workplace", controller="equal_share")
        assert result.passed("SITE-LIMIT"), result.explain("SITE-LIMIT")

``--evbench-controller`` sets the controller every ``run_scenario`` call uses unless the test
names one; traces go to the test's ``tmp_path`` (kept by pytest for inspection after a failure).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from bench.report import RunResult


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("evbench", "evbench charging-site test bench")
    group.addoption("--evbench-controller", default=None,
                    help="controller for run_scenario: a name, module:Class or ws:// URL of an external CSMS")


@pytest.fixture
def evbench_controller(request: pytest.FixtureRequest) -> str | None:
    """The controller given with --evbench-controller, or None."""
    return request.config.getoption("--evbench-controller")


@pytest.fixture
def run_scenario(tmp_path: Path, evbench_controller: str | None) -> Callable[..., RunResult]:
    """Run a scenario (bundled name, path or Scenario) and return its judged :class:`RunResult`."""
    from bench.runner import DEFAULT_CONTROLLER
    from bench.runner import run_scenario as run
    from bench.scenario import parse_duration

    counter = iter(range(1_000_000))

    def _run(scenario: object = "workplace", controller: str | None = None, *,
             duration: str | float | None = None, seed: int | None = None, speed: float | None = None) -> RunResult:
        chosen = controller or evbench_controller or DEFAULT_CONTROLLER
        duration_s = None if duration is None else parse_duration(duration)
        trace = tmp_path / f"run-{next(counter)}.db"
        return run(scenario, chosen, trace=trace, duration_s=duration_s, seed=seed, speed=speed)  # type: ignore[arg-type]

    return _run
