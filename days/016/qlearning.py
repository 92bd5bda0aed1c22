"""Day 16: Q-learning and SARSA (ARENA 2.1 Intro to RL, part 2: tabular model-free control).

Without the transition table, learn Q(s, a) from sampled transitions (s, a, r, s') with a
temporal-difference update Q(s, a) ← Q(s, a) + α [y − Q(s, a)], where the target y bootstraps
from the current estimate at the next state:

- **SARSA** (on-policy): y = r + γ Q(s', a') with a' the action the ε-greedy behaviour policy
  actually takes next. With a fixed ε it learns the value of the ε-greedy policy itself, and
  improves towards the best ε-soft policy, whose action values satisfy

      Q_ε(s, a) = Σ_s' T (R + γ [(1 − ε) max_a' Q_ε(s', a') + ε mean_a' Q_ε(s', a')]).

- **Q-learning** (off-policy): y = r + γ max_a' Q(s', a'), a sample of the Bellman optimality
  backup, so Q → Q* whatever the (sufficiently exploring) behaviour policy, provided every pair is
  visited infinitely often and the step sizes satisfy Σ α = ∞, Σ α² < ∞ (Watkins & Dayan, 1992).
  In a deterministic environment with α = 1 each update is an exact backup, and Q-learning is
  asynchronous value iteration.

At a terminal transition there is no next state to bootstrap from: y = r. A time-limit
truncation is not terminal, and keeps the bootstrap term.

On CliffWalking the two differ visibly (Sutton & Barto, Example 6.6): Q-learning learns the
optimal path along the cliff edge and falls off during ε-exploration; SARSA learns a longer path
that keeps its distance, the best path *for an agent that explores*. Day 17's value iteration
provides Q*; day 15 provides the MDP and exact policy evaluation.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
from jaxtyping import Float, Int

bandits = importlib.import_module("days.015.bandits")
planning = importlib.import_module("days.017.policy_iter")

# ---------------------------------------------------------------- the updates


def epsilon_greedy_action(q_row: Float[np.ndarray, "A"], epsilon: float, rng: np.random.Generator) -> int:
    """With probability ε a uniformly random action, else a greedy one (ties broken at random)."""
    if rng.random() < epsilon:
        return int(rng.integers(len(q_row)))
    best = np.flatnonzero(q_row == q_row.max())
    return int(best[0] if len(best) == 1 else rng.choice(best))


def td_update(Q: Float[np.ndarray, "S A"], s: int, a: int, target: float, alpha: float) -> None:
    """Q(s, a) ← Q(s, a) + α (target − Q(s, a)), in place."""
    Q[s, a] += alpha * (target - Q[s, a])


def q_learning_target(Q, r: float, s_next: int, terminated: bool, gamma: float) -> float:
    """y = r + γ max_a' Q(s', a'), or y = r at a terminal transition."""
    return r if terminated else r + gamma * Q[s_next].max()


def sarsa_target(Q, r: float, s_next: int, a_next: int, terminated: bool, gamma: float) -> float:
    """y = r + γ Q(s', a') with a' the next action taken, or y = r at a terminal transition."""
    return r if terminated else r + gamma * Q[s_next, a_next]


# ---------------------------------------------------------------- training


@dataclass
class TabularRun:
    Q: Float[np.ndarray, "S A"]
    returns: list[float] = field(default_factory=list)  # undiscounted return of each training episode
    lengths: list[int] = field(default_factory=list)
    visits: Int[np.ndarray, "S A"] | None = None


def train(env: gym.Env, method: str, n_episodes: int, alpha: float | str = 0.5, epsilon: float = 0.1,
          gamma: float = 1.0, seed: int = 0, alpha_power: float = 0.8, Q: np.ndarray | None = None,
          visits: np.ndarray | None = None) -> TabularRun:
    """Train a Q-table (zeros, or ``Q`` updated in place) with SARSA or Q-learning and an ε-greedy
    behaviour policy.

    ``alpha`` is a constant step size, or "visits" for α = 1 / n(s, a)^alpha_power (n the number of
    updates of that pair so far, counting this one; ``visits`` carries the counts over): Σ α = ∞
    and Σ α² < ∞ for 1/2 < power ≤ 1.
    """
    if method not in ("sarsa", "q_learning"):
        raise ValueError(f"unknown method {method!r}: use 'sarsa' or 'q_learning'")
    n_states, n_actions = env.observation_space.n, env.action_space.n
    Q = np.zeros((n_states, n_actions)) if Q is None else Q
    visits = np.zeros((n_states, n_actions), dtype=np.int64) if visits is None else visits
    rng = np.random.default_rng(seed)
    run = TabularRun(Q, visits=visits)
    for episode in range(n_episodes):
        s, _ = env.reset(seed=seed * 1_000_003 + episode)
        a = epsilon_greedy_action(Q[s], epsilon, rng)
        total, length, done = 0.0, 0, False
        while not done:
            s_next, r, terminated, truncated, _ = env.step(a)
            a_next = epsilon_greedy_action(Q[s_next], epsilon, rng)
            if method == "sarsa":
                target = sarsa_target(Q, r, s_next, a_next, terminated, gamma)
            else:
                target = q_learning_target(Q, r, s_next, terminated, gamma)
            visits[s, a] += 1
            step = alpha if alpha != "visits" else 1.0 / visits[s, a] ** alpha_power
            td_update(Q, s, a, target, step)
            total += float(r)
            length += 1
            done = terminated or truncated
            s, a = s_next, a_next
        run.returns.append(total)
        run.lengths.append(length)
    return run


def epsilon_soft_value_iteration(mdp, epsilon: float, theta: float = 1e-10,
                                 max_iterations: int = 1_000_000) -> Float[np.ndarray, "S A"]:
    """Q_ε, the action values of the best ε-greedy policy: iterate
    Q ← r + γ T [(1 − ε) max_a' Q + ε mean_a' Q] (a γ-contraction; also converges at γ = 1 when
    every ε-soft policy reaches a terminal state). SARSA with fixed ε converges here."""
    Q = np.zeros((mdp.n_states, mdp.n_actions))
    for _ in range(max_iterations):
        V = (1 - epsilon) * Q.max(axis=1) + epsilon * Q.mean(axis=1)
        Q_next = mdp.q_from_v(V)
        if np.abs(Q_next - Q).max() < theta:
            return Q_next
        Q = Q_next
    raise RuntimeError("ε-soft value iteration did not converge")


def epsilon_greedy_matrix(Q: Float[np.ndarray, "S A"], epsilon: float) -> Float[np.ndarray, "S A"]:
    """π(a | s) = ε/|A| + (1 − ε)·[a = argmax Q(s, ·)] (first maximum), as a matrix for day 15's
    exact policy evaluation."""
    n_states, n_actions = Q.shape
    pi = np.full((n_states, n_actions), epsilon / n_actions)
    pi[np.arange(n_states), np.argmax(Q, axis=1)] += 1 - epsilon
    return pi


def greedy_path(mdp, Q: Float[np.ndarray, "S A"], start: int) -> list[int]:
    """States visited by the greedy policy argmax_a Q(s, a) (first maximum) from ``start`` in a
    deterministic MDP, up to a terminal state; if a state repeats, the policy cycles forever and
    the path stops at the first repetition."""
    path, s = [start], start
    while not mdp.terminal[s]:
        nxt = np.flatnonzero(mdp.T[s, int(np.argmax(Q[s]))])
        if len(nxt) != 1:
            raise ValueError("greedy_path needs deterministic transitions")
        s = int(nxt[0])
        path.append(s)
        if s in path[:-1]:
            break
    return path


def path_return(mdp, Q, start: int) -> float:
    """Undiscounted return of following argmax Q from ``start`` (deterministic MDP); −inf for a
    greedy policy that cycles without reaching a terminal state (every CliffWalking step costs)."""
    path = greedy_path(mdp, Q, start)
    if not mdp.terminal[path[-1]]:
        return float("-inf")
    return float(sum(mdp.R[s, int(np.argmax(Q[s])), s2] for s, s2 in zip(path[:-1], path[1:])))


# ---------------------------------------------------------------- the experiment

CLIFF = dict(alpha=0.5, epsilon=0.1, gamma=1.0)  # Sutton & Barto, Example 6.6
CLIFF_EPISODES = 500
CLIFF_RUNS = 50
CLIFF_START = 36
CLIFF_LONG = dict(alpha="visits", alpha_power=0.8, epsilon=0.1, gamma=1.0)  # Robbins–Monro step sizes
CLIFF_LONG_EPISODES = 10_000
CLIFF_LONG_SEEDS = 5
SLIPPERY = dict(alpha="visits", alpha_power=0.8, epsilon=1.0, gamma=0.95)  # uniformly random behaviour: off-policy
SLIPPERY_CHECKPOINTS = (500, 1_000, 2_000, 5_000, 10_000, 20_000, 40_000)


def slippery_convergence(checkpoints=SLIPPERY_CHECKPOINTS, seed: int = 0) -> dict:
    """Q-learning on slippery 4×4 FrozenLake with Robbins–Monro step sizes and a uniformly random
    behaviour policy: at each checkpoint (episodes so far), the error to Q* and the number of
    states whose greedy action is not optimal."""
    env = gym.make("FrozenLake-v1")
    mdp = bandits.mdp_from_gymnasium(env, SLIPPERY["gamma"])
    V_star = planning.value_iteration(mdp, theta=1e-12).V
    Q_star = mdp.q_from_v(V_star)
    optimal = planning.optimal_action_sets(mdp, V_star)
    live = ~mdp.terminal
    Q, visits = np.zeros_like(Q_star), np.zeros(Q_star.shape, dtype=np.int64)
    rows, done = [], 0
    for c, total in enumerate(checkpoints):
        train(env, "q_learning", total - done, seed=seed + c, Q=Q, visits=visits, **SLIPPERY)  # continues Q in place
        done = total
        greedy = np.argmax(Q, axis=1)
        V_greedy = bandits.policy_evaluation_exact(mdp, greedy)
        rows.append({"episodes": total, "max_abs_q_error": float(np.abs(Q - Q_star)[live].max()),
                     "n_suboptimal_states": int(sum(int(greedy[s]) not in optimal[s] for s in range(mdp.n_states))),
                     "greedy_value_gap_max": float((V_star - V_greedy).max())})
    return {"gamma": SLIPPERY["gamma"], "checkpoints": rows, "V_star_start": float(V_star[0])}


def cliff_runs(n_runs: int = CLIFF_RUNS, n_episodes: int = CLIFF_EPISODES, settings: dict = CLIFF) -> dict[str, list[TabularRun]]:
    """SARSA and Q-learning on CliffWalking, seeds 0 … n_runs − 1."""
    env = gym.make("CliffWalking-v1")
    return {method: [train(env, method, n_episodes, seed=seed, **settings) for seed in range(n_runs)]
            for method in ("sarsa", "q_learning")}


def _draw_paths(ax, paths: dict[str, list[int]]):
    grid = np.zeros((4, 12))
    grid[3, 1:11] = 1
    ax.imshow(grid, cmap="Greys", vmin=0, vmax=2)
    ax.set_xticks(np.arange(-0.5, 12, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, 4, 1), minor=True)
    ax.grid(which="minor", color="lightgray", lw=0.6)
    ax.tick_params(which="minor", length=0)
    offsets = np.linspace(-0.2, 0.2, len(paths))
    for (name, path), offset in zip(paths.items(), offsets):
        rows, cols = np.divmod(np.array(path), 12)
        ax.plot(cols + offset / 2, rows + offset, "-o", ms=2.5, lw=1.5, label=name)
    ax.text(0, 3, "S", ha="center", va="center", fontweight="bold")
    ax.text(11, 3, "G", ha="center", va="center", fontweight="bold")
    ax.text(5.5, 3, "cliff: −100 and back to S", ha="center", va="center", fontsize=8, color="white")
    ax.set_xticks([])
    ax.set_yticks([])


def _path_summary(mdp, runs: list[TabularRun]) -> dict:
    """Where each run's greedy path goes, its estimate Q(start, UP) (the first step of every safe
    path), and the exact value V(start) of its ε-greedy policy (day 15's linear solve)."""
    returns = [path_return(mdp, r.Q, CLIFF_START) for r in runs]
    exact = [float(bandits.policy_evaluation_exact(mdp, epsilon_greedy_matrix(r.Q, CLIFF["epsilon"]))[CLIFF_START])
             for r in runs]  # ε-soft policies always reach the goal, so the solve is well posed
    return {"greedy_path_return_counts": {f"{v:g}": returns.count(v) for v in sorted(set(returns))},
            "seed0_greedy_path": greedy_path(mdp, runs[0].Q, CLIFF_START),
            "start_up_q": [float(r.Q[CLIFF_START, 0]) for r in runs],
            "epsilon_greedy_value_start": exact}


def run_experiment(out_dir: Path) -> dict:
    """CliffWalking: SARSA vs Q-learning over 50 seeds with Sutton & Barto's constant α, and over 5
    seeds with decaying α against the planned optima; slippery FrozenLake: Q-learning → Q*."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)

    mdp = bandits.mdp_from_gymnasium(gym.make("CliffWalking-v1"), CLIFF["gamma"])
    Q_star = mdp.q_from_v(planning.value_iteration(mdp).V)
    Q_eps = epsilon_soft_value_iteration(mdp, CLIFF["epsilon"])
    runs = cliff_runs()
    long_runs = cliff_runs(CLIFF_LONG_SEEDS, CLIFF_LONG_EPISODES, CLIFF_LONG)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 1.3]})
    summary = {}
    for method, color in (("sarsa", "tab:blue"), ("q_learning", "tab:red")):
        returns = np.array([r.returns for r in runs[method]])
        mean = returns.mean(axis=0)
        ax1.plot(np.arange(10, len(mean) + 1), np.convolve(mean, np.ones(10) / 10, mode="valid"), color=color,
                 label=method.replace("_", "-"))
        summary[method] = {"mean_online_return_last_100": float(returns[:, -100:].mean()),
                           "constant_alpha": _path_summary(mdp, runs[method]),
                           "decaying_alpha": _path_summary(mdp, long_runs[method])}
    ax1.axhline(-13, color="gray", ls="--", lw=1, label="optimal return (−13)")
    ax1.set_ylim(-120, 0)
    ax1.set_xlabel("episode")
    ax1.set_ylabel(f"return during the episode (mean of {CLIFF_RUNS} runs)")
    ax1.set_title(f"online returns, ε = {CLIFF['epsilon']}, α = {CLIFF['alpha']}", fontsize=10)
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    _draw_paths(ax2, {
        "Q-learning, α = 0.5 (seed 0)": summary["q_learning"]["constant_alpha"]["seed0_greedy_path"],
        "greedy in Q* (value iteration)": greedy_path(mdp, Q_star, CLIFF_START),
        "greedy in Q_ε (best ε-soft policy)": greedy_path(mdp, Q_eps, CLIFF_START),
        "SARSA, decaying α (seed 0)": summary["sarsa"]["decaying_alpha"]["seed0_greedy_path"],
        "SARSA, α = 0.5 (seed 0)": summary["sarsa"]["constant_alpha"]["seed0_greedy_path"],
    })
    ax2.legend(fontsize=7, loc="upper center", ncol=2, bbox_to_anchor=(0.5, 1.32))
    fig.tight_layout()
    fig.savefig(out_dir / "figures/cliff_walking.png", dpi=120)
    plt.close(fig)

    slippery = slippery_convergence()
    rows = slippery["checkpoints"]
    episodes = [r["episodes"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.loglog(episodes, [r["max_abs_q_error"] for r in rows], "o-")
    ax1.set_ylabel("max |Q − Q*| over non-terminal (s, a)")
    ax2.semilogx(episodes, [r["n_suboptimal_states"] for r in rows], "s-", color="tab:red")
    ax2.set_ylabel("states whose greedy action is not optimal")
    for ax in (ax1, ax2):
        ax.set_xlabel("episodes of uniformly random behaviour")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"Q-learning on slippery FrozenLake 4×4, α = 1/n(s,a)^{SLIPPERY['alpha_power']}, γ = {SLIPPERY['gamma']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/slippery_convergence.png", dpi=120)
    plt.close(fig)

    results = {
        "cliff": {"settings": CLIFF, "episodes": CLIFF_EPISODES, "runs": CLIFF_RUNS,
                  "long_settings": CLIFF_LONG, "long_episodes": CLIFF_LONG_EPISODES, "long_runs": CLIFF_LONG_SEEDS,
                  **summary,
                  "optimal_path": greedy_path(mdp, Q_star, CLIFF_START),
                  "optimal_return": path_return(mdp, Q_star, CLIFF_START),
                  "epsilon_soft_path": greedy_path(mdp, Q_eps, CLIFF_START),
                  "epsilon_soft_path_return": path_return(mdp, Q_eps, CLIFF_START),
                  "q_star_start_up": float(Q_star[CLIFF_START, 0]), "q_eps_start_up": float(Q_eps[CLIFF_START, 0]),
                  "v_eps_start": float(bandits.policy_evaluation_exact(mdp, epsilon_greedy_matrix(Q_eps, CLIFF["epsilon"]))[CLIFF_START]),
                  "q_eps_gap_at_12": float(Q_eps[12, 1] - Q_eps[12, 0])},
        "slippery": slippery,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
