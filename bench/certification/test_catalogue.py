"""The certification catalogue as pytest tests: one test per case and check the case exercises.

Collected when named — ``pytest --pyargs bench.certification.test_catalogue --evbench-controller=ws://…`` or
``evbench certify`` — never by a project's own test run. Test ids read ``CHECK-[certification case-]case``
(``REALLOCATE-errata_2.46-load-balancing``), so ``-k SITE-LIMIT`` or ``-k TC_K_53`` select; markers
``measured``/``message`` (the check's layer) and ``ocpp16``/``ocpp201`` (the case's stations) too. Each case runs
once; its checks' tests share the result (see :mod:`bench.certification.session`).
"""

from __future__ import annotations

import pytest

from bench.certification.catalogue import Case
from bench.certification.session import CertificationSession
from bench.pytest_plugin import catalogue_cases

_VERSION_MARKS = {"1.6": pytest.mark.ocpp16, "2.0.1": pytest.mark.ocpp201}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case_check" not in metafunc.fixturenames:
        return
    ocpp = metafunc.config.getoption("--evbench-ocpp")
    params = []
    for case in catalogue_cases(metafunc.config):
        versions = {ocpp} if ocpp else case.versions()
        marks = [_VERSION_MARKS[v] for v in sorted(versions)]
        for check_id in case.exercises:
            params.append(pytest.param((case, check_id), id=case.test_id(check_id),
                                       marks=[getattr(pytest.mark, case.layer(check_id)), *marks]))
    metafunc.parametrize("case_check", params)


def test_check(case_check: tuple[Case, str], evbench_certification: CertificationSession,
               record_property) -> None:
    case, check_id = case_check
    record_property("case", case.id)
    record_property("check", check_id)
    run = evbench_certification.run(case)
    if run.skipped:
        pytest.skip(run.skipped)
    if run.result is None:
        pytest.fail(f"case {case.id} did not run: {run.error}", pytrace=False)
    try:
        run.result.assert_passed(check_id)
    except AssertionError as failure:  # the findings are the message; the traceback into the bench is noise
        pytest.fail(str(failure), pytrace=False)
    if run.error:
        pytest.fail(f"{check_id} held as far as case {case.id} got, but the run broke off: {run.error}",
                    pytrace=False)
