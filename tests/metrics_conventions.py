"""Prometheus naming conventions, checked on a real /metrics scrape (shared by unit and integration tests).

What is checked, and why: names are lowercase snake case with a ``sevisflow_`` prefix (or prometheus_client's
``process_``/``python_`` collectors); a counter's samples end in ``_total`` and nothing else does; a time is
in ``_seconds`` and a size in ``_bytes`` (never milliseconds, never a bare "age"/"timestamp"); every family
listed has at least one sample (no HELP/TYPE pair with nothing under it); no family appears twice; every
``sevisflow_`` sample has a ``stage`` label whose value is one of the pipeline's stage names.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

NAME = re.compile(r"[a-z][a-z0-9_]*")
PREFIXES = ("sevisflow_", "process_", "python_")
BAD_UNITS = re.compile(
    r"(^|_)(ms|millis|milliseconds|microseconds|minutes|hours|days|kilobytes|megabytes|percent)(_|$)"
)
TIME_WORDS = re.compile(r"(^|_)(age|timestamp|duration|latency|behind|time)(_|$)")


def families(text: str) -> list:
    return list(text_string_to_metric_families(text))


def problems(text: str, stages: Iterable[str] | None = None) -> list[str]:
    """Every convention ``text`` (a /metrics body) breaks; [] when it keeps them all."""
    out: list[str] = []
    declared = Counter(line.split()[2] for line in text.splitlines() if line.startswith("# TYPE "))
    out += [f"{name}: declared {n} times" for name, n in declared.items() if n > 1]
    known = set(stages) if stages is not None else None
    for fam in families(text):
        out += _family_problems(fam, known)
    return out


def _family_problems(fam, stages: set[str] | None) -> list[str]:
    name, out = fam.name, []
    if not NAME.fullmatch(name) or not name.startswith(PREFIXES):
        out.append(f"{name}: not a lowercase snake-case name with a sevisflow_/process_/python_ prefix")
    if not fam.samples:
        out.append(f"{name}: declared but never sampled")
    if BAD_UNITS.search(name):
        out.append(f"{name}: use base units in the name (_seconds, _bytes, ratio 0..1)")
    if TIME_WORDS.search(name) and not name.endswith(("_seconds", "_seconds_total")):
        out.append(f"{name}: a time must be in seconds and named …_seconds")
    for s in fam.samples:
        if fam.type == "counter" and not s.name.endswith(("_total", "_created")):
            out.append(f"{s.name}: a counter's sample must end in _total")
        if fam.type != "counter" and s.name.endswith("_total"):
            out.append(f"{s.name}: only counters end in _total ({fam.type})")
        if name.startswith("sevisflow_"):
            stage = s.labels.get("stage")
            if not stage:
                out.append(f"{s.name}{s.labels}: no stage label")
            elif stages is not None and stage not in stages:
                out.append(f"{s.name}: stage label {stage!r} is not one of {sorted(stages)}")
    return out


def sample_names(text: str) -> set[str]:
    """The names a query can use: every sample's name (``…_total``, ``…_bucket``, ``…_sum``, …)."""
    return {s.name for fam in families(text) for s in fam.samples}
