"""Benchmark of the DSO's `batch show` and `batch close` on a 250-record batch (``python -m bench.batcher``)."""
