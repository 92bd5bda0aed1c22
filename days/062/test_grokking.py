"""The gate of day 62 (ARENA 1.5.2 Grokking: the modular-addition data, ARENA's one-layer model, training, the run).

References: TransformerLens's own forward pass and autograd for the fast last-position forward (logits and
gradients); torch's float64 cross-entropy for ``cross_entropy_high_precision``; Python's ``%`` for the labels;
a fast variant of the training run (p = 23, a few hundred steps) that must memorise its training pairs while
the test accuracy stays low; and the committed checkpoint, re-evaluated on its train/test split. ARENA downloads
its run; ours is trained by ``run_experiment`` and committed under models/ (the slow test trains it again).
"""

import importlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from checks import assert_parity
from checks.committed import assert_reproduces, exact, float_ops, statistical

from . import grokking as G

HERE = Path(__file__).parent

fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module


@pytest.fixture(scope="module")
def fast():
    """The fast variant, trained once for the module; the wall time measured around the call rides along in the
    log under "_measured_seconds"."""
    t0 = time.perf_counter()
    model, log = G.train(G.FAST)
    return model, {**log, "_measured_seconds": time.perf_counter() - t0}


@pytest.fixture(scope="module")
def committed_model():
    return G.load_grokking_model()


def random_biased_model(p: int, seed: int = 0):
    """ARENA's architecture with TransformerLens's random weights and random (non-zero) biases, so that the fast
    forward's handling of every parameter is exercised."""
    model = G.make_model(G.grokking_config(p, seed=seed))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
                param.requires_grad_(True)
    return model


# ---------------------------------------------------------------- data and model


def test_config_is_arenas_and_parameters_count():
    """ARENA's configuration: 1 layer, d_model 128, 4 heads of 32, d_mlp 512, ReLU, no normalisation, n_ctx 3,
    p + 1 tokens in, p classes out; the biases frozen at zero, so the trained parameters are
    (p + 1)·128 + 3·128 + 4·(4·128·32) + 2·128·512 + 128·p."""
    p = 113
    model = G.make_model(G.grokking_config(p))
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.n_ctx) == (1, 128, 4, 32, 512, 3)
    assert (cfg.act_fn, cfg.normalization_type, cfg.d_vocab, cfg.d_vocab_out) == ("relu", None, p + 1, p)
    trained = [q for q in model.parameters() if q.requires_grad]
    assert sum(q.numel() for q in trained) == (p + 1) * 128 + 3 * 128 + 4 * 4 * 128 * 32 + 2 * 128 * 512 + 128 * p
    biases = [q for n, q in model.named_parameters() if n.split(".")[-1].startswith("b_")]
    assert biases and all(not q.requires_grad and (q == 0).all() for q in biases)


@pytest.mark.parametrize("p", [7, 23])
def test_all_pairs_labels_and_split(p):
    """The data: all p² inputs [a, b, =] with "=" = p, in the order a·p + b; labels (a + b) mod p (Python's %);
    the split is a partition of the p² pairs with ⌊0.3·p²⌋ for training, reproducible from its seed, another
    seed another split."""
    tokens = G.all_pairs(p)
    assert tokens.shape == (p * p, 3) and (tokens[:, 2] == p).all()
    assert tokens[:, :2].tolist() == [[a, b] for a in range(p) for b in range(p)]
    assert G.labels_of(tokens, p).tolist() == [(a + b) % p for a in range(p) for b in range(p)]
    train, test = G.train_test_split(p, 0.3, seed=0)
    assert len(train) == int(0.3 * p * p) and len(train) + len(test) == p * p
    assert sorted(torch.cat([train, test]).tolist()) == list(range(p * p))
    assert torch.equal(G.train_test_split(p, 0.3, seed=0)[0], train)
    assert not torch.equal(G.train_test_split(p, 0.3, seed=1)[0], train)


def test_cross_entropy_high_precision():
    """cross_entropy_high_precision equals torch's cross-entropy computed in float64 (1e-12 relative), on float32
    logits; and it is why the float64 log-softmax is needed: on confident logits (margin 30) float32's
    cross-entropy rounds the loss to exactly 0, the float64 one keeps it (≈ (p − 1)e^{−30})."""
    gen = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(200, 23, generator=gen)
    labels = torch.randint(0, 23, (200,), generator=gen)
    ours = G.cross_entropy_high_precision(logits, labels)
    ref = F.cross_entropy(logits.double(), labels)
    assert ours.dtype == torch.float64 and abs(ours.item() - ref.item()) <= 1e-12 * ref.item()
    confident = torch.zeros(4, 23)
    confident[torch.arange(4), torch.arange(4)] = 30.0
    assert F.cross_entropy(confident, torch.arange(4)).item() == 0.0
    hp = G.cross_entropy_high_precision(confident, torch.arange(4)).item()
    assert hp == pytest.approx(math.log1p(22 * math.exp(-30)), rel=1e-6)


# A logit of the random model is a few thousand float32 roundings deep (128-term projections, 512-term MLP sums,
# the 3-way softmax); the two forwards order their sums differently: float_ops(4000, float32) of the largest logit.
FORWARD_REL = float_ops(4000, "float32").rel


@pytest.mark.parametrize("p", [23, 113])
def test_final_position_logits_match_transformer_lens(p, measure):
    """final_position_logits computes ARENA's model at the last position: its logits equal TransformerLens's
    model(tokens)[:, -1] (random weights and random non-zero biases; all p² inputs at p = 23, 2,000 at p = 113)
    within FORWARD_REL of the largest |logit|, and so do the gradients of the training loss with respect to every
    parameter (TransformerLens's autograd as the reference), relative to each gradient's largest entry."""
    model = random_biased_model(p)
    tokens = G.all_pairs(p)
    if p == 113:
        tokens = tokens[torch.randperm(p * p, generator=torch.Generator().manual_seed(0))[:2000]]
    ref = model(tokens)[:, -1]
    ours = G.final_position_logits(model, tokens)
    scale = ref.abs().max().item()
    report = assert_parity(ours, ref, atol=FORWARD_REL * scale)
    measure(f"p{p}.logits.max_abs_err", report.max_abs_err, f"≤ {FORWARD_REL:.1e}·{scale:.2f}")
    labels = G.labels_of(tokens, p)
    params = dict(model.named_parameters())
    g_ref = torch.autograd.grad(G.cross_entropy_high_precision(ref, labels), list(params.values()))
    g_ours = torch.autograd.grad(G.cross_entropy_high_precision(G.final_position_logits(model, tokens), labels),
                                 list(params.values()))
    # b_K shifts every score of a head by the same q·b_K, which the softmax ignores: its gradient is 0 up to rounding
    # in both computations, so each gradient is compared relative to max(its largest entry, 1e-3 · the largest entry
    # of any gradient).
    top = max(b.abs().max().item() for b in g_ref)
    worst = 0.0
    for name, a, b in zip(params, g_ours, g_ref):
        err = ((a - b).abs().max() / max(b.abs().max().item(), 1e-3 * top)).item()
        worst = max(worst, err)
        assert err <= 10 * FORWARD_REL, (name, err)
    measure(f"p{p}.grads.max_rel_err", worst, f"≤ {10 * FORWARD_REL:.1e}")


# ---------------------------------------------------------------- training


def test_grokking_summary_landmarks():
    """grokking_summary reads a history: the first step with train accuracy 1 (memorised), the test accuracy then,
    the first step with test accuracy ≥ 0.95 (grokked), the best test accuracy in between."""
    history = [{"step": s, "train_accuracy": tr, "test_accuracy": te, "train_loss": 0.0, "test_loss": 0.0}
               for s, tr, te in [(0, 0.1, 0.0), (100, 1.0, 0.05), (200, 1.0, 0.3), (300, 1.0, 0.97), (400, 1.0, 1.0)]]
    s = G.grokking_summary(history)
    assert (s["memorised_step"], s["test_accuracy_at_memorised"], s["grokked_step"]) == (100, 0.05, 300)
    assert s["max_test_accuracy_before_grok"] == 0.3 and s["final_test_accuracy"] == 1.0
    assert G.grokking_summary(history[:3])["grokked_step"] is None


def test_fast_training_memorises_before_it_generalises(fast, measure):
    """The training code works and shows grokking's first phase: FAST (p = 23, 30% of pairs, ARENA's
    hyper-parameters, full batch) reaches 100% train accuracy while its test accuracy stays low (≤ 0.5 at
    that step; chance is 1/23); the training loss falls by a factor ≥ 100 from initialisation; the
    history's numbers are those of ``evaluate`` on the returned model; its "seconds" (per record and for the run)
    are wall time elapsed since the start, within the time measured around the call."""
    model, log = fast
    s = G.grokking_summary(log["history"])
    measure("fast.memorised_step", s["memorised_step"])
    measure("fast.test_accuracy_at_memorised", s["test_accuracy_at_memorised"], "≤ 0.5")
    measure("fast.train_seconds", log["seconds"])
    assert s["memorised_step"] is not None and s["memorised_step"] < G.FAST.steps
    assert s["test_accuracy_at_memorised"] <= 0.5
    h = log["history"]
    assert h[0]["train_loss"] / h[-1]["train_loss"] >= 100
    now = G.evaluate(model, G.FAST.p, log["train_idx"], log["test_idx"])
    assert now["train_accuracy"] == h[-1]["train_accuracy"] and now["test_accuracy"] == h[-1]["test_accuracy"]
    # the run's seconds and each record's: elapsed wall time since the start, growing, within the measured time
    seconds = [e["seconds"] for e in h]
    assert 0 <= seconds[0] and seconds == sorted(seconds) and seconds[-1] <= log["seconds"] <= log["_measured_seconds"]
    assert 0 <= log["cpu_seconds"]


# The fast run is a float32 training run: on another CPU its trajectory differs in the last bits and drifts. Its
# accuracies reproduce up to 3 binomial standard errors on the 370 test pairs at p = 0.5 (0.078); the step at
# which it memorises within 3 evaluations (75 steps).
FAST_ACC_TOL = statistical(3 * math.sqrt(0.25 / (23 * 23 - int(0.3 * 23 * 23))), why="a float32 run's test accuracy")


def test_fast_run_reproduces_committed(fast, committed, measure):
    """results.json's fast run is today's code's: the configuration exactly, the test accuracy at every evaluation
    within FAST_ACC_TOL, the memorisation step within 3 evaluations."""
    _, log = fast
    assert committed["fast_config"] == json.loads(json.dumps(asdict(G.FAST)))
    then = committed["fast"]["history"]
    assert [h["step"] for h in log["history"]] == [h["step"] for h in then]
    worst = assert_reproduces([h["test_accuracy"] for h in log["history"]], [h["test_accuracy"] for h in then],
                              FAST_ACC_TOL, name="fast.test_accuracy")
    mem_now = G.grokking_summary(log["history"])["memorised_step"]
    assert abs(mem_now - committed["fast"]["summary"]["memorised_step"]) <= 3 * G.FAST.eval_every
    measure("fast_vs_committed", worst, "≤ 1 (fraction of the tolerance)")


# ---------------------------------------------------------------- the committed run


def test_checkpoint_files(committed):
    """The committed toy: at most 1 MB, with its configuration (ARENA's, at the committed p), seeds, the commit
    that trained it, the training config and its metrics beside it; results.json agrees with it."""
    assert G.CHECKPOINT.stat().st_size <= 1_000_000
    meta = json.loads(G.CHECKPOINT_META.read_text())
    assert meta["model_config"] == G.model_config_dict(G.grokking_config(G.FULL.p))
    assert meta["train_config"]["p"] == G.FULL.p and meta["train_config"]["steps"] == G.FULL.steps
    assert meta["seed"] == committed["seeds"][0] and committed["full_config"] == json.loads(json.dumps(asdict(G.FULL)))
    assert len(meta["commit"].split()[0]) == 40 and meta["commit"] == committed["commit"]
    assert meta["metrics"] == committed["runs"][str(meta["seed"])]["summary"]
    assert committed["checkpoint_bytes"] == G.CHECKPOINT.stat().st_size
    assert (HERE / "figures/training.png").stat().st_size > 10_000


TEST_ACC_BAR = 0.98     # seed 0 ends at 0.99 test accuracy, still cleaning up at 6,000 steps (the other seeds at 1.0)


def test_committed_model_has_grokked(committed_model, committed, measure):
    """The committed model, re-evaluated on its own split: 100% train accuracy and test accuracy ≥ TEST_ACC_BAR (0.98) on the
    70% of pairs it never saw; the accuracies equal the committed ones exactly unless a decision is within
    rounding of a flip (logit gap under twice float_ops(4000, float32) of the largest logit: counted), the
    losses within float_ops(4000, float32) relative."""
    meta = json.loads(G.CHECKPOINT_META.read_text())
    p = meta["train_config"]["p"]
    train_idx, test_idx = G.train_test_split(p, meta["train_config"]["frac_train"], meta["data_seed"])
    now = G.evaluate(committed_model, p, train_idx, test_idx)
    logits = G.final_position_logits(committed_model, G.all_pairs(p)).detach()
    top2 = logits.topk(2, dim=-1).values
    fragile = int(((top2[:, 0] - top2[:, 1]) < 2 * FORWARD_REL * logits.abs().max()).sum())
    then = committed["runs"][str(meta["seed"])]["summary"]
    acc_tol = exact("no decision within rounding of a flip") if not fragile else \
        statistical(fragile / len(test_idx), why=f"{fragile} decisions within rounding of a flip")
    measure("committed.test_accuracy", now["test_accuracy"], f"≥ {TEST_ACC_BAR}")
    measure("committed.train_accuracy", now["train_accuracy"])
    measure("committed.test_loss", now["test_loss"])
    measure("committed.fragile_decisions", fragile)
    assert now["train_accuracy"] == 1.0 and now["test_accuracy"] >= TEST_ACC_BAR
    assert_reproduces(now["test_accuracy"], then["final_test_accuracy"], acc_tol, name="test_accuracy")
    loss_tol = float_ops(4000, "float32", why="the same float32 forward, rounded in another order")
    assert_reproduces(now["test_loss"], then["final_test_loss"], loss_tol, name="test_loss")
    assert_reproduces(now["train_loss"], then["final_train_loss"], loss_tol, name="train_loss")


def test_committed_runs_memorise_then_grok(committed, measure):
    """The headline as results.json records it, for each seed: train accuracy reaches 100% at a step where the test
    accuracy is still ≤ 0.5, and the test accuracy first reaches 0.95 later, after a plateau of ≥ 1,000 steps;
    the grokking steps' spread is what the post reports."""
    steps = []
    for seed in committed["seeds"]:
        s = committed["runs"][str(seed)]["summary"]
        assert s["memorised_step"] is not None and s["grokked_step"] is not None, seed
        assert s["test_accuracy_at_memorised"] <= 0.5, seed
        assert s["grokked_step"] - s["memorised_step"] >= 1000, seed
        assert s["final_test_accuracy"] >= TEST_ACC_BAR, seed
        steps.append(s["grokked_step"])
    assert committed["grokked_steps"] == steps
    measure("grokked_step.min", min(steps))
    measure("grokked_step.max", max(steps))


# ---------------------------------------------------------------- the slow run

# A full run is ~10^4 float32 AdamW steps whose trajectory another CPU's rounding changes: a rerun elsewhere is a
# second run of the same recipe. Its grokking step then reproduces only up to the run-to-run spread, which the
# three seeds measure: within max(2·(max − min) over the seeds, 500 steps) of the committed step. On the machine
# that committed it the rerun is bit-identical.


@pytest.mark.slow
def test_full_runs_reproduce_the_headline(committed, measure):
    """(slow: the three full runs) FULL trained again for each seed memorises early, groks (test accuracy ≥ 0.95)
    at the committed step within the seeds' spread, and ends at ≥ TEST_ACC_BAR test accuracy."""
    spread = max(committed["grokked_steps"]) - min(committed["grokked_steps"])
    tol = statistical(max(2 * spread, 500), why="a second float32 run of the recipe: the seeds' spread")
    for seed in committed["seeds"]:
        from dataclasses import replace

        _, log = G.train(replace(G.FULL, seed=seed, data_seed=seed))
        s = G.grokking_summary(log["history"])
        measure(f"slow.seed{seed}.grokked_step", s["grokked_step"])
        measure(f"slow.seed{seed}.train_seconds", log["seconds"])
        assert s["test_accuracy_at_memorised"] <= 0.5 and s["final_test_accuracy"] >= TEST_ACC_BAR
        assert_reproduces(s["grokked_step"], committed["runs"][str(seed)]["summary"]["grokked_step"], tol,
                          name=f"seed{seed}.grokked_step")
