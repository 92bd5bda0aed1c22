"""The gate of day 61 (ARENA 1.5.1 Balanced Bracket Classifier, parts 2-4: reverse-engineering the classifier).

The subject is day 60's committed model. References: TransformerLens's own cache (hooks, patterns, the
residual decomposition ``get_full_resid_decomposition``, ``model.OV``), the model's LayerNorm modules applied to
the hooked inputs, numpy's least squares against scikit-learn's ``LinearRegression`` and its R², scikit-learn's
``roc_auc_score`` against our rank-based AUC, brute force over all short strings for the failure flags, and the
model's own logits, which the decompositions must sum to. The slow test reruns the whole analysis (3,000 strings,
the 13,633-string adversarial search) and compares it with results.json.
"""

import importlib
import math
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from checks import assert_parity
from checks.committed import Tolerance, assert_reproduces, exact, float_ops

from . import brackets_circuit as C

B = C.B
utils = C.utils
HERE = Path(__file__).parent

fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module

N_GATE = 400


@pytest.fixture(scope="module")
def setup():
    """Day 60's committed model, 400 generated strings and one full cache of them (shared by the module)."""
    model = B.load_brackets_model()
    data = B.BracketsDataset(B.generate_brackets_data(N_GATE, C.ANALYSIS_SEED))
    with torch.no_grad():
        logits, cache = model.run_with_cache(data.toks)
    return model, data, logits, cache


def all_strings(max_len: int) -> list[str]:
    return ["".join(p) for n in range(1, max_len + 1) for p in product("()", repeat=n)]


# ---------------------------------------------------------------- activations and LayerNorm


def test_get_activations(setup):
    """get_activations returns exactly TransformerLens's cached tensor for one name, an ActivationCache with only the
    requested hooks for a list, and reads from a cache when given one."""
    model, data, _, cache = setup
    one = C.get_activations(model, data.toks, "blocks.1.mlp.hook_post")
    assert torch.equal(one, cache["blocks.1.mlp.hook_post"])
    some = C.get_activations(model, data.toks, ["hook_embed", "blocks.2.attn.hook_pattern"])
    assert set(some.keys()) == {"hook_embed", "blocks.2.attn.hook_pattern"}
    assert torch.equal(some["blocks.2.attn.hook_pattern"], cache["blocks.2.attn.hook_pattern"])
    assert C.get_activations(model, data.toks, "hook_embed", cache) is cache["hook_embed"]


def test_post_final_ln_dir_gives_the_logit_gap(setup, measure):
    """logit_unbalanced − logit_balanced = LN_final(x) · (W_U[:, 0] − W_U[:, 1]) + b_U[0] − b_U[1] at [start], for every
    string, with LN_final(x) = ln_final.hook_normalized · w + b (1e-5: one 56-term float32 dot product)."""
    model, data, logits, cache = setup
    d = C.get_post_final_ln_dir(model)
    with torch.no_grad():
        gap = C.ln_output(model.ln_final, cache["ln_final.hook_normalized"][:, 0]) @ d + model.b_U[0] - model.b_U[1]
    report = assert_parity(gap, logits[:, 0, 0] - logits[:, 0, 1], atol=1e-5, rtol=1e-6)
    measure("post_final_ln_dir.max_abs_err", report.max_abs_err, "≤ 1e-5 + 1e-6·|gap|")


@pytest.mark.parametrize("which", ["ln_final", "blocks.0.ln1", "blocks.2.ln2"])
def test_ln_hook_names_are_the_norms_input_and_output(setup, which):
    """LN_hook_names names the hooks around each LayerNorm: the module itself applied to the input hook's tensor
    gives the output hook's tensor with the norm's weight and bias applied (ln_output) (1e-5)."""
    model, _, _, cache = setup
    ln = model.get_submodule(which)
    inp, out = C.LN_hook_names(ln, model)
    assert inp == {"ln_final": "blocks.2.hook_resid_post", "blocks.0.ln1": "blocks.0.hook_resid_pre",
                   "blocks.2.ln2": "blocks.2.hook_resid_mid"}[which]
    with torch.no_grad():
        assert_parity(ln(cache[inp]), C.ln_output(ln, cache[out]), atol=1e-5)


def test_ln_hook_names_follow_the_models_depth_and_find_unnamed_norms():
    """The hook names come from the norm's place in the model given: in a 2-layer model ln_final reads the last
    block's resid_post (blocks.1, not the brackets model's blocks.2), and a norm without a ``name`` attribute is
    looked up among the model's modules (blocks.1.ln2 reads blocks.1.hook_resid_mid)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=8, d_head=4, n_heads=2, d_mlp=16, d_vocab=5, n_ctx=4,
                                  act_fn="relu", normalization_type="LN")
    model = HookedTransformer(cfg)
    assert C.LN_hook_names(model.ln_final, model) == ("blocks.1.hook_resid_post", "ln_final.hook_normalized")
    ln = model.blocks[1].ln2
    if hasattr(ln, "name"):
        del ln.name                              # as in a TransformerLens that does not name its modules
    assert C.LN_hook_names(ln, model) == ("blocks.1.hook_resid_mid", "blocks.1.ln2.hook_normalized")


def test_get_ln_fit_is_least_squares(setup, measure):
    """get_ln_fit (scikit-learn's LinearRegression) against an independent least squares: numpy's lstsq on [x, 1]
    in float64 gives the same coefficients and intercepts (1e-3 absolute: the fit runs on float32 activations with
    condition number up to ~1e3), and the R² equals 1 − SS_res/SS_tot averaged over the 56 outputs, computed by
    hand (1e-6). The final LayerNorm at [start] is close to affine: R² > 0.95."""
    model, data, _, cache = setup
    fit, r2 = C.get_ln_fit(model, data, model.ln_final, seq_pos=0, cache=cache)
    x = cache["blocks.2.hook_resid_post"][:, 0].double().numpy()
    with torch.no_grad():
        y = C.ln_output(model.ln_final, cache["ln_final.hook_normalized"][:, 0]).double().numpy()
    X = np.hstack([x, np.ones((len(x), 1))])
    sol, *_ = np.linalg.lstsq(X, y, rcond=None)
    pred = X @ sol
    worst = max(np.abs(sol[:-1].T - fit.coef_).max(), np.abs(sol[-1] - fit.intercept_).max())
    measure("ln_fit_vs_lstsq.max_abs_err", worst, "≤ 1e-3")
    assert np.abs(pred - fit.predict(x)).max() < 1e-3
    r2_hand = np.mean(1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0))
    assert r2 == pytest.approx(r2_hand, abs=1e-6)
    measure("ln_final_pos0_r2_gate", r2, "> 0.95")
    assert r2 > 0.95
    # all positions flattened: the fit sees every (string, position) row
    fit_all, r2_all = C.get_ln_fit(model, data, model.ln_final, cache=cache)
    assert fit_all.n_features_in_ == 56 and 0 < r2_all <= 1


def test_pre_final_ln_dir_predicts_the_gap(setup, measure):
    """get_pre_final_ln_dir = Lᵀ d with L the final LayerNorm's fit at [start]: x · Lᵀd + intercept · d + Δb_U is
    exactly the fit's prediction of the logit gap (1e-4), and it tracks the real gap (correlation > 0.99)."""
    model, data, logits, cache = setup
    fit, _ = C.get_ln_fit(model, data, model.ln_final, seq_pos=0, cache=cache)
    pre = C.get_pre_final_ln_dir(model, data, cache)
    d = C.get_post_final_ln_dir(model).detach()
    x = cache["blocks.2.hook_resid_post"][:, 0]
    linear_gap = x @ pre + torch.from_numpy(fit.intercept_).float() @ d + (model.b_U[0] - model.b_U[1])
    via_fit = torch.from_numpy(fit.predict(x.numpy())).float() @ d + (model.b_U[0] - model.b_U[1])
    assert_parity(linear_gap, via_fit, atol=1e-4, rtol=1e-5)
    corr = np.corrcoef(linear_gap.detach().numpy(), (logits[:, 0, 0] - logits[:, 0, 1]).numpy())[0, 1]
    measure("pre_final_ln_dir_corr_gate", corr, "> 0.99")
    assert corr > 0.99


# ---------------------------------------------------------------- components


def test_out_by_components_sum_to_the_residual(setup, measure):
    """get_out_by_components: [embeddings, L0H0, L0H1, MLP0, L1H0, L1H1, MLP1, L2H0, L2H1, MLP2] × batch × seq × 56;
    with the attention biases Σ_l b_O^(l) the components sum exactly to blocks.2.hook_resid_post (1e-5), and each
    head and MLP equals TransformerLens's residual decomposition (get_full_resid_decomposition) (1e-6)."""
    model, data, _, cache = setup
    out = C.get_out_by_components(model, data, cache)
    assert out.shape == (10, N_GATE, data.seq_length, 56)
    assert C.component_labels(model) == ["embeddings", "L0H0", "L0H1", "MLP0", "L1H0", "L1H1", "MLP1", "L2H0", "L2H1", "MLP2"]
    report = assert_parity(out.sum(0) + model.b_O.sum(0), cache["blocks.2.hook_resid_post"], atol=1e-5)
    measure("components_sum_vs_resid_post.max_abs_err", report.max_abs_err, "≤ 1e-5")
    resid, labels = cache.get_full_resid_decomposition(expand_neurons=False, return_labels=True)
    index = {lab: i for i, lab in enumerate(labels)}
    for i, ours in enumerate(C.component_labels(model)[1:], start=1):
        theirs = ours if "H" in ours else f"{ours[3]}_mlp_out"
        assert_parity(out[i], resid[index[theirs]], atol=1e-6, name=ours)
    assert_parity(out[0], resid[index["embed"]] + resid[index["pos_embed"]], atol=1e-6)


def test_out_by_component_in_unbalanced_dir(setup):
    """Each component's [start] output projected on the pre-final-LN direction, minus its mean on balanced strings:
    zero mean on the balanced strings, and the components together differ from the projected residual stream only
    by a constant (the biases and the balanced means)."""
    model, data, _, cache = setup
    contrib = C.get_out_by_component_in_unbalanced_dir(model, data, cache)
    assert contrib.shape == (10, N_GATE)
    assert contrib[:, data.isbal].mean(1).abs().max() < 1e-4
    total = cache["blocks.2.hook_resid_post"][:, 0] @ C.get_pre_final_ln_dir(model, data, cache)
    diff = total - contrib.sum(0)
    assert (diff - diff.mean()).abs().max() < 1e-3


# ---------------------------------------------------------------- failure flags and AUC


def test_is_balanced_vectorized_return_both():
    """ARENA's two flags, read from the right: on every string of length 1-10, 'total elevation failure' is
    count("(") ≠ count(")") and 'negative failure' is "some suffix has more '(' than ')'", by a loop; a string is
    balanced iff neither flag is set; for equal counts the negative flag is day 60's "goes below zero"."""
    strs = all_strings(10)
    elev, neg = C.is_balanced_vectorized_return_both(B.SimpleTokenizer("()").tokenize(strs))
    for s, e, n in zip(strs, elev.tolist(), neg.tolist()):
        assert e == (s.count("(") != s.count(")"))
        assert n == any(s[i:].count("(") > s[i:].count(")") for i in range(len(s)))
        assert (not e and not n) == B.is_balanced_forloop(s)
        if not e:
            assert n == (B.elevation_profile(s).min() < 0)


def test_roc_auc_against_scikit_learn(measure):
    """roc_auc (Mann-Whitney from average ranks) equals scikit-learn's roc_auc_score on continuous scores, on heavily
    tied integer scores, and at the extremes (1 for a perfect separation, 0 for a reversed one); failure_aucs
    compares each failure type with the balanced strings only."""
    rng = np.random.default_rng(0)
    labels = rng.random(500) < 0.3
    for scores in (rng.normal(size=500) + labels, rng.integers(0, 4, 500) + labels):
        assert C.roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert C.roc_auc(labels.astype(float), labels) == 1 and C.roc_auc(-labels.astype(float), labels) == 0
    types = rng.choice(["balanced", "elevation", "negative", "both"], 300)
    scores = rng.normal(size=300) + (types == "negative")
    aucs = C.failure_aucs(scores, list(types))
    m = (types == "balanced") | (types == "negative")
    assert aucs["negative"] == pytest.approx(roc_auc_score(types[m] == "negative", scores[m]), abs=1e-12)
    assert aucs["unbalanced"] == pytest.approx(roc_auc_score(types != "balanced", scores), abs=1e-12)


# ---------------------------------------------------------------- heads and neurons


def test_attn_probs_and_WOV(setup):
    """get_attn_probs is the cached pattern of one head (rows sum to 1, nothing on [pad]); get_WOV is W_V W_O, the
    product TransformerLens's FactoredMatrix model.OV holds (1e-6)."""
    model, data, _, cache = setup
    probs = C.get_attn_probs(model, data, 2, 1, cache)
    assert torch.equal(probs, cache["blocks.2.attn.hook_pattern"][:, 1])
    assert_parity(probs.sum(-1), torch.ones_like(probs.sum(-1)), atol=1e-5)
    assert (probs.transpose(1, 2)[data.toks == 1] == 0).all()
    for l, h in [(0, 1), (2, 0)]:
        assert_parity(C.get_WOV(model, l, h), model.OV[l, h].AB, atol=1e-6)


def test_pre_20_dir_composes_the_fits(setup):
    """get_pre_20_dir = L_ln1ᵀ W_OV Lᵀ d (the head's LayerNorm fit at the read position, its OV circuit, the final
    fit); get_neuron_in_dir = L_ln2ᵀ W_in[:, n] likewise, and it predicts the neuron's pre-activation through the
    fit up to a constant (correlation > 0.9 on the strings: the fit's R² is ~0.99, and a neuron reads a direction
    the fit's residuals also reach)."""
    model, data, _, cache = setup
    ln1, _ = C.get_ln_fit(model, data, model.blocks[2].ln1, seq_pos=1, cache=cache)
    expected = torch.from_numpy(ln1.coef_).float().T @ C.get_WOV(model, 2, 0) @ C.get_pre_final_ln_dir(model, data, cache)
    assert_parity(C.get_pre_20_dir(model, data, 2, 0, 1, cache), expected, atol=1e-5)
    n = 5
    d = C.get_neuron_in_dir(model, data, 2, n, 0, cache)
    pre = cache["blocks.2.mlp.hook_pre"][:, 0, n]
    assert np.corrcoef((cache["blocks.2.hook_resid_mid"][:, 0] @ d).detach().numpy(), pre.numpy())[0, 1] > 0.9


def test_out_by_neuron_sums_to_the_mlp(setup, measure):
    """get_out_by_neuron: a_n W_out[n] for every neuron, which with b_out sums to the MLP's output (1e-5); the
    seq variant is its slice; get_out_by_neuron_in_20_dir and its less-memory version agree (1e-5)."""
    model, data, _, cache = setup
    for layer in (1, 2):
        by = C.get_out_by_neuron(model, data, layer, cache=cache)
        assert by.shape == (N_GATE, data.seq_length, 56, 56)
        report = assert_parity(by.sum(2) + model.b_out[layer], cache[utils.get_act_name("mlp_out", layer)], atol=1e-5)
        assert torch.equal(C.get_out_by_neuron(model, data, layer, seq=1, cache=cache), by[:, 1])
    measure("neurons_sum_vs_mlp_out.max_abs_err", report.max_abs_err, "≤ 1e-5")
    direction = C.get_pre_20_dir(model, data, cache=cache)
    a = C.get_out_by_neuron_in_20_dir(model, data, 1, direction, seq=1)
    b = C.get_out_by_neuron_in_20_dir_less_memory(model, data, 1, direction, seq=1)
    assert_parity(a, b, atol=1e-5)


def test_total_effect_vanishes_when_nothing_changes(setup):
    """total_effect_at_start patches a head's [start] output with its mean over the balanced strings: on a batch of
    one balanced string repeated, that mean is the string's own output and the effect is 0 (to float rounding);
    on the gate's strings it is the logit gap's change, nonzero."""
    model, data, _, cache = setup
    same = B.BracketsDataset([("(())()", True)] * 3)
    assert C.total_effect_at_start(model, same, 2, 0).abs().max() < 1e-5
    effect = C.total_effect_at_start(model, data, 2, 0, cache)
    assert effect.shape == (N_GATE,) and effect.abs().max() > 0.1


def test_counting_head_reads_the_proportion(setup, measure):
    """Among the layer-0 heads, the one that attends most uniformly from [start] (attention entropy closest to the
    uniform distribution's) is the one whose [start] output encodes the proportion of "(": a linear fit recovers it
    with R² > 0.9 (LinearRegression)."""
    model, data, _, cache = setup
    r2 = C.counting_heads(model, data, cache)
    entropy = {h: C._entropy_ratio(cache["blocks.0.attn.hook_pattern"][:, h, 0], data) for h in range(2)}
    uniform = max(entropy, key=entropy.get)
    measure("counting_head_r2_gate", r2[f"L0H{uniform}"], "> 0.9")
    assert r2[f"L0H{uniform}"] > 0.9 and entropy[uniform] > 0.95


# ---------------------------------------------------------------- adversarial strings


def test_single_dip_strings_and_dip_profile():
    """single_dip_strings lists every "()"·a + ")(" + "()"·b up to 40 characters (Σ_{n=0}^{19} (n + 1) = 210): each
    has total elevation 0 and exactly one prefix at −1, at the recorded position, whose distance from the nearer end
    dip_profile recomputes."""
    family = C.single_dip_strings()
    assert len(family) == sum(n + 1 for n in range(20)) and len({f["string"] for f in family}) == len(family)
    for f in family:
        h = B.elevation_profile(f["string"])
        assert h[-1] == 0 and h.min() == -1 and (h < 0).sum() == 1 and h[f["dip"] - 1] == -1
        prof = C.dip_profile(f["string"])
        assert prof["from_end"] == f["from_end"] and prof["n_negative"] == 1
    assert C.dip_profile("(())")["n_negative"] == 0


# The model is committed and fixed, so re-running it changes only float32 rounding: a logit is ~1,500 roundings
# deep (day 60's LOGIT_REL); a decision (P(balanced) > ½) can flip only where the logit gap is within twice that.
LOGIT_REL = float_ops(1500, "float32").rel


def test_adversarial_family_reproduces(setup, committed, measure):
    """The adversarial strings of results.json against the committed model now: every single-dip string's
    P(balanced) (within a float32 softmax's rounding of the logits, 2·LOGIT_REL·max|logit|), the number fooled in
    each band of distance from the end exactly (no decision within rounding of ½: checked), the nested strings'
    P(balanced); and the headline pattern: none fooled with the dip at an end, more fooled the farther it is."""
    model = setup[0]
    adv = committed["adversarial"]["single_dip"]
    strs = [s["string"] for s in adv["strings"]]
    data = B.BracketsDataset([(s, False) for s in strs])
    logits = B.class_logits(model, data)
    err = LOGIT_REL * logits.abs().max().item()
    gap = (logits[:, 1] - logits[:, 0]).abs()
    assert (gap > 2 * err).all(), "a decision within rounding of ½"
    p = logits.softmax(-1)[:, 1].numpy()
    tol = Tolerance(abs=2 * err, reason="P(balanced) moves by at most the logit gap's float32 error")
    worst = assert_reproduces(p.tolist(), [s["p_balanced"] for s in adv["strings"]], tol, name="single_dip.p_balanced")
    for band in adv["by_from_end"]:
        lo, hi = band["from_end"]
        m = np.array([lo <= s["from_end"] <= hi for s in adv["strings"]])
        assert_reproduces(int((p[m] > 0.5).sum()), band["fooled"], exact("decisions with margins above rounding"))
    assert adv["by_from_end"][0]["fooled"] == 0
    fractions = [b["fooled_fraction"] for b in adv["by_from_end"]]
    assert fractions == sorted(fractions) and fractions[-1] > 0.3
    nested = committed["adversarial"]["nested"]
    assert_reproduces(C.p_balanced(model, [n["string"] for n in nested]).tolist(), [n["p_balanced"] for n in nested],
                      tol, name="nested.p_balanced")
    measure("adversarial_vs_committed", worst, "≤ 1 (fraction of the tolerance)")
    measure("single_dip.fooled", int((p > 0.5).sum()))


def test_results_files(committed):
    """results.json analyses day 60's committed checkpoint (its sha256), with the analysis set and seeds of today's
    code, and the figures exist."""
    import hashlib

    assert committed["checkpoint_sha256"] == hashlib.sha256(B.CHECKPOINT.read_bytes()).hexdigest()
    assert (committed["n_analysis"], committed["analysis_seed"], committed["search_seed"], committed["far"]) == \
        (C.N_ANALYSIS, C.ANALYSIS_SEED, C.SEARCH_SEED, C.FAR)
    for name in ("components", "aucs", "adversarial"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000


# ---------------------------------------------------------------- the slow run

# Re-running the analysis on the same fixed model changes only float32 rounding. Continuous numbers (R², a
# correlation, a standard deviation, a mean) are reductions over ≤ 3,000 × 56 float32 terms: float_ops(3000·56).
# AUCs are rank statistics: a pair of scores swaps only if they are within rounding of each other; allowed: 0.001
# (a few pairs in ~500,000).
CONT_TOL = float_ops(3000 * 56, "float32", abs=1e-6)
AUC_TOL = Tolerance(abs=1e-3, reason="rank statistic of float32 scores: only near-tied pairs can swap")


@pytest.mark.slow
def test_full_analysis_reproduces(committed, measure):
    """(slow: the whole analysis on 3,000 strings and the 13,633-string search) Every number of results.json's
    analysis reproduces: R² and correlations within CONT_TOL, AUCs within AUC_TOL, the detector heads and neurons
    and the top neurons' identities exactly; the search's counts exactly (decisions, margins far above rounding);
    and the claims the post makes: the strings the circuit predicts to be hard fool the model far more often than
    the rest (more than 20 times the rate)."""
    model = B.load_brackets_model()
    data = B.BracketsDataset(B.generate_brackets_data(C.N_ANALYSIS, C.ANALYSIS_SEED))
    now = C.analyse(model, data)
    then = committed["analysis"]
    assert now["types"] == then["types"]
    assert now["detector_heads"] == then["detector_heads"] and now["detector_neurons"] == then["detector_neurons"]
    assert [n["neuron"] for n in now["top_neurons"]] == [n["neuron"] for n in then["top_neurons"]]
    assert_reproduces(now["ln_r2"], then["ln_r2"], CONT_TOL, name="ln_r2")
    assert_reproduces(now["pre_final_ln_dir_corr"], then["pre_final_ln_dir_corr"], CONT_TOL)
    for key in ("components", "total_effect", "neuron_inputs"):
        aucs = lambda t: {k: {f: v[f] for f in (*C.FAILURES, "unbalanced")} for k, v in t.items()} if key != "neuron_inputs" \
            else {kind: {k: {f: v[f] for f in C.FAILURES} for k, v in tab.items()} for kind, tab in t.items()}  # noqa: E731
        assert_reproduces(aucs(now[key]), aucs(then[key]), AUC_TOL, name=key)
    adv = C.adversarial(model, now["detector_neurons"]["negative"])
    s_now, s_then = adv["search"], committed["adversarial"]["search"]
    assert s_now == s_then
    measure("slow.search.fooled_fraction_predicted", s_now["fooled_fraction_predicted"])
    measure("slow.search.fooled_fraction_rest", s_now["fooled_fraction_rest"])
    assert s_now["fooled_fraction_predicted"] > 20 * s_now["fooled_fraction_rest"]
    assert math.isfinite(now["neuron_dla_share_top8"])
