"""Which implementation decodes tuples: the optional C extension or the pure-Python reference.

``sevisflow.connectors.postgres._pgtuple`` (built from ``_pgtuple.c`` when a C compiler is present at install)
does the per-value loops — pgoutput TupleData → values, a row's text values → JSON values, COPY text →
rows — and, without ``schemas.enable``, writes whole stream and snapshot events as JSON bytes; it
returns exactly the objects the Python functions return, or None where the Python path must take
over. Without it, or with ``SEVISFLOW_PURE_PYTHON_DECODER=1`` in the environment at import, the
connector runs the pure-Python functions. :func:`log_choice` logs the choice once per process
(``connector.decoder``, ``decoder=c|python``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, TypeVar, overload

import orjson

from sevisflow.connectors.postgres import convert as cv
from sevisflow.core.log import get_logger

FORCE_PYTHON_ENV = "SEVISFLOW_PURE_PYTHON_DECODER"
MEMO_SIZE = 8192  # memo entries per column before the memo is cleared (envelope._MEMO_SIZE is this)

log = get_logger(__name__)


API = 8  # _pgtuple.API this code expects; a stale build (not rebuilt since) is ignored
_stale = False


def _load() -> ModuleType | None:
    global _stale
    try:
        from sevisflow.connectors.postgres import _pgtuple
    except ImportError:
        return None
    if getattr(_pgtuple, "API", None) != API:
        _stale = True
        return None
    # pgoutput registers its UNCHANGED marker itself (this module must not import pgoutput)
    _pgtuple.configure(cv.to_bool, cv.to_date_days, cv.to_zoned_timestamp, MEMO_SIZE)
    _pgtuple.set_dumps(orjson.dumps)  # values its JSON writer does not know are serialised by orjson itself
    return _pgtuple


c_module: ModuleType | None = _load()
forced_python = os.environ.get(FORCE_PYTHON_ENV, "").strip().lower() in ("1", "true", "yes", "on")
active: ModuleType | None = None if forced_python else c_module
_logged = False


def name() -> str:
    """``c`` or ``python``: the decoder this process uses."""
    return "c" if active is not None else "python"


_Impl = TypeVar("_Impl", bound=Callable[..., Any])


@overload
def pick(python_impl: _Impl, c_name: str) -> _Impl: ...
@overload
def pick(python_impl: None, c_name: str) -> Callable[..., Any] | None: ...
def pick(python_impl: Callable[..., Any] | None, c_name: str) -> Callable[..., Any] | None:
    """The C function ``c_name`` if the C decoder is active, else ``python_impl`` (None: no Python twin;
    the caller runs its own Python loop). The C function takes and returns what the Python one does."""
    return getattr(active, c_name) if active is not None else python_impl


def log_choice() -> None:
    """Log once per process which decoder is in use, and why when it is the Python one."""
    global _logged
    if _logged:
        return
    _logged = True
    if active is not None:
        reason = "active"
    elif c_module is not None:
        reason = FORCE_PYTHON_ENV if forced_python else "switched off (decoder.set_active)"
    else:
        reason = "extension built from older sources: pip install -e ." if _stale else "extension not built"
    log.info("connector.decoder", decoder=name(), reason=reason)


def set_active(use_c: bool) -> None:
    """Switch every hook to the C (``True``, if built) or the Python loops at runtime: for the tests that
    run both and the offline micro-benchmark; the connector itself decides once, at import."""
    global active
    from sevisflow.connectors.postgres import envelope, pgoutput, snapshot

    active = c_module if use_c else None
    envelope._fast_row = pick(envelope._py_fast_row, "fast_row")
    envelope._c_read_row = pick(None, "read_row")
    envelope._c_change_event = pick(None, "change_event")
    envelope._c_read_event = pick(None, "read_event")
    envelope._c_change_batch = pick(None, "change_batch")
    pgoutput._tuple = pgoutput._c_tuple if active is not None else pgoutput._py_tuple
    snapshot._c_split_copy = pick(None, "split_copy")
    snapshot._c_copy_lines = pick(None, "copy_lines")
    snapshot._c_copy_batch = pick(None, "copy_batch")


@contextmanager
def using(use_c: bool) -> Iterator[None]:
    """:func:`set_active` for a block, restoring the previous choice after it."""
    before = active is not None
    set_active(use_c)
    try:
        yield
    finally:
        set_active(before)
