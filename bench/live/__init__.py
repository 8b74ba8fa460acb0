"""The real-daemon replay: gpuletd as a subprocess with process backends, and the real vramd
(PyPI, unmodified, in a venv of the benchmark's own) on the same traces, in the same run.

Run `python -m bench.live` (see its `--help`). Modules:

- `traces`: the live traces (workflow, Zipf mix, cyclic scan), seeded and deterministic.
- `replayer`: drives one trace against one system through a `serve` callable (stdlib only:
  it also runs inside vramd's venv).
- `worker` / `vramd_worker`: the model backends, which sleep in proportion to their size
  before they are ready and record when they started and became ready.
- `fakenvml/pynvml.py`: the NVML vramd sees (one GPU; used memory = its live workers').
- `gpulet_side` / `vramd_side`: start each daemon, replay, stop it.
- `results` / `report`: the figures and the table.
"""
