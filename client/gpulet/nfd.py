"""Node labels as a node-feature-discovery (NFD) local feature file.

NFD's worker reads every file in `/etc/kubernetes/node-feature-discovery/features.d/` once a
re-discovery period and turns each `namespace/name=value` line into a node label. What it
accepts shapes this module:

- a file over 64 KiB is ignored whole, so labels past the budget are left out (with a comment
  saying how many) rather than losing them all;
- dot-files are skipped, so a file is written as a dot-file beside it and renamed over it:
  the worker never reads half of one;
- a `# +expiry-time=<RFC 3339>` line makes the labels below it lapse at that time, so a node
  whose gpulet stopped stops advertising what it no longer offers;
- label names and values follow Kubernetes' rules (63 characters, alphanumerics and `-_.`
  inside), and a fact that cannot be spelled that way is left out, not mangled into another
  model's name.

The labels are slow-changing facts to place pods by: the active profile, the GPUs, the VRAM a
profile may use, the models offered per role. Live free memory is not one (it changes by the
second; it is in the metrics). The daemon (`gpuletd --labels-file`) and `gpulet labels` build
the same `NodeFacts` from what each can see and share everything below.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "FEATURES_DIR",
    "MAX_FILE_BYTES",
    "NAMESPACE",
    "NodeFacts",
    "Rendered",
    "facts_from",
    "label_lines",
    "render",
    "write_atomic",
]

# A sub-namespace of NFD's own: accepted by every nfd-master without -extra-label-ns (vendor
# namespaces outside it are denied by some NFD versions and configurations).
NAMESPACE = "gpulet.feature.node.kubernetes.io"
FEATURES_DIR = Path("/etc/kubernetes/node-feature-discovery/features.d")
# NFD's MaxFeatureFileSize (source/local): a larger file is ignored whole.
MAX_FILE_BYTES = 65536
# Long enough to ride out a restart of gpuletd, short enough that a node whose gpulet is gone
# soon stops attracting the pods that need it.
DEFAULT_TTL_SECONDS = 600

_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_NOT_VALUE_CHAR = re.compile(r"[^A-Za-z0-9_.-]+")
# The trailer that says labels were dropped, and the expiry line: room kept for both.
_RESERVE = 256


@dataclass(frozen=True)
class NodeFacts:
    profile: str
    # Each GPU's model name and total memory (None when the probe could not read it).
    gpus: tuple[tuple[str, int | None], ...]
    usable_vram_mb: int
    # model id -> role -> role priority, as the registry declares them.
    models: Mapping[str, Mapping[str, int]] = field(hash=False)


@dataclass(frozen=True)
class Rendered:
    text: str
    # The label lines alone: what changes when the facts change (the expiry changes anyway).
    labels: tuple[str, ...]
    left_out: tuple[str, ...]


def _value(text: str) -> str | None:
    """A label value: `text` with spaces and other characters outside the allowed set turned
    into `-` (GPU names have spaces), or None when nothing usable is left."""
    v = _NOT_VALUE_CHAR.sub("-", text.strip()).strip("-_.")[:63].rstrip("-_.")
    return v or None


def _valid(text: str) -> bool:
    return _NAME.fullmatch(text) is not None


def label_lines(facts: NodeFacts) -> tuple[list[tuple[str, str]], list[str]]:
    """The labels, most important first (the size budget drops from the end), and what was
    left out because it cannot be a label, one sentence each."""
    out: list[tuple[str, str]] = []
    left_out: list[str] = []
    profile = _value(facts.profile)
    if profile is not None:
        out.append(("profile", profile))
    out.append(("gpu.count", str(len(facts.gpus))))
    names = {name for name, _ in facts.gpus}
    if names:
        # One model per node is the rule; a mixed node says so rather than naming one of them.
        model = _value(names.pop()) if len(names) == 1 else "mixed"
        if model is not None:
            out.append(("gpu.model", model))
    totals = [mb for _, mb in facts.gpus]
    if totals and all(mb is not None for mb in totals):
        out.append(("vram.total-mib", str(sum(mb for mb in totals if mb is not None))))
    out.append(("vram.usable-mib", str(facts.usable_vram_mb)))

    by_role: dict[str, list[tuple[int, str]]] = {}
    for mid, roles in facts.models.items():
        if not _valid(mid):
            left_out.append(f"model {mid!r}: not a valid label name or value")
            continue
        for role, priority in roles.items():
            by_role.setdefault(role, []).append((priority, mid))
    for role in sorted(by_role):
        if not _valid(f"role.{role}"):
            left_out.append(f"role {role!r}: not a valid label name")
            continue
        # The registry's favourite first; ties by id, so the file does not flap.
        ranked = sorted(by_role[role], key=lambda pm: (-pm[0], pm[1]))
        out.append((f"role.{role}", ranked[0][1]))
        for priority, mid in ranked:
            name = f"role.{role}.{mid}"
            if _valid(name):
                out.append((name, str(priority)))
            else:
                left_out.append(f"{name}: longer than the 63 characters of a label name")
    return [(f"{NAMESPACE}/{k}", v) for k, v in out], left_out


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render(facts: NodeFacts, *, now: datetime, ttl_seconds: float) -> Rendered:
    """The file: a header, the expiry line, the labels within NFD's size limit."""
    expires = datetime.fromtimestamp(now.timestamp() + ttl_seconds, UTC)
    head = [
        f"# gpulet node labels, written {_rfc3339(now)}; rewritten on change, do not edit.",
        f"# +expiry-time={_rfc3339(expires)}",
    ]
    labels, left_out = label_lines(facts)
    size = sum(len(line.encode()) + 1 for line in head)
    kept: list[str] = []
    for key, value in labels:
        line = f"{key}={value}"
        cost = len(line.encode()) + 1
        if size + cost > MAX_FILE_BYTES - _RESERVE:
            break
        kept.append(line)
        size += cost
    tail: list[str] = []
    dropped = len(labels) - len(kept)
    if dropped:
        tail.append(f"# {dropped} more labels left out: NFD ignores a file over 64 KiB")
    tail += [f"# left out: {why}"[:200] for why in left_out[:5]]
    if len(left_out) > 5:
        tail.append(f"# left out: {len(left_out) - 5} more")
    text = "\n".join([*head, *kept, *tail]) + "\n"
    return Rendered(text, tuple(kept), tuple(left_out))


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step: written to a dot-file in the same directory
    (NFD skips dot-files, and a rename is atomic only within one file system), flushed to
    disk, then renamed over it. A reader sees the old file or the new one, never a mix."""
    data = text.encode()
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{len(data)} bytes is over NFD's {MAX_FILE_BYTES}-byte limit")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes it 0600; nfd-worker may run as another user.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def facts_from(
    profile: str,
    gpus: Sequence[tuple[str, int | None]],
    usable_vram_mb: int,
    models: Mapping[str, Mapping[str, int]],
) -> NodeFacts:
    return NodeFacts(profile, tuple(gpus), usable_vram_mb, {m: dict(r) for m, r in models.items()})
