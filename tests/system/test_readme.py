"""What the README shows, a test runs: every ```python block and every `gpulet` command of the
```sh blocks, against a real gpuletd on simulated GPUs, exactly as a reader would type them.

A block preceded by `<!-- not run: REASON -->` is skipped (the `make` commands of the first
screen): the reason is in the README for the reader too. In commands, `LEASE_ID` and `TOKEN`
stand for the lease the README's `gpulet lease acquire ... --json` printed before them, and
`gpulet watch` (which streams until interrupted) runs for a second.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import BIN, Daemon, clean_env

pytestmark = pytest.mark.system

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"(<!-- not run: [^>]*-->\s*)?```(\w+)\n(.*?)```", re.S)


def blocks(lang: str) -> list[str]:
    return [
        body for skip, kind, body in _BLOCK.findall(README.read_text()) if kind == lang and not skip
    ]


def commands() -> list[str]:
    out = []
    for body in blocks("sh"):
        for line in body.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith((".venv/bin/gpulet ", "gpulet ")):
                out.append(line.removeprefix(".venv/bin/"))
    return out


@pytest.fixture(scope="module")
def daemon() -> object:
    d = Daemon("--simulated-gpus", "16384").start()
    yield d
    d.stop()


def test_the_readme_has_examples_to_run() -> None:
    assert len(blocks("python")) >= 1
    assert len(commands()) >= 8


def test_every_python_example_runs(daemon: Daemon) -> None:
    for code in blocks("python"):
        r = subprocess.run(
            [sys.executable, "-c", code],
            env=clean_env({"GPULET_ADDRESS": daemon.address}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, f"{code}\n---\n{r.stderr}"


def test_every_gpulet_command_runs(daemon: Daemon) -> None:
    env = clean_env({"GPULET_ADDRESS": daemon.address})
    lease: dict[str, str] = {}
    for line in commands():
        argv = shlex.split(line)
        argv[0] = str(BIN / "gpulet")
        if "LEASE_ID" in argv or "TOKEN" in argv:
            assert lease, f"{line}: no `gpulet lease acquire --json` before it in the README"
            argv = [
                lease["lease_id"] if a == "LEASE_ID" else lease["token"] if a == "TOKEN" else a
                for a in argv
            ]
        if argv[1] == "watch":
            try:
                subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1.0)
            except subprocess.TimeoutExpired:
                continue  # it streamed until interrupted, as documented
            raise AssertionError("gpulet watch ended by itself")
        r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{line}\n---\n{r.stdout}\n{r.stderr}"
        if argv[1:3] == ["lease", "acquire"] and "--json" in argv:
            lease = json.loads(r.stdout.strip().splitlines()[-1])
        elif argv[1:3] == ["lease", "release"]:
            lease = {}
