"""Code labels: CIP titles read from the SEVIS XSDs at run time, country names for SEVIS (not ISO)
codes, the small cited tables, and "no label source" where there is none. Every table is checked
against the code lists of SEVISTable.xsd, so a label can never name a code SEVIS does not have."""

from __future__ import annotations

from lxml import etree

from sevisflow.app import labels as L
from sevisflow.app.labels import Labels
from tests.helpers import XSD_DIR

XS = "{http://www.w3.org/2001/XMLSchema}"


def enum(type_name: str) -> set[str]:
    tree = etree.parse(str(XSD_DIR / "SEVISTable.xsd"))
    st = next(t for t in tree.iter(f"{XS}simpleType") if t.get("name") == type_name)
    return {e.get("value") for e in st.iter(f"{XS}enumeration")}


def test_cip_titles_come_from_the_configured_xsds():
    lab = Labels(XSD_DIR)
    assert lab.describe("cip", "26.0101") == "Biology/Biological Sciences, General (26.0101)"
    assert lab.describe("cip", "52.0301") == "Accounting (52.0301)"
    assert lab.label("cip", "00.0000") == "none"
    assert lab.cip_available()


def test_without_xsds_a_cip_code_is_shown_with_no_label_source(tmp_path):
    assert Labels(None).describe("cip", "26.0101") == "26.0101 (no label source)"
    assert Labels(tmp_path).describe("cip", "26.0101") == "26.0101 (no label source)"
    assert not Labels(tmp_path).cip_available()


def test_sevis_country_codes_are_not_iso_codes():
    lab = Labels(XSD_DIR)
    assert lab.describe("country", "CH") == "China (CH)"
    assert lab.describe("country", "CN") == "Comoros (CN)"
    assert lab.describe("country", "SZ") == "Switzerland (SZ)"
    assert lab.describe("country", "GM") == "Germany (GM)"
    assert lab.describe("country", "ZZ") == "ZZ (no label source)"


def test_every_labelled_country_code_is_a_sevis_code():
    codes = enum("BirthCntryCodeType")
    named = L._country_names()
    assert len(named) > 200 and set(named) <= codes


def test_label_tables_name_only_codes_of_the_xsd():
    assert set(L.EDU_LEVEL) == enum("EduLevelCodeType")
    assert enum("StudentTerminationReasonType") <= set(L.TERMINATION_REASON)
    assert set(L.VISA_TYPE) == enum("StudentVisaCodeType") | enum("DependentFMVisaType")
    assert set(L.RELATIONSHIP) == enum("DependentCodeType")
    assert set(L.GENDER) == enum("GenderCodeType")
    assert set(L.EMPLOYMENT_TIME) == enum("EmploymentTimeType")
    assert set(L.CANCEL_REASON) == enum("StudentCancelReasonType")


def test_codes_without_a_public_source_say_so():
    lab = Labels(XSD_DIR)
    for kind in L.UNLABELLED:
        assert lab.describe(kind, "01") == "01 (no label source)"
    assert lab.describe("visa_type", "01") == "F-1 (01)"
    assert lab.describe("relationship", "01") == "spouse (01)"
    assert lab.describe("termination_reason", "23") == "authorized early withdrawal (23)"
    assert lab.describe("edu_level", None) == "(none)"
