"""The gate of day 43 (ARENA 1.3.2 Function Vectors, sections 1-2: nnsight and activation patching).

References: Hugging Face's ``output_hidden_states`` (what nnsight's saved block outputs must be), TransformerLens's
``run_with_cache`` (``hook_z``, ``resid_post``) and ``transformer_lens.patching.generic_activation_patch`` with its
own patch setters (what residual and per-head patching through nnsight must reproduce), SmolLM2's tokenizer (what
"single-token pair" means), and two identities: patching the clean run into itself changes nothing, and patching a
whole block output (or the last block at the last position) turns the corrupted run into the clean one.

Tolerances. nnsight runs the Hugging Face model itself, so its saved activations equal Hugging Face's to rounding
(1e-5; measured 0). TransformerLens computes the same function by another float32 path (folded RMSNorm weights,
GQA heads repeated), so each of its logits is within ε = SMOLLM2_LOGIT_REL × max|logit| (checks/committed.py);
a log-probability m = logit − logsumexp is within 2ε and a patching effect Δm = m(patched) − m(corrupted) within 4ε.
The same 4ε covers a committed Δm recomputed on another CPU.
"""

import importlib
from pathlib import Path

import pytest
import torch

from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces, exact
from checks.models import hf_model, hooked_model

from . import act_patch as A

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("smollm2-135m-instruct")

fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module

GATE = dict(task="antonyms", size=2, n_prepended=2, seed=1)


@pytest.fixture(scope="module")
def lm():
    return A.nnsight_model("smollm2")


@pytest.fixture(scope="module")
def ht():
    return hooked_model("smollm2")


@pytest.fixture(scope="module")
def data(lm):
    """Two clean antonym prompts (2 demonstrations + query), their shuffled-label twins, the answers, and the
    clean and corrupted final logits."""
    _, _, clean, corrupted, answers = A.datasets(lm, **GATE)
    return clean, corrupted, answers, A.final_logits(lm, clean), A.final_logits(lm, corrupted)


@pytest.fixture(scope="module")
def tl_run(ht, data):
    """TransformerLens on the same prompts: the clean cache and m(corrupted), computed once for the module."""
    clean, corrupted, answers, _, _ = data
    with torch.no_grad():
        _, cache = ht.run_with_cache(clean)
        base = A.correct_logprob(ht(corrupted)[:, -1], answers)
    return cache, base


def delta_tolerance(*logits) -> Tolerance:
    """4ε: a difference of two log-probabilities, each within 2ε of another float32 path's (ε per logit)."""
    eps = SMOLLM2_LOGIT_REL * max(x.abs().max().item() for x in logits)
    return Tolerance(abs=4 * eps, reason=f"a difference of two SmolLM2 log-probabilities, each logit within {eps:.1e}")


def test_word_pairs_are_single_tokens_and_seeded(lm):
    """ICL data (ARENA's word pairs, generated here): every kept pair's two words are one SmolLM2 token each with
    their leading space, and every dropped candidate has a word that is not; the order is a seeded shuffle
    (same seed, same list; another seed, another order of the same set)."""
    tok = lm.tokenizer
    one = lambda w: len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1  # noqa: E731
    n_dropped = 0
    for task, text in (("antonyms", A.ANTONYM_CANDIDATES), ("capitals", A.CAPITAL_CANDIDATES)):
        pairs = A.word_pairs(task, tok)
        assert len(pairs) >= 40, task
        assert all(one(x) and one(y) and x != y for x, y in pairs)
        kept = set(pairs)
        dropped = [p for p in A._parse(text) if p not in kept]
        assert all(not (one(x) and one(y)) or x == y for x, y in dropped), task
        n_dropped += len(dropped)
        assert A.word_pairs(task, tok, seed=0) == pairs
        other = A.word_pairs(task, tok, seed=1)
        assert other != pairs and sorted(other) == sorted(pairs)
    assert n_dropped > 0   # the filter does something (e.g. ' Ulaanbaatar' is several tokens)


def test_icl_dataset_prompts_and_corrupted_twin(lm):
    """ICLSequence/ICLDataset: each prompt + completion is the 'Q: x\\nA: y' blocks joined by blank lines; the
    corrupted twin (same seed) shows the same questions and the same query, with demonstration answers drawn from
    the task's words; all prompts of a dataset tokenize to one length (single-token words), so clean and corrupted
    positions pair up; bidirectional datasets flip some pairs; the same seed gives the same dataset."""
    pairs = A.word_pairs("antonyms", lm.tokenizer)
    ds = A.ICLDataset(pairs, size=20, n_prepended=4, seed=3)
    corrupted = ds.create_corrupted_dataset()
    assert len(ds) == 20 and ds.prompts == A.ICLDataset(pairs, 20, 4, seed=3).prompts
    changed = 0
    for seq, bad, prompt, completion in zip(ds.seqs, corrupted.seqs, ds.prompts, ds.completions):
        assert len(seq) == 5 and all(tuple(p) in set(pairs) for p in seq.word_pairs)
        assert prompt + completion == "\n\n".join(f"Q: {x}\nA: {y}" for x, y in seq.word_pairs)
        assert completion == " " + seq.y[-1] and prompt.endswith(f"Q: {seq.x[-1]}\nA:")
        assert bad.x == seq.x and bad.y[-1] == seq.y[-1] and set(bad.y[:-1]) <= set(ds.word_list)
        changed += sum(a != b for a, b in zip(bad.y[:-1], seq.y[:-1]))
    assert changed >= 0.9 * 20 * 4          # a random word of ~230 is rarely the right answer
    lengths = {len(lm.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in ds.prompts + corrupted.prompts}
    assert len(lengths) == 1
    assert torch.equal(A.tokenize(lm, ds.prompts)[:, -2:], A.tokenize(lm, corrupted.prompts)[:, -2:])
    flipped = A.ICLDataset(pairs, size=20, n_prepended=4, seed=3, bidirectional=True)
    assert any(tuple(p) not in set(pairs) for s in flipped.seqs for p in s.word_pairs)
    with pytest.raises(ValueError):
        A.tokenize(lm, ["Q: hot", "Q: hot\nA: cold"])


def test_residual_summary_reads_the_grid():
    """residual_summary: on a hand-made grid (rows = layers 0-3, last column = final position, gap 10) the first
    layers whose final-position effect exceeds 1, 5 and 9 and the largest |Δm| before the first of them."""
    grid = [[0.2, -0.3], [0.1, 0.5], [0.0, 6.0], [0.0, 9.5]]
    assert A.residual_summary(grid, 10.0, [0, 1, 2, 3]) == {
        "final_position_first_layer_restoring_tenth": 2, "final_position_first_layer_restoring_half": 2,
        "final_position_first_layer_restoring_90pct": 3, "max_abs_delta_before_tenth": 0.5}
    assert A.residual_summary(grid, 100.0, [0, 1, 2, 3])["final_position_first_layer_restoring_90pct"] == -1
    # "exceeds": an effect of exactly a tenth of the gap (1.0 of 10) is not yet a tenth restored
    exact = [[0.2, -0.3], [0.1, 1.0], [0.0, 6.0], [0.0, 9.5]]
    assert A.residual_summary(exact, 10.0, [0, 1, 2, 3])["final_position_first_layer_restoring_tenth"] == 2
    # nothing before the first layer: the largest |Δm| before it is 0
    assert A.residual_summary([[0.0, 2.0], [0.0, 9.5]], 10.0, [4, 5])["max_abs_delta_before_tenth"] == 0.0


def test_resid_reads_the_hidden_states_of_either_block_output():
    """resid: a block's output is the hidden-states tensor itself (transformers 5's Llama) or a tuple whose first
    item it is (other architectures, older versions)."""
    hidden, extra = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert A.resid(hidden) is hidden and A.resid((hidden, extra)) is hidden


def test_nnsight_trace_saves_what_hugging_face_and_transformer_lens_compute(lm, data, tl_run, measure):
    """nnsight's trace/save: the saved output of blocks 0, 14 and 28 equals Hugging Face's hidden_states[l+1]
    (the same model run: 1e-5, measured 0) and TransformerLens's resid_post; the saved input of block 14's
    o_proj, split into 9 heads of 64, equals TransformerLens's hook_z; the saved lm_head output equals Hugging
    Face's logits. TransformerLens within ε (SmolLM2's float32 error, relative to the largest value compared)."""
    clean = data[0]
    saved = {}
    with lm.trace(clean):
        for l in (0, 14, 28):
            if l == 14:
                z = A.out_proj(lm, 14).input.save()
            saved[l] = A.resid(A.layer(lm, l).output).save()
        logits = lm.lm_head.output.save()
    hf = hf_model("smollm2")[0]
    with torch.no_grad():
        out = hf(clean, output_hidden_states=True)
    cache = tl_run[0]
    worst = 0.0
    for l in (0, 14, 28):
        worst = max(worst, (saved[l] - out.hidden_states[l + 1]).abs().max().item())
        tl = cache[f"blocks.{l}.hook_resid_post"]
        torch.testing.assert_close(saved[l], tl, atol=SMOLLM2_LOGIT_REL * tl.abs().max().item(), rtol=0)
    assert worst <= 1e-5
    assert (logits - out.logits).abs().max().item() <= 1e-5
    tl_z = cache["blocks.14.attn.hook_z"]
    assert tl_z.shape == (*clean.shape, 9, 64)
    torch.testing.assert_close(z.view(*clean.shape, 9, 64), tl_z, atol=SMOLLM2_LOGIT_REL * tl_z.abs().max().item(), rtol=0)
    measure("nnsight_vs_hf_hidden_states.max_abs_err", worst, "≤ 1e-5")


def test_patch_residual_matches_transformer_lens(lm, ht, data, tl_run, measure):
    """Residual patching (ARENA's resid_pre of layer l+1 = the output of block l) from clean into corrupted at
    layer 20, the last and fourth-last positions: nnsight's per-prompt Δ log p(correct) equals
    transformer_lens.patching.generic_activation_patch's with layer_pos_patch_setter, within 4ε."""
    clean, corrupted, answers, lc, lx = data
    base = A.correct_logprob(lx, answers)
    ours = A.patch_residual(lm, clean, corrupted, answers, [20], [-1, -4], base=base)
    theirs = A.tl_patch_residual(ht, clean, corrupted, answers, [20], [clean.shape[1] - 1, clean.shape[1] - 4], *tl_run)
    tol = delta_tolerance(lc, lx)
    assert_reproduces(ours, theirs, tol, name="resid_delta")
    assert ours.abs().max() > 100 * tol.abs      # the comparison is not between two zeros
    # the clean cache and m(corrupted) are computed when not passed, and a base that is passed is the one used
    assert_reproduces(A.tl_patch_residual(ht, clean, corrupted, answers, [20], [clean.shape[1] - 1]), theirs[:, :1],
                      tol, name="resid_delta, computing its own cache and base")
    shifted = A.tl_patch_residual(ht, clean, corrupted, answers, [20], [clean.shape[1] - 1], tl_run[0], tl_run[1] + 1)
    assert_reproduces(shifted, theirs[:, :1] - 1, tol, name="resid_delta with base + 1")
    measure("patch_residual_vs_transformer_lens.max_abs_err", (ours - theirs).abs().max().item(), f"≤ {tol.abs:.1e}")


def test_patch_heads_matches_transformer_lens(lm, ht, data, tl_run, measure):
    """Per-head patching at the final position: nnsight's write into head h's slice of o_proj's input equals
    generic_activation_patch on hook_z with layer_pos_head_vector_patch_setter, for two heads of layer 20
    (within 4ε); and the heads differ from each other (a wrong slice would move another head's numbers)."""
    clean, corrupted, answers, lc, lx = data
    heads = [0, 3]
    ours = A.patch_heads(lm, clean, corrupted, answers, [20], heads=heads, base=A.correct_logprob(lx, answers))
    theirs = A.tl_patch_heads(ht, clean, corrupted, answers, [20], heads=heads, clean_cache=tl_run[0], base=tl_run[1])
    tol = delta_tolerance(lc, lx)
    assert_reproduces(ours, theirs, tol, name="heads_delta")
    spread = ours.mean(-1)[0]
    assert (spread.max() - spread.min()) > 10 * tol.abs
    shifted = A.patch_heads(lm, clean, corrupted, answers, [20], heads=[0], base=A.correct_logprob(lx, answers) + 1)
    assert_reproduces(shifted, ours[:, :1] - 1, tol, name="heads_delta with base + 1")   # the base passed is used
    measure("patch_heads_vs_transformer_lens.max_abs_err", (ours - theirs).abs().max().item(), f"≤ {tol.abs:.1e}")


def test_patching_clean_into_clean_is_a_no_op(lm, data, measure):
    """Identity: patching any activation of the clean run into the clean run itself leaves the metric unchanged
    (residual at one layer and two positions, two heads), to rounding: the batched forward only regroups the same
    float32 products (4ε)."""
    clean, _, answers, lc, _ = data
    base = A.correct_logprob(lc, answers)
    res = A.patch_residual(lm, clean, clean, answers, [5], [-1, -6], base=base)
    heads = A.patch_heads(lm, clean, clean, answers, [12], heads=[2, 7], base=base)
    tol = delta_tolerance(lc)
    worst = max(res.abs().max().item(), heads.abs().max().item())
    assert worst <= tol.abs
    measure("clean_into_clean.max_abs_delta", worst, f"≤ {tol.abs:.1e}")


def test_patching_everything_restores_clean(lm, data, measure):
    """Identity: replacing a block's whole output (every position) in the corrupted run by the clean one makes the
    rest of the run the clean run, so the logits are the clean logits; and patching the last block's output at the
    last position (what the unembedding reads) restores the whole gap, Δm = m(clean) − m(corrupted)."""
    clean, corrupted, answers, lc, lx = data
    worst = 0.0
    for l in (17,):
        patched = A.patch_everything(lm, clean, corrupted, l)
        worst = max(worst, (patched - lc).abs().max().item())
    eps = SMOLLM2_LOGIT_REL * lc.abs().max().item()
    assert worst <= eps
    full = A.patch_residual(lm, clean, corrupted, answers, [29], [-1], base=A.correct_logprob(lx, answers))[0, 0]
    gap = A.correct_logprob(lc, answers) - A.correct_logprob(lx, answers)
    assert_reproduces(full, gap, delta_tolerance(lc, lx), name="last block, last position")
    assert gap.min() > 1.0   # the corruption matters: more than a nat on each prompt
    measure("patch_everything_vs_clean.max_abs_logit_err", worst, f"≤ {eps:.1e}")


def test_results_json_is_current(lm, committed):
    """results.json (cited by the post): the committed prompts are what ICLDataset builds now (exactly: strings);
    each prompt's clean and corrupted log p(correct) and their mean gap recomputed within 2ε and 4ε; the clean and
    corrupted accuracies exactly, each argmax's margin over the runner-up checked to exceed 2ε; the last block's
    final-position cell equals the gap (identity). Every patching effect is recomputed by the slow test."""
    r = committed
    cfg = r["experiment"]
    assert cfg == A.EXPERIMENT and r["layers"] == list(range(30))
    _, _, clean, corrupted, answers = A.datasets(lm, **cfg)
    assert r["example_prompt"] == lm.tokenizer.decode(clean[0]) and r["example_corrupted"] == lm.tokenizer.decode(corrupted[0])
    lc, lx = A.final_logits(lm, clean), A.final_logits(lm, corrupted)
    eps = SMOLLM2_LOGIT_REL * max(lc.abs().max().item(), lx.abs().max().item())
    two, four = (Tolerance(abs=k * eps, reason=f"{k} × a SmolLM2 logit's float32 error") for k in (2, 4))
    mc, mx = A.correct_logprob(lc, answers), A.correct_logprob(lx, answers)
    assert_reproduces(mc, r["logprob_clean"], two, name="logprob_clean")
    assert_reproduces(mx, r["logprob_corrupted"], two, name="logprob_corrupted")
    assert_reproduces((mc - mx).mean().item(), r["gap"], four, name="gap")
    for logits, key in ((lc, "accuracy_clean"), (lx, "accuracy_corrupted")):
        top2 = logits.topk(2).values
        assert (top2[:, 0] - top2[:, 1]).min() > 2 * eps, f"{key}: an argmax within rounding"
        assert_reproduces(float((logits.argmax(-1) == answers).float().mean()), r[key], exact("argmaxes with margins"))
    assert_reproduces(r["resid_delta"][-1][-1], r["gap"], four, name="last block, last position = the gap")
    summary = A.residual_summary(r["resid_delta"], r["gap"], r["layers"])
    assert all(r[k] == v for k, v in summary.items())   # the layers the post names, read off the committed grid
    assert (HERE / "figures/patching.png").stat().st_size > 10_000


@pytest.mark.slow
def test_experiment_reproduces(tmp_path, committed, measure):
    """(slow, ~15 min on a busy 2-core machine) The whole experiment rerun: every residual and head patching
    effect within 4ε of results.json, and the headline: patching the residual stream at the final position restores
    less than half the clean-vs-corrupted gap before the layer the post names (18) and more at that layer, the
    same top head (L20H5) restores the most, and it beats every head of layer 0."""
    r = A.run_experiment(tmp_path)
    four = Tolerance(abs=4 * SMOLLM2_LOGIT_REL * committed["max_abs_logit"], reason="4 × a SmolLM2 logit's float32 error")
    worst = 0.0
    for key in ("resid_delta", "heads_delta", "gap", "logprob_clean", "logprob_corrupted"):
        worst = max(worst, assert_reproduces(r[key], committed[key], four, name=key))
    assert r["top_heads"][0]["layer"] == committed["top_heads"][0]["layer"]
    assert r["final_position_first_layer_restoring_half"] == committed["final_position_first_layer_restoring_half"]
    half = r["final_position_first_layer_restoring_half"]
    final = torch.tensor(r["resid_delta"])[:, -1]
    assert 0 < half < 29 and (final[:half] < r["gap"] / 2).all() and final[half] > r["gap"] / 2
    heads = torch.tensor(r["heads_delta"])
    assert heads.max() > 0 and heads.max() > heads[0].max()
    assert (r["top_heads"][0]["layer"], r["top_heads"][0]["head"]) == \
        (committed["top_heads"][0]["layer"], committed["top_heads"][0]["head"])
    measure("experiment_vs_committed", worst, "≤ 1 (fraction of the tolerance)")
