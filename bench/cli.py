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


def _check_speed(speed: float | None, realtime: bool = False) -> None:
    """--speed (and --realtime, where a command has it) as every command takes them."""
    if speed is not None and realtime:
        raise _bad_input("--speed and --realtime: choose one")
    if speed is not None and not speed > 0:
        raise _bad_input(f"--speed: expected a positive factor (got {speed:g})")


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

    _check_speed(speed, realtime)
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
    html_dir: Optional[Path] = typer.Option(None, "--html", help="write index.html and its plots into this "
                                                                  "directory"),
) -> None:
    """Re-judge a recorded run from its trace (checks are pure functions of the trace)."""
    from bench.report import judge
    from bench.trace import TraceError, load_trace

    try:
        result = judge(trace)
    except TraceError as error:
        raise _bad_input(f"{trace}: {error}") from None
    typer.echo(render_table(result))
    if json_path is not None:
        write_json(result, json_path)
    if html_dir is not None:
        from bench.html_report import write_html

        typer.echo(f"report: {write_html(result, load_trace(trace), html_dir)}")
    raise typer.Exit(EXIT_PASS if result.verdict == "pass" else EXIT_FAIL)


@app.command()
def tui(
    scenario: str = typer.Argument("workplace", help="bundled scenario name or path to a scenario TOML file"),
    controller: str = typer.Option("equal_share", "--controller", "-c",
                                   help="controller name, module:Class, or ws://URL of an external CSMS"),
    speed: Optional[float] = typer.Option(None, "--speed", help="N× real time (default 10; +/- change it live)"),
    realtime: bool = typer.Option(False, "--realtime", help="run on the wall clock (hardware in the loop)"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the result as JSON here on quit"),
    trace: Optional[Path] = typer.Option(None, "--trace", help="SQLite trace file (default runs/<scenario>-…db)"),
    duration: Optional[str] = typer.Option(None, "--duration", help="run only this long, e.g. 2h"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (default: the scenario's)"),
) -> None:
    """Run a scenario live in a full-screen terminal view: watch currents against the limits, poke the site."""
    from bench.live import LiveRun
    from bench.runner import ControllerError
    from bench.scenario import ScenarioError, parse_duration
    from bench.tui import EvbenchApp

    _check_speed(speed, realtime)
    try:
        duration_s = parse_duration(duration) if duration is not None else None
    except ValueError as error:
        raise _bad_input(f"--duration: {error}") from None
    try:
        live = LiveRun(scenario, controller, speed=10.0 if speed is None else speed, realtime=realtime, trace=trace,
                       seed=seed, duration_s=duration_s)
    except (ScenarioError, ControllerError) as error:
        raise _bad_input(str(error)) from None
    live.start()
    result = EvbenchApp(live).run()
    if result is None:  # the app died before quitting cleanly: the run still ends and keeps its trace
        result = live.stop()
    typer.echo(render_table(result))
    if json_path is not None:
        write_json(result, json_path)
    raise typer.Exit(EXIT_PASS if result.verdict == "pass" else EXIT_FAIL)


@app.command()
def meter(
    scenario: str = typer.Argument("workplace", help="bundled scenario name or path, run live behind the meter"),
    trace: Optional[Path] = typer.Option(None, "--trace", help="replay this recorded run's site instead of "
                                                                 "running a scenario"),
    model: Optional[str] = typer.Option(None, "--model", help="register map: sdm630, em24, b23, sdm72dm2 or a "
                                                               "map file (default: the scenario's, else sdm630)"),
    host: str = typer.Option("127.0.0.1", "--host", help="Modbus TCP address to listen on"),
    port: int = typer.Option(5020, "--port", help="Modbus TCP port"),
    serial: Optional[str] = typer.Option(None, "--serial", help="serve Modbus RTU on this serial device instead"),
    baud: int = typer.Option(9600, "--baud", help="RTU baud rate"),
    parity: str = typer.Option("N", "--parity", help="RTU parity: N, E or O"),
    stopbits: int = typer.Option(1, "--stopbits", help="RTU stop bits: 1 or 2"),
    unit: Optional[int] = typer.Option(None, "--unit", help="Modbus unit id (default: the scenario's, else 1)"),
    controller: str = typer.Option("equal_share", "--controller", "-c",
                                   help="the controller that runs the scenario's stations: a ws:// URL for a "
                                        "physical one, or an in-process name"),
    speed: Optional[float] = typer.Option(None, "--speed", help="N× real time (default: real time)"),
    duration: Optional[str] = typer.Option(None, "--duration", help="run the scenario only this long"),
) -> None:
    """Serve a live site meter for a physical controller: from a running scenario, or replaying a recorded run."""
    from pydantic import ValidationError

    from bench.runner import ControllerError, resolve_controller, run_scenario
    from bench.scenario import (
        MeterConfig,
        ScenarioError,
        find_scenario,
        load_scenario,
        parse_duration,
    )

    _check_speed(speed)
    wanted = {"host": host, "port": port, "serial": serial, "baudrate": baud, "parity": parity.upper(),
              "stopbits": stopbits}
    if model is not None:
        wanted["model"] = model
    if unit is not None:
        wanted["unit_id"] = unit

    if trace is not None:
        from bench.meter_replay import replay
        from bench.trace import TraceError, load_trace
        from emulators.meter import MeterServer

        try:
            config = MeterConfig.model_validate(wanted)
            recorded = load_trace(trace)
        except ValidationError as error:
            raise _bad_input(_meter_flag_error(error)) from None
        except TraceError as error:
            raise _bad_input(f"{trace}: {error}") from None
        server = MeterServer(config.model, host=config.host, port=config.port, device_id=config.unit_id,
                             serial_port=config.serial, baudrate=config.baudrate, parity=config.parity,
                             stopbits=config.stopbits)
        try:
            served = replay(recorded, server, speed or 1.0, announce=lambda line: typer.echo(line, err=True))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except OSError as error:
            raise _bad_input(str(error)) from None
        typer.echo(f"served {served} samples")
        return

    try:
        sc = load_scenario(find_scenario(scenario))
        spec = resolve_controller(controller)
        config = MeterConfig.model_validate({**sc.site.meter.model_dump(), **wanted})
        duration_s = parse_duration(duration) if duration is not None else None
    except (ScenarioError, ControllerError) as error:
        raise _bad_input(str(error)) from None
    except ValidationError as error:
        raise _bad_input(_meter_flag_error(error)) from None
    except ValueError as error:
        raise _bad_input(f"--duration: {error}") from None
    if config.serial and not spec.external:
        raise _bad_input("--serial: an in-process controller cannot share the bench's serial port; wire a "
                         "physical controller to it and pass --controller ws://…")
    sc = sc.model_copy(update={"site": sc.site.model_copy(update={"meter": config})})
    try:
        result = run_scenario(sc, controller, speed=speed or 1.0, duration_s=duration_s,
                              announce=lambda line: typer.echo(line, err=True))
    except KeyboardInterrupt:
        typer.echo("evbench: interrupted; the trace so far is kept", err=True)
        raise typer.Exit(130) from None
    typer.echo(render_table(result))
    raise typer.Exit(EXIT_PASS if result.verdict == "pass" else EXIT_FAIL)


def _meter_flag_error(error: Exception) -> str:
    """A meter flag pydantic refused, as one line naming the flag."""
    flags = {"model": "--model", "port": "--port", "serial": "--serial", "baudrate": "--baud", "parity": "--parity",
             "stopbits": "--stopbits", "unit_id": "--unit", "host": "--host"}
    first = error.errors()[0]  # type: ignore[attr-defined]
    field = str(first["loc"][0]) if first.get("loc") else ""
    return f"{flags.get(field, field)}: {first['msg']}"


@app.command()
def serve(
    controller: str = typer.Argument(..., help="an in-process controller: a name (see `evbench controllers`) "
                                               "or module:Class"),
    scenario: str = typer.Option("workplace", "--scenario", help="the installer's configuration (site limit, "
                                                                  "chargers) from this scenario; \"certification\": the site of evbench certify"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (loopback unless told)"),
    port: int = typer.Option(9000, "--port", help="port to listen on"),
    meter: Optional[str] = typer.Option(None, "--meter", help="HOST:PORT of the site meter (Modbus TCP)"),
    meter_model: str = typer.Option("sdm630", "--meter-model", help="its register map"),
    meter_unit: int = typer.Option(1, "--meter-unit", help="its Modbus unit id"),
    limit: Optional[float] = typer.Option(None, "--limit", help="site limit [A per phase] (default: the "
                                                                 "scenario's)"),
    speed: float = typer.Option(1.0, "--speed", help="run the controller's clock N× faster (to certify it with "
                                                     "evbench certify --speed N)"),
) -> None:
    """Run an in-process controller as a standalone OCPP CSMS: a reference for vendors, a driver for lab chargers."""
    from bench.certification.catalogue import bundled_catalogue_dir
    from bench.runner import ControllerError, resolve_controller
    from bench.scenario import ScenarioError, find_scenario, load_scenario
    from bench.serve import serve as serve_controller
    from controllers.api import MeterEndpoint
    from controllers.register_map import RegisterMapError, load_register_map

    try:
        spec = resolve_controller(controller)
        # "certification" is the site every `evbench certify` case runs on
        sc = load_scenario(bundled_catalogue_dir() / "site.toml" if scenario == "certification"
                           else find_scenario(scenario))
    except (ScenarioError, ControllerError) as error:
        raise _bad_input(str(error)) from None
    if spec.external:
        raise _bad_input("CONTROLLER: serve runs an in-process controller; a ws:// URL is one already")
    _check_speed(speed)
    if limit is not None and not limit > 0:
        raise _bad_input(f"--limit: expected a positive current in A (got {limit:g})")
    endpoint = None
    if meter is not None:
        meter_host, _, meter_port = meter.rpartition(":")
        if not meter_host or not meter_port.isdigit():
            raise _bad_input(f"--meter: expected HOST:PORT (got {meter!r})")
        try:
            load_register_map(meter_model)
        except (RegisterMapError, OSError) as error:
            raise _bad_input(f"--meter-model: {error}") from None
        endpoint = MeterEndpoint(model=meter_model, host=meter_host, port=int(meter_port), unit_id=meter_unit)
    try:
        serve_controller(spec, sc, host=host, port=port, meter=endpoint, limit_a=limit, speed=speed,
                         announce=lambda line: typer.echo(line, err=True))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    except ControllerError as error:
        raise _bad_input(str(error)) from None
    except OSError as error:
        raise _bad_input(f"--port: cannot listen on {host}:{port} ({error.strerror or error})") from None


@app.command()
def certify(
    controller: str = typer.Argument(..., help="ws://URL of the controller under test (stations connect to "
                                               "URL/<station id>), or an in-process controller name / module:Class"),
    ocpp: Optional[str] = typer.Option(None, "--ocpp", help="run every station on 1.6 or 2.0.1 (default: each "
                                                            "case's own, a mix)"),
    meter_port: Optional[int] = typer.Option(None, "--meter-port", help="port of the bench's site meter, Modbus "
                                                                        "TCP on 127.0.0.1 (default 5020 for a URL)"),
    report: Path = typer.Option(Path("certification"), "--report", help="folder for junit.xml, "
                                                                          "certification.json, index.html, traces"),
    speed: Optional[float] = typer.Option(None, "--speed", help="scale the wall clock (only for a controller whose "
                                                                "own clock runs that fast, e.g. evbench serve --speed)"),
    catalogue: Optional[list[str]] = typer.Option(None, "--catalogue", help="a folder of your own cases instead "
                                                                            "of the bundled catalogue (repeatable)"),
    select: Optional[str] = typer.Option(None, "-k", help="only tests matching this pytest -k expression"),
    markers: Optional[str] = typer.Option(None, "-m", help="only tests matching this pytest -m expression "
                                                           "(measured, message, ocpp16, ocpp201)"),
) -> None:
    """Run the certification catalogue against a controller; write JUnit XML, JSON and an HTML report."""
    from bench.certification.catalogue import load_catalogue
    from bench.certification.report import certify as run_certification
    from bench.runner import ControllerError, resolve_controller
    from bench.scenario import ScenarioError

    if ocpp not in (None, "1.6", "2.0.1"):
        raise _bad_input(f"--ocpp: expected 1.6 or 2.0.1 (got {ocpp!r})")
    _check_speed(speed)
    if meter_port is not None and not 0 <= meter_port <= 65535:
        raise _bad_input(f"--meter-port: expected 0..65535 (got {meter_port})")
    try:
        spec = resolve_controller(controller)
        cases = [case for folder in (catalogue or [None]) for case in load_catalogue(folder)]
    except (ScenarioError, ControllerError) as error:
        raise _bad_input(str(error)) from None
    if spec.external:
        meter_port = 5020 if meter_port is None else meter_port
        site = cases[0].scenario
        typer.echo(f"Configure the controller under test for the certification site: limit {site.site.limit_a:g} A "
                   f"per phase, {site.site.phases} phases at {site.site.voltage_v:g} V; site meter "
                   f"{site.site.meter.model} on Modbus TCP 127.0.0.1:{meter_port} unit {site.site.meter.unit_id}; "
                   f"chargers " + ", ".join(f"{s.id} (OCPP {ocpp or s.ocpp}, {s.connectors}×, {s.max_current_a:g} A)"
                                             for s in site.stations), err=True)
    result = run_certification(controller, report, ocpp=ocpp, speed=speed, meter_port=meter_port,
                               catalogues=catalogue, select=select, markers=markers)
    counts = {o: sum(t.outcome == o for t in result.tests) for o in ("passed", "failed", "error", "skipped")}
    typer.echo(f"certification of {controller}: {result.verdict.upper()} — "
               + ", ".join(f"{n} {o}" for o, n in counts.items() if n)
               + f"; report: {report / 'index.html'}")
    if result.exit_code not in (0, 1):  # pytest itself failed: usage error, nothing collected, interrupted
        raise typer.Exit(EXIT_BAD_INPUT)
    raise typer.Exit(EXIT_PASS if result.verdict == "pass" else EXIT_FAIL)


@app.command()
def compare(
    scenario: str = typer.Argument(..., help="bundled scenario name or path to a scenario TOML file"),
    controllers: str = typer.Option("uncontrolled,equal_share,priority,smart", "--controllers",
                                    help="comma-separated controllers, run one after another on the same scenario"),
    years: float = typer.Option(5, "--years", help="years of the cost of ownership"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the comparison as JSON here"),
    chart: Optional[Path] = typer.Option(None, "--chart", help="PNG of the site current per controller (default "
                                                               "compare-<scenario>.png, next to --json if given)"),
    duration: Optional[str] = typer.Option(None, "--duration", help="run only this long, e.g. 2h, 90m"),
    port_cost: Optional[list[str]] = typer.Option(None, "--port-cost", help="NAME=AMOUNT: hardware and installation "
                                                  "per port for a controller or an architecture (simple, managed, "
                                                  "smart), in the tariff's currency; default the seed's midpoints "
                                                  "(repeatable)"),
    subscription: Optional[list[str]] = typer.Option(None, "--subscription", help="NAME=AMOUNT: software per port "
                                                     "and year, as --port-cost; default 0 (repeatable)"),
    tier: Optional[list[str]] = typer.Option(None, "--tier", help="NAME=simple|managed|smart: the architecture of "
                                             "a controller the bench does not know (repeatable)"),
    days_per_year: float = typer.Option(365, "--days-per-year", help="operating days a year, to scale the run's "
                                                                     "cost per day to a year"),
    trace_dir: Optional[Path] = typer.Option(None, "--trace-dir", help="folder for the runs' traces (default "
                                                                       "runs/compare-<scenario>-<time>/)"),
) -> None:
    """Run several controllers on one scenario and print the seed's comparison table with measured numbers."""
    from bench.compare import (
        CompareError,
        parse_amounts,
        parse_assignments,
        write_chart,
    )
    from bench.compare import compare as run_comparison
    from bench.compare import render_table as render_comparison
    from bench.compare import write_json as write_comparison_json
    from bench.runner import ControllerError
    from bench.scenario import ScenarioError, parse_duration

    flags = {"tier": "--tier", "port_cost": "--port-cost", "subscription": "--subscription",
             "controllers": "--controllers", "years": "--years", "days_per_year": "--days-per-year",
             "duration": "--duration"}
    names = [name.strip() for name in controllers.split(",") if name.strip()]
    try:
        duration_s = parse_duration(duration) if duration is not None else None
    except ValueError as error:
        raise _bad_input(f"--duration: {error}") from None
    assignments: list[dict] = []
    for flag, texts, parse in (("--port-cost", port_cost, parse_amounts),
                               ("--subscription", subscription, parse_amounts),
                               ("--tier", tier, parse_assignments)):
        try:
            assignments.append(parse(texts or []))
        except ValueError as error:
            raise _bad_input(f"{flag}: {error}") from None
    costs, subscriptions, tiers = assignments
    try:
        comparison = run_comparison(scenario, names, years=years, costs=costs, subscriptions=subscriptions,
                                    tiers=tiers, days_per_year=days_per_year, duration_s=duration_s,
                                    trace_dir=trace_dir, on_progress=lambda line: typer.echo(line, err=True))
    except CompareError as error:
        raise _bad_input(f"{flags[error.option]}: {error}") from None
    except ControllerError as error:  # the runner names its own --controller flag
        raise _bad_input(f"--controllers: {str(error).removeprefix('--controller: ')}") from None
    except ScenarioError as error:
        raise _bad_input(str(error)) from None
    except KeyboardInterrupt:
        typer.echo("evbench: interrupted; the traces so far are kept", err=True)
        raise typer.Exit(130) from None
    typer.echo(render_comparison(comparison))
    if chart is None:
        chart = (json_path.parent if json_path is not None else Path(".")) / f"compare-{comparison.scenario}.png"
    typer.echo(f"chart: {write_chart(comparison, chart)}")
    if json_path is not None:
        write_comparison_json(comparison, json_path, chart=chart)
        typer.echo(f"json: {json_path}")
    raise typer.Exit(EXIT_PASS)


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
