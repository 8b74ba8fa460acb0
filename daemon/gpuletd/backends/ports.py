"""Free loopback ports for process backends."""

from __future__ import annotations

import socket
import threading
from collections import deque

from gpuletd.backends.placeholders import LOOPBACK_HOST

__all__ = ["pick_free_port"]

# Ports handed out recently. The kernel may give the same ephemeral port to two binds in a row
# once the first socket is closed, and a backend binds its port only seconds after we picked it;
# remembering the last few keeps two concurrent starts in this daemon from getting the same one.
_RECENT: deque[int] = deque(maxlen=64)
_LOCK = threading.Lock()


def pick_free_port(host: str = LOOPBACK_HOST) -> int:
    """A TCP port on `host` that nothing listens on right now.

    There is an unavoidable window between this check and the backend's own bind: another
    program may take the port meanwhile. The backend then fails to start (it exits during start,
    which `ProcessBackend.start` reports at once) and the next attempt picks another port.
    """
    with _LOCK:
        for _ in range(32):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                # No SO_REUSEADDR: a port still in TIME_WAIT is not "free" for a server that
                # binds without it either.
                sock.bind((host, 0))
                port: int = sock.getsockname()[1]
            if port not in _RECENT:
                _RECENT.append(port)
                return port
        # Only reachable if the ephemeral range is nearly exhausted; a repeat is still free now.
        _RECENT.append(port)
        return port
