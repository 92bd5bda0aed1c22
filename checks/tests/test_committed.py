"""checks.committed: tolerances derived from the computation, and the rule that every committed
number is read through the ``committed`` fixture (so CI can rerun those tests on other kernels)."""

import ast
import math
import re
from pathlib import Path

import numpy as np
import pytest

from checks.committed import (CommittedMismatch, Tolerance, assert_reproduces, cited_results, exact, float_ops, iterated,
                              log_space, reproduction_failures, statistical, unit_roundoff, value_at)

REPO = Path(__file__).resolve().parents[2]


def test_unit_roundoff_is_half_the_machine_epsilon():
    """u = 2^-53 (float64), 2^-24 (float32), accepting numpy and torch dtype names."""
    assert unit_roundoff("float64") == 2.0 ** -53
    assert unit_roundoff("torch.float32") == 2.0 ** -24
    assert unit_roundoff(np.float16) == 2.0 ** -11


def test_float_ops_scales_with_the_number_of_rounding_steps():
    """A reduction over n terms may be off by about n·u relative (times the safety factor)."""
    small, large = float_ops(10), float_ops(10_000, "float32")
    assert small.rel == pytest.approx(8 * 10 * 2.0 ** -53)
    assert large.rel == pytest.approx(8 * 10_000 * 2.0 ** -24)
    with pytest.raises(ValueError):
        float_ops(0)
    assert iterated(100, growth=10, why="contracting map").rel == pytest.approx(8 * 100 * 10 * 2.0 ** -53)


def test_a_sum_in_another_order_reproduces_within_float_ops_but_not_bitwise():
    """The case the module exists for: the same float32 sum in two orders differs in the last
    bits (so exact() fails) and stays within float_ops(n) of the other."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=4096).astype(np.float32)
    forward = np.float32(0)
    for v in x:
        forward += v
    pairwise = x.sum(dtype=np.float32)  # numpy sums pairwise: another rounding order
    assert forward != pairwise
    with pytest.raises(CommittedMismatch):
        assert_reproduces(float(forward), float(pairwise), exact("bitwise"))
    scale = float(np.abs(x).sum())
    tol = float_ops(4096, "float32", abs=8 * 4096 * 2.0 ** -24 * scale)
    assert assert_reproduces(float(forward), float(pairwise), tol) <= 1


def test_log_space_compares_orders_of_magnitude():
    """A rounding-dominated value (a finite-difference error at tiny steps) is compared in log10."""
    tol = log_space(0.5, why="rounding-dominated")
    assert assert_reproduces([1.0e-7, 2.0e-9], [1.5e-7, 1.0e-9], tol) == pytest.approx(math.log10(2))
    with pytest.raises(CommittedMismatch, match="decades"):
        assert_reproduces([1.0e-7], [1.0e-8], tol)


def test_nested_results_are_compared_leaf_by_leaf_with_clear_names():
    """Dicts and lists of records are walked; a wrong leaf is named by its path; strings must be
    equal; missing keys are an error, not a pass."""
    committed = {"runs": [{"loss": 1.0, "name": "a"}, {"loss": 2.0, "name": "b"}], "n": 3}
    now = {"runs": [{"loss": 1.0 + 1e-14, "name": "a"}, {"loss": 2.0, "name": "b"}], "n": 3}
    assert assert_reproduces(now, committed, float_ops(100), name="results") < 1
    now["runs"][1]["loss"] = 2.1
    with pytest.raises(CommittedMismatch, match=r"results\.runs\[1\]\.loss"):
        assert_reproduces(now, committed, float_ops(100), name="results")
    with pytest.raises(CommittedMismatch, match="must be equal"):
        assert_reproduces({"name": "x"}, {"name": "y"}, exact("labels"))
    with pytest.raises(CommittedMismatch, match="keys differ"):
        assert_reproduces({"a": 1.0}, {"a": 1.0, "b": 2.0}, exact("keys"))


def test_statistical_tolerance_and_nan_patterns():
    """An accuracy reproduces up to its stated spread; NaN must sit in the same places."""
    tol = statistical(0.01, why="3 binomial standard errors on 10 000 examples")
    assert assert_reproduces(0.985, 0.99, tol) == pytest.approx(0.5)
    with pytest.raises(CommittedMismatch):
        assert_reproduces(0.97, 0.99, tol)
    with pytest.raises(CommittedMismatch):
        assert_reproduces([1.0, float("nan")], [1.0, 1.0], statistical(1.0, why="x"))
    with pytest.raises(ValueError):
        Tolerance(reason="  ", rel=1e-3)


def _reads_results_json_directly(path: Path) -> list[int]:
    """Lines of a test module whose code names results.json as a path ("results.json" or ".../results.json",
    the way a test opens it); docstrings and prose that mention the file do not count."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    lines = path.read_text(encoding="utf-8").splitlines()
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and re.search(r"(^|/)results\.json$", node.value) and id(node) not in docstrings
            and "tmp_path" not in lines[node.lineno - 1]]  # a scratch file in a test's own folder is not committed


def test_cited_results_are_the_result_shortcodes_of_a_post(tmp_path):
    """cited_results finds every {{< result key >}} with or without options, and nothing else (a
    gate measurement, a code include, prose that mentions results)."""
    post = tmp_path / "post.qmd"
    post.write_text("A {{< result test.kl fmt=.3f >}} and {{<result confusion.0.8>}}, "
                    "{{< measured parity.max >}}, {{< code m.py f >}}, the results: 0.5.\n"
                    "Again {{< result test.kl >}}.\n", encoding="utf-8")
    assert cited_results(post) == {"test.kl", "confusion.0.8"}


def test_reproduction_failures_collects_every_number_off_and_skips_claims():
    """value_at indexes lists by number; reproduction_failures reports each number off its tolerance
    (not only the first), leaves string-tolerance keys to the caller's extra claims, and checks those."""
    committed = {"test": {"kl": 1.0, "loss": 2.0}, "confusion": [[5, 1], [2, 7]], "best": "cat"}
    assert value_at(committed, "confusion.1.0") == 2
    tol = {"test.kl": statistical(0.1, why="t"), "test.loss": statistical(0.1, why="t"),
           "confusion.1.0": exact("a count"), "best": "ranking"}
    now = {"test": {"kl": 1.05, "loss": 2.5}, "confusion": [[5, 1], [3, 7]], "best": "dog"}
    failures = reproduction_failures(now, committed, tol)
    assert len(failures) == 2 and "test.loss" in failures[0] and "confusion.1.0" in failures[1]
    extra = [("the best class's accuracy", 0.80, 0.90, statistical(0.05, why="t"))]
    assert len(reproduction_failures(now, committed, tol, extra=extra)) == 3
    assert reproduction_failures(committed, committed, tol) == []


def test_tests_read_committed_numbers_only_through_the_fixture():
    """Every test that reads results.json does it through the `committed` fixture, so that it is
    marked `committed` and CI reruns it on the portable kernels (ATEN_CPU_CAPABILITY=default)."""
    offenders = {str(path.relative_to(REPO)): lines
                 for path in sorted([*REPO.glob("days/*/test_*.py"), *REPO.glob("capstone/test_*.py")])
                 if (lines := _reads_results_json_directly(path))}
    assert not offenders, f"read results.json through the `committed` fixture instead: {offenders}"


def test_the_lint_finds_paths_not_prose(tmp_path):
    """The rule catches a test that opens results.json itself, and leaves strings that only name it."""
    module = tmp_path / "test_x.py"
    module.write_text('import json\nfrom pathlib import Path\n\n'
                      'def test_a():\n    """Reads results.json."""\n    json.loads((Path(__file__).parent / "results.json").read_text())\n\n'
                      'def test_b():\n    assert "x" != "`days/015/results.json: a.b`"\n\n'
                      'def test_c():\n    open("days/001/results.json")\n\n'
                      'def test_d(tmp_path):\n    (tmp_path / "results.json").write_text("{}")\n')
    assert sorted(_reads_results_json_directly(module)) == [6, 12]
