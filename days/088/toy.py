"""A reasoning toy whose scratchpad lines have a known causal role: the ground truth for sentence importance.

The task. A question ``a b c`` (digits) is followed by a scratchpad of ``N_LINES`` lines, each ``marker digit .``:
exactly one line is the **anchor** ``S s .`` carrying the intermediate result ``s = (a + b) mod 10``, the others are
**filler** lines ``F d .`` with a random digit. Then ``A y`` with the answer ``y = (s + c) mod 10``. The anchor is
*wrong* with probability ``1 − P_CORRECT`` (a random other digit), and the answer is always computed from the
*written* ``s``: so the answer depends causally on the anchor line and on nothing in the filler lines. This is the
thought-anchor situation by construction: resampling the anchor line changes the answer distribution, resampling a
filler line cannot.

Training also shows truncated scratchpads: the first ``k`` lines, then ``A`` and the full trace's answer (the loss
on the answer token only), so that the model can be *forced* to answer after any line, as the forced-answer method
needs. Before the anchor is written the best it can do is guess ``(a + b + c) mod 10`` (right with probability
``P_CORRECT``); after it, the answer is determined.

The model is a TransformerLens ``HookedTransformer`` with rotary positional embeddings (the positional scheme of
Llama, Qwen and DeepSeek-R1's distillations), 2 layers, 4 heads: about 100k parameters.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
TOY_PATH = HERE / "toy_reasoner.pt"

# Vocabulary: digits are their own ids.
BOS, NL, S, F, A, EOS = 10, 11, 12, 13, 14, 15
D_VOCAB = 16
TOKEN_NAMES = [str(d) for d in range(10)] + ["<bos>", ".", "S", "F", "A", "<eos>"]
N_LINES = 5
Q_LEN = 5                          # <bos> a b c .
LINE_LEN = 3                       # marker digit .
SEQ_LEN = Q_LEN + LINE_LEN * N_LINES + 3   # ... A y <eos>
P_CORRECT = 0.7


@dataclass(frozen=True)
class ToyConfig:
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    d_mlp: int = 256
    steps: int = 3000
    batch: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.01
    p_truncate: float = 0.5
    finetune_steps: int = 1500        # phase 2: the forced answer after truncated scratchpads weighs more
    finetune_lr: float = 1e-3
    finetune_answer_weight: float = 8.0
    seed: int = 0


def hooked_config(cfg: ToyConfig):
    from transformer_lens import HookedTransformerConfig

    d_head = cfg.d_model // cfg.n_heads
    return HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=d_head, d_mlp=cfg.d_mlp,
        d_vocab=D_VOCAB, n_ctx=32, act_fn="gelu", normalization_type="LN", positional_embedding_type="rotary",
        rotary_dim=d_head, rotary_adjacent_pairs=False, seed=cfg.seed, device="cpu")


def line_span(k: int) -> tuple[int, int]:
    """Token positions [start, end) of scratchpad line k."""
    start = Q_LEN + LINE_LEN * k
    return start, start + LINE_LEN


def answer_pos(n_kept: int = N_LINES) -> int:
    """Position of the ``A`` token after ``n_kept`` scratchpad lines (its logits predict the answer)."""
    return Q_LEN + LINE_LEN * n_kept


def chunk_spans(n_kept: int = N_LINES) -> list[tuple[int, int]]:
    """The toy trace's chunks as token spans: the question, each scratchpad line, the answer line."""
    return [(0, Q_LEN)] + [line_span(k) for k in range(n_kept)] + [(answer_pos(n_kept), answer_pos(n_kept) + 3)]


def make_traces(n: int, seed: int, p_correct: float = P_CORRECT, anchor_correct: bool | None = None) -> dict:
    """``n`` full traces drawn from the task's distribution (``anchor_correct`` forces the anchor right/wrong).

    Returns tokens (n, SEQ_LEN), the anchor's line index, the digits a, b, c, the written s, the answer y and
    ``truth = (a + b + c) mod 10``."""
    rng = np.random.default_rng(seed)
    a, b, c = (rng.integers(0, 10, n) for _ in range(3))
    right = (a + b) % 10
    ok = rng.random(n) < p_correct if anchor_correct is None else np.full(n, anchor_correct)
    wrong = (right + rng.integers(1, 10, n)) % 10
    s = np.where(ok, right, wrong)
    y = (s + c) % 10
    anchor = rng.integers(0, N_LINES, n)
    tokens = np.zeros((n, SEQ_LEN), dtype=np.int64)
    tokens[:, 0], tokens[:, 1], tokens[:, 2], tokens[:, 3], tokens[:, 4] = BOS, a, b, c, NL
    fill = rng.integers(0, 10, (n, N_LINES))
    for k in range(N_LINES):
        st, _ = line_span(k)
        is_anchor = anchor == k
        tokens[:, st] = np.where(is_anchor, S, F)
        tokens[:, st + 1] = np.where(is_anchor, s, fill[:, k])
        tokens[:, st + 2] = NL
    p = answer_pos()
    tokens[:, p], tokens[:, p + 1], tokens[:, p + 2] = A, y, EOS
    return {"tokens": torch.tensor(tokens), "anchor": torch.tensor(anchor), "a": a, "b": b, "c": c, "s": s,
            "y": torch.tensor(y), "truth": torch.tensor((a + b + c) % 10), "anchor_ok": ok}


def truncate(tokens: torch.Tensor, n_kept: int, pad: int = EOS) -> torch.Tensor:
    """The traces cut after ``n_kept`` scratchpad lines and followed by ``A y <eos>`` (padded to SEQ_LEN)."""
    out = torch.full_like(tokens, pad)
    p = answer_pos(n_kept)
    out[:, :p] = tokens[:, :p]
    out[:, p:p + 3] = tokens[:, answer_pos():answer_pos() + 3]
    return out


def training_batch(batch: int, rng: np.random.Generator, p_truncate: float = 0.5,
                   answer_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, loss weights on the *targets*): full traces train every token after the question; truncated ones
    (probability ``p_truncate``, ``k`` uniform in 0..N_LINES-1) train only the answer token, with weight
    ``answer_weight``."""
    tr = make_traces(batch, int(rng.integers(2**31)))
    tokens = tr["tokens"].clone()
    mask = torch.zeros(batch, SEQ_LEN - 1)
    mask[:, Q_LEN - 1:] = 1.0            # targets at positions Q_LEN .. end
    cut = rng.random(batch) < p_truncate
    ks = rng.integers(0, N_LINES, batch)
    for i in np.flatnonzero(cut):
        k = int(ks[i])
        tokens[i] = truncate(tokens[i:i + 1], k)[0]
        mask[i] = 0.0
        mask[i, answer_pos(k)] = answer_weight     # predict y from the A token
    return tokens, mask


def masked_loss(model, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Weighted mean next-token loss over the masked targets (``mask`` holds the weights)."""
    logp = model(tokens).log_softmax(-1)[:, :-1]
    nll = -logp.gather(-1, tokens[:, 1:, None])[..., 0]
    return (nll * mask).sum() / mask.sum()


def _run_phase(model, cfg: ToyConfig, steps: int, lr: float, answer_weight: float, seed: int, curve: list,
               offset: int, log_every: int) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        tokens, mask = training_batch(cfg.batch, rng, cfg.p_truncate, answer_weight)
        loss = masked_loss(model, tokens, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            curve.append([offset + step, float(loss.detach())])


def train_toy(cfg: ToyConfig = ToyConfig(), log_every: int = 100) -> tuple[object, dict]:
    """Train the toy from scratch (AdamW with a one-cycle schedule, one thread), in two phases:

    1. ``steps`` steps on the token-mean loss (seed ``seed``): the model learns the grammar, to write the anchor
       and to answer from it; the forced answers after truncated scratchpads are only ~5% of the loss and are
       learned at some positions only;
    2. starting from the weights rounded to float16 (what ``save_toy`` stores, so a rerun of phase 2 from a
       committed phase 1 is the same computation), ``finetune_steps`` steps with the truncated traces' answer
       weighted ``finetune_answer_weight`` (seed ``seed + 1``). Weighting the answers from the start instead makes
       the model learn (a + b + c) mod 10 directly and ignore the anchor (tried: it followed a wrong anchor in 3%
       of traces).

    Returns (model, metrics with the loss curve)."""
    from transformer_lens import HookedTransformer

    from checks.timing import single_thread

    torch.manual_seed(cfg.seed)
    model = HookedTransformer(hooked_config(cfg))
    curve: list = []
    start, cpu = time.perf_counter(), time.process_time()
    with single_thread():
        _run_phase(model, cfg, cfg.steps, cfg.lr, 1.0, cfg.seed, curve, 0, log_every)
        if cfg.finetune_steps:
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(p.half().float())
            _run_phase(model, cfg, cfg.finetune_steps, cfg.finetune_lr, cfg.finetune_answer_weight, cfg.seed + 1,
                       curve, cfg.steps, log_every)
    model.eval()
    metrics = {"loss_curve": curve, "train_seconds": time.perf_counter() - start,
               "train_cpu_seconds": time.process_time() - cpu, **evaluate_toy(model)}
    return model, metrics


def finetune_committed_phase1(path_in: Path, cfg: ToyConfig = ToyConfig(), log_every: int = 100):
    """Phase 2 of ``train_toy`` on a stored phase-1 model (how the committed toy was finished: phase 1 had been
    trained and stored first)."""
    from checks.timing import single_thread

    saved = torch.load(path_in, weights_only=True)
    model, _ = load_toy(path_in)
    model.train()
    curve = list(saved["metrics"]["loss_curve"])
    start, cpu = time.perf_counter(), time.process_time()
    with single_thread():
        _run_phase(model, cfg, cfg.finetune_steps, cfg.finetune_lr, cfg.finetune_answer_weight, cfg.seed + 1,
                   curve, cfg.steps, log_every)
    model.eval()
    metrics = {"loss_curve": curve,
               "train_seconds": saved["metrics"]["train_seconds"] + time.perf_counter() - start,
               "train_cpu_seconds": saved["metrics"]["train_cpu_seconds"] + time.process_time() - cpu,
               **evaluate_toy(model)}
    return model, metrics


@torch.no_grad()
def answer_probs(model, tokens: torch.Tensor, n_kept: int = N_LINES) -> torch.Tensor:
    """p(answer digit | trace truncated after ``n_kept`` lines, then ``A``): (batch, 10), read at the A token."""
    logits = model(tokens[:, :answer_pos(n_kept) + 1])
    return logits[:, -1, :10].softmax(-1)


@torch.no_grad()
def evaluate_toy(model, n: int = 2000, seed: int = 12345) -> dict:
    """The behaviours the ground truth rests on, on fresh traces:

    - ``answer_follows_anchor``: argmax answer after the full scratchpad = (written s + c) mod 10, also when the
      anchor is wrong (the answer reads the anchor, it does not recompute a + b);
    - ``p_truth_before_anchor``: mean p(truth) forced before any line (guessing a + b + c);
    - ``anchor_written_correctly``: greedy anchor digit = (a + b) mod 10 at the anchor's position.
    """
    tr = make_traces(n, seed)
    tokens = tr["tokens"]
    full = answer_probs(model, tokens)
    follows = (full.argmax(-1) == tr["y"]).float()
    wrong = torch.tensor(~tr["anchor_ok"])
    logits = model(tokens)
    pos = torch.tensor([line_span(int(k))[0] for k in tr["anchor"]])
    s_pred = logits[torch.arange(n), pos, :10].argmax(-1)
    before = answer_probs(model, truncate(tokens, 0), 0)
    return {"answer_follows_anchor": float(follows.mean()),
            "answer_follows_wrong_anchor": float(follows[wrong].mean()),
            "p_truth_before_anchor": float(before[torch.arange(n), tr["truth"]].mean()),
            "anchor_written_correctly": float((s_pred == torch.tensor((tr["a"] + tr["b"]) % 10)).float().mean())}


def save_toy(model, cfg: ToyConfig, metrics: dict, path: Path = TOY_PATH) -> None:
    """Parameters in float16 (≤ 1 MB) with the config and the training metrics (buffers such as the rotary
    tables are recomputed by the constructor)."""
    state = {k: v.detach().half() for k, v in model.named_parameters()}
    torch.save({"config": asdict(cfg), "state_dict": state, "metrics": metrics}, path)


def load_toy(path: Path = TOY_PATH):
    """The committed toy: (HookedTransformer in float32, eval mode; its ToyConfig)."""
    from transformer_lens import HookedTransformer

    saved = torch.load(path, weights_only=True)
    cfg = ToyConfig(**saved["config"])
    model = HookedTransformer(hooked_config(cfg))
    params = dict(model.named_parameters())
    with torch.no_grad():     # parameters only: a stored buffer (older files kept the rotary tables) is ignored
        for k, v in saved["state_dict"].items():
            if k in params:
                params[k].copy_(v.float())
    return model.eval(), cfg


if __name__ == "__main__":
    m, met = train_toy()
    print(json.dumps({k: v for k, v in met.items() if k != "loss_curve"}, indent=1))


# ---------------------------------------------------------------- the importance methods on the toy


@torch.no_grad()
def toy_forced_accuracies(model, tokens: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """acc[:, k] = p(target | first k lines, then ``A``) for k = 0..N_LINES: the forced answer's expected
    accuracy, exactly (batch, N_LINES + 1)."""
    cols = [answer_probs(model, truncate(tokens, k), k)[torch.arange(len(tokens)), target] for k in range(N_LINES + 1)]
    return torch.stack(cols, 1)


@torch.no_grad()
def sample_scratchpad(model, tokens: torch.Tensor, n_kept: int, generator: torch.Generator,
                      temperature: float = 1.0) -> torch.Tensor:
    """Keep the question and the first ``n_kept`` lines, *regenerate* the remaining lines by sampling the model
    (temperature 1: its own distribution), then write ``A``. The grammar is kept by masking: a marker position
    samples from {S, F}, a value position from the digits, a line ends with ``.``."""
    out = tokens.clone()
    for k in range(n_kept, N_LINES):
        st, _ = line_span(k)
        for pos, allowed in ((st, [S, F]), (st + 1, list(range(10)))):
            logits = model(out[:, :pos])[:, -1] / temperature
            masked = torch.full_like(logits, -math.inf)
            masked[:, allowed] = logits[:, allowed]
            out[:, pos] = torch.multinomial(masked.softmax(-1), 1, generator=generator)[:, 0]
        out[:, st + 2] = NL
    out[:, answer_pos()] = A
    return out


@torch.no_grad()
def toy_resampled_accuracies(model, tokens: torch.Tensor, target: torch.Tensor, n_samples: int = 128,
                             seed: int = 0) -> torch.Tensor:
    """acc[:, k] = mean over ``n_samples`` rollouts that keep the first k lines and resample the rest of
    p(target | the rollout's scratchpad): the accuracy of resampled rollouts with the final answer's sampling
    averaged out exactly (batch, N_LINES + 1)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(len(tokens)):
        rep = tokens[i:i + 1].repeat(n_samples, 1)
        accs = []
        for k in range(N_LINES + 1):
            rolled = sample_scratchpad(model, rep, k, g)
            accs.append(answer_probs(model, rolled)[:, target[i]].mean())
        rows.append(torch.stack(accs))
    return torch.stack(rows)
