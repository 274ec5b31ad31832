"""A SEVIS batch simulator for tests and dry runs (``sevisflow sevis-sim``)."""

from __future__ import annotations

from sevisflow.sinks.sevis_sim.certs import CertPaths, make_certs
from sevisflow.sinks.sevis_sim.server import SevisSimulator, read_known_ids

__all__ = ["CertPaths", "SevisSimulator", "make_certs", "read_known_ids"]
