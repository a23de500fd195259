"""Shared by the RTU tests: a serial line without hardware, two pseudo-terminals joined like a null-modem cable."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def pty_line() -> AsyncIterator[tuple[str, str]]:
    """Two serial device paths joined like a null-modem cable: two ptys whose master ends the test bridges."""
    loop = asyncio.get_running_loop()
    master_a, slave_a = os.openpty()
    master_b, slave_b = os.openpty()
    for fd in (slave_a, slave_b):
        tty.setraw(fd)
    for fd in (master_a, master_b):
        os.set_blocking(fd, False)

    def carry(source: int, sink: int) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(sink, os.read(source, 4096))

    loop.add_reader(master_a, carry, master_a, master_b)
    loop.add_reader(master_b, carry, master_b, master_a)
    try:
        yield os.ttyname(slave_a), os.ttyname(slave_b)
    finally:
        loop.remove_reader(master_a)
        loop.remove_reader(master_b)
        for fd in (master_a, slave_a, master_b, slave_b):
            os.close(fd)
