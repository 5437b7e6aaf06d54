"""sd_notify for the supervisor: READY, STATUS, WATCHDOG and STOPPING datagrams to systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger("headrace.notify")

# systemd reads its socket at once; a full queue must not hold up restarts for long
_SEND_TIMEOUT_S = 1.0


class Notifier:
    """Talks to the service manager when one asked for it (``NOTIFY_SOCKET``); otherwise does nothing.

    ``watchdog_interval`` is the time between two ``WATCHDOG=1`` (half of ``WATCHDOG_USEC``), or None
    when the service manager does not watch this process.
    """

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog_usec / 2e6 if address and watchdog_usec else None
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Take (and remove, so that no child or model code talks to systemd in our name) the variables
        systemd sets for a Type=notify service: NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID."""
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None) or None
        raw_usec = env.pop("WATCHDOG_USEC", None)
        watchdog_pid = env.pop("WATCHDOG_PID", None)
        usec: int | None = None
        if raw_usec and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            try:
                usec = int(raw_usec)
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw_usec)
        return cls(address, usec if usec and usec > 0 else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> None:
        """One datagram of ``KEY=value`` lines; a failure is logged, never raised."""
        if self.address is None:
            return
        # an address starting with "@" is in the abstract namespace (leading NUL byte)
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.settimeout(_SEND_TIMEOUT_S)
            self._sock.sendto("\n".join(fields).encode(), target)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
