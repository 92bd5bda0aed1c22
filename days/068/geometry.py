"""Day 68: the geometry of superposition (ARENA 1.5.4; Elhage et al. 2022, § "The geometry of superposition";
Henighan et al. 2023, "Superposition, Memorization, and Double Descent").

Feature dimensionality. For feature i with hidden direction W_i (a column of W ∈ R^{m × n}),

    D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)²,          Ŵ_i = W_i / ‖W_i‖,

the share of a dimension the feature gets: 1 for a feature alone in its direction, 1/2 for each of an antipodal
pair, 2/k for each vertex of a regular k-gon (Σ_j cos²(2πj/k) = k/2), 3/4 for a tetrahedron's vertex. The
dimensionalities sum to at most m, and the model's overall "dimensions per feature" is m / ‖W‖²_F.

Double descent (Henighan et al.): the same toy model trained to convergence on a *fixed* dataset of T sparse
examples. With few examples it memorises them: the hidden vectors h_t = W x_t of the training examples form a
polygon, the features do not. With many it learns features, in superposition. In between, the test loss peaks.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import einops
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from checks.timing import single_thread

sp = importlib.import_module("days.067.superposition")
ToyModel, ToyModelConfig, train_toy = sp.ToyModel, sp.ToyModelConfig, sp.train_toy


def compute_dimensionality(W: Float[Tensor, "inst d_hidden feats"]) -> Float[Tensor, "inst feats"]:
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)² for every feature of every instance (ARENA's: a feature of zero norm gets
    numerator 0, so D = 0, the 1e-8 keeping the division defined)."""
    W_norms = W.norm(dim=1, keepdim=True)                                  # [inst, 1, feats]
    numerator = W_norms[:, 0, :] ** 2
    W_normalized = W / (W_norms + 1e-8)
    denominator = einops.einsum(W_normalized, W, "i h f1, i h f2 -> i f1 f2").pow(2).sum(-1)
    return numerator / denominator


def dimensions_per_feature(W: Float[Tensor, "inst d_hidden feats"]) -> Float[Tensor, "inst"]:
    """m / ‖W‖²_F: how many hidden dimensions the model spends per (effectively) learned feature."""
    return W.shape[1] / W.pow(2).sum((1, 2))


# The fractions the paper names, with the configuration that gives them.
STICKY = {Fraction(1, 1): "a feature alone", Fraction(3, 4): "tetrahedron", Fraction(2, 3): "triangle",
          Fraction(1, 2): "antipodal pair (digon)", Fraction(2, 5): "pentagon", Fraction(3, 8): "square antiprism",
          Fraction(1, 3): "hexagon"}


def regular_polygon(k: int, phase: float = 0.0) -> Float[Tensor, "2 k"]:
    """k unit vectors at angles phase + 2πj/k (a regular k-gon; k = 2 is an antipodal pair)."""
    theta = phase + 2 * torch.pi * torch.arange(k, dtype=torch.float64) / k
    return torch.stack([theta.cos(), theta.sin()])


def tetrahedron() -> Float[Tensor, "3 4"]:
    """The four vertices of a regular tetrahedron on the unit sphere."""
    v = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64).T
    return v / 3 ** 0.5


def nearest_fraction(d: float, fractions=tuple(STICKY)) -> tuple[Fraction, float]:
    """The named fraction nearest to a dimensionality, and the distance to it."""
    best = min(fractions, key=lambda f: abs(float(f) - d))
    return best, abs(float(best) - d)


def sticky_shares(D: Tensor, tol: float = 0.03, min_norm_mask: Tensor | None = None) -> dict[str, float]:
    """The share of (learned) features whose dimensionality lies within tol of each named fraction."""
    d = D.flatten() if min_norm_mask is None else D[min_norm_mask]
    return {str(f): float(((d - float(f)).abs() <= tol).float().mean()) for f in STICKY}


# ---------------------------------------------------------------- the feature-geometry run (ARENA's)


@dataclass(frozen=True)
class GeometryRun:
    """ARENA's run is 200 features in 20 dimensions at 20 densities, batch 1,024: about 0.15 s a step on one CPU
    thread. Ours keeps its ratio of features to dimensions at half the size, 12 densities and batch 512 (13× less
    work a step)."""

    n_features: int = 100
    d_hidden: int = 10
    n_inst: int = 12
    p_min_exponent: float = 1.0       # densities 20^-linspace(0, exponent, n_inst)
    steps: int = 3_000
    batch_size: int = 512
    lr: float = 1e-2                  # decayed linearly to 0 (day 67's FAST_LR)
    seed: int = 0

    def probabilities(self) -> Tensor:
        return 20 ** -torch.linspace(0, self.p_min_exponent, self.n_inst)


def train_geometry(run: GeometryRun) -> ToyModel:
    cfg = ToyModelConfig(n_inst=run.n_inst, n_features=run.n_features, d_hidden=run.d_hidden)
    model, _ = train_toy(ToyModel, cfg, run.probabilities()[:, None], 1.0, seed=run.seed, steps=run.steps,
                         batch_size=run.batch_size, lr=run.lr, lr_scale=sp.linear_lr, log_freq=run.steps)
    return model


# ---------------------------------------------------------------- double descent (Henighan et al. 2023)


def generate_dataset(n_examples: int, n_inst: int, n_features: int, feature_probability: float,
                     seed: int) -> Float[Tensor, "examples inst feats"]:
    """A fixed training set: each instance its own T sparse examples, features U[0, 1] with probability p, and every
    example normalised to unit norm (Henighan et al.; an all-zero example stays zero)."""
    g = torch.Generator().manual_seed(seed)
    shape = (n_examples, n_inst, n_features)
    x = torch.where(torch.rand(shape, generator=g) <= feature_probability, torch.rand(shape, generator=g), 0.0)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def warmup_cosine_lr(warmup: int):
    """Linear warm-up over `warmup` steps, then cosine decay to 0 (Henighan et al.'s schedule)."""
    def scale(step: int, steps: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, steps - warmup)))
    return scale


@dataclass(frozen=True)
class DoubleDescentRun:
    """Henighan et al. use 10,000 features at sparsity 0.999 and ARENA's bonus 1,000 features at 0.99 with 50,000
    updates per size; ours, 100 features at 0.98 (two present per example on average) and 4,000 full-batch updates,
    fits one CPU thread."""

    n_features: int = 100
    d_hidden: int = 2
    sparsity: float = 0.98
    dataset_sizes: tuple[int, ...] = (3, 5, 8, 12, 20, 30, 50, 80, 120, 200, 300, 500)
    n_inst: int = 4
    steps: int = 4_000
    warmup: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-2
    test_size: int = 5_000
    seed: int = 0


def train_on_dataset(data: Float[Tensor, "examples inst feats"], run: DoubleDescentRun, seed: int) -> ToyModel:
    """Full-batch AdamW on a fixed dataset (every step sees all T examples)."""
    torch.manual_seed(seed)
    cfg = ToyModelConfig(n_inst=data.shape[1], n_features=data.shape[2], d_hidden=run.d_hidden)
    model = ToyModel(cfg, feature_probability=1 - run.sparsity, importance=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=run.weight_decay)
    schedule = warmup_cosine_lr(run.warmup)
    for step in range(run.steps):
        for group in opt.param_groups:
            group["lr"] = run.lr * schedule(step, run.steps)
        opt.zero_grad()
        model.calculate_loss(model(data), data).backward()
        opt.step()
    return model


@torch.no_grad()
def held_out_loss(model: ToyModel, data: Float[Tensor, "examples inst feats"]) -> Float[Tensor, "inst"]:
    """Per-instance loss on held-out data of the same distribution."""
    return model.per_instance_loss(model(data), data)


@torch.no_grad()
def hidden_dimensionalities(model: ToyModel, data: Float[Tensor, "examples inst feats"]) -> dict[str, Tensor]:
    """Henighan et al.'s two measures, per item: the dimensionality of every feature (the columns of W,
    [inst, feats]) and of every training example (its hidden vector h_t = W x_t, a column of an [inst, d_hidden, T]
    matrix: [inst, T]). A memorising model gives its examples large dimensionalities (a polygon of examples) and its
    features small ones; a generalising model the reverse."""
    H = einops.einsum(model.W, data, "inst h feats, ex inst feats -> inst h ex")
    return {"features": compute_dimensionality(model.W), "data": compute_dimensionality(H)}


def run_double_descent(run: DoubleDescentRun) -> dict:
    test = generate_dataset(run.test_size, run.n_inst, run.n_features, 1 - run.sparsity, seed=run.seed + 10_000)
    rows = []
    for k, T in enumerate(run.dataset_sizes):
        data = generate_dataset(T, run.n_inst, run.n_features, 1 - run.sparsity, seed=run.seed + k)
        t0 = time.perf_counter()
        model = train_on_dataset(data, run, seed=run.seed + k)
        dims = {k: v.nan_to_num(0.0) for k, v in hidden_dimensionalities(model, data).items()}  # an empty example: 0/0
        rows.append({"T": T, "train_loss": held_out_loss(model, data).tolist(),
                     "test_loss": held_out_loss(model, test).tolist(),
                     "feature_dimensionality_max": dims["features"].max(-1).values.tolist(),
                     "feature_dimensionality_sum": dims["features"].sum(-1).tolist(),
                     "data_dimensionality_max": dims["data"].max(-1).values.tolist(),
                     "data_dimensionality_sum": dims["data"].sum(-1).tolist(),
                     "seconds": time.perf_counter() - t0})
    return {"run": asdict(run), "rows": rows}


# ---------------------------------------------------------------- the experiment


def run_experiment(out_dir: Path, fast: bool = False) -> dict:
    """ARENA's feature-geometry run (200 features, 20 dimensions, 20 densities) and the double-descent sweep."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    results: dict = {}
    with single_thread():
        geo = GeometryRun(steps=1_000) if fast else GeometryRun()
        t0 = time.perf_counter()
        model = train_geometry(geo)
        W = model.W.detach()
        D = compute_dimensionality(W)
        dpf = dimensions_per_feature(W)
        probs = geo.probabilities()
        learned = W.norm(dim=1) > 0.5
        results["geometry"] = {
            "run": asdict(geo), "train_seconds": time.perf_counter() - t0,
            "feature_probability": probs.tolist(), "dimensions_per_feature": dpf.tolist(),
            "n_learned": learned.sum(-1).tolist(),
            "sticky_shares": sticky_shares(D, min_norm_mask=learned),
            "sticky_shares_by_instance": [sticky_shares(D[k], min_norm_mask=learned[k]) for k in range(geo.n_inst)],
            "dimensionality_sum": D.sum(-1).tolist()}
        fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
        inv = 1 / probs
        for k in range(geo.n_inst):
            d = D[k][learned[k]]
            ax.scatter(np.full(d.numel(), inv[k].item()) * np.exp(np.random.default_rng(k).normal(0, 0.03, d.numel())),
                       d.numpy(), s=4, alpha=0.35, color="C0")
        ax.plot(inv.numpy(), dpf.numpy(), "k-", lw=1.5, label="m / ‖W‖²_F (dimensions per feature)")
        for f, name in STICKY.items():
            ax.axhline(float(f), color="grey", lw=0.5, ls=":")
            ax.text(inv.max().item() * 1.05, float(f), f"{f} {name}", fontsize=7, va="center")
        ax.set_xscale("log")
        ax.set_xlabel("1 / (1 − S)")
        ax.set_ylabel("dimensionality")
        ax.set_title(f"{geo.n_features} features in {geo.d_hidden} dimensions: per-feature dimensionality (dots: learned "
                     "features)", fontsize=9)
        ax.legend(fontsize=8, loc="upper left")
        fig.savefig(out_dir / "figures/feature_geometry.png", dpi=110)
        plt.close(fig)

        dd = DoubleDescentRun(dataset_sizes=(3, 10, 30, 100, 300), steps=1_000) if fast else DoubleDescentRun()
        results["double_descent"] = run_double_descent(dd)
        rows = results["double_descent"]["rows"]
        Ts = [r["T"] for r in rows]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
        test_l = np.array([r["test_loss"] for r in rows])
        train_l = np.array([r["train_loss"] for r in rows])
        axes[0].plot(Ts, test_l.mean(1), "o-", label="test (mean of seeds)")
        axes[0].plot(Ts, train_l.mean(1), "s--", label="train")
        axes[0].set_xscale("log")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("training set size T")
        axes[0].set_ylabel("loss")
        axes[0].legend(fontsize=8)
        axes[0].set_title("Double descent of the test loss", fontsize=9)
        fd = np.array([r["feature_dimensionality_max"] for r in rows]).mean(1)
        ddim = np.array([r["data_dimensionality_max"] for r in rows]).mean(1)
        axes[1].plot(Ts, fd, "o-", label="largest feature dimensionality")
        axes[1].plot(Ts, ddim, "s-", label="largest training-example dimensionality")
        axes[1].set_xscale("log")
        axes[1].set_xlabel("training set size T")
        axes[1].legend(fontsize=8)
        axes[1].set_title("What the hidden space stores: examples, then features", fontsize=9)
        fig.savefig(out_dir / "figures/double_descent.png", dpi=110)
        plt.close(fig)
        peak = int(test_l.mean(1).argmax())
        results["double_descent"]["summary"] = {
            "peak_T": Ts[peak], "peak_test_loss": float(test_l.mean(1)[peak]),
            "first_test_loss": float(test_l.mean(1)[0]), "last_test_loss": float(test_l.mean(1)[-1]),
            "min_test_loss_before_peak": float(test_l.mean(1)[:peak + 1].min())}

    results["wall_seconds"] = time.perf_counter() - wall0
    results["cpu_seconds"] = time.process_time() - cpu0
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
