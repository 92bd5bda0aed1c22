"""Gradient checking by central differences in float64.

For a scalar function f and each input element x_i, the numeric derivative is

    (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)

whose truncation error is O(eps^2) (the O(eps) terms cancel), against O(eps) for a one-sided
difference. In float64 with eps = 1e-6 the total error (truncation + rounding ~ 1e-16 / eps) is
around 1e-10 for smooth functions, so a tolerance of 1e-6 separates a correct gradient from a
wrong one by orders of magnitude.

A function with a tensor output is reduced to a scalar with a fixed random cotangent v
(checking J^T v, i.e. exactly what backward computes), so every output element matters.
Failures name the function, the input, the index and both derivatives (as minitorch does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = ["GradCheckReport", "GradientMismatch", "grad_check"]


class GradientMismatch(AssertionError):
    """An analytic derivative disagrees with its central-difference estimate."""


@dataclass(frozen=True)
class GradCheckReport:
    function: str
    n_checked: int
    max_abs_err: float
    max_rel_err: float
    eps: float
    atol: float
    rtol: float

    def __str__(self) -> str:
        return (f"grad_check({self.function}): {self.n_checked} derivatives, "
                f"max abs err {self.max_abs_err:.2e}, max rel err {self.max_rel_err:.2e}")


def _as_float64_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64).clone()
    return torch.as_tensor(np.asarray(x, dtype=np.float64)).clone()


def _autograd_grads(f, inputs: list[torch.Tensor], cotangent) -> list[torch.Tensor]:
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    out = f(*leaves)
    scalar = _reduce(out, cotangent)
    grads = torch.autograd.grad(scalar, leaves, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g.detach() for x, g in zip(inputs, grads)]


def _reduce(out, cotangent) -> torch.Tensor:
    """Reduce an output to a scalar: <out, cotangent> (the identity for scalar outputs)."""
    out_t = out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out, dtype=np.float64))
    if cotangent is None:
        if out_t.numel() != 1:
            raise ValueError("internal: a non-scalar output needs a cotangent")
        return out_t.reshape(())
    return (out_t.to(torch.float64) * cotangent).sum()


def grad_check(
    f: Callable[..., torch.Tensor],
    inputs: Sequence,
    *,
    grad_fn: Callable[..., Sequence] | None = None,
    names: Sequence[str] | None = None,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    seed: int = 0,
) -> GradCheckReport:
    """Check analytic gradients of ``f`` against central differences, in float64.

    f:       maps the inputs (float64 tensors) to a tensor (any shape) or a float.
    grad_fn: the analytic gradients to check, ``grad_fn(*inputs) -> [dL/dx for x in inputs]``
             where L = <f(inputs), v>. By default torch.autograd differentiates f, which checks
             every custom ``backward`` that f calls. With a scalar f, v = 1. With a tensor
             output, v is a fixed random cotangent and ``grad_fn`` receives it as ``cotangent=``.
    Raises GradientMismatch for the worst offending element; returns the error summary otherwise.
    """
    xs = [_as_float64_tensor(x) for x in inputs]
    names = list(names) if names is not None else [f"inputs[{i}]" for i in range(len(xs))]
    if len(names) != len(xs):
        raise ValueError(f"got {len(names)} names for {len(xs)} inputs")
    fname = getattr(f, "__qualname__", getattr(f, "__name__", repr(f)))

    with torch.no_grad():
        probe = f(*[x.clone() for x in xs])
    probe_t = probe if isinstance(probe, torch.Tensor) else torch.as_tensor(np.asarray(probe))
    cotangent = None
    if probe_t.numel() != 1:
        gen = torch.Generator().manual_seed(seed)
        cotangent = torch.randn(probe_t.shape, generator=gen, dtype=torch.float64)

    if grad_fn is None:
        analytic = _autograd_grads(f, xs, cotangent)
    else:
        kwargs = {} if cotangent is None else {"cotangent": cotangent}
        analytic = [_as_float64_tensor(g) for g in grad_fn(*[x.clone() for x in xs], **kwargs)]
        if len(analytic) != len(xs):
            raise ValueError(f"grad_fn returned {len(analytic)} gradients for {len(xs)} inputs")

    def value(args) -> float:
        with torch.no_grad():
            return float(_reduce(f(*args), cotangent))

    worst = None  # (excess, name, index, analytic, numeric)
    max_abs = max_rel = 0.0
    n = 0
    for k, (x, g) in enumerate(zip(xs, analytic)):
        if tuple(g.shape) != tuple(x.shape):
            raise GradientMismatch(
                f"{fname}: gradient for input '{names[k]}' has shape {tuple(g.shape)}, "
                f"the input has shape {tuple(x.shape)}")
        for flat in range(x.numel()):
            idx = np.unravel_index(flat, tuple(x.shape)) if x.dim() else ()
            plus = [y.clone() for y in xs]
            minus = [y.clone() for y in xs]
            plus[k].view(-1)[flat] += eps
            minus[k].view(-1)[flat] -= eps
            numeric = (value(plus) - value(minus)) / (2 * eps)
            a = float(g.reshape(-1)[flat])
            err = abs(a - numeric)
            rel = err / max(abs(numeric), 1e-12)
            max_abs, n = max(max_abs, err), n + 1
            max_rel = max(max_rel, rel if abs(numeric) > atol else 0.0)
            excess = err - (atol + rtol * abs(numeric))
            if excess > 0 and (worst is None or excess > worst[0]):
                worst = (excess, names[k], tuple(int(i) for i in idx), a, numeric)

    if worst is not None:
        _, name, idx, a, numeric = worst
        raise GradientMismatch(
            f"gradient check failed for {fname}: input '{name}' at index {idx}: "
            f"analytic derivative {a:.10g}, central difference {numeric:.10g} "
            f"(|diff| {abs(a - numeric):.3g} > atol {atol:g} + rtol {rtol:g}·|numeric|; eps {eps:g})")
    return GradCheckReport(fname, n, max_abs, max_rel, eps, atol, rtol)
