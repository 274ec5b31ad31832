"""J-1 exchange visitors in the reference SIS: what a sponsor's international office keeps, and a season of it.

A university that sponsors J-1 exchange visitors keeps, next to the registrar's tables, an HR-style
"J-1 appointment" record per exchange visitor (``exchange_visitor``: sponsor program, category,
position, subject field, program dates, check-in, early end or termination), their funding
(``exchange_funding``), their sites of activity (``exchange_site``) and their J-2 dependents
(``exchange_dependent``). Two sponsor programs: ``RSCH`` (research scholars, professors, short-term
scholars, specialists: people who are not students, in ``person`` as every university id is) and
``STUD`` (the J-1 students the registrar already has).

Everything here is its own random stream and its own id ranges (people from :data:`PERSON_BASE`,
addresses from :data:`ADDRESS_BASE`), so ``generate_school`` and ``generate_activity`` give the same
rows whether or not a school runs a J program: the F/M activity is generated from the school
without these rows, and its ids never meet these.

* :func:`generate_exchange` → the rows to add to a school (scholars and the J-1 students' sponsor records);
* :func:`generate_exchange_activity` → a season: new appointments (and their SEVIS IDs entered once SEVIS
  answered), arrivals (check-in), address and site
  changes, extensions, early ends, terminations, no-shows, amended dates, subject and funding changes,
  dependents added, corrected, departed or entered in error.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from sevisflow.deploy.sis import refdata
from sevisflow.deploy.sis.activity import _Tx, activity_span
from sevisflow.deploy.sis.builder import UTC, IdCounters, SchoolBuilder, weighted, years_before
from sevisflow.deploy.sis.model import Row, School, Transaction, World, empty_school

SCHOLAR_PROGRAM = "RSCH"
STUDENT_PROGRAM = "STUD"
PERSON_BASE = 800_001
ADDRESS_BASE = 8_000_001
EXCHANGE_TABLES = ("exchange_visitor", "exchange_funding", "exchange_site", "exchange_dependent")

# the kinds of a season; every season of at least len(EV_KINDS) changes has each
EV_KINDS: tuple[str, ...] = (
    "ev_new_appointment",
    "ev_sevis_id_recorded",
    "ev_arrival",
    "ev_address_move",
    "ev_site_added",
    "ev_site_moved",
    "ev_site_closed",
    "ev_extension",
    "ev_early_end",
    "ev_termination",
    "ev_no_show",
    "ev_cancelled",
    "ev_amend",
    "ev_subject_change",
    "ev_funding_change",
    "ev_dependent_added",
    "ev_dependent_corrected",
    "ev_dependent_departed",
    "ev_dependent_error",
)
_WEIGHTS = {
    "ev_new_appointment": 6,
    "ev_sevis_id_recorded": 5,
    "ev_arrival": 12,
    "ev_address_move": 8,
    "ev_site_added": 4,
    "ev_site_moved": 3,
    "ev_site_closed": 2,
    "ev_extension": 5,
    "ev_early_end": 2,
    "ev_termination": 1,
    "ev_no_show": 1,
    "ev_cancelled": 1,
    "ev_amend": 3,
    "ev_subject_change": 2,
    "ev_funding_change": 3,
    "ev_dependent_added": 3,
    "ev_dependent_corrected": 1,
    "ev_dependent_departed": 1,
    "ev_dependent_error": 1,
}
_DEPARTMENTS = (
    ("11.0701", "Computer Science"),
    ("40.0801", "Physics"),
    ("26.0101", "Biology"),
    ("27.0101", "Mathematics"),
    ("14.1901", "Mechanical Engineering"),
    ("45.0601", "Economics"),
    ("14.0801", "Civil Engineering"),
    ("30.7001", "Data Science"),
)
_BUILDINGS = (
    "Loomis Laboratory",
    "Siebel Center",
    "Morrill Hall",
    "Altgeld Hall",
    "Mechanical Engineering Building",
    "David Kinley Hall",
    "Newmark Laboratory",
    "Beckman Institute",
)
_LABS = (
    ("Argonne Partner Laboratory", "Lemont", "Illinois", "60439"),
    ("Prairie Research Institute Field Station", "Champaign", "Illinois", "61820"),
    ("Fermi Partner Facility", "Batavia", "Illinois", "60510"),
)
_SCHOLAR_CATEGORIES = (("RESEARCH_SCHOLAR", 55), ("PROFESSOR", 15), ("SHORT_TERM_SCHOLAR", 20), ("SPECIALIST", 10))
_POSITIONS = {
    "RESEARCH_SCHOLAR": ("POSTDOC", "RESEARCHER"),
    "PROFESSOR": ("PROFESSOR", "ASSOCIATE_PROFESSOR"),
    "SHORT_TERM_SCHOLAR": ("VISITING_SCHOLAR",),
    "SPECIALIST": ("VISITING_SCHOLAR",),
}
_MONTHS = {"RESEARCH_SCHOLAR": (12, 36), "PROFESSOR": (6, 24), "SHORT_TERM_SCHOLAR": (1, 5), "SPECIALIST": (3, 12)}
_STUDENT_CATEGORY = {"MASTERS": "STUDENT_MASTERS", "DOCTORATE": "STUDENT_DOCTORATE", "BACHELORS": "STUDENT_BACHELORS"}
_SEVIS_STATUS_TO_EV = {
    None: "PENDING",
    "INITIAL": "PENDING",
    "ACTIVE": "CHECKED_IN",
    "COMPLETED": "COMPLETED",
    "TERMINATED": "TERMINATED",
    "CANCELED": "CANCELLED",
}


@dataclass
class _Ids:
    """Next free id of the exchange tables (their own sequences)."""

    site: int = 1
    dependent: int = 1

    def take(self, table: str) -> int:
        value: int = getattr(self, table)
        setattr(self, table, value + 1)
        return value

    @classmethod
    def after(cls, school: School) -> _Ids:
        return cls(
            site=max((r["site_id"] for r in school.get("exchange_site", [])), default=0) + 1,
            dependent=max((r["dependent_id"] for r in school.get("exchange_dependent", [])), default=0) + 1,
        )


def _months_after(day: date, months: int) -> date:
    y, m = divmod(day.month - 1 + months, 12)
    return date(day.year + y, m + 1, 1) - timedelta(days=1) if months else day


class ExchangeBuilder:
    """Rows of one exchange visitor at a time (scholar or J-1 student); all randomness from ``rng``."""

    def __init__(self, rng: random.Random, today: date, people: SchoolBuilder, ids: _Ids) -> None:
        self.rng, self.today, self.people, self.ids = rng, today, people, ids

    def site(self, pid: int, primary: bool, department: str | None = None) -> Row:
        rng = self.rng
        if primary:
            city, state, zip_code = rng.choice(refdata.SCHOOL_TOWN)
            name = f"{rng.choice(_BUILDINGS)}" + (f" - {department}" if department and rng.random() < 0.5 else "")
            line1 = f"{rng.randint(100, 1999)} {rng.choice(refdata.US_STREETS)}"
        else:
            name, city, state, zip_code = rng.choice(_LABS)
            line1 = f"{rng.randint(1, 9700)} {rng.choice(refdata.US_STREETS)}"
        return {
            "site_id": self.ids.take("site"),
            "person_id": pid,
            "site_name": name[:60],
            "line1": line1,
            "line2": None,
            "city": city,
            "state": state,
            "postal_code": zip_code,
            "is_primary": primary,
            "is_active": True,
            "sevis_site_id": None,
        }

    def funding(self, pid: int, category: str) -> Row:
        rng = self.rng
        row: Row = {
            "person_id": pid,
            "us_govt_funds": False,
            "sponsor_funds": 0,
            "us_agency": None,
            "us_agency_funds": 0,
            "intl_org": None,
            "intl_org_funds": 0,
            "home_govt_funds": 0,
            "binational_funds": 0,
            "other_org": None,
            "other_org_funds": 0,
            "personal_funds": 0,
        }
        r = rng.random()
        if category == "SHORT_TERM_SCHOLAR" or r < 0.2:
            row["home_govt_funds" if rng.random() < 0.5 else "personal_funds"] = rng.randint(8, 30) * 1000
        else:
            row["sponsor_funds"] = rng.randint(45, 78) * 1000
            if r > 0.8:
                row.update(
                    us_govt_funds=True,
                    us_agency=rng.choice(("NSF", "HHS", "DOE")),
                    us_agency_funds=rng.randint(10, 30) * 1000,
                )
            elif r > 0.7:
                row.update(
                    other_org=rng.choice(
                        (
                            "Alexander von Humboldt Foundation",
                            "Japan Society for the Promotion of Science",
                            "Fulbright Commission",
                        )
                    ),
                    other_org_funds=rng.randint(5, 25) * 1000,
                )
        return row

    def dependent(self, ev: Row, relationship: str, accompanying: bool = True) -> Row:
        rng = self.rng
        d = self.people.dependent(ev, relationship, "F-2")  # the F/M builder's realistic spouse or child
        born = min(d["birth_date"], years_before(self.today, 1))  # a J-2 is at least a year old: no newborn
        country = ev["citizenship_country"]
        return {
            "dependent_id": self.ids.take("dependent"),
            "person_id": ev["person_id"],
            "first_name": d["first_name"],
            "last_name": d["last_name"],
            "birth_date": born,
            "gender": d["gender"],
            "birth_city": rng.choice(refdata.FOREIGN_PLACES[country])[0],
            "birth_country": country,
            "citizenship_country": country,
            "residence_country": country,
            "relationship": relationship,
            "status": "ACTIVE",
            "end_reason": None,
            "end_date": None,
            "accompanying": accompanying,
            "sevis_id": None,
        }

    def appointment(
        self,
        pid: int,
        category: str,
        begin: date,
        end: date,
        status: str,
        home: str,
        program: str = SCHOLAR_PROGRAM,
        subject: tuple[str, str] | None = None,
    ) -> Row:
        rng = self.rng
        cip, dept = subject or rng.choice(_DEPARTMENTS)
        position = rng.choice(_POSITIONS.get(category, ("GRADUATE_STUDENT",)))
        if category.startswith("STUDENT"):
            position = "VISITING_STUDENT" if category == "STUDENT_NON_DEGREE" else "GRADUATE_STUDENT"
        return {
            "person_id": pid,
            "sponsor_program": program,
            "category": category,
            "position_title": position,
            "department": dept,
            "subject_cip": cip,
            "subject_remarks": (f"Research in {dept}" if not category.startswith("STUDENT") else f"Studies in {dept}"),
            "home_country": home,
            "begin_date": begin,
            "end_date": end,
            "status": status,
            "checked_in_on": (
                max(begin - timedelta(days=rng.randint(0, 5)), begin - timedelta(days=25))
                if status != "PENDING"
                else None
            ),
            "end_reason": None,
            "end_remarks": None,
            "termination_reason": None,
            "termination_date": None,
            "change_remarks": None,
        }

    def scholar(self, stage: str | None = None) -> School:
        """All rows of one J-1 scholar: person, immigration, addresses, appointment, funding, sites, J-2s."""
        rng, people = self.rng, self.people
        stage = stage or weighted(rng, (("new", 20), ("pending", 35), ("active", 40), ("completed", 5)))
        category = weighted(rng, _SCHOLAR_CATEGORIES)
        lo, hi = _MONTHS[category]
        months = rng.randint(lo, hi)
        if stage == "new":
            begin = self.today + timedelta(days=rng.randint(20, 100))
        elif stage == "pending":  # a DS-2019 issued: arrives within the next two months
            begin = self.today + timedelta(days=rng.randint(5, 60))
        elif stage == "active":
            begin = self.today - timedelta(days=rng.randint(20, max(21, months * 30 - 40)))
        else:
            begin = self.today - timedelta(days=months * 30 + rng.randint(10, 200))
        end = _months_after(begin, months)
        citizenship = weighted(rng, refdata.INTERNATIONAL_COUNTRY_WEIGHTS)
        born = years_before(self.today, rng.randint(27, 58)) - timedelta(days=rng.randint(0, 364))
        person = people.person(
            citizenship, citizenship, born, foreign_phone=stage in ("new", "pending"), school_email=False
        )
        if person["birth_city"] is None:  # a sponsor has the DS-2019 data: the birth city is always known
            person["birth_city"] = rng.choice(refdata.FOREIGN_PLACES[citizenship])[0]
        pid = person["person_id"]
        out = empty_school()
        out["person"].append(person)
        out["immigration"].append(
            {
                "person_id": pid,
                "visa_type": "J-1",
                "sevis_id": None if stage == "new" else people.sevis_id(),
                "sevis_status": {"new": None, "pending": "INITIAL", "active": "ACTIVE", "completed": "COMPLETED"}[
                    stage
                ],
                "issue_reason": None,
                "i20_issue_date": None,
            }
        )
        out["address"].append(people.foreign_address(pid, citizenship))
        if stage in ("active", "completed"):
            out["address"].append(people.us_address(pid, "US_PHYSICAL", local=True))
        status = {"new": "PENDING", "pending": "PENDING", "active": "CHECKED_IN", "completed": "COMPLETED"}[stage]
        ev = self.appointment(pid, category, begin, end, status, citizenship)
        out["exchange_visitor"].append(ev)
        out["exchange_funding"].append(self.funding(pid, category))
        out["exchange_site"].append(self.site(pid, True, ev["department"]))
        if rng.random() < 0.15:
            out["exchange_site"].append(self.site(pid, False))
        if category != "SHORT_TERM_SCHOLAR" and rng.random() < 0.35:
            out["exchange_dependent"].append(self.dependent(person, "SPOUSE"))
            if rng.random() < 0.5:
                out["exchange_dependent"] += [self.dependent(person, "CHILD") for _ in range(rng.randint(1, 2))]
        return out

    def student(self, person: Row, immigration: Row, program: Row, finance: Row | None) -> School:
        """The sponsor's record of a J-1 student the registrar already has (program STUD)."""
        pid = person["person_id"]
        out = empty_school()
        category = _STUDENT_CATEGORY.get(program["degree_level"], "STUDENT_NON_DEGREE")
        status = _SEVIS_STATUS_TO_EV.get(immigration["sevis_status"], "PENDING")
        if program["status"] == "DEFERRED" or (status == "CHECKED_IN" and program["start_date"] > self.today):
            status = "PENDING"
        ev = self.appointment(
            pid,
            category,
            program["start_date"],
            program["expected_end_date"],
            status,
            person["citizenship_country"],
            STUDENT_PROGRAM,
            (program["major_cip"], "the major"),
        )
        ev["subject_remarks"] = "Degree studies" if category != "STUDENT_NON_DEGREE" else "Non-degree exchange studies"
        if status == "TERMINATED":
            ev.update(
                termination_reason="DISCIPLINARY" if program["status"] == "DISMISSED" else "NOT_PURSUING",
                termination_date=min(self.today, program["expected_end_date"]) - timedelta(days=30),
            )
        out["exchange_visitor"].append(ev)
        fund = self.funding(pid, category)
        fund.update(
            sponsor_funds=(finance or {}).get("school_funds") or 0,
            personal_funds=(finance or {}).get("personal_funds") or 0,
            other_org=(finance or {}).get("other_funds_source"),
            other_org_funds=(finance or {}).get("other_funds") or 0,
            us_govt_funds=False,
            us_agency=None,
            us_agency_funds=0,
            home_govt_funds=0,
        )
        if not any(fund[k] for k in ("sponsor_funds", "personal_funds", "other_org_funds")):
            fund["personal_funds"] = 20000
        out["exchange_funding"].append(fund)
        out["exchange_site"].append(self.site(pid, True, None))
        return out


def _builders(school: School, seed: int, today: date) -> tuple[random.Random, ExchangeBuilder]:
    rng = random.Random(seed * 104_729 + 15)
    ids = IdCounters.after(school)
    ids.person = max(ids.person, PERSON_BASE)
    ids.address = max(ids.address, ADDRESS_BASE)
    used = {r["sevis_id"] for r in school.get("immigration", []) if r["sevis_id"]}
    people = SchoolBuilder(rng, today, ids, used)
    return rng, ExchangeBuilder(rng, today, people, _Ids.after(school))


def generate_exchange(school: School, seed: int, today: date, scholars: int = 20) -> School:
    """The rows a J-1 sponsor adds to ``school``: ``scholars`` J-1 scholars (program RSCH) and the sponsor's
    record of every J-1 student already in it (program STUD). Deterministic from (school, seed, today); its
    own random stream and id ranges: the school's own rows and its F/M activity are unchanged."""
    _, eb = _builders(school, seed, today)
    out = empty_school()
    persons = {r["person_id"]: r for r in school.get("person", [])}
    programs = {r["person_id"]: r for r in school.get("program", []) if r["is_current"]}
    finance = {r["person_id"]: r for r in school.get("finance", [])}
    for imm in sorted(school.get("immigration", []), key=lambda r: r["person_id"]):
        pid = imm["person_id"]
        if imm["visa_type"] == "J-1" and pid in programs and pid < PERSON_BASE:
            part = eb.student(persons[pid], imm, programs[pid], finance.get(pid))
            for t in EXCHANGE_TABLES:
                out[t] += part[t]
    for _ in range(scholars):
        part = eb.scholar()
        for t, rows in part.items():
            out[t] += rows
    return out


# ---------------------------------------------------------------------------- a season of activity


class _Season:
    """Change makers, one per kind: each returns a note, or None when ``pid`` does not fit."""

    def __init__(self, school: School, seed: int, today: date) -> None:
        self.rng, self.eb = _builders(school, seed * 31 + 7, today)
        self.world = World(school)
        self.tx = _Tx(self.world)
        self.at = datetime.combine(today, time(9), UTC)

    @property
    def day(self) -> date:
        return self.at.date()

    def evs(self, *statuses: str) -> list[int]:
        return [pid for (pid,), r in sorted(self.world.rows["exchange_visitor"].items()) if r["status"] in statuses]

    def ev(self, pid: int) -> Row:
        return self.world.rows["exchange_visitor"][(pid,)]

    def active_end_ok(self, pid: int) -> bool:
        end: date = self.ev(pid)["end_date"]
        return end > self.day + timedelta(days=45)

    # ---- kinds

    def ev_new_appointment(self) -> tuple[int, str]:
        rows = self.eb.scholar(stage="new")
        rows["person"][0]["updated_at"] = self.at
        for table in ("person", "immigration", "address", *EXCHANGE_TABLES):
            for row in rows[table]:
                self.tx.insert(table, row)
        ev = rows["exchange_visitor"][0]
        return ev["person_id"], f"{ev['category']}, {len(rows['exchange_dependent'])} dependent(s)"

    def ev_sevis_id_recorded(self, pid: int) -> str | None:
        imm = self.world.immigration(pid) or {}
        if imm.get("sevis_id"):
            return None
        self.tx.update("immigration", imm, sevis_id=self.eb.people.sevis_id(), sevis_status="INITIAL")
        return "SEVIS ID of the new DS-2019 entered"

    def ev_arrival(self, pid: int) -> str | None:
        ev = self.ev(pid)
        imm = self.world.immigration(pid) or {}
        if not imm.get("sevis_id") or not -25 <= (self.day - ev["begin_date"]).days <= 25:
            return None
        if self.world.address(pid, "US_PHYSICAL") is None:
            self.tx.insert("address", self.eb.people.us_address(pid, "US_PHYSICAL", local=True))
        phone, code = self.eb.people.phone("US")
        self.tx.update("person", self.world.person(pid), phone=phone, phone_country_code=code, updated_at=self.at)
        self.tx.update("exchange_visitor", ev, status="CHECKED_IN", checked_in_on=self.day)
        return "checked in: US address and phone"

    def ev_address_move(self, pid: int) -> str | None:
        us = self.world.address(pid, "US_PHYSICAL")
        if us is None:
            return None
        self.tx.update("address", us, **self.eb.people.us_place("US_PHYSICAL", local=True))
        return "US address"

    def ev_site_added(self, pid: int) -> str | None:
        if len(self._sites(pid)) > 2:
            return None
        self.tx.insert("exchange_site", self.eb.site(pid, False))
        return "second site of activity"

    def ev_site_moved(self, pid: int) -> str | None:
        sites = self._sites(pid)
        if not sites:
            return None
        s = sites[0]
        city, state, zip_code = self.rng.choice(refdata.SCHOOL_TOWN)
        self.tx.update(
            "exchange_site",
            s,
            line1=f"{self.rng.randint(100, 1999)} {self.rng.choice(refdata.US_STREETS)}",
            city=city,
            state=state,
            postal_code=zip_code,
        )
        return "site moved"

    def ev_site_closed(self, pid: int) -> str | None:
        others = [s for s in self._sites(pid) if not s["is_primary"]]
        if not others:
            return None
        self.tx.update("exchange_site", others[0], is_active=False)
        return "secondary site closed"

    def ev_extension(self, pid: int) -> str | None:
        ev = self.ev(pid)
        if not self.active_end_ok(pid) or ev["category"] in ("SHORT_TERM_SCHOLAR",) or ev["category"].startswith("STU"):
            return None
        self.tx.update(
            "exchange_visitor",
            ev,
            end_date=_months_after(ev["end_date"] + timedelta(days=1), self.rng.randint(3, 12)),
            change_remarks="Appointment renewed by the department",
        )
        return "end date later"

    def ev_early_end(self, pid: int) -> str | None:
        ev = self.ev(pid)
        new_end = self.day + timedelta(days=self.rng.randint(10, 40))
        if not ev["begin_date"] < new_end < ev["end_date"] - timedelta(days=30):
            return None
        self.tx.update(
            "exchange_visitor",
            ev,
            end_date=new_end,
            end_reason="WITHDREW",
            end_remarks="Accepted a position at the home institution",
        )
        return "ends early"

    def ev_termination(self, pid: int) -> str | None:
        ev = self.ev(pid)
        self.tx.update(
            "exchange_visitor", ev, status="TERMINATED", termination_reason="NOT_PURSUING", termination_date=self.day
        )
        return "terminated: not pursuing program activities"

    def ev_no_show(self, pid: int) -> str | None:
        ev = self.ev(pid)
        if not (self.world.immigration(pid) or {}).get("sevis_id") or ev["begin_date"] >= self.day:
            return None
        self.tx.update("exchange_visitor", ev, status="NO_SHOW")
        return "never arrived"

    def ev_cancelled(self, pid: int) -> str | None:
        ev = self.ev(pid)
        if not (self.world.immigration(pid) or {}).get("sevis_id") or ev["begin_date"] < self.day + timedelta(days=10):
            return None
        self.tx.update("exchange_visitor", ev, status="CANCELLED", end_remarks="Visit cancelled by the host department")
        return "appointment cancelled"

    def ev_amend(self, pid: int) -> str | None:
        ev = self.ev(pid)
        if not (self.world.immigration(pid) or {}).get("sevis_id") or ev["begin_date"] < self.day + timedelta(days=10):
            return None
        shift = timedelta(days=self.rng.choice((14, 30, 31, 45)))
        self.tx.update(
            "exchange_visitor",
            ev,
            begin_date=ev["begin_date"] + shift,
            end_date=ev["end_date"] + shift,
            change_remarks="Visa appointment delayed arrival",
        )
        return "dates moved later"

    def ev_subject_change(self, pid: int) -> str | None:
        ev = self.ev(pid)
        cip, dept = self.rng.choice([d for d in _DEPARTMENTS if d[0] != ev["subject_cip"]])
        self.tx.update(
            "exchange_visitor",
            ev,
            subject_cip=cip,
            department=dept,
            subject_remarks=f"Research in {dept}",
            change_remarks="Joined another research group",
        )
        return "subject field"

    def ev_funding_change(self, pid: int) -> str | None:
        fund = self.world.rows["exchange_funding"].get((pid,))
        if fund is None:
            return None
        self.tx.update("exchange_funding", fund, sponsor_funds=fund["sponsor_funds"] + self.rng.randint(2, 8) * 1000)
        return "sponsor funding raised"

    def ev_dependent_added(self, pid: int) -> str | None:
        deps = [d for d in self._deps(pid) if d["status"] == "ACTIVE"]
        if len(deps) > 3 or self.ev(pid)["category"] == "SHORT_TERM_SCHOLAR":
            return None
        spouse = any(d["relationship"] == "SPOUSE" for d in deps)
        self.tx.insert(
            "exchange_dependent",
            self.eb.dependent(self.world.person(pid), "CHILD" if spouse else "SPOUSE", accompanying=False),
        )
        return "child" if spouse else "spouse"

    def ev_dependent_corrected(self, pid: int) -> str | None:
        deps = [d for d in self._deps(pid) if d["status"] == "ACTIVE"]
        if not deps:
            return None
        d = deps[0]
        city = self.rng.choice(
            [c for c, _, _ in refdata.FOREIGN_PLACES[d["birth_country"]] if c != d["birth_city"]] or [d["birth_city"]]
        )
        if city == d["birth_city"]:
            return None
        self.tx.update("exchange_dependent", d, birth_city=city)
        return "dependent's birth city corrected"

    def ev_dependent_departed(self, pid: int) -> str | None:
        deps = [d for d in self._deps(pid) if d["status"] == "ACTIVE" and d["sevis_id"] is None]
        if not deps:
            return None
        self.tx.update("exchange_dependent", deps[-1], status="DEPARTED", end_reason="OTHER", end_date=self.day)
        return "dependent left the US"

    def ev_dependent_error(self, pid: int) -> str | None:
        deps = [d for d in self._deps(pid) if d["status"] == "ACTIVE"]
        if not deps:
            return None
        self.tx.update("exchange_dependent", deps[-1], status="ENTERED_IN_ERROR")
        return "dependent entered in error"

    # ---- helpers

    def _sites(self, pid: int) -> list[Row]:
        return [s for s in self.world.of("exchange_site", pid) if s["is_active"]]

    def _deps(self, pid: int) -> list[Row]:
        return self.world.of("exchange_dependent", pid)


_POOLS: dict[str, tuple[str, ...]] = {
    "ev_sevis_id_recorded": ("PENDING",),
    "ev_arrival": ("PENDING",),
    "ev_no_show": ("PENDING",),
    "ev_cancelled": ("PENDING",),
    "ev_amend": ("PENDING",),
}


def _one(season: _Season, kind: str) -> tuple[int, str] | None:
    season.eb.people.today = season.eb.today = season.day  # new rows are made as of the change's day
    if kind == "ev_new_appointment":
        return season.ev_new_appointment()
    make: Callable[[int], str | None] = getattr(season, kind)
    pool = season.evs(*_POOLS.get(kind, ("CHECKED_IN",)))
    if not pool:
        return None
    start = season.rng.randrange(len(pool))
    for pid in pool[start:] + pool[:start]:
        note = make(pid)
        if note is not None:
            return pid, note
    return None


def generate_exchange_activity(school: School, seed: int, today: date, n_changes: int = 40) -> list[Transaction]:
    """``n_changes`` sponsor-side commits over ``activity_span(today)``, in commit order; ``school`` must hold
    the exchange rows (:func:`generate_exchange`). With ``n_changes >= len(EV_KINDS)`` every kind is scheduled
    at least once; a kind no exchange visitor fits at its time is replaced by another (a new appointment
    always fits). Deterministic from (school, seed, today)."""
    season = _Season(school, seed, today)
    rng = season.rng
    start, end = activity_span(today)
    step = (end - start) / max(n_changes, 1)
    kinds = list(EV_KINDS) if n_changes >= len(EV_KINDS) else []
    kinds += rng.choices(list(_WEIGHTS), weights=list(_WEIGHTS.values()), k=n_changes - len(kinds))
    rng.shuffle(kinds)
    if n_changes >= 8:
        for early in ("ev_amend", "ev_cancelled"):  # before the DS-2019's begin date
            if early in kinds:
                kinds.remove(early)
                kinds.insert(rng.randrange(0, n_changes // 4), early)
        if "ev_no_show" in kinds:  # seen only after the begin date has passed
            kinds.remove("ev_no_show")
            kinds.insert(rng.randrange(n_changes * 3 // 4, n_changes), "ev_no_show")
    out: list[Transaction] = []
    for i, kind in enumerate(kinds):
        season.at = start + step * i + step * rng.uniform(0, 0.9)
        tried = [kind]
        picked = _one(season, kind)
        while picked is None or not season.tx.ops:
            left = [k for k in _WEIGHTS if k not in tried]
            nxt = rng.choice(left) if len(tried) < 6 and left else "ev_new_appointment"
            tried.append(nxt)
            picked = _one(season, nxt)
        ops = tuple(season.tx.ops)
        season.tx = _Tx(season.world)
        out.append(Transaction(tried[-1], picked[0], True, season.at, ops, picked[1]))
    return out


def with_exchange(school: School, seed: int, today: date, scholars: int = 20) -> School:
    """A copy of ``school`` with :func:`generate_exchange`'s rows added (the loader's ``--exchange``)."""
    extra = generate_exchange(school, seed, today, scholars)
    return {t: list(school.get(t, [])) + extra.get(t, []) for t in set(school) | set(extra)}


__all__ = [
    "EV_KINDS",
    "EXCHANGE_TABLES",
    "SCHOLAR_PROGRAM",
    "STUDENT_PROGRAM",
    "ExchangeBuilder",
    "generate_exchange",
    "generate_exchange_activity",
    "with_exchange",
]
