"""checks.grad_check: passes true gradients, catches wrong ones, and says where and by how much."""

import re

import numpy as np
import pytest
import torch

from checks import GradientMismatch, grad_check


class WrongSin(torch.autograd.Function):
    """sin with the sign of its derivative flipped: d/dx sin x = -cos x (wrong)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return -g * x.cos()


class AlmostRightSquare(torch.autograd.Function):
    """x**2 whose backward is right everywhere except one element, (1, 2), which is doubled."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**2

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        grad = 2 * x * g
        grad[1, 2] *= 2
        return grad


def test_true_gradients_pass_with_tiny_error(measure):
    """A correct autograd graph (matmul, tanh, softmax, log) passes with error near float64 rounding."""
    torch.manual_seed(0)
    a, b = torch.randn(3, 4), torch.randn(4, 2)

    def f(a, b):
        return torch.log_softmax(torch.tanh(a @ b), dim=-1)[:, 0].sum()

    report = grad_check(f, [a, b], names=["a", "b"])
    measure.grad(report, "matmul_tanh_logsoftmax")
    assert report.n_checked == a.numel() + b.numel()
    assert report.max_abs_err < 1e-8


def test_wrong_backward_is_caught_and_named():
    """A flipped-sign backward fails; the message names the function, input, index and both derivatives."""
    x = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)

    def wrong_sin(x):
        return WrongSin.apply(x).sum()

    with pytest.raises(GradientMismatch) as info:
        grad_check(wrong_sin, [x], names=["x"])
    message = str(info.value)
    assert "wrong_sin" in message and "input 'x'" in message
    m = re.search(r"at index \((\d+),\): analytic derivative (\S+), central difference (\S+)", message)
    assert m, message
    i, analytic, numeric = int(m[1]), float(m[2]), float(m[3])
    # The worst element is the one with the largest |cos|; both reported numbers are the true ones.
    assert i == int(torch.argmax(x.cos().abs()))
    assert analytic == pytest.approx(-np.cos(float(x[i])), rel=1e-9)
    assert numeric == pytest.approx(np.cos(float(x[i])), rel=1e-6)


def test_single_wrong_element_is_located():
    """An error in one element of a 3x4 gradient is reported at exactly that index."""
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with pytest.raises(GradientMismatch, match=r"index \(1, 2\)"):
        grad_check(lambda x: AlmostRightSquare.apply(x).sum(), [x])


def test_tensor_output_checks_every_output_element():
    """A non-scalar output is checked through a random cotangent: an error in one output's gradient shows."""
    x = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grad_check(lambda x: x.exp() * 3, [x])  # correct: passes
    with pytest.raises(GradientMismatch):
        grad_check(lambda x: AlmostRightSquare.apply(torch.cat([x, x]).reshape(4, 3)), [x])


def test_custom_numpy_gradients():
    """grad_fn lets a from-scratch engine (numpy, no torch graph) be checked; a wrong one fails."""
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    w = np.array([0.5, -1.0])

    def f(a, w):
        return float(np.sum((a.numpy() @ w.numpy()) ** 2))

    def right(a, w):
        r = a.numpy() @ w.numpy()
        return [2 * np.outer(r, w.numpy()), 2 * a.numpy().T @ r]

    def wrong(a, w):
        g = right(a, w)
        return [g[0], g[1] * 1.01]

    assert grad_check(f, [a, w], grad_fn=right).max_abs_err < 1e-7
    with pytest.raises(GradientMismatch, match="input 'inputs\\[1\\]'"):
        grad_check(f, [a, w], grad_fn=wrong)


def test_gradient_shape_mismatch_is_an_error():
    """A gradient of the wrong shape is reported as such, not compared element by element."""
    x = torch.ones(2, 2, dtype=torch.float64)
    with pytest.raises(GradientMismatch, match="shape"):
        grad_check(lambda x: x.sum(), [x], grad_fn=lambda x: [torch.ones(4)])
