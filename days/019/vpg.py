"""Day 19: vanilla policy gradient, REINFORCE with rewards-to-go (ARENA 2.2 DQN & VPG, part 2).

A stochastic policy π_θ(a | s) (here a softmax over an MLP's logits) is trained by gradient
ascent on the expected return J(θ) = E_τ~π_θ [R(τ)]. The log-derivative trick turns its gradient
into an expectation we can sample:

    ∇J(θ) = E_τ [ Σ_t ∇_θ log π_θ(a_t | s_t) · R(τ) ]
          = E_τ [ Σ_t ∇_θ log π_θ(a_t | s_t) · G_t ],     G_t = Σ_{k≥t} γ^{k−t} r_k,

the second form because an action cannot affect the rewards that came before it (those terms
have zero expectation and only add variance). So the *loss* whose gradient is the (negated)
estimator is

    L(θ) = −(1/N) Σ_{episodes} Σ_t log π_θ(a_t | s_t) · G_t,

with N the number of steps in the batch and G_t treated as a constant. Subtracting a baseline
b(s_t) from G_t keeps the expectation (E[∇ log π · b(s)] = 0) and lowers the variance; here the
simplest one, standardising G over the batch, is an option.

``discounted_cumsum`` is the project's one returns helper: returns-to-go here, generalised
advantage estimates on day 20 (an episode boundary resets the sum).
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from jaxtyping import Bool, Float, Int
from torch import Tensor

from checks.timing import single_thread

dqn = importlib.import_module("days.018.dqn")

# ---------------------------------------------------------------- returns


def discounted_cumsum(x: Float[Tensor, "T *batch"], discount: float,
                      ends: Bool[Tensor, "T *batch"] | None = None) -> Float[Tensor, "T *batch"]:
    """y_t = x_t + discount · (1 − ends_t) · y_{t+1}, with y_T = 0: the discounted sum of x from t to
    the end of t's episode (``ends_t`` marks the last step of an episode; later steps belong to the
    next one). Works along dim 0, for any trailing batch shape (e.g. one column per environment)."""
    out = torch.zeros_like(x)
    running = torch.zeros_like(x[0])
    for t in reversed(range(x.shape[0])):
        if ends is not None:
            running = running * (~ends[t]).to(x.dtype)
        running = x[t] + discount * running
        out[t] = running
    return out


def returns_to_go(rewards: Float[Tensor, "T"], gamma: float, ends: Bool[Tensor, "T"] | None = None) -> Float[Tensor, "T"]:
    """G_t = Σ_{k≥t} γ^{k−t} r_k within each episode (episodes concatenated, ``ends`` marking the last steps)."""
    return discounted_cumsum(rewards, gamma, ends)


# ---------------------------------------------------------------- the policy and the loss


class PolicyNetwork(nn.Module):
    """An MLP obs_dim → hidden → … → n_actions (tanh); its outputs are the logits of π(· | s)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: tuple[int, ...] = (32,)):
        super().__init__()
        self.layers = dqn.mlp((obs_dim, *hidden, n_actions), nn.Tanh)

    def forward(self, obs: Float[Tensor, "batch obs_dim"]) -> Float[Tensor, "batch n_actions"]:
        return self.layers(obs)


def log_probs(logits: Float[Tensor, "batch n_actions"], actions: Int[Tensor, "batch"]) -> Float[Tensor, "batch"]:
    """log π(a | s) = logits[a] − logsumexp(logits): the log-softmax at the action taken."""
    return logits.gather(-1, actions[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)


def policy_gradient_loss(logits: Float[Tensor, "batch n_actions"], actions: Int[Tensor, "batch"],
                         weights: Float[Tensor, "batch"]) -> Tensor:
    """L = −mean_t [log π(a_t | s_t) · w_t], with the weights (returns-to-go, advantages) held constant."""
    return -(log_probs(logits, actions) * weights.detach()).mean()


# ---------------------------------------------------------------- training


@dataclass
class VPGConfig:
    """Spinning Up's simplest policy gradient with rewards-to-go, on CartPole-v1 (the defaults)."""

    env_id: str = "CartPole-v1"
    epochs: int = 60
    batch_steps: int = 5_000  # at least this many steps per update (whole episodes)
    learning_rate: float = 1e-2
    gamma: float = 1.0
    hidden: tuple[int, ...] = (32,)
    normalize: bool = False  # standardise the returns-to-go over the batch (a constant baseline)
    seed: int = 0


@dataclass
class VPGRun:
    policy: PolicyNetwork
    epoch_mean_return: list[float] = field(default_factory=list)
    epoch_episodes: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def collect_batch(env: gym.Env, policy: PolicyNetwork, min_steps: int, rng: torch.Generator) -> dict:
    """Run whole episodes with actions sampled from π until at least ``min_steps`` steps."""
    obs_list, actions, rewards, ends, episode_returns = [], [], [], [], []
    obs, _ = env.reset(seed=int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    total = 0.0
    while True:
        with torch.no_grad():
            logits = policy(torch.as_tensor(obs, dtype=torch.float32)[None])[0]
        action = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=rng))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        obs_list.append(np.asarray(obs, dtype=np.float32))
        actions.append(action)
        rewards.append(float(reward))
        total += float(reward)
        done = terminated or truncated
        ends.append(done)
        obs = next_obs
        if done:
            episode_returns.append(total)
            total = 0.0
            if len(actions) >= min_steps:
                break
            obs, _ = env.reset()
    return {"obs": torch.from_numpy(np.stack(obs_list)), "actions": torch.tensor(actions),
            "rewards": torch.tensor(rewards, dtype=torch.float32), "ends": torch.tensor(ends),
            "episode_returns": episode_returns}


def train_vpg(config: VPGConfig, make_env=None) -> VPGRun:
    """Each epoch: sample a batch of whole episodes, weight each log π(a_t|s_t) by its return-to-go,
    one Adam step on the loss."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = torch.Generator().manual_seed(config.seed)
    env = make_env() if make_env is not None else gym.make(config.env_id)
    policy = PolicyNetwork(int(np.prod(env.observation_space.shape)), int(env.action_space.n), config.hidden)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    run = VPGRun(policy)
    with single_thread():
        for _ in range(config.epochs):
            batch = collect_batch(env, policy, config.batch_steps, rng)
            weights = returns_to_go(batch["rewards"], config.gamma, batch["ends"])
            if config.normalize:
                weights = (weights - weights.mean()) / (weights.std() + 1e-8)
            loss = policy_gradient_loss(policy(batch["obs"]), batch["actions"], weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.losses.append(loss.item())
            run.epoch_mean_return.append(float(np.mean(batch["episode_returns"])))
            run.epoch_episodes.append(len(batch["episode_returns"]))
    run.seconds = time.perf_counter() - start
    return run


def action_probabilities(policy: PolicyNetwork, obs: list[list[float]]) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(policy(torch.tensor(obs, dtype=torch.float32)), -1).double().numpy()


# ---------------------------------------------------------------- the experiment

CARTPOLE = VPGConfig()
SEEDS = (0, 1, 2)


def run_experiment(out_dir: Path, config: VPGConfig = CARTPOLE, seeds: tuple[int, ...] = SEEDS) -> dict:
    """REINFORCE with rewards-to-go on CartPole-v1 for a few seeds: the mean return per epoch."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    runs = {seed: train_vpg(VPGConfig(**{**asdict(config), "seed": seed})) for seed in seeds}

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for seed, run in runs.items():
        ax.plot(np.arange(1, config.epochs + 1), run.epoch_mean_return, label=f"seed {seed}")
    ax.axhline(500, color="gray", ls="--", lw=1, label="maximum (500)")
    ax.set_xlabel(f"epoch (one update from ≥ {config.batch_steps} steps of whole episodes)")
    ax.set_ylabel("mean episode return in the batch")
    ax.set_title("Vanilla policy gradient (rewards-to-go) on CartPole-v1")
    ax.set_ylim(0, 520)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/cartpole_vpg.png", dpi=120)
    plt.close(fig)

    per_seed = {str(seed): {"epoch_mean_return": run.epoch_mean_return,
                            "first_epoch_mean_return": run.epoch_mean_return[0],
                            "last_5_epochs_mean_return": float(np.mean(run.epoch_mean_return[-5:])),
                            "best_epoch_mean_return": max(run.epoch_mean_return),
                            "train_seconds": run.seconds} for seed, run in runs.items()}
    results = {"config": asdict(config), "seeds": per_seed,
               "mean_first_epoch_return": float(np.mean([s["first_epoch_mean_return"] for s in per_seed.values()])),
               "mean_last_5_epochs_return": float(np.mean([s["last_5_epochs_mean_return"] for s in per_seed.values()])),
               "total_env_steps_per_seed_at_least": config.epochs * config.batch_steps,
               "train_seconds_total": float(sum(run.seconds for run in runs.values()))}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
