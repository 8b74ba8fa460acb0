"""Where gpuletd keeps what must survive a restart: the state database and the backends' logs.

The same binary runs as a systemd service (which hands us `$STATE_DIRECTORY`), as root by hand,
and as an ordinary user for development; each gets the conventional place without a flag.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

__all__ = ["LOG_SUBDIR", "STATE_FILE", "default_state_dir"]

STATE_FILE: Final = "state.db"
# Backend (model server) log files live in <state dir>/logs.
LOG_SUBDIR: Final = "logs"

_SYSTEM_STATE_DIR: Final = Path("/var/lib/gpulet")


def default_state_dir(env: Mapping[str, str] = os.environ, *, euid: int | None = None) -> Path:
    """`$GPULET_STATE_DIR` > systemd's `$STATE_DIRECTORY` > /var/lib/gpulet for root >
    `$XDG_STATE_HOME/gpulet` > ~/.local/state/gpulet. Empty values count as unset, as a unit's
    `Environment=GPULET_STATE_DIR=` is meant to clear it."""
    explicit = env.get("GPULET_STATE_DIR")
    if explicit:
        return Path(explicit)
    # systemd lists one path per StateDirectory= entry, colon-separated; ours is the first.
    systemd = next((p for p in env.get("STATE_DIRECTORY", "").split(":") if p), None)
    if systemd:
        return Path(systemd)
    if (os.geteuid() if euid is None else euid) == 0:
        return _SYSTEM_STATE_DIR
    xdg = env.get("XDG_STATE_HOME")
    # The XDG spec says a relative value is invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "gpulet"
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".local" / "state" / "gpulet"
