"""The gate of day 2 (ARENA 0.0 Prerequisites: tensor manipulation, linear algebra in code).

References: torch's own strides and `unfold`, `torch.linalg` (qr, solve_triangular, lstsq,
svdvals, pinv). Invariants where the theory gives one: A = QR with QᵀQ = I; the least-squares
residual is orthogonal to the column space; Eckart–Young's closed forms and the optimality of the
truncated SVD; the four Moore–Penrose conditions. Tolerances are float64 rounding times the
problem's size and condition number, stated per test.
"""

from pathlib import Path

import pytest
import torch

from checks import assert_parity
from checks.committed import assert_reproduces, exact, float_ops, log_space

from . import linalg as L

HERE = Path(__file__).parent
QR_METHODS = {"classical_gs": L.classical_gram_schmidt, "modified_gs": L.modified_gram_schmidt,
              "householder": L.householder_qr}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_contiguous_strides_match_torch():
    """Row-major strides equal those torch gives a freshly allocated tensor."""
    for shape in [(3,), (2, 3), (4, 1, 5), (2, 3, 4, 5)]:
        assert L.contiguous_strides(shape) == torch.empty(shape).stride()


def test_sliding_windows_are_views_equal_to_unfold():
    """as_strided windows equal Tensor.unfold and share memory with the input (no copy)."""
    x = torch.arange(20.0)
    for size, stride in [(1, 1), (3, 1), (4, 2), (5, 5), (20, 1)]:
        w = L.sliding_windows(x, size, stride)
        assert torch.equal(w, x.unfold(0, size, stride))
        assert w.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    with pytest.raises(ValueError):
        L.sliding_windows(x, 21)


@pytest.mark.parametrize("method", QR_METHODS)
def test_qr_factorises_and_matches_torch(method, measure):
    """A = QR with QᵀQ = I and R upper triangular with positive diagonal, equal to torch.linalg.qr
    after its signs are normalised the same way (atol 1e-12 on a well-conditioned 40×25 matrix)."""
    A = torch.randn(40, 25, generator=gen(), dtype=torch.float64)
    Q, R = QR_METHODS[method](A)
    assert torch.equal(R, torch.triu(R)) and (torch.diagonal(R) > 0).all()
    assert_parity(Q @ R, A, atol=1e-12)
    assert L.orthogonality_loss(Q) < 1e-13
    Qt, Rt = torch.linalg.qr(A)
    signs = torch.sign(torch.diagonal(Rt))
    report = assert_parity(Q, Qt * signs, atol=1e-12, name=method)
    assert_parity(R, Rt * signs[:, None], atol=1e-12)
    measure(f"{method}.q_vs_torch.max_abs_err", report.max_abs_err, "≤ 1e-12")


def test_householder_qr_of_a_triangular_matrix_is_trivial():
    """A matrix already upper-triangular with positive diagonal is its own R with Q = the first n columns of I
    (the unique QR with diag(R) > 0). Every column is then zero below the diagonal, x = x_0 e_0: the reflection
    vector v = x + sign(x_0)‖x‖e_0 = 2x_0 e_0 never cancels (v = x − sign(x_0)‖x‖e_0 would be 0)."""
    A = torch.triu(torch.rand(6, 4, generator=gen(), dtype=torch.float64)) + torch.eye(6, 4, dtype=torch.float64)
    Q, R = L.householder_qr(A)
    assert_parity(Q, torch.eye(6, 4, dtype=torch.float64), atol=1e-15)
    assert_parity(R, A[:4], atol=1e-15)


def test_loss_of_orthogonality_follows_theory(measure):
    """At κ = 1e8 (κu ≈ 1e-8, κ²u ≈ 1): classical GS's loss is of order κ²u (> 1e-3, and over
    1e4× modified GS's), modified GS's of order κu (< 1e-6), Householder's at rounding level
    (< 1e-14), like torch.linalg.qr."""
    A = L.matrix_with_condition(60, 30, 1e8, gen(3))
    assert torch.linalg.cond(A).item() == pytest.approx(1e8, rel=1e-3)
    losses = {name: L.orthogonality_loss(fn(A)[0]) for name, fn in QR_METHODS.items()}
    for name, value in losses.items():
        measure(f"orthogonality_at_1e8.{name}", value)
    assert losses["classical_gs"] > 1e-3
    assert losses["classical_gs"] > 1e4 * losses["modified_gs"]
    assert 1e-12 < losses["modified_gs"] < 1e-6
    assert losses["householder"] < 1e-14
    assert L.orthogonality_loss(torch.linalg.qr(A)[0]) < 1e-14


def test_back_substitution_matches_solve_triangular():
    """Back substitution solves R x = y like torch.linalg.solve_triangular (atol 1e-12)."""
    R = torch.triu(torch.randn(30, 30, generator=gen(), dtype=torch.float64)) + 5 * torch.eye(30, dtype=torch.float64)
    y = torch.randn(30, generator=gen(1), dtype=torch.float64)
    expected = torch.linalg.solve_triangular(R, y[:, None], upper=True)[:, 0]
    assert_parity(L.back_substitution(R, y), expected, atol=1e-12)


def test_lstsq_qr_matches_torch_and_residual_is_orthogonal(measure):
    """QR least squares equals torch.linalg.lstsq, and the residual is orthogonal to range(A):
    Aᵀ(b − Ax) = 0, the first-order optimality condition (to 1e-12)."""
    A = torch.randn(50, 8, generator=gen(), dtype=torch.float64)
    b = torch.randn(50, generator=gen(1), dtype=torch.float64)
    x = L.lstsq_qr(A, b)
    report = assert_parity(x, torch.linalg.lstsq(A, b[:, None]).solution[:, 0], atol=1e-12)
    measure("lstsq_qr_vs_torch.max_abs_err", report.max_abs_err, "≤ 1e-12")
    assert (A.T @ (b - A @ x)).abs().max() < 1e-12


def test_normal_equations_square_the_condition_number(measure):
    """At κ = 1e6 the normal equations' error is ≥ 100× QR's (their conditioning is κ², QR's κ)."""
    A = L.matrix_with_condition(60, 30, 1e6, gen(5))
    x_true = torch.randn(30, generator=gen(6), dtype=torch.float64)
    b = A @ x_true
    err_qr = ((L.lstsq_qr(A, b) - x_true).norm() / x_true.norm()).item()
    err_ne = ((L.lstsq_normal_equations(A, b) - x_true).norm() / x_true.norm()).item()
    measure("lstsq_at_1e6.qr", err_qr)
    measure("lstsq_at_1e6.normal_equations", err_ne)
    assert err_qr < 1e-8
    assert err_ne > 100 * err_qr


def test_lstsq_sweep_reproduces_the_posts_curve(committed, measure):
    """The post's least-squares experiment (@fig-lstsq and lstsq_at_1e6) is what lstsq_sweep
    computes now: the same 9 condition numbers 1 … 1e8 (exact), and at each the relative errors
    of QR and of the normal equations. Those errors are accumulated rounding, so only their order
    of magnitude reproduces (log space): over 12 other random systems of the same condition their
    log10 spans at most 1.04 decades (QR and normal equations alike), so 1.1 decades is allowed.
    Past κ ≈ 1e8 AᵀA is singular to working precision, as the post says: at κ = 1e10 and 1e12
    the Cholesky factorisation raises (in 30 of 30 random systems each; at 1e9, 27 of 30)."""
    sweep = L.lstsq_sweep()
    assert_reproduces([r["cond"] for r in sweep], [r["cond"] for r in committed["lstsq"]],
                      exact("the conditions are the constants 10**e"), name="lstsq.cond")
    rounding = log_space(1.1, why="a rounding error's order of magnitude: ≤ 1.04 decades across systems")
    worst = 0.0
    for name in ("qr", "normal_equations"):
        worst = max(worst, assert_reproduces([r[name] for r in sweep], [r[name] for r in committed["lstsq"]],
                                             rounding, name=f"lstsq.{name}"))
    at_1e6 = next(r for r in sweep if r["cond"] == 1e6)
    assert_reproduces({k: at_1e6[k] for k in ("qr", "normal_equations")}, committed["lstsq_at_1e6"], rounding,
                      name="lstsq_at_1e6")
    assert at_1e6["normal_equations"] > 100 * at_1e6["qr"]
    measure("lstsq.decades_from_committed", worst, "≤ 1.1")
    for cond in (1e10, 1e12):
        A = L.matrix_with_condition(60, 30, cond, gen(7))
        with pytest.raises(torch.linalg.LinAlgError):
            L.lstsq_normal_equations(A, A @ torch.ones(30, dtype=torch.float64))


def test_eckart_young_closed_forms(measure):
    """‖A − A_k‖_F = sqrt(Σ_{i>k} σ_i²) and ‖A − A_k‖₂ = σ_{k+1}, with σ from torch.linalg.svdvals."""
    A = torch.randn(30, 20, generator=gen(), dtype=torch.float64)
    S = torch.linalg.svdvals(A)
    worst = 0.0
    for k in range(0, 21):
        residual = A - L.low_rank_approx(A, k)
        fro, spec = L.eckart_young_errors(S, k)
        worst = max(worst, abs(residual.norm().item() - fro),
                    abs(torch.linalg.matrix_norm(residual, ord=2).item() - spec))
        assert torch.linalg.matrix_rank(L.low_rank_approx(A, k)).item() == k
    measure("eckart_young.max_abs_err", worst, "≤ 1e-12")
    assert worst < 1e-12


def test_truncated_svd_beats_every_other_rank_k_approximation():
    """No rank-k matrix tried does better: projections onto 200 random k-dimensional subspaces
    and perturbations of the optimum all have larger Frobenius error (Eckart–Young's optimality)."""
    A = torch.randn(25, 15, generator=gen(), dtype=torch.float64)
    g = gen(1)
    for k in (1, 3, 7):
        best = (A - L.low_rank_approx(A, k)).norm()
        U, S, Vh = torch.linalg.svd(A, full_matrices=False)
        for trial in range(200):
            if trial % 2:
                basis, _ = torch.linalg.qr(torch.randn(25, k, generator=g, dtype=torch.float64))
            else:
                basis, _ = torch.linalg.qr(U[:, :k] + 0.05 * torch.randn(25, k, generator=g, dtype=torch.float64))
            competitor = basis @ (basis.T @ A)  # the best approximation within that column space
            assert (A - competitor).norm() >= best - 1e-12


def test_power_iteration_converges_at_the_predicted_rate(measure):
    """Power iteration finds σ₁ = svdvals(A)[0] (rel 1e-12) and the top right-singular vector;
    the vector's angle error shrinks by (σ₂/σ₁)² a step, so the estimate ‖Av‖ (quadratic in that
    angle) converges at (σ₂/σ₁)⁴ a step, within 5%."""
    A = torch.randn(40, 30, generator=gen(), dtype=torch.float64)
    S = torch.linalg.svdvals(A)
    sigma, v, history = L.power_iteration(A, 300, gen(1))
    assert sigma == pytest.approx(S[0].item(), rel=1e-12)
    v1 = torch.linalg.svd(A).Vh[0]
    assert abs(v @ v1).item() == pytest.approx(1.0, abs=1e-12)
    errors = S[0] - torch.tensor(history[:60], dtype=torch.float64)
    rate = (errors[40] / errors[20]).item() ** (1 / 20)
    predicted = (S[1] / S[0]).item() ** 4
    measure("power_iteration.rate", rate)
    measure("power_iteration.predicted_rate", predicted)
    assert rate == pytest.approx(predicted, rel=0.05)


def test_pseudo_inverse_matches_torch_and_penrose_conditions():
    """pinv equals torch.linalg.pinv on a rank-deficient matrix and satisfies the four
    Moore–Penrose conditions: A A⁺ A = A, A⁺ A A⁺ = A⁺, (A A⁺)ᵀ = A A⁺, (A⁺ A)ᵀ = A⁺ A."""
    B = torch.randn(12, 4, generator=gen(), dtype=torch.float64)
    A = B @ torch.randn(4, 9, generator=gen(1), dtype=torch.float64)  # rank 4
    P = L.pseudo_inverse(A)
    assert_parity(P, torch.linalg.pinv(A), atol=1e-12)
    for lhs, rhs in [(A @ P @ A, A), (P @ A @ P, P), ((A @ P).T, A @ P), ((P @ A).T, P @ A)]:
        assert_parity(lhs, rhs, atol=1e-12)


def test_results_json_is_current(committed, measure):
    """The post's numbers are reproduced now: the image-compression errors, Eckart–Young's
    predictions and their largest gap, the storage fractions (also recounted from the SVD's
    factors) and the orthogonality losses at κ = 1e8 equal results.json. The errors come
    from a backward-stable SVD of the 427×640 image, accurate to about max(m, n)·u relative to
    ‖A‖ (float_ops(640) as an absolute bound on errors relative to ‖A‖_F). The orthogonality
    losses are accumulated rounding errors themselves, so only their order of magnitude
    reproduces (log space): over 12 other random matrices of condition 1e8, log10 of classical
    Gram–Schmidt's loss (saturated near κ²u ≈ 1) spans 1.4 decades, the others' ≤ 0.4. Across the sweep
    (κ = 1 … 1e12) each method's loss stays within 100× its theoretical order: κ²u, κu, u (Björck)."""
    results = committed
    image = L.grayscale_image()
    assert list(image.shape) == results["image_shape"]
    # LAPACK's SVD is exact for A + E with ‖E‖ ≲ max(m, n)·u·‖A‖, so an error relative to ‖A‖_F
    # may move by that much in absolute terms.
    svd = float_ops(640, why="backward-stable SVD of a 427×640 matrix, relative to ‖A‖", abs=float_ops(640).rel)
    worst = 0.0
    compression = L.image_compression(image)
    U, S, Vh = torch.linalg.svd(image, full_matrices=False)
    for now, recorded in zip(compression, results["compression"], strict=True):
        k = now["k"]
        assert k == recorded["k"]
        for key in ("relative_error", "predicted"):
            worst = max(worst, assert_reproduces(now[key], recorded[key], svd, name=f"compression[k={k}].{key}"))
        assert abs(now["relative_error"] - now["predicted"]) < 1e-12
        # Storage: the numbers a rank-k SVD keeps (U[:, :k], σ_1..σ_k, V[:k]) over the image's
        # pixels, counted from the factors themselves; one division, so float_ops(1).
        kept = U[:, :k].numel() + S[:k].numel() + Vh[:k].numel()
        assert_reproduces(now["storage_fraction"], kept / image.numel(), float_ops(1), name=f"storage_fraction[k={k}]")
        assert_reproduces(now["storage_fraction"], recorded["storage_fraction"], float_ops(1),
                          name=f"compression[k={k}].storage_fraction")
    assert_reproduces({str(r["k"]): r for r in compression}, results["compression_by_rank"], svd,
                      name="compression_by_rank")  # storage fractions there: exact up to one division, within svd
    gap = max(abs(r["relative_error"] - r["predicted"]) for r in compression)
    # Both terms are relative errors accurate to 640·u·‖A‖ (above), so their gap is a rounding
    # error of that size: the same absolute bound, not a relative one.
    assert_reproduces(gap, results["max_abs_gap_measured_vs_eckart_young"], svd, name="max_abs_gap_measured_vs_eckart_young")
    measure("compression.deviation_from_committed", worst, "≤ 1 (fraction of the tolerance)")
    sweep = {r["cond"]: r for r in L.orthogonality_sweep()}
    u = torch.finfo(torch.float64).eps / 2
    for cond, r in sweep.items():   # Björck: classical GS O(κ²u), modified GS O(κu), Householder O(u), factor 100
        assert r["classical_gs"] <= 100 * cond**2 * u and r["modified_gs"] <= 100 * cond * u
        assert r["householder"] <= 100 * u and r["torch_qr"] <= 100 * u
    for name, value in results["orthogonality_at_1e8"].items():
        decades = 1.5 if name == "classical_gs" else 0.5
        assert_reproduces(sweep[1e8][name], value, log_space(decades, why="a rounding error's order of magnitude"),
                          name=f"orthogonality_at_1e8.{name}")
    for name in ("qr_orthogonality", "lstsq_accuracy", "svd_compression"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
    measure("compression.rank_50_error", results["compression_by_rank"]["50"]["relative_error"])
