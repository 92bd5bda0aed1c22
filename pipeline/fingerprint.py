"""A unit's fingerprint: a hash of everything its gate result depends on.

That is the unit's own folder (a day's, or the capstone's), the days it imports (``days.NNN`` anywhere in its Python
files, followed transitively), the shared verification library ``checks/`` (without its own
tests), the root ``conftest.py``, and the pinned dependencies in ``pyproject.toml``. When the
fingerprint differs from the ledger's, the unit's recorded result no longer speaks for its files:
``invoke publish`` gates it again, and until then it is ``stale``.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

from .project import Project, UnitKey

__all__ = ["day_dependencies", "strength_fingerprint", "unit_fingerprint"]

_IGNORED_DIRS = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints", "wandb"}
_IGNORED_SUFFIXES = {".pyc", ".pyo"}
_DAY_IMPORT = re.compile(r"""days[./](\d{3})\b""")


def _files(folder: Path, skip_dirs: set[str] = frozenset()) -> list[Path]:
    if not folder.exists():
        return []
    out = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part in _IGNORED_DIRS or part in skip_dirs for part in rel.parts[:-1]):
            continue
        if path.is_file() and path.suffix not in _IGNORED_SUFFIXES and path.name not in _IGNORED_DIRS:
            out.append(path)
    return sorted(out)


def day_dependencies(project: Project, key: UnitKey) -> list[int]:
    """The days that a unit imports, transitively (sorted, without the unit itself)."""
    seen: set[int] = set()
    todo: list[UnitKey] = [key]
    while todo:
        current = todo.pop()
        for path in _files(project.unit_dir(current)):
            if path.suffix != ".py":
                continue
            for match in _DAY_IMPORT.finditer(path.read_text(encoding="utf-8", errors="replace")):
                dep = int(match.group(1))
                if dep != key and dep not in seen and project.day_exists(dep):
                    seen.add(dep)
                    todo.append(dep)
    return sorted(seen)


def _pinned_dependencies(project: Project) -> bytes:
    path = project.root / "pyproject.toml"
    if not path.exists():
        return b""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return repr(data.get("project", {}).get("dependencies", [])).encode()


def _is_test_file(path: Path) -> bool:
    return path.name == "conftest.py" or (path.name.startswith("test_") and path.suffix == ".py")


def unit_fingerprint(project: Project, key: UnitKey, *, dependency_tests: bool = True) -> str:
    """sha256 over the relative paths and bytes of everything the unit's gate depends on.

    With ``dependency_tests=False`` the test files of the days it imports are left out, unless the unit's own
    code names one (``days.063.test_fourier``): see ``strength_fingerprint``."""
    digest = hashlib.sha256()
    own = [(project.unit_rel(key), project.unit_dir(key), set())]
    roots: list[tuple[str, Path, set[str]]] = own + [(f"days/{d:03d}", project.day_dir(d), set())
                                                     for d in day_dependencies(project, key)]
    roots.append(("checks", project.root / "checks", {"tests"}))
    own_code = "" if dependency_tests else "\n".join(
        p.read_text(encoding="utf-8", errors="replace") for p in _files(project.unit_dir(key)) if p.suffix == ".py")
    for label, folder, skip in roots:
        for path in _files(folder, skip):
            if (not dependency_tests and label.startswith("days/") and label != own[0][0] and _is_test_file(path)
                    and f"{label}/{path.stem}".replace("/", ".") not in own_code.replace("/", ".")):
                continue
            digest.update(f"{label}/{path.relative_to(folder).as_posix()}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    conftest = project.root / "conftest.py"
    if conftest.exists():
        digest.update(b"conftest.py\0" + conftest.read_bytes())
    digest.update(b"pyproject:dependencies\0" + _pinned_dependencies(project))
    return "sha256:" + digest.hexdigest()


def strength_fingerprint(project: Project, day: int) -> str:
    """What a gate-strength measurement (``invoke mutate``) depends on: the unit fingerprint without the tests of
    the days it imports. A day's gate runs its own tests on its own code and imports earlier days' code, never
    their tests, so a test added to day 018 leaves day 019's measurement standing (day 019 is still re-gated)."""
    return unit_fingerprint(project, day, dependency_tests=False)
