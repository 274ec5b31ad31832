"""The SEVIS exchange-visitor (J-1) batch schema, loaded once from the configured XSD folder.

The same loader as the student schema (:mod:`sevisflow.sinks.xml.xsd`) reads
``Create-UpdateExchangeVisitor.xsd`` and the ``Common.xsd`` / ``SEVISTable.xsd`` it imports,
and gives a validator plus the element model (child order and attributes, read from the
XSD). Two things are EV-only:

* sites of activity are *abstract* types (``AbstractSiteOfActivity``, ``AbstractAdd``): the
  document names the concrete type with ``xsi:type`` (``SOA``/``EXEMPT`` in a create,
  ``AddSOA``/``AddEXEMPT``/``AddSEEKINGEMP``/``AddONTRAVEL`` in ``SiteOfActivity/Add``).
  :meth:`EVSchema.concrete` gives the model of the concrete type, checked against the
  abstract base, so the renderer orders a site's children by the type it names;
* ``SiteOfActivity/Edit|Delete`` name a site by ``SiteName`` or by ``SiteId`` (+ ``SiteName``), and
  in a create ``AddSiteOfActivity`` comes before an optional ``AddTIPP`` (the XSD's
  ``choice(AddTIPP | sequence(AddSiteOfActivity, AddTIPP?))``), which a first-occurrence
  order would get wrong: both orders are corrected at load time.

The EV XSD is loaded only when an EV batch is rendered, so a school that runs no J program
needs no EV schema in ``[sevis] xsd_dir``.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from lxml import etree

from sevisflow.sinks.xml.xsd import XS, ElementModel, _Builder, load_batch_schema

EV_XSD = "Create-UpdateExchangeVisitor.xsd"
EV_ROOT = "SEVISBatchCreateUpdateEV"
XSI = "http://www.w3.org/2001/XMLSchema-instance"


def _q(tag: str) -> str:
    return f"{{{XS}}}{tag}"


def _subtypes(builder: _Builder) -> dict[str, list[str]]:
    """Abstract complex type name → the names of the types that extend it (no namespace: the EV XSD's own)."""
    out: dict[str, list[str]] = {
        name: [] for (ns, name), t in builder.types.items() if not ns and t.get("abstract") == "true"
    }
    for (ns, name), t in sorted(builder.types.items()):
        ext = t.find(f"{_q('complexContent')}/{_q('extension')}")
        if ns or ext is None or t.get("abstract") == "true":
            continue
        base = (ext.get("base") or "").rpartition(":")[2]
        if base in out:
            out[base].append(name)
    return out


class EVSchema:
    """The loaded EV batch schema: validator, element model of the root, concrete site types."""

    def __init__(self, xsd_dir: str | Path) -> None:
        self.xsd_dir = Path(xsd_dir)
        loaded = load_batch_schema(
            self.xsd_dir,
            EV_XSD,
            EV_ROOT,
            f"an EV (J-1) batch needs {EV_XSD} (with the Common.xsd and SEVISTable.xsd it imports) in "
            "[sevis] xsd_dir; download it from ICE with the student batch schemas",
        )
        builder = loaded.builder
        self.root, self.validator, self.version = loaded.root, loaded.validator, loaded.version
        self.subtypes = _subtypes(builder)
        abstract_ids = {id(builder.types[("", name)]): name for name in self.subtypes}
        # the models built for elements whose declared type is abstract (keyed by model identity)
        self._abstract: dict[int, str] = {
            id(m): abstract_ids[cid] for (_, cid), m in list(builder._element_models.items()) if cid in abstract_ids
        }
        self._concrete: dict[tuple[str, str], ElementModel] = {}
        for base, names in self.subtypes.items():
            for name in names:
                synthetic = etree.Element(_q("element"), name=name, type=name)
                self._concrete[(base, name)] = builder.element_model(synthetic, name)
        _site_id_first(self.root, set())
        self._create = _create_model(self.root.children["CreateEV"].children["ExchangeVisitor"])
        self._builder = builder  # keeps the parsed XSD (and the model keys' proxies) alive
        self._lock = threading.Lock()

    @property
    def create_ev(self) -> ElementModel:
        return self._create

    @property
    def update_ev(self) -> ElementModel:
        return self.root.children["UpdateEV"].children["ExchangeVisitor"]

    def abstract_base(self, model: ElementModel) -> str | None:
        """The abstract type of an element (``AbstractSiteOfActivity``…), None for a concrete one."""
        return self._abstract.get(id(model))

    def concrete(self, model: ElementModel, type_name: str) -> ElementModel | None:
        """The model of ``type_name`` as the ``xsi:type`` of ``model``'s element; None when not allowed there."""
        base = self.abstract_base(model)
        return None if base is None else self._concrete.get((base, type_name))

    def validate(self, doc: etree._ElementTree | etree._Element) -> list[etree._LogEntry]:
        """Validate; return the error log entries (empty when valid). Thread safe."""
        with self._lock:
            ok = self.validator.validate(doc)
            return [] if ok else list(self.validator.error_log)


def _site_id_first(model: ElementModel, seen: set[int]) -> None:
    """``SiteOfActivity/Edit|Delete`` take ``SiteName`` *or* ``SiteId SiteName?``: with both, SiteId comes
    first, which a first-occurrence order gets wrong. Renumbered in place (the EV builder's own models)."""
    if id(model) in seen:
        return
    seen.add(id(model))
    order = model.order
    if "SiteId" in order and "SiteName" in order and order["SiteName"] < order["SiteId"]:
        names = sorted(order, key=lambda k: order[k])
        names.remove("SiteId")
        names.insert(names.index("SiteName"), "SiteId")
        order.clear()
        order.update({name: i for i, name in enumerate(names)})
    for child in model.children.values():
        _site_id_first(child, seen)


def _create_model(model: ElementModel) -> ElementModel:
    """The create's model with ``AddSiteOfActivity`` before ``AddTIPP`` (see the module docstring)."""
    order = dict(model.order)
    if "AddSiteOfActivity" in order and "AddTIPP" in order and order["AddTIPP"] < order["AddSiteOfActivity"]:
        order["AddTIPP"], order["AddSiteOfActivity"] = order["AddSiteOfActivity"], order["AddTIPP"]
    return dataclasses.replace(model, order=order)


_EV: dict[str, EVSchema] = {}
_EV_LOCK = threading.Lock()


def load_ev_schema(xsd_dir: str | Path) -> EVSchema:
    """The EV schema of ``xsd_dir``, parsed once per process."""
    key = str(Path(xsd_dir).resolve())
    with _EV_LOCK:
        schema = _EV.get(key)
        if schema is None:
            schema = _EV[key] = EVSchema(xsd_dir)
        return schema
