"""The gate of day 29: the module-2 review, its tables generated from the ledger, the gate reports and
the days' results.json.

Spec: a post summarising module 2 (days 15–28) with a table of every verified result, generated from
the sources and not typed by hand; the test checks that the table agrees with the sources.
References: the YAML of progress.yml read directly; gate reports written by the pipeline's own
``save_cached``; the days' results.json files; the pipeline's ``format_number`` (how posts print
numbers).
"""

from pathlib import Path

import pytest
import yaml

from pipeline.gate import GateResult, save_cached
from pipeline.project import Project
from pipeline.stage import format_number

from . import review as R

HERE = Path(__file__).parent


def test_numbers_print_as_the_posts_print_them():
    """fmt formats like the pipeline's format_number, which renders every number in the posts."""
    for value in [0, 7, 12345, 0.5, 1.23456789, 1e-7, -3.2e-5, 123456.7, 2.0, True, "passed", 1e-3, -1e-3, 1e5]:
        assert R.fmt(value) == format_number(value)


def test_ledger_rows_read_progress_yml():
    """ledger_rows equals progress.yml parsed as plain YAML for every day 15–28: topic, status, tests passed and
    failed, gate seconds, fingerprint."""
    raw = {d["day"]: d for d in yaml.safe_load((R.ROOT / "progress.yml").read_text())["days"]}
    for row in R.ledger_rows(R.project()):
        d = raw[row["day"]]
        assert (row["topic"], row["status"], row["tests_passed"], row["tests_failed"], row["fingerprint"]) == (
            d["topic"], d.get("status", "not-started"), d.get("tests_passed", 0), d.get("tests_failed", 0), d.get("fingerprint"))
        assert row["gate_seconds"] == d.get("gate_seconds")


def test_gate_measurements_read_a_gate_report(tmp_path):
    """A gate report written by the pipeline's save_cached is read back: every measurement of every passed test,
    with its test name and bound (None when unbounded); failed tests' numbers are left out; no report gives None."""
    proj = Project.at(tmp_path)
    assert R.gate_measurements(proj, 27) is None
    tests = [
        {"nodeid": "days/027/test_x.py::test_a[p1]", "outcome": "passed", "duration_s": 0.1, "doc": "a",
         "measured": [{"name": "err", "value": 1e-13, "bound": "≤ 1e-12"}, {"name": "seconds", "value": 2.5}], "message": None},
        {"nodeid": "days/027/test_x.py::test_b", "outcome": "failed", "duration_s": 0.1, "doc": "b",
         "measured": [{"name": "bad", "value": 3.0, "bound": "< 1"}], "message": "boom"},
        {"nodeid": "days/027/test_x.py::TestK::test_c", "outcome": "passed", "duration_s": 0.1, "doc": "c",
         "measured": [{"name": "k", "value": 4}], "message": None},
    ]
    save_cached(proj, GateResult(27, "sha256:abc", "2026-01-01T00:00:00+00:00", 3.2, 1, {"passed": 2, "failed": 1}, tests))
    got = R.gate_measurements(proj, 27)
    assert got["fingerprint"] == "sha256:abc" and got["n_passed"] == 2
    assert got["measured"] == [{"test": "test_a[p1]", "name": "err", "value": 1e-13, "bound": "≤ 1e-12"},
                               {"test": "test_a[p1]", "name": "seconds", "value": 2.5, "bound": None},
                               {"test": "TestK::test_c", "name": "k", "value": 4, "bound": None}]


def test_tables_are_built_from_the_data():
    """The three tables on hand-made data: one summary line per day (claims counted from bounded measurements,
    'none yet' without a report), one claims line per bounded measurement (unbounded ones left out, pipes
    escaped), one headline line per chosen results.json value ('missing' when the path is absent)."""
    days = {
        "15": {"ledger": {"topic": "A | B", "status": "passed", "tests_passed": 25, "gate_seconds": 13.97},
               "gate": {"checked_at": "2026-11-21T08:31:26+00:00",
                        "measured": [{"test": "test_x", "name": "e", "value": 1e-13, "bound": "≤ 1e-12"},
                                     {"test": "test_x", "name": "t", "value": 2.0, "bound": None}]},
               "headlines": [{"key": "a.b", "label": "thing", "value": 0.5, "found": True}]},
        "16": {"ledger": {"topic": "C", "status": "not-started", "tests_passed": 0, "gate_seconds": None},
               "gate": None, "headlines": [{"key": "z", "label": "other", "value": None, "found": False}]},
    }
    summary = R.summary_table(days).splitlines()
    assert summary[2] == "| 15 | A \\| B | passed | 25 | 14.0 | 1 | 2026-11-21 |"
    assert summary[3] == "| 16 | C | not-started | 0 | — | — | none yet |"
    assert R.claims_table(days).splitlines()[2:] == ["| 15 | `test_x` | `e` | 1.00e-13 | ≤ 1e-12 |"]
    assert R.headline_table(days).splitlines()[2:] == ["| 15 | thing | 0.5 | `days/015/results.json: a.b` |",
                                                       "| 16 | other | missing | `days/016/results.json: z` |"]


def test_review_agrees_with_the_sources(committed, measure):
    """The committed review is current. For every day 15–28: if the ledger still has the fingerprint the review
    was built from, its status and test counts are the ledger's (a different fingerprint means the day changed
    since: the review is stale, rerun `invoke experiment 29`); the gate report on disk, when it is the one the
    review read (same fingerprint and check time), has exactly the recorded measurements (absent on a fresh
    clone, where .gate/ is not committed: nothing to compare); every headline value equals the day's
    results.json now; and the three tables are exactly what the recorded data produce."""
    results = committed
    now = R.collect()
    assert list(results["days"]) == [str(d) for d in R.DAYS]
    compared_reports = R.assert_current(results["days"], now, review_day=29)
    assert results["tables"] == {"summary": R.summary_table(results["days"]), "claims": R.claims_table(results["days"]),
                                 "headlines": R.headline_table(results["days"])}
    assert results["totals"] == R.counts(results["days"])
    measure("review.gate_reports_compared", compared_reports)
    measure("review.claims_in_table", results["totals"]["n_claims"])
    assert (HERE / "figures/module2_tests.png").stat().st_size > 10_000


def test_assert_current_names_each_kind_of_change():
    """assert_current (the staleness check days 29 and 70 share) passes on identical data and fails, naming the
    day and the experiment to rerun, on a changed fingerprint, a changed test count, changed gate measurements,
    a gate report the review has not seen, and a changed headline."""
    import copy

    gate = {"fingerprint": "sha256:a", "checked_at": "t", "measured": [{"name": "e", "value": 1.0}]}
    recorded = {"15": {"ledger": {"fingerprint": "sha256:a", "status": "passed", "tests_passed": 3, "tests_failed": 0,
                                  "topic": "T", "last_check": "t", "gate_seconds": 1.0},
                       "gate": gate, "headlines": [{"key": "k", "value": 0.5, "found": True}]}}
    assert R.assert_current(recorded, copy.deepcopy(recorded), review_day=70) == 1
    changes = [lambda d: d["ledger"].update(fingerprint="sha256:b"), lambda d: d["ledger"].update(tests_passed=4),
               lambda d: d["gate"]["measured"][0].update(value=2.0), lambda d: d["headlines"][0].update(value=0.6)]
    for change in changes:
        now = copy.deepcopy(recorded)
        change(now["15"])
        with pytest.raises(AssertionError, match=r"day 15.*invoke experiment 70"):
            R.assert_current(recorded, now, review_day=70)
    unseen = copy.deepcopy(recorded)
    unseen["15"]["gate"] = None
    with pytest.raises(AssertionError, match="has not seen"):
        R.assert_current(unseen, copy.deepcopy(recorded), review_day=29)
    # the gate time is compared only when it is the same check (same last_check); a new check may take longer
    slower = copy.deepcopy(recorded)
    slower["15"]["ledger"]["gate_seconds"] = 2.0
    with pytest.raises(AssertionError, match="gate seconds"):
        R.assert_current(recorded, slower, review_day=29)
    slower["15"]["ledger"]["last_check"] = "t2"
    assert R.assert_current(recorded, slower, review_day=29) == 1
    # no gate report on either side (a fresh clone of a fresh review): nothing to compare, nothing stale
    assert R.assert_current(unseen, copy.deepcopy(unseen), review_day=29) == 0
