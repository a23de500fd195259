"""OCPP 1.6J for an emulated charging station: translation between the wire and the station model.

This module owns the station side of OCPP 1.6J (JSON over websockets, subprotocol ``ocpp1.6``):
the connection and its reconnects, BootNotification, Heartbeat, StatusNotification, Authorize,
Start/StopTransaction, MeterValues at MeterValueSampleInterval, Get/ChangeConfiguration, and the
Smart Charging profile messages (SetChargingProfile, ClearChargingProfile,
GetCompositeSchedule) plus Remote Start/Stop. Every rule about what a profile *means* lives in
:mod:`emulators.profiles`; every physical fact in :mod:`emulators.station`. This layer only
translates and records: each raw frame in and out goes to ``record``.

Bad input from the CSMS never takes the station down: schema violations are answered with the
CallError the library picks (OCPP-J §4.2.3), semantically invalid profiles with ``Rejected``, and
anything unexpected with an InternalError CallError — each also reported as a ``station_error``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import Any

import websockets
from ocpp.exceptions import OCPPError
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import (
    Action,
    AuthorizationStatus,
    AvailabilityStatus,
    ChargingProfileStatus,
    ClearCacheStatus,
    ClearChargingProfileStatus,
    ConfigurationStatus,
    DataTransferStatus,
    GetCompositeScheduleStatus,
    RegistrationStatus,
    RemoteStartStopStatus,
    ResetStatus,
    TriggerMessageStatus,
    UnlockStatus,
)

from bench.clock import SimClock
from controllers import ocpp_fastpath
from emulators.profiles import ProfileError, parse_profile
from emulators.station import StationModel
from emulators.station_link import Record, RecordingSocket, Report, StationClock, StationLink

ocpp_fastpath.install()
logging.getLogger("ocpp").setLevel(logging.CRITICAL)

SUBPROTOCOL = "ocpp1.6"

class _Configuration:
    """The station's configuration keys (OCPP 1.6 §9.1, §9.4 Smart Charging)."""

    def __init__(self, model: StationModel, meter_value_interval_s: float, heartbeat_interval_s: float) -> None:
        self.values: dict[str, str] = {
            "HeartbeatInterval": str(int(heartbeat_interval_s)),
            "MeterValueSampleInterval": str(int(meter_value_interval_s)),
            "MeterValuesSampledData": "Current.Import,Current.Offered,Power.Active.Import,"
            "Energy.Active.Import.Register,SoC",
            "ChargeProfileMaxStackLevel": str(model.engine.max_stack_level),
            "ChargingScheduleAllowedChargingRateUnit": "Current,Power",
            "ChargingScheduleMaxPeriods": str(model.engine.max_periods),
            "MaxChargingProfilesInstalled": str(model.engine.max_profiles),
            "NumberOfConnectors": str(model.connectors),
            "SupportedFeatureProfiles": "Core,SmartCharging,RemoteTrigger",
        }
        self.read_only = {
            "ChargeProfileMaxStackLevel",
            "ChargingScheduleAllowedChargingRateUnit",
            "ChargingScheduleMaxPeriods",
            "MaxChargingProfilesInstalled",
            "NumberOfConnectors",
            "SupportedFeatureProfiles",
        }
        self.integers = {"HeartbeatInterval", "MeterValueSampleInterval"}
        self.measurands = frozenset(self.values["MeterValuesSampledData"].split(","))
        self.changed = asyncio.Event()

    def seconds(self, key: str) -> float:
        return float(self.values[key])

    def change(self, key: str, value: str) -> str:
        if key not in self.values:
            return ConfigurationStatus.not_supported
        if key in self.read_only:
            return ConfigurationStatus.rejected
        if key in self.integers:
            try:
                if int(value) < 0:
                    return ConfigurationStatus.rejected
            except ValueError:
                return ConfigurationStatus.rejected
            value = str(int(value))
        self.values[key] = value
        if key == "MeterValuesSampledData":
            self.measurands = frozenset(value.split(","))
        self.changed.set()
        return ConfigurationStatus.accepted


class _Link(ChargePoint):
    """One websocket session with the CSMS; handlers for what the CSMS may ask."""

    def __init__(self, station: "Station16", ws: Any) -> None:
        super().__init__(station.model.id, RecordingSocket(ws, station.record), response_timeout=30)
        self.station = station
        self._last_inbound = ""

    async def route_message(self, raw_msg: str) -> None:
        self._last_inbound = raw_msg
        if self.station.pending_starts:
            self.station.confirm_start(raw_msg)
        try:
            await super().route_message(raw_msg)
        except OCPPError:
            raise
        except Exception as error:  # a bug or absurd input must not end the session
            try:
                frame = json.loads(raw_msg)
                if isinstance(frame, list) and len(frame) >= 3 and frame[0] == 2:
                    await self._send(json.dumps([4, frame[1], "InternalError", str(error)[:200], {}]))
                else:
                    self.station.report("station_error", {"error": repr(error), "request": raw_msg[:2000]})
            except (ValueError, TypeError, RecursionError):
                self.station.report("station_error", {"error": repr(error), "request": raw_msg[:2000]})
            except websockets.ConnectionClosed:
                pass

    async def _send(self, message: str) -> None:
        if message.startswith("[4"):
            # The library answers schema violations itself; each is a finding about the CSMS.
            self.station.report("station_error", {"callerror": message[:1000],
                                                  "request": self._last_inbound[:2000]})
        await super()._send(message)

    # -- smart charging -------------------------------------------------------------------------

    @on(Action.set_charging_profile)
    def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: dict, **_: Any):
        return call_result.SetChargingProfile(self.station.set_profile(connector_id, cs_charging_profiles))

    @on(Action.clear_charging_profile)
    def on_clear_charging_profile(self, id=None, connector_id=None, charging_profile_purpose=None,
                                  stack_level=None, **_: Any):
        status = self.station.model.engine.clear(id, connector_id, charging_profile_purpose, stack_level)
        return call_result.ClearChargingProfile(
            ClearChargingProfileStatus.accepted if status == "Accepted" else ClearChargingProfileStatus.unknown
        )

    @on(Action.get_composite_schedule)
    def on_get_composite_schedule(self, connector_id: int, duration: int, charging_rate_unit=None, **_: Any):
        return self.station.composite_schedule(connector_id, duration, charging_rate_unit or "A")

    # -- configuration --------------------------------------------------------------------------

    @on(Action.get_configuration)
    def on_get_configuration(self, key: list | None = None, **_: Any):
        config = self.station.config
        wanted = key or list(config.values)
        known = [
            {"key": k, "readonly": k in config.read_only, "value": config.values[k]}
            for k in wanted
            if k in config.values
        ]
        unknown = [k for k in wanted if k not in config.values]
        return call_result.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on(Action.change_configuration)
    def on_change_configuration(self, key: str, value: str, **_: Any):
        return call_result.ChangeConfiguration(self.station.config.change(key, value))

    # -- remote trigger and the rest of Core (OCPP 1.6 §5) -------------------------------------------

    @on(Action.trigger_message)
    def on_trigger_message(self, requested_message: str, connector_id: int | None = None, **_: Any):
        accepted = self.station.trigger(requested_message, connector_id)
        return call_result.TriggerMessage(TriggerMessageStatus.accepted if accepted
                                          else TriggerMessageStatus.not_implemented)

    @on(Action.change_availability)
    def on_change_availability(self, connector_id: int, type: str, **_: Any):
        return call_result.ChangeAvailability(self.station.change_availability(connector_id, type))

    @on(Action.reset)
    def on_reset(self, type: str, **_: Any):
        asyncio.get_running_loop().create_task(self.station.reboot())
        return call_result.Reset(ResetStatus.accepted)

    @on(Action.clear_cache)
    def on_clear_cache(self, **_: Any):
        return call_result.ClearCache(ClearCacheStatus.accepted)  # it keeps no authorisation cache

    @on(Action.unlock_connector)
    def on_unlock_connector(self, connector_id: int, **_: Any):
        return call_result.UnlockConnector(UnlockStatus.not_supported)  # tethered cables have no lock

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any):
        return call_result.DataTransfer(DataTransferStatus.unknown_vendor_id)

    # -- remote control -------------------------------------------------------------------------

    @on(Action.remote_start_transaction)
    def on_remote_start_transaction(self, id_tag: str, connector_id: int | None = None,
                                    charging_profile: dict | None = None, **_: Any):
        accepted = self.station.remote_start(id_tag, connector_id, charging_profile)
        return call_result.RemoteStartTransaction(
            RemoteStartStopStatus.accepted if accepted else RemoteStartStopStatus.rejected
        )

    @on(Action.remote_stop_transaction)
    def on_remote_stop_transaction(self, transaction_id: int, **_: Any):
        accepted = self.station.remote_stop(transaction_id)
        return call_result.RemoteStopTransaction(
            RemoteStartStopStatus.accepted if accepted else RemoteStartStopStatus.rejected
        )


class Station16(StationLink):
    """An emulated OCPP 1.6J charging station: connects to ``url/<id>`` and keeps its session up."""

    SUBPROTOCOL = SUBPROTOCOL

    def __init__(self, model: StationModel, url: str, clock: SimClock, record: Record, report: Report,
                 meter_value_interval_s: float = 60.0, heartbeat_interval_s: float = 300.0,
                 vendor: str = "evbench", product: str = "virtual-ac") -> None:
        super().__init__(model.id, url, record, report)
        self.model = model
        self.clock = StationClock(clock)
        self.vendor, self.product = vendor, product
        self.config = _Configuration(model, meter_value_interval_s, heartbeat_interval_s)
        self.link: _Link | None = None
        self._tx_lock = asyncio.Lock()
        self.pending_starts: dict[str, int] = {}  # StartTransaction unique id → connector
        self._start_ids = itertools.count(1)

    # -- connection lifecycle -------------------------------------------------------------------

    async def _session(self, ws: Any) -> None:
        link = _Link(self, ws)
        self.link = link
        listener = asyncio.create_task(link.start())
        helpers: list[asyncio.Task] = []
        try:
            if await self._boot(link, listener):
                self.report("station_connected", {"url": self.url})
                for port in self.model.ports.values():
                    await self._status(port.id, port.status)
                self.online.set()
                helpers = [asyncio.create_task(self._heartbeats()), asyncio.create_task(self._meter_values())]
            await listener
        except websockets.ConnectionClosed:
            pass
        finally:
            self.online.clear()
            for task in (*helpers, listener):
                task.cancel()
            await asyncio.gather(*helpers, listener, return_exceptions=True)

    async def _boot(self, link: _Link, listener: asyncio.Task) -> bool:
        while not listener.done():
            response = await link.call(call.BootNotification(charge_point_model=self.product,
                                                             charge_point_vendor=self.vendor))
            if response is not None and response.status == RegistrationStatus.accepted:
                self._set_clock(response.current_time)
                if response.interval > 0:
                    self.config.values["HeartbeatInterval"] = str(int(response.interval))
                return True
            interval = response.interval if response is not None and response.interval > 0 else 30
            await asyncio.sleep(interval)
        return False

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(max(self.config.seconds("HeartbeatInterval"), 1.0))
            await self._call(call.Heartbeat())

    async def _meter_values(self) -> None:
        while True:
            interval_s = self.config.seconds("MeterValueSampleInterval")
            self.config.changed.clear()
            if interval_s <= 0:
                await self.config.changed.wait()
                continue
            try:
                await asyncio.wait_for(self.config.changed.wait(), interval_s)
                continue  # the interval changed: start counting again
            except asyncio.TimeoutError:
                pass
            for port in self.model.ports.values():
                if port.transaction_id is not None:
                    await self._call(call.MeterValues(connector_id=port.id, transaction_id=port.transaction_id,
                                                      meter_value=[self._sample(port)]))

    def _sample(self, port: Any) -> dict:
        measurands = self.config.measurands
        values: list[dict] = []
        if "Current.Import" in measurands:
            n = 3 if self.model.phases == 3 else 1
            for i in range(n):
                values.append({"value": f"{port.currents_a[i]:.2f}", "measurand": "Current.Import",
                               "phase": f"L{i + 1}", "unit": "A"})
        if "Current.Offered" in measurands:
            values.append({"value": f"{port.offered_a:.1f}", "measurand": "Current.Offered", "unit": "A"})
        if "Power.Active.Import" in measurands:
            values.append({"value": f"{port.power_w:.0f}", "measurand": "Power.Active.Import", "unit": "W"})
        if "Energy.Active.Import.Register" in measurands:
            values.append({"value": f"{port.meter_wh:.0f}", "measurand": "Energy.Active.Import.Register",
                           "unit": "Wh"})
        if "SoC" in measurands and port.ev is not None:
            values.append({"value": f"{port.ev.soc * 100:.1f}", "measurand": "SoC", "unit": "Percent",
                           "location": "EV"})
        return {"timestamp": self.clock.iso(), "sampled_value": values}

    async def _call(self, payload: Any, unique_id: str | None = None) -> Any:
        """Send a CALL; a dropped link or a CallError answer yields None instead of an exception."""
        link = self.link
        if link is None:
            return None
        try:
            return await link.call(payload, unique_id=unique_id)
        except (websockets.ConnectionClosed, asyncio.TimeoutError) as error:
            self.report("station_error", {"action": type(payload).__name__, "error": repr(error)})
            return None

    async def _status(self, connector_id: int, status: str) -> None:
        if connector_id in self.model.ports:
            self.model.ports[connector_id].status = status
        await self._call(call.StatusNotification(connector_id=connector_id, error_code="NoError",
                                                 status=status, timestamp=self.clock.iso()))

    # -- what the bench does to the station -----------------------------------------------------

    async def plug_in(self, connector_id: int, id_tag: str) -> None:
        """An EV (already placed on the model) is plugged in: authorise and start a transaction."""
        await self.online.wait()
        async with self._tx_lock:
            await self._status(connector_id, "Preparing")
            answer = await self._call(call.Authorize(id_tag=id_tag))
            if answer is None or answer.id_tag_info.get("status") != AuthorizationStatus.accepted:
                self.report("station_error", {"connector": connector_id, "error": "authorization not accepted",
                                              "answer": None if answer is None else answer.id_tag_info})
                return
            await self._start_transaction(connector_id, id_tag)

    async def _start_transaction(self, connector_id: int, id_tag: str) -> None:
        port = self.model.ports[connector_id]
        unique_id = f"start-{self.model.id}-{connector_id}-{next(self._start_ids)}"
        self.pending_starts[unique_id] = connector_id
        try:
            answer = await self._call(call.StartTransaction(connector_id=connector_id, id_tag=id_tag,
                                                            meter_start=int(port.meter_wh),
                                                            timestamp=self.clock.iso()), unique_id=unique_id)
        finally:
            self.pending_starts.pop(unique_id, None)
        if answer is None or port.ev is None:
            return
        if port.transaction_id is None:
            self.report("station_error", {"connector": connector_id, "error": "transaction not accepted",
                                          "answer": answer.id_tag_info})
            return
        await self._status(connector_id, "Charging")

    def confirm_start(self, raw: str) -> None:
        """Make a transaction active the moment its StartTransaction.conf arrives.

        A CSMS may send the TxProfile right behind the conf (often in the same TCP read); the
        transaction must already be running when that profile is judged (OCPP 1.6 §3.13.3).
        """
        try:
            frame = json.loads(raw)
            connector_id = self.pending_starts.get(frame[1]) if frame[0] == 3 else None
            if connector_id is None:
                return
            payload = frame[2]
            if payload["idTagInfo"]["status"] == "Accepted" and self.model.ports[connector_id].ev is not None:
                self.model.start_transaction(connector_id, payload["transactionId"], self.clock.epoch())
        except (ValueError, TypeError, KeyError, IndexError):
            return  # the library's own validation will answer for a malformed conf

    async def unplug(self, connector_id: int) -> None:
        """The EV leaves: free the connector, stop its transaction (if any), report Available."""
        self.model.unplug(connector_id)
        async with self._tx_lock:
            await self._stop_transaction(connector_id, "EVDisconnected")
            await self._status(connector_id, "Available")

    async def _stop_transaction(self, connector_id: int, reason: str) -> bool:
        """End the connector's transaction, if one runs; True if there was one."""
        port = self.model.ports[connector_id]
        tx = port.transaction_id
        if tx is None:
            return False
        self.model.stop_transaction(connector_id)
        await self._call(call.StopTransaction(meter_stop=int(port.meter_wh), timestamp=self.clock.iso(),
                                              transaction_id=tx, reason=reason))
        return True

    async def ev_full(self, connector_id: int) -> None:
        await self._status(connector_id, "SuspendedEV")

    # -- what the CSMS asks (called from the handlers) ------------------------------------------

    def set_profile(self, connector_id: int, snake_profile: dict) -> str:
        try:
            profile = parse_profile(ocpp_fastpath.snake_to_camel_case(snake_profile), "csChargingProfiles")
        except ProfileError as error:
            self.report("station_error", {"action": "SetChargingProfile", "error": str(error)})
            return ChargingProfileStatus.rejected
        result = self.model.engine.set_profile(connector_id, profile,
                                               self.model.active_transaction(connector_id))
        if result.status != "Accepted":
            self.report("profile_rejected", {"connector": connector_id, "reason": result.reason,
                                             "profile_id": profile.id})
            return ChargingProfileStatus.rejected
        return ChargingProfileStatus.accepted

    def composite_schedule(self, connector_id: int, duration_s: int, unit: str) -> call_result.GetCompositeSchedule:
        if connector_id not in self.model.ports and connector_id != 0:
            return call_result.GetCompositeSchedule(GetCompositeScheduleStatus.rejected)
        port = self.model.ports.get(connector_id)
        start = self.clock.epoch()
        schedule = self.model.engine.composite_schedule(
            connector_id, start, int(duration_s), str(unit),
            tx_start=None if port is None else port.tx_start_epoch,
            phases=self.model.phases, no_limit_a=self.model.max_current_a,
        )
        periods = []
        for p in schedule.periods:
            period = {"start_period": p.start_period_s, "limit": round(float(p.limit), 1)}
            if p.number_phases is not None:
                period["number_phases"] = p.number_phases
            periods.append(period)
        return call_result.GetCompositeSchedule(
            status=GetCompositeScheduleStatus.accepted,
            connector_id=connector_id,
            schedule_start=self.clock.iso(start),
            charging_schedule={"duration": int(duration_s), "start_schedule": self.clock.iso(start),
                               "charging_rate_unit": schedule.rate_unit,
                               "charging_schedule_period": periods},
        )

    def trigger(self, requested: str, connector_id: int | None) -> bool:
        """TriggerMessage (OCPP 1.6 §5.17): send the requested message soon after the answer."""
        if connector_id is not None and connector_id not in self.model.ports:
            return False
        ports = [self.model.ports[connector_id]] if connector_id else list(self.model.ports.values())
        if requested == "StatusNotification":
            sends = [self._status(p.id, p.status) for p in ports]
        elif requested == "MeterValues":
            sends = [self._call(call.MeterValues(connector_id=p.id, transaction_id=p.transaction_id,
                                                 meter_value=[self._sample(p)])) for p in ports]
        elif requested == "Heartbeat":
            sends = [self._call(call.Heartbeat())]
        elif requested == "BootNotification":
            sends = [self._call(call.BootNotification(charge_point_model=self.product,
                                                      charge_point_vendor=self.vendor))]
        else:
            return False

        async def send_all() -> None:
            await asyncio.sleep(0)  # after the TriggerMessage answer has gone out
            for send in sends:
                await send

        asyncio.get_running_loop().create_task(send_all())
        return True

    def change_availability(self, connector_id: int, kind: str) -> str:
        targets = list(self.model.ports) if connector_id == 0 else [connector_id]
        if any(c not in self.model.ports for c in targets):
            return AvailabilityStatus.rejected
        if any(self.model.ports[c].transaction_id is not None for c in targets) and kind == "Inoperative":
            return AvailabilityStatus.scheduled  # takes effect when the transaction ends (§5.2)
        status = "Unavailable" if kind == "Inoperative" else "Available"
        for c in targets:
            asyncio.get_running_loop().create_task(self._status(c, status))
        return AvailabilityStatus.accepted

    async def reboot(self) -> None:
        """Reset: close the link after the answer; :meth:`run` reconnects and boots again."""
        await asyncio.sleep(0)
        if self._ws is not None:
            await self._ws.close()

    def remote_start(self, id_tag: str, connector_id: int | None, profile: dict | None) -> bool:
        candidates = [connector_id] if connector_id else list(self.model.ports)
        for cid in candidates:
            port = self.model.ports.get(cid)
            if port is not None and port.ev is not None and port.transaction_id is None:
                asyncio.get_running_loop().create_task(self._remote_start(cid, id_tag, profile))
                return True
        return False

    async def _remote_start(self, connector_id: int, id_tag: str, profile: dict | None) -> None:
        async with self._tx_lock:
            await self._start_transaction(connector_id, id_tag)
            if profile is not None and self.model.ports[connector_id].transaction_id is not None:
                self.set_profile(connector_id, profile)

    def remote_stop(self, transaction_id: int) -> bool:
        for port in self.model.ports.values():
            if port.transaction_id == transaction_id:
                asyncio.get_running_loop().create_task(self._remote_stop(port.id))
                return True
        return False

    async def _remote_stop(self, connector_id: int) -> None:
        async with self._tx_lock:
            if await self._stop_transaction(connector_id, "Remote"):
                await self._status(connector_id, "Finishing")
