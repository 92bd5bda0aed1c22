"""Day 17: policy iteration and value iteration (ARENA 2.1 Intro to RL, "Tabular RL & policy improvement").

The optimal value function of a finite MDP is the unique fixed point of the Bellman optimality
operator

    (B* V)(s) = max_a Σ_s' T[s, a, s'] (R[s, a, s'] + γ V(s')),

and any policy greedy with respect to Q*(s, a) = Σ_s' T (R + γ V*(s')) is optimal. Two ways there:

- **Value iteration** applies B* until ‖V_{k+1} − V_k‖∞ < θ. B* is a γ-contraction, so
  ‖V_k − V*‖∞ ≤ γ^k ‖V_0 − V*‖∞, and stopping at θ leaves ‖V_{k+1} − V*‖∞ ≤ θγ/(1 − γ).
- **Policy iteration** alternates exact evaluation V_{π_k} (day 15's linear solve) with greedy
  improvement π_{k+1}(s) = argmax_a Q_{π_k}(s, a). The policy improvement theorem gives
  V_{π_{k+1}} ≥ V_{π_k} state by state, and since there are finitely many deterministic policies it
  stops, at an optimal one, after a handful of iterations.

The gridworld is Russell & Norvig's 4×3 world (AIMA Figure 17.1), whose optimal utilities and
policy the book publishes; ARENA's ``Norvig`` environment is the same grid with a different slip
model. Gymnasium's toy-text environments (via day 15's ``mdp_from_gymnasium``) are the other test
beds, and day 16 compares Q-learning and SARSA against the optimum computed here.
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
TabularMDP = bandits.TabularMDP

UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3  # the gridworld's actions (ARENA's order)
MOVES = {UP: (-1, 0), RIGHT: (0, 1), DOWN: (1, 0), LEFT: (0, -1)}
ARROWS = {UP: "↑", RIGHT: "→", DOWN: "↓", LEFT: "←"}
DOWN_FROZEN_LAKE = 1  # FrozenLake's DOWN; "always down" is a proper starting policy (it never loops forever)


# ---------------------------------------------------------------- the gridworld


@dataclass
class GridWorld:
    """A grid MDP: cells (row, col) with row 0 at the top; walls are not states.

    Each action moves one cell in its direction with probability ``intended``; otherwise the move
    slips: ``slip="perpendicular"`` splits the rest between the two perpendicular directions
    (AIMA), ``slip="any"`` among the three other directions (ARENA's Norvig). A move into a wall
    or off the grid stays put. Every move pays ``step_reward``; entering a terminal cell also pays
    that cell's reward, and the episode ends there.
    """

    rows: int = 3
    cols: int = 4
    walls: tuple[tuple[int, int], ...] = ((1, 1),)
    terminals: dict[tuple[int, int], float] = field(default_factory=lambda: {(0, 3): 1.0, (1, 3): -1.0})
    step_reward: float = -0.04
    intended: float = 0.8
    slip: str = "perpendicular"
    start: tuple[int, int] = (2, 0)

    @property
    def cells(self) -> list[tuple[int, int]]:
        return [(r, c) for r in range(self.rows) for c in range(self.cols) if (r, c) not in self.walls]

    def index(self, cell: tuple[int, int]) -> int:
        return self.cells.index(cell)

    def _move(self, cell, action) -> tuple[int, int]:
        dr, dc = MOVES[action]
        target = (cell[0] + dr, cell[1] + dc)
        inside = 0 <= target[0] < self.rows and 0 <= target[1] < self.cols
        return target if inside and target not in self.walls else cell

    def outcome_probabilities(self, action: int) -> dict[int, float]:
        """P(actual direction | intended action)."""
        if self.slip == "perpendicular":
            others = [(action + 1) % 4, (action + 3) % 4]
        elif self.slip == "any":
            others = [a for a in range(4) if a != action]
        else:
            raise ValueError(f"unknown slip model {self.slip!r} (use 'perpendicular' or 'any')")
        probs = {a: (1 - self.intended) / len(others) for a in others}
        probs[action] = probs.get(action, 0.0) + self.intended
        return probs

    def mdp(self, gamma: float) -> TabularMDP:
        cells = self.cells
        n = len(cells)
        T, R = np.zeros((n, 4, n)), np.zeros((n, 4, n))
        terminal = np.array([cell in self.terminals for cell in cells])
        for s, cell in enumerate(cells):
            if terminal[s]:
                T[s, :, s] = 1.0
                continue
            for a in range(4):
                for direction, p in self.outcome_probabilities(a).items():
                    nxt = self._move(cell, direction)
                    s_next = cells.index(nxt)
                    T[s, a, s_next] += p
                    R[s, a, s_next] = self.step_reward + self.terminals.get(nxt, 0.0)
        return TabularMDP(T, R, gamma, terminal)

    def as_grid(self, values) -> np.ndarray:
        """Per-state values laid out on the grid (NaN on walls)."""
        grid = np.full((self.rows, self.cols), np.nan, dtype=object if np.asarray(values).dtype.kind in "OU" else float)
        for s, (r, c) in enumerate(self.cells):
            grid[r, c] = values[s]
        return grid


def aima_gridworld() -> GridWorld:
    """Russell & Norvig's 4×3 world: 0.8 intended, 0.1 each perpendicular slip, −0.04 a step."""
    return GridWorld()


def arena_norvig() -> GridWorld:
    """ARENA's Norvig environment: the same grid, 0.7 intended and 0.1 to each other direction."""
    return GridWorld(intended=0.7, slip="any")


# ---------------------------------------------------------------- planning


def bellman_optimality_backup(mdp: TabularMDP, V: Float[np.ndarray, "S"]) -> Float[np.ndarray, "S"]:
    """(B* V)(s) = max_a Q_V(s, a), and 0 on terminal states."""
    return mdp.q_from_v(V).max(axis=1)


def greedy_policy(Q: Float[np.ndarray, "S A"], tol: float = 1e-12) -> Int[np.ndarray, "S"]:
    """argmax_a Q(s, a), the lowest action index among those within ``tol`` of the maximum
    (a fixed tie-break, so equal-valued actions do not make the policy flip back and forth)."""
    return np.argmax(Q >= Q.max(axis=1, keepdims=True) - tol, axis=1)


@dataclass
class PlanningResult:
    V: Float[np.ndarray, "S"]
    policy: Int[np.ndarray, "S"]
    values: list[np.ndarray]  # V after each iteration (V_0 first)
    policies: list[np.ndarray]  # the greedy/improved policy after each iteration

    @property
    def iterations(self) -> int:
        return len(self.values) - 1


def value_iteration(mdp: TabularMDP, theta: float = 1e-10, max_iterations: int = 100_000,
                    V0: np.ndarray | None = None) -> PlanningResult:
    """V ← B* V from V0 (default 0) until max|ΔV| < θ; the policy is greedy in the last Q."""
    V = np.zeros(mdp.n_states) if V0 is None else np.asarray(V0, dtype=np.float64)
    values, policies = [V], [greedy_policy(mdp.q_from_v(V))]
    for _ in range(max_iterations):
        Q = mdp.q_from_v(V)
        V_next = Q.max(axis=1)
        values.append(V_next)
        policies.append(greedy_policy(mdp.q_from_v(V_next)))
        if np.abs(V_next - V).max() < theta:
            return PlanningResult(V_next, policies[-1], values, policies)
        V = V_next
    raise RuntimeError(f"value iteration did not converge in {max_iterations} iterations")


def policy_iteration(mdp: TabularMDP, policy0: np.ndarray | None = None, max_iterations: int = 1_000,
                     tol: float = 1e-9) -> PlanningResult:
    """Evaluate exactly, improve greedily; stop when no state's action changes.

    An action changes only if it is better than the current one by more than ``tol`` (so ties
    cannot make it cycle). ``policy0`` must be proper when γ = 1 (reach a terminal state with
    probability 1), or its evaluation is singular.
    """
    policy = np.zeros(mdp.n_states, dtype=int) if policy0 is None else np.asarray(policy0, dtype=int)
    values, policies = [], [policy]
    for _ in range(max_iterations):
        V = bandits.policy_evaluation_exact(mdp, policy)
        values.append(V)
        Q = mdp.q_from_v(V)
        current = Q[np.arange(mdp.n_states), policy]
        candidate = greedy_policy(Q)
        improve = Q[np.arange(mdp.n_states), candidate] > current + tol
        new_policy = np.where(improve, candidate, policy)
        if np.array_equal(new_policy, policy):
            return PlanningResult(V, policy, values, policies)
        policy = new_policy
        policies.append(policy)
    raise RuntimeError(f"policy iteration did not stabilise in {max_iterations} iterations")


def optimal_action_sets(mdp: TabularMDP, V_star: Float[np.ndarray, "S"], tol: float = 1e-8) -> list[set[int]]:
    """For each non-terminal state, the actions a with Q*(s, a) within ``tol`` of max (terminal: all)."""
    Q = mdp.q_from_v(V_star)
    return [set(np.flatnonzero(Q[s] >= Q[s].max() - tol).tolist()) if not mdp.terminal[s] else set(range(mdp.n_actions))
            for s in range(mdp.n_states)]


# ---------------------------------------------------------------- the experiment


def _draw_grid(ax, world: GridWorld, V, policy, title):
    from matplotlib.patches import Rectangle

    grid = world.as_grid(V).astype(float)
    ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=-1, vmax=1)
    for s, (r, c) in enumerate(world.cells):
        if (r, c) in world.terminals:
            label = f"{world.terminals[(r, c)]:+g}"
        else:
            label = f"{ARROWS[int(policy[s])]}\n{V[s]:.3f}"
        ax.text(c, r, label, ha="center", va="center", fontsize=10)
    for (r, c) in world.walls:
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, color="gray"))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)


def planning_summary(mdp: TabularMDP) -> dict:
    vi, pi = value_iteration(mdp), policy_iteration(mdp)
    first_optimal = next(k for k, p in enumerate(vi.policies)
                         if all(int(p[s]) in acts for s, acts in enumerate(optimal_action_sets(mdp, vi.V))))
    return {"vi_iterations": vi.iterations, "pi_iterations": pi.iterations,
            "max_abs_diff_vi_vs_pi": float(np.abs(vi.V - pi.V).max()),
            "same_policy": bool(np.array_equal(vi.policy, pi.policy)),
            "vi_policy_optimal_from_iteration": first_optimal}


def run_experiment(out_dir: Path) -> dict:
    """Optimal values and policies on AIMA's and ARENA's gridworlds and on FrozenLake 8×8, and the
    convergence of both methods."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)

    worlds = {"aima": (aima_gridworld(), 1.0), "arena_norvig": (arena_norvig(), 0.99)}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    results: dict = {"gridworlds": {}}
    for ax, (name, (world, gamma)) in zip(axes, worlds.items()):
        mdp = world.mdp(gamma)
        vi = value_iteration(mdp)
        _draw_grid(ax, world, vi.V, vi.policy,
                   f"{name}: intended {world.intended}, slip '{world.slip}', γ = {gamma:g}")
        results["gridworlds"][name] = {"gamma": gamma, "V": vi.V.tolist(), "policy": vi.policy.tolist(),
                                       "start_value": float(vi.V[world.index(world.start)]), **planning_summary(mdp)}
    fig.tight_layout()
    fig.savefig(out_dir / "figures/gridworld_optimum.png", dpi=120)
    plt.close(fig)

    lake = gym.make("FrozenLake8x8-v1")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    for gamma, style in [(0.9, "-"), (0.99, "--")]:
        mdp = bandits.mdp_from_gymnasium(lake, gamma)
        vi, pi = value_iteration(mdp, theta=1e-12), policy_iteration(mdp)
        err = np.array([np.abs(V - pi.V).max() for V in vi.values])
        k = np.arange(len(err))
        keep = (k > 0) & (err > 0)
        ax1.loglog(k[keep], err[keep], style, color="tab:blue", label=f"value iteration, γ = {gamma}")
        ax1.loglog(k[1:], err[0] * gamma ** k[1:], style, color="gray", lw=0.8, label=f"γ^k ‖V_0 − V*‖∞, γ = {gamma}")
        pi_err = np.array([np.abs(V - pi.V).max() for V in pi.values])
        kp = np.arange(1, len(pi_err) + 1)  # evaluation number k (of π_{k-1})
        ax1.loglog(kp[pi_err > 0], pi_err[pi_err > 0], style, marker="o", color="tab:red",
                   label=f"policy iteration, γ = {gamma} (exact at k = {len(pi_err)})")
        changed = [int((a != b).sum()) for a, b in zip(vi.policies[:-1], vi.policies[1:])]
        ax2.semilogx(np.arange(1, len(changed) + 1), changed, style, color="tab:blue", label=f"value iteration, γ = {gamma}")
        pi_changed = [int((a != b).sum()) for a, b in zip(pi.policies[:-1], pi.policies[1:])]
        ax2.semilogx(np.arange(1, len(pi_changed) + 1), pi_changed, style, marker="o", color="tab:red",
                     label=f"policy iteration, γ = {gamma}")
        results[f"frozen_lake_8x8_gamma_{round(100 * gamma):03d}"] = {**planning_summary(mdp), "start_value": float(pi.V[0])}
    ax1.set_xlabel("iteration k (log scale)")
    ax1.set_ylabel("‖V_k − V*‖∞")
    ax1.set_ylim(1e-12, 2)
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3, which="both")
    ax2.set_xlabel("iteration k (log scale)")
    ax2.set_ylabel("states whose (greedy) action changed")
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    fig.suptitle("FrozenLake 8×8 (slippery): convergence to the optimum")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/convergence.png", dpi=120)
    plt.close(fig)

    lake4 = gym.make("FrozenLake-v1")
    mdp4 = bandits.mdp_from_gymnasium(lake4, 1.0)
    pi4 = policy_iteration(mdp4, policy0=np.full(16, DOWN_FROZEN_LAKE))
    mc_mean, mc_se = bandits.monte_carlo_value(lake4, pi4.policy, 1.0, 5_000, seed=7)
    results["frozen_lake_4x4_gamma_1"] = {"start_value": float(pi4.V[0]), "policy": pi4.policy.tolist(),
                                          "monte_carlo_success": mc_mean, "monte_carlo_se": mc_se}
    cliff = bandits.mdp_from_gymnasium(gym.make("CliffWalking-v1"), 1.0)
    results["cliff_walking_gamma_1"] = {"start_value": float(value_iteration(cliff).V[36])}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results

