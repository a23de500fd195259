"""Departure-aware managed charging: hold the site limit like ``equal_share``, serve the earliest departure first.

The site side is :class:`~controllers.equal_share.EqualShare`'s: the same integral loop on the site
meter, the same safety (cut at once on overshoot), the same 6 A rule and hysteresis. Only the
sharing differs. ISO 15118 EVs say when they leave and how much energy they want
(NotifyEVChargingNeeds, OCPP 2.0.1 K15–K17); this controller gives the budget to those sessions
one after the other, earliest departure first (needs without a departure after those with one,
then by arrival): each gets what it can use — min(station max, the EV's max current from its
needs), or what a saturated EV draws plus a little — and the last one what is left, if that is
at least 6 A (and at least the EV's stated minimum), else nothing (IEC 61851-1).

What is left after them is shared equally, as ``equal_share`` does, among the sessions without
needs. A session whose energy request is met (the energy it took since stating its needs
reaches the request) drops to the back: it shares what is left after everyone else.
"""

from __future__ import annotations

import math

from controllers.api import ChargingNeeds, ConnectorKey, Session, SiteConfig
from controllers.equal_share import MIN_CURRENT_A, EqualShare


class EarliestDeadline(EqualShare):
    name = "earliest_deadline"

    def __init__(self, site: SiteConfig) -> None:
        super().__init__(site)
        self.needs: dict[ConnectorKey, ChargingNeeds] = {}
        self.energy_at_needs_wh: dict[ConnectorKey, float] = {}  # session energy when the needs were stated

    def on_charging_needs(self, needs: ChargingNeeds, now: float) -> None:
        key = (needs.station_id, needs.connector_id)
        self.needs[key] = needs
        self.energy_at_needs_wh[key] = self.energy_wh.get(key, 0.0)

    def on_session_ended(self, session: Session, energy_wh: float, now: float) -> None:
        super().on_session_ended(session, energy_wh, now)
        key = (session.station_id, session.connector_id)
        self.needs.pop(key, None)
        self.energy_at_needs_wh.pop(key, None)

    def _met(self, key: ConnectorKey) -> bool:
        needs = self.needs[key]
        if needs.energy_wh is None:
            return False
        return self.energy_wh.get(key, 0.0) - self.energy_at_needs_wh.get(key, 0.0) >= needs.energy_wh

    def _usable_a(self, key: ConnectorKey, keeps: dict[ConnectorKey, float]) -> float:
        if key in keeps:
            return keeps[key]
        ev_max_a = self.needs[key].max_current_a
        return min(self._station_max_a(key), math.inf if ev_max_a is None else ev_max_a)

    def _share(self, budget_a: float, keeps: dict[ConnectorKey, float]) -> dict[ConnectorKey, float]:
        with_needs = [k for k in self.sessions if k in self.needs]
        queue = sorted((k for k in with_needs if not self._met(k)), key=self._deadline_order)
        shares: dict[ConnectorKey, float] = {}
        rest = budget_a
        for key in queue:
            grant = min(self._usable_a(key, keeps), rest)
            if grant < max(MIN_CURRENT_A, self.needs[key].min_current_a or 0.0):
                grant = 0.0
            shares[key] = grant
            rest -= grant
        without_needs = [k for k in self.sessions if k not in self.needs]
        shares.update(self._fill_equally(without_needs, rest, keeps))
        rest -= sum(shares[k] for k in without_needs)
        met = [k for k in with_needs if k not in shares]
        shares.update(self._fill_equally(met, rest, keeps))
        return self._hold_steady(shares)

    def _deadline_order(self, key: ConnectorKey) -> tuple[float, float]:
        departure = self.needs[key].departure
        return (math.inf if departure is None else departure, self.sessions[key].started_at)
