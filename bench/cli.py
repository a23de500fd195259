"""The ``evbench`` command line: run a scenario against a controller, re-judge a recorded run.

Exit codes (what CI scripts branch on): 0 every check passed, 1 a check failed, 2 bad input
(unreadable scenario, unknown controller, bad flag) with one line on stderr naming the file or
flag and what was expected.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from bench.report import render_table, write_json

app = typer.Typer(add_completion=False, no_args_is_help=False,
                  help="evbench: a test bench for EV charging controllers — virtual OCPP stations, EVs and "
                       "a Modbus site meter, judged by what the site drew.")

EXIT_PASS, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


def _bad_input(message: str) -> typer.Exit:
    typer.echo(f"evbench: {message}", err=True)
    return typer.Exit(EXIT_BAD_INPUT)


@app.command()
def run(
    scenario: str = typer.Argument("workplace", help="bundled scenario name or path to a scenario TOML file"),
    controller: str = typer.Option("equal_share", "--controller", "-c",
                                   help="controller name (see `evbench controllers`), module:Class, or ws://URL "
                                        "of an external CSMS (stations connect to URL/<station id>)"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the result as JSON here"),
    trace: Optional[Path] = typer.Option(None, "--trace", help="SQLite trace file (default runs/<scenario>-…db)"),
    speed: Optional[float] = typer.Option(None, "--speed", help="run N× faster than real time (default: as fast "
                                                                  "as possible for in-process controllers)"),
    realtime: bool = typer.Option(False, "--realtime", help="run on the wall clock (hardware in the loop)"),
    duration: Optional[str] = typer.Option(None, "--duration", help="run only this long, e.g. 2h, 90m"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (default: the scenario's)"),
) -> None:
    """Run a scenario with a controller and print the verdict."""
    from bench.runner import ControllerError, run_scenario
    from bench.scenario import ScenarioError, parse_duration

    if speed is not None and realtime:
        raise _bad_input("--speed and --realtime: choose one")
    if speed is not None and speed <= 0:
        raise _bad_input(f"--speed: expected a positive factor (got {speed:g})")
    duration_s = None
    if duration is not None:
        try:
            duration_s = parse_duration(duration)
        except ValueError as error:
            raise _bad_input(f"--duration: {error}") from None
    try:
        result = run_scenario(scenario, controller, trace=trace, speed=speed, realtime=realtime,
                              duration_s=duration_s, seed=seed, announce=lambda line: typer.echo(line, err=True))
    except (ScenarioError, ControllerError) as error:
        raise _bad_input(str(error)) from None
    except KeyboardInterrupt:
        typer.echo("evbench: interrupted; the trace so far is kept", err=True)
        raise typer.Exit(130) from None
    typer.echo(render_table(result))
    if json_path is not None:
        write_json(result, json_path)
    raise typer.Exit(EXIT_PASS if result.verdict == "pass" else EXIT_FAIL)


@app.command()
def report(
    trace: Path = typer.Argument(..., help="a run's SQLite trace"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the result as JSON here"),
) -> None:
    """Re-judge a recorded run from its trace (checks are pure functions of the trace)."""
    from bench.report import judge
    from bench.trace import TraceError

    try:
        result = judge(trace)
    except TraceError as error:
        raise _bad_input(f"{trace}: {error}") from None
    typer.echo(render_table(result))
    if json_path is not None:
        write_json(result, json_path)
    raise typer.Exit(EXIT_PASS if result.verdict == "pass" else EXIT_FAIL)


@app.command()
def scenarios() -> None:
    """List the bundled scenarios."""
    from bench.scenario import bundled_scenarios, find_scenario, load_scenario

    for name in bundled_scenarios():
        sc = load_scenario(find_scenario(name))
        summary = sc.description.strip().splitlines()[0] if sc.description.strip() else ""
        typer.echo(f"{name:16} {len(sc.stations):3} stations {len(sc.vehicles):3} vehicles  {summary}")


@app.command()
def controllers() -> None:
    """List the installed controllers (entry point group evbench.controllers)."""
    from bench.runner import available_controllers

    for name, target in sorted(available_controllers().items()):
        typer.echo(f"{name:16} {target}")


def main() -> None:
    # Bare `evbench` runs the main job on its default, as the README's quickstart promises.
    if len(sys.argv) == 1:
        sys.argv.append("run")
    app()


if __name__ == "__main__":
    main()
