"""The pytest plugin as a QA engineer uses it: the run_scenario fixture and --evbench-controller."""

from __future__ import annotations

pytest_plugins = ["pytester"]


def test_run_scenario_fixture_returns_a_judged_result(run_scenario) -> None:
    result = run_scenario("small-office", controller="equal_share", duration="45m")
    assert result.passed("SITE-LIMIT")
    assert result.passed("BREAKER")
    assert result.verdict == "pass"
    assert result.metrics["energy_delivered_kwh"] > 0


def test_controller_option_reaches_the_fixture(pytester) -> None:
    pytester.makepyfile(
        """
        def test_uses_option(run_scenario):
            result = run_scenario("panel-200a", duration="2h")
            assert result.controller == "uncontrolled"
            assert not result.passed("SITE-LIMIT")
        """
    )
    outcome = pytester.runpytest_subprocess("--evbench-controller=uncontrolled", "-q")
    outcome.assert_outcomes(passed=1)
