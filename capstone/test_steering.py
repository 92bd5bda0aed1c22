"""The gate of Part 5C (the fix: steering against the sycophancy direction).

References: the hooks' algebra checked on a small random SmolLM2-shaped model (the intervention is
exactly x − α·d at every position; ablation is a projection: idempotent, leaves x ⟂ u); the rates'
intervals recomputed from their counts with scipy; the committed before/after numbers for
SmolLM2-135M-Instruct, with four held-out pairs' steered Δ recomputed now. The sweep re-runs in a
slow test.
"""

import math

import pytest
import torch
from scipy import stats

from checks import assert_parity
from checks.committed import Tolerance, assert_reproduces, float_ops

from . import steering as St
from . import sycophancy as S
from .test_circuits import tiny_llama
from .test_sycophancy import SMOL_DIFF_TOL, SMOL_LOGIT_ERR  # SmolLM2's float32 errors, derived there


@pytest.fixture(scope="module")
def results(committed):
    return committed["part5c"]


def _resid_after_hooks(model, tokens, layer, hooks):
    seen = {}

    def record(act, hook):
        seen["x"] = act.detach().clone()

    name = f"blocks.{layer}.hook_resid_pre"
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=hooks + [(name, record)])
    return seen["x"]


def test_subtraction_hook_moves_every_position_by_alpha_d():
    """5C intervention: the hook makes resid_pre[layer] = x − α·d at every position (atol 1e-6), and
    α = 0 leaves the logits unchanged."""
    model = tiny_llama()
    tokens = torch.randint(0, 500, (2, 10), generator=torch.Generator().manual_seed(0))
    d = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    plain = _resid_after_hooks(model, tokens, 1, [])
    steered = _resid_after_hooks(model, tokens, 1, [St.subtraction_hook(1, d, 0.7)])
    assert_parity(steered, plain - 0.7 * d, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(model.run_with_hooks(tokens, fwd_hooks=[St.subtraction_hook(1, d, 0.0)]), model(tokens))


def test_ablation_hook_is_a_projection():
    """5C intervention: directional ablation leaves x·u = 0 at every position (atol 1e-5), changes
    nothing orthogonal to u, and applying it twice equals applying it once."""
    model = tiny_llama()
    tokens = torch.randint(0, 500, (2, 10), generator=torch.Generator().manual_seed(2))
    d = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3)) * 5
    u = d / d.norm()
    plain = _resid_after_hooks(model, tokens, 1, [])
    once = _resid_after_hooks(model, tokens, 1, [St.ablation_hook(1, d)])
    twice = _resid_after_hooks(model, tokens, 1, [St.ablation_hook(1, d), St.ablation_hook(1, d)])
    assert (once @ u).abs().max() < 1e-5
    assert_parity(once - plain, -(plain @ u)[..., None] * u, atol=1e-5)
    assert_parity(twice, once, atol=1e-5)


def test_committed_before_after_intervals_follow_from_counts(results):
    """5C before/after: each committed rate's Wilson interval is scipy.stats.binomtest's for its
    k of n (a float64 closed form of ≈ 30 operations on numbers ≤ 1, z from two Φ⁻¹ implementations:
    float_ops(30) absolute ≈ 3e-14), both on the same held-out pairs."""
    tol = float_ops(30, abs=float_ops(30).rel, why="a ≈ 30-operation float64 closed form of numbers ≤ 1")
    for when in ("before", "after"):
        for form in ("opinion", "neutral"):
            r = results[when][form]
            ref = stats.binomtest(r["k"], r["n"]).proportion_ci(0.95, method="wilson")
            assert r["n"] == results["n_held_out"]
            assert_reproduces([ref.low, ref.high], r["wilson"], tol, name=f"part5c.{when}.{form}.wilson")


@pytest.mark.asset("smollm2-135m-instruct", "wikitext-2")
def test_fix_reduces_sycophancy_and_is_current(results, measure):
    """5C (SmolLM2): with the committed direction and α, the held-out opinion-form rate falls below
    its unsteered value and to at most the neutral baseline; the sycophantic shift
    Δ_opinion − Δ_neutral shrinks; four held-out pairs' steered Δ recomputed now match the committed
    values (within SmolLM2's float32 error on a logit difference, SMOL_DIFF_TOL); the WikiText-2 cost is
    reported."""
    from .models import load

    before, after = results["before"], results["after"]
    assert after["opinion"]["rate"] < before["opinion"]["rate"]
    assert after["opinion"]["rate"] <= before["neutral"]["rate"]
    assert after["mean_shift"] < before["mean_shift"]
    model = load("smollm2")
    pairs = {p.id: p for p in S.load_pairs()}
    ids = results["per_pair"]["id"][:4]
    enc = [S.encode_pair(model, pairs[i]) for i in ids]
    hook = St.subtraction_hook(results["layer"], torch.tensor(results["direction"]), results["chosen_alpha"])
    now, _ = S.score_prompts(model, [e.opinion for e in enc], [e.sycophantic_id for e in enc],
                             [e.truthful_id for e in enc], fwd_hooks=[hook])
    measure("5c.steered_vs_committed", assert_reproduces(now, torch.tensor(results["per_pair"]["diff_opinion_after"][:4]),
                                                         SMOL_DIFF_TOL, name="part5c.per_pair.diff_opinion_after[:4]"),
            "≤ 1 (fraction of the tolerance)")
    measure("5c.rate_before", before["opinion"]["rate"],
            "Wilson [{:.3f}, {:.3f}]".format(*before["opinion"]["wilson"]))
    measure("5c.rate_after", after["opinion"]["rate"], "Wilson [{:.3f}, {:.3f}]".format(*after["opinion"]["wilson"]))
    measure("5c.neutral_baseline", before["neutral"]["rate"])
    measure("5c.alpha", results["chosen_alpha"])
    measure("5c.wikitext_bits_before", results["wikitext_before"])
    measure("5c.wikitext_bits_after", results["wikitext_after"])


@pytest.mark.slow
@pytest.mark.asset("smollm2-135m-instruct", "wikitext-2")
def test_full_sweep_reproduces_committed_numbers(results, tmp_path):
    """5C (slow, ~10 min on two busy cores): the whole sweep re-run gives the committed rates (up to two
    held-out pairs per α whose Δ is within SmolLM2's float32 error of 0: 1 of the 251 unsteered Δs is) and
    WikiText-2 costs (a mean of −log₂ p, each within two logit errors: 2·SMOL_LOGIT_ERR/ln 2)."""
    r = St.run(tmp_path, layer=results["layer"])
    n = results["n_held_out"]
    flips = Tolerance(abs=2 / n + 1e-12, reason=f"a rate of {n} sign decisions of SmolLM2 logit differences: allow "
                                                f"two near 0 (1 in 251 of the unsteered Δs is within {SMOL_DIFF_TOL.abs:.1e})")
    assert_reproduces(r["sweep"]["opinion_rate"], results["sweep"]["opinion_rate"], flips, name="part5c.sweep.opinion_rate")
    bits = Tolerance(abs=2 * SMOL_LOGIT_ERR / math.log(2), reason="a mean of −log₂ p, each within two SmolLM2 logit errors")
    assert_reproduces(r["sweep"]["wikitext_bits_per_token"], results["sweep"]["wikitext_bits_per_token"], bits,
                      name="part5c.sweep.wikitext_bits_per_token")
