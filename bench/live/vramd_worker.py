"""A model for vramd's persistent workers in the live replay, written the way vramd documents
(an adapter with load / generate / unload run by `vramd.worker.run_worker_loop`). It runs in
vramd's own venv, so it imports nothing of gpulet (but the stdlib-only worker beside it).

    python bench/live/vramd_worker.py --model ID --mb N --load-s S --record FILE --mem-dir DIR

- load: ready S seconds after the load command, or for the process's first load S seconds
  after the process was created (as the gpuletd worker, whose every load is a new process:
  the interpreter's start-up is part of the load time, not added to it), then "holds" N MiB:
  it writes N to DIR/<pid>, which the fake NVML (`fakenvml/pynvml.py`) sums over live workers
  as the GPU's used memory. Appends the start and ready wall times to FILE, as the gpuletd
  worker does.
- generate: the request's `hold_s` is the lease: it records the wall time it began (the grant
  as a client of vramd sees its model in use) and sleeps `hold_s`.
- unload: removes DIR/<pid>.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _append(path: str, record: dict[str, object]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _adapter(args: argparse.Namespace) -> type:
    mem_file = Path(args.mem_dir) / str(os.getpid())
    # This script's directory is first on sys.path: the gpuletd worker, stdlib only.
    from worker import _process_started  # type: ignore[import-not-found,unused-ignore]

    first = [True]

    class Adapter:
        name = args.model

        def load(self, **kwargs: Any) -> object:
            now = time.time()
            start = min(now, _process_started(now)) if first[0] else now
            first[0] = False
            time.sleep(max(0.0, start + args.load_s - time.time()))
            mem_file.write_text(str(args.mb))
            _append(
                args.record,
                {
                    "event": "ready",
                    "model": args.model,
                    "pid": os.getpid(),
                    "start": start,
                    "ready": time.time(),
                },
            )
            return {"model": args.model}

        def generate(self, model: object, request: dict[str, Any]) -> dict[str, Any]:
            granted = time.time()
            time.sleep(float(request.get("hold_s", 0.0)))
            return {
                "status": "ok",
                "granted_at": granted,
                "released_at": time.time(),
                "pid": os.getpid(),
            }

        def unload(self, model: object) -> None:
            mem_file.unlink(missing_ok=True)
            _append(
                args.record,
                {"event": "stop", "model": args.model, "pid": os.getpid(), "at": time.time()},
            )

    return Adapter


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--mb", type=int, required=True)
    p.add_argument("--load-s", type=float, required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--mem-dir", required=True)
    args = p.parse_args(argv)
    # Imported by name: vramd lives only in its own venv, where this script runs.
    worker = importlib.import_module("vramd.worker")
    worker.run_worker_loop(_adapter(args), backend_name=args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
