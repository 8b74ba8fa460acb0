"""Where gpuletd listens by default; shared by the daemon, the client and the CLI."""

from __future__ import annotations

import os

__all__ = ["ENV_ADDRESS", "default_address", "normalize_address", "socket_path"]

ENV_ADDRESS = "GPULET_ADDRESS"


def normalize_address(address: str) -> str:
    """A bare socket path (`/run/gpulet/gpulet.sock`, `./g.sock`, `g.sock`) as the `unix://`
    address gRPC needs; gRPC would otherwise resolve it as a host name ("Domain name not
    found"). A TCP address always has a `:port` (and a scheme has `:`), a path need not."""
    if address.startswith(("/", "./", "../", "~")) or ":" not in address:
        return "unix://" + os.path.abspath(os.path.expanduser(address))
    return address


def default_address() -> str:
    """`GPULET_ADDRESS`, else the system socket as root, else the user's runtime dir."""
    env = os.environ.get(ENV_ADDRESS)
    if env:
        return normalize_address(env)
    if os.geteuid() == 0:
        return "unix:///run/gpulet/gpulet.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/gpulet-{os.geteuid()}"
    return f"unix://{runtime}/gpulet/gpulet.sock"


def socket_path(address: str) -> str | None:
    """The filesystem path of a `unix://` address (`unix:///abs` or `unix:rel`), else None."""
    if address.startswith("unix://"):
        return address[len("unix://") :]
    if address.startswith("unix:"):
        return address[len("unix:") :]
    return None
