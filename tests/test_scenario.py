"""bench.scenario: bundled scenarios load, bad files fail with one line naming file and field."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.scenario import (
    Scenario,
    ScenarioError,
    Vehicle,
    bundled_scenarios,
    find_scenario,
    load_scenario,
    parse_duration,
)

TINY = """\
name = "tiny"
stations = [
  { id = "CP01", max_current_a = 32 },
  { id = "CP02", max_current_a = 32, rotation = "L2L3L1" },
  { id = "CP03", max_current_a = 16, connectors = 2 },
]
vehicles = [
  { id = "EV01", station = "CP01", arrival = "07:30", departure = "16:00", battery_kwh = 60, initial_soc = 0.2, target_soc = 0.8, max_current_a = 32 },
  { id = "EV02", station = "CP02", arrival = "08:00", departure = "+9h", battery_kwh = 40, initial_soc = 0.5, target_soc = 0.9, max_current_a = 16, phases = 1 },
]

[clock]
start = 2026-03-02T07:00:00Z
duration = "12h"

[site]
limit_a = 80
building_load = [["18:00", 5], ["07:00", 20]]

[site.breaker]
rating_a = 100
"""
EV01 = '{ id = "EV01", station = "CP01", arrival = "07:30", departure = "16:00"'


def write(tmp_path: Path, text: str, name: str = "x.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# --------------------------------------------------------------------------- bundled scenarios


def deliverable_hours(ev: Vehicle, scenario: Scenario) -> float:
    """Hours to deliver ev's request alone at its own max current, with a conservative taper:
    full power up to the knee, half power above it."""
    station = scenario.station(ev.station)
    amps = min(ev.max_current_a, station.max_current_a)
    kw = amps * min(ev.phases, station.phases) * scenario.site.voltage_v / 1000
    below_knee = max(0.0, min(ev.target_soc, ev.taper_knee_soc) - ev.initial_soc) * ev.battery_kwh
    above_knee = ev.requested_kwh - below_knee
    return below_knee / kw + above_knee / (kw / 2)


def grid_phases(station_rotation: str, ev_phases: int) -> list[int]:
    return [int(station_rotation[1 + 2 * k]) for k in range(ev_phases)]


def uncontrolled_peak_a(scenario: Scenario) -> float:
    """Worst phase if every car drew its full current at once (plus the highest building load)."""
    per_phase = {1: 0.0, 2: 0.0, 3: 0.0}
    for ev in scenario.vehicles:
        station = scenario.station(ev.station)
        for phase in grid_phases(station.rotation, min(ev.phases, station.phases)):
            per_phase[phase] += min(ev.max_current_a, station.max_current_a)
    building = max((a for _, a in scenario.site.building_load_s), default=0.0)
    return max(per_phase.values()) + building


def test_bundled_names():
    assert bundled_scenarios() == ["campus-200", "depot-50-bus", "depot-iso15118", "meter-faults", "panel-200a",
                                   "slow-meter", "small-office", "workplace"]


@pytest.mark.parametrize("name", ["panel-200a", "small-office", "workplace"])  # depot: see below
def test_bundled_scenario_loads_and_every_request_is_deliverable(name):
    path = find_scenario(name)
    scenario = load_scenario(path)
    assert scenario.name == name
    assert scenario.source == path
    assert scenario.clock.start.tzinfo is UTC
    assert scenario.vehicles and len(scenario.vehicles) == len(scenario.stations)
    for ev in scenario.vehicles:
        assert 0 <= ev.arrival_s < ev.departure_s <= scenario.end_s
        assert deliverable_hours(ev, scenario) <= (ev.departure_s - ev.arrival_s) / 3600, ev.id


def test_workplace_is_the_seed_example():
    s = load_scenario(find_scenario("workplace"))
    assert [st.id for st in s.stations] == [f"CP{i:02d}" for i in range(1, 11)]
    assert {st.max_current_a for st in s.stations} == {32}
    assert {st.rotation for st in s.stations} == {"L1L2L3", "L2L3L1", "L3L1L2"}
    assert (s.site.limit_a, s.site.breaker.rating_a, s.site.breaker.curve) == (80, 100, "C")
    assert s.clock.start == datetime(2026, 3, 2, 7, tzinfo=UTC)
    assert (s.end_s, s.clock.step_s) == (12 * 3600, 1.0)
    assert sum(st.max_current_a for st in s.stations) == 320  # the seed's "320A"
    assert all(0.5 * 3600 <= ev.arrival_s <= 3 * 3600 for ev in s.vehicles)  # 07:30–10:00
    assert all(8 * 3600 <= ev.departure_s <= 11.5 * 3600 for ev in s.vehicles)  # 15:00–18:30
    single = [ev for ev in s.vehicles if ev.phases == 1]
    assert 1 <= len(single) <= 2
    assert all(s.station(ev.station).rotation != "L1L2L3" for ev in single)


def test_depot_is_iso15118_on_ocpp201_and_not_every_need_can_be_met():
    s = load_scenario(find_scenario("depot-iso15118"))
    assert {st.ocpp for st in s.stations} == {"2.0.1"}
    iso = [ev for ev in s.vehicles if ev.iso15118]
    assert len(iso) == len(s.vehicles) - 1  # one basic IEC 61851 van states nothing
    # Deliverable on its own charger? VAN03 is not: 40 kWh in 90 min exceeds 22 kW x 1.5 h.
    short_alone = [ev.id for ev in s.vehicles
                   if deliverable_hours(ev, s) > (ev.departure_s - ev.arrival_s) / 3600]
    assert short_alone == ["VAN03"]
    # The early leavers together need more than the site can give while everyone is plugged.
    early = [ev for ev in s.vehicles if ev.departure_s <= 3.5 * 3600]
    need_kw = sum(ev.requested_kwh / ((ev.departure_s - ev.arrival_s) / 3600) for ev in early)
    assert need_kw > 3 * 230 * (s.site.limit_a - 10) / 1000 / 2  # over half the site's EV capacity
    kinds = [e.kind for e in s.events]
    assert kinds == ["vehicle_needs", "external_limit", "external_limit"]
    bidirectional = [ev for ev in s.vehicles if ev.discharge_max_current_a > 0]
    assert [(ev.id, ev.min_soc) for ev in bidirectional] == [("VAN04", 0.3)]


def test_meter_model_transport_behaviour_and_sub_meters(tmp_path):
    text = TINY.replace('{ id = "CP02", max_current_a = 32', '{ id = "CP02", meter_unit = 12, meter_model = "b23", '
                        'max_current_a = 32')
    text += """
[site.meter]
model = "em24"
serial = "/dev/ttyUSB0"
baudrate = 19200
parity = "E"
unit_id = 3
update_interval = "10s"
delay = "2s"
noise = 0.005
ct_ratio = 40
"""
    text = text.replace("[clock]", 'events = [{ at = "09:00", kind = "meter_fault", fault = "slow" },\n'
                                   '          { at = "09:10", kind = "meter_restored" },\n'
                                   '          { at = "09:20", kind = "meter_fault", fault = "frozen", station = "CP02" }]\n'
                                   "[clock]")
    s = load_scenario(write(tmp_path, text))
    m = s.site.meter
    assert (m.model, m.serial, m.baudrate, m.parity, m.unit_id) == ("em24", "/dev/ttyUSB0", 19200, "E", 3)
    assert (m.update_interval_s, m.delay_s, m.noise, m.ct_ratio) == (10.0, 2.0, 0.005, 40.0)
    assert (s.stations[1].meter_unit, s.stations[1].meter_model) == (12, "b23")
    assert [(e.kind, e.fault, e.station) for e in s.events] == [
        ("meter_fault", "slow", None), ("meter_restored", None, None), ("meter_fault", "frozen", "CP02")]
    # A register-map file of one's own works by path.
    own = tmp_path / "my-meter.toml"
    own.write_text((Path(__file__).parents[1] / "fixtures" / "meters" / "sdm630.toml").read_text())
    s = load_scenario(write(tmp_path, TINY + f'\n[site.meter]\nmodel = "{own}"\n'))
    assert s.site.meter.model == str(own)


def test_meter_scenarios_are_the_workplace_with_a_slow_or_failing_meter():
    workplace = load_scenario(find_scenario("workplace"))
    slow = load_scenario(find_scenario("slow-meter"))
    assert slow.stations == workplace.stations and slow.vehicles == workplace.vehicles
    assert (slow.site.meter.update_interval_s, slow.site.meter.delay_s) == (10.0, 2.0)
    assert (slow.controller.period_s, slow.controller.meter_poll_s) == (1.0, 1.0)
    assert workplace.controller.period_s is None  # the controller's own default
    faults = load_scenario(find_scenario("meter-faults"))
    assert faults.stations == workplace.stations
    kinds = [(e.kind, e.fault) for e in faults.events]
    assert [f for k, f in kinds if k == "meter_fault"] == ["frozen", "unreachable", "garbage", "word_order", "slow"]
    assert [k for k, _ in kinds] == ["meter_fault", "meter_restored"] * 5


def test_panel_trips_uncontrolled_and_small_office_does_not():
    panel = load_scenario(find_scenario("panel-200a.toml"))
    assert (len(panel.stations), panel.site.breaker.rating_a, panel.site.limit_a) == (20, 200, 180)
    assert uncontrolled_peak_a(panel) > 2 * panel.site.breaker.rating_a
    office = load_scenario(find_scenario("small-office"))
    assert len(office.stations) == 4
    assert uncontrolled_peak_a(office) < office.site.limit_a


# --------------------------------------------------------------------------- finding


def test_find_scenario_by_name_suffix_and_path(tmp_path):
    by_name = find_scenario("workplace")
    assert by_name.name == "workplace.toml" and by_name.is_file()
    assert find_scenario("workplace.toml") == by_name
    mine = write(tmp_path, TINY, "workplace.toml")
    assert find_scenario(str(mine)) == mine  # an existing path wins over a bundled name


def test_find_scenario_unknown_lists_bundled():
    with pytest.raises(ScenarioError) as caught:
        find_scenario("warehouse")
    assert str(caught.value).startswith("warehouse: ")
    assert "depot-iso15118, meter-faults, panel-200a, slow-meter, small-office, workplace" in str(caught.value)


# --------------------------------------------------------------------------- a good small file


def test_tiny_scenario_values(tmp_path):
    s = load_scenario(write(tmp_path, TINY))
    ev1, ev2 = s.vehicles
    assert (ev1.arrival_s, ev1.departure_s) == (1800, 9 * 3600)
    assert (ev2.arrival_s, ev2.departure_s) == (3600, 9 * 3600)
    assert ev1.id_tag == "TAG-EV01" and ev1.connector == 1 and ev1.response_lag_s == 2.0
    assert ev1.requested_kwh == pytest.approx(36.0)
    assert s.site.building_load_s == [(7 * 3600, 20), (18 * 3600, 5)]
    assert s.site.building_load_at(3 * 3600) == 5  # wraps from the previous evening
    assert s.site.building_load_at(12 * 3600) == 20
    assert s.site.meter.host == "127.0.0.1" and s.site.meter.port == 0
    assert s.station("CP03").connectors == 2 and s.station("CP03").meter_value_interval_s == 60
    assert s.checks.settle_s == 20 and s.checks.station_response_s == 10
    with pytest.raises(KeyError, match="CP99"):
        s.station("CP99")


def test_times_of_day_before_start_mean_next_day_and_other_syntaxes(tmp_path):
    text = TINY.replace('duration = "12h"', 'duration = "30h"').replace(
        EV01, '{ id = "EV01", station = "CP01", arrival = 06:30:00, departure = 2026-03-03T20:00:00+01:00'
    )
    s = load_scenario(write(tmp_path, text))
    assert s.vehicles[0].arrival_s == 23.5 * 3600  # 06:30 is before 07:00 → next day
    assert s.vehicles[0].departure_s == 36 * 3600


def test_events_are_sorted_and_use_moment_syntax(tmp_path):
    text = TINY + (
        '\n[[events]]\nat = "+2h"\nkind = "site_limit"\nvalue_a = 40\n'
        '\n[[events]]\nat = "07:30"\nkind = "building_load"\nvalue_a = 10\n'
    )
    s = load_scenario(write(tmp_path, text))
    assert [(e.at_s, e.kind, e.value_a) for e in s.events] == [
        (1800, "building_load", 10),
        (7200, "site_limit", 40),
    ]


def test_dump_by_alias_validates_back_to_the_same_scenario(tmp_path):
    s = load_scenario(find_scenario("workplace"))
    again = Scenario.model_validate(s.model_dump(by_alias=True))
    assert again.model_dump() == s.model_dump()
    assert "source" not in s.model_dump()


# --------------------------------------------------------------------------- bad files

BAD = [
    pytest.param(("limit_a = 80\n", ""), "site.limit_a: field required", id="missing-field"),
    pytest.param(
        ('max_current_a = 16, connectors', 'max_current_a = "32A", connectors'),
        "stations[2].max_current_a: expected a number of amps (got '32A')",
        id="wrong-unit",
    ),
    pytest.param(
        ('max_current_a = 16, connectors', "max_current_a = -16, connectors"),
        "stations[2].max_current_a: must be >= 6 (got -16)",
        id="negative-current",
    ),
    pytest.param(
        ('station = "CP02"', 'station = "CP99"'),
        "vehicles[1].station: unknown station 'CP99' (stations are CP01, CP02, CP03)",
        id="unknown-station",
    ),
    pytest.param(
        ('departure = "16:00"', 'departure = "07:15"'),
        "vehicles[0].departure: must be after arrival 07:30 (+30m) (got 07:15 (+15m))",
        id="departure-before-arrival",
    ),
    pytest.param(
        ('{ id = "CP02"', '{ id = "CP01"'),
        "stations[1].id: duplicate station id 'CP01' (also stations[0])",
        id="duplicate-station",
    ),
    pytest.param(
        ('station = "CP02"', 'station = "CP01"'),
        "vehicles[1].arrival: EV02 arrives 08:00 (+1h) on CP01 connector 1 while EV01 is plugged in there",
        id="overlap-on-connector",
    ),
    pytest.param(
        ("rating_a = 100", "rating_a = 100\ncurv = 'C'"),
        "site.breaker.curv: unknown key; did you mean 'curve'?",
        id="unknown-key-typo",
    ),
    pytest.param(
        ("limit_a = 80", "limt_a = 80"),
        "site.limt_a: unknown key; did you mean 'limit_a'?",
        id="misspelt-required-key",
    ),
    pytest.param(
        ('duration = "12h"', 'duration = "12 hours"'),
        "clock.duration: expected a duration like '15s'",
        id="bad-duration",
    ),
    pytest.param(
        ('duration = "12h"', 'duration_s = 43200'),
        "clock.duration_s: unknown key; did you mean 'duration'?",
        id="suffix-in-file",
    ),
    pytest.param(
        ('arrival = "08:00"', 'arrival = "8 am"'),
        "vehicles[1].arrival: expected a time of day 'HH:MM'",
        id="bad-time",
    ),
    pytest.param(
        ('battery_kwh = 40', 'battery_kwh = 40, connector = 2'),
        "vehicles[1].connector: CP02 has 1 connector (got 2)",
        id="connector-out-of-range",
    ),
    pytest.param(
        ("rating_a = 100", 'rating_a = 100\n\n[checks]\nstations = []'),
        "checks.stations: unknown key",
        id="array-after-table",
    ),
    pytest.param(
        ('["18:00", 5]', '["18:00", -5]'),
        "site.building_load[0][1]: must be >= 0 (got -5)",
        id="negative-building-load",
    ),
    pytest.param(
        ('[clock]', 'events = [{ at = "09:00", kind = "external_limit", value_a = 16, station = "CP01" }]\n[clock]'),
        "events[0].station: CP01 speaks OCPP 1.6; external constraints exist in OCPP 2.0.1 only",
        id="external-limit-on-16",
    ),
    pytest.param(
        ('[clock]', 'events = [{ at = "09:00", kind = "external_limit", station = "CP01" }]\n[clock]'),
        "events[0].value_a: required for kind = 'external_limit'",
        id="external-limit-without-value",
    ),
    pytest.param(
        ('[clock]', 'events = [{ at = "09:00", kind = "vehicle_needs", vehicle = "EV01", departure = "15:00" }]\n[clock]'),
        "events[0].vehicle: EV01 is not an ISO 15118 EV (set iso15118 = true)",
        id="needs-of-basic-ev",
    ),
    pytest.param(
        ('[clock]', 'events = [{ at = "09:00", kind = "vehicle_needs", vehicle = "EV09", departure = "15:00" }]\n[clock]'),
        "events[0].vehicle: unknown vehicle 'EV09'",
        id="needs-of-unknown-ev",
    ),
    pytest.param(
        ('[clock]', 'events = [{ at = "09:00", kind = "vehicle_needs", vehicle = "EV01" }]\n[clock]'),
        "events[0].departure: a vehicle_needs event changes departure and/or target_soc",
        id="needs-without-change",
    ),
    pytest.param(
        ("max_current_a = 16, phases = 1", "max_current_a = 16, phases = 1, min_soc = 1.2"),
        "vehicles[1].min_soc:",
        id="bad-min-soc",
    ),
    pytest.param(
        ("rating_a = 100", 'rating_a = 100\n\n[site.meter]\nmodel = "sdm999"'),
        "site.meter.model: unknown meter model 'sdm999'; expected one of b23, em24, sdm630",
        id="unknown-meter-model",
    ),
    pytest.param(
        ('{ id = "CP02", max_current_a = 32', '{ id = "CP02", meter_unit = 1, max_current_a = 32'),
        "stations[1].meter_unit: unit 1 is already the site meter's",
        id="sub-meter-on-the-site-meter-unit",
    ),
    pytest.param(
        ('[clock]', 'events = [{ at = "09:00", kind = "meter_fault", fault = "molten" }]\n[clock]'),
        "events[0].fault: expected 'unreachable', 'frozen', 'garbage', 'word_order' or 'slow' (got 'molten')",
        id="unknown-meter-fault",
    ),
    pytest.param(
        ('[clock]', 'events = [{ at = "09:00", kind = "meter_fault" }]\n[clock]'),
        "events[0].fault: required for kind = 'meter_fault'",
        id="meter-fault-without-fault",
    ),
    pytest.param(
        ('[clock]', 'events = [{ at = "09:00", kind = "meter_fault", fault = "frozen", station = "CP01" }]\n[clock]'),
        "events[0].station: CP01 has no sub-meter (set meter_unit on the station)",
        id="fault-of-a-missing-sub-meter",
    ),
]


@pytest.mark.parametrize(("edit", "expected"), BAD)
def test_bad_file_names_file_and_field(tmp_path, edit, expected):
    old, new = edit
    assert old in TINY
    path = write(tmp_path, TINY.replace(old, new, 1))
    assert expected in error_of(path)


def test_overlap_names_both_vehicles(tmp_path):
    message = error_of(write(tmp_path, TINY.replace('station = "CP02"', 'station = "CP01"')))
    assert "EV01" in message and "EV02" in message


def test_same_connector_back_to_back_and_other_connector_are_fine(tmp_path):
    back_to_back = TINY.replace(
        'station = "CP02", arrival = "08:00", departure = "+9h"',
        'station = "CP01", arrival = "16:00", departure = "+10h"',
    )
    assert load_scenario(write(tmp_path, back_to_back, "a.toml")).vehicles[1].station == "CP01"
    two_connectors = TINY.replace('station = "CP01"', 'station = "CP03"').replace(
        'station = "CP02"', 'station = "CP03", connector = 2'
    )
    assert load_scenario(write(tmp_path, two_connectors, "b.toml")).vehicles[1].connector == 2


def test_toml_syntax_error_names_line(tmp_path):
    message = error_of(write(tmp_path, TINY.replace('duration = "12h"', "duration = 12h")))
    lineno = TINY.splitlines().index('duration = "12h"') + 1
    assert message.startswith(f"{tmp_path / 'x.toml'}: line {lineno}: ")


def test_missing_file(tmp_path):
    assert error_of(tmp_path / "nope.toml").endswith("no such file")


def test_source_cannot_come_from_the_file(tmp_path):
    assert "source: set by the loader" in error_of(write(tmp_path, 'source = "elsewhere"\n' + TINY))


def test_event_after_the_end(tmp_path):
    text = TINY + '\n[[events]]\nat = "+13h"\nkind = "site_limit"\nvalue_a = 40\n'
    assert "events[0].at: is 20:00 (+13h), after the run ends 19:00 (+12h)" in error_of(write(tmp_path, text))


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("12h", 43200),
        ("90m", 5400),
        ("15s", 15),
        ("1h30m", 5400),
        ("1h 30m 15s", 5415),
        ("500ms", 0.5),
        ("1.5h", 5400),
        ("2d", 172800),
        ("0s", 0),
        ("45", 45),
        ("2.5", 2.5),
        (60, 60),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "h", "12 hours", "1H", "30m1h", "1h1h", "-5s", "5x", True, None, float("nan"), -1]
)
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match=r"^expected a duration like '15s'.* \(got .*\)$"):
        parse_duration(text)
