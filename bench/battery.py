"""The site's stationary battery: what its inverter does with a power setpoint, and its state of charge.

This module owns the battery's physics and nothing else: no I/O, no clock. The inverter follows
the setpoint it holds (written by the controller over Modbus, :mod:`emulators.meter`) within its
power limits and the state-of-charge window, every step; without a setpoint it idles at 0 W.

    battery = StationaryBattery(capacity_kwh=100, max_charge_w=50_000, max_discharge_w=50_000)
    power_w = battery.step(setpoint_w=20_000, dt_s=1.0)   # AC power, + charging, − discharging

Losses are one-way ``efficiency``: charging at P stores P·η, discharging at P takes P/η out of the
cells (a round trip keeps η² — 0.95 one way is ~90 % round trip, what lithium-ion storage systems
state). SoC is stored energy over capacity. Energy counters are on the AC side, as the inverter's
meter counts them: ``charged_kwh`` taken from the site, ``discharged_kwh`` given to it.
"""

from __future__ import annotations

import math

__all__ = ["StationaryBattery"]

_JOULES_PER_KWH = 3.6e6


class StationaryBattery:
    """A battery behind its inverter (see the module docstring). Raises ValueError on impossible parameters."""

    __slots__ = (
        "capacity_kwh",
        "charged_kwh",
        "discharged_kwh",
        "efficiency",
        "max_charge_w",
        "max_discharge_w",
        "max_soc",
        "min_soc",
        "power_w",
        "stored_kwh",
    )

    def __init__(self, capacity_kwh: float, max_charge_w: float, max_discharge_w: float, efficiency: float = 0.95,
                 soc: float = 0.5, min_soc: float = 0.1, max_soc: float = 0.95) -> None:
        for name, value in (("capacity_kwh", capacity_kwh), ("max_charge_w", max_charge_w),
                            ("max_discharge_w", max_discharge_w)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not capacity_kwh > 0:
            raise ValueError(f"capacity_kwh must be > 0, got {capacity_kwh!r}")
        if not 0 < efficiency <= 1:
            raise ValueError(f"efficiency must be in (0, 1], got {efficiency!r}")
        if not 0 <= min_soc < max_soc <= 1:
            raise ValueError(f"need 0 <= min_soc < max_soc <= 1, got {min_soc!r} and {max_soc!r}")
        if not 0 <= soc <= 1:
            raise ValueError(f"soc must be in [0, 1], got {soc!r}")
        self.capacity_kwh = capacity_kwh
        self.max_charge_w = max_charge_w
        self.max_discharge_w = max_discharge_w
        self.efficiency = efficiency
        self.min_soc = min_soc
        self.max_soc = max_soc
        self.stored_kwh = soc * capacity_kwh
        self.power_w = 0.0  # AC power of the last step, + charging
        self.charged_kwh = 0.0
        self.discharged_kwh = 0.0

    @property
    def soc(self) -> float:
        """State of charge 0..1."""
        return self.stored_kwh / self.capacity_kwh

    def step(self, setpoint_w: float, dt_s: float) -> float:
        """Run for ``dt_s`` [s] towards ``setpoint_w`` [W, + charging]; the AC power it ran at.

        The power is clamped to the inverter's limits and to what keeps SoC inside
        ``min_soc``..``max_soc`` by the end of the step (a battery outside its window, e.g. from
        its initial SoC, only moves back towards it). A non-finite setpoint idles.
        """
        if not dt_s > 0 or not math.isfinite(setpoint_w):
            self.power_w = 0.0
            return 0.0
        eta = self.efficiency
        if setpoint_w > 0:
            room_kwh = max(self.max_soc * self.capacity_kwh - self.stored_kwh, 0.0)
            power_w = min(setpoint_w, self.max_charge_w, room_kwh * _JOULES_PER_KWH / (dt_s * eta))
            energy_kwh = power_w * dt_s / _JOULES_PER_KWH
            self.stored_kwh += energy_kwh * eta
            self.charged_kwh += energy_kwh
        elif setpoint_w < 0:
            available_kwh = max(self.stored_kwh - self.min_soc * self.capacity_kwh, 0.0)
            power_w = -min(-setpoint_w, self.max_discharge_w, available_kwh * eta * _JOULES_PER_KWH / dt_s)
            energy_kwh = -power_w * dt_s / _JOULES_PER_KWH
            self.stored_kwh -= energy_kwh / eta
            self.discharged_kwh += energy_kwh
        else:
            power_w = 0.0
        self.power_w = power_w
        return power_w
