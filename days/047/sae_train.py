"""Day 47: training an SAE on SmolLM2's residual stream, ours beside sae-lens's (ARENA 1.3.3 SAEs).

The activations: SmolLM2-135M's residual stream after 15 of its 30 blocks (``blocks.15.hook_resid_pre``)
on running text, WikiText-2 (validation split) and Tiny Shakespeare for training, WikiText-2's test split
held out for evaluation. Attention sinks are left out everywhere: SmolLM2 parks a residual vector
of norm ≈ 25 000 (against ≈ 150 elsewhere) at position 0 of every window, and sometimes at position 1
too (after a repeated first token such as "\n\n" or "00"; a BOS token would not help, the token after
it often becomes a second sink). ``sink_mask`` flags every position whose norm exceeds SINK_RATIO × the
median: the SAE is never trained on them, never spliced in at them, and its metrics never count them.

The SAE is day 46's TopK SAE (k active latents of d_sae = 2 × 576), trained two ways on the same
batches of the same activations: ARENA's ``optimize`` loop and sae-lens's own ``SAETrainer``
(``TopKTrainingSAE``, W&B off, fed an iterator over the cached activations). Both see activations
scaled by one constant c = sqrt(d_in) / E‖x‖ (sae-lens's "expected_average_only_in"), folded back
afterwards.

The standard metrics, on held-out tokens at positions ≥ 1:

    L0                    = E_x ‖a(x)‖₀                        (active latents per token)
    explained variance    = 1 - Σ‖x - x̂‖² / Σ‖x - x̄‖²         (sae-lens's definition; sklearn's
                                                                 variance-weighted R²)
    CE loss recovered     = (CE_zero - CE_sae) / (CE_zero - CE_clean)
                            CE_sae: the model's next-token loss with x̂ spliced in for x;
                            CE_zero: with x replaced by 0 (both at positions ≥ 1 only)
    dead latents          = the fraction of latents that never fire on the held-out tokens

(all over the non-sink positions; the zero ablation keeps the sinks too).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

sae_theory = importlib.import_module("days.046.sae_theory")
tl_setup = importlib.import_module("days.035.tl_setup")

LAYER = 15
HOOK = f"blocks.{LAYER}.hook_resid_pre"
SINK_RATIO = 10.0                   # a position whose residual norm exceeds 10 × the median is an attention sink
SEQ_LEN = 128

# ---------------------------------------------------------------- text and activations


def shakespeare_tokens(tokenizer, n_seq: int, seq_len: int, skip: int = 0, path: Path | None = None) -> Int[Tensor, "n_seq seq_len"]:
    """Windows skip … skip + n_seq - 1 of Tiny Shakespeare's running text (seq_len tokens each, no BOS)."""
    if path is None:
        from checks.assets import resolve

        path = resolve("tinyshakespeare")
    path = Path(path)
    text = (path / "tinyshakespeare.txt" if path.is_dir() else path).read_text(encoding="utf-8")
    need = (skip + n_seq) * seq_len
    lines = text.splitlines(keepends=True)
    ids: list[int] = []
    for start in range(0, len(lines), 400):
        ids += tokenizer("".join(lines[start:start + 400]), add_special_tokens=False)["input_ids"]
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"Tiny Shakespeare has only {len(ids)} tokens, {need} requested")
    return torch.tensor(ids[skip * seq_len:need]).reshape(n_seq, seq_len)


def corpus_tokens(tokenizer, source: str, n_seq: int, seq_len: int = SEQ_LEN, skip: int = 0) -> Int[Tensor, "n_seq seq_len"]:
    """n_seq windows of seq_len consecutive tokens from a source, after skipping ``skip`` windows:
    "wikitext-valid", "wikitext-test" (WikiText-2, detokenized as on day 35) or "shakespeare"."""
    if source.startswith("wikitext-"):
        return tl_setup.wikitext_tokens(tokenizer, skip + n_seq, seq_len, split=source.removeprefix("wikitext-"))[skip:]
    if source == "shakespeare":
        return shakespeare_tokens(tokenizer, n_seq, seq_len, skip)
    raise ValueError(f"unknown source {source!r}")


def mixed_tokens(tokenizer, parts: list[tuple], seq_len: int = SEQ_LEN) -> Int[Tensor, "n_seq seq_len"]:
    """The windows of several sources, interleaved (a, b, a, b, …) so that any prefix mixes them. Each part is
    (source, n_seq) or (source, n_seq, skip): n_seq windows after the first ``skip``."""
    blocks = [corpus_tokens(tokenizer, *part[:2], seq_len, *part[2:]) for part in parts]
    order = sorted(((i / len(b), j, i) for j, b in enumerate(blocks) for i in range(len(b))))
    return torch.stack([blocks[j][i] for _, j, i in order])


@torch.no_grad()
def resid_activations(model, tokens: Int[Tensor, "batch pos"], layer: int = LAYER,
                      batch_size: int = 16) -> Float[Tensor, "batch pos d_model"]:
    """``blocks.{layer}.hook_resid_pre`` over a corpus, computed as ``blocks.{layer-1}.hook_resid_post`` (the same
    tensor) with the forward pass stopped before block ``layer``."""
    if layer < 1:
        raise ValueError("layer ≥ 1")
    name = f"blocks.{layer - 1}.hook_resid_post"
    out = []
    for start in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[start:start + batch_size], names_filter=[name], stop_at_layer=layer)
        out.append(cache[name])
    return torch.cat(out)


def sink_mask(acts: Float[Tensor, "... d"], ratio: float = SINK_RATIO) -> Tensor:
    """True where a residual vector's norm exceeds ratio × the median norm of the batch: SmolLM2's attention
    sinks (position 0 always, occasionally position 1)."""
    norms = acts.norm(dim=-1)
    return norms > ratio * norms.median()


def non_sink(acts: Float[Tensor, "batch pos d"]) -> Float[Tensor, "n d"]:
    """The activations at every position that is not a sink, as one [tokens, d] matrix."""
    return acts[~sink_mask(acts)]


def activation_cache_path(key: dict) -> Path:
    """Where cached activations live: the user cache (never the repository)."""
    from checks.assets import cache_dir

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir().parent / "activations" / f"{key['model']}-L{key['layer']}-{digest}.pt"


def cached_activations(model_name: str, parts: list[tuple[str, int]], layer: int = LAYER,
                       seq_len: int = SEQ_LEN) -> tuple[Int[Tensor, "n_seq seq_len"], Float[Tensor, "n_seq seq_len d"]]:
    """(tokens, residual activations) of a mixed corpus, computed once and cached in the user cache."""
    from checks.models import hooked_model

    key = {"model": model_name, "layer": layer, "parts": parts, "seq_len": seq_len, "v": 1}
    path = activation_cache_path(key)
    if path.exists():
        saved = torch.load(path)
        return saved["tokens"], saved["acts"]
    model = hooked_model(model_name)
    tokens = mixed_tokens(model.tokenizer, parts, seq_len)
    acts = resid_activations(model, tokens, layer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{id(acts)}")
    torch.save({"tokens": tokens, "acts": acts, "key": key}, tmp)
    tmp.replace(path)
    return tokens, acts


# ---------------------------------------------------------------- an SAE on scaled activations


def norm_scaling_factor(x: Float[Tensor, "n d"]) -> float:
    """c = sqrt(d) / E‖x‖: the constant that gives the activations mean norm sqrt(d) (sae-lens's
    "expected_average_only_in" normalisation)."""
    return math.sqrt(x.shape[-1]) / x.norm(dim=-1).mean().item()


class ScaledSAE(nn.Module):
    """An SAE trained on c·x, used on x: encode(x) = sae.encode(c x), decode(a) = sae.decode(a) / c. ``hook_name``:
    the hook point whose activations it reads (sae-lens's cfg.metadata.hook_name)."""

    def __init__(self, sae: nn.Module, scale: float, hook_name: str = HOOK):
        super().__init__()
        self.sae = sae
        self.scale = scale
        self.hook_name = hook_name

    @property
    def d_sae(self) -> int:
        return self.sae.cfg.d_sae if hasattr(self.sae, "cfg") and hasattr(self.sae.cfg, "d_sae") else self.sae.W_enc.shape[1]

    def encode(self, x: Tensor) -> Tensor:
        return self.sae.encode(x * self.scale)

    def decode(self, acts: Tensor) -> Tensor:
        return self.sae.decode(acts) / self.scale

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    @property
    def W_dec(self) -> Tensor:
        """Decoder directions in the model's units (unit rows for ours)."""
        W = self.sae.W_dec_normalized if hasattr(self.sae, "W_dec_normalized") else self.sae.W_dec
        return W / W.norm(dim=-1, keepdim=True)


def to_sae_lens_inference(sae: ScaledSAE):
    """Our ScaledSAE as sae-lens's inference TopKSAE (or StandardSAE / JumpReLUSAE) on unscaled activations: the
    scale folded in by sae-lens's own ``fold_activation_norm_scaling_factor``; metadata.hook_name = the SAE's hook."""
    theirs = sae_theory.to_sae_lens(sae.sae)
    theirs.fold_activation_norm_scaling_factor(sae.scale)
    theirs.cfg.metadata.hook_name = sae.hook_name
    return theirs


# ---------------------------------------------------------------- training, two ways


@dataclass
class TrainConfig:
    d_sae: int = 1152
    k: int = 32
    batch_size: int = 512
    steps: int = 3000
    lr: float = 1e-3
    dead_steps: int = 200          # a latent silent this many steps counts as dead (AuxK's rule)
    aux_coeff: float = 1 / 32
    seed: int = 0


def activation_batches(x: Float[Tensor, "n d"], batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless shuffled batches: each epoch a fresh permutation from a seeded generator (the same for both
    trainers)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(x.shape[0], generator=g)
        for start in range(0, x.shape[0] - batch_size + 1, batch_size):
            yield x[perm[start:start + batch_size]]


def sae_config(d_in: int, cfg: TrainConfig):
    """Day 46's ToySAEConfig for a TopK SAE with the tied initialisation (W_enc = W_decᵀ) sae-lens uses."""
    return sae_theory.ToySAEConfig(d_in=d_in, d_sae=cfg.d_sae, architecture="topk", k=cfg.k, aux_coeff=cfg.aux_coeff,
                                   dead_steps=cfg.dead_steps, tied_init=True, seed=cfg.seed)


def train_ours(x: Float[Tensor, "n d"], cfg: TrainConfig, log_freq: int = 100,
               hook_name: str = HOOK) -> tuple[ScaledSAE, dict]:
    """ARENA's optimize on the scaled activations (Adam, betas (0, 0.999), unit decoder rows after every step)."""
    scale = norm_scaling_factor(x)
    batches = activation_batches(x * scale, cfg.batch_size, cfg.seed)
    torch.manual_seed(cfg.seed)
    sae = sae_theory.make_sae(sae_config(x.shape[-1], cfg), lambda n: next(batches))
    log = sae.optimize(batch_size=cfg.batch_size, steps=cfg.steps, lr=cfg.lr, log_freq=log_freq)
    return ScaledSAE(sae.eval(), scale, hook_name), log


def train_sae_lens(x: Float[Tensor, "n d"], cfg: TrainConfig, hook_name: str = HOOK) -> tuple:
    """sae-lens's SAETrainer with a TopKTrainingSAE on the same scaled batches (same seed): sae-lens's
    initialisation (decoder rows of norm 0.1, W_enc = W_decᵀ), its Adam (betas 0.9, 0.999), gradient clipping and
    AuxK; W&B off (its tqdm progress bar goes to stderr). Returns (the trained TopKTrainingSAE with the scale
    folded in, trainer)."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    scale = norm_scaling_factor(x)
    batches = activation_batches(x * scale, cfg.batch_size, cfg.seed)
    torch.manual_seed(cfg.seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[-1], d_sae=cfg.d_sae, k=cfg.k,
                                                aux_loss_coefficient=cfg.aux_coeff))
    trainer = SAETrainer(
        cfg=SAETrainerConfig(total_training_samples=cfg.steps * cfg.batch_size, train_batch_size_samples=cfg.batch_size,
                             lr=cfg.lr, lr_end=cfg.lr, dead_feature_window=cfg.dead_steps, feature_sampling_window=10 ** 9,
                             logger=LoggingConfig(log_to_wandb=False)),
        sae=sae, data_provider=batches)
    trainer.fit()
    sae.fold_activation_norm_scaling_factor(scale)
    sae.cfg.metadata.hook_name = hook_name
    return sae.eval(), trainer


# ---------------------------------------------------------------- the metrics


def l0_norm(acts: Float[Tensor, "n d_sae"]) -> float:
    """Mean number of non-zero latents per token."""
    return (acts != 0).sum(-1).double().mean().item()


def explained_variance(x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"]) -> float:
    """1 - Σ‖x - x̂‖² / Σ‖x - x̄‖² (x̄ the mean over tokens), accumulated in float64."""
    x, x_hat = x.double(), x_hat.double()
    return 1.0 - (x - x_hat).pow(2).sum().item() / (x - x.mean(0)).pow(2).sum().item()


def dead_fraction(acts: Float[Tensor, "n d_sae"]) -> float:
    """The fraction of latents that never fire on these tokens."""
    return (acts != 0).any(0).logical_not().double().mean().item()


def _splice(kind: str, sae, exclude_sinks: bool):
    """A hook that replaces the activation by the SAE's reconstruction (kind "sae") or by zero ("zero"), except at
    the sinks (when exclude_sinks)."""
    def hook(resid: Tensor, hook=None) -> Tensor:
        keep = sink_mask(resid)[..., None] if exclude_sinks else torch.zeros(resid.shape[:-1] + (1,), dtype=torch.bool)
        new = sae(resid).to(resid.dtype) if kind == "sae" else torch.zeros_like(resid)
        return torch.where(keep, resid, new)
    return hook


@torch.no_grad()
def ce_losses(model, sae, tokens: Int[Tensor, "batch pos"], hook: str | None = None, exclude_sinks: bool = True,
              batch_size: int = 8) -> dict[str, float]:
    """Mean next-token cross-entropy over every prediction: of the clean model, with the SAE's reconstruction
    spliced in at ``hook`` (everywhere but the sinks), and with the activation zeroed there; and the CE loss
    recovered, (CE_zero - CE_sae) / (CE_zero - CE_clean). With exclude_sinks=False the splice covers every
    position (sae-lens's get_recons_loss without ignored tokens). ``hook``: the SAE's own by default."""
    hook = hook or getattr(sae, "hook_name", None) or sae.cfg.metadata.hook_name
    sums = {"ce_clean": 0.0, "ce_sae": 0.0, "ce_zero": 0.0}
    count = 0
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start:start + batch_size]
        for name, hooks in (("ce_clean", []), ("ce_sae", [(hook, _splice("sae", sae, exclude_sinks))]),
                            ("ce_zero", [(hook, _splice("zero", sae, exclude_sinks))])):
            loss = token_losses(model.run_with_hooks(batch, fwd_hooks=hooks), batch)
            sums[name] += loss.double().sum().item()
        count += loss.numel()
    out = {k: v / count for k, v in sums.items()}
    out["ce_loss_recovered"] = (out["ce_zero"] - out["ce_sae"]) / (out["ce_zero"] - out["ce_clean"])
    return out


def token_losses(logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos_minus_1"]:
    """-log p(token_{t+1}) from the logits at position t."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none").view(
        tokens.shape[0], -1)


@torch.no_grad()
def sae_metrics(sae, x: Float[Tensor, "n d"], batch_size: int = 4096) -> dict[str, float]:
    """L0, explained variance, MSE (Σ_d, mean over tokens), dead fraction of an SAE on activations x."""
    acts, x_hat = [], []
    for start in range(0, x.shape[0], batch_size):
        a = sae.encode(x[start:start + batch_size])
        acts.append(a)
        x_hat.append(sae.decode(a))
    acts, x_hat = torch.cat(acts), torch.cat(x_hat)
    return {"l0": l0_norm(acts), "explained_variance": explained_variance(x, x_hat),
            "mse": (x.double() - x_hat.double()).pow(2).sum(-1).mean().item(), "dead_fraction": dead_fraction(acts),
            "n_tokens": x.shape[0]}


def evaluate(model, sae, tokens: Int[Tensor, "batch pos"], acts: Float[Tensor, "batch pos d"] | None = None,
             ce_seqs: int | None = None) -> dict[str, float]:
    """Every metric on held-out tokens: sae_metrics on their non-sink activations and the CE losses on the first
    ce_seqs sequences (all by default)."""
    if acts is None:
        acts = resid_activations(model, tokens)
    out = sae_metrics(sae, non_sink(acts))
    out |= ce_losses(model, sae, tokens[:ce_seqs])
    return out


# ---------------------------------------------------------------- the full SAE, cached for day 48

TRAIN_PARTS = [("wikitext-valid", 600), ("shakespeare", 600)]      # 1 200 windows of 128 tokens
EVAL = dict(source="wikitext-test", n_seq=128)                     # held out; day 48 scores on the windows after these
CE_SEQS = 32
HEADLINE = TrainConfig(steps=1200)
FRONTIER_K = [8, 16, 32, 64, 128]
FRONTIER_STEPS = 250
BARS = {"explained_variance": 0.75, "ce_loss_recovered": 0.80, "dead_fraction": 0.10}


def sae_cache_path(cfg: TrainConfig, model_name: str = "smollm2", layer: int = LAYER,
                   parts: list[tuple[str, int]] = TRAIN_PARTS) -> Path:
    """Where a trained SAE lives: the user cache (never the repository), keyed by everything that made it."""
    from checks.assets import cache_dir

    key = json.dumps({"model": model_name, "hook": f"blocks.{layer}.hook_resid_pre", "parts": parts,
                      "cfg": asdict(cfg), "v": 1}, sort_keys=True)
    return cache_dir().parent / "saes" / f"{model_name}-L{layer}-topk-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def save_sae(sae: ScaledSAE, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"config": asdict(sae.sae.cfg), "state_dict": sae.sae.state_dict(), "scale": sae.scale,
                "hook_name": sae.hook_name}, tmp)
    tmp.replace(path)


def load_sae(path: Path) -> ScaledSAE:
    saved = torch.load(path)
    sae = sae_theory.make_sae(sae_theory.ToySAEConfig(**saved["config"]))
    sae.load_state_dict(saved["state_dict"])
    return ScaledSAE(sae.eval(), saved["scale"], saved["hook_name"])


def trained_sae(layer: int = LAYER, model_name: str = "smollm2", cfg: TrainConfig = HEADLINE,
                parts: list[tuple[str, int]] = TRAIN_PARTS) -> ScaledSAE:
    """A trained TopK SAE on ``blocks.{layer}.hook_resid_pre`` (the day's headline configuration by default): from the
    user cache when this exact (model, layer, corpus, configuration) was trained before, else trained now on the
    corpus's activations at that layer (cached too; about ten CPU minutes on one thread) and cached. Days 48 and 49
    call this; ``sae.hook_name`` says where to splice it. ``parts``: the training corpus, (source, windows) pairs."""
    path = sae_cache_path(cfg, model_name, layer, parts)
    if path.exists():
        return load_sae(path)
    _, acts = cached_activations(model_name, parts, layer)
    sae, _ = train_ours(non_sink(acts), cfg, hook_name=f"blocks.{layer}.hook_resid_pre")
    save_sae(sae, path)
    return sae


# ---------------------------------------------------------------- the experiment


def run_experiment(out_dir: Path) -> dict:
    """Ours and sae-lens's TopK SAEs on SmolLM2's layer-15 residual stream, the standard metrics on held-out
    WikiText-2, and an L0-MSE frontier of our SAE over k."""
    import matplotlib.pyplot as plt

    from checks.models import hooked_model
    from checks.timing import single_thread

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    timings = {}
    with single_thread():
        t = time.perf_counter()
        _, acts = cached_activations("smollm2", TRAIN_PARTS)
        eval_tokens, eval_acts = cached_activations("smollm2", [(EVAL["source"], EVAL["n_seq"])])
        timings["activations_seconds"] = time.perf_counter() - t
        x, x_eval = non_sink(acts), non_sink(eval_acts)
        model = hooked_model("smollm2")

        t = time.perf_counter()
        ours, log = train_ours(x, HEADLINE)
        timings["train_ours_seconds"] = time.perf_counter() - t
        save_sae(ours, sae_cache_path(HEADLINE))
        t = time.perf_counter()
        theirs, trainer = train_sae_lens(x, HEADLINE)
        timings["train_sae_lens_seconds"] = time.perf_counter() - t

        metrics = {}
        t = time.perf_counter()
        for who, sae in (("ours", ours), ("sae_lens", theirs)):
            metrics[who] = sae_metrics(sae, x_eval) | ce_losses(model, sae, eval_tokens[:CE_SEQS])
        metrics["ours"]["dead_in_training"] = int(ours.sae.dead_mask().sum())
        metrics["sae_lens"]["dead_in_training"] = int(trainer.dead_neurons.sum())
        timings["evaluate_seconds"] = time.perf_counter() - t

        frontier = []
        t = time.perf_counter()
        for k in FRONTIER_K:
            sae, _ = train_ours(x, replace(HEADLINE, k=k, steps=FRONTIER_STEPS))
            frontier.append({"k": k} | sae_metrics(sae, x_eval))
        timings["frontier_seconds"] = time.perf_counter() - t
        with torch.no_grad():
            ce_first_two = token_losses(model(eval_tokens[:2]), eval_tokens[:2]).mean(-1).tolist()

    # the figures
    fig, ax = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
    ax[0].plot([f["l0"] for f in frontier], [f["mse"] for f in frontier], "o-", label=f"ours, {FRONTIER_STEPS} steps")
    for who, marker in (("ours", "*"), ("sae_lens", "s")):
        ax[0].plot(metrics[who]["l0"], metrics[who]["mse"], marker, ms=12, label=f"{who}, k={HEADLINE.k}, {HEADLINE.steps} steps")
    ax[1].plot([f["l0"] for f in frontier], [f["explained_variance"] for f in frontier], "o-")
    for f in frontier:
        ax[0].annotate(f"k={f['k']}", (f["l0"], f["mse"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax[0].set_ylabel("MSE  (mean over tokens of ‖x − x̂‖²)")
    ax[1].set_ylabel("explained variance")
    for a in ax:
        a.set_xscale("log", base=2)
        a.set_xlabel("L0 (active latents per token)")
        a.grid(alpha=0.3)
    ax[0].set_yscale("log")
    ax[0].legend(fontsize=8)
    fig.suptitle(f"The sparsity-reconstruction frontier of a {HEADLINE.d_sae}-latent TopK SAE on held-out WikiText-2")
    fig.savefig(out_dir / "figures/frontier.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    names = ["explained_variance", "ce_loss_recovered", "dead_fraction"]
    for i, who in enumerate(("ours", "sae_lens")):
        ax.bar([j + 0.38 * i for j in range(3)], [metrics[who][n] for n in names], width=0.36, label=who)
    for j, n in enumerate(names):
        ax.hlines(BARS[n], j - 0.2, j + 0.58, colors="k", linestyles="--", lw=1)
    ax.set_xticks([j + 0.19 for j in range(3)], ["explained variance", "CE loss recovered", "dead fraction"])
    ax.set_title("Held-out metrics (dashed: the day's bars)")
    ax.legend()
    fig.savefig(out_dir / "figures/metrics.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(1, 2, figsize=(12, 3.8), constrained_layout=True)
    ax[0].plot(log["step"], log["L_reconstruction"])
    ax[0].set_yscale("log")
    ax[0].set_ylabel("reconstruction loss (scaled units, mean over d_in)")
    ax[1].plot(log["step"], log["n_dead_window"])
    ax[1].set_ylabel("latents silent over the last 500 steps")
    for a in ax:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    fig.suptitle("Training our SAE (ARENA's optimize)")
    fig.savefig(out_dir / "figures/training.png", dpi=120)
    plt.close(fig)

    results = {
        "model": "smollm2", "hook": HOOK, "headline_config": asdict(HEADLINE), "train_parts": TRAIN_PARTS,
        "eval": EVAL, "ce_seqs": CE_SEQS, "bars": BARS, "frontier_k": FRONTIER_K, "frontier_steps": FRONTIER_STEPS,
        "n_train_tokens": x.shape[0], "n_train_sinks": int(acts.shape[0] * acts.shape[1] - x.shape[0]),
        "n_eval_tokens": x_eval.shape[0], "n_eval_sinks": int(eval_acts.shape[0] * eval_acts.shape[1] - x_eval.shape[0]),
        "scale": ours.scale, "metrics": metrics, "frontier": frontier, "ce_clean_first_two": ce_first_two,
        "training_log": {k: log[k] for k in ("step", "L_reconstruction", "l0", "n_dead_window")},
        **timings, "wall_seconds": time.perf_counter() - wall0, "cpu_seconds": time.process_time() - cpu0,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
