"""Exchange-visitor ids SEVIS assigns (dependent SEVIS IDs, SiteIds), learned from sevis.results.

An EV event about a J-2 dependent or a site of activity that SEVIS knows by its own id
carries the SIS key of that dependent or site under ``@sisKey`` until the id is known.
SEVIS returns the ids in the transaction log of the batch that created them (``CreateEV``,
``Dependent/Add``, ``SiteOfActivity/Add``); the SEVIS sink publishes them on sevis.results
with the SIS key each belongs to (``dependents_json`` / ``sites_json``). The batcher
remembers them per exchange visitor and SIS key (in the same store as the SEVIS IDs) and
puts them into the records that need them, exactly as it does with an EV's SEVIS ID:

* ``@dependentSevisID`` of ``Dependent.Edit|Delete|EndStatus|Terminate|Reprint``: the XSD
  requires it, so such a record *waits* until the id is known (like an update without the
  SEVIS ID);
* ``SiteId`` of ``SiteOfActivity.Edit|Delete``: SEVIS also finds a site by its name, so the
  record does not wait, but carries the SiteId as soon as it is known (S2202: names repeat).

Pure: plain data in, plain data out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

DEPENDENT_KINDS = frozenset(
    {
        "EV.Dependent.Edit",
        "EV.Dependent.Delete",
        "EV.Dependent.EndStatus",
        "EV.Dependent.Terminate",
        "EV.Dependent.Reprint",
    }
)
SITE_KINDS = frozenset({"EV.SiteOfActivity.Edit", "EV.SiteOfActivity.Delete"})
SIS_KEY = "@sisKey"
_FIELD = {"dep": "@dependentSevisID", "site": "SiteId"}
WAITING_DEPENDENT = (
    "waiting for the dependent's SEVIS ID (SEVIS assigns it when it processes the exchange "
    "visitor's create or the Dependent/Add)"
)


def ref_key(student_key: str, what: str, sis_key: str) -> str:
    """The store key of an id SEVIS assigned: ``<student>#dep:<sis key>`` or ``<student>#site:<sis key>``."""
    return f"{student_key}#{what}:{sis_key}"


def _what(kind: str) -> str | None:
    return "dep" if kind in DEPENDENT_KINDS else "site" if kind in SITE_KINDS else None


def _items(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, str) or not value:
        return []
    try:
        items = orjson.loads(value)
    except orjson.JSONDecodeError:
        return []
    return [i for i in items if isinstance(i, Mapping)] if isinstance(items, list) else []


def learned(res: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(what, SIS key, id) of every dependent SEVIS ID and SiteId a successful result carries."""
    if res.get("status") != "success":
        return []
    out = []
    for what, field, id_name in (("dep", "dependents_json", "dependent_sevis_id"), ("site", "sites_json", "site_id")):
        for item in _items(res.get(field)):
            key, new_id = item.get("sis_key"), item.get(id_name)
            if isinstance(key, str) and key and isinstance(new_id, str) and new_id:
                out.append((what, key, new_id))
    return out


def waits_for(rec: Mapping[str, Any]) -> str | None:
    """Why an EV record cannot be sent yet (an id only SEVIS can give), or None."""
    payload = rec.get("payload") or {}
    if rec.get("kind") in DEPENDENT_KINDS and isinstance(payload, Mapping) and not payload.get("@dependentSevisID"):
        return WAITING_DEPENDENT
    return None


def fill(rec: Mapping[str, Any], known: Mapping[str, Any]) -> dict[str, Any] | None:
    """``rec`` with the id SEVIS assigned to its dependent or site put in; None when there is nothing to add."""
    what = _what(str(rec.get("kind") or ""))
    payload = rec.get("payload")
    if what is None or not isinstance(payload, Mapping) or payload.get(_FIELD[what]):
        return None
    key = payload.get(SIS_KEY)
    new_id = known.get(ref_key(str(rec.get("student_key")), what, key)) if isinstance(key, str) else None
    if not isinstance(new_id, str) or not new_id:
        return None
    return {**rec, "payload": {**payload, _FIELD[what]: new_id}}
