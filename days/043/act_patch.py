"""Day 43: activation patching with nnsight (ARENA 1.3.2, Function Vectors: sections 1-2).

nnsight wraps a Hugging Face model and records what a ``with model.trace(...)`` block asks for: reading
``module.output`` inside the block returns the real tensor when the forward pass reaches that module,
``.save()`` keeps it after the block, and assigning to it (or editing it in place) changes what the rest of
the forward pass sees. Several ``tracer.invoke(prompt)`` blocks inside one trace are batched into a single
forward pass; a ``tracer.barrier(n)`` orders them, so that one invoke can read an activation (clean run) and
another can write it (corrupted run) in the same pass.

Activation patching. With a clean prompt x (correct in-context labels) and a corrupted prompt x' of the same
length (the labels shuffled), and a metric m on the final logits (the log-probability of the correct answer),
patching an activation a from x into x' measures

    Δm(a) = m(x' with a := a(x)) - m(x'),

how much of the clean behaviour the activation alone restores. Two families here:

- the residual stream after layer l at position p (ARENA's ``resid_pre`` of layer l+1, Hugging Face's
  ``hidden_states[l+1]``);
- one attention head's output at position p: head h of layer l writes z_h W_O[h] into the residual stream,
  where z_h is its slice (d_head wide) of the input to the attention's output projection (``o_proj`` in
  Llama, ``out_proj`` in GPT-J, ``c_proj`` in GPT-2), which TransformerLens calls ``hook_z``.

Every function takes the model by *name* (``checks.models.hf_model``): ``"smollm2"`` here, GPT-J (ARENA's
model) or any Llama/GPT-2 family Hub id for a user with internet.
"""

from __future__ import annotations

import functools
import json
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from checks.timing import single_thread

# ---------------------------------------------------------------- the model, wrapped by nnsight


@functools.lru_cache(maxsize=None)
def nnsight_model(name: str = "smollm2"):
    """nnsight's ``LanguageModel`` around the in-process Hugging Face model ``checks.models.hf_model(name)``
    (no Hub call: the model object is passed in; beartype must have been imported before nnsight)."""
    import beartype  # noqa: F401  (before nnsight: see RECIPES.md)
    from nnsight import LanguageModel

    from checks.models import hf_model

    hf, tok = hf_model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nnsight 0.8 deprecates wrapping an in-process model
        return LanguageModel(hf, tokenizer=tok)


@dataclass(frozen=True)
class Arch:
    """Where a model family keeps its blocks and its attention output projection (ARENA uses GPT-J)."""

    layers: str          # the list of decoder blocks, from the LanguageModel
    attn: str            # the attention module, from a block
    out_proj: str        # the output projection, from the attention module

    @staticmethod
    def of(lm) -> "Arch":
        kind = lm.config.model_type
        if kind in ("llama", "mistral", "qwen2", "gemma", "gemma2"):
            return Arch("model.layers", "self_attn", "o_proj")
        if kind == "gptj":
            return Arch("transformer.h", "attn", "out_proj")
        if kind == "gpt2":
            return Arch("transformer.h", "attn", "c_proj")
        raise ValueError(f"no module map for model_type {kind!r}")


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def layer(lm, l: int):
    """The l-th decoder block (an nnsight Envoy)."""
    return _get(lm, Arch.of(lm).layers)[l]


def out_proj(lm, l: int):
    """The attention output projection of block l: its input is the heads' outputs z, concatenated."""
    arch = Arch.of(lm)
    return getattr(getattr(layer(lm, l), arch.attn), arch.out_proj)


def resid(output) -> Tensor:
    """The hidden states in a block's output (a tensor in transformers 5's Llama, a tuple's first item elsewhere)."""
    return output[0] if isinstance(output, tuple) else output


def dims(lm) -> tuple[int, int, int]:
    """(n_layers, n_heads, d_head) from the Hugging Face config."""
    c = lm.config
    n_layers = getattr(c, "num_hidden_layers", None) or c.n_layer
    n_heads = getattr(c, "num_attention_heads", None) or c.n_head
    d_model = getattr(c, "hidden_size", None) or c.n_embd
    return n_layers, n_heads, getattr(c, "head_dim", None) or d_model // n_heads


def tokenize(lm, prompts: list[str]) -> Int[Tensor, "batch pos"]:
    """Token ids without special tokens; every prompt must have the same length (no padding: patching pairs
    positions of the clean and corrupted prompts one to one)."""
    ids = [lm.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if len({len(i) for i in ids}) != 1:
        raise ValueError(f"prompts tokenize to different lengths {sorted({len(i) for i in ids})}")
    return torch.tensor(ids)


# ---------------------------------------------------------------- in-context prompts (shared with days 44-45)

ANTONYM_CANDIDATES = """hot cold|big small|up down|in out|left right|old young|fast slow|high low|open closed|
long short|dark light|hard soft|rich poor|wet dry|happy sad|early late|full empty|thick thin|strong weak|
heavy light|good bad|first last|push pull|win lose|buy sell|give take|love hate|true false|clean dirty|
loud quiet|deep shallow|wide narrow|sharp dull|sweet sour|safe dangerous|cheap expensive|north south|east west|
above below|inside outside|before after|always never|all none|more less|max min|add remove|start end|begin end|
open shut|on off|yes no|black white|day night|war peace|friend enemy|alive dead|male female|man woman|boy girl|
king queen|top bottom|front back|near far|accept reject|arrive leave|asleep awake|ancient modern|best worst|
brave afraid|come go|cool warm|enter exit|found lost|forward backward|increase decrease|inner outer|major minor|
maximum minimum|odd even|over under|positive negative|question answer|raise lower|right wrong|rough smooth|
same different|send receive|simple complex|single married|sink float|stop go|tall short|tight loose|
visible invisible|wild tame|wise foolish|import export|input output|upper lower|plus minus|success failure|
rise fall|pass fail|attack defend|public private|internal external|common rare|legal illegal|possible impossible|
true fake|natural artificial|permanent temporary|present absent|dry wet|ugly beautiful|fat thin|lazy busy"""

CAPITAL_CANDIDATES = """France Paris|Germany Berlin|Italy Rome|Spain Madrid|Japan Tokyo|China Beijing|Russia Moscow|
Egypt Cairo|Greece Athens|Austria Vienna|Poland Warsaw|Ireland Dublin|Norway Oslo|Sweden Stockholm|
Finland Helsinki|Denmark Copenhagen|Portugal Lisbon|Hungary Budapest|Belgium Brussels|Netherlands Amsterdam|
Canada Ottawa|Mexico Mexico|Peru Lima|Chile Santiago|Argentina Buenos|Cuba Havana|Kenya Nairobi|India Delhi|
Thailand Bangkok|Vietnam Hanoi|Indonesia Jakarta|Iran Tehran|Iraq Baghdad|Syria Damascus|Lebanon Beirut|
Turkey Ankara|Australia Canberra|England London|Scotland Edinburgh|Wales Cardiff|Ukraine Kyiv|Israel Jerusalem|
Korea Seoul|Philippines Manila|Pakistan Islamabad|Afghanistan Kabul|Nigeria Abuja|Ghana Accra|Ethiopia Addis|
Morocco Rabat|Tunisia Tunis|Libya Tripoli|Qatar Doha|Switzerland Bern|Czech Prague|Romania Bucharest|
Bulgaria Sofia|Serbia Belgrade|Croatia Zagreb|Colombia Bogota|Venezuela Caracas|Brazil Brasilia|Nepal Kathmandu|
Cambodia Phnom|Mongolia Ulaanbaatar|Iceland Reykjavik|Jamaica Kingston|Malaysia Kuala|Singapore Singapore"""


def _parse(text: str) -> list[tuple[str, str]]:
    return [tuple(p.split()) for p in text.replace("\n", "").split("|") if p.strip()]


def single_token_pairs(tokenizer, candidates: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The candidate pairs whose two words are each one token when preceded by a space (as in ' cold'), with
    duplicates and pairs whose two words are equal dropped, in their original order."""
    def one(word: str) -> bool:
        return len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1

    seen, out = set(), []
    for x, y in candidates:
        if x != y and (x, y) not in seen and one(x) and one(y):
            seen.add((x, y))
            out.append((x, y))
    return out


def word_pairs(task: str, tokenizer, seed: int = 0) -> list[tuple[str, str]]:
    """The task's single-token pairs ('antonyms' or 'capitals'), in an order shuffled by ``seed``."""
    candidates = {"antonyms": ANTONYM_CANDIDATES, "capitals": CAPITAL_CANDIDATES}[task]
    pairs = single_token_pairs(tokenizer, _parse(candidates))
    random.Random(seed).shuffle(pairs)
    return pairs


class ICLSequence:
    """One in-context prompt: n pairs shown as 'Q: x\\nA: y' separated by blank lines; the last pair's answer
    is left out (ARENA's format). The completion is ' ' + that answer."""

    def __init__(self, word_pairs: list[tuple[str, str]]):
        self.word_pairs = [list(p) for p in word_pairs]
        self.x, self.y = zip(*self.word_pairs)

    def __len__(self) -> int:
        return len(self.word_pairs)

    def __getitem__(self, idx: int):
        return self.word_pairs[idx]

    def prompt(self) -> str:
        full = "\n\n".join(f"Q: {x}\nA: {y}" for x, y in self.word_pairs)
        return full[: -len(self.completion())]

    def completion(self) -> str:
        return " " + self.y[-1]


class ICLDataset:
    """ARENA's ICLDataset: ``size`` sequences, each of ``n_prepended`` demonstration pairs and one query pair,
    drawn without replacement from ``word_pairs`` by a seeded generator; ``bidirectional`` flips each pair with
    probability 1/2; ``corrupted`` replaces each demonstration's answer with a random word of the task (the
    query is untouched), which keeps every prompt's length when all words are single tokens.
    ``create_corrupted_dataset()`` gives the corrupted twin: same seed, so the same pairs and queries."""

    def __init__(self, word_pairs: list[tuple[str, str]], size: int, n_prepended: int, bidirectional: bool = False,
                 seed: int = 0, corrupted: bool = False):
        assert n_prepended + 1 <= len(word_pairs), "not enough pairs"
        self.word_pairs = [tuple(p) for p in word_pairs]
        self.word_list = sorted({w for p in self.word_pairs for w in p})
        self.size, self.n_prepended, self.bidirectional = size, n_prepended, bidirectional
        self.seed, self.corrupted = seed, corrupted
        rng = np.random.default_rng(seed)
        self.seqs: list[ICLSequence] = []
        for _ in range(size):
            chosen = rng.choice(len(self.word_pairs), n_prepended + 1, replace=False)
            orders = rng.choice([1, -1], n_prepended + 1) if bidirectional else np.ones(n_prepended + 1, int)
            pairs = [list(self.word_pairs[i][::o]) for i, o in zip(chosen, orders)]
            swaps = rng.choice(len(self.word_list), n_prepended)  # drawn either way: the twins stay aligned
            if corrupted:
                for i in range(n_prepended):
                    pairs[i][1] = self.word_list[swaps[i]]
            self.seqs.append(ICLSequence(pairs))
        self.prompts = [s.prompt() for s in self.seqs]
        self.completions = [s.completion() for s in self.seqs]

    def create_corrupted_dataset(self) -> "ICLDataset":
        return ICLDataset(self.word_pairs, self.size, self.n_prepended, self.bidirectional, self.seed, corrupted=True)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> ICLSequence:
        return self.seqs[idx]


def answer_ids(lm, dataset: ICLDataset) -> Int[Tensor, "batch"]:
    """The first token of each completion (a single token for our pairs)."""
    return torch.tensor([lm.tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in dataset.completions])


# ---------------------------------------------------------------- patching with nnsight


def correct_logprob(logits: Float[Tensor, "batch d_vocab"], answers: Int[Tensor, "batch"]) -> Float[Tensor, "batch"]:
    """The metric m: log-probability of the correct answer at the final position."""
    return logits.log_softmax(-1).gather(-1, answers[:, None])[:, 0]


@torch.no_grad()
def final_logits(lm, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch d_vocab"]:
    """The final position's logits, through nnsight (no intervention)."""
    with lm.trace(tokens):
        logits = lm.lm_head.output[:, -1].save()
    return logits


@torch.no_grad()
def patch_residual(lm, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"], answers: Int[Tensor, "batch"],
                   layers: list[int], positions: list[int], base: Tensor | None = None) -> Float[Tensor, "layer pos batch"]:
    """Δm for patching the residual stream after block l at position p from the clean into the corrupted
    prompts, for each (l, p): m(corrupted, patched) - m(corrupted). The clean residual streams of the chosen
    layers are saved in one trace; then per layer, one forward pass runs the corrupted prompts once per position
    (one invoke each, batched together), each copy with one position patched. ``base`` = m(corrupted), if known."""
    if base is None:
        base = correct_logprob(final_logits(lm, corrupted), answers)
    saved: dict[int, Tensor] = {}   # filled inside the trace (nnsight hands back only saved values, not new names)
    with lm.trace(clean):
        for l in layers:
            saved[l] = resid(layer(lm, l).output).save()
    out = torch.zeros(len(layers), len(positions), len(answers))
    for i, l in enumerate(layers):
        logits = []
        with lm.trace() as tracer:
            for p in positions:
                with tracer.invoke(corrupted):
                    resid(layer(lm, l).output)[:, p] = saved[l][:, p]
                    logits.append(lm.lm_head.output[:, -1].save())
        for j in range(len(positions)):
            out[i, j] = correct_logprob(logits[j], answers) - base
    return out


@torch.no_grad()
def patch_heads(lm, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"], answers: Int[Tensor, "batch"],
                layers: list[int], position: int = -1, heads: list[int] | None = None,
                base: Tensor | None = None) -> Float[Tensor, "layer head batch"]:
    """Δm for patching each head's output z_h (its slice of the output projection's input) at ``position`` from
    the clean into the corrupted prompts, one head at a time. The clean z of the chosen layers is saved in one
    trace; then per layer, one forward pass runs the corrupted prompts n_heads times over (one invoke per head),
    each copy with one head patched. ``heads`` restricts the heads (default: all); ``base`` = m(corrupted)."""
    _, n_heads, d_head = dims(lm)
    heads = list(range(n_heads)) if heads is None else heads
    if base is None:
        base = correct_logprob(final_logits(lm, corrupted), answers)
    z_clean: dict[int, Tensor] = {}
    with lm.trace(clean):
        for l in layers:
            z_clean[l] = out_proj(lm, l).input[:, position].save()
    out = torch.zeros(len(layers), len(heads), len(answers))
    for i, l in enumerate(layers):
        logits = []
        with lm.trace() as tracer:
            for h in heads:
                with tracer.invoke(corrupted):
                    sl = slice(h * d_head, (h + 1) * d_head)
                    out_proj(lm, l).input[:, position, sl] = z_clean[l][:, sl]
                    logits.append(lm.lm_head.output[:, -1].save())
        for j in range(len(heads)):
            out[i, j] = correct_logprob(logits[j], answers) - base
    return out


@torch.no_grad()
def patch_everything(lm, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"], l: int) -> Float[Tensor, "batch d_vocab"]:
    """The corrupted run with block l's whole output (every position) replaced by the clean one: from there on it
    *is* the clean run, so its logits must be the clean logits."""
    with lm.trace() as tracer:
        barrier = tracer.barrier(2)
        with tracer.invoke(clean):
            source = resid(layer(lm, l).output).clone()
            barrier()
        with tracer.invoke(corrupted):
            barrier()
            resid(layer(lm, l).output)[:] = source
            logits = lm.lm_head.output[:, -1].save()
    return logits


# ---------------------------------------------------------------- the same patching in TransformerLens


@torch.no_grad()
def tl_patch_residual(model, clean, corrupted, answers, layers: list[int], positions: list[int],
                      clean_cache=None, base: Tensor | None = None) -> Tensor:
    """The reference: ``transformer_lens.patching.generic_activation_patch`` on ``resid_pre`` of layer l+1
    (= the output of block l) at the requested (layer, position) pairs, with the same metric relative to the
    corrupted run. Returns [layer, pos, batch]. ``clean_cache`` and ``base`` may be passed in if known."""
    import pandas as pd
    from transformer_lens import patching

    clean_cache = clean_cache if clean_cache is not None else model.run_with_cache(clean)[1]
    base = base if base is not None else correct_logprob(model(corrupted)[:, -1], answers)
    out = torch.zeros(len(layers), len(positions), len(answers))

    def metric(logits):  # generic_activation_patch wants a scalar: return the per-prompt vector through a side list
        per_prompt.append(correct_logprob(logits[:, -1], answers) - base)
        return torch.tensor(0.0)

    for i, l in enumerate(layers):
        per_prompt: list[Tensor] = []
        index = pd.DataFrame({"layer": [l + 1] * len(positions), "pos": positions})
        patching.generic_activation_patch(model, corrupted, clean_cache, metric, patching.layer_pos_patch_setter,
                                          "resid_pre", index_df=index)
        out[i] = torch.stack(per_prompt)
    return out


@torch.no_grad()
def tl_patch_heads(model, clean, corrupted, answers, layers: list[int], position: int = -1,
                   heads: list[int] | None = None, clean_cache=None, base: Tensor | None = None) -> Tensor:
    """The reference for head patching: ``generic_activation_patch`` on ``hook_z`` with TransformerLens's
    ``layer_pos_head_vector_patch_setter`` (head h of layer l at one position), [layer, head, batch]."""
    import pandas as pd
    from transformer_lens import patching

    clean_cache = clean_cache if clean_cache is not None else model.run_with_cache(clean)[1]
    base = base if base is not None else correct_logprob(model(corrupted)[:, -1], answers)
    pos = position % clean.shape[1]
    heads = list(range(model.cfg.n_heads)) if heads is None else heads
    out = torch.zeros(len(layers), len(heads), len(answers))
    for i, l in enumerate(layers):
        per_prompt: list[Tensor] = []

        def metric(logits):
            per_prompt.append(correct_logprob(logits[:, -1], answers) - base)
            return torch.tensor(0.0)

        index = pd.DataFrame({"layer": [l] * len(heads), "pos": [pos] * len(heads), "head": heads})
        patching.generic_activation_patch(model, corrupted, clean_cache, metric,
                                          patching.layer_pos_head_vector_patch_setter, "z", index_df=index)
        out[i] = torch.stack(per_prompt)
    return out


# ---------------------------------------------------------------- the experiment


def residual_summary(resid_delta: list[list[float]], gap: float, layers: list[int]) -> dict:
    """What the post reads off the residual grid (rows = layers, last column = the final position): the first
    layer whose final-position patch restores a tenth, half and nine tenths of the gap, and the largest |Δm|
    anywhere in the layers before the first of these."""
    final = [row[-1] for row in resid_delta]

    def first(fraction):
        return int(next((l for l, d in zip(layers, final) if d > fraction * gap), -1))

    tenth = first(0.1)
    before = [abs(d) for l, row in zip(layers, resid_delta) if l < tenth for d in row]
    return {"final_position_first_layer_restoring_tenth": tenth,
            "final_position_first_layer_restoring_half": first(0.5),
            "final_position_first_layer_restoring_90pct": first(0.9),
            "max_abs_delta_before_tenth": max(before, default=0.0)}

EXPERIMENT = dict(task="antonyms", size=6, n_prepended=4, seed=1)
FIG_POSITIONS = 5  # the residual grid: the last 5 positions, ": x\nA:" (the query and what follows it)


def datasets(lm, task: str, size: int, n_prepended: int, seed: int):
    """(clean dataset, corrupted twin, clean tokens, corrupted tokens, answers)."""
    pairs = word_pairs(task, lm.tokenizer)
    clean = ICLDataset(pairs, size, n_prepended, seed=seed)
    corrupted = clean.create_corrupted_dataset()
    return clean, corrupted, tokenize(lm, clean.prompts), tokenize(lm, corrupted.prompts), answer_ids(lm, clean)


@single_thread()
def run_experiment(out_dir: Path, name: str = "smollm2", config: dict | None = None, layers: list[int] | None = None) -> dict:
    """Residual patching over every layer and the last positions, and per-head patching at the final position,
    from clean antonym ICL prompts into their shuffled-label twins."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    lm = nnsight_model(name)
    config = config or EXPERIMENT
    n_layers, n_heads, _ = dims(lm)
    layers = list(range(n_layers)) if layers is None else layers   # fewer only for a dry run
    _, _, clean, corrupted, answers = datasets(lm, **config)
    logits_clean, logits_corr = final_logits(lm, clean), final_logits(lm, corrupted)
    m_clean, m_corr = correct_logprob(logits_clean, answers), correct_logprob(logits_corr, answers)
    seq = clean.shape[1]
    positions = list(range(seq - FIG_POSITIONS, seq))
    res = patch_residual(lm, clean, corrupted, answers, layers, positions)   # [l, p, b]
    heads = patch_heads(lm, clean, corrupted, answers, layers)               # [l, h, b]
    res_mean, heads_mean = res.mean(-1), heads.mean(-1)
    gap = (m_clean - m_corr).mean().item()

    labels = [repr(lm.tokenizer.decode([int(t)])) for t in clean[0, positions]]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), constrained_layout=True, gridspec_kw=dict(width_ratios=[1.3, 1]))
    lim = max(abs(res_mean.min().item()), abs(res_mean.max().item()))
    im = axes[0].imshow(res_mean.numpy(), aspect="auto", cmap="RdBu", vmin=-lim, vmax=lim, origin="lower")
    axes[0].set_xticks(range(len(positions)), labels, rotation=60, fontsize=8)
    axes[0].set_ylabel("layer (residual stream after this block)")
    axes[0].set_title("Residual patching: Δ log p(correct), clean → corrupted")
    fig.colorbar(im, ax=axes[0])
    lim = max(abs(heads_mean.min().item()), abs(heads_mean.max().item()))
    im = axes[1].imshow(heads_mean.numpy(), aspect="auto", cmap="RdBu", vmin=-lim, vmax=lim, origin="lower")
    axes[1].set_xlabel("head")
    axes[1].set_ylabel("layer")
    axes[1].set_title("Head patching at the final position")
    fig.colorbar(im, ax=axes[1])
    fig.savefig(out_dir / "figures/patching.png", dpi=120)
    plt.close(fig)

    order = heads_mean.flatten().argsort(descending=True)
    top_heads = [{"layer": layers[int(i) // n_heads], "head": int(i) % n_heads, "delta": float(heads_mean.flatten()[i])}
                 for i in order[:10]]
    results = {
        "model": name, "experiment": config, "layers": layers, "n_tokens": seq,
        "example_prompt": lm.tokenizer.decode(clean[0]), "example_corrupted": lm.tokenizer.decode(corrupted[0]),
        "example_answer": lm.tokenizer.decode([int(answers[0])]),
        "logprob_clean": m_clean.tolist(), "logprob_corrupted": m_corr.tolist(),
        "mean_logprob_clean": m_clean.mean().item(), "mean_logprob_corrupted": m_corr.mean().item(),
        "accuracy_clean": float((logits_clean.argmax(-1) == answers).float().mean()),
        "accuracy_corrupted": float((logits_corr.argmax(-1) == answers).float().mean()),
        "max_abs_logit": max(logits_clean.abs().max().item(), logits_corr.abs().max().item()),
        "gap": gap, "positions": positions, "position_labels": labels,
        "resid_delta": res_mean.tolist(), "heads_delta": heads_mean.tolist(),
        **residual_summary(res_mean.tolist(), gap, layers),
        "top_heads": top_heads,
        "top10_heads_share_of_gap": float(heads_mean.flatten()[order[:10]].sum() / gap),
        "wall_seconds": time.perf_counter() - wall0, "cpu_seconds": time.process_time() - cpu0,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
