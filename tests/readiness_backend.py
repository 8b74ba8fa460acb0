"""A process backend that says it is ready in the ways gpulet can listen for.

    python tests/readiness_backend.py --port N [--delay S] [--say LINE ...] [--split]
        [--ready-fd] [--close-fd] [--health {none,gated,always}] [--gate PATH]
        [--after-ready PATH] [--late-ready-gate PATH] [--late-ready-result PATH]
        [--ready-stamp PATH] [--max-lifetime S]

After `--delay` seconds it prints each `--say` line (with `--split`, each in two writes a
moment apart, as a server flushing a partial line would), writes `READY` to the descriptor
in GPULET_READY_FD with `--ready-fd` (or just closes it with `--close-fd`), writes the wall
clock time to `--ready-stamp`, and then creates `--after-ready` (so a test can tell what
happened after the signal). Its health URL (/health on --port): `none` never listens,
`always` answers 200 from the start, `gated` answers 503 until the file `--gate` exists.
With `--late-ready-gate`, once that file exists it writes READY to the descriptor and
records in `--late-ready-result` whether the write succeeded ("ok") or not.
Stdlib only; it exits on SIGTERM or after `--max-lifetime`.
"""

from __future__ import annotations

import argparse
import http.server
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--say", action="append", default=[])
    p.add_argument("--split", action="store_true")
    p.add_argument("--ready-fd", action="store_true")
    p.add_argument("--close-fd", action="store_true")
    p.add_argument("--health", choices=("none", "gated", "always"), default="none")
    p.add_argument("--gate", type=Path)
    p.add_argument("--after-ready", type=Path)
    p.add_argument("--ready-stamp", type=Path)
    p.add_argument("--late-ready-gate", type=Path)
    p.add_argument("--late-ready-result", type=Path)
    p.add_argument("--max-lifetime", type=float, default=120.0)
    return p.parse_args()


def serve_health(port: int, healthy: Any) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/health" and healthy()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def wait_for(path: Path, until: float) -> bool:
    while time.monotonic() < until:
        if path.exists():
            return True
        time.sleep(0.01)
    return False


def main() -> None:
    args = parse_args()
    until = time.monotonic() + args.max_lifetime
    if args.health == "always":
        serve_health(args.port, lambda: True)
    elif args.health == "gated":
        gate = args.gate
        serve_health(args.port, lambda: gate is not None and gate.exists())
    print("loading weights", flush=True)
    time.sleep(args.delay)
    fd = int(os.environ.get("GPULET_READY_FD", "-1"))
    for line in args.say:
        if args.split:
            half = len(line) // 2
            sys.stdout.write(line[:half])
            sys.stdout.flush()
            time.sleep(0.2)
            sys.stdout.write(line[half:] + "\n")
            sys.stdout.flush()
        else:
            print(line, flush=True)
    if args.ready_fd:
        os.write(fd, b"READY\n")
    elif args.close_fd and fd >= 0:
        os.close(fd)
    if args.ready_stamp is not None:
        args.ready_stamp.write_text(repr(time.time()))
    if args.after_ready is not None:
        args.after_ready.touch()
    if args.late_ready_gate is not None and wait_for(args.late_ready_gate, until):
        try:
            os.write(fd, b"READY\n")
            result = "ok"
        except OSError as exc:
            result = type(exc).__name__
        if args.late_ready_result is not None:
            args.late_ready_result.write_text(result)
    while time.monotonic() < until:
        time.sleep(0.2)


if __name__ == "__main__":
    main()
