"""Day 23: debugging PPO with its diagnostics (ARENA 2.3 PPO, logging and debugging).

An RL bug rarely crashes: the agent just learns worse, and with noisy returns "worse" takes many
runs to see. So PPO implementations log a handful of numbers each learning phase whose healthy
ranges are known (CleanRL, ARENA; Andrychowicz et al. 2021, "What matters in on-policy RL"):

- **approximate KL**, mean over the minibatch of k3 = (r − 1) − log r (day 21): how far each
  gradient step has moved the policy from π_old. Healthy PPO on CartPole: around 1e-3 to 2e-2.
  Exactly 0 means the ratio is not comparing with the old policy; large means steps too big.
- **clip fraction**, mean_t 1[|r_t − 1| > ε]: the share of samples where clipping binds.
  Healthy: a few percent to ~20%. Exactly 0 again means r ≡ 1.
- **explained variance** of the critic, 1 − Var[R̂ − V] / Var[R̂] over the batch (V the values the
  rollout stored, R̂ the GAE targets): 1 for a perfect critic, 0 for one that predicts a constant,
  negative for one worse than a constant. It should rise during training.
- **entropy**, mean_t H(π(· | s_t)): exploration left. It should fall slowly; a collapse to 0
  within a few phases means the policy committed before it learned anything.

Two of them are also read at a second moment, where their value is known exactly:

- the approximate KL of a phase's **first minibatch** is computed before any gradient step, at
  θ = θ_old, so it must be 0 up to float rounding; if not, the stored log π_old does not belong to
  the stored (s, a) (a misaligned buffer, the wrong action, a stochastic forward pass);
- the explained variance **after** the phase, of the updated critic on the same targets, must
  differ from the one before: the critic has just taken 16 gradient steps towards them. (It need
  not rise: early on most of the critic's error is its mean level, which the EV ignores.)

One more number, a cross-check of the advantages against their definition:

- **advantage agreement**, the correlation over the batch between the advantages the trainer used
  and Monte Carlo advantages G_t − V(s_t) computed here independently from the rewards (day 19's
  discounted sum, bootstrapped where the rollout or a truncated episode stops). GAE with λ = 0.95
  estimates the same quantity with less variance, so a correct trainer agrees strongly (> 0.5);
  a sign error anywhere in the advantage pipeline makes it strongly negative, whatever the scale.

``DiagnosedPPOTrainer`` fills these in through day 22's hooks. Planted bugs are subclasses that
override one method each; every one is a bug that occurs in real implementations.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

impl = importlib.import_module("days.022.ppo_impl")
theory = importlib.import_module("days.021.ppo_theory")
a2c = importlib.import_module("days.020.a2c")
vpg = importlib.import_module("days.019.vpg")

# ---------------------------------------------------------------- the diagnostics


def approx_kl(logratio: Float[Tensor, "batch"]) -> float:
    """mean[(r − 1) − log r], day 21's k3 estimator of KL(π_old ‖ π_θ), from log r."""
    return float(theory.kl_estimators(logratio)["k3"].mean())


def clip_fraction(logratio: Float[Tensor, "batch"], clip_coef: float) -> float:
    """mean 1[|r − 1| > ε]: the fraction of samples whose ratio is outside [1 − ε, 1 + ε]."""
    return float(((logratio.exp() - 1).abs() > clip_coef).double().mean())


def explained_variance(values: Float[Tensor, "batch"], returns: Float[Tensor, "batch"]) -> float:
    """1 − Var[R̂ − V] / Var[R̂] (population variances); nan if the targets do not vary."""
    var_returns = returns.var(unbiased=False)
    if var_returns == 0:
        return float("nan")
    return float(1 - (returns - values).var(unbiased=False) / var_returns)


def mean_entropy(logits: Float[Tensor, "batch n_actions"]) -> float:
    """mean_t H(π(· | s_t)), day 20's entropy."""
    return float(a2c.entropy(logits).mean())


def monte_carlo_advantages(rewards: Float[Tensor, "T E"], values: Float[Tensor, "T E"], next_values: Float[Tensor, "T E"],
                           terminated: Tensor, ends: Tensor, gamma: float) -> Float[Tensor, "T E"]:
    """G_t − V(s_t), G_t = r_t + γ r_t+1 + … to the end of t's episode, plus γ^k V(s) of the state where
    the data stop (the rollout's last step, or a truncation), nothing after a termination. Built from
    day 19's discounted_cumsum on rewards with the bootstrap added at the stopping steps."""
    stop = ends.clone()
    stop[-1] = True
    bootstrap = torch.where(stop & ~terminated, next_values, torch.zeros_like(next_values))
    return vpg.discounted_cumsum(rewards + gamma * bootstrap, gamma, stop) - values


def advantage_agreement(advantages: Float[Tensor, "batch"], reference: Float[Tensor, "batch"]) -> float:
    """Pearson correlation between the trainer's advantages and a reference estimate of the same thing."""
    return float(torch.corrcoef(torch.stack([advantages, reference]))[0, 1])


@dataclass
class PhaseDiagnostics:
    """One learning phase: minibatch diagnostics averaged over all its gradient steps, the critic's
    explained variance on the rollout (before and after the phase), and cross-checks."""

    step: int
    approx_kl: float
    clip_fraction: float
    entropy: float
    explained_variance: float  # V_old against R̂ (CleanRL's definition)
    explained_variance_after: float  # the updated critic against the same R̂
    first_minibatch_kl: float  # approx KL before the phase's first step: 0 when log π_old is right
    advantage_agreement: float
    phase_kl: float  # k3 between π_old and the policy after the whole phase, on the batch
    mean_episode_return: float | None  # of the episodes that ended during the rollout (None if none)


class DiagnosedPPOTrainer(impl.PPOTrainer):
    """Day 22's trainer with its hooks filled in: a PhaseDiagnostics per learning phase."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.diagnostics: list[PhaseDiagnostics] = []
        self._minibatch: list[tuple[float, float, float]] = []
        self._episodes_seen = 0

    def after_minibatch(self, epoch, mb, parts):
        logratio = parts["logratio"]
        self._minibatch.append((approx_kl(logratio), clip_fraction(logratio, self.config.clip_coef),
                                mean_entropy(parts["logits"].detach())))

    def after_phase(self, rollout, advantages, returns):
        obs, actions = rollout.obs.flatten(0, 1), rollout.actions.flatten()
        with torch.no_grad():
            logits, values_after = self.agent(obs)
            logratio = vpg.log_probs(logits, actions) - rollout.logprobs.flatten()
        kl, clip, ent = (float(np.mean(x)) for x in zip(*self._minibatch))
        finished = self.run.episode_returns[self._episodes_seen:]
        self._episodes_seen = len(self.run.episode_returns)
        reference = monte_carlo_advantages(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                                           rollout.ends, self.config.gamma)
        self.diagnostics.append(PhaseDiagnostics(
            step=self.step, approx_kl=kl, clip_fraction=clip, entropy=ent,
            explained_variance=explained_variance(rollout.values.flatten(), returns.flatten()),
            explained_variance_after=explained_variance(values_after, returns.flatten()),
            first_minibatch_kl=self._minibatch[0][0],
            advantage_agreement=advantage_agreement(advantages.flatten(), reference.flatten()),
            phase_kl=approx_kl(logratio),
            mean_episode_return=float(np.mean(finished)) if finished else None))
        self._minibatch = []


# ---------------------------------------------------------------- planted bugs


class AdvantageSignFlip(DiagnosedPPOTrainer):
    """Bug: δ_t written as V(s_t) − r_t − γV(s_t+1), so the policy is pushed *away* from good actions
    (the critic's targets R̂ = Â + V are kept right, so only the actor is affected)."""

    def advantages_and_returns(self, rollout):
        advantages, returns = super().advantages_and_returns(rollout)
        return -advantages, returns


class StaleOldLogprobs(DiagnosedPPOTrainer):
    """Bug: the 'old' log-probabilities are recomputed from the current network at every minibatch
    (e.g. evaluating π_old after the optimiser step has already changed it), so r ≡ 1 and the
    clipping never binds: PPO silently becomes multi-epoch vanilla policy gradient."""

    def objective(self, mb):
        with torch.no_grad():
            current = vpg.log_probs(self.agent.actor(mb["obs"]), mb["actions"])
        return super().objective({**mb, "logprobs": current})


class CriticDetached(DiagnosedPPOTrainer):
    """Bug: the value loss is computed on detached values (a stray ``.detach()`` or ``.item()``), so the
    critic never trains and the advantages are just discounted returns minus a random baseline."""

    def objective(self, mb):
        total, parts = super().objective(mb)
        frozen = theory.value_loss(parts["values"].detach(), mb["returns"], self.config.vf_coef)
        return total + parts["value_loss"] - frozen, {**parts, "value_loss": frozen}


class LogprobsOffByOne(DiagnosedPPOTrainer):
    """Bug: the buffer stores log π_old of the previous step next to each (s_t, a_t) (the classic
    off-by-one of writing before advancing an index), so r_t compares two different decisions."""

    def collect_rollout(self):
        rollout = super().collect_rollout()
        rollout.logprobs = torch.roll(rollout.logprobs, shifts=1, dims=0)
        return rollout


class LearningRate100x(DiagnosedPPOTrainer):
    """Not a bug, a contrast: ARENA's learning rate × 100 (2.5e-2), annealed the same way."""

    def __init__(self, config: impl.PPOConfig, *args, **kwargs):
        super().__init__(replace(config, lr=100 * config.lr), *args, **kwargs)


BUGS: dict[str, type[DiagnosedPPOTrainer]] = {
    "advantage_sign_flip": AdvantageSignFlip,
    "stale_old_logprobs": StaleOldLogprobs,
    "critic_detached": CriticDetached,
    "logprobs_off_by_one": LogprobsOffByOne,
}
RUNS: dict[str, type[DiagnosedPPOTrainer]] = {"healthy": DiagnosedPPOTrainer, **BUGS, "learning_rate_100x": LearningRate100x}


# ---------------------------------------------------------------- the detector


# Each rule reads one diagnostic and states what it should be for a correct PPO. The first four hold
# for any correct implementation at any point of training; the entropy rule is calibrated on
# CartPole-v1 with ARENA's settings over 100 000 steps (the healthy run's entropy stays above 0.5).
RULES = {
    "ratio_never_moves": "approx KL and clip fraction are exactly 0 in every minibatch: r ≡ 1, the ratio "
                         "is not measured against π_old",
    "ratio_wrong_at_start": "the median first-minibatch approx KL exceeds 1e-6: log π_old does not match "
                            "the stored (s, a) at θ = θ_old",
    "critic_frozen": "explained variance is unchanged by every phase (|after − before| < 1e-9): the "
                     "critic's parameters never move",
    "advantages_disagree": "median advantage agreement < 0: the advantages point against the returns",
    "entropy_collapse": "mean entropy of the last quarter of phases < 0.25 nats: the policy committed early",
}


def detect(diagnostics: list[PhaseDiagnostics]) -> list[str]:
    """The RULES that a run's diagnostics break (a correct run breaks none)."""
    kl = np.array([d.approx_kl for d in diagnostics])
    clip = np.array([d.clip_fraction for d in diagnostics])
    first = np.array([d.first_minibatch_kl for d in diagnostics])
    ev_change = np.array([d.explained_variance_after - d.explained_variance for d in diagnostics])
    agree = np.array([d.advantage_agreement for d in diagnostics])
    last = diagnostics[len(diagnostics) * 3 // 4:]
    broken = []
    if np.all(kl == 0) and np.all(clip == 0):
        broken.append("ratio_never_moves")
    if np.median(first) > 1e-6:
        broken.append("ratio_wrong_at_start")
    if np.all(np.abs(ev_change) < 1e-9):
        broken.append("critic_frozen")
    if np.median(agree) < 0:
        broken.append("advantages_disagree")
    if np.mean([d.entropy for d in last]) < 0.25:
        broken.append("entropy_collapse")
    return broken


def diagnose(bug: str, config: impl.PPOConfig) -> tuple[list[PhaseDiagnostics], impl.PPORun]:
    """Train one of RUNS ("healthy", a planted bug, or the lr contrast); return its diagnostics and the run."""
    trainer = RUNS[bug](config)
    run = trainer.train()
    return trainer.diagnostics, run


# ---------------------------------------------------------------- the experiment

EXPERIMENT = replace(impl.CARTPOLE, total_timesteps=100_352)  # 196 phases of 512 steps, lr annealed over them
GATE = replace(impl.CARTPOLE, total_timesteps=2_048)  # 4 phases: what the fast gate trains

PANELS = [("mean_episode_return", "episode return (mean over 5 phases)", "linear"),
          ("approx_kl", "approx KL (k3, mean over minibatches)", "log"),
          ("clip_fraction", "clip fraction", "linear"),
          ("first_minibatch_kl", "approx KL of the first minibatch", "log"),
          ("explained_variance", "explained variance (before the phase)", "ev"),
          ("ev_change", "|explained variance after − before the phase|", "log"),
          ("entropy", "entropy (nats)", "linear"),
          ("advantage_agreement", "advantage agreement (corr. with Monte Carlo)", "linear")]
STYLES = {"healthy": ("black", 2.2), "advantage_sign_flip": ("tab:red", 1.0), "stale_old_logprobs": ("tab:blue", 1.0),
          "critic_detached": ("tab:green", 1.0), "logprobs_off_by_one": ("tab:purple", 1.0),
          "learning_rate_100x": ("tab:orange", 1.0)}


def summarize(diags: list[PhaseDiagnostics], run: impl.PPORun) -> dict:
    last = diags[len(diags) * 3 // 4:]
    detected = detect(diags)
    return {
        "detected": detected,
        "detected_text": ", ".join(f"`{rule}`" for rule in detected) or "nothing",
        "median_approx_kl": float(np.median([d.approx_kl for d in diags])),
        "median_clip_fraction": float(np.median([d.clip_fraction for d in diags])),
        "median_first_minibatch_kl": float(np.median([d.first_minibatch_kl for d in diags])),
        "median_explained_variance": float(np.nanmedian([d.explained_variance for d in diags])),
        "max_explained_variance": float(np.nanmax([d.explained_variance for d in diags])),
        "median_abs_explained_variance_change": float(np.nanmedian([abs(d.explained_variance_after - d.explained_variance) for d in diags])),
        "last_quarter_entropy": float(np.mean([d.entropy for d in last])),
        "median_advantage_agreement": float(np.median([d.advantage_agreement for d in diags])),
        "last_100_episode_mean_return": float(np.mean(run.episode_returns[-100:])),
        "train_seconds": run.seconds,
    }


def run_experiment(out_dir: Path, config: impl.PPOConfig = EXPERIMENT) -> dict:
    """The healthy agent, every planted bug and the lr × 100 contrast on CartPole-v1 for 100 000 steps
    (seed 1, ARENA's settings otherwise): the diagnostics over training, and what the detector says."""
    import matplotlib.pyplot as plt

    start = time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    traces, summary = {}, {}
    for name in RUNS:
        diags, run = diagnose(name, config)
        traces[name], summary[name] = diags, summarize(diags, run)

    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, (field, label, scale) in zip(axes.flat, PANELS):
        for name, diags in traces.items():
            color, lw = STYLES[name]
            steps = [d.step for d in diags]
            if field == "ev_change":
                values = [abs(d.explained_variance_after - d.explained_variance) for d in diags]
            else:
                values = [getattr(d, field) for d in diags]
            values = np.array([np.nan if v is None else v for v in values], dtype=float)
            if field == "mean_episode_return":  # a running mean over 5 phases (NaN: no episode ended)
                kernel = np.ones(5)
                filled = np.nan_to_num(values)
                values = np.convolve(filled, kernel, "same") / np.maximum(np.convolve(~np.isnan(values), kernel, "same"), 1)
            if scale == "log":
                values = np.maximum(values, 1e-12)
            ax.plot(steps, values, color=color, lw=lw, alpha=0.8, label=name.replace("_", " "))
        if scale == "log":
            ax.set_yscale("log")
            ax.set_ylim(3e-13, None)
            ax.text(0.02, 0.02, "exactly 0 drawn at 1e-12", transform=ax.transAxes, fontsize=7, color="gray")
        elif scale == "ev":
            ax.set_ylim(-1.05, 1.05)
            ax.text(0.02, 0.02, "clipped to [−1, 1]", transform=ax.transAxes, fontsize=7, color="gray")
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("environment steps", fontsize=7)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/diagnostics.png", dpi=120)
    plt.close(fig)

    def row(d: PhaseDiagnostics) -> dict:
        """One phase's diagnostics for results.json: 4 significant digits (the figure's resolution), NaN as null."""
        return {k: (None if not np.isfinite(v) else float(f"{v:.4g}")) if isinstance(v, float) else v
                for k, v in asdict(d).items()}

    results = {
        "config": asdict(config),
        "n_phases": config.num_phases,
        "rules": RULES,
        "runs": summary,
        "healthy_is_clean": summary["healthy"]["detected"] == [],
        "every_bug_detected": all(summary[b]["detected"] for b in BUGS),
        "traces": {name: [row(d) for d in diags] for name, diags in traces.items()},
        "experiment_seconds": time.perf_counter() - start,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
