"""The smart-charging profile engine of one charging station (OCPP 1.6 and 2.0.1): which profiles are installed and
what they allow.

This module owns, for one station:

* the typed form of a ``ChargingProfile`` (:class:`ChargingProfile`, :class:`ChargingSchedule`,
  :class:`SchedulePeriod`) and its translation from and to the wire JSON of either version (:func:`parse_profile`,
  :func:`profile_to_json` for 1.6; :func:`parse_profile_201`, :func:`profile_to_json_201` for 2.0.1);
* the set of installed profiles and the rules for installing and removing them
  (:meth:`ProfileEngine.set_profile`, :meth:`ProfileEngine.set_external_constraints`, :meth:`ProfileEngine.clear`,
  :meth:`ProfileEngine.end_transaction`) and for finding them (:meth:`ProfileEngine.select`);
* the limit they impose: the composite per-phase current of a connector (1.6) or EVSE (2.0.1) at an instant
  (:meth:`ProfileEngine.limit_a`), the station-wide bound on all of them together
  (:meth:`ProfileEngine.max_profile_limit_a`) and the schedule answered to GetCompositeSchedule
  (:meth:`ProfileEngine.composite_schedule`);
* how long that limit holds (:func:`_steady_span`): the engine answers the per-second question from a cache until the
  next period start, validity bound or recurrence, or until a profile changes.

One engine serves both versions (DESIGN.md: "one profile engine, two thin protocol adapters"): ``version`` picks the
purposes and the installation rules; the stacking and combining are the same. In 2.0.1 a "connector" is an EVSE and
EVSE 0 is the station.

It is pure in the h11 sense: synchronous, deterministic, no I/O, no clock (every call is told ``now``), no imports
from the ``ocpp`` package. The station adapters own the websocket and translate messages into these calls.

Units: times are floats, seconds since the Unix epoch (UTC); durations and ``startPeriod`` are whole seconds [s];
rate unit ``"A"`` is amperes per phase [A], ``"W"`` is watts in total [W]; every ``*_a`` result is amperes per phase.

References (OCPP 1.6 Edition 2): §3.13.1 charging profile purposes, §3.13.2 stacking, §3.13.3 combining purposes,
§5.5 ClearChargingProfile, §5.7 GetCompositeSchedule, §5.16 SetChargingProfile, §7.8 ChargingProfile,
§7.9 ChargingProfileKindType, §7.10 ChargingProfilePurposeType, §7.12 ChargingRateUnitType, §7.13 ChargingSchedule,
§7.14 ChargingSchedulePeriod, §7.26 RecurrencyKindType, §9.4 smart-charging configuration keys.
(OCPP 2.0.1 Edition 3, Part 2): use case K01 SetChargingProfile and its requirements K01.FR.xx, K08
GetCompositeSchedule, K09 GetChargingProfiles, K10 ClearChargingProfile; the reason codes follow EVerest libocpp.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

__all__ = [
    "CHARGING_STATION_MAX",
    "EXTERNAL_CONSTRAINTS",
    "ChargingProfile",
    "ChargingSchedule",
    "ProfileEngine",
    "ProfileError",
    "SchedulePeriod",
    "SetResult",
    "parse_profile",
    "parse_profile_201",
    "profile_to_json",
    "profile_to_json_201",
]

# §7.10 ChargingProfilePurposeType, §7.9 ChargingProfileKindType, §7.26 RecurrencyKindType,
# §7.12 ChargingRateUnitType.
CHARGE_POINT_MAX = "ChargePointMaxProfile"
TX_DEFAULT = "TxDefaultProfile"
TX = "TxProfile"
PURPOSES = (CHARGE_POINT_MAX, TX_DEFAULT, TX)
# 2.0.1 ChargingProfilePurposeEnumType: the max profile is renamed, and external constraints (set by a local energy
# manager, never by the CSMS: K01.FR.22) are added.
CHARGING_STATION_MAX = "ChargingStationMaxProfile"
EXTERNAL_CONSTRAINTS = "ChargingStationExternalConstraints"
PURPOSES_201 = (CHARGING_STATION_MAX, TX_DEFAULT, TX, EXTERNAL_CONSTRAINTS)
VERSIONS = ("1.6", "2.0.1")
KINDS = ("Absolute", "Recurring", "Relative")
RECURRENCY_KINDS = ("Daily", "Weekly")
RATE_UNITS = ("A", "W")

# §7.26: Daily = "the schedule restarts every 24 hours", Weekly = "every 7 days", counted from startSchedule.
RECURRENCE_S = {"Daily": 86_400, "Weekly": 604_800}

# 2.0.1 ChargingProfileType: transactionId is an identifierString[0..36]; chargingSchedule holds 1..3 schedules.
TRANSACTION_ID_MAX_LENGTH = 36
MAX_SCHEDULES_201 = 3

# Each connector keeps one stack per slot; both versions' max profiles share the first.
_MAX_SLOT, _DEFAULT_SLOT, _TX_SLOT, _EXTERNAL_SLOT = range(4)
_PURPOSE_INDEX = {
    CHARGE_POINT_MAX: _MAX_SLOT,
    CHARGING_STATION_MAX: _MAX_SLOT,
    TX_DEFAULT: _DEFAULT_SLOT,
    TX: _TX_SLOT,
    EXTERNAL_CONSTRAINTS: _EXTERNAL_SLOT,
}


class ProfileError(ValueError):
    """A charging profile that does not follow OCPP 1.6 §7.8/§7.13/§7.14, or the types of 2.0.1 ChargingProfileType.

    ``str()`` is ``"<json path>: <what was expected>"``, e.g.
    ``"chargingProfile.chargingSchedule.chargingSchedulePeriod[1].startPeriod: periods must ascend"``.
    """

    def __init__(self, path: str, expected: str) -> None:
        super().__init__(f"{path}: {expected}")
        self.path = path
        self.expected = expected


@dataclass(frozen=True)
class SchedulePeriod:
    """§7.14 ChargingSchedulePeriod: from ``start_period_s`` [s after the schedule start] on, at most ``limit``.

    ``phase_to_use`` (2.0.1 only) is the phase a single-phase EV is switched to; the engine keeps it for the round trip
    and checks it (K01.FR.19) but does not model phase switching."""

    start_period_s: int
    limit: float
    number_phases: int | None = None
    phase_to_use: int | None = None


@dataclass(frozen=True)
class ChargingSchedule:
    """§7.13 ChargingSchedule. ``rate_unit`` "A" [A per phase] or "W" [W total]; ``start_schedule`` [epoch s];
    ``id`` is the 2.0.1 ChargingScheduleType.id (None in 1.6)."""

    rate_unit: str
    periods: tuple[SchedulePeriod, ...]
    duration_s: int | None = None
    start_schedule: float | None = None
    min_charging_rate: float | None = None  # advisory only (§7.13); the engine never uses it
    id: int | None = None


@dataclass(frozen=True)
class ChargingProfile:
    """§7.8 ChargingProfile. ``valid_from``/``valid_to`` [epoch s]; ``None`` means unbounded. ``transaction_id`` is an
    int in 1.6 and a string of at most 36 characters in 2.0.1."""

    id: int
    stack_level: int
    purpose: str
    kind: str
    schedule: ChargingSchedule
    recurrency_kind: str | None = None
    valid_from: float | None = None
    valid_to: float | None = None
    transaction_id: int | str | None = None


@dataclass(frozen=True)
class SetResult:
    """The answer to SetChargingProfile (§5.16): ``status`` "Accepted" or "Rejected"; ``reason`` says why not, naming
    the rule. ``reason_code`` (2.0.1 rejections only) is the short code for ``statusInfo.reasonCode`` (CiString20),
    chosen as EVerest libocpp does: e.g. "InvalidSchedule", "TxNotFound", "DuplicateProfile"."""

    status: str
    reason: str = ""
    reason_code: str = ""


ACCEPTED = SetResult("Accepted")


# --------------------------------------------------------------------------------------------------------------------
# Wire JSON <-> typed profile
# --------------------------------------------------------------------------------------------------------------------

# RFC 3339 §5.6 date-time. An absent offset is read as UTC (lenient: some stations and CSMSs omit the "Z").
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))?"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = 1_000_000


def _parse_time(value: Any, path: str) -> float:
    """RFC 3339 string -> epoch seconds, exact to the microsecond (further digits are truncated)."""
    if not isinstance(value, str):
        raise ProfileError(path, f"expected an RFC 3339 date-time string, got {value!r}")
    m = _RFC3339.fullmatch(value)
    if m is None:
        raise ProfileError(path, f"expected an RFC 3339 date-time such as 2024-01-01T00:00:00Z, got {value!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    try:
        whole = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError as exc:
        raise ProfileError(path, f"expected a valid date-time, got {value!r} ({exc})") from None
    offset_s = 0
    if m.group(9):
        offset_s = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        if m.group(9) == "-":
            offset_s = -offset_s
    fraction = m.group(7) or ""
    micros = int((fraction + "000000")[:6])
    seconds = (whole - _EPOCH) // timedelta(seconds=1) - offset_s
    return (seconds * _US + micros) / _US  # int / int is correctly rounded


def _format_time(t: float) -> str:
    """Epoch seconds -> RFC 3339 with "Z", to the microsecond (milliseconds or whole seconds when exact)."""
    micros = int((Decimal(t) * _US).to_integral_value(ROUND_HALF_EVEN))
    seconds, frac = divmod(micros, _US)
    text = (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    if frac == 0:
        return text + "Z"
    if frac % 1000 == 0:
        return f"{text}.{frac // 1000:03d}Z"
    return f"{text}.{frac:06d}Z"


def _get(obj: dict, key: str, path: str, required: bool) -> Any:
    value = obj.get(key)
    if value is None and required:
        raise ProfileError(f"{path}.{key}", "required field is missing")
    return value


def _int(value: Any, path: str, minimum: int | None = None) -> int:
    # JSON integers; an integral float/Decimal (3600.0) is accepted, bool is not (True is an int in Python).
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ProfileError(path, f"expected an integer, got {value!r}")
    if not isinstance(value, int):
        if not math.isfinite(value) or value != int(value):
            raise ProfileError(path, f"expected an integer, got {value!r}")
        value = int(value)
    if minimum is not None and value < minimum:
        raise ProfileError(path, f"expected an integer >= {minimum}, got {value}")
    return value


def _number(value: Any, path: str) -> float:
    # §7.14 limit / §7.13 minChargingRate are "decimal"; the ocpp library hands them over as Decimal.
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ProfileError(path, f"expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ProfileError(path, f"expected a finite number, got {value!r}")
    return number


def _enum(value: Any, path: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ProfileError(path, f"expected one of {', '.join(allowed)}, got {value!r}")
    return value


def _limit(period: dict, path: str) -> float:
    limit = _number(_get(period, "limit", path, True), f"{path}.limit")
    if limit < 0:
        raise ProfileError(f"{path}.limit", f"expected a limit >= 0, got {limit}")
    return limit


def _phase_count(period: dict, key: str, path: str) -> int | None:
    """numberPhases (§7.14) or 2.0.1 phaseToUse: absent, or 1..3."""
    value = period.get(key)
    if value is None:
        return None
    value = _int(value, f"{path}.{key}", minimum=1)
    if value > 3:
        raise ProfileError(f"{path}.{key}", f"expected 1, 2 or 3, got {value}")
    return value


def parse_profile(data: dict, where: str = "chargingProfile") -> ChargingProfile:
    """Read the OCPP 1.6 JSON ``csChargingProfiles`` object (camelCase keys as on the wire) into a ChargingProfile.

    ``where`` is the JSON path prefix used in error messages. Timestamps are RFC 3339 strings ("Z" or an offset;
    none = UTC) kept to the microsecond; limits may be Decimal, int or float. Unknown keys are ignored (schema
    validation is the adapter's job). Raises :class:`ProfileError` naming the field, for:

    * a missing required field or a value of the wrong type;
    * an unknown purpose, kind, recurrencyKind or chargingRateUnit (§7.9, §7.10, §7.12, §7.26);
    * Absolute or Recurring without ``startSchedule``; Recurring without ``recurrencyKind`` (§7.8, §7.13);
    * an empty ``chargingSchedulePeriod``; a first ``startPeriod`` other than 0; periods that do not strictly
      ascend; a negative ``limit``; ``numberPhases`` outside 1..3; a negative ``duration`` or ``stackLevel`` (§7.14).

    Lenient where a real station is: ``startSchedule`` on a Relative profile and ``transactionId`` on a non-Tx
    profile are kept but play no part in the limit.
    """
    if not isinstance(data, dict):
        raise ProfileError(where, f"expected an object, got {type(data).__name__}")
    profile_id = _int(_get(data, "chargingProfileId", where, True), f"{where}.chargingProfileId")
    stack_level = _int(_get(data, "stackLevel", where, True), f"{where}.stackLevel", minimum=0)
    purpose = _enum(_get(data, "chargingProfilePurpose", where, True), f"{where}.chargingProfilePurpose", PURPOSES)
    kind = _enum(_get(data, "chargingProfileKind", where, True), f"{where}.chargingProfileKind", KINDS)

    recurrency = _get(data, "recurrencyKind", where, kind == "Recurring")
    if recurrency is not None:
        recurrency = _enum(recurrency, f"{where}.recurrencyKind", RECURRENCY_KINDS)
    valid_from = data.get("validFrom")
    if valid_from is not None:
        valid_from = _parse_time(valid_from, f"{where}.validFrom")
    valid_to = data.get("validTo")
    if valid_to is not None:
        valid_to = _parse_time(valid_to, f"{where}.validTo")
    transaction_id = data.get("transactionId")
    if transaction_id is not None:
        transaction_id = _int(transaction_id, f"{where}.transactionId")

    spath = f"{where}.chargingSchedule"
    sched = _get(data, "chargingSchedule", where, True)
    if not isinstance(sched, dict):
        raise ProfileError(spath, f"expected an object, got {type(sched).__name__}")
    rate_unit = _enum(_get(sched, "chargingRateUnit", spath, True), f"{spath}.chargingRateUnit", RATE_UNITS)
    duration = sched.get("duration")
    if duration is not None:
        duration = _int(duration, f"{spath}.duration", minimum=0)
    start_schedule = _get(sched, "startSchedule", spath, kind in ("Absolute", "Recurring"))
    if start_schedule is not None:
        start_schedule = _parse_time(start_schedule, f"{spath}.startSchedule")
    min_rate = sched.get("minChargingRate")
    if min_rate is not None:
        min_rate = _number(min_rate, f"{spath}.minChargingRate")

    ppath = f"{spath}.chargingSchedulePeriod"
    raw_periods = _get(sched, "chargingSchedulePeriod", spath, True)
    if not isinstance(raw_periods, (list, tuple)):
        raise ProfileError(ppath, f"expected a list of periods, got {type(raw_periods).__name__}")
    if not raw_periods:
        raise ProfileError(ppath, "expected at least one period")
    periods = []
    previous = -1
    for i, raw in enumerate(raw_periods):
        path = f"{ppath}[{i}]"
        if not isinstance(raw, dict):
            raise ProfileError(path, f"expected an object, got {type(raw).__name__}")
        start = _int(_get(raw, "startPeriod", path, True), f"{path}.startPeriod")
        if i == 0 and start != 0:
            raise ProfileError(f"{path}.startPeriod", f"the first period must start at 0, got {start}")
        if start <= previous:
            raise ProfileError(f"{path}.startPeriod", "periods must ascend")
        previous = start
        periods.append(SchedulePeriod(start, _limit(raw, path), _phase_count(raw, "numberPhases", path)))

    schedule = ChargingSchedule(rate_unit, tuple(periods), duration, start_schedule, min_rate)
    return ChargingProfile(
        profile_id, stack_level, purpose, kind, schedule, recurrency, valid_from, valid_to, transaction_id
    )


def profile_to_json(profile: ChargingProfile) -> dict:
    """The inverse of :func:`parse_profile`: wire camelCase keys, "Z" timestamps, optional fields omitted when None."""
    sched = profile.schedule
    periods = []
    for p in sched.periods:
        period: dict[str, Any] = {"startPeriod": p.start_period_s, "limit": float(p.limit)}
        if p.number_phases is not None:
            period["numberPhases"] = p.number_phases
        periods.append(period)
    schedule: dict[str, Any] = {}
    if sched.duration_s is not None:
        schedule["duration"] = sched.duration_s
    if sched.start_schedule is not None:
        schedule["startSchedule"] = _format_time(sched.start_schedule)
    schedule["chargingRateUnit"] = sched.rate_unit
    schedule["chargingSchedulePeriod"] = periods
    if sched.min_charging_rate is not None:
        schedule["minChargingRate"] = float(sched.min_charging_rate)

    out: dict[str, Any] = {"chargingProfileId": profile.id}
    if profile.transaction_id is not None:
        out["transactionId"] = profile.transaction_id
    out["stackLevel"] = profile.stack_level
    out["chargingProfilePurpose"] = profile.purpose
    out["chargingProfileKind"] = profile.kind
    if profile.recurrency_kind is not None:
        out["recurrencyKind"] = profile.recurrency_kind
    if profile.valid_from is not None:
        out["validFrom"] = _format_time(profile.valid_from)
    if profile.valid_to is not None:
        out["validTo"] = _format_time(profile.valid_to)
    out["chargingSchedule"] = schedule
    return out


def parse_profile_201(data: dict, where: str = "chargingProfile") -> ChargingProfile:
    """Read the OCPP 2.0.1 JSON ``ChargingProfileType`` object (camelCase keys as on the wire) into a ChargingProfile.

    Of the 1..3 ``chargingSchedule`` entries every one is checked, the first is kept (the engine uses one schedule;
    the others serve ISO 15118 schedule negotiation). ``salesTariff`` and unknown keys are ignored. Timestamps and
    numbers are read as by :func:`parse_profile`. Raises :class:`ProfileError`, naming the field, for type-level
    problems only: a missing required field or a value of the wrong type; an unknown purpose, kind, recurrencyKind or
    chargingRateUnit; a transactionId that is not a string of at most 36 characters; no schedules or more than 3; an
    empty ``chargingSchedulePeriod``; a negative ``limit``, ``duration`` or ``stackLevel``; ``numberPhases`` or
    ``phaseToUse`` outside 1..3.

    Rule-level problems are left to :meth:`ProfileEngine.set_profile`, which the station answers with Rejected and a
    reason code: startSchedule present or absent for the kind (K01.FR.40/41), Recurring without recurrencyKind, a
    first startPeriod other than 0 (K01.FR.31), periods that do not ascend (K01.FR.35), phaseToUse without
    numberPhases 1 (K01.FR.19), and every purpose/EVSE/transaction rule.
    """
    if not isinstance(data, dict):
        raise ProfileError(where, f"expected an object, got {type(data).__name__}")
    profile_id = _int(_get(data, "id", where, True), f"{where}.id")
    stack_level = _int(_get(data, "stackLevel", where, True), f"{where}.stackLevel", minimum=0)
    purpose = _enum(_get(data, "chargingProfilePurpose", where, True), f"{where}.chargingProfilePurpose", PURPOSES_201)
    kind = _enum(_get(data, "chargingProfileKind", where, True), f"{where}.chargingProfileKind", KINDS)
    recurrency = data.get("recurrencyKind")
    if recurrency is not None:
        recurrency = _enum(recurrency, f"{where}.recurrencyKind", RECURRENCY_KINDS)
    valid_from = data.get("validFrom")
    if valid_from is not None:
        valid_from = _parse_time(valid_from, f"{where}.validFrom")
    valid_to = data.get("validTo")
    if valid_to is not None:
        valid_to = _parse_time(valid_to, f"{where}.validTo")
    transaction_id = data.get("transactionId")
    if transaction_id is not None and (
        not isinstance(transaction_id, str) or len(transaction_id) > TRANSACTION_ID_MAX_LENGTH
    ):
        raise ProfileError(
            f"{where}.transactionId",
            f"expected a string of at most {TRANSACTION_ID_MAX_LENGTH} characters, got {transaction_id!r}",
        )

    spath = f"{where}.chargingSchedule"
    raw_schedules = _get(data, "chargingSchedule", where, True)
    if not isinstance(raw_schedules, (list, tuple)):
        raise ProfileError(spath, f"expected a list of schedules, got {type(raw_schedules).__name__}")
    if not 1 <= len(raw_schedules) <= MAX_SCHEDULES_201:
        raise ProfileError(spath, f"expected 1 to {MAX_SCHEDULES_201} schedules, got {len(raw_schedules)}")
    schedules = [_schedule_201(raw, f"{spath}[{i}]") for i, raw in enumerate(raw_schedules)]
    return ChargingProfile(
        profile_id, stack_level, purpose, kind, schedules[0], recurrency, valid_from, valid_to, transaction_id
    )


def _schedule_201(sched: Any, spath: str) -> ChargingSchedule:
    if not isinstance(sched, dict):
        raise ProfileError(spath, f"expected an object, got {type(sched).__name__}")
    schedule_id = _int(_get(sched, "id", spath, True), f"{spath}.id")
    rate_unit = _enum(_get(sched, "chargingRateUnit", spath, True), f"{spath}.chargingRateUnit", RATE_UNITS)
    duration = sched.get("duration")
    if duration is not None:
        duration = _int(duration, f"{spath}.duration", minimum=0)
    start_schedule = sched.get("startSchedule")
    if start_schedule is not None:
        start_schedule = _parse_time(start_schedule, f"{spath}.startSchedule")
    min_rate = sched.get("minChargingRate")
    if min_rate is not None:
        min_rate = _number(min_rate, f"{spath}.minChargingRate")
    ppath = f"{spath}.chargingSchedulePeriod"
    raw_periods = _get(sched, "chargingSchedulePeriod", spath, True)
    if not isinstance(raw_periods, (list, tuple)):
        raise ProfileError(ppath, f"expected a list of periods, got {type(raw_periods).__name__}")
    if not raw_periods:
        raise ProfileError(ppath, "expected at least one period")
    periods = []
    for i, raw in enumerate(raw_periods):
        path = f"{ppath}[{i}]"
        if not isinstance(raw, dict):
            raise ProfileError(path, f"expected an object, got {type(raw).__name__}")
        start = _int(_get(raw, "startPeriod", path, True), f"{path}.startPeriod")
        periods.append(
            SchedulePeriod(
                start,
                _limit(raw, path),
                _phase_count(raw, "numberPhases", path),
                _phase_count(raw, "phaseToUse", path),
            )
        )
    return ChargingSchedule(rate_unit, tuple(periods), duration, start_schedule, min_rate, schedule_id)


def profile_to_json_201(profile: ChargingProfile) -> dict:
    """The inverse of :func:`parse_profile_201`: wire camelCase keys, "Z" timestamps, optional fields omitted when
    None, ``chargingSchedule`` a one-element list. A transactionId is written as a string."""
    sched = profile.schedule
    periods = []
    for p in sched.periods:
        period: dict[str, Any] = {"startPeriod": p.start_period_s, "limit": float(p.limit)}
        if p.number_phases is not None:
            period["numberPhases"] = p.number_phases
        if p.phase_to_use is not None:
            period["phaseToUse"] = p.phase_to_use
        periods.append(period)
    schedule: dict[str, Any] = {}
    if sched.id is not None:
        schedule["id"] = sched.id
    if sched.start_schedule is not None:
        schedule["startSchedule"] = _format_time(sched.start_schedule)
    if sched.duration_s is not None:
        schedule["duration"] = sched.duration_s
    schedule["chargingRateUnit"] = sched.rate_unit
    schedule["chargingSchedulePeriod"] = periods
    if sched.min_charging_rate is not None:
        schedule["minChargingRate"] = float(sched.min_charging_rate)

    out: dict[str, Any] = {
        "id": profile.id,
        "stackLevel": profile.stack_level,
        "chargingProfilePurpose": profile.purpose,
        "chargingProfileKind": profile.kind,
    }
    if profile.recurrency_kind is not None:
        out["recurrencyKind"] = profile.recurrency_kind
    if profile.valid_from is not None:
        out["validFrom"] = _format_time(profile.valid_from)
    if profile.valid_to is not None:
        out["validTo"] = _format_time(profile.valid_to)
    if profile.transaction_id is not None:
        out["transactionId"] = str(profile.transaction_id)
    out["chargingSchedule"] = [schedule]
    return out


# --------------------------------------------------------------------------------------------------------------------
# Evaluating one profile
# --------------------------------------------------------------------------------------------------------------------


def _period_in_force(profile: ChargingProfile, t: float, tx_start: float | None) -> SchedulePeriod | None:
    """The period of ``profile`` that applies at ``t``, or None when the profile is not in force then.

    In force = valid (§7.8: validFrom <= t < validTo) and inside its schedule: from the schedule start
    (Absolute: startSchedule; Relative: the transaction start, so never without one; Recurring: the latest
    recurrence of startSchedule, never before startSchedule itself) until ``duration`` has elapsed (§7.13; absent
    = forever, or until the next recurrence). The period is the last one whose startPeriod has been reached (§7.14).
    """
    if profile.valid_from is not None and t < profile.valid_from:
        return None
    if profile.valid_to is not None and t >= profile.valid_to:
        return None
    sched = profile.schedule
    kind = profile.kind
    if kind == "Relative":
        if tx_start is None:
            return None
        elapsed = t - tx_start
    else:
        elapsed = t - sched.start_schedule  # type: ignore[operator]  # parse_profile / K01.FR.40 guarantee it
        if kind == "Recurring" and elapsed >= 0:
            # A duration longer than the recurrence is cut at the next recurrence (as libocpp does).
            elapsed %= RECURRENCE_S[profile.recurrency_kind]  # type: ignore[index]
    if elapsed < 0:
        return None
    if sched.duration_s is not None and elapsed >= sched.duration_s:
        return None
    periods = sched.periods
    chosen = periods[0]
    for period in periods:
        if period.start_period_s > elapsed:
            break
        chosen = period
    return chosen


def _change_instants(profile: ChargingProfile, start: float, end: float, tx_start: float | None) -> list[float]:
    """Instants in (start, end) at which ``profile``'s contribution may change (for the composite schedule)."""
    out = [b for b in (profile.valid_from, profile.valid_to) if b is not None]
    sched = profile.schedule
    offsets = [p.start_period_s for p in sched.periods]
    if sched.duration_s is not None:
        offsets.append(sched.duration_s)
    if profile.kind == "Relative":
        origins = [tx_start] if tx_start is not None else []
    elif profile.kind == "Absolute":
        origins = [sched.start_schedule]
    else:
        cycle = RECURRENCE_S[profile.recurrency_kind]  # type: ignore[index]
        first = sched.start_schedule
        k = max(0, math.floor((start - first) / cycle))  # type: ignore[operator]
        origins = []
        while first + k * cycle < end:  # type: ignore[operator]
            origins.append(first + k * cycle)  # type: ignore[operator]
            k += 1
        offsets = [o for o in offsets if o < cycle]
    for origin in origins:
        out.extend(origin + o for o in offsets)  # type: ignore[operator]
    return [b for b in out if start < b < end]


# _period_in_force compares the rounded difference t - start with whole-second offsets, so right at a boundary
# "start + offset" the comparison may fall on either side of it. A span computed here therefore stops this far
# (relative to the magnitudes involved) short of every boundary derived by arithmetic, and the instants in between are
# answered without the cache. Rounding errs by a few units in the last place (2**-52 ~ 2.2e-16 relative): 1e-12 is a
# margin of thousands. validFrom, validTo and the schedule start itself compare exactly, so they get none.
_BOUNDARY_SLACK = 1e-12


def _slack(boundary: float, origin: float) -> float:
    return _BOUNDARY_SLACK * (1.0 + abs(boundary) + abs(origin))


def _steady_span(profile: ChargingProfile, t: float, tx_start: float | None) -> tuple[float, float]:
    """A span [since, until) of time in which :func:`_period_in_force` of ``profile`` (with ``tx_start``) gives one
    answer throughout; it contains ``t`` unless ``t`` lies within rounding distance of a boundary (the caller checks).

    Boundaries: validFrom and validTo (§7.8), the schedule start (Absolute: startSchedule; Relative: the transaction
    start; Recurring: each recurrence, §7.26), every later startPeriod (§7.14) and the end of ``duration`` (§7.13).
    """
    since, until = -math.inf, math.inf
    if profile.valid_from is not None:
        if t < profile.valid_from:
            return since, profile.valid_from
        since = profile.valid_from
    if profile.valid_to is not None:
        if t >= profile.valid_to:
            return profile.valid_to, until
        until = profile.valid_to
    sched = profile.schedule
    if profile.kind == "Relative":
        if tx_start is None:
            return since, until
        origin = tx_start
    else:
        origin = sched.start_schedule  # type: ignore[assignment]  # parse_profile / K01.FR.40 guarantee it
    if t < origin:  # the sign of t - origin is exact, so this boundary is too
        return since, min(until, origin)
    offsets = [p.start_period_s for p in sched.periods[1:]]
    if sched.duration_s is not None:
        offsets.append(sched.duration_s)
    start, cycle = origin, math.inf
    if profile.kind == "Recurring":
        cycle = RECURRENCE_S[profile.recurrency_kind]  # type: ignore[index]
        start = origin + math.floor((t - origin) / cycle) * cycle  # the recurrence in force, up to rounding
        offsets = [o for o in offsets if o < cycle]
        offsets.append(cycle)
    elapsed = t - start
    if not 0 <= elapsed < cycle:
        return t, t  # t is within rounding distance of a recurrence: no span worth trusting
    before, after = 0, math.inf
    for offset in offsets:
        if offset <= elapsed:
            before = max(before, offset)
        elif offset < after:
            after = offset
    since = max(since, start + before + _slack(start + before, origin))
    if after != math.inf:
        until = min(until, start + after - _slack(start + after, origin))
    return since, until


# --------------------------------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------------------------------

_Stack = tuple[ChargingProfile, ...]  # one purpose on one connector, highest stackLevel first


def _rejected(reason_code: str, reason: str) -> SetResult:
    return SetResult("Rejected", reason, reason_code)


def _lower(a: float | None, b: float | None) -> float | None:
    """The lower of two limits, None meaning "no limit"."""
    if a is None:
        return b
    if b is None or a < b:
        return a
    return b


def _validity_overlaps(a: ChargingProfile, b: ChargingProfile) -> bool:
    """Whether [validFrom, validTo) of ``a`` and ``b`` share an instant; an absent bound is unbounded."""
    a_from = -math.inf if a.valid_from is None else a.valid_from
    b_from = -math.inf if b.valid_from is None else b.valid_from
    a_to = math.inf if a.valid_to is None else a.valid_to
    b_to = math.inf if b.valid_to is None else b.valid_to
    return a_from < b_to and b_from < a_to


class ProfileEngine:
    """The profiles installed on one station and what they allow.

    Connectors (EVSEs in 2.0.1) are numbered 1..``connectors``; 0 is the station as a whole (§5.16). ``voltage_v``
    [V] phase-to-neutral and ``default_phases`` convert W into A (§7.12, K01.FR.50: I = P / (V x numberPhases),
    numberPhases defaulting to 3). The bounds are the station's configuration: in 1.6 the keys (§9.4)
    ChargeProfileMaxStackLevel, ChargingScheduleMaxPeriods, MaxChargingProfilesInstalled,
    ChargingScheduleAllowedChargingRateUnit; in 2.0.1 the SmartChargingCtrlr variables ProfileStackLevel,
    PeriodsPerSchedule, Entries (ChargingProfiles) and RateUnit. ``version`` "1.6" or "2.0.1" picks the purposes and
    the installation rules.
    """

    def __init__(
        self,
        connectors: int,
        voltage_v: float = 230.0,
        default_phases: int = 3,
        max_stack_level: int = 8,
        max_periods: int = 24,
        max_profiles: int = 32,
        allowed_units: tuple[str, ...] = ("A", "W"),
        version: str = "1.6",
    ) -> None:
        if connectors < 1:
            raise ValueError(f"connectors: expected >= 1, got {connectors}")
        if not voltage_v > 0:
            raise ValueError(f"voltage_v: expected > 0, got {voltage_v}")
        if default_phases not in (1, 2, 3):
            raise ValueError(f"default_phases: expected 1, 2 or 3, got {default_phases}")
        if version not in VERSIONS:
            raise ValueError(f"version: expected one of {', '.join(VERSIONS)}, got {version!r}")
        self.connectors = connectors
        self.voltage_v = float(voltage_v)
        self.default_phases = default_phases
        self.max_stack_level = max_stack_level
        self.max_periods = max_periods
        self.max_profiles = max_profiles
        self.allowed_units = tuple(allowed_units)
        self.version = version
        self._installed: dict[int, tuple[int, ChargingProfile]] = {}  # profile id -> (connector, profile)
        # _stacks[connector][slot] -> profiles sorted by stackLevel, highest first. Rebuilt on every change (rare) so
        # that the per-second path (limit_a) only walks ready-made tuples.
        self._stacks: list[list[_Stack]] = []
        # connector -> (since, until, tx_start, phases, limit): limit_a's answer and the span it holds for.
        self._cache: dict[int, tuple[float, float, float | None, int | None, float | None]] = {}
        self._rebuild()

    # -- installing and removing --------------------------------------------------------------------------------

    def set_profile(self, connector_id: int, profile: ChargingProfile, transaction_id: int | str | None) -> SetResult:
        """SetChargingProfile (1.6 §5.16, 2.0.1 K01) on ``connector_id``; ``transaction_id`` is that connector's
        running transaction (None when idle).

        OCPP 1.6 — Rejected, with the reason, when:

        * ``connector_id`` is not 0..connectors (§5.16);
        * a ChargePointMaxProfile is not on connector 0 (§3.13.1, §5.16), or is Relative — it has no transaction to
          be relative to (libocpp rejects it too; 2.0.1 K01.FR.38 makes it explicit);
        * a TxProfile is on connector 0, or no transaction is active on the connector, or its transactionId is not
          that transaction's (§3.13.1, §5.16);
        * stackLevel > ChargeProfileMaxStackLevel; more periods than ChargingScheduleMaxPeriods; a rate unit outside
          ChargingScheduleAllowedChargingRateUnit; more than MaxChargingProfilesInstalled once installed (§9.4).

        Otherwise Accepted, and it replaces any profile with the same chargingProfileId (on any connector) and the
        profile with the same purpose and stackLevel on the same connector (§3.13.2, §5.16). A TxDefaultProfile on a
        connector does not replace the one on connector 0: the connector's own takes precedence (see limit_a).

        OCPP 2.0.1 — Rejected with a reason code (libocpp's) when:

        * the EVSE does not exist (K01.FR.28: UnknownEvse); the purpose is not a 2.0.1 one (InvalidProfile);
        * it is a ChargingStationExternalConstraints profile (K01.FR.22: InvalidValue — only the local energy manager
          sets those, see :meth:`set_external_constraints`), or its id is that of one (DuplicateProfile);
        * the rate unit is not allowed (UnsupportedRateUnit); Absolute/Recurring without startSchedule (K01.FR.40),
          Relative with one (K01.FR.41), a first startPeriod other than 0 (K01.FR.31), periods that do not ascend
          (K01.FR.35), phaseToUse without numberPhases 1 (K01.FR.19), too many periods: InvalidSchedule; Recurring
          without recurrencyKind: InvalidProfile; stackLevel above the maximum: InvalidStackLevel;
        * a ChargingStationMaxProfile on an EVSE other than 0, or Relative (K01.FR.38): InvalidValue;
        * a TxProfile on EVSE 0 (K01.FR.16: InvalidValue), without transactionId (K01.FR.03: MissingParam), with no
          transaction on the EVSE (K01.FR.09: TxNotFound) or another one (K01.FR.33: TxNotFound), or with the
          stackLevel and transactionId of an installed TxProfile with another id (K01.FR.39: InvalidStackLevel);
        * another profile of the same purpose, stackLevel and EVSE (not TxProfile) has an overlapping validity period
          (K01.FR.06: DuplicateProfile);
        * the station would hold more than ``max_profiles`` (OutOfStorage).

        Otherwise Accepted; it replaces the installed profile with the same id, on whichever EVSE (K01.FR.05).
        Transaction ids compare as strings, the form 2.0.1 gives them.
        """
        if self.version == "2.0.1":
            return self._set_profile_201(connector_id, profile, transaction_id, from_csms=True)
        if not 0 <= connector_id <= self.connectors:
            return SetResult("Rejected", f"connectorId {connector_id} is not 0..{self.connectors}")
        purpose = profile.purpose
        if purpose == CHARGE_POINT_MAX:
            if connector_id != 0:
                return SetResult("Rejected", f"ChargePointMaxProfile must be set on connector 0, not {connector_id}")
            if profile.kind == "Relative":
                return SetResult("Rejected", "ChargePointMaxProfile cannot be Relative (no transaction to start it)")
        elif purpose == TX:
            if connector_id == 0:
                return SetResult("Rejected", "TxProfile must be set on a connector > 0")
            if transaction_id is None:
                return SetResult("Rejected", f"TxProfile without an active transaction on connector {connector_id}")
            if profile.transaction_id is not None and profile.transaction_id != transaction_id:
                return SetResult(
                    "Rejected",
                    f"TxProfile transactionId {profile.transaction_id} is not the active transaction {transaction_id}",
                )
        elif purpose != TX_DEFAULT:
            return SetResult("Rejected", f"unknown chargingProfilePurpose {purpose!r}")
        if profile.stack_level > self.max_stack_level:
            return SetResult(
                "Rejected", f"stackLevel {profile.stack_level} > ChargeProfileMaxStackLevel {self.max_stack_level}"
            )
        if len(profile.schedule.periods) > self.max_periods:
            return SetResult(
                "Rejected",
                f"{len(profile.schedule.periods)} periods > ChargingScheduleMaxPeriods {self.max_periods}",
            )
        if profile.schedule.rate_unit not in self.allowed_units:
            return SetResult(
                "Rejected",
                f"chargingRateUnit {profile.schedule.rate_unit} not in ChargingScheduleAllowedChargingRateUnit "
                f"{','.join(self.allowed_units)}",
            )
        replaced = [
            pid
            for pid, (conn, p) in self._installed.items()
            if pid == profile.id
            or (conn == connector_id and p.purpose == purpose and p.stack_level == profile.stack_level)
        ]
        if len(self._installed) - len(replaced) + 1 > self.max_profiles:
            return SetResult("Rejected", f"MaxChargingProfilesInstalled {self.max_profiles} reached")
        for pid in replaced:
            del self._installed[pid]
        self._installed[profile.id] = (connector_id, profile)
        self._rebuild()
        return ACCEPTED

    def set_external_constraints(self, evse_id: int, profile: ChargingProfile) -> SetResult:
        """The local energy manager (the bench) installs a ChargingStationExternalConstraints ``profile`` on
        ``evse_id`` (2.0.1 only). The K01.FR.22 ban on the CSMS setting one does not apply; every other rule of
        :meth:`set_profile` does. It replaces only an external-constraints profile with the same id: a CSMS profile
        with that id is left alone and the answer is Rejected (DuplicateProfile)."""
        if self.version != "2.0.1":
            return _rejected("InvalidValue", "OCPP 1.6 has no ChargingStationExternalConstraints")
        if profile.purpose != EXTERNAL_CONSTRAINTS:
            return _rejected(
                "InvalidValue", f"expected a {EXTERNAL_CONSTRAINTS} profile, got {profile.purpose}"
            )
        return self._set_profile_201(evse_id, profile, None, from_csms=False)

    def clear(
        self,
        profile_id: int | None = None,
        connector_id: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
    ) -> str:
        """ClearChargingProfile (1.6 §5.5, 2.0.1 K10): "Accepted" when at least one profile was removed, else
        "Unknown".

        With ``profile_id`` only that profile is removed (the other criteria are then ignored: §5.5 clears "either a
        specific charging profile (denoted by id) or a selection"). Otherwise every profile matching all the given
        criteria is removed; ``connector_id`` 0 means the profiles installed on connector 0; no criteria at all
        clears everything. External constraints are never removed: the CSMS clears only what it set (K10); the bench
        uses :meth:`clear_external_constraints`.
        """
        if profile_id is not None:
            row = self._installed.get(profile_id)
            doomed = [profile_id] if row is not None and row[1].purpose != EXTERNAL_CONSTRAINTS else []
        else:
            doomed = [
                pid
                for pid, (conn, p) in self._installed.items()
                if p.purpose != EXTERNAL_CONSTRAINTS
                and (connector_id is None or conn == connector_id)
                and (purpose is None or p.purpose == purpose)
                and (stack_level is None or p.stack_level == stack_level)
            ]
        if not doomed:
            return "Unknown"
        for pid in doomed:
            del self._installed[pid]
        self._rebuild()
        return "Accepted"

    def clear_external_constraints(self, evse_id: int | None = None) -> int:
        """The local energy manager lifts its ChargingStationExternalConstraints on ``evse_id`` (None = everywhere);
        returns how many profiles were removed."""
        doomed = [
            pid
            for pid, (conn, p) in self._installed.items()
            if p.purpose == EXTERNAL_CONSTRAINTS and (evse_id is None or conn == evse_id)
        ]
        for pid in doomed:
            del self._installed[pid]
        if doomed:
            self._rebuild()
        return len(doomed)

    def end_transaction(self, connector_id: int) -> None:
        """The transaction on ``connector_id`` ended: its TxProfiles are dropped (§3.13.1: a TxProfile "SHALL only be
        valid during the transaction"; §3.13.3)."""
        doomed = [pid for pid, (conn, p) in self._installed.items() if conn == connector_id and p.purpose == TX]
        for pid in doomed:
            del self._installed[pid]
        if doomed:
            self._rebuild()

    def profiles(self, connector_id: int | None = None) -> list[tuple[int, ChargingProfile]]:
        """Installed profiles as (connector, profile), ordered by connector, purpose, stackLevel, id; ``connector_id``
        filters to the profiles installed on that connector (0 = the station-wide ones)."""
        rows = [row for row in self._installed.values() if connector_id is None or row[0] == connector_id]
        rows.sort(key=lambda r: (r[0], _PURPOSE_INDEX[r[1].purpose], r[1].stack_level, r[1].id))
        return rows

    def select(
        self,
        ids: Iterable[int] | None = None,
        evse_id: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
    ) -> list[tuple[int, ChargingProfile]]:
        """GetChargingProfiles (2.0.1 K09): the installed profiles, external constraints included, matching every
        criterion given (``ids``: the profile id is one of them), as (EVSE, profile) in the order of :meth:`profiles`.
        """
        wanted = None if ids is None else set(ids)
        return [
            (conn, p)
            for conn, p in self.profiles(evse_id)
            if (wanted is None or p.id in wanted)
            and (purpose is None or p.purpose == purpose)
            and (stack_level is None or p.stack_level == stack_level)
        ]

    # -- what they allow ----------------------------------------------------------------------------------------

    def limit_a(self, connector_id: int, now: float, tx_start: float | None, phases: int | None = None) -> float | None:
        """The composite per-phase current limit [A] of ``connector_id`` at ``now``; None when no profile applies.

        ``tx_start`` is the epoch start of the connector's running transaction (None when idle): Relative schedules
        start there, and a TxProfile is only in force while it is set. ``phases`` is the number of phases in use,
        for W -> A when a period gives no numberPhases (else ``default_phases``).

        Per purpose (§3.13.2): the valid profile with the highest stackLevel whose schedule is in force wins; when
        its duration ends, or before it starts, the next lower stackLevel applies; none left = no limit from it.
        TxDefaultProfiles of the connector itself take precedence over those on connector 0 (§5.16: the connector-0
        profile is "replaced only for that specific connector"); connector 0's apply while the connector's own give
        nothing. Composite (§3.13.3) = min(max profile, TxProfile if one is in force else TxDefaultProfile), and in
        2.0.1 also min with the ChargingStationExternalConstraints on the EVSE and on EVSE 0. For ``connector_id`` 0
        this is the max profile (and EVSE 0's external constraints) alone. The max profile bounds all connectors
        together; here it bounds one connector as well, since one cannot draw more than all.

        The answer is remembered per connector with the span of time it holds for (until the next period start,
        validity bound or recurrence of any profile it depends on), so a station asking every second costs a lookup;
        a call with another ``tx_start`` or ``phases``, or any profile change, computes it afresh.
        """
        cached = self._cache.get(connector_id)
        if cached is not None:
            since, until, cached_tx_start, cached_phases, limit = cached
            if since <= now < until and cached_tx_start == tx_start and cached_phases == phases:
                return limit
        limit = self._composite_limit_a(connector_id, now, tx_start, phases)
        since, until = self._limit_span(connector_id, now, tx_start)
        if since <= now < until:
            self._cache[connector_id] = (since, until, tx_start, phases, limit)
        return limit

    def _composite_limit_a(
        self, connector_id: int, now: float, tx_start: float | None, phases: int | None
    ) -> float | None:
        """:meth:`limit_a` computed from the stacks, without the cache."""
        stacks = self._stacks[connector_id] if 0 <= connector_id <= self.connectors else self._bad(connector_id)
        station = self._stacks[0]
        limit = self._stack_limit(station[_MAX_SLOT], now, None, phases)
        # External-constraint stacks are empty in 1.6, so both versions share this path.
        if connector_id == 0:
            return _lower(limit, self._stack_limit(station[_EXTERNAL_SLOT], now, None, phases))
        limit = _lower(limit, self._stack_limit(station[_EXTERNAL_SLOT], now, tx_start, phases))
        limit = _lower(limit, self._stack_limit(stacks[_EXTERNAL_SLOT], now, tx_start, phases))
        tx = self._stack_limit(stacks[_TX_SLOT], now, tx_start, phases) if tx_start is not None else None
        if tx is None:
            tx = self._stack_limit(stacks[_DEFAULT_SLOT], now, tx_start, phases)
            if tx is None:
                tx = self._stack_limit(station[_DEFAULT_SLOT], now, tx_start, phases)
        return _lower(limit, tx)

    def _limit_span(self, connector_id: int, now: float, tx_start: float | None) -> tuple[float, float]:
        """A span [since, until) in which :meth:`_composite_limit_a` of ``connector_id`` stays what it is at ``now``
        (it may miss ``now`` itself when that lies on a boundary): the intersection of the steady spans of every
        profile it reads, in each stack down to the first one in force (those below it are not read)."""
        station = self._stacks[0]
        read: list[tuple[_Stack, float | None]] = [(station[_MAX_SLOT], None)]
        if connector_id == 0:
            read.append((station[_EXTERNAL_SLOT], None))
        else:
            own = self._stacks[connector_id]
            read.extend((stack, tx_start) for stack in (station[_EXTERNAL_SLOT], own[_EXTERNAL_SLOT],
                                                        own[_DEFAULT_SLOT], station[_DEFAULT_SLOT]))
            if tx_start is not None:
                read.append((own[_TX_SLOT], tx_start))
        since, until = -math.inf, math.inf
        for stack, start in read:
            for profile in stack:
                low, high = _steady_span(profile, now, start)
                since, until = max(since, low), min(until, high)
                if _period_in_force(profile, now, start) is not None:
                    break
        return since, until

    def max_profile_limit_a(self, now: float, phases: int | None = None) -> float | None:
        """The station-wide limit at ``now`` [A per phase] on ALL connectors together — 1.6: the ChargePointMaxProfile
        (§3.13.1); 2.0.1: min(ChargingStationMaxProfile, external constraints on EVSE 0). None when none is in
        force. The station model shares it among the EVSEs that charge, which makes the station's total
        min(max profile, sum of the EVSE limits)."""
        return self.limit_a(0, now, None, phases)

    def composite_schedule(
        self,
        connector_id: int,
        start: float,
        duration_s: int,
        rate_unit: str = "A",
        tx_start: float | None = None,
        phases: int | None = None,
        no_limit_a: float = 32.0,
    ) -> ChargingSchedule:
        """The answer to GetCompositeSchedule (1.6 §5.7, 2.0.1 K08) for ``connector_id`` over
        [start, start + duration_s).

        Periods start (whole seconds after ``start``) where :meth:`limit_a` changes, equal neighbours merged, so the
        schedule covers the whole window; a span where no profile applies gets ``no_limit_a`` [A] (the adapter passes
        the station's hardware maximum — the wire has no "unlimited"). Connector 0 gives the station-wide limit
        alone. Change instants that fall inside a second are rounded up to the next whole second. For ``rate_unit``
        "W" each limit is converted back with P = I x V x (``phases`` or ``default_phases``). The result carries
        ``start_schedule=start`` and ``duration_s=duration_s``; numberPhases and minChargingRate are left out.
        """
        if not 0 <= connector_id <= self.connectors:
            self._bad(connector_id)
        if rate_unit not in RATE_UNITS:
            raise ValueError(f"rate_unit: expected A or W, got {rate_unit!r}")
        if duration_s < 0:
            raise ValueError(f"duration_s: expected >= 0, got {duration_s}")
        end = start + duration_s
        station = self._stacks[0]
        relevant: list[ChargingProfile] = [*station[_MAX_SLOT], *station[_EXTERNAL_SLOT]]
        if connector_id != 0:
            own = self._stacks[connector_id]
            relevant.extend(own[_EXTERNAL_SLOT])
            relevant.extend(own[_DEFAULT_SLOT])
            relevant.extend(station[_DEFAULT_SLOT])
            if tx_start is not None:
                relevant.extend(own[_TX_SLOT])
        offsets = {0}
        for profile in relevant:
            for instant in _change_instants(profile, start, end, tx_start):
                offset = math.ceil(instant - start)
                if offset < duration_s:
                    offsets.add(offset)
        factor = 1.0 if rate_unit == "A" else self.voltage_v * (phases or self.default_phases)
        periods: list[SchedulePeriod] = []
        last = None
        for offset in sorted(offsets):
            limit = self.limit_a(connector_id, start + offset, tx_start, phases)
            value = (no_limit_a if limit is None else limit) * factor
            if value != last:
                periods.append(SchedulePeriod(offset, value))
                last = value
        return ChargingSchedule(rate_unit, tuple(periods), duration_s, start)

    # -- internals ----------------------------------------------------------------------------------------------

    def _set_profile_201(
        self, evse_id: int, profile: ChargingProfile, transaction_id: int | str | None, from_csms: bool
    ) -> SetResult:
        judged = self._judge_201(evse_id, profile, transaction_id, from_csms)
        if judged is not None:
            return judged
        replaced = 1 if profile.id in self._installed else 0
        if len(self._installed) - replaced + 1 > self.max_profiles:
            return _rejected("OutOfStorage", f"Entries (ChargingProfiles) {self.max_profiles} reached")
        self._installed[profile.id] = (evse_id, profile)  # K01.FR.05: the same id replaces, on whichever EVSE
        self._rebuild()
        return ACCEPTED

    def _judge_201(
        self, evse_id: int, profile: ChargingProfile, transaction_id: int | str | None, from_csms: bool
    ) -> SetResult | None:
        """The 2.0.1 rule ``profile`` on ``evse_id`` breaks, as a rejection; None when it breaks none."""
        if not 0 <= evse_id <= self.connectors:
            return _rejected("UnknownEvse", f"K01.FR.28: evseId {evse_id} is not 0..{self.connectors}")
        purpose = profile.purpose
        if purpose not in PURPOSES_201:
            return _rejected("InvalidProfile", f"chargingProfilePurpose {purpose!r} is not an OCPP 2.0.1 purpose")
        if from_csms and purpose == EXTERNAL_CONSTRAINTS:
            return _rejected(
                "InvalidValue", f"K01.FR.22: {EXTERNAL_CONSTRAINTS} are set by the local energy manager, not the CSMS"
            )
        existing = self._installed.get(profile.id)
        if existing is not None and (existing[1].purpose == EXTERNAL_CONSTRAINTS) != (purpose == EXTERNAL_CONSTRAINTS):
            return _rejected(
                "DuplicateProfile",
                f"chargingProfile id {profile.id} is a {existing[1].purpose} set by the "
                f"{'local energy manager' if from_csms else 'CSMS'}; it cannot be replaced from here",
            )
        judged = self._judge_schedule_201(profile)
        if judged is not None:
            return judged
        if purpose == CHARGING_STATION_MAX:
            if evse_id != 0:
                return _rejected("InvalidValue", f"{CHARGING_STATION_MAX} must be set on evseId 0, not {evse_id}")
            if profile.kind == "Relative":
                return _rejected("InvalidValue", f"K01.FR.38: {CHARGING_STATION_MAX} cannot be Relative")
        elif purpose == TX:
            if evse_id == 0:
                return _rejected("InvalidValue", "K01.FR.16: TxProfile must be set on an evseId > 0")
            if profile.transaction_id is None:
                return _rejected("MissingParam", "K01.FR.03: TxProfile without transactionId")
            if transaction_id is None:
                return _rejected("TxNotFound", f"K01.FR.09: no transaction is active on EVSE {evse_id}")
            wanted = str(profile.transaction_id)
            if wanted != str(transaction_id):
                return _rejected(
                    "TxNotFound",
                    f"K01.FR.33: transactionId {wanted} is not the transaction {transaction_id} on EVSE {evse_id}",
                )
            for other_id, (_, other) in self._installed.items():
                if (
                    other.purpose == TX
                    and other_id != profile.id
                    and other.stack_level == profile.stack_level
                    and str(other.transaction_id) == wanted
                ):
                    return _rejected(
                        "InvalidStackLevel",
                        f"K01.FR.39: TxProfile {other_id} already has stackLevel {profile.stack_level} for "
                        f"transaction {wanted}",
                    )
        if purpose != TX:  # TxProfiles are kept apart by K01.FR.39 instead
            for other_id, (conn, other) in self._installed.items():
                if (
                    conn == evse_id
                    and other_id != profile.id
                    and other.purpose == purpose
                    and other.stack_level == profile.stack_level
                    and _validity_overlaps(other, profile)
                ):
                    return _rejected(
                        "DuplicateProfile",
                        f"K01.FR.06: {purpose} {other_id} on EVSE {evse_id} has stackLevel {profile.stack_level} "
                        "and an overlapping validity period",
                    )
        return None

    def _judge_schedule_201(self, profile: ChargingProfile) -> SetResult | None:
        sched = profile.schedule
        if sched.rate_unit not in self.allowed_units:
            return _rejected(
                "UnsupportedRateUnit",
                f"K01.FR.26: chargingRateUnit {sched.rate_unit} not in RateUnit {','.join(self.allowed_units)}",
            )
        if profile.kind == "Relative":
            if sched.start_schedule is not None:
                return _rejected("InvalidSchedule", "K01.FR.41: a Relative profile cannot have a startSchedule")
        elif sched.start_schedule is None:
            return _rejected("InvalidSchedule", f"K01.FR.40: an {profile.kind} profile needs a startSchedule")
        if profile.kind == "Recurring" and profile.recurrency_kind is None:
            return _rejected("InvalidProfile", "a Recurring profile needs a recurrencyKind")
        if profile.stack_level > self.max_stack_level:
            return _rejected(
                "InvalidStackLevel", f"stackLevel {profile.stack_level} > ProfileStackLevel {self.max_stack_level}"
            )
        periods = sched.periods
        if len(periods) > self.max_periods:
            return _rejected(
                "InvalidSchedule", f"{len(periods)} periods > PeriodsPerSchedule {self.max_periods}"
            )
        if periods[0].start_period_s != 0:
            return _rejected(
                "InvalidSchedule", f"K01.FR.31: the first startPeriod must be 0, got {periods[0].start_period_s}"
            )
        for i, (before, after) in enumerate(itertools.pairwise(periods), start=1):
            if after.start_period_s <= before.start_period_s:
                return _rejected("InvalidSchedule", f"K01.FR.35: startPeriod of period {i} does not ascend")
        for i, period in enumerate(periods):
            if period.phase_to_use is not None and period.number_phases != 1:
                return _rejected("InvalidSchedule", f"K01.FR.19: period {i} has phaseToUse without numberPhases 1")
        return None

    def _stack_limit(self, stack: _Stack, t: float, tx_start: float | None, phases: int | None) -> float | None:
        for profile in stack:  # highest stackLevel first (§3.13.2)
            period = _period_in_force(profile, t, tx_start)
            if period is not None:
                if profile.schedule.rate_unit == "A":
                    return period.limit
                # §7.12: W is the total over the phases in use; I = P / (V x numberPhases), numberPhases default 3.
                n = period.number_phases or phases or self.default_phases
                return period.limit / (self.voltage_v * n)
        return None

    def _rebuild(self) -> None:
        stacks: list[list[list[ChargingProfile]]] = [[[], [], [], []] for _ in range(self.connectors + 1)]
        for conn, profile in self._installed.values():
            stacks[conn][_PURPOSE_INDEX[profile.purpose]].append(profile)
        self._stacks = [
            [tuple(sorted(s, key=lambda p: p.stack_level, reverse=True)) for s in purposes] for purposes in stacks
        ]
        self._cache.clear()

    def _bad(self, connector_id: int):
        raise ValueError(f"connector_id: expected 0..{self.connectors}, got {connector_id}")
