"""Day 37: hooks: caching, ablation and activation patching (ARENA 1.2 Intro to Mech Interp, §3).

A ``HookPoint`` is an identity ``nn.Module``; a hook is a function ``f(activation, hook) -> new
activation or None`` registered on it as a PyTorch forward hook. Returning None only *reads*
(caching); returning a tensor *replaces* the activation for the rest of the forward pass
(ablating, patching). ``run_with_hooks`` adds the hooks for one forward pass and removes them.

- Caching: ``run_with_cache`` is a forward hook that stores every activation.
- Ablation of head h in layer l: replace its output z_h = Σ_j A_hij v_hj by 0 (zero ablation)
  or by its mean over a dataset (mean ablation); the block's attention output is then
  Σ_{h'≠h} z_h' W_O[h'] + (0 or mean_h W_O[h]) + b_O. The change in loss measures what the
  model needed from that head (including everything downstream that read it).
- Activation patching: run a *corrupted* input, replace one activation by its value on the
  *clean* input, and measure how much of the clean behaviour returns:

      patched score = (m(patched) - m(corrupted)) / (m(clean) - m(corrupted)),

  1 where the activation carries everything the metric needs, 0 where it carries nothing.
"""

from __future__ import annotations

import importlib
import json
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from checks.timing import single_thread

tl_setup = importlib.import_module("days.035.tl_setup")
act_name = tl_setup.act_name

NameFilter = Callable[[str], bool]


# ---------------------------------------------------------------- caching


def _as_filter(names: NameFilter | list[str] | str | None) -> NameFilter:
    if names is None:
        return lambda name: True
    if isinstance(names, str):
        return lambda name: name == names
    if isinstance(names, (list, tuple, set)):
        wanted = set(names)
        return lambda name: name in wanted
    return names


@torch.no_grad()
def cache_with_hooks(model, tokens: Int[Tensor, "batch pos"], names: NameFilter | list[str] | str | None = None
                     ) -> tuple[Tensor, dict[str, Tensor]]:
    """run_with_cache, rebuilt: a forward hook on every selected HookPoint stores its activation."""
    store: dict[str, Tensor] = {}

    def save(activation: Tensor, hook) -> None:
        store[hook.name] = activation.detach()

    logits = model.run_with_hooks(tokens, fwd_hooks=[(_as_filter(names), save)])
    return logits, store


@torch.no_grad()
def cache_with_torch_hooks(model, tokens: Int[Tensor, "batch pos"], names: NameFilter | list[str] | str | None = None
                           ) -> tuple[Tensor, dict[str, Tensor]]:
    """The same with no TransformerLens machinery at all: ``register_forward_hook`` on the HookPoint modules
    (identity modules, so their output is the activation), handles removed afterwards."""
    keep = _as_filter(names)
    store: dict[str, Tensor] = {}
    handles = []
    for name, module in model.hook_dict.items():
        if keep(name):
            handles.append(module.register_forward_hook(
                lambda module, inputs, output, name=name: store.__setitem__(name, output.detach())))
    try:
        logits = model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return logits, store


# ---------------------------------------------------------------- losses and metrics


def next_token_loss(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> Tensor:
    """Mean cross-entropy of predicting tokens[:, 1:] from logits[:, :-1] (nats per token)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def logit_difference(logits: Float[Tensor, "batch pos d_vocab"], correct: Int[Tensor, "batch"],
                     wrong: Int[Tensor, "batch"]) -> Tensor:
    """Mean over the batch of logit[correct] - logit[wrong] at the last position."""
    last = logits[:, -1]
    return (last.gather(-1, correct[:, None]) - last.gather(-1, wrong[:, None])).mean()


# ---------------------------------------------------------------- ablation


def ablate_head_hook(z: Float[Tensor, "batch pos head d_head"], hook, head: int,
                     replacement: Float[Tensor, "d_head"] | Float[Tensor, "pos d_head"] | None = None) -> Tensor:
    """A hook on ``hook_z``: head ``head``'s output becomes 0 (zero ablation) or ``replacement`` (mean ablation)."""
    z = z.clone()
    z[:, :, head] = 0.0 if replacement is None else replacement
    return z


def restart_inputs(model, tokens: Int[Tensor, "batch pos"]) -> dict[str, Tensor]:
    """What a forward pass restarted at a layer (``start_at_layer``) needs besides the residual stream, to
    compute what the full pass computes: the positional embedding of a shortformer model (added to the
    queries' and keys' inputs in every layer, never to the residual stream, so ``resid_pre`` lacks it) and
    the attention mask of left-padded input. Both come from TransformerLens's own ``input_to_embed``."""
    _, _, shortformer_pos_embed, attention_mask = model.input_to_embed(tokens)
    extra = {"shortformer_pos_embed": shortformer_pos_embed, "attention_mask": attention_mask}
    return {k: v for k, v in extra.items() if v is not None}


@torch.no_grad()
def ablated_logits(model, tokens: Int[Tensor, "batch pos"], layer: int, head: int,
                   replacement: Tensor | None = None, resid_pre: Tensor | None = None) -> Float[Tensor, "batch pos d_vocab"]:
    """The logits with one head ablated through ``blocks.{layer}.attn.hook_z``.

    Blocks before ``layer`` do not see the ablation, so given their output (the clean run's
    ``blocks.{layer}.hook_resid_pre``) the forward pass can start at ``layer``: the same logits for
    about half the work on average (with ``restart_inputs``: a shortformer's positions)."""
    hook = partial(ablate_head_hook, head=head, replacement=replacement)
    fwd_hooks = [(act_name("z", layer), hook)]
    if resid_pre is None:
        return model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)
    return model.run_with_hooks(resid_pre, start_at_layer=layer, fwd_hooks=fwd_hooks, **restart_inputs(model, tokens))


@torch.no_grad()
def ablated_loss(model, tokens: Int[Tensor, "batch pos"], layer: int, head: int,
                 replacement: Tensor | None = None, resid_pre: Tensor | None = None) -> float:
    """The next-token loss with one head ablated (``ablated_logits``)."""
    return next_token_loss(ablated_logits(model, tokens, layer, head, replacement, resid_pre), tokens).item()


def _z_means(cache: dict[str, Tensor], n_layers: int) -> Float[Tensor, "layer head d_head"]:
    return torch.stack([cache[act_name("z", l)].mean((0, 1)) for l in range(n_layers)])


@torch.no_grad()
def head_means(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer head d_head"]:
    """Each head's output z averaged over the batch and all positions (the mean-ablation values)."""
    _, cache = cache_with_hooks(model, tokens, lambda name: name.endswith("hook_z"))
    return _z_means(cache, model.cfg.n_layers)


@torch.no_grad()
def ablation_loss_increase(model, tokens: Int[Tensor, "batch pos"], kind: str = "mean",
                           heads: list[tuple[int, int]] | None = None) -> Float[Tensor, "layer head"]:
    """loss(head ablated) - loss(clean) for every head (or the listed ones; the others are NaN)."""
    if kind not in ("mean", "zero"):
        raise ValueError(f"kind must be 'mean' or 'zero', not {kind!r}")
    logits, cache = cache_with_hooks(model, tokens, lambda n: n.endswith("hook_z") or n.endswith("hook_resid_pre"))
    clean = next_token_loss(logits, tokens).item()
    means = _z_means(cache, model.cfg.n_layers)
    out = torch.full((model.cfg.n_layers, model.cfg.n_heads), float("nan"))
    for layer, head in heads or [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]:
        replacement = None if kind == "zero" else means[layer, head]
        out[layer, head] = ablated_loss(model, tokens, layer, head, replacement,
                                        resid_pre=cache[act_name("resid_pre", layer)]) - clean
    return out


# ---------------------------------------------------------------- activation patching


def patch_hook(activation: Tensor, hook, clean_cache: dict[str, Tensor], position: int | None = None,
               head: int | None = None) -> Tensor:
    """Replace the activation by the clean run's, at one position and/or one head (all of them if None).

    Residual activations are [batch, pos, d_model]; per-head ones (hook_z, hook_q, ...) are
    [batch, pos, head, d_head]: position indexes axis 1, head axis 2.
    """
    clean = clean_cache[hook.name]
    index = (slice(None), slice(None) if position is None else position) + (() if head is None else (head,))
    activation = activation.clone()
    activation[index] = clean[index]
    return activation


@torch.no_grad()
def run_patched(model, corrupted: Int[Tensor, "batch pos"], clean_cache: dict[str, Tensor], name: str,
                position: int | None = None, head: int | None = None,
                corrupted_cache: dict[str, Tensor] | None = None) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of the corrupted input with activation ``name`` (in block L) patched in from the clean run.

    Blocks before L are unaffected, so given the corrupted run's ``blocks.L.hook_resid_pre``
    (``corrupted_cache``) the forward pass starts at block L (with ``restart_inputs``: a shortformer's
    positions)."""
    hook = partial(patch_hook, clean_cache=clean_cache, position=position, head=head)
    if corrupted_cache is None:
        return model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])
    _, layer, _ = tl_setup.parse_act_name(name)
    return model.run_with_hooks(corrupted_cache[act_name("resid_pre", layer)], start_at_layer=layer,
                                fwd_hooks=[(name, hook)], **restart_inputs(model, corrupted))


def normalised(metric: Callable[[Tensor], Tensor], clean_logits: Tensor, corrupted_logits: Tensor) -> Callable[[Tensor], float]:
    """m -> (m - m(corrupted)) / (m(clean) - m(corrupted)): 0 = corrupted behaviour, 1 = clean behaviour."""
    m_clean, m_corrupted = metric(clean_logits).item(), metric(corrupted_logits).item()
    return lambda logits: (metric(logits).item() - m_corrupted) / (m_clean - m_corrupted)


@torch.no_grad()
def patch_residual_stream(model, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"],
                          metric: Callable[[Tensor], Tensor], activation: str = "resid_pre") -> Float[Tensor, "layer pos"]:
    """The normalised metric after patching ``blocks.L.hook_{activation}`` at one position, for every (L, pos)."""
    clean_logits, clean_cache = cache_with_hooks(model, clean, lambda n: n.endswith(f"hook_{activation}"))
    corrupted_logits, corrupted_cache = cache_with_hooks(model, corrupted, lambda n: n.endswith("hook_resid_pre"))
    score = normalised(metric, clean_logits, corrupted_logits)
    out = torch.zeros(model.cfg.n_layers, clean.shape[1])
    for layer in range(model.cfg.n_layers):
        for pos in range(clean.shape[1]):
            out[layer, pos] = score(run_patched(model, corrupted, clean_cache, act_name(activation, layer), pos,
                                                corrupted_cache=corrupted_cache))
    return out


@torch.no_grad()
def patch_head_outputs(model, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"],
                       metric: Callable[[Tensor], Tensor]) -> Float[Tensor, "layer head"]:
    """The normalised metric after patching one head's output z at every position, for every head."""
    clean_logits, clean_cache = cache_with_hooks(model, clean, lambda n: n.endswith("hook_z"))
    corrupted_logits, corrupted_cache = cache_with_hooks(model, corrupted, lambda n: n.endswith("hook_resid_pre"))
    score = normalised(metric, clean_logits, corrupted_logits)
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            out[layer, head] = score(run_patched(model, corrupted, clean_cache, act_name("z", layer), head=head,
                                                 corrupted_cache=corrupted_cache))
    return out


# ---------------------------------------------------------------- the experiment

# Four landmarks whose prompts have the same length in SmolLM2's tokenizer (9 tokens); each clean prompt is
# paired with a corrupted one naming another landmark in another city.
LANDMARKS = [("The Eiffel Tower is in the city of", " Paris"), ("The Colosseum is in the city of", " Rome"),
             ("The Brandenburg Gate is in the city of", " Berlin"), ("The Louvre museum is in the city of", " Paris")]
PAIRS = [(0, 1), (1, 0), (2, 3), (3, 2)]  # (clean, corrupted); Louvre and Eiffel share an answer, so never paired
ABLATION_CORPUS = dict(n_seq=2, seq_len=128)


def landmark_batch(tokenizer) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(clean tokens, corrupted tokens, correct answers, wrong answers) for the landmark task."""
    def ids(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    clean = torch.tensor([ids(LANDMARKS[c][0]) for c, _ in PAIRS])
    corrupted = torch.tensor([ids(LANDMARKS[k][0]) for _, k in PAIRS])
    correct = torch.tensor([ids(LANDMARKS[c][1])[0] for c, _ in PAIRS])
    wrong = torch.tensor([ids(LANDMARKS[k][1])[0] for _, k in PAIRS])
    return clean, corrupted, correct, wrong


def _heatmap(ax, values: Tensor, title: str, cmap="RdBu", center: bool = True, xlabels=None):
    vmax = values.abs().max().item() if center else None
    im = ax.imshow(values.numpy(), cmap=cmap, vmin=-vmax if center else None, vmax=vmax, aspect="auto")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("layer")
    if xlabels is not None:
        ax.set_xticks(range(len(xlabels)), xlabels, rotation=45, ha="right", fontsize=8)
    ax.figure.colorbar(im, ax=ax, shrink=0.85)


def plot_ablation(mean_abl: Tensor, zero_abl: Tensor, corpus: str, path: Path) -> None:
    """Loss increase of every head under mean and zero ablation, on one square-root colour scale (negative
    changes, which are small, show as 0)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), constrained_layout=True)
    norm = PowerNorm(0.5, vmin=0, vmax=max(mean_abl.max().item(), zero_abl.max().item()))
    for ax, values, title in ((axes[0], mean_abl, "mean ablation"), (axes[1], zero_abl, "zero ablation")):
        im = ax.imshow(values.clamp(min=0).numpy(), cmap="magma", norm=norm, aspect="auto")
        ax.set_title(f"{title}: loss increase (nats)", fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    fig.colorbar(im, ax=list(axes), shrink=0.85)
    fig.suptitle(f"SmolLM2 on WikiText-2 ({corpus} tokens): ablating one head")
    fig.savefig(path, dpi=120)
    plt.close(fig)


@single_thread()  # ~1,000 small forward passes: a second thread only spins on a shared machine
def run_experiment(out_dir: Path) -> dict:
    """SmolLM2: residual-stream and head patching on the landmark task, and mean/zero ablation of every head."""
    import time

    import matplotlib.pyplot as plt

    from checks.models import smollm2_hooked

    out_dir = Path(out_dir)
    cpu0 = time.process_time()
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    model = smollm2_hooked()
    tok = model.tokenizer

    clean, corrupted, correct, wrong = landmark_batch(tok)
    metric = partial(logit_difference, correct=correct, wrong=wrong)
    with torch.no_grad():
        clean_diff, corrupted_diff = metric(model(clean)).item(), metric(model(corrupted)).item()
    resid = patch_residual_stream(model, clean, corrupted, metric)
    heads = patch_head_outputs(model, clean, corrupted, metric)

    labels = [t.replace("Ġ", " ") for t in tok.convert_ids_to_tokens(clean[0].tolist())]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), constrained_layout=True)
    _heatmap(axes[0], resid, "Patching resid_pre at one position", xlabels=[f"{i}: {t}" for i, t in enumerate(labels)])
    axes[0].set_xlabel("position (tokens of the first clean prompt)")
    _heatmap(axes[1], heads, "Patching one head's output z (all positions)")
    axes[1].set_xlabel("head")
    fig.suptitle("SmolLM2: how much of the clean logit difference each patch restores (1 = all)")
    fig.savefig(out_dir / "figures/patching.png", dpi=120)
    plt.close(fig)

    tokens = tl_setup.wikitext_tokens(tok, **ABLATION_CORPUS)
    with torch.no_grad():
        clean_loss = next_token_loss(model(tokens), tokens).item()
    mean_abl = ablation_loss_increase(model, tokens, "mean")
    zero_abl = ablation_loss_increase(model, tokens, "zero")
    plot_ablation(mean_abl, zero_abl, f"{ABLATION_CORPUS['n_seq']}×{ABLATION_CORPUS['seq_len']}", out_dir / "figures/ablation.png")

    def top_cells(values: Tensor, k: int) -> list[dict]:
        order = values.flatten().argsort(descending=True)[:k]
        return [{"layer": int(i) // values.shape[1], "index": int(i) % values.shape[1],
                 "value": float(values.flatten()[i])} for i in order]

    ml, mh = divmod(int(mean_abl.argmax()), model.cfg.n_heads)
    zl, zh = divmod(int(zero_abl.argmax()), model.cfg.n_heads)
    results = {
        "landmarks": LANDMARKS,
        "pairs": PAIRS,
        "clean_logit_diff": clean_diff,
        "corrupted_logit_diff": corrupted_diff,
        "resid_patching": resid.tolist(),
        "resid_patching_last_position_by_layer": resid[:, -1].tolist(),
        "resid_patching_subject_positions_max": float(resid[:, 1:4].max()),
        "resid_handover_layer": int(next(l for l in range(model.cfg.n_layers) if resid[l, -1] > resid[l, 1:4].max())),
        "head_patching": heads.tolist(),
        "head_patching_top": top_cells(heads, 5),
        "ablation_corpus": ABLATION_CORPUS,
        "clean_loss": clean_loss,
        "mean_ablation": mean_abl.tolist(),
        "zero_ablation": zero_abl.tolist(),
        "mean_ablation_top": top_cells(mean_abl, 5),
        "zero_ablation_top": top_cells(zero_abl, 5),
        "mean_ablation_max": {"layer": ml, "head": mh, "value": float(mean_abl.max())},
        "zero_ablation_max": {"layer": zl, "head": zh, "value": float(zero_abl.max())},
        "mean_ablation_median": float(mean_abl.median()),
        "zero_ablation_median": float(zero_abl.median()),
        "n_heads_zero_ablation_over_0.1": int((zero_abl > 0.1).sum()),
        "n_heads_mean_ablation_over_0.1": int((mean_abl > 0.1).sum()),
        "cpu_seconds": time.process_time() - cpu0,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
