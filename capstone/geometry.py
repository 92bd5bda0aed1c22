"""Part 1A of the Gauntlet: the geometry of the token embedding (linear algebra).

The embedding W_E ∈ ℝ^{V×d} (V = d_vocab rows, d = d_model columns) is the linear map
E: ℝ^V → ℝ^d, x ↦ W_Eᵀ x, applied to one-hot vectors x = e_t. Everything here is a statement
about that one matrix:

- 1A.1 its singular values σ_1 ≥ … ≥ σ_d, computed from the Gram matrix W_EᵀW_E = V Σ² Vᵀ (a
  d×d symmetric eigenproblem, independent of LAPACK's SVD, which the tests use as reference),
  the "energy" ‖W_E‖_F² = Σ σ_i² and the fraction the top k capture;
- 1A.2 its numerical rank r and, by rank–nullity (dim ker E + dim im E = V), the dimension of
  the null space V − r, with an explicit pair of different token mixtures that E cannot tell apart;
- 1A.3 cosine similarities of semantically related word pairs (a 20×20 heatmap);
- 1A.4 principal components (the eigenvectors of the centred covariance) and projections on
  the top three.

Semantic claims are made on a trained model (SmolLM2-135M-Instruct); the random GPT-2-shaped
model is the control that shows what "no learned structure" looks like, and carries GPT-2
small's exact shape for the rank–nullity arithmetic (50257 − 768 = 49489).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["CATEGORY_WORDS", "DEFAULT_PAIRS", "cosine_matrix", "embedding_matrix", "energy_fraction", "gram_spectrum",
           "category_clusters", "duplicate_row_groups", "indistinguishable_mixtures", "model_and_raw_embedding", "numerical_rank",
           "pair_similarity", "pca", "rank_nullity", "rank_tolerance", "run", "singular_values", "spectrum_summary",
           "token_kind", "top_direction_vs_mean", "vocabulary_pca", "word_vectors"]

# Twenty semantically related pairs (opposites, gender pairs, country/capital, ...): each word is
# a single token (with its leading space) in both the GPT-2 and the SmolLM2 tokenizers; words that
# are not are averaged over their sub-tokens (word_vectors).
DEFAULT_PAIRS: list[tuple[str, str]] = [
    ("king", "queen"), ("man", "woman"), ("boy", "girl"), ("father", "mother"), ("brother", "sister"),
    ("husband", "wife"), ("hot", "cold"), ("big", "small"), ("up", "down"), ("good", "bad"),
    ("happy", "sad"), ("fast", "slow"), ("day", "night"), ("black", "white"), ("old", "young"),
    ("rich", "poor"), ("north", "south"), ("buy", "sell"), ("dog", "cat"), ("Paris", "France"),
]

# Words in semantic categories, for the cluster picture of 1A.4.
CATEGORY_WORDS: dict[str, list[str]] = {
    "numbers": ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"],
    "months": ["January", "February", "March", "April", "May", "June", "July", "August", "September",
               "October"],
    "colours": ["red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "grey", "black"],
    "animals": ["dog", "cat", "horse", "cow", "sheep", "lion", "tiger", "mouse", "rabbit", "bird"],
    "countries": ["France", "Germany", "Japan", "China", "Italy", "Spain", "Canada", "India", "Brazil",
                  "Russia"],
    "verbs": ["run", "eat", "sleep", "write", "read", "walk", "swim", "sing", "drive", "think"],
}


# ---------------------------------------------------------------- 1A.1 the spectrum


def embedding_matrix(model) -> Float[Tensor, "d_vocab d_model"]:
    """The token embedding W_E of a HookedTransformer, detached (one row per token)."""
    return model.W_E.detach()


def gram_spectrum(W: Float[Tensor, "m n"]) -> tuple[Float[Tensor, "n"], Float[Tensor, "n n"]]:
    """Singular values (descending) and right singular vectors (columns) of a tall W, in float64,
    from the Gram matrix: WᵀW = V Σ² Vᵀ, so σ_i = √λ_i(WᵀW) and v_i are its eigenvectors.

    The n×n eigenproblem costs O(mn²) for the product and O(n³) for eigh, and needs no m×n
    workspace. The Gram matrix squares the condition number: the absolute error in λ_i is about
    m·u·σ_1² (u = 1.1e-16 in float64), so σ_i carries a relative error of about m·u·(σ_1/σ_i)²
    and values below σ_1·√(m·u) (≈ 2e-6·σ_1 for m = 5e4) are not resolved (numerical_rank
    accounts for that floor).
    """
    if W.shape[0] < W.shape[1]:
        raise ValueError(f"expected a tall matrix (rows ≥ columns), got shape {tuple(W.shape)}")
    W64 = W.detach().to(torch.float64)
    eigenvalues, eigenvectors = torch.linalg.eigh(W64.T @ W64)     # ascending, λ ≥ 0 up to rounding
    return eigenvalues.clamp_min(0.0).sqrt().flip(0), eigenvectors.flip(1)


def singular_values(W: Float[Tensor, "m n"]) -> Float[Tensor, "n"]:
    """All singular values of a tall W, descending, in float64 (see gram_spectrum for the accuracy)."""
    return gram_spectrum(W)[0]


def energy_fraction(S: Float[Tensor, "r"], k: int) -> float:
    """Σ_{i≤k} σ_i² / Σ_i σ_i²: the share of ‖W‖_F² the best rank-k approximation keeps (Eckart–Young)."""
    energy = S.to(torch.float64) ** 2
    return (energy[:k].sum() / energy.sum()).item()


def rank_tolerance(S: Float[Tensor, "r"], shape: tuple[int, int], eps: float) -> float:
    """σ_1 · max(max(m, n)·eps, 10·√(max(m, n)·u₆₄)): below it a singular value counts as zero.

    The first term is numpy's and torch's matrix_rank rule, with ``eps`` the machine epsilon of
    the dtype the matrix is STORED in (float32 for model weights, 1.2e-7): singular values below
    it are indistinguishable from the rounding noise of storing the entries. The second is the
    resolution floor of the Gram route (gram_spectrum), which only matters for float64 data.
    """
    n = max(shape)
    return S.max().item() * max(n * eps, 10 * (n * torch.finfo(torch.float64).eps) ** 0.5)


def numerical_rank(S: Float[Tensor, "r"], shape: tuple[int, int], eps: float) -> int:
    """#{σ_i > rank_tolerance}: the number of singular values distinguishable from zero."""
    return int((S > rank_tolerance(S, shape, eps)).sum().item())


def top_direction_vs_mean(W: Float[Tensor, "m n"], V: Float[Tensor, "n n"] | None = None) -> float:
    """|cos| between the top right singular vector v_1 (top eigenvector of WᵀW) and the mean row.

    Close to 1 when the largest singular value is the rows' shared offset (anisotropy): then
    σ_1² ≈ m·‖mean‖² is "energy" that says nothing about which token is which.
    """
    v1 = (gram_spectrum(W)[1] if V is None else V)[:, 0]
    mean = W.detach().to(torch.float64).mean(0)
    return (v1 @ mean).abs().item() / mean.norm().item()


def spectrum_summary(W: Float[Tensor, "m n"], k: int = 10, S: Float[Tensor, "n"] | None = None) -> dict:
    """Top-k singular values, their energy fraction, the rank (storage-dtype rule) and the spectrum's shape."""
    S = singular_values(W) if S is None else S
    energy = S ** 2
    eps = torch.finfo(W.dtype).eps
    return {
        "shape": list(W.shape),
        "top_singular_values": S[:k].tolist(),
        "k": k,
        "energy_fraction_top_k": energy_fraction(S, k),
        "energy_fraction_top_1": energy_fraction(S, 1),
        "total_energy": energy.sum().item(),
        "frobenius_norm_squared": W.to(torch.float64).pow(2).sum().item(),
        "rank": numerical_rank(S, tuple(W.shape), eps),
        "rank_tolerance": rank_tolerance(S, tuple(W.shape), eps),
        "sigma_min": S[-1].item(),
        "sigma_min_over_max": (S[-1] / S[0]).item(),
        # participation ratio (Σσ²)²/Σσ⁴: how many directions share the energy (d if all equal, 1 if one)
        "participation_ratio": (energy.sum() ** 2 / (energy ** 2).sum()).item(),
        "components_for_90pct_energy": int((energy.cumsum(0) / energy.sum() < 0.9).sum().item()) + 1,
    }


# ---------------------------------------------------------------- 1A.2 rank–nullity


def rank_nullity(W: Float[Tensor, "d_vocab d_model"], S: Float[Tensor, "d_model"] | None = None) -> dict:
    """The embedding as a map E: ℝ^{d_vocab} → ℝ^{d_model}, x ↦ Wᵀx, sized from the matrix's own shape.

    dim ker E = d_vocab − rank E ≥ d_vocab − d_model, with equality iff W has full column rank.
    ``S`` (the singular values) may be passed to avoid recomputing them.
    """
    d_vocab, d_model = W.shape
    S = singular_values(W) if S is None else S
    rank = numerical_rank(S, (d_vocab, d_model), torch.finfo(W.dtype).eps)
    distinct_rows = torch.unique(W.detach(), dim=0).shape[0]
    return {"d_vocab": d_vocab, "d_model": d_model, "rank": rank, "nullity": d_vocab - rank,
            "nullity_lower_bound": d_vocab - d_model, "full_column_rank": rank == d_model,
            "sigma_min_over_max": (S[-1] / S[0]).item(),
            # how far the rows are from mean-zero: TransformerLens centres GPT-2's W_E (see raw_embedding)
            "max_abs_row_mean": W.detach().to(torch.float64).mean(1).abs().max().item(),
            # one-hots whose images coincide: E is not even injective on single tokens then
            "distinct_embedding_rows": distinct_rows, "duplicate_rows": d_vocab - distinct_rows}


def duplicate_row_groups(W: Float[Tensor, "d_vocab d_model"], tokenizer) -> list[list[str]]:
    """Groups of tokens whose embedding rows are bitwise identical (E maps their one-hots to one point)."""
    _, inverse, counts = torch.unique(W.detach(), dim=0, return_inverse=True, return_counts=True)
    groups = [torch.nonzero(inverse == g).flatten().tolist() for g in torch.nonzero(counts > 1).flatten()]
    return [tokenizer.convert_ids_to_tokens(ids) for ids in sorted(groups, key=len, reverse=True)]


def model_and_raw_embedding(name: str):
    """(HookedTransformer, W_E as stored in the original checkpoint) for a model of capstone.models.

    TransformerLens's default weight processing (``center_writing_weights``) subtracts each row's
    mean from GPT-2's W_E: harmless, because the first LayerNorm subtracts it again, but it makes
    the processed matrix's rows orthogonal to the all-ones vector, so its rank is d_model − 1.
    The raw checkpoint's matrix is the one the spec's rank–nullity question is about. SmolLM2's
    RMSNorm does not centre, and its W_E is stored unchanged.
    """
    from .models import load

    if name == "gpt2-random":
        from checks.models import random_gpt2

        model, hf = random_gpt2()                      # what load("gpt2-random") returns, plus its HF twin
        return model, hf.transformer.wte.weight.detach()
    if name == "smollm2":
        from checks.models import smollm2

        return load(name), smollm2()[0].model.embed_tokens.weight.detach()
    if name == "gpt2":
        from transformers import GPT2LMHeadModel

        return load(name), GPT2LMHeadModel.from_pretrained("gpt2").transformer.wte.weight.detach()
    raise ValueError(f"no raw embedding known for {name!r}")


def indistinguishable_mixtures(W: Float[Tensor, "d_vocab d_model"], token_ids: Int[Tensor, "n"]
                               ) -> tuple[Float[Tensor, "n"], Float[Tensor, "n"]]:
    """Two different probability distributions p ≠ q over ``token_ids`` with W_Tᵀp = W_Tᵀq.

    With n ≥ d_model + 2 tokens, the (d_model + 1) × n system [W_Tᵀ; 1ᵀ] c = 0 has a non-zero
    solution c in the null space (rank–nullity again). Its positive and negative parts have equal
    mass (1ᵀc = 0), so p = c⁺/Σc⁺ and q = c⁻/Σc⁻ are distributions on disjoint-or-overlapping
    supports whose average embeddings coincide: what the null space means concretely.
    """
    A = W[token_ids].to(torch.float64)                                   # n × d
    constraints = torch.cat([A.T, torch.ones(1, A.shape[0], dtype=torch.float64)])
    if constraints.shape[1] <= constraints.shape[0]:
        raise ValueError(f"need more than d_model + 1 = {constraints.shape[0]} tokens, got {constraints.shape[1]}")
    _, _, Vh = torch.linalg.svd(constraints, full_matrices=True)
    c = Vh[-1]                                                           # a unit null vector
    p, q = c.clamp_min(0), (-c).clamp_min(0)
    return p / p.sum(), q / q.sum()


# ---------------------------------------------------------------- 1A.3 word pairs


def word_vectors(model, words: list[str], center: Float[Tensor, "d_model"] | None = None
                 ) -> tuple[Float[Tensor, "n d_model"], list[int]]:
    """Each word's embedding (tokenised with a leading space, as it appears mid-sentence).

    A word that splits into several tokens gets the mean of its sub-token rows (and its count is
    returned, so the caller can see which words were averaged). ``center`` is subtracted first.
    """
    W = embedding_matrix(model).to(torch.float64)
    if center is not None:
        W = W - center.to(torch.float64)
    vectors, counts = [], []
    for word in words:
        ids = model.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        vectors.append(W[ids].mean(0))
        counts.append(len(ids))
    return torch.stack(vectors), counts


def cosine_matrix(A: Float[Tensor, "m d"], B: Float[Tensor, "n d"]) -> Float[Tensor, "m n"]:
    """cos(a_i, b_j) = a_i·b_j / (‖a_i‖‖b_j‖)."""
    return (A / A.norm(dim=-1, keepdim=True)) @ (B / B.norm(dim=-1, keepdim=True)).T


def pair_similarity(model, pairs: list[tuple[str, str]] = DEFAULT_PAIRS, center: bool = True,
                    n_permutations: int = 10_000, seed: int = 0) -> dict:
    """Cosines between the first and second words of every pair (a len(pairs)² matrix).

    If the embedding captures the relation, the diagonal (each word with its partner) stands
    above the off-diagonal (a word with other pairs' partners). Measured by the diagonal's mean
    minus the off-diagonal mean, by how often the partner is a row's most similar word, and by a
    permutation test: the chance that a random matching of rows to columns has a mean cosine as
    high as the true one. ``center`` subtracts the vocabulary's mean embedding first: trained
    embeddings are anisotropic (every row shares a common component), which inflates all cosines.
    """
    mean = embedding_matrix(model).to(torch.float64).mean(0) if center else None
    A, counts_a = word_vectors(model, [a for a, _ in pairs], mean)
    B, counts_b = word_vectors(model, [b for _, b in pairs], mean)
    C = cosine_matrix(A, B)
    n = len(pairs)
    diagonal = C.diagonal()
    off = C[~torch.eye(n, dtype=torch.bool)]
    generator = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(n_permutations)])
    null = C[torch.arange(n), perms].mean(-1)                      # mean cosine of random matchings
    p_value = ((null >= diagonal.mean()).sum().item() + 1) / (n_permutations + 1)
    return {"cosine": C, "words_a": [a for a, _ in pairs], "words_b": [b for _, b in pairs],
            "subtokens_a": counts_a, "subtokens_b": counts_b,
            "mean_diagonal": diagonal.mean().item(), "mean_off_diagonal": off.mean().item(),
            "gap": diagonal.mean().item() - off.mean().item(),
            "partner_is_row_argmax": (C.argmax(1) == torch.arange(n)).float().mean().item(),
            "permutation_p_value": p_value}


# ---------------------------------------------------------------- 1A.4 PCA


def pca(X: Float[Tensor, "n d"], k: int = 3) -> dict:
    """Principal components as the top eigenvectors of the centred covariance Σ = X_cᵀX_c/(n−1).

    Returns components (k × d, rows unit-norm, sign fixed so that each row's largest-|·| entry
    is positive), explained variance and its ratio, the mean, and the scores X_c·componentsᵀ.
    """
    X64 = X.detach().to(torch.float64)
    mean = X64.mean(0)
    Xc = X64 - mean
    cov = Xc.T @ Xc / (X64.shape[0] - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)              # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    components = eigenvectors[:, :k].T.clone()
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    components *= signs
    return {"components": components, "explained_variance": eigenvalues[:k],
            "explained_variance_ratio": eigenvalues[:k] / eigenvalues.sum(), "mean": mean,
            "scores": Xc @ components.T}


def token_kind(token: str) -> str:
    """A coarse type for a byte-level BPE token string ('Ġ' marks a leading space)."""
    if token.startswith("Ġ"):
        rest = token[1:]
        return "space + word" if rest.isascii() and rest.isalpha() else "space + other"
    if token.isascii() and token.isalpha():
        return "word piece"
    if token.isdigit():
        return "digits"
    if all(not c.isalnum() for c in token):
        return "punctuation/symbol"
    return "other"


def _silhouette(points: np.ndarray, labels: list[str]) -> float:
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(points, labels))


def vocabulary_pca(model, k: int = 3, n_extremes: int = 8) -> dict:
    """PCA of every row of W_E, with what each component correlates with and its extreme tokens."""
    W = embedding_matrix(model)
    result = pca(W, k)
    scores = result["scores"]
    tokens = model.tokenizer.convert_ids_to_tokens(list(range(W.shape[0])))
    log_id = np.log1p(np.arange(W.shape[0]))   # BPE ids follow merge order, a proxy for frequency rank
    norms = W.to(torch.float64).norm(dim=1).numpy()
    leading_space = np.array([t.startswith("Ġ") for t in tokens], dtype=float)
    summary = []
    for j in range(k):
        s = scores[:, j].numpy()
        order = np.argsort(s)
        summary.append({
            "explained_variance_ratio": result["explained_variance_ratio"][j].item(),
            "corr_log_token_id": float(np.corrcoef(s, log_id)[0, 1]),
            "corr_row_norm": float(np.corrcoef(s, norms)[0, 1]),
            "corr_leading_space": float(np.corrcoef(s, leading_space)[0, 1]),
            "lowest": ", ".join(repr(tokens[i].replace("Ġ", "␣")) for i in order[:n_extremes]),
            "highest": ", ".join(repr(tokens[i].replace("Ġ", "␣")) for i in order[::-1][:n_extremes]),
        })
    return {"pca": result, "tokens": tokens, "components": summary}


def category_clusters(model, categories: dict[str, list[str]] = CATEGORY_WORDS, k: int = 3) -> dict:
    """PCA of the category words' (centred-vocabulary) embeddings and how well the categories
    separate: silhouette score in the top-k PCA space and in the full space (1 = tight separate
    clusters, 0 = overlapping, < 0 = mixed)."""
    words = [w for ws in categories.values() for w in ws]
    labels = [c for c, ws in categories.items() for _ in ws]
    mean = embedding_matrix(model).to(torch.float64).mean(0)
    X, counts = word_vectors(model, words, mean)
    result = pca(X, k)
    X_unit = (X / X.norm(dim=1, keepdim=True)).numpy()
    return {"words": words, "labels": labels, "subtokens": counts, "pca": result,
            "silhouette_pca": _silhouette(result["scores"].numpy(), labels),
            "silhouette_full_cosine": _silhouette(X_unit, labels)}


# ---------------------------------------------------------------- figures and run


def _plot_spectrum(spectra: dict[str, Tensor], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, S in spectra.items():
        S = S.numpy()
        ax1.semilogy(np.arange(1, len(S) + 1), S, label=label, ls="--" if "raw" in label else "-")
        energy = S ** 2
        ax2.plot(np.arange(1, len(S) + 1), np.cumsum(energy) / energy.sum(), label=label,
                 ls="--" if "raw" in label else "-")
    ax1.axvline(10, color="grey", lw=0.8, ls="--")
    ax2.axvline(10, color="grey", lw=0.8, ls="--")
    ax1.set(xlabel="index i", ylabel=r"singular value $\sigma_i$",
            title="Spectrum of W_E (log scale; a last value near 0 = rank d_model − 1)")
    ax2.set(xlabel="k", ylabel=r"$\sum_{i\leq k}\sigma_i^2 / \sum_i \sigma_i^2$",
            title="Cumulative energy (dashed: k = 10)", ylim=(0, 1.01))
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _plot_pairs(results: dict[str, dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7.2 * len(results), 6.6))
    for ax, (label, r) in zip(np.atleast_1d(axes), results.items()):
        C = r["cosine"].numpy()
        lim = np.abs(C).max()
        im = ax.imshow(C, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_xticks(range(len(r["words_b"])), r["words_b"], rotation=90, fontsize=8)
        ax.set_yticks(range(len(r["words_a"])), r["words_a"], fontsize=8)
        ax.set_title(f"{label}\ndiagonal {r['mean_diagonal']:.2f} vs off-diagonal {r['mean_off_diagonal']:.2f}, "
                     f"partner = row max {r['partner_is_row_argmax']:.0%}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine (centred embeddings)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _plot_pca(vocab: dict, clusters: dict, label: str, path: Path, n_sample: int = 6000, seed: int = 0) -> None:
    import matplotlib.pyplot as plt

    scores = vocab["pca"]["scores"].numpy()
    evr = vocab["pca"]["explained_variance_ratio"].numpy()
    kinds = np.array([token_kind(t) for t in vocab["tokens"]])
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(scores), size=min(n_sample, len(scores)), replace=False)
    fig = plt.figure(figsize=(17, 5.4))
    ax3 = fig.add_subplot(1, 3, 1, projection="3d")
    palette = plt.get_cmap("tab10")
    for i, kind in enumerate(sorted(set(kinds))):
        sel = sample[kinds[sample] == kind]
        ax3.scatter(*scores[sel, :3].T, s=2, alpha=0.5, color=palette(i), label=f"{kind} ({(kinds == kind).sum()})")
    ax3.set(xlabel=f"PC1 ({evr[0]:.1%})", ylabel=f"PC2 ({evr[1]:.1%})", zlabel=f"PC3 ({evr[2]:.1%})")
    ax3.set_title(f"Every token's embedding on the top 3 PCs\n({len(sample)} sampled of {len(scores)})", fontsize=9)
    ax3.legend(fontsize=7, markerscale=4, loc="upper left")
    ax2 = fig.add_subplot(1, 3, 2)
    ax2.hexbin(np.log10(1 + np.arange(len(scores))), scores[:, 0], gridsize=60, bins="log", cmap="viridis")
    r = vocab["components"][0]["corr_log_token_id"]
    ax2.set(xlabel="log10(1 + token id)  (BPE merge order ≈ frequency rank)", ylabel="PC1 score",
            title=f"PC1 tracks frequency: corr with log id {r:.2f}, with ‖row‖ {vocab['components'][0]['corr_row_norm']:.2f}")
    ax2.title.set_fontsize(9)
    ax1 = fig.add_subplot(1, 3, 3)
    s = clusters["pca"]["scores"].numpy()
    cats = list(dict.fromkeys(clusters["labels"]))
    for i, cat in enumerate(cats):
        idx = [j for j, c in enumerate(clusters["labels"]) if c == cat]
        ax1.scatter(s[idx, 0], s[idx, 1], color=palette(i), label=cat, s=18)
        for j in idx:
            ax1.annotate(clusters["words"][j], (s[j, 0], s[j, 1]), fontsize=6, color=palette(i))
    e = clusters["pca"]["explained_variance_ratio"].numpy()
    ax1.set(xlabel=f"PC1 of these words ({e[0]:.0%})", ylabel=f"PC2 ({e[1]:.0%})")
    ax1.set_title(f"Semantic categories (PCA of the 60 words)\nsilhouette {clusters['silhouette_pca']:.2f} "
                  f"in 3 PCs", fontsize=9)
    ax1.legend(fontsize=7)
    fig.suptitle(f"1A.4 PCA of the embedding ({label})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _pairs_json(r: dict) -> dict:
    out = {k: v for k, v in r.items() if k != "cosine"}
    out["cosine"] = [[round(x, 4) for x in row] for row in r["cosine"].tolist()]
    return out


def run(out_dir: Path, models: tuple[str, str] = ("smollm2", "gpt2-random")) -> dict:
    """Part 1A on a trained model and on the random GPT-2-shaped control; figures part1a_*.png."""
    from .models import MODELS

    figures = Path(out_dir) / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    trained_name, random_name = models
    out: dict = {"models": {"trained": MODELS[trained_name].label, "random": MODELS[random_name].label}}
    spectra, pairs = {}, {}
    for role, name in (("trained", trained_name), ("random", random_name)):
        model, raw = model_and_raw_embedding(name)
        W = embedding_matrix(model)
        S, V = gram_spectrum(W)
        S_raw = S if torch.equal(raw, W) else singular_values(raw)
        n = W.shape[1] + 2
        tokens = torch.arange(100, 100 + n)
        p, q = indistinguishable_mixtures(W, tokens)
        pair, raw_pairs = pair_similarity(model), pair_similarity(model, center=False)
        vocab, clusters = vocabulary_pca(model), category_clusters(model)
        out[role] = {
            "model": MODELS[name].label,
            "spectrum": spectrum_summary(W, S=S) | {"top_direction_vs_mean_cos": top_direction_vs_mean(W, V)},
            "rank_nullity": rank_nullity(W, S),                 # W_E as TransformerLens holds it
            "rank_nullity_raw": rank_nullity(raw, S_raw),       # W_E as the checkpoint stores it
            "duplicate_groups": [", ".join(g) for g in duplicate_row_groups(W, model.tokenizer)],
            "mixtures": {"n_tokens": n, "total_variation": 0.5 * (p - q).abs().sum().item(),
                         "embedding_gap_norm": (W[tokens].to(torch.float64).T @ (p - q)).norm().item(),
                         "mean_embedding_norm": (W[tokens].to(torch.float64).T @ p).norm().item()},
            "pairs": _pairs_json(pair),
            "pairs_uncentred": {k: raw_pairs[k] for k in ("mean_diagonal", "mean_off_diagonal", "gap",
                                                          "partner_is_row_argmax", "permutation_p_value")},
            "pca": {"components": vocab["components"],
                    "category_silhouette_pca": clusters["silhouette_pca"],
                    "category_silhouette_full_cosine": clusters["silhouette_full_cosine"]},
        }
        spectra[f"{MODELS[name].label} (as loaded)"] = S
        if S_raw is not S:
            spectra[f"{MODELS[name].label} (raw checkpoint)"] = S_raw
        pairs[MODELS[name].label] = pair
        if role == "trained":
            _plot_pca(vocab, clusters, MODELS[name].label, figures / "part1a_pca.png")
    _plot_spectrum(spectra, figures / "part1a_spectrum.png")
    _plot_pairs(pairs, figures / "part1a_pairs.png")
    return out
