"""Day 61: reverse-engineering day 60's bracket classifier (ARENA 1.5.1 Balanced Bracket Classifier, parts 2-4).

The model reads its answer at position 0: logits = LN_final(x) W_U + b_U with x = blocks.2.hook_resid_post[:, 0].
The *unbalanced direction* after the final LayerNorm is d = W_U[:, 0] − W_U[:, 1]: logit_unbal − logit_bal =
LN_final(x) · d + (b_U[0] − b_U[1]). LayerNorm is not linear, but on the model's own residual streams it is close
to an affine map, LN_final(x) ≈ x Lᵀ + c (a least-squares fit, scikit-learn's LinearRegression, R² measured), so
the direction *before* the norm is Lᵀ d: whatever writes along it into position 0 pushes "unbalanced".

The residual stream is a sum of the components that wrote it,

    x = (embed + pos_embed) + Σ_{l,h} head_{l,h} + Σ_l mlp_l + Σ_l b_O^(l),

so each component's contribution to "unbalanced" is its output at position 0 projected on Lᵀ d. The heads whose
contribution separates failures from balanced strings are the detectors (ROC AUC per failure type), and the
same move one level down (through a head's OV circuit and its LayerNorm's linear fit) ranks the MLP neurons
that feed them (get_out_by_neuron).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from pathlib import Path

import einops
import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from sklearn.linear_model import LinearRegression
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedTransformer
from transformer_lens import utilities as utils  # get_act_name, to_numpy (transformer_lens.utils is deprecated in 3.9)

from checks.timing import single_thread

B = importlib.import_module("days.060.brackets")

HERE = Path(__file__).parent

# ---------------------------------------------------------------- activations and the final LayerNorm


def get_activations(model: HookedTransformer, toks: Int[Tensor, "batch seq"],
                    names: str | list[str], cache: ActivationCache | None = None) -> Tensor | ActivationCache:
    """The activations at the named hooks (run_with_cache keeping only those): one tensor for one name, an
    ActivationCache for a list. ``cache``: a full cache of the same tokens to read from instead of running the model
    (every function below passes it through, so that an analysis runs the model once)."""
    names_list = [names] if isinstance(names, str) else list(names)
    if cache is not None:
        return cache[names] if isinstance(names, str) else cache
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=lambda name: name in names_list)
    return cache[names] if isinstance(names, str) else cache


def get_post_final_ln_dir(model: HookedTransformer) -> Float[Tensor, "d_model"]:
    """d = W_U[:, 0] − W_U[:, 1]: the direction, after the final LayerNorm, that raises "unbalanced" over "balanced"."""
    return model.W_U[:, 0] - model.W_U[:, 1]


def LN_hook_names(layernorm: nn.Module, model: HookedTransformer | None = None) -> tuple[str, str]:
    """The hooks holding a LayerNorm's input and output: ln_final reads blocks.{last}.hook_resid_post; blocks.l.ln1
    reads hook_resid_pre, blocks.l.ln2 hook_resid_mid; each writes hook_normalized. In TransformerLens 3.9 that hook
    holds (x − mean)/scale, *before* the norm's weight and bias: the norm's output is hook_normalized · w + b
    (ln_output applies them). ARENA reads the module's ``name`` attribute; TransformerLens does not set one, so
    the name is looked up."""
    name = getattr(layernorm, "name", None)
    if name is None:
        name = next(n for n, m in model.named_modules() if m is layernorm)
    if name == "ln_final":
        n_layers = model.cfg.n_layers if model is not None else 3
        return utils.get_act_name("resid_post", n_layers - 1), "ln_final.hook_normalized"
    _, layer, ln = name.split(".")
    return utils.get_act_name("resid_pre" if ln == "ln1" else "resid_mid", int(layer)), utils.get_act_name("normalized", int(layer), ln)


def ln_output(layernorm: nn.Module, normalized: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """The LayerNorm's output from its hook_normalized: normalized · w + b."""
    return normalized * layernorm.w + layernorm.b


def get_ln_fit(model: HookedTransformer, data, layernorm: nn.Module,
               seq_pos: int | None = None, cache: ActivationCache | None = None) -> tuple[LinearRegression, float]:
    """A least-squares affine fit of the LayerNorm, output ≈ input · coef_ᵀ + intercept_ (the output after the norm's
    weight and bias, see ln_output), on the dataset's residual
    streams at one position (or all positions flattened), and its R² (scikit-learn's score: 1 − SS_res/SS_tot
    averaged uniformly over the output coordinates)."""
    inp, out = LN_hook_names(layernorm, model)
    acts = get_activations(model, data.toks, [inp, out], cache)
    with torch.no_grad():
        x, y = utils.to_numpy(acts[inp]), utils.to_numpy(ln_output(layernorm, acts[out]))
    if seq_pos is None:
        x = einops.rearrange(x, "batch seq d -> (batch seq) d")
        y = einops.rearrange(y, "batch seq d -> (batch seq) d")
    else:
        x, y = x[:, seq_pos], y[:, seq_pos]
    fit = LinearRegression().fit(x, y)
    return fit, float(fit.score(x, y))


def get_pre_final_ln_dir(model: HookedTransformer, data, cache: ActivationCache | None = None) -> Float[Tensor, "d_model"]:
    """Lᵀ d, with L the final LayerNorm's linear fit at position 0: x · (Lᵀ d) is the fitted unbalanced logit gap
    (up to a constant)."""
    fit, _ = get_ln_fit(model, data, model.ln_final, seq_pos=0, cache=cache)
    return torch.from_numpy(fit.coef_).float().T @ get_post_final_ln_dir(model)


# ---------------------------------------------------------------- components of the residual stream


def component_labels(model: HookedTransformer) -> list[str]:
    """ARENA's order: embeddings, then per layer its heads and its MLP (ARENA's head 2.0 is L2H0 here, MLP 1 MLP1)."""
    labels = ["embeddings"]
    for l in range(model.cfg.n_layers):
        labels += [f"L{l}H{h}" for h in range(model.cfg.n_heads)] + [f"MLP{l}"]
    return labels


def get_out_by_components(model: HookedTransformer, data,
                          cache: ActivationCache | None = None) -> Float[Tensor, "component batch seq_pos emb"]:
    """What each component wrote into the residual stream: [embed + pos_embed, head 0.0, head 0.1, mlp 0, …,
    mlp 2]. The per-head outputs are hook_result (z W_O, without b_O), so Σ components + Σ_l b_O^(l) equals
    blocks.2.hook_resid_post."""
    n = model.cfg.n_layers
    head_names = [utils.get_act_name("result", l) for l in range(n)]
    mlp_names = [utils.get_act_name("mlp_out", l) for l in range(n)]
    acts = get_activations(model, data.toks, ["hook_embed", "hook_pos_embed", *head_names, *mlp_names], cache)
    out = [acts["hook_embed"] + acts["hook_pos_embed"]]
    for head_name, mlp_name in zip(head_names, mlp_names):
        out += list(einops.rearrange(acts[head_name], "batch seq heads emb -> heads batch seq emb"))
        out.append(acts[mlp_name])
    return torch.stack(out)


def get_out_by_component_in_unbalanced_dir(model: HookedTransformer, data,
                                           cache: ActivationCache | None = None) -> Float[Tensor, "component batch"]:
    """Each component's output at position 0 projected on the pre-final-LN unbalanced direction, minus its mean on
    the balanced strings (ARENA's normalisation: 0 = "as on a balanced string", > 0 = pushes "unbalanced")."""
    out = get_out_by_components(model, data, cache)[:, :, 0]
    proj = out @ get_pre_final_ln_dir(model, data, cache)
    return proj - proj[:, data.isbal].mean(1, keepdim=True)


def is_balanced_vectorized_return_both(toks: Int[Tensor, "batch seq"]) -> tuple[Bool[Tensor, "batch"], Bool[Tensor, "batch"]]:
    """ARENA's two failure flags, read right to left as the model reads them: with "(" = +1 and ")" = −1 summed from
    the *end*, the total-elevation failure is "the sum is not 0" and the negative failure is "some suffix has more
    '(' than ')'" (altitude from the right > 0). For a string whose total is 0 that is the same as its prefix
    elevation going below 0; for one whose total is not 0 the two readings can differ."""
    table = torch.tensor([0, 0, 0, 1, -1], device=toks.device)
    altitude = torch.cumsum(table[toks].flip(-1), -1)
    return altitude[:, -1] != 0, altitude.max(-1).values > 0


def roc_auc(scores: Float[Tensor, "n"], labels: Bool[Tensor, "n"]) -> float:
    """The probability that a random positive scores above a random negative (ties count ½): the Mann-Whitney U
    statistic over n_pos · n_neg, from average ranks."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):                      # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ---------------------------------------------------------------- heads, their OV circuits, and neurons


def get_attn_probs(model: HookedTransformer, data, layer: int, head: int,
                   cache: ActivationCache | None = None) -> Float[Tensor, "batch seqQ seqK"]:
    """The attention pattern of one head on the dataset."""
    return get_activations(model, data.toks, utils.get_act_name("pattern", layer), cache)[:, head]


def get_WOV(model: HookedTransformer, layer: int, head: int) -> Float[Tensor, "d_model d_model"]:
    """W_OV = W_V W_O: what the head writes (before b_O) for what it reads, with row vectors: out = x̂ W_OV."""
    return model.W_V[layer, head] @ model.W_O[layer, head]


def get_pre_20_dir(model: HookedTransformer, data, layer: int = 2, head: int = 0, seq_pos: int = 1,
                   cache: ActivationCache | None = None) -> Float[Tensor, "d_model"]:
    """The residual direction at position seq_pos that makes head (layer, head) write "unbalanced" into position 0
    when it attends there: L_lnᵀ W_OV (Lᵀ d), with L_ln the linear fit of the head's LayerNorm (blocks.layer.ln1) at
    seq_pos. ARENA's name is for head 2.0 reading position 1; here the head and position are arguments."""
    fit, _ = get_ln_fit(model, data, model.blocks[layer].ln1, seq_pos=seq_pos, cache=cache)
    return torch.from_numpy(fit.coef_).float().T @ (get_WOV(model, layer, head) @ get_pre_final_ln_dir(model, data, cache))


def get_out_by_neuron(model: HookedTransformer, data, layer: int, seq: int | None = None,
                      cache: ActivationCache | None = None) -> Float[Tensor, "batch *seq neuron d_model"]:
    """Each neuron's write into the residual stream, a_n W_out[n] (without b_out): summed over neurons (plus b_out)
    it is mlp_out."""
    acts = get_activations(model, data.toks, utils.get_act_name("post", layer), cache)
    if seq is not None:
        acts = acts[:, seq]
    return acts[..., None] * model.W_out[layer]


def get_out_by_neuron_in_20_dir(model: HookedTransformer, data, layer: int, direction: Float[Tensor, "d_model"],
                                seq: int = 1) -> Float[Tensor, "batch neuron"]:
    """The neurons' writes at position seq projected on a direction (ARENA: get_pre_20_dir), per string."""
    return einops.einsum(get_out_by_neuron(model, data, layer, seq), direction, "batch neuron d, d -> batch neuron")


def get_out_by_neuron_in_20_dir_less_memory(model: HookedTransformer, data, layer: int, direction: Float[Tensor, "d_model"],
                                            seq: int = 1) -> Float[Tensor, "batch neuron"]:
    """The same without the [batch, neuron, d_model] tensor: a_n · (W_out[n] · direction)."""
    acts = get_activations(model, data.toks, utils.get_act_name("post", layer))[:, seq]
    return acts * (model.W_out[layer] @ direction)


def get_neuron_in_dir(model: HookedTransformer, data, layer: int, neuron: int, seq_pos: int = 0,
                      cache: ActivationCache | None = None) -> Float[Tensor, "d_model"]:
    """The residual direction at seq_pos that drives one neuron's pre-activation: L_ln2ᵀ W_in[:, n], with L_ln2 the
    linear fit of the layer's ln2 at that position (the same move as get_pre_20_dir, one MLP instead of one head)."""
    fit, _ = get_ln_fit(model, data, model.blocks[layer].ln2, seq_pos=seq_pos, cache=cache)
    return torch.from_numpy(fit.coef_).float().T @ model.W_in[layer][:, neuron]


# ---------------------------------------------------------------- measurements

FAILURES = ("elevation", "negative")     # day 60's failure types with one condition broken (the other holds)


def failure_aucs(scores: Float[Tensor, "batch"], types: list[str]) -> dict[str, float]:
    """ROC AUC of a score separating each single failure type from the balanced strings (1 = the score is higher on
    every failing string than on every balanced one, 0.5 = no separation, 0 = always lower), and all unbalanced
    strings from the balanced ones."""
    scores, types = np.asarray(scores, dtype=np.float64), np.asarray(types)
    bal = types == "balanced"
    out = {}
    for kind in FAILURES:
        mask = bal | (types == kind)
        out[kind] = roc_auc(scores[mask], types[mask] == kind)
    out["unbalanced"] = roc_auc(scores, ~bal)
    return out


@torch.no_grad()
def total_effect_at_start(model: HookedTransformer, data, layer: int, head: int,
                          cache: ActivationCache | None = None) -> Float[Tensor, "batch"]:
    """How much one head's output at [start] moves the unbalanced logit gap, through everything after it (MLP 2
    included): the gap on the string minus the gap with that output replaced by its mean over the balanced strings."""
    name = utils.get_act_name("result", layer)
    logits = model(data.toks)[:, 0]
    mean = get_activations(model, data.toks, name, cache)[data.isbal, 0, head].mean(0)

    def patch(result: Tensor, hook) -> Tensor:
        result[:, 0, head] = mean
        return result

    patched = model.run_with_hooks(data.toks, fwd_hooks=[(name, patch)])[:, 0]
    return (logits[:, 0] - logits[:, 1]) - (patched[:, 0] - patched[:, 1])


def single_dip_strings(max_len: int = B.MAX_LEN) -> list[dict]:
    """Every string "()"·a + ")(" + "()"·b up to max_len: balanced pairs with one dip to −1 at character 2a + 1
    (total elevation 0, so only the negative condition fails), with its length and the distance of the negative
    prefix (the dip's ")", character 2a) from the nearer end, as dip_profile measures it."""
    out = []
    for n in range(0, (max_len - 2) // 2 + 1):
        for a in range(n + 1):
            s = "()" * a + ")(" + "()" * (n - a)
            out.append({"string": s, "length": len(s), "dip": 2 * a + 1, "from_end": min(2 * a, len(s) - 1 - 2 * a)})
    return out


@torch.no_grad()
def p_balanced(model: HookedTransformer, strs: list[str]) -> np.ndarray:
    """The model's P(balanced) at [start] for each string."""
    data = B.BracketsDataset([(s, B.is_balanced_forloop(s)) for s in strs])
    return B.class_logits(model, data).softmax(-1)[:, 1].numpy()


def dip_profile(s: str) -> dict:
    """Where a string goes below zero: the lowest elevation, how many prefixes are negative, and how far the
    negative stretch is from the nearer end of the string (in characters)."""
    h = B.elevation_profile(s)
    neg = np.flatnonzero(h < 0)
    if len(neg) == 0:
        return {"min": int(h.min()), "n_negative": 0, "from_end": None}
    return {"min": int(h.min()), "n_negative": int(len(neg)), "from_end": int(min(neg[0], len(s) - 1 - neg[-1]))}


# ---------------------------------------------------------------- the experiment

N_ANALYSIS = 3000             # ARENA analyses 5,000 strings; 3,000 keep every cache small on a 2-core machine
ANALYSIS_SEED = 100           # day 60 trained on seeds 1-2 and tested on 3
SEARCH_N = 20_000             # shuffled equal-count strings searched for adversarial examples
SEARCH_SEED = 101
FAR = 8                       # "far from the ends": the negative stretch at least this many characters from both


@torch.no_grad()
def analyse(model: HookedTransformer, data) -> dict:
    """Every number of the reverse-engineering on one dataset (see the module docstring), from one cached run:
    LayerNorm fits, the components' direct contributions and their AUCs, the last layer's heads' total effects, the
    last MLP's decision neurons and the components feeding them."""
    _, cache = model.run_with_cache(data.toks)
    types = [B.failure_type(s) for s in data.strs]
    t = np.array(types)
    labels = component_labels(model)
    last = model.cfg.n_layers - 1
    out: dict = {"n": len(data), "types": {k: types.count(k) for k in ("balanced", *FAILURES, "both")}}
    out["ln_r2"] = {"ln_final_pos0": get_ln_fit(model, data, model.ln_final, 0, cache)[1],
                    "ln_final_all_positions": get_ln_fit(model, data, model.ln_final, None, cache)[1],
                    f"L{last}_ln1_pos0": get_ln_fit(model, data, model.blocks[last].ln1, 0, cache)[1],
                    f"L{last}_ln2_pos0": get_ln_fit(model, data, model.blocks[last].ln2, 0, cache)[1]}
    pre_dir = get_pre_final_ln_dir(model, data, cache)
    gap = ln_output(model.ln_final, cache["ln_final.hook_normalized"][:, 0]) @ get_post_final_ln_dir(model) + model.b_U[0] - model.b_U[1]
    out["pre_final_ln_dir_corr"] = float(np.corrcoef((cache[f"blocks.{last}.hook_resid_post"][:, 0] @ pre_dir).numpy(),
                                                     gap.numpy())[0, 1])

    contrib = get_out_by_component_in_unbalanced_dir(model, data, cache)
    out["components"] = {lab: {"std": float(contrib[i].std()), **failure_aucs(contrib[i], types),
                               **{f"mean_{k}": float(contrib[i][t == k].mean()) for k in (*FAILURES, "both")}}
                         for i, lab in enumerate(labels)}
    heads = [lab for lab in labels if "H" in lab]
    out["total_effect"] = {f"L{last}H{h}": (lambda e: {"std": float(e.std()), **failure_aucs(e, types)})(
        total_effect_at_start(model, data, last, h, cache)) for h in range(model.cfg.n_heads)}
    out["detector_heads"] = {
        "direct": {k: max(heads, key=lambda lab: out["components"][lab][k]) for k in FAILURES},
        "total_effect": {k: max(out["total_effect"], key=lambda lab: out["total_effect"][lab][k]) for k in FAILURES}}

    by_neuron = get_out_by_neuron(model, data, last, seq=0, cache=cache) @ pre_dir          # [batch, neuron]
    by_neuron = by_neuron - by_neuron[data.isbal].mean(0)
    acts = cache[utils.get_act_name("post", last)][:, 0]
    order = by_neuron.abs().mean(0).argsort(descending=True).tolist()
    neurons = {n: {"neuron": n, "mean_abs_dla": float(by_neuron[:, n].abs().mean()), **failure_aucs(by_neuron[:, n], types),
                   **{f"act_{k}": float(acts[t == k, n].mean()) for k in ("balanced", *FAILURES, "both")}}
               for n in order[:8]}
    out["top_neurons"] = [neurons[n] for n in order[:8]]
    out["neuron_dla_share_top8"] = float(by_neuron[:, order[:8]].abs().sum(1).mean() / by_neuron.abs().sum(1).mean())
    # each failure's detector neuron: among the 8 largest writers that are silent on balanced strings (they fire on
    # failures, pushing "unbalanced"), the one that separates that failure best (ties: the larger writer)
    firing = [n for n in order[:8] if neurons[n]["act_balanced"] < 0.5 and neurons[n][f"act_{FAILURES[0]}"] +
              neurons[n][f"act_{FAILURES[1]}"] > 0]
    out["detector_neurons"] = {k: max(firing, key=lambda n: (round(neurons[n][k], 3), neurons[n]["mean_abs_dla"]))
                               for k in FAILURES}
    out["detector_neuron_stats"] = {k: neurons[n] for k, n in out["detector_neurons"].items()}
    out["neuron_inputs"] = {}
    out_pos0 = get_out_by_components(model, data, cache)[:-1, :, 0]                      # everything before the last MLP
    for kind, n in out["detector_neurons"].items():
        proj = out_pos0 @ get_neuron_in_dir(model, data, last, n, 0, cache)
        proj = proj - proj[:, data.isbal].mean(1, keepdim=True)
        out["neuron_inputs"][kind] = {lab: {"std": float(proj[i].std()), **failure_aucs(proj[i], types)}
                                      for i, lab in enumerate(labels[:-1])}
    out["attention_from_start"] = {f"L{l}H{h}": {"to_start": float(cache[utils.get_act_name("pattern", l)][:, h, 0, 0].mean()),
                                                     "entropy_over_uniform": float(_entropy_ratio(cache[utils.get_act_name("pattern", l)][:, h, 0], data))}
                                   for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)}
    return out


def _entropy_ratio(pattern: Float[Tensor, "batch seqK"], data) -> float:
    """Mean over strings of the attention row's entropy over log(number of non-pad keys): 1 = uniform."""
    keys = (data.toks != B.SimpleTokenizer.PAD_TOKEN).sum(-1).float()
    ent = -(pattern * pattern.clamp_min(1e-30).log()).sum(-1)
    return float((ent / keys.log()).mean())


def adversarial(model: HookedTransformer, negative_neuron: int) -> dict:
    """The prediction and its test. Single-dip strings "()"·a + ")(" + "()"·b, all of them up to 40 characters: the
    model's P(balanced) and the negative detector neuron's pre-activation, by the dip's distance from the nearer
    end; nested blocks with a dip between them; and a search of SEARCH_N shuffled equal-count strings, split into
    those the circuit predicts to be hard (one shallow dip, to −1, at least FAR characters from both ends) and the
    rest, each tested against the model."""
    family = single_dip_strings()
    strs = [f["string"] for f in family]
    p = p_balanced(model, strs)
    toks = B.SimpleTokenizer(B.VOCAB).tokenize(strs)
    pre = get_activations(model, toks, utils.get_act_name("pre", model.cfg.n_layers - 1))[:, 0, negative_neuron].numpy()
    bands = [(0, 0), (1, 3), (4, 7), (8, 11), (12, 19)]
    by_band = []
    for lo, hi in bands:
        m = np.array([lo <= f["from_end"] <= hi for f in family])
        by_band.append({"from_end": [lo, hi], "n": int(m.sum()), "fooled": int((p[m] > 0.5).sum()),
                        "fooled_fraction": float((p[m] > 0.5).mean()), "mean_p_balanced": float(p[m].mean()),
                        "neuron_pre_mean": float(pre[m].mean())})
    fooled = p > 0.5
    nested = ["(" * d + ")" * d + ")(" + "(" * d + ")" * d for d in range(1, 10)]
    rng = np.random.default_rng(SEARCH_SEED)
    pool = sorted({B.random_bracket_string("equal_counts", rng) for _ in range(SEARCH_N)})
    pool = [s for s in pool if not B.is_balanced_forloop(s)]
    prof = [dip_profile(s) for s in pool]
    predicted = np.array([d["min"] == -1 and d["from_end"] >= FAR for d in prof])
    p_pool = p_balanced(model, pool)
    return {
        "single_dip": {"n": len(family), "fooled": int(fooled.sum()), "by_from_end": by_band,
                       "neuron_pre_fooled": float(pre[fooled].mean()), "neuron_pre_caught": float(pre[~fooled].mean()),
                       "neuron_silent_agreement": float(((pre <= 0) == fooled).mean()),
                       "strings": [{**f, "p_balanced": float(q)} for f, q in zip(family, p)],
                       "most_fooling": max(zip(p.tolist(), strs))[1], "most_fooling_p": float(p.max())},
        "nested": [{"string": s, "p_balanced": float(q)} for s, q in zip(nested, p_balanced(model, nested))],
        "search": {"n": len(pool), "n_predicted": int(predicted.sum()),
                   "fooled_predicted": int((p_pool[predicted] > 0.5).sum()),
                   "fooled_rest": int((p_pool[~predicted] > 0.5).sum()),
                   "fooled_fraction_predicted": float((p_pool[predicted] > 0.5).mean()),
                   "fooled_fraction_rest": float((p_pool[~predicted] > 0.5).mean()),
                   "fooled_ratio": float((p_pool[predicted] > 0.5).mean() / max((p_pool[~predicted] > 0.5).mean(), 1e-12))},
    }


def counting_heads(model: HookedTransformer, data, cache: ActivationCache | None = None) -> dict[str, float]:
    """For each layer-0 head, how well its output at [start] encodes the proportion of "(" in the string: R² of a
    linear fit (LinearRegression) from the 56-dimensional output to the proportion. A head that attends uniformly
    from [start] over the string averages its value vectors, and its value vector depends on the token: its output
    is affine in the proportion."""
    results = get_activations(model, data.toks, utils.get_act_name("result", 0), cache)[:, 0]
    y = data.open_proportion.numpy()
    return {f"L0H{h}": float(LinearRegression().fit(results[:, h].numpy(), y).score(results[:, h].numpy(), y))
            for h in range(model.cfg.n_heads)}


def plot_components(contrib: Tensor, types: list[str], labels: list[str], path: Path) -> None:
    """ARENA's hists_per_comp: each component's direct contribution to "unbalanced" at [start], by failure type."""
    import matplotlib.pyplot as plt

    t = np.array(types)
    fig, axes = plt.subplots(2, 5, figsize=(16, 6))
    for ax, i in zip(axes.flat, range(len(labels))):
        c = contrib[i].numpy()
        lo, hi = np.percentile(c, [0.5, 99.5])
        bins = np.linspace(lo - 1e-3, hi + 1e-3, 40)
        for kind, colour in (("balanced", "C2"), ("elevation", "C0"), ("negative", "C3"), ("both", "C1")):
            ax.hist(c[t == kind], bins=bins, alpha=0.55, color=colour, label=kind, density=True)
        ax.set_title(labels[i], fontsize=10)
        ax.set_yticks([])
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Direct contribution of each component to the unbalanced logit gap at [start] (0 = mean on balanced strings)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_aucs(analysis: dict, path: Path) -> None:
    """AUC of each component's signal for the two failures: its direct contribution (ARENA's view), the last
    layer's heads' total effect, and each component's push on the two detector neurons."""
    import matplotlib.pyplot as plt

    blocks = [("direct contribution", analysis["components"]),
              ("total effect at [start]", analysis["total_effect"]),
              (f"input to N{analysis['detector_neurons']['elevation']} (elevation neuron)", analysis["neuron_inputs"]["elevation"]),
              (f"input to N{analysis['detector_neurons']['negative']} (negative neuron)", analysis["neuron_inputs"]["negative"])]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6), gridspec_kw={"width_ratios": [9, 2.4, 8, 8], "wspace": 0.08})
    for i, (ax, (title, table)) in enumerate(zip(axes, blocks)):
        names = [k for k in table if k != "embeddings"]
        grid = np.array([[table[k][f] for k in names] for f in FAILURES])
        im = ax.imshow(grid, cmap="RdBu_r", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(names)), names, rotation=60, fontsize=8)
        ax.set_yticks(range(2), ["elevation ≠ 0", "goes negative"] if i == 0 else ["", ""])
        for (r, c), v in np.ndenumerate(grid):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.7, label="ROC AUC vs balanced strings")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_adversarial(adv: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    strings = adv["single_dip"]["strings"]
    sc = ax1.scatter([x["dip"] for x in strings], [x["length"] for x in strings], c=[x["p_balanced"] for x in strings],
                     cmap="viridis", vmin=0, vmax=1, s=22, marker="s")
    ax1.set(xlabel="position of the dip's ')' (characters)", ylabel="string length",
            title='"()"·a + ")(" + "()"·b: P(balanced)')
    fig.colorbar(sc, ax=ax1)
    bands = adv["single_dip"]["by_from_end"]
    names = [f"{b['from_end'][0]}-{b['from_end'][1]}" for b in bands]
    ax2.bar(names, [b["fooled_fraction"] for b in bands], color="C3", alpha=0.7, label="fooled (P(balanced) > ½)")
    ax2b = ax2.twinx()
    ax2b.plot(names, [b["neuron_pre_mean"] for b in bands], "ko-", label="negative neuron pre-activation")
    ax2.set(xlabel="dip's distance from the nearer end", ylabel="fraction fooled", title="Fooled in the middle")
    ax2b.set_ylabel("mean pre-activation")
    ax2.legend(loc="upper center", fontsize=8)
    ax2b.legend(loc="center right", fontsize=8)
    nested = adv["nested"]
    ax3.semilogy([len(n["string"]) for n in nested], [n["p_balanced"] for n in nested], "o-")
    ax3.set(xlabel="length", ylabel="P(balanced)", title='"("ᵈ ")"ᵈ ")(" "("ᵈ ")"ᵈ (unbalanced)')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_experiment(out_dir: Path = HERE) -> dict:
    """Reverse-engineer day 60's committed model on N_ANALYSIS strings (seed ANALYSIS_SEED), then test the
    adversarial strings the circuit points at: results.json and figures/{components,aucs,adversarial}.png."""
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    with single_thread(), torch.no_grad():
        model = B.load_brackets_model()
        data = B.BracketsDataset(B.generate_brackets_data(N_ANALYSIS, ANALYSIS_SEED))
        analysis = analyse(model, data)
        _, cache = model.run_with_cache(data.toks)
        analysis["counting_heads_r2"] = counting_heads(model, data, cache)
        contrib = get_out_by_component_in_unbalanced_dir(model, data, cache)
        plot_components(contrib, [B.failure_type(s) for s in data.strs], component_labels(model), out_dir / "figures/components.png")
        del cache
        plot_aucs(analysis, out_dir / "figures/aucs.png")
        adv = adversarial(model, analysis["detector_neurons"]["negative"])
        plot_adversarial(adv, out_dir / "figures/adversarial.png")
    results = {"n_analysis": N_ANALYSIS, "analysis_seed": ANALYSIS_SEED, "search_seed": SEARCH_SEED, "far": FAR,
               "checkpoint_sha256": hashlib.sha256(B.CHECKPOINT.read_bytes()).hexdigest(), "analysis": analysis, "adversarial": adv,
               "experiment_seconds": time.perf_counter() - t0, "experiment_cpu_seconds": time.process_time() - cpu0}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
