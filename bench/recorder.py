"""The run's truth on disk: one SQLite file per run, written while the run goes.

The recorder owns the trace *format* (tables below) and the *writing* of it. It stores every
physics sample and every OCPP frame as it was, and judges nothing — verdicts are computed
afterwards from the file (DESIGN.md, principle 4; readers: ``bench.trace``, ``bench.checks``).

Tables (time ``t`` is simulated seconds since scenario start; ``meta.start_epoch`` maps it to
wall time):

- ``meta(key, value)``            run parameters, each value JSON text.
- ``site_samples``                grid-connection point per physics step: per-phase current [A],
                                  site limit [A], active power [W], building load [A], breaker state.
- ``plant_samples``               the site's PV and battery per physics step, beside ``site_samples``
                                  (same ``t``), written only for a site that has either: PV output
                                  [W, ≥ 0], battery AC power [W, + charging] and state of charge
                                  [0..1] (NULL without a battery). A site without them writes no rows,
                                  so its runs cost what they did before.
- ``station_samples``             per connector per step: composite limit [A per phase] (NULL = no
                                  profile limit), offered current [A], drawn current per station
                                  phase [A], power [W], energy delivered [kWh], SoC [0..1], EV id.
- ``messages``                    every OCPP-J frame exactly as on the wire, plus its parse: kind
                                  (call | result | error | malformed), unique id, action, payload.
- ``events``                      discrete things that happened (arrivals, trips, limit changes…),
                                  detail as JSON text.
- ``vehicles``                    one row per EV, written at its departure or at the end of the run.
- ``meter_reads``                 every Modbus request the emulated meters served or refused: unit id,
                                  function code, start address, register count, outcome (``ok``, a
                                  fault's name, a Modbus exception), and how old the served values were
                                  [s] (NULL when nothing was served) — what the controller saw, and when
                                  it saw stale data.

Durability: WAL journal with ``synchronous=NORMAL`` — a commit survives a crash of the process
(a power cut may lose the last commits but never corrupts the file). Rows are buffered in memory
and written by :meth:`Recorder.flush` (which the bench calls about every simulated minute and on
every event) or automatically once more than ``AUTO_FLUSH_ROWS`` rows wait. A crash therefore
loses at most what came after the last flush.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

#: Bumped when a table changes shape; stored in SQLite's ``PRAGMA user_version``, so the meta
#: table stays exactly what the bench passed in.
TRACE_FORMAT = 3  # 2: + meter_reads; 3: + plant_samples (older traces read back without them)

#: Rows buffered before the recorder writes without being asked: big enough that executemany
#: amortises its per-statement cost, small enough that a crash between the bench's flushes loses
#: little and memory stays flat at 10,000 stations.
AUTO_FLUSH_ROWS = 5000

#: How many unanswered calls per (station, direction) are remembered for naming the action of a
#: result. OCPP-J allows one call in flight per direction; the bound only matters when a peer
#: never answers, and then the oldest ids are forgotten rather than growing memory.
OPEN_CALLS_PER_STATION = 64

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE site_samples (
    t REAL NOT NULL, i1_a REAL, i2_a REAL, i3_a REAL, limit_a REAL,
    power_w REAL, building_a REAL, breaker_closed INTEGER
);
CREATE TABLE plant_samples (t REAL NOT NULL, pv_w REAL, battery_w REAL, battery_soc REAL);
CREATE TABLE station_samples (
    t REAL NOT NULL, station TEXT NOT NULL, connector INTEGER NOT NULL,
    limit_a REAL, offered_a REAL, i1_a REAL, i2_a REAL, i3_a REAL,
    power_w REAL, energy_kwh REAL, soc REAL, ev TEXT
);
CREATE TABLE messages (
    t REAL NOT NULL, station TEXT, direction TEXT NOT NULL, kind TEXT NOT NULL,
    unique_id TEXT, action TEXT, payload TEXT, raw TEXT NOT NULL
);
CREATE TABLE events (t REAL NOT NULL, kind TEXT NOT NULL, station TEXT, detail TEXT);
CREATE TABLE vehicles (
    ev TEXT NOT NULL, station TEXT, connector INTEGER, arrival_t REAL, departure_t REAL,
    requested_kwh REAL, delivered_kwh REAL, deliverable_kwh REAL
);
CREATE TABLE meter_reads (
    t REAL NOT NULL, unit INTEGER, function INTEGER, address INTEGER, count INTEGER,
    outcome TEXT NOT NULL, age_s REAL
);
"""

_INSERT_SITE = "INSERT INTO site_samples VALUES (?,?,?,?,?,?,?,?)"
_INSERT_PLANT = "INSERT INTO plant_samples VALUES (?,?,?,?)"
_INSERT_STATION = "INSERT INTO station_samples VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
_INSERT_MESSAGE = "INSERT INTO messages VALUES (?,?,?,?,?,?,?,?)"
_INSERT_EVENT = "INSERT INTO events VALUES (?,?,?,?)"
_INSERT_VEHICLE = "INSERT INTO vehicles VALUES (?,?,?,?,?,?,?,?)"
_INSERT_METER_READ = "INSERT INTO meter_reads VALUES (?,?,?,?,?,?,?)"

# A result or error answers a call that travelled the other way on the same station.
_OTHER_DIRECTION = {"to_station": "from_station", "from_station": "to_station"}

# OCPP-J message type ids (OCPP-J 1.6 §4.1.3; 2.0.1 Part 4 §4.2).
_CALL, _RESULT, _ERROR = 2, 3, 4


def _json_text(value: Any) -> str:
    # default=str: a Path or datetime in meta/detail must not cost the run its trace.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def parse_frame(raw: str) -> tuple[str, str | None, str | None, str | None]:
    """Split one OCPP-J frame into ``(kind, unique_id, action, payload_json)``; never raises.

    ``kind`` is ``call`` ([2, id, action, {payload}]), ``result`` ([3, id, {payload}]),
    ``error`` ([4, id, code, description, {details}] — payload is then
    ``{"errorCode", "errorDescription", "errorDetails"}``) or ``malformed`` for anything else
    (not JSON, not an array, wrong type id, length or element types). For a malformed frame the
    unique id and action are kept when they can be read, as evidence; payload is None.
    """
    try:
        frame = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        return "malformed", None, None, None
    if not isinstance(frame, list) or len(frame) < 2:
        return "malformed", None, None, None
    type_id, uid = frame[0], frame[1]
    uid = uid if isinstance(uid, str) else None
    if uid is not None and type(type_id) is int:
        if type_id == _CALL and len(frame) == 4 and isinstance(frame[2], str) and isinstance(frame[3], dict):
            return "call", uid, frame[2], _json_text(frame[3])
        if type_id == _RESULT and len(frame) == 3 and isinstance(frame[2], dict):
            return "result", uid, None, _json_text(frame[2])
        if (type_id == _ERROR and len(frame) == 5 and isinstance(frame[2], str)
                and isinstance(frame[3], str) and isinstance(frame[4], dict)):
            error = {"errorCode": frame[2], "errorDescription": frame[3], "errorDetails": frame[4]}
            return "error", uid, None, _json_text(error)
    action = frame[2] if type_id == _CALL and len(frame) > 2 and isinstance(frame[2], str) else None
    return "malformed", uid, action, None


class Recorder:
    """Writes one run's trace. Single writer: call it from the thread that created it.

    Recording methods only append to in-memory buffers (they are on the physics hot path);
    :meth:`flush` writes and commits. Using a closed recorder is an error reported by the
    next flush; :meth:`close` itself may be called any number of times.
    """

    def __init__(self, path: str | Path, meta: dict) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A stale -wal next to a new database would be replayed into it: remove all three.
        for stale in (self.path, self.path.with_name(self.path.name + "-wal"),
                      self.path.with_name(self.path.name + "-shm")):
            stale.unlink(missing_ok=True)
        self._db: sqlite3.Connection | None = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA user_version={TRACE_FORMAT}")
        self._db.executescript(_SCHEMA)
        self._db.executemany("INSERT INTO meta VALUES (?,?)",
                             [(str(k), _json_text(v)) for k, v in meta.items()])
        self._db.commit()
        self._site: list[tuple] = []
        self._plant: list[tuple] = []
        self._stations: list[tuple] = []
        self._messages: list[tuple] = []
        self._events: list[tuple] = []
        self._vehicles: list[tuple] = []
        self._meter_reads: list[tuple] = []
        self._pending = 0
        # (station, direction the call travelled) -> {unique_id: action}
        self._open_calls: dict[tuple[str, str], dict[str, str]] = {}

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- recording (hot path: append, count, maybe flush) ------------------------------------

    def site(self, t: float, currents_a: tuple[float, float, float], limit_a: float,
             power_w: float, building_a: float, breaker_closed: bool) -> None:
        """One grid-connection sample: per-phase current [A], limit [A], power [W], building [A]."""
        i1, i2, i3 = currents_a
        self._site.append((t, i1, i2, i3, limit_a, power_w, building_a, 1 if breaker_closed else 0))
        self._pending += 1
        if self._pending > AUTO_FLUSH_ROWS:
            self.flush()

    def plant(self, t: float, pv_w: float, battery_w: float, battery_soc: float | None) -> None:
        """The site's PV output [W] and battery AC power [W, + charging] and SoC [0..1, None = no battery]."""
        self._plant.append((t, pv_w, battery_w, battery_soc))
        self._pending += 1
        if self._pending > AUTO_FLUSH_ROWS:
            self.flush()

    def station(self, t: float, station: str, connector: int, limit_a: float | None,
                offered_a: float, currents_a: tuple[float, float, float], power_w: float,
                energy_kwh: float, soc: float | None, ev: str | None) -> None:
        """One connector sample. ``limit_a``: composite profile limit per phase [A], None = none;
        ``offered_a``: what the station offers the EV [A]; ``currents_a``: what the EV draws on
        the station's phases L1..L3 [A]; ``energy_kwh``: energy delivered in the session [kWh]."""
        i1, i2, i3 = currents_a
        self._stations.append((t, station, connector, limit_a, offered_a, i1, i2, i3,
                               power_w, energy_kwh, soc, ev))
        self._pending += 1
        if self._pending > AUTO_FLUSH_ROWS:
            self.flush()

    def message(self, t: float, station: str, direction: str, raw: str) -> None:
        """One OCPP-J frame as on the wire; ``direction`` is ``to_station`` (sent by the
        controller) or ``from_station``. Bad frames are recorded as ``malformed``, never raised."""
        if not isinstance(raw, str):
            raw = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
        kind, uid, action, payload = parse_frame(raw)
        if kind == "call":
            open_calls = self._open_calls.setdefault((station, direction), {})
            open_calls.pop(uid, None)  # a reused id moves to the newest position
            open_calls[uid] = action
            if len(open_calls) > OPEN_CALLS_PER_STATION:
                del open_calls[next(iter(open_calls))]
        elif kind in ("result", "error"):
            other = _OTHER_DIRECTION.get(direction)
            open_calls = self._open_calls.get((station, other)) if other else None
            if open_calls:
                action = open_calls.pop(uid, None)
        self._messages.append((t, station, direction, kind, uid, action, payload, raw))
        self._pending += 1
        if self._pending > AUTO_FLUSH_ROWS:
            self.flush()

    def event(self, t: float, kind: str, station: str | None = None, detail: dict | None = None) -> None:
        """Something that happened at ``t`` (``vehicle_arrived``, ``breaker_trip``, …)."""
        self._events.append((t, kind, station, _json_text(detail or {})))
        self._pending += 1
        if self._pending > AUTO_FLUSH_ROWS:
            self.flush()

    def vehicle(self, ev: str, station: str, connector: int, arrival_t: float, departure_t: float,
                requested_kwh: float, delivered_kwh: float, deliverable_kwh: float) -> None:
        """An EV's session summary [s, kWh]; ``deliverable_kwh`` is what physics allowed it to get."""
        self._vehicles.append((ev, station, connector, arrival_t, departure_t,
                               requested_kwh, delivered_kwh, deliverable_kwh))
        self._pending += 1
        if self._pending > AUTO_FLUSH_ROWS:
            self.flush()

    def meter_read(self, t: float, unit: int, function: int, address: int, count: int, outcome: str,
                   age_s: float | None) -> None:
        """One Modbus request to an emulated meter: ``outcome`` is ``ok``, the fault it met (``frozen``,
        ``garbage``, ``word_order``, ``slow``) or the refusal (``illegal_function``, ``illegal_address``,
        ``no_device``); ``age_s`` [s] is how old the values served were, None when none were."""
        self._meter_reads.append((t, unit, function, address, count, outcome, age_s))
        self._pending += 1
        if self._pending > AUTO_FLUSH_ROWS:
            self.flush()

    # -- durability ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every buffered row in one transaction and commit."""
        if self._db is None:
            if self._pending:
                raise RuntimeError(f"recorder for {self.path} is closed; {self._pending} rows not written")
            return
        if not self._pending:
            return
        db = self._db
        try:
            for sql, rows in ((_INSERT_SITE, self._site), (_INSERT_PLANT, self._plant),
                              (_INSERT_STATION, self._stations),
                              (_INSERT_MESSAGE, self._messages), (_INSERT_EVENT, self._events),
                              (_INSERT_VEHICLE, self._vehicles), (_INSERT_METER_READ, self._meter_reads)):
                if rows:
                    db.executemany(sql, rows)
            db.commit()
        except BaseException:
            db.rollback()  # keep the file at the last good commit; the rows stay buffered
            raise
        for rows in (self._site, self._plant, self._stations, self._messages, self._events, self._vehicles,
                     self._meter_reads):
            rows.clear()
        self._pending = 0

    def close(self) -> None:
        """Flush and close. Closing the last connection folds the WAL into the main file."""
        if self._db is None:
            return
        try:
            self.flush()
        finally:
            self._db.close()
            self._db = None
