"""``sevisflow student add-info``: SEVIS-only data the SIS does not hold, stored as events on sevis.events.

What the SEVIS student batch schema (Create-UpdateStudent.xsd 6.55) can carry:

* passport: only the *name as written in the passport* — ``PersonalInfo/FullName/PassportName``
  (≤39 characters, no digits; ``FullName`` needs the student's ``LastName`` too). The schema
  has no element for a student's passport number, issuing country or expiry date (Common.xsd's
  TravelType is not used by the student schema): those are entered in SEVIS RTI.
* dependents: ``Dependent/Add`` — name, birth date, gender, birth country, citizenship,
  visa type (F-2 ``04`` / M-2 ``05``) and relationship (spouse ``01`` / child ``02``).

Each piece becomes one ``report`` BatchCommand carrying the DSO's SEVIS user id (``--dso`` or
``school.default_dso``), checked by the batcher like every DSO command (who, when, the student's
SEVIS ID) and turned into an open-batch record with ``origin = "dso"`` (review, hold, close).
Values are checked against the XSD's rules and code lists before anything is sent, and the
meaning of every code is echoed (country names, visa type, relationship) so a person catches
``CN`` (Comoros) typed for China (``CH``).

``sevisflow student report``: UpdateStudent events no SIS change triggers — ``Reprint`` (a new
I-20: travel, lost, damaged), ``Status/Verify`` and ``DisciplinaryAction``. Each is one
``report`` BatchCommand on sevis.batch.commands carrying the DSO's SEVIS user id; the batcher
turns it into an open-batch record (origin ``dso``) whose lineage is the command (id, DSO,
time), so ``sevisflow verify`` re-derives it from the retained commands.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from sevisflow.app.cli.batch import (
    KAFKA_TIMEOUT_S,
    ORG_HELP,
    await_answer,
    await_view,
    check_kafka,
    end_offsets,
    new_command,
    org_of,
    send_command,
)
from sevisflow.app.cli.common import add_json_flag, print_json, settings_from_args
from sevisflow.core.config import Settings
from sevisflow.core.errors import SevisflowError
from sevisflow.core.kafka_io import read_topic
from sevisflow.core.serde import registry
from sevisflow.processors.sevis_events.hygiene import require_clean_add_info

EVENT_SCHEMA = "sevisflow.events.SevisEvent"
SEVIS_ID = re.compile(r"^N\d{10}$")
RELATIONSHIP = {"spouse": "01", "child": "02", "01": "01", "02": "02"}
VISA = {"f-2": "04", "f2": "04", "04": "04", "m-2": "05", "m2": "05", "05": "05"}
DEP_KEYS = {
    "last",
    "first",
    "birth-date",
    "gender",
    "birth-city",
    "birth-country",
    "citizenship",
    "relationship",
    "visa",
    "email",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "student",
        help="add SEVIS-only information about a student (passport name, dependents) "
        "or report a Reprint / Status Verify / DisciplinaryAction",
    )
    p.add_argument(
        "--org",
        default=None,
        help=ORG_HELP + "; with a program number, `report reprint` asks for a new "
        "DS-2019 of the exchange visitor (EV Reprint)",
    )
    ssub = p.add_subparsers(dest="student_command", metavar="ACTION", required=True)
    a = ssub.add_parser(
        "add-info",
        help="record passport name / dependents for the next batch",
        description="Record SEVIS-only data; it goes into the open batch like any other change.",
    )
    a.add_argument("student", help="the student's id in the SIS (student key)")
    a.add_argument(
        "--passport",
        metavar="NAME",
        help="the name exactly as printed in the passport (SEVIS PassportName, ≤39 characters, no "
        "digits). Passport numbers and dates cannot be sent by batch: enter them in SEVIS RTI",
    )
    a.add_argument(
        "--last-name",
        help="the student's last name in SEVIS (needed with --passport when the pipeline has not seen it)",
    )
    a.add_argument(
        "--dependent",
        action="append",
        default=[],
        metavar="SPEC",
        help='a new F-2/M-2 dependent, e.g. "last=Li,first=Mei,birth-date=2019-03-02,gender=F,'
        'birth-country=CH,citizenship=CH,relationship=child,visa=F-2" (birth-city, email optional); '
        "repeat for several",
    )
    a.add_argument(
        "--sevis-id",
        help="the student's SEVIS ID (N + 10 digits) when the pipeline does not know it; "
        "refused when it differs from the one SEVIS returned or the pipeline knows",
    )
    a.add_argument(
        "--dso",
        default=None,
        metavar="USERID",
        help="your SEVIS user id, recorded as who added it (default: school.default_dso)",
    )
    a.add_argument(
        "--yes", action="store_true", help="on a terminal, add without asking to confirm the codes' meanings"
    )
    a.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the batcher (default 30)")
    a.add_argument(
        "--print-form",
        choices=("true", "false"),
        default=None,
        help="ask SEVIS for a new I-20 (default: true for dependents, false for the passport name)",
    )
    add_json_flag(a)
    a.set_defaults(func=cmd_add_info)

    r = ssub.add_parser(
        "report",
        help="report a Reprint, Status/Verify or DisciplinaryAction for the next batch",
        description="Report a SEVIS event no SIS change triggers; it goes into the open batch with "
        "you as its origin, to be reviewed and closed like any other record.",
    )
    r.add_argument("student", help="the student's id in the SIS (student key)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dso",
        default=None,
        metavar="USERID",
        help="your SEVIS user id (exactly 10 characters), recorded as who reported it (default: school.default_dso)",
    )
    common.add_argument("--sevis-id", help="the student's SEVIS ID (N + 10 digits) when the pipeline does not know it")
    common.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the batcher (default 30)")
    add_json_flag(common)
    rsub = r.add_subparsers(dest="report_event", metavar="EVENT", required=True)
    rp = rsub.add_parser("reprint", parents=[common], help="Reprint: SEVIS prints a new I-20 (travel, lost, damaged)")
    rp.add_argument(
        "--reason",
        required=True,
        metavar="CODE",
        help="SEVIS reprint reason code (StudentReprintRequestReasonType: 01, 02, 03, 04, 50, 53; for an "
        "exchange program's EV, EVReprintRequestReasonType: 05, 12, 13, 14)",
    )
    rp.add_argument("--remarks", default=None, help="optional remarks (≤500 characters)")
    rp.add_argument(
        "--print-form",
        choices=("true", "false"),
        default=None,
        help="whether SEVIS prints the form (XSD default: true)",
    )
    rsub.add_parser("verify", parents=[common], help="Status/Verify: verify the student's status")
    dp = rsub.add_parser(
        "disciplinary",
        parents=[common],
        help="DisciplinaryAction: a disciplinary action the school took against the student",
    )
    dp.add_argument("--explanation", required=True, help="what happened (1-500 characters; sent to SEVIS)")
    r.set_defaults(func=cmd_report)


# ----------------------------------------------------------------------------- validation


@lru_cache(maxsize=4)
def code_list(xsd_dir: str, type_name: str) -> frozenset[str] | None:
    """The enumeration of a SEVISTable.xsd simple type, or None when the XSDs are not there."""
    path = Path(xsd_dir) / "SEVISTable.xsd"
    if not path.exists():
        return None
    from lxml import etree

    ns = {"xs": "http://www.w3.org/2001/XMLSchema"}
    tree = etree.parse(str(path))
    values = tree.xpath(f"//xs:simpleType[@name='{type_name}']//xs:enumeration/@value", namespaces=ns)
    return frozenset(str(v) for v in values)


def _name(value: str, what: str, max_len: int, required: bool = True) -> str:
    value = value.strip()
    if not value:
        if required:
            raise SevisflowError(f"{what} is required")
        return value
    if len(value) > max_len:
        raise SevisflowError(f"{what} is {len(value)} characters long; SEVIS allows at most {max_len}")
    if any(c.isdigit() for c in value):
        raise SevisflowError(
            f"{what} may not contain digits (SEVIS rule)"
            + (
                "; passport numbers cannot be sent in a student batch — enter them in SEVIS RTI"
                if what == "passport name"
                else ""
            )
        )
    return value


def _country(value: str, what: str, settings: Settings, type_name: str) -> str:
    value = value.strip().upper()
    codes = code_list(settings.sevis.xsd_dir, type_name)
    if codes is None:
        if not re.fullmatch(r"[A-Z]{2}", value):
            raise SevisflowError(f"{what} {value!r} is not a two-letter SEVIS country code")
    elif value not in codes:
        raise SevisflowError(
            f"{what} {value!r} is not a SEVIS country code ({type_name}); SEVIS uses its own "
            "codes, e.g. CH = China, GM = Germany, KS = South Korea"
        )
    return value


def parse_dependent(spec: str, settings: Settings) -> dict[str, Any]:
    """``key=value,…`` → the content of ``Dependent/Add``; raises with a clear message."""
    fields: dict[str, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise SevisflowError(f"--dependent: {part.strip()!r} is not key=value")
        k, v = part.split("=", 1)
        k = k.strip().lower()
        if k not in DEP_KEYS:
            raise SevisflowError(f"--dependent: unknown key {k!r} (known: {', '.join(sorted(DEP_KEYS))})")
        fields[k] = v.strip()
    missing = [
        k for k in ("last", "birth-date", "gender", "birth-country", "citizenship", "relationship") if not fields.get(k)
    ]
    if missing:
        raise SevisflowError(f"--dependent: {', '.join(missing)} missing")
    try:
        born = date.fromisoformat(fields["birth-date"])
    except ValueError:
        raise SevisflowError(f"--dependent: birth-date {fields['birth-date']!r} is not a date (YYYY-MM-DD)") from None
    if born > date.today():
        raise SevisflowError("--dependent: birth-date is in the future")
    gender = fields["gender"].upper()
    if gender not in ("M", "F", "U"):
        raise SevisflowError("--dependent: gender must be M, F or U")
    rel = RELATIONSHIP.get(fields["relationship"].lower())
    if rel is None:
        raise SevisflowError("--dependent: relationship must be spouse or child")
    visa = VISA.get(fields.get("visa", "F-2").lower())
    if visa is None:
        raise SevisflowError("--dependent: visa must be F-2 or M-2")
    full = {"LastName": _name(fields["last"], "dependent's last name", 80)}
    if fields.get("first"):
        full["FirstName"] = _name(fields["first"], "dependent's first name", 80)
    payload: dict[str, Any] = {
        "FullName": full,
        "BirthDate": born.isoformat(),
        "Gender": gender,
        "BirthCountryCode": _country(fields["birth-country"], "birth-country", settings, "BirthCntryCodeType"),
        "CitizenshipCountryCode": _country(fields["citizenship"], "citizenship", settings, "CntryCodeWithoutType"),
        "VisaType": visa,
        "Relationship": rel,
    }
    if fields.get("birth-city"):
        if len(fields["birth-city"]) > 100:
            raise SevisflowError("--dependent: birth-city is longer than 100 characters")
        payload["BirthCity"] = fields["birth-city"]
    if fields.get("email"):
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", fields["email"]):
            raise SevisflowError("--dependent: email is not an e-mail address")
        payload["Email"] = fields["email"]
    return payload


REPRINT_REASONS_TYPE = "StudentReprintRequestReasonType"
EV_REPRINT_REASONS_TYPE = "EVReprintRequestReasonType"
REMARKS_MAX = 500
"""common:RemarksType (DisciplinaryAction/Explanation, Reprint/Remarks): 1-500 characters."""
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _remarks(value: str, what: str) -> str:
    """Text for a common:RemarksType element; refuses what SEVIS cannot take (too long, characters XML cannot carry)."""
    value = value.strip()
    if not value:
        raise SevisflowError(f"{what} is empty; SEVIS needs 1 to {REMARKS_MAX} characters")
    if len(value) > REMARKS_MAX:
        raise SevisflowError(f"{what} is {len(value)} characters long; SEVIS allows at most {REMARKS_MAX}: shorten it")
    bad = _XML_BAD.search(value)
    if bad:
        raise SevisflowError(
            f"{what} contains a control character (U+{ord(bad.group()):04X} at position "
            f"{bad.start() + 1}) that a SEVIS batch cannot carry: remove it"
        )
    return value


def report_event(
    event: str,
    settings: Settings,
    *,
    reason: str | None = None,
    remarks: str | None = None,
    print_form: str | None = None,
    explanation: str | None = None,
    ev: bool = False,
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(kind, payload, after) of a DSO-reported event, checked against the XSD's rules; raises with the fix.
    ``ev``: for an exchange program's EV batch (its RO/ARO reports): only ``reprint`` (a new DS-2019)."""
    if ev and event != "reprint":
        raise SevisflowError(
            f"{event} is a student (F/M) event: an exchange program's RO/ARO can report a reprint "
            "of the DS-2019 (`report reprint`); other EV changes come from the SIS"
        )
    if event == "reprint":
        code = (reason or "").strip()
        type_name = EV_REPRINT_REASONS_TYPE if ev else REPRINT_REASONS_TYPE
        codes = code_list(settings.sevis.xsd_dir, type_name)
        if (codes is None and not re.fullmatch(r"\d{2}", code)) or (codes is not None and code not in codes):
            allowed = ", ".join(sorted(codes)) if codes else "two digits"
            raise SevisflowError(
                f"--reason {code!r} is not a SEVIS reprint reason code ({type_name}); use one of: {allowed}"
            )
        payload: dict[str, Any] = {"Reason": code}
        if remarks is not None:
            payload["Remarks"] = _remarks(remarks, "--remarks")
        if print_form is not None:
            payload["@printForm"] = print_form
        return ("EV.Reprint" if ev else "Reprint"), payload, {"reprint_reason": code}
    if event == "verify":
        return "Status.Verify", {}, {"status": "verify"}
    if event == "disciplinary":
        text = _remarks(explanation or "", "--explanation")
        return "DisciplinaryAction", {"Explanation": text}, {"disciplinary_action": text}
    raise SevisflowError(f"unknown event {event!r} (reprint, verify, disciplinary)")


# ----------------------------------------------------------------------------- what the pipeline knows


def known_student(settings: Settings, org: str, student: str) -> dict[str, Any]:
    """SEVIS ID, last name and display name of a student from the latest events on sevis.events."""
    info: dict[str, Any] = {"sevis_id": None, "last_name": None, "display_name": None, "seen": False}
    for msg in read_topic(settings.kafka, settings.topics.events, timeout_s=KAFKA_TIMEOUT_S * 3):
        if (value := msg.value()) is None:
            continue
        ev = registry().decode(value, EVENT_SCHEMA)
        if ev["org_id"] != org or ev["student_key"] != student:
            continue
        info["seen"] = True
        info["sevis_id"] = ev.get("sevis_id") or info["sevis_id"]
        info["display_name"] = ev.get("display_name") or info["display_name"]
        try:
            payload = orjson.loads(ev["payload_json"])
        except orjson.JSONDecodeError:
            continue
        full = (
            (payload.get("PersonalInfo") or {}).get("FullName") if ev["kind"] == "Create" else payload.get("FullName")
        )
        if isinstance(full, dict) and full.get("LastName"):
            info["last_name"] = full["LastName"]
    return info


CODE_FIELDS = (
    ("BirthCountryCode", "birth country", "country"),
    ("CitizenshipCountryCode", "citizenship", "country"),
    ("VisaType", "visa", "visa_type"),
    ("Relationship", "relationship", "relationship"),
    ("Gender", "gender", "gender"),
)
"""The coded fields of a new dependent, and the label table (sevisflow.app.labels) that says what each code means."""


def code_meanings(dep: dict[str, Any], settings: Settings) -> list[tuple[str, str]]:
    """(field, "meaning (code)") for every code of a dependent, e.g. ("birth country", "Comoros (CN)").

    Country names: :mod:`sevisflow.app.labels` (the ISO 3166-1 name of the ISO code that
    processors/normalize/codes.py maps to the SEVIS code, a table checked against SEVISTable.xsd); a SEVIS
    code without an ISO counterpart is shown as the code with "no label source". Visa type, relationship
    and gender: the SEVISTable.xsd annotations of those types."""
    from sevisflow.app.labels import Labels

    labels = Labels(settings.sevis.xsd_dir)
    return [(what, labels.describe(kind, dep[key])) for key, what, kind in CODE_FIELDS if dep.get(key)]


def sevis_id_from_sevis(settings: Settings, org: str, student: str) -> str | None:
    """The SEVIS ID SEVIS returned for the student's Create (sevis.results), if any."""
    found = None
    for msg in read_topic(settings.kafka, settings.topics.results, timeout_s=KAFKA_TIMEOUT_S * 3):
        if (value := msg.value()) is None:
            continue
        res = registry().decode(value, "sevisflow.results.SevisResult")
        if (
            res.get("org_id") == org
            and res.get("student_key") == student
            and res.get("status") == "success"
            and res.get("sevis_id")
        ):
            found = res["sevis_id"]
    return found


def settle_sevis_id(
    given: str | None, known: dict[str, Any], from_sevis: str | None, student: str, doing: str
) -> str | None:
    """The SEVIS ID to use; refuses one that differs from what SEVIS returned or the pipeline knows."""
    reference = from_sevis or known.get("sevis_id")
    if given and reference and given != reference:
        where = "SEVIS returned" if from_sevis else "the pipeline knows (from the SIS)"
        raise SevisflowError(
            f"--sevis-id {given} differs from {reference}, the SEVIS ID {where} for student "
            f"{student}; nothing was {doing}. Use {reference}, or correct the SIS record if it "
            "holds the wrong ID"
        )
    return given or reference


def send_report(
    settings: Settings,
    org: str,
    student: str,
    dso: str,
    body: dict[str, Any],
    reason: str,
    start: dict[int, int],
    timeout_s: float,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One ``report`` command, and the batcher's answer: (command, the deciding event, the record)."""
    from sevisflow.app.cli.dso import principal_of

    cmd = new_command(
        org,
        "report",
        dso_user_id=dso,
        student_key=student,
        reason=reason,
        payload_json=orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode(),
        principal=principal_of(settings.kafka),
    )
    send_command(settings, cmd)
    events = await_answer(
        settings, cmd["command_id"], start, {"record_added", "record_replaced", "record_held"}, timeout_s
    )
    rejected = [e for e in events if e["type"] == "command_rejected"]
    if rejected:
        raise SevisflowError(f"the batcher refused: {rejected[0]['reason']}")
    done = next(e for e in events if e["type"] in ("record_added", "record_replaced", "record_held"))
    return cmd, done, orjson.loads(done["record_json"])


def cmd_add_info(args: argparse.Namespace) -> int:
    """Passport name / new dependents as DSO ``report`` commands: checked by the batcher like every DSO action."""
    from sevisflow.app.cli import dso as dso_cli
    from sevisflow.app.cli.batch import load_open_view

    if not args.passport and not args.dependent:
        raise SevisflowError("nothing to add: give --passport and/or --dependent")
    if args.sevis_id and not SEVIS_ID.fullmatch(args.sevis_id):
        raise SevisflowError(f"--sevis-id {args.sevis_id!r} is not a SEVIS ID (N followed by 10 digits)")
    settings = settings_from_args(args)
    org = org_of(args, settings)
    if settings.program(org) is not None:
        raise SevisflowError(
            f"add-info sends F/M student data (PersonalInfo, Dependent/Add); exchange program {org} "
            "takes its exchange visitors' data and J-2 dependents from the SIS: nothing was added"
        )
    passport = _name(args.passport, "passport name", 39) if args.passport else None
    dependents = [parse_dependent(spec, settings) for spec in args.dependent]
    dso = dso_cli.resolve_dso(args.dso, settings, "added", org=org)
    require_clean_add_info(passport, args.last_name, dependents)  # control characters, lengths, dates: before Kafka
    t = settings.topics
    check_kafka(settings, [t.events, t.commands, t.batches, t.results])
    known = known_student(settings, org, args.student)
    if not known["seen"] and not dso_cli.known_to_pipeline(settings, load_open_view(settings, org), args.student):
        raise dso_cli.unknown_student(args.student, settings)
    sevis_id = settle_sevis_id(
        args.sevis_id, known, sevis_id_from_sevis(settings, org, args.student), args.student, "added"
    )
    if not sevis_id:
        raise SevisflowError(
            f"no SEVIS ID is known for student {args.student}: SEVIS-only data can be sent once "
            "the student is in SEVIS; give the ID with --sevis-id N0000000000"
        )
    bodies: list[tuple[str, dict[str, Any]]] = []
    if passport:
        last = args.last_name or known["last_name"]
        if not last:
            raise SevisflowError(
                f"the last name of student {args.student} is not known to the pipeline; give it "
                "with --last-name (SEVIS needs it next to the passport name)"
            )
        pf = args.print_form or "false"
        bodies.append(
            (
                f"passport name {passport}",
                {
                    "kind": "PersonalInfo",
                    "coalesce_key": "PersonalInfo.PassportName",
                    "sevis_id": sevis_id,
                    "payload": {
                        "@printForm": pf,
                        "FullName": {"LastName": _name(last, "last name", 80), "PassportName": passport},
                    },
                    "after": {"passport_name": passport},
                    "display_name": known["display_name"],
                },
            )
        )
    meanings = []
    for dep in dependents:
        pf = args.print_form or "true"
        ident = hashlib.sha256(orjson.dumps([dep["FullName"], dep["BirthDate"]], option=orjson.OPT_SORT_KEYS))
        label = (
            f"{dep['FullName']['LastName']}, {dep['FullName'].get('FirstName', '')} "
            f"({'spouse' if dep['Relationship'] == '01' else 'child'}, born {dep['BirthDate']})"
        )
        meanings.append((label, code_meanings(dep, settings)))
        bodies.append(
            (
                f"dependent {label}",
                {
                    "kind": "Dependent.Add",
                    "coalesce_key": f"Dependent:new-{ident.hexdigest()[:10]}",
                    "sevis_id": sevis_id,
                    "payload": {"@printForm": pf, **dep},
                    "after": {"new_dependent": label},
                    "display_name": known["display_name"],
                },
            )
        )
    if not args.json:
        print(f"Student {args.student} ({sevis_id}), as {dso}:")
        if passport:
            print(f"  passport name: {passport}")
        for label, codes in meanings:
            print(f"  dependent {label}:")
            for what, meaning in codes:
                print(f"    {what:<15} {meaning}")
    if (
        dso_cli.interactive()
        and not args.json
        and not args.yes
        and not dso_cli.confirm("Is every code what you mean? Type yes to add: ")
    ):
        print("Nothing was added.")
        return 1
    start = end_offsets(settings, t.batches)
    results = []
    for what, body in bodies:
        cmd, done, rec = send_report(
            settings,
            org,
            args.student,
            dso,
            body,
            f"{body['kind']} added with sevisflow student add-info",
            start,
            args.timeout,
        )
        results.append(
            {
                "command_id": cmd["command_id"],
                "kind": body["kind"],
                "coalesce_key": body["coalesce_key"],
                "record_id": rec["record_id"],
                "status": rec["status"],
                "outcome": done["type"],
                "what": what,
                "revision": done["revision"],
            }
        )
    await_view(settings, org, max(r["revision"] for r in results))
    if args.json:
        print_json(
            {
                "student_key": args.student,
                "sevis_id": sevis_id,
                "dso_user_id": dso,
                "records": results,
                "codes": [{"dependent": label, **dict(codes)} for label, codes in meanings],
            }
        )
    else:
        held = any(r["status"] == "held" for r in results)
        print(
            f"Added to the open batch: {', '.join(r['what'] for r in results)}"
            + (" (HELD: the student is on hold)" if held else "")
            + ". Review them with `sevisflow batch show`; they go to SEVIS with the next batch you close."
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Send one ``report`` command and wait until the batcher has the record in the open batch."""
    from sevisflow.app.cli.dso import resolve_dso

    if args.sevis_id and not SEVIS_ID.fullmatch(args.sevis_id):
        raise SevisflowError(f"--sevis-id {args.sevis_id!r} is not a SEVIS ID (N followed by 10 digits)")
    settings = settings_from_args(args)
    org = org_of(args, settings)
    args.dso = resolve_dso(args.dso, settings, "reported", org=org)
    kind, payload, after = report_event(
        args.report_event,
        settings,
        reason=getattr(args, "reason", None),
        remarks=getattr(args, "remarks", None),
        print_form=getattr(args, "print_form", None),
        explanation=getattr(args, "explanation", None),
        ev=settings.program(org) is not None,
    )
    check_kafka(
        settings, [settings.topics.events, settings.topics.commands, settings.topics.batches, settings.topics.results]
    )
    known = known_student(settings, org, args.student)
    sevis_id = settle_sevis_id(
        args.sevis_id, known, sevis_id_from_sevis(settings, org, args.student), args.student, "reported"
    )
    if not sevis_id:
        raise SevisflowError(
            f"no SEVIS ID is known for student {args.student}: {kind} can only be sent for a "
            "student already in SEVIS; give the ID with --sevis-id N0000000000 (nothing was sent)"
        )
    start = end_offsets(settings, settings.topics.batches)
    body = {
        "kind": kind,
        "payload": payload,
        "sevis_id": sevis_id,
        "after": after,
        "display_name": known["display_name"],
    }
    cmd, done, rec = send_report(
        settings,
        org,
        args.student,
        args.dso,
        body,
        f"{kind} reported with sevisflow student report",
        start,
        args.timeout,
    )
    events = [done]
    rec = orjson.loads(done["record_json"])
    await_view(settings, org, max(e["revision"] for e in events))
    if args.json:
        print_json(
            {
                "command_id": cmd["command_id"],
                "student_key": args.student,
                "sevis_id": sevis_id,
                "kind": kind,
                "record_id": rec["record_id"],
                "request_id": rec["request_id"],
                "status": rec["status"],
                "outcome": done["type"],
                "dso_user_id": args.dso,
            }
        )
    else:
        note = {
            "record_added": "is in the open batch",
            "record_replaced": "replaces the earlier one in the open batch",
            "record_held": "is in the open batch but HELD (the student is on hold)",
        }[done["type"]]
        show = f"sevisflow batch --org {org} show" if settings.program(org) else "sevisflow batch show"
        print(
            f"{kind} for student {args.student} ({sevis_id}) {note}, reported by {args.dso}. Review it with "
            f"`{show}`; it goes to SEVIS with the next batch you close."
        )
    return 0
