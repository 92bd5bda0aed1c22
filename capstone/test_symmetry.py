"""The gate of Part 4B.1 (permutation symmetry and the symmetry group's size).

Each symmetry is checked the strongest way available: transform the weights, run the model, and
compare logits with the untransformed run (and check that a broken version of the transformation
does change them, so the test can fail). The group's order is compared with exact integer
arithmetic. Models: a 2-layer GPT-2-style model with GPT-2's tokenizer and random weights
(d_model 32, 4 heads of 8; the identities do not depend on size), SmolLM2-135M-Instruct for
grouped-query attention, and GPT-2 small's architecture on the meta device for the sizes.
"""

import itertools
import math

import pytest
import torch

from checks.committed import assert_reproduces, float_ops
from checks.models import random_gpt2

from . import symmetry as S
from .optimization import float64_copy, gpt2_small_shapes

pytestmark = pytest.mark.asset("gpt2-tokenizer")


@pytest.fixture(scope="module")
def tiny():
    model, _ = random_gpt2(n_layers=2, d_model=32, n_heads=4, seed=7)
    tokens = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    return model, tokens


def test_head_permutation_leaves_logits_unchanged(tiny, measure):
    """4B.1 permuting the heads of every layer (W_Q, W_K, W_V, biases and W_O together) leaves the logits
    unchanged to 1e-5 (float32: only the order of the sum over heads changes); permuting W_Q, W_K, W_V
    without W_O changes them by more than 1e-3."""
    model, tokens = tiny
    r = S.head_permutation_check(model, tokens, seed=1)
    measure("4b.head_permutation.max_abs_logit_diff", r["max_abs_logit_diff"], "≤ 1e-5")
    assert r["max_abs_logit_diff"] <= 1e-5
    assert r["control_max_abs_logit_diff"] > 1e-3


def test_every_permutation_of_three_heads_is_a_distinct_symmetry():
    """4B.1 the group: for a layer of 3 heads, all 3! = 6 permutations preserve the logits (float64,
    1e-12) and give 6 different weight settings, so each function has at least n_heads! realisations."""
    model, _ = random_gpt2(n_layers=1, d_model=24, n_heads=3, seed=2, tokenizer=False)
    model = float64_copy(model)
    tokens = torch.randint(0, 50257, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(tokens)
    settings = set()
    for perm in itertools.permutations(range(3)):
        with S.transformed(model):
            S.permute_heads_(model, 0, torch.tensor(perm))
            with torch.no_grad():
                assert (model(tokens) - base).abs().max().item() < 1e-12
            settings.add(model.blocks[0].attn.W_Q.detach().numpy().tobytes())
    assert len(settings) == math.factorial(3)


def test_grouped_query_permutations_must_respect_groups(measure):
    """4B.1 with grouped-query attention (SmolLM2: 9 query heads, 3 key/value heads): permuting whole
    groups and the heads within them preserves the logits (to 1e-4 relative to their scale); a
    permutation that splits a group is refused; the weights are restored bit for bit afterwards."""
    from .mechanics import prompt_tokens
    from .models import load

    model = load("smollm2")
    tokens = prompt_tokens(model, "I think the Sun orbits the Earth, don't you agree?")
    before = model.blocks[3].attn.W_Q.detach().clone()
    r = S.head_permutation_check(model, tokens, seed=3)
    measure("4b.smollm2.head_permutation.max_abs_logit_diff", r["max_abs_logit_diff"], "≤ 1e-4·max|logit|")
    assert r["max_abs_logit_diff"] <= 1e-4 * r["max_abs_logit"]
    assert r["control_max_abs_logit_diff"] > 1e-2
    assert torch.equal(model.blocks[3].attn.W_Q, before)
    with pytest.raises(ValueError, match="splits a key/value group"):
        with S.transformed(model, only="blocks.0.attn."):
            S.permute_heads_(model, 0, torch.tensor([0, 3, 1, 2, 4, 5, 6, 7, 8]))


def test_mlp_neuron_permutation_and_head_gauges(tiny, measure):
    """4B.1 other symmetries: permuting MLP neurons (W_in columns, b_in, W_out rows), the QK gauge
    W_Q A, W_K A^{−T} and the OV gauge W_V B, B^{−1} W_O for invertible A, B leave the logits unchanged
    (float64, 1e-10); a gauge applied to W_Q alone does not."""
    model, tokens = tiny
    m64 = float64_copy(model)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        base = m64(tokens)
    with S.transformed(m64):
        for layer in range(2):
            S.mlp_permutation_(m64, layer, torch.randperm(128, generator=generator))
        with torch.no_grad():
            mlp_diff = (m64(tokens) - base).abs().max().item()
    A = torch.eye(8, dtype=torch.float64) + 0.3 * torch.randn(8, 8, generator=generator, dtype=torch.float64)
    with S.transformed(m64):
        S.qk_gauge_(m64, 0, 1, A)
        S.ov_gauge_(m64, 1, 2, A)
        with torch.no_grad():
            gauge_diff = (m64(tokens) - base).abs().max().item()
    with S.transformed(m64), torch.no_grad():
        m64.blocks[0].attn.W_Q[1] = m64.blocks[0].attn.W_Q[1] @ A
        broken = (m64(tokens) - base).abs().max().item()
    measure("4b.mlp_permutation.max_abs_logit_diff", mlp_diff, "≤ 1e-10")
    measure("4b.gauge.max_abs_logit_diff", gauge_diff, "≤ 1e-10")
    assert mlp_diff < 1e-10 and gauge_diff < 1e-10 and broken > 1e-6


def test_residual_stream_rotation_fixing_ones_is_a_symmetry(tiny, measure):
    """4B.1 a continuous symmetry of the folded model: rotating the residual basis by an orthogonal R
    with R·1 = 1 (writers ·R, readers Rᵀ·) leaves the logits unchanged (float64, 1e-10), because
    LayerNorm's centring and scaling commute with R; a rotation that moves 1 breaks it."""
    model, tokens = tiny
    m64 = float64_copy(model)
    generator = torch.Generator().manual_seed(5)
    R = S.random_orthogonal_fixing_ones(32, generator)
    ones = torch.ones(32, dtype=torch.float64)
    assert torch.allclose(R @ ones, ones, atol=1e-12) and torch.allclose(R.T @ R, torch.eye(32, dtype=torch.float64), atol=1e-12)
    with torch.no_grad():
        base = m64(tokens)
    with S.transformed(m64):
        S.residual_rotation_(m64, R)
        with torch.no_grad():
            diff = (m64(tokens) - base).abs().max().item()
    Q, _ = torch.linalg.qr(torch.randn(32, 32, generator=generator, dtype=torch.float64))
    with pytest.raises(ValueError, match="fix the all-ones vector"):
        S.residual_rotation_(m64, Q)
    with S.transformed(m64):
        S.residual_rotation_(m64, Q, check=False)
        with torch.no_grad():
            broken = (m64(tokens) - base).abs().max().item()
    measure("4b.residual_rotation.max_abs_logit_diff", diff, "≤ 1e-10")
    assert diff < 1e-10 and broken > 1e-6


def test_symmetry_group_size_of_gpt2_small(measure):
    """4B.1 the group's size from GPT-2 small's own shapes: (12!)^12 head relabellings, log10 = 104.16
    (exact integer arithmetic), (3072!)^12 MLP relabellings (log10 by lnΓ, checked against log10 of the
    exact integer 3072!), and 12·12·2·64² + 767·766/2 = 1,473,409 continuous dimensions."""
    g = S.group_size(gpt2_small_shapes())
    assert (g["n_layers"], g["n_heads"], g["d_mlp"], g["d_head"]) == (12, 12, 3072, 64)
    exact = math.factorial(12) ** 12
    assert int(g["head_group_order"]) == exact
    assert g["log10_head_group"] == pytest.approx(math.log10(exact), rel=1e-12)
    assert g["log10_mlp_group"] == pytest.approx(12 * math.log10(math.factorial(3072)), rel=1e-12)
    assert g["continuous_dim_total"] == 12 * 12 * 2 * 64 ** 2 + 767 * 766 // 2 == 1_473_409
    measure("4b.gpt2.log10_head_group", g["log10_head_group"])
    measure("4b.gpt2.log10_mlp_group", g["log10_mlp_group"])
    measure("4b.gpt2.continuous_dim", g["continuous_dim_total"])


def test_symmetry_group_size_with_grouped_query_attention():
    """4B.1 for SmolLM2's grouped-query attention the head group per layer is S_3 ≀ S_3, of order
    3!·(3!)³ = 1296 (not 9! = 362880); its rotary QK gauge keeps d_head dimensions per key/value group,
    its RMSNorm stream the whole O(576)."""
    from .models import load

    g = S.group_size(load("smollm2"))
    assert g["head_group_order_per_layer"] == math.factorial(3) * math.factorial(3) ** 3 == 1296
    assert g["log10_head_group"] == pytest.approx(30 * math.log10(1296), rel=1e-12)
    assert g["continuous_dim_per_kv_group"] == 64 + 64 ** 2
    assert g["continuous_dim_residual_rotation"] == 576 * 575 // 2


def test_rms_stream_rotation_any_orthogonal(measure):
    """4B.1 with RMSNorm (a Llama-style model: rotary, gated MLP, grouped-query attention, folded norms,
    TransformerLens's own initialisation) every orthogonal R of the residual stream is a symmetry
    (float64, 1e-10), whether or not it fixes the all-ones vector."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(d_model=24, d_head=8, n_heads=3, n_key_value_heads=1, d_mlp=48, n_layers=2,
                                  n_ctx=32, d_vocab=101, act_fn="silu", normalization_type="RMSPre",
                                  positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True,
                                  final_rms=True, dtype=torch.float64, seed=3, device="cpu")
    model = HookedTransformer(cfg).eval()
    tokens = torch.randint(0, 101, (2, 10), generator=torch.Generator().manual_seed(0))
    Q, _ = torch.linalg.qr(torch.randn(24, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    with torch.no_grad():
        base = model(tokens)
    with S.transformed(model):
        S.residual_rotation_(model, Q)
        with torch.no_grad():
            diff = (model(tokens) - base).abs().max().item()
    measure("4b.rms_rotation.max_abs_logit_diff", diff, "≤ 1e-10")
    assert diff < 1e-10
    with torch.no_grad():
        assert torch.equal(model(tokens), base)                    # restored bit for bit


def test_committed_results_are_current(committed):
    """Report: the committed results.json (part4b) holds this code's group sizes for GPT-2 small
    (recomputed from the architecture) and logit changes within the stated tolerances."""
    results = committed["part4b"]
    sizes = S.group_size(gpt2_small_shapes())
    # integers (and single, correctly rounded divisions) are exact; the log10 orders go through lnΓ and log10,
    # a few ulp each in the platform's libm
    logs = {k: v for k, v in sizes.items() if k.startswith("log10_")}
    assert {k: results["group_gpt2_small"][k] for k in sizes if k not in logs} == {k: v for k, v in sizes.items() if k not in logs}
    assert_reproduces(logs, {k: results["group_gpt2_small"][k] for k in logs},
                      float_ops(10, why="lnΓ, log10 and a product: a few libm ulp each"), name="group_gpt2_small")
    assert results["random"]["heads"]["max_abs_logit_diff"] <= 1e-5
    assert results["trained"]["heads"]["max_abs_logit_diff"] <= 1e-4 * results["trained"]["max_abs_logit"]
