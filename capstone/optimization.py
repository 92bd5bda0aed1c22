"""Part 1B of the Gauntlet: training as optimisation (calculus of the loss).

- 1B.1 the gradient of the next-token cross-entropy with respect to the logits is
  softmax(z) − onehot(y) (divided by the number of positions for a mean loss);
- 1B.2 the size of one head's QK circuit (W_Q, W_K ∈ ℝ^{d_model×d_head}), of the Hessian of the
  loss with respect to it, and of what K-FAC stores instead, all read off the model's own tensors;
- 1B.3 second-order structure at a trained point: Hessian-vector products by double
  backpropagation (Pearlmutter's trick), checked against a central difference of gradients; the
  extreme Hessian eigenvalues of a parameter block by power iteration, checked against the exact
  Hessian's eigvalsh on a block small enough to build; the loss along the sharpest direction
  against the quadratic Taylor model L(θ + t v) ≈ L(θ) + t gᵀv + ½ t² vᵀHv.

Every function takes the model (any HookedTransformer) and a parameter block named by the
parameter's name and an index into it, e.g. ("blocks.0.attn.W_Q", (0, slice(None), slice(None))) for
layer 0, head 0's W_Q.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["cross_entropy_logit_grad", "extreme_eigenvalues", "float64_copy", "full_hessian", "gpt2_small_shapes", "gradient", "hvp", "hvp_finite_difference",
           "make_block_loss", "next_token_loss", "power_iteration", "qk_hessian_size", "run", "taylor_profile"]


def gpt2_small_shapes():
    """GPT-2 small's HookedTransformer on the meta device: every tensor has its real shape and no
    data, so sizes are read off the architecture itself at no cost (0.2 s, no memory)."""
    from transformer_lens import HookedTransformer

    from checks.models import gpt2_config

    with torch.device("meta"):
        return HookedTransformer(gpt2_config(device="meta"))


def float64_copy(model):
    """A deep copy of a HookedTransformer in float64 (cfg.dtype too: TransformerLens casts some
    activations to cfg.dtype, so converting the parameters alone breaks the forward pass)."""
    import copy

    twin = copy.deepcopy(model).to(torch.float64)
    twin.cfg.dtype = torch.float64
    return twin


# ---------------------------------------------------------------- 1B.1


def next_token_loss(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> Tensor:
    """L = −(1/N) Σ_{b,t} log softmax(z_{b,t})[x_{b,t+1}] over the N = batch·(pos − 1) predictions."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def cross_entropy_logit_grad(logits: Float[Tensor, "n d_vocab"], targets: Int[Tensor, "n"]) -> Float[Tensor, "n d_vocab"]:
    """∂L/∂z for L = −(1/n) Σ_i log softmax(z_i)[y_i]:  (softmax(z_i) − e_{y_i}) / n.

    Derivation: log softmax(z)[y] = z_y − log Σ_j e^{z_j}, so ∂/∂z_k = δ_{ky} − p_k. A gradient
    step z ← z − η ∂L/∂z raises the correct logit by η(1 − p_y)/n and lowers every other logit k
    by η p_k/n: probability mass moves to the correct token, taken from each wrong token in
    proportion to the mass it holds; the entries of each row sum to zero.
    """
    p = logits.softmax(-1)
    return (p - F.one_hot(targets, logits.shape[-1]).to(p.dtype)) / logits.shape[0]


# ---------------------------------------------------------------- 1B.2


def qk_hessian_size(model, layer: int = 0, head: int = 0, bytes_per_entry: int = 4) -> dict:
    """Sizes for one head's QK circuit, read off the model's own tensors (works on a meta-device model).

    N = |W_Q[h]| + |W_K[h]| = 2·d_model·d_head parameters (biases b_Q, b_K add 2·d_head where the
    model has them); the Hessian ∂²L/∂θ² is N × N, N² entries, bytes_per_entry·N² bytes. K-FAC
    approximates the Fisher/Hessian block of each weight matrix W (y = xW) by the Kronecker product
    A ⊗ G of A = E[x xᵀ] (d_in × d_in) and G = E[g gᵀ] (d_out × d_out, g = ∂L/∂y): d_in² + d_out²
    entries instead of (d_in·d_out)², and its inverse is A⁻¹ ⊗ G⁻¹.
    """
    attn = model.blocks[layer].attn
    W_Q, W_K = attn.W_Q[head], attn.W_K[head]            # (d_model, d_head) each (W_K repeated for GQA)
    n = W_Q.numel() + W_K.numel()
    n_bias = attn.b_Q[head].numel() + attn.b_K[head].numel() if hasattr(attn, "b_Q") else 0
    d_in, d_out = W_Q.shape
    n_model = sum(p.numel() for p in model.parameters())
    kfac = 2 * (d_in ** 2 + d_out ** 2)
    return {
        "W_Q_shape": list(W_Q.shape), "W_K_shape": list(W_K.shape),
        "qk_parameters": n, "qk_bias_parameters": n_bias,
        "hessian_shape": [n, n], "hessian_entries": n * n,
        "hessian_bytes": bytes_per_entry * n * n, "hessian_gib": bytes_per_entry * n * n / 2 ** 30,
        "hessian_unique_entries": n * (n + 1) // 2,
        "model_parameters": n_model, "model_hessian_entries": n_model ** 2,
        "model_hessian_bytes": bytes_per_entry * n_model ** 2,
        "kfac_entries": kfac, "kfac_bytes": bytes_per_entry * kfac,
        "kfac_compression": n * n / kfac,
        "hvp_memory_entries": n,               # a Hessian-vector product needs only N numbers
    }


# ---------------------------------------------------------------- 1B.3 Hessian-vector products


def make_block_loss(model, tokens: Int[Tensor, "batch pos"], name: str, index: tuple
                    ) -> tuple[Callable[[Tensor], Tensor], Float[Tensor, "n"]]:
    """(L(θ), θ₀): the next-token loss as a function of a flat parameter block, all else fixed.

    The block is ``param[index]`` of the parameter called ``name``; θ is written into a copy of
    the parameter (a differentiable slice assignment) and the model is called functionally, so
    autograd sees L as a function of θ alone, twice differentiable.
    """
    param = dict(model.named_parameters())[name]
    base = param.detach()
    theta0 = base[index].reshape(-1).clone()
    shape = base[index].shape

    def loss_fn(theta: Tensor) -> Tensor:
        full = base.to(theta.dtype).clone()
        full[index] = theta.reshape(shape)
        logits = torch.func.functional_call(model, {name: full}, (tokens,))
        return next_token_loss(logits, tokens)

    return loss_fn, theta0


def hvp(loss_fn: Callable[[Tensor], Tensor], theta: Float[Tensor, "n"], v: Float[Tensor, "n"]) -> Float[Tensor, "n"]:
    """H v = ∇_θ (∇_θ L · v) by double backpropagation (Pearlmutter 1994): the cost of about two
    gradients, memory O(N), no Hessian formed."""
    theta = theta.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(theta), theta, create_graph=True)
    (Hv,) = torch.autograd.grad(g @ v, theta)
    return Hv.detach()


def gradient(loss_fn: Callable[[Tensor], Tensor], theta: Float[Tensor, "n"]) -> Float[Tensor, "n"]:
    theta = theta.detach().requires_grad_(True)
    return torch.autograd.grad(loss_fn(theta), theta)[0].detach()


def hvp_finite_difference(loss_fn: Callable[[Tensor], Tensor], theta: Float[Tensor, "n"], v: Float[Tensor, "n"],
                          eps: float = 1e-4) -> Float[Tensor, "n"]:
    """(∇L(θ + εv) − ∇L(θ − εv)) / 2ε = H v + O(ε²): the reference for hvp."""
    return (gradient(loss_fn, theta + eps * v) - gradient(loss_fn, theta - eps * v)) / (2 * eps)


def full_hessian(loss_fn: Callable[[Tensor], Tensor], theta: Float[Tensor, "n"]) -> Float[Tensor, "n n"]:
    """The exact N × N Hessian, column i = H e_i by a Hessian-vector product (for small blocks).

    Not symmetrised: H − Hᵀ measures the rounding of the double backward (eigvalsh reads one triangle).
    """
    eye = torch.eye(theta.numel(), dtype=theta.dtype)
    return torch.stack([hvp(loss_fn, theta, eye[i]) for i in range(theta.numel())], dim=1)


def power_iteration(matvec: Callable[[Tensor], Tensor], n: int, dtype=torch.float32, iters: int = 100,
                    rtol: float = 1e-4, shift: float = 0.0, seed: int = 0) -> dict:
    """The eigenvalue of largest |λ| of the symmetric map v ↦ matvec(v) − shift·v, by power iteration.

    v_{k+1} = A v_k / ‖A v_k‖ converges to the top eigenvector at rate |λ_2/λ_1| per step; the
    Rayleigh quotient λ = v_kᵀ A v_k converges twice as fast. Stops when λ changes by less than
    rtol·|λ|. Returns λ (with the shift added back), v, the residual ‖A v − λ v‖/|λ| and the history.
    """
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=generator, dtype=dtype)
    v /= v.norm()
    history: list[float] = []
    Av = matvec(v) - shift * v
    for _ in range(iters):
        lam = (v @ Av).item()
        history.append(lam + shift)
        v = Av / Av.norm()
        Av = matvec(v) - shift * v
        if len(history) > 1 and abs(history[-1] - history[-2]) < rtol * abs(history[-1]):
            break
    lam = (v @ Av).item()
    residual = ((Av - lam * v).norm() / abs(lam)).item()
    history.append(lam + shift)
    return {"eigenvalue": lam + shift, "vector": v, "residual": residual, "iterations": len(history) - 1,
            "history": history}


def extreme_eigenvalues(matvec: Callable[[Tensor], Tensor], n: int, dtype=torch.float32, iters: int = 100,
                        rtol: float = 1e-4, seed: int = 0) -> dict:
    """λ_max and λ_min of a symmetric operator with two power iterations.

    The first finds λ₁, the eigenvalue of largest magnitude. The spectrum of A − λ₁I lies in
    [λ_min − λ₁, λ_max − λ₁], all on one side of 0, so its largest-magnitude eigenvalue is the
    other end of A's spectrum (shifted by λ₁).
    """
    first = power_iteration(matvec, n, dtype, iters, rtol, seed=seed)
    second = power_iteration(matvec, n, dtype, iters, rtol, shift=first["eigenvalue"], seed=seed + 1)
    top, bottom = sorted([first, second], key=lambda r: r["eigenvalue"], reverse=True)
    return {"max": top, "min": bottom, "largest_magnitude": first}


def taylor_profile(loss_fn: Callable[[Tensor], Tensor], theta: Float[Tensor, "n"], direction: Float[Tensor, "n"],
                   ts: Tensor) -> dict:
    """L(θ + t d) along a unit direction d, against the second-order Taylor model
    L(θ) + t gᵀd + ½ t² dᵀHd (g, H at θ)."""
    d = direction / direction.norm()
    with torch.no_grad():
        losses = torch.stack([loss_fn(theta + t * d) for t in ts])
    g = gradient(loss_fn, theta)
    curvature = (d @ hvp(loss_fn, theta, d)).item()
    slope = (g @ d).item()
    L0 = losses[len(ts) // 2].item() if ts[len(ts) // 2] == 0 else loss_fn(theta).item()
    quadratic = L0 + slope * ts + 0.5 * curvature * ts ** 2
    return {"t": ts, "loss": losses, "quadratic": quadratic, "slope": slope, "curvature": curvature}


# ---------------------------------------------------------------- run


def _wikitext_batch(tokenizer, n_seq: int, seq_len: int) -> Tensor:
    import importlib

    tl_setup = importlib.import_module("days.035.tl_setup")
    return tl_setup.wikitext_tokens(tokenizer, n_seq, seq_len)


def _plot_taylor(profiles: dict[str, dict], eig: dict, label: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"top eigenvector": "C3", "random direction": "C0"}
    for name, p in profiles.items():
        t = p["t"].numpy()
        ax1.plot(t, p["loss"].numpy(), color=colours[name], label=f"{name}: L(θ* + t d)")
        ax1.plot(t, p["quadratic"].numpy(), color=colours[name], ls="--",
                 label=f"{name}: quadratic model (dᵀHd = {p['curvature']:.3g})")
    ax1.set(xlabel="step t along the unit direction d", ylabel="next-token loss (nats)",
            title="Loss along the sharpest vs a random direction")
    ax1.legend(fontsize=7)
    for name, r in (("λ_max", eig["max"]), ("λ_min", eig["min"])):
        ax2.plot(range(len(r["history"])), r["history"], marker=".", label=f"{name} → {r['eigenvalue']:.4g}")
    ax2.set(xlabel="power iteration", ylabel="Rayleigh quotient", title="Power iteration on H (one head's W_Q)")
    ax2.legend(fontsize=8)
    fig.suptitle(f"1B.3 Curvature at the trained parameters ({label})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run(out_dir: Path, model_name: str = "smollm2", layer: int = 0, head: int = 0, n_seq: int = 1,
        seq_len: int = 32, max_iters: int = 20) -> dict:
    """1B on the trained model (curvature of one head's W_Q on WikiText-2) and GPT-2 small's sizes.

    Each Hessian-vector product through SmolLM2 costs about three forward passes, so the power
    iterations on the full head (36,864 parameters) are capped at ``max_iters`` steps with a
    relative tolerance of 1e-3 (their residual ‖Hv − λv‖/|λ| is reported); the exact check runs on
    a 16-parameter corner of the same W_Q, whose Hessian is built column by column.
    """
    from .models import MODELS, load

    figures = Path(out_dir) / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    out: dict = {"qk_size": {"model": "GPT-2 small (architecture on the meta device: shapes, no weights)",
                             **qk_hessian_size(gpt2_small_shapes(), layer, head)}}
    model = load(model_name)
    label = MODELS[model_name].label
    out["qk_size_" + model_name] = {"model": label, **qk_hessian_size(model, layer, head)}
    tokens = _wikitext_batch(model.tokenizer, n_seq, seq_len)
    name = f"blocks.{layer}.attn.W_Q"
    loss_fn, theta = make_block_loss(model, tokens, name, (head,))

    # 1B.1 on real logits: the closed form against autograd
    with torch.no_grad():
        logits = model(tokens)
    flat_logits, targets = logits[:, :-1].flatten(0, 1).double(), tokens[:, 1:].flatten()
    z = flat_logits.clone().requires_grad_(True)
    F.cross_entropy(z, targets).backward()
    ce_err = (cross_entropy_logit_grad(flat_logits, targets) - z.grad).abs().max().item()

    # 1B.3 a Hessian-vector product against a finite difference of gradients (float32: ε = 1e-2)
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(theta.numel(), generator=generator)
    v /= v.norm()
    Hv = hvp(loss_fn, theta, v)
    fd = hvp_finite_difference(loss_fn, theta, v, eps=1e-2)
    eig = extreme_eigenvalues(lambda u: hvp(loss_fn, theta, u), theta.numel(), iters=max_iters, rtol=1e-3)

    # the exact check: a corner W_Q[layer, head, :4, :4] small enough to build its Hessian
    small_fn, small_theta = make_block_loss(model, tokens, name, (head, slice(0, 4), slice(0, 4)))
    H_small = full_hessian(small_fn, small_theta).double()
    exact = torch.linalg.eigvalsh(0.5 * (H_small + H_small.T))
    small_hvp = hvp(small_fn, small_theta, torch.ones(small_theta.numel()) / 4).double()
    small_eig = extreme_eigenvalues(lambda u: H_small @ u, small_theta.numel(), torch.float64, iters=2000, rtol=1e-12)

    # steps where the quadratic model predicts a rise of ½λ_max t² ≤ 0.2 nats along the top eigenvector
    ts = torch.linspace(-1.0, 1.0, 11) * math.sqrt(0.4 / max(abs(eig["max"]["eigenvalue"]), 1e-6))
    profiles = {"top eigenvector": taylor_profile(loss_fn, theta, eig["max"]["vector"], ts),
                "random direction": taylor_profile(loss_fn, theta, v, ts)}
    _plot_taylor(profiles, eig, label, figures / "part1b_sharpness.png")

    def profile_json(p):
        return {"t": p["t"].tolist(), "loss": p["loss"].tolist(), "slope": p["slope"], "curvature": p["curvature"],
                "max_quadratic_error": (p["loss"] - p["quadratic"]).abs().max().item()}

    out["curvature"] = {
        "model": label, "block": f"{name}[{head}]", "n_parameters": theta.numel(),
        "tokens": list(tokens.shape), "loss": loss_fn(theta).item(),
        "ce_logit_grad_max_abs_err": ce_err,
        "hvp_vs_fd_rel_err": ((Hv - fd).norm() / Hv.norm()).item(), "hvp_fd_eps": 1e-2,
        "lambda_max": eig["max"]["eigenvalue"], "lambda_min": eig["min"]["eigenvalue"],
        "lambda_max_residual": eig["max"]["residual"], "lambda_min_residual": eig["min"]["residual"],
        "lambda_max_iterations": eig["max"]["iterations"], "lambda_min_iterations": eig["min"]["iterations"],
        "random_direction_curvature": profiles["random direction"]["curvature"],
        "sharpness_ratio": eig["max"]["eigenvalue"] / abs(profiles["random direction"]["curvature"]),
        "gradient_norm": gradient(loss_fn, theta).norm().item(),
        "small_block": {"index": f"W_Q[{layer}, {head}, :4, :4]", "n_parameters": small_theta.numel(),
                        "exact_max": exact[-1].item(), "exact_min": exact[0].item(),
                        "power_max": small_eig["max"]["eigenvalue"], "power_min": small_eig["min"]["eigenvalue"],
                        "rel_err_max": abs(small_eig["max"]["eigenvalue"] - exact[-1].item()) / abs(exact[-1].item()),
                        "hvp_vs_hessian_column_sum_err": (small_hvp - H_small @ (torch.ones(16, dtype=torch.float64) / 4)
                                                          ).abs().max().item(),
                        "asymmetry": (H_small - H_small.T).abs().max().item()},
        "profiles": {k.replace(" ", "_"): profile_json(p) for k, p in profiles.items()},
    }
    return out
