"""Register maps of real electricity meters, and the codec between SI values and Modbus words.

A meter model is data, not code: ``fixtures/meters/<model>.toml`` names, for each quantity the
device measures, its register address, number type, scale and unit as the manual states them,
plus the function code the device serves measurements on and its word order. A new model is a
new file. Both sides use this module: the emulated meter encodes the site into words
(:func:`encode`), the controller host's Modbus client decodes what it read (:func:`decode`);
it lives in ``controllers`` because controllers may not import the emulators.

Conventions (Modbus Application Protocol V1.1b3, Modbus over Serial Line V1.02):

* Addresses are 0-based PDU addresses (a manual's "30001"/"40001" register numbers minus the base).
* Bytes within a 16-bit word are big-endian, always. Values of 2 or 4 words are either
  ``"high_first"`` (most significant word at the lowest address) or ``"low_first"``
  (least significant word first, e.g. Carlo Gavazzi "LSW first"); for 64-bit values
  ``"low_first"`` reverses all four words.
* SI values: V, A, W (import positive), kWh, Hz, and state of charge as a fraction 0..1 (a map
  states it in "%" or "0.1 %"). ``raw = round(value * scale)`` for integer types; for float32,
  ``raw = value * scale`` (scale 1 for meters that report SI floats).

A device that takes commands — a battery inverter — also has a ``[setpoints]`` table: holding
registers a controller writes (function code 16, write multiple registers) and may read back
(function code 3), e.g. ``power_setpoint`` [W, + charging]. They must not overlap the measurements
when those are holding registers too.

A map file looks like::

    name = "Carlo Gavazzi EM24 DIN"
    function_code = 4                 # 4 input registers | 3 holding registers
    word_order = "low_first"          # "high_first" | "low_first"
    default_unit_id = 1               # optional, 1..247
    source = "where the map was learnt" # optional
    [registers]
    voltage_l1 = { address = 0x0000, type = "int32", scale = 10, unit = "0.1 V" }

``unit`` must agree with ``scale`` ("0.1 V" means scale 10, "mA" scale 1000, "0.01 kWh" scale
100), so a typo in either is caught when the file loads.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import struct
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "MAX_READ_COUNT",
    "QUANTITIES",
    "Register",
    "RegisterMap",
    "SETPOINTS",
    "STORAGE_QUANTITIES",
    "RegisterMapError",
    "decode",
    "encode",
    "encode_setpoint",
    "decode_setpoint",
    "load_register_map",
    "meter_models",
]

QUANTITIES = (
    "voltage_l1", "voltage_l2", "voltage_l3",
    "current_l1", "current_l2", "current_l3",
    "power_l1", "power_l2", "power_l3", "power_total",
    "import_kwh", "export_kwh", "frequency_hz",
)
# What a storage device measures besides what every meter does: its state of charge (0..1).
STORAGE_QUANTITIES = ("soc",)
_MEASUREMENTS = QUANTITIES + STORAGE_QUANTITIES
# What a controller may command (a battery inverter's active power setpoint: + charging, − discharging).
SETPOINTS = ("power_setpoint",)

WORD_ORDERS = ("high_first", "low_first")
FUNCTION_CODES = {3: "read holding registers", 4: "read input registers"}

# Modbus Application Protocol V1.1b3 §6.3/§6.4: one FC 3/4 request reads 1..125 (0x7D) registers.
MAX_READ_COUNT = 125
# Unused words between two registers are read rather than split into another request when there are
# at most this many. A request costs its framing, two 3.5-character silences and the device's turnaround
# (on RTU about what 16 words cost) and, on the controller's side, a whole round trip: products read an
# SDM630's 0x0000–0x004B or an EM24's 0x0000–0x005D in one request, across words the device does serve.
SPAN_MERGE_GAP = 40
# Modbus over Serial Line V1.02 §2.2: individual device addresses are 1..247.
UNIT_IDS = range(1, 248)


class RegisterMapError(ValueError):
    """A register map is malformed; the message reads ``"file: field: what was expected"``."""


class _NumberType(NamedTuple):
    codec: struct.Struct  # the value's big-endian bytes
    words: struct.Struct  # those bytes as 16-bit words, most significant first
    low: int | None  # integer range; None for float32
    high: int | None


def _integer(fmt: str, bits: int, signed: bool) -> _NumberType:
    low = -(1 << (bits - 1)) if signed else 0
    high = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    return _NumberType(struct.Struct(">" + fmt), struct.Struct(f">{bits // 16}H"), low, high)


_TYPES: dict[str, _NumberType] = {
    "float32": _NumberType(struct.Struct(">f"), struct.Struct(">2H"), None, None),
    "int16": _integer("h", 16, signed=True),
    "uint16": _integer("H", 16, signed=False),
    "int32": _integer("i", 32, signed=True),
    "uint32": _integer("I", 32, signed=False),
    "int64": _integer("q", 64, signed=True),
    "uint64": _integer("Q", 64, signed=False),
}

# The unit a quantity is stated in on a data sheet, and what one such unit is in our SI value.
_BASE_UNITS = {"voltage": ("V", 1.0), "current": ("A", 1.0), "power": ("W", 1.0),
               "import": ("Wh", 1e-3), "export": ("Wh", 1e-3), "frequency": ("Hz", 1.0), "soc": ("%", 1e-2)}
_PREFIXES = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6}
_UNIT = re.compile(r"(?:(?P<step>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*)?(?P<prefix>[mkM]?)(?P<base>V|A|W|Wh|Hz|%)")


def _unit_size(quantity: str, unit: str) -> float | None:
    """One raw count of ``unit`` in the quantity's SI unit ("0.1 kWh" for import_kwh → 0.1), or None."""
    match = _UNIT.fullmatch(unit.strip())
    base, base_size = _BASE_UNITS[quantity.split("_")[0]]
    if match is None or match["base"] != base:
        return None
    step = float(match["step"]) if match["step"] else 1.0
    return step * _PREFIXES[match["prefix"]] * base_size


@dataclass(frozen=True)
class Register:
    """Where and how a device keeps one quantity.

    ``scale`` turns an SI value into the raw number (``raw = round(value * scale)``; float32:
    ``value * scale``); ``unit`` is the raw number's unit as the manual writes it and must agree
    with ``scale`` ("0.1 V" ↔ 10). Raises :class:`RegisterMapError` ("field: expected …").
    """

    quantity: str
    address: int
    type: str
    scale: float
    unit: str

    def __post_init__(self) -> None:
        if self.quantity not in _MEASUREMENTS and self.quantity not in SETPOINTS:
            raise RegisterMapError(f"quantity: expected one of {', '.join(_MEASUREMENTS + SETPOINTS)}, "
                                   f"got {self.quantity!r}")
        if self.type not in _TYPES:
            raise RegisterMapError(f"type: expected one of {', '.join(_TYPES)}, got {self.type!r}")
        last = 0xFFFF - self.words + 1
        if isinstance(self.address, bool) or not isinstance(self.address, int) or not 0 <= self.address <= last:
            raise RegisterMapError(
                f"address: expected an integer 0..0x{last:04X} (a {self.type} needs {self.words} words "
                f"below 0x10000), got {self.address!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) \
                or not math.isfinite(self.scale) or self.scale <= 0:
            raise RegisterMapError(f"scale: expected a finite number > 0, got {self.scale!r}")
        size = _unit_size(self.quantity, self.unit) if isinstance(self.unit, str) else None
        if size is None:
            base = _BASE_UNITS[self.quantity.split("_")[0]][0]
            raise RegisterMapError(
                f"unit: expected a unit of {base}, e.g. {base!r}, '0.1 {base}', 'k{base}', got {self.unit!r}")
        if not math.isclose(self.scale * size, 1.0, rel_tol=1e-9):
            raise RegisterMapError(
                f"unit: {self.unit!r} means scale {1 / size:g}, but scale is {self.scale:g}")

    @property
    def words(self) -> int:
        """16-bit registers the value occupies: 1, 2 or 4."""
        return _TYPES[self.type].words.size // 2


@dataclass(frozen=True)
class RegisterMap:
    """One meter model's measurements: which function code serves them, in which word order, where.

    Raises :class:`RegisterMapError` ("field: expected …") on an inconsistent map (unknown
    function code or word order, a quantity twice, overlapping registers, a bad unit id).
    """

    model: str
    name: str
    function_code: int
    word_order: str
    registers: tuple[Register, ...]
    default_unit_id: int = 1
    source: str = ""
    setpoints: tuple[Register, ...] = ()  # holding registers a controller writes (FC 16)

    def __post_init__(self) -> None:
        if not self.name:
            raise RegisterMapError("name: expected the device's name, got an empty string")
        if self.function_code not in FUNCTION_CODES:
            codes = ", ".join(f"{code} ({what})" for code, what in FUNCTION_CODES.items())
            raise RegisterMapError(f"function_code: expected {codes}, got {self.function_code!r}")
        _check_word_order(self.word_order, "word_order")
        if isinstance(self.default_unit_id, bool) or self.default_unit_id not in UNIT_IDS:
            raise RegisterMapError(f"default_unit_id: expected 1..247, got {self.default_unit_id!r}")
        if not self.registers:
            raise RegisterMapError("registers: expected at least one register")
        seen: set[str] = set()
        for table, registers, names in (("registers", self.registers, _MEASUREMENTS),
                                        ("setpoints", self.setpoints, SETPOINTS)):
            for register in registers:
                if register.quantity not in names:
                    raise RegisterMapError(f"{table}.{register.quantity}: expected one of {', '.join(names)}")
                if register.quantity in seen:
                    raise RegisterMapError(f"{table}.{register.quantity}: appears twice")
                seen.add(register.quantity)
        # Setpoints are holding registers: they share an address space with holding-register measurements.
        same_table = self.setpoints if self.function_code == 3 else ()
        for table, registers in (("registers", (*self.registers, *same_table)), ("setpoints", self.setpoints)):
            ordered = sorted(registers, key=lambda register: register.address)
            for before, after in itertools.pairwise(ordered):
                if after.address < before.address + before.words:
                    where = "setpoints" if after in self.setpoints else table
                    raise RegisterMapError(
                        f"{where}.{after.quantity}: address 0x{after.address:04X} overlaps {before.quantity} "
                        f"(0x{before.address:04X}..0x{before.address + before.words - 1:04X})")

    def register(self, quantity: str) -> Register | None:
        """The register holding ``quantity`` (a measurement or a setpoint), or None when the device lacks it."""
        for register in (*self.registers, *self.setpoints):
            if register.quantity == quantity:
                return register
        return None

    def spans(self, max_count: int = MAX_READ_COUNT) -> tuple[tuple[int, int], ...]:
        """``(start, count)`` read requests that cover every register, in address order.

        Neighbouring registers share a request when the unused words between them are at most
        ``SPAN_MERGE_GAP`` (40) and the request stays within ``max_count`` words.
        """
        widest = max(register.words for register in self.registers)
        if not widest <= max_count <= MAX_READ_COUNT:
            raise ValueError(f"max_count must be {widest}..{MAX_READ_COUNT}, got {max_count}")
        first, *rest = sorted(self.registers, key=lambda register: register.address)
        spans: list[tuple[int, int]] = []
        start, end = first.address, first.address + first.words
        for register in rest:
            register_end = register.address + register.words
            if register.address - end <= SPAN_MERGE_GAP and register_end - start <= max_count:
                end = register_end
            else:
                spans.append((start, end - start))
                start, end = register.address, register_end
        spans.append((start, end - start))
        return tuple(spans)


def _check_word_order(word_order: object, field: str) -> str:
    if word_order not in WORD_ORDERS:
        raise RegisterMapError(f"{field}: expected {' or '.join(map(repr, WORD_ORDERS))}, got {word_order!r}")
    return str(word_order)


# --------------------------------------------------------------------------- #
# Codec                                                                       #
# --------------------------------------------------------------------------- #


def _raw_words(register: Register, value: float) -> tuple[int, ...]:
    """The register's words, most significant first."""
    number = _TYPES[register.type]
    scaled = float(value) * register.scale
    if number.low is None:
        try:
            packed = number.codec.pack(scaled)
        except OverflowError:  # beyond float32's range: IEEE-754 conversion gives ±inf
            packed = number.codec.pack(math.copysign(math.inf, scaled))
    else:
        assert number.high is not None
        if math.isnan(scaled):
            raw = 0
        elif scaled <= number.low:
            raw = number.low
        elif scaled >= number.high:
            raw = number.high
        else:
            raw = round(scaled)
        packed = number.codec.pack(raw)
    return number.words.unpack(packed)


def encode(rmap: RegisterMap, values: Mapping[str, float], word_order: str | None = None) -> dict[int, int]:
    """Address → 16-bit word for every word of every register in the map.

    A quantity missing from ``values`` encodes as 0; quantities the map lacks are ignored.
    ``word_order`` overrides the map's (a meter wired or configured with the wrong order).
    Integer types clamp to their range and encode NaN as 0; float32 keeps NaN and ±inf and turns
    finite values beyond its range into ±inf. Raises ValueError for a name not in QUANTITIES.
    """
    unknown = set(values).difference(_MEASUREMENTS)
    if unknown:
        raise ValueError(f"unknown quantities {sorted(unknown)}; expected names from QUANTITIES or STORAGE_QUANTITIES")
    low_first = _check_word_order(word_order or rmap.word_order, "word_order") == "low_first"
    words: dict[int, int] = {}
    for register in rmap.registers:
        raw = _raw_words(register, values.get(register.quantity, 0.0))
        for offset, word in enumerate(reversed(raw) if low_first else raw):
            words[register.address + offset] = word
    return words


def decode(rmap: RegisterMap, words: Mapping[int, int], word_order: str | None = None) -> dict[str, float]:
    """SI values for every register whose words are all in ``words`` (others are absent).

    ``word_order`` overrides the map's. Raises ValueError for a word outside 0..0xFFFF.
    """
    low_first = _check_word_order(word_order or rmap.word_order, "word_order") == "low_first"
    values: dict[str, float] = {}
    for register in rmap.registers:
        value = _decode_register(register, words, low_first)
        if value is not None:
            values[register.quantity] = value
    return values


def _decode_register(register: Register, words: Mapping[int, int], low_first: bool) -> float | None:
    try:
        raw = [words[register.address + offset] for offset in range(register.words)]
    except KeyError:
        return None
    if low_first:
        raw.reverse()
    number = _TYPES[register.type]
    try:
        (value,) = number.codec.unpack(number.words.pack(*raw))
    except struct.error:
        raise ValueError(
            f"{register.quantity} at 0x{register.address:04X}: words {raw} are not all 0..0xFFFF") from None
    return value / register.scale


def encode_setpoint(rmap: RegisterMap, quantity: str, value: float) -> tuple[int, list[int]]:
    """``(address, words)`` that write ``value`` (SI) to the setpoint ``quantity`` in the map's word order.

    Raises ValueError when the map has no such setpoint.
    """
    register = next((r for r in rmap.setpoints if r.quantity == quantity), None)
    if register is None:
        raise ValueError(f"{rmap.name} has no setpoint {quantity!r} (setpoints: "
                         f"{', '.join(r.quantity for r in rmap.setpoints) or 'none'})")
    raw = list(_raw_words(register, value))
    if rmap.word_order == "low_first":
        raw.reverse()
    return register.address, raw


def decode_setpoint(rmap: RegisterMap, quantity: str, words: Mapping[int, int]) -> float | None:
    """The SI value of the setpoint ``quantity`` from ``words`` (address → word), None if not all present."""
    register = next((r for r in rmap.setpoints if r.quantity == quantity), None)
    if register is None:
        return None
    return _decode_register(register, words, rmap.word_order == "low_first")


# --------------------------------------------------------------------------- #
# Map files                                                                   #
# --------------------------------------------------------------------------- #

_REQUIRED = {"name": str, "function_code": int, "word_order": str, "registers": dict}
_OPTIONAL = {"default_unit_id": int, "source": str, "setpoints": dict}
_REGISTER_FIELDS = {"address": int, "type": str, "scale": (int, float), "unit": str}
_KIND = {str: "a string", int: "an integer", dict: "a table", (int, float): "a number"}


def _bundled() -> Any:
    return resources.files("fixtures") / "meters"


def meter_models() -> list[str]:
    """The bundled meter models (``fixtures/meters/*.toml``), sorted."""
    return sorted(entry.name[:-len(".toml")] for entry in _bundled().iterdir() if entry.name.endswith(".toml"))


def _take(table: dict[str, Any], field: str, kind: Any, where: str, required: bool) -> Any:
    if field not in table:
        if required:
            raise RegisterMapError(f"{where}{field}: missing, expected {_KIND[kind]}")
        return None
    value = table[field]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise RegisterMapError(f"{where}{field}: expected {_KIND[kind]}, got {value!r}")
    return value


def _check_fields(table: dict[str, Any], known: Mapping[str, Any], where: str) -> None:
    for field in table:
        if field not in known:
            raise RegisterMapError(f"{where}{field}: unknown field, expected one of {', '.join(known)}")


def _register(quantity: str, entry: Any, table: str = "registers", names: tuple[str, ...] = _MEASUREMENTS) -> Register:
    where = f"{table}.{quantity}."
    if quantity not in names:
        raise RegisterMapError(f"{table}.{quantity}: unknown quantity, expected one of {', '.join(names)}")
    if not isinstance(entry, dict):
        raise RegisterMapError(f"{table}.{quantity}: expected a table {{ address, type, scale, unit }}")
    _check_fields(entry, _REGISTER_FIELDS, where)
    fields = {field: _take(entry, field, kind, where, required=True) for field, kind in _REGISTER_FIELDS.items()}
    fields["scale"] = float(fields["scale"])
    try:
        return Register(quantity=quantity, **fields)
    except RegisterMapError as error:
        raise RegisterMapError(f"{where}{error}") from None


def _parse(model: str, text: str) -> RegisterMap:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RegisterMapError(f"not valid TOML: {error}") from None
    _check_fields(document, {**_REQUIRED, **_OPTIONAL}, "")
    fields = {field: _take(document, field, kind, "", required=True) for field, kind in _REQUIRED.items()}
    for field, kind in _OPTIONAL.items():
        value = _take(document, field, kind, "", required=False)
        if value is not None:
            fields[field] = value
    registers = tuple(_register(quantity, entry) for quantity, entry in fields.pop("registers").items())
    setpoints = tuple(_register(quantity, entry, "setpoints", SETPOINTS)
                      for quantity, entry in fields.pop("setpoints", {}).items())
    return RegisterMap(model=model, registers=tuple(sorted(registers, key=lambda r: r.address)),
                       setpoints=setpoints, **fields)


def load_register_map(model_or_path: str | os.PathLike[str]) -> RegisterMap:
    """A bundled model by name ("sdm630" → ``fixtures/meters/sdm630.toml``) or a map file by path.

    The model of a file is its name without ``.toml``. Raises :class:`RegisterMapError`
    ("file: field: expected …") for an unknown model or a malformed file.
    """
    text_name = os.fspath(model_or_path)
    if text_name.endswith(".toml") or os.sep in text_name or "/" in text_name:
        path = Path(text_name)
        origin, model = str(path), path.stem
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise RegisterMapError(f"{origin}: cannot read: {error.strerror or error}") from None
    else:
        entry = _bundled() / f"{text_name}.toml"
        if not entry.is_file():
            raise RegisterMapError(
                f"{text_name}: unknown meter model, expected one of {', '.join(meter_models())} or a .toml path")
        origin, model, text = str(entry), text_name, entry.read_text(encoding="utf-8")
    try:
        return _parse(model, text)
    except RegisterMapError as error:
        raise RegisterMapError(f"{origin}: {error}") from None
