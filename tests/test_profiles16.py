"""Unit and property tests of the OCPP 1.6 smart-charging profile engine (emulators/profiles.py)."""

from __future__ import annotations

import copy
import math
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulators.profiles import (
    ChargingProfile,
    ChargingSchedule,
    ProfileEngine,
    ProfileError,
    SchedulePeriod,
    SetResult,
    parse_profile,
    profile_to_json,
)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
DAY = 86_400
WEEK = 7 * DAY


def prof(
    pid: int,
    purpose: str = "TxDefaultProfile",
    stack: int = 0,
    periods: tuple[tuple[int, float], ...] | list = ((0, 16.0),),
    kind: str = "Absolute",
    start: float | None = T0,
    duration: int | None = None,
    unit: str = "A",
    recurrency: str | None = None,
    valid_from: float | None = None,
    valid_to: float | None = None,
    tx: int | None = None,
    phases: int | None = None,
) -> ChargingProfile:
    if kind == "Relative":
        start = None
    sched = ChargingSchedule(
        unit, tuple(SchedulePeriod(s, float(lim), phases) for s, lim in periods), duration, start
    )
    return ChargingProfile(pid, stack, purpose, kind, sched, recurrency, valid_from, valid_to, tx)


def accepted(engine: ProfileEngine, connector: int, profile: ChargingProfile, tx: int | None = None) -> None:
    assert engine.set_profile(connector, profile, tx) == SetResult("Accepted")


# ---------------------------------------------------------------------------------------------------------------
# Installing: §5.16 rules
# ---------------------------------------------------------------------------------------------------------------


def test_charge_point_max_profile_only_on_connector_0():
    e = ProfileEngine(2)
    r = e.set_profile(1, prof(1, "ChargePointMaxProfile"), None)
    assert r.status == "Rejected" and "connector 0" in r.reason
    accepted(e, 0, prof(1, "ChargePointMaxProfile"))
    assert e.profiles() == [(0, prof(1, "ChargePointMaxProfile"))]


def test_charge_point_max_profile_cannot_be_relative():
    r = ProfileEngine(2).set_profile(0, prof(1, "ChargePointMaxProfile", kind="Relative"), None)
    assert r.status == "Rejected" and "Relative" in r.reason


def test_tx_profile_needs_connector_and_active_transaction():
    e = ProfileEngine(2)
    r = e.set_profile(1, prof(1, "TxProfile"), None)
    assert r.status == "Rejected" and "transaction" in r.reason
    assert e.set_profile(0, prof(1, "TxProfile"), 5).status == "Rejected"
    r = e.set_profile(1, prof(1, "TxProfile", tx=9), 5)
    assert r.status == "Rejected" and "9" in r.reason
    accepted(e, 1, prof(1, "TxProfile", tx=5), 5)
    accepted(e, 2, prof(2, "TxProfile"), 6)  # no transactionId in the profile: the active one
    assert len(e.profiles()) == 2


@pytest.mark.parametrize("connector", [-1, 3, 99])
def test_connector_out_of_range_rejected(connector):
    r = ProfileEngine(2).set_profile(connector, prof(1), None)
    assert r.status == "Rejected" and "connectorId" in r.reason


def test_configuration_bounds_rejected_with_reason():
    e = ProfileEngine(1, max_stack_level=3, max_periods=2, max_profiles=2, allowed_units=("A",))
    r = e.set_profile(1, prof(1, stack=4), None)
    assert r.status == "Rejected" and "ChargeProfileMaxStackLevel" in r.reason
    r = e.set_profile(1, prof(1, periods=((0, 1), (10, 2), (20, 3))), None)
    assert r.status == "Rejected" and "ChargingScheduleMaxPeriods" in r.reason
    r = e.set_profile(1, prof(1, unit="W"), None)
    assert r.status == "Rejected" and "ChargingScheduleAllowedChargingRateUnit" in r.reason
    accepted(e, 1, prof(1, stack=0))
    accepted(e, 1, prof(2, stack=1))
    r = e.set_profile(1, prof(3, stack=2), None)
    assert r.status == "Rejected" and "MaxChargingProfilesInstalled" in r.reason
    accepted(e, 1, prof(4, stack=1, periods=((0, 6),)))  # replaces id 2: still 2 installed
    accepted(e, 0, prof(1, stack=3))  # replaces id 1 by id
    assert [(c, p.id) for c, p in e.profiles()] == [(0, 1), (1, 4)]


def test_same_purpose_and_stack_level_on_same_connector_replaces():
    e = ProfileEngine(2)
    accepted(e, 1, prof(1, stack=2, periods=((0, 10),)))
    accepted(e, 1, prof(2, stack=2, periods=((0, 12),)))
    assert [p.id for _, p in e.profiles()] == [2]
    assert e.limit_a(1, T0 + 1, None) == 12
    # other connector, other purpose or other stack level: kept
    accepted(e, 2, prof(3, stack=2))
    accepted(e, 0, prof(4, stack=2))
    accepted(e, 1, prof(5, stack=3))
    accepted(e, 0, prof(6, "ChargePointMaxProfile", stack=2))
    assert sorted(p.id for _, p in e.profiles()) == [2, 3, 4, 5, 6]


def test_same_profile_id_replaces_across_connectors():
    e = ProfileEngine(2)
    accepted(e, 1, prof(7, stack=1, periods=((0, 10),)))
    accepted(e, 2, prof(7, stack=4, periods=((0, 11),)))
    assert e.profiles() == [(2, prof(7, stack=4, periods=((0, 11),)))]
    assert e.limit_a(1, T0, None) is None


# ---------------------------------------------------------------------------------------------------------------
# Limits: §3.13.2 stacking, §3.13.3 combining
# ---------------------------------------------------------------------------------------------------------------


def test_higher_stack_level_wins_even_if_higher_limit():
    e = ProfileEngine(1)
    accepted(e, 1, prof(1, stack=1, periods=((0, 10),)))
    accepted(e, 1, prof(2, stack=5, periods=((0, 20),)))
    accepted(e, 1, prof(3, stack=3, periods=((0, 6),)))
    assert e.limit_a(1, T0 + 5, None) == 20


def test_no_profile_no_limit():
    e = ProfileEngine(1)
    assert e.limit_a(1, T0, None) is None
    assert e.limit_a(1, T0, T0) is None
    assert e.max_profile_limit_a(T0) is None


def test_duration_end_falls_to_lower_stack_then_none():
    e = ProfileEngine(1)
    accepted(e, 1, prof(1, stack=0, periods=((0, 8),), duration=200))
    accepted(e, 1, prof(2, stack=1, periods=((0, 16),), duration=100))
    assert e.limit_a(1, T0 + 99, None) == 16
    assert e.limit_a(1, T0 + 100, None) == 8
    assert e.limit_a(1, T0 + 199, None) == 8
    assert e.limit_a(1, T0 + 200, None) is None


def test_before_start_schedule_lower_stack_applies():
    e = ProfileEngine(1)
    accepted(e, 1, prof(1, stack=0, periods=((0, 8),)))
    accepted(e, 1, prof(2, stack=1, periods=((0, 16),), start=T0 + 60))
    assert e.limit_a(1, T0 + 59, None) == 8
    assert e.limit_a(1, T0 + 60, None) == 16
    assert e.limit_a(1, T0 - 1, None) is None


def test_periods_step_in_time():
    e = ProfileEngine(1)
    accepted(e, 1, prof(1, periods=((0, 6), (60, 10), (120, 8))))
    assert [e.limit_a(1, T0 + s, None) for s in (0, 59, 60, 119, 120, 10_000)] == [6, 6, 10, 10, 8, 8]


def test_valid_from_and_valid_to():
    e = ProfileEngine(1)
    accepted(e, 1, prof(1, stack=0, periods=((0, 6),)))
    accepted(e, 1, prof(2, stack=1, periods=((0, 13),), valid_from=T0 + 100, valid_to=T0 + 200))
    assert e.limit_a(1, T0 + 99, None) == 6
    assert e.limit_a(1, T0 + 100, None) == 13  # validFrom <= now
    assert e.limit_a(1, T0 + 199.5, None) == 13
    assert e.limit_a(1, T0 + 200, None) == 6  # now < validTo


def test_w_to_a_conversion():
    e = ProfileEngine(1, voltage_v=230.0)
    accepted(e, 1, prof(1, unit="W", periods=((0, 11_040),)))
    assert e.limit_a(1, T0, None) == pytest.approx(16.0)  # 11040 / (230 * 3)
    assert e.limit_a(1, T0, None, phases=1) == pytest.approx(48.0)
    accepted(e, 1, prof(1, unit="W", periods=((0, 3_680),), phases=1))  # numberPhases wins over `phases`
    assert e.limit_a(1, T0, None, phases=3) == pytest.approx(16.0)
    assert ProfileEngine(1, voltage_v=240.0, default_phases=1).limit_a(1, T0, None) is None
    e1 = ProfileEngine(1, voltage_v=240.0, default_phases=1)
    accepted(e1, 1, prof(1, unit="W", periods=((0, 7_200),)))
    assert e1.limit_a(1, T0, None) == pytest.approx(30.0)


def test_daily_recurrence():
    e = ProfileEngine(1)
    # 32 A for the first 8 h of every day from T0, 10 A for the rest; nothing before T0.
    accepted(e, 1, prof(1, kind="Recurring", recurrency="Daily", periods=((0, 32), (8 * 3600, 10))))
    assert e.limit_a(1, T0 - 1, None) is None
    assert e.limit_a(1, T0 + 3 * 3600, None) == 32
    assert e.limit_a(1, T0 + 9 * 3600, None) == 10
    assert e.limit_a(1, T0 + DAY - 1, None) == 10
    assert e.limit_a(1, T0 + DAY, None) == 32
    assert e.limit_a(1, T0 + 5 * DAY + 3 * 3600, None) == 32
    assert e.limit_a(1, T0 + 5 * DAY + 9 * 3600, None) == 10


def test_daily_recurrence_with_duration_and_weekly():
    e = ProfileEngine(1)
    accepted(e, 1, prof(1, stack=0, periods=((0, 6),), start=T0 - WEEK))
    accepted(e, 1, prof(2, stack=2, kind="Recurring", recurrency="Daily", duration=3600, periods=((0, 20),)))
    accepted(e, 1, prof(3, stack=1, kind="Recurring", recurrency="Weekly", duration=DAY, periods=((0, 12),)))
    assert e.limit_a(1, T0 + 1800, None) == 20
    assert e.limit_a(1, T0 + 7200, None) == 12  # daily window over, weekly day still on
    assert e.limit_a(1, T0 + DAY + 1800, None) == 20
    assert e.limit_a(1, T0 + DAY + 7200, None) == 6  # weekly only on day 0
    assert e.limit_a(1, T0 + WEEK + 7200, None) == 12


def test_recurring_duration_longer_than_period_is_cut_at_next_recurrence():
    e = ProfileEngine(1)
    accepted(e, 1, prof(1, kind="Recurring", recurrency="Daily", duration=2 * DAY, periods=((0, 20), (DAY + 10, 5))))
    assert e.limit_a(1, T0 + DAY + 20, None) == 20  # restarted; period at DAY+10 is never reached


def test_relative_starts_with_transaction():
    e = ProfileEngine(1)
    accepted(e, 1, prof(1, kind="Relative", periods=((0, 10), (300, 20)), duration=600))
    assert e.limit_a(1, T0, None) is None  # no transaction: not in force
    tx = T0 + 1000
    assert e.limit_a(1, tx - 1, tx) is None
    assert e.limit_a(1, tx, tx) == 10
    assert e.limit_a(1, tx + 300, tx) == 20
    assert e.limit_a(1, tx + 600, tx) is None


def test_tx_profile_overrides_tx_default_and_max_caps():
    e = ProfileEngine(2)
    accepted(e, 0, prof(1, "ChargePointMaxProfile", periods=((0, 20),)))
    accepted(e, 0, prof(2, "TxDefaultProfile", stack=5, periods=((0, 6),)))
    assert e.limit_a(1, T0, None) == 6
    accepted(e, 1, prof(3, "TxProfile", stack=0, periods=((0, 32),), duration=100), 42)
    assert e.limit_a(1, T0 + 10, T0) == 20  # Tx 32 over TxDefault 6, capped by max 20
    assert e.limit_a(1, T0 + 10, None) == 6  # no transaction running: TxProfile not in force
    assert e.limit_a(2, T0 + 10, T0) == 6  # TxProfile is for connector 1 only
    assert e.limit_a(1, T0 + 100, T0) == 6  # TxProfile duration over: TxDefault again
    assert e.max_profile_limit_a(T0) == 20
    assert e.limit_a(0, T0, None) == 20


def test_connector_tx_default_beats_connector_0_and_falls_back():
    e = ProfileEngine(2)
    accepted(e, 0, prof(1, stack=7, periods=((0, 6),)))
    accepted(e, 1, prof(2, stack=0, periods=((0, 14),), duration=100))
    assert e.limit_a(1, T0 + 10, None) == 14  # the connector's own, despite the lower stack level
    assert e.limit_a(2, T0 + 10, None) == 6
    assert e.limit_a(1, T0 + 100, None) == 6  # the connector's own ended: connector 0's applies


def test_limit_a_rejects_unknown_connector():
    with pytest.raises(ValueError):
        ProfileEngine(2).limit_a(3, T0, None)


# ---------------------------------------------------------------------------------------------------------------
# Clearing: §5.5, §3.13.1
# ---------------------------------------------------------------------------------------------------------------


def _loaded() -> ProfileEngine:
    e = ProfileEngine(2)
    accepted(e, 0, prof(1, "ChargePointMaxProfile", stack=0))
    accepted(e, 0, prof(2, "TxDefaultProfile", stack=1))
    accepted(e, 1, prof(3, "TxDefaultProfile", stack=1))
    accepted(e, 1, prof(4, "TxProfile", stack=2), 77)
    accepted(e, 2, prof(5, "TxDefaultProfile", stack=2))
    return e


def test_clear_by_id():
    e = _loaded()
    assert e.clear(profile_id=3) == "Accepted"
    assert sorted(p.id for _, p in e.profiles()) == [1, 2, 4, 5]
    assert e.clear(profile_id=3) == "Unknown"
    assert e.clear(profile_id=99, connector_id=1) == "Unknown"  # id given: other criteria ignored


def test_clear_by_criteria():
    e = _loaded()
    assert e.clear(purpose="TxDefaultProfile", stack_level=1) == "Accepted"
    assert sorted(p.id for _, p in e.profiles()) == [1, 4, 5]
    assert e.clear(connector_id=0) == "Accepted"
    assert sorted(p.id for _, p in e.profiles()) == [4, 5]
    assert e.clear(connector_id=2, purpose="TxProfile") == "Unknown"
    assert e.clear(connector_id=1, stack_level=2) == "Accepted"
    assert [p.id for _, p in e.profiles()] == [5]


def test_clear_everything_then_unknown():
    e = _loaded()
    assert e.clear() == "Accepted"
    assert e.profiles() == []
    assert e.clear() == "Unknown"
    assert e.limit_a(1, T0, T0) is None


def test_end_transaction_drops_tx_profiles_of_that_connector():
    e = _loaded()
    accepted(e, 2, prof(6, "TxProfile", stack=0, periods=((0, 9),)), 78)
    e.end_transaction(1)
    assert sorted(p.id for _, p in e.profiles()) == [1, 2, 3, 5, 6]
    e.end_transaction(1)  # idempotent
    assert e.limit_a(2, T0, T0) == 9
    assert [p.id for _, p in e.profiles(2)] == [5, 6]


# ---------------------------------------------------------------------------------------------------------------
# GetCompositeSchedule: §5.7
# ---------------------------------------------------------------------------------------------------------------


def periods_of(schedule: ChargingSchedule) -> list[tuple[int, float]]:
    return [(p.start_period_s, p.limit) for p in schedule.periods]


def test_composite_schedule_tc_k_41_shape():
    # The 2.0.1 worked example TC_K_41_CS, which 1.6 §3.13.3 combines the same way.
    e = ProfileEngine(1)
    accepted(e, 0, prof(1, "ChargePointMaxProfile", periods=((0, 10),)))
    accepted(e, 1, prof(2, "TxDefaultProfile", periods=((0, 6), (60, 10), (120, 8), (180, 15), (260, 8))))
    accepted(e, 1, prof(3, "TxProfile", periods=((0, 8), (50, 11), (140, 16), (200, 6), (240, 12))), 1)
    cs = e.composite_schedule(1, T0, 400, tx_start=T0)
    assert periods_of(cs) == [(0, 8), (50, 10), (200, 6), (240, 10)]
    assert cs.rate_unit == "A" and cs.duration_s == 400 and cs.start_schedule == T0
    # the same, asked 30 s later: shifted
    assert periods_of(e.composite_schedule(1, T0 + 30, 400, tx_start=T0)) == [(0, 8), (20, 10), (170, 6), (210, 10)]


def test_composite_schedule_no_limit_spans_and_connector_0():
    e = ProfileEngine(1)
    accepted(e, 0, prof(1, "ChargePointMaxProfile", periods=((0, 25),), start=T0 + 100, duration=100))
    accepted(e, 1, prof(2, periods=((0, 16),), start=T0 + 150, duration=100))
    cs = e.composite_schedule(1, T0, 300, no_limit_a=40.0)
    assert periods_of(cs) == [(0, 40), (100, 25), (150, 16), (250, 40)]
    assert periods_of(e.composite_schedule(0, T0, 300)) == [(0, 32), (100, 25), (200, 32)]
    assert periods_of(e.composite_schedule(1, T0 + 160, 20)) == [(0, 16)]


def test_composite_schedule_follows_validity_and_relative():
    e = ProfileEngine(1)
    accepted(e, 1, prof(1, stack=0, periods=((0, 10),)))
    accepted(e, 1, prof(2, stack=1, periods=((0, 20),), valid_from=T0 + 60, valid_to=T0 + 120))
    accepted(e, 1, prof(3, "TxProfile", kind="Relative", periods=((0, 6), (30, 7)), duration=60), 5)
    assert periods_of(e.composite_schedule(1, T0, 300)) == [(0, 10), (60, 20), (120, 10)]
    tx = T0 + 200
    assert periods_of(e.composite_schedule(1, T0, 300, tx_start=tx)) == [
        (0, 10), (60, 20), (120, 10), (200, 6), (230, 7), (260, 10)
    ]


def test_composite_schedule_in_watts_and_recurring():
    e = ProfileEngine(1, voltage_v=230)
    accepted(e, 1, prof(1, kind="Recurring", recurrency="Daily", periods=((0, 16), (3600, 10)), start=T0 - DAY))
    cs = e.composite_schedule(1, T0 - 1800, 2 * 3600 + DAY, rate_unit="W", no_limit_a=32.0)
    assert cs.rate_unit == "W"
    assert periods_of(cs) == [
        (0, pytest.approx(10 * 690)),
        (1800, pytest.approx(16 * 690)),
        (1800 + 3600, pytest.approx(10 * 690)),
        (1800 + DAY, pytest.approx(16 * 690)),
        (1800 + DAY + 3600, pytest.approx(10 * 690)),
    ]


def test_composite_schedule_fractional_start_rounds_up():
    e = ProfileEngine(1)
    accepted(e, 1, prof(1, periods=((0, 6), (10, 12))))
    cs = e.composite_schedule(1, T0 + 0.5, 30)
    assert periods_of(cs) == [(0, 6), (10, 12)]  # change at 9.5 s reported at 10 s


# ---------------------------------------------------------------------------------------------------------------
# Parsing: §7.8, §7.13, §7.14
# ---------------------------------------------------------------------------------------------------------------


def wire(**over) -> dict:
    d = {
        "chargingProfileId": 3,
        "transactionId": 11,
        "stackLevel": 2,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Absolute",
        "validFrom": "2024-01-01T00:00:00Z",
        "validTo": "2024-01-02T01:00:00+01:00",
        "chargingSchedule": {
            "duration": 3600,
            "startSchedule": "2024-01-01T12:00:00.250Z",
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [
                {"startPeriod": 0, "limit": Decimal("16.5")},
                {"startPeriod": 600, "limit": 8, "numberPhases": 1},
            ],
            "minChargingRate": Decimal("6.0"),
        },
    }
    d.update(over)
    return d


def test_parse_profile_fields():
    p = parse_profile(wire())
    assert p == ChargingProfile(
        id=3,
        stack_level=2,
        purpose="TxProfile",
        kind="Absolute",
        schedule=ChargingSchedule(
            "A",
            (SchedulePeriod(0, 16.5), SchedulePeriod(600, 8.0, 1)),
            duration_s=3600,
            start_schedule=1704110400.25,
            min_charging_rate=6.0,
        ),
        recurrency_kind=None,
        valid_from=1704067200.0,
        valid_to=1704153600.0,
        transaction_id=11,
    )
    assert isinstance(p.schedule.periods[1].limit, float)
    j = profile_to_json(p)
    assert j["validTo"] == "2024-01-02T00:00:00Z"
    assert j["chargingSchedule"]["startSchedule"] == "2024-01-01T12:00:00.250Z"
    assert parse_profile(j) == p


def test_parse_relative_and_recurring_minimal():
    p = parse_profile(
        {
            "chargingProfileId": 1,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": {
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7400}],
            },
        }
    )
    assert p.kind == "Relative" and p.schedule.start_schedule is None and p.valid_from is None
    d = wire(chargingProfileKind="Recurring", recurrencyKind="Weekly")
    assert parse_profile(d).recurrency_kind == "Weekly"
    d["chargingSchedule"]["startSchedule"] = "2024-01-01T12:00:00-05:30"
    assert parse_profile(d).schedule.start_schedule == 1704110400 + 5.5 * 3600


def _del(path: str):
    def edit(d: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            d = d[int(key)] if key.isdigit() else d[key]
        del d[last]

    return edit


def _set(path: str, value):
    def edit(d: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            d = d[int(key)] if key.isdigit() else d[key]
        if last.isdigit():
            d[int(last)] = value
        else:
            d[last] = value

    return edit


S = "chargingProfile.chargingSchedule"
P = f"{S}.chargingSchedulePeriod"


@pytest.mark.parametrize(
    "edit, field, words",
    [
        (_del("chargingProfileId"), "chargingProfile.chargingProfileId", "missing"),
        (_del("stackLevel"), "chargingProfile.stackLevel", "missing"),
        (_set("stackLevel", -1), "chargingProfile.stackLevel", ">= 0"),
        (_set("stackLevel", True), "chargingProfile.stackLevel", "integer"),
        (_set("chargingProfilePurpose", "TxMax"), "chargingProfile.chargingProfilePurpose", "TxDefaultProfile"),
        (_set("chargingProfileKind", "Sometimes"), "chargingProfile.chargingProfileKind", "Relative"),
        (_del("chargingSchedule"), "chargingProfile.chargingSchedule", "missing"),
        (_del("chargingSchedule.startSchedule"), f"{S}.startSchedule", "missing"),
        (_set("chargingProfileKind", "Recurring"), "chargingProfile.recurrencyKind", "missing"),
        (_set("recurrencyKind", "Hourly"), "chargingProfile.recurrencyKind", "Daily"),
        (_set("validFrom", "yesterday"), "chargingProfile.validFrom", "RFC 3339"),
        (_set("validTo", "2024-02-30T00:00:00Z"), "chargingProfile.validTo", "valid date-time"),
        (_set("chargingSchedule.chargingRateUnit", "kW"), f"{S}.chargingRateUnit", "A, W"),
        (_set("chargingSchedule.duration", -5), f"{S}.duration", ">= 0"),
        (_del("chargingSchedule.chargingSchedulePeriod"), f"{S}.chargingSchedulePeriod", "missing"),
        (_set("chargingSchedule.chargingSchedulePeriod", []), f"{S}.chargingSchedulePeriod", "at least one"),
        (_set("chargingSchedule.chargingSchedulePeriod.0.startPeriod", 5), f"{P}[0].startPeriod", "start at 0"),
        (_set("chargingSchedule.chargingSchedulePeriod.1.startPeriod", 0), f"{P}[1].startPeriod", "must ascend"),
        (_set("chargingSchedule.chargingSchedulePeriod.1.limit", -1), f"{P}[1].limit", ">= 0"),
        (_set("chargingSchedule.chargingSchedulePeriod.1.limit", "8"), f"{P}[1].limit", "number"),
        (_set("chargingSchedule.chargingSchedulePeriod.1.limit", float("nan")), f"{P}[1].limit", "finite"),
        (_del("chargingSchedule.chargingSchedulePeriod.1.limit"), f"{P}[1].limit", "missing"),
        (_set("chargingSchedule.chargingSchedulePeriod.1.numberPhases", 4), f"{P}[1].numberPhases", "1, 2 or 3"),
        (_set("chargingSchedule.chargingSchedulePeriod.1", 7), f"{P}[1]", "object"),
    ],
)
def test_parse_errors_name_the_field(edit, field, words):
    d = copy.deepcopy(wire())
    edit(d)
    with pytest.raises(ProfileError) as info:
        parse_profile(d)
    message = str(info.value)
    assert message.startswith(field + ": "), message
    assert words in message
    assert isinstance(info.value, ValueError)


def test_parse_error_example_from_the_contract():
    d = wire()
    d["chargingSchedule"]["chargingSchedulePeriod"][1]["startPeriod"] = 0
    with pytest.raises(ProfileError, match=r"^chargingProfile\.chargingSchedule\.chargingSchedulePeriod\[1\]"
                       r"\.startPeriod: periods must ascend$"):
        parse_profile(d)
    with pytest.raises(ProfileError, match=r"^csChargingProfiles\.stackLevel: "):
        parse_profile(wire(stackLevel=-3), where="csChargingProfiles")


# ---------------------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------------------

TX_START = T0 + 3_000
TX_ID = 7


def _reference_period(p: ChargingProfile, t: float, tx_start: float | None) -> SchedulePeriod | None:
    """Brute force: list the absolute intervals each period covers, and look t up in them."""
    s = p.schedule
    if p.kind == "Relative":
        if tx_start is None:
            return None
        origins, cycle = [tx_start], math.inf
    elif p.kind == "Absolute":
        origins, cycle = [s.start_schedule], math.inf
    else:
        cycle = DAY if p.recurrency_kind == "Daily" else WEEK
        origins = []
        o = s.start_schedule
        while o <= t:
            origins.append(o)
            o += cycle
    lo = -math.inf if p.valid_from is None else p.valid_from
    hi = math.inf if p.valid_to is None else p.valid_to
    for origin in origins:
        end = origin + min(cycle, math.inf if s.duration_s is None else s.duration_s)
        for i, period in enumerate(s.periods):
            a = origin + period.start_period_s
            b = origin + s.periods[i + 1].start_period_s if i + 1 < len(s.periods) else math.inf
            if max(a, lo) <= t < min(b, end, hi):
                return period
    return None


def _reference_limit(
    profiles: list[tuple[int, ChargingProfile]], connector: int, purpose: str, t: float, tx_start, phases, v=230.0
) -> float | None:
    stack = sorted((p for c, p in profiles if c == connector and p.purpose == purpose), key=lambda p: -p.stack_level)
    for p in stack:
        period = _reference_period(p, t, tx_start)
        if period is not None:
            if p.schedule.rate_unit == "A":
                return period.limit
            return period.limit / (v * (period.number_phases or phases or 3))
    return None


def _reference_composite(engine: ProfileEngine, connector: int, t: float, tx_start, phases):
    installed = engine.profiles()
    cp = _reference_limit(installed, 0, "ChargePointMaxProfile", t, None, phases)
    tx = _reference_limit(installed, connector, "TxProfile", t, tx_start, phases) if tx_start is not None else None
    if tx is None:
        tx = _reference_limit(installed, connector, "TxDefaultProfile", t, tx_start, phases)
    if tx is None:
        tx = _reference_limit(installed, 0, "TxDefaultProfile", t, tx_start, phases)
    return cp, tx


times = st.integers(-DAY, DAY).map(lambda s: T0 + s)
limits_a = st.sampled_from([0.0, 6.0, 6.5, 8.0, 10.2, 13.0, 16.0, 20.0, 25.0, 32.0, 63.0]) | st.integers(0, 80).map(
    float
)


@st.composite
def schedules(draw, unit=None, relative_ok=True, kind=None):
    unit = unit or draw(st.sampled_from(["A", "W"]))
    kinds = ["Absolute", "Recurring", "Relative"] if relative_ok else ["Absolute", "Recurring"]
    kind = kind or draw(st.sampled_from(kinds))
    n = draw(st.integers(1, 4))
    gaps = draw(st.lists(st.integers(1, 20_000), min_size=n - 1, max_size=n - 1))
    starts = [0]
    for g in gaps:
        starts.append(starts[-1] + g)
    lims = draw(st.lists(limits_a if unit == "A" else limits_a.map(lambda a: a * 690), min_size=n, max_size=n))
    phases = draw(st.none() | st.integers(1, 3))
    sched = ChargingSchedule(
        unit,
        tuple(SchedulePeriod(s, lim, phases) for s, lim in zip(starts, lims)),
        draw(st.none() | st.integers(1, DAY)),
        None if kind == "Relative" else draw(times),
    )
    return kind, sched


@st.composite
def profiles_for(draw, pid, purpose):
    kind, sched = draw(schedules(relative_ok=purpose != "ChargePointMaxProfile"))
    vf = draw(st.none() | times)
    vt = draw(st.none() | times)
    if vf is not None and vt is not None and vt < vf:
        vf, vt = vt, vf
    return ChargingProfile(
        pid,
        draw(st.integers(0, 8)),
        purpose,
        kind,
        sched,
        draw(st.sampled_from(["Daily", "Weekly"])) if kind == "Recurring" else None,
        vf,
        vt,
    )


@st.composite
def loaded_engines(draw):
    """An engine with 2 connectors, a transaction on connector 1 and up to 8 random profiles installed."""
    e = ProfileEngine(2)
    for pid in range(draw(st.integers(1, 8))):
        purpose = draw(st.sampled_from(["ChargePointMaxProfile", "TxDefaultProfile", "TxProfile"]))
        p = draw(profiles_for(pid, purpose))
        if purpose == "ChargePointMaxProfile":
            connector = 0
        elif purpose == "TxProfile":
            connector = 1
        else:
            connector = draw(st.sampled_from([0, 1, 2]))
        assert e.set_profile(connector, p, TX_ID if connector == 1 else None).status == "Accepted"
    return e


@settings(max_examples=60, deadline=None)
@given(
    e=loaded_engines(),
    nows=st.lists(times, min_size=1, max_size=12),
    phases=st.none() | st.integers(1, 3),
    connector=st.sampled_from([1, 2]),
)
def test_property_composite_never_exceeds_applicable_limits(e, nows, phases, connector):
    tx_start = TX_START if connector == 1 else None
    for now in nows:
        got = e.limit_a(connector, now, tx_start, phases)
        cp, tx = _reference_composite(e, connector, now, tx_start, phases)
        if cp is not None:
            assert got is not None and got <= cp
            assert e.max_profile_limit_a(now, phases) == pytest.approx(cp)
        if tx is not None:
            assert got is not None and got <= tx
        expected = None if cp is None and tx is None else min(x for x in (cp, tx) if x is not None)
        assert got == (None if expected is None else pytest.approx(expected))


@settings(max_examples=100, deadline=None)
@given(
    levels=st.lists(st.integers(0, 8), min_size=2, max_size=5, unique=True),
    lims=st.lists(limits_a, min_size=5, max_size=5),
    starts=st.lists(st.integers(0, 5_000), min_size=5, max_size=5),
    purpose=st.sampled_from(["ChargePointMaxProfile", "TxDefaultProfile", "TxProfile"]),
    later=st.integers(5_000, 50_000),
)
def test_property_higher_stack_level_in_force_wins(levels, lims, starts, purpose, later):
    e = ProfileEngine(1)
    connector = 0 if purpose == "ChargePointMaxProfile" else 1
    for i, level in enumerate(levels):
        accepted(e, connector, prof(i, purpose, stack=level, periods=((0, lims[i]),), start=T0 + starts[i]), TX_ID)
    top = max(range(len(levels)), key=lambda i: levels[i])
    now = T0 + later
    assert e.limit_a(1, now, T0) == lims[top]


@settings(max_examples=100, deadline=None)
@given(
    rest=st.lists(st.tuples(st.integers(0, 7), limits_a, st.none() | st.integers(1, 20_000)), max_size=4),
    top_limit=limits_a,
    top_duration=st.integers(1, 10_000),
    after=st.integers(0, 30_000),
    purpose=st.sampled_from(["ChargePointMaxProfile", "TxDefaultProfile"]),
)
def test_property_after_top_duration_the_rest_decides(rest, top_limit, top_duration, after, purpose):
    connector = 0 if purpose == "ChargePointMaxProfile" else 1
    full, remaining = ProfileEngine(1), ProfileEngine(1)
    for i, (level, lim, duration) in enumerate(rest):
        p = prof(i, purpose, stack=level, periods=((0, lim),), duration=duration)
        full.set_profile(connector, p, None)
        remaining.set_profile(connector, p, None)
    accepted(full, connector, prof(100, purpose, stack=8, periods=((0, top_limit),), duration=top_duration))
    assert full.limit_a(1, T0 + top_duration - 1, None) == top_limit
    now = T0 + top_duration + after
    assert full.limit_a(1, now, None) == remaining.limit_a(1, now, None)


@settings(max_examples=40, deadline=None)
@given(
    e=loaded_engines(),
    start=times,
    duration=st.sampled_from([3600, 6 * 3600, DAY, 2 * DAY]) | st.integers(1, DAY),
    connector=st.sampled_from([0, 1, 2]),
    unit=st.sampled_from(["A", "W"]),
    phases=st.none() | st.integers(1, 3),
    samples=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=40),
)
def test_property_composite_schedule_agrees_with_limit_a(e, start, duration, connector, unit, phases, samples):
    tx_start = TX_START if connector == 1 else None
    cs = e.composite_schedule(connector, start, duration, unit, tx_start, phases, no_limit_a=50.0)
    offsets = [p.start_period_s for p in cs.periods]
    assert offsets[0] == 0 and offsets == sorted(set(offsets)) and offsets[-1] < duration
    assert all(a.limit != b.limit for a, b in zip(cs.periods, cs.periods[1:]))  # merged
    factor = 1.0 if unit == "A" else 230.0 * (phases or 3)
    for fraction in samples + [0.0]:
        offset = int(fraction * duration)
        period = [p for p in cs.periods if p.start_period_s <= offset][-1]
        want = e.limit_a(connector, start + offset, tx_start, phases)
        assert period.limit == pytest.approx((50.0 if want is None else want) * factor)


# microsecond-exact instants: the wire carries RFC 3339 to the microsecond
wire_times = st.integers(0, 4_102_444_800 * 10**6).map(lambda us: us / 10**6) | times


@st.composite
def any_profiles(draw):
    purpose = draw(st.sampled_from(["ChargePointMaxProfile", "TxDefaultProfile", "TxProfile"]))
    kind, sched = draw(schedules())
    sched = ChargingSchedule(
        sched.rate_unit,
        tuple(
            SchedulePeriod(p.start_period_s, draw(st.floats(0, 1e6, allow_nan=False)), p.number_phases)
            for p in sched.periods
        ),
        sched.duration_s,
        None if kind == "Relative" else draw(wire_times),
        draw(st.none() | st.floats(0, 100)),
    )
    return ChargingProfile(
        draw(st.integers(-(2**31), 2**31 - 1)),
        draw(st.integers(0, 100)),
        purpose,
        kind,
        sched,
        draw(st.sampled_from(["Daily", "Weekly"])) if kind == "Recurring" else None,
        draw(st.none() | wire_times),
        draw(st.none() | wire_times),
        draw(st.none() | st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=80, deadline=None)
@given(p=any_profiles())
def test_property_json_round_trip(p):
    j = profile_to_json(p)
    assert parse_profile(j) == p
    assert profile_to_json(parse_profile(j)) == j
