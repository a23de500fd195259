"""The priority reference controller (controllers/priority.py), as a pure object, and once behind the real host.

As in tests/test_earliest_deadline.py, the site meter is the simplest honest one: every EV is
three-phase and draws what it was given, so the budget settles at the site limit less the 1 A margin.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.runner import run_scenario
from controllers.api import ChargingNeeds, Limit, MeterSample, Session, SiteConfig, SiteReading, StationConfig
from controllers.priority import Priority

NOW = 1_718_000_000.0
HOUR = 3600.0


def _site(limit_a: float, stations: int = 4, priorities: dict[int, int] | None = None, **options) -> SiteConfig:
    priorities = priorities or {}
    return SiteConfig(limit_a=limit_a, options=options,
                      stations=tuple(StationConfig(f"CP{i}", 32.0, ocpp="2.0.1", priority=priorities.get(i, 0))
                                     for i in range(1, stations + 1)))


def _start(controller: Priority, station_id: str, started_at: float = NOW) -> tuple[str, int]:
    controller.on_session_started(Session(station_id, 1, f"{station_id}-1", "TAG", started_at), started_at)
    return (station_id, 1)


def _needs(controller: Priority, station_id: str, departure: float | None, energy_wh: float = 20_000.0) -> None:
    controller.on_charging_needs(ChargingNeeds(station_id, 1, f"{station_id}-1", NOW, departure, energy_wh, 6.0,
                                               32.0, 3), NOW)


def _allocate(controller: Priority, drawn_a: float, now: float = NOW) -> dict[tuple[str, int], float]:
    controller.on_site_reading(SiteReading(now, (drawn_a,) * 3, drawn_a * 690, 0.0), now)
    decisions = controller.allocate(now)
    assert all(isinstance(d, Limit) for d in decisions.values())
    return {key: d.limit_a for key, d in decisions.items()}


def _settled(controller: Priority, now: float = NOW) -> dict[tuple[str, int], float]:
    shares = _allocate(controller, 0.0, now)
    for _ in range(3):
        shares = _allocate(controller, sum(shares.values()), now)
    return shares


def test_the_higher_priority_group_is_served_first_above_everyones_minimum():
    controller = Priority(_site(limit_a=64.0, priorities={3: 1, 4: 1}))  # CP3 and CP4: the fleet
    a, b, c, d = (_start(controller, f"CP{i}", NOW + i) for i in range(1, 5))
    # 63 A: 6 A each first, then the fleet shares the other 39 A equally (up to 32 A each).
    assert _settled(controller) == {a: 6.0, b: 6.0, c: 25.5, d: 25.5}


def test_equals_share_equally_and_the_minimum_share_is_an_option():
    controller = Priority(_site(limit_a=44.0, stations=3, priorities={1: 1}, min_share_a=10))
    a, b, c = (_start(controller, f"CP{i}", NOW + i) for i in range(1, 4))
    # 43 A: 10 A each, and the remaining 13 A go to the higher group's only member.
    assert _settled(controller) == {a: 23.0, b: 10.0, c: 10.0}
    controller = Priority(_site(limit_a=64.0, stations=3))
    keys = [_start(controller, f"CP{i}", NOW + i) for i in range(1, 4)]
    assert _settled(controller) == {key: 21.0 for key in keys}


def test_within_a_group_the_earliest_departure_goes_first():
    controller = Priority(_site(limit_a=64.0, stations=3))
    a, b, c = (_start(controller, f"CP{i}", NOW + i) for i in range(1, 4))
    _needs(controller, "CP1", departure=NOW + 3 * HOUR)
    _needs(controller, "CP2", departure=NOW + 1 * HOUR)
    # 63 A: 6 A each, then CP2 (leaving first) up to its 32 A, CP1 the 13 A left; CP3 has no needs.
    assert _settled(controller) == {b: 32.0, a: 25.0, c: 6.0}


def test_a_session_whose_request_is_met_only_shares_what_is_left():
    controller = Priority(_site(limit_a=64.0, stations=2, priorities={1: 1}))
    a, b = _start(controller, "CP1"), _start(controller, "CP2")
    _needs(controller, "CP1", departure=NOW + HOUR, energy_wh=1_000.0)
    controller.on_meter_sample(MeterSample("CP1", 1, NOW + 600, energy_wh=1_000.0), NOW + 600)
    assert _settled(controller) == {b: 32.0, a: 31.0}  # CP1's priority no longer puts it first


def test_when_not_everyone_can_have_the_minimum_the_paused_ones_take_their_turn():
    controller = Priority(_site(limit_a=14.0))  # 13 A: 6 A for two of the four
    keys = [_start(controller, f"CP{i}", NOW + i) for i in range(1, 5)]
    first = _settled(controller)
    served = {key for key, limit in first.items() if limit > 0}
    assert len(served) == 2 and all(first[key] == 6.5 for key in served)
    # The served ones take energy; within the rotation period nothing changes (no flapping) ...
    shares = first
    for period in range(1, 12 * 15):
        now = NOW + 5 * period
        for key in served:
            taken_wh = 6.5 * 690 * (now - NOW) / HOUR
            controller.on_meter_sample(MeterSample(key[0], 1, now, (6.5,) * 3, 6.5, None, taken_wh), now)
        if now < NOW + controller.rotate_after_s:
            assert _allocate(controller, sum(shares.values()), now) == first
    # ... and after it, the two that waited are served.
    after = _allocate(controller, 13.0, NOW + controller.rotate_after_s)
    assert {key for key, limit in after.items() if limit > 0} == set(keys) - served


def test_a_short_budget_serves_the_higher_group_first():
    controller = Priority(_site(limit_a=14.0, priorities={4: 1}))
    keys = [_start(controller, f"CP{i}", NOW + i) for i in range(1, 5)]
    shares = _settled(controller)
    assert shares[keys[3]] >= 6.0 and sum(1 for limit in shares.values() if limit > 0) == 2


@pytest.mark.parametrize("value", [5.0, "6", True, -1])
def test_a_bad_minimum_share_names_the_option(value):
    with pytest.raises(ValueError, match=r"controller\.options\.min_share_a: expected a number of amps >= 6"):
        Priority(_site(limit_a=64.0, min_share_a=value))


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 6), limit_a=st.floats(0.0, 250.0), data=st.data())
def test_limits_are_0_or_at_least_6_a_within_the_station_max_and_the_budget(n, limit_a, data):
    priorities = {i: data.draw(st.integers(0, 2), label=f"CP{i} priority") for i in range(1, n + 1)}
    controller = Priority(_site(limit_a, stations=n, priorities=priorities))
    for i in range(1, n + 1):
        _start(controller, f"CP{i}", NOW + i)
        if data.draw(st.booleans(), label=f"EV {i} states needs"):
            _needs(controller, f"CP{i}", data.draw(st.none() | st.floats(NOW, NOW + 24 * HOUR), label="departure"))
    shares = _allocate(controller, data.draw(st.floats(0.0, 100.0), label="meter reading"))
    shares = _allocate(controller, sum(shares.values()))
    for key, limit in shares.items():
        assert limit == 0.0 or 6.0 <= limit <= 32.0 + 1e-9, (key, limit)
    assert sum(shares.values()) <= max(limit_a - controller.margin_a, 0.0) + 1e-6
    basic = [key for key in shares if key not in controller.needs]  # no needs stated: guaranteed the minimum
    if limit_a - controller.margin_a >= 6.0 * len(basic) and controller.budget_a >= 6.0 * len(basic):
        assert all(shares[key] >= 6.0 for key in basic)


def test_a_short_depot_run_behind_the_real_host_holds_the_limit(tmp_path: Path) -> None:
    result = run_scenario("depot-iso15118", "controllers.priority:Priority", trace=tmp_path / "t.db",
                          duration_s=1800)
    verdicts = {check.id: check.verdict for check in result.checks}
    assert result.verdict == "pass", verdicts
    assert verdicts["SITE-LIMIT"] == verdicts["MIN-CURRENT"] == "pass"
    assert result.metrics["energy_delivered_kwh"] > 5.0
