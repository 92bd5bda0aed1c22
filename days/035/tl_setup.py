"""Day 35: TransformerLens, run_with_cache and the activations (ARENA 1.2 Intro to Mech Interp, §1).

A ``HookedTransformer`` puts a ``HookPoint`` (an identity module) at every intermediate
activation; ``run_with_cache`` runs the model once and records them all in an ``ActivationCache``
keyed by names such as ``blocks.3.attn.hook_pattern``. Today's work is to know those names and
to check that the cached numbers mean what we think they mean, by recomputing one from others.

The attention pattern of head h in layer l, recomputed from the cached queries and keys:

    scores[b, h, i, j] = q[b, i, h, :] · k[b, j, kv(h), :] / attn_scale          (attn_scale = sqrt(d_head))
    pattern[b, h, i, :] = softmax_j( scores[b, h, i, j]  if j ≤ i  else  -inf )

For GPT-2 (learned absolute positions) q and k are the hooks ``hook_q`` / ``hook_k``. For a
rotary model such as SmolLM2 (Llama architecture) positions enter by rotating q and k, so the
pattern is computed from ``hook_rot_q`` / ``hook_rot_k``; equivalently from ``hook_q`` / ``hook_k``
rotated by ``apply_rotary`` below. SmolLM2 uses grouped-query attention: 9 query heads share 3
key/value heads, ``hook_k`` holds the 3 (not repeated), and query head h reads key head
kv(h) = h // 3.

The same patterns give ARENA's simple head detectors (current-token, previous-token and
first-token heads), computed here once for every later day (``diagonal_attention``).

Every analysis takes the model as a parameter: on a machine with internet
``checks.models.load_gpt2_small()`` gives GPT-2 small; here the tests use a GPT-2-shaped model
with random weights and SmolLM2-135M-Instruct loaded into TransformerLens.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

_attention = importlib.import_module("days.030.attention")

# ---------------------------------------------------------------- activation names

ATTN_ACTS = ("q", "k", "v", "rot_q", "rot_k", "z", "result", "attn_scores", "pattern")
MLP_ACTS = ("pre", "pre_linear", "mid", "post")
NORM_ACTS = ("scale", "normalized")


def act_name(name: str, layer: int | None = None, sublayer: str | None = None) -> str:
    """The full hook name of an activation: ``act_name("pattern", 3) == "blocks.3.attn.hook_pattern"``.

    Attention activations live under ``blocks.L.attn``, MLP ones under ``blocks.L.mlp``, norm
    activations under ``blocks.L.ln1``/``ln2`` (``sublayer``) or ``ln_final`` (no layer), and
    residual-stream ones (``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``,
    ``mlp_out``) directly under ``blocks.L``; ``embed`` and ``pos_embed`` are top level.
    """
    if name in NORM_ACTS:
        if layer is None:
            return f"ln_final.hook_{name}"
        if sublayer not in ("ln1", "ln2"):
            raise ValueError(f"{name!r} in a block needs sublayer 'ln1' or 'ln2', got {sublayer!r}")
        return f"blocks.{layer}.{sublayer}.hook_{name}"
    if layer is None:
        return f"hook_{name}"
    where = "attn." if name in ATTN_ACTS else "mlp." if name in MLP_ACTS else ""
    return f"blocks.{layer}.{where}hook_{name}"


def parse_act_name(full: str) -> tuple[str, int | None, str | None]:
    """The inverse of ``act_name``: ``"blocks.3.ln1.hook_scale" -> ("scale", 3, "ln1")``.

    (``unembed.hook_in``/``hook_out`` are outside the shorthand, as in TransformerLens's ``get_act_name``.)"""
    match = re.fullmatch(r"(?:blocks\.(\d+)\.)?(?:(attn|mlp|ln1|ln2|ln_final)\.)?hook_(\w+)", full)
    if match is None:
        raise ValueError(f"not a hook name: {full!r}")
    layer, part, name = match.groups()
    return name, (int(layer) if layer is not None else None), (part if part in ("ln1", "ln2") else None)


def model_facts(model) -> dict:
    """The numbers ARENA asks you to read off a model: its shape and what its blocks are made of."""
    cfg = model.cfg
    return {
        "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_key_value_heads": cfg.n_key_value_heads or cfg.n_heads,
        "d_model": cfg.d_model, "d_head": cfg.d_head, "d_mlp": cfg.d_mlp, "d_vocab": cfg.d_vocab, "n_ctx": cfg.n_ctx,
        "act_fn": cfg.act_fn, "gated_mlp": bool(cfg.gated_mlp), "normalization_type": cfg.normalization_type,
        "positional_embedding_type": cfg.positional_embedding_type, "attn_scale": float(cfg.attn_scale),
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }


# ---------------------------------------------------------------- running the model


@torch.no_grad()
def next_token_accuracy(model, tokens: Int[Tensor, "batch pos"]) -> tuple[float, Tensor]:
    """ARENA's first exercise: how often is argmax_v logits[b, i, v] the actual token tokens[b, i+1]?

    Returns the accuracy over all batch·(pos-1) predictions and the boolean [batch, pos-1] of hits.
    """
    logits = model(tokens)
    correct = logits[:, :-1].argmax(-1) == tokens[:, 1:]
    return correct.float().mean().item(), correct


def wikitext_detokenize(line: str) -> str:
    """Undo WikiText's tokenization of one line (" , " -> ", ", " @-@ " -> "-", "= = Title = =" -> "Title");
    ``<unk>`` is kept as is."""
    line = line.strip()
    heading = re.fullmatch(r"(=(?: =)*) (.*) \1", line)
    if heading:
        return heading.group(2)
    line = re.sub(r" @(.)@ ", r"\1", line)                      # 1 @,@ 000 -> 1,000; well @-@ known -> well-known
    line = re.sub(r" ([.,;:!?%)\]])", r"\1", line)              # no space before closing punctuation
    line = re.sub(r"([(\[$]) ", r"\1", line)                    # nor after opening brackets
    line = re.sub(r" '(s|t|re|ve|m|ll|d)\b", r"'\1", line)       # don 't -> don't; it 's -> it's
    return re.sub(r'" ([^"]*?) "', r'"\1"', line)                # " quoted " -> "quoted"


def wikitext_tokens(tokenizer, n_seq: int, seq_len: int, split: str = "valid", path: Path | None = None) -> Int[Tensor, "n_seq seq_len"]:
    """The first n_seq·seq_len tokens of a WikiText-2 split (detokenized, blank lines dropped),
    as n_seq consecutive windows of running text. No BOS is added: windows start mid-document."""
    if path is None:
        from checks.assets import resolve

        path = resolve("wikitext-2")
    lines = (Path(path) / f"wikitext-2-{split}.txt").read_text(encoding="utf-8").splitlines()
    need = n_seq * seq_len
    ids: list[int] = []
    for start in range(0, len(lines), 200):  # tokenize in chunks until there are enough tokens
        chunk = "\n".join(wikitext_detokenize(line) for line in lines[start:start + 200] if line.strip())
        ids += tokenizer(chunk + "\n", add_special_tokens=False)["input_ids"]
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"WikiText-2 {split} has only {len(ids)} tokens, {need} requested")
    return torch.tensor(ids[:need]).reshape(n_seq, seq_len)


# ---------------------------------------------------------------- recomputing the attention pattern


def rotary_cos_sin(n_pos: int, rotary_dim: int, base: float, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotary angles, [n_pos, rotary_dim] each (GPT-NeoX / Llama layout).

    Pair i (dimensions i and i + rotary_dim/2) at position p turns by p·θ_i with
    θ_i = base^(-2i / rotary_dim); both halves carry the same angle.
    """
    inv_freq = base ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    angles = torch.arange(n_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Float[Tensor, "batch pos head d_head"], base: float, rotary_dim: int | None = None,
                 offset: int = 0) -> Float[Tensor, "batch pos head d_head"]:
    """Rotate each (x_i, x_{i+r/2}) pair by its angle: x·cos + rotate_half(x)·sin on the first r dims.

    rotate_half([x₁, x₂]) = [-x₂, x₁], so (x₁, x₂) -> (x₁ cos - x₂ sin, x₂ cos + x₁ sin). Dot products
    of rotated vectors depend only on the relative position: R(p)ᵀR(p') = R(p' - p).
    """
    r = rotary_dim or x.shape[-1]
    cos, sin = rotary_cos_sin(offset + x.shape[1], r, base, dtype=x.dtype)
    cos, sin = cos[offset:, None, :], sin[offset:, None, :]  # broadcast over heads
    x_rot, x_pass = x[..., :r], x[..., r:]
    x1, x2 = x_rot[..., : r // 2], x_rot[..., r // 2:]
    rotated = x_rot * cos + torch.cat([-x2, x1], dim=-1) * sin
    return torch.cat([rotated, x_pass], dim=-1)


def repeat_kv(k: Float[Tensor, "batch pos n_kv d_head"], n_heads: int) -> Float[Tensor, "batch pos n_heads d_head"]:
    """Grouped-query attention: query head h uses key/value head h // (n_heads / n_kv)."""
    n_kv = k.shape[2]
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads cannot share {n_kv} key/value heads evenly")
    return k.repeat_interleave(n_heads // n_kv, dim=2)


def causal_pattern(q: Float[Tensor, "batch pos head d_head"], k: Float[Tensor, "batch pos head d_head"],
                   attn_scale: float) -> Float[Tensor, "batch head q_pos k_pos"]:
    """softmax_j(q_i·k_j / attn_scale), keys after the query masked to -inf (day 30's mask)."""
    scores = einops.einsum(q, k, "b q h d, b k h d -> b h q k") / attn_scale
    return _attention.apply_causal_mask(scores).softmax(dim=-1)


def recompute_pattern(model, cache, layer: int, rotate: str = "cached") -> Float[Tensor, "batch head q_pos k_pos"]:
    """Layer ``layer``'s attention pattern from the cached queries and keys, not from hook_pattern.

    Hooks used: ``hook_q``/``hook_k`` for absolute-position models (GPT-2); for rotary models
    ``hook_rot_q``/``hook_rot_k`` (``rotate="cached"``), or ``hook_q``/``hook_k`` rotated by our
    ``apply_rotary`` (``rotate="ours"``). Keys are repeated over query heads for GQA, and the
    scores divided by ``cfg.attn_scale``.
    """
    cfg = model.cfg
    if cfg.positional_embedding_type == "rotary":
        if cfg.rotary_adjacent_pairs:
            raise NotImplementedError("GPT-J-style adjacent rotary pairs")
        if rotate == "cached":
            q, k = cache[act_name("rot_q", layer)], cache[act_name("rot_k", layer)]
        elif rotate == "ours":
            q = apply_rotary(cache[act_name("q", layer)], cfg.rotary_base, cfg.rotary_dim)
            k = apply_rotary(cache[act_name("k", layer)], cfg.rotary_base, cfg.rotary_dim)
        else:
            raise ValueError(f"rotate must be 'cached' or 'ours', not {rotate!r}")
    else:
        q, k = cache[act_name("q", layer)], cache[act_name("k", layer)]
    return causal_pattern(q, repeat_kv(k, cfg.n_heads), cfg.attn_scale)


# ---------------------------------------------------------------- head detectors (used by days 37-38 too)


def diagonal_attention(pattern: Float[Tensor, "... q_pos k_pos"], offset: int, first_query: int = 1) -> Float[Tensor, "..."]:
    """Mean attention from query i to key i - offset, over queries i ≥ max(first_query, offset).

    offset 0: current-token heads; 1: previous-token heads; on a sequence repeated with period n,
    offset n - 1 with first_query = n + 1 is the induction stripe (the token after the previous
    occurrence of the current one). Query 0 sees only itself, so by default it is left out.
    """
    stripe = pattern.diagonal(offset=-offset, dim1=-2, dim2=-1)  # element j is query offset + j
    return stripe[..., max(first_query - offset, 0):].mean(-1)


def first_token_attention(pattern: Float[Tensor, "... q_pos k_pos"], first_query: int = 1) -> Float[Tensor, "..."]:
    """Mean attention to position 0 over queries i ≥ first_query (an 'attention sink')."""
    return pattern[..., first_query:, 0].mean(-1)


@torch.no_grad()
def cached_patterns(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer batch head q_pos k_pos"]:
    """Every layer's attention pattern from one run_with_cache (only the pattern hooks are stored)."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    return torch.stack([cache[act_name("pattern", l)] for l in range(model.cfg.n_layers)])


def head_detector_scores(patterns: Float[Tensor, "layer batch head q_pos k_pos"]) -> dict[str, Float[Tensor, "layer head"]]:
    """ARENA's three detectors, averaged over the batch: current-, previous- and first-token scores."""
    return {"current": diagonal_attention(patterns, 0).mean(1),
            "previous": diagonal_attention(patterns, 1).mean(1),
            "first": first_token_attention(patterns).mean(1)}


def detect_heads(scores: Float[Tensor, "layer head"], threshold: float) -> list[str]:
    """Heads whose score exceeds the threshold, as "L.H" labels, strongest first."""
    layer, head = torch.nonzero(scores > threshold, as_tuple=True)
    order = scores[layer, head].argsort(descending=True)
    return [f"{layer[i].item()}.{head[i].item()}" for i in order]


def top_head(scores: Float[Tensor, "layer head"]) -> tuple[int, int, float]:
    """(layer, head, score) of the highest-scoring head."""
    flat = scores.argmax().item()
    layer, head = divmod(flat, scores.shape[1])
    return layer, head, scores[layer, head].item()


# ---------------------------------------------------------------- figures (day 38 draws with these too)


def plot_patterns(ax_grid, patterns: list[Tensor], labels: list[str], titles: list[str], max_labels: int = 40) -> None:
    """Draw [q, k] attention patterns as heatmaps (rows: the attending query) with token labels."""
    for ax, pattern, title in zip(ax_grid, patterns, titles):
        ax.imshow(pattern.detach().cpu().numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        n = pattern.shape[-1]
        if n <= max_labels and labels:
            ax.set_xticks(range(n), labels[:n], rotation=90, fontsize=6)
            ax.set_yticks(range(n), labels[:n], fontsize=6)
        ax.set_xlabel("key (attended to)", fontsize=8)
        ax.set_ylabel("query", fontsize=8)


def plot_head_scores(axes, scores: dict[str, Tensor], titles: dict[str, str]) -> None:
    """One layer × head heatmap per score, colour scale 0..1."""
    for ax, (name, values) in zip(axes, scores.items()):
        im = ax.imshow(values.detach().cpu().numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_title(titles.get(name, name), fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    axes[-1].figure.colorbar(im, ax=list(axes), shrink=0.8)


def token_labels(tokenizer, ids) -> list[str]:
    """Readable per-token strings (GPT-2's Ġ for a leading space shown as a space)."""
    return [tokenizer.decode([int(i)]).replace("\n", "⏎") for i in ids]


# ---------------------------------------------------------------- the experiment

GATE_CORPUS = dict(n_seq=2, seq_len=64)         # what the gate recomputes
EXPERIMENT_CORPUS = dict(n_seq=16, seq_len=128)  # the head-score maps
SENTENCE = ("The European lobster is found across the north-eastern Atlantic Ocean. "
            "The European lobster is eaten as a delicacy.")


def recompute_errors(model, tokens) -> dict[str, float]:
    """max |recomputed - cached| over every layer's pattern, for each way of getting q and k."""
    _, cache = model.run_with_cache(tokens)
    ways = ["cached", "ours"] if model.cfg.positional_embedding_type == "rotary" else ["cached"]
    return {way: max((recompute_pattern(model, cache, l, way) - cache[act_name("pattern", l)]).abs().max().item()
                     for l in range(model.cfg.n_layers)) for way in ways}


def run_experiment(out_dir: Path) -> dict:
    """SmolLM2 in TransformerLens: its facts, its accuracy on WikiText-2, the pattern recomputation,
    the three head detectors over WikiText-2 and the patterns of the strongest heads."""
    import matplotlib.pyplot as plt

    from checks.models import smollm2_hooked

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    model = smollm2_hooked()
    tok = model.tokenizer

    gate_tokens = wikitext_tokens(tok, **GATE_CORPUS)
    tokens = wikitext_tokens(tok, **EXPERIMENT_CORPUS)
    accuracy, _ = next_token_accuracy(model, tokens)
    patterns = cached_patterns(model, tokens)
    scores = head_detector_scores(patterns)
    tops = {name: top_head(s) for name, s in scores.items()}

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), constrained_layout=True)
    plot_head_scores(axes, scores, {"current": "current-token score", "previous": "previous-token score",
                                    "first": "first-token score"})
    fig.suptitle(f"SmolLM2-135M heads on WikiText-2 ({EXPERIMENT_CORPUS['n_seq']}×{EXPERIMENT_CORPUS['seq_len']} tokens)")
    fig.savefig(out_dir / "figures/head_scores.png", dpi=120)
    plt.close(fig)

    ids = tok(SENTENCE, add_special_tokens=False, return_tensors="pt").input_ids
    sent_patterns = cached_patterns(model, ids)
    labels = token_labels(tok, ids[0])
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    plot_patterns(axes, [sent_patterns[l, 0, h] for l, h, _ in tops.values()], labels,
                  [f"L{l}H{h}: strongest {name}-token head" for name, (l, h, _) in tops.items()])
    fig.tight_layout()
    fig.savefig(out_dir / "figures/attention_patterns.png", dpi=120)
    plt.close(fig)

    errors = recompute_errors(model, tokens[:4])
    gate_accuracy, _ = next_token_accuracy(model, gate_tokens)
    from checks.models import smollm2

    hf, _ = smollm2()
    results = {
        "facts": model_facts(model),
        "hf_n_parameters": sum(p.numel() for p in hf.parameters()),  # tied embedding counted once
        "corpus": EXPERIMENT_CORPUS,
        "accuracy": accuracy,
        "gate_corpus": GATE_CORPUS,
        "gate_accuracy": gate_accuracy,
        "recompute_max_abs_err": errors,
        "top_heads": {name: {"layer": l, "head": h, "score": s} for name, (l, h, s) in tops.items()},
        "n_heads_above_half": {name: len(detect_heads(s, 0.5)) for name, s in scores.items()},
        "first_heads_above_half_by_layer": (scores["first"] > 0.5).sum(1).tolist(),
        "first_heads_above_half_before_layer_12": int((scores["first"][:12] > 0.5).sum()),
        "layer0_scores": {name: s[0].tolist() for name, s in scores.items()},
        "sentence_tokens": labels,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
