"""Reading Modbus meters the way a load-management product does: TCP or RTU, timeouts, retries, plausibility.

A controller sees only what a product sees, so this module does not import ``emulators`` or
``bench``: it learns a meter's registers from its register map (:mod:`controllers.register_map`),
the same data file the emulated meter serves.

- :class:`MeterBus` is one Modbus connection: a TCP socket to a meter or an RS-485-to-TCP gateway,
  or a serial port in RTU mode. The meters on it (site meter, chargers' sub-meters) share it, one
  request at a time, as an RS-485 master must. It connects on demand, so a poll loop that keeps
  reading recovers by itself when the meter comes back; after a timeout or a lost connection it
  drops the connection, so that a late answer is not taken for the next request's.
- :class:`MeterClient` reads one meter (one unit id): one request per span of its map, decoded with
  the map's types, scales and word order, then judged. A read that fails — no connection, no answer
  within ``timeout_s``, a Modbus exception, implausible values — is tried again ``retries`` times
  and then raises :class:`MeterUnavailable`, so a dead meter costs at most
  ``timeout_s × (retries + 1)`` (plus connection set-up) per read.

- :class:`InverterClient` reads a battery inverter on the same bus the same way (state of charge and
  power, judged alike) and writes its active power setpoint (function code 16); a failed write raises
  :class:`MeterUnavailable` too, and the caller writes again at its next decision.

Plausibility is what a product can judge without knowing the site: every value finite, currents
below 10 kA, voltages in [0, 1000) V, powers below what 3 × 1000 V × 10 kA could carry, frequency in
[40, 70] Hz, energy registers not negative and never running backwards. That catches garbage and,
for most maps, a swapped word order; it cannot catch a wrong value that looks like a real one.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Self

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException

from controllers.api import MeterEndpoint
from controllers.register_map import RegisterMap, decode, encode_setpoint, load_register_map

# pymodbus logs every timeout and every frame of a failed exchange at error level; this client
# turns each failure into a MeterUnavailable the product handles, so the library's own log is noise.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

__all__ = ["InverterClient", "InverterReading", "MeterBus", "MeterClient", "MeterUnavailable", "SiteMeterReading"]

MAX_CURRENT_A = 10_000.0
MAX_VOLTAGE_V = 1_000.0
MAX_POWER_W = 3 * MAX_VOLTAGE_V * MAX_CURRENT_A
FREQUENCY_RANGE_HZ = (40.0, 70.0)

PHASE_CURRENTS = ("current_l1", "current_l2", "current_l3")
PHASE_VOLTAGES = ("voltage_l1", "voltage_l2", "voltage_l3")
PHASE_POWERS = ("power_l1", "power_l2", "power_l3")
ENERGY_REGISTERS = ("import_kwh", "export_kwh")


class MeterUnavailable(Exception):
    """A meter could not be reached, did not answer, answered with an error, or answered implausibly."""


@dataclass(frozen=True)
class SiteMeterReading:
    """One plausible read of a meter, in SI units; import positive. A quantity its map lacks is None."""

    currents_a: tuple[float, float, float]
    power_w: float  # total active power (the sum of the phases when the map has no total)
    import_kwh: float
    voltages_v: tuple[float, float, float] | None = None
    export_kwh: float | None = None
    frequency_hz: float | None = None


@dataclass(frozen=True)
class InverterReading:
    """One plausible read of a battery inverter: state of charge 0..1, power [W] + charging, − discharging."""

    soc: float
    power_w: float


class MeterBus:
    """One Modbus connection, shared by every meter reached through it (see the module docstring)."""

    def __init__(self, endpoint: MeterEndpoint, timeout_s: float = 1.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._turn = asyncio.Lock()  # one request on the wire at a time

    @property
    def where(self) -> str:
        end = self.endpoint
        if end.serial_port is not None:
            return f"{end.serial_port} (RTU {end.baudrate} 8{end.parity}{end.stopbits})"
        return f"{end.host}:{end.port}"

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        # One attempt per request and no background reconnection: MeterClient decides about retries.
        end = self.endpoint
        if end.serial_port is not None:
            return AsyncModbusSerialClient(end.serial_port, framer=FramerType.RTU, baudrate=end.baudrate,
                                           parity=end.parity, stopbits=end.stopbits, timeout=self.timeout_s,
                                           retries=0, reconnect_delay=0, name=f"meter@{end.serial_port}")
        return AsyncModbusTcpClient(end.host, port=end.port, timeout=self.timeout_s, retries=0, reconnect_delay=0,
                                    name=f"meter@{self.where}")

    async def _connected(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop()
        client = self._new_client()
        try:
            ok = await client.connect()
        except (TimeoutError, ModbusException, OSError) as error:
            client.close()
            raise MeterUnavailable(f"unreachable: {error}") from error
        if not ok:
            client.close()
            raise MeterUnavailable("unreachable")
        self._client = client
        return client

    async def read(self, function_code: int, address: int, count: int, unit_id: int) -> list[int]:
        """``count`` registers from ``address`` of unit ``unit_id`` with function code 3 (holding) or 4 (input).

        Raises :class:`MeterUnavailable` saying what went wrong; the caller names the meter.
        """
        async with self._turn:
            client = await self._connected()
            reader = {3: client.read_holding_registers, 4: client.read_input_registers}[function_code]
            try:
                response = await reader(address, count=count, device_id=unit_id)
            except (TimeoutError, ModbusException, OSError) as error:
                self._drop()
                raise MeterUnavailable(f"no answer: {error}") from error
            if not response.isError() and len(response.registers) != count:
                self._drop()  # an answer to another request (a late one on RS-485): start afresh
                raise MeterUnavailable(f"{len(response.registers)} registers in the answer, asked for {count}")
        if response.isError():
            raise MeterUnavailable(f"Modbus exception {_exception_name(response)} (function {function_code}, "
                                   f"address {address}, count {count})")
        return list(response.registers)

    async def write(self, address: int, words: list[int], unit_id: int) -> None:
        """Write ``words`` from ``address`` of unit ``unit_id`` (function code 16, write multiple registers).

        Raises :class:`MeterUnavailable` saying what went wrong; the caller names the device.
        """
        async with self._turn:
            client = await self._connected()
            try:
                response = await client.write_registers(address, words, device_id=unit_id)
            except (TimeoutError, ModbusException, OSError) as error:
                self._drop()
                raise MeterUnavailable(f"no answer: {error}") from error
        if response.isError():
            raise MeterUnavailable(f"Modbus exception {_exception_name(response)} (function 16, address {address}, "
                                   f"count {len(words)})")

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def close(self) -> None:
        self._drop()


class MeterClient:
    """Reads one meter: the endpoint's map and unit id (``unit_id`` overrides the endpoint's).

    Pass ``bus`` to share a connection with other meters on the same bus or gateway (its own
    timeout then applies, not ``timeout_s``); without it the client opens its own bus and
    :meth:`close` closes it.
    """

    def __init__(self, endpoint: MeterEndpoint, timeout_s: float = 1.0, retries: int = 1, unit_id: int | None = None,
                 bus: MeterBus | None = None) -> None:
        self.map: RegisterMap = load_register_map(endpoint.model)
        _require_site_quantities(self.map)
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.unit_id = endpoint.unit_id if unit_id is None else unit_id
        self.retries = retries
        self._owns_bus = bus is None
        self.bus = MeterBus(endpoint, timeout_s) if bus is None else bus
        self._spans = self.map.spans()
        self._last_kwh: dict[str, float] = {}  # energy registers of the last plausible read

    @property
    def where(self) -> str:
        return f"{self.map.name} at {self.bus.where} unit {self.unit_id}"

    async def read(self) -> SiteMeterReading:
        """One plausible reading, or :class:`MeterUnavailable` naming the meter and the last failure."""
        failure: MeterUnavailable | None = None
        for _attempt in range(self.retries + 1):
            try:
                return self._judge(await self._read_values())
            except MeterUnavailable as error:
                failure = error
        raise MeterUnavailable(f"{self.where}: {failure}") from failure

    async def _read_values(self) -> dict[str, float]:
        words: dict[int, int] = {}
        for start, count in self._spans:
            registers = await self.bus.read(self.map.function_code, start, count, self.unit_id)
            words.update(zip(range(start, start + count), registers))
        return decode(self.map, words)

    def _judge(self, values: dict[str, float]) -> SiteMeterReading:
        for quantity, value in values.items():
            if not _plausible(quantity, value):
                raise MeterUnavailable(f"implausible: {self._register_name(quantity)} = {value!r}")
            last = self._last_kwh.get(quantity)
            if last is not None and value < last:
                raise MeterUnavailable(f"implausible: {self._register_name(quantity)} = {value!r} "
                                       f"ran backwards from {last!r}")
        self._last_kwh.update((q, values[q]) for q in ENERGY_REGISTERS if q in values)
        power_w = values["power_total"] if "power_total" in values else sum(values[q] for q in PHASE_POWERS)
        return SiteMeterReading(
            currents_a=_phases(values, PHASE_CURRENTS),  # type: ignore[arg-type]  # required by the map check
            power_w=power_w,
            import_kwh=values["import_kwh"],
            voltages_v=_phases(values, PHASE_VOLTAGES),
            export_kwh=values.get("export_kwh"),
            frequency_hz=values.get("frequency_hz"),
        )

    def _register_name(self, quantity: str) -> str:
        register = self.map.register(quantity)
        return quantity if register is None else f"register {register.address} (0x{register.address:04X}, {quantity})"

    async def close(self) -> None:
        if self._owns_bus:
            await self.bus.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


class InverterClient:
    """A battery inverter on a shared bus: its state of charge and power, and its power setpoint.

    Reads are tried ``retries`` + 1 times like a meter's; a write is tried once (the caller writes
    again at its next decision, which is what products do with a command that did not go through).
    """

    def __init__(self, endpoint: MeterEndpoint, bus: MeterBus, retries: int = 1) -> None:
        self.map: RegisterMap = load_register_map(endpoint.model)
        missing = [q for q in ("soc", "power_total") if self.map.register(q) is None]
        missing += [q for q in ("power_setpoint",) if q not in {r.quantity for r in self.map.setpoints}]
        if missing:
            raise ValueError(f"register map {self.map.model!r} lacks {', '.join(missing)}: a battery inverter "
                             "needs them")
        self.unit_id = endpoint.unit_id
        self.bus = bus
        self.retries = retries
        self._spans = self.map.spans()

    @property
    def where(self) -> str:
        return f"{self.map.name} at {self.bus.where} unit {self.unit_id}"

    async def read(self) -> InverterReading:
        """One plausible reading, or :class:`MeterUnavailable` naming the inverter and the last failure."""
        failure: MeterUnavailable | None = None
        for _attempt in range(self.retries + 1):
            try:
                words: dict[int, int] = {}
                for start, count in self._spans:
                    registers = await self.bus.read(self.map.function_code, start, count, self.unit_id)
                    words.update(zip(range(start, start + count), registers))
                values = decode(self.map, words)
                soc, power_w = values["soc"], values["power_total"]
                if not (math.isfinite(soc) and 0.0 <= soc <= 1.0):
                    raise MeterUnavailable(f"implausible: soc = {soc!r}")
                if not _plausible("power_total", power_w):
                    raise MeterUnavailable(f"implausible: power_total = {power_w!r}")
                return InverterReading(soc, power_w)
            except MeterUnavailable as error:
                failure = error
        raise MeterUnavailable(f"{self.where}: {failure}") from failure

    async def write_power_setpoint(self, power_w: float) -> None:
        """Command the inverter to charge (+) or discharge (−) at ``power_w``; :class:`MeterUnavailable` if refused."""
        address, words = encode_setpoint(self.map, "power_setpoint", power_w)
        try:
            await self.bus.write(address, words, self.unit_id)
        except MeterUnavailable as error:
            raise MeterUnavailable(f"{self.where}: {error}") from error


def _exception_name(response: object) -> str:
    code = getattr(response, "exception_code", None)
    try:
        return ExcCodes(code).name
    except ValueError:
        return str(code)


def _require_site_quantities(rmap: RegisterMap) -> None:
    missing = [q for q in (*PHASE_CURRENTS, "import_kwh") if rmap.register(q) is None]
    if rmap.register("power_total") is None:
        missing += [q for q in PHASE_POWERS if rmap.register(q) is None]
    if missing:
        raise ValueError(f"register map {rmap.model!r} lacks {', '.join(missing)}: a load manager needs them")


def _plausible(quantity: str, value: float) -> bool:
    if not math.isfinite(value):
        return False
    if quantity.startswith("current_"):
        return abs(value) < MAX_CURRENT_A
    if quantity.startswith("voltage_"):
        return 0.0 <= value < MAX_VOLTAGE_V
    if quantity.startswith("power_"):
        return abs(value) < MAX_POWER_W
    if quantity == "frequency_hz":
        return FREQUENCY_RANGE_HZ[0] <= value <= FREQUENCY_RANGE_HZ[1]
    if quantity in ENERGY_REGISTERS:
        return value >= 0.0
    return True


def _phases(values: dict[str, float], quantities: tuple[str, str, str]) -> tuple[float, float, float] | None:
    if not all(q in values for q in quantities):
        return None
    return values[quantities[0]], values[quantities[1]], values[quantities[2]]
