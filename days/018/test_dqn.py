"""The gate of day 18: DQN (ARENA 2.2 DQN & VPG, part 1).

References: Gymnasium's env_checker for the probe environments; hand-computed schedule values and
TD targets; torch.nn.functional.mse_loss and torch.autograd for the loss and where its gradient
goes; scipy's χ² test for uniform replay sampling and ε-greedy frequencies; ARENA's probe
environments, whose exact Q-values are known, with ARENA's tolerances (5e-4, 1e-3 for Probe5).
"""

import json
from dataclasses import asdict, replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gymnasium.utils.env_checker import check_env
from scipy import stats

from checks.committed import assert_reproduces, statistical

from . import dqn as D

HERE = Path(__file__).parent


@pytest.mark.parametrize("name", list(D.PROBES))
def test_probes_are_valid_gymnasium_environments(name):
    """Each probe passes Gymnasium's env_checker (spaces, seeding, reset/step signatures) and ends
    after its stated number of steps with its stated reward; every observation it returns, the
    final one included, is one of its stated observations (e.g. Probe1: always [0]) inside its
    observation space."""
    env = D.PROBES[name]()
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    steps, rewards, done = 0, [], False
    while not done:
        action = int(obs[0]) if name == "Probe5" else (1 if name == "Probe4" else 0)  # the rewarded action
        obs_next, r, terminated, truncated, _ = env.step(action)
        assert env.observation_space.contains(obs_next) and obs_next.tolist() in D.PROBES[name].expected_obs
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


# ---------------------------------------------------------------- the agent in vectorised environments


def _cartpoles(n: int, max_steps: int = 15) -> gym.vector.SyncVectorEnv:
    """n CartPoles cut at 15 steps (so that episodes both terminate and truncate within a test),
    reset in the same step they end (ARENA's convention)."""
    return D.make_envs("CartPole-v1", n, max_episode_steps=max_steps)


def _agent(envs, epsilon: float, q_net=None, capacity: int = 10_000, seed: int = 0):
    torch.manual_seed(seed)
    q_net = q_net or D.QNetwork(4, 2)
    buffer = D.ReplayBuffer(capacity, (4,), seed=seed)
    return D.DQNAgent(envs, buffer, q_net, start_e=epsilon, end_e=epsilon, exploration_fraction=0.5,
                      total_timesteps=1_000, rng=np.random.default_rng(seed), seed=seed)


def test_play_step_stores_what_the_environments_returned(measure):
    """ARENA's DQNAgent.play_step: one step of every environment (ε-greedy actions), each
    environment's transition (obs, action, reward, terminated, next_obs) added to the replay
    buffer, the environments' infos returned. Replayed against Gymnasium itself: four separate
    CartPole-v1 environments, seeded as the vector env seeds them (seed + i) and driven by the
    stored actions, return exactly the stored observations, rewards and terminations; at the end
    of an episode the stored next_obs is the final observation (from infos), not the next
    episode's first, and a truncation is stored as not terminated. The buffer grows by the
    number of environments per step."""
    n, steps = 4, 60
    envs = _cartpoles(n)
    agent = _agent(envs, epsilon=0.5)
    returned = []
    for t in range(steps):
        returned.append(agent.play_step())
        assert len(agent.buffer) == agent.buffer.n_added == n * (t + 1)
    assert agent.step == steps
    buffer, ends = agent.buffer, {"terminated": 0, "truncated": 0}
    for i in range(n):
        env = gym.make("CartPole-v1", max_episode_steps=15)
        obs, _ = env.reset(seed=i)
        for t in range(steps):
            k = t * n + i  # play_step adds the environments of one step in order
            assert np.array_equal(buffer.obs[k], obs), (i, t)
            next_obs, reward, terminated, truncated, _ = env.step(int(buffer.actions[k]))
            assert buffer.rewards[k] == reward and buffer.terminated[k] == terminated, (i, t)
            assert np.array_equal(buffer.next_obs[k], next_obs), (i, t)
            if terminated or truncated:
                ends["terminated" if terminated else "truncated"] += 1
                assert returned[t]["_final_obs"][i] and np.array_equal(returned[t]["final_obs"][i], next_obs)
                obs, _ = env.reset()
            else:
                obs = next_obs
    measure("play_step.episode_ends", f"{ends['terminated']} terminated, {ends['truncated']} truncated")
    assert ends["terminated"] > 0 and ends["truncated"] > 0


def _angle_q_net() -> D.QNetwork:
    """Q(s) = (−θ, θ) for pole angle θ: the greedy action pushes towards the pole (1 iff θ > 0)."""
    net = D.QNetwork(4, 2, hidden=())
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor([[0.0, 0.0, -1.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))
        net.layers[0].bias.zero_()
    return net


def test_play_step_with_epsilon_zero_is_greedy():
    """ε = 0: every stored action is argmax_a Q(obs, a) of the Q-network at the stored observation
    (with a network whose argmax changes with the pole's angle, so both actions occur)."""
    agent = _agent(_cartpoles(4), epsilon=0.0, q_net=_angle_q_net())
    for _ in range(40):
        agent.play_step()
    n = len(agent.buffer)
    with torch.no_grad():
        greedy = agent.q_network(torch.from_numpy(agent.buffer.obs[:n])).argmax(-1).numpy()
    assert np.array_equal(agent.buffer.actions[:n], greedy)
    assert set(greedy.tolist()) == {0, 1}


def test_play_step_with_epsilon_one_is_uniform(measure):
    """ε = 1: actions are uniform over the action space whatever Q says (χ² p > 1e-4 over 2 000
    actions, with a network that always prefers action 1)."""
    net = D.QNetwork(4, 2, hidden=())
    with torch.no_grad():
        net.layers[0].weight.zero_()
        net.layers[0].bias.copy_(torch.tensor([0.0, 10.0]))
    agent = _agent(_cartpoles(8), epsilon=1.0, q_net=net)
    for _ in range(250):
        agent.play_step()
    counts = np.bincount(agent.buffer.actions[:len(agent.buffer)], minlength=2)
    p_value = stats.chisquare(counts).pvalue
    measure("play_step.epsilon_one.chi2_p_value", p_value, "> 1e-4")
    assert counts.sum() == 2_000 and p_value > 1e-4


def test_exploration_coin_is_tossed_per_environment(measure):
    """Ours draws one ε-coin per environment (ARENA's epsilon_greedy_policy draws one per batch):
    with ε = 0.5 and a network that always prefers action 1, the number of the 8 environments
    taking action 0 in one step is Binomial(8, ε/2) (χ² over 1 000 steps, p > 1e-4); a single coin
    per batch would give 0 half the time and Binomial(8, 1/2) otherwise."""
    net = D.QNetwork(4, 2, hidden=())
    with torch.no_grad():
        net.layers[0].weight.zero_()
        net.layers[0].bias.copy_(torch.tensor([0.0, 10.0]))
    envs, rng = _cartpoles(8), np.random.default_rng(3)
    obs = np.zeros((8, 4), dtype=np.float32)
    zeros = [int((D.epsilon_greedy_policy(envs, net, rng, obs, 0.5) == 0).sum()) for _ in range(1_000)]
    observed = np.bincount(zeros, minlength=9)
    expected = 1_000 * stats.binom(8, 0.25).pmf(np.arange(9))
    keep = expected >= 5  # pool the sparse tail, as χ² needs
    observed = np.append(observed[keep], observed[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    p_value = stats.chisquare(observed, expected).pvalue
    measure("epsilon_greedy_policy.per_env_coin.chi2_p_value", p_value, "> 1e-4")
    assert p_value > 1e-4


def test_agent_epsilon_follows_the_schedule():
    """get_actions uses ε = linear_schedule(step) at the agent's current step: from 1 to 0.1 over
    the first half of 100 steps."""
    envs = _cartpoles(2)
    agent = D.DQNAgent(envs, D.ReplayBuffer(1_000, (4,)), D.QNetwork(4, 2), start_e=1.0, end_e=0.1,
                       exploration_fraction=0.5, total_timesteps=100, rng=np.random.default_rng(0), seed=0)
    seen = []
    for _ in range(60):
        agent.play_step()
        seen.append(agent.epsilon)
    assert seen == pytest.approx([D.linear_schedule(t, 1.0, 0.1, 0.5, 100) for t in range(60)], abs=1e-12)


def test_agent_needs_same_step_autoreset():
    """With Gymnasium's default next-step autoreset the step after an episode's end is a reset,
    not a transition, and would enter the buffer as one: the agent refuses such environments."""
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(2)])
    with pytest.raises(ValueError, match="SAME_STEP"):
        D.DQNAgent(envs, D.ReplayBuffer(10, (4,)), D.QNetwork(4, 2), 1.0, 0.1, 0.5, 100, np.random.default_rng(0))


def test_train_dqn_schedules_updates_and_evaluations():
    """train_dqn's contract: "every steps_per_train steps after learning_starts: one Adam step", i.e.
    at the 0-based steps s ≥ learning_starts with s % steps_per_train == 0, so 20 steps with
    learning_starts 10 and steps_per_train 2 make the 5 updates at steps 10, 12, …, 18 (one loss
    each); a greedy evaluation every eval_every = 5 env steps is recorded at the env steps done so
    far, 5, 10, 15, 20; run.seconds lies in (0, the time measured around the call]."""
    import time
    config = D.DQNConfig(total_timesteps=20, buffer_size=50, batch_size=4, steps_per_train=2, learning_starts=10,
                         trains_per_target_update=2, hidden=(8,), eval_every=5, eval_episodes=1, seed=0)
    before = time.perf_counter()
    run = D.train_dqn(lambda: gym.make("CartPole-v1"), config)
    elapsed = time.perf_counter() - before
    assert run.n_updates == len(run.losses) == 5 and run.n_target_syncs == 2
    assert run.eval_steps == [5, 10, 15, 20] and len(run.eval_returns) == 4
    assert 0 < run.seconds <= elapsed


def test_results_json_is_current(committed, measure):
    """results.json came from this configuration (ARENA's CartPole hyper-parameters): every probe
    within tolerance; for each seed and fix, the update and target-copy counts, the evaluation
    steps, the first evaluation at 475 and the `solved` flag follow from its own numbers and the
    configuration; the counts of solved seeds are those of the recorded seeds; the headline seed
    solved CartPole; the figures exist. (The numbers themselves are rerun by the slow test.)"""
    results = committed
    for name, probe in results["probes"].items():
        assert probe["max_abs_err"] <= D.PROBE_TOLERANCE[name]
    cart = results["cartpole"]
    assert cart["config"] == json.loads(json.dumps(asdict(D.CARTPOLE)))
    assert (cart["headline_seed"], cart["n_seeds"], cart["final_greedy_episodes"]) == (1, 3, D.FINAL_EVAL_EPISODES)
    runs = [(D.CARTPOLE, seed) for seed in cart["seeds"].values()]
    for seed, attempts in cart["fix_attempts"].items():
        for fix, attempt in attempts.items():
            assert attempt["overrides"] == D.FIXES[fix]
            runs.append((replace(D.CARTPOLE, **D.FIXES[fix]), attempt))
    for config, run in runs:
        assert run["solved"] == (run["final_greedy_mean_return"] >= D.SOLVED)
        assert run["n_updates"] == (config.total_timesteps - config.buffer_size) // config.steps_per_train
        assert run["n_target_syncs"] == run["n_updates"] // config.trains_per_target_update
        assert run["eval_steps"] == list(range(config.eval_every, config.total_timesteps + 1, config.eval_every))
        assert run["first_eval_step_at_475"] == next(
            (s for s, r in zip(run["eval_steps"], run["eval_returns"]) if r >= D.SOLVED), None)
    assert cart["n_seeds_solved"] == sum(s["solved"] for s in cart["seeds"].values())
    assert cart["n_seeds_solved_after_fixes"] == sum(
        s["solved"] or any(a["solved"] for a in cart["fix_attempts"].get(k, {}).values()) for k, s in cart["seeds"].items())
    assert cart["seeds"][str(cart["headline_seed"])]["final_greedy_mean_return"] == cart["final_greedy_mean_return"]
    assert cart["final_greedy_mean_return"] >= D.SOLVED
    for name in ("cartpole_learning_curve", "probes"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
    measure("experiment.final_greedy_mean_return", cart["final_greedy_mean_return"], "≥ 475")
    measure("experiment.train_seconds", cart["train_seconds"])


def _cited(cart: dict) -> dict:
    """The CartPole numbers the post cites (all but timings), by their results.json path."""
    seeds, fix = cart["seeds"], cart["fix_attempts"]["3"]["target_copy_every_2000_steps"]
    return {"final_greedy_mean_return": cart["final_greedy_mean_return"],
            "seeds.1.final_greedy_min_return": seeds["1"]["final_greedy_min_return"],
            "seeds.1.eval_returns": seeds["1"]["eval_returns"],
            "seeds.3.final_greedy_mean_return": seeds["3"]["final_greedy_mean_return"],
            "seeds.3.eval_returns": seeds["3"]["eval_returns"],
            "fix.final_greedy_mean_return": fix["final_greedy_mean_return"]}


@pytest.mark.slow
def test_experiment_reproduces_its_results(tmp_path, committed, measure):
    """Slow (16 minutes on one thread here): the whole experiment again, probes, three CartPole
    seeds with ARENA's hyper-parameters and the fix for the seed that missed. The headline holds
    (seed 1's final greedy policy averages ≥ 475 over 100 episodes). Counts that follow from the
    configuration (updates, target copies, evaluation steps) are exact. The returns come from
    500 000 float32 steps of a chaotic process: on the committing machine's kernels they repeat
    bit for bit, on others each run is another run, so they reproduce only up to the spread
    between the seeds at the same step (statistical: the largest seed-to-seed range of any
    recorded evaluation, 126); the number of solved seeds within one."""
    results = D.run_experiment(tmp_path)
    cart, then = results["cartpole"], committed["cartpole"]
    assert cart["final_greedy_mean_return"] >= D.SOLVED
    for key in ("n_updates", "n_target_syncs", "eval_steps"):
        for seed in then["seeds"]:
            assert cart["seeds"][seed][key] == then["seeds"][seed][key], (seed, key)
    curves = np.array([s["eval_returns"] for s in then["seeds"].values()])
    spread = float((curves.max(0) - curves.min(0)).max())
    worst = assert_reproduces(_cited(cart), _cited(then), statistical(spread, why="the seed-to-seed spread of a return"),
                              name="cartpole")
    assert_reproduces(cart["n_seeds_solved"], then["n_seeds_solved"], statistical(1, why="one seed may flip"),
                      name="n_seeds_solved")
    measure("slow.final_greedy_mean_return", cart["final_greedy_mean_return"], "≥ 475")
    measure("slow.cartpole.deviation_from_committed", worst, "≤ 1 (fraction of the tolerance)")
    measure("slow.train_seconds", cart["train_seconds"])
