"""The invoke tasks as a user meets them: bad options are one clear line before anything runs,
failing days are named every time, the status table fits a terminal, files keep their mode."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import ledger as ledger_io
from pipeline.render import PandocEngine, RenderError, render_site


def _invoke(toy, *args, columns: int = 200) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ARENA_GATE")}
    env["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=toy.root, capture_output=True, text=True,
                          env=env)


def _said(proc: subprocess.CompletedProcess) -> str:
    return " ".join((proc.stdout + proc.stderr).split())


@pytest.mark.parametrize("args, message", [
    (("--engine", "foo"), "error: --engine 'foo': use one of auto, quarto, pandoc"),
    (("--jobs", "abc"), "error: --jobs 'abc': a whole number of gates to run at once, at least 1"),
    (("--jobs", "0"), "error: --jobs '0': at least 1"),
    (("--days", "5-3"), "error: --days '5-3': the range is empty (did you mean 3-5?)"),
    (("--days", "3,,4"), "an empty item"),
    (("--days", "0-4"), "day 0 is out of range"),
])
def test_bad_publish_options_are_one_line_before_any_gate_runs(toy, args, message):
    """A bad option exits 1 with one line naming it, before gating: nothing is written."""
    toy.write_day(1)
    before = toy.snapshot()
    proc = _invoke(toy, "publish", *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert message in _said(proc) and "Traceback" not in proc.stdout + proc.stderr
    assert "gating" not in proc.stdout
    assert toy.snapshot() == before


def test_every_publish_names_the_failing_days(toy):
    """The publish that gates a failing day and every later one say which days are not published."""
    toy.write_day(1)
    toy.write_day(2, failing=True)
    for _ in range(2):
        proc = _invoke(toy, "publish", "--engine", "pandoc")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "not published (failing): day 002" in _said(proc)


def test_publish_keeps_the_ledgers_file_mode(toy):
    """Rewriting progress.yml keeps its permissions (it used to come back as 0600)."""
    toy.write_day(1)
    path = toy.root / "progress.yml"
    path.chmod(0o644)
    assert _invoke(toy, "publish", "--engine", "pandoc").returncode == 0
    assert toy.ledger()[1].status == "passed"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_status_fits_80_columns_and_shows_a_scaffolded_day(toy):
    """At 80 columns every row is one line that fits; a day made by `invoke new` shows as new."""
    toy.write_day(1)
    assert _invoke(toy, "publish", "--engine", "pandoc").returncode == 0
    assert _invoke(toy, "new", "40").returncode == 0
    proc = _invoke(toy, "status", columns=80)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and max(len(line) for line in lines) <= 80
    row = next(line for line in lines if " 040 " in line)
    assert " new " in row
    assert any(" 001 " in line and " passed " in line for line in lines)
    wide = _invoke(toy, "status", columns=160).stdout
    assert "First passed" in wide and "Module" in wide


def test_check_of_a_day_without_a_folder_points_to_invoke_new(toy):
    proc = _invoke(toy, "check", "40")
    assert proc.returncode == 1
    assert "error: days/040 does not exist yet: start it with `invoke new 40`" in _said(proc)
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_missing_ledger_says_how_to_get_it_back_and_the_syllabus_is_in_the_repository(toy):
    """The hint names what exists in a clone: git, and the committed syllabus that `invoke ledger`
    rebuilds the plan from (by default)."""
    (toy.root / "progress.yml").unlink()
    proc = _invoke(toy, "status")
    assert proc.returncode == 1
    said = _said(proc)
    assert "git checkout -- progress.yml" in said and "invoke ledger" in said and "templates/syllabus.yml" in said
    assert (toy.root / "templates" / "syllabus.yml").is_file()
    rebuilt = _invoke(toy, "ledger")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert sorted(ledger_io.load(toy.root / "progress.yml").days) == list(range(1, 101))


def test_a_site_that_cannot_be_replaced_is_a_clear_error_and_stays(toy, monkeypatch):
    """When site/_site cannot be replaced (locked, read-only, another owner), rendering says so in
    one line, keeps the previous site and leaves no half-rendered folder."""
    toy.write_day(1)
    assert _invoke(toy, "publish", "--engine", "pandoc").returncode == 0
    site = toy.root / "site" / "_site"
    before = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    real_rename = Path.rename

    def locked(self, target):
        if self == site:
            raise PermissionError(13, "Permission denied", str(self))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", locked)
    with pytest.raises(RenderError, match=r"cannot replace site/_site: Permission denied .*previous site is kept"):
        render_site(toy.project, PandocEngine(), force=True)
    assert {p: p.read_bytes() for p in site.rglob("*") if p.is_file()} == before
    assert not list((toy.root / "site").glob("_site.*"))
