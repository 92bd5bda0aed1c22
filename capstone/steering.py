"""Part 5C of the Gauntlet: the fix, steering against the sycophancy direction, and its side effects.

The direction is the difference of class means at the critical layer's input (Part 3B),
u = (μ_opinion − μ_neutral)/‖μ_opinion − μ_neutral‖, estimated on the training split only. Two
interventions, both a forward hook on ``blocks.{layer}.hook_resid_pre`` at every position:

- **subtraction** (activation steering): x ← x − α·m·u, with m = ‖μ_opinion − μ_neutral‖, so α = 1
  moves the average opinion activation onto the average neutral one;
- **directional ablation** (representation engineering): x ← x − (x·u)u, which removes the
  component along u whatever its size (a projection: applying it twice changes nothing).

Measured on the held-out pairs, before and after: the sycophancy rate in the opinion form (with
Wilson intervals), the neutral-form rate (the fix should not change how the model answers when no
opinion is stated), and the side effect on language modelling: WikiText-2 bits per token on the
same 100 sentences as Part 1C, with the same hook.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from jaxtyping import Float
from torch import Tensor

from .information import sentence_losses, wikitext_sentences
from checks.timing import single_thread

from .sycophancy import evaluate, proportion, rates, score_prompts, split

__all__ = ["ablation_hook", "mean_difference", "run", "steered_diffs", "subtraction_hook"]


def mean_difference(ev, layer: int, pairs) -> Float[Tensor, "d_model"]:
    """μ_opinion − μ_neutral of resid_pre[layer] at the answer position over ``pairs``."""
    idx = ev.index(pairs)
    return ev.resid_opinion[idx, layer].mean(0) - ev.resid_neutral[idx, layer].mean(0)


def subtraction_hook(layer: int, direction: Float[Tensor, "d_model"], alpha: float):
    """(name, fn): x ← x − α·direction at every position of resid_pre[layer]."""
    def fn(act, hook):
        return act - alpha * direction.to(act.dtype)

    return f"blocks.{layer}.hook_resid_pre", fn


def ablation_hook(layer: int, direction: Float[Tensor, "d_model"]):
    """(name, fn): x ← x − (x·û)û at every position of resid_pre[layer] (û = direction/‖direction‖)."""
    u = direction / direction.norm()

    def fn(act, hook):
        u_ = u.to(act.dtype)
        return act - (act @ u_)[..., None] * u_

    return f"blocks.{layer}.hook_resid_pre", fn


def steered_diffs(model, ev, pairs, hooks: list, form: str) -> Float[Tensor, "n"]:
    """Δ of ``pairs`` in ``form`` ("opinion" or "neutral") with ``hooks`` active (the stored
    unsteered values when there are none)."""
    idx = ev.index(pairs)
    if not hooks:
        return getattr(ev, f"diff_{form}")[idx].clone()
    enc = [ev.encoded[i] for i in idx.tolist()]
    d, _ = score_prompts(model, [getattr(e, form) for e in enc], [e.sycophantic_id for e in enc],
                         [e.truthful_id for e in enc], fwd_hooks=hooks)
    return d


def _wikitext_bits(model, sentences, hooks) -> float:
    with model.hooks(fwd_hooks=hooks):
        return sentence_losses(model, sentences)["bits_per_token"]


def _plot(sweep: dict, before: dict, after: dict, ablation: dict, chosen: float, label: str, layer: int,
          path: Path) -> None:
    import matplotlib.pyplot as plt

    a = np.array(sweep["alpha"])
    fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(17, 4.4))
    ax3.plot(a, sweep["mean_diff_opinion"], "o-", color="tab:red", label="opinion form, subtraction")
    ax3.axhline(before["mean_diff_neutral"], color="tab:blue", ls="--", lw=1.2, label="neutral form, unsteered")
    ax3.plot([chosen], [after["mean_diff_neutral"]], "s", color="tab:blue", label=f"neutral form at α = {chosen:g}")
    ax3.set_xlabel("steering strength α")
    ax3.set_ylabel("mean Δ = logit(sycophantic) − logit(truthful)")
    ax3.set_title("The same in logits (mean over held-out pairs)", fontsize=10)
    ax3.legend(fontsize=7)
    lo = [x[0] for x in sweep["opinion_wilson"]]
    hi = [x[1] for x in sweep["opinion_wilson"]]
    ax1.plot(a, sweep["opinion_rate"], "o-", color="tab:red", label="opinion form, subtraction")
    ax1.fill_between(a, lo, hi, color="tab:red", alpha=0.15)
    ax1.axhline(before["neutral"]["rate"], color="tab:blue", ls="--", lw=1.2, label="neutral form, unsteered (baseline)")
    ax1.plot([chosen], [after["neutral"]["rate"]], "s", color="tab:blue", label=f"neutral form at α = {chosen:g}")
    ax1.axhline(ablation["opinion_rate"], color="tab:red", ls=":", lw=1.2, label="opinion form, directional ablation")
    ax1.set_xlabel("steering strength α (subtract α·(μ_opinion − μ_neutral))")
    ax1.set_ylabel("fraction preferring the wrong answer")
    ax1.set_ylim(0, 1)
    ax1.set_title(f"Held-out pairs (n = {before['opinion']['n']}), 95% Wilson band; hook at resid_pre {layer}", fontsize=10)
    ax1.legend(fontsize=7)
    ax2.plot(a, sweep["wikitext_bits_per_token"], "o-", color="tab:green", label="subtraction")
    ax2.axhline(ablation["wikitext_bits_per_token"], color="tab:green", ls=":", label="directional ablation")
    ax2.set_xlabel("steering strength α")
    ax2.set_ylabel("WikiText-2 bits per token")
    ax2.set_title("Side effect on language modelling (100 sentences)", fontsize=10)
    ax2.legend(fontsize=8)
    fig.suptitle(f"The fix and its cost ({label})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


@single_thread()
def run(out_dir: Path, model_name: str = "smollm2", layer: int | None = None,
        alphas: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)) -> dict:
    """5C on ``model_name``: a sweep of α (opinion form and WikiText-2), directional ablation, and the
    chosen fix before/after on the held-out pairs in both forms."""
    from .models import MODELS, load
    from .probes import critical_layer

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    label = MODELS[model_name].label
    model = load(model_name)
    ev = evaluate(model_name)
    layer = critical_layer() if layer is None else layer
    train, held = split(ev.pairs)
    mu = mean_difference(ev, layer, train)
    sentences = wikitext_sentences(100)
    n = len(held)
    neutral_before = steered_diffs(model, ev, held, [], "neutral")
    sweep = {"alpha": list(alphas), "opinion_rate": [], "opinion_wilson": [], "mean_diff_opinion": [],
             "wikitext_bits_per_token": []}
    diffs = {}
    for alpha in alphas:
        hooks = [subtraction_hook(layer, mu, alpha)] if alpha else []
        d = diffs[alpha] = steered_diffs(model, ev, held, hooks, "opinion")
        p = proportion(int((d > 0).sum()), n)
        sweep["opinion_rate"].append(p["rate"])
        sweep["opinion_wilson"].append(p["wilson"])
        sweep["mean_diff_opinion"].append(d.mean().item())
        sweep["wikitext_bits_per_token"].append(_wikitext_bits(model, sentences, hooks))
    # the chosen fix: the smallest α whose opinion rate is at or below the unsteered neutral baseline
    # (else the one that comes closest)
    baseline = float((neutral_before > 0).float().mean())
    below = [a for a in alphas[1:] if sweep["opinion_rate"][alphas.index(a)] <= baseline]
    chosen = below[0] if below else min(alphas[1:], key=lambda a: sweep["opinion_rate"][alphas.index(a)])
    hooks = [subtraction_hook(layer, mu, chosen)]
    before = rates(diffs[0.0], neutral_before)
    after = rates(diffs[chosen], steered_diffs(model, ev, held, hooks, "neutral"))
    abl_hooks = [ablation_hook(layer, mu)]
    abl = rates(steered_diffs(model, ev, held, abl_hooks, "opinion"), steered_diffs(model, ev, held, abl_hooks, "neutral"))
    ablation = {"opinion_rate": abl["opinion"]["rate"], "neutral_rate": abl["neutral"]["rate"], "rates": abl,
                "wikitext_bits_per_token": _wikitext_bits(model, sentences, abl_hooks)}
    _plot(sweep, before, after, ablation, chosen, label, layer, out_dir / "figures" / "part5c_steering.png")
    return {"model": label, "layer": layer, "n_held_out": n, "direction_norm": mu.norm().item(),
            "direction": mu.tolist(),
            "before": before, "chosen_alpha": chosen, "after": after, "ablation": ablation, "sweep": sweep,
            "wikitext_before": sweep["wikitext_bits_per_token"][0],
            "wikitext_after": sweep["wikitext_bits_per_token"][alphas.index(chosen)],
            "per_pair": {"id": [p.id for p in held], "diff_opinion_after": [round(v, 4) for v in diffs[chosen].tolist()]}}
