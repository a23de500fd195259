"""The bench as a pytest plugin: a fixture that runs a scenario against a controller and returns the verdict.

A QA engineer's test reads::

    @pytest.mark.measured
    def test_site_limit_held(run_scenario):
        result = run_scenario("workplace", controller="equal_share", duration="4h")
        result.assert_passed("SITE-LIMIT", "BREAKER")      # on failure: every finding, readably

``--evbench-controller`` sets the controller every ``run_scenario`` call uses unless the test
names one; ``--evbench-ocpp=1.6|2.0.1`` runs every station of every scenario on that OCPP version
unless the test passes ``ocpp=``. Traces go to the test's ``tmp_path`` (kept by pytest for
inspection after a failure). Markers group tests by check layer (``measured``, ``message``) and
version (``ocpp16``, ``ocpp201``), so ``pytest -m message`` or ``-m "not ocpp201"`` selects.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pytest

from bench.report import RunResult

if TYPE_CHECKING:  # the runner's imports (websockets, ocpp, pymodbus) load only when a test runs something
    from bench.certification.catalogue import Case
    from bench.certification.session import CertificationSession

#: Where the session's :class:`CertificationSession` is kept for whoever reports on it (``evbench certify``).
CERTIFICATION = pytest.StashKey["CertificationSession"]()


MARKERS = {
    "measured": "judges what the site drew (measured checks)",
    "message": "judges what the controller sent (message checks)",
    "ocpp16": "runs OCPP 1.6 stations",
    "ocpp201": "runs OCPP 2.0.1 stations",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("evbench", "evbench charging-site test bench")
    group.addoption("--evbench-controller", default=None,
                    help="controller for run_scenario: a name, module:Class or ws:// URL of an external CSMS")
    group.addoption("--evbench-ocpp", default=None, choices=("1.6", "2.0.1"),
                    help="run every station of every scenario on this OCPP version")
    group.addoption("--evbench-speed", default=None, type=float,
                    help="scale the wall clock for a controller by URL (only for one whose clock is scaled too)")
    group.addoption("--evbench-meter-port", default=None, type=int,
                    help="certification: the port the bench's site meter (Modbus TCP) listens on")
    group.addoption("--evbench-catalogue", action="append", default=None, metavar="DIR",
                    help="certification: a folder of cases instead of the bundled catalogue (repeatable)")
    group.addoption("--evbench-traces", default=None, metavar="DIR",
                    help="certification: where each case's trace goes (default: a temporary folder)")


def pytest_configure(config: pytest.Config) -> None:
    for name, meaning in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")


@pytest.fixture
def evbench_controller(request: pytest.FixtureRequest) -> str | None:
    """The controller given with --evbench-controller, or None."""
    return request.config.getoption("--evbench-controller")


@pytest.fixture
def evbench_ocpp(request: pytest.FixtureRequest) -> str | None:
    """The OCPP version given with --evbench-ocpp, or None (each scenario's own)."""
    return request.config.getoption("--evbench-ocpp")


def catalogue_cases(config: pytest.Config) -> list[Case]:
    """The certification cases this session runs: the --evbench-catalogue folders', or the bundled ones."""
    from bench.certification.catalogue import load_catalogue
    from bench.scenario import ScenarioError

    folders = config.getoption("--evbench-catalogue") or [None]
    try:
        return [case for folder in folders for case in load_catalogue(folder)]
    except ScenarioError as error:
        raise pytest.UsageError(f"--evbench-catalogue: {error}") from None


@pytest.fixture(scope="session")
def evbench_certification(request: pytest.FixtureRequest,
                          tmp_path_factory: pytest.TempPathFactory) -> CertificationSession:
    """The catalogue's run against --evbench-controller (default: the reference controller), one per session."""
    from bench.certification.session import CertificationSession
    from bench.runner import DEFAULT_CONTROLLER

    config = request.config
    traces = config.getoption("--evbench-traces")
    session = CertificationSession(
        config.getoption("--evbench-controller") or DEFAULT_CONTROLLER,
        Path(traces) if traces else tmp_path_factory.mktemp("certification"),
        ocpp=config.getoption("--evbench-ocpp"),
        speed=config.getoption("--evbench-speed"),
        meter_port=config.getoption("--evbench-meter-port"),
    )
    config.stash[CERTIFICATION] = session
    return session


@pytest.fixture
def run_scenario(tmp_path: Path, evbench_controller: str | None, evbench_ocpp: str | None) -> Callable[..., RunResult]:
    """Run a scenario (bundled name, path or Scenario) and return its judged :class:`RunResult`."""
    from bench.runner import DEFAULT_CONTROLLER
    from bench.runner import run_scenario as run
    from bench.scenario import Scenario, find_scenario, load_scenario, parse_duration

    counter = iter(range(1_000_000))

    def _run(scenario: object = "workplace", controller: str | None = None, *, ocpp: str | None = None,
             duration: str | float | None = None, seed: int | None = None, speed: float | None = None) -> RunResult:
        chosen = controller or evbench_controller or DEFAULT_CONTROLLER
        version = ocpp or evbench_ocpp
        if version is not None:
            loaded = scenario if isinstance(scenario, Scenario) else load_scenario(find_scenario(str(scenario)))
            data = loaded.model_dump()
            for station in data["stations"]:
                station["ocpp"] = version
            scenario = Scenario.model_validate(data)
        duration_s = None if duration is None else parse_duration(duration)
        trace = tmp_path / f"run-{next(counter)}.db"
        return run(scenario, chosen, trace=trace, duration_s=duration_s, seed=seed, speed=speed)  # type: ignore[arg-type]

    return _run
