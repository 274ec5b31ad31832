"""``[[exchange_programs]]``: the J-1 programs of the institution, checked when the settings load; every error names
the table, the key and the fix. None configured = the school runs no J program (nothing changes)."""

from __future__ import annotations

import tomllib

import pytest

from sevisflow.core.config import ExchangeProgram, Settings, load_settings, settings_from_mapping, settings_toml
from sevisflow.core.errors import ConfigError

SCHOOL = {"org_id": "ZZZ214F99999000"}
GOOD = {"program_number": "P-1-12345", "sis_program": "RSCH", "ro_user_id": "ROUSER0001"}


def load(*programs, **school):
    return settings_from_mapping({"school": {**SCHOOL, **school}, "exchange_programs": list(programs)}, env={})


def test_programs_load_from_toml_and_are_found_by_number(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(
        '[school]\norg_id = "ZZZ214F99999000"\n\n'
        '[[exchange_programs]]\nprogram_number = "P-1-12345"\nsis_program = "RSCH"\nro_user_id = "ROUSER0001"\n'
        'aro_user_ids = ["AROUSER001"]\n\n'
        '[[exchange_programs]]\nprogram_number = "G-7-00001"\nsis_program = "GOVT"\nro_user_id = "ROUSER0002"\n'
    )
    s = load_settings(f, env={})
    assert [p.program_number for p in s.exchange_programs] == ["P-1-12345", "G-7-00001"]
    assert s.program("P-1-12345").user_ids() == ("ROUSER0001", "AROUSER001")
    assert s.program("ZZZ214F99999000") is None and s.program("P-1-99999") is None
    assert s.org_ids() == ("ZZZ214F99999000", "P-1-12345", "G-7-00001")
    assert s.program_of_sis("GOVT").program_number == "G-7-00001"


def test_no_program_is_the_default_and_changes_nothing():
    assert Settings().exchange_programs == () and load().org_ids() == ("ZZZ214F99999000",)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"program_number": "P-5-12345"}, "#1 (P-5-12345): program_number = 'P-5-12345' is not a J-1 program number"),
        ({"program_number": "ZZZ214F99999000"}, "is not a J-1 program number: use it as SEVIS shows it"),
        ({"program_number": ""}, '#1: program_number is missing: add program_number = "P-1-12345"'),
        ({"sis_program": " "}, "sis_program is missing for P-1-12345"),
        (
            {"ro_user_id": "RO1"},
            "ro_user_id = 'RO1' is not a SEVIS user id: use the RO/ARO's SEVIS user name, exactly 10",
        ),
        ({"ro_user_id": ""}, "ro_user_id is missing for P-1-12345"),
        ({"aro_user_ids": ["ARO USER01"]}, "aro_user_ids = 'ARO USER01' is not a SEVIS user id"),
        ({"colour": "blue"}, "unknown key exchange_programs.colour (known: program_number, sis_program, ro_user_id"),
        ({"ro_user_id": 12}, "exchange_programs.ro_user_id: expected str, got 12"),
    ],
)
def test_each_mistake_names_the_table_the_key_and_the_fix(change, message):
    with pytest.raises(ConfigError, match="exchange_programs") as err:
        load({**GOOD, **change})
    assert message in str(err.value)


def test_duplicates_and_the_school_code_are_refused():
    with pytest.raises(ConfigError, match=r"#2: program_number 'P-1-12345' is also in #1"):
        load(GOOD, {**GOOD, "sis_program": "OTHER"})
    with pytest.raises(ConfigError, match=r"#2: sis_program 'RSCH' is also in #1"):
        load(GOOD, {**GOOD, "program_number": "P-1-54321"})
    with pytest.raises(ConfigError, match=r"is school\.org_id too"):
        load(GOOD, org_id="P-1-12345")


def test_a_single_table_instead_of_a_list_says_how_to_write_it(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[exchange_programs]\nprogram_number = "P-1-12345"\n')
    with pytest.raises(ConfigError, match=r"write one \[\[exchange_programs\]\] \(two brackets\) per program"):
        load_settings(f, env={})


def test_the_environment_replaces_the_list_with_json():
    env = {
        "SEVISFLOW_EXCHANGE_PROGRAMS": '[{"program_number": "G-1-00042", "sis_program": "GV", '
        '"ro_user_id": "ROUSER0009"}]'
    }
    s = settings_from_mapping({"school": SCHOOL, "exchange_programs": [GOOD]}, env=env)
    assert [p.program_number for p in s.exchange_programs] == ["G-1-00042"]
    with pytest.raises(ConfigError, match="SEVISFLOW_EXCHANGE_PROGRAMS is not JSON"):
        settings_from_mapping({}, env={"SEVISFLOW_EXCHANGE_PROGRAMS": "P-1-12345"})


def test_written_settings_read_back_the_same_and_show_in_the_masked_view(tmp_path):
    raw = {"school": SCHOOL, "exchange_programs": [{**GOOD, "aro_user_ids": ["AROUSER001"]}]}
    text = settings_toml(raw)
    assert "[[exchange_programs]]" in text
    assert settings_from_mapping(tomllib.loads(text), env={}) == settings_from_mapping(raw, env={})
    s = settings_from_mapping(raw, env={})
    assert s.masked()["exchange_programs"] == [{**GOOD, "aro_user_ids": ["AROUSER001"]}]
    assert s.replace(exchange_programs=[]).exchange_programs == ()
    assert isinstance(s.replace(school={"timezone": "UTC"}).exchange_programs[0], ExchangeProgram)
