"""checks.pytest_plugin: the gate report records outcomes, docstrings and measured numbers."""

import json
import os
from pathlib import Path

import pytest

from checks.requirements import missing

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


UNDECLARED = '''
import pytest
from checks.assets import resolve

@pytest.fixture(scope="module")
def tokenizer_dir():
    return resolve("gpt2-tokenizer")

def test_undeclared_direct():
    resolve("gpt2-tokenizer")

def test_undeclared_through_a_fixture(tokenizer_dir):
    pass
'''

DECLARED = '''
import pytest
from checks.assets import resolve

@pytest.fixture(scope="module")
def tokenizer_dir():
    return resolve("gpt2-tokenizer")

@pytest.mark.asset("gpt2-tokenizer")
def test_declared_direct():
    resolve("gpt2-tokenizer")

@pytest.mark.asset("gpt2-tokenizer")
def test_declared_through_a_fixture(tokenizer_dir):
    pass

def test_asked_through_the_asset_fixture(asset):
    asset("gpt2-tokenizer")
'''


@pytest.mark.parametrize("assets_present", [True, False], ids=["present", "missing"])
def test_an_undeclared_asset_fails_the_test_even_where_it_is_present(pytester, monkeypatch, tmp_path, assets_present):
    """A test (or a fixture it uses) that resolves an asset it did not declare fails, naming the
    marker to add, whether or not the asset is on this machine; declared uses pass where it is
    present and skip with a hint where it is not (outside CI)."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    for var in ("CI", "ARENA_GATE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ARENA_CACHE", str(tmp_path / "cache"))
    shared = Path(os.environ.get("ARENA_ASSETS", "")).expanduser()
    if assets_present and not (shared / "tokenizers/gpt2/vocab.json").is_file():
        missing("asset 'gpt2-tokenizer'", "set ARENA_ASSETS to the shared assets")
    monkeypatch.setenv("ARENA_ASSETS", str(shared) if assets_present else str(tmp_path / "none"))
    pytester.makepyfile(test_undeclared=UNDECLARED, test_declared=DECLARED)
    result = pytester.runpytest_subprocess("-p", "checks.pytest_plugin", "-rA")
    outcomes = result.parseoutcomes()
    outcomes["errors"] = outcomes.pop("error", 0) + outcomes.pop("errors", 0)
    declared = {"passed": 3} if assets_present else {"skipped": 3}
    assert outcomes == {"failed": 1, "errors": 1, **declared}, outcomes
    for test in ("test_undeclared_direct", "test_undeclared_through_a_fixture"):
        result.stdout.fnmatch_lines([f"*{test} uses asset 'gpt2-tokenizer' without declaring it: "
                                     "add @pytest.mark.asset('gpt2-tokenizer')*"])
