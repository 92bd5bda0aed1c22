"""Day 57: SAE circuit theory (ARENA 1.4.2 SAE circuits): gradients between latents, and transcoders.

An SAE at ``blocks.L.hook_resid_pre`` turns the residual stream x_L into sparse latents a = σ(x_L W_enc + b)
and back, x̂_L = a W_dec + b_dec. Two SAEs at layers L < M and the model between them make a function
a_M = F(a_L): decode, run blocks L … M-1, encode. Its Jacobian, restricted to the active latents (zero latents
carry no gradient through a TopK or ReLU encoder), is a sparse circuit between latents:

    ∂a_M[m] / ∂a_L[n] = 1[a_M[m] > 0] · W_enc^M[:, j_m]ᵀ · J_blocks(x̂_L)[p_m, p_n] · W_dec^L[i_n]

with (p, i) the position and latent index of each active entry, and J_blocks[q, p] = ∂x_M[q] / ∂x_L[p] the
Jacobian of the blocks between (zero for p > q: causal). For adjacent layers J_blocks = I + J_block, so every
connection is the *direct path* W_dec^L[i] · W_enc^M[:, j] (same position, the input-independent "pullback") plus
what block L adds. The same chain rule gives the gradient of latents with respect to a scale on each token's
embedding (token-to-latent: J_blocks from the embedding to L times the embedding itself) and of the logits with
respect to latents (latent-to-logit: J of the blocks after L, the final norm, and W_U).

ARENA computes these Jacobians with ``torch.func.jacrev`` on functions of the *nonzero* latent values only (a
``SparseTensor`` carries their indices), which is what ``latent_acts_to_later_latent_acts``, ``tokens_to_latent_acts``
and ``latent_acts_to_logits`` are for. This module keeps those, and writes the chain rule out by hand as well:
forward-mode derivatives (JVPs) of every component of a TransformerLens block, for GPT-2 (LayerNorm, learned
positions, GELU MLP, multi-head attention) and for SmolLM2 (RMSNorm, rotary positions, gated SiLU MLP,
grouped-query attention):

    LayerNorm:   y = c / s,  c = x - x̄,  s = √(mean c² + ε)       dy = (dc - y · mean(y ⊙ dc)) / s
    RMSNorm:     y = x / r,  r = √(mean x² + ε)                   dy = (dx - y · mean(y ⊙ dx)) / r
    attention:   A = softmax(q kᵀ / √d_h + causal mask)            dA = A ⊙ (dS - Σ_k A ⊙ dS),
                 dS = (dq kᵀ + q dkᵀ) / √d_h,  z = A v,            dz = dA v + A dv
                 rotary: q, k rotated per position (linear, so dq, dk rotate the same way);
                 grouped-query: head h reads key/value group h // (n_heads / n_kv_heads)
    gated MLP:   post = SiLU(x W_gate) ⊙ (x W_in)                   dpost = SiLU'(·) ⊙ dx W_gate ⊙ (x W_in) + SiLU(·) ⊙ dx W_in

In float64 the hand-written chain rule equals ``torch.func.jacrev`` to rounding (the tests).

**SmolLM2's attention sinks.** Position 0 of every window (and sometimes a later one) carries a residual vector
100-200× the median norm from layer 12 on; heads park their attention there. Day 47's SAEs never read those
positions (``sink_mask``). Here the sinks keep their true residual when the SAE's reconstruction is spliced in and
never carry a latent: decoding the sink through the SAE would shrink it and move every later attention pattern
(the experiment measures the cost in next-token loss). GPT-2-shaped random models have no sinks, and then every
function is exactly ARENA's.

**Transcoders.** A transcoder reads the MLP's input (here TransformerLens's ``blocks.T.ln2.hook_normalized``, the
normalised residual; SmolLM2's RMSNorm weight is folded into W_gate and W_in) and predicts the MLP's output
(``blocks.T.hook_mlp_out``): ŷ = ReLU(x W_enc + b_enc) W_dec + b_dec, trained with an L1 penalty, like the
Dunefsky et al. transcoders ARENA loads. Its encoder reads a *normalised* stream, so the tokens that drive a
latent directly (its de-embedding) are not W_E W_enc but N(W_E + MLP₀(N(W_E))) W_enc: the norm rescales each
token's row (RMSNorm: divide by its RMS; LayerNorm: centre, then divide by the standard deviation), and the first
MLP adds to every token an "extended embedding" that in SmolLM2 is ≈ 20× longer than the token embedding itself.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

sae_theory = importlib.import_module("days.046.sae_theory")
sae_train = importlib.import_module("days.047.sae_train")
features = importlib.import_module("days.048.features")

# ---------------------------------------------------------------- sparse tensors


class SparseTensor:
    """ARENA's SparseTensor: one tensor held two ways, dense (with its zeros) and sparse, the tuple
    (nonzero values [n_nonzero], their indices [n_nonzero, ndim], the dense shape). Indices come in row-major
    order, as ``torch.argwhere`` (and a coalesced ``torch.sparse_coo_tensor``) lists them.

    ARENA keeps the entries ``> 0`` (latent activations are non-negative); ours keeps those ``!= 0``, which is the
    same on latents and agrees with ``Tensor.to_sparse`` on any tensor. ``values`` and ``indices`` are not squeezed
    (ARENA squeezes them, which turns a single nonzero entry into a 0-d tensor)."""

    sparse: tuple[Tensor, Tensor, tuple[int, ...]]
    dense: Tensor

    def __init__(self, sparse: tuple[Tensor, Tensor, tuple[int, ...]], dense: Tensor):
        self.sparse = sparse
        self.dense = dense

    @classmethod
    def from_dense(cls, dense: Tensor) -> "SparseTensor":
        nonzero = dense != 0
        return cls((dense[nonzero], torch.argwhere(nonzero), tuple(dense.shape)), dense)

    @classmethod
    def from_sparse(cls, sparse: tuple[Tensor, Tensor, tuple[int, ...]]) -> "SparseTensor":
        """The dense tensor with the values scattered to their indices (out of place, so that torch.func can
        differentiate it with respect to the values)."""
        values, indices, shape = sparse
        dense = torch.zeros(shape, dtype=values.dtype, device=values.device)
        dense = dense.index_put(tuple(indices.unbind(-1)), values)
        return cls(sparse, dense)

    @property
    def values(self) -> Tensor:
        return self.sparse[0]

    @property
    def indices(self) -> Tensor:
        return self.sparse[1]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.sparse[2]


# ---------------------------------------------------------------- the SAEs, the model, the sinks


def hook_layer(sae) -> int:
    """L for an SAE at ``blocks.L.hook_resid_pre`` (day 47's ScaledSAE.hook_name, or sae-lens's cfg.metadata)."""
    name = getattr(sae, "hook_name", None) or sae.cfg.metadata.hook_name
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_pre", name)
    if match is None:
        raise ValueError(f"an SAE on the residual stream before a block is needed, not {name!r}")
    return int(match.group(1))


def encoder_decoder(sae) -> tuple[Tensor, Tensor]:
    """(W_enc [d_model, d_sae], W_dec [d_sae, d_model]) of an SAE in the model's units: the linear maps its
    encoder's pre-activations and its decoder apply to the residual stream. Day 47's ScaledSAE reads c·x and writes
    x̂ / c; day 46's SAEs use unit decoder rows; sae-lens's use W_dec as stored."""
    scale = getattr(sae, "scale", 1.0)
    inner = getattr(sae, "sae", sae)
    W_dec = inner.W_dec_normalized if hasattr(inner, "W_dec_normalized") else inner.W_dec
    return inner.W_enc * scale, W_dec / scale


def float64_model(model):
    """A float64 copy of a HookedTransformer (the original is untouched), with its rotary tables recomputed in
    float64 (a cast would keep float32's rounding of sin and cos)."""
    model64 = copy.deepcopy(model).to(torch.float64)
    if model64.cfg.positional_embedding_type == "rotary":
        for block in model64.blocks:
            attn = block.attn
            sin, cos = attn.calculate_sin_cos_rotary(model64.cfg.rotary_dim, attn.rotary_sin.shape[0],
                                                     base=attn._rotary_base(), dtype=torch.float64)
            attn.rotary_sin, attn.rotary_cos = sin, cos
    return model64.eval()


def sinks(resid: Float[Tensor, "batch seq d_model"]) -> Tensor:
    """[batch, seq] True at SmolLM2's attention sinks (day 47's rule: a norm above 10 × the median). None in a
    GPT-2-shaped random model."""
    return sae_train.sink_mask(resid)


@torch.no_grad()
def residual_at(model, tokens: Int[Tensor, "batch seq"], layer: int) -> Float[Tensor, "batch seq d_model"]:
    """``blocks.{layer}.hook_resid_pre`` (the residual stream entering block ``layer``; layer = n_layers: the final
    one), the forward pass stopped there."""
    return model(tokens, stop_at_layer=layer)


def encode_latents(sae, resid: Tensor, sink: Tensor | None = None) -> Tensor:
    """The SAE's latents, zero at the sinks (an SAE never reads a sink)."""
    acts = sae.encode(resid)
    return acts if sink is None else torch.where(sink[..., None], torch.zeros_like(acts), acts)


def splice(sae, acts: Tensor, sink: Tensor | None = None, resid: Tensor | None = None) -> Tensor:
    """The residual stream rebuilt from the latents, x̂ = decode(a), with the true residual kept at the sinks."""
    recon = sae.decode(acts)
    return recon if sink is None else torch.where(sink[..., None], resid, recon)


# ---------------------------------------------------------------- ARENA's gradients, by torch.func


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters that do not require grad inside the block (restored after). torch.func differentiates only with
    respect to its inputs, but autograd still builds, and under jacrev's vmap batches, the gradients of parameters
    that require grad: on SmolLM2 in float64 that cost gigabytes for nothing."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)



def latent_acts_to_later_latent_acts(latent_acts_nonzero: Float[Tensor, " nonzero_acts"],
                                     latent_acts_nonzero_inds: Int[Tensor, "nonzero_acts n_indices"],
                                     latent_acts_prev_shape: tuple[int, ...], sae_from, sae_to, model,
                                     sink: Tensor | None = None, resid_from: Tensor | None = None
                                     ) -> tuple[Tensor, tuple[Tensor]]:
    """ARENA's latent_acts_to_later_latent_acts: the earlier SAE's nonzero latents → dense → its decoder → the blocks
    from its layer to the later SAE's → the later SAE's encoder. Returns (the later latents' nonzero values, (their
    dense tensor,)), sparse in and out because jacrev cannot differentiate a real sparse tensor. ``sink`` and
    ``resid_from``: the sink positions, which keep the true residual ``resid_from`` and carry no latent."""
    latent_acts_prev = SparseTensor.from_sparse((latent_acts_nonzero, latent_acts_nonzero_inds,
                                                 latent_acts_prev_shape)).dense
    resid_stream_from = splice(sae_from, latent_acts_prev, sink, resid_from)
    resid_stream_next = model.forward(resid_stream_from, start_at_layer=hook_layer(sae_from),
                                      stop_at_layer=hook_layer(sae_to))
    latent_acts_next_recon = SparseTensor.from_dense(encode_latents(sae_to, resid_stream_next, sink))
    return latent_acts_next_recon.sparse[0], (latent_acts_next_recon.dense,)


def latent_to_latent_gradients(tokens: Int[Tensor, "batch seq"], sae_from, sae_to, model
                               ) -> tuple[Tensor, SparseTensor, SparseTensor, SparseTensor]:
    """ARENA's latent_to_latent_gradients: the Jacobian between every active latent of the earlier SAE and every
    active latent of the later one, evaluated at the earlier SAE's reconstruction. Returns (gradients
    [n_next_recon_active, n_prev_active], the earlier latents, the later latents on the true residual, the later
    latents downstream of the earlier SAE's reconstruction). ARENA reads the true latents from
    run_with_cache_with_saes (error term on); we encode the cached residual streams, which is the same."""
    with torch.no_grad():
        resid_from = residual_at(model, tokens, hook_layer(sae_from))
        resid_to = model(resid_from, start_at_layer=hook_layer(sae_from), stop_at_layer=hook_layer(sae_to))
        sink = sinks(resid_from)
        latent_acts_prev = SparseTensor.from_dense(encode_latents(sae_from, resid_from, sink))
        latent_acts_next = SparseTensor.from_dense(encode_latents(sae_to, resid_to, sink))
    with frozen(model, sae_from, sae_to):
        gradients, (next_recon_dense,) = torch.func.jacrev(latent_acts_to_later_latent_acts, has_aux=True)(
            *latent_acts_prev.sparse, sae_from, sae_to, model, sink, resid_from)
    return gradients, latent_acts_prev, latent_acts_next, SparseTensor.from_dense(next_recon_dense.detach())


def tokens_to_latent_acts(token_scales: Float[Tensor, "batch seq"], tokens: Int[Tensor, "batch seq"], sae_from,
                          model, sink: Tensor | None = None) -> tuple[Tensor, tuple[Tensor]]:
    """ARENA's tokens_to_latent_acts: scale each position's embedding (the residual stream after the embedding:
    token + learned position in GPT-2, the token alone in SmolLM2, whose positions are rotary) by token_scales, run
    the blocks up to the SAE, encode. Returns (the nonzero latents, (their dense tensor,))."""
    resid_after_embed = model(tokens, stop_at_layer=0)
    resid_after_embed = einops.einsum(resid_after_embed, token_scales, "... seq d_model, ... seq -> ... seq d_model")
    resid_before_sae = model(resid_after_embed, start_at_layer=0, stop_at_layer=hook_layer(sae_from))
    sae_latents = SparseTensor.from_dense(encode_latents(sae_from, resid_before_sae, sink))
    return sae_latents.sparse[0], (sae_latents.dense,)


def token_to_latent_gradients(tokens: Int[Tensor, "batch seq"], sae, model, jacobian=torch.func.jacrev
                              ) -> tuple[Tensor, SparseTensor]:
    """ARENA's token_to_latent_gradients: ∂(each active latent) / ∂(the scale of each position's embedding), at
    scale 1, as [batch, seq, n_active]; and the latents. ``jacobian``: ARENA's jacrev (one backward pass per active
    latent) or torch.func.jacfwd (one forward pass per position: far cheaper here, where the positions are few and
    the latents many)."""
    with torch.no_grad():
        sink = sinks(residual_at(model, tokens, hook_layer(sae)))
    token_scales = torch.ones(tokens.shape, dtype=model.cfg.dtype)
    with frozen(model, sae):
        grads, (latent_acts_dense,) = jacobian(tokens_to_latent_acts, has_aux=True)(token_scales, tokens, sae, model, sink)
    grads = einops.rearrange(grads, "d_sae_nonzero batch seq -> batch seq d_sae_nonzero")
    return grads, SparseTensor.from_dense(latent_acts_dense.detach())


def latent_acts_to_logits(latent_acts_nonzero: Float[Tensor, " nonzero_acts"],
                          latent_acts_nonzero_inds: Int[Tensor, "nonzero_acts n_indices"],
                          latent_acts_shape: tuple[int, ...], sae, model, token_ids: list[int] | None = None,
                          sink: Tensor | None = None, resid: Tensor | None = None) -> tuple[Tensor, tuple[Tensor]]:
    """ARENA's latent_acts_to_logits: the nonzero latents → dense → decoder (the true residual kept at sinks) → the
    rest of the model. Returns (the final position's logits of token_ids, or all, (all its logits,))."""
    latent_acts = SparseTensor.from_sparse((latent_acts_nonzero, latent_acts_nonzero_inds, latent_acts_shape)).dense
    logits_recon = model(splice(sae, latent_acts, sink, resid), start_at_layer=hook_layer(sae))[0, -1]
    return (logits_recon if token_ids is None else logits_recon[token_ids]), (logits_recon,)


def latent_to_logit_gradients(tokens: Int[Tensor, "1 seq"], sae, model, k: int | None = None
                              ) -> tuple[Tensor, Tensor, Tensor, list[int] | None, SparseTensor]:
    """ARENA's latent_to_logit_gradients: the Jacobian of the final position's logits (the model's top k, or all)
    with respect to the SAE's active latents, at its reconstruction. Returns (gradients [k, n_active], the true
    logits, the logits from the reconstruction, token_ids, the latents). Batch size 1, as ARENA's."""
    if tokens.shape[0] != 1:
        raise ValueError("batch size 1 only (ARENA's restriction)")
    with torch.no_grad():
        resid = residual_at(model, tokens, hook_layer(sae))
        logits = model(resid, start_at_layer=hook_layer(sae))[0, -1]
        sink = sinks(resid)
        latent_acts = SparseTensor.from_dense(encode_latents(sae, resid, sink))
    token_ids = None if k is None else logits.topk(k).indices.tolist()
    with frozen(model, sae):
        grads, (logits_recon,) = torch.func.jacrev(latent_acts_to_logits, has_aux=True)(
            *latent_acts.sparse, sae, model, token_ids, sink, resid)
    return grads, logits, logits_recon.detach(), token_ids, latent_acts


# ---------------------------------------------------------------- the chain rule by hand (forward mode)
#
# Every function takes the primal x [batch, seq, d] and tangents dx [n, batch, seq, d] and returns (f(x), J_f dx):
# one pass pushes n directions through at once. Nothing here calls TransformerLens's forward: it reads the weights.


def _activation(name: str) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """(f, f') for the MLP activations of the supported models, derivatives written out."""
    if name == "gelu_new":
        c = math.sqrt(2 / math.pi)

        def f(x):
            return 0.5 * x * (1 + torch.tanh(c * (x + 0.044715 * x**3)))

        def df(x):
            t = torch.tanh(c * (x + 0.044715 * x**3))
            return 0.5 * (1 + t) + 0.5 * x * (1 - t**2) * c * (1 + 3 * 0.044715 * x**2)
        return f, df
    if name == "silu":
        return (lambda x: x * torch.sigmoid(x)), (lambda x: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))))
    if name == "relu":
        return torch.relu, (lambda x: (x > 0).to(x))
    raise NotImplementedError(f"activation {name!r}")


def norm_jvp(module, cfg, x: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
    """LayerNorm (centre, then divide by s = √(mean c² + ε)) or RMSNorm (divide by r = √(mean x² + ε)), with
    TransformerLens's folded variants (LNPre / RMSPre: no weight) and unfolded ones (weight w, bias b):
    dy = (dc - y · mean(y ⊙ dc)) / s."""
    kind = cfg.normalization_type
    if kind is None:
        return x, dx
    if kind.startswith("LN"):
        x, dx = x - x.mean(-1, keepdim=True), dx - dx.mean(-1, keepdim=True)
    elif not kind.startswith("RMS"):
        raise NotImplementedError(kind)
    scale = (x.pow(2).mean(-1, keepdim=True) + cfg.eps).sqrt()
    y = x / scale
    dy = (dx - y * (y * dx).mean(-1, keepdim=True)) / scale
    if kind in ("LN", "RMS"):
        y, dy = y * module.w, dy * module.w
        if kind == "LN":
            y = y + module.b
    return y, dy


def rotary(cfg, x: Float[Tensor, "... seq head d_head"]) -> Tensor:
    """Rotary positions, written from the definition: the first rotary_dim coordinates of a query or key at
    position p, taken as pairs (i, i + rotary_dim/2) (GPT-NeoX / Llama) or adjacent pairs (GPT-J), are rotated by the
    angles p · base^(-2i / rotary_dim). Linear in x, so tangents rotate the same way."""
    rd, seq = cfg.rotary_dim, x.shape[-3]
    inv_freq = cfg.rotary_base ** (-torch.arange(0, rd, 2, dtype=torch.float64) / rd)
    angles = torch.arange(seq, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = angles.repeat_interleave(2, -1) if cfg.rotary_adjacent_pairs else torch.cat([angles, angles], -1)
    cos, sin = angles.cos().to(x.dtype)[:, None, :], angles.sin().to(x.dtype)[:, None, :]
    xr, xp = x[..., :rd], x[..., rd:]
    if cfg.rotary_adjacent_pairs:
        flip = torch.stack([-xr[..., 1::2], xr[..., ::2]], -1).flatten(-2)
    else:
        flip = torch.cat([-xr[..., rd // 2:], xr[..., :rd // 2]], -1)
    return torch.cat([xr * cos + flip * sin, xp], -1)


def kv_groups(cfg) -> Tensor:
    """For each query head, the key/value head it reads: h // (n_heads / n_key_value_heads) under grouped-query
    attention (SmolLM2: 9 query heads on 3 key/value heads), h itself under multi-head attention (GPT-2)."""
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    return torch.arange(cfg.n_heads) // (cfg.n_heads // n_kv)


def attention_jvp(attn, cfg, x: Tensor, dx: Tensor, groups: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Causal attention on the normalised input x, and its JVP: q, k, v projections (keys and values per
    key/value group under grouped-query attention, ``groups`` mapping query heads to them), rotary positions, scores
    S = q kᵀ / √d_head, A = softmax(S), z = A v, out = Σ_h z_h W_O[h] + b_O; dA = A ⊙ (dS - Σ_k A ⊙ dS)."""
    if cfg.scale_attn_by_inverse_layer_idx or cfg.positional_embedding_type not in ("standard", "rotary"):
        raise NotImplementedError("the manual chain rule covers GPT-2's and Llama's attention")
    groups = kv_groups(cfg) if groups is None else groups
    W_K = attn._W_K if hasattr(attn, "_W_K") else attn.W_K        # [kv_heads, d_model, d_head]
    W_V = attn._W_V if hasattr(attn, "_W_V") else attn.W_V
    b_K = attn._b_K if hasattr(attn, "_b_K") else attn.b_K
    b_V = attn._b_V if hasattr(attn, "_b_V") else attn.b_V
    q = torch.einsum("...sd,hde->...she", x, attn.W_Q) + attn.b_Q
    dq = torch.einsum("...sd,hde->...she", dx, attn.W_Q)
    k = (torch.einsum("...sd,gde->...sge", x, W_K) + b_K)[..., groups, :]
    dk = torch.einsum("...sd,gde->...sge", dx, W_K)[..., groups, :]
    v = (torch.einsum("...sd,gde->...sge", x, W_V) + b_V)[..., groups, :]
    dv = torch.einsum("...sd,gde->...sge", dx, W_V)[..., groups, :]
    if cfg.positional_embedding_type == "rotary":
        q, dq, k, dk = rotary(cfg, q), rotary(cfg, dq), rotary(cfg, k), rotary(cfg, dk)
    scale = cfg.attn_scale if cfg.use_attn_scale else 1.0
    seq = x.shape[-2]
    future = torch.ones(seq, seq, dtype=torch.bool).triu(1)
    scores = torch.einsum("...qhe,...khe->...hqk", q, k) / scale
    pattern = torch.softmax(scores.masked_fill(future, -torch.inf), dim=-1)
    dscores = (torch.einsum("...qhe,...khe->...hqk", dq, k) + torch.einsum("...qhe,...khe->...hqk", q, dk)) / scale
    dscores = dscores.masked_fill(future, 0.0)
    dpattern = pattern * (dscores - (pattern * dscores).sum(-1, keepdim=True))
    z = torch.einsum("...hqk,...khe->...qhe", pattern, v)
    dz = torch.einsum("...hqk,...khe->...qhe", dpattern, v) + torch.einsum("...hqk,...khe->...qhe", pattern, dv)
    out = torch.einsum("...qhe,hed->...qd", z, attn.W_O) + attn.b_O
    return out, torch.einsum("...qhe,hed->...qd", dz, attn.W_O)


def mlp_jvp(mlp, cfg, x: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
    """GPT-2's MLP, post = f(x W_in + b_in), or SmolLM2's gated one, post = f(x W_gate) ⊙ (x W_in) + b_in; then
    post W_out + b_out; with f' written out."""
    f, df = _activation(cfg.act_fn)
    if cfg.gated_mlp:
        pre, dpre = x @ mlp.W_gate, dx @ mlp.W_gate
        lin, dlin = x @ mlp.W_in, dx @ mlp.W_in
        post = f(pre) * lin + mlp.b_in
        dpost = df(pre) * dpre * lin + f(pre) * dlin
    else:
        pre, dpre = x @ mlp.W_in + mlp.b_in, dx @ mlp.W_in
        post, dpost = f(pre), df(pre) * dpre
    return post @ mlp.W_out + mlp.b_out, dpost @ mlp.W_out


def block_jvp(block, cfg, x: Tensor, dx: Tensor, groups: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One pre-norm block: mid = x + attn(N₁(x)), out = mid + mlp(N₂(mid)), and its JVP."""
    if cfg.parallel_attn_mlp:
        raise NotImplementedError("sequential blocks only")
    n1, dn1 = norm_jvp(block.ln1, cfg, x, dx)
    a, da = attention_jvp(block.attn, cfg, n1, dn1, groups)
    mid, dmid = x + a, dx + da
    n2, dn2 = norm_jvp(block.ln2, cfg, mid, dmid)
    m, dm = mlp_jvp(block.mlp, cfg, n2, dn2)
    return mid + m, dmid + dm


def blocks_jvp(model, x: Tensor, dx: Tensor, start: int, stop: int | None = None,
               groups: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Blocks start … stop-1 (to the end when stop is None), then (stop is None) the final norm and the
    unembedding: the logits. The JVP of the whole path."""
    cfg = model.cfg
    for block in model.blocks[start:stop]:
        x, dx = block_jvp(block, cfg, x, dx, groups)
    if stop is None:
        x, dx = norm_jvp(model.ln_final, cfg, x, dx)
        x, dx = x @ model.W_U + model.b_U, dx @ model.W_U
    return x, dx


def embed(model, tokens: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq d_model"]:
    """The residual stream after the embedding, from the weights: W_E[t] (+ W_pos[p] for learned positions)."""
    x = model.W_E[tokens]
    if model.cfg.positional_embedding_type == "standard":
        x = x + model.W_pos[: tokens.shape[-1]]
    return x


def _point_tangents(shape: tuple[int, ...], indices: Tensor, vectors: Tensor) -> Tensor:
    """n tangents of the given [batch, seq, d] shape: tangent j is vectors[j] at (batch, seq) = indices[j], zero
    elsewhere."""
    n = indices.shape[0]
    dx = torch.zeros((n, *shape), dtype=vectors.dtype)
    dx[torch.arange(n), indices[:, 0], indices[:, 1]] = vectors
    return dx


def _read_out(W_enc: Tensor, active: SparseTensor, dx: Tensor) -> Tensor:
    """J[m, n] = W_enc[:, j_m] · dx[n, b_m, p_m]: the encoder's pre-activation derivatives at the active latents
    (a TopK / ReLU / JumpReLU latent that is active passes its pre-activation's derivative unchanged)."""
    b, p, j = active.indices.unbind(-1)
    return torch.einsum("nmd,dm->mn", dx[:, b, p], W_enc[:, j])


def manual_latent_to_latent_gradients(tokens, sae_from, sae_to, model) -> tuple[Tensor, SparseTensor, SparseTensor]:
    """latent_to_latent_gradients by the chain rule: tangent n is decoder row W_dec[i_n] at position p_n (its
    latent's derivative of x̂); pushed through the blocks in forward mode; read by the later encoder's columns at
    the active latents. Returns (gradients [n_next_recon_active, n_prev_active], the earlier latents, the later
    latents downstream of the reconstruction)."""
    L, M = hook_layer(sae_from), hook_layer(sae_to)
    W_enc_to, _ = encoder_decoder(sae_to)
    _, W_dec_from = encoder_decoder(sae_from)
    with torch.no_grad():
        resid_from = residual_at(model, tokens, L)
        sink = sinks(resid_from)
        prev = SparseTensor.from_dense(encode_latents(sae_from, resid_from, sink))
        point = splice(sae_from, prev.dense, sink, resid_from)
        dx = _point_tangents(tuple(point.shape), prev.indices[:, :2], W_dec_from[prev.indices[:, 2]])
        x_to, dx_to = blocks_jvp(model, point, dx, L, M)
        recon = SparseTensor.from_dense(encode_latents(sae_to, x_to, sink))
        return _read_out(W_enc_to, recon, dx_to), prev, recon


def manual_token_to_latent_gradients(tokens, sae, model) -> tuple[Tensor, SparseTensor]:
    """token_to_latent_gradients by the chain rule: the derivative of the embedding with respect to the scale of
    position (b, p) is the embedding itself at (b, p); pushed through blocks 0 … L-1; read by the encoder.
    Returns ([batch, seq, n_active], the latents)."""
    L = hook_layer(sae)
    W_enc, _ = encoder_decoder(sae)
    with torch.no_grad():
        x = embed(model, tokens)
        positions = torch.cartesian_prod(torch.arange(tokens.shape[0]), torch.arange(tokens.shape[1]))
        dx = _point_tangents(tuple(x.shape), positions, x[positions[:, 0], positions[:, 1]])
        x_L, dx_L = blocks_jvp(model, x, dx, 0, L)
        latents = SparseTensor.from_dense(encode_latents(sae, x_L, sinks(x_L)))
        grads = _read_out(W_enc, latents, dx_L)                       # [n_active, batch·seq]
        return einops.rearrange(grads, "m (b s) -> b s m", b=tokens.shape[0]), latents


def manual_latent_to_logit_gradients(tokens, sae, model, token_ids: list[int] | None = None
                                     ) -> tuple[Tensor, Tensor, SparseTensor]:
    """latent_to_logit_gradients by the chain rule: decoder rows as tangents, through the blocks after the SAE, the
    final norm and W_U, read at the last position. Returns (gradients [k, n_active], the reconstruction's last-position
    logits, the latents)."""
    L = hook_layer(sae)
    _, W_dec = encoder_decoder(sae)
    with torch.no_grad():
        resid = residual_at(model, tokens, L)
        sink = sinks(resid)
        latents = SparseTensor.from_dense(encode_latents(sae, resid, sink))
        point = splice(sae, latents.dense, sink, resid)
        dx = _point_tangents(tuple(point.shape), latents.indices[:, :2], W_dec[latents.indices[:, 2]])
        x, dx = blocks_jvp(model, point, dx, L, model.cfg.n_layers)
        x, dx = norm_jvp(model.ln_final, model.cfg, x[:, -1:], dx[:, :, -1:])      # the last position only
        logits, dlogits = x @ model.W_U + model.b_U, dx @ model.W_U
        ids = slice(None) if token_ids is None else token_ids
        return dlogits[:, 0, -1, ids].T, logits[0, -1], latents


def direct_path(sae_from, sae_to, prev: SparseTensor, nxt: SparseTensor) -> Tensor:
    """The input-independent part of latent-to-latent gradients between SAEs on the residual stream (the pullback,
    W_dec^L W_enc^M): the residual stream carries x_L to x_M unchanged, so latent n reaches latent m directly by
    W_dec^L[i_n] · W_enc^M[:, j_m] when they sit at the same position, and not at all otherwise."""
    _, W_dec = encoder_decoder(sae_from)
    W_enc, _ = encoder_decoder(sae_to)
    same = (nxt.indices[:, None, :2] == prev.indices[None, :, :2]).all(-1)
    return (W_dec[prev.indices[:, 2]] @ W_enc[:, nxt.indices[:, 2]]).T * same


@contextlib.contextmanager
def ablated_blocks(model, layers: range) -> Iterator[None]:
    """Zero the attention and MLP outputs of these blocks (the residual stream passes them unchanged)."""
    zero = [(f"blocks.{l}.hook_{part}_out", lambda act, hook: torch.zeros_like(act))
            for l in layers for part in ("attn", "mlp")]
    with model.hooks(fwd_hooks=zero):
        yield


# ---------------------------------------------------------------- transcoders


@dataclass
class TranscoderConfig(sae_theory.ToySAEConfig):
    """Day 46's ToySAEConfig plus the output width (d_out) and the hooks read and written."""

    d_out: int = 0
    layer: int = 1


class Transcoder(sae_theory.ToySAE):
    """A ReLU transcoder (Dunefsky et al.; sae-lens's ``Transcoder``): a = ReLU(x W_enc + b_enc) from the MLP's
    normalised input x, ŷ = a W_dec + b_dec for the MLP's output, W_dec with unit rows; trained by day 46's optimize
    on L = mean_d ((ŷ - y)·c)² + λ Σ_i a_i, with c = √d_out / E‖y‖ a constant that puts the target at unit RMS (so
    λ means the same at any layer). Unlike an SAE, no b_dec is subtracted from the input (it lives in the output
    space). The data source returns (x, y) pairs."""

    def __init__(self, cfg: TranscoderConfig, generate_batch: Callable[[int], tuple[Tensor, Tensor]] | None = None,
                 out_scale: float = 1.0):
        super().__init__(cfg, generate_batch=None)
        self._pairs = generate_batch
        self.out_scale = out_scale
        g = torch.Generator().manual_seed(cfg.seed + 1)
        W_dec = nn.init.kaiming_uniform_(torch.empty(cfg.d_sae, cfg.d_out), generator=g)
        self.W_dec = nn.Parameter(W_dec / W_dec.norm(dim=-1, keepdim=True))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))

    @property
    def hook_in(self) -> str:
        return f"blocks.{self.cfg.layer}.ln2.hook_normalized"

    @property
    def hook_out(self) -> str:
        return f"blocks.{self.cfg.layer}.hook_mlp_out"

    def generate_batch(self, batch_size: int) -> tuple[Tensor, Tensor]:
        x, y = self._pairs(batch_size)
        return x.to(self.W_enc), y.to(self.W_enc)

    def pre_acts(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        return x @ self.W_enc + self.b_enc

    def forward(self, batch: tuple[Tensor, Tensor], dead_mask: Tensor | None = None):
        """(loss_dict, loss, acts, ŷ) on a batch (x, y), the reconstruction loss in the target's scaled units."""
        x, y = batch
        acts = self.encode(x)
        y_hat = self.decode(acts)
        loss_dict = {"L_reconstruction": ((y_hat - y) * self.out_scale).pow(2).mean(-1),
                     "L_sparsity": self.sparsity_loss(acts, None)}
        return loss_dict, loss_dict["L_reconstruction"] + self.cfg.sparsity_coeff * loss_dict["L_sparsity"], acts, y_hat

    def transcode(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def to_sae_lens_transcoder(tc: Transcoder):
    """sae-lens's Transcoder with our weights (W_dec with unit rows)."""
    from sae_lens import Transcoder as SaeLensTranscoder
    from sae_lens import TranscoderConfig as SaeLensTranscoderConfig

    cfg = SaeLensTranscoderConfig(d_in=tc.cfg.d_in, d_sae=tc.cfg.d_sae, d_out=tc.cfg.d_out, apply_b_dec_to_input=False,
                                  dtype=str(tc.W_enc.dtype).removeprefix("torch."), device="cpu")
    theirs = SaeLensTranscoder(cfg)
    with torch.no_grad():
        theirs.W_enc.data = tc.W_enc.detach().clone()
        theirs.b_enc.data = tc.b_enc.detach().clone()
        theirs.W_dec.data = tc.W_dec_normalized.detach().clone()
        theirs.b_dec.data = tc.b_dec.detach().clone()
    return theirs


def transcoder_keep(resid_mid: Float[Tensor, "batch seq d_model"]) -> Tensor:
    """[batch, seq] True where a transcoder stands in for its MLP: every position ≥ 1 that is not a sink of the
    MLP's (unnormalised) input stream. Position 0 is always left alone: SmolLM2's first MLPs build the sink there."""
    keep = ~sinks(resid_mid)
    keep[:, 0] = False
    return keep


@torch.no_grad()
def mlp_pairs(model, tokens: Int[Tensor, "batch seq"], layer: int, batch_size: int = 16, return_tokens: bool = False):
    """(the MLP's normalised input, its output) [n, d_model] each at the positions transcoder_keep marks: a
    transcoder's data; with return_tokens, also the token ids at those positions."""
    names = [f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.hook_resid_mid"]
    xs, ys, ids = [], [], []
    for start in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[start:start + batch_size], names_filter=names, stop_at_layer=layer + 1)
        keep = transcoder_keep(cache[names[2]])
        xs.append(cache[names[0]][keep])
        ys.append(cache[names[1]][keep])
        ids.append(tokens[start:start + batch_size][keep])
    return (torch.cat(xs), torch.cat(ys)) + ((torch.cat(ids),) if return_tokens else ())


def train_transcoder(x: Tensor, y: Tensor, cfg: TranscoderConfig, steps: int, batch_size: int, lr: float,
                     log_freq: int = 100) -> tuple[Transcoder, dict]:
    """Day 46's optimize (Adam, unit decoder rows) on shuffled (x, y) batches (day 47's batch order)."""
    out_scale = math.sqrt(y.shape[-1]) / y.norm(dim=-1).mean().item()
    batches = sae_train.activation_batches(torch.cat([x, y], -1), batch_size, cfg.seed)

    def pairs(n: int) -> tuple[Tensor, Tensor]:
        xy = next(batches)
        return xy[:, : x.shape[-1]], xy[:, x.shape[-1]:]

    torch.manual_seed(cfg.seed)
    tc = Transcoder(cfg, pairs, out_scale)
    log = tc.optimize(batch_size=batch_size, steps=steps, lr=lr, log_freq=log_freq)
    return tc.eval(), log


@contextlib.contextmanager
def transcoder_replacement(model, transcoders: list[Transcoder], cache: dict | None = None) -> Iterator[dict]:
    """Hooks that put each transcoder's output in place of its MLP's at the positions transcoder_keep marks, and
    store its latents in ``cache`` under ``{hook_out}.hook_transcoder_acts``. (sae-lens's HookedSAETransformer attaches
    an SAE at one hook; a transcoder reads one and writes another, so ARENA splices it with hooks too.)"""
    cache = {} if cache is None else cache
    seen: dict[int, dict[str, Tensor]] = {}

    def mid(act, hook, i):
        seen.setdefault(i, {})["keep"] = transcoder_keep(act)
        return act

    def read(act, hook, i):
        seen[i]["x"] = act
        return act

    def write(act, hook, i, tc):
        acts = tc.encode(seen[i]["x"])
        cache[f"{tc.hook_out}.hook_transcoder_acts"] = acts
        return torch.where(seen[i]["keep"][..., None], tc.decode(acts).to(act.dtype), act)

    hooks = []
    for i, tc in enumerate(transcoders):
        hooks += [(f"blocks.{tc.cfg.layer}.hook_resid_mid", partial(mid, i=i)), (tc.hook_in, partial(read, i=i)),
                  (tc.hook_out, partial(write, i=i, tc=tc))]
    with model.hooks(fwd_hooks=hooks):
        yield cache


def run_with_cache_with_transcoder(model, transcoders: list[Transcoder], tokens: Int[Tensor, "batch seq"],
                                   names_filter: list[str] | None = None, **kwargs) -> tuple[Tensor, dict[str, Tensor]]:
    """ARENA's run_with_cache_with_transcoder: the model with its MLPs replaced by the transcoders (see
    transcoder_replacement), returning (logits, the cache of ``names_filter`` plus every transcoder's latents);
    keyword arguments go to run_with_cache (e.g. stop_at_layer)."""
    with transcoder_replacement(model, transcoders) as cache:
        logits, model_cache = model.run_with_cache(tokens, names_filter=names_filter or [], **kwargs)
    return logits, dict(model_cache.items()) | cache


@torch.no_grad()
def transcoder_metrics(model, tc: Transcoder, tokens: Int[Tensor, "batch seq"], batch_size: int = 8) -> dict:
    """L0, explained variance of the MLP's output (day 47's definition) and the CE loss recovered when the transcoder
    replaces the MLP, (CE_zero - CE_tc) / (CE_zero - CE_clean), CE_zero with the MLP's output zeroed at the same
    positions."""
    x, y = mlp_pairs(model, tokens, tc.cfg.layer)
    acts = tc.encode(x)
    out = {"l0": sae_train.l0_norm(acts), "explained_variance": sae_train.explained_variance(y, tc.decode(acts)),
           "dead_fraction": sae_train.dead_fraction(acts), "n_tokens": x.shape[0]}
    zero_tc = copy.deepcopy(tc)             # a transcoder that writes 0: the MLP zero-ablated at the same positions
    zero_tc.W_dec.data.zero_()
    zero_tc.b_dec.data.zero_()
    sums = {"ce_clean": 0.0, "ce_transcoder": 0.0, "ce_zero": 0.0}
    count = 0
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start:start + batch_size]
        for name, replacement in (("ce_clean", []), ("ce_transcoder", [tc]), ("ce_zero", [zero_tc])):
            with transcoder_replacement(model, replacement):
                sums[name] += sae_train.token_losses(model(batch), batch).double().sum().item()
        count += (batch.shape[1] - 1) * batch.shape[0]
    out |= {k: v / count for k, v in sums.items()}
    out["ce_loss_recovered"] = (out["ce_zero"] - out["ce_transcoder"]) / (out["ce_zero"] - out["ce_clean"])
    return out


# ---------------------------------------------------------------- de-embeddings


def normalized(cfg, x: Tensor) -> Tensor:
    """The model's own normalisation without weights (what ``ln*.hook_normalized`` holds): LayerNorm centres, then
    divides by √(mean c² + ε); RMSNorm divides by √(mean x² + ε). (ARENA divides by ``std``, which is Bessel-corrected:
    a constant factor √(d/(d-1)) away, the same ranking.)"""
    return norm_jvp(None, _folded(cfg), x, torch.zeros_like(x))[0]


def _folded(cfg):
    """cfg with its normalisation read as the weightless variant."""
    kind = cfg.normalization_type
    return cfg if kind in (None, "LNPre", "RMSPre") else _Cfg(kind + "Pre", cfg.eps)


@dataclass
class _Cfg:
    normalization_type: str
    eps: float


@torch.no_grad()
def create_extended_embedding(model, token_ids: Tensor | None = None, chunk: int = 4096) -> Float[Tensor, "d_vocab d_model"]:
    """ARENA's create_extended_embedding: each token's embedding plus what the first MLP adds to it,
    W_E + MLP₀(N(W_E)) (no attention: a token alone, as if attention wrote nothing), normalised as the next
    norm will normalise it. ARENA's GPT-2 version leaves out the positional embedding; SmolLM2 has none (rotary).
    ``token_ids``: only these rows (the whole vocabulary costs SmolLM2's MLP on 49,152 tokens, seconds)."""
    block = model.blocks[0]
    W_E_all = model.W_E if token_ids is None else model.W_E[token_ids]
    out = []
    for start in range(0, W_E_all.shape[0], chunk):
        W_E = W_E_all[start:start + chunk, None, :]                     # [chunk, seq=1, d_model]
        out.append((W_E + block.mlp(block.ln2(W_E)))[:, 0])
    return normalized(model.cfg, torch.cat(out))


def deembeddings(model, tc: Transcoder, kind: str = "extended", latents: list[int] | None = None,
                 token_ids: Tensor | None = None) -> Float[Tensor, "d_vocab n_latents"]:
    """What each token contributes to a transcoder latent's pre-activation along the direct path from the embedding:
    "raw" W_E W_enc (ARENA's first de-embedding), "normalized" N(W_E) W_enc (the norm applied to the token alone),
    "extended" N(W_E + MLP₀(N(W_E))) W_enc (ARENA's extended embedding: the correction). Rows: every token, or
    ``token_ids``; columns: every latent, or ``latents``."""
    W_enc = tc.W_enc if latents is None else tc.W_enc[:, latents]
    with torch.no_grad():
        W_E = model.W_E if token_ids is None else model.W_E[token_ids]
        if kind == "normalized":
            W_E = normalized(model.cfg, W_E)
        elif kind == "extended":
            W_E = create_extended_embedding(model, token_ids)
        elif kind != "raw":
            raise ValueError(kind)
        return W_E @ W_enc


@torch.no_grad()
def mlp0_norm_ratio(model, n: int = 2048, seed: int = 0) -> float:
    """The median, over n token ids drawn with a seeded generator, of ‖MLP₀(N(W_E[t]))‖ / ‖W_E[t]‖: how much longer
    the first MLP's contribution to a lone token's residual stream is than the token's embedding."""
    ids = torch.randperm(model.cfg.d_vocab, generator=torch.Generator().manual_seed(seed))[:n]
    W_E = model.W_E[ids, None, :]
    block = model.blocks[0]
    return (block.mlp(block.ln2(W_E)).norm(dim=-1) / W_E.norm(dim=-1)).median().item()


def spearman(a: Float[Tensor, "rows n"], b: Float[Tensor, "rows n"]) -> Float[Tensor, " rows"]:
    """Spearman's rank correlation of each row of a with the same row of b: the Pearson correlation of their ranks,
    tied values sharing their average rank (day 48's _average_ranks; a latent's mean activation is exactly 0 on most
    tokens)."""
    out = []
    for x, y in zip(a.double(), b.double()):
        rx, ry = features._average_ranks(x), features._average_ranks(y)
        rx, ry = rx - rx.mean(), ry - ry.mean()
        out.append((rx * ry).sum() / (rx.norm() * ry.norm()))
    return torch.stack(out)


def show_top_deembeddings(model, tc: Transcoder, latent_idx: int, k: int = 10, kind: str = "raw"
                          ) -> dict[str, list[tuple[str, float]]]:
    """ARENA's show_top_deembeddings (kind="raw"): the tokens with the largest and smallest de-embedding for the
    latent. ARENA prints a table; ours returns it."""
    scores = deembeddings(model, tc, kind, [latent_idx])[:, 0]
    top, bottom = scores.topk(k), scores.topk(k, largest=False)
    decode = model.tokenizer.decode
    return {"top": [(decode([i]), v) for v, i in zip(top.values.tolist(), top.indices.tolist())],
            "bottom": [(decode([i]), v) for v, i in zip(bottom.values.tolist(), bottom.indices.tolist())]}


def show_top_deembeddings_extended(model, tc: Transcoder, latent_idx: int, k: int = 10) -> dict:
    """ARENA's show_top_deembeddings_extended: show_top_deembeddings with the extended embedding."""
    return show_top_deembeddings(model, tc, latent_idx, k, kind="extended")


# ---------------------------------------------------------------- the experiment

LAYERS = (15, 16)
SECOND_SAE = sae_train.TrainConfig(steps=600)                      # day 47's headline shape (1 152 latents, k = 32)
SECOND_PARTS = [("wikitext-valid", 150), ("shakespeare", 150)]     # the first 300 of day 47's training windows
PROMPTS = dict(source="wikitext-test", n_seq=10, seq_len=32)       # held out: where the gradients are taken
EXPLORE_PARTS = [("wikitext-valid", 48), ("shakespeare", 48)]       # where latents are read (max-activating tokens)
EVAL_SEQS = 16                                                     # held-out 64-token windows for the SAE / transcoder metrics
CE_SEQS = 8                                                        # of which the sink comparison splices into this many
TRANSCODER = TranscoderConfig(d_in=576, d_sae=1536, d_out=576, sparsity_coeff=3e-3, layer=1)
TRANSCODER_TRAIN = dict(steps=1200, batch_size=512, lr=1e-3)
TRANSCODER_PARTS = [("wikitext-valid", 300), ("shakespeare", 300)]
MLP0_SAMPLE = 2048                                                 # token ids for the first MLP's norm ratio
MIN_TOKEN_COUNT = 5                                                 # token ids seen this often enter the de-embedding check
OFFSETS = ["0", "1", "2", "3", "4-7", "8+"]                        # how far back a token sits from the latent it moves


def printable(text: str) -> str:
    """Text that survives a Markdown table: newlines as ⏎, WikiText's <unk> as ⟨unk⟩ (not an HTML tag), | as ¦."""
    return text.replace("\n", "⏎").replace("<unk>", "⟨unk⟩").replace("|", "¦")


def latent_examples(model, tokens: Tensor, acts: Float[Tensor, "batch seq"], k: int = 4, buffer: int = 3) -> list[str]:
    """The k max-activating contexts of one latent (day 48's fetch_max_activating_examples), as short printable
    strings with the activating token marked ⟦ ⟧."""
    data = features.fetch_max_activating_examples(model, None, tokens, 0, k=k, buffer=buffer, latent_acts=acts)
    return [printable("".join(t[:p]) + "⟦" + t[p] + "⟧") for score, t, p in data if score > 0]


def _offset_bin(delta: Tensor) -> Tensor:
    """0, 1, 2, 3 → bins 0-3; 4-7 → 4; ≥ 8 → 5."""
    return torch.where(delta < 4, delta, torch.where(delta < 8, 4, 5))


def token_mean_activations(tokens: Tensor, acts: Float[Tensor, "n d_sae"], min_count: int
                           ) -> tuple[Tensor, Float[Tensor, "n_ids d_sae"]]:
    """(token ids seen at least min_count times, each latent's mean activation on them)."""
    ids, inverse, counts = torch.unique(tokens, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(ids), acts.shape[1], dtype=torch.float64).index_add_(0, inverse, acts.double())
    keep = counts >= min_count
    return ids[keep], (sums / counts[:, None])[keep]


def run_experiment(out_dir: Path) -> dict:
    """Gradients between day 47's SAE at layer 15 and a second one at layer 16 on held-out text (latent-to-latent,
    token-to-latent, latent-to-logit), the hand-written chain rule against jacrev on the trained SAEs in float64,
    the cost of reconstructing the attention sink, and a transcoder on the layer-1 MLP with its de-embeddings."""
    import matplotlib.pyplot as plt

    from checks.models import hooked_model
    from checks.timing import single_thread

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}
    results: dict = {"layers": list(LAYERS), "second_sae_config": asdict(SECOND_SAE), "second_sae_parts": SECOND_PARTS,
                     "prompts": PROMPTS, "explore_parts": EXPLORE_PARTS, "transcoder_config": asdict(TRANSCODER),
                     "transcoder_train": TRANSCODER_TRAIN, "transcoder_parts": TRANSCODER_PARTS}
    with single_thread():
        model = hooked_model("smollm2")
        tok = model.tokenizer
        results["model"] = {k: getattr(model.cfg, k) for k in ("n_layers", "d_model", "n_heads", "n_key_value_heads",
                                                               "d_mlp", "d_vocab", "normalization_type",
                                                               "positional_embedding_type")}
        t = time.perf_counter()
        sae_from = sae_train.trained_sae(LAYERS[0])
        sae_to = sae_train.trained_sae(LAYERS[1], cfg=SECOND_SAE, parts=SECOND_PARTS)
        timings["saes_seconds"] = time.perf_counter() - t

        # -- the SAEs on held-out text, and what reconstructing the sink costs
        t = time.perf_counter()
        eval_tokens = sae_train.corpus_tokens(tok, "wikitext-test", EVAL_SEQS, 64)
        names = [f"blocks.{l}.hook_resid_pre" for l in LAYERS]
        _, cache = model.run_with_cache(eval_tokens, names_filter=names, stop_at_layer=LAYERS[1] + 1)
        results["saes"] = {str(l): sae_train.sae_metrics(s, sae_train.non_sink(cache[n]))
                           for l, s, n in zip(LAYERS, (sae_from, sae_to), names)}
        norms = cache[names[0]].norm(dim=-1)
        sink = sinks(cache[names[0]])
        results["sinks"] = {"n_sinks": int(sink.sum()), "n_windows": EVAL_SEQS, "n_ce_windows": CE_SEQS,
                            "median_sink_norm": norms[sink].median().item(), "median_norm": norms[~sink].median().item(),
                            "kept": sae_train.ce_losses(model, sae_from, eval_tokens[:CE_SEQS], exclude_sinks=True),
                            "reconstructed": sae_train.ce_losses(model, sae_from, eval_tokens[:CE_SEQS], exclude_sinks=False)}
        timings["evaluate_seconds"] = time.perf_counter() - t

        # -- the chain rule by hand against jacrev, on the trained SAEs, in float64
        t = time.perf_counter()
        model64 = float64_model(model)
        saes64 = [copy.deepcopy(s).double() for s in (sae_from, sae_to)]
        prompt = sae_train.corpus_tokens(tok, "wikitext-test", 1, 10)
        errs = {}
        g, *_ = latent_to_latent_gradients(prompt, *saes64, model64)
        errs["latent_to_latent"] = _rel_err(g, manual_latent_to_latent_gradients(prompt, *saes64, model64)[0])
        g, _ = token_to_latent_gradients(prompt, saes64[0], model64)
        errs["token_to_latent"] = _rel_err(g, manual_token_to_latent_gradients(prompt, saes64[0], model64)[0])
        g, _, _, ids, _ = latent_to_logit_gradients(prompt, saes64[1], model64, k=10)
        errs["latent_to_logit"] = _rel_err(g, manual_latent_to_logit_gradients(prompt, saes64[1], model64, ids)[0])
        results["float64_chain_rule_vs_jacrev"] = errs | {"n_tokens": prompt.shape[1]}
        del model64, saes64
        timings["float64_check_seconds"] = time.perf_counter() - t

        # -- latents read on an exploration corpus (for interpretations)
        t = time.perf_counter()
        explore = sae_train.mixed_tokens(tok, EXPLORE_PARTS, seq_len=64)
        _, cache = model.run_with_cache(explore, names_filter=names, stop_at_layer=LAYERS[1] + 1)
        explore_acts = [encode_latents(s, cache[n], sinks(cache[n])).detach() for s, n in zip((sae_from, sae_to), names)]
        del cache
        timings["explore_seconds"] = time.perf_counter() - t

        # -- the three gradients on held-out windows (float32, as ARENA)
        t = time.perf_counter()
        prompts = sae_train.corpus_tokens(tok, PROMPTS["source"], PROMPTS["n_seq"], PROMPTS["seq_len"])
        pair_attr: dict[tuple[int, int, bool], list[float]] = {}
        l2l, t2l, l2logit = [], [], []
        offset_share = torch.zeros(len(OFFSETS), dtype=torch.float64)
        n_latents_t2l = 0
        first_jacobian = None
        for w in range(prompts.shape[0]):
            window = prompts[w:w + 1]
            grads, prev, _, recon = latent_to_latent_gradients(window, sae_from, sae_to, model)
            grads = grads.detach()
            direct = direct_path(sae_from, sae_to, prev, recon).detach()
            same = (recon.indices[:, None, 1] == prev.indices[None, :, 1])
            l2l.append({"n_prev": prev.values.numel(), "n_next": recon.values.numel(),
                        "off_direct_share": ((grads - direct).norm() / grads.norm()).item(),
                        "same_position_abs_share": (grads.abs() * same).sum().item() / grads.abs().sum().item()})
            if first_jacobian is None:
                first_jacobian = (grads, prev.indices, recon.indices)
            attribution = grads * prev.values.detach()[None, :]          # a_prev · ∂a_next/∂a_prev
            rows, cols = torch.nonzero(attribution.abs() > 1e-3 * attribution.abs().max(), as_tuple=True)
            for r, c in zip(rows.tolist(), cols.tolist()):
                key = (int(prev.indices[c, 2]), int(recon.indices[r, 2]), bool(same[r, c]))
                pair_attr.setdefault(key, []).append(attribution[r, c].item())

            tg, latents = token_to_latent_gradients(window, sae_from, model, jacobian=torch.func.jacfwd)
            tg = tg[0].detach().abs()                                     # [seq, n_active]
            q = latents.indices[:, 1]
            p = torch.arange(window.shape[1])[:, None]
            delta = (q[None, :] - p).clamp(min=0)
            share = tg / tg.sum(0, keepdim=True)
            bins = _offset_bin(delta)
            for b in range(len(OFFSETS)):
                offset_share[b] += (share * (bins == b) * (p <= q[None, :])).sum().item()
            t2l.append({"sink_share": share[0].mean().item(), "self_share": share[q, torch.arange(len(q))].mean().item()})
            n_latents_t2l += len(q)

            lg, logits, logits_recon, token_ids, lat = latent_to_logit_gradients(window, sae_to, model, k=10)
            lg = lg.detach()
            attr = lg[0] * lat.values.detach()
            last = lat.indices[:, 1] == window.shape[1] - 1
            top = attr.abs().topk(3).indices.tolist()
            l2logit.append({"top_token": printable(tok.decode([token_ids[0]])), "logit": logits[token_ids[0]].item(),
                            "logit_recon": logits_recon[token_ids[0]].item(),
                            "top_latents": [int(lat.indices[i, 2]) for i in top],
                            "top_latent_positions": [int(lat.indices[i, 1]) for i in top],
                            "top_attributions": [attr[i].item() for i in top],
                            "last_position_abs_share": (attr.abs() * last).sum().item() / attr.abs().sum().item(),
                            "context": printable(tok.decode(window[0, -12:].tolist()))})
        timings["gradients_seconds"] = time.perf_counter() - t

        def summary(pairs, n):
            ranked = sorted(pairs.items(), key=lambda kv: -abs(sum(kv[1])))[:n]
            _, W_dec_from = encoder_decoder(sae_from)
            W_enc_to, _ = encoder_decoder(sae_to)
            _, W_dec_to = encoder_decoder(sae_to)
            out = []
            for (i, j, same_pos), values in ranked:
                cos = F.cosine_similarity(W_dec_from[i], W_dec_to[j], dim=0).item()
                out.append({"from": i, "to": j, "same_position": same_pos, "total_attribution": sum(values),
                            "n": len(values), "decoder_cosine": cos,
                            "from_examples": latent_examples(model, explore, explore_acts[0][..., i]),
                            "to_examples": latent_examples(model, explore, explore_acts[1][..., j])})
            return out

        _, W_dec_from = encoder_decoder(sae_from)
        _, W_dec_to = encoder_decoder(sae_to)
        same_index_cos = F.cosine_similarity(W_dec_from, W_dec_to, dim=-1).detach()
        results["latent_to_latent"] = {
            "per_window": l2l,
            "median_same_index_decoder_cosine": same_index_cos.median().item(),
            "mean_off_direct_share": sum(d["off_direct_share"] for d in l2l) / len(l2l),
            "mean_same_position_abs_share": sum(d["same_position_abs_share"] for d in l2l) / len(l2l),
            "top_pairs": summary({k: v for k, v in pair_attr.items() if k[2]}, 6),
            "top_cross_position_pairs": summary({k: v for k, v in pair_attr.items() if not k[2]}, 6),
            "top_cross_position_distinct_pairs": summary({k: v for k, v in pair_attr.items() if not k[2] and k[0] != k[1]}, 3),
            "mean_n_prev": sum(d["n_prev"] for d in l2l) / len(l2l), "mean_n_next": sum(d["n_next"] for d in l2l) / len(l2l)}
        results["latent_to_latent"]["n_top_pairs_same_index"] = sum(
            p["from"] == p["to"] for p in results["latent_to_latent"]["top_pairs"])
        offset_share = offset_share / n_latents_t2l
        results["token_to_latent"] = {"per_window": t2l, "offset_bins": OFFSETS, "offset_share": offset_share.tolist(),
                                      "mean_sink_share": sum(d["sink_share"] for d in t2l) / len(t2l),
                                      "n_latents": n_latents_t2l}
        for d in l2logit:
            d["top_latent_examples"] = [latent_examples(model, explore, explore_acts[1][..., i])[:3]
                                        for i in d["top_latents"][:1]]
        results["latent_to_logit"] = {"per_window": l2logit,
                                      "mean_last_position_abs_share": sum(d["last_position_abs_share"] for d in l2logit) / len(l2logit)}

        # -- a transcoder on the layer-1 MLP, and its de-embeddings
        t = time.perf_counter()
        tc_tokens = sae_train.mixed_tokens(tok, TRANSCODER_PARTS, seq_len=128)
        x, y, kept_ids = mlp_pairs(model, tc_tokens, TRANSCODER.layer, return_tokens=True)
        tc, log = train_transcoder(x, y, TRANSCODER, **TRANSCODER_TRAIN)
        timings["transcoder_train_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        results["transcoder"] = transcoder_metrics(model, tc, eval_tokens) | {"n_train_tokens": x.shape[0]}
        results["mlp0_norm_ratio"] = mlp0_norm_ratio(model, MLP0_SAMPLE)
        results["mlp0_sample"] = MLP0_SAMPLE
        acts = torch.cat([tc.encode(x[s:s + 4096]).detach() for s in range(0, x.shape[0], 4096)])
        ids, mean_acts = token_mean_activations(kept_ids, acts, MIN_TOKEN_COUNT)
        alive = torch.nonzero((acts > 0).double().mean(0) >= 1e-3).squeeze(-1)
        rho = {}
        top_hit = {}
        for kind in ("raw", "normalized", "extended"):
            de = deembeddings(model, tc, kind, alive.tolist(), token_ids=ids)      # [n_ids, n_alive]
            rho[kind] = spearman(de.T, mean_acts[:, alive].T.float())
            best = mean_acts[:, alive].argmax(0)
            top_hit[kind] = (de.topk(20, dim=0).indices == best[None, :]).any(0).double().mean().item()
        order = rho["extended"].argsort(descending=True)
        examples = []
        for r in order[:: max(1, len(order) // 4)][:4].tolist():
            j = int(alive[r])
            by_mean = mean_acts[:, j].topk(5).indices
            examples.append({"latent": j, "spearman": {k: v[r].item() for k, v in rho.items()},
                             "top_mean_activation_tokens": [printable(tok.decode([int(ids[i])])) for i in by_mean],
                             "top_extended": [printable(s) for s, _ in show_top_deembeddings_extended(model, tc, j, 5)["top"]],
                             "top_raw": [printable(s) for s, _ in show_top_deembeddings(model, tc, j, 5)["top"]]})
        results["deembedding"] = {
            "n_token_ids": len(ids), "n_latents": len(alive), "min_token_count": MIN_TOKEN_COUNT,
            "top20_chance": 20 / len(ids),
            "median_spearman": {k: v.median().item() for k, v in rho.items()},
            "fraction_extended_beats_raw": (rho["extended"] > rho["raw"]).double().mean().item(),
            "top20_hit": top_hit, "examples": examples}
        results["transcoder_log"] = {k: log[k] for k in ("step", "L_reconstruction", "l0")}
        timings["deembedding_seconds"] = time.perf_counter() - t

    # -- figures
    grads, prev_idx, next_idx = first_jacobian
    fig, ax = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    lim = grads.abs().max().item() / 4
    ax[0].imshow(grads.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    ax[0].set_xlabel(f"active layer-{LAYERS[0]} latents (by position)")
    ax[0].set_ylabel(f"active layer-{LAYERS[1]} latents (by position)")
    ax[0].set_title("∂a₁₆/∂a₁₅ on one held-out window (clipped at ¼ of the max)")
    share = results["token_to_latent"]["offset_share"]
    ax[1].bar(OFFSETS, share)
    ax[1].set_xlabel("how many tokens back (q − p)")
    ax[1].set_ylabel("mean share of |∂a/∂scale_p|")
    ax[1].set_title(f"Token-to-latent gradients of layer-{LAYERS[0]} latents")
    fig.savefig(out_dir / "figures/gradients.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    kinds = ["raw", "normalized", "extended"]
    ax.bar(kinds, [results["deembedding"]["median_spearman"][k] for k in kinds])
    ax.set_ylabel("median Spearman ρ with mean activation per token")
    ax.set_title("Layer-1 transcoder: de-embeddings against what latents do")
    fig.savefig(out_dir / "figures/deembedding.png", dpi=120)
    plt.close(fig)

    results |= timings
    results["wall_seconds"] = time.perf_counter() - wall0
    results["cpu_seconds"] = time.process_time() - cpu0
    text = json.dumps(results, indent=1)
    (out_dir / "results.json").write_text(text + "\n")
    return json.loads(text)            # as committed: tuples become lists


def _rel_err(a: Tensor, b: Tensor) -> float:
    """max |a − b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()
