"""The site's tariff: the import price at any moment, what of it is known when, and its schedule.

This module owns the money side of the grid connection and nothing else (no I/O, no clock): the
import energy price — time-of-use (a daily step profile) or day-ahead (per-day lists of hourly or
quarter-hourly prices) —, the export price and the demand charge, and which prices a controller
can know at a given moment.

When prices are known (what :meth:`Tariff.known_prices` gives a controller):

- time-of-use is the supply contract: known in advance for as far as anyone asks;
- day-ahead prices for day D (UTC, counted from the date of ``start_epoch``) are published on day
  D − 1 at ``publish_s`` (default 12:00 UTC: the EPEX SPOT day-ahead auction closes at 12:00 CET and
  publishes results about 12:45 CET, i.e. shortly before 12:00 UTC in winter). Day 0's prices are
  known from the start (they were published the day before the run), and the next day's too when
  the run starts after its publication.

The demand charge is per kW of the billing period's highest 15-minute average import
(SMART_CHARGING.md §2); the checks compute it from the trace (:mod:`bench.checks.metrics`).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

from controllers.api import PricePeriod

__all__ = ["Tariff"]

_SECONDS_PER_DAY = 86_400.0
DEFAULT_PUBLISH_S = 12 * 3600.0


class Tariff:
    """Prices of one site (see the module docstring). Exactly one of ``time_of_use`` and ``day_ahead``.

    ``time_of_use``: ``[(second of day UTC, price per kWh), ...]`` sorted; each price holds until the
    next and the last wraps past midnight. ``day_ahead``: one list per day from ``start_epoch``'s UTC
    date, of 24 (hourly) or 96 (quarter-hourly) prices per kWh.
    """

    __slots__ = (
        "_tou_times",
        "currency",
        "day0_epoch",
        "day_ahead",
        "demand_charge_per_kw",
        "export_price_per_kwh",
        "publish_s",
        "start_epoch",
        "time_of_use",
    )

    def __init__(self, start_epoch: float, *, time_of_use: Sequence[tuple[float, float]] | None = None,
                 day_ahead: Sequence[Sequence[float]] | None = None, publish_s: float = DEFAULT_PUBLISH_S,
                 export_price_per_kwh: float = 0.0, demand_charge_per_kw: float = 0.0, currency: str = "EUR") -> None:
        if (time_of_use is None) == (day_ahead is None):
            raise ValueError("give exactly one of time_of_use and day_ahead")
        if time_of_use is not None and not time_of_use:
            raise ValueError("time_of_use needs at least one step")
        for i, day in enumerate(day_ahead or ()):
            if len(day) not in (24, 96):
                raise ValueError(f"day_ahead[{i}] has {len(day)} prices; expected 24 (hourly) or 96 (quarter-hourly)")
        self.start_epoch = start_epoch
        self.day0_epoch = math.floor(start_epoch / _SECONDS_PER_DAY) * _SECONDS_PER_DAY
        self.currency = currency
        self.export_price_per_kwh = export_price_per_kwh
        self.demand_charge_per_kw = demand_charge_per_kw
        self.time_of_use = tuple(time_of_use) if time_of_use is not None else None
        self.day_ahead = tuple(tuple(day) for day in day_ahead) if day_ahead is not None else None
        self.publish_s = publish_s
        self._tou_times = tuple(step[0] for step in self.time_of_use) if self.time_of_use else ()

    def import_price(self, epoch: float) -> float | None:
        """Price per kWh of energy imported at ``epoch``; None beyond the day-ahead prices given."""
        if self.time_of_use is not None:
            i = bisect_right(self._tou_times, epoch % _SECONDS_PER_DAY) - 1
            return self.time_of_use[i][1]  # -1: before the first step, yesterday's last holds
        assert self.day_ahead is not None
        day, second = divmod(epoch - self.day0_epoch, _SECONDS_PER_DAY)
        if not 0 <= day < len(self.day_ahead):
            return None
        prices = self.day_ahead[int(day)]
        return prices[min(int(second // (_SECONDS_PER_DAY / len(prices))), len(prices) - 1)]

    def schedule(self, start_epoch: float, end_epoch: float) -> tuple[PricePeriod, ...]:
        """Every price in force over ``start_epoch``..``end_epoch``, equal neighbours merged (day-ahead: as far as given)."""
        periods: list[PricePeriod] = []
        t = start_epoch
        while t < end_epoch:
            price = self.import_price(t)
            if price is None:
                break
            end = min(self._next_change(t), end_epoch)
            if periods and periods[-1].price_per_kwh == price and periods[-1].end == t:
                periods[-1] = PricePeriod(periods[-1].start, end, price)
            else:
                periods.append(PricePeriod(t, end, price))
            t = end
        return tuple(periods)

    def _next_change(self, epoch: float) -> float:
        """The first moment after ``epoch`` at which the price may change."""
        if self.time_of_use is not None:
            day = math.floor(epoch / _SECONDS_PER_DAY) * _SECONDS_PER_DAY
            second = epoch - day
            later = [t for t in self._tou_times if t > second]
            return day + (later[0] if later else _SECONDS_PER_DAY)
        assert self.day_ahead is not None
        day_index = int((epoch - self.day0_epoch) // _SECONDS_PER_DAY)
        length = _SECONDS_PER_DAY / len(self.day_ahead[day_index])
        return self.day0_epoch + (math.floor((epoch - self.day0_epoch) / length) + 1) * length

    def published_until(self, epoch: float) -> float:
        """The end of the prices a controller can know at ``epoch`` (epoch seconds; inf for time-of-use)."""
        if self.day_ahead is None:
            return math.inf
        days = 1  # day 0 is published before the run
        while days < len(self.day_ahead) and self.publication(days) <= epoch:
            days += 1
        return self.day0_epoch + days * _SECONDS_PER_DAY

    def publication(self, day: int) -> float:
        """When day ``day``'s day-ahead prices are published (epoch seconds): the day before at ``publish_s``."""
        return self.day0_epoch + (day - 1) * _SECONDS_PER_DAY + self.publish_s

    def publications(self, start_epoch: float, end_epoch: float) -> list[float]:
        """The moments in ``start_epoch``..``end_epoch`` when more prices become known (day-ahead only)."""
        if self.day_ahead is None:
            return []
        return [t for t in (self.publication(day) for day in range(1, len(self.day_ahead)))
                if start_epoch < t <= end_epoch]

    def known_prices(self, epoch: float, horizon_end: float) -> tuple[PricePeriod, ...]:
        """The prices a controller knows at ``epoch``, from then to ``horizon_end`` or the last one published."""
        return self.schedule(epoch, min(horizon_end, self.published_until(epoch)))
