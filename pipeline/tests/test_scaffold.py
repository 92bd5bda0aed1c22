"""Day numbers, `invoke new` and the task list: clear errors, no overwrites, a new day starts red."""

import subprocess
import sys

import pytest

from pipeline.gate import run_gate
from pipeline.project import DayNumberError, parse_day, slugify
from pipeline.scaffold import DayExistsError, module_name_for, new_day


@pytest.mark.parametrize("value, day", [("7", 7), ("007", 7), (7, 7), (" 42 ", 42), ("100", 100), (1, 1)])
def test_day_numbers_parse(value, day):
    assert parse_day(value) == day


@pytest.mark.parametrize("value, message", [
    (0, "out of range"), (101, "out of range"), ("-3", "a number from 1 to 100"), ("seven", "a number from 1 to 100"),
    ("7.5", "a number from 1 to 100"), (7.0, "a number from 1 to 100"), (None, "a number from 1 to 100"),
    ("", "a number from 1 to 100"), (True, "a number from 1 to 100"),
])
def test_bad_day_numbers_are_clear_errors(value, message):
    """Anything but an integer 1..100 is a DayNumberError saying what a day number is."""
    with pytest.raises(DayNumberError, match=message):
        parse_day(value)


def test_slugs_and_module_names(toy):
    """Module names come from the seed's file name, else from the topic; slugs are URL-safe."""
    ledger = toy.ledger()
    assert module_name_for(ledger[1]) == "tensors"
    assert module_name_for(ledger[10]) == "day010_wandb"             # would shadow the wandb package
    assert module_name_for(ledger[71]) == "threat_model"          # the seed names a .md file
    assert module_name_for(ledger[95]) == "deep_dive_deceptive_alignment"  # no seed file at all
    assert slugify("ResNets — Architecture + CIFAR-10 Training") == "resnets-architecture-cifar-10-training"


def test_new_day_is_scaffolded_from_the_ledger_and_starts_red(toy):
    """`new` writes the implementation, the gate and the post with the topic filled in; the fresh
    gate fails (a placeholder test), so a scaffolded day is never counted as done."""
    written = new_day(toy.project, toy.ledger(), "8")
    names = sorted(p.name for p in written)
    assert names == ["__init__.py", "post.qmd", "resnet.py", "test_resnet.py"]
    post = (toy.day_dir(8) / "post.qmd").read_text()
    assert 'title: "Day 8: ResNets — Architecture + CIFAR-10 Training"' in post
    assert "https://learn.arena.education/chapter0_fundamentals/02_cnns/" in post
    assert "0.2 CNNs & ResNets" in (toy.day_dir(8) / "resnet.py").read_text()
    result = run_gate(toy.project, 8, "sha256:new")
    assert not result.passed and result.n_failed == 1
    assert "no spec tests yet" in result.failure_summary()


def test_new_day_refuses_to_overwrite(toy):
    """A day that exists is never overwritten: the error names it and the files stay as they were."""
    toy.write_day(3)
    before = toy.snapshot()
    with pytest.raises(DayExistsError, match="days/003 already exists"):
        new_day(toy.project, toy.ledger(), 3)
    assert toy.snapshot() == before


def _invoke(toy, *args):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=toy.root, capture_output=True, text=True)


@pytest.mark.parametrize("arg, message", [("0", "day 0 is out of range"), ("101", "day 101 is out of range"),
                                          ("seven", "day must be a number from 1 to 100")])
def test_invoke_new_reports_bad_days_without_a_traceback(toy, arg, message):
    """`invoke new` with a bad day exits 1 with one clear line, and creates nothing."""
    proc = _invoke(toy, "new", arg)
    assert proc.returncode == 1
    assert message in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in (toy.root / "days").iterdir()) == ["__init__.py"]


def test_invoke_list_explains_every_task(toy):
    """`invoke --list` shows each task with a one-line description."""
    proc = _invoke(toy, "--list")
    assert proc.returncode == 0
    for name in ("new", "check", "publish", "status", "experiment", "render", "ledger"):
        line = next(l for l in proc.stdout.splitlines() if l.strip().startswith(name + " "))
        assert len(line.split(None, 1)[1]) > 20, line


def test_experiment_module_is_the_one_defining_run_experiment(toy):
    """`invoke experiment` finds the module by its run_experiment, whatever the file is called."""
    toy.write_day(4)
    with pytest.raises(LookupError, match="exactly one module defining run_experiment, found none"):
        toy.project.experiment_module(4)
    (toy.day_dir(4) / "sweeps_lab.py").write_text("def run_experiment(out_dir):\n    return {}\n")
    assert toy.project.experiment_module(4) == "days.004.sweeps_lab"
