"""Gate strength: how many single-line breaks of a day's exercises its own gate catches.

A practice copy is only worth doing if the gate catches a wrong solution. ``measure_gate_strength``
makes *mutants* of the day's exercise functions (practice mode's rule, ``pipeline/practice.py``): one
changed operator, comparison, boolean, sign or constant on one line, made with libcst so that every
other byte stays the reference's. It runs the gate on each mutant (a copy of the day in
``practice/_mutants_NNN/``, forked from a warm gate server, stopping at the first failure) and counts
a mutant *caught* when the gate fails, errors or times out. The survivors are listed (file, line, the
change) for the author to judge: a missing test, or an equivalent mutant (one that computes the same
thing). Results are cached in ``.gate/mutants/NNN.json`` by the day's fingerprint, and ``record``
writes ``caught``/``total`` with that fingerprint into the ledger, where the post's Verified box
reads it while the fingerprint is current.

An author's verdict that a survivor is equivalent goes into ``equivalent_mutants.yml`` at the project's root,
with the reason a reviewer can check. A verdict names the line by its text, not its number, so an edit to that
line voids it (it is then reported as unused); ``record`` writes how many survivors it matches beside the count,
and the Verified box reports the share of non-equivalent breaks caught. The file is outside every fingerprint on
purpose: judging a survivor changes no day, so it needs no new measurement (``invoke mutate N`` re-records from
the cache).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import libcst as cst
import yaml
from libcst.metadata import MetadataWrapper, PositionProvider

from pipeline import ledger as ledger_io
from pipeline.fingerprint import strength_fingerprint
from pipeline.gate import GateProcesses, GateServer
from pipeline.practice import Exercise, PracticeError, find_exercises, retarget
from pipeline.project import Project, day_dir_name, parse_day

DEFAULT_LIMIT = 25
SEED = 20261207
JUDGEMENTS_FILE = "equivalent_mutants.yml"
_JUDGEMENT_KEYS = ("day", "module", "qualname", "change", "code", "why")

_BINARY = {cst.Add: cst.Subtract, cst.Subtract: cst.Add, cst.Multiply: cst.Divide, cst.Divide: cst.Multiply,
           cst.FloorDivide: cst.Multiply, cst.Modulo: cst.FloorDivide, cst.Power: cst.Multiply}
_AUGMENTED = {cst.AddAssign: cst.SubtractAssign, cst.SubtractAssign: cst.AddAssign,
              cst.MultiplyAssign: cst.DivideAssign, cst.DivideAssign: cst.MultiplyAssign}
_COMPARE = {cst.LessThan: cst.LessThanEqual, cst.LessThanEqual: cst.LessThan, cst.GreaterThan: cst.GreaterThanEqual,
            cst.GreaterThanEqual: cst.GreaterThan, cst.Equal: cst.NotEqual, cst.NotEqual: cst.Equal,
            cst.Is: cst.IsNot, cst.IsNot: cst.Is, cst.In: cst.NotIn, cst.NotIn: cst.In}
_BOOLEAN = {cst.And: cst.Or, cst.Or: cst.And}
_SYMBOL = {cst.Add: "+", cst.Subtract: "-", cst.Multiply: "*", cst.Divide: "/", cst.FloorDivide: "//",
           cst.Modulo: "%", cst.Power: "**", cst.AddAssign: "+=", cst.SubtractAssign: "-=", cst.MultiplyAssign: "*=",
           cst.DivideAssign: "/=", cst.LessThan: "<", cst.LessThanEqual: "<=", cst.GreaterThan: ">",
           cst.GreaterThanEqual: ">=", cst.Equal: "==", cst.NotEqual: "!=", cst.Is: "is", cst.IsNot: "is not",
           cst.In: "in", cst.NotIn: "not in", cst.And: "and", cst.Or: "or"}


@dataclass(frozen=True)
class Mutant:
    module: str
    qualname: str
    line: int
    change: str      # e.g. "`+` → `-`"
    index: int       # the candidate's position in the module's traversal order


def _swap(node, table):
    """The operator node of the other kind, keeping the reference's whitespace around it."""
    new_type = table[type(node)]
    kwargs = {k: getattr(node, k) for k in ("whitespace_before", "whitespace_after", "whitespace_between")
              if hasattr(node, k) and k in new_type.__dataclass_fields__}
    if new_type in (cst.IsNot, cst.NotIn) and "whitespace_between" not in kwargs:
        kwargs["whitespace_between"] = cst.SimpleWhitespace(" ")
    return new_type(**kwargs)


def _mutation(node: cst.CSTNode) -> tuple[cst.CSTNode, str] | None:
    """The one mutation this project makes of a node, if any: (the new node, a description)."""
    if isinstance(node, cst.BinaryOperation) and type(node.operator) in _BINARY:
        new_op = _swap(node.operator, _BINARY)
        return node.with_changes(operator=new_op), f"`{_SYMBOL[type(node.operator)]}` → `{_SYMBOL[type(new_op)]}`"
    if isinstance(node, cst.AugAssign) and type(node.operator) in _AUGMENTED:
        new_op = _swap(node.operator, _AUGMENTED)
        return node.with_changes(operator=new_op), f"`{_SYMBOL[type(node.operator)]}` → `{_SYMBOL[type(new_op)]}`"
    if isinstance(node, cst.Comparison) and type(node.comparisons[0].operator) in _COMPARE:
        first = node.comparisons[0]
        new_op = _swap(first.operator, _COMPARE)
        return (node.with_changes(comparisons=[first.with_changes(operator=new_op), *node.comparisons[1:]]),
                f"`{_SYMBOL[type(first.operator)]}` → `{_SYMBOL[type(new_op)]}`")
    if isinstance(node, cst.BooleanOperation) and type(node.operator) in _BOOLEAN:
        new_op = _swap(node.operator, _BOOLEAN)
        return node.with_changes(operator=new_op), f"`{_SYMBOL[type(node.operator)]}` → `{_SYMBOL[type(new_op)]}`"
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, (cst.Minus, cst.Not)):
        symbol = "-" if isinstance(node.operator, cst.Minus) else "not "
        return node.expression, f"`{symbol}x` → `x`"
    if isinstance(node, cst.Integer):
        value = int(node.value.replace("_", ""), 0)
        return node.with_changes(value=str(value + 1)), f"`{node.value}` → `{value + 1}`"
    if isinstance(node, cst.Float):
        value = float(node.value.replace("_", ""))
        new = repr(value * 2 if value else 1.0)
        return node.with_changes(value=new), f"`{node.value}` → `{new}`"
    if isinstance(node, cst.Name) and node.value in ("True", "False"):
        new = "False" if node.value == "True" else "True"
        return node.with_changes(value=new), f"`{node.value}` → `{new}`"
    return None


class _Candidates(cst.CSTVisitor):
    """Every mutable node inside the exercises' bodies (docstrings and nested annotations excluded)."""

    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, qualnames: set[str]):
        self.qualnames = qualnames
        self.stack: list[str] = []
        self.inside: list[str] = []          # the exercise being walked, if any
        self.found: list[tuple[str, int, str]] = []
        self.nodes: list[cst.CSTNode] = []

    def visit_ClassDef(self, node):
        self.stack.append(node.name.value)

    def leave_ClassDef(self, node):
        self.stack.pop()

    def visit_FunctionDef(self, node):
        self.stack.append(node.name.value)
        qualname = ".".join(self.stack)
        if not self.inside and qualname in self.qualnames:
            self.inside.append(qualname)
            for statement in self._body_without_docstring(node):
                statement.visit(self)
            self.inside.pop()
            return False  # walked by hand above, without the signature and the docstring
        return True

    def leave_FunctionDef(self, node):
        self.stack.pop()

    @staticmethod
    def _body_without_docstring(node: cst.FunctionDef):
        body = list(node.body.body) if isinstance(node.body, cst.IndentedBlock) else [node.body]
        first = body[0] if body else None
        if (isinstance(first, cst.SimpleStatementLine) and len(first.body) == 1 and isinstance(first.body[0], cst.Expr)
                and isinstance(first.body[0].value, (cst.SimpleString, cst.ConcatenatedString))):
            body = body[1:]
        return body

    def on_visit(self, node: cst.CSTNode) -> bool:
        if isinstance(node, cst.Annotation):
            return False   # a type hint is not behaviour
        if self.inside and not isinstance(node, cst.FunctionDef):
            change = _mutation(node)
            if change is not None:
                line = self.get_metadata(PositionProvider, node).start.line
                self.found.append((self.inside[-1], line, change[1]))
                self.nodes.append(node)
        return super().on_visit(node)


class _Apply(cst.CSTTransformer):
    def __init__(self, target: cst.CSTNode):
        self.target = target

    def on_leave(self, original, updated):
        if original is self.target:
            return _mutation(updated)[0]
        return updated


def candidate_mutants(source: str, module: str, exercises: list[Exercise]) -> tuple[list[Mutant], list]:
    """Every single-node mutation of the exercises in ``source``: the mutants and the nodes they change."""
    wrapper = MetadataWrapper(cst.parse_module(source))
    visitor = _Candidates({e.qualname for e in exercises if e.module == module})
    wrapper.visit(visitor)
    mutants = [Mutant(module, q, line, change, i) for i, (q, line, change) in enumerate(visitor.found)]
    return mutants, [wrapper, visitor.nodes]


def apply_mutant(source: str, mutant: Mutant, exercises: list[Exercise]) -> str:
    """The module's text with this one mutation made (every other byte kept)."""
    _, (wrapper, nodes) = candidate_mutants(source, mutant.module, exercises)
    return wrapper.module.visit(_Apply(nodes[mutant.index])).code


def choose(mutants: list[Mutant], limit: int, seed: int = SEED) -> list[Mutant]:
    """At most one mutant per line (the first on it), then at most ``limit`` of those, drawn with a fixed seed."""
    per_line: dict[tuple[str, int], Mutant] = {}
    for m in mutants:
        per_line.setdefault((m.module, m.line), m)
    chosen = list(per_line.values())
    if len(chosen) > limit:
        chosen = random.Random(seed).sample(chosen, limit)
    return sorted(chosen, key=lambda m: (m.module, m.line))


def all_mutants(project: Project, day: int) -> list[Mutant]:
    folder = project.day_dir(day)
    exercises = find_exercises(folder)
    out: list[Mutant] = []
    for module in sorted({e.module for e in exercises}):
        out += candidate_mutants((folder / module).read_text(encoding="utf-8"), module, exercises)[0]
    return out


# ---------------------------------------------------------------------------------------------------- measuring


def _cache_path(project: Project, day: int) -> Path:
    return project.gate_cache_dir / "mutants" / f"{day_dir_name(day)}.json"


def cached(project: Project, day: int) -> dict | None:
    path = _cache_path(project, day)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def measure_gate_strength(project: Project, day, limit: int = DEFAULT_LIMIT, *, force: bool = False,
                          progress: Callable[[int, int, Mutant, bool], None] | None = None) -> dict:
    """Run the day's gate on up to ``limit`` mutants; cached by the day's fingerprint and the limit."""
    number = parse_day(day)
    if not project.day_exists(number):
        raise PracticeError(f"days/{day_dir_name(number)} does not exist yet: there is nothing to mutate")
    fingerprint = strength_fingerprint(project, number)
    previous = cached(project, number)
    if not force and previous and previous["fingerprint"] == fingerprint and previous["limit"] == limit:
        return previous | {"from_cache": True}
    exercises = find_exercises(project.day_dir(number))
    chosen = choose(all_mutants(project, number), limit)
    copy = project.root / "practice" / f"_mutants_{day_dir_name(number)}"
    shutil.rmtree(copy, ignore_errors=True)
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(project.day_dir(number), copy, ignore=shutil.ignore_patterns("__pycache__"))
    mapping = {number: f"practice._mutants_{day_dir_name(number)}"}
    init = copy.parent / "__init__.py"
    if not init.exists():
        init.write_text('"""Practice copies of days (generated by `invoke practice`; not tracked)."""\n')
    for path in copy.glob("*.py"):
        path.write_text(retarget(path.read_text(encoding="utf-8"), mapping), encoding="utf-8")
    originals = {p.name: p.read_text(encoding="utf-8") for p in copy.glob("*.py")}
    processes = GateProcesses()
    server = GateServer(project, processes)
    start = time.perf_counter()
    survivors, outcomes = [], []
    try:
        args = [str(copy.relative_to(project.root)), "-x", "-q", "-p", "no:cacheprovider"]
        status, baseline, output = server.run(args, server.folder / "baseline.log", timeout=900)
        if status != 0:
            raise PracticeError(f"day {number}'s gate fails before any mutation (exit {status}): "
                                f"{output.strip().splitlines()[-1] if output.strip() else 'no output'}")
        timeout = max(60.0, 3 * baseline)
        for i, mutant in enumerate(chosen):
            path = copy / mutant.module
            path.write_text(apply_mutant(originals[mutant.module], mutant, exercises), encoding="utf-8")
            try:
                status, wall, _ = server.run(args, server.folder / f"mutant-{i}.log", timeout=timeout)
            finally:
                path.write_text(originals[mutant.module], encoding="utf-8")
            caught = status != 0
            outcomes.append({**asdict(mutant), "caught": caught, "exit_status": status, "seconds": round(wall, 2)})
            if not caught:
                survivors.append(asdict(mutant))
            if progress:
                progress(i + 1, len(chosen), mutant, caught)
    finally:
        server.close()
        shutil.rmtree(copy, ignore_errors=True)
    result = {"day": number, "fingerprint": fingerprint, "limit": limit,
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "candidates": len(all_mutants(project, number)), "total": len(chosen),
              "caught": len(chosen) - len(survivors), "survivors": survivors, "mutants": outcomes,
              "baseline_seconds": round(baseline, 2), "seconds": round(time.perf_counter() - start, 1)}
    path = _cache_path(project, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


@dataclass(frozen=True)
class Judgement:
    """An author's verdict that one surviving mutant computes the same thing as the reference."""
    day: int
    module: str
    qualname: str
    change: str   # as the survivor lists it, e.g. "`<` → `<=`"
    code: str     # the reference's line, stripped: the verdict holds only while the line reads so
    why: str      # the argument a reviewer can check


def load_judgements(project: Project) -> list[Judgement]:
    """The verdicts in ``equivalent_mutants.yml`` (none when the file does not exist); a malformed file or entry
    is a clear error naming it."""
    path = project.root / JUDGEMENTS_FILE
    if not path.exists():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except yaml.YAMLError as error:
        raise PracticeError(f"{JUDGEMENTS_FILE} is not valid YAML: {error}") from None
    if not isinstance(data, list):
        raise PracticeError(f"{JUDGEMENTS_FILE} must be a list of verdicts, got {type(data).__name__}")
    out = []
    for i, item in enumerate(data, 1):
        if not (isinstance(item, dict) and set(item) == set(_JUDGEMENT_KEYS)
                and isinstance(item["day"], int) and not isinstance(item["day"], bool)
                and all(isinstance(item[k], str) and item[k].strip() for k in _JUDGEMENT_KEYS[1:])):
            raise PracticeError(f"{JUDGEMENTS_FILE}, entry {i}: needs exactly {', '.join(_JUDGEMENT_KEYS)} (day a "
                                f"number, the others non-empty text), got {item!r}")
        out.append(Judgement(**{k: item[k] for k in _JUDGEMENT_KEYS}))
    return out


def judge_survivors(project: Project, result: dict) -> tuple[list[dict], list[dict], list[Judgement]]:
    """The survivors judged equivalent (each with its ``why``), the survivors still open (a missing test until
    someone shows otherwise), and the day's verdicts that match no survivor (the line changed, or the gate now
    catches the mutant). Lines are read from the day's files: call it only while they are the measured ones."""
    day = result["day"]
    verdicts = [j for j in load_judgements(project) if j.day == day]
    texts: dict[str, list[str]] = {}

    def code(survivor: dict) -> str | None:
        path = project.day_dir(day) / survivor["module"]
        if survivor["module"] not in texts:
            texts[survivor["module"]] = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        lines = texts[survivor["module"]]
        return lines[survivor["line"] - 1].strip() if 0 < survivor["line"] <= len(lines) else None

    equivalent, still_open, used = [], [], set()
    for s in result["survivors"]:
        key = (s["module"], s["qualname"], s["change"], code(s))
        match = next((j for j in verdicts if (j.module, j.qualname, j.change, j.code) == key), None)
        if match:
            equivalent.append(s | {"why": match.why})
            used.add(match)
        else:
            still_open.append(s)
    return equivalent, still_open, [j for j in verdicts if j not in used]


def record(project: Project, result: dict) -> bool:
    """Write caught/total (with the fingerprint they were measured on, and how many survivors are judged
    equivalent) into the ledger; False if the day changed since (the measurement is then not recorded)."""
    day = result["day"]
    if strength_fingerprint(project, day) != result["fingerprint"]:
        return False
    equivalent, _, _ = judge_survivors(project, result)
    ledger = ledger_io.load(project.ledger_path)
    ledger[day].gate_strength = {"caught": result["caught"], "total": result["total"],
                                 "fingerprint": result["fingerprint"]}
    if equivalent:
        ledger[day].gate_strength["equivalent"] = len(equivalent)
    ledger_io.save(ledger, project.ledger_path)
    return True
