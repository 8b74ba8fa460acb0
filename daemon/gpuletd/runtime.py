"""What the running daemon knows: its configuration, active profile and GPU readings.

Replaced as a whole on a reload (SIGHUP); readers take `runtime.profile` / `.registry` at the
moment they need them, so they see either the old or the new configuration, never a mix."""

from __future__ import annotations

from dataclasses import dataclass

from gpuletd.active_profile import ActiveProfile
from gpuletd.config import Config
from gpuletd.probe.poller import ProbePoller
from gpuletd.probe.types import GpuSnapshot
from gpuletd.profiles import Profile
from gpuletd.registry import Registry

__all__ = ["Runtime"]


@dataclass
class Runtime:
    config: Config
    active: ActiveProfile
    poller: ProbePoller
    # Why the last reload was refused (the old configuration kept serving); empty when it
    # succeeded or none was asked for.
    reload_error: str = ""
    # Why the state file cannot be written now (a restart would lose this run's state).
    store_error: str = ""

    @property
    def profile(self) -> Profile:
        return self.active.profile

    @property
    def registry(self) -> Registry:
        return self.config.registry

    @property
    def gpus(self) -> list[GpuSnapshot]:
        return self.poller.gpus or []

    @property
    def warnings(self) -> tuple[str, ...]:
        refused = (
            f"reload refused, still serving the previous configuration: {self.reload_error}",
        )
        return self.active.warnings + (refused if self.reload_error else ())
