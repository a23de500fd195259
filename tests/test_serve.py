"""`evbench serve`: a reference controller as a standalone CSMS that the bench (or a lab charger) connects to."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.runner import run_scenario
from bench.trace import load_trace


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def test_served_equal_share_drives_the_bench_stations_by_url(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.cli", "serve", "equal_share", "--scenario",
                               "small-office", "--port", str(port), "--limit", "64"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert listening(port), server.stderr.read() if server.poll() is not None else "not listening"
        result = run_scenario("small-office", f"ws://127.0.0.1:{port}", trace=tmp_path / "t.db", speed=20,
                              duration_s=240)
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert f"equal_share serving OCPP 1.6 and 2.0.1 at ws://127.0.0.1:{port}/<station id>" in err
    assert "site limit 64 A" in err
    trace = load_trace(tmp_path / "t.db")
    booted = {m["station"] for m in trace.messages if m["action"] == "BootNotification" and m["kind"] == "result"}
    assert booted == {"CP01", "CP02", "CP03", "CP04"}
    # The served controller installs its failsafe at boot: 64 A shared by 4 chargers → 16 A each.
    failsafe = [json.loads(m["payload"]) for m in trace.messages
                if m["action"] == "SetChargingProfile" and m["kind"] == "call" and m["direction"] == "to_station"]
    assert failsafe and all(p["csChargingProfiles"]["chargingProfilePurpose"] == "TxDefaultProfile" for p in failsafe)
    assert {p["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] for p in failsafe} == {16}
    assert result.checks  # judged like any run


def test_serve_refuses_a_url_and_bad_flags(tmp_path: Path) -> None:
    for args, message in ((["ws://127.0.0.1:9/x"], "serve runs an in-process controller"),
                          (["equal_share", "--meter", "nonsense"], "--meter: expected HOST:PORT"),
                          (["equal_share", "--limit", "-3"], "--limit: expected a positive current"),
                          (["nobody"], "unknown controller 'nobody'")):
        done = subprocess.run([sys.executable, "-m", "bench.cli", "serve", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
