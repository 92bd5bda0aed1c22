"""Day 31: the transformer's building blocks (ARENA 1.1 Transformer from Scratch).

Every module ARENA asks for, with TransformerLens's parameter names and shapes so that weights
copy across by name (day 30 provides ``Config`` and ``Attention``):

- ``LayerNorm``: y = (x - mean(x)) / sqrt(var(x) + eps) · w + b over d_model (biased variance);
- ``Embed``: the token's row of W_E [d_vocab, d_model];
- ``PosEmbed``: the position's row of W_pos [n_ctx, d_model] (learned absolute positions);
- ``MLP``: gelu_new(x W_in + b_in) W_out + b_out with d_mlp = 4 d_model, where
  gelu_new(x) = x/2 · (1 + tanh(sqrt(2/π) (x + 0.044715 x³))), GPT-2's tanh approximation of
  GELU(x) = x Φ(x);
- ``TransformerBlock``: pre-LN residual block,
  resid_mid = resid_pre + Attn(LN1(resid_pre)), resid_post = resid_mid + MLP(LN2(resid_mid));
- ``Unembed``: logits = x W_U + b_U with W_U [d_model, d_vocab].
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import einops
import torch
import torch.nn as nn
from jaxtyping import Float, Int
from torch import Tensor

_attention = importlib.import_module("days.030.attention")
Config = _attention.Config
Attention = _attention.Attention

__all__ = ["Attention", "Config", "Embed", "LayerNorm", "MLP", "PosEmbed", "TransformerBlock", "Unembed", "gelu_new"]


class LayerNorm(nn.Module):
    """y = (x - μ) / sqrt(σ² + eps) · w + b, with μ and the biased σ² taken over d_model."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))

    def forward(self, residual: Float[Tensor, "batch posn d_model"]) -> Float[Tensor, "batch posn d_model"]:
        centred = residual - residual.mean(dim=-1, keepdim=True)
        scale = (centred.pow(2).mean(dim=-1, keepdim=True) + self.cfg.layer_norm_eps).sqrt()
        return centred / scale * self.w + self.b


class Embed(nn.Module):
    """Token embedding: row ``token`` of W_E."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        nn.init.normal_(self.W_E, std=cfg.init_range)

    def forward(self, tokens: Int[Tensor, "batch position"]) -> Float[Tensor, "batch position d_model"]:
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    """Learned absolute position embedding: row ``past_kv_pos_offset + i`` of W_pos for position i.

    The offset (as in TransformerLens) is the number of tokens already in a KV cache (day 34).
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
        nn.init.normal_(self.W_pos, std=cfg.init_range)

    def forward(self, tokens: Int[Tensor, "batch position"], past_kv_pos_offset: int = 0) -> Float[Tensor, "batch position d_model"]:
        batch, seq_len = tokens.shape
        if past_kv_pos_offset + seq_len > self.cfg.n_ctx:
            raise ValueError(f"positions up to {past_kv_pos_offset + seq_len} exceed n_ctx = {self.cfg.n_ctx}")
        rows = self.W_pos[past_kv_pos_offset:past_kv_pos_offset + seq_len]
        return einops.repeat(rows, "seq d_model -> batch seq d_model", batch=batch)


def gelu_new(x: Tensor) -> Tensor:
    """GPT-2's GELU: x/2 · (1 + tanh(sqrt(2/π) (x + 0.044715 x³))), the tanh approximation of x Φ(x)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class MLP(nn.Module):
    """gelu_new(x W_in + b_in) W_out + b_out: one hidden layer of width d_mlp at every position."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        nn.init.normal_(self.W_in, std=cfg.init_range)
        nn.init.normal_(self.W_out, std=cfg.init_range)

    def forward(self, normalized_resid_mid: Float[Tensor, "batch posn d_model"]) -> Float[Tensor, "batch posn d_model"]:
        pre = einops.einsum(normalized_resid_mid, self.W_in, "b s m, m n -> b s n") + self.b_in
        return einops.einsum(gelu_new(pre), self.W_out, "b s n, n m -> b s m") + self.b_out


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x ← x + Attn(LN1(x)); x ← x + MLP(LN2(x))."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.ln1 = LayerNorm(cfg)
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, resid_pre: Float[Tensor, "batch position d_model"]) -> Float[Tensor, "batch position d_model"]:
        resid_mid = resid_pre + self.attn(self.ln1(resid_pre))
        return resid_mid + self.mlp(self.ln2(resid_mid))


class Unembed(nn.Module):
    """logits = x W_U + b_U: a score for every token of the vocabulary."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        nn.init.normal_(self.W_U, std=cfg.init_range)
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab), requires_grad=False)

    def forward(self, normalized_resid_final: Float[Tensor, "batch position d_model"]) -> Float[Tensor, "batch position d_vocab"]:
        return einops.einsum(normalized_resid_final, self.W_U, "b s m, m v -> b s v") + self.b_U


# ---------------------------------------------------------------- the experiment


def parameter_breakdown(cfg: Config) -> dict[str, int]:
    """Parameters of each component at ``cfg``'s shape, counted on the modules themselves."""
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    block = TransformerBlock(cfg)
    return {
        "embed": count(Embed(cfg)),
        "pos_embed": count(PosEmbed(cfg)),
        "attention": count(block.attn),  # per block
        "mlp": count(block.mlp),  # per block
        "layer_norms": count(block.ln1) + count(block.ln2),  # per block
        "block": count(block),
        "ln_final": count(LayerNorm(cfg)),
        "unembed": count(Unembed(cfg)),
    }


def gelu_comparison(lo: float = -6.0, hi: float = 6.0, n: int = 2401) -> dict:
    """gelu_new against the exact GELU x Φ(x) = x/2 (1 + erf(x/√2)) on a grid (float64)."""
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    exact = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    approx = gelu_new(x)
    diff = approx - exact
    worst = diff.abs().argmax()
    return {"x": x, "exact": exact, "approx": approx, "diff": diff,
            "max_abs_diff": diff.abs().max().item(), "argmax_x": x[worst].item()}


def run_experiment(out_dir: Path) -> dict:
    """Figures: gelu_new against the exact GELU, and where GPT-2 small's parameters sit."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    g = gelu_comparison()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].plot(g["x"], g["exact"], label="GELU: x Φ(x)")
    axes[0].plot(g["x"], g["approx"], "--", label="gelu_new (tanh)")
    axes[0].plot(g["x"], torch.relu(g["x"]), ":", color="grey", label="ReLU")
    axes[0].set_xlim(-4, 3)
    axes[0].set_ylim(-0.5, 3)
    axes[0].set_title("GELU and its tanh approximation")
    axes[0].legend(fontsize=8)
    axes[1].plot(g["x"], g["diff"])
    axes[1].set_title("gelu_new − GELU")
    axes[1].set_xlabel("x")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/gelu.png", dpi=120)
    plt.close(fig)

    cfg = Config()
    parts = parameter_breakdown(cfg)
    totals = {"token_embedding": parts["embed"], "position_embedding": parts["pos_embed"],
              "attention": cfg.n_layers * parts["attention"], "mlp": cfg.n_layers * parts["mlp"],
              "layer_norms": cfg.n_layers * parts["layer_norms"] + parts["ln_final"], "unembedding": parts["unembed"]}
    labels = ["token embedding W_E", "position embedding W_pos", f"attention ({cfg.n_layers} blocks)",
              f"MLP ({cfg.n_layers} blocks)", f"LayerNorms ({2 * cfg.n_layers + 1})", "unembedding W_U, b_U"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.barh(labels, [v / 1e6 for v in totals.values()], color="tab:blue")
    for i, v in enumerate(totals.values()):
        ax.text(v / 1e6 + 0.5, i, f"{v / 1e6:.2f}M" if v > 1e5 else f"{v:,}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("parameters (millions)")
    ax.set_title("Where GPT-2 small's parameters are (untied unembedding)")
    ax.set_xlim(0, max(totals.values()) / 1e6 * 1.15)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/parameters.png", dpi=120)
    plt.close(fig)

    results = {
        "gelu": {"max_abs_diff": g["max_abs_diff"], "argmax_x": g["argmax_x"]},
        "parameters_per_component": parts,
        "parameters_gpt2_small": totals,
        "total_untied": sum(totals.values()),
        "total_tied": sum(totals.values()) - parts["unembed"],
        "mlp_to_attention_ratio": parts["mlp"] / parts["attention"],
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
