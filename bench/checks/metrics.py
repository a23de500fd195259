"""The run's numbers (energy, peaks, 15-minute demand, trips, EVs short) from the same trace the checks read."""

from __future__ import annotations

import math
from collections import deque
from itertools import groupby
from operator import itemgetter

from bench.checks.core import _is_number
from bench.trace import Trace

# -- metrics --------------------------------------------------------------------------------

#: Demand charges bill the highest average over fixed 15-minute intervals (SMART_CHARGING §2).
BILLING_INTERVAL_S = 900

#: An EV is "short" when it got less than this share of what physics allowed it.
SHORT_SHARE = 0.99


def metrics(trace: Trace) -> dict:
    """The run's numbers, floats rounded to 3 decimals.

    - ``energy_delivered_kwh``: the vehicles table, plus — for EVs without a row there (a run that
      crashed before they left) — the last ``energy_kwh`` of their station samples.
    - ``energy_requested_kwh``, ``energy_deliverable_kwh``: sums over the vehicles table.
    - ``peak_site_current_a`` (any phase) and ``site_limit_at_peak_a`` (the limit at that sample).
    - ``peak_15min_kw``: site power averaged over 15-minute intervals aligned to the wall-clock
      hour (via ``meta["start_epoch"]``); a partial interval averages the samples it has.
    - ``breaker_trips``, ``vehicles_short`` (< 99 % of deliverable), ``messages``: counts.
    """
    vehicles = trace.vehicles
    delivered = sum((v["delivered_kwh"] or 0.0 for v in vehicles), 0.0)
    with_row = {v["ev"] for v in vehicles}
    last_energy: dict[tuple, float] = {}
    for key, samples in trace.stations.items():
        # EV ids change rarely along a connector: walk runs of one EV (in C), keep each run's last.
        for ev, run in groupby(samples, itemgetter(9)):
            if ev is not None and ev not in with_row:
                energy_kwh = deque(run, maxlen=1)[0][7]
                if energy_kwh is not None:
                    last_energy[key, ev] = energy_kwh
    delivered += sum(last_energy.values())

    peak_a, limit_at_peak_a = 0.0, None
    interval_sum_w: dict[int, float] = {}
    interval_n: dict[int, int] = {}
    start_epoch = trace.meta.get("start_epoch")
    start_epoch = start_epoch if _is_number(start_epoch) else 0.0
    for t, i1, i2, i3, limit_a, power_w, _, _ in trace.site:
        top = max(i1, i2, i3)
        if top > peak_a:
            peak_a, limit_at_peak_a = top, limit_a
        if power_w is not None:
            interval = math.floor((start_epoch + t) / BILLING_INTERVAL_S)
            interval_sum_w[interval] = interval_sum_w.get(interval, 0.0) + power_w
            interval_n[interval] = interval_n.get(interval, 0) + 1
    peak_15min_w = max((interval_sum_w[k] / interval_n[k] for k in interval_sum_w), default=0.0)

    return {
        "energy_delivered_kwh": round(delivered, 3),
        "energy_requested_kwh": round(sum((v["requested_kwh"] or 0.0 for v in vehicles), 0.0), 3),
        "energy_deliverable_kwh": round(sum((v["deliverable_kwh"] or 0.0 for v in vehicles), 0.0), 3),
        "peak_site_current_a": round(peak_a, 3),
        "site_limit_at_peak_a": None if limit_at_peak_a is None else round(limit_at_peak_a, 3),
        "peak_15min_kw": round(peak_15min_w / 1000.0, 3),
        "breaker_trips": sum(1 for e in trace.events if e["kind"] == "breaker_trip"),
        "vehicles_short": sum(1 for v in vehicles
                              if (v["deliverable_kwh"] or 0.0) > 0
                              and (v["delivered_kwh"] or 0.0) < SHORT_SHARE * v["deliverable_kwh"]),
        "messages": len(trace.messages),
    }
