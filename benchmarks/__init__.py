"""Throughput and fidelity measurements; results are written to benchmarks/results/."""
