"""The site's PV system: a deterministic clear-sky-like daily curve, scaled by the sky.

This module owns how much the PV inverter feeds in at a moment of a clear day, and the forecast a
controller may be given of it. No I/O, no clock, no latitude: a planner gives the PV system's
peak and either the hours of daylight (a bell) or a daily profile.

- Bell: ``peak_w · sin²(π · (t − sunrise) / (sunset − sunrise))`` between sunrise and sunset, 0 at
  night. Its daily energy is half of peak × daylight: 10 kWp over 04:00–19:30 gives 77.5 kWh,
  near pvlib's clear-sky 70.6 kWh for 10 kWp in Berlin on 21 June (LIBRARIES.md).
- Profile: ``[(second of day, fraction of peak), ...]`` sorted, linear between points, 0 before the
  first and after the last (give 0-valued end points for a smooth dawn and dusk).

Clouds are the caller's: the runner multiplies by the factor of the last ``cloud`` event. The
forecast a controller gets (:meth:`PVSystem.forecast`) is the clear-sky curve — a weather service
that did not see the clouds coming, which is what forecasts are on the day.
Times of day are UTC, like the scenario's.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

from controllers.api import PowerForecast

__all__ = ["PVSystem"]

_SECONDS_PER_DAY = 86_400.0
_FORECAST_PERIOD_S = 900.0  # quarter-hours, as day-ahead markets and PV forecast services publish
_FORECAST_SAMPLES = 15  # points averaged per quarter-hour (one a minute)


class PVSystem:
    """PV output at a moment of a clear day [W] (see the module docstring)."""

    __slots__ = ("_times", "peak_w", "profile", "sunrise_s", "sunset_s")

    def __init__(self, peak_w: float, sunrise_s: float = 6 * 3600.0, sunset_s: float = 20 * 3600.0,
                 profile: Sequence[tuple[float, float]] | None = None) -> None:
        if not (math.isfinite(peak_w) and peak_w >= 0):
            raise ValueError(f"peak_w must be a finite number >= 0, got {peak_w!r}")
        if profile is None and not 0 <= sunrise_s < sunset_s <= _SECONDS_PER_DAY:
            raise ValueError(f"need 0 <= sunrise_s < sunset_s <= 86400, got {sunrise_s!r} and {sunset_s!r}")
        self.peak_w = peak_w
        self.sunrise_s = sunrise_s
        self.sunset_s = sunset_s
        self.profile = tuple(profile) if profile else None
        self._times = tuple(point[0] for point in self.profile) if self.profile else ()

    def clear_sky_w(self, epoch: float) -> float:
        """[W] fed in at ``epoch`` (Unix seconds) under a clear sky."""
        second = epoch % _SECONDS_PER_DAY
        profile = self.profile
        if profile is None:
            if not self.sunrise_s < second < self.sunset_s:
                return 0.0
            x = (second - self.sunrise_s) / (self.sunset_s - self.sunrise_s)
            return self.peak_w * math.sin(math.pi * x) ** 2
        i = bisect_right(self._times, second)
        if i == 0 or (i == len(profile) and second > profile[-1][0]):
            return 0.0
        t0, f0 = profile[i - 1]
        if i == len(profile):
            return self.peak_w * f0
        t1, f1 = profile[i]
        return self.peak_w * (f0 + (f1 - f0) * (second - t0) / (t1 - t0))

    def forecast(self, start_epoch: float, end_epoch: float) -> tuple[PowerForecast, ...]:
        """Clear-sky mean power per quarter-hour (aligned to the hour) covering ``start_epoch``..``end_epoch``."""
        if self.peak_w == 0:
            return ()
        periods = []
        t = math.floor(start_epoch / _FORECAST_PERIOD_S) * _FORECAST_PERIOD_S
        step = _FORECAST_PERIOD_S / _FORECAST_SAMPLES
        while t < end_epoch:
            mean_w = sum(self.clear_sky_w(t + (k + 0.5) * step) for k in range(_FORECAST_SAMPLES)) / _FORECAST_SAMPLES
            periods.append(PowerForecast(t, t + _FORECAST_PERIOD_S, round(mean_w, 1)))
            t += _FORECAST_PERIOD_S
        return tuple(periods)
