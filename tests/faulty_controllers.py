"""Deliberately faulty controllers: the reference equal_share with exactly one fault each.

They prove the certification catalogue discriminates (tests/test_certify.py): each must fail the checks its
fault violates and pass the others. Each docstring says what the fault is and what a product doing it would
do to a site.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from controllers.api import (
    ConnectorKey,
    Decision,
    Limit,
    Profile,
    SiteConfig,
    SiteReading,
)
from controllers.equal_share import EqualShare


class OverAllocates(EqualShare):
    """Aims 4 % over the site limit (a wrongly scaled CT, a limit typed in kVA): every budget is too big."""

    name = "over_allocates"
    over = 1.04

    def __init__(self, site: SiteConfig) -> None:
        super().__init__(site)
        self.limit_a = site.limit_a * self.over
        self.margin_a = 0.0

    def on_site_limit(self, limit_a: float, now: float) -> None:
        super().on_site_limit(limit_a * self.over, now)


class ReactsLate(EqualShare):
    """Acts on what it heard 40 s ago — a cloud round trip, a congested bus: site readings and grid signals reach
    its decisions late, though each looks fresh to it."""

    name = "reacts_late"
    lag_s = 40.0

    def __init__(self, site: SiteConfig) -> None:
        super().__init__(site)
        self.heard: deque[tuple[float, SiteReading | float]] = deque()

    def on_site_reading(self, reading: SiteReading, now: float) -> None:
        self.heard.append((now, reading))

    def on_site_limit(self, limit_a: float, now: float) -> None:
        self.heard.append((now, limit_a))

    def allocate(self, now: float) -> dict[ConnectorKey, Decision]:
        while self.heard and self.heard[0][0] <= now - self.lag_s:
            _, news = self.heard.popleft()
            if isinstance(news, SiteReading):
                changed = None if news.changed_at is None else news.changed_at + self.lag_s
                super().on_site_reading(dataclasses.replace(news, timestamp=news.timestamp + self.lag_s,
                                                            changed_at=changed), now)
            else:
                super().on_site_limit(news, now)
        return dict(super().allocate(now))


class MaxProfilePerConnector(EqualShare):
    """Sends its per-connector shares as station max profiles on each connector — where OCPP allows a max profile
    only on connector/EVSE 0 — and installs no default, trusting the max profiles to hold the site."""

    name = "max_profile_per_connector"

    def failsafe_a(self, station_id: str) -> float | None:
        return None

    def allocate(self, now: float) -> dict[ConnectorKey, Decision]:
        decisions: dict[ConnectorKey, Decision] = {}
        for key, decision in super().allocate(now).items():
            assert isinstance(decision, Limit)
            station, connector = key
            if self.site.station(station).ocpp == "2.0.1":
                decisions[key] = Profile({"evseId": connector, "chargingProfile": {
                    "id": 900 + connector, "stackLevel": 0, "chargingProfilePurpose": "ChargingStationMaxProfile",
                    "chargingProfileKind": "Absolute", "chargingSchedule": [{
                        "id": 900 + connector, "chargingRateUnit": "A", "startSchedule": "2020-01-01T00:00:00Z",
                        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": decision.limit_a}]}]}})
            else:
                decisions[key] = Profile({"connectorId": connector, "csChargingProfiles": {
                    "chargingProfileId": 900 + connector, "stackLevel": 0,
                    "chargingProfilePurpose": "ChargePointMaxProfile", "chargingProfileKind": "Absolute",
                    "chargingSchedule": {"chargingRateUnit": "A", "startSchedule": "2020-01-01T00:00:00Z",
                                         "chargingSchedulePeriod": [{"startPeriod": 0, "limit": decision.limit_a}]}}})
        return decisions


class HandsOutFourAmps(EqualShare):
    """A "gentle start": each new session is first offered 4 A — which IEC 61851 does not know as a current (a car
    pauses) — before its share."""

    name = "hands_out_4a"
    gentle_a = 4.0

    def __init__(self, site: SiteConfig) -> None:
        super().__init__(site)
        self.started_gently: set[ConnectorKey] = set()

    def allocate(self, now: float) -> dict[ConnectorKey, Decision]:
        decisions: dict[ConnectorKey, Decision] = dict(super().allocate(now))
        for key in self.sessions:
            if key not in self.started_gently:
                self.started_gently.add(key)
                decisions[key] = Limit(self.gentle_a)
                self.shares[key] = self.gentle_a
        return decisions


class NeverReallocates(EqualShare):
    """Cuts shares when it must but never raises one: what a car leaves or does not take stays unused."""

    name = "never_reallocates"

    def allocate(self, now: float) -> dict[ConnectorKey, Decision]:
        before = dict(self.shares)
        decisions = super().allocate(now)
        kept: dict[ConnectorKey, Decision] = {}
        for key, decision in decisions.items():
            assert isinstance(decision, Limit)
            limit_a = min(decision.limit_a, before[key]) if key in before else decision.limit_a
            kept[key] = Limit(limit_a)
            self.shares[key] = limit_a
        return kept


class SendsMalformedFrames(EqualShare):
    """Every other profile it sends has its numbers as strings ("limit": "16.0"), which the OCPP JSON schemas
    refuse: the station answers a CALLERROR and keeps what it had."""

    name = "sends_malformed_frames"

    def __init__(self, site: SiteConfig) -> None:
        super().__init__(site)
        self.sent = 0

    def allocate(self, now: float) -> dict[ConnectorKey, Decision]:
        decisions: dict[ConnectorKey, Decision] = {}
        for key, decision in super().allocate(now).items():
            assert isinstance(decision, Limit)
            self.sent += 1
            decisions[key] = decision if self.sent % 2 else self._malformed(key, decision.limit_a)
        return decisions

    def _malformed(self, key: ConnectorKey, limit_a: float) -> Profile:
        station, connector = key
        session = self.sessions[key]
        period = [{"startPeriod": "0", "limit": f"{limit_a:.1f}"}]
        if self.site.station(station).ocpp == "2.0.1":
            return Profile({"evseId": connector, "chargingProfile": {
                "id": 700 + connector, "stackLevel": "1", "chargingProfilePurpose": "TxProfile",
                "chargingProfileKind": "Relative", "transactionId": session.transaction_id,
                "chargingSchedule": [{"id": 700 + connector, "chargingRateUnit": "A",
                                      "chargingSchedulePeriod": period}]}})
        return Profile({"connectorId": connector, "csChargingProfiles": {
            "chargingProfileId": 700 + connector, "stackLevel": "1", "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Relative", "transactionId": session.transaction_id,
            "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": period}}})


#: Each faulty controller with the checks its fault violates on the bundled catalogue.
FAULTS = {
    "OverAllocates": {"SITE-LIMIT"},
    "ReactsLate": {"SITE-LIMIT", "DR-RESPONSE", "REALLOCATE"},
    # nothing it sends takes effect: every check of what the site drew fails, and the EVs' needs go unanswered
    "MaxProfilePerConnector": {"SITE-LIMIT", "BREAKER", "PROFILE-VALID", "DR-RESPONSE", "NEEDS-ANSWERED",
                               "OFFLINE-SAFE"},
    "HandsOutFourAmps": {"MIN-CURRENT"},
    "NeverReallocates": {"REALLOCATE", "DR-RESPONSE"},
    "SendsMalformedFrames": {"PROFILE-VALID"},
}
