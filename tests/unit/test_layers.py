"""The import rules of sevisflow's layers, enforced.

    sevisflow.app        CLI, runner, demo, audit: may import anything below
    sevisflow.deploy     local stack, reference SIS: imports the stages and the core, never the app
    sevisflow.connectors | sevisflow.processors | sevisflow.sinks: the core and themselves, not each other
    sevisflow.core       imports nothing above it

plus: stages are imported only as ``sevisflow.*`` (never the top-level ``processors``...), the product
never imports ``tests/``, ``testkit/`` (made-up data shared by tests and benchmarks) or ``bench/``, and
``bench/`` and ``testkit/`` never import ``tests/``.

The contracts live in pyproject.toml (``[tool.importlinter]``, listed in CONTRIBUTING.md) and
import-linter checks them: its graph (grimp) holds every import statement, those inside functions and
under ``if TYPE_CHECKING:`` included, and a layer is broken by an indirect chain too. What a graph of
import statements cannot see is an import by name (``importlib.import_module("...")``, ``python -m``):
the AST checks at the end cover those.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"

# which sevisflow layers a layer may import by name (the same rule as the layers contract)
MAY_IMPORT = {
    "core": {"core"},
    "connectors": {"core", "connectors"},
    "processors": {"core", "processors"},
    "sinks": {"core", "sinks"},
    "deploy": {"core", "connectors", "processors", "sinks", "deploy", "schemas"},
}
LEGACY = {"connectors", "processors", "sinks", "deploy"}  # top-level folders, reachable only as sevisflow.*
NOT_PRODUCT = {"tests", "testkit", "bench"}


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter with ``cwd``'s pyproject.toml, in a fresh interpreter.

    A fresh one because import-linter finds the root packages through ``sys.path`` (cwd first): in
    this process ``tests`` is already imported and would shadow a scratch project's own ``tests``.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", LINT], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_import_contracts_hold() -> None:
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, f"an import breaks a layer contract:\n{proc.stdout}{proc.stderr}"
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert f"Contracts: {len(contracts)} kept, 0 broken." in proc.stdout


def test_the_graph_sees_the_linked_stages() -> None:
    """The stage folders are symlinks into sevisflow/: the contracts mean nothing if the graph skipped them."""
    import grimp

    graph = grimp.build_graph("sevisflow", cache_dir=None)
    for module in (
        "sevisflow.connectors.postgres.snapshot",
        "sevisflow.processors.batcher.core",
        "sevisflow.processors.sevis_events.derive",
        "sevisflow.sinks.xml.render",
        "sevisflow.deploy.local.stack",
        "sevisflow.core.kafka_io",
        "sevisflow.app.runner",
    ):
        assert module in graph.modules, f"{module} is not in the import graph"
    # and the imports of a linked module are read: the batcher's stage imports the core
    assert "sevisflow.core.kafka_io" in graph.find_modules_directly_imported_by("sevisflow.processors.batcher.stage")


# A scratch project shaped like sevisflow, with one breach of each contract; the contracts are the real
# ones from pyproject.toml with the package renamed, so they are shown to catch what they claim to.
SCRATCH = {
    "fakeflow/core/base.py": "def later():\n    from fakeflow.app import main  # an import inside a function\n",
    "fakeflow/core/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fakeflow.sinks import out\n",
    "fakeflow/app/main.py": "import testkit.data\n",
    "fakeflow/processors/proc.py": "from fakeflow.sinks import out\n",
    "fakeflow/sinks/out.py": "import processors.proc\n",
    "fakeflow/deploy/dep.py": "import fakeflow.app.main\n",
    "fakeflow/connectors/src.py": "from tests.helper import Y\n",
    "fakeflow/extra/__init__.py": "",
    "tests/helper.py": "Y = 2\n",
    "testkit/data.py": "from tests import helper\n",
    "bench/run.py": "from tests import helper\n",
}
EXPECTED_BREACHES = [
    "fakeflow.core.base -> fakeflow.app.main (l.2)",
    "fakeflow.core.typed -> fakeflow.sinks.out (l.3)",
    "fakeflow.processors.proc -> fakeflow.sinks.out (l.1)",
    "fakeflow.deploy.dep -> fakeflow.app.main (l.1)",
    "fakeflow.sinks.out -> processors (l.1)",
    "fakeflow.connectors.src -> tests.helper (l.1)",
    "bench.run -> tests.helper (l.1)",
    "fakeflow.app.main -> testkit.data (l.1)",
    "testkit.data -> tests.helper (l.1)",
    "- fakeflow.extra",  # exhaustive: a new folder in sevisflow/ must be given a layer
]


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _renamed(value: object) -> object:
    if isinstance(value, str):
        return "fakeflow" if value == "sevisflow" else value
    if isinstance(value, list):
        return [_renamed(v) for v in value]
    return value


def test_each_contract_catches_its_breach(tmp_path: Path) -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = ["[tool.importlinter]"]
    lines += [f"{k} = {_toml(_renamed(v))}" for k, v in config.items() if k != "contracts"]
    for contract in config["contracts"]:
        lines += ["", "[[tool.importlinter.contracts]]"]
        lines += [f"{k} = {_toml(_renamed(v))}" for k, v in contract.items()]
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    layers = ("core", "app", "deploy", "connectors", "processors", "sinks")
    for name in (*_renamed(config["root_packages"]), *(f"fakeflow/{layer}" for layer in layers)):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / name / "__init__.py").touch()
    for rel, text in SCRATCH.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)

    proc = lint_imports(tmp_path)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"Contracts: 0 kept, {len(config['contracts'])} broken." in proc.stdout, proc.stdout
    missing = [b for b in EXPECTED_BREACHES if b not in proc.stdout]
    assert not missing, f"not reported: {missing}\n{proc.stdout}"


# ----------------------------------------------------------------------------- imports by name


def _product_files(layer: str) -> Iterator[Path]:
    top = ROOT / "sevisflow" / layer
    for folder, _, files in os.walk(top, followlinks=True):
        yield from (Path(folder) / f for f in sorted(files) if f.endswith(".py"))


def _literal_prefix(node: ast.expr) -> str | None:
    """The module name a string names, or the literal start of an f-string; None if not literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        head = node.values[0] if node.values else None
        if isinstance(head, ast.Constant) and isinstance(head.value, str):
            return head.value
    return None


NAME_HINTS = ('"-m"', "'-m'", "import_module", "__import__", "find_spec")


def _names_imported_by_name(path: Path) -> list[tuple[int, str, str | None]]:
    text = path.read_text()
    if not any(hint in text for hint in NAME_HINTS):
        return []  # most files: no need to parse them
    return list(imports_by_name(ast.parse(text, str(path))))


def imports_by_name(tree: ast.AST) -> Iterator[tuple[int, str, str | None]]:
    """(line, "import" or "run", module name or None when computed) of each ``import_module``,
    ``__import__`` or ``find_spec`` call, and of each ``-m NAME`` in a list or tuple literal (a process
    started with ``python -m``: a process boundary, not an import, so only its name is checked)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__", "find_spec"):
                yield node.lineno, "import", _literal_prefix(node.args[0])
        elif isinstance(node, ast.List | ast.Tuple):
            for flag, target in zip(node.elts, node.elts[1:]):
                if isinstance(flag, ast.Constant) and flag.value == "-m":
                    yield target.lineno, "run", _literal_prefix(target)


def _breach(layer: str | None, kind: str, target: str | None) -> str | None:
    """Why importing (or running) ``target`` by name breaks the rules for code in ``layer``
    (None: the app layer, tests, bench)."""
    if target is None:
        if layer is None or kind == "run":
            return None
        return "a computed module name: below the app layer, modules are imported by statements"
    top, _, rest = target.partition(".")
    if top in LEGACY:
        return f"the top-level name {top!r}: use sevisflow.{top}"
    if layer is not None and top in NOT_PRODUCT:
        return f"{top}/ is not part of the product"
    if layer is not None and kind == "import" and top == "sevisflow":
        below = rest.partition(".")[0]
        if below and below not in MAY_IMPORT[layer]:
            return f"sevisflow.{layer} may not import sevisflow.{below}"
    return None


def test_no_import_by_name_breaks_a_layer() -> None:
    breaches = []
    for layer in MAY_IMPORT:
        for path in _product_files(layer):
            for line, kind, target in _names_imported_by_name(path):
                if target is not None and target.partition(".")[0] not in {"sevisflow", *LEGACY, *NOT_PRODUCT}:
                    continue  # a third-party or stdlib module (find_spec("pycountry"), pg_ctl -m fast)
                why = _breach(layer, kind, target)
                if why:
                    breaches.append(f"sevisflow/{path.relative_to(ROOT / 'sevisflow')}:{line}: {why}")
    assert not breaches, "\n".join(breaches)


def test_nothing_runs_a_stage_by_its_top_level_name() -> None:
    """``python -m processors.batcher`` or ``import_module("sinks.xml")`` works only in a checkout."""
    breaches = []
    folders = [ROOT / "sevisflow" / "app", ROOT / "tests", ROOT / "testkit", ROOT / "bench"]
    for top in folders:
        for path in sorted(top.rglob("*.py")):
            for line, kind, target in _names_imported_by_name(path):
                if target is not None and target.partition(".")[0] in LEGACY:
                    breaches.append(f"{path.relative_to(ROOT)}:{line}: {_breach(None, kind, target)}")
    assert not breaches, "\n".join(breaches)


def test_the_name_checks_see_a_breach() -> None:
    code = (
        "import importlib, subprocess, sys\n"
        'importlib.import_module("sevisflow.app.cli")\n'
        'importlib.import_module(f"sevisflow.sinks.{name}")\n'
        "__import__(name)\n"
        'subprocess.run([sys.executable, "-m", f"processors.{stage}"])\n'
        'importlib.util.find_spec("tests.helpers")\n'
        'importlib.import_module("sevisflow.core.log")\n'
        'subprocess.run([sys.executable, "-m", "sevisflow.app.cli"])\n'
    )
    found = [(line, _breach("processors", kind, target)) for line, kind, target in imports_by_name(ast.parse(code))]
    assert sorted(found) == [
        (2, "sevisflow.processors may not import sevisflow.app"),
        (3, "sevisflow.processors may not import sevisflow.sinks"),
        (4, "a computed module name: below the app layer, modules are imported by statements"),
        (5, "the top-level name 'processors': use sevisflow.processors"),
        (6, "tests/ is not part of the product"),
        (7, None),
        (8, None),  # running the CLI in a child process is not an import
    ]
