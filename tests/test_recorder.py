"""The recorder writes a trace that load_trace reads back exactly, even after a crash."""

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.recorder import AUTO_FLUSH_ROWS, Recorder, parse_frame
from bench.trace import TraceError, load_trace

REPO = Path(__file__).resolve().parents[1]

META = {
    "scenario": "unit", "scenario_path": "fixtures/scenarios/unit.toml", "controller": "test",
    "seed": 7, "start_epoch": 1_700_000_000.0, "duration_s": 60.0, "step_s": 1.0,
    "voltage_v": 230.0, "phases": 3, "site_limit_a": 80.0, "breaker_rating_a": 100.0,
    "breaker_curve": "C",
    "checks": {"settle_s": 20.0, "station_response_s": 7.0, "overcurrent_ratio": 1.1,
               "overcurrent_margin_a": 0.5, "min_current_a": 6.0, "site_tolerance_a": 0.0},
    "stations": [{"id": "CS1", "ocpp": "1.6", "connectors": 2, "max_current_a": 32.0,
                  "phases": 3, "rotation": "L1L2L3"}],
}


def count(path, table):
    db = sqlite3.connect(path)
    try:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        db.close()


def test_roundtrip(tmp_path):
    path = tmp_path / "run.db"
    with Recorder(path, META) as rec:
        rec.site(0.0, (10.0, 11.0, 12.0), 80.0, 7000.0, 5.0, True)
        rec.site(1.0, (0.0, 0.0, 0.0), 80.0, 0.0, 0.0, False)
        rec.station(0.0, "CS1", 1, 16.0, 16.0, (15.9, 0.0, 0.0), 3657.0, 0.5, 0.42, "EV1")
        rec.station(0.0, "CS1", 2, None, 32.0, (0.0, 0.0, 0.0), 0.0, 0.0, None, None)
        rec.station(1.0, "CS1", 1, 16.0, 16.0, (15.8, 0.0, 0.0), 3634.0, 0.501, 0.42, "EV1")
        rec.event(0.5, "vehicle_arrived", "CS1", {"ev": "EV1", "connector": 1})
        rec.event(0.7, "site_limit")
        rec.vehicle("EV1", "CS1", 1, 0.5, 3600.0, 20.0, 18.5, 19.0)
    trace = load_trace(path)
    assert trace.meta == META
    assert trace.site == [(0.0, 10.0, 11.0, 12.0, 80.0, 7000.0, 5.0, True),
                          (1.0, 0.0, 0.0, 0.0, 80.0, 0.0, 0.0, False)]
    assert list(trace.stations) == [("CS1", 1), ("CS1", 2)]
    assert trace.stations["CS1", 1] == [
        (0.0, 16.0, 16.0, 15.9, 0.0, 0.0, 3657.0, 0.5, 0.42, "EV1"),
        (1.0, 16.0, 16.0, 15.8, 0.0, 0.0, 3634.0, 0.501, 0.42, "EV1")]
    assert trace.stations["CS1", 2] == [(0.0, None, 32.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, None)]
    assert trace.events == [
        {"t": 0.5, "kind": "vehicle_arrived", "station": "CS1", "detail": {"ev": "EV1", "connector": 1}},
        {"t": 0.7, "kind": "site_limit", "station": None, "detail": {}}]
    assert trace.vehicles == [{"ev": "EV1", "station": "CS1", "connector": 1, "arrival_t": 0.5,
                               "departure_t": 3600.0, "requested_kwh": 20.0,
                               "delivered_kwh": 18.5, "deliverable_kwh": 19.0}]
    assert not Path(str(path) + "-wal").exists()  # close folded the WAL into the file


def test_meta_values_that_are_not_json_are_stored_as_text(tmp_path):
    path = tmp_path / "run.db"
    Recorder(path, {"scenario_path": tmp_path / "s.toml"}).close()
    assert load_trace(path).meta == {"scenario_path": str(tmp_path / "s.toml")}


def test_messages_are_parsed_and_results_named_after_their_call(tmp_path):
    path = tmp_path / "run.db"
    frames = [
        ("CS1", "to_station", '[2,"a1","SetChargingProfile",{"connectorId":1}]'),
        ("CS1", "from_station", '[3,"a1",{"status":"Accepted"}]'),
        ("CS1", "from_station", '[2,"b1","Heartbeat",{}]'),
        ("CS1", "to_station", '[4,"b1","InternalError","boom",{}]'),
        ("CS1", "to_station", '[2,"c1","Reset",{"type":"Soft"}]'),
        ("CS2", "from_station", '[3,"c1",{}]'),            # other station: not c1's answer
        ("CS1", "to_station", '[3,"c1",{}]'),               # same direction as the call: not it
        ("CS1", "to_station", '{"not": "a frame"'),         # not JSON
        ("CS1", "to_station", '[2,"d1","SetChargingProfile"]'),  # no payload
        ("CS1", "to_station", '[7,"e1",{}]'),               # unknown type id
        ("CS1", "to_station", '"just a string"'),
        ("CS1", "to_station", '[2,"f1","Reset",[]]'),       # payload must be an object
        ("CS1", "to_station", b'[2,"g1","Reset",{"type":"Hard"}]'),  # bytes are decoded
    ]
    with Recorder(path, META) as rec:
        for i, (station, direction, raw) in enumerate(frames):
            rec.message(float(i), station, direction, raw)
    got = [(m["kind"], m["unique_id"], m["action"]) for m in load_trace(path).messages]
    assert got == [
        ("call", "a1", "SetChargingProfile"), ("result", "a1", "SetChargingProfile"),
        ("call", "b1", "Heartbeat"), ("error", "b1", "Heartbeat"),
        ("call", "c1", "Reset"), ("result", "c1", None), ("result", "c1", None),
        ("malformed", None, None), ("malformed", "d1", "SetChargingProfile"),
        ("malformed", "e1", None), ("malformed", None, None), ("malformed", "f1", "Reset"),
        ("call", "g1", "Reset"),
    ]
    messages = load_trace(path).messages
    assert messages[0]["payload"] == '{"connectorId":1}'
    assert messages[0]["raw"] == frames[0][2]
    assert messages[3]["payload"] == '{"errorCode":"InternalError","errorDescription":"boom","errorDetails":{}}'
    assert messages[7]["payload"] is None and messages[7]["raw"] == '{"not": "a frame"'


@pytest.mark.parametrize("raw", ["", "[", "[2]", "[2, 5, \"Reset\", {}]", "[true, \"x\", {}]",
                                 "[" * 100_000, "null", "[3, \"x\", {}, {}]"])
def test_parse_frame_never_raises(raw):
    assert parse_frame(raw)[0] == "malformed"


def test_crash_keeps_everything_up_to_the_last_flush(tmp_path):
    path = tmp_path / "run.db"
    rec = Recorder(path, META)
    for t in range(10):
        rec.station(float(t), "CS1", 1, 16.0, 16.0, (16.0, 0.0, 0.0), 3680.0, t / 100, None, "EV1")
    rec.event(9.5, "vehicle_full", "CS1")
    rec.flush()
    for t in range(10, 15):
        rec.station(float(t), "CS1", 1, 16.0, 16.0, (16.0, 0.0, 0.0), 3680.0, t / 100, None, "EV1")
    # The recorder is never closed: a second connection sees exactly the flushed rows.
    trace = load_trace(path)
    assert [s[0] for s in trace.stations["CS1", 1]] == [float(t) for t in range(10)]
    assert [e["kind"] for e in trace.events] == ["vehicle_full"]
    rec.close()


def test_process_killed_mid_run_leaves_a_readable_trace(tmp_path):
    path = tmp_path / "run.db"
    script = textwrap.dedent(f"""
        import os
        from bench.recorder import Recorder
        rec = Recorder({str(path)!r}, {{"scenario": "crash"}})
        for t in range(100):
            rec.site(float(t), (1.0, 2.0, 3.0), 80.0, 1000.0, 0.0, True)
        rec.flush()
        for t in range(100, 150):
            rec.site(float(t), (1.0, 2.0, 3.0), 80.0, 1000.0, 0.0, True)
        os._exit(1)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert Path(str(path) + "-wal").exists()  # the crash left the WAL behind
    trace = load_trace(path)
    assert trace.meta == {"scenario": "crash"}
    assert len(trace.site) == 100


def test_auto_flush_when_many_rows_are_buffered(tmp_path):
    path = tmp_path / "run.db"
    rec = Recorder(path, META)
    for i in range(AUTO_FLUSH_ROWS + 1):
        rec.station(i * 0.1, "CS1", 1, None, 32.0, (0.0, 0.0, 0.0), 0.0, 0.0, None, None)
    assert count(path, "station_samples") == AUTO_FLUSH_ROWS + 1
    rec.close()


def test_new_recorder_overwrites_an_old_file_and_its_stale_wal(tmp_path):
    path = tmp_path / "runs" / "run.db"
    path.parent.mkdir()
    path.write_text("an old run")
    Path(str(path) + "-wal").write_bytes(b"stale")
    with Recorder(path, META) as rec:
        rec.site(0.0, (1.0, 1.0, 1.0), 80.0, 690.0, 0.0, True)
    assert len(load_trace(path).site) == 1


def test_close_is_idempotent_and_writing_after_close_is_reported(tmp_path):
    rec = Recorder(tmp_path / "run.db", META)
    rec.close()
    rec.close()
    rec.event(1.0, "run_interrupted")
    with pytest.raises(RuntimeError, match="closed"):
        rec.flush()


def test_load_trace_names_what_is_wrong(tmp_path):
    with pytest.raises(TraceError, match="no such trace file"):
        load_trace(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()  # and did not create it
    text = tmp_path / "notes.db"
    text.write_text("hello, this is not SQLite" * 100)
    with pytest.raises(TraceError, match="not a readable"):
        load_trace(text)
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.close()
    with pytest.raises(ValueError, match="not an evbench trace"):
        load_trace(other)


def test_meter_reads_roundtrip_and_flush_with_the_rest(tmp_path):
    path = tmp_path / "run.db"
    rec = Recorder(path, META)
    rec.meter_read(1.0, 1, 4, 0, 80, "ok", 0.4)
    rec.meter_read(2.0, 1, 3, 0, 2, "illegal_function", None)
    rec.meter_read(3.0, 9, 4, 0, 80, "no_device", None)
    rec.flush()
    rec.meter_read(4.0, 1, 4, 0, 80, "frozen", 3.4)  # not flushed yet: a crash now would lose only this
    assert load_trace(path).meter_reads == [(1.0, 1, 4, 0, 80, "ok", 0.4), (2.0, 1, 3, 0, 2, "illegal_function", None),
                                            (3.0, 9, 4, 0, 80, "no_device", None)]
    rec.close()
    assert load_trace(path).meter_reads[-1] == (4.0, 1, 4, 0, 80, "frozen", 3.4)


def test_a_format_1_trace_reads_back_without_meter_reads(tmp_path):
    path = tmp_path / "old.db"
    with Recorder(path, META) as rec:
        rec.site(0.0, (1.0, 1.0, 1.0), 80.0, 690.0, 0.0, True)
        rec.meter_read(0.5, 1, 4, 0, 80, "ok", 0.0)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    db.execute("DROP TABLE meter_reads")  # what format 1 wrote
    db.execute("DROP TABLE plant_samples")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    trace = load_trace(path)
    assert trace.meter_reads == [] and len(trace.site) == 1


def test_plant_samples_read_back_and_a_format_2_trace_has_none(tmp_path):
    path = tmp_path / "plant.db"
    with Recorder(path, META) as rec:
        rec.site(0.0, (1.0, 1.0, 1.0), 80.0, 690.0, 0.0, True)
        rec.plant(0.0, 5000.0, -2000.0, 0.5)
        rec.plant(1.0, 5100.0, 0.0, None)
    assert load_trace(path).plant == [(0.0, 5000.0, -2000.0, 0.5), (1.0, 5100.0, 0.0, None)]
    db = sqlite3.connect(path)
    db.execute("DROP TABLE plant_samples")  # what format 2 wrote
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    assert load_trace(path).plant == []


def test_a_newer_format_is_refused(tmp_path):
    path = tmp_path / "new.db"
    Recorder(path, META).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(TraceError, match="newer than this evbench reads"):
        load_trace(path)
