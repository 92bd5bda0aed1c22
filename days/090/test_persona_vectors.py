"""The gate of day 90: persona vectors (ARENA 4.4 sections 1 and 3; Chen et al. 2025; the assistant-axis work).

Spec (issue 16): "090 Persona vectors: personas as system prompts, response activations, extract_persona_vectors,
cosine matrices (raw and centred, against scikit-learn), PCA of persona space and an 'assistant axis'; contrastive
trait vectors (construct_system_prompt, extract_contrastive_vectors, filter_effective_pairs) for evil, sycophantic
and hallucinating, with the capstone's sycophancy direction compared to the new one." Chapter 4's judges: "SmolLM2
log-probability judges checked against hand labels (Cohen's kappa from sklearn) plus a rule-based classifier".
References: Hugging Face's hidden states of each dialogue run alone (no padding, no batching); scikit-learn's
cosine_similarity, PCA and cohen_kappa_score; a full-vocabulary torch softmax; the capstone's own functions.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import cohen_kappa_score
from sklearn.metrics.pairwise import cosine_similarity

from pathlib import Path

from checks.committed import (SMOLLM2_LOGIT_REL, assert_reproduces, cited_results, exact, float_ops,
                              reproduction_failures, statistical, value_at)

from . import data as D
from . import persona_vectors as P

pytestmark = pytest.mark.asset("smollm2-135m-instruct")
fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module



def dialogues() -> list:
    """Three test dialogues, built when a test asks (not at import: in a practice copy `chat` is an exercise, and a
    stub called at import would hide every other test behind one collection error)."""
    return [P.chat(D.PERSONAS["pirate"], "How would you describe yourself?", "Arr, I be a salty old sea dog!"),
            P.chat(None, "How would you describe yourself?", "I am a helpful assistant who answers questions."),
            P.chat(D.PERSONAS["robot"], "What matters most to you?", "EFFICIENCY. COMPLIANCE. OIL.")]


@pytest.fixture(scope="module")
def smol():
    from checks.models import hf_model

    return hf_model("smollm2")


@pytest.fixture(scope="module")
def committed_vectors():
    return P.load_vectors()


# ---------------------------------------------------------------- response activations and persona vectors


def test_response_activations_equal_each_dialogue_run_alone(smol, measure):
    """ARENA 4.4 §1 (response activations): the residual stream hidden_states[l] averaged over the assistant
    message's tokens; batched (right padding) in chunks of 2, against Hugging Face run on each dialogue alone with
    the response span found from the chat template's generation prompt."""
    hf, tok = smol
    layers = [0, 7, 15, 30]
    chats = dialogues()
    got = P.response_activations(chats, layers, "smollm2", chunk=2)
    assert got.shape == (3, 4, hf.config.hidden_size)
    worst = 0.0
    for i, d in enumerate(chats):
        prefix = tok.apply_chat_template(d[:-1], tokenize=False, add_generation_prompt=True)
        ids = tok(prefix + d[-1]["content"], return_tensors="pt").input_ids
        start = len(tok(prefix).input_ids)
        assert tok.decode(ids[0, start:]) == d[-1]["content"]
        with torch.no_grad():
            hs = hf(input_ids=ids, output_hidden_states=True).hidden_states
        for j, l in enumerate(layers):
            ref = hs[l][0, start:].mean(0)
            err = float((got[i, j] - ref).abs().max() / ref.abs().max())
            worst = max(worst, err)
    measure("response_activations.max_rel_err", worst, f"≤ {SMOLLM2_LOGIT_REL:.1e}")
    assert worst <= SMOLLM2_LOGIT_REL   # float32 through up to 30 layers, padding changes the kernels' shapes


def test_extract_persona_vectors_is_the_mean_over_questions(smol):
    """ARENA 4.4 extract_persona_vectors: per persona, the mean over its questions of the response-averaged
    activations; the chat carries the persona's system prompt (None: the template's default one); responses that
    do not pair one-to-one with the questions are refused (ValueError), not truncated."""
    personas = {"pirate": D.PERSONAS["pirate"], D.ASSISTANT: None}
    questions = ["How would you describe yourself?", "What matters most to you?"]
    responses = {"pirate": ["Arr, I be a salty old sea dog!", "Gold and the open sea."],
                 D.ASSISTANT: ["I am a helpful assistant.", "Being helpful and honest."]}
    got = P.extract_persona_vectors(personas, questions, responses, [15], "smollm2")
    for name in personas:
        rows = P.response_activations([P.chat(personas[name], q, r) for q, r in zip(questions, responses[name])],
                                      [15], "smollm2", chunk=1)
        torch.testing.assert_close(got[name], rows.mean(0), rtol=SMOLLM2_LOGIT_REL, atol=1e-4)
    assert not torch.allclose(got["pirate"], got[D.ASSISTANT])
    assert P.chat(None, "q")[0]["role"] == "user" and P.chat("s", "q")[0] == {"role": "system", "content": "s"}
    with pytest.raises(ValueError):   # responses[name][i] answers questions[i]: a missing answer is an error
        P.extract_persona_vectors({"pirate": D.PERSONAS["pirate"]}, questions, {"pirate": responses["pirate"][:1]},
                                  [15], "smollm2")


# ---------------------------------------------------------------- geometry of persona space


def _vectors(seed=0, n=6, d=40):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + 5.0   # a large shared component, like the stream's


def test_cosine_matrices_match_scikit_learn():
    """ARENA 4.4 §1 cosine similarity matrix, raw and centred (the mean persona subtracted), against
    sklearn.metrics.pairwise.cosine_similarity; centring removes the shared component (raw cosines near 1)."""
    V = _vectors()
    raw, centred = P.cosine_similarity_matrix(V), P.cosine_similarity_matrix(V, centre=True)
    np.testing.assert_allclose(raw.numpy(), cosine_similarity(V.numpy()), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(centred.numpy(), cosine_similarity((V - V.mean(0)).numpy()), rtol=1e-12, atol=1e-12)
    off = ~torch.eye(6, dtype=torch.bool)
    assert raw[off].min() > 0.9 and centred[off].mean() < 0


def test_pca_persona_space_matches_scikit_learn():
    """ARENA 4.4 §1 PCA of persona space: principal directions (up to sign), explained-variance ratios and each
    persona's coordinates equal scikit-learn's PCA; the sign rule makes each direction's largest coordinate positive."""
    V = _vectors(1)
    comps, ratio, coords = P.pca_persona_space(V, k=3)
    pca = PCA(n_components=3, svd_solver="full").fit(V.numpy())
    signs = np.sign((comps.numpy() * pca.components_).sum(1))
    np.testing.assert_allclose(comps.numpy(), signs[:, None] * pca.components_, atol=1e-10)
    np.testing.assert_allclose(ratio.numpy(), pca.explained_variance_ratio_, rtol=1e-10)
    np.testing.assert_allclose(coords.numpy(), signs * pca.transform(V.numpy()), atol=1e-10)
    top = comps.gather(1, comps.abs().argmax(1, keepdim=True))
    assert (top > 0).all()


def test_assistant_axis_points_from_the_roles_to_the_assistant():
    """The assistant axis (Lu et al.): v_assistant − mean of the other personas, normalised; when the roles cluster
    and the assistant sits apart, it is the first principal component of persona space."""
    g = torch.Generator().manual_seed(2)
    centre, e = torch.randn(30, generator=g, dtype=torch.float64), torch.zeros(30, dtype=torch.float64)
    e[3] = 1.0
    V = centre + 0.05 * torch.randn(7, 30, generator=g, dtype=torch.float64)
    V[2] += 4.0 * e
    names = ["a", "b", D.ASSISTANT, "c", "d", "f", "h"]
    axis = P.assistant_axis(V, names)
    ref = V[2] - torch.cat([V[:2], V[3:]]).mean(0)
    torch.testing.assert_close(axis, ref / ref.norm())
    comps, _, _ = P.pca_persona_space(V, 1)
    assert abs(P.cosine(axis, comps[0])) > 0.99 and axis[3] > 0.99


# ---------------------------------------------------------------- contrastive trait vectors


def test_construct_system_prompt():
    """Chen et al.'s system prompt, 'You are a/an {name} assistant. {instruction}', with the right article."""
    assert P.construct_system_prompt("evil", "Be cruel.") == "You are an evil assistant. Be cruel."
    assert P.construct_system_prompt("sycophantic", "Agree.") == "You are a sycophantic assistant. Agree."


def test_contrastive_prompts_pair_the_same_question():
    """ARENA 4.4 §3: each contrastive pair asks the same question under the eliciting (+, named after the trait)
    and the suppressing (−) instruction; instruction pairs × extraction questions, the held-out ones left out."""
    for trait, spec in D.TRAITS.items():
        pos, neg = P.contrastive_prompts(trait)
        assert len(pos) == len(neg) == len(spec["instructions"]) * D.N_EXTRACT
        for k, (p, n) in enumerate(zip(pos, neg)):
            j, q = divmod(k, D.N_EXTRACT)
            assert p[1] == n[1] == {"role": "user", "content": spec["questions"][q]}
            assert p[0]["content"] == P.construct_system_prompt(trait, spec["instructions"][j][0])
            assert n[0]["content"] == P.construct_system_prompt("helpful", spec["instructions"][j][1])
        held = set(spec["questions"][D.N_EXTRACT:])
        assert held and not held & {p[1]["content"] for p in pos}


def test_filter_effective_pairs():
    """ARENA filter_effective_pairs: a pair is kept when its + answer scores above the threshold and its − answer
    below it (a score exactly at the threshold counts for neither)."""
    pos = torch.tensor([80.0, 80.0, 50.0, 10.0, 51.0])
    neg = torch.tensor([10.0, 60.0, 10.0, 10.0, 50.0])
    assert P.filter_effective_pairs(pos, neg).tolist() == [True, False, False, False, False]
    assert P.filter_effective_pairs(pos, neg, threshold=55).tolist() == [True, False, False, False, False]
    assert P.filter_effective_pairs(pos, neg, threshold=5).tolist() == [False] * 5


def test_extract_contrastive_vectors():
    """ARENA extract_contrastive_vectors: mean of the kept + activations minus the mean of the kept − ones, per
    layer; all pairs without a mask; an empty selection is an error, not a zero vector."""
    g = torch.Generator().manual_seed(3)
    pos, neg = torch.randn(5, 4, 8, generator=g), torch.randn(5, 4, 8, generator=g)
    keep = torch.tensor([True, False, True, True, False])
    torch.testing.assert_close(P.extract_contrastive_vectors(pos, neg, keep),
                               pos[[0, 2, 3]].mean(0) - neg[[0, 2, 3]].mean(0))
    torch.testing.assert_close(P.extract_contrastive_vectors(pos, neg), pos.mean(0) - neg.mean(0))
    with pytest.raises(ValueError):
        P.extract_contrastive_vectors(pos, neg, torch.zeros(5, dtype=torch.bool))


def test_separation_is_cohens_d_of_projections():
    """The layer criterion: Cohen's d of the projections on the unit trait vector, (mean₊ − mean₋)/pooled s.d.,
    checked against numpy on one layer."""
    g = torch.Generator().manual_seed(4)
    pos, neg = torch.randn(9, 3, 6, generator=g) + 1.0, torch.randn(9, 3, 6, generator=g)
    v = P.extract_contrastive_vectors(pos, neg)
    d = P.separation(pos, neg, v)
    u = (v[1] / v[1].norm()).numpy()
    p, n = pos[:, 1].numpy() @ u, neg[:, 1].numpy() @ u
    ref = (p.mean() - n.mean()) / math.sqrt((p.var(ddof=1) + n.var(ddof=1)) / 2)
    assert d.shape == (3,) and float(d[1]) == pytest.approx(ref, rel=1e-5)


# ---------------------------------------------------------------- judges


def test_judge_scores_are_the_yes_share_of_the_full_softmax(smol, measure):
    """The log-probability judge: 100·p(Yes)/(p(Yes)+p(No)) of the next token after the judge's chat, from the
    full-vocabulary softmax of each prompt run alone (no padding), equal to the left-padded batch's."""
    hf, tok = smol
    items = [(t, q, r) for t, q, r, _ in D.HAND_LABELS[:2]] + [("hallucinating", "Who won?", "Nobody knows.")]
    got = P.judge_scores(items, "smollm2", batch_size=3)
    yes, no = tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")
    worst = 0.0
    for i, it in enumerate(items):
        ids = tok(tok.apply_chat_template(P.judge_prompt(*it), tokenize=False, add_generation_prompt=True),
                  return_tensors="pt").input_ids
        with torch.no_grad():
            p = torch.softmax(hf(input_ids=ids).logits[0, -1].double(), -1)
        ref = 100 * p[yes] / (p[yes] + p[no])
        worst = max(worst, abs(float(got[i] - ref)))
    measure("judge_score.max_abs_err", worst, "≤ 0.05")
    assert worst <= 0.05   # a logit difference (≈ 40·SMOLLM2_LOGIT_REL) through a sigmoid scaled by 100/4


def test_rule_scores():
    """The rule-based scorer: evil and sycophantic by keywords; hallucinating = specific and unhedged (a hedge or
    no specifics is not hallucinating); trait_scores' "rules" scorer is 100 · rule_scores."""
    assert P.rule_scores("evil", ["I will crush them.", "Be kind to them."]).tolist() == [1, 0]
    assert P.rule_scores("sycophantic", ["You're absolutely right!", "No, that is wrong."]).tolist() == [1, 0]
    assert P.rule_scores("hallucinating", ["It was signed in 1873 by King Otto.",
                                           "I'm not aware of a treaty signed in 1873.",
                                           "that is an interesting question."]).tolist() == [1, 0, 0]
    with pytest.raises(ValueError):
        P.trait_scores("evil", ["q"], ["r"], scorer="oracle")
    # trait_scores with the rules: 100 · rule_scores, on the judge's 0-100 scale (THRESHOLD = 50 reads both)
    assert P.trait_scores("evil", ["q", "q"], ["I will crush them.", "Be kind to them."]).tolist() == [100.0, 0.0]


def test_judge_agreement_uses_cohens_kappa():
    """Chapter 4's judge check: κ (scikit-learn) of the judge at the threshold and of the rules against hand
    labels; the judge's AUROC; the judge's and the rules' accuracies (the fraction of answers where they agree with
    the hand label; a score of exactly 50 is not above the threshold); choose_scorer picks the higher κ."""
    judge, rules, hand = torch.tensor([90.0, 20.0, 70.0, 40.0]), torch.tensor([1, 0, 0, 0]), torch.tensor([1, 0, 0, 1])
    a = P.judge_agreement(judge, rules, hand)
    assert a["judge_kappa"] == pytest.approx(cohen_kappa_score([1, 0, 0, 1], [1, 0, 1, 0]))
    assert a["rule_kappa"] == pytest.approx(cohen_kappa_score([1, 0, 0, 1], [1, 0, 0, 0]))
    assert a["judge_auroc"] == pytest.approx(0.75) and a["judge_accuracy"] == 0.5
    assert P.choose_scorer({"all": a}) == "rules"
    assert P.choose_scorer({"all": {"judge_kappa": 0.5, "rule_kappa": 0.5}}) == "judge"
    # a score of exactly THRESHOLD = 50 does not express the trait (the judge says yes when score > 50); the
    # accuracies are the fractions of agreement with the hand labels (4/5 and 3/5 here, not symmetric around 1/2)
    judge, rules, hand = torch.tensor([50.0, 80.0, 20.0, 60.0, 10.0]), torch.tensor([0, 1, 1, 1, 1]), \
        torch.tensor([0, 1, 0, 1, 1])
    b = P.judge_agreement(judge, rules, hand)
    assert b["judge_accuracy"] == pytest.approx(4 / 5) and b["rule_accuracy"] == pytest.approx(4 / 5)
    assert b["judge_kappa"] == pytest.approx(cohen_kappa_score([0, 1, 0, 1, 1], [0, 1, 0, 1, 0]))
    c = P.judge_agreement(judge, torch.tensor([1, 1, 1, 1, 0]), hand)
    assert c["rule_accuracy"] == pytest.approx(2 / 5) and c["judge_accuracy"] == pytest.approx(4 / 5)


def test_hand_labels_are_balanced():
    """The hand labels: five expressing and five not expressing each trait, on the trait's own questions."""
    for trait, spec in D.TRAITS.items():
        labels = [h for t, q, _, h in D.HAND_LABELS if t == trait]
        assert sorted(labels) == [0] * 5 + [1] * 5
        assert all(q in spec["questions"] for t, q, _, _ in D.HAND_LABELS if t == trait)


# ---------------------------------------------------------------- the capstone's direction


def test_capstone_direction_is_imported_from_the_capstone():
    """The Gauntlet's sycophancy direction comes from the capstone (critical_layer, mean_difference,
    probe_direction), not a copy: the layer is capstone.probes.critical_layer(); both vectors live in SmolLM2's
    576-dimensional residual stream and the probe direction has unit norm."""
    from capstone.probes import critical_layer

    cap = P.capstone_sycophancy_direction()
    assert cap["layer"] == critical_layer()
    assert cap["mean_difference"].shape == cap["probe"].shape == (576,)
    assert float(cap["probe"].norm()) == pytest.approx(1.0, abs=1e-12)


def test_random_cosine_baseline():
    """The random-direction baseline: |cos| of Gaussian directions with a fixed one in ℝ^576 has mean √(2/(πd))
    (to leading order); n = 2000 gives a standard error ≈ 0.0006, so 5 s.e. = 0.003."""
    v = torch.randn(576, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    b = P.random_cosine_baseline(v, n=2000, seed=1)
    assert b["mean_abs"] == pytest.approx(math.sqrt(2 / (math.pi * 576)), abs=0.003)
    assert b["mean_abs"] < b["q95_abs"] < b["q99_abs"] < 0.2


# ---------------------------------------------------------------- the committed experiment


def test_committed_persona_geometry_reproduces(committed, committed_vectors, measure):
    """The committed persona-space numbers follow from the committed persona vectors (float32 on disk, the
    geometry in float64: a few hundred rounding steps per cosine)."""
    tensors, meta = committed_vectors
    names = committed["persona"]["names"]
    V = torch.stack([tensors[f"persona/{n}"] for n in names])
    tol = float_ops(4 * 576, "float32", why="float32 vectors on disk: 576-term dot products, normalised")
    w = assert_reproduces(P.cosine_similarity_matrix(V).tolist(), committed["persona"]["cos_raw"], tol, name="cos_raw")
    w = max(w, assert_reproduces(P.cosine_similarity_matrix(V, centre=True).tolist(), committed["persona"]["cos_centred"],
                                 statistical(1e-4, why="centring subtracts vectors of norm ~100 sharing most of it: "
                                                       "float32 storage loses ~1e-7·100/1 of the difference"),
                                 name="cos_centred"))
    axis = P.assistant_axis(V, names)
    torch.testing.assert_close(axis.float(), tensors["assistant_axis"], atol=1e-5, rtol=0)
    _, explained, _ = P.pca_persona_space(V, 3)
    assert_reproduces(explained.tolist(), committed["persona"]["explained"], statistical(1e-4, why="as cos_centred"))
    assert meta["layer"] == committed["layer"] and meta["persona_layer"] == committed["persona_layer"]
    measure("committed_geometry.worst_fraction_of_tolerance", w)


def test_committed_capstone_cosines_reproduce(committed, committed_vectors):
    """The cosines of today's trait vectors with the capstone's sycophancy direction follow from the committed
    vectors; the headline (sycophantic vs mean difference) is compared with the random-direction baseline."""
    tensors, _ = committed_vectors
    cap = P.capstone_sycophancy_direction()
    l = committed["capstone"]["layer"]
    now = {"sycophantic_vs_mean_difference": P.cosine(tensors["trait/sycophantic"][l], cap["mean_difference"]),
           "sycophantic_vs_probe": P.cosine(tensors["trait/sycophantic"][l], cap["probe"]),
           "evil_vs_mean_difference": P.cosine(tensors["trait/evil"][l], cap["mean_difference"]),
           "hallucinating_vs_mean_difference": P.cosine(tensors["trait/hallucinating"][l], cap["mean_difference"]),
           "mean_difference_vs_probe": P.cosine(cap["mean_difference"], cap["probe"])}
    assert_reproduces(now, committed["capstone"]["cos"], float_ops(4 * 576, "float32", why="576-term dot products of "
                                                                   "float32 vectors"), name="capstone.cos")


def test_committed_persona_vector_reproduces_from_its_responses(committed, committed_vectors, measure):
    """One persona's vector (the pirate's) recomputed now from the committed responses equals the committed one:
    the activations, not only the geometry, reproduce (float32 through 15 layers: SMOLLM2_LOGIT_REL)."""
    tensors, _ = committed_vectors
    name = "pirate"
    got = P.extract_persona_vectors({name: D.PERSONAS[name]}, D.PERSONA_QUESTIONS,
                                    {name: committed["persona"]["responses"][name]}, [committed["persona_layer"]],
                                    "smollm2")[name][0]
    ref = tensors[f"persona/{name}"]
    err = float((got - ref).abs().max() / ref.abs().max())
    measure("pirate_vector.max_rel_err", err, f"≤ {SMOLLM2_LOGIT_REL:.1e}")
    assert err <= SMOLLM2_LOGIT_REL


@pytest.mark.parametrize("trait", ["evil"])
def test_committed_judge_agreement_reproduces(committed, trait):
    """The judge's agreement with the hand labels, recomputed for one trait (the slow rerun does all three: 30 judge
    prompts cost ~25 s here): κ and accuracies are exact while no judge score lies within rounding of the threshold
    (checked: every score is ≥ 0.5 away from 50); the AUROC moves by 1/(5·5) per pair of scores that swap order,
    and none lie within rounding of each other, so it is exact too."""
    items = [(t, q, r) for t, q, r, _ in D.HAND_LABELS if t == trait]
    scores = P.judge_scores(items, "smollm2")
    assert float((scores - P.THRESHOLD).abs().min()) > 0.5
    idx = [i for i, (t, *_) in enumerate(D.HAND_LABELS) if t == trait]
    gaps = (scores[:, None] - scores[None, :]).abs() + torch.eye(len(idx)) * 100
    assert float(gaps.min()) > 1e-3, "two judge scores within rounding of each other: the AUROC may move"
    a = P.judge_agreement(scores, P.rule_scores(trait, [D.HAND_LABELS[i][2] for i in idx]),
                          torch.tensor([D.HAND_LABELS[i][3] for i in idx]))
    assert_reproduces(a, committed["judges"][trait], exact("decisions far from the threshold; ranks without near-ties"),
                      name=f"judges.{trait}")
    assert committed["scorer"] == P.choose_scorer(committed["judges"])


@pytest.mark.slow
def test_slow_capstone_direction_recomputed_equals_the_committed_one():
    """The capstone's committed direction is what its functions compute now (evaluate, mean_difference,
    probe_direction; ~5 minutes): the same vectors up to float32 rounding of the activations."""
    fresh, stored = P.capstone_sycophancy_direction(recompute=True), P.capstone_sycophancy_direction()
    assert fresh["layer"] == stored["layer"]
    assert P.cosine(fresh["mean_difference"], stored["mean_difference"]) > 1 - 1e-6
    assert P.cosine(fresh["probe"], stored["probe"]) > 1 - 1e-4   # lbfgs converges to a tolerance, not exactly


# ---------------------------------------------------------------- what the post cites, and its rerun

HERE = Path(__file__).parent
# A rerun generates the same greedy answers on this machine; on other kernels a token whose top two logits are within
# rounding may flip and change an answer from there on. The tolerances allow a few such answers per quantity.
RATE = statistical(0.1, why="three of 30 answers reading differently")
KEPT = statistical(3, why="three of 30 pairs")
COS = statistical(0.05, why="a vector from ~30 answers per side, a few of them different")
GEOM = statistical(0.03, why="persona vectors from 6 answers each, one of them different")
CITED = {
    "judges.all.judge_kappa": exact("hand-written answers, decisions far from the threshold (tested above)"),
    "judges.all.rule_kappa": exact("rules on hand-written answers"),
    **{f"judges.{t}.judge_auroc": exact("ranks without near-ties (tested above)") for t in D.TRAITS},
    "scorer": exact("a decision between κ values 1.0 apart"), "max_new_tokens": exact("the configuration"),
    "persona_layer": exact("the configuration"), "persona.n_questions": exact("the configuration"),
    "persona.min_offdiag_raw": GEOM, "persona.mean_offdiag_raw": GEOM, "persona.mean_offdiag_centred": GEOM,
    "persona.explained.0": GEOM, "persona.explained.1": GEOM, "persona.cos_axis_pc1": statistical(
        0.15, why="the angle between two directions of a 10-point cloud moves more than the points"),
    **{f"persona.axis_ranking.{i}": "a ranking: a claim stated in the slow test" for i in (1, 2, 8, 9)},
    "traits.evil.n_pairs": exact("the configuration"), "traits.evil.cos_filtered_unfiltered": COS,
    **{f"traits.{t}.{k}": RATE for t in D.TRAITS for k in ("rule_pos.p", "rule_neg.p")},
    **{f"traits.{t}.n_kept": KEPT for t in D.TRAITS},
    "layer": statistical(2, why="the argmax of a separation curve that is smooth over neighbouring layers"),
    "capstone.layer": exact("the capstone's committed critical layer"),
    **{f"capstone.cos.{k}": COS for k in ("sycophantic_vs_mean_difference", "sycophantic_vs_probe",
                                          "evil_vs_mean_difference", "hallucinating_vs_mean_difference")},
    "capstone.cos.mean_difference_vs_probe": exact("the capstone's committed vectors, not rerun"),
    "capstone.random.q95_abs": exact("a seeded draw in float64"), "capstone.random.q99_abs": exact("a seeded draw"),
}


def test_every_number_the_post_cites_has_a_reproduction(committed):
    """Every number the post cites from results.json has a tolerance for the slow rerun (CITED), and the committed
    run is self-consistent: kept pairs at most the pairs, the chosen layer inside the middle half, the headline
    cosine outside the random band, the chosen scorer the one with the higher κ."""
    assert cited_results(HERE / "post.qmd") == set(CITED)
    for key in CITED:
        value_at(committed, key)
    for t in D.TRAITS:
        assert 0 <= committed["traits"][t]["n_kept"] <= committed["traits"][t]["n_pairs"]
    assert committed["layer"] in P.LAYER_RANGE
    assert committed["capstone"]["cos"]["sycophantic_vs_mean_difference"] > committed["capstone"]["random"]["q99_abs"]
    assert committed["scorer"] == P.choose_scorer(committed["judges"])


@pytest.mark.slow
def test_experiment_reproduces_the_posts_numbers(tmp_path, committed, measure):
    """Slow (~12 minutes on a loaded 2-core machine): the whole experiment rerun; every cited number within CITED's
    tolerance, the assistant ranked first on its own axis, the cited ranks near where they were (the two nearest
    among the rerun's four nearest, the two farthest among its four farthest), and the headline claim: today's sycophantic vector is
    closer to the capstone's direction than 99% of random directions."""
    results = P.run_experiment(tmp_path)
    failures = reproduction_failures(results, committed, CITED)
    assert not failures, "\n".join(failures)
    ranking, then = results["persona"]["axis_ranking"], committed["persona"]["axis_ranking"]
    assert ranking[0] == D.ASSISTANT
    assert set(then[1:3]) <= set(ranking[1:5]) and set(then[8:10]) <= set(ranking[6:10])   # the cited ranks
    headline = results["capstone"]["cos"]["sycophantic_vs_mean_difference"]
    measure("slow.sycophantic_vs_capstone_cos", headline, "> random q99")
    assert headline > results["capstone"]["random"]["q99_abs"]
