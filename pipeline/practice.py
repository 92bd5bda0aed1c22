"""Practice mode: a day's implementation with its exercises emptied, graded by the day's own gate.

``make_practice`` writes a copy of ``days/NNN/`` (``practice/NNN/`` by default) in which the body of every
*exercise* is replaced by its docstring and ``raise NotImplementedError("Day N: <first docstring line>")``.
Everything else is the reference's text, byte for byte (the copy is made with libcst, a concrete syntax tree
that keeps comments and layout): imports, constants, dataclasses, signatures with their shape annotations,
docstrings, helpers, and the tests, unchanged.

Which functions are exercises is a rule on the source, not a guess:

- a public top-level function (no leading underscore, not a pytest fixture) of an implementation module (a
  ``.py`` file of the day that is not a test, ``conftest.py`` or ``__init__.py``) that the gate's tests
  mention (the tests that run by default, not the ``slow`` ones: directly, or through the fixtures, helpers
  and tables of their test module), or
- a public method of a public top-level class whose name the tests mention, or the class's ``forward`` (its
  ``__call__`` when it has no ``forward``) when the tests mention the class;

except a name listed in the module's ``PRACTICE_KEEP`` (the author's opt-out), ``run_experiment`` (the
experiment, not an exercise), and a function the module calls at import time (emptying it would break the
import).

A day's practice copy imports the reference of earlier days (``days.031``) unless the learner asks for their
own copy of a day with ``use_mine`` (``practice.031``); its references to itself point at the copy.

``check_practice`` runs the gate on the copy and makes a scoreboard per exercise: *not yet implemented* while
the body is still the stub; otherwise *passed* when every test that mentions the exercise (directly or through
its fixtures) passed, *failing* (those tests named) when one of them fails for a reason of its own, and
*waiting* when its only failures are other exercises' stubs raising.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

import libcst as cst

from pipeline.project import Project, day_dir_name, parse_day

MANIFEST = "practice.json"
ALWAYS_KEEP = frozenset({"run_experiment"})
CALLABLE_METHODS = ("forward", "__call__")
_STUB_RAISED = re.compile(r"NotImplementedError: (Day \d+: [^\n]*)")
_DAY_STRING = re.compile(r"^days\.(\d{3})((?:\.\w+)*)$")


class PracticeError(ValueError):
    """Bad input to practice mode: a clear message, nothing written or lost."""


@dataclass(frozen=True)
class Exercise:
    module: str          # file name in the day folder, e.g. "gpt2.py"
    qualname: str        # "attention" or "Attention.forward"
    line: int            # where the reference defines it
    summary: str         # the docstring's first line ("" if none)

    @property
    def name(self) -> str:
        return self.qualname.rsplit(".", 1)[-1]

    @property
    def class_name(self) -> str | None:
        return self.qualname.split(".")[0] if "." in self.qualname else None


@dataclass
class Scoreboard:
    day: int
    folder: Path
    rows: list[dict] = field(default_factory=list)   # exercise, status, tests (failing ones)
    tests_passed: int = 0
    tests_failed: int = 0
    tests_skipped: int = 0
    gate_seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        out = {"passed": 0, "failing": 0, "waiting": 0, "not yet implemented": 0}
        for row in self.rows:
            out[row["status"]] += 1
        return out


# ---------------------------------------------------------------------------------------------------------- analysis


def implementation_modules(day_dir: Path) -> list[Path]:
    """The day's ``.py`` files that are not tests, ``conftest.py`` or ``__init__.py`` (sorted)."""
    return sorted(p for p in day_dir.glob("*.py")
                  if not p.name.startswith("test_") and p.name not in ("conftest.py", "__init__.py"))


def test_modules(day_dir: Path) -> list[Path]:
    return sorted(day_dir.glob("test_*.py"))


def _names_in(node: ast.AST) -> set[str]:
    """Every identifier a piece of code mentions: names, attributes, imported names, string keywords excluded."""
    out: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.alias):
            out.add((n.asname or n.name).split(".")[-1])
            out.add(n.name.split(".")[-1])
    return out


def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise PracticeError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None


def _called_at_import(tree: ast.Module) -> set[str]:
    """Names a module calls while it is imported: calls outside any def (decorators and defaults included)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                for deco in getattr(child, "decorator_list", []):
                    visit(deco)
                for default in child.args.defaults + [d for d in child.args.kw_defaults if d is not None]:
                    visit(default)
                continue
            if isinstance(child, ast.Call):
                fn = child.func
                out.add(fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else "")
            visit(child)

    visit(tree)
    return out


def _keep_list(tree: ast.Module) -> set[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PRACTICE_KEEP"
                                                for t in node.targets):
            return {ast.literal_eval(elt) for elt in node.value.elts}
    return set()


def _summary(node: ast.AST) -> str:
    doc = ast.get_docstring(node) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def _entry_point(cls: ast.ClassDef) -> str | None:
    """The method a call of the class's instances runs: ``forward`` if it has one, else ``__call__``."""
    methods = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return next((m for m in CALLABLE_METHODS if m in methods), None)


def find_exercises(day_dir: Path) -> list[Exercise]:
    """The day's exercises by the rule in this module's docstring, in file and line order."""
    mentioned: set[str] = set().union(*tests_mentioning(day_dir, include_slow=False).values())
    found: list[Exercise] = []
    for path in implementation_modules(day_dir):
        tree = _parse(path)
        skip = ALWAYS_KEEP | _keep_list(tree) | _called_at_import(tree)
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (not node.name.startswith("_") and node.name in mentioned and node.name not in skip
                        and not _fixture(node)):
                    found.append(Exercise(path.name, node.name, node.lineno, _summary(node)))
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_") and node.name not in skip:
                for item in node.body:
                    if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        continue
                    public = not item.name.startswith("_") and item.name in mentioned
                    called = item.name == _entry_point(node) and node.name in mentioned
                    if (public or called) and item.name not in skip and f"{node.name}.{item.name}" not in skip:
                        found.append(Exercise(path.name, f"{node.name}.{item.name}", item.lineno, _summary(item)))
    return found


# ---------------------------------------------------------------------------------------------------------- rewriting


def stub_message(day: int, exercise: Exercise) -> str:
    return f"Day {day}: {exercise.summary or exercise.qualname}"


class _Emptier(cst.CSTTransformer):
    """Replace the bodies of the named functions by their docstring and a NotImplementedError."""

    def __init__(self, targets: dict[str, str]):
        self.targets = targets          # qualname -> message
        self.stack: list[str] = []

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        self.stack.append(node.name.value)
        return True

    def leave_ClassDef(self, original, updated):
        self.stack.pop()
        return updated

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self.stack.append(node.name.value)
        return False  # nested defs are not visited: an emptied body drops them

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef):
        qualname = ".".join(self.stack)
        self.stack.pop()
        if qualname not in self.targets:
            return updated
        body = updated.body
        lines: list[cst.BaseStatement] = []
        if isinstance(body, cst.IndentedBlock) and body.body:
            first = body.body[0]
            if (isinstance(first, cst.SimpleStatementLine) and len(first.body) == 1
                    and isinstance(first.body[0], cst.Expr)
                    and isinstance(first.body[0].value, (cst.SimpleString, cst.ConcatenatedString))):
                lines.append(first)
        raise_line = cst.parse_statement(f"raise NotImplementedError({json.dumps(self.targets[qualname], ensure_ascii=False)})\n")
        indent = body.indent if isinstance(body, cst.IndentedBlock) else None
        return updated.with_changes(body=cst.IndentedBlock(body=lines + [raise_line], indent=indent))


class _RetargetDays(cst.CSTTransformer):
    """Point ``"days.NNN..."`` strings at the practice copies named in ``mapping`` (day -> module prefix)."""

    def __init__(self, mapping: dict[int, str]):
        self.mapping = mapping

    def leave_SimpleString(self, original, updated: cst.SimpleString):
        quote = updated.quote
        if updated.prefix or len(quote) != 1:
            return updated
        text = updated.value[1:-1]
        m = _DAY_STRING.match(text)
        if not m or int(m.group(1)) not in self.mapping:
            return updated
        return updated.with_changes(value=f"{quote}{self.mapping[int(m.group(1))]}{m.group(2)}{quote}")


def empty_exercises(source: str, day: int, exercises: list[Exercise]) -> str:
    """The module's text with the exercises' bodies replaced by stubs (everything else kept byte for byte)."""
    module = cst.parse_module(source)
    targets = {e.qualname: stub_message(day, e) for e in exercises}
    return module.visit(_Emptier(targets)).code


def retarget(source: str, mapping: dict[int, str]) -> str:
    if not mapping:
        return source
    return cst.parse_module(source).visit(_RetargetDays(mapping)).code


def is_stub(source: str, qualname: str, message: str) -> bool:
    """Is the function ``qualname`` in ``source`` still the generated stub (docstring + the raise)?"""
    tree = ast.parse(source)
    node = _find(tree, qualname)
    if node is None:
        return False
    body = node.body[1:] if ast.get_docstring(node) is not None else node.body
    if len(body) != 1 or not isinstance(body[0], ast.Raise):
        return False
    exc = body[0].exc
    return (isinstance(exc, ast.Call) and isinstance(exc.func, ast.Name) and exc.func.id == "NotImplementedError"
            and len(exc.args) == 1 and isinstance(exc.args[0], ast.Constant) and exc.args[0].value == message)


def _find(tree: ast.Module, qualname: str):
    parts = qualname.split(".")
    scope = tree.body
    node = None
    for part in parts:
        node = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            return None
        scope = node.body
    return node


# ---------------------------------------------------------------------------------------------------------- the copy


def practice_dir(project: Project, day: int) -> Path:
    return project.root / "practice" / day_dir_name(day)


def _module_prefix(project: Project, folder: Path) -> str:
    rel = folder.resolve().relative_to(project.root.resolve())
    return ".".join(rel.parts)


def _check_destination(project: Project, dest: Path) -> None:
    root = project.root.resolve()
    try:
        rel = dest.resolve().relative_to(root)
    except ValueError:
        raise PracticeError(f"{dest} is outside the repository: a practice copy must live inside it "
                            "(its tests import the reference days)") from None
    if not rel.parts or rel.parts[0] in ("days", "capstone", "checks", "pipeline", "site", "templates"):
        raise PracticeError(f"{dest} is inside the project's own sources: choose a folder such as practice/")
    if any(not re.fullmatch(r"\w+", part) for part in rel.parts):
        raise PracticeError(f"{dest}: every folder name must be a Python identifier or a number (it is imported)")
    if dest.exists():
        raise PracticeError(f"{dest.relative_to(root) if dest.is_relative_to(root) else dest} exists: "
                            "grade it with `invoke practice N --check`, or remove it yourself to start again "
                            "(nothing was overwritten)")


def make_practice(project: Project, day, into: Path | None = None, use_mine: tuple[int, ...] = ()) -> dict:
    """Write the practice copy of ``day``; returns its manifest (also written as practice.json)."""
    number = parse_day(day)
    src = project.day_dir(number)
    if not project.day_exists(number):
        raise PracticeError(f"days/{day_dir_name(number)} does not exist yet: there is nothing to practise")
    dest = Path(into) if into is not None else practice_dir(project, number)
    dest = dest if dest.is_absolute() else project.root / dest
    _check_destination(project, dest)
    mapping = {number: _module_prefix(project, dest)}
    for other in use_mine:
        other = parse_day(other)
        mine = practice_dir(project, other)
        if not mine.exists():
            raise PracticeError(f"--use-mine {other}: practice/{day_dir_name(other)} does not exist "
                                f"(make it with `invoke practice {other}`)")
        mapping[other] = _module_prefix(project, mine)
    exercises = find_exercises(src)
    by_module: dict[str, list[Exercise]] = {}
    for e in exercises:
        by_module.setdefault(e.module, []).append(e)

    tmp = Path(tempfile.mkdtemp(prefix=f".practice-{number:03d}-", dir=dest.parent if dest.parent.exists() else None))
    try:
        shutil.copytree(src, tmp / "copy", ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
        for path in sorted((tmp / "copy").glob("*.py")):
            text = path.read_text(encoding="utf-8")
            new = retarget(empty_exercises(text, number, by_module.get(path.name, [])), mapping)
            if new != text:
                path.write_text(new, encoding="utf-8")
        manifest = {"day": number, "source": f"days/{day_dir_name(number)}", "use_mine": sorted(mapping)[1:] if
                    len(mapping) > 1 else [], "exercises": [asdict(e) | {"message": stub_message(number, e)}
                                                          for e in exercises]}
        (tmp / "copy" / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        dest.parent.mkdir(parents=True, exist_ok=True)
        _ensure_packages(project, dest.parent)
        os.replace(tmp / "copy", dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _ensure_packages(project: Project, folder: Path) -> None:
    """Every folder between the repository root and ``folder`` is a package, so the copy imports by name."""
    root = project.root.resolve()
    current = folder.resolve()
    while current != root:
        init = current / "__init__.py"
        if not init.exists():
            init.write_text('"""Practice copies of days (generated by `invoke practice`; not tracked)."""\n')
        current = current.parent


# ---------------------------------------------------------------------------------------------------------- grading


def _load_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not folder.exists():
        raise PracticeError(f"{folder} does not exist: make it with `invoke practice N`")
    if not path.exists():
        raise PracticeError(f"{path} is missing: {folder} is not a practice copy made by `invoke practice`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PracticeError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _is_slow(decorators: list[ast.expr]) -> bool:
    """Does a decorator list (or a ``pytestmark``) carry ``pytest.mark.slow``?"""
    for deco in decorators:
        for node in ast.walk(deco):
            if isinstance(node, ast.Attribute) and node.attr == "slow":
                return True
    return False


def _fixture(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "fixture" or isinstance(n, ast.Name) and n.id == "fixture"
               for deco in getattr(node, "decorator_list", []) for n in ast.walk(deco))


def tests_mentioning(folder: Path, *, include_slow: bool = True) -> dict[str, set[str]]:
    """For each test (``file::name``, parametrized ids folded in), every identifier it reaches: its own body,
    decorators and arguments (fixtures by name), and, transitively, the module-level fixtures, helpers, classes
    and tables (``CASES = [...]``) it names."""
    out: dict[str, set[str]] = {}
    for path in test_modules(folder):
        tree = _parse(path)
        defs: dict[str, ast.AST] = {}
        tests: list[tuple[ast.FunctionDef, bool]] = []
        module_slow = False
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                tests.append((node, _is_slow(node.decorator_list)))
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                slow = _is_slow(node.decorator_list)
                tests.extend((n, slow or _is_slow(n.decorator_list)) for n in node.body
                             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test"))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defs[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            if name.id == "pytestmark":
                                module_slow = _is_slow([node.value])
                            defs[name.id] = node

        def reach(node: ast.AST) -> set[str]:
            names: set[str] = set()
            todo, seen = [node], set()
            while todo:
                current = todo.pop()
                found = _names_in(current) | {a.arg for a in ast.walk(current) if isinstance(a, ast.arg)}
                names |= found
                for name in found:
                    if name in defs and name not in seen:
                        seen.add(name)
                        todo.append(defs[name])
            return names

        for test, slow in tests:
            if include_slow or not (slow or module_slow):
                out[f"{path.name}::{test.name}"] = reach(test)
    return out


def _junit_outcomes(xml_path: Path) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
    """Per test function (``file::test``; a parametrized test fails if any case fails): its outcome (passed /
    failed / skipped) and the text of its failures; and the counts per collected case."""
    outcomes: dict[str, str] = {}
    texts: dict[str, str] = {}
    cases = {"passed": 0, "failed": 0, "skipped": 0}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")
        name = case.get("name", "").split("[")[0]
        file = next((f"{part}.py" for part in reversed(module) if part.startswith("test_")), "")
        key = f"{file}::{name}"
        bad = [el for el in (case.find("failure"), case.find("error")) if el is not None]
        state = "failed" if bad else "skipped" if case.find("skipped") is not None else "passed"
        cases[state] += 1
        if bad:
            texts[key] = texts.get(key, "") + "".join((el.get("message") or "") + (el.text or "") for el in bad)
        if outcomes.get(key) in (None, "skipped") or state == "failed":
            outcomes[key] = state if outcomes.get(key) != "passed" or state == "failed" else "passed"
    return outcomes, texts, cases


def check_practice(project: Project, day=None, folder: Path | None = None, extra_args: tuple[str, ...] = ()) -> Scoreboard:
    """Run the day's gate on a practice copy and grade each exercise."""
    if folder is None:
        folder = practice_dir(project, parse_day(day))
    folder = folder if folder.is_absolute() else project.root / folder
    manifest = _load_manifest(folder)
    for path in sorted(folder.glob("*.py")):
        _parse(path)  # a syntax error in the learner's file: a clear message, nothing touched
    board = Scoreboard(day=manifest["day"], folder=folder)
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", str(folder), "-q", "-p", "no:cacheprovider",
                        f"--junitxml={xml}", "-o", "junit_family=xunit1", *extra_args],
                       cwd=project.root, capture_output=True, text=True)
        board.gate_seconds = time.perf_counter() - start
        if not xml.exists():
            raise PracticeError(f"the gate of {folder} did not run (pytest wrote no report)")
        outcomes, texts, cases = _junit_outcomes(xml)
    board.tests_passed, board.tests_failed, board.tests_skipped = cases["passed"], cases["failed"], cases["skipped"]
    mentions = tests_mentioning(folder)
    sources = {path.name: path.read_text(encoding="utf-8") for path in folder.glob("*.py")}
    stubbed = {e["qualname"]: e["message"] for e in manifest["exercises"]
               if is_stub(sources.get(e["module"], ""), e["qualname"], e["message"])}
    for e in manifest["exercises"]:
        name = e["qualname"].rsplit(".", 1)[-1]
        key_names = {name} | ({e["qualname"].split(".")[0]} if name in CALLABLE_METHODS else set())
        tests = sorted(t for t, names in mentions.items() if names & key_names)
        failing = [t for t in tests if outcomes.get(t) == "failed"]
        # A failure that is another exercise's stub raising says nothing about this one yet.
        # (this day's or, with use_mine, an earlier day's practice copy).
        own = [t for t in failing if not any(m != e["message"] for m in _STUB_RAISED.findall(texts.get(t, "")))]
        if e["qualname"] in stubbed:
            status = "not yet implemented"
        elif own:
            status = "failing"
        elif failing:
            status = "waiting"
        else:
            status = "passed"
        board.rows.append({"exercise": f"{e['module']}:{e['qualname']}", "status": status, "tests": tests,
                           "failing": own, "waiting_on_others": sorted(set(failing) - set(own))})
    return board


def reveal(project: Project, folder: Path, qualnames: list[str] | None = None) -> list[str]:
    """Put the reference's body of each named exercise (all, by default) back into the practice copy.

    The definition's lines are replaced by the reference's own lines, so a copy with every exercise revealed is
    the reference again (its own-day imports still pointing at the copy). Returns the qualnames revealed."""
    folder = folder if folder.is_absolute() else project.root / folder
    manifest = _load_manifest(folder)
    source_dir = project.root / manifest["source"]
    wanted = [e for e in manifest["exercises"] if qualnames is None or e["qualname"] in qualnames]
    unknown = set(qualnames or []) - {e["qualname"] for e in wanted}
    if unknown:
        raise PracticeError(f"not exercises of day {manifest['day']}: {', '.join(sorted(unknown))}")
    mapping = {manifest["day"]: _module_prefix(project, folder)}
    for module in sorted({e["module"] for e in wanted}):
        path = folder / module
        text = path.read_text(encoding="utf-8")
        reference = retarget((source_dir / module).read_text(encoding="utf-8"), mapping)
        for e in sorted((e for e in wanted if e["module"] == module), key=lambda e: -e["line"]):
            text = _swap_definition(text, reference, e["qualname"])
        path.write_text(text, encoding="utf-8")
    return [e["qualname"] for e in wanted]


def _span(text: str, qualname: str) -> tuple[int, int]:
    node = _find(ast.parse(text), qualname)
    if node is None:
        raise PracticeError(f"{qualname} is no longer defined in the practice copy")
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return start - 1, node.end_lineno


def _swap_definition(text: str, reference: str, qualname: str) -> str:
    lines, ref_lines = text.splitlines(keepends=True), reference.splitlines(keepends=True)
    a, b = _span(text, qualname)
    c, d = _span(reference, qualname)
    return "".join(lines[:a] + ref_lines[c:d] + lines[b:])
