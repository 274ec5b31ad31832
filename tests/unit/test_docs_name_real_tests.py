"""Every test the docs name as the proof of a claim exists: a renamed or deleted test fails here, not silently in
the docs. A name ending in ``…`` is a prefix (several tests, or one with a long name), and must start at least one."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

from testkit.settings import REPO

DOCS = sorted(REPO.glob("docs/*.md")) + [REPO / "README.md", REPO / "bench/README.md"]
# tests/unit/test_x.py, test_x.py, either with ::name[::name] and an optional … (a prefix)
REFERENCE = re.compile(r"((?:tests/[\w/]+/)?test_\w+\.py)((?:::\w+)*)(…)?")


@functools.cache
def files_by_name() -> dict[str, list[Path]]:
    by_name: dict[str, list[Path]] = {}
    for path in REPO.glob("tests/**/test_*.py"):
        by_name.setdefault(path.name, []).append(path)
    return by_name


@functools.cache
def defined_names(path: Path) -> frozenset[str]:
    """Functions, classes and module-level names a reference may point at."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return frozenset(names)


def problem(reference: re.Match[str]) -> str | None:
    """Why ``reference`` names nothing, or None when it names a real file (and test)."""
    file, parts, prefix = reference.group(1), reference.group(2), reference.group(3)
    if file.startswith("tests/"):
        candidates = [REPO / file] if (REPO / file).is_file() else []
    else:
        candidates = files_by_name().get(file, [])
    if not candidates:
        return "no such test file"
    names = [n for n in parts.split("::") if n]
    for i, name in enumerate(names):
        last_is_prefix = prefix is not None and i == len(names) - 1
        for path in candidates:
            known = defined_names(path)
            if name in known or (last_is_prefix and any(k.startswith(name) for k in known)):
                break
        else:
            return f"no test {'starting with ' if last_is_prefix else ''}{name!r} in {file}"
    return None


def references() -> list[tuple[str, int, re.Match[str]]]:
    found = []
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            found += [(doc.relative_to(REPO).as_posix(), number, m) for m in REFERENCE.finditer(line)]
    return found


def test_every_test_the_docs_name_exists():
    refs = references()
    assert len(refs) > 100, "the docs name their proofs; far fewer references than that means the pattern broke"
    broken = [f"{doc}:{line}: {m.group(0)}: {why}" for doc, line, m in refs if (why := problem(m)) is not None]
    assert not broken, "rename the reference to the test's current name:\n" + "\n".join(broken)


def test_a_renamed_test_is_caught():
    """The check itself: a made-up name in a real file, a prefix nothing starts with, a missing file."""
    real = next(iter(files_by_name()))
    for text in (f"{real}::test_that_was_renamed", f"{real}::zz_no_such_prefix…", "tests/unit/test_never_was.py"):
        match = REFERENCE.search(text)
        assert match is not None and problem(match) is not None, text
    assert problem(REFERENCE.search("test_docs_name_real_tests.py::test_a_renamed_test_is_caught")) is None  # type: ignore[arg-type]
    assert problem(REFERENCE.search("test_docs_name_real_tests.py::test_a_renamed…")) is None  # type: ignore[arg-type]
