"""What a command on ``sevis.batch.commands`` may do: the checks the batcher runs before it applies one.

Why a separate, pure module: the command topic is the one input a person writes, so it is the trust
boundary of the batcher. Everything here is a function of the command, its Kafka timestamp, the
school's state and the configured :class:`CommandPolicy` — no clock, no Kafka — so the property test
can throw thousands of forged commands at it and ``sevisflow verify`` re-derives every refusal.

Three layers, each answering with a reason (never an exception):

* :func:`malformed` — the shape: known kind, ids and keys of sane length and characters, a bounded
  ``record_ids`` list, numbers in range. A malformed command is dead-lettered.
* :func:`untimely` — ``requested_at_ms`` must lie within [Kafka timestamp − 26 h, Kafka timestamp +
  5 min]: a far-future time can neither stamp a BatchID years ahead nor overflow the stamp.
* :func:`unauthorized` — the SEVIS user id must be one of the school's DSOs (``school.dso_user_ids``)
  and, when principals are configured (authentication on), the command's principal must map to that
  user id. A scheduled close must carry the configured ``school.close_dso``. A command for a J-1
  program number (EV batches) must name a configured program (``[[exchange_programs]]``; any other is
  refused, whoever sent it) and come from its RO or an ARO; its scheduled close carries the RO. A command
  for a member school of a many-school deployment (``[[schools]]``) is checked against that school's DSOs
  and its scheduled close carries its ``close_dso``: a DSO of one school never acts for another. An F/M
  OrgID that is neither ``school.org_id`` nor a member school is refused, whoever sent it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sevisflow.processors.batcher.ids import PROGRAM_NUMBER, user_id_problem

KINDS = ("close", "hold", "release", "requeue", "report", "resend")
"""Command kinds the batcher applies. ``result`` is gone: SEVIS results come only from sevis.results."""
DSO_KINDS = ("close", "hold", "release", "report", "resend")
"""Kinds a person sends (``resend``: records SEVIS rejected, back into the open batch after a fix): they carry the DSO's SEVIS user id (a scheduled close carries school.close_dso)."""
SCHEDULED_PREFIX = "scheduled:"
MAX_ID_LEN = 200
"""command_id, batch_id, principal: longer is not something sevisflow writes."""
MAX_STUDENT_KEY_LEN = 100
MAX_RECORD_IDS = 20_000
"""A close lists the ready records it covers; 20,000 is 40 full documents, far above a day's work."""
MAX_RECORD_ID_LEN = 300
MAX_REASON_LEN = 500
"""A hold reason (and any command note): what a person types, not a document."""
MAX_PAYLOAD_LEN = 64 * 1024
MAX_FUTURE_MS = 5 * 60 * 1000
"""requested_at_ms may be at most this far after the command's Kafka timestamp (clock skew of a DSO's laptop)."""
MAX_PAST_MS = 26 * 3600 * 1000
"""...and at most this far before it: a scheduled close catches up on the same local day (25 hours on a DST day)."""


@dataclass(frozen=True)
class SchoolPolicy:
    """Who may act for one member school ([[schools]]): its DSOs, and the user id of its scheduled closes."""

    dso_user_ids: frozenset[str] = frozenset()
    close_dso: str = ""


@dataclass(frozen=True)
class CommandPolicy:
    """Who may act for the school, from the settings ([school] dso_user_ids, dso_principals, close_dso)."""

    dso_user_ids: frozenset[str] = frozenset()
    principals: Mapping[str, str] = field(default_factory=dict)
    """Kafka principal → SEVIS user id; empty = principals are not checked (no authentication)."""
    close_dso: str = ""
    programs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """J-1 program number → the SEVIS user ids of its RO (first: the scheduled close signs with it) and AROs
    ([[exchange_programs]]): only they act for the program; a program not listed is refused."""
    main_org_id: str = ""
    """school.org_id: the F/M OrgID the fields above are for; "" = any F/M OrgID that is not a member school's
    (policies built by hand in tests). When set, an F/M OrgID neither this nor a member school's is refused."""
    schools: Mapping[str, SchoolPolicy] = field(default_factory=dict)
    """Member school OrgID → its DSOs and close_dso ([[schools]]): only they act for that school."""


def parse_principals(entries: list[str]) -> dict[str, str]:
    """``["User:alice=JSMITH0001", …]`` → {principal: user id}; the last ``=`` separates (a certificate
    subject contains ``=`` itself). Raises ValueError naming the bad entry."""
    out: dict[str, str] = {}
    for entry in entries:
        principal, sep, user = entry.rpartition("=")
        principal, user = principal.strip(), user.strip()
        if not sep or not principal or user_id_problem(user):
            raise ValueError(
                f'{entry!r} is not principal=SEVISUSER (e.g. "User:alice=JSMITH0001"; '
                "the SEVIS user id has exactly 10 characters)"
            )
        out[principal] = user
    return out


def text_problem(value: Any, what: str, max_len: int, required: bool = True) -> str | None:
    """Why ``value`` is not a short single-line text a person typed (None when it is)."""
    if value is None or value == "":
        return f"{what} is missing" if required else None
    if not isinstance(value, str):
        return f"{what} is not text"
    if len(value) > max_len:
        return f"{what} is {len(value)} characters long; at most {max_len}"
    if not value.strip():
        return f"{what} is blank"
    for i, c in enumerate(value):
        if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") and c != " ":
            return f"{what} contains a control or invisible character (U+{ord(c):04X} at position {i + 1})"
    return None


def malformed(cmd: Mapping[str, Any]) -> str | None:
    """Why the command cannot be a command sevisflow sends (dead-lettered), or None."""
    p = text_problem(cmd.get("command_id"), "command_id", MAX_ID_LEN)
    if p:
        return p
    kind = cmd.get("kind")
    if kind == "result":
        return (
            "a 'result' command is refused: SEVIS results (and the SEVIS IDs they assign) come only "
            "from sevis.results, written by the SEVIS sink"
        )
    if kind not in KINDS:
        shown = repr(kind)[:40]
        return f"unknown command kind {shown} (one of {', '.join(KINDS)})"
    at = cmd.get("requested_at_ms")
    if not isinstance(at, int) or isinstance(at, bool) or at <= 0:
        return "requested_at_ms is missing or not a positive time"
    ids = cmd.get("record_ids") or []
    if len(ids) > MAX_RECORD_IDS:
        return f"record_ids lists {len(ids)} records; at most {MAX_RECORD_IDS}"
    for rid in ids:
        p = text_problem(rid, "a record id", MAX_RECORD_ID_LEN)
        if p:
            return p
    for name in ("reviewed_revision", "basis_revision"):
        v = cmd.get(name)
        if v is not None and (not isinstance(v, int) or v < 0):
            return f"{name} {v!r} is not a revision"
    for name, limit in (("batch_id", MAX_ID_LEN), ("principal", MAX_ID_LEN)):
        p = text_problem(cmd.get(name), name, limit, required=False)
        if p:
            return p
    payload = cmd.get("payload_json")
    if payload is not None and len(payload) > MAX_PAYLOAD_LEN:
        return f"payload_json is {len(payload)} characters long; at most {MAX_PAYLOAD_LEN}"
    if kind in ("hold", "release", "report"):
        p = text_problem(cmd.get("student_key"), f"{kind}: the student key", MAX_STUDENT_KEY_LEN)
        if p:
            return p
    if kind == "hold":
        p = text_problem(cmd.get("reason"), "hold: the reason", MAX_REASON_LEN)
        if p:
            return p + " (say why the student is held, in at most 500 characters, on one line)"
    elif kind in DSO_KINDS and cmd.get("reason") is not None:
        p = text_problem(cmd.get("reason"), "the reason", MAX_REASON_LEN, required=False)
        if p:
            return p
    elif len(cmd.get("reason") or "") > MAX_PAYLOAD_LEN:  # a sink's requeue note (may quote SEVIS's error text)
        return f"the reason is {len(cmd['reason'])} characters long; at most {MAX_PAYLOAD_LEN}"
    if kind in ("requeue", "resend"):
        p = text_problem(cmd.get("batch_id"), f"{kind}: the batch id", MAX_ID_LEN)
        if p:
            return p
    if kind in DSO_KINDS:
        p = user_id_problem(cmd.get("dso_user_id"))
        if p:
            return p
    return None


def untimely(cmd: Mapping[str, Any], log_ms: int | None) -> str | None:
    """Why ``requested_at_ms`` is outside the sane window around the command's Kafka timestamp, or None."""
    if not log_ms or log_ms <= 0:
        return None
    at = int(cmd["requested_at_ms"])
    if at > log_ms + MAX_FUTURE_MS:
        return (
            f"requested_at_ms is {(at - log_ms) / 60000:.0f} minutes after the command's Kafka timestamp "
            f"(at most {MAX_FUTURE_MS // 60000}): check the clock of the computer that sent it"
        )
    if at < log_ms - MAX_PAST_MS and cmd.get("kind") in DSO_KINDS:  # a sink's requeue carries the close's time
        return (
            f"requested_at_ms is {(log_ms - at) / 3600000:.0f} hours before the command's Kafka timestamp "
            f"(at most {MAX_PAST_MS // 3600000}): a stale or replayed command"
        )
    return None


def unauthorized(cmd: Mapping[str, Any], policy: CommandPolicy) -> str | None:
    """Why the sender may not do this for the school (or the exchange program), or None."""
    org = str(cmd.get("org_id") or "")
    if PROGRAM_NUMBER.fullmatch(org):
        return _program_unauthorized(cmd, policy, org)
    school = _school_policy(policy, org)
    if school is None:
        return (
            f"OrgID {org[:40]!r} is neither school.org_id ({policy.main_org_id}) nor a member school ([[schools]] "
            "in the batcher's settings): nobody may act for it here; add the school as a [[schools]] entry, "
            "or check the OrgID"
        )
    kind = cmd["kind"]
    if kind not in DSO_KINDS:
        return None
    member = org in policy.schools  # the member and main school differ only in how a refusal names their settings
    user = cmd.get("dso_user_id") or ""
    if kind == "close" and str(cmd["command_id"]).startswith(SCHEDULED_PREFIX):
        if not school.close_dso or user != school.close_dso:
            closer = f"the close_dso of member school {org}" if member else "school.close_dso"
            return f"a scheduled close must carry {closer} ({school.close_dso or 'not set'}), not {user!r}"
        if cmd.get("reviewed_revision") is not None:
            return "a scheduled close cannot claim a reviewed revision: no person reviewed it"
        return None
    if user in school.dso_user_ids:
        return _principal_problem(cmd, policy, user)
    if member:
        return (
            f"SEVIS user id {user!r} is not one of the DSOs of member school {org} (dso_user_ids of its "
            "[[schools]] entry): a DSO acts only for their own school; ask the administrator to add it there"
        )
    if not school.dso_user_ids:
        return (
            "no DSO is configured for the school: add the DSOs' SEVIS user ids to school.dso_user_ids "
            "in the batcher's settings"
        )
    return (
        f"SEVIS user id {user!r} is not one of the school's DSOs (school.dso_user_ids); ask the administrator to add it"
    )


def _school_policy(policy: CommandPolicy, org: str) -> SchoolPolicy | None:
    """Who may act for F/M OrgID ``org``: a member school's own DSOs and close_dso ([[schools]]), else [school]'s;
    None when ``org`` is neither school.org_id nor a member school (any OrgID is [school]'s when main_org_id is
    not set, as in policies built by hand)."""
    member = policy.schools.get(org)
    if member is not None:
        return member
    if policy.main_org_id and org != policy.main_org_id:
        return None
    return SchoolPolicy(policy.dso_user_ids, policy.close_dso)


def _program_unauthorized(cmd: Mapping[str, Any], policy: CommandPolicy, org: str) -> str | None:
    """An exchange program's commands: only a configured program, and only its RO/AROs act for it (SEVIS refuses
    an EV batch whose userID is not an RO/ARO of the program, so nobody else may close or change one)."""
    users = policy.programs.get(org)
    if not users:
        return (
            f"OrgID {org} is not a configured exchange program ([[exchange_programs]] in the batcher's "
            "settings): nothing of it is batched or signed; add the program, or check the OrgID"
        )
    kind = cmd["kind"]
    if kind not in DSO_KINDS:
        return None
    user = cmd.get("dso_user_id") or ""
    if kind == "close" and str(cmd["command_id"]).startswith(SCHEDULED_PREFIX):
        if user != users[0]:
            return f"a scheduled close of exchange program {org} must carry its RO's user id ({users[0]}), not {user!r}"
        if cmd.get("reviewed_revision") is not None:
            return "a scheduled close cannot claim a reviewed revision: no person reviewed it"
        return None
    if user not in users:
        return (
            f"SEVIS user id {user!r} is not the RO or an ARO of exchange program {org} (exchange_programs "
            f"ro_user_id / aro_user_ids: {', '.join(users)}): SEVIS refuses an EV batch signed by anyone else"
        )
    return _principal_problem(cmd, policy, user)


def _principal_problem(cmd: Mapping[str, Any], policy: CommandPolicy, user: str) -> str | None:
    """With authentication on, the command's Kafka principal must be mapped to the user id it acts as."""
    if not policy.principals:
        return None
    principal = cmd.get("principal")
    if not principal:
        return "the command carries no authenticated principal; send it with sevisflow using your own Kafka credentials"
    mapped = policy.principals.get(principal)
    if mapped is None:
        return f"principal {principal!r} is not mapped to a DSO (school.dso_principals)"
    if mapped != user:
        return f"principal {principal!r} acts as {mapped}, not as {user!r}"
    return None
