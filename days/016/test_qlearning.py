"""The gate of day 16: Q-learning and SARSA on Gymnasium's toy-text environments (ARENA 2.1 Intro
to RL, part 2).

References: day 17's value iteration on Gymnasium's own transition tables (``env.unwrapped.P``,
via day 15) gives Q*; day 15's exact policy evaluation gives the uniform policy's values; the
update rules are checked on hand-computed numbers; CliffWalking's optimal path (13 steps, −13) is
hand-counted. The learning runs use Sutton & Barto's Example 6.6 settings and fixed seeds.
"""

import importlib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from scipy import stats

from checks import assert_parity

from . import qlearning as L

bandits = importlib.import_module("days.015.bandits")
planning = importlib.import_module("days.017.policy_iter")
HERE = Path(__file__).parent
UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3  # CliffWalking's actions


def cliff_mdp():
    return bandits.mdp_from_gymnasium(gym.make("CliffWalking-v1"), 1.0)


def test_td_targets_and_update_by_hand():
    """Q-learning's target is r + γ max_a' Q(s', a'), SARSA's r + γ Q(s', a') for the action taken,
    both just r at a terminal transition; the update moves Q(s, a) a fraction α towards the target.
    With Q(s', ·) = (1, 4, −2), r = 0.5, γ = 0.9: Q-learning 0.5 + 3.6 = 4.1; SARSA with a' = 2:
    0.5 − 1.8 = −1.3; α = 0.25 from Q(s, a) = 2 towards 4.1 gives 2.525."""
    Q = np.array([[2.0, 0.0, 0.0], [1.0, 4.0, -2.0]])
    assert L.q_learning_target(Q, 0.5, 1, False, 0.9) == pytest.approx(4.1)
    assert L.sarsa_target(Q, 0.5, 1, 2, False, 0.9) == pytest.approx(-1.3)
    assert L.q_learning_target(Q, 0.5, 1, True, 0.9) == 0.5
    assert L.sarsa_target(Q, 0.5, 1, 2, True, 0.9) == 0.5
    L.td_update(Q, 0, 0, 4.1, 0.25)
    assert Q[0, 0] == pytest.approx(2.525)


def test_epsilon_greedy_action_probabilities():
    """ε-greedy picks each action with ε/|A|, plus (1 − ε)/(number of tied maxima) for each maximum:
    for Q = (1, 3, 3, 0) and ε = 0.3, probabilities (0.075, 0.425, 0.425, 0.075), χ² p > 1e-4."""
    rng = np.random.default_rng(0)
    q_row = np.array([1.0, 3.0, 3.0, 0.0])
    counts = np.bincount([L.epsilon_greedy_action(q_row, 0.3, rng) for _ in range(20_000)], minlength=4)
    assert stats.chisquare(counts, 20_000 * np.array([0.075, 0.425, 0.425, 0.075])).pvalue > 1e-4


def test_q_learning_is_exact_value_iteration_on_deterministic_frozen_lake(measure):
    """Theory: in a deterministic MDP, Q-learning with α = 1 performs exact Bellman optimality backups
    (asynchronous value iteration), and being off-policy it converges to Q* under any behaviour that
    visits every pair. After 1 000 uniformly random episodes on non-slippery FrozenLake (γ = 0.9),
    Q equals day 17's Q* on every non-terminal (s, a) to 1e-12."""
    env = gym.make("FrozenLake-v1", is_slippery=False)
    mdp = bandits.mdp_from_gymnasium(env, 0.9)
    Q_star = mdp.q_from_v(planning.value_iteration(mdp, theta=1e-14).V)
    run = L.train(env, "q_learning", 1_000, alpha=1.0, epsilon=1.0, gamma=0.9, seed=0)
    live = ~mdp.terminal
    assert run.visits[live].min() > 0
    report = assert_parity(run.Q[live], Q_star[live], atol=1e-12, name="Q vs Q*")
    measure("deterministic_frozen_lake.max_abs_err", report.max_abs_err, "≤ 1e-12")
    assert np.all(run.Q[mdp.terminal] == 0)


def test_truncation_is_not_termination():
    """A time limit ends the episode but not the MDP, so the target keeps γ max Q(s'). CliffWalking
    cut to 1 step, α = 1, random actions: bumping LEFT from the start (back into the start) must
    learn Q = −1 + max_a Q(start, a) = −1 + (−1) = −2, where treating the cut as terminal gives −1."""
    env = gym.make("CliffWalking-v1", max_episode_steps=1)
    run = L.train(env, "q_learning", 300, alpha=1.0, epsilon=1.0, gamma=1.0, seed=0)
    start = 36
    assert run.lengths == [1] * 300
    assert run.Q[start, UP] == -1.0
    assert run.Q[start, LEFT] == -2.0 and run.Q[start, DOWN] == -2.0


def test_epsilon_soft_value_iteration_limits():
    """Q_ε interpolates between the two things day 15 and day 17 compute: ε = 0 is Q* (value
    iteration) and ε = 1 is the action-value of the uniformly random policy (exact linear solve),
    to 1e-8 on CliffWalking with γ = 0.9; at γ = 1, ε = 0.1's greedy path runs 2 rows above the
    cliff: 15 steps, −15."""
    mdp = bandits.mdp_from_gymnasium(gym.make("CliffWalking-v1"), 0.9)
    V_star = planning.value_iteration(mdp, theta=1e-12).V
    assert_parity(L.epsilon_soft_value_iteration(mdp, 0.0, theta=1e-12), mdp.q_from_v(V_star), atol=1e-8)
    uniform = np.full((mdp.n_states, 4), 0.25)
    V_uniform = bandits.policy_evaluation_exact(mdp, uniform)
    assert_parity(L.epsilon_soft_value_iteration(mdp, 1.0, theta=1e-12), mdp.q_from_v(V_uniform), atol=1e-8)
    mdp = cliff_mdp()
    Q_eps = L.epsilon_soft_value_iteration(mdp, 0.1)
    path = L.greedy_path(mdp, Q_eps, 36)
    assert L.path_return(mdp, Q_eps, 36) == -15.0
    assert path == [36, 24, 12] + list(range(13, 24)) + [35, 47]


@pytest.fixture(scope="module")
def cliff_seed0():
    """Seed 0 of the experiment's Sutton & Barto runs (α = 0.5, ε = 0.1, 500 episodes)."""
    return L.cliff_runs(n_runs=1)


def test_q_learning_learns_the_optimal_cliff_path(cliff_seed0, measure):
    """Q-learning's greedy policy after 500 episodes walks the 13-step path along the cliff edge,
    the path of day 17's Q* from value iteration, with return V*(start) = −13."""
    mdp = cliff_mdp()
    Q_star = mdp.q_from_v(planning.value_iteration(mdp).V)
    run = cliff_seed0["q_learning"][0]
    assert L.greedy_path(mdp, run.Q, 36) == L.greedy_path(mdp, Q_star, 36) == [36, 24] + list(range(25, 36)) + [47]
    assert L.path_return(mdp, run.Q, 36) == -13.0 == pytest.approx(Q_star[36].max())
    measure("cliff.q_learning.greedy_return", L.path_return(mdp, run.Q, 36), "= −13")


def test_sarsa_keeps_away_from_the_edge_and_earns_more_while_exploring(cliff_seed0, measure):
    """Sutton & Barto Example 6.6: SARSA's greedy path never walks the row next to the cliff
    (return ≤ −15), yet during ε-greedy training SARSA earns more than Q-learning, whose
    exploratory steps off the edge cost −100 (mean return over the last 100 episodes)."""
    mdp = cliff_mdp()
    sarsa, q = cliff_seed0["sarsa"][0], cliff_seed0["q_learning"][0]
    path = L.greedy_path(mdp, sarsa.Q, 36)
    assert not set(path) & set(range(25, 35))  # the edge row, columns 1–10
    assert L.path_return(mdp, sarsa.Q, 36) <= -15
    online_sarsa, online_q = np.mean(sarsa.returns[-100:]), np.mean(q.returns[-100:])
    measure("cliff.sarsa.online_return_last_100", online_sarsa)
    measure("cliff.q_learning.online_return_last_100", online_q)
    assert online_sarsa > online_q + 10


def test_unknown_method_is_rejected():
    """train names its two methods; anything else is a ValueError."""
    with pytest.raises(ValueError, match="sarsa"):
        L.train(gym.make("CliffWalking-v1"), "expected_sarsa", 1)


def test_results_json_is_current(committed, cliff_seed0):
    """The post's CliffWalking numbers: seed 0's greedy paths equal results.json's; the planned
    paths (Q*: −13, Q_ε: −15) are recomputed; the recorded decaying-α runs satisfy the slow test's
    claims; the figures exist. The paths are compared exactly: the constant-α runs are scalar
    float64 updates (IEEE operations, correctly rounded on every CPU, with exact tie tests), and
    every step of the three paths is an argmax whose best action leads by at least 0.85."""
    results = committed["cliff"]
    mdp = cliff_mdp()

    def margin(Q, path):  # how far each greedy choice along the path is from a tie
        return min(np.diff(np.sort(Q[s]))[-1] for s in path[:-1])

    for method in ("sarsa", "q_learning"):
        Q = cliff_seed0[method][0].Q
        path = L.greedy_path(mdp, Q, 36)
        assert path == results[method]["constant_alpha"]["seed0_greedy_path"] and margin(Q, path) > 0.5
    assert results["optimal_return"] == -13.0 and results["epsilon_soft_path_return"] == -15.0
    Q_eps = L.epsilon_soft_value_iteration(mdp, 0.1)
    path = L.greedy_path(mdp, Q_eps, 36)
    assert results["epsilon_soft_path"] == path and margin(Q_eps, path) > 0.5
    _check_decaying_alpha_claims(results)
    for name in ("cliff_walking", "slippery_convergence"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000


def _check_decaying_alpha_claims(cliff: dict) -> None:
    """Q-learning (off-policy, → Q*) ends on the optimal −13 path on every seed, with Q(start, UP)
    within 0.05 of Q*'s −13. SARSA (on-policy, fixed point Q_ε) ends on a safe path on every seed
    (−15 or −17: never along the edge, never a loop), on Q_ε's −15 path on most, and the exact value
    of its ε-greedy policy (day 15's linear solve) is within 1 of the best ε-soft value V_ε(start)
    (the gap between the two safe routes), and above Q-learning's ε-greedy policy's."""
    n = cliff["long_runs"]
    q, sarsa = cliff["q_learning"]["decaying_alpha"], cliff["sarsa"]["decaying_alpha"]
    assert q["greedy_path_return_counts"] == {"-13": n}
    assert np.allclose(q["start_up_q"], cliff["q_star_start_up"], atol=0.05)
    assert set(sarsa["greedy_path_return_counts"]) <= {"-15", "-17"}
    assert sarsa["greedy_path_return_counts"].get("-15", 0) > n / 2
    assert np.all(np.abs(np.array(sarsa["epsilon_greedy_value_start"]) - cliff["v_eps_start"]) < 1.0)
    assert max(q["epsilon_greedy_value_start"]) < min(sarsa["epsilon_greedy_value_start"])


@pytest.mark.slow
def test_experiment_learns_the_planned_optima(tmp_path, measure):
    """Slow: with Robbins–Monro step sizes (10 000 episodes, 5 seeds) each method heads for its own
    planned optimum (see _check_decaying_alpha_claims); on slippery FrozenLake Q-learning's greedy
    policy is optimal in every state by 40 000 episodes and max |Q − Q*| has more than halved."""
    results = L.run_experiment(tmp_path)
    cliff = results["cliff"]
    _check_decaying_alpha_claims(cliff)
    sarsa = cliff["sarsa"]["decaying_alpha"]
    measure("slow.sarsa_seeds_on_the_q_eps_path", sarsa["greedy_path_return_counts"].get("-15", 0))
    measure("slow.sarsa_value_gap_to_v_eps", max(abs(v - cliff["v_eps_start"]) for v in sarsa["epsilon_greedy_value_start"]), "< 1")
    rows = results["slippery"]["checkpoints"]
    measure("slow.slippery.final_max_abs_q_error", rows[-1]["max_abs_q_error"])
    assert rows[-1]["n_suboptimal_states"] == 0 and rows[-1]["greedy_value_gap_max"] < 1e-9
    assert rows[-1]["max_abs_q_error"] < rows[0]["max_abs_q_error"] / 2
