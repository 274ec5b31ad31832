"""Build sevisflow's wheel the way a release would, and install it into a fresh virtual environment.

The wheel is built from a copy of what a fresh clone holds (git's tracked and not-ignored files), not
from the working tree: a working tree's ``build/`` folder keeps files deleted from the sources, and
``pip wheel .`` would ship them. Builds are cached by the content of that copy, and the wheels of
sevisflow's dependencies are kept in a local wheelhouse, so a re-run with unchanged sources builds
and downloads nothing. A plain module (not a test module).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sevisflow.deploy.local.stack import cache_dir
from tests.helpers import REPO

_SKIP_DIRS = {
    ".git",
    ".venv",
    ".local",
    "build",
    "dist",
    "__pycache__",
    ".hypothesis",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".import_linter_cache",
}


def source_files(repo: Path = REPO) -> list[str]:
    """The repository's files as a clone of it would hold them (sorted relative paths)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=repo,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        names = {n for n in out.decode().split("\0") if n}
    except (OSError, subprocess.CalledProcessError):  # no git, or not a checkout: walk, minus caches
        names = set()
        for root, dirs, files in os.walk(repo):
            dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
            rel = Path(root).relative_to(repo)
            names.update((rel / f).as_posix() for f in files + [d for d in dirs if (Path(root) / d).is_symlink()])
    return sorted(n for n in names if os.path.lexists(repo / n))  # a deleted tracked file is not in a clone


def copy_sources(dest: Path, repo: Path = REPO) -> str:
    """Copy the sources to ``dest`` (links stay links); return the sha256 of what was copied."""
    digest = hashlib.sha256(f"{sys.version_info[:2]}".encode())
    for name in source_files(repo):
        src, dst = repo / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        digest.update(name.encode() + b"\0")
        if src.is_symlink():
            target = os.readlink(src)
            os.symlink(target, dst)
            digest.update(b"link:" + target.encode())
        elif src.is_file():
            shutil.copy2(src, dst)
            digest.update(src.read_bytes())
    return digest.hexdigest()


def pip_wheel(src: Path, out: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``pip wheel`` of the sources in ``src`` into ``out``, verbose (the compiler's lines in the output)."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), str(src)],
        cwd=src.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


BUILD_LOG = "build.log"


def build_log(wheel: Path) -> str:
    """The end of pip's output for a wheel :func:`build_wheel` made (the compiler's lines, setup.py's notes)."""
    log = wheel.with_name(BUILD_LOG)
    return log.read_text()[-6000:] if log.exists() else "(no build log)"


def build_wheel() -> Path:
    """sevisflow's wheel for the current sources (built once per content, then taken from the cache)."""
    with tempfile.TemporaryDirectory(prefix="sevisflow-src-") as tmp:
        src = Path(tmp) / "src"
        key = copy_sources(src)[:20]
        out = cache_dir() / "wheels" / key
        found = sorted(out.glob("sevisflow-*.whl"))
        if found:
            return found[0]
        building = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=_mkdir(cache_dir() / "wheels")))
        proc = pip_wheel(src, building)
        assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        (building / BUILD_LOG).write_text(proc.stdout + proc.stderr)  # what a test that finds a part missing shows
        if out.exists():  # another session built the same sources meanwhile
            shutil.rmtree(building, ignore_errors=True)
        else:
            os.replace(building, out)
        _prune(out.parent, keep=5)
        (wheel,) = out.glob("sevisflow-*.whl")
        return wheel


def _prune(folder: Path, keep: int) -> None:
    """Drop all but the ``keep`` newest cached builds (every edit of the sources makes a new one)."""
    builds = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def wheelhouse() -> Path:
    """Where the wheels of sevisflow's dependencies are kept between runs."""
    return _mkdir(cache_dir() / "wheelhouse")


def fresh_venv(wheel: Path, where: Path) -> Path:
    """A new virtual environment at ``where`` (no pip, no access to this one) with ``wheel`` and its
    dependencies installed; returns its ``bin`` folder. Dependencies come from the local wheelhouse;
    when it lacks one, pip downloads what the wheel requires into it first."""
    subprocess.run([_base_python(), "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    install = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "-q",
        "--no-compile",
        "--no-index",
        "--find-links",
        str(wheelhouse()),
        str(wheel),
    ]
    proc = subprocess.run(install, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:  # first run, or a dependency changed: fetch what the wheel requires
        fetch = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "-d", str(wheelhouse()), str(wheel)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert fetch.returncode == 0, f"pip download failed:\n{fetch.stderr[-4000:]}"
        for own in wheelhouse().glob("sevisflow-*.whl"):
            own.unlink()
        proc = subprocess.run(install, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"installing the wheel failed:\n{proc.stderr[-4000:]}"
    return where / "bin"


def _base_python() -> str:
    """The interpreter this test venv was made from (a venv made from a venv would point at it anyway)."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return str(base) if base.exists() else sys.executable
