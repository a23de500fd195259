"""A recorded run's grid connection, served again as a live meter (``evbench meter --trace RUN.db``).

A physical load manager on a lab bench can be fed a day the bench recorded: this module turns the
trace's site samples back into meter readings (per-phase current, per-phase power at the run's
voltage, the import energy counter integrated from the recorded power, voltage 0 while the breaker
was open) and publishes each at its recorded time on a :class:`emulators.meter.MeterServer` of any
register map, over Modbus TCP or RTU. :func:`site_readings` is the pure part.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from bench import clock as bench_clock
from bench.trace import Trace
from emulators.meter import MeterReading, MeterServer

#: Phase-to-neutral voltage [V] when the trace's meta lacks it.
DEFAULT_VOLTAGE_V = 230.0


def site_readings(trace: Trace) -> Iterator[tuple[float, MeterReading]]:
    """``(t, reading)`` for every site sample, in order. Import energy counts imported power only
    (sample-and-hold, like the checks), so it never decreases; export is what was fed back."""
    voltage_v = trace.meta.get("voltage_v")
    voltage_v = float(voltage_v) if isinstance(voltage_v, (int, float)) and voltage_v > 0 else DEFAULT_VOLTAGE_V
    import_kwh = export_kwh = 0.0
    previous: tuple[float, float] | None = None  # (t, power_w) of the sample before
    for t, i1, i2, i3, _limit_a, power_w, _building_a, closed in trace.site:
        if previous is not None:
            held_t, held_w = previous
            kwh = held_w * (t - held_t) / 3.6e6
            if kwh >= 0:
                import_kwh += kwh
            else:
                export_kwh -= kwh
        volts = (voltage_v,) * 3 if closed else (0.0, 0.0, 0.0)
        currents = (i1 or 0.0, i2 or 0.0, i3 or 0.0)
        yield t, MeterReading(voltages_v=volts, currents_a=currents,
                              power_w=tuple(voltage_v * i if closed else 0.0 for i in currents),  # type: ignore[arg-type]
                              import_kwh=import_kwh, export_kwh=export_kwh)
        previous = (t, power_w if power_w is not None else voltage_v * sum(currents))


def replay(trace: Trace, server: MeterServer, speed: float = 1.0,
           announce: Callable[[str], None] = lambda _: None) -> int:
    """Serve ``trace``'s site on ``server`` at ``speed`` × its recorded pace; return the samples served.

    Blocks until the last sample has been published (then stops the server). Time is the bench
    clock in scaled mode, so ``speed=1`` is real time for a controller on the other end.
    """

    async def main() -> int:
        loop = asyncio.get_running_loop()
        start = loop.time()
        served = 0
        await server.start()
        announce(f"serving {server.register_map.name} unit {server.device_id} "
                 + (f"on {server.serial_port}" if server.serial_port else f"on {server.host}:{server.port}")
                 + f": {len(trace.site)} samples of {trace.meta.get('scenario', 'the run')}")
        try:
            for t, reading in site_readings(trace):
                delay = start + t - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await server.update(reading)
                served += 1
        finally:
            await server.stop()
        return served

    return bench_clock.run(main, speed=speed)
