"""Day 30: the attention mechanism (ARENA 1.1 Transformer from Scratch).

Causal multi-head self-attention, written with einops and einsum, in ARENA's (and
TransformerLens's) conventions so that weights copy across by name:

    q_{b,s,h} = x_{b,s} W_Q[h] + b_Q[h]        W_Q: [n_heads, d_model, d_head]   (same for k, v)
    A_{b,h,q,k} = softmax_k( q_{b,q,h} · k_{b,k,h} / sqrt(d_head) + M_{q,k} )
    z_{b,q,h} = Σ_k A_{b,h,q,k} v_{b,k,h}
    out_{b,q} = Σ_h z_{b,q,h} W_O[h] + b_O       W_O: [n_heads, d_head, d_model]

M is the causal mask: 0 where key position ≤ query position, -inf elsewhere. With a key/value
cache the queries are the last ``n_q`` of ``n_k`` positions, so query i sits at absolute position
``n_k - n_q + i`` (the mask is aligned bottom-right); day 34's KV cache relies on this.

The experiment measures why the 1/sqrt(d_head) is there, builds a previous-token head by hand,
and benchmarks the einsum attention against PyTorch's fused kernel.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import einops
import torch
import torch.nn as nn
from jaxtyping import Float
from torch import Tensor

from checks.timing import single_thread


@dataclass
class Config:
    """ARENA's transformer configuration; the defaults are GPT-2 small's shape."""

    d_model: int = 768
    debug: bool = True
    layer_norm_eps: float = 1e-5
    d_vocab: int = 50257
    init_range: float = 0.02
    n_ctx: int = 1024
    d_head: int = 64
    d_mlp: int = 3072
    n_heads: int = 12
    n_layers: int = 12


# ---------------------------------------------------------------- the functional core


def causal_mask(n_q: int, n_k: int, device=None) -> Tensor:
    """Boolean [n_q, n_k], True where query i may attend to key j, i.e. j ≤ i + (n_k - n_q).

    Bottom-right aligned: the n_q queries are the LAST n_q positions of the n_k keys (with a KV
    cache the earlier keys come from the cache). For n_q = n_k this is the lower triangle.
    """
    if n_q > n_k:
        raise ValueError(f"causal mask: {n_q} queries cannot be later than {n_k} keys")
    q_pos = torch.arange(n_k - n_q, n_k, device=device)[:, None]
    k_pos = torch.arange(n_k, device=device)[None, :]
    return k_pos <= q_pos


def apply_causal_mask(
    attn_scores: Float[Tensor, "batch n_heads query_pos key_pos"], ignore: float | Tensor = float("-inf"),
) -> Float[Tensor, "batch n_heads query_pos key_pos"]:
    """Replace the scores of future keys by ``ignore`` (-inf, so that softmax gives them 0)."""
    allowed = causal_mask(attn_scores.shape[-2], attn_scores.shape[-1], device=attn_scores.device)
    ignore = torch.as_tensor(ignore, dtype=attn_scores.dtype, device=attn_scores.device)
    return torch.where(allowed, attn_scores, ignore)


def attention_pattern(
    q: Float[Tensor, "batch query_pos n_heads d_head"],
    k: Float[Tensor, "batch key_pos n_heads d_head"],
    causal: bool = True,
) -> Float[Tensor, "batch n_heads query_pos key_pos"]:
    """A = softmax_k(q·k / sqrt(d_head) [+ causal mask]): row q is a distribution over keys."""
    scores = einops.einsum(q, k, "b q h d, b k h d -> b h q k") / math.sqrt(q.shape[-1])
    if causal:
        scores = apply_causal_mask(scores)
    return scores.softmax(dim=-1)


def scaled_dot_product_attention(
    q: Float[Tensor, "batch query_pos n_heads d_head"],
    k: Float[Tensor, "batch key_pos n_heads d_head"],
    v: Float[Tensor, "batch key_pos n_heads d_head"],
    causal: bool = True,
) -> Float[Tensor, "batch query_pos n_heads d_head"]:
    """z_q = Σ_k softmax_k(q·k / sqrt(d_head)) v_k, per batch element and head.

    Layout [batch, position, head, d_head] as in TransformerLens (torch's fused kernel wants
    [batch, head, position, d_head]). With fewer queries than keys the queries are the last
    positions (see ``causal_mask``).
    """
    pattern = attention_pattern(q, k, causal)
    return einops.einsum(pattern, v, "b h q k, b k h d -> b q h d")


# ---------------------------------------------------------------- the module


class Attention(nn.Module):
    """ARENA's multi-head causal self-attention, with TransformerLens's parameter names and shapes."""

    IGNORE: Tensor

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        h, m, d = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, m, d))
        self.W_K = nn.Parameter(torch.empty(h, m, d))
        self.W_V = nn.Parameter(torch.empty(h, m, d))
        self.W_O = nn.Parameter(torch.empty(h, d, m))
        self.b_Q = nn.Parameter(torch.zeros(h, d))
        self.b_K = nn.Parameter(torch.zeros(h, d))
        self.b_V = nn.Parameter(torch.zeros(h, d))
        self.b_O = nn.Parameter(torch.zeros(m))
        for w in (self.W_Q, self.W_K, self.W_V, self.W_O):
            nn.init.normal_(w, std=cfg.init_range)
        self.register_buffer("IGNORE", torch.tensor(float("-inf")))

    def qkv(self, x: Float[Tensor, "batch posn d_model"]) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values, each [batch, posn, n_heads, d_head]: x W[h] + b[h]."""
        project = lambda W, b: einops.einsum(x, W, "b s m, h m d -> b s h d") + b  # noqa: E731
        return project(self.W_Q, self.b_Q), project(self.W_K, self.b_K), project(self.W_V, self.b_V)

    def apply_causal_mask(self, attn_scores: Float[Tensor, "batch n_heads query_pos key_pos"]) -> Tensor:
        """ARENA's method: mask future keys with the IGNORE buffer."""
        return apply_causal_mask(attn_scores, self.IGNORE)

    def output(self, z: Float[Tensor, "batch posn n_heads d_head"]) -> Float[Tensor, "batch posn d_model"]:
        """Each head writes z[h] W_O[h] into the residual stream; out = Σ_h z[h] W_O[h] + b_O."""
        return einops.einsum(z, self.W_O, "b s h d, h d m -> b s m") + self.b_O

    def forward(self, normalized_resid_pre: Float[Tensor, "batch posn d_model"]) -> Float[Tensor, "batch posn d_model"]:
        q, k, v = self.qkv(normalized_resid_pre)
        return self.output(scaled_dot_product_attention(q, k, v, causal=True))


# ---------------------------------------------------------------- the experiment


def score_statistics(d_heads: list[int], n_keys: int = 64, n_queries: int = 2000, seed: int = 0) -> list[dict]:
    """For q, k with iid N(0, 1) entries: the variance of q·k with and without the 1/sqrt(d) scale,
    and the mean entropy (nats) and mean largest weight of softmax over ``n_keys`` keys.

    Var(q·k) = d, so unscaled scores grow like sqrt(d) and softmax saturates to one key; scaled,
    they stay N(0, 1)-sized whatever d is.
    """
    rows = []
    for d in d_heads:
        g = torch.Generator().manual_seed(seed + d)  # one stream per d_head: rows do not depend on the list
        q = torch.randn(n_queries, d, generator=g, dtype=torch.float64)
        k = torch.randn(n_keys, d, generator=g, dtype=torch.float64)
        row = {"d_head": d}
        for name, scale in (("scaled", 1 / math.sqrt(d)), ("unscaled", 1.0)):
            scores = (q @ k.T) * scale
            p = scores.softmax(-1)
            entropy = -(p * p.clamp_min(1e-300).log()).sum(-1)
            row[name] = {"score_var": scores.var().item(), "entropy": entropy.mean().item(),
                         "max_weight": p.max(-1).values.mean().item()}
        rows.append(row)
    return rows


def previous_token_head(n_ctx: int, strength: float = 20.0) -> Attention:
    """A hand-built head on one-hot positional inputs (d_model = n_ctx) that attends to the previous token.

    With x_s = e_s, W_Q maps e_s to strength·sqrt(d)·e_{s-1} (d_head = n_ctx) and W_K is the
    identity, so score(s, t) = strength·[t = s-1]: softmax puts weight 1/(1 + s·e^{-strength}) on
    the previous position (position 0 has only itself).
    """
    cfg = Config(d_model=n_ctx, d_head=n_ctx, n_heads=1, n_ctx=n_ctx)
    head = Attention(cfg)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.W_Q[0] = strength * math.sqrt(n_ctx) * torch.diag(torch.ones(n_ctx - 1), -1)
        head.W_K[0] = torch.eye(n_ctx)
        head.W_V[0] = torch.eye(n_ctx)
        head.W_O[0] = torch.eye(n_ctx)
    return head


def benchmark(seq_lens: list[int], n_heads: int = 12, d_head: int = 64, repeats: int = 10, seed: int = 0) -> list[dict]:
    """Best-of-``repeats`` seconds of one causal attention (batch 1, GPT-2 small's heads), ours vs torch's fused kernel.

    On one thread: on a shared machine, thread synchronisation under load swamped the arithmetic
    (a 64-token attention took longer than a 256-token one with two threads).
    """
    with single_thread():
        return _benchmark(seq_lens, n_heads, d_head, repeats, seed)


def timed_functions(q: Float[Tensor, "batch pos n_heads d_head"], k: Tensor, v: Tensor) -> dict:
    """The two causal attentions the benchmark times, as zero-argument calls: ours on TransformerLens's layout
    [batch, pos, head, d_head], and torch's fused kernel on its own layout [batch, head, pos, d_head] (the
    transposed copies are made once, outside the timing)."""
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    return {"ours": lambda: scaled_dot_product_attention(q, k, v),
            "torch": lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)}


def _benchmark(seq_lens: list[int], n_heads: int, d_head: int, repeats: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in seq_lens:
        q, k, v = (torch.randn(1, n, n_heads, d_head, generator=g) for _ in range(3))
        fns = timed_functions(q, k, v)
        timings = {name: float("inf") for name in fns}
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(repeats):  # take turns, so that load from other processes falls on both alike
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                timings[name] = min(timings[name], time.perf_counter() - t0)
        rows.append({"seq_len": n, **timings, "ratio": timings["ours"] / timings["torch"]})
    return rows


D_HEADS = [1, 4, 16, 64, 256, 1024]
SEQ_LENS = [64, 128, 256, 512, 1024]


def run_experiment(out_dir: Path) -> dict:
    """Three figures: score scaling vs d_head, a hand-built previous-token pattern, the benchmark."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    stats = score_statistics(D_HEADS)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, style in (("scaled", "o-"), ("unscaled", "s--")):
        label = "q·k / √d_head" if name == "scaled" else "q·k"
        axes[0].loglog(D_HEADS, [r[name]["score_var"] for r in stats], style, label=label)
        axes[1].semilogx(D_HEADS, [r[name]["entropy"] for r in stats], style, label=label)
    axes[0].set_xlabel("d_head")
    axes[0].set_ylabel("variance of the scores")
    axes[0].set_title("Var(q·k) = d_head without the scale")
    axes[1].axhline(math.log(64), color="k", lw=0.8, ls=":", label="uniform over 64 keys")
    axes[1].set_xlabel("d_head")
    axes[1].set_ylabel("mean entropy of a row (nats)")
    axes[1].set_title("Unscaled softmax collapses onto one key")
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/score_scaling.png", dpi=120)
    plt.close(fig)

    n_ctx = 12
    head = previous_token_head(n_ctx)
    x = torch.eye(n_ctx)[None]
    q, k, _ = head.qkv(x)
    pattern = attention_pattern(q, k)[0, 0]
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    im = ax.imshow(pattern.detach(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    ax.set_title("A hand-built previous-token head")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/previous_token_head.png", dpi=120)
    plt.close(fig)

    bench = benchmark(SEQ_LENS)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.loglog(SEQ_LENS, [r["ours"] for r in bench], "o-", label="ours (einsum, materialised pattern)")
    ax.loglog(SEQ_LENS, [r["torch"] for r in bench], "s-", label="F.scaled_dot_product_attention")
    ref = bench[-1]["ours"] * (torch.tensor(SEQ_LENS, dtype=torch.float64) / SEQ_LENS[-1]) ** 2
    ax.loglog(SEQ_LENS, ref.tolist(), "k:", lw=1, label="∝ n²")
    ax.set_xlabel("sequence length n (12 heads × 64, batch 1, one CPU thread)")
    ax.set_ylabel("seconds (best of 10)")
    ax.set_title("Causal attention forward pass")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/benchmark.png", dpi=120)
    plt.close(fig)

    at = {r["d_head"]: r for r in stats}
    results = {
        "score_statistics": stats,
        "at_d_head_64": {k: v for k, v in at[64].items() if k != "d_head"},
        "at_d_head_1024": {k: v for k, v in at[1024].items() if k != "d_head"},
        "uniform_entropy_64_keys": math.log(64),
        "previous_token": {"n_ctx": n_ctx, "strength": 20.0,
                           "min_weight_on_previous": torch.diagonal(pattern, -1).min().item()},
        "benchmark": bench,
        "ratio_at_largest": bench[-1]["ratio"],
        "largest_seq_len": bench[-1]["seq_len"],
        "benchmark_threads": 1,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
