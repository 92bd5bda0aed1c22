"""Day 26: RLHF through an interpretability lens — what did fine-tuning change, and where?

Day 25 tuned a character-level GPT with PPO against a sentiment reward model, starting from a
pretrained reference. Both models are in hand, so the change can be located four ways:

1. **Weights.** Per component (embeddings; per layer, attention with its LayerNorm and MLP with
   its LayerNorm; the unembedding with the final LayerNorm), the relative change
   ‖W_tuned − W_ref‖_F / ‖W_ref‖_F over the component's parameters.
2. **Activations.** On the same inputs, the relative difference of the residual stream after each
   layer, ‖x_l^tuned − x_l^ref‖ / ‖x_l^ref‖ (averaged over positions), and of what each block
   *writes* into it (x_{l+1} − x_l). The residual difference can only appear at the first layer
   whose weights changed; after that it accumulates.
3. **Causal attribution by swapping.** Copy one component from the tuned model into the reference
   and measure how much of the behavioural change that single swap restores:
   recovered(c) = 1 − KL(π_tuned ‖ π_ref+c) / KL(π_tuned ‖ π_ref), with the KL per token on the tuned
   model's own samples. Swapping nothing recovers 0, swapping everything 1.
4. **A linear probe for the reward.** Ridge regression from the residual stream to the reward
   model's score of a completion, trained on one half of the samples and scored by R² on the other,
   at every layer, for both models: from the last position, and from the average over the
   completion's positions. Does RLHF make the reward more (linearly) visible inside the model?
   The value head, trained during RLHF to predict the (batch-normalised) reward from the final
   residual, is itself such a probe; its correlation with the reward is reported.

Finally a *logit-lens view of the change*: the mean difference of next-character log-probabilities
between the two models, which characters RLHF promoted.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

rlhf = importlib.import_module("days.025.rlhf_pipeline")
gpt2 = importlib.import_module("days.032.gpt2")
sampling = importlib.import_module("days.034.sampling")

# ---------------------------------------------------------------- components


def components(cfg: gpt2.Config) -> dict[str, tuple[str, ...]]:
    """Parameter-name prefixes of each component of a DemoTransformer: 'embed' (tokens and positions),
    'L{l}_attn' (ln1 and attention of block l), 'L{l}_mlp' (ln2 and MLP), 'unembed' (ln_final and W_U, b_U)."""
    out = {"embed": ("embed.", "pos_embed.")}
    for l in range(cfg.n_layers):
        out[f"L{l}_attn"] = (f"blocks.{l}.ln1.", f"blocks.{l}.attn.")
        out[f"L{l}_mlp"] = (f"blocks.{l}.ln2.", f"blocks.{l}.mlp.")
    out["unembed"] = ("ln_final.", "unembed.")
    return out


def _parameters(model: gpt2.DemoTransformer) -> dict[str, Tensor]:
    return {name: p.detach() for name, p in model.named_parameters()}


def weight_changes(reference: gpt2.DemoTransformer, tuned: gpt2.DemoTransformer) -> dict[str, float]:
    """‖W_tuned − W_ref‖_F / ‖W_ref‖_F for each component, the norms taken over all its parameters together."""
    ref, new = _parameters(reference), _parameters(tuned)
    out = {}
    for name, prefixes in components(reference.cfg).items():
        keys = [k for k in ref if k.startswith(prefixes)]
        diff = math.sqrt(sum(float((new[k] - ref[k]).pow(2).sum()) for k in keys))
        norm = math.sqrt(sum(float(ref[k].pow(2).sum()) for k in keys))
        out[name] = diff / norm
    return out


# ---------------------------------------------------------------- activations


@torch.no_grad()
def residual_differences(reference: gpt2.DemoTransformer, tuned: gpt2.DemoTransformer,
                         tokens: Int[Tensor, "batch seq"]) -> dict[str, list[float]]:
    """On the same tokens: for each l, mean over positions of ‖x_l^tuned − x_l^ref‖ / ‖x_l^ref‖ (x_0 the
    embeddings, x_L the last block's output), and the same for each block's write x_{l+1} − x_l."""
    _, ref = reference.run_with_residuals(tokens)
    _, new = tuned.run_with_residuals(tokens)

    def rel(a, b):
        return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).mean())

    resid = [rel(n, r) for n, r in zip(new, ref)]
    writes = [rel(new[l + 1] - new[l], ref[l + 1] - ref[l]) for l in range(len(ref) - 1)]
    return {"residual": resid, "block_write": writes}


def swap_components(reference: gpt2.DemoTransformer, tuned: gpt2.DemoTransformer, names: list[str]) -> gpt2.DemoTransformer:
    """A copy of the reference whose parameters in the named components are the tuned model's."""
    hybrid = copy.deepcopy(reference)
    state = hybrid.state_dict()
    tuned_state = tuned.state_dict()
    prefixes = tuple(p for name in names for p in components(reference.cfg)[name])
    for key in state:
        if key.startswith(prefixes):
            state[key] = tuned_state[key].clone()
    hybrid.load_state_dict(state)
    return hybrid.eval()


@torch.no_grad()
def mean_token_kl(p_model: gpt2.DemoTransformer, q_model: gpt2.DemoTransformer, tokens: Int[Tensor, "batch seq"],
                  prefix_len: int) -> float:
    """Mean over batch and generated positions of KL(p(· | x_<t) ‖ q(· | x_<t)) (day 25's per_token_kl)."""
    return float(rlhf.per_token_kl(p_model(tokens), q_model(tokens), prefix_len).mean())


def swap_attribution(reference: gpt2.DemoTransformer, tuned: gpt2.DemoTransformer, tokens: Int[Tensor, "batch seq"],
                     prefix_len: int) -> dict[str, float]:
    """recovered(c) = 1 − KL(tuned ‖ ref with c swapped in) / KL(tuned ‖ ref), for each component alone, plus
    'all' (every component: exactly the tuned model, 1) and 'none' (0)."""
    total = mean_token_kl(tuned, reference, tokens, prefix_len)
    out = {"none": 0.0}
    names = list(components(reference.cfg))
    for name in names + ["all"]:
        hybrid = swap_components(reference, tuned, names if name == "all" else [name])
        out[name] = 1 - mean_token_kl(tuned, hybrid, tokens, prefix_len) / total
    return out


@torch.no_grad()
def promoted_characters(reference: gpt2.DemoTransformer, tuned: gpt2.DemoTransformer, tokens: Int[Tensor, "batch seq"],
                        prefix_len: int, chars: list[str], top: int = 8) -> dict[str, list]:
    """Mean over generated positions of log p_tuned(c | x_<t) − log p_ref(c | x_<t) for each character c:
    the most promoted and most demoted characters."""
    delta = (tuned(tokens).log_softmax(-1) - reference(tokens).log_softmax(-1))[:, prefix_len - 1:-1].mean((0, 1))
    order = torch.argsort(delta, descending=True)
    return {"promoted": [(chars[int(i)], float(delta[i])) for i in order[:top]],
            "demoted": [(chars[int(i)], float(delta[i])) for i in order.flip(0)[:top]]}


# ---------------------------------------------------------------- the reward probe


@torch.no_grad()
def residual_features(model: gpt2.DemoTransformer, tokens: Int[Tensor, "batch seq"], prefix_len: int
                      ) -> dict[str, Float[Tensor, "layers batch d_model"]]:
    """For every l = 0 … L (float64): 'last', x_l at the last position; 'pooled', x_l averaged over the
    completion's positions (a sum over positions is what a bag-of-words reward would need)."""
    _, residuals = model.run_with_residuals(tokens)
    return {"last": torch.stack([r[:, -1] for r in residuals]).double(),
            "pooled": torch.stack([r[:, prefix_len:].mean(1) for r in residuals]).double()}


@dataclass
class RidgeProbe:
    """y ≈ w·x + b, fitted by ridge regression: (w, b) minimise ‖y − Xw − b‖² + α‖w‖² (b not penalised), i.e.
    w = (X̃ᵀX̃ + αI)⁻¹ X̃ᵀỹ on centred X̃, ỹ and b = ȳ − x̄·w (scikit-learn's Ridge)."""

    w: Float[Tensor, "d"]
    b: float

    @classmethod
    def fit(cls, X: Float[Tensor, "n d"], y: Float[Tensor, "n"], alpha: float) -> "RidgeProbe":
        x_mean, y_mean = X.mean(0), y.mean()
        Xc, yc = X - x_mean, y - y_mean
        w = torch.linalg.solve(Xc.T @ Xc + alpha * torch.eye(X.shape[1], dtype=X.dtype), Xc.T @ yc)
        return cls(w, float(y_mean - x_mean @ w))

    def predict(self, X: Float[Tensor, "n d"]) -> Float[Tensor, "n"]:
        return X @ self.w + self.b


def r_squared(y: Float[Tensor, "n"], prediction: Float[Tensor, "n"]) -> float:
    """1 − Σ(y − ŷ)² / Σ(y − ȳ)²."""
    return float(1 - (y - prediction).pow(2).sum() / (y - y.mean()).pow(2).sum())


def probe_layers(residuals: Float[Tensor, "layers n d"], y: Float[Tensor, "n"], train: Tensor, test: Tensor,
                 alphas=(1e-2, 1e-1, 1.0, 10.0, 100.0)) -> list[dict]:
    """For each layer: the ridge α chosen by R² on a validation quarter of the training half, then refitted on
    the whole training half; held-out R² on the test half."""
    n_val = len(train) // 4
    fit_idx, val_idx = train[n_val:], train[:n_val]
    rows = []
    for l, X in enumerate(residuals):
        best = max(alphas, key=lambda a: r_squared(y[val_idx], RidgeProbe.fit(X[fit_idx], y[fit_idx], a).predict(X[val_idx])))
        probe = RidgeProbe.fit(X[train], y[train], best)
        rows.append({"layer": l, "alpha": best, "train_r2": r_squared(y[train], probe.predict(X[train])),
                     "test_r2": r_squared(y[test], probe.predict(X[test]))})
    return rows


# ---------------------------------------------------------------- the experiment

N_SAMPLES = 2048  # completions from each model
SEED = 0


def day25_models():
    """Day 25's saved reference and tuned policy, its tokenizer and settings."""
    folder = Path(rlhf.__file__).parent / rlhf.MODELS_DIR
    return rlhf.load_models(folder)


@torch.no_grad()
def completions(model: gpt2.DemoTransformer, tok, prefix: str, gen_len: int, n: int, seed: int) -> Int[Tensor, "n seq"]:
    """n sampled completions of the prompt (day 34's KV-cached sampler, temperature 1)."""
    prompt = tok.encode(prefix)[None].repeat(n, 1)
    return sampling.generate(model, prompt, gen_len, use_cache=True, generator=torch.Generator().manual_seed(seed))


def run_experiment(out_dir: Path) -> dict:
    """Where did RLHF change day 25's model: weights, activations, a swap attribution, reward probes."""
    import matplotlib.pyplot as plt

    reward_model = importlib.import_module("days.024.reward_model")
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    reference, policy, tok, meta = day25_models()
    tuned = policy.backbone.eval()
    P = len(meta["prefix"])

    samples = {"tuned": completions(tuned, tok, meta["prefix"], meta["gen_len"], N_SAMPLES, SEED),
               "reference": completions(reference, tok, meta["prefix"], meta["gen_len"], N_SAMPLES, SEED + 1)}
    weights = weight_changes(reference, tuned)
    activations = {name: residual_differences(reference, tuned, ids) for name, ids in samples.items()}
    attribution = swap_attribution(reference, tuned, samples["tuned"][:512], P)
    promoted = promoted_characters(reference, tuned, samples["tuned"][:512], P, tok.chars)

    rm = reward_model.trained_reward_model()
    tokens = torch.cat([samples["tuned"], samples["reference"]])
    texts = [tok.decode(row[P:]) for row in tokens]
    with torch.no_grad():
        rewards = rm(texts).double()
    g = torch.Generator().manual_seed(SEED)
    order = torch.randperm(len(tokens), generator=g)
    train, test = order[: len(order) // 2], order[len(order) // 2:]
    features = {name: residual_features(model, tokens, P) for name, model in (("reference", reference), ("tuned", tuned))}
    probes = {kind: {name: probe_layers(features[name][kind], rewards, train, test) for name in features}
              for kind in ("pooled", "last")}
    with torch.no_grad():
        _, values = policy(tokens)
    value_head_corr = float(torch.corrcoef(torch.stack([values[test, -2].double(), rewards[test]]))[0, 1])  # V before the last token

    # Figure: weights, activations, attribution, probes.
    names = list(weights)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    x = np.arange(len(names))
    ax.bar(x - 0.2, [weights[n] for n in names], 0.4, label="relative weight change")
    ax.bar(x + 0.2, [attribution[n] for n in names], 0.4, label="KL recovered by swapping it in alone")
    ax.set_xticks(x, names, fontsize=8)
    ax.set_title("Which components changed, and which matter", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax = axes[1]
    layers = np.arange(len(activations["tuned"]["residual"]))
    for name, style in (("tuned", "o-"), ("reference", "s--")):
        ax.plot(layers, activations[name]["residual"], style, label=f"residual x_l, on {name} samples")
    ax.plot(layers[:-1] + 0.5, activations["tuned"]["block_write"], "^:", label="block write x_(l+1) − x_l (tuned samples)")
    ax.set_xticks(layers, [f"x_{l}" for l in layers])
    ax.set_ylabel("mean relative difference, tuned vs reference")
    ax.set_title("The residual stream diverges layer by layer", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[2]
    for (kind, name), style in zip([("pooled", "reference"), ("pooled", "tuned"), ("last", "reference"), ("last", "tuned")],
                                   ["s-", "o-", "s:", "o:"]):
        ax.plot(layers, [r["test_r2"] for r in probes[kind][name]], style, color="tab:blue" if name == "tuned" else "tab:gray",
                label=f"{name} model, {'mean over positions' if kind == 'pooled' else 'last position'}")
    ax.set_xticks(layers, [f"x_{l}" for l in layers])
    ax.set_ylabel("held-out R² of a ridge probe for the reward")
    ax.set_title("Reading the reward off the residual stream", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/rlhf_lens.png", dpi=120)
    plt.close(fig)

    results = {
        "n_samples_per_model": N_SAMPLES, "prefix": meta["prefix"], "gen_len": meta["gen_len"],
        "weight_change": weights,
        "activation_change": activations,
        "swap_attribution": attribution,
        "most_changed_component": max(weights, key=weights.get),
        "most_recovering_component": max((n for n in names), key=lambda n: attribution[n]),
        "promoted_characters": promoted,
        "reward": {"mean_tuned": float(rewards[:N_SAMPLES].mean()), "mean_reference": float(rewards[N_SAMPLES:].mean()),
                   "std": float(rewards.std())},
        "probes": probes,
        "best_probe": {kind: {name: max(rows, key=lambda r: r["test_r2"]) for name, rows in by_model.items()}
                       for kind, by_model in probes.items()},
        "value_head": {"test_corr": value_head_corr},
        "experiment_seconds": time.perf_counter() - start,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
