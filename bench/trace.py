"""A recorded run, read back: the one input every check and report works from.

``load_trace`` turns a file written by ``bench.recorder`` into plain Python data (tuples and
dicts, no SQLite left open), so checks stay pure functions of a :class:`Trace`. It reads a
crashed run's file as well as a finished one's: SQLite replays the WAL on open, giving
everything up to the recorder's last flush. A trace of an older format reads back with empty lists
for the tables it did not have yet (format 1: no ``meter_reads``; formats 1–2: no ``plant``).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from bench.recorder import TRACE_FORMAT

_TABLES = {"meta", "site_samples", "station_samples", "messages", "events", "vehicles"}


class TraceError(ValueError):
    """The path is not a readable evbench trace. The message is a one-line reason without the
    path, which the caller already has (``evbench report`` prints ``<path>: <reason>``)."""


@dataclass
class Trace:
    """Everything one run recorded. Times ``t`` are simulated seconds since scenario start.

    - ``site``: ``(t, i1_a, i2_a, i3_a, limit_a, power_w, building_a, breaker_closed)``
    - ``stations``: ``(station, connector)`` → ``[(t, limit_a | None, offered_a, i1_a, i2_a, i3_a,
      power_w, energy_kwh, soc | None, ev | None)]``, currents in the station's phases
    - ``messages``: ``{t, station, direction, kind, unique_id, action, payload, raw}``, payload
      being JSON text (None for malformed frames)
    - ``events``: ``{t, kind, station, detail}``, detail a dict
    - ``vehicles``: ``{ev, station, connector, arrival_t, departure_t, requested_kwh,
      delivered_kwh, deliverable_kwh}``
    - ``meter_reads``: ``(t, unit, function, address, count, outcome, age_s | None)`` per Modbus
      request an emulated meter served or refused (see ``Recorder.meter_read``)
    - ``plant``: ``(t, pv_w, battery_w, battery_soc | None)`` per physics step of a site with PV or a
      battery (empty for one without): PV output [W], battery AC power [W, + charging]
    All lists are in recording order.
    """

    meta: dict
    site: list[tuple] = field(default_factory=list)
    stations: dict[tuple[str, int], list[tuple]] = field(default_factory=dict)
    messages: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    vehicles: list[dict] = field(default_factory=list)
    meter_reads: list[tuple] = field(default_factory=list)
    plant: list[tuple] = field(default_factory=list)


def _connect(path: Path) -> sqlite3.Connection:
    # mode=rw, not the default rwc: never create an empty database where a path was mistyped.
    # Not ro either: opening read-write lets SQLite replay a crashed run's WAL.
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)
    except sqlite3.Error as exc:
        raise TraceError(f"cannot open ({exc})") from None
    try:
        db.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        db.close()
        raise TraceError(f"not a readable SQLite file ({exc})") from None
    return db


def _json_or_raw(text: str | None) -> object:
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return text


def load_trace(path: str | Path) -> Trace:
    """Read a trace file. Raises :class:`TraceError` if it is missing or not an evbench trace."""
    path = Path(path)
    if not path.is_file():
        raise TraceError("no such trace file")
    db = _connect(path)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = _TABLES - tables
        if missing:
            raise TraceError(f"not an evbench trace (missing tables: {', '.join(sorted(missing))})")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > TRACE_FORMAT:
            raise TraceError(f"trace format {version} is newer than this evbench reads ({TRACE_FORMAT})")

        meta = {key: _json_or_raw(value) for key, value in db.execute("SELECT key, value FROM meta")}
        site = [(t, i1, i2, i3, limit, power, building, bool(closed))
                for t, i1, i2, i3, limit, power, building, closed
                in db.execute("SELECT * FROM site_samples ORDER BY rowid")]
        stations: dict[tuple[str, int], list[tuple]] = {}
        for station, connector, *sample in db.execute(
                "SELECT station, connector, t, limit_a, offered_a, i1_a, i2_a, i3_a, "
                "power_w, energy_kwh, soc, ev FROM station_samples ORDER BY rowid"):
            key = (station, connector)
            series = stations.get(key)
            if series is None:
                series = stations[key] = []
            series.append(tuple(sample))
        messages = [dict(t=t, station=station, direction=direction, kind=kind, unique_id=uid,
                         action=action, payload=payload, raw=raw)
                    for t, station, direction, kind, uid, action, payload, raw
                    in db.execute("SELECT * FROM messages ORDER BY rowid")]
        events = []
        for t, kind, station, detail in db.execute("SELECT * FROM events ORDER BY rowid"):
            detail = _json_or_raw(detail)
            events.append(dict(t=t, kind=kind, station=station,
                               detail=detail if isinstance(detail, dict) else {"raw": detail}))
        vehicles = [dict(ev=ev, station=station, connector=connector, arrival_t=arrival,
                         departure_t=departure, requested_kwh=requested, delivered_kwh=delivered,
                         deliverable_kwh=deliverable)
                    for ev, station, connector, arrival, departure, requested, delivered, deliverable
                    in db.execute("SELECT * FROM vehicles ORDER BY rowid")]
        meter_reads = ([tuple(row) for row in db.execute("SELECT * FROM meter_reads ORDER BY rowid")]
                       if "meter_reads" in tables else [])
        plant = ([tuple(row) for row in db.execute("SELECT t, pv_w, battery_w, battery_soc FROM plant_samples "
                                                   "ORDER BY rowid")]
                 if "plant_samples" in tables else [])
    except sqlite3.DatabaseError as exc:
        raise TraceError(f"not a readable evbench trace ({exc})") from None
    finally:
        db.close()
    return Trace(meta=meta, site=site, stations=stations, messages=messages,
                 events=events, vehicles=vehicles, meter_reads=meter_reads, plant=plant)
