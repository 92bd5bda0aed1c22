"""Gate strength (issue 18): single-line mutants of a day's exercises, the gate run on each, the count of
those it catches recorded in the ledger with the fingerprint it was measured on, shown in the Verified box."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from pipeline import ledger as L
from pipeline import mutate as M
from pipeline.fingerprint import unit_fingerprint
from pipeline.gate import run_gate
from pipeline.practice import Exercise, find_exercises
from pipeline.stage import verified_box

from .conftest import fresh_ledger_text

SOURCE = textwrap.dedent('''\
    """Every kind of break, once."""

    LIMIT = 3  # module level: never mutated


    def kinds(x: int = 1, flag=True) -> float:
        """A docstring with 1 + 2 is never mutated."""
        a = x + 1
        b = x < 2
        c = x and flag
        d = -x
        e = 0.5
        f = True
        a += 1
        g = x is None
        return a


    def not_an_exercise(x):
        return x + 1
    ''')


def test_each_kind_of_break_and_nothing_else():
    """Operators, comparisons, booleans, signs, numbers and truth values inside the exercise's body are the
    candidates, in source order; the signature, its defaults and annotations, the docstring, module-level code
    and non-exercises are not. Applying a mutant changes that one line and keeps every other byte."""
    exercises = [Exercise("m.py", "kinds", 6, "")]
    mutants, _ = M.candidate_mutants(SOURCE, "m.py", exercises)
    assert [(m.line, m.change) for m in mutants] == [
        (8, "`+` → `-`"), (8, "`1` → `2`"), (9, "`<` → `<=`"), (9, "`2` → `3`"), (10, "`and` → `or`"),
        (11, "`-x` → `x`"), (12, "`0.5` → `1.0`"), (13, "`True` → `False`"), (14, "`+=` → `-=`"), (14, "`1` → `2`"),
        (15, "`is` → `is not`")]
    for m in mutants:
        changed = M.apply_mutant(SOURCE, m, exercises).splitlines()
        original = SOURCE.splitlines()
        assert len(changed) == len(original)
        assert [i + 1 for i, (a, b) in enumerate(zip(original, changed)) if a != b] == [m.line], m
    assert M.apply_mutant(SOURCE, mutants[-1], exercises).splitlines()[14] == "    g = x is not None"


def test_one_mutant_per_line_then_a_seeded_draw():
    """At most one mutant per line (the first), at most `limit` of them, the same draw every time."""
    mutants = [M.Mutant("m.py", "f", line, f"c{i}", i) for i, line in enumerate([1, 1, 2, 3, 3, 4, 5, 6, 7, 8])]
    per_line = M.choose(mutants, 100)
    assert [m.line for m in per_line] == [1, 2, 3, 4, 5, 6, 7, 8] and per_line[0].change == "c0"
    drawn = M.choose(mutants, 3)
    assert len(drawn) == 3 and drawn == M.choose(mutants, 3) and {m.line for m in drawn} <= set(range(1, 9))


DAY = textwrap.dedent('''\
    def double(x):
        """Twice x."""
        return 2 * x


    def clip(x, lo=0):
        """x, or lo when x is below it."""
        if x < lo:
            return lo
        return x
    ''')

GATE = textwrap.dedent('''\
    from .toy import clip, double


    def test_double():
        assert double(3) == 6


    def test_clip():
        assert clip(-1) == 0 and clip(3) == 3
    ''')


def test_gate_strength_is_measured_cached_recorded_and_shown(toy):
    """On a toy day: `2 * x` → `2 / x` is caught, `x < lo` → `x <= lo` survives (an equivalent mutant: at x = lo
    both return lo). The measurement is cached by fingerprint, recorded in the ledger, shown in the Verified box
    while the fingerprint is current; a changed day is measured again and a stale measurement is not recorded."""
    folder = toy.write_files(1, {"toy.py": DAY, "test_toy.py": GATE})
    result = M.measure_gate_strength(toy.project, 1)
    assert (result["caught"], result["total"]) == (1, 2)
    assert [(s["qualname"], s["line"], s["change"]) for s in result["survivors"]] == [("clip", 8, "`<` → `<=`")]
    assert (folder / "toy.py").read_text() == DAY and not (toy.root / "practice" / "_mutants_001").exists()
    again = M.measure_gate_strength(toy.project, 1)
    assert again["from_cache"] and again["caught"] == 1

    assert M.record(toy.project, result)
    entry = toy.ledger()[1]
    assert entry.gate_strength == {"caught": 1, "total": 2, "fingerprint": unit_fingerprint(toy.project, 1)}
    gate = run_gate(toy.project, 1, unit_fingerprint(toy.project, 1))
    box = verified_box(toy.project, entry, gate)
    assert "Gate strength: 1 of 2 single-line breaks of the exercises caught (`invoke mutate 1`)." in box
    assert "`invoke practice 1`" in box

    (folder / "test_toy.py").write_text(GATE + "\n\ndef test_clip_edge():\n    assert clip(0, lo=0) == 0\n")
    assert not M.record(toy.project, result)                           # measured on another fingerprint
    stale_gate = run_gate(toy.project, 1, unit_fingerprint(toy.project, 1))
    assert "Gate strength" not in verified_box(toy.project, toy.ledger()[1], stale_gate)
    assert not M.measure_gate_strength(toy.project, 1).get("from_cache")


def test_a_day_whose_gate_already_fails_is_refused(toy):
    """Mutating a red day would count every mutant as caught: a clear error instead."""
    folder = toy.write_day(1, failing=True)
    with pytest.raises(M.PracticeError, match="fails before any mutation"):
        M.measure_gate_strength(toy.project, 1)
    assert (folder / "toy.py").exists()


@pytest.mark.parametrize("value, ok", [({"caught": 3, "total": 4, "fingerprint": "sha256:x"}, True),
                                       ({"caught": 5, "total": 4, "fingerprint": "sha256:x"}, False),
                                       ({"caught": 3, "total": 4}, False), ("3/4", False)])
def test_the_ledger_validates_gate_strength(tmp_path, value, ok):
    """gate_strength round-trips through progress.yml; a malformed one is a clear error naming the day."""
    data = yaml.safe_load(fresh_ledger_text())
    data["days"][2]["gate_strength"] = value
    path = tmp_path / "progress.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    if ok:
        ledger = L.load(path)
        assert ledger[3].gate_strength == value and "gate_strength" in L.dumps(ledger)
        assert L.dumps(ledger).count("gate_strength:") == 1
    else:
        with pytest.raises(L.LedgerError, match="day 3: 'gate_strength' must be"):
            L.load(path)


VERDICT = {"day": 1, "module": "toy.py", "qualname": "clip", "change": "`<` → `<=`", "code": "if x < lo:",
           "why": "at x == lo both branches return lo"}


def test_a_survivor_judged_equivalent_is_recorded_and_shown_as_such(toy):
    """An author's verdict in equivalent_mutants.yml takes a survivor out of the non-equivalent count: the ledger
    records how many survivors it matches, the Verified box reports caught of non-equivalent. The verdict names
    the line by its text, so once that line changes it matches nothing and is reported as unused."""
    folder = toy.write_files(1, {"toy.py": DAY, "test_toy.py": GATE})
    result = M.measure_gate_strength(toy.project, 1)
    wrong_line = VERDICT | {"code": "if x <= lo:"}
    (toy.root / M.JUDGEMENTS_FILE).write_text(yaml.safe_dump([VERDICT, wrong_line, VERDICT | {"day": 2}],
                                                             allow_unicode=True))
    equivalent, still_open, unused = M.judge_survivors(toy.project, result)
    assert [(s["line"], s["why"]) for s in equivalent] == [(8, VERDICT["why"])] and still_open == []
    assert [j.code for j in unused] == ["if x <= lo:"]                    # day 2's verdict is not day 1's business

    assert M.record(toy.project, result)
    entry = toy.ledger()[1]
    assert entry.gate_strength == {"caught": 1, "total": 2, "equivalent": 1,
                                   "fingerprint": unit_fingerprint(toy.project, 1)}
    box = verified_box(toy.project, entry, run_gate(toy.project, 1, unit_fingerprint(toy.project, 1)))
    assert ("Gate strength: 1 of 2 single-line breaks of the exercises caught; 1 of the 1 that survived is judged "
            "equivalent") in box and "so 1 of 1 non-equivalent breaks are caught (`invoke mutate 1`)." in box

    (toy.root / M.JUDGEMENTS_FILE).write_text(yaml.safe_dump([wrong_line], allow_unicode=True))
    assert M.record(toy.project, result)                                   # a verdict that no longer applies
    assert "equivalent" not in toy.ledger()[1].gate_strength
    assert (folder / "toy.py").read_text() == DAY


@pytest.mark.parametrize("text, message", [("- [unclosed", "not valid YAML"), ("day: 1", "must be a list"),
                                           ("- {day: 1, module: toy.py}", "entry 1: needs exactly day, module"),
                                           ("- {day: '1', module: a, qualname: b, change: c, code: d, why: e}",
                                            "entry 1: needs exactly")])
def test_a_malformed_verdict_file_is_a_clear_error(toy, text, message):
    (toy.root / M.JUDGEMENTS_FILE).write_text(text)
    with pytest.raises(M.PracticeError, match=message):
        M.load_judgements(toy.project)


def test_every_committed_verdict_names_a_real_mutant_of_the_current_code():
    """Each verdict in the repository's equivalent_mutants.yml names a day that exists, a mutant that `invoke
    mutate` can make (same module, exercise, change) on a line that still reads as the verdict says, once, with a
    reason; so a verdict cannot outlive the code it was about."""
    from pipeline.project import Project
    from .conftest import REPO
    project = Project.at(REPO)
    verdicts = M.load_judgements(project)
    assert len(set(verdicts)) == len(verdicts)
    possible = {}
    for j in verdicts:
        assert project.day_exists(j.day), j
        if (j.day, j.module) not in possible:              # only the modules named: parsing is the cost
            folder = project.day_dir(j.day)
            lines = (folder / j.module).read_text(encoding="utf-8").splitlines()
            mutants, _ = M.candidate_mutants("\n".join(lines) + "\n", j.module, find_exercises(folder))
            possible[j.day, j.module] = {(m.qualname, m.change, lines[m.line - 1].strip()) for m in mutants}
        assert (j.qualname, j.change, j.code) in possible[j.day, j.module], f"no such mutant now: {j}"
        assert len(j.why.split()) >= 5, f"give the reason a reviewer can check: {j}"
