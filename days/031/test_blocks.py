"""The gate of day 31 (ARENA 1.1: LayerNorm, Embed, PosEmbed, Attention, MLP, TransformerBlock, Unembed).

Each component is compared with TransformerLens's component of the same name carrying the same
weights (copied by name, every parameter randomised so that nothing hides behind an identity
LayerNorm or a zero bias), and with torch built-ins where one exists (``F.layer_norm``,
``F.gelu(approximate="tanh")``, ``F.embedding``). In float64 the implementations differ only in
summation order, so atol 1e-12 holds with room; at GPT-2 small's width in float32 the stated
tolerance is 1e-5 (float32 rounding, ~1e-7 relative, accumulated over sums of 3072 terms).
Parameter counts are checked against Hugging Face's ``GPT2Block``.
"""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformer_lens import components as tlc
from transformer_lens.components.mlps.mlp import MLP as TLMLP
from transformers import GPT2Config
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from checks import assert_parity, grad_check
from checks.committed import assert_reproduces, float_ops
from checks.models import gpt2_config

from . import blocks as B

HERE = Path(__file__).parent
TOL64 = 1e-12
SMALL = dict(d_model=24, n_heads=3, d_head=8, d_mlp=96, n_ctx=16, d_vocab=50)


def tl_cfg(dtype=torch.float64, **shape):
    return gpt2_config(n_layers=1, dtype=dtype, **shape)


def our_cfg(cfg) -> B.Config:
    return B.Config(d_model=cfg.d_model, layer_norm_eps=cfg.eps, d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx,
                    d_head=cfg.d_head, d_mlp=cfg.d_mlp, n_heads=cfg.n_heads, n_layers=cfg.n_layers)


def randomise(module, seed=0):
    """Every parameter random: matrices N(0, 1/fan_in) (activations stay O(1)), vectors around 1 or 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if p.dim() >= 2:
                p.copy_(noise * p.shape[-2] ** -0.5)
            else:
                p.copy_((1.0 if name.endswith("w") else 0.0) + 0.3 * noise)
    return module


COMPONENTS = {
    "LayerNorm": (lambda c: tlc.LayerNorm(c), B.LayerNorm, "resid"),
    "Embed": (lambda c: tlc.Embed(c), B.Embed, "tokens"),
    "PosEmbed": (lambda c: tlc.PosEmbed(c), B.PosEmbed, "tokens"),
    "Attention": (lambda c: tlc.Attention(c), B.Attention, "attn"),
    "MLP": (lambda c: TLMLP(c), B.MLP, "resid"),
    "TransformerBlock": (lambda c: tlc.TransformerBlock(c, 0), B.TransformerBlock, "resid"),
    "Unembed": (lambda c: tlc.Unembed(c), B.Unembed, "resid"),
}


def run_pair(name, cfg, dtype, seed=0):
    """(ours, TransformerLens's) output of component ``name`` on the same random input and weights."""
    make_ref, make_ours, kind = COMPONENTS[name]
    ref = randomise(make_ref(cfg), seed)
    ours = make_ours(our_cfg(cfg)).to(dtype)
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert missing == [], f"{name}: our parameters missing from TransformerLens's: {missing}"
    assert all(k.endswith("mask") for k in unexpected), unexpected  # TL's precomputed causal-mask buffer
    g = torch.Generator().manual_seed(seed + 1)
    if kind == "tokens":
        x = torch.randint(0, cfg.d_vocab, (2, 11), generator=g)
    else:
        x = torch.randn(2, 11, cfg.d_model, generator=g, dtype=dtype)
    expected = ref(x, x, x) if kind == "attn" else ref(x)
    return ours(x), expected


@pytest.mark.parametrize("name", COMPONENTS)
def test_component_matches_transformer_lens(name, measure):
    """Each component equals TransformerLens's on the same weights, copied by name (float64, atol 1e-12)."""
    ours, expected = run_pair(name, tl_cfg(**SMALL), torch.float64)
    report = assert_parity(ours, expected, atol=TOL64, name=name)
    measure(f"{name}.float64.max_abs_err", report.max_abs_err, "≤ 1e-12")


@pytest.mark.parametrize("name", ["LayerNorm", "MLP", "TransformerBlock"])
def test_component_matches_transformer_lens_at_gpt2_width_float32(name, measure):
    """At GPT-2 small's width (768, 12 heads × 64, d_mlp 3072) in float32 the components agree with
    TransformerLens's to atol 1e-5 (float32 rounding over sums of up to 3072 terms)."""
    cfg = tl_cfg(dtype=torch.float32, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=32, d_vocab=10)
    ours, expected = run_pair(name, cfg, torch.float32)
    report = assert_parity(ours, expected, atol=1e-5, name=name)
    measure(f"{name}.gpt2_width_float32.max_abs_err", report.max_abs_err, "≤ 1e-5")


def test_layernorm_matches_torch_and_is_invariant_to_shift_and_scale(measure):
    """LayerNorm equals F.layer_norm (float64, 1e-12); with eps = 0 it ignores any shift c and positive
    scale a of its input, LN(a x + c) = LN(x), and its output before w, b has mean 0 and variance 1."""
    cfg = B.Config(d_model=32)
    ln = randomise(B.LayerNorm(cfg).double())
    x = torch.randn(3, 5, 32, dtype=torch.float64) * 4 + 2
    report = assert_parity(ln(x), F.layer_norm(x, (32,), ln.w, ln.b, eps=cfg.layer_norm_eps), atol=TOL64)
    measure("layernorm_vs_torch.max_abs_err", report.max_abs_err, "≤ 1e-12")
    plain = B.LayerNorm(B.Config(d_model=32, layer_norm_eps=0.0)).double()
    assert_parity(plain(7.5 * x - 3.0), plain(x), atol=TOL64)
    y = plain(x)
    assert_parity(y.mean(-1), torch.zeros(3, 5, dtype=torch.float64), atol=TOL64)
    assert_parity(y.var(-1, unbiased=False), torch.ones(3, 5, dtype=torch.float64), atol=1e-12)


def test_layernorm_gradients_match_central_differences(measure):
    """Backpropagation through LayerNorm (input, w and b) matches central differences."""
    ln = B.LayerNorm(B.Config(d_model=6)).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    w, b = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)

    def f(x, w, b):
        return torch.func.functional_call(ln, {"w": w, "b": b}, (x,))

    measure.grad(grad_check(f, [x, w, b], names=["x", "w", "b"]), "layernorm")


def test_gelu_new_is_torchs_tanh_gelu_and_close_to_exact_gelu(measure):
    """gelu_new equals F.gelu(approximate='tanh') (float64, 1e-15) and differs from the exact
    GELU x Φ(x) by at most 1e-3 (the approximation error of the tanh form, ~2e-4)."""
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    assert_parity(B.gelu_new(x), F.gelu(x, approximate="tanh"), atol=1e-15)
    gap = (B.gelu_new(x) - F.gelu(x)).abs().max()
    measure("gelu_new_vs_exact.max_abs_diff", gap, "≤ 1e-3")
    assert 1e-5 < gap < 1e-3  # a real approximation, not the exact GELU by mistake


def test_embeddings_are_lookups():
    """Embed is F.embedding(tokens, W_E), i.e. one-hot(tokens) @ W_E; PosEmbed with an offset o gives
    rows o..o+n-1 of W_pos for every batch element, accepts a sequence that ends exactly at n_ctx and refuses
    positions beyond it, naming the last position asked for."""
    cfg = B.Config(d_model=8, d_vocab=20, n_ctx=12)
    embed, pos = B.Embed(cfg), B.PosEmbed(cfg)
    tokens = torch.randint(0, 20, (3, 5))
    assert torch.equal(embed(tokens), F.embedding(tokens, embed.W_E))
    assert_parity(embed(tokens), F.one_hot(tokens, 20).float() @ embed.W_E, atol=1e-7)
    out = pos(tokens, past_kv_pos_offset=4)
    assert out.shape == (3, 5, 8) and all(torch.equal(out[b], pos.W_pos[4:9]) for b in range(3))
    assert torch.equal(pos(tokens, past_kv_pos_offset=7)[0], pos.W_pos[7:12])      # the last row, n_ctx = 12
    with pytest.raises(ValueError, match="positions up to 13 exceed n_ctx = 12"):
        pos(tokens, past_kv_pos_offset=8)


def test_block_is_a_residual_of_its_two_sublayers():
    """TransformerBlock = x + Attn(LN1 x), then + MLP(LN2 ·): with both sublayers' output weights zeroed
    the block is exactly the identity, and each sublayer's contribution adds to the stream."""
    cfg = B.Config(**{k: v for k, v in SMALL.items()})
    block = randomise(B.TransformerBlock(cfg).double())
    x = torch.randn(2, 7, cfg.d_model, dtype=torch.float64)
    mid = x + block.attn(block.ln1(x))
    assert_parity(block(x), mid + block.mlp(block.ln2(mid)), atol=TOL64)
    with torch.no_grad():
        for p in (block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out):
            p.zero_()
    assert torch.equal(block(x), x)


def test_parameter_counts_match_hugging_face_gpt2_block(measure):
    """At GPT-2 small's shape a TransformerBlock has exactly as many parameters as Hugging Face's
    GPT2Block (7,087,872), and each component has its closed-form count."""
    cfg = B.Config()
    parts = B.parameter_breakdown(cfg)
    hf_block = GPT2Block(GPT2Config(), layer_idx=0)
    assert parts["block"] == sum(p.numel() for p in hf_block.parameters())
    m, h, d, n, v = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab
    assert parts["attention"] == 4 * h * m * d + 3 * h * d + m
    assert parts["mlp"] == 2 * m * n + n + m
    assert parts["layer_norms"] == 4 * m
    assert parts["embed"] == v * m and parts["pos_embed"] == cfg.n_ctx * m and parts["unembed"] == m * v + v
    measure("gpt2_block_parameters", parts["block"], "= HF GPT2Block")


# max|gelu_new(x) − x Φ(x)| on [−6, 6] in float64: each side is ≈ 12 rounding steps (tanh and erf counted as 4:
# vectorised and scalar libm differ by a few ulp) on values ≤ 6, so the gap (≈ 4.7e-4, a cancellation) is off by
# ≤ 8·24·u·6 ≈ 1.3e-13 absolute; the max over the grid moves by no more than its values do.
GELU_GAP_TOL = float_ops(24, abs=6 * float_ops(24).rel, why="two ≈ 12-step float64 GELUs of size ≤ 6, subtracted")


def test_results_json_is_current(committed, measure):
    """results.json (cited by the post) is what the code computes now: the gelu gap (to 1.3e-13 absolute: the
    float64 rounding of two GELUs of size ≤ 6, GELU_GAP_TOL) and the parameter breakdown (exact integers)."""
    results = committed
    measure("gelu.max_abs_diff_vs_committed", assert_reproduces(B.gelu_comparison()["max_abs_diff"],
                                                                 results["gelu"]["max_abs_diff"], GELU_GAP_TOL,
                                                                 name="gelu.max_abs_diff"), "≤ 1 (fraction of the tolerance)")
    assert results["parameters_per_component"] == B.parameter_breakdown(B.Config())
    for name in ("gelu", "parameters"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
    measure("gpt2_small_untied_parameters", results["total_untied"])
    assert math.isclose(results["mlp_to_attention_ratio"], 2.0, rel_tol=1e-3)
