"""The gate of Part 1B (training as optimisation).

References: torch.autograd (the logit gradient, the exact Hessian by
``torch.autograd.functional.hessian``), central differences of gradients (the Hessian-vector
product), ``torch.linalg.eigvalsh`` (the power iteration), and closed forms (2·d_model·d_head,
the Taylor remainder's O(t³) law). Second-order checks run in float64 on a small GPT-2-style
TransformerLens model (2 layers, d_model 16, 4 heads of 4, vocabulary 97), where a Hessian-vector
product costs milliseconds; the identities do not depend on the size. The sizes of 1B.2 are read
off GPT-2 small's real architecture (instantiated on the meta device: shapes without weights).
"""

import pytest
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from checks import assert_parity
from checks.models import gpt2_config

from . import optimization as O


@pytest.fixture(scope="module")
def toy():
    """A float64 GPT-2-style model with TransformerLens's own initialisation, and a token batch."""
    cfg = gpt2_config(n_layers=2, d_model=16, n_heads=4, d_head=4, d_mlp=64, d_vocab=97, n_ctx=32,
                      dtype=torch.float64, seed=1)
    model = HookedTransformer(cfg).eval()
    tokens = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(0))
    return model, tokens


@pytest.fixture(scope="module")
def head_block(toy):
    """L(θ) for θ = layer 0, head 0's W_Q (16 × 4 = 64 parameters), its exact Hessian."""
    model, tokens = toy
    loss_fn, theta = O.make_block_loss(model, tokens, "blocks.0.attn.W_Q", (0,))
    return loss_fn, theta, O.full_hessian(loss_fn, theta)


def test_cross_entropy_logit_gradient_is_softmax_minus_onehot(measure):
    """1B.1 ∂L/∂z = (softmax(z) − onehot(y))/n equals autograd's gradient of F.cross_entropy (mean)
    in float64 (atol 1e-15); each row sums to 0, the correct logit's entry is the only negative one."""
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(12, 50, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 50, (12,), generator=generator)
    z = logits.clone().requires_grad_(True)
    F.cross_entropy(z, targets).backward()
    ours = O.cross_entropy_logit_grad(logits, targets)
    measure.parity(assert_parity(ours, z.grad, atol=1e-15, name="1b.ce_logit_grad"))
    assert_parity(ours.sum(-1), torch.zeros(12, dtype=torch.float64), atol=1e-16)
    negative = ours < 0
    assert torch.equal(negative, F.one_hot(targets, 50).bool())


def test_gradient_step_moves_mass_to_the_correct_token():
    """1B.1 interpretation: a small step z − η∂L/∂z raises p(correct) and lowers every wrong token's
    logit by η·p_k/n, i.e. in proportion to the probability it holds."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 30, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 30, (5,), generator=generator)
    g = O.cross_entropy_logit_grad(logits, targets)
    eta = 0.1
    stepped = logits - eta * g
    p_before = logits.softmax(-1).gather(1, targets[:, None])
    p_after = stepped.softmax(-1).gather(1, targets[:, None])
    assert (p_after > p_before).all()
    wrong = ~F.one_hot(targets, 30).bool()
    assert_parity((logits - stepped)[wrong], (eta * logits.softmax(-1) / 5)[wrong], atol=1e-15)


def test_qk_hessian_size_from_gpt2_small_shapes(measure):
    """1B.2 one head's QK circuit in GPT-2 small (read off the architecture): W_Q and W_K are 768 × 64,
    N = 2·768·64 = 98,304 parameters; the Hessian is N × N = 9,663,676,416 entries, 38.7 GB in float32;
    K-FAC's two Kronecker factors per matrix hold 2·(768² + 64²) = 1,187,840 numbers."""
    shapes = O.gpt2_small_shapes()
    size = O.qk_hessian_size(shapes, layer=0, head=0)
    attn = shapes.blocks[0].attn
    assert size["W_Q_shape"] == list(attn.W_Q[0].shape) == [768, 64] == size["W_K_shape"]
    assert size["qk_parameters"] == attn.W_Q[0].numel() + attn.W_K[0].numel() == 2 * 768 * 64 == 98_304
    assert size["hessian_shape"] == [98_304, 98_304] and size["hessian_entries"] == 98_304 ** 2
    assert size["hessian_bytes"] == 4 * 98_304 ** 2 == 38_654_705_664
    assert size["qk_bias_parameters"] == 128
    assert size["kfac_entries"] == 2 * (768 ** 2 + 64 ** 2)
    assert size["model_parameters"] == sum(p.numel() for p in shapes.parameters())
    measure("1b.gpt2.qk_parameters", size["qk_parameters"], "= 2·768·64")
    measure("1b.gpt2.hessian_entries", size["hessian_entries"])
    measure("1b.gpt2.hessian_gib_float32", size["hessian_gib"])


def test_hvp_matches_finite_difference_of_gradients(head_block, measure):
    """1B.3 Hessian-vector product: double backpropagation equals the central difference
    (∇L(θ+εv) − ∇L(θ−εv))/2ε in float64 (ε = 1e-4, O(ε²) truncation: relative error < 1e-7), for
    two random unit directions; and Hv equals the exact Hessian (built column by column) times v."""
    loss_fn, theta, H = head_block
    generator = torch.Generator().manual_seed(3)
    worst = 0.0
    for _ in range(2):
        v = torch.randn(theta.numel(), generator=generator, dtype=torch.float64)
        v /= v.norm()
        Hv = O.hvp(loss_fn, theta, v)
        fd = O.hvp_finite_difference(loss_fn, theta, v, eps=1e-4)
        worst = max(worst, ((Hv - fd).norm() / Hv.norm()).item())
        assert_parity(Hv, H @ v, atol=1e-14)
    measure("1b.hvp_vs_fd.rel_err", worst, "< 1e-7")
    assert worst < 1e-7


def test_full_hessian_matches_autograd_hessian(toy, measure):
    """1B.3 the exact Hessian of a 32-parameter block (W_Q[0, 0, :8, :4]) built from Hessian-vector
    products equals torch.autograd.functional.hessian (atol 1e-14) and is symmetric."""
    model, tokens = toy
    loss_fn, theta = O.make_block_loss(model, tokens, "blocks.0.attn.W_Q", (0, slice(0, 8), slice(0, 4)))
    H = O.full_hessian(loss_fn, theta)
    ref = torch.autograd.functional.hessian(loss_fn, theta)
    measure.parity(assert_parity(H, ref, atol=1e-14, name="1b.full_hessian"))
    assert_parity(H, H.T, atol=1e-15)


def test_power_iteration_finds_extreme_eigenvalues(head_block, measure):
    """1B.3 sharpness: power iteration with Hessian-vector products finds λ_max of one head's W_Q block
    (64 parameters) as eigvalsh of the exact Hessian does (relative 1e-6), and the shifted iteration
    finds λ_min (run on the explicit matrix, same algorithm, relative 1e-6)."""
    loss_fn, theta, H = head_block
    exact = torch.linalg.eigvalsh(0.5 * (H + H.T))
    top = O.power_iteration(lambda u: O.hvp(loss_fn, theta, u), theta.numel(), torch.float64, iters=400, rtol=1e-10)
    rel = abs(top["eigenvalue"] - exact.abs().max().item()) / exact.abs().max().item()
    measure("1b.power_iteration.rel_err", rel, "< 1e-6")
    measure("1b.power_iteration.iterations", top["iterations"])
    assert rel < 1e-6
    both = O.extreme_eigenvalues(lambda u: H @ u, theta.numel(), torch.float64, iters=5000, rtol=1e-13)
    assert both["max"]["eigenvalue"] == pytest.approx(exact[-1].item(), rel=1e-6)
    assert both["min"]["eigenvalue"] == pytest.approx(exact[0].item(), rel=1e-6)


def test_taylor_remainder_is_third_order(head_block, measure):
    """1B.3 second-order Taylor expansion: L(θ + t d) − [L(θ) + t gᵀd + ½t² dᵀHd] = O(t³), so halving
    t divides the remainder by about 8 (between 6 and 10), while the first-order model's remainder
    shrinks only by about 4."""
    loss_fn, theta, H = head_block
    d = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ts = torch.tensor([-0.2, -0.1, 0.0, 0.1, 0.2], dtype=torch.float64)
    p = O.taylor_profile(loss_fn, theta, d, ts)
    assert p["curvature"] == pytest.approx(((d / d.norm()) @ H @ (d / d.norm())).item(), rel=1e-10)
    remainder = (p["loss"] - p["quadratic"]).abs()
    ratio = (remainder[4] / remainder[3]).item()
    first = (p["loss"] - (p["loss"][2] + p["slope"] * ts)).abs()
    measure("1b.taylor.remainder_ratio", ratio, "≈ 8 (t³)")
    assert 6 < ratio < 10
    assert 3 < (first[4] / first[3]).item() < 5


def test_committed_results_are_current(committed):
    """Report: the committed results.json (part1b) holds this code's GPT-2 small sizes (recomputed
    from the architecture; rerun `python -m capstone.gauntlet --parts part1b` if not)."""
    results = committed["part1b"]
    sizes = O.qk_hessian_size(O.gpt2_small_shapes())
    assert {k: results["qk_size"][k] for k in sizes} == sizes  # integers and single correctly rounded divisions: exact
    small = results["curvature"]["small_block"]
    assert small["rel_err_max"] < 1e-6 and results["curvature"]["hvp_vs_fd_rel_err"] < 0.05
