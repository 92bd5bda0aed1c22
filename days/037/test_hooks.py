"""The gate of day 37 (ARENA 1.2 §3: hooks: caching, ablation and activation patching).

References: TransformerLens's ``run_with_cache`` (which hook-based caching must reproduce exactly), its
``transformer_lens.patching`` module (``get_act_patch_resid_pre``, ``get_act_patch_attn_head_out_all_pos``)
for activation patching, and weight surgery for ablation: zero-ablating head h through ``hook_z`` must equal
zeroing W_O[h] in TransformerLens and zeroing the matching columns of ``o_proj`` in Hugging Face's SmolLM2, an
independent implementation. Tolerances: identical arithmetic is compared exactly; the same model computed two
ways in float32 to 1e-5 (2-layer) or 5e-4 (SmolLM2's log-probabilities through 30 layers, as on day 36).
"""

import importlib
from functools import partial
from pathlib import Path

import pytest
import torch
from transformer_lens import patching

from checks import assert_parity
from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces
from checks.models import smollm2, smollm2_hooked

from . import hooks as H

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("gpt2-tokenizer", "smollm2-135m-instruct", "wikitext-2")


fixtures = importlib.import_module("days.035.fixtures")
one_thread_module, small_gpt2, gpt2, ioi_pair = fixtures.one_thread_module, fixtures.small_gpt2, fixtures.gpt2, fixtures.ioi_prompts


@pytest.fixture(scope="module")
def smol():
    """SmolLM2 and 2×32 tokens from WikiText-2's *test* split (the experiment's ablation corpus is the validation
    split, so what the gate re-measures on these tokens is a fresh sample)."""
    model = smollm2_hooked()
    return model, H.tl_setup.wikitext_tokens(model.tokenizer, 2, 32, split="test")


def test_hook_caching_equals_run_with_cache(gpt2, smol):
    """Caching through hooks (run_with_hooks with a storing hook, and plain torch register_forward_hook on the
    HookPoints) records exactly run_with_cache's activations and logits, for a random GPT-2 and SmolLM2, and a
    name filter selects exactly the named activations."""
    for model, tokens in ((gpt2, gpt2.to_tokens(["The cat sat on the mat", "A dog ran in the park"])), smol):
        ref_logits, ref_cache = model.run_with_cache(tokens)
        for cache_fn in (H.cache_with_hooks, H.cache_with_torch_hooks):
            logits, cache = cache_fn(model, tokens)
            assert torch.equal(logits, ref_logits)
            assert set(cache) == set(ref_cache.keys())
            for name, value in cache.items():
                assert torch.equal(value, ref_cache[name]), name
        _, some = H.cache_with_hooks(model, tokens, ["blocks.1.attn.hook_pattern", "blocks.0.hook_resid_post"])
        assert set(some) == {"blocks.1.attn.hook_pattern", "blocks.0.hook_resid_post"}


def test_a_single_hook_name_selects_that_hook_only(gpt2):
    """ARENA §3 (caching with hooks, `names_filter`): a names filter may be one hook name as a string. Both
    hook-based caches then record exactly the activations that TransformerLens's own filtering
    (``run_with_cache(names_filter=name)``) records, with equal values, for a name in each part of the model."""
    tokens = gpt2.to_tokens("One name, one hook")
    for name in ("hook_embed", "blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post", "ln_final.hook_scale"):
        _, ref = gpt2.run_with_cache(tokens, names_filter=name)
        assert set(ref.keys()) == {name}
        for cache_fn in (H.cache_with_hooks, H.cache_with_torch_hooks):
            _, cache = cache_fn(gpt2, tokens, name)
            assert set(cache) == set(ref.keys()), (cache_fn.__name__, name, sorted(cache)[:3])
            assert torch.equal(cache[name], ref[name])


@pytest.fixture(scope="module")
def shortformer():
    """A small random attention-only model with shortformer positions (ARENA's 1.2 model attn-only-2l is one:
    the positional embedding is added to the queries' and keys' inputs in every layer, never to the residual
    stream), its positional weights scaled ×30 so that dropping them moves the loss far above rounding; with
    3×16 random tokens."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=50, n_ctx=16, attn_only=True,
                                  normalization_type=None, positional_embedding_type="shortformer", act_fn=None,
                                  seed=0, device="cpu")
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        model.pos_embed.W_pos.mul_(30)
    return model, torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(0))


def test_restarting_at_a_layer_keeps_shortformer_positions(shortformer, measure):
    """ARENA §3 (ablating a head: the loss with head h of layer l zero-ablated through hook_z) on a shortformer
    model: ablated_loss restarted at the ablated layer from the cached resid_pre equals the loss of a full forward
    pass with the same ablation hook, for every head (float32, 1e-6: the same operations on the same inputs); so
    does run_patched restarted from the corrupted run's resid_pre against a full patched forward (logits, 1e-5).
    A shortformer model's resid_pre holds no positions, so a restart must be handed them: without them (the old
    code) every ablation loss is off by more than 1e-3 and a patch's logits by more than 1e-2."""
    model, tokens = shortformer
    _, cache = model.run_with_cache(tokens)
    worst, dropped = 0.0, []
    for layer in range(2):
        resid_pre = cache[H.act_name("resid_pre", layer)]
        for head in range(4):
            fwd_hooks = [(H.act_name("z", layer), partial(H.ablate_head_hook, head=head))]
            full = H.next_token_loss(model.run_with_hooks(tokens, fwd_hooks=fwd_hooks), tokens).item()
            restarted = H.ablated_loss(model, tokens, layer, head, resid_pre=resid_pre)
            worst = max(worst, abs(restarted - full))
            # the bug: the same restart without the positions (what ablated_loss did before)
            bare = model.run_with_hooks(resid_pre, start_at_layer=layer, fwd_hooks=fwd_hooks)
            dropped.append(abs(H.next_token_loss(bare, tokens).item() - full))
    measure("shortformer.restarted_ablation_loss.max_abs_err", worst, "≤ 1e-6")
    measure("shortformer.restart_without_positions.min_loss_err", min(dropped), "> 1e-3")
    measure("shortformer.restart_without_positions.max_loss_err", max(dropped))
    assert worst <= 1e-6 and min(dropped) > 1e-3
    clean = torch.randint(0, 50, tokens.shape, generator=torch.Generator().manual_seed(1))
    _, clean_cache = model.run_with_cache(clean)
    bare_gap = 0.0
    for layer in range(2):
        name = H.act_name("z", layer)
        full = H.run_patched(model, tokens, clean_cache, name, head=1)
        restarted = H.run_patched(model, tokens, clean_cache, name, head=1, corrupted_cache=cache)
        assert_parity(restarted, full, atol=1e-5, name=f"run_patched restarted at layer {layer}")
        hook = partial(H.patch_hook, clean_cache=clean_cache, head=1)
        bare = model.run_with_hooks(cache[H.act_name("resid_pre", layer)], start_at_layer=layer, fwd_hooks=[(name, hook)])
        bare_gap = max(bare_gap, (bare - full).abs().max().item())
    measure("shortformer.patch_restart_without_positions.max_logit_err", bare_gap, "> 1e-2")
    assert bare_gap > 1e-2


def test_hooks_are_removed_after_the_run(gpt2):
    """run_with_hooks and cache_with_torch_hooks leave no hook behind: afterwards no HookPoint has a forward hook
    and a plain forward pass gives the unhooked logits, even after an ablating hook and after an exception."""
    tokens = gpt2.to_tokens("Hooks must not leak")
    before = gpt2(tokens)
    ablated = gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", partial(H.ablate_head_hook, head=1))])
    assert (ablated - before).abs().max() > 1e-3
    H.cache_with_torch_hooks(gpt2, tokens)
    with pytest.raises(RuntimeError):
        def boom(activation, hook):
            raise RuntimeError("inside a hook")
        gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", boom)])
    assert all(len(hp._forward_hooks) == 0 for hp in gpt2.hook_dict.values())
    assert torch.equal(gpt2(tokens), before)


def test_zero_ablation_hook_equals_zeroing_W_O(gpt2, measure):
    """Zero-ablating head h of layer l through hook_z is the same model as W_O[l, h] = 0: equal logits for every
    head of the random GPT-2 (float32, 1e-5). The hook edits a clone, never the cached activation."""
    tokens = gpt2.to_tokens("When Mary and John went to the store, John gave a drink to")
    worst = 0.0
    for layer in range(2):
        for head in range(4):
            hook = partial(H.ablate_head_hook, head=head)
            hooked = gpt2.run_with_hooks(tokens, fwd_hooks=[(H.act_name("z", layer), hook)])
            W_O = gpt2.blocks[layer].attn.W_O
            saved = W_O[head].clone()
            with torch.no_grad():
                W_O[head] = 0
                surgery = gpt2(tokens)
                W_O[head] = saved
            worst = max(worst, assert_parity(hooked, surgery, atol=1e-5).max_abs_err)
    measure("gpt2.zero_ablation_vs_weight_surgery.max_abs_err", worst, "≤ 1e-5")
    z = torch.randn(1, 3, 4, 16)
    original = z.clone()
    H.ablate_head_hook(z, None, head=2)
    assert torch.equal(z, original)


def test_smollm2_zero_ablation_equals_hugging_face_surgery(smol, measure):
    """On SmolLM2, zero-ablating head 0 of layer 16 (day 35's previous-token head) through hook_z equals Hugging
    Face's model with o_proj.weight[:, 0:64] of layer 16 zeroed (log-probabilities, 5e-4); ablation_loss_increase,
    which starts the forward pass at the ablated layer from the cached resid_pre, gives the same loss change as
    the full hooked run (1e-6), and mean ablation's values are the head's mean output over the same tokens."""
    model, tokens = smol
    hf, _ = smollm2()
    layer, head = 16, 0
    with torch.no_grad():
        hooked = model.run_with_hooks(tokens, fwd_hooks=[(H.act_name("z", layer), partial(H.ablate_head_hook, head=head))])
        o_proj = hf.model.layers[layer].self_attn.o_proj.weight
        saved = o_proj[:, head * 64:(head + 1) * 64].clone()
        o_proj[:, head * 64:(head + 1) * 64] = 0
        try:
            surgery = hf(tokens).logits
        finally:
            o_proj[:, head * 64:(head + 1) * 64] = saved
    report = assert_parity(hooked.log_softmax(-1), surgery.log_softmax(-1), atol=5e-4)
    measure("smollm2.zero_ablation_vs_hugging_face_surgery.max_abs_err", report.max_abs_err, "≤ 5e-4")
    increase = H.ablation_loss_increase(model, tokens, "zero", heads=[(layer, head)])
    full = H.next_token_loss(hooked, tokens).item() - H.next_token_loss(model(tokens), tokens).item()
    assert increase[layer, head].item() == pytest.approx(full, abs=1e-6)
    assert torch.isnan(increase[0, 0])  # heads not asked for stay NaN
    means = H.head_means(model, tokens)
    _, cache = model.run_with_cache(tokens)
    assert_parity(means[layer, head], cache[H.act_name("z", layer)][:, :, head].mean((0, 1)), atol=1e-6)


def test_smollm2_head_ablation_changes_the_loss(smol, committed, measure):
    """A head ablation changes the loss, and not only on the text where it was found: the five heads whose zero
    ablation hurt most in the experiment (WikiText-2 validation, results.json) are zero-ablated one at a time on
    2×64 fresh tokens of the *test* split; on average each still raises the loss by more than 0.05 nats, the
    largest by more than 0.1."""
    model, _ = smol
    tokens = H.tl_setup.wikitext_tokens(model.tokenizer, 2, 64, split="test")
    top = committed["zero_ablation_top"]
    heads = [(t["layer"], t["index"]) for t in top]
    assert len(heads) == 5
    increase = H.ablation_loss_increase(model, tokens, "zero", heads=heads)
    values = torch.tensor([increase[head].item() for head in heads])
    measure("smollm2.top5_zero_ablation.mean_increase_on_test_split", values.mean(), "> 0.05")
    measure("smollm2.top5_zero_ablation.max_increase_on_test_split", values.max(), "> 0.1")
    measure("smollm2.top1_zero_ablation.increase_on_test_split", values[0])
    assert values.mean() > 0.05 and values.max() > 0.1


PATCHERS = {"resid_pre": (H.patch_residual_stream, patching.get_act_patch_resid_pre),
            "head_z": (H.patch_head_outputs, patching.get_act_patch_attn_head_out_all_pos)}


@pytest.mark.parametrize("what", PATCHERS)
def test_patching_matches_transformer_lens(what, gpt2, measure):
    """Activation patching equals TransformerLens's patching module on a random GPT-2 and a clean/corrupted pair
    (normalised logit difference, 1e-5): resid_pre at every (layer, position) against get_act_patch_resid_pre, and
    one head's z at all positions against get_act_patch_attn_head_out_all_pos."""
    ours_fn, theirs_fn = PATCHERS[what]
    clean, corrupted, correct, wrong = ioi_pair(gpt2)
    metric = partial(H.logit_difference, correct=correct, wrong=wrong)
    ours = ours_fn(gpt2, clean, corrupted, metric)
    clean_logits, clean_cache = gpt2.run_with_cache(clean)
    score = H.normalised(metric, clean_logits, gpt2(corrupted))
    theirs = theirs_fn(gpt2, corrupted, clean_cache, lambda logits: torch.tensor(score(logits)))
    report = assert_parity(ours, theirs, atol=1e-5)
    measure(f"gpt2.{what}_patching_vs_transformer_lens.max_abs_err", report.max_abs_err, "≤ 1e-5")


def test_patching_invariants(gpt2):
    """What patching must give by construction: patching the whole residual stream restores the clean run
    (normalised score 1 at every layer); positions before the first differing token score exactly 0 (clean and
    corrupted activations are equal there); patching the last position after the last block restores the clean
    metric exactly."""
    clean, corrupted, correct, wrong = ioi_pair(gpt2)
    metric = partial(H.logit_difference, correct=correct, wrong=wrong)
    clean_logits, clean_cache = gpt2.run_with_cache(clean)
    score = H.normalised(metric, clean_logits, gpt2(corrupted))
    for layer in range(2):
        assert score(H.run_patched(gpt2, corrupted, clean_cache, H.act_name("resid_pre", layer))) == pytest.approx(1, abs=1e-5)
    first_diff = int((clean != corrupted).any(0).nonzero()[0])
    resid = H.patch_residual_stream(gpt2, clean, corrupted, metric)
    assert torch.equal(resid[:, :first_diff], torch.zeros(2, first_diff))
    last = H.run_patched(gpt2, corrupted, clean_cache, H.act_name("resid_post", 1), position=-1)
    assert score(last) == pytest.approx(1, abs=1e-5)
    assert score(clean_logits) == 1 and score(gpt2(corrupted)) == 0


# A SmolLM2 logit's float32 error on another CPU, relative to the logits' scale: derived in checks/committed.py.
SMOL_REL = SMOLLM2_LOGIT_REL


def logit_error(*logits) -> float:
    """One logit's float32 error in these runs: SMOL_REL × their largest |logit|."""
    return SMOL_REL * max(x.abs().max().item() for x in logits)


def test_smollm2_landmark_task_and_results(smol, committed, measure):
    """The experiment's task is real: SmolLM2 prefers the right city (clean logit difference > 1 on average, < -1
    when the landmarks are swapped), the prompts tokenize to equal lengths; results.json (cited by the post) holds
    today's logit differences, and three cells of its residual patching map, recomputed now, agree, within
    SmolLM2's float32 rounding (a logit off by 2.2e-4 × the largest |logit|, SMOL_REL; a difference of two by
    twice that; a normalised score (m − m_c)/(m_clean − m_c) by 4·err·(1 + |score|)/|m_clean − m_c|): the
    subject's tokens at the first layer, the last position where the information arrives, and at the last layer.
    The first position (the same "The" in both prompts) scores exactly 0 at every layer."""
    model, _ = smol
    clean, corrupted, correct, wrong = H.landmark_batch(model.tokenizer)
    assert clean.shape == corrupted.shape == (4, 9)
    metric = partial(H.logit_difference, correct=correct, wrong=wrong)
    with torch.no_grad():
        clean_logits, clean_cache = H.cache_with_hooks(model, clean, lambda n: n.endswith("hook_resid_pre"))
        corrupted_logits = model(corrupted)
    clean_diff, corrupted_diff = metric(clean_logits).item(), metric(corrupted_logits).item()
    measure("smollm2.landmarks.clean_logit_diff", clean_diff, "> 1")
    assert clean_diff > 1 and corrupted_diff < -1
    results = committed
    err = logit_error(clean_logits, corrupted_logits)
    diff_tol = Tolerance(abs=2 * err, reason=f"a difference of two SmolLM2 logits, each within {err:.1e}")
    worst = assert_reproduces({"clean_logit_diff": clean_diff, "corrupted_logit_diff": corrupted_diff},
                              {k: results[k] for k in ("clean_logit_diff", "corrupted_logit_diff")}, diff_tol, name="landmarks")
    resid = torch.tensor(results["resid_patching"])
    assert resid.shape == (30, 9) and torch.equal(resid[:, 0], torch.zeros(30))
    score = H.normalised(metric, clean_logits, corrupted_logits)
    handover = results["resid_handover_layer"]
    for layer, pos in ((0, 2), (handover, 8), (29, 8)):
        patched = H.run_patched(model, corrupted, clean_cache, H.act_name("resid_pre", layer), pos)
        now, e = score(patched), max(err, logit_error(patched))
        tol = Tolerance(abs=4 * e * (1 + abs(now)) / abs(clean_diff - corrupted_diff),
                        reason="a normalised score of three SmolLM2 logit differences, each within 2 logit errors")
        worst = max(worst, assert_reproduces(now, resid[layer, pos].item(), tol, name=f"resid_patching[{layer}, {pos}]"))
    measure("smollm2.landmarks_vs_committed", worst, "≤ 1 (fraction of the tolerance)")
    assert resid[0, 1:4].max() > 0.5 and resid[-1, -1] > 0.5 and resid[handover, -1] > resid[handover, 1:4].max()
    for name in ("patching", "ablation"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000


def _within(now: torch.Tensor, then, tol: torch.Tensor, name: str) -> float:
    """Every element of ``now`` within its own tolerance of the committed ``then``; the worst |Δ|/tol."""
    then = torch.as_tensor(then, dtype=now.dtype)
    ratio = ((now - then).abs() / tol).max().item()
    assert ratio <= 1, f"{name}: off by {ratio:.2f}× the tolerance at {divmod(int(((now - then).abs() / tol).argmax()), now.shape[-1])}"
    return ratio


def _assert_ranked(values: torch.Tensor, tol: torch.Tensor, cells: list[tuple[int, int]], name: str) -> None:
    """The committed cells are the map's top len(cells), in order, up to rounding: the i-th committed cell's value
    now is within both tolerances of the i-th largest value now (a near-tie may order them either way)."""
    order = values.flatten().argsort(descending=True)
    for i, (l, h) in enumerate(cells):
        top = divmod(int(order[i]), values.shape[1])
        assert values[top] - values[l, h] <= tol[top] + tol[l, h], f"{name}: L{l}H{h} is not number {i + 1}"


@pytest.mark.slow
def test_experiment_reproduces_what_the_post_cites(committed, measure):
    """The whole experiment recomputed (every number the post cites from results.json): the residual patching map
    (its subject-token maximum, the hand-over layer, the last position's scores), the head patching map (its top
    three heads, in order, and L29H0), the clean loss, both ablation maps (their maxima, medians and the L1H3/L1H5
    cells), each within SmolLM2's float32 rounding as derived in the gate (a logit off by SMOL_REL × that run's
    largest |logit|: a normalised score by 4·err·(1 + |score|)/|m_clean − m_corrupted|, a loss by 2·err, a loss
    increase by the sum of two), a maximum or median by its cells' largest tolerance, and every ranking the post
    states as committed up to rounding (a cell the post names k-th is within the tolerances of the k-th value)."""
    model = smollm2_hooked()
    results = committed
    clean, corrupted, correct, wrong = H.landmark_batch(model.tokenizer)
    metric = partial(H.logit_difference, correct=correct, wrong=wrong)
    clean_logits, clean_cache = H.cache_with_hooks(model, clean, lambda n: n.endswith(("hook_resid_pre", "hook_z")))
    corrupted_logits, corrupted_cache = H.cache_with_hooks(model, corrupted, lambda n: n.endswith("hook_resid_pre"))
    score = H.normalised(metric, clean_logits, corrupted_logits)
    spread = abs(metric(clean_logits).item() - metric(corrupted_logits).item())
    base = logit_error(clean_logits, corrupted_logits)
    maps = {}
    for what, cells in (("resid", [(l, p) for l in range(30) for p in range(9)]), ("heads", [(l, h) for l in range(30) for h in range(9)])):
        values, tol = torch.zeros(30, 9), torch.zeros(30, 9)
        for layer, i in cells:
            if what == "resid":
                patched = H.run_patched(model, corrupted, clean_cache, H.act_name("resid_pre", layer), position=i,
                                        corrupted_cache=corrupted_cache)
            else:
                patched = H.run_patched(model, corrupted, clean_cache, H.act_name("z", layer), head=i,
                                        corrupted_cache=corrupted_cache)
            values[layer, i] = score(patched)
            tol[layer, i] = 4 * max(base, logit_error(patched)) * (1 + abs(values[layer, i])) / spread
        maps[what] = (values, tol)
    resid, resid_tol = maps["resid"]
    heads, heads_tol = maps["heads"]
    worst = _within(resid, results["resid_patching"], resid_tol, "resid_patching")
    worst = max(worst, _within(heads, results["head_patching"], heads_tol, "head_patching"))
    subject = resid[:, 1:4]
    assert abs(subject.max() - results["resid_patching_subject_positions_max"]) <= resid_tol[:, 1:4].max()
    handover = next(l for l in range(30) if resid[l, -1] > subject[l].max())
    assert handover == results["resid_handover_layer"]
    assert all((subject[l].max() - resid[l, -1]).abs() > resid_tol[l].max() * 2 for l in range(handover + 1))
    cited = [(t["layer"], t["index"]) for t in results["head_patching_top"][:3]]
    _assert_ranked(heads, heads_tol, cited, "head_patching_top")
    for i, (l, h) in enumerate(cited):
        assert abs(heads[l, h] - results["head_patching_top"][i]["value"]) <= heads_tol[l, h]
    measure("slow.head_patching_top", " ".join(f"L{l}H{h}" for l, h in cited))

    tokens = H.tl_setup.wikitext_tokens(model.tokenizer, **H.ABLATION_CORPUS)
    assert results["ablation_corpus"] == H.ABLATION_CORPUS
    logits, cache = H.cache_with_hooks(model, tokens, lambda n: n.endswith(("hook_z", "hook_resid_pre")))
    clean_loss, clean_err = H.next_token_loss(logits, tokens).item(), logit_error(logits)
    assert abs(clean_loss - results["clean_loss"]) <= 2 * clean_err
    means = torch.stack([cache[H.act_name("z", l)].mean((0, 1)) for l in range(30)])
    for kind in ("mean", "zero"):
        values, tol = torch.zeros(30, 9), torch.zeros(30, 9)
        for layer in range(30):
            for head in range(9):
                ablated = H.ablated_logits(model, tokens, layer, head, None if kind == "zero" else means[layer, head],
                                           resid_pre=cache[H.act_name("resid_pre", layer)])
                values[layer, head] = H.next_token_loss(ablated, tokens).item() - clean_loss
                tol[layer, head] = 2 * clean_err + 2 * logit_error(ablated)
        worst = max(worst, _within(values, results[f"{kind}_ablation"], tol, f"{kind}_ablation"))
        assert abs(values.median() - results[f"{kind}_ablation_median"]) <= tol.max()
        recorded = results[f"{kind}_ablation_max"]
        ml, mh = recorded["layer"], recorded["head"]
        _assert_ranked(values, tol, [(ml, mh)], f"{kind}_ablation_max")
        assert abs(values[ml, mh] - recorded["value"]) <= tol[ml, mh]
        measure(f"slow.{kind}_ablation.max_tolerance", tol.max())
    measure("slow.experiment_vs_committed", worst, "≤ 1 (fraction of the tolerance)")
