"""Day 13: variational autoencoders, theory and ELBO training (ARENA 0.5 VAEs & GANs).

A VAE is a latent-variable model p(z) p_θ(x | z) with prior p(z) = N(0, I) and a decoder that
outputs, here, one Bernoulli logit per pixel. The encoder q_φ(z | x) = N(μ_φ(x), diag σ²_φ(x))
approximates the posterior, and both are trained by maximising the evidence lower bound

    log p_θ(x) ≥ ELBO(x) = E_{z~q}[log p_θ(x | z)] − KL(q_φ(z | x) ‖ p(z)),

with equality exactly when q is the true posterior (the gap is KL(q ‖ p_θ(z | x))). The KL term
between Gaussians has a closed form; the reconstruction term is estimated with one sample
z = μ + σ·ε, ε ~ N(0, I) (the reparameterisation trick), which makes the estimate differentiable
in μ and σ.

Before the VAE, ARENA's plain ``Autoencoder``: a deterministic code z = enc(x), trained on the
mean squared error of dec(z) against x (``reconstruction_loss``, ``train_autoencoder``).

Layers are day 6's; the decoder upsamples by repeating pixels (day 1's ``repeat``) and then
convolves, instead of ARENA's transposed convolutions (day 14 builds those).
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

L = import_module("days.006.conv")
mnist = import_module("days.007.mnist")
tensors = import_module("days.001.tensors")


# ---------------------------------------------------------------- the probabilistic pieces


def reparameterise(mu: Float[Tensor, "b d"], logvar: Float[Tensor, "b d"],
                   generator: torch.Generator | None = None) -> Float[Tensor, "b d"]:
    """z = μ + σ·ε with σ = exp(logvar / 2), ε ~ N(0, I): a sample of N(μ, diag σ²) that is a
    differentiable function of (μ, logvar), with ∂z/∂μ = 1 and ∂z/∂logvar = σ·ε / 2."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def kl_diagonal_gaussians(mu_q: Float[Tensor, "... d"], logvar_q: Float[Tensor, "... d"],
                          mu_p: Float[Tensor, "... d"] | float = 0.0,
                          logvar_p: Float[Tensor, "... d"] | float = 0.0) -> Float[Tensor, "..."]:
    """KL(N(μ_q, diag σ²_q) ‖ N(μ_p, diag σ²_p)), summed over the last axis:

        ½ Σ_d [ log σ²_p − log σ²_q + (σ²_q + (μ_q − μ_p)²) / σ²_p − 1 ].

    With the standard normal prior (μ_p = 0, σ_p = 1): ½ Σ (μ² + σ² − 1 − log σ²).
    """
    mu_p = torch.as_tensor(mu_p, dtype=mu_q.dtype)
    logvar_p = torch.as_tensor(logvar_p, dtype=mu_q.dtype)
    terms = logvar_p - logvar_q + (torch.exp(logvar_q) + (mu_q - mu_p) ** 2) * torch.exp(-logvar_p) - 1
    return 0.5 * terms.sum(-1)


def bernoulli_log_likelihood(logits: Float[Tensor, "b ..."], x: Float[Tensor, "b ..."]) -> Float[Tensor, "b"]:
    """log p(x | logits) = Σ_pixels [x·ℓ − log(1 + e^ℓ)] (x·log σ(ℓ) + (1 − x)·log(1 − σ(ℓ))),
    summed over all axes but the first. For grey x ∈ [0, 1] it is the negative binary
    cross-entropy, the usual MNIST likelihood (a continuous relaxation of the Bernoulli)."""
    return (x * logits - F.softplus(logits)).flatten(1).sum(1)


def elbo(x: Float[Tensor, "b ..."], logits: Float[Tensor, "b ..."], mu: Float[Tensor, "b d"],
         logvar: Float[Tensor, "b d"]) -> tuple[Float[Tensor, "b"], Float[Tensor, "b"], Float[Tensor, "b"]]:
    """Per-example (ELBO, reconstruction term, KL term): ELBO = log p(x | z) − KL(q(z|x) ‖ N(0, I)),
    with z the single reparameterised sample the logits were decoded from."""
    reconstruction = bernoulli_log_likelihood(logits, x)
    kl = kl_diagonal_gaussians(mu, logvar)
    return reconstruction - kl, reconstruction, kl


# ---------------------------------------------------------------- the networks


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling: each pixel becomes a 2×2 block, day 1's
    repeat(x, "b c h w -> b c (h 2) (w 2)")."""

    def forward(self, x: Float[Tensor, "b c h w"]) -> Float[Tensor, "b c h2 w2"]:
        return tensors.repeat(x, "b c h w -> b c (h h2) (w w2)", h2=2, w2=2)


class Unflatten(nn.Module):
    """(b, c·h·w) → (b, c, h, w)."""

    def __init__(self, c: int, h: int, w: int):
        super().__init__()
        self.shape = (c, h, w)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)


class Encoder(nn.Module):
    """x (1×28×28) → conv 4×4/2 → 14×14 → conv 4×4/2 → 7×7 → MLP → (μ, log σ²) in R^latent each."""

    def __init__(self, latent: int = 2, channels: tuple[int, int] = (16, 32), hidden: int = 128):
        super().__init__()
        c1, c2 = channels
        self.net = L.Sequential(
            L.Conv2d(1, c1, 4, stride=2, padding=1), L.ReLU(),
            L.Conv2d(c1, c2, 4, stride=2, padding=1), L.ReLU(),
            L.Flatten(), L.Linear(c2 * 7 * 7, hidden), L.ReLU(), L.Linear(hidden, 2 * latent))

    def forward(self, x: Float[Tensor, "b 1 28 28"]) -> tuple[Float[Tensor, "b d"], Float[Tensor, "b d"]]:
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return mu, logvar


class Decoder(nn.Module):
    """z → MLP → c2×7×7 → upsample, conv 3×3 → c1×14×14 → upsample, conv 3×3 → 1×28×28 Bernoulli logits."""

    def __init__(self, latent: int = 2, channels: tuple[int, int] = (16, 32), hidden: int = 128):
        super().__init__()
        c1, c2 = channels
        self.net = L.Sequential(
            L.Linear(latent, hidden), L.ReLU(), L.Linear(hidden, c2 * 7 * 7), L.ReLU(), Unflatten(c2, 7, 7),
            Upsample(), L.Conv2d(c2, c1, 3, padding=1), L.ReLU(),
            Upsample(), L.Conv2d(c1, 1, 3, padding=1))

    def forward(self, z: Float[Tensor, "b d"]) -> Float[Tensor, "b 1 28 28"]:
        return self.net(z)


class Autoencoder(nn.Module):
    """ARENA's plain autoencoder, the step before the VAE: the encoder maps an image to one point
    z ∈ R^latent (not a distribution), the decoder maps z back to an image, and training
    minimises the mean squared error between the two (``reconstruction_loss``).

    Encoder: conv 4×4/2 (28 → 14) → ReLU → conv 4×4/2 (14 → 7) → ReLU → flatten → linear to
    ``hidden_dim_size`` → ReLU → linear to ``latent_dim_size``. Decoder: the VAE's ``Decoder``
    (upsample + conv where ARENA uses transposed convolutions), read as pixel values, not logits.
    """

    def __init__(self, latent_dim_size: int = 5, hidden_dim_size: int = 128, channels: tuple[int, int] = (16, 32)):
        super().__init__()
        c1, c2 = channels
        self.latent_dim_size, self.hidden_dim_size = latent_dim_size, hidden_dim_size
        self.encoder = L.Sequential(
            L.Conv2d(1, c1, 4, stride=2, padding=1), L.ReLU(),
            L.Conv2d(c1, c2, 4, stride=2, padding=1), L.ReLU(),
            L.Flatten(), L.Linear(c2 * 7 * 7, hidden_dim_size), L.ReLU(), L.Linear(hidden_dim_size, latent_dim_size))
        self.decoder = Decoder(latent_dim_size, channels, hidden_dim_size)

    def forward(self, x: Float[Tensor, "b 1 28 28"]) -> Float[Tensor, "b 1 28 28"]:
        return self.decoder(self.encoder(x))


def reconstruction_loss(x_hat: Float[Tensor, "b ..."], x: Float[Tensor, "b ..."]) -> Float[Tensor, ""]:
    """The autoencoder's loss: the mean over the batch and every pixel of (x̂ − x)²."""
    return (x_hat - x).square().mean()


def train_autoencoder(model: Autoencoder, images: Tensor, config, max_steps: int | None = None) -> list[float]:
    """Adam on ``reconstruction_loss`` over shuffled mini-batches (``config`` is day 7's
    TrainConfig; ``max_steps`` stops early). Returns the loss of every step."""
    gen = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    losses: list[float] = []
    for _ in range(config.epochs):
        order = torch.randperm(len(images), generator=gen)
        for first in range(0, len(images), config.batch_size):
            if max_steps is not None and len(losses) == max_steps:
                return losses
            x = images[order[first: first + config.batch_size]]
            loss = reconstruction_loss(model(x), x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


def he_initialise(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """He et al. (2015): every conv and linear weight ~ N(0, 2 / fan_in), biases 0.

    With ReLUs, this keeps the activations' second moment constant from layer to layer. torch's
    default, U(±1/√fan_in), instead multiplies it by about 1/6 per layer (variance 1/(3·fan_in),
    halved by the ReLU), so after the encoder's four layers μ(x) varies by only ~0.01 from image
    to image, drowned in the N(0, 1) noise of z = μ + σε: the decoder learns to ignore z, the KL
    term pulls μ to 0, and the VAE collapses to its prior (see the post).
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (L.Conv2d, L.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(math.sqrt(2 / fan_in) * torch.randn(module.weight.shape, generator=generator))
                if module.bias is not None:
                    module.bias.zero_()


class VAE(nn.Module):
    """Encoder, reparameterised sample, decoder: forward(x) = (logits, μ, log σ², z).

    He-initialised unless ``init="torch"`` (torch's default initialisation, which collapses).
    """

    def __init__(self, latent: int = 2, channels: tuple[int, int] = (16, 32), hidden: int = 128, init: str = "he"):
        super().__init__()
        self.encoder = Encoder(latent, channels, hidden)
        self.decoder = Decoder(latent, channels, hidden)
        if init == "he":
            he_initialise(self)
        elif init != "torch":
            raise ValueError(f"unknown init {init!r}: use 'he' or 'torch'")

    def forward(self, x: Float[Tensor, "b 1 28 28"], generator: torch.Generator | None = None):
        mu, logvar = self.encoder(x)
        z = reparameterise(mu, logvar, generator)
        return self.decoder(z), mu, logvar, z


# ---------------------------------------------------------------- training


@dataclass
class VAEHistory:
    """Per step: −ELBO, reconstruction and KL (nats per image); validation −ELBO at checkpoints."""

    loss: list[float] = field(default_factory=list)
    reconstruction: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


@torch.no_grad()
def evaluate(model: VAE, images: Tensor, seed: int = 0, batch_size: int = 1000) -> dict[str, float]:
    """Mean −ELBO, −reconstruction and KL over ``images`` (nats per image, one z per image, fixed seed)."""
    gen = torch.Generator().manual_seed(seed)
    sums = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0}
    for start in range(0, len(images), batch_size):
        x = images[start: start + batch_size]
        logits, mu, logvar, _ = model(x, gen)
        value, rec, kl = elbo(x, logits, mu, logvar)
        sums["loss"] -= value.sum().item()
        sums["reconstruction"] -= rec.sum().item()
        sums["kl"] += kl.sum().item()
    return {k: v / len(images) for k, v in sums.items()}


def train_vae(model: VAE, images: Tensor, val_images: Tensor, config) -> VAEHistory:
    """Adam on the mean −ELBO over shuffled mini-batches (``config`` is day 7's TrainConfig)."""
    gen = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    history = VAEHistory()
    start = time.perf_counter()
    step = 0
    for _ in range(config.epochs):
        order = torch.randperm(len(images), generator=gen)
        for first in range(0, len(images), config.batch_size):
            x = images[order[first: first + config.batch_size]]
            logits, mu, logvar, _ = model(x, gen)
            value, rec, kl = elbo(x, logits, mu, logvar)
            loss = -value.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.loss.append(loss.item())
            history.reconstruction.append(-rec.mean().item())
            history.kl.append(kl.mean().item())
            step += 1
            if step % config.eval_every == 0:
                history.val_step.append(step)
                history.val_loss.append(evaluate(model, val_images)["loss"])
    history.seconds = time.perf_counter() - start
    return history


# ---------------------------------------------------------------- the experiment

EXPERIMENT_MODEL = {"latent": 2, "channels": (16, 32), "hidden": 128}
EXPERIMENT = mnist.TrainConfig(epochs=1, batch_size=128, lr=1e-3, eval_every=50, seed=0)
N_VAL = 2_000


def independent_pixel_baseline(train_images: Tensor, test_images: Tensor, eps: float = 1e-3) -> float:
    """The best model with no latent at all: pixels independent Bernoulli with the training set's
    per-pixel means p_k (clamped to [eps, 1 − eps]). Returns the test set's mean −log p(x) in nats,
    the number a VAE's −ELBO must beat for its code to carry information."""
    p = train_images.mean(0).clamp(eps, 1 - eps)
    logits = torch.log(p) - torch.log1p(-p)
    return -bernoulli_log_likelihood(logits.expand_as(test_images), test_images).mean().item()


def compare_initialisations(train_images: Tensor, test_images: Tensor, steps: int = 100, batch_size: int = 128,
                            seed: int = 0) -> dict[str, dict[str, float]]:
    """For torch's default and He initialisation: the spread of μ(x) across test images at the
    start, then ``steps`` Adam steps on the −ELBO and the test KL and −ELBO after them."""
    out = {}
    for init in ("torch", "he"):
        torch.manual_seed(seed)
        model = VAE(**EXPERIMENT_MODEL, init=init)
        with torch.no_grad():
            spread = model.encoder(test_images[:1000])[0].std(0).mean().item()
        config = mnist.TrainConfig(epochs=1, batch_size=batch_size, lr=EXPERIMENT.lr, eval_every=10**9, seed=seed)
        train_vae(model, train_images[: steps * batch_size], test_images[:100], config)
        after = evaluate(model, test_images[:2000])
        out[init] = {"mu_spread_at_init": spread, "kl_after": after["kl"], "neg_elbo_after": after["loss"]}
    return out


def latent_grid(model: VAE, n: int = 15, extent: float = 0.95) -> Float[Tensor, "n_28 n_28"]:
    """Decode an n×n grid of latent points placed at the standard normal's quantiles in
    [(1 − extent)/2, (1 + extent)/2] along each axis (Kingma & Welling's figure 4), tiled into one image."""
    probs = torch.linspace((1 - extent) / 2, (1 + extent) / 2, n)
    values = math.sqrt(2) * torch.erfinv(2 * probs - 1)
    z = torch.stack(torch.meshgrid(values, values.flip(0), indexing="xy"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        digits = torch.sigmoid(model.decoder(z))[:, 0]
    return tensors.rearrange(digits, "(r c) h w -> (r h) (c w)", r=n)


def run_experiment(out_dir: Path) -> dict:
    """Train a 2-D-latent VAE on MNIST; figures: learning curves, reconstructions, latent space."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    (train_images, _), (val_images, _) = mnist.split_train_val(N_VAL, seed=EXPERIMENT.seed)
    test_images, test_labels = mnist.load_mnist("test")
    init_comparison = compare_initialisations(train_images, test_images)
    torch.manual_seed(EXPERIMENT.seed)
    model = VAE(**EXPERIMENT_MODEL)
    initial = evaluate(model, test_images)
    baseline = independent_pixel_baseline(train_images, test_images)
    history = train_vae(model, train_images, val_images, EXPERIMENT)
    final = evaluate(model, test_images)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    steps = range(1, len(history.loss) + 1)
    ax1.plot(steps, history.loss, color="tab:blue", lw=0.7, label="training −ELBO (batch)")
    ax1.plot(history.val_step, history.val_loss, "o-", ms=3, color="tab:orange", label=f"validation −ELBO ({N_VAL})")
    ax1.set_ylim(min(history.loss) * 0.95, 260)
    ax1.set_xlabel("step (batch of 128)")
    ax1.set_ylabel("nats per image")
    ax1.legend()
    ax2.plot(steps, history.reconstruction, lw=0.7, label="−E[log p(x|z)] (reconstruction)")
    ax2b = ax2.twinx()
    ax2b.plot(steps, history.kl, lw=0.7, color="tab:red", label="KL(q(z|x) ‖ p(z))")
    ax2.set_ylim(min(history.reconstruction) * 0.95, 250)
    ax2.set_xlabel("step (batch of 128)")
    ax2.set_ylabel("reconstruction (nats)")
    ax2b.set_ylabel("KL (nats)", color="tab:red")
    lines = ax2.get_legend_handles_labels()[0] + ax2b.get_legend_handles_labels()[0]
    ax2.legend(lines, [l.get_label() for l in lines], loc="upper right")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/learning_curve.png", dpi=120)
    plt.close(fig)

    originals = test_images[:12]
    with torch.no_grad():
        mu, _ = model.encoder(originals)
        recon_mean = torch.sigmoid(model.decoder(mu))
    fig, axes = plt.subplots(2, 12, figsize=(11, 2.3))
    for k in range(12):
        for row, img in enumerate((originals[k, 0], recon_mean[k, 0])):
            axes[row, k].imshow(img.numpy(), cmap="gray_r", vmin=0, vmax=1)
            axes[row, k].set_axis_off()
    axes[0, 0].set_title("test image", fontsize=8, loc="left")
    axes[1, 0].set_title("decoded from μ(x)", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/reconstructions.png", dpi=120)
    plt.close(fig)

    with torch.no_grad():
        means = torch.cat([model.encoder(test_images[s: s + 1000])[0] for s in range(0, 10_000, 1000)])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.6))
    scatter = ax1.scatter(means[:, 0], means[:, 1], c=test_labels, cmap="tab10", s=2, alpha=0.6)
    ax1.legend(*scatter.legend_elements(), title="digit", fontsize=7, loc="upper right", markerscale=0.8)
    ax1.set_xlabel("μ₁")
    ax1.set_ylabel("μ₂")
    ax1.set_title("Encoder means of the 10 000 test images")
    ax1.set_xlim(-4, 4)
    ax1.set_ylim(-4, 4)
    ax1.set_aspect("equal")
    ax2.imshow(latent_grid(model).numpy(), cmap="gray_r")
    ax2.set_axis_off()
    ax2.set_title("Decoded grid at N(0, 1) quantiles 2.5% … 97.5%")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/latent_space.png", dpi=110)
    plt.close(fig)

    centroids = torch.stack([means[test_labels == d].mean(0) for d in range(10)])
    results = {
        "model": EXPERIMENT_MODEL,
        "config": asdict(EXPERIMENT),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "n_train": len(train_images), "n_val": N_VAL, "n_test": len(test_images),
        "steps": len(history.loss),
        "train_seconds": history.seconds,
        "initial_test": initial,
        "test": final,
        "bits_per_dim_bound": final["loss"] / (784 * math.log(2)),
        "independent_pixel_baseline": baseline,
        "init_comparison": init_comparison,
        "gain_over_baseline": baseline - final["loss"],
        "latent_mean_of_means": means.mean(0).tolist(),
        "latent_std_of_means": means.std(0).tolist(),
        "digit_centroids": centroids.tolist(),
        "history": asdict(history),
        "torch_threads": torch.get_num_threads(),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
