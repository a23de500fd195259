"""The station's side of the conversation, replayed from its messages: the transactions running and the profiles
installed at each message, by the rules of the station's OCPP version (``meta["stations"][*]["ocpp"]``; 1.6 if
absent). Message checks judge what the controller sent against it."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bench.checks.core import Finding, _is_number
from bench.trace import Trace

# -- the station's side, replayed from its messages -----------------------------------------

TX_PROFILE = "TxProfile"
PROFILE_KINDS = ("Absolute", "Recurring", "Relative")

#: Answers that refuse a profile request: 1.6 ChargingProfileStatus Rejected / NotSupported and
#: ClearChargingProfileStatus Unknown; 2.0.1 ChargingProfileStatusEnumType Rejected and
#: ClearChargingProfileStatusEnumType Unknown. A CallError refuses too.
REFUSALS = ("Rejected", "Unknown", "NotSupported")

_OTHER_DIRECTION = {"to_station": "from_station", "from_station": "to_station"}


@dataclass(frozen=True)
class _Dialect:
    """How one OCPP version spells the profile messages, and the clause behind each rule the checks apply."""

    connector_key: str  # SetChargingProfile's connector: 1.6 connectorId, 2.0.1 evseId
    connector_word: str
    profile_key: str  # SetChargingProfile's profile
    id_key: str  # the profile's id
    max_purpose: str
    purposes: tuple[str, ...]
    remote_start: str
    sources: dict[str, str]  # rule -> clause; a rule missing here does not apply in this version


_V16 = _Dialect(
    "connectorId", "connector", "csChargingProfiles", "chargingProfileId", "ChargePointMaxProfile",
    ("ChargePointMaxProfile", "TxDefaultProfile", TX_PROFILE), "RemoteStartTransaction",
    {"shape": "1.6 §7.8", "max-evse": "1.6 §5.16", "tx-evse": "1.6 §5.16", "max-relative": "K01.FR.38",
     "start-missing": "1.6 §7.13", "recurrency": "1.6 §7.8", "first-period": "1.6 §7.14",
     "ascending": "1.6 §7.14", "limit": "1.6 §7.14", "phases": "1.6 §7.14", "stack": "1.6 §7.8",
     "no-tx": "1.6 §5.16", "other-tx": "1.6 §5.16", "remote-purpose": "1.6 §5.11", "remote-tx-id": "1.6 §5.11",
     "update-id": "TC_K_04", "clear-empty": "1.6 §5.5", "retry": "TC_K_08/TC_K_15"})

_V201 = _Dialect(
    "evseId", "EVSE", "chargingProfile", "id", "ChargingStationMaxProfile",
    ("ChargingStationMaxProfile", "TxDefaultProfile", TX_PROFILE, "ChargingStationExternalConstraints"),
    "RequestStartTransaction",
    {"shape": "2.0.1 ChargingProfileType", "max-evse": "2.0.1 SetChargingProfileRequest.evseId",
     "tx-evse": "K01.FR.16", "external": "K01.FR.22", "max-relative": "K01.FR.38", "start-missing": "K01.FR.40",
     "start-extraneous": "K01.FR.41", "recurrency": "2.0.1 ChargingProfileType.recurrencyKind",
     "tx-id": "K01.FR.03", "first-period": "K01.FR.31", "ascending": "K01.FR.35",
     "limit": "2.0.1 ChargingSchedulePeriodType.limit", "phases": "2.0.1 ChargingSchedulePeriodType.numberPhases",
     "stack": "2.0.1 ChargingProfileType.stackLevel", "duplicate": "K01.FR.06", "duplicate-tx": "K01.FR.39",
     "no-tx": "K01.FR.09", "other-tx": "K01.FR.33", "remote-purpose": "F01.FR.09", "remote-tx-id": "F01.FR.11",
     "update-id": "TC_K_04", "clear-empty": "K10.FR.02", "retry": "TC_K_08/TC_K_15"})


def _dialects(trace: Trace) -> dict[str, _Dialect]:
    """Station id -> its dialect, from ``meta["stations"][*]["ocpp"]``; a station not listed speaks 1.6."""
    stations = trace.meta.get("stations")
    dialects = {}
    for station in stations if isinstance(stations, list) else []:
        if isinstance(station, dict) and isinstance(station.get("id"), str):
            dialects[station["id"]] = _V201 if str(station.get("ocpp", "1.6")).startswith("2") else _V16
    return dialects


def _whole(x: object) -> int | None:
    """A JSON integer, or None (bool is not one, though Python says it is)."""
    return x if type(x) is int else None


def _object(x: object) -> dict:
    return x if isinstance(x, dict) else {}


def _transaction_id(x: object) -> int | str | None:
    """1.6 transactionId is an integer, 2.0.1's a string; anything else is no id."""
    return x if type(x) in (int, str) else None


@dataclass(frozen=True)
class _Profile:
    """The fields of a wire charging profile the rules reason about: None where absent or of the wrong type.
    ``valid_from_s``/``valid_to_s`` are run seconds (``bad_times`` names a validFrom/validTo that is not an
    RFC 3339 date-time)."""

    id: int | None
    stack_level: int | None
    purpose: object
    kind: object
    transaction_id: int | str | None
    valid_from_s: float | None
    valid_to_s: float | None
    bad_times: tuple[str, ...]
    wire: dict = field(compare=False, repr=False)  # the profile as sent, for replaying it (OFFLINE-SAFE)

    def window(self, t: float) -> tuple[float, float]:
        """When it is valid if set at ``t``: an absent validFrom means from receipt, an absent validTo never ends."""
        return (t if self.valid_from_s is None else self.valid_from_s,
                math.inf if self.valid_to_s is None else self.valid_to_s)


def _read_profile(raw: object, dialect: _Dialect, start_epoch: float) -> _Profile | None:
    if not isinstance(raw, dict):
        return None
    times, bad = [], []
    for key in ("validFrom", "validTo"):
        text = raw.get(key)
        t = None if text is None else _run_seconds(text, start_epoch)
        if text is not None and t is None:
            bad.append(key)
        times.append(t)
    return _Profile(_whole(raw.get(dialect.id_key)), _whole(raw.get("stackLevel")),
                    raw.get("chargingProfilePurpose"), raw.get("chargingProfileKind"),
                    _transaction_id(raw.get("transactionId")), times[0], times[1], tuple(bad), raw)


def _run_seconds(text: object, start_epoch: float) -> float | None:
    """An RFC 3339 date-time as seconds since the run's start (no offset = UTC), or None if it is not one."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp() - start_epoch


@dataclass(frozen=True)
class _Installed:
    """A profile a station accepted, where, for which transaction, and when it is valid [run s]."""

    profile: _Profile
    connector: int
    transaction_id: int | str | None
    valid_from_s: float
    valid_to_s: float


def _same_slot(dialect: _Dialect, old: _Installed, new: _Installed) -> str | None:
    """The rule by which ``new`` takes ``old``'s place — None when the two may coexist.

    1.6 replaces the profile of the same purpose and stackLevel on the same connector, whatever its validity
    (§3.13.2, §5.16); 2.0.1 forbids that while their validity overlaps (K01.FR.06), and forbids two TxProfiles
    of one transaction at one stackLevel (K01.FR.39)."""
    p, q = old.profile, new.profile
    if p.purpose != q.purpose or p.stack_level != q.stack_level:
        return None
    if p.purpose == TX_PROFILE and old.transaction_id is not None and old.transaction_id == new.transaction_id:
        return "duplicate-tx"
    if old.connector != new.connector:
        return None
    if dialect is _V16 or (old.valid_from_s < new.valid_to_s and new.valid_from_s < old.valid_to_s):
        return "duplicate"
    return None


def _pair_answers(messages: list[dict]) -> dict[int, int]:
    """Index of each call -> index of the result or error that answers it (same station and unique id, the
    other direction, the first after it), as the recorder pairs them."""
    open_calls: dict[tuple, int] = {}
    answers: dict[int, int] = {}
    for i, message in enumerate(messages):
        uid = message.get("unique_id")
        if not isinstance(uid, str):
            continue
        kind, station = message.get("kind"), message.get("station")
        if kind == "call":
            open_calls[station, message.get("direction"), uid] = i
        elif kind in ("result", "error"):
            call = open_calls.pop((station, _OTHER_DIRECTION.get(message.get("direction")), uid), None)
            if call is not None:
                answers[call] = i
    return answers


def _payload(message: dict) -> dict | None:
    text = message.get("payload")
    if not isinstance(text, str):
        return None
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None


def _refused(answer: dict | None) -> bool:
    if answer is None:
        return False
    return answer.get("kind") == "error" or _object(_payload(answer)).get("status") in REFUSALS


class _Ledger:
    """What each station has, as far as its messages tell, replayed in recording order.

    ``running[station][connector]`` is the transaction running there: 1.6 from StartTransaction's answer to
    StopTransaction, 2.0.1 from the TransactionEvent that names its EVSE to the one that ends it.
    ``installed[station][profile id]`` are the profiles the station accepted: SetChargingProfile answered
    Accepted (replacing by id, and by :func:`_same_slot`), a remote start's profile once its transaction starts;
    removed by ClearChargingProfile answered Accepted and, for TxProfiles, by the end of their transaction.
    ``ended`` lists ``(station, connector, t)`` for each transaction end.
    """

    def __init__(self, trace: Trace) -> None:
        self.messages = trace.messages
        start_epoch = trace.meta.get("start_epoch")
        self.start_epoch = start_epoch if _is_number(start_epoch) else 0.0
        self._dialects = _dialects(trace)
        self._answers = _pair_answers(self.messages)
        self._answered = {answer: call for call, answer in self._answers.items()}
        self._open: dict[int, dict] = {}  # call index -> payload, for calls whose answer changes the state
        self.running: dict[str, dict[int, int | str]] = {}
        self.installed: dict[str, dict[int, _Installed]] = {}
        self.ended: list[tuple[str, int, float]] = []
        self._remote: dict[str, list[tuple[int | None, _Profile, object]]] = {}  # accepted, not started yet

    def dialect(self, station: object) -> _Dialect:
        return self._dialects.get(station, _V16) if isinstance(station, str) else _V16

    def answer(self, call: int) -> dict | None:
        answer = self._answers.get(call)
        return None if answer is None else self.messages[answer]

    def walk(self) -> Iterator[tuple[int, dict, dict | None]]:
        """Each message with its payload (None unless a JSON object). While a message is yielded the ledger
        shows the state just before it."""
        for i, message in enumerate(self.messages):
            payload = _payload(message)
            yield i, message, payload
            if payload is not None:
                self._apply(i, message, payload)

    def _apply(self, i: int, message: dict, payload: dict) -> None:
        kind, station, action, t = message.get("kind"), message.get("station"), message.get("action"), message["t"]
        if kind == "call":
            if message.get("direction") == "from_station":
                if action == "StopTransaction":
                    self._end(station, _transaction_id(payload.get("transactionId")), t)
                elif action == "TransactionEvent":
                    self._transaction_event(station, payload, t)
                elif action == "StartTransaction":
                    self._open[i] = payload
            elif action in ("SetChargingProfile", "ClearChargingProfile", self.dialect(station).remote_start):
                self._open[i] = payload
            return
        call = self._answered.get(i)
        request = self._open.pop(call, None) if call is not None else None
        if request is None or kind != "result":
            return
        action = self.messages[call].get("action")
        dialect = self.dialect(station)
        if action == "StartTransaction":
            self._start(station, _whole(request.get("connectorId")), _transaction_id(payload.get("transactionId")),
                        t, None)
        elif payload.get("status") != "Accepted":
            return
        elif action == "SetChargingProfile":
            connector = _whole(request.get(dialect.connector_key))
            profile = _read_profile(request.get(dialect.profile_key), dialect, self.start_epoch)
            if connector is not None and profile is not None:
                transaction = profile.transaction_id
                if profile.purpose == TX_PROFILE and transaction is None:
                    transaction = self.running.get(station, {}).get(connector)
                self._install(station, connector, profile, transaction, t)
        elif action == "ClearChargingProfile":
            self._clear(station, dialect, request)
        else:
            profile = _read_profile(request.get("chargingProfile"), dialect, self.start_epoch)
            if profile is not None:
                connector = _whole(request.get(dialect.connector_key))
                self._remote.setdefault(station, []).append((connector, profile, request.get("remoteStartId")))

    def _transaction_event(self, station: str, payload: dict, t: float) -> None:
        info = _object(payload.get("transactionInfo"))
        transaction = _transaction_id(info.get("transactionId"))
        if payload.get("eventType") == "Ended":
            self._end(station, transaction, t)
            return
        evse = _whole(_object(payload.get("evse")).get("id"))
        if self.running.get(station, {}).get(evse) != transaction:
            self._start(station, evse, transaction, t, info.get("remoteStartId"))

    def _start(self, station: str, connector: int | None, transaction: int | str | None, t: float,
               remote_start_id: object) -> None:
        if connector is None or transaction is None:
            return
        self.running.setdefault(station, {})[connector] = transaction
        waiting = self._remote.get(station, [])
        for k, (wanted, profile, wanted_id) in enumerate(waiting):
            if wanted in (None, connector) and (wanted_id is None or remote_start_id in (None, wanted_id)):
                del waiting[k]
                self._install(station, connector, profile, transaction, t)
                break

    def _end(self, station: str, transaction: int | str | None, t: float) -> None:
        running = self.running.get(station, {})
        connector = next((c for c, tx in running.items() if tx == transaction), None)
        if transaction is None or connector is None:
            return
        del running[connector]
        self.ended.append((station, connector, t))
        installed = self.installed.get(station, {})
        for key in [k for k, p in installed.items() if p.profile.purpose == TX_PROFILE and p.connector == connector]:
            del installed[key]

    def _install(self, station: str, connector: int, profile: _Profile, transaction: int | str | None,
                 t: float) -> None:
        if profile.id is None:
            return
        new = _Installed(profile, connector, transaction, *profile.window(t))
        installed = self.installed.setdefault(station, {})
        dialect = self.dialect(station)
        for key in [k for k, old in installed.items() if k == profile.id or _same_slot(dialect, old, new)]:
            del installed[key]
        installed[profile.id] = new

    def _clear(self, station: str, dialect: _Dialect, request: dict) -> None:
        """ClearChargingProfile answered Accepted: by id alone, else by every criterion given (1.6 §5.5, K10)."""
        installed = self.installed.get(station, {})
        if dialect is _V16:
            profile_id, criteria = request.get("id"), request
            connector = criteria.get("connectorId")
        else:
            profile_id, criteria = request.get("chargingProfileId"), _object(request.get("chargingProfileCriteria"))
            connector = criteria.get("evseId")
        if profile_id is not None:
            if type(profile_id) is int:
                installed.pop(profile_id, None)
            return
        purpose, stack_level = criteria.get("chargingProfilePurpose"), criteria.get("stackLevel")
        for key in [k for k, p in installed.items()
                    if connector in (None, p.connector) and purpose in (None, p.profile.purpose)
                    and stack_level in (None, p.profile.stack_level)]:
            del installed[key]


@dataclass(frozen=True)
class _Sent:
    """A charging profile the controller sent (SetChargingProfile, or a remote start's), seen against its
    station's state just before it went."""

    index: int
    message: dict
    dialect: _Dialect
    remote: bool  # carried by Remote/RequestStartTransaction
    connector: object  # as sent (validity is PROFILE-VALID's business)
    raw: object  # the wire profile
    profile: _Profile | None
    running: int | str | None  # the transaction running on that connector then
    installed: tuple[_Installed, ...]  # what the station had then

    def as_installed(self) -> _Installed | None:
        """This profile as the station would hold it, if it is identifiable enough to compare."""
        p, connector = self.profile, _whole(self.connector)
        if p is None or p.id is None or connector is None:
            return None
        transaction = p.transaction_id if p.transaction_id is not None or p.purpose != TX_PROFILE else self.running
        return _Installed(p, connector, transaction, *p.window(self.message["t"]))


def _sent(ledger: _Ledger, i: int, message: dict, payload: dict) -> _Sent | None:
    """The profile the controller's call at ``i`` carries, if it is a SetChargingProfile or a remote start
    with one (the ledger being at ``i``)."""
    station, action = message.get("station"), message.get("action")
    dialect = ledger.dialect(station)
    if action == "SetChargingProfile":
        raw = payload.get(dialect.profile_key)
    elif action == dialect.remote_start and payload.get("chargingProfile") is not None:
        raw = payload["chargingProfile"]
    else:
        return None
    connector = payload.get(dialect.connector_key)
    return _Sent(i, message, dialect, action != "SetChargingProfile", connector,
                 raw, _read_profile(raw, dialect, ledger.start_epoch),
                 ledger.running.get(station, {}).get(connector) if type(connector) is int else None,
                 tuple(ledger.installed.get(station, {}).values()))


def _sent_profiles(ledger: _Ledger) -> Iterator[_Sent]:
    for i, message, payload in _controller_calls(ledger):
        sent = _sent(ledger, i, message, payload)
        if sent is not None:
            yield sent


def _controller_calls(ledger: _Ledger) -> Iterator[tuple[int, dict, dict]]:
    for i, message, payload in ledger.walk():
        if message.get("kind") == "call" and message.get("direction") == "to_station" and payload is not None:
            yield i, message, payload


def _message_finding(check: str, ledger: _Ledger, index: int, rule: str, text: str, *, connector: object = None,
                     t_end: float | None = None, more_evidence: dict | None = None, **fields: object) -> Finding:
    """A finding about one message: "<action> to|from <station>[/<connector>]: <text> (<rule>)", with the rule,
    the message and its answer as evidence."""
    message = ledger.messages[index]
    connector = connector if type(connector) is int else None
    where = f"{message.get('station')}" + (f"/{connector}" if connector is not None else "")
    way = "to" if message.get("direction") == "to_station" else "from"
    answer = ledger.answer(index)
    return Finding(check, f"{message.get('action')} {way} {where}: {text} ({rule})", message["t"],
                   message["t"] if t_end is None else t_end, station=message.get("station"), connector=connector,
                   evidence={"rule": rule, "message": message.get("raw"),
                             "answer": None if answer is None else answer.get("raw"), **(more_evidence or {})},
                   **fields)
