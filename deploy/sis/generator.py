"""Deterministic generator of a reference school: table name -> list of row dicts.

Pure: all randomness comes from `random.Random(seed)` and all dates from the `today` argument, so
the same (n_students, international_share, seed, today) always gives the same rows, and the
pipeline's tests can assert exact event counts. The rows obey deploy/sis/schema.sql.

International students are those with an F-1, M-1 or J-1 visa in `immigration`; everyone else is
domestic (no immigration row, or an H-1B / B-2 / unrecorded visa) and must be ignored downstream.
"""

from __future__ import annotations

import random
from datetime import date

from sevisflow.deploy.sis.builder import SchoolBuilder
from sevisflow.deploy.sis.model import (
    INTERNATIONAL_VISAS,
    PRIMARY_KEYS,
    TABLE_ORDER,
    Row,
    School,
    empty_school,
    is_international,
    merge,
)

__all__ = ["INTERNATIONAL_VISAS", "PRIMARY_KEYS", "TABLE_ORDER", "Row", "School", "generate_school", "is_international"]


def generate_school(n_students: int, international_share: float, seed: int, today: date) -> School:
    """A school of `n_students`, round(n_students * international_share) of them F-1/M-1/J-1.

    Returns table -> rows (dicts keyed by column), tables in TABLE_ORDER, ready for load_school.
    """
    if n_students < 0:
        raise ValueError("n_students must be >= 0")
    if not 0.0 <= international_share <= 1.0:
        raise ValueError("international_share must be between 0 and 1")
    rng = random.Random(seed)
    builder = SchoolBuilder(rng, today)
    n_international = round(n_students * international_share)
    kinds = [True] * n_international + [False] * (n_students - n_international)
    rng.shuffle(kinds)
    school = empty_school()
    school["term"] = [t.row() for t in builder.calendar]
    for international in kinds:
        merge(school, builder.international() if international else builder.domestic())
    return school
