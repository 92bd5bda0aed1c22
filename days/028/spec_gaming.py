"""Day 28: specification gaming, a shaped reward that can be farmed (Gymnasium's Taxi).

Taxi's reward is the task: −1 a step, +20 for delivering the passenger to the destination (which
ends the episode), −10 for an illegal pickup or dropoff; episodes are cut at 200 steps. A
designer who wants faster learning adds a **shaping bonus**: +b whenever the taxi picks the
passenger up, "because picking up is progress". That reward is misspecified. Taxi allows a
dropoff at any of its four stations, so the loop pickup, dropoff, pickup, … earns b − 2 every two
steps, for ever; past a threshold b* it beats delivering, and an optimiser finds the loop.

Everything runs on the environment's own transition table (Taxi without rain is deterministic),
and every policy is evaluated exactly from all 300 start states of Taxi's reset distribution,
under the proxy (the shaped reward the optimiser saw) and under the true reward (the task):

- **The threshold, derived.** From a station where the passenger waits, d moves from the
  destination, farming is worth V_F = (b − 1 − γ)/(1 − γ²) and delivering
  V_D = (b − 1) − Σ_{t=1..d} γ^t + 20γ^{d+1}; the optimum switches at the b* where they are equal.
- **Optimisation pressure.** Day 16's Q-learning on the environment with the bonus: the greedy
  policy after more and more training episodes, its proxy and true returns.

The fix is **potential-based shaping** (Ng, Harada & Russell, 1999): F(s, s') = γΦ(s') − Φ(s). Any
such F leaves the optimal policies unchanged, because along a trajectory the shaping telescopes,
Σ_t γ^t F(s_t, s_{t+1}) = γ^T Φ(s_T) − Φ(s_0), so Q'(s, a) = Q(s, a) − Φ(s). With Φ(s) = b·[passenger
in the taxi] the designer's intent survives (a pickup earns γb), but a dropoff at the wrong
station now costs b, and the loop earns nothing.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import gymnasium as gym
import numpy as np
from jaxtyping import Bool, Float, Int

mdps = importlib.import_module("days.015.bandits")
planning = importlib.import_module("days.017.policy_iter")
qlearning = importlib.import_module("days.016.qlearning")

GAMMA = 0.99
BONUS = 3.0
EPISODE_STEPS = 200  # Taxi-v4's TimeLimit
PICKUP, DROPOFF = 4, 5

# ---------------------------------------------------------------- the environment as a table


def taxi_env() -> gym.Env:
    return gym.make("Taxi-v4")


def taxi_mdp(gamma: float = GAMMA) -> mdps.TabularMDP:
    """Taxi's published transition table ``P`` as day 15's TabularMDP (deterministic, 500 × 6 × 500).

    Day 15's converter cannot take Taxi as it is: the "delivered" states (passenger at the
    destination) are entered by the final dropoff (terminated) but also, in the table, by moving the
    taxi around after a delivery, which no episode ever does. They are the terminal states here,
    made absorbing with reward 0 as day 15 does.
    """
    env = taxi_env().unwrapped
    n_states, n_actions = len(env.P), len(env.P[0])
    T = np.zeros((n_states, n_actions, n_states))
    R = np.zeros((n_states, n_actions, n_states))
    for s in range(n_states):
        for a in range(n_actions):
            for p, s_next, r, _ in env.P[s][a]:
                T[s, a, s_next] += p
                R[s, a, s_next] = r
    decoded = np.array([list(env.decode(s)) for s in range(n_states)])
    terminal = decoded[:, 2] == decoded[:, 3]
    T[terminal], R[terminal] = 0.0, 0.0
    T[terminal, :, np.flatnonzero(terminal)] = 1.0
    return mdps.TabularMDP(T, R, gamma, terminal)


def passenger_in_taxi(n_states: int = 500) -> Bool[np.ndarray, "S"]:
    """[passenger in the taxi] for every state, from Taxi's own decode (pass_idx = 4)."""
    env = taxi_env().unwrapped
    return np.array([list(env.decode(s))[2] == 4 for s in range(n_states)])


def start_states() -> Int[np.ndarray, "starts"]:
    """The support of Taxi's reset distribution (uniform over it): passenger waiting, destination elsewhere."""
    dist = taxi_env().unwrapped.initial_state_distrib
    return np.flatnonzero(dist > 0)


# ---------------------------------------------------------------- rewards: the task, the proxy, the fix


def pickup_bonus(mdp: mdps.TabularMDP, bonus: float = BONUS) -> mdps.TabularMDP:
    """The misspecified shaping: R'(s, a, s') = R(s, a, s') + b·[passenger not in taxi at s, in taxi at s']."""
    inside = passenger_in_taxi(mdp.n_states)
    picked = (~inside)[:, None, None] & inside[None, None, :]
    return replace(mdp, R=mdp.R + bonus * picked)


def potential_shaping(mdp: mdps.TabularMDP, phi: Float[np.ndarray, "S"]) -> mdps.TabularMDP:
    """R'(s, a, s') = R(s, a, s') + γΦ(s') − Φ(s), with Φ = 0 on terminal states (so episodes that end
    leave no shaping behind)."""
    phi = np.where(mdp.terminal, 0.0, phi)
    return replace(mdp, R=mdp.R + mdp.gamma * phi[None, None, :] - phi[:, None, None])


def pickup_potential(n_states: int = 500, bonus: float = BONUS) -> Float[np.ndarray, "S"]:
    """Φ(s) = b·[passenger in the taxi]: the designer's intent as a potential."""
    return bonus * passenger_in_taxi(n_states).astype(float)


# ---------------------------------------------------------------- planning on the deterministic table


def successor_table(mdp: mdps.TabularMDP) -> Int[np.ndarray, "S A"]:
    """next[s, a] = the single s' with T[s, a, s'] = 1 (Taxi without rain is deterministic)."""
    if not np.allclose(mdp.T.max(axis=2), 1.0):
        raise ValueError("the MDP is not deterministic")
    return mdp.T.argmax(axis=2)


def q_from_v(mdp: mdps.TabularMDP, nxt: Int[np.ndarray, "S A"], V: Float[np.ndarray, "S"]) -> Float[np.ndarray, "S A"]:
    """Day 15's Q(s, a) = Σ_s' T (R + γ V(s')) for a deterministic MDP: R(s, a, next) + γ V(next), 0 on
    terminal states. The same numbers without the dense 500 × 6 × 500 product."""
    rows = np.arange(mdp.n_states)[:, None]
    Q = mdp.R[rows, np.arange(mdp.n_actions)[None, :], nxt] + mdp.gamma * V[nxt]
    Q[mdp.terminal] = 0.0
    return Q


def optimal_values(mdp: mdps.TabularMDP, theta: float = 1e-10, max_iterations: int = 100_000
                   ) -> tuple[Float[np.ndarray, "S"], Int[np.ndarray, "S"], int]:
    """Value iteration to convergence (max |ΔV| < θ), as day 17's, on the deterministic table:
    (V*, its greedy policy, iterations)."""
    nxt = successor_table(mdp)
    V = np.zeros(mdp.n_states)
    for k in range(1, max_iterations + 1):
        V_next = q_from_v(mdp, nxt, V).max(axis=1)
        if np.abs(V_next - V).max() < theta:
            return V_next, planning.greedy_policy(q_from_v(mdp, nxt, V_next)), k
        V = V_next
    raise RuntimeError(f"value iteration did not converge in {max_iterations} iterations")


# ---------------------------------------------------------------- exact evaluation


@dataclass
class Evaluation:
    true_return: float  # mean undiscounted task return over the start states (an episode of ≤ 200 steps)
    proxy_return: float  # the same episodes scored by the proxy reward
    success_rate: float  # fraction of episodes that deliver the passenger
    pickups: float  # mean number of pickups per episode
    steps: float  # mean episode length

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def evaluate(true_mdp: mdps.TabularMDP, proxy_mdp: mdps.TabularMDP, policy: Int[np.ndarray, "S"],
             starts: Int[np.ndarray, "n"] | None = None, steps: int = EPISODE_STEPS) -> Evaluation:
    """Run the deterministic ``policy`` from every start state for up to ``steps`` steps (all episodes
    at once) and average the undiscounted returns under both rewards, as Taxi's TimeLimit would."""
    starts = start_states() if starts is None else starts
    nxt = successor_table(true_mdp)
    inside = passenger_in_taxi(true_mdp.n_states)
    s = starts.copy()
    alive = np.ones(len(s), dtype=bool)
    true_ret, proxy_ret = np.zeros(len(s)), np.zeros(len(s))
    pickups, length = np.zeros(len(s)), np.zeros(len(s))
    delivered = np.zeros(len(s), dtype=bool)
    for _ in range(steps):
        a = policy[s]
        s2 = nxt[s, a]
        true_ret += alive * true_mdp.R[s, a, s2]
        proxy_ret += alive * proxy_mdp.R[s, a, s2]
        pickups += alive * (~inside[s] & inside[s2])
        length += alive
        delivered |= alive & true_mdp.terminal[s2]
        alive = alive & ~true_mdp.terminal[s2]
        s = np.where(alive, s2, s)
    return Evaluation(float(true_ret.mean()), float(proxy_ret.mean()), float(delivered.mean()),
                      float(pickups.mean()), float(length.mean()))


def farm_and_deliver_values(gamma: float, bonus: float, d: int) -> tuple[float, float]:
    """From a station where the passenger waits, d moves from the destination: the value of farming for
    ever, V_F = (b − 1 − γ)/(1 − γ²) (pickup, dropoff, repeat), and of delivering at once,
    V_D = (b − 1) − Σ_{t=1..d} γ^t + 20 γ^{d+1} (pickup, d moves, the +20 dropoff)."""
    farm = (bonus - 1 - gamma) / (1 - gamma**2)
    deliver = (bonus - 1) - gamma * (1 - gamma**d) / (1 - gamma) + 20 * gamma ** (d + 1)
    return farm, deliver


def farm_threshold(gamma: float, d: int) -> float:
    """The bonus b* above which farming beats delivering: V_F − V_D = (b − 1)γ²/(1 − γ²) − C is linear in b, so
    b* = 1 + (1 − γ²)/γ² · C with C = γ/(1 − γ²) − γ(1 − γ^d)/(1 − γ) + 20γ^{d+1}. (Mixing k loops and then
    delivering is a convex combination of the two values, so one of the pure strategies is optimal.)"""
    c = gamma / (1 - gamma**2) - gamma * (1 - gamma**d) / (1 - gamma) + 20 * gamma ** (d + 1)
    return 1 + (1 - gamma**2) / gamma**2 * c


def bonus_sweep(bonuses: list[float], gamma: float = GAMMA) -> list[dict]:
    """For each bonus b: the optimal policy of the proxy (value iteration to convergence), evaluated under
    the true reward and the proxy."""
    true = taxi_mdp(gamma)
    rows = []
    for b in bonuses:
        proxy = pickup_bonus(true, b)
        _, policy, _ = optimal_values(proxy)
        rows.append({"bonus": b, **evaluate(true, proxy, policy).as_dict()})
    return rows


# ---------------------------------------------------------------- learning: Q-learning on the proxy


class ShapedReward(gym.Wrapper):
    """Taxi with a shaping term added to every step's reward, shaping(s, s', terminated); the task's own
    reward is kept in ``info["true_reward"]``."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.state = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.state = int(obs)
        return obs, info

    def shaping(self, s: int, s_next: int, terminated: bool) -> float:
        raise NotImplementedError

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        extra = self.shaping(self.state, int(obs), terminated)
        self.state = int(obs)
        return obs, reward + extra, terminated, truncated, {**info, "true_reward": reward}


class PickupBonus(ShapedReward):
    """The misspecified shaping: +b on every step that puts the passenger into the taxi."""

    def __init__(self, env: gym.Env, bonus: float = BONUS):
        super().__init__(env)
        self.bonus = bonus

    def shaping(self, s, s_next, terminated):
        in_taxi = lambda state: list(self.env.unwrapped.decode(state))[2] == 4  # noqa: E731
        return self.bonus * (in_taxi(s_next) and not in_taxi(s))


class PotentialShaping(ShapedReward):
    """Potential-based shaping F = γΦ(s') − Φ(s), with Φ = 0 after a termination."""

    def __init__(self, env: gym.Env, phi: Float[np.ndarray, "S"], gamma: float = GAMMA):
        super().__init__(env)
        self.phi, self.gamma = phi, gamma

    def shaping(self, s, s_next, terminated):
        return self.gamma * (0.0 if terminated else self.phi[s_next]) - self.phi[s]


@dataclass
class LearningCurve:
    episodes: list[int]
    evaluations: list[dict]


def q_learning_curve(make_env, chunks: list[int], gamma: float = GAMMA, bonus: float = BONUS, alpha: float = 0.5,
                     epsilon: float = 0.1, seed: int = 0) -> LearningCurve:
    """Day 16's Q-learning, resumed chunk after chunk; after each chunk the greedy policy is evaluated
    exactly under the true reward and the pickup-bonus proxy."""
    true = taxi_mdp(gamma)
    proxy = pickup_bonus(true, bonus)
    env = make_env()
    Q = np.zeros((true.n_states, true.n_actions))
    visits = np.zeros_like(Q, dtype=np.int64)
    curve = LearningCurve([], [])
    done = 0
    for k, n in enumerate(chunks):
        qlearning.train(env, "q_learning", n, alpha=alpha, epsilon=epsilon, gamma=gamma, seed=seed * 1000 + k,
                        Q=Q, visits=visits)
        done += n
        curve.episodes.append(done)
        curve.evaluations.append(evaluate(true, proxy, planning.greedy_policy(Q)).as_dict())
    return curve


# ---------------------------------------------------------------- the experiment

BONUSES = [0.0, 0.5, 1.0, 1.5, 1.8, 2.0, 2.1, 2.2, 2.25, 2.3, 2.35, 2.4, 2.5, 2.75, 3.0, 4.0, 5.0]
CHUNKS = [25] * 8 + [100] * 8 + [400] * 3  # 2 200 episodes, denser at the start
LEARNING_SEEDS = (0, 1, 2)


def station_distances(true: mdps.TabularMDP) -> dict[tuple[int, int], int]:
    """Shortest number of moves between every pair of distinct stations (source, destination), read off the
    true optimal values: with the passenger in the taxi at the source, V* = −Σ_{t<d} γ^t + 20 γ^d."""
    env = taxi_env().unwrapped
    V, _, _ = optimal_values(true)
    g = true.gamma
    out = {}
    for i, (r, c) in enumerate(env.locs):
        for j in range(4):
            if i != j:
                v = V[env.encode(r, c, 4, j)]
                d = min(range(30), key=lambda d: abs(-(1 - g**d) / (1 - g) + 20 * g**d - v))
                out[(i, j)] = d
    return out


def run_experiment(out_dir: Path) -> dict:
    """The bonus sweep against the derived thresholds, Q-learning's Goodhart curve on the bonus and on the
    potential-shaped reward, and the invariance theorem checked on the converged optimum."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    true = taxi_mdp()
    proxy = pickup_bonus(true)
    phi = pickup_potential(true.n_states)
    shaped = potential_shaping(true, phi)

    sweep = bonus_sweep(BONUSES)
    distances = station_distances(true)
    thresholds = {f"{i}->{j}": {"d": d, "b_star": farm_threshold(GAMMA, d)} for (i, j), d in distances.items()}
    opt = {name: optimal_values(mdp) for name, mdp in (("true", true), ("pickup_bonus", proxy), ("potential", shaped))}
    optimum = {name: {**evaluate(true, proxy, policy).as_dict(), "iterations": k} for name, (_, policy, k) in opt.items()}
    Q_true, Q_shaped = true.q_from_v(opt["true"][0]), shaped.q_from_v(opt["potential"][0])
    live = ~true.terminal
    invariance_gap = float(np.abs((Q_shaped - (Q_true - phi[:, None]))[live]).max())

    learning = {}
    for name, make_env in (("pickup_bonus", lambda: PickupBonus(taxi_env())),
                           ("potential", lambda: PotentialShaping(taxi_env(), phi)),
                           ("true", taxi_env)):
        curves = [q_learning_curve(make_env, CHUNKS, seed=seed) for seed in LEARNING_SEEDS]
        learning[name] = {"episodes": curves[0].episodes, "seeds": [c.evaluations for c in curves]}

    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.4))
    ax = axes[0]
    b = [r["bonus"] for r in sweep]
    ax.plot(b, [r["proxy_return"] for r in sweep], "o-", ms=3, color="tab:orange", label="proxy return (what is optimised)")
    ax.plot(b, [r["true_return"] for r in sweep], "o-", ms=3, color="tab:red", label="true task return")
    stars = sorted({round(t["b_star"], 4) for t in thresholds.values()})
    for k, bs in enumerate(stars):
        ax.axvline(bs, color="gray", lw=0.6, ls=":", label="derived thresholds b*(d)" if k == 0 else None)
    ax.set_yscale("symlog", linthresh=10)
    ax.set_xlabel("pickup bonus b")
    ax.set_ylabel("optimal policy's mean return (300 starts, ≤ 200 steps)")
    ax.set_title(f"The proxy's optimum, exact (γ = {GAMMA})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    episodes = learning["pickup_bonus"]["episodes"]
    for name, color, label in (("pickup_bonus", "tab:red", f"bonus b = {BONUS:g}: true return"),
                               ("potential", "tab:green", "potential-based shaping: true return"),
                               ("true", "black", "no shaping: true return")):
        ret = np.array([[e["true_return"] for e in seed] for seed in learning[name]["seeds"]])
        ax.plot(episodes, ret.mean(0), color=color, lw=1.2, label=label)
        ax.fill_between(episodes, ret.min(0), ret.max(0), color=color, alpha=0.12)
    proxy_ret = np.array([[e["proxy_return"] for e in seed] for seed in learning["pickup_bonus"]["seeds"]])
    ax.plot(episodes, proxy_ret.mean(0), color="tab:orange", lw=1.2, label=f"bonus b = {BONUS:g}: proxy return")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_xlabel("Q-learning episodes")
    ax.set_ylabel("greedy policy's mean return")
    ax.set_title("Goodhart in training (3 seeds: mean and range)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/goodhart_taxi.png", dpi=120)
    plt.close(fig)

    def final(name, key):
        return float(np.mean([seed[-1][key] for seed in learning[name]["seeds"]]))

    results = {
        "gamma": GAMMA, "bonus": BONUS, "bonuses": BONUSES, "chunks": CHUNKS, "seeds": list(LEARNING_SEEDS),
        "n_start_states": int(len(start_states())),
        "bonus_sweep": sweep,
        "thresholds": thresholds,
        "threshold_range": [min(stars), max(stars)],
        "optimum": optimum,
        "potential_invariance_max_abs_gap": invariance_gap,
        "same_optimal_policy_with_potential": bool(np.array_equal(opt["true"][1], opt["potential"][1])),
        "learning": learning,
        "headline": {
            "true_optimum_return": optimum["true"]["true_return"],
            "proxy_optimum_true_return": optimum["pickup_bonus"]["true_return"],
            "proxy_optimum_proxy_return": optimum["pickup_bonus"]["proxy_return"],
            "proxy_optimum_pickups": optimum["pickup_bonus"]["pickups"],
            "potential_optimum_true_return": optimum["potential"]["true_return"],
            "learned_bonus_true_return": final("pickup_bonus", "true_return"),
            "learned_bonus_proxy_return": final("pickup_bonus", "proxy_return"),
            "learned_bonus_success_rate": final("pickup_bonus", "success_rate"),
            "learned_potential_true_return": final("potential", "true_return"),
            "learned_potential_success_rate": final("potential", "success_rate"),
            "learned_unshaped_true_return": final("true", "true_return"),
        },
        "experiment_seconds": time.perf_counter() - start,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
