"""Day 22: PPO, the full agent (ARENA 2.3 PPO, part 2).

The algorithm alternates two phases (Schulman et al., 2017; ARENA's PPOTrainer; CleanRL's ppo.py):

1. **Rollout.** Run the current policy π_old for T steps in each of E environments at once
   (``gymnasium.vector.SyncVectorEnv``), storing s_t, a_t, log π_old(a_t | s_t), V_old(s_t), r_t,
   the state reached and whether the episode terminated or was truncated.
2. **Learning.** Compute GAE advantages Â and targets R̂ = Â + V_old (day 21), then for K epochs
   shuffle the E·T transitions into minibatches and take one Adam step on each, *maximising*

       L(θ, φ) = L^CLIP(θ) − c_v · mean (V_φ(s) − R̂)² + c_e · mean H(π_θ(· | s)),

   with the advantages standardised per minibatch, gradients clipped to a global norm, and the
   learning rate annealed linearly to 0 over training.

The agent is day 20's ``ActorCritic``: separate actor and critic MLPs (64-64, tanh), orthogonal
initialisation with gain √2 in the hidden layers, 0.01 for the actor's output (a near-uniform first
policy) and 1 for the critic's.

One deliberate difference from ARENA and CleanRL: an episode cut by the time limit (CartPole's 500
steps) is *not* treated as a termination. Gymnasium's same-step autoreset hands back the true
final observation, and δ_t keeps γ V(s_final) there; only a termination zeroes the bootstrap.

ARENA's pieces under ARENA's names: ``PPOAgent.play_step`` (one step of the agent in the vectorised
environment, stored in a ``ReplayMemory``) makes the rollout, and ``PPOScheduler`` anneals the learning
rate, stepped once after every learning phase.

The trainer has two hooks, ``after_minibatch`` and ``after_phase``, that do nothing here: day 23
overrides them to compute its diagnostics, and overrides the methods themselves to plant bugs.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from jaxtyping import Bool, Float, Int
from torch import Tensor

from checks.timing import single_thread

theory = importlib.import_module("days.021.ppo_theory")
a2c = importlib.import_module("days.020.a2c")
vpg = importlib.import_module("days.019.vpg")
dqn = importlib.import_module("days.018.dqn")


@dataclass
class PPOConfig:
    """ARENA's PPOArgs for CartPole-v1 (the defaults). CleanRL's ppo.py is the same up to a factor of ½:
    its vf_coef = 0.5 multiplies ½·MSE, ours 0.25 multiplies the MSE (it also clips the value loss)."""

    env_id: str = "CartPole-v1"
    seed: int = 1
    total_timesteps: int = 500_000
    num_envs: int = 4
    num_steps: int = 128  # per environment per rollout
    num_minibatches: int = 4
    update_epochs: int = 4  # ARENA's batches_per_learning_phase
    lr: float = 2.5e-4
    anneal_lr: bool = True
    adam_eps: float = 1e-5
    max_grad_norm: float = 0.5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.25
    normalize_advantages: bool = True
    hidden: tuple[int, ...] = (64, 64)

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_phases(self) -> int:
        return self.total_timesteps // self.batch_size


def make_env_fn(env_id: str) -> Callable[[], gym.Env]:
    """A Gymnasium id ("CartPole-v1") or one of day 18's probes ("Probe1" … "Probe5")."""
    if env_id in dqn.PROBES:
        return dqn.PROBES[env_id]
    return lambda: gym.make(env_id)


@dataclass
class Rollout:
    """One rollout of T steps in E environments (time first)."""

    obs: Float[Tensor, "T E obs_dim"]
    actions: Int[Tensor, "T E"]
    logprobs: Float[Tensor, "T E"]
    values: Float[Tensor, "T E"]
    rewards: Float[Tensor, "T E"]
    next_obs: Float[Tensor, "T E obs_dim"]  # the state reached: the true final one at an episode end
    next_values: Float[Tensor, "T E"]
    terminated: Bool[Tensor, "T E"]
    ends: Bool[Tensor, "T E"]  # terminated or truncated


class ReplayMemory:
    """ARENA's ReplayMemory: the transitions of one rollout, one row of num_envs per step, time first.

    Besides ARENA's (obs, action, logprob, value, reward, done) each step keeps the state actually reached
    (the true final one at an episode end) and both end flags: a termination removes the bootstrap, an end
    of either kind stops the advantage sum (see the module docstring)."""

    FIELDS = ("obs", "actions", "logprobs", "values", "rewards", "next_obs", "terminated", "ends")

    def __init__(self, num_envs: int):
        self.num_envs = num_envs
        self.reset()

    def reset(self) -> None:
        """Empty the memory (ARENA does this after every learning phase)."""
        for name in self.FIELDS:
            setattr(self, name, [])

    def add(self, **step: Tensor) -> None:
        """Store one step of every environment: each field a tensor with num_envs rows."""
        for name in self.FIELDS:
            getattr(self, name).append(step[name])

    def __len__(self) -> int:
        """Transitions stored: steps × num_envs."""
        return len(self.obs) * self.num_envs

    def rollout(self, critic: nn.Module) -> Rollout:
        """The stored steps stacked (time first), with V(s_t+1) of each reached state from ``critic``."""
        fields = {name: torch.stack(getattr(self, name)) for name in self.FIELDS}
        with torch.no_grad():
            fields["next_values"] = critic(fields["next_obs"])[..., 0]
        return Rollout(**fields)


class PPOAgent:
    """ARENA's PPOAgent: the actor and the critic acting in a vectorised environment, filling a ReplayMemory."""

    def __init__(self, envs: SyncVectorEnv, actor: nn.Module, critic: nn.Module, memory: ReplayMemory,
                 generator: torch.Generator, seed: int):
        self.envs, self.actor, self.critic, self.memory, self.generator = envs, actor, critic, memory, generator
        obs, _ = envs.reset(seed=[seed + i for i in range(envs.num_envs)])
        self.next_obs = torch.as_tensor(obs, dtype=torch.float32)  # where the next step starts
        self.step = 0  # environment steps so far, all environments counted

    def sample_actions(self, logits: Float[Tensor, "E n_actions"]) -> Int[Tensor, "E"]:
        """a ~ Categorical(softmax(logits)), from the agent's own generator (reproducible)."""
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator)[:, 0]

    def play_step(self) -> dict:
        """One step of every environment: sample a ~ π_old(· | s), store (s, a, log π_old(a | s), V_old(s), r,
        the state reached, terminated, ended) in the memory and return Gymnasium's infos. At an episode end the
        environment has already been reset (same-step autoreset): the true final observation comes from
        ``infos["final_obs"]`` and is stored for the bootstrap, and ``next_obs`` is the new episode's first."""
        obs = self.next_obs
        with torch.no_grad():
            logits, values = self.actor(obs), self.critic(obs)[..., 0]
        actions = self.sample_actions(logits)
        next_obs, rewards, terminated, truncated, infos = self.envs.step(actions.numpy())
        ends = terminated | truncated
        reached = np.array(next_obs, dtype=np.float32, copy=True)
        for i in np.flatnonzero(ends):
            reached[i] = infos["final_obs"][i]
        self.memory.add(obs=obs, actions=actions, logprobs=vpg.log_probs(logits, actions), values=values,
                        rewards=torch.as_tensor(rewards, dtype=torch.float32), next_obs=torch.from_numpy(reached),
                        terminated=torch.as_tensor(terminated), ends=torch.as_tensor(ends))
        self.next_obs = torch.as_tensor(next_obs, dtype=torch.float32)
        self.step += self.envs.num_envs
        return infos


class PPOScheduler:
    """ARENA's PPOScheduler: after k of ``total_phases`` calls to ``step``, every param group's learning rate
    is initial + (k / total_phases)·(end − initial), a linear decay from initial_lr to end_lr."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, end_lr: float, total_phases: int):
        self.optimizer, self.initial_lr, self.end_lr, self.total_phases = optimizer, initial_lr, end_lr, total_phases
        self.n_step_calls = 0

    def step(self) -> None:
        """Advance one phase and set the lr of every param group. Written end + (initial − end)·(1 − k/N), the
        same line as ARENA's: with end = 0 it is initial·(1 − k/N) to the last bit."""
        if self.n_step_calls >= self.total_phases:
            raise ValueError(f"PPOScheduler stepped beyond its {self.total_phases} phases")
        self.n_step_calls += 1
        frac = self.n_step_calls / self.total_phases
        for group in self.optimizer.param_groups:
            group["lr"] = self.end_lr + (self.initial_lr - self.end_lr) * (1 - frac)


@dataclass
class PPORun:
    """What a training run leaves behind."""

    agent: a2c.ActorCritic
    episode_returns: list[float] = field(default_factory=list)
    episode_end_steps: list[int] = field(default_factory=list)
    phase_logs: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # this process's CPU time (what the run costs on an idle core)


class PPOTrainer:
    """Rollouts with a vectorised environment, then K epochs of minibatch updates on L^CLIP − c_v L^V + c_e H.

    ``self.agent`` is the actor-critic network (day 20's); ``self.ppo_agent`` is ARENA's PPOAgent that acts
    with it (ARENA's trainer calls the latter ``self.agent``)."""

    def __init__(self, config: PPOConfig, make_env: Callable[[], gym.Env] | None = None):
        self.config = config
        torch.manual_seed(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        make_env = make_env or make_env_fn(config.env_id)
        self.envs = SyncVectorEnv([make_env for _ in range(config.num_envs)], autoreset_mode=AutoresetMode.SAME_STEP)
        obs_dim = int(np.prod(self.envs.single_observation_space.shape))
        with single_thread():  # orthogonal init runs a QR: its last bits depend on the thread count
            self.agent = a2c.ActorCritic(obs_dim, int(self.envs.single_action_space.n), config.hidden)
        self.memory = ReplayMemory(config.num_envs)
        self.ppo_agent = PPOAgent(self.envs, self.agent.actor, self.agent.critic, self.memory, self.generator, config.seed)
        self.optimizer = torch.optim.Adam(self.agent.parameters(), lr=config.lr, eps=config.adam_eps, maximize=True)
        self.scheduler = PPOScheduler(self.optimizer, config.lr, 0.0 if config.anneal_lr else config.lr, config.num_phases)
        self.phase = 0
        self._running_returns = np.zeros(config.num_envs)
        self.run = PPORun(self.agent)

    @property
    def obs(self) -> Float[Tensor, "E obs_dim"]:
        """The observation each environment is in now (a new episode's first after an end)."""
        return self.ppo_agent.next_obs

    @property
    def step(self) -> int:
        """Environment steps so far, all environments counted."""
        return self.ppo_agent.step

    # ------------------------------------------------------------ rollout

    def sample_actions(self, logits: Float[Tensor, "E n_actions"]) -> Int[Tensor, "E"]:
        """a ~ Categorical(softmax(logits)), from the trainer's own generator (reproducible)."""
        return self.ppo_agent.sample_actions(logits)

    def collect_rollout(self) -> Rollout:
        """num_steps calls of PPOAgent.play_step into an emptied memory (ARENA's rollout phase), then the
        stacked rollout with the critic's values of the states reached."""
        self.memory.reset()
        for _ in range(self.config.num_steps):
            self.ppo_agent.play_step()
            self._record_episodes(self.memory.rewards[-1].numpy(), self.memory.ends[-1].numpy())
        return self.memory.rollout(self.agent.critic)

    def _record_episodes(self, rewards: np.ndarray, ends: np.ndarray) -> None:
        self._running_returns += rewards
        for i in np.flatnonzero(ends):
            self.run.episode_returns.append(float(self._running_returns[i]))
            self.run.episode_end_steps.append(self.step)
            self._running_returns[i] = 0.0

    # ------------------------------------------------------------ learning

    def advantages_and_returns(self, rollout: Rollout) -> tuple[Float[Tensor, "T E"], Float[Tensor, "T E"]]:
        """GAE(γ, λ) advantages (day 21's operator form) and the critic's targets R̂ = Â + V_old."""
        c = self.config
        advantages = theory.gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                                rollout.ends, c.gamma, c.gae_lambda)
        return advantages, advantages + rollout.values

    def objective(self, mb: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """L = L^CLIP − c_v · value loss + c_e · entropy on one minibatch (to be maximised)."""
        c = self.config
        logits, values = self.agent(mb["obs"])
        new_logprobs = vpg.log_probs(logits, mb["actions"])
        clip = theory.clipped_surrogate(new_logprobs, mb["logprobs"], mb["advantages"], c.clip_coef, c.normalize_advantages)
        value = theory.value_loss(values, mb["returns"], c.vf_coef)
        bonus = theory.entropy_bonus(logits, c.ent_coef)
        parts = {"logits": logits, "values": values, "new_logprobs": new_logprobs,
                 "logratio": new_logprobs.detach() - mb["logprobs"],  # log r_t, as the objective saw it
                 "clipped_surrogate": clip, "value_loss": value, "entropy_bonus": bonus}
        return clip - value + bonus, parts

    def minibatches(self, n: int) -> list[Int[Tensor, "minibatch"]]:
        """One random permutation of the n transitions, cut into num_minibatches equal pieces."""
        perm = torch.randperm(n, generator=self.generator)
        return list(perm.reshape(self.config.num_minibatches, -1))

    def learning_phase(self, rollout: Rollout) -> dict:
        """update_epochs passes over the rollout in shuffled minibatches, one clipped Adam step each."""
        c = self.config
        advantages, returns = self.advantages_and_returns(rollout)
        flat = {"obs": rollout.obs.flatten(0, 1), "actions": rollout.actions.flatten(), "logprobs": rollout.logprobs.flatten(),
                "values": rollout.values.flatten(), "advantages": advantages.flatten(), "returns": returns.flatten()}
        n = flat["actions"].shape[0]
        log = {"clipped_surrogate": 0.0, "value_loss": 0.0, "entropy_bonus": 0.0}
        for epoch in range(c.update_epochs):
            for index in self.minibatches(n):
                mb = {k: v[index] for k, v in flat.items()}
                total, parts = self.objective(mb)
                self.optimizer.zero_grad()
                total.backward()
                nn.utils.clip_grad_norm_(self.agent.parameters(), c.max_grad_norm)
                self.optimizer.step()
                self.after_minibatch(epoch, mb, parts)
                if epoch == c.update_epochs - 1:
                    for k in log:
                        log[k] += parts[k].item() / c.num_minibatches
        self.after_phase(rollout, advantages, returns)
        return log

    def train(self) -> PPORun:
        """num_phases alternations of rollout and learning phase, the scheduler stepped after each (ARENA's
        order: phase p runs at lr·(1 − p/num_phases))."""
        start, cpu_start = time.perf_counter(), time.process_time()
        with single_thread():
            for self.phase in range(self.config.num_phases):
                lr = self.optimizer.param_groups[0]["lr"]
                rollout = self.collect_rollout()
                log = self.learning_phase(rollout)
                self.scheduler.step()
                self.run.phase_logs.append({"step": self.step, "lr": lr, **log})
        self.run.seconds = time.perf_counter() - start
        self.run.cpu_seconds = time.process_time() - cpu_start
        self.envs.close()
        return self.run

    # ------------------------------------------------------------ hooks (day 23)

    def after_minibatch(self, epoch: int, mb: dict[str, Tensor], parts: dict[str, Tensor]) -> None:
        """Called after each gradient step with the minibatch and the forward pass that made it."""

    def after_phase(self, rollout: Rollout, advantages: Tensor, returns: Tensor) -> None:
        """Called at the end of each learning phase."""


def train_ppo(config: PPOConfig, make_env: Callable[[], gym.Env] | None = None) -> PPORun:
    return PPOTrainer(config, make_env).train()


# ---------------------------------------------------------------- evaluation


def policy_action(agent: a2c.ActorCritic, obs: np.ndarray, greedy: bool, generator: torch.Generator) -> int:
    """argmax_a π(a | obs) if greedy, else a ~ π(· | obs)."""
    with torch.no_grad():
        logits = agent.actor(torch.as_tensor(obs, dtype=torch.float32)[None])[0]
    if greedy:
        return int(logits.argmax())
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))


def evaluate(agent: a2c.ActorCritic, env_id: str, n_episodes: int, greedy: bool, seed: int = 123_456) -> list[float]:
    """Undiscounted returns of fresh episodes (seeds seed, seed + 1, …) with day 18's episode runner."""
    generator = torch.Generator().manual_seed(seed)
    with single_thread():  # the same bits whatever the caller's thread count (a sampled action can hinge on one)
        return dqn.greedy_returns(lambda o: policy_action(agent, o, greedy, generator), env_id, n_episodes, seed)


def probe_values_and_probs(agent: a2c.ActorCritic, name: str) -> tuple[np.ndarray, np.ndarray]:
    """V(s) and π(· | s) at the probe's observations (day 18's expected_obs)."""
    obs = torch.tensor(dqn.PROBES[name].expected_obs, dtype=torch.float32)
    with torch.no_grad():
        logits, values = agent(obs)
    return values.double().numpy(), torch.softmax(logits, -1).double().numpy()


def probe_optimum(name: str, gamma: float) -> tuple[np.ndarray, np.ndarray | None]:
    """The optimal policy's values V*(s) = max_a Q*(s, a) and, where there is a choice of action, the
    optimal policy itself (one-hot on argmax_a Q*), from day 18's exact Q-values."""
    _, q = dqn.probe_expectation(name, gamma)
    probs = np.eye(q.shape[1])[q.argmax(-1)] if q.shape[1] > 1 else None
    return q.max(-1), probs


# ARENA's probe test: its step counts, lr 1e-3 and tolerances on V (and π where an action matters).
PROBE_STEPS = {"Probe1": 7_500, "Probe2": 7_500, "Probe3": 12_500, "Probe4": 20_000, "Probe5": 20_000}
PROBE_TOLERANCE = {"Probe1": 1e-3, "Probe2": 1e-3, "Probe3": 1e-3, "Probe4": 2e-3, "Probe5": 2e-3}


def probe_config(name: str, seed: int = 1) -> PPOConfig:
    """ARENA's probe settings: lr 1e-3, 7 500 – 20 000 steps, otherwise the CartPole defaults."""
    return PPOConfig(env_id=name, total_timesteps=PROBE_STEPS[name], lr=1e-3, seed=seed)


def run_probe(config: PPOConfig) -> dict:
    """Train on a probe (config.env_id); return the learned values and policy next to the optimal ones,
    and the worst absolute errors."""
    name = config.env_id
    run = train_ppo(config)
    values, probs = probe_values_and_probs(run.agent, name)
    expected_v, expected_p = probe_optimum(name, config.gamma)
    out = {"values": values.tolist(), "expected_values": expected_v.tolist(),
           "value_max_abs_err": float(np.abs(values - expected_v).max()), "seconds": run.seconds}
    if expected_p is not None:
        out.update(probs=probs.tolist(), expected_probs=expected_p.tolist(),
                   probs_max_abs_err=float(np.abs(probs - expected_p).max()))
    return out


# ---------------------------------------------------------------- the experiment

CARTPOLE = PPOConfig()
SEEDS = (1, 2, 3)
FINAL_EPISODES = 100
SOLVED = 475.0  # CartPole-v1's reward_threshold, a mean over 100 episodes


def cartpole_run(config: PPOConfig) -> tuple[PPORun, dict]:
    """Train on CartPole-v1, then score the final policy on 100 fresh episodes, sampled (the policy PPO
    learned) and greedy."""
    run = train_ppo(config)
    sampled = evaluate(run.agent, config.env_id, FINAL_EPISODES, greedy=False)
    greedy = evaluate(run.agent, config.env_id, FINAL_EPISODES, greedy=True)
    first = next((s for s, r in zip(run.episode_end_steps[99:], dqn._smooth(run.episode_returns, 100)) if r >= SOLVED), None)
    return run, {"final_sampled_mean_return": float(np.mean(sampled)), "final_sampled_min_return": float(np.min(sampled)),
                 "final_greedy_mean_return": float(np.mean(greedy)), "final_greedy_min_return": float(np.min(greedy)),
                 "solved": bool(np.mean(sampled) >= SOLVED),
                 "first_step_training_mean_100_at_475": first,
                 "last_100_training_mean_return": float(np.mean(run.episode_returns[-100:])),
                 "n_episodes": len(run.episode_returns), "train_seconds": run.seconds,
                 "train_cpu_seconds": run.cpu_seconds}


def phase_log_summary(run: PPORun, ent_coef: float) -> dict:
    """The numbers the post reads off a run's phase logs: the value loss (last epoch of each phase) at the first
    phase, its maximum and the step where it peaked, at the last phase; the entropy at the first and last."""
    steps = [log["step"] for log in run.phase_logs]
    value_loss = [log["value_loss"] for log in run.phase_logs]
    return {"headline_value_loss": {"first_phase": value_loss[0], "max": max(value_loss),
                                    "step_of_max": steps[int(np.argmax(value_loss))], "last_phase": value_loss[-1]},
            "headline_entropy": {"first_phase": run.phase_logs[0]["entropy_bonus"] / ent_coef,
                                 "last_phase": run.phase_logs[-1]["entropy_bonus"] / ent_coef}}


def run_experiment(out_dir: Path, config: PPOConfig = CARTPOLE, seeds: tuple[int, ...] = SEEDS) -> dict:
    """ARENA's probe test, then PPO on CartPole-v1 with ARENA's hyper-parameters for each seed (the first,
    ARENA's default seed, is the headline): learning curves, the final policy's mean return over 100
    fresh episodes, run time. Nothing is rerun or tuned per seed."""
    import matplotlib.pyplot as plt

    start = time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    probes = {name: run_probe(probe_config(name)) for name in dqn.PROBES}

    runs, summaries = {}, {}
    for seed in seeds:
        runs[seed], summaries[seed] = cartpole_run(replace(config, seed=seed))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    colors = dict(zip(seeds, ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]))
    for seed, run in runs.items():
        color = colors[seed]
        axes[0].plot(run.episode_end_steps, run.episode_returns, ".", ms=1.5, alpha=0.12, color=color)
        smooth = dqn._smooth(run.episode_returns, 100)
        axes[0].plot(run.episode_end_steps[len(run.episode_end_steps) - len(smooth):], smooth, color=color, lw=1.5,
                     label=f"seed {seed}: final policy {summaries[seed]['final_sampled_mean_return']:.1f}")
    axes[0].axhline(SOLVED, color="gray", ls=":", lw=1, label="solved (475)")
    axes[0].set_xlabel("environment steps (4 environments together)")
    axes[0].set_ylabel("episode return (dots; line: mean of 100)")
    axes[0].set_ylim(0, 520)
    axes[0].set_title("PPO on CartPole-v1, ARENA's hyper-parameters")
    axes[0].legend(fontsize=7, loc="lower right")
    axes[0].grid(alpha=0.3)
    head = runs[seeds[0]]
    steps = [log["step"] for log in head.phase_logs]
    axes[1].plot(steps, [log["clipped_surrogate"] for log in head.phase_logs], lw=0.8, label=r"$L^{CLIP}$ (normalised Â)")
    axes[1].plot(steps, [log["value_loss"] for log in head.phase_logs], lw=0.8, label=r"$c_v\,$value loss")
    axes[1].plot(steps, [log["entropy_bonus"] / config.ent_coef for log in head.phase_logs], lw=0.8, label=r"entropy $H$ (bonus / $c_e$)")
    axes[1].set_yscale("symlog", linthresh=0.01)
    axes[1].set_xlabel("environment steps")
    axes[1].set_title(f"seed {seeds[0]}: the objective's parts (last epoch)")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/cartpole_learning_curve.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 3.4))
    x, ticks, labels = 0, [], []
    for name, p in probes.items():
        errors = [(f"V(o{i})", abs(v - e)) for i, (v, e) in enumerate(zip(p["values"], p["expected_values"]))]
        errors += [(f"π(·|o{i})", float(np.abs(np.array(lp) - np.array(ep)).max()))
                   for i, (lp, ep) in enumerate(zip(p.get("probs", []), p.get("expected_probs", [])))]
        for label, err in errors:
            ax.bar(x, max(err, 1e-9), color="tab:blue" if label.startswith("V") else "tab:orange")
            ticks.append(x), labels.append(f"{name}\n{label}")
            x += 1
        ax.hlines(PROBE_TOLERANCE[name], x - len(errors) - 0.4, x - 0.6, color="black", lw=1.5)
        x += 0.6
    ax.hlines([], 0, 0, color="black", lw=1.5, label="ARENA's tolerance")
    ax.bar([0], [0], color="tab:blue", label="value |V − V*|")
    ax.bar([0], [0], color="tab:orange", label="policy max |π − π*|")
    ax.set_yscale("log")
    ax.set_ylim(1e-8, 1e-1)
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_ylabel("absolute error after training")
    ax.set_title("ARENA's probe test with its own settings (lr 1e-3, 7 500 – 20 000 steps)", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/probes.png", dpi=120)
    plt.close(fig)

    headline = summaries[seeds[0]]
    results = {
        "probes": probes,
        "cartpole": {
            "config": asdict(config),
            "batch_size": config.batch_size, "minibatch_size": config.minibatch_size, "num_phases": config.num_phases,
            "gradient_steps": config.num_phases * config.update_epochs * config.num_minibatches,
            "headline_seed": seeds[0],
            "final_episodes": FINAL_EPISODES,
            "final_sampled_mean_return": headline["final_sampled_mean_return"],
            "final_greedy_mean_return": headline["final_greedy_mean_return"],
            "train_seconds": headline["train_seconds"],
            "n_seeds": len(seeds),
            "n_seeds_solved": sum(s["solved"] for s in summaries.values()),
            "n_seeds_solved_greedy": sum(s["final_greedy_mean_return"] >= SOLVED for s in summaries.values()),
            "min_final_sampled_mean_return": min(s["final_sampled_mean_return"] for s in summaries.values()),
            "seeds": {str(seed): s for seed, s in summaries.items()},
            "train_cpu_seconds": headline["train_cpu_seconds"],
            "train_cpu_seconds_all_seeds": sum(s["train_cpu_seconds"] for s in summaries.values()),
            **phase_log_summary(head, config.ent_coef),
            "learning_curve": {str(seed): {"episode_end_steps": run.episode_end_steps[99::10],
                                           "mean_100_returns": dqn._smooth(run.episode_returns, 100)[::10].round(2).tolist()}
                               for seed, run in runs.items()},
            "torch_threads_during_training": 1,
        },
        "experiment_seconds": time.perf_counter() - start,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
