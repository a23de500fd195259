"""A judged run as a page a customer can read: the verdict, every check with its findings, and plots.

``write_html(result, trace, directory)`` writes ``index.html`` and three PNGs next to it (matplotlib,
Agg backend, no display needed): the site current per phase against the limit over time with every
SITE-LIMIT and BREAKER finding shaded, each station's current stacked, and every vehicle's SoC. The
page is self-contained apart from those images and works from the file system. Nothing here judges.
"""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI machines or lab PCs
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from bench.report import RunResult  # noqa: E402
from bench.trace import Trace  # noqa: E402

PLOTS = ("site_current.png", "station_currents.png", "soc.png")
_PHASE_COLOURS = ("#c0392b", "#2c3e50", "#7f8c8d")  # L1 brown-red, L2 black-blue, L3 grey (IEC 60446 browns)


def _hours(ts: list[float]) -> list[float]:
    return [t / 3600.0 for t in ts]


def _plot_site(trace: Trace, result: RunResult, path: Path) -> None:
    site = trace.site
    fig, ax = plt.subplots(figsize=(11, 4))
    ts = _hours([s[0] for s in site])
    for column, (phase, colour) in enumerate(zip(("L1", "L2", "L3"), _PHASE_COLOURS), start=1):
        ax.plot(ts, [s[column] for s in site], label=phase, color=colour, linewidth=0.8)
    ax.plot(ts, [s[4] for s in site], label="limit", color="#e67e22", linewidth=1.6, linestyle="--")
    for finding in result.findings("SITE-LIMIT") + result.findings("BREAKER"):
        ax.axvspan(finding.t_start / 3600.0, max(finding.t_end, finding.t_start + 1) / 3600.0, color="#e74c3c",
                   alpha=0.2, linewidth=0)
    ax.set_xlabel("hours since start")
    ax.set_ylabel("A per phase")
    ax.set_title("Site current at the grid connection (shaded: SITE-LIMIT / BREAKER findings)")
    ax.legend(loc="upper right", ncols=4)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_stations(trace: Trace, path: Path) -> None:
    # One series per connector on a common time axis: the highest phase of each, stacked.
    grid = sorted({s[0] for samples in trace.stations.values() for s in samples})
    series: dict[str, list[float]] = {}
    for (station, connector), samples in sorted(trace.stations.items()):
        values = dict((s[0], max(s[3], s[4], s[5])) for s in samples)
        series[f"{station}/{connector}"] = [values.get(t, 0.0) for t in grid]
    fig, ax = plt.subplots(figsize=(11, 4))
    if series:
        ax.stackplot(_hours(grid), list(series.values()), labels=list(series), linewidth=0)
        ax.legend(loc="upper left", ncols=min(len(series), 6), fontsize="small")
    ax.set_xlabel("hours since start")
    ax.set_ylabel("A (highest phase)")
    ax.set_title("Current per connector, stacked")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_soc(trace: Trace, path: Path) -> None:
    by_ev: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for samples in trace.stations.values():
        for s in samples:
            if s[9] is not None and s[8] is not None:
                by_ev[s[9]].append((s[0], s[8]))
    fig, ax = plt.subplots(figsize=(11, 4))
    for ev, points in sorted(by_ev.items()):
        points.sort()
        ax.plot(_hours([p[0] for p in points]), [100 * p[1] for p in points], label=ev, linewidth=1)
    if by_ev:
        ax.legend(loc="lower right", ncols=min(len(by_ev), 6), fontsize="small")
    ax.set_xlabel("hours since start")
    ax.set_ylabel("SoC %")
    ax.set_ylim(0, 100)
    ax.set_title("State of charge of every vehicle")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_html(result: RunResult, trace: Trace, directory: str | Path) -> Path:
    """Write ``index.html`` and its plots into ``directory`` (created); return the page's path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _plot_site(trace, result, out / PLOTS[0])
    _plot_stations(trace, out / PLOTS[1])
    _plot_soc(trace, out / PLOTS[2])
    e = html.escape
    rows = []
    for check in result.checks:
        colour = "#1e8449" if check.verdict == "pass" else "#c0392b"
        findings = "".join(f"<li>{e(f.message)}</li>" for f in check.findings[:20])
        more = f"<li>… {len(check.findings) - 20} more in the JSON</li>" if len(check.findings) > 20 else ""
        rows.append(f"<tr><td><b>{e(check.id)}</b></td><td>{e(check.layer)}</td>"
                    f"<td style='color:{colour}'><b>{check.verdict.upper()}</b></td><td>{len(check.findings)}</td>"
                    f"<td>{e(check.statement)}<br><small>source: {e(check.source)}</small>"
                    f"{'<ul>' + findings + more + '</ul>' if findings else ''}</td></tr>")
    metric_rows = "".join(f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in result.metrics.items())
    verdict = result.verdict.upper()
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>evbench: {e(result.scenario)} — {e(result.controller)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:.4em;vertical-align:top;text-align:left}}
img{{max-width:100%;margin:1em 0}}</style></head><body>
<h1>{e(result.scenario)} with {e(result.controller)}: <span style="color:{'#1e8449' if verdict == 'PASS' else '#c0392b'}">{verdict}</span></h1>
<p>Judged from the run's recorded trace <code>{e(str(result.trace_path))}</code>: what the site drew (measured checks) and what
the controller sent (message checks), by the catalogue of SMART_CHARGING.md §3.</p>
<h2>Checks</h2><table><tr><th>check</th><th>layer</th><th>verdict</th><th>findings</th><th>what must hold</th></tr>
{''.join(rows)}</table>
<h2>Plots</h2>
<img src="{PLOTS[0]}" alt="site current per phase against the limit">
<img src="{PLOTS[1]}" alt="current per connector, stacked">
<img src="{PLOTS[2]}" alt="state of charge of every vehicle">
<h2>Metrics</h2><table>{metric_rows}</table>
</body></html>
"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
