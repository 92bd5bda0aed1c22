"""Day 1: PyTorch, einops, einsum (ARENA 0.0 Prerequisites).

Three things, each built from broadcasting, reshapes and reductions only, and each tested
against the library it re-implements:

1. ``einsum``: Einstein summation. For operands with index labels, the result is

       out[o] = sum over the contracted labels c of  prod_k  operand_k[labels_k restricted to (o, c)]

   computed the naive way: align every operand to one global label order (inserting size-1
   axes), multiply with broadcasting, sum the contracted axes. A repeated label inside one
   operand ("ii->i") takes a diagonal first.
2. ``rearrange`` / ``reduce`` / ``repeat``: einops' three verbs. Each pattern is a reshape to the
   elementary axes, a permutation, optionally a reduction or a broadcast, and a reshape back.
3. ARENA's tensor exercises (indexing, gathering, numerically stable log-sum-exp, softmax and
   cross-entropy, sampling by inverse CDF) written with those tools.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import reduce as _fold
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from checks.timing import best_time

# ---------------------------------------------------------------- einsum

_TERM = re.compile(r"^[a-zA-Z]*(\.\.\.)?[a-zA-Z]*$")


def _ellipsis_labels(n: int) -> list[str]:
    """Labels for n ellipsis axes, aligned from the right (as broadcasting aligns them)."""
    return [f"…{i}" for i in reversed(range(n))]


def _parse_einsum(equation: str, shapes: list[tuple[int, ...]]) -> tuple[list[list[str]], list[str]]:
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(f"einsum {equation!r}: {len(terms)} input terms for {len(shapes)} operands")
    for term in terms + ([rhs] if arrow else []):
        if not _TERM.match(term):
            raise ValueError(f"einsum {equation!r}: bad term {term!r} (letters and one '...' only)")
    inputs, n_ellipsis = [], 0
    for term, shape in zip(terms, shapes):
        letters = term.replace("...", "")
        extra = len(shape) - len(letters)
        if extra < 0 or (extra > 0 and "..." not in term):
            raise ValueError(f"einsum {equation!r}: term {term!r} does not fit an operand of shape {tuple(shape)}")
        head, _, tail = term.partition("...")
        inputs.append(list(head) + _ellipsis_labels(extra) + list(tail))
        n_ellipsis = max(n_ellipsis, extra)
    if arrow:
        head, _, tail = rhs.partition("...")
        output = list(head) + (_ellipsis_labels(n_ellipsis) if "..." in rhs else []) + list(tail)
        if len(set(output)) != len(output):
            raise ValueError(f"einsum {equation!r}: an output label repeats")
        seen = {label for labels in inputs for label in labels}
        unknown = [label for label in output if label not in seen]
        if unknown:
            raise ValueError(f"einsum {equation!r}: output label(s) {unknown} appear in no input")
        if n_ellipsis and "..." not in rhs:
            raise ValueError(f"einsum {equation!r}: the '...' axes must appear in the output")
    else:
        # Implicit mode: broadcast axes, then the letters used exactly once, in alphabetical order.
        counts: dict[str, int] = {}
        for labels in inputs:
            for label in labels:
                counts[label] = counts.get(label, 0) + 1
        output = _ellipsis_labels(n_ellipsis) + sorted(l for l, c in counts.items() if c == 1 and not l.startswith("…"))
    return inputs, output


def _take_diagonals(x: Tensor, labels: list[str]) -> tuple[Tensor, list[str]]:
    """'ii' -> the diagonal: each repeated label is merged into one axis (moved to the end)."""
    labels = list(labels)
    while len(set(labels)) < len(labels):
        label = next(l for l in labels if labels.count(l) > 1)
        i = labels.index(label)
        j = labels.index(label, i + 1)
        if x.shape[i] != x.shape[j]:
            raise ValueError(f"einsum: label {label!r} has sizes {x.shape[i]} and {x.shape[j]} in one operand")
        x = x.diagonal(dim1=i, dim2=j)
        labels = [l for k, l in enumerate(labels) if k not in (i, j)] + [label]
    return x, labels


def einsum(equation: str, *operands: Tensor) -> Tensor:
    """Einstein summation by broadcasting: align, multiply, sum the contracted labels.

    Supports explicit ('ij,jk->ik') and implicit ('ij,jk') output, repeated labels (diagonals),
    and one '...' per term for broadcast batch axes. Memory is the size of the full product over
    all labels (torch.einsum instead contracts pairwise with batched matmuls).
    """
    inputs, output = _parse_einsum(equation, [tuple(op.shape) for op in operands])
    sizes: dict[str, int] = {}
    aligned_inputs = []
    for op, labels in zip(operands, inputs):
        op, labels = _take_diagonals(op, labels)
        for label, size in zip(labels, op.shape):
            known = sizes.get(label, 1)
            if label.startswith("…") and 1 in (known, size):  # broadcast axes may be 1
                sizes[label] = max(known, size)
            elif label in sizes and known != size:
                raise ValueError(f"einsum {equation!r}: label {label!r} has sizes {known} and {size}")
            else:
                sizes[label] = size
        aligned_inputs.append((op, labels))
    contracted = [l for _, labels in aligned_inputs for l in labels if l not in output]
    order = output + list(dict.fromkeys(contracted))
    aligned = []
    for op, labels in aligned_inputs:
        perm = sorted(range(len(labels)), key=lambda k: order.index(labels[k]))
        op = op.permute(perm)
        present = [labels[k] for k in perm]
        shape = [op.shape[present.index(label)] if label in present else 1 for label in order]
        aligned.append(op.reshape(shape))
    product = _fold(torch.mul, aligned)
    if len(order) > len(output):
        product = product.sum(dim=tuple(range(len(output), len(order))))
    return product.expand([sizes[label] for label in output])


# ---------------------------------------------------------------- einops: rearrange, reduce, repeat

_TOKEN = re.compile(r"\.\.\.|\(|\)|[A-Za-z_][A-Za-z0-9_]*|\d+")


def _parse_side(side: str, pattern: str, anonymous: dict[str, int]) -> list[list[str]]:
    """'b (h w) c' -> [['b'], ['h', 'w'], ['c']].

    '1' and '()' are groups with no axes; another number N is an anonymous axis of size N
    (recorded in ``anonymous``), e.g. the 7 in '(w 7) -> w'.
    """
    groups: list[list[str]] = []
    current: list[str] | None = None
    text = side.strip()
    if _TOKEN.sub("", text).strip():
        raise ValueError(f"pattern {pattern!r}: cannot parse {side!r}")
    for token in _TOKEN.findall(text):
        if token == "(":
            if current is not None:
                raise ValueError(f"pattern {pattern!r}: nested parentheses")
            current = []
        elif token == ")":
            if current is None:
                raise ValueError(f"pattern {pattern!r}: unbalanced ')'")
            groups.append(current)
            current = None
        elif token == "..." and current is not None:
            raise ValueError(f"pattern {pattern!r}: '...' inside parentheses is not supported")
        else:
            if token.isdigit():
                if token == "1":
                    if current is None:
                        groups.append([])
                    continue
                name = f"#{len(anonymous)}"
                anonymous[name] = int(token)
                token = name
            (current if current is not None else groups).append(token if current is not None else [token])
    if current is not None:
        raise ValueError(f"pattern {pattern!r}: unbalanced '('")
    names = [a for g in groups for a in g]
    if len(set(names)) != len(names):
        raise ValueError(f"pattern {pattern!r}: an axis repeats in {side!r}")
    return groups


@dataclass
class _Plan:
    left: list[list[str]]
    right: list[list[str]]
    sizes: dict[str, int]


def _plan(shape: tuple[int, ...], pattern: str, sizes: dict[str, int]) -> _Plan:
    if pattern.count("->") != 1:
        raise ValueError(f"pattern {pattern!r} needs exactly one '->'")
    lhs, rhs = pattern.split("->")
    anonymous: dict[str, int] = {}
    left, right = _parse_side(lhs, pattern, anonymous), _parse_side(rhs, pattern, anonymous)
    n_ellipsis = sum(g == ["..."] for g in left)
    if n_ellipsis > 1 or sum(g == ["..."] for g in right) > n_ellipsis:
        raise ValueError(f"pattern {pattern!r}: '...' must appear once on the left to appear on the right")
    if n_ellipsis:
        extra = len(shape) - (len(left) - 1)
        if extra < 0:
            raise ValueError(f"pattern {pattern!r} has more axes than the input's {len(shape)}")
        names = [[f"…{i}"] for i in range(extra)]
        left = [x for g in left for x in (names if g == ["..."] else [g])]
        right = [x for g in right for x in (names if g == ["..."] else [g])]
    if len(left) != len(shape):
        raise ValueError(f"pattern {pattern!r} describes {len(left)} axes, the input has {len(shape)}")
    known = {**sizes, **anonymous}
    for group, dim in zip(left, shape):
        unknown = [a for a in group if a not in known]
        product = math.prod(known[a] for a in group if a in known)
        if not unknown:
            if product != dim:
                raise ValueError(f"pattern {pattern!r}: axes {group} have product {product}, the input has {dim}")
        elif len(unknown) == 1:
            if product == 0 or dim % product:
                raise ValueError(f"pattern {pattern!r}: {dim} is not divisible by {product} for axes {group}")
            known[unknown[0]] = dim // product
        else:
            raise ValueError(f"pattern {pattern!r}: cannot infer the sizes of {unknown}; pass them as keywords")
    return _Plan(left, right, known)


def _to_elementary(x: Tensor, plan: _Plan) -> tuple[Tensor, list[str]]:
    axes = [a for g in plan.left for a in g]
    return x.reshape([plan.sizes[a] for a in axes]), axes


def _from_elementary(x: Tensor, axes: list[str], plan: _Plan) -> Tensor:
    wanted = [a for g in plan.right for a in g]
    x = x.permute([axes.index(a) for a in wanted])
    return x.reshape([math.prod(plan.sizes[a] for a in g) for g in plan.right])


def rearrange(x: Tensor, pattern: str, **sizes: int) -> Tensor:
    """einops.rearrange: a reshape to elementary axes, a permutation and a reshape back.

    The elementary axes on both sides must be the same set, e.g. 'b (h w) c -> b c h w' with h=...
    """
    plan = _plan(tuple(x.shape), pattern, sizes)
    left = {a for g in plan.left for a in g}
    right = {a for g in plan.right for a in g}
    if left != right:
        raise ValueError(f"rearrange {pattern!r}: axes {sorted(left ^ right)} appear on one side only")
    x, axes = _to_elementary(x, plan)
    return _from_elementary(x, axes, plan)


_REDUCTIONS = {
    "sum": lambda x, d: x.sum(dim=d), "mean": lambda x, d: x.mean(dim=d),
    "max": lambda x, d: x.amax(dim=d), "min": lambda x, d: x.amin(dim=d),
    "prod": lambda x, d: _prod(x, d),
}


def _prod(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    for d in sorted(dims, reverse=True):
        x = x.prod(dim=d)
    return x


def reduce(x: Tensor, pattern: str, reduction: str, **sizes: int) -> Tensor:
    """einops.reduce: axes on the left but not on the right are reduced with sum/mean/max/min/prod."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}: use one of {', '.join(_REDUCTIONS)}")
    plan = _plan(tuple(x.shape), pattern, sizes)
    left = [a for g in plan.left for a in g]
    right = {a for g in plan.right for a in g}
    if right - set(left):
        raise ValueError(f"reduce {pattern!r}: axes {sorted(right - set(left))} are not on the left")
    x, axes = _to_elementary(x, plan)
    gone = tuple(i for i, a in enumerate(axes) if a not in right)
    if gone:
        x = _REDUCTIONS[reduction](x, gone)
        axes = [a for a in axes if a in right]
    return _from_elementary(x, axes, plan)


def repeat(x: Tensor, pattern: str, **sizes: int) -> Tensor:
    """einops.repeat: axes on the right but not on the left are new, broadcast to their given size."""
    plan = _plan(tuple(x.shape), pattern, sizes)
    left = [a for g in plan.left for a in g]
    right = [a for g in plan.right for a in g]
    if set(left) - set(right):
        raise ValueError(f"repeat {pattern!r}: axes {sorted(set(left) - set(right))} vanish on the right")
    new = [a for a in right if a not in left]
    missing = [a for a in new if a not in plan.sizes]
    if missing:
        raise ValueError(f"repeat {pattern!r}: give the size of the new axes {missing}")
    x, axes = _to_elementary(x, plan)
    x = x.permute([axes.index(a) for a in right if a in left])
    view = [plan.sizes[a] if a in left else 1 for a in right]
    x = x.reshape(view).expand([plan.sizes[a] for a in right])
    return x.reshape([math.prod(plan.sizes[a] for a in g) for g in plan.right])


# ---------------------------------------------------------------- ARENA's tensor exercises


def identity_matrix(n: int) -> Float[Tensor, "n n"]:
    """The n×n identity without torch.eye: entry (i, j) is [i == j], by broadcasting."""
    idx = torch.arange(n)
    return (idx[:, None] == idx[None, :]).float()


def temperatures_weekly(temps: Float[Tensor, "days"]) -> dict[str, Tensor]:
    """Daily temperatures (a whole number of weeks) -> weekly mean, deviation and z-score per day.

    z = (t - mean_week) / std_week, with the unbiased standard deviation, as ARENA defines it.
    """
    mean = reduce(temps, "(w 7) -> w", "mean")
    deviation = temps - repeat(mean, "w -> (w 7)")
    std = reduce(deviation**2, "(w 7) -> w", "sum").div(6).sqrt()
    return {"mean": mean, "deviation": deviation, "z": deviation / repeat(std, "w -> (w 7)")}


def sample_distribution(probs: Float[Tensor, "k"], n: int, generator: torch.Generator | None = None) -> Int[Tensor, "n"]:
    """Draw n samples of {0..k-1} by inverse CDF: the index of the first cumulative sum above u ~ U[0, 1)."""
    u = torch.rand(n, generator=generator, dtype=probs.dtype)
    cdf = probs.cumsum(0)
    return (u[:, None] >= cdf[None, :]).sum(-1).clamp(max=len(probs) - 1)


def classifier_accuracy(scores: Float[Tensor, "batch k"], true_classes: Int[Tensor, "batch"]) -> float:
    """Fraction of rows whose argmax is the true class."""
    return (scores.argmax(dim=1) == true_classes).float().mean().item()


def gather_2d(matrix: Float[Tensor, "m n"], indexes: Int[Tensor, "m k"]) -> Float[Tensor, "m k"]:
    """out[i, j] = matrix[i, indexes[i, j]] with advanced indexing (what torch.gather(dim=1) does)."""
    rows = torch.arange(matrix.shape[0])[:, None]
    return matrix[rows, indexes]


def integer_array_indexing(matrix: Tensor, coords: Int[Tensor, "batch ndim"]) -> Tensor:
    """out[b] = matrix[coords[b, 0], coords[b, 1], ...]."""
    return matrix[tuple(coords.T)]


def batched_logsumexp(x: Float[Tensor, "batch n"]) -> Float[Tensor, "batch"]:
    """log sum_j exp(x_j), stably: m + log sum_j exp(x_j - m) with m = max_j x_j (never overflows)."""
    m = x.amax(dim=-1, keepdim=True)
    return (m + (x - m).exp().sum(dim=-1, keepdim=True).log()).squeeze(-1)


def batched_softmax(x: Float[Tensor, "batch n"]) -> Float[Tensor, "batch n"]:
    """softmax(x)_j = exp(x_j - logsumexp(x))."""
    return (x - batched_logsumexp(x)[:, None]).exp()


def batched_cross_entropy(logits: Float[Tensor, "batch n"], labels: Int[Tensor, "batch"]) -> Float[Tensor, "batch"]:
    """Per-example cross-entropy: logsumexp(logits) - logits[label]."""
    return batched_logsumexp(logits) - gather_2d(logits, labels[:, None])[:, 0]


def collect_rows(matrix: Tensor, row_indexes: Int[Tensor, "k"]) -> Tensor:
    return matrix[row_indexes]


def collect_columns(matrix: Tensor, column_indexes: Int[Tensor, "k"]) -> Tensor:
    return matrix[:, column_indexes]


# ---------------------------------------------------------------- the experiment


def digits_grid(images: Float[Tensor, "n h w"], rows: int) -> Float[Tensor, "H W"]:
    """Tile n images into a rows × (n / rows) grid: '(b1 b2) h w -> (b1 h) (b2 w)'."""
    return rearrange(images, "(b1 b2) h w -> (b1 h) (b2 w)", b1=rows)


def _loop_matmul(a: Tensor, b: Tensor) -> Tensor:
    n, k = a.shape
    m = b.shape[1]
    out = torch.zeros(n, m, dtype=a.dtype)
    for i in range(n):
        for j in range(m):
            out[i, j] = (a[i] * b[:, j]).sum()
    return out


def benchmark_matmul(sizes: tuple[int, ...] = (16, 32, 64, 128, 256)) -> list[dict]:
    """Seconds for an n×n matmul: Python loops, our broadcasting einsum, torch.einsum, torch.mm."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        row = {"n": n,
               "ours": best_time(lambda: einsum("ij,jk->ik", a, b)),
               "torch_einsum": best_time(lambda: torch.einsum("ij,jk->ik", a, b)),
               "torch_mm": best_time(lambda: a @ b)}
        if n <= 64:  # n^2 Python-level dot products: minutes beyond this
            row["loops"] = best_time(lambda: _loop_matmul(a, b), repeats=1)
        rows.append(row)
    return rows


def run_experiment(out_dir: Path) -> dict:
    """Draw the digits grid and the matmul benchmark; write figures/ and results.json."""
    import matplotlib.pyplot as plt
    from sklearn.datasets import load_digits

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    images = torch.tensor(load_digits().images[:32], dtype=torch.float32)
    grid = digits_grid(images, rows=4)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.imshow(grid, cmap="gray_r")
    for k in range(1, 4):  # tile boundaries: each 8×8 tile is one image
        ax.axhline(8 * k - 0.5, color="tab:blue", lw=1)
    for k in range(1, 8):
        ax.axvline(8 * k - 0.5, color="tab:blue", lw=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("rearrange(images, '(b1 b2) h w -> (b1 h) (b2 w)', b1=4)")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/digits_grid.png", dpi=120)
    plt.close(fig)

    bench = benchmark_matmul()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label in [("loops", "Python loops"), ("ours", "our einsum (broadcast, then sum)"),
                       ("torch_einsum", "torch.einsum"), ("torch_mm", "torch.mm")]:
        pts = [(r["n"], r[key]) for r in bench if key in r]
        ax.loglog(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("n (n×n times n×n)")
    ax.set_ylabel("seconds (best of 5)")
    ax.set_title("Matrix multiply: the cost of each formulation")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "figures/matmul_benchmark.png", dpi=120)
    plt.close(fig)

    largest = bench[-1]
    largest_loops = max((r for r in bench if "loops" in r), key=lambda r: r["n"])
    results = {
        "grid_shape": list(grid.shape),
        "benchmark": bench,
        "ratio": {
            "ours_vs_torch_einsum_at_largest": largest["ours"] / largest["torch_einsum"],
            "torch_einsum_vs_mm_at_largest": largest["torch_einsum"] / largest["torch_mm"],
            "loops_vs_ours_at_largest_loop_size": largest_loops["loops"] / largest_loops["ours"],
        },
        "largest_n": largest["n"],
        "broadcast_product_mb_at_largest": largest["n"] ** 3 * 4 / 1e6,  # n^3 float32 values
        "largest_loop_n": largest_loops["n"],
        "torch_threads": torch.get_num_threads(),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
