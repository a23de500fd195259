"""Managed charging, the seed article's middle architecture: hold the site limit, share it equally.

The controller reads the site meter at the grid connection and keeps the worst phase at
``limit_a - margin_a``. It does that with an integral loop on the meter (not with a model of the
site it could not have): the per-phase current budget for EVs grows by a fraction of the
headroom and shrinks by the whole overshoot. The budget is shared equally among running
sessions; a session that draws clearly less than its share (a tapering or full battery, a
1-phase car) keeps what it draws plus a little, and the rest goes to the others — the seed's
"as cars complete charging, the controller reallocates capacity to remaining vehicles".

IEC 61851-1 forbids offers between 0 and 6 A, so when the budget cannot give everyone 6 A, the
sessions that have received the least energy get 6 A and the others pause.

When the meter fails, it does what a product does (OFFLINE-SAFE). It stops trusting the meter when
the last read failed, when the last good reading is older than ``stale_after_s``, or when the
readings have not changed for ``frozen_after_s`` while an EV draws current (a real meter under a
live load never repeats every digit that long: noise, the energy register). Then it stops
integrating and holds a safe budget: the limit minus the margin minus the non-EV load of the last
reading that changed (its worst phase minus what the EVs drew then by their OCPP samples — summed
as if all on that phase, so with EVs spread over the phases this is a best estimate, not a bound),
and never more than the budget it had. Fresh, changing readings resume the loop from the held budget. Without a
single trusted reading while sessions run, the stations' failsafe default profile stays in force.
Sub-meter samples (``source`` "modbus") are not used: this controller reads the chargers over OCPP.
"""

from __future__ import annotations

import math

from controllers.api import ConnectorKey, Controller, Limit, MeterSample, Session, SiteConfig, SiteReading

MIN_CURRENT_A = 6.0  # IEC 61851-1


class EqualShare(Controller):
    name = "equal_share"
    period_s = 5.0
    meter_poll_s = 1.0
    meter_value_interval_s = 30.0
    margin_a = 1.0  # keep this far under the limit: meter noise and the EVs' lag
    # Fraction of the headroom added per second of control period (cutting is immediate): 0.5 per
    # default 5 s period. Per second, so that an installer's shorter period does not make the loop
    # more aggressive — only faster than its meter, if the meter is slow (see OSCILLATION).
    raise_per_s = 0.1
    saturation_a = 2.0  # drawing this much below the offer means the EV wants no more
    # ... and it wants more again only when it draws within this much of the offer. Kept below
    # saturation_a: an EV kept at drawn + saturation_a draws exactly that far under its offer, and
    # releasing it there made the limit swing full ↔ kept every sample (OSCILLATION).
    release_a = 1.0
    deadband_a = 2.0  # headroom below this is left alone: chasing it makes limits flap
    step_a = 1.0  # a share moves only by at least this much, unless the site is over its limit
    stale_after_s = 10.0  # a site reading older than this is not trusted (the host reads every meter_poll_s)
    # Unchanged values this long while EVs draw mean a frozen meter. Longer than stale_after_s: meters
    # refresh every 1–10 s, and one refreshing every 10 s must not look frozen between refreshes.
    frozen_after_s = 30.0
    drawing_a = 1.0  # an EV drawing at least this much [A] must show on the site meter

    def __init__(self, site: SiteConfig) -> None:
        super().__init__(site)
        self.limit_a = site.limit_a
        self.sessions: dict[ConnectorKey, Session] = {}
        self.samples: dict[ConnectorKey, MeterSample] = {}
        self.energy_wh: dict[ConnectorKey, float] = {}
        self.shares: dict[ConnectorKey, float] = {}
        self.saturated: set[ConnectorKey] = set()  # EVs taking clearly less than offered
        self.reading: SiteReading | None = None
        self.budget_a: float | None = None
        self.meter_fault: str | None = None  # why the meter was not trusted at the last allocation, if it was not
        self._meter_failed_at: float | None = None  # the last failed read since the last good one
        self._seen: tuple[float, float] | None = None  # at the last reading that changed: worst phase, EV draw [A]
        self._cut = False

    def failsafe_a(self, station_id: str) -> float | None:
        # A share every charger may take at once without the controller: what the stations fall
        # back to before their first allocation and if this controller disappears.
        n = max(len(self.site.stations), 1)
        share = math.floor(self.limit_a / n)
        return float(share) if share >= MIN_CURRENT_A else 0.0

    def _station_max_a(self, key: ConnectorKey) -> float:
        return self.site.station(key[0]).max_current_a

    # -- what the product hears -----------------------------------------------------------------

    def on_session_started(self, session: Session, now: float) -> None:
        key = (session.station_id, session.connector_id)
        self.sessions[key] = session
        self.energy_wh[key] = 0.0

    def on_session_ended(self, session: Session, energy_wh: float, now: float) -> None:
        key = (session.station_id, session.connector_id)
        for table in (self.sessions, self.samples, self.energy_wh, self.shares):
            table.pop(key, None)
        self.saturated.discard(key)

    def on_meter_sample(self, sample: MeterSample, now: float) -> None:
        key = (sample.station_id, sample.connector_id)
        if key not in self.sessions or sample.source != "ocpp":
            return
        self.samples[key] = sample
        if sample.energy_wh is not None:
            self.energy_wh[key] = sample.energy_wh - self.sessions[key].meter_start_wh

    def on_site_reading(self, reading: SiteReading, now: float) -> None:
        self.reading = reading
        self._meter_failed_at = None
        if self._seen is None or reading.changed_at is None or reading.changed_at >= reading.timestamp:
            self._seen = (max(reading.currents_a), self._ev_draw_a())

    def on_meter_unavailable(self, error: str, now: float) -> None:
        self._meter_failed_at = now

    def on_site_limit(self, limit_a: float, now: float) -> None:
        if self.budget_a is not None:
            self.budget_a += limit_a - self.limit_a
        self.limit_a = limit_a

    # -- the decision -----------------------------------------------------------------------------

    def allocate(self, now: float) -> dict[ConnectorKey, Limit]:
        if not self.sessions or self.reading is None:
            return {}  # no meter reading yet: the failsafe default profile stays in force
        self.meter_fault = self._meter_fault(self.reading, now)
        if self.meter_fault is not None and self.budget_a is None:
            return {}  # no budget was ever set from a trusted reading: the failsafe stays in force
        keeps = {}
        for key in self.sessions:
            keep = self._saturated(key)
            if keep is not None:
                keeps[key] = min(keep, self._station_max_a(key))
        if self.meter_fault is None:
            self._update_budget(keeps)
        else:
            self._hold_safe_budget()
        budget = max(self.budget_a or 0.0, 0.0)
        shares = self._share(budget, keeps)
        self.shares = shares
        return {key: Limit(limit_a) for key, limit_a in shares.items()}

    def _meter_fault(self, reading: SiteReading, now: float) -> str | None:
        if self._meter_failed_at is not None:
            return "unavailable"
        if now - reading.timestamp > self.stale_after_s:
            return "stale"
        if reading.changed_at is not None and now - reading.changed_at > self.frozen_after_s and any(
                (sample.max_current_a or 0.0) >= self.drawing_a for sample in self.samples.values()):
            return "frozen"
        return None

    def _ev_draw_a(self) -> float:
        """What the running sessions draw by their last OCPP samples [A, worst phase of each, summed]."""
        return sum(sample.max_current_a or 0.0 for sample in self.samples.values())

    def _hold_safe_budget(self) -> None:
        assert self.budget_a is not None and self._seen is not None
        worst_a, ev_draw_a = self._seen
        non_ev_a = max(worst_a - ev_draw_a, 0.0)
        cap = sum(self._station_max_a(k) for k in self.sessions)
        held = max(0.0, min(self.budget_a, self.limit_a - self.margin_a - non_ev_a, cap))
        self._cut = held < self.budget_a
        self.budget_a = held

    def _update_budget(self, keeps: dict[ConnectorKey, float]) -> None:
        assert self.reading is not None
        cap = sum(self._station_max_a(k) for k in self.sessions)
        self._cut = False
        worst_a = max(self.reading.currents_a)
        error_a = self.limit_a - self.margin_a - worst_a
        # What the EVs can be drawing now: their shares, except what saturated EVs leave unused.
        # (A keep above the share is from a sample older than a cut: the EV cannot draw more than its share.)
        promised = sum(min(keeps.get(k, math.inf), self.shares.get(k, 0.0)) for k in self.sessions)
        if self.budget_a is None:
            self.budget_a = promised + error_a
        elif error_a < 0:
            self.budget_a += error_a
            self._cut = True
        elif error_a > self.deadband_a:
            self.budget_a += min(self.raise_per_s * self.period_s, 1.0) * error_a
        # Anti-windup: never promise more than can be drawn now plus the measured headroom.
        self.budget_a = max(0.0, min(self.budget_a, cap, promised + max(error_a, 0.0)))

    def _saturated(self, key: ConnectorKey) -> float | None:
        """What an EV that takes clearly less than offered should keep (None: it wants more)."""
        sample = self.samples.get(key)
        share = self.shares.get(key)
        if sample is None or share is None or sample.max_current_a is None or sample.offered_a is None:
            return None
        if sample.offered_a + 0.05 < share:
            return None  # its sample predates its current share: no evidence yet
        # Hysteresis: entering saturation takes a clear gap, leaving it takes drawing near the offer.
        gap_a = self.release_a if key in self.saturated else self.saturation_a
        if sample.max_current_a < sample.offered_a - gap_a:
            self.saturated.add(key)
            return max(sample.max_current_a + self.saturation_a, MIN_CURRENT_A)
        self.saturated.discard(key)
        return None

    def _share(self, budget_a: float, keeps: dict[ConnectorKey, float]) -> dict[ConnectorKey, float]:
        return self._hold_steady(self._fill_equally(list(self.sessions), budget_a, keeps))

    def _hold_steady(self, shares: dict[ConnectorKey, float]) -> dict[ConnectorKey, float]:
        """The new shares, each kept at its previous value when it moved by less than a step."""
        held = {k: self._hysteresis(k, v) for k, v in shares.items()}
        # Each share may be held back by less than a step, but not all of them together by more: seven cars kept
        # 0.4 A under their share leave 2.8 A of the site unused for as long as the budget stays (REALLOCATE).
        if sum(shares.values()) - sum(held.values()) >= self.step_a:
            return shares
        return held

    def _fill_equally(self, keys: list[ConnectorKey], budget_a: float,
                      keeps: dict[ConnectorKey, float]) -> dict[ConnectorKey, float]:
        """Share ``budget_a`` [A per phase] among the sessions ``keys``: 0 or >= 6 A each, never above the budget."""
        keys = sorted(keys, key=lambda k: (self.energy_wh.get(k, 0.0), self.sessions[k].started_at))
        fixed = {k: v for k, v in keeps.items() if k in keys}
        # Water-filling: saturated EVs keep what they use, the others split the rest equally.
        while True:
            free = [k for k in keys if k not in fixed]
            if not free:
                break
            rest = budget_a - sum(fixed.values())
            share = rest / len(free)
            capped = [k for k in free if self._station_max_a(k) <= share]
            if not capped:
                break
            for key in capped:
                fixed[key] = self._station_max_a(key)
        free = [k for k in keys if k not in fixed]
        rest = max(budget_a - sum(fixed.values()), 0.0)
        shares = dict(fixed)
        if free:
            share = rest / len(free)
            if share >= MIN_CURRENT_A:
                shares.update({k: share for k in free})
            else:
                # Not enough for everyone: 6 A each to those with the least energy so far.
                fits = int(rest // MIN_CURRENT_A)
                for i, key in enumerate(free):
                    shares[key] = MIN_CURRENT_A if i < fits else 0.0
        total = sum(shares.values())
        if total > budget_a + 1e-9 and total > 0:
            # Saturated EVs' keep-amounts alone exceed a shrunken budget: scale them down, but
            # never into (0, 6) A.
            factor = budget_a / total
            shares = {k: (v * factor if v * factor >= MIN_CURRENT_A else 0.0) for k, v in shares.items()}
        return shares

    def _hysteresis(self, key: ConnectorKey, limit_a: float) -> float:
        # Overshoot is cut at once (safety); otherwise a share moves only by a meaningful step,
        # so that limits do not flap (OSCILLATION; SmartEVSE-3#123, evcc#19166).
        previous = self.shares.get(key)
        if previous is None or (self._cut and limit_a < previous) or abs(limit_a - previous) >= self.step_a:
            return limit_a
        return previous  # shares are 0 or >= 6 A, so a change under one step never starts or pauses a car
