"""Day 32: the full GPT-2 (ARENA 1.1 Transformer from Scratch).

``DemoTransformer`` stacks day 31's blocks into GPT-2:

    x_0     = W_E[t] + W_pos[i]                          (embed + position)
    x_{l+1} = TransformerBlock_l(x_l),   l = 0 … n_layers-1   (the residual stream)
    logits  = LN_final(x_L) W_U + b_U

At GPT-2 small's shape (12 layers, d_model 768, 12 heads of 64, d_mlp 3072, n_ctx 1024, 50,257
tokens) it has 163,087,441 parameters as written, because ARENA's ``Unembed`` keeps its own W_U
and b_U. GPT-2 ties W_U = W_Eᵀ and has no unembedding bias, so Hugging Face counts
163,087,441 - 768·50,257 - 50,257 = 124,439,808.

The parameter names are TransformerLens's, so an *unprocessed* HookedTransformer's state dict
(fold_ln=False, center_writing_weights=False, center_unembed=False) loads by name: that is
ARENA's route to pretrained weights, ``load_gpt2_small_via_transformer_lens``. Day 33 maps the
Hugging Face checkpoint directly.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
from jaxtyping import Float, Int
from torch import Tensor

_blocks = importlib.import_module("days.031.blocks")
Config = _blocks.Config
Embed, PosEmbed, LayerNorm = _blocks.Embed, _blocks.PosEmbed, _blocks.LayerNorm
TransformerBlock, Unembed = _blocks.TransformerBlock, _blocks.Unembed
Attention, MLP = _blocks.Attention, _blocks.MLP

__all__ = ["Config", "DemoTransformer", "count_parameters", "from_hooked_transformer", "load_gpt2_small_via_transformer_lens",
           "log_probs", "tied_parameter_count"]


class DemoTransformer(nn.Module):
    """GPT-2: embed + position, n_layers pre-LN blocks, a final LayerNorm and the unembedding."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.pos_embed = PosEmbed(cfg)
        self.blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = LayerNorm(cfg)
        self.unembed = Unembed(cfg)

    def run_with_residuals(self, tokens: Int[Tensor, "batch position"]) -> tuple[Float[Tensor, "batch position d_vocab"], list[Tensor]]:
        """Logits and the residual stream [x_0, …, x_L]: x_l enters block l, x_L leaves the last one."""
        residual = self.embed(tokens) + self.pos_embed(tokens)
        residuals = [residual]
        for block in self.blocks:
            residual = block(residual)
            residuals.append(residual)
        return self.unembed(self.ln_final(residual)), residuals

    def forward(self, tokens: Int[Tensor, "batch position"]) -> Float[Tensor, "batch position d_vocab"]:
        return self.run_with_residuals(tokens)[0]


def log_probs(logits: Float[Tensor, "... d_vocab"]) -> Float[Tensor, "... d_vocab"]:
    """log softmax over the vocabulary: what two models must agree on (logits may differ by a constant per position)."""
    return logits.log_softmax(dim=-1)


def count_parameters(model: nn.Module) -> int:
    """Every parameter, counted once per tensor (shared tensors once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def tied_parameter_count(model: DemoTransformer) -> int:
    """The count Hugging Face reports for GPT-2: without W_U and b_U, since GPT-2 ties W_U = W_Eᵀ and has no b_U."""
    return count_parameters(model) - model.unembed.W_U.numel() - model.unembed.b_U.numel()


# ---------------------------------------------------------------- weights from TransformerLens


def config_from_hooked(cfg) -> Config:
    """Our Config from a HookedTransformerConfig (GPT-2 family fields only)."""
    return Config(d_model=cfg.d_model, layer_norm_eps=cfg.eps, d_vocab=cfg.d_vocab, init_range=cfg.initializer_range,
                  n_ctx=cfg.n_ctx, d_head=cfg.d_head, d_mlp=cfg.d_mlp, n_heads=cfg.n_heads, n_layers=cfg.n_layers)


def load_transformer_lens_state_dict(model: DemoTransformer, state_dict: dict[str, Tensor]) -> DemoTransformer:
    """Copy weights by name (ARENA's ``load_state_dict(..., strict=False)``), refusing a processed state dict.

    Every parameter of ours must be present, except b_U, which TransformerLens's GPT-2 conversion
    leaves out because GPT-2 has none (it stays 0). A folded model has no LayerNorm weights, and a
    centred one would silently change our residual stream, so ln1.w missing is an error.
    """
    missing, _ = model.load_state_dict(state_dict, strict=False)
    params = dict(model.named_parameters())
    missing = [k for k in missing if k in params and k != "unembed.b_U"]  # buffers (IGNORE) are constants
    if missing:
        raise ValueError(f"state dict lacks {len(missing)} of our parameters, e.g. {missing[:3]}; load the "
                         "HookedTransformer with fold_ln=False, center_writing_weights=False, center_unembed=False")
    if "unembed.b_U" not in state_dict:
        with torch.no_grad():
            model.unembed.b_U.zero_()
    return model


def from_hooked_transformer(reference) -> DemoTransformer:
    """A DemoTransformer carrying an unprocessed HookedTransformer's weights (same dtype)."""
    model = DemoTransformer(config_from_hooked(reference.cfg)).to(reference.cfg.dtype)
    return load_transformer_lens_state_dict(model, reference.state_dict()).eval()


def load_gpt2_small_via_transformer_lens() -> DemoTransformer:
    """GPT-2 small's real weights, as in ARENA (needs the Hugging Face Hub; not available on our machines)."""
    from transformer_lens import HookedTransformer

    reference = HookedTransformer.from_pretrained("gpt2-small", fold_ln=False, center_unembed=False,
                                                  center_writing_weights=False)
    return from_hooked_transformer(reference)


def random_gpt2_trio(seed: int = 0, **shape):
    """(ours, TransformerLens's processed HookedTransformer, Hugging Face's GPT2LMHeadModel), all carrying one set
    of random weights: checks.models.random_gpt2's pair, and ours loaded from the unprocessed conversion."""
    from checks.models import random_gpt2
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    tl, hf = random_gpt2(seed=seed, **shape)
    ours = DemoTransformer(config_from_hooked(tl.cfg))
    load_transformer_lens_state_dict(ours, convert_gpt2_weights(hf, tl.cfg))
    return ours.eval(), tl, hf


# ---------------------------------------------------------------- the experiment


def residual_errors(ours: DemoTransformer, tl, hf, tokens: Tensor) -> dict:
    """Max |Δ| of the residual stream per layer and of the log-probabilities, ours against both references.

    TransformerLens's processed model centres every write to the residual stream
    (center_writing_weights), so its x_l is ours minus its mean over d_model: we compare centred
    streams. Hugging Face's last hidden state has ln_f applied, so its final entry is compared
    with LN_final(x_L).
    """
    with torch.no_grad():
        logits, residuals = ours.run_with_residuals(tokens)
        _, cache = tl.run_with_cache(tokens)
        tl_logits = tl(tokens)
        out = hf(tokens, output_hidden_states=True)
    centre = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731
    n = ours.cfg.n_layers
    tl_resid = [cache[f"blocks.{l}.hook_resid_pre"] for l in range(n)] + [cache[f"blocks.{n - 1}.hook_resid_post"]]
    hf_resid = list(out.hidden_states[:-1]) + [out.hidden_states[-1]]
    ours_hf = residuals[:-1] + [ours.ln_final(residuals[-1])]
    return {
        "tl_residual": [(centre(a) - b).abs().max().item() for a, b in zip(residuals, tl_resid)],
        "hf_residual": [(a - b).abs().max().item() for a, b in zip(ours_hf, hf_resid)],
        "tl_log_probs": (log_probs(logits) - log_probs(tl_logits)).abs().max().item(),
        "hf_log_probs": (log_probs(logits) - log_probs(out.logits)).abs().max().item(),
        "residual_scale": [x.abs().max().item() for x in residuals],
    }


def benchmark(models: dict, tokens: Tensor, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` seconds of one forward pass (no grad) for each model.

    The models take turns within each repeat, so that load from other processes on a shared
    machine falls on all of them alike.
    """
    timings = {name: float("inf") for name in models}
    with torch.no_grad():
        for fn in models.values():
            fn(tokens)  # warm-up
        for _ in range(repeats):
            for name, fn in models.items():
                t0 = time.perf_counter()
                fn(tokens)
                timings[name] = min(timings[name], time.perf_counter() - t0)
    return timings


def benchmark_models(ours: DemoTransformer, tl, hf) -> dict:
    """The three forward passes the benchmark times, each tokens -> logits [batch, pos, d_vocab]: ours,
    TransformerLens's HookedTransformer and Hugging Face's GPT2LMHeadModel."""
    return {"ours": ours, "transformer_lens": tl, "hugging_face": lambda x: hf(x).logits}


BENCH_SHAPES = [(1, 64), (4, 256)]


def benchmark_rows(ours: DemoTransformer, tl, hf, shapes=BENCH_SHAPES, repeats: int = 5, seed: int = 0) -> list[dict]:
    """The benchmark at each (batch, seq) shape on random tokens: seconds per model and ours / each reference."""
    torch.manual_seed(seed)
    rows = []
    for batch, seq in shapes:
        toks = torch.randint(0, ours.cfg.d_vocab, (batch, seq))
        t = benchmark(benchmark_models(ours, tl, hf), toks, repeats=repeats)
        rows.append({"batch": batch, "seq": seq, **t,
                     "ours_vs_tl": t["ours"] / t["transformer_lens"], "ours_vs_hf": t["ours"] / t["hugging_face"]})
    return rows


PROMPT = "The residual stream is the central object of a transformer: every layer reads from it and writes back into it."


def run_experiment(out_dir: Path) -> dict:
    """GPT-2 small's shape with random weights: per-layer agreement with TransformerLens and Hugging Face,
    and the forward pass benchmarked against both."""
    import matplotlib.pyplot as plt

    from checks.models import gpt2_tokenizer

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    ours, tl, hf = random_gpt2_trio()
    tokens = gpt2_tokenizer()(PROMPT, return_tensors="pt").input_ids
    errors = residual_errors(ours, tl, hf, tokens)

    fig, ax = plt.subplots(figsize=(7, 4))
    layers = list(range(ours.cfg.n_layers + 1))
    ax.semilogy(layers, errors["tl_residual"], "o-", label="vs TransformerLens (centred stream)")
    ax.semilogy(layers, errors["hf_residual"], "s-", label="vs Hugging Face hidden states")
    ax.set_xlabel("residual stream x_l (0 = embeddings, 12 = after the last block)")
    ax.set_ylabel("max |Δ| (float32)")
    ax.set_title(f"GPT-2 small shape, random weights, {tokens.shape[1]} tokens")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/layer_parity.png", dpi=120)
    plt.close(fig)

    bench = benchmark_rows(ours, tl, hf)

    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.25
    for i, (name, label) in enumerate([("ours", "DemoTransformer"), ("transformer_lens", "HookedTransformer"),
                                       ("hugging_face", "GPT2LMHeadModel")]):
        ax.bar([j + (i - 1) * width for j in range(len(bench))], [r[name] for r in bench], width, label=label)
    ax.set_xticks(range(len(bench)), [f"batch {r['batch']} × {r['seq']} tokens" for r in bench])
    ax.set_ylabel("seconds per forward pass (best of 5)")
    ax.set_yscale("log")
    ax.set_title(f"GPT-2 small forward pass on {torch.get_num_threads()} CPU threads")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/benchmark.png", dpi=120)
    plt.close(fig)

    results = {
        "n_tokens": tokens.shape[1],
        "parameters": count_parameters(ours),
        "parameters_tied": tied_parameter_count(ours),
        "hf_parameters": hf.num_parameters(),
        "errors": errors,
        "max_tl_residual": max(errors["tl_residual"]),
        "max_hf_residual": max(errors["hf_residual"]),
        "benchmark": bench,
        "ratio_vs_tl": {f"{r['batch']}x{r['seq']}": r["ours_vs_tl"] for r in bench},
        "ratio_vs_hf": {f"{r['batch']}x{r['seq']}": r["ours_vs_hf"] for r in bench},
        "torch_threads": torch.get_num_threads(),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
