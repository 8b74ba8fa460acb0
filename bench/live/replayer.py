"""Replay a trace in real time against one system. Stdlib only: it also runs inside vramd's
venv, where gpulet is not installed.

A trace is a JSON list of requests (`trace_json`): a root arrives `at_s` after the start; a
follower arrives `gap_s` after every request it follows is done (granted and released, or
refused). Each request runs in its own thread and calls `serve(request)`, which blocks until
the system has granted, the hold is over and the lease is released (or it was refused), and
returns the wall times it saw. `python -m bench.live.replayer vramd TRACE OUT` replays TRACE
through vramd's own client and writes the records to OUT.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Served", "replay", "trace_json"]

# What serve returns: granted / released wall times (None when refused) and an error.
Served = dict[str, Any]


def trace_json(requests: Sequence[Any]) -> list[dict[str, Any]]:
    """bench.workloads.Request values as JSON-ready dicts."""
    return [
        {
            "rid": r.rid,
            "model": r.model,
            "hold_s": r.hold_s,
            "priority": r.priority,
            "at_s": r.at_s,
            "after": list(r.after),
            "gap_s": r.gap_s,
        }
        for r in requests
    ]


def replay(
    requests: Sequence[dict[str, Any]],
    serve: Callable[[dict[str, Any]], Served],
    *,
    timeout_s: float = 600.0,
) -> list[dict[str, Any]]:
    """One record per request: rid, model, arrived, granted, released, done (wall times;
    granted/released None if refused), error (None if served)."""
    done = {r["rid"]: threading.Event() for r in requests}
    records: dict[str, dict[str, Any]] = {}
    done_at: dict[str, float] = {}
    lock = threading.Lock()
    t0 = time.time()

    def run(r: dict[str, Any]) -> None:
        try:
            if r["after"]:
                for a in r["after"]:
                    done[a].wait()
                with lock:
                    ready = max(done_at[a] for a in r["after"])
                arrive = ready + r["gap_s"]
            else:
                arrive = t0 + r["at_s"]
            time.sleep(max(0.0, arrive - time.time()))
            arrived = time.time()
            try:
                out = serve(r)
            except Exception as e:  # a failed request is a figure, not a crash
                out = {"granted": None, "released": None, "error": f"{type(e).__name__}: {e}"}
            end = time.time()
            rec = {
                "rid": r["rid"],
                "model": r["model"],
                "arrived": arrived,
                "granted": out.get("granted"),
                "released": out.get("released"),
                "done": end,
                "error": out.get("error"),
            }
            with lock:
                records[r["rid"]] = rec
                done_at[r["rid"]] = end
        finally:
            done[r["rid"]].set()

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in requests]
    for t in threads:
        t.start()
    deadline = time.time() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.time()))
    return [records[r["rid"]] for r in requests if r["rid"] in records]


# -- vramd, through its own client ------------------------------------------------------------


def _vramd_serve(socket_path: str) -> Callable[[dict[str, Any]], Served]:
    from vramd.client import send_request  # type: ignore[import-not-found,unused-ignore]

    def serve(r: dict[str, Any]) -> Served:
        priority = "interactive" if r["priority"] > 0 else "batch"
        res = send_request(
            {"cmd": "generate", "backend": r["model"], "hold_s": r["hold_s"], "priority": priority},
            socket_path,
            timeout_sec=600.0,
        )
        if res is None:
            return {"granted": None, "released": None, "error": "no answer from vramd"}
        if res.get("status") != "ok":
            why = res.get("error_code") or res.get("status")
            return {"granted": None, "released": None, "error": f"{why}: {res.get('error')}"}
        return {"granted": res["granted_at"], "released": res["released_at"], "error": None}

    return serve


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] != "vramd":
        sys.exit("usage: python -m bench.live.replayer vramd SOCKET TRACE.json OUT.json")
    _kind, socket_path, trace_path, out_path = argv
    with open(trace_path, encoding="utf-8") as f:
        requests = json.load(f)
    records = replay(requests, _vramd_serve(socket_path))
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(records, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
