"""Day 69: sparse autoencoders on the superposition toy model (ARENA 1.5.4; Bricken et al. 2023, Rajamanoharan et al.
2024 "Gated SAEs" and "JumpReLU SAEs").

The toy model of day 67 stores n sparse features in m < n hidden dimensions; an SAE on its hidden vectors h = W x
should find them back. A standard SAE (ToySAE):

    z = ReLU(W_enc (h - b_dec) + b_enc),     ĥ = Ŵ_dec z + b_dec     (Ŵ_dec: rows of unit norm),
    L = ‖ĥ - h‖² / d_in + λ ‖z‖₁.

The L1 term pays for every unit of activation, so the SAE *shrinks* its activations below the true magnitudes. Two
fixes separate "which latents fire" from "how much":

Gated:     π_gate = W_gate (h - b_dec) + b_gate,   π_mag = (e^{r_mag} ⊙ W_gate)(h - b_dec) + b_mag,
           z = 1[π_gate > 0] ⊙ ReLU(π_mag);   L = ‖ĥ - h‖²/d + λ Σ ReLU(π_gate) + ‖ĥ_gate - h‖²/d,
           ĥ_gate = ReLU(π_gate) Ŵ_dec(frozen) + b_dec(frozen):  the L1 acts on the gate only.
JumpReLU:  z = JumpReLU_θ(π) = π · H(π - θ),   L = ‖ĥ - h‖²/d + λ ‖z‖₀ = … + λ Σ H(π - θ).

H has zero derivative almost everywhere, so θ learns through a pseudo-derivative: with the rectangle kernel
K(u) = 1[|u| < ½] and bandwidth ε,

    ∂H(π - θ)/∂θ := -(1/ε) K((π - θ)/ε),     ∂JumpReLU_θ(π)/∂θ := -(θ/ε) K((π - θ)/ε),

which is exactly the central difference with step ε of the batch sums Σ H(π - θ) (and, up to the window, of
Σ π H(π - θ)): a kernel density estimate of the derivative of the expected loss.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import einops
import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from torch.distributions.categorical import Categorical

from checks.timing import single_thread

sp = importlib.import_module("days.067.superposition")
ToyModel, ToyModelConfig, constant_lr, linear_lr = sp.ToyModel, sp.ToyModelConfig, sp.constant_lr, sp.linear_lr


# ---------------------------------------------------------------- the pseudo-derivatives


def rectangle(x: Tensor, width: float = 1.0) -> Tensor:
    """K(u) = 1[-width/2 < u < width/2]."""
    return ((x > -width / 2) & (x < width / 2)).to(x.dtype)


class Heaviside(torch.autograd.Function):
    """H(x - θ) forward; backward: 0 to x, -(1/ε) K((x - θ)/ε) to θ (summed over the batch dimension 0)."""

    @staticmethod
    def forward(ctx, x: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(x, theta)
        ctx.eps = eps
        return (x > theta).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        x, theta = ctx.saved_tensors
        eps = ctx.eps
        x_grad = torch.zeros_like(x)
        theta_grad = (-(1.0 / eps) * rectangle((x - theta) / eps) * grad_output).sum(dim=0)
        return x_grad, theta_grad, None


class JumpReLU(torch.autograd.Function):
    """x · H(x - θ) forward; backward: H(x - θ) to x, -(θ/ε) K((x - θ)/ε) to θ (summed over dimension 0)."""

    @staticmethod
    def forward(ctx, x: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(x, theta)
        ctx.eps = eps
        return x * (x > theta).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        x, theta = ctx.saved_tensors
        eps = ctx.eps
        x_grad = (x > theta).to(x.dtype) * grad_output
        theta_grad = (-(theta / eps) * rectangle((x - theta) / eps) * grad_output).sum(dim=0)
        return x_grad, theta_grad, None


# ---------------------------------------------------------------- the SAEs


@dataclass
class ToySAEConfig:
    n_inst: int
    d_in: int
    d_sae: int
    sparsity_coeff: float = 0.2
    weight_normalize_eps: float = 1e-8
    tied_weights: bool = False
    architecture: Literal["standard", "gated", "jumprelu"] = "standard"
    jumprelu_init_threshold: float = 0.001
    jumprelu_bandwidth: float = 0.001


class ToySAE(nn.Module):
    """A standard (L1) SAE per instance on the toy model's hidden vectors."""

    W_enc: Float[Tensor, "inst d_in d_sae"]
    _W_dec: Float[Tensor, "inst d_sae d_in"] | None
    b_enc: Float[Tensor, "inst d_sae"]
    b_dec: Float[Tensor, "inst d_in"]

    def __init__(self, cfg: ToySAEConfig, model: ToyModel):
        super().__init__()
        assert cfg.d_in == model.cfg.d_hidden, "the SAE reads the model's hidden layer"
        assert cfg.n_inst == model.cfg.n_inst, "one SAE per model instance"
        self.cfg = cfg
        self.model = model.requires_grad_(False)
        self._init_encoder()
        self._W_dec = None if cfg.tied_weights else nn.Parameter(
            nn.init.kaiming_uniform_(torch.empty((cfg.n_inst, cfg.d_sae, cfg.d_in))))
        self.b_dec = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_in))

    def _init_encoder(self) -> None:
        cfg = self.cfg
        self.W_enc = nn.Parameter(nn.init.kaiming_uniform_(torch.empty((cfg.n_inst, cfg.d_in, cfg.d_sae))))
        self.b_enc = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_sae))

    @property
    def W_dec(self) -> Float[Tensor, "inst d_sae d_in"]:
        return self._W_dec if self._W_dec is not None else self.W_enc.transpose(-1, -2)

    @property
    def W_dec_normalized(self) -> Float[Tensor, "inst d_sae d_in"]:
        """Each latent's decoder row scaled to unit norm (so the L1 penalty cannot be dodged by shrinking z and
        growing the decoder)."""
        return self.W_dec / (self.W_dec.norm(dim=-1, keepdim=True) + self.cfg.weight_normalize_eps)

    def generate_batch(self, batch_size: int) -> Float[Tensor, "batch inst d_in"]:
        """Hidden vectors h = W x of the toy model on a fresh batch of features."""
        return self.hidden(self.model.generate_batch(batch_size))

    def hidden(self, features: Float[Tensor, "batch inst feats"]) -> Float[Tensor, "batch inst d_in"]:
        return einops.einsum(features, self.model.W, "batch inst feats, inst d_in feats -> batch inst d_in")

    def encode_pre(self, h: Float[Tensor, "batch inst d_in"]) -> Float[Tensor, "batch inst d_sae"]:
        return einops.einsum(h - self.b_dec, self.W_enc, "batch inst d_in, inst d_in d_sae -> batch inst d_sae") + self.b_enc

    def decode(self, acts: Float[Tensor, "batch inst d_sae"]) -> Float[Tensor, "batch inst d_in"]:
        return einops.einsum(acts, self.W_dec_normalized, "batch inst d_sae, inst d_sae d_in -> batch inst d_in") + self.b_dec

    def forward(self, h: Float[Tensor, "batch inst d_in"]):
        """(loss_dict, loss, acts_post, h_reconstructed): L_reconstruction = mean over d_in of the squared error,
        L_sparsity = ‖z‖₁; loss = mean over the batch of L_rec + λ L_sparsity, summed over instances."""
        acts_post = F.relu(self.encode_pre(h))
        h_reconstructed = self.decode(acts_post)
        loss_dict = {"L_reconstruction": (h_reconstructed - h).pow(2).mean(-1), "L_sparsity": acts_post.abs().sum(-1)}
        loss = (loss_dict["L_reconstruction"] + self.cfg.sparsity_coeff * loss_dict["L_sparsity"]).mean(0).sum()
        return loss_dict, loss, acts_post, h_reconstructed

    # -- training

    def optimize(self, batch_size: int = 1024, steps: int = 10_000, log_freq: int = 100, lr: float = 1e-3,
                 lr_scale=constant_lr, resample_method: Literal["simple", "advanced", None] = None,
                 resample_freq: int = 2500, resample_window: int = 500, resample_scale: float = 0.5) -> dict:
        """Adam on fresh hidden vectors; every resample_freq steps (but not within the last resample_window steps),
        latents that fired on no input in the last resample_window steps are resampled. Returns the log (losses,
        fraction of dead latents, resample events, the last window's activity)."""
        assert resample_window <= resample_freq
        optimizer = torch.optim.Adam(self.parameters(), lr=lr, betas=(0.0, 0.999))
        frac_active_list: list[Tensor] = []
        log = {"step": [], "loss": [], "frac_dead": [], "resampled": []}
        for step in range(steps):
            # no resampling in the last window: the final dead count then measures a whole window after the last one
            if resample_method is not None and (step + 1) % resample_freq == 0 and step + resample_window < steps:
                window = torch.stack(frac_active_list[-resample_window:], dim=0)
                if resample_method == "simple":
                    n = self.resample_simple(window, resample_scale)
                elif resample_method == "advanced":
                    n = self.resample_advanced(window, resample_scale, batch_size)
                else:
                    raise ValueError(f"unknown resample method {resample_method!r}")
                log["resampled"].append({"step": step, "n": n})
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_scale(step, steps)
            with torch.no_grad():
                h = self.generate_batch(batch_size)
            loss_dict, loss, acts, _ = self(h)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            frac_active_list.append((acts.abs() > 1e-8).float().mean(0).detach())
            if step % log_freq == 0 or step + 1 == steps:
                window = torch.stack(frac_active_list[-resample_window:], dim=0)
                log["step"].append(step)
                log["loss"].append(loss.item() / self.cfg.n_inst)
                log["frac_dead"].append(dead_latents(window).float().mean().item())
        log["frac_active_last_window"] = torch.stack(frac_active_list[-resample_window:], dim=0)
        return log

    @torch.no_grad()
    def resample_simple(self, frac_active_in_window: Float[Tensor, "window inst d_sae"], resample_scale: float) -> int:
        """Dead latents (never active in the window) get a random unit decoder direction v, encoder column
        resample_scale · v, and b_enc = 0. Returns how many were resampled."""
        dead = torch.nonzero(dead_latents(frac_active_in_window))        # [n_dead, 2]: (instance, latent)
        n_dead = dead.shape[0]
        if n_dead == 0:
            return 0
        v = torch.randn((n_dead, self.cfg.d_in), device=self.W_enc.device)
        v = v / (v.norm(dim=-1, keepdim=True) + self.cfg.weight_normalize_eps)
        self.W_enc.data[dead[:, 0], :, dead[:, 1]] = resample_scale * v
        if self._W_dec is not None:
            self._W_dec.data[dead[:, 0], dead[:, 1], :] = v
        self.b_enc.data[dead[:, 0], dead[:, 1]] = 0.0
        return n_dead

    @torch.no_grad()
    def resample_advanced(self, frac_active_in_window: Float[Tensor, "window inst d_sae"], resample_scale: float,
                          batch_size: int) -> int:
        """Anthropic's resampling: dead latents get the directions of inputs the SAE reconstructs badly, drawn with
        probability ∝ (reconstruction loss)²; decoder row = the unit direction of h - b_dec, encoder column = the
        same scaled to resample_scale × the mean norm of the live latents' encoder columns, b_enc = 0."""
        h = self.generate_batch(batch_size)
        l2_loss = self(h)[0]["L_reconstruction"]                           # [batch, inst]
        dead_mask = dead_latents(frac_active_in_window)                   # [inst, d_sae]
        total = 0
        for instance in range(self.cfg.n_inst):
            is_dead = dead_mask[instance]
            dead = torch.nonzero(is_dead).squeeze(-1)
            n_dead = dead.numel()
            if n_dead == 0:
                continue
            loss_inst = l2_loss[:, instance]
            if loss_inst.max() < 1e-6:
                continue
            distn = Categorical(probs=loss_inst.pow(2) / loss_inst.pow(2).sum())
            idx = distn.sample((n_dead,))
            v = (h - self.b_dec)[idx, instance]
            v = v / (v.norm(dim=-1, keepdim=True) + self.cfg.weight_normalize_eps)
            alive_norm = self.W_enc[instance, :, ~is_dead].norm(dim=0).mean().item() if (~is_dead).any() else 1.0
            if self._W_dec is not None:
                self._W_dec.data[instance, dead, :] = v
            self.W_enc.data[instance, :, dead] = v.T * alive_norm * resample_scale
            self.b_enc.data[instance, dead] = 0.0
            total += n_dead
        return total

    @torch.no_grad()
    def latent_acts(self, h: Tensor) -> Tensor:
        return self(h)[2]


def dead_latents(frac_active_in_window: Float[Tensor, "window inst d_sae"]) -> Float[Tensor, "inst d_sae"]:
    """A latent is dead if it fired on no input in any step of the window."""
    return (frac_active_in_window < 1e-8).all(dim=0)


class GatedToySAE(ToySAE):
    """Rajamanoharan et al. 2024: a gate decides which latents fire, a magnitude path (sharing the gate's directions
    up to a per-latent scale e^{r_mag}) how much; only the gate pays the L1."""

    W_gate: Float[Tensor, "inst d_in d_sae"]
    b_gate: Float[Tensor, "inst d_sae"]
    r_mag: Float[Tensor, "inst d_sae"]
    b_mag: Float[Tensor, "inst d_sae"]

    def _init_encoder(self) -> None:
        cfg = self.cfg
        self.W_gate = nn.Parameter(nn.init.kaiming_uniform_(torch.empty((cfg.n_inst, cfg.d_in, cfg.d_sae))))
        self.b_gate = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_sae))
        self.r_mag = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_sae))

    @property
    def W_enc(self) -> Tensor:        # resampling and tied weights address the gate's directions
        return self.W_gate

    @property
    def b_enc(self) -> Tensor:
        return self.b_mag

    @property
    def W_mag(self) -> Float[Tensor, "inst d_in d_sae"]:
        return self.r_mag.exp()[:, None, :] * self.W_gate

    def forward(self, h: Float[Tensor, "batch inst d_in"]):
        h_cent = h - self.b_dec
        pi_gate = einops.einsum(h_cent, self.W_gate, "batch inst d_in, inst d_in d_sae -> batch inst d_sae") + self.b_gate
        pi_mag = einops.einsum(h_cent, self.W_mag, "batch inst d_in, inst d_in d_sae -> batch inst d_sae") + self.b_mag
        acts_post = (pi_gate > 0).to(h.dtype) * F.relu(pi_mag)
        h_reconstructed = self.decode(acts_post)
        gated_reconstruction = einops.einsum(F.relu(pi_gate), self.W_dec_normalized.detach(),
                                             "batch inst d_sae, inst d_sae d_in -> batch inst d_in") + self.b_dec.detach()
        loss_dict = {"L_reconstruction": (h_reconstructed - h).pow(2).mean(-1),
                     "L_sparsity": F.relu(pi_gate).sum(-1),
                     "L_aux": (gated_reconstruction - h).pow(2).mean(-1)}
        loss = (loss_dict["L_reconstruction"] + self.cfg.sparsity_coeff * loss_dict["L_sparsity"]
                + loss_dict["L_aux"]).mean(0).sum()
        return loss_dict, loss, acts_post, h_reconstructed

    @torch.no_grad()
    def resample_simple(self, frac_active_in_window, resample_scale):
        n = super().resample_simple(frac_active_in_window, resample_scale)
        self._reset_dead_gate_biases(frac_active_in_window)
        return n

    @torch.no_grad()
    def resample_advanced(self, frac_active_in_window, resample_scale, batch_size):
        n = super().resample_advanced(frac_active_in_window, resample_scale, batch_size)
        self._reset_dead_gate_biases(frac_active_in_window)
        return n

    def _reset_dead_gate_biases(self, window):
        dead = dead_latents(window)
        self.b_gate.data[dead] = 0.0
        self.r_mag.data[dead] = 0.0


class JumpReLUToySAE(ToySAE):
    """Rajamanoharan et al. 2024: z = JumpReLU_θ(ReLU(π)), an L0 penalty Σ H(π - θ), θ = exp(log θ) learned through
    the rectangle-kernel pseudo-derivative."""

    log_theta: Float[Tensor, "inst d_sae"]

    def __init__(self, cfg: ToySAEConfig, model: ToyModel):
        super().__init__(cfg, model)
        self.log_theta = nn.Parameter(torch.full((cfg.n_inst, cfg.d_sae), float(np.log(cfg.jumprelu_init_threshold))))

    @property
    def theta(self) -> Float[Tensor, "inst d_sae"]:
        return self.log_theta.exp()

    def forward(self, h: Float[Tensor, "batch inst d_in"]):
        acts_relu = F.relu(self.encode_pre(h))
        acts_post = JumpReLU.apply(acts_relu, self.theta, self.cfg.jumprelu_bandwidth)
        h_reconstructed = self.decode(acts_post)
        loss_dict = {"L_reconstruction": (h_reconstructed - h).pow(2).mean(-1),
                     "L_sparsity": Heaviside.apply(acts_relu, self.theta, self.cfg.jumprelu_bandwidth).sum(-1)}
        loss = (loss_dict["L_reconstruction"] + self.cfg.sparsity_coeff * loss_dict["L_sparsity"]).mean(0).sum()
        return loss_dict, loss, acts_post, h_reconstructed

    @torch.no_grad()
    def resample_simple(self, frac_active_in_window, resample_scale):
        n = super().resample_simple(frac_active_in_window, resample_scale)
        self.log_theta.data[dead_latents(frac_active_in_window)] = float(np.log(self.cfg.jumprelu_init_threshold))
        return n

    @torch.no_grad()
    def resample_advanced(self, frac_active_in_window, resample_scale, batch_size):
        n = super().resample_advanced(frac_active_in_window, resample_scale, batch_size)
        self.log_theta.data[dead_latents(frac_active_in_window)] = float(np.log(self.cfg.jumprelu_init_threshold))
        return n


SAE_CLASSES = {"standard": ToySAE, "gated": GatedToySAE, "jumprelu": JumpReLUToySAE}


def make_sae(cfg: ToySAEConfig, model: ToyModel) -> ToySAE:
    return SAE_CLASSES[cfg.architecture](cfg, model)


# ---------------------------------------------------------------- the toy the SAEs read (ARENA's)

FEATURE_ANGLES = (0.0, 0.25, 0.55, 0.70, 0.90)   # fractions of a turn: five unevenly spaced features in 2-d


def arena_toy_model(n_inst: int, feature_probability: float = 0.025, seed: int = 0) -> ToyModel:
    """ARENA's SAE toy: 5 features in 2 dimensions at the fixed, uneven angles FEATURE_ANGLES (each instance rotated
    by a random angle), unit norm, zero bias: a model whose ground-truth features are known exactly."""
    g = torch.Generator().manual_seed(seed)
    cfg = ToyModelConfig(n_inst=n_inst, n_features=5, d_hidden=2)
    model = ToyModel(cfg, feature_probability=feature_probability)
    angles = 2 * torch.pi * torch.tensor(FEATURE_ANGLES) + torch.rand((n_inst, 1), generator=g)
    model.W.data = torch.stack([angles.cos(), angles.sin()], dim=1)
    return model


@torch.no_grad()
def feature_recovery(sae: ToySAE) -> Float[Tensor, "inst feats"]:
    """For every ground-truth feature (a column of the toy's W, unit norm here), the largest cosine similarity with
    any decoder row of the SAE: 1 when some latent's decoder is exactly that feature."""
    W = sae.model.W / sae.model.W.norm(dim=1, keepdim=True)
    return einops.einsum(sae.W_dec_normalized, W, "inst d_sae d_in, inst d_in feats -> inst d_sae feats").max(1).values


@torch.no_grad()
def shrinkage(sae: ToySAE, n: int = 20_000, seed: int = 0) -> dict[str, Tensor]:
    """On inputs with exactly one active feature (h = x_i W_i), the reconstruction's length along the input over the
    input's, ⟨ĥ, h⟩/‖h‖² averaged over inputs (1 = no shrinkage, below 1 = the SAE under-reconstructs), and L0 on the model's ordinary inputs."""
    torch.manual_seed(seed)
    cfg = sae.model.cfg
    x = torch.zeros(n, cfg.n_inst, cfg.n_features)
    which = torch.randint(0, cfg.n_features, (n, cfg.n_inst))
    x.scatter_(-1, which[..., None], torch.rand(n, cfg.n_inst, 1) * 0.8 + 0.2)
    h = sae.hidden(x)
    h_hat = sae(h)[3]
    ratio = ((h_hat * h).sum(-1) / (h * h).sum(-1)).mean(0)
    acts = sae(sae.generate_batch(n))[2]
    return {"ratio": ratio, "l0": (acts > 0).float().sum(-1).mean(0)}


def ratio_at_l0(l0: Tensor, ratio: Tensor, at: float) -> float:
    """A sweep's shrinkage ratio interpolated, linearly in log L0, at the L0 `at` (which the sweep must bracket)."""
    order = torch.argsort(l0)
    x, y = l0[order].log().numpy(), ratio[order].numpy()
    assert x[0] <= np.log(at) <= x[-1], f"the sweep's L0 {l0.tolist()} must bracket {at}"
    return float(np.interp(np.log(at), x, y))


# ---------------------------------------------------------------- the experiment


@dataclass(frozen=True)
class RecoveryRun:
    n_inst: int = 8
    d_sae: int = 10
    feature_probability: float = 0.025
    sparsity_coeff: float = 0.2
    steps: int = 6_000
    batch_size: int = 512
    lr: float = 3e-3
    resample_freq: int = 1_000
    resample_window: int = 250
    seed: int = 0


def train_recovery(run: RecoveryRun, architecture: str, resample_method: str | None) -> tuple[ToySAE, dict]:
    model = arena_toy_model(run.n_inst, run.feature_probability, seed=run.seed)
    torch.manual_seed(run.seed + 1)
    cfg = ToySAEConfig(n_inst=run.n_inst, d_in=2, d_sae=run.d_sae, sparsity_coeff=run.sparsity_coeff,
                       architecture=architecture)
    sae = make_sae(cfg, model)
    log = sae.optimize(batch_size=run.batch_size, steps=run.steps, lr=run.lr, lr_scale=linear_lr,
                       resample_method=resample_method, resample_freq=run.resample_freq,
                       resample_window=run.resample_window)
    return sae, log


@dataclass(frozen=True)
class ShrinkageRun:
    """One batched run per architecture: the instances sweep the sparsity coefficient (log-spaced)."""

    coeffs: dict = field(default_factory=lambda: {"standard": (-2.5, 0.0), "gated": (-2.5, 0.0),
                                                  "jumprelu": (-2.0, 1.0)})
    n_coeffs: int = 8
    d_sae: int = 5
    feature_probability: float = 0.025
    steps: int = 4_000
    batch_size: int = 512
    lr: float = 3e-3
    jumprelu_init_threshold: float = 0.05     # the toy's activations are O(1): a window of 1e-3 around θ
    jumprelu_bandwidth: float = 0.05          # catches too few of them for θ to learn (L0 stayed at 2 to 4)
    seed: int = 0

    def coefficients(self, architecture: str) -> Tensor:
        lo, hi = self.coeffs[architecture]
        return torch.logspace(lo, hi, self.n_coeffs)


def train_sweep(run: ShrinkageRun, architecture: str) -> ToySAE:
    coeffs = run.coefficients(architecture)
    model = arena_toy_model(run.n_coeffs, run.feature_probability, seed=run.seed)
    torch.manual_seed(run.seed + 1)
    cfg = ToySAEConfig(n_inst=run.n_coeffs, d_in=2, d_sae=run.d_sae, architecture=architecture,
                       jumprelu_init_threshold=run.jumprelu_init_threshold, jumprelu_bandwidth=run.jumprelu_bandwidth)
    cfg.sparsity_coeff = coeffs          # one coefficient per instance: the loss broadcasts it over the batch
    sae = make_sae(cfg, model)
    sae.optimize(batch_size=run.batch_size, steps=run.steps, lr=run.lr, lr_scale=linear_lr,
                 resample_method="advanced", resample_freq=1_000, resample_window=250)
    return sae


def run_experiment(out_dir: Path, fast: bool = False) -> dict:
    """Recovery of the five ground-truth features with and without resampling (standard SAE), then the shrinkage of
    L1 against Gated and JumpReLU SAEs across sparsity coefficients (compared at equal L0)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    results: dict = {}
    with single_thread():
        rec = RecoveryRun(steps=1_500, resample_freq=500) if fast else RecoveryRun()
        results["recovery_run"] = asdict(rec)
        fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), constrained_layout=True)
        for method in (None, "simple", "advanced"):
            sae, log = train_recovery(rec, "standard", method)
            r = feature_recovery(sae)
            dead = dead_latents(log["frac_active_last_window"])
            results[f"resample_{method or 'none'}"] = {
                "max_cos": r.tolist(), "min_max_cos": r.min().item(),
                "n_recovered": (r > 0.99).sum(-1).tolist(), "n_recovered_95": (r > 0.95).sum(-1).tolist(),
                "n_dead_final": dead.sum(-1).tolist(), "n_dead_final_total": int(dead.sum()),
                "n_resampled_total": sum(e["n"] for e in log["resampled"]),
                "frac_dead_curve": log["frac_dead"], "steps": log["step"], "resampled": log["resampled"]}
            axes[0].plot(log["step"], log["frac_dead"], label=f"resample: {method or 'none'}")
            axes[1].plot(log["step"], log["loss"], label=f"resample: {method or 'none'}")
            axes[2].plot(range(rec.n_inst), r.min(-1).values.numpy(), "o", label=f"resample: {method or 'none'}")
        axes[0].set_xlabel("step")
        axes[0].set_ylabel(f"fraction of latents dead (last {rec.resample_window} steps)")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("loss per instance")
        axes[1].set_yscale("log")
        axes[2].set_xlabel("instance")
        axes[2].set_ylabel("worst feature: max cosine with a decoder row")
        for ax in axes:
            ax.legend(fontsize=8)
        fig.suptitle(f"A standard SAE ({rec.d_sae} latents) on 5 features in 2-d: dead latents and resampling", fontsize=10)
        fig.savefig(out_dir / "figures/resampling.png", dpi=110)
        plt.close(fig)

        sweep = ShrinkageRun(steps=1_500) if fast else ShrinkageRun()
        results["shrinkage_run"] = {**asdict(sweep), "coeffs": {k: list(v) for k, v in sweep.coeffs.items()}}
        true_l0 = 5 * sweep.feature_probability
        fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
        for architecture in ("standard", "gated", "jumprelu"):
            sae = train_sweep(sweep, architecture)
            s = shrinkage(sae)
            rec_ = feature_recovery(sae)
            l0, ratio = s["l0"], s["ratio"]
            at = int((l0 - true_l0).abs().argmin())
            results[f"shrinkage_{architecture}"] = {
                "coefficients": sweep.coefficients(architecture).tolist(), "l0": l0.tolist(), "ratio": ratio.tolist(),
                "min_max_cos": rec_.min(-1).values.tolist(),
                "at_true_l0": {"coefficient": sweep.coefficients(architecture)[at].item(), "l0": l0[at].item(),
                               "ratio": ratio[at].item(), "min_max_cos": rec_[at].min().item()},
                "ratio_at_true_l0": ratio_at_l0(l0, ratio, true_l0)}
            order = torch.argsort(l0)                     # L0 need not be monotone in λ (JumpReLU's is not)
            ax.plot(l0[order].numpy(), ratio[order].numpy(), "o-", label=architecture)
        ax.axvline(true_l0, color="grey", ls=":", lw=1, label=f"true L0 = {true_l0:g}")
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("L0 (active latents per input)")
        ax.set_ylabel("⟨ĥ, h⟩ / ‖h‖² on one-feature inputs")
        ax.set_title("Shrinkage: L1 against Gated and JumpReLU SAEs", fontsize=10)
        ax.legend(fontsize=8)
        fig.savefig(out_dir / "figures/shrinkage.png", dpi=110)
        plt.close(fig)

    results["wall_seconds"] = time.perf_counter() - wall0
    results["cpu_seconds"] = time.process_time() - cpu0
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
