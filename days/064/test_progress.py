"""The gate of day 64 (ARENA 1.5.2 Grokking, analysis during training: restricted and excluded loss, weight norm,
the SVD of W_E; Nanda et al.'s progress measures).

References: logits written in closed form (known key and non-key parts) for the projections; numpy's SVD and the
closed form of a cos/sin embedding's singular values; day 63's hand-built model, whose logits are the key
frequencies' trig sum plus a bounded error, so its restricted and excluded losses are known; day 62's committed
model for the end of training; results.json's series for the phases, recomputed by the slow test.
"""

import importlib
import json
import math

import numpy as np
import pytest
import torch

from checks.committed import assert_reproduces, float_ops, statistical

from . import progress as PM

grokking = importlib.import_module("days.062.grokking")
fourier = importlib.import_module("days.063.fourier")
fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module

P = 113
KEYS = [17, 25, 32, 47]


@pytest.fixture(scope="module")
def handbuilt():
    return fourier.make_handbuilt_model(P, KEYS)


@pytest.fixture(scope="module")
def committed_model():
    return grokking.load_grokking_model()


def closed_form_logits(p: int, keys: list[int], others: list[int], seed: int = 0):
    """L(a, b, c) = β(a) + Σ_{k ∈ keys} α_k cos(w_k(a + b − c)) + Σ_{j ∈ others} γ_j cos(w_j(a + b − c) + φ_j), and the
    key part and the rest separately, flattened to [p², p]."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.arange(p, dtype=torch.float64)
    s = (a[:, None, None] + a[None, :, None] - a[None, None, :]).reshape(p * p, p)
    beta = torch.randn(p, dtype=torch.float64, generator=gen).repeat_interleave(p)[:, None]   # β(a), a the slow index
    key = sum(float(1 + torch.rand(1, generator=gen)) * torch.cos(2 * math.pi * k * s / p) for k in keys)
    rest = sum(float(torch.rand(1, generator=gen)) * torch.cos(2 * math.pi * j * s / p + float(torch.rand(1, generator=gen)))
               for j in others)
    return beta + key + rest, key, rest, beta


def test_restrict_and_exclude_on_closed_form_logits(measure):
    """restrict_logits keeps exactly the key frequencies' cos/sin(w_k(a + b)) parts of the logits and, for each output
    c, the constant (the grid mean); exclude_logits removes exactly those parts and keeps the rest: on logits written
    in closed form with a per-input offset β(a) (orthogonal to every cos/sin(w_k(a + b)): Σ_b cos(w_k(a + b)) = 0),
    restrict(L) = key part + mean β and exclude(L) = β + the non-key part, in float64 to 1e-9 of the scale.
    The directions are orthonormal."""
    p = 31
    L, key, rest, beta = closed_form_logits(p, keys=[3, 7], others=[5, 11, 14])
    restricted = PM.restrict_logits(L, [3, 7])
    excluded = PM.exclude_logits(L, [3, 7])
    const = beta.mean()
    err_r = (restricted - (key + const)).abs().max().item()
    err_e = (excluded - (beta + rest)).abs().max().item()
    measure("closed_form.restrict_err", err_r)
    measure("closed_form.exclude_err", err_e)
    assert err_r <= 1e-9 * L.abs().max() and err_e <= 1e-9 * L.abs().max()
    D = PM.key_freq_directions(p, [3, 7])
    assert torch.allclose(D @ D.T, torch.eye(5, dtype=torch.float64), atol=1e-6)


def test_weight_norm_and_embedding_svd(handbuilt, committed_model):
    """weight_norm_sq is Σθ² over TransformerLens's parameters; embedding_singular_values equals numpy's SVD of W_E;
    the hand-built embedding (cos and sin of K frequencies, columns orthogonal with squared norm p/2) has exactly
    2K non-zero singular values, all √(p/2)."""
    m = committed_model
    assert PM.weight_norm_sq(m) == pytest.approx(sum(float(q.double().pow(2).sum()) for q in m.parameters()), rel=1e-12)
    sv = PM.embedding_singular_values(m)
    ref = np.linalg.svd(m.W_E[: m.cfg.d_vocab_out].detach().double().numpy(), compute_uv=False)
    assert np.allclose(sv.numpy(), ref, rtol=1e-10, atol=1e-12)
    hb = PM.embedding_singular_values(handbuilt)
    assert torch.allclose(hb[: 2 * len(KEYS)], torch.full((2 * len(KEYS),), math.sqrt(P / 2), dtype=torch.float64),
                          rtol=1e-5)
    assert hb[2 * len(KEYS):].abs().max() < 1e-4


def test_handbuilt_restricted_and_excluded_loss(handbuilt, measure):
    """On the hand-built model (logits = α Σ_k cos(w_k(a + b − c)) + ε, |ε| ≤ day 63's bound b): its restricted loss
    is its loss within the change of ≤ 2·b in every logit, and its excluded loss, the logits reduced to ε minus its
    key part, is log p within 2·(2b) (a constant row gives log p; a perturbation of ≤ 2b moves the loss by ≤ 2·2b);
    excluding one key frequency alone (ARENA's excl_loss) already raises the training loss above the full loss."""
    test_mod = importlib.import_module("days.063.test_fourier")
    b = test_mod.logit_error_bound(handbuilt)
    p = P
    labels = grokking.labels_of(grokking.all_pairs(p), p)
    logits = PM.all_logits(handbuilt)
    full = float(grokking.cross_entropy_high_precision(logits, labels))
    restricted = PM.restricted_loss(handbuilt, KEYS)
    every = torch.arange(p * p)
    excluded = PM.excl_loss(handbuilt, KEYS, every)
    measure("handbuilt.loss", full)
    measure("handbuilt.restricted_loss", restricted)
    measure("handbuilt.excluded_loss", excluded, f"log p ± {4 * b:.2f}")
    assert abs(restricted - full) <= 2 * 2 * b
    assert abs(excluded - math.log(p)) <= 2 * 2 * b
    per_freq = PM.excl_loss_per_freq(handbuilt, KEYS, every)
    assert len(per_freq) == len(KEYS) and min(per_freq) > full


def test_committed_final_restricted_below_excluded(committed_model, committed, measure):
    """At the end of training (day 62's committed model, the last checkpoint of the series): the restricted loss is
    below the excluded loss, the algorithm alone solving the task while the rest cannot; and the last checkpoint's
    measures recomputed equal results.json's within float_ops(10^4, float32) (sums over p² float32 logits) —
    except the singular values, from the float64 SVD of the float32 W_E (float_ops(128, float64) + 1e-6 relative);
    W_E_rank_99 (the number of singular values holding 99% of W_E's energy) is the smallest r whose top-r squared
    singular values from numpy's SVD reach 0.99 of the total, and the committed one."""
    final = committed["final"]
    assert committed["series"][-1]["step"] == committed["config"]["steps"]
    meta = json.loads(grokking.CHECKPOINT_META.read_text())
    assert meta["train_config"]["steps"] == committed["config"]["steps"] and meta["train_config"]["p"] == committed["config"]["p"]
    train_idx, test_idx = grokking.train_test_split(meta["train_config"]["p"], meta["train_config"]["frac_train"],
                                                    meta["data_seed"])
    now = PM.progress_measures(committed_model, committed["key_freqs"], train_idx, test_idx)
    measure("final.restricted_loss", now["restricted_loss"])
    measure("final.excluded_loss", now["excluded_loss"])
    measure("final.test_loss", now["test_loss"])
    assert now["restricted_loss"] < now["excluded_loss"]
    tol = float_ops(10_000, "float32", why="sums over the p² inputs of float32 logits", abs=1e-9)
    for key in ("train_loss", "test_loss", "restricted_loss", "excluded_loss", "weight_norm_sq", "key_share_W_E"):
        assert_reproduces(now[key], final[key], tol, name=key)
    # W_E_rank_99, the number of singular values holding 99% of W_E's energy: the smallest r with
    # Σ_{i<r} σ_i² ≥ 0.99 Σ σ², from numpy's SVD of the same rows
    s2 = np.linalg.svd(committed_model.W_E[:meta["train_config"]["p"]].detach().double().numpy(), compute_uv=False) ** 2
    rank_99 = next(r for r in range(1, len(s2) + 1) if s2[:r].sum() >= 0.99 * s2.sum())
    measure("final.W_E_rank_99", now["W_E_rank_99"])
    assert now["W_E_rank_99"] == rank_99 == final["W_E_rank_99"]
    assert_reproduces(now["W_E_singular_values"], final["W_E_singular_values"],
                      statistical(0.0, rel=1e-6, why="float64 SVD of the same float32 matrix"))


def test_committed_phases(committed, measure):
    """The phases as results.json records them (the slow test recomputes the series). Circuit formation before the
    test loss falls: the restricted loss is halfway (log scale) from its value at memorisation to its final value,
    and the excluded loss halfway up to its peak, before the test loss is halfway down. Cleanup after: from the
    checkpoint where the test loss is halfway down to the end, the weight norm keeps falling, the key frequencies'
    share of W_E rises and W_E's rank (singular values holding 99% of its energy) shrinks."""
    lm = committed["landmarks"]
    for key, value in lm.items():
        measure(f"landmarks.{key}", value)
    assert committed["memorised_step"] < lm["restricted_loss_halfway_step"] < lm["test_loss_halfway_step"]
    assert lm["excluded_loss_halfway_up_step"] < lm["test_loss_halfway_step"]
    at = next(e for e in committed["series"] if e["step"] == lm["test_loss_halfway_step"])
    end = committed["series"][-1]
    measure("cleanup.W_E_rank_99", f"{at['W_E_rank_99']} → {end['W_E_rank_99']}")
    assert end["weight_norm_sq"] < at["weight_norm_sq"]
    assert end["key_share_W_E"] > at["key_share_W_E"]
    assert end["W_E_rank_99"] < at["W_E_rank_99"]


@pytest.mark.slow
def test_series_reproduces(committed, tmp_path, measure):
    """(slow: day 62's first run trained again with checkpoints) the progress measures' landmarks are the committed
    ones within max(2·(spread of day 62's three grokking steps), 500) steps (a second float32 run of the recipe),
    the key frequencies the same."""
    steps = PM.day62_committed("grokked_steps")
    spread = max(steps) - min(steps)
    tol = statistical(max(2 * spread, 500), why="a second float32 run of the recipe: the seeds' spread")
    now = PM.run_experiment(tmp_path)
    assert now["key_freqs"] == committed["key_freqs"]
    for key in ("restricted_loss_halfway_step", "test_loss_halfway_step", "excluded_loss_halfway_up_step"):
        measure(f"slow.{key}", now["landmarks"][key])
        assert_reproduces(now["landmarks"][key], committed["landmarks"][key], tol, name=key)
