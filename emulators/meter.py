"""The site meter a load manager reads: an Eastron SDM630 over Modbus TCP.

Two layers, h11-style:

* Pure: :class:`MeterReading` and :func:`sdm630_registers` / :func:`sdm630_block`
  turn physical values into the 16-bit input-register words a real SDM630 serves
  (IEEE-754 float32, big-endian byte order, high word first). No I/O, no pymodbus.
* I/O: :class:`MeterServer` serves that block over Modbus TCP (pymodbus 3.16
  ``ModbusTcpServer`` with a ``SimDevice``) as input registers (function code 4).

Register map (Eastron SDM630 Modbus protocol, input registers, 0-based PDU
addresses; the manual's 3xxxx numbers are these + 30001):

======  ==========================  ====
0x0000  phase 1 line-to-neutral V   V
0x0002  phase 2 line-to-neutral V   V
0x0004  phase 3 line-to-neutral V   V
0x0006  phase 1 current             A
0x0008  phase 2 current             A
0x000A  phase 3 current             A
0x000C  phase 1 active power        W
0x000E  phase 2 active power        W
0x0010  phase 3 active power        W
0x0034  total system power          W
0x0046  frequency                   Hz
0x0048  import active energy        kWh
0x004A  export active energy        kWh
======  ==========================  ====

The server serves the contiguous block 0x0000..0x004B (76 registers); words the
map does not name read as zero. Reads outside the block get ILLEGAL_ADDRESS;
any function code other than 4 gets ILLEGAL_FUNCTION (a real SDM630 keeps its
configuration, not its measurements, in holding registers, so a controller that
reads measurements with FC 3 must fail here too). A request for another unit id
gets GATEWAY_NO_RESPONSE, as from an RS485-to-TCP gateway with no such meter.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

__all__ = [
    "SDM630_BLOCK_COUNT",
    "SDM630_BLOCK_START",
    "SDM630_EXPORT_KWH",
    "SDM630_FREQUENCY_HZ",
    "SDM630_IMPORT_KWH",
    "SDM630_PHASE_CURRENT_A",
    "SDM630_PHASE_POWER_W",
    "SDM630_PHASE_VOLTAGE_V",
    "SDM630_TOTAL_POWER_W",
    "MeterReading",
    "MeterServer",
    "sdm630_block",
    "sdm630_registers",
]

# --------------------------------------------------------------------------- #
# Pure layer                                                                  #
# --------------------------------------------------------------------------- #

SDM630_PHASE_VOLTAGE_V = (0x0000, 0x0002, 0x0004)
SDM630_PHASE_CURRENT_A = (0x0006, 0x0008, 0x000A)
SDM630_PHASE_POWER_W = (0x000C, 0x000E, 0x0010)
SDM630_TOTAL_POWER_W = 0x0034
SDM630_FREQUENCY_HZ = 0x0046
SDM630_IMPORT_KWH = 0x0048
SDM630_EXPORT_KWH = 0x004A

SDM630_BLOCK_START = 0x0000
SDM630_BLOCK_COUNT = 0x004C  # 0x0000..0x004B inclusive = 76 words

MODBUS_FC_READ_INPUT_REGISTERS = 4

_F32 = struct.Struct(">f")
_WORDS2 = struct.Struct(">HH")
_BLOCK = struct.Struct(f">{SDM630_BLOCK_COUNT}H")


@dataclass(frozen=True)
class MeterReading:
    """What the meter measures at one instant (per phase where the SDM630 is)."""

    voltages_v: tuple[float, float, float]
    currents_a: tuple[float, float, float]
    power_w: tuple[float, float, float]  # active power per phase; import positive
    import_kwh: float
    export_kwh: float = 0.0
    frequency_hz: float = 50.0

    def __post_init__(self) -> None:
        for name in ("voltages_v", "currents_a", "power_w"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"MeterReading.{name} needs 3 phases, got {value!r}")

    @property
    def total_power_w(self) -> float:
        """Total system active power, as the meter reports at 0x0034."""
        return float(sum(self.power_w))


def _values_by_address(reading: MeterReading) -> list[tuple[int, float]]:
    values: list[tuple[int, float]] = []
    values += zip(SDM630_PHASE_VOLTAGE_V, reading.voltages_v)
    values += zip(SDM630_PHASE_CURRENT_A, reading.currents_a)
    values += zip(SDM630_PHASE_POWER_W, reading.power_w)
    values.append((SDM630_TOTAL_POWER_W, reading.total_power_w))
    values.append((SDM630_FREQUENCY_HZ, reading.frequency_hz))
    values.append((SDM630_IMPORT_KWH, reading.import_kwh))
    values.append((SDM630_EXPORT_KWH, reading.export_kwh))
    return values


def sdm630_registers(reading: MeterReading) -> dict[int, list[int]]:
    """Input-register address -> its two 16-bit words (float32, high word first).

    Raises OverflowError for a finite value beyond float32 range (|x| > 3.4e38);
    NaN and infinities encode as IEEE-754 does (useful for "garbage" faults).
    """
    return {
        address: list(_WORDS2.unpack(_F32.pack(value)))
        for address, value in _values_by_address(reading)
    }


def sdm630_block(reading: MeterReading) -> list[int]:
    """The contiguous words for 0x0000..0x004B, zeros where the map names nothing."""
    buf = bytearray(2 * SDM630_BLOCK_COUNT)
    for address, value in _values_by_address(reading):
        _F32.pack_into(buf, 2 * (address - SDM630_BLOCK_START), value)
    return list(_BLOCK.unpack(buf))


# --------------------------------------------------------------------------- #
# I/O layer                                                                   #
# --------------------------------------------------------------------------- #


async def _input_registers_only(
    function_code: int,
    _start_address: int,
    _address: int,
    _count: int,
    _registers: list[int],
    _set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    """SimDevice action: the measurements are input registers, nothing else.

    Also runs for our own ``server.async_setValues(..., 4, ...)`` pushes, which
    use function code 4 and therefore pass.
    """
    if function_code != MODBUS_FC_READ_INPUT_REGISTERS:
        return ExcCodes.ILLEGAL_FUNCTION
    return None


async def _absent_device(*_args: object) -> ExcCodes | None:
    """SimDevice action for every unit id other than ours."""
    return ExcCodes.GATEWAY_NO_RESPONSE


class MeterServer:
    """A Modbus TCP server serving one SDM630's input registers for one unit id.

    ``port=0`` binds an ephemeral port; after :meth:`start`, ``self.port`` is the
    real one (and stays so across stop/start, so a restart emulates a meter
    reboot at the same address). :meth:`update` may be called before
    :meth:`start`; the server then starts with those values instead of zeros.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, device_id: int = 1) -> None:
        if not 0 <= device_id <= 255:
            raise ValueError(f"device_id must be 0..255, got {device_id}")
        self.host = host
        self.port = port
        self.device_id = device_id
        self.reading: MeterReading | None = None
        self._block: list[int] = [0] * SDM630_BLOCK_COUNT
        self._server: ModbusTcpServer | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def _devices(self) -> list[SimDevice]:
        meter = SimDevice(
            id=self.device_id,
            simdata=SimData(
                address=SDM630_BLOCK_START,
                values=list(self._block),
                datatype=DataType.REGISTERS,
            ),
            action=_input_registers_only,
        )
        if self.device_id == 0:  # id 0 already is pymodbus's catch-all
            return [meter]
        # Without a device 0, pymodbus 3.16's SimCore raises KeyError for an
        # unknown unit id, logs a traceback and answers DEVICE_FAILURE.
        absent = SimDevice(
            id=0,
            simdata=SimData(
                address=SDM630_BLOCK_START,
                count=SDM630_BLOCK_COUNT,
                values=0,
                datatype=DataType.REGISTERS,
            ),
            action=_absent_device,
        )
        return [meter, absent]

    async def _listen(self, port: int) -> ModbusTcpServer:
        server = ModbusTcpServer(self._devices(), address=(self.host, port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus swallows the OSError, says this
            await server.shutdown()
            raise OSError(
                f"MeterServer cannot listen on {self.host}:{port} "
                "(port in use or address not local?)"
            ) from exc
        return server

    @staticmethod
    def _listening_port(server: ModbusTcpServer) -> int | None:
        """The bound port, read from the asyncio.Server pymodbus keeps as transport."""
        sockets = getattr(server.transport, "sockets", None) or ()
        for sock in sockets:
            try:
                return int(sock.getsockname()[1])
            except (OSError, IndexError, TypeError, ValueError):
                continue
        return None

    def _free_port(self) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((self.host, 0))
            return int(sock.getsockname()[1])

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("MeterServer already started")
        server = await self._listen(self.port)
        bound = self._listening_port(server)
        if bound is None:
            if self.port:
                bound = self.port
            else:  # last resort: choose a free port ourselves and listen again
                await server.shutdown()
                bound = self._free_port()
                server = await self._listen(bound)
        self._server = server
        self.port = bound

    async def update(self, reading: MeterReading) -> None:
        """Replace every served value at once (a reader never sees half an update)."""
        block = sdm630_block(reading)
        self._block = block
        self.reading = reading
        if self._server is not None:
            await self._server.async_setValues(
                self.device_id, MODBUS_FC_READ_INPUT_REGISTERS, SDM630_BLOCK_START, block
            )

    async def stop(self) -> None:
        """Stop listening and drop every client connection. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
            await asyncio.sleep(0)  # let the closed transports run their callbacks

    async def __aenter__(self) -> MeterServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()
