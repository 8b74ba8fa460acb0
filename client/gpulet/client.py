"""`gpulet.Client`: gpuletd's services for blocking Python callers.

    with gpulet.Client() as client:
        with client.lease(role="caption") as lease:   # renewed in the background
            requests.post(lease.endpoint + "/chat/completions", ...)

`gpulet.AsyncClient` (in `gpulet.async_client`) has the same methods in the same order.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TypeVar

import grpc

from gpulet import convert
from gpulet.async_client import AsyncClient
from gpulet.base import DEFAULT_TIMEOUT, BaseClient, check_socket
from gpulet.errors import GpuletError
from gpulet.lease import renew_in_thread, renew_interval
from gpulet.types import (
    ActiveProfile,
    Explanation,
    GpuStatus,
    Lease,
    Model,
    Plan,
    Profile,
    ProfileList,
    Progress,
    ProgressCallback,
    QueueItem,
    Selection,
    WatchEvent,
)
from gpulet.v1 import (
    leases_pb2_grpc,
    profiles_pb2,
    profiles_pb2_grpc,
    selector_pb2_grpc,
)

# AsyncClient is re-exported: `from gpulet.client import AsyncClient` predates its module.
__all__ = ["AsyncClient", "Client", "check_socket"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Client(BaseClient):
    """Blocking client. Every method raises a `gpulet.GpuletError` subclass on failure.

    `address`: `unix:///path`, a bare socket path, or `host:port` (default: `GPULET_ADDRESS`,
    else the system or user socket). `channel`: a `grpc.Channel` to use instead of dialing
    `address` (tests pass a `grpc_testing` channel); it is left open by `close()`.
    `timeout`: seconds each call but `acquire()` and `watch()` may take."""

    def __init__(
        self,
        *,
        address: str | None = None,
        channel: grpc.Channel | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(address=address, timeout=timeout)
        self._owns_channel = channel is None
        if channel is None:
            check_socket(self.address)
            channel = grpc.insecure_channel(self.address)
        self._channel = channel
        self._profiles = profiles_pb2_grpc.ProfileServiceStub(channel)
        self._selector = selector_pb2_grpc.SelectorServiceStub(channel)
        self._leases = leases_pb2_grpc.LeaseServiceStub(channel)

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise self._unary_error(e, request) from None

    # -- profiles and GPUs --------------------------------------------------------------------

    def active_profile(self) -> ActiveProfile:
        r = self._call(self._profiles.GetActiveProfile, self._ACTIVE_PROFILE)
        return convert.active_profile(r)

    def list_profiles(self) -> ProfileList:
        return convert.profile_list(self._call(self._profiles.ListProfiles, self._LIST_PROFILES))

    def get_profile(self, name: str) -> Profile:
        r = self._call(self._profiles.GetProfile, profiles_pb2.GetProfileRequest(name=name))
        return convert.profile(r.profile)

    def gpu_status(self, *, include_processes: bool = False) -> GpuStatus:
        req = profiles_pb2.GetGpuStatusRequest(include_processes=include_processes)
        return convert.gpu_status(self._call(self._profiles.GetGpuStatus, req))

    # -- models and selection -----------------------------------------------------------------

    def models(self) -> list[Model]:
        r = self._call(self._selector.ListModels, self._LIST_MODELS)
        return [convert.model(m) for m in r.models]

    def roles(self) -> list[str]:
        return list(self._call(self._selector.ListRoles, self._LIST_ROLES).roles)

    def select(
        self, role: str, *, top_n: int | None = None, profile: str | None = None
    ) -> Selection:
        """`profile`: what this machine would offer under that profile (default: the active)."""
        req = self._select_request(role, top_n, profile)
        return convert.selection(self._call(self._selector.SelectByRole, req))

    def explain(self, role: str, model_id: str, *, profile: str | None = None) -> Explanation:
        req = self._explain_request(role, model_id, profile)
        return convert.explanation(self._call(self._selector.ExplainSelection, req), role, model_id)

    # -- leases -------------------------------------------------------------------------------

    def acquire(
        self,
        model_id: str | None = None,
        *,
        role: str | None = None,
        vram_mb: int | None = None,
        client_name: str | None = None,
        ttl: float | None = None,
        priority: int = 0,
        exclusive: bool = False,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Lease:
        """Wait (queued, then loading) until the lease is granted, and claim it.

        Give one of `model_id`, `role` or `vram_mb`: a *memory lease* of that many MiB of raw
        VRAM on one GPU, for loading something not in the registry yourself (its
        `lease.model_id` is "vram:<lease id>"); queued, evicted for and expired like any lease.
        `ttl`: seconds the lease lives without renewal (None: the daemon's default, 60 s).
        `timeout`: how long to wait for the grant (None: as long as it takes)."""
        req = self._acquire_request(
            model_id, role, client_name, ttl, priority, exclusive, timeout, vram_mb
        )
        lease: Lease | None = None
        last: Progress | None = None
        try:
            # Read to the end of the stream (the daemon ends it right after the grant):
            # closing it early would tell the daemon the grant never arrived.
            for r in self._leases.Acquire(req, timeout=timeout):
                if r.HasField("granted"):
                    lease = convert.lease(r.granted)
                elif (step := convert.progress(r)) is not None:
                    last = step
                    if on_progress is not None:
                        on_progress(step)
        except grpc.RpcError as e:
            waited = self._acquire_waited_for(model_id, role, last, vram_mb)
            raise self._error(e, waited_for=waited, timeout=timeout) from None
        if lease is None:
            raise self._no_grant()
        # The claim: the daemon learns the grant arrived (else it ends the lease soon).
        return self.renew(lease)

    def renew(
        self, lease: Lease | str, token: str | None = None, *, ttl: float | None = None
    ) -> Lease:
        """Extend `lease` (a `Lease`, or a lease id and its token) by `ttl` seconds from now
        (None: the lease's own TTL). Returns the lease with its new `expires_at`."""
        r = self._call(self._leases.Renew, self._renew_request(lease, token, ttl))
        return self._renewed(lease, token, r)

    def release(self, lease: Lease | str, token: str | None = None) -> None:
        """End `lease` now: a `Lease`, or a lease id and its token."""
        self._call(self._leases.Release, self._release_request(lease, token))

    def list_leases(self) -> list[Lease]:
        """Every live lease, without tokens."""
        r = self._call(self._leases.ListLeases, self._LIST_LEASES)
        return [convert.lease(m) for m in r.leases]

    def queue(self) -> list[QueueItem]:
        """Every request waiting for a lease, in turn order (those waiting on a load under
        way last), each with what it waits for."""
        r = self._call(self._leases.ListQueue, self._LIST_QUEUE)
        return [convert.queue_item(m) for m in r.requests]

    def plan(
        self,
        model_id: str | None = None,
        *,
        role: str | None = None,
        priority: int = 0,
        exclusive: bool = False,
        vram_mb: int | None = None,
    ) -> Plan:
        """What `acquire` would meet now, without changing anything: granted at once, a load
        (on which GPUs, evicting which idle models at what reload cost), a wait (position and
        what for) or a refusal. Raises NotFound for an unknown model, UnknownRole for an
        unknown role; a refusal the acquire would meet is an answer (`PlanOutcome.REFUSED`)."""
        req = self._plan_request(model_id, role, priority, exclusive, vram_mb)
        r = self._call(self._leases.Plan, req)
        return convert.plan(r)

    def watch(self) -> Iterator[WatchEvent]:
        """Every state change of models and leases from now on, until the daemon stops."""
        try:
            for r in self._leases.Watch(self._WATCH, timeout=None):
                if (event := convert.watch_event(r)) is not None:
                    yield event
        except grpc.RpcError as e:
            raise self._error(e, waited_for="events", timeout=None) from None

    @contextlib.contextmanager
    def lease(
        self,
        model_id: str | None = None,
        *,
        role: str | None = None,
        vram_mb: int | None = None,
        client_name: str | None = None,
        ttl: float | None = None,
        priority: int = 0,
        exclusive: bool = False,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Iterator[Lease]:
        """Hold a lease for the `with` block: renewed in the background, released on exit.

        If a renewal finds the lease gone (it expired, or the backend died), `lease.lost` is
        set and `lease.lost_reason` says why; the block is not interrupted."""
        lease = self.acquire(
            model_id,
            role=role,
            vram_mb=vram_mb,
            client_name=client_name,
            ttl=ttl,
            priority=priority,
            exclusive=exclusive,
            timeout=timeout,
            on_progress=on_progress,
        )
        stop = threading.Event()
        thread = renew_in_thread(
            lease, renew_interval(lease, ttl), lambda: self.renew(lease, ttl=ttl), stop
        )
        try:
            yield lease
        finally:
            stop.set()
            thread.join()
            if not lease.lost.is_set():
                with contextlib.suppress(GpuletError):
                    self.release(lease)
