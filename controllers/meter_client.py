"""Reading the site meter the way a load-management product does: Modbus TCP.

A controller sees only what a product sees, so this module does not import
``emulators`` or ``bench``; it carries its own copy of the Eastron SDM630 map
(input registers, IEEE-754 float32, big-endian, high word first).

One :meth:`SDM630Client.read` is one ``read_input_registers`` request for the
block 0x0000..0x004B (76 registers, within Modbus's 125-register limit), so all
values in a reading come from the same meter instant.
"""

from __future__ import annotations

import asyncio
import math
import struct
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException

__all__ = ["MeterUnavailable", "SDM630Client", "SiteMeterReading"]

# Eastron SDM630 input registers (0-based PDU addresses).
_PHASE_VOLTAGE_V = (0x0000, 0x0002, 0x0004)
_PHASE_CURRENT_A = (0x0006, 0x0008, 0x000A)
_TOTAL_POWER_W = 0x0034
_IMPORT_KWH = 0x0048
_BLOCK_START = 0x0000
_BLOCK_COUNT = 0x004C  # 0x0000..0x004B

_BLOCK = struct.Struct(f">{_BLOCK_COUNT}H")
_F32 = struct.Struct(">f")


class MeterUnavailable(Exception):
    """The site meter could not be reached, did not answer, or answered with an error."""


@dataclass(frozen=True)
class SiteMeterReading:
    currents_a: tuple[float, float, float]
    voltages_v: tuple[float, float, float]
    power_w: float  # total system active power; import positive
    import_kwh: float


def decode_sdm630_block(registers: list[int]) -> SiteMeterReading:
    """Decode the 76 words of 0x0000..0x004B. Raises MeterUnavailable on garbage."""
    if len(registers) != _BLOCK_COUNT:
        raise MeterUnavailable(
            f"SDM630 answered {len(registers)} registers, expected {_BLOCK_COUNT}"
        )
    raw = _BLOCK.pack(*registers)

    def f32(address: int) -> float:
        value: float = _F32.unpack_from(raw, 2 * (address - _BLOCK_START))[0]
        if not math.isfinite(value):
            raise MeterUnavailable(f"SDM630 register 0x{address:04X} holds {value}")
        return value

    v1, v2, v3 = (f32(a) for a in _PHASE_VOLTAGE_V)
    i1, i2, i3 = (f32(a) for a in _PHASE_CURRENT_A)
    return SiteMeterReading(
        currents_a=(i1, i2, i3),
        voltages_v=(v1, v2, v3),
        power_w=f32(_TOTAL_POWER_W),
        import_kwh=f32(_IMPORT_KWH),
    )


class SDM630Client:
    """Polls one SDM630 (or anything serving its map) over Modbus TCP.

    ``read`` connects on demand, so a controller that keeps calling it recovers
    by itself when the meter comes back. After a timeout or lost connection the
    socket is dropped (a late answer must not be taken for the next one).
    """

    def __init__(self, host: str, port: int, device_id: int = 1, timeout_s: float = 1.0) -> None:
        self.host = host
        self.port = port
        self.device_id = device_id
        self.timeout_s = timeout_s
        self._client: AsyncModbusTcpClient | None = None
        self._connecting = asyncio.Lock()  # concurrent reads must not open two sockets

    @property
    def _where(self) -> str:
        return f"SDM630 at {self.host}:{self.port} (unit {self.device_id})"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        if self.connected:
            return
        async with self._connecting:
            if not self.connected:
                await self._open()

    async def _open(self) -> None:
        self._drop()
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.timeout_s,  # connect and per-request timeout
            retries=0,  # one attempt; the controller's poll loop is the retry
            reconnect_delay=0,  # no background reconnect task; read() reconnects
            name=f"sdm630@{self.host}:{self.port}",
        )
        try:
            ok = await client.connect()
        except (ModbusException, OSError, asyncio.TimeoutError) as exc:
            client.close()
            raise MeterUnavailable(f"{self._where} unreachable: {exc}") from exc
        if not ok:
            client.close()
            raise MeterUnavailable(f"{self._where} unreachable")
        self._client = client

    async def read(self) -> SiteMeterReading:
        await self.connect()
        assert self._client is not None
        try:
            response = await self._client.read_input_registers(
                _BLOCK_START, count=_BLOCK_COUNT, device_id=self.device_id
            )
        except (ModbusException, OSError, asyncio.TimeoutError) as exc:
            self._drop()
            raise MeterUnavailable(f"{self._where} did not answer: {exc}") from exc
        if response.isError():
            code = getattr(response, "exception_code", None)
            try:
                name = ExcCodes(code).name
            except ValueError:
                name = str(code)
            raise MeterUnavailable(f"{self._where} answered Modbus exception {name}")
        return decode_sdm630_block(list(response.registers))

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def close(self) -> None:
        self._drop()

    async def __aenter__(self) -> SDM630Client:
        await self.connect()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
