"""Benchmarks of gpulet that print ratios against baselines measured in the same run: the
scheduler core replayed on workload traces against emulations of its peers' policies
(`replay`, `sim`, `policies`, `workloads`), the core with a long queue (`core_scale`), the real
daemon against the real vramd from PyPI on the same traces (`live`), and the RPC hot path
against a bare gRPC echo server (`rpc`). Run `python -m bench` (`--quick` for a short run
without the live replay and the scale test; `make bench` writes docs/benchmarks.md), or
`python -m bench.live` for the real-daemon replay alone."""
