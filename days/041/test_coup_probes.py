"""The gate of day 41 (ARENA 1.3.1 Linear Probes, the deception section: instructed honest/deceptive pairs, probes
on the model's own answers, multi-layer aggregation, steering along a probe direction).

References: SmolLM2's chat template (the assistant span must decode to the fact), Hugging Face's hidden states of
each dialogue run alone (what batched per-token extraction must equal), TransformerLens running the same weights
with a hook that adds the same vector at ``blocks.{l-1}.hook_resid_post`` (an independent implementation of the
steering hook), greedy generation of each prompt alone (what left-padded batched generation must equal),
scikit-learn's ``roc_auc_score`` and scipy's Wilson interval. Tolerances: float32 activations and logits to
SMOLLM2_LOGIT_REL × their scale (checks/committed.py); float64 probe arithmetic to 1e-12.
"""

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from checks import assert_parity
from checks.committed import SMOLLM2_LOGIT_REL, assert_reproduces, exact

from . import coup_probes as C

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("smollm2-135m-instruct")
fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module

FACTS = ["The city of Paris is in France.", "The city of Tokyo is in Japan.", "The city of Lima is in Peru.",
         "The Spanish word 'gato' means 'cat'.", "The city of Cairo is in Egypt.", "The city of Oslo is in Norway."]


@pytest.fixture(scope="module")
def smol():
    from checks.models import hf_model

    return hf_model("smollm2")


@pytest.fixture(scope="module")
def pair_acts():
    """Per-token activations (layers 6 and 12) of the instructed pairs built from FACTS, from one batched pass."""
    dialogues = C.construct_instructed_pairs(FACTS)
    acts, owner = C.dialogue_activations([d for d, _ in dialogues], [6, 12], "smollm2", batch_size=5)
    return dialogues, acts, owner


def test_construct_instructed_pairs():
    """ARENA's construct_instructed_pairs (Apollo's Instructed-Pairs, after Zou et al.): for every fact two
    dialogues that differ only in the user's instruction, 'Pretend you're an honest person making statements
    about the world.' (label 0) or '... a dishonest person ...' (label 1), the assistant then stating the same true
    fact. The content is identical, so a probe that separates them can only be reading the instruction's effect."""
    pairs = C.construct_instructed_pairs(FACTS[:2])
    assert [label for _, label in pairs] == [0, 1, 0, 1]
    for (honest, h), (liar, l) in zip(pairs[::2], pairs[1::2]):
        assert honest[1] == liar[1] and honest[1]["role"] == "assistant"
        assert honest[0]["role"] == liar[0]["role"] == "user"
        assert "honest" in honest[0]["content"] and "dishonest" in liar[0]["content"]
        assert honest[0]["content"].replace("an honest", "a dishonest") == liar[0]["content"]
    assert [d[1]["content"] for d, _ in pairs[::2]] == FACTS[:2]


def test_instructed_pairs_split_keeps_facts_together_and_fits_the_probe(pair_acts):
    """The reusable pieces (day 49 builds on them): instructed_pairs_split turns the first n known pairs' true
    statements into instructed pairs and splits them by fact, both dialogues of a fact on the same side, train
    first, with no fact in both; fit_deception_probe fits the raw-residual multi-layer probe on the training
    dialogues' response tokens, the same probe as MultiLayerProbe.from_data on the fixture's activations of those
    dialogues (computed in other batches: float32 activations within SMOLLM2_LOGIT_REL, which the L2-regularised
    fit can amplify by at most 1/λ = 100, so scores agree to 1e-2 of their scale)."""
    pairs = [C.S40.Pair(f, f + " (false)", str(i)) for i, f in enumerate(FACTS)]
    split = C.instructed_pairs_split("smollm2", n_facts=5, n_train_facts=3, pairs=pairs)
    assert split["facts"] == FACTS[:5]
    assert split["train"] + split["test"] == C.construct_instructed_pairs(FACTS[:5])
    assert len(split["train"]) == 6 and len(split["test"]) == 4
    train_facts = {d[1]["content"] for d, _ in split["train"]}
    assert not train_facts & {d[1]["content"] for d, _ in split["test"]}
    assert [label for _, label in split["train"]] == [0, 1] * 3
    dialogues, acts, owner = pair_acts
    probe = C.fit_deception_probe(dialogues[:6], [6, 12], "smollm2")
    labels = torch.tensor([label for _, label in dialogues])[owner]
    ref = C.MultiLayerProbe.from_data({l: a[owner < 6] for l, a in acts.items()}, labels[owner < 6])
    assert probe.layers == [6, 12]
    theirs = ref.score(acts).detach()
    assert_parity(probe.score(acts).detach(), theirs, atol=1e-2 * theirs.abs().max().item())


def test_response_span_decodes_to_the_assistant_text(smol):
    """The tokens a deception probe reads are exactly the assistant's response: rendered with SmolLM2's own chat
    template, the span decodes to the fact, starts right after '<|im_start|>assistant\\n', and the template's text
    before it is the generation prompt apply_chat_template would give the model."""
    hf, tok = smol
    for dialogue, _ in C.construct_instructed_pairs(FACTS[:3]):
        ids, (start, end) = C.render_dialogue(tok, dialogue)
        assert tok.decode(ids[start:end]) == dialogue[-1]["content"]
        assert tok.decode(ids[:start]) == tok.apply_chat_template(dialogue[:-1], tokenize=False,
                                                                  add_generation_prompt=True)
        assert end == len(ids)
    # a longer dialogue: every turn before the last is the prefix (here a system message and a user turn)
    long = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Where is Paris?"},
            {"role": "assistant", "content": "Paris is in France."}]
    ids, (start, end) = C.render_dialogue(tok, long)
    assert tok.decode(ids[:start]) == tok.apply_chat_template(long[:2], tokenize=False, add_generation_prompt=True)
    assert "Answer briefly." in tok.decode(ids[:start]) and tok.decode(ids[start:end]) == "Paris is in France."


def test_dialogue_activations_batched_equal_each_alone(smol, pair_acts, measure):
    """Per-token activations over the response span from right-padded batches equal Hugging Face's hidden states
    of each dialogue run alone (same weights, a different batch shape: SMOLLM2_LOGIT_REL × the residual's scale),
    and ``owner`` says which dialogue each token row came from."""
    hf, tok = smol
    dialogues, acts, owner = pair_acts
    worst = 0.0
    for i in (0, 5, 11):
        ids, (start, end) = C.render_dialogue(tok, dialogues[i][0])
        with torch.no_grad():
            hidden = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
        for l in (6, 12):
            ref = hidden[l][0, start:end]
            tol = SMOLLM2_LOGIT_REL * ref.abs().max().item()
            report = assert_parity(acts[l][owner == i], ref, atol=tol, name=f"dialogue {i} layer {l}")
            worst = max(worst, report.max_abs_err / tol)
    assert owner.tolist() == sorted(owner.tolist()) and owner.max().item() == len(dialogues) - 1
    measure("dialogue_acts_vs_alone.worst_fraction_of_tolerance", worst, "≤ 1")


def test_multi_layer_probe_is_the_mean_of_layer_scores(pair_acts):
    """Multi-layer aggregation: the MultiLayerProbe's score of a token is the mean of its per-layer probes' logits
    (each an LRProbe fitted on that layer alone), so with one layer it is that layer's probe exactly (float64,
    1e-12)."""
    dialogues, acts, owner = pair_acts
    labels = torch.tensor([label for _, label in dialogues])[owner]
    probe = C.MultiLayerProbe.from_data(acts, labels)
    singles = {l: C.P40.LRProbe.from_data(acts[l], labels) for l in acts}
    expected = (singles[6].score(acts[6]) + singles[12].score(acts[12])) / 2
    assert_parity(probe.score(acts).detach(), expected.detach(), atol=1e-12)
    one = C.MultiLayerProbe.from_data({12: acts[12]}, labels)
    assert_parity(one.score({12: acts[12]}).detach(), singles[12].score(acts[12]).detach(), atol=1e-12)


def test_score_dialogue_is_the_mean_token_score(smol, pair_acts):
    """ARENA's score_dialogue: the mean of the probe's per-token logits over the assistant's response, here
    recomputed by hand from Hugging Face's hidden states of the dialogue alone; score_dialogues (batched) agrees
    dialogue by dialogue (SMOLLM2_LOGIT_REL × the scores' scale)."""
    hf, tok = smol
    dialogues, acts, owner = pair_acts
    labels = torch.tensor([label for _, label in dialogues])[owner]
    probe = C.MultiLayerProbe.from_data(acts, labels)
    batched = C.score_dialogues([d for d, _ in dialogues[:4]], probe, "smollm2", batch_size=3)
    for i in (1, 3):
        ids, (start, end) = C.render_dialogue(tok, dialogues[i][0])
        with torch.no_grad():
            hidden = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
        by_hand = probe.score({l: hidden[l][0, start:end] for l in (6, 12)}).mean().item()
        tol = 1e-3 * max(1.0, abs(by_hand))
        assert abs(C.score_dialogue(dialogues[i][0], probe, "smollm2") - by_hand) < tol
        assert abs(batched[i].item() - by_hand) < tol


def test_probe_separates_instructed_pairs_on_held_out_facts(pair_acts, measure):
    """A probe trained on the instructed pairs of four facts scores the *other two facts'* dishonest dialogues
    above their honest ones (dialogue-level AUROC = 1 on the held-out pairs at layer 12): the instruction leaves a
    linear trace on every token of the response, even though the response is the same."""
    dialogues, acts, owner = pair_acts
    labels = torch.tensor([label for _, label in dialogues])
    train = owner < 8                                   # dialogues 0..7: the first four facts
    probe = C.MultiLayerProbe.from_data({12: acts[12][train]}, labels[owner[train]])
    scores = C.mean_by_owner(probe.score({12: acts[12]}).detach(), owner, len(dialogues))
    held = torch.arange(8, 12)
    auc = roc_auc_score(labels[held].numpy(), scores[held].numpy())
    assert auc == 1.0
    measure("gate_held_out_pairs.auroc", auc)


def test_auroc_matches_sklearn_and_bootstrap_ci():
    """auroc is the Mann-Whitney probability P(score of a positive > score of a negative) + ½ P(tie), equal to
    scikit-learn's roc_auc_score (1e-12), ties included; the bootstrap interval is seeded and contains the
    estimate."""
    g = np.random.default_rng(0)
    labels = g.integers(0, 2, 60)
    scores = np.round(g.normal(size=60) + labels, 1)          # rounded: ties
    assert abs(C.auroc(torch.tensor(scores), torch.tensor(labels)) - roc_auc_score(labels, scores)) < 1e-12
    lo, hi = C.bootstrap_auroc_ci(torch.tensor(scores), torch.tensor(labels), n_boot=300, seed=1)
    assert lo < roc_auc_score(labels, scores) < hi
    assert (lo, hi) == C.bootstrap_auroc_ci(torch.tensor(scores), torch.tensor(labels), n_boot=300, seed=1)
    # the resampling draws every score: one positive (the first) below every negative, or one negative (the first)
    # above every positive, pulls the lower end below 1 (a resample leaves a given one of 20 out with p ≈ 0.36 only)
    for first in (1, 0):
        labels = torch.tensor([first] + [1 - first] * 20 + [first] * 19)
        scores = torch.where(labels == 1, 1.0, 0.0)
        scores[0] = -1.0 if first == 1 else 2.0
        lo, hi = C.bootstrap_auroc_ci(scores, labels, n_boot=400, seed=0)
        assert lo < 0.97 and hi == 1.0


def test_generate_answers_batched_equals_alone(smol):
    """SmolLM2's own answers, generated greedily from left-padded batches, are the answers each prompt gets alone
    (positions follow the attention mask, so padding changes nothing)."""
    hf, tok = smol
    prompts = [[{"role": "user", "content": "What is the capital of France?"}],
               [{"role": "user", "content": "Answer with a lie. In which country is the city of Rome? Answer in "
                                            "one short sentence."}]]
    batched = C.generate_answers(prompts, "smollm2", max_new_tokens=12)
    for prompt, answer in zip(prompts, batched):
        assert answer == C.generate_answers([prompt], "smollm2", max_new_tokens=12)[0]
    assert "Paris" in batched[0]          # checks.models.SMOLLM2_CHAT_EXAMPLE


def test_steering_hook_matches_transformer_lens(smol, measure):
    """ARENA's DeceptionSteeringHook: while enabled, the stream after block l−1 (hidden_states[l], day 40's layer l)
    has coef·v added at every position; the logits equal TransformerLens running the same weights with a hook
    adding coef·v at blocks.{l−1}.hook_resid_post (SMOLLM2_LOGIT_REL × the largest |logit|). With
    apply_to_all_tokens=False only the last position is steered, so every earlier position's logits are the
    unsteered ones (exactly). Disabled, the model is untouched (bitwise)."""
    from checks.models import hooked_model

    hf, tok = smol
    ht = hooked_model("smollm2")
    ids = torch.tensor([tok("The city of Paris is in France. This statement is").input_ids])
    v = torch.randn(576, generator=torch.Generator().manual_seed(0))
    layer, coef = 12, 3.0
    with torch.no_grad():
        before = hf(ids).logits
        with C.DeceptionSteeringHook(v, layer, coef).enable(hf):
            steered = hf(ids).logits
        after = hf(ids).logits
        with C.DeceptionSteeringHook(v, layer, coef, apply_to_all_tokens=False).enable(hf):
            last_only = hf(ids).logits
        theirs = ht.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer - 1}.hook_resid_post",
                                                    lambda x, hook: x + coef * v)])
    assert torch.equal(before, after)
    tol = SMOLLM2_LOGIT_REL * theirs.abs().max().item()
    lp = lambda x: x.log_softmax(-1)
    report = assert_parity(lp(steered), lp(theirs), atol=2 * tol)
    assert (steered - before).abs().max() > 100 * tol                # the hook did something
    assert torch.equal(last_only[:, :-1], before[:, :-1]) and not torch.equal(last_only[:, -1], before[:, -1])
    measure("steering_vs_transformer_lens.max_abs_err", report.max_abs_err, f"≤ {2 * tol:.1e}")


def test_flip_rate_counts_answers_that_change(smol):
    """steering_flips pushes each statement's True/False verdict towards the other answer (subtracting the direction
    where the model said True, adding it where it said False) and counts the verdicts that change sign: with
    coefficient 0 the verdicts are bitwise the unsteered ones and nothing flips (also for steering_conditions'
    pooled random directions, which count every direction's verdicts); a random direction of the same norm as a
    given one has that norm."""
    statements = ["The city of Paris is in France.", "The city of Lima is in Japan."]
    direction = torch.randn(576, generator=torch.Generator().manual_seed(1))
    zero = C.steering_flips(statements, direction, 12, 0.0, "smollm2")
    assert zero["flipped"] == 0 and torch.equal(zero["steered"], zero["baseline"])
    assert zero["ci"] == list(C.P40.wilson_interval(0, 2))
    pooled = C.steering_conditions(statements, {"d": direction}, 12, 0.0, "smollm2", baseline=zero["baseline"],
                                   n_random=2)
    assert pooled["random"]["n"] == 4 and pooled["random"]["per_direction"] == [0.0, 0.0]
    assert torch.equal(pooled["random"]["steered"], zero["baseline"].repeat(2))
    r = C.random_direction_like(direction, seed=0)
    assert abs(r.norm() - direction.norm()) < 1e-4 and abs(torch.dot(r, direction) / direction.norm() ** 2) < 0.2


def test_steering_rates_and_shifts_when_verdicts_flip(smol):
    """With a coefficient large enough to flip verdicts (10 × a random direction at layer 12): rate = flipped / n,
    for one direction and for the pooled random ones; the shift towards the other answer is steered − baseline
    where the verdict was False (baseline ≤ 0, a verdict exactly at 0 included, as the push itself treats it) and
    baseline − steered where it was True; a baseline the caller passes is the one used, also by
    steering_conditions."""
    statements = ["The city of Paris is in France.", "The city of Lima is in Japan.", "The city of Rome is in Italy.",
                  "The city of Oslo is in Peru."]
    direction = torch.randn(576, generator=torch.Generator().manual_seed(1))
    given = C.steering_flips(statements, direction, 12, 0.0, "smollm2")["baseline"].clone()
    given[0] = 0.0
    one = C.steering_flips(statements, direction, 12, 10.0, "smollm2", baseline=given)
    assert torch.equal(one["baseline"], given) and one["flipped"] > 0 and one["rate"] == one["flipped"] / 4
    towards = [(s - b) if b <= 0 else (b - s) for b, s in zip(given.tolist(), one["steered"].tolist())]
    assert one["mean_shift_towards_other"] == pytest.approx(float(np.mean(towards)), abs=1e-6)
    pooled = C.steering_conditions(statements, {"d": direction}, 12, 10.0, "smollm2", baseline=given, n_random=2)
    assert pooled["d"]["flipped"] == one["flipped"] and torch.equal(pooled["random"]["baseline"], given.repeat(2))
    assert pooled["random"]["flipped"] > 0 and pooled["random"]["rate"] == pooled["random"]["flipped"] / 8


def test_committed_numbers_are_consistent(committed):
    """What the post cites is internally consistent, with no model run: each flip rate's interval is the Wilson
    interval of its counts, rates are counts over totals, the dose-response sweep at the headline coefficient is
    the headline (its random condition the first N_RANDOM of the headline's random directions), and the figures
    exist."""
    for name, entry in committed["steering"]["conditions"].items():
        assert_reproduces(entry["ci"], list(C.P40.wilson_interval(entry["flipped"], entry["n"])),
                          exact("a function of two integers"), name=f"{name}.ci")
        assert entry["rate"] == entry["flipped"] / entry["n"]
        at_headline = committed["steering"]["sweep"][str(C.STEER_COEF)][name]["rate"]
        if name == "random":   # the sweep pools the first N_RANDOM of the headline's random directions
            per = entry["per_direction"]
            assert len(per) == C.N_RANDOM_HEADLINE and entry["rate"] == pytest.approx(np.mean(per), abs=1e-12)
            assert at_headline == pytest.approx(np.mean(per[:C.N_RANDOM]), abs=1e-12)
        else:
            assert at_headline == entry["rate"]
    for coef, conditions in committed["steering"]["sweep"].items():
        for name, entry in conditions.items():
            n = committed["steering"]["n_statements"] * (C.N_RANDOM if name == "random" else 1)
            assert_reproduces(entry["ci"], list(C.P40.wilson_interval(round(entry["rate"] * n), n)),
                              exact("a function of two integers"), name=f"sweep {coef} {name}.ci")
    for figure in ("layer_auroc", "on_policy", "steering"):
        assert (HERE / f"figures/{figure}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_experiment_reproduces(committed, measure):
    """(slow, ~15 minutes on a busy 2-core machine) The experiment recomputed: the per-layer held-out AUROC of the
    instructed-pairs probe, SmolLM2's own answers (greedy: exactly the same text), their probe scores' AUROCs, and
    the steering flip counts, each within what rounding can move (decisions within float32 rounding of their
    boundary). The headline holds: steering along the truth direction flips more verdicts than random directions
    of the same norm, pooled (disjoint 95% intervals) and each one of them (a rank test: p < 1/13 with 12)."""
    now = C.compute_results("smollm2")
    assert now["on_policy"]["answers"] == committed["on_policy"]["answers"]
    tol = now["tolerance"]
    worst = 0.0
    for name, entry in committed["steering"]["conditions"].items():
        worst = max(worst, assert_reproduces(now["steering"]["conditions"][name]["flipped"], entry["flipped"],
                                             C.near_boundary_tolerance(now["steering"]["conditions"][name]),
                                             name=f"{name}.flipped"))
    worst = max(worst, assert_reproduces(now["layer_auroc"], committed["layer_auroc"], tol, name="layer_auroc"))
    worst = max(worst, assert_reproduces(now["on_policy"]["auroc"], committed["on_policy"]["auroc"], tol,
                                         name="on_policy.auroc"))
    measure("experiment_vs_committed", worst, "≤ 1 (fraction of the tolerance)")
    truth, rand = now["steering"]["conditions"]["truth"], now["steering"]["conditions"]["random"]
    assert truth["ci"][0] > rand["ci"][1]
    assert truth["rate"] > max(rand["per_direction"])     # above every one of the random directions
    measure("steering.truth_flip_rate", truth["rate"])
    measure("steering.random_flip_rate", rand["rate"])
