"""Interop with a CSMS nobody here wrote (evbench issue 6): the small-office site against ocpp-csms from PyPI.

ocpp-csms runs as its own process (:mod:`third_party_csms` says why, and what it is) and the bench's
stations connect to it by URL on the wall clock, sped up, exactly as ``evbench run --controller ws://…`` does.
What these tests assert is what it was seen to do, the same in every run:

- OCPP 1.6J stations interoperate with it: every BootNotification accepted, every session authorised,
  started and stopped, every station message answered, no CallError either way.
- It never sends a charging profile, or any request: it manages nothing.
- small-office passes every check with it — because small-office needs no management (its four 32 A
  stations fit under the 200 A limit; the uncontrolled reference passes too), and because the message
  checks have no profiles to judge. It says nothing about ocpp-csms as a load manager; on workplace
  (10 × 32 A, 80 A limit) it fails SITE-LIMIT and BREAKER like the uncontrolled reference.
- OCPP 2.0.1 stations cannot connect: it answers their handshake with HTTP 400 "ocpp1.6 only".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from third_party_csms import RunningCsms, ocpp_csms, requires_ocpp_csms

from bench.report import RunResult
from bench.runner import run_scenario
from bench.scenario import Scenario, find_scenario, load_scenario
from bench.trace import Trace, load_trace

pytestmark = requires_ocpp_csms

STATIONS = {"CP01", "CP02", "CP03", "CP04"}
# Wall time of a run is duration / speed. At 30× a station's 30 s OCPP response timeout is 1 s of wall time,
# ample on loopback, and the run's seven and a half simulated minutes take 15 s.
SPEED = 30.0
DURATION_S = 450.0


def short_visits(scenario: Scenario) -> Scenario:
    """small-office as it is, but its four cars come in the first 80 s and leave after 5 to 7 minutes: the
    scenario's own day would first plug a car in after 15 minutes and unplug one after eight hours."""
    vehicles = [vehicle.model_copy(update={"arrival_s": 20.0 * (i + 1), "departure_s": 300.0 + 40.0 * i})
                for i, vehicle in enumerate(sorted(scenario.vehicles, key=lambda v: v.id))]
    return scenario.model_copy(update={"vehicles": vehicles})


def on_ocpp(scenario: Scenario, version: str) -> Scenario:
    return scenario.model_copy(update={"stations": [s.model_copy(update={"ocpp": version})
                                                    for s in scenario.stations]})


@pytest.fixture(scope="module")
def csms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCsms]:
    with ocpp_csms(tmp_path_factory.mktemp("ocpp-csms")) as running:
        yield running


@pytest.fixture(scope="module")
def small_office(csms: RunningCsms, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Trace]:
    scenario = short_visits(load_scenario(find_scenario("small-office")))
    trace_path = tmp_path_factory.mktemp("small-office") / "trace.db"
    result = run_scenario(scenario, csms.url, trace=trace_path, speed=SPEED, duration_s=DURATION_S)
    return result, load_trace(trace_path)


def payloads(trace: Trace, direction: str, kind: str, action: str) -> list[tuple[str, dict]]:
    """``(station, payload)`` of every frame of one kind and action, in order."""
    return [(m["station"], json.loads(m["payload"])) for m in trace.messages
            if m["direction"] == direction and m["kind"] == kind and m["action"] == action]


@pytest.mark.ocpp16
def test_every_station_boots_and_is_accepted(small_office: tuple[RunResult, Trace], csms: RunningCsms) -> None:
    _, trace = small_office
    answers = payloads(trace, "to_station", "result", "BootNotification")
    assert {station for station, _ in answers} == STATIONS, csms.log()
    assert all(answer["status"] == "Accepted" and answer["interval"] == 300 for _, answer in answers), answers


@pytest.mark.ocpp16
def test_every_car_is_authorised_and_its_session_starts_and_stops(small_office: tuple[RunResult, Trace],
                                                                   csms: RunningCsms) -> None:
    result, trace = small_office
    assert {s for s, a in payloads(trace, "to_station", "result", "Authorize")
            if a["idTagInfo"]["status"] == "Accepted"} == STATIONS
    starts = payloads(trace, "to_station", "result", "StartTransaction")
    assert {s for s, a in starts if a["idTagInfo"]["status"] == "Accepted"} == STATIONS
    started = {a["transactionId"] for _, a in starts}
    assert len(started) == len(STATIONS)  # one id per session
    stopped = {p["transactionId"] for _, p in payloads(trace, "from_station", "call", "StopTransaction")}
    assert stopped == started
    assert len(payloads(trace, "to_station", "result", "StopTransaction")) == len(STATIONS)
    # Its own record of the sessions (it prints each event) holds the same transaction ids.
    seen = {int(tx) for tx in re.findall(r"TransactionStoppedEvent\(.*?transaction_id=(\d+)", csms.log())}
    assert seen == started, csms.log()
    assert result.metrics["energy_delivered_kwh"] > 0


@pytest.mark.ocpp16
def test_it_answers_every_station_message_and_sends_none_of_its_own(small_office: tuple[RunResult, Trace],
                                                                   csms: RunningCsms) -> None:
    _, trace = small_office
    calls = {m["unique_id"] for m in trace.messages if m["direction"] == "from_station" and m["kind"] == "call"}
    answered = {m["unique_id"] for m in trace.messages if m["direction"] == "to_station" and m["kind"] == "result"}
    errors = [m["raw"] for m in trace.messages if m["kind"] == "error"]
    assert not errors, errors
    assert calls == answered
    # No SetChargingProfile, no TxDefaultProfile, nothing: a CSMS that only listens.
    assert [m["raw"] for m in trace.messages if m["direction"] == "to_station" and m["kind"] == "call"] == []
    trouble = [e for e in trace.events if e["kind"] in ("station_error", "station_disconnected")]
    assert not trouble, (trouble, csms.log())


@pytest.mark.ocpp16
def test_small_office_passes_every_check_because_it_needs_no_management(
        small_office: tuple[RunResult, Trace]) -> None:
    result, _ = small_office
    result.assert_passed()
    assert result.metrics["breaker_trips"] == 0


@pytest.mark.ocpp201
def test_an_ocpp_2_0_1_station_is_refused_at_the_handshake(csms: RunningCsms, tmp_path: Path) -> None:
    scenario = on_ocpp(load_scenario(find_scenario("small-office")), "2.0.1")
    run_scenario(scenario, csms.url, trace=tmp_path / "trace.db", speed=10.0, duration_s=20.0)
    trace = load_trace(tmp_path / "trace.db")
    assert trace.messages == []
    refused = {e["station"] for e in trace.events if e["kind"] == "station_disconnected"
               and "status_code=400" in e["detail"]["error"] and "ocpp1.6 only" in e["detail"]["error"]}
    assert refused == STATIONS, trace.events
    log = csms.log()
    assert all(f"Refused charge point {station}: no ocpp1.6 subprotocol" in log for station in STATIONS), log
