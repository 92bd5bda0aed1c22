"""Day 60: a balanced-bracket classifier, trained here (ARENA 1.5.1 Balanced Bracket Classifier, part 1).

A string over "()" is *balanced* when its elevation (+1 for "(", −1 for ")") never goes below zero and
ends at zero:

    balanced(s)  ⇔  h_i = Σ_{j ≤ i} c_j ≥ 0 for every i   and   h_n = 0,      c_j = +1 if s_j = "(" else −1.

ARENA loads a transformer that Redwood trained to decide this (3 layers, bidirectional attention,
d_model 56, 2 heads a layer, the class read from the [start] position) from the Hugging Face Hub,
with a JSON file of labelled strings. Here both are made by code: ``generate_brackets_data`` draws
labelled strings from a seeded mixture (half uniformly random balanced strings, half unbalanced
ones: i.i.d. random strings, shuffled strings with equal counts, balanced strings with one bracket
flipped), the hand-written classifiers are the label oracle, and ``train`` fits ARENA's architecture
as a TransformerLens ``HookedTransformer`` by cross-entropy on the two logits at position 0.

Importing this module trains nothing; ``run_experiment`` trains the committed model.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Union

import einops
import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.hook_points import HookPoint

from checks.timing import single_thread

HERE = Path(__file__).parent
CHECKPOINT = HERE / "models" / "brackets_model_state_dict.pt"
CHECKPOINT_META = HERE / "models" / "brackets_model.json"

VOCAB = "()"
MAX_LEN = 40                  # longest string; n_ctx = MAX_LEN + 2 for [start] and [end]

# ---------------------------------------------------------------- the tokenizer and the label oracle


class SimpleTokenizer:
    """ARENA's tokenizer: [start] s_1 … s_n [end] [pad] …, with [start] = 0, [pad] = 1, [end] = 2 and the
    alphabet's characters from 3 on ("(" = 3, ")" = 4). A batch is padded to its longest string."""

    START_TOKEN = 0
    PAD_TOKEN = 1
    END_TOKEN = 2
    base_d = {"[start]": START_TOKEN, "[pad]": PAD_TOKEN, "[end]": END_TOKEN}

    def __init__(self, alphabet: str):
        self.alphabet = alphabet
        self.t_to_i = {**{c: i + 3 for i, c in enumerate(alphabet)}, **self.base_d}
        self.i_to_t = {i: c for c, i in self.t_to_i.items()}

    def tokenize(self, strs: list[str] | str, max_len: int | None = None) -> Int[Tensor, "batch seq"]:
        """[start] + characters + [end] + [pad] × (max_len − len(s)), for each string."""
        def c_to_int(c: str) -> int:
            if c in self.t_to_i:
                return self.t_to_i[c]
            raise ValueError(c)

        if isinstance(strs, str):
            strs = [strs]
        if max_len is None:
            max_len = max((max(len(s) for s in strs), 1))
        ints = [[self.START_TOKEN] + [c_to_int(c) for c in s] + [self.END_TOKEN] + [self.PAD_TOKEN] * (max_len - len(s))
                for s in strs]
        return torch.tensor(ints)

    def decode(self, tokens: Int[Tensor, "batch seq"]) -> list[str]:
        """The strings back, [start], [end] and [pad] dropped."""
        assert tokens.ndim >= 2, "Need to have a batch dimension"

        def int_to_c(c: int) -> str:
            if c < len(self.i_to_t):
                return self.i_to_t[c]
            raise ValueError(c)

        return ["".join(int_to_c(i.item()) for i in seq[1:] if i != self.PAD_TOKEN and i != self.END_TOKEN)
                for seq in tokens]

    def __repr__(self) -> str:
        return f"SimpleTokenizer({self.alphabet!r})"


def is_balanced_forloop(parens: str) -> bool:
    """Walk the string keeping the elevation h; unbalanced as soon as h < 0, balanced iff h ends at 0."""
    elevation = 0
    for paren in parens:
        elevation += 1 if paren == "(" else -1
        if elevation < 0:
            return False
    return elevation == 0


def is_balanced_vectorized(tokens: Int[Tensor, "... seq"]) -> Bool[Tensor, "..."]:
    """The same decision on tokens, without a loop: map [start]/[pad]/[end] → 0, "(" → +1, ")" → −1, take the
    cumulative sum (the elevation at each position) and ask min ≥ 0 and last = 0. Works on one sequence (ARENA's
    signature) or a batch."""
    table = torch.tensor([0, 0, 0, 1, -1], device=tokens.device)
    altitude = torch.cumsum(table[tokens], dim=-1)
    return (altitude[..., -1] == 0) & (altitude.min(dim=-1).values >= 0)


# ---------------------------------------------------------------- the data


def random_dyck_word(n_pairs: int, rng: np.random.Generator) -> str:
    """A balanced string with n_pairs pairs, uniformly at random among all C_n of them (the cycle lemma): shuffle
    n steps +1 and n + 1 steps −1 (sum −1); exactly one rotation keeps every proper prefix ≥ 0, the one that
    starts right after the first minimum of the prefix sums; it ends with its only visit to −1, a final ")" that
    is dropped. Each of the (2n+1)·C_n rotation classes maps to one word, so every word is equally likely."""
    steps = np.array([1] * n_pairs + [-1] * (n_pairs + 1))
    rng.shuffle(steps)
    first_min = int(np.argmin(np.cumsum(steps)))
    word = np.roll(steps, -(first_min + 1))[:-1]
    return "".join("(" if s > 0 else ")" for s in word)


# How the strings are drawn: ARENA's file mixes balanced strings with unbalanced ones of lengths up to 40; its
# generator is not published, so this mixture is ours (documented in the post). Each kind draws its own length.
MIX = {"balanced": 0.5, "random": 0.2, "equal_counts": 0.15, "one_flip": 0.15}


def random_bracket_string(kind: str, rng: np.random.Generator, max_len: int = MAX_LEN) -> str:
    """One string of a kind: "balanced" (uniform Dyck word, 1–max_len/2 pairs), "random" (i.i.d. fair characters,
    length 1–max_len), "equal_counts" (n "(" and n ")" shuffled: equal counts, usually dipping below 0) or
    "one_flip" (a uniform Dyck word with one uniformly chosen bracket flipped: ends at ±2)."""
    if kind == "random":
        n = int(rng.integers(1, max_len + 1))
        return "".join(rng.choice(["(", ")"], size=n))
    n_pairs = int(rng.integers(1, max_len // 2 + 1))
    if kind == "balanced":
        return random_dyck_word(n_pairs, rng)
    if kind == "equal_counts":
        chars = np.array(["("] * n_pairs + [")"] * n_pairs)
        rng.shuffle(chars)
        return "".join(chars)
    if kind == "one_flip":
        word = list(random_dyck_word(n_pairs, rng))
        i = int(rng.integers(len(word)))
        word[i] = "(" if word[i] == ")" else ")"
        return "".join(word)
    raise ValueError(kind)


def generate_brackets_strings(n: int, seed: int | np.random.Generator, max_len: int = MAX_LEN,
                              mix: dict[str, float] = MIX) -> tuple[list[str], list[str]]:
    """n strings drawn from the mixture, and the kind each was drawn as (a seed, or a Generator to continue)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    kinds = list(mix)
    picks = rng.choice(len(kinds), size=n, p=np.array([mix[k] for k in kinds]))
    return [random_bracket_string(kinds[k], rng, max_len) for k in picks], [kinds[k] for k in picks]


def generate_brackets_data(n: int, seed: int | np.random.Generator, max_len: int = MAX_LEN,
                           mix: dict[str, float] = MIX) -> list[tuple[str, bool]]:
    """n labelled strings (string, is balanced) drawn from the mixture, labelled by is_balanced_forloop."""
    strs, _ = generate_brackets_strings(n, seed, max_len, mix)
    return [(s, is_balanced_forloop(s)) for s in strs]


class BracketsDataset:
    """ARENA's dataset: the strings, their labels (isbal), their tokens (padded to the longest), and two
    features ARENA plots: the proportion of "(" and whether the string starts with "("."""

    def __init__(self, data_tuples: list[tuple[str, bool]]):
        self.tokenizer = SimpleTokenizer(VOCAB)
        self.strs = [x[0] for x in data_tuples]
        self.isbal = torch.tensor([bool(x[1]) for x in data_tuples])
        self.toks = self.tokenizer.tokenize(self.strs)
        self.open_proportion = torch.tensor([s.count("(") / len(s) for s in self.strs])
        self.starts_open = torch.tensor([s[0] == "(" for s in self.strs]).bool()

    def __len__(self) -> int:
        return len(self.strs)

    def __getitem__(self, idx) -> Union["BracketsDataset", tuple[str, Tensor, Tensor]]:
        if isinstance(idx, slice):
            return self.__class__(list(zip(self.strs[idx], self.isbal[idx].tolist())))
        return (self.strs[idx], self.isbal[idx], self.toks[idx])

    def to(self, device) -> "BracketsDataset":
        self.isbal = self.isbal.to(device)
        self.toks = self.toks.to(device)
        self.open_proportion = self.open_proportion.to(device)
        self.starts_open = self.starts_open.to(device)
        return self

    @property
    def seq_length(self) -> int:
        return self.toks.size(-1)

    @classmethod
    def with_length(cls, data_tuples: list[tuple[str, bool]], selected_len: int) -> "BracketsDataset":
        return cls([(s, b) for (s, b) in data_tuples if len(s) == selected_len])

    @classmethod
    def with_start_char(cls, data_tuples: list[tuple[str, bool]], start_char: str) -> "BracketsDataset":
        return cls([(s, b) for (s, b) in data_tuples if s[0] == start_char])


# ---------------------------------------------------------------- the model


def brackets_config(use_attn_result: bool = True, seed: int | None = None, **overrides) -> HookedTransformerConfig:
    """ARENA's configuration: 3 layers, d_model 56, 2 heads of 28, d_mlp 56, ReLU, LayerNorm, bidirectional
    attention, 5 input tokens, 2 output classes (0 = unbalanced, 1 = balanced) read at position 0."""
    cfg = dict(n_ctx=MAX_LEN + 2, d_model=56, d_head=28, n_heads=2, d_mlp=56, n_layers=3, attention_dir="bidirectional",
               act_fn="relu", normalization_type="LN", d_vocab=len(VOCAB) + 3, d_vocab_out=2,
               use_attn_result=use_attn_result, use_hook_tokens=True, device="cpu", seed=seed)
    cfg.update(overrides)
    return HookedTransformerConfig(**cfg)


def add_perma_hooks_to_mask_pad_tokens(model: HookedTransformer, pad_token: int) -> HookedTransformer:
    """ARENA's padding mask: hook_tokens stores where the tokens are [pad], and every layer's attention scores are
    set to −1e5 at those keys (so no position attends to padding; the pad positions themselves still compute,
    and nothing reads them). Permanent hooks: they survive reset_hooks() and run_with_hooks."""

    def cache_padding_tokens_mask(tokens: Int[Tensor, "batch seq"], hook: HookPoint) -> None:
        hook.ctx["padding_tokens_mask"] = einops.rearrange(tokens == pad_token, "b sK -> b 1 1 sK")

    def apply_padding_tokens_mask(attn_scores: Float[Tensor, "batch head seq_Q seq_K"], hook: HookPoint) -> None:
        attn_scores.masked_fill_(model.hook_dict["hook_tokens"].ctx["padding_tokens_mask"], -1e5)
        if hook.layer() == model.cfg.n_layers - 1:
            del model.hook_dict["hook_tokens"].ctx["padding_tokens_mask"]

    for name, hook in model.hook_dict.items():
        if name == "hook_tokens":
            hook.add_perma_hook(cache_padding_tokens_mask)
        elif name.endswith("attn_scores"):
            hook.add_perma_hook(apply_padding_tokens_mask)
    return model


def make_model(cfg: HookedTransformerConfig | None = None) -> HookedTransformer:
    """A (randomly initialised, cfg.seed-seeded) HookedTransformer with the padding mask installed."""
    import warnings

    with warnings.catch_warnings():  # TL 3.9 deprecates HookedTransformer in favour of TransformerBridge (HF models)
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg or brackets_config())
    model.reset_hooks(including_permanent=True)
    return add_perma_hooks_to_mask_pad_tokens(model, SimpleTokenizer.PAD_TOKEN)


@torch.no_grad()
def run_model_on_data(model: HookedTransformer, data: BracketsDataset, batch_size: int = 200) -> Float[Tensor, "batch 2"]:
    """The class logits read at position 0 ([start]), for every string of the dataset, in batches."""
    all_logits = []
    for i in range(0, len(data.strs), batch_size):
        all_logits.append(model(data.toks[i:i + batch_size])[:, 0])
    return torch.cat(all_logits)


def accuracy(model: HookedTransformer, data: BracketsDataset) -> float:
    """Fraction of strings whose argmax class (1 = balanced) equals the label."""
    return (class_logits(model, data).argmax(-1).bool() == data.isbal).float().mean().item()


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """One training run: AdamW on fresh batches from the generator (no epochs: every batch is new), a linear
    warmup then cosine decay of the learning rate, evaluated on a held-out sample of ``eval_n`` strings."""

    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    seed: int = 0                     # the model's initialisation
    data_seed: int = 1                # the training stream
    eval_seed: int = 2                # the held-out sample used during training
    eval_n: int = 1000
    eval_every: int = 250
    model_overrides: dict = field(default_factory=dict)


FAST = TrainConfig(steps=100, lr=3e-3, warmup=20, eval_n=500, eval_every=25)
FULL = TrainConfig(steps=8000, lr=3e-3, warmup=200, eval_every=250)


def training_batches(cfg: TrainConfig) -> Iterator[tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch"]]]:
    """Endless (tokens, labels) batches from the seeded generator."""
    rng = np.random.default_rng(cfg.data_seed)
    tokenizer = SimpleTokenizer(VOCAB)
    while True:
        tuples = generate_brackets_data(cfg.batch_size, rng)
        yield tokenizer.tokenize([s for s, _ in tuples]), torch.tensor([int(b) for _, b in tuples])


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over cfg.warmup steps, then cosine decay to 0 at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + np.cos(np.pi * progress))


def train(cfg: TrainConfig, log=None) -> tuple[HookedTransformer, dict]:
    """Train ARENA's architecture on the generator's stream; returns the model (use_attn_result on, as ARENA's
    config has it) and the history (step, loss, held-out accuracy) with wall and CPU seconds.

    The training forward runs with use_attn_result off: it only changes which hooks are materialised (the
    per-head outputs, 5× slower here), not the function computed."""
    with single_thread():
        torch.manual_seed(cfg.seed)
        model = make_model(brackets_config(use_attn_result=False, seed=cfg.seed, **cfg.model_overrides))
        model.train()
        held_out = BracketsDataset(generate_brackets_data(cfg.eval_n, cfg.eval_seed))
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        history, t0, cpu0 = [], time.perf_counter(), time.process_time()
        losses: list[float] = []
        batches = training_batches(cfg)
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            toks, labels = next(batches)
            loss = F.cross_entropy(model(toks)[:, 0], labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                model.eval()
                entry = {"step": step + 1, "loss": float(np.mean(losses[-cfg.eval_every:])),
                         "held_out_accuracy": accuracy(model, held_out), "seconds": time.perf_counter() - t0}
                model.train()
                history.append(entry)
                if log:
                    log(entry)
        model.eval()
        model.set_use_attn_result(True)
    return model, {"history": history, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0}


# ---------------------------------------------------------------- evaluation


def elevation_profile(s: str) -> np.ndarray:
    """h_1 … h_n: the elevation after each character (empty string: no entries)."""
    return np.cumsum([1 if c == "(" else -1 for c in s], dtype=np.int64)


def failure_type(s: str) -> str:
    """Which of the two conditions a string breaks: "balanced", "elevation" (ends ≠ 0 but never dips below 0),
    "negative" (ends at 0 but dips below 0) or "both"."""
    h = elevation_profile(s)
    elevation, negative = bool(h[-1] != 0), bool(h.min() < 0)
    return {(False, False): "balanced", (True, False): "elevation", (False, True): "negative", (True, True): "both"}[
        (elevation, negative)]


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """Day 40's 95% Wilson score interval for k successes out of n."""
    import importlib

    return importlib.import_module("days.040.probes_theory").wilson_interval(k, n)


@torch.no_grad()
def class_logits(model: HookedTransformer, data: BracketsDataset, batch_size: int = 250) -> Float[Tensor, "batch 2"]:
    """run_model_on_data, faster: the per-head outputs switched off while it runs (the same function, 5× faster
    here), and the strings batched by length with the padding that no string of the batch needs cut off (the mask
    makes the output independent of how much padding follows: tested)."""
    use_attn_result = model.cfg.use_attn_result
    model.set_use_attn_result(False)
    lengths = (data.toks != SimpleTokenizer.PAD_TOKEN).sum(-1)
    order = lengths.argsort()
    out = torch.empty(len(order), 2)
    try:
        with single_thread():
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                out[idx] = model(data.toks[idx, :int(lengths[idx].max())])[:, 0]
    finally:
        model.set_use_attn_result(use_attn_result)
    return out


def evaluate(model: HookedTransformer, strs: list[str], kinds: list[str] | None = None,
             logits: Float[Tensor, "batch 2"] | None = None) -> dict:
    """Accuracy on the strings (labels from is_balanced_forloop) with its 95% Wilson interval, split by failure type,
    by the kind each string was drawn as, and by length (buckets of 8); the smallest |logit difference| of a
    correct answer (how far from a flip the decisions are), and (the first 100 of) the strings it gets wrong.
    ``logits``: the model's class logits on these strings, if already computed."""
    data = BracketsDataset([(s, is_balanced_forloop(s)) for s in strs])
    if logits is None:
        logits = class_logits(model, data)
    correct = (logits.argmax(-1).bool() == data.isbal).numpy()
    margin = (logits[:, 1] - logits[:, 0]).abs().numpy()
    k, n = int(correct.sum()), len(strs)

    def split(keys: list) -> dict:
        out = {}
        for key in sorted(set(keys), key=str):
            mask = np.array([x == key for x in keys])
            out[str(key)] = {"n": int(mask.sum()), "n_errors": int((~correct[mask]).sum()),
                             "accuracy": float(correct[mask].mean())}
        return out

    lengths = [f"{8 * ((len(s) - 1) // 8) + 1:02d}-{8 * ((len(s) - 1) // 8) + 8:02d}" for s in strs]
    result = {"n": n, "n_correct": k, "n_errors": n - k, "accuracy": k / n, "ci": list(wilson_interval(k, n)),
              "balanced_fraction": float(data.isbal.float().mean()),
              "by_failure_type": split([failure_type(s) for s in strs]), "by_length": split(lengths),
              "min_margin_correct": float(margin[correct].min()),
              "errors": [{"string": s, "balanced": bool(b), "p_balanced": float(p)}
                         for s, b, p, c in zip(strs, data.isbal.tolist(), logits.softmax(-1)[:, 1].tolist(), correct)
                         if not c][:100]}
    if kinds is not None:
        result["by_kind"] = split(kinds)
    return result


# ---------------------------------------------------------------- the committed checkpoint


def git_commit(folder: Path = HERE) -> str:
    """HEAD of the repository, with "+uncommitted day NNN" when the day's folder differs from it (what a
    committed checkpoint records as the commit that trained it; days 062 and 065 call this too)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=folder, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (f" +uncommitted day {Path(folder).name}" if dirty else "")


def model_config_dict(cfg: HookedTransformerConfig) -> dict:
    """The configuration fields that define the function the model computes (what the checkpoint records)."""
    keys = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab", "d_vocab_out", "act_fn",
            "normalization_type", "attention_dir", "positional_embedding_type", "eps")
    return {k: getattr(cfg, k) for k in keys}


def save_checkpoint(model: HookedTransformer, meta: dict, path: Path = CHECKPOINT, meta_path: Path = CHECKPOINT_META) -> None:
    """The state dict (float32, ~240 kB) and a JSON beside it: configuration, seeds, commit, training metrics."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, path)
    meta_path.write_text(json.dumps({"model_config": model_config_dict(model.cfg), **meta}, indent=1) + "\n")


def load_brackets_model(path: Path = CHECKPOINT) -> HookedTransformer:
    """ARENA's model as ARENA loads it (HookedTransformer(cfg) + load_state_dict, no weight folding), with the
    padding mask installed: here our committed checkpoint instead of the Hub's."""
    model = make_model(brackets_config(use_attn_result=True))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


# ---------------------------------------------------------------- the experiment

TEST_SEED = 3                 # the 10,000 fresh strings of the headline (training used seeds 0-2)
TEST_N = 10_000


def plot_training(history: list[dict], fast_history: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for hist, label in ((history, "full run"), (fast_history, "fast (gate) run")):
        steps = [h["step"] for h in hist]
        ax1.plot(steps, [h["loss"] for h in hist], marker=".", label=label)
        ax2.plot(steps, [1 - h["held_out_accuracy"] for h in hist], marker=".", label=label)
    ax1.set(xlabel="step", ylabel="training loss (mean since last eval)", yscale="log", title="Cross-entropy at [start]")
    ax2.set(xlabel="step", ylabel="held-out error rate", yscale="log", title="Error on 1,000 held-out strings")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_test(test: dict, probs: np.ndarray, labels: np.ndarray, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(0, 1, 41)
    ax1.hist(probs[labels], bins=bins, alpha=0.7, label="balanced")
    ax1.hist(probs[~labels], bins=bins, alpha=0.7, label="unbalanced")
    ax1.set(xlabel="P(balanced) at [start]", ylabel="strings", yscale="log", title="The model's confidence, 10,000 fresh strings")
    ax1.legend()
    groups = {**{f"type: {k}": v for k, v in test["by_failure_type"].items()},
              **{f"length {k}": v for k, v in test["by_length"].items()}}
    names = list(groups)
    errs = [max(1 - groups[k]["accuracy"], 0.5 / groups[k]["n"]) for k in names]
    ax2.barh(names, errs, color=["C2" if k.startswith("type") else "C0" for k in names])
    ax2.set(xscale="log", xlabel="error rate (0 errors drawn at 1/(2n))", title="Where the errors are")
    ax2.xaxis.set_minor_formatter(plt.NullFormatter())
    for i, k in enumerate(names):
        ax2.text(errs[i], i, f"  {groups[k]['n'] - round(groups[k]['accuracy'] * groups[k]['n'])}/{groups[k]['n']}",
                 va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_experiment(out_dir: Path = HERE, full: TrainConfig = FULL, fast: TrainConfig = FAST) -> dict:
    """Train the fast (gate) variant and the full model, commit the full model as the checkpoint, and measure it on
    TEST_N fresh strings (seed TEST_SEED): results.json, figures/training.png and figures/test.png."""
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    fast_model, fast_log = train(fast)
    model, log = train(full, log=lambda e: print(e, flush=True))
    strs, kinds = generate_brackets_strings(TEST_N, TEST_SEED)
    test = evaluate(model, strs, kinds)
    data = BracketsDataset([(s, is_balanced_forloop(s)) for s in strs])
    probs = class_logits(model, data).softmax(-1)[:, 1].numpy()
    plot_training(log["history"], fast_log["history"], out_dir / "figures/training.png")
    plot_test(test, probs, data.isbal.numpy(), out_dir / "figures/test.png")
    commit = git_commit()
    metrics = {"test_accuracy": test["accuracy"], "test_n": TEST_N, "test_seed": TEST_SEED,
               "final_held_out_accuracy": log["history"][-1]["held_out_accuracy"], "final_loss": log["history"][-1]["loss"],
               "train_seconds": log["seconds"], "train_cpu_seconds": log["cpu_seconds"]}
    save_checkpoint(model, {"train_config": asdict(full), "seed": full.seed, "data_seed": full.data_seed,
                            "commit": commit, "torch": torch.__version__, "metrics": metrics,
                            "history": log["history"]},
                    out_dir / "models" / CHECKPOINT.name, out_dir / "models" / CHECKPOINT_META.name)
    results = {
        "model_config": model_config_dict(model.cfg), "n_params": sum(p.numel() for p in model.parameters()),
        "full_config": asdict(full), "fast_config": asdict(fast), "mix": MIX, "commit": commit,
        "checkpoint_bytes": (out_dir / "models" / CHECKPOINT.name).stat().st_size,
        "test": test,
        "full": {"history": log["history"], "seconds": log["seconds"], "cpu_seconds": log["cpu_seconds"]},
        "fast": {"history": fast_log["history"], "held_out_accuracy": fast_log["history"][-1]["held_out_accuracy"],
                 "seconds": fast_log["seconds"], "cpu_seconds": fast_log["cpu_seconds"]},
    }
    results["experiment_seconds"] = time.perf_counter() - t0
    results["experiment_cpu_seconds"] = time.process_time() - cpu0
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
