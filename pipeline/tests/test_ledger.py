"""The ledger: round trip, validation with clear errors, atomic writes, the committed file."""

import os
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
import yaml

from checks.requirements import missing
from pipeline import ledger as L
from pipeline.ledger import LedgerError

from .conftest import REPO, fresh_ledger_text


@pytest.fixture
def ledger_file(tmp_path) -> Path:
    path = tmp_path / "progress.yml"
    path.write_text(fresh_ledger_text())
    return path


def test_round_trip_keeps_every_field(ledger_file):
    """Measured fields written by the tooling read back identically, and text → ledger → text is stable."""
    ledger = L.load(ledger_file)
    entry = ledger[7]
    entry.status, entry.first_passed = "passed", date(2026, 3, 7)
    entry.last_check = datetime(2026, 3, 8, 9, 30, 5, tzinfo=timezone.utc)
    entry.tests_passed, entry.tests_failed, entry.tests_skipped = 12, 0, 1
    entry.gate_seconds, entry.fingerprint = 3.25, "sha256:abc"
    assert L.save(ledger, ledger_file)
    again = L.load(ledger_file)
    assert again[7] == entry
    assert L.dumps(again) == ledger_file.read_text()


def test_capstone_round_trips_and_defaults_to_not_started(ledger_file):
    """The capstone's measured fields survive a round trip; a ledger written before the capstone
    existed (no 'capstone' key) reads as capstone not-started."""
    ledger = L.load(ledger_file)
    cap = ledger.capstone
    cap.status, cap.first_passed, cap.tests_passed = "passed", date(2026, 11, 21), 40
    cap.last_check, cap.gate_seconds, cap.fingerprint = datetime(2026, 11, 21, 9, tzinfo=timezone.utc), 31.5, "sha256:f"
    L.save(ledger, ledger_file)
    assert L.load(ledger_file).capstone == cap
    old = yaml.safe_load(ledger_file.read_text())
    del old["capstone"]
    ledger_file.write_text(yaml.safe_dump(old, sort_keys=False))
    assert L.load(ledger_file).capstone.status == "not-started"


def test_save_is_atomic_and_skips_identical_content(ledger_file, monkeypatch):
    """An unchanged ledger is not rewritten; a write that dies before the rename leaves the old file and no debris."""
    ledger = L.load(ledger_file)
    before = ledger_file.read_bytes(), ledger_file.stat().st_mtime_ns
    assert L.save(ledger, ledger_file) is False
    assert (ledger_file.read_bytes(), ledger_file.stat().st_mtime_ns) == before

    ledger[1].status = "failing"

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        L.save(ledger, ledger_file)
    assert ledger_file.read_bytes() == before[0]
    assert sorted(p.name for p in ledger_file.parent.iterdir()) == ["progress.yml"]


def _mutate(text: str, fn) -> str:
    data = yaml.safe_load(text)
    fn(data)
    return yaml.safe_dump(data, sort_keys=False)


BROKEN = {
    "not YAML": (lambda t: t.replace("days:\n", "days:\n  - [unclosed\n", 1), r"not valid YAML at line \d+"),
    "not a mapping": (lambda t: "- just\n- a list\n", "a mapping with a 'days' list"),
    "unknown schema": (lambda t: t.replace("schema: 1", "schema: 9"), "'schema' is 9"),
    "bad status": (lambda t: _mutate(t, lambda d: d["days"][6].update(status="done")),
                   "day 7: 'status' is 'done', not one of not-started, failing, passed, stale"),
    "missing days": (lambda t: _mutate(t, lambda d: d.update(days=d["days"][:90] + d["days"][95:])),
                     "missing day\\(s\\): 91–95"),
    "duplicate day": (lambda t: _mutate(t, lambda d: d["days"].append(dict(d["days"][0]))), "day 1: listed twice"),
    "typo in a field": (lambda t: _mutate(t, lambda d: d["days"][2].update(stauts="passed")),
                        "day 3: unknown field\\(s\\) 'stauts'"),
    "bad date": (lambda t: _mutate(t, lambda d: d["days"][0].update(first_passed="yesterday")),
                 "day 1: 'first_passed' must be an ISO date"),
    "negative count": (lambda t: _mutate(t, lambda d: d["days"][0].update(tests_passed=-3)),
                       "day 1: 'tests_passed' must be a non-negative integer"),
    "day out of range": (lambda t: _mutate(t, lambda d: d["days"][0].update(day=101)),
                         "'day' must be an integer from 1 to 100, got 101"),
    "passed without evidence": (lambda t: _mutate(t, lambda d: d["days"][4].update(status="passed")),
                                "day 5: status 'passed' needs first_passed, a fingerprint"),
    "capstone bad status": (lambda t: _mutate(t, lambda d: d["capstone"].update(status="done")),
                            "capstone: 'status' is 'done'"),
    "capstone typo": (lambda t: _mutate(t, lambda d: d["capstone"].update(titel="x")),
                      "capstone: unknown field\\(s\\) 'titel'"),
    "capstone not a mapping": (lambda t: _mutate(t, lambda d: d.update(capstone=[1, 2])),
                               "capstone: expected a mapping"),
    "unknown top-level key": (lambda t: _mutate(t, lambda d: d.update(capstones={})),
                              "unknown top-level key\\(s\\) 'capstones'"),
    "module out of range": (lambda t: _mutate(t, lambda d: d["days"][0].update(module=7)),
                            "day 1: 'module' must be an integer from 0 to 4"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_ledger_is_a_clear_error_and_left_untouched(ledger_file, name):
    """A corrupt or hand-broken progress.yml names the problem, and the file stays byte-for-byte as it was."""
    breaker, message = BROKEN[name]
    ledger_file.write_text(breaker(ledger_file.read_text()))
    before = ledger_file.read_bytes()
    with pytest.raises(LedgerError, match=message):
        L.load(ledger_file)
    assert ledger_file.read_bytes() == before


def test_every_problem_is_listed_at_once(ledger_file):
    """Several hand edits gone wrong are all reported in one error, each with its day."""
    def breaks(d):
        d["days"][0]["status"] = "done"
        d["days"][1]["tests_failed"] = "two"
    ledger_file.write_text(_mutate(ledger_file.read_text(), breaks))
    with pytest.raises(LedgerError) as info:
        L.load(ledger_file)
    assert "day 1: 'status'" in str(info.value) and "day 2: 'tests_failed'" in str(info.value)
    assert "nothing was changed" in str(info.value)


def test_missing_ledger_says_how_to_recreate_it(tmp_path):
    with pytest.raises(LedgerError, match="not found.*invoke ledger"):
        L.load(tmp_path / "progress.yml")


def test_committed_ledger_holds_the_100_day_plan():
    """The committed progress.yml is valid and holds days 1–100 with topic, module, group and ARENA link."""
    ledger = L.load(REPO / "progress.yml")
    assert sorted(ledger.days) == list(range(1, 101))
    assert ledger[1].topic == "PyTorch, einops, einsum" and ledger[1].module == 0
    assert ledger[15].module == 2 and ledger[30].module == 1  # ARENA chapters; the seed's day order
    assert all(e.topic and e.group and e.module_name for e in ledger)
    assert ledger[32].arena_url.startswith("https://learn.arena.education/")


def test_committed_ledger_matches_the_syllabus():
    """The ledger's authored fields are exactly those of the shared syllabus (../shared/syllabus.yml)."""
    candidates = [os.environ.get("ARENA_SYLLABUS", "")]
    candidates += [str(Path(p).parent / "syllabus.yml") for p in os.environ.get("ARENA_ASSETS", "").split(os.pathsep) if p]
    found = next((Path(c) for c in candidates if c and Path(c).is_file()), None)
    if found is None:
        missing("syllabus", "set ARENA_SYLLABUS=path/to/syllabus.yml (or ARENA_ASSETS next to it)")
    syllabus = yaml.safe_load(found.read_text())
    ledger = L.load(REPO / "progress.yml")
    for raw in syllabus:
        entry = ledger[raw["day"]]
        for name in L.AUTHORED_FIELDS:
            assert getattr(entry, name) == raw.get(name), f"day {raw['day']}: {name}"


def test_rebuilding_from_the_syllabus_keeps_measured_fields(ledger_file):
    """`invoke ledger --syllabus` updates topics but never loses a day's measured status."""
    ledger = L.load(ledger_file)
    ledger[3].status, ledger[3].tests_failed, ledger[3].fingerprint = "failing", 2, "sha256:x"
    syllabus = [{"day": e.day, **{k: getattr(e, k) for k in L.AUTHORED_FIELDS}} for e in ledger]
    syllabus[2]["topic"] = "Rays, renamed"
    rebuilt = L.from_syllabus(syllabus, previous=ledger)
    assert rebuilt[3].topic == "Rays, renamed"
    assert (rebuilt[3].status, rebuilt[3].tests_failed, rebuilt[3].fingerprint) == ("failing", 2, "sha256:x")
