"""The simulator's exchange-visitor (J-1) processing: what SEVIS answers to an EV batch.

Records are processed at once and deterministically, like the student ones, with the EV
codes (S2xxx):

* ``CreateEV/ExchangeVisitor`` → a new SEVIS ID (``N`` + 10 digits from OrgID, BatchID and
  requestID), one ``Record/Dependent[@dependentSevisID]`` per created dependent with its
  ``UserDefinedA/B`` echoed, one ``Record/SiteOfActivity`` (``SiteId``, ``SiteName``) per site,
  and a DS-2019 PDF per person when ``printForm`` is true;
* ``UpdateEV/ExchangeVisitor``: an unknown SEVIS ID fails with S2001; ``Dependent/Add`` gets a
  new dependent SEVIS ID (echoed with the group's ``UserDefinedA/B``), the other dependent
  events fail with S2232 for a dependent SEVIS ID the EV does not have; ``SiteOfActivity/Add``
  gets a new ``SiteId``, ``Edit``/``Delete`` of a site the EV does not have fail with S2129 — checked for
  the EVs this simulator created; an EV SEVIS had before (``known_sevis_ids``) has dependents and sites the
  simulator cannot know, so their events are taken;
* a requestID used twice in the batch fails with S2099; configured per-request errors
  (``record_errors``) fail with the given code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_UD = ("UserDefinedA", "UserDefinedB")


@dataclass
class EVRegistry:
    """What the simulated SEVIS knows of exchange visitors: their dependents and sites (by EV SEVIS ID)."""

    dependents: dict[str, set[str]] = field(default_factory=dict)
    sites: dict[str, dict[str, str | None]] = field(default_factory=dict)  # EV SEVIS ID → SiteId → SiteName


def site_id(seed: str) -> str:
    """A numeric SiteId derived from ``seed`` (SEVIS returns numeric ones)."""
    return str(900000 + int.from_bytes(hashlib.sha256(seed.encode()).digest()[:4], "big") % 100000)


def _children(el: etree._Element) -> list[etree._Element]:
    return [c for c in el if isinstance(c.tag, str)]


def _ud(el: etree._Element) -> dict[str, str | None]:
    return {tag: el.findtext(tag) for tag in _UD}


def _new_site(reg: EVRegistry, sid: str, el: etree._Element, seed: str) -> dict[str, str | None]:
    sites = reg.sites.setdefault(sid, {})
    n, new_id = 0, site_id(seed)
    while new_id in sites:
        n += 1
        new_id = site_id(f"{seed}|{n}")
    name = el.findtext("SiteName")
    sites[new_id] = name
    return {"id": new_id, "name": name}


def create_ev(
    reg: EVRegistry, ev: etree._Element, sid: str, new_id: Callable[[str], str], pdfs: dict[str, bytes]
) -> dict[str, Any]:
    """The result of a successful CreateEV: dependents' and sites' new ids (and the DS-2019s)."""
    dep_ids = [new_id(f"{sid}|dep|{i}") for i in range(len(ev.findall("CreateDependent/Dependent")))]
    deps = [{"id": dep_id, **_ud(dep)} for dep_id, dep in zip(dep_ids, ev.findall("CreateDependent/Dependent"))]
    reg.dependents[sid] = set(dep_ids)
    sites = [
        _new_site(reg, sid, s, f"{sid}|site|{i}") for i, s in enumerate(ev.findall("AddSiteOfActivity/SiteOfActivity"))
    ]
    if ev.get("printForm") in ("true", "1"):
        for who in [sid, *dep_ids]:
            pdfs[f"{who}_DS2019.pdf"] = _pdf(who)
    return {"ok": True, "sevis_id": sid, "dependents": deps, "sites": sites}


def _pdf(who: str) -> bytes:
    return b"%PDF-1.4\n% sevisflow simulator: a placeholder DS-2019 for " + who.encode() + b"\n%%EOF\n"


def update_ev(
    reg: EVRegistry, ev: etree._Element, sid: str, new_id: Callable[[str], str], seed: str, pdfs: dict[str, bytes]
) -> dict[str, Any]:
    """The result of one UpdateEV event of a known EV (``ok`` False with the S2xxx code and message)."""
    events = [c for c in _children(ev) if c.tag not in _UD]
    if not events:
        return {"ok": False, "code": "S2012", "message": "Element required: no event in the record"}
    event = events[0]
    if event.tag == "Dependent":
        return _dependent(reg, event, sid, new_id, seed, pdfs)
    if event.tag == "SiteOfActivity":
        return _site(reg, event, sid, seed)
    return {"ok": True}


def _dependent(
    reg: EVRegistry, group: etree._Element, sid: str, new_id: Callable[[str], str], seed: str, pdfs: dict[str, bytes]
) -> dict[str, Any]:
    sub = next((c for c in _children(group) if c.tag not in _UD), None)
    known = reg.dependents.get(sid)  # None: an EV SEVIS had before the simulator (its dependents are unknown)
    if sub is None:
        return {"ok": False, "code": "S2012", "message": "Element required: no dependent event"}
    if sub.tag == "Add":
        dep = new_id(f"{seed}|dep")
        if known is not None:
            known.add(dep)
        if sub.get("printForm") in ("true", "1"):
            pdfs[f"{dep}_DS2019.pdf"] = _pdf(dep)
        return {"ok": True, "dependents": [{"id": dep, **_ud(group)}]}
    dep_id = sub.get("dependentSevisID") or ""
    if known is not None and dep_id not in known:
        return {"ok": False, "code": "S2232", "message": "Dependent SEVIS ID not found for this exchange visitor"}
    if sub.tag == "Delete" and known is not None:
        known.discard(dep_id)
    return {"ok": True}


def _site(reg: EVRegistry, group: etree._Element, sid: str, seed: str) -> dict[str, Any]:
    sub = next(iter(_children(group)), None)
    if sub is None:
        return {"ok": False, "code": "S2012", "message": "Element required: no site of activity event"}
    if sid not in reg.sites:  # an EV SEVIS had before the simulator: its sites are unknown, take the event
        return {"ok": True, "sites": [_new_site(EVRegistry(), sid, sub, f"{seed}|site")] if sub.tag == "Add" else []}
    sites = reg.sites[sid]
    if sub.tag == "Add":
        return {"ok": True, "sites": [_new_site(reg, sid, sub, f"{seed}|site")]}
    wanted_id, name = sub.findtext("SiteId"), sub.findtext("SiteName")
    found = (
        wanted_id if wanted_id in sites else next((k for k, v in sites.items() if not wanted_id and v == name), None)
    )
    if found is None:
        return {"ok": False, "code": "S2129", "message": "Site of activity not found for this exchange visitor"}
    if sub.tag == "Delete":
        del sites[found]
        return {"ok": True}
    sites[found] = sub.findtext("NewSiteName") or sites[found]
    return {"ok": True, "sites": [{"id": found, "name": sites[found]}]}
