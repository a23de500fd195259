"""The earliest-deadline-first reference controller (controllers/earliest_deadline.py), as a pure object.

The tests feed it what the host would (sessions, charging needs, meter samples, site meter
readings) and read its decisions from ``allocate``. The site meter is modelled in the simplest
honest way: every EV is three-phase and draws what it was given, so the worst phase reads the sum of
the shares; the budget then settles at the site limit minus the controller's margin.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.api import ChargingNeeds, Limit, MeterSample, Session, SiteConfig, SiteReading, StationConfig
from controllers.earliest_deadline import EarliestDeadline
from controllers.equal_share import EqualShare

NOW = 1_718_000_000.0
HOUR = 3600.0


def _site(limit_a: float, stations: int = 3, max_current_a: float = 32.0) -> SiteConfig:
    return SiteConfig(limit_a=limit_a, stations=tuple(StationConfig(f"CP{i}", max_current_a, ocpp="2.0.1")
                                                      for i in range(1, stations + 1)))


def _start(controller, station_id: str, started_at: float, meter_start_wh: float = 0.0) -> tuple[str, int]:
    controller.on_session_started(Session(station_id, 1, f"{station_id}-1-1", "TAG", started_at, meter_start_wh),
                                  started_at)
    return (station_id, 1)


def _needs(controller, station_id: str, departure: float | None, energy_wh: float | None = 20_000.0,
           max_current_a: float | None = 32.0, min_current_a: float | None = 6.0) -> None:
    needs = ChargingNeeds(station_id, 1, f"{station_id}-1-1", NOW, departure, energy_wh, min_current_a,
                          max_current_a, 3)
    controller.on_charging_needs(needs, NOW)


def _allocate(controller, drawn_a: float, now: float = NOW) -> dict[tuple[str, int], float]:
    """One period: the site meter reads ``drawn_a`` on its worst phase, then the controller decides."""
    controller.on_site_reading(SiteReading(now, (drawn_a, drawn_a, drawn_a), drawn_a * 230 * 3, 0.0), now)
    decisions = controller.allocate(now)
    assert all(isinstance(d, Limit) for d in decisions.values())
    return {key: d.limit_a for key, d in decisions.items()}


def _settled(controller, periods: int = 3) -> dict[tuple[str, int], float]:
    """Allocate until the EVs draw what they were given (the meter shows the sum of the shares)."""
    shares = _allocate(controller, 0.0)
    for _ in range(periods):
        shares = _allocate(controller, sum(shares.values()))
    return shares


def test_the_budget_goes_to_the_earliest_departure_first():
    controller = EarliestDeadline(_site(limit_a=64.0))
    a = _start(controller, "CP1", NOW)
    b = _start(controller, "CP2", NOW + 60)
    c = _start(controller, "CP3", NOW + 120)
    _needs(controller, "CP1", departure=NOW + 3 * HOUR)
    _needs(controller, "CP2", departure=NOW + 1 * HOUR)
    _needs(controller, "CP3", departure=NOW + 2 * HOUR)
    # 63 A for EVs (64 A minus the 1 A margin): CP2 leaves first and gets all it can use, then CP3.
    assert _settled(controller) == {b: 32.0, c: 31.0, a: 0.0}


def test_each_gets_what_its_ev_can_use_and_the_last_what_is_left():
    controller = EarliestDeadline(_site(limit_a=64.0))
    a = _start(controller, "CP1", NOW)
    b = _start(controller, "CP2", NOW)
    c = _start(controller, "CP3", NOW)
    _needs(controller, "CP1", departure=NOW + 1 * HOUR, max_current_a=16.0)  # the EV's own limit
    _needs(controller, "CP2", departure=NOW + 2 * HOUR, max_current_a=40.0)  # more than its station: 32 A
    _needs(controller, "CP3", departure=NOW + 3 * HOUR)
    assert _settled(controller) == {a: 16.0, b: 32.0, c: 15.0}


def test_what_is_left_below_6_a_or_below_the_evs_minimum_is_not_offered():
    controller = EarliestDeadline(_site(limit_a=38.0))  # 37 A for EVs
    a = _start(controller, "CP1", NOW)
    b = _start(controller, "CP2", NOW)
    _needs(controller, "CP1", departure=NOW + 1 * HOUR)
    _needs(controller, "CP2", departure=NOW + 2 * HOUR)
    assert _settled(controller) == {a: 32.0, b: 0.0}  # 5 A left: in (0, 6) A an AC EV cannot charge

    controller = EarliestDeadline(_site(limit_a=41.0))  # 40 A for EVs
    a = _start(controller, "CP1", NOW)
    b = _start(controller, "CP2", NOW)
    _needs(controller, "CP1", departure=NOW + 1 * HOUR)
    _needs(controller, "CP2", departure=NOW + 2 * HOUR, min_current_a=10.0)
    assert _settled(controller) == {a: 32.0, b: 0.0}  # 8 A left, but this EV needs 10 A


def test_a_session_whose_energy_request_is_met_drops_to_the_back():
    controller = EarliestDeadline(_site(limit_a=41.0))  # 40 A for EVs
    a = _start(controller, "CP1", NOW, meter_start_wh=5_000.0)
    b = _start(controller, "CP2", NOW)
    _needs(controller, "CP1", departure=NOW + 1 * HOUR, energy_wh=1_000.0)
    _needs(controller, "CP2", departure=NOW + 2 * HOUR)
    assert _settled(controller) == {a: 32.0, b: 8.0}

    controller.on_meter_sample(MeterSample("CP1", 1, NOW + 600, energy_wh=5_900.0), NOW + 600)
    assert _settled(controller) == {a: 32.0, b: 8.0}  # 900 Wh of 1000: not yet
    controller.on_meter_sample(MeterSample("CP1", 1, NOW + 700, energy_wh=6_000.0), NOW + 700)
    assert _settled(controller) == {b: 32.0, a: 8.0}


def test_energy_counts_from_when_the_needs_were_stated():
    controller = EarliestDeadline(_site(limit_a=41.0))
    a = _start(controller, "CP1", NOW)
    b = _start(controller, "CP2", NOW)
    controller.on_meter_sample(MeterSample("CP1", 1, NOW, energy_wh=3_000.0), NOW)
    _needs(controller, "CP1", departure=NOW + 1 * HOUR, energy_wh=2_000.0)  # 2 kWh more from here
    _needs(controller, "CP2", departure=NOW + 2 * HOUR)
    assert _settled(controller) == {a: 32.0, b: 8.0}
    controller.on_meter_sample(MeterSample("CP1", 1, NOW + 600, energy_wh=5_000.0), NOW + 600)
    assert _settled(controller) == {b: 32.0, a: 8.0}


def test_sessions_without_needs_come_after_those_with_and_share_what_is_left_equally():
    controller = EarliestDeadline(_site(limit_a=64.0))
    a = _start(controller, "CP1", NOW)  # no ISO 15118: no needs
    b = _start(controller, "CP2", NOW + 60)
    c = _start(controller, "CP3", NOW + 120)  # no needs either
    _needs(controller, "CP2", departure=None)  # needs without a departure still go first
    assert _settled(controller) == {b: 32.0, a: 15.5, c: 15.5}


def test_needs_without_a_departure_come_after_those_with_one_then_by_arrival():
    controller = EarliestDeadline(_site(limit_a=45.0))  # 44 A for EVs
    a = _start(controller, "CP1", NOW)
    b = _start(controller, "CP2", NOW + 60)
    c = _start(controller, "CP3", NOW + 120)
    _needs(controller, "CP1", departure=None)
    _needs(controller, "CP2", departure=None)
    _needs(controller, "CP3", departure=NOW + 5 * HOUR)
    assert _settled(controller) == {c: 32.0, a: 12.0, b: 0.0}


def test_needs_end_with_their_session():
    controller = EarliestDeadline(_site(limit_a=64.0, stations=2))
    a = _start(controller, "CP1", NOW)
    b = _start(controller, "CP2", NOW)
    _needs(controller, "CP2", departure=NOW + HOUR, max_current_a=20.0)
    assert _settled(controller) == {b: 20.0, a: 32.0}
    controller.on_session_ended(Session("CP2", 1, "CP2-1-1", "TAG", NOW), 5_000.0, NOW + HOUR)
    assert controller.needs == {}
    b = _start(controller, "CP2", NOW + 2 * HOUR)  # a new car, without needs
    assert _settled(controller) == {a: 31.5, b: 31.5}


def test_an_overshoot_is_cut_at_once_from_the_back_of_the_queue():
    controller = EarliestDeadline(_site(limit_a=64.0))
    a = _start(controller, "CP1", NOW)
    b = _start(controller, "CP2", NOW)
    _needs(controller, "CP1", departure=NOW + HOUR)
    _needs(controller, "CP2", departure=NOW + 2 * HOUR)
    assert _settled(controller) == {a: 32.0, b: 31.0}
    # Building load appears: the meter reads 84 A, 21 A over the 63 A the controller aims at.
    shares = _allocate(controller, 84.0)
    assert shares == {a: 32.0, b: 10.0}  # the latest departure gives way
    assert sum(shares.values()) <= 63.0 - 21.0


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 6), limit_a=st.floats(0.0, 250.0), data=st.data())
def test_without_needs_it_decides_exactly_as_equal_share(n, limit_a, data):
    site = _site(limit_a, stations=n)
    edf, share = EarliestDeadline(site), EqualShare(site)
    for i in range(n):
        for controller in (edf, share):
            _start(controller, f"CP{i + 1}", NOW + i)
    for step in range(4):
        drawn = data.draw(st.floats(0.0, 300.0), label=f"meter reading {step}")
        now = NOW + 5 * step
        for i in range(n):
            # Some EVs draw less than offered (saturated), some report energy.
            current = data.draw(st.floats(0.0, 32.0), label=f"EV {i} current")
            offered = share.shares.get((f"CP{i + 1}", 1))
            sample = MeterSample(f"CP{i + 1}", 1, now, (current,) * 3, offered, None, current * 100.0)
            for controller in (edf, share):
                controller.on_meter_sample(sample, now)
        assert _allocate(edf, drawn, now) == _allocate(share, drawn, now)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 6), limit_a=st.floats(7.0, 250.0), data=st.data())
def test_limits_are_0_or_at_least_6_a_within_the_station_max_and_the_budget(n, limit_a, data):
    controller = EarliestDeadline(_site(limit_a, stations=n))
    for i in range(n):
        _start(controller, f"CP{i + 1}", NOW + i)
        if data.draw(st.booleans(), label=f"EV {i} states needs"):
            departure = data.draw(st.none() | st.floats(NOW, NOW + 24 * HOUR), label="departure")
            ev_max = data.draw(st.none() | st.floats(6.0, 80.0), label="EV max current")
            _needs(controller, f"CP{i + 1}", departure, max_current_a=ev_max)
    shares = _allocate(controller, 0.0)
    assert set(shares) == {(f"CP{i + 1}", 1) for i in range(n)}
    for key, limit in shares.items():
        assert limit == 0.0 or 6.0 <= limit <= 32.0 + 1e-9, (key, limit)
    assert sum(shares.values()) <= max(limit_a - controller.margin_a, 0.0) + 1e-6
