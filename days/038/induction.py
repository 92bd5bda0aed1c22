"""Day 38: attention heads and induction heads (ARENA 1.2 Intro to Mech Interp, §2 and §4).

An induction head completes patterns: having seen "… A B … A", it predicts "B". In a
two-layer attention-only transformer it is a circuit of two heads:

- a **previous-token head** in layer 0 writes (a function of) token t_{j-1} into position j;
- an **induction head** in layer 1 whose *keys* read that output (K-composition): query i
  (token A) matches key j when t_{j-1} = A, so it attends to j, the token after the previous
  occurrence of A, and its OV circuit copies t_j (B) to the output.

ARENA's attn-only-2l model is Hub-only, so we train our own on sequences made of a random
block of tokens repeated with a random period (a fixed period could be solved by position
alone). Measured on [BOS, r_1..r_n, r_1..r_n]:

    previous-token score(h) = mean_i A_h[i, i-1]
    induction score(h)      = mean_{i = n+1..2n} A_h[i, i-(n-1)]       (the "induction stripe")

(both from day 35's ``diagonal_attention``). The circuit is read off the weights with
composition scores (Elhage et al. 2021): with W_OV = W_V W_O and W_QK = W_Q W_Kᵀ (d_model ×
d_model, acting on row vectors), for a layer-0 head a and a layer-1 head b,

    Q-composition = ‖W_OV^a W_QK^b‖_F / (‖W_OV^a‖_F ‖W_QK^b‖_F)
    K-composition = ‖W_OV^a (W_QK^b)ᵀ‖_F / (‖W_OV^a‖_F ‖W_QK^b‖_F)
    V-composition = ‖W_OV^a W_OV^b‖_F / (‖W_OV^a‖_F ‖W_OV^b‖_F),

each in [0, 1] by submultiplicativity of the Frobenius norm, compared with the same score for
random matrices of the same shapes and ranks.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

tl_setup = importlib.import_module("days.035.tl_setup")
hooks = importlib.import_module("days.037.hooks")
act_name = tl_setup.act_name

# ---------------------------------------------------------------- data


def repeated_tokens(batch: int, half: int, d_vocab: int, generator: torch.Generator, bos: int = 0,
                    low: int = 1) -> Int[Tensor, "batch seq"]:
    """ARENA's generate_repeated_tokens: [BOS, r_1..r_n, r_1..r_n], r drawn without replacement from
    [low, d_vocab) (so no token repeats within a half and the induction stripe is the only repeat)."""
    r = torch.stack([low + torch.randperm(d_vocab - low, generator=generator)[:half] for _ in range(batch)])
    return torch.cat([torch.full((batch, 1), bos, dtype=torch.long), r, r], dim=1)


def periodic_batch(batch: int, half: int, d_vocab: int, min_period: int, generator: torch.Generator
                   ) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch"]]:
    """Training data: [BOS, then a random block of p distinct tokens repeated to length 2n], p uniform in
    [min_period, n], and the periods. Tokens after the first period are determined by the one p earlier;
    since p varies from sequence to sequence, only a mechanism that finds the previous occurrence of the
    current token (induction), not a positional rule, predicts them all."""
    periods = torch.randint(min_period, half + 1, (batch,), generator=generator)
    block = torch.stack([1 + torch.randperm(d_vocab - 1, generator=generator)[:half] for _ in range(batch)])
    body = block.gather(1, torch.arange(2 * half)[None] % periods[:, None])
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), body], dim=1), periods


# ---------------------------------------------------------------- the model and its training


@dataclass
class InductionConfig:
    """The toy: a 2-layer attention-only transformer and its training run (the default is the fast gate's)."""

    d_model: int = 32
    n_heads: int = 2
    d_vocab: int = 32
    half: int = 12            # n: sequences are BOS + 2n tokens
    min_period: int = 5
    normalization: str | None = None
    positional: str = "standard"
    steps: int = 300
    batch: int = 32
    lr: float = 5e-3
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 25


FAST = InductionConfig()
FULL = InductionConfig(d_model=64, n_heads=4, d_vocab=64, half=24, normalization="LN", steps=2000, batch=64,
                       lr=1e-3, weight_decay=0.01, eval_every=50)


def make_model(cfg: InductionConfig):
    """HookedTransformer(attn_only=True): embed + positions, two attention layers, unembed."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    return HookedTransformer(HookedTransformerConfig(
        n_layers=2, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_model // cfg.n_heads, d_vocab=cfg.d_vocab,
        n_ctx=2 * cfg.half + 1, attn_only=True, normalization_type=cfg.normalization,
        positional_embedding_type=cfg.positional, act_fn=None, seed=cfg.seed, device="cpu"))


def per_token_loss(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos_minus_1"]:
    """-log p(tokens[:, k+1] | tokens[:, :k+1]) for every prediction k."""
    logp = model(tokens).log_softmax(-1)[:, :-1]
    return -logp.gather(-1, tokens[:, 1:, None])[..., 0]


def split_losses(losses: Float[Tensor, "batch pos_minus_1"], half: int) -> tuple[float, float]:
    """Mean loss on the first half's predictions (of r_2..r_n: unpredictable) and the second's (of r_2..r_n again,
    predictable by induction). The predictions of r_1 (twice) are left out: r_1 is never predictable."""
    return losses[:, 1:half].mean().item(), losses[:, half + 1:].mean().item()


def train(cfg: InductionConfig, log=None) -> tuple[object, dict]:
    """AdamW on the next-token loss of periodic batches (every position: the model must also learn to be unsure
    before a repeat); every ``eval_every`` steps the loss on a fixed repeated batch and both scores are
    recorded. Runs on one thread (reproducible; fast for tiny tensors)."""
    from checks.timing import single_thread

    with single_thread():
        torch.manual_seed(cfg.seed)
        model = make_model(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        g = torch.Generator().manual_seed(cfg.seed)
        probe = repeated_tokens(16, cfg.half, cfg.d_vocab, torch.Generator().manual_seed(10_000 + cfg.seed))
        history, t0, cpu0 = [], time.perf_counter(), time.process_time()
        for step in range(cfg.steps + 1):
            if step % cfg.eval_every == 0 or step == cfg.steps:
                history.append({"step": step, **evaluate(model, probe, cfg.half), "seconds": time.perf_counter() - t0})
                if log:
                    log(history[-1])
            if step == cfg.steps:
                break
            tokens, _ = periodic_batch(cfg.batch, cfg.half, cfg.d_vocab, cfg.min_period, g)
            loss = per_token_loss(model, tokens).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), {"history": history, "seconds": time.perf_counter() - t0,
                          "cpu_seconds": time.process_time() - cpu0}


# ---------------------------------------------------------------- measuring heads


@torch.no_grad()
def head_scores(model, tokens: Int[Tensor, "batch pos"], half: int) -> dict[str, Float[Tensor, "layer head"]]:
    """Previous-token and induction scores of every head on [BOS, r, r] sequences (any HookedTransformer)."""
    patterns = tl_setup.cached_patterns(model, tokens)
    return {"previous": tl_setup.diagonal_attention(patterns, 1).mean(1),
            "induction": tl_setup.diagonal_attention(patterns, half - 1, first_query=half + 1).mean(1)}


@torch.no_grad()
def evaluate(model, tokens: Int[Tensor, "batch pos"], half: int) -> dict:
    first, second = split_losses(per_token_loss(model, tokens), half)
    scores = head_scores(model, tokens, half)
    return {"first_half_loss": first, "second_half_loss": second,
            "max_induction": scores["induction"][-1].max().item(), "max_previous": scores["previous"][0].max().item()}


def find_heads(scores: dict[str, Tensor]) -> dict[str, tuple[int, int]]:
    """The induction head = the highest induction score; the previous-token head = the highest previous-token
    score in an earlier layer (it must come before the head whose keys read it)."""
    il, ih, _ = tl_setup.top_head(scores["induction"])
    pl, ph, _ = tl_setup.top_head(scores["previous"][:max(il, 1)])
    return {"induction": (il, ih), "previous": (pl, ph)}


# ---------------------------------------------------------------- composition


def composition_score(W_A: Float[Tensor, "... d d"], W_B: Float[Tensor, "... d d"]) -> Float[Tensor, "..."]:
    """‖W_A W_B‖_F / (‖W_A‖_F ‖W_B‖_F): how much of what A writes, B reads (in [0, 1])."""
    return (W_A @ W_B).norm(dim=(-2, -1)) / (W_A.norm(dim=(-2, -1)) * W_B.norm(dim=(-2, -1)))


def circuits(model, layer: int) -> tuple[Float[Tensor, "head d d"], Float[Tensor, "head d d"]]:
    """(W_OV = W_V W_O, W_QK = W_Q W_Kᵀ) of every head in a layer, as full d_model × d_model matrices."""
    attn = model.blocks[layer].attn
    return attn.W_V @ attn.W_O, attn.W_Q @ attn.W_K.transpose(-1, -2)


@torch.no_grad()
def composition_scores(model, mode: str, writer: int = 0, reader: int = 1) -> Float[Tensor, "writer_head reader_head"]:
    """Q-, K- or V-composition of every (writer-layer head, reader-layer head) pair."""
    W_OV_a, _ = circuits(model, writer)
    W_OV_b, W_QK_b = circuits(model, reader)
    right = {"Q": W_QK_b, "K": W_QK_b.transpose(-1, -2), "V": W_OV_b}[mode]
    return composition_score(W_OV_a[:, None], right[None, :])


@torch.no_grad()
def random_composition_baseline(d_model: int, d_head: int, n_samples: int = 200, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of the composition score of random rank-d_head matrices A₁A₂ and B₁B₂
    (Gaussian factors of the heads' shapes): the score two unrelated heads would get."""
    g = torch.Generator().manual_seed(seed)
    def low_rank():
        return torch.randn(n_samples, d_model, d_head, generator=g) @ torch.randn(n_samples, d_head, d_model, generator=g)
    scores = composition_score(low_rank(), low_rank())
    return scores.mean().item(), scores.std().item()


# ---------------------------------------------------------------- full circuits (FactoredMatrix)


def full_OV_circuit(model, layer: int, head: int):
    """ARENA's full OV circuit of a head, W_E W_V^h W_O^h W_U (d_vocab × d_vocab; row = the token the head
    attends to, column = the logit it writes), as a TransformerLens ``FactoredMatrix`` of inner dimension
    d_head: never materialised. Like ARENA's, it reads tokens straight from the embedding (no positions, no
    earlier layer) and ignores the layer norms (ARENA's attn-only-2l has none; our full toy has LayerNorm)."""
    from transformer_lens import FactoredMatrix

    return model.W_E @ FactoredMatrix(model.W_V[layer, head], model.W_O[layer, head]) @ model.W_U


@torch.no_grad()
def top_1_acc(full_OV_circuit, batch_size: int = 1000) -> float:
    """ARENA's top_1_acc: the fraction of rows whose argmax is on the diagonal (for a full OV circuit: tokens
    whose own logit is the one the head raises most when it attends to them; 1 for a perfect copier).

    Computed ``batch_size`` rows at a time from the factors (``FactoredMatrix[rows].AB``): d_vocab² never
    exists at once (49,152² float32 would be 9.7 GB for SmolLM2)."""
    n = full_OV_circuit.shape[-2]
    hits = 0
    for rows in torch.arange(n).split(batch_size):
        hits += (full_OV_circuit[rows].AB.argmax(-1) == rows).sum().item()
    return hits / n


@torch.no_grad()
def ov_copying_score(model, layer: int, head: int) -> float:
    """The top-1 accuracy of a head's full OV circuit (the fraction of tokens it copies)."""
    return top_1_acc(full_OV_circuit(model, layer, head))


def find_K_comp_full_circuit(model, prev_token_head_index: int, ind_head_index: int):
    """ARENA's K-composition full circuit of (layer-0 head, layer-1 head), a d_vocab × d_vocab FactoredMatrix:

        (W_E W_Q^{1.h'}) (W_E W_V^{0.h} W_O^{0.h} W_K^{1.h'})ᵀ = W_E W_QK^{1.h'} (W_E W_OV^{0.h})ᵀ,

    rows = the query token (read straight from the embedding), columns = the token the layer-0 head moved
    into the key position (for a previous-token head: the token *before* the key). An induction pair makes
    it large on the diagonal: query A attends to the position after an earlier A."""
    from transformer_lens import FactoredMatrix

    W_E = model.W_E
    Q = W_E @ model.W_Q[1, ind_head_index]
    K = W_E @ model.W_V[0, prev_token_head_index] @ model.W_O[0, prev_token_head_index] @ model.W_K[1, ind_head_index]
    return FactoredMatrix(Q, K.T)


# ---------------------------------------------------------------- decomposing a layer-1 head's queries and keys


def decompose_qk_input(cache, layer: int = 1) -> Float[Tensor, "component *batch pos d_model"]:
    """ARENA's decompose_qk_input, made exact: the input to layer ``layer``'s queries and keys (this toy has no
    split q/k input, so they share it) as a sum of parts stacked on axis 0:

        [embed, pos_embed, head 0, …, head n−1 of the layer before, bias]

    (ARENA's n_heads + 2 parts for layer 1, in ARENA's order, plus one for the constants: the earlier layers'
    b_O). Head h's part is z_h W_O^h (TransformerLens's ``hook_result``). With a LayerNorm before the layer,
    each part is centred and divided by the *cached* scale (``ln1.hook_scale``) and multiplied by its weight,
    and the norm's bias joins the constants: linear in the parts with the scale frozen, so the sum is still
    exact. A shortformer's positions enter after the norm, unnormalised. Only layer 1 of a two-layer
    attention-only model has exactly these parts (a deeper layer would also read every earlier layer)."""
    model = cache.model
    cfg = model.cfg
    if layer != 1 or not cfg.attn_only:
        raise NotImplementedError("the parts are those of layer 1 of an attention-only model (ARENA's 2-layer toy)")
    if cfg.positional_embedding_type not in ("standard", "shortformer"):
        raise NotImplementedError(f"positions of type {cfg.positional_embedding_type!r} are not an additive part")
    z = cache[act_name("z", 0)]
    heads = torch.einsum("...phd,hdm->h...pm", z, model.W_O[0])
    embed, pos = cache["hook_embed"], cache["hook_pos_embed"]
    bias = model.b_O[0].expand_as(embed)
    residual = torch.cat([embed[None], pos[None], heads, bias[None]])  # what resid_pre of layer 1 sums
    shortformer = cfg.positional_embedding_type == "shortformer"
    kind = cfg.normalization_type
    if kind is None:
        return residual
    if kind not in ("LN", "LNPre"):
        raise NotImplementedError(f"normalisation {kind!r}")
    ln = model.blocks[layer].ln1
    scale = cache[f"blocks.{layer}.ln1.hook_scale"]
    normed = (residual - residual.mean(-1, keepdim=True)) / scale
    if kind == "LN":
        normed = normed * ln.w
        normed[-1] = normed[-1] + ln.b
    if shortformer:
        normed[1] = pos  # a shortformer adds its positions to the norm's output, not to resid_pre
    return normed


def decompose_q(decomposed_qk_input: Float[Tensor, "component *batch pos d_model"], ind_head_index: int,
                model) -> Float[Tensor, "component *batch pos d_head"]:
    """ARENA's decompose_q: part i of the queries of layer-1 head ``ind_head_index`` is y_i W_Q (and the last
    part, the constants, also carries b_Q), so the parts sum to ``hook_q`` exactly."""
    parts = decomposed_qk_input @ model.W_Q[1, ind_head_index]
    parts[-1] = parts[-1] + model.b_Q[1, ind_head_index]
    return parts


def decompose_k(decomposed_qk_input: Float[Tensor, "component *batch pos d_model"], ind_head_index: int,
                model) -> Float[Tensor, "component *batch pos d_head"]:
    """ARENA's decompose_k: part i of the keys is y_i W_K (the constants' part also carries b_K)."""
    parts = decomposed_qk_input @ model.W_K[1, ind_head_index]
    parts[-1] = parts[-1] + model.b_K[1, ind_head_index]
    return parts


def decompose_attn_scores(decomposed_q: Float[Tensor, "q_comp *batch q_pos d_head"],
                          decomposed_k: Float[Tensor, "k_comp *batch k_pos d_head"],
                          model) -> Float[Tensor, "q_comp k_comp *batch q_pos k_pos"]:
    """ARENA's decompose_attn_scores: entry [i, j, …, p, p'] = q_i[p] · k_j[p'] / attn_scale, the part of the
    attention score that query part i and key part j contribute; summed over (i, j) it is the score before
    the causal mask (``hook_attn_scores`` below the diagonal)."""
    return torch.einsum("i...qd,j...kd->ij...qk", decomposed_q, decomposed_k) / model.cfg.attn_scale


def qk_part_labels(n_heads: int) -> list[str]:
    """Names of decompose_qk_input's parts, in order."""
    return ["embed", "pos_embed"] + [f"L0H{h}" for h in range(n_heads)] + ["bias"]


# ---------------------------------------------------------------- ablation, ARENA's way


def head_zero_ablation_hook(z: Float[Tensor, "batch pos head d_head"], hook, head_index_to_ablate: int) -> Tensor:
    """ARENA's head_zero_ablation_hook (day 37's ablate_head_hook under ARENA's name and argument)."""
    return hooks.ablate_head_hook(z, hook, head=head_index_to_ablate)


def head_mean_ablation_hook(z: Float[Tensor, "batch pos head d_head"], hook, head_index_to_ablate: int) -> Tensor:
    """ARENA's head_mean_ablation_hook: the head's output replaced by its mean over the batch (per position)."""
    z = z.clone()
    z[:, :, head_index_to_ablate] = z[:, :, head_index_to_ablate].mean(0)
    return z


def repeated_half_loss(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> Tensor:
    """ARENA's metric: the mean cross-entropy of the last seq_len − 1 predictions of [BOS, r_1..r_n, r_1..r_n],
    seq_len = n (the repeated half's r_2..r_n, which induction predicts; r_1 is never predictable)."""
    seq_len = (tokens.shape[1] - 1) // 2
    logp = logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    return -logp[:, -(seq_len - 1):].mean()


@torch.no_grad()
def get_ablation_scores(model, tokens: Int[Tensor, "batch seq"],
                        ablation_function=head_zero_ablation_hook) -> Float[Tensor, "n_layers n_heads"]:
    """ARENA's get_ablation_scores: for every head, the increase of the repeated half's loss (ARENA's metric,
    ``repeated_half_loss``) when that head is ablated through hook_z (zero ablation by default). Day 37's
    ``ablation_loss_increase`` is ours: the loss of every prediction, and mean ablation over batch and positions."""
    clean = repeated_half_loss(model(tokens), tokens)
    scores = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            hook = partial(ablation_function, head_index_to_ablate=head)
            logits = model.run_with_hooks(tokens, fwd_hooks=[(act_name("z", layer), hook)])
            scores[layer, head] = repeated_half_loss(logits, tokens) - clean
    return scores


@torch.no_grad()
def ablated_split_losses(model, tokens: Int[Tensor, "batch pos"], half: int, heads: list[tuple[int, int]]) -> tuple[float, float]:
    """First- and second-half losses with the listed heads zero-ablated (day 37's hook on hook_z)."""
    fwd_hooks = [(act_name("z", l), partial(hooks.ablate_head_hook, head=h)) for l, h in heads]
    logp = model.run_with_hooks(tokens, fwd_hooks=fwd_hooks).log_softmax(-1)[:, :-1]
    return split_losses(-logp.gather(-1, tokens[:, 1:, None])[..., 0], half)


def analyse(model, cfg: InductionConfig, n_eval: int = 64) -> dict:
    """Everything the post reports about a trained toy, on held-out repeated sequences."""
    tokens = repeated_tokens(n_eval, cfg.half, cfg.d_vocab, torch.Generator().manual_seed(20_000 + cfg.seed))
    scores = head_scores(model, tokens, cfg.half)
    heads = find_heads(scores)
    (pl, ph), (il, ih) = heads["previous"], heads["induction"]
    k_comp = composition_scores(model, "K")
    baseline = random_composition_baseline(cfg.d_model, cfg.d_model // cfg.n_heads)
    with torch.no_grad():
        first, second = split_losses(per_token_loss(model, tokens), cfg.half)
    ablations = {f"L{l}H{h}": ablated_split_losses(model, tokens, cfg.half, [(l, h)])[1]
                 for l in range(2) for h in range(cfg.n_heads)}
    induction_heads = [(1, h) for h in range(cfg.n_heads) if scores["induction"][1, h] > 0.5]
    return {
        "previous_scores": scores["previous"].tolist(), "induction_scores": scores["induction"].tolist(),
        "previous_head": [pl, ph], "induction_head": [il, ih],
        "previous_head_score": scores["previous"][pl, ph].item(), "induction_head_score": scores["induction"][il, ih].item(),
        "k_composition": k_comp.tolist(), "q_composition": composition_scores(model, "Q").tolist(),
        "v_composition": composition_scores(model, "V").tolist(),
        "k_composition_pair": k_comp[ph, ih].item(), "k_composition_argmax_writer": int(k_comp[:, ih].argmax()),
        "random_baseline_mean": baseline[0], "random_baseline_std": baseline[1],
        "first_half_loss": first, "second_half_loss": second, "uniform_loss": math.log(cfg.d_vocab - 1),
        "second_half_loss_with_head_ablated": ablations,
        "second_half_loss_previous_head_ablated": ablations[f"L{pl}H{ph}"],
        "second_half_loss_induction_head_ablated": ablations[f"L{il}H{ih}"],
        "induction_heads": [list(x) for x in induction_heads],
        "second_half_loss_all_induction_heads_ablated": ablated_split_losses(model, tokens, cfg.half, induction_heads)[1],
        "ov_copying_induction_head": ov_copying_score(model, il, ih),
        **circuit_analysis(model, cfg, tokens, heads),
    }


def _ranks(values: Float[Tensor, "layer head"]) -> list[list[int]]:
    """[layer, head] of every head, the largest value first."""
    return [list(divmod(int(i), values.shape[1])) for i in values.flatten().argsort(descending=True)]


@torch.no_grad()
def circuit_analysis(model, cfg: InductionConfig, tokens: Int[Tensor, "batch pos"], heads: dict) -> dict:
    """ARENA's §3-4 measurements of the circuit: full OV top-1 accuracies, the K-composition full circuit's
    top-1 accuracy for every (layer-0, layer-1) pair, the spread of the induction head's decomposed attention
    scores on one sequence, and head ablations with ARENA's metric (zero ablation, repeated half) beside ours
    (day 37: mean ablation, every prediction)."""
    (pl, ph), (il, ih) = heads["previous"], heads["induction"]
    n = cfg.n_heads
    ov = [[top_1_acc(full_OV_circuit(model, l, h)) for h in range(n)] for l in range(2)]
    k_full = [[top_1_acc(find_K_comp_full_circuit(model, p, h).T) for h in range(n)] for p in range(n)]
    one = repeated_tokens(1, cfg.half, cfg.d_vocab, torch.Generator().manual_seed(20_000 + cfg.seed))
    _, cache = model.run_with_cache(one)
    parts = decompose_qk_input(cache)[:, 0]
    stds = decompose_attn_scores(decompose_q(parts, ih, model), decompose_k(parts, ih, model), model).flatten(2).std(-1)
    labels = qk_part_labels(n)
    top_q, top_k = divmod(int(stds.argmax()), stds.shape[1])
    arena = get_ablation_scores(model, tokens)
    ours = hooks.ablation_loss_increase(model, tokens, "mean")
    ranks = {"arena": _ranks(arena), "ours": _ranks(ours)}
    return {
        "top_1_acc_ov": ov,
        "top_1_acc_ov_induction_head": ov[il][ih],
        "top_1_acc_ov_best_layer0": max(ov[0]),
        "k_comp_top_1_acc": k_full,
        "k_comp_top_1_acc_pair": k_full[ph][ih],
        "qk_part_labels": labels,
        "decomposed_score_stds": stds.tolist(),
        "decomposed_score_top": [labels[top_q], labels[top_k]],
        "decomposed_score_top_std": stds.max().item(),
        "arena_ablation_scores": arena.tolist(),
        "our_ablation_scores": ours.tolist(),
        "ablation_ranking": ranks,
        "ablation_rank_of_induction_head": {k: r.index([il, ih]) + 1 for k, r in ranks.items()},
        "ablation_rank_of_previous_head": {k: r.index([pl, ph]) + 1 for k, r in ranks.items()},
    }


# ---------------------------------------------------------------- the experiment


def plot_training(history: list[dict], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.plot(steps, [h["second_half_loss"] for h in history], label="loss, repeated half", color="C0")
    ax.plot(steps, [h["first_half_loss"] for h in history], label="loss, first half", color="C0", ls="--")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (nats)")
    ax2 = ax.twinx()
    ax2.plot(steps, [h["max_induction"] for h in history], color="C3", label="max induction score (layer 1)")
    ax2.plot(steps, [h["max_previous"] for h in history], color="C2", label="max previous-token score (layer 0)")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("attention score")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [l.get_label() for l in lines], fontsize=8, loc="center right")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_scores(analysis: dict, cfg: InductionConfig, path: Path) -> None:
    """Previous-token and induction scores of every head, and the K-composition of every (layer-0, layer-1) pair
    against the random baseline."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    for ax, key, title in ((axes[0], "previous_scores", "previous-token score"), (axes[1], "induction_scores", "induction score")):
        values = torch.tensor(analysis[key])
        ax.imshow(values, cmap="viridis", vmin=0, vmax=1)
        for (l, h), v in zip([(l, h) for l in range(2) for h in range(cfg.n_heads)], values.flatten().tolist()):
            ax.text(h, l, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=9)
        ax.set_title(title)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(cfg.n_heads))
        ax.set_yticks([0, 1])
    k = torch.tensor(analysis["k_composition"])
    im = axes[2].imshow(k, cmap="Reds", vmin=0)
    for (a, b), v in zip([(a, b) for a in range(cfg.n_heads) for b in range(cfg.n_heads)], k.flatten().tolist()):
        axes[2].text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=9,
                     color="white" if v > 0.7 * k.max().item() else "black")
    axes[2].set_title(f"K-composition (random: {analysis['random_baseline_mean']:.2f} ± "
                      f"{analysis['random_baseline_std']:.2f})", fontsize=10)
    axes[2].set_xlabel("layer-1 head (reads, in its keys)")
    axes[2].set_ylabel("layer-0 head (writes)")
    axes[2].set_xticks(range(cfg.n_heads))
    axes[2].set_yticks(range(cfg.n_heads))
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_experiment(out_dir: Path) -> dict:
    """Train the full toy (and the gate's fast one), identify its heads, draw its patterns, scores and
    composition; then measure induction heads in SmolLM2 and a random GPT-2 on repeated random tokens."""
    import matplotlib.pyplot as plt

    from checks.models import random_gpt2, smollm2_hooked

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    fast_model, fast_log = train(FAST)
    model, log = train(FULL, log=lambda h: print(h, flush=True))
    cfg = FULL
    full = analyse(model, cfg)
    fast = analyse(fast_model, FAST)
    plot_training(log["history"], out_dir / "figures/training.png",
                  f"Attention-only 2-layer toy (d_model {cfg.d_model}, {cfg.n_heads} heads/layer): induction forms")

    (pl, ph), (il, ih) = full["previous_head"], full["induction_head"]
    seq = repeated_tokens(1, 10, cfg.d_vocab, torch.Generator().manual_seed(7))
    patterns = tl_setup.cached_patterns(model, seq)
    labels = ["BOS"] + [str(t) for t in seq[0, 1:].tolist()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
    tl_setup.plot_patterns(axes, [patterns[pl, 0, ph], patterns[il, 0, ih]], labels,
                           [f"L{pl}H{ph}: previous-token head", f"L{il}H{ih}: induction head"])
    fig.suptitle("The two heads of the circuit on [BOS, r, r] (tokens are ids)")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/patterns.png", dpi=120)
    plt.close(fig)

    plot_scores(full, cfg, out_dir / "figures/scores.png")

    # the same measurement on real models: SmolLM2 (trained) and a random GPT-2 (untrained)
    smol = smollm2_hooked()
    smol_tokens = repeated_tokens(8, 50, smol.cfg.d_vocab, torch.Generator().manual_seed(1), bos=smol.tokenizer.bos_token_id, low=1000)
    smol_scores = head_scores(smol, smol_tokens, 50)
    with torch.no_grad():
        smol_losses = per_token_loss(smol, smol_tokens)
    smol_first, smol_second = split_losses(smol_losses, 50)
    gpt2, _ = random_gpt2(n_layers=12)
    gpt2_tokens = repeated_tokens(4, 50, gpt2.cfg.d_vocab, torch.Generator().manual_seed(1), bos=gpt2.tokenizer.bos_token_id)
    gpt2_scores = head_scores(gpt2, gpt2_tokens, 50)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
    im = axes[0].imshow(smol_scores["induction"], cmap="viridis", vmin=0, vmax=1, aspect="auto")
    axes[0].set_title("SmolLM2-135M: induction score of each head")
    axes[0].set_xlabel("head")
    axes[0].set_ylabel("layer")
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    axes[1].plot(smol_losses.mean(0), lw=1)
    axes[1].axvline(50, color="grey", ls=":")
    axes[1].set_xlabel("prediction of the token at position k + 1")
    axes[1].set_ylabel("cross-entropy (nats)")
    axes[1].set_title("SmolLM2 on [BOS, r₁..r₅₀, r₁..r₅₀]: per-token loss")
    fig.savefig(out_dir / "figures/smollm2_induction.png", dpi=120)
    plt.close(fig)

    sl, sh, sv = tl_setup.top_head(smol_scores["induction"])
    results = {
        "fast_config": asdict(FAST), "full_config": asdict(FULL),
        "fast": fast, "fast_seconds": fast_log["seconds"], "fast_cpu_seconds": fast_log["cpu_seconds"],
        "fast_final": fast_log["history"][-1],
        "full": full, "full_seconds": log["seconds"], "full_cpu_seconds": log["cpu_seconds"], "history": log["history"],
        "full_first_step_induction_over_half": next(h["step"] for h in log["history"] if h["max_induction"] > 0.5),
        "smollm2": {"top_induction_head": {"layer": sl, "head": sh, "score": sv},
                    "n_heads_over_half": int((smol_scores["induction"] > 0.5).sum()),
                    "heads_over_half": [{"layer": l, "head": h, "kv_head": h // (smol.cfg.n_heads // smol.cfg.n_key_value_heads),
                                         "score": smol_scores["induction"][l, h].item()}
                                        for l, h in (torch.nonzero(smol_scores["induction"] > 0.5).tolist())],
                    "first_half_loss": smol_first, "second_half_loss": smol_second,
                    "top_previous": dict(zip(("layer", "head", "score"), tl_setup.top_head(smol_scores["previous"])))},
        "random_gpt2": {"max_induction": gpt2_scores["induction"].max().item()},
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
