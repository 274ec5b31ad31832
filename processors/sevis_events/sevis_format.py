"""Canonical values → what SEVIS accepts: names, addresses, phones, e-mail, CIP codes.

Names (docs/MAPPING.md, "Names"): SEVIS rejects digits (XSD ``\\D``) and any character other than
A–Z and space (S1148). We transliterate, then check:

1. Unicode NFKD, combining marks dropped (é → e, ñ → n, ễ → e, ü → u);
2. letters without a decomposition: ß → ss, æ → ae, œ → oe, ø → o, đ/ð → d, ł → l, ı → i, þ → th;
3. hyphens become spaces (Smith-Jones → Smith Jones, Min-jun → Min jun), apostrophes and periods
   are dropped (O'Brien → OBrien, N'Diaye → NDiaye, Jr. → Jr); case is kept;
4. runs of spaces collapse; what remains must be letters A–Z/a–z and spaces, else the name is
   rejected (dead letter ``name_rejected``: digits, CJK or other scripts need the DSO).

Addresses are folded the same way (steps 1–2) but otherwise kept; US ZIP+4 is cut to 5 digits.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

_SPECIAL = str.maketrans({"ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O",
                          "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "ł": "l", "Ł": "L", "ı": "i", "þ": "th",
                          "Þ": "Th", "ħ": "h", "Ħ": "H"})
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
        raise FormatProblem("name_rejected", field, f"{field} has {kind} after transliteration; "
                            "enter the passport spelling in Latin letters in the SIS")
    if len(s) > max_len:
        raise FormatProblem("name_rejected", field, f"{field} is longer than {max_len} characters")
    return s


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


def _clip(text: Any, n: int) -> str | None:
    if text is None:
        return None
    s = " ".join(fold(str(text)).split())
    return s[:n] or None


def us_address(a: dict[str, Any] | None, field: str) -> dict[str, str]:
    if not a or not a.get("line1"):
        raise FormatProblem("missing_field", f"{field}.line1", f"{field} has no street line")
    m = _ZIP.match(str(a.get("postal_code") or "").strip())
    if not m:
        raise FormatProblem("bad_postal_code", f"{field}.postal_code", f"{field} needs a 5-digit US ZIP code")
    out = {"Address1": _clip(a["line1"], 64) or ""}
    for k, el, n in (("line2", "Address2", 64), ("city", "City", 60)):
        v = _clip(a.get(k), n)
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
    out = {"Address1": _clip(a["line1"], 60) or ""}
    for k, el, n in (("line2", "Address2", 60), ("city", "City", 60), ("state", "Province", 30)):
        v = _clip(a.get(k), n)
        if v:
            out[el] = v
    out["CountryCode"] = a["country"]
    pc = _clip(a.get("postal_code"), 20)
    if pc:
        out["PostalCode"] = pc
    return out


def telephone(st: dict[str, Any]) -> dict[str, Any] | None:
    digits = re.sub(r"\D", "", str(st.get("phone") or ""))
    if not digits:
        return None
    cc = re.sub(r"\D", "", str(st.get("phone_country_code") or ""))
    if cc in ("", "1") and len(digits) == 10:
        return {"TelephoneExemptInd": "N", "Phone": {"USNumber": digits}}
    if cc == "1" and len(digits) == 11 and digits.startswith("1"):
        return {"TelephoneExemptInd": "N", "Phone": {"USNumber": digits[1:]}}
    foreign: dict[str, str] = {"PhoneNumber": digits[:20]}
    if cc:
        foreign["CountryNumber"] = cc[:4]
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
        out = us_address(a, field)
    except FormatProblem as p:  # name the canonical field (employer_line1), not an address slot's
        raise FormatProblem(p.code, p.field.replace(f"{field}.", f"{field}_"), p.reason) from None
    if strict:
        for k, el in (("city", "City"), ("state", "State")):
            if el not in out:
                raise FormatProblem("missing_field", f"{field}_{k}", f"{field} needs a {k} (SEVIS requires it here)")
        out["Address1"] = out["Address1"][:60]
        if "Address2" in out:
            out["Address2"] = out["Address2"][:60]
    return out
