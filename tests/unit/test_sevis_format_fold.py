"""``sevis_format.fold``: accents and special letters to ASCII. ASCII text is returned as it is without the
Unicode work; these tests pin that shortcut to what the full folding gives."""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from sevisflow.processors.sevis_events.sevis_format import _SPECIAL, fold, sevis_name


def _full_fold(text: str) -> str:
    """The folding without the ASCII shortcut."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_SPECIAL))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def test_every_ascii_character_folds_to_itself_as_the_full_folding_says() -> None:
    every = "".join(chr(c) for c in range(128))
    assert fold(every) == _full_fold(every) == every


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_any_text_folds_as_the_full_folding_does(text: str) -> None:
    assert fold(text) == _full_fold(text)


def test_accents_and_special_letters_are_still_folded() -> None:
    assert fold("Zoë Ångström-Øster Straße") == "Zoe Angstrom-Oster Strasse"
    assert sevis_name("José-María O'Neil", "student.first_name") == "Jose Maria ONeil"
    assert sevis_name("Smith-Jones", "student.last_name") == "Smith Jones"  # ASCII: the shortcut
