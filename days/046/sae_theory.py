"""Day 46: sparse autoencoders from scratch (ARENA 1.3.3 SAEs; the toy SAEs of ARENA 1.5.4).

A sparse autoencoder (SAE) rewrites an activation h ∈ R^{d_in} as a sparse, non-negative
combination of d_sae learned directions (the decoder's rows, unit vectors):

    encode:  z = (h - b_dec) W_enc + b_enc                  pre-activations, [d_sae]
             a = σ(z)                                       σ = ReLU, TopK or JumpReLU
    decode:  ĥ = a W_dec + b_dec,   ‖W_dec[i]‖ = 1

trained to reconstruct h with few active latents:

    standard (ReLU + L1):  L = mean_d (ĥ - h)² + λ Σ_i a_i
    TopK:                  a = ReLU of the k largest z_i, zero elsewhere;  L = mean_d (ĥ - h)² (+ AuxK)
    JumpReLU:              a_i = z_i · H(z_i - θ_i);  L = mean_d (ĥ - h)² + λ Σ_i H(z_i - θ_i)   (an L0 penalty)

The step H has zero derivative almost everywhere, so JumpReLU trains θ with a straight-through
*pseudo*-derivative (Rajamanoharan et al. 2024): with the rectangle kernel K(u) = 1[|u| < ½] and a
bandwidth ε,

    ∂H(z - θ)/∂θ   := -(1/ε) K((z - θ)/ε)
    ∂(z H(z - θ))/∂θ := -(θ/ε) K((z - θ)/ε),     ∂(z H(z - θ))/∂z = H(z - θ)

These are the exact θ-derivatives of the kernel-smoothed functions ``smoothed_heaviside`` and
``smoothed_jumprelu`` below, which is how the tests check them with central differences.

Latents that never fire ("dead") waste capacity; ARENA resamples them: ``resample_simple`` gives
them random directions, ``resample_advanced`` points them at inputs the SAE reconstructs badly
(sampled with probability ∝ loss²).

Conventions (ARENA's): the reconstruction loss is a *mean* over d_in; sae-lens sums over d_in and
weights the L1 penalty by ‖W_dec[i]‖, so with unit decoder rows every sae-lens loss is d_in × ours
when its coefficient is d_in × λ (``to_sae_lens`` builds the matching sae-lens SAE).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

# ---------------------------------------------------------------- the JumpReLU's step functions


def rectangle(x: Tensor, width: float = 1.0) -> Tensor:
    """The rectangle kernel K(x) = 1[|x| < width/2], as x's dtype (ARENA's ``rectangle``)."""
    return ((x > -width / 2) & (x < width / 2)).to(x)


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to the shape of the input it came from (θ: [d_sae])."""
    while grad.dim() > len(shape):
        grad = grad.sum(0)
    for i, n in enumerate(shape):
        if n == 1 and grad.shape[i] != 1:
            grad = grad.sum(i, keepdim=True)
    return grad


class Heaviside(torch.autograd.Function):
    """H(z, θ) = 1[z > θ], with the straight-through pseudo-derivative (ARENA's ``Heaviside``):

        ∂H/∂z := 0,     ∂H/∂θ := -(1/ε) K((z - θ)/ε)

    (DeepMind's JumpReLU: the L0 penalty's gradient reaches the threshold only.)
    """

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_theta = -(1.0 / eps) * rectangle((z - theta) / eps) * grad_output
        return torch.zeros_like(z), _sum_to(grad_theta, theta.shape), None


class JumpReLU(torch.autograd.Function):
    """J(z, θ) = z · 1[z > θ], with the straight-through pseudo-derivative (ARENA's ``JumpReLU``):

        ∂J/∂z = 1[z > θ],     ∂J/∂θ := -(θ/ε) K((z - θ)/ε)
    """

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_z = (z > theta).to(z) * grad_output
        grad_theta = -(theta / eps) * rectangle((z - theta) / eps) * grad_output
        return grad_z, _sum_to(grad_theta, theta.shape), None


def smoothed_heaviside(z: Tensor, theta: Tensor, eps: float) -> Tensor:
    """H convolved with the rectangle kernel: clamp((z - θ)/ε + ½, 0, 1). Its exact θ-derivative is
    -(1/ε) K((z - θ)/ε), Heaviside's pseudo-derivative."""
    return ((z - theta) / eps + 0.5).clamp(0.0, 1.0)


def smoothed_jumprelu(z: Tensor, theta: Tensor, eps: float) -> Tensor:
    """G(z, θ) = ∫_θ^∞ t · (1/ε) K((z - t)/ε) dt: z·H(z - θ) with the step smoothed over a width ε.
    It equals z for θ ≤ z - ε/2 and 0 for θ ≥ z + ε/2, ((z + ε/2)² - θ²)/(2ε) between, and its exact
    θ-derivative is -(θ/ε) K((z - θ)/ε), JumpReLU's pseudo-derivative."""
    lo = torch.maximum(theta.expand_as(z), z - eps / 2)
    hi = z + eps / 2
    return torch.where(lo < hi, (hi**2 - lo**2) / (2 * eps), torch.zeros_like(z))


# ---------------------------------------------------------------- the SAEs


@dataclass
class ToySAEConfig:
    """ARENA's ToySAEConfig, for one SAE over any activations (no instance dimension, see ToySAE)."""

    d_in: int
    d_sae: int
    sparsity_coeff: float = 0.2          # λ: the L1 (standard) or L0 (JumpReLU) coefficient
    weight_normalize_eps: float = 1e-8
    architecture: Literal["standard", "topk", "jumprelu"] = "standard"
    k: int = 4                           # TopK: active latents per input
    aux_k: int | None = None             # TopK: dead latents in the AuxK loss (default d_in // 2, sae-lens's)
    aux_coeff: float = 1 / 32            # TopK: the AuxK loss's coefficient (OpenAI's 1/32)
    dead_steps: int = 100                # TopK: a latent silent for more steps than this counts as dead (AuxK)
    tied_init: bool = False              # initialise W_enc as W_dec's transpose (Gao et al.; sae-lens does)
    jumprelu_init_threshold: float = 0.001
    jumprelu_bandwidth: float = 0.001
    seed: int = 0


def constant_lr(step: int, steps: int) -> float:
    return 1.0


def linear_lr(step: int, steps: int) -> float:
    return 1 - step / steps


def cosine_decay_lr(step: int, steps: int) -> float:
    return math.cos(0.5 * math.pi * step / (steps - 1))


class ToySAE(nn.Module):
    """ARENA's ToySAE: the standard (ReLU + L1) SAE.

    ARENA's ToySAE trains ``n_inst`` SAEs at once on a toy model's hidden layer, ``ToySAE(cfg, model)``;
    ours is one SAE on any activations, ``ToySAE(cfg, generate_batch)``, with ``generate_batch(n)``
    the data source (a planted dictionary here, SmolLM2's residual stream on day 47).
    """

    W_enc: Float[Tensor, "d_in d_sae"]
    W_dec: Float[Tensor, "d_sae d_in"]
    b_enc: Float[Tensor, " d_sae"]
    b_dec: Float[Tensor, " d_in"]

    def __init__(self, cfg: ToySAEConfig, generate_batch: Callable[[int], Tensor] | None = None):
        super().__init__()
        self.cfg = cfg
        self._generate_batch = generate_batch
        g = torch.Generator().manual_seed(cfg.seed)
        self.W_enc = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(cfg.d_in, cfg.d_sae), generator=g))
        self.W_dec = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(cfg.d_sae, cfg.d_in), generator=g))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        with torch.no_grad():
            self.W_dec.data = self.W_dec_normalized
            if cfg.tied_init:
                self.W_enc.data = self.W_dec.data.T.clone()

    def generate_batch(self, batch_size: int) -> Float[Tensor, "batch d_in"]:
        """A batch of activations from the data source given at construction."""
        if self._generate_batch is None:
            raise RuntimeError("this SAE has no data source: pass generate_batch to the constructor")
        return self._generate_batch(batch_size).to(self.W_enc)

    @property
    def W_dec_normalized(self) -> Float[Tensor, "d_sae d_in"]:
        """The decoder with unit rows, W_dec[i] / (‖W_dec[i]‖ + eps): what the forward pass uses."""
        return self.W_dec / (self.W_dec.norm(dim=-1, keepdim=True) + self.cfg.weight_normalize_eps)

    def pre_acts(self, h: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """z = (h - b_dec) W_enc + b_enc."""
        return (h - self.b_dec) @ self.W_enc + self.b_enc

    def activation(self, z: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        """σ(z): ReLU for the standard SAE."""
        return F.relu(z)

    def encode(self, h: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """The latents a = σ((h - b_dec) W_enc + b_enc)."""
        return self.activation(self.pre_acts(h))

    def decode(self, acts: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """ĥ = a W_dec + b_dec with unit decoder rows."""
        return acts @ self.W_dec_normalized + self.b_dec

    def sparsity_loss(self, acts: Tensor, z: Tensor) -> Tensor:
        """L1: Σ_i a_i (a ≥ 0)."""
        return acts.abs().sum(-1)

    def forward(self, h: Float[Tensor, "batch d_in"], dead_mask: Tensor | None = None):
        """ARENA's forward: (loss_dict, loss, acts_post, h_reconstructed), the losses per input [batch]:
        L_reconstruction = mean_d (ĥ - h)², L_sparsity as the architecture defines it, and
        loss = L_reconstruction + λ L_sparsity."""
        z = self.pre_acts(h)
        acts = self.activation(z)
        h_rec = self.decode(acts)
        loss_dict = {"L_reconstruction": (h_rec - h).pow(2).mean(-1),
                     "L_sparsity": self.sparsity_loss(acts, z)}
        loss = loss_dict["L_reconstruction"] + self.cfg.sparsity_coeff * loss_dict["L_sparsity"]
        return loss_dict, loss, acts, h_rec

    # ------------------------------------------------------------ training

    def optimize(self, batch_size: int = 1024, steps: int = 10_000, lr: float = 1e-3,
                 lr_scale: Callable[[int, int], float] = constant_lr,
                 resample_method: Literal["simple", "advanced", None] = None, resample_freq: int = 2500,
                 resample_window: int = 500, resample_scale: float = 0.5, log_freq: int = 100,
                 betas: tuple[float, float] = (0.0, 0.999)) -> dict[str, list]:
        """ARENA's optimize: Adam on loss.mean() (betas (0, 0.999) as ARENA), the decoder re-normalised after
        every step, dead latents resampled every ``resample_freq`` steps from the activity of the last
        ``resample_window`` steps. Returns a log: step, mean losses, L0, and the number of dead latents."""
        optimizer = torch.optim.Adam(self.parameters(), lr=lr, betas=betas)
        frac_active_list: list[Tensor] = []
        self.steps_since_fired = torch.zeros(self.cfg.d_sae)
        log: dict[str, list] = {"step": [], "loss": [], "L_reconstruction": [], "l0": [], "n_dead_window": [],
                                "resampled": []}
        for step in range(steps):
            if resample_method is not None and (step + 1) % resample_freq == 0:
                window = torch.stack(frac_active_list[-resample_window:])
                if resample_method == "simple":
                    n = self.resample_simple(window, resample_scale)
                elif resample_method == "advanced":
                    n = self.resample_advanced(window, resample_scale, batch_size)
                else:
                    raise ValueError(f"resample_method {resample_method!r}")
                log["resampled"].append((step, n))
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_scale(step, steps)
            with torch.no_grad():
                h = self.generate_batch(batch_size)
            loss_dict, loss, acts, _ = self.forward(h, dead_mask=self.dead_mask())
            loss.mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            with torch.no_grad():
                self.W_dec.data = self.W_dec_normalized
                fired = acts.abs() > 1e-8
                frac_active_list.append(fired.float().mean(0))
                self.steps_since_fired += 1
                self.steps_since_fired[fired.any(0)] = 0
            if step % log_freq == 0 or step == steps - 1:
                window = torch.stack(frac_active_list[-resample_window:])
                log["step"].append(step)
                log["loss"].append(loss.mean().item())
                log["L_reconstruction"].append(loss_dict["L_reconstruction"].mean().item())
                log["l0"].append(fired.float().sum(-1).mean().item())
                log["n_dead_window"].append(int((window.sum(0) < 1e-8).sum()))
        return log

    def dead_mask(self) -> Tensor | None:
        """Latents silent for more than cfg.dead_steps steps (sae-lens's rule; used by TopK's AuxK loss)."""
        steps = getattr(self, "steps_since_fired", None)
        return None if steps is None else steps > self.cfg.dead_steps

    # ------------------------------------------------------------ dead latents

    @torch.no_grad()
    def resample_simple(self, frac_active_in_window: Float[Tensor, "window d_sae"], resample_scale: float) -> int:
        """ARENA's resample_simple: each latent that never fired in the window gets a random unit decoder
        direction d, encoder column resample_scale · d, and b_enc = 0. Returns how many were resampled."""
        is_dead = (frac_active_in_window < 1e-8).all(dim=0)
        dead = torch.nonzero(is_dead).squeeze(-1)
        if dead.numel() == 0:
            return 0
        new = torch.randn(dead.numel(), self.cfg.d_in).to(self.W_dec)
        new = new / (new.norm(dim=-1, keepdim=True) + self.cfg.weight_normalize_eps)
        self.W_dec.data[dead] = new
        self.W_enc.data[:, dead] = resample_scale * new.T
        self.b_enc.data[dead] = 0.0
        return int(dead.numel())

    @torch.no_grad()
    def resample_advanced(self, frac_active_in_window: Float[Tensor, "window d_sae"], resample_scale: float,
                          batch_size: int) -> int:
        """ARENA's resample_advanced: draw a batch, compute each input's reconstruction loss L_n, and for every
        dead latent sample an input with probability L_n² / Σ L²; the latent's decoder row becomes the
        normalised (h_n - b_dec), its encoder column that direction times resample_scale times the mean
        encoder norm of the live latents, and b_enc = 0. Live latents are untouched. Returns how many."""
        is_dead = (frac_active_in_window < 1e-8).all(dim=0)
        dead = torch.nonzero(is_dead).squeeze(-1)
        n_dead = dead.numel()
        if n_dead == 0:
            return 0
        h = self.generate_batch(batch_size)
        l2_loss = self.forward(h)[0]["L_reconstruction"]
        if l2_loss.max() < 1e-6:
            return 0
        distn = torch.distributions.Categorical(probs=l2_loss.pow(2) / l2_loss.pow(2).sum())
        replacement = (h - self.b_dec)[distn.sample((n_dead,))]
        replacement = replacement / (replacement.norm(dim=-1, keepdim=True) + self.cfg.weight_normalize_eps)
        alive_norm = self.W_enc[:, ~is_dead].norm(dim=0).mean().item() if (~is_dead).any() else 1.0
        self.W_dec.data[dead] = replacement
        self.W_enc.data[:, dead] = replacement.T * alive_norm * resample_scale
        self.b_enc.data[dead] = 0.0
        return int(n_dead)


class TopKToySAE(ToySAE):
    """The TopK SAE (Gao et al. 2024): a = ReLU of the k largest pre-activations, zero elsewhere. Sparsity is
    enforced, not penalised: L_sparsity is zero, and the AuxK loss trains dead latents on the residual,

        L_aux = s · mean_d (e_aux - (h - ĥ))²,   e_aux = (top-k_aux dead z) W_dec,  s = min(n_dead / k_aux, 1)

    with k_aux = min(cfg.aux_k or d_in // 2, n_dead) (sae-lens's scaling), added with coefficient aux_coeff."""

    def activation(self, z: Tensor) -> Tensor:
        top = z.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(z).scatter(-1, top.indices, top.values.relu())

    def sparsity_loss(self, acts: Tensor, z: Tensor) -> Tensor:
        return torch.zeros(acts.shape[:-1]).to(acts)

    def aux_loss(self, h: Tensor, h_rec: Tensor, z: Tensor, dead_mask: Tensor | None) -> Tensor:
        """The AuxK loss per input (zero when no latent is dead)."""
        n_dead = 0 if dead_mask is None else int(dead_mask.sum())
        if n_dead == 0:
            return torch.zeros(h.shape[:-1]).to(h)
        k_default = self.cfg.aux_k or self.cfg.d_in // 2
        scale = min(n_dead / k_default, 1.0)
        k_aux = min(k_default, n_dead)
        masked = torch.where(dead_mask, z, torch.tensor(-torch.inf).to(z))
        top = masked.topk(k_aux, dim=-1, sorted=False)
        aux_acts = torch.zeros_like(z).scatter(-1, top.indices, top.values)
        residual = (h - h_rec).detach()
        return scale * (aux_acts @ self.W_dec_normalized - residual).pow(2).mean(-1)

    def forward(self, h: Tensor, dead_mask: Tensor | None = None):
        loss_dict, loss, acts, h_rec = super().forward(h)
        loss_dict["L_aux"] = self.aux_loss(h, h_rec, self.pre_acts(h), dead_mask)
        return loss_dict, loss + self.cfg.aux_coeff * loss_dict["L_aux"], acts, h_rec


class JumpReLUToySAE(ToySAE):
    """ARENA's JumpReLUToySAE: a_i = z_i H(z_i - θ_i) with a learned threshold θ = exp(log_theta) (DeepMind's
    parameterisation, positive by construction) and an L0 penalty, L_sparsity = Σ_i H(z_i - θ_i), both
    trained through the pseudo-derivatives of ``JumpReLU`` and ``Heaviside`` with bandwidth ε.

    ARENA applies a ReLU before the JumpReLU; we follow DeepMind and sae-lens and apply JumpReLU to z itself
    (the same values for θ > 0, and the θ-gradient then depends only on z near θ)."""

    def __init__(self, cfg: ToySAEConfig, generate_batch: Callable[[int], Tensor] | None = None):
        super().__init__(cfg, generate_batch)
        self.log_theta = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold)))

    @property
    def theta(self) -> Float[Tensor, " d_sae"]:
        return self.log_theta.exp()

    def activation(self, z: Tensor) -> Tensor:
        return JumpReLU.apply(z, self.theta, self.cfg.jumprelu_bandwidth)

    def sparsity_loss(self, acts: Tensor, z: Tensor) -> Tensor:
        """L0: Σ_i H(z_i - θ_i), differentiable in θ through Heaviside's pseudo-derivative."""
        return Heaviside.apply(z, self.theta, self.cfg.jumprelu_bandwidth).sum(-1)


ARCHITECTURES = {"standard": ToySAE, "topk": TopKToySAE, "jumprelu": JumpReLUToySAE}


def make_sae(cfg: ToySAEConfig, generate_batch: Callable[[int], Tensor] | None = None) -> ToySAE:
    """The SAE class of cfg.architecture."""
    return ARCHITECTURES[cfg.architecture](cfg, generate_batch)


# ---------------------------------------------------------------- sae-lens on the same weights


def to_sae_lens(sae: ToySAE, training: bool = False, **config):
    """The sae-lens 6 SAE with our weights: StandardSAE / TopKSAE / JumpReLUSAE (inference), or
    StandardTrainingSAE / TopKTrainingSAE / JumpReLUTrainingSAE (training=True, whose training_forward_pass
    computes sae-lens's losses). W_dec is our unit-row decoder; the JumpReLU threshold is exp(log_theta);
    the L1/L0 coefficient is d_in·λ so that sae-lens's losses (summed over d_in) are d_in × ours.
    Extra keyword arguments go to the config (e.g. rescale_acts_by_decoder_norm for TopK)."""
    from sae_lens import (JumpReLUSAE, JumpReLUSAEConfig, JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig,
                          StandardSAE, StandardSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig, TopKSAE,
                          TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig)

    cfg = sae.cfg
    dtype = str(sae.W_enc.dtype).removeprefix("torch.")
    base = dict(d_in=cfg.d_in, d_sae=cfg.d_sae, dtype=dtype, device="cpu")
    coeff = cfg.d_in * cfg.sparsity_coeff
    if cfg.architecture == "standard":
        cls, cfg_cls = (StandardTrainingSAE, StandardTrainingSAEConfig) if training else (StandardSAE, StandardSAEConfig)
        extra = dict(l1_coefficient=coeff) if training else {}
    elif cfg.architecture == "topk":
        cls, cfg_cls = (TopKTrainingSAE, TopKTrainingSAEConfig) if training else (TopKSAE, TopKSAEConfig)
        extra = dict(k=cfg.k, **(dict(aux_loss_coefficient=cfg.aux_coeff) if training else {}))
    elif cfg.architecture == "jumprelu":
        cls, cfg_cls = (JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig) if training else (JumpReLUSAE, JumpReLUSAEConfig)
        extra = dict(l0_coefficient=coeff, jumprelu_bandwidth=cfg.jumprelu_bandwidth) if training else {}
    else:
        raise ValueError(cfg.architecture)
    theirs = cls(cfg_cls(**base, **extra, **config))
    with torch.no_grad():
        theirs.W_enc.data = sae.W_enc.detach().clone()
        theirs.W_dec.data = sae.W_dec_normalized.detach().clone()
        theirs.b_enc.data = sae.b_enc.detach().clone()
        theirs.b_dec.data = sae.b_dec.detach().clone()
        if cfg.architecture == "jumprelu":
            theirs.threshold.data = sae.theta.detach().clone().to(theirs.threshold.dtype)
    return theirs


# ---------------------------------------------------------------- a planted dictionary


class PlantedDictionary:
    """Synthetic activations with a known answer: n_atoms random unit vectors in R^{d_in} (more atoms than
    dimensions: superposition), each input a sparse non-negative combination h = Σ_i c_i d_i with
    c_i ~ U(0, 1) present independently with probability p_active (ARENA's toy-model feature statistics)."""

    def __init__(self, d_in: int, n_atoms: int, p_active: float, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        atoms = torch.randn(n_atoms, d_in, generator=g)
        self.atoms = atoms / atoms.norm(dim=-1, keepdim=True)
        self.p_active = p_active
        self.generator = torch.Generator().manual_seed(seed + 1)

    def generate_batch(self, batch_size: int) -> Float[Tensor, "batch d_in"]:
        n = self.atoms.shape[0]
        present = torch.rand(batch_size, n, generator=self.generator) < self.p_active
        coeffs = torch.rand(batch_size, n, generator=self.generator) * present
        return coeffs @ self.atoms


def atom_recovery(atoms: Float[Tensor, "n_atoms d_in"], W_dec: Float[Tensor, "d_sae d_in"]) -> Float[Tensor, " n_atoms"]:
    """For each planted atom, the largest cosine similarity with any decoder row."""
    a = atoms / atoms.norm(dim=-1, keepdim=True)
    d = W_dec / W_dec.norm(dim=-1, keepdim=True)
    return (a @ d.T).max(-1).values


# ---------------------------------------------------------------- the experiment

PLANTED = dict(d_in=32, n_atoms=64, p_active=0.03, seed=0)
TRAIN = dict(batch_size=1024, steps=3000, lr=3e-3)
GATE_TRAIN = dict(batch_size=512, steps=400, lr=1e-2)     # the gate's fast run of the standard SAE
CONFIGS = {"standard": ToySAEConfig(d_in=32, d_sae=128, architecture="standard", sparsity_coeff=0.01),
           "topk": ToySAEConfig(d_in=32, d_sae=128, architecture="topk", k=4),
           "jumprelu": ToySAEConfig(d_in=32, d_sae=128, architecture="jumprelu", sparsity_coeff=0.01,
                                    jumprelu_init_threshold=0.05, jumprelu_bandwidth=0.05)}


def train_on_planted(cfg: ToySAEConfig, planted: dict = PLANTED, **train) -> tuple[ToySAE, PlantedDictionary, dict]:
    """Train an SAE of cfg's architecture on a planted dictionary; returns (sae, data, log)."""
    data = PlantedDictionary(**planted)
    torch.manual_seed(cfg.seed)
    sae = make_sae(cfg, data.generate_batch)
    log = sae.optimize(**(TRAIN | train))
    return sae, data, log


DEAD = dict(config=replace(CONFIGS["standard"], d_sae=256, sparsity_coeff=0.03),
            train=dict(steps=3000, resample_freq=700, resample_window=300, log_freq=100))


def run_experiment(out_dir: Path) -> dict:
    """Planted dictionaries recovered by the three SAEs; dead latents with and without resampling; the JumpReLU's
    step, its smoothing and its pseudo-derivatives."""
    import matplotlib.pyplot as plt

    from checks.timing import single_thread

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    results: dict = {"planted": PLANTED, "train": TRAIN, "architectures": {}, "dead": {},
                     "mean_atoms_present": PLANTED["n_atoms"] * PLANTED["p_active"]}
    with single_thread():
        fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
        for name, cfg in CONFIGS.items():
            sae, data, log = train_on_planted(cfg)
            cos = atom_recovery(data.atoms, sae.W_dec_normalized.detach())
            results["architectures"][name] = {
                "config": asdict(cfg), "max_cosine": cos.tolist(),
                "fraction_recovered": float((cos >= 0.95).float().mean()),
                "median_max_cosine": cos.median().item(), "min_max_cosine": cos.min().item(),
                "l0": log["l0"][-1], "L_reconstruction": log["L_reconstruction"][-1],
                "n_dead_final": log["n_dead_window"][-1]}
            ax.plot(range(1, len(cos) + 1), cos.sort(descending=True).values, label=f"{name}", lw=2)
        ax.axhline(0.95, color="grey", ls="--", lw=1)
        ax.set_xlabel("planted atom (sorted)")
        ax.set_ylabel("best cosine with a decoder row")
        ax.set_title(f"{PLANTED['n_atoms']} planted atoms in R^{PLANTED['d_in']}: recovered by each SAE")
        ax.legend()
        fig.savefig(out_dir / "figures/planted_recovery.png", dpi=120)
        plt.close(fig)

        fig, axes = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
        for method in (None, "simple", "advanced"):
            sae, data, log = train_on_planted(DEAD["config"], resample_method=method, **DEAD["train"])
            cos = atom_recovery(data.atoms, sae.W_dec_normalized.detach())
            key = method or "none"
            results["dead"][key] = {"n_dead_final": log["n_dead_window"][-1], "n_dead": log["n_dead_window"],
                                    "step": log["step"], "resampled": log["resampled"],
                                    "fraction_recovered": float((cos >= 0.95).float().mean()),
                                    "L_reconstruction": log["L_reconstruction"][-1], "l0": log["l0"][-1]}
            axes[0].plot(log["step"], log["n_dead_window"], label=key)
            axes[1].plot(log["step"], log["L_reconstruction"], label=key)
        results["dead"]["config"] = asdict(DEAD["config"])
        results["dead"]["train"] = DEAD["train"]
        for step, _ in results["dead"]["advanced"]["resampled"]:
            for ax in axes:
                ax.axvline(step, color="grey", lw=0.5, ls=":")
        axes[0].set_ylabel(f"latents dead over the last {DEAD['train']['resample_window']} steps")
        axes[1].set_ylabel("reconstruction loss (mean over d_in)")
        axes[1].set_yscale("log")
        for ax in axes:
            ax.set_xlabel("step")
            ax.legend(title="resampling")
        fig.suptitle(f"Dead latents: d_sae = {DEAD['config'].d_sae}, λ = {DEAD['config'].sparsity_coeff}")
        fig.savefig(out_dir / "figures/resampling.png", dpi=120)
        plt.close(fig)

    eps, theta = 0.2, torch.tensor(0.5)
    z = torch.linspace(-0.2, 1.2, 1401)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), constrained_layout=True)
    axes[0].plot(z, (z > theta).float(), label="H(z − θ)")
    axes[0].plot(z, smoothed_heaviside(z, theta, eps), label="smoothed over ε")
    axes[0].plot(z, -1 / eps * rectangle((z - theta) / eps) * 0.1, label="pseudo ∂H/∂θ (× 0.1)")
    axes[1].plot(z, z * (z > theta).float(), label="J(z) = z H(z − θ)")
    axes[1].plot(z, smoothed_jumprelu(z, theta, eps), label="smoothed over ε")
    axes[1].plot(z, -theta / eps * rectangle((z - theta) / eps) * 0.2, label="pseudo ∂J/∂θ (× 0.2)")
    for ax, title in zip(axes, ("Heaviside (the L0 penalty)", "JumpReLU (the activation)")):
        ax.axvline(theta, color="grey", lw=0.5, ls=":")
        ax.set_xlabel("pre-activation z")
        ax.set_title(f"{title}, θ = {theta.item()}, ε = {eps}")
        ax.legend(fontsize=8)
    fig.savefig(out_dir / "figures/jumprelu_pseudo_gradient.png", dpi=120)
    plt.close(fig)

    results["wall_seconds"] = time.perf_counter() - wall0
    results["cpu_seconds"] = time.process_time() - cpu0
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
