"""The controller side of the site meter: the Modbus client (controllers/meter_client.py) and what
equal_share (controllers/equal_share.py) does when the meter fails.

The client is tested against the emulated meter (:class:`emulators.meter.MeterServer`) for every
bundled register map and every fault the meter can show: over Modbus TCP on 127.0.0.1 in virtual
time, and over Modbus RTU on a pseudo-terminal pair in wall-clock time (see :func:`null_modem`).
equal_share is tested as a pure object, fed the hooks the host would call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import socket
import tty
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.api import MeterEndpoint, MeterSample, Session, SiteConfig, SiteReading, StationConfig
from controllers.equal_share import EqualShare
from controllers.meter_client import MeterBus, MeterClient, MeterUnavailable
from controllers.register_map import load_register_map, meter_models
from emulators.meter import MeterReading, MeterServer
from virtual_time import virtual

START = 1_718_000_000.0
MODELS = meter_models()

READING = MeterReading(
    voltages_v=(230.5, 231.0, 229.25),
    currents_a=(16.0, 15.5, 0.25),
    power_w=(3680.0, 3580.5, -57.5),
    import_kwh=12345.5,
    export_kwh=6.75,
    frequency_hz=49.95,
)
LATER = MeterReading(
    voltages_v=(228.0, 227.5, 226.0),
    currents_a=(31.5, 30.0, 29.75),
    power_w=(7182.0, 6825.0, 6723.5),
    import_kwh=12346.25,
    export_kwh=6.75,
    frequency_hz=50.02,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def meter(model: str = "sdm630", reading: MeterReading = READING, **options):
    """A started MeterServer serving ``reading``; stopped on exit."""
    server = MeterServer(model, **options)
    await server.update(reading)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def assert_reads(got, reading: MeterReading, model: str) -> None:
    """``got`` is ``reading`` as the model's registers carry it: within half a step of each register's scale."""
    rmap = load_register_map(model)
    truth = reading.quantities()

    def close(quantity: str, value: float | None) -> None:
        register = rmap.register(quantity)
        if register is None:
            return
        assert value is not None, quantity
        step = 1e-6 * abs(truth[quantity]) if register.type == "float32" else 0.5 / register.scale
        assert abs(value - truth[quantity]) <= step + 1e-9, (model, quantity, value, truth[quantity])

    for i, phase in enumerate(("l1", "l2", "l3")):
        close(f"current_{phase}", got.currents_a[i])
        close(f"voltage_{phase}", got.voltages_v[i] if got.voltages_v else None)
    close("power_total", got.power_w)
    close("import_kwh", got.import_kwh)
    close("export_kwh", got.export_kwh)
    close("frequency_hz", got.frequency_hz)


# --------------------------------------------------------------------------------------------------------------
# Reading every bundled model
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_client_reads_every_model_with_its_own_scaling_and_word_order(model):
    async def main():
        async with meter(model, device_id=7) as server:
            async with MeterClient(MeterEndpoint(model, port=server.port, unit_id=7)) as client:
                assert_reads(await client.read(), READING, model)
                await server.update(LATER)
                assert_reads(await client.read(), LATER, model)

    virtual(main)


def test_a_client_configured_with_the_wrong_function_code_fails_as_on_the_device(tmp_path: Path):
    # The installer's map says holding registers (FC 3); an SDM630 serves its measurements as input registers.
    text = (resources.files("fixtures") / "meters" / "sdm630.toml").read_text(encoding="utf-8")
    path = tmp_path / "sdm630-fc3.toml"
    path.write_text(text.replace("function_code = 4", "function_code = 3"), encoding="utf-8")

    async def main():
        async with meter("sdm630") as server, MeterClient(MeterEndpoint(str(path), port=server.port)) as client:
            with pytest.raises(MeterUnavailable, match="ILLEGAL_FUNCTION"):
                await client.read()

    virtual(main)


def test_a_unit_the_gateway_does_not_have_is_unavailable():
    async def main():
        async with meter("sdm630", device_id=1) as server:
            async with MeterClient(MeterEndpoint(port=server.port, unit_id=2)) as client:
                with pytest.raises(MeterUnavailable, match="GATEWAY_NO_RESPONSE"):
                    await client.read()

    virtual(main)


def test_a_map_without_what_a_load_manager_needs_is_refused(tmp_path: Path):
    path = tmp_path / "voltmeter.toml"
    path.write_text("""name = "A voltmeter"
function_code = 4
word_order = "high_first"
[registers]
voltage_l1 = { address = 0, type = "float32", scale = 1, unit = "V" }
""", encoding="utf-8")
    with pytest.raises(ValueError, match="current_l1, current_l2, current_l3, import_kwh"):
        MeterClient(MeterEndpoint(str(path)))


# --------------------------------------------------------------------------------------------------------------
# Faults, and recovering from them
# --------------------------------------------------------------------------------------------------------------


def _now() -> float:
    return asyncio.get_running_loop().time()


def test_a_meter_nobody_listens_for_is_unavailable_at_once():
    async def main():
        async with MeterClient(MeterEndpoint(port=free_port())) as client:
            start = _now()
            with pytest.raises(MeterUnavailable, match="unreachable"):
                await client.read()
            assert _now() - start < 0.1  # refused, not timed out

    virtual(main)


def test_a_meter_that_never_answers_costs_timeout_times_attempts():
    async def main():
        requests: list[bytes] = []

        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while chunk := await reader.read(1024):  # swallow requests, answer nothing
                requests.append(chunk)
            writer.close()

        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with MeterClient(MeterEndpoint(port=port), timeout_s=1.0, retries=2) as client:
                start = _now()
                with pytest.raises(MeterUnavailable, match="no answer") as failure:
                    await client.read()
                assert 3.0 <= _now() - start <= 3.5
                assert len(requests) == 3  # one per attempt, each on a fresh connection
                assert "Eastron SDM630 at 127.0.0.1" in str(failure.value)
        finally:
            server.close()
            await server.wait_closed()

    virtual(main)


def test_unreachable_meter_is_reported_quickly_and_read_again_when_back():
    async def main():
        async with meter("sdm630") as server:
            async with MeterClient(MeterEndpoint(port=server.port), timeout_s=1.0, retries=1) as client:
                assert_reads(await client.read(), READING, "sdm630")
                server.set_fault("unreachable")
                await asyncio.sleep(0.5)
                start = _now()
                with pytest.raises(MeterUnavailable):
                    await client.read()
                assert _now() - start <= 2 * 1.0 + 0.1  # within timeout × (retries + 1)
                server.set_fault(None)
                await asyncio.sleep(0.5)
                await server.update(LATER)
                assert_reads(await client.read(), LATER, "sdm630")

    virtual(main)


def test_a_slow_meter_times_out_and_its_late_answers_are_not_taken_for_new_ones():
    async def main():
        async with meter("em24") as server:
            async with MeterClient(MeterEndpoint("em24", port=server.port), timeout_s=1.0, retries=1) as client:
                server.set_fault("slow", slow_s=3.0)
                start = _now()
                with pytest.raises(MeterUnavailable, match="no answer"):
                    await client.read()
                assert 2.0 <= _now() - start <= 2.5
                server.set_fault(None)
                await server.update(LATER)
                assert_reads(await client.read(), LATER, "em24")
                await asyncio.sleep(5)  # the slow answers to the abandoned requests are due by now
                assert_reads(await client.read(), LATER, "em24")

    virtual(main)


@pytest.mark.parametrize("fault", ["garbage", "word_order"])
@pytest.mark.parametrize("model", MODELS)
def test_garbage_and_a_swapped_word_order_are_refused_as_implausible(model, fault):
    # Swapped words turn 230 V into 15 MV for integer maps, and 50 Hz into a subnormal float for
    # float maps; the frequency check catches those (their currents and voltages would pass as ~0).
    async def main():
        async with meter(model) as server, MeterClient(MeterEndpoint(model, port=server.port)) as client:
            assert_reads(await client.read(), READING, model)
            server.set_fault(fault)
            with pytest.raises(MeterUnavailable, match="implausible"):
                await client.read()
            server.set_fault(None)
            await server.update(LATER)
            assert_reads(await client.read(), LATER, model)

    virtual(main)


def test_a_frozen_meter_keeps_answering_with_old_values():
    async def main():
        async with meter("b23") as server, MeterClient(MeterEndpoint("b23", port=server.port)) as client:
            server.set_fault("frozen")
            await server.update(LATER)
            assert_reads(await client.read(), READING, "b23")
            server.set_fault(None)
            await server.update(LATER)
            assert_reads(await client.read(), LATER, "b23")

    virtual(main)


def test_an_energy_register_running_backwards_is_implausible():
    async def main():
        async with meter("sdm630") as server, MeterClient(MeterEndpoint(port=server.port)) as client:
            await client.read()
            await server.update(dataclasses.replace(LATER, import_kwh=READING.import_kwh - 1.0))
            with pytest.raises(MeterUnavailable, match="import_kwh.*ran backwards"):
                await client.read()
            await server.update(LATER)
            assert_reads(await client.read(), LATER, "sdm630")

    virtual(main)



class WordsBus(MeterBus):
    """A bus that answers every request with the words a test gives (no I/O)."""

    def __init__(self, words: list[int]) -> None:
        super().__init__(MeterEndpoint())
        self.words = words

    async def read(self, function_code: int, address: int, count: int, unit_id: int) -> list[int]:
        return [self.words[(address + i) % len(self.words)] for i in range(count)]


@settings(max_examples=200, deadline=None)
@given(model=st.sampled_from(MODELS), words=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=64))
def test_any_words_give_a_plausible_reading_or_meter_unavailable(model, words):
    client = MeterClient(MeterEndpoint(model), retries=0, bus=WordsBus(words))
    try:
        got = asyncio.run(client.read())
    except MeterUnavailable as error:
        assert "implausible" in str(error)
        return
    values = [*got.currents_a, got.power_w, got.import_kwh, *(got.voltages_v or ()), got.export_kwh or 0.0]
    assert all(math.isfinite(v) for v in values)
    assert all(abs(a) < 10_000 for a in got.currents_a)
    assert all(0 <= v < 1000 for v in got.voltages_v or ())
    assert got.frequency_hz is None or 40 <= got.frequency_hz <= 70
    assert got.import_kwh >= 0 and (got.export_kwh or 0.0) >= 0

# --------------------------------------------------------------------------------------------------------------
# Modbus RTU over a pseudo-terminal pair, several meters on one bus
# --------------------------------------------------------------------------------------------------------------


# These run in wall-clock time: a pty hands bytes on in a kernel work queue, after the write has
# returned, so a virtual clock that jumps whenever no fd is ready would time out reads in flight.


@contextmanager
def null_modem() -> Iterator[tuple[str, str]]:
    """Two serial device paths wired to each other: two pty pairs whose masters the loop relays."""
    loop = asyncio.get_running_loop()
    pairs = [os.openpty(), os.openpty()]
    for _master, slave in pairs:
        tty.setraw(slave)  # no echo, no line editing before the serial client configures the port

    def relay(source: int, sink: int) -> None:
        try:
            os.write(sink, os.read(source, 4096))
        except OSError:
            pass  # a side closed its port for a moment (the client reconnecting)

    (master_a, _), (master_b, _) = pairs
    loop.add_reader(master_a, relay, master_a, master_b)
    loop.add_reader(master_b, relay, master_b, master_a)
    try:
        yield os.ttyname(pairs[0][1]), os.ttyname(pairs[1][1])
    finally:
        loop.remove_reader(master_a)
        loop.remove_reader(master_b)
        for fds in pairs:
            for fd in fds:
                os.close(fd)


@pytest.mark.parametrize("model", MODELS)
def test_client_reads_every_model_over_rtu(model):
    async def main():
        with null_modem() as (meter_side, controller_side):
            async with meter(model, serial_port=meter_side, baudrate=9600):
                endpoint = MeterEndpoint(model, serial_port=controller_side, baudrate=9600)
                async with MeterClient(endpoint) as client:
                    assert_reads(await client.read(), READING, model)

    asyncio.run(main())


def test_one_rtu_bus_serves_the_site_meter_and_a_sub_meter_one_request_at_a_time():
    async def main():
        with null_modem() as (meter_side, controller_side):
            async with meter("sdm630", serial_port=meter_side, sub_meters={3: "em24"}) as server:
                await server.update(LATER, unit=3)
                site = MeterEndpoint("sdm630", serial_port=controller_side)
                bus = MeterBus(site)
                try:
                    site_meter = MeterClient(site, bus=bus)
                    sub_meter = MeterClient(dataclasses.replace(site, model="em24"), unit_id=3, bus=bus)
                    for _ in range(3):
                        got_site, got_sub = await asyncio.gather(site_meter.read(), sub_meter.read())
                        assert_reads(got_site, READING, "sdm630")
                        assert_reads(got_sub, LATER, "em24")
                    # A unit nobody answers for on RS-485: silence, so a timeout per attempt.
                    absent = MeterClient(site, unit_id=9, bus=bus, retries=1)  # the bus times out after 1 s
                    start = _now()
                    with pytest.raises(MeterUnavailable, match="no answer"):
                        await absent.read()
                    assert 2.0 <= _now() - start <= 2.5
                    assert_reads(await site_meter.read(), READING, "sdm630")
                finally:
                    await bus.close()

    asyncio.run(main())

# --------------------------------------------------------------------------------------------------------------
# equal_share when the meter fails (pure: the hooks are fed as the host would)
# --------------------------------------------------------------------------------------------------------------

EV_A = ("CP1", 1), ("CP2", 1)


class Plant:
    """A tiny site around an EqualShare, one step a second: two three-phase EVs draw what they are offered
    (up to ``ev_max_a``), a building draws ``building_a`` on every phase. The stations report every 10 s
    over OCPP; the site meter is read every second and behaves as ``meter`` says:

    "ok" — true values; "frozen" — the values it showed when it froze, again and again; "unavailable" —
    every read fails; "silent" — no read completes at all (neither a reading nor a failure).
    """

    def __init__(self, building_a: float = 10.0, ev_max_a: float = 16.0) -> None:
        self.controller = EqualShare(SiteConfig(limit_a=32.0, stations=(StationConfig("CP1"), StationConfig("CP2"))))
        self.building_a, self.ev_max_a = building_a, ev_max_a
        self.t = START
        self.meter = "ok"
        self.offers = dict.fromkeys(EV_A, self.controller.failsafe_a("CP1"))
        self.site_peak_a = 0.0
        self._shown: SiteReading | None = None
        for station_id, connector_id in EV_A:
            self.controller.on_session_started(Session(station_id, connector_id, 1, "TAG", START), START)

    def drawn_a(self, key: tuple[str, int]) -> float:
        return min(self.offers[key], self.ev_max_a)

    def site_a(self) -> float:
        return self.building_a + sum(self.drawn_a(key) for key in EV_A)

    def run(self, seconds: int) -> None:
        c = self.controller
        for _ in range(seconds):
            self.t += 1
            self.site_peak_a = max(self.site_peak_a, self.site_a())
            if self.t % 10 == 0:
                for key in EV_A:
                    drawn = self.drawn_a(key)
                    c.on_meter_sample(MeterSample(*key, self.t, (drawn,) * 3, self.offers[key]), self.t)
            if self.meter == "ok" or (self.meter == "frozen" and self._shown is None):
                site = self.site_a()
                self._shown = SiteReading(self.t, (site,) * 3, site * 690, 0.0, changed_at=self.t)
            if self.meter in ("ok", "frozen"):
                assert self._shown is not None
                c.on_site_reading(dataclasses.replace(self._shown, timestamp=self.t), self.t)
            elif self.meter == "unavailable":
                c.on_meter_unavailable("no answer", self.t)
            if self.meter != "frozen":
                self._shown = None
            if self.t % 5 == 0:
                self.offers.update((key, d.limit_a) for key, d in c.allocate(self.t).items())


def test_equal_share_settles_under_the_limit_with_a_working_meter():
    plant = Plant()
    plant.run(60)  # the failsafe shares (16 A each) and the building overload the site until the first cuts
    plant.site_peak_a = 0.0
    plant.run(240)
    assert plant.controller.meter_fault is None
    assert 26.0 <= plant.site_a() <= 31.0  # the limit minus the margin, mostly used
    assert plant.site_peak_a <= 32.0


@pytest.mark.parametrize("fault", ["unavailable", "silent", "frozen"])
def test_equal_share_holds_its_budget_while_the_meter_cannot_be_trusted(fault):
    plant = Plant(building_a=20.0)
    plant.run(300)
    held = plant.controller.budget_a
    assert held is not None and 10.0 <= held <= 11.0  # 32 - 1 - 20 A of building
    # The building drops: a working meter would let the EVs have 10 A more. This one has failed.
    plant.meter = fault
    plant.run(1)
    plant.building_a = 10.0
    plant.run(120)
    expected = {"unavailable": "unavailable", "silent": "stale", "frozen": "frozen"}[fault]
    assert plant.controller.meter_fault == expected
    assert plant.controller.budget_a == pytest.approx(held)
    assert sum(plant.offers.values()) <= held + 1e-9
    # The meter comes back: the loop resumes from the held budget and takes the headroom.
    plant.meter = "ok"
    plant.run(120)
    assert plant.controller.meter_fault is None
    assert plant.controller.budget_a >= 19.0
    assert 29.0 <= plant.site_a() <= 31.0


def test_equal_share_cuts_to_the_safe_budget_when_the_meter_fails_with_load_rising():
    plant = Plant(building_a=10.0)
    plant.run(300)
    before = plant.controller.budget_a
    assert before is not None and before >= 19.0  # the 21 A of headroom, less the 2 A deadband it leaves alone
    # The building takes 8 A more; the meter shows it once, then fails before the next allocation.
    plant.building_a = 18.0
    while plant.t % 5 != 3:
        plant.run(1)
    plant.meter = "unavailable"
    plant.run(5)
    # Safe budget: 32 A - 1 A margin - the non-EV load of the last reading (its worst phase minus what
    # the EVs drew by their OCPP samples: 18 A). Cut at once, not one step at a time.
    assert plant.controller.meter_fault == "unavailable"
    assert plant.controller.budget_a == pytest.approx(32.0 - 1.0 - 18.0)
    assert sum(plant.offers.values()) <= 13.0 + 1e-9
    plant.run(120)
    assert plant.site_a() <= 31.0


def test_equal_share_trusts_a_meter_that_refreshes_every_10_s_and_one_that_sees_no_load():
    plant = Plant()
    plant.run(300)
    # A meter whose values change only every 10 s is slow, not frozen.
    for _ in range(12):
        plant.meter = "frozen"
        plant.run(10)
        assert plant.controller.meter_fault is None
        plant.meter = "ok"
        plant.run(1)
    # Unchanged values with no EV drawing are what an idle site shows.
    plant.ev_max_a = 0.0
    plant.run(30)
    plant.meter = "frozen"
    plant.run(120)
    assert plant.controller.meter_fault is None


def test_equal_share_keeps_the_failsafe_without_a_trusted_reading():
    plant = Plant()
    plant.meter = "unavailable"
    plant.run(60)
    assert plant.controller.reading is None and plant.controller.budget_a is None
    assert plant.offers == dict.fromkeys(EV_A, 16.0)  # the failsafe share: floor(32 A / 2 stations)
    # A reading that has gone stale before the first allocation does not count either.
    controller = plant.controller
    controller.on_site_reading(SiteReading(plant.t, (10.0,) * 3, 6900.0, 0.0, changed_at=plant.t), plant.t)
    assert controller.allocate(plant.t + 60) == {}
    assert controller.meter_fault == "stale" and controller.budget_a is None


def test_equal_share_ignores_sub_meter_samples():
    plant = Plant()
    plant.run(300)
    offers = dict(plant.offers)
    for key in EV_A:
        plant.controller.on_meter_sample(MeterSample(*key, plant.t, (0.0, 0.0, 0.0), energy_wh=9e6, source="modbus"),
                                         plant.t)
    assert plant.controller.samples[EV_A[0]].source == "ocpp"
    assert plant.controller.energy_wh[EV_A[0]] < 1e6
    plant.run(5)
    assert plant.offers == offers
