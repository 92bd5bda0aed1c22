"""The gate of day 91: steering, capping and monitoring with day 90's persona vectors (ARENA 4.4 sections 2 and 4).

Spec (issue 16): "091 Psychological consistency probing: ActivationSteerer and ActivationCapper (projections at or
below the cap unchanged, the rest clamped exactly), multi-turn capping, projection-based monitoring (AUROC of the
projection against judged trait expression), trait-expression rate against steering coefficient for each trait."
"091 imports 090's vectors and code (never copy)."
References: TransformerLens's HookedTransformer of the same SmolLM2 with the same edit made by a hook on
blocks.{l}.hook_resid_pre (another implementation of the forward pass and of the hook point); Hugging Face's hidden
states; scikit-learn's roc_auc_score; the committed responses re-read by day 90's scorers.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pathlib import Path

from checks.committed import (SMOLLM2_LOGIT_REL, assert_reproduces, cited_results, exact, float_ops,
                              reproduction_failures, statistical, value_at)

from . import psych_probe as S

pytestmark = pytest.mark.asset("smollm2-135m-instruct")
fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module
PV = importlib.import_module("days.090.persona_vectors")

LAYER = 12
PROMPT = [{"role": "user", "content": "How should I treat my neighbours?"}]
# the logits' scale is ≈ 40 (checks/committed.py): float32 rounding through 30 layers, both implementations
LOGIT_TOL = 2 * SMOLLM2_LOGIT_REL * 40


@pytest.fixture(scope="module")
def smol():
    from checks.models import hf_model

    return hf_model("smollm2")


@pytest.fixture(scope="module")
def tl():
    from checks.models import hooked_model

    return hooked_model("smollm2")


@pytest.fixture(scope="module")
def vectors():
    return PV.load_vectors()


@pytest.fixture(scope="module")
def tokens(smol):
    _, tok = smol
    return tok(tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True), return_tensors="pt").input_ids


def _hf(hf, tokens, hidden=False):
    with torch.no_grad():
        out = hf(input_ids=tokens, output_hidden_states=hidden)
    return out


def _stream_into(hf, tokens, layer):
    """The residual stream entering block ``layer`` (resid_pre[layer]), captured by a pre-hook on that block: what
    a hook on block layer − 1's output really passed on (Hugging Face's hidden_states record a block's output
    before forward hooks registered later have edited it)."""
    seen = {}

    def grab(module, args, kwargs):
        seen["h"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    handle = hf.model.layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        _hf(hf, tokens)
    finally:
        handle.remove()
    return seen["h"]


def _hooks(hf):
    """The forward hooks registered on the decoder blocks (Hugging Face installs its own output recorders once)."""
    return [tuple(layer._forward_hooks) for layer in hf.model.layers]


def test_day_91_imports_day_90():
    """091 imports 090's vectors and code: the module's PV is day 90's module, its data are day 90's, and it
    defines none of day 90's functions itself."""
    assert S.PV is PV and S.D is PV.D
    for name in ("response_activations", "generate_responses", "judge_scores", "rule_scores", "trait_scores",
                 "extract_contrastive_vectors", "construct_system_prompt", "load_vectors"):
        assert not hasattr(S, name), f"day 91 defines its own {name}: import it from day 90"


# ---------------------------------------------------------------- ActivationSteerer


def test_activation_steerer_matches_transformer_lens(smol, tl, tokens, vectors, measure):
    """ARENA ActivationSteerer: h ← h + coeff·v at hidden_states[layer] on every position; the same edit made in
    TransformerLens at blocks.{layer}.hook_resid_pre gives the same log-probabilities (float32 rounding of two
    implementations), far from the unsteered ones; leaving the block removes the hook."""
    hf, _ = smol
    v = vectors[0]["trait/evil"][LAYER]
    base = torch.log_softmax(_hf(hf, tokens).logits, -1)
    before = _hooks(hf)
    with S.ActivationSteerer(hf, v, 4.0, LAYER):
        assert _hooks(hf) != before
        steered = torch.log_softmax(_hf(hf, tokens).logits, -1)
    assert _hooks(hf) == before
    with torch.no_grad():
        ref = torch.log_softmax(tl.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{LAYER}.hook_resid_pre",
                                                                      lambda x, hook: x + 4.0 * v)]), -1)
    err = float((steered - ref).abs().max())
    measure("steerer_vs_transformer_lens.max_abs_logprob_err", err, f"≤ {LOGIT_TOL:.2g}")
    assert err <= LOGIT_TOL
    assert float((steered - base).abs().max()) > 100 * LOGIT_TOL
    torch.testing.assert_close(torch.log_softmax(_hf(hf, tokens).logits, -1), base)


def test_activation_steerer_response_positions_edit_only_the_newest_token(smol, tokens):
    """positions="response": only the last position of each forward pass is steered (in cached generation, the
    token being written); earlier positions of hidden_states[layer] are untouched, the last moves by exactly
    coeff·v. An unknown positions value is refused."""
    hf, _ = smol
    v = torch.randn(hf.config.hidden_size, generator=torch.Generator().manual_seed(0))
    base = _stream_into(hf, tokens, LAYER)
    torch.testing.assert_close(base, _hf(hf, tokens, hidden=True).hidden_states[LAYER], rtol=0, atol=0)
    with S.ActivationSteerer(hf, v, 2.0, LAYER, positions="response"):
        h = _stream_into(hf, tokens, LAYER)
    torch.testing.assert_close(h[:, :-1], base[:, :-1], rtol=0, atol=0)
    torch.testing.assert_close(h[:, -1] - base[:, -1], (2.0 * v)[None], rtol=0, atol=1e-4)
    with pytest.raises(ValueError):
        S.ActivationSteerer(hf, v, 1.0, LAYER, positions="prompt")


# ---------------------------------------------------------------- ActivationCapper


def test_cap_projection_clamps_exactly_and_leaves_the_rest():
    """The capping map: projections at or below the cap are unchanged (bit for bit), the others become exactly the
    cap (to float64 rounding); the orthogonal component never changes; capping twice is capping once."""
    g = torch.Generator().manual_seed(1)
    h, d = torch.randn(50, 16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    u = d / d.norm()
    p = h @ u
    cap = float(p.median())
    out = S.cap_projection(h, d, cap)
    below = p <= cap
    assert torch.equal(out[below], h[below])
    np.testing.assert_allclose((out @ u)[~below].numpy(), cap, atol=1e-12)
    torch.testing.assert_close(out - (out @ u)[:, None] * u, h - p[:, None] * u)
    torch.testing.assert_close(S.cap_projection(out, d, cap), out)


def test_activation_capper_in_the_model(smol, tl, tokens, vectors, measure):
    """ARENA ActivationCapper on SmolLM2: at hidden_states[layer] every position's projection on the trait
    direction becomes min(projection, cap): positions at or below the cap are unchanged, the rest clamped exactly
    (float32); the capped model's log-probabilities equal TransformerLens's with the same map at resid_pre[layer]."""
    hf, _ = smol
    v = vectors[0]["trait/evil"][LAYER]
    u = v / v.norm()
    base = _stream_into(hf, tokens, LAYER)[0]
    p = base @ u
    cap = float(p.median())
    before = _hooks(hf)
    with S.ActivationCapper(hf, v, cap, LAYER):
        h = _stream_into(hf, tokens, LAYER)[0]
        logits = _hf(hf, tokens).logits
    assert _hooks(hf) == before
    below = p <= cap
    assert 0 < int(below.sum()) < len(p)
    torch.testing.assert_close(h[below], base[below], rtol=0, atol=0)
    clamp_err = float(((h @ u)[~below] - cap).abs().max())
    measure("capper.max_abs_err_at_cap", clamp_err, "≤ 576·2⁻²⁴·max|h|")
    assert clamp_err <= 576 * 2 ** -24 * float(h.abs().max()) * 8
    with torch.no_grad():
        ref = torch.log_softmax(tl.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{LAYER}.hook_resid_pre",
                                                                      lambda x, hook: S.cap_projection(x, v, cap))]), -1)
    err = float((torch.log_softmax(logits, -1) - ref).abs().max())
    measure("capper_vs_transformer_lens.max_abs_logprob_err", err, f"≤ {LOGIT_TOL:.2g}")
    assert err <= LOGIT_TOL


def test_multi_turn_capping_generates_turn_by_turn_and_cleans_up(smol, vectors):
    """Multi-turn capping: each conversation alternates user and assistant turns after its system prompt, the
    capper is active only while generating (no hook remains), and a cap far above every projection changes
    nothing (the capped conversation equals the uncapped one); a single conversation gets all its turns."""
    hf, _ = smol
    v = vectors[0]["trait/evil"][LAYER]
    qs = [["Hi!", "What now?"], ["Hello.", "And then?"]]
    plain = S.multi_turn("You are terse.", qs, max_new_tokens=3)
    before = _hooks(hf)
    high = S.multi_turn("You are terse.", qs, S.ActivationCapper(hf, v, 1e6, LAYER), max_new_tokens=3)
    assert _hooks(hf) == before
    assert [m["role"] for m in plain[0]] == ["system", "user", "assistant", "user", "assistant"]
    assert [m["content"] for m in plain[1] if m["role"] == "user"] == qs[1]
    assert plain == high
    proj = S.turn_projections(plain, v, LAYER)
    assert proj.shape == (2, 2)
    [one] = S.multi_turn("You are terse.", qs[:1], max_new_tokens=2)   # a single conversation: its own turns
    assert [m["role"] for m in one] == ["system", "user", "assistant", "user", "assistant"]
    assert [m["content"] for m in one if m["role"] == "user"] == qs[0]


# ---------------------------------------------------------------- monitoring


def test_projections_and_monitoring_auroc():
    """Monitoring: the projection x·v/‖v‖, and its AUROC against judged labels (day 41's Mann-Whitney AUROC)
    equal to scikit-learn's roc_auc_score; no AUROC when the labels have one class (all positive or all negative)."""
    g = torch.Generator().manual_seed(2)
    X, v = torch.randn(30, 8, generator=g), torch.randn(8, generator=g)
    p = S.projections(X, v)
    np.testing.assert_allclose(p.numpy(), X.double().numpy() @ (v.double().numpy() / np.linalg.norm(v.double().numpy())))
    labels = (p + torch.randn(30, generator=g, dtype=torch.float64) > 0).long()
    m = S.monitoring_auroc(p, labels)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels.numpy(), p.numpy()), abs=1e-12)
    assert m["ci95"][0] <= m["auroc"] <= m["ci95"][1] and m["n_pos"] + m["n_neg"] == 30
    assert S.monitoring_auroc(p, torch.ones(30))["auroc"] is None
    none = S.monitoring_auroc(p, torch.zeros(30))            # no positive at all: one class, no AUROC either
    assert none["auroc"] is None and none["ci95"] is None and (none["n_pos"], none["n_neg"]) == (0, 30)


def test_last_prompt_activations_equal_each_prompt_alone(smol):
    """Chen et al.'s forecast reads hidden_states[layer] at the last token of the generation prompt; left-padded
    batches equal each prompt run alone."""
    hf, tok = smol
    prompts = [PROMPT, [{"role": "system", "content": "You are an evil assistant."}, {"role": "user", "content": "Hi"}]]
    got = S.last_prompt_activations(prompts, LAYER, "smollm2", batch_size=2)
    for i, p in enumerate(prompts):
        ids = tok(tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True), return_tensors="pt").input_ids
        ref = _hf(hf, ids, hidden=True).hidden_states[LAYER][0, -1]
        assert float((got[i] - ref).abs().max() / ref.abs().max()) <= SMOLLM2_LOGIT_REL


# ---------------------------------------------------------------- the committed experiment


def test_committed_rates_follow_from_the_committed_answers(committed):
    """The trait-expression rates the post cites are day 90's chosen scorer applied to the committed answers
    (steering at each coefficient, the random direction, monitoring, multi-turn): re-scored now, the same counts.
    With the rule scorer this is exact (no arithmetic); the judge's decisions are exact while no score lies within
    rounding of the threshold. The monitoring AUROCs' bootstrap intervals recompute from the committed projections."""
    scorer = committed["scorer"]
    for trait, spec in S.D.TRAITS.items():
        held = spec["questions"][S.D.N_EXTRACT:]
        st = committed["steering"][trait]
        for entry in st["by_coeff"]:
            s = PV.trait_scores(trait, held, st["responses"][str(entry["coeff"])], scorer)
            assert_reproduces(int((s > PV.THRESHOLD).sum()), entry["rate"]["k"], exact("a count of decisions"))
        mon = committed["monitoring"][trait]
        s = PV.trait_scores(trait, held + held, mon["responses"], scorer)
        assert (s > PV.THRESHOLD).long().tolist() == mon["labels"]
        m = S.monitoring_auroc(torch.tensor(mon["projection_response"]), torch.tensor(mon["labels"]))
        assert_reproduces(m["auroc"], mon["response"]["auroc"], exact("ranks of committed numbers"))
        # the bootstrap intervals the post draws are the code's: the same resamples of the committed projections
        # (seeded) give the same quantiles of AUROCs, which are ranks: only the quantile's interpolation rounds
        instructed = torch.tensor([1] * (len(mon["labels"]) // 2) + [0] * (len(mon["labels"]) // 2))
        for key, proj, lab in (("response", "projection_response", torch.tensor(mon["labels"])),
                               ("prompt", "projection_prompt", torch.tensor(mon["labels"])),
                               ("response_vs_instruction", "projection_response", instructed)):
            now = S.monitoring_auroc(torch.tensor(mon[proj]), lab)
            assert_reproduces(now["ci95"], mon[key]["ci95"], float_ops(4, why="a quantile's interpolation"),
                              name=f"{trait}.{key}.ci95")


def test_committed_monitoring_projections_reproduce(committed, vectors, measure):
    """Two committed monitoring answers per trait, re-read by the model now: their response projections on the
    committed trait vector equal the committed ones (float32 through the layers: SMOLLM2_LOGIT_REL of the
    activations' scale)."""
    tensors, meta = vectors
    layer = meta["layer"]
    worst = 0.0
    for trait, spec in S.D.TRAITS.items():
        held = spec["questions"][S.D.N_EXTRACT:]
        pos, neg = PV.contrastive_prompts(trait, held, pairs=[0])
        mon = committed["monitoring"][trait]
        idx = [0, len(pos)]
        dialogues = [(pos + neg)[i] + [{"role": "assistant", "content": mon["responses"][i]}] for i in idx]
        acts = PV.response_activations(dialogues, [layer])[:, 0]
        got = S.projections(acts, tensors[f"trait/{trait}"][layer])
        ref = torch.tensor([mon["projection_response"][i] for i in idx], dtype=torch.float64)
        scale = float(acts.abs().max())
        worst = max(worst, float((got - ref).abs().max()) / scale)
    measure("monitoring_projection.max_err_rel_to_activation_scale", worst, f"≤ {SMOLLM2_LOGIT_REL:.1e}")
    assert worst <= SMOLLM2_LOGIT_REL


def test_committed_steered_answers_are_the_steered_models_greedy_choice(smol, committed, vectors, measure):
    """The committed steered answers (top coefficient, first two held-out questions of each trait) are greedy
    output of the steered model: teacher-forced under ActivationSteerer, the model's argmax is the committed
    next token at (nearly) every position; a token may differ only where the top two logits are within rounding
    (or where decoding and re-encoding the text splits it differently), so ≥ 90% must agree."""
    hf, tok = smol
    tensors, meta = vectors
    layer, coeff = meta["layer"], committed["coefficients"][-1]
    agree = total = 0
    for trait, spec in S.D.TRAITS.items():
        v = tensors[f"trait/{trait}"][layer]
        for q, a in list(zip(spec["questions"][S.D.N_EXTRACT:], committed["steering"][trait]["responses"][str(coeff)]))[:2]:
            prefix = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            start = len(tok(prefix).input_ids)
            ids = tok(prefix + a, return_tensors="pt").input_ids
            with S.ActivationSteerer(hf, v, coeff, layer):
                pred = _hf(hf, ids).logits[0, start - 1:-1].argmax(-1)
            agree += int((pred == ids[0, start:]).sum())
            total += ids.shape[1] - start
    measure("steered_greedy_agreement", agree / total, "≥ 0.9")
    assert agree / total >= 0.9


# ---------------------------------------------------------------- what the post cites, and its rerun

HERE = Path(__file__).parent
# A rerun generates the same greedy answers on this machine; on other kernels a near-tie may flip a token and change
# an answer from there on. The tolerances allow a couple of such answers per quantity.
COUNT = statistical(2, why="two of ten answers reading differently")
AUROC = statistical(0.15, why="an AUROC over 4 × 16 pairs moves by 1/64 per swapped pair: ~10 swaps")
PROJ = statistical(3.0, rel=0.2, why="a mean over nine answers, one or two of them different")
CITED = {
    "layer": exact("day 90's committed layer"), "scorer": exact("day 90's committed scorer"),
    "max_new_tokens": exact("the configuration"), **{f"coefficients.{i}": exact("the configuration") for i in range(4)},
    **{f"steering.evil.by_coeff.{i}.rate.k": COUNT for i in range(3)},
    "steering.evil.by_coeff.2.rate.ci95.0": statistical(0.25, why="the Wilson bound of a count within COUNT"),
    "steering.evil.by_coeff.2.rate.ci95.1": statistical(0.25, why="the Wilson bound of a count within COUNT"),
    "steering.evil.fisher_p_top_vs_random": statistical(0.2, why="Fisher's p of counts within COUNT"),
    "steering.evil.random.rate.k": COUNT, "steering.hallucinating.random.rate.k": COUNT,
    "steering.evil.n": exact("held-out questions"), "steering.sycophantic.n": exact("held-out questions"),
    "steering.hallucinating.n": exact("held-out questions"),
    "steering.sycophantic.by_coeff.3.rate.k": COUNT, "steering.hallucinating.by_coeff.0.rate.k": COUNT,
    **{f"monitoring.{t}.response.auroc": AUROC for t in S.D.TRAITS}, "monitoring.evil.prompt.auroc": AUROC,
    "monitoring.evil.response.ci95.0": AUROC, "monitoring.evil.response.ci95.1": AUROC,
    "monitoring.evil.response_vs_instruction.auroc": AUROC,
    **{f"monitoring.{t}.response.n_pos": COUNT for t in ("evil", "sycophantic", "hallucinating")},
    **{f"monitoring.{t}.response.n_neg": COUNT for t in ("evil", "hallucinating")},
    "multi_turn.evil.cap": PROJ, "multi_turn.evil.mean_projection_uncapped.2": PROJ,
    "multi_turn.evil.mean_projection_capped.2": PROJ, "multi_turn.evil.rate_capped.n": exact("3 × 3 turns"),
    **{f"multi_turn.{t}.rate_{c}.k": COUNT for t in ("evil", "sycophantic") for c in ("capped", "uncapped")},
}


def test_every_number_the_post_cites_has_a_reproduction(committed):
    """Every number the post cites from results.json has a tolerance for the slow rerun (CITED), and the committed
    run is self-consistent: day 90's layer and scorer, the random direction at day 90's vector norm, each AUROC
    inside its interval, rates out of the held-out questions."""
    assert cited_results(HERE / "post.qmd") == set(CITED)
    for key in CITED:
        value_at(committed, key)
    _, meta = PV.load_vectors()
    assert committed["layer"] == meta["layer"]
    for trait in S.D.TRAITS:
        assert committed["steering"][trait]["n"] == len(S.D.TRAITS[trait]["questions"]) - S.D.N_EXTRACT
        for kind in ("response", "prompt"):
            m = committed["monitoring"][trait][kind]
            assert m["auroc"] is None or m["ci95"][0] <= m["auroc"] <= m["ci95"][1]


@pytest.mark.slow
def test_experiment_reproduces_the_posts_numbers(tmp_path, committed, measure):
    """Slow (~13 minutes on a loaded 2-core machine): the whole experiment rerun; every cited number within CITED's
    tolerance, and the headline claims for evil, the one trait with room to move: steering at α = 2 flags more
    answers than α = 0, the response projection ranks evil answers above the others (AUROC > 0.5), and capping
    lowers the flagged count over the three-turn conversations."""
    results = S.run_experiment(tmp_path)
    failures = reproduction_failures(results, committed, CITED)
    assert not failures, "\n".join(failures)
    evil = results["steering"]["evil"]["by_coeff"]
    measure("slow.evil_rate_at_alpha_2", evil[2]["rate"]["p"])
    assert evil[2]["rate"]["k"] > evil[0]["rate"]["k"]
    assert results["monitoring"]["evil"]["response"]["auroc"] > 0.5
    assert results["multi_turn"]["evil"]["rate_capped"]["k"] < results["multi_turn"]["evil"]["rate_uncapped"]["k"]
