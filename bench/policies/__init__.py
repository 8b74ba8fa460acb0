"""The policies replayed by `bench.sim`: gpulet's core and emulations of its peers, each
behind the core's event interface (baselines.md, "Scheduling policies")."""

from __future__ import annotations

from bench.policies.gpulet import gpulet_build
from bench.policies.llamaswap import LlamaSwapLike
from bench.policies.modelmesh import ModelMeshLike
from bench.policies.noop import NoOp
from bench.policies.ollama import OllamaLike
from bench.policies.oracle import OfflineBound
from bench.policies.rayserve import RayServeLike
from bench.policies.vramd import VramdLike

__all__ = [
    "LlamaSwapLike",
    "ModelMeshLike",
    "NoOp",
    "OfflineBound",
    "OllamaLike",
    "RayServeLike",
    "VramdLike",
    "gpulet_build",
]
