"""Day 9: optimizers from scratch (ARENA 0.3 Optimization).

Every optimizer here updates parameters θ from their gradients g = ∇L(θ), with state kept per
parameter, and reproduces ``torch.optim``'s update rule (the same formulas, so the same numbers
up to floating-point rounding):

- SGD with L2 weight decay λ, momentum μ, dampening τ and optional Nesterov momentum:

      g ← g + λθ;   b ← g (first step), else b ← μb + (1 − τ)g;
      d ← g + μb (Nesterov) or d ← b (heavy ball);   θ ← θ − η d

- RMSprop: a running mean of squared gradients v ← αv + (1 − α)g² rescales each coordinate,
  θ ← θ − η g / (√v + ε); "centered" subtracts the squared running mean of g (a variance
  estimate), and momentum accumulates the rescaled step b ← μb + g / (√v + ε), θ ← θ − ηb.
- Adam: bias-corrected first and second moments

      m ← β₁m + (1 − β₁)g,   v ← β₂v + (1 − β₂)g²,   m̂ = m / (1 − β₁ᵗ),   v̂ = v / (1 − β₂ᵗ),
      θ ← θ − η m̂ / (√v̂ + ε)

  with L2 weight decay added to g (coupled), and AMSGrad's running maximum of v as an option.
- AdamW: the same moments, but weight decay decoupled from the gradient: θ ← θ(1 − ηλ) first.

Parameter groups work as in torch: ``params`` is a list of tensors, or a list of dicts each
with its own ``params`` and any hyper-parameters overriding the optimizer's defaults.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from jaxtyping import Float
from torch import Tensor

# ---------------------------------------------------------------- the base class


class Optimizer:
    """Parameter groups, per-parameter state, ``zero_grad`` and ``step``.

    Subclasses define ``defaults`` (their hyper-parameters) and ``_update(p, g, state, group)``,
    the rule for one parameter; ``step`` applies it to every parameter that has a gradient.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], defaults: dict[str, Any]):
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Tensor, dict[str, Any]] = {}
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict) -> None:
        """Add a group: its own hyper-parameters override the defaults; a parameter may be in one group only."""
        if "params" not in group:
            raise ValueError("a parameter group needs a 'params' entry")
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"unknown hyper-parameter(s) {sorted(unknown)}; known: {sorted(self.defaults)}")
        params = [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params) or len({id(p) for p in params}) < len(params):
            raise ValueError("some parameters appear in more than one parameter group")
        full = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}, "params": params}
        self._validate(full)
        self.param_groups.append(full)

    def _validate(self, group: dict) -> None:
        if group["lr"] < 0:
            raise ValueError(f"invalid learning rate {group['lr']}")
        if group.get("weight_decay", 0.0) < 0:
            raise ValueError(f"invalid weight_decay {group['weight_decay']}")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients (set to None, like torch's default, or to zero)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (parameters without one are skipped)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._update(p, p.grad, self.state.setdefault(p, {}), group)

    def _update(self, p: Tensor, g: Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------- the optimizers


class SGD(Optimizer):
    """Stochastic gradient descent with L2 weight decay, (Nesterov) momentum and dampening."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _validate(self, group: dict) -> None:
        super()._validate(group)
        if group["momentum"] < 0:
            raise ValueError(f"invalid momentum {group['momentum']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening")

    def _update(self, p, g, state, group):
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        mu = group["momentum"]
        if mu:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g.clone()  # the first step starts the buffer at g, undamped
            else:
                state["momentum_buffer"] = mu * state["momentum_buffer"] + (1 - group["dampening"]) * g
            b = state["momentum_buffer"]
            g = g + mu * b if group["nesterov"] else b
        p -= group["lr"] * g


class RMSprop(Optimizer):
    """RMSprop: divide each coordinate's gradient by the root of its running mean square."""

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered))

    def _update(self, p, g, state, group):
        alpha = group["alpha"]
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        if not state:
            state["square_avg"] = torch.zeros_like(p)
            if group["centered"]:
                state["grad_avg"] = torch.zeros_like(p)
            if group["momentum"]:
                state["momentum_buffer"] = torch.zeros_like(p)
        state["square_avg"] = alpha * state["square_avg"] + (1 - alpha) * g * g
        variance = state["square_avg"]
        if group["centered"]:  # E[g²] − E[g]²: the variance rather than the raw second moment
            state["grad_avg"] = alpha * state["grad_avg"] + (1 - alpha) * g
            variance = variance - state["grad_avg"] ** 2
        scaled = g / (variance.sqrt() + group["eps"])
        if group["momentum"]:
            state["momentum_buffer"] = group["momentum"] * state["momentum_buffer"] + scaled
            scaled = state["momentum_buffer"]
        p -= group["lr"] * scaled


class Adam(Optimizer):
    """Adam with bias correction; weight decay is L2 added to the gradient (coupled)."""

    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad))

    def _validate(self, group: dict) -> None:
        super()._validate(group)
        if not all(0 <= b < 1 for b in group["betas"]):
            raise ValueError(f"invalid betas {group['betas']}: each must be in [0, 1)")

    def _update(self, p, g, state, group):
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        if wd:
            if self.decoupled:
                p *= 1 - lr * wd       # AdamW: shrink θ directly, independent of the gradient's scale
            else:
                g = g + wd * p         # Adam: L2 regularisation, then rescaled like any gradient
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        state["exp_avg"] = beta1 * state["exp_avg"] + (1 - beta1) * g
        state["exp_avg_sq"] = beta2 * state["exp_avg_sq"] + (1 - beta2) * g * g
        second = state["exp_avg_sq"]
        if group["amsgrad"]:  # never let the denominator shrink: v_max ← max(v_max, v)
            state["max_exp_avg_sq"] = torch.maximum(state["max_exp_avg_sq"], second)
            second = state["max_exp_avg_sq"]
        m_hat = state["exp_avg"] / (1 - beta1**t)
        v_hat = second / (1 - beta2**t)
        p -= lr * m_hat / (v_hat.sqrt() + group["eps"])


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): θ ← θ(1 − ηλ), then the Adam step."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}


# ---------------------------------------------------------------- a pathological surface


def rosenbrock(xy: Float[Tensor, "... 2"], a: float = 1.0, b: float = 100.0) -> Float[Tensor, "..."]:
    """Rosenbrock's banana: f(x, y) = (a − x)² + b(y − x²)², minimum 0 at (a, a²).

    The valley floor y = x² is curved and flat along its length but steep across it (at the
    minimum the Hessian's eigenvalues are about 1002 and 0.4, condition number ≈ 2500), which is
    exactly the geometry that makes plain gradient descent crawl.
    """
    x, y = xy[..., 0], xy[..., 1]
    return (a - x) ** 2 + b * (y - x**2) ** 2


def rosenbrock_grad(xy: Float[Tensor, "... 2"], a: float = 1.0, b: float = 100.0) -> Float[Tensor, "... 2"]:
    """∇f = (−2(a − x) − 4bx(y − x²), 2b(y − x²))."""
    x, y = xy[..., 0], xy[..., 1]
    return torch.stack([-2 * (a - x) - 4 * b * x * (y - x**2), 2 * b * (y - x**2)], dim=-1)


def momentum_stability_limit(momentum: float, nesterov: bool = False) -> float:
    """The largest ηh for which SGD with momentum μ converges on a quadratic ½hθ².

    Heavy ball: θ_{t+1} = (1 + μ − ηh)θ_t − μθ_{t−1}, stable iff 0 < ηh < 2(1 + μ).
    Nesterov (torch's form, d = g + μb): the iteration matrix on (θ_t, b_{t−1}) has trace
    1 + μ − ηh(1 + μ) and determinant μ(1 − ηh); Jury's conditions give ηh < 2(1 + μ)/(1 + 2μ).
    With μ = 0.9 that is 3.8 against 1.36: Nesterov damps the flat directions better but
    tolerates less curvature.
    """
    return 2 * (1 + momentum) / (1 + 2 * momentum) if nesterov else 2 * (1 + momentum)


START = (-1.2, 1.0)   # the classic starting point (Rosenbrock 1960)
MINIMUM = (1.0, 1.0)


def optimize_path(make_optimizer: Callable[[list[Tensor]], Any], steps: int,
                  start: tuple[float, float] = START) -> tuple[Float[Tensor, "steps_plus_1 2"], Float[Tensor, "steps_plus_1"]]:
    """Run an optimizer on Rosenbrock from ``start`` (float64); return the path and the loss at each point.

    ``make_optimizer`` receives ``[xy]`` and returns an optimizer, ours or torch.optim's.
    ``path[0]`` is the start. A diverging run stops at the first step whose point has a
    coordinate of magnitude above 1e6 (or is not finite): that point is not recorded, no further
    step is taken, and the rest of the path repeats the last recorded point.
    """
    xy = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = make_optimizer([xy])
    path = torch.empty(steps + 1, 2, dtype=torch.float64)
    path[0] = xy.detach()
    for t in range(1, steps + 1):
        xy.grad = rosenbrock_grad(xy.detach())
        opt.step()
        if not torch.isfinite(xy).all() or xy.detach().abs().max() > 1e6:
            path[t:] = path[t - 1]
            break
        path[t] = xy.detach()
    return path, rosenbrock(path)


# The optimizers of the experiment: key -> (class name, fixed hyper-parameters).
CONTESTANTS: dict[str, tuple[str, dict]] = {
    "sgd": ("sgd", {}),
    "momentum": ("sgd", {"momentum": 0.9}),
    "nesterov": ("sgd", {"momentum": 0.9, "nesterov": True}),
    "rmsprop": ("rmsprop", {}),
    "adam": ("adam", {}),
}
LABELS = {"sgd": "SGD", "momentum": "SGD + momentum 0.9", "nesterov": "SGD + Nesterov 0.9",
          "rmsprop": "RMSprop", "adam": "Adam"}
LEARNING_RATES = [10.0**e for e in (-4, -3.5, -3, -2.5, -2, -1.5, -1, -0.5)]
STEPS = 2000


def contestant(name: str, lr: float) -> Callable[[list[Tensor]], Optimizer]:
    kind, hyper = CONTESTANTS[name]
    return lambda params: OPTIMIZERS[kind](params, lr=lr, **hyper)


def torch_contestant(name: str, lr: float) -> Callable[[list[Tensor]], torch.optim.Optimizer]:
    """The same contestant built from torch.optim (the reference)."""
    kind, hyper = CONTESTANTS[name]
    reference = {"sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam}[kind]
    return lambda params: reference(params, lr=lr, **hyper)


def tail_loss(losses: Tensor) -> float:
    """The mean loss over the last 10% of the steps: a score that an oscillating run cannot win by luck."""
    return losses[-max(1, len(losses) // 10):].mean().item()


def tune_learning_rates(steps: int = STEPS) -> dict[str, dict]:
    """For each contestant, the learning rate (from LEARNING_RATES) with the lowest tail loss."""
    table = {}
    for name in CONTESTANTS:
        scores = {lr: tail_loss(optimize_path(contestant(name, lr), steps)[1]) for lr in LEARNING_RATES}
        best = min(scores, key=scores.get)
        table[name] = {"lr": best, "tail_loss_by_lr": {f"{lr:.3g}": v for lr, v in scores.items()}}
    return table


def one_ulp_departure(name: str, lr: float, ref_path: Tensor) -> float:
    """How far torch.optim's own path departs from ``ref_path`` (its run from START) when started
    one float64 ulp away (x + 2⁻⁵², one ulp of 1.2): how much this run amplifies a rounding."""
    nudged, _ = optimize_path(torch_contestant(name, lr), len(ref_path) - 1, start=(START[0] + 2.0**-52, START[1]))
    return (nudged - ref_path).abs().max().item()


def steps_to_reach(losses: Tensor, threshold: float) -> int | None:
    below = (losses < threshold).nonzero()
    return int(below[0]) if len(below) else None


def run_experiment(out_dir: Path) -> dict:
    """Rosenbrock paths and loss curves of five optimizers at their best learning rates."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    tuned = tune_learning_rates()
    runs = {name: optimize_path(contestant(name, t["lr"]), STEPS) for name, t in tuned.items()}

    # Parity along the whole path: the same runs with torch.optim, and torch.optim against itself
    # started one float64 ulp away (how much this surface amplifies a rounding difference).
    parity, sensitivity = {}, {}
    for name, t in tuned.items():
        ref_path, _ = optimize_path(torch_contestant(name, t["lr"]), STEPS)
        parity[name] = (runs[name][0] - ref_path).abs().max().item()
        sensitivity[name] = one_ulp_departure(name, t["lr"], ref_path)

    xs, ys = torch.linspace(-2, 2, 400, dtype=torch.float64), torch.linspace(-1, 3, 400, dtype=torch.float64)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    log_f = torch.log10(rosenbrock(torch.stack([X, Y], dim=-1)) + 1e-3)
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.4), sharex=True, sharey=True)
    for ax, (name, (path, losses)), color in zip(axes.flat, runs.items(), plt.cm.tab10.colors):
        ax.contour(X, Y, log_f, levels=20, colors="0.75", linewidths=0.6)
        ax.plot(path[:, 0], path[:, 1], color=color, lw=1.3, marker=".", ms=2.5)
        ax.plot(*START, "ks", ms=6)
        ax.plot(*MINIMUM, "r*", ms=13)
        ax.set_title(f"{LABELS[name]}, lr {tuned[name]['lr']:.2g}\nloss after {STEPS} steps: {losses[-1].item():.1e}", fontsize=10)
    ax = axes.flat[-1]
    ax.contour(X, Y, log_f, levels=20, colors="0.75", linewidths=0.6)
    for (name, (path, _)), color in zip(runs.items(), plt.cm.tab10.colors):
        ax.plot(path[:, 0], path[:, 1], color=color, lw=1.0, label=LABELS[name])
    ax.plot(*START, "ks", ms=6, label="start (−1.2, 1)")
    ax.plot(*MINIMUM, "r*", ms=13, label="minimum (1, 1)")
    ax.set_title("all five", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xticks([-2, -1, 0, 1, 2])
    ax.set_xlim(-2, 2)
    ax.set_ylim(-1, 3)
    for a in axes[1]:
        a.set_xlabel("x")
    for a in axes[:, 0]:
        a.set_ylabel("y")
    fig.suptitle(f"{STEPS} steps on Rosenbrock's banana from (−1.2, 1), each optimizer at its best learning rate")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/rosenbrock_paths.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 4.3))
    for (name, (_, losses)), color in zip(runs.items(), plt.cm.tab10.colors):
        ax.semilogy(losses.clamp(min=1e-30), color=color, label=LABELS[name])
    ax.set_xlabel("step")
    ax.set_ylabel("f(x, y)")
    ax.set_title("Loss along each path")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/rosenbrock_losses.png", dpi=120)
    plt.close(fig)

    hessian = torch.autograd.functional.hessian(rosenbrock, torch.tensor(MINIMUM, dtype=torch.float64))
    eigenvalues = torch.linalg.eigvalsh(hessian).tolist()
    results = {
        "steps": STEPS,
        "hessian_eigenvalues_at_minimum": eigenvalues,
        "condition_number_at_minimum": eigenvalues[1] / eigenvalues[0],
        "stability_limit": {"heavy_ball": momentum_stability_limit(0.9),
                                         "nesterov": momentum_stability_limit(0.9, True)},
        "start": list(START),
        "learning_rates": LEARNING_RATES,
        "optimizers": {
            name: {
                "lr": tuned[name]["lr"],
                "lr_times_top_curvature": tuned[name]["lr"] * eigenvalues[1],
                "final_loss": runs[name][1][-1].item(),
                "final_distance": math.dist(runs[name][0][-1].tolist(), MINIMUM),
                "steps_to_loss_1e-2": steps_to_reach(runs[name][1], 1e-2),
                "tail_loss": tail_loss(runs[name][1]),
                "tail_loss_by_lr": tuned[name]["tail_loss_by_lr"],
                "max_abs_deviation_from_torch_optim": parity[name],
                "torch_self_deviation_after_1ulp_nudge": sensitivity[name],
            }
            for name in CONTESTANTS
        },
        "max_abs_deviation_from_torch_optim": max(parity.values()),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
