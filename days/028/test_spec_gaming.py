"""The gate of day 28: specification gaming with a misspecified shaped reward (Gymnasium's Taxi).

Spec: the day's topic done properly (no ARENA section): an environment whose proxy reward diverges
from the intended one as optimisation grows, the divergence measured, a mitigation with measured
effect. References: Gymnasium's Taxi itself (its transition table, its step function, its reset
distribution); day 15's dense Q(s, a) = Σ T (R + γV) and day 17's value iteration for the fast
deterministic planner; the closed-form farm/deliver values derived in the post; Ng, Harada &
Russell (1999) for potential-based shaping (Q' = Q − Φ, same optimal policy).
"""

import importlib
from pathlib import Path

import numpy as np
import pytest

from checks import assert_parity
from checks.committed import assert_reproduces, exact, float_ops

from . import spec_gaming as S

planning = importlib.import_module("days.017.policy_iter")
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def true():
    return S.taxi_mdp()


@pytest.fixture(scope="module")
def env():
    return S.taxi_env().unwrapped


def test_table_replays_gymnasium_taxi(true, env):
    """The MDP is Taxi's own dynamics: 500 random (state, action) pairs stepped in Gymnasium land on the
    successor and reward of the table; the 100 terminal states are exactly the delivered ones (passenger
    at the destination), made absorbing (T[s, a, s] = 1) with reward 0, every row of T a distribution; the start
    states are the 300 of Taxi's reset distribution."""
    nxt = S.successor_table(true)
    rng = np.random.default_rng(0)
    wrapped = S.taxi_env()
    wrapped.reset(seed=0)
    for s, a in zip(rng.choice(np.flatnonzero(~true.terminal), 500), rng.integers(0, 6, 500)):
        env.s = int(s)
        s2, r, terminated, _, _ = env.step(int(a))
        assert s2 == nxt[s, a] and r == true.R[s, a, s2] and terminated == true.terminal[s2]
    assert true.terminal.sum() == 100
    assert all(list(env.decode(s))[2] == list(env.decode(s))[3] for s in np.flatnonzero(true.terminal))
    assert true.T.shape == (500, 6, 500) and np.array_equal(true.T.sum(axis=2), np.ones((500, 6)))
    term = np.flatnonzero(true.terminal)                 # absorbing with reward 0, as day 15 makes them
    assert (true.T[term, :, term] == 1.0).all() and (true.R[term] == 0.0).all()
    starts = S.start_states()
    assert len(starts) == 300 and np.allclose(env.initial_state_distrib[starts], 1 / 300)


def test_pickup_bonus_pays_exactly_on_pickups(true, env):
    """The proxy adds b to the reward of exactly the transitions that put the passenger into the taxi (a
    legal pickup, one per station and destination: 4 × 3), nothing
    elsewhere; the potential-shaped reward adds γΦ(s') − Φ(s) with Φ = 0 on terminal states."""
    proxy = S.pickup_bonus(true, 3.0)
    nxt = S.successor_table(true)
    rows = np.arange(500)[:, None]
    delta = proxy.R[rows, np.arange(6)[None, :], nxt] - true.R[rows, np.arange(6)[None, :], nxt]
    inside = S.passenger_in_taxi()
    picked = ~inside[:, None] & inside[nxt]
    assert np.array_equal(delta, 3.0 * picked)
    assert picked[:, S.PICKUP].sum() == picked.sum() == 4 * 3  # taxi at the passenger's station, 3 other destinations
    phi = S.pickup_potential(500, 3.0)
    shaped = S.potential_shaping(true, phi)
    phi_next = np.where(true.terminal[nxt], 0.0, phi[nxt])
    assert_parity(shaped.R[rows, np.arange(6)[None, :], nxt] - true.R[rows, np.arange(6)[None, :], nxt],
                  true.gamma * phi_next - phi[:, None], atol=1e-15)


def test_deterministic_planner_matches_day_15_and_17(true, measure):
    """The fast Q(s, a) = R(s, a, next) + γV(next) equals day 15's dense Σ_s' T (R + γV) on random V (1e-12),
    and value iteration on it reaches day 17's value_iteration's V* and policy (γ = 0.5, 1e-9)."""
    proxy = S.pickup_bonus(S.taxi_mdp(0.5), 3.0)
    V = np.random.default_rng(0).normal(size=500)
    nxt = S.successor_table(proxy)
    report = assert_parity(S.q_from_v(proxy, nxt, V), proxy.q_from_v(V), atol=1e-12, name="fast_q")
    ours_V, ours_policy, _ = S.optimal_values(proxy)
    reference = planning.value_iteration(proxy, theta=1e-10)
    assert_parity(ours_V, reference.V, atol=1e-9)
    assert np.array_equal(ours_policy, reference.policy)
    measure("fast_q_vs_dense.max_abs_err", report.max_abs_err, "≤ 1e-12")


def test_value_iteration_stops_at_the_first_change_below_theta():
    """optimal_values stops at the first sweep whose max |ΔV| is strictly below θ (day 17's rule). Hand
    derivation: one state looping on itself with reward 1, γ = 1/2: V_k = Σ_{t<k} 2^{-t} = 2 − 2^{1−k}, so
    sweep k changes V by exactly 2^{1−k} (dyadic, exact in float64). With θ = 2^{-10}, sweep 11 changes it by
    exactly θ (not below) and sweep 12 by θ/2: 12 sweeps, V = 2 − 2^{-11}."""
    one = S.mdps.TabularMDP(np.ones((1, 1, 1)), np.ones((1, 1, 1)), 0.5, np.zeros(1, dtype=bool))
    V, policy, k = S.optimal_values(one, theta=2.0**-10)
    assert k == 12 and V[0] == 2 - 2.0**-11 and policy.tolist() == [0]


def test_farm_and_deliver_values_match_value_iteration(true, env, measure):
    """The derivation: from a station where the passenger waits, d moves (read off the true optimum) from
    the destination, the proxy's optimal value is max(V_F, V_D) with V_F = (b − 1 − γ)/(1 − γ²) and V_D =
    (b − 1) − Σ_{t=1..d} γ^t + 20γ^{d+1}, for all 12 station pairs and b ∈ {2, 2.3, 3} (to 1e-7, value
    iteration's stopping error θγ/(1 − γ) ≈ 1e-8 being smaller)."""
    distances = S.station_distances(true)
    assert sorted(set(distances.values())) == [4, 5, 7, 8]
    worst = 0.0
    for b in (2.0, 2.3, 3.0):
        V, _, _ = S.optimal_values(S.pickup_bonus(true, b))
        for (i, j), d in distances.items():
            r, c = env.locs[i]
            worst = max(worst, abs(V[env.encode(r, c, i, j)] - max(S.farm_and_deliver_values(S.GAMMA, b, d))))
    measure("closed_form_vs_value_iteration.max_abs_err", worst, "≤ 1e-7")
    assert worst < 1e-7


def test_threshold_splits_farming_from_delivering(true, env):
    """At b = b*(d) ∓ 0.01 the proxy's optimal action where the passenger waits leads to delivering resp.
    farming: following the optimal policy from there, the passenger is delivered, resp. dropped at its
    own station after the pickup (the loop)."""
    distances = S.station_distances(true)
    nxt = S.successor_table(true)
    for (i, j), d in [((0, 2), 4), ((0, 1), 8)]:
        assert distances[(i, j)] == d
        b_star = S.farm_threshold(S.GAMMA, d)
        farm, deliver = S.farm_and_deliver_values(S.GAMMA, b_star, d)
        assert farm == pytest.approx(deliver, abs=1e-9)
        r, c = env.locs[i]
        s0 = env.encode(r, c, i, j)
        for b, farms in ((b_star - 0.01, False), (b_star + 0.01, True)):
            _, policy, _ = S.optimal_values(S.pickup_bonus(true, b))
            assert policy[s0] == S.PICKUP
            s1 = nxt[s0, S.PICKUP]
            if farms:
                assert policy[s1] == S.DROPOFF and nxt[s1, S.DROPOFF] == s0
            else:
                e = S.evaluate(true, true, policy, starts=np.array([s0]))
                assert e.success_rate == 1.0 and e.steps == d + 2


def test_proxy_optimum_games_the_task_and_the_potential_does_not(true, measure):
    """Goodhart at the optimum (b = 3 > every b*): the proxy's optimal policy scores more under the proxy than
    the true optimum does, but never delivers (true return −200, ≈ 98 pickups an episode); with potential-
    based shaping the optimal policy is the true one and Q' = Q* − Φ (Ng et al.'s theorem, to 1e-8)."""
    proxy = S.pickup_bonus(true)
    phi = S.pickup_potential()
    shaped = S.potential_shaping(true, phi)
    V_true, pi_true, _ = S.optimal_values(true)
    V_proxy, pi_proxy, _ = S.optimal_values(proxy)
    V_shaped, pi_shaped, _ = S.optimal_values(shaped)
    best, gamed = S.evaluate(true, proxy, pi_true), S.evaluate(true, proxy, pi_proxy)
    measure("optimum.true_policy_true_return", best.true_return)
    measure("optimum.proxy_policy_true_return", gamed.true_return)
    measure("optimum.proxy_policy_proxy_return", gamed.proxy_return)
    assert gamed.proxy_return > best.proxy_return and gamed.true_return == -200 and gamed.success_rate == 0
    assert gamed.pickups > 90 and best.success_rate == 1.0
    gap = np.abs(shaped.q_from_v(V_shaped) - (true.q_from_v(V_true) - phi[:, None]))[~true.terminal].max()
    measure("potential.q_gap.max_abs_err", gap, "≤ 1e-8")
    assert gap < 1e-8
    assert np.array_equal(pi_shaped, pi_true)


def test_wrappers_add_the_same_rewards_as_the_tables(true, env):
    """The Gymnasium wrappers used for learning pay, step by step along a random episode, what the tables
    pay (the bonus, the potential difference), and keep the task's reward in info["true_reward"]."""
    phi = S.pickup_potential()
    proxy, shaped = S.pickup_bonus(true), S.potential_shaping(true, phi)
    rng = np.random.default_rng(1)
    for wrapper, table in ((S.PickupBonus(S.taxi_env()), proxy), (S.PotentialShaping(S.taxi_env(), phi), shaped)):
        s, _ = wrapper.reset(seed=3)
        for _ in range(300):
            a = int(rng.integers(0, 6)) if rng.random() < 0.7 else S.PICKUP
            s2, r, terminated, truncated, info = wrapper.step(a)
            assert r == pytest.approx(table.R[s, a, s2], abs=1e-12)
            assert info["true_reward"] == true.R[s, a, s2]
            if terminated or truncated:
                s, _ = wrapper.reset(seed=4)
            else:
                s = s2


def test_q_learning_heads_for_the_loop(measure):
    """Behaviour under optimisation pressure: between 50 and 150 episodes of day 16's Q-learning on the bonus
    (b = 3) the greedy policy's proxy return rises by more than 100 while its true return stays at −200 (no
    delivery at all); 300 episodes on the potential-shaped reward already deliver from at least 40% of the
    starts, with a true return 50 above the bonus's. The curve's episodes are the running totals of the chunks."""
    phi = S.pickup_potential()
    bonus = S.q_learning_curve(lambda: S.PickupBonus(S.taxi_env()), [50, 100], seed=0)
    fixed = S.q_learning_curve(lambda: S.PotentialShaping(S.taxi_env(), phi), [100, 200], seed=0)
    assert bonus.episodes == [50, 150] and fixed.episodes == [100, 300]     # the running total of episodes
    (b0, b1), f = bonus.evaluations, fixed.evaluations[-1]
    measure("learning.bonus_proxy_gain_50_to_150", b1["proxy_return"] - b0["proxy_return"], "> 100")
    measure("learning.bonus_true_return_150", b1["true_return"], "= −200")
    measure("learning.potential_success_rate_300", f["success_rate"], "≥ 0.4")
    assert b1["proxy_return"] - b0["proxy_return"] > 100
    assert b0["true_return"] <= -200 and b1["true_return"] == -200 and b1["success_rate"] == 0
    assert f["success_rate"] >= 0.4 and f["true_return"] > b1["true_return"] + 50


# Value iteration on the deterministic table is elementwise (R + γ·V[next], a max over 6 actions): correctly
# rounded operations in a fixed order, the same bits on every CPU, and greedy_policy breaks ties within 1e-12 by
# the lowest action. The evaluation then adds integer rewards (and the bonus 3) over ≤ 200 steps and averages
# over 300 starts: sums of integers are exact in float64, the mean's one division is correctly rounded.
OPTIMUM_TOL = exact("integer returns of a policy from elementwise value iteration, averaged over 300 starts")
# b* = 1 + (1 − γ²)/γ²·C is ≈ 20 float64 operations (powers and quotients, each ≤ 1 ulp in libm), and 1 − γ² at
# γ = 0.99 amplifies γ²'s rounding ≈ 50×: float_ops(20·50) ≈ 9e-13 relative.
THRESHOLD_TOL = float_ops(20 * 50, why="≈ 20 float64 operations, 1 − γ² amplifying rounding 50× at γ = 0.99")


def test_results_json_is_current(true, committed, measure):
    """results.json came from this configuration, and its exact parts are reproduced now: the proxy
    optimum's and the true optimum's evaluations (exactly: integer returns, OPTIMUM_TOL) and the thresholds
    (closed forms, 9e-13 relative); the learned policies' final returns tell the headline (bonus: proxy
    up, task never done; potential: delivers everywhere)."""
    results = committed
    assert results["bonus"] == S.BONUS and results["bonuses"] == S.BONUSES and results["chunks"] == S.CHUNKS
    proxy = S.pickup_bonus(true)
    for name, mdp in (("true", true), ("pickup_bonus", proxy)):
        _, policy, k = S.optimal_values(mdp)
        now = S.evaluate(true, proxy, policy).as_dict()
        assert_reproduces(now, {key: results["optimum"][name][key] for key in now}, OPTIMUM_TOL, name=f"optimum.{name}")
    for key, t in results["thresholds"].items():
        assert_reproduces(S.farm_threshold(S.GAMMA, t["d"]), t["b_star"], THRESHOLD_TOL, name=f"thresholds.{key}.b_star")
    h = results["headline"]
    measure("experiment.learned_bonus_true_return", h["learned_bonus_true_return"])
    measure("experiment.learned_bonus_proxy_return", h["learned_bonus_proxy_return"])
    measure("experiment.learned_potential_true_return", h["learned_potential_true_return"])
    assert h["learned_bonus_true_return"] == -200 and h["learned_bonus_proxy_return"] > 50
    assert h["learned_potential_success_rate"] == 1.0
    assert (HERE / "figures/goodhart_taxi.png").stat().st_size > 10_000


@pytest.mark.slow
def test_experiment_headline(tmp_path, measure):
    """Slow: the whole experiment. After 2 200 episodes on the bonus every seed's greedy policy farms (true
    return −200, proxy return above 50); with potential-based shaping every seed delivers from all 300 starts
    with a true return within 0.5 of the optimum's."""
    results = S.run_experiment(tmp_path)
    h = results["headline"]
    measure("slow.learned_potential_true_return", h["learned_potential_true_return"])
    measure("slow.experiment_seconds", results["experiment_seconds"])
    assert h["learned_bonus_true_return"] == -200 and h["learned_bonus_proxy_return"] > 50
    assert h["learned_potential_success_rate"] == 1.0
    assert h["learned_potential_true_return"] >= h["true_optimum_return"] - 0.5
