"""What a SEVIS code means, in words a DSO reads: one place for every label the CLI shows.

Where each label comes from (the CLI never invents one; a code without a source is shown as
the code with "no label source"):

* **CIP majors/minors** — the ``xs:documentation`` of every ``xs:enumeration`` of
  ``ProgSubjectCode*Type`` in the official ``SEVISTable.xsd``, read at run time from
  ``[sevis] xsd_dir`` (the XSDs are the school's copy from ICE and are never committed). They are
  the CIP 2020 titles SEVIS uses. No other SEVIS code list in the XSDs carries per-value labels.
* **Countries** — SEVIS uses its own (FIPS 10-4 style) codes: ``CH`` is China, ``CN`` Comoros.
  The name is the ISO 3166-1 name (the ``pycountry`` package, from the Debian iso-codes data) of
  the ISO code that ``processors/normalize/codes.py`` maps to that SEVIS code; that table is
  checked against ``BirthCntryCodeType`` of SEVISTable.xsd by tests/unit/test_mapping_codes.py.
  A SEVIS code with no ISO counterpart there has no label source.
* **Education levels** and **student termination reasons** — the NIEM immigration domain
  (public US federal data model), ``im:StudentEducationLevelCodeSimpleType`` and
  ``im:StudentTerminationCodeSimpleType``, https://niem.github.io/model/4.2/im/ — the same codes
  as SEVISTable.xsd ``EduLevelCodeType`` / ``StudentTerminationReasonType``.
* **Visa types, dependant relationship, gender, full/part time** — the type annotations of
  SEVISTable.xsd (``StudentVisaCodeType`` "Visa Code F1, M1", ``DependentFMVisaType`` "Visa Code
  F-2, M-2", ``DependentCodeType`` "Dependent Type (Spouse or child)", ``GenderCodeType`` "Male,
  Female or Unknown", ``EmploymentTimeType`` "Full-time/Part-time Indicator"), which list the
  meanings in the order of the values.
* **Student cancel reasons** — the SEVIS RTI drop-down as published in Terra Dotta's public
  knowledge base ("Canceling F-1 Student Records",
  https://support.terradotta.com/hc/en-us/articles/360051139094).
* **Reprint reasons, reduced-course-load reasons, dependant termination/cancel reasons, issue
  reasons** — no public label source was found: the code is shown with "no label source".
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

NO_SOURCE = "no label source"

#: NIEM im:StudentEducationLevelCodeSimpleType
EDU_LEVEL = {
    "01": "primary school",
    "02": "secondary school",
    "03": "associate",
    "04": "bachelor's",
    "05": "master's",
    "06": "doctorate",
    "07": "language training",
    "08": "high school",
    "09": "flight training",
    "10": "other vocational school",
    "11": "other",
}
#: NIEM im:StudentTerminationCodeSimpleType (SEVISTable.xsd StudentTerminationReasonType accepts a subset)
TERMINATION_REASON = {
    "01": "unauthorized withdrawal",
    "02": "death",
    "03": "unauthorized employment",
    "04": "unauthorized drop below full course",
    "05": "authorized drop below full course time exceeded",
    "06": "change of nonimmigrant classification",
    "07": "change of nonimmigrant classification denied",
    "08": "expulsion",
    "09": "suspension",
    "10": "absent from country for five months",
    "11": "failure to enroll",
    "12": "costs exceed resources",
    "13": "transfer student no show",
    "14": "denied transfer",
    "15": "extension denied",
    "16": "otherwise failing to maintain status",
    "17": "violation of change of status requirements",
    "18": "change of status denied",
    "19": "change of status withdrawn",
    "20": "change of status approved",
    "21": "transfer withdrawn",
    "22": "no show - manual termination",
    "23": "authorized early withdrawal",
    "24": "no show - system termination",
    "25": "school withdrawn",
}
#: SEVISTable.xsd type annotations (values in the order the annotation names them)
VISA_TYPE = {"01": "F-1", "02": "M-1", "04": "F-2", "05": "M-2"}
RELATIONSHIP = {"01": "spouse", "02": "child"}
GENDER = {"M": "male", "F": "female", "U": "unknown"}
EMPLOYMENT_TIME = {"01": "full time", "02": "part time"}
#: Terra Dotta knowledge base, "Canceling F-1 Student Records" (the SEVIS drop-down)
CANCEL_REASON = {
    "01": "student not attending",
    "02": "visa issued for different SEVIS ID",
    "03": "student registered under different SEVIS ID",
    "04": "student arrived under different SEVIS ID",
    "05": "record created in error",
    "06": "offer withdrawn",
}

#: code kinds whose labels are tables above; cip/country are looked up separately
TABLES: dict[str, dict[str, str]] = {
    "edu_level": EDU_LEVEL,
    "termination_reason": TERMINATION_REASON,
    "visa_type": VISA_TYPE,
    "relationship": RELATIONSHIP,
    "gender": GENDER,
    "employment_time": EMPLOYMENT_TIME,
    "cancel_reason": CANCEL_REASON,
}
#: code kinds shown as codes, for want of a public label source
UNLABELLED = ("reprint_reason", "rcl_reason", "dependent_termination_reason", "dependent_cancel_reason", "issue_reason")

_XS = "{http://www.w3.org/2001/XMLSchema}"
_lock = threading.Lock()


@lru_cache(maxsize=4)
def _cip_titles(xsd_dir: str) -> dict[str, str]:
    """CIP code → title from SEVISTable.xsd in ``xsd_dir`` ({} when the file is not there)."""
    from lxml import etree

    path = Path(xsd_dir) / "SEVISTable.xsd"
    if not path.is_file():
        return {}
    with _lock:
        tree = etree.parse(str(path))
    out: dict[str, str] = {}
    for simple in tree.iterfind(f"{_XS}simpleType"):
        if not (simple.get("name") or "").startswith("ProgSubjectCode"):
            continue
        for enum in simple.iterfind(f"{_XS}restriction/{_XS}enumeration"):
            doc, value = enum.findtext(f"{_XS}annotation/{_XS}documentation"), enum.get("value")
            if doc and doc.strip() and value is not None:
                out[value] = " ".join(doc.split())
    return out


@lru_cache(maxsize=1)
def _country_names() -> dict[str, str]:
    """SEVIS country code → ISO 3166-1 name of the ISO code mapped to it.

    Read from pycountry's data file (the Debian iso-codes JSON it ships) rather than through its
    object model: the same names, without loading every database at start-up."""
    import importlib.util

    import orjson

    from sevisflow.processors.normalize.codes import ISO2_TO_SEVIS

    spec = importlib.util.find_spec("pycountry")
    if spec is None or not spec.submodule_search_locations:
        return {}
    data = Path(next(iter(spec.submodule_search_locations))) / "databases" / "iso3166-1.json"
    iso = {c["alpha_2"]: c.get("common_name") or c["name"] for c in orjson.loads(data.read_bytes())["3166-1"]}
    return {sevis: iso[code] for code, sevis in ISO2_TO_SEVIS.items() if code in iso}


class Labels:
    """Labels of SEVIS codes for one XSD folder (None: no XSD, so CIP codes have no label)."""

    def __init__(self, xsd_dir: str | Path | None) -> None:
        self.xsd_dir = str(Path(xsd_dir).resolve()) if xsd_dir else None

    def label(self, kind: str, code: str | None) -> str | None:
        """The label of ``code`` of ``kind`` (cip, country, edu_level …), or None when there is none."""
        if code is None or code == "":
            return None
        table: dict[str, str]
        if kind == "cip":
            if code == "00.0000":
                return "none"
            table = _cip_titles(self.xsd_dir) if self.xsd_dir else {}
        elif kind == "country":
            table = _country_names()
        else:
            table = TABLES.get(kind, {})
        return table.get(str(code))

    def describe(self, kind: str, code: str | None) -> str:
        """``"China (CH)"``; ``"CN (no label source)"`` when no source gives a label."""
        if code is None or code == "":
            return "(none)"
        text = self.label(kind, code)
        return f"{text} ({code})" if text else f"{code} ({NO_SOURCE})"

    def cip_available(self) -> bool:
        return bool(self.xsd_dir and _cip_titles(self.xsd_dir))
