"""The gate of day 69 (ARENA 1.5.4, SAEs on the superposition toy model: ToySAE with W_dec_normalized, forward,
resample_simple and resample_advanced; Gated and JumpReLU SAEs with their custom autograd functions).

References: sae-lens 6's StandardSAE, GatedSAE and JumpReLUSAE (inference forward passes) and its GatedTrainingSAE
losses and JumpReLU/Step autograd functions, loaded with our weights; torch.autograd.gradcheck in float64 for the
custom functions where they are differentiable; the rectangle-kernel pseudo-derivative against its definition (a
central difference of the batch sum with step ε, an exact count); checks.gradcheck for the SAE losses. Day 67's
ToyModel is imported, not copied. The trained claims (dead latents without and with resampling, recovery of every
ground-truth feature, shrinkage of L1 against Gated and JumpReLU at the true L0) on a fast variant of the recipe
(~15 s), in the committed results.json, and (slow) in a rerun of run_experiment.
"""

import importlib
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from checks.committed import assert_reproduces, exact, float_ops, statistical
from checks.gradcheck import grad_check
from checks.timing import single_thread

from . import sae_superposition as T

HERE = Path(__file__).parent
sp = importlib.import_module("days.067.superposition")


@pytest.fixture(scope="module", autouse=True)
def one_thread_module():
    with single_thread():
        yield


def random_sae(architecture: str, n_inst: int = 3, d_sae: int = 6, seed: int = 0) -> T.ToySAE:
    """An SAE on ARENA's toy, every parameter randomised (biases too, so that no term is silently zero)."""
    torch.manual_seed(seed)
    model = T.arena_toy_model(n_inst, 0.3, seed=seed)
    sae = T.make_sae(T.ToySAEConfig(n_inst=n_inst, d_in=2, d_sae=d_sae, architecture=architecture,
                                    jumprelu_init_threshold=0.05, jumprelu_bandwidth=0.01), model)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if not name.startswith("model.") and ("b_" in name or "r_mag" in name):
                p.normal_(0, 0.1)
    return sae


# ---------------------------------------------------------------- the forward passes against sae-lens


def test_W_dec_normalized_and_tied_weights():
    """ARENA 1.5.4, W_dec_normalized: every decoder row has unit norm (1e-6) and points along W_dec's row; with tied
    weights W_dec is W_encᵀ (the same storage, no copy)."""
    sae = random_sae("standard")
    Wn = sae.W_dec_normalized
    torch.testing.assert_close(Wn.norm(dim=-1), torch.ones(3, 6), atol=1e-6, rtol=0)
    cos = torch.nn.functional.cosine_similarity(Wn, sae.W_dec, dim=-1)
    torch.testing.assert_close(cos, torch.ones(3, 6), atol=1e-6, rtol=0)
    tied = T.ToySAE(T.ToySAEConfig(n_inst=3, d_in=2, d_sae=6, tied_weights=True), sae.model)
    assert tied._W_dec is None and tied.W_dec.data_ptr() == tied.W_enc.data_ptr()


@pytest.mark.parametrize("architecture", ["standard", "gated", "jumprelu"])
def test_forward_equals_sae_lens(architecture, measure):
    """ARENA 1.5.4, ToySAE.forward (and the gated and JumpReLU forwards): per instance, our latents and reconstruction
    equal sae-lens's StandardSAE / GatedSAE / JumpReLUSAE (apply_b_dec_to_input, W_dec = our normalised decoder,
    threshold = our θ) on the same hidden vectors (1e-6: the same float32 products)."""
    from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    sae = random_sae(architecture)
    h = sae.generate_batch(256)
    _, _, acts, h_hat = sae(h)
    worst = 0.0
    for k in range(sae.cfg.n_inst):
        if architecture == "gated":
            theirs = GatedSAE(GatedSAEConfig(d_in=2, d_sae=6))
            state = {"W_enc": sae.W_gate[k], "b_gate": sae.b_gate[k], "r_mag": sae.r_mag[k], "b_mag": sae.b_mag[k]}
        elif architecture == "jumprelu":
            theirs = JumpReLUSAE(JumpReLUSAEConfig(d_in=2, d_sae=6))
            state = {"W_enc": sae.W_enc[k], "b_enc": sae.b_enc[k], "threshold": sae.theta[k]}
        else:
            theirs = StandardSAE(StandardSAEConfig(d_in=2, d_sae=6))
            state = {"W_enc": sae.W_enc[k], "b_enc": sae.b_enc[k]}
        state |= {"W_dec": sae.W_dec_normalized[k], "b_dec": sae.b_dec[k]}
        with torch.no_grad():
            for name, value in state.items():
                getattr(theirs, name).data.copy_(value)
            z = theirs.encode(h[:, k])
            torch.testing.assert_close(acts[:, k], z, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(h_hat[:, k], theirs.decode(z), atol=1e-6, rtol=1e-5)
            worst = max(worst, (h_hat[:, k] - theirs.decode(z)).abs().max().item())
        assert (z > 0).any() and (z == 0).any()       # both regimes exercised
    measure(f"{architecture}.vs_sae_lens.max_abs_err", worst, "≤ 1e-6")


def test_gated_losses_equal_sae_lens_training_losses():
    """Rajamanoharan et al. 2024 / ARENA 1.5.4, the gated loss: our L1 on ReLU(π_gate) (with unit decoder rows) and
    auxiliary reconstruction equal sae-lens's GatedTrainingSAE.calculate_aux_loss (its aux sums over d_in where ours
    averages: a factor d_in = 2); our aux gradient stops at the decoder (the paper's frozen copy), sae-lens's does not."""
    from sae_lens.saes.gated_sae import GatedTrainingSAE, GatedTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    sae = random_sae("gated")
    h = sae.generate_batch(128)
    loss_dict, _, _, _ = sae(h)
    for k in range(sae.cfg.n_inst):
        theirs = GatedTrainingSAE(GatedTrainingSAEConfig(d_in=2, d_sae=6, l1_coefficient=1.0))
        with torch.no_grad():
            for name, value in {"W_enc": sae.W_gate[k], "b_gate": sae.b_gate[k], "r_mag": sae.r_mag[k],
                                "b_mag": sae.b_mag[k], "W_dec": sae.W_dec_normalized[k], "b_dec": sae.b_dec[k]}.items():
                getattr(theirs, name).data.copy_(value)
            step = TrainStepInput(sae_in=h[:, k], coefficients={"l1": 1.0}, dead_neuron_mask=None, n_training_steps=0,
                                 is_logging_step=False)
            feats, pre = theirs.encode_with_hidden_pre(h[:, k])
            aux = theirs.calculate_aux_loss(step, feats, pre, theirs.decode(feats))
        torch.testing.assert_close(loss_dict["L_sparsity"][:, k].mean(), aux["l1_loss"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(2 * loss_dict["L_aux"][:, k].mean(), aux["auxiliary_reconstruction_loss"],
                                   rtol=1e-5, atol=1e-7)
    sae.zero_grad()
    sae(h)[0]["L_aux"].sum().backward()
    assert sae._W_dec.grad is None or torch.all(sae._W_dec.grad == 0)


# ---------------------------------------------------------------- the custom autograd functions


def _inputs_outside_window(theta: torch.Tensor, eps: float, n: int, seed: int) -> torch.Tensor:
    """float64 pre-activations at least ε from θ (so the step is locally constant and the rectangle kernel zero)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *theta.shape), generator=g, dtype=torch.float64) * 2
    near = (x - theta).abs() < eps
    return torch.where(near, x + 3 * eps, x)


def test_custom_functions_pass_gradcheck_in_float64():
    """ARENA 1.5.4, Heaviside and JumpReLU as torch.autograd.Functions: torch.autograd.gradcheck (float64, central
    differences, its default tolerances) passes for x and θ where the functions are differentiable (x at least ε
    from θ: there the true derivative in θ is 0 and so is the pseudo-derivative), for JumpReLU's x-gradient H(x - θ)
    in particular."""
    eps = 0.01
    theta = torch.tensor([[0.3, 0.7, 1.1]], dtype=torch.float64).requires_grad_(True)
    x = _inputs_outside_window(theta.detach(), eps, 8, seed=0).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, t: T.JumpReLU.apply(a, t, eps), (x, theta))
    assert torch.autograd.gradcheck(lambda a, t: T.Heaviside.apply(a, t, eps), (x, theta))


def test_pseudo_derivatives_equal_their_definition_and_sae_lens():
    """Rajamanoharan et al. 2024, the rectangle-kernel pseudo-derivatives: ∂/∂θ Σ_b H(x_b - θ) = -(1/ε)·#{|x_b - θ|
    < ε/2}, which is exactly the central difference (Σ H(x - θ - ε/2) - Σ H(x - θ + ε/2))/ε of the batch sum; the
    JumpReLU's is -(θ/ε)·#{…}, and the central difference of Σ x H(x - θ) is -(1/ε) Σ_window x_b, which differs by at
    most the count/2; both equal sae-lens's Step and JumpReLU backward (ste_to_input=False), gradient to x
    included (1e-12, float64)."""
    from sae_lens.saes.jumprelu_sae import JumpReLU as TheirJumpReLU
    from sae_lens.saes.jumprelu_sae import Step

    eps = 0.05
    g = torch.Generator().manual_seed(1)
    theta = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    x = theta + (torch.rand((4000, 3), generator=g, dtype=torch.float64) - 0.5) * 0.4
    count = ((x - theta).abs() < eps / 2).sum(0).double()
    assert torch.all(count > 50)
    for fn, theirs, per_count in ((T.Heaviside, Step, lambda t: 1 / eps), (T.JumpReLU, TheirJumpReLU, lambda t: t / eps)):
        t1 = theta.clone().requires_grad_(True)
        x1 = x.clone().requires_grad_(True)
        fn.apply(x1, t1, eps).sum().backward()
        torch.testing.assert_close(t1.grad, -per_count(theta) * count, atol=1e-12, rtol=0)
        t2 = theta.clone().requires_grad_(True)
        x2 = x.clone().requires_grad_(True)
        theirs.apply(x2, t2, eps, False).sum().backward()
        torch.testing.assert_close(t1.grad, t2.grad, atol=1e-12, rtol=0)
        torch.testing.assert_close(x1.grad, x2.grad if x2.grad is not None else torch.zeros_like(x), atol=0, rtol=0)
    with torch.no_grad():
        fd_step = ((x > theta + eps / 2).double().sum(0) - (x > theta - eps / 2).double().sum(0)) / eps
        window = ((x - theta).abs() < eps / 2).double()
        fd_jump = (x * (x > theta + eps / 2) - x * (x > theta - eps / 2)).sum(0) / eps
    torch.testing.assert_close(fd_step, -count / eps, atol=1e-9, rtol=0)
    torch.testing.assert_close(fd_jump, -(x * window).sum(0) / eps, atol=1e-9, rtol=0)
    assert torch.all((fd_jump + theta / eps * count).abs() <= count / 2 + 1e-9)


@pytest.mark.parametrize("architecture", ["standard", "gated", "jumprelu"])
def test_sae_loss_gradients_by_central_differences(architecture, measure):
    """ARENA 1.5.4, the SAEs' training losses: autograd's gradient of the float64 loss with respect to the encoder,
    decoder and biases equals central differences (checks.gradcheck; the JumpReLU's θ excluded, its gradient being
    the pseudo-derivative checked above). The gated SAE's auxiliary loss reads a frozen copy of the decoder, so its
    W_dec gradient is checked against the loss without that term and equals the full loss's autograd gradient exactly
    (the stop-gradient at work); its b_dec, both live and frozen in that term, is left out."""
    sae = random_sae(architecture, n_inst=1, d_sae=4).double()
    h = sae.hidden(sae.model.generate_batch(16).double())
    params = dict(sae.named_parameters())
    names = [n for n in params if not n.startswith("model.") and n != "log_theta"]
    decoder = ["_W_dec"] if architecture == "gated" else []
    if architecture == "gated":       # b_dec enters L_aux live (centring) and frozen (output): no loss has it as gradient
        names.remove("b_dec")

    def loss_with(values: dict, drop_aux: bool = False):
        loss_dict, loss, _, _ = torch.func.functional_call(sae, values, (h,))
        return loss - loss_dict["L_aux"].mean(0).sum() if drop_aux else loss

    checked = [n for n in names if n not in decoder]
    report = grad_check(lambda *v: loss_with(dict(zip(checked, v))), [params[n].detach() for n in checked],
                        names=checked, atol=1e-6, rtol=1e-5)
    measure.grad(report, f"{architecture}.loss")
    if decoder:
        report = grad_check(lambda *v: loss_with(dict(zip(decoder, v)), drop_aux=True),
                            [params[n].detach() for n in decoder], names=decoder, atol=1e-6, rtol=1e-5)
        measure.grad(report, f"{architecture}.loss_without_aux.decoder")
        full = torch.autograd.grad(sae(h)[1], [params[n] for n in decoder])
        no_aux = torch.autograd.grad(loss_with({}, drop_aux=True), [params[n] for n in decoder])
        for a, b in zip(full, no_aux):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- resampling


def test_resample_simple_touches_only_dead_latents():
    """ARENA 1.5.4, resample_simple: latents with zero activity over the whole window get a unit decoder row v, an
    encoder column resample_scale·v and b_enc = 0; latents active even once in the window keep their parameters."""
    sae = random_sae("standard")
    window = torch.rand(20, 3, 6)
    window[:, 0, 2] = 0
    window[:, 2, [1, 4]] = 0
    window[5, 1, 3] = 0.0                              # silent on some steps only: alive
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    assert sae.resample_simple(window, 0.5) == 3
    dead = T.dead_latents(window)
    Wd = sae.W_dec.detach()
    torch.testing.assert_close(Wd[dead].norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(sae.W_enc.detach().transpose(1, 2)[dead], 0.5 * Wd[dead])
    assert torch.all(sae.b_enc.detach()[dead] == 0)
    assert torch.equal(sae.W_enc.detach().transpose(1, 2)[~dead], before["W_enc"].transpose(1, 2)[~dead])
    assert torch.equal(Wd[~dead], before["_W_dec"][~dead])


def test_dead_means_never_fired_and_no_dead_latent_means_no_resampling():
    """A latent is dead only if it fired on no input in the whole window: one firing in 10⁸ inputs (a fraction of
    1e-8) keeps it alive. With no dead latent, resample_simple resamples none (returns 0) and changes nothing."""
    window = torch.zeros(4, 1, 3)
    window[2, 0, 1] = 1e-8
    window[:, 0, 2] = 0.5
    assert T.dead_latents(window).tolist() == [[True, False, False]]
    sae = random_sae("standard")
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    assert sae.resample_simple(torch.full((20, 3, 6), 0.1), 0.5) == 0
    assert all(torch.equal(p, before[n]) for n, p in sae.named_parameters())


def test_heaviside_and_jumprelu_are_zero_at_the_threshold():
    """Rajamanoharan et al. 2024: H(z) = 1[z > 0], so at x = θ exactly the step is 0 and JumpReLU(θ) = θ·H(0) = 0;
    just above θ both fire."""
    theta = torch.tensor([0.3, 0.5])
    x = torch.tensor([[0.3, 0.5], [0.30001, 0.50001]])
    assert T.Heaviside.apply(x, theta, 0.01).tolist() == [[0.0, 0.0], [1.0, 1.0]]
    assert T.JumpReLU.apply(x, theta, 0.01)[0].tolist() == [0.0, 0.0]
    assert T.JumpReLU.apply(x, theta, 0.01)[1].tolist() == x[1].tolist()


def test_ratio_at_l0_interpolates_in_log_l0_and_accepts_the_bracket_ends():
    """ratio_at_l0: linear in log L0 between the two sweep points around the target (geometric midpoint of 1 and 16
    is 4: halfway between their ratios), exact at a sweep point, the ends of the bracket included; outside, an
    error that says so."""
    l0, ratio = torch.tensor([16.0, 1.0, 64.0]), torch.tensor([0.8, 0.4, 1.0])
    assert T.ratio_at_l0(l0, ratio, 4.0) == pytest.approx(0.6, abs=1e-6)
    assert T.ratio_at_l0(l0, ratio, 1.0) == pytest.approx(0.4, abs=1e-7)
    with pytest.raises(AssertionError, match="must bracket"):
        T.ratio_at_l0(l0, ratio, 0.5)


def test_resample_advanced_uses_badly_reconstructed_inputs():
    """ARENA 1.5.4, resample_advanced: each dead latent's decoder row is the unit direction of some input h - b_dec of
    the batch (cosine 1 with one of them), drawn with probability ∝ loss² (an input reconstructed perfectly is never
    drawn), and its encoder column is that direction scaled to resample_scale × the live latents' mean encoder norm."""
    sae = random_sae("standard")
    window = torch.rand(20, 3, 6)
    window[:, 1, [0, 5]] = 0
    alive_norm = sae.W_enc.detach()[1][:, [1, 2, 3, 4]].norm(dim=0).mean()
    torch.manual_seed(7)
    h = sae.generate_batch(512)
    torch.manual_seed(7)
    assert sae.resample_advanced(window, 0.5, 512) == 2
    v = sae.W_dec.detach()[1, [0, 5]]
    dirs = (h[:, 1] - sae.b_dec.detach()[1])
    cos = (v @ dirs.T) / dirs.norm(dim=-1)
    assert torch.all(cos.max(-1).values > 1 - 1e-5)
    torch.testing.assert_close(sae.W_enc.detach()[1][:, [0, 5]].norm(dim=0), (0.5 * alive_norm).expand(2), rtol=1e-5,
                               atol=0)


# ---------------------------------------------------------------- the trained claims (a fast variant of the recipe)

FAST_RECOVERY = T.RecoveryRun(steps=1_500, batch_size=256, resample_freq=300, resample_window=150)
FAST_SWEEP = T.ShrinkageRun(steps=1_500, batch_size=256)


@pytest.fixture(scope="module")
def fast_recovery():
    """The recovery recipe of run_experiment, shortened: 8 instances of a 10-latent standard SAE, without and with
    (Anthropic's) resampling."""
    out = {}
    for method in (None, "advanced"):
        sae, log = T.train_recovery(FAST_RECOVERY, "standard", method)
        out[method] = {"cos": T.feature_recovery(sae), "dead": T.dead_latents(log["frac_active_last_window"]),
                       "log": log}
    return out


@pytest.fixture(scope="module")
def fast_shrinkage():
    """The shrinkage sweep of run_experiment, shortened: per architecture, 8 instances across sparsity coefficients."""
    out = {}
    for architecture in ("standard", "gated", "jumprelu"):
        sae = T.train_sweep(FAST_SWEEP, architecture)
        out[architecture] = T.shrinkage(sae)
    return out


def ratio_at_l0(s: dict, l0: float) -> float:
    return T.ratio_at_l0(s["l0"], s["ratio"], l0)


TRUE_L0 = 5 * FAST_SWEEP.feature_probability      # five features, each present with probability p


def test_resampling_revives_dead_latents(fast_recovery, measure):
    """ARENA 1.5.4, resampling: without it some of the 8 × 10 latents die (silent on every input of the last 150
    steps: at least 2 in the fast run, measured 5; 9 with seed 1); after Anthropic's resampling (none in the last
    window, so the count is a whole window after the last one) strictly fewer are dead (measured 0; 1 with seed 1),
    and latents were resampled on the way."""
    dead_none, dead_res = int(fast_recovery[None]["dead"].sum()), int(fast_recovery["advanced"]["dead"].sum())
    n_resampled = sum(e["n"] for e in fast_recovery["advanced"]["log"]["resampled"])
    measure("fast.dead_without_resampling", dead_none, "≥ 2")
    measure("fast.dead_with_resampling", dead_res, "< without")
    assert n_resampled > 0
    assert dead_none >= 2
    assert dead_res < dead_none


def test_resampled_sae_recovers_every_feature_to_cosine_0_85(fast_recovery, measure):
    """ARENA 1.5.4, feature recovery: with resampling, every one of the five ground-truth features of every instance
    has a decoder row at cosine ≥ 0.85 (measured 0.92; 0.89 to 0.94 over two seeds and two resampling periods in
    trials), and in every instance at least four at ≥ 0.95. ARENA's stronger reading (all five at ≥ 0.99 in every
    instance) does NOT hold for this recipe: see the post."""
    cos = fast_recovery["advanced"]["cos"]
    measure("fast.min_max_cos", cos.min(), "≥ 0.85")
    assert cos.min() >= 0.85
    assert ((cos >= 0.95).sum(-1) >= 4).all()


def test_l1_shrinks_more_than_gated_and_jumprelu_at_true_l0(fast_shrinkage, measure):
    """Rajamanoharan et al. 2024, shrinkage: on one-feature inputs, at the true L0 (5p = 0.125, interpolated in log
    L0 within each sweep) the L1 SAE's reconstruction ⟨ĥ, h⟩/‖h‖² is at least 0.2 below both the Gated and the
    JumpReLU SAE's (measured about 0.55 against 0.9): the L1 penalty shrinks, the other two do not."""
    r = {a: ratio_at_l0(s, TRUE_L0) for a, s in fast_shrinkage.items()}
    for a, v in r.items():
        measure(f"fast.ratio_at_true_l0.{a}", v)
    assert r["standard"] + 0.2 < r["gated"]
    assert r["standard"] + 0.2 < r["jumprelu"]


def test_shrinkage_and_recovery_measures_on_hand_built_saes():
    """The measures themselves. An SAE with latents ±e₁, ±e₂ (encoder = decoder, no biases) reconstructs every h
    exactly, since ReLU(u) - ReLU(-u) = u: shrinkage ratio 1; with the encoder halved, 1/2; with a bias no input
    overcomes, 0. An SAE whose decoder rows are the five features recovers each at cosine 1."""
    model = T.arena_toy_model(2, 0.025, seed=3)
    sae = T.ToySAE(T.ToySAEConfig(n_inst=2, d_in=2, d_sae=4), model)
    basis = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]).expand(2, 4, 2)
    with torch.no_grad():
        sae._W_dec.data = basis.clone()
        for scale, expected in ((1.0, 1.0), (0.5, 0.5)):
            sae.W_enc.data = scale * basis.transpose(-1, -2)
            torch.testing.assert_close(T.shrinkage(sae)["ratio"], torch.full((2,), expected), atol=1e-5, rtol=0)
        sae.b_enc.data.fill_(-2.0)
        torch.testing.assert_close(T.shrinkage(sae)["ratio"], torch.zeros(2), atol=1e-6, rtol=0)
        sae.b_enc.data.fill_(10.0)                   # every latent fires on every ordinary input (|W_enc h| < 10)
        torch.testing.assert_close(T.shrinkage(sae)["l0"], torch.full((2,), 4.0), atol=0, rtol=0)
    five = T.ToySAE(T.ToySAEConfig(n_inst=2, d_in=2, d_sae=5), model)
    with torch.no_grad():
        five._W_dec.data = 3.0 * model.W.transpose(-1, -2)
    torch.testing.assert_close(T.feature_recovery(five), torch.ones(2, 5), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- what the post cites


def committed_ratio_at_true_l0(block: dict, p: float) -> float:
    """The interpolated ratio at the true L0, recomputed from a sweep's committed per-instance lists."""
    return ratio_at_l0({"l0": torch.tensor(block["l0"]), "ratio": torch.tensor(block["ratio"])}, 5 * p)


def test_committed_numbers_are_consistent(committed):
    """results.json is run_experiment's with today's defaults: its runs are RecoveryRun()'s and ShrinkageRun()'s, its
    summaries are those of its own per-feature lists (exact: a min and counts), both figures exist, and the committed
    numbers carry the claims the post makes (dead latents only without resampling; every feature at cosine ≥ 0.9
    with resampling; L1 at least 0.2 below Gated and JumpReLU at the true L0)."""
    rec = T.RecoveryRun()
    assert committed["recovery_run"] == asdict(rec)
    sweep = committed["shrinkage_run"]
    assert sweep["steps"] == T.ShrinkageRun().steps and sweep["jumprelu_bandwidth"] == T.ShrinkageRun().jumprelu_bandwidth
    for method in ("none", "simple", "advanced"):
        block = committed[f"resample_{method}"]
        cos = torch.tensor(block["max_cos"])
        assert cos.shape == (rec.n_inst, 5)
        assert_reproduces(block["min_max_cos"], cos.min().item(), exact("the min of the same float32 list"),
                          name=f"{method}.min_max_cos")
        assert block["n_recovered"] == (cos > 0.99).sum(-1).tolist()
        assert block["n_dead_final_total"] == sum(block["n_dead_final"])
    assert committed["resample_none"]["n_dead_final_total"] >= 2
    for method in ("simple", "advanced"):
        assert committed[f"resample_{method}"]["n_dead_final_total"] < committed["resample_none"]["n_dead_final_total"]
        assert committed[f"resample_{method}"]["min_max_cos"] >= 0.9
    p = sweep["feature_probability"]
    r = {a: committed_ratio_at_true_l0(committed[f"shrinkage_{a}"], p) for a in ("standard", "gated", "jumprelu")}
    for a, v in r.items():
        assert_reproduces(committed[f"shrinkage_{a}"]["ratio_at_true_l0"], v,
                          float_ops(10, "float32", why="one log-linear interpolation of float32 values"),
                          name=f"{a}.ratio_at_true_l0")
    assert r["standard"] + 0.2 < min(r["gated"], r["jumprelu"])
    for name in ("resampling", "shrinkage"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_experiment_reproduces_the_committed_headlines(tmp_path, committed, measure):
    """(slow, ~70 CPU seconds) run_experiment again. Training is chaotic in float32 (another CPU's kernels change the
    rounding, and a resampling draw can change), so the tolerances are those of a second training run: the worst
    feature's cosine per resampling method within 0.05, the shrinkage ratio at the true L0 within 0.15 per
    architecture; and the claims themselves hold again (dead latents only without resampling, every feature at
    cosine ≥ 0.85 with it, L1 at least 0.2 below Gated and JumpReLU)."""
    now = T.run_experiment(tmp_path)
    measure("slow.wall_seconds", now["wall_seconds"])
    measure("slow.cpu_seconds", now["cpu_seconds"])
    for method in ("none", "simple", "advanced"):
        assert_reproduces(now[f"resample_{method}"]["min_max_cos"], committed[f"resample_{method}"]["min_max_cos"],
                          statistical(0.05, why="a second float32 training run"), name=f"{method}.min_max_cos")
    assert now["resample_none"]["n_dead_final_total"] >= 2
    for method in ("simple", "advanced"):
        assert now[f"resample_{method}"]["n_dead_final_total"] < now["resample_none"]["n_dead_final_total"]
        assert now[f"resample_{method}"]["min_max_cos"] >= 0.85
    p = now["shrinkage_run"]["feature_probability"]
    r = {a: committed_ratio_at_true_l0(now[f"shrinkage_{a}"], p) for a in ("standard", "gated", "jumprelu")}
    r_then = {a: committed_ratio_at_true_l0(committed[f"shrinkage_{a}"], p) for a in r}
    assert_reproduces(r, r_then, statistical(0.15, why="a second float32 training run"), name="ratio_at_true_l0")
    assert r["standard"] + 0.2 < min(r["gated"], r["jumprelu"])
