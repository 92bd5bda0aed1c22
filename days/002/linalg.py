"""Day 2: tensor manipulation and linear algebra in code (ARENA 0.0 Prerequisites).

- Memory layout: a tensor is a flat buffer plus strides; ``as_strided`` makes sliding windows
  without copying (the trick behind day 6's convolutions).
- QR three ways: classical Gram–Schmidt, modified Gram–Schmidt, Householder reflections. All are
  exact in exact arithmetic; in floating point their loss of orthogonality ||I - QᵀQ|| grows like
  κ²u, κu and u respectively (κ the condition number, u the unit roundoff).
- Least squares min ||Ax - b|| by QR (R x = Qᵀb) and by the normal equations (AᵀA x = Aᵀb), which
  square the condition number.
- The SVD and the Eckart–Young theorem: the truncated SVD A_k is the best rank-k approximation,
  with ||A - A_k||_F = sqrt(Σ_{i>k} σ_i²) and ||A - A_k||_2 = σ_{k+1}.
- Power iteration for the top singular value, and the Moore–Penrose pseudo-inverse.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

# ---------------------------------------------------------------- memory layout


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides: the step in elements along each axis, stride[i] = prod(shape[i+1:])."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def sliding_windows(x: Float[Tensor, "n"], size: int, stride: int = 1) -> Float[Tensor, "windows size"]:
    """All windows x[i*stride : i*stride + size] as a view (no copy): shape ((n - size)//stride + 1, size)."""
    if x.dim() != 1 or not 0 < size <= x.shape[0] or stride < 1:
        raise ValueError(f"need a 1-D tensor with 0 < size <= {x.shape[0] if x.dim() == 1 else '?'} and stride >= 1")
    n_windows = (x.shape[0] - size) // stride + 1
    return x.as_strided((n_windows, size), (stride * x.stride(0), x.stride(0)), x.storage_offset())


# ---------------------------------------------------------------- QR


def classical_gram_schmidt(A: Float[Tensor, "m n"]) -> tuple[Float[Tensor, "m n"], Float[Tensor, "n n"]]:
    """QR by classical Gram–Schmidt: q_j ∝ a_j - Σ_{i<j} (q_iᵀ a_j) q_i, projections of the ORIGINAL column."""
    m, n = A.shape
    Q, R = torch.zeros(m, n, dtype=A.dtype), torch.zeros(n, n, dtype=A.dtype)
    for j in range(n):
        R[:j, j] = Q[:, :j].T @ A[:, j]
        v = A[:, j] - Q[:, :j] @ R[:j, j]
        R[j, j] = v.norm()
        Q[:, j] = v / R[j, j]
    return Q, R


def modified_gram_schmidt(A: Float[Tensor, "m n"]) -> tuple[Float[Tensor, "m n"], Float[Tensor, "n n"]]:
    """QR by modified Gram–Schmidt: each projection is removed from the PARTIALLY orthogonalised column.

    Same arithmetic in exact arithmetic; in floating point the rounding errors of earlier
    projections are themselves projected out, so orthogonality degrades like κu, not κ²u.
    """
    m, n = A.shape
    V, Q, R = A.clone(), torch.zeros(m, n, dtype=A.dtype), torch.zeros(n, n, dtype=A.dtype)
    for j in range(n):
        R[j, j] = V[:, j].norm()
        Q[:, j] = V[:, j] / R[j, j]
        R[j, j + 1:] = Q[:, j] @ V[:, j + 1:]
        V[:, j + 1:] -= torch.outer(Q[:, j], R[j, j + 1:])
    return Q, R


def householder_qr(A: Float[Tensor, "m n"]) -> tuple[Float[Tensor, "m n"], Float[Tensor, "n n"]]:
    """QR by Householder reflections H = I - 2 v vᵀ / vᵀv, each zeroing a column below the diagonal.

    Q is a product of exactly orthogonal reflections, so ||I - QᵀQ|| stays at O(u) whatever κ is.
    Signs are chosen to avoid cancellation (v = x + sign(x_0)||x|| e_0), then flipped so that
    diag(R) > 0, the convention that makes the QR of a full-rank matrix unique.
    """
    m, n = A.shape
    R = A.clone()
    vs = []
    for j in range(n):
        x = R[j:, j]
        v = x.clone()
        sign = 1.0 if x[0] >= 0 else -1.0
        v[0] += sign * x.norm()
        v = v / v.norm()
        R[j:, j:] -= 2 * torch.outer(v, v @ R[j:, j:])
        vs.append(v)
    Q = torch.eye(m, n, dtype=A.dtype)
    for j in reversed(range(n)):  # Q = H_0 H_1 ... H_{n-1} applied to the first n columns of I
        v = vs[j]
        Q[j:, :] -= 2 * torch.outer(v, v @ Q[j:, :])
    R = torch.triu(R[:n, :])
    signs = torch.sign(torch.diagonal(R))
    signs[signs == 0] = 1
    return Q * signs, R * signs[:, None]


def orthogonality_loss(Q: Float[Tensor, "m n"]) -> float:
    """||I - QᵀQ||_2: zero for exactly orthonormal columns."""
    n = Q.shape[1]
    return torch.linalg.matrix_norm(torch.eye(n, dtype=Q.dtype) - Q.T @ Q, ord=2).item()


def back_substitution(R: Float[Tensor, "n n"], y: Float[Tensor, "n"]) -> Float[Tensor, "n"]:
    """Solve R x = y for upper-triangular R: x_i = (y_i - Σ_{j>i} R_ij x_j) / R_ii, from the bottom up."""
    n = R.shape[0]
    x = torch.zeros(n, dtype=R.dtype)
    for i in reversed(range(n)):
        x[i] = (y[i] - R[i, i + 1:] @ x[i + 1:]) / R[i, i]
    return x


# ---------------------------------------------------------------- least squares


def lstsq_qr(A: Float[Tensor, "m n"], b: Float[Tensor, "m"]) -> Float[Tensor, "n"]:
    """min ||Ax - b||: with A = QR, the minimiser solves R x = Qᵀ b (conditioning κ(A))."""
    Q, R = householder_qr(A)
    return back_substitution(R, Q.T @ b)


def lstsq_normal_equations(A: Float[Tensor, "m n"], b: Float[Tensor, "m"]) -> Float[Tensor, "n"]:
    """min ||Ax - b|| via AᵀA x = Aᵀb (Cholesky): cheap, but κ(AᵀA) = κ(A)²."""
    L = torch.linalg.cholesky(A.T @ A)
    return torch.cholesky_solve((A.T @ b)[:, None], L)[:, 0]


def matrix_with_condition(m: int, n: int, cond: float, generator: torch.Generator) -> Float[Tensor, "m n"]:
    """A random m×n matrix U diag(s) Vᵀ with singular values geometric from 1 down to 1/cond."""
    U, _ = torch.linalg.qr(torch.randn(m, n, generator=generator, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    s = torch.logspace(0, -torch.log10(torch.tensor(float(cond))).item(), n, dtype=torch.float64)
    return U @ torch.diag(s) @ V.T


# ---------------------------------------------------------------- SVD


def low_rank_approx(A: Float[Tensor, "m n"], k: int) -> Float[Tensor, "m n"]:
    """The truncated SVD A_k = Σ_{i<k} σ_i u_i v_iᵀ."""
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k]


def eckart_young_errors(singular_values: Float[Tensor, "r"], k: int) -> tuple[float, float]:
    """The best rank-k errors: (Frobenius sqrt(Σ_{i>k} σ_i²), spectral σ_{k+1})."""
    tail = singular_values[k:]
    return tail.square().sum().sqrt().item(), (tail[0].item() if len(tail) else 0.0)


def power_iteration(A: Float[Tensor, "m n"], iterations: int, generator: torch.Generator) -> tuple[float, Tensor, list[float]]:
    """Top singular value of A by power iteration on AᵀA: v ← AᵀA v / ||AᵀA v||, σ = ||A v||.

    The angle to the top right-singular vector shrinks by (σ₂/σ₁)² per step, so the estimate
    ||Av||, whose error is quadratic in that angle, converges like (σ₂/σ₁)⁴ per step. Returns σ,
    v and the estimate after each step.
    """
    v = torch.randn(A.shape[1], generator=generator, dtype=A.dtype)
    v = v / v.norm()
    history = []
    for _ in range(iterations):
        w = A.T @ (A @ v)
        v = w / w.norm()
        history.append((A @ v).norm().item())
    return history[-1], v, history


def pseudo_inverse(A: Float[Tensor, "m n"], rtol: float | None = None) -> Float[Tensor, "n m"]:
    """Moore–Penrose pseudo-inverse V Σ⁺ Uᵀ, inverting singular values above rtol·σ_max."""
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    if rtol is None:
        rtol = max(A.shape) * torch.finfo(A.dtype).eps
    inv = torch.where(S > rtol * S.max(), 1.0 / S, torch.zeros_like(S))
    return (Vh.T * inv) @ U.T


# ---------------------------------------------------------------- the experiment

CONDITIONS = [10.0**e for e in range(0, 13)]
RANKS = [1, 5, 20, 50, 100]


def grayscale_image() -> Float[Tensor, "h w"]:
    """scikit-learn's bundled photograph 'china.jpg' (427×640) in grey levels 0..1, float64."""
    from sklearn.datasets import load_sample_image

    rgb = torch.tensor(load_sample_image("china.jpg"), dtype=torch.float64) / 255
    return rgb @ torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)  # ITU-R BT.601 luma


def orthogonality_sweep(m: int = 60, n: int = 30, seed: int = 0) -> list[dict]:
    """||I - QᵀQ|| of each QR method on matrices of condition 1 ... 1e12."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for cond in CONDITIONS:
        A = matrix_with_condition(m, n, cond, gen)
        rows.append({"cond": cond,
                     "classical_gs": orthogonality_loss(classical_gram_schmidt(A)[0]),
                     "modified_gs": orthogonality_loss(modified_gram_schmidt(A)[0]),
                     "householder": orthogonality_loss(householder_qr(A)[0]),
                     "torch_qr": orthogonality_loss(torch.linalg.qr(A)[0])})
    return rows


def lstsq_sweep(m: int = 60, n: int = 30, seed: int = 1) -> list[dict]:
    """Relative error ||x̂ - x*|| / ||x*|| of QR and normal equations on consistent systems b = A x*."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for cond in CONDITIONS[:9]:  # beyond 1e8, AᵀA is numerically singular and Cholesky fails
        A = matrix_with_condition(m, n, cond, gen)
        x_true = torch.randn(n, generator=gen, dtype=torch.float64)
        b = A @ x_true
        rows.append({"cond": cond,
                     "qr": ((lstsq_qr(A, b) - x_true).norm() / x_true.norm()).item(),
                     "normal_equations": ((lstsq_normal_equations(A, b) - x_true).norm() / x_true.norm()).item()})
    return rows


def image_compression(image: Tensor, ranks: list[int] = RANKS) -> list[dict]:
    """For each rank k: measured relative Frobenius error of A_k, Eckart–Young's prediction, storage."""
    S = torch.linalg.svdvals(image)
    total = image.norm().item()
    h, w = image.shape
    rows = []
    for k in ranks:
        measured = (image - low_rank_approx(image, k)).norm().item() / total
        predicted = eckart_young_errors(S, k)[0] / total
        rows.append({"k": k, "relative_error": measured, "predicted": predicted,
                     "storage_fraction": k * (h + w + 1) / (h * w)})
    return rows


def run_experiment(out_dir: Path) -> dict:
    """Three figures: QR orthogonality vs condition, least squares accuracy, image compression."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)

    ortho = orthogonality_sweep()
    fig, ax = plt.subplots(figsize=(7, 4.3))
    conds = [r["cond"] for r in ortho]
    for key, label in [("classical_gs", "classical Gram–Schmidt"), ("modified_gs", "modified Gram–Schmidt"),
                       ("householder", "Householder (ours)"), ("torch_qr", "torch.linalg.qr")]:
        ax.loglog(conds, [max(r[key], 1e-17) for r in ortho], marker="o", label=label)
    u = torch.finfo(torch.float64).eps / 2
    ax.loglog(conds, [c * u for c in conds], "k:", lw=1, label="κu")
    ax.loglog(conds, [min(c**2 * u, 10) for c in conds], "k--", lw=1, label="κ²u")
    ax.set_xlabel("condition number κ(A)")
    ax.set_ylabel("‖I − QᵀQ‖₂")
    ax.set_title("Loss of orthogonality of Q (60×30, float64)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/qr_orthogonality.png", dpi=120)
    plt.close(fig)

    lsq = lstsq_sweep()
    fig, ax = plt.subplots(figsize=(7, 4.3))
    ax.loglog([r["cond"] for r in lsq], [r["qr"] for r in lsq], marker="o", label="QR: R x = Qᵀb")
    ax.loglog([r["cond"] for r in lsq], [r["normal_equations"] for r in lsq], marker="s", label="normal equations: AᵀA x = Aᵀb")
    ax.set_xlabel("condition number κ(A)")
    ax.set_ylabel("relative error of x")
    ax.set_title("Least squares: the normal equations square κ")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "figures/lstsq_accuracy.png", dpi=120)
    plt.close(fig)

    image = grayscale_image()
    comp = image_compression(image)
    fig, axes = plt.subplots(2, 3, figsize=(10, 4.9))
    panels = [("original", image)] + [(f"rank {r['k']}: {100 * r['relative_error']:.1f}% error",
                                      low_rank_approx(image, r["k"])) for r in comp]
    for ax, (title, img) in zip(axes.flat, panels):
        ax.imshow(img.clamp(0, 1), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out_dir / "figures/svd_compression.png", dpi=110)
    plt.close(fig)

    at = {r["cond"]: r for r in ortho}
    lsq_at = {r["cond"]: r for r in lsq}
    results = {
        "orthogonality": ortho,
        "orthogonality_at_1e8": {k: v for k, v in at[1e8].items() if k != "cond"},
        "lstsq": lsq,
        "lstsq_at_1e6": {k: v for k, v in lsq_at[1e6].items() if k != "cond"},
        "image_shape": list(image.shape),
        "compression": comp,
        "compression_by_rank": {str(r["k"]): r for r in comp},
        "max_abs_gap_measured_vs_eckart_young": max(abs(r["relative_error"] - r["predicted"]) for r in comp),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
