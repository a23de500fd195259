"""equal_share's control loop as a pure object: a car that takes less than it is offered does not make its
limit flap, and the installer's control period changes how often it acts, not how hard.

The site meter here is the simplest honest one: the worst phase reads what the EVs draw.
"""

from __future__ import annotations

import pytest

from controllers.api import Limit, MeterSample, Session, SiteConfig, SiteReading, StationConfig
from controllers.equal_share import EqualShare

NOW = 1_718_000_000.0


def site(limit_a: float = 63.0, **settings) -> SiteConfig:
    return SiteConfig(limit_a=limit_a, stations=(StationConfig("CP1"), StationConfig("CP2")), **settings)


def start(controller: EqualShare, station_id: str) -> tuple[str, int]:
    controller.on_session_started(Session(station_id, 1, 1, "TAG", NOW), NOW)
    return (station_id, 1)


def test_a_car_drawing_less_than_offered_keeps_one_limit_instead_of_flapping():
    controller = EqualShare(site(limit_a=100.0))
    key = start(controller, "CP1")  # a car whose on-board charger takes 16 A of the station's 32 A
    limits, now = [], NOW
    for _ in range(60):  # ten minutes of 5 s periods, a meter value every 30 s
        offered = limits[-1] if limits else 32.0
        drawn = min(offered, 16.0)
        controller.on_site_reading(SiteReading(now, (drawn,) * 3, drawn * 690, 0.0), now)
        if round(now - NOW) % 30 == 0:
            controller.on_meter_sample(MeterSample("CP1", 1, now, (drawn,) * 3, offered), now)
        decision = controller.allocate(now).get(key)
        assert isinstance(decision, Limit)
        limits.append(decision.limit_a)
        now += 5.0
    changes = sum(1 for a, b in zip(limits, limits[1:]) if abs(a - b) >= 1.0)
    # It learns once that the car takes 16 A (and keeps 18 A for it); before the release hysteresis it swung
    # 32 ↔ 18 A at every meter value.
    assert changes <= 2, limits
    assert limits[-1] == 18.0


def test_the_control_period_sets_how_often_it_acts_not_how_hard():
    def raise_in_one_period(period_s: float) -> float:
        controller = EqualShare(site(limit_a=63.0, period_s=period_s))
        a, b = start(controller, "CP1"), start(controller, "CP2")
        controller.shares = {a: 10.0, b: 10.0}
        controller.budget_a = 20.0
        # 20 A drawn of 62 A allowed (limit less the margin): 42 A of headroom.
        controller.on_site_reading(SiteReading(NOW, (20.0,) * 3, 13_800.0, 0.0), NOW)
        controller.allocate(NOW)
        return controller.budget_a - 20.0

    # The same share of the headroom per second: 0.1 × 42 A per second of period.
    assert raise_in_one_period(1.0) == pytest.approx(4.2)
    assert raise_in_one_period(5.0) == pytest.approx(21.0)


def test_installer_settings_override_the_controller_defaults():
    assert EqualShare(site()).period_s == EqualShare.period_s
    tuned = EqualShare(site(period_s=1.0, meter_poll_s=0.5))
    assert (tuned.period_s, tuned.meter_poll_s) == (1.0, 0.5)
