"""The profile engine's limit cache (emulators/profiles.py): a remembered limit must be exactly the computed one.

``ProfileEngine.limit_a`` answers from a cache until the next boundary of any profile it reads (period start, duration
end, validFrom/validTo, transaction start of a Relative schedule, recurrence) or until a profile changes. The property
test replays random installs, clears, external constraints and transactions of both OCPP versions, and asks at random
instants, at every boundary and a rounding step either side of it, stepping forward as a station does and jumping
back, each answer compared with ``_composite_limit_a`` (the same rules, without the cache) by ``==``.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from emulators.profiles import (
    CHARGING_STATION_MAX,
    EXTERNAL_CONSTRAINTS,
    RECURRENCE_S,
    ChargingProfile,
    ChargingSchedule,
    ProfileEngine,
    SchedulePeriod,
)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
DAY = 86_400
CONNECTORS = 2
CP_MAX = "ChargePointMaxProfile"
TX_DEFAULT = "TxDefaultProfile"
TX = "TxProfile"


def _profile(pid: int, purpose: str, periods: tuple[tuple[int, float], ...], start: float | None = T0,
             kind: str = "Absolute", duration: int | None = None, valid_from: float | None = None,
             valid_to: float | None = None, recurrency: str | None = None) -> ChargingProfile:
    schedule = ChargingSchedule("A", tuple(SchedulePeriod(s, limit) for s, limit in periods), duration, start)
    return ChargingProfile(pid, 0, purpose, kind, schedule, recurrency, valid_from, valid_to)


# -- examples ------------------------------------------------------------------------------------------------------


def test_a_station_stepping_each_second_recomputes_only_at_boundaries() -> None:
    engine = ProfileEngine(1)
    profile = _profile(1, TX_DEFAULT, ((0, 16.0), (600, 10.0), (1200, 6.0)), duration=1800)
    assert engine.set_profile(1, profile, None).status == "Accepted"
    computed = []
    uncached = engine._composite_limit_a

    def counting(*args):
        computed.append(args[1])
        return uncached(*args)

    engine._composite_limit_a = counting  # type: ignore[method-assign]
    answers = [engine.limit_a(1, T0 - 60 + k, None, 3) for k in range(3600)]
    assert answers == [uncached(1, T0 - 60 + k, None, 3) for k in range(3600)]
    assert answers[59:61] == [None, 16.0] and answers[659:661] == [16.0, 10.0] and answers[1859:1861] == [6.0, None]
    # Once before the start, and at (and just after, inside the rounding slack) each of the 4 boundaries.
    assert len(computed) <= 1 + 4 * 2


def test_a_profile_change_is_seen_at_once() -> None:
    engine = ProfileEngine(2)
    assert engine.limit_a(1, T0, None) is None
    assert engine.set_profile(0, _profile(1, TX_DEFAULT, ((0, 16.0),)), None).status == "Accepted"
    assert engine.limit_a(1, T0 + 1, None) == 16.0
    assert engine.set_profile(1, _profile(2, TX_DEFAULT, ((0, 10.0),)), None).status == "Accepted"
    assert engine.limit_a(1, T0 + 2, None) == 10.0
    assert engine.set_profile(1, _profile(3, TX, ((0, 8.0),), kind="Relative", start=None), 5).status == "Accepted"
    assert engine.limit_a(1, T0 + 3, T0) == 8.0
    engine.end_transaction(1)
    assert engine.limit_a(1, T0 + 4, T0) == 10.0
    assert engine.clear(connector_id=1) == "Accepted"
    assert engine.limit_a(1, T0 + 5, None) == 16.0
    assert engine.set_profile(0, _profile(4, CP_MAX, ((0, 12.0),)), None).status == "Accepted"
    assert engine.max_profile_limit_a(T0 + 6) == 12.0
    assert engine.clear() == "Accepted"
    assert engine.limit_a(1, T0 + 7, None) is None and engine.max_profile_limit_a(T0 + 7) is None


def test_a_relative_schedule_follows_the_transaction_start() -> None:
    engine = ProfileEngine(1)
    assert engine.set_profile(1, _profile(1, TX_DEFAULT, ((0, 6.0), (60, 16.0)), kind="Relative", start=None),
                              None).status == "Accepted"
    assert engine.limit_a(1, T0 + 100, None) is None
    assert engine.limit_a(1, T0 + 100, T0 + 50) == 6.0
    assert engine.limit_a(1, T0 + 100, T0) == 16.0
    assert engine.limit_a(1, T0 + 101, T0 + 50) == 6.0


def test_a_recurring_schedule_repeats_through_the_cache() -> None:
    engine = ProfileEngine(1)
    daily = _profile(1, TX_DEFAULT, ((0, 16.0), (3600, 6.0)), kind="Recurring", recurrency="Daily", duration=7200)
    assert engine.set_profile(1, daily, None).status == "Accepted"
    for day in range(3):
        noon = T0 + day * DAY
        assert [engine.limit_a(1, noon + s, None) for s in (-1, 0, 3599, 3600, 7199, 7200)] == [
            None, 16.0, 16.0, 6.0, 6.0, None]


# -- the property --------------------------------------------------------------------------------------------------

offsets_s = st.sampled_from([1, 2, 59, 60, 900, 3600, 20_000]) | st.integers(1, 30_000)
instants = st.sampled_from([0.0, 0.5, 1e-6, 59.999999]) | st.integers(-2 * DAY, 2 * DAY).map(float)


@st.composite
def profiles(draw, pid: int, purpose: str) -> ChargingProfile:
    kinds = ["Absolute", "Recurring"] if purpose in (CP_MAX, CHARGING_STATION_MAX) else ["Absolute", "Recurring",
                                                                                         "Relative"]
    kind = draw(st.sampled_from(kinds))
    starts = [0]
    for gap in draw(st.lists(offsets_s, max_size=3)):
        starts.append(starts[-1] + gap)
    unit = draw(st.sampled_from(["A", "W"]))
    limits = st.sampled_from([0.0, 6.0, 10.0, 16.0, 32.0]) | st.integers(0, 80).map(float)
    periods = tuple(
        SchedulePeriod(s, draw(limits) * (1.0 if unit == "A" else 690.0), draw(st.none() | st.integers(1, 3)))
        for s in starts
    )
    valid_from = draw(st.none() | instants.map(lambda s: T0 + s))
    valid_to = draw(st.none() | instants.map(lambda s: T0 + s))
    if valid_from is not None and valid_to is not None and valid_to < valid_from:
        valid_from, valid_to = valid_to, valid_from
    schedule = ChargingSchedule(
        unit,
        periods,
        draw(st.none() | offsets_s | st.sampled_from([DAY, DAY + 1, 8 * DAY])),
        None if kind == "Relative" else T0 + draw(instants),
    )
    return ChargingProfile(
        pid,
        draw(st.integers(0, 3)),
        purpose,
        kind,
        schedule,
        draw(st.sampled_from(["Daily", "Weekly"])) if kind == "Recurring" else None,
        valid_from,
        valid_to,
        None,
    )


def _boundaries(engine: ProfileEngine, tx_starts: dict[int, float | None], around: float) -> list[float]:
    """Every instant near ``around`` at which an installed profile may change what it allows."""
    out = []
    for _, p in engine.profiles():
        sched = p.schedule
        out += [b for b in (p.valid_from, p.valid_to) if b is not None]
        origins = [s for s in tx_starts.values() if s is not None] if p.kind == "Relative" else [sched.start_schedule]
        if p.kind == "Recurring":
            cycle = RECURRENCE_S[p.recurrency_kind]  # type: ignore[index]
            k = math.floor((around - sched.start_schedule) / cycle)  # type: ignore[operator]
            first = sched.start_schedule
            origins = [first + (k + j) * cycle for j in (-1, 0, 1) if k + j >= 0]  # type: ignore[operator]
        edges = [q.start_period_s for q in sched.periods] + ([sched.duration_s] if sched.duration_s else [])
        out += [o + e for o in origins for e in edges]  # type: ignore[operator]
    return out


def _near(boundary: float) -> list[float]:
    return [boundary, math.nextafter(boundary, -math.inf), math.nextafter(boundary, math.inf), boundary - 1e-6,
            boundary + 1e-6, boundary - 1.0, boundary + 1.0]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), version=st.sampled_from(["1.6", "2.0.1"]), phases=st.none() | st.integers(1, 3))
def test_property_cached_limit_equals_the_computed_one(data, version: str, phases: int | None) -> None:
    engine = ProfileEngine(CONNECTORS, version=version)
    tx_ids: dict[int, str | int | None] = {c: None for c in range(1, CONNECTORS + 1)}
    tx_starts: dict[int, float | None] = {c: None for c in range(1, CONNECTORS + 1)}
    max_purpose = CP_MAX if version == "1.6" else CHARGING_STATION_MAX
    purposes = [max_purpose, TX_DEFAULT, TX] + ([EXTERNAL_CONSTRAINTS] if version == "2.0.1" else [])
    now = T0 + data.draw(instants)
    # A transaction on connector 1 from the start, so that TxProfiles have a home.
    tx_ids[1], tx_starts[1] = ("tx-1" if version == "2.0.1" else 1), now - 600.0
    installs = data.draw(st.integers(1, 8))
    steps = installs + data.draw(st.integers(1, 10))
    for step in range(steps):
        # A loaded engine first (stacks several deep), then changes and questions mixed, questions last.
        if step < installs:
            action = "set"
        elif step == steps - 1:
            action = "ask"
        else:
            action = data.draw(st.sampled_from(["set", "clear", "begin", "begin", "end", "ask", "ask", "ask"]))
        if action == "set":
            purpose = data.draw(st.sampled_from(purposes))
            connector = 0 if purpose == max_purpose else data.draw(st.integers(0 if purpose != TX else 1, CONNECTORS))
            profile = data.draw(profiles(data.draw(st.integers(1, 12)), purpose))
            if purpose == TX and tx_ids[connector] is not None:
                profile = ChargingProfile(**{**profile.__dict__, "transaction_id": tx_ids[connector]})
            if purpose == EXTERNAL_CONSTRAINTS:
                engine.set_external_constraints(connector, profile)
            else:
                engine.set_profile(connector, profile, tx_ids.get(connector))  # Rejected is fine: state as it is
        elif action == "clear":
            if version == "2.0.1" and data.draw(st.booleans()):
                engine.clear_external_constraints(data.draw(st.none() | st.integers(0, CONNECTORS)))
            else:
                engine.clear(data.draw(st.none() | st.integers(1, 10)),
                             data.draw(st.none() | st.integers(0, CONNECTORS)),
                             data.draw(st.none() | st.sampled_from(purposes)))
        elif action == "begin":
            connector = data.draw(st.integers(1, CONNECTORS))
            tx_ids[connector] = str(step) if version == "2.0.1" else step
            tx_starts[connector] = now + data.draw(st.sampled_from([0.0, -0.5, -3600.0]))
        elif action == "end":
            connector = data.draw(st.integers(1, CONNECTORS))
            engine.end_transaction(connector)
            tx_ids[connector], tx_starts[connector] = None, None
        else:
            near = sorted(_boundaries(engine, tx_starts, now)) or [now]
            anchor = data.draw(st.sampled_from(near))
            asked = _near(anchor) + [anchor + k for k in range(-3, 4)]  # stepping, as a station does
            asked += data.draw(st.lists(instants.map(lambda s: T0 + s), max_size=4))  # and jumping about
            asked = data.draw(st.permutations(asked)) if data.draw(st.booleans()) else sorted(asked)
            for t in asked:
                for connector in range(CONNECTORS + 1):
                    tx_start = tx_starts.get(connector)
                    want = engine._composite_limit_a(connector, t, tx_start, phases)
                    assert engine.limit_a(connector, t, tx_start, phases) == want, (connector, t, tx_start)
                assert engine.max_profile_limit_a(t, phases) == engine._composite_limit_a(0, t, None, phases)
            now = asked[-1]
