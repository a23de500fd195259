"""End to end with real meters: register maps over Modbus, a controller faster than its meter, meter faults,
sub-meters, and `evbench meter` serving a recorded run to whatever reads it.

Every run is a real scenario through the runner (stations over websockets, the host's Modbus client reading the
emulated meter over TCP on 127.0.0.1) in virtual time, except the `evbench meter` tests, which serve on the wall
clock as a physical controller would see it.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pty_line import pty_line

from bench.meter_replay import site_readings
from bench.runner import run_scenario
from bench.scenario import Scenario, find_scenario, load_scenario, parse_scenario
from bench.trace import load_trace
from controllers.api import MeterSample
from controllers.equal_share import EqualShare
from controllers.register_map import decode, load_register_map


def verdicts(result) -> dict[str, str]:
    return {c.id: c.verdict for c in result.checks}


def with_meter(name: str, **meter) -> Scenario:
    data = load_scenario(find_scenario(name)).model_dump()
    data["site"]["meter"].update(meter)
    return Scenario.model_validate(data)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- a controller faster than its meter ---------------------------------------------------------------


def test_controller_faster_than_its_meter_oscillates_and_a_matched_meter_holds_steady(tmp_path: Path) -> None:
    slow = run_scenario("slow-meter", "equal_share", trace=tmp_path / "slow.db", duration_s=2 * 3600)
    assert verdicts(slow)["OSCILLATION"] == "fail"
    worst = max(slow.findings("OSCILLATION"), key=lambda f: f.measured)
    assert worst.measured > 3 * worst.allowed  # hundreds of changes an hour, not a borderline count
    # The same controller settings on a meter that refreshes every second, without delay.
    matched = run_scenario(with_meter("slow-meter", update_interval_s=1.0, delay_s=0.0), "equal_share",
                           trace=tmp_path / "matched.db", duration_s=2 * 3600)
    assert verdicts(matched)["OSCILLATION"] == "pass", matched.findings("OSCILLATION")[:2]
    assert verdicts(matched)["SITE-LIMIT"] == "pass"
    # The trace says why: the slow meter's values were up to 10 s + 2 s old when read.
    ages = [r[6] for r in load_trace(tmp_path / "slow.db").meter_reads if r[6] is not None]
    assert max(ages) == pytest.approx(12.0, abs=1.01)


# -- meter faults ----------------------------------------------------------------------------------------


class TrustsItsMeter(EqualShare):
    """equal_share without its meter watchdog: it believes whatever the meter last said, however old."""

    stale_after_s = float("inf")
    frozen_after_s = float("inf")


def test_meter_faults_are_findings_not_crashes_and_the_trace_shows_what_the_controller_read(tmp_path: Path) -> None:
    careful = run_scenario("meter-faults", "equal_share", trace=tmp_path / "careful.db", duration_s=11_200)
    trace = load_trace(tmp_path / "careful.db")
    assert trace.site[-1][0] >= 11_199  # the run went on through every fault
    assert verdicts(careful)["OFFLINE-SAFE"] == "pass" and verdicts(careful)["SITE-LIMIT"] == "pass"

    def outcomes(start_s: float, end_s: float) -> Counter:
        return Counter(r[5] for r in trace.meter_reads if start_s <= r[0] < end_s)

    assert set(outcomes(2_400, 6_000)) == {"frozen"}  # 07:40–08:40
    frozen_ages = [r[6] for r in trace.meter_reads if 2_400 <= r[0] < 6_000]
    assert max(frozen_ages) >= 3_590  # the controller was served hour-old values, and the trace says so
    assert not outcomes(6_660, 7_500)  # 08:50–09:05 unreachable: no request got through
    assert set(outcomes(8_100, 8_700)) == {"garbage"}
    assert set(outcomes(9_300, 9_900)) == {"word_order"}
    assert set(outcomes(10_500, 11_100)) == {"slow"}
    assert set(outcomes(6_100, 6_600)) == {"ok"}  # restored: all good again

    # A controller that trusts a frozen meter keeps raising its budget on values that no longer move.
    trusting = run_scenario("meter-faults", f"{__name__}:TrustsItsMeter", trace=tmp_path / "trusting.db",
                            duration_s=6_000)
    assert verdicts(trusting)["OFFLINE-SAFE"] == "fail"
    finding = trusting.findings("OFFLINE-SAFE")[0]
    assert "frozen" in finding.message and finding.t_start >= 2_400


# -- sub-meters --------------------------------------------------------------------------------------------

SUB_METERED = """\
name = "sub-metered"
stations = [
  {{ id = "CP01", max_current_a = 32, meter_unit = 11 }},
  {{ id = "CP02", max_current_a = 32, meter_unit = 12, meter_model = "b23" }},
]
vehicles = [
  {{ id = "EV01", station = "CP01", arrival = "08:01", departure = "09:00", battery_kwh = 60, initial_soc = 0.2, target_soc = 0.8, max_current_a = 16 }},
  {{ id = "EV02", station = "CP02", arrival = "08:02", departure = "09:00", battery_kwh = 60, initial_soc = 0.2, target_soc = 0.8, max_current_a = 32 }},
]
[clock]
start = 2026-03-02T08:00:00Z
duration = "20m"
[site]
limit_a = 63
[site.breaker]
rating_a = 80
[site.meter]
model = "{model}"
"""
SEEN: list[MeterSample] = []


class RecordsSubMeters(EqualShare):
    def on_meter_sample(self, sample: MeterSample, now: float) -> None:
        if sample.source == "modbus":
            SEEN.append(sample)
        super().on_meter_sample(sample, now)


@pytest.mark.parametrize("model", ["em24", "sdm630"])
def test_sub_meters_are_served_on_their_units_and_reach_the_controller(tmp_path: Path, model: str) -> None:
    SEEN.clear()
    scenario = parse_scenario(tomllib.loads(SUB_METERED.format(model=model)))
    result = run_scenario(scenario, f"{__name__}:RecordsSubMeters", trace=tmp_path / "t.db")
    assert verdicts(result)["SITE-LIMIT"] == "pass"
    trace = load_trace(tmp_path / "t.db")
    by_unit = Counter((r[1], r[2], r[5]) for r in trace.meter_reads)
    b23_fc = load_register_map("b23").function_code
    assert by_unit[(11, load_register_map(model).function_code, "ok")] > 0
    assert by_unit[(12, b23_fc, "ok")] > 0
    late = [s for s in SEEN if s.timestamp >= scenario.clock.start.timestamp() + 600]
    assert {s.station_id for s in late} == {"CP01", "CP02"}
    cp01 = [s for s in late if s.station_id == "CP01"][-1]
    assert cp01.currents_a is not None and 5.0 < max(cp01.currents_a) <= 16.5  # EV01's 16 A on-board charger


# -- evbench meter -------------------------------------------------------------------------------------------


def evbench(*args: str, cwd: Path, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s)


def test_site_readings_rebuild_the_meter_from_a_trace(tmp_path: Path) -> None:
    run_scenario("small-office", "equal_share", trace=tmp_path / "t.db", duration_s=1800)
    trace = load_trace(tmp_path / "t.db")
    readings = list(site_readings(trace))
    assert [t for t, _ in readings] == [s[0] for s in trace.site]
    last_t, last = readings[-1]
    assert last.currents_a == tuple(trace.site[-1][1:4])
    assert last.voltages_v == (230.0,) * 3
    # The rebuilt counter agrees with the power the run recorded: sample-and-hold over 1 s steps.
    expected_kwh = sum(s[5] for s in trace.site[:-1]) / 3.6e6
    assert last.import_kwh == pytest.approx(expected_kwh, rel=1e-9)
    assert all(a[1].import_kwh <= b[1].import_kwh for a, b in zip(readings, readings[1:]))


def test_evbench_meter_replays_a_recorded_run_over_modbus_tcp(tmp_path: Path) -> None:
    run_scenario("small-office", "equal_share", trace=tmp_path / "t.db", duration_s=3600)
    trace = load_trace(tmp_path / "t.db")
    recorded = {round(s[1], 2) for s in trace.site}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.cli", "meter", "--trace", str(tmp_path / "t.db"),
                               "--model", "em24", "--port", str(port), "--speed", "300"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rmap = load_register_map("em24")

    async def read_a_few() -> list[float]:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2)
        for _ in range(100):
            if await client.connect():
                break
            await asyncio.sleep(0.1)
        seen = []
        try:
            for _ in range(5):
                words: dict[int, int] = {}
                for start, count in rmap.spans():
                    answer = await client.read_input_registers(start, count=count, device_id=1)
                    assert not answer.isError(), answer
                    words.update(zip(range(start, start + count), answer.registers))
                values = decode(rmap, words)
                assert values["voltage_l1"] == pytest.approx(230.0)
                seen.append(values["current_l1"])
                await asyncio.sleep(0.5)
        finally:
            client.close()
        return seen

    try:
        seen = asyncio.run(read_a_few())
        # Every current read is one the run recorded (EM24 resolution: 1 mA).
        assert all(min(abs(value - r) for r in recorded) < 0.01 for value in seen), seen
        out, err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode == 0, err
    assert f"served {len(trace.site)} samples" in out


def test_evbench_meter_replays_a_recorded_run_over_modbus_rtu(tmp_path: Path) -> None:
    """`evbench meter --serial`: the bench serves RTU on one pseudo-terminal, the test reads on another, and
    the bytes between them are carried here, as an RS-485 cable would (a pty ignores the baud rate)."""
    run_scenario("small-office", "equal_share", trace=tmp_path / "t.db", duration_s=1800)
    recorded = {round(s[2], 2) for s in load_trace(tmp_path / "t.db").site}
    rmap = load_register_map("b23")

    async def main() -> tuple[list[float], int, str]:
        async with pty_line() as (meter_end, controller_end):
            return await read_from_the_bench(meter_end, controller_end)

    async def read_from_the_bench(meter_end: str, controller_end: str) -> tuple[list[float], int, str]:
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.cli", "meter", "--trace", str(tmp_path / "t.db"), "--model", "b23",
            "--serial", meter_end, "--baud", "9600", "--unit", "7", "--speed", "120",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        client = AsyncModbusSerialClient(controller_end, baudrate=9600, timeout=1, retries=2)
        seen: list[float] = []
        try:
            await client.connect()
            for _ in range(40):
                words: dict[int, int] = {}
                try:
                    for start, count in rmap.spans():
                        answer = await client.read_holding_registers(start, count=count, device_id=7)
                        assert not answer.isError(), answer
                        words.update(zip(range(start, start + count), answer.registers))
                except (ModbusException, AssertionError):  # still starting: it answers once it listens
                    await asyncio.sleep(0.2)
                    continue
                seen.append(decode(rmap, words)["current_l2"])
                if len(seen) == 3:
                    break
            out, err = await asyncio.wait_for(server.communicate(), 60)
            return seen, server.returncode, out.decode() + err.decode()
        finally:
            client.close()
            if server.returncode is None:
                server.kill()

    seen, code, output = asyncio.run(main())
    assert code == 0, output
    assert len(seen) == 3, output
    # ABB B23 shows current in 0.01 A: every value read is one the run recorded.
    assert all(min(abs(value - r) for r in recorded) <= 0.011 for value in seen), seen


def test_evbench_meter_runs_a_scenario_behind_the_chosen_meter(tmp_path: Path) -> None:
    done = evbench("meter", "small-office", "--model", "b23", "--port", str(free_port()), "--speed", "200",
                   "--duration", "5m", cwd=tmp_path, timeout_s=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "site meter: b23 on Modbus TCP 127.0.0.1:" in done.stderr  # where to wire a controller
    assert "SITE-LIMIT" in done.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--serial", "/dev/ttyUSB9"], "--serial: an in-process controller cannot share the bench's serial port"),
    (["--model", "sdm999"], "--model: "),
    (["--trace", "missing.db"], "missing.db: "),
])
def test_evbench_meter_bad_input_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    done = evbench("meter", "small-office", *args, "--duration", "1m", cwd=tmp_path, timeout_s=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
