"""Day 67: superposition, a replication of the toy models (ARENA 1.5.4; Elhage et al. 2022, "Toy Models of
Superposition").

The toy model compresses n sparse features x ∈ [0, 1]^n into m < n hidden dimensions and reads them back out:

    h = W x,        x' = ReLU(Wᵀ h + b) = ReLU(Wᵀ W x + b),        W ∈ R^{m × n}, b ∈ R^n.

Feature i is zero with probability S (the sparsity) and uniform on [0, 1] otherwise (density p = 1 - S), and
the loss weights each feature's squared error by its importance I_i:

    L = E_x [ Σ_i I_i (x_i - x'_i)² ]     (ARENA: the mean over batch and features, summed over instances).

Many models ("instances") train at once: every weight carries a leading instance axis, and each instance has
its own feature probability and importance, so a sweep over densities is a single batched training run.

The n = 2, m = 1 phase diagram (feature 1 of importance 1, feature 2 of importance r, both of density p) is
decided by three candidate solutions whose expected losses have closed forms (derived in the post):

    W = [1, 0]:   feature 2 is left to its bias, b₂ = E[x₂] = p/2:       L = r · V(p),  V(p) = p/3 - p²/4
    W = [0, 1]:   the same with the roles swapped:                       L = V(p)
    W = [1, -1]:  an antipodal pair with biases b ≥ 0 on both outputs:  L = (1 + r) · min_b E(b, p),
                  E(b, p) = (1-p) b² + p(1-p) b³/3 + p² (b³/3 + (1-b)³/3 - (1-b)⁴/6),
                  which at b = 0 is (1 + r) p²/6, so that superposition wins over [1, 0] below
                  p = 4r / (2 + 5r) (r ≤ 1) with zero bias, and higher still with the optimal bias.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

import einops
import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from checks.timing import single_thread

# ---------------------------------------------------------------- learning-rate schedules (ARENA's)


def linear_lr(step: int, steps: int) -> float:
    return 1 - (step / steps)


def constant_lr(*_) -> float:
    return 1.0


def cosine_decay_lr(step: int, steps: int) -> float:
    return float(np.cos(0.5 * np.pi * step / (steps - 1)))


# ---------------------------------------------------------------- the toy model


@dataclass
class ToyModelConfig:
    """ARENA's configuration: instances, features, hidden width and the correlation structure of the features
    (correlated pairs first, then anticorrelated pairs, then independent features)."""

    n_inst: int
    n_features: int = 5
    d_hidden: int = 2
    n_correlated_pairs: int = 0
    n_anticorrelated_pairs: int = 0
    feat_mag_distn: Literal["unif", "normal"] = "unif"


def _per_instance(value, n_inst: int, n_features: int) -> Tensor:
    """A float or a tensor broadcast to [inst, feats], as ARENA does: a 1-d tensor is per feature, [inst, 1] per
    instance."""
    return torch.as_tensor(value, dtype=torch.float32).broadcast_to((n_inst, n_features)).clone()


class ToyModel(nn.Module):
    """x' = ReLU(Wᵀ W x + b), one model per instance (W: [inst, d_hidden, feats], b_final: [inst, feats])."""

    W: Float[Tensor, "inst d_hidden feats"]
    b_final: Float[Tensor, "inst feats"]

    def __init__(self, cfg: ToyModelConfig, feature_probability: float | Tensor = 0.01,
                 importance: float | Tensor = 1.0, device: str = "cpu"):
        super().__init__()
        self.cfg = cfg
        self.feature_probability = _per_instance(feature_probability, cfg.n_inst, cfg.n_features).to(device)
        self.importance = _per_instance(importance, cfg.n_inst, cfg.n_features).to(device)
        self.W = nn.Parameter(nn.init.xavier_normal_(torch.empty((cfg.n_inst, cfg.d_hidden, cfg.n_features))))
        self.b_final = nn.Parameter(torch.zeros((cfg.n_inst, cfg.n_features)))
        self.to(device)

    def forward(self, features: Float[Tensor, "... inst feats"]) -> Float[Tensor, "... inst feats"]:
        h = einops.einsum(features, self.W, "... inst feats, inst hidden feats -> ... inst hidden")
        out = einops.einsum(h, self.W, "... inst hidden, inst hidden feats -> ... inst feats")
        return F.relu(out + self.b_final)

    # -- data

    def _magnitudes(self, shape: tuple[int, ...]) -> Tensor:
        device = self.W.device
        if self.cfg.feat_mag_distn == "unif":
            return torch.rand(shape, device=device)
        return torch.randn(shape, device=device).abs()  # ARENA's "normal": |N(0, 1)|

    def generate_correlated_features(self, batch_size: int, n_correlated_pairs: int) -> Float[Tensor, "batch inst feats"]:
        """Pairs that are present together or absent together (each pair present with feature 1's probability)."""
        feat_mag = self._magnitudes((batch_size, self.cfg.n_inst, 2 * n_correlated_pairs))
        feat_set_seeds = torch.rand((batch_size, self.cfg.n_inst, n_correlated_pairs), device=self.W.device)
        feat_set_is_present = feat_set_seeds <= self.feature_probability[:, [0]]
        feat_is_present = einops.repeat(feat_set_is_present, "batch inst pairs -> batch inst (pairs two)", two=2)
        return torch.where(feat_is_present, feat_mag, 0.0)

    def generate_anticorrelated_features(self, batch_size: int, n_anticorrelated_pairs: int
                                         ) -> Float[Tensor, "batch inst feats"]:
        """Pairs of which at most one is present: the pair is active with probability 2p, then one of its two
        features with probability ½ each, so each feature has density p and the two never co-occur."""
        n = n_anticorrelated_pairs
        feat_mag = self._magnitudes((batch_size, self.cfg.n_inst, 2 * n))
        feat_set_seeds = torch.rand((batch_size, self.cfg.n_inst, n), device=self.W.device)
        first_feat_seeds = torch.rand((batch_size, self.cfg.n_inst, n), device=self.W.device)
        feat_set_is_present = feat_set_seeds <= 2 * self.feature_probability[:, [0]]
        first_feat_is_present = first_feat_seeds <= 0.5
        first = torch.where(feat_set_is_present & first_feat_is_present, feat_mag[..., :n], 0.0)
        second = torch.where(feat_set_is_present & ~first_feat_is_present, feat_mag[..., n:], 0.0)
        return einops.rearrange(torch.stack([first, second], dim=-1), "batch inst pairs two -> batch inst (pairs two)")

    def generate_uncorrelated_features(self, batch_size: int, n_uncorrelated: int) -> Float[Tensor, "batch inst feats"]:
        """Independent features: each present with its own probability (the last n_uncorrelated columns)."""
        shape = (batch_size, self.cfg.n_inst, n_uncorrelated)
        feat_mag = self._magnitudes(shape)
        feat_seeds = torch.rand(shape, device=self.W.device)
        return torch.where(feat_seeds <= self.feature_probability[:, -n_uncorrelated:], feat_mag, 0.0)

    def generate_batch(self, batch_size: int) -> Float[Tensor, "batch inst feats"]:
        """A batch of features: correlated pairs, then anticorrelated pairs, then independent features."""
        n_corr, n_anti = self.cfg.n_correlated_pairs, self.cfg.n_anticorrelated_pairs
        n_uncorr = self.cfg.n_features - 2 * (n_corr + n_anti)
        parts = []
        if n_corr > 0:
            parts.append(self.generate_correlated_features(batch_size, n_corr))
        if n_anti > 0:
            parts.append(self.generate_anticorrelated_features(batch_size, n_anti))
        if n_uncorr > 0:
            parts.append(self.generate_uncorrelated_features(batch_size, n_uncorr))
        return torch.cat(parts, dim=-1)

    # -- loss and training

    def per_instance_loss(self, out: Float[Tensor, "batch inst feats"], batch: Float[Tensor, "batch inst feats"]
                          ) -> Float[Tensor, "inst"]:
        """mean over batch and features of I_i (x_i - x'_i)², one number per instance."""
        error = self.importance * (batch - out) ** 2
        return einops.reduce(error, "batch inst feats -> inst", "mean")

    def calculate_loss(self, out: Float[Tensor, "batch inst feats"], batch: Float[Tensor, "batch inst feats"]
                       ) -> Float[Tensor, ""]:
        """ARENA's loss: the per-instance importance-weighted MSE, summed over instances (the instances are
        independent models, so each gets its own gradient unchanged)."""
        return self.per_instance_loss(out, batch).sum()

    def optimize(self, batch_size: int = 1024, steps: int = 10_000, log_freq: int = 50, lr: float = 1e-3,
                 lr_scale: Callable[[int, int], float] = constant_lr) -> list[dict]:
        """Adam on fresh batches; returns the per-instance loss every log_freq steps and at the end."""
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        history = []
        for step in range(steps):
            step_lr = lr * lr_scale(step, steps)
            for group in optimizer.param_groups:
                group["lr"] = step_lr
            optimizer.zero_grad()
            batch = self.generate_batch(batch_size)
            out = self(batch)
            per_inst = self.per_instance_loss(out, batch)
            per_inst.sum().backward()
            optimizer.step()
            if step % log_freq == 0 or step + 1 == steps:
                history.append({"step": step, "loss": per_inst.detach().tolist()})
        return history

    @torch.no_grad()
    def evaluate(self, batch_size: int = 100_000) -> Float[Tensor, "inst"]:
        """Each instance's loss on a fresh batch (for picking the best of several seeds)."""
        batch = self.generate_batch(batch_size)
        return self.per_instance_loss(self(batch), batch)


class NeuronModel(ToyModel):
    """The toy model with a privileged basis: a ReLU on the hidden layer, x' = ReLU(Wᵀ ReLU(W x) + b)."""

    def forward(self, features: Float[Tensor, "... inst feats"]) -> Float[Tensor, "... inst feats"]:
        activations = F.relu(einops.einsum(features, self.W, "... inst feats, inst d_hidden feats -> ... inst d_hidden"))
        out = einops.einsum(activations, self.W, "... inst d_hidden, inst d_hidden feats -> ... inst feats")
        return F.relu(out + self.b_final)


class NeuronComputationModel(ToyModel):
    """A model that computes: x ∈ [-1, 1]^n (sparse), target |x|, with untied weights
    x' = ReLU(W₂ ReLU(W₁ x) + b)."""

    W1: Float[Tensor, "inst d_hidden feats"]
    W2: Float[Tensor, "inst feats d_hidden"]

    def __init__(self, cfg: ToyModelConfig, feature_probability: float | Tensor = 0.01,
                 importance: float | Tensor = 1.0, device: str = "cpu"):
        super().__init__(cfg, feature_probability, importance, device)
        del self.W
        self.W1 = nn.Parameter(nn.init.xavier_normal_(torch.empty((cfg.n_inst, cfg.d_hidden, cfg.n_features))))
        self.W2 = nn.Parameter(nn.init.xavier_normal_(torch.empty((cfg.n_inst, cfg.n_features, cfg.d_hidden))))
        self.to(device)

    def forward(self, features: Float[Tensor, "... inst feats"]) -> Float[Tensor, "... inst feats"]:
        activations = F.relu(einops.einsum(features, self.W1, "... inst feats, inst d_hidden feats -> ... inst d_hidden"))
        out = einops.einsum(activations, self.W2, "... inst d_hidden, inst feats d_hidden -> ... inst feats")
        return F.relu(out + self.b_final)

    def generate_batch(self, batch_size: int) -> Float[Tensor, "batch inst feats"]:
        """Independent features, zero with probability 1 - p and uniform on [-1, 1] otherwise."""
        shape = (batch_size, self.cfg.n_inst, self.cfg.n_features)
        feat_mag = 2 * torch.rand(shape, device=self.W1.device) - 1
        feat_seeds = torch.rand(shape, device=self.W1.device)
        return torch.where(feat_seeds < self.feature_probability, feat_mag, 0.0)

    def per_instance_loss(self, out, batch):
        """mean over batch and features of I_i (|x_i| - x'_i)²."""
        error = self.importance * (batch.abs() - out) ** 2
        return einops.reduce(error, "batch inst feats -> inst", "mean")


def train_toy(model_cls: type[ToyModel], cfg: ToyModelConfig, feature_probability, importance=1.0, *,
              seed: int, steps: int, batch_size: int = 1024, lr: float = 1e-3,
              lr_scale: Callable[[int, int], float] = constant_lr, log_freq: int = 500) -> tuple[ToyModel, list[dict]]:
    """Build and train a model from a seed (initialisation and batches both come from torch's global generator)."""
    torch.manual_seed(seed)
    model = model_cls(cfg, feature_probability=feature_probability, importance=importance)
    history = model.optimize(batch_size=batch_size, steps=steps, lr=lr, lr_scale=lr_scale, log_freq=log_freq)
    return model, history


# ---------------------------------------------------------------- geometry of the learned features


def feature_norms(W: Float[Tensor, "inst d_hidden feats"]) -> Float[Tensor, "inst feats"]:
    """‖W_i‖ for each feature's hidden direction: ≈ 1 when the feature is represented, ≈ 0 when it is not."""
    return W.norm(dim=1)


def feature_cosines(W: Float[Tensor, "inst d_hidden feats"]) -> Float[Tensor, "inst feats feats"]:
    """cos(W_i, W_j) between the features' hidden directions."""
    Wn = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return einops.einsum(Wn, Wn, "inst h f1, inst h f2 -> inst f1 f2")


def polygon_angles(W: Float[Tensor, "d_hidden=2 feats"]) -> Float[Tensor, "feats"]:
    """The angles (degrees) between consecutive feature directions of one 2-d instance, going round the circle:
    a regular k-gon has all k equal to 360/k."""
    theta = torch.atan2(W[1], W[0]).sort().values
    gaps = torch.diff(torch.cat([theta, theta[:1] + 2 * math.pi]))
    return torch.rad2deg(gaps)


# ---------------------------------------------------------------- the n = 2, m = 1 phase diagram

PHASES = ("feature 1 only", "feature 2 only", "antipodal")


def unrepresented_loss(p: float) -> float:
    """V(p) = Var(x) for x = 0 w.p. 1-p, U[0, 1] w.p. p: E[x²] - E[x]² = p/3 - p²/4 (the error of the best
    constant, b = p/2, for a feature the model leaves out)."""
    return p / 3 - p ** 2 / 4


def antipodal_feature_loss(b: float, p: float) -> float:
    """E(b, p): one feature's expected squared error under W = [1, -1] with output bias b ∈ [0, 1]:
    x'₁ = ReLU(x₁ - x₂ + b). Cases: neither present (b²), only x₁ (b²), only x₂ (∫₀ᵇ (b-u)² du = b³/3),
    both (b³/3 + c³/3 - c⁴/6 with c = 1 - b; 1/6 at b = 0, E[min(x₁, x₂)²])."""
    s, c = 1 - p, 1 - b
    return s * s * b * b + s * p * b * b + s * p * b ** 3 / 3 + p * p * (b ** 3 / 3 + c ** 3 / 3 - c ** 4 / 6)


def optimal_antipodal_bias(p: float) -> tuple[float, float]:
    """(b*, E(b*, p)): the bias that minimises the antipodal pair's per-feature loss on [0, 1]."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda b: antipodal_feature_loss(b, p), bounds=(0.0, 1.0), method="bounded",
                          options={"xatol": 1e-10})
    at_zero = antipodal_feature_loss(0.0, p)
    return (float(res.x), float(res.fun)) if res.fun < at_zero else (0.0, at_zero)


def candidate_losses(r: float, p: float, optimal_bias: bool = True) -> dict[str, float]:
    """The expected loss of each candidate solution at relative importance r and density p."""
    e = optimal_antipodal_bias(p)[1] if optimal_bias else antipodal_feature_loss(0.0, p)
    v = unrepresented_loss(p)
    return {"feature 1 only": r * v, "feature 2 only": v, "antipodal": (1 + r) * e}


def analytic_phase(r: float, p: float, optimal_bias: bool = True) -> str:
    losses = candidate_losses(r, p, optimal_bias)
    return min(losses, key=losses.get)


def boundary_zero_bias(r: float) -> float:
    """The density below which W = [1, -1] (zero bias) beats the better single feature:
    (1 + r) p²/6 = min(r, 1) V(p)  ⇔  p = 4r/(2 + 5r) for r ≤ 1, 4/(5 + 2r) for r ≥ 1."""
    return 4 * r / (2 + 5 * r) if r <= 1 else 4 / (5 + 2 * r)


def analytic_boundary(r: float) -> float:
    """The density where the antipodal pair with its optimal bias ties with the better single feature."""
    from scipy.optimize import brentq

    gap = lambda p: (1 + r) * optimal_antipodal_bias(p)[1] - min(r, 1.0) * unrepresented_loss(p)  # noqa: E731
    return float(brentq(gap, 1e-4, 1.0 - 1e-9, xtol=1e-12))


def classify_phase(W: Float[Tensor, "inst 1 2"], threshold: float = 0.5) -> list[str]:
    """The phase of each trained n = 2, m = 1 instance from its weights: which features have |w_i| > threshold
    (both, with opposite signs: antipodal)."""
    w = W[:, 0, :]
    phases = []
    for w1, w2 in w.tolist():
        on1, on2 = abs(w1) > threshold, abs(w2) > threshold
        if on1 and on2:
            phases.append("antipodal" if w1 * w2 < 0 else "same direction")
        elif on1 or on2:
            phases.append("feature 1 only" if on1 else "feature 2 only")
        else:
            phases.append("none")
    return phases


@dataclass(frozen=True)
class PhaseSweep:
    """A grid of relative importances r and densities p (both log-spaced), n_seeds instances per cell (an even
    number: antithetic pairs of starts)."""

    n_r: int = 7
    n_p: int = 7
    r_range: tuple[float, float] = (0.1, 10.0)
    p_range: tuple[float, float] = (0.01, 1.0)
    n_seeds: int = 4
    steps: int = 600
    batch_size: int = 256
    lr: float = 1e-2
    seed: int = 0

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        rs = np.logspace(np.log10(self.r_range[0]), np.log10(self.r_range[1]), self.n_r)
        ps = np.logspace(np.log10(self.p_range[0]), np.log10(self.p_range[1]), self.n_p)
        return rs, ps


def train_phase_diagram(sweep: PhaseSweep) -> dict:
    """Train every (r, p, start) as one instance of a 2 → 1 ToyModel; per cell keep the start with the lowest loss on
    a fresh evaluation batch and classify its weights. Returns the grid, phases, the analytic phases and W.

    The starts come in antithetic pairs, (w₁, w₂) and (w₁, -w₂): a start whose two weights share a sign tends to a
    local minimum (feature 2 weakly in feature 1's direction, a negative bias cutting the interference), so every
    cell gets both relative signs instead of hoping that some random draw has them."""
    rs, ps = sweep.grid()
    rr, pp, _ = np.meshgrid(rs, ps, np.arange(sweep.n_seeds), indexing="ij")  # [r, p, seed]
    n_inst = rr.size
    importance = torch.stack([torch.ones(n_inst), torch.tensor(rr.ravel(), dtype=torch.float32)], dim=1)
    probability = torch.tensor(pp.ravel(), dtype=torch.float32)[:, None]
    cfg = ToyModelConfig(n_inst=n_inst, n_features=2, d_hidden=1)
    torch.manual_seed(sweep.seed)
    model = ToyModel(cfg, feature_probability=probability, importance=importance)
    with torch.no_grad():  # each instance drawn at one model's Xavier scale, √(2 / (m + n)), however many are batched
        model.W.normal_(0.0, math.sqrt(2 / (cfg.d_hidden + cfg.n_features)))
        W = model.W.view(sweep.n_r, sweep.n_p, sweep.n_seeds, 2)     # antithetic starts: (w₁, w₂) and (w₁, -w₂)
        W[:, :, 1::2] = W[:, :, 0::2] * torch.tensor([1.0, -1.0])
    model.optimize(batch_size=sweep.batch_size, steps=sweep.steps, lr=sweep.lr, lr_scale=linear_lr,
                   log_freq=sweep.steps)
    loss = model.evaluate(batch_size=8_000).reshape(sweep.n_r, sweep.n_p, sweep.n_seeds)
    best = loss.argmin(-1)                                                  # [r, p]
    W = model.W.detach().reshape(sweep.n_r, sweep.n_p, sweep.n_seeds, 1, 2)
    b = model.b_final.detach().reshape(sweep.n_r, sweep.n_p, sweep.n_seeds, 2)
    W_best = W.gather(2, best[:, :, None, None, None].expand(-1, -1, 1, 1, 2))[:, :, 0]   # [r, p, 1, 2]
    b_best = b.gather(2, best[:, :, None, None].expand(-1, -1, 1, 2))[:, :, 0]
    empirical = np.array(classify_phase(W_best.reshape(-1, 1, 2))).reshape(sweep.n_r, sweep.n_p)
    analytic = np.array([[analytic_phase(r, p) for p in ps] for r in rs])
    gaps = np.array([[_relative_gap(candidate_losses(r, p)) for p in ps] for r in rs])
    return {"rs": rs, "ps": ps, "empirical": empirical, "analytic": analytic, "relative_gap": gaps,
            "W": W_best, "b": b_best, "loss": loss.gather(-1, best[..., None])[..., 0]}


def _relative_gap(losses: dict[str, float]) -> float:
    """How decided a cell is: (second-best loss - best loss) / best loss among the candidates."""
    a, b = sorted(losses.values())[:2]
    return (b - a) / a


# ---------------------------------------------------------------- the experiment


def _plot_features_in_2d(ax, W: Tensor, colors, title: str) -> None:
    """Each feature's hidden direction W_i as a line from the origin (ARENA's plot_features_in_2d, one panel)."""
    for i in range(W.shape[1]):
        ax.plot([0, W[0, i]], [0, W[1, i]], color=colors[i], lw=1.5)
        ax.scatter([W[0, i]], [W[1, i]], color=colors[i], s=14, zorder=3)
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.5, 1.5)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)


SUPERPOSITION_STEPS = 5_000
FAST_LR = dict(lr=1e-2, lr_scale=linear_lr)   # Adam at 1e-2 decayed linearly to 0: converged in a few thousand steps
PENTAGON = dict(n_inst=8, p=0.02, steps=4_000, seed=1)


def run_experiment(out_dir: Path, fast: bool = False) -> dict:
    """The 5 → 2 pictures over densities, the pentagon, correlated and anticorrelated pairs, neurons, the
    computation model and the n = 2, m = 1 phase diagram against its analytic boundary."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    results: dict = {}
    with single_thread():
        # 1. five features in two dimensions, importance 0.9^i, densities from 1 to 1/50 (ARENA's picture)
        cfg = ToyModelConfig(n_inst=8, n_features=5, d_hidden=2)
        probs = 50 ** -torch.linspace(0, 1, cfg.n_inst)
        importance = 0.9 ** torch.arange(cfg.n_features)
        model, _ = train_toy(ToyModel, cfg, probs[:, None], importance, seed=0, steps=SUPERPOSITION_STEPS, **FAST_LR)
        W = model.W.detach()
        norms = feature_norms(W)
        cmap = plt.get_cmap("viridis")
        colors = [cmap(0.9 * i / (cfg.n_features - 1)) for i in range(cfg.n_features)]
        fig, axes = plt.subplots(1, cfg.n_inst, figsize=(2 * cfg.n_inst, 2.3), constrained_layout=True)
        for k, ax in enumerate(axes):
            _plot_features_in_2d(ax, W[k], colors, f"1 - S = {probs[k]:.3f}")
        fig.suptitle("Five features in two dimensions (colour: importance 0.9^i, dark = most important)", fontsize=9)
        fig.savefig(out_dir / "figures/features_2d.png", dpi=110)
        plt.close(fig)
        results["five_to_two"] = {
            "feature_probability": probs.tolist(), "importance": importance.tolist(),
            "n_represented": (norms > 0.5).sum(-1).tolist(), "norms": norms.tolist(),
            "final_loss": model.evaluate().tolist()}

        # 2. the pentagon: uniform importance at low density
        pcfg = ToyModelConfig(n_inst=PENTAGON["n_inst"], n_features=5, d_hidden=2)
        pent, _ = train_toy(ToyModel, pcfg, PENTAGON["p"], 1.0, seed=PENTAGON["seed"], steps=PENTAGON["steps"], **FAST_LR)
        angles = torch.stack([polygon_angles(w) for w in pent.W.detach()])
        pent_loss = pent.evaluate()
        best = int(pent_loss.argmin())
        results["pentagon"] = {**PENTAGON, "angles": angles.tolist(), "loss": pent_loss.tolist(), "best": best,
                               "best_max_abs_angle_error": (angles[best] - 72).abs().max().item(),
                               "n_pentagons": int(((angles - 72).abs().max(-1).values <= 4).sum()),
                               "norms": feature_norms(pent.W.detach()).tolist()}
        fig, axes = plt.subplots(1, pcfg.n_inst, figsize=(2 * pcfg.n_inst, 2.3), constrained_layout=True)
        for k, ax in enumerate(axes):
            _plot_features_in_2d(ax, pent.W.detach()[k], [cmap(0.2)] * 5,
                                 f"seed {k}: max |angle − 72°| = {(angles[k] - 72).abs().max():.1f}°")
        fig.suptitle(f"Five equally important features at density {PENTAGON['p']}: {PENTAGON['n_inst']} instances",
                     fontsize=9)
        fig.savefig(out_dir / "figures/pentagon.png", dpi=110)
        plt.close(fig)

        # 3. correlated and anticorrelated pairs (ARENA's setup: one of each, four features in two dimensions)
        ccfg = ToyModelConfig(n_inst=16, n_features=4, d_hidden=2, n_correlated_pairs=1, n_anticorrelated_pairs=1)
        cprobs = 10 ** -torch.linspace(0.5, 1, ccfg.n_inst)
        corr, _ = train_toy(ToyModel, ccfg, cprobs[:, None], 1.0, seed=0, steps=SUPERPOSITION_STEPS, **FAST_LR)
        cos = feature_cosines(corr.W.detach())
        fig, axes = plt.subplots(2, 8, figsize=(16, 4.4), constrained_layout=True)
        ccolors = ["C0", "C0", "C3", "C3"]
        for k, ax in enumerate(axes.flat):
            _plot_features_in_2d(ax, corr.W.detach()[k], ccolors, f"1 - S = {cprobs[k]:.3f}")
        fig.suptitle("Blue: a correlated pair; red: an anticorrelated pair", fontsize=9)
        fig.savefig(out_dir / "figures/correlated.png", dpi=110)
        plt.close(fig)
        results["correlated"] = {"feature_probability": cprobs.tolist(),
                                 "cos_correlated": cos[:, 0, 1].tolist(), "cos_anticorrelated": cos[:, 2, 3].tolist(),
                                 "norms": feature_norms(corr.W.detach()).tolist()}

        # 4. neurons: a privileged basis, ten features in five neurons
        ncfg = ToyModelConfig(n_inst=7, n_features=10, d_hidden=5)
        nprobs = torch.tensor([0.75, 0.35, 0.15, 0.1, 0.06, 0.02, 0.01])
        neur, _ = train_toy(NeuronModel, ncfg, nprobs[:, None], 0.75 ** torch.arange(10), seed=0,
                            steps=SUPERPOSITION_STEPS, **FAST_LR)
        Wn = neur.W.detach()
        results["neurons"] = {"feature_probability": nprobs.tolist(), **neuron_polysemanticity(Wn)}
        fig, axes = plt.subplots(1, ncfg.n_inst, figsize=(2.3 * ncfg.n_inst, 2.6), constrained_layout=True)
        for k, ax in enumerate(axes):
            ax.imshow(Wn[k].numpy(), cmap="RdBu", vmin=-1.5, vmax=1.5)
            ax.set_title(f"1 - S = {nprobs[k]:.2f}", fontsize=8)
            ax.set_xlabel("feature", fontsize=7)
            ax.set_ylabel("neuron", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("NeuronModel weights W (neurons × features): monosemantic when dense, polysemantic when sparse",
                     fontsize=9)
        fig.savefig(out_dir / "figures/neurons.png", dpi=110)
        plt.close(fig)

        # 5. computation in superposition: |x| for 100 features through 40 neurons (ARENA's setup)
        kcfg = ToyModelConfig(n_inst=7, n_features=100, d_hidden=40)
        kprobs = torch.tensor([1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001])
        comp, _ = train_toy(NeuronComputationModel, kcfg, kprobs[:, None], 0.8 ** torch.arange(100), seed=0,
                            steps=1_000 if fast else SUPERPOSITION_STEPS, **FAST_LR)
        W1 = comp.W1.detach()
        results["computation"] = {"feature_probability": kprobs.tolist(), **computation_summary(W1),
                                  "final_loss": comp.evaluate(batch_size=10_000).tolist()}
        fig, axes = plt.subplots(1, kcfg.n_inst, figsize=(2.4 * kcfg.n_inst, 3.4), constrained_layout=True)
        for k, ax in enumerate(axes):
            order = W1[k].abs().argmax(-1).argsort()                      # neurons sorted by their main feature
            ax.imshow(W1[k][order][:, :30].numpy(), cmap="RdBu", vmin=-1.5, vmax=1.5, aspect="auto")
            ax.set_title(f"1 - S = {kprobs[k]:g}", fontsize=8)
            ax.set_xlabel("feature (30 most important)", fontsize=7)
            ax.set_yticks([])
        axes[0].set_ylabel("neuron (sorted)", fontsize=7)
        fig.suptitle("NeuronComputationModel W₁ for |x|: two opposite-signed neurons per feature when dense",
                     fontsize=9)
        fig.savefig(out_dir / "figures/computation.png", dpi=110)
        plt.close(fig)

        # 6. the n = 2, m = 1 phase diagram
        sweep = PhaseSweep() if fast else PhaseSweep(n_r=21, n_p=21, n_seeds=4, steps=2_000)
        diagram = train_phase_diagram(sweep)
        results["phase_diagram"] = phase_summary(diagram) | {"sweep": asdict(sweep)}
        _plot_phase_diagram(diagram, out_dir / "figures/phase_diagram.png")

    results["wall_seconds"] = time.perf_counter() - wall0
    results["cpu_seconds"] = time.process_time() - cpu0
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def neuron_polysemanticity(W: Float[Tensor, "inst d_hidden feats"], threshold: float = 0.5) -> dict:
    """Per instance: how many features each neuron fires for, a positive weight above threshold (a negative weight
    only suppresses it; a neuron firing for ≥ 2 features is polysemantic), and how many features have a hidden
    direction of norm above threshold (are represented at all)."""
    fires = W > threshold                                       # [inst, neuron, feat]
    per_neuron = fires.sum(-1)
    return {"features_per_neuron": per_neuron.tolist(),
            "n_polysemantic_neurons": (per_neuron >= 2).sum(-1).tolist(),
            "n_features_represented": (W.norm(dim=1) > threshold).sum(-1).tolist()}


def computation_summary(W1: Float[Tensor, "inst d_hidden feats"], threshold: float = 0.5) -> dict:
    """For |x| = ReLU(x) + ReLU(-x): the features that own a positive and a negative neuron (a neuron 'owns' its
    largest-|weight| feature if that weight exceeds threshold), per instance."""
    owned = W1.abs().argmax(-1)                                  # [inst, neuron]
    top = W1.abs().max(-1).values > threshold
    sign = torch.sign(W1.gather(-1, owned[..., None])[..., 0])
    both, per_inst_poly = [], []
    for k in range(W1.shape[0]):
        pos = set(owned[k][top[k] & (sign[k] > 0)].tolist())
        neg = set(owned[k][top[k] & (sign[k] < 0)].tolist())
        both.append(len(pos & neg))
        per_inst_poly.append(int(((W1[k].abs() > threshold).sum(-1) >= 2).sum()))
    return {"n_features_with_both_signs": both, "n_polysemantic_neurons": per_inst_poly}


def phase_summary(diagram: dict, min_gap: float = 0.25) -> dict:
    """Agreement of empirical and analytic phases, over all cells and over the decided ones (candidate losses
    apart by ≥ min_gap relative)."""
    agree = diagram["empirical"] == diagram["analytic"]
    decided = diagram["relative_gap"] >= min_gap
    return {"rs": diagram["rs"].tolist(), "ps": diagram["ps"].tolist(),
            "empirical": diagram["empirical"].tolist(), "analytic": diagram["analytic"].tolist(),
            "agreement_all": float(agree.mean()), "n_cells": int(agree.size),
            "n_decided": int(decided.sum()), "agreement_decided": float(agree[decided].mean()),
            "min_gap": min_gap,
            "boundary_zero_bias_r1": boundary_zero_bias(1.0), "boundary_r1": analytic_boundary(1.0),
            "optimal_bias_at_boundary_r1": optimal_antipodal_bias(analytic_boundary(1.0))[0]}


def _plot_phase_diagram(diagram: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    rs, ps = diagram["rs"], diagram["ps"]
    code = {"feature 1 only": 0, "feature 2 only": 1, "antipodal": 2, "same direction": 3, "none": 3}
    emp = np.vectorize(code.get)(diagram["empirical"]).T
    ana = np.vectorize(code.get)(diagram["analytic"]).T
    cmap = ListedColormap(["#4c72b0", "#dd8452", "#55a868", "#999999"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3), constrained_layout=True)
    rf = np.logspace(np.log10(rs[0]), np.log10(rs[-1]), 200)
    for ax, grid, title in ((axes[0], ana, "analytic (candidates' expected losses)"),
                            (axes[1], emp, "trained (best of the seeds per cell)")):
        ax.pcolormesh(_edges(rs), _edges(ps), grid, cmap=cmap, vmin=0, vmax=3)
        ax.plot(rf, [analytic_boundary(r) for r in rf], "k-", lw=1.2, label="boundary, optimal bias")
        ax.plot(rf, [boundary_zero_bias(r) for r in rf], "k--", lw=1.0, label="boundary, zero bias: 4r/(2+5r)")
        ax.axvline(1.0, color="k", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("relative importance r of feature 2")
        ax.set_ylabel("feature density 1 - S")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7, loc="lower right")
    from matplotlib.patches import Patch
    axes[1].legend(handles=[Patch(color=cmap(i), label=l) for i, l in
                            enumerate(["W = [1, 0]", "W = [0, 1]", "W = [1, -1] (superposition)", "other"])],
                   fontsize=7, loc="lower right")
    fig.suptitle("Two features, one dimension: where superposition wins", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges for a log-spaced grid of centres."""
    logc = np.log10(centers)
    step = logc[1] - logc[0]
    return 10 ** np.concatenate([logc - step / 2, logc[-1:] + step / 2])
