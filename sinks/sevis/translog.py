"""Lenient parsing of SEVIS transaction logs (upload responses and downloaded results).

SEVIS logs have broken strict parsers before (a corrected address without a state
code), so this parser never validates against the XSD: it matches
elements by local name (any or no namespace), ignores elements it does not know,
and treats missing optional parts as absent. It only refuses input that is not
well-formed XML or has no ``TransactionLog`` root, because publishing results from
a truncated file would be worse than downloading it again.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from lxml import etree

from sevisflow.core.errors import TransientError


class TranslogError(TransientError):
    """The transaction log is not usable (not XML, wrong root): download it again later."""


class LimitError(TranslogError):
    """An answer or results zip from SEVIS is larger than a configured cap (``[sevis] max_*``).

    Nothing of it is applied; the batch stays where it is and is downloaded again after
    a back-off, so raising the cap and restarting resolves it."""


class MismatchError(TranslogError):
    """A transaction log names another BatchID/OrgID (or other requests) than the batch's manifest.

    No result of it is published; the batch stays in ``uploaded/`` for the operator."""


@dataclass(frozen=True)
class Disposition:
    """``Upload`` / ``Process`` / ``Download`` of ``BatchDetail``: a result code and when."""

    code: str | None
    at: str | None = None


@dataclass(frozen=True)
class RecordResult:
    """One ``Process/Record``: the outcome of one Student of the batch."""

    request_id: str
    ok: bool
    sevis_id: str | None = None
    user_id: str | None = None
    user_defined_a: str | None = None
    user_defined_b: str | None = None
    processed_at: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    dependents: tuple[dict[str, str | None], ...] = ()
    """``Record/Dependent``: ``dependent_sevis_id`` and the echoed ``user_defined_a``/``user_defined_b``."""
    sites: tuple[dict[str, str | None], ...] = ()
    """``Record/SiteOfActivity`` (exchange visitors): ``site_id`` (the SiteId SEVIS assigned) and ``site_name``."""


@dataclass(frozen=True)
class TransactionLog:
    batch_id: str | None
    org_id: str | None
    status: bool | None = None
    system: str | None = None
    upload: Disposition | None = None
    upload_file_name: str | None = None
    process: Disposition | None = None
    download: Disposition | None = None
    counts: dict[str, int] = field(default_factory=dict)
    records: tuple[RecordResult, ...] = ()

    @property
    def upload_code(self) -> str | None:
        return self.upload.code if self.upload else None

    @property
    def process_code(self) -> str | None:
        return self.process.code if self.process else None

    @property
    def download_code(self) -> str | None:
        return self.download.code if self.download else None


def _local(tag: object) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def _text_of(el: etree._Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    t = el.text.strip()
    return t or None


def _child(el: etree._Element | None, name: str) -> etree._Element | None:
    if el is None:
        return None
    return next((c for c in el if isinstance(c.tag, str) and _local(c.tag) == name), None)


def _text(el: etree._Element | None, name: str) -> str | None:
    return _text_of(_child(el, name))


def _attr(el: etree._Element | None, name: str) -> str | None:
    if el is None:
        return None
    for k, v in el.attrib.items():
        if etree.QName(k).localname == name:
            v = v.strip()
            return v or None
    return None


def _bool(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.strip().lower() in ("true", "1", "y", "yes")


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _disposition(el: etree._Element | None) -> Disposition | None:
    if el is None:
        return None
    return Disposition(code=_attr(el, "resultCode"), at=_attr(el, "dateTimeStamp"))


def _record(rec: etree._Element) -> RecordResult | None:
    rid = _attr(rec, "requestID")
    if not rid:
        return None
    result = _child(rec, "Result")
    ok = _bool(_attr(result, "status"))
    code = _text(result, "ErrorCode")
    deps = tuple(
        {
            "dependent_sevis_id": _attr(d, "dependentSevisID"),
            "user_defined_a": _text(d, "UserDefinedA"),
            "user_defined_b": _text(d, "UserDefinedB"),
        }
        for d in rec
        if isinstance(d.tag, str) and _local(d.tag) == "Dependent"
    )
    sites = tuple(
        {"site_id": _text(s, "SiteId"), "site_name": _text(s, "SiteName")}
        for s in rec
        if isinstance(s.tag, str) and _local(s.tag) == "SiteOfActivity"
    )
    return RecordResult(
        request_id=rid,
        ok=bool(ok) if ok is not None else code is None and result is not None,
        sevis_id=_attr(rec, "sevisID"),
        user_id=_attr(rec, "userID"),
        user_defined_a=_text(rec, "UserDefinedA"),
        user_defined_b=_text(rec, "UserDefinedB"),
        processed_at=_text(rec, "ProcessDate"),
        error_code=code,
        error_message=_text(result, "ErrorMessage"),
        dependents=deps,
        sites=sites,
    )


def parse_translog(data: bytes | BinaryIO) -> TransactionLog:
    """Parse a transaction log leniently. Raises :class:`TranslogError` when it is not one.

    ``data`` is the log's bytes or an open binary file. Parsing is incremental
    (``iterparse``): each ``Record`` is turned into a :class:`RecordResult` and its
    element freed at once, so memory grows with the number of results, not with the
    document's tree. No entities are resolved, no DTD or network is loaded, and
    libxml2's limits stay on (``huge_tree`` off): no XXE, no entity expansion.
    """
    source: BinaryIO = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    events = etree.iterparse(
        source,
        events=("start", "end"),
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    path: list[str] = []
    root_seen = False
    batch_id = org_id = system = upload_file = None
    status: bool | None = None
    upload = process = download = None
    counts: dict[str, int] = {}
    records: list[RecordResult] = []
    try:
        for event, el in events:
            if not isinstance(el.tag, str):
                continue
            name = _local(el.tag)
            if event == "start":
                if not root_seen:
                    root_seen = True
                    if name != "TransactionLog":
                        raise TranslogError(f"expected a TransactionLog document, got <{name}>")
                path.append(name)
                continue
            # end of an element: its children are complete
            where = tuple(path)
            path.pop()
            if where == ("TransactionLog", "BatchHeader", "BatchID"):
                batch_id = _text_of(el)
            elif where == ("TransactionLog", "BatchHeader", "OrgID"):
                org_id = _text_of(el)
            elif where == ("TransactionLog", "BatchDetail", "Upload"):
                if upload is None:
                    upload, upload_file = _disposition(el), _text(el, "FileName")
            elif where == ("TransactionLog", "BatchDetail", "Download"):
                if download is None:
                    download = _disposition(el)
            elif where == ("TransactionLog", "BatchDetail", "Process", "RecordCount"):
                for cname in ("Success", "Failure", "Total"):
                    n = _int(_text(el, cname))
                    if n is not None:
                        counts[cname.lower()] = n
            elif where == ("TransactionLog", "BatchDetail", "Process", "Record"):
                r = _record(el)
                if r is not None:
                    records.append(r)
            elif where == ("TransactionLog", "BatchDetail", "Process"):
                if process is None:
                    process = _disposition(el)
            elif where == ("TransactionLog", "BatchDetail"):
                status, system = _bool(_attr(el, "status")), _attr(el, "system")
            if len(where) <= 3 or (len(where) == 4 and where[2] == "Process"):
                # read: free it and its already-read elder siblings, so the tree never holds more
                # than one Record (or one header part) at a time
                el.clear(keep_tail=False)
                parent = el.getparent()
                while parent is not None and el.getprevious() is not None:
                    del parent[0]
    except etree.XMLSyntaxError as exc:
        raise TranslogError(f"transaction log is not well-formed XML ({exc.msg})") from exc
    if not root_seen:
        raise TranslogError("transaction log is empty")
    return TransactionLog(
        batch_id=batch_id,
        org_id=org_id,
        status=status,
        system=system,
        upload=upload,
        upload_file_name=upload_file,
        process=process,
        download=download,
        counts=counts,
        records=tuple(records),
    )


def _take(free: list[Mapping[str, Any]], field: str, value: str | None) -> Mapping[str, Any] | None:
    found = next((e for e in free if value and e.get(field) == value), None)
    if found is not None:
        free.remove(found)
    return found


def assign_new_ids(
    expected: Mapping[str, Any] | None, result: RecordResult
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The dependent SEVIS IDs and SiteIds of one record, each with the SIS key it belongs to (``sis_key``).

    ``expected`` is the manifest's ``new_ids`` of the record (the dependents and sites it asked
    SEVIS to create, with their SIS keys). A dependent is matched by its echoed ``UserDefinedB``, a
    site by its ``SiteName``; when SEVIS left those out and returned exactly as many as were asked
    for, by position. An id that matches nothing is kept with ``sis_key`` None (shown, never applied).
    """
    exp = expected or {}
    deps_expected = [e for e in exp.get("dependents") or [] if isinstance(e, Mapping)]
    sites_expected = [e for e in exp.get("sites") or [] if isinstance(e, Mapping)]
    deps, free = [], list(deps_expected)
    for i, d in enumerate(result.dependents):
        match = _take(free, "user_defined_b", d.get("user_defined_b"))
        if match is None and len(result.dependents) == len(deps_expected) and deps_expected[i] in free:
            match = deps_expected[i]
            free.remove(match)
        deps.append({**d, "sis_key": match.get("sis_key") if match else None})
    sites, free = [], list(sites_expected)
    for i, site in enumerate(result.sites):
        match = _take(free, "site_name", site.get("site_name"))
        if match is None and len(result.sites) == len(sites_expected) and sites_expected[i] in free:
            match = sites_expected[i]
            free.remove(match)
        sites.append({**site, "sis_key": match.get("sis_key") if match else None})
    return deps, sites
