"""Value tables against the official code lists in SEVISTable.xsd, and the reference mapping."""

from __future__ import annotations

import re

import pytest

from sevisflow.deploy.sis import refdata
from sevisflow.processors.normalize.codes import ISO2_TO_SEVIS, US_STATE_NAMES
from tests.helpers import XSD_DIR
from tests.scenarios import MAPPING

TABLE = (XSD_DIR / "SEVISTable.xsd").read_text(encoding="utf-8")


def enum(name: str) -> set[str]:
    m = re.search(rf'<xs:simpleType name="{name}">(.*?)</xs:simpleType>', TABLE, re.S)
    assert m, name
    return set(re.findall(r'value="([^"]*)"', m.group(1)))


def test_every_sevis_country_code_is_in_the_xsd() -> None:
    birth = enum("BirthCntryCodeType")
    assert {iso: c for iso, c in ISO2_TO_SEVIS.items() if c not in birth} == {}


def test_generator_countries_are_valid_citizenship_codes() -> None:
    citizenship = enum("CntryCodeWithoutType")
    for iso in refdata.COUNTRIES:
        if iso != "US":
            assert ISO2_TO_SEVIS[iso] in citizenship, iso
    assert ISO2_TO_SEVIS["CN"] == "CH" and ISO2_TO_SEVIS["DE"] == "GM" and ISO2_TO_SEVIS["KR"] == "KS"


def test_state_codes_are_in_the_xsd() -> None:
    assert set(US_STATE_NAMES.values()) <= enum("StateCodeType")


@pytest.mark.parametrize(
    "table,xsd_type",
    [
        ("edu_level", "EduLevelCodeType"),
        ("relationship", "DependentCodeType"),
        ("dependent_visa", "DependentFMVisaType"),
        ("gender", "GenderCodeType"),
    ],
)
def test_reference_mapping_values_are_sevis_codes(table: str, xsd_type: str) -> None:
    allowed = enum(xsd_type)
    for v in MAPPING.values[table].values.values():
        code = v["value"] if isinstance(v, dict) else v
        assert code in allowed, (table, v)


def test_reference_mapping_reasons_are_sevis_codes() -> None:
    term, cancel = enum("StudentTerminationReasonType"), enum("StudentCancelReasonType")
    for v in MAPPING.values["program_status"].values.values():
        if isinstance(v, dict):
            assert v.get("reason") is None or v["reason"] in term
            assert v.get("cancel_reason") is None or v["cancel_reason"] in cancel
    assert {"01", "02"} == {v for k, v in MAPPING.values["visa_type"].values.items()} and enum(
        "StudentVisaCodeType"
    ) == {"01", "02"}
