"""A model server for gpuletd's process backends in the live replay.

    python bench/live/worker.py --port N --model ID --load-s S --record FILE

It binds at once and answers GET /health 503 while "loading" and 200 once ready, like vLLM or
llama-server. It is ready S seconds (which the trace sets in proportion to the model's size)
after its process was created, as a real server's load time runs from its start: the
interpreter's own start-up (0.1 s and more on a busy machine) is part of those S seconds, not
added to them. It appends one JSON line to FILE when it becomes ready: the wall times its
process started and became ready, so the benchmark can tell load time from the daemon's
readiness lag. Stdlib only and single-threaded.
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

# Every worker exits by itself eventually, even if the benchmark that started it crashed.
_MAX_LIFETIME_S = 900.0


def _append(path: str, record: dict[str, object]) -> None:
    # One short write of a whole line to a file opened for appending: lines from concurrent
    # workers do not interleave.
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _process_started(fallback: float) -> float:
    """The wall time this process was created (Linux: from /proc, to the clock tick)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            # The fields after the command name, which may itself hold spaces and parentheses.
            fields = f.read().rsplit(")", 1)[1].split()
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
    except (OSError, ValueError, IndexError, AttributeError):
        return fallback


def _answer(conn: socket.socket, ready: bool) -> None:
    try:
        conn.settimeout(1.0)
        conn.recv(4096)
        status = "200 OK" if ready else "503 Service Unavailable"
        body = b"ok" if ready else b"loading"
        head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        conn.sendall(head.encode() + body)
    except OSError:
        pass
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    main_at = time.time()
    started = min(main_at, _process_started(main_at))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--load-s", type=float, required=True)
    p.add_argument("--record", required=True)
    args = p.parse_args(argv)

    def stop(signum: int, frame: FrameType | None) -> None:
        _append(
            args.record,
            {"event": "stop", "model": args.model, "pid": os.getpid(), "at": time.time()},
        )
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", args.port))
    srv.listen(64)
    srv.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    ready_at = started + args.load_s
    ready = False
    deadline = started + _MAX_LIFETIME_S
    while time.time() < deadline:
        now = time.time()
        if not ready and now >= ready_at:
            ready = True
            _append(
                args.record,
                {
                    "event": "ready",
                    "model": args.model,
                    "pid": os.getpid(),
                    "start": started,
                    "main": main_at,
                    "ready": now,
                },
            )
        timeout = max(0.0, ready_at - now) if not ready else 1.0
        for _key, _mask in sel.select(timeout):
            try:
                conn, _addr = srv.accept()
            except BlockingIOError:
                continue
            _answer(conn, ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
