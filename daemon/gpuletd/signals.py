"""What each signal a user can plausibly send does; every one is logged and none kills the
daemon without an orderly path (see `gpuletd --help`).

Installed before anything slow happens (restoring state, adopting backends): until the daemon
serves, a stop or a handoff is remembered and carried out as soon as it can be, and a reload
or a status request is logged and skipped (nothing is loaded yet to reload or report)."""

from __future__ import annotations

import asyncio
import enum
import signal
import time
from collections.abc import Callable

import structlog

from gpuletd.daemon import Daemon
from gpuletd.systemd import notify

__all__ = ["Ending", "Signals"]

log = structlog.get_logger("gpuletd")


class Ending(enum.Enum):
    STOP = "stopping"
    HANDOFF = "handing off to a new gpuletd"


_STOP = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
HANDLED = (*_STOP, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE)


def _monotonic_usec() -> str:
    # systemd (Type=notify-reload) wants to know when a reload began.
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


class Signals:
    def __init__(self) -> None:
        self._ending: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()
        self._daemon: Daemon | None = None
        self._reload: Callable[[], bool] | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in HANDLED:
            loop.add_signal_handler(sig, self._on_signal, sig)

    def serving(self, daemon: Daemon, reload: Callable[[], bool]) -> None:
        """From now on a reload and a status request can be carried out."""
        self._daemon, self._reload = daemon, reload

    @property
    def ending_requested(self) -> bool:
        return self._ending.done()

    async def ending(self) -> Ending:
        return await self._ending

    def _on_signal(self, sig: signal.Signals) -> None:
        name = sig.name
        if self._ending.done():
            log.warning(
                "daemon.signal_received",
                signal=name,
                action=f"ignored: {self._ending.result().value}",
            )
            return
        if sig in _STOP:
            log.info("daemon.signal_received", signal=name, action="stop")
            notify("STOPPING=1", f"STATUS={Ending.STOP.value}")
            self._ending.set_result(Ending.STOP)
        elif sig is signal.SIGUSR2:
            log.info("daemon.signal_received", signal=name, action="hand off")
            # The same process comes back (re-executed) and says READY=1 again.
            notify("RELOADING=1", _monotonic_usec(), f"STATUS={Ending.HANDOFF.value}")
            self._ending.set_result(Ending.HANDOFF)
        elif sig is signal.SIGPIPE:
            # A reader went away (a closed terminal, a log pipe). The write that caused it
            # fails with EPIPE where it happened; the daemon goes on.
            log.warning("daemon.signal_received", signal=name, action="ignored")
        elif self._daemon is None or self._reload is None:
            log.warning("daemon.signal_received", signal=name, action="ignored: still starting")
        elif sig is signal.SIGHUP:
            log.info("daemon.signal_received", signal=name, action="reload")
            notify("RELOADING=1", _monotonic_usec())
            self._reload()
            notify("READY=1", f"STATUS=serving, profile {self._daemon.runtime.profile.name}")
        else:
            log.info("daemon.status", **self._daemon.status())
