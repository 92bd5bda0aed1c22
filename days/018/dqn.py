"""Day 18: Deep Q-Networks (ARENA 2.2 DQN & VPG, part 1).

DQN learns an action-value function Q_θ(s, a) with a neural network by regressing it onto the
one-step Bellman optimality target computed with a frozen copy of the network (the *target
network*, parameters θ⁻):

    y = r + γ (1 − terminated) max_a' Q_θ⁻(s', a'),      L(θ) = E_{(s,a,r,s') ~ D} [(Q_θ(s, a) − y)²]

Three ingredients make this stable enough to work (Mnih et al., 2015):

- a **replay buffer** D of past transitions, sampled uniformly, so a minibatch is not a run of
  strongly correlated consecutive steps;
- the **target network** θ⁻, copied from θ every few updates, so the regression target does not
  move with every gradient step;
- an **ε-greedy** behaviour policy with ε annealed linearly from 1 (uniformly random) to a floor.

``terminated`` (the MDP reached a terminal state: no future reward) and ``truncated`` (a time
limit cut the episode short: the future still exists) are different: only the first removes the
bootstrap term. Five *probe environments* (ARENA's Probe1–Probe5) each isolate one way the
implementation can be wrong; their exact Q-values are known, and the gate checks DQN learns them.

This module also holds the project's one ``ReplayBuffer``, the probe environments and the
``run_episodes``/``greedy_returns`` helpers that days 19 and 20 import.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from gymnasium.spaces import Box, Discrete
from jaxtyping import Bool, Float, Int
from torch import Tensor

from checks.timing import single_thread

# ---------------------------------------------------------------- probe environments


class _Probe(gym.Env):
    """Shared plumbing: a 1-D float observation and a Discrete action space."""

    metadata = {"render_modes": []}

    def __init__(self, n_actions: int, low: float, high: float):
        super().__init__()
        self.observation_space = Box(np.array([low], dtype=np.float32), np.array([high], dtype=np.float32))
        self.action_space = Discrete(n_actions)

    @staticmethod
    def _obs(value: float) -> np.ndarray:
        return np.array([value], dtype=np.float32)


class Probe1(_Probe):
    """One action, observation [0], one step, reward +1. Tests that Q learns a constant value:
    Q([0]) = 1 (a bug in the loss or the optimiser step fails here)."""

    expected_obs = [[0.0]]
    expected_q = [[1.0]]

    def __init__(self):
        super().__init__(1, 0.0, 1.0)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(0.0), {}

    def step(self, action):
        return self._obs(0.0), 1.0, True, False, {}


class Probe2(_Probe):
    """One action, observation ±1 at random, one step, reward equal to the observation. Tests that
    Q depends on the observation: Q([−1]) = −1, Q([+1]) = +1 (a network that ignores its input,
    or a buffer that stores the wrong observation, fails here)."""

    expected_obs = [[-1.0], [1.0]]
    expected_q = [[-1.0], [1.0]]

    def __init__(self):
        super().__init__(1, -1.0, 1.0)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._value = float(self.np_random.choice([-1.0, 1.0]))
        return self._obs(self._value), {}

    def step(self, action):
        return self._obs(self._value), self._value, True, False, {}


class Probe3(_Probe):
    """One action, observation [0] then [1], two steps, reward +1 at the end only. Tests
    bootstrapping and discounting: Q([1]) = 1 and Q([0]) = γ (a missing γ, a missing terminal
    mask or a target taken from the wrong observation fails here)."""

    expected_obs = [[0.0], [1.0]]

    @staticmethod
    def expected_q_for(gamma: float) -> list[list[float]]:
        return [[gamma], [1.0]]

    def __init__(self):
        super().__init__(1, 0.0, 1.0)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._obs(0.0), {}

    def step(self, action):
        self._t += 1
        if self._t == 1:
            return self._obs(1.0), 0.0, False, False, {}
        return self._obs(1.0), 1.0, True, False, {}


class Probe4(_Probe):
    """Two actions, observation [0], one step, reward −1 for action 0 and +1 for action 1. Tests
    that Q depends on the action: Q([0]) = (−1, +1) (gathering the wrong action's Q fails here)."""

    expected_obs = [[0.0]]
    expected_q = [[-1.0, 1.0]]

    def __init__(self):
        super().__init__(2, 0.0, 1.0)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(0.0), {}

    def step(self, action):
        return self._obs(0.0), (1.0 if action == 1 else -1.0), True, False, {}


class Probe5(_Probe):
    """Two actions, observation 0 or 1 at random, one step, reward +1 if the action equals the
    observation, else −1. Tests that Q depends on observation and action jointly:
    Q([0]) = (+1, −1), Q([1]) = (−1, +1)."""

    expected_obs = [[0.0], [1.0]]
    expected_q = [[1.0, -1.0], [-1.0, 1.0]]

    def __init__(self):
        super().__init__(2, 0.0, 1.0)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._value = int(self.np_random.integers(2))
        return self._obs(float(self._value)), {}

    def step(self, action):
        return self._obs(float(self._value)), (1.0 if action == self._value else -1.0), True, False, {}


PROBES: dict[str, type[_Probe]] = {"Probe1": Probe1, "Probe2": Probe2, "Probe3": Probe3, "Probe4": Probe4, "Probe5": Probe5}


def probe_expectation(name: str, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(observations, their exact Q-values) for a probe, each of shape (n_obs, ·)."""
    cls = PROBES[name]
    q = cls.expected_q_for(gamma) if name == "Probe3" else cls.expected_q
    return np.array(cls.expected_obs, dtype=np.float32), np.array(q, dtype=np.float64)


# ---------------------------------------------------------------- the network, the buffer, the schedule


def mlp(sizes: tuple[int, ...], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers sizes[0] → sizes[1] → … → sizes[-1], with ``activation`` between them (not after
    the last). Days 19 and 20 build their policies and critics with it."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(fan_in, fan_out), activation()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


class QNetwork(nn.Module):
    """ARENA's Q-network: an MLP obs_dim → 120 → 84 → n_actions with ReLUs, one Q-value per action."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: tuple[int, ...] = (120, 84)):
        super().__init__()
        self.layers = mlp((obs_dim, *hidden, n_actions), nn.ReLU)

    def forward(self, obs: Float[Tensor, "batch obs_dim"]) -> Float[Tensor, "batch n_actions"]:
        return self.layers(obs)


@dataclass
class ReplaySamples:
    """A minibatch of transitions (s, a, r, s', terminated) as tensors."""

    obs: Float[Tensor, "batch obs_dim"]
    actions: Int[Tensor, "batch"]
    rewards: Float[Tensor, "batch"]
    next_obs: Float[Tensor, "batch obs_dim"]
    terminated: Bool[Tensor, "batch"]


class ReplayBuffer:
    """A circular buffer of the last ``capacity`` transitions, sampled uniformly with replacement.

    Writing transition number n puts it in slot n mod capacity, so once full the oldest is
    overwritten first. ``sample`` draws indices uniformly from the slots filled so far.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], seed: int = 0):
        self.capacity = capacity
        self.obs = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.next_obs = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=bool)
        self.n_added = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return min(self.n_added, self.capacity)

    def add(self, obs, action: int, reward: float, next_obs, terminated: bool) -> None:
        i = self.n_added % self.capacity
        self.obs[i], self.actions[i], self.rewards[i] = obs, action, reward
        self.next_obs[i], self.terminated[i] = next_obs, terminated
        self.n_added += 1

    def sample_indices(self, batch_size: int) -> np.ndarray:
        if len(self) == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return self.rng.integers(0, len(self), size=batch_size)

    def sample(self, batch_size: int) -> ReplaySamples:
        idx = self.sample_indices(batch_size)
        return ReplaySamples(torch.from_numpy(self.obs[idx]), torch.from_numpy(self.actions[idx]),
                             torch.from_numpy(self.rewards[idx]), torch.from_numpy(self.next_obs[idx]),
                             torch.from_numpy(self.terminated[idx]))


def linear_schedule(step: int, start_e: float, end_e: float, exploration_fraction: float, total_timesteps: int) -> float:
    """ε(t) = start_e + (end_e − start_e) · min(1, t / (exploration_fraction · total_timesteps))."""
    duration = exploration_fraction * total_timesteps
    return start_e + (end_e - start_e) * min(1.0, step / duration)


def epsilon_greedy(q_net: nn.Module, obs: np.ndarray, epsilon: float, n_actions: int, rng: np.random.Generator) -> int:
    """With probability ε a uniformly random action, otherwise argmax_a Q(obs, a)."""
    if rng.random() < epsilon:
        return int(rng.integers(n_actions))
    with torch.inference_mode():
        return int(q_net(torch.as_tensor(obs, dtype=torch.float32)[None]).argmax(-1).item())


# ---------------------------------------------------------------- the agent in vectorised environments


def make_envs(env_id: str, num_envs: int, **kwargs) -> gym.vector.SyncVectorEnv:
    """``num_envs`` copies of ``env_id`` (``kwargs`` go to ``gym.make``) that reset an environment
    in the step its episode ends, putting the final observation in ``infos["final_obs"]``: the
    convention of ARENA's Gymnasium, where every step of every environment is a transition."""
    return gym.vector.SyncVectorEnv([lambda: gym.make(env_id, **kwargs) for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def epsilon_greedy_policy(envs: gym.vector.VectorEnv, q_network: nn.Module, rng: np.random.Generator,
                          obs: Float[np.ndarray, "num_envs *obs_shape"], epsilon: float) -> Int[np.ndarray, "num_envs"]:
    """One action per environment: argmax_a Q(obs, a), or with probability ε a uniformly random
    action, with an independent coin for each environment (ARENA tosses one coin per batch)."""
    n, n_actions = envs.num_envs, int(envs.single_action_space.n)
    with torch.inference_mode():
        greedy = q_network(torch.as_tensor(obs, dtype=torch.float32)).argmax(-1).cpu().numpy()
    explore = rng.random(n) < epsilon
    return np.where(explore, rng.integers(0, n_actions, size=n), greedy)


class DQNAgent:
    """ARENA's agent: acts ε-greedily in vectorised environments and fills the replay buffer."""

    def __init__(self, envs: gym.vector.VectorEnv, buffer: ReplayBuffer, q_network: nn.Module, start_e: float,
                 end_e: float, exploration_fraction: float, total_timesteps: int, rng: np.random.Generator,
                 seed: int | None = None):
        if envs.metadata.get("autoreset_mode") != gym.vector.AutoresetMode.SAME_STEP:
            raise ValueError("DQNAgent needs environments that reset in the step an episode ends "
                             "(autoreset_mode=AutoresetMode.SAME_STEP, see make_envs): with next-step "
                             "autoreset, the step after an episode's end is a reset, not a transition")
        self.envs, self.buffer, self.q_network, self.rng = envs, buffer, q_network, rng
        self.start_e, self.end_e = start_e, end_e
        self.exploration_fraction, self.total_timesteps = exploration_fraction, total_timesteps
        self.step = 0
        self.epsilon = start_e
        self.obs, _ = envs.reset(seed=seed)

    def get_actions(self, obs: np.ndarray) -> np.ndarray:
        """ε-greedy actions, with ε from the linear schedule at the agent's current step."""
        self.epsilon = linear_schedule(self.step, self.start_e, self.end_e, self.exploration_fraction, self.total_timesteps)
        return epsilon_greedy_policy(self.envs, self.q_network, self.rng, obs, self.epsilon)

    def play_step(self) -> dict:
        """One step of every environment: act, store each environment's transition (with the true
        final observation where an episode ended, and `terminated`, not `truncated`), move on.
        Returns the environments' infos."""
        actions = self.get_actions(self.obs)
        next_obs, rewards, terminated, truncated, infos = self.envs.step(actions)
        true_next_obs = next_obs.copy()
        for i in np.flatnonzero(terminated | truncated):  # next_obs already starts the next episode there
            true_next_obs[i] = infos["final_obs"][i]
        for i in range(self.envs.num_envs):
            self.buffer.add(self.obs[i], actions[i], rewards[i], true_next_obs[i], terminated[i])
        self.obs = next_obs
        self.step += 1
        return infos


# ---------------------------------------------------------------- the loss


def td_targets(target_net: nn.Module, rewards: Float[Tensor, "batch"], next_obs: Float[Tensor, "batch obs_dim"],
               terminated: Bool[Tensor, "batch"], gamma: float) -> Float[Tensor, "batch"]:
    """y = r + γ (1 − terminated) max_a' Q_θ⁻(s', a'), with no gradient through the target network."""
    with torch.no_grad():
        next_max = target_net(next_obs).max(dim=-1).values
    return rewards + gamma * (~terminated).to(rewards.dtype) * next_max


def dqn_loss(q_net: nn.Module, target_net: nn.Module, batch: ReplaySamples, gamma: float) -> Tensor:
    """The mean squared TD error (1/B) Σ (Q_θ(s, a) − y)² over the minibatch."""
    q_taken = q_net(batch.obs).gather(1, batch.actions[:, None])[:, 0]
    return F.mse_loss(q_taken, td_targets(target_net, batch.rewards, batch.next_obs, batch.terminated, gamma))


# ---------------------------------------------------------------- training


@dataclass
class DQNConfig:
    """ARENA's DQN hyper-parameters for CartPole-v1 (the defaults); probes override a few."""

    total_timesteps: int = 500_000
    learning_rate: float = 2.5e-4
    buffer_size: int = 10_000
    batch_size: int = 128
    gamma: float = 0.99
    steps_per_train: int = 10
    trains_per_target_update: int = 100
    start_e: float = 1.0
    end_e: float = 0.1
    exploration_fraction: float = 0.2
    learning_starts: int | None = None  # default: buffer_size (fill the buffer with random-ish steps first)
    hidden: tuple[int, ...] = (120, 84)
    seed: int = 1
    eval_every: int = 0  # env steps between greedy evaluations (0: none)
    eval_episodes: int = 10


@dataclass
class DQNRun:
    q_net: QNetwork
    buffer: ReplayBuffer
    episode_returns: list[float] = field(default_factory=list)
    episode_end_steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_returns: list[float] = field(default_factory=list)
    n_updates: int = 0
    n_target_syncs: int = 0
    seconds: float = 0.0


def train_dqn(make_env: Callable[[], gym.Env], config: DQNConfig) -> DQNRun:
    """Train a DQN on one environment (the loop of ARENA's DQNTrainer, with one env).

    Each env step: act ε-greedily, store (s, a, r, s', terminated) in the buffer, reset at the
    end of an episode (terminated or truncated). Every ``steps_per_train`` steps after
    ``learning_starts``: one Adam step on a sampled minibatch; every ``trains_per_target_update``
    updates: θ⁻ ← θ.
    """
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    env = make_env()
    obs_dim, n_actions = int(np.prod(env.observation_space.shape)), int(env.action_space.n)
    q_net = QNetwork(obs_dim, n_actions, config.hidden)
    target_net = copy.deepcopy(q_net)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=config.learning_rate)
    buffer = ReplayBuffer(config.buffer_size, env.observation_space.shape, seed=config.seed)
    learning_starts = config.buffer_size if config.learning_starts is None else config.learning_starts
    run = DQNRun(q_net, buffer)
    obs, _ = env.reset(seed=config.seed)
    episode_return = 0.0
    with single_thread():
        for step in range(config.total_timesteps):
            epsilon = linear_schedule(step, config.start_e, config.end_e, config.exploration_fraction, config.total_timesteps)
            action = epsilon_greedy(q_net, obs, epsilon, n_actions, rng)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            buffer.add(obs, action, reward, next_obs, terminated)
            episode_return += float(reward)
            if terminated or truncated:
                run.episode_returns.append(episode_return)
                run.episode_end_steps.append(step + 1)
                episode_return = 0.0
                next_obs, _ = env.reset()
            obs = next_obs
            if step >= learning_starts and step % config.steps_per_train == 0:
                loss = dqn_loss(q_net, target_net, buffer.sample(config.batch_size), config.gamma)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                run.losses.append(loss.item())
                run.n_updates += 1
                if run.n_updates % config.trains_per_target_update == 0:
                    target_net.load_state_dict(q_net.state_dict())
                    run.n_target_syncs += 1
            if config.eval_every and (step + 1) % config.eval_every == 0:
                run.eval_steps.append(step + 1)
                run.eval_returns.append(float(np.mean(greedy_returns(
                    lambda o: greedy_action(q_net, o), env.spec.id, config.eval_episodes, seed=10_000 + step))))
    run.seconds = time.perf_counter() - start
    return run


def greedy_action(q_net: nn.Module, obs: np.ndarray) -> int:
    """argmax_a Q(obs, a)."""
    with torch.inference_mode():
        return int(q_net(torch.as_tensor(obs, dtype=torch.float32)[None]).argmax(-1).item())


def greedy_returns(policy: Callable[[np.ndarray], int], env_id: str, n_episodes: int, seed: int) -> list[float]:
    """Undiscounted returns of ``policy`` on ``n_episodes`` fresh episodes (seeds seed, seed+1, …)."""
    env = gym.make(env_id)
    returns = []
    for k in range(n_episodes):
        obs, _ = env.reset(seed=seed + k)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def probe_config(name: str, seed: int = 0) -> DQNConfig:
    """ARENA's probe settings: a small buffer, lr 1e-3, frequent target syncs, 3–5k steps."""
    return DQNConfig(total_timesteps=3_000 if name in ("Probe1", "Probe2") else 5_000, learning_rate=1e-3,
                     buffer_size=500, trains_per_target_update=20, seed=seed)


def learned_probe_q(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, DQNRun]:
    """Train DQN on a probe; return (learned Q at the probe's observations, the exact Q, the run)."""
    config = probe_config(name, seed)
    run = train_dqn(PROBES[name], config)
    obs, expected = probe_expectation(name, config.gamma)
    with torch.no_grad():
        learned = run.q_net(torch.from_numpy(obs)).double().numpy()
    return learned, expected, run


# ---------------------------------------------------------------- the experiment

PROBE_TOLERANCE = {"Probe1": 5e-4, "Probe2": 5e-4, "Probe3": 5e-4, "Probe4": 5e-4, "Probe5": 1e-3}  # ARENA's
CARTPOLE = DQNConfig(eval_every=25_000, eval_episodes=10)
FINAL_EVAL_EPISODES = 100
SOLVED = 475.0  # CartPole-v1's reward_threshold: the mean over 100 episodes
# What to try, in this order, for a seed whose final network misses 475 (ARENA's and the DQN
# literature's first remedies for a policy that oscillates late in training).
FIXES: dict[str, dict] = {
    "target_copy_every_2000_steps": {"trains_per_target_update": 200},  # a slower-moving target
    "train_750k_steps": {"total_timesteps": 750_000, "exploration_fraction": 0.2 * 500_000 / 750_000},  # same ε decay, longer
}


def _smooth(x: list[float], window: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if len(x) < window:
        return x
    return np.convolve(x, np.ones(window) / window, mode="valid")


def cartpole_run(config: DQNConfig) -> tuple[DQNRun, dict]:
    """Train on CartPole-v1, then score the final network greedily on 100 fresh episodes."""
    run = train_dqn(lambda: gym.make("CartPole-v1"), config)
    final = greedy_returns(lambda o: greedy_action(run.q_net, o), "CartPole-v1", FINAL_EVAL_EPISODES, seed=123_456)
    summary = {
        "final_greedy_mean_return": float(np.mean(final)),
        "final_greedy_min_return": float(np.min(final)),
        "solved": bool(np.mean(final) >= SOLVED),
        "eval_steps": run.eval_steps,
        "eval_returns": run.eval_returns,
        "first_eval_step_at_475": next((s for s, r in zip(run.eval_steps, run.eval_returns) if r >= SOLVED), None),
        "n_episodes": len(run.episode_returns),
        "last_100_training_mean_return": float(np.mean(run.episode_returns[-100:])),
        "n_updates": run.n_updates,
        "n_target_syncs": run.n_target_syncs,
        "train_seconds": run.seconds,
    }
    return run, summary


def run_experiment(out_dir: Path, config: DQNConfig = CARTPOLE, seeds: tuple[int, ...] = (1, 2, 3),
                   fixes: dict[str, dict] = FIXES) -> dict:
    """Probes, then DQN on CartPole-v1 with ARENA's hyper-parameters for each seed (the first is
    the headline): learning curves, the final network's greedy mean return over 100 episodes,
    run time. A seed that misses 475 is rerun with each of ``fixes`` in turn until one solves it."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)

    probes = {}
    for name in PROBES:
        learned, expected, run = learned_probe_q(name)
        probes[name] = {"learned": learned.tolist(), "expected": expected.tolist(),
                        "max_abs_err": float(np.abs(learned - expected).max()),
                        "tolerance": PROBE_TOLERANCE[name], "seconds": run.seconds}

    runs, summaries, attempts = {}, {}, {}
    for seed in seeds:
        runs[seed], summaries[seed] = cartpole_run(replace(config, seed=seed))
        if summaries[seed]["solved"]:
            continue
        for fix, overrides in fixes.items():
            label = f"{seed}+{fix}"
            runs[label], summary = cartpole_run(replace(config, seed=seed, **overrides))
            attempts.setdefault(str(seed), {})[fix] = {"overrides": overrides, **summary}
            if summary["solved"]:
                break

    panels = list(runs)
    ncols = len(panels) if len(panels) <= 3 else 2
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows), sharey=True, squeeze=False)
    window = 20
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, panels):
        run = runs[key]
        summary = summaries[key] if key in summaries else attempts[key.split("+")[0]][key.split("+")[1]]
        seed, fix = (key, None) if key in summaries else tuple(key.split("+"))
        ax.plot(run.episode_end_steps, run.episode_returns, ".", ms=2, alpha=0.2, color="tab:blue", label="training episode (ε-greedy)")
        ax.plot(run.episode_end_steps[window - 1:], _smooth(run.episode_returns, window), color="tab:blue", lw=1,
                label=f"mean of {window} training episodes")
        ax.plot(run.eval_steps, run.eval_returns, "o-", ms=3, color="tab:orange", label=f"greedy, mean of {config.eval_episodes} episodes")
        ax.axhline(SOLVED, color="gray", ls="--", lw=1, label=f"solved ({SOLVED:.0f})")
        run_config = replace(config, **(fixes[fix] if fix else {}))
        ax.axvspan(0, run_config.exploration_fraction * run_config.total_timesteps, color="gray", alpha=0.08, label="ε annealed 1 → 0.1")
        title = f"seed {seed}" + (f", fix: {fix.replace('_', ' ')}" if fix else "")
        ax.set_title(f"{title}\nfinal greedy mean {summary['final_greedy_mean_return']:.1f}", fontsize=9)
        ax.set_xlabel("environment steps")
        ax.set_ylim(0, 520)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("episode return")
    axes[0, 0].legend(loc="lower right", fontsize=7)
    fig.suptitle("DQN on CartPole-v1 (ARENA's hyper-parameters)")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/cartpole_learning_curve.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(PROBES), figsize=(11, 2.8), squeeze=False)
    axes = axes[0]
    for ax, (name, p) in zip(axes, probes.items()):
        expected, learned = np.array(p["expected"]), np.array(p["learned"])
        labels = [f"o{i},a{j}" for i in range(expected.shape[0]) for j in range(expected.shape[1])]
        xs = np.arange(len(labels))
        ax.bar(xs - 0.2, expected.ravel(), 0.4, label="exact")
        ax.bar(xs + 0.2, learned.ravel(), 0.4, label="DQN")
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_title(f"{name}\nmax err {p['max_abs_err']:.1e}", fontsize=9)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_ylim(-1.2, 1.2)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/probes.png", dpi=120)
    plt.close(fig)

    headline = summaries[seeds[0]]
    results = {
        "probes": probes,
        "cartpole": {
            "config": asdict(config),
            "final_greedy_episodes": FINAL_EVAL_EPISODES,
            "headline_seed": seeds[0],
            "final_greedy_mean_return": headline["final_greedy_mean_return"],
            "train_seconds": headline["train_seconds"],
            "n_seeds_solved": sum(s["solved"] for s in summaries.values()),
            "n_seeds": len(seeds),
            "seeds": {str(seed): summary for seed, summary in summaries.items()},
            "fix_attempts": attempts,
            "n_seeds_solved_after_fixes": sum(s["solved"] or any(a["solved"] for a in attempts.get(str(k), {}).values())
                                              for k, s in summaries.items()),
            "torch_threads_during_training": 1,
        },
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
