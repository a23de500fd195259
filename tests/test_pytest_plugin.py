"""The pytest plugin as a QA engineer uses it: the run_scenario fixture and --evbench-controller."""

from __future__ import annotations

import pytest

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


def test_ocpp_option_markers_and_readable_failures(pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from bench.trace import load_trace

        @pytest.mark.ocpp201
        @pytest.mark.measured
        def test_runs_on_the_chosen_version(run_scenario):
            result = run_scenario("small-office", duration="10m")
            stations = load_trace(result.trace_path).meta["stations"]
            assert {s["ocpp"] for s in stations} == {"2.0.1"}
            result.assert_passed("SITE-LIMIT", "BREAKER")

        @pytest.mark.measured
        def test_a_failure_explains_itself(run_scenario):
            result = run_scenario("panel-200a", controller="uncontrolled", duration="2h", ocpp="1.6")
            result.assert_passed("SITE-LIMIT")

        @pytest.mark.message
        def test_not_selected(run_scenario):
            raise AssertionError("deselected by -m measured")
        """
    )
    outcome = pytester.runpytest_subprocess("--evbench-ocpp=2.0.1", "-m", "measured", "-q", "-p", "no:cacheprovider")
    outcome.assert_outcomes(passed=1, failed=1, deselected=1)
    output = outcome.stdout.str()
    assert "SITE-LIMIT (measured, seed: managed charging; 1.6 §3.13.3): FAIL" in output
    assert "> 180.0 A for" in output  # the finding's own words, not a bare False
    assert "PytestUnknownMarkWarning" not in output


def test_explain_and_assert_passed_on_a_result(run_scenario) -> None:
    result = run_scenario("small-office", controller="equal_share", duration="20m")
    assert result.explain() == "every check passed"
    result.assert_passed()
    result.assert_passed("SITE-LIMIT")
    with pytest.raises(KeyError, match="NO-SUCH-CHECK"):
        result.assert_passed("NO-SUCH-CHECK")
