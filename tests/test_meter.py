"""The SDM630 meter: pure register encoding, and the real Modbus TCP round trip."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from pymodbus.client import AsyncModbusTcpClient

from controllers.meter_client import MeterUnavailable, SDM630Client, SiteMeterReading
from emulators.meter import (
    SDM630_BLOCK_COUNT,
    MeterReading,
    MeterServer,
    sdm630_block,
    sdm630_registers,
)

pytestmark = pytest.mark.filterwarnings("error::DeprecationWarning")

READING = MeterReading(
    voltages_v=(230.5, 231.0, 229.25),
    currents_a=(16.0, 15.5, 0.25),
    power_w=(3680.0, 3580.5, -57.5),
    import_kwh=12345.5,
    export_kwh=6.75,
    frequency_hz=49.95,
)

# Every address of the map and the value READING must put there.
EXPECTED = {
    0x0000: 230.5, 0x0002: 231.0, 0x0004: 229.25,
    0x0006: 16.0, 0x0008: 15.5, 0x000A: 0.25,
    0x000C: 3680.0, 0x000E: 3580.5, 0x0010: -57.5,
    0x0034: 3680.0 + 3580.5 - 57.5,
    0x0046: 49.95,
    0x0048: 12345.5,
    0x004A: 6.75,
}  # fmt: skip


def f32_of(words: list[int]) -> float:
    return struct.unpack(">f", struct.pack(">HH", *words))[0]


def as_f32(x: float) -> float:
    return struct.unpack(">f", struct.pack(">f", x))[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- #
# Pure                                                                        #
# --------------------------------------------------------------------------- #


def test_registers_cover_the_map_and_decode_back():
    regs = sdm630_registers(READING)
    assert sorted(regs) == sorted(EXPECTED)
    for address, value in EXPECTED.items():
        assert len(regs[address]) == 2
        assert all(0 <= w <= 0xFFFF for w in regs[address])
        assert f32_of(regs[address]) == as_f32(value), hex(address)


def test_word_order_is_high_word_first():
    # 230.0 V as float32 is 0x43660000: high word 0x4366 comes first.
    reading = MeterReading((230.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 0.0), 0.0)
    regs = sdm630_registers(reading)
    assert regs[0x0000] == [0x4366, 0x0000]
    assert regs[0x0006] == [0x3F80, 0x0000]  # 1.0
    assert regs[0x0046] == [0x4248, 0x0000]  # 50.0 Hz default


def test_block_layout():
    block = sdm630_block(READING)
    regs = sdm630_registers(READING)
    assert len(block) == SDM630_BLOCK_COUNT == 0x4C
    for address, words in regs.items():
        assert block[address : address + 2] == words
    mapped = {a + i for a in regs for i in (0, 1)}
    assert all(block[a] == 0 for a in range(len(block)) if a not in mapped)


def test_reading_needs_three_phases():
    with pytest.raises(ValueError, match="voltages_v"):
        MeterReading((230.0, 230.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 0.0)


# --------------------------------------------------------------------------- #
# Through real sockets on 127.0.0.1                                           #
# --------------------------------------------------------------------------- #


async def read_map_plainly(port: int) -> dict[int, float]:
    """Read every register of the map one by one, as a generic Modbus tool would."""
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    assert await client.connect()
    try:
        values = {}
        for address in EXPECTED:
            rr = await client.read_input_registers(address, count=2, device_id=3)
            assert not rr.isError(), rr
            values[address] = f32_of(rr.registers)
        return values
    finally:
        client.close()


async def test_server_serves_map_to_plain_client_and_sdm630_client():
    server = MeterServer(device_id=3)
    await server.start()
    client = SDM630Client("127.0.0.1", server.port, device_id=3, timeout_s=1.0)
    try:
        assert server.port > 0
        host, port = server._server.transport.sockets[0].getsockname()[:2]
        assert (host, port) == ("127.0.0.1", server.port)

        await server.update(READING)
        assert await read_map_plainly(server.port) == {
            a: as_f32(v) for a, v in EXPECTED.items()
        }

        reading = await client.read()
        assert reading == SiteMeterReading(
            currents_a=(16.0, 15.5, 0.25),
            voltages_v=(230.5, 231.0, 229.25),
            power_w=7203.0,
            import_kwh=12345.5,
        )

        later = MeterReading(
            voltages_v=(228.0, 227.5, 226.0),
            currents_a=(31.5, 30.0, 29.75),
            power_w=(7182.0, 6825.0, 6723.5),
            import_kwh=12346.25,
        )
        await server.update(later)
        reading = await client.read()
        assert reading.currents_a == (31.5, 30.0, 29.75)
        assert reading.voltages_v == (228.0, 227.5, 226.0)
        assert reading.power_w == as_f32(7182.0 + 6825.0 + 6723.5)
        assert reading.import_kwh == 12346.25
        plain = await read_map_plainly(server.port)
        assert plain[0x0046] == 50.0 and plain[0x004A] == 0.0
    finally:
        await client.close()
        await server.stop()


async def test_update_before_start_is_served_from_the_first_read():
    server = MeterServer()
    await server.update(READING)
    await server.start()
    try:
        async with SDM630Client("127.0.0.1", server.port) as client:
            assert (await client.read()).import_kwh == 12345.5
    finally:
        await server.stop()


async def test_only_input_registers_of_the_block_are_served():
    server = MeterServer()
    await server.start()
    client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=1, retries=0)
    try:
        await server.update(READING)
        assert await client.connect()
        rr = await client.read_holding_registers(0, count=2, device_id=1)
        assert rr.isError() and rr.exception_code == 0x01  # ILLEGAL_FUNCTION
        rr = await client.write_register(0, 1, device_id=1)
        assert rr.isError() and rr.exception_code == 0x01
        rr = await client.read_input_registers(0x004A, count=4, device_id=1)
        assert rr.isError() and rr.exception_code == 0x02  # ILLEGAL_ADDRESS
        rr = await client.read_input_registers(0, count=2, device_id=9)
        assert rr.isError() and rr.exception_code == 0x0B  # GATEWAY_NO_RESPONSE
    finally:
        client.close()
        await server.stop()


async def test_meter_unavailable_when_nothing_listens():
    client = SDM630Client("127.0.0.1", free_port(), timeout_s=0.5)
    with pytest.raises(MeterUnavailable, match="unreachable"):
        await client.connect()
    with pytest.raises(MeterUnavailable):
        await client.read()
    await client.close()


async def test_meter_unavailable_on_modbus_error_answer():
    server = MeterServer(device_id=1)
    await server.start()
    client = SDM630Client("127.0.0.1", server.port, device_id=2)
    try:
        with pytest.raises(MeterUnavailable, match="GATEWAY_NO_RESPONSE"):
            await client.read()
    finally:
        await client.close()
        await server.stop()


async def test_meter_unavailable_when_meter_never_answers():
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(1024)  # swallow the request, answer nothing

    mute = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = mute.sockets[0].getsockname()[1]
    client = SDM630Client("127.0.0.1", port, timeout_s=0.2)
    try:
        with pytest.raises(MeterUnavailable, match="did not answer"):
            await client.read()
        assert not client.connected
    finally:
        await client.close()
        for writer in writers:
            writer.close()
        mute.close()
        await mute.wait_closed()


async def test_meter_unavailable_on_garbage_values():
    server = MeterServer()
    await server.update(
        MeterReading((230.0,) * 3, (float("nan"), 0.0, 0.0), (0.0,) * 3, 1.0)
    )
    await server.start()
    client = SDM630Client("127.0.0.1", server.port)
    try:
        with pytest.raises(MeterUnavailable, match="0x0006"):
            await client.read()
    finally:
        await client.close()
        await server.stop()


async def test_client_recovers_after_meter_reboot_on_same_port():
    server = MeterServer()
    await server.update(READING)
    await server.start()
    client = SDM630Client("127.0.0.1", server.port, timeout_s=0.2)
    try:
        assert (await client.read()).import_kwh == 12345.5
        await server.stop()
        with pytest.raises(MeterUnavailable):
            await client.read()
        await server.start()  # same port as before, last values kept
        assert (await client.read()).import_kwh == 12345.5
    finally:
        await client.close()
        await server.stop()


async def test_port_falls_back_to_a_free_port_when_not_reported(monkeypatch):
    monkeypatch.setattr(MeterServer, "_listening_port", staticmethod(lambda _s: None))
    server = MeterServer()
    await server.update(READING)
    await server.start()
    try:
        assert server.port > 0
        async with SDM630Client("127.0.0.1", server.port) as client:
            assert (await client.read()).import_kwh == 12345.5
    finally:
        await server.stop()


async def test_start_on_a_busy_port_is_an_oserror():
    first = MeterServer()
    await first.start()
    try:
        with pytest.raises(OSError, match="cannot listen"):
            await MeterServer(port=first.port).start()
    finally:
        await first.stop()


async def test_concurrent_reads_share_one_connection():
    server = MeterServer()
    await server.update(READING)
    await server.start()
    client = SDM630Client("127.0.0.1", server.port)
    try:
        readings = await asyncio.gather(*(client.read() for _ in range(5)))
        assert {r.import_kwh for r in readings} == {12345.5}
        assert len(server._server.active_connections) == 1
    finally:
        await client.close()
        await server.stop()
