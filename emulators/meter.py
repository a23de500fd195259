"""The meters a load manager reads: real devices' register maps served over Modbus TCP or RTU.

Two layers, h11-style:

* Pure: :class:`MeterReading` is what the site is at one instant; :class:`MeterModel` turns the
  true site, fed every physics step, into what the device shows and when: it refreshes every
  ``update_interval_s``, each refresh shows the site as it was ``delay_s`` earlier, with relative
  noise and CT quantisation (:class:`MeterBehaviour`). No I/O, no pymodbus, deterministic for a seed.
* I/O: :class:`MeterServer` serves a site meter, and optionally sub-meters under other unit ids on
  the same bus or gateway, each with its own register map (:mod:`controllers.register_map`:
  address, type, scale, word order from ``fixtures/meters/<model>.toml``), over Modbus TCP or
  Modbus RTU on a serial port. Faults (:data:`FAULTS`) are set per unit; every request is reported
  as a :class:`ReadEvent`.

What a device answers (Modbus Application Protocol V1.1b3 §7; Modbus over Serial Line V1.02 §2.4):

* measurements only on the map's function code (3 holding or 4 input registers); any other
  function — another read, any write — gets ILLEGAL_FUNCTION, as a real meter keeps its
  configuration, not its measurements, in the other table;
* a device whose map has setpoints (a battery inverter) takes writes (function 6 or 16) of exactly
  one whole setpoint register — anything else written gets ILLEGAL_ADDRESS, a value that decodes
  to NaN or infinity ILLEGAL_VALUE — and holds the value (:meth:`MeterServer.setpoint`) until the
  next write; the bench's plant reads it from there, as the inverter's firmware would;
* reads inside the map's address range, from its first register to the end of its last, are
  served; words the map does not name read 0 (a real device has other quantities there, so a
  controller reading a block across them must not fail); reads outside get ILLEGAL_ADDRESS;
* an absent unit id: over TCP the answer an RS-485-to-TCP gateway gives for a device that does not
  respond, GATEWAY_NO_RESPONSE; on an RTU line, silence.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Self

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from controllers.register_map import RegisterMap, decode_setpoint, encode, encode_setpoint, load_register_map

__all__ = [
    "FAULTS",
    "OUTCOMES",
    "MeterBehaviour",
    "MeterModel",
    "MeterReading",
    "MeterServer",
    "ReadEvent",
    "current_resolution_a",
]

# --------------------------------------------------------------------------- #
# Pure layer                                                                  #
# --------------------------------------------------------------------------- #

# A float meter's current registers carry far finer steps than it measures; 1 mA is the
# resolution Eastron and similar meters state for their current readings.
FLOAT_CURRENT_RESOLUTION_A = 0.001
_TIME_EPSILON_S = 1e-9  # physics times are sums of floats; a refresh "at 10 s" must fire at 9.999999999


@dataclass(frozen=True)
class MeterReading:
    """What the meter measures at one instant: per phase V, A, W (import positive), energy counters, Hz."""

    voltages_v: tuple[float, float, float]
    currents_a: tuple[float, float, float]
    power_w: tuple[float, float, float]
    import_kwh: float
    export_kwh: float = 0.0
    frequency_hz: float = 50.0
    soc: float | None = None  # [0..1] a storage device's state of charge; None for a meter

    def __post_init__(self) -> None:
        for name in ("voltages_v", "currents_a", "power_w"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"MeterReading.{name} needs 3 phases, got {value!r}")

    @property
    def total_power_w(self) -> float:
        """[W] total active power, the sum of the phases."""
        return float(sum(self.power_w))

    def quantities(self) -> dict[str, float]:
        """The reading by :data:`controllers.register_map.QUANTITIES` name (and ``soc`` when set), in SI units."""
        (v1, v2, v3), (i1, i2, i3), (p1, p2, p3) = self.voltages_v, self.currents_a, self.power_w
        values = {
            "voltage_l1": v1, "voltage_l2": v2, "voltage_l3": v3,
            "current_l1": i1, "current_l2": i2, "current_l3": i3,
            "power_l1": p1, "power_l2": p2, "power_l3": p3, "power_total": self.total_power_w,
            "import_kwh": self.import_kwh, "export_kwh": self.export_kwh, "frequency_hz": self.frequency_hz,
        }  # fmt: skip
        if self.soc is not None:
            values["soc"] = self.soc
        return values


@dataclass(frozen=True)
class MeterBehaviour:
    """How a meter turns the site into register values.

    ``update_interval_s`` [s]: the device refreshes its registers this often (a controller polling
    faster reads the same values again — and one that reacts to each read oscillates).
    ``delay_s`` [s]: each refresh shows the site as it was this long before (measurement and
    averaging latency). ``noise``: relative 1-sigma noise on each V, A and W value; energy counters
    get none, so they stay monotonic. ``ct_ratio``: the meter measures currents on a current
    transformer's secondary (e.g. 40 for 200/5 A) with its own resolution, so primary currents
    come in steps of ``ct_ratio`` × that resolution.
    """

    update_interval_s: float = 1.0
    delay_s: float = 0.0
    noise: float = 0.0
    ct_ratio: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.update_interval_s) and self.update_interval_s > 0):
            raise ValueError(f"update_interval_s must be > 0, got {self.update_interval_s!r}")
        if not (math.isfinite(self.delay_s) and self.delay_s >= 0):
            raise ValueError(f"delay_s must be >= 0, got {self.delay_s!r}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be >= 0, got {self.noise!r}")
        if self.ct_ratio is not None and not (math.isfinite(self.ct_ratio) and self.ct_ratio > 0):
            raise ValueError(f"ct_ratio must be > 0 or None, got {self.ct_ratio!r}")


def current_resolution_a(rmap: RegisterMap) -> float:
    """[A] the smallest current step ``rmap``'s device shows: one count of an integer register
    (1 / scale), or 1 mA for float registers."""
    register = rmap.register("current_l1")
    if register is None or register.type == "float32":
        return FLOAT_CURRENT_RESOLUTION_A
    return 1.0 / register.scale


class MeterModel:
    """What a meter with :class:`MeterBehaviour` shows, fed the true site every physics step.

    Refreshes fall due at the first observation and every ``update_interval_s`` after it (on a
    fixed grid, so they do not drift when physics steps do not divide the interval; a step that
    jumps over several refreshes makes one). ``current_resolution_a`` is the device's current
    resolution (:func:`current_resolution_a` of its map), used with ``ct_ratio``.
    """

    def __init__(self, behaviour: MeterBehaviour, seed: int = 0,
                 current_resolution_a: float = FLOAT_CURRENT_RESOLUTION_A) -> None:
        if not (math.isfinite(current_resolution_a) and current_resolution_a > 0):
            raise ValueError(f"current_resolution_a must be > 0, got {current_resolution_a!r}")
        self.behaviour = behaviour
        self.current_resolution_a = current_resolution_a
        self._rng = random.Random(seed)
        self._history: deque[tuple[float, MeterReading]] = deque()
        self._next_refresh_s: float | None = None

    def observe(self, t: float, reading: MeterReading) -> MeterReading | None:
        """Feed the true site at time ``t`` [s] (ascending). When a refresh falls due at ``t``,
        return what the meter shows from now on — the site of ``t - delay_s`` (the earliest one
        fed if none is that old yet), with noise and CT quantisation — else None."""
        if self._history and t < self._history[-1][0]:
            raise ValueError(f"t must not go backwards: {t} after {self._history[-1][0]}")
        self._history.append((t, reading))
        due = self._next_refresh_s
        if due is None:
            due = t
        elif t < due - _TIME_EPSILON_S:
            return None
        interval = self.behaviour.update_interval_s
        missed = math.floor((t - due) / interval + _TIME_EPSILON_S)
        self._next_refresh_s = due + (missed + 1) * interval
        return self._measure(self._as_of(t - self.behaviour.delay_s))

    def _as_of(self, when: float) -> MeterReading:
        """The latest reading fed at or before ``when``; forgets the ones no later refresh can show."""
        history = self._history
        while len(history) > 1 and history[1][0] <= when + _TIME_EPSILON_S:
            history.popleft()
        return history[0][1]

    def _measure(self, true: MeterReading) -> MeterReading:
        volts, amps, watts = true.voltages_v, true.currents_a, true.power_w
        noise = self.behaviour.noise
        if noise:
            gauss = self._rng.gauss
            volts = tuple(v * (1.0 + noise * gauss(0.0, 1.0)) for v in volts)  # type: ignore[assignment]
            amps = tuple(a * (1.0 + noise * gauss(0.0, 1.0)) for a in amps)  # type: ignore[assignment]
            watts = tuple(w * (1.0 + noise * gauss(0.0, 1.0)) for w in watts)  # type: ignore[assignment]
        ratio = self.behaviour.ct_ratio
        if ratio is not None:
            # Quantised after the noise: the converter sees the noisy secondary current.
            step = ratio * self.current_resolution_a
            amps = tuple(round(a / step) * step for a in amps)  # type: ignore[assignment]
        return replace(true, voltages_v=volts, currents_a=amps, power_w=watts)


# --------------------------------------------------------------------------- #
# I/O layer                                                                   #
# --------------------------------------------------------------------------- #

FAULTS = ("unreachable", "frozen", "garbage", "word_order", "slow")
OUTCOMES = ("ok", "frozen", "garbage", "word_order", "slow", "written", "illegal_function", "illegal_address",
            "illegal_value", "no_device")
_WRITE_FUNCTIONS = (6, 16)  # write single register, write multiple registers

_log = logging.getLogger("evbench.meter")
# The server's side of a fault (dropped clients, late answers) is what the bench does on purpose.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

# Modbus over Serial Line V1.02 §2.2: individual device addresses are 1..247.
_UNIT_IDS = range(1, 248)
_FLOAT32_NAN_WORDS = (0x7FC0, 0x0000)  # IEEE-754 quiet NaN, most significant word first


@dataclass(frozen=True)
class ReadEvent:
    """One request a meter server received, and what it did with it.

    ``outcome`` is one of :data:`OUTCOMES`: ``ok`` or the unit's fault when values were served,
    ``written`` when a setpoint was taken, else the refusal (``no_device``: the unit is absent or unreachable, so nothing answered or a
    gateway said so). ``values_at`` is the event-loop time of the :meth:`MeterServer.update` whose
    values were served — its age is how stale the reader's data is — or None when no published
    values were served (a refusal, garbage, or nothing published yet).
    """

    unit: int
    function_code: int
    address: int
    count: int
    outcome: str
    values_at: float | None


class _Meter:
    """One device on the bus: its map, the values it last published, its setpoints, its fault."""

    def __init__(self, unit: int, rmap: RegisterMap) -> None:
        self.unit = unit
        self.map = rmap
        served = (*rmap.registers, *rmap.setpoints)
        self.first = min(register.address for register in served)
        self.end = max(register.address + register.words for register in served)
        self.setpoints: dict[str, float] = {register.quantity: 0.0 for register in rmap.setpoints}
        self.reading: MeterReading | None = None
        self.published_at: float | None = None
        self.words = self.encode({})
        self.fault: str | None = None
        self.slow_s = 0.0

    def encode(self, values: Mapping[str, float], word_order: str | None = None) -> list[int]:
        """The words of the whole range ``first..end``, 0 where the map names nothing."""
        by_address = encode(self.map, values, word_order)
        for quantity, value in self.setpoints.items():
            address, words = encode_setpoint(self.map, quantity, value)
            by_address.update(zip(range(address, address + len(words)), words))
        return [by_address.get(address, 0) for address in range(self.first, self.end)]

    def take_setpoint(self, address: int, words: list[int]) -> str:
        """A write of ``words`` at ``address``: the outcome, and the setpoint held when it is ``written``."""
        register = next((r for r in self.map.setpoints if r.address == address and r.words == len(words)), None)
        if register is None:
            return "illegal_address"
        value = decode_setpoint(self.map, register.quantity, dict(zip(range(address, address + len(words)), words)))
        if value is None or not math.isfinite(value):
            return "illegal_value"
        self.setpoints[register.quantity] = value
        self.words = self.encode({} if self.reading is None else self.reading.quantities())
        return "written"

    def swapped_words(self, address: int, count: int) -> list[int]:
        """The published values with the word order reversed (the "word_order" fault)."""
        values = {} if self.reading is None else self.reading.quantities()
        swapped = "low_first" if self.map.word_order == "high_first" else "high_first"
        return self.encode(values, swapped)[address - self.first: address - self.first + count]

    def garbage_words(self, address: int, count: int, rng: random.Random) -> list[int]:
        """Random words; every float32 register read whole is NaN half the time."""
        words = [rng.getrandbits(16) for _ in range(count)]
        for register in self.map.registers:
            offset = register.address - address
            if register.type == "float32" and 0 <= offset <= count - 2 and rng.random() < 0.5:
                nan = _FLOAT32_NAN_WORDS if self.map.word_order == "high_first" else _FLOAT32_NAN_WORDS[::-1]
                words[offset: offset + 2] = nan
        return words

    def sim_device(self) -> SimDevice:
        return SimDevice(id=self.unit, simdata=SimData(address=self.first, values=list(self.words),
                                                        datatype=DataType.REGISTERS))


class _Bus:
    """Takes the place of the pymodbus server's datastore: every request, for any unit, passes here.

    pymodbus 3.16 calls ``async_getValues``/``async_setValues(unit, function, address, …)`` on the
    server's ``context`` for each request. A SimDevice action cannot play a bus of meters: it is
    not told the unit id, and it is skipped for addresses outside its block, so reads of absent
    units and stray addresses would go unreported. This object decides each request's fate, reports
    it, and leaves storing the published words to the SimCore pymodbus built from our SimDevices.
    """

    def __init__(self, owner: MeterServer, store: SimCore) -> None:
        self._owner = owner
        self.store = store

    def device_ids(self) -> list[int]:
        return list(self._owner.units)

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: list[int] | list[bool]) -> ExcCodes | None:
        """A write request: refused, unless it sets a device's setpoint (then stored like published words)."""
        refusal = await self._owner._write(device_id, func_code, address, [int(v) for v in values])
        if refusal is not None:
            return refusal
        meter = self._owner._meters[device_id]
        return await self.store.async_setValues(device_id, meter.map.function_code, meter.first, meter.words)

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        answer = await self._owner._answer(device_id, func_code, address, count, write=False)
        if answer is None:
            return await self.store.async_getValues(device_id, func_code, address, count)
        return answer


class _MeterRequestHandler(ServerRequestHandler):
    """pymodbus's handler of one TCP connection or one serial line, holding back slow units' answers.

    The delay is applied here, once pymodbus has stamped the answer with its request's unit and
    transaction id: pymodbus takes those from the latest request on the connection when the
    datastore returns, so an answer delayed inside the datastore would leave with the ids of a
    request that arrived in the meantime.
    """

    server: _TcpServer | _SerialServer

    def server_send(self, pdu: ModbusPDU | None, addr: tuple | None) -> None:
        delay = self.server.answer_delay(pdu.dev_id) if pdu is not None else 0.0
        if delay > 0:
            self.loop.call_later(delay, self._send_late, pdu, addr)
        else:
            super().server_send(pdu, addr)

    def _send_late(self, pdu: ModbusPDU, addr: tuple | None) -> None:
        if self.transport is not None:  # the client may have gone, or the meter stopped
            super().server_send(pdu, addr)


class _AnswerDelays:
    """Makes a pymodbus server handle its connections with :class:`_MeterRequestHandler`."""

    def __init__(self, *args: Any, answer_delay: Callable[[int], float], **kwargs: Any) -> None:
        self.answer_delay = answer_delay  # [s] by unit id
        super().__init__(*args, **kwargs)

    trace_packet: Any
    trace_pdu: Any
    trace_connect: Any

    def callback_new_connection(self) -> _MeterRequestHandler:
        return _MeterRequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class _TcpServer(_AnswerDelays, ModbusTcpServer):
    """Modbus TCP with late answers for slow units."""


class _SerialServer(_AnswerDelays, ModbusSerialServer):
    """Modbus RTU on a serial port with late answers for slow units."""


class MeterServer:
    """A site meter (and sub-meters) on Modbus TCP, or on Modbus RTU when ``serial_port`` is set.

    ``model`` is a register map or its name (``fixtures/meters/<model>.toml``); ``device_id`` is the
    site meter's unit id; ``sub_meters`` maps further unit ids on the same bus or gateway to their
    maps. ``on_read`` is called with a :class:`ReadEvent` for every request as it arrives.

    TCP: ``port=0`` binds an ephemeral port; after :meth:`start`, ``self.port`` is the real one and
    stays so across stop/start and the "unreachable" fault, so a restart emulates a meter reboot at
    the same address. RTU: the serial line settings are the device's; a pseudo-terminal ignores them.

    :meth:`update` may be called before :meth:`start`; the server then starts with those values.
    ``seed`` makes the "garbage" fault's words reproducible.
    """

    def __init__(self, model: str | RegisterMap = "sdm630", host: str = "127.0.0.1", port: int = 0,
                 device_id: int = 1, serial_port: str | None = None, baudrate: int = 9600, parity: str = "N",
                 stopbits: int = 1, sub_meters: Mapping[int, str | RegisterMap] | None = None,
                 on_read: Callable[[ReadEvent], None] | None = None, seed: int = 0) -> None:
        units = {device_id: model, **(sub_meters or {})}
        for unit in units:
            if unit not in _UNIT_IDS:
                raise ValueError(f"unit id must be 1..247, got {unit}")
        if sub_meters and device_id in sub_meters:
            raise ValueError(f"sub-meter unit {device_id} is the site meter's unit id")
        self._meters: dict[int, _Meter] = {
            unit: _Meter(unit, rmap if isinstance(rmap, RegisterMap) else load_register_map(rmap))
            for unit, rmap in units.items()
        }
        self.host = host
        self.port = port
        self.device_id = device_id
        self.serial_port = serial_port
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.on_read = on_read
        self._rng = random.Random(seed)
        self._server: _TcpServer | _SerialServer | None = None
        self._bus: _Bus | None = None
        self._started = False
        self._transitions: set[asyncio.Task] = set()
        self._transition_lock = asyncio.Lock()

    # -- state ------------------------------------------------------------- #

    @property
    def units(self) -> tuple[int, ...]:
        """The unit ids served: the site meter's first, then the sub-meters'."""
        return tuple(self._meters)

    @property
    def register_map(self) -> RegisterMap:
        """The site meter's register map."""
        return self._meters[self.device_id].map

    @property
    def reading(self) -> MeterReading | None:
        """The site meter's last published reading."""
        return self._meters[self.device_id].reading

    @property
    def fault(self) -> str | None:
        """The site meter's current fault."""
        return self._meters[self.device_id].fault

    @property
    def running(self) -> bool:
        """Listening (TCP) or attached to the serial port (RTU)."""
        return self._server is not None

    def _meter(self, unit: int | None) -> _Meter:
        unit = self.device_id if unit is None else unit
        if unit not in self._meters:
            raise ValueError(f"no meter with unit id {unit} on this server (units: {sorted(self._meters)})")
        return self._meters[unit]

    # -- publishing and faults --------------------------------------------- #

    async def update(self, reading: MeterReading, unit: int | None = None) -> None:
        """Publish new values for a unit (default: the site meter), all at once — a reader never sees
        half an update. A frozen meter ignores them."""
        meter = self._meter(unit)
        if meter.fault == "frozen":
            return
        meter.reading = reading
        meter.published_at = asyncio.get_running_loop().time()
        meter.words = meter.encode(reading.quantities())
        if self._bus is not None:
            await self._bus.store.async_setValues(
                meter.unit, meter.map.function_code, meter.first, meter.words)

    def set_fault(self, fault: str | None, unit: int | None = None, slow_s: float = 3.0) -> None:
        """Put a unit (default: the site meter) into one of :data:`FAULTS`, or clear it with None.

        - ``unreachable``: over TCP the site meter stops listening and drops its clients (with its
          sub-meters: the whole device or gateway is gone) and listens again on the same port when
          cleared; a TCP sub-meter then answers as an absent unit (GATEWAY_NO_RESPONSE); on RTU the
          unit never answers.
        - ``frozen``: keeps serving the last values and ignores updates.
        - ``garbage``: serves random words (reproducible for the server's seed), NaN floats included.
        - ``word_order``: serves the values with their words in the reverse order.
        - ``slow``: answers every request ``slow_s`` late (beyond a typical 1 s client timeout).
        """
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"fault must be one of {', '.join(FAULTS)} or None, got {fault!r}")
        if not (math.isfinite(slow_s) and slow_s >= 0):
            raise ValueError(f"slow_s must be >= 0, got {slow_s!r}")
        meter = self._meter(unit)
        meter.fault = fault
        meter.slow_s = slow_s
        if self._started and self.serial_port is None and meter.unit == self.device_id:
            task = asyncio.get_running_loop().create_task(self._reconcile())
            self._transitions.add(task)
            task.add_done_callback(self._transition_done)

    def _transition_done(self, task: asyncio.Task) -> None:
        self._transitions.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # E.g. another program took the port while the meter was away: it stays unreachable.
            _log.error("meter on %s:%s could not change state: %s", self.host, self.port, task.exception())

    # -- serving ------------------------------------------------------------ #

    async def _answer(self, unit: int, function_code: int, address: int, count: int,
                     write: bool) -> list[int] | ExcCodes | None:
        """Decide one request's fate and report it: the words to serve, an exception code, or None
        for the published words as stored. Raises NoSuchIdException for silence (RTU). A slow
        unit's answer is decided now, with the values of now, and sent late."""
        meter = self._meters.get(unit)
        if meter is None or meter.fault == "unreachable":
            self._report(unit, function_code, address, count, "no_device", None)
            if self.serial_port is not None:
                raise NoSuchIdException(f"no meter answers unit {unit} on this line")
            return ExcCodes.GATEWAY_NO_RESPONSE
        answer: list[int] | ExcCodes | None
        if write or function_code != meter.map.function_code:
            outcome, values_at, answer = "illegal_function", None, ExcCodes.ILLEGAL_FUNCTION
        elif not (meter.first <= address and address + count <= meter.end):
            outcome, values_at, answer = "illegal_address", None, ExcCodes.ILLEGAL_ADDRESS
        elif meter.fault == "garbage":
            outcome, values_at, answer = "garbage", None, meter.garbage_words(address, count, self._rng)
        elif meter.fault == "word_order":
            outcome, values_at, answer = "word_order", meter.published_at, meter.swapped_words(address, count)
        else:
            outcome, values_at, answer = meter.fault or "ok", meter.published_at, None
        self._report(unit, function_code, address, count, outcome, values_at)
        return answer

    async def _write(self, unit: int, function_code: int, address: int, words: list[int]) -> ExcCodes | None:
        """Decide a write's fate and report it: None when a setpoint was taken, else the exception code."""
        meter = self._meters.get(unit)
        if meter is None or meter.fault == "unreachable" or not meter.setpoints or function_code not in _WRITE_FUNCTIONS:
            answer = await self._answer(unit, function_code, address, len(words), write=True)
            assert isinstance(answer, ExcCodes)
            return answer
        outcome = meter.take_setpoint(address, words)
        self._report(unit, function_code, address, len(words), outcome, None)
        return {"written": None, "illegal_address": ExcCodes.ILLEGAL_ADDRESS,
                "illegal_value": ExcCodes.ILLEGAL_VALUE}[outcome]

    def setpoint(self, unit: int, quantity: str = "power_setpoint") -> float:
        """The value a device holds for one of its setpoints (0 until a controller writes one)."""
        meter = self._meter(unit)
        if quantity not in meter.setpoints:
            raise ValueError(f"unit {unit} ({meter.map.name}) has no setpoint {quantity!r}")
        return meter.setpoints[quantity]

    def _answer_delay(self, unit: int) -> float:
        """[s] how long a unit's answers are held back (see :class:`_MeterRequestHandler`)."""
        meter = self._meters.get(unit)
        return meter.slow_s if meter is not None and meter.fault == "slow" else 0.0

    def _report(self, unit: int, function_code: int, address: int, count: int, outcome: str,
                values_at: float | None) -> None:
        if self.on_read is not None:
            self.on_read(ReadEvent(unit, function_code, address, count, outcome, values_at))

    # -- transport ---------------------------------------------------------- #

    def _new_server(self, port: int) -> _TcpServer | _SerialServer:
        devices = [meter.sim_device() for meter in self._meters.values()]
        server: _TcpServer | _SerialServer
        if self.serial_port is not None:
            server = _SerialServer(devices, answer_delay=self._answer_delay, framer=FramerType.RTU,
                                   port=self.serial_port, baudrate=self.baudrate, parity=self.parity,
                                   stopbits=self.stopbits, ignore_missing_devices=True, reconnect_delay=0)
        else:
            server = _TcpServer(devices, answer_delay=self._answer_delay, address=(self.host, port),
                                ignore_missing_devices=True)
        # ignore_missing_devices: a NoSuchIdException from the bus means "stay silent".
        self._bus = _Bus(self, server.context)
        server.context = self._bus  # type: ignore[assignment]
        return server

    async def _listen(self, port: int) -> _TcpServer | _SerialServer:
        server = self._new_server(port)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus swallows the OSError, says this
            await server.shutdown()
            where = self.serial_port if self.serial_port is not None else f"{self.host}:{port}"
            raise OSError(f"MeterServer cannot listen on {where} "
                          "(port in use, address not local, or no such serial device?)") from exc
        return server

    @staticmethod
    def _listening_port(server: _TcpServer | _SerialServer) -> int | None:
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

    async def _close(self) -> None:
        server, self._server, self._bus = self._server, None, None
        if server is not None:
            await server.shutdown()
            await asyncio.sleep(0)  # let the closed transports run their callbacks

    async def _reconcile(self) -> None:
        """Listen or not, as the site meter's "unreachable" fault says (TCP)."""
        async with self._transition_lock:
            wanted = self._started and self.fault != "unreachable"
            if wanted and self._server is None:
                self._server = await self._listen(self.port)
            elif not wanted and self._server is not None:
                await self._close()

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("MeterServer already started")
        async with self._transition_lock:
            server = await self._listen(self.port)
            if self.serial_port is None:
                bound = self._listening_port(server)
                if bound is None:
                    if self.port:
                        bound = self.port
                    else:  # last resort: choose a free port ourselves and listen again
                        await server.shutdown()
                        bound = self._free_port()
                        server = await self._listen(bound)
                self.port = bound
            self._server = server
            self._started = True
        if self.serial_port is None and self.fault == "unreachable":
            await self._reconcile()

    async def stop(self) -> None:
        """Stop listening (or release the serial port) and drop every client connection. Idempotent."""
        self._started = False
        await asyncio.gather(*self._transitions, return_exceptions=True)
        async with self._transition_lock:
            await self._close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()
