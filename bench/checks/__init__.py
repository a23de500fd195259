"""The verdict: the check catalogue of SMART_CHARGING.md §3 as pure functions of a Trace.

Each check takes a loaded :class:`~bench.trace.Trace` and returns a :class:`CheckResult`; no
check does I/O, reads the clock or looks at anything but the trace, so re-judging a file gives
the same verdict (DESIGN.md, principle 4). Check parameters come from the trace's
``meta["checks"]`` (the scenario's ``[checks]``, whose defaults — ``bench.scenario.Checks`` —
also fill any gaps). :func:`metrics` computes the run's numbers (energy, peaks) from the
same trace.

The catalogue lives in modules by what it judges: :mod:`~bench.checks.measured` (what the site
and stations drew), :mod:`~bench.checks.messages` (what the controller sent, against the station's
side replayed by :mod:`~bench.checks.ledger`), :mod:`~bench.checks.behaviour` (the controller over
time: flapping, faults), :mod:`~bench.checks.response` (how it answers a change: freed capacity, grid
signals); :mod:`~bench.checks.core` holds what they share.
"""

from bench.checks import behaviour, measured, messages, response  # noqa: F401  (importing registers the checks)
from bench.checks.core import CHECKS, CheckResult, Finding, run_checks
from bench.checks.metrics import metrics

#: SMART_CHARGING.md §3's table order, which reports list the checks in (layers interleave there).
CATALOGUE = ("SITE-LIMIT", "BREAKER", "STATION-LIMIT", "MAX-PROFILE-SUM", "MIN-CURRENT", "PROFILE-VALID",
             "TX-PROFILE-SCOPE", "PROFILE-UPDATE", "REALLOCATE", "NEEDS-ANSWERED", "DR-RESPONSE", "OSCILLATION",
             "OFFLINE-SAFE")
_registered = dict(CHECKS)
CHECKS.clear()
CHECKS.update({check_id: _registered.pop(check_id) for check_id in CATALOGUE if check_id in _registered})
CHECKS.update(_registered)

__all__ = ["CATALOGUE", "CHECKS", "CheckResult", "Finding", "metrics", "run_checks"]
