"""The gate of day 19: vanilla policy gradient (ARENA 2.2 DQN & VPG).

References: hand-computed returns-to-go and loss for a three-step episode; scipy.signal.lfilter
(the classic discounted-sum filter) for returns on random episodes; torch.distributions.Categorical
for log-probabilities; torch.autograd on the exact expected return of a tiny two-step MDP
(enumerating all trajectories) for the unbiasedness of the policy-gradient estimator; day 18's
probe environments for a policy that must learn action- and observation-dependence.
"""

import importlib
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import lfilter
from torch.distributions import Categorical

from checks import assert_parity

from . import vpg as V

dqn = importlib.import_module("days.018.dqn")
HERE = Path(__file__).parent


def test_returns_to_go_of_a_hand_computed_episode():
    """Rewards (1, 0, 2), γ = 0.5: G₂ = 2, G₁ = 0 + 0.5·2 = 1, G₀ = 1 + 0.5·1 = 1.5. Two episodes
    concatenated, (1, 0, 2 | 3, 1) with the first ending at step 2, restart the sum: (1.5, 1, 2 | 3.5, 1)."""
    assert V.returns_to_go(torch.tensor([1.0, 0.0, 2.0]), 0.5).tolist() == [1.5, 1.0, 2.0]
    ends = torch.tensor([False, False, True, False, True])
    assert V.returns_to_go(torch.tensor([1.0, 0.0, 2.0, 3.0, 1.0]), 0.5, ends).tolist() == [1.5, 1.0, 2.0, 3.5, 1.0]


def test_discounted_cumsum_matches_scipy_lfilter(measure):
    """For each episode, y = lfilter([1], [1, −γ], x reversed) reversed (the standard discounted-sum
    filter); our version with episode ends over 20 concatenated random episodes, and column-wise on a
    (T, n_envs) batch, agrees to 1e-12 in float64."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 30, 20)
    rewards = rng.normal(size=lengths.sum())
    ends = np.zeros(lengths.sum(), dtype=bool)
    ends[np.cumsum(lengths) - 1] = True
    expected = np.concatenate([lfilter([1], [1, -0.97], ep[::-1])[::-1] for ep in np.split(rewards, np.cumsum(lengths)[:-1])])
    ours = V.discounted_cumsum(torch.tensor(rewards), 0.97, torch.tensor(ends))
    report = assert_parity(ours, expected, atol=1e-12, name="returns-to-go")
    measure("returns_to_go_vs_lfilter.max_abs_err", report.max_abs_err, "≤ 1e-12")
    batch = rng.normal(size=(25, 4))
    columns = np.stack([lfilter([1], [1, -0.9], batch[::-1, j])[::-1] for j in range(4)], axis=1)
    assert_parity(V.discounted_cumsum(torch.tensor(batch), 0.9), columns, atol=1e-12)


def test_discounted_cumsum_of_a_single_step():
    """The contract allows any T ≥ 1: for T = 1, y_0 = x_0 + discount · y_1 with y_1 = 0, so y = x
    (for a plain sequence and for a (1, n_envs) batch, with or without an episode end)."""
    assert V.discounted_cumsum(torch.tensor([2.5]), 0.9).tolist() == [2.5]
    x = torch.tensor([[1.0, -3.0, 0.5]])
    assert torch.equal(V.discounted_cumsum(x, 0.9, torch.tensor([[True, False, True]])), x)


def test_policy_gradient_loss_of_a_hand_computed_episode():
    """π = (1/4, 3/4) in every state (logits (0, ln 3)), actions (1, 0, 1), rewards (1, 1, 1), γ = 0.5:
    G = (1.75, 1.5, 1), so L = −(1/3)[1.75 ln ¾ + 1.5 ln ¼ + 1 ln ¾]."""
    logits = torch.tensor([[0.0, math.log(3)]] * 3, dtype=torch.float64)
    actions = torch.tensor([1, 0, 1])
    G = V.returns_to_go(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64), 0.5)
    assert G.tolist() == [1.75, 1.5, 1.0]
    expected = -(1.75 * math.log(0.75) + 1.5 * math.log(0.25) + 1.0 * math.log(0.75)) / 3
    assert V.policy_gradient_loss(logits, actions, G).item() == pytest.approx(expected, abs=1e-14)


def test_log_probs_match_torch_distributions(measure):
    """log π(a|s) equals torch.distributions.Categorical(logits).log_prob(a) (float64, 1e-12), also
    for extreme logits (±200, where a naive softmax-then-log underflows), and so does its gradient."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, generator=g, dtype=torch.float64) * 3
    logits[0, 0], logits[1, 1] = 200.0, -200.0
    actions = torch.randint(0, 5, (64,), generator=g)
    actions[1] = 1
    ours = V.log_probs(logits, actions)
    report = assert_parity(ours, Categorical(logits=logits).log_prob(actions), atol=1e-12, name="log_prob")
    measure("log_prob_vs_categorical.max_abs_err", report.max_abs_err, "≤ 1e-12")
    x = logits.clone().requires_grad_(True)
    weights = torch.randn(64, generator=g, dtype=torch.float64)
    (gx,) = torch.autograd.grad(V.policy_gradient_loss(x, actions, weights), x)
    y = logits.clone().requires_grad_(True)
    (gy,) = torch.autograd.grad(-(Categorical(logits=y).log_prob(actions) * weights).mean(), y)
    assert_parity(gx, gy, atol=1e-12)


def test_weights_are_constants_in_the_loss():
    """The returns-to-go (or advantages) weight the log-probabilities but carry no gradient: a weight
    that requires grad gets none from the loss."""
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, dtype=torch.float64, requires_grad=True)
    V.policy_gradient_loss(logits, torch.tensor([0, 1, 2, 0]), weights).backward()
    assert weights.grad is None and logits.grad is not None


# A two-step MDP: from s0, action 0 → s1 (reward 1), action 1 → s2 (reward 0); from s1 or s2 any
# action ends the episode with reward R2[s, a]. The policy is a table of logits θ[s, a].
R2 = torch.tensor([[0.0, 0.0], [2.0, -1.0], [0.5, 3.0]], dtype=torch.float64)


def _trajectories():
    for a0 in (0, 1):
        s1 = 1 if a0 == 0 else 2
        for a1 in (0, 1):
            yield (0, s1), (a0, a1), (1.0 if a0 == 0 else 0.0, float(R2[s1, a1]))


def test_policy_gradient_estimator_is_unbiased_on_an_enumerable_mdp(measure):
    """∇J(θ) from torch.autograd on J(θ) = Σ_τ P_θ(τ) R(τ) (all four trajectories, γ = 1) equals the
    expectation of the estimator: Σ_τ P_θ(τ) · ∇[−L(τ)]·T, with L built from our log-probabilities
    and returns-to-go (T = 2 steps undoes the mean); the total-return weighting agrees too
    (causality: the dropped terms have zero expectation). float64, 1e-12."""
    theta = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    J = sum(torch.softmax(theta[states[0]], 0)[actions[0]] * torch.softmax(theta[states[1]], 0)[actions[1]] * sum(rewards)
            for states, actions, rewards in _trajectories())
    (grad_J,) = torch.autograd.grad(J, theta)
    for weighting in ("rewards_to_go", "total_return"):
        expected = torch.zeros_like(theta)
        for states, actions, rewards in _trajectories():
            logits = theta[list(states)]
            acts = torch.tensor(actions)
            with torch.no_grad():
                prob = V.log_probs(logits, acts).sum().exp()
            r = torch.tensor(rewards, dtype=torch.float64)
            weights = V.returns_to_go(r, 1.0) if weighting == "rewards_to_go" else r.sum().expand(2)
            (g,) = torch.autograd.grad(-V.policy_gradient_loss(logits, acts, weights) * 2, theta)
            expected += prob * g
        report = assert_parity(expected, grad_J, atol=1e-12, name=weighting)
        measure(f"unbiased.{weighting}.max_abs_err", report.max_abs_err, "≤ 1e-12")


@pytest.mark.parametrize("probe", ["Probe4", "Probe5"])
def test_vpg_learns_the_probe_policies(probe, measure):
    """On day 18's probes VPG must learn that the reward depends on the action (Probe4: always action
    1) and on observation and action jointly (Probe5: action = observation): after 60 updates of 64
    one-step episodes the right action has probability ≥ 0.95 for every observation."""
    config = V.VPGConfig(env_id=probe, epochs=60, batch_steps=64, learning_rate=0.05, hidden=(8,), seed=0)
    run = V.train_vpg(config, make_env=dqn.PROBES[probe])
    obs, q = dqn.probe_expectation(probe, gamma=1.0)
    probs = V.action_probabilities(run.policy, obs.tolist())
    right = probs[np.arange(len(obs)), q.argmax(axis=1)]
    measure(f"{probe}.min_prob_of_best_action", right.min(), "≥ 0.95")
    assert right.min() >= 0.95


def test_normalized_weights_make_the_loss_invariant_to_an_affine_reward_change():
    """VPGConfig.normalize "standardises the returns-to-go over the batch": w → (w − mean w) / std w,
    which is invariant under w → a·w + b (a > 0). On Probe4 (one-step episodes, so G = r, γ = 1)
    with rewards r and 10·r + 3 the same seed samples the same first batch (actions do not depend on
    rewards), so the first loss, computed with the initial policy, must agree (float32 rounding:
    rel 1e-5); it is not trivially 0, since both actions occur. run.seconds is the run's wall time,
    within (0, the time measured around the call]."""
    import time
    from gymnasium.wrappers import TransformReward

    config = V.VPGConfig(env_id="Probe4", epochs=1, batch_steps=32, learning_rate=0.05, hidden=(8,),
                         normalize=True, seed=0)
    before = time.perf_counter()
    plain = V.train_vpg(config, make_env=dqn.PROBES["Probe4"])
    elapsed = time.perf_counter() - before
    scaled = V.train_vpg(config, make_env=lambda: TransformReward(dqn.PROBES["Probe4"](), lambda r: 10 * r + 3))
    assert plain.epoch_episodes == scaled.epoch_episodes == [32]
    assert abs(plain.losses[0]) > 1e-3
    assert scaled.losses[0] == pytest.approx(plain.losses[0], rel=1e-5)
    assert 0 < plain.seconds <= elapsed


def test_training_is_reproducible_from_its_seed():
    """Two runs with the same seed (weights, sampled actions, environment resets) are identical."""
    config = V.VPGConfig(epochs=2, batch_steps=200, seed=3)
    a, b = V.train_vpg(config), V.train_vpg(config)
    assert a.losses == b.losses and a.epoch_mean_return == b.epoch_mean_return


def test_results_json_is_current(committed, measure):
    """results.json came from this configuration and shows the improvement the post reports: every
    seed's mean return over the last 5 epochs is ≥ 10× its first epoch's, ≥ 350 on average; the
    figure exists."""
    results = committed
    assert results["config"] == json.loads(json.dumps(asdict(V.CARTPOLE)))
    assert sorted(results["seeds"]) == [str(s) for s in V.SEEDS]
    for seed in results["seeds"].values():
        assert seed["last_5_epochs_mean_return"] >= 10 * seed["first_epoch_mean_return"]
    assert results["mean_last_5_epochs_return"] >= 350
    assert (HERE / "figures/cartpole_vpg.png").stat().st_size > 10_000
    measure("experiment.mean_last_5_epochs_return", results["mean_last_5_epochs_return"])


@pytest.mark.slow
def test_cartpole_improves(tmp_path, measure):
    """Slow: REINFORCE with rewards-to-go on CartPole-v1 (60 epochs of ≥ 5 000 steps, 3 seeds): the
    mean return over the last 5 epochs is ≥ 10× the first epoch's on every seed, and ≥ 350 on average."""
    results = V.run_experiment(tmp_path)
    measure("slow.mean_last_5_epochs_return", results["mean_last_5_epochs_return"], "≥ 350")
    measure("slow.train_seconds_total", results["train_seconds_total"])
    for seed in results["seeds"].values():
        assert seed["last_5_epochs_mean_return"] >= 10 * seed["first_epoch_mean_return"]
    assert results["mean_last_5_epochs_return"] >= 350
