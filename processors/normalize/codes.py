"""Built-in value tables the mapping file can name: ISO 3166 → SEVIS country codes, US state names.

SEVIS country codes are FIPS 10-4 style (``CH`` China, ``SZ`` Switzerland, ``GM`` Germany …),
not ISO. The table below maps every ISO 3166-1 alpha-2 code we know a SEVIS code for; each value
is checked against ``BirthCntryCodeType`` of SEVISTable.xsd by tests/unit/test_mapping_codes.py.
A school whose SIS holds something else (SEVIS codes already, alpha-3, names) picks another
builtin or lists its own values in the mapping file (docs/MAPPING.md).
"""

from __future__ import annotations

ISO2_TO_SEVIS: dict[str, str] = {
    "AD": "AN", "AE": "AE", "AF": "AF", "AG": "AC", "AI": "AV", "AL": "AL", "AM": "AM", "AO": "AO",
    "AQ": "AY", "AR": "AR", "AS": "AQ", "AT": "AU", "AU": "AS", "AW": "AA", "AZ": "AJ",
    "BA": "BK", "BB": "BB", "BD": "BG", "BE": "BE", "BF": "UV", "BG": "BU", "BH": "BA", "BI": "BY",
    "BJ": "BN", "BL": "TB", "BM": "BD", "BN": "BX", "BO": "BL", "BR": "BR", "BS": "BF", "BT": "BT",
    "BV": "BV", "BW": "BC", "BY": "BO", "BZ": "BH",
    "CA": "CA", "CC": "CK", "CD": "CG", "CF": "CT", "CG": "CF", "CH": "SZ", "CI": "IV", "CK": "CW",
    "CL": "CI", "CM": "CM", "CN": "CH", "CO": "CO", "CR": "CS", "CU": "CU", "CV": "CV", "CW": "UC",
    "CX": "KT", "CY": "CY", "CZ": "EZ",
    "DE": "GM", "DJ": "DJ", "DK": "DA", "DM": "DO", "DO": "DR", "DZ": "AG",
    "EC": "EC", "EE": "EN", "EG": "EG", "EH": "WI", "ER": "ER", "ES": "SP", "ET": "ET",
    "FI": "FI", "FJ": "FJ", "FK": "FK", "FM": "FM", "FO": "FO", "FR": "FR",
    "GA": "GB", "GB": "UK", "GD": "GJ", "GE": "GG", "GF": "FG", "GG": "GK", "GH": "GH", "GI": "GI",
    "GL": "GL", "GM": "GA", "GN": "GV", "GP": "GP", "GQ": "EK", "GR": "GR", "GS": "SX", "GT": "GT",
    "GU": "GQ", "GW": "PU", "GY": "GY",
    "HK": "HK", "HM": "HM", "HN": "HO", "HR": "HR", "HT": "HA", "HU": "HU",
    "ID": "ID", "IE": "EI", "IL": "IS", "IM": "IM", "IN": "IN", "IO": "IO", "IQ": "IZ", "IR": "IR",
    "IS": "IC", "IT": "IT",
    "JE": "JE", "JM": "JM", "JO": "JO", "JP": "JA",
    "KE": "KE", "KG": "KG", "KH": "CB", "KI": "KR", "KM": "CN", "KN": "SC", "KP": "KN", "KR": "KS",
    "KW": "KU", "KY": "CJ", "KZ": "KZ",
    "LA": "LA", "LB": "LE", "LC": "ST", "LI": "LS", "LK": "CE", "LR": "LI", "LS": "LT", "LT": "LH",
    "LU": "LU", "LV": "LG", "LY": "LY",
    "MA": "MO", "MC": "MN", "MD": "MD", "ME": "MJ", "MF": "RN", "MG": "MA", "MH": "RM", "MK": "MK",
    "ML": "ML", "MM": "BM", "MN": "MG", "MO": "MC", "MP": "CQ", "MQ": "MB", "MR": "MR", "MS": "MH",
    "MT": "MT", "MU": "MP", "MV": "MV", "MW": "MI", "MX": "MX", "MY": "MY", "MZ": "MZ",
    "NA": "WA", "NC": "NC", "NE": "NG", "NF": "NF", "NG": "NI", "NI": "NU", "NL": "NL", "NO": "NO",
    "NP": "NP", "NR": "NR", "NU": "NE", "NZ": "NZ",
    "OM": "MU",
    "PA": "PM", "PE": "PE", "PF": "FP", "PG": "PP", "PH": "RP", "PK": "PK", "PL": "PL", "PM": "SB",
    "PN": "PC", "PR": "RQ", "PS": "WE", "PT": "PO", "PW": "PS", "PY": "PA",
    "QA": "QA",
    "RE": "RE", "RO": "RO", "RS": "RI", "RU": "RS", "RW": "RW",
    "SA": "SA", "SB": "BP", "SC": "SE", "SD": "SU", "SE": "SW", "SG": "SN", "SH": "SH", "SI": "SI",
    "SJ": "SV", "SK": "LO", "SL": "SL", "SM": "SM", "SN": "SG", "SO": "SO", "SR": "NS", "SS": "OD",
    "ST": "TP", "SV": "ES", "SX": "NN", "SY": "SY", "SZ": "WZ",
    "TC": "TK", "TD": "CD", "TF": "FS", "TG": "TO", "TH": "TH", "TJ": "TI", "TK": "TL", "TL": "TT",
    "TM": "TX", "TN": "TS", "TO": "TN", "TR": "TU", "TT": "TD", "TV": "TV", "TW": "TW", "TZ": "TZ",
    "UA": "UP", "UG": "UG", "US": "US", "UY": "UY", "UZ": "UZ",
    "VA": "VT", "VC": "VC", "VE": "VE", "VG": "VI", "VI": "VQ", "VN": "VM", "VU": "NH",
    "WF": "WF", "WS": "WS",
    "XK": "KV",
    "YE": "YM", "YT": "MF",
    "ZA": "SF", "ZM": "ZA", "ZW": "ZI",
}

US_STATE_NAMES: dict[str, str] = {
    "alabama": "AL", "alaska": "AK", "arizona": "AZ", "arkansas": "AR", "california": "CA",
    "colorado": "CO", "connecticut": "CT", "delaware": "DE", "district of columbia": "DC",
    "florida": "FL", "georgia": "GA", "hawaii": "HI", "idaho": "ID", "illinois": "IL",
    "indiana": "IN", "iowa": "IA", "kansas": "KS", "kentucky": "KY", "louisiana": "LA",
    "maine": "ME", "maryland": "MD", "massachusetts": "MA", "michigan": "MI", "minnesota": "MN",
    "mississippi": "MS", "missouri": "MO", "montana": "MT", "nebraska": "NE", "nevada": "NV",
    "new hampshire": "NH", "new jersey": "NJ", "new mexico": "NM", "new york": "NY",
    "north carolina": "NC", "north dakota": "ND", "ohio": "OH", "oklahoma": "OK", "oregon": "OR",
    "pennsylvania": "PA", "rhode island": "RI", "south carolina": "SC", "south dakota": "SD",
    "tennessee": "TN", "texas": "TX", "utah": "UT", "vermont": "VT", "virginia": "VA",
    "washington": "WA", "west virginia": "WV", "wisconsin": "WI", "wyoming": "WY",
    "american samoa": "AS", "guam": "GU", "northern mariana islands": "MP", "puerto rico": "PR",
    "virgin islands": "VI", "u.s. virgin islands": "VI", "federated states of micronesia": "FM",
    "marshall islands": "MH", "palau": "PW", "united states minor outlying islands": "UM",
}
US_STATE_CODES: frozenset[str] = frozenset(US_STATE_NAMES.values())

#: Builtin translation tables by name (``builtin = "…"`` in a ``[values.*]`` table of the mapping).
BUILTINS: dict[str, dict[str, str]] = {
    "iso2_to_sevis": ISO2_TO_SEVIS,
    "us_state_names": {**US_STATE_NAMES, **{c.lower(): c for c in US_STATE_CODES}},
}
