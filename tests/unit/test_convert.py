"""A model's message keeps its registry part between calls (services/convert.py), yet always
shows the model as configured now and never leaks one call's state into the next."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from gpulet.v1 import types_pb2 as pb
from gpuletd.registry import Backend, Model
from gpuletd.services.convert import model_pb

MODEL = Model("m", "m", Backend.PROCESS, "q4_k_m", 3000, MappingProxyType({"caption": 50}))


def test_a_reloaded_model_shows_its_new_definition() -> None:
    assert model_pb(MODEL).vram_estimate_mb == 3000
    # A reload makes a new Model under the same id.
    reloaded = replace(MODEL, vram_estimate_mb=4000, role_priority={"caption": 70})
    msg = model_pb(reloaded)
    assert (msg.vram_estimate_mb, msg.reservation_mb) == (4000, 4000)
    assert dict(msg.role_priority) == {"caption": 70}


def test_one_answer_never_changes_the_next() -> None:
    first = model_pb(MODEL, endpoint="http://127.0.0.1:8001")
    first.role_priority["caption"] = 1
    first.state = pb.MODEL_STATE_LOADED
    again = model_pb(MODEL)
    assert again.endpoint == ""
    assert dict(again.role_priority) == {"caption": 50}
    assert again.state == pb.MODEL_STATE_UNLOADED
