"""Day 15: bandits, MDPs and value functions (ARENA 2.1 Intro to RL, part 1).

**Bandits.** A k-armed bandit has one state and k actions; pulling arm a pays a reward
R ~ N(q*(a), 1). Sutton & Barto's testbed draws q*(a) ~ N(0, 1) afresh for each of many
independent problems and averages over them. An agent must trade exploiting its estimates
against exploring the arms it knows little about. Three answers:

- ε-greedy: with probability ε a random arm, else argmax_a Q(a), where Q is the sample average
  Q_{n+1} = Q_n + (R_n − Q_n)/n (or a constant step α, an exponential recency-weighted average);
- UCB: A_t = argmax_a [Q(a) + c √(ln t / N(a))], optimism in proportion to uncertainty;
- gradient bandit: a softmax policy π(a) = e^{H(a)} / Σ_b e^{H(b)} over preferences H, updated by
  H ← H + α (R − R̄)(1_{a=A} − π), a stochastic gradient ascent on E[R] = Σ_a π(a) q*(a)
  (the baseline R̄, the mean reward so far, changes the variance, not the expectation).

Their cost is measured by the (pseudo-)regret Σ_t [max_a q*(a) − q*(A_t)].

**MDPs.** A finite MDP is a tensor T[s, a, s'] = P(s' | s, a), a reward R[s, a, s'] and a discount
γ. A policy π(a | s) induces a Markov chain P_π[s, s'] = Σ_a π(a|s) T[s, a, s'] with expected
reward r_π[s] = Σ_a π(a|s) Σ_s' T[s, a, s'] R[s, a, s']. Its value V_π(s) = E[Σ_t γ^t r_t | s_0 = s]
satisfies the Bellman expectation equation V = r_π + γ P_π V, a linear system:

    V_π = (I − γ P_π)^{-1} r_π,

which we solve exactly, or approach by iterating the backup V ← r_π + γ P_π V, a γ-contraction
in the max norm: ‖V_k − V_π‖∞ ≤ γ^k ‖V_0 − V_π‖∞. Terminal states have value 0 (nothing follows
them), so both methods solve only for the non-terminal states.

Gymnasium's toy-text environments publish their dynamics as ``env.unwrapped.P[s][a]``, a list
of (probability, next state, reward, terminated); ``mdp_from_gymnasium`` turns that into T and R.
Days 16 and 17 import the MDP, the policy evaluation and the Monte Carlo check from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from jaxtyping import Bool, Float, Int

# ---------------------------------------------------------------- the k-armed testbed


class KArmedTestbed:
    """``n_problems`` independent k-armed bandits, stepped together (Sutton & Barto §2.3).

    q*(a) ~ N(mean, 1) for each problem and arm, drawn once from ``seed``; pulling arm a pays
    R ~ N(q*(a), 1), drawn from the generator the caller passes (so runs of different agents on
    the same problems do not depend on each other's order).
    """

    def __init__(self, n_problems: int, k: int = 10, seed: int = 0, mean: float = 0.0):
        self.k = k
        self.q_star: Float[np.ndarray, "problems k"] = np.random.default_rng(seed).normal(mean, 1.0, size=(n_problems, k))
        self.best = self.q_star.max(axis=1)
        self.best_arm = self.q_star.argmax(axis=1)

    @property
    def n_problems(self) -> int:
        return self.q_star.shape[0]

    def pull(self, actions: Int[np.ndarray, "problems"], rng: np.random.Generator) -> Float[np.ndarray, "problems"]:
        """One reward per problem: R ~ N(q*(A), 1)."""
        means = self.q_star[np.arange(self.n_problems), actions]
        return means + rng.normal(size=self.n_problems)

    def regret(self, actions: Int[np.ndarray, "problems"]) -> Float[np.ndarray, "problems"]:
        """The pseudo-regret of one step: max_a q*(a) − q*(A), the expected reward given up."""
        return self.best - self.q_star[np.arange(self.n_problems), actions]


def argmax_random_ties(values: Float[np.ndarray, "problems k"], rng: np.random.Generator) -> Int[np.ndarray, "problems"]:
    """Row-wise argmax, breaking ties uniformly at random (np.argmax would always pick the first)."""
    is_max = values == values.max(axis=1, keepdims=True)
    return np.argmax(is_max * rng.random(values.shape), axis=1)


def _key(text: str) -> str:
    return text.replace(".", "p")


class BanditAgent:
    """An agent for ``n`` problems at once: ``act`` returns one arm per problem, ``observe`` learns."""

    name = "agent"  # for figure legends
    key = "agent"  # for results.json (no spaces or dots: the post cites it as a dotted path)

    def reset(self, n: int, k: int, rng: np.random.Generator) -> None:
        self.n, self.k, self.rng, self.t = n, k, rng, 0
        self.counts = np.zeros((n, k))

    def act(self) -> Int[np.ndarray, "problems"]:
        raise NotImplementedError

    def observe(self, actions: Int[np.ndarray, "problems"], rewards: Float[np.ndarray, "problems"]) -> None:
        self.t += 1
        self.counts[np.arange(self.n), actions] += 1


class EpsilonGreedy(BanditAgent):
    """ε-greedy on action-value estimates Q, initialised to ``initial``.

    Update of the pulled arm: Q ← Q + β (R − Q) with β = 1/N(a) (the sample average) or a
    constant ``step_size`` α (an exponential recency-weighted average).
    """

    def __init__(self, epsilon: float, initial: float = 0.0, step_size: float | None = None):
        self.epsilon, self.initial, self.step_size = epsilon, initial, step_size
        self.name = f"ε-greedy ε={epsilon:g}" + (f", Q₀={initial:g}" if initial else "")
        self.key = ("optimistic_greedy" if initial else "greedy") if epsilon == 0 else _key(f"eps_{epsilon:g}")

    def reset(self, n, k, rng):
        super().reset(n, k, rng)
        self.q = np.full((n, k), self.initial, dtype=np.float64)

    def act(self):
        greedy = argmax_random_ties(self.q, self.rng)
        explore = self.rng.random(self.n) < self.epsilon
        return np.where(explore, self.rng.integers(0, self.k, self.n), greedy)

    def observe(self, actions, rewards):
        super().observe(actions, rewards)
        rows = np.arange(self.n)
        beta = 1.0 / self.counts[rows, actions] if self.step_size is None else self.step_size
        self.q[rows, actions] += beta * (rewards - self.q[rows, actions])


class UCB(EpsilonGreedy):
    """Upper confidence bound: A_t = argmax_a [Q(a) + c √(ln t / N(a))], an arm with N(a) = 0 first."""

    def __init__(self, c: float):
        super().__init__(epsilon=0.0)
        self.c = c
        self.name = f"UCB c={c:g}"
        self.key = _key(f"ucb_c{c:g}")

    def scores(self) -> Float[np.ndarray, "problems k"]:
        t = self.t + 1  # the step about to be taken, counting from 1
        tried = self.counts > 0
        bonus = self.c * np.sqrt(np.log(t) / np.where(tried, self.counts, 1.0))
        return np.where(tried, self.q + bonus, np.inf)

    def act(self):
        return argmax_random_ties(self.scores(), self.rng)


def softmax(h: Float[np.ndarray, "... k"]) -> Float[np.ndarray, "... k"]:
    """π(a) = e^{h(a) − max h} / Σ_b e^{h(b) − max h} (shifted for stability)."""
    z = np.exp(h - h.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class GradientBandit(BanditAgent):
    """Softmax over preferences H, updated by H ← H + α (R − R̄)(1_{a=A} − π).

    R̄ is the mean of the rewards *before* this one (R̄ = R on the first step, Sutton & Barto
    §2.8), or 0 without a baseline: it must not depend on the current action for the update to
    stay an unbiased gradient estimate.
    """

    def __init__(self, alpha: float, baseline: bool = True):
        self.alpha, self.baseline = alpha, baseline
        self.name = f"gradient α={alpha:g}" + ("" if baseline else ", no baseline")
        self.key = _key(f"gradient_a{alpha:g}" + ("" if baseline else "_no_baseline"))

    def reset(self, n, k, rng):
        super().reset(n, k, rng)
        self.h = np.zeros((n, k))
        self.mean_reward = np.zeros(n)

    def policy(self) -> Float[np.ndarray, "problems k"]:
        return softmax(self.h)

    def act(self):
        cdf = self.policy().cumsum(axis=1)
        u = self.rng.random((self.n, 1))
        return np.minimum((u >= cdf).sum(axis=1), self.k - 1)

    def preference_step(self, actions, rewards, baseline) -> Float[np.ndarray, "problems k"]:
        """ΔH = α (R − baseline)(1_{a=A} − π): the stochastic-gradient step for one pull."""
        one_hot = np.eye(self.k)[actions]
        return self.alpha * (rewards - baseline)[:, None] * (one_hot - self.policy())

    def observe(self, actions, rewards):
        super().observe(actions, rewards)
        if not self.baseline:
            baseline = np.zeros(self.n)
        else:
            baseline = rewards if self.t == 1 else self.mean_reward
        self.h += self.preference_step(actions, rewards, baseline)
        self.mean_reward = self.mean_reward + (rewards - self.mean_reward) / self.t


class RandomAgent(BanditAgent):
    """Uniformly random arms: the regret every learner must beat."""

    name = key = "random"

    def act(self):
        return self.rng.integers(0, self.k, self.n)


class Oracle(BanditAgent):
    """Knows q* and always pulls the best arm: zero regret, reward E[max_a q*(a)]."""

    name = key = "oracle"

    def __init__(self, testbed: KArmedTestbed):
        self.testbed = testbed

    def act(self):
        return self.testbed.best_arm


@dataclass
class BanditRun:
    rewards: Float[np.ndarray, "steps problems"]
    optimal: Bool[np.ndarray, "steps problems"]
    regret: Float[np.ndarray, "steps problems"]


def run_bandit(agent: BanditAgent, testbed: KArmedTestbed, steps: int, seed: int = 0) -> BanditRun:
    """Let ``agent`` play every problem of ``testbed`` for ``steps`` pulls; record per step and problem.

    ``seed`` seeds two independent streams: the agent's choices and the rewards' noise."""
    agent_seed, reward_seed = np.random.SeedSequence(seed).spawn(2)
    agent.reset(testbed.n_problems, testbed.k, np.random.default_rng(agent_seed))
    reward_rng = np.random.default_rng(reward_seed)
    shape = (steps, testbed.n_problems)
    rewards, optimal, regret = np.zeros(shape), np.zeros(shape, dtype=bool), np.zeros(shape)
    for t in range(steps):
        actions = agent.act()
        r = testbed.pull(actions, reward_rng)
        agent.observe(actions, r)
        rewards[t], optimal[t], regret[t] = r, actions == testbed.best_arm, testbed.regret(actions)
    return BanditRun(rewards, optimal, regret)


# ---------------------------------------------------------------- finite MDPs


@dataclass
class TabularMDP:
    """T[s, a, s'] = P(s' | s, a), R[s, a, s'] the reward of that transition, discount γ.

    ``terminal[s]``: the episode ends on entering s; its value is 0 and nothing is learned there.
    """

    T: Float[np.ndarray, "S A S"]
    R: Float[np.ndarray, "S A S"]
    gamma: float
    terminal: Bool[np.ndarray, "S"]

    @property
    def n_states(self) -> int:
        return self.T.shape[0]

    @property
    def n_actions(self) -> int:
        return self.T.shape[1]

    def expected_reward(self) -> Float[np.ndarray, "S A"]:
        """r(s, a) = Σ_s' T[s, a, s'] R[s, a, s']."""
        return np.einsum("ijk,ijk->ij", self.T, self.R)

    def q_from_v(self, V: Float[np.ndarray, "S"]) -> Float[np.ndarray, "S A"]:
        """Q(s, a) = Σ_s' T[s, a, s'] (R[s, a, s'] + γ V(s')), with Q = 0 on terminal states."""
        Q = self.expected_reward() + self.gamma * self.T @ V
        Q[self.terminal] = 0.0
        return Q


def mdp_from_gymnasium(env: gym.Env, gamma: float) -> TabularMDP:
    """T and R from a toy-text environment's published table ``env.unwrapped.P``.

    Each P[s][a] is a list of (p, s', r, terminated); entries with the same s' add up (slippery
    FrozenLake lists some twice). A state entered with terminated=True is made absorbing with
    reward 0 (CliffWalking's table still lets the goal move on; the episode never does).
    """
    P = env.unwrapped.P
    n_states, n_actions = len(P), len(P[0])
    T = np.zeros((n_states, n_actions, n_states))
    R = np.zeros((n_states, n_actions, n_states))
    entered: dict[int, set[bool]] = {}
    for s in range(n_states):
        for a in range(n_actions):
            for p, s_next, r, done in P[s][a]:
                s_next = int(s_next)
                if T[s, a, s_next] > 0 and R[s, a, s_next] != r:
                    raise ValueError(f"P[{s}][{a}] lists next state {s_next} twice with different rewards")
                T[s, a, s_next] += p
                R[s, a, s_next] = r
                if p > 0:
                    entered.setdefault(s_next, set()).add(bool(done))
    if any(len(flags) > 1 for flags in entered.values()):
        raise ValueError("a state is terminal on some transitions into it and not on others")
    terminal = np.array([entered.get(s) == {True} for s in range(n_states)])
    for s in np.flatnonzero(terminal):
        T[s], R[s] = 0.0, 0.0
        T[s, :, s] = 1.0
    return TabularMDP(T, R, gamma, terminal)


def as_policy_matrix(policy, n_states: int, n_actions: int) -> Float[np.ndarray, "S A"]:
    """A deterministic policy (one action per state) as its one-hot matrix π[s, a]; a matrix is returned as is."""
    policy = np.asarray(policy)
    if policy.ndim == 1:
        return np.eye(n_actions)[policy]
    if policy.shape != (n_states, n_actions) or not np.allclose(policy.sum(axis=1), 1.0):
        raise ValueError(f"a stochastic policy must be an ({n_states}, {n_actions}) matrix of probabilities")
    return policy


def policy_dynamics(mdp: TabularMDP, policy) -> tuple[Float[np.ndarray, "S S"], Float[np.ndarray, "S"]]:
    """(P_π, r_π): P_π[s, s'] = Σ_a π(a|s) T[s, a, s'] and r_π[s] = Σ_a π(a|s) r(s, a)."""
    pi = as_policy_matrix(policy, mdp.n_states, mdp.n_actions)
    return np.einsum("ia,iaj->ij", pi, mdp.T), (pi * mdp.expected_reward()).sum(axis=1)


def policy_evaluation_exact(mdp: TabularMDP, policy) -> Float[np.ndarray, "S"]:
    """V_π = (I − γ P_π)^{-1} r_π on the non-terminal states N (V = 0 on terminal ones):
    solve (I − γ P_π[N, N]) V_N = r_π[N]."""
    P_pi, r_pi = policy_dynamics(mdp, policy)
    live = ~mdp.terminal
    A = np.eye(live.sum()) - mdp.gamma * P_pi[np.ix_(live, live)]
    V = np.zeros(mdp.n_states)
    V[live] = np.linalg.solve(A, r_pi[live])
    return V


def bellman_expectation_backup(mdp: TabularMDP, P_pi, r_pi, V: Float[np.ndarray, "S"]) -> Float[np.ndarray, "S"]:
    """(B_π V)(s) = r_π(s) + γ Σ_s' P_π(s, s') V(s'), and 0 on terminal states."""
    out = r_pi + mdp.gamma * P_pi @ V
    out[mdp.terminal] = 0.0
    return out


def policy_evaluation_iterative(mdp: TabularMDP, policy, tol: float = 1e-10, max_iterations: int = 100_000,
                                V0: np.ndarray | None = None) -> tuple[Float[np.ndarray, "S"], list[Float[np.ndarray, "S"]]]:
    """Iterate V ← B_π V from V0 (default 0) until max|ΔV| < tol. Returns V and every iterate."""
    P_pi, r_pi = policy_dynamics(mdp, policy)
    V = np.zeros(mdp.n_states) if V0 is None else np.array(V0, dtype=np.float64)
    history = [V]
    for _ in range(max_iterations):
        V_next = bellman_expectation_backup(mdp, P_pi, r_pi, V)
        history.append(V_next)
        if np.abs(V_next - V).max() < tol:
            return V_next, history
        V = V_next
    raise RuntimeError(f"policy evaluation did not converge in {max_iterations} iterations (an improper policy with γ = 1?)")


def monte_carlo_value(env: gym.Env, policy, gamma: float, n_episodes: int, seed: int = 0,
                      start: int | None = None) -> tuple[float, float]:
    """Mean and standard error of the discounted return Σ_t γ^t r_t of ``policy`` from reset,
    by running episodes in the environment itself (its own step function, not our T and R)."""
    env = env.unwrapped  # no time limit: the values are those of the untruncated MDP
    n_states, n_actions = env.observation_space.n, env.action_space.n
    cdf = as_policy_matrix(policy, n_states, n_actions).cumsum(axis=1)
    rng = np.random.default_rng(seed)
    returns = np.zeros(n_episodes)
    for i in range(n_episodes):
        s, _ = env.reset(seed=seed + i)
        total, discount, done = 0.0, 1.0, False
        while not done:
            a = min(int(np.searchsorted(cdf[s], rng.random(), side="right")), n_actions - 1)
            s, r, terminated, truncated, _ = env.step(a)
            total += discount * r
            discount *= gamma
            done = terminated or truncated
        returns[i] = total
    return float(returns.mean()), float(returns.std(ddof=1) / np.sqrt(n_episodes))


# ---------------------------------------------------------------- the experiment

EXPECTED_MAX_OF_10_NORMALS = 1.538752730835173  # E[max of 10 iid N(0,1)] = ∫ x·10 φ(x) Φ(x)^9 dx


def testbed_agents(testbed: KArmedTestbed) -> list[BanditAgent]:
    """The agents of the post's figures (Sutton & Barto's Figures 2.2–2.5 settings)."""
    return [RandomAgent(), EpsilonGreedy(0.0), EpsilonGreedy(0.01), EpsilonGreedy(0.1),
            EpsilonGreedy(0.0, initial=5.0, step_size=0.1), UCB(2.0),
            GradientBandit(0.1), GradientBandit(0.1, baseline=False), Oracle(testbed)]


def bandit_summary(runs: dict[str, BanditRun], last: int = 100) -> dict:
    return {name: {"mean_reward_last": float(run.rewards[-last:].mean()),
                   "optimal_fraction_last": float(run.optimal[-last:].mean()),
                   "cumulative_regret": float(run.regret.sum(axis=0).mean())}
            for name, run in runs.items()}


def frozen_lake_evaluation(gamma: float = 0.9) -> dict:
    """Uniform-random policy on slippery 4×4 FrozenLake: exact, iterative and Monte Carlo values."""
    env = gym.make("FrozenLake-v1")
    mdp = mdp_from_gymnasium(env, gamma)
    uniform = np.full((mdp.n_states, mdp.n_actions), 1 / mdp.n_actions)
    V_exact = policy_evaluation_exact(mdp, uniform)
    V_iter, history = policy_evaluation_iterative(mdp, uniform, tol=1e-12)
    errors = [float(np.abs(V - V_exact).max()) for V in history]
    mc_mean, mc_se = monte_carlo_value(env, uniform, gamma, 20_000, seed=0)
    return {"gamma": gamma, "V_exact": V_exact.tolist(), "iterations": len(history) - 1, "errors": errors,
            "max_abs_diff_exact_vs_iterative": float(np.abs(V_iter - V_exact).max()),
            "monte_carlo_start": mc_mean, "monte_carlo_se": mc_se,
            "z_monte_carlo_vs_exact": float((mc_mean - V_exact[0]) / mc_se)}


def run_experiment(out_dir: Path) -> dict:
    """The 10-armed testbed (2000 problems × 1000 steps; regret over 10 000 steps) and policy
    evaluation on FrozenLake."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)

    testbed = KArmedTestbed(2000, seed=0)
    agents = {agent.key: agent for agent in testbed_agents(testbed)}
    runs = {key: run_bandit(agent, testbed, 1000, seed=1) for key, agent in agents.items()}
    long_bed = KArmedTestbed(200, seed=2)
    long_agents = [RandomAgent(), EpsilonGreedy(0.1), EpsilonGreedy(0.01), UCB(2.0), GradientBandit(0.1)]
    long_runs = {a.key: run_bandit(a, long_bed, 10_000, seed=3) for a in long_agents}
    long_names = {a.key: a.name for a in long_agents}

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    for key, run in runs.items():
        if key == "oracle":
            continue
        ax1.plot(run.rewards.mean(axis=1), lw=1, label=agents[key].name)
        ax2.plot(100 * run.optimal.mean(axis=1), lw=1, label=agents[key].name)
    ax1.axhline(EXPECTED_MAX_OF_10_NORMALS, color="black", ls="--", lw=1, label="E[max q*] (oracle)")
    ax1.set_xlabel("step")
    ax1.set_ylabel("average reward (2000 problems)")
    ax2.set_xlabel("step")
    ax2.set_ylabel("% optimal arm")
    ax1.legend(fontsize=7, ncol=2, loc="lower right")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle("10-armed testbed")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/testbed.png", dpi=120)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    for key, run in long_runs.items():
        if key == "random":
            continue
        curve = run.regret.cumsum(axis=0).mean(axis=1)
        ax1.plot(np.arange(1, len(curve) + 1), curve, label=long_names[key])
        ax2.semilogx(np.arange(1, len(curve) + 1), curve, label=long_names[key])
    ax1.set_ylabel("cumulative regret (mean of 200 problems)")
    ax2.set_ylabel("the same, log step axis")
    for ax in (ax1, ax2):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("Regret Σ (max q* − q*(A_t)) over 10 000 steps")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/regret.png", dpi=120)
    plt.close(fig)

    shifted = KArmedTestbed(2000, seed=4, mean=4.0)
    gradient_agents = [GradientBandit(0.1), GradientBandit(0.4), GradientBandit(0.1, baseline=False),
                       GradientBandit(0.4, baseline=False)]
    gradient_runs = {a.key: run_bandit(a, shifted, 1000, seed=5) for a in gradient_agents}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for agent in gradient_agents:
        ax.plot(100 * gradient_runs[agent.key].optimal.mean(axis=1), lw=1, label=agent.name,
                ls="--" if "no baseline" in agent.name else "-")
    ax.set_xlabel("step")
    ax.set_ylabel("% optimal arm (2000 problems)")
    ax.set_title("Gradient bandits when q*(a) ~ N(4, 1): the baseline matters")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/gradient_baseline.png", dpi=120)
    plt.close(fig)

    lake = frozen_lake_evaluation()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
    errors = np.array(lake["errors"])
    k = np.arange(len(errors))
    ax1.semilogy(k[errors > 0], errors[errors > 0], label="‖V_k − V_π‖∞ (iterative)")
    ax1.semilogy(k, errors[0] * lake["gamma"] ** k, "--", label="γ^k ‖V_0 − V_π‖∞ (contraction bound)")
    ax1.set_xlabel("iteration k")
    ax1.set_ylabel("max-norm error vs exact solve")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3, which="both")
    V = np.array(lake["V_exact"]).reshape(4, 4)
    desc = gym.make("FrozenLake-v1").unwrapped.desc.astype(str)
    im = ax2.imshow(V, cmap="viridis")
    for i in range(4):
        for j in range(4):
            ax2.text(j, i, f"{desc[i, j]}\n{V[i, j]:.3f}", ha="center", va="center", fontsize=8,
                     color="white" if V[i, j] < V.max() / 2 else "black")
    ax2.set_xticks([])
    ax2.set_yticks([])
    ax2.set_title(f"V_π of the uniform policy, γ = {lake['gamma']}")
    fig.colorbar(im, ax=ax2, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/policy_evaluation.png", dpi=120)
    plt.close(fig)

    results = {
        "testbed": {"n_problems": testbed.n_problems, "steps": 1000, "k": testbed.k,
                    "agents": bandit_summary(runs)},
        "gradient_mean_4": {"n_problems": shifted.n_problems, "steps": 1000, "agents": bandit_summary(gradient_runs)},
        "regret_10k": {"n_problems": long_bed.n_problems, "steps": 10_000, "agents": bandit_summary(long_runs)},
        "expected_max_of_10_normals": EXPECTED_MAX_OF_10_NORMALS,
        "frozen_lake": lake,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
