"""Part 4B of the Gauntlet: the symmetries of a transformer's weights.

Many weight settings compute the same function. Each symmetry here is an exact identity, checked
numerically by transforming the weights in place and comparing logits:

- head permutations (the spec's 4B.1): attention's output is a sum over heads,
  attn_out = Σ_h z^h W_O^h + b_O, so relabelling the heads of a layer by π ∈ S_{n_heads} (moving
  W_Q, W_K, W_V, their biases and W_O together) changes nothing; the group is ∏_layers S_{n_heads},
  of order (n_heads!)^{n_layers}. With grouped-query attention (SmolLM2: 9 query heads sharing 3
  key/value heads) only permutations that respect the groups survive: S_{n_kv} ≀ S_{g};
- MLP neuron permutations: mlp_out = Σ_n act(x·W_in[:, n] + b_in[n]) W_out[n], a sum over neurons,
  so ∏_layers S_{d_mlp} of order (d_mlp!)^{n_layers};
- continuous symmetries inside each head: q·k = (x W_Q A)(x W_K A^{−T})ᵀ for any invertible
  A ∈ GL(d_head), and Σ_j A_ij (v_j B) B^{−1} W_O = z W_O for any B ∈ GL(d_head): 2·d_head²
  dimensions per head (for rotary models the QK gauge must commute with the rotations);
- residual-stream rotations: after TransformerLens folds the norms' weights into the next layer,
  every reader sees a weightless norm, and LN(xR) = LN(x)R for any orthogonal R fixing the
  all-ones vector (LayerNorm centres; RMSNorm commutes with every orthogonal R), so rotating every
  writing matrix by R and every reading matrix by Rᵀ is a symmetry: O(d_model − 1) for GPT-2, of
  dimension (d_model − 1)(d_model − 2)/2, and O(d_model) for SmolLM2.

Transformations act in place on the model (they are exact relabellings or invertible maps) and
are undone by their inverse; ``transformed`` is a context manager that restores the weights.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["group_size", "log10_factorial", "mlp_permutation_", "ov_gauge_", "permute_heads_", "qk_gauge_",
           "random_orthogonal_fixing_ones", "residual_rotation_", "run", "transformed"]


# ---------------------------------------------------------------- discrete symmetries


def _kv_groups(attn) -> int:
    n_kv = getattr(attn.cfg, "n_key_value_heads", None)
    return n_kv or attn.cfg.n_heads


@torch.no_grad()
def permute_heads_(model, layer: int, perm: Int[Tensor, "n_heads"]) -> None:
    """Relabel the heads of ``layer`` in place: new head h is old head perm[h] (its Q, K, V, biases, W_O).

    For grouped-query attention the permutation must move whole key/value groups: every query head
    of new group c must come from one old group σ(c); the shared K/V heads are permuted by σ.
    """
    attn = model.blocks[layer].attn
    n_heads, n_kv = attn.cfg.n_heads, _kv_groups(attn)
    perm = torch.as_tensor(perm)
    if sorted(perm.tolist()) != list(range(n_heads)):
        raise ValueError(f"not a permutation of {n_heads} heads: {perm.tolist()}")
    attn.W_Q.copy_(attn.W_Q[perm])
    attn.b_Q.copy_(attn.b_Q[perm])
    attn.W_O.copy_(attn.W_O[perm])
    if n_kv == n_heads:
        for name in ("W_K", "W_V", "b_K", "b_V"):
            getattr(attn, name).copy_(getattr(attn, name)[perm])
        return
    g = n_heads // n_kv
    groups = perm.view(n_kv, g) // g                      # old group of each new head, by new group
    if not (groups == groups[:, :1]).all():
        raise ValueError(f"permutation {perm.tolist()} splits a key/value group of size {g}")
    sigma = groups[:, 0]
    for name in ("_W_K", "_W_V", "_b_K", "_b_V"):
        getattr(attn, name).copy_(getattr(attn, name)[sigma])


def inverse(perm: Int[Tensor, "n"]) -> Int[Tensor, "n"]:
    return torch.argsort(torch.as_tensor(perm))


@torch.no_grad()
def mlp_permutation_(model, layer: int, perm: Int[Tensor, "d_mlp"]) -> None:
    """Relabel the MLP neurons of ``layer`` in place: columns of W_in (and W_gate), b_in, rows of W_out."""
    mlp = model.blocks[layer].mlp
    mlp.W_in.copy_(mlp.W_in[:, perm])
    mlp.b_in.copy_(mlp.b_in[perm])
    mlp.W_out.copy_(mlp.W_out[perm])
    if hasattr(mlp, "W_gate"):
        mlp.W_gate.copy_(mlp.W_gate[:, perm])


# ---------------------------------------------------------------- continuous symmetries


@torch.no_grad()
def qk_gauge_(model, layer: int, head: int, A: Float[Tensor, "d_head d_head"]) -> None:
    """W_Q → W_Q A, b_Q → b_Q A, W_K → W_K A^{−T}, b_K → b_K A^{−T} for one head: every score
    q·kᵀ = (xW_Q + b_Q) A A^{−1} (xW_K + b_K)ᵀ is unchanged (models without rotary embeddings)."""
    attn = model.blocks[layer].attn
    if _kv_groups(attn) != attn.cfg.n_heads:
        raise ValueError("the per-head QK gauge needs one key per query head")
    A_inv_T = torch.linalg.inv(A).T
    attn.W_Q[head] = attn.W_Q[head] @ A
    attn.b_Q[head] = attn.b_Q[head] @ A
    attn.W_K[head] = attn.W_K[head] @ A_inv_T
    attn.b_K[head] = attn.b_K[head] @ A_inv_T


@torch.no_grad()
def ov_gauge_(model, layer: int, head: int, B: Float[Tensor, "d_head d_head"]) -> None:
    """W_V → W_V B, b_V → b_V B, W_O → B^{−1} W_O for one head: z W_O = Σ_j A_ij (v_j B) B^{−1} W_O."""
    attn = model.blocks[layer].attn
    if _kv_groups(attn) != attn.cfg.n_heads:
        raise ValueError("the per-head OV gauge needs one value per query head")
    attn.W_V[head] = attn.W_V[head] @ B
    attn.b_V[head] = attn.b_V[head] @ B
    attn.W_O[head] = torch.linalg.inv(B) @ attn.W_O[head]


def random_orthogonal_fixing_ones(d: int, generator: torch.Generator, dtype=torch.float64) -> Float[Tensor, "d d"]:
    """A random orthogonal R with R·1 = 1: a rotation of the (d−1)-dim subspace orthogonal to 1."""
    M = torch.randn(d, d, generator=generator, dtype=dtype)
    M[:, 0] = 1.0
    P, _ = torch.linalg.qr(M)                      # first column ∝ 1, the rest span its complement
    P[:, 0] = torch.ones(d, dtype=dtype) / math.sqrt(d)
    Q, _ = torch.linalg.qr(torch.randn(d - 1, d - 1, generator=generator, dtype=dtype))
    block = torch.eye(d, dtype=dtype)
    block[1:, 1:] = Q
    return P @ block @ P.T


@torch.no_grad()
def residual_rotation_(model, R: Float[Tensor, "d_model d_model"], check: bool = True) -> None:
    """Rotate the residual stream's basis by an orthogonal R in a model whose norms are folded:
    writers (W_E, W_pos, W_O, b_O, W_out, b_out) → ·R, readers (W_Q, W_K, W_V, W_in, W_gate, W_U) → Rᵀ·.

    Exact because the stream is only ever read through a weightless norm and written by sums:
    RMSNormPre x/rms(x) commutes with every orthogonal R; LayerNormPre (x − mean(x))/std(x) with
    those that fix the all-ones vector (R·1 = 1), which this function then requires (``check=False``
    skips that, to show what breaks).
    """
    kind = model.cfg.normalization_type
    if kind not in ("LNPre", "RMSPre"):
        raise ValueError(f"needs folded norms ('LNPre' or 'RMSPre'), not {kind!r}: a norm's weight breaks the symmetry")
    R = R.to(model.W_E.dtype)
    ones = torch.ones(R.shape[0], dtype=R.dtype)
    if check and kind == "LNPre" and not torch.allclose(R @ ones, ones, atol=1e-6):
        raise ValueError("with LayerNorm the rotation must fix the all-ones vector (R·1 = 1)")

    def read(W):                      # (..., d_model, d_out): Rᵀ W on the d_model axis
        W.copy_(torch.einsum("dm,...de->...me", R, W))

    def write(W):                     # (..., d_model): W R
        W.copy_(W @ R)

    write(model.embed.W_E)
    if hasattr(model, "pos_embed") and hasattr(model.pos_embed, "W_pos"):
        write(model.pos_embed.W_pos)
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        for name in ("W_Q", "W_K", "W_V", "_W_K", "_W_V"):
            if name in attn._parameters:
                read(attn._parameters[name])
        write(attn.W_O)
        write(attn.b_O)
        read(mlp.W_in)
        if hasattr(mlp, "W_gate"):
            read(mlp.W_gate)
        write(mlp.W_out)
        write(mlp.b_out)
    read(model.unembed.W_U)


@contextlib.contextmanager
def transformed(model, only: str | None = None):
    """Run a block of in-place transformations and restore the parameters afterwards (bitwise):
    all of them, or only those whose name contains ``only`` (e.g. ".attn.", to save copying)."""
    saved = {name: p.detach().clone() for name, p in model.named_parameters() if only is None or only in name}
    try:
        yield model
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in saved:
                    p.copy_(saved[name])


# ---------------------------------------------------------------- the group's size


def log10_factorial(n: int) -> float:
    """log10(n!) = lnΓ(n + 1)/ln 10 (exact to double precision, for n where n! has no float)."""
    return math.lgamma(n + 1) / math.log(10)


def group_size(model) -> dict:
    """The size of the discrete symmetry group and the dimension of the continuous one, from the
    model's own shapes (works on a meta-device model).

    Discrete: per layer the head relabellings S_{n_heads} (with n_kv key/value groups of g query
    heads, S_{n_kv} ≀ S_g of order n_kv!·(g!)^{n_kv}) and the neuron relabellings S_{d_mlp}.
    Continuous, per key/value group: the OV gauge GL(d_head) (d_head² dimensions); the QK gauge
    GL(d_head) (d_head²), or with rotary embeddings only the maps commuting with the rotations, one
    complex scalar per rotated pair (d_head dimensions); and on the residual stream of a folded
    model O(d_model − 1) for LayerNorm (it must fix 1) or O(d_model) for RMSNorm.
    """
    cfg = model.cfg
    n_layers, n_heads, d_head, d_model = len(model.blocks), cfg.n_heads, cfg.d_head, cfg.d_model
    d_mlp = model.blocks[0].mlp.W_in.shape[1]
    n_kv = cfg.n_key_value_heads or n_heads
    g = n_heads // n_kv
    head_order_per_layer = math.factorial(n_kv) * math.factorial(g) ** n_kv
    head_order = head_order_per_layer ** n_layers
    rotary = cfg.positional_embedding_type == "rotary"
    qk_dim = d_head if rotary else d_head ** 2
    ov_dim = d_head ** 2
    d_stream = d_model - 1 if cfg.normalization_type in ("LN", "LNPre") else d_model
    rotation_dim = d_stream * (d_stream - 1) // 2
    continuous_heads = n_layers * n_kv * (qk_dim + ov_dim)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_kv, "d_head": d_head, "d_model": d_model,
        "d_mlp": d_mlp,
        "head_group_order_per_layer": head_order_per_layer,
        "head_group_order": str(head_order) if head_order > 2 ** 53 else head_order,
        "log10_head_group": n_layers * math.log10(head_order_per_layer),
        "log10_mlp_group": n_layers * log10_factorial(d_mlp),
        "log10_discrete_group": n_layers * (math.log10(head_order_per_layer) + log10_factorial(d_mlp)),
        "continuous_dim_per_kv_group": qk_dim + ov_dim,
        "continuous_dim_heads": continuous_heads,
        "continuous_dim_residual_rotation": rotation_dim,
        "continuous_dim_total": continuous_heads + rotation_dim,
        "n_parameters": n_params,
        "continuous_fraction_of_parameters": (continuous_heads + rotation_dim) / n_params,
    }


# ---------------------------------------------------------------- run


@torch.no_grad()
def _logits(model, tokens):
    return model(tokens).to(torch.float64)


@torch.no_grad()
def head_permutation_check(model, tokens: Int[Tensor, "batch pos"], seed: int = 0) -> dict:
    """Permute the heads of every layer (at random, respecting key/value groups) and compare logits;
    a control that moves W_Q, W_K, W_V but not W_O must change them."""
    generator = torch.Generator().manual_seed(seed)
    base = _logits(model, tokens)
    n_heads, n_kv = model.cfg.n_heads, model.cfg.n_key_value_heads or model.cfg.n_heads
    g = n_heads // n_kv
    with transformed(model, only=".attn."):
        for layer in range(model.cfg.n_layers):
            sigma = torch.randperm(n_kv, generator=generator)
            perm = torch.cat([sigma[c] * g + torch.randperm(g, generator=generator) for c in range(n_kv)])
            permute_heads_(model, layer, perm)
        permuted = _logits(model, tokens)
    with transformed(model, only="blocks.0.attn."):
        attn = model.blocks[0].attn
        perm = torch.roll(torch.arange(n_heads), g)     # a group-respecting relabelling
        W_O = attn.W_O.detach().clone()
        permute_heads_(model, 0, perm)
        attn.W_O.copy_(W_O)                              # the control: W_O left in place
        broken = _logits(model, tokens)
    return {"max_abs_logit_diff": (permuted - base).abs().max().item(),
            "max_abs_logit": base.abs().max().item(),
            "control_max_abs_logit_diff": (broken - base).abs().max().item()}


def run(out_dir: Path, identity_model: str = "gpt2-random", trained_model: str = "smollm2") -> dict:
    """4B on GPT-2 small's shape (random weights) and on SmolLM2 (grouped-query attention)."""
    from .mechanics import DEFAULT_CLAIM, prompt_pair, prompt_tokens
    from .models import MODELS, load
    from .optimization import gpt2_small_shapes

    shapes = gpt2_small_shapes()
    out: dict = {"group_gpt2_small": {"model": "GPT-2 small (architecture on the meta device)", **group_size(shapes)},
                 # 4A: the number of distinct full-length inputs a brute-force check of GPT-2 small would face
                 "input_space_gpt2_small": {"n_ctx": shapes.cfg.n_ctx, "d_vocab": shapes.cfg.d_vocab,
                                            "log10_full_length_inputs": shapes.cfg.n_ctx * math.log10(shapes.cfg.d_vocab)}}
    sycophantic, _ = prompt_pair(DEFAULT_CLAIM)
    for key, name in (("random", identity_model), ("trained", trained_model)):
        model = load(name)
        tokens = prompt_tokens(model, sycophantic)
        result = {"model": MODELS[name].label, "n_tokens": tokens.shape[1], "group": group_size(model),
                  "heads": head_permutation_check(model, tokens)}
        generator = torch.Generator().manual_seed(1)
        base = _logits(model, tokens)
        with transformed(model):
            for layer in range(model.cfg.n_layers):
                mlp_permutation_(model, layer, torch.randperm(model.blocks[layer].mlp.W_in.shape[1], generator=generator))
            result["mlp_max_abs_logit_diff"] = (_logits(model, tokens) - base).abs().max().item()
        if model.cfg.positional_embedding_type != "rotary":
            with transformed(model):
                for head in range(model.cfg.n_heads):
                    A = torch.eye(model.cfg.d_head) + 0.3 * torch.randn(model.cfg.d_head, model.cfg.d_head, generator=generator)
                    qk_gauge_(model, 0, head, A)
                    ov_gauge_(model, 0, head, A)
                result["gauge_max_abs_logit_diff"] = (_logits(model, tokens) - base).abs().max().item()
        with transformed(model):
            if model.cfg.normalization_type == "LNPre":
                R = random_orthogonal_fixing_ones(model.cfg.d_model, generator)
            else:
                R = torch.linalg.qr(torch.randn(model.cfg.d_model, model.cfg.d_model, generator=generator,
                                                dtype=torch.float64))[0]
            residual_rotation_(model, R)
            result["rotation_max_abs_logit_diff"] = (_logits(model, tokens) - base).abs().max().item()
        result["max_abs_logit"] = base.abs().max().item()
        out[key] = result
    return out
