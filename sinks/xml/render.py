"""Format: a closed batch → SEVISBatchCreateUpdateStudent XML bytes (pure, deterministic).

:func:`render_batch` is a pure function of the closed batch and the schema: the same
batch gives the same bytes, whatever key order its payload dicts use, because
every element's children are ordered by the XSD's content model
(:mod:`sevisflow.sinks.xml.xsd`). Nothing is taken from a clock. :func:`check_batch` renders
*and* validates against the official XSD, and maps every problem to the batch
record (student, request id) and the field it concerns, so a failing record can be
sent back to the DSO while the others are re-queued.

Batch records are the ``records_json`` items of a ``closed`` BatchEvent (see
docs/CONTRACTS.md): ``kind`` ``Create`` renders as ``CreateStudent/Student``,
``A.B`` as ``UpdateStudent/Student/A/B``; payload keys starting with ``@`` are
attributes of the event element (of ``Student`` for creates); ``#text`` is the text
of an element that also has attributes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from sevisflow.sinks.xml.xsd import ROOT, ElementModel, StudentSchema

MAX_RECORDS_PER_SECTION = 250
REQUEST_ID_RE = re.compile(r"^[^:/\\]{1,20}$")
SEVIS_ID_RE = re.compile(r"^N\d{10}$")


@dataclass(frozen=True)
class ClosedBatch:
    """What the sink needs of a ``closed`` BatchEvent."""

    org_id: str
    batch_id: str
    closed_by: str
    at_ms: int
    records: tuple[Mapping[str, Any], ...]

    @classmethod
    def from_event(cls, event: Mapping[str, Any], records: Iterable[Mapping[str, Any]]) -> ClosedBatch:
        return cls(
            org_id=event["org_id"],
            batch_id=event.get("batch_id") or "",
            closed_by=event.get("closed_by") or "",
            at_ms=int(event["at_ms"]),
            records=tuple(records),
        )

    @property
    def creates(self) -> list[Mapping[str, Any]]:
        return [r for r in self.records if r.get("section") == "create" or r.get("kind") == "Create"]

    @property
    def updates(self) -> list[Mapping[str, Any]]:
        return [r for r in self.records if not (r.get("section") == "create" or r.get("kind") == "Create")]


@dataclass(frozen=True)
class Problem:
    """Why a record (or the whole batch, when ``request_id`` is None) cannot be sent.

    ``at_fault`` False means the record itself is fine but could not go in this
    document (e.g. over the 250 limit): it is re-queued rather than sent to the DSO.
    The message never contains the offending value (it may be personal data).
    """

    code: str
    message: str
    request_id: str | None = None
    record_id: str | None = None
    student_key: str | None = None
    kind: str | None = None
    field: str | None = None
    at_fault: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "request_id": self.request_id,
            "record_id": self.record_id,
            "student_key": self.student_key,
            "kind": self.kind,
            "field": self.field,
            "at_fault": self.at_fault,
        }


@dataclass
class Checked:
    """The outcome of :func:`check_batch`: the document and the problems (empty = uploadable)."""

    xml: bytes
    problems: list[Problem] = field(default_factory=list)
    rendered: list[Mapping[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def bad_request_ids(self) -> set[str]:
        return {p.request_id for p in self.problems if p.request_id and p.at_fault}


class _Refused(Exception):
    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _set_text(el: etree._Element, value: Any, path: str) -> None:
    try:
        el.text = _text(value)
    except ValueError:
        raise _Refused("invalid_character", "contains characters XML cannot carry (control characters)", path) from None


def _set_attr(el: etree._Element, name: str, value: Any, path: str) -> None:
    try:
        el.set(name, _text(value))
    except ValueError:
        raise _Refused(
            "invalid_character", "contains characters XML cannot carry (control characters)", f"{path}/@{name}"
        ) from None


def _fill(el: etree._Element, content: Mapping[str, Any], model: ElementModel, path: str) -> None:
    """Put ``content`` (attributes, text, children) into ``el``, children in XSD order."""
    attrs = sorted(
        (k[1:] for k in content if k.startswith("@")),
        key=lambda a: (model.attributes.index(a) if a in model.attributes else len(model.attributes), a),
    )
    for name in attrs:
        value = content["@" + name]
        if value is None:
            continue
        if name not in model.attributes:
            raise _Refused("unknown_attribute", f"the XSD has no attribute {name} on {model.name}", f"{path}/@{name}")
        _set_attr(el, name, value, path)
    if "#text" in content and content["#text"] is not None:
        _set_text(el, content["#text"], path)
    keys = [k for k in content if not k.startswith("@") and k != "#text"]
    for key in keys:
        if key not in model.order:
            raise _Refused("unknown_element", f"the XSD has no element {key} under {model.name}", f"{path}/{key}")
    for key in sorted(keys, key=lambda k: model.order[k]):
        _append(el, key, content[key], model.children[key], f"{path}/{key}")


def _append(parent: etree._Element, name: str, value: Any, model: ElementModel, path: str) -> None:
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _append(parent, name, item, model, path)
        return
    el = etree.SubElement(parent, name)
    if isinstance(value, Mapping):
        _fill(el, value, model, path)
    elif not model.simple and model.order:
        raise _Refused("not_an_object", f"{name} is a complex element: give an object, not a value", path)
    else:
        _set_text(el, value, path)


def _student_create(rec: Mapping[str, Any], batch: ClosedBatch, model: ElementModel) -> etree._Element:
    payload = rec.get("payload") or {}
    if not isinstance(payload, Mapping):
        raise _Refused("bad_payload", "payload is not an object", None)
    content = dict(payload)
    for attr in ("@requestID", "@userID"):
        content.pop(attr, None)
    if rec.get("user_defined_a") and "UserDefinedA" not in content:
        content["UserDefinedA"] = rec["user_defined_a"]
    if rec.get("user_defined_b") and "UserDefinedB" not in content:
        content["UserDefinedB"] = rec["user_defined_b"]
    el = etree.Element("Student")
    el.set("requestID", str(rec["request_id"]))
    el.set("userID", batch.closed_by)
    _fill(el, content, model, "")
    return el


def _student_update(rec: Mapping[str, Any], batch: ClosedBatch, model: ElementModel) -> etree._Element:
    kind = str(rec.get("kind") or "")
    steps = kind.split(".")
    # validate the path before creating anything
    m = model
    for step in steps:
        nxt = m.children.get(step) if step not in ("UserDefinedA", "UserDefinedB") else None
        # a sub-event of an event group may have no content at all (Status/Verify is common:EmptyType)
        if nxt is None or (nxt.simple and not m.choice_of_events):
            raise _Refused("unknown_kind", f"kind {kind!r} is not an UpdateStudent event in this XSD", None)
        m = nxt
    if m.choice_of_events:
        raise _Refused(
            "unknown_kind",
            f"kind {kind!r} names a group of events, not one event "
            f"(one of: {', '.join(kind + '.' + c for c in m.order)})",
            None,
        )
    payload = rec.get("payload") or {}
    if not isinstance(payload, Mapping):
        raise _Refused("bad_payload", "payload is not an object", None)
    el = etree.Element("Student")
    el.set("sevisID", str(rec.get("sevis_id")))
    el.set("requestID", str(rec["request_id"]))
    el.set("userID", batch.closed_by)
    if rec.get("user_defined_a"):
        _set_text(etree.SubElement(el, "UserDefinedA"), rec["user_defined_a"], "UserDefinedA")
    if rec.get("user_defined_b"):
        _set_text(etree.SubElement(el, "UserDefinedB"), rec["user_defined_b"], "UserDefinedB")
    node, m = el, model
    for step in steps:
        m = m.children[step]
        node = etree.SubElement(node, step)
    _fill(node, payload, m, "/".join(steps))
    return el


def _record_problem(
    rec: Mapping[str, Any], code: str, message: str, field: str | None, at_fault: bool = True
) -> Problem:
    return Problem(
        code=code,
        message=message,
        request_id=rec.get("request_id"),
        record_id=rec.get("record_id"),
        student_key=rec.get("student_key"),
        kind=rec.get("kind"),
        field=field,
        at_fault=at_fault,
    )


def _precheck(rec: Mapping[str, Any], section: str, seen: set[str]) -> None:
    rid = rec.get("request_id")
    if not isinstance(rid, str) or not REQUEST_ID_RE.match(rid):
        raise _Refused("bad_request_id", "requestID must be 1-20 characters without ':', '/' or '\\'", "@requestID")
    if rid in seen:
        raise _Refused("duplicate_request_id", "requestID is used twice in this batch", "@requestID")
    if section == "update" and not (isinstance(rec.get("sevis_id"), str) and SEVIS_ID_RE.match(rec["sevis_id"])):
        raise _Refused("missing_sevis_id", "an update needs the student's SEVIS ID (N + 10 digits)", "@sevisID")


def build_tree(
    batch: ClosedBatch, schema: StudentSchema
) -> tuple[etree._Element, list[Problem], list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """Build the document tree; records that cannot be rendered are left out with a :class:`Problem`.

    Returns (root, problems, rendered creates, rendered updates).
    """
    problems: list[Problem] = []
    root = etree.Element(ROOT)
    root.set("userID", batch.closed_by)
    header = etree.SubElement(root, "BatchHeader")
    etree.SubElement(header, "BatchID").text = batch.batch_id
    etree.SubElement(header, "OrgID").text = batch.org_id
    seen: set[str] = set()
    rendered: dict[str, list[Mapping[str, Any]]] = {"create": [], "update": []}
    for section, records, tag, model, build in (
        ("create", batch.creates, "CreateStudent", schema.create_student, _student_create),
        ("update", batch.updates, "UpdateStudent", schema.update_student, _student_update),
    ):
        if not records:
            continue
        container = etree.SubElement(root, tag)
        for rec in records:
            if len(rendered[section]) >= MAX_RECORDS_PER_SECTION:
                problems.append(
                    _record_problem(
                        rec,
                        "too_many_records",
                        f"a batch holds at most {MAX_RECORDS_PER_SECTION} {tag} records; "
                        "this record is re-queued for the next batch",
                        None,
                        at_fault=False,
                    )
                )
                continue
            try:
                _precheck(rec, section, seen)
                student = build(rec, batch, model)
            except _Refused as exc:
                problems.append(_record_problem(rec, exc.code, exc.message, exc.field))
                continue
            except (KeyError, TypeError, AttributeError) as exc:
                problems.append(
                    _record_problem(rec, "bad_record", f"malformed batch record ({type(exc).__name__})", None)
                )
                continue
            container.append(student)
            seen.add(rec["request_id"])
            rendered[section].append(rec)
        if not len(container):
            root.remove(container)
    return root, problems, rendered["create"], rendered["update"]


def serialize(root: etree._Element) -> bytes:
    """UTF-8 with an XML declaration, indented: the byte form of every document we write."""
    etree.indent(root, space="  ")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def render_batch(batch: ClosedBatch, schema: StudentSchema) -> bytes:
    """The batch document, without validation (see :func:`check_batch`). Pure and deterministic.

    Raises :class:`ValueError` listing the problems when any record cannot be rendered.
    """
    root, problems, _, _ = build_tree(batch, schema)
    if problems:
        raise ValueError("; ".join(f"{p.request_id}: {p.field}: {p.message}" for p in problems))
    return serialize(root)


_PATH_RE = re.compile(r"^/" + ROOT + r"/(CreateStudent|UpdateStudent)/Student(?:\[(\d+)\])?(/.*)?$")
_ATTR_RE = re.compile(r"attribute '([^']+)'")


def redact(message: str) -> str:
    """Drop the offending value from an lxml message: it may be a name or a birth date."""
    message = re.sub(r"The value '.*?' (?=is not|has a length|is not accepted)", "The value ", message, flags=re.S)
    message = re.sub(
        r"^(Element '[^']+'(?:, attribute '[^']+')?: )'.*?' (?=is not)", r"\1the value ", message, flags=re.S
    )
    message = re.sub(
        r"\[facet 'enumeration'\] The value is not an element of the set \{.*\}",
        "[facet 'enumeration'] The value is not one of the allowed codes",
        message,
        flags=re.S,
    )
    return message.strip()


def check_batch(batch: ClosedBatch, schema: StudentSchema) -> Checked:
    """Render and validate against the XSD; every problem is mapped to its record and field.

    Problems that concern no single record (header: BatchID, OrgID, userID) have
    ``request_id`` None: the whole batch is refused and all its records re-queued.
    """
    root, problems, creates, updates = build_tree(batch, schema)
    xml = serialize(root)
    # validate the bytes we will write (re-parsed, so line numbers and paths match the file)
    doc = etree.fromstring(xml, parser=etree.XMLParser(remove_blank_text=False, resolve_entities=False))
    by_section = {"CreateStudent": creates, "UpdateStudent": updates}
    seen: set[tuple[str | None, str | None, str]] = set()
    for err in schema.validate(doc):
        msg = redact(err.message)
        m = _PATH_RE.match(err.path or "")
        if m:
            recs = by_section[m.group(1)]
            idx = int(m.group(2) or 1) - 1
            rec = recs[idx] if 0 <= idx < len(recs) else {}
            fld = (m.group(3) or "").lstrip("/") or None
            am = _ATTR_RE.search(err.message)
            if am:
                fld = f"{fld}/@{am.group(1)}" if fld else f"@{am.group(1)}"
            if fld == "@userID":
                # the record's userID is the batch's closed_by: a header problem, not this record's
                key = (None, fld, msg)
                if key not in seen:
                    seen.add(key)
                    problems.append(Problem(code="invalid_batch", message=msg, field="Student/@userID"))
                continue
            key = (rec.get("request_id"), fld, msg)
            if key in seen:
                continue
            seen.add(key)
            problems.append(_record_problem(rec, "invalid_xml", msg, fld))
        else:
            fld = (err.path or "").replace(f"/{ROOT}", "", 1).lstrip("/") or None
            am = _ATTR_RE.search(err.message)
            if am:
                fld = f"{fld}/@{am.group(1)}" if fld else f"@{am.group(1)}"
            problems.append(Problem(code="invalid_batch", message=msg, field=fld))
    return Checked(xml=xml, problems=problems, rendered=[*creates, *updates])


# --------------------------------------------------------------------------- the inverse (tests, verify)


def _to_content(el: etree._Element, model: ElementModel) -> Any:
    children = [c for c in el if isinstance(c.tag, str)]
    attrs = {f"@{k}": v for k, v in el.attrib.items() if not k.startswith("{")}
    if not children and (model.simple or not model.order):
        text = el.text or ""
        if attrs:
            return {**attrs, **({"#text": text} if text else {})}
        return text
    out: dict[str, Any] = dict(attrs)
    for c in children:
        name = etree.QName(c).localname
        value = _to_content(c, model.children.get(name) or ElementModel(name=name))
        if name in out:
            if not isinstance(out[name], list):
                out[name] = [out[name]]
            out[name].append(value)
        else:
            out[name] = value
    return out


def batch_from_document(xml: bytes, schema: StudentSchema, at_ms: int = 0) -> ClosedBatch:
    """Parse a batch document back into a :class:`ClosedBatch` (for round-trip checks and audits)."""
    root = etree.fromstring(
        xml, parser=etree.XMLParser(remove_comments=True, remove_blank_text=True, resolve_entities=False)
    )
    batch_id = root.findtext("BatchHeader/BatchID") or ""
    org_id = root.findtext("BatchHeader/OrgID") or ""
    records: list[dict[str, Any]] = []
    for st in root.findall("CreateStudent/Student"):
        content = _to_content(st, schema.create_student)
        rid = content.pop("@requestID")
        content.pop("@userID", None)
        uda, udb = content.pop("UserDefinedA", None), content.pop("UserDefinedB", None)
        records.append(
            {
                "record_id": f"{udb or rid}:Create",
                "request_id": rid,
                "section": "create",
                "student_key": udb,
                "sevis_id": None,
                "kind": "Create",
                "payload": content,
                "user_defined_a": uda,
                "user_defined_b": udb,
            }
        )
    for st in root.findall("UpdateStudent/Student"):
        rid, sid = st.get("requestID"), st.get("sevisID")
        uda, udb = st.findtext("UserDefinedA"), st.findtext("UserDefinedB")
        node = next(c for c in st if isinstance(c.tag, str) and c.tag not in ("UserDefinedA", "UserDefinedB"))
        steps = [str(node.tag)]
        model = schema.update_student.children[steps[-1]]
        while model.choice_of_events:
            node = next(c for c in node if isinstance(c.tag, str) and c.tag not in ("UserDefinedA", "UserDefinedB"))
            steps.append(str(node.tag))
            model = model.children[steps[-1]]
        payload = _to_content(node, model)
        if not isinstance(payload, dict):
            payload = {} if payload == "" else {"#text": payload}
        kind = ".".join(steps)
        records.append(
            {
                "record_id": f"{sid}:{kind}",
                "request_id": rid,
                "section": "update",
                "student_key": udb,
                "sevis_id": sid,
                "kind": kind,
                "payload": payload,
                "user_defined_a": uda,
                "user_defined_b": udb,
            }
        )
    return ClosedBatch(
        org_id=org_id, batch_id=batch_id, closed_by=root.get("userID", ""), at_ms=at_ms, records=tuple(records)
    )
