"""Chaos bench: the whole pipeline, each stage its own process, under random ``kill -9`` (testkit/chaos.py)."""
