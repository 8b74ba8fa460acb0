"""The committed stubs must be exactly what `make proto` generates from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_the_protos() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "protogen.py"), "--check", str(ROOT / "client")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stubs up to date" in r.stdout
