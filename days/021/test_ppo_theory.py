"""The gate of day 21: PPO theory, the clipped objective, GAE and the approximate KL (ARENA 2.3 PPO).

Spec: https://learn.arena.education/chapter2_rl/03_ppo/ and Schulman et al. (2017, PPO; 2016, GAE).
References: the paper's piecewise form of L^CLIP, written out by hand; numpy for ARENA's formula
on random minibatches; torch.autograd and central differences for where the gradient flows;
torch.distributions (kl_divergence, Categorical) for the exact KL and the entropy;
torch.nn.functional.mse_loss for the value loss; a plain Python reverse loop, day 20's GAE and the
GAE paper's λ-weighted average of n-step advantages for the advantage estimates.
"""

import importlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, kl_divergence

from checks import assert_parity, grad_check
from checks.committed import assert_reproduces, float_ops, iterated

from . import ppo_theory as P

a2c = importlib.import_module("days.020.a2c")
pytestmark = pytest.mark.usefixtures("one_thread")
HERE = Path(__file__).parent
F64 = torch.float64


def _t(x, dtype=F64):
    return torch.tensor(x, dtype=dtype)


# ---------------------------------------------------------------- the clipped objective

CLIP_CASES = [  # (r, Â, ε, L^CLIP by the paper's cases)
    (1.5, 2.0, 0.2, 1.2 * 2.0),    # Â > 0, r > 1 + ε: clipped, no credit beyond 1 + ε
    (1.1, 2.0, 0.2, 1.1 * 2.0),    # Â > 0, inside the range
    (0.5, 2.0, 0.2, 0.5 * 2.0),    # Â > 0, r < 1 − ε: NOT clipped (min keeps the worse r·Â)
    (0.5, -2.0, 0.2, 0.8 * -2.0),  # Â < 0, r < 1 − ε: clipped, no credit below 1 − ε
    (0.9, -2.0, 0.2, 0.9 * -2.0),  # Â < 0, inside the range
    (1.5, -2.0, 0.2, 1.5 * -2.0),  # Â < 0, r > 1 + ε: NOT clipped (the pessimistic branch)
    (3.0, 0.0, 0.2, 0.0),          # Â = 0: nothing to gain or lose
    (1.3, 1.0, 0.1, 1.1),          # another ε
]


@pytest.mark.parametrize("r, adv, eps, expected", CLIP_CASES, ids=[f"r={c[0]},A={c[1]},eps={c[2]}" for c in CLIP_CASES])
def test_clipped_objective_hand_built_cases(r, adv, eps, expected):
    """L^CLIP equals the paper's cases: min(r, 1 + ε)·Â for Â ≥ 0 and max(r, 1 − ε)·Â for Â < 0
    (one sample, no normalisation; exact up to the rounding of exp(log r))."""
    value = P.clipped_surrogate(_t([math.log(r)]), _t([0.0]), _t([adv]), eps, normalize=False)
    assert value.item() == pytest.approx(expected, abs=1e-14)


def test_clipped_objective_matches_arenas_formula(measure):
    """On a random minibatch, with log-probabilities from torch.distributions.Categorical and
    normalised advantages, L^CLIP equals mean(min(r·Â, clip(r, 1 − ε, 1 + ε)·Â)) computed in numpy
    with Â standardised by its unbiased std (float64, 1e-12)."""
    g = torch.Generator().manual_seed(0)
    old_logits, new_logits = torch.randn(256, 5, generator=g, dtype=F64), torch.randn(256, 5, generator=g, dtype=F64)
    actions = torch.randint(0, 5, (256,), generator=g)
    adv = 3 + 2 * torch.randn(256, generator=g, dtype=F64)
    new_lp, old_lp = Categorical(logits=new_logits).log_prob(actions), Categorical(logits=old_logits).log_prob(actions)
    ours = P.clipped_surrogate(new_lp, old_lp, adv, 0.2)
    a = adv.numpy()
    a = (a - a.mean()) / (a.std(ddof=1) + 1e-8)
    ratio = np.exp(new_lp.numpy() - old_lp.numpy())
    expected = np.minimum(ratio * a, np.clip(ratio, 0.8, 1.2) * a).mean()
    report = assert_parity(ours, expected, atol=1e-12, name="clipped_surrogate")
    measure("clipped_surrogate_vs_numpy.max_abs_err", report.max_abs_err, "≤ 1e-12")
    assert 0.05 < ((ratio < 0.8) | (ratio > 1.2)).mean() < 0.95  # both branches are exercised


def test_clipped_gradient_vanishes_where_clipping_binds(measure):
    """∂L^CLIP/∂log π_θ(a_t) = r_t Â_t / N where the min picks r·Â, and exactly 0 where it picks the
    clipped term (Â > 0 with r > 1 + ε, Â < 0 with r < 1 − ε); the rest is checked by central
    differences (points kept 0.05 away from the kinks r = 1 ± ε)."""
    g = torch.Generator().manual_seed(1)
    logratio = torch.log(torch.rand(64, generator=g, dtype=F64) * 1.2 + 0.4)
    logratio = logratio[((logratio.exp() - 0.8).abs() > 0.05) & ((logratio.exp() - 1.2).abs() > 0.05)]
    adv = torch.randn(logratio.shape[0], generator=g, dtype=F64)
    new_lp = logratio.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(P.clipped_surrogate(new_lp, torch.zeros_like(new_lp), adv, 0.2, normalize=False), new_lp)
    r = logratio.exp()
    clipped = ((adv > 0) & (r > 1.2)) | ((adv < 0) & (r < 0.8))
    assert clipped.any() and (~clipped).any()
    assert torch.all(grad[clipped] == 0)
    assert_parity(grad[~clipped], (r * adv)[~clipped] / len(r), atol=1e-15)
    report = grad_check(lambda lp: P.clipped_surrogate(lp, torch.zeros_like(lp), adv, 0.2, normalize=False),
                        [logratio], names=["new_logprobs"])
    measure.grad(report, "clipped_surrogate")


def test_old_logprobs_and_advantages_are_constants():
    """The old policy's log-probabilities and the advantages receive no gradient: only π_θ is optimised."""
    new_lp = torch.randn(8, dtype=F64, requires_grad=True)
    old_lp = torch.randn(8, dtype=F64, requires_grad=True)
    adv = torch.randn(8, dtype=F64, requires_grad=True)
    P.clipped_surrogate(new_lp, old_lp, adv, 0.2).backward()
    assert new_lp.grad is not None and old_lp.grad is None and adv.grad is None


def test_value_loss_and_entropy_bonus():
    """Value loss = c_v·F.mse_loss(V, R̂) with no gradient into R̂; entropy bonus = c_e·mean of
    Categorical(logits).entropy() (float64, 1e-14)."""
    g = torch.Generator().manual_seed(2)
    values = torch.randn(32, generator=g, dtype=F64, requires_grad=True)
    returns = torch.randn(32, generator=g, dtype=F64, requires_grad=True)
    loss = P.value_loss(values, returns, 0.25)
    assert loss.item() == pytest.approx(0.25 * F.mse_loss(values, returns).item(), abs=1e-14)
    loss.backward()
    assert returns.grad is None and values.grad is not None
    logits = torch.randn(32, 3, generator=g, dtype=F64)
    assert P.entropy_bonus(logits, 0.01).item() == pytest.approx(
        0.01 * Categorical(logits=logits).entropy().mean().item(), abs=1e-14)


# ---------------------------------------------------------------- the approximate KL


def test_approx_kl_hand_values_and_sign():
    """k3 = (r − 1) − log r: 0 at r = 1, 1 − log 2 at r = 2, log 2 − ½ at r = ½, e − 2 at log r = 1;
    and ≥ 0 for every ratio from 1e-6 to 1e6 (log r ≤ r − 1)."""
    cases = [(0.0, 0.0), (math.log(2), 1 - math.log(2)), (-math.log(2), math.log(2) - 0.5), (1.0, math.e - 2)]
    for logratio, expected in cases:
        assert P.approx_kl(_t([logratio]), _t([0.0])).item() == pytest.approx(expected, abs=1e-15)
    grid = torch.linspace(math.log(1e-6), math.log(1e6), 10_001, dtype=F64)
    assert (P.kl_estimators(grid)["k3"] >= 0).all()


def test_kl_estimators_expectations_are_exact(measure):
    """Averaged over π_old exactly (every action weighted by its probability, no sampling), k1 and
    k3 give torch.distributions.kl_divergence(π_old, π_new) (float64, 1e-12) for 50 random pairs of
    categorical distributions; k2 does not (it is biased: off by more than 1e-3 for large changes)."""
    g = torch.Generator().manual_seed(3)
    worst, k2_gap = 0.0, 0.0
    for _ in range(50):
        old, new = Categorical(logits=torch.randn(6, generator=g, dtype=F64)), Categorical(logits=2 * torch.randn(6, generator=g, dtype=F64))
        exact = kl_divergence(old, new)
        logratio = new.logits - old.logits  # log-probabilities of every action
        est = P.kl_estimators(logratio)
        for name in ("k1", "k3"):
            worst = max(worst, abs((old.probs * est[name]).sum().item() - exact.item()))
        k2_gap = max(k2_gap, abs((old.probs * est["k2"]).sum().item() - exact.item()))
    measure("kl_expectation_vs_torch.max_abs_err", worst, "≤ 1e-12")
    measure("k2_expectation_gap.max", k2_gap)
    assert worst < 1e-12 and k2_gap > 1e-3


def test_approx_kl_is_unbiased_and_less_noisy_than_minus_log_ratio(measure):
    """Sampled from π_old (100 000 actions, 10 categories, a small policy change), approx_kl's mean is
    within 5 standard errors of the exact KL, and one k3 sample's std is over 10× smaller than k1's
    (the reason PPO implementations log k3)."""
    g = torch.Generator().manual_seed(4)
    z, u = torch.randn(10, generator=g, dtype=F64), torch.randn(10, generator=g, dtype=F64)
    old_lp, new_lp = torch.log_softmax(z, -1), torch.log_softmax(z + 0.1 * u, -1)
    exact = kl_divergence(Categorical(logits=z), Categorical(logits=z + 0.1 * u)).item()
    actions = torch.multinomial(old_lp.exp(), 100_000, replacement=True, generator=g)
    est = P.kl_estimators(new_lp[actions] - old_lp[actions])
    estimate = P.approx_kl(new_lp[actions], old_lp[actions]).item()
    z_score = abs(estimate - exact) / (est["k3"].std().item() / math.sqrt(len(actions)))
    ratio = est["k1"].std().item() / est["k3"].std().item()
    measure("approx_kl.z_score", z_score, "< 5")
    measure("std_k1_over_std_k3", ratio, "> 10")
    assert z_score < 5 and ratio > 10


# ---------------------------------------------------------------- GAE


def test_gae_hand_built_rollout():
    """Rewards (1, 0, 2), V(s_t) = (0.5, 1, 1), V(s_t+1) = (1, 3, 0.5), γ = λ = 0.5, with step 1 cut by a
    time limit: δ = (1, 0.5, 1.25) (the truncated step keeps its bootstrap 0.5·3), the sum stops at
    step 1, so Â = (1 + 0.25·0.5, 0.5, 1.25) = (1.125, 0.5, 1.25). Had step 1 terminated instead,
    δ₁ = −1 and Â = (0.75, −1, 1.25)."""
    r, v, nv = _t([1.0, 0.0, 2.0]), _t([0.5, 1.0, 1.0]), _t([1.0, 3.0, 0.5])
    ends = torch.tensor([False, True, False])
    never = torch.zeros(3, dtype=torch.bool)
    assert P.gae(r, v, nv, never, ends, 0.5, 0.5).tolist() == [1.125, 0.5, 1.25]
    assert P.gae(r, v, nv, ends, ends, 0.5, 0.5).tolist() == [0.75, -1.0, 1.25]


def _reverse_loop(r, v, nv, terminated, ends, gamma, lam):
    """The plain recursion Â_t = δ_t + γλ(1 − end_t)Â_{t+1}, in Python floats, one environment at a time."""
    T, n = len(r), len(r[0])
    out = [[0.0] * n for _ in range(T)]
    for e in range(n):
        running = 0.0
        for t in reversed(range(T)):
            if ends[t][e]:
                running = 0.0
            delta = r[t][e] + gamma * (0.0 if terminated[t][e] else nv[t][e]) - v[t][e]
            running = delta + gamma * lam * running
            out[t][e] = running
    return out


@pytest.mark.parametrize("gamma, lam", [(0.99, 0.95), (0.9, 0.0), (0.97, 1.0)])
def test_gae_operator_matches_a_plain_reverse_loop(gamma, lam, measure):
    """Â = M δ equals the reverse recursion written with Python floats, and day 20's loop, on 4
    environments × 64 steps with random episode ends (half of them terminations) (float64, 1e-12)."""
    rng = np.random.default_rng(5)
    T, n = 64, 4
    r, v, nv = rng.normal(size=(T, n)), rng.normal(size=(T, n)), rng.normal(size=(T, n))
    ends = rng.random((T, n)) < 0.1
    terminated = ends & (rng.random((T, n)) < 0.5)
    expected = _reverse_loop(r.tolist(), v.tolist(), nv.tolist(), terminated.tolist(), ends.tolist(), gamma, lam)
    args = (_t(r), _t(v), _t(nv), torch.tensor(terminated), torch.tensor(ends), gamma, lam)
    report = assert_parity(P.gae(*args), expected, atol=1e-12, name="gae")
    assert_parity(P.gae(*args), a2c.gae(*args), atol=1e-12)
    measure(f"gae_vs_reverse_loop.lam_{lam}.max_abs_err", report.max_abs_err, "≤ 1e-12")


def test_gae_is_the_lambda_weighted_average_of_n_step_advantages(measure):
    """The GAE paper's definition, Â = (1 − λ)Σ_n λ^(n−1) Â^(n) with n-step estimates written from the
    rewards, equals the operator form for λ ∈ {0, 0.5, 0.9, 1} on a 40-step rollout with ends; and
    Â^(1) = δ, Â^(∞) = Monte Carlo return − V (float64, 1e-12)."""
    g = torch.Generator().manual_seed(6)
    T, gamma = 40, 0.95
    r, v, final = (torch.randn(T, generator=g, dtype=F64) for _ in range(3))
    ends = torch.rand(T, generator=g) < 0.12
    terminated = ends & (torch.rand(T, generator=g) < 0.5)
    nv = torch.where(ends, final, torch.cat([v[1:], final[-1:]]))  # V(s_t+1) is the next step's V(s)
    worst = 0.0
    for lam in (0.0, 0.5, 0.9, 1.0):
        report = assert_parity(P.gae_as_lambda_average(r, v, nv, terminated, ends, gamma, lam),
                               P.gae(r, v, nv, terminated, ends, gamma, lam), atol=1e-12, name=f"lambda={lam}")
        worst = max(worst, report.max_abs_err)
    measure("gae_vs_lambda_average.max_abs_err", worst, "≤ 1e-12")
    assert_parity(P.n_step_advantage(r, v, nv, terminated, ends, gamma, 1), P.td_errors(r, v, nv, terminated, gamma), atol=1e-14)
    assert_parity(P.n_step_advantage(r, v, nv, terminated, ends, gamma, T), P.gae(r, v, nv, terminated, ends, gamma, 1.0), atol=1e-12)


def test_gae_operator_structure():
    """M is upper triangular with unit diagonal, zero across episode boundaries, and (γλ)^(s−t) inside
    an episode: for ends after steps 2 and 4 of 6, M is block diagonal with blocks of sizes 3, 2, 1."""
    ends = torch.tensor([False, False, True, False, True, False])
    M = P.gae_operator(ends, 0.5, 0.5)
    expected = torch.zeros(6, 6, dtype=F64)
    for start, stop in [(0, 3), (3, 5), (5, 6)]:
        for t in range(start, stop):
            for s in range(t, stop):
                expected[t, s] = 0.25 ** (s - t)
    assert torch.equal(M, expected)
    assert P.gae_operator(torch.zeros(5, 3, dtype=torch.bool), 0.9, 0.8).shape == (3, 5, 5)


# ---------------------------------------------------------------- the trust region, and the experiment


def test_clipping_keeps_a_reused_batch_near_the_old_policy(committed, measure):
    """300 Adam steps on one batch: the unclipped importance-sampled surrogate drives the policy to
    near-determinism (KL(π_old ‖ π) > 1), while L^CLIP keeps it close (KL < 0.1, every action's
    probability ratio within [0.5, 1.5]); results.json holds these very numbers (same seeds), to the
    float64 rounding of 300 steps through 512-sample means (relative 7e-10, see TRUST_REGION_TOL)."""
    tr = P.clipping_trust_region()
    measure("trust_region.clipped_kl", tr["clipped_kl"][-1], "< 0.1")
    measure("trust_region.unclipped_kl", tr["unclipped_kl"][-1], "> 1")
    assert tr["clipped_kl"][-1] < 0.1 < 1 < tr["unclipped_kl"][-1]
    ratios = np.array(tr["clipped_final_probs"]) / np.array(tr["old_probs"])
    assert ratios.min() > 0.5 and ratios.max() < 1.5
    recorded = committed["trust_region"]
    worst = assert_reproduces({"clipped": tr["clipped_kl"][-1], "unclipped": tr["unclipped_kl"][-1]},
                              {"clipped": recorded["clipped_final_kl"], "unclipped": recorded["unclipped_final_kl"]},
                              TRUST_REGION_TOL, name="trust_region.final_kl")
    measure("trust_region.final_kl_vs_committed", worst, "≤ 1 (fraction of the tolerance)")


# Each of the 300 float64 Adam steps differentiates a mean over 512 samples (≈ 512 roundings fed back
# into the logits); Adam's normalised step passes relative errors through, and nudging the learning rate
# by 1e-13 moves the final KLs by at most 3× as much (measured: 2.7× clipped, 0.3× unclipped), so the
# rounding is amplified ≲ 5×: relative 8·300·512·5·u ≈ 7e-10.
TRUST_REGION_TOL = iterated(300 * 512, growth=5, why="300 float64 Adam steps through 512-sample means, "
                                                      "rounding amplified ≤ 5× (measured by nudging lr)")
# A row is the exact KL (a 10-term float64 sum) and each estimator's mean and std over 100 000 samples.
# Higham's bound for a mean of n terms is n·u·max|x| (a relative bound alone would be too tight: k1's mean
# cancels terms of both signs); at these shifts every |k_i| ≤ 0.14 (|log r| ≤ 0.134 over all 10 actions),
# so each entry is off by ≤ 8·n·u·0.15 ≈ 1.3e-11 absolute (the std also by n·u relative).
KL_TABLE_TOL = float_ops(100_000, abs=0.15 * float_ops(100_000).rel,
                         why="means and stds of 100 000 float64 samples of |k| ≤ 0.15 (Higham: n·u·max|x|)")


def test_results_json_is_current(committed):
    """results.json's KL-estimator table is reproduced (same seed, the first two shifts; float64 means over
    100 000 samples, so to 1.3e-11 absolute, KL_TABLE_TOL), and its GAE sweep shows the trade-off the theory
    predicts: |bias| shrinks and variance grows as λ → 1."""
    results = committed
    rows = P.kl_estimator_statistics(P.KL_SHIFTS[:2])
    assert_reproduces(rows, results["kl_estimators"][:2], KL_TABLE_TOL, name="kl_estimators")
    bv = results["gae_bias_variance"]
    assert [row["lam"] for row in bv] == P.LAMBDAS
    bias, var = [abs(row["bias"]) for row in bv], [row["variance"] for row in bv]
    assert all(b1 >= b2 for b1, b2 in zip(bias, bias[1:])) and all(v1 <= v2 for v1, v2 in zip(var, var[1:]))
    for name in ("clipped_objective", "trust_region", "kl_estimators", "gae_bias_variance"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
