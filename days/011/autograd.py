"""Day 11: an autograd engine from scratch, over numpy (ARENA 0.4 Backpropagation).

First, ARENA's chain rule by hand (``forward_and_back``, from ``log_back``, ``multiply_back0``
and ``multiply_back1``). Then reverse-mode automatic differentiation in four pieces:

1. **Backward functions.** For y = f(x₁, …, xₙ) and an upstream gradient ḡ = ∂L/∂y, the
   backward function for argument i returns the vector–Jacobian product
   ∂L/∂xᵢ = ḡ · ∂y/∂xᵢ, e.g. log: ḡ / x; exp: ḡ · y; matmul: ḡ Bᵀ and Aᵀ ḡ. Where numpy
   broadcast an input, the gradient is summed back over the broadcast axes (``unbroadcast``).
2. **A registry** maps (forward function, argument position) to its backward function.
3. **Tensors that remember their recipe**: every operation on a tensor that requires a gradient
   records the numpy function, its arguments and its parent tensors.
4. **backprop** (what ``Tensor.backward`` calls): sort the graph topologically (every node after
   the nodes that use it), then walk it once from the output, adding each node's contributions
   into its parents' gradients (the multivariate chain rule sums over all paths), and store the
   totals on the leaves.

Plus ``Parameter``, ``Module`` and ``Linear``, the pieces day 12 trains an MLP with.
"""

from __future__ import annotations

import builtins
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from jaxtyping import Float

from checks.timing import best_time, single_thread

Arr = np.ndarray

# ---------------------------------------------------------------- unbroadcasting


def unbroadcast(broadcasted: Float[Arr, "*broadcast"], original: Arr | tuple[int, ...]) -> Float[Arr, "*original"]:
    """Sum a gradient of broadcast shape back to the shape of the input that was broadcast.

    Broadcasting prepends axes and stretches size-1 axes; each copy of an input element adds its
    own term to the gradient, so the gradient sums over the prepended axes, then (keeping the
    dimension) over the axes where the input had size 1.
    """
    shape = tuple(original.shape) if isinstance(original, np.ndarray) else tuple(original)
    extra = broadcasted.ndim - len(shape)
    if extra < 0:
        raise ValueError(f"cannot unbroadcast shape {broadcasted.shape} to the larger shape {shape}")
    out = broadcasted.sum(axis=tuple(range(extra))) if extra else broadcasted
    stretched = tuple(i for i, (s, b) in enumerate(zip(shape, out.shape)) if s == 1 and b != 1)
    if stretched:
        out = out.sum(axis=stretched, keepdims=True)
    if out.shape != shape:
        raise ValueError(f"shape {broadcasted.shape} is not a broadcast of {shape}")
    return out


# ---------------------------------------------------------------- the registry


class BackwardFuncLookup:
    """(forward function, argument position) → backward function.

    A backward function is called as ``back(grad_out, out, *args, **kwargs)``, with the forward
    call's own (numpy) arguments, and returns the gradient for its argument position.
    """

    def __init__(self) -> None:
        self._table: dict[tuple[Callable, int], Callable] = {}

    def add_back_func(self, forward_fn: Callable, arg_position: int, back_fn: Callable) -> None:
        self._table[(forward_fn, arg_position)] = back_fn

    def get_back_func(self, forward_fn: Callable, arg_position: int) -> Callable:
        try:
            return self._table[(forward_fn, arg_position)]
        except KeyError:
            name = getattr(forward_fn, "__name__", repr(forward_fn))
            raise KeyError(f"no backward function registered for argument {arg_position} of {name}") from None


BACK_FUNCS = BackwardFuncLookup()


# ---------------------------------------------------------------- tensors


@dataclass(frozen=True)
class Recipe:
    """How a tensor was made: ``func(*args, **kwargs)`` with the tensors' arrays as arguments.

    ``parents`` maps argument positions to the input tensors that require a gradient.
    """

    func: Callable
    args: tuple
    kwargs: dict[str, Any]
    parents: dict[int, "Tensor"]


class _GradMode:
    enabled = True


class NoGrad:
    """Context manager: operations inside record no recipes (like ``torch.no_grad``)."""

    def __enter__(self) -> "NoGrad":
        self._previous = _GradMode.enabled
        _GradMode.enabled = False
        return self

    def __exit__(self, *exc) -> None:
        _GradMode.enabled = self._previous


class Tensor:
    """A numpy array, whether it requires a gradient, its gradient, and the recipe that made it."""

    __array_priority__ = 1000  # numpy array ⊕ Tensor defers to Tensor's reflected operators

    def __init__(self, array, requires_grad: bool = False):
        self.array: Arr = array if isinstance(array, np.ndarray) else np.asarray(array)
        self.requires_grad = requires_grad
        self.grad: Tensor | None = None
        self.recipe: Recipe | None = None

    # --- properties
    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def dtype(self):
        return self.array.dtype

    @property
    def is_leaf(self) -> bool:
        """A leaf holds a gradient after backward: it was not made by a recorded operation."""
        return self.recipe is None or not self.requires_grad

    def size(self, dim: int | None = None):
        return self.array.shape if dim is None else self.array.shape[dim]

    def numel(self) -> int:
        return self.array.size

    def item(self):
        return self.array.item()

    def numpy(self) -> Arr:
        return self.array

    def __len__(self) -> int:
        return len(self.array)

    def __repr__(self) -> str:
        return f"Tensor({self.array!r}, requires_grad={self.requires_grad})"

    __hash__ = object.__hash__  # __eq__ is elementwise; tensors are still usable as dict keys

    # --- operators (defined below the ops)
    def __neg__(self):
        return negative(self)

    def __add__(self, other):
        return add(self, other)

    def __radd__(self, other):
        return add(other, self)

    def __sub__(self, other):
        return subtract(self, other)

    def __rsub__(self, other):
        return subtract(other, self)

    def __mul__(self, other):
        return multiply(self, other)

    def __rmul__(self, other):
        return multiply(other, self)

    def __truediv__(self, other):
        return true_divide(self, other)

    def __rtruediv__(self, other):
        return true_divide(other, self)

    def __pow__(self, other):
        return power(self, other)

    def __rpow__(self, other):
        return power(other, self)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    def __eq__(self, other):
        return eq(self, other)

    def __getitem__(self, index):
        return getitem(self, coerce_index(index))

    # --- methods
    def exp(self):
        return exp(self)

    def log(self):
        return log(self)

    def relu(self):
        return relu(self)

    def sum(self, dim=None, keepdim: bool = False):
        return sum(self, dim=dim, keepdim=keepdim)

    def mean(self, dim=None, keepdim: bool = False):
        """sum / count, built from differentiable operations."""
        dims = range(self.ndim) if dim is None else ([dim] if isinstance(dim, int) else dim)
        count = math.prod(self.shape[d] for d in dims)
        return sum(self, dim=dim, keepdim=keepdim) / count

    def max(self, dim=None, keepdim: bool = False):
        return max(self, dim=dim, keepdim=keepdim)

    def argmax(self, dim=None, keepdim: bool = False):
        return argmax(self, dim=dim, keepdim=keepdim)

    def reshape(self, *shape):
        return reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    def permute(self, *dims):
        return permute(self, dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims)

    def expand(self, *shape):
        return expand(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    @property
    def T(self):
        return permute(self, tuple(reversed(range(self.ndim))))

    def backward(self, end_grad: "Arr | Tensor | None" = None) -> None:
        backprop(self, end_grad)


def coerce_index(index):
    """ARENA's helper: replace tensors in an index, alone or inside a tuple, by their arrays
    (integer and boolean indexing); ints, slices and arrays are kept."""
    if isinstance(index, Tensor):
        return index.array
    if isinstance(index, tuple):
        return tuple(i.array if isinstance(i, Tensor) else i for i in index)
    return index


def tensor(array, requires_grad: bool = False, dtype=None) -> Tensor:
    return Tensor(np.array(array, dtype=dtype), requires_grad)


def wrap_forward_fn(numpy_func: Callable, is_differentiable: bool = True) -> Callable[..., Tensor]:
    """Lift a numpy function to tensors: compute on the arrays, and record a recipe when grad
    mode is on and some tensor argument requires a gradient."""

    def tensor_func(*args, **kwargs) -> Tensor:
        arrays = tuple(a.array if isinstance(a, Tensor) else a for a in args)
        out = Tensor(np.asarray(numpy_func(*arrays, **kwargs)))
        parents = {i: a for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad}
        if is_differentiable and _GradMode.enabled and parents:
            out.requires_grad = True
            out.recipe = Recipe(numpy_func, arrays, kwargs, parents)
        return out

    tensor_func.__name__ = getattr(numpy_func, "__name__", "tensor_func")
    tensor_func.__doc__ = numpy_func.__doc__
    return tensor_func


def log_forward(x: Tensor) -> Tensor:
    """ARENA's first forward function, written out by hand before ``wrap_forward_fn`` generalises
    it: log of the array, and, when grad mode is on and x requires a gradient, the recipe
    (np.log, (x.array,), {}, {0: x}) that lets backprop find ``log_back``."""
    out = Tensor(np.log(x.array))
    if _GradMode.enabled and x.requires_grad:
        out.requires_grad = True
        out.recipe = Recipe(np.log, (x.array,), {}, {0: x})
    return out


def multiply_forward(a: Tensor | int | float, b: Tensor | int | float) -> Tensor:
    """ARENA's second hand-written forward function: a ⊙ b for tensors or Python numbers (at least
    one tensor), recording as parents exactly the tensor arguments that require a gradient, at
    their argument positions, when grad mode is on."""
    if not (isinstance(a, Tensor) or isinstance(b, Tensor)):
        raise TypeError("multiply_forward needs at least one Tensor argument")
    args = tuple(v.array if isinstance(v, Tensor) else v for v in (a, b))
    out = Tensor(np.asarray(np.multiply(*args)))
    parents = {i: v for i, v in enumerate((a, b)) if isinstance(v, Tensor) and v.requires_grad}
    if _GradMode.enabled and parents:
        out.requires_grad = True
        out.recipe = Recipe(np.multiply, args, {}, parents)
    return out


# ---------------------------------------------------------------- the operations and their backward functions


def log_back(grad_out: Arr, out: Arr, x: Arr) -> Arr:
    """d log x / dx = 1 / x."""
    return grad_out / x


def exp_back(grad_out: Arr, out: Arr, x: Arr) -> Arr:
    """d eˣ / dx = eˣ, which is the output."""
    return grad_out * out


def negative_back(grad_out: Arr, out: Arr, x: Arr) -> Arr:
    return -grad_out


def _binary_back(partial: Callable[[Arr, Arr, Arr, Arr], Arr], position: int) -> Callable:
    """The backward function of a broadcasting binary op at one argument position:
    unbroadcast(ḡ · ∂out/∂argᵢ) to that argument's shape (a Python number needs none)."""

    def back(grad_out: Arr, out: Arr, x, y) -> Arr:
        full = partial(grad_out, out, np.asarray(x), np.asarray(y))
        return unbroadcast(np.broadcast_to(full, out.shape), np.asarray((x, y)[position]))

    return back


def multiply_back0(grad_out: Arr, out: Arr, x: Arr, y: Arr | float) -> Arr:
    """∂(x ⊙ y)/∂x = y: the upstream gradient times y, summed back to x's shape where x was broadcast."""
    return unbroadcast(np.broadcast_to(grad_out * np.asarray(y), out.shape), np.asarray(x))


def multiply_back1(grad_out: Arr, out: Arr, x: Arr | float, y: Arr) -> Arr:
    """∂(x ⊙ y)/∂y = x: the upstream gradient times x, summed back to y's shape where y was broadcast."""
    return unbroadcast(np.broadcast_to(grad_out * np.asarray(x), out.shape), np.asarray(y))


def forward_and_back(a: Arr, b: Arr, c: Arr) -> tuple[Arr, Arr, Arr]:
    """ARENA's chain rule by hand, before any engine: the graph d = a ⊙ b, e = log c, f = d ⊙ e,
    g = log f, run forwards, then backwards from ∂g/∂g = 1 one local backward function at a time.
    Returns (∂g/∂a, ∂g/∂b, ∂g/∂c) of Σ g; c may be broadcast against a ⊙ b (its gradient then
    sums over the copies). In closed form: 1/a, 1/b and Σ 1/(c log c).
    """
    d = a * b
    e = np.log(c)
    f = d * e
    g = np.log(f)
    dg_dg = np.ones_like(g)
    dg_df = log_back(dg_dg, g, f)
    dg_dd = multiply_back0(dg_df, f, d, e)
    dg_de = multiply_back1(dg_df, f, d, e)
    dg_da = multiply_back0(dg_dd, d, a, b)
    dg_db = multiply_back1(dg_dd, d, a, b)
    dg_dc = log_back(dg_de, e, c)
    return dg_da, dg_db, dg_dc


def maximum_back0(grad_out: Arr, out: Arr, x: Arr, y: Arr | float) -> Arr:
    """∂max(x, y)/∂x = [x > y] + ½[x = y]: the gradient goes to the larger argument and a tie is
    split in half (as torch.maximum does), summed back to x's shape where x was broadcast."""
    x, y = np.asarray(x), np.asarray(y)
    share = (x > y) + 0.5 * (x == y)
    return unbroadcast(np.broadcast_to(grad_out * share, out.shape), x)


def maximum_back1(grad_out: Arr, out: Arr, x: Arr | float, y: Arr) -> Arr:
    """∂max(x, y)/∂y = [y > x] + ½[x = y], summed back to y's shape where y was broadcast."""
    x, y = np.asarray(x), np.asarray(y)
    share = (y > x) + 0.5 * (x == y)
    return unbroadcast(np.broadcast_to(grad_out * share, out.shape), y)


def _max_back(grad_out: Arr, out: Arr, x: Arr, axis=None, keepdims: bool = False) -> Arr:
    """The gradient of a max flows to the positions that attain it, split evenly among ties
    (what torch.amax does, and a subgradient of the max)."""
    if axis is not None and not keepdims:
        out, grad_out = np.expand_dims(out, axis), np.expand_dims(grad_out, axis)
    hits = (x == out).astype(x.dtype)
    return grad_out * hits / hits.sum(axis=axis, keepdims=True)


def _sum(x: Arr, dim=None, keepdim: bool = False) -> Arr:
    return np.sum(x, axis=dim, keepdims=keepdim)


def sum_back(grad_out: Arr, out: Arr, x: Arr, dim=None, keepdim: bool = False) -> Arr:
    """Every summed element gets the same upstream gradient: restore the summed axes, broadcast."""
    if dim is not None and not keepdim:
        grad_out = np.expand_dims(grad_out, dim)
    return np.broadcast_to(grad_out, x.shape)


def _max(x: Arr, dim=None, keepdim: bool = False) -> Arr:
    return np.max(x, axis=dim, keepdims=keepdim)


def _max_tensor_back(grad_out, out, x, dim=None, keepdim=False):
    return _max_back(grad_out, out, x, axis=dim, keepdims=keepdim)


def _argmax(x: Arr, dim=None, keepdim: bool = False) -> Arr:
    return np.argmax(x, axis=dim, keepdims=keepdim)


def _relu(x: Arr) -> Arr:
    return np.maximum(x, 0)


def _relu_back(grad_out: Arr, out: Arr, x: Arr) -> Arr:
    """ReLU'(x) = [x > 0] (0 at x = 0, torch's convention)."""
    return grad_out * (x > 0)


def _reshape(x: Arr, shape) -> Arr:
    return np.reshape(x, shape)


def reshape_back(grad_out: Arr, out: Arr, x: Arr, shape) -> Arr:
    """A reshape moves no value: the gradient is reshaped back to x's shape."""
    return grad_out.reshape(x.shape)


def _permute(x: Arr, axes) -> Arr:
    return np.transpose(x, axes)


def invert_transposition(axes: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation that undoes np.transpose(·, axes): output axis i of the transpose is input
    axis axes[i], so the inverse sends axes[i] back to i."""
    inverse = [0] * len(axes)
    for i, axis in enumerate(axes):
        inverse[axis] = i
    return tuple(inverse)


def permute_back(grad_out: Arr, out: Arr, x: Arr, axes) -> Arr:
    """Undo the permutation with its inverse (``invert_transposition``)."""
    return np.transpose(grad_out, invert_transposition(axes))


def _expand(x: Arr, shape) -> Arr:
    """torch's expand: -1 keeps an axis's size; new axes are prepended."""
    shape = tuple(shape)
    offset = len(shape) - x.ndim
    full = tuple(x.shape[i - offset] if s == -1 else s for i, s in enumerate(shape))
    return np.broadcast_to(x, full)


def expand_back(grad_out: Arr, out: Arr, x: Arr, shape) -> Arr:
    """expand copies x along new and size-1 axes: the gradient sums the copies (``unbroadcast``)."""
    return unbroadcast(grad_out, x)


def _getitem(x: Arr, index) -> Arr:
    return x[index]


def getitem_back(grad_out: Arr, out: Arr, x: Arr, index) -> Arr:
    """Scatter-add the gradient into the selected positions (np.add.at adds repeated indices)."""
    grad = np.zeros_like(x, dtype=grad_out.dtype)
    np.add.at(grad, index, grad_out)
    return grad


def matmul2d_back0(grad_out: Arr, out: Arr, x: Arr, y: Arr) -> Arr:
    """∂L/∂X = ḡ Yᵀ for out = X Y (matrices, or stacks of them: Yᵀ swaps the last two axes)."""
    return grad_out @ np.swapaxes(y, -1, -2)


def matmul2d_back1(grad_out: Arr, out: Arr, x: Arr, y: Arr) -> Arr:
    """∂L/∂Y = Xᵀ ḡ for out = X Y (matrices, or stacks of them)."""
    return np.swapaxes(x, -1, -2) @ grad_out


def _matmul_back(position: int) -> Callable:
    """∂L/∂A = ḡ Bᵀ and ∂L/∂B = Aᵀ ḡ, with 1-D operands promoted to matrices (as np.matmul
    does) and batch axes summed back where they were broadcast."""

    def back(grad_out: Arr, out: Arr, a: Arr, b: Arr) -> Arr:
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g = grad_out
        if b.ndim == 1:  # restore the dropped axes: b's trailing one first, then a's
            g = np.expand_dims(g, -1)
        if a.ndim == 1:
            g = np.expand_dims(g, -2)
        if position == 0:
            grad = unbroadcast(matmul2d_back0(g, out, a2, b2), a2.shape)
            return grad[0] if a.ndim == 1 else grad
        grad = unbroadcast(matmul2d_back1(g, out, a2, b2), b2.shape)
        return grad[:, 0] if b.ndim == 1 else grad

    return back


log = wrap_forward_fn(np.log)
exp = wrap_forward_fn(np.exp)
negative = wrap_forward_fn(np.negative)
add = wrap_forward_fn(np.add)
subtract = wrap_forward_fn(np.subtract)
multiply = wrap_forward_fn(np.multiply)
true_divide = wrap_forward_fn(np.true_divide)
power = wrap_forward_fn(np.power)
maximum = wrap_forward_fn(np.maximum)
matmul = wrap_forward_fn(np.matmul)
relu = wrap_forward_fn(_relu)
sum = wrap_forward_fn(_sum)  # noqa: A001 (torch's name; the builtin is not used in this module)
max = wrap_forward_fn(_max)  # noqa: A001
argmax = wrap_forward_fn(_argmax, is_differentiable=False)
eq = wrap_forward_fn(np.equal, is_differentiable=False)
reshape = wrap_forward_fn(_reshape)
permute = wrap_forward_fn(_permute)
expand = wrap_forward_fn(_expand)
getitem = wrap_forward_fn(_getitem)

BACK_FUNCS.add_back_func(np.log, 0, log_back)
BACK_FUNCS.add_back_func(np.exp, 0, exp_back)
BACK_FUNCS.add_back_func(np.negative, 0, negative_back)
BACK_FUNCS.add_back_func(np.add, 0, _binary_back(lambda g, out, x, y: g, 0))
BACK_FUNCS.add_back_func(np.add, 1, _binary_back(lambda g, out, x, y: g, 1))
BACK_FUNCS.add_back_func(np.subtract, 0, _binary_back(lambda g, out, x, y: g, 0))
BACK_FUNCS.add_back_func(np.subtract, 1, _binary_back(lambda g, out, x, y: -g, 1))
BACK_FUNCS.add_back_func(np.multiply, 0, multiply_back0)
BACK_FUNCS.add_back_func(np.multiply, 1, multiply_back1)
BACK_FUNCS.add_back_func(np.true_divide, 0, _binary_back(lambda g, out, x, y: g / y, 0))
BACK_FUNCS.add_back_func(np.true_divide, 1, _binary_back(lambda g, out, x, y: -g * x / y**2, 1))
BACK_FUNCS.add_back_func(np.power, 0, _binary_back(lambda g, out, x, y: g * y * x ** (y - 1), 0))
BACK_FUNCS.add_back_func(np.power, 1, _binary_back(lambda g, out, x, y: g * out * np.log(x), 1))
BACK_FUNCS.add_back_func(np.maximum, 0, maximum_back0)
BACK_FUNCS.add_back_func(np.maximum, 1, maximum_back1)
BACK_FUNCS.add_back_func(np.matmul, 0, _matmul_back(0))
BACK_FUNCS.add_back_func(np.matmul, 1, _matmul_back(1))
BACK_FUNCS.add_back_func(_relu, 0, _relu_back)
BACK_FUNCS.add_back_func(_sum, 0, sum_back)
BACK_FUNCS.add_back_func(_max, 0, _max_tensor_back)
BACK_FUNCS.add_back_func(_reshape, 0, reshape_back)
BACK_FUNCS.add_back_func(_permute, 0, permute_back)
BACK_FUNCS.add_back_func(_expand, 0, expand_back)
BACK_FUNCS.add_back_func(_getitem, 0, getitem_back)


# ---------------------------------------------------------------- backpropagation


def topological_sort(node: Any, get_children: Callable[[Any], Iterable[Any]]) -> list[Any]:
    """All nodes reachable from ``node``, each after all of its children (an iterative
    depth-first post-order, so deep graphs cannot overflow Python's recursion limit).
    A cycle is an error: it has no topological order."""
    order: list[Any] = []
    done: set[int] = set()
    on_path: set[int] = {id(node)}
    stack = [(node, iter(get_children(node)))]
    while stack:
        current, children = stack[-1]
        for child in children:
            if id(child) in on_path:
                raise ValueError("the graph has a cycle")
            if id(child) not in done:
                on_path.add(id(child))
                stack.append((child, iter(get_children(child))))
                break
        else:  # every child finished: current can follow them
            stack.pop()
            on_path.discard(id(current))
            done.add(id(current))
            order.append(current)
    return order


def sorted_computational_graph(end: Tensor) -> list[Tensor]:
    """The graph behind ``end`` in the order backward visits it: ``end`` first, and every tensor
    before its inputs (so a tensor's gradient is complete when it is visited)."""
    return topological_sort(end, lambda t: list(t.recipe.parents.values()) if t.recipe else [])[::-1]


def backprop(end_node: Tensor, end_grad: Arr | Tensor | None = None) -> None:
    """Accumulate d end_node / d leaf into the ``grad`` of every leaf that requires one
    (``Tensor.backward`` calls this).

    The chain rule for a node used several times sums the contributions of all its uses; the
    topological order guarantees they have all arrived before the node passes its own on.
    """
    if not end_node.requires_grad:
        raise RuntimeError("backward() on a tensor that does not require a gradient")
    if end_grad is None:
        if end_node.array.size != 1:
            raise RuntimeError(f"backward() on a tensor of shape {end_node.shape} needs end_grad (the gradient is only implicit for a scalar)")
        end_grad = np.ones_like(end_node.array)
    grads: dict[int, Arr] = {id(end_node): np.asarray(end_grad.array if isinstance(end_grad, Tensor) else end_grad)}
    for node in sorted_computational_graph(end_node):
        grad = grads.pop(id(node))
        if node.is_leaf:
            if node.requires_grad:
                # copy (a backward function may return a view) in the view's own memory order:
                # copying a transposed weight gradient into C order is slow (see copy_cost)
                node.grad = Tensor(grad.copy(order="K")) if node.grad is None else Tensor(node.grad.array + grad)
            continue
        recipe = node.recipe
        for position, parent in recipe.parents.items():
            back = BACK_FUNCS.get_back_func(recipe.func, position)
            contribution = back(grad, node.array, *recipe.args, **recipe.kwargs)
            grads[id(parent)] = grads[id(parent)] + contribution if id(parent) in grads else contribution


# ---------------------------------------------------------------- parameters and modules


class Parameter(Tensor):
    """A leaf tensor that requires a gradient and that a Module registers as its own."""

    def __init__(self, tensor_or_array, requires_grad: bool = True):
        array = tensor_or_array.array if isinstance(tensor_or_array, Tensor) else tensor_or_array
        super().__init__(array, requires_grad)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Registers Parameters and sub-Modules assigned as attributes, in assignment order."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def modules(self) -> Iterator["Module"]:
        """The direct sub-modules."""
        return iter(self._modules.values())

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) for this module's parameters, then each sub-module's."""
        for name, p in self._parameters.items():
            yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(f"{prefix}{name}.")

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """This module's parameters, then (if ``recurse``) its sub-modules', as in torch and ARENA."""
        return (p for _, p in self.named_parameters()) if recurse else iter(self._parameters.values())

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} defines no forward")

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items())
        return f"{type(self).__name__}({self.extra_repr()}{inner}{chr(10) if inner else ''})"

    def extra_repr(self) -> str:
        return ""


class Linear(Module):
    """y = x Wᵀ + b, with W (out, in) and b (out,) drawn from U(−1/√in, 1/√in), torch's default."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 rng: np.random.Generator | None = None, dtype=np.float32):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        bound = 1 / math.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype))
        self.bias = Parameter(rng.uniform(-bound, bound, (out_features,)).astype(dtype)) if bias else None

    def forward(self, x: Float[Tensor, "*batch in_features"]) -> Float[Tensor, "*batch out_features"]:
        y = x @ self.weight.T
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return relu(x)


# ---------------------------------------------------------------- the experiment


def _mlp_loss(x: Tensor, layers: list[Linear]) -> Tensor:
    """A plain MLP (ReLU between layers) and a smooth scalar of its output: sum(log(1 + exp(out)))."""
    for i, layer in enumerate(layers):
        x = layer(x)
        if i < len(layers) - 1:
            x = relu(x)
    return (x.exp() + 1).log().sum()


def difference_errors(epsilons: list[float], seed: int = 0) -> dict[str, list[float]]:
    """Worst error of central and forward differences against our engine's exact gradient, per ε.

    f(x) = Σ log(1 + exp(x ⊙ w)) · x on 8 float64 inputs. Central differences err by
    ε²|f‴|/6 (truncation) plus about u|f|/ε (rounding, u = 2⁻⁵³); forward differences by ε|f″|/2
    plus 2u|f|/ε. The errors bottom out near ε ≈ u^(1/3) and u^(1/2) respectively.
    """
    rng = np.random.default_rng(seed)
    x0, w = rng.normal(size=8), rng.normal(size=8)

    def f(x: Arr) -> float:
        with NoGrad():
            t = Tensor(x)
            return (((t * w).exp() + 1).log() * t).sum().item()

    xt = Tensor(x0.copy(), requires_grad=True)
    (((xt * w).exp() + 1).log() * xt).sum().backward()
    exact = xt.grad.array
    central, forward = [], []
    for eps in epsilons:
        c, fw = np.empty(8), np.empty(8)
        for i in range(8):
            e = np.zeros(8)
            e[i] = eps
            c[i] = (f(x0 + e) - f(x0 - e)) / (2 * eps)
            fw[i] = (f(x0 + e) - f(x0)) / eps
        central.append(float(np.abs(c - exact).max()))
        forward.append(float(np.abs(fw - exact).max()))
    return {"central": central, "forward": forward}


def benchmark_pair(width: int, batch: int = 64, seed: int = 0):
    """The two functions ``benchmark`` times, for a 64 → w → w → 10 MLP (float32) with the same
    weights in our engine and in torch: ``ours()`` and ``reference()`` each run one forward and
    backward pass of Σ softplus(MLP(x)) and return the loss (gradients accumulate on the
    parameters). Also returns both sets of layers, so their gradients can be compared."""
    import torch

    rng = np.random.default_rng(seed)
    layers = [Linear(64, width, rng=rng), Linear(width, width, rng=rng), Linear(width, 10, rng=rng)]
    x = Tensor(rng.normal(size=(batch, 64)).astype(np.float32))
    torch_layers = [torch.nn.Linear(l.in_features, l.out_features) for l in layers]
    with torch.no_grad():
        for t, l in zip(torch_layers, layers):
            t.weight.copy_(torch.from_numpy(l.weight.array))
            t.bias.copy_(torch.from_numpy(l.bias.array))
    xt = torch.from_numpy(x.array)

    def ours():
        loss = _mlp_loss(x, layers)
        loss.backward()
        return loss.array

    def reference():
        h = xt
        for i, t in enumerate(torch_layers):
            h = t(h)
            if i < 2:
                h = torch.relu(h)
        loss = torch.nn.functional.softplus(h).sum()
        loss.backward()
        return loss

    return ours, reference, layers, torch_layers


def benchmark(widths: tuple[int, ...] = (8, 32, 128, 512, 2048), batch: int = 64, repeats: int = 20) -> list[dict]:
    """Seconds per forward + backward of a 3-layer MLP (64 → w → w → 10, batch 64, float32):
    our engine against torch.autograd (``benchmark_pair``), both on one thread (numpy's BLAS and torch's)."""
    rows = []
    with single_thread():
        for w in widths:
            ours, reference, layers, _ = benchmark_pair(w, batch)
            rows.append({"width": w, "params": int(builtins.sum(p.numel() for l in layers for p in l.parameters())),
                         "ours_s": best_time(ours, repeats), "torch_s": best_time(reference, repeats)})
    for row in rows:
        row["ratio"] = row["ours_s"] / row["torch_s"]
    return rows


def copy_cost(n: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Seconds to copy an n×n float32 gradient that is a transposed view (as Linear's weight
    gradient arrives from permute's backward): into C order, against keeping its own order."""
    view = np.random.default_rng(0).random((n, n), dtype=np.float32).T
    return {"c_order_s": best_time(lambda: view.copy(order="C"), repeats),
            "own_order_s": best_time(lambda: view.copy(order="K"), repeats)}


EPSILONS = [10.0**e for e in np.arange(-12, -0.5, 0.5)]


def run_experiment(out_dir: Path) -> dict:
    """Two figures: finite-difference error against ε (why gradient checks use central
    differences at ε ≈ 1e-6), and the engine's cost against torch.autograd by layer width."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    errors = difference_errors(EPSILONS)
    u = np.finfo(np.float64).eps / 2

    fig, ax = plt.subplots(figsize=(7, 4.4))
    ax.loglog(EPSILONS, errors["central"], "o-", label="central: (f(x+ε) − f(x−ε)) / 2ε")
    ax.loglog(EPSILONS, errors["forward"], "s-", label="forward: (f(x+ε) − f(x)) / ε")
    ax.axvline(u ** (1 / 3), color="tab:blue", ls=":", lw=1, label="u^(1/3)")
    ax.axvline(u ** (1 / 2), color="tab:orange", ls=":", lw=1, label="u^(1/2)")
    ax.set_xlabel("ε")
    ax.set_ylabel("max |numeric − autograd|")
    ax.set_title("Finite differences against our engine's exact gradient (float64)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/finite_differences.png", dpi=120)
    plt.close(fig)

    bench = benchmark()
    fig, ax = plt.subplots(figsize=(7, 4.4))
    ax.loglog([r["params"] for r in bench], [r["ours_s"] * 1e3 for r in bench], "o-", label="our engine (numpy)")
    ax.loglog([r["params"] for r in bench], [r["torch_s"] * 1e3 for r in bench], "s-", label="torch.autograd")
    for r in bench:
        ax.annotate(f"w={r['width']}\n{r['ratio']:.1f}×", (r["params"], r["ours_s"] * 1e3), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=7)
    ax.set_xlabel("parameters (64 → w → w → 10)")
    ax.set_ylabel("ms per forward + backward (batch 64)")
    ax.set_title("Cost of a Python autograd, one CPU thread")
    ax.set_ylim(top=ax.get_ylim()[1] * 3)  # room for the annotations
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "figures/benchmark.png", dpi=120)
    plt.close(fig)

    central = np.array(errors["central"])
    forward = np.array(errors["forward"])
    results = {
        "epsilons": EPSILONS,
        "errors": errors,
        "central_best": {"eps": EPSILONS[int(central.argmin())], "error": float(central.min())},
        "forward_best": {"eps": EPSILONS[int(forward.argmin())], "error": float(forward.min())},
        "central_at_1e-6": errors["central"][EPSILONS.index(1e-6)],
        "unit_roundoff": u,
        "benchmark": bench,
        "ratio_smallest": bench[0]["ratio"],
        "ratio_largest": bench[-1]["ratio"],
        "transposed_copy_2048": copy_cost(),
    }
    results["transposed_copy_2048"]["slowdown"] = (results["transposed_copy_2048"]["c_order_s"]
                                                   / results["transposed_copy_2048"]["own_order_s"])
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
