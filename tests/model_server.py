"""A stand-in for a model server (vLLM, llama-server) that tests can make misbehave.

    python tests/model_server.py --port N [--start-delay S] [--bind-late] [--never-healthy]
        [--crash-after S] [--exit-code N] [--fork-child] [--ignore-sigterm] [--stop-delay S]
        [--pid-file PATH] [--model ID] [--max-lifetime S]
        [--setsid-child [--setsid-parent-exit-after S]]

GET /health answers 503 while "loading" and 200 once ready; GET /v1/models lists the model;
GET /env returns the environment it was started with; GET /info its pid, group and child.
Stdlib only and single-threaded (a selector loop), so it starts in a few tens of milliseconds
and a fork is safe.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import sys
import time
from types import FrameType

# Every test server dies by itself eventually, even if the test that started it crashed.
DEFAULT_MAX_LIFETIME_S = 120.0


class _Terminate(Exception):
    pass


def say(message: str, *, err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model", default=os.environ.get("GPULET_MODEL_ID", "test-model"))
    p.add_argument("--start-delay", type=float, default=0.0, help="seconds of 503 before 200")
    p.add_argument("--bind-late", action="store_true", help="do not listen until ready")
    p.add_argument("--never-healthy", action="store_true")
    p.add_argument("--crash-after", type=float, default=None, help="exit after S seconds")
    p.add_argument("--exit-code", type=int, default=1, help="exit code of --crash-after")
    p.add_argument("--fork-child", action="store_true", help="fork a child that just sleeps")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--stop-delay", type=float, default=0.0, help="seconds to shut down")
    p.add_argument("--pid-file", default=None, help="write 'pid [child_pid]' here at start")
    p.add_argument("--max-lifetime", type=float, default=DEFAULT_MAX_LIFETIME_S)
    p.add_argument(
        "--setsid-child",
        action="store_true",
        help="fork a child that forks a worker which leaves the process group (setsid); the "
        "worker writes its pid to PID_FILE.setsid",
    )
    p.add_argument(
        "--setsid-parent-exit-after",
        type=float,
        default=None,
        help="the setsid worker's parent exits after S seconds, orphaning it",
    )
    return p.parse_args(argv)


def fork_child(args: argparse.Namespace) -> int:
    pid = os.fork()
    if pid:
        return pid
    # The child: same process group and same stdout pipe as its parent, like a vLLM worker.
    signal.signal(signal.SIGTERM, signal.SIG_IGN if args.ignore_sigterm else signal.SIG_DFL)
    say(f"worker {os.getpid()} started")
    deadline = time.monotonic() + args.max_lifetime
    while time.monotonic() < deadline:
        time.sleep(0.5)
    os._exit(0)


def sleep_out(args: argparse.Namespace, seconds: float | None = None) -> None:
    deadline = time.monotonic() + (args.max_lifetime if seconds is None else seconds)
    while time.monotonic() < deadline:
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def fork_setsid_child(args: argparse.Namespace) -> int:
    """A worker that escapes the process group, as some launchers' workers do: killpg on the
    backend's group does not reach it, and once its parent dies no descendant walk finds it."""
    middle = os.fork()
    if middle:
        return middle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    worker = os.fork()
    if worker == 0:
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN if args.ignore_sigterm else signal.SIG_DFL)
        if args.pid_file:
            path = args.pid_file + ".setsid"
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(path + ".tmp", path)
        say(f"setsid worker {os.getpid()} started")
        sleep_out(args)
        os._exit(0)
    if args.setsid_parent_exit_after is not None:
        sleep_out(args, args.setsid_parent_exit_after)
        say(f"setsid worker's parent {os.getpid()} exits")
        os._exit(0)
    sleep_out(args)
    os._exit(0)


def listen(args: argparse.Namespace) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(64)
    sock.setblocking(False)
    return sock


def respond(conn: socket.socket, status: int, body: object) -> None:
    payload = json.dumps(body).encode()
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    conn.sendall(head.encode() + payload)


def handle(conn: socket.socket, args: argparse.Namespace, ready: bool, child: int | None) -> None:
    conn.settimeout(2.0)
    request = b""
    while b"\r\n\r\n" not in request and len(request) < 16384:
        chunk = conn.recv(4096)
        if not chunk:
            break
        request += chunk
    parts = request.split(b" ", 2)
    path = parts[1].decode("latin-1") if len(parts) > 1 else ""
    if path == "/health":
        respond(conn, 200 if ready else 503, {"status": "ok" if ready else "loading"})
        return
    if path == "/v1/models":
        data = [{"id": args.model, "object": "model", "owned_by": "gpulet-tests"}]
        respond(conn, 200 if ready else 503, {"object": "list", "data": data})
    elif path == "/env":
        respond(conn, 200, dict(os.environ))
    elif path == "/info":
        info = {"pid": os.getpid(), "pgid": os.getpgid(0), "child_pid": child, "port": args.port}
        respond(conn, 200, info)
    else:
        respond(conn, 404, {"error": f"no route {path}"})
    say(f"GET {path}")


def serve(args: argparse.Namespace, started: float, child: int | None) -> None:
    ready_at = float("inf") if args.never_healthy else started + args.start_delay
    crash_at = float("inf") if args.crash_after is None else started + args.crash_after
    end_at = started + args.max_lifetime
    selector = selectors.DefaultSelector()
    listener = None if args.bind_late else listen(args)
    if listener is not None:
        selector.register(listener, selectors.EVENT_READ)
    ready = False
    while True:
        now = time.monotonic()
        if now >= crash_at:
            say(f"fatal: simulated crash, exiting with code {args.exit_code}", err=True)
            os._exit(args.exit_code)
        if now >= end_at:
            say("max lifetime reached, exiting", err=True)
            os._exit(0)
        if not ready and now >= ready_at:
            if listener is None:
                listener = listen(args)
                selector.register(listener, selectors.EVENT_READ)
            ready = True
            say(f"ready on port {args.port}")
        timeout = max(0.0, min(ready_at if not ready else end_at, crash_at, end_at) - now)
        for _key, _mask in selector.select(min(timeout, 0.5)):
            assert listener is not None
            try:
                conn, _addr = listener.accept()
            except BlockingIOError:
                continue
            with conn:
                try:
                    handle(conn, args, ready, child)
                except OSError as exc:
                    say(f"request failed: {exc}", err=True)


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    say(f"model_server {args.model}: pid {os.getpid()}, loading weights...")
    child = fork_child(args) if args.fork_child else None
    if args.setsid_child:
        fork_setsid_child(args)
    if args.pid_file:
        with open(args.pid_file + ".tmp", "w") as f:
            f.write(f"{os.getpid()} {child or ''}".strip())
        os.replace(args.pid_file + ".tmp", args.pid_file)  # readers never see half a file

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if args.ignore_sigterm:
            say("SIGTERM received and ignored", err=True)
            return
        raise _Terminate

    signal.signal(signal.SIGTERM, on_sigterm)
    say("warming up", err=True)
    try:
        serve(args, started, child)
    except _Terminate:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("SIGTERM received, shutting down")
        time.sleep(args.stop_delay)
        say("bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
