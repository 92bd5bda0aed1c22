"""The gate of day 63 (ARENA 1.5.2 Grokking: the Fourier basis, fft1d/fft2d, effective weights, key frequencies,
neuron clusters, the trig identity on the logits).

References: ``torch.fft.rfft`` through the closed-form change of basis (our real coefficients are the real and
imaginary parts of the DFT, scaled), Parseval's identity, TransformerLens's cache for the effective weights, and
a hand-built one-layer model of day 62's architecture that runs the algorithm with chosen key frequencies, so that
the key frequencies, the neurons' frequencies and the trig fit have known answers. Then day 62's committed model.
"""

import importlib
import math

import pytest
import torch

from checks import assert_parity
from checks.committed import assert_reproduces, exact, float_ops, statistical

from . import fourier as F

grokking = importlib.import_module("days.062.grokking")
fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module

P = 113
KEYS = [17, 25, 32, 47]     # the key frequencies ARENA reports for its downloaded model


@pytest.fixture(scope="module")
def handbuilt():
    return F.make_handbuilt_model(P, KEYS)


@pytest.fixture(scope="module")
def handbuilt_clusters(handbuilt):
    return F.neuron_clusters(handbuilt)


@pytest.fixture(scope="module")
def committed_model():
    return grokking.load_grokking_model()


@pytest.fixture(scope="module")
def committed_analysis(committed_model):
    return F.analyse(committed_model)


def dft_coefficients(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Our real Fourier coefficients along ``dim`` from torch.fft.rfft, by the closed form: with X_k = Σ_x x e^{−iw_k x},
    the constant is X_0/√p, cos k is √(2/p)·Re X_k and sin k is −√(2/p)·Im X_k (odd p: all rows have norm √(p/2)
    except the constant's √p)."""
    x = x.transpose(dim, -1)
    p = x.shape[-1]
    X = torch.fft.rfft(x, dim=-1)
    out = torch.empty_like(x)
    out[..., 0] = X[..., 0].real / math.sqrt(p)
    out[..., 1::2] = math.sqrt(2 / p) * X[..., 1:].real
    out[..., 2::2] = -math.sqrt(2 / p) * X[..., 1:].imag
    return out.transpose(dim, -1)


# ---------------------------------------------------------------- the basis and the transforms


@pytest.mark.parametrize("p", [7, 113])
def test_make_fourier_basis_is_orthonormal(p, measure):
    """make_fourier_basis(p): p rows Const, cos 1, sin 1, …, cos ⌊p/2⌋, sin ⌊p/2⌋, proportional to the closed-form
    waves, with B Bᵀ = I (float32: within float_ops(p, float32) per entry, a p-term dot product)."""
    basis, names = F.make_fourier_basis(p)
    assert basis.shape == (p, p) and basis.dtype == torch.float32
    assert names[:3] == ["Const", "cos 1", "sin 1"] and names[-1] == f"sin {p // 2}" and len(names) == p
    x = torch.arange(p, dtype=torch.float64)
    k = p // 2
    assert torch.allclose(basis[2 * k].double(), torch.sin(2 * math.pi * k * x / p) / math.sqrt(p / 2), atol=1e-6)
    err = (basis.double() @ basis.double().T - torch.eye(p, dtype=torch.float64)).abs().max().item()
    measure(f"p{p}.orthonormality.max_abs_err", err, f"≤ {float_ops(p, 'float32').rel:.1e}")
    assert err <= float_ops(p, "float32").rel


def test_fft1d_against_torch_fft_and_parseval(measure):
    """fft1d along the last dimension equals torch.fft.rfft through the closed-form change of basis (float64, 1e-12
    relative to the largest coefficient); Parseval: ‖fft1d(x)‖ = ‖x‖ per vector; the inverse x = fft1d(x) B returns x;
    fft1d_given_dim transforms another dimension the same way."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, P, dtype=torch.float64, generator=gen)
    ours, ref = F.fft1d(x), dft_coefficients(x, -1)
    report = assert_parity(ours, ref, atol=1e-12 * ref.abs().max().item())
    measure("fft1d_vs_torch_fft.max_abs_err", report.max_abs_err)
    assert torch.allclose(ours.norm(dim=-1), x.norm(dim=-1), rtol=1e-12)
    assert torch.allclose(ours @ F.fourier_basis_for(P, torch.float64), x, atol=1e-12)
    y = torch.randn(P, 5, dtype=torch.float64, generator=gen)
    assert torch.allclose(F.fft1d_given_dim(y, 0), dft_coefficients(y, 0), atol=1e-11)


def test_fft2d_against_torch_fft_round_trip_and_parseval(measure):
    """fft2d on a p × p grid (with a batch dimension) equals the 1D closed form from torch.fft.rfft applied along
    both grid dimensions (1e-12 relative); inverse_fft2d(fft2d(T)) = T; Parseval ‖T̂‖ = ‖T‖ per batch element;
    fourier_2d_basis_term(i, j) has the single coefficient 1 at (i, j)."""
    gen = torch.Generator().manual_seed(1)
    T = torch.randn(P, P, 3, dtype=torch.float64, generator=gen)
    ours = F.fft2d(T)
    ref = dft_coefficients(dft_coefficients(T, 0), 1)
    report = assert_parity(ours, ref, atol=1e-12 * ref.abs().max().item())
    measure("fft2d_vs_torch_fft.max_abs_err", report.max_abs_err)
    assert torch.allclose(F.inverse_fft2d(ours), T, atol=1e-11)
    assert torch.allclose(ours.pow(2).sum((0, 1)), T.pow(2).sum((0, 1)), rtol=1e-12)
    for i, j in [(0, 0), (3, 8), (2 * 17, 2 * 17 - 1)]:
        coeffs = F.fft2d(F.fourier_2d_basis_term(i, j, P))
        expected = torch.zeros(P, P)
        expected[i, j] = 1.0
        assert torch.allclose(coeffs, expected, atol=1e-5)


def test_projections_and_trig_sum_directions():
    """get_trig_sum_directions(k) are the unit functions cos(w_k(a + b)) and sin(w_k(a + b)) on the grid (the sum
    formulas); project_onto_frequency keeps a function made of frequency k's terms and removes frequency l ≠ k's;
    project_onto_direction is idempotent."""
    a = torch.arange(P, dtype=torch.float64)
    s = a[:, None] + a[None, :]
    k = 25
    cos_dir, sin_dir = F.get_trig_sum_directions(k, P, torch.float64)
    for d, f in ((cos_dir, torch.cos), (sin_dir, torch.sin)):
        ref = f(2 * math.pi * k * s / P)
        assert torch.allclose(d, ref / ref.norm(), atol=1e-12)
    g = (torch.cos(2 * math.pi * k * s / P) + 0.5 * torch.sin(2 * math.pi * k * a / P)[:, None]).flatten()[:, None]
    h = torch.cos(2 * math.pi * 3 * s / P).flatten()[:, None]
    assert torch.allclose(F.project_onto_frequency(g, k), g, atol=1e-10)
    assert F.project_onto_frequency(h, k).abs().max() < 1e-10
    once = F.project_onto_direction(g, cos_dir.flatten())
    assert torch.allclose(F.project_onto_direction(once, cos_dir.flatten()), once, atol=1e-12)


# ---------------------------------------------------------------- a model whose answer is known


def logit_error_bound(model) -> float:
    """The hand-built logits' distance from α Σ_k cos(w_k(a + b − c)): each square's interpolant is above z² by at
    most e = h²/4, so each product ¼(·) is off by ≤ e/2 in cos and in sin, each frequency's logit by ≤ α·e/√2,
    all K by K·α·e/√2; plus float32 rounding (float_ops(2000, float32) of the largest logit) and the attention's
    leak e^{−60}."""
    hb = model.handbuilt
    return len(hb["key_freqs"]) * hb["alpha"] * hb["square_error_bound"] / math.sqrt(2) + \
        float_ops(2000, "float32").rel * hb["alpha"] * len(hb["key_freqs"])


def test_handbuilt_model_computes_the_trig_sum(handbuilt, measure):
    """The hand-built model (TransformerLens's forward, and day 62's fast forward) gives logit(a, b, c) =
    α Σ_k cos(w_k(a + b − c)) within the derived bound on all p² inputs, and so answers (a + b) mod p on every one:
    the bound is below half the gap between the correct logit αK and the best wrong one."""
    p = P
    tokens = grokking.all_pairs(p)
    with torch.no_grad():
        tl = handbuilt(tokens)[:, -1]
    fast = grokking.final_position_logits(handbuilt, tokens).detach()
    a = torch.arange(p, dtype=torch.float64)
    s = (a[:, None, None] + a[None, :, None] - a[None, None, :]).reshape(p * p, p)
    ideal = handbuilt.handbuilt["alpha"] * sum(torch.cos(2 * math.pi * k * s / p) for k in KEYS)
    bound = logit_error_bound(handbuilt)
    err = (tl.double() - ideal).abs().max().item()
    gap = handbuilt.handbuilt["alpha"] * (len(KEYS) - max(sum(math.cos(2 * math.pi * k * d / p) for k in KEYS)
                                                          for d in range(1, p)))
    measure("handbuilt.logit_err", err, f"≤ {bound:.3f}")
    measure("handbuilt.margin", gap)
    assert err <= bound and 2 * bound < gap
    assert (fast - tl).abs().max() <= 1e-4 * tl.abs().max()
    assert (tl.argmax(-1) == grokking.labels_of(tokens, p)).all()


def test_effective_weights_identities(handbuilt, committed_model, measure):
    """The effective weights against TransformerLens's cache. On day 62's model: each neuron's pre-activation at "="
    is x_2 W_in + Σ_h Σ_j A_hj x_j W_OV^h W_in, where for the residues' positions x_j W_OV^h W_in = W_neur[h][t_j] +
    W_pos[j] W_OV^h W_in (A: TransformerLens's pattern); the logits are resid_mid W_U + post · W_logit; the attention
    score of "=" on a is W_attn[h][a] plus the key's positional part. In the hand-built model attention is one-hot
    (head 0 on a, head 1 on b), so the pre-activation is x_2 W_in + W_neur[0][a] + W_neur[1][b]. Tolerance 1e-4 of
    each side's scale: float32 sums of ≤ 512 terms, ordered differently."""
    reports = {}
    for name, model in (("committed", committed_model), ("handbuilt", handbuilt)):
        p = model.cfg.d_vocab_out
        tokens = grokking.all_pairs(p)
        W = F.effective_weights(model)
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens)
            pre = cache["pre", 0][:, -1]
            A = cache["pattern", 0][:, :, -1]                                      # [batch, head, key pos]
            x2 = model.W_E[p] + model.W_pos[2]
            W_OV_in = model.W_V[0] @ model.W_O[0] @ model.W_in[0]                  # [head, d, d_mlp]
            pred = x2 @ model.W_in[0] + torch.einsum("bh,hn->bn", A[:, :, 2], x2 @ W_OV_in)
            for j in (0, 1):
                term = W["W_neur"][:, tokens[:, j]] + (model.W_pos[j] @ W_OV_in)[:, None]   # [head, batch, d_mlp]
                pred = pred + torch.einsum("bh,hbn->bn", A[:, :, j], term)
            reports[f"{name}.W_neur"] = assert_parity(pred, pre, atol=1e-4 * pre.abs().max().item())
            if name == "handbuilt":
                onehot = x2 @ model.W_in[0] + W["W_neur"][0][tokens[:, 0]] + W["W_neur"][1][tokens[:, 1]]
                reports["handbuilt.W_neur_onehot"] = assert_parity(onehot, pre, atol=1e-4 * pre.abs().max().item())
                continue
            pred_logits = cache["resid_mid", 0][:, -1] @ model.W_U + cache["post", 0][:, -1] @ W["W_logit"]
            reports[f"{name}.W_logit"] = assert_parity(pred_logits, logits[:, -1], atol=1e-4 * logits.abs().max().item())
            q = x2 @ model.W_Q[0]
            pos_part = torch.einsum("he,hde,d->h", q, model.W_K[0], model.W_pos[0]) / model.cfg.d_head ** 0.5
            scores = cache["attn_scores", 0][:, :, -1, 0]
            reports[f"{name}.W_attn"] = assert_parity(W["W_attn"].T[tokens[:, 0]] + pos_part, scores,
                                                      atol=1e-4 * scores.abs().max().item())
    for key, r in reports.items():
        measure(f"{key}.max_abs_err", r.max_abs_err)


def test_handbuilt_key_frequencies_recovered_exactly(handbuilt, measure):
    """find_key_freqs on the hand-built W_E returns exactly the built frequencies, carrying all of W_E's Fourier
    norm (share 1 within float32 rounding); the same frequencies carry all of W_logit's."""
    keys, share = F.find_key_freqs(F.effective_weights(handbuilt)["W_E"])
    measure("handbuilt.key_share", share)
    assert keys == KEYS and share == pytest.approx(1.0, abs=1e-6)
    wl = F.fft1d(F.effective_weights(handbuilt)["W_logit"].double()).pow(2).sum(0)
    per_freq = wl[1::2] + wl[2::2]
    assert float(per_freq[[k - 1 for k in KEYS]].sum() / per_freq.sum()) == pytest.approx(1.0, abs=1e-6)


def test_handbuilt_neuron_clusters(handbuilt, handbuilt_clusters, measure):
    """Every hand-built neuron is ReLU(±(u_a ± u_b) − t) with u_a, u_b waves (cos or sin) of one key frequency k: in
    the coordinates k·a, k·b it is a shifted copy of ReLU(cos x + cos y − t), whose 2D spectrum decays away from the
    fundamental. So find_neuron_freqs assigns every neuron to the frequency it was built for, and the four clusters
    hold all 512 neurons, 128 each."""
    built = torch.tensor(handbuilt.handbuilt["neuron_freq"])
    freqs, frac = handbuilt_clusters["neuron_freqs"], handbuilt_clusters["neuron_frac_explained"]
    assert not handbuilt_clusters["dead"].any() and (built > 0).all()
    measure("handbuilt.neurons_assigned_to_built_freq", float((freqs == built).float().mean()))
    measure("handbuilt.neuron_frac_explained.min", float(frac.min()))
    measure("handbuilt.neuron_frac_explained.median", float(frac.median()))
    assert (freqs == built).all()
    assert {k: int((freqs == k).sum()) for k in KEYS} == {k: 128 for k in KEYS}


def test_trig_fit_on_exact_trig_logits_with_per_input_offsets():
    """trig_logit_fit on logits that ARE β(a, b) + Σ_k α_k cos(w_k(a + b − c)) (p = 11, keys 2 and 5, α = 1.5 and
    −0.7, β random per input): β is a constant over c, which the fit removes (each input's mean over c; the cosines
    sum to 0 over c), so α comes back exactly (1e-12) and the fit explains all the variance over c: r² = 1 (1e-12)."""
    p, keys, alphas = 11, [2, 5], [1.5, -0.7]
    a = torch.arange(p, dtype=torch.float64)
    s = a[:, None, None] + a[None, :, None] - a[None, None, :]
    beta = torch.randn(p, p, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logits = beta + sum(al * torch.cos(2 * math.pi * k * s / p) for al, k in zip(alphas, keys))
    fit = F.trig_logit_fit(logits, keys)
    assert fit["alpha"] == pytest.approx(alphas, abs=1e-12)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12)


def test_handbuilt_trig_fit(handbuilt, measure):
    """trig_logit_fit on the hand-built logits recovers α for every key frequency within (4/π)·b, b the logit error
    bound (the features cos(w_k(a + b − c)) are orthogonal, so α_k's error is ⟨ε, f_k⟩/⟨f_k, f_k⟩ ≤ b·mean|cos|/mean cos²
    = (4/π)·b), explains ≥ 99% of the logits' variance, and the fitted logits alone answer every input."""
    fit = F.trig_logit_fit(F.final_logits_grid(handbuilt), KEYS)
    alpha = handbuilt.handbuilt["alpha"]
    measure("handbuilt.trig_r2", fit["r2"], "≥ 0.99")
    assert all(abs(c - alpha) <= 4 / math.pi * logit_error_bound(handbuilt) for c in fit["alpha"])
    assert fit["r2"] >= 0.99
    labels = grokking.labels_of(grokking.all_pairs(P), P)
    assert (fit["fitted"].reshape(P * P, P).argmax(-1) == labels).all()


# ---------------------------------------------------------------- day 62's committed model


KEY_SHARE_BAR = 0.7        # a random embedding spreads its norm over ⌊p/2⌋ frequencies; the grokked one concentrates it
TRIG_R2_BAR = 0.7


def test_committed_model_is_fourier(committed_analysis, measure):
    """Day 62's committed model runs the algorithm: a few key frequencies (2-8) carry ≥ 70% of W_E's Fourier norm;
    most neurons (≥ 70% of the live ones) fall in the key frequencies' clusters; the trig fit with those frequencies
    explains ≥ 70% of the logits' variance, and the fitted logits alone answer ≥ 99% of all p² inputs."""
    a = committed_analysis
    measure("committed.key_freqs", str(a["key_freqs"]))
    measure("committed.key_share_W_E", a["key_share_W_E"], f"≥ {KEY_SHARE_BAR}")
    measure("committed.frac_neurons_in_key_clusters", a["frac_neurons_in_key_clusters"])
    measure("committed.trig_r2", a["trig_r2"], f"≥ {TRIG_R2_BAR}")
    measure("committed.trig_fit_accuracy", a["trig_fit_accuracy"])
    assert 2 <= len(a["key_freqs"]) <= 8
    assert a["key_share_W_E"] >= KEY_SHARE_BAR
    assert a["frac_neurons_in_key_clusters"] >= 0.7
    assert a["trig_r2"] >= TRIG_R2_BAR and a["trig_fit_accuracy"] >= 0.99


def test_committed_analysis_reproduces(committed_analysis, committed, measure):
    """results.json's numbers recomputed from the committed checkpoint: the key frequencies and the neuron counts
    per cluster exactly (decisions with margins far above rounding: a neuron whose two best frequencies are within
    1e-4 would show here), the shares, fractions and fits within float_ops(10^4, float32) (sums over p² inputs of
    float32 activations), the losses likewise."""
    now = committed_analysis
    then = committed["committed"]
    assert now["key_freqs"] == then["key_freqs"]
    assert now["neuron_freq_counts"] == then["neuron_freq_counts"]
    tol = float_ops(10_000, "float32", why="sums over the p² inputs of float32 activations", abs=1e-6)
    worst = 0.0
    for key in ("key_share_W_E", "key_share_W_logit", "neuron_frac_explained_mean", "trig_r2", "loss", "trig_fit_loss",
                "trig_alpha"):
        worst = max(worst, assert_reproduces(now[key], then[key], tol, name=key))
    assert_reproduces(now["accuracy"], then["accuracy"], exact("argmax decisions of a grokked model, margins ≫ rounding"))
    assert_reproduces(now["trig_fit_accuracy"], then["trig_fit_accuracy"],
                      statistical(5 / P ** 2, why="a handful of near-tie decisions of the fitted logits"))
    measure("committed_vs_results", worst, "≤ 1 (fraction of the tolerance)")
