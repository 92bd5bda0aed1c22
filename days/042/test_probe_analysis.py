"""The gate of day 42 (ARENA 1.3.1 Linear Probes: what breaks probes; attention probes on full sequences).

Each failure is built on purpose where its answer is known, then measured on SmolLM2. References:
``torch.nn.functional.scaled_dot_product_attention`` (one query attending over the sequence: an independent
implementation of the attention probe's pooling), ``torch.autograd.gradcheck`` for its training loss, synthetic data
with planted directions (a label direction and a keyword direction whose geometry is known), Hugging Face's hidden
states of each prompt alone, and day 41's steering (tested there against TransformerLens). Tolerances: float64 to
1e-12; float32 activations to SMOLLM2_LOGIT_REL × their scale (checks/committed.py).
"""

import importlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from checks import assert_parity
from checks.committed import SMOLLM2_LOGIT_REL, assert_reproduces, exact

from . import probe_analysis as A

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("smollm2-135m-instruct")
fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module


# ---------------------------------------------------------------- distribution shift


def test_shifted_sets_keep_the_content_and_the_label():
    """The shifted test sets say the same thing as the cities pairs in another form: a paraphrase ('X is a city in
    Y.'), role-play (an actor's line in a play, quoted) and negation (day 40's neg_cities, whose *true* statement
    names the wrong country). The pairs line up city by city, and a true statement stays labelled true."""
    pairs = A.S40.make_pairs("cities")[:5]
    shifted = A.shifted_sets(pairs)
    assert set(shifted) == {"paraphrase", "roleplay", "neg_cities"}
    truth = dict(A.S40.CITIES)
    for name, sset in shifted.items():
        assert [p.group for p in sset] == [p.group for p in pairs]
    for p, para, role, neg in zip(pairs, shifted["paraphrase"], shifted["roleplay"], shifted["neg_cities"]):
        country = truth[p.group]
        assert para.true == f"{p.group} is a city in {country}." and para.false.startswith(f"{p.group} is a city in ")
        assert p.true in role.true and p.false in role.false and role.true.startswith("In a play")
        assert f"not in {country}" in neg.false and f"not in {country}" not in neg.true


# ---------------------------------------------------------------- spurious features


def test_confounded_sets_put_the_keyword_where_asked():
    """The confound, built on purpose: with where='true' every true statement (and no false one) starts with the
    keyword; 'false' the reverse (the anti-confounded test); 'balanced' puts it on exactly half of each class, so the
    keyword says nothing about the label; 'none' is the plain set. The statement after the keyword is unchanged."""
    pairs = A.S40.make_pairs("cities")[:8]
    plain, labels = A.confounded(pairs, "none")
    for where in ("true", "false", "balanced"):
        statements, y = A.confounded(pairs, where)
        assert y == labels
        has = torch.tensor([s.startswith(A.KEYWORD) for s in statements])
        yt = torch.tensor(y)
        if where == "true":
            assert torch.equal(has, yt == 1)
        elif where == "false":
            assert torch.equal(has, yt == 0)
        else:
            assert has[yt == 1].sum() == has[yt == 0].sum() == len(pairs) // 2
        for s, p in zip(statements, plain):
            assert s.removeprefix(A.KEYWORD) == p[0].lower() + p[1:] if s.startswith(A.KEYWORD) else s == p


def _planted(n, d=32, keyword=None, seed=0, signal=1.0, kw_strength=3.0):
    """Synthetic activations: the label along u (weak: signal), the keyword along k (strong), noise elsewhere."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:, 0] += signal * (2 * y - 1)
    if keyword is not None:
        x[:, 1] += kw_strength * keyword
    return x, y


def test_spurious_keyword_is_learned_and_caught_on_planted_data(measure):
    """A probe trained where a keyword (direction k, strong) marks every true statement learns the keyword instead
    of the label (direction u, weak): it is nearly perfect in distribution, falls below chance where the keyword
    marks the false statements instead, and its direction is closer to k than to u. The catch needs no new labels:
    the cosine between the probe and the keyword direction (mean activation with the keyword minus without). A
    probe trained on the balanced set is not fooled."""
    n = 400
    y = torch.arange(n) % 2
    x_conf, _ = _planted(n, keyword=y.double(), seed=0)
    x_anti, _ = _planted(n, keyword=(1 - y).double(), seed=1)
    balanced_kw = (torch.arange(n) // 2 % 2).double()
    x_bal, _ = _planted(n, keyword=balanced_kw, seed=2)
    confounded = A.P40.LRProbe.from_data(x_conf, y)
    balanced = A.P40.LRProbe.from_data(x_bal, y)
    assert A.P40.accuracy(confounded, x_conf, y) > 0.95
    anti = A.P40.accuracy(confounded, x_anti, y)
    assert anti < 0.5
    kw_dir = A.keyword_direction(x_bal[balanced_kw == 1], x_bal[balanced_kw == 0])
    assert A.cosine(confounded.direction, kw_dir) > 0.8 > A.cosine(confounded.direction, torch.eye(32)[0].double())
    assert abs(A.cosine(balanced.direction, kw_dir)) < 0.3 and A.P40.accuracy(balanced, x_anti, y) > 0.6
    measure("planted.confounded_probe_on_anti_confounded.accuracy", anti)


@pytest.fixture(scope="module")
def keyword_acts():
    """SmolLM2's layer-12 last-token activations of the first 16 city pairs, plain, with the keyword on the true
    statements only, on the false ones only, and on half of each class."""
    pairs = A.S40.make_pairs("cities")[:16]
    out = {}
    for where in ("none", "true", "false", "balanced"):
        statements, labels = A.confounded(pairs, where)
        out[where] = (A.P40.extract_activations(statements, [12], "smollm2", batch_size=16)[12], torch.tensor(labels))
    return out


def test_spurious_keyword_on_smollm2(keyword_acts, measure):
    """The same failure on SmolLM2's own activations: an LR probe trained where 'Indeed,' marks every true city
    statement is perfect in distribution, below chance when 'Indeed,' marks the false ones, and points along the
    keyword's direction (cosine > 0.5) far more than a probe trained on the plain statements does."""
    x_true, y = keyword_acts["true"]
    probe = A.P40.LRProbe.from_data(x_true, y)
    assert A.P40.accuracy(probe, x_true, y) == 1.0
    anti = A.P40.accuracy(probe, *keyword_acts["false"])
    assert anti < 0.5
    x_bal, _ = keyword_acts["balanced"]
    has = torch.tensor([s.startswith(A.KEYWORD) for s in A.confounded(A.S40.make_pairs("cities")[:16], "balanced")[0]])
    kw_dir = A.keyword_direction(x_bal[has], x_bal[~has])
    plain = A.P40.LRProbe.from_data(*keyword_acts["none"])
    cos_conf, cos_plain = A.cosine(probe.direction, kw_dir), A.cosine(plain.direction, kw_dir)
    assert cos_conf > 0.5 and cos_conf > cos_plain + 0.3
    measure("smollm2_gate.confounded_on_anti.accuracy", anti)
    measure("smollm2_gate.cos_keyword.confounded", cos_conf)


# ---------------------------------------------------------------- attention probes


def _sequences(b=6, s=9, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(b, s, d, generator=g, dtype=torch.float64)
    lengths = torch.tensor([9, 5, 7, 1, 9, 3])[:b]
    mask = torch.arange(s)[None, :] < lengths[:, None]
    q, v = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    return acts, mask, q, v


def test_attention_probe_forward_is_single_query_attention():
    """ARENA's attention_probe_forward: weights a_s = softmax_s(q·x_s) over the real tokens only, logit
    Σ_s a_s (v·x_s) + b. It equals scaled_dot_product_attention with one query q (scale 1), keys x_s, values v·x_s
    and the padding masked (1e-12); padding content never matters; q = 0 is mean pooling; a large q along a
    coordinate that only the last real token has is last-token pooling."""
    acts, mask, q, v = _sequences()
    ours = A.attention_probe_forward(acts, mask, q, v, 0.3)
    ref = F.scaled_dot_product_attention(q.expand(len(acts), 1, 1, -1), acts[:, None], (acts @ v)[:, None, :, None],
                                         attn_mask=mask[:, None, None, :], scale=1.0)
    assert_parity(ours, ref.flatten() + 0.3, atol=1e-12)
    garbage = acts.clone()
    garbage[~mask] = 1e6
    assert_parity(A.attention_probe_forward(garbage, mask, q, v, 0.3), ours, atol=1e-12)
    mean = ((acts @ v) * mask).sum(1) / mask.sum(1)
    assert_parity(A.attention_probe_forward(acts, mask, torch.zeros_like(q), v, 0.0), mean, atol=1e-12)
    marked = torch.cat([acts, torch.zeros(*acts.shape[:2], 1, dtype=acts.dtype)], -1)
    last = mask.sum(1) - 1
    marked[torch.arange(len(acts)), last, -1] = 1.0
    q_last = torch.zeros(marked.shape[-1], dtype=acts.dtype)
    q_last[-1] = 100.0
    v_last = torch.cat([v, torch.zeros(1, dtype=acts.dtype)])
    assert_parity(A.attention_probe_forward(marked, mask, q_last, v_last, 0.0),
                  acts[torch.arange(len(acts)), last] @ v, atol=1e-10)


def test_attention_probe_loss_gradcheck():
    """The attention probe trains by gradient: its loss (mean BCE + L2 on q and v) passes torch.autograd.gradcheck
    against central differences in float64."""
    acts, mask, q, v = _sequences(b=4, d=5)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    params = (q.clone().requires_grad_(), v.clone().requires_grad_(), torch.tensor(0.1, dtype=torch.float64,
                                                                                    requires_grad=True))
    assert torch.autograd.gradcheck(lambda q_, v_, b_: A.attention_probe_loss(acts, mask, y, q_, v_, b_, 1e-2), params)


def test_attention_probe_finds_the_informative_token():
    """Where the label lives at one token somewhere in the sequence (marked by a feature the probe can attend to)
    and the last token is noise, a last-token probe is at chance, mean pooling dilutes the signal, and a trained
    attention probe reads it (held-out accuracy > 0.9)."""
    g = torch.Generator().manual_seed(0)

    def make(n):
        s, d = 12, 16
        acts = torch.randn(n, s, d, generator=g, dtype=torch.float64)
        y = torch.arange(n) % 2
        where = torch.randint(0, s - 1, (n,), generator=g)             # never the last token
        acts[torch.arange(n), where, 0] += 4.0                         # "here is the fact"
        acts[torch.arange(n), where, 1] += 1.5 * (2 * y - 1)           # the fact's truth
        return acts, torch.ones(n, s, dtype=torch.bool), y

    acts, mask, y = make(400)
    test_acts, test_mask, test_y = make(200)
    probe = A.AttentionProbe.from_data(acts, mask, y)
    attn = (probe.pred(test_acts, test_mask) == test_y).double().mean().item()
    last = A.P40.accuracy(A.P40.LRProbe.from_data(acts[:, -1], y), test_acts[:, -1], test_y)
    assert attn > 0.9 and abs(last - 0.5) < 0.1


def test_attention_probe_predicts_true_only_for_a_positive_logit():
    """pred is score > 0, sklearn's rule for a binary linear classifier (LinearClassifierMixin.predict): a logit of
    exactly 0 (probability ½, as from the untrained probe, whose q, v and b are all zero) predicts false."""
    acts, mask, _, _ = _sequences()
    probe = A.AttentionProbe(acts.shape[-1])
    assert torch.equal(probe.score(acts, mask), torch.zeros(len(acts), dtype=torch.float64))
    assert torch.equal(probe.pred(acts, mask), torch.zeros(len(acts), dtype=torch.long))
    with torch.no_grad():
        probe.value.copy_(torch.randn(acts.shape[-1], generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    scores = probe.score(acts, mask)
    assert torch.equal(probe.pred(acts, mask), (scores > 0).long()) and 0 < probe.pred(acts, mask).sum() < len(acts)


def test_attention_probe_fit_is_a_stationary_point_of_the_standardised_loss():
    """from_data minimises the loss on standardised activations z = (x − μ)/s (μ, s from day 40's standardiser over the
    real tokens) and folds the standardisation back: q = s·query, v = s·value, b = bias + value·μ recover the fitted
    parameters, and there the loss's gradient (autograd) vanishes, bias included, for labels that are not balanced
    (so b = 0 is not optimal) on activations far from standardised (μ ≠ 0, s ≠ 1). The folded probe's logits on x
    equal the fitted ones on z (the constant q·μ/s drops out of the softmax)."""
    g = torch.Generator().manual_seed(3)
    n, s_len, d = 120, 6, 5
    acts = torch.randn(n, s_len, d, generator=g, dtype=torch.float64)
    y = (torch.arange(n) % 4 != 0).long()                             # 3 of every 4 true
    where = torch.randint(0, s_len, (n,), generator=g)
    acts[torch.arange(n), where, 0] += 3.0
    acts[torch.arange(n), where, 1] += 1.0 * (2 * y - 1)
    acts = 7.0 * acts + 3.0
    lengths = torch.randint(2, s_len + 1, (n,), generator=g)
    mask = torch.arange(s_len)[None, :] < lengths[:, None]
    mask[torch.arange(n), where] = True
    probe = A.AttentionProbe.from_data(acts, mask, y)

    real = acts[mask]
    mu = real.mean(0)
    s = (real - mu).pow(2).mean().sqrt()
    assert abs(s - 7.0) < 1.0 and mu.abs().max() > 2.0
    z = (acts - mu) / s
    q, v = (s * probe.query.detach()).requires_grad_(), (s * probe.value.detach()).requires_grad_()
    b = (probe.bias.detach() + probe.value.detach() @ mu).requires_grad_()
    loss = A.attention_probe_loss(z, mask, y, q, v, b, 1e-2)
    grads = torch.autograd.grad(loss, (q, v, b))
    assert max(gr.abs().max().item() for gr in grads) < 1e-6, [gr.abs().max().item() for gr in grads]
    assert abs(b.item()) > 0.1                                        # the bias was trained: imbalance needs one
    assert_parity(probe.score(acts, mask), A.attention_probe_forward(z, mask, q, v, b).detach(), atol=1e-9)


def test_sequence_activations_equal_each_alone(measure):
    """Full-sequence activations (right-padded batches, with their mask) equal Hugging Face's hidden states of each
    prompt run alone at every real position (SMOLLM2_LOGIT_REL × the residual's scale)."""
    from checks.models import hf_model

    hf, tok = hf_model("smollm2")
    prompts = ["The city of Paris is in France. My teacher told me so.", "73 is larger than 41."]
    acts, mask = A.sequence_activations(prompts, 12, "smollm2")
    for i, p in enumerate(prompts):
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            ref = hf(ids, output_hidden_states=True).hidden_states[12][0]
        assert mask[i].sum() == len(ref)
        tol = SMOLLM2_LOGIT_REL * ref.abs().max().item()
        assert_parity(acts[i, :len(ref)], ref, atol=tol)


# ---------------------------------------------------------------- correlational vs causal


def test_directions_share_a_norm():
    """Directions compared under intervention get the same norm (the difference of means'), so that a larger effect
    is a better direction, not a longer vector; the sign of each is set so that it points from false to true."""
    x, y = _planted(200, d=16, signal=2.0)
    dirs = A.probe_directions(x, y)
    assert set(dirs) == {"mm", "mm_iid", "lr"}
    theta = x[y == 1].mean(0) - x[y == 0].mean(0)                    # the difference of means, computed here
    assert_parity(dirs["mm"], theta, atol=1e-12)
    norm = theta.norm()
    for name, d in dirs.items():
        assert abs(d.norm() - norm) < 1e-9 * norm
        assert ((x[y == 1] - x[y == 0].mean(0)) @ d).mean() > 0, name


def test_committed_numbers_are_consistent(committed):
    """What the post cites is consistent without a model run: every accuracy's interval is the Wilson interval of
    its counts, and the figures exist."""
    def walk(node, path=""):
        if isinstance(node, dict):
            if {"correct", "n", "ci"} <= node.keys():
                assert_reproduces(node["ci"], list(A.P40.wilson_interval(node["correct"], node["n"])),
                                  exact("a function of two integers"), name=path)
            for k, v in node.items():
                walk(v, f"{path}.{k}")
    walk(committed)
    for figure in ("shift", "spurious", "causal", "attention"):
        assert (HERE / f"figures/{figure}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_experiment_reproduces(committed, measure):
    """(slow, ~10 minutes on a busy 2-core machine) Every failure recomputed: the transfer accuracies under shift,
    the confound's in- and anti-distribution accuracies and cosines, the attention/last-token/mean-pool accuracies
    and the intervention effects, each within the predictions that rounding could flip. The headlines hold: the
    confounded probe falls below chance on the anti-confounded set, and negation sends the cities probe below
    chance."""
    now = A.compute_results("smollm2")
    tol = now.pop("tolerance")
    worst = 0.0
    for key in ("shift", "spurious", "attention", "causal"):
        worst = max(worst, assert_reproduces(A.numbers(now[key]), A.numbers(committed[key]), tol, name=key))
    measure("experiment_vs_committed", worst, "≤ 1 (fraction of the tolerance)")
    assert now["spurious"]["anti"]["ci"][1] < 0.5
    assert now["shift"]["neg_cities"]["ci"][1] < 0.5
    measure("spurious.anti_accuracy", now["spurious"]["anti"]["accuracy"])
    measure("shift.neg_cities_accuracy", now["shift"]["neg_cities"]["accuracy"])
