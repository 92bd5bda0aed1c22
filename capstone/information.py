"""Part 1C of the Gauntlet: information-theoretic analysis (probability and information theory).

- **1C.1 Cross-entropy in bits.** For a sentence x_1…x_T (preceded by the document separator x_0),
  the model's code length is −Σ_t log₂ p(x_t | x_<t) bits. Per token it is the cross-entropy
  H = −(1/T) Σ_t ln p(x_t | x_<t) / ln 2; per character, the same total divided by the sentence's
  number of characters C: bits/char = (T/C)·bits/token. Shannon's estimates put English at roughly
  0.6–1.3 bits per character, usually quoted as ~1.0; a model's bits/char is an upper bound on the
  entropy rate of the text it is measured on (cross-entropy = entropy + KL ≥ entropy).
- **1C.2 KL between behaviours.** With P the next-token distribution after the opinion (sycophantic)
  prompt and Q after the neutral (truthful) prompt, KL(P‖Q) = Σ_v P(v) log(P(v)/Q(v)) ≥ 0 (Gibbs),
  zero iff P = Q: the expected extra code length, per token, of describing the sycophantic behaviour
  with the truthful one's code.
- **1C.3 Bayesian update.** Two hypotheses about the model: H_s "sycophantic" (it gives the user's
  wrong answer with probability p_s when the user states an opinion) and H_r "randomly wrong" (it
  gives it with probability p_r, as often as without the opinion). After k sycophantic answers in N,

      log-odds(H_s | data) = log-odds(H_s) + k·log(p_s/p_r) + (N−k)·log((1−p_s)/(1−p_r)),

  a sum of per-observation log-likelihood ratios. 95% confidence means log-odds ≥ logit(0.95) =
  log 19. The closed forms: N consecutive sycophantic answers suffice when
  N ≥ (log 19 − log-odds prior)/log(p_s/p_r); in expectation under H_s each observation adds
  KL(Bern(p_s)‖Bern(p_r)) nats, so a sequential test needs about (log 19 − prior log-odds)/KL
  observations (Wald); for a fixed N, the probability of reaching 95% is an exact binomial tail.
  The tests check all three by simulation.
"""

from __future__ import annotations

import importlib
import math
import random
import re
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from checks.timing import single_thread

from .sycophancy import binomial_tail, evaluate

__all__ = ["bayes_closed_forms", "binary_kl", "expected_observations", "fixed_n_power", "kl_divergence", "kl_example",
           "log_odds_posterior", "min_sycophantic_count", "most_shifted_flip", "n_for_power", "next_token_distributions",
           "observations_if_all_sycophantic", "padded_batch", "prob_flip_rate_above_half", "run", "sentence_losses",
           "simulate_fixed_n", "simulate_sequential", "wikitext_sentences"]

LN2 = math.log(2.0)


# ---------------------------------------------------------------- 1C.1 bits per token and per character


def wikitext_sentences(n: int = 100, seed: int = 0, split: str = "test", min_words: int = 8, max_words: int = 40,
                       path: Path | None = None) -> list[str]:
    """``n`` sentences of WikiText-2 drawn at random (seeded) from the paragraphs of a split:
    detokenized (day 035's detokenizer), split at sentence ends, without ``<unk>`` or headings, with
    ``min_words``…``max_words`` words."""
    detok = importlib.import_module("days.035.tl_setup").wikitext_detokenize
    if path is None:
        from checks.assets import resolve

        path = resolve("wikitext-2")
    candidates = []
    for line in (Path(path) / f"wikitext-2-{split}.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("=") or "<unk>" in line:
            continue
        for sentence in re.split(r"(?<=[.!?]) (?=[A-Z\"])", detok(line)):
            if min_words <= len(sentence.split()) <= max_words and sentence[-1] in ".!?":
                candidates.append(sentence)
    if len(candidates) < n:
        raise ValueError(f"only {len(candidates)} sentences qualify, {n} requested")
    return random.Random(seed).sample(candidates, n)


def _start_token(tokenizer) -> int:
    """The document separator the model saw in pretraining (<|endoftext|>), else its BOS."""
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return eot if eot is not None and eot != tokenizer.unk_token_id else tokenizer.bos_token_id


def padded_batch(tokenizer, sentences: list[str]) -> tuple[Int[Tensor, "n pos"], Int[Tensor, "n pos"]]:
    """Each sentence as [separator] + its tokens, right-padded into one batch, and the mask of the
    positions whose *next* token is a real token of the sentence. Right padding is exact for a causal
    model: a real position never attends to the pads after it (rotary positions start at 0 for all)."""
    start = _start_token(tokenizer)
    rows = [[start] + tokenizer(s, add_special_tokens=False)["input_ids"] for s in sentences]
    width = max(map(len, rows))
    tokens = torch.full((len(rows), width), start, dtype=torch.long)
    predicts = torch.zeros(len(rows), width - 1, dtype=torch.bool)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = torch.tensor(r)
        predicts[i, :len(r) - 1] = True
    return tokens, predicts


@torch.no_grad()
def sentence_losses(model, sentences: list[str], batch_size: int = 25) -> dict:
    """Per-sentence total cross-entropy (nats), token and character counts, and the pooled
    bits/token and bits/char: Σ nats / (Σ tokens · ln 2) and Σ nats / (Σ chars · ln 2)."""
    nats, n_tokens = [], []
    for start in range(0, len(sentences), batch_size):
        tokens, predicts = padded_batch(model.tokenizer, sentences[start:start + batch_size])
        logp = model(tokens).log_softmax(-1)[:, :-1]
        token_nll = -logp.gather(-1, tokens[:, 1:, None])[..., 0] * predicts
        nats += token_nll.sum(1).double().tolist()
        n_tokens += predicts.sum(1).tolist()
    chars = [len(s) for s in sentences]
    total = sum(nats)
    return {"nats": nats, "tokens": n_tokens, "chars": chars,
            "bits_per_token": total / (sum(n_tokens) * LN2), "bits_per_char": total / (sum(chars) * LN2),
            "chars_per_token": sum(chars) / sum(n_tokens),
            "per_sentence_bits_per_char": [v / (c * LN2) for v, c in zip(nats, chars)]}


# ---------------------------------------------------------------- 1C.2 KL between the two behaviours


def kl_divergence(logits_p: Float[Tensor, "... vocab"], logits_q: Float[Tensor, "... vocab"]) -> Float[Tensor, "..."]:
    """KL(P‖Q) = Σ_v P(v)(log P(v) − log Q(v)) in nats, P = softmax(logits_p), Q = softmax(logits_q);
    computed from log-softmaxes (no log 0), in float64."""
    log_p = logits_p.double().log_softmax(-1)
    log_q = logits_q.double().log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def binary_kl(p: float, q: float) -> float:
    """KL(Bern(p)‖Bern(q)) in nats."""
    def term(a, b):
        return 0.0 if a == 0 else a * math.log(a / b)

    return term(p, q) + term(1 - p, 1 - q)


@torch.no_grad()
def next_token_distributions(model, resid_final: Float[Tensor, "n d_model"]) -> Float[Tensor, "n vocab"]:
    """Logits from the residual stream after the last block: unembed(final norm(resid))."""
    return model.unembed(model.ln_final(resid_final[:, None].to(model.W_U.dtype)))[:, 0]


# ---------------------------------------------------------------- 1C.3 the Bayesian update


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def log_odds_posterior(k: int, n: int, prior: float, p_s: float, p_r: float) -> float:
    """log P(H_s | k of n sycophantic) / P(H_r | …): prior log-odds plus the log-likelihood ratio."""
    return _logit(prior) + k * math.log(p_s / p_r) + (n - k) * math.log((1 - p_s) / (1 - p_r))


def observations_if_all_sycophantic(prior: float, p_s: float, p_r: float, target: float = 0.95) -> int:
    """Smallest N with posterior ≥ target after N sycophantic answers in a row:
    N = ⌈(logit(target) − logit(prior)) / log(p_s/p_r)⌉ (0 if the prior already suffices)."""
    need = _logit(target) - _logit(prior)
    return 0 if need <= 0 else math.ceil(need / math.log(p_s / p_r) - 1e-12)


def expected_observations(prior: float, p_s: float, p_r: float, target: float = 0.95) -> float:
    """Wald's approximation to the expected number of observations a sequential test needs under
    H_s: the log-odds drift by KL(Bern(p_s)‖Bern(p_r)) per observation, so N ≈ (logit(target) −
    logit(prior)) / KL (overshoot at the boundary makes the true mean slightly larger)."""
    return (_logit(target) - _logit(prior)) / binary_kl(p_s, p_r)


def min_sycophantic_count(n: int, prior: float, p_s: float, p_r: float, target: float = 0.95) -> int:
    """k*(N): the fewest sycophantic answers among N that push the posterior to ``target``
    (the log-odds are increasing in k when p_s > p_r); N + 1 if none does."""
    step = math.log(p_s / p_r) - math.log((1 - p_s) / (1 - p_r))
    base = _logit(prior) + n * math.log((1 - p_s) / (1 - p_r))
    k = max(0, math.ceil((_logit(target) - base) / step - 1e-12))
    return k if k <= n else n + 1


def fixed_n_power(n: int, prior: float, p_s: float, p_r: float, target: float = 0.95) -> float:
    """P(posterior ≥ target after N observations | H_s) = P(Bin(N, p_s) ≥ k*(N)), exact."""
    k = min_sycophantic_count(n, prior, p_s, p_r, target)
    return 0.0 if k > n else binomial_tail(k, n, p_s, upper=True)


def n_for_power(power: float, prior: float, p_s: float, p_r: float, target: float = 0.95, n_max: int = 100_000) -> int:
    """Smallest N at which a model that is sycophantic reaches ``target`` confidence with probability
    ≥ ``power`` (searched upward: the power is not monotone in N because k* jumps in integers)."""
    for n in range(1, n_max + 1):
        if fixed_n_power(n, prior, p_s, p_r, target) >= power:
            return n
    raise ValueError(f"power {power} not reached below N = {n_max}")


def simulate_sequential(prior: float, p_s: float, p_r: float, target: float = 0.95, runs: int = 4000,
                        n_max: int = 20_000, seed: int = 0, chunk: int = 2000) -> np.ndarray:
    """Stopping times of the sequential test under H_s: observe Bern(p_s) answers until the posterior
    reaches ``target`` (runs that never do within n_max report n_max). Simulated ``chunk``
    observations at a time, so memory stays at runs × chunk."""
    rng = np.random.default_rng(seed)
    up, down = math.log(p_s / p_r), math.log((1 - p_s) / (1 - p_r))
    log_odds = np.full(runs, _logit(prior))
    stop = np.full(runs, n_max)
    active = np.ones(runs, dtype=bool)
    for start in range(0, n_max, chunk):
        width = min(chunk, n_max - start)
        steps = np.where(rng.random((runs, width)) < p_s, up, down)
        path = log_odds[:, None] + np.cumsum(steps, axis=1)
        hit = (path >= _logit(target)) & active[:, None]
        first = hit.any(1)
        stop[first] = start + hit[first].argmax(1) + 1
        active &= ~first
        log_odds = path[:, -1]
        if not active.any():
            break
    return stop


def simulate_fixed_n(n: int, prior: float, p_s: float, p_r: float, target: float = 0.95, runs: int = 20_000,
                     seed: int = 0) -> dict:
    """Monte Carlo of the fixed-N design: draw H from the prior, N answers from H; report the fraction
    of H_s runs that reach ``target`` (the power) and, among runs that reach it, the fraction that
    really were H_s (calibration: ≥ target)."""
    rng = np.random.default_rng(seed)
    is_s = rng.random(runs) < prior
    k = rng.binomial(n, np.where(is_s, p_s, p_r))
    lo = _logit(prior) + k * math.log(p_s / p_r) + (n - k) * math.log((1 - p_s) / (1 - p_r))
    confident = lo >= _logit(target)
    return {"power": float(confident[is_s].mean()), "precision": float(is_s[confident].mean()) if confident.any() else float("nan"),
            "n_confident": int(confident.sum())}


def prob_flip_rate_above_half(b: int, c: int) -> float:
    """Beta–Binomial view of the paired data: with a uniform prior on φ = P(a discordant pair flips
    toward sycophancy), the posterior is Beta(1+b, 1+c) and P(φ > ½ | data) = P(Bin(b+c+1, ½) ≤ b)
    (the Beta–Binomial identity I_x(a, n−a+1) = P(Bin(n, x) ≥ a))."""
    return binomial_tail(b, b + c + 1, 0.5, upper=False)


def most_shifted_flip(diff_opinion: Float[Tensor, "n"], diff_neutral: Float[Tensor, "n"]) -> int:
    """The example pair: among pairs whose answer flips to the user's (Δ_opinion > 0 > Δ_neutral), the one with
    the largest opinion-induced shift Δ_opinion − Δ_neutral."""
    flipped = (diff_opinion > 0) & (diff_neutral < 0)
    shift = torch.where(flipped, diff_opinion - diff_neutral, torch.tensor(-math.inf))
    return int(shift.argmax())


def kl_example(tokenizer, pair, enc, logits_op: Float[Tensor, "vocab"], logits_ne: Float[Tensor, "vocab"]) -> dict:
    """1C.2 on one pair, from the next-token logits after its opinion and its neutral prompt: KL both ways, the
    opinion distribution's entropy, the sycophantic answer's share of the probability given to the two answers
    (and the binary KL between those shares), and both distributions on their top tokens."""
    kl, kl_rev = kl_divergence(logits_op, logits_ne).item(), kl_divergence(logits_ne, logits_op).item()
    p_op, p_ne = logits_op.softmax(-1), logits_ne.softmax(-1)
    top = torch.unique(torch.cat([p_op.topk(5).indices, p_ne.topk(5).indices]))
    top = top[torch.argsort(-(p_op[top] + p_ne[top]))]
    binary = [torch.stack([lg[enc.sycophantic_id], lg[enc.truthful_id]]).softmax(0)[0].item() for lg in (logits_op, logits_ne)]
    return {"id": pair.id, "opinion": pair.opinion, "neutral": pair.neutral,
            "answer_prefix": pair.answer_prefix, "truthful": pair.truthful,
            "sycophantic": pair.sycophantic, "kl_nats": kl, "kl_bits": kl / LN2,
            "kl_reverse_bits": kl_rev / LN2,
            "entropy_opinion_bits": -(p_op * p_op.clamp_min(1e-30).log()).sum().item() / LN2,
            "p_syc_vs_truth_opinion": binary[0], "p_syc_vs_truth_neutral": binary[1],
            "binary_kl_bits": binary_kl(binary[0], binary[1]) / LN2,
            "top_tokens": [tokenizer.decode([t]) for t in top.tolist()],
            "p_opinion": p_op[top].tolist(), "p_neutral": p_ne[top].tolist()}


# ---------------------------------------------------------------- run


def _plot_bits(losses: dict, label: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.hist(losses["per_sentence_bits_per_char"], bins=25, color="tab:blue", alpha=0.8)
    ax.axvline(losses["bits_per_char"], color="tab:red", lw=2, label=f"pooled: {losses['bits_per_char']:.2f} bits/char")
    ax.axvline(1.0, color="black", ls="--", lw=1.5, label="Shannon's ~1.0 bits/char for English")
    ax.set_xlabel("bits per character (one sentence, no preceding context)")
    ax.set_ylabel("sentences")
    ax.set_title(f"Cross-entropy on 100 WikiText-2 test sentences\n({label})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _plot_kl(kl_all: Tensor, example: dict, label: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    ax1.hist(kl_all.numpy() / LN2, bins=30, color="tab:purple", alpha=0.8)
    ax1.axvline(example["kl_bits"], color="tab:red", lw=2, label=f"example {example['id']}: {example['kl_bits']:.2f} bits")
    ax1.set_xlabel("KL(P_opinion ‖ P_neutral) at the answer token (bits)")
    ax1.set_ylabel("pairs")
    ax1.set_title("How far apart the two behaviours are, per pair")
    ax1.legend(fontsize=8)
    toks = example["top_tokens"]
    x = np.arange(len(toks))
    ax2.bar(x - 0.2, example["p_opinion"], width=0.4, color="tab:red", label="opinion (sycophantic) prompt")
    ax2.bar(x + 0.2, example["p_neutral"], width=0.4, color="tab:blue", label="neutral (truthful) prompt")
    ax2.set_xticks(x, [repr(t) for t in toks], rotation=45, ha="right", fontsize=8)
    ax2.set_ylabel("next-token probability")
    ax2.set_title(f"Example {example['id']}: “{example['answer_prefix']} …”", fontsize=9)
    ax2.legend(fontsize=8)
    fig.suptitle(f"Model: {label}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _plot_bayes(settings: dict, n_pairs: int, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 3.8))
    for ax, (name, s) in zip(np.atleast_1d(axes), settings.items()):
        ax.plot(s["curve"]["n"], s["curve"]["exact_power"], color="tab:blue", lw=1, label="exact: P(Bin(N, p_s) ≥ k*(N))")
        ax.plot(s["curve"]["n_sim"], s["curve"]["simulated_power"], "o", ms=4, color="tab:orange", label="simulation")
        ax.axhline(0.8, color="grey", ls=":", lw=1)
        ax.axvline(s["n_for_power_80"], color="grey", ls=":", lw=1, label=f"80% power at N = {s['n_for_power_80']}")
        if name == "measured":
            ax.axvline(n_pairs, color="tab:red", ls="--", lw=1, label=f"our data set, N = {n_pairs}")
        ax.set_xlabel("number of test cases N")
        ax.set_ylabel("P(posterior ≥ 0.95 | sycophantic)")
        ax.set_title(f"{name}: p_s = {s['p_s']:.3f}, p_r = {s['p_r']:.3f}, prior {s['prior']}", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle("How many test cases to be 95% sure the model is sycophantic rather than randomly wrong", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def bayes_closed_forms(prior: float, p_s: float, p_r: float) -> dict:
    """One setting's closed forms and its sequential test simulated (500 runs, seeded): the cheap part of a
    setting, without the fixed-N power searches."""
    wald = expected_observations(prior, p_s, p_r)
    seq = simulate_sequential(prior, p_s, p_r, runs=500, n_max=max(int(10 * wald), 200))
    return {"prior": prior, "p_s": p_s, "p_r": p_r,
            "llr_sycophantic_answer": math.log(p_s / p_r), "kl_per_observation": binary_kl(p_s, p_r),
            "n_if_all_sycophantic": observations_if_all_sycophantic(prior, p_s, p_r),
            "wald_expected_n": wald, "simulated_mean_stopping_n": float(seq.mean())}


def _bayes_setting(prior: float, p_s: float, p_r: float, n_exact: list[int], n_sim: list[int]) -> dict:
    return {**bayes_closed_forms(prior, p_s, p_r),
            "n_for_power_80": n_for_power(0.8, prior, p_s, p_r),
            "n_for_power_95": n_for_power(0.95, prior, p_s, p_r),
            "curve": {"n": n_exact, "exact_power": [fixed_n_power(n, prior, p_s, p_r) for n in n_exact],
                      "n_sim": n_sim, "simulated_power": [simulate_fixed_n(n, prior, p_s, p_r, runs=4000, seed=n)["power"]
                                                          for n in n_sim]}}


@single_thread()
def run(out_dir: Path, model_name: str = "smollm2") -> dict:
    """1C on ``model_name``: WikiText-2 bits/token and bits/char, the KL between the two behaviours
    over every pair of the data set, and the Bayesian update with the measured rates."""
    from .models import MODELS, load

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    label = MODELS[model_name].label
    model = load(model_name)

    sentences = wikitext_sentences(100)
    losses = sentence_losses(model, sentences)
    _plot_bits(losses, label, out_dir / "figures" / "part1c_bits.png")

    ev = evaluate(model_name)
    logits_op = next_token_distributions(model, ev.resid_opinion[:, -1])
    logits_ne = next_token_distributions(model, ev.resid_neutral[:, -1])
    kl_all = kl_divergence(logits_op, logits_ne)
    kl_rev = kl_divergence(logits_ne, logits_op)
    i = most_shifted_flip(ev.diff_opinion, ev.diff_neutral)
    example = kl_example(model.tokenizer, ev.pairs[i], ev.encoded[i], logits_op[i], logits_ne[i])
    _plot_kl(kl_all.float(), example, label, out_dir / "figures" / "part1c_kl.png")

    n = len(ev.pairs)
    p_s = int((ev.diff_opinion > 0).sum()) / n   # P(wrong answer | the user states it), measured
    p_r = int((ev.diff_neutral > 0).sum()) / n   # P(wrong answer | the user only asks), measured
    b, c = int(((ev.diff_opinion > 0) & (ev.diff_neutral <= 0)).sum()), int(((ev.diff_opinion <= 0) & (ev.diff_neutral > 0)).sum())
    settings = {"measured": _bayes_setting(0.5, p_s, p_r, list(range(50, 14001, 50)),
                                           [251, 1000, 2000, 4000, 6000, 8000, 10000, 12000]),
                "textbook": _bayes_setting(0.5, 0.9, 0.5, list(range(1, 31)), [2, 4, 6, 8, 10, 12, 15, 20, 25, 30])}
    _plot_bayes(settings, n, out_dir / "figures" / "part1c_bayes.png")
    return {"model": label,
            "wikitext": {"n_sentences": len(sentences), "tokens": sum(losses["tokens"]), "chars": sum(losses["chars"]),
                         "bits_per_token": losses["bits_per_token"], "bits_per_char": losses["bits_per_char"],
                         "nats_per_token": losses["bits_per_token"] * LN2, "chars_per_token": losses["chars_per_token"],
                         "example_sentence": sentences[0],
                         "per_sentence_nats": [round(v, 5) for v in losses["nats"]],
                         "per_sentence_tokens": losses["tokens"]},
            "kl": {"n_pairs": n, "mean_bits": kl_all.mean().item() / LN2, "median_bits": kl_all.median().item() / LN2,
                   "max_bits": kl_all.max().item() / LN2, "mean_reverse_bits": kl_rev.mean().item() / LN2,
                   "example": example},
            "bayes": {"n_pairs": n, "sycophantic_opinion": int((ev.diff_opinion > 0).sum()),
                      "sycophantic_neutral": int((ev.diff_neutral > 0).sum()), "discordant_b": b, "discordant_c": c,
                      "p_flip_rate_above_half": prob_flip_rate_above_half(b, c),
                      **settings}}
