"""The gate of day 100: the research proposal for day 99's top gap, its costing and its first step (the judge pilot),
run here on SmolLM2.

Spec (issue 17): "100 Capstone: a costed proposal (compute from our measured timings, CPU against GPU) for the most
promising gap of day 099, with the experiment's first step runnable here as the gate's subject."
References: a Hugging Face forward pass of one unpadded chat (the judge's score by hand); Cohen's κ written out as
(p_o − p_e) / (1 − p_e) and scikit-learn's roc_auc_score; a brute-force leave-one-out over every cut; the days'
results.json walked by hand (day 70's day_results); the costing recomputed line by line from those values.
"""

import importlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces, exact, float_ops

from . import judge_pilot as J
from . import proposal as P

HERE = Path(__file__).parent
R99 = importlib.import_module("days.099.review")
R70 = importlib.import_module("days.070.review")
fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module

pytestmark = pytest.mark.asset("smollm2-135m-instruct")

MAX_LOGIT = 50.0   # SmolLM2's next-token logits stay below this in magnitude (checked on the items below)
# score = 100·σ(Δ), Δ = log p(Yes) − log p(No): |dscore/dΔ| ≤ 25, and Δ carries two logits' relative error.
SCORE_TOL = Tolerance(reason="float32 logits (SMOLLM2_LOGIT_REL on |logit| ≤ 50) through 100·σ(Δ), slope ≤ 25",
                      abs=25 * 2 * SMOLLM2_LOGIT_REL * MAX_LOGIT)


def walk(day: int, key: str):
    node = R70.day_results(day)
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else node[int(part)]
    return node


@pytest.fixture(scope="module")
def smol():
    from checks.models import hf_model

    return hf_model("smollm2")


GATE_TRAITS = ("evil",)   # the gate runs the pilot on one trait's ten items (one batch); the slow test runs all 30


@pytest.fixture(scope="module")
def pilot(smol):
    """The first step, run here: day 90's judge on day 90's hand labels of one trait (one thread), once for the
    module."""
    return J.run_pilot(traits=GATE_TRAITS)


def committed_subset(committed, traits) -> list[float]:
    """The committed scores of the items of ``traits`` (the committed run scored all of day 90's items in order)."""
    items, _ = J.pilot_items()
    return [s for s, (t, _, _) in zip(committed["pilot"]["scores"], items) if t in traits]


# ---------------------------------------------------------------- the proposal answers day 99's top gap


def test_proposal_answers_day_99s_top_gap(committed):
    """Spec: "for the most promising gap of day 099". The proposal is for day 99's top-ranked gap as day 99's module
    computes it now (not as a results.json says),
    and proposal.yml carries that gap's rank, score and evidence."""
    gap = P.top_gap()
    assert gap["id"] == P.GAP_ID == committed["gap"]["id"] and gap["rank"] == 1
    proposal = yaml.safe_load((HERE / "proposal.yml").read_text())
    assert proposal["gap"]["id"] == gap["id"] and proposal["gap"]["rank"] == 1
    assert proposal["gap"]["evidence"] == [{"day": e["day"], "key": e["key"], "value": e["value"]} for e in gap["evidence"]]
    assert math.isclose(proposal["gap"]["score"], gap["score"], rel_tol=1e-12)


# ---------------------------------------------------------------- the pilot (the first step)


def test_judge_score_equals_a_hand_computed_forward(smol, pilot):
    """Spec: "the experiment's first step runnable here as the gate's subject". A pilot score is
    100·p(Yes)/(p(Yes)+p(No)) at the first generated position: Hugging Face's forward on one
    unpadded chat (the chat template with the generation prompt) against the batched, left-padded judge."""
    hf, tok = smol
    items, _ = J.pilot_items(GATE_TRAITS)
    yes, no = tok.encode("Yes", add_special_tokens=False)[0], tok.encode("No", add_special_tokens=False)[0]
    for i in (0, 4, 9):
        ids = tok.apply_chat_template(P.J.P90.judge_prompt(*items[i]), add_generation_prompt=True, return_tensors="pt")
        ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
        with torch.no_grad():
            logits = hf(input_ids=ids).logits[0, -1].double()
        assert logits.abs().max() < MAX_LOGIT
        logp = torch.log_softmax(logits, -1)
        want = float(100 * torch.exp(logp[yes]) / (torch.exp(logp[yes]) + torch.exp(logp[no])))
        assert abs(pilot["scores"][i] - want) <= SCORE_TOL.abs, i


def test_pilot_timing_and_tokens(smol, pilot):
    """The pilot's cost record: CPU and wall seconds per item are the run's totals over its items (CPU time of one
    thread cannot exceed the wall time by more than rounding), and its tokens are the chat template's token counts
    of the judge prompts, counted here with the tokenizer alone."""
    hf, tok = smol
    t = pilot["timing"]
    items, _ = J.pilot_items(GATE_TRAITS)
    assert t["n_items"] == len(items)
    assert math.isclose(t["cpu_seconds_per_item"], t["cpu_seconds"] / len(items), rel_tol=1e-12)
    assert math.isclose(t["wall_seconds_per_item"], t["wall_seconds"] / len(items), rel_tol=1e-12)
    assert 0 < t["cpu_seconds"] <= 1.05 * t["wall_seconds"] + 0.05
    counts = []
    for it in items:
        text = tok.apply_chat_template(P.J.P90.judge_prompt(*it), add_generation_prompt=True, tokenize=False)
        counts.append(len(tok(text, add_special_tokens=False).input_ids))
    assert t["tokens"] == sum(counts) and math.isclose(t["tokens_per_item"], sum(counts) / len(items))


def _kappa_by_hand(y, p) -> float:
    y, p = np.asarray(y, int), np.asarray(p, int)
    po = (y == p).mean()
    pe = y.mean() * p.mean() + (1 - y.mean()) * (1 - p.mean())
    return 0.0 if pe == 1 else (po - pe) / (1 - pe)


def _loo_by_brute_force(scores, labels):
    """For each held-out item: every cut between two sorted scores of the rest (and beyond both ends), the one with
    the largest hand-computed κ (the lowest cut on a tie), applied to the held-out score."""
    out = []
    for i in range(len(scores)):
        s = [x for j, x in enumerate(scores) if j != i]
        y = [x for j, x in enumerate(labels) if j != i]
        u = sorted(set(s))
        cuts = [u[0] - 1.0] + [(a + b) / 2 for a, b in zip(u, u[1:])] + [u[-1] + 1.0]
        best = max(cuts, key=lambda c: (_kappa_by_hand(y, [x > c for x in s]), -c))
        out.append(int(scores[i] > best))
    return out


@pytest.mark.parametrize("case", ["random", "separable_shifted", "reversed", "score_on_the_cut"])
def test_leave_one_out_calibration_by_brute_force(case):
    """Spec: the first step (calibration or ranking). loo_calibrated against a brute force with κ written out by hand; a judge that ranks perfectly but sits below
    the fixed threshold recovers κ = 1 and reads 'calibration'; a reversed judge reads 'ranking'. A held-out score
    exactly on the rest's best cut (the negative scoring 9: the rest's cut is the midpoint of 7 and 11) is labelled 0,
    since a label is 1 only above the cut; κ of two constant, equal labellings is 0 (no agreement beyond chance)."""
    g = np.random.default_rng(7)
    labels = np.array([1] * 8 + [0] * 8)
    scores = {"random": g.uniform(0, 100, 16), "separable_shifted": np.r_[g.uniform(20, 30, 8), g.uniform(5, 15, 8)],
              "reversed": np.r_[g.uniform(5, 15, 8), g.uniform(20, 30, 8)],
              "score_on_the_cut": np.r_[11:19, 1:8, 9].astype(float)}[case]
    held = J.loo_calibrated(scores, labels)
    assert list(held) == _loo_by_brute_force(list(scores), list(labels))
    assert math.isclose(J.kappa(labels, held), _kappa_by_hand(labels, held), abs_tol=1e-12)
    if case == "score_on_the_cut":
        assert held[-1] == 0 and J.kappa([1] * 4, [1] * 4) == _kappa_by_hand([1] * 4, [1] * 4) == 0.0
    if case in ("separable_shifted", "reversed"):
        s = J.summarise(scores, labels, [("evil", "q", "r")] * 16)
        assert s["fixed"]["judge_kappa"] == 0.0
        assert s["verdict"] == {"separable_shifted": "calibration", "reversed": "ranking"}[case]
        assert s["loo"]["kappa"] == (1.0 if case == "separable_shifted" else s["loo"]["kappa"])


def test_verdict_rule():
    """The pre-stated rule: calibration needs the AUROC interval above ½ and LOO κ ≥ 0.4; an interval reaching ½
    is ranking; anything else is inconclusive."""
    assert J.verdict((0.7, 0.9), 0.5) == "calibration"
    assert J.verdict((0.7, 0.9), 0.39) == "inconclusive"
    assert J.verdict((0.5, 0.9), 0.9) == "ranking"
    assert J.verdict((0.2, 0.6), -0.5) == "ranking"


def test_auroc_equals_sklearn_and_day_90s_per_trait(pilot):
    """The pilot's AUROC is scikit-learn's on its scores; the interval contains it; the per-trait AUROC equals the
    one day 90 recorded for the same judge on the same items (read through day 99's reader): the pilot repeats
    day 90's measurement before extending it."""
    from sklearn.metrics import roc_auc_score

    s = pilot["summary"]
    assert math.isclose(s["auroc"], roc_auc_score(pilot["labels"], pilot["scores"]), abs_tol=1e-12)
    assert s["auroc_ci95"][0] <= s["auroc"] <= s["auroc_ci95"][1]
    for trait, value in s["auroc_by_trait"].items():
        assert math.isclose(value, R99.value_at(90, f"judges.{trait}.judge_auroc"), abs_tol=1e-12), trait
    assert s["fixed"]["judge_kappa"] == R99.value_at(90, "judges.evil.judge_kappa")


def test_pilot_reproduces_the_committed_run(committed, pilot, measure):
    """The gate's pilot reproduces the committed one on its items: each score within float32 logit rounding through
    the sigmoid; the committed summary is exactly what summarise gives on the committed scores (comparisons and
    counts of float64 numbers, a seeded bootstrap), and the committed timing is per item of the run."""
    c = committed["pilot"]
    worst = assert_reproduces(pilot["scores"], committed_subset(committed, GATE_TRAITS), SCORE_TOL, name="pilot.scores")
    measure("pilot.score_deviation_of_tolerance", worst)
    items, labels = J.pilot_items()
    assert c["labels"] == labels.tolist()
    assert_reproduces(J.summarise(np.array(c["scores"]), labels, items), c["summary"],
                      float_ops(64, why="means of 0/1 counts and sklearn κ on the same numbers"), name="summary")
    t = c["timing"]
    assert t["n_items"] == len(items) and math.isclose(t["cpu_seconds_per_item"], t["cpu_seconds"] / len(items))
    measure("pilot.committed_auroc", c["summary"]["auroc"], "AUROC interval reaches 0.5: ranking")
    measure("pilot.committed_loo_kappa", c["summary"]["loo"]["kappa"])
    measure("pilot.cpu_seconds_per_item", pilot["timing"]["cpu_seconds_per_item"])


@pytest.mark.slow
def test_full_pilot_reproduces_the_committed_headline(committed, smol):
    """The whole first step rerun (30 items): every score within the derived tolerance; the AUROC within the share of
    positive–negative pairs whose order that tolerance could swap (pairs closer than twice it); the verdict as
    committed; κ at 50 exactly, no score lying within the tolerance of 50."""
    run = J.run_pilot()
    c = committed["pilot"]
    assert_reproduces(run["scores"], c["scores"], SCORE_TOL, name="pilot.scores")
    s, y = np.array(c["scores"]), np.array(c["labels"])
    close = np.abs(s[y == 1][:, None] - s[y == 0][None, :]) <= 2 * SCORE_TOL.abs
    tol = Tolerance(reason="pairs whose order the score tolerance could swap", abs=close.mean() + 1e-12)
    assert_reproduces(run["summary"]["auroc"], c["summary"]["auroc"], tol, name="pilot.auroc")
    assert np.abs(s - 50).min() > SCORE_TOL.abs
    assert run["summary"]["fixed"]["judge_kappa"] == c["summary"]["fixed"]["judge_kappa"]
    assert run["summary"]["verdict"] == c["summary"]["verdict"]


# ---------------------------------------------------------------- the costing


def test_costing_follows_from_the_measurements(committed):
    """Spec: "a costed proposal (compute from our measured timings, CPU against GPU)". Every costing line recomputed
    by hand from its sources: the label-set sizes, day 83's judged responses and
    day 92's LoRA run walked in their results.json, the pilot's measured CPU seconds and tokens per item and
    SmolLM2's parameter count from the committed run; CPU = measured seconds × N/N₁₃₅ₘ × items (or per-step seconds
    × steps), GPU = 2N (6N for training) × tokens × items ÷ (989.4 TFLOP/s × 0.10)."""
    inputs, cost = committed["inputs"], committed["costing"]
    assert inputs == P.measured_inputs(committed["pilot"])
    n_labels = sum(walk(d, k) for d, k in P.LABEL_SETS)
    assert n_labels == cost["n_labels"] == 20 + 30 + 19 + 30 + 66 == sum(s["n"] for s in inputs["label_sets"])
    per_item = committed["pilot"]["timing"]["cpu_seconds"] / committed["pilot"]["timing"]["n_items"]
    tokens = committed["pilot"]["timing"]["tokens"] / committed["pilot"]["timing"]["n_items"]
    n135 = committed["pilot"]["params"]
    peak = 989.4e12 * 0.10
    items = n_labels * 3
    expected = [("SmolLM2-135M-Instruct", n135, items)] + [(m["name"], m["params"], items) for m in P.MODELS]
    for line, (name, params, n) in zip(cost["lines"][:6], expected):
        assert (line["model"], line["items"]) == (name, n)
        assert math.isclose(line["cpu_seconds"], per_item * params / n135 * n, rel_tol=1e-12)
        assert math.isclose(line["gpu_seconds"], 2 * params * tokens * n / peak, rel_tol=1e-12)
    lora = cost["lines"][6]
    step = walk(92, "lora_kiwi.cpu_seconds") / walk(92, "lora_kiwi.train.steps")
    tokens_step = walk(92, "lora_kiwi.train.batch_size") * walk(92, "lora_kiwi.train.max_len")
    assert math.isclose(lora["cpu_seconds"], step * 200 * 5, rel_tol=1e-12)
    assert math.isclose(lora["gpu_seconds"], 6 * n135 * tokens_step * 1000 / peak, rel_tol=1e-12)
    rescore = cost["lines"][7]
    n83 = sum(walk(83, f"{d}.judge.{w}.n") for d in ("in_domain", "out_of_domain") for w in ("base", "control", "organism"))
    assert rescore["items"] == n83
    assert math.isclose(rescore["cpu_seconds"], per_item * 1.71e9 / n135 * n83, rel_tol=1e-12)
    assert [x["milestone"] for x in cost["lines"]] == ["M2"] + ["M3"] * 5 + ["M4", "M5"]
    for x in cost["lines"]:
        assert (x["cpu_hours"], x["gpu_hours"]) == (x["cpu_seconds"] / 3600, x["gpu_seconds"] / 3600)
    assert math.isclose(cost["cpu_hours"] * 3600, sum(x["cpu_seconds"] for x in cost["lines"]), rel_tol=1e-12)
    assert math.isclose(cost["cpu_over_gpu"], cost["cpu_hours"] / cost["gpu_hours"], rel_tol=1e-12)
    assert [x["fits_cpu"] for x in cost["lines"][:6]] == [p * 4 / 1e9 < 24 for _, p, _ in expected]
    assert_reproduces(P.costing(inputs), cost, exact("the same arithmetic on the same committed inputs"), name="costing")
    assert committed["tables"]["cost"] == P.cost_table(cost)


def test_proposal_yml_is_what_the_code_writes(committed):
    """proposal.yml is build_proposal of day 99's top gap now, the committed pilot, inputs and costing: no number in
    it is typed by hand; it has hypotheses with decision rules, milestones M1–M5 and risks."""
    proposal = yaml.safe_load((HERE / "proposal.yml").read_text())
    c = committed
    want = P.build_proposal(P.top_gap(), c["pilot"], c["inputs"], c["costing"])
    assert proposal == yaml.safe_load(yaml.safe_dump(want, sort_keys=False, allow_unicode=True))
    assert c["proposal"] == proposal            # the post cites the same proposal from results.json
    assert [h["id"] for h in proposal["hypotheses"]] == ["H1", "H2", "H3"] and all(h["decision"] for h in proposal["hypotheses"])
    assert [m["id"] for m in proposal["milestones"]] == ["M1", "M2", "M3", "M4", "M5"] and len(proposal["risks"]) >= 4
    assert proposal["hypotheses"][0]["status"] == f"pilot: {c['pilot']['summary']['verdict']}"
    assert (HERE / "figures/pilot.png").stat().st_size > 10_000
