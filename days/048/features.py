"""Day 48: interpreting SAE latents (ARENA 1.3.3 SAEs).

A latent i of an SAE is a direction d_i (a decoder row) and a detector a_i(x) ≥ 0 (its activation).
ARENA's first tools read both sides:

- what the latent responds to: its max-activating examples (``get_k_largest_indices``,
  ``index_with_buffer``, ``fetch_max_activating_examples``, ``display_top_seqs``) and the histogram of
  its non-zero activations (``show_activation_histogram``);
- what it writes: the logits its direction promotes directly, d_i W_U (``show_top_logits``; in
  TransformerLens W_U already carries the final norm's weights, so this is the direct path through a
  frozen norm);
- what it does: ablating it, x ↦ x - a_i(x) d_i with the SAE's error term kept, and steering with it,
  x ↦ x + c·d_i at every position (``steering_hook``, ``generate_with_steering``).

An explanation of a latent is a claim about where it fires. Here each is written as data, a rule that
marks tokens, and scored by *detection* on held-out text: how well the rule predicts the latent's
activation (AUROC of the activation with the rule's marks as labels; precision and recall of "fires" against
"marked"). ARENA's autointerp asks a language model for the explanation; ``get_autointerp_explanation``
keeps that path for a user with an API key, and is never called by the tests.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import einops
import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

sae_train = importlib.import_module("days.047.sae_train")
sae_theory = importlib.import_module("days.046.sae_theory")
HOOK = sae_train.HOOK

# ---------------------------------------------------------------- max-activating examples


def get_k_largest_indices(x: Float[Tensor, "batch seq"], k: int, buffer: int = 0,
                          no_overlap: bool = True) -> Int[Tensor, "k 2"]:
    """ARENA's get_k_largest_indices: the (batch, seq) indices of the k largest elements of x, largest first,
    never within ``buffer`` of either end of a sequence (so a ±buffer window fits); with no_overlap, no two chosen
    within ``buffer`` of each other in the same sequence (a greedy pass down the sorted list)."""
    if buffer > 0:
        x = x[:, buffer:-buffer]
    indices = x.flatten().argsort(-1, descending=True)
    rows = indices // x.size(1)
    cols = indices % x.size(1) + buffer
    if no_overlap:
        chosen: list[tuple[int, int]] = []
        while len(chosen) < k and rows.numel() > 0:
            r, c = rows[0].item(), cols[0].item()
            chosen.append((r, c))
            overlapping = (rows == r) & ((cols - c).abs() <= buffer)
            rows, cols = rows[~overlapping], cols[~overlapping]
        return torch.tensor(chosen, dtype=torch.long).reshape(-1, 2)
    return torch.stack((rows, cols), dim=1)[:k]


def index_with_buffer(x: Float[Tensor, "batch seq"], indices: Int[Tensor, "k 2"],
                      buffer: int | None = None) -> Float[Tensor, "k *buffer_x2_plus1"]:
    """ARENA's index_with_buffer: x at each (batch, seq) index, or with a buffer the 2·buffer + 1 elements around it
    (a window that would run off either end of its sequence is shifted to fit)."""
    rows, cols = indices.unbind(dim=-1)
    if buffer is None:
        return x[rows, cols]
    cols = cols.clamp(buffer, x.size(1) - buffer - 1)
    rows = einops.repeat(rows, "k -> k w", w=2 * buffer + 1)
    cols = einops.repeat(cols, "k -> k w", w=2 * buffer + 1) + torch.arange(-buffer, buffer + 1)
    return x[rows, cols]


@torch.no_grad()
def latent_activations(model, sae, tokens: Int[Tensor, "batch pos"], latents: list[int] | None = None,
                       acts: Float[Tensor, "batch pos d"] | None = None, batch_size: int = 16) -> Float[Tensor, "batch pos n"]:
    """The SAE's latent activations on a corpus (all latents, or the listed ones), zero at the attention sinks (the
    SAE never reads them, day 47). ``acts``: the residual stream if already computed."""
    if acts is None:
        acts = sae_train.resid_activations(model, tokens)
    out = []
    for start in range(0, acts.shape[0], batch_size):
        x = acts[start:start + batch_size]
        a = sae.encode(x)
        if latents is not None:
            a = a[..., latents]
        out.append(torch.where(sae_train.sink_mask(x)[..., None], torch.zeros_like(a), a))
    return torch.cat(out)


def fetch_max_activating_examples(model, sae, tokens: Int[Tensor, "batch pos"], latent_idx: int, k: int = 10,
                                  buffer: int = 10, latent_acts: Float[Tensor, "batch pos"] | None = None
                                  ) -> list[tuple[float, list[str], int]]:
    """ARENA's fetch_max_activating_examples: the k highest activations of a latent over the corpus (non-overlapping,
    away from the edges), each as (activation, the 2·buffer + 1 string tokens around it, the index of the
    activating token in that list: buffer). ARENA streams batches from an ActivationsStore; ours takes the tokens."""
    if latent_acts is None:
        latent_acts = latent_activations(model, sae, tokens, [latent_idx])[..., 0]
    indices = get_k_largest_indices(latent_acts, k, buffer=buffer)
    scores = index_with_buffer(latent_acts, indices)
    windows = index_with_buffer(tokens, indices, buffer=buffer)
    return [(score.item(), [model.tokenizer.decode([t]) for t in window.tolist()], buffer)
            for score, window in zip(scores, windows)]


def display_top_seqs(data: list[tuple[float, list[str], int]]) -> str:
    """ARENA's display_top_seqs, as text: one row per example, the activating token in ⟦ ⟧ (ARENA renders a rich
    table in a notebook; a string fits a post and a test)."""
    lines = []
    for score, toks, pos in data:
        text = "".join(toks[:pos]) + "⟦" + toks[pos] + "⟧" + "".join(toks[pos + 1:])
        lines.append(f"{score:8.3f}  " + text.replace("\n", "⏎"))
    return "\n".join(lines)


def show_activation_histogram(latent_acts: Float[Tensor, "batch pos"], bins: int = 40, ax=None,
                              title: str | None = None) -> dict:
    """ARENA's show_activation_histogram: the histogram of a latent's non-zero activations, and how often it fires.
    ARENA reads batches from an ActivationsStore and plots with plotly; ours takes the activations (sinks already
    excluded) and draws on a matplotlib axis when given one."""
    values = latent_acts.flatten()
    fired = values[values > 0]
    counts, edges = np.histogram(fired.numpy(), bins=bins)
    if ax is not None:
        ax.hist(fired.numpy(), bins=edges)
        ax.set_title(title or "activations")
        ax.set_xlabel("activation")
    return {"counts": counts.tolist(), "edges": edges.tolist(), "frac_active": fired.numel() / values.numel(),
            "max": values.max().item()}


# ---------------------------------------------------------------- what a latent writes


def decoder_direction(sae, latent_idx: int) -> Float[Tensor, " d_model"]:
    """The latent's unit decoder direction in the model's residual space."""
    W = sae.W_dec
    d = W[latent_idx]
    return d / d.norm()


@torch.no_grad()
def show_top_logits(model, sae, latent_idx: int, k: int = 10) -> dict[str, list[tuple[str, float]]]:
    """ARENA's show_top_logits: the tokens whose logits the latent's decoder direction raises (and lowers) most
    directly, the entries of d_i W_U (TransformerLens has folded the final norm's weights into W_U). ARENA prints a
    table; ours returns it."""
    logits = decoder_direction(sae, latent_idx) @ model.W_U
    top, bottom = logits.topk(k), logits.topk(k, largest=False)
    decode = model.tokenizer.decode
    return {"top": [(decode([i]), v) for v, i in zip(top.values.tolist(), top.indices.tolist())],
            "bottom": [(decode([i]), v) for v, i in zip(bottom.values.tolist(), bottom.indices.tolist())]}


# ---------------------------------------------------------------- ablation and steering


def steering_hook(activations: Float[Tensor, "batch pos d_model"], hook, sae, latent_idx: int,
                  steering_coefficient: float) -> Tensor:
    """ARENA's steering_hook: add steering_coefficient × the latent's (unit) decoder direction at every position."""
    return activations + steering_coefficient * decoder_direction(sae, latent_idx)


def generate_with_steering(model, sae, prompt: str, latent_idx: int, steering_coefficient: float = 1.0,
                           max_new_tokens: int = 50, hook: str = HOOK, **generate_kwargs) -> str:
    """ARENA's generate_with_steering: generate from the prompt with steering_hook on the SAE's hook point. ARENA
    samples (temperature 0.5, freq_penalty 2); the keyword arguments go to model.generate (greedy: do_sample=False)."""
    kwargs = dict(verbose=False) | generate_kwargs
    with model.hooks(fwd_hooks=[(hook, partial(steering_hook, sae=sae, latent_idx=latent_idx,
                                               steering_coefficient=steering_coefficient))]):
        return model.generate(prompt, max_new_tokens=max_new_tokens, **kwargs)


def latent_ablation_hook(activations: Float[Tensor, "batch pos d_model"], hook, sae, latent_idx: int,
                         exclude_sinks: bool = True) -> Tensor:
    """Zero-ablate one latent and keep the SAE's error term: x ↦ x - (x̂(a) - x̂(a with a_i = 0)) = x - a_i(x)·(its
    decoder row, in the model's units); nothing else of x changes. (ARENA zeroes the latent at
    hook_sae_acts_post of a HookedSAETransformer spliced with use_error_term=True, which is the same map.)"""
    acts = sae.encode(activations)
    ablated = acts.clone()
    ablated[..., latent_idx] = 0.0
    delta = sae.decode(acts) - sae.decode(ablated)
    if exclude_sinks:
        delta = torch.where(sae_train.sink_mask(activations)[..., None], torch.zeros_like(delta), delta)
    return activations - delta


@torch.no_grad()
def ablation_effect(model, sae, tokens: Int[Tensor, "batch pos"], latent_idx: int, hook: str = HOOK
                    ) -> Float[Tensor, "batch pos_minus_1"]:
    """How much ablating the latent raises each next-token loss: loss(ablated) - loss(clean), per prediction."""
    clean = sae_train.token_losses(model(tokens), tokens)
    ablated = model.run_with_hooks(tokens, fwd_hooks=[(hook, partial(latent_ablation_hook, sae=sae,
                                                                     latent_idx=latent_idx))])
    return sae_train.token_losses(ablated, tokens) - clean


# ---------------------------------------------------------------- explanations as data, scored by detection


@dataclass(frozen=True)
class Rule:
    """A predicate on a token in context, built from small pieces so that an explanation is data:
    ``token`` a regex the token's text must match (fullmatch, stripped of leading space unless ``keep_space``),
    ``before`` a regex the text of the preceding ``window`` tokens must contain (search), ``not_before`` one it
    must not."""

    token: str | None = None
    before: str | None = None
    not_before: str | None = None
    window: int = 8
    keep_space: bool = False
    flags: int = re.IGNORECASE

    def __call__(self, str_toks: list[str], pos: int) -> bool:
        tok = str_toks[pos] if self.keep_space else str_toks[pos].strip()
        if self.token is not None and not re.fullmatch(self.token, tok, self.flags):
            return False
        context = "".join(str_toks[max(0, pos - self.window):pos])
        if self.before is not None and not re.search(self.before, context, self.flags):
            return False
        if self.not_before is not None and re.search(self.not_before, context, self.flags):
            return False
        return True


@dataclass(frozen=True)
class AnyOf:
    """A token marked by any of several rules (an explanation with more than one clause)."""

    rules: tuple[Rule, ...]

    def __call__(self, str_toks: list[str], pos: int) -> bool:
        return any(rule(str_toks, pos) for rule in self.rules)


def rule_spec(rule: Rule | AnyOf) -> dict:
    """A rule as JSON-able data (what results.json records)."""
    if isinstance(rule, AnyOf):
        return {"any_of": [rule_spec(r) for r in rule.rules]}
    return {k: v for k, v in rule.__dict__.items() if k != "flags"} | {"ignore_case": bool(rule.flags & re.IGNORECASE)}


@dataclass(frozen=True)
class Explanation:
    latent: int
    text: str               # the explanation, as a reader would write it
    rule: Rule | AnyOf      # the same claim, executable


def rule_labels(rule: Callable[[list[str], int], bool], str_toks: list[list[str]]) -> Tensor:
    """[batch, pos] booleans: where the rule marks a token."""
    return torch.tensor([[rule(seq, p) for p in range(len(seq))] for seq in str_toks])


def detection_scores(latent_acts: Float[Tensor, "batch pos"], labels: Tensor, mask: Tensor | None = None) -> dict:
    """How well an explanation's marks predict a latent's activation, over the unmasked tokens:
    AUROC = P(a at a marked token > a at an unmarked one) (ties count ½: the Mann-Whitney statistic); with
    "fires" = a > 0, precision = P(fires | marked), recall = P(marked | fires); and R-precision, the fraction marked
    among the n_marked tokens where the latent is largest (a recall of its strongest activations)."""
    a = latent_acts.flatten().double()
    y = labels.flatten().bool()
    if mask is not None:
        keep = mask.flatten().bool()
        a, y = a[keep], y[keep]
    fires = a > 0
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    ranks = _average_ranks(a)
    auroc = (ranks[y].sum().item() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg) if n_pos and n_neg else float("nan")
    tp = int((fires & y).sum())
    top = a.argsort(descending=True, stable=True)[:n_pos]
    return {"auroc": auroc, "precision": tp / max(n_pos, 1), "recall": tp / max(int(fires.sum()), 1),
            "r_precision": y[top].double().mean().item() if n_pos else float("nan"),
            "n_marked": n_pos, "n_fires": int(fires.sum()), "n_tokens": int(y.numel())}


def _average_ranks(a: Tensor) -> Tensor:
    """Ranks 1..n of a, ties sharing their average rank."""
    order = a.argsort()
    sorted_a = a[order]
    ranks = torch.empty_like(a)
    ranks[order] = torch.arange(1, len(a) + 1, dtype=a.dtype)
    unique, inverse, counts = torch.unique(sorted_a, return_inverse=True, return_counts=True)
    if (counts > 1).any():
        sums = torch.zeros(len(unique), dtype=a.dtype).index_add_(0, inverse, torch.arange(1, len(a) + 1, dtype=a.dtype))
        ranks[order] = (sums / counts)[inverse]
    return ranks


def str_tokens(tokenizer, tokens: Int[Tensor, "batch pos"]) -> list[list[str]]:
    return [[tokenizer.decode([t]) for t in row] for row in tokens.tolist()]


# ---------------------------------------------------------------- autointerp: the real path, for a user with a key


def create_prompt(model, sae, tokens: Int[Tensor, "batch pos"], latent_idx: int, k: int = 15, buffer: int = 10,
                  latent_acts: Tensor | None = None) -> dict[str, str]:
    """ARENA's create_prompt: a system message, and a user message listing the latent's top examples with the
    activating token marked <<like this>>; the assistant's reply is to start "This latent fires on"."""
    data = fetch_max_activating_examples(model, sae, tokens, latent_idx, k, buffer, latent_acts)
    examples = "\n".join(f"{i + 1}. " + "".join(toks[:pos]) + "<<" + toks[pos] + ">>" + "".join(toks[pos + 1:])
                         for i, (_, toks, pos) in enumerate(data))
    return {
        "system": "We're studying neurons in a neural network. Each neuron activates on some particular word or "
                  "concept in a short document. The activating words in each document are indicated with << ... >>. "
                  "Look at the parts of the document the neuron activates for and summarize in a single sentence "
                  "what the neuron is activating on. Try to be specific in your explanations, although don't be so "
                  "specific that you exclude some of the examples you're being shown.",
        "user": f"The activating documents are given below:\n\n{examples}",
        "assistant": "This latent fires on",
    }


class ApiKeyMissing(RuntimeError):
    """No API key in the environment: the frontier-model explainer cannot run here."""


def get_autointerp_explanation(model, sae, tokens, latent_idx: int, k: int = 15, buffer: int = 10,
                               n_completions: int = 1, provider: str | None = None, api_model: str | None = None,
                               timeout: float = 60.0) -> list[str]:
    """ARENA's get_autointerp_explanation: send create_prompt's messages to a frontier model and return its
    explanation(s). Uses ANTHROPIC_API_KEY (Messages API) or OPENAI_API_KEY (Chat Completions), whichever is set
    (or ``provider``), over plain HTTPS; raises ApiKeyMissing when neither is. Never called by the tests."""
    import urllib.request

    provider = provider or ("anthropic" if os.environ.get("ANTHROPIC_API_KEY") else
                            "openai" if os.environ.get("OPENAI_API_KEY") else None)
    key = os.environ.get({"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}.get(provider or "", ""), "")
    if not provider or not key:
        raise ApiKeyMissing("set ANTHROPIC_API_KEY or OPENAI_API_KEY to ask a frontier model for explanations")
    prompt = create_prompt(model, sae, tokens, latent_idx, k, buffer)
    out = []
    for _ in range(n_completions):
        if provider == "anthropic":
            url, headers = "https://api.anthropic.com/v1/messages", {"x-api-key": key, "anthropic-version": "2023-06-01"}
            body = {"model": api_model or "claude-sonnet-4-5", "max_tokens": 100, "system": prompt["system"],
                    "messages": [{"role": "user", "content": prompt["user"]},
                                 {"role": "assistant", "content": prompt["assistant"]}]}
        else:
            url, headers = "https://api.openai.com/v1/chat/completions", {"Authorization": f"Bearer {key}"}
            body = {"model": api_model or "gpt-4o-mini", "max_tokens": 100,
                    "messages": [{"role": "system", "content": prompt["system"]},
                                 {"role": "user", "content": prompt["user"]},
                                 {"role": "assistant", "content": prompt["assistant"]}]}
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                         headers={"content-type": "application/json"} | headers)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read())
        text = reply["content"][0]["text"] if provider == "anthropic" else reply["choices"][0]["message"]["content"]
        out.append(prompt["assistant"] + " " + text.strip())
    return out


# ---------------------------------------------------------------- a keyword baseline and the choice of latents


def keyword_rule(latent_acts: Float[Tensor, "batch pos"], str_toks: list[list[str]], n_top: int = 20) -> Rule:
    """The laziest explanation, written by code: "fires on these tokens", the distinct (stripped) token texts at the
    latent's n_top highest activations. A baseline for the written explanations."""
    flat = latent_acts.flatten()
    top = flat.topk(min(n_top, int((flat > 0).sum()))).indices
    seq_len = latent_acts.shape[1]
    words = sorted({str_toks[i // seq_len][i % seq_len].strip() for i in top.tolist()})
    return Rule(token="|".join(re.escape(w) for w in words), flags=0)


def choose_latents(frequency: Float[Tensor, " d_sae"], n: int, low: float, high: float, seed: int) -> list[int]:
    """n latents drawn at random (seeded) among those firing on a fraction in [low, high] of tokens: specific enough
    to be explained by a rule, common enough to be scored; chosen before looking at any of them."""
    candidates = torch.nonzero((frequency >= low) & (frequency <= high)).squeeze(-1)
    g = torch.Generator().manual_seed(seed)
    return sorted(candidates[torch.randperm(len(candidates), generator=g)[:n]].tolist())


def match_latents(sae, directions: Float[Tensor, "n d_model"]) -> tuple[list[int], list[float]]:
    """For each committed decoder direction, the latent of this SAE whose direction is closest (and the cosine): a
    latent is identified by what it writes, so explanations survive a retrained SAE whose latents moved."""
    W = sae.W_dec.detach()
    W = W / W.norm(dim=-1, keepdim=True)
    d = directions / directions.norm(dim=-1, keepdim=True)
    cos = d @ W.T
    best = cos.max(-1)
    return best.indices.tolist(), best.values.tolist()


# ---------------------------------------------------------------- the explanations (written from the headline SAE)

# The data: the SAE's own training windows (day 47) to look at; held-out windows nobody looked at to score on.
HELDOUT_PARTS = [("wikitext-test", 96, 128), ("shakespeare", 96, 600)]   # after day 47's eval windows and training windows
CHOICE = dict(n=12, low=2e-3, high=3e-2, seed=0)
ABLATION_SEQS = 8
AUROC_BAR = 0.8                     # the headline: the median written explanation predicts its latent this well
# Steering along the "know" latent, by multiples of its largest activation on the training windows (in model units).
STEERING = dict(latent=667, prompts=["The weather today is", "My favourite thing to do is", "In the year 1900,"],
                times_max=[1.0, 2.0, 4.0], max_new_tokens=20)

# Written after reading each latent's 14 max-activating examples, six examples at its median activation and its
# top logits on the training windows (seeded choice: CHOICE), before any held-out text was scored.
_UNITS = (r"(?:miles?|mi|km|kilomet(?:re|er)s?|acres?|hectares?|ha|kilograms?|kg|lb|pounds?|feet|foot|ft|metres?|"
          r"meters?|m|inches|in|mph|km2|sq ?mi|tons?|tonnes?|°\s*[FC]|[FC])")
EXPLANATIONS: dict[int, Explanation] = {e.latent: e for e in [
    Explanation(8, "the opening parenthesis of a unit conversion, right after a measurement: '23 miles (37 km)'",
                Rule(token=r"\(", before=r"\d[\d,.]*(?:\s|-)*" + _UNITS + r"\s*$")),
    Explanation(262, "landscape words (jungle, forest, desert, arid, dry) and the word 'peace'",
                AnyOf((Rule(token=r"jungles?|forests?|deserts?|arid|dry|peace|woods|wilderness|swamps?"),
                       Rule(token="ert", before=r"des$")))),
    Explanation(411, "'need', 'matter' and 'charge' as nouns or verbs of obligation, and 'of' in 'as of'",
                AnyOf((Rule(token=r"need(?:s|ed)?|matter|charged?"), Rule(token="of", before=r"\bas$")))),
    Explanation(517, "the word 'true', above all in 'tis true'", Rule(token="true")),
    Explanation(667, "the verb 'know' (know, knows, knew)", Rule(token=r"know|knows|knew")),
    Explanation(673, "the 'unk' inside WikiText's placeholder for a rare word or name, '<unk>'",
                Rule(token="unk", before=r"<$")),
    Explanation(757, "the blank line that ends a speech in a play, before the next speaker's name",
                Rule(token="\n", before="\n$", keep_space=True)),
    Explanation(789, "the last token of the speaker tag 'LADY ANNE'", Rule(token="NE", before="AN$")),
    Explanation(799, "'due' and 'based' in 'due to' and 'based on'", Rule(token="due|based")),
    Explanation(1005, "a historical period: 'century', 'era', and the ordinal suffix of a century ('19th')",
                AnyOf((Rule(token=r"century|centuries|era|period"), Rule(token=r"th|st|nd|rd", before=r"\d$")))),
    Explanation(1111, "'County' after a place name (Lauderdale County, Mercer County)", Rule(token="county")),
    Explanation(1140, "'rather' (as in 'I had rather'), and the comma after a reply that starts with 'No'",
                AnyOf((Rule(token="rather"), Rule(token=",", before=r"No$")))),
]}


def explained_latents() -> list[Explanation]:
    return list(EXPLANATIONS.values())


@torch.no_grad()
def firing_frequency(sae, acts: Float[Tensor, "batch pos d"], batch_size: int = 32) -> Float[Tensor, " d_sae"]:
    """The fraction of (non-sink) tokens on which each latent fires."""
    fired, n = None, 0
    for start in range(0, acts.shape[0], batch_size):
        x = sae_train.non_sink(acts[start:start + batch_size])
        f = (sae.encode(x) > 0).sum(0).double()
        fired = f if fired is None else fired + f
        n += x.shape[0]
    return fired / n


def steering_marks(model, sae, rule: Rule | AnyOf, latent_idx: int, prompts: list[str], coefficients: dict[str, float],
                   max_new_tokens: int) -> dict:
    """Greedy continuations of the prompts without steering ("plain") and with steering along the latent at each
    named coefficient: the texts, and the fraction of generated tokens the latent's explanation marks (does steering
    make the model write what the latent reads?)."""
    out: dict = {"coefficients": coefficients, "texts": {}, "marked_fraction": {}}
    for key, c in [("plain", 0.0)] + list(coefficients.items()):
        marks, texts = [], []
        for prompt in prompts:
            n_prompt = model.to_tokens(prompt, prepend_bos=False).shape[1]
            text = generate_with_steering(model, sae, prompt, latent_idx, c, max_new_tokens, do_sample=False,
                                          prepend_bos=False, stop_at_eos=False)
            toks = model.to_str_tokens(text, prepend_bos=False)
            marks += [rule(toks, p) for p in range(n_prompt, len(toks))]
            texts.append(text)
        out["texts"][key] = texts
        out["marked_fraction"][key] = float(np.mean(marks))
    return out


def run_experiment(out_dir: Path, model_name: str = "smollm2") -> dict:
    """The headline SAE of day 47 (layer 15, 1 152 latents, k = 32): for each explained latent its max-activating
    examples and histogram on the training windows, its top logits, its explanation scored by detection on
    held-out windows (against a keyword baseline and a mismatched explanation), the loss increase when it is
    ablated, and steering along it."""
    import matplotlib.pyplot as plt

    from checks.models import hooked_model
    from checks.timing import single_thread

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with single_thread():
        sae = sae_train.trained_sae(sae_train.LAYER, model_name)
        model = hooked_model(model_name)
        ex_tokens, ex_acts = sae_train.cached_activations(model_name, sae_train.TRAIN_PARTS)
        ho_tokens, ho_acts = sae_train.cached_activations(model_name, HELDOUT_PARTS)
        freq = firing_frequency(sae, ex_acts)
        chosen = choose_latents(freq, **CHOICE)
        latents = sorted(EXPLANATIONS)
        ex_lat = latent_activations(model, sae, ex_tokens, latents, acts=ex_acts)
        ho_lat = latent_activations(model, sae, ho_tokens, latents, acts=ho_acts)
        ex_str, ho_str = str_tokens(model.tokenizer, ex_tokens), str_tokens(model.tokenizer, ho_tokens)
        ho_mask = ~sae_train.sink_mask(ho_acts)
        per_latent = {}
        for j, latent in enumerate(latents):
            e = EXPLANATIONS[latent]
            other = EXPLANATIONS[latents[(j + 1) % len(latents)]]
            kw = keyword_rule(ex_lat[..., j], ex_str)
            t = time.perf_counter()
            effect = ablation_effect(model, sae, ho_tokens[:ABLATION_SEQS], latent)
            fired_next = ho_lat[:ABLATION_SEQS, :-1, j] > 0        # the prediction made at a token where it fires
            per_latent[latent] = {
                "frequency": freq[latent].item(),
                "explanation": e.text, "rule": rule_spec(e.rule),
                "top_examples": display_top_seqs(fetch_max_activating_examples(
                    model, sae, ex_tokens, latent, k=8, buffer=8, latent_acts=ex_lat[..., j])).splitlines(),
                "heldout_top_examples": display_top_seqs(fetch_max_activating_examples(
                    model, sae, ho_tokens, latent, k=5, buffer=8, latent_acts=ho_lat[..., j])).splitlines(),
                "top_logits": show_top_logits(model, sae, latent, k=8),
                "histogram": show_activation_histogram(ex_lat[..., j]),
                "detection": detection_scores(ho_lat[..., j], rule_labels(e.rule, ho_str), ho_mask),
                "explore_detection": detection_scores(ex_lat[..., j], rule_labels(e.rule, ex_str),
                                                      ~sae_train.sink_mask(ex_acts)),
                "keyword_rule": kw.token,
                "keyword_detection": detection_scores(ho_lat[..., j], rule_labels(kw, ho_str), ho_mask),
                "mismatched_detection": detection_scores(ho_lat[..., j], rule_labels(other.rule, ho_str), ho_mask),
                "ablation": {"mean_dloss_where_fires": effect[fired_next].mean().item() if fired_next.any() else 0.0,
                             "mean_dloss_elsewhere": effect[~fired_next].mean().item(),
                             "n_fires": int(fired_next.sum()), "seconds": time.perf_counter() - t},
            }
        steer_latent = STEERING["latent"]
        max_model_units = ex_lat[..., latents.index(steer_latent)].max().item() / sae.scale
        steering = steering_marks(model, sae, EXPLANATIONS[steer_latent].rule, steer_latent, STEERING["prompts"],
                                  {f"{f:g}x".replace(".", "_"): f * max_model_units for f in STEERING["times_max"]},
                                  STEERING["max_new_tokens"])
        steering |= {"latent": steer_latent, "max_activation_model_units": max_model_units,
                     "times_max": STEERING["times_max"]}

    aurocs = {kind: [per_latent[i][kind]["auroc"] for i in latents]
              for kind in ("detection", "keyword_detection", "mismatched_detection")}
    fig, ax = plt.subplots(figsize=(10, 4), constrained_layout=True)
    width = 0.27
    for n, (kind, label) in enumerate((("detection", "written explanation"), ("keyword_detection", "keyword baseline"),
                                       ("mismatched_detection", "another latent's explanation"))):
        ax.bar(np.arange(len(latents)) + (n - 1) * width, aurocs[kind], width=width, label=label)
    ax.axhline(0.5, color="grey", lw=1, ls=":")
    ax.set_xticks(range(len(latents)), [str(i) for i in latents])
    ax.set_xlabel("latent")
    ax.set_ylabel("AUROC on held-out tokens")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Does the explanation predict where the latent fires? (held-out WikiText-2 and Shakespeare)")
    fig.savefig(out_dir / "figures/detection.png", dpi=120)
    plt.close(fig)

    cols = 4
    rows = math.ceil(len(latents) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), constrained_layout=True)
    for ax, (j, latent) in zip(axes.flat, enumerate(latents)):
        show_activation_histogram(ex_lat[..., j], ax=ax, title=f"{latent}: {EXPLANATIONS[latent].text[:28]}")
        ax.title.set_fontsize(8)
    for ax in list(axes.flat)[len(latents):]:
        ax.axis("off")
    fig.savefig(out_dir / "figures/histograms.png", dpi=110)
    plt.close(fig)

    results = {
        "model": model_name, "hook": sae.hook_name, "sae_config": sae_train.asdict(sae_train.HEADLINE),
        "heldout_parts": HELDOUT_PARTS, "choice": CHOICE, "chosen": chosen, "latents": latents,
        "n_explore_tokens": int((~sae_train.sink_mask(ex_acts)).sum()), "n_heldout_tokens": int(ho_mask.sum()),
        "n_alive": int((freq > 0).sum()), "per_latent": per_latent,
        "median_auroc": float(np.median(aurocs["detection"])),
        "median_keyword_auroc": float(np.median(aurocs["keyword_detection"])),
        "median_mismatched_auroc": float(np.median(aurocs["mismatched_detection"])),
        "auroc_bar": AUROC_BAR, "n_auroc_at_bar": int(sum(a >= AUROC_BAR for a in aurocs["detection"])),
        "steering": steering,
        "wall_seconds": time.perf_counter() - wall0, "cpu_seconds": time.process_time() - cpu0,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
