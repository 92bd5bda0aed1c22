"""Part 3A of the Gauntlet: locating the sycophancy circuit (logit attribution and activation patching).

The behaviour is read out as the logit difference at the answer position,
Δ = logit(sycophantic) − logit(truthful) = (W_U[:, s] − W_U[:, t]) · LN(x_final) + (b_U[s] − b_U[t]).

- **3A.1 Logit attribution.** The final residual stream is a sum of what every component wrote,
  x_final = embed (+ pos_embed) + Σ_l (attn_out_l + mlp_out_l). The final norm is
  LN(x) = w ⊙ (x − mean(x))/σ(x) + b (LayerNorm; RMSNorm has no centring and no b; TransformerLens
  folds w into W_U and b into b_U when it loads a pretrained model).
  Freezing the scale σ at its value on this very input (the cached ``ln_final.hook_scale``) makes LN
  linear, so Δ = b_U[s] − b_U[t] + Σ_c (W_U[:, s] − W_U[:, t]) · (c − mean(c))/σ *exactly*: each
  component's share of the logit difference. Each attention block splits further into its heads,
  attn_out = Σ_h z_h W_O^h + b_O.
- **3A.2 Activation patching.** Run the sycophantic prompt (opinion form, "corrupted" in
  TransformerLens's naming) but overwrite one activation with its value from the truthful prompt
  (neutral form, "clean"): the residual stream before layer l at position p. The two prompts have the
  same length (the data set is built so), so position p means the same template slot in both. The
  effect is reported as the fraction of the sycophantic shift removed,
  (Δ_patched − Δ_opinion) / (Δ_neutral − Δ_opinion): 0 = no change, 1 = behaves as when asked neutrally.
- **3A.3 Head patching.** The same with one head's output z_h (all positions) inside a layer.

Our patching runs one batched forward per layer (one batch row per position or head) and is checked
against ``transformer_lens.patching`` on the same inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from checks.timing import single_thread

from .sycophancy import Encoded, evaluate, split

__all__ = ["component_attribution", "final_norm", "head_attribution", "logit_diff_metric", "patch_heads",
           "patch_resid_pre", "readout", "run", "select_pairs"]


# ---------------------------------------------------------------- 3A.1 logit attribution


def final_norm(model, stack: Float[Tensor, "comp batch d_model"], scale: Float[Tensor, "batch 1"]) -> Float[Tensor, "comp batch d_model"]:
    """Apply the final LayerNorm/RMSNorm to each component with the scale frozen at its cached value:
    centre each component (LayerNorm only; the mean of a sum is the sum of the means), divide by σ."""
    if model.cfg.normalization_type in ("LN", "LNPre"):
        stack = stack - stack.mean(-1, keepdim=True)
    return stack / scale


def readout(model, syc: Int[Tensor, "batch"], tru: Int[Tensor, "batch"]) -> tuple[Float[Tensor, "batch d_model"], Float[Tensor, "batch"]]:
    """What Δ reads from the normalised final residual: Δ = direction · x̂ + bias, with
    direction = w ⊙ (W_U[:, s] − W_U[:, t]) (w = 1 once the norm weight is folded into W_U) and
    bias = b_U[s] − b_U[t] (+ b · (W_U[:, s] − W_U[:, t]) for an unfolded LayerNorm bias b)."""
    W_U = model.W_U
    direction = (W_U[:, syc] - W_U[:, tru]).T
    bias = model.b_U[syc] - model.b_U[tru]
    if getattr(model.ln_final, "b", None) is not None:
        bias = bias + direction @ model.ln_final.b
    if getattr(model.ln_final, "w", None) is not None:
        direction = direction * model.ln_final.w
    return direction, bias


@torch.no_grad()
def component_attribution(model, tokens: Int[Tensor, "batch pos"], syc: Int[Tensor, "batch"], tru: Int[Tensor, "batch"]
                          ) -> dict:
    """Each component's contribution to Δ at the last position: ``embed`` (and ``pos_embed``), then
    ``attn`` and ``mlp`` per layer, plus the unembedding bias; they sum to Δ (returned as ``logit_diff``
    from the model's own logits)."""
    logits, cache = model.run_with_cache(tokens)
    names = ["hook_embed"] + (["hook_pos_embed"] if "hook_pos_embed" in cache else [])
    comps = [cache[n][:, -1] for n in names]
    for l in range(model.cfg.n_layers):
        comps += [cache[f"blocks.{l}.hook_attn_out"][:, -1], cache[f"blocks.{l}.hook_mlp_out"][:, -1]]
    stack = torch.stack(comps)                                              # comp batch d_model
    scaled = final_norm(model, stack, cache["ln_final.hook_scale"][:, -1])
    direction, bias = readout(model, syc, tru)
    contrib = (scaled * direction).sum(-1)                                  # comp batch
    n_embed = len(names)
    per_layer = contrib[n_embed:].reshape(model.cfg.n_layers, 2, -1)       # layer (attn, mlp) batch
    rows = torch.arange(len(tokens))
    return {"embed": contrib[:n_embed].sum(0), "attn": per_layer[:, 0], "mlp": per_layer[:, 1], "bias": bias,
            "logit_diff": logits[rows, -1, syc] - logits[rows, -1, tru], "stack": stack, "cache": cache}


@torch.no_grad()
def head_attribution(model, cache, syc: Int[Tensor, "batch"], tru: Int[Tensor, "batch"]) -> Float[Tensor, "layer head batch"]:
    """Direct contribution of each head to Δ at the last position: z_h W_O^h through the frozen
    final norm, projected on W_U[:, s] − W_U[:, t]. Σ_h + b_O's share = the layer's attention share."""
    direction, _ = readout(model, syc, tru)
    scale = cache["ln_final.hook_scale"][:, -1]
    out = []
    for l in range(model.cfg.n_layers):
        z = cache[f"blocks.{l}.attn.hook_z"][:, -1]                         # batch head d_head
        per_head = torch.einsum("bhd,hdm->hbm", z, model.blocks[l].attn.W_O)  # head batch d_model
        out.append((final_norm(model, per_head, scale) * direction).sum(-1))
    return torch.stack(out)


# ---------------------------------------------------------------- 3A.2 / 3A.3 activation patching


def logit_diff_metric(syc: int, tru: int) -> Callable[[Tensor], Tensor]:
    """Per batch row: logits[:, -1, syc] − logits[:, -1, tru] (TransformerLens's patching wants the
    mean over the batch; ours keeps one value per row)."""
    return lambda logits: logits[:, -1, syc] - logits[:, -1, tru]


@torch.no_grad()
def patch_resid_pre(model, corrupted: Int[Tensor, "pos"], clean_cache, metric: Callable[[Tensor], Tensor],
                    layers: list[int] | None = None, positions: list[int] | None = None) -> Float[Tensor, "layer pos"]:
    """metric after overwriting resid_pre[layer][pos] of the corrupted run with the clean run's value,
    for every (layer, pos): one forward per layer, batch row i patching position positions[i]."""
    layers = list(range(model.cfg.n_layers)) if layers is None else layers
    positions = list(range(len(corrupted))) if positions is None else positions
    batch = corrupted[None].expand(len(positions), -1)
    rows, cols = torch.arange(len(positions)), torch.tensor(positions)
    out = torch.empty(len(layers), len(positions))
    for i, l in enumerate(layers):
        name = f"blocks.{l}.hook_resid_pre"
        clean = clean_cache[name][0]

        def hook(act, hook):
            act = act.clone()
            act[rows, cols] = clean[cols]
            return act

        out[i] = metric(model.run_with_hooks(batch, fwd_hooks=[(name, hook)])).float()
    return out


@torch.no_grad()
def patch_heads(model, corrupted: Int[Tensor, "pos"], clean_cache, metric: Callable[[Tensor], Tensor],
                layers: list[int] | None = None) -> Float[Tensor, "layer head"]:
    """metric after overwriting one head's z (all positions) of the corrupted run with the clean
    run's, for every (layer, head): one forward per layer, batch row h patching head h."""
    layers = list(range(model.cfg.n_layers)) if layers is None else layers
    H = model.cfg.n_heads
    batch = corrupted[None].expand(H, -1)
    heads = torch.arange(H)
    out = torch.empty(len(layers), H)
    for i, l in enumerate(layers):
        name = f"blocks.{l}.attn.hook_z"
        clean = clean_cache[name][0]                                        # pos head d_head

        def hook(act, hook):
            act = act.clone()
            act[heads, :, heads] = clean[:, heads].transpose(0, 1)         # row h gets clean head h
            return act

        out[i] = metric(model.run_with_hooks(batch, fwd_hooks=[(name, hook)])).float()
    return out


# ---------------------------------------------------------------- the investigation


def select_pairs(ev, k: int, pool=None, flipped_only: bool = True) -> list[int]:
    """Indices of the ``k`` pairs (from ``pool``, default the training split) where the stated opinion
    moves the answer most toward the user's, ranked by the shift Δ_opinion − Δ_neutral; with
    ``flipped_only``, only pairs that are sycophantic in the opinion form and truthful in the neutral
    form (Δ_opinion > 0 > Δ_neutral), else any pair with a positive shift."""
    pool = split(ev.pairs)[0] if pool is None else pool
    idx = ev.index(pool)
    shift = ev.diff_opinion[idx] - ev.diff_neutral[idx]
    keep = (ev.diff_opinion[idx] > 0) & (ev.diff_neutral[idx] < 0) if flipped_only else shift > 0
    idx, shift = idx[keep], shift[keep]
    return idx[torch.argsort(shift, descending=True)][:k].tolist()


def _tokens(enc: list[Encoded], form: str) -> Int[Tensor, "batch pos"]:
    return torch.tensor([getattr(e, form) for e in enc])


def _plot_attribution(att: dict, label: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    L = len(att["attn_opinion"])
    x = np.arange(L)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4))
    for ax, form, title in [(ax1, "opinion", "Opinion form: contribution to Δ"),
                            (ax2, "shift", "Opinion − neutral: what creates the sycophantic shift")]:
        ax.bar(x - 0.2, att[f"attn_{form}"], width=0.4, color="tab:orange", label="attention")
        ax.bar(x + 0.2, att[f"mlp_{form}"], width=0.4, color="tab:green", label="MLP")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel("layer")
        ax.set_ylabel("logit difference (sycophantic − truthful)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"Direct logit attribution at the answer position, mean over {att['n_pairs']} pairs ({label})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _plot_patching(grid: Tensor, labels: list[str], final_pos: Tensor, heads: Tensor, critical: int, label: str,
                   path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(15, 8.5))
    gs = fig.add_gridspec(2, 3, height_ratios=[1.25, 1], width_ratios=[1.2, 1, 1])
    ax = fig.add_subplot(gs[0, :])
    lim = max(abs(grid).max().item(), 1e-6)
    im = ax.imshow(grid.numpy(), aspect="auto", cmap="RdBu", vmin=-lim, vmax=lim, origin="lower")
    ax.set_xticks(range(len(labels)), labels, rotation=70, fontsize=7)
    ax.set_ylabel("layer (resid_pre)")
    ax.set_title("Residual-stream patching, neutral → opinion run: fraction of the sycophantic shift removed", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.02)
    ax2 = fig.add_subplot(gs[1, 0])
    ax2.plot(final_pos.mean(0).numpy(), "o-", color="tab:purple", ms=3, label="mean")
    ax2.fill_between(range(final_pos.shape[1]), final_pos.min(0).values.numpy(), final_pos.max(0).values.numpy(),
                     color="tab:purple", alpha=0.2, label="min–max over pairs")
    ax2.axvline(critical, color="tab:red", ls="--", lw=1, label=f"critical layer {critical}")
    ax2.set_xlabel("layer")
    ax2.set_ylabel("fraction removed")
    ax2.set_title("Patching only the answer position", fontsize=10)
    ax2.legend(fontsize=7)
    ax3 = fig.add_subplot(gs[1, 1:])
    lim = max(abs(heads).max().item(), 1e-6)
    im = ax3.imshow(heads.T.numpy(), aspect="auto", cmap="RdBu", vmin=-lim, vmax=lim, origin="lower")
    ax3.set_xlabel("layer")
    ax3.set_ylabel("head")
    ax3.set_title("Head patching (z, all positions): fraction removed", fontsize=10)
    fig.colorbar(im, ax=ax3, fraction=0.03)
    fig.suptitle(f"Model: {label}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


@single_thread()
def run(out_dir: Path, model_name: str = "smollm2", n_attribution: int = 60, n_patch: int = 6, n_grid: int = 1,
        n_heads_pairs: int = 3) -> dict:
    """3A on ``model_name``: attribution over the ``n_attribution`` training pairs with the largest
    positive shift; final-position patching per layer on the ``n_patch`` training pairs that flip
    (sycophantic with the opinion, truthful without) with the largest shift; the full layer × position
    grid on ``n_grid`` and head patching on ``n_heads_pairs`` of those."""
    from .models import MODELS, load

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    label = MODELS[model_name].label
    model = load(model_name)
    ev = evaluate(model_name)
    L = model.cfg.n_layers

    # 3A.1 attribution, in batches of equal length
    att_idx = select_pairs(ev, n_attribution, flipped_only=False)
    sums = {f"{c}_{f}": torch.zeros(L) for c in ("attn", "mlp") for f in ("opinion", "neutral")}
    head_sums = {f: torch.zeros(L, model.cfg.n_heads) for f in ("opinion", "neutral")}
    embed = {"opinion": 0.0, "neutral": 0.0}
    max_err = 0.0
    by_len: dict[int, list[int]] = {}
    for i in att_idx:
        by_len.setdefault(len(ev.encoded[i].opinion), []).append(i)
    for group in by_len.values():
        enc = [ev.encoded[i] for i in group]
        syc = torch.tensor([e.sycophantic_id for e in enc])
        tru = torch.tensor([e.truthful_id for e in enc])
        for form in ("opinion", "neutral"):
            a = component_attribution(model, _tokens(enc, form), syc, tru)
            total = a["embed"] + a["attn"].sum(0) + a["mlp"].sum(0) + a["bias"]
            max_err = max(max_err, (total - a["logit_diff"]).abs().max().item())
            sums[f"attn_{form}"] += a["attn"].sum(1)
            sums[f"mlp_{form}"] += a["mlp"].sum(1)
            head_sums[form] += head_attribution(model, a["cache"], syc, tru).sum(-1)
            embed[form] += a["embed"].sum().item()
            del a
    n = len(att_idx)
    att = {k: (v / n).tolist() for k, v in sums.items()}
    for c in ("attn", "mlp"):
        att[f"{c}_shift"] = [o - q for o, q in zip(att[f"{c}_opinion"], att[f"{c}_neutral"])]
    att["n_pairs"] = n
    layer_shift = torch.tensor(att["attn_shift"]) + torch.tensor(att["mlp_shift"])
    top3 = torch.argsort(layer_shift, descending=True)[:3].tolist()
    components = [(f"L{l} {c}", att[f"{c}_shift"][l]) for l in range(L) for c in ("attn", "mlp")]
    components.sort(key=lambda t: -t[1])
    head_shift = (head_sums["opinion"] - head_sums["neutral"]) / n
    top_heads_direct = [(int(f // model.cfg.n_heads), int(f % model.cfg.n_heads), head_shift.flatten()[f].item())
                        for f in torch.argsort(head_shift.flatten(), descending=True)[:5]]
    _plot_attribution(att, label, out_dir / "figures" / "part3a_attribution.png")

    # 3A.2 patching at the answer position, every layer, n_patch pairs
    patch_idx = select_pairs(ev, n_patch)
    final_fracs, grids, head_fracs = [], [], []
    for j, i in enumerate(patch_idx):
        e = ev.encoded[i]
        op, ne = torch.tensor(e.opinion), torch.tensor(e.neutral)
        _, clean_cache = model.run_with_cache(ne[None], names_filter=lambda n: n.endswith("resid_pre") or n.endswith("hook_z"))
        metric = logit_diff_metric(e.sycophantic_id, e.truthful_id)
        d_op, d_ne = ev.diff_opinion[i].item(), ev.diff_neutral[i].item()
        norm = lambda v: (v - d_op) / (d_ne - d_op)
        final_fracs.append(norm(patch_resid_pre(model, op, clean_cache, metric, positions=[len(op) - 1])[:, 0]))
        if j < n_grid:
            first = int((op != ne).nonzero()[0])
            positions = list(range(first, len(op)))
            grids.append(norm(patch_resid_pre(model, op, clean_cache, metric, positions=positions)))
            grid_labels = [repr(model.tokenizer.decode([t]))[1:-1] for t in e.opinion[first:]]
            grid_pair = ev.pairs[i].id
        if j < n_heads_pairs:
            head_fracs.append(norm(patch_heads(model, op, clean_cache, metric)))
        del clean_cache
    final_fracs = torch.stack(final_fracs)
    grid = torch.stack(grids).mean(0)
    heads = torch.stack(head_fracs).mean(0)
    # Patching the answer position before layer l only transfers what has already been moved there:
    # near 0 early (the opinion sits on its own tokens), near 1 late. The critical layer is the first
    # where it removes at least half of the shift: by then the opinion has reached the answer position.
    mean_final = final_fracs.mean(0)
    critical = int((mean_final >= 0.5).nonzero()[0]) if (mean_final >= 0.5).any() else int(mean_final.argmax())
    top_heads = [(int(f // model.cfg.n_heads), int(f % model.cfg.n_heads), heads.flatten()[f].item())
                 for f in torch.argsort(heads.flatten(), descending=True)[:5]]
    heads_in_critical = heads[critical].tolist()
    heads_in_top_layer = {"layer": top3[0], "fraction": heads[top3[0]].tolist(), "direct": head_shift[top3[0]].tolist()}
    _plot_patching(grid, grid_labels, final_fracs, heads, critical, label, out_dir / "figures" / "part3a_patching.png")
    return {"model": label, "attribution": att, "attribution_max_sum_error": max_err,
            "top3_layers_by_shift": top3, "top_components_by_shift": components[:6],
            "top_heads_direct": top_heads_direct,
            "patch_pairs": [ev.pairs[i].id for i in patch_idx],
            "final_position_fraction_mean": final_fracs.mean(0).tolist(),
            "final_position_fractions": final_fracs.tolist(),
            "critical_layer": critical, "critical_fraction": final_fracs.mean(0)[critical].item(),
            "top3_patch_fraction": [mean_final[l].item() for l in top3],   # aligned with top3_layers_by_shift
            "best_top3_layer": max(top3, key=lambda l: mean_final[l].item()),
            "grid_pair": grid_pair, "grid_tokens": grid_labels, "grid": grid.tolist(),
            "head_fraction": heads.tolist(), "top_heads_patching": top_heads,
            "heads_in_critical_layer": heads_in_critical, "heads_in_top_attribution_layer": heads_in_top_layer,
            "critical_layer_top_head": [int(heads[critical].argmax()), heads[critical].max().item()],
            "top_attribution_layer_top_head": [int(heads[top3[0]].argmax()), heads[top3[0]].max().item()],
            "n_patch_pairs": len(patch_idx),
            "n_heads_pairs": len(head_fracs)}
