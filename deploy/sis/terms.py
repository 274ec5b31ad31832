"""Academic calendar of the reference school, computed from dates alone (no table lookups).

Semesters: Spring (SP) and Fall (FA) are the regular terms; Summer (SU) is vacation for most F-1
students, so a term's `next_term_start` skips summer (what SEVIS Registration calls the next
session). Regular terms are numbered by an ordinal (year*2, +1 for Fall) so "the term n terms
after this one" is plain arithmetic, which program start/end dates need.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

# season -> (earliest start month/day, length in days, display name); starts fall on a Monday and
# the lengths make every term end on a Friday.
_SHAPE: dict[str, tuple[tuple[int, int], int, str]] = {
    "SP": ((1, 13), 109, "Spring"),
    "SU": ((5, 26), 67, "Summer"),
    "FA": ((8, 22), 109, "Fall"),
}


@dataclass(frozen=True)
class Term:
    """One term: what the `term` table holds, plus its season and year."""

    year: int
    season: str
    start_date: date
    end_date: date
    next_term_start: date

    @property
    def term_id(self) -> str:
        """The SIS key, e.g. '2026FA'."""
        return f"{self.year}{self.season}"

    @property
    def name(self) -> str:
        """Display name, e.g. 'Fall 2026'."""
        return f"{_SHAPE[self.season][2]} {self.year}"

    @property
    def ordinal(self) -> int:
        """Position among regular terms; only meaningful for SP and FA."""
        return self.year * 2 + (1 if self.season == "FA" else 0)

    def row(self) -> dict[str, object]:
        """The row of table `term`."""
        return {
            "term_id": self.term_id,
            "name": self.name,
            "start_date": self.start_date,
            "end_date": self.end_date,
            "next_term_start": self.next_term_start,
        }


def _start(year: int, season: str) -> date:
    (month, day), _, _ = _SHAPE[season]
    earliest = date(year, month, day)
    return earliest + timedelta(days=(7 - earliest.weekday()) % 7)


@lru_cache(maxsize=4096)
def term(year: int, season: str) -> Term:
    """The term of `season` ('SP', 'SU', 'FA') in `year`."""
    start = _start(year, season)
    end = start + timedelta(days=_SHAPE[season][1])
    next_start = _start(year + 1, "SP") if season == "FA" else _start(year, "FA")
    return Term(year, season, start, end, next_start)


@lru_cache(maxsize=4096)
def regular(ordinal: int) -> Term:
    """The regular (SP/FA) term with this ordinal."""
    return term(ordinal // 2, "FA" if ordinal % 2 else "SP")


def ordinal_on_or_after(day: date) -> int:
    """Ordinal of the regular term containing `day`, or of the next one if `day` is in a break."""
    for candidate in (day.year * 2, day.year * 2 + 1):
        if day <= regular(candidate).end_date:
            return candidate
    return day.year * 2 + 2


def last_started_ordinal(day: date) -> int:
    """Ordinal of the latest regular term that started on or before `day`."""
    ordinal = ordinal_on_or_after(day)
    return ordinal if regular(ordinal).start_date <= day else ordinal - 1


def calendar(first_year: int, last_year: int) -> list[Term]:
    """All terms from Spring of `first_year` to Fall of `last_year`, in date order."""
    return [term(y, s) for y in range(first_year, last_year + 1) for s in ("SP", "SU", "FA")]
