"""Day 34: sampling from a transformer (ARENA 1.1 Transformer from Scratch).

Given the next-token logits ℓ ∈ R^V of a prompt x_{1:t}:

- greedy:      x_{t+1} = argmax_v ℓ_v;
- temperature: p_v ∝ exp(ℓ_v / T); T → 0 is greedy, T → ∞ uniform;
- frequency penalty: ℓ_v ← ℓ_v - α·count_v(x_{1:t}), discouraging repeated tokens;
- top-k:       sample from p renormalised over the k most likely tokens;
- top-p (nucleus): over the smallest set of most likely tokens whose probability reaches p;
- beam search: keep the ``num_beams`` prefixes with the largest Σ log p, extending each;
  with num_beams ≥ V^(L-1) it is exhaustive search over all V^L continuations of length L.

A KV cache makes generation O(t) per token instead of O(t²): the keys and values of past
positions never change in a causal model, so each step runs only the newest token through the
network and attends over the cached keys and values (day 30's bottom-right causal mask).

Every function works on a DemoTransformer (day 32); those that need only logits also accept any
callable tokens -> logits, such as a Hugging Face model wrapped in a lambda.
"""

from __future__ import annotations

import importlib
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

gpt2 = importlib.import_module("days.032.gpt2")
attention = importlib.import_module("days.030.attention")
DemoTransformer = gpt2.DemoTransformer

LogitsFn = Callable[[Int[Tensor, "batch seq"]], Float[Tensor, "batch seq d_vocab"]]

# ---------------------------------------------------------------- one token


def greedy_search(logits: Float[Tensor, "batch d_vocab"]) -> Int[Tensor, "batch"]:
    """argmax_v ℓ_v."""
    return logits.argmax(dim=-1)


def apply_temperature(logits: Float[Tensor, "batch d_vocab"], temperature: float) -> Float[Tensor, "batch d_vocab"]:
    """ℓ / T (T > 0)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature} (use greedy_search for T = 0)")
    return logits / temperature


def apply_frequency_penalty(input_ids: Int[Tensor, "batch seq"], logits: Float[Tensor, "batch d_vocab"],
                            freq_penalty: float) -> Float[Tensor, "batch d_vocab"]:
    """ℓ_v - α · (number of times v occurs in the row's tokens so far)."""
    counts = torch.zeros_like(logits)
    counts.scatter_add_(1, input_ids, torch.ones_like(input_ids, dtype=logits.dtype))
    return logits - freq_penalty * counts


def top_k_filter(logits: Float[Tensor, "batch d_vocab"], k: int) -> Float[Tensor, "batch d_vocab"]:
    """Set every logit outside the k largest of its row to -inf."""
    if k < 1:
        raise ValueError(f"top_k must be ≥ 1, got {k}")
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Float[Tensor, "batch d_vocab"], top_p: float, min_tokens_to_keep: int = 1) -> Float[Tensor, "batch d_vocab"]:
    """Keep the smallest set of most likely tokens whose total probability is ≥ top_p (the nucleus).

    In descending order of probability, token i is kept iff the mass of the tokens before it is
    < top_p, so the token that crosses the threshold is included.
    """
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    keep_sorted = mass_before < top_p
    keep_sorted[..., :min_tokens_to_keep] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def sample_basic(logits: Float[Tensor, "batch d_vocab"], generator: torch.Generator | None = None) -> Int[Tensor, "batch"]:
    """One draw per row from softmax(ℓ): tokens with ℓ = -inf have probability exactly 0."""
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def sample_top_k(logits: Tensor, k: int, generator: torch.Generator | None = None) -> Int[Tensor, "batch"]:
    """A draw from softmax(ℓ) renormalised over the row's k most likely tokens."""
    return sample_basic(top_k_filter(logits, k), generator)


def sample_top_p(logits: Tensor, top_p: float, min_tokens_to_keep: int = 1,
                 generator: torch.Generator | None = None) -> Int[Tensor, "batch"]:
    """A draw from softmax(ℓ) renormalised over the nucleus of mass top_p."""
    return sample_basic(top_p_filter(logits, top_p, min_tokens_to_keep), generator)


def sample_next_token(input_ids: Int[Tensor, "batch seq"], logits: Float[Tensor, "batch d_vocab"], temperature: float = 1.0,
                      top_k: int = 0, top_p: float = 0.0, frequency_penalty: float = 0.0,
                      generator: torch.Generator | None = None) -> Int[Tensor, "batch"]:
    """ARENA's dispatcher: T = 0 is greedy; otherwise temperature, then the frequency penalty, then
    top-k (if k > 0) or top-p (if p > 0) or plain sampling."""
    if temperature < 0 or top_k < 0 or not 0 <= top_p <= 1:
        raise ValueError(f"need temperature ≥ 0, top_k ≥ 0, 0 ≤ top_p ≤ 1; got {temperature}, {top_k}, {top_p}")
    if temperature == 0:
        return greedy_search(logits)
    logits = apply_temperature(logits, temperature)
    if frequency_penalty:
        logits = apply_frequency_penalty(input_ids, logits, frequency_penalty)
    if top_k > 0:
        return sample_top_k(logits, top_k, generator)
    if top_p > 0:
        return sample_top_p(logits, top_p, generator=generator)
    return sample_basic(logits, generator)


# ---------------------------------------------------------------- the KV cache


@dataclass
class KVCache:
    """Per layer, the keys and values of every position seen so far: [batch, pos, n_heads, d_head]."""

    keys: list[Tensor]
    values: list[Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[1]


def forward_with_cache(model: DemoTransformer, tokens: Int[Tensor, "batch new"], cache: KVCache | None = None
                       ) -> tuple[Float[Tensor, "batch new d_vocab"], KVCache]:
    """Run only the new tokens through the model, attending over cached keys/values; return the new cache.

    The block is DemoTransformer's, step by step: x += Attn(LN1 x); x += MLP(LN2 x), except that
    the attention's keys and values are [cache; new] and the new queries sit at positions
    cache.length … cache.length + new - 1 (bottom-right causal mask).
    """
    offset = 0 if cache is None else cache.length
    x = model.embed(tokens) + model.pos_embed(tokens, past_kv_pos_offset=offset)
    keys, values = [], []
    for l, block in enumerate(model.blocks):
        q, k, v = block.attn.qkv(block.ln1(x))
        if cache is not None:
            k = torch.cat([cache.keys[l], k], dim=1)
            v = torch.cat([cache.values[l], v], dim=1)
        keys.append(k)
        values.append(v)
        x = x + block.attn.output(attention.scaled_dot_product_attention(q, k, v, causal=True))
        x = x + block.mlp(block.ln2(x))
    return model.unembed(model.ln_final(x)), KVCache(keys, values)


# ---------------------------------------------------------------- generation


@torch.no_grad()
def generate(model: DemoTransformer | LogitsFn, input_ids: Int[Tensor, "batch seq"], max_new_tokens: int, *,
             use_cache: bool = False, eos_token_id: int | None = None, generator: torch.Generator | None = None,
             return_logits: bool = False, **sampling) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Autoregressive generation: append sample_next_token(...) ``max_new_tokens`` times (or until every
    row has produced ``eos_token_id``). With ``use_cache`` (DemoTransformer only) each step after the
    first runs one token. ``return_logits`` also returns the next-token logits of every step."""
    if use_cache and not isinstance(model, DemoTransformer):
        raise TypeError("the KV cache needs a DemoTransformer")
    tokens, cache, step_logits = input_ids, None, []
    for _ in range(max_new_tokens):
        if use_cache:
            logits, cache = forward_with_cache(model, tokens if cache is None else tokens[:, -1:], cache)
        else:
            logits = model(tokens)
        next_logits = logits[:, -1]
        step_logits.append(next_logits)
        next_token = sample_next_token(tokens, next_logits, generator=generator, **sampling)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        if eos_token_id is not None and (next_token == eos_token_id).all():
            break
    return (tokens, step_logits) if return_logits else tokens


class CachedHF:
    """A Hugging Face causal LM as a tokens -> logits callable that keeps Hugging Face's own KV cache.

    Called on a sequence that extends the previous call's by some tokens (as ``generate`` does), it
    runs only the new tokens and returns their logits, [batch, new, d_vocab]; ``generate`` reads
    the last position only. Any other call starts afresh. One instance per generation.
    """

    def __init__(self, hf_model):
        self.hf, self.past, self.seen = hf_model, None, None

    def __call__(self, tokens: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch new d_vocab"]:
        seen = self.seen
        extends = (seen is not None and tokens.shape[0] == seen.shape[0] and tokens.shape[1] > seen.shape[1]
                   and torch.equal(tokens[:, :seen.shape[1]], seen))
        new = tokens[:, seen.shape[1]:] if extends else tokens
        out = self.hf(new, past_key_values=self.past if extends else None, use_cache=True)
        self.past, self.seen = out.past_key_values, tokens
        return out.logits


class TransformerSampler:
    """ARENA's interface: a model and its tokenizer; text in, text out."""

    def __init__(self, model: DemoTransformer | LogitsFn, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def sample(self, prompt: str, max_tokens_generated: int = 100, seed: int | None = None, **kwargs) -> str:
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        out = generate(self.model, ids, max_tokens_generated, generator=generator,
                       eos_token_id=self.tokenizer.eos_token_id, **kwargs)
        return self.tokenizer.decode(out[0])

    def beam_search(self, prompt: str, num_return_sequences: int, num_beams: int, max_new_tokens: int) -> list[tuple[float, str]]:
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        beams = beam_search(self.model, ids, num_beams, max_new_tokens, eos_token_id=self.tokenizer.eos_token_id)
        return [(score, self.tokenizer.decode(toks)) for score, toks in beams[:num_return_sequences]]


# ---------------------------------------------------------------- beam search


@torch.no_grad()
def beam_search(model: DemoTransformer | LogitsFn, input_ids: Int[Tensor, "1 seq"], num_beams: int, max_new_tokens: int,
                eos_token_id: int | None = None) -> list[tuple[float, Tensor]]:
    """Beam search on Σ log p(continuation | prompt); returns (log-prob sum, tokens) best first.

    Each step extends every live beam by every token, scores the candidates by their total
    log-probability, and keeps the best ``num_beams`` (ARENA's generate-then-filter: only each
    beam's top ``num_beams`` tokens can make the cut). A beam that ends in ``eos_token_id`` is
    finished and leaves the live set.
    """
    if input_ids.shape[0] != 1:
        raise ValueError("beam search takes one prompt")
    beams, scores = input_ids, torch.zeros(1, dtype=torch.float64)
    finished: list[tuple[float, Tensor]] = []
    for _ in range(max_new_tokens):
        logprobs = model(beams)[:, -1].log_softmax(dim=-1).to(torch.float64)
        per_beam = logprobs.topk(min(num_beams, logprobs.shape[-1]), dim=-1)
        candidates = scores[:, None] + per_beam.values
        best = candidates.flatten().topk(min(num_beams, candidates.numel()))
        beam_idx, tok_idx = best.indices // per_beam.values.shape[1], best.indices % per_beam.values.shape[1]
        beams = torch.cat([beams[beam_idx], per_beam.indices[beam_idx, tok_idx][:, None]], dim=1)
        scores = best.values
        if eos_token_id is not None:
            done = beams[:, -1] == eos_token_id
            finished += [(s.item(), b) for s, b in zip(scores[done], beams[done])]
            beams, scores = beams[~done], scores[~done]
            if len(beams) == 0:
                break
    ranked = finished + [(s.item(), b) for s, b in zip(scores, beams)]
    return sorted(ranked, key=lambda r: -r[0])


@torch.no_grad()
def exhaustive_search(model: DemoTransformer | LogitsFn, input_ids: Int[Tensor, "1 seq"], length: int,
                      d_vocab: int) -> list[tuple[float, Tensor]]:
    """Every one of the d_vocab^length continuations scored by Σ log p, best first (tiny vocabularies only)."""
    conts = torch.tensor(list(itertools.product(range(d_vocab), repeat=length)), dtype=torch.long)
    seqs = torch.cat([input_ids.expand(len(conts), -1), conts], dim=1)
    logprobs = model(seqs).log_softmax(dim=-1).to(torch.float64)
    n = input_ids.shape[1]
    picked = logprobs[:, n - 1:-1].gather(-1, conts[..., None]).squeeze(-1).sum(-1)
    order = picked.argsort(descending=True)
    return [(picked[i].item(), seqs[i]) for i in order.tolist()]


# ---------------------------------------------------------------- the experiment


def distinct_n(rows: list[list[int]], n: int = 2) -> float:
    """Distinct n-grams / total n-grams over a set of generations (1 = no repetition anywhere)."""
    grams = [tuple(r[i:i + n]) for r in rows for i in range(len(r) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def sequence_log_prob(model: LogitsFn, tokens: Tensor, prompt_len: int) -> Float[Tensor, "batch"]:
    """Mean log p(x_i | x_<i) of the generated part under the untempered model (nats per token)."""
    with torch.no_grad():
        lp = model(tokens).log_softmax(-1)[:, prompt_len - 1:-1]
    return lp.gather(-1, tokens[:, prompt_len:, None]).squeeze(-1).mean(-1)


def random_tiny_model(d_vocab: int = 5, seed: int = 0, init_range: float = 0.5) -> DemoTransformer:
    """A 2-layer DemoTransformer on a tiny vocabulary with large random weights (peaked distributions), float64."""
    torch.manual_seed(seed)
    cfg = gpt2.Config(d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32, n_ctx=16, d_vocab=d_vocab, init_range=init_range)
    return DemoTransformer(cfg).double().eval()


def beam_width_study(seeds: int = 200, d_vocab: int = 5, length: int = 4, widths=(1, 2, 3, 5, 10, 25, 125)) -> dict:
    """How often beam search of each width finds the exhaustive optimum, over random tiny models."""
    hits = {w: 0 for w in widths}
    gaps = {w: [] for w in widths}
    for seed in range(seeds):
        model = random_tiny_model(d_vocab, seed)
        prompt = torch.tensor([[seed % d_vocab]])
        best = exhaustive_search(model, prompt, length, d_vocab)[0][0]
        for w in widths:
            found = beam_search(model, prompt, w, length)[0][0]
            hits[w] += abs(found - best) < 1e-9
            gaps[w].append(best - found)
    return {"widths": list(widths), "hit_rate": [hits[w] / seeds for w in widths],
            "mean_gap": [sum(gaps[w]) / seeds for w in widths], "seeds": seeds, "d_vocab": d_vocab, "length": length}


def kv_cache_benchmark(prompt_len: int = 16, new_tokens: int = 96, seed: int = 0) -> dict:
    """Seconds per generated token with and without the KV cache, GPT-2 small's shape, random weights."""
    torch.manual_seed(seed)
    model = DemoTransformer(gpt2.Config()).eval()
    prompt = torch.randint(0, 50257, (1, prompt_len))
    out = {}
    with torch.no_grad():
        for use_cache in (True, False):
            tokens, cache, times = prompt, None, []
            for _ in range(new_tokens):
                t0 = time.perf_counter()
                if use_cache:
                    logits, cache = forward_with_cache(model, tokens if cache is None else tokens[:, -1:], cache)
                else:
                    logits = model(tokens)
                tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
                times.append(time.perf_counter() - t0)
            out["cached" if use_cache else "uncached"] = times
            out[("cached" if use_cache else "uncached") + "_tokens"] = tokens[0, prompt_len:].tolist()
    return out


# Decoding settings of the SmolLM2 study: key (dot-free, so that a post can cite it) -> (label, arguments).
SETTINGS = {"greedy": ("greedy", dict(temperature=0.0)),
            "T07": ("T = 0.7", dict(temperature=0.7)),
            "T10": ("T = 1", dict(temperature=1.0)),
            "T15": ("T = 1.5", dict(temperature=1.5)),
            "top_k20": ("top-k 20", dict(temperature=1.0, top_k=20)),
            "top_p09": ("top-p 0.9", dict(temperature=1.0, top_p=0.9)),
            "freq10": ("T = 1, frequency penalty 1", dict(temperature=1.0, frequency_penalty=1.0))}


def smollm2_study(n_samples: int = 8, new_tokens: int = 40, seed: int = 0) -> dict:
    """SmolLM2-135M-Instruct under each decoding setting: diversity (distinct-2 across 8 samples) against
    the model's own mean log-probability of what was generated."""
    from checks.models import smollm2

    hf, tok = smollm2()
    logits_fn = lambda ids: hf(ids).logits  # noqa: E731
    chat = tok.apply_chat_template([{"role": "user", "content": "Write a short story about a robot who learns to paint."}],
                                   tokenize=False, add_generation_prompt=True)
    prompt = tok(chat, return_tensors="pt").input_ids
    rows = {}
    for name, (label, kwargs) in SETTINGS.items():
        g = torch.Generator().manual_seed(seed)
        out = generate(CachedHF(hf), prompt.expand(n_samples, -1), new_tokens, generator=g, **kwargs)
        gen = out[:, prompt.shape[1]:]
        rows[name] = {"label": label, "distinct_2": distinct_n(gen.tolist(), 2),
                      "mean_log_prob": sequence_log_prob(logits_fn, out, prompt.shape[1]).mean().item(),
                      "example": tok.decode(gen[0], skip_special_tokens=True)}
    with torch.no_grad():
        next_logits = logits_fn(tok("The capital of France is", return_tensors="pt").input_ids)[0, -1]
    return {"settings": rows, "prompt_tokens": prompt.shape[1], "new_tokens": new_tokens, "n_samples": n_samples,
            "paris_logits": next_logits, "tokenizer": tok}


def run_experiment(out_dir: Path) -> dict:
    """Figures: the nucleus and top-k sets on SmolLM2's next-token distribution, diversity vs likelihood per
    decoding setting, beam width vs finding the optimum, and the KV cache's time per token."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)

    study = smollm2_study()
    tok, logits = study.pop("tokenizer"), study.pop("paris_logits")
    probs = logits.softmax(-1)
    top = probs.topk(15)
    nucleus = top_p_filter(logits[None], 0.9)[0].isfinite()
    topk = top_k_filter(logits[None], 5)[0].isfinite()
    fig, ax = plt.subplots(figsize=(9, 3.8))
    colors = ["tab:blue" if topk[i] else ("tab:orange" if nucleus[i] else "lightgrey") for i in top.indices.tolist()]
    ax.bar(range(15), top.values, color=colors)
    ax.set_xticks(range(15), [repr(tok.decode([i]))[1:-1] for i in top.indices.tolist()], rotation=45, ha="right")
    ax.set_ylabel("p(next token)")
    ax.set_title(f"SmolLM2 after 'The capital of France is': top-5 (blue), nucleus p=0.9 adds orange "
                 f"({int(nucleus.sum())} tokens)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/next_token_sets.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, row in study["settings"].items():
        ax.scatter(row["mean_log_prob"], row["distinct_2"], s=40)
        ax.annotate(row["label"], (row["mean_log_prob"], row["distinct_2"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("mean log p of the generated tokens under the model (nats)")
    ax.set_ylabel("distinct bigrams / bigrams (8 samples)")
    ax.set_title("SmolLM2-135M-Instruct: likelihood against diversity")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/decoding_tradeoff.png", dpi=120)
    plt.close(fig)

    beams = beam_width_study()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.semilogx(beams["widths"], beams["hit_rate"], "o-")
    ax.axvline(beams["d_vocab"] ** (beams["length"] - 1), color="grey", ls=":", label="V^(L-1): exhaustive")
    ax.set_xlabel("num_beams")
    ax.set_ylabel("fraction finding the optimum")
    ax.set_title(f"Beam search on {beams['seeds']} random models (V = {beams['d_vocab']}, L = {beams['length']})")
    ax.set_ylim(0, 1.05)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/beam_width.png", dpi=120)
    plt.close(fig)

    kv = kv_cache_benchmark()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    positions = list(range(16, 16 + len(kv["cached"])))
    ax.plot(positions, [1000 * t for t in kv["uncached"]], label="without cache (whole prefix each step)")
    ax.plot(positions, [1000 * t for t in kv["cached"]], label="with KV cache (one token each step)")
    ax.set_xlabel("sequence length before the step")
    ax.set_ylabel("milliseconds per generated token")
    ax.set_title("Greedy generation, GPT-2 small shape, random weights")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/kv_cache.png", dpi=120)
    plt.close(fig)

    tail = slice(-16, None)
    results = {
        "smollm2": study,
        "next_token": {"nucleus_size_p09": int(nucleus.sum()), "top1_prob": top.values[0].item(),
                       "top1_token": tok.decode([top.indices[0].item()])},
        "beam_width": beams,
        "kv_cache": {"same_tokens": kv["cached_tokens"] == kv["uncached_tokens"],
                     "total_cached_s": sum(kv["cached"]), "total_uncached_s": sum(kv["uncached"]),
                     "speedup_total": sum(kv["uncached"]) / sum(kv["cached"]),
                     "speedup_last16": sum(kv["uncached"][tail]) / sum(kv["cached"][tail]),
                     "per_token_ms_cached": [1000 * t for t in kv["cached"]],
                     "per_token_ms_uncached": [1000 * t for t in kv["uncached"]]},
        "torch_threads": torch.get_num_threads(),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
