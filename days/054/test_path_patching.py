"""The gate of day 54 (ARENA 1.4.1 IOI, §2 activation patching and §3 path patching) on day 53's dataset and metric.

References: ``transformer_lens.patching`` (one full forward pass per patch, its own patch setters) for every
activation-patching function; ARENA's path-patching algorithm written out literally below (one full forward pass
per sender, hooks added with ``model.hooks``, logits from the model's own unembedding) for our batched,
start-at-layer implementation; central differences in float64 for the attribution estimates; and the identities of
the method (clean into clean changes nothing; a sender patched into every downstream path is activation patching
of that sender; a last-layer sender has no head downstream to freeze). The structure and identities run on the
2-layer GPT-2-shaped random model in float64 (1e-10); SmolLM2 checks grouped-query attention and a handful of
heads.

Tolerances on SmolLM2: a logit difference is within 2ε of another float32 path (ε = SMOLLM2_LOGIT_REL × max|logit|,
checks/committed.py). A normalised metric m = (LD − c)/(c − a) then moves by at most
2ε (1 + |1 + m| + |m|) / (c − a) (its derivatives in LD, c and a), which ``metric_tolerance`` states.
"""

import copy
import importlib
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tlp

from checks import assert_parity
from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces
from checks.models import hooked_model

from . import path_patching as P

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("gpt2-tokenizer", "smollm2-135m-instruct")

fixtures = importlib.import_module("days.035.fixtures")
one_thread_module, small_gpt2 = fixtures.one_thread_module, fixtures.small_gpt2
ioi = P.ioi


F32 = 2.0 ** -24   # transformer_lens.patching stores its results in a float32 tensor: one float32 rounding


def metric_tolerance(eps: float, gap: float, m_max: float) -> float:
    """How far a normalised IOI metric can move when each logit moves by ε: 2ε(2 + 2|m|)/(c − a)."""
    return 2 * eps * (2 + 2 * m_max) / abs(gap)


def setup(model, ds, abc, names_filter=None):
    """Caches (TransformerLens's own ActivationCache: all hooks, or those ``names_filter`` keeps), final logits,
    logit differences and the metrics."""
    with torch.no_grad():
        lc, clean_cache = model.run_with_cache(ds.toks, names_filter=names_filter)
        la, abc_cache = model.run_with_cache(abc.toks, names_filter=names_filter)
    end = ds.word_idx["end"]
    fc, fa = ioi.final_logits(lc, end), ioi.final_logits(la, end)
    ld = lambda f: ioi.logits_to_ave_logit_diff(f[:, None], ds.answer_tokens).item()  # noqa: E731
    c, a = ld(fc), ld(fa)
    return SimpleNamespace(ds=ds, abc=abc, clean=clean_cache, corrupt=abc_cache, fc=fc, fa=fa, c=c, a=a, end=end,
                           metric=partial(P.ioi_metric_final, answer_tokens=ds.answer_tokens, clean_logit_diff=c,
                                          corrupted_logit_diff=a),
                           metric2=partial(P.ioi_metric_2_final, answer_tokens=ds.answer_tokens, clean_logit_diff=c,
                                           corrupted_logit_diff=a))


@pytest.fixture(scope="module")
def g64(small_gpt2):
    """The 2-layer, 4-head GPT-2-shaped random model in float64; one-template prompts (same length) and
    mixed-template prompts (right-padded), each with its ABC twin."""
    model = copy.deepcopy(small_gpt2[0]).to(torch.float64)
    one = ioi.IOIDataset("mixed", 4, model.tokenizer, seed=1, templates=[5])
    mixed = ioi.IOIDataset("mixed", 4, model.tokenizer, seed=2)
    return model, setup(model, one, one.gen_flipped_prompts()), setup(model, mixed, mixed.gen_flipped_prompts())


@pytest.fixture(scope="module")
def smol():
    """SmolLM2 and day 53's first 4 prompts with their ABC twins."""
    model = hooked_model("smollm2")
    ds, abc = ioi.build(model)
    return model, setup(model, ds[:4], abc[:4])


def eps_of(run) -> float:
    return SMOLLM2_LOGIT_REL * max(run.fc.abs().max().item(), run.fa.abs().max().item())


# ---------------------------------------------------------------- ARENA's algorithm, written out (the reference)


def arena_path_to_final(model, metric_full, new_cache, orig_toks, orig_cache, senders, freeze=True):
    """ARENA's get_path_patch_head_to_final_resid_post, one full forward pass per sender."""
    out = {}
    for l, h in senders:
        if freeze:
            hook = partial(P.patch_or_freeze_head_vectors, new_cache=new_cache, orig_cache=orig_cache, head_to_patch=(l, h))
            name = lambda n: n.endswith("hook_z")  # noqa: E731
        else:
            hook, name = partial(P.patch_head_vector, head_index=h, clean_cache=new_cache), f"blocks.{l}.attn.hook_z"
        with torch.no_grad(), model.hooks(fwd_hooks=[(name, hook)]):
            out[(l, h)] = metric_full(model(orig_toks)).item()
    return out


def arena_path_to_heads(model, metric_full, receivers, receiver_input, new_cache, orig_toks, orig_cache, senders):
    """ARENA's get_path_patch_head_to_heads, two full forward passes per sender."""
    names = {f"blocks.{l}.attn.hook_{receiver_input}" for l, _ in receivers}
    out = {}
    for l, h in senders:
        freeze = partial(P.patch_or_freeze_head_vectors, new_cache=new_cache, orig_cache=orig_cache, head_to_patch=(l, h))
        with torch.no_grad(), model.hooks(fwd_hooks=[(lambda n: n.endswith("hook_z"), freeze)]):
            _, patched = model.run_with_cache(orig_toks, names_filter=names.__contains__)
        with torch.no_grad(), model.hooks(fwd_hooks=[(n, partial(P.patch_head_input, patched_cache=patched,
                                                                  head_list=receivers)) for n in names]):
            out[(l, h)] = metric_full(model(orig_toks)).item()
    return out


# ---------------------------------------------------------------- the machinery


@pytest.mark.parametrize("which", ["gpt2_float64", "smollm2"])
def test_run_copies_from_a_layer_is_the_full_forward(which, g64, smol, measure):
    """run_copies (start_at_layer on the cached resid_pre, n copies of the batch, the unembedding applied at each
    prompt's end only) gives the full forward pass's final-position logits, for every copy and from every start
    layer tried: 1e-10 in float64; on SmolLM2 within ε (measured: the blocks' outputs are bit-identical)."""
    if which == "gpt2_float64":
        model, _, run = g64
        layers, tol = [0, 1], 1e-10
    else:
        model, run = smol
        layers, tol = [0, 17, 29], eps_of(run)
    worst = 0.0
    for l in layers:
        out = P.run_copies(model, l, run.clean[P.act_name("resid_pre", l)], run.end, 3)
        for copy_ in out:
            worst = max(worst, assert_parity(copy_, run.fc, atol=tol, name=f"layer {l}").max_abs_err)
    measure(f"{which}.run_copies_vs_forward.max_abs_err", worst, f"≤ {tol:.1e}")


def test_patch_hooks_on_hand_made_tensors():
    """ARENA's hook functions on hand-made tensors: patch_residual_component changes one position only;
    patch_head_vector and patch_attn_patterns one head only; patch_or_freeze_head_vectors sets every head to its
    orig value and the sender (in its own layer only) to its new value; patch_head_input replaces the receivers of
    the hook's layer and nothing else; per_copy applies patch i to copy i of a copy-major batch."""
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    hook = SimpleNamespace(name="blocks.3.attn.hook_z", layer=lambda: 3)
    a, b = rand(2, 5, 4, 3), rand(2, 5, 4, 3)
    out = P.patch_head_vector(a.clone(), hook, 2, {hook.name: b})
    assert torch.equal(out[:, :, 2], b[:, :, 2]) and torch.equal(out[:, :, [0, 1, 3]], a[:, :, [0, 1, 3]])
    orig, new, x = rand(2, 5, 4, 3), rand(2, 5, 4, 3), rand(2, 5, 4, 3)
    out = P.patch_or_freeze_head_vectors(x.clone(), hook, {hook.name: new}, {hook.name: orig}, (3, 1))
    assert torch.equal(out[:, :, 1], new[:, :, 1]) and torch.equal(out[:, :, [0, 2, 3]], orig[:, :, [0, 2, 3]])
    out = P.patch_or_freeze_head_vectors(x.clone(), hook, {hook.name: new}, {hook.name: orig}, (2, 1))
    assert torch.equal(out, orig)                       # another layer's sender: this layer is only frozen
    out = P.patch_head_input(x.clone(), hook, {hook.name: new}, [(3, 0), (3, 2), (4, 1)])
    assert torch.equal(out[:, :, [0, 2]], new[:, :, [0, 2]]) and torch.equal(out[:, :, [1, 3]], x[:, :, [1, 3]])
    r, c = rand(2, 5, 6), rand(2, 5, 6)
    rhook = SimpleNamespace(name="blocks.0.hook_resid_pre")
    out = P.patch_residual_component(r.clone(), rhook, 3, {rhook.name: c})
    assert torch.equal(out[:, 3], c[:, 3]) and torch.equal(out[:, [0, 1, 2, 4]], r[:, [0, 1, 2, 4]])
    pat, cp = rand(2, 4, 5, 5), rand(2, 4, 5, 5)
    out = P.patch_attn_patterns(pat.clone(), SimpleNamespace(name="p"), 1, {"p": cp})
    assert torch.equal(out[:, 1], cp[:, 1]) and torch.equal(out[:, [0, 2, 3]], pat[:, [0, 2, 3]])
    batch = torch.zeros(3 * 2, 4)
    P.per_copy([lambda t, h: t + 1, None, lambda t, h: t - 2])(batch, None)
    assert batch[:2].eq(1).all() and batch[2:4].eq(0).all() and batch[4:].eq(-2).all()


def test_summary_reads_the_position_grids():
    """summarise on hand-made grids (3 kinds × 4 layers × 5 positions; names at 1, 2, 3, end at 4): the first layer
    whose resid_pre at the end restores more than half, the largest effect at the names before it, and the layers
    of the largest and smallest attention and MLP effects at the end; agreement() on hand-made vectors."""
    block = torch.zeros(3, 4, 5)
    block[0, :, 4] = torch.tensor([0.1, 0.2, 0.7, 0.9])
    block[0, 1, 2] = -0.3
    block[0, 3, 1] = 0.8          # after the crossing: not counted
    block[0, 2, 3] = 0.6          # at the crossing layer itself: not counted either ("before" it)
    block[1, :, 4] = torch.tensor([0.0, -0.4, 0.6, 0.1])
    block[2, :, 4] = torch.tensor([0.05, 0.0, 0.2, 0.0])
    r = {"block_every": block.tolist(), "position_word_idx": {"IO": 1, "S1": 3, "S2": 2, "end": 4}}
    out = P.summarise(r)
    assert (out["resid_end_first_layer_over_half"], out["attn_end_max_layer"], out["attn_end_min_layer"],
            out["mlp_end_max_layer"], out["resid_end_max_layer"]) == (2, 2, 1, 2, 3)
    assert abs(out["resid_names_max_abs_before"] - 0.3) < 1e-7 and abs(out["attn_end_min"] + 0.4) < 1e-7
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    same = P.agreement(a, 2 * a, k=2)
    assert abs(same["pearson"] - 1) < 1e-12 and same["spearman"] == 1 and same["top2_overlap"] == 1
    flipped = P.agreement(a, -a, k=1)
    assert abs(flipped["pearson"] + 1) < 1e-12 and flipped["top1_overlap"] == 1


# ---------------------------------------------------------------- activation patching against transformer_lens.patching


def test_activation_patching_matches_transformer_lens(g64, measure):
    """get_act_patch_block_every (resid_pre, attn_out, mlp_out) and get_act_patch_attn_head_all_pos_every (out, q, k,
    v, pattern) equal transformer_lens.patching's functions of the same names on the same prompts (clean into ABC, ioi_metric at the final position), on every layer, position and
    head of the float64 random GPT-2 (1e-10, plus one float32 rounding: TransformerLens stores its results in a
    float32 tensor); and patching the embedding (resid_pre 0) where the clean and ABC
    tokens are the same changes nothing, while at the three name positions it does; get_act_patch_resid_pre and
    get_act_patch_attn_head_out_all_pos are the first rows of the two."""
    model, run, _ = g64
    full = P.on_full_logits(run.metric, run.end)
    pairs = [(P.get_act_patch_block_every, tlp.get_act_patch_block_every),              # [0] is resid_pre
             (P.get_act_patch_attn_head_all_pos_every, tlp.get_act_patch_attn_head_all_pos_every)]  # [0]: head out
    worst, ours_every = 0.0, {}
    for ours, theirs in pairs:
        a = ours_every[ours.__name__] = ours(model, run.abc.toks, run.clean, run.metric, run.end)
        b = theirs(model, run.abc.toks, run.clean, full)
        worst = max(worst, assert_parity(a, b, atol=1e-10, rtol=F32, name=ours.__name__).max_abs_err)
        assert a.abs().max() > 1e-3, ours.__name__         # not a comparison of zeros
    every_layer = P.get_act_patch_resid_pre(model, run.abc.toks, run.clean, run.metric, run.end)  # layers=None: all
    assert_parity(every_layer, ours_every["get_act_patch_block_every"][0], atol=1e-12)
    grid = P.get_act_patch_resid_pre(model, run.abc.toks, run.clean, run.metric, run.end, layers=[0])
    assert grid.shape == (1, run.ds.toks.shape[1])
    grid = grid[0]
    heads = P.get_act_patch_attn_head_out_all_pos(model, run.abc.toks, run.clean, run.metric, run.end, layers=[1])
    assert_parity(heads[0], P.get_act_patch_attn_head_all_pos_every(model, run.abc.toks, run.clean, run.metric,
                                                                    run.end, layers=[1])[0, 0], atol=1e-12)
    names = {run.ds.word_idx[k][0].item() for k in ("IO", "S1", "S2")}   # one template: the same slots everywhere
    same = [p for p in range(run.ds.toks.shape[1]) if p not in names]
    assert grid[same].abs().max() < 1e-10 and grid[sorted(names)].abs().max() > 1e-3
    measure("gpt2_float64.act_patching_vs_transformer_lens.max_abs_err", worst, "≤ 1e-10 + 2^-24·|ref|")


def test_grouped_query_attention_moves_three_heads(smol, measure):
    """SmolLM2's 9 query heads read 3 key/value heads. Computing keys and values per query head (``ungrouped``)
    changes nothing in the forward pass; patching key/value head g of layer 20 is the same intervention as
    patching the keys of its three query heads 3g … 3g+2 in the ungrouped model (same metric within ε-tolerance),
    and it changes those three heads' attention patterns and no other's; patching one ungrouped query head's key
    changes that head's pattern only."""
    model, run = smol
    l, g = 20, 1
    with torch.no_grad():
        base = model(run.abc.toks)
        with P.ungrouped(model):
            same = model(run.abc.toks)
            _, ung = model.run_with_cache(run.ds.toks, names_filter=lambda n: n == f"blocks.{l}.attn.hook_k")
    assert_parity(same, base, atol=eps_of(run), name="ungrouped forward")
    assert run.clean[f"blocks.{l}.attn.hook_k"].shape[2] == 3 and ung[f"blocks.{l}.attn.hook_k"].shape[2] == 9
    name, pattern = f"blocks.{l}.attn.hook_k", f"blocks.{l}.attn.hook_pattern"

    def patched_run(head_index, ungroup):
        hook = partial(P.patch_head_vector, head_index=head_index, clean_cache=ung if ungroup else run.clean)
        with torch.no_grad(), P.ungrouped(model, ungroup), model.hooks(fwd_hooks=[(name, hook)]):
            logits, cache = model.run_with_cache(run.abc.toks, names_filter=lambda n: n == pattern)
        return run.metric(ioi.final_logits(logits, run.end)), cache[pattern]

    grouped_m, grouped_p = patched_run(g, False)
    three_m, three_p = patched_run([3 * g, 3 * g + 1, 3 * g + 2], True)
    one_m, one_p = patched_run(3 * g + 1, True)
    tol = metric_tolerance(eps_of(run), run.c - run.a, 2.0)
    assert abs(grouped_m - three_m) <= tol
    moved = (grouped_p - run.corrupt[pattern]).abs().amax((0, 2, 3))
    assert (moved[3 * g:3 * g + 3] > 1e-3).all() and (torch.cat([moved[:3 * g], moved[3 * g + 3:]]) == 0).all()
    assert_parity(three_p, grouped_p, atol=1e-5)
    moved_one = (one_p - run.corrupt[pattern]).abs().amax((0, 2, 3))
    assert moved_one[3 * g + 1] > 1e-3 and (moved_one[[i for i in range(9) if i != 3 * g + 1]] == 0).all()
    measure("smollm2.grouped_vs_three_ungrouped_keys.metric_abs_diff", abs(grouped_m - three_m).item(), f"≤ {tol:.1e}")


def test_smollm2_head_patching_matches_transformer_lens(smol, measure):
    """On SmolLM2 (4 prompts, clean into ABC): our batched patching of two heads' outputs in layer 23, and
    get_act_patch_attn_head_all_pos_every's keys in layer 29 (TransformerLens's hook_k has 3 heads there), equal
    transformer_lens.patching.generic_activation_patch on the same cells, within the metric's tolerance; in
    get_act_patch_attn_head_all_pos_every's layout each key/value head's effect stands in its three query heads."""
    model, run = smol
    full = P.on_full_logits(run.metric, run.end)
    ours_z = P.get_act_patch_attn_head_out_all_pos(model, run.abc.toks, run.clean, run.metric, run.end, run.corrupt,
                                                   layers=[23], heads=[0, 3])[0]
    theirs_z = tlp.generic_activation_patch(model, run.abc.toks, run.clean, full, tlp.layer_head_vector_patch_setter,
                                            "z", index_df=pd.DataFrame({"layer": [23, 23], "head": [0, 3]}))
    every = P.get_act_patch_attn_head_all_pos_every(model, run.abc.toks, run.clean, run.metric, run.end, run.corrupt,
                                                    layers=[29])[:, 0]                       # [5, head]
    for kind in (2, 3):                               # each key/value head's effect stands in its three query heads
        assert (every[kind].view(3, 3) == every[kind].view(3, 3)[:, :1]).all()
    ours_k = every[2, [3]]                            # key/value head 1, read by query heads 3, 4, 5
    theirs_k = tlp.generic_activation_patch(model, run.abc.toks, run.clean, full, tlp.layer_head_vector_patch_setter,
                                            "k", index_df=pd.DataFrame({"layer": [29], "head": [1]}))
    m_max = max(ours_z.abs().max().item(), ours_k.abs().max().item())
    tol = Tolerance(abs=metric_tolerance(eps_of(run), run.c - run.a, m_max), reason="a normalised metric of SmolLM2 logits")
    worst = max(assert_reproduces(ours_z, theirs_z, tol, name="z"), assert_reproduces(ours_k, theirs_k, tol, name="k"))
    assert ours_z.abs().max() > 10 * tol.abs
    diff = max((ours_z - theirs_z).abs().max().item(), (ours_k - theirs_k).abs().max().item())
    measure("smollm2.head_patching_vs_transformer_lens.max_abs_err", diff, f"≤ {tol.abs:.1e}")
    measure("smollm2.head_patching_vs_transformer_lens.fraction_of_tolerance", worst, "≤ 1")


# ---------------------------------------------------------------- path patching


def test_path_patching_matches_arenas_algorithm(g64, measure):
    """Our batched path patching (start at the sender's layer, one copy per sender) equals ARENA's algorithm run
    literally (one full forward pass per sender, logits from the model's own unembedding) on right-padded
    mixed-template prompts: to the final stream for every sender, and into the layer-1 receivers' queries, keys and
    values for every layer-0 sender (1e-10, float64)."""
    model, _, run = g64
    full = P.on_full_logits(run.metric2, run.end)
    all_heads = [(l, h) for l in range(2) for h in range(4)]
    ours = P.get_path_patch_head_to_final_resid_post(model, run.metric2, run.abc, run.ds, run.corrupt, run.clean)
    ref = arena_path_to_final(model, full, run.corrupt, run.ds.toks, run.clean, all_heads)
    worst = assert_parity(ours, torch.tensor([[ref[(l, h)] for h in range(4)] for l in range(2)], dtype=torch.float64), atol=1e-10).max_abs_err
    receivers = [(1, 0), (1, 3)]
    for x in ("q", "k", "v"):
        ours = P.get_path_patch_head_to_heads(receivers, x, model, run.metric2, run.abc, run.ds, run.corrupt, run.clean)
        ref = arena_path_to_heads(model, full, receivers, x, run.corrupt, run.ds.toks, run.clean, all_heads[:4])
        assert ours.shape == (1, 4)
        worst = max(worst, assert_parity(ours[0], torch.tensor([ref[(0, h)] for h in range(4)], dtype=torch.float64), atol=1e-10).max_abs_err)
        assert ours.abs().max() > 1e-4
    measure("gpt2_float64.path_patching_vs_arena_algorithm.max_abs_err", worst, "≤ 1e-10")


def test_path_patching_identities(g64, measure):
    """The identities of path patching (float64, 1e-10): patching the orig run's own activations (new = orig)
    changes nothing, to the final stream or into any receiver input; with nothing frozen, a sender patched into
    every downstream path is activation patching of that sender, new into orig (transformer_lens.patching's
    get_act_patch_attn_head_out_all_pos with the orig prompts as its 'corrupted' run; plus one float32 rounding of
    its stored result); a sender in the last layer
    has no head downstream, so frozen and unfrozen path patching agree there, while in layer 0 they differ."""
    model, _, run = g64
    same = P.get_path_patch_head_to_final_resid_post(model, run.metric2, run.ds, run.ds, run.clean, run.clean)
    into = [P.get_path_patch_head_to_heads([(1, 1)], x, model, run.metric2, run.ds, run.ds, run.clean, run.clean)
            for x in ("q", "k", "v")]
    worst = max(same.abs().max().item(), *(t.abs().max().item() for t in into))
    assert worst < 1e-10
    unfrozen = P.get_path_patch_head_to_final_resid_post(model, run.metric2, run.abc, run.ds, run.corrupt, run.clean,
                                                         freeze=False)
    act = tlp.get_act_patch_attn_head_out_all_pos(model, run.ds.toks, run.corrupt, P.on_full_logits(run.metric2, run.end))
    report = assert_parity(unfrozen, act, atol=1e-10, rtol=F32)
    frozen = P.get_path_patch_head_to_final_resid_post(model, run.metric2, run.abc, run.ds, run.corrupt, run.clean)
    assert_parity(frozen[1], unfrozen[1], atol=1e-10)
    assert (frozen[0] - unfrozen[0]).abs().max() > 1e-4
    measure("gpt2_float64.clean_into_clean.max_abs", worst, "< 1e-10")
    measure("gpt2_float64.unfrozen_path_vs_act_patching.max_abs_err", report.max_abs_err, "≤ 1e-10 + 2^-24·|ref|")


def central_difference(patch, run, t: float = 1e-4):
    """(d/dt of patch(z_orig + t (z_new − z_orig)) at t = 0 by central differences, its error bound): the truncation
    error c·t² estimated by Richardson's rule from the difference at t/2 (fd(t) − fd(t/2) = ¾ c t²), plus the
    float64 rounding of the metric (≈ 1e-12: a few thousand operations at u = 1.1e-16, a safety factor of 8)
    divided by t."""
    def fd(step):
        values = []
        for sign in (1, -1):
            z = {k: run.clean[k] + sign * step * (run.corrupt[k] - run.clean[k]) for k in run.clean.keys()
                 if k.endswith("hook_z")}
            values.append(patch(z))
        return (values[0] - values[1]) / (2 * step)
    full, half = fd(t), fd(t / 2)
    return full, 4 / 3 * (full - half).abs().max().item() + 1e-12 / t


@pytest.mark.parametrize("freeze", [True, False])
def test_attribution_is_the_derivative_of_patching(g64, freeze, measure):
    """Attribution patching is the first-order term of patching: with the new activations replaced by
    z_orig ± t (z_new − z_orig), the central difference of exact path patching (frozen: to the final stream;
    unfrozen: activation patching, new into orig) over 2t equals get_attr_patch_head_out for every head (float64,
    t = 1e-4, within the difference's own error bound, ``central_difference``); and at t = 1 the estimate differs
    from the exact effect (it is a linearisation)."""
    model, _, run = g64
    attr = P.get_attr_patch_head_out(model, run.metric2, run.abc, run.ds, dict(run.corrupt.items()), freeze=freeze)
    fd, bound = central_difference(lambda z: P.get_path_patch_head_to_final_resid_post(
        model, run.metric2, run.abc, run.ds, z, run.clean, freeze=freeze), run)
    report = assert_parity(attr, fd, atol=bound)
    assert bound < 1e-5 * attr.abs().max().item()
    exact = P.get_path_patch_head_to_final_resid_post(model, run.metric2, run.abc, run.ds, run.corrupt, run.clean,
                                                      freeze=freeze)
    assert (exact - attr).abs().max() > 1e-6
    measure(f"gpt2_float64.attribution_vs_central_difference.freeze_{freeze}.max_abs_err", report.max_abs_err,
            f"≤ {bound:.1e}")


def test_attribution_needs_no_weight_gradients(g64):
    """Attribution differentiates the metric with respect to activations, never weights: with every parameter of
    the model frozen (requires_grad False, as for an inference model) both attribution functions give what they
    give on the trainable model (the embedding output is made a leaf that requires grad); called without
    ``new_cache`` they cache the new run's head outputs themselves."""
    model, _, run = g64
    receivers, args = [(1, 0), (1, 3)], (model, run.metric2, run.abc, run.ds)
    head = P.get_attr_patch_head_out(*args, dict(run.corrupt.items()), freeze=False)
    path = P.get_attr_path_patch_head_to_heads(receivers, "v", *args, dict(run.corrupt.items()))
    trainable = [p.requires_grad for p in model.parameters()]
    assert all(trainable)
    try:
        model.requires_grad_(False)
        frozen_head = P.get_attr_patch_head_out(*args, freeze=False)
        frozen_path = P.get_attr_path_patch_head_to_heads(receivers, "v", *args)
    finally:
        model.requires_grad_(True)
    assert head.abs().max() > 1e-4 and path.abs().max() > 1e-4
    assert_parity(frozen_head, head, atol=1e-12, name="head out")
    assert_parity(frozen_path, path, atol=1e-12, name="head to heads")


@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
def test_path_attribution_is_the_derivative_of_path_patching(g64, receiver_input, measure):
    """get_attr_path_patch_head_to_heads is the first-order term of get_path_patch_head_to_heads: the central
    difference of the exact path patch into the layer-1 receivers' queries, keys or values, with the senders' new
    outputs at z_orig ± t (z_new − z_orig), over 2t, equals it for every layer-0 sender (float64, t = 1e-4, within
    the difference's own error bound)."""
    model, _, run = g64
    receivers = [(1, 0), (1, 3)]
    attr = P.get_attr_path_patch_head_to_heads(receivers, receiver_input, model, run.metric2, run.abc, run.ds,
                                               dict(run.corrupt.items()))
    fd, bound = central_difference(lambda z: P.get_path_patch_head_to_heads(
        receivers, receiver_input, model, run.metric2, run.abc, run.ds, z, run.clean), run)
    assert attr.shape == fd.shape == (1, 4) and attr.abs().max() > 1e-4
    report = assert_parity(attr, fd, atol=bound)
    assert bound < 1e-4 * attr.abs().max().item()
    measure(f"gpt2_float64.path_attribution_vs_central_difference.{receiver_input}.max_abs_err", report.max_abs_err,
            f"≤ {bound:.1e}")


def test_smollm2_path_patching_last_layer_and_receivers(smol, measure):
    """On SmolLM2 (4 prompts, ABC into clean): for the 9 heads of the last layer, frozen path patching equals
    unfrozen (no head downstream), within the metric's tolerance; path patching a layer-20 sender into a
    layer-23 receiver's own (ungrouped) key equals ARENA's algorithm run literally in the ungrouped model."""
    model, run = smol
    frozen = P.get_path_patch_head_to_final_resid_post(model, run.metric2, run.abc, run.ds, run.corrupt, run.clean,
                                                       senders=[(29, h) for h in range(9)])
    unfrozen = P.get_path_patch_head_to_final_resid_post(model, run.metric2, run.abc, run.ds, run.corrupt, run.clean,
                                                         senders=[(29, h) for h in range(9)], freeze=False)
    m_max = frozen[29].abs().max().item()
    tol = Tolerance(abs=metric_tolerance(eps_of(run), run.c - run.a, m_max), reason="a normalised metric of SmolLM2 logits")
    worst = assert_reproduces(frozen[29], unfrozen[29], tol, name="last layer")
    full = P.on_full_logits(run.metric2, run.end)
    senders = [(20, 1)]
    for x in ("k",):
        ours = P.get_path_patch_head_to_heads([(23, 3)], x, model, run.metric2, run.abc, run.ds, run.corrupt,
                                              run.clean, senders=senders)
        with P.ungrouped(model, x == "k"):
            ref = arena_path_to_heads(model, full, [(23, 3)], x, run.corrupt, run.ds.toks, run.clean, senders)
        worst = max(worst, assert_reproduces(torch.tensor([ours[s].item() for s in senders]),
                                             torch.tensor([ref[s] for s in senders]), tol, name=x))
    measure("smollm2.path_patching_checks.fraction_of_tolerance", worst, "≤ 1")


def test_receivers_in_two_layers_match_arenas_algorithm(measure):
    """Receivers in two layers (1 and 3 of a 4-layer random GPT-2, float64): a sender in layer 2 sits after one
    receiver and before the other, so step 2 must start at the first receiver's layer (everything before it frozen
    at orig) to record both receivers' inputs; the result equals ARENA's algorithm run literally (1e-10)."""
    from checks.models import random_gpt2

    model = random_gpt2(n_layers=4, d_model=64, n_heads=4, n_ctx=128, seed=5)[0].to(torch.float64)
    ds = ioi.IOIDataset("mixed", 3, model.tokenizer, seed=4)
    run = setup(model, ds, ds.gen_flipped_prompts())
    receivers, senders = [(1, 2), (3, 0)], [(0, 1), (1, 3), (2, 0), (2, 2)]
    ours = P.get_path_patch_head_to_heads(receivers, "v", model, run.metric2, run.abc, run.ds, run.corrupt, run.clean,
                                          senders=senders)
    ref = arena_path_to_heads(model, P.on_full_logits(run.metric2, run.end), receivers, "v", run.corrupt, run.ds.toks,
                              run.clean, senders)
    report = assert_parity(torch.tensor([ours[s].item() for s in senders], dtype=torch.float64),
                           torch.tensor([ref[s] for s in senders], dtype=torch.float64), atol=1e-10)
    assert ours.shape == (3, 4) and ours.isnan().sum() == 12 - len(senders)
    assert abs(ref[(2, 0)]) > 1e-6        # the layer-2 sender reaches the layer-3 receiver
    measure("gpt2_float64.two_receiver_layers_vs_arena.max_abs_err", report.max_abs_err, "≤ 1e-10")


def test_grouped_key_path_patching_moves_the_whole_group(smol, measure):
    """Grouped-query attention in path patching: patching receiver L23H3's key *without* ungrouping patches its
    key/value head, shared by L23H3, L23H4 and L23H5, so it equals patching the (ungrouped) keys of all three (two
    senders whose key paths are among the largest on these prompts, L17H4 and L8H1; within the metric's
    tolerance). Here the three-head patch and L23H3's own key alone differ little: the attention-pattern test above
    shows the grouping at work."""
    model, run = smol
    senders = [(17, 4), (8, 1)]
    args = (model, run.metric2, run.abc, run.ds, run.corrupt, run.clean)
    grouped = P.get_path_patch_head_to_heads([(23, 3)], "k", *args, senders=senders, ungroup=False)
    three = P.get_path_patch_head_to_heads([(23, 3), (23, 4), (23, 5)], "k", *args, senders=senders)
    pick = lambda t: torch.tensor([t[s].item() for s in senders])  # noqa: E731
    tol = Tolerance(abs=metric_tolerance(eps_of(run), run.c - run.a, pick(grouped).abs().max().item()),
                    reason="a normalised metric of SmolLM2 logits")
    worst = assert_reproduces(pick(grouped), pick(three), tol, name="grouped = three ungrouped")
    assert pick(grouped).abs().max() > 2 * tol.abs         # a real effect, not two zeros
    measure("smollm2.grouped_key_path_vs_three_heads.fraction_of_tolerance", worst, "≤ 1")


def test_grouped_key_attribution_is_the_sum_over_the_group(smol, measure):
    """Attribution into receiver L23H3's key *without* ungrouping differentiates through its key/value head,
    shared by L23H3, L23H4 and L23H5: ∂m/∂k_group = Σ of the three query heads' ∂m/∂k, so it equals attribution into
    the (ungrouped) keys of all three, for every sender. Float32, the two graphs summing the three heads' gradients
    in different orders through 23 layers: bound 1e-5 of the largest entry (≈170 float32 roundings of it); measured
    3.0e-7 of it, and 3.4e-7 under ATEN_CPU_CAPABILITY=default."""
    model, run = smol
    args = (model, run.metric2, run.abc, run.ds, run.corrupt)
    grouped = P.get_attr_path_patch_head_to_heads([(23, 3)], "k", *args, ungroup=False)
    three = P.get_attr_path_patch_head_to_heads([(23, 3), (23, 4), (23, 5)], "k", *args)
    own = P.get_attr_path_patch_head_to_heads([(23, 3)], "k", *args)
    scale = three.abs().max().item()
    report = assert_parity(grouped, three, atol=1e-5 * scale, name="grouped = three ungrouped")
    assert (own - three).abs().max() > 10 * report.max_abs_err     # the group is not L23H3 alone
    measure("smollm2.grouped_key_attribution_vs_three_heads.max_abs_err", report.max_abs_err, f"≤ {1e-5 * scale:.1e}")


@pytest.fixture(scope="module")
def smol16(smol):
    """The experiment's head-level prompts (day 53's first 16) with their ABC twins, caches and metrics."""
    model, _ = smol
    ds, abc, _, _ = P.datasets(model)
    return model, setup(model, ds, abc, lambda name: name.endswith(("hook_z", "hook_resid_pre")))


def test_results_json_is_current(smol16, committed, measure):
    """results.json (cited by the post): the configuration, prompts and receivers are what the code builds now; the
    clean and ABC logit differences within 2ε; path patching to the final stream of every head of layer 23 (the
    post's top head's layer) recomputed within the metric's tolerance; the agreement numbers are read off the
    committed grids; everything else (the attribution estimates included) is recomputed by the slow test."""
    model, run = smol16
    c = committed
    assert c["experiment"] == P.EXPERIMENT and c["n_heads_prompts"] == len(run.ds)
    two = Tolerance(abs=2 * eps_of(run), reason="a difference of two SmolLM2 logits, each within ε")
    assert_reproduces(run.c, c["clean_logit_diff"], two, name="clean_logit_diff")
    assert_reproduces(run.a, c["abc_logit_diff"], two, name="abc_logit_diff")
    m_max = max(abs(x) for row in c["path_final"] for x in row)
    tol = Tolerance(abs=metric_tolerance(eps_of(run), run.c - run.a, m_max), reason="a normalised metric of SmolLM2 logits")
    senders = [(23, h) for h in range(9)]
    now = P.get_path_patch_head_to_final_resid_post(model, run.metric2, run.abc, run.ds, run.corrupt, run.clean,
                                                    senders=senders)
    worst = assert_reproduces(now[23], torch.tensor(c["path_final"])[23], tol, name="path_final")
    assert c["attr_vs_path_final"] == P.agreement(torch.tensor(c["attr_frozen"]), torch.tensor(c["path_final"]))
    for name in ("block_every", "heads", "attribution"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
    measure("results_vs_committed", worst, "≤ 1 (fraction of the tolerance)")


def near_cut(grid: torch.Tensor, k: int, tol: float) -> int:
    """How many cells' |value| lie within tol of the k-th largest |value|: the cells whose membership in the top k
    another CPU could change."""
    values = grid.flatten()
    values = values[~values.isnan()].abs()
    cut = values.sort(descending=True).values[k - 1]
    return int(((values - cut).abs() <= tol).sum()) - 1


@pytest.mark.slow
def test_experiment_reproduces(tmp_path, committed, measure):
    """(slow: every sweep of the experiment on SmolLM2, ~20-30 min on a busy 2-core machine) The experiment rerun:
    every patching grid, the attribution estimates and the screened path-patching tables within the metric's
    tolerance of results.json; the receivers are the same heads; each ranking the post names (the top head of each
    table) is the committed one where its margin exceeds twice the tolerance (the top one's margin must); a screen's
    members and the screen's recall may differ only by the senders within rounding of the cut."""
    r = P.run_experiment(tmp_path)
    c = committed
    gap = min(abs(c["clean_logit_diff"] - c["abc_logit_diff"]),
              abs(c["position_clean_logit_diff"] - c["position_abc_logit_diff"]))
    eps = SMOLLM2_LOGIT_REL * c["max_abs_logit"]
    tol = Tolerance(abs=metric_tolerance(eps, gap, 2.0), reason="a normalised metric of SmolLM2 logits (|m| ≤ 2)")
    worst = 0.0
    for key in ("block_every", "act_head_out", "path_final", "path_heads_nm_q"):
        grid = torch.tensor(c[key])
        assert grid.nan_to_num(0).abs().max() <= 2.0
        worst = max(worst, assert_reproduces(r[key], c[key], tol, name=key))
    for key in ("attr_frozen", "attr_total", "attr_nm_q"):
        worst = max(worst, assert_reproduces(r[key], c[key], Tolerance(abs=2 * tol.abs, reason="a first-order "
                                             "estimate through the same network"), name=key))
    assert r["receivers"] == c["receivers"]
    for key in ("act_head_out_top", "path_final_top", "path_heads_nm_q_top"):
        values = [abs(x["value"]) for x in c[key]]
        decided = [i for i in range(3) if values[i] - values[i + 1] > 2 * tol.abs]
        assert [r[key][i]["label"] for i in decided] == [c[key][i]["label"] for i in decided], key
        assert 0 in decided, f"{key}: the top head is within rounding of the next"
    # a screen keeps the n_screen largest |attributions|: membership can change only for senders within rounding of
    # the cut; the exact values of the senders both runs kept agree within the metric's tolerance
    k = P.EXPERIMENT["n_screen"]
    for key, screen in c["screens"].items():
        near = near_cut(torch.tensor(c["screen_attr"][key]), k, 2 * tol.abs)
        assert len(set(screen) ^ set(r["screens"][key])) <= 2 * near, key
        now = {x["label"]: x["value"] for x in r["screened_paths"][key]}
        then = {x["label"]: x["value"] for x in c["screened_paths"][key]}
        shared = sorted(now.keys() & then.keys())
        worst = max(worst, assert_reproduces([now[x] for x in shared], [then[x] for x in shared], tol, name=key))
    near = near_cut(torch.tensor(c["path_heads_nm_q"]), 10, tol.abs) + near_cut(torch.tensor(c["attr_nm_q"]), k, 2 * tol.abs)
    assert abs(r["screen_recall_nm_q_top10"] - c["screen_recall_nm_q_top10"]) <= near / 10
    measure("experiment_vs_committed", worst, "≤ 1 (fraction of the tolerance)")
    measure("experiment.wall_seconds", r["wall_seconds"])
