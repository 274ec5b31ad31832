"""Deterministic generator of a reference school: table name -> list of row dicts.

Pure: all randomness comes from `random.Random(seed)` and all dates from the `today` argument, so
the same (n_students, international_share, seed, today) always gives the same rows, and the
pipeline's tests can assert exact event counts. The rows obey deploy/sis/schema.sql.
`generate_vendor` makes one SIS holding several schools, told apart by `person.school_code`.

International students are those with an F-1, M-1 or J-1 visa in `immigration`; everyone else is
domestic (no immigration row, or an H-1B / B-2 / unrecorded visa) and must be ignored downstream.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
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

__all__ = [
    "INTERNATIONAL_VISAS",
    "PRIMARY_KEYS",
    "TABLE_ORDER",
    "Row",
    "School",
    "generate_school",
    "generate_vendor",
    "is_international",
]


def _check_share(international_share: float) -> None:
    if not 0.0 <= international_share <= 1.0:
        raise ValueError("international_share must be between 0 and 1")


def _add_students(
    school: School, builder: SchoolBuilder, rng: random.Random, n_students: int, share: float, code: str | None
) -> None:
    """Append `n_students` students, round(n_students * share) of them F-1/M-1/J-1, all of school `code`."""
    n_international = round(n_students * share)
    kinds = [True] * n_international + [False] * (n_students - n_international)
    rng.shuffle(kinds)
    for international in kinds:
        part = builder.international() if international else builder.domestic()
        for person in part["person"]:
            person["school_code"] = code
        merge(school, part)


def generate_school(n_students: int, international_share: float, seed: int, today: date) -> School:
    """A school of `n_students`, round(n_students * international_share) of them F-1/M-1/J-1.

    Returns table -> rows (dicts keyed by column), tables in TABLE_ORDER, ready for load_school.
    Every person row has `school_code` None: the deployment's main school.
    """
    if n_students < 0:
        raise ValueError("n_students must be >= 0")
    _check_share(international_share)
    rng = random.Random(seed)
    builder = SchoolBuilder(rng, today)
    school = empty_school()
    school["term"] = [t.row() for t in builder.calendar]
    _add_students(school, builder, rng, n_students, international_share, None)
    return school


def generate_vendor(
    schools: Sequence[tuple[str | None, int]], international_share: float, seed: int, today: date
) -> School:
    """One SIS holding several schools, e.g. a vendor's or a multi-campus university's.

    `schools`: (sis school code, number of students) each, in order; the code is what `person.school_code`
    holds for that school's students (None: the deployment's main school). Each school has
    round(n * international_share) F-1/M-1/J-1 students. One builder makes every school, so ids, school ids
    and SEVIS ids are unique across schools; the schools share the term calendar.
    """
    _check_share(international_share)
    seen: set[str | None] = set()
    for code, n in schools:
        if code is not None and (not isinstance(code, str) or not code.strip() or code != code.strip()):
            raise ValueError(
                f"school code {code!r}: give a non-empty code without surrounding blanks, or None for the main school"
            )
        if code in seen:
            raise ValueError(f"school code {code!r} is given twice: give each school once with its total")
        if n < 0:
            raise ValueError(f"school {code!r}: the number of students must be >= 0")
        seen.add(code)
    rng = random.Random(seed)
    builder = SchoolBuilder(rng, today)
    school = empty_school()
    school["term"] = [t.row() for t in builder.calendar]
    for code, n in schools:
        _add_students(school, builder, rng, n, international_share, code)
    return school
