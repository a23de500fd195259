"""A charging station's hardware and state, independent of the OCPP version it speaks.

This module owns what is physically true of one station: its connectors, which EV is plugged
into which, the transaction running on each, the energy register, the profile engine that turns
charging profiles into a limit, and the offer (the pilot PWM current) each connector makes. It
does no I/O; the protocol adapters (:mod:`emulators.ocpp16`, :mod:`emulators.ocpp201`) translate
OCPP messages into calls on it, and the runner steps its physics.

The offer on a connector follows DESIGN.md: min(hardware max, composite limit), where a station
max profile covers all connectors together, so it is shared equally among the connectors that
are charging (OCPP 1.6 §3.13.3: "ChargePointMaxProfile … limits the overall power or current of
the whole charge point"; 2.0.1 K01: the station's limit is min(ChargingStationMaxProfile, sum of
the EVSEs' limits)).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emulators.ev import EV
from emulators.profiles import ProfileEngine

_NO_CURRENT = (0.0, 0.0, 0.0)


@dataclass
class Connector:
    """One connector (EVSE) and what is happening on it."""

    id: int
    ev: EV | None = None
    ev_id: str | None = None
    id_tag: str | None = None
    transaction_id: int | str | None = None
    tx_start_epoch: float | None = None
    meter_wh: float = 0.0  # Energy.Active.Import.Register, cumulative over the station's life
    offered_a: float = 0.0
    limit_a: float | None = None
    currents_a: tuple[float, float, float] = _NO_CURRENT
    status: str = "Available"

    @property
    def charging_allowed(self) -> bool:
        return self.ev is not None and self.transaction_id is not None

    @property
    def power_w(self) -> float:
        return 0.0 if self.ev is None else self.ev.power_w


@dataclass
class StationModel:
    """One charging station's plant. Times: ``epoch`` Unix seconds, ``now_s`` scenario seconds."""

    id: str
    connectors: int = 1
    max_current_a: float = 32.0
    phases: int = 3
    voltage_v: float = 230.0
    engine: ProfileEngine = field(init=False)
    ports: dict[int, Connector] = field(init=False)
    version: str = "1.6"  # the OCPP version whose profile rules the engine applies: "1.6" or "2.0.1"
    # The station-wide limit on all connectors together [A per phase] at the latest step; None = none.
    station_limit_a: float | None = field(init=False, default=None)
    # [s] the station's clock minus the bench's: set when the station takes its CSMS's time (StationClock).
    # Profiles are in the station's time, so the plant evaluates them there.
    clock_offset_s: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.engine = ProfileEngine(
            self.connectors, voltage_v=self.voltage_v, default_phases=self.phases, version=self.version
        )
        self.ports = {c: Connector(c) for c in range(1, self.connectors + 1)}

    # -- what the outside world does to the station ---------------------------------------------

    def plug(self, connector_id: int, ev: EV, ev_id: str, id_tag: str) -> None:
        port = self.ports[connector_id]
        port.ev, port.ev_id, port.id_tag = ev, ev_id, id_tag

    def unplug(self, connector_id: int) -> EV | None:
        port = self.ports[connector_id]
        ev, port.ev, port.ev_id, port.id_tag = port.ev, None, None, None
        port.currents_a = _NO_CURRENT
        port.offered_a = 0.0
        return ev

    def start_transaction(self, connector_id: int, transaction_id: int | str, epoch: float) -> None:
        port = self.ports[connector_id]
        port.transaction_id, port.tx_start_epoch = transaction_id, epoch

    def stop_transaction(self, connector_id: int) -> None:
        port = self.ports[connector_id]
        port.transaction_id, port.tx_start_epoch = None, None
        # OCPP 1.6 §3.13.3: a TxProfile ends with its transaction.
        self.engine.end_transaction(connector_id)

    def active_transaction(self, connector_id: int) -> int | str | None:
        port = self.ports.get(connector_id)
        return None if port is None else port.transaction_id

    # -- physics ----------------------------------------------------------------------------------

    def step(self, epoch: float, now_s: float, dt_s: float, supplied: bool) -> tuple[float, float, float]:
        """Advance every connector by ``dt_s``; return the station's per-phase currents (its own L1–L3).

        The hot path of a run (every station, every step): the profile engine answers from its cache, and what
        does not change during the step is read once."""
        epoch += self.clock_offset_s
        max_share_a = self._max_profile_share_a(epoch)
        limit_of = self.engine.limit_a
        phases, max_current_a, voltage_v = self.phases, self.max_current_a, self.voltage_v
        l1 = l2 = l3 = 0.0
        for port in self.ports.values():
            limit_a = limit_of(port.id, epoch, port.tx_start_epoch, phases)
            port.limit_a = limit_a
            ev = port.ev
            offered = 0.0
            if supplied and ev is not None and port.transaction_id is not None:  # Connector.charging_allowed
                offered = max_current_a
                if limit_a is not None and limit_a < offered:
                    offered = limit_a
                if max_share_a is not None and max_share_a < offered:
                    offered = max_share_a
                if offered < 0.0:
                    offered = 0.0
            if ev is None:
                continue
            if offered != port.offered_a:
                port.offered_a = offered
                ev.offer(offered, now_s)
            current = ev.step(now_s, dt_s, supplied)
            # The runner builds each EV with min(EV phases, station phases).
            three_phase = ev.spec.phases == 3
            port.currents_a = (current, current, current) if three_phase else (current, 0.0, 0.0)
            n_phases = 3 if three_phase else 1
            port.meter_wh += current * voltage_v * n_phases * dt_s / 3600.0
            l1 += current
            if three_phase:
                l2 += current
                l3 += current
        return (l1, l2, l3)

    def _max_profile_share_a(self, epoch: float) -> float | None:
        station_limit = self.engine.max_profile_limit_a(epoch, self.phases)
        self.station_limit_a = station_limit
        if station_limit is None:
            return None
        charging = sum(1 for p in self.ports.values() if p.charging_allowed)
        return station_limit / max(charging, 1)
