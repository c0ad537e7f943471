"""Benchmarks: `make bench` runs them all; results are written up in BENCHMARKS.md."""
