"""The gate of day 53 (ARENA 1.4.1 IOI, §1 model & task setup): the IOI dataset, its ABC corruption, the logit
difference and the normalised metrics, direct logit attribution per layer and per head, performance with intervals.

References: the tokenizers themselves (every position the dataset records is re-found by tokenizing); the model
run on each prompt alone (padding must not matter); TransformerLens's ActivationCache (``run_with_cache``,
``decompose_resid``, ``accumulated_resid``, ``stack_head_results``, ``apply_ln_to_stack``); day 39's
``dla_decomposition`` (another route to each head's attribution); scipy's t interval. The structure and the exact
identities run on a small GPT-2-shaped random model (LayerNorm, a positional embedding) in float64, the behaviour
on SmolLM2 (RMSNorm, rotary, grouped-query attention).

Tolerances: SmolLM2 float32 logits are within ε = SMOLLM2_LOGIT_REL × max|logit| of another float32 path (another
CPU's kernels, another batch shape; checks/committed.py), so a logit difference is within 2ε; an attribution
(a part of a logit computed on the same path) within 2ε too. float64 identities hold to 1e-12.
"""

import copy
import importlib
from pathlib import Path

import pytest
import torch

from checks import assert_parity
from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces, exact
from checks.models import hooked_model

from . import ioi_setup as S

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("gpt2-tokenizer", "smollm2-135m-instruct")

fixtures = importlib.import_module("days.035.fixtures")
one_thread_module, small_gpt2 = fixtures.one_thread_module, fixtures.small_gpt2

N_GATE = 16   # the first 16 prompts of the experiment's dataset


@pytest.fixture(scope="module")
def smol():
    """SmolLM2, the experiment's first 16 prompts and their ABC twins, and one run of each at the final positions
    (every hook direct logit attribution reads)."""
    model = hooked_model("smollm2")
    ds, abc = S.build(model)
    ds, abc = ds[:N_GATE], abc[:N_GATE]
    final, cache = S.run_at_end(model, ds.toks, ds.word_idx["end"], S.dla_names(model))
    final_abc, _ = S.run_at_end(model, abc.toks, abc.word_idx["end"])
    return model, ds, abc, final, cache, final_abc


@pytest.fixture(scope="module")
def smol_full(smol):
    """TransformerLens's own full cache on the gate prompts of the longest length (no padding: their last position
    is their final one), and the matching rows of the EndCache."""
    model, ds, _, _, cache, _ = smol
    rows = [i for i in range(len(ds)) if ds.word_idx["end"][i] == ds.toks.shape[1] - 1][:4]
    sub = ds[rows]
    with torch.no_grad():
        logits, full = model.run_with_cache(sub.toks)
    return sub, logits, full, S.EndCache(model, {k: v[rows] for k, v in cache.items()})


@pytest.fixture(scope="module")
def gpt2_64(small_gpt2):
    """The 2-layer GPT-2-shaped random model in float64, 8 IOI prompts for GPT-2's tokenizer, and both caches."""
    model = copy.deepcopy(small_gpt2[0]).to(torch.float64)
    ds = S.IOIDataset("mixed", 8, model.tokenizer, seed=3)
    with torch.no_grad():
        logits, full = model.run_with_cache(ds.toks)
    final, cache = S.run_at_end(model, ds.toks, ds.word_idx["end"], S.dla_names(model))
    return model, ds, logits, full, final, cache


def eps_of(*logits) -> float:
    """ε: a SmolLM2 logit's float32 error on another float32 path."""
    return SMOLLM2_LOGIT_REL * max(x.abs().max().item() for x in logits)


def test_single_token_names_for_each_tokenizer(smol, small_gpt2):
    """Single-token names for the model's tokenizer: every kept name is one token with its leading space and every
    dropped one is not, for SmolLM2's and GPT-2's tokenizers; the two lists differ (each model gets its own)."""
    kept = {}
    for name, tok in (("smollm2", smol[0].tokenizer), ("gpt2", small_gpt2[0].tokenizer)):
        names = S.single_token_names(tok)
        n_tokens = {n: len(tok(" " + n, add_special_tokens=False)["input_ids"]) for n in S.NAMES}
        assert names == [n for n in S.NAMES if n_tokens[n] == 1]
        assert len(names) >= 90
        kept[name] = set(names)
    assert kept["smollm2"] != kept["gpt2"]
    assert kept["smollm2"] < set(S.NAMES)     # SmolLM2 splits some names


def test_templates_abba_and_baba():
    """ARENA's 15 BABA templates and their ABBA twins: each has three name slots before the answer, in the order
    B A B (BABA) or A B B (ABBA), ends in ' [A]' (the answer: the IO), and the twins differ only in the order of
    the two names of the first clause."""
    assert len(S.BABA_TEMPLATES) == len(S.ABBA_TEMPLATES) == 15
    for baba, abba in zip(S.BABA_TEMPLATES, S.ABBA_TEMPLATES):
        assert S.slot_pattern(baba) == "BAB" and S.slot_pattern(abba) == "ABB"
        assert baba.endswith(" [A]") and abba.endswith(" [A]")
        assert baba.replace("[B] and [A]", "", 1) == abba.replace("[A] and [B]", "", 1)
        assert baba.count("[B]") == 2 and baba.count("[A]") == 2
    assert S.render(S.ABBA_TEMPLATES[5], ("Mary", "John", "John"), "store", "drink") == \
        "After Mary and John went to the store, John gave a drink to"


@pytest.mark.parametrize("which", ["smollm2", "gpt2"])
def test_dataset_is_seeded_balanced_and_indexed(which, smol, small_gpt2):
    """IOIDataset: the same seed gives the same prompts and another seed other ones; 'mixed' is half ABBA, half
    BABA; IO ≠ S; each sentence is its template filled in; toks are each sentence's own tokenization, right-padded;
    the recorded positions hold the IO (IO), the subject (S1, S2) and the last real token (end), re-found by the
    tokenizer; the answers are the IO's and S's single tokens."""
    tok = smol[0].tokenizer if which == "smollm2" else small_gpt2[0].tokenizer
    ds = S.IOIDataset("mixed", 40, tok, seed=7)
    assert ds.sentences == S.IOIDataset("mixed", 40, tok, seed=7).sentences
    assert ds.sentences != S.IOIDataset("mixed", 40, tok, seed=8).sentences
    assert [p["pattern"] for p in ds.prompts].count("ABB") == 20
    assert S.IOIDataset("BABA", 6, tok).prompts[0]["pattern"] == "BAB"
    one = S.IOIDataset("mixed", 10, tok, seed=7, templates=[5])     # one template: one length, aligned roles
    assert {p["template"] for p in one.prompts} == {S.ABBA_TEMPLATES[5], S.BABA_TEMPLATES[5]}
    assert len(set(one.word_idx["end"].tolist())) == 1 and len(set(one.word_idx["S2"].tolist())) == 1
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for i, (p, text) in enumerate(zip(ds.prompts, ds.sentences)):
        assert p["IO"] != p["S"] and {p["IO"], p["S"]} <= set(ds.names)
        assert text == S.render(p["template"], p["names"], p["PLACE"], p["OBJECT"])
        ids = tok(text, add_special_tokens=False)["input_ids"]
        end = ds.word_idx["end"][i].item()
        assert end == len(ids) - 1 and ds.toks[i, :end + 1].tolist() == ids
        assert (ds.toks[i, end + 1:] == pad).all()
        for key, name in (("IO", p["IO"]), ("S1", p["S"]), ("S2", p["S"])):
            assert tok.decode(ds.toks[i, ds.word_idx[key][i]]) == " " + name
        assert ds.word_idx["S1"][i] < ds.word_idx["S2"][i] < end
        assert (ds.word_idx["IO"][i] < ds.word_idx["S1"][i]) == (p["pattern"] == "ABB")
        assert tok.decode(ds.answer_tokens[i, 0]) == " " + p["IO"] and tok.decode(ds.answer_tokens[i, 1]) == " " + p["S"]
    assert ds.toks.shape[1] == max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in ds.sentences)


def test_abc_corruption_changes_only_the_names(smol):
    """The ABC dataset ('ABB->XYZ, BAB->XYZ'): the same template, place and object; three fresh names, distinct from
    each other and from the prompt's IO and S; every prompt keeps its length, and its tokens differ from the clean
    ones exactly at the three name positions; the answers scored stay the clean IO and S. A generic flip
    ('ABB->BAB, BAB->ABB') turns each ABBA prompt into the BABA sentence with the same names, and back."""
    tok = smol[0].tokenizer
    ds = S.IOIDataset("mixed", 40, tok, seed=5)
    abc = ds.gen_flipped_prompts(S.ABC)
    assert abc.sentences == ds.gen_flipped_prompts(S.ABC).sentences            # seeded
    assert torch.equal(abc.answer_tokens, ds.answer_tokens) and torch.equal(abc.word_idx["end"], ds.word_idx["end"])
    assert abc.toks.shape == ds.toks.shape
    for i, (p, q) in enumerate(zip(ds.prompts, abc.prompts)):
        assert (q["template"], q["PLACE"], q["OBJECT"]) == (p["template"], p["PLACE"], p["OBJECT"])
        assert len(set(q["names"])) == 3 and not set(q["names"]) & {p["IO"], p["S"]}
        changed = (ds.toks[i] != abc.toks[i]).nonzero()[:, 0].tolist()
        assert changed == sorted(ds.word_idx[k][i].item() for k in ("IO", "S1", "S2"))
    swapped = ds.gen_flipped_prompts("ABB->BAB, BAB->ABB")
    for p, text in zip(ds.prompts, swapped.sentences):
        twin = S.BABA_TEMPLATES if p["pattern"] == "ABB" else S.ABBA_TEMPLATES
        mine = S.ABBA_TEMPLATES if p["pattern"] == "ABB" else S.BABA_TEMPLATES
        other = twin[mine.index(p["template"])]
        assert text == S.render(other, tuple({"A": p["IO"], "B": p["S"]}[c] for c in S.slot_pattern(other)),
                                p["PLACE"], p["OBJECT"])


def test_padding_is_invisible_and_logit_diff_is_a_logprob_diff(smol, measure):
    """The logit difference of a right-padded batch, read at each prompt's end, equals that of each prompt run alone
    without padding (causal attention: padding comes after the end), within 2ε; and it equals the difference of
    the two answers' log-probabilities (log-softmax of the single runs), an independent route; the mean is the
    mean of the per-prompt values."""
    model, ds, _, final, _, _ = smol
    ld = S.logits_to_ave_logit_diff(final[:, None], ds.answer_tokens, per_prompt=True)
    alone = []
    for i in range(4):
        end = ds.word_idx["end"][i].item()
        with torch.no_grad():
            lp = model(ds.toks[i:i + 1, :end + 1])[0, -1].log_softmax(-1)
        alone.append(lp[ds.answer_tokens[i, 0]] - lp[ds.answer_tokens[i, 1]])
    alone = torch.stack(alone)
    tol = 2 * eps_of(final)
    report = assert_parity(ld[:4], alone, atol=tol)
    assert (ds.word_idx["end"] < ds.toks.shape[1] - 1).any()   # some gate prompts are padded
    assert torch.isclose(S.logits_to_ave_logit_diff(final[:, None], ds.answer_tokens), ld.mean())
    measure("padded_vs_alone.max_abs_err", report.max_abs_err, f"≤ {tol:.1e}")


def test_logit_diff_reads_each_prompts_end():
    """logits_to_ave_logit_diff on hand-made logits: with ``end`` it reads row i at position end[i], without it the
    last position; logits_to_ave_logit_diff_2 takes the positions and answers from the dataset."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    answers = torch.tensor([[1, 2], [3, 4], [5, 6]])
    end = torch.tensor([4, 2, 0])
    expected = torch.stack([logits[i, end[i], answers[i, 0]] - logits[i, end[i], answers[i, 1]] for i in range(3)])
    assert torch.equal(S.logits_to_ave_logit_diff(logits, answers, per_prompt=True, end=end), expected)
    last = torch.stack([logits[i, -1, answers[i, 0]] - logits[i, -1, answers[i, 1]] for i in range(3)])
    assert torch.equal(S.logits_to_ave_logit_diff(logits, answers, per_prompt=True), last)

    class Fake:  # the two attributes logits_to_ave_logit_diff_2 reads
        answer_tokens, word_idx = answers, {"end": end}
    assert torch.equal(S.logits_to_ave_logit_diff_2(logits, Fake(), per_prompt=True), expected)


def test_ioi_metrics_are_normalised(smol, measure):
    """ioi_metric is 1 on the clean logits and 0 on the corrupted (ABC) ones, and affine in LD in between;
    ioi_metric_2 is 0 on the clean logits and −1 on the corrupted ones. The corruption removes the behaviour: the
    clean LD is positive and the ABC LD is far below it."""
    model, ds, abc, final, _, final_abc = smol
    clean = S.logits_to_ave_logit_diff(final[:, None], ds.answer_tokens).item()
    corrupt = S.logits_to_ave_logit_diff(final_abc[:, None], ds.answer_tokens).item()
    assert clean > 2 and clean - corrupt > 2
    end = torch.zeros(len(ds), dtype=torch.long)
    one = S.ioi_metric(final[:, None], ds.answer_tokens, corrupt, clean, end=end)
    zero = S.ioi_metric(final_abc[:, None], ds.answer_tokens, corrupt, clean)
    assert abs(one.item() - 1) < 1e-6 and abs(zero.item()) < 1e-6
    mix = 0.3 * final + 0.7 * final_abc
    assert abs(S.ioi_metric(mix[:, None], ds.answer_tokens, corrupt, clean).item() - 0.3) < 1e-5

    class Ends:
        answer_tokens, word_idx = ds.answer_tokens, {"end": end}
    assert abs(S.ioi_metric_2(final[:, None], clean, corrupt, Ends()).item()) < 1e-6
    assert abs(S.ioi_metric_2(final_abc[:, None], clean, corrupt, Ends()).item() + 1) < 1e-6
    measure("gate.clean_logit_diff", clean)
    measure("gate.abc_logit_diff", corrupt)


@pytest.mark.parametrize("which", ["gpt2_float64", "smollm2"])
def test_run_at_end_and_stacks_match_transformer_lens(which, gpt2_64, smol_full, measure):
    """run_at_end keeps exactly the final row of every activation TransformerLens's run_with_cache computes, and
    our stacks at the final position equal TransformerLens's: decompose_resid(layer=-1, pos_slice=-1) (embed,
    pos_embed where the model has one, attn_out and mlp_out per layer), accumulated_resid(incl_mid=True) and
    stack_head_results (same labels, same order). float64 GPT-2: 1e-10; SmolLM2: ε of the largest value compared."""
    if which == "gpt2_float64":
        model, ds, _, full, _, cache = gpt2_64
        rows = [i for i in range(len(ds)) if ds.word_idx["end"][i] == ds.toks.shape[1] - 1]
        full = full.apply_slice_to_batch_dim(rows)
        cache = S.EndCache(model, {k: v[rows] for k, v in cache.items()})
        tol = lambda x: 1e-10  # noqa: E731
    else:
        sub, _, full, cache = smol_full
        model = full.model
        tol = lambda x: SMOLLM2_LOGIT_REL * x.abs().max().item()  # noqa: E731
    last = torch.full((len(cache["hook_embed"]),), -1)      # these prompts' final position is the last one
    worst = 0.0
    for name in S.dla_names(model):
        theirs = S._at_end(full[name], last, name)
        worst = max(worst, assert_parity(cache[name], theirs, atol=tol(theirs), name=name).max_abs_err)
    L = model.cfg.n_layers
    for ours, theirs in ((S.decompose_resid(cache, L), full.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)),
                         (S.accumulated_resid(cache, L), full.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1,
                                                                                return_labels=True)),
                         (S.stack_head_results(model, cache), full.stack_head_results(layer=-1, pos_slice=-1,
                                                                                      return_labels=True))):
        assert ours[1] == theirs[1]
        worst = max(worst, assert_parity(ours[0], theirs[0], atol=tol(theirs[0])).max_abs_err)
    assert ("pos_embed" in S.decompose_resid(cache, L)[1]) == (which == "gpt2_float64")
    measure(f"{which}.end_cache_vs_run_with_cache.max_abs_err", worst)


@pytest.mark.parametrize("which", ["gpt2_float64", "smollm2"])
def test_residual_stack_to_logit_diff_is_apply_ln_to_stack(which, gpt2_64, smol_full, measure):
    """residual_stack_to_logit_diff (center, then divide by the frozen final scale, then project on
    W_U[:, IO] − W_U[:, S]) equals TransformerLens's cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
    projected the same way, on the decomposed and accumulated residual streams and the per-head stack, per prompt
    and averaged: for GPT-2's LayerNorm (the centring matters: along a direction with a mean, projecting without
    it would differ) and for SmolLM2's RMSNorm (no centring)."""
    if which == "gpt2_float64":
        model, ds, _, full, _, _ = gpt2_64
        rows = [i for i in range(len(ds)) if ds.word_idx["end"][i] == ds.toks.shape[1] - 1]
        full, answers, tol = full.apply_slice_to_batch_dim(rows), ds.answer_tokens[rows], 1e-10
    else:
        sub, logits, full, _ = smol_full
        model, answers, tol = full.model, sub.answer_tokens, 2 * eps_of(logits)
    d = S.logit_diff_directions(model, answers[:, 0], answers[:, 1])
    shifted = d + 0.05          # TransformerLens centres W_U's columns; a direction with a mean tests the centring
    worst = 0.0
    for stack, _ in (full.decompose_resid(layer=-1, pos_slice=-1, return_labels=True),
                     full.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, return_labels=True),
                     full.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)):
        for direction in (d, shifted):
            ours = S.residual_stack_to_logit_diff(stack, full, direction, per_prompt=True)
            theirs = (full.apply_ln_to_stack(stack, layer=-1, pos_slice=-1) * direction).sum(-1)
            worst = max(worst, assert_parity(ours, theirs, atol=tol).max_abs_err)
        assert_parity(S.residual_stack_to_logit_diff(stack, full, shifted), theirs.mean(-1), atol=tol)
    if which == "gpt2_float64":
        # TransformerLens centres every writing weight, so its stacks have no mean; a stack with one (a model whose
        # weights were not centred) shows the centring at work: ours still equals apply_ln_to_stack's, and
        # projecting without centring would not.
        uncentred = stack + 0.3
        ours = S.residual_stack_to_logit_diff(uncentred, full, shifted, per_prompt=True)
        theirs = (full.apply_ln_to_stack(uncentred, layer=-1, pos_slice=-1) * shifted).sum(-1)
        worst = max(worst, assert_parity(ours, theirs, atol=tol).max_abs_err)
        raw = (uncentred * shifted).sum(-1) / full["ln_final.hook_scale"][:, -1, 0]
        assert (raw - theirs).abs().max() > 1e-3
    measure(f"{which}.residual_stack_to_logit_diff_vs_apply_ln_to_stack.max_abs_err", worst, f"≤ {tol:.1e}")


def test_dla_sums_exactly_float64(gpt2_64, measure):
    """The identity, in float64 on the random GPT-2: the components' attributions plus b_U's difference sum to the
    logit difference of every prompt read at its own end (1e-12); each layer's heads plus b_O sum to its
    attention output's attribution; the last accumulated stream's attribution is LD − Δb_U. Freezing the scale is
    what makes it exact: with s × 1.01 the sum is off by 1% of everything but Δb_U."""
    model, ds, _, _, final, cache = gpt2_64
    parts = S.dla(model, cache, ds.answer_tokens)
    ld = S.logits_to_ave_logit_diff(final[:, None], ds.answer_tokens, per_prompt=True)
    report = assert_parity(S.dla_sum(parts), ld, atol=1e-12)
    assert_parity(parts["heads"].sum(1) + parts["attn_bias"], S.by_layer(parts, "attn_out"), atol=1e-12)
    assert_parity(parts["accumulated"][-1], ld - parts["unembed_bias"], atol=1e-12)
    off = S.EndCache(model, {**cache, "ln_final.hook_scale": 1.01 * cache["ln_final.hook_scale"]})
    shifted = S.dla(model, off, ds.answer_tokens)
    assert_parity(S.dla_sum(shifted) - parts["unembed_bias"], (ld - parts["unembed_bias"]) / 1.01, atol=1e-12)
    assert (ld - parts["unembed_bias"]).abs().min() > 1e-6
    measure("gpt2_float64.dla_sum_vs_logit_diff.max_abs_err", report.max_abs_err, "≤ 1e-12")


def test_dla_on_smollm2_sums_and_agrees_with_day_39(smol, measure):
    """On SmolLM2 (RMSNorm, rotary: no positional component, 30 layers × 9 heads) the per-layer attributions sum to
    each prompt's logit difference within 2ε (the float32 error stated), each layer's 9 heads plus b_O to its
    attention output's; each head's attribution equals day 39's dla_decomposition (another route: z W_O per head
    projected and scaled) within 2ε; swapping IO and S negates every attribution; a head's push on logit(IO) plus
    its push against logit(S) is its attribution."""
    model, ds, _, final, cache, _ = smol
    parts = S.dla(model, cache, ds.answer_tokens)
    ld = S.logits_to_ave_logit_diff(final[:, None], ds.answer_tokens, per_prompt=True)
    tol = 2 * eps_of(final)
    report = assert_parity(S.dla_sum(parts), ld, atol=tol)
    assert parts["heads"].shape == (30, 9, len(ds)) and "pos_embed" not in parts["component_labels"]
    assert "hook_pos_embed" not in model.hook_dict and model.cfg.positional_embedding_type == "rotary"
    assert torch.equal(parts["unembed_bias"], torch.zeros(len(ds)))
    assert_parity(parts["heads"].sum(1) + parts["attn_bias"], S.by_layer(parts, "attn_out"), atol=tol)
    day39 = S.neurons.dla_decomposition(model, cache, ds.answer_tokens[:, 0], ds.answer_tokens[:, 1])
    other = assert_parity(parts["heads"].permute(2, 0, 1), day39["heads"], atol=tol)
    swapped = S.dla(model, cache, ds.answer_tokens.flip(1))
    assert_parity(swapped["heads"], -parts["heads"], atol=1e-6)
    split = S.head_logit_parts(model, cache, ds.answer_tokens)
    assert_parity(split["IO"] + split["minus_S"], parts["heads"], atol=tol)
    measure("smollm2.dla_sum_vs_logit_diff.max_abs_err", report.max_abs_err, f"≤ {tol:.1e}")
    measure("smollm2.heads_vs_day39.max_abs_err", other.max_abs_err, f"≤ {tol:.1e}")


def test_performance_intervals():
    """mean_ci is Student's t interval (scipy's ttest_1samp confidence interval, another code path); ioi_performance
    counts LD > 0 and IO-is-top-1 and gives Wilson intervals (day 40's wilson_interval, checked against scipy
    there) that contain the point estimate."""
    from scipy import stats

    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, generator=g, dtype=torch.float64) + 3
    m, lo, hi = S.mean_ci(x)
    ci = stats.ttest_1samp(x.numpy(), 0).confidence_interval(0.95)
    assert abs(lo - ci.low) < 1e-12 and abs(hi - ci.high) < 1e-12 and abs(m - x.mean().item()) < 1e-12
    ld = torch.tensor([2.0, -1.0, 0.5, 3.0])
    final = torch.zeros(4, 5)
    final[[0, 1, 2, 3], [1, 1, 2, 1]] = 1.0
    answers = torch.tensor([[1, 0], [1, 0], [3, 0], [1, 0]])
    perf = S.ioi_performance(ld, final, answers)
    assert (perf["n"], perf["n_correct"], perf["n_top1"]) == (4, 3, 3)
    assert (perf["accuracy"], perf["top1"]) == (0.75, 0.75)
    assert perf["accuracy_ci"][0] < 0.75 < perf["accuracy_ci"][1]
    assert perf["accuracy_ci"] == list(S.probes.wilson_interval(3, 4))


def test_results_json_is_current(smol, committed, measure):
    """results.json (cited by the post): its configuration is the experiment's; its example prompts are what the
    generator builds now (exactly: strings); the first 16 prompts' clean and ABC logit differences are recomputed
    now within 2ε; the counts it reports (accuracy, IO top-1, ABC accuracy) are read off its own per-prompt logit
    differences exactly, and the gate prompts' signs are decided (|LD| > 2ε); the attribution identities it
    reports are at rounding level; every other number is recomputed by the slow test."""
    model, ds, abc, final, _, final_abc = smol
    r = committed
    assert r["experiment"] == S.EXPERIMENT
    assert (r["n_names"], r["n_candidate_names"]) == (len(ds.names), len(S.NAMES))
    assert (r["n_layers"], r["n_heads"], r["n_key_value_heads"]) == (30, 9, 3) == \
        (model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_key_value_heads)
    assert r["example_prompts"] == ds.sentences[:4] and r["example_abc_prompts"] == abc.sentences[:4]
    ld = S.logits_to_ave_logit_diff(final[:, None], ds.answer_tokens, per_prompt=True)
    ld_abc = S.logits_to_ave_logit_diff(final_abc[:, None], ds.answer_tokens, per_prompt=True)
    tol = Tolerance(abs=2 * eps_of(final, final_abc), reason="a difference of two SmolLM2 logits, each within ε")
    worst = assert_reproduces(ld, r["logit_diff"][:N_GATE], tol, name="logit_diff")
    worst = max(worst, assert_reproduces(ld_abc, r["abc_logit_diff_per_prompt"][:N_GATE], tol, name="abc"))
    assert ld.abs().min() > tol.abs and ld_abc.abs().min() > tol.abs
    full = torch.tensor(r["logit_diff"])
    assert_reproduces(r["performance"]["n_correct"], int((full > 0).sum()), exact("a count of the committed signs"))
    assert_reproduces(r["abc_performance"]["n_correct"], int((torch.tensor(r["abc_logit_diff_per_prompt"]) > 0).sum()),
                      exact("a count of the committed signs"))
    assert r["performance"]["n"] == len(full) == S.EXPERIMENT["N"]
    assert r["performance_ABBA"]["n"] == r["performance_BABA"]["n"] == S.EXPERIMENT["N"] // 2
    assert abs(r["clean_logit_diff"] - full.mean().item()) < 1e-5
    assert final.abs().max().item() <= r["max_abs_logit"] * 1.5
    for key in ("dla_sum_max_abs_err", "head_sum_vs_attn_out_max_abs_err", "heads_vs_day39_max_abs_err"):
        assert r[key] < 2 * SMOLLM2_LOGIT_REL * r["max_abs_logit"], key   # rounding: below 2ε
    for name in ("logit_diff", "dla", "attention_to_names"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
    measure("results_vs_committed", worst, "≤ 1 (fraction of the tolerance)")


@pytest.mark.slow
def test_experiment_reproduces(tmp_path, committed, measure):
    """(slow: 256 prompts and their ABC twins through SmolLM2) The whole experiment rerun: every per-prompt logit
    difference, the per-layer and per-head attributions, and the attention of the top heads to IO/S1/S2 within 2ε
    of results.json (an attention weight is a softmax of logits-scale scores: within the same bound); each count
    (LD > 0, IO top-1) within the number of prompts whose decision lies within 2ε (exactly where there are none);
    decisions past thresholds exactly, their margins checked; the top heads the post names are the same heads, their order decided
    by margins above twice the tolerance."""
    r = S.run_experiment(tmp_path)
    c = committed
    assert abs(r["max_abs_logit"] - c["max_abs_logit"]) < 1e-2 * c["max_abs_logit"]
    eps = SMOLLM2_LOGIT_REL * c["max_abs_logit"]     # ε at the largest final-position logit of the run
    two = Tolerance(abs=2 * eps, reason="a difference of two SmolLM2 logits (or a part of one), each within ε")
    worst = 0.0
    for key in ("logit_diff", "abc_logit_diff_per_prompt", "attn_by_layer", "mlp_by_layer", "head_dla", "accumulated",
                "clean_logit_diff", "abc_logit_diff", "total_attn", "total_mlp", "embed_dla"):
        worst = max(worst, assert_reproduces(r[key], c[key], two, name=key))
    # a count moves on another CPU only through prompts within rounding of its decision: those are its tolerance
    abba = torch.arange(S.EXPERIMENT["N"]) % 2 == 0
    near_sign = {"": torch.tensor(c["logit_diff"]).abs() <= two.abs,
                 "abc": torch.tensor(c["abc_logit_diff_per_prompt"]).abs() <= two.abs}
    near_top = {"": torch.tensor(c["io_top_margin"]) <= two.abs, "abc": torch.tensor(c["abc_io_top_margin"]) <= two.abs}
    for key, which, mask in (("performance", "", slice(None)), ("performance_ABBA", "", abba),
                             ("performance_BABA", "", ~abba), ("abc_performance", "abc", slice(None))):
        assert r[key]["n"] == c[key]["n"]
        for count, near in (("n_correct", near_sign[which]), ("n_top1", near_top[which])):
            k = int(near[mask].sum())
            assert_reproduces(r[key][count], c[key][count], Tolerance(abs=k, reason=f"{k} prompts within rounding of "
                                                                      "the decision") if k else exact("no prompt "
                                                                      "within rounding of the decision"),
                              name=f"{key}.{count}")
    measure("experiment.prompts_within_rounding_of_sign", int(near_sign[""].sum()))
    heads = torch.tensor(r["head_dla"]).flatten().sort(descending=True).values
    for i in range(S.N_TOP_HEADS):
        assert heads[i] - heads[i + 1] > 2 * two.abs, f"rank {i + 1}"
        assert heads[-i - 2] - heads[-i - 1] > 2 * two.abs, f"negative rank {i + 1}"
    attn, mlp = torch.tensor(r["attn_by_layer"]), torch.tensor(r["mlp_by_layer"])
    for values, threshold in ((attn.abs(), 0.25), (mlp.abs(), 0.25), (torch.tensor(r["head_dla"]), 0.25),
                              (-torch.tensor(r["head_dla"]), 0.25)):
        assert ((values - threshold).abs() > two.abs).all(), "a count past a threshold within rounding"
    for values in (attn, mlp):
        top2 = values.topk(2).values
        assert top2[0] - top2[1] > 2 * two.abs
    for key in ("first_layer_over_quarter", "largest_attn_layer", "largest_mlp_layer", "n_heads_over_quarter",
                "n_heads_under_minus_quarter", "n_names"):
        assert_reproduces(r[key], c[key], exact("a decision whose margins are checked above"), name=key)
    for key in ("top_positive_heads", "top_negative_heads"):
        assert [h["label"] for h in r[key]] == [h["label"] for h in c[key]]
        worst = max(worst, assert_reproduces(r[key], c[key], two, name=key))
    measure("experiment_vs_committed", worst, "≤ 1 (fraction of the tolerance)")
    measure("experiment.wall_seconds", r["wall_seconds"])
