"""The gate of day 20: advantage actor-critic (ARENA 2.2 DQN & VPG; GAE as in ARENA 2.3 PPO).

References: hand-computed advantages; the explicit double sum Σ_l (γλ)^l δ_{t+l} (numpy) for GAE;
day 19's returns-to-go for the λ = 1 limit; torch.distributions.Categorical for entropies and
log-probabilities; torch.nn.functional.mse_loss for the value loss; torch.autograd for which
parameters each part of the loss reaches; Gymnasium's CartPole termination thresholds for the
final observations kept at episode ends; day 18's probe environments for a critic that must learn
discounted values and an actor that must learn observation-dependent actions.
"""

import importlib
import json
from dataclasses import asdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical

from checks import assert_parity
from checks.committed import assert_reproduces, log_space, statistical

from . import a2c as A

vpg = importlib.import_module("days.019.vpg")
dqn = importlib.import_module("days.018.dqn")
HERE = Path(__file__).parent
F64 = torch.float64


def _t(x, dtype=F64):
    return torch.tensor(x, dtype=dtype)


def test_gae_of_a_hand_computed_rollout():
    """Rewards (1, 1, 1), V(s_t) = (0.5, 1, 2), V(s_{t+1}) = (1, 2, 4), γ = λ = 0.5: every δ_t = 1,
    so Â = (1 + 0.25·1.25, 1 + 0.25·1, 1) = (1.3125, 1.25, 1). If step 1 terminates: δ₁ = 1 − 1 = 0
    and the sum stops there, Â = (1, 0, 1) (step 2 starts a new episode)."""
    rewards, values, next_values = _t([1.0, 1.0, 1.0]), _t([0.5, 1.0, 2.0]), _t([1.0, 2.0, 4.0])
    none = torch.zeros(3, dtype=torch.bool)
    assert A.gae(rewards, values, next_values, none, none, 0.5, 0.5).tolist() == [1.3125, 1.25, 1.0]
    stop = torch.tensor([False, True, False])
    assert A.gae(rewards, values, next_values, stop, stop, 0.5, 0.5).tolist() == [1.0, 0.0, 1.0]


def test_gae_equals_the_explicit_sum(measure):
    """Â_t = Σ_{l=0}^{L} (γλ)^l δ_{t+l}, L the steps left in t's episode within the rollout, written as
    a double loop in numpy; 4 environments × 30 steps with random ends, terminations a subset of
    them, float64, 1e-12."""
    rng = np.random.default_rng(0)
    T, n, gamma, lam = 30, 4, 0.97, 0.9
    r, v, nv = rng.normal(size=(T, n)), rng.normal(size=(T, n)), rng.normal(size=(T, n))
    ends = rng.random((T, n)) < 0.15
    terminated = ends & (rng.random((T, n)) < 0.5)
    delta = r + gamma * (1 - terminated) * nv - v
    expected = np.zeros((T, n))
    for e in range(n):
        for t in range(T):
            for l in range(T - t):
                expected[t, e] += (gamma * lam) ** l * delta[t + l, e]
                if ends[t + l, e]:
                    break
    ours = A.gae(_t(r), _t(v), _t(nv), torch.tensor(terminated), torch.tensor(ends), gamma, lam)
    report = assert_parity(ours, expected, atol=1e-12, name="gae")
    measure("gae_vs_explicit_sum.max_abs_err", report.max_abs_err, "≤ 1e-12")


def test_gae_limits(measure):
    """λ = 0 gives the TD errors δ_t. λ = 1 over a complete episode gives Â_t + V(s_t) = G_t, day 19's
    return-to-go (the values telescope away); cut by a time limit instead, G_t gains the bootstrap
    γ^{T−t} V(s_T) of the true final state. float64, 1e-12."""
    rng = np.random.default_rng(1)
    T, gamma = 12, 0.9
    r, v = _t(rng.normal(size=T)), _t(rng.normal(size=T))
    v_final = 2.5
    nv = torch.cat([v[1:], _t([v_final])])
    end = torch.zeros(T, dtype=torch.bool)
    end[-1] = True
    none = torch.zeros(T, dtype=torch.bool)
    delta = r + gamma * nv - v
    assert_parity(A.gae(r, v, nv, none, none, gamma, 0.0), delta, atol=1e-14)
    complete = A.gae(r, v, nv, end, end, gamma, 1.0) + v
    report = assert_parity(complete, vpg.returns_to_go(r, gamma), atol=1e-12, name="λ=1 terminated")
    truncated = A.gae(r, v, nv, none, end, gamma, 1.0) + v
    bootstrap = gamma ** torch.arange(T, 0, -1, dtype=F64) * v_final
    assert_parity(truncated, vpg.returns_to_go(r, gamma) + bootstrap, atol=1e-12, name="λ=1 truncated")
    measure("gae_lambda_1_vs_returns_to_go.max_abs_err", report.max_abs_err, "≤ 1e-12")


def test_entropy_matches_torch_distributions(measure):
    """H(π) equals Categorical(logits).entropy() with its gradient (float64, 1e-12), is log n for equal
    logits, and stays finite (≈ 0) for a near-deterministic policy (logits ±500)."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(32, 6, generator=g, dtype=F64) * 3).requires_grad_(True)
    ours = A.entropy(logits)
    theirs = Categorical(logits=logits).entropy()
    report = assert_parity(ours, theirs, atol=1e-12, name="entropy")
    measure("entropy_vs_categorical.max_abs_err", report.max_abs_err, "≤ 1e-12")
    (g1,) = torch.autograd.grad(ours.sum(), logits)
    (g2,) = torch.autograd.grad(theirs.sum(), logits)
    assert_parity(g1, g2, atol=1e-12)
    assert A.entropy(torch.zeros(1, 6, dtype=F64)).item() == pytest.approx(np.log(6), abs=1e-15)
    extreme = A.entropy(_t([[500.0, -500.0, 0.0]]))
    assert torch.isfinite(extreme).all() and extreme.item() < 1e-100


def test_joint_loss_parts_and_where_their_gradients_go():
    """L = policy + c_v·value − c_e·entropy, with policy = −mean(Categorical.log_prob · Â), value =
    F.mse_loss(V, R̂), entropy = mean Categorical.entropy. The policy and entropy terms reach only the
    actor, the value term only the critic, and the advantages and targets get no gradient."""
    torch.manual_seed(0)
    model = A.ActorCritic(4, 3).double()
    obs = torch.randn(10, 4, dtype=F64)
    actions = torch.randint(0, 3, (10,))
    adv = torch.randn(10, dtype=F64, requires_grad=True)
    ret = torch.randn(10, dtype=F64, requires_grad=True)
    logits, values = model(obs)
    total, parts = A.a2c_loss(logits, values, actions, adv, ret, vf_coef=0.5, ent_coef=0.01)
    dist = Categorical(logits=logits)
    assert parts["policy"].item() == pytest.approx(-(dist.log_prob(actions) * adv).mean().item(), abs=1e-12)
    assert parts["value"].item() == pytest.approx(F.mse_loss(values, ret).item(), abs=1e-12)
    assert parts["entropy"].item() == pytest.approx(dist.entropy().mean().item(), abs=1e-12)
    assert total.item() == pytest.approx((parts["policy"] + 0.5 * parts["value"] - 0.01 * parts["entropy"]).item(), abs=1e-12)
    actor, critic = list(model.actor.parameters()), list(model.critic.parameters())
    for name, part, reaches, spared in [("policy", parts["policy"], actor, critic),
                                        ("entropy", parts["entropy"], actor, critic),
                                        ("value", parts["value"], critic, actor)]:
        grads = torch.autograd.grad(part, reaches + spared, allow_unused=True, retain_graph=True)
        assert all(g is not None and g.abs().sum() > 0 for g in grads[:len(reaches)]), name
        assert all(g is None for g in grads[len(reaches):]), name
    total.backward()
    assert adv.grad is None and ret.grad is None


def test_episode_ends_keep_the_true_final_observation():
    """When a CartPole episode ends, the rollout's next_obs is the state that ended it (|x| > 2.4 or
    |θ| > 12°, Gymnasium's thresholds, or the 500-step limit), while the environment has already
    been reset (its observation within ±0.05, CartPole's reset range)."""
    envs = A.Envs(lambda: gym.make("CartPole-v1"), 3, seed=0)
    model = A.ActorCritic(4, 2)
    rollout = A.collect_rollout(envs, model, 60, torch.Generator().manual_seed(0))
    assert rollout.obs.shape == (60, 3, 4) and rollout.ends.any()
    t, e = [int(i) for i in torch.nonzero(rollout.terminated)[0]]
    final = rollout.next_obs[t, e]
    assert abs(final[0]) > 2.4 or abs(final[2]) > 12 * 2 * np.pi / 360
    if t + 1 < 60:
        assert torch.all(rollout.obs[t + 1, e].abs() <= 0.05)
    assert torch.equal(rollout.obs[1:][~rollout.ends[:-1]], rollout.next_obs[:-1][~rollout.ends[:-1]])


PROBE_CONFIG = dict(total_timesteps=4_000, n_envs=4, n_steps=5, learning_rate=3e-3, hidden=(16,), max_grad_norm=10.0, seed=0)


def test_critic_learns_discounted_values_on_probe3(measure):
    """Probe3 (one action, reward 1 after two steps): the critic must bootstrap across the step and
    discount once: V([0]) = γ = 0.99 and V([1]) = 1, within 2e-3 after 4 000 steps."""
    run = A.train_a2c(A.A2CConfig(env_id="Probe3", **PROBE_CONFIG), make_env=dqn.Probe3)
    obs, q = dqn.probe_expectation("Probe3", 0.99)
    with torch.no_grad():
        _, values = run.model(torch.from_numpy(obs))
    err = np.abs(values.double().numpy() - q[:, 0]).max()
    measure("probe3.critic_max_abs_err", err, "≤ 2e-3")
    assert err <= 2e-3


def test_actor_learns_observation_dependent_actions_on_probe5(measure):
    """Probe5 (reward +1 if action = observation, else −1): the actor puts ≥ 0.98 on the right action
    for both observations, and the critic's V approaches the resulting E[r] ≈ 1 (within 0.05)."""
    run = A.train_a2c(A.A2CConfig(env_id="Probe5", **PROBE_CONFIG), make_env=dqn.Probe5)
    obs, q = dqn.probe_expectation("Probe5", 0.99)
    with torch.no_grad():
        logits, values = run.model(torch.from_numpy(obs))
    p_best = torch.softmax(logits, -1).double().numpy()[np.arange(2), q.argmax(axis=1)]
    measure("probe5.min_prob_of_best_action", p_best.min(), "≥ 0.98")
    assert p_best.min() >= 0.98
    assert np.abs(values.double().numpy() - 1.0).max() < 0.05


def test_training_is_reproducible_from_its_seed():
    """Two short runs with the same seed give identical returns and weights."""
    config = A.A2CConfig(total_timesteps=400, seed=5)
    a, b = A.train_a2c(config), A.train_a2c(config)
    assert a.episode_returns == b.episode_returns
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_training_bookkeeping_counts_updates_and_environment_steps():
    """train_a2c's contract: n_updates = ⌊total_timesteps / (n_envs · n_steps)⌋ updates, numbered
    1 … n_updates, each consuming n_envs · n_steps environment steps; with eval_every = 1 a greedy
    evaluation follows every update, recorded at the environment steps done so far
    (update · n_envs · n_steps). A single environment (n_envs = 1) is a valid configuration.
    run.seconds is the run's wall time, within (0, the time measured around the call]."""
    import time
    config = A.A2CConfig(total_timesteps=17, n_envs=1, n_steps=5, hidden=(8,), eval_every=1, eval_episodes=1, seed=0)
    before = time.perf_counter()
    run = A.train_a2c(config)
    elapsed = time.perf_counter() - before
    assert run.n_updates == 3
    assert run.eval_steps == [5, 10, 15]
    assert len(run.eval_returns) == 3 and all(r >= 1 for r in run.eval_returns)
    assert 0 < run.seconds <= elapsed


def test_results_json_is_current(committed, measure):
    """results.json came from this configuration (SB3 zoo's A2C settings), every seed improved (last
    100 training episodes ≥ 3× the first 100) and every final greedy policy averages ≥ 475 (the slow
    test's claim); the figure exists."""
    results = committed
    assert results["config"] == json.loads(json.dumps(asdict(A.CARTPOLE)))
    assert sorted(results["seeds"]) == [str(s) for s in A.SEEDS]
    for seed in results["seeds"].values():
        assert seed["last_100_training_mean_return"] >= 3 * seed["first_100_training_mean_return"]
        assert seed["final_greedy_mean_return"] >= 475
    assert results["n_seeds_at_475"] == len(A.SEEDS)
    assert (HERE / "figures/cartpole_a2c.png").stat().st_size > 10_000
    measure("experiment.mean_final_greedy_return", results["mean_final_greedy_return"])


# Each seed's final greedy policy scored 500, CartPole-v1's ceiling, and the post's claim of them is "solved"
# (≥ 475): a rerun elsewhere is another draw of a float32 RL run, so the finals reproduce the claim when they
# are within 500 − 475 = 25 of the committed 500 (and then every seed counts towards n_seeds_at_475, exactly).
FINAL_RETURN_TOL = statistical(500 - 475, why="another draw of a float32 RL run; the post's claim is the solved "
                                              "threshold 475, committed at the ceiling of 500")


@pytest.mark.slow
def test_cartpole_a2c(tmp_path, committed, measure):
    """Slow: A2C with SB3 zoo's settings (500 000 steps, 3 seeds) improves on every seed (last 100
    training episodes ≥ 3× the first 100), and every seed's final greedy policy averages ≥ 475 over
    100 fresh episodes (CartPole-v1's solved threshold). Every number the post cites is compared with
    results.json: the final and last-100 returns within FINAL_RETURN_TOL (the solved claim), the count of
    seeds at 475 exactly, the first 100 training episodes' mean within the range the committed seeds span
    (another CPU's rounding makes a float32 run another draw), the training time in log space within one
    decade, the configuration exactly."""
    results = A.run_experiment(tmp_path)
    measure("slow.min_final_greedy_return", results["min_final_greedy_return"], "≥ 475")
    measure("slow.train_seconds_total", results["train_seconds_total"])
    for seed in results["seeds"].values():
        assert seed["last_100_training_mean_return"] >= 3 * seed["first_100_training_mean_return"]
    assert results["min_final_greedy_return"] >= 475
    assert json.loads(json.dumps(results["config"])) == committed["config"] and results["n_seeds_at_475"] == committed["n_seeds_at_475"]
    keys = ("final_greedy_mean_return", "last_100_training_mean_return")
    worst = assert_reproduces({s: {k: row[k] for k in keys} for s, row in results["seeds"].items()},
                              {s: {k: row[k] for k in keys} for s, row in committed["seeds"].items()},
                              FINAL_RETURN_TOL, name="seeds")
    worst = max(worst, assert_reproduces({k: results[k] for k in ("mean_final_greedy_return", "min_final_greedy_return")},
                                         {k: committed[k] for k in ("mean_final_greedy_return", "min_final_greedy_return")},
                                         FINAL_RETURN_TOL, name="finals"))
    first = {s: row["first_100_training_mean_return"] for s, row in committed["seeds"].items()}
    spread = max(first.values()) - min(first.values())
    worst = max(worst, assert_reproduces({s: row["first_100_training_mean_return"] for s, row in results["seeds"].items()}, first,
                                         statistical(spread, why=f"another draw of a float32 RL run: the committed "
                                                                 f"seeds span {spread:g}"), name="first_100"))
    measure("slow.vs_committed", worst, "≤ 1 (fraction of the tolerance)")
    decades = assert_reproduces(results["train_seconds_total"], committed["train_seconds_total"],
                                log_space(1.0, why="a run's time on a shared CPU: reproducible in order of magnitude only"),
                                name="train_seconds_total")
    measure("slow.train_seconds_decades_from_committed", decades, "≤ 1")
