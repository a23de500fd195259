"""Scenarios as data: the validated model of a site, its stations, vehicles and events.

This module owns the schema of ``fixtures/scenarios/*.toml`` (pydantic v2 models, every one
``extra="forbid"`` so a typo is an error, not a silently ignored key), the time and duration
syntax used in those files, finding the bundled scenarios, and turning every failure into one
line: ``ScenarioError("<file>: <field path>: <what was expected>")``.
It does not own what the numbers do (``bench.site``, ``emulators``) nor the verdicts
(``bench.checks``). Its only I/O is reading the file it is asked to load and listing
``fixtures/scenarios/``.

Conventions
- Units live in attribute names: ``_a`` amps per phase, ``_v`` volts, ``_kwh`` kWh, ``_s`` seconds.
- Durations are written in TOML WITHOUT the ``_s`` suffix, as text: ``duration = "12h"``,
  ``step = "1s"``, ``response_lag = "2s"``, ``settle = "20s"`` (a bare number means seconds).
  They become floats in seconds on the attribute WITH the suffix (``Clock.duration_s``).
  Python code may use either name (``Clock(start=..., duration_s=3600)``); a file only the first.
- Moments in a run (vehicle ``arrival``/``departure``, event ``at``) are written as
  * a time of day ``"HH:MM"`` or ``"HH:MM:SS"`` (or a TOML local time ``07:30:00``), UTC like
    ``clock.start``, on clock.start's date; a time earlier than clock.start means the next day;
  * an offset from the start, ``"+2h30m"``;
  * a TOML date-time / RFC 3339 string, or a bare number of seconds since the start;
  and are stored as seconds since ``clock.start`` (``arrival_s``, ``departure_s``, ``at_s``).
- ``site.building_load`` is a daily step profile ``[["HH:MM", amps], ...]`` (UTC); each value
  holds until the next entry and the last one wraps past midnight to the first.
  ``tariff.import_price_per_kwh`` (time-of-use) is the same kind of profile of prices.
- ``[site.pv]``, ``[site.battery]`` and ``[tariff]`` are optional; a scenario without them runs as
  before. Day-ahead prices (``tariff.day_ahead_per_kwh``) are one array per day from clock.start's
  date (UTC), 24 or 96 prices each, and must cover every day the run touches; when a controller
  learns them is :mod:`bench.tariff`'s rule (published the day before at ``day_ahead_publish``).
"""

from __future__ import annotations

import difflib
import importlib.resources
import math
import re
import tomllib
import types
import typing
from contextvars import ContextVar
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from controllers.register_map import RegisterMapError, load_register_map, meter_models

__all__ = [
    "BatteryConfig",
    "Breaker",
    "Checks",
    "Clock",
    "Event",
    "MeterConfig",
    "PVConfig",
    "Scenario",
    "ScenarioError",
    "Site",
    "Station",
    "TariffConfig",
    "Vehicle",
    "bundled_scenarios",
    "find_scenario",
    "load_scenario",
    "parse_duration",
    "parse_scenario",
]


class ScenarioError(ValueError):
    """A scenario that cannot be used. ``str()`` is one line: ``<file>: <field path>: <expected>``.

    ``file`` and ``field`` are None when unknown (a scenario built in Python has no file; a TOML
    syntax error has a line instead of a field: ``x.toml: line 12: <tomllib message>``).
    """

    def __init__(self, expected: str, *, file: str | Path | None = None, field: str | None = None):
        self.file = None if file is None else str(file)
        self.field = field
        self.expected = " ".join(str(expected).split())  # one line, whatever came in
        super().__init__(": ".join(p for p in (self.file, self.field, self.expected) if p))


# --------------------------------------------------------------------------- durations and times

_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION_ORDER = list(_DURATION_UNITS)
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|d|h|m|s)")
_NUMBER = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*")
_DURATION_HINT = "a duration like '15s', '90m', '1h30m', '500ms' or a number of seconds"


def parse_duration(text: str | int | float) -> float:
    """Seconds in ``text``: "12h", "90m", "15s", "1h30m", "500ms", "2d"; a bare number is seconds.

    Units are lower-case, go from largest to smallest and appear once each ("1h30m", not "30m1h").
    Negative, infinite and NaN durations are refused. Raises ValueError whose message reads as
    the tail of a ScenarioError ("expected a duration like ... (got '12 hours')").
    """
    bad = ValueError(f"expected {_DURATION_HINT} (got {_got(text)})")
    if isinstance(text, bool):
        raise bad
    if isinstance(text, int | float):
        seconds = float(text)
    elif isinstance(text, str):
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        else:
            seconds, pos, last_rank = 0.0, 0, -1
            while pos < len(text):
                match = _DURATION_PART.match(text, pos)
                if match is None:
                    if text[pos:].strip():
                        raise bad
                    break
                rank = _DURATION_ORDER.index(match[2])
                if rank <= last_rank:
                    raise bad
                seconds += float(match[1]) * _DURATION_UNITS[match[2]]
                pos, last_rank = match.end(), rank
            if last_rank < 0:
                raise bad
    else:
        raise bad
    if not math.isfinite(seconds) or seconds < 0:
        raise bad
    return seconds


def _fmt_duration(seconds: float) -> str:
    """Inverse of parse_duration for messages: 43200 → '12h', 5400 → '1h30m', 0.5 → '500ms'."""
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    whole = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    rest = whole + (seconds - int(seconds))
    if rest or not parts:
        parts.append(f"{rest:g}s")
    return "".join(parts)


# The clock start of the scenario being validated, so that a vehicle's "07:30" can become
# seconds since the start while the Vehicle model is validated (set by Scenario's wrap validator).
_RUN_START: ContextVar[datetime | None] = ContextVar("evbench_scenario_run_start", default=None)

_TIME_OF_DAY = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")
_MOMENT_HINT = (
    "a time of day 'HH:MM' or 'HH:MM:SS', an offset from the start like '+2h30m', "
    "or a date-time"
)


def _to_utc(value: Any) -> datetime:
    """A datetime in UTC from a TOML date-time, a date (midnight) or an RFC 3339 string; naive → UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"expected an RFC 3339 date-time like 2026-03-02T07:00:00Z (got {_got(value)})"
            ) from None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise ValueError(f"expected an RFC 3339 date-time like 2026-03-02T07:00:00Z (got {_got(value)})")


def _parse_time_of_day(text: str) -> time | None:
    match = _TIME_OF_DAY.fullmatch(text.strip())
    if match is None:
        return None
    hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    return time(hour, minute, second)


def _moment(value: Any) -> float:
    """Seconds since clock.start for an arrival/departure/event time (syntax: module docstring)."""
    if isinstance(value, bool):
        raise ValueError(f"expected {_MOMENT_HINT} (got {_got(value)})")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"expected seconds since the start >= 0 (got {_got(value)})")
        return float(value)
    start, original = _RUN_START.get(), value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("+"):
            try:
                return parse_duration(text[1:])
            except ValueError:
                raise ValueError(
                    f"expected an offset from the start like '+2h30m' (got {_got(value)})"
                ) from None
        tod = _parse_time_of_day(text)
        if tod is not None:
            value = tod
        else:
            try:
                value = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"expected {_MOMENT_HINT} (got {_got(value)})") from None
    if isinstance(value, datetime | time) and start is None:
        raise ValueError(
            f"{_got(original)} needs a valid clock.start; write an offset like '+1h30m' instead"
        )
    if isinstance(value, datetime):
        seconds = (_to_utc(value) - start).total_seconds()
        if seconds < 0:
            raise ValueError(f"is before clock.start {start.isoformat()} (got {_got(original)})")
        return seconds
    if isinstance(value, time):
        moment = datetime.combine(start.date(), value.replace(tzinfo=None), tzinfo=UTC)
        if moment < start:
            moment += timedelta(days=1)
        return (moment - start).total_seconds()
    raise ValueError(f"expected {_MOMENT_HINT} (got {_got(value)})")


def _when(seconds: float, start: datetime | None = None) -> str:
    """A moment for messages: '07:30 (+30m)' when the start is known, else '+30m'."""
    start = start or _RUN_START.get()
    offset = f"+{_fmt_duration(seconds)}"
    if start is None:
        return offset
    moment = start + timedelta(seconds=seconds)
    text = moment.strftime("%H:%M:%S" if moment.second else "%H:%M")
    days = (moment.date() - start.date()).days
    if days:
        text += " next day" if days == 1 else f" day {days + 1}"
    return f"{text} ({offset})"


# --------------------------------------------------------------------------- field types


class _Located(ValueError):
    """A ValueError raised inside a model validator that points below the model, e.g. at
    ``("vehicles", 3, "station")``; pydantic keeps the exception in the error's ctx and
    ``_to_scenario_error`` appends ``loc`` to pydantic's own location."""

    def __init__(self, loc: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.loc = loc


def _duration_field(*, gt: float | None = None, ge: float | None = None, le: float | None = None):
    """A duration attribute: text or number in, float seconds out, bounds checked in seconds."""

    def check(seconds: float) -> float:
        if gt is not None and not seconds > gt:
            raise ValueError(f"must be longer than {_fmt_duration(gt)} (got {_fmt_duration(seconds)})")
        if ge is not None and not seconds >= ge:
            raise ValueError(f"must be at least {_fmt_duration(ge)} (got {_fmt_duration(seconds)})")
        if le is not None and not seconds <= le:
            raise ValueError(f"must be at most {_fmt_duration(le)} (got {_fmt_duration(seconds)})")
        return seconds

    return Annotated[float, BeforeValidator(parse_duration), AfterValidator(check)]


# Numbers from TOML are numbers: "32" or "32A" is an error, not a silent conversion.
Number = Annotated[float, Field(strict=True)]
Whole = Annotated[int, Field(strict=True)]
Moment = Annotated[float, BeforeValidator(_moment)]
Identifier = Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9_-]+$")]
Seconds = _duration_field(ge=0)
PositiveSeconds = _duration_field(gt=0)
StepSeconds = _duration_field(gt=0, le=60)
LagSeconds = _duration_field(ge=0, le=30)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- models


class Clock(_Model):
    """When the run starts, how long it lasts and the physics step.

    TOML: ``start = 2026-03-02T07:00:00Z``, ``duration = "12h"``, ``step = "1s"``.
    """

    start: Annotated[datetime, BeforeValidator(_to_utc)]  # timezone-aware, UTC
    duration_s: PositiveSeconds = Field(validation_alias="duration")  # [s]
    step_s: StepSeconds = Field(1.0, validation_alias="step")  # [s]


class Breaker(_Model):
    """The site's main breaker (thermal-magnetic; IEC 60898-1 curves B, C, D)."""

    rating_a: Number = Field(gt=0)  # [A] per phase
    curve: Literal["B", "C", "D"] = "C"


def _meter_model(value: Any) -> Any:
    """A register map bundled under fixtures/meters/ (by name) or a map file (by path)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a meter model name (got {_got(value)})")
    if value not in meter_models() and not Path(value).is_file():
        # the bundled meters, not the devices that take commands (battery inverters)
        meters = [model for model in meter_models() if not load_register_map(model).setpoints]
        raise ValueError(f"unknown meter model {value!r}; expected one of {', '.join(meters)} "
                         "or the path of a register-map file")
    return value


MeterModelName = Annotated[str, BeforeValidator(_meter_model)]


class MeterConfig(_Model):
    """The site meter a load manager reads: a real device's register map over Modbus TCP (127.0.0.1 unless told
    otherwise) or Modbus RTU on a serial port, and how the device behaves."""

    model: MeterModelName = "sdm630"  # fixtures/meters/<model>.toml
    host: str = "127.0.0.1"
    port: Whole = Field(0, ge=0, le=65535)  # 0 = an ephemeral port chosen at start
    serial: str | None = None  # a serial device (RTU) instead of TCP, e.g. "/dev/ttyUSB0"
    baudrate: Whole = Field(9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    unit_id: Whole = Field(1, ge=1, le=247)  # Modbus slave address range
    update_interval_s: PositiveSeconds = Field(1.0, validation_alias="update_interval")  # [s] register refresh
    delay_s: Seconds = Field(0.0, validation_alias="delay")  # [s] a refresh shows the site as it was this long ago
    noise: Number = Field(0.0, ge=0, le=0.1)  # relative 1-sigma noise on V, A, W
    ct_ratio: Number | None = Field(None, gt=0)  # current transformer ratio, e.g. 40 for 200/5 A


def _building_load(value: Any) -> Any:
    """[["HH:MM", amps], ...] → sorted [(second of day, amps), ...]; numbers as seconds also pass."""
    return _daily_steps(value, "amps", negative=False)


def _daily_prices(value: Any) -> Any:
    """[["HH:MM", price], ...] → sorted [(second of day, price per kWh), ...]; prices may be negative."""
    steps = _daily_steps(value, "price", negative=True)
    if not steps:
        raise ValueError('expected at least one ["HH:MM", price] pair')
    return steps


def _daily_steps(value: Any, what: str, negative: bool) -> list[tuple[float, float]]:
    """A daily step profile [["HH:MM", number], ...] → sorted [(second of day, number), ...]."""
    if not isinstance(value, list | tuple):
        raise ValueError(f'expected an array of ["HH:MM", {what}] pairs (got {_got(value)})')
    steps: dict[float, float] = {}
    for i, entry in enumerate(value):
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise _Located((i,), f'expected a pair ["HH:MM", {what}] (got {_got(entry)})')
        when, amps = entry
        if isinstance(when, str) and (tod := _parse_time_of_day(when)) is not None:
            second = tod.hour * 3600.0 + tod.minute * 60.0 + tod.second
        elif isinstance(when, time):
            second = when.hour * 3600.0 + when.minute * 60.0 + when.second
        elif isinstance(when, int | float) and not isinstance(when, bool) and 0 <= when < 86400:
            second = float(when)
        else:
            raise _Located((i, 0), f"expected a time of day 'HH:MM' (got {_got(when)})")
        if isinstance(amps, bool) or not isinstance(amps, int | float) or not math.isfinite(amps):
            raise _Located((i, 1), f"expected a number{' of amps' if what == 'amps' else ''} (got {_got(amps)})")
        if amps < 0 and not negative:
            raise _Located((i, 1), f"must be >= 0 (got {_got(amps)})")
        if second in steps:
            raise _Located((i, 0), f"a second entry for {_got(when)}")
        steps[second] = float(amps)
    return sorted(steps.items())


def _time_of_day(value: Any) -> Any:
    """'HH:MM' (or a TOML local time) → second of the day."""
    if isinstance(value, time):
        return value.hour * 3600.0 + value.minute * 60.0 + value.second
    if isinstance(value, str) and (tod := _parse_time_of_day(value)) is not None:
        return tod.hour * 3600.0 + tod.minute * 60.0 + tod.second
    raise ValueError(f"expected a time of day 'HH:MM' (got {_got(value)})")


TimeOfDay = Annotated[float, BeforeValidator(_time_of_day)]


def _pv_profile(value: Any) -> Any:
    """[["HH:MM", fraction of peak], ...] → sorted [(second of day, fraction)], fractions 0..1."""
    steps = _daily_steps(value, "fraction", negative=False)
    if len(steps) < 2:
        raise ValueError('expected at least two ["HH:MM", fraction] points (linear between them, 0 outside)')
    for i, (_second, fraction) in enumerate(steps):
        if fraction > 1:
            raise ValueError(f"fractions of the peak are 0..1 (got {fraction:g} at point {i} in time order)")
    return steps


class PVConfig(_Model):
    """The site's PV system (``[site.pv]``): peak and a clear-sky day, sunrise to sunset (UTC) or a profile.

    The bell and the profile are :mod:`bench.pv`'s; ``cloud`` events scale the output.
    """

    peak_kw: Number = Field(gt=0)  # [kWp] the inverter's peak output
    sunrise_s: TimeOfDay = Field(6 * 3600.0, validation_alias="sunrise")  # [s of day, UTC]
    sunset_s: TimeOfDay = Field(20 * 3600.0, validation_alias="sunset")  # [s of day, UTC]
    # [(second of day, fraction of peak)] instead of the bell; TOML key `profile`
    profile_s: Annotated[list[tuple[float, float]] | None, BeforeValidator(_pv_profile)] = Field(
        None, validation_alias="profile")

    @model_validator(mode="after")
    def _daylight(self) -> PVConfig:
        if self.profile_s is None and not self.sunset_s > self.sunrise_s:
            raise _Located(("sunset",), f"must be after sunrise {_fmt_tod(self.sunrise_s)} "
                                        f"(got {_fmt_tod(self.sunset_s)}; times are UTC)")
        return self


def _battery_model(value: Any) -> Any:
    """A register map with the battery inverter's quantities (soc, power_total, a power_setpoint)."""
    value = _meter_model(value)
    try:
        rmap = load_register_map(value)
    except RegisterMapError as error:
        raise ValueError(str(error)) from None
    missing = [q for q in ("soc", "power_total") if rmap.register(q) is None]
    missing += [q for q in ("power_setpoint",) if q not in {r.quantity for r in rmap.setpoints}]
    if missing:
        raise ValueError(f"register map {value!r} lacks {', '.join(missing)}; a battery inverter needs them "
                         "(e.g. model = \"battery_inverter\")")
    return value


class BatteryConfig(_Model):
    """The site's stationary battery (``[site.battery]``) and its inverter on the site meter's bus or gateway.

    The controller commands it through the inverter's power setpoint register (Modbus unit ``unit_id``,
    register map ``model``); without commands it idles. Efficiency is one way (:mod:`bench.battery`).
    """

    capacity_kwh: Number = Field(gt=0)  # [kWh]
    max_charge_kw: Number = Field(gt=0)  # [kW]
    max_discharge_kw: Number = Field(gt=0)  # [kW]
    efficiency: Number = Field(0.95, gt=0, le=1)
    initial_soc: Number = Field(0.5, ge=0, le=1)
    min_soc: Number = Field(0.1, ge=0, lt=1)
    max_soc: Number = Field(0.95, gt=0, le=1)
    unit_id: Whole = Field(2, ge=1, le=247)
    model: Annotated[str, BeforeValidator(_battery_model)] = "battery_inverter"

    @model_validator(mode="after")
    def _soc_window(self) -> BatteryConfig:
        if not self.max_soc > self.min_soc:
            raise _Located(("max_soc",), f"must be above min_soc {self.min_soc:g} (got {self.max_soc:g})")
        if not self.min_soc <= self.initial_soc <= self.max_soc:
            raise _Located(("initial_soc",), f"must be within min_soc..max_soc {self.min_soc:g}..{self.max_soc:g} "
                                             f"(got {self.initial_soc:g})")
        return self


def _fmt_tod(second: float) -> str:
    return f"{int(second // 3600):02d}:{int(second % 3600 // 60):02d}"


class Site(_Model):
    """The grid connection: phases, voltage, the limit the controller must hold, breaker, base load, PV, battery."""

    phases: Literal[1, 3] = 3
    voltage_v: Number = Field(230.0, ge=100, le=500)  # [V] phase to neutral
    # [A] per phase the controller must hold; may exceed breaker.rating_a (a planner's choice).
    limit_a: Number = Field(gt=0)
    breaker: Breaker
    # daily step profile [(second of day UTC, A per phase)], sorted; TOML key `building_load`
    building_load_s: Annotated[list[tuple[float, float]], BeforeValidator(_building_load)] = Field(
        default_factory=list, validation_alias="building_load"
    )
    meter: MeterConfig = Field(default_factory=MeterConfig)
    pv: PVConfig | None = None
    battery: BatteryConfig | None = None

    def building_load_at(self, second_of_day: float) -> float:
        """[A] per phase of the base profile at a second of the day (UTC); 0 without a profile."""
        if not self.building_load_s:
            return 0.0
        second = second_of_day % 86400.0
        amps = self.building_load_s[-1][1]  # wraps from the previous day
        for start, value in self.building_load_s:
            if start > second:
                break
            amps = value
        return amps


class Station(_Model):
    """An emulated OCPP charging station. Its connectors share ``max_current_a``."""

    id: Identifier
    ocpp: Literal["1.6", "2.0.1"] = "1.6"
    connectors: Whole = Field(1, ge=1, le=8)
    max_current_a: Number = Field(ge=6, le=630)  # [A] per phase; 6 A is IEC 61851-1's minimum
    phases: Literal[1, 3] = 3
    # which grid phase feeds the station's L1, L2, L3 (matters for 1-phase EVs and balance)
    rotation: Literal["L1L2L3", "L2L3L1", "L3L1L2"] = "L1L2L3"
    # [s] MeterValueSampleInterval, 0 = off
    meter_value_interval_s: Seconds = Field(60.0, validation_alias="meter_value_interval")
    # [s] HeartbeatInterval until the CSMS says otherwise, 0 = off
    heartbeat_interval_s: Seconds = Field(300.0, validation_alias="heartbeat_interval")
    # a sub-meter of this station on the site meter's bus/gateway: its Modbus unit id, and its model (default: the
    # site meter's); a controller may read it instead of the station's OCPP meter values
    meter_unit: Whole | None = Field(None, ge=1, le=247)
    meter_model: MeterModelName | None = None
    # the installer's priority group for the controller: higher is served first (fleet above staff)
    priority: Whole = 0


class Vehicle(_Model):
    """An EV that plugs into ``station``/``connector`` at ``arrival_s`` and leaves at ``departure_s``."""

    id: Identifier
    station: str
    connector: Whole = Field(1, ge=1)
    arrival_s: Moment = Field(validation_alias="arrival")  # [s] since clock.start
    departure_s: Moment = Field(validation_alias="departure")  # [s] since clock.start
    battery_kwh: Number = Field(gt=0)  # [kWh] usable capacity
    initial_soc: Number = Field(ge=0, lt=1)  # [0..1) at arrival
    target_soc: Number = Field(gt=0, le=1)  # (initial_soc..1] wanted by departure
    max_current_a: Number = Field(ge=6)  # [A] per phase, on-board charger limit
    phases: Literal[1, 3] = 3
    taper_knee_soc: Number = Field(0.8, gt=0, le=1)  # CC-CV taper starts here
    # [s] until the EV follows a new offer (EVerest: up to ~6 s for some EVs)
    response_lag_s: LagSeconds = Field(2.0, validation_alias="response_lag")
    id_tag: str = ""  # "" → "TAG-<id>"
    # ISO 15118: the EV states departure, energy and current bounds (a 2.0.1 station forwards them)
    iso15118: bool = False
    discharge_max_current_a: Number = Field(0.0, ge=0)  # [A] per phase; > 0 = bidirectional (V2G)
    min_soc: Number = Field(0.0, ge=0, lt=1)  # never discharged below this

    @model_validator(mode="after")
    def _consistent(self) -> Vehicle:
        if not self.departure_s > self.arrival_s:
            raise _Located(
                ("departure",),
                f"must be after arrival {_when(self.arrival_s)} (got {_when(self.departure_s)})",
            )
        if not self.target_soc > self.initial_soc:
            raise _Located(
                ("target_soc",),
                f"must be above initial_soc {self.initial_soc:g} (got {self.target_soc:g})",
            )
        if not self.id_tag:
            self.id_tag = f"TAG-{self.id}"
        return self

    @property
    def requested_kwh(self) -> float:
        """[kWh] the EV wants: battery × (target_soc − initial_soc)."""
        return self.battery_kwh * (self.target_soc - self.initial_soc)


class Event(_Model):
    """A scheduled change at ``at_s``.

    - ``site_limit``, ``building_load``: a new site limit / building load ``value_a`` [A per phase];
    - ``external_limit``: the site's local energy manager sets ``station``'s
      ChargingStationExternalConstraints to ``value_a`` (OCPP 2.0.1 stations only; K12);
    - ``vehicle_needs``: the driver of ``vehicle`` changes its ``departure`` and/or ``target_soc``
      (an ISO 15118 EV renegotiates; K15–K17);
    - ``meter_fault``: the site meter (or ``station``'s sub-meter) goes ``fault`` — unreachable, frozen,
      garbage, word_order (served with its words swapped) or slow (answers too late) — until a
      ``meter_restored`` event for the same meter;
    - ``cloud``: from then on the PV system gives ``factor`` (0..1) of its clear-sky output (1 = clear
      again); no controller is told (the forecast it has is the clear sky).
    """

    at_s: Moment = Field(validation_alias="at")  # [s] since clock.start
    kind: Literal["site_limit", "building_load", "external_limit", "vehicle_needs", "meter_fault", "meter_restored",
                  "cloud"]
    value_a: Number | None = Field(None, ge=0)
    fault: Literal["unreachable", "frozen", "garbage", "word_order", "slow"] | None = None
    station: str | None = None
    vehicle: str | None = None
    departure_s: Moment | None = Field(None, validation_alias="departure")  # [s] since clock.start
    target_soc: Number | None = Field(None, gt=0, le=1)
    factor: Number | None = Field(None, ge=0, le=1)  # cloud: share of the clear-sky PV output

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Event:
        wanted = {"site_limit": ("value_a",), "building_load": ("value_a",),
                  "external_limit": ("value_a", "station"), "vehicle_needs": ("vehicle",),
                  "meter_fault": ("fault",), "meter_restored": (), "cloud": ("factor",)}[self.kind]
        for name in wanted:
            if getattr(self, name) is None:
                raise _Located((name,), f"required for kind = {self.kind!r}")
        if self.kind == "vehicle_needs" and self.departure_s is None and self.target_soc is None:
            raise _Located(("departure",), "a vehicle_needs event changes departure and/or target_soc")
        return self


class Checks(_Model):
    """Parameters of the checks (SMART_CHARGING.md §2, §3)."""

    # [s] SITE-LIMIT tolerates excursions shorter than this (EV response + meter delay + controller period)
    settle_s: Seconds = Field(20.0, validation_alias="settle")
    # [s] STATION-LIMIT: EVerest declares over-current after 7 s; we allow offer lag + EV lag
    station_response_s: Seconds = Field(10.0, validation_alias="station_response")
    overcurrent_ratio: Number = Field(1.1, ge=1)  # EVerest: 110 % of the offer ...
    overcurrent_margin_a: Number = Field(0.5, ge=0)  # ... + 0.5 A
    min_current_a: Number = Field(6.0, ge=0)  # IEC 61851-1: an AC limit in (0, 6) A is not a current
    site_tolerance_a: Number = Field(0.5, ge=0)  # [A] measurement slack on the site limit
    # PROFILE-UPDATE: identical re-sends of a refused profile request tolerated within the window below
    profile_retry_limit: Whole = Field(3, ge=0)
    # [s] PROFILE-UPDATE: the window over which those re-sends are counted
    profile_retry_window_s: Seconds = Field(60.0, validation_alias="profile_retry_window")
    # [s] NEEDS-ANSWERED: a TxProfile must follow NotifyEVChargingNeeds this soon (the OCTT waits 60 s, TC_K_53)
    needs_answer_s: Seconds = Field(60.0, validation_alias="needs_answer")
    # OSCILLATION: a connector's applied limit may change this often within any rolling hour (one a minute on
    # average; on the bundled scenarios a non-flapping equal_share peaks at 23-34, a limit flapping every 10-20 s
    # at 240)
    max_limit_changes_per_hour: Whole = Field(60, ge=1)
    # [A] OSCILLATION: a change counts once the limit has moved this far from where it last counted
    oscillation_min_step_a: Number = Field(1.0, ge=0)
    # [s] REALLOCATE: capacity an EV frees (it leaves, is full, or draws clearly less than offered) is offered to the
    # EVs held below what they could draw this soon (errata §2.46: 47/47 A → 94 A when one of two EVs leaves)
    reallocate_s: Seconds = Field(60.0, validation_alias="reallocate")
    # [s] DR-RESPONSE: a site limit lowered by a grid signal is met this soon (grid-limit smoke test: 2–10 s)
    dr_ramp_s: Seconds = Field(10.0, validation_alias="dr_ramp")
    # [W] DR-RESPONSE: a limit of 0 is met when the site draws less than this
    dr_zero_w: Number = Field(10.0, gt=0)
    # [s] DR-RESPONSE: once the limit is raised again, EVs that want energy draw more than dr_restore_w this soon
    # (grid-limit smoke test: above 3 kW within 10–15 s)
    dr_restore_s: Seconds = Field(15.0, validation_alias="dr_restore")
    dr_restore_w: Number = Field(3000.0, ge=0)


class ControllerSettings(_Model):
    """The installer's timing settings of the controller, as products expose them; absent = the controller's own
    defaults. A controller acting faster than its meter refreshes is the classic way to make limits oscillate."""

    period_s: PositiveSeconds | None = Field(None, validation_alias="period")  # [s] between allocations
    meter_poll_s: PositiveSeconds | None = Field(None, validation_alias="meter_poll")  # [s] between meter reads
    # [controller.options]: the controller's own settings, handed to it verbatim (SiteConfig.options)
    options: dict[str, Any] = Field(default_factory=dict)


def _day_ahead(value: Any) -> Any:
    """[[24 or 96 prices], ...] per day → lists of floats; prices may be negative, must be finite."""
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"expected an array of days, each an array of 24 or 96 prices (got {_got(value)})")
    days = []
    for d, day in enumerate(value):
        if not isinstance(day, list | tuple) or len(day) not in (24, 96):
            size = len(day) if isinstance(day, list | tuple) else _got(day)
            raise _Located((d,), f"expected 24 hourly or 96 quarter-hourly prices (got {size})")
        for i, price in enumerate(day):
            if isinstance(price, bool) or not isinstance(price, int | float) or not math.isfinite(price):
                raise _Located((d, i), f"expected a price per kWh (got {_got(price)})")
        days.append([float(price) for price in day])
    return days


class TariffConfig(_Model):
    """The site's tariff (``[tariff]``): an import price — time-of-use or day-ahead —, export price, demand charge.

    Prices are per kWh in ``currency``; the demand charge is per kW of the billing period's highest
    15-minute average import (SMART_CHARGING.md §2). When day-ahead prices become known: :mod:`bench.tariff`.
    """

    currency: str = Field("EUR", min_length=1, max_length=8)
    # time-of-use: [(second of day UTC, price per kWh)], the last wrapping past midnight; TOML key as named
    import_price_per_kwh: Annotated[list[tuple[float, float]] | None, BeforeValidator(_daily_prices)] = None
    # day-ahead: one list per day from clock.start's date, 24 or 96 prices per kWh
    day_ahead_per_kwh: Annotated[list[list[float]] | None, BeforeValidator(_day_ahead)] = None
    day_ahead_publish_s: TimeOfDay = Field(12 * 3600.0, validation_alias="day_ahead_publish")  # [s of day, UTC]
    export_price_per_kwh: Number = 0.0
    demand_charge_per_kw: Number = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _one_import_price(self) -> TariffConfig:
        if (self.import_price_per_kwh is None) == (self.day_ahead_per_kwh is None):
            raise _Located(("import_price_per_kwh",),
                           "give exactly one import price: import_price_per_kwh (time-of-use, "
                           '[["HH:MM", price], ...]) or day_ahead_per_kwh (one array of 24 or 96 prices per day)')
        return self


class Scenario(_Model):
    """One site over one run: the root of a scenario file.

    ``events`` are kept sorted by time (stable, so same-time events keep file order).
    ``source`` is the file it was loaded from (set by load_scenario, never read from the file).
    """

    name: str = Field(min_length=1)
    description: str = ""
    clock: Clock
    site: Site
    stations: list[Station] = Field(min_length=1)
    vehicles: list[Vehicle] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    checks: Checks = Field(default_factory=Checks)
    controller: ControllerSettings = Field(default_factory=ControllerSettings)
    tariff: TariffConfig | None = None
    seed: Whole = 0
    source: Path | None = Field(None, exclude=True, repr=False)

    _by_id: dict[str, Station] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _with_run_start(cls, data: Any, handler: Any) -> Scenario:
        """Make clock.start known to the vehicles' and events' time fields while they validate."""
        start = None
        clock = data.get("clock") if isinstance(data, dict) else None
        if isinstance(clock, Clock):
            start = clock.start
        elif isinstance(clock, dict):
            try:
                start = _to_utc(clock.get("start"))
            except ValueError:
                start = None  # clock.start's own error is reported first
        token = _RUN_START.set(start)
        try:
            return handler(data)
        finally:
            _RUN_START.reset(token)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        by_id: dict[str, tuple[int, Station]] = {}
        for i, station in enumerate(self.stations):
            if station.id in by_id:
                raise _Located(
                    ("stations", i, "id"),
                    f"duplicate station id {station.id!r} (also stations[{by_id[station.id][0]}])",
                )
            by_id[station.id] = (i, station)
            if station.phases == 3 and self.site.phases == 1:
                raise _Located(("stations", i, "phases"), "a 3-phase station on a 1-phase site")
            if station.meter_unit is not None:
                taken = {self.site.meter.unit_id: "the site meter",
                         **({self.site.battery.unit_id: "the battery inverter"} if self.site.battery else {})}
                taken.update({s.meter_unit: s.id for s in self.stations[:i] if s.meter_unit is not None})
                if station.meter_unit in taken:
                    raise _Located(("stations", i, "meter_unit"),
                                   f"unit {station.meter_unit} is already {taken[station.meter_unit]}'s")

        if self.site.battery is not None and self.site.battery.unit_id == self.site.meter.unit_id:
            raise _Located(("site", "battery", "unit_id"), f"unit {self.site.battery.unit_id} is the site meter's")
        end, start = self.clock.duration_s, self.clock.start
        if self.tariff is not None and self.tariff.day_ahead_per_kwh is not None:
            last = start + timedelta(seconds=end) - timedelta(microseconds=1)
            needed = (last.date() - start.date()).days + 1
            given = len(self.tariff.day_ahead_per_kwh)
            if given < needed:
                raise _Located(("tariff", "day_ahead_per_kwh"),
                               f"the run touches {needed} days from {start.date().isoformat()} (UTC) but prices are "
                               f"given for {given}; add a day of prices for every day the run touches")
        seen: dict[str, int] = {}
        plugged: dict[tuple[str, int], list[tuple[float, float, int]]] = {}
        for i, ev in enumerate(self.vehicles):
            if ev.id in seen:
                raise _Located(
                    ("vehicles", i, "id"), f"duplicate vehicle id {ev.id!r} (also vehicles[{seen[ev.id]}])"
                )
            seen[ev.id] = i
            if ev.station not in by_id:
                raise _Located(
                    ("vehicles", i, "station"),
                    f"unknown station {ev.station!r} (stations are {_id_list(by_id)})",
                )
            station = by_id[ev.station][1]
            if ev.connector > station.connectors:
                raise _Located(
                    ("vehicles", i, "connector"),
                    f"{station.id} has {station.connectors} connector"
                    f"{'s' if station.connectors > 1 else ''} (got {ev.connector})",
                )
            if ev.arrival_s >= end:
                raise _Located(
                    ("vehicles", i, "arrival"),
                    f"arrives {_when(ev.arrival_s, start)}, after the run ends {_when(end, start)} "
                    "(a time of day before clock.start means the next day)",
                )
            # IdToken: OCPP 1.6 CiString20Type; OCPP 2.0.1 IdTokenType.idToken is 36 characters
            longest = 20 if station.ocpp == "1.6" else 36
            if len(ev.id_tag) > longest:
                raise _Located(
                    ("vehicles", i, "id_tag"),
                    f"OCPP {station.ocpp} allows at most {longest} characters (got {ev.id_tag!r}); "
                    "set a shorter id_tag",
                )
            plugged.setdefault((ev.station, ev.connector), []).append((ev.arrival_s, ev.departure_s, i))

        for (station_id, connector), stays in plugged.items():
            stays.sort()
            for (a0, d0, i0), (a1, _d1, i1) in zip(stays, stays[1:]):
                if a1 < d0:
                    first, second = self.vehicles[i0], self.vehicles[i1]
                    raise _Located(
                        ("vehicles", i1, "arrival"),
                        f"{second.id} arrives {_when(a1, start)} on {station_id} connector {connector} "
                        f"while {first.id} is plugged in there ({_when(a0, start)} to {_when(d0, start)})",
                    )

        for i, event in enumerate(self.events):
            if event.at_s > end:
                raise _Located(
                    ("events", i, "at"),
                    f"is {_when(event.at_s, start)}, after the run ends {_when(end, start)}",
                )
            if event.kind == "external_limit":
                if event.station not in by_id:
                    raise _Located(("events", i, "station"),
                                   f"unknown station {event.station!r} (stations are {_id_list(by_id)})")
                if by_id[event.station][1].ocpp != "2.0.1":
                    raise _Located(("events", i, "station"),
                                   f"{event.station} speaks OCPP {by_id[event.station][1].ocpp}; external "
                                   "constraints exist in OCPP 2.0.1 only")
            if event.kind in ("meter_fault", "meter_restored") and event.station is not None:
                if event.station not in by_id:
                    raise _Located(("events", i, "station"),
                                   f"unknown station {event.station!r} (stations are {_id_list(by_id)})")
                if by_id[event.station][1].meter_unit is None:
                    raise _Located(("events", i, "station"),
                                   f"{event.station} has no sub-meter (set meter_unit on the station); leave station "
                                   "out for the site meter")
            if event.kind == "cloud" and self.site.pv is None:
                raise _Located(("events", i, "kind"), "a cloud event needs a PV system ([site.pv])")
            if event.kind == "vehicle_needs":
                if event.vehicle not in seen:
                    raise _Located(("events", i, "vehicle"), f"unknown vehicle {event.vehicle!r}")
                if not self.vehicles[seen[event.vehicle]].iso15118:
                    raise _Located(("events", i, "vehicle"),
                                   f"{event.vehicle} is not an ISO 15118 EV (set iso15118 = true): a basic "
                                   "IEC 61851 EV cannot tell the station its needs changed")
        self.events.sort(key=lambda e: e.at_s)
        self._by_id = {station.id: station for _, station in by_id.values()}
        return self

    def station(self, station_id: str) -> Station:
        """The station with this id; KeyError if there is none."""
        station = self._by_id.get(station_id)
        if station is None or station.id != station_id:  # stale after someone edited stations
            self._by_id = {s.id: s for s in self.stations}
            station = self._by_id.get(station_id)
        if station is None:
            raise KeyError(f"unknown station {station_id!r} (stations are {_id_list(self._by_id)})")
        return station

    @property
    def end_s(self) -> float:
        """[s] since clock.start when the run ends (= clock.duration_s)."""
        return self.clock.duration_s


# --------------------------------------------------------------------------- loading


def parse_scenario(data: dict[str, Any], source: str | Path | None = None) -> Scenario:
    """A Scenario from already-parsed TOML data; ScenarioError (naming ``source``) if invalid."""
    if isinstance(data, dict) and "source" in data:
        raise ScenarioError("set by the loader from the file's path; remove it", file=source, field="source")
    try:
        # A file spells durations and moments one way only: `duration`, never `duration_s`.
        scenario = Scenario.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise _to_scenario_error(exc, source) from None
    if source is not None:
        scenario.source = Path(source)
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate one scenario file. Every problem is a one-line ScenarioError."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ScenarioError("no such file", file=path) from None
    except OSError as exc:
        raise ScenarioError(f"cannot read: {exc.strerror or exc}", file=path) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"not UTF-8 text (byte {exc.start})", file=path) from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if where:
            message = f"line {where[1]}: {message[: where.start()]} (column {where[2]})"
        raise ScenarioError(message, file=path) from None
    return parse_scenario(data, path)


def _scenario_dir() -> Path:
    return Path(str(importlib.resources.files("fixtures") / "scenarios"))


def bundled_scenarios() -> list[str]:
    """Names of the scenarios shipped in fixtures/scenarios/, sorted ("workplace", ...)."""
    return sorted(p.stem for p in _scenario_dir().glob("*.toml"))


def find_scenario(name_or_path: str) -> Path:
    """A scenario file: ``name_or_path`` if that file exists, else the bundled scenario of that
    name ("workplace" or "workplace.toml"); else ScenarioError listing the bundled names."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = name_or_path[:-5] if name_or_path.endswith(".toml") else name_or_path
    bundled = bundled_scenarios()
    if name in bundled:
        return _scenario_dir() / f"{name}.toml"
    what = "not a file" if path.exists() else "no such file"
    raise ScenarioError(
        f"{what}, and no bundled scenario of that name (bundled: {', '.join(bundled) or 'none'})",
        file=name_or_path,
    )


# --------------------------------------------------------------------------- error messages


def _got(value: Any) -> str:
    text = _num(value) if isinstance(value, int | float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return repr(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _id_list(ids: Any) -> str:
    ids = list(ids)
    if len(ids) > 12:
        return f"{', '.join(ids[:6])}, ..., {', '.join(ids[-2:])} ({len(ids)} in all)"
    return ", ".join(ids)


def _loc_text(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _unit_hint(loc: tuple[str | int, ...]) -> str:
    name = next((p for p in reversed(loc) if isinstance(p, str)), "")
    if name.endswith("_a"):
        return "a number of amps"
    if name.endswith("_v"):
        return "a number of volts"
    if name.endswith("_kwh"):
        return "a number of kWh"
    if name.endswith("soc"):
        return "a fraction between 0 and 1"
    return "a number"


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class whose keys live at ``loc`` (for 'did you mean' on unknown keys)."""
    model: Any = Scenario
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = next(
            (f for n, f in model.model_fields.items() if part in (n, f.validation_alias)), None
        )
        if field is None:
            return None
        model = field.annotation
        while typing.get_origin(model) in (list, typing.Union, types.UnionType):
            model = next((a for a in typing.get_args(model) if a is not type(None)), None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _keys_of(model: type[BaseModel]) -> list[str]:
    return [
        f.validation_alias if isinstance(f.validation_alias, str) else n
        for n, f in model.model_fields.items()
        if not f.exclude
    ]


def _explain(err: dict[str, Any], loc: tuple[str | int, ...]) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    got = f" (got {_got(value)})"
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        if model is None:
            return "unknown key"
        keys = _keys_of(model)
        close = difflib.get_close_matches(str(loc[-1]), keys, n=1, cutoff=0.6)
        if close:
            return f"unknown key; did you mean {close[0]!r}?"
        return f"unknown key (expected one of: {', '.join(keys)})"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind in ("float_type", "float_parsing"):
        return f"expected {_unit_hint(loc)}{got}"
    if kind == "finite_number":
        return f"expected a finite number{got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number{got}"
    if kind == "greater_than":
        return f"must be > {_num(ctx['gt'])}{got}"
    if kind == "greater_than_equal":
        return f"must be >= {_num(ctx['ge'])}{got}"
    if kind == "less_than":
        return f"must be < {_num(ctx['lt'])}{got}"
    if kind == "less_than_equal":
        return f"must be <= {_num(ctx['le'])}{got}"
    if kind == "literal_error":
        return f"expected {ctx['expected']}{got}"
    if kind == "string_type":
        return f"expected text in quotes{got}"
    if kind == "string_pattern_mismatch":
        return f"expected letters, digits, '_' or '-' only{got}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters{got}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a table{got}"
    if kind in ("list_type", "tuple_type"):
        return f"expected an array{got}"
    if kind == "too_short":
        return f"expected at least {ctx['min_length']} entr{'y' if ctx['min_length'] == 1 else 'ies'}"
    return f"{err['msg'][:1].lower()}{err['msg'][1:]}{got}"


def _to_scenario_error(exc: ValidationError, source: str | Path | None) -> ScenarioError:
    """The first pydantic error as a ScenarioError with a TOML-style field path.

    A required key that is missing beside an unknown key is usually that key misspelt
    (``limt_a = 80``), so the unknown key is reported instead: it carries the "did you mean".
    """
    errors = exc.errors()
    err = errors[0]
    if err["type"] == "missing":
        parent = tuple(err["loc"][:-1])
        err = next(
            (e for e in errors if e["type"] == "extra_forbidden" and tuple(e["loc"][:-1]) == parent),
            err,
        )
    loc = tuple(err["loc"])
    located = (err.get("ctx") or {}).get("error")
    if isinstance(located, _Located):
        loc += located.loc
    return ScenarioError(_explain(err, loc), file=source, field=_loc_text(loc) or None)
