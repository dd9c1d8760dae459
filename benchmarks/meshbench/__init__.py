"""Benchmark suite for codomyrmex.service_mesh against its peers (issue 3, issue 4).

``benchmarks/run.py`` is the entry point; this package holds the harness (timing loops,
interleaved repeats), the workloads (one module per concern) and the reporting.
"""
