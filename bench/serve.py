"""An in-process controller served as a standalone OCPP CSMS (``evbench serve``).

Vendors get a reference to compare their controller against, and real chargers on a lab bench can
be driven by one of ours: the controller runs behind :class:`controllers.host.ControllerHost` on the
wall clock, exactly as in a run, accepting stations at ``ws://HOST:PORT/<station id>`` (OCPP 1.6 or
2.0.1) and, when told where, reading a site meter over Modbus. What it knows of the site — the limit,
the chargers — is the installer's configuration, taken from a scenario file (only its site and
stations: nothing is simulated here).

``speed`` scales the controller's clock (its periods, timeouts, meter polls) like the bench's ``--speed``, so
the two can run a certification together faster than real time. The scaled clock starts at the wall-clock now:
durations agree with a bench run at the same speed, absolute times (a departure an EV states) do not — a
controller that plans on those must run at ×1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

from bench import clock as bench_clock
from bench.runner import ControllerSpec, check_controller_config, site_config
from bench.scenario import Scenario
from controllers.api import MeterEndpoint
from controllers.host import ControllerHost


def serve(spec: ControllerSpec, scenario: Scenario, *, host: str = "127.0.0.1", port: int = 9000,
          meter: MeterEndpoint | None = None, limit_a: float | None = None,
          speed: float = 1.0, announce: Callable[[str], None] = lambda _: None,
          stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or forever; Ctrl-C ends it). ``limit_a`` overrides the scenario's site limit."""
    if spec.factory is None:
        raise ValueError("evbench serve runs an in-process controller, not a URL")
    site = site_config(scenario, meter)
    if limit_a is not None:
        site = dataclasses.replace(site, limit_a=limit_a)
    check_controller_config(spec, site)

    async def main() -> None:
        controller = spec.factory(site)  # type: ignore[misc]
        loop = asyncio.get_running_loop()
        clock = bench_clock.SimClock(loop, time.time())
        csms = ControllerHost(controller, host=host, port=port, meter=meter, now=clock.epoch)
        url = await csms.start()
        announce(f"{spec.name} serving OCPP 1.6 and 2.0.1 at {url}/<station id> for {len(site.stations)} "
                 f"configured stations, site limit {site.limit_a:g} A"
                 + (f", reading {meter.model} at {meter.host}:{meter.port} unit {meter.unit_id}" if meter else
                    ", no site meter") + (f", clock ×{speed:g}" if speed != 1 else ""))
        try:
            await (stop.wait() if stop is not None else asyncio.Event().wait())
        finally:
            await csms.stop()

    bench_clock.run(main, speed=speed)
