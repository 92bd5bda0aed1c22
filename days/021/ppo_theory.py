"""Day 21: PPO theory and the clipped objective (ARENA 2.3 PPO, part 1).

Proximal policy optimisation (Schulman et al., 2017) reuses one batch of experience, collected by
the old policy π_old, for several gradient steps. The importance ratio

    r_t(θ) = π_θ(a_t | s_t) / π_old(a_t | s_t) = exp(log π_θ − log π_old)

turns the policy-gradient surrogate into one that can be evaluated for any θ on old samples,
L^IS(θ) = E_t[r_t(θ) Â_t], whose gradient at θ = θ_old is the policy gradient. Maximising it far
from θ_old trusts the advantages Â_t (estimated under π_old) beyond where they hold, so PPO clips:

    L^CLIP(θ) = E_t[ min( r_t Â_t, clip(r_t, 1 − ε, 1 + ε) Â_t ) ].

Piecewise: for Â > 0 the term is min(r, 1 + ε)·Â (no reward for pushing r above 1 + ε); for Â < 0
it is max(r, 1 − ε)·Â (no reward for pushing r below 1 − ε). It is a pessimistic bound on L^IS:
the min takes the clipped value only when clipping would make the objective *larger*.

Three more pieces complete the learning signal and its diagnostics:

- **GAE**, Â_t = Σ_l (γλ)^l δ_t+l with δ_t = r_t + γ(1 − terminated_t)V(s_t+1) − V(s_t), the sum
  cut at episode ends. Day 20 computes it with a reverse loop; here it is a linear operator on the
  TD errors, Â = M δ with M[t, s] = (γλ)^(s−t) when s ≥ t and no episode ends in t … s−1, and it
  equals the paper's definition, the (1 − λ)λ^(n−1)-weighted average of n-step advantages.
- **The value loss** c_v · mean (V(s_t) − R̂_t)² with R̂_t = Â_t + V_old(s_t), and **the entropy
  bonus** c_e · mean H(π(· | s_t)).
- **The approximate KL**: with samples a ~ π_old and r = π_new(a)/π_old(a), three estimators of
  KL(π_old ‖ π_new) = E_old[−log r] are k1 = −log r (unbiased, high variance), k2 = ½(log r)²
  (biased, low variance) and k3 = (r − 1) − log r (unbiased, since E_old[r − 1] = 0; always ≥ 0;
  low variance). PPO implementations log k3.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from checks import timing

a2c = importlib.import_module("days.020.a2c")

# ---------------------------------------------------------------- the clipped surrogate objective


def normalize_advantages(advantages: Float[Tensor, "batch"], eps: float = 1e-8) -> Float[Tensor, "batch"]:
    """(Â − mean Â) / (std Â + eps) with the unbiased (n − 1) std, as ARENA and CleanRL do per minibatch."""
    return (advantages - advantages.mean()) / (advantages.std() + eps)


def clipped_surrogate_terms(ratio: Float[Tensor, "batch"], advantages: Float[Tensor, "batch"],
                            clip_coef: float) -> Float[Tensor, "batch"]:
    """min(r Â, clip(r, 1 − ε, 1 + ε) Â), elementwise: the per-sample terms of L^CLIP."""
    return torch.minimum(ratio * advantages, ratio.clamp(1 - clip_coef, 1 + clip_coef) * advantages)


def clipped_surrogate(new_logprobs: Float[Tensor, "batch"], old_logprobs: Float[Tensor, "batch"],
                      advantages: Float[Tensor, "batch"], clip_coef: float, normalize: bool = True,
                      eps: float = 1e-8) -> Tensor:
    """L^CLIP = mean_t min(r_t Â_t, clip(r_t, 1 − ε, 1 + ε) Â_t), r_t = exp(log π_θ − log π_old).

    The objective is *maximised*. ``old_logprobs`` and ``advantages`` are constants (detached);
    with ``normalize`` the advantages are standardised over the minibatch first (ARENA's default).
    """
    advantages = advantages.detach()
    if normalize:
        advantages = normalize_advantages(advantages, eps)
    ratio = torch.exp(new_logprobs - old_logprobs.detach())
    return clipped_surrogate_terms(ratio, advantages, clip_coef).mean()


def value_loss(values: Float[Tensor, "batch"], returns: Float[Tensor, "batch"], vf_coef: float) -> Tensor:
    """c_v · mean_t (V_φ(s_t) − R̂_t)², the critic's regression onto the (constant) GAE targets."""
    return vf_coef * (values - returns.detach()).pow(2).mean()


def entropy_bonus(logits: Float[Tensor, "batch n_actions"], ent_coef: float) -> Tensor:
    """c_e · mean_t H(π(· | s_t)), with day 20's entropy H(π) = −Σ_a π(a) log π(a)."""
    return ent_coef * a2c.entropy(logits).mean()


# ---------------------------------------------------------------- the approximate KL


def kl_estimators(logratio: Float[Tensor, "batch"]) -> dict[str, Float[Tensor, "batch"]]:
    """Per-sample estimators of KL(π_old ‖ π_new) from log r = log π_new(a) − log π_old(a), a ~ π_old:
    k1 = −log r, k2 = ½ (log r)², k3 = (r − 1) − log r."""
    return {"k1": -logratio, "k2": 0.5 * logratio**2, "k3": torch.expm1(logratio) - logratio}


def approx_kl(new_logprobs: Float[Tensor, "batch"], old_logprobs: Float[Tensor, "batch"]) -> Tensor:
    """The k3 estimate mean_t[(r_t − 1) − log r_t] of KL(π_old ‖ π_new), as ARENA and CleanRL log it.

    (r − 1) − log r ≥ 0 for every r > 0 (log is concave, so log r ≤ r − 1), and its expectation
    under π_old is exactly the KL because E_old[r] = Σ_a π_new(a) = 1.
    """
    return kl_estimators(new_logprobs - old_logprobs)["k3"].mean()


# ---------------------------------------------------------------- GAE as a linear operator


def td_errors(rewards: Float[Tensor, "T *envs"], values: Float[Tensor, "T *envs"], next_values: Float[Tensor, "T *envs"],
              terminated: Bool[Tensor, "T *envs"], gamma: float) -> Float[Tensor, "T *envs"]:
    """δ_t = r_t + γ (1 − terminated_t) V(s_{t+1}) − V(s_t), with V(s_{t+1}) of the state actually reached."""
    return rewards + gamma * (~terminated).to(rewards.dtype) * next_values - values


def gae_operator(ends: Bool[Tensor, "T *envs"], gamma: float, lam: float) -> Float[Tensor, "*envs T T"]:
    """M[t, s] = (γλ)^(s−t) if s ≥ t and no episode ends at steps t … s−1, else 0 (per environment).

    With E_k = #ends among steps < k, "no end in t … s−1" is E_s = E_t: one comparison, no loop.
    """
    T = ends.shape[0]
    e = ends.to(torch.int64)
    crossed = (torch.cumsum(e, dim=0) - e).movedim(0, -1)  # E_k, shape (*envs, T)
    same_episode = crossed[..., :, None] == crossed[..., None, :]
    steps = torch.arange(T)
    lag = steps[None, :] - steps[:, None]  # s − t
    powers = torch.tensor(gamma * lam, dtype=torch.float64) ** lag.clamp(min=0)
    return torch.where(same_episode & (lag >= 0), powers, 0.0)


def gae(rewards: Float[Tensor, "T *envs"], values: Float[Tensor, "T *envs"], next_values: Float[Tensor, "T *envs"],
        terminated: Bool[Tensor, "T *envs"], ends: Bool[Tensor, "T *envs"], gamma: float,
        lam: float) -> Float[Tensor, "T *envs"]:
    """Â = M δ for each environment: Â_t = Σ_{s ≥ t} (γλ)^(s−t) δ_s up to the end of t's episode (or of
    the rollout, where ``next_values`` bootstraps). ``ends`` = terminated or truncated stops the sum;
    only ``terminated`` removes the bootstrap V(s_{t+1}) from δ."""
    deltas = td_errors(rewards, values, next_values, terminated, gamma)
    M = gae_operator(ends, gamma, lam).to(deltas.dtype)
    return torch.einsum("...ts,s...->t...", M, deltas)


def n_step_advantage(rewards: Float[Tensor, "T"], values: Float[Tensor, "T"], next_values: Float[Tensor, "T"],
                     terminated: Bool[Tensor, "T"], ends: Bool[Tensor, "T"], gamma: float, n: int) -> Float[Tensor, "T"]:
    """Â^(n)_t = r_t + γ r_{t+1} + … + γ^(m−1) r_{t+m−1} + γ^m (1 − terminated_{t+m−1}) V(s_{t+m}) − V(s_t),

    m = min(n, steps left in t's episode within the rollout): the n-step estimate, cut where data
    stop. Written from the rewards, not the TD errors, so it is an independent route to GAE.
    """
    T = rewards.shape[0]
    out = torch.empty_like(rewards)
    for t in range(T):
        total, k = rewards.new_zeros(()), t
        while True:
            total = total + gamma ** (k - t) * rewards[k]
            if k - t + 1 == n or ends[k] or k == T - 1:
                break
            k += 1
        bootstrap = 0.0 if terminated[k] else gamma ** (k - t + 1) * next_values[k]
        out[t] = total + bootstrap - values[t]
    return out


def gae_as_lambda_average(rewards: Float[Tensor, "T"], values: Float[Tensor, "T"], next_values: Float[Tensor, "T"],
                          terminated: Bool[Tensor, "T"], ends: Bool[Tensor, "T"], gamma: float, lam: float) -> Float[Tensor, "T"]:
    """The GAE paper's definition, (1 − λ) Σ_{n ≥ 1} λ^(n−1) Â^(n)_t. Past the L steps of data left,
    Â^(n) = Â^(L), so the tail sums to λ^(L−1) Â^(L) and the series is finite."""
    T = rewards.shape[0]
    estimates = torch.stack([n_step_advantage(rewards, values, next_values, terminated, ends, gamma, n)
                             for n in range(1, T + 1)])  # (n, T)
    out = torch.zeros_like(rewards)
    for t in range(T):
        left = next((k - t + 1 for k in range(t, T) if ends[k]), T - t)
        weights = [(1 - lam) * lam ** (n - 1) for n in range(1, left)] + [lam ** (left - 1)]
        out[t] = sum(w * estimates[n, t] for n, w in enumerate(weights))
    return out


# ---------------------------------------------------------------- experiments


def clipping_trust_region(n_steps: int = 300, clip_coef: float = 0.2, lr: float = 0.05, n_samples: int = 512,
                          seed: int = 0) -> dict[str, list[float]]:
    """Many Adam steps on ONE batch: a tabular softmax policy over 4 actions in a single state, samples
    a ~ π_old with advantages Â(a) + noise. The importance-sampled surrogate L^IS drives π towards the
    best action without limit; L^CLIP stops rewarding a sample once its ratio leaves [1 − ε, 1 + ε]
    in the advantage's favour, so the policy stalls near π_old. Returns the exact KL(π_old ‖ π) and
    the k3 estimate per step, for both objectives."""
    g = torch.Generator().manual_seed(seed)
    old_logits = torch.tensor([0.3, 0.0, -0.2, 0.1], dtype=torch.float64)
    old_logp = torch.log_softmax(old_logits, -1)
    actions = torch.multinomial(old_logp.exp(), n_samples, replacement=True, generator=g)
    advantages = torch.tensor([1.0, 0.3, -0.4, -1.0], dtype=torch.float64)[actions]
    advantages = advantages + 0.5 * torch.randn(n_samples, generator=g, dtype=torch.float64)
    out: dict[str, list[float]] = {}
    for name in ("unclipped", "clipped"):
        logits = old_logits.clone().requires_grad_(True)
        opt = torch.optim.Adam([logits], lr=lr, maximize=True)
        kl, k3 = [], []
        for _ in range(n_steps):
            new_logp = torch.log_softmax(logits, -1)
            if name == "clipped":
                objective = clipped_surrogate(new_logp[actions], old_logp[actions], advantages, clip_coef, normalize=False)
            else:
                objective = (torch.exp(new_logp[actions] - old_logp[actions]) * advantages).mean()
            opt.zero_grad()
            objective.backward()
            opt.step()
            with torch.no_grad():
                new_logp = torch.log_softmax(logits, -1)
                kl.append(float((old_logp.exp() * (old_logp - new_logp)).sum()))
                k3.append(float(approx_kl(new_logp[actions], old_logp[actions])))
        out[f"{name}_kl"], out[f"{name}_k3"] = kl, k3
        out[f"{name}_final_probs"] = torch.softmax(logits.detach(), -1).tolist()
    out["old_probs"] = old_logp.exp().tolist()
    return out


def kl_estimator_statistics(shifts: list[float], n_samples: int = 100_000, seed: int = 0) -> list[dict]:
    """Bias and spread of k1, k2, k3 for a categorical π_old over 10 actions and π_new = softmax(z + s·u)
    (u a fixed random direction): for each shift s, the exact KL, and each estimator's mean and
    standard deviation over ``n_samples`` samples a ~ π_old."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(10, generator=g, dtype=torch.float64)
    u = torch.randn(10, generator=g, dtype=torch.float64)
    old_logp = torch.log_softmax(z, -1)
    rows = []
    for s in shifts:
        new_logp = torch.log_softmax(z + s * u, -1)
        exact = float((old_logp.exp() * (old_logp - new_logp)).sum())
        actions = torch.multinomial(old_logp.exp(), n_samples, replacement=True, generator=g)
        estimates = kl_estimators(new_logp[actions] - old_logp[actions])
        row = {"shift": s, "kl": exact}
        for name, e in estimates.items():
            row[f"{name}_mean"] = float(e.mean())
            row[f"{name}_std"] = float(e.std())
        rows.append(row)
    return rows


def chain_mrp(n_states: int = 9, gamma: float = 0.95, p_right: float = 0.6) -> dict:
    """A random walk on states 0 … n−1 with absorbing ends, started anywhere in between: the policy
    moves right with probability p_right, each step costs −0.1, reaching the right end pays +1
    (left end 0). Returns the exact V (a linear solve) and the exact advantages of both moves."""
    inner = np.arange(1, n_states - 1)
    P = np.zeros((n_states, n_states))
    R = np.zeros(n_states)
    for s in inner:
        P[s, s + 1], P[s, s - 1] = p_right, 1 - p_right
        R[s] = -0.1 + p_right * (s + 1 == n_states - 1)
    V = np.zeros(n_states)
    A_in = np.eye(len(inner)) - gamma * P[np.ix_(inner, inner)]
    V[inner] = np.linalg.solve(A_in, R[inner])
    q_right = -0.1 + np.where(inner + 1 == n_states - 1, 1.0, gamma * V[np.minimum(inner + 1, n_states - 1)])
    q_left = -0.1 + np.where(inner - 1 == 0, 0.0, gamma * V[np.maximum(inner - 1, 0)])
    return {"V": V, "adv_right": q_right - V[inner], "adv_left": q_left - V[inner], "gamma": gamma,
            "p_right": p_right, "n_states": n_states}


def _chain_rollouts(mrp: dict, critic: np.ndarray, first_move: int, horizon: int, n_rollouts: int,
                    reward_noise: float, rng: np.random.Generator) -> tuple[Tensor, ...]:
    """Rollouts of ``horizon`` steps from the middle of the chain, the first move forced; after a
    termination the rollout is padded with zero-reward steps marked terminated. Returns (rewards,
    V̂(s_t), V̂(s_t+1), terminated), each (horizon, n_rollouts)."""
    n = mrp["n_states"]
    states = np.full(n_rollouts, n // 2)
    obs = np.zeros((horizon, n_rollouts), dtype=np.int64)
    nxt = np.zeros((horizon, n_rollouts), dtype=np.int64)
    rewards = np.zeros((horizon, n_rollouts))
    terminated = np.zeros((horizon, n_rollouts), dtype=bool)
    alive = np.ones(n_rollouts, dtype=bool)
    for t in range(horizon):
        move = np.where(rng.random(n_rollouts) < mrp["p_right"], 1, -1) if t else np.full(n_rollouts, first_move)
        new = states + move
        obs[t], nxt[t] = states, new
        r = -0.1 + (new == n - 1) + reward_noise * rng.standard_normal(n_rollouts)
        rewards[t] = np.where(alive, r, 0.0)
        done = (new == 0) | (new == n - 1)
        terminated[t] = ~alive | done
        alive = alive & ~done
        states = np.where(alive, new, states)
    padded = np.cumsum(terminated, axis=0) - terminated > 0
    values = np.where(padded, 0.0, critic[obs])
    next_values = np.where(padded, 0.0, critic[nxt])
    return (torch.from_numpy(rewards), torch.from_numpy(values), torch.from_numpy(next_values),
            torch.from_numpy(terminated))


def gae_bias_variance(lams: list[float], horizon: int = 16, n_rollouts: int = 20_000, shrink: float = 1.0,
                      reward_noise: float = 0.1, seed: int = 0) -> list[dict]:
    """How GAE trades bias for variance, on ``chain_mrp`` with a wrong critic V̂ = (1 − shrink)·V (by
    default an untrained one, V̂ = 0) and rewards carrying N(0, reward_noise²) noise. The quantity estimated is what the policy
    gradient sees in the middle state: the advantage gap Â(s, right) − Â(s, left), from independent
    rollouts of ``horizon`` steps starting with each move. (A constant error in V̂(s) would cancel in
    the gap, as a baseline does in the policy gradient.) For each λ: bias, variance, MSE."""
    mrp = chain_mrp()
    gamma, middle = mrp["gamma"], mrp["n_states"] // 2
    critic = (1 - shrink) * mrp["V"]
    true_gap = mrp["adv_right"][middle - 1] - mrp["adv_left"][middle - 1]
    rng = np.random.default_rng(seed)
    right = _chain_rollouts(mrp, critic, +1, horizon, n_rollouts, reward_noise, rng)
    left = _chain_rollouts(mrp, critic, -1, horizon, n_rollouts, reward_noise, rng)
    rows = []
    for lam in lams:
        a_right = gae(*right, right[3], gamma, lam)[0].numpy()
        a_left = gae(*left, left[3], gamma, lam)[0].numpy()
        bias = float(a_right.mean() - a_left.mean() - true_gap)
        var = float(a_right.var() + a_left.var())
        rows.append({"lam": lam, "bias": bias, "variance": var, "mse": bias**2 + var})
    return rows


def benchmark_gae(sizes: list[tuple[int, int]], repeats: int = 5) -> list[dict]:
    """Best-of-n seconds of day 20's reverse loop and of the operator form Â = M δ (one thread)."""
    rows = []
    g = torch.Generator().manual_seed(0)
    with timing.single_thread():
        for T, n_envs in sizes:
            r, v, nv = (torch.randn(T, n_envs, generator=g) for _ in range(3))
            ends = torch.rand(T, n_envs, generator=g) < 0.02
            loop = timing.best_time(lambda: a2c.gae(r, v, nv, ends, ends, 0.99, 0.95), repeats)
            operator = timing.best_time(lambda: gae(r, v, nv, ends, ends, 0.99, 0.95), repeats)
            rows.append({"T": T, "n_envs": n_envs, "loop_s": loop, "operator_s": operator, "loop_over_operator": loop / operator})
    return rows


def _kl_summary(row: dict) -> dict:
    """Relative bias (mean − KL)/KL and relative spread std/KL of each estimator, for one shift."""
    out = {"kl": row["kl"]}
    for name in ("k1", "k2", "k3"):
        out[f"{name}_rel_bias"] = (row[f"{name}_mean"] - row["kl"]) / row["kl"]
        out[f"{name}_rel_std"] = row[f"{name}_std"] / row["kl"]
    return out


KL_SHIFTS = [0.05, 0.1, 0.2, 0.4, 0.7, 1.0, 1.5, 2.0]
LAMBDAS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]
GAE_SIZES = [(128, 4), (512, 8), (2048, 8)]


def run_experiment(out_dir: Path) -> dict:
    """Figures: the clipped objective as a function of r; the trust region that clipping enforces on a
    batch reused for many steps; bias and spread of the three KL estimators; GAE's bias–variance
    trade-off in λ on a chain with a wrong critic. Plus a timing of the GAE operator."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    # 1. L^CLIP against r, for Â = +1 and Â = −1 (the PPO paper's figure 1).
    eps = 0.2
    r = torch.linspace(0.0, 2.0, 401, dtype=torch.float64)
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.3), sharey=True)
    for ax, a in zip(axes, (1.0, -1.0)):
        adv = torch.full_like(r, a)
        ax.plot(r, r * adv, color="gray", ls="--", lw=1, label=r"$r\hat A$ (unclipped)")
        ax.plot(r, clipped_surrogate_terms(r, adv, eps), lw=2, label=r"$\min(r\hat A, \mathrm{clip}(r)\hat A)$")
        ax.axvline(1, color="black", lw=0.5)
        ax.axvspan(1 - eps, 1 + eps, color="tab:green", alpha=0.08)
        ax.set_title(rf"$\hat A = {a:+.0f}$, $\epsilon = {eps}$")
        ax.set_xlabel(r"probability ratio $r = \pi_\theta / \pi_{\mathrm{old}}$")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("per-sample objective")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/clipped_objective.png", dpi=120)
    plt.close(fig)

    # 2. The trust region: one batch, many steps.
    tr = clipping_trust_region()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    steps = np.arange(1, len(tr["clipped_kl"]) + 1)
    for name, color in (("unclipped", "tab:red"), ("clipped", "tab:blue")):
        axes[0].plot(steps, tr[f"{name}_kl"], color=color, label=f"{name}: exact KL")
        axes[0].plot(steps, tr[f"{name}_k3"], color=color, ls=":", label=f"{name}: k3 on the batch")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("Adam steps on the same batch")
    axes[0].set_ylabel(r"KL($\pi_{\mathrm{old}} \| \pi_\theta$)")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    x = np.arange(4)
    axes[1].bar(x - 0.27, tr["old_probs"], 0.27, label=r"$\pi_{\mathrm{old}}$", color="gray")
    axes[1].bar(x, tr["clipped_final_probs"], 0.27, label="after 300 clipped steps", color="tab:blue")
    axes[1].bar(x + 0.27, tr["unclipped_final_probs"], 0.27, label="after 300 unclipped steps", color="tab:red")
    axes[1].set_xticks(x, [f"a={i}\nÂ={v:+.1f}" for i, v in enumerate([1.0, 0.3, -0.4, -1.0])], fontsize=8)
    axes[1].set_ylabel("probability")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/trust_region.png", dpi=120)
    plt.close(fig)

    # 3. KL estimators.
    kl_rows = kl_estimator_statistics(KL_SHIFTS)
    kl = np.array([row["kl"] for row in kl_rows])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, color in (("k1", "tab:red"), ("k2", "tab:orange"), ("k3", "tab:blue")):
        mean = np.array([row[f"{name}_mean"] for row in kl_rows])
        std = np.array([row[f"{name}_std"] for row in kl_rows])
        axes[0].plot(kl, (mean - kl) / kl, "o-", color=color, ms=3, label=name)
        axes[1].plot(kl, std / kl, "o-", color=color, ms=3, label=name)
    axes[0].axhline(0, color="black", lw=0.5)
    axes[0].set_ylabel("relative bias (mean − KL) / KL")
    axes[1].set_ylabel("relative spread std / KL (one sample)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel(r"exact KL($\pi_{\mathrm{old}} \| \pi_{\mathrm{new}}$)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/kl_estimators.png", dpi=120)
    plt.close(fig)

    # 4. GAE's bias-variance trade-off.
    bv = gae_bias_variance(LAMBDAS)
    lams = [row["lam"] for row in bv]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(lams, [row["bias"] ** 2 for row in bv], "o-", ms=3, label="bias²")
    ax.plot(lams, [row["variance"] for row in bv], "o-", ms=3, label="variance")
    ax.plot(lams, [row["mse"] for row in bv], "o-", ms=3, color="black", label="mean squared error")
    ax.set_xlabel(r"$\lambda$")
    ax.set_ylabel(r"error of $\hat A(s, \rightarrow) - \hat A(s, \leftarrow)$")
    ax.set_title(r"GAE on a random-walk chain with an untrained critic ($\hat V = 0$)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/gae_bias_variance.png", dpi=120)
    plt.close(fig)

    bench = benchmark_gae(GAE_SIZES)
    best = min(bv, key=lambda row: row["mse"])
    results = {
        "trust_region": {"n_steps": len(tr["clipped_kl"]), "clipped_final_kl": tr["clipped_kl"][-1],
                         "unclipped_final_kl": tr["unclipped_kl"][-1], "clipped_final_k3": tr["clipped_k3"][-1],
                         "clipped_peak_kl": max(tr["clipped_kl"]),
                         "old_probs": tr["old_probs"], "clipped_final_probs": tr["clipped_final_probs"],
                         "unclipped_final_probs": tr["unclipped_final_probs"]},
        "kl_estimators": kl_rows,
        "kl_small": _kl_summary(kl_rows[1]),
        "kl_large": _kl_summary(kl_rows[-1]),
        "gae_bias_variance": bv,
        "gae_best_lambda": best["lam"],
        "gae_mse": {"lam_0": bv[0]["mse"], "lam_1": bv[-1]["mse"], "best": best["mse"]},
        "gae_benchmark": bench,
        "gae_speed": {"operator_speedup_at_T128": bench[0]["loop_over_operator"],
                      "loop_speedup_at_T2048": 1 / bench[-1]["loop_over_operator"]},
        "experiment_seconds": time.perf_counter() - start,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
