"""Parity with a reference: compare our result with an independent implementation.

The report carries the worst absolute error max|ours - ref|, the worst relative error
max|ours - ref| / |ref| (over elements with |ref| above ``rel_floor``, so that values near zero
do not dominate), and where the worst absolute error sits. A mismatch is an element with
|ours - ref| > atol + rtol·|ref|, the same rule as ``torch.testing.assert_close``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ParityError", "ParityReport", "assert_parity", "compare"]


class ParityError(AssertionError):
    """Our result disagrees with the reference beyond the stated tolerance."""


@dataclass(frozen=True)
class ParityReport:
    name: str
    shape: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple[int, ...]
    ours_at_worst: float
    ref_at_worst: float
    n_mismatched: int
    atol: float
    rtol: float

    @property
    def ok(self) -> bool:
        return self.n_mismatched == 0

    def __str__(self) -> str:
        return (f"{self.name or 'parity'}: shape {self.shape}, max abs err {self.max_abs_err:.3g}, "
                f"max rel err {self.max_rel_err:.3g} (atol {self.atol:g}, rtol {self.rtol:g})")


def _to_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def compare(ours, ref, *, atol: float, rtol: float = 0.0, name: str = "",
            rel_floor: float = 1e-12) -> ParityReport:
    """Compare two arrays or tensors elementwise in float64 and report the errors."""
    a, b = _to_float64(ours), _to_float64(ref)
    if a.shape != b.shape:
        raise ParityError(f"{name or 'parity'}: shape mismatch: ours {a.shape} vs reference {b.shape}")
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if (nan_a != nan_b).any():
        where = tuple(int(i) for i in np.argwhere(nan_a != nan_b)[0])
        raise ParityError(f"{name or 'parity'}: NaN pattern differs, first at index {where}: "
                          f"ours {a[where]!r}, reference {b[where]!r}")
    a, b = np.where(nan_a, 0.0, a), np.where(nan_b, 0.0, b)
    diff = np.abs(a - b)
    if diff.size == 0:
        return ParityReport(name, a.shape, 0.0, 0.0, (), 0.0, 0.0, 0, atol, rtol)
    flat = int(np.argmax(diff))
    worst = tuple(int(i) for i in np.unravel_index(flat, a.shape)) if a.ndim else ()
    big = np.abs(b) > rel_floor
    max_rel = float((diff[big] / np.abs(b[big])).max()) if big.any() else 0.0
    n_bad = int((diff > atol + rtol * np.abs(b)).sum())
    return ParityReport(name, tuple(a.shape), float(diff.reshape(-1)[flat]), max_rel, worst,
                        float(a.reshape(-1)[flat]), float(b.reshape(-1)[flat]), n_bad, atol, rtol)


def assert_parity(ours, ref, *, atol: float, rtol: float = 0.0, name: str = "") -> ParityReport:
    """Like ``compare``, but raise ParityError naming the worst element when anything mismatches."""
    report = compare(ours, ref, atol=atol, rtol=rtol, name=name)
    if not report.ok:
        raise ParityError(
            f"{report.name or 'parity'}: {report.n_mismatched} of {int(np.prod(report.shape))} "
            f"elements differ beyond atol {atol:g} + rtol {rtol:g}·|ref|; worst at index "
            f"{report.worst_index}: ours {report.ours_at_worst:.10g}, reference "
            f"{report.ref_at_worst:.10g} (abs err {report.max_abs_err:.3g}, "
            f"max rel err {report.max_rel_err:.3g})")
    return report
