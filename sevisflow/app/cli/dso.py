"""What every DSO command of the CLI shares: who is acting, whether the student exists, and closing a revision.

Why one module: ``batch close/hold/release`` and ``student add-info/report`` must all record the same
things — the DSO's SEVIS user id (``--dso`` or ``school.default_dso``, echoed), the Kafka principal the
command was sent with — and refuse the same mistakes before anything is sent. The batcher checks every
command again (processors/batcher/guard.py); these checks only give the DSO the answer at once, in words.

Closing by revision (``batch close --revision N``): the records a DSO closes are the *ready records of
revision N*, the revision ``batch show`` displayed. The open batch at N is rebuilt by folding
``sevis.batches`` up to N (or is the batcher's view when nothing changed since); the close command lists
those records and N, and the batcher closes the ones still unchanged since N. What was added, changed or
removed after N is left open and reported.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from sevisflow.core.config import ExchangeProgram, KafkaSettings, MemberSchool, Settings
from sevisflow.core.errors import SevisflowError
from sevisflow.core.kafka_io import read_topic
from sevisflow.core.serde import registry
from sevisflow.processors.batcher.guard import MAX_REASON_LEN, text_problem
from sevisflow.processors.batcher.ids import user_id_problem
from sevisflow.processors.batcher.view import BatchView, fold

BATCH_SCHEMA = "sevisflow.batches.BatchEvent"


def resolve_dso(
    given: str | None, settings: Settings, doing: str, err: TextIO | None = None, org: str | None = None
) -> str:
    """The acting person's SEVIS user id: ``--dso``, else ``school.default_dso`` (for an exchange program: its
    ``ro_user_id``), echoed on stderr. Raises with the fix when there is none, it is not a SEVIS user id, or
    not one who may act for ``org`` (the school's DSOs; a program's RO and AROs)."""
    program = settings.program(org) if org else None
    if program is not None:
        return _resolve_officer(given, program, doing, err)
    member = settings.member_school(org) if org else None
    if member is not None:
        return _resolve_member_dso(given, member, settings.school.default_dso, doing, err)
    school = settings.school
    user = given or school.default_dso
    if not user:
        raise SevisflowError(
            f"not {doing}: say who you are with --dso <your SEVIS user id> (or set school.default_dso in the settings)"
        )
    problem = user_id_problem(user)
    if problem:
        raise SevisflowError(f"not {doing}: {problem}; give your SEVIS user id with --dso")
    if school.dso_user_ids and user not in school.dso_user_ids:
        raise SevisflowError(
            f"not {doing}: {user} is not one of the school's DSOs (school.dso_user_ids); "
            "ask the administrator to add your SEVIS user id"
        )
    if not given:
        print(f"acting as {user} (school.default_dso)", file=err or sys.stderr)
    return user


def _resolve_member_dso(
    given: str | None, member: MemberSchool, default_dso: str, doing: str, err: TextIO | None
) -> str:
    """A member school's DSO ([[schools]] dso_user_ids): a DSO of one school never acts for another.
    ``school.default_dso`` is used only when it is one of this school's DSOs."""
    user = given or (default_dso if default_dso in member.dso_user_ids else "")
    if not user:
        raise SevisflowError(
            f"not {doing}: say who you are with --dso <your SEVIS user id> (a DSO of member school "
            f"{member.org_id}: the dso_user_ids of its [[schools]] entry)"
        )
    problem = user_id_problem(user)
    if problem:
        raise SevisflowError(f"not {doing}: {problem}; give your SEVIS user id with --dso")
    if user not in member.dso_user_ids:
        raise SevisflowError(
            f"not {doing}: {user} is not one of the DSOs of member school {member.org_id} (dso_user_ids of its "
            "[[schools]] entry); a DSO acts only for their own school: ask the administrator to add your SEVIS "
            "user id there"
        )
    if not given:
        print(f"acting as {user} (school.default_dso, a DSO of {member.org_id})", file=err or sys.stderr)
    return user


def _resolve_officer(given: str | None, program: ExchangeProgram, doing: str, err: TextIO | None) -> str:
    """An exchange program's RO/ARO: SEVIS takes its EV batches only under their user ids."""
    user = given or program.ro_user_id
    allowed = program.user_ids()
    if user not in allowed:
        raise SevisflowError(
            f"not {doing}: {user} is not the RO or an ARO of exchange program "
            f"{program.program_number} ({', '.join(allowed)}); SEVIS refuses an EV batch signed by "
            "anyone else: act with --dso <your RO/ARO user id>, or ask the administrator to add it to "
            "the program's aro_user_ids"
        )
    if not given:
        print(f"acting as {user} (the RO of exchange program {program.program_number})", file=err or sys.stderr)
    return user


def principal_of(kafka: KafkaSettings) -> str | None:
    """The Kafka principal this CLI authenticates as: ``User:<SASL user name>``, or ``User:<certificate
    subject>`` with mutual TLS (Kafka's default principal builder), or None without authentication."""
    if kafka.security_protocol.startswith("SASL") and kafka.sasl_username:
        return f"User:{kafka.sasl_username}"
    if kafka.security_protocol == "SSL" and kafka.ssl_certificate_location:
        try:
            from cryptography import x509

            with open(kafka.ssl_certificate_location, "rb") as fh:
                cert = x509.load_pem_x509_certificate(fh.read())
        except (OSError, ValueError) as exc:
            raise SevisflowError(
                f"cannot read the client certificate {kafka.ssl_certificate_location} "
                f"(kafka.ssl_certificate_location): {exc}"
            ) from None
        return f"User:{cert.subject.rfc4514_string()}"
    return None


def check_reason(reason: str | None) -> str:
    """A hold reason a person typed: required, one line, at most 500 characters."""
    problem = text_problem(reason, "the hold reason", MAX_REASON_LEN)
    if problem:
        raise SevisflowError(
            f'not held: {problem}; say why with --reason "…" (one line, at most {MAX_REASON_LEN} characters)'
        )
    return str(reason).strip()


def student_in_students_topic(settings: Settings, student: str) -> bool:
    """Whether ``sevisflow.students`` (normalize's compacted view, key = student key) has the student."""
    key = student.encode()
    for msg in read_topic(settings.kafka, settings.topics.students, timeout_s=30.0):
        if msg.key() == key and msg.value() is not None:
            return True
    return False


def known_to_pipeline(settings: Settings, view: BatchView, student: str) -> bool:
    """In the open batch (a record or a hold) or in sevisflow.students."""
    if student in view.held or any(r["student_key"] == student for r in view.records.values()):
        return True
    return student_in_students_topic(settings, student)


def unknown_student(student: str, settings: Settings) -> SevisflowError:
    return SevisflowError(
        f"student {student!r} is not known to the pipeline (not in the open batch, not in "
        f"{settings.topics.students}): check the student key (the student's id in the SIS); "
        "nothing was sent"
    )


# ----------------------------------------------------------------------------- closing a revision


def view_at_revision(settings: Settings, org: str, revision: int) -> BatchView:
    """The open batch exactly as it was at ``revision``: ``sevis.batches`` folded up to it."""
    view = BatchView(org)
    for msg in read_topic(settings.kafka, settings.topics.batches, timeout_s=90.0):
        if (value := msg.value()) is None:
            continue
        ev = registry().decode(value, BATCH_SCHEMA)
        if ev.get("org_id") == org and (ev.get("revision") or 0) <= revision:
            fold(view, ev)
    view.revision = min(view.revision, revision)
    return view


@dataclass
class ClosePlan:
    """What a close of ``revision`` covers, compared with the open batch now."""

    revision: int
    current: int
    ready: list[dict[str, Any]]
    """The ready records of ``revision`` (what the DSO reviewed; the command lists them)."""
    closing: list[dict[str, Any]] = field(default_factory=list)
    """...of which unchanged since: what the batcher will close."""
    changed: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    added: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> list[tuple[str, int]]:
        """(what, how many) of the records being closed: creates, then updates per SEVIS element."""
        out: dict[str, int] = {}
        for r in sorted(self.closing, key=lambda r: (r["section"] != "create", r["kind"])):
            ev = r["kind"].startswith("EV.")
            if r["section"] == "create":
                what = "CreateEV (new exchange visitor)" if ev else "CreateStudent (new student)"
            else:
                what = (
                    f"UpdateEV {r['kind'][3:].replace('.', '/')}"
                    if ev
                    else f"UpdateStudent {r['kind'].replace('.', '/')}"
                )
            out[what] = out.get(what, 0) + 1
        return list(out.items())

    def changes_text(self) -> list[str]:
        lines = []
        if self.changed:
            lines.append(
                f"{len(self.changed)} record(s) you reviewed changed after revision {self.revision} and stay "
                "open for review: " + ", ".join(_who(r) for r in self.changed)
            )
        if self.removed:
            lines.append(
                f"{len(self.removed)} record(s) you reviewed were undone or closed after revision "
                f"{self.revision}: " + ", ".join(_who(r) for r in self.removed)
            )
        if self.added:
            lines.append(
                f"{len(self.added)} record(s) arrived after revision {self.revision} and stay open: "
                + ", ".join(_who(r) for r in self.added)
            )
        return lines

    def to_json(self) -> dict[str, Any]:
        def ids(rs: list[dict[str, Any]]) -> list[str]:
            return [r["record_id"] for r in rs]

        return {
            "revision": self.revision,
            "current_revision": self.current,
            "closing": ids(self.closing),
            "changed_since": ids(self.changed),
            "removed_since": ids(self.removed),
            "added_since": ids(self.added),
        }


def _who(rec: dict[str, Any]) -> str:
    return f"{rec['student_key']} {rec['kind'].replace('.', '/')}"


def plan_close(reviewed: BatchView, current: BatchView) -> ClosePlan:
    """Compare the reviewed revision with the open batch now (pure; the batcher decides again on its state)."""
    ready = [r for r in reviewed.open_records() if r["status"] == "open"]
    plan = ClosePlan(reviewed.revision, current.revision, ready)
    for r in ready:
        now = current.records.get(r["record_id"])
        if now is None:
            plan.removed.append(r)
        elif now.get("rev") != r.get("rev") or now["status"] != "open":
            plan.changed.append(now)
        else:
            plan.closing.append(r)
    plan.added = [r for r in current.open_records() if r["record_id"] not in reviewed.records]
    return plan


def confirm(question: str, answer: Callable[[str], str] = input, out: TextIO | None = None) -> bool:
    """Ask on the terminal; only the word ``yes`` agrees (Enter, y, an interrupted prompt do not)."""
    try:
        return answer(question).strip().lower() == "yes"
    except (EOFError, KeyboardInterrupt):
        print("", file=out or sys.stdout)
        return False


def interactive() -> bool:
    """Both stdin and stdout are a terminal (a person is there to confirm)."""
    try:
        return sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
