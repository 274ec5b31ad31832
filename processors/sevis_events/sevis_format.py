"""Canonical values → what SEVIS accepts: names, addresses, phones, e-mail, CIP codes.

Names (docs/MAPPING.md, "Names"): SEVIS rejects digits (XSD ``\\D``) and any character other than
A–Z and space (S1148). We transliterate, then check:

1. Unicode NFKD, combining marks dropped (é → e, ñ → n, ễ → e, ü → u);
2. letters without a decomposition: ß → ss, æ → ae, œ → oe, ø → o, đ/ð → d, ł → l, ı → i, þ → th;
3. hyphens become spaces (Smith-Jones → Smith Jones, Min-jun → Min jun), apostrophes and periods
   are dropped (O'Brien → OBrien, N'Diaye → NDiaye, Jr. → Jr); case is kept;
4. runs of spaces collapse; what remains must be letters A–Z/a–z and spaces, else the name is
   rejected (dead letter ``name_rejected``: digits, CJK or other scripts need the DSO).

A name that steps 1–3 change is still sent, and never silently: :func:`name_alterations` says how (no name in
the words), and the events stage puts both spellings in the record's ``problems`` and raises ``name_altered``.

Addresses are folded the same way (steps 1–2) but otherwise kept; US ZIP+4 is sent as its 5-digit ZIP. A line
with a control character or longer than the XSD allows is refused (``invalid_character`` / ``too_long``, naming
the SIS field), never cut. A phone number with letters (an extension) is refused (``bad_phone``).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from sevisflow.processors.sevis_events import hygiene

_SPECIAL = str.maketrans(
    {
        "ß": "ss",
        "ẞ": "SS",
        "æ": "ae",
        "Æ": "AE",
        "œ": "oe",
        "Œ": "OE",
        "ø": "o",
        "Ø": "O",
        "đ": "d",
        "Đ": "D",
        "ð": "d",
        "Ð": "D",
        "ł": "l",
        "Ł": "L",
        "ı": "i",
        "þ": "th",
        "Þ": "Th",
        "ħ": "h",
        "Ħ": "H",
    }
)
_NAME_OK = re.compile(r"^[A-Za-z ]+$")
_EMAIL = re.compile(r"^[0-9a-zA-Z._%?=^+\-!#$'/*{|}~`&]+@[0-9a-zA-Z.\-]+\.[0-9a-zA-Z.]{2,512}$")
_CIP = re.compile(r"^\d{2}\.\d{4}$")
_ZIP = re.compile(r"^(\d{5})(-?\d{4})?$")


class FormatProblem(Exception):
    def __init__(self, code: str, field: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.field, self.reason = code, field, reason


def fold(text: str) -> str:
    """Steps 1–2 above: accents and special letters to ASCII where a standard folding exists."""
    if text.isascii():  # no special letter, nothing to decompose, no combining mark: already folded
        return text
    decomposed = unicodedata.normalize("NFKD", text.translate(_SPECIAL))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def sevis_name(text: str | None, field: str, max_len: int = 80) -> str | None:
    """The name as SEVIS will accept it, or :class:`FormatProblem` (``name_rejected``)."""
    if text is None:
        return None
    s = fold(text).replace("-", " ").replace("‐", " ")
    s = re.sub(r"['’`.]", "", s)
    s = " ".join(s.split())
    if not s:
        return None
    if not _NAME_OK.match(s):
        kind = "digits" if any(c.isdigit() for c in s) else "characters other than A-Z and space"
        raise FormatProblem(
            "name_rejected",
            field,
            f"{field} has {kind} after transliteration; enter the passport spelling in Latin letters in the SIS",
        )
    if len(s) > max_len:
        raise FormatProblem("name_rejected", field, f"{field} is longer than {max_len} characters")
    return s


def name_alterations(text: str | None) -> list[str]:
    """How :func:`sevis_name` changes ``text`` beyond spacing, in words without the name itself (for a DSO
    issue that is logged): empty when SEVIS gets the SIS spelling unchanged."""
    if not text:
        return []
    how = []
    special = text.translate(_SPECIAL)
    if special != text:
        how.append("special letters spelled out")
    if any(unicodedata.combining(c) for c in unicodedata.normalize("NFKD", special)) or (
        unicodedata.normalize("NFKD", special) != special and not how
    ):
        how.append("accents removed")
    if "-" in text or "‐" in text:
        how.append("hyphen made a space")
    if re.search(r"['’`]", text):
        how.append("apostrophe dropped")
    if "." in text:
        how.append("period dropped")
    return how


def full_name(st: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """FullName: LastName, FirstName (given + middle names), PreferredName."""
    last = sevis_name(st.get("last_name"), f"{prefix}last_name")
    if last is None:
        raise FormatProblem("missing_field", f"{prefix}last_name", "last name is missing")
    out = {"LastName": last}
    given = " ".join(x for x in (st.get("first_name"), st.get("middle_name")) if x)
    first = sevis_name(given or None, f"{prefix}first_name")
    if first:
        out["FirstName"] = first
    pref = st.get("preferred_name")
    if pref:
        p = sevis_name(pref, f"{prefix}preferred_name", 180)
        if p:
            out["PreferredName"] = p
    return out


def _clip(text: Any, n: int, field: str | None = None) -> str | None:
    """Folded text with whitespace runs collapsed; never cut. With ``field``, a control or XML-invalid
    character or more than ``n`` characters is a :class:`FormatProblem` naming that SIS field; without it,
    the event check (:mod:`sevisflow.processors.sevis_events.hygiene`) refuses the event instead."""
    if text is None:
        return None
    raw = fold(str(text))
    s = " ".join(raw.split())
    if field is not None:
        # checked before collapsing: str.split() would silently turn U+001C..U+001F into spaces
        p = hygiene.text_problem(raw, field, None, free_text=True) or hygiene.text_problem(s, field, n)
        if p is not None:
            raise FormatProblem(p.code, p.field, p.reason)
    return s or None


def us_address(a: dict[str, Any] | None, field: str, line_max: int = 64) -> dict[str, str]:
    """USAddrDoctorType (lines ≤64); ``line_max=60`` for USAddressType. Over-long lines are refused, not cut."""
    if not a or not a.get("line1"):
        raise FormatProblem("missing_field", f"{field}.line1", f"{field} has no street line")
    # ZIP+4: SEVIS's PostalCode is the 5-digit ZIP; the +4 routing suffix is left out (it names no other place, and
    # PostalRoutingCode is optional) — not-reportable, documented in docs/MAPPING.md
    m = _ZIP.match(str(a.get("postal_code") or "").strip())
    if not m:
        raise FormatProblem("bad_postal_code", f"{field}.postal_code", f"{field} needs a 5-digit US ZIP code")
    out = {"Address1": _clip(a["line1"], line_max, f"{field}.line1") or ""}
    if not out["Address1"]:
        raise FormatProblem("missing_field", f"{field}.line1", f"{field} has no street line (only spaces)")
    for k, el, n in (("line2", "Address2", line_max), ("city", "City", 60)):
        v = _clip(a.get(k), n, f"{field}.{k}")
        if v:
            out[el] = v
    if a.get("state"):
        out["State"] = a["state"]
    out["PostalCode"] = m.group(1)
    return out


def foreign_address(a: dict[str, Any] | None, field: str) -> dict[str, str]:
    if not a or not a.get("line1"):
        raise FormatProblem("missing_field", f"{field}.line1", f"{field} has no street line")
    if not a.get("country"):
        raise FormatProblem("missing_field", f"{field}.country", f"{field} has no country")
    out = {"Address1": _clip(a["line1"], 60, f"{field}.line1") or ""}
    if not out["Address1"]:
        raise FormatProblem("missing_field", f"{field}.line1", f"{field} has no street line (only spaces)")
    for k, el, n in (("line2", "Address2", 60), ("city", "City", 60), ("state", "Province", 30)):
        v = _clip(a.get(k), n, f"{field}.{k}")
        if v:
            out[el] = v
    out["CountryCode"] = a["country"]
    pc = _clip(a.get("postal_code"), 20, f"{field}.postal_code")
    if pc:
        out["PostalCode"] = pc
    return out


def telephone(st: dict[str, Any]) -> dict[str, Any] | None:
    """Digits only (spaces, dashes, parentheses and a leading + are punctuation); letters — an extension, a note —
    are refused (``bad_phone``) rather than merged into the number."""
    if re.search(r"[^\W\d_]", str(st.get("phone") or "")):
        raise FormatProblem(
            "bad_phone",
            "student.phone",
            "student.phone contains letters (an extension or a note?): "
            "SEVIS takes the number only — keep just the number in the SIS",
        )
    digits = re.sub(r"\D", "", str(st.get("phone") or ""))
    if not digits:
        return None
    cc = re.sub(r"\D", "", str(st.get("phone_country_code") or ""))
    if cc in ("", "1") and len(digits) == 10:
        return {"TelephoneExemptInd": "N", "Phone": {"USNumber": digits}}
    if cc == "1" and len(digits) == 11 and digits.startswith("1"):
        return {"TelephoneExemptInd": "N", "Phone": {"USNumber": digits[1:]}}  # the leading 1 is the country code
    foreign: dict[str, str] = {"PhoneNumber": digits}  # not cut: the event check refuses > 20 digits
    if cc:
        foreign["CountryNumber"] = cc
    return {"TelephoneExemptInd": "N", "Phone": {"Foreign": foreign}}


def email(value: Any, field: str) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    if len(s) > 255 or not _EMAIL.match(s):
        raise FormatProblem("bad_email", field, f"{field} is not an address SEVIS accepts")
    return s


def cip(value: Any, field: str, allow_zero: bool) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    if not _CIP.match(s) or (s == "00.0000" and not allow_zero):
        raise FormatProblem("bad_code", field, f"{field} is not a CIP code NN.NNNN")
    return s


def yes_no(value: Any) -> str:
    return "true" if value else "false"


def employer_address(auth: dict[str, Any], field: str, sevis_type: str) -> dict[str, str]:
    """The employer's US address of an authorisation, for ``USAddressType`` (CPT: Address1 ≤60, City and
    State required) or ``USAddrDoctorType`` (OPT Employer: Address1 ≤64, City/State optional)."""
    strict = sevis_type == "USAddressType"
    a = {k: auth.get(f"employer_{k}") for k in ("line1", "line2", "city", "state", "postal_code")}
    try:
        out = us_address(a, field, 60 if strict else 64)
    except FormatProblem as p:  # name the canonical field (employer_line1), not an address slot's
        raise FormatProblem(
            p.code, p.field.replace(f"{field}.", f"{field}_"), p.reason.replace(f"{field}.", f"{field}_")
        ) from None
    if strict:
        for k, el in (("city", "City"), ("state", "State")):
            if el not in out:
                raise FormatProblem("missing_field", f"{field}_{k}", f"{field} needs a {k} (SEVIS requires it here)")
    return out
