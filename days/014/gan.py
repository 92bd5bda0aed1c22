"""Day 14: GANs, a DCGAN (ARENA 0.5 VAEs & GANs, "GANs").

A GAN trains a generator G: z ↦ image against a discriminator D: image ↦ P(real) in the
two-player game

    min_G max_D  V(D, G) = E_x[log D(x)] + E_z[log(1 − D(G(z)))],

alternating one gradient step for D (ascend V) and one for G. For G the "non-saturating" loss
−E_z[log D(G(z))] is used, as in Goodfellow et al.: it has the same fixed point but strong
gradients early on, when D rejects every sample.

DCGAN (Radford et al., 2016) fixes the architecture: strided convolutions in D, *transposed*
strided convolutions in G, BatchNorm in both (not on D's input or G's output), ReLU in G with a
tanh output, LeakyReLU(0.2) in D, weights initialised from N(0, 0.02) (BatchNorm scales from
N(1, 0.02)), Adam with learning rate 2e-4 and β₁ = 0.5.

The transposed convolution is written from its definition (each input pixel scatters a weighted
kernel) and checked to be the gradient of day 6's convolution with respect to its input.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from importlib import import_module
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from checks.timing import best_time

L = import_module("days.006.conv")
mnist = import_module("days.007.mnist")
vae = import_module("days.013.vae")
tensors = import_module("days.001.tensors")


# ---------------------------------------------------------------- the transposed convolution


def conv_transpose2d(x: Float[Tensor, "b c_in h w"], weights: Float[Tensor, "c_in c_out kh kw"],
                     stride: L.IntOrPair = 1, padding: L.IntOrPair = 0) -> Float[Tensor, "b c_out h_out w_out"]:
    """The transposed convolution: every input pixel scatters a weighted copy of the kernel,

        y[b, o, s·i + p − P, s·j + q − P] += Σ_c x[b, c, i, j] · w[c, o, p, q],

    so the output is H_out = (H − 1)·s − 2P + K wide (F.conv_transpose2d, torch's weight layout
    (c_in, c_out, kh, kw)). Computed as written: one einsum gives every pixel's weighted kernel,
    then K_h·K_w strided slice-additions place kernel entry (p, q) of all pixels at once, and the
    border P is cropped. (``as_fractionally_strided_convolution`` computes the same thing as a
    convolution of the dilated input.)
    """
    (sh, sw), (ph, pw) = L.pair(stride), L.pair(padding)
    kh, kw = weights.shape[-2:]
    h, w = x.shape[-2:]
    out_hw = ((h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw)
    if min(out_hw) < 1:
        raise ValueError(f"padding {padding} leaves no output for a {tuple(x.shape[-2:])} input")
    pieces = torch.einsum("bcij,copq->bopqij", x, weights)
    full = x.new_zeros((x.shape[0], weights.shape[1], (h - 1) * sh + kh, (w - 1) * sw + kw))
    for p in range(kh):
        for q in range(kw):
            full[:, :, p: p + (h - 1) * sh + 1: sh, q: q + (w - 1) * sw + 1: sw] += pieces[:, :, p, q]
    return full[:, :, ph: ph + out_hw[0], pw: pw + out_hw[1]]


def as_fractionally_strided_convolution(x: Float[Tensor, "b c_in h w"], weights: Float[Tensor, "c_in c_out kh kw"],
                                        stride: L.IntOrPair = 1, padding: L.IntOrPair = 0
                                        ) -> Float[Tensor, "b c_out h_out w_out"]:
    """The same transposed convolution as the input gradient of a convolution whose kernel is w
    read as (out = c_in, in = c_out): day 6's ``conv2d_input_gradient`` dilates x by s, pads it by
    K − 1 − P and correlates with the flipped kernel (ARENA's "fractionally strided" convolution).
    Slower than the scatter form (it convolves mostly zeros), kept as the identity to check.
    """
    (sh, sw), (ph, pw) = L.pair(stride), L.pair(padding)
    kh, kw = weights.shape[-2:]
    out_hw = ((x.shape[-2] - 1) * sh - 2 * ph + kh, (x.shape[-1] - 1) * sw - 2 * pw + kw)
    return L.conv2d_input_gradient(x, weights, out_hw, (sh, sw), (ph, pw))


class ConvTranspose2d(nn.Module):
    """Transposed-convolution layer; weight (c_in, c_out, kh, kw) ~ U(±1/√(c_out·kh·kw)) like torch's."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: L.IntOrPair, stride: L.IntOrPair = 1,
                 padding: L.IntOrPair = 0, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = L.pair(kernel_size), L.pair(stride), L.pair(padding)
        bound = 1 / math.sqrt(out_channels * math.prod(self.kernel_size))
        self.weight = nn.Parameter(bound * (2 * torch.rand(in_channels, out_channels, *self.kernel_size) - 1))
        self.bias = nn.Parameter(bound * (2 * torch.rand(out_channels) - 1)) if bias else None

    def forward(self, x: Float[Tensor, "b c_in h w"]) -> Float[Tensor, "b c_out h_out w_out"]:
        y = conv_transpose2d(x, self.weight, self.stride, self.padding)
        return y if self.bias is None else y + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class Sigmoid(nn.Module):
    """σ(x) = 1 / (1 + e^−x), computed so that no exponent is ever positive: for x ≥ 0 as written,
    for x < 0 as e^x / (1 + e^x) (the same number, multiplied through by e^x). The naive formula
    overflows e^−x for very negative x; its value still comes out as 0, but its gradient is
    inf/inf = NaN. Each branch sees only its own half of the inputs (the other half is replaced by
    0), so neither the values nor autograd's gradient σ(1 − σ) meet an inf."""

    def forward(self, x: Tensor) -> Tensor:
        positive = x >= 0
        x_pos = torch.where(positive, x, 0.0)
        x_neg = torch.where(positive, 0.0, x)
        e = torch.exp(x_neg)
        return torch.where(positive, 1 / (1 + torch.exp(-x_pos)), e / (1 + e))


class Tanh(nn.Module):
    """tanh(x) = (e^x − e^−x) / (e^x + e^−x) = 2σ(2x) − 1, written with the stable sigmoid."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * torch.sigmoid(2 * x) - 1


class LeakyReLU(nn.Module):
    """x for x > 0, slope·x otherwise."""

    def __init__(self, negative_slope: float = 0.2):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, x, self.negative_slope * x)


# ---------------------------------------------------------------- DCGAN


class Generator(L.Sequential):
    """z (latent) → linear → c0×7×7 → BN, ReLU → convT 4×4/2 → c1×14×14 → BN, ReLU → convT 4×4/2 → 1×28×28 → tanh.

    Each stride-2 transposed conv with K = 4, P = 1 doubles the side: (H − 1)·2 − 2 + 4 = 2H.
    """

    def __init__(self, latent: int = 64, channels: tuple[int, int] = (64, 32)):
        c0, c1 = channels
        self.latent = latent
        super().__init__(
            L.Linear(latent, c0 * 7 * 7, bias=False), vae.Unflatten(c0, 7, 7), L.BatchNorm2d(c0), L.ReLU(),
            ConvTranspose2d(c0, c1, 4, stride=2, padding=1, bias=False), L.BatchNorm2d(c1), L.ReLU(),
            ConvTranspose2d(c1, 1, 4, stride=2, padding=1, bias=False), Tanh())


class Discriminator(L.Sequential):
    """x (1×28×28) → conv 4×4/2 → c1×14×14 → LeakyReLU → conv 4×4/2 → c0×7×7 → BN, LeakyReLU → linear → one logit.

    No BatchNorm on the input layer, as in DCGAN; the sigmoid lives in the loss.
    """

    def __init__(self, channels: tuple[int, int] = (64, 32)):
        c0, c1 = channels
        super().__init__(
            L.Conv2d(1, c1, 4, stride=2, padding=1, bias=False), LeakyReLU(0.2),
            L.Conv2d(c1, c0, 4, stride=2, padding=1, bias=False), L.BatchNorm2d(c0), LeakyReLU(0.2),
            L.Flatten(), L.Linear(c0 * 7 * 7, 1))


class DCGAN(nn.Module):
    """The generator and the discriminator, initialised as in the DCGAN paper."""

    def __init__(self, latent: int = 64, channels: tuple[int, int] = (64, 32)):
        super().__init__()
        self.latent = latent
        self.netG = Generator(latent, channels)
        self.netD = Discriminator(channels)
        initialise_weights(self)


def initialise_weights(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """DCGAN's initialisation: conv, transposed-conv and linear weights ~ N(0, 0.02); BatchNorm
    scales γ ~ N(1, 0.02) and shifts β = 0. Other parameters (linear biases) are left as they are."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (L.Conv2d, ConvTranspose2d, L.Linear)):
                module.weight.copy_(0.02 * torch.randn(module.weight.shape, generator=generator))
            elif isinstance(module, L.BatchNorm2d):
                module.weight.copy_(1 + 0.02 * torch.randn(module.weight.shape, generator=generator))
                module.bias.zero_()


# ---------------------------------------------------------------- the game


def discriminator_loss(real_logits: Float[Tensor, "b 1"], fake_logits: Float[Tensor, "b 1"]) -> Float[Tensor, ""]:
    """−(E[log D(x)] + E[log(1 − D(G(z)))]) with D = σ(logit): the binary cross-entropy with
    label 1 for real and 0 for fake, from logits (log σ(ℓ) = −softplus(−ℓ), log(1 − σ(ℓ)) = −softplus(ℓ))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: Float[Tensor, "b 1"]) -> Float[Tensor, ""]:
    """The non-saturating generator loss −E[log D(G(z))] = E[softplus(−ℓ)]."""
    return F.softplus(-fake_logits).mean()


@dataclass
class StepStats:
    d_loss: float
    g_loss: float
    d_real: float   # mean D(x) on the real batch, before D's step
    d_fake: float   # mean D(G(z)) on the fake batch, before D's step


def training_step(gan: DCGAN, real: Float[Tensor, "b 1 28 28"], opt_d: torch.optim.Optimizer,
                  opt_g: torch.optim.Optimizer, generator: torch.Generator | None = None) -> StepStats:
    """One round of the game: a step of D on a real batch and a fake batch (G's output detached,
    so only D moves), then a step of G on the same fakes scored by the updated D (only G moves)."""
    z = torch.randn(len(real), gan.latent, generator=generator)
    fake = gan.netG(z)
    real_logits, fake_logits = gan.netD(real), gan.netD(fake.detach())
    d_loss = discriminator_loss(real_logits, fake_logits)
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    g_loss = generator_loss(gan.netD(fake))
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
    return StepStats(d_loss.item(), g_loss.item(), torch.sigmoid(real_logits).mean().item(),
                     torch.sigmoid(fake_logits).mean().item())


def make_optimisers(gan: DCGAN, lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999)):
    """Adam for each player with DCGAN's hyperparameters."""
    return (torch.optim.Adam(gan.netD.parameters(), lr=lr, betas=betas),
            torch.optim.Adam(gan.netG.parameters(), lr=lr, betas=betas))


def to_tanh_range(images: Float[Tensor, "b 1 28 28"]) -> Float[Tensor, "b 1 28 28"]:
    """[0, 1] pixels → [−1, 1], the range of the generator's tanh."""
    return 2 * images - 1


@dataclass
class GANHistory:
    d_loss: list[float] = field(default_factory=list)
    g_loss: list[float] = field(default_factory=list)
    d_real: list[float] = field(default_factory=list)
    d_fake: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_gan(gan: DCGAN, images: Tensor, epochs: int, batch_size: int, seed: int = 0,
              snapshots: dict[int, Tensor] | None = None, fixed_z: Tensor | None = None) -> GANHistory:
    """Alternate D and G steps over shuffled batches of ``images`` (in [−1, 1]). If ``snapshots``
    is a dict, G(fixed_z) is stored in it (eval mode) after the steps listed in its keys."""
    gen = torch.Generator().manual_seed(seed)
    opt_d, opt_g = make_optimisers(gan)
    history = GANHistory()
    start = time.perf_counter()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        for first in range(0, len(images) - batch_size + 1, batch_size):  # full batches only (BatchNorm)
            stats = training_step(gan, images[order[first: first + batch_size]], opt_d, opt_g, gen)
            for name in ("d_loss", "g_loss", "d_real", "d_fake"):
                getattr(history, name).append(getattr(stats, name))
            step += 1
            if snapshots is not None and step in snapshots:
                snapshots[step] = sample(gan, fixed_z)
    history.seconds = time.perf_counter() - start
    return history


@torch.no_grad()
def sample(gan: DCGAN, z: Tensor) -> Float[Tensor, "n 1 28 28"]:
    """G(z) in eval mode (BatchNorm's running statistics), mapped back to [0, 1]."""
    was_training = gan.netG.training
    gan.netG.eval()
    images = (gan.netG(z) + 1) / 2
    gan.netG.train(was_training)
    return images


# ---------------------------------------------------------------- the experiment


def benchmark_transpose(batch: int = 64, channels: tuple[int, int] = (64, 32), repeats: int = 5) -> list[dict]:
    """Seconds for forward + backward of the generator's two transposed convolutions (K = 4,
    s = 2, P = 1): the scatter form against the fractionally strided form (best of ``repeats``)."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for c_in, c_out, side in [(channels[0], channels[1], 7), (channels[1], 1, 14)]:
        x = torch.randn(batch, c_in, side, side, generator=gen).requires_grad_()
        w = torch.randn(c_in, c_out, 4, 4, generator=gen).requires_grad_()
        row = {"in_channels": c_in, "out_channels": c_out, "side": side}
        for name, fn in [("scatter", conv_transpose2d), ("fractionally_strided", as_fractionally_strided_convolution)]:
            def step():
                fn(x, w, 2, 1).sum().backward()
            step()  # warm-up
            row[name] = best_time(step, repeats)
        row["ratio"] = row["fractionally_strided"] / row["scatter"]
        rows.append(row)
    return rows


EXPERIMENT = {"latent": 64, "channels": (64, 32), "epochs": 1, "batch_size": 64, "n_train": 60_000, "seed": 0}


def run_experiment(out_dir: Path) -> dict:
    """Train the DCGAN on MNIST; figures: losses and D's outputs, and a grid of samples during training."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    cfg = EXPERIMENT
    images, _ = mnist.load_mnist("train", limit=cfg["n_train"])
    torch.manual_seed(cfg["seed"])
    gan = DCGAN(cfg["latent"], cfg["channels"])
    fixed_z = torch.randn(64, cfg["latent"], generator=torch.Generator().manual_seed(123))
    steps_per_epoch = cfg["n_train"] // cfg["batch_size"]
    total = cfg["epochs"] * steps_per_epoch
    checkpoints = sorted({50, 200, total // 2, total})
    snapshots = {s: None for s in checkpoints}
    history = train_gan(gan, to_tanh_range(images), cfg["epochs"], cfg["batch_size"], cfg["seed"], snapshots, fixed_z)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    window = 25
    for key, label in [("d_loss", "D loss −[log D(x) + log(1 − D(G(z)))]"), ("g_loss", "G loss −log D(G(z))")]:
        values = torch.tensor(getattr(history, key))
        ax1.plot(range(window, len(values) + 1), values.unfold(0, window, 1).mean(1), label=label)
    ax1.axhline(2 * math.log(2), color="grey", ls=":", lw=1, label="2 ln 2 and ln 2: D = ½ everywhere")
    ax1.axhline(math.log(2), color="grey", ls=":", lw=1)
    ax1.set_xlabel("step (batch of 64)")
    ax1.set_ylabel(f"loss (running mean of {window})")
    ax1.legend(fontsize=8)
    for key, label in [("d_real", "D(x), real batch"), ("d_fake", "D(G(z)), fake batch")]:
        values = torch.tensor(getattr(history, key))
        ax2.plot(range(window, len(values) + 1), values.unfold(0, window, 1).mean(1), label=label)
    ax2.axhline(0.5, color="grey", ls=":", lw=1)
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("step (batch of 64)")
    ax2.set_ylabel("mean probability of 'real'")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/training.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(checkpoints), figsize=(3.2 * len(checkpoints), 3.5))
    for ax, step in zip(axes, checkpoints):
        grid = tensors.rearrange(snapshots[step][:36, 0], "(r c) h w -> (r h) (c w)", r=6)
        ax.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"after {step} steps", fontsize=10)
        ax.set_axis_off()
    fig.suptitle("Samples G(z) for the same 36 latent vectors z during training")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/samples_during_training.png", dpi=110)
    plt.close(fig)

    final = snapshots[total]
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(tensors.rearrange(final[:, 0], "(r c) h w -> (r h) (c w)", r=8).numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(f"64 samples after {total} steps")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/samples.png", dpi=110)
    plt.close(fig)

    last = slice(-steps_per_epoch // 4, None)
    results = {
        "config": cfg,
        "n_parameters_g": sum(p.numel() for p in gan.netG.parameters()),
        "n_parameters_d": sum(p.numel() for p in gan.netD.parameters()),
        "steps": len(history.d_loss),
        "checkpoints": checkpoints,
        "train_seconds": history.seconds,
        "seconds_per_step": history.seconds / len(history.d_loss),
        "final_quarter_epoch": {key: sum(getattr(history, key)[last]) / len(getattr(history, key)[last])
                                for key in ("d_loss", "g_loss", "d_real", "d_fake")},
        "transpose_benchmark": benchmark_transpose(cfg["batch_size"], cfg["channels"]),
        "sample_mean_pixel": final.mean().item(),
        "data_mean_pixel": images.mean().item(),
        "history": asdict(history),
        "torch_threads": torch.get_num_threads(),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
