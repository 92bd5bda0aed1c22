"""Day 27: reward hacking, Goodhart curves of best-of-n, and what mitigates them.

An optimiser only ever sees a **proxy** U of what we want, the **gold** reward V. Best-of-n
sampling, the simplest optimiser of a language model against a reward model, draws n samples
from the base policy and keeps the one with the highest proxy. Its cost in KL from the base
policy is known in closed form (Stiennon et al., 2020; for a continuous proxy):

    KL(π_bon ‖ π_base) = log n − (n − 1)/n,

so n is a dial of optimisation pressure. A **Goodhart curve** plots the gold reward of the chosen
sample against that KL.

**Toy model, exact.** V ~ N(0, 1), U = V + X with independent error X of variance 1, so corr(U, V)
= 1/√2 whatever X's shape. For best-of-n, the selected U has density n F_U(u)^{n−1} f_U(u), and

    E[gold] = ∫ m(u) d[F_U(u)ⁿ],   m(u) = E[V | U = u] = ∫ v φ(v) f_X(u − v) dv / f_U(u).

- Light-tailed error, X ~ N(0, 1): m(u) = u/2, so gold = proxy/2 rises for ever (regressional
  Goodhart: a constant fraction of the optimisation is wasted).
- Heavy-tailed error, X a Student t with 3 degrees of freedom scaled to variance 1: m(u) → 0 as
  u → ∞ (a huge U is almost surely a huge error), so gold rises, peaks, and falls back to the base
  policy's 0 (extremal Goodhart; Kwa et al., 2024, call it catastrophic).

Mitigations measured: stopping early (a KL budget), and ensembles of k proxies with independent
errors, combined by the mean (which keeps the heavy tail) or the median (which thins it).

**Real data.** The base policy is day 25's character-level model; the gold reward is day 24's
latent sentiment lexicon; the proxies are day 24's Bradley–Terry reward models trained on few
preference pairs. Best-of-n over a pool of N samples is computed exactly by order statistics:
with the pool sorted by proxy, the k-th smallest is chosen with probability (k/N)ⁿ − ((k−1)/N)ⁿ.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from scipy import special, stats

# ---------------------------------------------------------------- the toy model

T_DOF = 3.0


@dataclass(frozen=True)
class ErrorModel:
    """The proxy's error X, variance 1: 'gaussian' N(0, 1), or 'student_t', a Student t with ν = 3
    degrees of freedom and scale s = 1/√3 (variance s² ν/(ν − 2) = 1).

    For ν = 3 the density and survival function have closed forms (z = x/s):
        f(x) = (2 / (π √3 s)) (1 + z²/3)^(−2),
        S(x) = ½ − (1/π) [ z / (√3 (1 + z²/3)) + arctan(z/√3) ],
    which are much cheaper than scipy's general incomplete-beta routines on millions of points.
    """

    kind: str

    @property
    def scale(self) -> float:
        return 1.0 if self.kind == "gaussian" else math.sqrt((T_DOF - 2) / T_DOF)

    def pdf(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "gaussian":
            return np.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)
        z = x / self.scale
        return 2 / (math.pi * math.sqrt(3) * self.scale) / (1 + z**2 / 3) ** 2

    def sf(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "gaussian":
            return 0.5 * special.erfc(x / math.sqrt(2))
        z = x / self.scale
        return 0.5 - (z / (math.sqrt(3) * (1 + z**2 / 3)) + np.arctan(z / math.sqrt(3))) / math.pi

    @property
    def dist(self):
        """The same law as a scipy distribution (the reference the closed forms are tested against)."""
        return stats.norm() if self.kind == "gaussian" else stats.t(T_DOF, scale=self.scale)

    def sample(self, size, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "gaussian":
            return rng.standard_normal(size)
        return self.scale * rng.standard_t(T_DOF, size)


GAUSSIAN, HEAVY = ErrorModel("gaussian"), ErrorModel("student_t")
V_GRID = np.linspace(-8.5, 8.5, 1201)  # φ(8.5) ≈ 5e-17: the gold's support, for quadrature


def u_grid(limit: float = 1e4, n: int = 4001) -> Float[np.ndarray, "n"]:
    """Proxy values: sinh-spaced from −limit to limit (spacing ≈ 0.01 near 0, relative ≈ 1% in the tails)."""
    a = math.asinh(limit / 0.1)
    return 0.1 * np.sinh(np.linspace(-a, a, n))


@dataclass
class ProxyLaw:
    """f_U, the survival function S_U = 1 − F_U, and m(u) = E[V | U = u] on a grid of u."""

    u: np.ndarray
    density: np.ndarray
    survival: np.ndarray
    conditional_mean: np.ndarray


def proxy_law(error: ErrorModel, u: np.ndarray | None = None) -> ProxyLaw:
    """The convolution integrals over v by the trapezoid rule on V_GRID:
    f_U(u) = ∫ φ(v) f_X(u − v) dv,  S_U(u) = ∫ φ(v) S_X(u − v) dv,  m(u) f_U(u) = ∫ v φ(v) f_X(u − v) dv."""
    u = u_grid() if u is None else u
    v = V_GRID
    w = stats.norm.pdf(v) * np.gradient(v)  # trapezoid-like weights φ(v) dv
    w[[0, -1]] /= 2
    diff = u[:, None] - v[None, :]
    fx = error.pdf(diff)
    density = fx @ w
    survival = error.sf(diff) @ w
    cond = (fx * v[None, :]) @ w / np.maximum(density, 1e-300)
    return ProxyLaw(u, density, survival, cond)


def best_of_n(law: ProxyLaw, ns) -> dict[str, list[float]]:
    """E[proxy] and E[gold] of the best of n draws: Stieltjes sums of u and m(u) against d[F_U(u)ⁿ] over
    the grid, with F_U(u)ⁿ = exp(n log(1 − S_U(u))) (accurate where F_U is within 1e-16 of 1); and the
    closed-form KL, log n − (n − 1)/n."""
    out = {"n": [int(n) for n in ns], "proxy": [], "gold": [], "kl": []}
    mid_u = (law.u[1:] + law.u[:-1]) / 2
    mid_m = (law.conditional_mean[1:] + law.conditional_mean[:-1]) / 2
    with np.errstate(divide="ignore"):
        log_F = np.log1p(-np.clip(law.survival, 0, 1))  # −∞ where F_U = 0: Fⁿ = 0 there
    for n in ns:
        Fn = np.exp(n * log_F)
        dF = np.diff(Fn)
        out["proxy"].append(float(mid_u @ dF))
        out["gold"].append(float(mid_m @ dF))
        out["kl"].append(bon_kl(n))
    return out


def bon_kl(n: float) -> float:
    """KL(best-of-n ‖ base) = log n − (n − 1)/n for a continuous proxy."""
    return math.log(n) - (n - 1) / n


def expected_max_standard_normal(n: int) -> float:
    """e_n = E[max of n standard normals] = ∫ x n φ(x) Φ(x)^{n−1} dx (scipy quad): the Gaussian case's
    closed form is E[proxy] = √2 e_n, E[gold] = e_n / √2."""
    from scipy.integrate import quad

    value, _ = quad(lambda x: x * n * stats.norm.pdf(x) * stats.norm.cdf(x) ** (n - 1), -12, 12, limit=200)
    return value


def monte_carlo_best_of_n(error: ErrorModel, n: int, trials: int, rng: np.random.Generator, k: int = 1,
                          combine: str = "mean") -> dict[str, float]:
    """Simulate best-of-n with an ensemble of k proxies U_j = V + X_j (independent errors), combined by the
    mean or the median: mean and standard error of the chosen sample's gold and combined proxy."""
    v = rng.standard_normal((trials, n))
    u = v[..., None] + error.sample((trials, n, k), rng)
    score = u.mean(-1) if combine == "mean" else np.median(u, axis=-1)
    best = score.argmax(axis=1)
    gold = v[np.arange(trials), best]
    proxy = score[np.arange(trials), best]
    return {"gold": float(gold.mean()), "gold_se": float(gold.std() / math.sqrt(trials)),
            "proxy": float(proxy.mean()), "proxy_se": float(proxy.std() / math.sqrt(trials))}


# ---------------------------------------------------------------- best-of-n over a finite pool


def pool_selection_probabilities(N: int, n: int) -> Float[np.ndarray, "N"]:
    """P(the k-th smallest of N pool items is the best of n draws with replacement) = (k/N)ⁿ − ((k−1)/N)ⁿ."""
    k = np.arange(1, N + 1)
    return (k / N) ** n - ((k - 1) / N) ** n


def pool_best_of_n(proxy: Float[np.ndarray, "N"], gold: Float[np.ndarray, "N"], ns) -> dict[str, list[float]]:
    """Exact E[proxy], E[gold] and KL(π_bon ‖ uniform pool) of best-of-n from a pool. Items with equal proxy
    scores form one rank group: the chance of the group is split evenly among its members."""
    order = np.argsort(proxy, kind="stable")
    p_sorted, g_sorted = np.asarray(proxy)[order], np.asarray(gold)[order]
    N = len(proxy)
    _, first, counts = np.unique(p_sorted, return_index=True, return_counts=True)
    out = {"n": [int(n) for n in ns], "proxy": [], "gold": [], "kl": []}
    for n in ns:
        probs = pool_selection_probabilities(N, n)
        group = np.add.reduceat(probs, first) / counts
        probs = np.repeat(group, counts)
        out["proxy"].append(float(probs @ p_sorted))
        out["gold"].append(float(probs @ g_sorted))
        nz = probs > 0
        out["kl"].append(float(probs[nz] @ np.log(N * probs[nz])))
    return out


# ---------------------------------------------------------------- the real setting: day 25's model, day 24's rewards


def sample_pool(n: int, seed: int = 0, batch: int = 1024) -> list[str]:
    """n completions of day 25's prompt from day 25's pretrained reference model (its saved weights)."""
    rlhf = importlib.import_module("days.025.rlhf_pipeline")
    sampling = importlib.import_module("days.034.sampling")
    here = Path(rlhf.__file__).parent
    reference, _, tok, meta = rlhf.load_models(here / rlhf.MODELS_DIR)
    g = torch.Generator().manual_seed(seed)
    prompt = tok.encode(meta["prefix"])
    texts = []
    with torch.no_grad():
        for start in range(0, n, batch):
            rows = min(batch, n - start)
            ids = sampling.generate(reference, prompt[None].repeat(rows, 1), meta["gen_len"], use_cache=True, generator=g)
            texts += [tok.decode(row[len(prompt):]) for row in ids]
    return texts


def train_proxies(pair_counts, ensemble_size: int, ensemble_pairs: int) -> tuple[dict, list, object]:
    """Day 24's reward models: one per pair count (the first pairs of its training set), and an ensemble
    of ``ensemble_size`` models each fitted on its own disjoint block of ``ensemble_pairs`` pairs."""
    rm = importlib.import_module("days.024.reward_model")
    data = rm.build_preference_data()
    singles = {n: rm.train_reward_model(data, n) for n in pair_counts}
    members = []
    for j in range(ensemble_size):
        block = slice(j * ensemble_pairs, (j + 1) * ensemble_pairs)
        prefs = rm.Preferences(data.train.a[block], data.train.b[block], data.train.a_wins[block], data.train.p_a[block])
        torch.manual_seed(0)
        model = rm.RewardModel()
        rm.fit_reward_model(model, data.ids, prefs, rm.L2)
        members.append(model.eval())
    return singles, members, data


# ---------------------------------------------------------------- the experiment

TOY_NS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 10_000, 30_000, 100_000, 1_000_000]
ENSEMBLE_NS = [1, 4, 16, 64, 256, 1024, 4096]
ENSEMBLE_K = 5
MC_TRIALS = 2000
POOL_SIZE = 16_384
POOL_NS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
PAIR_COUNTS = [250, 1250, 50_000]
ENSEMBLE_PAIRS = 250


def run_experiment(out_dir: Path) -> dict:
    """Toy Goodhart curves (exact, and Monte Carlo for ensembles), then best-of-n over day 25's samples
    against weak and strong reward models, with a 5-model ensemble."""
    import matplotlib.pyplot as plt

    rm = importlib.import_module("days.024.reward_model")
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    toy = {name: best_of_n(proxy_law(err), TOY_NS) for name, err in (("gaussian", GAUSSIAN), ("student_t", HEAVY))}
    heavy_gold = np.array(toy["student_t"]["gold"])
    peak = int(np.argmax(heavy_gold))
    rng = np.random.default_rng(0)
    ensembles = {}
    for label, k, combine in (("single", 1, "mean"), ("mean_of_5", ENSEMBLE_K, "mean"), ("median_of_5", ENSEMBLE_K, "median")):
        ensembles[label] = [monte_carlo_best_of_n(HEAVY, n, MC_TRIALS, rng, k, combine) for n in ENSEMBLE_NS]

    singles, members, data = train_proxies(PAIR_COUNTS, ENSEMBLE_K, ENSEMBLE_PAIRS)
    texts = sample_pool(POOL_SIZE)
    gold = rm.latent_reward(texts).numpy()
    with torch.no_grad():
        scores = {f"single_{n}": singles[n](texts).double().numpy() for n in PAIR_COUNTS}
        member_scores = np.stack([m(texts).double().numpy() for m in members])
    scores[f"ensemble_mean_{ENSEMBLE_K}x{ENSEMBLE_PAIRS}"] = member_scores.mean(0)
    real = {name: pool_best_of_n(s, gold, POOL_NS) for name, s in scores.items()}
    correlations = {name: float(np.corrcoef(s, gold)[0, 1]) for name, s in scores.items()}
    best_texts = {name: [texts[i] for i in np.argsort(-s)[:3]] for name, s in scores.items()}

    # Figure 1: the toy Goodhart curves and the ensembles.
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.4))
    ax = axes[0]
    for name, color, label in (("gaussian", "tab:blue", "Gaussian error"), ("student_t", "tab:red", "Student-t (ν = 3) error")):
        ax.plot(toy[name]["kl"], toy[name]["proxy"], "--", color=color, lw=1, label=f"{label}: proxy")
        ax.plot(toy[name]["kl"], toy[name]["gold"], "o-", ms=3, color=color, label=f"{label}: gold")
    ax.set_xlabel("KL(best-of-n ‖ base) = log n − (n−1)/n  (nats)")
    ax.set_ylabel("expected reward of the chosen sample")
    ax.set_ylim(-0.2, 4.5)
    ax.set_title("Same correlation, different tails (exact quadrature)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    kls = [bon_kl(n) for n in ENSEMBLE_NS]
    for label, color in (("single", "tab:red"), ("mean_of_5", "tab:orange"), ("median_of_5", "tab:green")):
        g = [r["gold"] for r in ensembles[label]]
        se = [2 * r["gold_se"] for r in ensembles[label]]
        ax.errorbar(kls, g, yerr=se, marker="o", ms=3, capsize=2, color=color, label=label.replace("_", " "))
    ax.set_xlabel("KL(best-of-n ‖ base) (nats)")
    ax.set_ylabel("gold reward of the chosen sample (±2 s.e.)")
    ax.set_title(f"Heavy-tailed proxies: ensembles of {ENSEMBLE_K} ({MC_TRIALS} trials)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/toy_goodhart.png", dpi=120)
    plt.close(fig)

    # Figure 2: best-of-n on day 25's samples.
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    colors = {f"single_{PAIR_COUNTS[0]}": "tab:red", f"single_{PAIR_COUNTS[1]}": "tab:orange",
              f"single_{PAIR_COUNTS[2]}": "tab:blue", f"ensemble_mean_{ENSEMBLE_K}x{ENSEMBLE_PAIRS}": "tab:green"}
    for name, curve in real.items():
        label = name.replace("single_", "reward model on ").replace("ensemble_mean_", "ensemble mean, ")
        label = label + (" pairs" if name.startswith("single") else " pairs")
        ax.plot(curve["kl"], curve["gold"], "o-", ms=3, color=colors[name], label=label)
    ax.set_xlabel("KL(best-of-n ‖ pool) (nats, exact)")
    ax.set_ylabel("gold (lexicon) reward of the chosen completion")
    ax.set_title(f"Best-of-n over {POOL_SIZE} samples of day 25's model", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/real_best_of_n.png", dpi=120)
    plt.close(fig)

    results = {
        "toy": {"ns": TOY_NS, "curves": toy, "t_dof": T_DOF,
                "heavy_peak_n": TOY_NS[peak], "heavy_peak_gold": float(heavy_gold[peak]),
                "heavy_gold_at_max_n": float(heavy_gold[-1]), "gaussian_gold_at_max_n": toy["gaussian"]["gold"][-1]},
        "ensembles": {"ns": ENSEMBLE_NS, "k": ENSEMBLE_K, "trials": MC_TRIALS, "curves": ensembles},
        "real": {"pool_size": POOL_SIZE, "ns": POOL_NS, "pair_counts": PAIR_COUNTS, "ensemble_pairs": ENSEMBLE_PAIRS,
                 "curves": real, "proxy_gold_correlation": correlations, "best_texts": best_texts,
                 "pool_gold_mean": float(gold.mean())},
        "experiment_seconds": time.perf_counter() - start,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
