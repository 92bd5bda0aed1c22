"""Part 3B of the Gauntlet: the sycophancy direction (linear probe, PCA, neuron basis).

- **3B.1** Activations: the residual stream at the answer position, before the critical layer of
  Part 3A, for every pair's opinion (sycophantic, label 1) and neutral (truthful, label 0) prompt.
- **3B.2** A logistic-regression probe p(y = 1 | x) = σ(wᵀx + b), trained on the training split's
  pairs and scored on the held-out pairs (both forms of a pair are on the same side of the split, so
  no claim is seen twice). Its unit weight vector ŵ is the "sycophancy direction"; the difference of
  class means μ₁ − μ₀ is the simpler estimate that steering uses (Part 5C); we compare the two.
- **3B.3** PCA of the pooled activations: cos(ŵ, PC_i) for the top components and the share of ŵ's
  squared norm inside the top-k principal subspace, ‖P_k ŵ‖².
- **3B.4** Superposition check without an SAE: how concentrated ŵ is in a basis. In the residual
  basis (which is *not* privileged: any rotation of the residual stream with the weights rotated to
  match computes the same function, except for the elementwise RMSNorm scale), the participation
  ratio PR(ŵ) = (Σ ŵ_i²)² / Σ ŵ_i⁴ runs from 1 (one coordinate) to d (uniform); a random direction
  has E[PR] ≈ d/3. In the MLP neuron basis (privileged: the nonlinearity acts per neuron), the
  cosines c_n = cos(ŵ, W_out[n]) of ŵ with each neuron's output direction show whether one neuron
  writes the direction (monosemantic) or many do (polysemantic); the same PR on c² and a random-
  direction baseline make "concentrated" a measured statement.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from checks.timing import single_thread

from .sycophancy import evaluate, split

__all__ = ["activation_dataset", "participation_ratio", "pca_directions", "probe_direction", "random_baseline",
           "run", "top_k_mass", "train_probe"]


def activation_dataset(ev, layer: int, pairs) -> tuple[Float[np.ndarray, "n d"], np.ndarray]:
    """X = resid_pre[layer] at the answer position for each pair's opinion then neutral prompt
    (``layer`` = n_layers means after the last block), y = 1 for opinion, 0 for neutral."""
    idx = ev.index(pairs)
    X = torch.cat([ev.resid_opinion[idx, layer], ev.resid_neutral[idx, layer]]).double().numpy()
    y = np.concatenate([np.ones(len(idx)), np.zeros(len(idx))])
    return X, y


def train_probe(X: np.ndarray, y: np.ndarray, C: float = 1.0) -> tuple[StandardScaler, LogisticRegression]:
    """Standardise the features (the residual stream has a few huge coordinates) and fit an
    L2-regularised logistic regression."""
    scaler = StandardScaler().fit(X)
    return scaler, LogisticRegression(C=C, max_iter=5000).fit(scaler.transform(X), y)


def probe_direction(scaler: StandardScaler, clf: LogisticRegression) -> Float[np.ndarray, "d"]:
    """The probe's unit direction in the *raw* residual space: wᵀ((x − m)/s) = (w/s)ᵀx − const, so
    the raw-space weight is w/s, normalised."""
    w = clf.coef_[0] / scaler.scale_
    return w / np.linalg.norm(w)


def participation_ratio(v: np.ndarray) -> float:
    """PR = (Σ v_i²)² / Σ v_i⁴ ∈ [1, len(v)]: the effective number of coordinates v occupies."""
    sq = np.asarray(v, dtype=np.float64) ** 2
    return float(sq.sum() ** 2 / (sq ** 2).sum())


def top_k_mass(v: np.ndarray, k: int) -> float:
    """Fraction of Σ v_i² carried by the k largest |v_i|."""
    sq = np.sort(np.asarray(v, dtype=np.float64) ** 2)[::-1]
    return float(sq[:k].sum() / sq.sum())


def pca_directions(X: np.ndarray, k: int) -> tuple[Float[np.ndarray, "k d"], Float[np.ndarray, "k"]]:
    """Top-k principal directions (rows, unit) of X and their explained-variance ratios, by the SVD of
    the centred data."""
    Xc = X - X.mean(0)
    _, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    return Vt[:k], (S[:k] ** 2) / (S ** 2).sum()


def random_baseline(d: int, W: np.ndarray | None = None, n: int = 200, seed: int = 0) -> dict:
    """Participation ratios (and max |cos| with the rows of W) of random unit directions in ℝ^d."""
    rng = np.random.default_rng(seed)
    V = rng.standard_normal((n, d))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    out = {"pr_mean": float(np.mean([participation_ratio(v) for v in V])),
           "top10_mass_mean": float(np.mean([top_k_mass(v, 10) for v in V]))}
    if W is not None:
        Wn = W / np.linalg.norm(W, axis=1, keepdims=True)
        C = V @ Wn.T
        out["neuron_pr_mean"] = float(np.mean([participation_ratio(c) for c in C]))
        out["neuron_max_abs_cos_mean"] = float(np.abs(C).max(1).mean())
    return out


def _plot(res: dict, w: np.ndarray, neuron_cos: np.ndarray, label: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    ax = axes[0]
    ax.plot(res["accuracy_by_layer"], "o-", ms=3, color="tab:blue")
    ax.axvline(res["layer"], color="tab:red", ls="--", lw=1, label=f"critical layer {res['layer']}")
    ax.set_xlabel("layer (resid_pre; last = after the final block)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0.4, 1.02)
    ax.set_title("Probe accuracy by layer", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    k = len(res["cos_with_pcs"])
    ax.bar(range(1, k + 1), np.abs(res["cos_with_pcs"]), color="tab:purple")
    ax.plot(range(1, k + 1), res["pca_explained"], "k.-", label="explained variance ratio")
    ax.set_xlabel("principal component")
    ax.set_ylabel("|cos(probe, PC)|")
    ax.set_title("Probe direction vs principal components", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.plot(np.sort(w ** 2)[::-1], color="tab:green")
    ax.set_yscale("log")
    ax.set_xlabel("residual coordinate (sorted)")
    ax.set_ylabel("probe weight²")
    ax.set_title(f"Residual basis: PR = {res['residual_pr']:.0f} of {len(w)} (random ≈ {res['random']['pr_mean']:.0f})",
                 fontsize=10)
    ax = axes[3]
    ax.hist(neuron_cos, bins=60, color="tab:orange", alpha=0.8)
    ax.set_xlabel(f"cos(probe, W_out[n]), layer {res['neuron_layer']} MLP neurons")
    ax.set_ylabel("neurons")
    ax.set_title(f"Neuron basis: max |cos| {np.abs(neuron_cos).max():.2f} (random ≈ {res['random']['neuron_max_abs_cos_mean']:.2f})",
                 fontsize=10)
    fig.suptitle(f"The sycophancy direction ({label})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


@single_thread()
def run(out_dir: Path, model_name: str = "smollm2", layer: int | None = None, k_pcs: int = 10) -> dict:
    """3B on ``model_name`` at ``layer`` (default: the critical layer of Part 3A from the committed
    results, else recomputed by 3A's rule from the final-position patching)."""
    from .models import MODELS, load

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    label = MODELS[model_name].label
    model = load(model_name)
    ev = evaluate(model_name)
    if layer is None:
        layer = critical_layer()
    train, held = split(ev.pairs)
    X, y = activation_dataset(ev, layer, train)
    Xh, yh = activation_dataset(ev, layer, held)
    scaler, clf = train_probe(X, y)
    w = probe_direction(scaler, clf)
    mu = X[y == 1].mean(0) - X[y == 0].mean(0)
    acc_by_layer = []
    for l in range(model.cfg.n_layers + 1):
        s, c = train_probe(*activation_dataset(ev, l, train))
        Xl, yl = activation_dataset(ev, l, held)
        acc_by_layer.append(float(c.score(s.transform(Xl), yl)))
    # does the probe's score track the behaviour? correlation with Δ on held-out opinion prompts
    idx = ev.index(held)
    proj = ev.resid_opinion[idx, layer].double().numpy() @ w
    corr = float(np.corrcoef(proj, ev.diff_opinion[idx].numpy())[0, 1])
    pcs, explained = pca_directions(np.concatenate([X, Xh]), k_pcs)
    cos_pcs = pcs @ w
    neuron_layer = max(layer - 1, 0)
    W_out = model.blocks[neuron_layer].mlp.W_out.detach().double().numpy()        # d_mlp × d_model
    neuron_cos = (W_out / np.linalg.norm(W_out, axis=1, keepdims=True)) @ w
    top_neurons = np.argsort(-np.abs(neuron_cos))[:5]
    res = {"model": label, "layer": layer, "n_train": len(y), "n_held_out": len(yh),
           "train_accuracy": float(clf.score(scaler.transform(X), y)),
           "held_out_accuracy": float(clf.score(scaler.transform(Xh), yh)),
           "accuracy_by_layer": acc_by_layer,
           "cos_probe_mean_difference": float(w @ mu / np.linalg.norm(mu)),
           "mean_difference_norm": float(np.linalg.norm(mu)),
           "corr_projection_logit_diff": corr,
           "cos_with_pcs": cos_pcs.tolist(), "pca_explained": explained.tolist(),
           "max_abs_cos_pc": float(np.abs(cos_pcs).max()), "argmax_pc": int(np.abs(cos_pcs).argmax()) + 1,
           "mass_in_top_pcs": float((cos_pcs ** 2).sum()),
           "residual_pr": participation_ratio(w), "residual_top10_mass": top_k_mass(w, 10),
           "residual_top_coords": np.argsort(-np.abs(w))[:5].tolist(),
           "neuron_layer": neuron_layer, "neuron_pr": participation_ratio(neuron_cos),
           "neuron_max_abs_cos": float(np.abs(neuron_cos).max()),
           "top_neurons": [[int(n), float(neuron_cos[n])] for n in top_neurons],
           "random": random_baseline(len(w), W_out),
           # the probe in the raw residual space: f(x) = w_raw·x + b_raw (what the gate applies to fresh activations)
           "w_raw": (clf.coef_[0] / scaler.scale_).tolist(),
           "b_raw": float(clf.intercept_[0] - (clf.coef_[0] / scaler.scale_) @ scaler.mean_)}
    _plot(res, w, neuron_cos, label, out_dir / "figures" / "part3b_probe.png")
    return res


def critical_layer(results_path: Path | None = None) -> int:
    """Part 3A's critical layer from the committed results.json."""
    import json

    path = results_path or Path(__file__).resolve().parent / "results.json"
    return int(json.loads(path.read_text())["part3a"]["critical_layer"])
