"""`make proto`: generate the client stubs from protos/, or check that they have not drifted."""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib import resources
from pathlib import Path

__all__ = ["generate", "main"]

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "protos"


def generate(out: Path) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py(i) for every proto under protos/gpulet."""
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "gpulet").rglob("*.proto"))
    wkt = str(resources.files("grpc_tools") / "_proto")
    bindir = Path(sys.executable).parent
    args = [
        "protoc",
        # The mypy-protobuf plugins live beside the interpreter, which may not be on PATH.
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_DIR}",
        f"-I{wkt}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return _generated(out)


def _generated(root: Path) -> list[Path]:
    # Sources only: an import leaves __pycache__/*_pb2*.pyc beside them, which is not drift.
    return sorted(
        p for p in (root / "gpulet").rglob("*_pb2*") if p.is_file() and p.suffix in (".py", ".pyi")
    )


def _check(committed: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        fresh_rel = {p.relative_to(tmp) for p in fresh}
        have = {p.relative_to(committed) for p in _generated(committed)}
        drift = sorted(
            str(rel)
            for rel in fresh_rel | have
            if rel not in have
            or rel not in fresh_rel
            or not filecmp.cmp(Path(tmp) / rel, committed / rel, shallow=False)
        )
    if drift:
        print("generated stubs drifted from protos/ (run `make proto`):", *drift, sep="\n  ")
        return 1
    print(f"stubs up to date ({len(fresh_rel)} files)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="write the stubs under this directory")
    group.add_argument("--check", type=Path, help="compare with the stubs under this directory")
    ns = ap.parse_args()
    if ns.check:
        return _check(ns.check)
    for p in generate(ns.out):
        print(p.relative_to(ns.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
