"""The gate of day 88, part 2: the reasoning toy whose scratchpad has a known causal structure, and the two
importance methods checked against it (ARENA 4.3 §1 with a ground truth ARENA's real traces lack).

Spec (issue 16): "a small reasoning toy trained here whose scratchpad lines have a known causal role (the ground
truth for the method)"; "day 088's importance methods must rank the anchor lines first".
References: the task's definition (the answer is (s + c) mod 10 of the *written* anchor s, whatever the fillers
say), the committed toy's training record (``committed``), and the model's own full forward pass for the
truncated-trace probabilities. Tolerances: accuracies on 2000 fixed traces are argmax decisions of a float16-stored
model, reproduced to 0.5 percentage points (a decision can flip only at a near-tie; ≤ 10 such traces); ranking
rates are binomial and compared with a floor well below the committed value (stated in each test).
"""

import numpy as np
import pytest
import torch

from checks.committed import Tolerance, assert_reproduces, exact, statistical

from . import cot as C
from . import toy as T


@pytest.fixture(scope="module")
def toy():
    from checks.timing import single_thread

    with single_thread():
        model, cfg = T.load_toy()
        yield model, cfg


def test_task_ground_truth():
    """The task: exactly one anchor line 'S s .', the others 'F d .'; the answer is (written s + c) mod 10; the
    anchor is right ((a + b) mod 10) with probability P_CORRECT (2000 traces: within 4 binomial s.e.)."""
    tr = T.make_traces(2000, seed=1)
    tok = tr["tokens"]
    markers = tok[:, [T.line_span(k)[0] for k in range(T.N_LINES)]]
    assert ((markers == T.S).sum(1) == 1).all() and ((markers == T.S) | (markers == T.F)).all()
    assert ((markers == T.S).float().argmax(1) == tr["anchor"]).all()
    s = tok[torch.arange(2000), torch.tensor([T.line_span(int(k))[0] + 1 for k in tr["anchor"]])]
    assert (tok[:, T.answer_pos() + 1] == (s + tok[:, 3]) % 10).all()
    ok = (s.numpy() == (tr["a"] + tr["b"]) % 10).mean()
    assert abs(ok - T.P_CORRECT) < 4 * np.sqrt(T.P_CORRECT * (1 - T.P_CORRECT) / 2000)


def test_truncation_and_training_batch():
    """A truncated trace keeps the question and the first k lines, then 'A y <eos>'; a training batch's loss mask
    covers every target after the question for full traces and only the answer for truncated ones."""
    tr = T.make_traces(4, seed=2)
    for k in range(T.N_LINES + 1):
        cut = T.truncate(tr["tokens"], k)
        p = T.answer_pos(k)
        assert torch.equal(cut[:, :p], tr["tokens"][:, :p])
        assert (cut[:, p] == T.A).all() and torch.equal(cut[:, p + 1], tr["y"])
    tokens, mask = T.training_batch(64, np.random.default_rng(0))
    full = mask.sum(1) > 1
    assert 0 < full.sum() < 64
    assert (mask[full].sum(1) == T.SEQ_LEN - T.Q_LEN).all()
    for row in torch.nonzero(~full)[:, 0]:
        pos = int(mask[row].argmax())
        assert tokens[row, pos] == T.A and mask[row].sum() == 1
    # every truncation point k in 0..N_LINES-1 occurs (k uniform): the answer target sits at answer_pos(k)
    _, mask = T.training_batch(400, np.random.default_rng(1), p_truncate=1.0)
    answer_targets = {int(row.argmax()) for row in mask}
    assert answer_targets == {T.answer_pos(k) for k in range(T.N_LINES)}


def test_training_code_learns():
    """The training code (a fast variant: 40 AdamW steps of phase 1, 5 of phase 2) lowers the loss, and phase 2
    starts from the float16-rounded weights (what save_toy stores) and logs its steps after phase 1's."""
    cfg = T.ToyConfig(steps=40, batch=64, lr=3e-3, finetune_steps=5)
    model, metrics = T.train_toy(cfg, log_every=10)
    steps = [step for step, _ in metrics["loss_curve"]]
    curve = [loss for _, loss in metrics["loss_curve"]]
    assert curve[steps.index(39)] < curve[0] - 0.5
    assert steps[-1] == 44 and steps == sorted(steps)


def test_committed_toy_file(toy, committed):
    """The committed toy: at most 1 MB, its config and training record are those in results.json (exact: stored
    integers and strings), and its behaviour on the 2000 fixed evaluation traces reproduces the committed numbers
    (module docstring)."""
    model, cfg = toy
    assert T.TOY_PATH.stat().st_size <= 1_000_000
    saved = torch.load(T.TOY_PATH, weights_only=True)
    assert_reproduces(saved["config"], committed["toy"]["config"], exact("integers and strings"))
    assert_reproduces(T.evaluate_toy(model), committed["toy"]["committed"],
                      statistical(0.005, why="argmax decisions on 2000 fixed traces; a flip only at a near-tie"))


def test_answer_reads_the_anchor(toy):
    """The ground truth holds in the trained model: after the full scratchpad its answer is (written s + c) mod 10,
    also when the anchor is wrong (≥ 95%), so the answer depends on the anchor line, not on a recomputed a + b."""
    model, _ = toy
    m = T.evaluate_toy(model, n=500, seed=99)
    assert m["answer_follows_anchor"] >= 0.95 and m["answer_follows_wrong_anchor"] >= 0.9


def test_forced_probabilities_are_the_truncated_forward(toy):
    """toy_forced_accuracies reads p(target) at the A token of each truncated trace: equal (1e-6) to the
    softmax of the model's full forward pass on the padded truncated sequence at position answer_pos(k)."""
    model, _ = toy
    tr = T.make_traces(8, seed=3)
    acc = T.toy_forced_accuracies(model, tr["tokens"], tr["y"])
    for k in range(T.N_LINES + 1):
        with torch.no_grad():
            probs = model(T.truncate(tr["tokens"], k))[:, T.answer_pos(k), :10].softmax(-1)
        torch.testing.assert_close(acc[:, k], probs[torch.arange(8), tr["y"]], atol=1e-6, rtol=0)


def test_forced_importance_ranks_the_anchor_first(toy, committed):
    """Spec: forced-answer importance ranks the anchor line first wherever its precondition holds (the model,
    forced right after the anchor line, answers right: p > 0.9): on 500 fixed traces with a correct anchor, every
    such trace ranks the anchor first, the fillers' mean importance is near 0, and the anchor's mean importance is
    the largest of all line offsets. Where forcing fails (the toy cannot answer at some (anchor, cut) positions)
    the method misranks: the overall rate reproduces the committed one (exact up to a few near-ties: 2 of 500)."""
    model, _ = toy
    tr = T.make_traces(500, 7, anchor_correct=True)
    acc = T.toy_forced_accuracies(model, tr["tokens"], tr["truth"])
    imp = np.stack([C.calculate_forced_answer_importance(a) for a in acc.numpy()])
    anchor = tr["anchor"].numpy()
    works = acc[torch.arange(500), tr["anchor"] + 1].numpy() > 0.9
    assert works.mean() > 0.5
    assert (imp[works].argmax(1) == anchor[works]).all()
    res = C.toy_importance(model, n_forced=500, n_resampled=0)["forced"]
    assert res["example"]["anchor"] == anchor[0]                     # the example is the first trace
    np.testing.assert_allclose(res["example"]["importance"], imp[0], atol=1e-12)
    assert abs(res["mean_importance_filler"]) < 0.05 < res["mean_importance_anchor"]
    assert all(res["importance_by_offset"]["0"] > v for o, v in res["importance_by_offset"].items() if o != "0")
    assert_reproduces(res["anchor_ranked_first"]["p"], committed["toy"]["importance"]["forced"]["anchor_ranked_first"]["p"],
                      statistical(2 / 500, why="argmax decisions over 500 fixed traces; a flip only at a near-tie"))


def test_sampled_scratchpad_keeps_prefix_and_grammar(toy):
    """sample_scratchpad keeps the question and the first k lines, and writes lines of the grammar 'S|F digit .'."""
    model, _ = toy
    tr = T.make_traces(16, seed=4)
    g = torch.Generator().manual_seed(0)
    for k in (0, 2, T.N_LINES):
        out = T.sample_scratchpad(model, tr["tokens"], k, g)
        assert torch.equal(out[:, :T.line_span(k)[0]] if k < T.N_LINES else out[:, :T.answer_pos()],
                           tr["tokens"][:, :T.line_span(k)[0]] if k < T.N_LINES else tr["tokens"][:, :T.answer_pos()])
        for j in range(T.N_LINES):
            st, _ = T.line_span(j)
            assert ((out[:, st] == T.S) | (out[:, st] == T.F)).all()
            assert (out[:, st + 1] < 10).all() and (out[:, st + 2] == T.NL).all()


def test_sampled_scratchpad_is_greedy_at_low_temperature(toy):
    """Sampling at temperature τ draws from softmax(logits/τ) over the allowed tokens: as τ → 0 that is the argmax,
    so at τ = 1e-4 the regenerated lines equal a greedy decode written here (the toy's logits are far from ties)."""
    model, _ = toy
    tokens = T.make_traces(8, seed=5)["tokens"]
    out = T.sample_scratchpad(model, tokens, 1, torch.Generator().manual_seed(0), temperature=1e-4)
    greedy = tokens.clone()
    with torch.no_grad():
        for k in range(1, T.N_LINES):
            st, _ = T.line_span(k)
            for pos, allowed in ((st, [T.S, T.F]), (st + 1, list(range(10)))):
                logits = model(greedy[:, :pos])[:, -1]
                greedy[:, pos] = torch.tensor(allowed)[logits[:, allowed].argmax(-1)]
            greedy[:, st + 2] = T.NL
    assert torch.equal(out[:, :T.answer_pos()], greedy[:, :T.answer_pos()])


def test_resampling_importance_ranks_the_anchor_first(toy):
    """Spec: resampling importance ranks the anchor line first: on 12 traces (48 rollouts per prefix) the anchor's
    mean importance exceeds every filler offset's, and it is ranked first in ≥ 2/3 of the traces (the committed
    run, 30 traces × 128 rollouts, is the precise number)."""
    model, _ = toy
    res = C.toy_importance(model, n_forced=12, n_resampled=12, n_samples=48)["resampling"]
    offsets = res["importance_by_offset"]
    assert all(offsets["0"] > v for o, v in offsets.items() if o != "0")
    assert res["anchor_ranked_first"]["p"] >= 2 / 3


@pytest.mark.slow
def test_retrained_toy_reproduces_committed(committed):
    """Retraining with the committed config reproduces the committed behaviour (statistical: a float32 training run
    ends elsewhere on another CPU; answer-following within 3 points, anchor ranked first by resampling importance
    in ≥ 90% of 20 traces)."""
    cfg = T.ToyConfig(**committed["toy"]["config"])
    model, metrics = T.train_toy(cfg)
    for key in ("answer_follows_anchor", "answer_follows_wrong_anchor"):
        assert_reproduces(metrics[key], committed["toy"]["training"][key],
                          Tolerance("a float32 training run; a different minimum", abs=0.03))
    res = C.toy_importance(model, n_forced=20, n_resampled=20, n_samples=128)["resampling"]
    assert res["anchor_ranked_first"]["p"] >= 0.9
