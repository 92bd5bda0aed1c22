"""Weak-to-strong generalization (Burns et al. 2023) on toys trained here, where the ground truth is known.

The world. Each seed draws a hidden world: *concepts* $z \\in \\mathbb{R}^{K}$ and *nuisance* factors
$n \\in \\mathbb{R}^{M}$, both standard normal, seen only through a fixed random nonlinear mixture

$$x = W_2 \\tanh(W_1 [z; n] + b_1) + \\sigma \\varepsilon \\in \\mathbb{R}^{D},$$

and a task, the label $y = \\mathbb{1}[u \\cdot z > 0]$ for a random unit vector $u$ (drawn after the world, never
seen in pretraining). Ground truth is known for every example, so every accuracy below is exact.

The models.

- **Strong students** are *pretrained*: an MLP encoder $h(x) = \\mathrm{ReLU}(A x + a)$ of width $w$ learns to
  predict all $K$ concepts from $x$ (mean squared error) on unlabeled data, as a language model learns the concepts
  of its world without being told the task. Fine-tuning is a logistic head on the frozen, standardised features.
  The width is the student's size.
- **Weak supervisors** know the task but not the world: a small MLP trained *from scratch* on a few ground-truth
  labels (kind ``"scratch"``), or a narrow pretrained encoder with a logistic head (kind ``"pretrained"``, the
  same family as the students, as in Burns et al.).

The protocol (Burns et al.): split 1 trains the weak supervisor on ground truth; the supervisor labels split 2
(soft labels, its probabilities); the strong student is fine-tuned on those labels (naively with cross-entropy, with
the auxiliary confidence loss, or bootstrapped through the narrower students); the *strong ceiling* is the same
student fine-tuned on split 2's ground truth; everything is scored on a held-out test split. The performance gap
recovered,

$$\\mathrm{PGR} = \\frac{\\mathrm{acc}_{w2s} - \\mathrm{acc}_{weak}}{\\mathrm{acc}_{ceiling} - \\mathrm{acc}_{weak}},$$

is 0 when the student only imitates its supervisor and 1 when weak supervision is as good as ground truth.

Everything runs in float64 on one CPU thread: a training run is then a deterministic float program whose rounding
(~1e-16 relative per step) moves a test logit far less than the margins of all but a vanishing few test points,
which is what lets the gate compare committed accuracies almost exactly on another CPU (see the tests).
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from checks.timing import single_thread

DTYPE = torch.float64
validate = importlib.import_module("days.075.validate")          # bootstrap_ci: percentile bootstrap, seeded
inspect_setup = importlib.import_module("days.076.inspect_setup")  # proportion: k/n with its Wilson interval


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """Everything one run depends on (recorded in results.json)."""

    n_concepts: int = 8          # K: the latent concepts; the task is a direction among them
    n_nuisance: int = 16         # M: latent factors irrelevant to every task
    d_obs: int = 32              # D: the observation
    d_mix: int = 64              # hidden width of the world's mixing network
    obs_noise: float = 0.05
    n_pretrain: int = 4000       # unlabeled (concept-annotated) examples for the students' pretraining
    n_weak_train: int = 300      # split 1: ground truth for the weak supervisor
    n_student_train: int = 2000  # split 2: weak labels for the student, ground truth for the ceiling
    n_test: int = 2000
    pretrain_steps: int = 500
    pretrain_lr: float = 1e-2
    weak_steps: int = 500
    weak_lr: float = 1e-2
    head_steps: int = 300
    head_lr: float = 0.05
    aux_coef: float = 0.75       # Burns et al.'s alpha_max for the confidence loss
    warmup_frac: float = 0.2     # alpha rises linearly from 0 over this fraction of training
    student_widths: tuple[int, ...] = (8, 16, 32, 64, 128)
    weak_supervisors: tuple[tuple[str, int], ...] = (("scratch", 4), ("scratch", 32), ("pretrained", 2),
                                                      ("pretrained", 4))
    seeds: tuple[int, ...] = tuple(range(10))
    headline: tuple[str, int, int] = ("scratch", 32, 16)   # weak kind, weak width, student width
    n_boot: int = 2000


# ---------------------------------------------------------------------------------------------
# The world and its data
# ---------------------------------------------------------------------------------------------

@dataclass
class World:
    """A seeded hidden world: the mixing network and the task direction u (unit norm, in concept space)."""

    W1: Tensor
    b1: Tensor
    W2: Tensor
    u: Tensor
    obs_noise: float


def make_world(seed: int, cfg: Config = Config()) -> World:
    g = torch.Generator().manual_seed(seed)
    k = cfg.n_concepts + cfg.n_nuisance
    W1 = torch.randn(cfg.d_mix, k, generator=g, dtype=DTYPE) * (1.5 / k ** 0.5)
    b1 = torch.randn(cfg.d_mix, generator=g, dtype=DTYPE) * 0.5
    W2 = torch.randn(cfg.d_obs, cfg.d_mix, generator=g, dtype=DTYPE) / cfg.d_mix ** 0.5
    u = torch.randn(cfg.n_concepts, generator=g, dtype=DTYPE)
    return World(W1, b1, W2, u / u.norm(), cfg.obs_noise)


def sample(world: World, n: int, seed: int) -> tuple[Float[Tensor, "n d"], Float[Tensor, "n k"], Float[Tensor, " n"]]:
    """(x, z, y): observations, concepts and ground-truth labels y = 1[u . z > 0] (as 0./1.)."""
    g = torch.Generator().manual_seed(seed)
    K = world.u.shape[0]
    z = torch.randn(n, K, generator=g, dtype=DTYPE)
    nuisance = torch.randn(n, world.W1.shape[1] - K, generator=g, dtype=DTYPE)
    x = torch.tanh(torch.cat([z, nuisance], 1) @ world.W1.T + world.b1) @ world.W2.T
    x = x + world.obs_noise * torch.randn(n, world.W2.shape[0], generator=g, dtype=DTYPE)
    return x, z, (z @ world.u > 0).to(DTYPE)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

@dataclass
class Encoder:
    """h(x) = ReLU(A x + a): a pretrained model's representation (its concept readout is dropped after pretraining)."""

    A: Tensor
    a: Tensor
    pretrain_loss: float = float("nan")

    def features(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "n w"]:
        return torch.relu(x @ self.A.T + self.a)


def _init(shape, fan_in, g) -> Tensor:
    return (torch.randn(*shape, generator=g, dtype=DTYPE) / fan_in ** 0.5).requires_grad_()


def pretrain_encoder(x: Tensor, z: Tensor, width: int, seed: int, steps: int, lr: float) -> Encoder:
    """Full-batch Adam on the mean squared error of a linear readout of all concepts from h(x)."""
    g = torch.Generator().manual_seed(seed)
    A, B = _init((width, x.shape[1]), x.shape[1], g), _init((z.shape[1], width), width, g)
    a, b = torch.zeros(width, dtype=DTYPE, requires_grad=True), torch.zeros(z.shape[1], dtype=DTYPE, requires_grad=True)
    opt = torch.optim.Adam([A, a, B, b], lr=lr)
    for _ in range(steps):
        loss = ((torch.relu(x @ A.T + a) @ B.T + b - z) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Encoder(A.detach(), a.detach(), loss.item())


@dataclass
class Standardise:
    """Per-feature affine map fitted on one split, (f - mean) / (std + 1e-6), applied to all."""

    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, f: Tensor) -> "Standardise":
        return cls(f.mean(0), f.std(0) + 1e-6)

    def __call__(self, f: Tensor) -> Tensor:
        return (f - self.mean) / self.std


# ---------------------------------------------------------------------------------------------
# Losses (names as in openai/weak-to-strong's loss.py; one logit per example instead of two classes)
# ---------------------------------------------------------------------------------------------

def xent_loss(logits: Float[Tensor, " n"], labels: Float[Tensor, " n"], step_frac: float) -> Tensor:
    """Naive fine-tuning: cross-entropy against the (soft) labels, $-\\frac1N\\sum t\\log p + (1-t)\\log(1-p)$."""
    return F.binary_cross_entropy_with_logits(logits, labels)


def logconf_loss_fn(logits: Float[Tensor, " n"], labels: Float[Tensor, " n"], step_frac: float,
                    warmup_frac: float = 0.2, aux_coef: float = 0.75) -> Tensor:
    """Burns et al.'s auxiliary confidence loss,
    $L = (1-\\alpha)\\,\\mathrm{CE}(f(x), f_w(x)) + \\alpha\\,\\mathrm{CE}(f(x), \\hat f_t(x))$,
    with $\\hat f_t$ the student's own predictions hardened at a threshold $t$ chosen so that the fraction of
    positives equals the weak labels' mean (their ``torch.quantile`` of the predictions), treated as constants
    (no gradient through the hardening), and
    $\\alpha = \\alpha_{max} \\min(1, \\text{step\\_frac}/\\text{warmup\\_frac})$. Cross-entropy is linear in the
    target, so this is CE against the mixed target $(1-\\alpha) f_w + \\alpha \\hat f_t$."""
    coef = aux_coef * (1.0 if step_frac > warmup_frac else step_frac / warmup_frac)
    p1 = torch.sigmoid(logits).detach()
    threshold = torch.quantile(1 - p1, labels.mean())      # Burns: quantile of P(class 0) at the weak P(class 1)
    hardened = ((1 - p1) < threshold).to(logits.dtype)      # class 1 where P(class 0) is below it
    target = labels * (1 - coef) + hardened * coef
    return F.binary_cross_entropy_with_logits(logits, target)


LossFn = Callable[[Tensor, Tensor, float], Tensor]


@dataclass
class Head:
    """A logistic head on standardised features: logit = w . f + b."""

    w: Tensor
    b: Tensor
    losses: list[float] = field(default_factory=list)

    def logits(self, f: Tensor) -> Tensor:
        return f @ self.w + self.b


def train_head(f: Float[Tensor, "n w"], targets: Float[Tensor, " n"], loss_fn: LossFn, steps: int, lr: float) -> Head:
    """Full-batch Adam from zero; ``loss_fn(logits, targets, step_frac)`` with step_frac = step / steps."""
    w = torch.zeros(f.shape[1], dtype=DTYPE, requires_grad=True)
    b = torch.zeros((), dtype=DTYPE, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    losses = []
    for step in range(steps):
        loss = loss_fn(f @ w + b, targets, step / steps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return Head(w.detach(), b.detach(), losses)


@dataclass
class ScratchMLP:
    """A one-hidden-layer MLP on standardised raw observations, trained from scratch on labels."""

    A: Tensor
    a: Tensor
    B: Tensor
    b: Tensor
    standardise: Standardise

    def logits(self, x: Tensor) -> Tensor:
        return torch.relu(self.standardise(x) @ self.A.T + self.a) @ self.B + self.b


def train_scratch_mlp(x: Tensor, y: Tensor, width: int, seed: int, steps: int, lr: float) -> ScratchMLP:
    g = torch.Generator().manual_seed(seed)
    std = Standardise.fit(x)
    xs = std(x)
    A, B = _init((width, x.shape[1]), x.shape[1], g), _init((width,), width, g)
    a, b = torch.zeros(width, dtype=DTYPE, requires_grad=True), torch.zeros((), dtype=DTYPE, requires_grad=True)
    opt = torch.optim.Adam([A, a, B, b], lr=lr)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(torch.relu(xs @ A.T + a) @ B + b, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ScratchMLP(A.detach(), a.detach(), B.detach(), b.detach(), std)


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Fraction of examples where 1[logit > 0] equals the label."""
    return ((logits > 0).to(DTYPE) == y).to(DTYPE).mean().item()


# ---------------------------------------------------------------------------------------------
# PGR and its interval
# ---------------------------------------------------------------------------------------------

def pgr(weak: float, w2s: float, strong: float) -> float:
    """Performance gap recovered, (w2s - weak) / (strong - weak). Undefined when the ceiling equals the weak
    performance: raises ValueError rather than returning inf or nan."""
    gap = strong - weak
    if gap == 0:
        raise ValueError(f"PGR is undefined: the strong ceiling ({strong}) equals the weak performance ({weak})")
    return (w2s - weak) / gap


def pgr_of_means(weak, w2s, strong) -> float:
    """PGR of the mean accuracies over seeds (average first, then take the ratio: a mean of per-seed ratios would
    be dominated by seeds whose gap happens to be small)."""
    return pgr(float(np.mean(weak)), float(np.mean(w2s)), float(np.mean(strong)))


def pgr_with_ci(weak, w2s, strong, n_boot: int = 2000, seed: int = 0) -> dict:
    """PGR of means with a 95% percentile bootstrap interval over seeds (day 75's bootstrap_ci, resampling the
    seeds' (weak, w2s, strong) triples together), and the per-seed values."""
    weak, w2s, strong = (np.asarray(a, dtype=np.float64) for a in (weak, w2s, strong))
    return {"pgr": pgr_of_means(weak, w2s, strong),
            "ci95": validate.bootstrap_ci(pgr_of_means, weak, w2s, strong, n_boot=n_boot, seed=seed),
            "per_seed": [float(pgr(a, b, c)) for a, b, c in zip(weak, w2s, strong)]}


# ---------------------------------------------------------------------------------------------
# One seed: every weak supervisor against every student
# ---------------------------------------------------------------------------------------------

def run_seed(seed: int, cfg: Config = Config()) -> dict:
    """All accuracies of one world: weak supervisors, ceilings, naive and confidence-loss students."""
    world = make_world(seed, cfg)
    x_pre, z_pre, _ = sample(world, cfg.n_pretrain, 10_000 + seed)
    x1, _, y1 = sample(world, cfg.n_weak_train, 20_000 + seed)
    x2, _, y2 = sample(world, cfg.n_student_train, 30_000 + seed)
    xt, _, yt = sample(world, cfg.n_test, 40_000 + seed)
    widths = sorted(set(cfg.student_widths) | {w for k, w in cfg.weak_supervisors if k == "pretrained"})
    encoders = {w: pretrain_encoder(x_pre, z_pre, w, seed, cfg.pretrain_steps, cfg.pretrain_lr) for w in widths}

    def split_features(width):
        enc = encoders[width]
        return enc.features(x1), enc.features(x2), enc.features(xt)

    out: dict = {"seed": seed, "pretrain_loss": {str(w): encoders[w].pretrain_loss for w in widths},
                 "weak": {}, "students": {}}
    weak_logits, weak_test_pos = {}, {}
    for kind, width in cfg.weak_supervisors:
        name = f"{kind}{width}"
        if kind == "scratch":
            model = train_scratch_mlp(x1, y1, width, seed, cfg.weak_steps, cfg.weak_lr)
            l2, lt = model.logits(x2), model.logits(xt)
        else:
            f1, f2, ft = split_features(width)
            std = Standardise.fit(f1)
            head = train_head(std(f1), y1, xent_loss, cfg.head_steps, cfg.head_lr)
            l2, lt = head.logits(std(f2)), head.logits(std(ft))
        weak_logits[name] = l2
        weak_test_pos[name] = lt > 0
        hard = (l2 > 0).to(DTYPE)
        out["weak"][name] = {"test_acc": accuracy(lt, yt), "label_errors": int((hard != y2).sum().item()),
                             "n_labels": cfg.n_student_train, "label_mean": torch.sigmoid(l2).mean().item()}
    conf = lambda logits, t, s: logconf_loss_fn(logits, t, s, cfg.warmup_frac, cfg.aux_coef)  # noqa: E731
    student_features = {}
    for width in cfg.student_widths:
        _, f2, ft = split_features(width)
        std = Standardise.fit(f2)
        f2, ft = std(f2), std(ft)
        student_features[width] = f2, ft
        ceiling = train_head(f2, y2, xent_loss, cfg.head_steps, cfg.head_lr)
        row = {"ceiling": accuracy(ceiling.logits(ft), yt), "naive": {}, "conf": {}, "boot": {}, "agreement": {},
               "min_abs_test_logit": {}}
        margins = [ceiling.logits(ft).abs().min().item()]
        row["ceiling_agreement"] = {name: ((ceiling.logits(ft) > 0) == pos).to(DTYPE).mean().item()
                                    for name, pos in weak_test_pos.items()}
        for name, l2 in weak_logits.items():
            soft = torch.sigmoid(l2)
            for method, loss_fn in (("naive", xent_loss), ("conf", conf)):
                head = train_head(f2, soft, loss_fn, cfg.head_steps, cfg.head_lr)
                row[method][name] = accuracy(head.logits(ft), yt)
                if method == "naive":   # how much of its supervisor the student copies, on the test split
                    row["agreement"][name] = ((head.logits(ft) > 0) == weak_test_pos[name]).to(DTYPE).mean().item()
                margins.append(head.logits(ft).abs().min().item())
        row["min_abs_test_logit"] = min(margins)
        out["students"][str(width)] = row
    # Bootstrapping (Burns et al., "with intermediate model sizes"): the supervisor labels the narrowest student,
    # which labels the next width, and so on; each link is naive fine-tuning on the previous model's soft labels
    # of split 2.
    for name, l2 in weak_logits.items():
        labels = torch.sigmoid(l2)
        for width in sorted(cfg.student_widths):
            f2, ft = student_features[width]
            head = train_head(f2, labels, xent_loss, cfg.head_steps, cfg.head_lr)
            row = out["students"][str(width)]
            row["boot"][name] = accuracy(head.logits(ft), yt)
            row["min_abs_test_logit"] = min(row["min_abs_test_logit"], head.logits(ft).abs().min().item())
            labels = torch.sigmoid(head.logits(f2))
    return out


def summarise(runs: list[dict], cfg: Config) -> dict:
    """PGR of means with bootstrap CIs over seeds, for every (weak supervisor, student width, method)."""
    sweep = {}
    for kind, wwidth in cfg.weak_supervisors:
        name = f"{kind}{wwidth}"
        weak = [r["weak"][name]["test_acc"] for r in runs]
        sweep[name] = {"weak_acc": float(np.mean(weak)), "students": {}}
        for width in cfg.student_widths:
            s = str(width)
            ceil = [r["students"][s]["ceiling"] for r in runs]
            entry = {"ceiling_acc": float(np.mean(ceil)),
                     "naive_agreement_with_weak": float(np.mean([r["students"][s]["agreement"][name] for r in runs])),
                     "ceiling_agreement_with_weak": float(np.mean([r["students"][s]["ceiling_agreement"][name]
                                                                   for r in runs]))}
            for method in ("naive", "conf", "boot"):
                w2s = [r["students"][s][method][name] for r in runs]
                entry[method] = {"w2s_acc": float(np.mean(w2s)), **pgr_with_ci(weak, w2s, ceil, cfg.n_boot)}
            for method in ("conf", "boot"):   # paired over seeds: the same world, split and student
                diff = [r["students"][s][method][name] - r["students"][s]["naive"][name] for r in runs]
                entry[f"{method}_minus_naive_acc"] = {"mean": float(np.mean(diff)), "ci95": validate.bootstrap_ci(
                    np.mean, np.asarray(diff), n_boot=cfg.n_boot, seed=0)}
            sweep[name]["students"][s] = entry
    return sweep


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------

def run_experiment(out_dir: Path | str = Path(__file__).parent, config: Config | None = None) -> dict:
    """Every seed of the sweep, the summary with CIs, the headline pair, figures/pgr_sweep.png; writes
    results.json (with wall and CPU seconds)."""
    cfg = config or Config()
    out_dir = Path(out_dir)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with single_thread():
        runs = [run_seed(seed, cfg) for seed in cfg.seeds]
        sweep = summarise(runs, cfg)
    kind, wwidth, swidth = cfg.headline
    name, s = f"{kind}{wwidth}", str(swidth)
    head = sweep[name]["students"][s]
    errors = sum(r["weak"][name]["label_errors"] for r in runs)
    n_labels = sum(r["weak"][name]["n_labels"] for r in runs)
    results = {
        "config": {k: (list(map(list, v)) if k == "weak_supervisors" else list(v) if isinstance(v, tuple) else v)
                   for k, v in asdict(cfg).items()},
        "headline": {"weak": name, "student_width": swidth, "weak_acc": sweep[name]["weak_acc"],
                     "ceiling_acc": head["ceiling_acc"], "naive": head["naive"], "conf": head["conf"],
                     "conf_minus_naive_acc": head["conf_minus_naive_acc"],
                     "weak_label_error": inspect_setup.proportion(errors, n_labels)},
        "sweep": sweep,
        "runs": runs,
        "min_abs_test_logit": min(r["students"][w]["min_abs_test_logit"] for r in runs for w in r["students"]),
        "wall_seconds": time.perf_counter() - wall0,
        "cpu_seconds": time.process_time() - cpu0,
    }
    plot_sweep(results, out_dir / "figures" / "pgr_sweep.png")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


def plot_sweep(results: dict, path: Path) -> None:
    """Left: PGR (naive, confidence loss) against student width, one colour per weak supervisor, 95% bootstrap
    CIs. Middle: naive against bootstrapping through the narrower students. Right: the headline supervisor's
    accuracies (weak, students, ceiling) against student width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    sweep = results["sweep"]
    widths = results["config"]["student_widths"]
    fig, (ax, cx, bx) = plt.subplots(1, 3, figsize=(16, 5.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = {"naive": "naive", "conf": "aux. conf. loss", "boot": "bootstrapped"}
    for axis, methods in ((ax, (("naive", "-o", -0.03), ("conf", "--s", 0.03))),
                          (cx, (("naive", "-o", -0.03), ("boot", ":D", 0.03)))):
        for i, (name, entry) in enumerate(sweep.items()):
            for method, style, dx in methods:
                vals = [entry["students"][str(w)][method] for w in widths]
                y = np.array([v["pgr"] for v in vals])
                err = np.array([[v["pgr"] - v["ci95"][0], v["ci95"][1] - v["pgr"]] for v in vals]).T
                axis.errorbar(np.array(widths) * 2 ** dx, y, yerr=err, fmt=style, color=colours[i % len(colours)],
                              capsize=2, ms=4, label=f"{name}, {labels[method]}")
        axis.axhline(0, color="grey", lw=0.7)
        axis.axhline(1, color="grey", lw=0.7, ls=":")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("student width (pretrained encoder)")
        axis.set_ylabel("performance gap recovered")
        axis.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    ax.set_title("naive vs auxiliary confidence loss", fontsize=10)
    cx.set_title("naive vs bootstrapping through narrower students", fontsize=10)
    name = results["headline"]["weak"]
    entry = sweep[name]
    bx.plot(widths, [entry["students"][str(w)]["ceiling_acc"] for w in widths], "-^k", label="strong ceiling")
    for method in ("naive", "conf", "boot"):
        bx.plot(widths, [entry["students"][str(w)][method]["w2s_acc"] for w in widths], "-o",
                label=f"weak-to-strong, {labels[method]}")
    bx.axhline(entry["weak_acc"], color="red", ls="--", label=f"weak supervisor ({name})")
    bx.set_xscale("log", base=2)
    bx.set_xlabel("student width")
    bx.set_ylabel(f"test accuracy (mean of {len(results['runs'])} seeds)")
    bx.set_title(f"supervisor {name}", fontsize=10)
    bx.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
