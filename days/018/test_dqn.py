"""The gate of day 18: DQN (ARENA 2.2 DQN & VPG, part 1).

References: Gymnasium's env_checker for the probe environments; hand-computed schedule values and
TD targets; torch.nn.functional.mse_loss and torch.autograd for the loss and where its gradient
goes; scipy's χ² test for uniform replay sampling and ε-greedy frequencies; ARENA's probe
environments, whose exact Q-values are known, with ARENA's tolerances (5e-4, 1e-3 for Probe5).
"""

import json
from dataclasses import asdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gymnasium.utils.env_checker import check_env
from scipy import stats

from . import dqn as D

HERE = Path(__file__).parent


@pytest.mark.parametrize("name", list(D.PROBES))
def test_probes_are_valid_gymnasium_environments(name):
    """Each probe passes Gymnasium's env_checker (spaces, seeding, reset/step signatures) and ends
    after its stated number of steps with its stated reward."""
    env = D.PROBES[name]()
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    steps, rewards, done = 0, [], False
    while not done:
        action = int(obs[0]) if name == "Probe5" else (1 if name == "Probe4" else 0)  # the rewarded action
        obs_next, r, terminated, truncated, _ = env.step(action)
        rewards.append(r)
        if name != "Probe3":
            expected = {"Probe1": 1.0, "Probe2": float(obs[0]), "Probe4": 1.0, "Probe5": 1.0}[name]
            assert r == expected
        steps += 1
        done = terminated or truncated
        assert not truncated
        obs = obs_next
    assert steps == (2 if name == "Probe3" else 1)
    if name == "Probe3":
        assert rewards == [0.0, 1.0]


def test_probe_expectations_are_the_bellman_values():
    """The stated exact Q-values: one-step probes' Q is the expected reward of (obs, action); Probe3's
    first state is worth γ·1 (one discount before the reward)."""
    obs, q = D.probe_expectation("Probe3", 0.9)
    assert obs.tolist() == [[0.0], [1.0]] and q.tolist() == [[0.9], [1.0]]
    assert D.probe_expectation("Probe5", 0.9)[1].tolist() == [[1.0, -1.0], [-1.0, 1.0]]


def test_replay_buffer_is_circular_and_keeps_transitions_whole():
    """Capacity 5 after 8 additions holds transitions 3–7, transition n in slot n mod 5; every sampled
    row is one whole transition (its fields all encode the same n); sampling an empty buffer is an error."""
    buffer = D.ReplayBuffer(5, (2,), seed=0)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(1)
    for n in range(8):
        buffer.add(np.array([n, -n]), n % 3, float(n), np.array([n + 0.5, 0.0]), n % 2 == 0)
    assert len(buffer) == 5 and buffer.n_added == 8
    assert buffer.rewards.tolist() == [5.0, 6.0, 7.0, 3.0, 4.0]
    batch = buffer.sample(200)
    n = batch.rewards.long()
    assert set(n.tolist()) <= {3, 4, 5, 6, 7}
    assert torch.equal(batch.obs[:, 0].long(), n) and torch.equal(batch.obs[:, 1].long(), -n)
    assert torch.equal(batch.actions, n % 3) and torch.equal(batch.terminated, n % 2 == 0)
    assert torch.allclose(batch.next_obs[:, 0], n.float() + 0.5)


def test_replay_sampling_is_uniform():
    """Indices are drawn uniformly over the filled slots: 50 000 draws from 10 slots pass χ² (p > 1e-4)."""
    buffer = D.ReplayBuffer(20, (1,), seed=1)
    for n in range(10):
        buffer.add(np.zeros(1), 0, 0.0, np.zeros(1), False)
    counts = np.bincount(buffer.sample_indices(50_000), minlength=20)
    assert counts[10:].sum() == 0
    assert stats.chisquare(counts[:10]).pvalue > 1e-4


def test_linear_schedule_by_hand():
    """ε from 1 to 0.1 over the first 20% of 1 000 steps: 1 at step 0, 0.55 at 100, 0.1 from 200 on."""
    values = [D.linear_schedule(t, 1.0, 0.1, 0.2, 1000) for t in (0, 100, 200, 900)]
    assert values == pytest.approx([1.0, 0.55, 0.1, 0.1], abs=1e-12)


def test_epsilon_greedy_frequencies():
    """With ε = 0.3 and 4 actions the greedy action is taken with 0.7 + 0.3/4, each other with 0.3/4
    (χ² p > 1e-4 over 8 000 draws)."""
    net = D.QNetwork(1, 4, hidden=())
    with torch.no_grad():
        net.layers[0].weight.zero_()
        net.layers[0].bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
    rng = np.random.default_rng(0)
    counts = np.bincount([D.epsilon_greedy(net, np.zeros(1), 0.3, 4, rng) for _ in range(8_000)], minlength=4)
    assert stats.chisquare(counts, 8_000 * np.array([0.075, 0.075, 0.775, 0.075])).pvalue > 1e-4


def _linear_target(weight, bias):
    net = D.QNetwork(1, len(bias), hidden=())
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor(weight))
        net.layers[0].bias.copy_(torch.tensor(bias))
    return net


def test_td_target_by_hand():
    """With Q⁻(s') = (s', −2s' + 1) at s' = 2, i.e. (2, −3): y = r + γ max = 0.5 + 0.9·2 = 2.3, and at
    a terminal transition y = r = 0.5."""
    target = _linear_target([[1.0], [-2.0]], [0.0, 1.0])
    y = D.td_targets(target, torch.tensor([0.5, 0.5]), torch.tensor([[2.0], [2.0]]), torch.tensor([False, True]), 0.9)
    assert y.tolist() == pytest.approx([2.3, 0.5], abs=1e-6)


def test_dqn_loss_is_mse_on_the_taken_action_and_only_trains_the_online_network():
    """The loss equals F.mse_loss(Q(s)[a], y) with y from the target network; its gradient reaches every
    online parameter and no target-network parameter (θ⁻ is frozen between syncs)."""
    torch.manual_seed(0)
    q_net, target = D.QNetwork(4, 2), D.QNetwork(4, 2)
    batch = D.ReplaySamples(torch.randn(16, 4), torch.randint(0, 2, (16,)), torch.randn(16), torch.randn(16, 4),
                            torch.rand(16) < 0.3)
    loss = D.dqn_loss(q_net, target, batch, 0.99)
    with torch.no_grad():
        y = batch.rewards + 0.99 * (~batch.terminated).float() * target(batch.next_obs).max(-1).values
    expected = F.mse_loss(q_net(batch.obs)[torch.arange(16), batch.actions], y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in q_net.parameters())
    assert all(p.grad is None for p in target.parameters())


def test_q_network_is_arenas_architecture():
    """obs → 120 → 84 → actions with ReLUs: for CartPole (4 observations, 2 actions) that is
    (4·120 + 120) + (120·84 + 84) + (84·2 + 2) = 10 934 parameters."""
    net = D.QNetwork(4, 2)
    assert sum(p.numel() for p in net.parameters()) == 10_934
    assert [type(m).__name__ for m in net.layers] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]


def test_truncation_is_not_stored_as_termination():
    """The buffer stores `terminated`, never `truncated`: Probe3 cut by a 1-step time limit stores only
    non-terminal transitions, while the uncut Probe3 marks exactly its final steps (obs [1]) terminal."""
    config = D.DQNConfig(total_timesteps=60, buffer_size=100, learning_starts=1_000, seed=0)
    cut = D.train_dqn(lambda: gym.wrappers.TimeLimit(D.Probe3(), max_episode_steps=1), config)
    assert len(cut.buffer) == 60 and not cut.buffer.terminated[:60].any()
    whole = D.train_dqn(D.Probe3, config)
    stored = whole.buffer
    assert np.array_equal(stored.terminated[:60], stored.obs[:60, 0] == 1.0)
    assert whole.episode_returns == [1.0] * 30


@pytest.mark.parametrize("name", list(D.PROBES))
def test_dqn_learns_each_probes_exact_q_values(name, measure):
    """ARENA's probe test: trained with ARENA's probe settings (3 000–5 000 steps, lr 1e-3, buffer 500,
    target sync every 20 updates), DQN's Q at the probe's observations equals the exact values within
    ARENA's tolerance (5e-4; 1e-3 for Probe5). Each probe isolates one failure: a constant value, the
    observation, discounting and bootstrapping, the action, observation × action."""
    learned, expected, run = D.learned_probe_q(name)
    err = float(np.abs(learned - expected).max())
    measure(f"{name}.max_abs_err", err, f"≤ {D.PROBE_TOLERANCE[name]:g}")
    assert err <= D.PROBE_TOLERANCE[name]
    assert run.n_target_syncs == run.n_updates // 20 > 0


def test_results_json_is_current(committed, measure):
    """results.json came from this configuration (ARENA's CartPole hyper-parameters): every probe
    within tolerance, each seed's `solved` flag is its greedy mean ≥ 475, the headline seed solved
    CartPole; the figures exist."""
    results = committed
    for name, probe in results["probes"].items():
        assert probe["max_abs_err"] <= D.PROBE_TOLERANCE[name]
    cart = results["cartpole"]
    assert cart["config"] == json.loads(json.dumps(asdict(D.CARTPOLE)))
    for seed in cart["seeds"].values():
        assert seed["solved"] == (seed["final_greedy_mean_return"] >= D.SOLVED)
        assert seed["n_updates"] == (D.CARTPOLE.total_timesteps - D.CARTPOLE.buffer_size) // D.CARTPOLE.steps_per_train
    assert cart["seeds"][str(cart["headline_seed"])]["final_greedy_mean_return"] == cart["final_greedy_mean_return"]
    assert cart["final_greedy_mean_return"] >= D.SOLVED
    for name in ("cartpole_learning_curve", "probes"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
    measure("experiment.final_greedy_mean_return", cart["final_greedy_mean_return"], "≥ 475")
    measure("experiment.train_seconds", cart["train_seconds"])


@pytest.mark.slow
def test_cartpole_reaches_475(tmp_path, measure):
    """Slow: DQN with ARENA's hyper-parameters (500 000 steps, seed 1) on CartPole-v1: the final
    network's greedy policy averages ≥ 475 over 100 fresh episodes (the environment's threshold)."""
    results = D.run_experiment(tmp_path, seeds=(1,))
    cart = results["cartpole"]
    measure("slow.final_greedy_mean_return", cart["final_greedy_mean_return"], "≥ 475")
    measure("slow.train_seconds", cart["train_seconds"])
    assert cart["final_greedy_mean_return"] >= D.SOLVED
