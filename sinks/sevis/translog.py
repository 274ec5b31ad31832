"""Lenient parsing of SEVIS transaction logs (upload responses and downloaded results).

SEVIS logs have broken strict parsers before (a corrected address without a state
code, DOMAIN §11), so this parser never validates against the XSD: it matches
elements by local name (any or no namespace), ignores elements it does not know,
and treats missing optional parts as absent. It only refuses input that is not
well-formed XML or has no ``TransactionLog`` root, because publishing results from
a truncated file would be worse than downloading it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from lxml import etree

from sevisflow.errors import TransientError


class TranslogError(TransientError):
    """The transaction log is not usable (not XML, wrong root): download it again later."""


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


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def _children(el: etree._Element | None, name: str) -> Iterator[etree._Element]:
    if el is None:
        return iter(())
    return (c for c in el if isinstance(c.tag, str) and _local(c) == name)


def _child(el: etree._Element | None, name: str) -> etree._Element | None:
    return next(_children(el, name), None)


def _text(el: etree._Element | None, name: str) -> str | None:
    c = _child(el, name)
    if c is None or c.text is None:
        return None
    t = c.text.strip()
    return t or None


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


def parse_translog(data: bytes) -> TransactionLog:
    """Parse a transaction log leniently. Raises :class:`TranslogError` when it is not one."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True, huge_tree=False)
    try:
        root = etree.fromstring(data, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise TranslogError(f"transaction log is not well-formed XML ({exc.msg})") from exc
    if _local(root) != "TransactionLog":
        raise TranslogError(f"expected a TransactionLog document, got <{_local(root)}>")
    header = _child(root, "BatchHeader")
    detail = _child(root, "BatchDetail")
    upload = _child(detail, "Upload")
    process = _child(detail, "Process")
    counts: dict[str, int] = {}
    rc = _child(process, "RecordCount")
    for name in ("Success", "Failure", "Total"):
        n = _int(_text(rc, name))
        if n is not None:
            counts[name.lower()] = n
    records = []
    for rec in _children(process, "Record"):
        rid = _attr(rec, "requestID")
        if not rid:
            continue
        result = _child(rec, "Result")
        ok = _bool(_attr(result, "status"))
        code = _text(result, "ErrorCode")
        deps = tuple({"dependent_sevis_id": _attr(d, "dependentSevisID"),
                      "user_defined_a": _text(d, "UserDefinedA"), "user_defined_b": _text(d, "UserDefinedB")}
                     for d in _children(rec, "Dependent"))
        records.append(RecordResult(
            request_id=rid,
            ok=bool(ok) if ok is not None else code is None and result is not None,
            sevis_id=_attr(rec, "sevisID"), user_id=_attr(rec, "userID"),
            user_defined_a=_text(rec, "UserDefinedA"), user_defined_b=_text(rec, "UserDefinedB"),
            processed_at=_text(rec, "ProcessDate"), error_code=code, error_message=_text(result, "ErrorMessage"),
            dependents=deps,
        ))
    return TransactionLog(
        batch_id=_text(header, "BatchID"), org_id=_text(header, "OrgID"),
        status=_bool(_attr(detail, "status")), system=_attr(detail, "system"),
        upload=_disposition(upload), upload_file_name=_text(upload, "FileName"),
        process=_disposition(process), download=_disposition(_child(detail, "Download")),
        counts=counts, records=tuple(records),
    )
