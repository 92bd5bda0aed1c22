"""Day 63: the Fourier circuits of the grokked model (ARENA 1.5.2 Grokking, "Periodicity & Fourier basis" and
"Circuit and feature analysis").

The model of day 62 computes (a + b) mod p. Nanda et al. found the algorithm: embed each residue as
cos(w_k a), sin(w_k a) for a few *key frequencies* w_k = 2πk/p, let the attention and the MLP multiply
the two inputs' waves into cos(w_k(a + b)), sin(w_k(a + b)) (trig identities), and unembed to

    logit(c) ≈ Σ_k α_k cos(w_k(a + b − c)),

which is largest at c = (a + b) mod p, where every term is α_k.

The tools are a real Fourier basis of R^p (``make_fourier_basis``), the transforms of vectors and of
functions on the p × p grid of inputs (``fft1d``, ``fft2d``), and ARENA's readings of the weights:
the effective weights, the key frequencies, the neuron clusters and the trig identity on the logits.
``make_handbuilt_model`` builds a one-layer transformer that runs exactly this algorithm with chosen key
frequencies, so every tool can be checked on a model whose answer is known.

ARENA keeps ``fourier_basis`` and ``p`` as globals; here the functions read p from their input's shape
(the basis is built once per p and cached).
"""

from __future__ import annotations

import importlib
import json
import math
import time
from functools import lru_cache
from pathlib import Path

import einops
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from checks.timing import single_thread

HERE = Path(__file__).parent
grokking = importlib.import_module("days.062.grokking")


# ---------------------------------------------------------------- the Fourier basis


def make_fourier_basis(p: int) -> tuple[Float[Tensor, "p p"], list[str]]:
    """ARENA's basis of R^p, one vector a row: the constant, then cos(w_k x) and sin(w_k x) for k = 1 … ⌊p/2⌋
    (w_k = 2πk/p, x = 0 … p−1), each scaled to unit norm; the names "Const", "cos 1", "sin 1", …. For odd p
    it is orthonormal: Σ_x cos(w_k x) cos(w_l x) = (p/2) δ_kl for 0 < k, l < p/2, sin likewise, and
    cos ⊥ sin. Computed in float64, returned in float32 (ARENA's dtype)."""
    x = torch.arange(p, dtype=torch.float64)
    basis = torch.ones(p, p, dtype=torch.float64)
    names = ["Const"]
    for k in range(1, p // 2 + 1):
        basis[2 * k - 1] = torch.cos(2 * math.pi * k * x / p)
        basis[2 * k] = torch.sin(2 * math.pi * k * x / p)
        names += [f"cos {k}", f"sin {k}"]
    basis = basis / basis.norm(dim=1, keepdim=True)
    return basis.to(torch.float32), names


@lru_cache(maxsize=8)
def _basis64(p: int) -> Tensor:
    """make_fourier_basis(p) kept in float64 (the same arithmetic, not rounded to float32)."""
    x = torch.arange(p, dtype=torch.float64)
    basis = torch.ones(p, p, dtype=torch.float64)
    for k in range(1, p // 2 + 1):
        basis[2 * k - 1] = torch.cos(2 * math.pi * k * x / p)
        basis[2 * k] = torch.sin(2 * math.pi * k * x / p)
    return basis / basis.norm(dim=1, keepdim=True)


def fourier_basis_for(p: int, dtype: torch.dtype = torch.float32) -> Float[Tensor, "p p"]:
    """The basis of make_fourier_basis(p) in the dtype (built once per p in float64, then cast)."""
    return _basis64(p).to(dtype)


def fft1d(x: Float[Tensor, "... p"]) -> Float[Tensor, "... p"]:
    """The coefficients of x (or of each vector of a batch, along the last dimension) in the Fourier basis:
    x̂ = x Bᵀ, B = make_fourier_basis(p). B is orthogonal, so x = x̂ B and ‖x̂‖ = ‖x‖ (Parseval)."""
    return x @ fourier_basis_for(x.shape[-1], x.dtype).T


def fft1d_given_dim(tensor: Tensor, dim: int) -> Tensor:
    """fft1d along dimension ``dim``."""
    return fft1d(tensor.transpose(dim, -1)).transpose(dim, -1)


def fourier_2d_basis_term(i: int, j: int, p: int, dtype: torch.dtype = torch.float32) -> Float[Tensor, "p p"]:
    """The 2D basis function B_i(x) B_j(y) on the p × p grid: the outer product of rows i and j of the basis.
    These p² functions are orthonormal in R^{p×p}."""
    basis = fourier_basis_for(p, dtype)
    return basis[i][:, None] * basis[j][None, :]


def fft2d(tensor: Float[Tensor, "p p ..."]) -> Float[Tensor, "p p ..."]:
    """The coefficients of a function on the p × p grid (with trailing batch dimensions) in the 2D basis:
    T̂_ij = Σ_xy T_xy B_i(x) B_j(y), i.e. T̂ = B T Bᵀ per batch element; inverse T = Bᵀ T̂ B."""
    basis = fourier_basis_for(tensor.shape[0], tensor.dtype)
    return einops.einsum(tensor, basis, basis, "px py ..., i px, j py -> i j ...")


def inverse_fft2d(coeffs: Float[Tensor, "p p ..."]) -> Float[Tensor, "p p ..."]:
    """The function on the grid from its 2D coefficients: T = Bᵀ T̂ B."""
    basis = fourier_basis_for(coeffs.shape[0], coeffs.dtype)
    return einops.einsum(coeffs, basis, basis, "i j ..., i px, j py -> px py ...")


def project_onto_direction(batch_vecs: Float[Tensor, "n ..."], v: Float[Tensor, "n"]) -> Float[Tensor, "n ..."]:
    """The component of each vector (along the first dimension) in the direction of the unit vector v: v (v·x)."""
    components = einops.einsum(batch_vecs, v, "n ..., n -> ...")
    return einops.einsum(components, v, "..., n -> n ...")


def project_onto_frequency(batch_vecs: Float[Tensor, "p2 ..."], freq: int) -> Float[Tensor, "p2 ..."]:
    """The projection of functions on the grid (flattened to p², a the slow index) onto the nine 2D basis
    functions made of the constant, cos(w_k ·) and sin(w_k ·) in each input, k = freq."""
    p = math.isqrt(batch_vecs.shape[0])
    idx = [0, 2 * freq - 1, 2 * freq]
    return sum(project_onto_direction(batch_vecs, fourier_2d_basis_term(i, j, p, batch_vecs.dtype).flatten())
               for i in idx for j in idx)


def get_trig_sum_directions(k: int, p: int, dtype: torch.dtype = torch.float32) -> tuple[Float[Tensor, "p p"], Float[Tensor, "p p"]]:
    """The unit functions of (x, y) ∝ cos(w_k(x + y)) and sin(w_k(x + y)), written in the 2D basis by the sum
    formulas cos(x + y) = cos x cos y − sin x sin y and sin(x + y) = sin x cos y + cos x sin y."""
    cc, ss = fourier_2d_basis_term(2 * k - 1, 2 * k - 1, p, dtype), fourier_2d_basis_term(2 * k, 2 * k, p, dtype)
    sc, cs = fourier_2d_basis_term(2 * k, 2 * k - 1, p, dtype), fourier_2d_basis_term(2 * k - 1, 2 * k, p, dtype)
    return (cc - ss) / math.sqrt(2), (sc + cs) / math.sqrt(2)


# ---------------------------------------------------------------- reading the model


@torch.no_grad()
def effective_weights(model: HookedTransformer) -> dict[str, Tensor]:
    """ARENA's effective weights of the one-layer model, with "=" dropped from the inputs:
    W_E [p, d] (the residues' embeddings), W_neur = W_E W_V^h W_O^h W_in [heads, p, d_mlp] (what a token sends
    through head h into each neuron, per unit of attention), W_logit = W_out W_U [d_mlp, p] (what a neuron
    writes into each logit), and W_attn = (W_E[=] + W_pos[2]) W_Q^h (W_E W_K^h)ᵀ / √d_head [heads, p] (the
    attention score of "=" on a residue, without the positional part of the key)."""
    p = model.cfg.d_vocab_out
    W_E = model.W_E[:p]
    W_OV = model.W_V[0] @ model.W_O[0]                                          # [heads, d, d]
    W_neur = W_E @ W_OV @ model.W_in[0]
    W_logit = model.W_out[0] @ model.W_U
    q = (model.W_E[p] + model.W_pos[2]) @ model.W_Q[0]                          # [heads, d_head]
    W_attn = torch.einsum("he,phe->hp", q, torch.einsum("pd,hde->phe", W_E, model.W_K[0])) / model.cfg.d_head ** 0.5
    return {"W_E": W_E, "W_neur": W_neur, "W_logit": W_logit, "W_attn": W_attn}


def embedding_freq_norms(W_E: Float[Tensor, "p d"]) -> Float[Tensor, "n_freq"]:
    """For each frequency k = 1 … ⌊p/2⌋, the squared norm of W_E's Fourier components cos k and sin k, summed
    over d_model: ‖(B W_E)_{2k−1}‖² + ‖(B W_E)_{2k}‖². (The constant component is returned separately by
    fft1d; it does not vary with the token.)"""
    sq = fft1d_given_dim(W_E, 0).pow(2).sum(-1)
    return sq[1::2] + sq[2::2]


def find_key_freqs(W_E: Float[Tensor, "p d"]) -> tuple[list[int], float]:
    """The key frequencies: sort the frequencies by their share of W_E's non-constant Fourier norm; the key ones are
    those before the largest drop (the largest ratio between consecutive shares, shares floored at 1e-12). A grokked
    embedding puts nearly all its norm on a few frequencies, so the drop separates them from the rest without a
    tuned threshold. Returns them in increasing order, and the share they carry together."""
    norms = embedding_freq_norms(W_E.detach().to(torch.float64))
    share = norms / norms.sum()
    sorted_share, order = share.clamp(min=1e-12).sort(descending=True)
    drops = sorted_share[:-1].log() - sorted_share[1:].log()
    n_keys = int(drops.argmax()) + 1
    keys = sorted((order[:n_keys] + 1).tolist())
    return keys, float(share[[k - 1 for k in keys]].sum())


def extract_freq_2d(tensor: Float[Tensor, "p p ..."], freq: int) -> Float[Tensor, "3 3 ..."]:
    """ARENA's selection: the 3 × 3 block of 2D coefficients at rows and columns (Const, cos k, sin k), k = freq."""
    idx = torch.tensor([0, 2 * freq - 1, 2 * freq])
    return tensor[idx][:, idx]


def find_neuron_freqs(fourier_neuron_acts: Float[Tensor, "p p d_mlp"]) -> tuple[Tensor, Tensor]:
    """For each neuron, the frequency whose 3 × 3 block (extract_freq_2d) carries the largest share of the
    neuron's centred activation's squared 2D coefficients, and that share (the fraction of variance it
    explains). ARENA's loop stops at ⌊p/2⌋ − 1; here every frequency 1 … ⌊p/2⌋ is a candidate."""
    p = fourier_neuron_acts.shape[0]
    total = fourier_neuron_acts.pow(2).sum((0, 1))
    fracs = torch.stack([extract_freq_2d(fourier_neuron_acts, k).pow(2).sum((0, 1)) / total
                         for k in range(1, p // 2 + 1)])                        # [n_freq, d_mlp]
    frac, best = fracs.max(0)
    return best + 1, frac


def neuron_activations(model: HookedTransformer) -> tuple[Tensor, Tensor]:
    """The MLP's post-ReLU activations and the attention pattern of "=" on every input of the grid, in
    ARENA's shapes: [p·p, d_mlp] (a the slow index) and [p·p, heads, 3]."""
    p = model.cfg.d_vocab_out
    with torch.no_grad(), single_thread():
        _, cache = model.run_with_cache(grokking.all_pairs(p), names_filter=lambda n: n.endswith(("hook_post", "hook_pattern")))
    return cache["post", 0][:, -1], cache["pattern", 0][:, :, -1]


def neuron_clusters(model: HookedTransformer) -> dict:
    """ARENA's neuron clusters: centre each neuron's activation over the p² inputs, take its 2D Fourier transform,
    and assign it the frequency that explains most of its variance (find_neuron_freqs)."""
    p = model.cfg.d_vocab_out
    acts, _ = neuron_activations(model)
    centred = acts.to(torch.float64) - acts.to(torch.float64).mean(0)
    fourier = fft2d(einops.rearrange(centred, "(a b) n -> a b n", a=p, b=p))
    freqs, frac = find_neuron_freqs(fourier)
    return {"neuron_freqs": freqs, "neuron_frac_explained": frac, "fourier_neuron_acts": fourier,
            "dead": (acts.abs().sum(0) == 0)}


def final_logits_grid(model: HookedTransformer) -> Float[Tensor, "p p p"]:
    """The logits at "=" for every input, shaped [a, b, c]."""
    p = model.cfg.d_vocab_out
    with torch.no_grad(), single_thread():
        logits = grokking.final_position_logits(model, grokking.all_pairs(p))
    return logits.reshape(p, p, p)


def trig_logit_fit(logits: Float[Tensor, "p p p"], key_freqs: list[int]) -> dict:
    """The trig identity on the logits: fit logit(a, b, c) ≈ β(a, b) + Σ_k α_k cos(w_k(a + b − c)) by least
    squares (β absorbs what the softmax ignores, a constant per input). Returns the α_k and the fraction of
    the logits' variance over c (after removing each input's mean) that the fit explains."""
    p = logits.shape[0]
    x = logits.to(torch.float64)
    x = x - x.mean(-1, keepdim=True)
    a = torch.arange(p, dtype=torch.float64)
    s = (a[:, None, None] + a[None, :, None] - a[None, None, :])
    feats = torch.stack([torch.cos(2 * math.pi * k * s / p) for k in key_freqs], -1)      # [p, p, p, K]
    feats = feats - feats.mean(2, keepdim=True)
    A = feats.reshape(-1, len(key_freqs))
    coef = torch.linalg.lstsq(A, x.reshape(-1, 1)).solution.flatten()
    resid = x.reshape(-1) - A @ coef
    return {"alpha": coef.tolist(), "r2": 1 - float(resid.pow(2).sum() / x.pow(2).sum()),
            "fitted": (A @ coef).reshape(p, p, p)}


# ---------------------------------------------------------------- a model that runs the algorithm by hand


def make_handbuilt_model(p: int, key_freqs: list[int], alpha: float = 5.0, knots: int | None = None,
                         sharpness: float = 60.0) -> HookedTransformer:
    """A one-layer model of day 62's configuration (no biases) that computes Σ_k α cos(w_k(a + b − c)) with the
    given key frequencies, by construction:

    - W_E[t] = (cos w_k t, sin w_k t)_k in dims 0 … 2K−1; W_pos[j] = e_{2K+j} (a unit in its own dimension);
      W_E[=] = 0.
    - head 0 attends from "=" to position 0 only, head 1 to position 1 only (query e_{2K+2}, keys e_{2K+j}, a
      score of ``sharpness`` against 0: the rest gets e^{−sharpness}); each copies the key frequencies'
      waves into its own block, so the residual at "=" holds cos w_k a, sin w_k a, cos w_k b, sin w_k b.
      Heads 2 and 3 are zero.
    - the MLP multiplies, by xy = ((x + y)² − (x − y)²)/4:
      cos w(a + b) = ¼[(c_a + c_b)² − (c_a − c_b)² − (s_a + s_b)² + (s_a − s_b)²],
      sin w(a + b) = ¼[(s_a + c_b)² − (s_a − c_b)² + (c_a + s_b)² − (c_a − s_b)²];
      each square z² (|z| ≤ 2) is the piecewise-linear interpolant at knots t_m = 2m/M,
      z² ≈ Σ_m c_m (ReLU(z − t_m) + ReLU(−z − t_m)), c_0 = 2/M, c_m = 4/M, error ≤ (2/M)²/4; the thresholds
      come from the constant 1 that W_pos[2] puts in dimension 2K+2 (no biases needed).
    - W_U reads cos w_k(a + b), sin w_k(a + b) and writes α(cos w_k c, sin w_k c): the sum of products is
      α cos(w_k(a + b − c)).
    """
    cfg = grokking.grokking_config(p)
    model = grokking.make_model(cfg)
    K = len(key_freqs)
    d, dh = cfg.d_model, cfg.d_head
    n_squares = 8 * K
    M = knots or cfg.d_mlp // (2 * n_squares)
    assert 2 * M * n_squares <= cfg.d_mlp and 7 * K + 3 <= d and 2 * K <= dh
    pos, A, B, C = 2 * K, 2 * K + 3, 4 * K + 3, 6 * K + 3           # block starts in the residual stream
    t = torch.arange(p, dtype=torch.float64)
    W_E = torch.zeros(p + 1, d, dtype=torch.float64)
    for i, k in enumerate(key_freqs):
        W_E[:p, 2 * i] = torch.cos(2 * math.pi * k * t / p)
        W_E[:p, 2 * i + 1] = torch.sin(2 * math.pi * k * t / p)
    W_pos = torch.zeros(3, d, dtype=torch.float64)
    for j in range(3):
        W_pos[j, pos + j] = 1.0
    sigma = math.sqrt(sharpness * math.sqrt(dh))
    W_Q, W_K = torch.zeros(cfg.n_heads, d, dh, dtype=torch.float64), torch.zeros(cfg.n_heads, d, dh, dtype=torch.float64)
    W_V, W_O = torch.zeros(cfg.n_heads, d, dh, dtype=torch.float64), torch.zeros(cfg.n_heads, dh, d, dtype=torch.float64)
    for h, block in ((0, A), (1, B)):
        W_Q[h, pos + 2, 0] = sigma
        W_K[h, pos + h, 0] = sigma
        for c in range(2 * K):
            W_V[h, c, c] = 1.0
            W_O[h, c, block + c] = 1.0
    W_in = torch.zeros(d, cfg.d_mlp, dtype=torch.float64)
    W_out = torch.zeros(cfg.d_mlp, d, dtype=torch.float64)
    h_knot = 2.0 / M
    n = 0
    for i in range(K):
        ca, sa, cb, sb = A + 2 * i, A + 2 * i + 1, B + 2 * i, B + 2 * i + 1
        # (first, second, sign of y, output row, weight ±1/4): z = x[first] + sign·x[second]
        squares = [(ca, cb, +1, C + 2 * i, +0.25), (ca, cb, -1, C + 2 * i, -0.25),
                   (sa, sb, +1, C + 2 * i, -0.25), (sa, sb, -1, C + 2 * i, +0.25),
                   (sa, cb, +1, C + 2 * i + 1, +0.25), (sa, cb, -1, C + 2 * i + 1, -0.25),
                   (ca, sb, +1, C + 2 * i + 1, +0.25), (ca, sb, -1, C + 2 * i + 1, -0.25)]
        for first, second, sign, out, weight in squares:
            for m in range(M):
                c_m = h_knot if m == 0 else 2 * h_knot
                for side in (+1, -1):                                   # ReLU(±z − t_m)
                    W_in[first, n] = side
                    W_in[second, n] = side * sign
                    W_in[pos + 2, n] = -m * h_knot
                    W_out[n, out] = weight * c_m
                    n += 1
    W_U = torch.zeros(d, p, dtype=torch.float64)
    for i, k in enumerate(key_freqs):
        W_U[C + 2 * i] = alpha * torch.cos(2 * math.pi * k * t / p)
        W_U[C + 2 * i + 1] = alpha * torch.sin(2 * math.pi * k * t / p)
    state = model.state_dict()
    state.update({"embed.W_E": W_E, "pos_embed.W_pos": W_pos, "blocks.0.attn.W_Q": W_Q, "blocks.0.attn.W_K": W_K,
                  "blocks.0.attn.W_V": W_V, "blocks.0.attn.W_O": W_O, "blocks.0.mlp.W_in": W_in,
                  "blocks.0.mlp.W_out": W_out, "unembed.W_U": W_U})
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()})
    model.handbuilt = {"key_freqs": list(key_freqs), "alpha": alpha, "knots": M,
                       "square_error_bound": h_knot ** 2 / 4, "neuron_freq": _neuron_freqs_of(key_freqs, M, cfg.d_mlp)}
    return model.eval()


def _neuron_freqs_of(key_freqs: list[int], M: int, d_mlp: int) -> list[int]:
    """The frequency each hand-built neuron was built for (0: unused neuron)."""
    out = [k for k in key_freqs for _ in range(8 * 2 * M)]
    return out + [0] * (d_mlp - len(out))


# ---------------------------------------------------------------- the experiment


def analyse(model: HookedTransformer) -> dict:
    """Everything the post reports about one model: key frequencies and their share of W_E's Fourier norm,
    the neuron clusters, W_logit's Fourier norm on the key frequencies, and the trig fit of the logits
    with the loss of the fitted logits."""
    p = model.cfg.d_vocab_out
    W = effective_weights(model)
    keys, share = find_key_freqs(W["W_E"])
    clusters = neuron_clusters(model)
    freqs, frac = clusters["neuron_freqs"], clusters["neuron_frac_explained"]
    alive = ~clusters["dead"]
    logits = final_logits_grid(model)
    fit = trig_logit_fit(logits, keys)
    labels = grokking.labels_of(grokking.all_pairs(p), p)
    flat = logits.reshape(p * p, p)
    fitted = fit["fitted"].reshape(p * p, p)
    wl = fft1d(W["W_logit"].to(torch.float64)).pow(2).sum(0)
    wl_freq = wl[1::2] + wl[2::2]
    return {
        "p": p, "key_freqs": keys, "key_share_W_E": share,
        "embedding_freq_norms": embedding_freq_norms(W["W_E"].to(torch.float64)).tolist(),
        "key_share_W_logit": float(wl_freq[[k - 1 for k in keys]].sum() / wl_freq.sum()),
        "n_alive_neurons": int(alive.sum()),
        "neuron_freq_counts": {str(k): int(((freqs == k) & alive).sum()) for k in sorted(set(freqs[alive].tolist()))},
        "frac_neurons_in_key_clusters": float(torch.isin(freqs[alive], torch.tensor(keys)).float().mean()) if keys else 0.0,
        "neuron_frac_explained_mean": float(frac[alive].mean()),
        "neuron_frac_explained_median": float(frac[alive].median()),
        "trig_alpha": fit["alpha"], "trig_r2": fit["r2"],
        "loss": float(grokking.cross_entropy_high_precision(flat, labels)),
        "accuracy": grokking.accuracy(flat, labels),
        "trig_fit_loss": float(grokking.cross_entropy_high_precision(fitted, labels)),
        "trig_fit_accuracy": grokking.accuracy(fitted, labels),
    }


def plot_analysis(model: HookedTransformer, a: dict, clusters: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    p = a["p"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    ax = axes[0]
    norms = torch.tensor(a["embedding_freq_norms"])
    ax.bar(range(1, len(norms) + 1), norms / norms.sum(),
           color=["C3" if k + 1 in a["key_freqs"] else "C0" for k in range(len(norms))])
    ax.axhline(1 / len(norms), color="gray", ls="--", lw=1, label="uniform share")
    ax.set(xlabel="frequency k", ylabel="share of W_E's Fourier norm", title="W_E in the Fourier basis (red: key)")
    ax.legend()
    ax = axes[1]
    freqs, frac, alive = clusters["neuron_freqs"], clusters["neuron_frac_explained"], ~clusters["dead"]
    for k in a["key_freqs"]:
        sel = alive & (freqs == k)
        ax.hist(frac[sel].numpy(), bins=np.linspace(0, 1, 41), alpha=0.6, label=f"k = {k}: {int(sel.sum())} neurons")
    other = alive & ~torch.isin(freqs, torch.tensor(a["key_freqs"]))
    if other.any():
        ax.hist(frac[other].numpy(), bins=np.linspace(0, 1, 41), alpha=0.6, color="gray", label=f"other: {int(other.sum())}")
    ax.set(xlabel="fraction of the neuron's variance explained by its frequency", ylabel="neurons",
           title="Neuron clusters")
    ax.legend(fontsize=8)
    ax = axes[2]
    logits = final_logits_grid(model).double()
    fit = trig_logit_fit(logits, a["key_freqs"])
    a0, b0 = 5, 17 % p
    x = logits[a0, b0] - logits[a0, b0].mean()
    ax.plot(range(p), x.numpy(), label="model's logits (centred)")
    ax.plot(range(p), fit["fitted"][a0, b0].numpy(), ls="--", label="Σ α_k cos(w_k(a + b − c))")
    ax.axvline((a0 + b0) % p, color="gray", lw=1)
    ax.set(xlabel="c", ylabel="logit", title=f"Logits at a = {a0}, b = {b0}: the trig identity")
    ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_neuron_spectrum(clusters: dict, key_freqs: list[int], path: Path) -> None:
    """Mean squared 2D Fourier coefficient of the neurons of one cluster (log scale), for the first key frequency."""
    import matplotlib.pyplot as plt

    k = key_freqs[0]
    sel = (clusters["neuron_freqs"] == k) & ~clusters["dead"]
    power = clusters["fourier_neuron_acts"][:, :, sel].pow(2).mean(-1)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(power.log10().clamp(min=float(power.log10().max()) - 6).numpy(), cmap="viridis")
    ax.set(xlabel="Fourier component of b", ylabel="Fourier component of a",
           title=f"Neurons of the k = {k} cluster: 2D spectrum (log10)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_experiment(out_dir: Path = HERE) -> dict:
    """Analyse day 62's committed model and the hand-built one: results.json, figures/fourier.png and
    figures/neuron_spectrum.png."""
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    model = grokking.load_grokking_model()
    committed = analyse(model)
    clusters = neuron_clusters(model)
    plot_analysis(model, committed, clusters, out_dir / "figures" / "fourier.png")
    plot_neuron_spectrum(clusters, committed["key_freqs"], out_dir / "figures" / "neuron_spectrum.png")
    hb = make_handbuilt_model(113, [17, 25, 32, 47])
    handbuilt = analyse(hb)
    results = {"committed": committed, "handbuilt": handbuilt,
               "committed_checkpoint": json.loads(grokking.CHECKPOINT_META.read_text())["commit"]}
    results["experiment_seconds"] = time.perf_counter() - t0
    results["experiment_cpu_seconds"] = time.process_time() - cpu0
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
