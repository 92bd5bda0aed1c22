"""The gate of day 82: the module-3 review and eval report, generated with day 29's machinery from the ledger, the
gate reports, the days' results.json and every committed Inspect log of days 71–81, set beside ARENA's results.

Spec (issue 15): "082 Module review and eval report: generated from the ledger, results.json and the Inspect logs
(like days 029 and 070); its test fails when any source changes."
References: progress.yml parsed as plain YAML; the days' results.json read with json and walked by hand; the logs
read in full with inspect_ai.log.read_eval_log (every sample) and their metrics recomputed from the samples' scores
(mean, and the standard error std(ddof=1)/√n); the set of committed logs from a glob and `git check-ignore`.
"""

import importlib
import inspect
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from . import review as R

HERE = Path(__file__).parent
R29 = importlib.import_module("days.029.review")


# ---------------------------------------------------------------- day 29's machinery, reused


def test_review_reuses_day_29_machinery():
    """Day 82 imports day 29's collector and tables instead of copying them: it defines none of them itself, and its
    collect is day 29's called with days 71–81 and day 82's headlines; day 29's defaults are unchanged."""
    for name in ("ledger_rows", "headline_values", "gate_measurements", "summary_table", "claims_table",
                 "headline_table", "counts", "lookup", "fmt", "escape", "assert_current", "tests_figure"):
        assert not hasattr(R, name), f"day 82 defines its own {name}: import it from day 29"
    assert R.R29 is R29
    assert R.R70 is importlib.import_module("days.070.review")          # day 70's ARENA table, reused too
    for name in ("arena_rows", "arena_table"):
        assert "R70." in inspect.getsource(getattr(R, name)), f"day 82's {name} should call day 70's"
    assert "R29.collect(proj, days=DAYS, headlines=HEADLINES)" in inspect.getsource(R.collect)
    assert list(R.DAYS) == list(range(71, 82))
    assert [r["day"] for r in R29.ledger_rows(R29.project())] == list(range(15, 29))
    assert R29.headline_values(R29.project(), 15) == R29.headline_values(R29.project(), 15, R29.HEADLINES)


def test_headlines_cover_module_3_and_resolve():
    """Every day 71–81 has 1–3 headlines; every chosen path resolves in the day's results.json (read with json and
    walked by hand), so no headline shows as missing while the day's file exists."""
    assert set(R.HEADLINES) == set(range(71, 82))
    for day, pairs in R.HEADLINES.items():
        assert 1 <= len(pairs) <= 3 and all(label for _, label in pairs)
        data = R.day_results(day)
        if data is None:
            continue
        for key, _ in pairs:
            node = data
            for part in key.split("."):
                assert (part in node) if isinstance(node, dict) else (int(part) < len(node)), f"day {day}: {key}"
                node = node[part] if isinstance(node, dict) else node[int(part)]
            assert isinstance(node, (int, float, str, bool)), f"day {day}: {key} is not a number"


def test_arena_rows_cover_every_section_of_module_3():
    """Each ARENA section of chapter 3 (3.1–3.4) has at least one comparison and every day with an ARENA section
    (71–80) has one; each comparison cites its day's own section (progress.yml's `arena` field, read as YAML), a
    verdict from the three allowed, a citation, ARENA's model and a reason."""
    raw = {d["day"]: d for d in yaml.safe_load((R.ROOT / "progress.yml").read_text())["days"]}
    assert R.R70.arena_row_problems(R.ARENA, R.MODULE_SECTIONS, raw) == []   # day 70's checks of the rows
    with_section = {d for d in R.DAYS if raw[d]["arena"]}
    assert {r["ours"][0] for r in R.ARENA} == with_section


def test_arena_table_is_built_from_the_data():
    """Day 70's table (tested there: escaping, 'missing', formatting) with chapter 3's sections and header: sections
    in 3.1–3.4 order whatever the row order; verdict counts per verdict."""
    rows = [
        {"section": "3.4", "arena_model": "GPT-4o-mini", "cited": "x", "day": 80, "key": "a.b",
         "value": 0.875, "found": True, "verdict": "differs", "why": "n = 8"},
        {"section": "3.1", "arena_model": "Claude", "cited": "c", "day": 71, "key": "z", "value": None, "found": False,
         "verdict": "not comparable", "why": "w"},
    ]
    lines = R.arena_table(rows).splitlines()
    assert "Reported or demonstrated (citation)" in lines[0]
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| 3.1", "| 3.4"]
    assert R.verdict_counts(rows) == {"reproduces": 0, "differs": 1, "not_comparable": 1}


# ---------------------------------------------------------------- the eval report


def test_logs_table_is_built_from_the_data():
    """On hand-made log rows: one line per log with the log's short id, the variant ('—' when none), samples
    completed (of total when fewer completed), every scorer's metrics with the s.e. Inspect reports; the headline
    metric is the first scorer's first non-stderr metric."""
    rows = [
        {"day": 76, "file": "2026-12-07T06-24-50-00-00_alignment-eval_RiNJ.eval", "task": "alignment_eval",
         "model": "smollm2/smollm2", "status": "success", "samples": 60, "completed": 60, "variant": "answering=logprob",
         "scores": [{"scorer": "choice", "metrics": {"accuracy": 0.3166, "stderr": 0.06}}]},
        {"day": 80, "file": "x_wiki-race_Q.eval", "task": "wiki_race", "model": "none/none", "status": "error",
         "samples": 8, "completed": 5, "variant": "",
         "scores": [{"scorer": "success", "metrics": {"stderr": 0.2, "mean": 1.0}}, {"scorer": "m|o", "metrics": {"a": 2, "b": 0.5}}]},
    ]
    lines = R.logs_table(rows).splitlines()
    assert lines[2] == ("| 76 | `RiNJ.eval` | alignment_eval | answering=logprob | smollm2/smollm2 | 60 | "
                        "choice: accuracy 0.3166 (s.e. 0.06) | success |")
    assert lines[3] == ("| 80 | `Q.eval` | wiki_race | — | none/none | 5 of 8 | success: mean 1 (s.e. 0.2); m\\|o: a 2, b 0.5 | "
                        "error |")
    assert R.headline_metric(rows[0]) == ("choice accuracy", 0.3166, 0.06)
    assert R.headline_metric(rows[1]) == ("success mean", 1.0, 0.2)
    assert R.headline_metric({"scores": [{"scorer": "x", "metrics": {"a": 2}}]}) == ("x a", 2, None)
    totals = R.log_totals(rows, days=range(75, 81))
    assert totals["n_logs"] == 2 and totals["n_samples"] == 68 and totals["n_success"] == 1
    assert totals["by_day"] == {"75": 0, "76": 1, "77": 0, "78": 0, "79": 0, "80": 1}


def test_the_committed_logs_are_every_log_git_keeps():
    """The eval report reads every `.eval` under days/071–081/logs that git keeps (tracked, or new and not ignored),
    and no ignored one (day 81's large logs): checked against a plain glob and `git check-ignore`."""
    found = set(R.log_paths())
    on_disk = {p for d in R.DAYS for p in (R.ROOT / f"days/{d:03d}/logs").glob("*.eval")}
    assert found <= on_disk
    for path in sorted(on_disk):
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path.relative_to(R.ROOT))], cwd=R.ROOT).returncode == 0
        assert (path in found) == (not ignored), f"{path.name}: ignored={ignored}"


@pytest.fixture(scope="module")
def full_logs():
    """Every committed log read in full (samples included), once for the module."""
    from inspect_ai.log import read_eval_log

    return {p.name: read_eval_log(str(p)) for p in R.log_paths()}


def _as_float(value) -> float:
    return {"C": 1.0, "I": 0.0}[value] if isinstance(value, str) else float(value)


def test_log_rows_agree_with_the_samples(full_logs, measure):
    """Each log's row (read from the header only) agrees with the full log: task, model, status, the number of
    samples, and every mean-type metric (accuracy, mean) and its stderr recomputed from the samples' own scores as
    the mean and std(ddof=1)/√n (C → 1, I → 0; a dict-valued score read at the metric's scorer name)."""
    rows = R.log_rows()
    assert [r["file"] for r in rows] == list(full_logs)
    checked = 0
    for r in rows:
        log = full_logs[r["file"]]
        assert (r["task"], r["model"], r["status"]) == (log.eval.task, log.eval.model, log.status)
        assert r["samples"] == r["completed"] == len(log.samples)
        for s in r["scores"]:
            values = []
            for sample in log.samples:
                if s["scorer"] in sample.scores:
                    values.append(_as_float(sample.scores[s["scorer"]].value))
                else:
                    (score,) = [v for v in sample.scores.values() if isinstance(v.value, dict)]
                    values.append(_as_float(score.value[s["scorer"]]))
            values = np.array(values)
            for name in ("accuracy", "mean"):
                if name in s["metrics"]:
                    assert math.isclose(s["metrics"][name], values.mean(), abs_tol=1e-12), (r["file"], s["scorer"])
                    checked += 1
            if "stderr" in s["metrics"]:
                assert math.isclose(s["metrics"]["stderr"], values.std(ddof=1) / math.sqrt(len(values)),
                                    rel_tol=1e-9, abs_tol=1e-12), (r["file"], s["scorer"])
    measure("eval_report.metrics_recomputed", checked)


# ---------------------------------------------------------------- is the committed review current?


def test_review_agrees_with_the_sources(committed, measure):
    """The committed review is current (day 29's check, for days 71–81): same fingerprints (else the day changed:
    rerun `invoke experiment 82`), the ledger's status and tests, the gate reports the review read, every headline
    and every ARENA row's value equal to the day's results.json now, each results.json byte for byte (its SHA-256),
    and the same Inspect logs with the same headers (a changed, added or removed log turns it red); and the five
    tables, the totals and the verdict counts are exactly what the recorded data produce."""
    results = committed
    rerun = "run `invoke experiment 82`"
    now = R.collect()
    assert list(results["days"]) == [str(d) for d in R.DAYS]
    compared_reports = R29.assert_current(results["days"], now, review_day=82)
    for day, digest in R.source_digests().items():
        assert results["sources"][day] == digest, f"day {day}: results.json changed since the review: {rerun}"
    assert R.arena_rows() == results["arena"], f"an ARENA row changed since the review: {rerun}"
    logs_now = R.log_rows()
    assert [r["file"] for r in logs_now] == [r["file"] for r in results["logs"]], f"an Inspect log was added or removed: {rerun}"
    assert logs_now == results["logs"], f"an Inspect log changed since the review: {rerun}"
    assert results["tables"] == {"summary": R29.summary_table(results["days"]), "claims": R29.claims_table(results["days"]),
                                 "headlines": R29.headline_table(results["days"]), "arena": R.arena_table(results["arena"]),
                                 "logs": R.logs_table(results["logs"])}
    assert results["totals"] == R29.counts(results["days"])
    assert results["verdicts"] == R.verdict_counts(results["arena"])
    assert results["log_totals"] == R.log_totals(results["logs"])
    measure("review.gate_reports_compared", compared_reports)
    measure("review.comparisons", len(results["arena"]))
    measure("review.logs", len(results["logs"]))
    for name in ("module3_tests.png", "module3_verdicts.png", "module3_logs.png"):
        assert (HERE / "figures" / name).stat().st_size > 10_000
