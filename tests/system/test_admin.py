"""The admin socket end to end: a real gpuletd, AdminClient on its admin socket, the user
client on its user socket. The point of the socket is who can reach it, so the first tests
are about that: its mode, and that the user socket does not serve AdminService at all."""

from __future__ import annotations

import argparse
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import gpulet
from gpulet.admin import AdminClient, ModelLeased
from gpulet.cli import admin as admin_cli
from gpulet.cli import args
from gpulet.errors import GpuletError
from tests.helpers import Daemon
from tests.system.test_leases import reservation_model, start_daemon, wait_until

pytestmark = pytest.mark.system

ADMIN_SERVICE = "gpulet.v1.AdminService"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    # One daemon for the module: the 2-core CI box runs these among many others.
    d = start_daemon(tmp_path_factory.mktemp("admin"), reservation_model("r", 2000))
    try:
        yield d
    finally:
        d.stop()


def admin_path(d: Daemon) -> Path:
    return d.socket.with_name("admin.sock")


@pytest.fixture
def admin(served: Daemon) -> Iterator[AdminClient]:
    with AdminClient(address=str(admin_path(served))) as a:
        yield a
        a.undrain()  # a failed drain test must not refuse the next test's leases


def test_the_admin_socket_is_0600_and_ours(served: Daemon) -> None:
    st = os.lstat(admin_path(served))
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    # Its own lock, beside it.
    assert admin_path(served).with_name("admin.sock.lock").is_file()


def test_the_user_socket_does_not_serve_admin_service(served: Daemon) -> None:
    # Called on the admin socket first: a handler cached by name in something both servers
    # share (an interceptor did) would then answer on the user socket too.
    with AdminClient(address=str(admin_path(served))) as a:
        a.drain()
        a.undrain()
    with grpc.insecure_channel(served.address) as ch:
        listed = ProtoReflectionDescriptorDatabase(ch).get_services()
    assert "gpulet.v1.LeaseService" in listed
    assert ADMIN_SERVICE not in listed
    # Not merely unlisted: a call there is UNIMPLEMENTED, and changes nothing.
    with AdminClient(address=served.address) as wrong:
        for call in (
            wrong.drain,
            wrong.undrain,
            lambda: wrong.unload("r", force=True),
            lambda: wrong.pin("r"),
        ):
            with pytest.raises(GpuletError) as e:
                call()
            assert e.value.code is grpc.StatusCode.UNIMPLEMENTED
    with gpulet.Client(address=served.address) as c:
        c.release(c.acquire("r", ttl=30))


def test_the_admin_socket_lists_only_admin_service(served: Daemon) -> None:
    with grpc.insecure_channel(f"unix://{admin_path(served)}") as ch:
        listed = set(ProtoReflectionDescriptorDatabase(ch).get_services())
    assert ADMIN_SERVICE in listed
    assert "gpulet.v1.LeaseService" not in listed


def test_unload_of_a_leased_model_is_refused_unless_forced(
    served: Daemon, admin: AdminClient
) -> None:
    with gpulet.Client(address=served.address) as c:
        lease = c.acquire("r", ttl=60, client_name="holder-7")
        with pytest.raises(ModelLeased) as e:
            admin.unload("r")
        assert e.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert "holder-7" in e.value.message and lease.lease_id in e.value.message
        c.renew(lease.lease_id, lease.token)  # still held

        with pytest.raises(GpuletError) as missing:
            admin.unload("r", force=True)  # force needs a reason for the holders
        assert missing.value.code is grpc.StatusCode.INVALID_ARGUMENT

        u = admin.unload("r", force=True, reason="driver update")
        assert u.ended_lease_ids == (lease.lease_id,)
        assert not c.list_leases()
        with pytest.raises(gpulet.NotFound) as lost:
            c.renew(lease.lease_id, lease.token)
        assert "revoked: ended by an administrator: driver update" in lost.value.message
        # The core's `unload` event stops it at once, not at the end of its grace period.
        assert u.state in ("unloading", "unloaded")
        assert u.unloads_at is None
        assert wait_until(lambda: _state(served, "r") == "unloaded")


def test_unknown_model_is_not_found(admin: AdminClient) -> None:
    with pytest.raises(gpulet.NotFound):
        admin.unload("no-such-model")


def test_pin_of_an_unknown_model_is_not_found(admin: AdminClient) -> None:
    with pytest.raises(gpulet.NotFound) as e:
        admin.pin("no-such-model")
    assert "known models: r" in e.value.message
    with pytest.raises(gpulet.NotFound):
        admin.unpin("no-such-model")


def _brief(mid: str, vram: int) -> str:
    # A short grace period of its own, so that "stays past its grace period" is quick to see.
    return reservation_model(mid, vram) + "grace_period_seconds = 1\n"


@pytest.fixture(scope="module")
def pinning(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, AdminClient]]:
    # balanced_24gb: two models, 22,000 MiB. p and q fit together; big fits only alone.
    config = _brief("p", 8000) + _brief("q", 8000) + _brief("big", 20000)
    d = start_daemon(
        tmp_path_factory.mktemp("pin"), config, "--profile", "balanced_24gb", gpus="24576"
    )
    try:
        with AdminClient(address=str(admin_path(d))) as a:
            yield d, a
    finally:
        d.stop()


def test_pin_loads_an_idle_model_and_keeps_it_past_its_grace_period(
    pinning: tuple[Daemon, AdminClient],
) -> None:
    d, admin = pinning
    assert _state(d, "p") == "unloaded"
    p = admin.pin("p", reason="hot path")
    assert p.state in ("loading", "loaded")
    assert p.message in ("pinned and loading", "pinned and loaded")
    assert wait_until(lambda: _state(d, "p") == "loaded")
    with gpulet.Client(address=d.address) as c:
        assert not c.list_leases()
    time.sleep(2.5)  # well past its 1 s grace period
    assert _state(d, "p") == "loaded"
    again = admin.pin("p")
    assert (again.state, again.message) == ("loaded", "pinned, already loaded")

    u = admin.unpin("p")
    assert u.was_pinned and u.state == "loaded"
    assert u.unloads_at is not None
    assert u.message == "unpinned: unloads after its grace period if idle"
    assert wait_until(lambda: _state(d, "p") == "unloaded", timeout=10)
    assert admin.unpin("p").was_pinned is False


def test_a_pinned_model_is_still_evicted_for_a_request(
    pinning: tuple[Daemon, AdminClient],
) -> None:
    d, admin = pinning
    admin.pin("p")
    assert wait_until(lambda: _state(d, "p") == "loaded")
    with gpulet.Client(address=d.address) as c:
        lease = c.acquire("big", ttl=60, timeout=30)  # needs p's room
        assert _state(d, "p") in ("unloading", "unloaded")
        # While big is held, a pin does not evict it: it is pinned but not loaded now.
        q = admin.pin("q")
        assert q.state == "unloaded"
        assert q.message.startswith("pinned but not loaded now: ")
        assert "without evicting" in q.message
        c.release(lease)
    admin.unpin("p")
    admin.unpin("q")


def test_end_lease_by_id(served: Daemon, admin: AdminClient) -> None:
    with gpulet.Client(address=served.address) as c:
        lease = c.acquire("r", ttl=60, client_name="worker")
        ended = admin.end_lease(lease.lease_id, "runaway job")
        assert (ended.lease_id, ended.model_id, ended.client_name) == (
            lease.lease_id,
            "r",
            "worker",
        )
        with pytest.raises(gpulet.NotFound) as lost:
            c.renew(lease.lease_id, lease.token)
        assert "revoked: ended by an administrator: runaway job" in lost.value.message
    with pytest.raises(gpulet.NotFound):
        admin.end_lease(lease.lease_id, "again")
    with pytest.raises(GpuletError) as bad:
        admin.end_lease(lease.lease_id, "two\nlines")
    assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_drain_refuses_new_leases_and_undrain_restores(served: Daemon, admin: AdminClient) -> None:
    with gpulet.Client(address=served.address) as c:
        held = c.acquire("r", ttl=60)
        d = admin.drain()
        assert d.leases_held >= 1
        with pytest.raises(gpulet.DaemonUnavailable) as e:
            c.acquire("r", ttl=30)
        assert e.value.code is grpc.StatusCode.UNAVAILABLE and "draining" in e.value.message
        c.renew(held.lease_id, held.token)  # held leases run on
        assert admin.undrain() is True
        c.release(c.acquire("r", ttl=30))
        c.release(held)
    assert admin.undrain() is False


def test_switch_profile_changes_profile_show(served: Daemon, admin: AdminClient) -> None:
    before = served.cli_json("profile", "show")["name"]
    target = "constrained_16gb" if before != "constrained_16gb" else "development"
    s = admin.switch_profile(target, "testing")
    assert (s.previous_profile, s.profile) == (before, target)
    shown = served.cli_json("profile", "show")
    assert shown["name"] == target
    assert "administrator" in shown["reason"]
    with pytest.raises(gpulet.NotFound) as e:
        admin.switch_profile("no-such-profile")
    assert "development" in e.value.message  # the known names
    admin.switch_profile(before)
    assert wait_until(lambda: served.cli_json("profile", "show")["name"] == before)


def test_the_cli_commands(served: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    # Registered under `gpulet admin` by cli/main.py; driven here through the same parser.
    ap = args.ArgumentParser(prog="gpulet")
    out = args.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true")
    admin_cli.add_parser(ap.add_subparsers(dest="command"), out)

    def run(*words: str) -> int:
        ns: argparse.Namespace = ap.parse_args(
            ["admin", *words, "--admin-socket", str(admin_path(served))]
        )
        return admin_cli.run(ns.admin_handler, ns)

    assert run("drain") == 0
    assert "draining" in capsys.readouterr().out
    assert run("undrain") == 0
    assert run("pin", "r", "--reason", "demo", "--json") == 0
    assert '"pinned": true' in capsys.readouterr().out
    assert run("unpin", "r") == 0
    assert capsys.readouterr().out.startswith("r: unpinned")
    with gpulet.Client(address=served.address) as c:
        lease = c.acquire("r", ttl=60, client_name="cli-holder")
        with pytest.raises(ModelLeased):
            run("unload", "r")
        assert run("unload", "r", "--force", "--reason", "maintenance", "--json") == 0
        assert lease.lease_id in capsys.readouterr().out


def _state(d: Daemon, model_id: str) -> str:
    models = {m["id"]: m for m in d.cli_json("models")["models"]}
    return str(models[model_id]["state"])
