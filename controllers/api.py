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
  a product may send wrong profiles, and the bench must see exactly what it sent;
- a :class:`BatterySetpoint`, for the key :data:`BATTERY` only: the power the site's stationary
  battery should charge (+) or discharge (−) at. The host writes it to the battery inverter's
  setpoint register over Modbus (:attr:`BatteryConfig.unit_id` on the site meter's bus or gateway)
  whenever it changes; a site without a battery ignores it.

Grid signals — the site limit (:meth:`Controller.on_site_limit`) and the tariff and PV forecast
(:meth:`Controller.on_grid_signal`) — reach the controller as a product gets them from the grid
operator, supplier or an aggregator: the host delivers a :class:`GridSignal` at start and again
whenever what is known changes (a day-ahead publication).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping


# Charger phase i is wired to site phase PHASE_ROTATIONS[rotation][i]. Installers rotate the phases from one
# charger to the next so that single-phase EVs (which draw on the charger's L1 only) spread over the site's
# three phases instead of all landing on L1.
PHASE_ROTATIONS: dict[str, tuple[int, int, int]] = {
    "L1L2L3": (0, 1, 2),
    "L2L3L1": (1, 2, 0),
    "L3L1L2": (2, 0, 1),
}


@dataclass(frozen=True)
class StationConfig:
    """What the installer told the controller about one charger."""

    id: str
    max_current_a: float = 32.0
    phases: int = 3
    connectors: int = 1
    ocpp: str = "1.6"  # "1.6" or "2.0.1": the installer knows what each charger speaks
    # A sub-meter wired for this charger: its unit id on the site meter's bus or gateway, and its
    # register map when it is not the site meter's model. The host polls it with the site meter.
    meter_unit: int | None = None
    meter_model: str | None = None
    priority: int = 0  # the installer's priority group: higher is served first (fleet above staff)
    # How the charger's L1, L2, L3 are wired to the site's phases (OCPP 1.6 ConnectorPhaseRotation, 2.0.1
    # PhaseRotation): "L2L3L1" puts its L1 on the site's L2. A 1-phase EV draws on the charger's L1.
    rotation: str = "L1L2L3"

    def site_phase(self, station_phase: int) -> int:
        """The site phase (0..2) the charger's phase ``station_phase`` (0..2) is wired to."""
        return PHASE_ROTATIONS[self.rotation][station_phase]


@dataclass(frozen=True)
class MeterEndpoint:
    """Where and what the installer wired as the site meter: a register map and a Modbus address.

    ``model`` names a register map (:func:`controllers.register_map.load_register_map`: a bundled
    model such as "sdm630", or a path to a map file). ``serial_port`` set means Modbus RTU on that
    serial device, 8 data bits with ``baudrate``, ``parity`` ("N", "E", "O") and ``stopbits``;
    otherwise Modbus TCP to ``host``:``port``.
    """

    model: str = "sdm630"
    host: str = "127.0.0.1"
    port: int = 502
    serial_port: str | None = None
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    unit_id: int = 1


@dataclass(frozen=True)
class BatteryConfig:
    """What the installer told the controller about the site's stationary battery and its inverter.

    ``min_soc``/``max_soc`` (0..1) are the window the inverter holds; ``efficiency`` is one way
    (charging stores ``efficiency`` of the energy taken in, discharging delivers ``efficiency`` of the
    energy taken out). The inverter sits on the site meter's Modbus bus or gateway at ``unit_id``
    with the register map ``model`` (:func:`controllers.register_map.load_register_map`).
    """

    capacity_kwh: float
    max_charge_w: float
    max_discharge_w: float
    min_soc: float = 0.1
    max_soc: float = 0.95
    efficiency: float = 0.95
    unit_id: int = 2
    model: str = "battery_inverter"


@dataclass(frozen=True)
class SiteConfig:
    """The installer's configuration: the limit to hold and the chargers on the site."""

    limit_a: float
    phases: int = 3
    voltage_v: float = 230.0
    stations: tuple[StationConfig, ...] = ()
    meter: MeterEndpoint | None = None  # the site meter at the grid connection; None: none wired
    # The installer's timing settings, as products expose them ("control interval", "meter poll
    # interval"); None keeps the controller's own default (Controller.period_s / meter_poll_s).
    period_s: float | None = None
    meter_poll_s: float | None = None
    battery: BatteryConfig | None = None  # a stationary battery the controller may command; None: none
    pv_peak_w: float = 0.0  # the PV system's peak power as the installer knows it; 0: no PV
    # The scenario's [controller.options] table, verbatim: a controller's own settings.
    options: Mapping[str, object] = field(default_factory=dict)

    def station(self, station_id: str) -> StationConfig:
        return self._stations_by_id.get(station_id) or StationConfig(station_id)

    @cached_property
    def _stations_by_id(self) -> dict[str, StationConfig]:
        # Controllers ask per session per period: a scan of 200 chargers each time showed in campus profiles.
        return {station.id: station for station in self.stations}


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
    """One sample of one connector's meter (fields the source did not give are None).

    ``source`` "ocpp" is a MeterValues (or TransactionEvent) sample the station sent. "modbus" is a
    read of the charger's sub-meter (:attr:`StationConfig.meter_unit`), which the host polls with the
    site meter: connector 1, no offer, no SoC, and ``energy_wh`` is the sub-meter's own import
    register — it counts from the meter's installation, not from the station's register that a
    session's ``meter_start_wh`` refers to.
    """

    station_id: str
    connector_id: int
    timestamp: float
    currents_a: tuple[float, ...] | None = None
    offered_a: float | None = None
    power_w: float | None = None
    energy_wh: float | None = None
    soc: float | None = None
    source: str = "ocpp"

    @property
    def max_current_a(self) -> float | None:
        return max(self.currents_a) if self.currents_a else None


@dataclass(frozen=True)
class SiteReading:
    """One plausible read of the site meter at the grid connection (Modbus); import is positive.

    ``timestamp`` is when it was read. ``changed_at`` is when any of its values last differed from
    the read before: a meter that keeps answering with frozen values shows as a ``changed_at`` that
    stops advancing. A quantity the meter's register map lacks is None.
    """

    timestamp: float
    currents_a: tuple[float, float, float]
    power_w: float
    import_kwh: float
    voltages_v: tuple[float, float, float] | None = None
    export_kwh: float | None = None
    frequency_hz: float | None = None
    changed_at: float | None = None


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
class PricePeriod:
    """An import energy price known for ``start``..``end`` (epoch seconds), per kWh."""

    start: float
    end: float
    price_per_kwh: float


@dataclass(frozen=True)
class PowerForecast:
    """A forecast mean power for ``start``..``end`` (epoch seconds), e.g. of PV generation."""

    start: float
    end: float
    power_w: float


@dataclass(frozen=True)
class GridSignal:
    """What the controller knows of the tariff and the PV forecast, as of when it was sent.

    ``prices`` are the known import prices in time order: a time-of-use tariff expanded over the
    horizon the host looks ahead, or the day-ahead prices published so far. The demand charge is
    per kW of the billing period's highest 15-minute average import.
    """

    prices: tuple[PricePeriod, ...] = ()
    export_price_per_kwh: float = 0.0
    demand_charge_per_kw: float = 0.0
    pv_forecast: tuple[PowerForecast, ...] = ()
    currency: str = "EUR"


@dataclass(frozen=True)
class BatteryReading:
    """One read of the battery inverter: SoC 0..1 and power, + charging, − discharging."""

    timestamp: float
    soc: float
    power_w: float


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


@dataclass(frozen=True)
class BatterySetpoint:
    """The decision for :data:`BATTERY`: charge (+) or discharge (−) at ``power_w``.

    The inverter clamps it to its power limits and its SoC window; 0 idles the battery.
    """

    power_w: float


ConnectorKey = tuple[str, int]
Decision = Limit | Profile | BatterySetpoint

BATTERY: ConnectorKey = ("battery", 0)  # the key of the site's stationary battery in allocate()


class Controller:
    """Base class of in-process controllers. Override what you need; defaults do nothing.

    ``period_s`` is how often :meth:`allocate` runs; ``meter_poll_s`` how often the host reads
    the site meter and the chargers' sub-meters (0 = never) — both the controller's defaults, which
    the installer's :class:`SiteConfig` settings override; ``meter_value_interval_s`` the
    MeterValueSampleInterval the host configures on every station at boot (0 = leave the station's own).

    The site meter reaches the controller as :meth:`on_site_reading` after every plausible read and
    as :meth:`on_meter_unavailable` after a read failed (no answer, an exception, implausible values)
    with all its retries. Sub-meters reach it as :meth:`on_meter_sample` with ``source`` "modbus":
    a controller may use those instead of the stations' OCPP meter values.
    """

    name = "controller"
    period_s: float = 5.0
    meter_poll_s: float = 1.0
    meter_value_interval_s: float = 10.0

    def __init__(self, site: SiteConfig) -> None:
        self.site = site
        if site.period_s is not None:
            self.period_s = site.period_s
        if site.meter_poll_s is not None:
            self.meter_poll_s = site.meter_poll_s

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

    def on_grid_signal(self, signal: GridSignal, now: float) -> None:
        """The known prices or PV forecast changed (and once at start); ``signal`` is all of it."""

    def on_battery_reading(self, reading: BatteryReading, now: float) -> None:
        """A read of the battery inverter, polled with the site meter."""

    def on_meter_unavailable(self, error: str, now: float) -> None:
        """A read of the site meter failed; ``error`` says how. The last good reading is the last one sent."""

    def allocate(self, now: float) -> Mapping[ConnectorKey, Decision]:
        """Decisions wanted now, per connector; the host sends the ones that changed."""
        return {}
