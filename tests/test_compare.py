"""`evbench compare`: the table and cost-of-ownership maths on hand-made results (numbers worked by hand), one
real short comparison through the CLI (its table, JSON and chart), and bad input naming its flag."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.checks import CheckResult, Finding
from bench.cli import app
from bench.compare import (
    CompareError,
    TraceFacts,
    architecture_of,
    parse_amounts,
    parse_assignments,
    port_costs,
    render_table,
    tabulate,
    write_chart,
)
from bench.report import RunResult

TINY = Path(__file__).parent / "scenarios" / "tiny-tariff.toml"
DAY_S = 86_400.0


def result(controller: str, *, energy_cost: float | None = None, demand_charge: float | None = None,
           delivered: float = 100.0, over: tuple[tuple[float, float], ...] = ()) -> RunResult:
    """A judged run as the runner would return it: SITE-LIMIT findings at ``over``, metrics as given."""
    findings = tuple(Finding("SITE-LIMIT", "over", start, end, phase="L1") for start, end in over)
    checks = [CheckResult("SITE-LIMIT", "", "", "measured", "fail" if findings else "pass", findings),
              CheckResult("BREAKER", "", "", "measured", "pass", ())]
    metrics = {"energy_delivered_kwh": delivered, "energy_requested_kwh": 100.0, "peak_site_current_a": 90.0,
               "site_limit_at_peak_a": 60.0, "peak_15min_kw": 50.0, "breaker_trips": 0, "vehicles_short": 0,
               "fairness_jain": 1.0}
    if energy_cost is not None:
        metrics |= {"currency": "EUR", "energy_cost": energy_cost, "import_cost": energy_cost + 1.0,
                    "demand_charge": demand_charge,
                    "peak_15min_import_kw": 45.0, "total_cost": energy_cost + (demand_charge or 0.0)}
    return RunResult("site", controller, f"{controller}.db", checks, metrics, 0.0)


FACTS = TraceFacts(t_s=[0.0, 1.0], site_top_a=[10.0, 12.0], limit_a=[60.0, 60.0], import_kwh=200.0,
                   ev_discharged_kwh=0.0, mean_import_price=0.3)


def table(*runs: RunResult, run_s: float = DAY_S, ports: int = 10, costs: dict | None = None,
          subscriptions: dict | None = None, tiers: dict | None = None, years: float = 5):
    names = [r.controller for r in runs]
    architectures = {name: architecture_of(name, tiers) for name in names}
    unit_costs = port_costs(names, architectures, hardware=costs, subscription=subscriptions)
    return tabulate([(r, FACTS) for r in runs], architectures=architectures, costs=unit_costs, ports=ports,
                    run_s=run_s, scenario_s=DAY_S, years=years)


def test_cost_of_ownership_against_uncontrolled_worked_by_hand():
    c = table(result("uncontrolled", energy_cost=100.0, demand_charge=500.0),
              result("equal_share", energy_cost=90.0, demand_charge=300.0),
              result("smart", energy_cost=60.0, demand_charge=200.0),
              costs={"smart": 5000.0}, subscriptions={"smart": 100.0})
    plain, managed, smart = (col.ownership for col in c.columns)
    # uncontrolled: 10 ports × 750 (seed midpoint of 500–1,000); 100/day × 365 + 500 × 12 months
    assert (plain.port_cost, plain.hardware) == (750.0, 7_500.0)
    assert plain.energy_per_year == 36_500.0 and plain.demand_charges_per_year == 6_000.0
    assert plain.running_per_year == 42_500.0
    assert plain.total == 7_500.0 + 5 * 42_500.0
    assert plain.savings_per_year is None and plain.payback_years is None
    # equal_share: 10 × 2,250; 90 × 365 + 300 × 12 = 36,450 a year; saves 6,050; pays 15,000 more back in 2.48 y
    assert managed.hardware == 22_500.0 and managed.running_per_year == 36_450.0
    assert managed.savings_per_year == 6_050.0
    assert managed.payback_years == pytest.approx(15_000.0 / 6_050.0)
    # smart, 5,000 a port given, 100 a port-year: 60 × 365 + 200 × 12 + 1,000 = 25,300 a year
    assert (smart.port_cost, smart.port_cost_source, smart.subscription_per_year) == (5_000.0, "given", 1_000.0)
    assert smart.running_per_year == 25_300.0 and smart.total == 50_000.0 + 5 * 25_300.0
    assert smart.payback_years == pytest.approx(42_500.0 / 17_200.0)
    assert [col.architecture for col in c.columns] == ["simple", "managed", "smart"]
    assert c.baseline == "uncontrolled" and c.currency == "EUR"


def test_a_run_of_two_days_counts_its_cost_per_day_and_dearer_to_run_never_pays_back():
    c = table(result("uncontrolled", energy_cost=100.0, demand_charge=0.0),
              result("equal_share", energy_cost=300.0, demand_charge=0.0), run_s=2 * DAY_S)
    plain, managed = (col.ownership for col in c.columns)
    assert plain.energy_per_year == 50.0 * 365 and managed.energy_per_year == 150.0 * 365
    assert managed.savings_per_year == -100.0 * 365 and managed.payback_years is None
    assert "never" in render_table(c)


def test_without_a_tariff_ownership_is_hardware_only_and_the_notes_say_so():
    c = table(result("uncontrolled"), result("equal_share"), costs={"managed": 2_000.0})
    plain, managed = (col.ownership for col in c.columns)
    assert plain.running_per_year is None and managed.savings_per_year is None
    assert managed.total == 20_000.0 and c.currency == "USD"
    assert any("no [tariff]" in note for note in c.notes)


def test_site_limit_time_is_the_union_of_the_phases_excursions():
    c = table(result("uncontrolled", over=((100.0, 160.0), (120.0, 200.0), (500.0, 510.0))))
    m = c.columns[0].measured
    assert (m.site_limit_excursions, m.site_limit_seconds, m.failed_checks) == (3, 110.0, ["SITE-LIMIT"])
    assert c.columns[0].evidence["load control"] == "peak 150 % of limit, 110 s over, 0 trips"
    assert c.columns[0].evidence["energy cost optimisation"] == "not measured (no tariff)"


def test_less_energy_delivered_is_called_out_and_no_baseline_means_no_savings():
    c = table(result("equal_share", energy_cost=10.0, demand_charge=0.0, delivered=100.0),
              result("smart", energy_cost=5.0, demand_charge=0.0, delivered=80.0))
    assert c.baseline is None and all(col.ownership.savings_per_year is None for col in c.columns)
    assert any(note.startswith("smart delivered 20 % less energy") for note in c.notes)
    # the price paid per kWh imported: import cost 6 over 200 kWh, against the tariff's mean over the run
    assert c.columns[1].evidence["energy cost optimisation"] == "0.030 EUR/kWh imported (mean price 0.300)"


def test_the_table_is_one_aligned_column_per_controller():
    c = table(result("uncontrolled", energy_cost=100.0, demand_charge=500.0),
              result("equal_share", energy_cost=90.0, demand_charge=300.0))
    lines = render_table(c).splitlines()
    header = next(line for line in lines if line.lstrip().startswith("uncontrolled"))
    column = header.index("equal_share")
    for label in ("architecture (seed)", "breaker trips", "5-year total", "payback", "renewable integration"):
        row = next(line for line in lines if line.startswith(label))
        assert row[column - 2:column] == "  " and row[column] != " ", row
    payback = next(line for line in lines if line.startswith("payback"))
    assert payback.split()[1:] == ["baseline", "2.5", "years"]


def test_architectures_costs_and_assignments_refuse_what_they_cannot_use():
    assert architecture_of("x:Y", {"x:Y": "managed"}) == "managed"
    with pytest.raises(CompareError, match="which architecture is 'x:Y'") as unknown:
        architecture_of("x:Y")
    assert unknown.value.option == "tier"
    with pytest.raises(CompareError, match="expected simple, managed or smart"):
        architecture_of("x:Y", {"x:Y": "clever"})
    with pytest.raises(CompareError, match="neither a compared controller"):
        port_costs(["smart"], {"smart": "smart"}, hardware={"smrat": 1.0})
    with pytest.raises(CompareError, match="expected an amount >= 0"):
        port_costs(["smart"], {"smart": "smart"}, subscription={"smart": -1.0})
    assert parse_amounts(["smart=5,000", "x:Y=2"]) == {"smart": 5000.0, "x:Y": 2.0}
    assert parse_assignments(["a.b:C=managed"]) == {"a.b:C": "managed"}
    for bad in (["smart"], ["=5"], ["smart=lots"], ["smart=1", "smart=2"]):
        with pytest.raises(ValueError):
            parse_amounts(bad)
    with pytest.raises(CompareError, match="years"):
        table(result("uncontrolled"), years=0)


def test_the_chart_of_hand_made_runs_is_a_png(tmp_path: Path):
    c = table(result("uncontrolled"), result("equal_share"))
    png = write_chart(c, tmp_path / "sub" / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


# -- a real comparison, through the CLI --------------------------------------------------------------------------

def evbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], check=False, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_compare_runs_each_controller_and_writes_table_json_and_chart(tmp_path: Path):
    done = evbench("compare", str(TINY), "--controllers", "uncontrolled,equal_share", "--duration", "30m",
                   "--json", str(tmp_path / "c.json"), "--trace-dir", str(tmp_path / "traces"),
                   "--port-cost", "managed=2000", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "c.json").read_text())
    assert {"scenario", "baseline", "years", "days_per_year", "run_s", "scenario_s", "start", "ports", "currency",
            "controllers", "notes", "chart"} <= document.keys()
    assert (document["scenario"], document["run_s"], document["ports"], document["currency"]) == \
        ("tiny-tariff", 1800.0, 3, "EUR")
    plain, managed = document["controllers"]
    assert {"controller", "architecture", "verdict", "trace", "measured", "ownership", "evidence"} <= plain.keys()
    assert Path(plain["trace"]).parent == tmp_path / "traces" and Path(managed["trace"]).is_file()
    # Three cars at 32 A on a 60 A connection: uncontrolled goes over for most of the run, equal_share holds it.
    assert plain["measured"]["site_limit_excursions"] >= 1 and plain["measured"]["site_limit_seconds"] > 600
    assert managed["measured"]["site_limit_excursions"] == 0 and managed["verdict"] == "pass"
    assert managed["measured"]["peak_15min_kw"] < plain["measured"]["peak_15min_kw"]
    for column in (plain, managed):  # the demand charge is the 15-minute import peak × 10 EUR/kW
        assert column["measured"]["demand_charge"] == pytest.approx(10.0 * column["measured"]["peak_15min_kw"],
                                                                    abs=0.01)
        assert column["measured"]["pv_self_consumption"] is not None
    assert managed["ownership"]["port_cost"] == 2000.0 and managed["ownership"]["hardware"] == 6000.0
    assert managed["ownership"]["savings_per_year"] > 0  # lower peak, lower demand charges
    assert "SITE-LIMIT excursions" in done.stdout and "payback" in done.stdout
    chart = Path(document["chart"])
    assert chart == tmp_path / "compare-tiny-tariff.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000


@pytest.mark.parametrize(("args", "flag"), [
    (["--controllers", "controllers.equal_share:EqualShare"], "--tier"),
    (["--controllers", "uncontrolled,nosuch"], "--controllers"),
    (["--port-cost", "smart"], "--port-cost"),
    (["--years", "0"], "--years"),
    (["--duration", "soon"], "--duration"),
])
def test_bad_input_exits_2_with_one_line_naming_the_flag(tmp_path: Path, args: list[str], flag: str):
    done = CliRunner().invoke(app, ["compare", str(TINY), *args, "--trace-dir", str(tmp_path / "traces")])
    assert done.exit_code == 2, done.output
    assert done.stderr.startswith(f"evbench: {flag}: ") and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "traces").exists()  # refused before anything ran
