"""Modbus TCP reads/s the emulated meter sustains, per bundled register map, with 1 and with 10 clients.

One read is what a load manager does per poll: one request per span of the map
(``RegisterMap.spans()``), so maps whose registers lie far apart cost more requests per read.
Server and clients share one asyncio loop and one process on 127.0.0.1, wall clock, for a bounded
time per measurement (``--seconds``, at most 5). Prints ``name=value unit`` lines: reads/s,
requests/s, and CPU time per read (server and clients together; the robust figure on a shared
machine, as in LIBRARIES.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

try:
    from controllers.register_map import meter_models
    from emulators.meter import MeterReading, MeterServer
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from controllers.register_map import meter_models
    from emulators.meter import MeterReading, MeterServer

MAX_SECONDS = 5.0
SITE = MeterReading((230.1, 229.8, 231.0), (41.5, 38.2, 40.9), (9549.0, 8778.4, 9447.9), 81234.5, 12.5, 50.01)


async def _poll(client: AsyncModbusTcpClient, server: MeterServer, deadline: float) -> int:
    """Full-map reads until the deadline; the number done."""
    rmap = server.register_map
    read = client.read_input_registers if rmap.function_code == 4 else client.read_holding_registers
    spans = rmap.spans()
    done = 0
    while time.perf_counter() < deadline:
        for start, count in spans:
            response = await read(start, count=count, device_id=server.device_id)
            if response.isError():
                raise RuntimeError(f"{rmap.model}: read of {count} at {start} failed: {response}")
        done += 1
    return done


async def measure(model: str, clients: int, seconds: float) -> tuple[float, float, float]:
    """(reads/s, requests/s, CPU µs per read) for ``clients`` clients polling one meter."""
    async with MeterServer(model) as server:
        await server.update(SITE)
        pollers = [AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=5, retries=0) for _ in range(clients)]
        try:
            for client in pollers:
                if not await client.connect():
                    raise RuntimeError(f"cannot connect to the meter on port {server.port}")
            started, cpu_started = time.perf_counter(), time.process_time()
            counts = await asyncio.gather(*(_poll(c, server, started + seconds) for c in pollers))
            elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        finally:
            for client in pollers:
                client.close()
        reads = sum(counts)
        return reads / elapsed, reads * len(server.register_map.spans()) / elapsed, cpu_s / max(reads, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help=f"per measurement (at most {MAX_SECONDS:g})")
    parser.add_argument("--models", nargs="*", default=meter_models(), help="register maps to measure")
    args = parser.parse_args()
    seconds = min(max(args.seconds, 0.1), MAX_SECONDS)
    for model in args.models:
        for clients in (1, 10):
            reads_per_s, requests_per_s, cpu_us = asyncio.run(measure(model, clients, seconds))
            name = f"meter_tcp_{model}_{clients}_client{'s' if clients > 1 else ''}"
            print(f"{name}_reads_per_s={reads_per_s:.0f} reads/s")
            print(f"{name}_requests_per_s={requests_per_s:.0f} requests/s")
            print(f"{name}_cpu_per_read={cpu_us:.0f} us")


if __name__ == "__main__":
    main()
