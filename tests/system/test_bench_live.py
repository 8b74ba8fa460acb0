"""The live replay on gpulet's side, end to end: a real gpuletd, real worker processes, the
bundled client. (vramd's side needs PyPI; `python -m bench.live` runs it.)"""

from __future__ import annotations

import pytest

from bench.live import traces
from bench.live.gpulet_side import run_gpulet
from bench.live.results import summarise

pytestmark = pytest.mark.system


def test_a_short_workflow_is_served_and_every_load_is_recorded() -> None:
    w = traces.workflow(1)
    run = run_gpulet(w)
    r = summarise("gpulet", run)
    assert (r.requests, r.served, r.refused) == (len(w.requests), len(w.requests), 0)
    for rec in run["requests"]:
        assert rec["arrived"] <= rec["granted"] <= rec["released"] <= rec["done"]
    # LLM, TTS, image: three cold models, then the LLM again, which had to make room for the
    # image (any two fit, all three do not) or was kept.
    ready = [x for x in run["workers"] if x["event"] == "ready"]
    assert {x["model"] for x in ready} == {"llm", "tts", "image"}
    assert 3 <= r.loads <= 4
    # Every load made a request wait, so each has a grant-after-ready lag.
    assert r.lag_p50_s is not None and r.lag_p50_s >= 0
    for x in ready:
        assert x["ready"] - x["start"] >= w.model(x["model"]).load_s
        # The load counts from the process's start, which came before its first line ran.
        assert x["start"] <= x["main"] <= x["ready"]
