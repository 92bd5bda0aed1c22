"""The gate of day 99: the whole curriculum in review, generated with the module reviews' machinery (days 29, 70, 82)
from the ledger and every results.json of days 1–98 and the capstone, set beside ARENA's results, with a ranked list
of open research gaps.

Spec (issue 17): "099 Full curriculum review + research gaps: generated from the ledger and every results.json: which
ARENA results reproduced here, which did not at 135M parameters or on a CPU, and which open questions the project's
own numbers raise. Its test fails when any source changes."
References: progress.yml parsed as plain YAML; each results.json read with json and walked by hand; hashlib over the
files' bytes; Python's ``operator`` module for the gaps' conditions; a brute-force re-ranking for the robustness.
"""

import copy
import hashlib
import importlib
import inspect
import json
import math
import operator
from pathlib import Path

import pytest
import yaml

from . import review as R

HERE = Path(__file__).parent
R29 = importlib.import_module("days.029.review")
R70 = importlib.import_module("days.070.review")
R82 = importlib.import_module("days.082.review")
OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "<": operator.lt, ">": operator.gt}


def raw_ledger() -> dict:
    data = yaml.safe_load((R.ROOT / "progress.yml").read_text())
    return {d["day"]: d for d in data["days"]} | {"capstone": data["capstone"]}


def walk(day: int, key: str):
    """A day's results.json value by hand (day 70's day_results, the parsed file, then dict/list indexing, not day
    29's lookup); None when the file or the path is missing."""
    node = R70.day_results(day)
    if node is None:
        return None
    for part in key.split("."):
        if isinstance(node, dict):
            if part not in node:
                return None
            node = node[part]
        else:
            if int(part) >= len(node):
                return None
            node = node[int(part)]
    return node


# ---------------------------------------------------------------- the module reviews' machinery, reused


def test_review_reuses_the_module_reviews():
    """Spec: "reuse the module reviews' machinery by import". Day 99 imports days 29, 70 and 82 instead of copying them: it defines none of their functions, collects with
    day 29's collect, builds ARENA rows and tables with day 70's, digests with day 82's, and takes modules 1 and 3's
    ARENA rows and headlines (the very objects) from days 70 and 82."""
    for name in ("ledger_rows", "headline_values", "gate_measurements", "summary_table", "claims_table",
                 "headline_table", "counts", "lookup", "fmt", "escape", "assert_current", "arena_table",
                 "verdict_counts", "arena_row_problems", "verdicts_figure", "log_rows"):
        assert not hasattr(R, name), f"day 99 defines its own {name}: import it"
    assert (R.R29, R.R70, R.R82) == (R29, R70, R82)
    assert "R29.collect(proj, days=REVIEWED, headlines=HEADLINES)" in inspect.getsource(R.collect)
    assert "R70.arena_rows(proj, ARENA)" in inspect.getsource(R.arena_rows)
    assert "R82.source_digests(REVIEWED)" in inspect.getsource(R.source_digests)
    assert "R70.arena_table(" in inspect.getsource(R.arena_tables)
    ids = {id(r) for r in R.ARENA}
    assert all(id(r) in ids for r in R70.ARENA + R82.ARENA)
    for day in range(30, 70):
        assert R.HEADLINES[day] is R70.HEADLINES[day]
    for day in range(71, 82):
        assert R.HEADLINES[day] is R82.HEADLINES[day]
    for day in range(15, 29):
        assert R.HEADLINES[day] is R29.HEADLINES[day]


def test_sources_are_days_1_to_98_and_the_capstone():
    """Spec: "generated from the ledger and every results.json". The review reads days 1–98 and the capstone, never itself or the proposal after it (their publication would
    make it stale); every module's days are covered once, and the day modules are named by number, so the review's
    own sources name only the three reviews it imports."""
    assert list(R.REVIEWED) == list(range(1, 99))
    covered = sorted(d for m in R.MODULES for d in m["days"])
    assert covered == list(range(1, 99))
    assert set(R.source_digests()) == {str(d) for d in range(1, 99)} | {"capstone", "ledger"}
    import re
    named = {int(n) for p in HERE.glob("*.py") for n in re.findall(r"days[./](\d{3})\b", p.read_text())}
    assert named == {29, 70, 82}


def test_new_headlines_resolve():
    """Every headline this review adds (modules 0 and 4, and the three reviews) resolves in its day's results.json,
    read with json and walked by hand; every day of modules 0–4 has at least one headline."""
    for table in (R.HEADLINES_0, R.HEADLINES_4, R.HEADLINES_REVIEWS):
        for day, pairs in table.items():
            for key, label in pairs:
                assert label and walk(day, key) is not None, f"day {day}: {key}"
    assert set(range(1, 95)) <= set(R.HEADLINES)


def test_arena_rows_cover_every_section_of_modules_0_to_4():
    """Spec: "which ARENA results reproduced here, which did not at 135M parameters or on a CPU". Day 70's checks of
    the rows over every ARENA section of modules 0–4: each section has a comparison, each
    comparison cites its day's own section (progress.yml's `arena` field), a verdict of the three, a citation, a model
    and a reason; every comparison's value resolves (read by hand) except where the day's own review left it missing."""
    sections = [s for m in R.MODULES for s in m["sections"]]
    assert len(sections) == 6 + 12 + 4 + 4 + 5
    assert R70.arena_row_problems(R.ARENA, sections, raw_ledger()) == []
    for r in R.arena_rows():
        assert r["value"] == walk(r["day"], r["key"]) and r["found"], (r["day"], r["key"])


def test_tables_are_built_from_the_data():
    """The totals table on hand-made totals (a pending module shows 0 of its days); the ARENA tables are day 70's per
    module in section order; the gaps table shows each gap's rank (or its status), the raising values and the score."""
    totals = {"0": {"name": "A | B", "n_passed": 14, "n_days": 14, "tests_passed": 1234, "gate_seconds_total": 147.6,
                    "verdicts": {"reproduces": 8, "differs": 0, "not_comparable": 2}},
              "research": {"name": "R", "n_passed": 0, "n_days": 4, "tests_passed": 0, "gate_seconds_total": 0,
                           "verdicts": {"reproduces": 0, "differs": 0, "not_comparable": 0}}}
    lines = R.totals_table(totals).splitlines()
    assert lines[2] == "| 0: A \\| B | 14 of 14 | 1,234 | 148 | 8 | 0 | 2 |"
    assert lines[3] == "| research: R | 0 of 4 | 0 | 0 | 0 | 0 | 0 |"
    rows = R.arena_rows()
    tables = R.arena_tables(rows)
    assert set(tables) == {"0", "1", "2", "3", "4"}
    assert tables["1"] == R70.arena_table([r for r in rows if 30 <= r["day"] < 70], R70.MODULE_SECTIONS,
                                          reported="Reported or demonstrated (citation)")
    assert [line.split(" | ")[0] for line in tables["0"].splitlines()[2:]] == sorted(
        f"| {r['section']}" for r in rows if r["day"] < 15)
    gap = {"rank": None, "status": "unknown", "title": "t", "importance": 2, "tractability": 1, "score": None,
           "cost": {"cpu_hours": None}, "evidence": [{"day": 5, "key": "k", "value": None}]}
    assert R.gaps_table([gap]).splitlines()[2] == "| unknown | t | day 5 `k` = missing | 2 | 1 | — | — |"


# ---------------------------------------------------------------- the gaps


def test_gaps_are_raised_by_the_numbers_and_ranked_by_their_score():
    """Spec: "which open questions the project's own numbers raise" (ranked, most promising computed). For every gap:
    each evidence value is the day's results.json value (walked by hand), its condition is
    evaluated with Python's operator module, the gap is open only when every condition holds; its cost is the
    measured base (walked by hand) times the product of its factors, and its score I × T ÷ log10(cost). The open gaps
    are ranked by score, highest first; the top gap is the first."""
    ranked = R.ranked_gaps()
    assert {g["id"] for g in ranked} == {g["id"] for g in R.GAPS}
    by_id = {g["id"]: g for g in R.GAPS}
    for row in ranked:
        gap = by_id[row["id"]]
        values = [walk(d, k) for d, k, _, _ in gap["evidence"]]
        assert [e["value"] for e in row["evidence"]] == values
        holds = [OPS[op](v, t) for v, (_, _, op, t) in zip(values, gap["evidence"])]
        assert row["status"] == ("open" if all(holds) else "closed")
        base = walk(*gap["cost"]["base"])
        factor = 1.0
        for f, why in gap["cost"]["factors"]:
            assert why
            factor *= f
        assert math.isclose(row["cost"]["cpu_seconds"], base * factor, rel_tol=1e-12)
        assert math.isclose(row["score"], gap["importance"] * gap["tractability"] / math.log10(base * factor), rel_tol=1e-12)
        assert gap["importance"] in (1, 2, 3) and gap["tractability"] in (1, 2, 3)
        assert gap["importance_why"] and gap["tractability_why"]
    scores = [g["score"] for g in ranked if g["status"] == "open"]
    assert scores == sorted(scores, reverse=True)
    assert [g["rank"] for g in ranked if g["status"] == "open"] == list(range(1, len(scores) + 1))
    assert R.top_gap() == ranked[0]


def test_a_gap_closes_when_its_number_moves_and_is_unknown_when_missing():
    """A gap whose condition fails is closed and unranked; one whose value is missing is unknown (not open), and its
    cost is unknown when the base timing is missing."""
    closed = dict(R.GAPS[0], id="c", evidence=[(45, "actadd_mean_sentiment_change", ">", 0)])
    missing = dict(R.GAPS[0], id="m", evidence=[(45, "no.such.path", "<", 0)], cost={"base": (45, "nope"), "what": "x",
                                                                                    "factors": [(2, "y")]})
    assert R.gap_row(closed)["status"] == "closed"
    row = R.gap_row(missing)
    assert row["status"] == "unknown" and row["score"] is None and row["cost"]["cpu_seconds"] is None


def test_rank_robustness_by_brute_force():
    """rank_robustness against a brute-force re-ranking: every open gap's I or T moved by ±1 within 1–3, the scores
    recomputed from scratch, the top kept when it is still first (on a tie, the top stays)."""
    gaps = R.ranked_gaps()
    got = R.rank_robustness(gaps)
    open_ = [g for g in gaps if g["status"] == "open"]
    kept = total = 0
    for i, g in enumerate(open_):
        for field in ("importance", "tractability"):
            for new in (g[field] - 1, g[field] + 1):
                if not 1 <= new <= 3:
                    continue
                trial = copy.deepcopy(open_)
                trial[i][field] = new
                s = [h["importance"] * h["tractability"] / math.log10(h["cost"]["cpu_seconds"]) for h in trial]
                total += 1
                kept += s[0] >= max(s)
    assert (got["n_perturbations"], got["top_kept"]) == (total, kept)


def test_digests_are_sha256_of_the_files_bytes():
    """Each day's digest is hashlib's SHA-256 of the bytes day 70's day_results parsed (re-serialised files would
    differ: compared through the parsed JSON of the bytes hashed), None for a day without a file; the capstone's is
    the SHA-256 of its own file."""
    digests = R.source_digests()
    for day in (1, 45, 94, 95):
        data = R70.day_results(day)
        assert (digests[str(day)] is None) == (data is None)
    folder = R.ROOT / "capstone"
    (cap,) = [p for p in folder.glob("*.json") if p.stem == "results"]
    assert digests["capstone"] == hashlib.sha256(cap.read_bytes()).hexdigest()
    for day in (1, 45, 94):
        (path,) = [p for p in (R.ROOT / "days" / f"{day:03d}").glob("*.json") if p.stem == "results"]
        assert digests[str(day)] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert json.loads(path.read_bytes()) == R70.day_results(day)


def test_ledger_digest_ignores_check_times_but_not_content():
    """The ledger digest changes with a day's fingerprint, status or tests, or the capstone's, and not with a re-check
    that only moves the check time or the gate seconds."""
    days = {"1": {"ledger": {"topic": "T", "status": "passed", "tests_passed": 3, "tests_failed": 0, "fingerprint": "a",
                             "last_check": "t1", "gate_seconds": 1.0}}}
    cap = {"title": "C", "status": "passed", "tests_passed": 5, "tests_failed": 0, "fingerprint": "b", "gate_seconds": 2}
    base = R.ledger_digest(days, cap)
    again = copy.deepcopy(days)
    again["1"]["ledger"].update(last_check="t2", gate_seconds=9.0)
    assert R.ledger_digest(again, dict(cap, gate_seconds=3)) == base
    for change in (dict(fingerprint="z"), dict(status="failed"), dict(tests_passed=4)):
        other = copy.deepcopy(days)
        other["1"]["ledger"].update(change)
        assert R.ledger_digest(other, cap) != base
    assert R.ledger_digest(days, dict(cap, fingerprint="c")) != base


# ---------------------------------------------------------------- is the committed review current?


def test_review_agrees_with_the_sources(committed, measure):
    """Spec: "its test fails when any source changes". The committed review is current: day 29's check over days 1–98 (fingerprints, ledger status and tests, the gate
    reports it read, every headline), each results.json and the capstone's byte for byte (SHA-256 by hashlib here),
    the ledger's rows of days 1–98 and the capstone, the ARENA values, the gaps and their ranking; the tables, totals
    and verdict counts are what the recorded data produce; days not passed yet are listed as pending. Any change of
    a source turns this red: run `invoke experiment 99`."""
    results = committed
    rerun = "run `invoke experiment 99`"
    assert list(results["days"]) == [str(d) for d in range(1, 99)]
    now = R.collect()
    compared = R29.assert_current(results["days"], now, review_day=99)
    assert R.stale_sources(results["sources"], R.source_digests(now)) == [], f"sources changed: {rerun}"
    assert results["sources"]["ledger"] == R.ledger_digest(now, R.capstone_row()), f"the ledger changed: {rerun}"
    led = raw_ledger()["capstone"]
    assert (results["capstone"]["status"], results["capstone"]["fingerprint"]) == (led["status"], led["fingerprint"])
    assert R.arena_rows() == results["arena"], f"an ARENA row changed since the review: {rerun}"
    assert R.ranked_gaps() == results["gaps"], f"a gap changed since the review: {rerun}"
    assert results["top_gap"] == results["gaps"][0]["id"]
    assert results["robustness"] == R.rank_robustness(results["gaps"])
    assert results["by_id"] == {g["id"]: g for g in results["gaps"]}
    ledger = raw_ledger()
    assert results["pending"] == [d for d in range(1, 99) if ledger[d].get("status", "not-started") != "passed"]
    assert results["pending_text"] == (", ".join(f"day {d}" for d in results["pending"]) or "none")
    assert results["modules"] == R.module_totals(results["days"], results["arena"])
    assert results["totals"] == R29.counts(results["days"])
    assert results["verdicts"] == R70.verdict_counts(results["arena"])
    assert results["n_comparisons"] == len(results["arena"]) == sum(m["n_comparisons"] for m in results["modules"].values())
    assert results["tables"] == {"modules": R.totals_table(results["modules"]), "arena": R.arena_tables(results["arena"]),
                                 "gaps": R.gaps_table(results["gaps"]), "headlines": R29.headline_table(results["days"])}
    measure("review.gate_reports_compared", compared)
    measure("review.comparisons", len(results["arena"]))
    measure("review.open_gaps", sum(g["status"] == "open" for g in results["gaps"]))
    for name in ("verdicts.png", "gaps.png"):
        assert (HERE / "figures" / name).stat().st_size > 10_000


@pytest.mark.parametrize("change", ["fingerprint", "headline", "results"])
def test_assert_current_and_digests_catch_a_changed_day(committed, change):
    """A changed day turns the check red: a changed fingerprint or headline through day 29's assert_current, a
    changed results.json (or the capstone's) through stale_sources over the digests (simulated on a copy of the
    recorded data), named in source order."""
    now = copy.deepcopy(committed["days"])
    if change == "fingerprint":
        now["45"]["ledger"]["fingerprint"] = "sha256:other"
    elif change == "headline":
        now["45"]["headlines"][0]["value"] = 1.0
    if change == "results":
        recorded = dict(committed["sources"], **{"45": "0" * 64, "capstone": None})
        assert R.stale_sources(recorded, R.source_digests()) == ["45", "capstone"]
    else:
        with pytest.raises(AssertionError, match="day 45.*invoke experiment 99"):
            R29.assert_current(committed["days"], now, review_day=99)
