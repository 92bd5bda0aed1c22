"""Day 33: loading pretrained weights, and training a GPT of our own (ARENA 1.1 Transformer from Scratch).

Part 1, the weights. Hugging Face stores GPT-2 with ``Conv1D`` layers, y = x W + b with W as
[in, out] (the transpose of ``nn.Linear``), and fuses the three attention projections:

    c_attn.weight [d_model, 3·d_model] = [W_Q | W_K | W_V],  each column block ordered (head, d_head)
    c_proj.weight [d_model, d_model]   rows ordered (head, d_head)        -> W_O [n_heads, d_head, d_model]
    mlp.c_fc.weight [d_model, d_mlp]  = W_in;   mlp.c_proj.weight [d_mlp, d_model] = W_out
    wte [d_vocab, d_model] = W_E;  wpe [n_ctx, d_model] = W_pos;  lm_head.weight = wte (tied): W_U = W_Eᵀ, b_U = 0

so W_Q[h] = c_attn.weight[:, h·d_head : (h+1)·d_head], i.e. rearrange "m (h d) -> h m d".
``load_pretrained("gpt2")`` downloads GPT-2 small (on a machine with internet); a local
directory written by ``save_pretrained`` goes through the same code.

Part 2, training. A small DemoTransformer learns Tiny Shakespeare character by character with
next-token cross-entropy L = -1/N Σ_i log p(x_{i+1} | x_≤i) and AdamW; the experiment draws the
loss curve and samples text from the trained model.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

gpt2 = importlib.import_module("days.032.gpt2")
Config, DemoTransformer = gpt2.Config, gpt2.DemoTransformer

# ---------------------------------------------------------------- Hugging Face -> DemoTransformer

# Buffers older transformers versions saved with GPT-2 (the causal mask); they carry no weights.
IGNORED_HF_KEYS = ("attn.bias", "attn.masked_bias")


def config_from_hf(hf_config) -> Config:
    """Our Config from a transformers GPT2Config."""
    d_model, n_heads = hf_config.n_embd, hf_config.n_head
    return Config(d_model=d_model, layer_norm_eps=hf_config.layer_norm_epsilon, d_vocab=hf_config.vocab_size,
                  init_range=hf_config.initializer_range, n_ctx=hf_config.n_positions, d_head=d_model // n_heads,
                  d_mlp=hf_config.n_inner or 4 * d_model, n_heads=n_heads, n_layers=hf_config.n_layer)


def hf_to_demo_state_dict(hf_state: dict[str, Tensor], cfg: Config) -> dict[str, Tensor]:
    """Rename and reshape a GPT2LMHeadModel state dict into DemoTransformer's (TransformerLens) names.

    Every Hugging Face tensor must be used (or be a known mask buffer), and every parameter of ours
    must be produced: a checkpoint of another architecture fails loudly instead of loading half.
    """
    hf_state = {k.removeprefix("transformer."): v for k, v in hf_state.items()}
    used: set[str] = set()

    def take(key: str) -> Tensor:
        if key not in hf_state:
            raise KeyError(f"the checkpoint has no {key!r}: is it a GPT-2 checkpoint with {cfg.n_layers} layers?")
        used.add(key)
        return hf_state[key]

    heads = dict(h=cfg.n_heads)
    out = {"embed.W_E": take("wte.weight"), "pos_embed.W_pos": take("wpe.weight")}
    for l in range(cfg.n_layers):
        p, q = f"h.{l}.", f"blocks.{l}."
        out[q + "ln1.w"], out[q + "ln1.b"] = take(p + "ln_1.weight"), take(p + "ln_1.bias")
        W_Q, W_K, W_V = take(p + "attn.c_attn.weight").split(cfg.d_model, dim=1)
        b_Q, b_K, b_V = take(p + "attn.c_attn.bias").split(cfg.d_model, dim=0)
        for name, W, b in (("Q", W_Q, b_Q), ("K", W_K, b_K), ("V", W_V, b_V)):
            out[q + f"attn.W_{name}"] = einops.rearrange(W, "m (h d) -> h m d", **heads)
            out[q + f"attn.b_{name}"] = einops.rearrange(b, "(h d) -> h d", **heads)
        out[q + "attn.W_O"] = einops.rearrange(take(p + "attn.c_proj.weight"), "(h d) m -> h d m", **heads)
        out[q + "attn.b_O"] = take(p + "attn.c_proj.bias")
        out[q + "ln2.w"], out[q + "ln2.b"] = take(p + "ln_2.weight"), take(p + "ln_2.bias")
        out[q + "mlp.W_in"], out[q + "mlp.b_in"] = take(p + "mlp.c_fc.weight"), take(p + "mlp.c_fc.bias")
        out[q + "mlp.W_out"], out[q + "mlp.b_out"] = take(p + "mlp.c_proj.weight"), take(p + "mlp.c_proj.bias")
    out["ln_final.w"], out["ln_final.b"] = take("ln_f.weight"), take("ln_f.bias")
    # The unembedding is tied to the embedding: lm_head.weight is wte.weight (saved once, or twice).
    W_U = hf_state["lm_head.weight"] if "lm_head.weight" in hf_state else out["embed.W_E"]
    used.add("lm_head.weight")
    out["unembed.W_U"] = W_U.T
    out["unembed.b_U"] = torch.zeros(cfg.d_vocab, dtype=W_U.dtype)
    left = [k for k in hf_state if k not in used and not k.endswith(IGNORED_HF_KEYS)]
    if left:
        raise KeyError(f"{len(left)} checkpoint tensors were not mapped, e.g. {left[:3]}")
    return {k: v.detach().clone() for k, v in out.items()}


def from_hf_model(hf_model) -> DemoTransformer:
    """A DemoTransformer carrying a GPT2LMHeadModel's weights (strict: every parameter set)."""
    cfg = config_from_hf(hf_model.config)
    model = DemoTransformer(cfg).to(next(hf_model.parameters()).dtype)
    state = hf_to_demo_state_dict(hf_model.state_dict(), cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("IGNORE") for k in missing):  # IGNORE is a constant buffer
        raise KeyError(f"state dict does not fit DemoTransformer: missing {missing}, unexpected {unexpected}")
    return model.eval()


def load_pretrained(name_or_path: str | Path = "gpt2") -> DemoTransformer:
    """GPT-2 from the Hugging Face Hub ("gpt2" = GPT-2 small, needs internet) or from a local
    ``save_pretrained`` directory, mapped into our DemoTransformer."""
    from transformers import GPT2LMHeadModel

    return from_hf_model(GPT2LMHeadModel.from_pretrained(name_or_path))


# ---------------------------------------------------------------- training on Tiny Shakespeare


class CharTokenizer:
    """Characters as tokens: the sorted set of characters in the text (65 for Tiny Shakespeare)."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> Int[Tensor, "n"]:
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


@dataclass
class TrainArgs:
    """The slow experiment's settings (about ten minutes on one CPU thread)."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_ctx: int = 128
    batch_size: int = 16
    steps: int = 1000
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 50
    eval_every: int = 100
    eval_batches: int = 8
    seed: int = 0
    threads: int = 1  # one thread: reproducible, and on a shared 2-core machine not slower


def shakespeare(path: Path) -> tuple[CharTokenizer, Tensor, Tensor]:
    """Tiny Shakespeare as character ids, split 90% / 10% (train / validation) as nanoGPT does."""
    text = Path(path).read_text()
    tok = CharTokenizer(text)
    ids = tok.encode(text)
    split = int(0.9 * len(ids))
    return tok, ids[:split], ids[split:]


def batch(data: Tensor, batch_size: int, n_ctx: int, generator: torch.Generator) -> Int[Tensor, "batch n_ctx_plus_1"]:
    """Random windows of n_ctx + 1 characters: the model reads the first n_ctx and predicts the last n_ctx."""
    starts = torch.randint(0, len(data) - n_ctx - 1, (batch_size,), generator=generator)
    return torch.stack([data[s:s + n_ctx + 1] for s in starts.tolist()])


def next_token_loss(model: DemoTransformer, windows: Int[Tensor, "batch seq"]) -> Tensor:
    """Mean cross-entropy of predicting windows[:, 1:] from windows[:, :-1] (nats per token)."""
    logits = model(windows[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())


def make_model(args: TrainArgs, d_vocab: int) -> DemoTransformer:
    """The day-32 architecture at the experiment's size (d_head = d_model / n_heads, d_mlp = 4 d_model)."""
    torch.manual_seed(args.seed)
    return DemoTransformer(Config(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
                                  d_head=args.d_model // args.n_heads, d_mlp=4 * args.d_model, n_ctx=args.n_ctx,
                                  d_vocab=d_vocab))


def lr_factor(step: int, args: TrainArgs) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from 1 to 0.1 at the last step."""
    return min(1.0, (step + 1) / args.warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / args.steps)))


def train(args: TrainArgs, train_ids: Tensor, val_ids: Tensor, d_vocab: int, log=print) -> tuple[DemoTransformer, dict]:
    """AdamW (weight decay on matrices only) on next-character cross-entropy, gradients clipped to norm 1.

    Returns the model and its history: the training-batch loss every 10 steps, and the validation
    loss over ``eval_batches`` fixed batches every ``eval_every`` steps (with the seconds elapsed).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _train(args, train_ids, val_ids, d_vocab, log)
    finally:
        torch.set_num_threads(threads)  # the setting is process-wide: leave it as found


def _train(args: TrainArgs, train_ids: Tensor, val_ids: Tensor, d_vocab: int, log) -> tuple[DemoTransformer, dict]:
    model = make_model(args, d_vocab)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, args))
    g_train = torch.Generator().manual_seed(args.seed + 1)
    g_val = torch.Generator().manual_seed(args.seed + 2)
    val_batches = [batch(val_ids, args.batch_size, args.n_ctx, g_val) for _ in range(args.eval_batches)]
    history, t0 = {"train": [], "val": []}, time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                val = sum(next_token_loss(model, b).item() for b in val_batches) / len(val_batches)
            model.train()
            history["val"].append({"step": step, "loss": val, "seconds": time.perf_counter() - t0})
            log(f"step {step:5d}  val {val:.3f}  {time.perf_counter() - t0:.0f}s")
        if step == args.steps:
            break
        loss = next_token_loss(model, batch(train_ids, args.batch_size, args.n_ctx, g_train))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0:
            history["train"].append({"step": step, "loss": loss.item()})
    return model.eval(), history


@torch.no_grad()
def sample_text(model: DemoTransformer, tok: CharTokenizer, prompt: str, n_chars: int, temperature: float = 0.8,
                seed: int = 0) -> str:
    """Draw n_chars characters one at a time from softmax(logits / T) (day 34 builds the full sampler)."""
    g = torch.Generator().manual_seed(seed)
    ids = tok.encode(prompt)[None]
    for _ in range(n_chars):
        logits = model(ids[:, -model.cfg.n_ctx:])[0, -1]
        nxt = torch.multinomial((logits / temperature).softmax(-1), 1, generator=g)
        ids = torch.cat([ids, nxt[None]], dim=1)
    return tok.decode(ids[0])


def bigram_loss(train_ids: Tensor, val_ids: Tensor, d_vocab: int) -> float:
    """Validation cross-entropy of the add-one-smoothed bigram model p(b | a) fitted on the training split."""
    counts = torch.ones(d_vocab, d_vocab)
    counts.index_put_((train_ids[:-1], train_ids[1:]), torch.ones(len(train_ids) - 1), accumulate=True)
    logp = (counts / counts.sum(1, keepdim=True)).log()
    return -logp[val_ids[:-1], val_ids[1:]].mean().item()


def unigram_loss(train_ids: Tensor, val_ids: Tensor, d_vocab: int) -> float:
    """Validation cross-entropy of character frequencies (add-one smoothed) from the training split."""
    counts = torch.bincount(train_ids, minlength=d_vocab).double() + 1
    return -(counts / counts.sum()).log()[val_ids].mean().item()


def run_experiment(out_dir: Path) -> dict:
    """Train a 4-layer character-level GPT on Tiny Shakespeare: the loss curve and samples."""
    import matplotlib.pyplot as plt

    from checks.assets import resolve

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    tok, train_ids, val_ids = shakespeare(resolve("tinyshakespeare"))
    args = TrainArgs()
    t0 = time.perf_counter()
    model, history = train(args, train_ids, val_ids, len(tok.chars))
    seconds = time.perf_counter() - t0
    baselines = {"uniform": math.log(len(tok.chars)), "unigram": unigram_loss(train_ids, val_ids, len(tok.chars)),
                 "bigram": bigram_loss(train_ids, val_ids, len(tok.chars))}

    evals, trains = history["val"], history["train"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.plot([h["step"] for h in trains], [h["loss"] for h in trains], lw=0.8, alpha=0.6, label="training batch")
    ax.plot([h["step"] for h in evals], [h["loss"] for h in evals], "o-", label="validation")
    for (name, value), style in zip(baselines.items(), (":", "--", "-.")):
        ax.axhline(value, color="grey", ls=style, lw=1, label=f"{name} baseline ({value:.2f})")
    ax.set_xlabel(f"step (batch of {args.batch_size} × {args.n_ctx} characters)")
    ax.set_ylabel("cross-entropy (nats per character)")
    ax.set_ylim(1.0, 4.4)
    ax.set_title(f"Character-level GPT on Tiny Shakespeare ({gpt2.count_parameters(model) / 1e6:.2f}M parameters)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/loss_curve.png", dpi=120)
    plt.close(fig)

    # keys T05, T08, T10: temperatures 0.5, 0.8, 1.0 (no dots, so that a post can cite them)
    samples = {f"T{round(10 * t):02d}": sample_text(model, tok, "ROMEO:\n", 300, temperature=t, seed=1) for t in (0.5, 0.8, 1.0)}
    results = {
        "args": asdict(args),
        "parameters": gpt2.count_parameters(model),
        "d_vocab": len(tok.chars),
        "n_train_chars": len(train_ids),
        "n_val_chars": len(val_ids),
        "history": history,
        "final_val_loss": evals[-1]["loss"],
        "final_val_bits_per_char": evals[-1]["loss"] / math.log(2),
        "baselines": baselines,
        "train_seconds": seconds,
        "samples": samples,
        "torch_threads": torch.get_num_threads(),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
