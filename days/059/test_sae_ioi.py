"""The gate of day 59 (ARENA 1.4.2 SAE circuits on the IOI task: which SAE latents carry the names).

Subjects: SmolLM2-135M-Instruct on day 53's IOI prompts, and a small TopK SAE at ``blocks.16.hook_resid_pre`` trained
here in seconds (day 57's gate recipe); the slow test reruns the experiment with day 57's layer-16 SAE.

References: TransformerLens's own forward pass (the spliced SAE with its error term must leave the logit difference
unchanged), the plain model's gradient at ``blocks.16.hook_resid_pre`` (a TransformerLens hook makes the residual an
autograd leaf; the gradient is turned into latent attributions by the chain rule through the decoder, by hand), TransformerLens hooks that subtract a latent's decoder write from the
residual stream (exact ablation by a second route), and finite differences (the attribution is a derivative).

Tolerances. SmolLM2 runs in float32: a logit is ≈ 210 000 roundings deep, checks.committed.SMOLLM2_LOGIT_REL (2.2e-4)
relative to the logits' scale bounds two routes to the same logit; gradients through the same blocks get the same
bound relative to their scale.
"""

import importlib

import pytest
import torch

from checks.committed import SMOLLM2_LOGIT_REL, assert_reproduces, statistical

from . import sae_ioi as M

fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module
pytestmark = pytest.mark.asset("smollm2-135m-instruct", "wikitext-2", "tinyshakespeare")

N = 6


@pytest.fixture(scope="module")
def setup():
    """SmolLM2, the gate SAE at layer 16, 6 IOI prompts, their attributions, and the plain model's logits and gradient
    at layer 16 (one forward and backward pass from the tokens, TransformerLens hooks, no SAE)."""
    from checks.models import hooked_model

    model = hooked_model("smollm2")
    sae = M.gate_sae(model)
    ds = M.ioi.IOIDataset("mixed", N, model.tokenizer, seed=3)
    end = ds.word_idx["end"]
    out = M.latent_attribution(model, sae, ds.toks, ds.answer_tokens, end)
    store = {}

    def leaf(act, hook):                  # the plain model's residual at layer 16 as a leaf: its gradient, by autograd
        store["x"] = act.detach().requires_grad_(True)
        return store["x"]

    with M.sae_circuits.frozen(model), model.hooks(fwd_hooks=[("blocks.16.hook_resid_pre", leaf)]):
        logits = model(ds.toks)
        M.ioi.logits_to_ave_logit_diff(logits, ds.answer_tokens, per_prompt=True, end=end).sum().backward()
    out["plain_logits"], out["plain_grad"] = logits.detach(), store["x"].grad
    return model, sae, ds, out


def test_spliced_sae_with_error_leaves_the_logit_difference(setup, measure):
    """The SAE is spliced in with its error term, so the LD it differentiates is the model's own: equal to
    TransformerLens's plain forward pass within SMOLLM2_LOGIT_REL of the logits' scale; and the SAE alone (no error
    term) would change it. ablated_ld with no latent ablated gives the same LD, with or without the residual stream
    passed in."""
    model, sae, ds, out = setup
    end = ds.word_idx["end"]
    logits = out["plain_logits"]
    ref = M.ioi.logits_to_ave_logit_diff(logits, ds.answer_tokens, per_prompt=True, end=end)
    err = (out["ld"] - ref).abs().max().item()
    measure("spliced_ld.max_abs_err", err, f"≤ {SMOLLM2_LOGIT_REL:.1e}·max|logit|")
    assert err <= SMOLLM2_LOGIT_REL * logits.abs().max().item()
    kept = M.ablated_ld(model, sae, ds.toks, ds.answer_tokens, end, [], resid=out["resid"])
    assert (kept - ref).abs().max() <= SMOLLM2_LOGIT_REL * logits.abs().max().item()
    # without resid, ablated_ld computes the residual stream itself: the same LD
    fresh = M.ablated_ld(model, sae, ds.toks, ds.answer_tokens, end, [])
    assert (fresh - ref).abs().max() <= SMOLLM2_LOGIT_REL * logits.abs().max().item()
    assert sae.d_sae == 256 and sae.sae.cfg.k == 8   # gate_sae's SAE: 256 latents, k = 8 (its docstring)
    with torch.no_grad():
        recon = M.sae_circuits.splice(sae, out["acts"], out["sink"], out["resid"])
        sae_only = M.ioi.logits_to_ave_logit_diff(model(recon, start_at_layer=16), ds.answer_tokens, per_prompt=True,
                                                  end=end)
    measure("sae_without_error.max_abs_ld_change", (sae_only - ref).abs().max())
    assert (sae_only - ref).abs().max() > 1e-2
    assert (out["acts"][out["sink"]] == 0).all() and out["sink"][:, 0].all()


def test_attribution_is_activation_times_gradient_by_the_chain_rule(setup, measure):
    """Gradient × activation: a[p, j] · ∂LD/∂a[p, j] equals a[p, j] · (W_dec[j] · ∂LD/∂x[p]) with ∂LD/∂x[p] taken in
    the plain model (no SAE), the residual at blocks.16.hook_resid_pre made an autograd leaf by a TransformerLens hook, and W_dec in the model's units
    (day 57's encoder_decoder): the chain rule through the decoder, by hand."""
    model, sae, ds, out = setup
    grads = {"x": out["plain_grad"]}
    _, W_dec = M.sae_circuits.encoder_decoder(sae)
    ref = out["acts"] * torch.einsum("bpd,jd->bpj", grads["x"], W_dec.detach())
    scale = ref.abs().max().item()
    err = (out["attr"] - ref).abs().max().item() / scale
    measure("attribution_vs_chain_rule.max_rel_err", err, f"≤ {SMOLLM2_LOGIT_REL:.1e}")
    assert scale > 0 and err <= SMOLLM2_LOGIT_REL
    assert ((out["attr"] != 0) <= (out["acts"] > 0)).all()          # only active latents are attributed


def test_attributions_add_up_to_the_residual_stream(setup, measure):
    """The linear identity behind the attribution: at every position, Σ_j attr[p, j] + ε[p]·g[p] + b_dec·g[p] =
    x[p]·g[p] (g = ∂LD/∂x, ε the error term, b_dec the decoder bias in the model's units); the sinks keep their true
    residual (no latent, no error) and are counted whole."""
    _, sae, _, out = setup
    g = out["grad"]
    b_dec = sae.decode(torch.zeros(1, sae.d_sae))[0].detach()
    kept = (out["resid"] * g).sum(-1) * out["sink"]                    # a sink keeps its true residual: its own node
    lhs = out["attr"].sum(-1) + (out["err"] * g).sum(-1) + (b_dec * g).sum(-1) * (~out["sink"]) + kept
    rhs = (out["resid"] * g).sum(-1)
    scale = (out["resid"].abs() * g.abs()).sum(-1).max().item()
    err = (lhs - rhs).abs().max().item() / scale
    measure("attribution_completeness.max_rel_err", err)
    assert err <= SMOLLM2_LOGIT_REL


def test_ablated_ld_equals_subtracting_the_decoder_write(setup, measure):
    """Exact ablation: zeroing latent j at each prompt's IO position (error kept) gives the LD that TransformerLens
    gives when a hook subtracts a[p, j]·W_dec[j] from blocks.16.hook_resid_pre there; and it moves LD."""
    model, sae, ds, out = setup
    end, pos = ds.word_idx["end"], ds.word_idx["IO"]
    rows = torch.arange(N)
    j = M.top_latents(M.by_role(out["attr"], ds)["IO"], 1)[0]
    ours = M.ablated_ld(model, sae, ds.toks, ds.answer_tokens, end, [(pos, j)], resid=out["resid"])
    _, W_dec = M.sae_circuits.encoder_decoder(sae)
    write = out["acts"][rows, pos, j][:, None] * W_dec[j].detach()

    def subtract(act, hook):
        act = act.clone()
        act[rows, pos] -= write
        return act

    with torch.no_grad():
        logits = model.run_with_hooks(ds.toks, fwd_hooks=[("blocks.16.hook_resid_pre", subtract)])
    ref = M.ioi.logits_to_ave_logit_diff(logits, ds.answer_tokens, per_prompt=True, end=end)
    err = (ours - ref).abs().max().item()
    measure("ablation_vs_hook.max_abs_err", err)
    assert err <= SMOLLM2_LOGIT_REL * logits.abs().max().item()
    assert (ours - out["ld"]).abs().max() > 1e-2


def test_scaled_ablation_converges_to_the_attribution(setup, measure):
    """The attribution is the derivative of an ablation: shrinking the top IO latent by a fraction ε moves LD by
    −ε·attr + O(ε²), so the finite-difference estimate's error falls about linearly with ε (ε = 0.4 → 0.2: at least
    by a third), and at ε = 0.2 it is within 25 % of the attribution on the mean over prompts."""
    model, sae, ds, out = setup
    end, pos = ds.word_idx["end"], ds.word_idx["IO"]
    roles = M.by_role(out["attr"], ds)
    j = M.top_latents(roles["IO"], 1)[0]
    attr = roles["IO"][:, j].mean().item()
    fd = {}
    for eps in (0.4, 0.2):
        ld = M.ablated_ld(model, sae, ds.toks, ds.answer_tokens, end, [(pos, j)], scale=1 - eps, resid=out["resid"])
        fd[eps] = -(ld - out["ld"]).mean().item() / eps
    measure("fd_0.2_vs_attribution.rel", abs(fd[0.2] - attr) / abs(attr), "≤ 0.25")
    assert abs(fd[0.2] - attr) <= 0.67 * abs(fd[0.4] - attr) + 1e-3 * abs(attr)
    assert abs(fd[0.2] - attr) <= 0.25 * abs(attr)


def test_by_role_reads_each_prompts_own_positions(setup):
    """by_role: the IO, S1, S2 and final positions are each prompt's own (the token there is the IO name, the subject
    name twice, and the last real token), and the roles plus "other" add up to the sum over positions."""
    _, _, ds, out = setup
    rows = torch.arange(N)
    assert torch.equal(ds.toks[rows, ds.word_idx["IO"]], ds.io_tokenIDs)
    assert torch.equal(ds.toks[rows, ds.word_idx["S1"]], ds.s_tokenIDs)
    assert torch.equal(ds.toks[rows, ds.word_idx["S2"]], ds.s_tokenIDs)
    roles = M.by_role(out["attr"], ds)
    total = sum(roles.values())
    assert torch.allclose(total, out["attr"].sum(1), atol=1e-5 * out["attr"].abs().sum(1).max().item())
    assert torch.equal(roles["IO"], out["attr"][rows, ds.word_idx["IO"]])


def test_committed_claims(committed, measure):
    """What the post claims, as results.json holds it: ablating the top-k latents at the IO position lowers LD with a
    95 % interval below zero and below the control's (k random latents active there); the first-order prediction has
    the right sign; the roles' shares add up to 1."""
    for role in ("IO", "S2"):
        a = committed[f"ablate_{role}"]
        assert a["measured"][2] < 0 and a["measured"][2] < a["control_measured"][1]
        assert a["predicted"][2] < 0
    assert abs(sum(committed["role_share"].values()) - 1) < 1e-6
    measure("committed.ablate_IO.measured", committed["ablate_IO"]["measured"][0])


@pytest.mark.slow
def test_experiment_reproduces(committed, measure, tmp_path):
    """(slow: the experiment with day 57's layer-16 SAE, from the user cache or trained) The same latents are chosen
    and the LD, attribution and ablation means reproduce: a fixed model and SAE in float32, so only rounding differs;
    LD-sized numbers within 0.02 (≈ SMOLLM2_LOGIT_REL × a largest logit of ~40, ×2 for two logits)."""
    now = M.run_experiment(tmp_path)
    tol = statistical(0.02, why="float32 rounding of LD-sized means (SMOLLM2_LOGIT_REL × |logit| ≲ 40, two logits)")
    for key in ("ld", "latent_attr_total"):
        assert_reproduces(now[key], committed[key], tol, name=key)
    for role in ("IO", "S2", "end"):
        a, b = now[f"ablate_{role}"], committed[f"ablate_{role}"]
        assert a["latents"] == b["latents"] and a["control_latents"] == b["control_latents"]
        for key in ("measured", "predicted", "control_measured"):
            assert_reproduces(a[key], b[key], tol, name=f"ablate_{role}.{key}")
    measure("slow.wall_seconds", now["wall_seconds"])
