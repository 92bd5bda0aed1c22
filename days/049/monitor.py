"""Day 49: an SAE as a cognitive monitor (ARENA 1.3.3 Sparse Autoencoders, applied to day 41's deception data).

Day 41 trained a deception probe on the residual stream: dense directions fitted to labels. A sparse autoencoder
offers another kind of monitor, built from latents that exist before any label is seen. Given day 47's SAE at layer
L (it reads ``blocks.L.hook_resid_pre``, day 40's layer L), a dialogue's latent profile is the mean over the
response tokens of the latent activations,

    m_j(dialogue) = (1/T) Σ_{t ∈ response} a_j(x_t^L),

and a monitor picks the k latents whose profiles separate honest from dishonest instructions best on the training
facts (by Cohen's d, |μ₁ − μ₀| / s_pooled), then scores a dialogue by the mean of their standardised, signed
profiles. Labels choose latents; they never shape them. The comparison that matters is with day 41's raw-residual
probe on the same split: does a handful of pre-existing latents flag the instruction as well as a dense probe?

Then causality, the ARENA way: how much does each chosen latent matter for what comes downstream? With the SAE's
error term kept, ablating latent i at layer L removes exactly its decoder contribution, x ← x − c_i with
c_i = decode(a_i e_i) − decode(0) = a_i W_dec[i] (model units). The effect on a downstream metric f (here day 41's
probe logit at layer L + 4, averaged over the response) is measured two ways:

    ablation     Δ_i = f(x − c_i) − f(x)                  (one forward pass per latent)
    attribution  Δ̂_i = −Σ_t c_{i,t} · ∂f/∂x_t             (one backward pass for all latents)

Attribution patching is the first-order Taylor term of the ablation; how well the two agree across latents says
whether the cheap estimate can stand in for the expensive one on this model.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from checks.timing import single_thread

P40 = importlib.import_module("days.040.probes_theory")
C41 = importlib.import_module("days.041.coup_probes")
T47 = importlib.import_module("days.047.sae_train")

Dialogue = C41.Dialogue
DOWNSTREAM = 4            # the attribution metric reads day 41's probe this many layers after the SAE's
K_LATENTS = (1, 5, 20)    # monitor sizes the experiment compares
N_ATTRIBUTED = 10         # top monitor latents (and as many random firing latents) in the attribution study


def sae_layer(sae) -> int:
    """The layer L of an SAE reading ``blocks.L.hook_resid_pre``."""
    parts = sae.hook_name.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or parts[2] != "hook_resid_pre":
        raise ValueError(f"expected an SAE on blocks.L.hook_resid_pre, got {sae.hook_name!r}")
    return int(parts[1])


# ---------------------------------------------------------------- latent profiles


@torch.no_grad()
def dialogue_latents(dialogues: Sequence[Dialogue], sae, model="smollm2", batch_size: int = 16
                     ) -> tuple[Float[Tensor, "tokens d_sae"], Int[Tensor, "tokens"]]:
    """The SAE's latent activations at every response token of each dialogue (day 41's dialogue_activations at the
    SAE's layer, then encode), and ``owner``: which dialogue each row belongs to."""
    layer = sae_layer(sae)
    acts, owner = C41.dialogue_activations(dialogues, [layer], model, batch_size)
    return sae.encode(acts[layer]).float(), owner


def latent_profiles(latents: Float[Tensor, "tokens d_sae"], owner: Int[Tensor, "tokens"], n: int
                    ) -> Float[Tensor, "n d_sae"]:
    """m_j per dialogue: the mean of each latent over the dialogue's response tokens."""
    total = torch.zeros(n, latents.shape[1], dtype=torch.float64).index_add_(0, owner, latents.double())
    count = torch.zeros(n, dtype=torch.float64).index_add_(0, owner, torch.ones(len(owner), dtype=torch.float64))
    return total / count[:, None]


def cohens_d(profiles: Float[Tensor, "n d_sae"], labels: Int[Tensor, "n"]) -> Float[Tensor, "d_sae"]:
    """(μ₁ − μ₀) / s_pooled per latent, s_pooled² the degrees-of-freedom-weighted mean of the two class variances;
    0 for a latent constant over the data (it separates nothing)."""
    labels = torch.as_tensor(labels)
    a, b = profiles[labels == 1].double(), profiles[labels == 0].double()
    pooled = ((len(a) - 1) * a.var(0) + (len(b) - 1) * b.var(0)) / (len(a) + len(b) - 2)
    diff = a.mean(0) - b.mean(0)
    return torch.where(pooled > 0, diff / pooled.clamp_min(1e-300).sqrt(), torch.zeros_like(diff))


class LatentMonitor:
    """A monitor from k latents: score = mean_j sign_j (m_j − μ_j) / s_j, with μ, s the training profiles' mean and
    standard deviation. ``from_data`` picks the k latents with the largest |Cohen's d| on the training data."""

    def __init__(self, latents: Tensor, signs: Tensor, mean: Tensor, std: Tensor, effect: Tensor):
        self.latents, self.signs, self.mean, self.std, self.effect = latents, signs, mean, std, effect

    @staticmethod
    def from_data(profiles: Float[Tensor, "n d_sae"], labels: Int[Tensor, "n"], k: int) -> "LatentMonitor":
        d = cohens_d(profiles, labels)
        latents = d.abs().argsort(descending=True, stable=True)[:k]
        chosen = profiles[:, latents].double()
        return LatentMonitor(latents, torch.sign(d[latents]), chosen.mean(0), chosen.std(0).clamp_min(1e-12),
                             d[latents])

    def score(self, profiles: Float[Tensor, "n d_sae"]) -> Float[Tensor, "n"]:
        z = (profiles[:, self.latents].double() - self.mean) / self.std
        return (z * self.signs).mean(-1)


def latent_probe(profiles: Float[Tensor, "n d_sae"], labels: Int[Tensor, "n"], weight_decay: float = 1e-2):
    """A logistic-regression probe (day 40's LRProbe) on all latent profiles: the supervised upper end of what the
    SAE's basis offers (dead latents are constant and carry no weight)."""
    return P40.LRProbe.from_data(profiles.double(), torch.as_tensor(labels), weight_decay)


def response_positions(owner: Int[Tensor, "tokens"]) -> Int[Tensor, "tokens"]:
    """Each row's position within its dialogue's response (0 = the first response token), for rows grouped by
    dialogue in order, as dialogue_latents returns them."""
    counts = torch.unique_consecutive(owner, return_counts=True)[1]
    return torch.cat([torch.arange(int(n)) for n in counts])


def on_policy_set(results_path: Path | None = None) -> dict:
    """Day 41's on-policy dialogues: SmolLM2's own greedy answers to "in which country is <city>?", asked with the
    instruction to answer truthfully (0) or to lie (1), from day 41's committed run. Returns the dialogues, the
    instruction labels and the answer labels (1 where the answer does not name the right country)."""
    path = results_path or Path(importlib.import_module("days.041").__file__).parent / "results.json"  # by module: right in a practice copy too
    run = json.loads(path.read_text(encoding="utf-8"))["on_policy"]
    dialogues = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                 for q, a in zip(run["prompts"], run["answers"])]
    return {"dialogues": dialogues, "instructed": torch.tensor(run["instructed_lie"]),
            "lie": (~torch.tensor(run["truthful"])).long()}


# ---------------------------------------------------------------- attribution patching against ablation


def latent_contributions(sae, x: Float[Tensor, "pos d_model"], latents: Sequence[int]
                         ) -> Float[Tensor, "k pos d_model"]:
    """c_i = decode(a_i e_i) − decode(0) for each latent i: what latent i adds to the SAE's reconstruction at each
    position (a_i W_dec[i] for a linear decoder). Subtracting it from x is ablating latent i with the error term
    kept: x − decode(a) + decode(a with a_i = 0)."""
    a = sae.encode(x)
    zero = sae.decode(torch.zeros_like(a[:1]))
    out = []
    for i in latents:
        only = torch.zeros_like(a)
        only[:, i] = a[:, i]
        out.append(sae.decode(only) - zero)
    return torch.stack(out)


def downstream_metric(model, layer: int, probe, span: tuple[int, int]):
    """f(x): run blocks layer … layer + DOWNSTREAM − 1 from the residual stream x [1, pos, d] at ``layer`` and
    return the mean over the response span of the probe's logit there (day 41's probe reads that stream)."""
    stop = layer + DOWNSTREAM
    a, b = span

    def f(x: Float[Tensor, "1 pos d_model"]) -> Tensor:
        resid = model(x, start_at_layer=layer, stop_at_layer=stop)
        return probe.score(resid[0, a:b]).mean()

    return f


def residual_at(model, tokens: Int[Tensor, "pos"], layer: int) -> Float[Tensor, "1 pos d_model"]:
    """``blocks.{layer}.hook_resid_pre`` for one unpadded sequence (the forward pass stops before block layer)."""
    with torch.no_grad():
        return model(tokens[None], stop_at_layer=layer)


def ablation_effects(f, x: Float[Tensor, "1 pos d_model"], contributions: Float[Tensor, "k pos d_model"]
                     ) -> Float[Tensor, "k"]:
    """Δ_i = f(x − c_i) − f(x), one forward pass per latent."""
    with torch.no_grad():
        base = f(x)
        return torch.stack([f(x - c[None]) - base for c in contributions]).double()


def attribution_effects(f, x: Float[Tensor, "1 pos d_model"], contributions: Float[Tensor, "k pos d_model"]
                        ) -> Float[Tensor, "k"]:
    """Δ̂_i = −Σ_t c_{i,t} · ∂f/∂x_t: the linear estimate of every ablation from one backward pass."""
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x), x)
    return -(contributions.double() * grad[0].double()).sum((-1, -2))


def effects_on_dialogue(model, tokenizer, sae, dialogue: Dialogue, probe, latents: Sequence[int]) -> dict[str, Tensor]:
    """Both estimates of every listed latent's effect on one dialogue's downstream probe score. ``model``: the
    HookedTransformer; ``tokenizer``: the Hugging Face tokenizer that day 41 renders dialogues with (TransformerLens
    wraps its own copy with a BOS default, which would shift the response span)."""
    layer = sae_layer(sae)
    ids, span = C41.render_dialogue(tokenizer, dialogue)
    x = residual_at(model, torch.tensor(ids), layer)
    contributions = latent_contributions(sae, x[0], latents).detach()
    f = downstream_metric(model, layer, probe, span)
    return {"ablation": ablation_effects(f, x, contributions), "attribution": attribution_effects(f, x, contributions)}


def agreement(ablation: Tensor, attribution: Tensor) -> dict[str, float]:
    """How well attribution stands in for ablation over a set of (dialogue, latent) effects: Pearson r, the fraction
    with the same sign (among effects not both zero), and the slope of the least-squares line through the origin."""
    x, y = ablation.double().flatten(), attribution.double().flatten()
    moving = (x != 0) | (y != 0)
    r = float(np.corrcoef(x.numpy(), y.numpy())[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
    return {"pearson_r": r, "sign_agreement": float((torch.sign(x[moving]) == torch.sign(y[moving])).double().mean()),
            "slope": float((x * y).sum() / (x * x).sum()), "n": int(x.numel())}


# ---------------------------------------------------------------- the experiment


def compute_results(sae, model: str = "smollm2", seed: int = 0, split: dict | None = None, ks: Sequence[int] = K_LATENTS,
                    n_attributed: int = N_ATTRIBUTED, n_boot: int = 1000, on_policy: dict | None = None) -> dict:
    """Everything the post cites, on day 41's split (``split``: instructed_pairs_split's output, if computed) and,
    with ``on_policy`` (on_policy_set's output), on the model's own answers."""
    from checks.models import hooked_model

    start, cpu = time.perf_counter(), time.process_time()
    split = C41.instructed_pairs_split(model, seed) if split is None else split
    layer = sae_layer(sae)
    (train, y_train), (test, y_test) = ((list(d), torch.tensor(l)) for d, l in
                                        (zip(*split["train"]), zip(*split["test"])))
    prof = {}
    token_latents = {}
    for name, dialogues in (("train", train), ("test", test)):
        latents, owner = dialogue_latents(dialogues, sae, model)
        prof[name] = latent_profiles(latents, owner, len(dialogues))
        prof[name + "_fired"] = float((latents > 0).double().sum(-1).mean())
        token_latents[name] = (latents, owner)

    test_scores = {}

    def scored(scores: Tensor, name: str) -> dict:
        test_scores[name] = scores
        lo, hi = C41.bootstrap_auroc_ci(scores, y_test, n_boot=n_boot, seed=seed)
        return {"auroc": C41.auroc(scores, y_test), "ci": [lo, hi]}

    monitors = {k: LatentMonitor.from_data(prof["train"], y_train, k) for k in ks}
    results = {"layer": layer, "d_sae": int(prof["train"].shape[1]), "n_train": len(train), "n_test": len(test),
               "mean_active_latents_per_token": prof["train_fired"],
               "monitor": {str(k): scored(m.score(prof["test"]), f"monitor.{k}") for k, m in monitors.items()},
               "latent_probe": scored(latent_probe(prof["train"], y_train).score(prof["test"]).detach(), "latent_probe")}
    raw = C41.fit_deception_probe(split["train"], [layer], model)
    results["raw_probe_same_layer"] = scored(C41.score_dialogues(test, raw, model), "raw_probe_same_layer")
    top = monitors[max(ks)]
    # Where in the response each chosen latent fires: the first three response tokens ("The city of") are the same
    # words in every dialogue, so their context differs only by the instruction.
    latents, owner = token_latents["test"]
    early = response_positions(owner) < 3
    mass = latents[:, top.latents].double()
    share = mass[early].sum(0) / mass.sum(0).clamp_min(1e-300)
    results["top_latents"] = [{"latent": int(i), "cohens_d": float(d), "share_on_first_3_tokens": float(f)}
                              for i, d, f in zip(top.latents, top.effect, share)]
    results["monitor_share_on_first_3_tokens"] = float(mass[early].sum() / mass.sum())

    if on_policy is not None:
        latents, owner = dialogue_latents(on_policy["dialogues"], sae, model)
        prof_on = latent_profiles(latents, owner, len(on_policy["dialogues"]))
        raw_on = C41.score_dialogues(on_policy["dialogues"], raw, model)
        results["on_policy"] = {"n": len(on_policy["dialogues"]), "n_lies": int(on_policy["lie"].sum())}
        for target in ("instructed", "lie"):
            y = on_policy[target]
            row = {}
            for name, scores in [*((f"monitor_{k}", m.score(prof_on)) for k, m in monitors.items()),
                                 ("raw_probe_same_layer", raw_on)]:
                lo, hi = C41.bootstrap_auroc_ci(scores, y, n_boot=n_boot, seed=seed)
                row[name] = {"auroc": C41.auroc(scores, y), "ci": [lo, hi]}
                test_scores[f"on_policy.{target}.{name}"] = scores
            results["on_policy"][target] = row

    # Attribution against ablation, on the held-out dishonest dialogues, for the strongest latents and as many
    # random latents that fire on them (a control that is not selected for separating the classes).
    downstream = C41.fit_deception_probe(split["train"], [layer + DOWNSTREAM], model).probes[layer + DOWNSTREAM]
    firing = torch.nonzero(prof["test"][y_test == 1].amax(0) > 0).flatten()
    chosen = [int(i) for i in top.latents[:n_attributed]]
    pool = [int(i) for i in firing if int(i) not in chosen]
    g = torch.Generator().manual_seed(seed)
    control = [pool[int(i)] for i in torch.randperm(len(pool), generator=g)[:n_attributed]]
    hooked = hooked_model(model)
    tokenizer = P40.load_model(model)[1]
    effects = {"ablation": [], "attribution": []}
    for dialogue in [d for d, l in zip(test, y_test.tolist()) if l == 1]:
        e = effects_on_dialogue(hooked, tokenizer, sae, dialogue, downstream, chosen + control)
        for key in effects:
            effects[key].append(e[key])
    ablation, attribution = (torch.stack(effects[k]) for k in ("ablation", "attribution"))   # [dialogue, latent]
    n = len(chosen)
    results["attribution"] = {
        "downstream_layer": layer + DOWNSTREAM, "latents": chosen, "control_latents": control,
        "monitor_latents": agreement(ablation[:, :n], attribution[:, :n]),
        "control": agreement(ablation[:, n:], attribution[:, n:]),
        "all": agreement(ablation, attribution),
        "mean_ablation": ablation.mean(0).tolist(), "mean_attribution": attribution.mean(0).tolist(),
        "mean_abs_ablation_monitor": float(ablation[:, :n].abs().mean()),
        "mean_abs_ablation_control": float(ablation[:, n:].abs().mean())}
    # What the figures and the gate read (not written to results.json).
    results["_arrays"] = {"ablation": ablation, "attribution": attribution, "n_monitor": n, "y_test": y_test,
                          "test_scores": test_scores, "profiles": {k: prof[k] for k in ("train", "test")},
                          "y_train": y_train}
    results["wall_seconds"], results["cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu
    return results


def _plot_auroc(results: dict, path: Path) -> None:
    """AUROC with 95% bootstrap intervals: held-out instructed pairs, then the model's own answers (instruction and
    false answer), for each monitor and for day 41's raw-residual probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(results["monitor"])
    names = [f"SAE, {k} latent{'s' if k != '1' else ''}" for k in ks] + ["raw residual"]
    panels = [("held-out instructed pairs", [results["monitor"][k] for k in ks] + [results["raw_probe_same_layer"]])]
    on = results.get("on_policy")
    if on:
        for target, title in (("instructed", "own answers: lie instruction"), ("lie", "own answers: false answer")):
            panels.append((title, [on[target][f"monitor_{k}"] for k in ks] + [on[target]["raw_probe_same_layer"]]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels) + 1.2, 3.2), sharey=True)
    axes = np.atleast_1d(axes)
    y = np.arange(len(names))
    for ax, (title, rows) in zip(axes, panels):
        auc = np.array([r["auroc"] for r in rows])
        err = np.array([[r["auroc"] - r["ci"][0], r["ci"][1] - r["auroc"]] for r in rows]).T
        ax.barh(y, auc, xerr=err, color=["tab:blue"] * len(ks) + ["tab:gray"], capsize=3)
        ax.axvline(0.5, color="k", lw=0.8, ls=":")
        ax.set_xlim(0.0, 1.05)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("AUROC")
    axes[0].set_yticks(y, names)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot(results: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    _plot_auroc(results, fig_dir / "monitor_auroc.png")

    arrays = results["_arrays"]
    n = arrays["n_monitor"]
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    for sl, label, colour in ((slice(0, n), "monitor latents", "tab:blue"), (slice(n, None), "random firing latents",
                                                                             "tab:orange")):
        ax.scatter(arrays["ablation"][:, sl].flatten(), arrays["attribution"][:, sl].flatten(), s=9, alpha=0.6,
                   label=label, color=colour)
    lim = float(max(arrays["ablation"].abs().max(), arrays["attribution"].abs().max())) * 1.05
    ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.8, ls=":")
    ax.set_xlabel("ablation effect Δ on the downstream probe logit")
    ax.set_ylabel("attribution estimate Δ̂")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(fig_dir / "attribution_vs_ablation.png", dpi=120)
    plt.close(fig)


def run_experiment(out_dir: Path) -> dict:
    """Day 47's headline SAE (from the user cache, or trained there first) as a monitor on day 41's split."""
    out_dir = Path(out_dir)
    with single_thread():
        sae = T47.trained_sae()
        results = compute_results(sae, on_policy=on_policy_set())
    _plot(results, out_dir)
    results.pop("_arrays")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
