"""A stand-in for the serving engines gpulet has presets for, strict about their flags.

    python tests/fakes/fake_engine.py ENGINE ARGS...

ENGINE is one of vllm, sglang, llama.cpp, tgi, ollama, comfyui; ARGS are what that engine's
real program takes after its name (`serve MODEL --port N ...` for vLLM). Each engine's flags
are parsed with the real flag names and value types (argparse, so an unknown flag or a bad
value exits with status 2 and the message on stderr, as the real programs do), then it listens
where the real engine would and answers the real engine's health path with 200:

    vllm, sglang, llama.cpp, tgi   GET /health
    ollama                         GET /api/version   (listens on $OLLAMA_HOST)
    comfyui                        GET /system_stats

GET /v1/models lists the served model name; GET /fake/launch returns what was parsed (the
engine, its flags by dest, the argv and the placement environment) so that a test can check
what a preset really passed. Stdlib only; it exits by itself after --fake-lifetime seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Every fake dies by itself eventually, even if the test that started it crashed.
LIFETIME_S = 120.0

HEALTH_PATHS = {
    "vllm": "/health",
    "sglang": "/health",
    "llama.cpp": "/health",
    "tgi": "/health",
    "ollama": "/api/version",
    "comfyui": "/system_stats",
}


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _bool_flags(p: argparse.ArgumentParser, *flags: str) -> None:
    for flag in flags:
        p.add_argument(flag, action="store_true")


def _vllm(argv: list[str]) -> tuple[argparse.Namespace, str, int, str]:
    p = argparse.ArgumentParser(prog="vllm")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("model")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--served-model-name", nargs="+", default=None)
    s.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    s.add_argument("--gpu-memory-utilization", type=_fraction, default=0.9)
    s.add_argument("--dtype", choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
    s.add_argument("--quantization", "-q")
    s.add_argument("--max-model-len", type=int)
    s.add_argument("--kv-cache-dtype")
    s.add_argument("--max-num-seqs", type=int)
    s.add_argument("--max-num-batched-tokens", type=int)
    s.add_argument("--revision")
    _bool_flags(s, "--trust-remote-code", "--enforce-eager", "--enable-prefix-caching")
    a = p.parse_args(argv)
    name = a.served_model_name[0] if a.served_model_name else a.model
    return a, a.host or "0.0.0.0", a.port, name


def _sglang(argv: list[str]) -> tuple[argparse.Namespace, str, int, str]:
    p = argparse.ArgumentParser(prog="sglang.launch_server")
    p.add_argument("--model-path", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--served-model-name")
    p.add_argument("--tp-size", "--tensor-parallel-size", type=int, default=1)
    p.add_argument("--mem-fraction-static", type=_fraction)
    p.add_argument("--dtype", choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
    p.add_argument("--quantization")
    p.add_argument("--context-length", type=int)
    p.add_argument("--kv-cache-dtype")
    p.add_argument("--max-running-requests", type=int)
    p.add_argument("--chunked-prefill-size", type=int)
    p.add_argument("--revision")
    _bool_flags(p, "--trust-remote-code")
    a = p.parse_args(argv)
    return a, a.host, a.port, a.served_model_name or a.model_path


def _llama_cpp(argv: list[str]) -> tuple[argparse.Namespace, str, int, str]:
    p = argparse.ArgumentParser(prog="llama-server")
    p.add_argument("--model", "-m", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--alias", "-a")
    # A number, or "auto"/"all" in recent builds.
    p.add_argument("--n-gpu-layers", "-ngl", "--gpu-layers")
    p.add_argument("--tensor-split", "-ts")
    p.add_argument("--ctx-size", "-c", type=int)
    p.add_argument("--parallel", "-np", type=int)
    p.add_argument("--threads", "-t", type=int)
    p.add_argument("--batch-size", "-b", type=int)
    p.add_argument("--cache-type-k", "-ctk")
    p.add_argument("--cache-type-v", "-ctv")
    a = p.parse_args(argv)
    if a.n_gpu_layers not in (None, "auto", "all") and not a.n_gpu_layers.isdigit():
        p.error(f"argument --n-gpu-layers: invalid value {a.n_gpu_layers!r}")
    return a, a.host, a.port, a.alias or a.model


def _tgi(argv: list[str]) -> tuple[argparse.Namespace, str, int, str]:
    p = argparse.ArgumentParser(prog="text-generation-launcher")
    p.add_argument("--model-id", default="bigscience/bloom-560m")
    p.add_argument("--hostname", default="0.0.0.0")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--num-shard", type=int)
    p.add_argument("--shard-uds-path", default="/tmp/text-generation-server")
    p.add_argument("--master-port", type=int, default=29500)
    p.add_argument("--cuda-memory-fraction", type=_fraction, default=1.0)
    p.add_argument("--dtype", choices=["float16", "bfloat16"])
    p.add_argument("--quantize")
    p.add_argument("--max-total-tokens", type=int)
    p.add_argument("--max-input-tokens", type=int)
    p.add_argument("--max-batch-prefill-tokens", type=int)
    p.add_argument("--revision")
    _bool_flags(p, "--trust-remote-code")
    a = p.parse_args(argv)
    return a, a.hostname, a.port, a.model_id


def _ollama(argv: list[str]) -> tuple[argparse.Namespace, str, int, str]:
    p = argparse.ArgumentParser(prog="ollama")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve")
    a = p.parse_args(argv)
    host, _, port = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").rpartition(":")
    return a, host, int(port), "ollama"


def _comfyui(argv: list[str]) -> tuple[argparse.Namespace, str, int, str]:
    p = argparse.ArgumentParser(prog="main.py")
    p.add_argument("--listen", nargs="?", const="0.0.0.0", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--reserve-vram", type=float)
    _bool_flags(p, "--disable-auto-launch", "--lowvram", "--highvram", "--gpu-only")
    a = p.parse_args(argv)
    return a, a.listen, a.port, "comfyui"


PARSERS = {
    "vllm": _vllm,
    "sglang": _sglang,
    "llama.cpp": _llama_cpp,
    "tgi": _tgi,
    "ollama": _ollama,
    "comfyui": _comfyui,
}


def main(argv: list[str]) -> int:
    lifetime = LIFETIME_S
    if "--fake-lifetime" in argv:
        i = argv.index("--fake-lifetime")
        lifetime = float(argv[i + 1])
        del argv[i : i + 2]
    if not argv or argv[0] not in PARSERS:
        print(f"usage: fake_engine.py {{{','.join(PARSERS)}}} ARGS...", file=sys.stderr)
        return 2
    engine, rest = argv[0], argv[1:]
    args, host, port, served = PARSERS[engine](rest)
    launch: dict[str, Any] = {
        "engine": engine,
        "flags": {k: v for k, v in vars(args).items()},
        "argv": rest,
        "served": served,
        "env": {k: v for k, v in os.environ.items() if k.startswith(("CUDA_", "OLLAMA_"))},
    }
    health = HEALTH_PATHS[engine]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == health:
                body: Any = {"status": "ok"}
            elif self.path == "/v1/models":
                body = {"object": "list", "data": [{"id": served, "object": "model"}]}
            elif self.path == "/fake/launch":
                body = launch
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    print(f"fake {engine} serving {served} on {host}:{port}", flush=True)
    timer = threading.Timer(lifetime, server.shutdown)
    timer.daemon = True
    timer.start()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
