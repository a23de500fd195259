"""An AC electric vehicle as the charging station sees it: battery, on-board charger, pilot response.

This module owns the EV's physics and nothing else: how much current per phase it draws for the
offer (the pilot PWM limit) the station makes, how fast it follows a changed offer, how its battery
fills and when it stops. No I/O, no clock: the caller passes the time and the step.

    ev = EV(EVSpec(battery_kwh=60, initial_soc=0.2, target_soc=0.8))
    ev.offer(16.0, now_s=0.0)            # the station's PWM now offers 16 A per phase
    current_a = ev.step(now_s, dt_s)     # per-phase current drawn during [now_s, now_s + dt_s)

The rules, and where they come from:

- An offer in (0, min_current_a) is a pause: IEC 61851-1 Annex A maps pilot duty cycles to at
  least 6 A; an AC EV cannot charge below it. An offer of 0 (or less) is a pause too.
- The EV follows a changed offer after ``response_lag_s``, both down and up. IEC 61851-1 Annex A
  gives the EV up to 5 s to adapt to a new duty cycle; EVerest sees up to ~6 s more on some cars
  (SMART_CHARGING.md §2). During the lag an EV whose offer was cut keeps drawing the old current:
  that overdraw is what the bench's measured checks (STATION-LIMIT, SITE-LIMIT) exist to see.
- Above ``taper_knee_soc`` the battery management accepts a current falling linearly to
  ``min_current_a`` at SoC 1.0: a linear stand-in for the constant-voltage phase of CC-CV Li-ion
  charging, the same two-stage shape as acnportal's ``Linear2StageBattery``.
- Grid energy per step is I × U × phases × dt (unity power factor, balanced phases);
  ``efficiency`` of it reaches the battery.
- A basic IEC 61851 EV says nothing about itself beyond drawing current. An ISO 15118 EV
  (``iso15118``) also tells the station its charging needs at session start — departure time,
  energy still wanted, its minimum and maximum current and, when bidirectional, its discharge
  limit and minimum SoC (ISO 15118-2 ChargeParameterDiscovery, which an OCPP 2.0.1 station
  forwards as NotifyEVChargingNeeds) — and renegotiates when the driver changes them. It follows
  the schedule it is given the same way: through the limit the station imposes on it.

``step`` is the hot path (once per second per EV, thousands of EVs): it touches only preset
attributes, allocates nothing but the floats Python must, and the offer queue only changes when
an offer is made or falls due.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["ChargingNeeds", "EVSpec", "EV"]

# An offer falls due at "offer time + lag". Times arrive as floats summed from steps
# (0.1 + 0.1 + ... ), so an offer due at 5.0 s would otherwise be missed by the step that
# starts at 4.999999999 s and applied one step late.
_TIME_EPSILON_S = 1e-9

_SECONDS_PER_HOUR = 3600.0
_WATTS_PER_KILOWATT = 1000.0


@dataclass(frozen=True, slots=True)
class EVSpec:
    """What an EV is, at plug-in. SoCs are fractions 0..1; currents per phase [A].

    ``target_soc`` at or below ``initial_soc`` is a car that arrives full enough: it is done at
    plug-in and requests 0 kWh.
    """

    battery_kwh: float
    initial_soc: float
    target_soc: float
    max_current_a: float = 32.0  # on-board charger limit per phase
    phases: int = 3  # 1 or 3; a 1-phase EV draws on the station's L1 only
    min_current_a: float = 6.0  # IEC 61851-1 Annex A: no AC charging below 6 A
    taper_knee_soc: float = 0.8  # CC-CV: above this SoC accepted current falls linearly
    response_lag_s: float = 2.0  # time to follow a changed offer (IEC 61851-1 allows up to 5 s)
    voltage_v: float = 230.0  # phase-to-neutral
    efficiency: float = 1.0  # fraction of grid energy stored in the battery
    iso15118: bool = False  # tells its needs (departure, energy, current bounds) at session start
    departure_s: float | None = None  # [s] scenario time the driver leaves, if the EV knows it
    discharge_max_current_a: float = 0.0  # per phase when discharging (V2G); 0 = not bidirectional
    min_soc: float = 0.0  # never discharged below this

    def __post_init__(self) -> None:
        # A scenario loader validates first; this is the second net, so a wrong EV fails at
        # construction with the field's name rather than as a strange current hours into a run.
        problems = []
        if not self.battery_kwh > 0:
            problems.append(f"battery_kwh must be > 0, got {self.battery_kwh!r}")
        for name in ("initial_soc", "target_soc", "taper_knee_soc"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be within 0..1, got {value!r}")
        if self.phases not in (1, 3):
            problems.append(f"phases must be 1 or 3, got {self.phases!r}")
        if not self.min_current_a > 0:
            problems.append(f"min_current_a must be > 0, got {self.min_current_a!r}")
        if not self.max_current_a >= self.min_current_a:
            problems.append(
                f"max_current_a must be >= min_current_a ({self.min_current_a!r}), "
                f"got {self.max_current_a!r}"
            )
        if not self.response_lag_s >= 0:
            problems.append(f"response_lag_s must be >= 0, got {self.response_lag_s!r}")
        if not self.voltage_v > 0:
            problems.append(f"voltage_v must be > 0, got {self.voltage_v!r}")
        if not 0.0 < self.efficiency <= 1.0:
            problems.append(f"efficiency must be within (0, 1], got {self.efficiency!r}")
        if not self.discharge_max_current_a >= 0:
            problems.append(f"discharge_max_current_a must be >= 0, got {self.discharge_max_current_a!r}")
        if not 0.0 <= self.min_soc <= 1.0:
            problems.append(f"min_soc must be within 0..1, got {self.min_soc!r}")
        if problems:
            raise ValueError("invalid EVSpec: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class ChargingNeeds:
    """What an ISO 15118 EV tells the station (ChargeParameterDiscovery; OCPP 2.0.1 K15).

    ``departure_s`` scenario seconds (None: the driver gave none); ``energy_wh`` grid energy still
    wanted to reach ``target_soc``; currents per phase [A]; ``max_voltage_v`` phase-to-neutral.
    """

    departure_s: float | None
    energy_wh: float
    min_current_a: float
    max_current_a: float
    phases: int
    max_voltage_v: float
    discharge_max_current_a: float
    min_soc: float
    target_soc: float


class EV:
    """One plugged-in AC EV.

    Public state, read freely, written only by the EV:
      ``soc``        state of charge now, fraction 0..1
      ``energy_kwh`` energy drawn from the grid since plug-in [kWh]
      ``current_a``  per-phase current drawn during the latest step [A]

    Before the first offer the EV sees no PWM (IEC 61851-1 state B) and draws nothing.
    """

    __slots__ = (
        "spec",
        "soc",
        "energy_kwh",
        "current_a",
        "_pending",
        "_last_offer_s",
        "_limit_a",
        "_done",
        "_requested_kwh",
        "_kwh_per_amp_second",
        "_soc_per_kwh",
        "_taper_slope_a_per_soc",
        "_departure_s",
        "_target_soc",
    )

    def __init__(self, spec: EVSpec) -> None:
        self.spec = spec
        self.soc = spec.initial_soc
        self.energy_kwh = 0.0
        self.current_a = 0.0
        # (effective_time_s, limit_a) in time order: several offers can be in flight within one lag.
        self._pending: deque[tuple[float, float]] = deque()
        self._last_offer_s = float("-inf")
        self._limit_a = 0.0  # the offer the EV follows now
        self._departure_s = spec.departure_s
        self._target_soc = spec.target_soc
        self._requested_kwh = max(0.0, spec.target_soc - spec.initial_soc) * spec.battery_kwh / spec.efficiency
        self._done = self._requested_kwh <= 0.0
        # Constants of the hot path, computed once.
        self._kwh_per_amp_second = (
            spec.voltage_v * spec.phases / (_WATTS_PER_KILOWATT * _SECONDS_PER_HOUR)
        )
        self._soc_per_kwh = spec.efficiency / spec.battery_kwh
        knee_width = 1.0 - spec.taper_knee_soc
        # A knee at 1.0 means no taper at all (and no division by zero).
        self._taper_slope_a_per_soc = (
            (spec.max_current_a - spec.min_current_a) / knee_width if knee_width > 0 else 0.0
        )

    # -- inputs ---------------------------------------------------------------------------------

    def offer(self, limit_a: float, now_s: float) -> None:
        """The station's offer changed at ``now_s`` to ``limit_a`` per phase [A] (0 = pause).

        The EV follows it ``response_lag_s`` later, whether it is lower (the EV overdraws
        meanwhile) or higher (the EV ramps late). Offers must come in time order; a negative or
        NaN limit is read as 0, since a pilot cannot offer less than nothing.
        """
        if now_s < self._last_offer_s:
            raise ValueError(
                f"offers must come in time order: {now_s!r} s after {self._last_offer_s!r} s"
            )
        self._last_offer_s = now_s
        if not limit_a > 0.0:  # also catches NaN
            limit_a = 0.0
        self._pending.append((now_s + self.spec.response_lag_s, limit_a))

    def step(self, now_s: float, dt_s: float, supplied: bool = True) -> float:
        """Advance from ``now_s`` to ``now_s + dt_s``; return the per-phase current drawn [A].

        The current is constant over the step and set by the offer in force at ``now_s``:
        0 when not ``supplied`` (no power at the socket), when done, or when that offer is below
        ``min_current_a`` (IEC 61851-1: a pause); else min(offer, max_current_a, taper limit).
        The step that reaches ``target_soc`` is cut so that it lands exactly on it, and the
        current returned for it is the average over the step.
        """
        if not dt_s > 0.0:
            raise ValueError(f"dt_s must be > 0, got {dt_s!r}")
        pending = self._pending
        if pending:
            due_s = now_s + _TIME_EPSILON_S
            while pending and pending[0][0] <= due_s:
                self._limit_a = pending.popleft()[1]

        spec = self.spec
        current_a = self._limit_a
        if not supplied or self._done or current_a < spec.min_current_a:
            self.current_a = 0.0
            return 0.0
        if current_a > spec.max_current_a:
            current_a = spec.max_current_a
        soc = self.soc
        if soc > spec.taper_knee_soc:
            taper_a = spec.max_current_a - self._taper_slope_a_per_soc * (soc - spec.taper_knee_soc)
            if current_a > taper_a:
                current_a = taper_a

        # Energy is the state; SoC is derived from it, so the two never drift apart and the
        # energy drawn can never exceed what was requested.
        step_kwh = current_a * dt_s * self._kwh_per_amp_second
        remaining_kwh = self._requested_kwh - self.energy_kwh
        if step_kwh >= remaining_kwh:
            current_a = remaining_kwh / (dt_s * self._kwh_per_amp_second)
            self.energy_kwh = self._requested_kwh
            self.soc = self._target_soc
            self._done = True
        else:
            self.energy_kwh += step_kwh
            soc = spec.initial_soc + self.energy_kwh * self._soc_per_kwh
            # Rounding must not show a SoC past the target before the EV is done.
            self.soc = soc if soc < self._target_soc else self._target_soc
        self.current_a = current_a
        return current_a

    # -- derived --------------------------------------------------------------------------------

    def needs(self) -> ChargingNeeds | None:
        """The charging needs an ISO 15118 EV states now; None for a basic IEC 61851 EV."""
        spec = self.spec
        if not spec.iso15118:
            return None
        return ChargingNeeds(
            departure_s=self._departure_s,
            energy_wh=max(self._requested_kwh - self.energy_kwh, 0.0) * _WATTS_PER_KILOWATT,
            min_current_a=spec.min_current_a,
            max_current_a=spec.max_current_a,
            phases=spec.phases,
            max_voltage_v=spec.voltage_v,
            discharge_max_current_a=spec.discharge_max_current_a,
            min_soc=spec.min_soc,
            target_soc=self._target_soc,
        )

    def change_needs(self, departure_s: float | None = None, target_soc: float | None = None) -> ChargingNeeds | None:
        """The driver changed the departure time or the wanted SoC mid-session (ISO 15118 renegotiation).

        Returns the new needs (None for a basic EV, which keeps its target: it has no way to say
        it changed). A target at or below the SoC reached makes the EV done; a higher one makes a
        done EV draw again.
        """
        if not self.spec.iso15118:
            return None
        if departure_s is not None:
            self._departure_s = departure_s
        if target_soc is not None:
            if not 0.0 <= target_soc <= 1.0:
                raise ValueError(f"target_soc must be within 0..1, got {target_soc!r}")
            spec = self.spec
            self._target_soc = max(target_soc, spec.initial_soc)
            self._requested_kwh = (self._target_soc - spec.initial_soc) * spec.battery_kwh / spec.efficiency
            if self.energy_kwh >= self._requested_kwh:
                self._requested_kwh = self.energy_kwh
                self._done = True
            else:
                self._done = False
        return self.needs()

    @property
    def done(self) -> bool:
        """The battery reached ``target_soc``; the EV draws nothing more."""
        return self._done

    @property
    def requested_kwh(self) -> float:
        """Grid energy needed from plug-in to target: (target − initial) × battery / efficiency [kWh]."""
        return self._requested_kwh

    @property
    def power_w(self) -> float:
        """Power drawn during the latest step: current × voltage × phases [W] (unity power factor)."""
        return self.current_a * self.spec.voltage_v * self.spec.phases

