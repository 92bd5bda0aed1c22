"""The gate of day 68 (ARENA 1.5.4, feature geometry: compute_dimensionality, the sticky fractions, polygons and
antipodal pairs with their measured angles, and superposition with double descent in the slow run).

References: compute_dimensionality against a plain numpy loop over features (its definition); closed forms for
configurations whose dimensionality is known exactly (a regular k-gon: 2/k, a tetrahedron: 3/4, an antipodal pair:
1/2, an orthonormal set: 1); small trained models whose geometry the paper predicts (an antipodal pair when two
sparse features share one dimension, a pentagon when five share two), with day 67's ToyModel imported, not copied.
Training is float32 and seeded: trained claims carry margins (±0.03 in dimensionality, a few degrees in angle).
"""

import importlib
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from checks.committed import assert_reproduces, exact, statistical
from checks.timing import single_thread

from . import geometry as G

HERE = Path(__file__).parent
sp = importlib.import_module("days.067.superposition")

# ARENA's compute_dimensionality normalises by ‖W_i‖ + 1e-8: for unit-norm features Ŵ is short by 1e-8 relative, the
# squared projections in the denominator by 2e-8, so D comes out 2e-8 (relative) high: allow 3e-8 (float64 rounding
# is ~1e-16 beside it).
EPS_REL = 3e-8


@pytest.fixture(scope="module", autouse=True)
def one_thread_module():
    """One torch/BLAS thread for the module and its fixtures (tiny tensors; a shared 2-core machine)."""
    with single_thread():
        yield


def dimensionality_reference(W: np.ndarray) -> np.ndarray:
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)², one feature at a time (Elhage et al.'s definition, in float64 numpy)."""
    out = np.zeros(W.shape[1])
    for i in range(W.shape[1]):
        wi = W[:, i]
        unit = wi / np.linalg.norm(wi)
        out[i] = wi @ wi / sum((unit @ W[:, j]) ** 2 for j in range(W.shape[1]))
    return out


def test_compute_dimensionality_is_its_definition(measure):
    """ARENA 1.5.4, compute_dimensionality: on random W (3 instances, 4 × 9) equals the per-feature numpy loop of
    the definition (1e-6 relative: float32 against float64, the 1e-8 in ARENA's normalisation included) and is
    invariant to scaling all of W (a ratio of degree-2 forms)."""
    torch.manual_seed(0)
    W = torch.randn(3, 4, 9)
    D = G.compute_dimensionality(W)
    worst = 0.0
    for k in range(3):
        ref = dimensionality_reference(W[k].double().numpy())
        worst = max(worst, float(np.max(np.abs(D[k].numpy() - ref) / ref)))
    measure("dimensionality_vs_definition.max_rel_err", worst, "≤ 1e-5")
    assert worst <= 1e-5
    torch.testing.assert_close(G.compute_dimensionality(3.7 * W), D, rtol=1e-5, atol=0)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6, 8])
def test_regular_polygon_dimensionality(k):
    """Elhage et al. 2022, the sticky fractions: every vertex of a regular k-gon in 2 dimensions has dimensionality
    2/k for k ≥ 3 (Σ_j cos²(2πj/k) = k/2): 2/3 for the triangle, 2/5 for the pentagon, 1/3 for the hexagon; and 1/2
    for the antipodal pair, k = 2, where the sum is 1 + cos²π = 2 (relative EPS_REL: ARENA's 1e-8 in the
    normalisation, float64)."""
    W = G.regular_polygon(k, phase=0.37)[None]
    expected = 0.5 if k == 2 else 2 / k
    D = G.compute_dimensionality(W)
    torch.testing.assert_close(D, torch.full((1, k), expected, dtype=torch.float64), atol=0, rtol=EPS_REL)
    if Fraction(expected).limit_denominator(10) in G.STICKY:          # a named fraction: nearest_fraction finds it
        assert G.nearest_fraction(D[0, 0].item())[0] == Fraction(expected).limit_denominator(10)


def test_tetrahedron_orthonormal_and_lone_features():
    """The other named fractions: a regular tetrahedron's vertices in 3 dimensions have 3/4; an orthonormal set and a
    single feature alone in its direction have 1; a feature orthogonal to an antipodal pair keeps 1 while the pair
    gets 1/2 each (relative EPS_REL)."""
    torch.testing.assert_close(G.compute_dimensionality(G.tetrahedron()[None]), torch.full((1, 4), 0.75,
                               dtype=torch.float64), atol=0, rtol=EPS_REL)
    torch.testing.assert_close(G.compute_dimensionality(torch.eye(3, dtype=torch.float64)[None]),
                               torch.ones(1, 3, dtype=torch.float64), atol=0, rtol=EPS_REL)
    W = torch.tensor([[[1.0, -1.0, 0.0], [0.0, 0.0, 2.0]]], dtype=torch.float64)
    torch.testing.assert_close(G.compute_dimensionality(W), torch.tensor([[0.5, 0.5, 1.0]], dtype=torch.float64),
                               atol=0, rtol=EPS_REL)


def test_configurations_are_the_named_shapes():
    """The configurations as their docstrings and the paper define them: regular_polygon's column j is the unit vector
    at angle phase + 2πj/k (math.cos/sin, 1e-12); the tetrahedron's four vertices lie on the unit sphere with every
    pair at cos θ = −1/3 (a regular tetrahedron's central angle); nearest_fraction returns the named fraction nearest
    to d and its distance |f − d| (d = 0.7: 2/3 at 0.0333 beats 3/4 at 0.05)."""
    for k, phase in ((3, 0.37), (5, -1.1)):
        P = G.regular_polygon(k, phase)
        ref = torch.tensor([[math.cos(phase + 2 * math.pi * j / k) for j in range(k)],
                            [math.sin(phase + 2 * math.pi * j / k) for j in range(k)]], dtype=torch.float64)
        torch.testing.assert_close(P, ref, atol=1e-12, rtol=0)
    T = G.tetrahedron()
    torch.testing.assert_close(T.T @ T, torch.full((4, 4), -1 / 3, dtype=torch.float64).fill_diagonal_(1.0),
                               atol=1e-12, rtol=0)
    best, dist = G.nearest_fraction(0.7)
    assert best == Fraction(2, 3) and dist == pytest.approx(0.7 - 2 / 3, abs=1e-12)
    best, dist = G.nearest_fraction(0.26)
    assert best == Fraction(1, 3) and dist == pytest.approx(1 / 3 - 0.26, abs=1e-12)


def test_runs_build_the_stated_models():
    """The two runs' models carry the data they are documented to train on: train_geometry, ARENA's feature-geometry
    run, uses importance 1 for every feature and the run's densities, one per instance; train_on_dataset's model has
    feature probability 1 − sparsity (S = 1 − p, Henighan et al.) and importance 1 (one step each, tiny sizes)."""
    run = G.GeometryRun(n_features=6, d_hidden=2, n_inst=3, steps=1, batch_size=8)
    model = G.train_geometry(run)
    assert torch.equal(model.importance, torch.ones(3, 6))
    torch.testing.assert_close(model.feature_probability, run.probabilities()[:, None].expand(3, 6))
    dd = G.DoubleDescentRun(n_features=6, n_inst=2, steps=1, warmup=1)
    m2 = G.train_on_dataset(G.generate_dataset(4, 2, 6, 0.5, seed=0), dd, seed=0)
    torch.testing.assert_close(m2.feature_probability, torch.full((2, 6), 1 - dd.sparsity))
    assert torch.equal(m2.importance, torch.ones(2, 6))


@pytest.fixture(scope="module")
def small_geometry():
    """Trained with day 67's ToyModel and training recipe: two sparse features in one dimension (p = 0.05) and five
    sparse features in two dimensions (p = 0.02), 4 seeds each, 1,500 steps."""
    pair, _ = sp.train_toy(sp.ToyModel, sp.ToyModelConfig(n_inst=4, n_features=2, d_hidden=1), 0.05, 1.0, seed=0,
                           steps=1_500, **sp.FAST_LR)
    pent, _ = sp.train_toy(sp.ToyModel, sp.ToyModelConfig(n_inst=4, n_features=5, d_hidden=2), 0.02, 1.0, seed=1,
                           steps=1_500, **sp.FAST_LR)
    return pair, pent


def test_trained_antipodal_pair_has_dimensionality_one_half(small_geometry, measure):
    """Elhage et al. 2022, the digon: two sparse features sharing one dimension, best of 4 seeds (day 67 found
    local minima from some starts): stored antipodally (cos ≤ -0.99, the measured angle 180° ± 8°) and each
    feature's dimensionality 1/2 ± 0.03."""
    pair, _ = small_geometry
    best = pair.evaluate().argmin()
    W = pair.W.detach()[best][None]
    D = G.compute_dimensionality(W)
    cos = sp.feature_cosines(W)[0, 0, 1]
    measure("antipodal.max_abs_D_minus_half", (D - 0.5).abs().max(), "≤ 0.03")
    measure("antipodal.angle_deg", torch.rad2deg(torch.arccos(cos.clamp(-1, 1))), "180 ± 8")
    assert (D - 0.5).abs().max() <= 0.03
    assert cos <= -0.99


def test_trained_pentagon_has_dimensionality_two_fifths(small_geometry, measure):
    """Elhage et al. 2022, the pentagon: five sparse features in two dimensions, every seed: consecutive angles
    72° ± 3° and every feature's dimensionality 2/5 ± 0.03."""
    _, pent = small_geometry
    W = pent.W.detach()
    D = G.compute_dimensionality(W)
    angles = torch.stack([sp.polygon_angles(w) for w in W])
    measure("pentagon.max_abs_D_minus_two_fifths", (D - 0.4).abs().max(), "≤ 0.03")
    measure("pentagon.max_angle_error_deg", (angles - 72).abs().max(), "≤ 3")
    assert (D - 0.4).abs().max() <= 0.03
    assert (angles - 72).abs().max() <= 3


@pytest.fixture(scope="module")
def mini_geometry():
    """A small version of ARENA's run: 40 features in 8 dimensions at 4 densities, 1,500 steps."""
    run = G.GeometryRun(n_features=40, d_hidden=8, n_inst=4, steps=1_500, p_min_exponent=1.5)
    return run, G.train_geometry(run)


def test_superposition_grows_with_sparsity(mini_geometry, measure):
    """Elhage et al. 2022 / ARENA 1.5.4, dimensions per feature m/‖W‖²_F: at density 1 about one dimension per
    learned feature (≥ 0.9: no superposition), falling as features get sparser, and in the sparsest instance at
    most 0.6 (more features than dimensions). Learned features' dimensionalities sum to at most the 8 dimensions
    plus 2 % (dimensionality is a share of the space)."""
    run, model = mini_geometry
    W = model.W.detach()
    dpf = G.dimensions_per_feature(W)
    measure("mini.dimensions_per_feature_dense", dpf[0], "≥ 0.9")
    measure("mini.dimensions_per_feature_sparsest", dpf[-1], "≤ 0.6")
    assert dpf[0] >= 0.9 and dpf[-1] <= 0.6
    assert torch.all(dpf[1:] <= dpf[:-1] + 0.02)
    D = G.compute_dimensionality(W)
    assert torch.all(D.sum(-1) <= run.d_hidden * 1.02)


# ---------------------------------------------------------------- double descent machinery


def test_dataset_and_schedule():
    """Henighan et al. 2023's data: a fixed set of T examples per instance, each of unit norm (or zero), features
    present with probability p (5 binomial SEs); the learning rate warms up linearly then decays by a cosine to 0."""
    x = G.generate_dataset(4000, 2, 50, 0.05, seed=3)
    norms = x.norm(dim=-1)
    assert torch.all(((norms - 1).abs() < 1e-5) | (norms == 0))
    freq = (x > 0).float().mean().item()
    assert abs(freq - 0.05) <= 5 * math.sqrt(0.05 * 0.95 / x.numel())
    assert torch.equal(G.generate_dataset(10, 2, 50, 0.05, seed=3), G.generate_dataset(10, 2, 50, 0.05, seed=3))
    s = G.warmup_cosine_lr(10)
    assert s(0, 100) == pytest.approx(0.1) and s(9, 100) == pytest.approx(1.0)
    assert s(10, 100) == pytest.approx(1.0) and s(55, 100) == pytest.approx(0.5) and s(100, 100) == pytest.approx(0.0)


def test_few_examples_are_memorised_as_a_polygon(measure):
    """Henighan et al. 2023, the memorising regime: trained on T = 3 examples (full batch, AdamW), the three examples'
    hidden vectors share out the plane (their dimensionalities sum to ≥ 1.8 of its 2 dimensions) while no single
    feature gets as much as the least-stored example (the features of one example share its direction), and the
    training loss ends far below the test loss."""
    run = G.DoubleDescentRun(n_features=50, n_inst=3, steps=2_000, warmup=100, test_size=2000)
    data = G.generate_dataset(3, run.n_inst, run.n_features, 0.1, seed=0)
    model = G.train_on_dataset(data, run, seed=0)
    dims = {k: v.nan_to_num(0.0) for k, v in G.hidden_dimensionalities(model, data).items()}
    test = G.generate_dataset(2000, run.n_inst, run.n_features, 0.1, seed=1)
    train_l, test_l = G.held_out_loss(model, data), G.held_out_loss(model, test)
    measure("memorise.min_data_D_sum", dims["data"].sum(-1).min(), "≥ 1.8")
    measure("memorise.max_feature_D", dims["features"].max(), "< the smallest example's")
    measure("memorise.train_over_test", (train_l / test_l).max(), "≤ 0.2")
    assert dims["data"].sum(-1).min() >= 1.8
    assert torch.all(dims["features"].max(-1).values < dims["data"].min(-1).values)
    assert (train_l / test_l).max() <= 0.2


# ---------------------------------------------------------------- what the post cites


def test_committed_numbers_are_consistent(committed):
    """results.json is the experiment's: its named fractions are STICKY's, the learned-feature counts and dimensions
    per feature have the run's shape, and both figures exist."""
    geo = committed["geometry"]
    assert set(geo["sticky_shares"]) == {str(f) for f in G.STICKY}
    assert [r["T"] for r in committed["double_descent"]["rows"]] == list(G.DoubleDescentRun().dataset_sizes)
    assert len(geo["dimensions_per_feature"]) == geo["run"]["n_inst"]
    assert_reproduces(geo["feature_probability"], G.GeometryRun(**geo["run"]).probabilities().tolist(),
                      exact("20^-linspace, the same float32 ops"), name="feature_probability")
    for name in ("feature_geometry", "double_descent"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_experiment_reproduces_the_committed_headlines(tmp_path, committed, measure):
    """(slow, ~100 CPU seconds) run_experiment again: the dimensions per feature of every instance within 0.05 of the
    committed (a second float32 training run of the same recipe), the share of learned features at 1/2 within 0.1;
    in the finite-data runs the training examples' largest dimensionality falls more than tenfold from T = 3 to
    the largest T, where a feature's exceeds it (the model stores features, not examples), and at T = 3 the training
    loss is below 1e-6 of the test loss (memorised). The test loss itself is compared within 10 % per size: at this
    scale it shows no clear double descent (the post says so)."""
    now = G.run_experiment(tmp_path)
    measure("slow.wall_seconds", now["wall_seconds"])
    measure("slow.cpu_seconds", now["cpu_seconds"])
    geo, then = now["geometry"], committed["geometry"]
    assert_reproduces(geo["dimensions_per_feature"], then["dimensions_per_feature"],
                      statistical(0.05, why="a second float32 training run"), name="dimensions_per_feature")
    assert_reproduces(geo["sticky_shares"]["1/2"], then["sticky_shares"]["1/2"],
                      statistical(0.1, why="a second float32 training run"), name="share_at_half")
    rows, rows_then = now["double_descent"]["rows"], committed["double_descent"]["rows"]
    data_max = [np.mean(r["data_dimensionality_max"]) for r in rows]
    assert data_max[0] > 10 * data_max[-1]
    assert np.mean(rows[-1]["feature_dimensionality_max"]) > data_max[-1]
    assert max(rows[0]["train_loss"]) < 1e-6 * min(rows[0]["test_loss"])
    assert_reproduces([np.mean(r["test_loss"]) for r in rows], [np.mean(r["test_loss"]) for r in rows_then],
                      statistical(0.0, rel=0.1, why="second training runs of 4 seeds each"), name="test_loss")
