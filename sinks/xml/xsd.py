"""The SEVIS student batch schema, loaded once from the configured XSD folder.

Two things come out of the official XSD set (``Create-UpdateStudent.xsd`` plus the
``Common.xsd`` / ``SEVISTable.xsd`` it imports):

* an :class:`lxml.etree.XMLSchema` validator, and
* an *element model*: for every element, the order its children must appear in
  and the attributes it may carry. The order is read from the XSD itself by
  walking ``xs:sequence`` / ``xs:choice`` (and ``xs:complexContent/xs:extension``
  bases, whose particles come first), so the renderer never relies on a
  hand-written list and payload dicts may use any key order.

The XSDs are never part of the project: a school downloads them from ICE and
points ``[sevis] xsd_dir`` at the folder.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from sevisflow.core.errors import ConfigError

XS = "http://www.w3.org/2001/XMLSchema"
STUDENT_XSD = "Create-UpdateStudent.xsd"
TRANSLOG_XSD = "SevisTransLog.xsd"
ROOT = "SEVISBatchCreateUpdateStudent"


def _q(tag: str) -> str:
    return f"{{{XS}}}{tag}"


@dataclass
class ElementModel:
    """What the XSD says about one element: child order, child models, attributes.

    ``order`` maps a child element name to its position (first occurrence in
    document order of the content model); ``children`` maps it to the child's
    model; ``simple`` is true for elements that hold text only. Elements of the
    same named type share one model object.
    """

    name: str
    simple: bool = True
    order: dict[str, int] = field(default_factory=dict)
    children: dict[str, ElementModel] = field(default_factory=dict)
    attributes: list[str] = field(default_factory=list)
    required_attributes: list[str] = field(default_factory=list)
    choice_of_events: bool = False
    """True when the content holds an ``xs:choice`` of complex elements (e.g. ``Program``,
    ``Status``, ``Dependent``): its child is a sub-event (``Program.Extension``)."""

    def child(self, name: str) -> ElementModel | None:
        return self.children.get(name)


@dataclass
class _TypeModel:
    simple: bool = True
    order: dict[str, int] = field(default_factory=dict)
    decls: dict[str, etree._Element] = field(default_factory=dict)
    attributes: list[str] = field(default_factory=list)
    required_attributes: list[str] = field(default_factory=list)
    choice_of_events: bool = False


class _Builder:
    """Walks the parsed XSD documents and builds :class:`ElementModel` trees."""

    def __init__(self, entry: Path) -> None:
        self.types: dict[tuple[str, str], etree._Element] = {}
        self.elements: dict[tuple[str, str], etree._Element] = {}
        self._seen: set[Path] = set()
        # keyed by id() of lxml proxies: the proxies are kept alive in _pinned so ids stay unique
        self._type_models: dict[int, _TypeModel] = {}
        self._element_models: dict[tuple[str, int], ElementModel] = {}
        self._pinned: list[etree._Element] = []
        self._load(entry)

    def _load(self, path: Path) -> None:
        path = path.resolve()
        if path in self._seen:
            return
        self._seen.add(path)
        try:
            doc = etree.parse(str(path))
        except (OSError, etree.XMLSyntaxError) as exc:
            raise ConfigError(f"cannot read SEVIS schema {path}: {exc}") from exc
        root = doc.getroot()
        tns = root.get("targetNamespace", "")
        for node in root:
            if not isinstance(node.tag, str):
                continue
            name, location = node.get("name"), node.get("schemaLocation")
            if node.tag in (_q("complexType"), _q("simpleType")) and name:
                self.types[(tns, name)] = node
            elif node.tag == _q("element") and name:
                self.elements[(tns, name)] = node
            elif node.tag in (_q("import"), _q("include")) and location:
                self._load(path.parent / location)

    def _resolve(self, node: etree._Element, qname: str) -> etree._Element | None:
        prefix, _, local = qname.rpartition(":")
        ns = node.nsmap.get(prefix or None, "")
        if ns == XS:
            return None
        found = self.types.get((ns or "", local))
        if found is None and not prefix:
            found = self.types.get(("", local))
        return found

    def _ctype_of(self, decl: etree._Element) -> etree._Element | None:
        type_name = decl.get("type")
        ctype = self._resolve(decl, type_name) if type_name else decl.find(_q("complexType"))
        if ctype is None or ctype.tag != _q("complexType"):
            return None
        return ctype

    def element_model(self, decl: etree._Element, name: str | None = None) -> ElementModel:
        name_: str = name or decl.get("name") or ""
        ctype = self._ctype_of(decl)
        if ctype is None:
            return ElementModel(name=name_)
        self._pinned.append(ctype)
        key = (name_, id(ctype))
        model = self._element_models.get(key)
        if model is not None:
            return model
        tm = self._type_model(ctype)
        model = ElementModel(
            name=name_,
            simple=tm.simple,
            order=tm.order,
            attributes=tm.attributes,
            required_attributes=tm.required_attributes,
            choice_of_events=tm.choice_of_events,
        )
        self._element_models[key] = model  # before recursing, so recursive types terminate
        for child_name, child_decl in tm.decls.items():
            model.children[child_name] = self.element_model(child_decl, child_name)
        return model

    def _type_model(self, ctype: etree._Element) -> _TypeModel:
        tm = self._type_models.get(id(ctype))
        if tm is None:
            self._pinned.append(ctype)
            tm = self._type_models[id(ctype)] = _TypeModel()
            self._walk_complex(ctype, tm)
        return tm

    def _walk_complex(self, ctype: etree._Element, tm: _TypeModel) -> None:
        for part in ctype:
            if not isinstance(part.tag, str):
                continue
            if part.tag in (_q("complexContent"), _q("simpleContent")):
                for deriv in part:
                    if deriv.tag not in (_q("extension"), _q("restriction")):
                        continue
                    base = self._resolve(deriv, deriv.get("base", ""))
                    if deriv.tag == _q("extension") and base is not None and base.tag == _q("complexType"):
                        self._walk_complex(base, tm)
                    for node in deriv:
                        if isinstance(node.tag, str):
                            self._walk_particle(node, tm)
                    if part.tag == _q("complexContent"):
                        tm.simple = False
            else:
                self._walk_particle(part, tm)
                if part.tag in (_q("sequence"), _q("choice"), _q("all")):
                    tm.simple = False

    def _walk_particle(self, node: etree._Element, tm: _TypeModel) -> None:
        tag = node.tag
        if tag in (_q("sequence"), _q("choice"), _q("all")):
            if tag == _q("choice"):
                branches = [c for c in node if isinstance(c.tag, str) and c.tag == _q("element")]
                if branches and all(self._ctype_of(b) is not None for b in branches):
                    tm.choice_of_events = True
            for child in node:
                if isinstance(child.tag, str):
                    self._walk_particle(child, tm)
        elif tag == _q("element"):
            name = node.get("name")
            ref = node.get("ref")
            if name is None and ref:
                prefix, _, local = ref.rpartition(":")
                ns = node.nsmap.get(prefix or None, "")
                target = self.elements.get((ns or "", local))
                if target is None:
                    return
                node, name = target, local
            if name is None:
                return  # neither a name nor a ref: not an element declaration SEVIS's XSDs use
            if name not in tm.order:
                tm.order[name] = len(tm.order)
                tm.decls[name] = node
        elif tag == _q("attribute"):
            name = node.get("name") or node.get("ref", "").rpartition(":")[2]
            if name and name not in tm.attributes:
                tm.attributes.append(name)
                if node.get("use") == "required":
                    tm.required_attributes.append(name)


@dataclass
class LoadedSchema:
    """One SEVIS batch schema, loaded: its builder, the root's element model, validator and version."""

    builder: _Builder
    root: ElementModel
    validator: etree.XMLSchema
    version: str


def load_batch_schema(xsd_dir: Path, filename: str, root: str, missing_hint: str) -> LoadedSchema:
    """Load ``filename`` from the XSD folder; every problem is a ConfigError that names the file and the fix."""
    entry = xsd_dir / filename
    if not entry.is_file():
        raise ConfigError(f"SEVIS schema {entry} not found: {missing_hint}")
    builder = _Builder(entry)
    decl = builder.elements.get(("", root))
    if decl is None:
        raise ConfigError(f"{entry} does not declare the root element {root}")
    model = builder.element_model(decl)
    try:
        tree = etree.parse(str(entry))
        validator = etree.XMLSchema(tree)
    except (etree.XMLSchemaParseError, etree.XMLSyntaxError) as exc:
        raise ConfigError(f"SEVIS schema {entry} does not compile: {exc}") from exc
    return LoadedSchema(builder, model, validator, tree.getroot().get("version", ""))


class StudentSchema:
    """The loaded student batch schema: validator plus element model of the root."""

    def __init__(self, xsd_dir: str | Path) -> None:
        self.xsd_dir = Path(xsd_dir)
        loaded = load_batch_schema(
            self.xsd_dir,
            STUDENT_XSD,
            ROOT,
            "set [sevis] xsd_dir to the folder with the official XSDs "
            "(Create-UpdateStudent.xsd, Common.xsd, SEVISTable.xsd) downloaded from ICE",
        )
        self.root, self.validator, self.version = loaded.root, loaded.validator, loaded.version
        self._lock = threading.Lock()

    @property
    def create_student(self) -> ElementModel:
        return self.root.children["CreateStudent"].children["Student"]

    @property
    def update_student(self) -> ElementModel:
        return self.root.children["UpdateStudent"].children["Student"]

    def validate(self, doc: etree._ElementTree | etree._Element) -> list[etree._LogEntry]:
        """Validate; return the error log entries (empty when valid). Thread safe."""
        with self._lock:
            ok = self.validator.validate(doc)
            return [] if ok else list(self.validator.error_log)


_SCHEMAS: dict[str, StudentSchema] = {}
_SCHEMAS_LOCK = threading.Lock()


def load_schema(xsd_dir: str | Path) -> StudentSchema:
    """The schema of ``xsd_dir``, parsed once per process."""
    key = str(Path(xsd_dir).resolve())
    with _SCHEMAS_LOCK:
        schema = _SCHEMAS.get(key)
        if schema is None:
            schema = _SCHEMAS[key] = StudentSchema(xsd_dir)
        return schema


_TRANSLOG: dict[str, etree.XMLSchema] = {}


def load_translog_schema(xsd_dir: str | Path) -> etree.XMLSchema:
    """The transaction-log schema (used by the simulator to check what it writes, never to reject logs)."""
    key = str(Path(xsd_dir).resolve())
    with _SCHEMAS_LOCK:
        if key not in _TRANSLOG:
            _TRANSLOG[key] = etree.XMLSchema(etree.parse(str(Path(xsd_dir) / TRANSLOG_XSD)))
        return _TRANSLOG[key]
