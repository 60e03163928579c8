"""Benchmarks: `python -m common.bench offline ...` or `common.bench.offline.run_offline(...)`."""
from .offline import run_offline

__all__ = ["run_offline"]
