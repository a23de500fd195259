"""The run's numbers (energy, peaks, 15-minute demand, trips, EVs short, fairness, and — for a site with a
tariff, PV or a battery — cost, self-consumption, battery throughput) from the same trace the checks read."""

from __future__ import annotations

import math
from bisect import bisect_right
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
    - ``fairness_jain``: Jain's index (Σx)² / (n·Σx²) over the EVs' delivered / requested ratios (each
      capped at 1; EVs that requested nothing left out): 1 when every EV got the same share, 1/n when
      one got everything; None without EVs.

    With a tariff (``meta["tariff"]``), :func:`cost_metrics`; with PV or a battery (``trace.plant``),
    :func:`plant_metrics` — both merged in; a run without them has exactly the keys above.
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
        "fairness_jain": jain_index([min((v["delivered_kwh"] or 0.0) / v["requested_kwh"], 1.0)
                                     for v in vehicles if (v["requested_kwh"] or 0.0) > 0]),
    } | cost_metrics(trace) | plant_metrics(trace)


def jain_index(shares: list[float]) -> float | None:
    """Jain's fairness index of ``shares`` (R. Jain, D. Chiu, W. Hawe, DEC-TR-301, 1984), rounded; None if empty."""
    if not shares:
        return None
    square_sum = sum(x * x for x in shares)
    if square_sum == 0:
        return 1.0  # everyone got nothing: equal, if not useful
    return round(sum(shares) ** 2 / (len(shares) * square_sum), 3)


def _step_s(trace: Trace) -> float:
    step = trace.meta.get("step_s")
    if _is_number(step) and step > 0:
        return float(step)
    site = trace.site
    return site[1][0] - site[0][0] if len(site) > 1 else 1.0


def cost_metrics(trace: Trace) -> dict:
    """What the site's energy cost under ``meta["tariff"]``; {} without one. Floats rounded to 3 decimals.

    Each site sample lasts ``meta["step_s"]``; its import is priced at the import price in force at its
    ``t`` (``import_prices``: ``[t since start, price]`` steps), its export at the export price.
    - ``import_cost``, ``export_revenue``, ``energy_cost`` (import cost − export revenue);
    - ``peak_15min_import_kw``: the highest 15-minute average of import only (a billing meter's
      demand register: export does not lower it), intervals as for ``peak_15min_kw``;
    - ``demand_charge``: that peak × ``demand_charge_per_kw`` (the run as one billing period);
    - ``total_cost`` = energy cost + demand charge; ``currency``.
    """
    tariff = trace.meta.get("tariff")
    if not isinstance(tariff, dict):
        return {}
    steps = [(float(t), float(price)) for t, price in tariff.get("import_prices") or []]
    times = [t for t, _ in steps]
    export_price = float(tariff.get("export_price_per_kwh") or 0.0)
    rate = float(tariff.get("demand_charge_per_kw") or 0.0)
    step_h = _step_s(trace) / 3600.0
    start_epoch = trace.meta.get("start_epoch")
    start_epoch = start_epoch if _is_number(start_epoch) else 0.0
    import_cost = export_kwh = 0.0
    interval_sum_w: dict[int, float] = {}
    interval_n: dict[int, int] = {}
    for t, _, _, _, _, power_w, _, _ in trace.site:
        if power_w is None:
            continue
        interval = math.floor((start_epoch + t) / BILLING_INTERVAL_S)
        interval_n[interval] = interval_n.get(interval, 0) + 1
        if power_w > 0:
            i = bisect_right(times, t) - 1
            price = steps[i][1] if i >= 0 else (steps[0][1] if steps else 0.0)
            import_cost += power_w / 1000.0 * step_h * price
            interval_sum_w[interval] = interval_sum_w.get(interval, 0.0) + power_w
        else:
            export_kwh -= power_w / 1000.0 * step_h
    peak_kw = max((interval_sum_w.get(k, 0.0) / n for k, n in interval_n.items()), default=0.0) / 1000.0
    export_revenue = export_kwh * export_price
    energy_cost = import_cost - export_revenue
    return {
        "currency": tariff.get("currency", ""),
        "import_cost": round(import_cost, 3),
        "export_revenue": round(export_revenue, 3),
        "energy_cost": round(energy_cost, 3),
        "peak_15min_import_kw": round(peak_kw, 3),
        "demand_charge": round(peak_kw * rate, 3),
        "total_cost": round(energy_cost + peak_kw * rate, 3),
    }


def plant_metrics(trace: Trace) -> dict:
    """PV and battery numbers from ``trace.plant``; {} for a site without either. Floats rounded to 3 decimals.

    - ``pv_generated_kwh``; ``pv_self_consumption``: the share of it used on site, 1 − exported / generated
      (export measured at the grid connection, so a battery or V2G discharging into the grid at the same
      time counts against it), clamped to 0..1, None without PV energy;
    - ``battery_charged_kwh``, ``battery_discharged_kwh`` (AC side) and ``battery_throughput_kwh``, their sum.
    """
    if not trace.plant:
        return {}
    step_h = _step_s(trace) / 3600.0
    pv_kwh = charged_kwh = discharged_kwh = 0.0
    for _, pv_w, battery_w, _ in trace.plant:
        pv_kwh += (pv_w or 0.0) / 1000.0 * step_h
        if battery_w and battery_w > 0:
            charged_kwh += battery_w / 1000.0 * step_h
        elif battery_w:
            discharged_kwh -= battery_w / 1000.0 * step_h
    export_kwh = sum(-power_w for *_, power_w, _, _ in trace.site if power_w is not None and power_w < 0)
    export_kwh *= step_h / 1000.0
    share = None if pv_kwh <= 0 else min(max(1.0 - export_kwh / pv_kwh, 0.0), 1.0)
    return {
        "pv_generated_kwh": round(pv_kwh, 3),
        "pv_self_consumption": None if share is None else round(share, 3),
        "battery_charged_kwh": round(charged_kwh, 3),
        "battery_discharged_kwh": round(discharged_kwh, 3),
        "battery_throughput_kwh": round(charged_kwh + discharged_kwh, 3),
    }
