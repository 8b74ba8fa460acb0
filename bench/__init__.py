"""Benchmarks of gpulet that print ratios against baselines measured in the same run: the
scheduler core replayed on workload traces against emulations of its peers' policies
(`replay`, `sim`, `policies`, `workloads`), and the RPC hot path against a bare gRPC echo
server (`rpc`). Run `python -m bench` (`--quick` for a short run)."""
