"""Benchmarks of the sinks (``python -m bench.sinks``)."""
