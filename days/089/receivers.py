"""Reasoning-model interpretability (ARENA 4.3, parts 2–3): receiver heads and attention suppression.

White-box versions of day 88's sentence importance (Bogdan et al. 2025, "Thought Anchors"):

- **Receiver heads.** Average a head's attention pattern over sentence blocks (``average_attention_by_chunk``);
  a sentence's *vertical score* is the attention that later sentences (at least ``proximity_ignore`` sentences
  on) pay it (``get_vertical_scores``). A head whose vertical scores are heavy-tailed over the sentences
  (high kurtosis, ``compute_head_kurtosis``) focuses on a few "broadcasting" sentences: a receiver head.
- **Attention suppression.** Mask every head's attention to one sentence (``compute_suppressed_attention``:
  the sentence's keys get score −∞ before the softmax, so each row still sums to 1) and measure how much the
  later tokens' next-token distributions move (``compute_suppression_kl``): a causal, sentence-to-sentence map.
- Rotary positions (``apply_rotary_pos_emb``), which the suppression has to reproduce when it recomputes the
  attention from queries and keys.

Day 88's toy (whose anchor line is known) is the ground truth; SmolLM2's step-by-step traces from day 88 are the
real subject. Day 88's chunking and toy are imported, never copied.
"""

from __future__ import annotations

import importlib
import math
from typing import Sequence

import numpy as np
import torch

COT = importlib.import_module("days.088.cot")
TOY = importlib.import_module("days.088.toy")

# ---------------------------------------------------------------- attention matrices


@torch.no_grad()
def extract_attention_matrix(model, tokens: torch.Tensor, layer: int, head: int | None = None) -> torch.Tensor:
    """ARENA's ``extract_attention_matrix``: the attention pattern of ``layer`` (one ``head`` or all heads) on
    one sequence, from a HookedTransformer's ``blocks.{layer}.attn.hook_pattern``: (q, k) or (head, q, k),
    each row a distribution over the earlier positions."""
    tokens = tokens if tokens.ndim == 2 else tokens[None]
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(tokens, names_filter=name)
    pattern = cache[name][0]
    return pattern if head is None else pattern[head]


@torch.no_grad()
def all_attention_patterns(model, tokens: torch.Tensor) -> torch.Tensor:
    """Every layer's pattern on one sequence: (layer, head, q, k)."""
    tokens = tokens if tokens.ndim == 2 else tokens[None]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0] for layer in range(model.cfg.n_layers)])


def average_attention_by_chunk(attn: torch.Tensor, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Sentence-level attention: entry (i, j) is the mean of the token attention from chunk i's tokens to chunk
    j's tokens (a block average); leading dimensions (layers, heads) are kept: (..., n_chunks, n_chunks)."""
    n = len(spans)
    out = attn.new_zeros(attn.shape[:-2] + (n, n))
    for i, (qs, qe) in enumerate(spans):
        for j, (ks, ke) in enumerate(spans):
            out[..., i, j] = attn[..., qs:qe, ks:ke].mean(dim=(-2, -1))
    return out


def get_vertical_scores(chunk_attn: torch.Tensor, proximity_ignore: int = 1) -> torch.Tensor:
    """ARENA's vertical scores: sentence j's score is the mean of column j over the rows i ≥ j + proximity_ignore
    (the sentences far enough after it); NaN where no row qualifies (the last sentences).
    ``chunk_attn`` is (..., n, n); the result (..., n)."""
    n = chunk_attn.shape[-1]
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    below = (i >= j + proximity_ignore).to(chunk_attn.dtype)
    count = below.sum(0)
    total = (chunk_attn * below).sum(-2)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))


def compute_head_kurtosis(vertical_scores: torch.Tensor) -> torch.Tensor:
    """Excess (Fisher) kurtosis of each head's vertical scores over the sentences, NaNs omitted:
    $\\kappa = \\frac{m_4}{m_2^2} - 3$ with the biased central moments $m_r = \\frac1n\\sum (v - \\bar v)^r$
    (scipy's ``kurtosis(fisher=True, bias=True, nan_policy='omit')``). (..., n) -> (...)."""
    v = vertical_scores.to(torch.float64)
    ok = ~torch.isnan(v)
    n = ok.sum(-1)
    mean = torch.where(ok, v, 0).sum(-1) / n
    dev = torch.where(ok, v - mean[..., None], 0)
    m2 = (dev ** 2).sum(-1) / n
    m4 = (dev ** 4).sum(-1) / n
    return m4 / m2 ** 2 - 3.0


def get_receiver_heads(kurtosis: torch.Tensor, k: int = 3, skip_first_layer: bool = False) -> list[tuple[int, int]]:
    """The ``k`` (layer, head) pairs of highest kurtosis (NaNs last); ARENA's receiver heads. ``kurtosis`` is
    (layer, head), typically averaged over many traces."""
    kurt = kurtosis.clone().to(torch.float64)
    kurt[torch.isnan(kurt)] = -math.inf
    if skip_first_layer:
        kurt[0] = -math.inf
    flat = torch.topk(kurt.flatten(), k).indices
    return [(int(i) // kurt.shape[1], int(i) % kurt.shape[1]) for i in flat]


# ---------------------------------------------------------------- rotary positions


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] on the last axis (GPT-NeoX/Llama pairing: dimension d with d + D/2)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding: each pair (x_d, x_{d+D/2}) at position p is rotated by the angle p·θ_d,
    $x' = x \\cos + \\operatorname{rotate\\_half}(x) \\sin$. ``cos``/``sin`` are (batch, pos, D); they are
    unsqueezed at ``unsqueeze_dim`` to broadcast over the heads (1 for (batch, head, pos, D) tensors,
    2 for (batch, pos, head, D))."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def rotary_cos_sin(positions: torch.Tensor, dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angles p·θ_d, θ_d = base^(−2d/D), d < D/2, each frequency used twice
    (``cat((f, f))``): (..., pos, D) for ``positions`` (..., pos)."""
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
    angles = positions[..., None].float() * inv_freq
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


# ---------------------------------------------------------------- attention suppression


def compute_suppressed_attention(attn_scores: torch.Tensor, suppress_start: int, suppress_end: int) -> torch.Tensor:
    """The attention pattern with chunk [suppress_start, suppress_end) suppressed: its keys get score −∞ for every
    query at or after ``suppress_end`` (the chunk itself is untouched), then the softmax over the keys.
    ``attn_scores`` are pre-softmax (..., q, k) with the causal mask already applied (−∞ above the diagonal);
    every row still sums to 1 (position 0 is never masked unless the chunk starts there)."""
    scores = attn_scores.clone()
    q = scores.shape[-2]
    rows = torch.arange(q) >= suppress_end
    scores[..., rows, suppress_start:suppress_end] = -math.inf
    return scores.softmax(-1)


def suppression_hooks(model, suppress_start: int, suppress_end: int) -> list:
    """Forward hooks that suppress the chunk in every head of every layer of a HookedTransformer (on
    ``hook_attn_scores``, so the model's own softmax renormalises exactly as ``compute_suppressed_attention``)."""
    def hook(scores, hook):
        scores = scores.clone()
        scores[..., suppress_end:, suppress_start:suppress_end] = -math.inf
        return scores
    return [(f"blocks.{layer}.attn.hook_attn_scores", hook) for layer in range(model.cfg.n_layers)]


def compute_suppression_kl(original_logits: torch.Tensor, suppressed_logits: torch.Tensor) -> torch.Tensor:
    """Per position, $\\mathrm{KL}(p_\\text{orig} \\,\\|\\, p_\\text{suppressed})$ of the next-token distributions
    (nats): (..., pos, vocab) -> (..., pos)."""
    logp = original_logits.to(torch.float64).log_softmax(-1)
    logq = suppressed_logits.to(torch.float64).log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1)


@torch.no_grad()
def suppression_matrix(model, tokens: torch.Tensor, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Entry (i, j), i > j: the mean KL over chunk i's tokens when chunk j is suppressed (0 on and above the
    diagonal): which later sentences each sentence causally shapes."""
    tokens = tokens if tokens.ndim == 2 else tokens[None]
    base = model(tokens)[0]
    n = len(spans)
    out = torch.zeros(n, n, dtype=torch.float64)
    for j, (s, e) in enumerate(spans):
        logits = model.run_with_hooks(tokens, fwd_hooks=suppression_hooks(model, s, e))[0]
        kl = compute_suppression_kl(base, logits)
        for i in range(j + 1, n):
            qs, qe = spans[i]
            out[i, j] = kl[qs:qe].mean()
    return out


# ---------------------------------------------------------------- on the toy (ground truth)


def max_excess_kurtosis(n: int) -> float:
    """The largest excess kurtosis n numbers can have, $n - 5 + \frac{1}{n-1}$ (one value apart from n − 1 equal
    ones): 0.25 for n = 5. With a handful of sentences no head can look heavy-tailed, so kurtosis cannot single
    out receiver heads on short traces."""
    return n - 5 + 1 / (n - 1)


def toy_units(unit: str = "token") -> list[tuple[int, int]]:
    """The units of the toy's reasoning that vertical scores are computed over, after the question: its lines and
    the answer line (``unit='line'``, day 88's ``chunk_spans`` without the question), or each of their tokens
    (``unit='token'``: 18 units, since 6 lines cap the kurtosis at ``max_excess_kurtosis(5)`` = 0.25)."""
    lines = TOY.chunk_spans()[1:]
    if unit == "line":
        return lines
    return [(t, t + 1) for s, e in lines for t in range(s, e)]


@torch.no_grad()
def toy_vertical_scores(model, tokens: torch.Tensor, unit: str = "token", proximity_ignore: int = 1) -> torch.Tensor:
    """Vertical scores of every head for each toy trace: (trace, layer, head, unit), units from ``toy_units``."""
    spans = toy_units(unit)
    out = []
    for i in range(len(tokens)):
        chunk = average_attention_by_chunk(all_attention_patterns(model, tokens[i]), spans)
        out.append(get_vertical_scores(chunk, proximity_ignore))
    return torch.stack(out)


def unit_line(unit_index: torch.Tensor, unit: str = "token") -> torch.Tensor:
    """The scratchpad line a unit belongs to (N_LINES for the answer line)."""
    return unit_index // TOY.LINE_LEN if unit == "token" else unit_index


@torch.no_grad()
def toy_answer_suppression_kl(model, tokens: torch.Tensor) -> torch.Tensor:
    """KL at the answer (the ``A`` token's next-token distribution) when each scratchpad line is suppressed in
    every head: (trace, N_LINES)."""
    base = model(tokens)
    pos = TOY.answer_pos()
    out = []
    for k in range(TOY.N_LINES):
        s, e = TOY.line_span(k)
        logits = model.run_with_hooks(tokens, fwd_hooks=suppression_hooks(model, s, e))
        out.append(compute_suppression_kl(base[:, pos], logits[:, pos]))
    return torch.stack(out, 1)


# ---------------------------------------------------------------- on SmolLM2's traces (day 88's)


def trace_token_spans(tok, messages: list[dict], chunks: Sequence[str]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Tokens of the chat with the assistant reply = the chunks joined by spaces, and each chunk's token span
    (chunk k's tokens are those added when the reply grows from chunks[:k] to chunks[:k+1]; the prompt is chunk
    −1 and not returned)."""
    def ids(k):
        reply = " ".join(chunks[:k])
        text = tok.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=False,
                                       continue_final_message=True)
        return tok(text, add_special_tokens=False)["input_ids"]
    full = ids(len(chunks))
    bounds = [len(ids(k)) for k in range(len(chunks) + 1)]
    # a boundary token may merge across the join; keep spans non-empty and inside the sequence
    spans = [(bounds[k], max(bounds[k + 1], bounds[k] + 1)) for k in range(len(chunks))]
    return torch.tensor(full), spans


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


# ---------------------------------------------------------------- the experiment


def toy_receivers(model, n: int = 100, seed: int = 11, k: int = 3, unit: str = "token") -> dict:
    """Receiver heads of day 88's toy (kurtosis of vertical scores over the reasoning's tokens, averaged over
    ``n`` traces) and whether they attend to the ground-truth anchor line: per head, how often the unit with the
    largest vertical score lies in the anchor line; the same at line level (kurtosis capped); attention
    suppression of each line against the answer."""
    proportion = importlib.import_module("days.076.inspect_setup").proportion
    tr = TOY.make_traces(n, seed)
    tokens, anchor = tr["tokens"], tr["anchor"]
    vert = toy_vertical_scores(model, tokens, unit)             # (trace, layer, head, unit)
    mean_kurt = torch.nanmean(compute_head_kurtosis(vert), 0)
    heads = get_receiver_heads(mean_kurt, k)
    per_head = {}
    for (layer, h) in heads:
        v = torch.nan_to_num(vert[:, layer, h], nan=-math.inf)
        top_line = unit_line(v.argmax(-1), unit)
        in_anchor = unit_line(torch.arange(v.shape[-1]), unit)[None] == anchor[:, None]
        per_head[f"L{layer}H{h}"] = {
            "kurtosis": float(mean_kurt[layer, h]), "anchor_top": proportion(int((top_line == anchor).sum()), n),
            "mean_vertical_anchor": float(v[in_anchor].mean()),
            "mean_vertical_other": float(v[~in_anchor & torch.isfinite(v)].mean()),
            "top_token_in_line": torch.bincount(v.argmax(-1) % TOY.LINE_LEN, minlength=TOY.LINE_LEN).tolist()}
    line_vert = toy_vertical_scores(model, tokens, "line")
    line_kurt = torch.nanmean(compute_head_kurtosis(line_vert), 0)
    kl = toy_answer_suppression_kl(model, tokens)               # (trace, line)
    is_anchor = torch.arange(TOY.N_LINES)[None] == anchor[:, None]
    example = suppression_matrix(model, tokens[0], TOY.chunk_spans())
    best = max(per_head, key=lambda name: per_head[name]["anchor_top"]["p"])
    return {"n": n, "unit": unit, "kurtosis": mean_kurt.tolist(), "receiver_heads": [list(x) for x in heads],
            "heads": per_head, "anchor_head": best, "anchor_head_rank": list(per_head).index(best) + 1,
            "anchor_head_stats": per_head[best], "top_head": next(iter(per_head)),
            "top_head_stats": next(iter(per_head.values())),
            "line_level": {"kurtosis": line_kurt.tolist(), "max_kurtosis": max(float(line_kurt.max()), -99.0),
                           "cap": max_excess_kurtosis(TOY.N_LINES)},
            "suppression": {"anchor_top": proportion(int((kl.argmax(-1) == anchor).sum()), n),
                            "mean_kl_anchor": float(kl[is_anchor].mean()),
                            "mean_kl_filler": float(kl[~is_anchor].mean())},
            "example": {"anchor": int(anchor[0]), "tokens": tokens[0].tolist(),
                        "vertical": {name: torch.nan_to_num(vert[0, int(name[1]), int(name[3])], nan=0.0).tolist()
                                     for name in per_head},
                        "suppression_matrix": example.tolist()}}


def smollm2_receivers(traces: list[dict], k: int = 3, proximity_ignore: int = 1, min_chunks: int = 3) -> dict:
    """Receiver heads of SmolLM2 (HookedTransformer) on day 88's step-by-step traces: every head's vertical
    scores over the reply's sentences, kurtosis averaged over traces, the top-k heads (layer 0 skipped), the
    split-half agreement of the head ranking, and the receiver heads' vertical scores against day 88's forced
    importance and sentence categories."""
    from checks.models import smollm2_hooked

    model = smollm2_hooked()
    tok = model.tokenizer
    use = [t for t in traces if len(t["chunks"]) >= min_chunks]
    verts, kurts = [], []
    for t in use:
        tokens, spans = trace_token_spans(tok, COT.cot_messages(t["question"]), t["chunks"])
        chunk = average_attention_by_chunk(all_attention_patterns(model, tokens), spans)
        v = get_vertical_scores(chunk, proximity_ignore)
        verts.append(v)
        kurts.append(compute_head_kurtosis(v))
    kurt = torch.stack(kurts)                                   # (trace, layer, head)
    mean_kurt = torch.nanmean(kurt, 0)
    heads = get_receiver_heads(mean_kurt, k, skip_first_layer=True)
    half = len(use) // 2
    a, b = torch.nanmean(kurt[:half], 0).flatten(), torch.nanmean(kurt[half:], 0).flatten()
    ok = ~(torch.isnan(a) | torch.isnan(b))
    split_half = spearman(a[ok].tolist(), b[ok].tolist())
    rec_v, imp, cats = [], [], []
    for t, v in zip(use, verts):
        score = torch.stack([v[layer, h] for layer, h in heads]).mean(0)
        for j, (s, c, f) in enumerate(zip(score.tolist(), t["categories"], t["forced_importance"])):
            if not math.isnan(s):
                rec_v.append(s)
                imp.append(f)
                cats.append(c)
    by_cat = {c: float(np.mean([s for s, cc in zip(rec_v, cats) if cc == c])) for c in sorted(set(cats))}
    first = use[0]
    tokens, spans = trace_token_spans(tok, COT.cot_messages(first["question"]), first["chunks"])
    sup = suppression_matrix(model, tokens, spans)
    units = [len(t["chunks"]) - proximity_ignore for t in use]   # sentences that have a vertical score
    return {"n_traces": len(use), "receiver_heads": [list(x) for x in heads],
            "median_units": float(np.median(units)), "kurtosis_cap_at_median": max_excess_kurtosis(int(np.median(units))),
            "receiver_kurtosis": [float(mean_kurt[layer, h]) for layer, h in heads],
            "median_kurtosis": float(torch.nanmedian(mean_kurt)), "split_half_spearman": split_half,
            "vertical_vs_forced_importance_spearman": spearman(rec_v, imp), "n_sentences": len(rec_v),
            "receiver_vertical_by_category": by_cat,
            "first_trace": {"kurtosis": kurts[0].tolist(), "chunks": first["chunks"], "question": first["question"],
                            "suppression_matrix": sup.tolist()},
            "kurtosis": mean_kurt.tolist()}


def _figures(results: dict, out_dir) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    toy = results["toy"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    im = axes[0].imshow(np.array(toy["kurtosis"]), cmap="viridis")
    axes[0].set_xlabel("head"), axes[0].set_ylabel("layer")
    axes[0].set_title("toy: mean kurtosis of vertical scores", fontsize=9)
    fig.colorbar(im, ax=axes[0])
    names = ["question"] + [f"line {k}" for k in range(TOY.N_LINES)] + ["answer"]
    ex = toy["example"]
    units = [f"{TOY.TOKEN_NAMES[t]}" for t in ex["tokens"][TOY.Q_LEN:]]
    for name, vals in ex["vertical"].items():
        axes[1].plot(range(len(vals)), vals, marker="o", ms=3, label=name)
    s0, e0 = TOY.line_span(ex["anchor"])
    axes[1].axvspan(s0 - TOY.Q_LEN - 0.5, e0 - TOY.Q_LEN - 0.5, color="C3", alpha=0.15, label="anchor line")
    axes[1].set_xticks(range(len(units)), units, fontsize=7)
    axes[1].legend(fontsize=7)
    axes[1].set_title("receiver heads' vertical scores, one trace", fontsize=9)
    im = axes[2].imshow(np.array(ex["suppression_matrix"]), cmap="magma")
    axes[2].set_xticks(range(len(names)), names, rotation=45, fontsize=7)
    axes[2].set_yticks(range(len(names)), names, fontsize=7)
    axes[2].set_title("suppress column sentence: KL on row sentence", fontsize=9)
    fig.colorbar(im, ax=axes[2])
    fig.tight_layout()
    fig.savefig(out_dir / "figures/toy_receivers.png", dpi=120)
    plt.close(fig)

    smol = results["smollm2"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    im = axes[0].imshow(np.array(smol["kurtosis"]).T, cmap="viridis", aspect="auto")
    axes[0].set_xlabel("layer"), axes[0].set_ylabel("head")
    axes[0].set_title(f"SmolLM2: mean kurtosis over {smol['n_traces']} traces", fontsize=9)
    fig.colorbar(im, ax=axes[0])
    cats = sorted(smol["receiver_vertical_by_category"], key=lambda c: -smol["receiver_vertical_by_category"][c])
    axes[1].barh(cats, [smol["receiver_vertical_by_category"][c] for c in cats], color="C2")
    axes[1].invert_yaxis()
    axes[1].set_xlabel("receiver heads' mean vertical score")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/smollm2_receivers.png", dpi=120)
    plt.close(fig)


HERE = __import__("pathlib").Path(__file__).parent


def run_experiment(out_dir=HERE) -> dict:
    """Receiver heads and suppression on day 88's committed toy and on day 88's committed SmolLM2 traces."""
    import json
    import time
    from pathlib import Path

    from checks.timing import single_thread

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    start, cpu = time.perf_counter(), time.process_time()
    with single_thread():
        model, _ = TOY.load_toy()
        toy = toy_receivers(model)
        smol = smollm2_receivers(COT.load_traces())
    results = {"toy": toy, "smollm2": smol, "experiment_seconds": time.perf_counter() - start,
               "experiment_cpu_seconds": time.process_time() - cpu}
    _figures(results, out_dir)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
