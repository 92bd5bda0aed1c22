"""Day 44: function vectors (ARENA 1.3.2, Function Vectors: sections 2-3; Todd et al. 2023).

A few-shot prompt "Q: hot\\nA: cold\\n\\nQ: big\\nA: small\\n\\nQ: up\\nA:" makes the model perform a task
(antonyms). Where is the task stored? Two answers, each a vector added to the residual stream of a *zero-shot*
prompt ("Q: up\\nA:") at its final position:

- h_l, the mean over ICL prompts of the residual stream after block l at the final position
  (``calculate_h``, ``intervene_with_h``);
- the function vector v = Σ_{(l,h) ∈ top-k} mean_{ICL} (z_{l,h} W_O^{l,h}): the summed mean outputs of the
  k attention heads with the largest average indirect effect (AIE), where a head's AIE is the mean increase
  of log p(correct) when its mean clean output (at the final position) is patched into prompts whose
  demonstrations have random labels (``calculate_fn_vectors_and_intervene``, ``calculate_fn_vector``).

In closed form, with W_O^{l,h} the d_head × d_model block of the output projection that head h writes through
(Llama: o_proj.weight[:, h·d_head:(h+1)·d_head]ᵀ) and z̄_{l,h} the head's mean output over the prompts,
v = Σ z̄_{l,h} W_O^{l,h} (plus the projection's bias once per layer where it has one: GPT-J and Llama have none).

Every function takes the model by name (or an nnsight LanguageModel): "smollm2" here, GPT-J for ARENA's runs.
"""

from __future__ import annotations

import importlib
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from checks.timing import single_thread

P = importlib.import_module("days.043.act_patch")
P40 = importlib.import_module("days.040.probes_theory")   # day 40's Wilson interval
ICLSequence, ICLDataset, word_pairs = P.ICLSequence, P.ICLDataset, P.word_pairs
correct_logprob, tokenize, answer_ids, dims = P.correct_logprob, P.tokenize, P.answer_ids, P.dims


def as_lm(model):
    """A model name ('smollm2', a Hub id) or an nnsight LanguageModel, as the LanguageModel."""
    return P.nnsight_model(model) if isinstance(model, str) else model


def display(text: str) -> str:
    """A generated text made safe for one cell of a Markdown table: newlines shown as ⏎, pipes escaped."""
    return text.replace("\n", "⏎").replace("|", "\\|")


def _decode(lm, ids: Tensor) -> list[str]:
    return [lm.tokenizer.decode([int(i)]) for i in ids]


# ---------------------------------------------------------------- h: the mean residual stream


@torch.no_grad()
def calculate_h(model, dataset: ICLDataset, layer: int = -1) -> tuple[list[str], Float[Tensor, "d_model"]]:
    """ARENA's calculate_h: the model's next-token predictions on the ICL prompts, and
    h = mean over prompts of the residual stream after block ``layer`` at the final position."""
    lm = as_lm(model)
    tokens = tokenize(lm, dataset.prompts)
    with lm.trace(tokens):
        h = P.resid(P.layer(lm, layer).output)[:, -1].mean(0).save()
        predicted = lm.lm_head.output[:, -1].argmax(-1).save()
    return _decode(lm, predicted), h


@torch.no_grad()
def calculate_hs(model, dataset: ICLDataset, layers: list[int]) -> dict[int, Float[Tensor, "d_model"]]:
    """calculate_h for several layers from one forward pass: {layer: h_layer}."""
    lm = as_lm(model)
    tokens = tokenize(lm, dataset.prompts)
    saved: dict[int, Tensor] = {}
    with lm.trace(tokens):
        for l in layers:
            saved[l] = P.resid(P.layer(lm, l).output)[:, -1].mean(0).save()
    return saved


@torch.no_grad()
def final_logits_with(model, tokens: Int[Tensor, "batch pos"], layer: int | None = None,
                      vector: Float[Tensor, "d_model"] | None = None) -> Float[Tensor, "batch d_vocab"]:
    """The final position's logits, with ``vector`` added to the residual stream after block ``layer`` at the
    final position (nothing added when vector is None)."""
    lm = as_lm(model)
    with lm.trace(tokens):
        if vector is not None:
            P.resid(P.layer(lm, layer).output)[:, -1] += vector
        logits = lm.lm_head.output[:, -1].save()
    return logits


@torch.no_grad()
def intervene_with_h(model, zero_shot_dataset: ICLDataset, h: Float[Tensor, "d_model"], layer: int
                     ) -> tuple[list[str], list[str]]:
    """ARENA's intervene_with_h: the next-token predictions on the zero-shot prompts without and with h added
    to the residual stream after block ``layer`` at the final position (one trace, two invokes)."""
    lm = as_lm(model)
    tokens = tokenize(lm, zero_shot_dataset.prompts)
    with lm.trace() as tracer:
        with tracer.invoke(tokens):
            clean = lm.lm_head.output[:, -1].argmax(-1).save()
        with tracer.invoke(tokens):
            P.resid(P.layer(lm, layer).output)[:, -1] += h
            intervened = lm.lm_head.output[:, -1].argmax(-1).save()
    return _decode(lm, clean), _decode(lm, intervened)


def accuracy(predictions: list[str], dataset: ICLDataset) -> Float[Tensor, "batch"]:
    """1 where the predicted next token is the completion's (single) token, else 0."""
    return torch.tensor([float(p == c) for p, c in zip(predictions, dataset.completions)])


# ---------------------------------------------------------------- heads: average indirect effect


@torch.no_grad()
def mean_head_outputs(model, dataset: ICLDataset, layers: list[int]) -> dict[int, Float[Tensor, "n_heads d_head"]]:
    """z̄_l: each head's output (its slice of the output projection's input) at the final position, averaged over
    the dataset's prompts, for each layer asked."""
    lm = as_lm(model)
    _, n_heads, d_head = dims(lm)
    tokens = tokenize(lm, dataset.prompts)
    saved: dict[int, Tensor] = {}
    with lm.trace(tokens):
        for l in layers:
            saved[l] = P.out_proj(lm, l).input[:, -1].mean(0).save()
    return {l: z.view(n_heads, d_head) for l, z in saved.items()}


@torch.no_grad()
def calculate_fn_vectors_and_intervene(model, dataset: ICLDataset, layers: list[int] | None = None,
                                       heads: list[int] | None = None) -> Float[Tensor, "layer head"]:
    """ARENA's calculate_fn_vectors_and_intervene: each head's average indirect effect. Patch the head's mean
    clean output z̄_{l,h} (final position, averaged over the clean ICL prompts) into the final position of every
    corrupted prompt (the same prompts with random demonstration labels) and average the change in
    log p(correct answer) over prompts. One forward pass per layer: one invoke per head."""
    lm = as_lm(model)
    n_layers, n_heads, d_head = dims(lm)
    layers = list(range(n_layers)) if layers is None else layers
    heads = list(range(n_heads)) if heads is None else heads
    corrupted = tokenize(lm, dataset.create_corrupted_dataset().prompts)
    answers = answer_ids(lm, dataset)
    z_mean = mean_head_outputs(lm, dataset, layers)
    base = correct_logprob(P.final_logits(lm, corrupted), answers)
    out = torch.zeros(len(layers), len(heads))
    for i, l in enumerate(layers):
        logits = []
        with lm.trace() as tracer:
            for h in heads:
                with tracer.invoke(corrupted):
                    P.out_proj(lm, l).input[:, -1, h * d_head:(h + 1) * d_head] = z_mean[l][h]
                    logits.append(lm.lm_head.output[:, -1].save())
        for j in range(len(heads)):
            out[i, j] = (correct_logprob(logits[j], answers) - base).mean()
    return out


def top_heads(aie: Float[Tensor, "layer head"], k: int, layers: list[int] | None = None) -> list[tuple[int, int]]:
    """The k heads with the largest AIE, largest first, as (layer, head)."""
    layers = list(range(aie.shape[0])) if layers is None else layers
    order = aie.flatten().argsort(descending=True)[:k]
    return [(layers[int(i) // aie.shape[1]], int(i) % aie.shape[1]) for i in order]


@torch.no_grad()
def calculate_fn_vector(model, dataset: ICLDataset, head_list: list[tuple[int, int]]) -> Float[Tensor, "d_model"]:
    """ARENA's calculate_fn_vector: Σ over (layer, head) in head_list of the head's mean output over the
    dataset's prompts at the final position, as it enters the residual stream: z̄_{l,h} with every other head
    zeroed, passed through block l's own output projection module (its bias, if any, counted once per layer)."""
    lm = as_lm(model)
    _, n_heads, d_head = dims(lm)
    layers = sorted({l for l, _ in head_list})
    z_mean = mean_head_outputs(lm, dataset, layers)
    vector = 0
    for l in layers:
        keep = torch.zeros(n_heads, 1)
        keep[[h for ll, h in head_list if ll == l]] = 1
        vector = vector + P.out_proj(lm, l)._module((z_mean[l] * keep).flatten())
    return vector


@torch.no_grad()
def intervene_with_fn_vector(model, word: str, layer: int, fn_vector: Float[Tensor, "d_model"],
                             prompt_template: str = 'The word "{x}" means', n_tokens: int = 5) -> tuple[str, str]:
    """ARENA's intervene_with_fn_vector: greedy completions of ``n_tokens`` tokens of the prompt without and with
    the vector added to the residual stream after block ``layer`` at the last position of every forward pass of
    the generation (the prompt's last token, then each generated token)."""
    lm = as_lm(model)
    tokens = tokenize(lm, [prompt_template.format(x=word)])
    completions = []
    for vector in (None, fn_vector):
        # min_new_tokens: an early end-of-text would cut nnsight's step loop short (and what follows it)
        with lm.generate(tokens, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False) as tracer:
            if vector is not None:
                for _ in tracer.iter[:n_tokens]:
                    P.resid(P.layer(lm, layer).output)[:, -1] += vector
            out = tracer.result.save()
        completions.append(lm.tokenizer.decode(out[0, tokens.shape[1]:]))
    return completions[0], completions[1]


# ---------------------------------------------------------------- the experiment


def paired_bootstrap(a: Tensor, b: Tensor, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of mean(b − a) over paired outcomes (resampling the items)."""
    rng = np.random.default_rng(seed)
    d = (b - a).numpy()
    idx = rng.integers(0, len(d), size=(n, len(d)))
    means = d[idx].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def split_pairs(pairs: list[tuple[str, str]], seed: int = 0) -> tuple[list, list]:
    """A seeded half/half split of the pairs: ICL prompts (and all selection) use the first half, the zero-shot
    evaluation the second."""
    pairs = list(pairs)
    random.Random(seed).shuffle(pairs)
    half = len(pairs) // 2
    return pairs[:half], pairs[half:]


EXPERIMENT = dict(tasks=["antonyms", "capitals"], icl_size=16, aie_size=8, n_prepended=5, k_heads=10, seed=0,
                  fv_scales=[1.0, 3.0])
GEN_WORDS = {"antonyms": ["hot", "big", "early"], "capitals": ["France", "Japan", "Egypt"]}


def zero_shot_dataset(pairs) -> ICLDataset:
    """Every pair once, in order, as a zero-shot prompt 'Q: x\\nA:' (no demonstrations)."""
    ds = ICLDataset(pairs, size=1, n_prepended=0)
    ds.seqs = [ICLSequence([p]) for p in pairs]
    ds.size = len(pairs)
    ds.prompts = [s.prompt() for s in ds.seqs]
    ds.completions = [s.completion() for s in ds.seqs]
    return ds


def layer_sweep(lm, zs: ICLDataset, vectors: dict) -> dict:
    """Zero-shot (correct, log p(correct)) per prompt with vectors[key] added after block key[0] (or key), for
    each key."""
    tokens, answers = tokenize(lm, zs.prompts), answer_ids(lm, zs)
    out = {}
    for key, v in vectors.items():
        logits = final_logits_with(lm, tokens, key[0] if isinstance(key, tuple) else key, v)
        out[key] = ((logits.argmax(-1) == answers).float(), correct_logprob(logits, answers))
    return out


@single_thread()
def run_experiment(out_dir: Path, name: str = "smollm2", config: dict | None = None, layers: list[int] | None = None) -> dict:
    """For each task: h at every layer and its zero-shot effect; for the first task also every head's AIE, the
    function vector of the top-k heads, its zero-shot effect at every layer (the layer chosen on the held-in words,
    accuracy reported on held-out words, with Wilson intervals and a paired bootstrap of the gain), and
    multi-token generations with and without it."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    cfg = dict(EXPERIMENT, **(config or {}))
    lm = as_lm(name)
    n_layers, n_heads, _ = dims(lm)
    layers = list(range(n_layers)) if layers is None else layers
    results: dict = {"model": name, "experiment": cfg, "layers": layers, "tasks": {}}
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), constrained_layout=True)
    for t, task in enumerate(cfg["tasks"]):
        held_in, held_out = split_pairs(word_pairs(task, lm.tokenizer), cfg["seed"])
        icl = ICLDataset(held_in, cfg["icl_size"], cfg["n_prepended"], seed=cfg["seed"])
        zs_in, zs_out = zero_shot_dataset(held_in), zero_shot_dataset(held_out)
        icl_pred, _ = calculate_h(lm, icl, layers[0])
        hs = calculate_hs(lm, icl, layers)
        base_in, base_in_lp = layer_sweep(lm, zs_in, {layers[0]: None})[layers[0]]
        base_out, base_out_lp = layer_sweep(lm, zs_out, {layers[0]: None})[layers[0]]
        h_in = {l: a for l, (a, _) in layer_sweep(lm, zs_in, hs).items()}
        h_out = {l: a for l, (a, _) in layer_sweep(lm, zs_out, hs).items()}
        best_h = max(layers, key=lambda l: (h_in[l].mean().item(), -l))
        entry = {"n_held_in": len(held_in), "n_held_out": len(held_out),
                 "icl_accuracy": accuracy(icl_pred, icl).mean().item(),
                 "zero_shot_in": base_in.mean().item(), "zero_shot_out": base_out.mean().item(),
                 "h_accuracy_in": [h_in[l].mean().item() for l in layers],
                 "h_accuracy_out": [h_out[l].mean().item() for l in layers],
                 "h_best_layer": best_h, "h_best_out": h_out[best_h].mean().item(),
                 "h_norms": [hs[l].norm().item() for l in layers]}
        axes[t].plot(layers, entry["h_accuracy_out"], "o-", ms=3, label="+ h (held-out words)")
        axes[t].axhline(entry["zero_shot_out"], color="grey", ls="--", label="zero-shot, nothing added")
        if t == 0:
            aie_ds = ICLDataset(held_in, cfg["aie_size"], cfg["n_prepended"], seed=cfg["seed"] + 1)
            aie = calculate_fn_vectors_and_intervene(lm, aie_ds, layers)
            heads = top_heads(aie, cfg["k_heads"], layers)
            fv = calculate_fn_vector(lm, icl, heads)
            grid = {(l, c): c * fv for l in layers for c in cfg["fv_scales"]}
            fv_in, fv_out = layer_sweep(lm, zs_in, grid), layer_sweep(lm, zs_out, grid)
            # the layer and scale are chosen on held-in words: accuracy, then mean log p(correct)
            best, scale = max(grid, key=lambda key: (fv_in[key][0].mean().item(), fv_in[key][1].mean().item()))
            out_acc, out_lp = fv_out[(best, scale)]
            k = int(out_acc.sum())
            entry.update({
                "aie": aie.tolist(), "top_heads": [{"layer": l, "head": h, "aie": float(aie[layers.index(l), h])}
                                                   for l, h in heads],
                "fn_vector_norm": fv.norm().item(),
                "fv_accuracy_in": [fv_in[(l, scale)][0].mean().item() for l in layers],
                "fv_accuracy_out": [fv_out[(l, scale)][0].mean().item() for l in layers],
                "fv_logprob_out": [fv_out[(l, scale)][1].mean().item() for l in layers],
                "zero_shot_logprob_out": base_out_lp.mean().item(),
                "fv_best_layer": best, "fv_best_scale": scale, "fv_best_out": k / len(held_out),
                "fv_best_logprob_out": out_lp.mean().item(),
                "fv_logprob_gain_out_ci": paired_bootstrap(base_out_lp, out_lp),
                "fv_best_out_ci": P40.wilson_interval(k, len(held_out)),
                "zero_shot_out_ci": P40.wilson_interval(int(base_out.sum()), len(held_out)),
                "fv_gain_out": (out_acc - base_out).mean().item(),
                "fv_gain_out_ci": paired_bootstrap(base_out, out_acc),
                "generations": [dict(zip(("word", "without", "with"),
                                         (w, *intervene_with_fn_vector(lm, w, best, scale * fv, n_tokens=8))))
                                for w in GEN_WORDS[task]],
            })
            entry["generations_display"] = [{k: display(v) for k, v in g.items()} for g in entry["generations"]]
            axes[t].plot(layers, entry["fv_accuracy_out"], "s-", ms=3, label=f"+ {scale:g} × function vector (held-out)")
            lim = aie.abs().max().item()
            im = axes[2].imshow(aie.numpy(), aspect="auto", cmap="RdBu", vmin=-lim, vmax=lim, origin="lower",
                                extent=(-0.5, n_heads - 0.5, layers[0] - 0.5, layers[-1] + 0.5))
            axes[2].set_xlabel("head")
            axes[2].set_ylabel("layer")
            axes[2].set_title(f"Average indirect effect ({task}): Δ log p(correct)")
            fig.colorbar(im, ax=axes[2])
        axes[t].set_xlabel("layer the vector is added after")
        axes[t].set_ylabel("zero-shot accuracy")
        axes[t].set_title(f"{task}: zero-shot accuracy with a vector added")
        axes[t].legend(fontsize=8)
        axes[t].grid(True, alpha=0.3)
        results["tasks"][task] = entry
    fig.savefig(out_dir / "figures/function_vectors.png", dpi=120)
    plt.close(fig)
    results.update(wall_seconds=time.perf_counter() - wall0, cpu_seconds=time.process_time() - cpu0)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
