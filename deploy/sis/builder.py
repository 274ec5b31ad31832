"""Builds the rows of one student at a time, deterministically; used by generator and activity.

All randomness comes from the `random.Random` it is given and all dates from its `today`.
Realism lives here: programme timelines on the academic calendar, ages that fit the degree level,
enrolment histories, funding that covers the cost of attendance, F-2/M-2 families.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TypeVar

from sevisflow.deploy.sis import refdata, terms
from sevisflow.deploy.sis.model import Row, School, empty_school
from sevisflow.deploy.sis.terms import Term

SCHOOL_EMAIL_DOMAIN = "students.example.edu"

# Regular terms (SP/FA) a programme lasts.
PROGRAM_TERMS: dict[str, int] = {
    "ASSOCIATE": 4,
    "BACHELORS": 8,
    "MASTERS": 4,
    "DOCTORATE": 10,
    "LANGUAGE": 2,
    "CERTIFICATE": 2,
    "NON_DEGREE": 2,
}
GRADUATE_LEVELS = frozenset({"MASTERS", "DOCTORATE"})
# (min, max) age when the programme starts
_START_AGE: dict[str, tuple[int, int]] = {
    "ASSOCIATE": (17, 30),
    "BACHELORS": (17, 23),
    "MASTERS": (21, 35),
    "DOCTORATE": (22, 36),
    "LANGUAGE": (17, 35),
    "CERTIFICATE": (18, 40),
    "NON_DEGREE": (19, 30),
}
_ENGLISH_NATIVE = frozenset({"IE", "CA", "US"})
UTC = UTC

T = TypeVar("T")


def weighted(rng: random.Random, options: Sequence[tuple[T, int]]) -> T:
    """Pick one value from (value, weight) pairs."""
    return rng.choices([v for v, _ in options], weights=[w for _, w in options])[0]


def years_before(day: date, years: int) -> date:
    """`day` moved back by whole years (29 Feb becomes 28 Feb)."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:
        return day.replace(year=day.year - years, day=28)


def ascii_fold(text: str) -> str:
    """Lower-case ASCII letters/digits of `text` (for e-mail local parts): 'Østergaard' -> 'ostergaard'."""
    special = {"ø": "o", "ß": "ss", "æ": "ae", "ı": "i", "đ": "d", "ł": "l", "œ": "oe"}
    text = "".join(special.get(c, c) for c in text.lower())
    text = unicodedata.normalize("NFKD", text)
    return "".join(c for c in text if c.isascii() and c.isalnum())


def at_time(rng: random.Random, day: date, first_hour: int = 8, last_hour: int = 18) -> datetime:
    """A UTC timestamp on `day` during office hours."""
    seconds = rng.randrange(first_hour * 3600, last_hour * 3600)
    return datetime.combine(day, time(), UTC) + timedelta(seconds=seconds)


@dataclass
class IdCounters:
    """Next free id per table; ids are explicit so loads are reproducible."""

    person: int = 1001
    address: int = 1
    program: int = 1
    enrollment: int = 1
    dependent: int = 1
    student_authorization: int = 1

    def take(self, table: str) -> int:
        """Allocate the next id of `table`."""
        value: int = getattr(self, table)
        setattr(self, table, value + 1)
        return value

    @classmethod
    def after(cls, school: School) -> IdCounters:
        """Counters that continue after every id already in `school`."""

        def nxt(table: str, column: str, default: int) -> int:
            return max((r[column] for r in school.get(table, [])), default=default - 1) + 1

        return cls(
            person=nxt("person", "person_id", 1001),
            address=nxt("address", "address_id", 1),
            program=nxt("program", "program_id", 1),
            enrollment=nxt("enrollment", "enrollment_id", 1),
            dependent=nxt("dependent", "dependent_id", 1),
            student_authorization=nxt("student_authorization", "authorization_id", 1),
        )


class SchoolBuilder:
    """Builds the rows of one student at a time; shared by the school and activity generators."""

    def __init__(
        self, rng: random.Random, today: date, ids: IdCounters | None = None, used_sevis_ids: set[str] | None = None
    ) -> None:
        self.rng = rng
        self.today = today
        self.ids = ids or IdCounters()
        self.used_sevis_ids = used_sevis_ids if used_sevis_ids is not None else set()
        self.calendar = terms.calendar(today.year - 8, today.year + 1)
        self.term_ids = {t.term_id for t in self.calendar}
        self.last_started = terms.last_started_ordinal(today)
        self.next_ordinal = self.last_started + 1

    # ---- people -------------------------------------------------------------------------------

    def name(self, pool_name: str, gender: str) -> tuple[str | None, str | None, str]:
        """(first, middle, last) from one naming tradition."""
        pool = refdata.POOLS[pool_name]
        rng = self.rng
        given = pool.male if gender == "M" else pool.female if gender == "F" else pool.male + pool.female
        last = rng.choice(pool.family)
        if rng.random() < pool.mononym_share:
            return None, None, last
        first = rng.choice(given)
        middle = rng.choice([g for g in given if g != first]) if rng.random() < 0.3 else None
        return first, middle, last

    def phone(self, country: str) -> tuple[str, str]:
        """(digits, country calling code); US numbers use the fictional 555-01xx range."""
        rng = self.rng
        if country == "US":
            return f"{rng.choice(refdata.US_AREA_CODES)}555{rng.randint(100, 199):04d}", "1"
        code = refdata.COUNTRIES[country][1]
        if country == "CN":
            return rng.choice(("138", "139", "150", "186")) + f"{rng.randrange(10**8):08d}", code
        if country == "IN":
            return rng.choice("6789") + f"{rng.randrange(10**9):09d}", code
        return rng.choice("23456789") + f"{rng.randrange(10**8):08d}", code

    def person(
        self, citizenship: str, birth_country: str, birth_date: date, *, foreign_phone: bool, school_email: bool
    ) -> Row:
        """A `person` row with a name typical for the country of citizenship."""
        rng = self.rng
        person_id = self.ids.take("person")
        gender = weighted(rng, (("M", 49), ("F", 49), ("X", 2)))
        pool = weighted(rng, refdata.COUNTRIES[citizenship][0])
        first, middle, last = self.name(pool, gender)
        preferred = None
        if pool in ("chinese", "cantonese", "korean") and first and rng.random() < 0.25:
            preferred = rng.choice(refdata.POOLS["american"].male + refdata.POOLS["american"].female)
        if birth_country == "US":
            birth_city: str | None = rng.choice(refdata.US_PLACES + refdata.SCHOOL_TOWN)[0]
        else:
            birth_city = rng.choice(refdata.FOREIGN_PLACES[birth_country])[0]
        if rng.random() < 0.03:
            birth_city = None
        local = (ascii_fold(first or "")[:1] + ascii_fold(last)[:10]) or "student"
        if school_email:
            email = f"{local}{person_id % 1000}@{SCHOOL_EMAIL_DOMAIN}"
        else:
            email = f"{ascii_fold(first or last)}.{ascii_fold(last)}{rng.randint(1, 99)}@" + rng.choice(
                ("example.com", "example.net", "example.org")
            )
        phone, phone_cc = self.phone(citizenship if foreign_phone else "US")
        return {
            "person_id": person_id,
            "school_id": f"S{person_id:08d}",
            "school_code": None,  # the main school; generate_vendor sets member schools' codes
            "first_name": first,
            "middle_name": middle,
            "last_name": last,
            "preferred_name": preferred,
            "birth_date": birth_date,
            "gender": gender,
            "birth_city": birth_city,
            "birth_country": birth_country,
            "citizenship_country": citizenship,
            "email": email,
            "phone": phone,
            "phone_country_code": phone_cc,
            "updated_at": at_time(rng, self.today - timedelta(days=rng.randint(1, 400))),
        }

    def birth_date(self, level: str, start: date) -> date:
        """A birth date fitting the level's start age, clamped to ages 17-45 on `today`."""
        low, high = _START_AGE[level]
        born = years_before(start, self.rng.randint(low, high)) - timedelta(days=self.rng.randint(0, 364))
        youngest = years_before(self.today, 17)
        oldest = years_before(self.today, 46) + timedelta(days=1)
        return min(max(born, oldest), youngest)

    # ---- addresses ----------------------------------------------------------------------------

    def us_place(self, kind: str, local: bool) -> Row:
        """Address fields of a US physical or mailing address, near the school when `local`."""
        rng = self.rng
        city, state, zip_code = rng.choice(refdata.SCHOOL_TOWN if local else refdata.US_PLACES)
        if kind == "US_MAILING" and rng.random() < 0.3:
            line1, line2 = f"PO Box {rng.randint(100, 9999)}", None
        else:
            line1 = f"{rng.randint(100, 2999)} {rng.choice(refdata.US_STREETS)}"
            line2 = rng.choice(
                (None, None, f"Apt {rng.randint(1, 40)}{rng.choice('ABCD')}", f"Unit {rng.randint(100, 999)}")
            )
        return {"line1": line1, "line2": line2, "city": city, "state": state, "postal_code": zip_code, "country": "US"}

    def foreign_place(self, country: str) -> Row:
        """Address fields of a home-country address."""
        rng = self.rng
        city, province, postal = rng.choice(refdata.FOREIGN_PLACES[country])
        line1 = f"{rng.randint(1, 300)} {rng.choice(refdata.FOREIGN_STREETS[country])}"
        line2 = rng.choice((None, None, f"Flat {rng.randint(1, 30)}", f"Building {rng.randint(1, 9)}"))
        return {
            "line1": line1,
            "line2": line2,
            "city": city,
            "state": province,
            "postal_code": postal,
            "country": country,
        }

    def us_address(self, person_id: int, kind: str, local: bool) -> Row:
        """An `address` row in the US."""
        return {
            "address_id": self.ids.take("address"),
            "person_id": person_id,
            "kind": kind,
            **self.us_place(kind, local),
        }

    def foreign_address(self, person_id: int, country: str) -> Row:
        """A FOREIGN `address` row."""
        return {
            "address_id": self.ids.take("address"),
            "person_id": person_id,
            "kind": "FOREIGN",
            **self.foreign_place(country),
        }

    # ---- programme, enrollment ----------------------------------------------------------------

    def program(
        self,
        person_id: int,
        level: str,
        first: int,
        status: str,
        *,
        international: bool,
        citizenship: str,
        is_current: bool = True,
    ) -> Row:
        """A `program` row spanning PROGRAM_TERMS[level] regular terms from ordinal `first`."""
        rng = self.rng
        if level in ("CERTIFICATE", "NON_DEGREE") and rng.random() < 0.5 and international:
            major = rng.choice(refdata.CIP_VOCATIONAL)
        elif level == "LANGUAGE":
            major = refdata.CIP_LANGUAGE
        else:
            major = rng.choice(refdata.CIP_ACADEMIC)
        others = [c for c in refdata.CIP_ACADEMIC if c != major]
        second = rng.choice(others) if level == "BACHELORS" and rng.random() < 0.08 else None
        minor = rng.choice(others) if level == "BACHELORS" and rng.random() < 0.2 else None
        eng_req: bool | None = None
        eng_met: bool | None = None
        eng_reason = None
        if international:
            if level == "LANGUAGE":
                eng_req, eng_reason = False, "Enrolled in an intensive English program"
            elif citizenship in _ENGLISH_NATIVE:
                eng_req, eng_reason = False, "Native English speaker"
            else:
                eng_req, eng_met = True, rng.random() < 0.95
        return {
            "program_id": self.ids.take("program"),
            "person_id": person_id,
            "degree_level": level,
            "major_cip": major,
            "second_major_cip": second,
            "minor_cip": minor,
            "start_date": terms.regular(first).start_date,
            "expected_end_date": terms.regular(first + PROGRAM_TERMS[level] - 1).end_date,
            "status": status,
            "english_required": eng_req,
            "english_met": eng_met,
            "english_not_required_reason": eng_reason,
            "is_current": is_current,
        }

    def course_load(self, level: str, full_time: bool) -> tuple[Decimal, bool]:
        """(credit hours, full-time flag) for one term."""
        rng = self.rng
        hours: float
        if level in GRADUATE_LEVELS:
            hours = rng.choice((8, 9, 9, 10, 12)) if full_time else rng.choice((3, 4, 6))
        else:
            hours = rng.choice((12, 13, 14, 15, 15, 16, 17, 18)) if full_time else rng.choice((6, 7, 9))
        if rng.random() < 0.05:
            hours += 0.5
        return Decimal(f"{hours:.1f}"), full_time

    def enrollment(
        self, person_id: int, t: Term, level: str, status: str, confirmed_at: datetime | None, *, full_time: bool = True
    ) -> Row:
        """An `enrollment` row."""
        hours, ft = self.course_load(level, full_time)
        return {
            "enrollment_id": self.ids.take("enrollment"),
            "person_id": person_id,
            "term_id": t.term_id,
            "status": status,
            "credit_hours": hours,
            "full_time": ft,
            "confirmed_at": confirmed_at,
        }

    def enrollments(
        self, person_id: int, level: str, first: int, last: int, final_status: str | None, part_time_share: float
    ) -> list[Row]:
        """Enrollment history for regular terms `first`..`last` (plus the odd summer term).

        The term in progress on `today` is ENROLLED only if confirmation already happened;
        the next term gets a REGISTERED row when registration for it is open.
        """
        rng = self.rng
        rows: list[Row] = []
        program_end = first + PROGRAM_TERMS[level] - 1
        for ordinal in range(first, min(last, self.last_started) + 1):
            t = terms.regular(ordinal)
            if t.term_id not in self.term_ids:
                continue
            full = rng.random() >= (0.2 if ordinal == program_end else part_time_share)
            confirmed: datetime | None = at_time(rng, t.start_date + timedelta(days=rng.randint(0, 20)))
            status = "ENROLLED"
            if confirmed is not None and confirmed.date() >= self.today:
                status, confirmed = "REGISTERED", None
            if ordinal == last and final_status is not None:
                status = final_status
            rows.append(self.enrollment(person_id, t, level, status, confirmed, full_time=full))
            summer = terms.term(t.year, "SU")
            if (
                t.season == "SP"
                and ordinal < min(last, program_end)
                and summer.end_date < self.today
                and summer.term_id in self.term_ids
                and rng.random() < 0.08
            ):
                rows.append(
                    self.enrollment(
                        person_id,
                        summer,
                        level,
                        "ENROLLED",
                        at_time(rng, summer.start_date + timedelta(days=3)),
                        full_time=False,
                    )
                )
        nxt = terms.regular(self.next_ordinal)
        if (
            final_status is None
            and first <= self.next_ordinal <= min(last, program_end)
            and (nxt.start_date - self.today).days <= 75
            and nxt.term_id in self.term_ids
            and rng.random() < 0.65
        ):
            rows.append(self.enrollment(person_id, nxt, level, "REGISTERED", None))
        return rows

    # ---- timelines ----------------------------------------------------------------------------

    def first_ordinal(self, level: str, stage: str) -> tuple[int, int]:
        """(first regular term, last term attended) of a programme in `stage` on `today`."""
        rng = self.rng
        n = PROGRAM_TERMS[level]
        today_ordinal = terms.ordinal_on_or_after(self.today)
        if stage in ("new_admit", "initial", "declined"):
            first = self.next_ordinal + (1 if rng.random() < 0.3 else 0)
            return first, first - 1
        if stage == "deferred":
            return self.next_ordinal + 1, self.next_ordinal
        if stage == "completed":
            last_ended = (
                self.last_started if terms.regular(self.last_started).end_date < self.today else self.last_started - 1
            )
            end = rng.randint(terms.ordinal_on_or_after(self.today - timedelta(days=700)), last_ended)
            return end - n + 1, end
        first = rng.randint(today_ordinal - n + 1, self.last_started)  # started, not yet over
        just_ended = terms.regular(self.last_started).end_date
        if stage == "active" and just_ended < self.today <= just_ended + timedelta(days=60) and rng.random() < 0.15:
            first = self.last_started - n + 1  # finished last term; completion not recorded yet
        if stage == "terminated":
            return first, rng.randint(first, self.last_started)
        return first, first + n - 1

    # ---- whole students -----------------------------------------------------------------------

    def international(self, stage: str | None = None, visa: str | None = None) -> School:
        """All rows of one F-1 / M-1 / J-1 student in `stage` (random when None)."""
        rng = self.rng
        visa = visa or weighted(rng, (("F-1", 85), ("M-1", 6), ("J-1", 9)))
        stage = stage or weighted(
            rng,
            (
                ("new_admit", 6),
                ("initial", 8),
                ("deferred", 1),
                ("declined", 1),
                ("active", 76),
                ("completed", 5),
                ("terminated", 3),
            ),
        )
        if visa == "M-1":
            level = weighted(rng, (("CERTIFICATE", 7), ("NON_DEGREE", 3)))
        elif visa == "J-1":
            level = weighted(rng, (("NON_DEGREE", 60), ("DOCTORATE", 25), ("MASTERS", 15)))
        else:
            level = weighted(
                rng,
                (
                    ("BACHELORS", 38),
                    ("MASTERS", 35),
                    ("DOCTORATE", 12),
                    ("LANGUAGE", 5),
                    ("ASSOCIATE", 5),
                    ("CERTIFICATE", 3),
                    ("NON_DEGREE", 2),
                ),
            )
        citizenship = weighted(rng, refdata.INTERNATIONAL_COUNTRY_WEIGHTS)
        birth_country = citizenship
        if rng.random() < 0.05:
            birth_country = weighted(rng, refdata.INTERNATIONAL_COUNTRY_WEIGHTS)
        first, last = self.first_ordinal(level, stage)
        program_status = {
            "new_admit": "ADMITTED",
            "initial": "ADMITTED",
            "deferred": "DEFERRED",
            "declined": "DECLINED",
            "active": "ACTIVE",
            "completed": "COMPLETED",
            "terminated": rng.choice(("WITHDRAWN", "WITHDRAWN", "DISMISSED")),
        }[stage]
        admitted = stage in ("new_admit", "initial", "deferred", "declined")
        issue_reason = "S" if rng.random() < 0.1 else "I"
        in_us = not admitted or issue_reason == "S"
        prior_bachelors = level in GRADUATE_LEVELS and stage == "active" and rng.random() < 0.2
        born = self.birth_date(level, terms.regular(first).start_date)
        if prior_bachelors:  # old enough to have started the bachelor's here at 17
            born = max(
                min(born, years_before(terms.regular(first - 8).start_date, 17)),
                years_before(self.today, 46) + timedelta(days=1),
            )
        person = self.person(
            citizenship, birth_country, born, foreign_phone=not in_us or rng.random() < 0.25, school_email=not admitted
        )
        pid = person["person_id"]
        out = empty_school()
        out["person"].append(person)

        start = terms.regular(first).start_date
        sevis_id = None if stage == "new_admit" else self.sevis_id()
        issued = None
        if sevis_id is not None:
            issued = min(start - timedelta(days=rng.randint(45, 150)), self.today - timedelta(days=rng.randint(1, 30)))
        out["immigration"].append(
            {
                "person_id": pid,
                "visa_type": visa,
                "sevis_id": sevis_id,
                "sevis_status": {
                    "new_admit": None,
                    "initial": "INITIAL",
                    "deferred": "INITIAL",
                    "declined": "CANCELED",
                    "active": "ACTIVE",
                    "completed": "COMPLETED",
                    "terminated": "TERMINATED",
                }[stage],
                "issue_reason": issue_reason,
                "i20_issue_date": issued,
            }
        )

        out["address"].append(self.foreign_address(pid, citizenship))
        if in_us and not (stage == "completed" and rng.random() < 0.3):
            out["address"].append(self.us_address(pid, "US_PHYSICAL", local=not admitted))
            if rng.random() < 0.12:
                out["address"].append(self.us_address(pid, "US_MAILING", local=rng.random() < 0.5))

        if prior_bachelors:
            out["program"].append(
                self.program(
                    pid,
                    "BACHELORS",
                    first - 8,
                    "COMPLETED",
                    international=True,
                    citizenship=citizenship,
                    is_current=False,
                )
            )
        program = self.program(pid, level, first, program_status, international=True, citizenship=citizenship)
        out["program"].append(program)

        if stage in ("active", "completed", "terminated"):
            final = {"terminated": "WITHDRAWN" if program_status == "WITHDRAWN" else None}.get(stage)
            out["enrollment"] += self.enrollments(pid, level, first, last, final, 0.03)
        elif stage == "initial" and first == self.next_ordinal:
            out["enrollment"] += self.enrollments(pid, level, first, first, None, 0.0)

        if visa in ("F-1", "M-1") and (self.today - born).days > 24 * 365 and rng.random() < 0.12:
            out["dependent"] += self.family(person, "F-2" if visa == "F-1" else "M-2")
        out["finance"].append(self.finance(pid, level, visa, out["dependent"]))
        return out

    def domestic(self) -> School:
        """All rows of one domestic student (citizen, permanent resident or non-F/M/J visa)."""
        rng = self.rng
        level = weighted(
            rng,
            (
                ("BACHELORS", 55),
                ("ASSOCIATE", 10),
                ("MASTERS", 22),
                ("DOCTORATE", 5),
                ("CERTIFICATE", 5),
                ("NON_DEGREE", 3),
            ),
        )
        stage = weighted(rng, (("initial", 8), ("active", 80), ("completed", 7), ("terminated", 5)))
        visa_kind = weighted(rng, (("citizen", 80), ("H-1B", 9), ("LPR", 9), ("B-2", 2)))
        citizenship = "US" if visa_kind == "citizen" else weighted(rng, refdata.INTERNATIONAL_COUNTRY_WEIGHTS)
        birth_country = citizenship
        if visa_kind == "citizen" and rng.random() < 0.08:  # naturalized citizen born abroad
            birth_country = weighted(rng, refdata.INTERNATIONAL_COUNTRY_WEIGHTS)
        first, last = self.first_ordinal(level, stage)
        born = self.birth_date(level, terms.regular(first).start_date)
        person = self.person(citizenship, birth_country, born, foreign_phone=False, school_email=stage != "initial")
        pid = person["person_id"]
        out = empty_school()
        out["person"].append(person)
        if visa_kind != "citizen":
            out["immigration"].append(
                {
                    "person_id": pid,
                    "visa_type": None if visa_kind == "LPR" else visa_kind,
                    "sevis_id": None,
                    "sevis_status": None,
                    "issue_reason": None,
                    "i20_issue_date": None,
                }
            )
        out["address"].append(self.us_address(pid, "US_PHYSICAL", local=stage != "initial"))
        if rng.random() < 0.3:
            out["address"].append(self.us_address(pid, "US_MAILING", local=False))
        status = {"initial": "ADMITTED", "active": "ACTIVE", "completed": "COMPLETED", "terminated": "WITHDRAWN"}[stage]
        out["program"].append(self.program(pid, level, first, status, international=False, citizenship=citizenship))
        if stage != "initial":
            final = "WITHDRAWN" if stage == "terminated" else None
            out["enrollment"] += self.enrollments(pid, level, first, last, final, 0.25)
        return out

    # ---- immigration extras -------------------------------------------------------------------

    def sevis_id(self) -> str:
        """A fresh SEVIS ID: 'N' and 10 digits."""
        while True:
            candidate = f"N00{self.rng.randrange(10**8):08d}"
            if candidate not in self.used_sevis_ids:
                self.used_sevis_ids.add(candidate)
                return candidate

    def dependent(self, student: Row, relationship: str, visa: str) -> Row:
        """One F-2 / M-2 spouse or child of `student`."""
        rng = self.rng
        student_born: date = student["birth_date"]
        if relationship == "SPOUSE":
            gender = {"M": "F", "F": "M"}.get(student["gender"], rng.choice("MF"))
            born = student_born + timedelta(days=rng.randint(-4 * 365, 4 * 365))
            born = min(born, years_before(self.today, 18))
        else:
            gender = rng.choice("MF")
            earliest = max(years_before(self.today, 15), student_born + timedelta(days=20 * 365))
            span = max((self.today - earliest).days - 30, 1)
            born = earliest + timedelta(days=rng.randrange(span))
        country = student["citizenship_country"]
        pool = weighted(rng, refdata.COUNTRIES[country][0])
        first, _, own_last = self.name(pool, gender)
        last = student["last_name"] if relationship == "CHILD" or rng.random() < 0.6 else own_last
        return {
            "dependent_id": self.ids.take("dependent"),
            "person_id": student["person_id"],
            "first_name": first,
            "last_name": last,
            "birth_date": born,
            "gender": gender,
            "birth_country": country,
            "citizenship_country": country,
            "relationship": relationship,
            "visa_type": visa,
            "status": "ACTIVE",
        }

    def family(self, student: Row, visa: str) -> list[Row]:
        """A spouse and sometimes children."""
        rows = [self.dependent(student, "SPOUSE", visa)]
        if self.rng.random() < 0.45:
            rows += [self.dependent(student, "CHILD", visa) for _ in range(self.rng.randint(1, 2))]
        return rows

    def finance(self, person_id: int, level: str, visa: str, dependents: list[Row]) -> Row:
        """Cost of attendance and funding for one academic year; funding covers the costs."""
        rng = self.rng
        tuition_range = {
            "ASSOCIATE": (9000, 18000),
            "BACHELORS": (28000, 52000),
            "MASTERS": (30000, 58000),
            "DOCTORATE": (30000, 55000),
            "LANGUAGE": (9000, 16000),
            "CERTIFICATE": (14000, 26000),
            "NON_DEGREE": (15000, 30000),
        }[level]
        months = 12 if visa == "M-1" or level == "LANGUAGE" else rng.choice((9, 9, 9, 12))
        tuition = rng.randint(*tuition_range)
        living = rng.randint(12000, 21000) * months // 9
        active = [d for d in dependents if d["status"] == "ACTIVE"]
        dependent_expenses = sum(6000 if d["relationship"] == "SPOUSE" else 4000 for d in active)
        other_costs = rng.randint(0, 2500)
        total = tuition + living + dependent_expenses + other_costs
        school_funds, remarks = 0, None
        if level == "DOCTORATE" or (level == "MASTERS" and rng.random() < 0.3):
            share = 0.9 if level == "DOCTORATE" else rng.uniform(0.2, 0.6)
            school_funds = int(total * share)
            remarks = refdata.SCHOOL_FUND_REMARKS[0 if level == "DOCTORATE" else rng.randint(1, 3)]
        other_funds, source = 0, None
        if rng.random() < 0.15:
            other_funds = int((total - school_funds) * rng.uniform(0.3, 1.0))
            source = rng.choice(refdata.OTHER_FUND_SOURCES)
        personal = total - school_funds - other_funds + rng.randint(0, 8000)
        return {
            "person_id": person_id,
            "academic_term_months": months,
            "tuition": tuition,
            "living_expenses": living,
            "dependent_expenses": dependent_expenses,
            "other_costs": other_costs,
            "other_costs_remarks": refdata.OTHER_COST_REMARKS if other_costs else None,
            "personal_funds": personal,
            "school_funds": school_funds,
            "school_funds_remarks": remarks,
            "other_funds": other_funds,
            "other_funds_source": source,
        }
