"""The contract between an in-process controller and the host that runs it.

A controller sees the site only as a load-management product would: what the charging
stations say over OCPP (boots, sessions, meter values), what the site meter reads over Modbus,
grid signals, and the installer's configuration (site limit, chargers). It never imports the
bench or the emulators and never reads the simulation's truth; the host
(:mod:`controllers.host`) turns OCPP and Modbus traffic into the calls below and turns the
controller's decisions back into OCPP messages.

Units are in the names: ``_a`` amps per phase, ``_w`` watts, ``_wh``/``_kwh`` energy,
``_s`` seconds. Times are Unix epoch seconds of the clock the host runs on.

Stations speak OCPP 1.6 or 2.0.1 (:meth:`Controller.on_station_connected` says which). A
connector key ``(station id, connector id)`` names a 1.6 connector or a 2.0.1 EVSE (its
``evseId``); 0 is the station as a whole. Transaction ids are ints in 1.6 (the host makes them)
and strings in 2.0.1 (the station makes them).

A controller is a plain class; every hook is synchronous and must not block. Decisions are
returned by :meth:`Controller.allocate`, which the host calls every ``period_s`` and right after
any session starts or ends or an EV states its charging needs; the host sends only what changed.
A decision for a key is either

- a :class:`Limit`: the host turns it into that version's TxProfile for the transaction running on
  the connector (one stable profile id per connector). Limits are for connectors with a running
  session only — connector 0 has none, and a limit for a connector without one is not sent;
- a :class:`Profile`: a whole SetChargingProfile request the controller wrote itself, in the wire
  format of the station's version. The host sends it as given, to any connector of a connected
  station — connector 0 included (that is where max and default profiles live), with or without a
  session — whenever it differs from the last one sent for that key. The host does not judge it:
  a product may send wrong profiles, and the bench must see exactly what it sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class StationConfig:
    """What the installer told the controller about one charger."""

    id: str
    max_current_a: float = 32.0
    phases: int = 3
    connectors: int = 1
    ocpp: str = "1.6"  # "1.6" or "2.0.1": the installer knows what each charger speaks


@dataclass(frozen=True)
class SiteConfig:
    """The installer's configuration: the limit to hold and the chargers on the site."""

    limit_a: float
    phases: int = 3
    voltage_v: float = 230.0
    stations: tuple[StationConfig, ...] = ()

    def station(self, station_id: str) -> StationConfig:
        for station in self.stations:
            if station.id == station_id:
                return station
        return StationConfig(station_id)


@dataclass(frozen=True)
class Session:
    """A charging transaction as the station reported it (StartTransaction / TransactionEvent)."""

    station_id: str
    connector_id: int
    transaction_id: int | str
    id_tag: str
    started_at: float
    meter_start_wh: float = 0.0


@dataclass(frozen=True)
class MeterSample:
    """One MeterValues sample of one connector (fields absent from the message are None)."""

    station_id: str
    connector_id: int
    timestamp: float
    currents_a: tuple[float, ...] | None = None
    offered_a: float | None = None
    power_w: float | None = None
    energy_wh: float | None = None
    soc: float | None = None

    @property
    def max_current_a(self) -> float | None:
        return max(self.currents_a) if self.currents_a else None


@dataclass(frozen=True)
class SiteReading:
    """One read of the site meter at the grid connection (Modbus)."""

    timestamp: float
    currents_a: tuple[float, float, float]
    power_w: float
    import_kwh: float


@dataclass(frozen=True)
class ChargingNeeds:
    """What an ISO 15118 EV asked for, as a 2.0.1 station reported it (NotifyEVChargingNeeds, K15).

    ``departure`` is epoch seconds; ``energy_wh`` the energy still wanted when the needs were sent;
    currents are per phase. A field the message did not carry (or carried unreadably) is None.
    ``discharge_max_current_a`` and ``min_soc`` (0..1) come from a bidirectional EV's customData
    (vendorId "org.evbench"); 2.0.1 has no fields of its own for them.
    """

    station_id: str
    connector_id: int
    transaction_id: int | str | None
    received_at: float
    departure: float | None
    energy_wh: float | None
    min_current_a: float | None
    max_current_a: float | None
    phases: int
    discharge_max_current_a: float = 0.0
    min_soc: float | None = None


@dataclass(frozen=True)
class Limit:
    """A decision for one connector: its per-phase current limit (0 pauses charging)."""

    limit_a: float


@dataclass(frozen=True)
class Profile:
    """A decision for one connector: a whole SetChargingProfile request payload, sent verbatim.

    Wire camelCase for the station's version — 1.6 ``{"connectorId", "csChargingProfiles"}``,
    2.0.1 ``{"evseId", "chargingProfile"}``.
    """

    payload: dict


ConnectorKey = tuple[str, int]
Decision = Limit | Profile


class Controller:
    """Base class of in-process controllers. Override what you need; defaults do nothing.

    ``period_s`` is how often :meth:`allocate` runs; ``meter_poll_s`` how often the host reads
    the site meter (0 = never); ``meter_value_interval_s`` the MeterValueSampleInterval the host
    configures on every station at boot (0 = leave the station's own).
    """

    name = "controller"
    period_s: float = 5.0
    meter_poll_s: float = 1.0
    meter_value_interval_s: float = 10.0

    def __init__(self, site: SiteConfig) -> None:
        self.site = site

    def failsafe_a(self, station_id: str) -> float | None:
        """Default limit installed on a station at boot (TxDefaultProfile); None installs none."""
        return None

    def on_station_connected(self, station_id: str, ocpp_version: str, now: float) -> None:
        """A station's websocket was accepted; ``ocpp_version`` is "1.6" or "2.0.1"."""

    def on_station_booted(self, station_id: str, vendor: str, model: str, now: float) -> None: ...

    def on_station_disconnected(self, station_id: str, now: float) -> None: ...

    def on_status(self, station_id: str, connector_id: int, status: str, now: float) -> None: ...

    def on_session_started(self, session: Session, now: float) -> None: ...

    def on_session_ended(self, session: Session, energy_wh: float, now: float) -> None: ...

    def on_meter_sample(self, sample: MeterSample, now: float) -> None: ...

    def on_charging_needs(self, needs: ChargingNeeds, now: float) -> None:
        """An EV stated (or restated) its charging needs; the host re-allocates right after."""

    def on_site_reading(self, reading: SiteReading, now: float) -> None: ...

    def on_site_limit(self, limit_a: float, now: float) -> None:
        """A grid signal: the limit at the connection point changed."""

    def on_meter_unavailable(self, error: str, now: float) -> None: ...

    def allocate(self, now: float) -> Mapping[ConnectorKey, Decision]:
        """Decisions wanted now, per connector; the host sends the ones that changed."""
        return {}
