"""What the running daemon knows: its configuration, active profile and GPU readings.

Replaced as a whole on a reload (SIGHUP); readers take `runtime.profile` / `.registry` at the
moment they need them, so they see either the old or the new configuration, never a mix."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gpuletd.active_profile import ActiveProfile, known_profiles
from gpuletd.bounds import Refused, listing, quote
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

    def known_profiles(self) -> Mapping[str, Profile]:
        """The profiles a name may pick now (active_profile.known_profiles)."""
        return known_profiles(self.active, self.config.profiles, self.poller.gpus)

    def profile_named(self, name: str, field: str) -> Profile:
        """The known profile `name` ("" is the active one), as it runs; raises Refused
        (NOT_FOUND, naming `field`) for a name no profile has."""
        if not name or name == self.profile.name:
            return self.profile
        known = self.known_profiles()
        found = known.get(name)
        if found is None:
            raise Refused(
                "NOT_FOUND",
                "UNKNOWN_PROFILE",
                f"{field}: unknown profile {quote(name)} (known profiles: {listing(known, 20)})",
                field,
            )
        return found

    @property
    def warnings(self) -> tuple[str, ...]:
        refused = (
            f"reload refused, still serving the previous configuration: {self.reload_error}",
        )
        return self.active.warnings + (refused if self.reload_error else ())
