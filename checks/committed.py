"""A number an experiment committed to ``results.json``, against the same number recomputed now.

The committed number was computed on one machine. Another CPU takes other kernels: another SIMD
width (``ATEN_CPU_CAPABILITY`` = default, avx2, avx512), fused multiply-adds or not, other BLAS
blocking, so the same float program ends in other last bits, and in more than the last bits
wherever the computation amplifies rounding. A test that compares a committed number therefore
states a tolerance *derived from the computation*, with its reason, and never asks for bit
identity. The vocabulary, weakest claim last:

- ``exact(why)``: nothing was rounded on the way (integers, counts, shapes, configurations,
  decisions such as an argmax with a margin far above rounding);
- ``float_ops(n, dtype)``: a well-conditioned computation of about ``n`` rounding steps per
  result (a reduction over ``n`` terms, a chain of ``n`` operations): relative error at most
  ``n·u`` times a safety factor, ``u`` the dtype's unit roundoff (Higham's bound for recursive
  summation is ``(n − 1)·u·Σ|x|``);
- ``iterated(steps, dtype, growth)``: a computation that feeds its rounding back ``steps`` times
  (an optimiser's path, value iteration, a training run in float64 that converges): the bound of
  ``float_ops`` times a growth factor the test justifies;
- ``log_space(decades)``: a value that is itself a rounding error (a finite difference at a tiny
  step, a residual at machine precision): only its order of magnitude is reproducible, so
  ``log10`` of the two values must agree within ``decades``;
- ``statistical(abs)``: a number from a run whose trajectory rounding changes (float32 training,
  sampling from a rounded distribution): it reproduces only up to the run-to-run spread the test
  states, e.g. a few binomial standard errors of an accuracy.

Read committed numbers through the ``committed`` fixture (checks/pytest_plugin.py): it marks the
test ``committed``, and CI runs every such test once more on the portable kernels
(``ATEN_CPU_CAPABILITY=default``), which is how a machine-bound tolerance gets caught here before
it fails on somebody else's CPU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CommittedMismatch", "SMOLLM2_LOGIT_REL", "Tolerance", "assert_reproduces", "cited_results", "exact",
           "float_ops", "iterated", "log_space", "reproduction_failures", "statistical", "unit_roundoff", "value_at"]

# Safety factor over the first-order bound n·u: the bound holds for one ordering, and the two
# machines round in different orders (both sides carry an error up to n·u).
SAFETY = 8.0


class CommittedMismatch(AssertionError):
    """A recomputed number differs from its committed value beyond the stated tolerance."""


def unit_roundoff(dtype: Any = "float64") -> float:
    """u = 2^-53 for float64, 2^-24 for float32, 2^-11 for float16 (half the machine epsilon)."""
    return float(np.finfo(_dtype(dtype)).eps) / 2


def _dtype(dtype: Any) -> np.dtype:
    """A numpy dtype from a numpy dtype or type, a name, or a torch dtype (torch.float32)."""
    return np.dtype(str(dtype).replace("torch.", "") if not isinstance(dtype, (type, np.dtype)) else dtype)


@dataclass(frozen=True)
class Tolerance:
    """How far a recomputed number may be from the committed one, and why."""

    reason: str
    rel: float = 0.0
    abs: float = 0.0
    decades: float | None = None      # log-space comparison: |log10|now| − log10|committed|| ≤ decades

    def __post_init__(self):
        if not self.reason.strip():
            raise ValueError("a tolerance needs its reason")
        if min(self.rel, self.abs) < 0 or (self.decades is not None and self.decades <= 0):
            raise ValueError(f"tolerances are positive: {self}")

    def __str__(self) -> str:
        if self.decades is not None:
            return f"within {self.decades:g} decades ({self.reason})"
        if self.rel == self.abs == 0:
            return f"exactly ({self.reason})"
        parts = [f"rel {self.rel:.2g}" if self.rel else "", f"abs {self.abs:.2g}" if self.abs else ""]
        return f"{' + '.join(p for p in parts if p)} ({self.reason})"


def exact(why: str) -> Tolerance:
    """No rounding on the way: the values must be equal."""
    return Tolerance(reason=why)


def float_ops(n: int, dtype: Any = "float64", *, why: str = "", abs: float = 0.0) -> Tolerance:
    """A well-conditioned result of about ``n`` rounding steps: rel ≤ SAFETY·n·u."""
    if n < 1:
        raise ValueError("n counts rounding steps: at least 1")
    rel = SAFETY * n * unit_roundoff(dtype)
    return Tolerance(reason=why or f"{n} {_dtype(dtype).name} rounding steps",
                     rel=rel, abs=abs)


def iterated(steps: int, dtype: Any = "float64", *, growth: float, why: str, abs: float = 0.0) -> Tolerance:
    """Rounding fed back ``steps`` times, amplified by ``growth`` (justified by the caller)."""
    return Tolerance(reason=why, rel=SAFETY * steps * growth * unit_roundoff(dtype), abs=abs)


def log_space(decades: float, *, why: str) -> Tolerance:
    """Only the order of magnitude is reproducible (the value is a rounding error itself)."""
    return Tolerance(reason=why, decades=decades)


def statistical(abs: float, *, why: str, rel: float = 0.0) -> Tolerance:
    """A number whose run depends on rounding: reproduced up to the stated spread."""
    return Tolerance(reason=why, abs=abs, rel=rel)


def _flatten(value, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key in value:
            _flatten(value[key], f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in value):
        for i, item in enumerate(value):
            _flatten(item, f"{path}[{i}]", out)
    else:
        out[path] = value


def _deviation(now, then, tol: Tolerance) -> tuple[float, bool]:
    """(worst deviation in the tolerance's own units, within?) for two scalars or arrays."""
    a = np.asarray(now, dtype=np.float64)
    b = np.asarray(then, dtype=np.float64)
    if a.shape != b.shape:
        raise CommittedMismatch(f"shape {a.shape} now, {b.shape} committed")
    if a.size == 0:
        return 0.0, True
    if np.isnan(a).any() or np.isnan(b).any():
        same = bool((np.isnan(a) == np.isnan(b)).all())
        a, b = np.where(np.isnan(a), 0.0, a), np.where(np.isnan(b), 0.0, b)
        if not same:
            return math.inf, False
    if tol.decades is not None:
        tiny = np.finfo(np.float64).tiny
        gap = np.abs(np.log10(np.maximum(np.abs(a), tiny)) - np.log10(np.maximum(np.abs(b), tiny)))
        worst = float(gap.max())
        return worst, worst <= tol.decades
    diff = np.abs(a - b)
    allowed = tol.abs + tol.rel * np.abs(b)
    within = bool((diff <= allowed).all())
    scaled = diff / np.where(allowed > 0, allowed, 1.0)
    return float(np.where(allowed > 0, scaled, np.where(diff > 0, np.inf, 0.0)).max()), within


def assert_reproduces(now, committed, tol: Tolerance, *, name: str = "value") -> float:
    """Check ``now`` against ``committed`` (numbers, arrays or nested dicts/lists of them).

    Non-numeric leaves (strings, booleans) must be equal. Returns the worst deviation as a
    fraction of the allowed one (0 = identical, 1 = at the tolerance; log-space: in decades),
    which a test can ``measure``. Raises CommittedMismatch naming the first leaf that is off.
    """
    flat_now: dict[str, Any] = {}
    flat_then: dict[str, Any] = {}
    _flatten(now, name, flat_now)
    _flatten(committed, name, flat_then)
    if flat_now.keys() != flat_then.keys():
        missing = sorted(flat_then.keys() - flat_now.keys())
        extra = sorted(flat_now.keys() - flat_then.keys())
        raise CommittedMismatch(f"{name}: keys differ (committed only: {missing[:5]}, now only: {extra[:5]})")
    worst = 0.0
    for key, value in flat_now.items():
        then = flat_then[key]
        numeric = all(isinstance(v, (int, float, np.number, np.ndarray, list, tuple)) or hasattr(v, "numpy")
                      for v in (value, then)) and not any(isinstance(v, bool) for v in (value, then))
        if not numeric:
            if value != then:
                raise CommittedMismatch(f"{key}: {value!r} now, {then!r} committed (must be equal)")
            continue
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        deviation, ok = _deviation(value, then, tol)
        if not ok:
            raise CommittedMismatch(f"{key}: {np.asarray(value).tolist()!r} now, {np.asarray(then).tolist()!r} "
                                    f"committed; allowed {tol}")
        worst = max(worst, deviation)
    return worst


# SmolLM2-135M runs in float32 through 30 layers: a logit is ≈ 210 000 roundings deep (per layer
# ≈ 7 000: the 576-term q/k/v/o, gate and up projections, the 1 536-term down projection, two
# RMSNorms, the attention sums), and such errors add like a random walk (√n·u, Higham & Mary 2019):
# float_ops(√210 000 ≈ 460, float32), 2.2e-4 relative to the logits' scale. Measured across
# ATEN_CPU_CAPABILITY kernels on this project's prompts: ≤ 5.4e-5 per logit at |logit| ≤ 42, so the
# bound is conservative by ~100×; a wrong implementation moves logits by far more.
SMOLLM2_LOGIT_REL = float_ops(460, "float32").rel


# ---------------------------------------------------------------- the numbers a post cites

_RESULT_SHORTCODE = re.compile(r"\{\{<\s*result\s+([^\s>]+)")


def cited_results(post: Path) -> set[str]:
    """The results.json keys a post cites, ``{{< result key.path fmt=... >}}``: what a slow rerun must
    reproduce (a test asserts that its table of tolerances names exactly these)."""
    return set(_RESULT_SHORTCODE.findall(Path(post).read_text(encoding="utf-8")))


def value_at(data, dotted: str):
    """The value at a dotted key as posts cite it: ``test.kl``, ``confusion.0.8`` (a number indexes a list)."""
    for part in dotted.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def reproduction_failures(now: dict, committed: dict, tolerances: Mapping[str, Tolerance | str],
                          extra: Iterable[tuple[str, Any, Any, Tolerance]] = ()) -> list[str]:
    """One message per cited number that a rerun (``now``) fails to reproduce: each dotted key of
    ``tolerances`` under its Tolerance, then the caller's ``extra`` claims (name, now, committed,
    tolerance). A key whose tolerance is a string (a ranking, a pair) is a claim the caller states in
    ``extra`` instead: an argmax is not a number to compare. Collecting all failures, not the first,
    shows at once whether one number drifted or the run went elsewhere."""
    checks = [(key, value_at(now, key), value_at(committed, key), tol)
              for key, tol in tolerances.items() if isinstance(tol, Tolerance)]
    failures = []
    for name, value, then, tol in [*checks, *extra]:
        try:
            assert_reproduces(value, then, tol, name=name)
        except CommittedMismatch as exc:
            failures.append(str(exc))
    return failures
