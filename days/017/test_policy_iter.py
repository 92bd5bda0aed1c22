"""The gate of day 17: policy iteration and value iteration (ARENA 2.1 Intro to RL).

References: Russell & Norvig's published optimal utilities and policy for their 4×3 world (AIMA
3rd ed., Figures 17.2–17.3, three decimals); the linear-programming formulation of the optimal
value function solved by scipy.optimize.linprog (HiGHS), a method that shares no code with either
iteration; Gymnasium's own transition tables and step function (Monte Carlo success rate of the
optimal FrozenLake policy); CliffWalking's hand-counted shortest path.
"""

import importlib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from scipy.optimize import linprog

from checks import assert_parity
from checks.committed import assert_reproduces, exact, float_ops, iterated

from . import policy_iter as P

bandits = importlib.import_module("days.015.bandits")
HERE = Path(__file__).parent

# AIMA Figure 17.3: utilities of the 4×3 world (γ = 1, R = −0.04), rows top to bottom, None = wall/terminal.
AIMA_UTILITIES = [[0.812, 0.868, 0.918, None],
                  [0.762, None, 0.660, None],
                  [0.705, 0.655, 0.611, 0.388]]
# AIMA Figure 17.2(a): the optimal policy for R(s) = −0.04.
AIMA_POLICY = [["→", "→", "→", None],
               ["↑", None, "↑", None],
               ["↑", "←", "←", "←"]]


def lp_optimal_values(mdp) -> np.ndarray:
    """V* as the linear program min Σ_s V(s) s.t. V(s) ≥ r(s, a) + γ Σ_s' T[s, a, s'] V(s') for all
    non-terminal s and all a (terminal states: V = 0), solved by scipy's HiGHS."""
    live = np.flatnonzero(~mdp.terminal)
    r = mdp.expected_reward()
    rows, rhs = [], []
    for i, s in enumerate(live):
        for a in range(mdp.n_actions):
            row = -(np.eye(len(live))[i] - mdp.gamma * mdp.T[s, a, live])
            rows.append(row)
            rhs.append(-r[s, a])
    solution = linprog(np.ones(len(live)), A_ub=np.array(rows), b_ub=np.array(rhs), bounds=(None, None), method="highs")
    assert solution.status == 0, solution.message
    V = np.zeros(mdp.n_states)
    V[live] = solution.x
    return V


def test_gridworld_dynamics_follow_the_slip_models():
    """AIMA's world: UP from the bottom-left corner goes up with 0.8, right with 0.1 and bumps into
    the left edge (stays) with 0.1. ARENA's Norvig: 0.7 intended and 0.1 to each other direction,
    so UP there also stays with 0.2 (left and down bump). Rows of T sum to 1; a step costs −0.04;
    entering +1 or −1 also pays it and ends the episode; the wall is not a state."""
    aima, arena = P.aima_gridworld(), P.arena_norvig()
    corner, above, right = aima.index((2, 0)), aima.index((1, 0)), aima.index((2, 1))
    m = aima.mdp(1.0)
    assert len(aima.cells) == 11 and m.T.shape == (11, 4, 11)
    assert np.allclose(m.T.sum(axis=2), 1.0)
    assert m.T[corner, P.UP, above] == pytest.approx(0.8)
    assert m.T[corner, P.UP, right] == pytest.approx(0.1) and m.T[corner, P.UP, corner] == pytest.approx(0.1)
    n = arena.mdp(0.99)
    assert n.T[corner, P.UP, above] == pytest.approx(0.7)
    assert n.T[corner, P.UP, right] == pytest.approx(0.1) and n.T[corner, P.UP, corner] == pytest.approx(0.2)
    goal, pit, beside = aima.index((0, 3)), aima.index((1, 3)), aima.index((0, 2))
    assert m.R[beside, P.RIGHT, goal] == pytest.approx(1 - 0.04) and m.R[corner, P.UP, above] == pytest.approx(-0.04)
    assert m.R[aima.index((1, 2)), P.RIGHT, pit] == pytest.approx(-1 - 0.04)
    assert m.terminal.tolist() == [c in aima.terminals for c in aima.cells]
    with pytest.raises(ValueError, match="slip model"):
        P.GridWorld(slip="diagonal").mdp(0.9)


def test_value_iteration_reproduces_aimas_published_utilities_and_policy(measure):
    """Value iteration on AIMA's world (γ = 1) gives the utilities of AIMA Figure 17.3 to their
    three printed decimals (|error| ≤ 5e-4 + 1e-6) and the policy of Figure 17.2(a)."""
    world = P.aima_gridworld()
    result = P.value_iteration(world.mdp(1.0))
    grid = world.as_grid(result.V)
    arrows = world.as_grid([P.ARROWS[int(a)] for a in result.policy])
    worst = 0.0
    for r in range(3):
        for c in range(4):
            if AIMA_UTILITIES[r][c] is not None:
                worst = max(worst, abs(grid[r, c] - AIMA_UTILITIES[r][c]))
            if AIMA_POLICY[r][c] is not None:
                assert arrows[r, c] == AIMA_POLICY[r][c], (r, c)
    measure("aima.max_abs_err_vs_published", worst, "≤ 5e-4 (rounding)")
    assert worst <= 5e-4 + 1e-6


PLANNING_CASES = {
    "aima_gamma_1": lambda: P.aima_gridworld().mdp(1.0),
    "arena_norvig_gamma_0.99": lambda: P.arena_norvig().mdp(0.99),
    "frozen_lake_4x4_gamma_0.95": lambda: bandits.mdp_from_gymnasium(gym.make("FrozenLake-v1"), 0.95),
    "frozen_lake_8x8_gamma_0.99": lambda: bandits.mdp_from_gymnasium(gym.make("FrozenLake8x8-v1"), 0.99),
    "cliff_walking_gamma_0.9": lambda: bandits.mdp_from_gymnasium(gym.make("CliffWalking-v1"), 0.9),
}


@pytest.mark.parametrize("name", PLANNING_CASES)
def test_policy_and_value_iteration_reach_the_lp_optimum(name, measure):
    """Both methods reach the same V* (max-norm 1e-8), which equals the linear program's solution
    (1e-7: HiGHS's feasibility tolerance), and their policies pick optimal actions in every state
    (within 1e-8 of max_a Q*), equal action for action under the shared tie-break."""
    mdp = PLANNING_CASES[name]()
    vi, pi = P.value_iteration(mdp, theta=1e-12), P.policy_iteration(mdp)
    report = assert_parity(vi.V, pi.V, atol=1e-8, name=name)
    lp = assert_parity(pi.V, lp_optimal_values(mdp), atol=1e-7, name=f"{name} vs LP")
    measure(f"{name}.vi_vs_pi.max_abs_err", report.max_abs_err, "≤ 1e-8")
    measure(f"{name}.pi_vs_lp.max_abs_err", lp.max_abs_err, "≤ 1e-7")
    measure(f"{name}.iterations_vi_pi", f"{vi.iterations} / {pi.iterations}")
    optimal = P.optimal_action_sets(mdp, pi.V)
    for s in range(mdp.n_states):
        assert int(vi.policy[s]) in optimal[s] and int(pi.policy[s]) in optimal[s]
    assert np.array_equal(vi.policy, pi.policy)
    assert np.abs(P.bellman_optimality_backup(mdp, pi.V) - pi.V).max() < 1e-9


def test_policy_improvement_is_monotone(measure):
    """Policy improvement theorem: V_{π_{k+1}} ≥ V_{π_k} in every state (to 1e-12), strictly
    somewhere until the last iteration; on FrozenLake 8×8 from a uniformly random initial policy."""
    mdp = bandits.mdp_from_gymnasium(gym.make("FrozenLake8x8-v1"), 0.99)
    start = np.random.default_rng(0).integers(0, 4, mdp.n_states)
    result = P.policy_iteration(mdp, policy0=start)
    for before, after in zip(result.values[:-1], result.values[1:]):
        assert np.all(after >= before - 1e-12)
        assert np.any(after > before + 1e-12)
    measure("frozen_lake_8x8.pi_iterations_from_random", result.iterations)


def test_value_iterations_greedy_policy_settles_long_before_its_values(measure):
    """On FrozenLake 8×8 (γ = 0.99) value iteration's greedy policy is optimal from some iteration on
    and stays optimal at every later iteration, and that iteration comes well before (under a third
    of) the iterations the values need to reach θ = 1e-10."""
    mdp = bandits.mdp_from_gymnasium(gym.make("FrozenLake8x8-v1"), 0.99)
    result = P.value_iteration(mdp)
    optimal = P.optimal_action_sets(mdp, result.V)
    ok = [all(int(p[s]) in optimal[s] for s in range(mdp.n_states)) for p in result.policies]
    first = ok.index(True)
    assert all(ok[first:])
    measure("frozen_lake_8x8.vi_policy_optimal_from", first)
    measure("frozen_lake_8x8.vi_iterations", result.iterations)
    assert first < result.iterations / 3


def test_value_iteration_contracts_and_its_stopping_rule_bounds_the_error(measure):
    """‖V_{k+1} − V*‖∞ ≤ γ‖V_k − V*‖∞ at every step, and stopping when ‖V_{k+1} − V_k‖∞ < θ leaves
    ‖V_{k+1} − V*‖∞ ≤ θγ/(1 − γ) (ARENA 2.1 / Sutton & Barto §4.4), on FrozenLake 8×8 with γ = 0.9."""
    gamma, theta = 0.9, 1e-4
    mdp = bandits.mdp_from_gymnasium(gym.make("FrozenLake8x8-v1"), gamma)
    V_star = P.policy_iteration(mdp).V
    coarse = P.value_iteration(mdp, theta=theta)
    final_error = np.abs(coarse.V - V_star).max()
    measure("stopping_rule.final_error_over_bound", final_error / (theta * gamma / (1 - gamma)), "≤ 1")
    assert final_error <= theta * gamma / (1 - gamma)
    fine = P.value_iteration(mdp, theta=1e-12)
    errors = np.array([np.abs(V - V_star).max() for V in fine.values])
    useful = errors[:-1] > 1e-10
    assert np.all(errors[1:][useful] <= gamma * errors[:-1][useful] + 1e-13)


def test_value_iteration_stops_when_the_change_is_below_theta():
    """The stopping rule "until max|ΔV| < θ" (strict, as in Sutton & Barto §4.4) on a one-state,
    one-action self-loop with reward 1 and γ = 1/2: V_k = 0, 1, 3/2, 7/4 change by exactly 1, 1/2, 1/4
    (binary fractions, no rounding), so with θ = 1/2 the change 1/2 is not below θ and iteration
    stops at 7/4, after 3 backups."""
    mdp = bandits.TabularMDP(T=np.ones((1, 1, 1)), R=np.ones((1, 1, 1)), gamma=0.5, terminal=np.array([False]))
    result = P.value_iteration(mdp, theta=0.5)
    assert result.V.tolist() == [1.75] and [V.tolist() for V in result.values] == [[0.0], [1.0], [1.5], [1.75]]


def _two_exits(second_reward: float):
    """State 0 has two actions, both into the terminal state 1: action 0 pays 1, action 1 pays
    ``second_reward`` (γ = 1). Q(0, ·) = (1, second_reward) exactly; the terminal state's Q is 0."""
    T = np.zeros((2, 2, 2))
    T[:, :, 1] = 1.0
    R = np.zeros((2, 2, 2))
    R[0, 0, 1], R[0, 1, 1] = 1.0, second_reward
    return bandits.TabularMDP(T=T, R=R, gamma=1.0, terminal=np.array([False, True]))


def test_ties_neither_change_the_policy_nor_leave_the_optimal_set():
    """policy_iteration: "an action changes only if it is better than the current one by more than
    tol (so ties cannot make it cycle)": with tol = 0 and two equally good exits, a policy that takes
    the second is already stable (one evaluation, unchanged). optimal_action_sets: "the actions
    within tol of max": with tol = 0 the tied maximisers are both in (the max is within 0 of itself);
    Q(0, ·) = (1, 1/2) with tol = 1/2 puts both in (exactly 1/2 below the max is within 1/2) and
    tol = 1/4 only action 0; a terminal state gets every action."""
    mdp = _two_exits(1.0)
    result = P.policy_iteration(mdp, policy0=np.array([1, 0]), tol=0.0)
    assert result.policy.tolist() == [1, 0] and len(result.policies) == 1
    assert P.optimal_action_sets(mdp, result.V, tol=0.0) == [{0, 1}, {0, 1}]
    mdp = _two_exits(0.5)
    V = P.policy_iteration(mdp).V
    assert V.tolist() == [1.0, 0.0]
    assert P.optimal_action_sets(mdp, V, tol=0.5) == [{0, 1}, {0, 1}]
    assert P.optimal_action_sets(mdp, V, tol=0.25) == [{0}, {0, 1}]


def test_optimal_frozen_lake_policy_in_gymnasium(measure):
    """With γ = 1, V*(start) of slippery 4×4 FrozenLake is the best possible probability of ever
    reaching the goal; the optimal policy run in Gymnasium's own environment succeeds at that rate
    (2 000 episodes, within 4 standard errors)."""
    env = gym.make("FrozenLake-v1")
    mdp = bandits.mdp_from_gymnasium(env, 1.0)
    result = P.policy_iteration(mdp, policy0=np.full(16, P.DOWN_FROZEN_LAKE))
    assert np.abs(P.bellman_optimality_backup(mdp, result.V) - result.V).max() < 1e-9
    mean, se = bandits.monte_carlo_value(env, result.policy, 1.0, 2_000, seed=11)
    z = (mean - result.V[0]) / se
    measure("frozen_lake_4x4.optimal_success_probability", result.V[0])
    measure("frozen_lake_4x4.monte_carlo_z", z, "|z| < 4")
    assert abs(z) < 4


def test_cliff_walking_optimum_is_the_13_step_path():
    """CliffWalking with γ = 1: the shortest safe route is up, 11 steps right along the cliff, down:
    13 steps at −1, so V*(start) = −13, and the greedy path from the start is exactly that route."""
    env = gym.make("CliffWalking-v1")
    mdp = bandits.mdp_from_gymnasium(env, 1.0)
    result = P.value_iteration(mdp)
    assert result.V[36] == pytest.approx(-13.0, abs=1e-9)
    s, path = 36, []
    while not mdp.terminal[s]:
        a = int(result.policy[s])
        path.append(a)
        s = int(np.argmax(mdp.T[s, a]))
    assert path == [0] + [1] * 11 + [2]  # UP, RIGHT × 11, DOWN


def _planning_tolerances(mdp) -> tuple:
    """How far value iteration's V and |V_VI − V_PI| may move on another CPU (float64, numpy).

    Each backup sums over the S next states (about S + 3 roundings relative to max|V|), and with
    γ ≤ 1 the backup is a max-norm non-expansion, so the roundings of the k iterations add up
    unamplified: iterated(k·(S + 3), growth=1). Policy iteration's V is one LU solve on the live
    states, κ∞ times its roundings. Both relative to max|V|; V has exact zeros (terminals)."""
    vi, pi = P.value_iteration(mdp), P.policy_iteration(mdp)
    scale = np.abs(vi.V).max()
    steps = vi.iterations * (mdp.n_states + 3)
    vi_tol = iterated(steps, growth=1, why=f"{vi.iterations} backups over {mdp.n_states} next states, non-expansive")
    P_pi, _ = bandits.policy_dynamics(mdp, pi.policy)
    live = ~mdp.terminal
    kappa = np.linalg.cond(np.eye(live.sum()) - mdp.gamma * P_pi[np.ix_(live, live)], np.inf)
    solve = float_ops(max(1, round(live.sum() * kappa)))
    return (iterated(steps, growth=1, why=vi_tol.reason, abs=vi_tol.rel * scale),
            float_ops(1, why=f"VI's rounding and an LU solve with κ∞ = {kappa:.0f}",
                      abs=(vi_tol.rel + solve.rel) * scale))


def test_results_json_is_current(committed):
    """The post's numbers are recomputed now: the gridworld optima and iteration counts, the
    FrozenLake 8×8 convergence summary, CliffWalking's −13; the figures exist. V and the gap
    between the two methods' V agree within their rounding (see _planning_tolerances); counts and
    policies exactly, as decisions with margins far above one backup's rounding (~1e-14): the
    stopping test max|ΔV| < θ = 1e-10 is failed, then passed, by ≥ 0.6% of θ (6e-13, FrozenLake
    at γ = 0.99 the closest), and no Q-value lies within 1e-12 of the tie-break, improvement or
    optimality thresholds (max − 1e-12, − 1e-9, − 1e-8) in these worlds."""
    results = committed
    for name, world in (("aima", P.aima_gridworld()), ("arena_norvig", P.arena_norvig())):
        recorded = results["gridworlds"][name]
        mdp = world.mdp(recorded["gamma"])
        v_tol, gap_tol = _planning_tolerances(mdp)
        assert_reproduces(P.value_iteration(mdp).V, recorded["V"], v_tol, name=f"gridworlds.{name}.V")
        summary = P.planning_summary(mdp)
        for key, value in summary.items():
            tol = gap_tol if key == "max_abs_diff_vi_vs_pi" else exact("an iteration count or a decision")
            assert_reproduces(value, recorded[key], tol, name=f"gridworlds.{name}.{key}")
    for gamma in (0.9, 0.99):
        recorded = results[f"frozen_lake_8x8_gamma_{round(100 * gamma):03d}"]
        mdp = bandits.mdp_from_gymnasium(gym.make("FrozenLake8x8-v1"), gamma)
        summary = P.planning_summary(mdp)
        for key in ("vi_iterations", "pi_iterations", "same_policy", "vi_policy_optimal_from_iteration"):
            assert summary[key] == recorded[key]
    assert results["cliff_walking_gamma_1"]["start_value"] == pytest.approx(-13.0, abs=1e-9)  # vs the hand count
    lake = results["frozen_lake_4x4_gamma_1"]
    assert abs(lake["monte_carlo_success"] - lake["start_value"]) < 4 * lake["monte_carlo_se"]
    for name in ("gridworld_optimum", "convergence"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
