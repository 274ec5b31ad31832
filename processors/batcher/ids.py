"""BatchIDs, requestIDs and SEVIS user ids: the identifiers the batcher hands out or checks.

BatchID scheme (see docs/ARCHITECTURE.md, "Batcher"): ``"S"`` + a 13-digit
millisecond *stamp*, e.g. ``S1718791200000``. The stamp of a new batch is
``max(close command's requested_at_ms, school's last stamp + 1)``:

* strictly increasing per school, because the last stamp lives in the batcher's
  exactly-once state (changelog topic) and moves with the school on a rebalance,
  so restarts, a second instance or a redeploy continue from it;
* anchored to time, so even if that state were lost, a new stamp starts from the
  close command's clock, which is later than every stamp handed out before;
* derived only from the log (the command and the state), so an auditor replaying
  the topics gets the same BatchIDs.

An exchange program's EV batches (its OrgID is a program number, ``P-1-12345``) use
:func:`ev_batch_id` instead: the program number without hyphens + 7 base-36 digits of a
*seconds* stamp, ``P1123450TB5K3F`` — the same rules (per OrgID, strictly increasing,
anchored to the close's clock, from the log only), and never equal to another OrgID's id.

A member school of a many-school deployment (``[[schools]]``: one more F/M OrgID next to the
main school) uses :func:`member_batch_id`: ``M`` + 6 characters derived from its OrgID (the
first a letter) + 7 base-36 digits of a seconds stamp, e.g. ``MQ4ZK1B0TB5K3F``. Why not
``S`` + milliseconds: the scheduled close gives every school the same clock, so two schools'
``S`` ids would be equal, and the outbox, the sinks and ``verify`` find a batch by its BatchID alone.

A requestID is ``<base36 record sequence>.<student key>``, cut to 20 characters.
The sequence is per school and never reused, so two records of one batch never
share a requestID, and the student key in it lets a DSO read a SEVIS log by eye.
"""

from __future__ import annotations

import hashlib
import re

BATCH_ID_PREFIX = "S"
BATCH_ID_LEN = 14
REQUEST_ID_MAX = 20
USER_ID_LEN = 10
_MAX_STAMP = 10 ** (BATCH_ID_LEN - len(BATCH_ID_PREFIX)) - 1
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def next_stamp(requested_at_ms: int, last_stamp: int) -> int:
    """The stamp of the next BatchID of a school: never below the clock of the close, always above the last."""
    stamp = max(int(requested_at_ms), int(last_stamp) + 1)
    if stamp > _MAX_STAMP:  # year 2286; refuse rather than wrap into an old id
        raise ValueError("BatchID stamp overflow")
    return stamp


def next_batch_stamp(requested_at_ms: int, last_stamp: int, prefix: str = BATCH_ID_PREFIX) -> tuple[str, int]:
    """(prefix, stamp) of the next BatchID; never raises for a corrupted state.

    A stamp far in the future stored in the state (accepted before commands were time-checked) can
    exhaust the 13 digits; then the school moves to the next letter (``S`` → ``T`` …), whose ids cannot
    collide with any id of the old letter, and starts again from the close's clock. Raises ValueError
    only when ``requested_at_ms`` itself does not fit (refused by the batcher's time check before).
    """
    if not 0 < int(requested_at_ms) <= _MAX_STAMP:
        raise ValueError(f"requested time {requested_at_ms} does not fit a BatchID stamp")
    if int(last_stamp) < _MAX_STAMP:
        return prefix, next_stamp(requested_at_ms, last_stamp)
    letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    start = letters.index(prefix) if prefix in letters else letters.index(BATCH_ID_PREFIX)
    new = letters[(start + 1) % len(letters)]
    if new == BATCH_ID_PREFIX:
        raise ValueError("every BatchID letter is exhausted")
    return new, int(requested_at_ms)


def batch_id(stamp: int, prefix: str = BATCH_ID_PREFIX) -> str:
    """``S`` + 13 digits: exactly 14 characters."""
    value = f"{prefix}{stamp:013d}"
    assert len(value) == BATCH_ID_LEN, value
    return value


def base36(n: int) -> str:
    if n < 0:
        raise ValueError("negative")
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _B36[r] + out
        if n == 0:
            return out


def request_id(seq: int, student_key: str) -> str:
    """Deterministic, ≤20 characters, none of ``: / \\`` and no blanks; unique per (school, seq)."""
    student = _UNSAFE.sub("_", student_key)
    # cut on purpose: the requestID is a tracking id (unique by its sequence part); the record keeps the full key
    return f"{base36(seq)}.{student}"[:REQUEST_ID_MAX]


def user_id_problem(user_id: str | None) -> str | None:
    """Why ``user_id`` cannot be a SEVIS userID (exactly 10 characters), or None when it can."""
    if not user_id:
        return "a SEVIS user id is required (exactly 10 characters, as you log in to SEVIS)"
    if len(user_id) != USER_ID_LEN:
        return (
            f"SEVIS user id {user_id!r} has {len(user_id)} characters; SEVIS needs exactly "
            f"{USER_ID_LEN} (the user name you log in to SEVIS with)"
        )
    if any(c.isspace() or not c.isprintable() for c in user_id):
        return f"SEVIS user id {user_id!r} contains blanks or control characters"
    return None


# -- exchange programs (EV batches)

PROGRAM_NUMBER = re.compile(r"[PG]-[1-7]-\d{5}")
"""A J-1 program number (the OrgID of EV batches); the exact ranges are checked where programs are configured."""
_EV_STAMP_LEN = BATCH_ID_LEN - 7
_MAX_EV_STAMP = 36**_EV_STAMP_LEN - 1
_B36_UPPER = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def is_program(org_id: str) -> bool:
    """Whether ``org_id`` is a J-1 program number (its batches are EV batches), not a school code."""
    return bool(PROGRAM_NUMBER.fullmatch(org_id))


def next_ev_stamp(requested_at_ms: int, last_stamp: int) -> int:
    """The stamp of a program's next BatchID, in seconds: never below the close's clock, always above the last."""
    stamp = max(int(requested_at_ms) // 1000, int(last_stamp) + 1)
    if stamp > _MAX_EV_STAMP:  # year 4453; refuse rather than wrap into an old id
        raise ValueError("BatchID stamp overflow")
    return stamp


def ev_batch_id(org_id: str, stamp: int) -> str:
    """``P112345`` (the program number without hyphens) + 7 base-36 digits of the stamp: exactly 14 characters.

    Why not ``S`` + milliseconds as for the school: the outbox, the SEVIS sink and the audit find a batch by its
    BatchID alone, so the BatchIDs of every OrgID of the institution must differ, and a scheduled close gives the
    school and each program the same clock. The program number in the id keeps them apart, and the DSO sees whose
    batch it is."""
    value = org_id.replace("-", "") + _stamp_digits(stamp)
    assert len(value) == BATCH_ID_LEN, value
    return value


def _stamp_digits(stamp: int) -> str:
    """A seconds stamp as 7 upper-case base-36 digits (the end of a program's or a member school's BatchID)."""
    digits = ""
    n = stamp
    while True:
        n, r = divmod(n, 36)
        digits = _B36_UPPER[r] + digits
        if n == 0:
            break
    return digits.rjust(_EV_STAMP_LEN, "0")


def member_batch_prefix(org_id: str) -> str:
    """The first 7 characters of a member school's BatchIDs: ``M``, a letter, 5 base-36 digits, from a hash of the
    OrgID. The second character is a letter, so no id of the main school (a letter + 13 digits) or of a program
    (``P``/``G`` + digits) starts the same; two member schools with the same prefix are refused at start-up."""
    n = int.from_bytes(hashlib.sha256(org_id.encode()).digest()[:8], "big")
    letter, rest = _B36_UPPER[10 + n % 26], n // 26 % 36**5
    digits = ""
    for _ in range(5):
        rest, r = divmod(rest, 36)
        digits = _B36_UPPER[r] + digits
    return "M" + letter + digits


def member_batch_id(org_id: str, stamp: int) -> str:
    """A member school's BatchID: :func:`member_batch_prefix` + 7 base-36 digits of a seconds stamp (14 characters;
    the stamp follows the programs' rules, :func:`next_ev_stamp`)."""
    value = member_batch_prefix(org_id) + _stamp_digits(stamp)
    assert len(value) == BATCH_ID_LEN, value
    return value


def next_org_stamp(
    org_id: str, requested_at_ms: int, last_stamp: int, prefix: str, member: bool = False
) -> tuple[str, int]:
    """(prefix, stamp) of the next BatchID of ``org_id`` (a school, a member school, a program); ValueError when none
    can be made."""
    if is_program(org_id) or member:
        return prefix, next_ev_stamp(requested_at_ms, last_stamp)
    return next_batch_stamp(requested_at_ms, last_stamp, prefix)


def org_batch_id(org_id: str, stamp: int, prefix: str = BATCH_ID_PREFIX, member: bool = False) -> str:
    """The BatchID of ``stamp`` for ``org_id``: ``S`` + 13 digits for the school, the member form for a member school
    (``member``), the program's form for a program."""
    if is_program(org_id):
        return ev_batch_id(org_id, stamp)
    return member_batch_id(org_id, stamp) if member else batch_id(stamp, prefix)
