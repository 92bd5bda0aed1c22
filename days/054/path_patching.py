"""Day 54: activation patching and path patching on the IOI task (ARENA 1.4.1, §2-3).

Activation patching (§2). Run the model on corrupted prompts, replace one activation a by its value on the clean
prompts, and measure how much of the clean behaviour comes back:

    ioi_metric = (LD_patched − LD_corrupted) / (LD_clean − LD_corrupted)      (0 = corrupted, 1 = clean)

for the residual stream at one (layer, position), an attention or MLP output at one (layer, position), a head's
output z_h over all positions, or one of its inputs: its query, key or value vectors, or its attention pattern.

Path patching (§3). The reverse direction: corrupted ("new", the ABC prompts) activations go into the clean
("orig") run, scored by ioi_metric_2 = (LD − LD_clean)/(LD_clean − LD_new) (0 = unchanged, −1 = all lost),
and only along chosen paths. ``get_path_patch_head_to_final_resid_post``: sender head s takes its new output,
every other head is frozen at its orig output, MLPs recompute; the change that reaches the final residual stream
travels sender → (MLPs) → unembedding. ``get_path_patch_head_to_heads``: the same run (step 2) only records the
receivers' query/key/value inputs, and a fresh orig run (step 3) has just those inputs replaced, so the effect is
sender → (MLPs) → receiver's q/k/v → everything after. Identities: freezing nothing makes path patching to the
final stream activation patching of the sender (new into orig); a sender in the last layer has no head to freeze
downstream, so there the two agree too; patching new = orig changes nothing.

SmolLM2 is not GPT-2, and three differences change the method:

- grouped-query attention: 9 query heads per layer read 3 key/value heads (query head h reads kv head h // 3).
  Patching a key or value activation (``hook_k``/``hook_v`` hold 3 heads) moves the attention of three query
  heads at once; ``ungroup`` makes TransformerLens compute a key and value per query head (the same numbers,
  repeated; ``cfg.ungroup_grouped_query_attention``), so one head's key can be patched alone: an intervention the
  model's own parameterisation cannot express, stated as such.
- rotary positions: no positional embedding is ever added to the residual stream; position enters only through
  the rotation of queries and keys, so nothing positional is there to patch or attribute.
- RMSNorm: the metrics read logits through the final norm as the model does; nothing to change here.

Attribution patching: the first-order estimate of a patch, (a_new − a_orig) · ∂m/∂a at the orig run, for every
head at once from one forward and one backward pass. With every head's output z replaced by a leaf tensor the
gradient cannot flow through any other head: that is the linearisation of path patching to the final stream
(other heads frozen, MLPs free); with z left in the graph it linearises plain activation patching.

Cost. A forward from layer l on the stored residual stream (TransformerLens's ``start_at_layer``) costs
(n_layers − l)/n_layers of a full pass and gives exactly the same result (checked), and the patches of one layer
run as copies of the batch in one pass; only the final position's logits are computed.
"""

from __future__ import annotations

import importlib
import json
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from checks.timing import single_thread

ioi = importlib.import_module("days.053.ioi_setup")
act_name = ioi.act_name

Metric = Callable[[Float[Tensor, "batch d_vocab"]], Float[Tensor, ""]]   # final-position logits → a number

# ---------------------------------------------------------------- metrics on final-position logits


def ioi_metric_final(final: Float[Tensor, "batch d_vocab"], answer_tokens: Int[Tensor, "batch 2"],
                     clean_logit_diff: float, corrupted_logit_diff: float) -> Float[Tensor, ""]:
    """Day 53's ioi_metric on the logits at each prompt's final position: 1 clean, 0 corrupted."""
    return ioi.ioi_metric(final[:, None], answer_tokens, corrupted_logit_diff, clean_logit_diff)


def ioi_metric_2_final(final: Float[Tensor, "batch d_vocab"], answer_tokens: Int[Tensor, "batch 2"],
                       clean_logit_diff: float, corrupted_logit_diff: float) -> Float[Tensor, ""]:
    """Day 53's ioi_metric_2 = ioi_metric − 1 on final-position logits: 0 clean, −1 corrupted."""
    return ioi_metric_final(final, answer_tokens, clean_logit_diff, corrupted_logit_diff) - 1


def on_full_logits(metric: Metric, end: Int[Tensor, "batch"]) -> Callable[[Tensor], Tensor]:
    """The same metric for code that hands over all positions' logits (transformer_lens.patching)."""
    return lambda logits: metric(ioi.final_logits(logits, end))


# ---------------------------------------------------------------- running copies from a layer


def ends(tokens: Int[Tensor, "batch pos"], end: Int[Tensor, "batch"] | None) -> Int[Tensor, "batch"]:
    return torch.full((len(tokens),), tokens.shape[1] - 1) if end is None else end


@contextmanager
def ungrouped(model, on: bool = True):
    """Compute keys and values per query head inside the block (TransformerLens's
    ``ungroup_grouped_query_attention``): the same forward pass, with hook_k/hook_v holding n_heads heads."""
    before = model.cfg.ungroup_grouped_query_attention
    model.cfg.ungroup_grouped_query_attention = on or before
    try:
        yield
    finally:
        model.cfg.ungroup_grouped_query_attention = before


def n_kv_heads(model) -> int:
    """Key/value heads per layer: 3 for SmolLM2 (grouped-query attention), n_heads for GPT-2."""
    return model.cfg.n_key_value_heads or model.cfg.n_heads


def per_copy(patches: list[Callable | None]) -> Callable:
    """A hook for a batch made of len(patches) copies (copy-major): patch i edits copy i's slice in place."""
    n = len(patches)

    def hook(activation: Tensor, hook) -> Tensor:
        view = activation.unflatten(0, (n, -1))
        for i, patch in enumerate(patches):
            if patch is not None:
                view[i] = patch(view[i], hook)
        return activation
    return hook


@torch.no_grad()
def run_copies(model, layer: int, resid: Float[Tensor, "batch pos d_model"], end: Int[Tensor, "batch"], n: int,
               fwd_hooks: list = (), stop_at_layer: int | None = None) -> Float[Tensor, "n batch d_vocab"] | None:
    """n copies of the batch run from block ``layer`` on (``resid`` = its resid_pre), with the hooks; the logits at
    each prompt's final position per copy (the final norm and unembedding applied to that row only). With
    ``stop_at_layer`` the run stops before that block and returns nothing (a run for its hooks)."""
    x = resid.repeat(n, 1, 1)
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        out = model(x, start_at_layer=layer, stop_at_layer=stop_at_layer or model.cfg.n_layers)
    if stop_at_layer is not None:
        return None
    e = end.repeat(n)
    final = model.unembed(model.ln_final(out[torch.arange(len(e)), e][:, None]))[:, 0]
    return final.unflatten(0, (n, -1))


@torch.no_grad()
def get_cache(model, tokens: Int[Tensor, "batch pos"], kinds: tuple[str, ...] = ("resid_pre", "z")) -> dict[str, Tensor]:
    """The activations of the given kinds in every layer (full positions), as a plain dict."""
    names = {act_name(k, l) for k in kinds for l in range(model.cfg.n_layers)}
    _, cache = model.run_with_cache(tokens, names_filter=names.__contains__)
    return dict(cache.items())


# ---------------------------------------------------------------- activation patching (§2), ARENA's hooks


def patch_residual_component(corrupted_residual_component: Float[Tensor, "batch pos d_model"], hook, pos: int,
                             clean_cache) -> Float[Tensor, "batch pos d_model"]:
    """Replace the stream (or an attention/MLP output) at one position by its clean value."""
    corrupted_residual_component[:, pos, :] = clean_cache[hook.name][:, pos, :]
    return corrupted_residual_component


def patch_head_vector(corrupted_head_vector: Float[Tensor, "batch pos head d_head"], hook, head_index: int,
                      clean_cache) -> Float[Tensor, "batch pos head d_head"]:
    """Replace one head's z (or q, k, v) at every position by its clean value."""
    corrupted_head_vector[:, :, head_index] = clean_cache[hook.name][:, :, head_index]
    return corrupted_head_vector


def patch_attn_patterns(corrupted_head_vector: Float[Tensor, "batch head query key"], hook, head_index: int,
                        clean_cache) -> Float[Tensor, "batch head query key"]:
    """Replace one head's attention pattern by its clean pattern."""
    corrupted_head_vector[:, head_index] = clean_cache[hook.name][:, head_index]
    return corrupted_head_vector


def _sweep(model, corrupted_tokens, clean_cache, patching_metric: Metric, end, corrupted_cache, kind: str,
           layers, indices, patch_fn) -> Float[Tensor, "layer index"]:
    """For each layer, one pass from that layer with one copy per index, copy i patched by patch_fn(…, index i)."""
    end = ends(corrupted_tokens, end)
    if corrupted_cache is None:
        corrupted_cache = get_cache(model, corrupted_tokens, ("resid_pre",))
    out = torch.zeros(len(layers), len(indices), dtype=torch.float64)
    for i, l in enumerate(layers):
        hook = per_copy([partial(_call, patch_fn, index=j, clean_cache=clean_cache) for j in indices])
        final = run_copies(model, l, corrupted_cache[act_name("resid_pre", l)], end, len(indices),
                           [(act_name(kind, l), hook)])
        out[i] = torch.stack([patching_metric(f) for f in final])
    return out


def _call(patch_fn, activation, hook, index, clean_cache):
    return patch_fn(activation, hook, index, clean_cache)


def get_act_patch_resid_pre(model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric: Metric,
                            end: Int[Tensor, "batch"] | None = None, corrupted_cache=None, layers=None, positions=None
                            ) -> Float[Tensor, "layer pos"]:
    """The metric after patching resid_pre of each layer at each position (clean into corrupted)."""
    layers = range(model.cfg.n_layers) if layers is None else layers
    positions = range(corrupted_tokens.shape[1]) if positions is None else positions
    return _sweep(model, corrupted_tokens, clean_cache, patching_metric, end, corrupted_cache, "resid_pre",
                  list(layers), list(positions), patch_residual_component)


def get_act_patch_block_every(model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric: Metric,
                              end: Int[Tensor, "batch"] | None = None, corrupted_cache=None, layers=None,
                              positions=None) -> Float[Tensor, "3 layer pos"]:
    """resid_pre, attn_out and mlp_out of each layer at each position, patched one at a time."""
    layers = list(range(model.cfg.n_layers) if layers is None else layers)
    positions = list(range(corrupted_tokens.shape[1]) if positions is None else positions)
    return torch.stack([_sweep(model, corrupted_tokens, clean_cache, patching_metric, end, corrupted_cache, kind,
                               layers, positions, patch_residual_component)
                        for kind in ("resid_pre", "attn_out", "mlp_out")])


def get_act_patch_attn_head_out_all_pos(model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache,
                                        patching_metric: Metric, end: Int[Tensor, "batch"] | None = None,
                                        corrupted_cache=None, layers=None, heads=None) -> Float[Tensor, "layer head"]:
    """Each head's output z_h, all positions, patched one head at a time."""
    layers = list(range(model.cfg.n_layers) if layers is None else layers)
    heads = list(range(model.cfg.n_heads) if heads is None else heads)
    return _sweep(model, corrupted_tokens, clean_cache, patching_metric, end, corrupted_cache, "z", layers, heads,
                  patch_head_vector)


def get_act_patch_attn_head_all_pos_every(model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache,
                                          patching_metric: Metric, end: Int[Tensor, "batch"] | None = None,
                                          corrupted_cache=None, layers=None) -> Float[Tensor, "5 layer head"]:
    """Each head's output, query, key, value and pattern, patched one at a time. With grouped-query attention a key
    or value belongs to a key/value head shared by n_heads // n_kv_heads query heads: its effect is patched once
    per key/value head and shown in each query head that reads it (TransformerLens instead returns n_kv_heads
    columns padded with zeros)."""
    layers = list(range(model.cfg.n_layers) if layers is None else layers)
    heads, kv = list(range(model.cfg.n_heads)), list(range(n_kv_heads(model)))
    rep = model.cfg.n_heads // len(kv)
    out = []
    for kind, fn, idx in (("z", patch_head_vector, heads), ("q", patch_head_vector, heads), ("k", patch_head_vector, kv),
                          ("v", patch_head_vector, kv), ("pattern", patch_attn_patterns, heads)):
        r = _sweep(model, corrupted_tokens, clean_cache, patching_metric, end, corrupted_cache, kind, layers, idx, fn)
        out.append(r.repeat_interleave(rep, dim=1) if kind in ("k", "v") else r)
    return torch.stack(out)


# ---------------------------------------------------------------- path patching (§3)


def patch_or_freeze_head_vectors(orig_head_vector: Float[Tensor, "batch pos head d_head"], hook, new_cache, orig_cache,
                                 head_to_patch: tuple[int, int]) -> Float[Tensor, "batch pos head d_head"]:
    """Every head's z set to its orig value, except the sender's, set to its new value."""
    orig_head_vector[...] = orig_cache[hook.name][...]
    if head_to_patch[0] == hook.layer():
        orig_head_vector[:, :, head_to_patch[1]] = new_cache[hook.name][:, :, head_to_patch[1]]
    return orig_head_vector


def patch_head_input(orig_activation: Float[Tensor, "batch pos head d_head"], hook, patched_cache,
                     head_list: list[tuple[int, int]]) -> Float[Tensor, "batch pos head d_head"]:
    """The receivers' q (or k, v) in this layer replaced by their values in the patched cache."""
    heads_to_patch = [head for layer, head in head_list if layer == hook.layer()]
    orig_activation[:, :, heads_to_patch] = patched_cache[hook.name][:, :, heads_to_patch]
    return orig_activation


def _caches(model, new_dataset, orig_dataset, new_cache, orig_cache):
    new_cache = new_cache if new_cache is not None else get_cache(model, new_dataset.toks)
    orig_cache = orig_cache if orig_cache is not None else get_cache(model, orig_dataset.toks)
    return new_cache, orig_cache


def _senders_by_layer(senders: list[tuple[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for l, h in senders:
        out.setdefault(l, []).append(h)
    return out


def get_path_patch_head_to_final_resid_post(model, patching_metric: Metric, new_dataset, orig_dataset, new_cache=None,
                                            orig_cache=None, senders: list[tuple[int, int]] | None = None,
                                            freeze: bool = True) -> Float[Tensor, "layer head"]:
    """For each sender head: its new output in the orig run, every other head frozen at its orig output (``freeze``;
    MLPs recompute), scored on the final logits. Senders not computed are NaN. ``freeze=False`` lets every path
    through: that is activation patching of the sender, new into orig. The run for sender layer l starts at l from
    the orig resid_pre: everything before it equals the orig run (frozen heads, MLPs on the same inputs)."""
    new_cache, orig_cache = _caches(model, new_dataset, orig_dataset, new_cache, orig_cache)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    senders = [(l, h) for l in range(L) for h in range(H)] if senders is None else senders
    end = orig_dataset.word_idx["end"]
    results = torch.full((L, H), torch.nan, dtype=torch.float64)
    for l, heads in _senders_by_layer(senders).items():
        hooks = []
        for l2 in range(l, L if freeze else l + 1):
            if freeze:
                patches = [partial(patch_or_freeze_head_vectors, new_cache=new_cache, orig_cache=orig_cache,
                                   head_to_patch=(l, h)) for h in heads]
            else:
                patches = [partial(patch_head_vector, head_index=h, clean_cache=new_cache) for h in heads]
            hooks.append((act_name("z", l2), per_copy(patches)))
        final = run_copies(model, l, orig_cache[act_name("resid_pre", l)], end, len(heads), hooks)
        for h, f in zip(heads, final):
            results[l, h] = patching_metric(f)
    return results


def get_path_patch_head_to_heads(receiver_heads: list[tuple[int, int]], receiver_input: str, model,
                                 patching_metric: Metric, new_dataset, orig_dataset, new_cache=None, orig_cache=None,
                                 senders: list[tuple[int, int]] | None = None, ungroup: bool = True
                                 ) -> Float[Tensor, "layer head"]:
    """For each sender head (default: every head before the last receiver layer, as ARENA): step 2 runs orig with
    the sender's new output and every other head frozen, recording the receivers' ``receiver_input`` ('q', 'k' or
    'v'); step 3 runs orig with only those inputs replaced, and the metric is read at the end. Rows: sender layers
    0 … max receiver layer − 1; senders not computed are NaN.

    Grouped-query attention: with ``ungroup`` (default) a receiver's key or value is its own (TransformerLens
    computes them per query head), so only the receivers move; without it, a receiver's key/value head is patched,
    and every query head sharing it moves with it."""
    new_cache, orig_cache = _caches(model, new_dataset, orig_dataset, new_cache, orig_cache)
    H = model.cfg.n_heads
    r_layers = sorted({l for l, _ in receiver_heads})
    lo, hi = r_layers[0], r_layers[-1]
    senders = [(l, h) for l in range(hi) for h in range(H)] if senders is None else senders
    grouped = receiver_input in ("k", "v") and not ungroup and n_kv_heads(model) < H
    rep = H // n_kv_heads(model) if grouped else 1
    head_list = sorted({(l, h // rep) for l, h in receiver_heads})
    names = [act_name(receiver_input, l) for l in r_layers]
    end = orig_dataset.word_idx["end"]
    results = torch.full((hi, H), torch.nan, dtype=torch.float64)
    with ungrouped(model, on=receiver_input in ("k", "v") and ungroup):
        for l, heads in _senders_by_layer(senders).items():
            start = min(l, lo)
            n = len(heads)
            recorded: dict[str, Tensor] = {}

            def record(activation: Tensor, hook, n=n) -> None:
                recorded[hook.name] = activation.unflatten(0, (n, -1)).clone()

            step2 = [(act_name("z", l2), per_copy([partial(patch_or_freeze_head_vectors, new_cache=new_cache,
                                                           orig_cache=orig_cache, head_to_patch=(l, h)) for h in heads]))
                     for l2 in range(start, hi + 1)] + [(name, record) for name in names]
            run_copies(model, start, orig_cache[act_name("resid_pre", start)], end, n, step2, stop_at_layer=hi + 1)
            step3 = [(name, per_copy([partial(patch_head_input, patched_cache={name: recorded[name][c]},
                                              head_list=head_list) for c in range(n)])) for name in names]
            final = run_copies(model, lo, orig_cache[act_name("resid_pre", lo)], end, n, step3)
            for h, f in zip(heads, final):
                results[l, h] = patching_metric(f)
    return results


# ---------------------------------------------------------------- attribution patching


def get_attr_patch_head_out(model, patching_metric: Metric, new_dataset, orig_dataset, new_cache=None,
                            freeze: bool = True) -> Float[Tensor, "layer head"]:
    """Σ_{prompt, pos, d_head} (z_new − z_orig) · ∂m/∂z at the orig run, per head: the first-order estimate of
    path patching each head to the final stream (``freeze``: every head's output is a leaf, so no gradient passes
    through another head) or of activation patching it, new into orig (``freeze=False``). One forward, one
    backward pass for all heads."""
    new_cache = new_cache if new_cache is not None else get_cache(model, new_dataset.toks, ("z",))
    store: dict[str, Tensor] = {}

    def leaf_embed(x: Tensor, hook) -> Tensor:          # the graph exists whether or not weights require grad
        return x.detach().requires_grad_(True)

    def grab(z: Tensor, hook) -> Tensor:
        if freeze:
            z = z.detach().requires_grad_(True)
        store[hook.name] = z
        return z

    names = [act_name("z", l) for l in range(model.cfg.n_layers)]
    with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", leaf_embed)] + [(n, grab) for n in names]):
        logits = model(orig_dataset.toks)
        metric = patching_metric(ioi.final_logits(logits, orig_dataset.word_idx["end"]))
        grads = torch.autograd.grad(metric, [store[n] for n in names])
    return torch.stack([((new_cache[n] - store[n].detach()) * g).sum((0, 1, 3)) for n, g in zip(names, grads)])


def get_attr_path_patch_head_to_heads(receiver_heads: list[tuple[int, int]], receiver_input: str, model,
                                      patching_metric: Metric, new_dataset, orig_dataset, new_cache=None,
                                      ungroup: bool = True) -> Float[Tensor, "layer head"]:
    """The first-order estimate of get_path_patch_head_to_heads for every sender at once, from two forward and two
    backward passes:

        Δm ≈ Σ_r (∂m/∂x_r) · (∂x_r/∂z_s)_frozen · (z_s,new − z_s,orig),

    x_r the receivers' ``receiver_input``. Pass 1 (nothing frozen: after the receivers everything recomputes, as in
    step 3) gives g_r = ∂m/∂x_r, masked to the receiver heads; pass 2, with every head's output a leaf (frozen, as
    in step 2), differentiates Σ_r g_r · x_r with respect to every z. Rows: layers before the last receiver."""
    new_cache = new_cache if new_cache is not None else get_cache(model, new_dataset.toks, ("z",))
    H = model.cfg.n_heads
    grouped = receiver_input in ("k", "v") and not ungroup and n_kv_heads(model) < H
    rep = H // n_kv_heads(model) if grouped else 1
    head_list = sorted({(l, h // rep) for l, h in receiver_heads})
    r_layers = sorted({l for l, _ in head_list})
    names = [act_name(receiver_input, l) for l in r_layers]
    z_names = [act_name("z", l) for l in range(model.cfg.n_layers)]
    end = orig_dataset.word_idx["end"]

    def leaf_embed(x: Tensor, hook) -> Tensor:
        return x.detach().requires_grad_(True)

    with torch.enable_grad(), ungrouped(model, on=receiver_input in ("k", "v") and ungroup):
        store: dict[str, Tensor] = {}

        def keep(x: Tensor, hook) -> Tensor:
            store[hook.name] = x
            return x

        with model.hooks(fwd_hooks=[("hook_embed", leaf_embed)] + [(n, keep) for n in names]):
            metric = patching_metric(ioi.final_logits(model(orig_dataset.toks), end))
            grads = dict(zip(names, torch.autograd.grad(metric, [store[n] for n in names])))
        for name, l in zip(names, r_layers):
            mask = torch.zeros(grads[name].shape[2], dtype=torch.bool)
            mask[[h for layer, h in head_list if layer == l]] = True
            grads[name] = grads[name] * mask[:, None]

        def leaf_z(z: Tensor, hook) -> Tensor:
            z = z.detach().requires_grad_(True)
            store[hook.name] = z
            return z

        store = {}
        with model.hooks(fwd_hooks=[("hook_embed", leaf_embed)] + [(n, leaf_z) for n in z_names]
                         + [(n, keep) for n in names]):
            model(orig_dataset.toks, stop_at_layer=r_layers[-1] + 1)
            total = sum((grads[n] * store[n]).sum() for n in names)
            senders = z_names[:r_layers[-1]]
            dz = torch.autograd.grad(total, [store[n] for n in senders], allow_unused=True)
    return torch.stack([torch.zeros(H, dtype=new_cache[n].dtype) if g is None else ((new_cache[n] - store[n].detach()) * g).sum((0, 1, 3))
                        for n, g in zip(senders, dz)])


# ---------------------------------------------------------------- the experiment

EXPERIMENT = dict(model="smollm2", n_heads_prompts=16, n_position_prompts=8, position_template=5, seed=0,
                  n_screen=24, n_every=12)


def agreement(a: Tensor, b: Tensor, k: int = 10) -> dict:
    """How well an estimate a tracks the exact b over the same cells: Pearson's r, Spearman's ρ, and the fraction of
    b's k largest |values| among a's k largest."""
    from scipy import stats

    a, b = a.flatten().double(), b.flatten().double()
    top_a, top_b = set(a.abs().topk(k).indices.tolist()), set(b.abs().topk(k).indices.tolist())
    return {"pearson": float(torch.corrcoef(torch.stack([a, b]))[0, 1]),
            "spearman": float(stats.spearmanr(a.numpy(), b.numpy()).statistic),
            f"top{k}_overlap": len(top_a & top_b) / k, "max_abs_diff": float((a - b).abs().max())}


def labelled(values: Tensor, k: int, largest_abs: bool = True) -> list[dict]:
    """The k cells of a [layer, head] grid with the largest |value|, as {'label', 'layer', 'head', 'value'}."""
    flat = values.flatten()
    valid = (~flat.isnan()).nonzero()[:, 0]                  # cells not computed (NaN) are never listed
    key = flat[valid].abs() if largest_abs else -flat[valid]
    order = valid[key.argsort(descending=True)[:k]]
    H = values.shape[1]
    return [{"label": f"L{int(i) // H}H{int(i) % H}", "layer": int(i) // H, "head": int(i) % H,
             "value": float(flat[i])} for i in order]


def datasets(model, cfg: dict = EXPERIMENT):
    """The two datasets: day 53's first prompts (mixed templates) with their ABC twins, for head-level patching;
    and one template's prompts with their ABC twins, for position-by-position patching."""
    mixed, mixed_abc = ioi.build(model)
    n = cfg["n_heads_prompts"]
    one = ioi.IOIDataset("mixed", cfg["n_position_prompts"], model.tokenizer, seed=cfg["seed"],
                         templates=[cfg["position_template"]])
    return mixed[:n], mixed_abc[:n], one, one.gen_flipped_prompts(ioi.ABC)


def baseline(model, ds, abc, cache_kinds=("resid_pre", "z")):
    """Full caches of both datasets, their final logits and mean logit differences (clean answers)."""
    clean_cache, abc_cache = get_cache(model, ds.toks, cache_kinds), get_cache(model, abc.toks, cache_kinds)
    end = ds.word_idx["end"]
    fc = run_copies(model, 0, clean_cache[act_name("resid_pre", 0)], end, 1)[0]
    fa = run_copies(model, 0, abc_cache[act_name("resid_pre", 0)], end, 1)[0]
    ld = lambda f: ioi.logits_to_ave_logit_diff(f[:, None], ds.answer_tokens).item()  # noqa: E731
    return clean_cache, abc_cache, fc, fa, ld(fc), ld(fa)


MIN_ATTENTION = 0.2   # a head is classed by the name it attends to only if it gives that name this much attention


def find_receivers(model, ds, clean_cache) -> dict:
    """Name movers (heads among the four largest direct attributions that attend most to the IO, with at least
    MIN_ATTENTION) and the subject suppressor (the largest direct attribution attending most to S2), from day 53's
    DLA on these prompts. A head that attends to none of the names (the last-layer heads) is neither."""
    final, end_cache = ioi.run_at_end(model, ds.toks, ds.word_idx["end"], ioi.dla_names(model))
    heads = ioi.dla(model, end_cache, ds.answer_tokens)["heads"].mean(-1)
    to = ioi.attention_to_names(end_cache, ds, model.cfg.n_layers)
    top = ioi.top_heads(heads, 4)
    looks = {(l, h): max(("IO", "S1", "S2"), key=lambda k: to[k][l, h].mean().item()) for l, h in top}
    attends = {(l, h): to[looks[(l, h)]][l, h].mean().item() >= MIN_ATTENTION for l, h in top}
    movers = [(l, h) for l, h in top if looks[(l, h)] == "IO" and attends[(l, h)]] or top[:1]
    suppressor = [(l, h) for l, h in top if looks[(l, h)] == "S2" and attends[(l, h)]] or [top[-1]]
    return {"name_movers": movers, "s_suppressor": suppressor[:1], "dla_top": list(top)}


def plot(results: dict, t: dict, out_dir: Path) -> None:
    import matplotlib.pyplot as plt

    labels = results["position_labels"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), constrained_layout=True, sharey=True)
    for ax, grid, title in zip(axes, t["block"], ("resid_pre", "attn_out", "mlp_out")):
        im = ax.imshow(grid.numpy(), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
        ax.set_title(f"{title} patched (clean → ABC)")
        ax.set_xlabel("position")
    axes[0].set_ylabel("layer")
    fig.colorbar(im, ax=axes, shrink=0.8, label="ioi_metric")
    fig.savefig(out_dir / "figures/block_every.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 4, figsize=(16, 5), constrained_layout=True)
    for ax, key, title in zip(axes, ("act_head_out", "path_final", "attr_frozen", "path_heads_nm_q"),
                              ("activation patching, head out\n(clean → ABC, ioi_metric)",
                               "path patching → final stream\n(ABC → clean, ioi_metric_2)",
                               "attribution estimate of the path\npatching (one backward pass)",
                               "path patching → name movers' queries\n(ioi_metric_2)")):
        grid = t[key]
        lim = grid.nan_to_num(0).abs().max().item()
        im = ax.imshow(grid.numpy(), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("head")
        fig.colorbar(im, ax=ax, shrink=0.7)
    axes[0].set_ylabel("layer")
    fig.savefig(out_dir / "figures/heads.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), constrained_layout=True)
    for ax, exact, est, key, what in ((axes[0], t["path_final"], t["attr_frozen"], "attr_vs_path_final",
                                       "to the final stream (270 senders)"),
                                      (axes[1], t["path_heads_nm_q"], t["attr_nm_q"], "attr_vs_path_nm_q",
                                       "into the name movers' queries")):
        ax.scatter(exact.flatten().numpy(), est.flatten().numpy(), s=8)
        lim = max(exact.abs().max().item(), est.abs().max().item()) * 1.05
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8)
        ax.set_xlabel("exact path patching (ioi_metric_2)")
        ax.set_ylabel("attribution estimate")
        ax.set_title(f"{what}: r = {results[key]['pearson']:.3f}", fontsize=10)
    fig.savefig(out_dir / "figures/attribution.png", dpi=110)
    plt.close(fig)


def position_word_idx(one) -> dict[str, int]:
    """The positions of one template's names and final token (the same in every prompt: checked); IO and S1 are
    those of the first prompt (ABBA and BABA prompts swap them)."""
    for key in ("S2", "end"):
        assert len(set(one.word_idx[key].tolist())) == 1
    assert {int(one.word_idx["IO"][0]), int(one.word_idx["S1"][0])} == {int(one.word_idx["IO"][1]), int(one.word_idx["S1"][1])}
    return {k: int(v[0]) for k, v in one.word_idx.items()}


def summarise(results: dict) -> dict:
    """The numbers the post reads off the position grids (``block_every``: resid_pre, attn_out, mlp_out × layer ×
    position): where the answer's information sits, layer by layer. With one template every prompt has its names
    at the same three positions (the first clause's two, in either order, and S2) and ends at the same one."""
    block = torch.tensor(results["block_every"])
    resid, attn, mlp = block[0], block[1], block[2]
    idx = results["position_word_idx"]
    end, names = idx["end"], sorted({idx["IO"], idx["S1"], idx["S2"]})
    over = (resid[:, end] > 0.5).nonzero()[:, 0]
    return {"end_position": end, "name_positions": names,
            "resid_end_first_layer_over_half": int(over[0]) if len(over) else -1,
            "resid_end_max": resid[:, end].max().item(), "resid_end_max_layer": int(resid[:, end].argmax()),
            "resid_names_max_abs_before": resid[:int(over[0]) if len(over) else None][:, names].abs().max().item(),
            "attn_end_max": attn[:, end].max().item(), "attn_end_max_layer": int(attn[:, end].argmax()),
            "attn_end_min": attn[:, end].min().item(), "attn_end_min_layer": int(attn[:, end].argmin()),
            "mlp_end_max": mlp[:, end].max().item(), "mlp_end_max_layer": int(mlp[:, end].argmax())}


@single_thread()
def run_experiment(out_dir: Path, cfg: dict = EXPERIMENT) -> dict:
    """SmolLM2 on day 53's IOI prompts: activation patching by position (one template) and by head (out, q, k, v,
    pattern), exact path patching of all 270 heads to the final stream and its attribution estimate, path patching
    into the name movers' queries over every earlier head and its attribution estimate, and into the other
    receivers' inputs over the senders the attribution screen keeps."""
    from checks.models import hooked_model

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    timings = {}

    def lap(key: str, t0: float) -> None:
        timings[key] = time.perf_counter() - t0

    model = hooked_model(cfg["model"])
    H = model.cfg.n_heads
    ds, abc, one, one_abc = datasets(model, cfg)

    t0 = time.perf_counter()   # §2 by position: one template, clean into ABC
    c1, a1, fc1, fa1, ld_c1, ld_a1 = baseline(model, one, one_abc, ("resid_pre", "attn_out", "mlp_out"))
    metric1 = partial(ioi_metric_final, answer_tokens=one.answer_tokens, clean_logit_diff=ld_c1, corrupted_logit_diff=ld_a1)
    block = get_act_patch_block_every(model, one_abc.toks, c1, metric1, one.word_idx["end"], a1)
    lap("block_every", t0)

    t0 = time.perf_counter()   # §2 by head: mixed templates, clean into ABC
    clean_cache, abc_cache, fc, fa, ld_c, ld_a = baseline(model, ds, abc, ("resid_pre", "z", "q", "k", "v", "pattern"))
    metric = partial(ioi_metric_final, answer_tokens=ds.answer_tokens, clean_logit_diff=ld_c, corrupted_logit_diff=ld_a)
    metric2 = partial(ioi_metric_2_final, answer_tokens=ds.answer_tokens, clean_logit_diff=ld_c, corrupted_logit_diff=ld_a)
    end = ds.word_idx["end"]
    act_out = get_act_patch_attn_head_out_all_pos(model, abc.toks, clean_cache, metric, end, abc_cache)
    lap("act_head_out", t0)
    t0 = time.perf_counter()
    every = {}
    for cell in labelled(act_out, cfg["n_every"]):
        l, h = cell["layer"], cell["head"]
        g = h // (H // n_kv_heads(model))
        row = {"label": cell["label"], "out": cell["value"]}
        for kind, fn, index in (("q", patch_head_vector, h), ("k", patch_head_vector, g), ("v", patch_head_vector, g),
                                ("pattern", patch_attn_patterns, h)):
            row[kind] = _sweep(model, abc.toks, clean_cache, metric, end, abc_cache, kind, [l], [index], fn)[0, 0].item()
        every[cell["label"]] = row
    lap("act_head_every_top", t0)

    t0 = time.perf_counter()   # §3: ABC into clean
    path_final = get_path_patch_head_to_final_resid_post(model, metric2, abc, ds, abc_cache, clean_cache)
    lap("path_final", t0)
    t0 = time.perf_counter()
    attr_frozen = get_attr_patch_head_out(model, metric2, abc, ds, abc_cache, freeze=True)
    attr_total = get_attr_patch_head_out(model, metric2, abc, ds, abc_cache, freeze=False)
    lap("attribution", t0)

    receivers = find_receivers(model, ds, clean_cache)
    nm, ss = receivers["name_movers"], receivers["s_suppressor"]
    t0 = time.perf_counter()
    path_nm_q = get_path_patch_head_to_heads(nm, "q", model, metric2, abc, ds, abc_cache, clean_cache)
    lap("path_heads_nm_q", t0)
    t0 = time.perf_counter()
    attr_nm_q = get_attr_path_patch_head_to_heads(nm, "q", model, metric2, abc, ds, abc_cache)
    lap("attribution_nm_q", t0)

    # the screen: for every other receiver input, exact path patching only for the senders whose path attribution
    # is largest (its agreement with the exact sweep is measured on the name movers' queries above)
    t0 = time.perf_counter()
    screened_paths, screens, screen_attr = {}, {}, {}
    for name, recv, inputs in (("name_movers", nm, ("k", "v")), ("s_suppressor", ss, ("q", "k", "v"))):
        for x in inputs:
            attr = get_attr_path_patch_head_to_heads(recv, x, model, metric2, abc, ds, abc_cache)
            keep = labelled(attr, cfg["n_screen"])
            screens[f"{name}_{x}"] = [c["label"] for c in keep]
            screen_attr[f"{name}_{x}"] = attr.tolist()
            grid = get_path_patch_head_to_heads(recv, x, model, metric2, abc, ds, abc_cache, clean_cache,
                                                senders=[(c["layer"], c["head"]) for c in keep])
            screened_paths[f"{name}_{x}"] = [{**c, "attribution": float(attr[c["layer"], c["head"]])}
                                             for c in labelled(grid, 5)]
    lap("path_heads_screened", t0)
    exact_top = labelled(path_nm_q, 10)
    screen_nm_q = {c["label"] for c in labelled(attr_nm_q, cfg["n_screen"])}

    results = {
        "experiment": cfg,
        "position_template": one.prompts[0]["template"], "position_example": one.sentences[0],
        "position_example_abc": one_abc.sentences[0],
        "position_labels": [model.tokenizer.decode(t) for t in one.toks[0]],
        "position_word_idx": position_word_idx(one),
        "n_heads_prompts": len(ds), "n_position_prompts": len(one),
        "clean_logit_diff": ld_c, "abc_logit_diff": ld_a, "position_clean_logit_diff": ld_c1,
        "position_abc_logit_diff": ld_a1,
        "max_abs_logit": max(x.abs().max().item() for x in (fc, fa, fc1, fa1)),
        "block_every": block.tolist(),
        "act_head_out": act_out.tolist(), "act_head_out_top": labelled(act_out, 8),
        "act_head_every_top": list(every.values()),
        "path_final": path_final.tolist(), "path_final_top": labelled(path_final, 8),
        "attr_frozen": attr_frozen.tolist(), "attr_total": attr_total.tolist(),
        "attr_vs_path_final": agreement(attr_frozen, path_final),
        "receivers": {k: [f"L{l}H{h}" for l, h in v] for k, v in receivers.items()},
        "path_heads_nm_q": path_nm_q.tolist(), "path_heads_nm_q_top": exact_top, "attr_nm_q": attr_nm_q.tolist(),
        "attr_vs_path_nm_q": agreement(attr_nm_q, path_nm_q),
        "screen_recall_nm_q_top10": sum(c["label"] in screen_nm_q for c in exact_top) / 10,
        "screens": screens, "screen_attr": screen_attr, "screened_paths": screened_paths,
        "timings": timings,
    }
    results["summary"] = summarise(results)
    plot(results, {"block": block, "act_head_out": act_out, "path_final": path_final, "attr_frozen": attr_frozen,
                   "path_heads_nm_q": path_nm_q, "attr_nm_q": attr_nm_q}, out_dir)
    results["cpu_seconds"] = time.process_time() - cpu0
    results["wall_seconds"] = time.perf_counter() - wall0
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
