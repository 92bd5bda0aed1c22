"""Day 62: grokking modular addition, trained and observed (ARENA 1.5.2 Grokking and Modular Arithmetic).

The task: given two residues a, b ∈ {0, …, p−1}, predict

    c = (a + b) mod p,

from the three tokens [a, b, "="] ("=" is token p), the answer read at the last position as a
distribution over p classes. ARENA downloads the run of Nanda et al. (2023), "Progress measures for
grokking via mechanistic interpretability": a one-layer transformer (d_model 128, 4 heads of 32,
d_mlp 512, ReLU, no LayerNorm, no biases) trained full-batch on 30% of the p² pairs with AdamW
(lr 1e-3, weight decay 1, betas (0.9, 0.98)); it memorises its training set within a few hundred
steps, and only thousands of steps later does its test accuracy jump to 100%: *grokking*.

Here the project trains that run itself, as a TransformerLens ``HookedTransformer`` with ARENA's
configuration. A full-batch step of the stock forward pass costs ≈ 0.28 s at p = 113 on one busy CPU
thread, so ``final_position_logits`` computes the same function for the last position only (tables
per token for the keys, queries and values; the MLP and the unembedding at one position instead of
three) and is tested against ``model(tokens)[:, -1]``.

Importing this module trains nothing; ``run_experiment`` trains the committed run.
"""

from __future__ import annotations

import importlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from checks.timing import single_thread

HERE = Path(__file__).parent
CHECKPOINT = HERE / "models" / "grokking_model_state_dict.pt"
CHECKPOINT_META = HERE / "models" / "grokking_model.json"


# ---------------------------------------------------------------- the model and the data


def grokking_config(p: int, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512, seed: int | None = 999,
                    ) -> HookedTransformerConfig:
    """ARENA's configuration: one layer, d_model 128, 4 heads of d_model/4, d_mlp 4·d_model, ReLU, no
    normalisation, n_ctx 3, p + 1 input tokens (the residues and "="), p output classes."""
    return HookedTransformerConfig(n_layers=1, d_vocab=p + 1, d_model=d_model, d_mlp=d_mlp, n_heads=n_heads,
                                   d_head=d_model // n_heads, n_ctx=3, act_fn="relu", normalization_type=None,
                                   d_vocab_out=p, seed=seed, device="cpu")


def make_model(cfg: HookedTransformerConfig) -> HookedTransformer:
    """A HookedTransformer of the configuration (TransformerLens's initialisation, seeded by cfg.seed) whose
    biases are zero and frozen: the trained model of Nanda et al. has no biases, and ARENA's copy of it keeps
    TransformerLens's bias parameters at zero."""
    with warnings.catch_warnings():  # TL 3.9 deprecates HookedTransformer in favour of TransformerBridge (HF models)
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    for name, param in model.named_parameters():
        if name.split(".")[-1].startswith("b_"):
            param.requires_grad_(False)
            param.data.zero_()
    return model


def all_pairs(p: int) -> Int[Tensor, "p*p 3"]:
    """ARENA's ``all_data``: the p² inputs [a, b, =] in the order a·p + b (a the slow index), "=" being token p."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], dim=1)


def labels_of(tokens: Int[Tensor, "batch 3"], p: int) -> Int[Tensor, "batch"]:
    """The answer of each input: (a + b) mod p."""
    return (tokens[:, 0] + tokens[:, 1]) % p


def train_test_split(p: int, frac_train: float, seed: int) -> tuple[Int[Tensor, "n_train"], Int[Tensor, "n_test"]]:
    """Indices into ``all_pairs(p)``: a seeded random permutation, the first ⌊frac_train·p²⌋ for training, the
    rest for testing (Nanda et al. shuffle the pairs and cut at the fraction in the same way)."""
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    cut = int(frac_train * p * p)
    return perm[:cut], perm[cut:]


def cross_entropy_high_precision(logits: Float[Tensor, "batch p"], labels: Int[Tensor, "batch"]) -> Tensor:
    """Mean −log softmax(logits)[label], with the log-softmax taken in float64 (ARENA's and Nanda's function: at
    the end of training the loss is ~1e-7, where float32's log-softmax rounds the correct class's probability to
    1 and the gradient to 0)."""
    logprobs = logits.to(torch.float64).log_softmax(dim=-1)
    return -logprobs.gather(-1, labels[:, None]).mean()


def final_position_logits(model: HookedTransformer, tokens: Int[Tensor, "batch 3"]) -> Float[Tensor, "batch d_vocab_out"]:
    """``model(tokens)[:, -1]`` computed for the last position only, with the same parameters (biases included).

    In a one-layer model the residual stream before the attention is x_j = W_E[t_j] + W_pos[j], a row of a
    (p + 1)-row table per position. So the query of position 2 and the keys and values of positions 0-2 are
    rows of per-token tables, computed for the p + 1 tokens instead of for every input: the score tables
    S_j[t, h] = q_h(=) · k_{h,j}(t) / √d_head, and the value tables folded into W_O,
    OV_j[t, h] = ((W_E[t] + W_pos[j]) W_V^h + b_V^h) W_O^h. Then, at the last position only,

        A_h = softmax_j(S_j[t_j, h]),  r = x_2 + Σ_j Σ_h A_{h,j} OV_j[t_j, h] + b_O,
        r' = r + ReLU(r W_in + b_in) W_out + b_out,  logits = r' W_U + b_U.

    Rows are picked by multiplying with one-hot matrices (a matmul, whose gradient is a matmul too, instead
    of an indexed gather, whose gradient is a scatter: 2-3× faster here). The last position's query is taken
    from the last token's row, so any token may stand there; the causal mask is no mask for it."""
    W_E, W_pos = model.W_E, model.W_pos
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    n_vocab, n_pos = W_E.shape[0], tokens.shape[1]
    onehot = [torch.nn.functional.one_hot(tokens[:, j], n_vocab).to(W_E.dtype) for j in range(n_pos)]
    embed = [W_E + W_pos[j] for j in range(n_pos)]                                      # [d_vocab, d] each
    q = onehot[-1] @ (embed[-1] @ attn.W_Q.transpose(0, 1).reshape(W_E.shape[1], -1)
                      + attn.b_Q.reshape(-1))                                          # [batch, h·e]
    q = q.reshape(len(tokens), attn.W_Q.shape[0], -1)                                  # [batch, h, e]
    scores, values = [], []
    for j in range(n_pos):
        k_table = torch.einsum("td,hde->the", embed[j], attn.W_K) + attn.b_K            # [d_vocab, h, e]
        k = (onehot[j] @ k_table.reshape(n_vocab, -1)).reshape(q.shape)                 # [batch, h, e]
        scores.append((q * k).sum(-1) / attn.attn_scale)                                # [batch, h]
        ov_table = torch.einsum("the,hed->thd", torch.einsum("td,hde->the", embed[j], attn.W_V) + attn.b_V, attn.W_O)
        values.append(ov_table)                                                         # [d_vocab, h, d]
    pattern = torch.stack(scores, dim=-1).softmax(dim=-1)                               # [batch, h, pos]
    resid = onehot[-1] @ embed[-1] + attn.b_O
    for j in range(n_pos):
        weights = onehot[j][:, :, None] * pattern[:, None, :, j]                        # [batch, d_vocab, h]
        resid = resid + weights.reshape(len(tokens), -1) @ values[j].reshape(-1, values[j].shape[-1])
    resid = resid + torch.relu(resid @ mlp.W_in + mlp.b_in) @ mlp.W_out + mlp.b_out
    return resid @ model.W_U + model.b_U


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """One run: full-batch AdamW on the training pairs, the learning rate warmed up linearly over ``warmup``
    steps (Nanda et al.: 10), evaluated on the training and the test pairs every ``eval_every`` steps."""

    p: int
    steps: int
    frac_train: float = 0.3
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup: int = 10
    seed: int = 0                    # the model's initialisation (TransformerLens cfg.seed)
    data_seed: int = 0               # the train/test split
    eval_every: int = 50
    checkpoint_every: int = 0        # 0: keep no checkpoints in memory
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512


def accuracy(logits: Float[Tensor, "batch p"], labels: Int[Tensor, "batch"]) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()


@torch.no_grad()
def evaluate(model: HookedTransformer, p: int, train_idx: Tensor, test_idx: Tensor) -> dict:
    """Loss (float64 cross-entropy) and accuracy on the training and the test pairs."""
    tokens = all_pairs(p)
    logits = final_position_logits(model, tokens)
    labels = labels_of(tokens, p)
    return {"train_loss": cross_entropy_high_precision(logits[train_idx], labels[train_idx]).item(),
            "test_loss": cross_entropy_high_precision(logits[test_idx], labels[test_idx]).item(),
            "train_accuracy": accuracy(logits[train_idx], labels[train_idx]),
            "test_accuracy": accuracy(logits[test_idx], labels[test_idx])}


def train(cfg: TrainConfig, log=None) -> tuple[HookedTransformer, dict]:
    """Train ARENA's model on (a + b) mod p; returns the model and the run: the history (every eval_every
    steps: train/test loss and accuracy, the total squared weight norm), the checkpoints (state dicts every
    checkpoint_every steps, if asked), wall and CPU seconds."""
    with single_thread():
        model = make_model(grokking_config(cfg.p, cfg.d_model, cfg.n_heads, cfg.d_mlp, seed=cfg.seed))
        train_idx, test_idx = train_test_split(cfg.p, cfg.frac_train, cfg.data_seed)
        tokens = all_pairs(cfg.p)
        train_tokens, train_labels = tokens[train_idx], labels_of(tokens[train_idx], cfg.p)
        params = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min((step + 1) / cfg.warmup, 1.0))
        history, checkpoints = [], []
        t0, cpu0 = time.perf_counter(), time.process_time()

        def record(step: int) -> None:
            entry = {"step": step, **evaluate(model, cfg.p, train_idx, test_idx),
                     "weight_norm_sq": sum(float(q.detach().pow(2).sum()) for q in params),
                     "seconds": time.perf_counter() - t0}
            history.append(entry)
            if log:
                log(entry)

        for step in range(cfg.steps + 1):
            if step % cfg.eval_every == 0 or step == cfg.steps:
                record(step)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                checkpoints.append((step, {k: v.detach().clone() for k, v in model.state_dict().items()}))
            if step == cfg.steps:
                break
            loss = cross_entropy_high_precision(final_position_logits(model, train_tokens), train_labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
    return model, {"history": history, "checkpoints": checkpoints, "train_idx": train_idx, "test_idx": test_idx,
                   "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0}


# ---------------------------------------------------------------- reading a run


def first_step(history: list[dict], key: str, threshold: float) -> int | None:
    """The first evaluated step at which history[key] ≥ threshold (None if never)."""
    return next((h["step"] for h in history if h[key] >= threshold), None)


def grokking_summary(history: list[dict], memorised: float = 1.0, grokked: float = 0.95) -> dict:
    """The run's landmarks: the step at which it memorised (train accuracy ≥ ``memorised``) and the test accuracy
    then; the step of the jump (test accuracy first ≥ ``grokked``); the largest test accuracy seen between the
    two; the final numbers."""
    mem = first_step(history, "train_accuracy", memorised)
    grok = first_step(history, "test_accuracy", grokked)
    at_mem = next((h for h in history if h["step"] == mem), None)
    between = [h["test_accuracy"] for h in history if mem is not None and mem <= h["step"] < (grok or math.inf)]
    last = history[-1]
    return {"memorised_step": mem, "test_accuracy_at_memorised": at_mem["test_accuracy"] if at_mem else None,
            "grokked_step": grok, "max_test_accuracy_before_grok": max(between) if between else None,
            "final_train_accuracy": last["train_accuracy"], "final_test_accuracy": last["test_accuracy"],
            "final_train_loss": last["train_loss"], "final_test_loss": last["test_loss"]}


# ---------------------------------------------------------------- the committed checkpoint




def model_config_dict(cfg: HookedTransformerConfig) -> dict:
    keys = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab", "d_vocab_out", "act_fn",
            "normalization_type")
    return {k: getattr(cfg, k) for k in keys}


def save_checkpoint(model: HookedTransformer, meta: dict, path: Path = CHECKPOINT, meta_path: Path = CHECKPOINT_META) -> None:
    """The state dict (float32, < 1 MB) and a JSON beside it: configuration, seeds, commit, training metrics."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, path)
    meta_path.write_text(json.dumps({"model_config": model_config_dict(model.cfg), **meta}, indent=1) + "\n")


def load_grokking_model(path: Path = CHECKPOINT, meta_path: Path = CHECKPOINT_META) -> HookedTransformer:
    """The committed model as ARENA loads its download: HookedTransformer(cfg) + load_state_dict."""
    p = json.loads(meta_path.read_text())["train_config"]["p"]
    model = make_model(grokking_config(p))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


# ---------------------------------------------------------------- the experiment

# p = 113 costs ≈ 0.3-0.4 s a step here (one thread, shared machine): measured by timing_per_step in results.json.
# At p = 37 and 30% of the pairs a trial run memorised by step 500 and was still at chance on the test pairs at step
# 7,000 (test loss flat at 32.7); with half of the pairs it groks near step 4,000. See the post.
FULL = TrainConfig(p=37, steps=6000, frac_train=0.5, eval_every=100)
SEEDS = (0, 1, 2)
FAST = TrainConfig(p=23, steps=300, frac_train=0.3, eval_every=25)


def timing_per_step(p: int, steps: int = 20) -> dict:
    """Wall seconds per full-batch training step at modulus p, for TransformerLens's forward and ours (one thread)."""
    out = {}
    with single_thread():
        for name, fwd in (("transformer_lens", lambda m, t: m(t)[:, -1]), ("final_position", final_position_logits)):
            model = make_model(grokking_config(p, seed=0))
            idx, _ = train_test_split(p, 0.3, 0)
            tokens = all_pairs(p)[idx]
            labels = labels_of(tokens, p)
            opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3, weight_decay=1.0)
            best = math.inf
            for _ in range(steps):
                t0 = time.perf_counter()
                loss = cross_entropy_high_precision(fwd(model, tokens), labels)
                opt.zero_grad()
                loss.backward()
                opt.step()
                best = min(best, time.perf_counter() - t0)
            out[name] = best
    return out


def plot_run(runs: dict[int, dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    for seed, run in runs.items():
        h = run["history"]
        steps = [e["step"] for e in h]
        ax1.plot(steps, [e["train_loss"] for e in h], color=f"C{seed}", ls="--", lw=1)
        ax1.plot(steps, [e["test_loss"] for e in h], color=f"C{seed}", label=f"seed {seed}")
        ax2.plot(steps, [e["train_accuracy"] for e in h], color=f"C{seed}", ls="--", lw=1)
        ax2.plot(steps, [e["test_accuracy"] for e in h], color=f"C{seed}", label=f"seed {seed}")
        ax3.plot(steps, [e["weight_norm_sq"] for e in h], color=f"C{seed}", label=f"seed {seed}")
    ax1.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="Loss: train (dashed), test (solid)")
    ax2.set(xlabel="step", ylabel="accuracy", title="Accuracy: train (dashed), test (solid)")
    ax3.set(xlabel="step", ylabel="Σ θ²", title="Total squared weight norm")
    for ax in (ax1, ax2, ax3):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_experiment(out_dir: Path = HERE, full: TrainConfig = FULL, seeds: tuple[int, ...] = SEEDS,
                   fast: TrainConfig = FAST, checkpoint_series: Path | None = None) -> dict:
    """Train ``full`` for each seed (model and split seeded alike), commit the first seed's final model, time a
    step at p = 113 and at ``full.p``, and train the gate's fast variant: results.json, figures/training.png.
    ``checkpoint_series``: where to save the first seed's checkpoints (every 100 steps) for day 64."""
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    timing = {str(p): timing_per_step(p) for p in sorted({113, full.p})}
    _, fast_log = train(fast)
    runs, first_model = {}, None
    for seed in seeds:
        cfg = replace(full, seed=seed, data_seed=seed,
                      checkpoint_every=100 if (checkpoint_series and seed == seeds[0]) else 0)
        model, log = train(cfg, log=lambda e: print(seed, e, flush=True) if e["step"] % 1000 == 0 else None)
        if seed == seeds[0]:
            first_model = model
            if checkpoint_series:
                torch.save({"config": asdict(cfg), "checkpoints": log["checkpoints"]}, checkpoint_series)
        runs[seed] = {"history": log["history"], "summary": grokking_summary(log["history"]),
                      "seconds": log["seconds"], "cpu_seconds": log["cpu_seconds"]}
    grok_steps = [runs[s]["summary"]["grokked_step"] for s in seeds]
    commit = importlib.import_module("days.060.brackets").git_commit(HERE)
    first = runs[seeds[0]]
    save_checkpoint(first_model, {"train_config": asdict(replace(full, seed=seeds[0], data_seed=seeds[0])),
                                  "seed": seeds[0], "data_seed": seeds[0], "commit": commit, "torch": torch.__version__,
                                  "metrics": first["summary"], "train_seconds": first["seconds"],
                                  "train_cpu_seconds": first["cpu_seconds"]},
                    out_dir / "models" / CHECKPOINT.name, out_dir / "models" / CHECKPOINT_META.name)
    plot_run(runs, out_dir / "figures" / "training.png")
    known = [g for g in grok_steps if g is not None]
    results = {
        "model_config": model_config_dict(first_model.cfg),
        "n_params": sum(q.numel() for q in first_model.parameters() if q.requires_grad),
        "full_config": asdict(full), "fast_config": asdict(fast), "seeds": list(seeds), "commit": commit,
        "checkpoint_bytes": (out_dir / "models" / CHECKPOINT.name).stat().st_size,
        "seconds_per_step": timing,
        "runs": {str(s): r for s, r in runs.items()},
        "grokked_steps": grok_steps,
        "grokked_step_mean": float(np.mean(known)) if known else None,
        "grokked_step_min": min(known) if known else None, "grokked_step_max": max(known) if known else None,
        "fast": {"history": fast_log["history"], "summary": grokking_summary(fast_log["history"]),
                 "seconds": fast_log["seconds"], "cpu_seconds": fast_log["cpu_seconds"]},
    }
    results["experiment_seconds"] = time.perf_counter() - t0
    results["experiment_cpu_seconds"] = time.process_time() - cpu0
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
