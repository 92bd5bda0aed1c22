"""The gate of Part 1A (the geometry of the embedding).

References: ``torch.linalg.svdvals`` and ``torch.linalg.matrix_rank`` (LAPACK's SVD, a different
algorithm from our Gram-matrix eigensolver), ``torch.nn.functional.cosine_similarity`` and
scikit-learn's ``PCA``. Semantic claims are checked on SmolLM2-135M-Instruct's trained embedding,
with a random GPT-2-shaped embedding as the control; the rank–nullity arithmetic is checked on the
actual matrices. GPT-2 small's full shape (50257 × 768, nullity 49489) is checked in a slow test,
because building that model costs more than the gate's budget; the gate uses GPT-2's vocabulary
of 50257 tokens with a narrower d_model, where the same identity holds.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from checks import assert_parity
from checks.committed import assert_reproduces, float_ops
from checks.models import random_gpt2

from . import geometry as G

pytestmark = pytest.mark.asset("smollm2-135m-instruct", "gpt2-tokenizer")


@pytest.fixture(scope="module")
def smol():
    from .models import load

    return load("smollm2")


@pytest.fixture(scope="module")
def W(smol):
    return G.embedding_matrix(smol)


@pytest.fixture(scope="module")
def gram(W):
    """(singular values, right singular vectors) of SmolLM2's W_E by our Gram route."""
    return G.gram_spectrum(W)


@pytest.fixture(scope="module")
def spectrum(W, gram):
    """Ours (Gram eigenvalues) and LAPACK's singular values of SmolLM2's W_E, both in float64."""
    return gram[0], torch.linalg.svdvals(W.to(torch.float64))


@pytest.fixture(scope="module")
def tiny_gpt2():
    """GPT-2's tokenizer and vocabulary (50257), d_model 64: (TransformerLens model, HF twin)."""
    return random_gpt2(n_layers=1, d_model=64, n_heads=4, seed=3)


def test_top10_singular_values_and_energy_match_svdvals(W, spectrum, measure):
    """1A.1 SVD: the top-10 singular values of the embedding (SmolLM2, 49152 × 576) and the energy
    fraction they capture equal torch.linalg.svdvals' on the same matrix (rtol 1e-9: the Gram route
    loses about m·u·(σ_1/σ_i)² ≈ 1e-9 relative on the smallest of the ten), and Σσ² = ‖W_E‖_F²."""
    ours, ref = spectrum
    report = assert_parity(ours[:10], ref[:10], atol=0, rtol=1e-9, name="1a.top10_sv")
    measure.parity(report)
    ours_fraction = G.energy_fraction(ours, 10)
    ref_fraction = (ref[:10] ** 2).sum() / W.to(torch.float64).pow(2).sum()
    assert ours_fraction == pytest.approx(ref_fraction.item(), rel=1e-9)
    assert (ours ** 2).sum().item() == pytest.approx(W.to(torch.float64).pow(2).sum().item(), rel=1e-10)
    measure("1a.smollm2.energy_fraction_top10", ours_fraction)
    measure("1a.smollm2.sigma_1", ours[0].item())
    # the whole spectrum, not only the top: the Gram route resolves every σ of this matrix
    measure.parity(assert_parity(ours, ref, atol=0, rtol=1e-7, name="1a.all_sv"))


def test_energy_fraction_closed_form():
    """1A.1 energy fraction: Σ_{i≤k}σ_i²/Σσ_i² on a matrix with known singular values (3, 2, 1, 1)
    is (9 + 4)/15, and equals the share of ‖W‖_F² kept by the best rank-k approximation."""
    generator = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(50, 4, generator=generator, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(4, 4, generator=generator, dtype=torch.float64))
    A = U @ torch.diag(torch.tensor([3.0, 2.0, 1.0, 1.0], dtype=torch.float64)) @ V.T
    S = G.singular_values(A)
    assert_parity(S, torch.tensor([3.0, 2.0, 1.0, 1.0], dtype=torch.float64), atol=1e-12)
    assert G.energy_fraction(S, 2) == pytest.approx(13 / 15, rel=1e-12)
    Uf, Sf, Vhf = torch.linalg.svd(A, full_matrices=False)
    A2 = (Uf[:, :2] * Sf[:2]) @ Vhf[:2]
    assert G.energy_fraction(S, 2) == pytest.approx((A2.norm() ** 2 / A.norm() ** 2).item(), rel=1e-12)


def test_top_singular_direction_is_the_mean_offset(W, gram, measure):
    """1A.1 interpretation: SmolLM2's v_1 is the rows' shared offset (|cos(v_1, mean row)| > 0.99)
    and V·‖mean‖² is over 85% of σ_1², so most of the top singular value's "energy" says nothing
    about which token is which; in a random embedding v_1 is unrelated to the mean (|cos| < 0.3)."""
    S, V = gram
    assert (W.to(torch.float64) @ V[:, 0]).norm().item() == pytest.approx(S[0].item(), rel=1e-10)  # ‖W v_1‖ = σ_1
    cos = G.top_direction_vs_mean(W, V)
    measure("1a.smollm2.top_direction_vs_mean_cos", cos, "> 0.99")
    assert cos > 0.99
    W64 = W.to(torch.float64)
    offset_share = W64.shape[0] * W64.mean(0).norm().item() ** 2 / S[0].item() ** 2
    measure("1a.smollm2.offset_share_of_sigma1_sq", offset_share, "> 0.85")
    assert 0.85 < offset_share <= 1.0
    random = torch.randn(20000, 64, generator=torch.Generator().manual_seed(1)) * 0.02
    assert G.top_direction_vs_mean(random) < 0.3


def test_numerical_rank_matches_matrix_rank(W, spectrum, measure):
    """1A.2 numerical rank: our rank rule (σ > σ_1·max(m, n)·eps of the storage dtype) equals
    torch.linalg.matrix_rank on SmolLM2's W_E (576 = d_model) and on constructed matrices of
    known rank 7 (float32 and float64), where a rank-deficient matrix must not count as full."""
    ours = G.numerical_rank(spectrum[0], tuple(W.shape), torch.finfo(W.dtype).eps)
    ref = int(torch.linalg.matrix_rank(W))
    measure("1a.smollm2.rank", ours, f"= matrix_rank = {ref}")
    assert ours == ref == W.shape[1]
    generator = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.float64):
        A = (torch.randn(300, 7, generator=generator, dtype=torch.float64)
             @ torch.randn(7, 40, generator=generator, dtype=torch.float64)).to(dtype)
        rank = G.numerical_rank(G.singular_values(A), tuple(A.shape), torch.finfo(dtype).eps)
        assert rank == int(torch.linalg.matrix_rank(A)) == 7


def test_rank_nullity_of_the_embedding(W, spectrum, tiny_gpt2, measure):
    """1A.2 rank–nullity: dim ker E = d_vocab − rank, from the matrices' own shapes: SmolLM2
    49152 − 576 = 48576; a GPT-2-vocabulary embedding (50257 × 64, raw) 50257 − 64 = 50193."""
    smol = G.rank_nullity(W, spectrum[0])
    assert (smol["d_vocab"], smol["d_model"]) == tuple(W.shape) == (49152, 576)
    assert smol["nullity"] == 49152 - 576 == smol["d_vocab"] - smol["rank"]
    measure("1a.smollm2.nullity", smol["nullity"], "= 49152 − 576")
    raw = tiny_gpt2[1].transformer.wte.weight.detach()
    gpt = G.rank_nullity(raw)
    assert gpt["rank"] == 64 and gpt["nullity"] == 50257 - 64


def test_transformer_lens_centres_gpt2_embedding(tiny_gpt2, measure):
    """1A.2 (which matrix?): TransformerLens's center_writing_weights stores W_E − rowmean(W_E) for
    GPT-2 (the first LayerNorm removes that mean anyway), so the processed matrix's rank drops to
    d_model − 1 and its nullity rises by one; the raw checkpoint's is d_vocab − d_model."""
    model, hf = tiny_gpt2
    raw = hf.transformer.wte.weight.detach()
    assert_parity(model.W_E, raw - raw.mean(1, keepdim=True), atol=1e-6)
    processed = G.rank_nullity(G.embedding_matrix(model))
    measure("1a.tiny_gpt2.processed_rank", processed["rank"], "= d_model − 1 = 63")
    assert processed["rank"] == 63 and processed["nullity"] == 50257 - 63


def test_indistinguishable_token_mixtures(W):
    """1A.2 what is lost: two distributions over 578 tokens with disjoint supports (total variation
    1) whose average embeddings agree to 1e-12 relative: E cannot tell them apart."""
    tokens = torch.arange(100, 100 + W.shape[1] + 2)
    p, q = G.indistinguishable_mixtures(W, tokens)
    assert (p >= 0).all() and (q >= 0).all()
    assert p.sum().item() == pytest.approx(1) and q.sum().item() == pytest.approx(1)
    assert 0.5 * (p - q).abs().sum().item() == pytest.approx(1.0)
    A = W[tokens].to(torch.float64)
    assert (A.T @ (p - q)).norm().item() < 1e-12 * (A.T @ p).norm().item()


def test_cosines_match_torch_and_subtokens_are_averaged(smol):
    """1A.3 cosine similarity: cosine_matrix equals torch.nn.functional.cosine_similarity (1e-12),
    and a word that is several tokens gets the mean of its sub-token rows."""
    A, counts = G.word_vectors(smol, ["king", "queen", "antidisestablishmentarianism"])
    assert counts[:2] == [1, 1] and counts[2] > 1
    ids = smol.tokenizer(" antidisestablishmentarianism", add_special_tokens=False)["input_ids"]
    assert_parity(A[2], G.embedding_matrix(smol)[ids].to(torch.float64).mean(0), atol=1e-12)
    ref = F.cosine_similarity(A[:, None, :], A[None, :, :], dim=-1)
    assert_parity(G.cosine_matrix(A, A), ref, atol=1e-12)


def test_word_pairs_show_semantic_structure(smol, tiny_gpt2, measure):
    """1A.3 semantic structure: in SmolLM2, all 20 pair words are single tokens, each word's partner
    is its most similar word of the other column in ≥ 90% of rows, the diagonal beats the
    off-diagonal mean by > 0.15 (permutation p < 0.01); random embeddings show no gap (|gap| < 0.1)."""
    r = G.pair_similarity(smol, n_permutations=2000)
    assert r["subtokens_a"] == [1] * 20 and r["subtokens_b"] == [1] * 20
    measure("1a.smollm2.pairs.gap", r["gap"], "> 0.15")
    measure("1a.smollm2.pairs.partner_is_row_argmax", r["partner_is_row_argmax"], "≥ 0.9")
    measure("1a.smollm2.pairs.p_value", r["permutation_p_value"], "< 0.01")
    assert r["gap"] > 0.15 and r["partner_is_row_argmax"] >= 0.9 and r["permutation_p_value"] < 0.01
    control = G.pair_similarity(tiny_gpt2[0], n_permutations=2000)
    measure("1a.random.pairs.gap", control["gap"], "|·| < 0.1")
    assert abs(control["gap"]) < 0.1


def test_pca_matches_sklearn_up_to_sign(W, measure):
    """1A.4 PCA: the top-3 components, explained-variance ratios and projections equal
    scikit-learn's PCA (svd_solver="full") up to each component's sign (atol 1e-9), on every 16th
    token of SmolLM2's embedding (3072 × 576; the identity does not depend on which rows)."""
    from sklearn.decomposition import PCA

    X = W[::16].to(torch.float64)
    ours = G.pca(X, 3)
    ref = PCA(n_components=3, svd_solver="full").fit(X.numpy())
    signs = np.sign((ours["components"].numpy() * ref.components_).sum(1))
    report = assert_parity(ours["components"] * torch.as_tensor(signs)[:, None], ref.components_, atol=1e-9,
                           name="1a.pca_components")
    measure.parity(report)
    assert_parity(ours["explained_variance_ratio"], ref.explained_variance_ratio_, atol=1e-12)
    assert_parity(ours["scores"] * torch.as_tensor(signs), ref.transform(X.numpy()), atol=1e-9)


def test_pca_has_interpretable_structure(smol, tiny_gpt2, measure):
    """1A.4 clusters: on SmolLM2's whole vocabulary PC1 tracks token rarity (|corr| with the row
    norm > 0.5), and 60 words in 6 semantic categories form clusters in 3 PCs (silhouette > 0.3);
    the random embedding's categories do not (silhouette < 0.1)."""
    vocab = G.vocabulary_pca(smol)
    r = vocab["components"][0]["corr_row_norm"]
    measure("1a.smollm2.pc1_corr_row_norm", r, "|·| > 0.5")
    assert abs(r) > 0.5
    trained = G.category_clusters(smol)
    control = G.category_clusters(tiny_gpt2[0])
    measure("1a.smollm2.category_silhouette", trained["silhouette_pca"], "> 0.3")
    measure("1a.random.category_silhouette", control["silhouette_pca"], "< 0.1")
    assert trained["silhouette_pca"] > 0.3 > 0.1 > control["silhouette_pca"]


def test_committed_results_are_current(W, gram, committed):
    """Report: the committed results.json (part1a) holds this code's SmolLM2 spectrum, rank and
    word-pair statistics (recomputed here; rerun `python -m capstone.gauntlet --parts part1a` if not). The
    Gram route's float64 rounding bounds how far the spectrum moves on another CPU: λ_i is off by
    ≈ m·u·σ_1² (the 49 152-term products of WᵀW and eigh's backward error), so σ_i by m·u·(σ_1/σ_i)² relative,
    ≤ float_ops(m·(σ_1/σ_10)²) ≈ 1e-8 for the top ten; their energy share, a ratio of sums of 10 and 576
    eigenvalues each off by m·u·σ_1², by ≤ float_ops(576·m) ≈ 2.5e-8. The rank is a count of σ_i above
    the rank tolerance: σ_min/σ_1 = 0.011 against a threshold of 5.9e-3, far beyond rounding (exact)."""
    results = committed["part1a"]["trained"]
    m, n = W.shape
    sigma = gram[0]
    ratio2 = (sigma[0] / sigma[9]).item() ** 2
    top10 = float_ops(int(m * ratio2), why=f"Gram-route σ_i: m·u·(σ_1/σ_i)² with m = {m}, (σ_1/σ_10)² = {ratio2:.0f}")
    assert_reproduces(sigma[:10], torch.tensor(results["spectrum"]["top_singular_values"], dtype=torch.float64), top10,
                      name="part1a.spectrum.top_singular_values")
    assert results["rank_nullity"]["rank"] == G.numerical_rank(sigma, tuple(W.shape), torch.finfo(W.dtype).eps)
    assert_reproduces(G.energy_fraction(sigma, 10), results["spectrum"]["energy_fraction_top_k"],
                      float_ops(n * m, why="a ratio of sums of eigenvalues, each off by m·u·σ_1²"),
                      name="part1a.spectrum.energy_fraction_top_k")


@pytest.mark.slow
def test_rank_nullity_at_gpt2_small_shape(measure):
    """1A.2 rank–nullity at GPT-2 small's shape (gpt2-random, 50257 × 768): the raw checkpoint
    embedding has rank 768 and nullity 50257 − 768 = 49489; TransformerLens's centred copy 767 and 49490."""
    model, raw = G.model_and_raw_embedding("gpt2-random")
    raw_r = G.rank_nullity(raw)
    processed = G.rank_nullity(G.embedding_matrix(model))
    assert tuple(model.W_E.shape) == (model.cfg.d_vocab, model.cfg.d_model) == (50257, 768)
    measure("1a.gpt2_shape.nullity_raw", raw_r["nullity"], "= 50257 − 768 = 49489")
    assert raw_r["rank"] == 768 and raw_r["nullity"] == 49489
    assert processed["rank"] == 767 and processed["nullity"] == 49490
