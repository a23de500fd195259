"""Message checks of what the controller sent: MIN-CURRENT, PROFILE-VALID, TX-PROFILE-SCOPE, PROFILE-UPDATE,
NEEDS-ANSWERED. Each finding names the rule it broke and quotes the message and its answer."""

from __future__ import annotations

import json
from collections.abc import Iterator

from bench.checks.core import (
    DEFAULT_VOLTAGE_V,
    Finding,
    _check,
    _end_t,
    _is_number,
    _params,
    _seconds,
)
from bench.checks.ledger import (
    _V16,
    _V201,
    PROFILE_KINDS,
    TX_PROFILE,
    _controller_calls,
    _Dialect,
    _Ledger,
    _message_finding,
    _object,
    _payload,
    _Profile,
    _refused,
    _run_seconds,
    _same_slot,
    _Sent,
    _sent,
    _sent_profiles,
    _whole,
)
from bench.trace import Trace

# -- message checks -------------------------------------------------------------------------

# Where a controller-sent call carries charging profiles: action -> payload keys.
# 1.6: SetChargingProfile.csChargingProfiles, RemoteStartTransaction.chargingProfile;
# 2.0.1: SetChargingProfile.chargingProfile, RequestStartTransaction.chargingProfile.
_PROFILE_KEYS = {
    "SetChargingProfile": ("csChargingProfiles", "chargingProfile"),
    "RemoteStartTransaction": ("chargingProfile",),
    "RequestStartTransaction": ("chargingProfile",),
}


def _profile_limits_a(profile: object, voltage_v: float) -> Iterator[tuple[float, str]]:
    """Each schedule period's limit as A per phase, with how it was derived.

    1.6 has one ``chargingSchedule`` object, 2.0.1 a list of them. ``A`` is per phase; ``W`` is
    total, I = P / (V × numberPhases), numberPhases defaulting to 3 (1.6 §7.13). Anything
    malformed (missing unit, non-numeric limit, impossible phase count) is skipped: judging
    profile shape is PROFILE-VALID's business, not this check's.
    """
    if not isinstance(profile, dict):
        return
    schedules = profile.get("chargingSchedule")
    for schedule in schedules if isinstance(schedules, list) else [schedules]:
        if not isinstance(schedule, dict):
            continue
        unit = schedule.get("chargingRateUnit")
        periods = schedule.get("chargingSchedulePeriod")
        if unit not in ("A", "W") or not isinstance(periods, list):
            continue
        for period in periods:
            if not isinstance(period, dict) or not _is_number(period.get("limit")):
                continue
            limit = period["limit"]
            if unit == "A":
                yield limit, f"{limit:g} A"
                continue
            phases = period.get("numberPhases")
            phases = 3 if phases is None else phases
            if type(phases) is not int or not 1 <= phases <= 3:
                continue
            amps = limit / (voltage_v * phases)
            yield amps, f"{limit:g} W / ({voltage_v:g} V x {phases}) = {amps:.2f} A"


@_check("MIN-CURRENT", "message",
        "no AC limit strictly between 0 and 6 A (per phase)",
        "IEC 61851-1")
def _min_current(trace: Trace) -> Iterator[Finding]:
    """Each profile-carrying call to a station with any period limit in ``(0, min_current_a)``
    A per phase; one finding per message, quoting its lowest such limit."""
    min_a = _params(trace)["min_current_a"]
    voltage_v = trace.meta.get("voltage_v")
    voltage_v = voltage_v if _is_number(voltage_v) and voltage_v > 0 else DEFAULT_VOLTAGE_V
    for message in trace.messages:
        keys = _PROFILE_KEYS.get(message["action"])
        if keys is None or message["kind"] != "call" or message["direction"] != "to_station":
            continue
        try:
            payload = json.loads(message["payload"])
        except (TypeError, ValueError):
            continue
        if not isinstance(payload, dict):
            continue
        # 1e-9: a W limit that converts to exactly the minimum must not fail on float rounding.
        offending = [(amps, how) for key in keys
                     for amps, how in _profile_limits_a(payload.get(key), voltage_v)
                     if 0 < amps < min_a - 1e-9]
        if not offending:
            continue
        amps, how = min(offending)
        connector = payload.get("connectorId", payload.get("evseId"))
        connector = connector if type(connector) is int else None
        where = message["station"] + (f"/{connector}" if connector is not None else "")
        yield Finding(
            "MIN-CURRENT",
            f"{message['action']} to {where}: limit {how} per phase, in (0, {min_a:g}) A",
            message["t"], message["t"], station=message["station"], connector=connector,
            measured=round(float(amps), 3), allowed=float(min_a),
            evidence={"message": message["raw"]})



# -- profile checks ------------------------------------------------------------------------

def _shape_faults(sent: _Sent) -> Iterator[tuple[str, str]]:
    """The static rules of SMART_CHARGING.md §1 one profile breaks, as ``(rule, what)``: its own fields, and its
    purpose against the connector/EVSE it was sent to. For a remote start's profile the purpose rules are left
    to TX-PROFILE-SCOPE (it must be a TxProfile, whatever else it is)."""
    d, p, raw = sent.dialect, sent.profile, sent.raw
    if not sent.remote and (_whole(sent.connector) is None or sent.connector < 0):
        yield "shape", f"{d.connector_key} {sent.connector!r} is not a {d.connector_word} number >= 0"
    if p is None:
        yield "shape", f"the charging profile is {type(raw).__name__}, not an object"
        return
    if p.id is None:
        yield "shape", f"{d.id_key} is missing or not an integer"
    if p.stack_level is None:
        yield "shape", "stackLevel is missing or not an integer"
    elif p.stack_level < 0:
        yield "stack", f"stackLevel {p.stack_level} < 0"
    if p.purpose not in d.purposes:
        yield "shape", f"chargingProfilePurpose {p.purpose!r} is not one of {', '.join(d.purposes)}"
    if p.kind not in PROFILE_KINDS:
        yield "shape", f"chargingProfileKind {p.kind!r} is not one of {', '.join(PROFILE_KINDS)}"
    elif p.kind == "Recurring" and raw.get("recurrencyKind") not in ("Daily", "Weekly"):
        yield "recurrency", (f"a Recurring profile needs recurrencyKind Daily or Weekly, "
                             f"not {raw.get('recurrencyKind')!r}")
    for key in p.bad_times:
        yield "shape", f"{key} {raw[key]!r} is not an RFC 3339 date-time"
    if not sent.remote:
        connector = _whole(sent.connector)
        if p.purpose == d.max_purpose and connector not in (None, 0):
            yield "max-evse", f"a {p.purpose} belongs on {d.connector_word} 0, not {connector}"
        if p.purpose == TX_PROFILE and connector == 0:
            yield "tx-evse", f"a TxProfile needs a {d.connector_word} > 0, not 0"
        if p.purpose == "ChargingStationExternalConstraints" and "external" in d.sources:
            yield "external", "ChargingStationExternalConstraints are the station's energy manager's, never the CSMS's"
        if p.purpose == d.max_purpose and p.kind == "Relative":
            yield "max-relative", f"a {p.purpose} cannot be Relative: there is no transaction to start it"
        if p.purpose == TX_PROFILE and p.transaction_id is None and "tx-id" in d.sources:
            yield "tx-id", "a TxProfile needs the transactionId it is for"
    schedules = raw.get("chargingSchedule")
    if d is _V16:
        schedules = [schedules] if isinstance(schedules, dict) else None
    elif not (isinstance(schedules, list) and schedules and all(isinstance(s, dict) for s in schedules)):
        schedules = None
    if schedules is None:
        expected = "an object" if d is _V16 else "a list of 1 or more objects"
        yield "shape", f"chargingSchedule is {type(raw.get('chargingSchedule')).__name__}, not {expected}"
        return
    for schedule in schedules:
        yield from _schedule_faults(p, schedule, d)


def _schedule_faults(p: _Profile, schedule: dict, d: _Dialect) -> Iterator[tuple[str, str]]:
    start = schedule.get("startSchedule")
    if p.kind in ("Absolute", "Recurring") and start is None:
        yield "start-missing", f"an {p.kind} profile needs a startSchedule"
    if p.kind == "Relative" and start is not None and "start-extraneous" in d.sources:
        yield "start-extraneous", "a Relative profile must not have a startSchedule"
    if start is not None and _run_seconds(start, 0.0) is None:
        yield "shape", f"startSchedule {start!r} is not an RFC 3339 date-time"
    if schedule.get("chargingRateUnit") not in ("A", "W"):
        yield "shape", f"chargingRateUnit {schedule.get('chargingRateUnit')!r} is not A or W"
    periods = schedule.get("chargingSchedulePeriod")
    if not isinstance(periods, list) or not periods:
        yield "shape", "chargingSchedulePeriod is not a list of 1 or more periods"
        return
    previous = None
    for k, period in enumerate(periods):
        if not isinstance(period, dict):
            yield "shape", f"chargingSchedulePeriod[{k}] is not an object"
            continue
        start_period, limit, phases = _whole(period.get("startPeriod")), period.get("limit"), period.get("numberPhases")
        if start_period is None:
            yield "shape", f"chargingSchedulePeriod[{k}].startPeriod is missing or not an integer"
        elif k == 0 and start_period != 0:
            yield "first-period", f"the first period starts at {start_period}, not 0"
        elif previous is not None and start_period <= previous:
            yield "ascending", f"period {k} starts at {start_period} s, not after {previous} s"
        previous = start_period if start_period is not None else previous
        if not _is_number(limit):
            yield "shape", f"chargingSchedulePeriod[{k}].limit {limit!r} is not a number"
        elif limit < 0:
            yield "limit", f"limit {limit:g} < 0"
        if phases is not None and _whole(phases) not in (1, 2, 3):
            yield "phases", f"numberPhases {phases!r} is not 1, 2 or 3"


@_check("PROFILE-VALID", "message",
        "purpose/EVSE/kind/startSchedule/recurrency/stackLevel rules of §1",
        "K01.FR.03/06/16/38/39/40/41")
def _profile_valid(trace: Trace) -> Iterator[Finding]:
    """Each profile the controller sent (SetChargingProfile; a remote start's, but for the purpose rules) judged
    by the rules of its station's OCPP version: one finding per message and rule broken. In 2.0.1 also a
    profile that duplicates one the station has installed — same purpose, stackLevel and EVSE with overlapping
    validity (K01.FR.06), or a TxProfile at the stackLevel of its transaction's (K01.FR.39) — under a different
    id. (In 1.6 that replaces the old profile: PROFILE-UPDATE's business.)"""
    ledger = _Ledger(trace)
    for sent in _sent_profiles(ledger):
        faults: dict[str, str] = {}
        for rule, text in _shape_faults(sent):
            faults.setdefault(rule, text)
        new = sent.as_installed()
        if new is not None and not sent.remote and sent.dialect is _V201:
            for old in sent.installed:
                rule = _same_slot(_V201, old, new) if old.profile.id != new.profile.id else None
                if rule is not None:
                    faults.setdefault(rule, f"profile {old.profile.id} already holds {new.profile.purpose} "
                                            f"stackLevel {new.profile.stack_level} there (the new one has id "
                                            f"{new.profile.id})")
                    break
        for rule, text in faults.items():
            yield _message_finding("PROFILE-VALID", ledger, sent.index, sent.dialect.sources[rule], text,
                                   connector=sent.connector)


@_check("TX-PROFILE-SCOPE", "message",
        "TxProfile only with a transactionId during a transaction; remote start carries one without",
        "K01.FR.03/16; F01.FR.09/11; TC_K_37/60")
def _tx_profile_scope(trace: Trace) -> Iterator[Finding]:
    """A TxProfile sent to a connector/EVSE where no transaction runs at that moment, or naming another
    transaction than the one running there; a remote start whose profile is not a TxProfile or carries a
    transactionId. (A 2.0.1 TxProfile without transactionId during a transaction is PROFILE-VALID's K01.FR.03;
    1.6 allows leaving it out, §7.8.)"""
    ledger = _Ledger(trace)
    for sent in _sent_profiles(ledger):
        p, d = sent.profile, sent.dialect
        if p is None:
            continue
        if sent.remote:
            if p.purpose != TX_PROFILE:
                yield _message_finding("TX-PROFILE-SCOPE", ledger, sent.index, d.sources["remote-purpose"],
                                       f"the profile of a remote start must be a TxProfile, not {p.purpose!r}",
                                       connector=sent.connector)
            if sent.raw.get("transactionId") is not None:
                yield _message_finding("TX-PROFILE-SCOPE", ledger, sent.index, d.sources["remote-tx-id"],
                                       "the profile of a remote start must not carry a transactionId "
                                       f"({sent.raw['transactionId']!r}): its transaction does not exist yet",
                                       connector=sent.connector)
            continue
        if p.purpose != TX_PROFILE or not _whole(sent.connector):
            continue
        if sent.running is None and not _crossed_an_end(ledger, sent):
            yield _message_finding("TX-PROFILE-SCOPE", ledger, sent.index, d.sources["no-tx"],
                                   f"TxProfile while no transaction runs on {d.connector_word} {sent.connector}",
                                   connector=sent.connector)
        elif p.transaction_id is not None and p.transaction_id != sent.running and not (
                sent.running is None and _crossed_an_end(ledger, sent)):
            yield _message_finding("TX-PROFILE-SCOPE", ledger, sent.index, d.sources["other-tx"],
                                   f"TxProfile for transaction {p.transaction_id!r}, but {sent.running!r} "
                                   f"runs there", connector=sent.connector)


#: [s] A TxProfile reaching a connector this soon after its transaction ended crossed the end on the wire: the
#: controller decided before it could have heard of it (every CSMS races a driver who unplugs), not out of scope.
CROSSING_S = 5.0


def _crossed_an_end(ledger: _Ledger, sent: _Sent) -> bool:
    station, t = sent.message.get("station"), sent.message["t"]
    return any(s == station and c == sent.connector and 0 <= t - ended_t <= CROSSING_S
               for s, c, ended_t in ledger.ended)


def _canonical(payload: dict) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def _empty_clear(dialect: _Dialect, payload: dict) -> bool:
    """A ClearChargingProfile that names neither a profile id nor any criterion: it clears everything."""
    if dialect is _V16:
        return all(payload.get(k) is None for k in ("id", "connectorId", "chargingProfilePurpose", "stackLevel"))
    criteria = _object(payload.get("chargingProfileCriteria"))
    return payload.get("chargingProfileId") is None and all(
        criteria.get(k) is None for k in ("evseId", "chargingProfilePurpose", "stackLevel"))


@_check("PROFILE-UPDATE", "message",
        "updates reuse the profile id; clears by id or criteria; Unknown/NotSupported handled",
        "TC_K_04/05/06/08/15")
def _profile_update(trace: Trace) -> Iterator[Finding]:
    """Three ways to get updates wrong:

    - a SetChargingProfile with a new id where a profile of the same purpose and stackLevel is installed on that
      connector/EVSE (for TxProfiles: of the same transaction; in 2.0.1: with overlapping validity), instead of
      reusing its id — 1.6 replaces the old one silently, 2.0.1 rejects the new one (TC_K_04);
    - a ClearChargingProfile naming neither id nor criteria: in 2.0.1 always (K10.FR.02), in 1.6 while a
      transaction runs on the station, whose TxProfile it wipes (§5.5);
    - a request re-sent identically after the station refused it (Rejected, Unknown, NotSupported or a
      CallError) more than ``profile_retry_limit`` times within ``profile_retry_window_s``: one finding per burst.
    """
    params = _params(trace)
    retry_limit, window_s = params["profile_retry_limit"], params["profile_retry_window_s"]
    ledger = _Ledger(trace)
    last_sent: dict[tuple, int] = {}  # (station, action, payload) -> index of its latest sending
    retries: dict[tuple, list[tuple[int, int]]] = {}  # the same key -> (re-sending, the refused sending before)
    for i, message, payload in _controller_calls(ledger):
        action, station = message.get("action"), message.get("station")
        dialect = ledger.dialect(station)
        if action not in ("SetChargingProfile", "ClearChargingProfile"):
            continue
        key = (station, action, _canonical(payload))
        previous = last_sent.get(key)
        if previous is not None and _refused(ledger.answer(previous)):
            retries.setdefault(key, []).append((i, previous))
        last_sent[key] = i
        if action == "ClearChargingProfile":
            running = ledger.running.get(station)
            if _empty_clear(dialect, payload) and (dialect is _V201 or running):
                during = (f" while transaction(s) {', '.join(map(str, running.values()))} run" if running else "")
                yield _message_finding("PROFILE-UPDATE", ledger, i, dialect.sources["clear-empty"],
                                       f"clears every profile, naming neither id nor criteria{during}")
            continue
        sent = _sent(ledger, i, message, payload)
        new = sent.as_installed()
        old = next((old for old in sent.installed if new is not None and old.profile.id != new.profile.id
                    and _same_slot(dialect, old, new)), None)
        if old is not None:
            fate = "1.6 replaces it silently" if dialect is _V16 else "2.0.1 rejects the new one"
            yield _message_finding(
                "PROFILE-UPDATE", ledger, i, dialect.sources["update-id"],
                f"new id {new.profile.id} for the {new.profile.purpose} at stackLevel {new.profile.stack_level} "
                f"where profile {old.profile.id} is installed; an update reuses the id ({fate})",
                connector=new.connector)
    for key, indexes in retries.items():
        yield from _retry_bursts(ledger, key[0], indexes, retry_limit, window_s)


def _retry_bursts(ledger: _Ledger, station: str, retries: list[tuple[int, int]], limit: int,
                  window_s: float) -> Iterator[Finding]:
    """One finding per burst of re-sends: consecutive re-sends each of which has more than ``limit`` re-sends
    within the ``window_s`` up to it; the burst starts at the first re-send of its first such window."""
    ts = [ledger.messages[i]["t"] for i, _ in retries]
    bursts: list[tuple[int, int]] = []  # (first, last) positions in ``retries``
    first = 0
    for k, t in enumerate(ts):
        while t - ts[first] >= window_s:
            first += 1
        if k - first + 1 > limit:
            if bursts and bursts[-1][1] == k - 1:
                bursts[-1] = (bursts[-1][0], k)
            else:
                bursts.append((first, k))
    dialect = ledger.dialect(station)
    for start, end in bursts:
        index, refused = retries[start]
        refusal = ledger.answer(refused)
        why = ("a CallError " + str(_object(_payload(refusal)).get("errorCode"))
               if refusal.get("kind") == "error" else repr(_object(_payload(refusal)).get("status")))
        count = end - start + 1
        yield _message_finding(
            "PROFILE-UPDATE", ledger, index, dialect.sources["retry"],
            f"re-sent unchanged {count} times in {_seconds(ts[end] - ts[start])} s after the station answered "
            f"{why} (at most {limit} within {window_s:g} s)",
            t_end=ts[end], measured=float(count), allowed=float(limit), unit="requests",
            more_evidence={"refusal": refusal.get("raw"), "resent_t": ts[start:end + 1]})


@_check("NEEDS-ANSWERED", "message",
        "NotifyEVChargingNeeds answered and followed by a TxProfile within 60 s",
        "K15–K17; TC_K_53/55/57/59")
def _needs_answered(trace: Trace) -> Iterator[Finding]:
    """Each NotifyEVChargingNeeds a station sent must be answered Accepted or Processing (K15.FR.02/03/05: a
    Rejected, a CallError or no answer by the end of the run is a finding), and then be followed by a
    SetChargingProfile with a TxProfile for its evseId within ``needs_answer_s`` (TC_K_53) — unless the
    transaction on that EVSE ended first, or the run did."""
    needs_s = _params(trace)["needs_answer_s"]
    ledger = _Ledger(trace)
    needs: list[tuple[int, int | None]] = []  # (message index, evseId)
    profiles_t: dict[tuple[str, int], list[float]] = {}  # (station, EVSE) -> when a TxProfile was sent there
    for i, message, payload in ledger.walk():
        if message.get("kind") != "call":
            continue
        station, action = message.get("station"), message.get("action")
        if message.get("direction") == "from_station" and action == "NotifyEVChargingNeeds":
            needs.append((i, _whole(_object(payload).get("evseId"))))
        elif message.get("direction") == "to_station" and action == "SetChargingProfile" and payload is not None:
            dialect = ledger.dialect(station)
            evse = _whole(payload.get(dialect.connector_key))
            purpose = _object(payload.get(dialect.profile_key)).get("chargingProfilePurpose")
            if evse is not None and purpose == TX_PROFILE:
                profiles_t.setdefault((station, evse), []).append(message["t"])
    ends: dict[tuple[str, int], list[float]] = {}
    for station, connector, t in ledger.ended:
        ends.setdefault((station, connector), []).append(t)
    end_t = _end_t(trace)
    for i, evse in needs:
        message, answer = ledger.messages[i], ledger.answer(i)
        answered = _object(_payload(answer)) if answer is not None else {}
        if answer is None:
            yield _message_finding("NEEDS-ANSWERED", ledger, i, "K15.FR.02", "not answered by the end of the run",
                                   connector=evse)
        elif answer.get("kind") == "error":
            yield _message_finding("NEEDS-ANSWERED", ledger, i, "K15.FR.02",
                                   f"answered with a CallError {answered.get('errorCode')}", connector=evse)
        elif answered.get("status") not in ("Accepted", "Processing"):
            yield _message_finding("NEEDS-ANSWERED", ledger, i, "K15.FR.03/05",
                                   f"answered {answered.get('status')!r}, not Accepted or Processing",
                                   connector=evse)
        elif evse is not None:
            t, deadline = message["t"], message["t"] + needs_s
            key = (message.get("station"), evse)
            if (any(t <= sent <= deadline for sent in profiles_t.get(key, ()))
                    or any(t <= ended <= deadline for ended in ends.get(key, ())) or deadline > end_t):
                continue
            yield _message_finding("NEEDS-ANSWERED", ledger, i, "TC_K_53",
                                   f"no SetChargingProfile with a TxProfile for EVSE {evse} within {needs_s:g} s",
                                   connector=evse, t_end=deadline)
