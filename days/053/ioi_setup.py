"""Day 53: the indirect object identification task: data, metrics, direct logit attribution (ARENA 1.4.1, §1).

"When Mary and John went to the store, John gave a drink to" → " Mary". The sentence names two people; the
second clause repeats one of them (the subject S) and the answer is the other (the indirect object IO). A
model does the task if its logit difference

    LD = logit(IO) − logit(S)                    at the final position ("to")

is positive. Two orders of the first clause: ABBA (IO first: "A and B …, B gave … to A") and BABA (S first).

Corrupted prompts. The ABC dataset ("ABB->XYZ, BAB->XYZ") puts three fresh names in the three name slots of the
same sentence, so the information "which name is repeated" is gone while every other token stays; the clean
answers' logit difference there is the baseline a patched run is measured against. The normalised metric

    ioi_metric = (LD_patched − LD_corrupted) / (LD_clean − LD_corrupted)

is 0 on the corrupted run and 1 on the clean one (ARENA §2); ``ioi_metric_2`` = (LD − LD_clean)/(LD_clean −
LD_corrupted) is 0 on the clean run and −1 on the corrupted one (ARENA §3, path patching).

Direct logit attribution. With the final norm's scale s frozen at its value on the input (``ln_final.hook_scale``
at the final position) the logit difference is linear in the residual stream's components,

    LD = Σ_c center(c) · (W_U[:, IO] − W_U[:, S]) / s  +  b_U[IO] − b_U[S],

center = x − mean(x) for LayerNorm (GPT-2) and the identity for RMSNorm (SmolLM2), which is what TransformerLens's
``cache.apply_ln_to_stack(stack, layer=-1)`` computes. The components: the token embedding (+ the positional
embedding: GPT-2 only; SmolLM2 rotates queries and keys instead, so nothing positional is ever added to its
stream), each layer's attention output (= Σ_heads z_h W_O[h] + b_O) and MLP output. Day 39 derived this and its
helpers are reused here (``logit_direction``, ``center``, ``dla_decomposition``).

Prompts of one batch have different lengths (15 templates): they are right-padded and every quantity is read at
each prompt's own final position ``word_idx["end"]``; a causal model never lets a padding token reach an earlier
position. Every function takes a TransformerLens model: ``checks.models.hooked_model(name)`` gives SmolLM2,
the GPT-2-shaped random model, or (with internet) GPT-2 small itself.
"""

from __future__ import annotations

import importlib
import json
import math
import random
import re
import time
from pathlib import Path
from typing import Callable

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from checks.timing import single_thread

neurons = importlib.import_module("days.039.neurons")          # DLA through a frozen final-norm scale
logit_lens = importlib.import_module("days.036.logit_lens")    # center() for LayerNorm vs RMSNorm
probes = importlib.import_module("days.040.probes_theory")     # wilson_interval
act_name = neurons.act_name

# ---------------------------------------------------------------- the data (ARENA's ioi_dataset templates)

NAMES = """Aaron Adam Alan Alex Alice Amy Anderson Andre Andrew Andy Anna Anthony Arthur Austin Blake Brandon Brian
Carter Charles Charlie Christian Christopher Clark Cole Collins Connor Crew Crystal Daniel David Dean Edward Elizabeth
Emily Eric Eva Ford Frank George Georgia Graham Grant Henry Ian Jack Jacob Jake James Jamie Jane Jason Jay Jennifer
Jeremy Jessica John Jonathan Jordan Joseph Joshua Justin Kate Kelly Kevin Kyle Laura Leon Lewis Lisa Louis Luke
Madison Marco Marcus Maria Mark Martin Mary Matthew Max Michael Michelle Morgan Patrick Paul Peter Prince Rachel
Richard River Robert Roman Rose Ruby Russell Ryan Sarah Scott Sean Simon Stephen Steven Sullivan Taylor Theresa
Thomas Tyler Victoria Warren William""".split()
PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station"]
OBJECTS = ["ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack"]

BABA_TEMPLATES = [
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. Then, [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
]
# ABBA: the first clause names the IO first ("[A] and [B]"); everything else is the same sentence.
ABBA_TEMPLATES = [t.replace("[B] and [A]", "[A] and [B]", 1) for t in BABA_TEMPLATES]
SLOT = re.compile(r"\[(A|B)\]")
ABC = "ABB->XYZ, BAB->XYZ"   # ARENA's corruption: three fresh names in the three name slots


def single_token_names(tokenizer, names: list[str] = NAMES) -> list[str]:
    """The names that are one token with their leading space (' Mary'), in their original order: a name is
    always preceded by a space in the templates, and the logit difference compares single tokens."""
    return [n for n in names if len(tokenizer(" " + n, add_special_tokens=False)["input_ids"]) == 1]


def prompt_template(template: str) -> str:
    """The template without its answer: everything before the final ' [A]'."""
    assert template.endswith(" [A]")
    return template[: -len(" [A]")]


def slot_pattern(template: str) -> str:
    """The letters of the name slots of a prompt template, in order: 'ABB' (ABBA) or 'BAB' (BABA)."""
    return "".join(SLOT.findall(prompt_template(template)))


def render(template: str, names: tuple[str, ...], place: str, obj: str) -> str:
    """The prompt text: the template's name slots filled, in order, with ``names``; [PLACE] and [OBJECT]
    everywhere they occur; the final ' [A]' (the answer) left out."""
    slots = iter(names)
    text = SLOT.sub(lambda _: next(slots), prompt_template(template))
    return text.replace("[PLACE]", place).replace("[OBJECT]", obj)


def gen_prompts(names: list[str], N: int, prompt_type: str = "mixed", seed: int = 0,
                templates: list[int] | None = None) -> list[dict]:
    """N prompt records drawn by ``random.Random(seed)``: a template uniformly from the type's 15 (or from those
    numbered in ``templates``; ``mixed`` alternates ABBA, BABA, ABBA, …, so the halves are equal), two distinct
    names for IO and S, a place, an object. Each record: template, pattern ('ABB'/'BAB'), IO, S, names (the three
    slots' names), PLACE, OBJECT."""
    rng = random.Random(seed)
    out = []
    for i in range(N):
        kind = {"ABBA": "ABBA", "BABA": "BABA", "mixed": ("ABBA", "BABA")[i % 2]}[prompt_type]
        pool = ABBA_TEMPLATES if kind == "ABBA" else BABA_TEMPLATES
        template = rng.choice(pool if templates is None else [pool[t] for t in templates])
        io, s = rng.sample(names, 2)
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        pattern = slot_pattern(template)
        out.append(dict(template=template, pattern=pattern, IO=io, S=s, PLACE=place, OBJECT=obj,
                        names=tuple({"A": io, "B": s}[c] for c in pattern)))
    return out


def parse_flip(flip: str) -> dict[str, str]:
    """'ABB->XYZ, BAB->XYZ' → {'ABB': 'XYZ', 'BAB': 'XYZ'}: for each source slot pattern, the target letters."""
    pairs = [part.split("->") for part in flip.replace(" ", "").split(",")]
    return {src: dst for src, dst in pairs}


class IOIDataset:
    """ARENA's IOIDataset, for any tokenizer: N seeded prompts from the 15 templates with single-token names.

    - ``prompts``: the records (``gen_prompts``); ``sentences``: their texts (without the answer);
    - ``toks`` [N, max_len]: token ids, right-padded; ``word_idx``: positions of 'IO', 'S1', 'S2' (the name slots
      of the clean pattern) and 'end' (the last real token, where the answer is predicted);
    - ``io_tokenIDs``, ``s_tokenIDs``, ``answer_tokens`` [N, 2] = (IO, S): what the logit difference compares.

    ``templates`` restricts the templates (indices into the 15): with one template every prompt has the same
    length and the same token at each position, which position-by-position patching needs.

    A flipped dataset (``gen_flipped_prompts``) keeps the clean prompts' IO and S as its answers and its
    word_idx: it is the same sentences with other names in the slots, read against the clean answers.
    """

    def __init__(self, prompt_type: str = "mixed", N: int = 64, tokenizer=None, prompts: list[dict] | None = None,
                 seed: int = 0, prepend_bos: bool = False, names: list[str] | None = None,
                 templates: list[int] | None = None):
        self.tokenizer, self.prompt_type, self.seed, self.prepend_bos = tokenizer, prompt_type, seed, prepend_bos
        self.names = names if names is not None else single_token_names(tokenizer)
        self.prompts = prompts if prompts is not None else gen_prompts(self.names, N, prompt_type, seed, templates)
        self.N = len(self.prompts)
        self.sentences = [render(p["template"], p["names"], p["PLACE"], p["OBJECT"]) for p in self.prompts]
        rows, idx = [], {"IO": [], "S1": [], "S2": [], "end": []}
        for p, text in zip(self.prompts, self.sentences):
            ids, slots = self._tokenize(p, text)
            first_b = p["pattern"].index("B")
            idx["IO"].append(slots[p["pattern"].index("A")])
            idx["S1"].append(slots[first_b])
            idx["S2"].append(slots[p["pattern"].index("B", first_b + 1)])
            idx["end"].append(len(ids) - 1)
            rows.append(ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = max(map(len, rows))
        self.toks: Int[Tensor, "N pos"] = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        self.word_idx = {k: torch.tensor(v) for k, v in idx.items()}
        one = lambda name: tokenizer(" " + name, add_special_tokens=False)["input_ids"][0]  # noqa: E731
        self.io_tokenIDs = torch.tensor([one(p["IO"]) for p in self.prompts])
        self.s_tokenIDs = torch.tensor([one(p["S"]) for p in self.prompts])
        self.answer_tokens: Int[Tensor, "N 2"] = torch.stack([self.io_tokenIDs, self.s_tokenIDs], 1)

    def _tokenize(self, prompt: dict, text: str) -> tuple[list[int], list[int]]:
        """Token ids of one prompt and the positions of its three name slots: each slot's position is the length
        of the tokenized text up to and including that name, minus one (names are whole words followed by a space
        or punctuation, so the prefix's tokens are the full text's first tokens: checked)."""
        tok = self.tokenizer
        bos = [tok.bos_token_id] if self.prepend_bos else []
        ids = bos + tok(text, add_special_tokens=False)["input_ids"]
        slots, pieces = [], SLOT.split(prompt_template(prompt["template"]))
        prefix = ""
        for i, name in enumerate(prompt["names"]):
            prefix += pieces[2 * i] + name
            prefix = prefix.replace("[PLACE]", prompt["PLACE"]).replace("[OBJECT]", prompt["OBJECT"])
            n = len(bos) + len(tok(prefix, add_special_tokens=False)["input_ids"])
            name_id = tok(" " + name, add_special_tokens=False)["input_ids"]
            if len(name_id) != 1 or ids[n - 1] != name_id[0]:
                raise ValueError(f"name {name!r} is not a single token at its place in {text!r}")
            slots.append(n - 1)
        return ids, slots

    def __len__(self) -> int:
        return self.N

    def __getitem__(self, key: slice | list[int]) -> "IOIDataset":
        """A sub-dataset (same tokenizer and records; padded to its own longest prompt)."""
        chosen = self.prompts[key] if isinstance(key, slice) else [self.prompts[i] for i in key]
        return IOIDataset(self.prompt_type, tokenizer=self.tokenizer, prompts=chosen, seed=self.seed,
                          prepend_bos=self.prepend_bos, names=self.names)

    def gen_flipped_prompts(self, flip: str = ABC, seed: int | None = None) -> "IOIDataset":
        """The same sentences with the name slots rewritten by ``flip`` ('ABB->XYZ, BAB->XYZ'): a letter of the
        source pattern keeps its name (A the IO, B the subject); every other letter gets a fresh name, drawn by
        ``random.Random(seed)``, distinct from the prompt's IO and S and from the other fresh letters. The
        template, place and object stay, so with single-token names every prompt keeps its length."""
        rng = random.Random(self.seed + 1 if seed is None else seed)
        rules = parse_flip(flip)
        out = []
        for p in self.prompts:
            target = rules[p["pattern"]]
            known = {"A": p["IO"], "B": p["S"]}
            fresh = [c for c in dict.fromkeys(target) if c not in known]
            pool = [n for n in self.names if n not in (p["IO"], p["S"])]
            known.update(zip(fresh, rng.sample(pool, len(fresh))))
            out.append({**p, "names": tuple(known[c] for c in target), "flip": flip})
        return IOIDataset(self.prompt_type, tokenizer=self.tokenizer, prompts=out, seed=self.seed,
                          prepend_bos=self.prepend_bos, names=self.names)


# ---------------------------------------------------------------- metrics


def final_logits(logits: Float[Tensor, "batch pos d_vocab"], end: Int[Tensor, "batch"] | None = None
                 ) -> Float[Tensor, "batch d_vocab"]:
    """The logits at each prompt's final position (``end``; the last position when None)."""
    if end is None:
        return logits[:, -1]
    return logits[torch.arange(len(logits)), end]


def logits_to_ave_logit_diff(logits: Float[Tensor, "batch pos d_vocab"], answer_tokens: Int[Tensor, "batch 2"],
                             per_prompt: bool = False, end: Int[Tensor, "batch"] | None = None
                             ) -> Float[Tensor, "*batch"]:
    """LD = logit(IO) − logit(S) at the final position (each prompt's ``end``, else the last), per prompt or
    averaged over the batch (ARENA's signature, plus ``end`` for right-padded batches)."""
    final = final_logits(logits, end)
    diff = final.gather(-1, answer_tokens[:, :1])[:, 0] - final.gather(-1, answer_tokens[:, 1:2])[:, 0]
    return diff if per_prompt else diff.mean()


def logits_to_ave_logit_diff_2(logits: Float[Tensor, "batch pos d_vocab"], ioi_dataset: IOIDataset,
                               per_prompt: bool = False) -> Float[Tensor, "*batch"]:
    """ARENA §3's version: the dataset carries the answers and the final positions."""
    return logits_to_ave_logit_diff(logits, ioi_dataset.answer_tokens, per_prompt, ioi_dataset.word_idx["end"])


def ioi_metric(logits: Float[Tensor, "batch pos d_vocab"], answer_tokens: Int[Tensor, "batch 2"],
               corrupted_logit_diff: float, clean_logit_diff: float, end: Int[Tensor, "batch"] | None = None
               ) -> Float[Tensor, ""]:
    """(LD − LD_corrupted) / (LD_clean − LD_corrupted): 0 = the corrupted run's performance, 1 = the clean's."""
    ld = logits_to_ave_logit_diff(logits, answer_tokens, end=end)
    return (ld - corrupted_logit_diff) / (clean_logit_diff - corrupted_logit_diff)


def ioi_metric_2(logits: Float[Tensor, "batch pos d_vocab"], clean_logit_diff: float, corrupted_logit_diff: float,
                 ioi_dataset: IOIDataset) -> Float[Tensor, ""]:
    """(LD − LD_clean) / (LD_clean − LD_corrupted): 0 = unchanged from the clean run, −1 = fully corrupted
    (ARENA's metric for path patching, where corrupted activations go into the clean run)."""
    ld = logits_to_ave_logit_diff_2(logits, ioi_dataset)
    return (ld - clean_logit_diff) / (clean_logit_diff - corrupted_logit_diff)


# ---------------------------------------------------------------- running at the final positions


class EndCache(dict):
    """Activations read at each prompt's final position only, as tensors with a position axis of length 1
    ([batch, 1, ...]; attention patterns [batch, head, 1, key_pos]): functions written for an ActivationCache
    at position -1 work unchanged. ``model`` is the model they came from (as ActivationCache.model)."""

    def __init__(self, model, data: dict[str, Tensor]):
        super().__init__(data)
        self.model = model


DLA_HOOKS = ("hook_embed", "hook_pos_embed", "ln_final.hook_scale")
DLA_LAYER_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "post", "pattern")


def dla_names(model) -> list[str]:
    """The hook names direct logit attribution and the attention analysis read (every layer)."""
    names = [n for n in DLA_HOOKS if n in model.hook_dict]
    return names + [act_name(kind, l) for l in range(model.cfg.n_layers) for kind in DLA_LAYER_HOOKS]


def _at_end(activation: Tensor, end: Int[Tensor, "batch"], name: str) -> Tensor:
    rows = torch.arange(len(end))
    if name.endswith("hook_pattern") or name.endswith("hook_attn_scores"):
        return activation[rows, :, end].unsqueeze(2)          # [b, head, 1, key_pos]
    return activation[rows, end].unsqueeze(1)                 # [b, 1, ...]


@torch.no_grad()
def run_at_end(model, toks: Int[Tensor, "N pos"], end: Int[Tensor, "N"], names: list[str] | Callable = (),
               batch_size: int = 32, fwd_hooks: list = ()) -> tuple[Float[Tensor, "N d_vocab"], EndCache]:
    """The final-position logits and an EndCache of the named activations, in batches (only the final row of each
    activation is kept, so a full run over hundreds of prompts fits in memory). ``fwd_hooks`` are added to every
    forward pass (an intervention)."""
    wanted = names if callable(names) else set(names).__contains__
    store: dict[str, list[Tensor]] = {}
    logits = []
    for start in range(0, len(toks), batch_size):
        e = end[start:start + batch_size]

        def keep(activation: Tensor, hook, e=e) -> None:
            store.setdefault(hook.name, []).append(_at_end(activation, e, hook.name))

        out = model.run_with_hooks(toks[start:start + batch_size], fwd_hooks=[(wanted, keep), *fwd_hooks])
        logits.append(final_logits(out, e))
    return torch.cat(logits), EndCache(model, {k: torch.cat(v) for k, v in store.items()})


# ---------------------------------------------------------------- direct logit attribution (ARENA §1)

logit_diff_directions = neurons.logit_direction   # W_U[:, IO] − W_U[:, S], one row per prompt (day 39)


def residual_stack_to_logit_diff(residual_stack: Float[Tensor, "... batch d_model"], cache,
                                 logit_diff_directions: Float[Tensor, "batch d_model"], per_prompt: bool = False
                                 ) -> Float[Tensor, "... *batch"]:
    """Each stacked component's direct contribution to LD: center(c) · d / s with s the final norm's scale at the
    final position, frozen (``cache["ln_final.hook_scale"][:, -1]``; what ``cache.apply_ln_to_stack(stack,
    layer=-1, pos_slice=-1)`` divides by), averaged over the batch unless ``per_prompt``."""
    scale = cache["ln_final.hook_scale"][:, -1]                                     # [batch, 1]
    scaled = logit_lens.center(cache.model, residual_stack) / scale
    out = einops.einsum(scaled, logit_diff_directions, "... batch d, batch d -> ... batch")
    return out if per_prompt else out.mean(-1)


def accumulated_resid(cache, n_layers: int, incl_mid: bool = True) -> tuple[Float[Tensor, "component batch d_model"], list[str]]:
    """The residual stream at the final position after each half-block: resid_pre 0, (resid_mid 0,) resid_pre 1,
    …, resid_post of the last block (TransformerLens's ``accumulated_resid(layer=-1, incl_mid, pos_slice=-1)``)."""
    parts, labels = [], []
    for l in range(n_layers):
        parts.append(cache[act_name("resid_pre", l)][:, -1])
        labels.append(f"{l}_pre")
        if incl_mid:
            parts.append(cache[act_name("resid_mid", l)][:, -1])
            labels.append(f"{l}_mid")
    parts.append(cache[act_name("resid_post", n_layers - 1)][:, -1])
    labels.append("final_post")
    return torch.stack(parts), labels


def decompose_resid(cache, n_layers: int) -> tuple[Float[Tensor, "component batch d_model"], list[str]]:
    """The final residual stream at the final position split into what wrote it: the token embedding, the
    positional embedding (if the model adds one; rotary models do not), and each layer's attention and MLP output
    (TransformerLens's ``decompose_resid(layer=-1, pos_slice=-1)``). The parts sum to resid_post exactly up to
    float rounding."""
    parts, labels = [cache["hook_embed"][:, -1]], ["embed"]
    if "hook_pos_embed" in cache:
        parts.append(cache["hook_pos_embed"][:, -1])
        labels.append("pos_embed")
    for l in range(n_layers):
        parts += [cache[act_name("attn_out", l)][:, -1], cache[act_name("mlp_out", l)][:, -1]]
        labels += [f"{l}_attn_out", f"{l}_mlp_out"]
    return torch.stack(parts), labels


def stack_head_results(model, cache) -> tuple[Float[Tensor, "layer_head batch d_model"], list[str]]:
    """Each head's output z_h W_O[h] at the final position, stacked layer-major (L0H0, L0H1, …), without b_O
    (TransformerLens's ``stack_head_results(layer=-1, pos_slice=-1)``). On SmolLM2, 9 query heads per layer
    share 3 key/value heads, but every query head has its own z and its own rows of W_O: per-head output
    attribution is the same as in GPT-2."""
    out = [einops.einsum(cache[act_name("z", l)][:, -1], model.blocks[l].attn.W_O, "b h e, h e m -> h b m")
           for l in range(model.cfg.n_layers)]
    labels = [f"L{l}H{h}" for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    return torch.cat(out), labels


def unembed_bias_diff(model, answer_tokens: Int[Tensor, "batch 2"]) -> Float[Tensor, "batch"]:
    """b_U[IO] − b_U[S]: the part of LD no component writes (zero for SmolLM2, which has no unembedding bias)."""
    return model.b_U[answer_tokens[:, 0]] - model.b_U[answer_tokens[:, 1]]


@torch.no_grad()
def dla(model, cache, answer_tokens: Int[Tensor, "batch 2"]) -> dict[str, Tensor]:
    """Direct logit attribution per prompt: per component of ``decompose_resid`` [component, batch], per head
    [layer, head, batch], b_O per layer [layer, batch], the unembedding bias [batch], the logit lens on the
    accumulated residual stream [component, batch] (frozen final scale, as ARENA), and their labels."""
    d = logit_diff_directions(model, answer_tokens[:, 0], answer_tokens[:, 1])
    comps, comp_labels = decompose_resid(cache, model.cfg.n_layers)
    heads, _ = stack_head_results(model, cache)
    accum, accum_labels = accumulated_resid(cache, model.cfg.n_layers)
    b_O = torch.stack([model.blocks[l].attn.b_O.expand(len(d), -1) for l in range(model.cfg.n_layers)])
    per_head = residual_stack_to_logit_diff(heads, cache, d, per_prompt=True)
    return {"components": residual_stack_to_logit_diff(comps, cache, d, per_prompt=True), "component_labels": comp_labels,
            "heads": per_head.view(model.cfg.n_layers, model.cfg.n_heads, -1),
            "attn_bias": residual_stack_to_logit_diff(b_O, cache, d, per_prompt=True),
            "unembed_bias": unembed_bias_diff(model, answer_tokens),
            "accumulated": residual_stack_to_logit_diff(accum, cache, d, per_prompt=True), "accumulated_labels": accum_labels}


def by_layer(parts: dict[str, Tensor], kind: str) -> Float[Tensor, "layer batch"]:
    """The per-layer rows of ``parts["components"]`` of one kind ('attn_out' or 'mlp_out')."""
    rows = [i for i, label in enumerate(parts["component_labels"]) if label.endswith("_" + kind)]
    return parts["components"][rows]


@torch.no_grad()
def head_logit_parts(model, cache, answer_tokens: Int[Tensor, "batch 2"]) -> dict[str, Float[Tensor, "layer head batch"]]:
    """Each head's LD attribution split into its two terms: what it adds to logit(IO) and what it subtracts from
    logit(S) (W_U[:, IO] / s and −W_U[:, S] / s; they sum to the head's attribution). A head can raise LD by
    copying the IO or by suppressing the subject."""
    heads, _ = stack_head_results(model, cache)
    shape = (model.cfg.n_layers, model.cfg.n_heads, -1)
    io = residual_stack_to_logit_diff(heads, cache, model.W_U[:, answer_tokens[:, 0]].T, per_prompt=True)
    s = residual_stack_to_logit_diff(heads, cache, -model.W_U[:, answer_tokens[:, 1]].T, per_prompt=True)
    return {"IO": io.view(shape), "minus_S": s.view(shape)}


def dla_sum(parts: dict[str, Tensor]) -> Float[Tensor, "batch"]:
    """Σ components + b_U difference: LD itself, exactly, once the final scale is frozen."""
    return parts["components"].sum(0) + parts["unembed_bias"]


def attention_to_names(cache, dataset: IOIDataset, n_layers: int) -> dict[str, Float[Tensor, "layer head batch"]]:
    """How much each head attends from the final position to the IO, S1 and S2 tokens, per prompt."""
    rows = torch.arange(len(dataset))
    out = {}
    for key in ("IO", "S1", "S2"):
        pos = dataset.word_idx[key]
        out[key] = torch.stack([cache[act_name("pattern", l)][rows, :, 0, pos].T for l in range(n_layers)])
    return out


# ---------------------------------------------------------------- performance with intervals


def mean_ci(x: Tensor, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval mean ± t_{(1+level)/2, n−1} · sd/√n."""
    from scipy import stats

    x = x.double()
    n = len(x)
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * x.std(unbiased=True).item() / math.sqrt(n)
    m = x.mean().item()
    return m, m - half, m + half


def io_top_margin(final: Float[Tensor, "batch d_vocab"], io: Int[Tensor, "batch"]) -> Float[Tensor, "batch"]:
    """|logit(IO) − the largest other logit|: how far each prompt is from flipping the decision "IO is top-1"."""
    others = final.clone()
    others[torch.arange(len(io)), io] = -torch.inf
    return (final.gather(-1, io[:, None])[:, 0] - others.max(-1).values).abs()


def ioi_performance(logit_diff: Float[Tensor, "batch"], final: Float[Tensor, "batch d_vocab"],
                    answer_tokens: Int[Tensor, "batch 2"]) -> dict:
    """How well the model does IOI: the fraction with LD > 0 and the fraction whose top token is the IO, each
    with Wilson's 95% interval (day 40), and the mean LD with its t interval."""
    n = len(logit_diff)
    k = int((logit_diff > 0).sum())
    top = int((final.argmax(-1) == answer_tokens[:, 0]).sum())
    m, lo, hi = mean_ci(logit_diff)
    return {"n": n, "n_correct": k, "accuracy": k / n, "accuracy_ci": list(probes.wilson_interval(k, n)),
            "n_top1": top, "top1": top / n, "top1_ci": list(probes.wilson_interval(top, n)),
            "mean_logit_diff": m, "mean_logit_diff_ci": [lo, hi], "min_logit_diff": logit_diff.min().item()}


# ---------------------------------------------------------------- the experiment

EXPERIMENT = dict(model="smollm2", N=256, seed=0, flip=ABC, batch_size=32)
N_TOP_HEADS = 4


def top_heads(heads: Float[Tensor, "layer head"], k: int, largest: bool = True) -> list[tuple[int, int]]:
    """The k heads with the largest (or smallest) value, as (layer, head)."""
    order = heads.flatten().argsort(descending=largest)[:k]
    return [(int(i) // heads.shape[1], int(i) % heads.shape[1]) for i in order]


@torch.no_grad()
def analyse(model, ds: IOIDataset, abc: IOIDataset, batch_size: int = 32) -> tuple[dict, dict]:
    """The day's measurements on a dataset and its ABC twin: (results, tensors for the figures)."""
    end = ds.word_idx["end"]
    final, cache = run_at_end(model, ds.toks, end, dla_names(model), batch_size)
    final_abc, _ = run_at_end(model, abc.toks, end, (), batch_size)
    ld = logits_to_ave_logit_diff(final[:, None], ds.answer_tokens, per_prompt=True)
    ld_abc = logits_to_ave_logit_diff(final_abc[:, None], ds.answer_tokens, per_prompt=True)
    parts = dla(model, cache, ds.answer_tokens)
    abba = torch.tensor([p["pattern"] == "ABB" for p in ds.prompts])
    heads = parts["heads"].mean(-1)                                            # [layer, head]
    attn, mlp = (by_layer(parts, kind).mean(-1) for kind in ("attn_out", "mlp_out"))
    to_names = attention_to_names(cache, ds, model.cfg.n_layers)
    pos_heads, neg_heads = top_heads(heads, N_TOP_HEADS), top_heads(heads, N_TOP_HEADS, largest=False)
    split = head_logit_parts(model, cache, ds.answer_tokens)
    day39 = neurons.dla_decomposition(model, cache, ds.answer_tokens[:, 0], ds.answer_tokens[:, 1])

    def head_entry(l: int, h: int) -> dict:
        return {"layer": l, "head": h, "label": f"L{l}H{h}", "dla": heads[l, h].item(),
                "dla_IO": split["IO"][l, h].mean().item(), "dla_minus_S": split["minus_S"][l, h].mean().item(),
                "attn_IO": to_names["IO"][l, h].mean().item(), "attn_S1": to_names["S1"][l, h].mean().item(),
                "attn_S2": to_names["S2"][l, h].mean().item()}

    results = {
        "performance": ioi_performance(ld, final, ds.answer_tokens),
        "performance_ABBA": ioi_performance(ld[abba], final[abba], ds.answer_tokens[abba]),
        "performance_BABA": ioi_performance(ld[~abba], final[~abba], ds.answer_tokens[~abba]),
        "abc_performance": ioi_performance(ld_abc, final_abc, ds.answer_tokens),
        "max_abs_logit": max(final.abs().max().item(), final_abc.abs().max().item()),
        "clean_logit_diff": ld.mean().item(), "abc_logit_diff": ld_abc.mean().item(),
        "logit_diff": ld.tolist(), "abc_logit_diff_per_prompt": ld_abc.tolist(),
        "io_top_margin": io_top_margin(final, ds.io_tokenIDs).tolist(),
        "abc_io_top_margin": io_top_margin(final_abc, ds.io_tokenIDs).tolist(),
        "dla_sum_max_abs_err": (dla_sum(parts) - ld).abs().max().item(),
        "head_sum_vs_attn_out_max_abs_err": (parts["heads"].sum(1) + parts["attn_bias"]
                                             - by_layer(parts, "attn_out")).abs().max().item(),
        "heads_vs_day39_max_abs_err": (parts["heads"].permute(2, 0, 1) - day39["heads"]).abs().max().item(),
        "embed_dla": parts["components"][0].mean().item(),
        "attn_by_layer": attn.tolist(), "mlp_by_layer": mlp.tolist(),
        "total_attn": attn.sum().item(), "total_mlp": mlp.sum().item(),
        "accumulated": parts["accumulated"].mean(-1).tolist(), "accumulated_labels": parts["accumulated_labels"],
        "head_dla": heads.tolist(),
        "top_positive_heads": [head_entry(l, h) for l, h in pos_heads],
        "top_negative_heads": [head_entry(l, h) for l, h in neg_heads],
        "first_layer_over_quarter": int(((attn.abs() > 0.25) | (mlp.abs() > 0.25)).nonzero()[0, 0]),
        "largest_attn_layer": int(attn.argmax()), "largest_mlp_layer": int(mlp.argmax()),
        "top_head_share_of_attn": heads.max().item() / attn.sum().item(),
        "n_heads_over_quarter": int((heads > 0.25).sum()), "n_heads_under_minus_quarter": int((heads < -0.25).sum()),
        "example_prompts": ds.sentences[:4], "example_abc_prompts": abc.sentences[:4],
        "n_names": len(ds.names), "n_candidate_names": len(NAMES), "n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads,
        "n_key_value_heads": model.cfg.n_key_value_heads or model.cfg.n_heads,
    }
    tensors = {"ld": ld, "ld_abc": ld_abc, "abba": abba, "heads": heads, "attn": attn, "mlp": mlp,
               "accumulated": parts["accumulated"].mean(-1), "to_names": to_names}
    return results, tensors


def plot(results: dict, t: dict, out_dir: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6), constrained_layout=True)
    bins = torch.linspace(min(t["ld"].min(), t["ld_abc"].min()).item() - 0.5, t["ld"].max().item() + 0.5, 50)
    ax.hist(t["ld"][t["abba"]].numpy(), bins=bins.numpy(), alpha=0.6, label="clean, ABBA")
    ax.hist(t["ld"][~t["abba"]].numpy(), bins=bins.numpy(), alpha=0.6, label="clean, BABA")
    ax.hist(t["ld_abc"].numpy(), bins=bins.numpy(), histtype="step", color="k", lw=1.2, label="ABC (three fresh names)")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("logit(IO) − logit(S) at the final position")
    ax.set_ylabel("prompts")
    ax.legend(fontsize=8)
    fig.savefig(out_dir / "figures/logit_diff.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True, gridspec_kw={"width_ratios": [1.2, 1.2, 0.8]})
    L = len(t["attn"])
    x = torch.arange(L)
    axes[0].bar(x - 0.2, t["attn"], width=0.4, label="attention")
    axes[0].bar(x + 0.2, t["mlp"], width=0.4, label="MLP")
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("direct contribution to LD (logits)")
    axes[0].set_title("Direct logit attribution by layer")
    axes[0].legend(fontsize=8)
    axes[1].plot(t["accumulated"].numpy(), marker=".")
    ticks = list(range(0, len(t["accumulated"]), 10))
    axes[1].set_xticks(ticks, [results["accumulated_labels"][i] for i in ticks])
    axes[1].set_title("Accumulated residual stream (frozen final scale)")
    axes[1].set_ylabel("LD read off the stream")
    lim = t["heads"].abs().max().item()
    im = axes[2].imshow(t["heads"].numpy(), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    axes[2].set_xlabel("head")
    axes[2].set_ylabel("layer")
    axes[2].set_title("Per-head direct attribution")
    fig.colorbar(im, ax=axes[2])
    fig.savefig(out_dir / "figures/dla.png", dpi=120)
    plt.close(fig)

    heads = results["top_positive_heads"] + results["top_negative_heads"]
    fig, ax = plt.subplots(figsize=(8, 3.6), constrained_layout=True)
    x = torch.arange(len(heads))
    for i, key in enumerate(("IO", "S1", "S2")):
        ax.bar(x + (i - 1) * 0.27, [h[f"attn_{key}"] for h in heads], width=0.27, label=f"to {key}")
    ax.set_xticks(x.tolist(), [f"{h['label']}\n{h['dla']:+.2f}" for h in heads])
    ax.set_ylabel("attention from the final position")
    ax.set_title("Where the heads with the largest |direct attribution| look")
    ax.legend(fontsize=8)
    fig.savefig(out_dir / "figures/attention_to_names.png", dpi=120)
    plt.close(fig)


def build(model, cfg: dict = EXPERIMENT) -> tuple[IOIDataset, IOIDataset]:
    """The experiment's clean dataset and its ABC twin, for the model's tokenizer."""
    ds = IOIDataset("mixed", cfg["N"], model.tokenizer, seed=cfg["seed"])
    return ds, ds.gen_flipped_prompts(cfg["flip"])


@single_thread()
def run_experiment(out_dir: Path, cfg: dict = EXPERIMENT) -> dict:
    """SmolLM2 (or the model named in cfg) on 256 IOI prompts and their ABC twins: performance with intervals,
    direct logit attribution by layer and head, and where the strongest heads attend."""
    from checks.models import hooked_model

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    model = hooked_model(cfg["model"])
    ds, abc = build(model, cfg)
    results, tensors = analyse(model, ds, abc, cfg["batch_size"])
    plot(results, tensors, out_dir)
    results = {"experiment": cfg, **results, "cpu_seconds": time.process_time() - cpu0,
               "wall_seconds": time.perf_counter() - wall0}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
