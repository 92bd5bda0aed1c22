"""The gate of day 30 (ARENA 1.1: attention).

References: ``torch.nn.functional.scaled_dot_product_attention`` for the functional core, and
TransformerLens's ``components.Attention`` carrying the same weights for the module (its pattern
too, read from ``hook_pattern``); ``torch.autograd`` checked by central differences. Arithmetic is
compared in float64: both sides compute the same sums in a different order, so they agree to
~1e-15; atol 1e-12 leaves room for that and fails on any real error (a missing scale, a
misplaced mask or a transposed head axis moves outputs by O(0.1)).
"""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformer_lens.components import Attention as TLAttention

from checks import assert_parity, grad_check
from checks.committed import assert_reproduces, float_ops, log_space
from checks.models import gpt2_config

from . import attention as A

HERE = Path(__file__).parent
TOL = 1e-12


def qkv(batch, n_q, n_k, heads, d_head, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n_q, heads, d_head, generator=g, dtype=torch.float64)
    k = torch.randn(batch, n_k, heads, d_head, generator=g, dtype=torch.float64)
    v = torch.randn(batch, n_k, heads, d_head, generator=g, dtype=torch.float64)
    return q, k, v


def torch_sdpa(q, k, v, **kwargs):
    """torch's kernel in its own layout [batch, head, pos, d_head], returned in ours."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **kwargs)
    return out.transpose(1, 2)


@pytest.mark.parametrize("batch, n, heads, d_head", [(1, 1, 1, 1), (2, 7, 3, 5), (3, 16, 4, 8), (1, 33, 12, 64)])
def test_causal_attention_matches_torch_sdpa(batch, n, heads, d_head, measure):
    """Causal scaled dot-product multi-head attention equals F.scaled_dot_product_attention(is_causal=True)
    (float64, atol 1e-12)."""
    q, k, v = qkv(batch, n, n, heads, d_head)
    report = assert_parity(A.scaled_dot_product_attention(q, k, v), torch_sdpa(q, k, v, is_causal=True),
                           atol=TOL, name=f"sdpa_{batch}x{n}x{heads}x{d_head}")
    measure(f"sdpa_causal_{n}x{heads}x{d_head}.max_abs_err", report.max_abs_err, "≤ 1e-12")


def test_non_causal_attention_matches_torch_sdpa():
    """Without the mask (causal=False) the core is plain softmax(qkᵀ/√d) v, as torch's (float64, 1e-12)."""
    q, k, v = qkv(2, 5, 9, 3, 4)
    assert_parity(A.scaled_dot_product_attention(q, k, v, causal=False), torch_sdpa(q, k, v), atol=TOL)


def test_fewer_queries_than_keys_is_bottom_right_causal(measure):
    """With n_q < n_k (a KV cache) query i sits at position n_k - n_q + i: it equals the last n_q rows
    of full attention, and torch's kernel with the explicit bottom-right mask (float64, 1e-12)."""
    q, k, v = qkv(2, 11, 11, 3, 8, seed=1)
    full = A.scaled_dot_product_attention(q, k, v)
    for n_q in (1, 4, 11):
        tail = A.scaled_dot_product_attention(q[:, -n_q:], k, v)
        assert_parity(tail, full[:, -n_q:], atol=TOL)
        mask = torch.ones(n_q, 11, dtype=torch.bool).tril(diagonal=11 - n_q)
        report = assert_parity(tail, torch_sdpa(q[:, -n_q:], k, v, attn_mask=mask), atol=TOL)
    measure("kv_offset_vs_torch.max_abs_err", report.max_abs_err, "≤ 1e-12")
    with pytest.raises(ValueError, match="cannot be later"):
        A.causal_mask(5, 3)


def test_pattern_is_causal_and_stochastic():
    """Every row of the pattern is a probability distribution over keys ≤ the query position:
    entries above the diagonal are exactly 0, rows sum to 1 (1e-12)."""
    q, k, _ = qkv(2, 9, 9, 4, 6)
    pattern = A.attention_pattern(q, k)
    assert torch.equal(pattern.triu(diagonal=1), torch.zeros_like(pattern))
    assert_parity(pattern.sum(-1), torch.ones(2, 4, 9, dtype=torch.float64), atol=TOL)
    assert torch.equal(pattern[..., 0, 0], torch.ones(2, 4, dtype=torch.float64))  # the first token sees itself only


def test_future_tokens_cannot_influence_the_past():
    """Causality of the module: changing the input at positions ≥ t leaves the output at positions < t unchanged."""
    torch.manual_seed(0)
    attn = A.Attention(A.Config(d_model=16, n_heads=4, d_head=4)).double()
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    out = attn(x)
    for t in (1, 5, 9):
        y = x.clone()
        y[:, t:] = torch.randn_like(y[:, t:])
        out_y = attn(y)
        assert_parity(out_y[:, :t], out[:, :t], atol=1e-14)
        assert (out_y[:, t:] - out[:, t:]).abs().max() > 1e-3


def tl_attention(cfg: A.Config):
    """TransformerLens's Attention at the same shape, in float64, with random weights and biases
    (weights scaled by 1/sqrt(fan-in) so that every activation is O(1) and atol is meaningful)."""
    tl_cfg = gpt2_config(d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head, n_layers=1,
                         d_mlp=4 * cfg.d_model, dtype=torch.float64)
    ref = TLAttention(tl_cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in ref.parameters():
            scale = p.shape[-2] ** -0.5 if p.dim() == 3 else 0.3
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
    return ref


@pytest.mark.parametrize("shape", [dict(d_model=16, n_heads=4, d_head=4), dict(d_model=24, n_heads=3, d_head=5),
                                   dict(d_model=768, n_heads=12, d_head=64)])
def test_attention_module_matches_transformer_lens(shape, measure):
    """Attention (ARENA's module) equals TransformerLens's Attention given the same weights, copied by
    name (W_Q [n_heads, d_model, d_head] etc.), in output and in pattern (float64, atol 1e-12), and its
    apply_causal_mask method masks exactly as TransformerLens's does."""
    cfg = A.Config(**shape)
    ref = tl_attention(cfg)
    ours = A.Attention(cfg).double()
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert missing == [], missing
    assert set(unexpected) <= {"mask"}  # TransformerLens also keeps a precomputed boolean mask buffer
    x = torch.randn(2, 9, cfg.d_model, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    captured = {}
    ref.hook_pattern.add_hook(lambda t, hook: captured.setdefault("pattern", t))
    expected = ref(x, x, x)
    report = assert_parity(ours(x), expected, atol=TOL, name=f"attn_{cfg.d_model}")
    q, k, _ = ours.qkv(x)
    assert_parity(A.attention_pattern(q, k), captured["pattern"], atol=TOL)
    scores = torch.randn(2, cfg.n_heads, 9, 9, dtype=torch.float64)
    assert torch.equal(ours.apply_causal_mask(scores), ref.apply_causal_mask(scores))  # ARENA's method, TL's mask
    measure(f"tl_attention_d{cfg.d_model}.max_abs_err", report.max_abs_err, "≤ 1e-12")


def test_attention_gradients_match_central_differences(measure):
    """Backpropagation through the einsum attention gives the true gradient w.r.t. q, k and v."""
    q, k, v = qkv(1, 4, 4, 2, 3, seed=5)
    report = grad_check(lambda q, k, v: A.scaled_dot_product_attention(q, k, v), [q, k, v], names=["q", "k", "v"])
    measure.grad(report, "attention")


def test_one_key_returns_its_value_and_equal_scores_average():
    """Closed forms: the first query sees one key, so z = v₀; with all keys identical the scores tie
    and z_i is the running mean of v₀..v_i."""
    q, k, v = qkv(1, 6, 6, 2, 3, seed=6)
    z = A.scaled_dot_product_attention(q, k, v)
    assert_parity(z[:, 0], v[:, 0], atol=TOL)
    k_same = k[:, :1].expand_as(k)
    z = A.scaled_dot_product_attention(q, k_same, v)
    running_mean = v.cumsum(1) / torch.arange(1, 7, dtype=torch.float64)[None, :, None, None]
    assert_parity(z, running_mean, atol=TOL)


def test_scale_keeps_score_variance_at_one(measure):
    """Why 1/sqrt(d_head): for iid N(0, 1) entries Var(q·k) = d_head; scaled, the variance is 1 for every
    d_head (within 10%, the sampling error of 128k scores is ~0.5%) and the softmax does not saturate."""
    for row in A.score_statistics([4, 64, 1024], n_queries=2000):
        d = row["d_head"]
        assert row["scaled"]["score_var"] == pytest.approx(1.0, rel=0.1)
        assert row["unscaled"]["score_var"] == pytest.approx(d, rel=0.1)
        if d == 1024:
            measure("unscaled_max_weight_d1024", row["unscaled"]["max_weight"])
            measure("scaled_max_weight_d1024", row["scaled"]["max_weight"])
            assert row["unscaled"]["max_weight"] > 0.9 > 0.2 > row["scaled"]["max_weight"]


def test_hand_built_previous_token_head(measure):
    """A head with W_Q = c·(shift), W_K = I on one-hot positions attends to the previous token with
    weight 1/(1 + s·e^{-20}) at query s (closed form, 1e-12), and copies that token's input; it is one head."""
    n = 10
    head = A.previous_token_head(n).double()
    x = torch.eye(n, dtype=torch.float64)[None]
    q, k, _ = head.qkv(x)
    assert A.attention_pattern(q, k).shape == (1, 1, n, n)   # one head, not a head and a spare
    pattern = A.attention_pattern(q, k)[0, 0]
    s = torch.arange(1, n, dtype=torch.float64)
    assert_parity(torch.diagonal(pattern, -1), 1 / (1 + s * math.exp(-20)), atol=TOL)
    out = head(x)[0]
    assert_parity(out[1:], x[0, :-1], atol=1e-7)  # output ≈ the previous one-hot vector
    measure("previous_token.min_weight", torch.diagonal(pattern, -1).min())


# score_statistics is float64: 64-term dot products, a softmax and an entropy over 64 keys, then a variance over
# 2 000 × 64 = 128 000 scores or means over 2 000 queries; Higham's bound for the longest chain: n ≈ 128 000 + 2·1024
# rounding steps (d_head up to 1024 terms per dot product), float_ops(n) ≈ 1.1e-10 relative (every statistic is a
# positive, well-conditioned sum).
SCORE_STATS_TOL = float_ops(128_000 + 2 * 1024, why="float64 sums over 2 000 × 64 scores of d_head-term dot products")
# A timing is not reproducible across machines or loads, and neither is a ratio of two; what is reproducible is
# which of the two is faster and by roughly how much: the ratio to within one decade.
RATIO_TOL = log_space(1.0, why="a ratio of two best-of-n timings on a shared CPU: its order of magnitude only")


@pytest.mark.parametrize("n", [1, 7, 64])
def test_benchmark_times_two_equal_causal_attentions(n):
    """What the benchmark times is right: its two calls (timed_functions) compute the same causal attention on
    the benchmark's shape (12 heads × 64): ours equals scaled_dot_product_attention, torch's call equals
    F.scaled_dot_product_attention(is_causal=True) on the transposed inputs, and the two agree (float64, 1e-12)."""
    q, k, v = qkv(1, n, n, 12, 64, seed=n)
    fns = A.timed_functions(q, k, v)
    assert sorted(fns) == ["ours", "torch"]
    ours, theirs = fns["ours"](), fns["torch"]().transpose(1, 2)
    assert_parity(ours, A.scaled_dot_product_attention(q, k, v), atol=TOL)
    assert_parity(theirs, torch_sdpa(q, k, v, is_causal=True), atol=TOL)
    assert_parity(theirs, ours, atol=TOL, name="the two timed functions")


def test_benchmark_is_single_threaded_and_its_ratio_reproduces(committed, monkeypatch, measure):
    """The benchmark, at the three smallest sizes (64, 128, 256 tokens, best of 3): each row's ratio is ours / torch
    of its own timings, and its order of magnitude is the committed one (RATIO_TOL, one decade: timings are not
    reproducible, the ratio's size is); the benchmark runs on one thread, as results.json says."""
    rows = A.benchmark(A.SEQ_LENS[:3], repeats=3)
    by_len = {r["seq_len"]: r for r in committed["benchmark"]}
    for row in rows:
        assert row["ratio"] == row["ours"] / row["torch"]
        assert_reproduces(row["ratio"], by_len[row["seq_len"]]["ratio"], RATIO_TOL, name=f"ratio at {row['seq_len']}")
        measure(f"benchmark.ratio_{row['seq_len']}", row["ratio"])
    monkeypatch.setattr(A, "_benchmark", lambda *args: torch.get_num_threads())
    assert A.benchmark([64]) == committed["benchmark_threads"] == 1


@pytest.mark.slow
def test_full_benchmark_ratios_reproduce(committed, measure):
    """(slow, ~10 s) The whole benchmark, 64 to 1024 tokens, best of 10 as committed: every ratio the post cites
    (at 64, 512 and the largest size) has the committed order of magnitude (RATIO_TOL); the largest size is
    SEQ_LENS's last."""
    rows = A.benchmark(A.SEQ_LENS)
    assert_reproduces([r["ratio"] for r in rows], [r["ratio"] for r in committed["benchmark"]], RATIO_TOL,
                      name="benchmark ratios")
    assert_reproduces(rows[-1]["ratio"], committed["ratio_at_largest"], RATIO_TOL, name="ratio_at_largest")
    assert committed["largest_seq_len"] == rows[-1]["seq_len"] == A.SEQ_LENS[-1]
    measure("slow.benchmark.ratio_at_largest", rows[-1]["ratio"])


def test_results_json_is_current(committed, measure):
    """results.json (cited by the post) matches the code: the score statistics at every d_head (the figure, and
    the post's d_head = 64 and 1024 rows) are recomputed (float64 sums over 128 000 scores: 1.1e-10 relative,
    SCORE_STATS_TOL), ln 64 is ln 64, the hand-built head's smallest weight on the previous token is recomputed
    as the experiment computes it (float32, 12 positions: 8·(12 + 20)·u relative) and is the closed form; the
    benchmark covers the stated sizes; the figures exist."""
    results = committed
    now = A.score_statistics(A.D_HEADS)
    worst = assert_reproduces(now, results["score_statistics"], SCORE_STATS_TOL, name="score_statistics")
    at = {r["d_head"]: {name: r[name] for name in ("scaled", "unscaled")} for r in now}
    assert_reproduces(at[64], results["at_d_head_64"], SCORE_STATS_TOL, name="at_d_head_64")
    assert_reproduces(at[1024], results["at_d_head_1024"], SCORE_STATS_TOL, name="at_d_head_1024")
    measure("score_statistics_vs_committed", worst, "≤ 1 (fraction of the tolerance)")
    assert_reproduces(math.log(64), results["uniform_entropy_64_keys"], float_ops(1), name="uniform_entropy_64_keys")
    n_ctx = results["previous_token"]["n_ctx"]
    head = A.previous_token_head(n_ctx, strength=results["previous_token"]["strength"])
    q, k, _ = head.qkv(torch.eye(n_ctx)[None])
    weight = torch.diagonal(A.attention_pattern(q, k)[0, 0], -1).min().item()
    assert_reproduces(weight, results["previous_token"]["min_weight_on_previous"],
                      float_ops(n_ctx + 20, "float32", why="a float32 softmax over 12 scores of a 12-term product"),
                      name="previous_token.min_weight_on_previous")
    assert weight == pytest.approx(1 / (1 + (n_ctx - 1) * math.exp(-20)), abs=1e-6)
    assert [r["seq_len"] for r in results["benchmark"]] == A.SEQ_LENS
    for name in ("score_scaling", "previous_token_head", "benchmark"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
    measure("benchmark.ratio_at_largest", results["ratio_at_largest"])
