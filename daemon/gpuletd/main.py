"""`gpuletd`: serve, or `gpuletd check-config` to validate and print the effective config."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import structlog

from gpulet.address import default_address, socket_path
from gpuletd import __version__
from gpuletd.active_profile import ActiveProfile, resolve_active_profile, startup_fields
from gpuletd.backends.strays import MARK
from gpuletd.config import Config, config_paths, load_config
from gpuletd.config_errors import ConfigError
from gpuletd.daemon import Daemon
from gpuletd.launch import ignore_until_handled
from gpuletd.logs import setup_logging
from gpuletd.metrics_http import start_metrics
from gpuletd.probe.poller import ProbePoller
from gpuletd.probe.simulated import SimulatedProbe, parse_simulated_gpus
from gpuletd.probe.types import GpuProbe
from gpuletd.profiles import profile_values
from gpuletd.runtime import Runtime
from gpuletd.server import (
    ADMIN_SOCKET,
    AlreadyRunning,
    LockFile,
    admin_socket,
    bind_admin,
    build_admin_server,
    build_server,
    finish_socket,
    held,
    listen_credentials,
    unix_socket,
)
from gpuletd.signals import Ending, Signals
from gpuletd.state_dir import LOG_SUBDIR, STATE_FILE, default_state_dir
from gpuletd.systemd import notify, watchdog_interval

__all__ = ["main"]

log = structlog.get_logger("gpuletd")

EPILOG = """\
environment:
  GPULET_ADDRESS              socket address (as --address)
  GPULET_CONFIG               config file (as --config)
  GPULET_DEPLOYMENT_PROFILE   profile to use (below --profile, above the config's `profile =`)
  GPULET_SIMULATED_GPUS       simulated GPUs (as --simulated-gpus)
  GPULET_STATE_DIR            state directory (as --state-dir)

signals:
  TERM, INT, QUIT   stop: refuse waiting requests, stop every backend, clear the saved state;
                    with --on-stop=keep: save the state, leave every backend running (even
                    one still loading) and exit, for the next gpuletd to adopt them
  HUP               reload the config files; a bad one is refused and the old one kept
  USR1              log a one-line status (profile, models, leases, queue, backend pids)
  USR2              hand off: save the state, leave the backends running and re-execute
                    gpuletd in place (same pid); use it to upgrade without unloading models
  PIPE              logged and ignored

profile precedence: --profile > GPULET_DEPLOYMENT_PROFILE > config `profile =` >
auto-detection from the GPUs > development; each of the three takes a name, a profile file's
path (a relative one in the config is relative to the config file's folder) or a comma list.
`--set FIELD=VALUE` then overrides single fields; `gpulet admin profile` switches at run time.
An unknown --profile is an error; an unknown name from the environment or the config is skipped
with a warning (check-config exits 2 on it). Auto-detection derives a dynamic profile when no
predefined one fits the GPUs well (docs/profiles.md).
"""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get("GPULET_CONFIG"),
        help="TOML config file (default: /etc/gpulet/gpulet.toml and /etc/gpulet/conf.d/*.toml,"
        " if present; none needed)",
    )
    common.add_argument(
        "--profile",
        metavar="SPEC",
        help="force a deployment profile: a NAME, a PATH to a TOML or JSON profile file (it "
        "has a '/' or ends in .toml/.json), or several of those joined by commas, later ones "
        "patching earlier (balanced_24gb,./low_latency.json)",
    )
    common.add_argument(
        "--set",
        metavar="FIELD=VALUE",
        action="append",
        default=[],
        dest="sets",
        help="override one field of the active profile, e.g. --set max_concurrent_models=2 "
        "(repeatable)",
    )
    common.add_argument(
        "--simulated-gpus",
        metavar="SPEC",
        default=os.environ.get("GPULET_SIMULATED_GPUS"),
        help="simulate GPUs instead of reading NVML: sizes in MiB with optional names, "
        "e.g. 16384,16384 or 'NVIDIA GeForce RTX 4080:16384'",
    )
    common.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
    )
    ap = argparse.ArgumentParser(
        prog="gpuletd",
        description="gpuletd: node-local GPU model broker. Runs in the foreground (systemd "
        "Type=notify); with no config it serves the built-in profiles and an example registry.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"gpuletd {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="run the daemon (the default command)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--address",
        default=None,
        help=f"unix:///path socket to serve on (default: $GPULET_ADDRESS or {default_address()})",
    )
    serve.add_argument(
        "--admin-socket",
        type=Path,
        default=None,
        metavar="PATH",
        help="Unix socket for `gpulet admin` (end leases, unload, drain, switch profile), "
        "mode 0600: only this user connects (default: admin.sock beside the --address socket)",
    )
    serve.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (off unless asked; plain "
        "HTTP, no auth: bind it to loopback or a trusted network)",
    )
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="also serve on TCP (off unless asked); needs TLS unless on loopback with "
        "--insecure-loopback",
    )
    serve.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM certificate (chain)")
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key")
    serve.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="PEM CA bundle: require client certificates it signed (mutual TLS)",
    )
    serve.add_argument(
        "--insecure-loopback",
        action="store_true",
        help="allow --listen without TLS, on a loopback address only",
    )
    serve.add_argument("--socket-group", metavar="GROUP", help="group owning the socket (0660)")
    serve.add_argument(
        "--stop-grace",
        type=_poll_interval,
        default=10.0,
        metavar="SECONDS",
        help="how long a backend has to exit after SIGTERM before its group gets SIGKILL "
        "(default: 10)",
    )
    serve.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where leases, backend records and measurements survive a restart (state.db) "
        "and backends write their output (logs/); default: $GPULET_STATE_DIR, systemd's "
        "$STATE_DIRECTORY, /var/lib/gpulet as root, else $XDG_STATE_HOME/gpulet",
    )
    serve.add_argument(
        "--backend-log-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where each process backend writes its output, DIR/<model>.log "
        "(default: STATE_DIR/logs)",
    )
    serve.add_argument(
        "--on-stop",
        choices=["stop", "keep"],
        default="stop",
        help="what TERM, INT and QUIT do: stop (every backend, and clear the saved state) or "
        "keep (save the state and exit as a hand-off does, without re-executing): for "
        "Kubernetes, whose only way to end a pod is TERM, so that the next pod on the node "
        "restores the leases (default: stop)",
    )
    serve.add_argument(
        "--labels-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="keep node labels for Kubernetes node-feature-discovery in PATH (e.g. "
        "/etc/kubernetes/node-feature-discovery/features.d/gpulet), rewritten when the "
        "profile, GPUs or models change and before they expire; removed at a clean stop",
    )
    serve.add_argument(
        "--poll-interval",
        type=_poll_interval,
        default=1.0,
        metavar="SECONDS",
        help="how often GPU memory is read (default: 1)",
    )
    sub.add_parser(
        "check-config",
        parents=[common],
        help="validate the configuration and print the effective settings, then exit",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return ap


def _poll_interval(text: str) -> float:
    value = float(text)
    # Faster than 20 Hz only burns CPU: NVML memory readings do not change that fast.
    if not (math.isfinite(value) and value >= 0.05):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0.05, got {text}")
    return value


def _make_probe(spec: str | None) -> GpuProbe | None:
    if spec:
        return SimulatedProbe(parse_simulated_gpus(spec))
    try:
        from gpuletd.probe.nvml import NvmlProbe
    except ImportError as e:  # the binding is a dependency, but a broken install must not crash
        log.warning("probe.binding_unavailable", error=str(e), action="running without GPUs")
        return None
    return NvmlProbe()


async def _prepare(ns: argparse.Namespace) -> tuple[Config, ActiveProfile, ProbePoller]:
    config = load_config(config_paths(ns.config))
    poller = ProbePoller(_make_probe(ns.simulated_gpus), getattr(ns, "poll_interval", 1.0))
    await poller.open()
    return config, _resolve(ns, config, poller), poller


def _resolve(ns: argparse.Namespace, config: Config, poller: ProbePoller) -> ActiveProfile:
    return resolve_active_profile(
        config.profiles,
        poller.gpus,
        flag=ns.profile,
        env=os.environ.get("GPULET_DEPLOYMENT_PROFILE") or None,
        config=config.profile,
        config_where=str(config.profile_where or "config"),
        overrides=ns.sets,
        no_probe_reason=poller.unavailable_reason,
    )


def _effective(config: Config, active: ActiveProfile, poller: ProbePoller) -> dict[str, Any]:
    p = active.profile
    return {
        "files": list(config.files),
        "probe": poller.kind,
        "gpus": [
            {"index": g.index, "uuid": g.uuid, "name": g.name, "total_mb": g.total_mb}
            for g in poller.gpus or []
        ],
        "active_profile": {
            "name": p.name,
            "source": active.source.value,
            "reason": active.reason,
            "usable_vram_mb": active.usable_vram_mb,
            "warnings": list(active.warnings),
            "overrides": list(active.overrides),
            "derived_from": active.derived_from,
            **profile_values(p, plain=True),
        },
        "profiles": sorted(config.profiles),
        "user_profiles": sorted(config.user_profiles),
        "models": {
            m.id: {
                "backend": m.backend.value,
                "quantization": m.quantization,
                "vram_estimate_mb": m.vram_estimate_mb,
                "role_priority": dict(m.role_priority),
            }
            for m in config.registry.models.values()
        },
        "preload": list(config.preload),
    }


async def _check_config(ns: argparse.Namespace) -> int:
    config, active, poller = await _prepare(ns)
    await poller.close()
    print(json.dumps(_effective(config, active, poller), indent=2))
    for w in active.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if active.rejected:
        # The daemon would serve (on the next source), but the value is a mistake: fail CI.
        print(
            "gpuletd: error: a profile from the environment or the config names no usable "
            "profile (see the warning above)",
            file=sys.stderr,
        )
        return 2
    return 0


async def _watchdog(interval: float) -> None:
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def _serve(ns: argparse.Namespace) -> int:
    address = ns.address or default_address()
    path_str = socket_path(address)
    if path_str is None:
        raise ConfigError(
            "--address",
            f"expected a unix:///path address, got {address!r} (use --listen HOST:PORT for TCP)",
        )
    path = Path(path_str).absolute()
    if len(os.fsencode(path)) > 107:
        raise ConfigError(
            "--address",
            f"socket path {path} is longer than the 107 bytes a "
            "Unix socket allows; choose a shorter path",
        )
    # Beside the user socket by default: same directory, already made safe for it.
    admin_path: Path = (ns.admin_socket or path.with_name(ADMIN_SOCKET)).absolute()
    if admin_path == path:
        raise ConfigError("--admin-socket", f"must differ from the user socket {path}")
    if len(os.fsencode(admin_path)) > 107:
        raise ConfigError(
            "--admin-socket",
            f"socket path {admin_path} is longer than the 107 bytes a Unix socket allows; "
            "choose a shorter path",
        )
    if ns.labels_file is not None and not ns.labels_file.absolute().parent.is_dir():
        raise ConfigError(
            "--labels-file", f"directory {ns.labels_file.absolute().parent} does not exist"
        )
    if ns.socket_group:
        try:
            grp.getgrnam(ns.socket_group)
        except KeyError:
            raise ConfigError("--socket-group", f"no group named {ns.socket_group!r}") from None
    tcp_credentials = listen_credentials(
        ns.listen,
        cert=ns.tls_cert,
        key=ns.tls_key,
        client_ca=ns.tls_client_ca,
        insecure_loopback=ns.insecure_loopback,
    )
    # First, so that no signal meets a default action (USR1 and HUP would kill us) while
    # state is restored and backends are adopted.
    signals = Signals()
    signals.install()
    state_dir: Path = (ns.state_dir or default_state_dir()).absolute()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Every backend inherits this mark, so a restarted daemon finds even one no record names.
    os.environ[MARK] = str(state_dir)
    config, active, poller = await _prepare(ns)
    runtime = Runtime(config, active, poller)
    with (
        unix_socket(path, ns.socket_group),
        admin_socket(admin_path),
        held(LockFile(state_dir / STATE_FILE, "state dir")),
    ):
        daemon = Daemon(
            runtime,
            state_dir=state_dir,
            log_dir=(ns.backend_log_dir or state_dir / LOG_SUBDIR).absolute(),
            stop_grace_s=ns.stop_grace,
            check_invariants=os.environ.get("GPULET_CHECK_INVARIANTS") == "1",
            labels_file=ns.labels_file.absolute() if ns.labels_file else None,
        )
        # Before adopting backends: a bad --metrics stops the start with nothing touched.
        metrics = await start_metrics(daemon, ns.metrics) if ns.metrics else None
        await daemon.open()
        server = build_server(runtime, daemon)
        server.grpc_server.add_insecure_port(f"unix:{path}")
        if ns.listen:
            try:
                if tcp_credentials is None:
                    port = server.grpc_server.add_insecure_port(ns.listen)
                else:
                    port = server.grpc_server.add_secure_port(ns.listen, tcp_credentials)
            except RuntimeError:
                port = 0
            if port == 0:
                raise ConfigError(
                    "--listen",
                    f"cannot listen on {ns.listen!r} (expected HOST:PORT, free and allowed, "
                    "e.g. 127.0.0.1:50051)",
                )
        # A server of its own: AdminService is never on the user socket or the TCP port.
        admin_server = build_admin_server(runtime, daemon)
        bind_admin(admin_server, admin_path)
        await server.grpc_server.start()
        await admin_server.start()
        finish_socket(path, ns.socket_group)
        await server.set_serving(True)
        poller.start()
        daemon.start()
        signals.serving(daemon, lambda: daemon.reload(lambda: _load(ns, poller)))
        status = (
            f"profile {active.profile.name} ({active.source.value}), {len(runtime.gpus)} GPU(s)"
        )
        notify("READY=1", f"STATUS=serving on {path}: {status}")
        log.info(
            "daemon.serving",
            address=f"unix://{path}",
            admin_socket=str(admin_path),
            tcp=ns.listen,
            tls="off" if tcp_credentials is None else "mutual" if ns.tls_client_ca else "server",
            profile=active.profile.name,
            source=active.source.value,
            reason=active.reason,
            probe=poller.kind,
            gpus=len(runtime.gpus),
            models=len(config.registry.models),
            state_dir=str(state_dir),
            metrics=ns.metrics,
        )
        models = len(config.registry.models)
        log.info("profile.selected", **startup_fields(active, poller.gpus), models=models)
        for w in active.warnings:
            log.warning("profile.warned", warning=w)
        interval = watchdog_interval()
        dog = asyncio.create_task(_watchdog(interval)) if interval else None
        ending = await signals.ending()
        if dog:
            dog.cancel()
        # Waiting requests are told UNAVAILABLE and nothing new is granted, Watch streams end
        # (before the graceful stop: a connected `gpulet watch` would otherwise hold it for
        # the whole grace); then the server stops; then (stop) every backend is stopped, or
        # (handoff) left for the next daemon.
        daemon.quiesce()
        await server.set_serving(False)
        await asyncio.gather(server.grpc_server.stop(grace=5), admin_server.stop(grace=5))
        if metrics is not None:
            metrics.close()
        if ending is Ending.HANDOFF or ns.on_stop == "keep":
            await daemon.handoff()
            await poller.close()
        else:
            await daemon.stop()
            await poller.close()
    if ending is Ending.HANDOFF:
        _reexec()
    if ns.on_stop == "keep":
        _exit_keeping_backends()
    log.info("daemon.stopped")
    return 0


def _load(ns: argparse.Namespace, poller: ProbePoller) -> tuple[Config, ActiveProfile]:
    """The configuration as a reload sees it: the same files, flags and environment."""
    config = load_config(config_paths(ns.config))
    return config, _resolve(ns, config, poller)


def _reexec() -> NoReturn:
    """Become a fresh gpuletd in the same process: same pid (systemd's main pid, the
    terminal's job), the backends still our children. exec, not a return through asyncio:
    the event loop's shutdown would cancel the tasks that own starting backends, and a
    cancelled start kills its process group."""
    argv = [sys.executable, *sys.orig_argv[1:]]
    log.info("daemon.reexecuting", argv=argv)
    sys.stdout.flush()
    sys.stderr.flush()
    ignore_until_handled()
    os.execv(sys.executable, argv)


def _exit_keeping_backends() -> NoReturn:
    """End here, not by a return through asyncio.run: its shutdown cancels every task, and a
    cancelled start kills the backend it is waiting for, which the saved state says is
    loading and the next gpuletd is to adopt. The sockets are removed and the state is saved
    already; nothing else is left to clean up."""
    log.info("daemon.stopped", backends="left running for the next gpuletd")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # `serve` is the default command: `gpuletd --profile x` means `gpuletd serve --profile x`.
    if not args or (
        args[0] not in ("serve", "check-config") and args[0] not in ("-h", "--help", "--version")
    ):
        args.insert(0, "serve")
    ns = _parser().parse_args(args)
    setup_logging(ns.log_level)
    runner = _check_config if ns.command == "check-config" else _serve
    try:
        return asyncio.run(runner(ns))
    except (ConfigError, AlreadyRunning, ValueError) as e:
        print(f"gpuletd: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # socket directory not creatable, permission denied, ...
        where = f" ({e.filename})" if e.filename else ""
        print(f"gpuletd: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
