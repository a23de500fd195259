"""A CSMS nobody here wrote, for interop tests: ocpp-csms from PyPI, run as its own process on loopback.

ocpp-csms (Dr-Blank, AGPL-3.0-or-later) is an asyncio OCPP 1.6J central system built on the same
``ocpp`` library as our stations. Being AGPL, it is a test-only dependency that evbench never
imports — not even here: :func:`ocpp_csms` runs its own command line (``python -m ocpp_csms``) in a
subprocess, so none of its code runs in the test's process and the process can always be killed.
Its stdout and stderr go to a log file that failure messages quote.

What it is, read from its source (0.1.0; ``ocpp_csms/server.py`` and ``charge_point.py``):

- OCPP 1.6J only. A station that offers WebSocket subprotocols must offer ``ocpp1.6``, or the
  handshake ends in HTTP 400 "ocpp1.6 only": our 2.0.1 stations cannot connect.
- Any URL path: the last segment is the charge point id. :attr:`RunningCsms.url` ends in ``/ocpp``,
  so a station connects to ``ws://127.0.0.1:PORT/ocpp/CP01``, as a charger's backend URL would read.
- It answers what a charger sends: BootNotification (Accepted, heartbeat every 300 s), Heartbeat,
  StatusNotification, MeterValues, Authorize and StartTransaction (every id tag Accepted,
  transaction ids counting up from its start's Unix time), StopTransaction, DataTransfer
  (UnknownVendorId), firmware/diagnostics status and SecurityEventNotification. Anything else gets
  a NotImplemented CallError; schema violations a FormatViolation (the ``ocpp`` library's answer).
- It sends nothing on its own. It is a library whose owner calls ``async_call`` (SetChargingProfile
  included) from Python; its command line only prints events. So no SetChargingProfile, no
  TxDefaultProfile, no site limit, no load balancing: to the bench it is an uncontrolled site.
- Settings: the command line has ``--host``, ``--port`` (0 picks a free port, which it prints as
  ``listening on port N``) and ``--debug``. The Python API adds heartbeat interval, call timeout,
  WebSocket ping interval, TLS and hooks that decide who may connect, register and charge — but only
  from Python code that imports it, which we do not write. There is no setting for a site limit or
  a list of chargers, so an installer of the small-office site has nothing to enter: it runs as
  shipped and lets every charger in. ``--debug`` is on for the log's sake (connections, refused
  handshakes); despite its help text it logs no OCPP payloads (the ``ocpp_csms.wire`` logger stays at
  INFO), and our stations send no credentials anyway.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

DISTRIBUTION = "ocpp-csms"
_LISTENING = re.compile(r"^listening on port (\d+)$", re.MULTILINE)


def installed_version() -> str | None:
    """ocpp-csms's version from its package metadata (nothing of it is imported), or None if absent."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return None


requires_ocpp_csms = pytest.mark.skipif(
    installed_version() is None,
    reason=f"{DISTRIBUTION} is not installed in {sys.prefix}: it is an AGPL test-only dependency "
           "(pip install -e '.[test]', or pip install ocpp-csms)")


class CsmsFailed(RuntimeError):
    """ocpp-csms did not start; the message ends with its log."""


@dataclass(frozen=True)
class RunningCsms:
    """A running ocpp-csms: stations connect to ``url/<station id>``."""

    url: str
    port: int
    log_path: Path

    def log(self) -> str:
        """Everything it printed so far (events on stdout, log lines on stderr)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def ocpp_csms(log_dir: Path, start_timeout_s: float = 30.0, stop_timeout_s: float = 10.0) -> Iterator[RunningCsms]:
    """Run ocpp-csms on 127.0.0.1 with a free port until the block ends, then terminate it (kill it after
    ``stop_timeout_s``). Its log is ``log_dir/ocpp-csms.log`` and stays there. Raises :class:`CsmsFailed` if it
    exits, or does not accept connections within ``start_timeout_s``."""
    log_path = log_dir / "ocpp-csms.log"
    with log_path.open("w", encoding="utf-8") as log:
        # Output goes to a file, not a pipe: it prints every MeterValues, and a pipe nobody reads fills up and
        # blocks the CSMS mid-run.
        process = subprocess.Popen(
            [sys.executable, "-m", "ocpp_csms", "--host", "127.0.0.1", "--port", "0", "--debug"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=log_dir)
    try:
        port = _wait_until_listening(process, log_path, start_timeout_s)
        yield RunningCsms(f"ws://127.0.0.1:{port}/ocpp", port, log_path)
    finally:
        _stop(process, stop_timeout_s)


def _wait_until_listening(process: subprocess.Popen, log_path: Path, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CsmsFailed(f"ocpp-csms exited with status {process.returncode} before listening; its log:\n"
                             + log_path.read_text(encoding="utf-8", errors="replace"))
        found = _LISTENING.search(log_path.read_text(encoding="utf-8", errors="replace"))
        if found is not None and _accepts(int(found.group(1))):
            return int(found.group(1))
        time.sleep(0.05)
    raise CsmsFailed(f"ocpp-csms accepted no connection within {timeout_s:g} s; its log:\n"
                     + log_path.read_text(encoding="utf-8", errors="replace"))


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop(process: subprocess.Popen, timeout_s: float) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
