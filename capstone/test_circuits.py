"""The gate of Part 3A (locating the sycophancy circuit).

References: TransformerLens's ``ActivationCache.apply_ln_to_stack`` (the frozen-scale final norm),
``transformer_lens.patching.get_act_patch_resid_pre`` and ``get_act_patch_attn_head_out_all_pos``
on the same inputs. The identities are checked on two small random models that cover both
architectures: GPT-2-shaped (LayerNorm, learned positions, MHA) and SmolLM2-shaped (RMSNorm, rotary,
grouped-query attention, gated SiLU MLP); the attribution identity also on SmolLM2 itself. The
localised circuit is SmolLM2-135M-Instruct's, from the committed results, with one patch recomputed.
"""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens import patching as tl_patching

from checks import assert_parity
from checks.committed import Tolerance, assert_reproduces
from checks.models import random_gpt2

from . import circuits as C
from . import sycophancy as S
from .test_sycophancy import SMOL_DIFF_TOL  # SmolLM2's float32 error on a logit difference, derived there



def tiny_llama(fold: bool = True):
    """A 2-layer SmolLM2-shaped model with random weights (RMSNorm, rotary, 4 query / 2 KV heads)."""
    cfg = HookedTransformerConfig(d_model=64, d_head=16, n_heads=4, n_key_value_heads=2, d_mlp=128, n_layers=2,
                                  n_ctx=64, d_vocab=500, act_fn="silu", normalization_type="RMS", final_rms=True,
                                  positional_embedding_type="rotary", rotary_dim=16, gated_mlp=True, seed=0,
                                  original_architecture="LlamaForCausalLM", device="cpu")
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():  # random norm weights and biases so that folding is exercised
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if name.endswith(".w") or ".b_" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    if not fold:
        return model
    folded = HookedTransformer(cfg).eval()  # processed like SmolLM2's loader: norm weights folded in
    folded.load_and_process_state_dict(model.state_dict(), fold_ln=True)
    return folded


def tiny_gpt2():
    return random_gpt2(n_layers=2, d_model=64, n_heads=4, seed=4, tokenizer=False)[0].eval()


MODELS = {"gpt2-shaped": tiny_gpt2, "smollm2-shaped": tiny_llama,
          "smollm2-shaped-unfolded": lambda: tiny_llama(fold=False)}


def pair_tokens(model, seed=0, pos=12):
    """A clean/corrupted pair of equal length differing at three positions (like the two forms)."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, model.cfg.d_vocab, (pos,), generator=g)
    corrupted = clean.clone()
    corrupted[[3, 4, 8]] = torch.randint(1, model.cfg.d_vocab, (3,), generator=g)
    return clean, corrupted


@pytest.fixture(scope="module")
def smol():
    from .models import load

    return load("smollm2")


@pytest.fixture(scope="module")
def results(committed):
    return committed["part3a"]


def fraction_tolerance(frac, d_op, d_ne) -> Tolerance:
    """(patched − Δ_op)/(Δ_ne − Δ_op) of three SmolLM2 logit differences, each within SMOL_DIFF_TOL."""
    err = SMOL_DIFF_TOL.abs
    return Tolerance(abs=2 * err * (1 + abs(frac)) / abs(d_ne - d_op),
                     reason="a ratio of SmolLM2 logit differences, each within twice a logit's float32 error")


@pytest.mark.parametrize("arch", MODELS)
def test_attribution_sums_to_logit_difference(arch, measure):
    """3A.1: embed + Σ_l (attn_l + mlp_l) + unembedding bias = Δ exactly (atol 1e-4 on logits of
    order 1-10, float32), with the final norm's scale frozen at its cached value."""
    model = MODELS[arch]()
    tokens = torch.stack([pair_tokens(model, s)[1] for s in range(3)])
    syc, tru = torch.tensor([5, 6, 7]), torch.tensor([9, 10, 11])
    a = C.component_attribution(model, tokens, syc, tru)
    total = a["embed"] + a["attn"].sum(0) + a["mlp"].sum(0) + a["bias"]
    measure.parity(assert_parity(total, a["logit_diff"], atol=1e-4, name=f"3a.attribution_sum.{arch}"))
    # our frozen-scale norm is TransformerLens's apply_ln_to_stack (which leaves out any unfolded weight)
    ref = a["cache"].apply_ln_to_stack(a["stack"], layer=-1, pos_slice=-1)
    ours = C.final_norm(model, a["stack"], a["cache"]["ln_final.hook_scale"][:, -1])
    assert_parity(ours, ref, atol=1e-6)


@pytest.mark.parametrize("arch", MODELS)
def test_heads_sum_to_their_attention_block(arch):
    """3A.1/3A.3: the per-head direct contributions plus b_O's share add up to each layer's
    attention contribution (atol 1e-5)."""
    model = MODELS[arch]()
    tokens = torch.stack([pair_tokens(model, s)[1] for s in range(2)])
    syc, tru = torch.tensor([5, 6]), torch.tensor([9, 10])
    a = C.component_attribution(model, tokens, syc, tru)
    heads = C.head_attribution(model, a["cache"], syc, tru)
    scale = a["cache"]["ln_final.hook_scale"][:, -1]
    direction, _ = C.readout(model, syc, tru)
    for l in range(model.cfg.n_layers):
        b_O = model.blocks[l].attn.b_O.expand(len(tokens), -1)[None]
        bias_share = (C.final_norm(model, b_O, scale)[0] * direction).sum(-1)
        assert_parity(heads[l].sum(0) + bias_share, a["attn"][l], atol=1e-5)


@pytest.mark.parametrize("arch", MODELS)
def test_resid_patching_matches_transformer_lens(arch, measure):
    """3A.2: patching resid_pre at every (layer, position) of the corrupted run with the clean run's
    value gives the same metric as transformer_lens.patching.get_act_patch_resid_pre (atol 1e-5)."""
    model = MODELS[arch]()
    clean, corrupted = pair_tokens(model)
    _, cache = model.run_with_cache(clean[None])
    metric = C.logit_diff_metric(5, 9)
    ours = C.patch_resid_pre(model, corrupted, cache, metric)
    ref = tl_patching.get_act_patch_resid_pre(model, corrupted[None], cache, lambda logits: metric(logits).mean())
    measure.parity(assert_parity(ours, ref, atol=1e-5, name=f"3a.resid_patch_vs_tl.{arch}"))
    # positions before the first difference carry identical residuals: patching them changes nothing
    with torch.no_grad():
        base = metric(model(corrupted[None]))[0]
    assert torch.allclose(ours[:, :3], base.expand(model.cfg.n_layers, 3), atol=1e-5)
    assert (ours[:, 3:] - base).abs().max() > 1e-3


@pytest.mark.parametrize("arch", MODELS)
def test_head_patching_matches_transformer_lens(arch, measure):
    """3A.3: patching one head's z (all positions) gives the same metric as
    transformer_lens.patching.get_act_patch_attn_head_out_all_pos (atol 1e-5)."""
    model = MODELS[arch]()
    clean, corrupted = pair_tokens(model, seed=3)
    _, cache = model.run_with_cache(clean[None])
    metric = C.logit_diff_metric(7, 2)
    ours = C.patch_heads(model, corrupted, cache, metric)
    ref = tl_patching.get_act_patch_attn_head_out_all_pos(model, corrupted[None], cache, lambda logits: metric(logits).mean())
    measure.parity(assert_parity(ours, ref, atol=1e-5, name=f"3a.head_patch_vs_tl.{arch}"))


@pytest.mark.asset("smollm2-135m-instruct")
def test_smollm2_attribution_identity_on_a_pair(smol, measure):
    """3A.1 on SmolLM2 itself (30 layers, RMSNorm folded into W_U): the attribution of the opinion
    prompt of one pair sums to its Δ (atol 2e-3: 61 float32 terms of size up to ~10)."""
    pair = S.load_pairs()[0]
    e = S.encode_pair(smol, pair)
    a = C.component_attribution(smol, torch.tensor([e.opinion]), torch.tensor([e.sycophantic_id]),
                                torch.tensor([e.truthful_id]))
    total = a["embed"] + a["attn"].sum(0) + a["mlp"].sum(0) + a["bias"]
    measure.parity(assert_parity(total, a["logit_diff"], atol=2e-3, name="3a.smollm2_attribution_sum"))


@pytest.mark.asset("smollm2-135m-instruct")
def test_committed_circuit_is_consistent_and_current(smol, results, measure):
    """3A (SmolLM2): the committed attribution summed to Δ; the critical layer is the first whose
    answer-position patch removes ≥ half the sycophantic shift; the last layer's answer-position
    patch removes all of it (≈ 1: nothing after it can change the logits); one patch recomputed now
    matches the committed value (within SmolLM2's float32 error on the three logit differences it is made
    of, fraction_tolerance)."""
    assert results["attribution_max_sum_error"] < 2e-3
    mean = torch.tensor(results["final_position_fraction_mean"])
    crit = results["critical_layer"]
    assert mean[crit] >= 0.5 and (mean[:crit] < 0.5).all()
    assert mean[-1] == pytest.approx(1.0, abs=0.05)
    pairs = {p.id: p for p in S.load_pairs()}
    pair = pairs[results["patch_pairs"][0]]
    e = S.encode_pair(smol, pair)
    op, ne = torch.tensor(e.opinion), torch.tensor(e.neutral)
    _, cache = smol.run_with_cache(ne[None], names_filter=lambda n: n == f"blocks.{crit}.hook_resid_pre")
    with torch.no_grad():
        d_op, d_ne = C.logit_diff_metric(e.sycophantic_id, e.truthful_id)(smol(torch.stack([op, ne])))
    patched = C.patch_resid_pre(smol, op, cache, C.logit_diff_metric(e.sycophantic_id, e.truthful_id),
                                layers=[crit], positions=[len(op) - 1])[0, 0]
    frac = ((patched - d_op) / (d_ne - d_op)).item()
    measure("3a.patch_vs_committed", assert_reproduces(frac, results["final_position_fractions"][0][crit],
                                                       fraction_tolerance(frac, d_op.item(), d_ne.item()),
                                                       name="final_position_fractions[0][crit]"),
            "≤ 1 (fraction of the tolerance)")
    measure("3a.critical_layer", crit)
    measure("3a.critical_fraction_mean", results["critical_fraction"])
    measure("3a.top3_layers_by_shift", ",".join(map(str, results["top3_layers_by_shift"])))
    measure("3a.top_head_patching", "L{}H{} ({:.2f})".format(*results["top_heads_patching"][0]))


@pytest.mark.slow
@pytest.mark.asset("smollm2-135m-instruct")
def test_final_position_patching_reproduces_committed_curve(smol, results):
    """3A.2 (slow, ~3 min): patching the answer position at every layer, for every committed patch
    pair, reproduces the committed fractions (within SmolLM2's float32 error, fraction_tolerance)."""
    pairs = {p.id: p for p in S.load_pairs()}
    for pid, recorded in zip(results["patch_pairs"], results["final_position_fractions"]):
        e = S.encode_pair(smol, pairs[pid])
        op, ne = torch.tensor(e.opinion), torch.tensor(e.neutral)
        _, cache = smol.run_with_cache(ne[None], names_filter=lambda n: n.endswith("resid_pre"))
        metric = C.logit_diff_metric(e.sycophantic_id, e.truthful_id)
        with torch.no_grad():
            d_op, d_ne = metric(smol(torch.stack([op, ne])))
        patched = C.patch_resid_pre(smol, op, cache, metric, positions=[len(op) - 1])[:, 0]
        fractions = (patched - d_op) / (d_ne - d_op)
        tol = fraction_tolerance(fractions.abs().max().item(), d_op.item(), d_ne.item())
        assert_reproduces(fractions, torch.tensor(recorded), tol, name=f"final_position_fractions.{pid}")
