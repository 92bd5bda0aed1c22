"""The gate of day 15: bandits, MDPs and value functions (ARENA 2.1 Intro to RL, part 1).

References: scipy.stats for the testbed's distributions (Kolmogorov–Smirnov, χ²) and scipy's
numerical integration for E[max of 10 normals]; torch.autograd for the gradient bandit's
expected step; Gymnasium's own FrozenLake/CliffWalking tables and step functions (the documented
slip rule, and Monte Carlo returns from the environment itself) for the MDPs; closed forms for
small hand-built MDPs. Behavioural bars (Sutton & Barto's Figures 2.2–2.5) are stated with their
source and a margin measured over 2000 problems.
"""

from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from scipy import integrate, stats

from checks import assert_parity
from checks.committed import assert_reproduces, float_ops

from . import bandits as B

HERE = Path(__file__).parent
LEFT, DOWN, RIGHT, UP = 0, 1, 2, 3  # FrozenLake's actions
CW_UP, CW_RIGHT, CW_DOWN, CW_LEFT = 0, 1, 2, 3  # CliffWalking's actions


# ---------------------------------------------------------------- the testbed


def test_testbed_draws_from_the_stated_distributions(measure):
    """Testbed: q*(a) ~ N(0, 1) and R − q*(A) ~ N(0, 1) (Kolmogorov–Smirnov against scipy's normal,
    p > 1e-3); best_arm is argmax q*, and the one-step regret is max q* − q*(A) (0 for the best arm)."""
    bed = B.KArmedTestbed(2000, seed=11)
    p_means = stats.kstest(bed.q_star.ravel(), "norm").pvalue
    actions = np.random.default_rng(0).integers(0, 10, 2000)
    noise = bed.pull(actions, np.random.default_rng(1)) - bed.q_star[np.arange(2000), actions]
    p_noise = stats.kstest(noise, "norm").pvalue
    measure("ks_pvalue.q_star", p_means, "> 1e-3")
    measure("ks_pvalue.reward_noise", p_noise, "> 1e-3")
    assert p_means > 1e-3 and p_noise > 1e-3
    assert np.array_equal(bed.best_arm, np.argmax(bed.q_star, axis=1))
    assert np.all(bed.regret(bed.best_arm) == 0)
    assert np.allclose(bed.regret(actions), bed.q_star.max(1) - bed.q_star[np.arange(2000), actions])
    shifted = B.KArmedTestbed(2000, seed=11, mean=4.0)
    assert shifted.q_star.mean() == pytest.approx(4.0, abs=5 / np.sqrt(20_000))


def test_oracle_earns_the_expected_maximum(measure):
    """The oracle has zero regret and earns E[max of 10 N(0, 1)] = ∫ x·10φ(x)Φ(x)⁹ dx (scipy quad)
    within 4 standard errors, and the module's constant is that integral (a float copied from a
    run of quad: float_ops over quad's weighted sum of its ~400 integrand values, ~16 roundings each)."""
    exact, _, info = integrate.quad(lambda x: x * 10 * stats.norm.pdf(x) * stats.norm.cdf(x) ** 9, -np.inf, np.inf,
                                    full_output=1)
    assert_reproduces(exact, B.EXPECTED_MAX_OF_10_NORMALS,
                      float_ops(info["neval"] + 16, why="a Gauss–Kronrod sum of the integrand's values"),
                      name="EXPECTED_MAX_OF_10_NORMALS")
    bed = B.KArmedTestbed(4000, seed=12)
    run = B.run_bandit(B.Oracle(bed), bed, 50, seed=0)
    per_problem = run.rewards.mean(axis=0)
    z = (per_problem.mean() - exact) / (per_problem.std(ddof=1) / np.sqrt(len(per_problem)))
    measure("oracle.z_vs_expected_max", z, "|z| < 4")
    assert abs(z) < 4 and run.regret.sum() == 0 and run.optimal.all()


def test_random_ties_are_broken_uniformly():
    """argmax_random_ties picks uniformly among tied maxima (χ² p > 1e-4) and never a non-maximum."""
    values = np.tile([1.0, 3.0, 0.0, 3.0, 3.0], (30_000, 1))
    picks = B.argmax_random_ties(values, np.random.default_rng(0))
    counts = np.bincount(picks, minlength=5)
    assert counts[0] == counts[2] == 0
    assert stats.chisquare(counts[[1, 3, 4]]).pvalue > 1e-4


# ---------------------------------------------------------------- the agents' update rules


def test_sample_average_estimate_is_the_mean_of_each_arms_rewards(measure):
    """ε-greedy's incremental rule Q ← Q + (R − Q)/N equals the plain mean of the rewards each arm
    received (numpy bincount), and arms never pulled keep their initial value."""
    bed = B.KArmedTestbed(5, k=8, seed=3)
    agent = B.EpsilonGreedy(1.0, initial=0.25)
    agent.reset(5, 8, np.random.default_rng(1))
    reward_rng = np.random.default_rng(2)
    actions, rewards = [], []
    for _ in range(40):
        a = agent.act()
        r = bed.pull(a, reward_rng)
        agent.observe(a, r)
        actions.append(a)
        rewards.append(r)
    actions, rewards = np.array(actions), np.array(rewards)
    worst = 0.0
    for p in range(5):
        counts = np.bincount(actions[:, p], minlength=8)
        sums = np.bincount(actions[:, p], weights=rewards[:, p], minlength=8)
        expected = np.where(counts > 0, sums / np.maximum(counts, 1), 0.25)
        worst = max(worst, assert_parity(agent.q[p], expected, atol=1e-12).max_abs_err)
        assert np.array_equal(agent.counts[p], counts)
    measure("sample_average.max_abs_err", worst, "≤ 1e-12")


def test_constant_step_size_is_an_exponential_recency_weighted_average():
    """With constant α: Q_n = (1 − α)ⁿ Q₀ + Σᵢ α (1 − α)ⁿ⁻ⁱ Rᵢ (Sutton & Barto eq. 2.6)."""
    alpha, q0 = 0.3, 2.0
    rewards = np.random.default_rng(0).normal(size=25)
    agent = B.EpsilonGreedy(0.0, initial=q0, step_size=alpha)
    agent.reset(1, 1, np.random.default_rng(0))
    for r in rewards:
        agent.observe(np.array([0]), np.array([r]))
    n = len(rewards)
    closed = (1 - alpha) ** n * q0 + sum(alpha * (1 - alpha) ** (n - i) * r for i, r in enumerate(rewards, 1))
    assert agent.q[0, 0] == pytest.approx(closed, abs=1e-12)


def test_ucb_scores_and_choices():
    """UCB: an untried arm first; otherwise argmax Q + c√(ln t / N) with t the step being taken, so
    a rarely pulled arm with a lower estimate can win (Q = (1, 0.5), N = (10, 1), t = 12, c = 2)."""
    agent = B.UCB(2.0)
    agent.reset(1, 2, np.random.default_rng(0))
    assert agent.act()[0] in (0, 1) and np.all(np.isinf(agent.scores()))
    agent.q[:] = [[1.0, 0.5]]
    agent.counts[:] = [[10, 1]]
    agent.t = 11
    t = 12
    expected = [1.0 + 2 * np.sqrt(np.log(t) / 10), 0.5 + 2 * np.sqrt(np.log(t) / 1)]
    assert np.allclose(agent.scores()[0], expected, atol=1e-12)
    assert agent.act()[0] == 1
    agent.counts[:] = [[10, 0]]
    assert agent.act()[0] == 1  # untried arm: infinite score


def test_ucb_tries_every_arm_once_first():
    """Over its first k steps UCB pulls each of the k arms exactly once, on every problem."""
    bed = B.KArmedTestbed(50, k=10, seed=4)
    agent = B.UCB(2.0)
    agent.reset(50, 10, np.random.default_rng(0))
    for _ in range(10):
        a = agent.act()
        agent.observe(a, bed.pull(a, np.random.default_rng(0)))
    assert np.all(agent.counts == 1)


def test_gradient_bandit_expected_step_is_the_gradient_of_expected_reward(measure):
    """Sutton & Barto §2.8: for any baseline B, E_{A~π}[α (q*(A) − B)(1_A − π)] = α ∇_H Σ_a π(a) q*(a).
    The right side by torch.autograd (float64), the left by averaging preference_step over actions."""
    rng = np.random.default_rng(0)
    k, alpha = 6, 0.2
    h, q = rng.normal(size=k), rng.normal(size=k)
    agent = B.GradientBandit(alpha)
    agent.reset(k, k, rng)
    agent.h[:] = h  # one row per possible action, all with the same preferences
    H = torch.tensor(h, requires_grad=True)
    (torch.softmax(H, 0) @ torch.tensor(q)).backward()
    assert_parity(agent.policy()[0], torch.softmax(H, 0).detach(), atol=1e-15)
    worst = 0.0
    for baseline in (0.0, 0.7, -3.0):
        steps = agent.preference_step(np.arange(k), q, np.full(k, baseline))  # row a: the step if A = a
        expected_step = agent.policy()[0] @ steps
        worst = max(worst, assert_parity(expected_step, alpha * H.grad, atol=1e-14, name=f"B={baseline}").max_abs_err)
    measure("gradient_bandit.max_abs_err", worst, "≤ 1e-14")


def test_gradient_bandit_samples_from_its_softmax_policy():
    """act() samples A ~ π = softmax(H): frequencies over 40 000 problems pass a χ² test (p > 1e-4)."""
    agent = B.GradientBandit(0.1)
    agent.reset(40_000, 4, np.random.default_rng(0))
    agent.h[:] = [1.0, -0.5, 0.0, 2.0]
    counts = np.bincount(agent.act(), minlength=4)
    assert stats.chisquare(counts, 40_000 * B.softmax(np.array([1.0, -0.5, 0.0, 2.0]))).pvalue > 1e-4


def test_gradient_bandit_baseline_is_the_mean_of_earlier_rewards():
    """The baseline is R̄ of the rewards before this step (R̄ = R on the first step, so the first
    update is zero); without a baseline the step is α R (1_A − π)."""
    agent = B.GradientBandit(0.5)
    agent.reset(1, 3, np.random.default_rng(0))
    agent.observe(np.array([0]), np.array([2.0]))
    assert np.all(agent.h == 0)
    agent.observe(np.array([1]), np.array([5.0]))
    assert np.allclose(agent.h[0], 0.5 * (5.0 - 2.0) * (np.array([0, 1, 0]) - 1 / 3))
    plain = B.GradientBandit(0.5, baseline=False)
    plain.reset(1, 3, np.random.default_rng(0))
    plain.observe(np.array([2]), np.array([2.0]))
    assert np.allclose(plain.h[0], 0.5 * 2.0 * (np.array([0, 0, 1]) - 1 / 3))


# ---------------------------------------------------------------- behaviour on the testbed


def test_testbed_reproduces_sutton_and_barto(measure):
    """Figures 2.2–2.4 of Sutton & Barto, on 1000 problems × 1000 steps: greedy plateaus near 1 (here
    0.9–1.2), ε = 0.1 finds the best arm ≥ 75% of the time late on and earns ≥ 0.2 more; optimistic
    greedy (Q₀ = 5) and UCB (c = 2) beat ε = 0.1; nothing beats E[max q*]."""
    bed = B.KArmedTestbed(1000, seed=10)
    agents = {a.key: a for a in B.testbed_agents(bed)}
    names = ["greedy", "eps_0p1", "optimistic_greedy", "ucb_c2"]
    summary = B.bandit_summary({n: B.run_bandit(agents[n], bed, 1000, seed=11) for n in names})
    greedy, eps, optimistic, ucb = (summary[n] for n in names)
    measure("greedy.mean_reward_last_100", greedy["mean_reward_last"], "0.9 – 1.2")
    measure("eps_0.1.optimal_fraction_last_100", eps["optimal_fraction_last"], "≥ 0.75")
    measure("ucb.mean_reward_last_100", ucb["mean_reward_last"])
    assert 0.9 < greedy["mean_reward_last"] < 1.2
    assert eps["optimal_fraction_last"] >= 0.75
    assert eps["mean_reward_last"] > greedy["mean_reward_last"] + 0.2
    assert optimistic["optimal_fraction_last"] > eps["optimal_fraction_last"]
    assert ucb["mean_reward_last"] > eps["mean_reward_last"]
    assert ucb["cumulative_regret"] < eps["cumulative_regret"] < greedy["cumulative_regret"]
    assert max(s["mean_reward_last"] for s in summary.values()) < bed.best.mean()


def test_epsilon_greedy_regret_grows_linearly_at_the_exploration_cost(measure):
    """ε-greedy keeps exploring, so its regret grows linearly: once the best arm is known, each step
    costs ε·(max q* − mean q*) in expectation (exact for this testbed); measured over steps
    2000–4000 the slope is within [0.9, 1.25]× that cost, while UCB's slope is under a third of it."""
    bed = B.KArmedTestbed(200, seed=6)
    eps = B.run_bandit(B.EpsilonGreedy(0.1), bed, 4000, seed=7)
    ucb = B.run_bandit(B.UCB(2.0), bed, 4000, seed=7)
    cost = 0.1 * (bed.best - bed.q_star.mean(axis=1)).mean()
    slope_eps = eps.regret[2000:].mean()
    slope_ucb = ucb.regret[2000:].mean()
    measure("eps_0.1.regret_slope_over_exploration_cost", slope_eps / cost, "0.9 – 1.25")
    measure("ucb.regret_slope_over_eps_cost", slope_ucb / cost, "< 1/3")
    assert 0.9 * cost < slope_eps < 1.25 * cost
    assert slope_ucb < cost / 3


# ---------------------------------------------------------------- MDPs from Gymnasium's tables


def test_frozen_lake_table_follows_the_documented_slip_rule():
    """Slippery FrozenLake moves in the intended direction or either perpendicular one, 1/3 each
    (Gymnasium's docs): from the corner, LEFT stays with 2/3 (left and up hit walls) and goes down
    with 1/3. Rows of T sum to 1; holes and the goal are terminal (absorbing, value 0); the only
    reward is +1 for entering the goal."""
    env = gym.make("FrozenLake-v1")
    mdp = B.mdp_from_gymnasium(env, 0.9)
    assert mdp.T.shape == (16, 4, 16)
    assert np.allclose(mdp.T.sum(axis=2), 1.0)
    assert mdp.T[0, LEFT, 0] == pytest.approx(2 / 3) and mdp.T[0, LEFT, 4] == pytest.approx(1 / 3)
    assert mdp.T[0, RIGHT, 1] == pytest.approx(1 / 3) and mdp.T[0, RIGHT, 4] == pytest.approx(1 / 3)
    desc = env.unwrapped.desc.astype(str).ravel()
    assert np.array_equal(np.flatnonzero(mdp.terminal), np.flatnonzero(np.isin(desc, ["H", "G"])))
    goal = int(np.flatnonzero(desc == "G")[0])
    entering = (mdp.T[:, :, goal] > 0) & ~mdp.terminal[:, None]
    assert np.flatnonzero(entering.any(axis=1)).tolist() == [14]  # 11, its other neighbour, is a hole
    assert entering[14].tolist() == [False, True, True, True] and np.all(mdp.R[:, :, goal][entering] == 1)
    assert np.delete(mdp.R, goal, axis=2).max() == 0
    assert mdp.T[goal, :, goal].min() == 1 and mdp.R[goal].max() == 0


def test_cliff_walking_table():
    """CliffWalking: stepping right from the start into the cliff costs −100 and returns to the start
    (not terminal); stepping down into the goal costs −1 and ends the episode, so the goal is made
    absorbing although Gymnasium's table would let it move on."""
    mdp = B.mdp_from_gymnasium(gym.make("CliffWalking-v1"), 1.0)
    start, goal = 36, 47
    assert mdp.T[start, CW_RIGHT, start] == 1 and mdp.R[start, CW_RIGHT, start] == -100
    assert mdp.T[35, CW_DOWN, goal] == 1 and mdp.R[35, CW_DOWN, goal] == -1
    assert np.flatnonzero(mdp.terminal).tolist() == [goal]
    assert mdp.T[goal, CW_UP, goal] == 1


def test_inconsistent_termination_is_rejected():
    """A state that is terminal on some transitions into it and not on others cannot be made
    absorbing: mdp_from_gymnasium raises a ValueError instead of guessing."""
    P = {0: {0: [(1.0, 1, 0.0, True)]}, 1: {0: [(1.0, 1, 0.0, False)]}}
    with pytest.raises(ValueError, match="terminal on some"):
        B.mdp_from_gymnasium(SimpleNamespace(unwrapped=SimpleNamespace(P=P)), 0.9)


# ---------------------------------------------------------------- policy evaluation


def _hand_mdp(T, R, gamma, terminal=None):
    T, R = np.array(T, dtype=float), np.array(R, dtype=float)
    return B.TabularMDP(T, R, gamma, np.zeros(len(T), bool) if terminal is None else np.array(terminal))


@pytest.mark.parametrize("gamma", [0.5, 0.9, 0.99])
def test_policy_evaluation_closed_forms(gamma):
    """Hand-solved MDPs, by both methods: a self-loop paying 1 is worth 1/(1 − γ); a two-state cycle
    paying 1 then 0 is worth 1/(1 − γ²) and γ/(1 − γ²); a chain s0 →(1) s1 →(2) terminal is worth
    1 + 2γ and 2 (also at γ = 1, where only terminal states make the system solvable)."""
    loop = _hand_mdp([[[1.0]]], [[[1.0]]], gamma)
    cycle = _hand_mdp([[[0, 1]], [[1, 0]]], [[[0, 1]], [[0, 0]]], gamma)
    chain = _hand_mdp([[[0, 1, 0]], [[0, 0, 1]], [[0, 0, 1]]], [[[0, 1, 0]], [[0, 0, 2]], [[0, 0, 0]]], gamma,
                      [False, False, True])
    chain_undiscounted = B.TabularMDP(chain.T, chain.R, 1.0, chain.terminal)
    cases = [(loop, [1 / (1 - gamma)]), (cycle, [1 / (1 - gamma**2), gamma / (1 - gamma**2)]),
             (chain, [1 + 2 * gamma, 2, 0]), (chain_undiscounted, [3, 2, 0])]
    for mdp, expected in cases:
        policy = np.zeros(mdp.n_states, dtype=int)
        assert_parity(B.policy_evaluation_exact(mdp, policy), expected, atol=1e-10, rtol=1e-12)
        assert_parity(B.policy_evaluation_iterative(mdp, policy, tol=1e-13)[0], expected, atol=1e-9, rtol=1e-9)


ENVS = [("FrozenLake-v1", {}, 0.95), ("FrozenLake8x8-v1", {}, 0.99), ("CliffWalking-v1", {}, 0.9)]


@pytest.mark.parametrize("env_id, kwargs, gamma", ENVS, ids=[e[0] for e in ENVS])
def test_exact_and_iterative_policy_evaluation_agree(env_id, kwargs, gamma, measure):
    """The linear solve (I − γP_π)V = r_π and the fixed point of V ← r_π + γP_πV agree (max-norm
    1e-9 with an iteration tolerance of 1e-12; the error left after stopping is at most
    γ/(1 − γ)·1e-12 ≈ 1e-10); V satisfies the Bellman equation and V(s) = Σ_a π(a|s) Q(s, a)."""
    mdp = B.mdp_from_gymnasium(gym.make(env_id, **kwargs), gamma)
    rng = np.random.default_rng(0)
    pi = rng.dirichlet(np.ones(mdp.n_actions), size=mdp.n_states)
    exact = B.policy_evaluation_exact(mdp, pi)
    iterative, history = B.policy_evaluation_iterative(mdp, pi, tol=1e-12)
    report = assert_parity(iterative, exact, atol=1e-9, name=env_id)
    measure(f"{env_id}.iterative_vs_exact.max_abs_err", report.max_abs_err, "≤ 1e-9")
    measure(f"{env_id}.iterations", len(history) - 1)
    P_pi, r_pi = B.policy_dynamics(mdp, pi)
    assert np.abs(B.bellman_expectation_backup(mdp, P_pi, r_pi, exact) - exact).max() < 1e-10
    assert_parity((pi * mdp.q_from_v(exact)).sum(axis=1), exact, atol=1e-10)


def test_iterative_evaluation_is_a_gamma_contraction(measure):
    """‖V_{k+1} − V_π‖∞ ≤ γ‖V_k − V_π‖∞ at every step (Banach's fixed-point bound), on FrozenLake 8×8
    with γ = 0.9 from a random start."""
    mdp = B.mdp_from_gymnasium(gym.make("FrozenLake8x8-v1"), 0.9)
    pi = np.full((mdp.n_states, mdp.n_actions), 0.25)
    exact = B.policy_evaluation_exact(mdp, pi)
    V0 = np.where(mdp.terminal, 0.0, np.random.default_rng(1).normal(size=mdp.n_states) * 10)
    _, history = B.policy_evaluation_iterative(mdp, pi, tol=1e-12, V0=V0)
    errors = np.array([np.abs(V - exact).max() for V in history])
    ratios = errors[1:] / errors[:-1]
    useful = errors[:-1] > 1e-9  # below that, rounding dominates the ratio
    measure("contraction.max_ratio", ratios[useful].max(), "≤ γ = 0.9")
    assert np.all(ratios[useful] <= 0.9 + 1e-12)


def test_monte_carlo_returns_in_gymnasium_match_the_exact_value(measure):
    """The exact V_π(start) of the uniform policy on slippery FrozenLake (γ = 1: the probability of
    ever reaching the goal) equals the mean return of 4 000 episodes run by Gymnasium's own step
    function, within 4 standard errors; the standard error is that of a mean of 0/1 returns."""
    env = gym.make("FrozenLake-v1")
    mdp = B.mdp_from_gymnasium(env, 1.0)
    pi = np.full((16, 4), 0.25)
    exact = B.policy_evaluation_exact(mdp, pi)[0]
    mean, se = B.monte_carlo_value(env, pi, 1.0, 4_000, seed=3)
    # γ = 1 and a 0/1 reward at the goal: each return is 0 or 1, so Σ(G − m)² = n·m(1 − m) and the
    # standard error std_{ddof=1} / √n is exactly √(m(1 − m) / (n − 1)) for the sample mean m
    assert se == pytest.approx(np.sqrt(mean * (1 - mean) / (4_000 - 1)), rel=1e-9)
    z = (mean - exact) / se
    measure("frozen_lake.exact_start_value", exact)
    measure("frozen_lake.monte_carlo_z", z, "|z| < 4")
    assert abs(z) < 4


def test_policy_matrix_validation():
    """A deterministic policy becomes its one-hot matrix; a malformed stochastic one is a ValueError."""
    assert np.array_equal(B.as_policy_matrix([2, 0], 2, 3), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match="matrix of probabilities"):
        B.as_policy_matrix(np.full((2, 3), 0.5), 2, 3)


def test_bandit_summary_by_hand():
    """bandit_summary: the mean reward and the optimal-action fraction over the last ``last`` steps
    (all problems), and the cumulative regret — each problem's regret summed over the run, averaged
    over the problems (the post's "cumulative regret (mean of … problems)"). By hand, 3 steps × 2
    problems: regret rows (1, 0), (2, 1), (0, 3) → totals (3, 4) → 3.5; the last 2 steps' rewards
    (2, 4, 6, 8) → 5 and optimal flags (T, F, T, T) → 0.75."""
    run = B.BanditRun(rewards=np.array([[0.0, 1.0], [2.0, 4.0], [6.0, 8.0]]),
                      optimal=np.array([[False, False], [True, False], [True, True]]),
                      regret=np.array([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]]))
    assert B.bandit_summary({"a": run}, last=2) == {"a": {"mean_reward_last": 5.0, "optimal_fraction_last": 0.75,
                                                          "cumulative_regret": 3.5}}


def test_results_json_is_current(committed, measure):
    """The post's policy-evaluation numbers are recomputed now (exact V of the uniform policy on
    FrozenLake, the iteration count, exact-vs-iterative agreement); the recorded testbed runs show
    what the post says (the same orderings as the behaviour test); the figures exist. V is one
    LU solve of (I − γP_π) V = r_π on the 11 live states: ~11 roundings per entry, amplified by
    κ∞(I − γP_π) ≤ (1 + γ)/(1 − γ) = 19 for a stochastic P_π, relative to max|V|. The iteration
    count is exact: the stopping test max|ΔV| < 1e-12 is passed and failed with margins far above
    the rounding of ΔV (≈ u·max|V| ≈ 1e-16)."""
    results = committed
    lake = results["frozen_lake"]
    mdp = B.mdp_from_gymnasium(gym.make("FrozenLake-v1"), lake["gamma"])
    pi = np.full((16, 4), 0.25)
    V = B.policy_evaluation_exact(mdp, pi)
    kappa = (1 + lake["gamma"]) / (1 - lake["gamma"])
    live = int((~mdp.terminal).sum())
    n = live * round(kappa)
    solve = float_ops(n, why=f"a {live}×{live} LU solve, κ∞ ≤ {kappa:.0f}, relative to max|V|",
                      abs=float_ops(n).rel * np.abs(V).max())
    worst = assert_reproduces(V, lake["V_exact"], solve, name="V_exact")
    measure("frozen_lake.V_exact.deviation_from_committed", worst, "≤ 1 (fraction of the tolerance)")
    _, history = B.policy_evaluation_iterative(mdp, pi, tol=1e-12)
    steps = [np.abs(b - a).max() for a, b in zip(history[:-1], history[1:])]
    assert steps[-2] > 1e-12 * (1 + 1e-3) and steps[-1] < 1e-12 * (1 - 1e-3)  # the margin of the count
    assert len(history) - 1 == lake["iterations"]
    assert lake["max_abs_diff_exact_vs_iterative"] < 1e-10 and abs(lake["z_monte_carlo_vs_exact"]) < 4
    recorded = results["testbed"]["agents"]
    assert recorded["ucb_c2"]["cumulative_regret"] < recorded["eps_0p1"]["cumulative_regret"] < recorded["greedy"]["cumulative_regret"]
    assert recorded["optimistic_greedy"]["optimal_fraction_last"] > recorded["eps_0p1"]["optimal_fraction_last"]
    long = results["regret_10k"]["agents"]
    assert long["ucb_c2"]["cumulative_regret"] < long["eps_0p01"]["cumulative_regret"] < long["eps_0p1"]["cumulative_regret"]
    shifted = results["gradient_mean_4"]["agents"]  # Sutton & Barto Figure 2.5: without a baseline,
    for alpha in ("0p1", "0p4"):                    # q* ~ N(4, 1) cripples the gradient bandit
        with_baseline = shifted[f"gradient_a{alpha}"]["optimal_fraction_last"]
        assert with_baseline > shifted[f"gradient_a{alpha}_no_baseline"]["optimal_fraction_last"] + 0.2
    for name in ("testbed", "regret", "gradient_baseline", "policy_evaluation"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
    measure("frozen_lake.iterations", lake["iterations"])
