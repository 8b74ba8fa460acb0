"""What each signal a user can plausibly send does; every one is logged and none kills the
daemon without an orderly path (see `gpuletd --help`)."""

from __future__ import annotations

import asyncio
import enum
import signal
from collections.abc import Callable

import structlog

from gpuletd.active_profile import ActiveProfile
from gpuletd.config import Config
from gpuletd.daemon import Daemon

__all__ = ["Ending", "Signals"]

log = structlog.get_logger("gpuletd")


class Ending(enum.Enum):
    STOP = "stopping"
    HANDOFF = "handing off to a new gpuletd"


_STOP = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


class Signals:
    def __init__(self, daemon: Daemon, load: Callable[[], tuple[Config, ActiveProfile]]) -> None:
        self._daemon = daemon
        self._load = load
        self._ending: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (*_STOP, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE):
            loop.add_signal_handler(sig, self._on_signal, sig)

    async def ending(self) -> Ending:
        return await self._ending

    def _on_signal(self, sig: signal.Signals) -> None:
        name = sig.name
        if self._ending.done():
            log.warning(
                "daemon.signal", signal=name, action=f"ignored: {self._ending.result().value}"
            )
            return
        if sig in _STOP:
            log.info("daemon.signal", signal=name, action="stop")
            self._ending.set_result(Ending.STOP)
        elif sig is signal.SIGUSR2:
            log.info("daemon.signal", signal=name, action="hand off")
            self._ending.set_result(Ending.HANDOFF)
        elif sig is signal.SIGHUP:
            log.info("daemon.signal", signal=name, action="reload")
            self._daemon.reload(self._load)
        elif sig is signal.SIGUSR1:
            log.info("daemon.status", **self._daemon.status())
        else:
            # SIGPIPE: a reader went away (a closed terminal, a log pipe). The write that
            # caused it fails with EPIPE where it happened; the daemon goes on.
            log.warning("daemon.signal", signal=name, action="ignored")
