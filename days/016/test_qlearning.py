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
from checks.committed import Tolerance, assert_reproduces, exact, float_ops, statistical

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


CLIFF_GATE_SEEDS = 5


@pytest.fixture(scope="module")
def cliff_seed0():
    """Seeds 0–4 of the experiment's Sutton & Barto runs (α = 0.5, ε = 0.1, 500 episodes); the
    gate's claims use seed 0, its reproduction of the committed numbers all five."""
    return L.cliff_runs(n_runs=CLIFF_GATE_SEEDS)


def test_q_learning_learns_the_optimal_cliff_path(cliff_seed0, measure):
    """Q-learning's greedy policy after 500 episodes walks the 13-step path along the cliff edge,
    the path of day 17's Q* from value iteration, with return V*(start) = −13."""
    mdp = cliff_mdp()
    Q_star = mdp.q_from_v(planning.value_iteration(mdp).V)
    run = cliff_seed0["q_learning"][0]
    assert L.greedy_path(mdp, run.Q, 36) == L.greedy_path(mdp, Q_star, 36) == [36, 24] + list(range(25, 36)) + [47]
    assert L.path_return(mdp, run.Q, 36) == -13.0 == pytest.approx(Q_star[36].max())
    measure("cliff.q_learning.greedy_return", L.path_return(mdp, run.Q, 36), "= −13")


def test_training_returns_are_the_episodes_undiscounted_rewards(cliff_seed0):
    """TabularRun.returns holds "the undiscounted return of each training episode". On CliffWalking
    every step pays −1, or −100 for a step into the cliff (which sends the agent back to the start,
    the episode going on), so an episode of L steps with f falls returns −(L − f) − 100 f = −L − 99 f:
    return + length is a non-positive multiple of 99, for every episode of both methods (seed 0)."""
    for method in ("sarsa", "q_learning"):
        run = cliff_seed0[method][0]
        falls = -(np.array(run.returns) + np.array(run.lengths)) / 99
        assert len(run.returns) == len(run.lengths) == 500
        assert np.all(falls >= 0) and np.array_equal(falls, np.round(falls)), method


def _self_loop_mdp(gamma: float):
    """One non-terminal state, one action that returns to it with reward 1: Q_{k+1} = 1 + γ Q_k."""
    return bandits.TabularMDP(T=np.ones((1, 1, 1)), R=np.ones((1, 1, 1)), gamma=gamma, terminal=np.array([False]))


def test_epsilon_soft_value_iteration_stops_when_the_change_is_below_theta():
    """The stopping rule "until max |ΔQ| < θ" (Sutton & Barto's strict test) on a one-state,
    one-action self-loop with reward 1 and γ = 1/2 (so Q_ε = Q for any ε): the iterates 1, 3/2, 7/4
    change by exactly 1, 1/2, 1/4 (binary fractions, no rounding); with θ = 1/2 a change of 1/2 is
    not below θ, so iteration goes on to 7/4."""
    assert L.epsilon_soft_value_iteration(_self_loop_mdp(0.5), 0.1, theta=0.5).tolist() == [[1.75]]


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


def _linear_solve_tolerance(mdp, Q) -> Tolerance:
    """The exact value of Q's ε-greedy policy is a linear solve (I − P_π) V = r_π over n states:
    relative error ≤ κ·n·u (a backward-stable solve; another BLAS rounds differently), with κ the
    condition number of this policy's system, computed here."""
    P, _ = bandits.policy_dynamics(mdp, L.epsilon_greedy_matrix(Q, L.CLIFF["epsilon"]))
    live = ~mdp.terminal
    kappa = np.linalg.cond(np.eye(live.sum()) - mdp.gamma * P[np.ix_(live, live)])
    return float_ops(int(kappa * live.sum()) + 1, why=f"a {live.sum()}-state solve with κ = {kappa:.0f}")


EXACT_TABLE = exact("α = 0.5 and integer rewards: every update is IEEE +, −, × (correctly rounded on every "
                    "CPU, no library function), and ties are tested exactly, so the run repeats bit for bit")


def test_cliff_runs_reproduce(committed, cliff_seed0, measure):
    """The constant-α CliffWalking runs behind the post's numbers, seeds 0–4 of the experiment's 50
    (the slow test reruns all 50): each seed's Q(start, UP) equals the recorded one exactly (see
    EXACT_TABLE), and the exact value of its ε-greedy policy equals the recorded one within the
    rounding of its linear solve (_linear_solve_tolerance)."""
    mdp = cliff_mdp()
    worst = 0.0
    for method in ("sarsa", "q_learning"):
        rec = committed["cliff"][method]["constant_alpha"]
        for seed, run in enumerate(cliff_seed0[method]):
            assert_reproduces(float(run.Q[36, UP]), rec["start_up_q"][seed], EXACT_TABLE,
                              name=f"{method}.start_up_q[{seed}]")
            value = float(bandits.policy_evaluation_exact(mdp, L.epsilon_greedy_matrix(run.Q, L.CLIFF["epsilon"]))[36])
            worst = max(worst, assert_reproduces(value, rec["epsilon_greedy_value_start"][seed],
                                                 _linear_solve_tolerance(mdp, run.Q),
                                                 name=f"{method}.epsilon_greedy_value_start[{seed}]"))
    measure("cliff.epsilon_greedy_value.deviation_from_committed", worst, "≤ 1 (fraction of the tolerance)")


def _slippery_tolerances(rows) -> dict:
    """Q-learning on slippery FrozenLake with a uniformly random behaviour policy: the trajectory
    does not depend on Q, only the step sizes α = 1/n^0.8 round differently on another CPU (numpy's
    power: AVX-512 and libm differ by 1 ulp on 5% of n, measured). Each update is a convex
    combination with γ < 1, so a rounding is never amplified: after N ≤ 100·episodes updates
    every Q is within 8·N·u·max|Q| (max|Q| ≤ 1) of the committed run's. The number of states whose
    greedy action is not optimal counts argmax decisions: exact. The value gap of the greedy
    policy comes from a 16-state linear solve (κ ≤ 1/(1 − γ) = 20) against value iteration
    stopped at θ = 1e-12 (error ≤ θγ/(1 − γ) ≈ 2e-11, the same on every CPU)."""
    n_updates = 100 * rows[-1]["episodes"]
    q = Tolerance(reason=f"≤ {n_updates:.0e} non-expansive updates", abs=float_ops(n_updates).rel)
    return {"max_abs_q_error": q, "n_suboptimal_states": exact("argmax decisions"),
            "greedy_value_gap_max": Tolerance(reason="a 16-state solve, κ ≤ 20", abs=float_ops(20 * 16).rel + 1e-12)}


def test_slippery_convergence_reproduces(committed, measure):
    """The post's slippery FrozenLake numbers, rerun now: slippery_convergence (Q-learning, 40 000
    episodes of uniformly random behaviour, seven checkpoints) gives, at every checkpoint, the
    recorded error to Q*, the recorded number of states with a suboptimal greedy action and the
    recorded value gap, within _slippery_tolerances."""
    now = L.slippery_convergence()
    then = committed["slippery"]
    assert now["gamma"] == then["gamma"] and [r["episodes"] for r in now["checkpoints"]] == list(L.SLIPPERY_CHECKPOINTS)
    assert_reproduces(now["V_star_start"], then["V_star_start"],
                      float_ops(16 * 20, why="value iteration to θ = 1e-12: a contraction, rounding not amplified",
                                abs=1e-11), name="slippery.V_star_start")
    worst = 0.0
    for key, tol in _slippery_tolerances(now["checkpoints"]).items():
        for i, (a, b) in enumerate(zip(now["checkpoints"], then["checkpoints"])):
            worst = max(worst, assert_reproduces(a[key], b[key], tol, name=f"slippery.checkpoints[{i}].{key}"))
    measure("slippery.deviation_from_committed", worst, "≤ 1 (fraction of the tolerance)")
    measure("slippery.final_max_abs_q_error", now["checkpoints"][-1]["max_abs_q_error"])
    rows = now["checkpoints"]
    assert rows[-1]["n_suboptimal_states"] == 0 and rows[-1]["greedy_value_gap_max"] < 1e-9
    assert rows[-1]["max_abs_q_error"] < rows[0]["max_abs_q_error"] / 2


def _planned(mdp) -> dict:
    """The planned numbers the post cites: Q*'s and Q_ε's values at the start, V_ε(start), and Q_ε's
    gap between RIGHT and UP at square 12, where the two safe routes split."""
    Q_star = mdp.q_from_v(planning.value_iteration(mdp).V)
    Q_eps = L.epsilon_soft_value_iteration(mdp, L.CLIFF["epsilon"])
    return {"q_star_start_up": float(Q_star[36, UP]), "q_eps_start_up": float(Q_eps[36, UP]),
            "v_eps_start": float(bandits.policy_evaluation_exact(mdp, L.epsilon_greedy_matrix(Q_eps, L.CLIFF["epsilon"]))[36]),
            "q_eps_gap_at_12": float(Q_eps[12, RIGHT] - Q_eps[12, UP])}


def test_results_json_is_current(committed, cliff_seed0):
    """The post's CliffWalking numbers: seed 0's greedy paths equal results.json's; the planned
    paths (Q*: −13, Q_ε: −15) and planned values are recomputed (value iteration stopped at θ =
    1e-10 in a problem whose values are about 20: rel 1e-9; the gap at square 12 is a difference
    of two such values); the recorded decaying-α runs satisfy the slow test's claims; the figures
    exist. The paths are compared exactly: the constant-α runs are scalar float64 updates (IEEE
    operations, correctly rounded on every CPU, with exact tie tests), and every step of the
    three paths is an argmax whose best action leads by at least 0.85."""
    results = committed["cliff"]
    mdp = cliff_mdp()
    planned_tol = Tolerance(reason="a contraction iterated in float64 until a sweep moves < 1e-10: two roundings "
                                   "stop within θ·(episode length ≈ 20) of the same fixed point", rel=1e-9, abs=1e-9)
    assert_reproduces(_planned(mdp), {k: results[k] for k in ("q_star_start_up", "q_eps_start_up", "v_eps_start",
                                                             "q_eps_gap_at_12")}, planned_tol, name="cliff")

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


def _spread(values: list[float]) -> float:
    return max(values) - min(values)


@pytest.mark.slow
def test_experiment_reproduces_its_results(tmp_path, committed, measure):
    """Slow: the whole experiment again, and every number the post cites from it. With Robbins–
    Monro step sizes (10 000 episodes, 5 seeds) each method heads for its own planned optimum (see
    _check_decaying_alpha_claims); on slippery FrozenLake Q-learning's greedy policy is optimal in
    every state by 40 000 episodes and max |Q − Q*| has more than halved. Reproduction: the 50
    constant-α runs exactly (their online returns, greedy-path counts and Q(start, UP); see
    EXACT_TABLE), their policies' exact values within the rounding of the linear solve (κ ≤ 8 100
    over the 50 policies, measured); the planned numbers as in test_results_json_is_current; the
    slippery rows within _slippery_tolerances. The decaying-α runs act ε-greedily on Q, whose step
    sizes round differently by CPU, so a near-tie may send a run elsewhere on another machine:
    their numbers reproduce up to the spread between the five seeds (statistical), their
    greedy-path counts within one seed."""
    results = L.run_experiment(tmp_path)
    cliff, then = results["cliff"], committed["cliff"]
    _check_decaying_alpha_claims(cliff)
    for method in ("sarsa", "q_learning"):
        now_c, then_c = cliff[method]["constant_alpha"], then[method]["constant_alpha"]
        assert_reproduces(cliff[method]["mean_online_return_last_100"], then[method]["mean_online_return_last_100"],
                          EXACT_TABLE, name=f"{method}.mean_online_return_last_100")
        assert_reproduces({k: now_c[k] for k in ("greedy_path_return_counts", "seed0_greedy_path", "start_up_q")},
                          {k: then_c[k] for k in ("greedy_path_return_counts", "seed0_greedy_path", "start_up_q")},
                          EXACT_TABLE, name=f"{method}.constant_alpha")
        assert_reproduces(now_c["epsilon_greedy_value_start"], then_c["epsilon_greedy_value_start"],
                          float_ops(8_100 * 48, why="48-state solves, κ ≤ 8 100"),
                          name=f"{method}.constant_alpha.epsilon_greedy_value_start")
        now_d, then_d = cliff[method]["decaying_alpha"], then[method]["decaying_alpha"]
        for key in ("start_up_q", "epsilon_greedy_value_start"):
            assert_reproduces(now_d[key], then_d[key], statistical(_spread(then_d[key]), why="the spread of 5 seeds"),
                              name=f"{method}.decaying_alpha.{key}")
        counts = set(now_d["greedy_path_return_counts"]) | set(then_d["greedy_path_return_counts"])
        assert_reproduces({c: now_d["greedy_path_return_counts"].get(c, 0) for c in counts},
                          {c: then_d["greedy_path_return_counts"].get(c, 0) for c in counts},
                          statistical(1, why="one seed may take the other route"), name=f"{method}.decaying_alpha.counts")
    for key in ("q_star_start_up", "q_eps_start_up", "v_eps_start", "q_eps_gap_at_12"):
        assert_reproduces(cliff[key], then[key], Tolerance(reason="a contraction iterated to θ = 1e-10", rel=1e-9,
                                                           abs=1e-9), name=key)
    rows = results["slippery"]["checkpoints"]
    for key, tol in _slippery_tolerances(rows).items():
        assert_reproduces([r[key] for r in rows], [r[key] for r in committed["slippery"]["checkpoints"]], tol,
                          name=f"slippery.{key}")
    sarsa = cliff["sarsa"]["decaying_alpha"]
    measure("slow.sarsa_seeds_on_the_q_eps_path", sarsa["greedy_path_return_counts"].get("-15", 0))
    measure("slow.sarsa_value_gap_to_v_eps", max(abs(v - cliff["v_eps_start"]) for v in sarsa["epsilon_greedy_value_start"]), "< 1")
    measure("slow.slippery.final_max_abs_q_error", rows[-1]["max_abs_q_error"])
    assert rows[-1]["n_suboptimal_states"] == 0 and rows[-1]["greedy_value_gap_max"] < 1e-9
    assert rows[-1]["max_abs_q_error"] < rows[0]["max_abs_q_error"] / 2
