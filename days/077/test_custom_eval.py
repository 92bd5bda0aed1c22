"""The gate of day 77: a custom eval in Inspect, swept over system prompt × chain of thought × shuffled
options × answering method (ARENA 3.3, "Writing tasks and evaluating"; issue 15: "a sweep ... with the
spread and CIs in one figure; logs read back for the post").

References: the dataset's records read as plain JSON (what a scripted model should score), scipy's binomial
distribution for the exact McNemar p-value, inspect's own ``read_eval_log`` for the committed logs, and the
committed full run for the real SmolLM2 cells.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from . import custom_eval as C

HERE = Path(__file__).parent
needs_smollm2 = pytest.mark.asset("smollm2-135m-instruct")
RECORDS = json.loads(C.DATASET_PATH.read_text(encoding="utf-8"))


def test_the_sweep_is_a_full_factorial():
    """Sixteen distinct cells; each level of each factor in exactly eight (a balanced design: main effects
    are differences of means over cells)."""
    cells = C.sweep_grid()
    assert len({c.name for c in cells}) == 16
    for factor, levels in {"system": (True, False), "cot": (True, False), "shuffle": (True, False),
                           "answering": ("generate", "logprob")}.items():
        assert [sum(getattr(c, factor) == lv for c in cells) for lv in levels] == [8, 8]
    with pytest.raises(ValueError, match="answering must be"):
        C.cell_solver(C.Cell(True, False, False, "guess"))


# ---------------------------------------------------------------------------------------------------- scripted


def _usage():
    from inspect_ai.model import ModelUsage

    return ModelUsage(input_tokens=10, output_tokens=1, total_tokens=11)


def _options(messages) -> dict[str, str]:
    """The lettered options of the question as the model saw them (ARENA's 'A) text' lines)."""
    text = "\n".join(m.text for m in messages if m.role == "user")
    return dict(re.findall(r"^([A-Z])\) (.*)$", text, flags=re.M))


def _scripted(pick, seen: list | None = None):
    """A mockllm script: ``pick(options) -> letter``, answered as text or as the top log-prob letter."""
    from inspect_ai.model import Logprob, Logprobs, ModelOutput, TopLogprob

    def output(messages, tools, tool_choice, config):
        if seen is not None:
            seen.append((bool(config.logprobs), [(m.role, m.text) for m in messages]))
        letter = pick(_options(messages))
        if config.logprobs:
            top = [(f" {L}", -1.0 - 0.5 * (L != letter) - 0.01 * i) for i, L in enumerate("ABCD")]
            out = ModelOutput.from_content("mockllm/model", f" {letter}")
            out.choices[0].logprobs = Logprobs(content=[Logprob(token=f" {letter}", logprob=-1.0, top_logprobs=[
                TopLogprob(token=t, logprob=v) for t, v in sorted(top, key=lambda tv: -tv[1])])])
        else:
            out = ModelOutput.from_content("mockllm/model", f"Let me see.\nANSWER: {letter}")
        out.usage = _usage()
        return out

    return output


def _run(cells, script, tmp_path, n=12):
    from inspect_ai.model import get_model

    model = get_model("mockllm/model", custom_outputs=script)
    return [C.summarise_cell(log) for log in C.run_sweep(model, tmp_path, cells=cells, n=n)]


def _behaviour_letters(record) -> list[str]:
    letters = record["answer_matching_behavior"]
    return [letters] if isinstance(letters, str) else list(letters)


def _behaviour_texts(record) -> set[str]:
    return {record["answers"][L] for L in _behaviour_letters(record)}


def test_a_model_that_always_says_a_scores_the_records_share_of_a(tmp_path):
    """Answering 'A' to every question, by text or by log-prob, matches the behaviour on exactly the records
    whose answer_matching_behavior is A (counted from the raw JSON) in the ordered cells, in all four ways of
    asking that do not shuffle."""
    cells = [c for c in C.sweep_grid() if not c.shuffle and c.system]
    expected = sum("A" in _behaviour_letters(r) for r in RECORDS[:12])
    for summary in _run(cells, _scripted(lambda options: "A"), tmp_path):
        assert summary["answer_letter"]["k"] == expected, summary["cell"]
        assert summary["answer_letters"] == {"A": 12}


def test_a_model_that_reads_the_options_matches_in_every_cell(tmp_path):
    """A model that answers the letter of the behaviour's text, whatever its position, scores 12/12 in every
    cell (shuffled included: the target follows its text); and the question it saw is the same in the direct
    generate and log-prob cells, while the CoT cells ask for reasoning first, then for the choice."""
    texts = {r["question"].strip(): _behaviour_texts(r) for r in RECORDS[:12]}

    def pick(options):
        return next(L for L, t in options.items() if any(t.strip() == b.strip() for bs in texts.values() for b in bs))

    seen: list = []
    cells = C.sweep_grid()
    summaries = _run(cells, _scripted(pick, seen), tmp_path)
    assert all(s[name]["k"] == 12 for s in summaries for name in C.SCORERS), [s["cell"] for s in summaries]
    def questions(logprobs: bool) -> set[str]:
        """The question prompts (the first user turn) of the direct cells, for one answering method."""
        firsts = {next(t for r, t in m if r == "user") for lp, m in seen if lp == logprobs}
        return {t for t in firsts if not t.startswith("Think about")}

    assert questions(True) == questions(False) and len(questions(True)) > 12   # 12 records, ordered and shuffled
    assert all(q.lstrip().startswith("Answer the following multiple choice question") for q in questions(True))
    cot = [m for _, m in seen if any("Please make a choice" in t for _, t in m)]
    assert cot and all(next(t for r, t in m if r == "user").startswith("Think about the following question")
                       for m in cot)


# ---------------------------------------------------------------------------------------------------- statistics


def test_mcnemar_is_the_exact_binomial_test_on_disagreements():
    """p = 2·min(P[X ≤ b10], P[X ≥ b10]) for X ~ Bin(b10 + b01, 1/2), capped at 1 (scipy.stats.binom);
    1 when no record disagrees; different records are refused."""
    from scipy.stats import binom

    a = {str(i): i < 9 for i in range(20)}
    b = {str(i): 6 <= i < 10 for i in range(20)}          # only a: 0..5 (6); only b: 9 (1)
    got = C.mcnemar(a, b)
    ref = min(1.0, 2 * min(binom.cdf(6, 7, 0.5), binom.sf(5, 7, 0.5)))
    assert (got["only_first"], got["only_second"]) == (6, 1)
    assert math.isclose(got["p_value"], ref, rel_tol=1e-12)
    assert C.mcnemar(a, dict(a))["p_value"] == 1.0
    with pytest.raises(ValueError, match="same records"):
        C.mcnemar(a, {"x": True})


def _cell(system, cot, shuffle, answering, p, matched):
    return {"cell": {"system": system, "cot": cot, "shuffle": shuffle, "answering": answering},
            "lenient_letter": {"p": p, "matched": matched}}


def test_spread_and_main_effects_on_hand_made_cells():
    """Spread = max − min with the two cells named; a main effect = mean over the cells at one level minus
    the mean at the other: here only shuffling changes the rate (by 0.2), so the other effects are 0."""
    cells = []
    for c in C.sweep_grid():
        p = 0.5 + (0.2 if c.shuffle else 0.0)
        cells.append(_cell(c.system, c.cot, c.shuffle, c.answering, p, {"r1": c.shuffle, "r2": True}))
    effects = C.main_effects(cells)
    assert effects["shuffle"]["effect"] == pytest.approx(0.2, abs=1e-12)
    assert all(abs(effects[f]["effect"]) < 1e-12 for f in ("system", "cot", "answering"))
    cells[5]["lenient_letter"]["p"] = 0.95
    s = C.spread(cells)
    assert s["max"]["cell"] == C.Cell(**cells[5]["cell"]).name and s["spread"] == pytest.approx(0.45)
    # each level's mean is over the cells that have it, also when a sweep is incomplete (3 shuffled cells, 1 not)
    few = [_cell(*levels, p, {"r1": True}) for *levels, p in
           ((True, False, True, "logprob", 0.9), (False, True, True, "generate", 0.6),
            (True, True, True, "logprob", 0.3), (False, False, False, "generate", 0.1))]
    assert C.main_effects(few)["shuffle"]["effect"] == pytest.approx(0.6 - 0.1, abs=1e-12)


# ---------------------------------------------------------------------------------------------------- committed


def test_results_are_the_committed_logs_read_back(committed):
    """The sweep ran on today's day-075 dataset (its sha256), and results.json's cells, spreads and main effects
    are exactly what the committed .eval logs give when read back with inspect's read_eval_log (same files, same arithmetic: exact on any CPU); one log per cell, each
    with every record; in the ordered cells, "always A" scores the records' share of behaviour-at-A counted
    from the raw JSON; the sweep's figure exists."""
    assert committed["dataset_sha256"] == C.dataset_sha256(), "day 075's dataset changed: run `invoke experiment 77`"
    again = C.results_from_logs(HERE / "logs", committed["n_records"])
    for key in ("cells", "spread", "main_effects"):
        assert again[key] == committed[key], key
    assert [C.Cell(**c["cell"]).name for c in committed["cells"]] == [c.name for c in C.sweep_grid()]
    assert all(c["n"] == committed["n_records"] == len(RECORDS) for c in committed["cells"])
    at_a = sum(_behaviour_letters(r) == ["A"] for r in RECORDS)           # counted from the raw JSON
    for c in committed["cells"]:
        if not c["cell"]["shuffle"]:
            assert c["always_a"]["k"] == at_a
    assert (HERE / "figures" / "sweep.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def smol_model():
    from inspect_ai.model import get_model

    return get_model("smollm2/smollm2")


def _margins(log_file: str) -> dict[str, float]:
    """Per sample: the gap between the best and second-best letter log-probability in a committed log."""
    from inspect_ai.log import read_eval_log

    out = {}
    for s in read_eval_log(str(HERE / "logs" / log_file)).samples:
        lp = sorted((v for v in s.metadata["letter_logprobs"].values() if v > -math.inf), reverse=True)
        out[str(s.id)] = (lp[0] - lp[1]) if len(lp) > 1 else math.inf
    return out


@needs_smollm2
@pytest.mark.parametrize("shuffle", [False, True])
def test_smollm2_logprob_cells_reproduce_the_committed_run(committed, smol_model, tmp_path, shuffle):
    """Real SmolLM2, log-prob answering, first 8 records: each sample's answer equals the committed full run's,
    except where the committed top-two letter log-probs are within 1e-3 (batch composition changes float32
    sums by ~1e-5: a tie may flip; nothing else may)."""
    cell = C.Cell(True, False, shuffle, "logprob")
    [now] = [C.summarise_cell(log) for log in C.run_sweep(smol_model, tmp_path, cells=[cell], n=8)]
    [then] = [c for c in committed["cells"] if C.Cell(**c["cell"]) == cell]
    margins = _margins(then["log_file"])
    for sid, matched in now["answer_letter"]["matched"].items():
        if margins[sid] >= 1e-3:
            assert matched == then["answer_letter"]["matched"][sid], sid


@needs_smollm2
def test_smollm2_generate_cell_is_scored_from_its_own_completion(smol_model, tmp_path):
    """Real SmolLM2, generated answers, 4 records: the log reads back with every sample and both scores, and
    the strict scorer's answer is day 076's parse of the completion (none when it wrote no ANSWER line)."""
    from inspect_ai.log import read_eval_log

    [log] = C.run_sweep(smol_model, tmp_path, cells=[C.Cell(False, False, False, "generate")], n=4)
    back = read_eval_log(log.location)
    assert len(back.samples) == 4
    for s in back.samples:
        parsed = C.SETUP.parse_answer_letter(s.output.completion, len(s.choices))
        assert (s.scores["answer_letter"].answer or None) == parsed
        assert set(s.scores) == set(C.SCORERS)


@pytest.mark.slow
@needs_smollm2
def test_full_sweep_reproduces_the_committed_headline(committed, tmp_path):
    """The whole sweep again (16 cells × every record, ~15 min on one thread): every cell's matching rate
    within 2/n of the committed one (greedy decoding; only near-ties may flip, a couple of records at most),
    and the spread within 4/n."""
    results = C.run_experiment(tmp_path)
    n = committed["n_records"]
    for now, then in zip(results["cells"], committed["cells"]):
        for name in C.SCORERS:
            assert abs(now[name]["p"] - then[name]["p"]) <= 2 / n + 1e-12, (now["cell"], name)
    for name in C.SCORERS:
        assert abs(results["spread"][name]["spread"] - committed["spread"][name]["spread"]) <= 4 / n + 1e-12
