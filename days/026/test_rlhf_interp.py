"""The gate of day 26: RLHF through an interpretability lens (ARENA 2.4's RLHF model, inspected).

Spec: the day's topic done properly: compare the tuned and the reference model (which layers moved,
weight-change norms, residual-stream differences) and probe the residual stream for the reward with
held-out R². References: torch.linalg.norm for the weight norms; the causal structure of a residual
network (a change in block l cannot reach x_0 … x_l) on planted perturbations; exact identities of the
swap attribution (nothing swapped: 0; everything: 1); scikit-learn's Ridge and r2_score for the probe,
and a planted linear signal whose population R² is known.
"""

import copy
import importlib
from pathlib import Path

import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from checks import assert_parity
from checks.committed import assert_reproduces, float_ops

from . import rlhf_interp as I

gpt2 = importlib.import_module("days.032.gpt2")
pytestmark = pytest.mark.usefixtures("one_thread")
HERE = Path(__file__).parent
F64 = torch.float64


def tiny(seed=0, layers=3):
    torch.manual_seed(seed)
    cfg = gpt2.Config(d_model=16, n_layers=layers, n_heads=2, d_head=8, d_mlp=32, n_ctx=16, d_vocab=7, init_range=0.3)
    return gpt2.DemoTransformer(cfg).double().eval()


def perturbed(model, prefix, scale=0.05, seed=1):
    """A copy with Gaussian noise added to every parameter whose name starts with ``prefix``."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if name.startswith(prefix):
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return other


def tokens(n=6, seq=12, seed=0):
    return torch.randint(0, 7, (n, seq), generator=torch.Generator().manual_seed(seed))


def test_components_partition_the_parameters():
    """The components (embed; per layer attn with ln1 and mlp with ln2; unembed with ln_final) cover every
    parameter of a DemoTransformer exactly once."""
    model = tiny()
    prefixes = I.components(model.cfg)
    assert list(prefixes) == ["embed", "L0_attn", "L0_mlp", "L1_attn", "L1_mlp", "L2_attn", "L2_mlp", "unembed"]
    for name, _ in model.named_parameters():
        assert sum(name.startswith(p) for group in prefixes.values() for p in group) == 1, name


def test_weight_changes_are_relative_frobenius_norms(measure):
    """weight_changes = ‖ΔW‖_F / ‖W‖_F over each component's parameters (torch.linalg.norm of the flattened
    concatenation, 1e-12); 0 everywhere for an identical copy; only the perturbed component moves."""
    ref = tiny()
    assert all(v == 0 for v in I.weight_changes(ref, copy.deepcopy(ref)).values())
    new = perturbed(ref, "blocks.1.mlp.")
    changes = I.weight_changes(ref, new)
    keys = [k for k, _ in ref.named_parameters() if k.startswith(("blocks.1.ln2.", "blocks.1.mlp."))]
    r, n = dict(ref.named_parameters()), dict(new.named_parameters())
    expected = (torch.linalg.norm(torch.cat([(n[k] - r[k]).flatten() for k in keys]))
                / torch.linalg.norm(torch.cat([r[k].flatten() for k in keys]))).item()
    assert changes["L1_mlp"] == pytest.approx(expected, rel=1e-12)
    assert all(v == 0 for k, v in changes.items() if k != "L1_mlp")


@pytest.mark.parametrize("prefix, first_moved", [("blocks.1.attn.", 2), ("blocks.2.mlp.", 3), ("embed.", 0)])
def test_residual_difference_starts_where_the_weights_changed(prefix, first_moved):
    """Causal structure: perturbing block l leaves x_0 … x_l exactly unchanged and moves x_{l+1} onward; of the
    block writes only block l's and later ones differ (x_0 = embeddings, x_L = last block's output)."""
    ref = tiny()
    diffs = I.residual_differences(ref, perturbed(ref, prefix), tokens())
    assert all(d == 0 for d in diffs["residual"][:first_moved])
    assert all(d > 1e-4 for d in diffs["residual"][first_moved:])
    assert all(d == 0 for d in diffs["block_write"][:max(first_moved - 1, 0)])
    if first_moved:
        assert diffs["block_write"][first_moved - 1] > 1e-4


def test_residual_difference_is_relative_to_the_reference():
    """residual_differences is ‖x^tuned − x^ref‖ / ‖x^ref‖ averaged over positions: with the token and position
    embeddings tripled, x_0^tuned = 3·x_0^ref at every position, so the embedding's entry is ‖2x‖/‖x‖ = 2 (1e-12)."""
    ref = tiny()
    tripled = copy.deepcopy(ref)
    with torch.no_grad():
        tripled.embed.W_E.mul_(3)
        tripled.pos_embed.W_pos.mul_(3)
    assert I.residual_differences(ref, tripled, tokens())["residual"][0] == pytest.approx(2.0, abs=1e-12)


def test_swap_attribution_identities(measure):
    """recovered(none) = 0 and recovered(all) = 1 (the hybrid with every component swapped IS the tuned model:
    its KL to the tuned model is 0); with only block 1's MLP changed, swapping it alone recovers 1 and every other
    component 0 (1e-12)."""
    ref = tiny()
    new = perturbed(perturbed(ref, "blocks.0.attn.", seed=2), "unembed.", seed=3)
    out = I.swap_attribution(ref, new, tokens(), prefix_len=3)
    assert out["none"] == 0 and out["all"] == pytest.approx(1.0, abs=1e-12)
    assert I.mean_token_kl(new, I.swap_components(ref, new, list(I.components(ref.cfg))), tokens(), 3) == pytest.approx(0, abs=1e-15)
    only = perturbed(ref, "blocks.1.mlp.")
    single = I.swap_attribution(ref, only, tokens(), prefix_len=3)
    assert single["L1_mlp"] == pytest.approx(1.0, abs=1e-12)
    assert all(abs(v) < 1e-12 for k, v in single.items() if k not in ("L1_mlp", "all"))


def test_ridge_probe_matches_sklearn(measure):
    """RidgeProbe equals sklearn.linear_model.Ridge (coefficients, intercept and predictions, 1e-9) for several α, and r_squared
    equals sklearn.metrics.r2_score (1e-12)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 12, generator=g, dtype=F64) * torch.linspace(0.1, 3, 12, dtype=F64)
    y = X @ torch.randn(12, generator=g, dtype=F64) + 0.5 * torch.randn(200, generator=g, dtype=F64) + 3
    worst = 0.0
    for alpha in (1e-3, 1.0, 50.0):
        ours = I.RidgeProbe.fit(X, y, alpha)
        theirs = Ridge(alpha=alpha).fit(X.numpy(), y.numpy())
        worst = max(worst, assert_parity(ours.w, theirs.coef_, atol=1e-9).max_abs_err, abs(ours.b - theirs.intercept_))
        pred = ours.predict(X)
        assert_parity(pred, theirs.predict(X.numpy()), atol=1e-9)   # ŷ = X·w + b
        assert I.r_squared(y, pred) == pytest.approx(r2_score(y.numpy(), pred.numpy()), abs=1e-12)
    measure("ridge_vs_sklearn.max_abs_err", worst, "≤ 1e-9")
    assert worst < 1e-9


def test_probe_recovers_a_planted_signal(measure):
    """On a planted linear signal y = w·x + ε with population R² = Var(w·x)/(Var(w·x) + σ²) = 0.8, probe_layers' held-out
    R² is within 0.05 of 0.8 for the informative layer and below 0.05 for a layer of pure noise."""
    g = torch.Generator().manual_seed(1)
    n, d = 2000, 16
    signal_layer = torch.randn(n, d, generator=g, dtype=F64)
    w = torch.randn(d, generator=g, dtype=F64)
    w = w / w.norm() * 2.0  # Var(w·x) = 4, σ² = 1: population R² 0.8
    y = signal_layer @ w + torch.randn(n, generator=g, dtype=F64)
    noise_layer = torch.randn(n, d, generator=g, dtype=F64)
    order = torch.randperm(n, generator=g)
    rows = I.probe_layers(torch.stack([noise_layer, signal_layer]), y, order[: n // 2], order[n // 2:])
    measure("planted.signal_test_r2", rows[1]["test_r2"], "0.8 ± 0.05")
    assert rows[1]["test_r2"] == pytest.approx(0.8, abs=0.05)
    assert rows[0]["test_r2"] < 0.05


def test_probe_chooses_alpha_on_validation(measure):
    """probe_layers picks α by validation R²: on a target that is pure noise, independent of X (d = 40 features,
    100 training samples), every fitted direction only adds variance to the prediction, and ridge's shrinkage grows
    with α, so the largest α (100) wins; on an exact linear target (no noise) the least shrinkage (1e-2) wins."""
    g = torch.Generator().manual_seed(0)
    n, d = 200, 40
    X = torch.randn(n, d, generator=g, dtype=F64)
    noise, exact = torch.randn(n, generator=g, dtype=F64), X @ torch.randn(d, generator=g, dtype=F64)
    order = torch.randperm(n, generator=g)
    assert I.probe_layers(X[None], noise, order[:100], order[100:])[0]["alpha"] == 100.0
    assert I.probe_layers(X[None], exact, order[:100], order[100:])[0]["alpha"] == 1e-2


# ‖W_tuned − W_ref‖_F / ‖W_ref‖_F: the difference and the squares are elementwise (the same bits everywhere),
# the sums of ≤ 33 000 float32 squares are not: torch sums on the CPU in a cascade of 4 levels of ≤ 16 terms
# (below 2^19 terms), so each term meets ≲ 64 roundings, whatever order the kernels take; the sqrt and the
# ratio add a few more. All terms are positive, so the bound is relative: float_ops(70, float32) ≈ 3e-5.
WEIGHT_CHANGE_TOL = float_ops(70, "float32", why="float32 cascade sums of positive squares (≲ 64 roundings per term)")


def test_results_json_is_current(committed, measure):
    """results.json came from day 25's saved models: the weight changes are recomputed from them now (to 3e-5
    relative: float32 sums of squares, WEIGHT_CHANGE_TOL), the
    residual differences start at x_0 only if the embeddings moved, the swap attribution runs from 0 (none) to 1
    (all), the probe numbers are R² values of held-out halves (≤ 1) for every layer and both readouts, and the
    headline holds (check_headline)."""
    results = committed
    reference, policy, tok, meta = I.day25_models()
    now = I.weight_changes(reference, policy.backbone)
    measure("weight_change_vs_committed", assert_reproduces(now, results["weight_change"], WEIGHT_CHANGE_TOL,
                                                             name="weight_change"), "≤ 1 (fraction of the tolerance)")
    att = results["swap_attribution"]
    assert att["none"] == 0 and att["all"] == pytest.approx(1.0, abs=1e-6)
    for kind in ("pooled", "last"):
        for name in ("reference", "tuned"):
            assert len(results["probes"][kind][name]) == reference.cfg.n_layers + 1
            assert all(r["test_r2"] <= 1 for r in results["probes"][kind][name])
    best = results["best_probe"]["pooled"]
    measure("experiment.most_changed_component", results["most_changed_component"])
    measure("experiment.best_pooled_probe_r2_tuned", best["tuned"]["test_r2"])
    measure("experiment.best_pooled_probe_r2_reference", best["reference"]["test_r2"])
    measure("experiment.value_head_corr", results["value_head"]["test_corr"])
    check_headline(results)
    assert (HERE / "figures/rlhf_lens.png").stat().st_size > 10_000


def check_headline(results):
    """Every component moved by less than 10% of its norm, yet one component alone recovers at least 40% of
    the KL (the most among single swaps, and more than twice the least); the pooled probe reads the reward
    with R² ≥ 0.3 in both models and already at x_0, within 0.1 of the best layer."""
    weights, att = results["weight_change"], results["swap_attribution"]
    singles = {k: v for k, v in att.items() if k not in ("none", "all")}
    assert max(weights.values()) < 0.10
    assert max(singles.values()) >= 0.40 and max(singles.values()) > 2 * min(singles.values())
    for name in ("reference", "tuned"):
        rows = results["probes"]["pooled"][name]
        assert rows[0]["test_r2"] >= 0.3 and max(r["test_r2"] for r in rows) - rows[0]["test_r2"] < 0.1


@pytest.mark.slow
def test_experiment_headline(tmp_path, measure):
    """Slow: the whole analysis of day 25's models (sampling, weight and activation changes, swaps, reward
    probes with day 24's reward model) reproduces the headline of check_headline."""
    results = I.run_experiment(tmp_path)
    measure("slow.best_single_swap", max(v for k, v in results["swap_attribution"].items() if k not in ("none", "all")))
    measure("slow.experiment_seconds", results["experiment_seconds"])
    check_headline(results)
