"""The gate of Part 3B (the sycophancy direction).

References: scikit-learn (LogisticRegression's decision function, PCA), closed forms of the
participation ratio, and a planted-direction toy where the right answer is known. SmolLM2-135M-
Instruct's probe is checked from the committed results: held-out accuracy, ≥ 100 prompts per class,
and the committed probe applied to activations recomputed now. The full probe is re-fit in a slow test.
"""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from checks import assert_parity
from checks.committed import Tolerance, assert_reproduces, float_ops

from . import probes as P
from . import sycophancy as S
from .test_sycophancy import SMOL_DIFF_TOL, SMOL_REL  # SmolLM2's float32 errors on another CPU, derived there

@pytest.fixture(scope="module")
def results(committed):
    return committed["part3b"]


def test_participation_ratio_closed_forms():
    """3B.4: PR = 1 for a one-hot vector, d for a uniform one, 2 for (1, 1, 0, 0), scale-free; top-k
    mass of (3, 4, 0) is 16/25 for k = 1."""
    d = 576
    assert P.participation_ratio(np.eye(d)[7]) == pytest.approx(1.0)
    assert P.participation_ratio(np.ones(d)) == pytest.approx(d)
    assert P.participation_ratio(np.array([1.0, -1.0, 0.0, 0.0]) * 5) == pytest.approx(2.0)
    assert P.top_k_mass(np.array([3.0, 4.0, 0.0]), 1) == pytest.approx(16 / 25)


def test_random_directions_have_pr_about_d_over_3(measure):
    """3B.4 baseline: for v ~ N(0, I_d), E[(Σv_i²)²] = d² + 2d and E[Σv_i⁴] = 3d, so a random
    direction in ℝ^576 has PR ≈ (d + 2)/3 ≈ 193 (within 10%); its max |cos| with 1536 random neuron
    directions is about √(2 ln 3072 / 576) ≈ 0.17 (within 25%)."""
    rng = np.random.default_rng(1)
    W = rng.standard_normal((1536, 576))
    r = P.random_baseline(576, W)
    measure("3b.random_pr_mean", r["pr_mean"], "≈ 192")
    assert r["pr_mean"] == pytest.approx(576 / 3, rel=0.1)
    assert r["neuron_max_abs_cos_mean"] == pytest.approx(np.sqrt(2 * np.log(2 * 1536) / 576), rel=0.25)


def test_probe_direction_is_the_raw_space_decision_function():
    """3B.2: the probe is fitted on standardised features; its raw-space weight w/s (and offset)
    reproduce scikit-learn's decision function on raw inputs (atol 1e-9)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 20)) * rng.uniform(0.1, 30, 20) + rng.standard_normal(20)
    y = (X[:, 3] / 10 + rng.standard_normal(300) > 0).astype(float)
    scaler, clf = P.train_probe(X, y)
    w_raw = clf.coef_[0] / scaler.scale_
    b_raw = clf.intercept_[0] - w_raw @ scaler.mean_
    assert_parity(X @ w_raw + b_raw, clf.decision_function(scaler.transform(X)), atol=1e-9)
    assert np.linalg.norm(P.probe_direction(scaler, clf)) == pytest.approx(1.0)


def test_pca_matches_scikit_learn():
    """3B.3: our principal directions and explained-variance ratios equal scikit-learn's PCA (up to
    sign, atol 1e-8)."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((200, 30)) @ rng.standard_normal((30, 30))
    ours, ratio = P.pca_directions(X, 5)
    ref = PCA(5).fit(X)
    signs = np.sign((ours * ref.components_).sum(1))
    assert_parity(ours * signs[:, None], ref.components_, atol=1e-8)
    assert_parity(ratio, ref.explained_variance_ratio_, atol=1e-10)


def test_probe_finds_a_planted_direction_that_is_not_a_principal_component(measure):
    """3B.2–3B.4 on a toy with a known answer: classes differ along a planted unit direction u
    (means 3σ apart: the Bayes accuracy is Φ(1.5) = 0.93) while most variance lies in 5 unrelated large directions. The probe reaches
    > 85% held-out accuracy, cos(probe, u) > 0.8, the planted direction carries < 5% of the top-5
    PC subspace, and a 1-coordinate u has PR ≈ 1 while a spread u has PR ≫ 1."""
    rng = np.random.default_rng(3)
    d, n = 64, 1200
    big = np.linalg.qr(rng.standard_normal((d, 6)))[0]
    u, loud = big[:, 0], big[:, 1:]
    y = rng.integers(0, 2, n).astype(float)
    X = rng.standard_normal((n, d)) + (rng.standard_normal((n, 5)) * 10) @ loud.T + np.outer(y - 0.5, u) * 3.0
    scaler, clf = P.train_probe(X[:800], y[:800])
    acc = clf.score(scaler.transform(X[800:]), y[800:])
    w = P.probe_direction(scaler, clf)
    pcs, _ = P.pca_directions(X, 5)
    measure("3b.toy_probe_accuracy", acc, "> 0.85")
    assert acc > 0.85 and abs(w @ u) > 0.8
    assert ((pcs @ w) ** 2).sum() < 0.05
    assert P.participation_ratio(np.eye(d)[0]) < 1.01 < 10 < P.participation_ratio(u)


@pytest.mark.asset("smollm2-135m-instruct")
def test_probe_setup_and_random_baselines_are_current(results):
    """3B.1 and 3B.4 (SmolLM2): the layer is Part 3A's committed critical layer and the neurons are the layer
    before it; the training and held-out sets hold both forms of each pair of the split; the random-direction
    baselines the report cites (participation ratio, top-ten mass, neuron-basis PR and max |cos|) are recomputed
    from the seeded directions and the model's W_out (float64 sums of 576-term products: float_ops)."""
    from .models import load

    train, held = S.split(S.load_pairs())
    assert results["layer"] == P.critical_layer() and results["neuron_layer"] == max(results["layer"] - 1, 0)
    assert (results["n_train"], results["n_held_out"]) == (2 * len(train), 2 * len(held))
    W_out = load("smollm2").blocks[results["neuron_layer"]].mlp.W_out.detach().double().numpy()
    assert_reproduces(P.random_baseline(W_out.shape[1], W_out), results["random"],
                      float_ops(4 * 576, why="float64 norms, products and fourth powers over 576 coordinates"),
                      name="part3b.random")


@pytest.mark.asset("smollm2-135m-instruct")
def test_smollm2_probe_holds_on_fresh_activations(results, measure):
    """3B.1–3B.2 (SmolLM2): ≥ 100 prompts per class (train + held-out), held-out accuracy ≥ 0.9; the
    committed probe, applied to residuals recomputed now (up to the critical layer only) for 3
    held-out pairs, classifies all 6 prompts correctly."""
    from .models import load

    assert (results["n_train"] + results["n_held_out"]) // 2 >= 100
    assert results["held_out_accuracy"] >= 0.9
    model = load("smollm2")
    pairs = S.load_pairs()
    held = S.split(pairs)[1][:3]
    enc = [S.encode_pair(model, p) for p in held]
    layer = results["layer"]
    w, b = torch.tensor(results["w_raw"]), results["b_raw"]
    scores = []
    with torch.no_grad():
        for form in ("opinion", "neutral"):
            for e in enc:
                resid = model(torch.tensor([getattr(e, form)]), stop_at_layer=layer)[0, -1]
                scores.append((resid.double() @ w.double()).item() + b)
    scores = np.array(scores)
    assert (scores[:3] > 0).all() and (scores[3:] < 0).all()
    measure("3b.held_out_accuracy", results["held_out_accuracy"], "≥ 0.9")
    measure("3b.min_fresh_margin", float(np.abs(scores).min()))
    measure("3b.layer", layer)
    measure("3b.residual_pr", results["residual_pr"], f"random ≈ {results['random']['pr_mean']:.0f}")
    measure("3b.max_abs_cos_pc", results["max_abs_cos_pc"])
    measure("3b.neuron_max_abs_cos", results["neuron_max_abs_cos"],
            f"random ≈ {results['random']['neuron_max_abs_cos_mean']:.2f}")


# The refit probe's unit direction moves by at most this much (ℓ2) between two machines: scikit-learn's L-BFGS stops
# at a gradient of 1e-4 (max-norm) on a 1-strongly convex objective, so the standardised probe moves by
# ≤ √576·1e-4 ≈ 2.4e-3 on each machine, and its unit direction by ≤ 2·2.4e-3/‖w‖ ≤ 5e-3 (‖w‖ ≥ 1 for a probe this
# accurate).
PROBE_DIRECTION_MOVES = 5e-3


def lipschitz_tolerance(f, w: np.ndarray, moves: float, why: str) -> Tolerance:
    """Tolerance for f(ŵ) when the unit direction ŵ may move by ``moves`` (ℓ2): first order, ‖∇f(ŵ)‖₂ · moves
    (torch autograd in float64), doubled for the curvature over so short a step."""
    x = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    f(x).backward()
    return Tolerance(abs=2 * x.grad.norm().item() * moves, reason=why)


@pytest.mark.slow
@pytest.mark.asset("smollm2-135m-instruct")
def test_full_probe_reproduces_committed_numbers(results, tmp_path, measure):
    """3B (slow, ~3 min on an idle machine: the data set is re-scored): probes.run() itself, every number the report cites against the
    committed one. The layer, the neuron layer and the set sizes exactly; the random baselines to float64
    rounding; accuracies (train, held-out, at every layer) up to two predictions near the refit's boundary; every
    function of the probe direction ŵ (its cosine with the class-mean difference, the correlation of ŵᵀx with Δ,
    its participation ratio and top-ten mass, the cosines with the neurons' output directions, their maximum and
    participation ratio) within ‖∇f‖·PROBE_DIRECTION_MOVES, doubled (lipschitz_tolerance); the neuron with the
    largest |cos| exactly, its lead being larger than twice that movement; and the principal components' numbers
    (explained variance by Weyl; the cosines, their maximum and the top-ten mass by the components' first-order
    movement under the activations' float32 error, plus the direction's) within their bounds, the top-ten mass
    below a random direction's 10/576 even at its bound, and the PC closest to ŵ one that the bounds admit."""
    from .models import load

    r = P.run(tmp_path)
    for key in ("layer", "neuron_layer", "n_train", "n_held_out"):
        assert r[key] == results[key], key
    assert_reproduces(r["random"], results["random"], float_ops(4 * 576, why="float64 sums over 576 coordinates"),
                      name="part3b.random")
    n, n_train = results["n_held_out"], results["n_train"]
    held = Tolerance(abs=2 / n + 1e-12, reason=f"two of {n} held-out predictions near the refit's boundary")
    assert_reproduces(r["held_out_accuracy"], results["held_out_accuracy"], held, name="part3b.held_out_accuracy")
    assert_reproduces(r["accuracy_by_layer"], results["accuracy_by_layer"], held, name="part3b.accuracy_by_layer")
    assert_reproduces(r["train_accuracy"], results["train_accuracy"],
                      Tolerance(abs=2 / n_train + 1e-12, reason=f"two of {n_train} training predictions"),
                      name="part3b.train_accuracy")

    ev = S.evaluate("smollm2")  # memoised: the activations run() used
    train, held_pairs = S.split(ev.pairs)
    X, y = P.activation_dataset(ev, r["layer"], train)
    mu = torch.tensor(X[y == 1].mean(0) - X[y == 0].mean(0))
    idx = ev.index(held_pairs)
    Xo = torch.tensor(ev.resid_opinion[idx, r["layer"]].double().numpy())
    delta = ev.diff_opinion[idx].double()
    W = load("smollm2").blocks[r["neuron_layer"]].mlp.W_out.detach().double()
    Wn = W / W.norm(dim=1, keepdim=True)
    w = np.array(r["w_raw"]) / np.linalg.norm(r["w_raw"])
    pr = lambda v: v.pow(2).sum() ** 2 / v.pow(4).sum()  # noqa: E731

    moves = PROBE_DIRECTION_MOVES
    checks = {"cos_probe_mean_difference": lambda v: v @ mu / mu.norm(),
              "residual_pr": pr,
              "residual_top10_mass": lambda v: v.pow(2).sort(descending=True).values[:10].sum() / v.pow(2).sum(),
              "neuron_pr": lambda v: pr(Wn @ v),
              "neuron_max_abs_cos": lambda v: (Wn @ v).abs().max()}
    worst = 0.0
    for key, f in checks.items():
        tol = lipschitz_tolerance(f, w, moves, f"{key}: a function of a probe direction that moves by ≤ {moves:g}")
        worst = max(worst, assert_reproduces(r[key], results[key], tol, name=f"part3b.{key}"))
    # The correlation reads the direction and the held-out Δ, each Δ within SMOL_DIFF_TOL: both gradients count.
    v, d = torch.tensor(w, requires_grad=True), delta.clone().requires_grad_(True)
    a, b = Xo @ v, d
    corr = ((a - a.mean()) * (b - b.mean())).sum() / ((a - a.mean()).norm() * (b - b.mean()).norm())
    corr.backward()
    corr_tol = 2 * (v.grad.norm().item() * moves + d.grad.norm().item() * SMOL_DIFF_TOL.abs * len(idx) ** 0.5)
    worst = max(worst, assert_reproduces(r["corr_projection_logit_diff"], results["corr_projection_logit_diff"],
                                         Tolerance(abs=corr_tol, reason="the direction's movement and Δ's float32 error"),
                                         name="part3b.corr_projection_logit_diff"))
    cos = np.sort(np.abs(Wn.numpy() @ w))[::-1]
    assert cos[0] - cos[1] > 2 * moves and r["top_neurons"][0][0] == results["top_neurons"][0][0]
    measure("3b.slow.direction_functions_vs_committed", worst, "≤ 1 (fraction of the tolerance)")

    # PCA of the pooled activations, each entry within SMOL_REL × its prompt's largest |activation| (‖δX‖_F ≤ e):
    # the covariance moves by ‖δC‖₂ ≤ (2‖X_c‖₂e + e²)/n, its trace by (2‖X_c‖_F e + e²)/n (Weyl); an eigenvector
    # v_i, to first order, by Σ_j v_j (v_jᵀ δC v_i)/(λ_i − λ_j), so v_i·ŵ by ≤ ‖δC‖₂ √(Σ_j (v_j·ŵ)²/(λ_i − λ_j)²)
    # (Cauchy–Schwarz; ŵ's part outside the data's span counts with λ_j = 0), plus the direction's own movement.
    Xh, _ = P.activation_dataset(ev, r["layer"], held_pairs)
    Xa = np.concatenate([X, Xh])
    Xc = Xa - Xa.mean(0)
    n_rows, d = Xc.shape
    e = np.sqrt(d * ((SMOL_REL * np.abs(Xa).max(1)) ** 2).sum())
    _, sv, Vt = np.linalg.svd(Xc, full_matrices=False)
    lam = sv ** 2 / n_rows
    dC = (2 * sv[0] * e + e ** 2) / n_rows
    d_trace = (2 * np.linalg.norm(Xc) * e + e ** 2) / n_rows
    k = len(results["cos_with_pcs"])
    ratio_tol = (dC + lam[:k] / lam.sum() * d_trace) / (lam.sum() - d_trace)
    assert_reproduces(r["pca_explained"], results["pca_explained"],
                      Tolerance(abs=float(ratio_tol.max()), reason="λ_i within ‖δC‖₂ and the trace within its bound"),
                      name="part3b.pca_explained")
    proj = Vt @ w                                                    # ŵ on every principal direction
    outside = max(1 - (proj ** 2).sum(), 0.0)                        # and outside the data's span (λ = 0)
    cos_tol = np.array([dC * np.sqrt(sum(proj[j] ** 2 / (lam[i] - lam[j]) ** 2 for j in range(len(lam)) if j != i)
                                     + outside / lam[i] ** 2) + moves for i in range(k)])
    now_cos, then_cos = np.abs(r["cos_with_pcs"]), np.abs(results["cos_with_pcs"])
    for i in range(k):
        assert_reproduces(now_cos[i], then_cos[i], Tolerance(abs=float(cos_tol[i]), reason=f"|cos(ŵ, PC_{i + 1})|: the "
                                                                    "PC's first-order movement and the direction's"),
                          name=f"part3b.cos_with_pcs[{i}]")
    assert_reproduces(r["max_abs_cos_pc"], results["max_abs_cos_pc"], Tolerance(abs=float(cos_tol.max()),
                      reason="the largest of those cosines"), name="part3b.max_abs_cos_pc")
    mass_tol = float((2 * now_cos * cos_tol + cos_tol ** 2).sum())
    assert_reproduces(r["mass_in_top_pcs"], results["mass_in_top_pcs"],
                      Tolerance(abs=mass_tol, reason="Σ cos² over the top ten, each cosine within its tolerance"),
                      name="part3b.mass_in_top_pcs")
    assert r["mass_in_top_pcs"] + mass_tol < k / 576  # the report's claim: less than a random direction's k/d
    admissible = {i + 1 for i in range(k) if now_cos[i] + cos_tol[i] >= (now_cos - cos_tol).max()}
    assert r["argmax_pc"] in admissible and results["argmax_pc"] in admissible, (r["argmax_pc"], admissible)
    measure("3b.slow.argmax_pc_admissible", ",".join(map(str, sorted(admissible))))
    measure("3b.slow.cos_pc_tolerance_max", float(cos_tol.max()))
