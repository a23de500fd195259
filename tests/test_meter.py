"""The emulated meters: the behaviour model (pure), and every register map over real Modbus TCP and RTU.

TCP tests run in virtual time on 127.0.0.1. RTU tests run over a pair of pseudo-terminals bridged
by the test (pymodbus opens serial ports by path, and a pty's master end has none) on a wall-clock
loop: the kernel hands pty bytes on asynchronously, so a virtual clock would jump past a reply in
flight; their timeouts are short.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pty_line import pty_line
from virtual_time import virtual

from controllers.register_map import (
    QUANTITIES,
    STORAGE_QUANTITIES,
    Register,
    RegisterMap,
    load_register_map,
    meter_models,
)
from emulators.meter import (
    MeterBehaviour,
    MeterModel,
    MeterReading,
    MeterServer,
    ReadEvent,
    current_resolution_a,
)

pytestmark = pytest.mark.filterwarnings("error::DeprecationWarning")

READING = MeterReading(
    voltages_v=(230.5, 231.2, 229.3),
    currents_a=(16.02, 15.51, 0.25),
    power_w=(3680.4, 3580.5, -57.5),
    import_kwh=12345.67,
    export_kwh=6.75,
    frequency_hz=49.97,
    soc=0.634,  # read only from a storage device's map (battery_inverter)
)
TRUTH = READING.quantities()

ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, GATEWAY_NO_RESPONSE = 0x01, 0x02, 0x0B
_FORMATS = {"float32": "f", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q"}


def value_of(register: Register, words: list[int], word_order: str) -> float:
    """A register's SI value from the words as served, decoded here independently of the codec."""
    most_significant_first = list(reversed(words)) if word_order == "low_first" else list(words)
    raw_bytes = struct.pack(f">{len(words)}H", *most_significant_first)
    (raw,) = struct.unpack(">" + _FORMATS[register.type], raw_bytes)
    return raw / register.scale


def assert_device_value(register: Register, got: float, true: float) -> None:
    """Equal to the truth within the device's own resolution (half a count; float32: its precision)."""
    if register.type == "float32":
        assert got == pytest.approx(true, rel=1e-6), register
    else:
        assert abs(got - true) <= 0.5 / register.scale + 1e-9, (register, got, true)


def reader(client: AsyncModbusTcpClient | AsyncModbusSerialClient, function_code: int) -> Callable:
    return client.read_input_registers if function_code == 4 else client.read_holding_registers


async def read_every_register(client: AsyncModbusTcpClient | AsyncModbusSerialClient, rmap: RegisterMap,
                              unit: int) -> dict[str, float]:
    """Read each register on its own, as a generic Modbus tool would, then each span whole."""
    read = reader(client, rmap.function_code)
    values, words = {}, {}
    for register in rmap.registers:
        rr = await read(register.address, count=register.words, device_id=unit)
        assert not rr.isError(), (rmap.model, register, rr)
        values[register.quantity] = value_of(register, rr.registers, rmap.word_order)
        words.update(zip(range(register.address, register.address + register.words), rr.registers))
    for start, count in rmap.spans():
        rr = await read(start, count=count, device_id=unit)
        assert not rr.isError(), (rmap.model, start, count, rr)
        span = dict(zip(range(start, start + count), rr.registers))
        assert {a: w for a, w in span.items() if a in words} == {a: w for a, w in words.items() if a in span}
    return values


async def eventually(predicate: Callable[[], object], timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def tcp_client(port: int, timeout_s: float = 1.0) -> AsyncModbusTcpClient:
    return AsyncModbusTcpClient("127.0.0.1", port=port, timeout=timeout_s, retries=0, reconnect_delay=0)




# --------------------------------------------------------------------------- #
# MeterReading                                                                #
# --------------------------------------------------------------------------- #


def test_reading_names_every_quantity_in_si_units():
    assert set(TRUTH) == set(QUANTITIES + STORAGE_QUANTITIES)
    assert (TRUTH["voltage_l2"], TRUTH["current_l1"], TRUTH["power_l3"]) == (231.2, 16.02, -57.5)
    assert TRUTH["power_total"] == pytest.approx(3680.4 + 3580.5 - 57.5)
    assert (TRUTH["import_kwh"], TRUTH["export_kwh"], TRUTH["frequency_hz"]) == (12345.67, 6.75, 49.97)


def test_reading_needs_three_phases():
    with pytest.raises(ValueError, match="voltages_v"):
        MeterReading((230.0, 230.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 0.0)


# --------------------------------------------------------------------------- #
# MeterModel (pure)                                                           #
# --------------------------------------------------------------------------- #


def site_at(t: float, kwh: float | None = None) -> MeterReading:
    """A site whose phase-1 current is the time, so a shown reading tells when it was measured."""
    return MeterReading((230.0, 230.0, 230.0), (t, 2.0 * t, 0.0), (230.0 * t, 460.0 * t, 0.0),
                        import_kwh=t / 100.0 if kwh is None else kwh)


def test_refreshes_every_update_interval_and_shows_the_site_of_that_moment():
    model = MeterModel(MeterBehaviour(update_interval_s=10.0))
    shown = {t: model.observe(t, site_at(t)) for t in (float(k) for k in range(36))}
    refreshes = {t: r for t, r in shown.items() if r is not None}
    assert sorted(refreshes) == [0.0, 10.0, 20.0, 30.0]
    assert all(r.currents_a[0] == t for t, r in refreshes.items())


def test_refresh_grid_does_not_drift_when_steps_do_not_divide_the_interval():
    model = MeterModel(MeterBehaviour(update_interval_s=2.0))
    refreshed = [k * 0.75 for k in range(81) if model.observe(k * 0.75, site_at(k * 0.75)) is not None]
    assert refreshed[:5] == [0.0, 2.25, 4.5, 6.0, 8.25]
    assert len(refreshed) == 31  # 0 .. 60 s: one per 2 s grid slot
    # A step that jumps over several refreshes makes one, and the grid continues after it.
    model = MeterModel(MeterBehaviour(update_interval_s=1.0))
    assert model.observe(0.0, site_at(0.0)) is not None
    assert model.observe(5.5, site_at(5.5)) is not None
    assert model.observe(5.9, site_at(5.9)) is None
    assert model.observe(6.0, site_at(6.0)) is not None


def test_delay_shows_the_site_as_it_was_earlier():
    model = MeterModel(MeterBehaviour(update_interval_s=1.0, delay_s=1.2))
    shown = {}
    for k in range(41):
        t = k * 0.5
        reading = model.observe(t, site_at(t))
        if reading is not None:
            shown[t] = reading.currents_a[0]
    assert shown[0.0] == 0.0 and shown[1.0] == 0.0  # nothing that old yet: the first measurement
    assert shown[2.0] == 0.5  # the latest measurement at or before 0.8 s
    assert shown[10.0] == 8.5
    assert shown[20.0] == 18.5


def test_time_must_not_go_backwards():
    model = MeterModel(MeterBehaviour())
    model.observe(5.0, site_at(5.0))
    with pytest.raises(ValueError, match="backwards"):
        model.observe(4.0, site_at(4.0))


@settings(max_examples=60, deadline=None)
@given(interval=st.sampled_from([0.5, 1.0, 2.5, 10.0, 15.0]), step=st.sampled_from([0.25, 0.5, 1.0, 3.0]),
       delay=st.sampled_from([0.0, 0.5, 2.0, 7.0]), steps=st.integers(1, 200))
def test_refreshes_follow_the_grid_and_never_show_the_future(interval, step, delay, steps):
    model = MeterModel(MeterBehaviour(update_interval_s=interval, delay_s=delay))
    refreshes = []
    for k in range(steps):
        t = k * step
        reading = model.observe(t, site_at(t))
        if reading is not None:
            refreshes.append(t)
            shown_at = reading.currents_a[0]
            assert shown_at <= max(t - delay, 0.0) + 1e-9
            assert shown_at > t - delay - step - 1e-9 or shown_at == 0.0  # the latest one old enough
    # One refresh per grid slot that some observation reached.
    slots = {math.floor(k * step / interval + 1e-9) for k in range(steps)}
    assert len(refreshes) == len(slots)


def test_noise_has_the_configured_relative_sigma_and_leaves_energy_alone():
    model = MeterModel(MeterBehaviour(update_interval_s=1.0, noise=0.02), seed=7)
    true = MeterReading((230.0, 230.0, 230.0), (20.0, 10.0, 5.0), (4600.0, 2300.0, 1150.0), 100.0, 1.0, 50.0)
    shown = [model.observe(float(k), true) for k in range(3000)]
    assert all(r is not None for r in shown)
    for field, phase in (("voltages_v", 0), ("currents_a", 1), ("power_w", 2)):
        relative = [getattr(r, field)[phase] / getattr(true, field)[phase] - 1.0 for r in shown]
        assert abs(statistics.fmean(relative)) < 4 * 0.02 / math.sqrt(len(relative))
        assert statistics.stdev(relative) == pytest.approx(0.02, rel=0.1)
    assert {(r.import_kwh, r.export_kwh, r.frequency_hz) for r in shown} == {(100.0, 1.0, 50.0)}


def test_noise_is_deterministic_for_a_seed():
    def run(seed: int) -> list[MeterReading | None]:
        model = MeterModel(MeterBehaviour(update_interval_s=2.0, delay_s=1.0, noise=0.05), seed=seed)
        return [model.observe(k * 0.5, site_at(k * 0.5 + 1.0)) for k in range(100)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_ct_ratio_quantises_primary_currents_to_ratio_times_resolution():
    assert current_resolution_a(load_register_map("sdm630")) == 0.001  # float meter: 1 mA
    assert current_resolution_a(load_register_map("em24")) == 0.001  # mA register
    assert current_resolution_a(load_register_map("b23")) == 0.01  # 0.01 A register
    true = MeterReading((230.0,) * 3, (16.019, 7.31, 0.011), (3684.0, 1679.0, 2.5), 1.0)
    model = MeterModel(MeterBehaviour(ct_ratio=40.0), current_resolution_a=0.001)  # 200/5 A: 0.04 A steps
    shown = model.observe(0.0, true)
    assert shown is not None
    assert shown.currents_a == pytest.approx((16.0, 7.32, 0.0))
    assert shown.voltages_v == true.voltages_v and shown.power_w == true.power_w
    coarse = MeterModel(MeterBehaviour(ct_ratio=40.0), current_resolution_a=0.01).observe(0.0, true)
    assert coarse is not None and coarse.currents_a == pytest.approx((16.0, 7.2, 0.0))  # 0.4 A steps
    # Noise happens before the converter: noisy currents still land on the CT grid.
    noisy = MeterModel(MeterBehaviour(noise=0.01, ct_ratio=40.0), seed=1)
    for k in range(50):
        reading = noisy.observe(float(k), true)
        assert reading is not None
        for amps in reading.currents_a:
            assert amps / 0.04 == pytest.approx(round(amps / 0.04), abs=1e-6)


@pytest.mark.parametrize(("field", "value"), [("update_interval_s", 0.0), ("delay_s", -1.0), ("noise", -0.1),
                                              ("ct_ratio", 0.0), ("update_interval_s", math.nan)])
def test_behaviour_rejects_impossible_values(field, value):
    with pytest.raises(ValueError, match=field):
        MeterBehaviour(**{field: value})


# --------------------------------------------------------------------------- #
# Every register of every map, over TCP and RTU (the acceptance)      #
# --------------------------------------------------------------------------- #


def test_every_register_of_every_map_over_tcp():
    async def main():
        for model in meter_models():
            server = MeterServer(model, device_id=7)
            await server.update(READING)
            await server.start()
            client = tcp_client(server.port)
            try:
                assert await client.connect()
                values = await read_every_register(client, server.register_map, unit=7)
            finally:
                client.close()
                await server.stop()
            assert set(values) == {r.quantity for r in server.register_map.registers}
            for register in server.register_map.registers:
                assert_device_value(register, values[register.quantity], TRUTH[register.quantity])

    virtual(main)


async def test_every_register_of_every_map_over_rtu_on_a_pty_pair():
    for model in meter_models():
        async with pty_line() as (meter_end, controller_end):
            server = MeterServer(model, device_id=7, serial_port=meter_end, baudrate=9600)
            await server.update(READING)
            await server.start()
            client = AsyncModbusSerialClient(controller_end, baudrate=9600, timeout=1, retries=0)
            try:
                assert await client.connect()
                values = await read_every_register(client, server.register_map, unit=7)
            finally:
                client.close()
                await server.stop()
        for register in server.register_map.registers:
            assert_device_value(register, values[register.quantity], TRUTH[register.quantity])


def test_word_order_and_scaling_are_the_devices_own():
    async def main():
        reading = MeterReading((230.0, 230.5, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 0.0), 12345.5)
        wanted = {
            # SDM630: float32, high word first. 230.0 = 0x43660000, 1.0 = 0x3F800000.
            "sdm630": {0x0000: [0x4366, 0x0000], 0x0006: [0x3F80, 0x0000]},
            # EM24: int32 in 0.1 V, low word first: 2305 = 0x00000901.
            "em24": {0x0002: [0x0901, 0x0000], 0x000C: [1000, 0]},
            # B23: uint64 in 0.01 kWh, high word first: 1234550 = 0x12D676; holding registers.
            "b23": {0x5000: [0, 0, 0x0012, 0xD676], 0x5B02: [0, 2305]},
        }
        for model, registers in wanted.items():
            async with MeterServer(model) as server:
                await server.update(reading)
                client = tcp_client(server.port)
                assert await client.connect()
                read = reader(client, server.register_map.function_code)
                for address, words in registers.items():
                    rr = await read(address, count=len(words), device_id=1)
                    assert rr.registers == words, (model, hex(address))
                client.close()

    virtual(main)


# --------------------------------------------------------------------------- #
# What a device refuses                                                       #
# --------------------------------------------------------------------------- #


def test_refusals_are_the_devices_and_every_request_is_reported():
    async def main():
        events: list[ReadEvent] = []
        server = MeterServer("b23", device_id=1, sub_meters={2: "sdm630"}, on_read=events.append)
        await server.update(READING)
        await server.update(READING, unit=2)
        await server.start()
        client = tcp_client(server.port)
        try:
            assert await client.connect()
            # B23: measurements are holding registers (FC 3); FC 4 and writes are not served.
            rr = await client.read_input_registers(0x5B00, count=2, device_id=1)
            assert rr.isError() and rr.exception_code == ILLEGAL_FUNCTION
            rr = await client.write_register(0x5B00, 1, device_id=1)
            assert rr.isError() and rr.exception_code == ILLEGAL_FUNCTION
            # Outside the map's range 0x5000..0x5B2C: refused; a gap inside it reads 0.
            for address, count in ((0x4FFF, 2), (0x5B2C, 2), (0x0000, 2)):
                rr = await client.read_holding_registers(address, count=count, device_id=1)
                assert rr.isError() and rr.exception_code == ILLEGAL_ADDRESS, hex(address)
            rr = await client.read_holding_registers(0x5008, count=4, device_id=1)
            assert rr.registers == [0, 0, 0, 0]
            # The SDM630 sub-meter serves input registers; its gaps read 0 too.
            rr = await client.read_input_registers(0x0012, count=0x0022, device_id=2)
            assert rr.registers == [0] * 0x22
            rr = await client.read_holding_registers(0x0000, count=2, device_id=2)
            assert rr.isError() and rr.exception_code == ILLEGAL_FUNCTION
            # No unit 9 behind this gateway.
            rr = await client.read_holding_registers(0x5B00, count=2, device_id=9)
            assert rr.isError() and rr.exception_code == GATEWAY_NO_RESPONSE
        finally:
            client.close()
            await server.stop()
        assert [(e.unit, e.function_code, e.address, e.count, e.outcome) for e in events] == [
            (1, 4, 0x5B00, 2, "illegal_function"),
            (1, 6, 0x5B00, 1, "illegal_function"),
            (1, 3, 0x4FFF, 2, "illegal_address"),
            (1, 3, 0x5B2C, 2, "illegal_address"),
            (1, 3, 0x0000, 2, "illegal_address"),
            (1, 3, 0x5008, 4, "ok"),
            (2, 4, 0x0012, 0x22, "ok"),
            (2, 3, 0x0000, 2, "illegal_function"),
            (9, 3, 0x5B00, 2, "no_device"),
        ]
        assert all(e.values_at is None for e in events if e.outcome != "ok")

    virtual(main)


def test_values_at_is_the_time_of_the_served_update():
    async def main():
        loop = asyncio.get_running_loop()
        events: list[ReadEvent] = []
        async with MeterServer(on_read=events.append) as server:
            client = tcp_client(server.port)
            assert await client.connect()
            await client.read_input_registers(0, count=2, device_id=1)
            assert events[-1].values_at is None  # nothing published yet: zeros, of no time
            await asyncio.sleep(5)
            published = loop.time()
            await server.update(READING)
            await asyncio.sleep(7)
            await client.read_input_registers(0, count=2, device_id=1)
            assert events[-1].outcome == "ok"
            assert events[-1].values_at == published
            assert loop.time() - events[-1].values_at == pytest.approx(7.0, abs=0.1)
            client.close()

    virtual(main)


# --------------------------------------------------------------------------- #
# Sub-meters                                                                  #
# --------------------------------------------------------------------------- #


def test_sub_meters_are_units_on_the_same_gateway_each_with_its_own_map():
    async def main():
        station = MeterReading((231.0,) * 3, (10.0, 10.0, 10.0), (2310.0,) * 3, 42.5)
        server = MeterServer("sdm630", device_id=1, sub_meters={2: "em24", 3: load_register_map("b23")})
        assert server.units == (1, 2, 3)
        await server.update(READING)
        await server.update(station, unit=2)
        await server.start()
        client = tcp_client(server.port)
        try:
            assert await client.connect()
            site = await read_every_register(client, load_register_map("sdm630"), unit=1)
            sub2 = await read_every_register(client, load_register_map("em24"), unit=2)
            sub3 = await read_every_register(client, load_register_map("b23"), unit=3)
        finally:
            client.close()
            await server.stop()
        assert site["current_l1"] == pytest.approx(16.02)
        assert sub2["current_l1"] == 10.0 and sub2["import_kwh"] == 42.5
        assert sub3["current_l1"] == 0.0  # never updated: zeros
        assert server.reading == READING  # the site meter's

    virtual(main)


def test_unit_ids_are_checked():
    with pytest.raises(ValueError, match="1..247"):
        MeterServer(device_id=0)
    with pytest.raises(ValueError, match="1..247"):
        MeterServer(sub_meters={248: "sdm630"})
    with pytest.raises(ValueError, match="site meter's unit"):
        MeterServer(device_id=2, sub_meters={2: "em24"})
    server = MeterServer(sub_meters={2: "em24"})
    with pytest.raises(ValueError, match="no meter with unit id 5"):
        server.set_fault("frozen", unit=5)
    with pytest.raises(ValueError, match="fault must be one of"):
        server.set_fault("on_fire")


# --------------------------------------------------------------------------- #
# Faults over TCP                                                             #
# --------------------------------------------------------------------------- #


def test_unreachable_stops_listening_and_comes_back_on_the_same_port():
    async def main():
        events: list[ReadEvent] = []
        server = MeterServer(sub_meters={2: "em24"}, on_read=events.append)
        await server.update(READING)
        await server.start()
        port = server.port
        client = tcp_client(port, timeout_s=0.5)
        try:
            assert await client.connect()
            server.set_fault("unreachable")
            assert server.fault == "unreachable"
            await eventually(lambda: not server.running)
            assert not client.connected  # dropped
            refused = tcp_client(port, timeout_s=0.5)
            assert not await refused.connect()
            refused.close()
            later = MeterReading((229.0,) * 3, (3.0, 3.0, 3.0), (690.0,) * 3, 12400.0)
            await server.update(later)  # the meter keeps measuring while nobody can reach it
            server.set_fault(None)
            await eventually(lambda: server.running)
            assert server.port == port
            client = tcp_client(port)
            assert await client.connect()
            rr = await client.read_input_registers(0x0048, count=2, device_id=1)
            assert value_of(server.register_map.register("import_kwh"), rr.registers, "high_first") == 12400.0
        finally:
            client.close()
            await server.stop()
        assert [e.outcome for e in events] == ["ok"]

    virtual(main)


def test_unreachable_sub_meter_is_an_absent_unit_behind_the_gateway():
    async def main():
        events: list[ReadEvent] = []
        async with MeterServer(sub_meters={2: "em24"}, on_read=events.append) as server:
            server.set_fault("unreachable", unit=2)
            client = tcp_client(server.port)
            assert await client.connect()
            rr = await client.read_input_registers(0x0000, count=2, device_id=2)
            assert rr.isError() and rr.exception_code == GATEWAY_NO_RESPONSE
            rr = await client.read_input_registers(0x0000, count=2, device_id=1)
            assert not rr.isError()
            client.close()
        assert [(e.unit, e.outcome) for e in events] == [(2, "no_device"), (1, "ok")]

    virtual(main)


def test_frozen_keeps_the_last_values_until_cleared():
    async def main():
        loop = asyncio.get_running_loop()
        events: list[ReadEvent] = []
        async with MeterServer(on_read=events.append) as server:
            await server.update(READING)
            frozen_at = loop.time()
            server.set_fault("frozen")
            await asyncio.sleep(10)
            await server.update(MeterReading((0.0,) * 3, (99.0, 99.0, 99.0), (0.0,) * 3, 1.0))
            assert server.reading == READING
            client = tcp_client(server.port)
            assert await client.connect()
            rr = await client.read_input_registers(0x0006, count=2, device_id=1)
            assert struct.unpack(">f", struct.pack(">2H", *rr.registers))[0] == pytest.approx(16.02)
            assert (events[-1].outcome, events[-1].values_at) == ("frozen", frozen_at)
            server.set_fault(None)
            await server.update(MeterReading((0.0,) * 3, (99.0, 99.0, 99.0), (0.0,) * 3, 1.0))
            rr = await client.read_input_registers(0x0006, count=2, device_id=1)
            assert struct.unpack(">f", struct.pack(">2H", *rr.registers))[0] == 99.0
            assert events[-1].outcome == "ok" and events[-1].values_at == loop.time()
            client.close()

    virtual(main)


def test_garbage_is_random_reproducible_and_includes_nan():
    async def garbage_reads(seed: int) -> tuple[list[list[int]], list[ReadEvent]]:
        events: list[ReadEvent] = []
        async with MeterServer(seed=seed, on_read=events.append) as server:
            await server.update(READING)
            server.set_fault("garbage")
            client = tcp_client(server.port)
            assert await client.connect()
            reads = [(await client.read_input_registers(0, count=18, device_id=1)).registers for _ in range(5)]
            client.close()
        return reads, events

    async def main():
        reads, events = await garbage_reads(seed=1)
        assert {e.outcome for e in events} == {"garbage"} and {e.values_at for e in events} == {None}
        assert (await garbage_reads(seed=1))[0] == reads
        assert (await garbage_reads(seed=2))[0] != reads
        currents = [struct.unpack(">f", struct.pack(">2H", *words[6:8]))[0] for words in reads]
        assert not any(c == pytest.approx(16.02) for c in currents)
        floats = [struct.unpack(">f", struct.pack(">2H", *words[i:i + 2]))[0]
                  for words in reads for i in range(0, 18, 2)]
        assert any(math.isnan(f) for f in floats)

    virtual(main)


def test_word_order_fault_swaps_the_words_of_each_value():
    async def main():
        events: list[ReadEvent] = []
        async with MeterServer("em24", on_read=events.append) as server:
            await server.update(READING)
            server.set_fault("word_order")
            register = server.register_map.register("voltage_l1")
            client = tcp_client(server.port)
            assert await client.connect()
            rr = await client.read_input_registers(register.address, count=2, device_id=1)
            assert value_of(register, rr.registers, "high_first") == 230.5  # what the device's order is not
            assert value_of(register, rr.registers, "low_first") != pytest.approx(230.5, abs=1)
            assert events[-1].outcome == "word_order" and events[-1].values_at is not None
            client.close()

    virtual(main)


def test_slow_answers_arrive_after_slow_s():
    async def main():
        loop = asyncio.get_running_loop()
        events: list[ReadEvent] = []
        async with MeterServer(on_read=events.append) as server:
            await server.update(READING)
            server.set_fault("slow", slow_s=3.0)
            impatient = tcp_client(server.port, timeout_s=1.0)
            assert await impatient.connect()
            with pytest.raises(ModbusIOException):
                await impatient.read_input_registers(0x0006, count=2, device_id=1)
            impatient.close()
            patient = tcp_client(server.port, timeout_s=10.0)
            assert await patient.connect()
            asked = loop.time()
            rr = await patient.read_input_registers(0x0006, count=2, device_id=1)
            assert loop.time() - asked == pytest.approx(3.0, abs=0.1)  # virtual seconds
            assert struct.unpack(">f", struct.pack(">2H", *rr.registers))[0] == pytest.approx(16.02)
            server.set_fault(None)
            asked = loop.time()
            await patient.read_input_registers(0x0006, count=2, device_id=1)
            assert loop.time() - asked < 0.1
            patient.close()
        assert [e.outcome for e in events] == ["slow", "slow", "ok"]

    virtual(main)


def test_a_slow_answer_keeps_its_own_unit_and_transaction_id():
    """A request to the site meter while a slow sub-meter's answer is pending on the same connection:
    each answer carries its own request's ids (pymodbus stamps them from the connection's latest request)."""

    def request(tid: int, unit: int) -> bytes:  # MBAP header + read input registers 0x0000, 2 words
        return struct.pack(">HHHBBHH", tid, 0, 6, unit, 4, 0x0000, 2)

    async def main():
        loop = asyncio.get_running_loop()
        async with MeterServer(sub_meters={2: "sdm630"}) as server:
            await server.update(READING)
            server.set_fault("slow", unit=2, slow_s=3.0)
            reader_, writer = await asyncio.open_connection("127.0.0.1", server.port)
            asked = loop.time()
            writer.write(request(1, 2))
            await asyncio.sleep(0.5)
            writer.write(request(2, 1))
            answers = []
            for _ in range(2):
                header = await asyncio.wait_for(reader_.readexactly(7), 10)
                tid, _pid, length, unit = struct.unpack(">HHHB", header)
                await reader_.readexactly(length - 1)
                answers.append((tid, unit, round(loop.time() - asked, 1)))
            writer.close()
            await writer.wait_closed()
        assert answers == [(2, 1, 0.5), (1, 2, 3.0)]

    virtual(main)


# --------------------------------------------------------------------------- #
# Faults and absent units on RTU                                              #
# --------------------------------------------------------------------------- #


async def test_rtu_unreachable_absent_and_slow_units_stay_silent():
    events: list[ReadEvent] = []
    async with pty_line() as (meter_end, controller_end):
        server = MeterServer("sdm630", serial_port=meter_end, sub_meters={2: "em24"}, on_read=events.append)
        await server.update(READING)
        await server.start()
        client = AsyncModbusSerialClient(controller_end, baudrate=9600, timeout=0.5, retries=0)
        try:
            assert await client.connect()
            with pytest.raises(ModbusIOException):  # no unit 9 on this line: nobody answers
                await client.read_input_registers(0, count=2, device_id=9)
            server.set_fault("unreachable")
            with pytest.raises(ModbusIOException):
                await client.read_input_registers(0, count=2, device_id=1)
            rr = await client.read_input_registers(0, count=2, device_id=2)  # the sub-meter still answers
            assert not rr.isError()
            server.set_fault(None)
            server.set_fault("slow", unit=2, slow_s=1.0)
            with pytest.raises(ModbusIOException):
                await client.read_input_registers(0, count=2, device_id=2)
            await asyncio.sleep(0.6)  # let the late answer pass before the next request
            client.close()  # and drop it: a product reopens the line after a timeout
            server.set_fault(None, unit=2)
            client = AsyncModbusSerialClient(controller_end, baudrate=9600, timeout=0.5, retries=0)
            assert await client.connect()
            rr = await client.read_input_registers(0x0006, count=2, device_id=1)
            assert struct.unpack(">f", struct.pack(">2H", *rr.registers))[0] == pytest.approx(16.02)
        finally:
            client.close()
            await server.stop()
    assert [(e.unit, e.outcome) for e in events] == [
        (9, "no_device"), (1, "no_device"), (2, "ok"), (2, "slow"), (1, "ok")]


async def test_rtu_start_on_a_missing_serial_device_is_an_oserror():
    with pytest.raises(OSError, match="cannot listen"):
        await MeterServer(serial_port="/dev/evbench-no-such-tty").start()


# --------------------------------------------------------------------------- #
# Server life cycle (TCP)                                                     #
# --------------------------------------------------------------------------- #


def test_update_before_start_is_served_from_the_first_read_and_kept_across_restarts():
    async def main():
        server = MeterServer()
        await server.update(READING)
        await server.start()
        port = server.port
        assert server.running and port > 0
        host, bound = server._server.transport.sockets[0].getsockname()[:2]
        assert (host, bound) == ("127.0.0.1", port)
        client = tcp_client(port, timeout_s=0.5)
        try:
            assert await client.connect()
            rr = await client.read_input_registers(0x0048, count=2, device_id=1)
            assert struct.unpack(">f", struct.pack(">2H", *rr.registers))[0] == pytest.approx(12345.67)
            await server.stop()
            assert not server.running
            with pytest.raises(ModbusIOException):
                await client.read_input_registers(0x0048, count=2, device_id=1)
            await server.start()  # a reboot: same port, last values kept
            assert server.port == port
            client.close()
            client = tcp_client(port)
            assert await client.connect()
            rr = await client.read_input_registers(0x0048, count=2, device_id=1)
            assert struct.unpack(">f", struct.pack(">2H", *rr.registers))[0] == pytest.approx(12345.67)
        finally:
            client.close()
            await server.stop()
            await server.stop()  # idempotent

    virtual(main)


def test_start_while_unreachable_binds_a_port_but_does_not_listen():
    async def main():
        server = MeterServer()
        server.set_fault("unreachable")
        await server.start()
        try:
            assert server.port > 0 and not server.running
            server.set_fault(None)
            await eventually(lambda: server.running)
        finally:
            await server.stop()

    virtual(main)


def test_port_falls_back_to_a_free_port_when_not_reported(monkeypatch):
    async def main():
        monkeypatch.setattr(MeterServer, "_listening_port", staticmethod(lambda _s: None))
        async with MeterServer() as server:
            await server.update(READING)
            assert server.port > 0
            client = tcp_client(server.port)
            assert await client.connect()
            client.close()

    virtual(main)


def test_start_on_a_busy_port_is_an_oserror():
    async def main():
        async with MeterServer() as first:
            with pytest.raises(OSError, match="cannot listen"):
                await MeterServer(port=first.port).start()
        with pytest.raises(RuntimeError, match="already started"):
            async with MeterServer() as server:
                await server.start()

    virtual(main)

