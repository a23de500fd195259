"""Tariffs: the [tariff], [site.pv] and [site.battery] scenario tables, the pure price model, and the PV curve."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.pv import PVSystem
from bench.scenario import ScenarioError, parse_scenario
from bench.tariff import Tariff

START = datetime(2026, 6, 15, 17, tzinfo=UTC).timestamp()
DAY0 = datetime(2026, 6, 15, tzinfo=UTC).timestamp()


def scenario(**extra) -> dict:
    data = {"name": "t", "clock": {"start": "2026-06-15T17:00:00Z", "duration": "13h"},
            "site": {"limit_a": 32, "breaker": {"rating_a": 40}},
            "stations": [{"id": "CP1", "max_current_a": 32}]}
    for key, value in extra.items():
        if key in ("pv", "battery"):
            data["site"][key] = value
        else:
            data[key] = value
    return data


def error(**extra) -> str:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(scenario(**extra), "x.toml")
    return str(caught.value)


def test_a_scenario_without_plant_or_tariff_has_none():
    sc = parse_scenario(scenario())
    assert (sc.tariff, sc.site.pv, sc.site.battery, sc.controller.options) == (None, None, None, {})


def test_tariff_pv_battery_options_and_priority_load():
    data = scenario(tariff={"import_price_per_kwh": [["07:00", 0.3], ["00:00", 0.2]], "demand_charge_per_kw": 15},
                    pv={"peak_kw": 10, "sunrise": "04:00", "sunset": "19:30"},
                    battery={"capacity_kwh": 50, "max_charge_kw": 20, "max_discharge_kw": 20},
                    controller={"options": {"horizon": "12h", "weights": [1, 2]}})
    data["stations"][0]["priority"] = 1
    sc = parse_scenario(data)
    assert sc.tariff.import_price_per_kwh == [(0.0, 0.2), (25200.0, 0.3)]
    assert (sc.site.pv.sunrise_s, sc.site.battery.unit_id, sc.site.battery.model) == (14400.0, 2, "battery_inverter")
    assert sc.controller.options == {"horizon": "12h", "weights": [1, 2]}
    assert sc.stations[0].priority == 1


@pytest.mark.parametrize("extra, expected", [
    ({"tariff": {"demand_charge_per_kw": 15}}, "x.toml: tariff.import_price_per_kwh: give exactly one import price"),
    ({"tariff": {"import_price_per_kwh": [["00:00", 0.2]], "day_ahead_per_kwh": [[0.1] * 24] * 2}},
     "tariff.import_price_per_kwh: give exactly one"),
    ({"tariff": {"import_price_per_kwh": [["25:00", 0.2]]}},
     "tariff.import_price_per_kwh[0][0]: expected a time of day 'HH:MM'"),
    ({"tariff": {"import_price_per_kwh": [["00:00", "cheap"]]}}, "tariff.import_price_per_kwh[0][1]: expected a number"),
    ({"tariff": {"day_ahead_per_kwh": [[0.1] * 23]}}, "tariff.day_ahead_per_kwh[0]: expected 24 hourly or 96"),
    ({"tariff": {"day_ahead_per_kwh": [[0.1] * 24]}},
     "tariff.day_ahead_per_kwh: the run touches 2 days from 2026-06-15 (UTC) but prices are given for 1"),
    ({"tariff": {"import_price_per_kwh": [["00:00", 0.2]], "demand_charge_per_kw": -1}},
     "tariff.demand_charge_per_kw: must be >= 0"),
    ({"tariff": {"import_price_per_kwh": [["00:00", 0.2]], "curency": "EUR"}}, "did you mean 'currency'"),
    ({"pv": {"peak_kw": 0}}, "site.pv.peak_kw: must be > 0"),
    ({"pv": {"peak_kw": 5, "sunrise": "20:00", "sunset": "06:00"}}, "site.pv.sunset: must be after sunrise 20:00"),
    ({"pv": {"peak_kw": 5, "profile": [["12:00", 1.5], ["13:00", 0]]}}, "site.pv.profile: fractions of the peak"),
    ({"battery": {"capacity_kwh": 50, "max_charge_kw": 20}}, "site.battery.max_discharge_kw: field required"),
    ({"battery": {"capacity_kwh": 50, "max_charge_kw": 20, "max_discharge_kw": 20, "min_soc": 0.5, "max_soc": 0.4}},
     "site.battery.max_soc: must be above min_soc 0.5"),
    ({"battery": {"capacity_kwh": 50, "max_charge_kw": 20, "max_discharge_kw": 20, "initial_soc": 0.05}},
     "site.battery.initial_soc: must be within min_soc..max_soc"),
    ({"battery": {"capacity_kwh": 50, "max_charge_kw": 20, "max_discharge_kw": 20, "unit_id": 1}},
     "site.battery.unit_id: unit 1 is the site meter's"),
    ({"battery": {"capacity_kwh": 50, "max_charge_kw": 20, "max_discharge_kw": 20, "model": "sdm630"}},
     "site.battery.model: register map 'sdm630' lacks soc, power_setpoint"),
    ({"events": [{"at": "18:00", "kind": "cloud", "factor": 0.5}]}, "events[0].kind: a cloud event needs a PV system"),
    ({"pv": {"peak_kw": 5}, "events": [{"at": "18:00", "kind": "cloud"}]}, "events[0].factor: required for kind"),
])
def test_bad_plant_and_tariff_tables_name_the_field(extra, expected):
    assert expected in error(**extra)


def test_time_of_use_prices_wrap_and_expand_over_a_window():
    tariff = Tariff(START, time_of_use=[(0.0, 0.2), (7 * 3600.0, 0.35), (21 * 3600.0, 0.2)])
    assert tariff.import_price(DAY0 + 6 * 3600) == 0.2 and tariff.import_price(DAY0 + 8 * 3600) == 0.35
    periods = tariff.schedule(START, START + 24 * 3600)
    assert [(p.start - START, p.end - START, p.price_per_kwh) for p in periods] == [
        (0, 4 * 3600, 0.35), (4 * 3600, 14 * 3600, 0.2), (14 * 3600, 24 * 3600, 0.35)]
    assert tariff.publications(START, START + 86400) == []


def test_day_ahead_prices_become_known_at_publication_the_day_before():
    days = [[0.1] * 24, [0.2] * 24, [0.3] * 96]
    tariff = Tariff(DAY0 + 3600, day_ahead=days, publish_s=12 * 3600)
    assert tariff.published_until(DAY0 + 3600) == DAY0 + 86400  # only today's at 01:00
    assert tariff.publications(DAY0, DAY0 + 3 * 86400) == [DAY0 + 12 * 3600, DAY0 + 86400 + 12 * 3600]
    known = tariff.known_prices(DAY0 + 13 * 3600, DAY0 + 10 * 86400)
    assert known[-1].end == DAY0 + 2 * 86400 and known[-1].price_per_kwh == 0.2
    assert tariff.import_price(DAY0 + 2 * 86400 + 900) == 0.3 and tariff.import_price(DAY0 + 3 * 86400) is None


@given(t=st.floats(0, 3 * 86400))
def test_the_schedule_agrees_with_the_price_at_every_moment(t):
    tariff = Tariff(DAY0, time_of_use=[(0.0, 0.2), (7 * 3600.0, 0.35), (21 * 3600.0, 0.25)])
    periods = tariff.schedule(DAY0, DAY0 + 3 * 86400 + 1)
    period = next(p for p in periods if p.start <= DAY0 + t < p.end)
    assert period.price_per_kwh == tariff.import_price(DAY0 + t)


def test_pv_bell_is_zero_at_night_peaks_at_noon_and_forecasts_quarter_hours():
    pv = PVSystem(10_000.0, 4 * 3600.0, 20 * 3600.0)
    assert pv.clear_sky_w(DAY0 + 3 * 3600) == 0.0 and pv.clear_sky_w(DAY0 + 21 * 3600) == 0.0
    assert pv.clear_sky_w(DAY0 + 12 * 3600) == pytest.approx(10_000.0)
    forecast = pv.forecast(DAY0 + 11 * 3600 + 100, DAY0 + 12 * 3600)
    assert len(forecast) == 4 and forecast[0].start == DAY0 + 11 * 3600
    assert all(9000 < f.power_w <= 10_000 for f in forecast)


@given(t=st.floats(0, 86400))
def test_pv_never_exceeds_its_peak_nor_goes_negative(t):
    for pv in (PVSystem(5000.0), PVSystem(5000.0, profile=[(6 * 3600.0, 0.0), (12 * 3600.0, 1.0), (18 * 3600.0, 0.0)])):
        assert 0.0 <= pv.clear_sky_w(DAY0 + t) <= 5000.0 + 1e-9
