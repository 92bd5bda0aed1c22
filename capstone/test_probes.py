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
from checks.committed import Tolerance, assert_reproduces

from . import probes as P
from . import sycophancy as S

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


@pytest.mark.slow
@pytest.mark.asset("smollm2-135m-instruct")
def test_full_probe_reproduces_committed_numbers(results, tmp_path):
    """3B (slow, ~3 min: the data set is re-scored): re-score the data set, re-fit the probe; accuracy
    and the cosines with the PCs equal the committed ones, as far as a refit on float32 residuals can:
    scikit-learn's L-BFGS stops at a gradient of 1e-4 (max-norm) on a 1-strongly convex objective, so the
    standardised probe moves by ≤ √576·1e-4 ≈ 2.4e-3 on each machine and a cosine with a fixed unit PC by
    ≤ 2·2.4e-3/‖w‖ ≤ 5e-3 (‖w‖ ≥ 1 for a probe this accurate); a held-out prediction can then flip only
    near the boundary: allow two of them."""
    r = P.run(tmp_path, layer=results["layer"])
    n = results["n_held_out"]
    assert_reproduces(r["held_out_accuracy"], results["held_out_accuracy"],
                      Tolerance(abs=2 / n + 1e-12, reason=f"two of {n} held-out predictions near the refit's boundary"),
                      name="part3b.held_out_accuracy")
    assert_reproduces(np.abs(r["cos_with_pcs"]), np.abs(results["cos_with_pcs"]),
                      Tolerance(abs=5e-3, reason="a probe refit to scikit-learn's tol on float32 residuals"),
                      name="part3b.cos_with_pcs")
