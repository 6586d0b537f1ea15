"""Benchmarks: each module runs its variants side by side and records the results
(``python -m benchmarks.NAME --help``; see benchmarks/RESULTS.md)."""
