"""Format: a closed EV batch → SEVISBatchCreateUpdateEV XML bytes (pure, deterministic).

The exchange-visitor counterpart of :mod:`sevisflow.sinks.xml.render`, with the same rules:
children in XSD order whatever the payload's key order, attributes in XSD order, nothing from
a clock, every XSD problem mapped to its record and field. A batch's records are
SevisEvents of one exchange program (``org_id`` = its program number); their kind is
``EV.`` + the element path: ``EV.Create`` renders as ``CreateEV/ExchangeVisitor``,
``EV.A.B`` as ``UpdateEV/ExchangeVisitor/A/B``.

What differs from the student document:

* ``xsi:type``: a site of activity's payload names its concrete type under ``@xsi:type``
  (``SOA``/``EXEMPT`` in a create, ``AddSOA``… in ``SiteOfActivity/Add``); the children are
  ordered by that type. The root declares ``xmlns:xsi`` and no default namespace (a default
  namespace would stop the unprefixed type names from resolving).
* ``@sisKey``: a dependent or a site SEVIS knows by its own id carries the SIS key until that
  id is known; the key is never written as an attribute. A created dependent's key goes into
  its ``UserDefinedB`` (when it fits, ≤14 characters and none is given), which SEVIS echoes
  with the dependent's new SEVIS ID in the transaction log.
* Keys of an event's payload that belong to the event *group* rather than the event
  (``UserDefinedA``/``UserDefinedB`` of ``Dependent``) are written on the group element.
* The OrgID must be a program number (``P-[1-4]-NNNNN`` / ``G-[1-7]-NNNNN``): the XSD also
  accepts a school code there, so this is checked here (a header problem).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from lxml import etree

from sevisflow.sinks.xml.render import (
    _ATTR_RE,
    MAX_RECORDS_PER_SECTION,
    REQUEST_ID_RE,
    SEVIS_ID_RE,
    Checked,
    ClosedBatch,
    Problem,
    _record_problem,
    _Refused,
    _set_attr,
    _set_text,
    redact,
    serialize,
)
from sevisflow.sinks.xml.xsd import ElementModel
from sevisflow.sinks.xml.xsd_ev import EV_ROOT, XSI, EVSchema

EV_PREFIX = "EV."
EV_CREATE = "EV.Create"
PROGRAM_NUMBER_RE = re.compile(r"^(P-[1-4]-\d{5}|G-[1-7]-\d{5})$")
MAX_DEPENDENTS = 25
MAX_SITES = 25
SIS_KEY = "@sisKey"
XSI_TYPE = "@xsi:type"
_GROUP_KEYS = ("UserDefinedA", "UserDefinedB")


def is_ev_record(rec: Mapping[str, Any]) -> bool:
    """An exchange-visitor record (kind ``EV.…``)."""
    return str(rec.get("kind") or "").startswith(EV_PREFIX)


def is_ev_create(rec: Mapping[str, Any]) -> bool:
    return rec.get("kind") == EV_CREATE


def _fill(el: etree._Element, content: Mapping[str, Any], model: ElementModel, path: str, schema: EVSchema) -> None:
    """Put ``content`` into ``el`` (xsi:type, attributes, text, children in XSD order)."""
    model = _typed(el, content, model, path, schema)
    if SIS_KEY in content and "UserDefinedB" in model.order and content.get("UserDefinedB") is None:
        key = content[SIS_KEY]
        if isinstance(key, str) and 0 < len(key) <= 14:
            content = {**content, "UserDefinedB": key}
    attrs = sorted(
        (k[1:] for k in content if k.startswith("@") and k not in (SIS_KEY, XSI_TYPE)),
        key=lambda a: (model.attributes.index(a) if a in model.attributes else len(model.attributes), a),
    )
    for name in attrs:
        if content["@" + name] is None:
            continue
        if name not in model.attributes:
            raise _Refused("unknown_attribute", f"the XSD has no attribute {name} on {model.name}", f"{path}/@{name}")
        _set_attr(el, name, content["@" + name], path)
    if content.get("#text") is not None:
        _set_text(el, content["#text"], path)
    keys = [k for k in content if not k.startswith("@") and k != "#text"]
    for key in keys:
        if key not in model.order:
            raise _Refused("unknown_element", f"the XSD has no element {key} under {model.name}", f"{path}/{key}")
    for key in sorted(keys, key=lambda k: model.order[k]):
        _append(el, key, content[key], model.children[key], f"{path}/{key}", schema)


def _typed(
    el: etree._Element, content: Mapping[str, Any], model: ElementModel, path: str, schema: EVSchema
) -> ElementModel:
    """The model to fill ``el`` with: the concrete ``xsi:type`` for an abstract element (attribute set)."""
    base = schema.abstract_base(model)
    type_name = content.get(XSI_TYPE)
    if base is None:
        if type_name is not None:
            raise _Refused(
                "unexpected_xsi_type", f"{model.name} is not an abstract element: drop @xsi:type", f"{path}/@xsi:type"
            )
        return model
    allowed = ", ".join(schema.subtypes.get(base, []))
    if not isinstance(type_name, str) or not type_name:
        raise _Refused("missing_xsi_type", f"{model.name} needs @xsi:type, one of: {allowed}", f"{path}/@xsi:type")
    concrete = schema.concrete(model, type_name)
    if concrete is None:
        raise _Refused("unknown_xsi_type", f"@xsi:type of {model.name} must be one of: {allowed}", f"{path}/@xsi:type")
    el.set(f"{{{XSI}}}type", type_name)
    return concrete


def _append(parent: etree._Element, name: str, value: Any, model: ElementModel, path: str, schema: EVSchema) -> None:
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _append(parent, name, item, model, path, schema)
        return
    el = etree.SubElement(parent, name)
    if isinstance(value, Mapping):
        _fill(el, value, model, path, schema)
    elif schema.abstract_base(model) is not None or (not model.simple and model.order):
        raise _Refused("not_an_object", f"{name} is a complex element: give an object, not a value", path)
    else:
        _set_text(el, value, path)


def _payload(rec: Mapping[str, Any]) -> dict[str, Any]:
    payload = rec.get("payload") or {}
    if not isinstance(payload, Mapping):
        raise _Refused("bad_payload", "payload is not an object", None)
    return dict(payload)


def _count(content: Mapping[str, Any], group: str, item: str) -> int:
    inner = content.get(group)
    items = inner.get(item) if isinstance(inner, Mapping) else None
    return len(items) if isinstance(items, (list, tuple)) else (1 if items is not None else 0)


def _ev_create(rec: Mapping[str, Any], batch: ClosedBatch, schema: EVSchema) -> etree._Element:
    content = _payload(rec)
    for attr in ("@requestID", "@userID", SIS_KEY):
        content.pop(attr, None)
    content.setdefault("@printForm", "true")  # a new EV needs its DS-2019
    if _count(content, "CreateDependent", "Dependent") > MAX_DEPENDENTS:
        raise _Refused(
            "too_many_dependents",
            f"a CreateEV holds at most {MAX_DEPENDENTS} dependents: send the others later with Dependent/Add",
            "CreateDependent/Dependent",
        )
    if _count(content, "AddSiteOfActivity", "SiteOfActivity") > MAX_SITES:
        raise _Refused(
            "too_many_sites",
            f"a CreateEV holds at most {MAX_SITES} sites of activity: add the others later with SiteOfActivity/Add",
            "AddSiteOfActivity/SiteOfActivity",
        )
    for attr, key in (("user_defined_a", "UserDefinedA"), ("user_defined_b", "UserDefinedB")):
        if rec.get(attr) and key not in content:
            content[key] = rec[attr]
    el = etree.Element("ExchangeVisitor")
    el.set("requestID", str(rec["request_id"]))
    el.set("userID", batch.closed_by)
    _fill(el, content, schema.create_ev, "", schema)
    return el


def event_path(kind: str, model: ElementModel) -> list[str]:
    """The element steps of an update kind (``EV.Program.Extension`` → Program, Extension), checked."""
    steps = kind[len(EV_PREFIX) :].split(".") if kind.startswith(EV_PREFIX) else []
    m = model
    for step in steps:
        nxt = m.children.get(step) if step not in _GROUP_KEYS else None
        if nxt is None or (nxt.simple and not m.choice_of_events):
            steps = []
            break
        m = nxt
    if not steps:
        raise _Refused("unknown_kind", f"kind {kind!r} is not an UpdateEV event in this XSD", None)
    if m.choice_of_events:
        raise _Refused(
            "unknown_kind",
            f"kind {kind!r} names a group of events, not one event "
            f"(one of: {', '.join(kind + '.' + c for c in m.order if c not in _GROUP_KEYS)})",
            None,
        )
    return steps


def _ev_update(rec: Mapping[str, Any], batch: ClosedBatch, schema: EVSchema) -> etree._Element:
    kind = str(rec.get("kind") or "")
    steps = event_path(kind, schema.update_ev)
    payload = _payload(rec)
    el = etree.Element("ExchangeVisitor")
    el.set("sevisID", str(rec.get("sevis_id")))
    el.set("requestID", str(rec["request_id"]))
    el.set("userID", batch.closed_by)
    for attr, key in (("user_defined_a", "UserDefinedA"), ("user_defined_b", "UserDefinedB")):
        if rec.get(attr):
            _set_text(etree.SubElement(el, key), rec[attr], key)
    node, m = el, schema.update_ev
    for i, step in enumerate(steps):
        m = m.children[step]
        node = etree.SubElement(node, step)
        if i < len(steps) - 1:
            _group_keys(node, m, payload, steps[i + 1], "/".join(steps[: i + 1]))
    _fill(node, payload, m, "/".join(steps), schema)
    return el


def _group_keys(node: etree._Element, group: ElementModel, payload: dict[str, Any], event: str, path: str) -> None:
    """Move the payload's keys that belong to the group element (``Dependent/UserDefinedB``) onto it.

    A dependent added with ``Dependent/Add`` gets its SIS key as ``UserDefinedB`` (echoed with its SEVIS ID)."""
    leaf = group.children[event]
    values = {k: payload.pop(k) for k in _GROUP_KEYS if k in group.order and k not in leaf.order and k in payload}
    key = payload.get(SIS_KEY)
    if (
        event == "Add"
        and "UserDefinedB" in group.order
        and values.get("UserDefinedB") is None
        and isinstance(key, str)
        and 0 < len(key) <= 14
    ):
        values["UserDefinedB"] = key
    for k in sorted(values, key=lambda k: group.order[k]):
        if values[k] is not None:
            _set_text(etree.SubElement(node, k), values[k], f"{path}/{k}")


def _precheck(rec: Mapping[str, Any], section: str, seen: set[str]) -> None:
    rid = rec.get("request_id")
    if not isinstance(rid, str) or not REQUEST_ID_RE.match(rid):
        raise _Refused("bad_request_id", "requestID must be 1-20 characters without ':', '/' or '\\'", "@requestID")
    if rid in seen:
        raise _Refused("duplicate_request_id", "requestID is used twice in this batch", "@requestID")
    if not is_ev_record(rec):
        raise _Refused(
            "not_ev_record",
            f"kind {rec.get('kind')!r} is not an exchange-visitor event: an EV batch holds only EV.* records",
            None,
        )
    payload = rec.get("payload")
    kind = str(rec.get("kind"))
    if (
        kind.startswith("EV.Dependent.")
        and kind != "EV.Dependent.Add"
        and isinstance(payload, Mapping)
        and not payload.get("@dependentSevisID")
    ):
        raise _Refused(
            "missing_dependent_sevis_id",
            "a dependent event needs the dependent's SEVIS ID, which SEVIS "
            "returns for the create or the Dependent/Add that added the dependent",
            "@dependentSevisID",
        )
    if section == "update" and not (isinstance(rec.get("sevis_id"), str) and SEVIS_ID_RE.match(rec["sevis_id"])):
        raise _Refused(
            "missing_sevis_id", "an update needs the exchange visitor's SEVIS ID (N + 10 digits)", "@sevisID"
        )


def _header(batch: ClosedBatch) -> list[Problem]:
    if PROGRAM_NUMBER_RE.match(batch.org_id or ""):
        return []
    return [
        Problem(
            code="invalid_batch",
            field="BatchHeader/OrgID",
            message="an exchange-visitor batch's OrgID must be the program number (P-1-12345 or G-1-12345 "
            "form), not a school code: check program_number in [[exchange_programs]]",
        )
    ]


def build_tree(
    batch: ClosedBatch, schema: EVSchema
) -> tuple[etree._Element, list[Problem], list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """The EV document tree; records that cannot be rendered are left out with a :class:`Problem`."""
    problems = _header(batch)
    root = etree.Element(EV_ROOT, nsmap={"xsi": XSI})
    root.set("userID", batch.closed_by)
    header = etree.SubElement(root, "BatchHeader")
    etree.SubElement(header, "BatchID").text = batch.batch_id
    etree.SubElement(header, "OrgID").text = batch.org_id
    seen: set[str] = set()
    creates = [r for r in batch.records if is_ev_create(r) or r.get("section") == "create"]
    updates = [r for r in batch.records if not (is_ev_create(r) or r.get("section") == "create")]
    rendered: dict[str, list[Mapping[str, Any]]] = {"create": [], "update": []}
    for section, records, tag, build in (
        ("create", creates, "CreateEV", _ev_create),
        ("update", updates, "UpdateEV", _ev_update),
    ):
        container = etree.SubElement(root, tag)
        for rec in records:
            if len(rendered[section]) >= MAX_RECORDS_PER_SECTION:
                problems.append(
                    _record_problem(
                        rec,
                        "too_many_records",
                        f"an EV batch holds at most {MAX_RECORDS_PER_SECTION} {tag} records; "
                        "this record is re-queued for the next batch",
                        None,
                        at_fault=False,
                    )
                )
                continue
            try:
                _precheck(rec, section, seen)
                container.append(build(rec, batch, schema))
            except _Refused as exc:
                problems.append(_record_problem(rec, exc.code, exc.message, exc.field))
                continue
            except (KeyError, TypeError, AttributeError) as exc:
                problems.append(
                    _record_problem(rec, "bad_record", f"malformed batch record ({type(exc).__name__})", None)
                )
                continue
            seen.add(rec["request_id"])
            rendered[section].append(rec)
        if not len(container):
            root.remove(container)
    return root, problems, rendered["create"], rendered["update"]


def render_ev_batch(batch: ClosedBatch, schema: EVSchema) -> bytes:
    """The EV batch document, without validation (see :func:`check_ev_batch`). Pure and deterministic.

    Raises :class:`ValueError` listing the problems when any record cannot be rendered."""
    root, problems, _, _ = build_tree(batch, schema)
    if problems:
        raise ValueError("; ".join(f"{p.request_id}: {p.field}: {p.message}" for p in problems))
    return serialize(root)


_PATH_RE = re.compile(r"^/" + EV_ROOT + r"/(CreateEV|UpdateEV)/ExchangeVisitor(?:\[(\d+)\])?(/.*)?$")


def check_ev_batch(batch: ClosedBatch, schema: EVSchema) -> Checked:
    """Render and validate against the EV XSD; every problem is mapped to its record and field.

    Problems of no single record (BatchID, OrgID, the RO's userID) have ``request_id`` None."""
    root, problems, creates, updates = build_tree(batch, schema)
    xml = serialize(root)
    doc = etree.fromstring(xml, parser=etree.XMLParser(remove_blank_text=False, resolve_entities=False))
    by_section = {"CreateEV": creates, "UpdateEV": updates}
    seen: set[tuple[str | None, str | None, str]] = set()
    for err in schema.validate(doc):
        msg = redact(err.message)
        m = _PATH_RE.match(err.path or "")
        am = _ATTR_RE.search(err.message)
        if not m:
            fld = (err.path or "").replace(f"/{EV_ROOT}", "", 1).lstrip("/") or None
            if am:
                fld = f"{fld}/@{am.group(1)}" if fld else f"@{am.group(1)}"
            problems.append(Problem(code="invalid_batch", message=msg, field=fld))
            continue
        recs = by_section[m.group(1)]
        idx = int(m.group(2) or 1) - 1
        rec = recs[idx] if 0 <= idx < len(recs) else {}
        fld = (m.group(3) or "").lstrip("/") or None
        if am:
            fld = f"{fld}/@{am.group(1)}" if fld else f"@{am.group(1)}"
        header = fld == "@userID"  # the record's userID is the batch's RO/ARO: a header problem
        key = (None if header else rec.get("request_id"), fld, msg)
        if key in seen:
            continue
        seen.add(key)
        problems.append(
            Problem(code="invalid_batch", message=msg, field="ExchangeVisitor/@userID")
            if header
            else _record_problem(rec, "invalid_xml", msg, fld)
        )
    return Checked(xml=xml, problems=problems, rendered=[*creates, *updates])


# --------------------------------------------------------------------------- which document a batch is


def mixed_problem(batch: ClosedBatch) -> Problem | None:
    """F/M and EV records never share a document: a batch holding both is refused as a whole."""
    ev = sum(1 for r in batch.records if is_ev_record(r))
    if not ev or ev == len(batch.records):
        return None
    return Problem(
        code="mixed_batch",
        field="BatchHeader/OrgID",
        message=f"the batch holds {ev} exchange-visitor (EV.*) and {len(batch.records) - ev} F/M records; "
        "SEVIS takes them only in separate documents: EV events must carry the exchange "
        "program number as org_id (configure it in [[exchange_programs]]) and F/M events the "
        "school code, so the batcher keeps them in separate batches",
    )


def is_ev_batch(batch: ClosedBatch) -> bool:
    """An EV document: its records are EV.* (a batch with no record at all: its OrgID is a program number)."""
    if batch.records:
        return all(is_ev_record(r) for r in batch.records)
    return bool(PROGRAM_NUMBER_RE.match(batch.org_id or ""))


# --------------------------------------------------------------------------- ids SEVIS will assign


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [] if value is None else [value]


def _dep_ref(dep: Any) -> dict[str, Any] | None:
    if not isinstance(dep, Mapping) or not isinstance(dep.get(SIS_KEY), str):
        return None
    key = dep[SIS_KEY]
    udb = dep.get("UserDefinedB") or (key if 0 < len(key) <= 14 else None)
    return {"sis_key": key, "user_defined_b": udb}


def _site_ref(site: Any) -> dict[str, Any] | None:
    if not isinstance(site, Mapping) or not isinstance(site.get(SIS_KEY), str):
        return None
    return {"sis_key": site[SIS_KEY], "site_name": site.get("SiteName")}


def new_ids(rec: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]] | None:
    """The dependents and sites ``rec`` asks SEVIS to create, with their SIS keys (for the manifest).

    SEVIS answers their ids in the transaction log — a dependent with its ``UserDefinedB``
    echoed, a site with its ``SiteName`` — and the SEVIS sink matches them back to the SIS keys
    with this list. None when the record creates neither."""
    payload = rec.get("payload")
    if not isinstance(payload, Mapping):
        return None
    kind = rec.get("kind")
    deps: list[Any] = []
    sites: list[Any] = []
    if kind == EV_CREATE:
        group = payload.get("CreateDependent")
        deps = _listed(group.get("Dependent")) if isinstance(group, Mapping) else []
        group = payload.get("AddSiteOfActivity")
        sites = _listed(group.get("SiteOfActivity")) if isinstance(group, Mapping) else []
    elif kind == "EV.Dependent.Add":
        deps = [dict(payload, UserDefinedB=payload.get("UserDefinedB"))]
    elif kind == "EV.SiteOfActivity.Add":
        sites = [payload]
    out = {"dependents": [r for r in map(_dep_ref, deps) if r], "sites": [r for r in map(_site_ref, sites) if r]}
    return out if out["dependents"] or out["sites"] else None
