"""What the running daemon knows: its configuration, active profile and GPU readings."""

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

    @property
    def profile(self) -> Profile:
        return self.active.profile

    @property
    def registry(self) -> Registry:
        return self.config.registry

    @property
    def gpus(self) -> list[GpuSnapshot]:
        return self.poller.gpus or []
