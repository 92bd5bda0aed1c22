"""Practice mode (issue 18): a day's exercises emptied, the rest kept byte for byte, graded by the day's own
gate with a scoreboard per exercise; bad input is one clear error that loses nothing the learner wrote."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import practice as P
from pipeline.project import DayNumberError, Project

REPO = Path(__file__).resolve().parents[2]

IMPLEMENTATION = '''\
"""A toy day with every kind of function the rule has to sort."""

import math

SCALE = 2.0  # a constant: kept
PRACTICE_KEEP = ("helper_kept",)


def double(x: float) -> float:
    """Twice x.

    The math: $2x$.
    """
    # a comment inside the body goes with the body
    return SCALE * x


def square(x):
    """x squared."""
    return x * x


def unmentioned(x):
    """Not mentioned by any test: kept."""
    return x


def _private(x):
    return x


def helper_kept(x):
    """Opted out by PRACTICE_KEEP."""
    return x + 1


def table(n):
    """Called while the module is imported: kept, or the copy would not import."""
    return [math.sqrt(i) for i in range(n)]


TABLE = table(4)


def run_experiment(out_dir):
    """The experiment: not an exercise."""
    return {}


class Model:
    """A model whose forward the tests reach through Model(...)."""

    def __init__(self, w):
        self.w = w

    def forward(self, x):
        """w · x."""
        return self.w * x

    def __call__(self, x):
        return self.forward(x)

    def describe(self):
        """Never mentioned: kept."""
        return "model"
'''

TESTS = '''\
import importlib

import pytest

from . import toy
from .toy import square


@pytest.fixture
def model():
    return toy.Model(3.0)


def test_double():
    """double(2) = 4."""
    assert toy.double(2) == 4


def test_square():
    """square(3) = 9."""
    assert square(3) == 9


def test_model(model):
    """Model(3)(2) = 6, through the fixture."""
    assert model(2) == 6


def test_kept_things():
    """helper_kept, _private, TABLE and the experiment work in any copy."""
    assert toy.helper_kept(1) == 2 and toy._private(5) == 5 and len(toy.TABLE) == 4
    assert toy.run_experiment(None) == {}


def test_own_day_by_name():
    """The day's module imported by its dotted name is the copy being graded, not the reference."""
    me = importlib.import_module("days.001.toy")
    assert me.double(1) == 2
'''


@pytest.fixture
def day(toy) -> Path:
    return toy.write_files(1, {"toy.py": IMPLEMENTATION, "test_toy.py": TESTS, "results.json": "{}\n"})


def test_the_rule_picks_the_exercises(day):
    """Public functions the tests mention, and forward of a class they mention, are exercises; unmentioned,
    private, opted-out, called-at-import functions and run_experiment are not."""
    names = [e.qualname for e in P.find_exercises(day)]
    assert names == ["double", "square", "Model.forward"]
    by_name = {e.qualname: e for e in P.find_exercises(day)}
    assert by_name["double"].summary == "Twice x." and by_name["Model.forward"].summary == "w · x."


def test_the_copy_differs_only_in_the_bodies(toy, day):
    """Outside the exercises' bodies the copy is the reference's text byte for byte (comments, constants,
    signatures, docstrings); each body is its docstring and the NotImplementedError naming the day; the tests
    are unchanged; putting the bodies back gives the reference again, except the own-day import."""
    manifest = P.make_practice(toy.project, 1)
    copy = toy.root / "practice" / "001"
    text = (copy / "toy.py").read_text()
    assert 'raise NotImplementedError("Day 1: Twice x.")' in text
    assert "    The math: $2x$.\n" in text and "# a comment inside the body" not in text
    assert "SCALE = 2.0  # a constant: kept\n" in text and "def square(x):\n" in text
    assert (copy / "test_toy.py").read_text() == TESTS.replace('"days.001.toy"', '"practice.001.toy"')
    assert [e["qualname"] for e in manifest["exercises"]] == ["double", "square", "Model.forward"]
    P.reveal(toy.project, copy)
    assert (copy / "toy.py").read_text() == IMPLEMENTATION


def test_the_gate_grades_each_exercise(toy, day):
    """Untouched: every test that mentions an exercise fails and every exercise is 'not yet implemented'.
    One revealed: it passes, the others do not. A wrong body: 'failing' with its test named. All revealed:
    every exercise passes, as the reference's gate does."""
    P.make_practice(toy.project, 1)
    copy = toy.root / "practice" / "001"
    board = P.check_practice(toy.project, 1)
    assert {r["status"] for r in board.rows} == {"not yet implemented"}
    assert board.tests_failed == 4 and board.tests_passed == 1  # test_kept_things needs no exercise

    P.reveal(toy.project, copy, ["square"])
    text = (copy / "toy.py").read_text()
    (copy / "toy.py").write_text(text.replace('raise NotImplementedError("Day 1: w · x.")', "return self.w + x"))
    board = P.check_practice(toy.project, 1)
    status = {r["exercise"]: r["status"] for r in board.rows}
    assert status == {"toy.py:double": "not yet implemented", "toy.py:square": "passed",
                      "toy.py:Model.forward": "failing"}
    assert next(r for r in board.rows if r["exercise"] == "toy.py:Model.forward")["failing"] == [
        "test_toy.py::test_model"]

    P.reveal(toy.project, copy)
    board = P.check_practice(toy.project, 1)
    assert board.counts()["passed"] == 3 and board.tests_failed == 0 and board.tests_passed == 5


def test_waiting_means_another_exercise_is_still_a_stub(toy):
    """An exercise whose only failing test stops at another exercise's stub is 'waiting', not 'failing'."""
    toy.write_files(2, {"chain.py": 'def first(x):\n    """x + 1."""\n    return x + 1\n\n\n'
                                  'def second(x):\n    """first(x) * 2."""\n    return first(x) * 2\n',
                       "test_chain.py": "from .chain import first, second\n\n\n"
                                        "def test_both():\n    assert first(1) == 2 and second(1) == 4\n"})
    P.make_practice(toy.project, 2)
    copy = toy.root / "practice" / "002"
    P.reveal(toy.project, copy, ["second"])
    status = {r["exercise"]: r["status"] for r in P.check_practice(toy.project, 2).rows}
    assert status == {"chain.py:first": "not yet implemented", "chain.py:second": "waiting"}


def test_use_mine_points_a_later_day_at_the_learners_copy(toy, day):
    """Day 2 importing day 1 imports the reference, or with use_mine=(1,) the learner's practice copy."""
    toy.write_files(2, {"user.py": 'import importlib\n\nT = importlib.import_module("days.001.toy")\n\n\n'
                                 'def quadruple(x):\n    """Four x."""\n    return 2 * T.double(x)\n',
                       "test_user.py": "from .user import quadruple\n\n\ndef test_q():\n    assert quadruple(1) == 4\n"})
    P.make_practice(toy.project, 2, into=toy.root / "practice" / "ref_based")
    assert '"days.001.toy"' in (toy.root / "practice/ref_based/user.py").read_text()
    with pytest.raises(P.PracticeError, match=r"--use-mine 1: practice/001 does not exist"):
        P.make_practice(toy.project, 2, use_mine=(1,))
    P.make_practice(toy.project, 1)
    P.make_practice(toy.project, 2, use_mine=(1,))
    assert '"practice.001.toy"' in (toy.root / "practice/002/user.py").read_text()
    P.reveal(toy.project, toy.root / "practice" / "002")
    status = {r["exercise"]: r["status"] for r in P.check_practice(toy.project, 2).rows}
    assert status == {"user.py:quadruple": "waiting"}  # day 1's double is still the learner's stub


@pytest.mark.parametrize("day_arg, message", [(0, "day 0 is out of range"), ("x", "day must be a number"),
                                              (42, "days/042 does not exist yet")])
def test_a_day_that_cannot_be_practised_is_a_clear_error(toy, day, day_arg, message):
    """Out of range, not a number, or not started: one error, nothing written."""
    before = toy.snapshot()
    with pytest.raises((P.PracticeError, DayNumberError), match=message):
        P.make_practice(toy.project, day_arg)
    assert toy.snapshot() == before


def test_nothing_the_learner_wrote_is_overwritten_or_lost(toy, day):
    """Making a copy where one exists refuses and changes nothing; a folder outside the repository or inside the
    project's sources is refused; a syntax error in the learner's file is reported with its line, the file kept."""
    P.make_practice(toy.project, 1)
    copy = toy.root / "practice" / "001"
    (copy / "toy.py").write_text((copy / "toy.py").read_text() + "\n# my notes\n")
    before = toy.snapshot()
    with pytest.raises(P.PracticeError, match="practice/001 exists"):
        P.make_practice(toy.project, 1)
    with pytest.raises(P.PracticeError, match="outside the repository"):
        P.make_practice(toy.project, 1, into=toy.root.parent / "elsewhere")
    with pytest.raises(P.PracticeError, match="inside the project's own sources"):
        P.make_practice(toy.project, 1, into=toy.root / "days" / "mine")
    assert toy.snapshot() == before

    broken = (copy / "toy.py").read_text().replace("def square(x):", "def square(x)")
    (copy / "toy.py").write_text(broken)
    with pytest.raises(P.PracticeError, match=r"toy\.py:\d+: syntax error"):
        P.check_practice(toy.project, 1)
    assert (copy / "toy.py").read_text() == broken
    (copy / "practice.json").unlink()
    with pytest.raises(P.PracticeError, match="not a practice copy"):
        P.check_practice(toy.project, 1)


def test_the_cli_writes_grades_and_refuses(toy, day):
    """`invoke practice 1` lists the exercises; `--check` prints the scoreboard and exits 1 until all pass;
    a second `invoke practice 1` is one red line."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ARENA_GATE")} | {"COLUMNS": "200"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "invoke", "practice", *args], cwd=toy.root,
                              capture_output=True, text=True, env=env)

    made = run("1")
    assert made.returncode == 0 and "3 exercises" in made.stdout and "toy.py:Model.forward" in made.stdout
    graded = run("1", "--check")
    assert graded.returncode == 1
    assert "Day 1: 0 of 3 exercises pass" in " ".join(graded.stdout.split())
    again = run("1")
    assert again.returncode == 1 and "error: practice/001 exists" in " ".join(again.stdout.split())
    assert "Traceback" not in again.stdout + again.stderr


REAL_DAYS = [3, 31, 60]


@pytest.mark.parametrize("number", REAL_DAYS)
def test_real_days_copy_byte_for_byte(number):
    """On real days (in memory): every implementation module, emptied and then given back the reference's
    definitions, is the reference's text exactly, and every emptied exercise compiles to the stub."""
    project = Project.at(REPO)
    folder = project.day_dir(number)
    exercises = P.find_exercises(folder)
    assert exercises, f"day {number} has no exercises"
    for path in P.implementation_modules(folder):
        mine = [e for e in exercises if e.module == path.name]
        reference = path.read_text(encoding="utf-8")
        emptied = P.empty_exercises(reference, number, mine)
        ast.parse(emptied)
        for e in mine:
            assert P.is_stub(emptied, e.qualname, P.stub_message(number, e)), e.qualname
            emptied = P._swap_definition(emptied, reference, e.qualname)
        assert emptied == reference, path


@pytest.mark.slow
def test_every_days_practice_copy_is_graded_by_its_gate(tmp_path):
    """For every day in the repository: the copy's gate collects the same tests as the reference's, and on the
    untouched copy every exercise has a failing test (the gate exercises it). Long: about as long as the suite."""
    project = Project.at(REPO)
    days = [d for d in range(1, 101) if project.day_exists(d)]
    into = REPO / "practice" / f"audit_{os.getpid()}"
    try:
        for d in days:
            P.make_practice(project, d, into=into / f"d{d:03d}")
        for d in days:
            board = P.check_practice(project, folder=into / f"d{d:03d}")
            silent = [r["exercise"] for r in board.rows if not (set(r["failing"]) | set(r["waiting_on_others"]))]
            assert board.tests_failed > 0 and not silent, f"day {d}: exercises no test fails on: {silent}"
    finally:
        import shutil
        shutil.rmtree(into, ignore_errors=True)
