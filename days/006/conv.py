"""Day 6: convolutions from scratch (ARENA 0.2 CNNs & ResNets).

A convolution (in deep learning's sense, which is a cross-correlation) of an input x with
channels c and a kernel w with out-channels o is

    out[b, o, i, j] = Σ_{c, p, q} x_pad[b, c, s·i + p, s·j + q] · w[o, c, p, q]

with stride s and x_pad the input padded by P zeros on each side, so the output is
⌊(H + 2P − K) / s⌋ + 1 wide along each axis. Written this way it is two steps:

1. a *view* of every window, x_win[b, c, i, j, p, q] = x_pad[b, c, s·i + p, s·j + q], which is
   ``as_strided`` with strides (sB, sC, s·sH, s·sW, sH, sW): no copy (day 2's sliding windows,
   generalised to several axes);
2. one einsum "b c i j p q, o c p q -> b o i j".

Before the convolution, ARENA's ``as_strided`` warm-ups: a trace, a matrix–vector and a
matrix–matrix product from views alone (``as_strided_trace``, ``as_strided_mv``, ``as_strided_mm``).

Max pooling is the same view with a max over (p, q) instead of a weighted sum, after padding with
−∞. On top: the ``nn.Module`` layers ARENA builds (ReLU, Linear, Flatten, Conv2d, MaxPool2d,
BatchNorm2d, Sequential), whose parameters and buffers are named like torch.nn's, so a torch
``state_dict`` loads into them unchanged.
"""

from __future__ import annotations

import json
import math
from importlib import import_module
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
from jaxtyping import Float
from torch import Tensor

from checks.timing import best_time

IntOrPair = int | tuple[int, int]


def pair(v: IntOrPair) -> tuple[int, int]:
    """3 -> (3, 3); (3, 5) -> (3, 5)."""
    if isinstance(v, int):
        return (v, v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return (int(v[0]), int(v[1]))


# ---------------------------------------------------------------- as_strided warm-ups (ARENA part 1)
#
# Linear algebra with nothing but views: a view with a stride of 0 repeats a row or a column
# without copying it, and a stride of s₀ + s₁ walks the diagonal. Every stride is read from the
# input (``mat.stride()``, ``mat.storage_offset()``), never assumed, so a transposed matrix or a
# strided slice of a bigger buffer works as well as a fresh contiguous one.


def as_strided_trace(mat: Float[Tensor, "i j"]) -> Float[Tensor, ""]:
    """tr M = Σ_i M[i, i]: the diagonal is the view of size (n,) whose one step moves one row
    down and one column right, i.e. stride s₀ + s₁."""
    if mat.dim() != 2 or mat.size(0) != mat.size(1):
        raise ValueError(f"the trace needs a square matrix, got shape {tuple(mat.shape)}")
    s0, s1 = mat.stride()
    return mat.as_strided((mat.size(0),), (s0 + s1,), mat.storage_offset()).sum()


def as_strided_mv(mat: Float[Tensor, "i j"], vec: Float[Tensor, "j"]) -> Float[Tensor, "i"]:
    """(M v)_i = Σ_j M[i, j] v[j]: v viewed as an (i, j) matrix with stride (0, v's stride), i.e.
    the same row i times without a copy, multiplied elementwise by M and summed over j."""
    if mat.dim() != 2 or vec.dim() != 1 or mat.size(1) != vec.size(0):
        raise ValueError(f"mat{list(mat.shape)} and vec{list(vec.shape)} are not compatible for multiplication")
    rows = vec.as_strided(tuple(mat.shape), (0, vec.stride(0)), vec.storage_offset())
    return (mat * rows).sum(1)


def as_strided_mm(matA: Float[Tensor, "i k"], matB: Float[Tensor, "k j"]) -> Float[Tensor, "i j"]:
    """(A B)_ij = Σ_k A[i, k] B[k, j]: A viewed as (i, k, j) with stride 0 along j, B viewed as
    (i, k, j) with stride 0 along i, multiplied elementwise and summed over k."""
    if matA.dim() != 2 or matB.dim() != 2 or matA.size(1) != matB.size(0):
        raise ValueError(f"matA{list(matA.shape)} and matB{list(matB.shape)} are not compatible for multiplication")
    (i, k), j = matA.shape, matB.size(1)
    a0, a1 = matA.stride()
    b0, b1 = matB.stride()
    a = matA.as_strided((i, k, j), (a0, a1, 0), matA.storage_offset())
    b = matB.as_strided((i, k, j), (0, b0, b1), matB.storage_offset())
    return (a * b).sum(1)


# ---------------------------------------------------------------- padding and windows


def pad1d(x: Float[Tensor, "... w"], left: int, right: int, pad_value: float = 0.0) -> Float[Tensor, "... w_padded"]:
    """x with ``left`` and ``right`` copies of pad_value added along the last axis (F.pad, mode constant)."""
    out = x.new_full((*x.shape[:-1], left + x.shape[-1] + right), pad_value)
    out[..., left: left + x.shape[-1]] = x
    return out


def pad2d(x: Float[Tensor, "... h w"], left: int, right: int, top: int, bottom: int,
          pad_value: float = 0.0) -> Float[Tensor, "... h_padded w_padded"]:
    """x padded on the last two axes: ``top``/``bottom`` rows and ``left``/``right`` columns of pad_value."""
    h, w = x.shape[-2:]
    out = x.new_full((*x.shape[:-2], top + h + bottom, left + w + right), pad_value)
    out[..., top: top + h, left: left + w] = x
    return out


def windows(x: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    """Every window of the last ``len(kernel)`` axes, as a view: shape (*leading, *out, *kernel).

    Along a spatial axis of size n with stride s (in elements) the window starting at output
    index i begins s·i elements in, so the view's strides are (*leading, s·stride, stride) per
    axis; out = ⌊(n − k) / s⌋ + 1. Nothing is copied: this is day 2's ``sliding_windows`` for
    several axes and any leading batch/channel axes.
    """
    d = len(kernel)
    spatial = x.shape[-d:]
    if any(k > n for k, n in zip(kernel, spatial)):
        raise ValueError(f"kernel {kernel} does not fit the (padded) input's spatial shape {tuple(spatial)}")
    out = [(n - k) // s + 1 for n, k, s in zip(spatial, kernel, stride)]
    steps = x.stride()[-d:]
    return x.as_strided(
        size=(*x.shape[:-d], *out, *kernel),
        stride=(*x.stride()[:-d], *(s * step for s, step in zip(stride, steps)), *steps),
        storage_offset=x.storage_offset(),
    )


# ---------------------------------------------------------------- the functional ops


def conv1d(x: Float[Tensor, "b c w"], weights: Float[Tensor, "o c k"], stride: int = 1,
           padding: int = 0) -> Float[Tensor, "b o w_out"]:
    """out[b, o, i] = Σ_{c, p} x_pad[b, c, s·i + p] · w[o, c, p]; like F.conv1d without bias."""
    if x.shape[1] != weights.shape[1]:
        raise ValueError(f"input has {x.shape[1]} channels, the kernel expects {weights.shape[1]}")
    x_win = windows(pad1d(x, padding, padding), (weights.shape[-1],), (stride,))
    return torch.einsum("bciq,ocq->boi", x_win, weights)


def conv2d(x: Float[Tensor, "b c h w"], weights: Float[Tensor, "o c kh kw"], stride: IntOrPair = 1,
           padding: IntOrPair = 0) -> Float[Tensor, "b o h_out w_out"]:
    """out[b, o, i, j] = Σ_{c, p, q} x_pad[b, c, s_h·i + p, s_w·j + q] · w[o, c, p, q]; like F.conv2d without bias.

    Autograd differentiates through the einsum and the as_strided view; ``conv2d_input_gradient``
    derives the input's gradient by hand.
    """
    if x.shape[1] != weights.shape[1]:
        raise ValueError(f"input has {x.shape[1]} channels, the kernel expects {weights.shape[1]}")
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    x_win = windows(pad2d(x, pw, pw, ph, ph), tuple(weights.shape[-2:]), (sh, sw))
    return torch.einsum("bcijpq,ocpq->boij", x_win, weights)


def dilate2d(x: Float[Tensor, "... h w"], stride: IntOrPair) -> Float[Tensor, "... h_dilated w_dilated"]:
    """Insert s − 1 zeros between neighbouring pixels: out[..., s_h·i, s_w·j] = x[..., i, j], zero elsewhere."""
    sh, sw = pair(stride)
    h, w = x.shape[-2:]
    out = x.new_zeros((*x.shape[:-2], (h - 1) * sh + 1, (w - 1) * sw + 1))
    out[..., ::sh, ::sw] = x
    return out


def conv2d_input_gradient(grad_out: Float[Tensor, "b o h_out w_out"], weights: Float[Tensor, "o c kh kw"],
                          input_hw: tuple[int, int], stride: IntOrPair = 1,
                          padding: IntOrPair = 0) -> Float[Tensor, "b c h w"]:
    """∂L/∂x of y = conv2d(x, w, stride, padding), given g = ∂L/∂y:

        ∂L/∂x_pad[b, c, u, v] = Σ_{o, p, q} g_dil[b, o, u − p, v − q] · w[o, c, p, q],

    where g_dil is g with s − 1 zeros between entries (``dilate2d``). That is a *full*
    cross-correlation: pad g_dil by K − 1 on each side (plus the (H + 2P − K) mod s rows the
    forward's stride skipped, which get zero gradient) and correlate with the kernel flipped in
    both spatial axes, in- and out-channels swapped. Cropping the padding P gives ∂L/∂x.
    (Day 14's transposed convolution is this same operation.) Autograd computes the same thing
    by scattering the windows' gradients back through the view; the gate checks both against
    torch.nn.grad.conv2d_input.
    """
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    kh, kw = weights.shape[-2:]
    g = dilate2d(grad_out, (sh, sw))
    extra_h = input_hw[0] + 2 * ph - (g.shape[-2] + kh - 1)
    extra_w = input_hw[1] + 2 * pw - (g.shape[-1] + kw - 1)
    g = pad2d(g, kw - 1, kw - 1 + extra_w, kh - 1, kh - 1 + extra_h)
    grad_padded = conv2d(g, weights.flip(-2, -1).transpose(0, 1))
    return grad_padded[..., ph: ph + input_hw[0], pw: pw + input_hw[1]]


def maxpool2d(x: Float[Tensor, "b c h w"], kernel_size: IntOrPair, stride: IntOrPair | None = None,
              padding: IntOrPair = 0) -> Float[Tensor, "b c h_out w_out"]:
    """out[b, c, i, j] = max_{p, q} x_pad[b, c, s_h·i + p, s_w·j + q], padding with −∞ (F.max_pool2d).

    The stride defaults to the kernel size (non-overlapping windows), as in torch. One difference
    in the backward pass: where a window holds several equal maxima, ``amax`` splits the gradient
    evenly between them, while torch sends all of it to the first one (the values agree).
    """
    kernel = pair(kernel_size)
    (sh, sw), (ph, pw) = pair(stride if stride is not None else kernel), pair(padding)
    x_win = windows(pad2d(x, pw, pw, ph, ph, pad_value=-math.inf), kernel, (sh, sw))
    return x_win.amax(dim=(-2, -1))


# ---------------------------------------------------------------- modules


class ReLU(nn.Module):
    """max(x, 0), elementwise; its derivative is [x > 0] (0 at x = 0, as torch.relu's)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, x, 0.0)


class Linear(nn.Module):
    """y = x Wᵀ + b with W of shape (out, in), initialised like torch: W, b ~ U(−1/√in, 1/√in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(bound * (2 * torch.rand(out_features, in_features) - 1))
        self.bias = nn.Parameter(bound * (2 * torch.rand(out_features) - 1)) if bias else None

    def forward(self, x: Float[Tensor, "... in"]) -> Float[Tensor, "... out"]:
        y = torch.einsum("...i,oi->...o", x, self.weight)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(nn.Module):
    """Merge axes start_dim … end_dim into one (by default everything but the batch axis)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        start = self.start_dim % x.dim()
        end = self.end_dim % x.dim()
        return x.reshape(*x.shape[:start], math.prod(x.shape[start: end + 1]), *x.shape[end + 1:])


class Conv2d(nn.Module):
    """2-D convolution layer over ``conv2d``; W ~ U(−1/√fan_in, 1/√fan_in), fan_in = c·kh·kw (torch's default)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair, stride: IntOrPair = 1,
                 padding: IntOrPair = 0, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = pair(kernel_size), pair(stride), pair(padding)
        fan_in = in_channels * math.prod(self.kernel_size)
        bound = 1 / math.sqrt(fan_in)
        self.weight = nn.Parameter(bound * (2 * torch.rand(out_channels, in_channels, *self.kernel_size) - 1))
        self.bias = nn.Parameter(bound * (2 * torch.rand(out_channels) - 1)) if bias else None

    def forward(self, x: Float[Tensor, "b c h w"]) -> Float[Tensor, "b o h_out w_out"]:
        y = conv2d(x, self.weight, self.stride, self.padding)
        return y if self.bias is None else y + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class MaxPool2d(nn.Module):
    """Max pooling layer over ``maxpool2d``."""

    def __init__(self, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return maxpool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class BatchNorm2d(nn.Module):
    """Batch normalisation over (b, h, w) for each channel c, with running statistics.

    Training:  y = (x − μ_B) / √(σ²_B + ε) · γ + β, with μ_B, σ²_B the batch mean and the
               *biased* batch variance; then running_mean ← (1 − m)·running_mean + m·μ_B and
               running_var ← (1 − m)·running_var + m·σ²_B·n/(n − 1) (the *unbiased* variance,
               n = b·h·w), and num_batches_tracked += 1. With momentum None, m = 1/num_batches_tracked
               (a cumulative average), as in torch.
    Evaluation: the running statistics replace μ_B and σ²_B, so each example is normalised alone.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Float[Tensor, "b c h w"]) -> Float[Tensor, "b c h w"]:
        if self.training:
            mean = x.mean(dim=(0, 2, 3))
            var = x.var(dim=(0, 2, 3), unbiased=False)
            n = x.numel() // x.shape[1]
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * n / (n - 1))
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.weight / torch.sqrt(var + self.eps)
        return (x - mean[:, None, None]) * scale[:, None, None] + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class Sequential(nn.Module):
    """Apply modules in order. Children are named "0", "1", … like nn.Sequential's, so state_dicts match."""

    def __init__(self, *modules: nn.Module):
        super().__init__()
        for index, module in enumerate(modules):
            self.add_module(str(index), module)

    def __getitem__(self, index: int) -> nn.Module:
        return self._modules[str(index % len(self))]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self._modules.values())

    def forward(self, x: Tensor) -> Tensor:
        for module in self:
            x = module(x)
        return x


# ---------------------------------------------------------------- the experiment

SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])

BENCH_LAYERS = [  # (in channels, out channels, input side): MNIST's and CIFAR ResNet-like shapes
    (1, 32, 28), (32, 64, 14), (64, 64, 16), (128, 128, 8),
]


def image_filters(image: Float[Tensor, "h w"]) -> dict[str, Tensor]:
    """Hand-made kernels through our conv2d/maxpool2d: Sobel edges, their magnitude, a strided blur, a max pool."""
    x = image[None, None]
    edges = conv2d(x, torch.stack([SOBEL_X, SOBEL_X.T])[:, None].to(x.dtype), padding=1)[0]
    blur = conv2d(x, torch.full((1, 1, 5, 5), 1 / 25, dtype=x.dtype), stride=4, padding=2)[0, 0]
    return {"sobel_x": edges[0], "sobel_y": edges[1], "magnitude": edges.norm(dim=0),
            "blur_stride_4": blur, "maxpool_8": maxpool2d(x, 8)[0, 0]}


def benchmark_conv(batch: int = 64, repeats: int = 5, seed: int = 0) -> list[dict]:
    """Seconds for one forward + backward pass (3×3 kernels, padding 1), best of ``repeats``: ours and F.conv2d."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for c, o, side in BENCH_LAYERS:
        x = torch.randn(batch, c, side, side, generator=gen).requires_grad_()
        w = torch.randn(o, c, 3, 3, generator=gen).requires_grad_()
        row = {"in_channels": c, "out_channels": o, "side": side, "batch": batch}
        for name, fn in [("ours", conv2d), ("torch", torch.nn.functional.conv2d)]:
            def step():
                fn(x, w, stride=1, padding=1).sum().backward()
            step()  # warm-up
            row[name] = best_time(step, repeats)
        row["ratio"] = row["ours"] / row["torch"]
        rows.append(row)
    return rows


def run_experiment(out_dir: Path) -> dict:
    """Two figures: hand-made kernels on a photograph, and the cost of our conv against torch's."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)

    photo = import_module("days.002.linalg").grayscale_image()
    filtered = image_filters(photo)
    fig, axes = plt.subplots(2, 3, figsize=(10.5, 5.4))
    panels = [("photograph", photo, "gray")] + [
        ("Sobel x (vertical edges)", filtered["sobel_x"], "RdBu_r"),
        ("Sobel y (horizontal edges)", filtered["sobel_y"], "RdBu_r"),
        ("edge magnitude", filtered["magnitude"], "gray_r"),
        ("5×5 mean, stride 4", filtered["blur_stride_4"], "gray"),
        ("max pool 8×8", filtered["maxpool_8"], "gray")]
    for ax, (title, img, cmap) in zip(axes.flat, panels):
        if cmap == "RdBu_r":
            lim = img.abs().max().item()
            ax.imshow(img.numpy(), cmap=cmap, vmin=-lim, vmax=lim)
        else:
            ax.imshow(img.numpy(), cmap=cmap)
        ax.set_title(f"{title}\n{tuple(img.shape)}", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out_dir / "figures/filters.png", dpi=110)
    plt.close(fig)

    bench = benchmark_conv()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    labels = [f"{r['in_channels']}→{r['out_channels']}\n{r['side']}×{r['side']}" for r in bench]
    xs = torch.arange(len(bench)).float()
    ax.bar(xs - 0.2, [1e3 * r["ours"] for r in bench], 0.4, label="ours: as_strided view + einsum")
    ax.bar(xs + 0.2, [1e3 * r["torch"] for r in bench], 0.4, label="torch.nn.functional.conv2d")
    for x, r in zip(xs, bench):
        ax.text(x - 0.2, 1e3 * r["ours"], f"{r['ratio']:.1f}×", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(xs, labels)
    ax.set_ylabel("ms per forward + backward (best of 5)")
    ax.set_title(f"3×3 convolution, batch {bench[0]['batch']}, {torch.get_num_threads()} CPU thread(s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "figures/conv_benchmark.png", dpi=120)
    plt.close(fig)

    results = {
        "photo_shape": list(photo.shape),
        "filtered_shapes": {k: list(v.shape) for k, v in filtered.items()},
        "benchmark": bench,
        "ratio_range": [min(r["ratio"] for r in bench), max(r["ratio"] for r in bench)],
        "torch_threads": torch.get_num_threads(),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
