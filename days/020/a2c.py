"""Day 20: advantage actor-critic, A2C (ARENA 2.2 DQN & VPG, part 3; the bridge to PPO).

Vanilla policy gradient weights log π(a_t | s_t) by the whole return-to-go G_t: unbiased, but
noisy, and only available when the episode ends. Actor-critic methods learn a *critic* V_φ(s) and
weight by an estimate of the **advantage** A(s_t, a_t) = Q(s_t, a_t) − V(s_t) instead, from short
rollouts of n steps in several environments at once.

Generalised advantage estimation (Schulman et al., 2016) mixes the k-step estimates with weights
(1 − λ)λ^{k−1}, which comes out as a discounted sum of one-step TD errors:

    δ_t = r_t + γ (1 − terminated_t) V(s_{t+1}) − V(s_t),
    Â_t = Σ_{l≥0} (γλ)^l δ_{t+l}   (within the episode, up to the end of the rollout),

so λ = 0 gives the TD error δ_t (low variance, biased by V) and λ = 1 the Monte Carlo return
minus V(s_t) (bootstrapped from V at the rollout's end). The critic's target is R̂_t = Â_t + V(s_t).
At a truncation (a time limit) the episode ends but the state has a future: V(s_{t+1}) of the
true final observation stays in δ_t; only a termination removes it.

The joint loss, with the advantages and targets held constant:

    L = −mean_t[log π(a_t | s_t) Â_t]  +  c_v mean_t[(V_φ(s_t) − R̂_t)²]  −  c_e mean_t[H(π(· | s_t))].

Day 19's ``discounted_cumsum`` computes Â; day 21 (PPO) reuses the advantage estimate.
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

vpg = importlib.import_module("days.019.vpg")
dqn = importlib.import_module("days.018.dqn")

# ---------------------------------------------------------------- advantages


def gae(rewards: Float[Tensor, "T *envs"], values: Float[Tensor, "T *envs"], next_values: Float[Tensor, "T *envs"],
        terminated: Bool[Tensor, "T *envs"], ends: Bool[Tensor, "T *envs"], gamma: float,
        lam: float) -> Float[Tensor, "T *envs"]:
    """Generalised advantage estimates Â_t = Σ_l (γλ)^l δ_{t+l}, the sum cut at episode ends.

    ``next_values[t]`` is V(s_{t+1}) for the state actually reached (the true final observation
    when step t ended the episode); ``terminated`` zeroes it, ``ends`` (terminated or truncated)
    stops the sum from running into the next episode.
    """
    deltas = rewards + gamma * (~terminated).to(rewards.dtype) * next_values - values
    return vpg.discounted_cumsum(deltas, gamma * lam, ends)


# ---------------------------------------------------------------- actor, critic and the loss


def _mlp(sizes: tuple[int, ...], out_gain: float) -> nn.Sequential:
    """Day 18's MLP with tanh, initialised orthogonally (gain √2 for hidden layers, ``out_gain`` for
    the output) with zero biases, as in ARENA's PPO agent and Stable-Baselines3."""
    net = dqn.mlp(sizes, nn.Tanh)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for i, linear in enumerate(linears):
        nn.init.orthogonal_(linear.weight, out_gain if i == len(linears) - 1 else np.sqrt(2))
        nn.init.zeros_(linear.bias)
    return net


class ActorCritic(nn.Module):
    """Separate actor (logits of π) and critic (V) networks, each obs → 64 → 64 → out."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: tuple[int, ...] = (64, 64)):
        super().__init__()
        self.actor = _mlp((obs_dim, *hidden, n_actions), out_gain=0.01)
        self.critic = _mlp((obs_dim, *hidden, 1), out_gain=1.0)

    def forward(self, obs: Float[Tensor, "batch obs_dim"]) -> tuple[Float[Tensor, "batch n_actions"], Float[Tensor, "batch"]]:
        return self.actor(obs), self.critic(obs)[..., 0]


def entropy(logits: Float[Tensor, "batch n_actions"]) -> Float[Tensor, "batch"]:
    """H(π) = −Σ_a π(a) log π(a), with log π = log_softmax(logits) (finite even where π(a) → 0)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def a2c_loss(logits: Float[Tensor, "batch n_actions"], values: Float[Tensor, "batch"], actions: Int[Tensor, "batch"],
             advantages: Float[Tensor, "batch"], returns: Float[Tensor, "batch"], vf_coef: float = 0.5,
             ent_coef: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """L = policy loss + c_v · value loss − c_e · entropy, advantages and returns held constant."""
    policy_loss = vpg.policy_gradient_loss(logits, actions, advantages)
    value_loss = (values - returns.detach()).pow(2).mean()
    mean_entropy = entropy(logits).mean()
    total = policy_loss + vf_coef * value_loss - ent_coef * mean_entropy
    return total, {"policy": policy_loss, "value": value_loss, "entropy": mean_entropy}


# ---------------------------------------------------------------- rollouts and training


@dataclass
class A2CConfig:
    """Stable-Baselines3 zoo's A2C hyper-parameters for CartPole-v1 (the defaults)."""

    env_id: str = "CartPole-v1"
    total_timesteps: int = 500_000
    n_envs: int = 8
    n_steps: int = 5
    gamma: float = 0.99
    gae_lambda: float = 1.0
    learning_rate: float = 7e-4
    rmsprop_alpha: float = 0.99
    rmsprop_eps: float = 1e-5
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    hidden: tuple[int, ...] = (64, 64)
    seed: int = 0
    eval_every: int = 0  # updates between greedy evaluations (0: none)
    eval_episodes: int = 10


@dataclass
class Rollout:
    obs: Float[Tensor, "T envs obs_dim"]
    actions: Int[Tensor, "T envs"]
    rewards: Float[Tensor, "T envs"]
    next_obs: Float[Tensor, "T envs obs_dim"]  # the state reached (the true final one at an episode end)
    terminated: Bool[Tensor, "T envs"]
    ends: Bool[Tensor, "T envs"]


class Envs:
    """n independent copies of an environment, each reset by hand when its episode ends (so the
    true final observation is kept for bootstrapping)."""

    def __init__(self, make_env, n: int, seed: int):
        self.envs = [make_env() for _ in range(n)]
        self.obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(self.envs)]).astype(np.float32)
        self.returns = np.zeros(n)
        self.finished: list[float] = []  # undiscounted returns of completed episodes

    def step(self, actions: np.ndarray):
        next_obs, rewards, terminated, ends = [], [], [], []
        for i, (env, a) in enumerate(zip(self.envs, actions)):
            o, r, term, trunc, _ = env.step(int(a))
            next_obs.append(o)
            rewards.append(r)
            terminated.append(term)
            ends.append(term or trunc)
            self.returns[i] += r
            if term or trunc:
                self.finished.append(float(self.returns[i]))
                self.returns[i] = 0.0
                self.obs[i] = env.reset()[0]
            else:
                self.obs[i] = o
        return (np.stack(next_obs).astype(np.float32), np.array(rewards, dtype=np.float32),
                np.array(terminated), np.array(ends))


def collect_rollout(envs: Envs, model: ActorCritic, n_steps: int, generator: torch.Generator) -> Rollout:
    """n_steps steps in every environment with actions sampled from π."""
    obs, actions, rewards, next_obs, terminated, ends = [], [], [], [], [], []
    for _ in range(n_steps):
        current = torch.from_numpy(envs.obs.copy())
        with torch.no_grad():
            logits = model.actor(current)
        action = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
        o, r, term, end = envs.step(action.numpy())
        obs.append(current)
        actions.append(action)
        rewards.append(torch.from_numpy(r))
        next_obs.append(torch.from_numpy(o))
        terminated.append(torch.from_numpy(term))
        ends.append(torch.from_numpy(end))
    return Rollout(torch.stack(obs), torch.stack(actions), torch.stack(rewards), torch.stack(next_obs),
                   torch.stack(terminated), torch.stack(ends))


def rollout_advantages(model: ActorCritic, rollout: Rollout, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """(Â, R̂ = Â + V) for a rollout, bootstrapping from V of each step's next state."""
    with torch.no_grad():
        values = model.critic(rollout.obs)[..., 0]
        next_values = model.critic(rollout.next_obs)[..., 0]
    advantages = gae(rollout.rewards, values, next_values, rollout.terminated, rollout.ends, gamma, lam)
    return advantages, advantages + values


@dataclass
class A2CRun:
    model: ActorCritic
    episode_returns: list[float] = field(default_factory=list)
    episode_end_steps: list[int] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_returns: list[float] = field(default_factory=list)
    n_updates: int = 0
    seconds: float = 0.0


def train_a2c(config: A2CConfig, make_env=None) -> A2CRun:
    """Collect n_steps × n_envs transitions, compute GAE, one RMSprop step on the joint loss
    (gradient norm clipped), repeat until total_timesteps."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    make_env = make_env or (lambda: gym.make(config.env_id))
    envs = Envs(make_env, config.n_envs, config.seed)
    env0 = envs.envs[0]
    model = ActorCritic(int(np.prod(env0.observation_space.shape)), int(env0.action_space.n), config.hidden)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=config.learning_rate, alpha=config.rmsprop_alpha,
                                    eps=config.rmsprop_eps)
    run = A2CRun(model)
    n_updates = config.total_timesteps // (config.n_envs * config.n_steps)
    with single_thread():
        for update in range(1, n_updates + 1):
            rollout = collect_rollout(envs, model, config.n_steps, generator)
            advantages, returns = rollout_advantages(model, rollout, config.gamma, config.gae_lambda)
            logits, values = model(rollout.obs.flatten(0, 1))
            loss, _ = a2c_loss(logits, values, rollout.actions.flatten(), advantages.flatten(), returns.flatten(),
                               config.vf_coef, config.ent_coef)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            steps = update * config.n_envs * config.n_steps
            run.episode_returns += envs.finished
            run.episode_end_steps += [steps] * len(envs.finished)
            envs.finished = []
            if config.eval_every and update % config.eval_every == 0:
                run.eval_steps.append(steps)
                run.eval_returns.append(float(np.mean(dqn.greedy_returns(
                    lambda o: greedy_action(model, o), config.env_id, config.eval_episodes, seed=50_000 + update))))
    run.n_updates = n_updates
    run.seconds = time.perf_counter() - start
    return run


def greedy_action(model: ActorCritic, obs: np.ndarray) -> int:
    """argmax_a π(a | obs)."""
    with torch.no_grad():
        return int(model.actor(torch.as_tensor(obs, dtype=torch.float32)[None]).argmax(-1).item())


# ---------------------------------------------------------------- the experiment

CARTPOLE = A2CConfig(eval_every=625, eval_episodes=10)  # evaluate every 25 000 steps
SEEDS = (0, 1, 2)
FINAL_EVAL_EPISODES = 100


def run_experiment(out_dir: Path, config: A2CConfig = CARTPOLE, seeds: tuple[int, ...] = SEEDS) -> dict:
    """A2C on CartPole-v1 for a few seeds: learning curves and the final policy's greedy return."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    runs, per_seed = {}, {}
    for seed in seeds:
        run = train_a2c(A2CConfig(**{**asdict(config), "seed": seed}))
        final = dqn.greedy_returns(lambda o: greedy_action(run.model, o), config.env_id, FINAL_EVAL_EPISODES, seed=123_456)
        runs[seed] = run
        per_seed[str(seed)] = {"final_greedy_mean_return": float(np.mean(final)),
                               "last_100_training_mean_return": float(np.mean(run.episode_returns[-100:])),
                               "first_100_training_mean_return": float(np.mean(run.episode_returns[:100])),
                               "eval_steps": run.eval_steps, "eval_returns": run.eval_returns,
                               "n_updates": run.n_updates, "train_seconds": run.seconds}

    fig, ax = plt.subplots(figsize=(8, 4.4))
    for (seed, run), color in zip(runs.items(), ["tab:blue", "tab:orange", "tab:green"]):
        smooth = dqn._smooth(run.episode_returns, 50)
        ax.plot(run.episode_end_steps[len(run.episode_end_steps) - len(smooth):], smooth, color=color, lw=1,
                label=f"seed {seed}: training episodes (mean of 50)")
        ax.plot(run.eval_steps, run.eval_returns, "o", ms=3, color=color, alpha=0.7)
    ax.plot([], [], "o", ms=3, color="gray", label="greedy policy, mean of 10 episodes")
    ax.axhline(475, color="gray", ls="--", lw=1, label="solved (475)")
    ax.set_xlabel("environment steps (all 8 environments)")
    ax.set_ylabel("episode return")
    ax.set_ylim(0, 520)
    ax.set_title("A2C on CartPole-v1 (8 envs × 5 steps per update)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/cartpole_a2c.png", dpi=120)
    plt.close(fig)

    finals = [s["final_greedy_mean_return"] for s in per_seed.values()]
    results = {"config": asdict(config), "seeds": per_seed,
               "mean_final_greedy_return": float(np.mean(finals)), "min_final_greedy_return": float(np.min(finals)),
               "n_seeds_at_475": int(sum(f >= 475 for f in finals)),
               "train_seconds_total": float(sum(r.seconds for r in runs.values()))}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
