"""Day 45: steering with activation additions (ARENA 1.3.2, Function Vectors: section 4; Turner et al. 2023).

Two ways to steer a model by adding a vector to its residual stream entering block l (TransformerLens's
``blocks.{l}.hook_resid_pre``, Hugging Face's ``hidden_states[l]``, nnsight's ``layers[l].input``):

- **ActAdd**: run short steering prompts ("Love", "Hate") through the model, take their residual streams at
  block l's input, and add Σ_i c_i · resid_l(prompt_i) to the first positions of the user's prompt (once, at
  the prompt: the generated tokens see it through attention). The steering prompts are padded with spaces
  to one length, so that "Love" − "Hate" is a difference of aligned positions.
- **Mean difference**: v = mean_{p ∈ P} resid_l(p)[-1] − mean_{n ∈ N} resid_l(n)[-1] over contrasting prompt
  sets (positive and negative sentences), added as c · v at every position of every forward pass.

How strongly does it work, and what does it cost? A dose-response curve: the coefficient c against a
sentiment score of the generated text from a fixed word list (a classifier that knows nothing of the vector)
and against WikiText-2 bits per token with the vector added (fluency), beside the same curve for a random
direction of the same norm.

Every function takes the model by name (or an nnsight LanguageModel): "smollm2" here, GPT-J or GPT-2 XL for
ARENA's runs.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from checks.timing import single_thread

P = importlib.import_module("days.043.act_patch")
FV = importlib.import_module("days.044.func_vectors")
as_lm, dims = FV.as_lm, P.dims


def _ids(lm, text: str, use_bos: bool) -> list[int]:
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([lm.tokenizer.bos_token_id] if use_bos else []) + ids


# ---------------------------------------------------------------- ActAdd


@torch.no_grad()
def resid_pre(model, tokens: Int[Tensor, "batch pos"], layer: int) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream entering block ``layer``."""
    lm = as_lm(model)
    with lm.trace(tokens):
        x = P.layer(lm, layer).input.save()
    return x


def actadd_vector(model, activation_additions: list[tuple[int, float, str]], use_bos: bool = True
                  ) -> tuple[int, Float[Tensor, "pos d_model"]]:
    """The ActAdd steering tensor Σ_i c_i · resid_pre_l(prompt_i), the prompts right-padded with space tokens to
    one length. All additions must use one layer: returns (layer, tensor)."""
    lm = as_lm(model)
    layers = {l for l, _, _ in activation_additions}
    if len(layers) != 1:
        raise ValueError("one layer per steering tensor")
    layer = layers.pop()
    ids = [_ids(lm, text, use_bos) for _, _, text in activation_additions]
    space = lm.tokenizer(" ", add_special_tokens=False)["input_ids"][0]
    width = max(map(len, ids))
    tokens = torch.tensor([i + [space] * (width - len(i)) for i in ids])
    acts = resid_pre(lm, tokens, layer)
    coefs = torch.tensor([c for _, c, _ in activation_additions])
    return layer, (coefs[:, None, None] * acts).sum(0)


@torch.no_grad()
def generate(model, prompts: list[str], n_tokens: int, layer: int | None = None,
             vector: Float[Tensor, "... d_model"] | None = None, mode: str = "all", use_bos: bool = True) -> list[str]:
    """Greedy completions of ``n_tokens`` tokens (prompts of one length, or one prompt), with a steering addition
    at block ``layer``'s input: mode "all" adds ``vector`` (d_model) at every position of every forward pass;
    mode "prefix" adds ``vector`` (pos × d_model, ActAdd) to the first positions of the prompt, once."""
    lm = as_lm(model)
    tokens = torch.tensor([_ids(lm, p, use_bos) for p in prompts])
    # min_new_tokens: an early end-of-text would cut nnsight's step loop short (and the statements after it)
    with lm.generate(tokens, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False) as tracer:
        if vector is not None and mode == "all":
            for _ in tracer.iter[:n_tokens]:
                P.layer(lm, layer).input[:] += vector
        elif vector is not None and mode == "prefix":
            for _ in tracer.iter[:1]:
                if vector.shape[0] > tokens.shape[1]:
                    raise ValueError("the steering prompts are longer than the prompt")
                P.layer(lm, layer).input[:, :vector.shape[0]] += vector
        out = tracer.result.save()
    return [lm.tokenizer.decode(row[tokens.shape[1]:]) for row in out]


def calculate_and_apply_steering_vector(model, prompt: str, activation_additions: list[tuple[int, float, str]],
                                        n_tokens: int, use_bos: bool = True) -> tuple[str, str]:
    """ARENA's calculate_and_apply_steering_vector (greedy, one comparison): the completion of ``prompt`` without
    and with the ActAdd tensor of ``activation_additions`` added to its first positions at the layer's input."""
    layer, vector = actadd_vector(model, activation_additions, use_bos)
    plain = generate(model, [prompt], n_tokens, use_bos=use_bos)[0]
    steered = generate(model, [prompt], n_tokens, layer, vector, mode="prefix", use_bos=use_bos)[0]
    return plain, steered


# ---------------------------------------------------------------- mean difference


def mean_diff_vector(model, positive: list[str], negative: list[str], layer: int, use_bos: bool = True
                     ) -> Float[Tensor, "d_model"]:
    """v = mean over positive prompts − mean over negative prompts of the residual stream entering block
    ``layer`` at each prompt's last position (prompts run one at a time: no padding)."""
    lm = as_lm(model)

    def mean_last(prompts):
        return torch.stack([resid_pre(lm, torch.tensor([_ids(lm, p, use_bos)]), layer)[0, -1] for p in prompts]).mean(0)

    return mean_last(positive) - mean_last(negative)


def random_direction(like: Float[Tensor, "d_model"], seed: int = 0) -> Float[Tensor, "d_model"]:
    """A uniformly random direction with the norm of ``like`` (a seeded Gaussian, rescaled)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(like.shape, generator=g, dtype=like.dtype)
    return r * (like.norm() / r.norm())


# ---------------------------------------------------------------- the same additions in TransformerLens


def tl_hooks(layer: int, vector: Tensor, mode: str = "all"):
    """TransformerLens forward hooks for the same additions, on ``blocks.{layer}.hook_resid_pre``. In "prefix"
    mode the addition applies only to the first forward pass the hooks see (the prompt, not a cached step): make
    new hooks for each generation."""
    calls = []

    def add(resid, hook):
        calls.append(resid.shape[1])
        if mode == "all":
            return resid + vector
        if len(calls) == 1:                       # the prompt's forward pass only (later ones are cached steps)
            resid[:, :vector.shape[0]] += vector
        return resid
    return [(f"blocks.{layer}.hook_resid_pre", add)]


# ---------------------------------------------------------------- scoring: a word list and bits per token

POSITIVE_WORDS = set("""love loved loves lovely loving happy happiness joy joyful wonderful great good beautiful
amazing excellent fantastic delightful glad pleased kind warm friendly peace peaceful hope hopeful smile smiles
smiling enjoy enjoyed fun nice best better awesome brilliant grateful thankful care caring sweet gentle bright
cheerful blessed perfect celebrate celebrating excited exciting heart""".split())
NEGATIVE_WORDS = set("""hate hated hates hateful sad sadness angry anger awful terrible horrible bad worse worst
ugly pain painful hurt hurts cruel evil fear afraid scared miserable disgusting disgust annoying annoyed upset
cry crying tears lonely sick kill killed death dead die dying violence violent war enemy furious rage bitter
broken disaster stupid boring""".split())


def sentiment_score(text: str) -> float:
    """A classifier independent of the steering: (#positive − #negative words) per word of ``text``, ×100,
    from fixed word lists (lower-cased, letters only)."""
    words = re.findall(r"[a-z]+", text.lower())
    if not words:
        return 0.0
    return 100.0 * (sum(w in POSITIVE_WORDS for w in words) - sum(w in NEGATIVE_WORDS for w in words)) / len(words)


@torch.no_grad()
def bits_per_token(model, tokens: Int[Tensor, "batch pos"], layer: int | None = None,
                   vector: Float[Tensor, "d_model"] | None = None) -> float:
    """Mean next-token cross-entropy in bits over ``tokens``, with c·v added at block ``layer``'s input at every
    position (nothing added when vector is None)."""
    lm = as_lm(model)
    with lm.trace(tokens):
        if vector is not None:
            P.layer(lm, layer).input[:] += vector
        logits = lm.lm_head.output.save()
    logp = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    return float(-logp.mean() / math.log(2))


# ---------------------------------------------------------------- the experiment

POSITIVE = ["I love this so much, it is wonderful.", "What a beautiful day, I am so happy.",
            "You are my best friend and I adore you.", "This is the best gift I have ever received.",
            "I feel grateful and full of joy.", "The party was fantastic and everyone smiled."]
NEGATIVE = ["I hate this so much, it is awful.", "What a miserable day, I am so sad.",
            "You are my worst enemy and I despise you.", "This is the worst gift I have ever received.",
            "I feel bitter and full of anger.", "The party was terrible and everyone cried."]
PROMPTS = ["I think that my neighbour", "When I walked into the room,", "The letter from my brother said",
           "Yesterday at work, my boss", "The old house at the end of the street", "After the meeting, we",
           "My first impression of the city was", "The teacher looked at the class and",
           "On the train this morning,", "The news this evening was about", "When the phone rang, I",
           "Our holiday by the sea was"]
EXPERIMENT = dict(layer=8, coefficients=[0.0, 2.0, 4.0, 8.0], n_tokens=16, actadd_coef=4.0, seed=0,
                  n_prompts=6, wikitext=dict(n_seq=4, seq_len=64))


def bootstrap_mean(x: np.ndarray, n: int = 5000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n, len(x)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def score_generations(lm, prompts: list[str], n_tokens: int, layer: int, vector) -> tuple[list[str], np.ndarray]:
    texts = [generate(lm, [p], n_tokens, layer, vector)[0] for p in prompts]
    return texts, np.array([sentiment_score(t) for t in texts])


@single_thread()
def run_experiment(out_dir: Path, name: str = "smollm2", config: dict | None = None) -> dict:
    """ActAdd "Love" − "Hate" on a few prompts; the mean-difference vector's dose-response (sentiment score and
    WikiText-2 bits per token against the coefficient), beside a random direction of the same norm."""
    import matplotlib.pyplot as plt

    tl_setup = importlib.import_module("days.035.tl_setup")
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    cfg = dict(EXPERIMENT, **(config or {}))
    lm = as_lm(name)
    layer = cfg["layer"]
    v = mean_diff_vector(lm, POSITIVE, NEGATIVE, layer)
    r = random_direction(v, cfg["seed"])
    wiki = tl_setup.wikitext_tokens(lm.tokenizer, **cfg["wikitext"])
    resid_norm = resid_pre(lm, wiki[:1], layer)[0, 1:].norm(dim=-1).median().item()
    curves: dict = {"steer": [], "random": []}
    examples: dict = {}
    for c in cfg["coefficients"]:
        for kind, direction in (("steer", v), ("random", r)):
            if c == 0 and kind == "random":
                curves["random"].append(curves["steer"][0])
                continue
            texts, scores = score_generations(lm, PROMPTS[:cfg["n_prompts"]], cfg["n_tokens"], layer, c * direction)
            bpt = bits_per_token(lm, wiki, layer, c * direction)
            curves[kind].append({"coef": c, "sentiment": float(scores.mean()), "sentiment_ci": bootstrap_mean(scores),
                                 "scores": scores.tolist(), "texts": texts, "bits_per_token": bpt})
            examples.setdefault(kind, {})[str(c)] = texts[:3]
    actadd = [dict(zip(("prompt", "without", "with"),
                       (p, *calculate_and_apply_steering_vector(lm, p, [(layer, cfg["actadd_coef"], "Love"),
                                                                       (layer, -cfg["actadd_coef"], "Hate")],
                                                                 cfg["n_tokens"]))))
              for p in PROMPTS[:4]]
    actadd_scores = np.array([sentiment_score(a["with"]) - sentiment_score(a["without"]) for a in actadd])

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), constrained_layout=True)
    for kind, style in (("steer", "o-"), ("random", "s--")):
        cs = [e["coef"] for e in curves[kind]]
        m = np.array([e["sentiment"] for e in curves[kind]])
        lo, hi = np.array([e["sentiment_ci"] for e in curves[kind]]).T
        label = "mean difference (positive − negative)" if kind == "steer" else "random direction, same norm"
        axes[0].plot(cs, m, style, label=label)
        axes[0].fill_between(cs, lo, hi, alpha=0.2)
        axes[1].plot(cs, [e["bits_per_token"] for e in curves[kind]], style, label=label)
    axes[0].set_xlabel("coefficient c (vector c·v added at every position)")
    axes[0].set_ylabel("sentiment score (word list, per 100 words)")
    axes[0].set_title(f"Effect: sentiment of {cfg['n_prompts']} greedy continuations")
    axes[1].set_xlabel("coefficient c")
    axes[1].set_ylabel("WikiText-2 bits per token")
    axes[1].set_title("Cost: fluency on WikiText-2 with the vector added")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(out_dir / "figures/dose_response.png", dpi=120)
    plt.close(fig)

    results = {
        "model": name, "experiment": cfg, "prompts": PROMPTS[:cfg["n_prompts"]], "vector_norm": v.norm().item(), "median_resid_norm": resid_norm,
        "curves": curves, "examples": examples, "actadd": actadd,
        "actadd_display": [{k: FV.display(v) for k, v in a.items()} for a in actadd],
        "table": [{"prompt": FV.display(p), "unsteered": FV.display(curves["steer"][0]["texts"][i]),
                   "steered": FV.display(curves["steer"][2]["texts"][i])} for i, p in enumerate(PROMPTS[:3])],
        "actadd_mean_sentiment_change": float(actadd_scores.mean()),
        "wall_seconds": time.perf_counter() - wall0, "cpu_seconds": time.process_time() - cpu0,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
