"""Tests of meter register maps (controllers/register_map.py) and the bundled fixtures/meters/*.toml."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.register_map import (
    QUANTITIES,
    STORAGE_QUANTITIES,
    SPAN_MERGE_GAP,
    Register,
    RegisterMap,
    RegisterMapError,
    decode,
    encode,
    load_register_map,
    meter_models,
)

MODELS = meter_models()

# The integer ranges the Modbus data types have (two's complement for the signed ones).
TYPE_RANGES = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}

# Realistic site values: the ranges a grid-connection meter sees, export included.
REALISTIC = {
    "voltage": st.floats(0, 300),
    "current": st.floats(-100, 2000),
    "power": st.floats(-500_000, 500_000),
    "import": st.floats(0, 1e7),
    "export": st.floats(0, 1e7),
    "frequency": st.floats(45, 65),
    "soc": st.floats(0, 1),
}
site_values = st.fixed_dictionaries({quantity: REALISTIC[quantity.split("_")[0]]
                                     for quantity in QUANTITIES + STORAGE_QUANTITIES})


def words_at(words: dict[int, int], address: int, count: int) -> list[int]:
    return [words[address + offset] for offset in range(count)]


# --------------------------------------------------------------------------- #
# The bundled maps                                                            #
# --------------------------------------------------------------------------- #


def test_the_three_required_models_are_bundled():
    assert {"sdm630", "em24", "b23"} <= set(MODELS)
    assert MODELS == sorted(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_every_bundled_map_loads_and_measures_every_quantity(model):
    rmap = load_register_map(model)
    assert rmap.model == model
    assert rmap.name and rmap.source
    # every meter quantity; a storage device (battery_inverter) measures its state of charge as well
    assert {register.quantity for register in rmap.registers} - set(QUANTITIES) <= set(STORAGE_QUANTITIES)
    assert set(QUANTITIES) <= {register.quantity for register in rmap.registers}
    assert [register.address for register in rmap.registers] == sorted(r.address for r in rmap.registers)


@pytest.mark.parametrize("model", MODELS)
def test_a_map_file_loads_the_same_by_path_as_by_name(model):
    path = Path(__file__).resolve().parent.parent / "fixtures" / "meters" / f"{model}.toml"
    assert load_register_map(path) == load_register_map(str(path)) == load_register_map(model)


def test_sdm630_keeps_the_addresses_the_bench_has_always_served():
    # Eastron SDM630 Modbus protocol, input registers 30001.. (0-based PDU addresses here).
    manual = {
        "voltage_l1": 0x00, "voltage_l2": 0x02, "voltage_l3": 0x04,
        "current_l1": 0x06, "current_l2": 0x08, "current_l3": 0x0A,
        "power_l1": 0x0C, "power_l2": 0x0E, "power_l3": 0x10, "power_total": 0x34,
        "frequency_hz": 0x46, "import_kwh": 0x48, "export_kwh": 0x4A,
    }
    rmap = load_register_map("sdm630")
    assert (rmap.function_code, rmap.word_order) == (4, "high_first")
    assert {r.quantity: r.address for r in rmap.registers} == manual
    assert {r.type for r in rmap.registers} == {"float32"}


def test_sdm630_encodes_ieee754_float32_high_word_first():
    words = encode(load_register_map("sdm630"), {"voltage_l1": 230.0, "frequency_hz": 50.0, "import_kwh": 1234.5})
    assert words_at(words, 0x00, 2) == [0x4366, 0x0000]
    assert words_at(words, 0x46, 2) == [0x4248, 0x0000]
    assert words_at(words, 0x48, 2) == [0x449A, 0x5000]


def test_em24_encodes_scaled_int32_low_word_first():
    rmap = load_register_map("em24")
    assert (rmap.function_code, rmap.word_order) == (4, "low_first")
    words = encode(rmap, {"voltage_l1": 230.1, "current_l1": -12.345, "import_kwh": 123456.7, "frequency_hz": 50.0})
    assert words_at(words, 0x00, 2) == [2301, 0]
    assert words_at(words, 0x0C, 2) == [0xCFC7, 0xFFFF]  # -12345 mA, two's complement
    assert words_at(words, 0x42, 2) == [0xD687, 0x0012]  # 1234567 × 0.1 kWh
    assert words_at(words, 0x37, 1) == [500]  # a single int16 word: no word order


def test_b23_encodes_holding_registers_with_a_uint64_energy_across_four_words():
    rmap = load_register_map("b23")
    assert (rmap.function_code, rmap.word_order) == (3, "high_first")
    words = encode(rmap, {"import_kwh": 1e8, "power_total": -1000.5, "voltage_l1": 230.1, "frequency_hz": 49.98})
    assert words_at(words, 0x5000, 4) == [0x0000, 0x0002, 0x540B, 0xE400]  # 10**10 × 0.01 kWh
    assert words_at(words, 0x5B14, 2) == [0xFFFE, 0x792E]  # -100050 × 0.01 W
    assert words_at(words, 0x5B00, 2) == [0, 2301]
    assert words_at(words, 0x5B2C, 1) == [4998]


@pytest.mark.parametrize(("model", "expected"), [
    ("sdm630", ((0x0000, 0x4C),)),
    ("em24", ((0x0000, 0x5E),)),
    ("b23", ((0x5000, 8), (0x5B00, 45))),
])
def test_known_spans(model, expected):
    assert load_register_map(model).spans() == expected


# --------------------------------------------------------------------------- #
# Codec                                                                       #
# --------------------------------------------------------------------------- #


def assert_within_resolution(register: Register, decoded: float, value: float) -> None:
    if register.type == "float32":
        assert math.isclose(decoded, value, rel_tol=2**-24, abs_tol=2**-149), (register, value, decoded)
        return
    low, high = TYPE_RANGES[register.type]
    representable = min(max(value, low / register.scale), high / register.scale)
    assert abs(decoded - representable) <= 0.5 / register.scale * (1 + 1e-9), (register, value, decoded)


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=60, deadline=None)
@given(values=site_values, word_order=st.sampled_from([None, "high_first", "low_first"]))
def test_encode_then_decode_returns_every_quantity_within_the_devices_resolution(model, values, word_order):
    rmap = load_register_map(model)
    words = encode(rmap, values, word_order)
    assert set(words) == {r.address + offset for r in rmap.registers for offset in range(r.words)}
    assert all(0 <= word <= 0xFFFF for word in words.values())
    decoded = decode(rmap, words, word_order)
    assert set(decoded) == {register.quantity for register in rmap.registers}
    for register in rmap.registers:
        assert_within_resolution(register, decoded[register.quantity], values[register.quantity])


@pytest.mark.parametrize("model", MODELS)
def test_the_word_order_override_reverses_every_multi_word_register(model):
    rmap = load_register_map(model)
    values = {"voltage_l1": 231.4, "current_l2": 17.25, "power_total": -7300.0, "import_kwh": 98765.43}
    swapped_order = "high_first" if rmap.word_order == "low_first" else "low_first"
    normal, swapped = encode(rmap, values), encode(rmap, values, word_order=swapped_order)
    for register in rmap.registers:
        assert words_at(swapped, register.address, register.words) == \
            words_at(normal, register.address, register.words)[::-1]
    misread = decode(rmap, swapped)
    assert misread["voltage_l1"] != pytest.approx(231.4, rel=0.01)  # a reader with the map's order is fooled


def test_integers_clamp_to_their_type_and_nan_encodes_as_zero():
    em24, b23 = load_register_map("em24"), load_register_map("b23")
    words = encode(em24, {"voltage_l1": 1e9, "voltage_l2": -1e9, "current_l1": math.nan, "power_total": math.inf})
    assert words_at(words, 0x00, 2) == [0xFFFF, 0x7FFF]  # int32 max, low word first
    assert words_at(words, 0x02, 2) == [0x0000, 0x8000]  # int32 min
    assert words_at(words, 0x0C, 2) == [0, 0]
    assert words_at(words, 0x28, 2) == [0xFFFF, 0x7FFF]
    words = encode(b23, {"current_l1": -5.0, "frequency_hz": 1000.0, "import_kwh": -1.0})
    assert words_at(words, 0x5B0C, 2) == [0, 0]  # uint32 cannot go below 0
    assert words_at(words, 0x5B2C, 1) == [0xFFFF]  # 100000 × 0.01 Hz does not fit a uint16
    assert words_at(words, 0x5000, 4) == [0, 0, 0, 0]


def test_float32_keeps_nan_and_infinity_and_overflows_to_infinity():
    rmap = load_register_map("sdm630")
    decoded = decode(rmap, encode(rmap, {"voltage_l1": math.nan, "current_l1": -math.inf, "power_total": 1e39}))
    assert math.isnan(decoded["voltage_l1"])
    assert decoded["current_l1"] == -math.inf
    assert decoded["power_total"] == math.inf


def test_a_quantity_missing_from_the_values_encodes_as_zero():
    for model in MODELS:
        rmap = load_register_map(model)
        assert set(encode(rmap, {}).values()) == {0}
        assert set(decode(rmap, encode(rmap, {})).values()) == {0.0}


def test_encode_refuses_a_name_that_is_not_a_quantity_and_an_unknown_word_order():
    rmap = load_register_map("sdm630")
    with pytest.raises(ValueError, match="voltage_4"):
        encode(rmap, {"voltage_4": 230.0})
    with pytest.raises(ValueError, match="word_order"):
        encode(rmap, {}, word_order="big_endian")


def test_decode_returns_only_registers_whose_words_are_all_present():
    rmap = load_register_map("em24")
    words = encode(rmap, {"voltage_l1": 230.0, "import_kwh": 10.0})
    del words[0x43]  # the high word of import_kwh
    decoded = decode(rmap, {address: word for address, word in words.items() if address < 0x44})
    assert decoded["voltage_l1"] == 230.0
    assert "import_kwh" not in decoded and "export_kwh" not in decoded


def test_decode_refuses_a_word_beyond_16_bits():
    rmap = load_register_map("sdm630")
    words = encode(rmap, {})
    words[0x06] = 0x10000
    with pytest.raises(ValueError, match="current_l1"):
        decode(rmap, words)


# --------------------------------------------------------------------------- #
# Spans                                                                       #
# --------------------------------------------------------------------------- #

WORDS_OF = {"float32": 2, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4}


def assert_spans_cover(rmap: RegisterMap, spans: tuple[tuple[int, int], ...], max_count: int) -> None:
    assert all(1 <= count <= max_count for _, count in spans)
    assert all(start + count <= next_start for (start, count), (next_start, _) in itertools.pairwise(spans))
    for register in rmap.registers:
        assert any(start <= register.address and register.address + register.words <= start + count
                   for start, count in spans), register
    starts = {register.address for register in rmap.registers}
    ends = {register.address + register.words for register in rmap.registers}
    assert all(start in starts and start + count in ends for start, count in spans)  # no words read for nothing


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("max_count", [4, 10, 125])
def test_bundled_spans_cover_every_register_within_the_request_limit(model, max_count):
    rmap = load_register_map(model)
    assert_spans_cover(rmap, rmap.spans(max_count), max_count)


@st.composite
def register_maps(draw) -> RegisterMap:
    quantities = draw(st.lists(st.sampled_from(QUANTITIES), min_size=1, unique=True))
    address = draw(st.integers(0, 0x100))
    registers = []
    for quantity in quantities:
        kind = draw(st.sampled_from(sorted(WORDS_OF)))
        registers.append(Register(quantity, address, kind, 1.0, "kWh" if "kwh" in quantity else
                                  {"voltage": "V", "current": "A", "power": "W", "frequency": "Hz"}
                                  [quantity.split("_")[0]]))
        address += WORDS_OF[kind] + draw(st.integers(0, 40))
    return RegisterMap("random", "Random meter", 4, "high_first", tuple(registers))


@settings(max_examples=200, deadline=None)
@given(rmap=register_maps(), max_count=st.integers(4, 125))
def test_spans_cover_any_map_and_merge_only_small_gaps(rmap, max_count):
    spans = rmap.spans(max_count)
    assert_spans_cover(rmap, spans, max_count)
    ordered = sorted(rmap.registers, key=lambda register: register.address)
    for (start, count), (next_start, _) in itertools.pairwise(spans):
        # Two spans stay apart only when the gap is wide or one request could not hold both.
        next_first = next(register for register in ordered if register.address == next_start)
        assert next_start - (start + count) > SPAN_MERGE_GAP or next_first.address + next_first.words - start > max_count


def test_spans_refuse_a_limit_that_cannot_hold_a_register_or_breaks_modbus():
    rmap = load_register_map("b23")  # has 4-word energy registers
    with pytest.raises(ValueError, match="max_count"):
        rmap.spans(3)
    with pytest.raises(ValueError, match="max_count"):
        rmap.spans(126)


# --------------------------------------------------------------------------- #
# Malformed map files                                                         #
# --------------------------------------------------------------------------- #

VALID = """\
name = "Test meter"
function_code = 4
word_order = "high_first"
[registers]
voltage_l1 = { address = 0x0000, type = "float32", scale = 1, unit = "V" }
current_l1 = { address = 0x0002, type = "int32", scale = 1000, unit = "mA" }
import_kwh = { address = 0x0010, type = "uint64", scale = 100, unit = "0.01 kWh" }
"""


def write_map(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "test-meter.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_valid_test_map_loads(tmp_path):
    rmap = load_register_map(write_map(tmp_path, VALID))
    assert rmap.model == "test-meter"
    assert (rmap.default_unit_id, rmap.source) == (1, "")
    assert rmap.register("current_l1") == Register("current_l1", 2, "int32", 1000.0, "mA")
    assert rmap.register("frequency_hz") is None


@pytest.mark.parametrize(("old", "new", "field"), [
    ('word_order = "high_first"\n', "", "word_order: missing"),
    ('word_order = "high_first"', 'word_order = "high-first"', "word_order: expected 'high_first' or 'low_first'"),
    ('word_order = "high_first"', 'word_ordr = "high_first"', "word_ordr: unknown field"),
    ("function_code = 4", "function_code = 6", "function_code: expected"),
    ("function_code = 4", 'function_code = "4"', "function_code: expected an integer"),
    ('name = "Test meter"', 'name = ""', "name: expected"),
    ("[registers]", "default_unit_id = 0\n[registers]", "default_unit_id: expected 1..247"),
    ("voltage_l1 =", "voltage_l4 =", "registers.voltage_l4: unknown quantity"),
    ('type = "float32"', 'type = "float16"', "registers.voltage_l1.type: expected one of"),
    ('type = "float32", ', "", "registers.voltage_l1.type: missing"),
    ("address = 0x0002", "address = 0x0001", "registers.current_l1: address 0x0001 overlaps voltage_l1"),
    ("address = 0x0010", "address = 0xFFFE", "registers.import_kwh.address: expected an integer 0..0xFFFC"),
    ("address = 0x0010", "address = -1", "registers.import_kwh.address"),
    ("address = 0x0010", "address = true", "registers.import_kwh.address: expected an integer"),
    ("scale = 1000", "scale = 0", "registers.current_l1.scale: expected a finite number > 0"),
    ("scale = 1000", "scale = 100", "registers.current_l1.unit: 'mA' means scale 1000, but scale is 100"),
    ('unit = "0.01 kWh"', 'unit = "0.01 kVArh"', "registers.import_kwh.unit: expected a unit of Wh"),
    ('unit = "V"', 'unit = "A"', "registers.voltage_l1.unit"),
    ("[registers]\n", "[registers]\nvoltage_l2 = 5\n", "registers.voltage_l2: expected a table"),
    ('unit = "V" }', 'unit = "V", offset = 3 }', "registers.voltage_l1.offset: unknown field"),
    ("function_code = 4", "function_code = ", "not valid TOML"),
])
def test_a_malformed_map_file_is_refused_naming_file_and_field(tmp_path, old, new, field):
    assert old in VALID
    path = write_map(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(RegisterMapError) as error:
        load_register_map(path)
    assert str(error.value).startswith(f"{path}: ")
    assert field in str(error.value)


def test_a_map_without_registers_is_refused(tmp_path):
    path = write_map(tmp_path, VALID.split("[registers]")[0] + "[registers]\n")
    with pytest.raises(RegisterMapError, match="registers: expected at least one register"):
        load_register_map(path)


def test_an_unknown_model_or_missing_file_is_refused():
    with pytest.raises(RegisterMapError, match="unknown meter model, expected one of .*sdm630"):
        load_register_map("sdm999")
    with pytest.raises(RegisterMapError, match="cannot read"):
        load_register_map("/nonexistent/meter.toml")
    with pytest.raises(ValueError):  # RegisterMapError is a ValueError for callers that catch broadly
        load_register_map("sdm999")


def test_a_map_built_in_code_is_checked_like_a_file():
    voltage = Register("voltage_l1", 0, "float32", 1.0, "V")
    with pytest.raises(RegisterMapError, match="registers.voltage_l1: appears twice"):
        RegisterMap("m", "M", 4, "high_first", (voltage, Register("voltage_l1", 8, "float32", 1.0, "V")))
    with pytest.raises(RegisterMapError, match="unit: '0.1 V' means scale 10"):
        Register("voltage_l1", 0, "int32", 100.0, "0.1 V")
    with pytest.raises(RegisterMapError, match="quantity: expected one of"):
        Register("voltage", 0, "float32", 1.0, "V")
