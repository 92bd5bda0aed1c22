"""checks.pytest_plugin: the gate report records outcomes, docstrings and measured numbers."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

DAY_TESTS = '''
import pytest

def test_passes(measure):
    """Checks that two plus two is four."""
    measure("sum", 2 + 2, "= 4")
    measure("ratio", 0.125)

def test_fails():
    """A deliberate failure."""
    assert 1 == 2, "one is not two"

@pytest.fixture
def broken():
    raise RuntimeError("setup exploded")

def test_setup_error(broken):
    pass

def test_skipped():
    pytest.skip("not today")
'''


@pytest.fixture
def run(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    for var in ("CI", "ARENA_GATE"):
        monkeypatch.delenv(var, raising=False)

    def go(*args):
        pytester.makepyfile(test_day=DAY_TESTS)
        report = pytester.path / "report.json"
        result = pytester.runpytest_subprocess("-p", "checks.pytest_plugin", "--gate-report", str(report), *args)
        return result, json.loads(report.read_text())
    return go


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "xdist"])
def test_gate_report_records_outcomes_and_measurements(run, xdist):
    """Each outcome (passed, failed, error, skipped) and each measured number reaches the report."""
    result, report = run(*(["-n", "2"] if xdist else []))
    assert report["exit_status"] == 1
    assert report["counts"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1}
    tests = {t["nodeid"].split("::")[-1]: t for t in report["tests"]}
    assert tests["test_passes"]["doc"] == "Checks that two plus two is four."
    assert tests["test_passes"]["measured"] == [{"name": "sum", "value": 4, "bound": "= 4"},
                                                {"name": "ratio", "value": 0.125}]
    assert "one is not two" in tests["test_fails"]["message"]
    assert "setup exploded" in tests["test_setup_error"]["message"]
    assert tests["test_skipped"]["message"] == "Skipped: not today"


def test_collection_error_is_reported(pytester, monkeypatch):
    """A test file that does not import is recorded as a collection error, not silently dropped."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_broken="import no_such_module_anywhere\n")
    report_path = pytester.path / "r.json"
    pytester.runpytest_subprocess("-p", "checks.pytest_plugin", "--gate-report", str(report_path))
    report = json.loads(report_path.read_text())
    assert report["exit_status"] == 2
    assert "no_such_module_anywhere" in report["collect_errors"][0]["message"]


def test_measure_rejects_non_numbers(pytester, monkeypatch):
    """measure() takes numbers and strings (tensors via .item()); anything else is a TypeError."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile("""
import torch
def test_tensor(measure):
    assert measure("t", torch.tensor(1.5)) == 1.5
def test_list(measure):
    measure("l", [1, 2])
""")
    result = pytester.runpytest_subprocess("-p", "checks.pytest_plugin")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*TypeError: measure('l'): value must be a number or a string*"])
