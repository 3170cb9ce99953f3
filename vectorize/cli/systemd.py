"""systemd's notify protocol: READY=1 once serving, WATCHDOG=1 while alive.

A few lines over a datagram socket, so no dependency: ``NOTIFY_SOCKET`` names
a Unix datagram socket (a leading "@" means the abstract namespace).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

#: The logger keeps the name it has had since the first release (operators filter on it).
log = logging.getLogger("vectorize.systemd")


def notify(message: str, env: dict[str, str] | None = None) -> bool:
    """Send ``message`` to systemd; returns False when not run under a notify-type unit."""
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """Half of WATCHDOG_USEC in seconds (systemd's advice), if the unit has a watchdog."""
    raw = (env if env is not None else os.environ).get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        return int(raw) / 2_000_000
    except ValueError:
        log.warning("event=bad_watchdog_usec value=%r", raw)
        return None


async def watchdog(stop: asyncio.Event, interval: float) -> None:
    """Ping until ``stop``; the event loop being responsive is what the ping proves."""
    while not stop.is_set():
        notify("WATCHDOG=1")
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
