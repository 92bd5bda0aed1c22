"""The gate of day 89 (ARENA 4.3 §2–3: attention matrices, vertical scores, receiver heads, rotary positions,
attention suppression) on day 88's toy (ground truth: its anchor line) and on SmolLM2-135M-Instruct.

References: Hugging Face's Llama ``apply_rotary_pos_emb`` and ``LlamaRotaryEmbedding``, TransformerLens's
``AbstractAttention.apply_rotary`` and its rotary tables (rotary parity is exact: the same float operations);
TransformerLens's cached pre-softmax scores, and Hugging Face's eager attention weights of SmolLM2 (an
independent implementation: 1e-4 absolute on probabilities, float32 through ≤ 30 layers); ``scipy.stats.kurtosis``;
``torch.nn.functional.kl_div``; block averages as matrix products with indicator matrices. Spec (issue 16): "on
the toy, receiver heads attend to the ground-truth anchor lines"; "089 imports the toy and the chunking from 088".
"""

import importlib
import inspect
import math

import numpy as np
import pytest
import scipy.stats
import torch

from checks.committed import Tolerance, assert_reproduces, exact
from checks.models import hf_model, smollm2_hooked

from . import receivers as R

pytestmark = pytest.mark.asset("smollm2-135m-instruct")
TOY = importlib.import_module("days.088.toy")
COT = importlib.import_module("days.088.cot")


@pytest.fixture(scope="module")
def toy():
    from checks.timing import single_thread

    with single_thread():
        model, _ = TOY.load_toy()
        yield model


def test_reuses_day_88():
    """089 imports day 88's toy and chunking, never copies them."""
    assert R.TOY is TOY and R.COT is COT
    for name in ("split_solution_into_chunks", "make_traces", "load_toy", "chunk_spans", "train_toy"):
        assert not hasattr(R, name), f"day 89 defines {name}: import it from day 88"
    assert "COT.cot_messages" in inspect.getsource(R.smollm2_receivers)


# ---------------------------------------------------------------- attention matrices


def test_extract_attention_matrix_is_the_softmax_of_the_scores(toy):
    """extract_attention_matrix is softmax(q·k/√d_head) under the causal mask, recomputed from TransformerLens's
    cached rotated queries and keys (1e-6), for every layer and head; rows sum to 1 and the future is 0."""
    tokens = TOY.make_traces(1, seed=5)["tokens"]
    _, cache = toy.run_with_cache(tokens)
    for layer in range(toy.cfg.n_layers):
        q, k = cache[f"blocks.{layer}.attn.hook_rot_q"][0], cache[f"blocks.{layer}.attn.hook_rot_k"][0]
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(toy.cfg.d_head)
        causal = torch.triu(torch.ones(len(q), len(q), dtype=torch.bool), 1)
        ref = scores.masked_fill(causal, -math.inf).softmax(-1)
        for head in range(toy.cfg.n_heads):
            got = R.extract_attention_matrix(toy, tokens, layer, head)
            torch.testing.assert_close(got, ref[head], atol=1e-6, rtol=0)
            torch.testing.assert_close(got.sum(-1), torch.ones(len(q)), atol=1e-6, rtol=0)
            assert (got[causal] == 0).all()


def test_attention_matrix_matches_hugging_face_smollm2():
    """On SmolLM2 the HookedTransformer's pattern equals Hugging Face's eager attention weights (an independent
    implementation of the same weights, rotary and grouped K/V included): layers 0, 14 and 29, all heads, 1e-4."""
    model, tok = hf_model("smollm2")
    ids = torch.tensor([tok("Tom has 7 apples. He gets 5 more, so 7 + 5 = 12.")["input_ids"]])
    ht = smollm2_hooked()
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            hf_attn = model(ids, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(before)
    for layer in (0, 14, 29):
        torch.testing.assert_close(R.extract_attention_matrix(ht, ids, layer), hf_attn[layer][0], atol=1e-4, rtol=0)


def test_average_attention_by_chunk_is_a_block_mean():
    """Sentence-level attention = R A Rᵀ with R the row-normalised indicator matrix of the spans (a block mean as a
    matrix product), on random (layer, head, 12, 12) tensors."""
    g = torch.Generator().manual_seed(0)
    attn = torch.rand(2, 3, 12, 12, generator=g)
    spans = [(0, 3), (3, 4), (4, 9), (9, 12)]
    ind = torch.zeros(len(spans), 12)
    for i, (s, e) in enumerate(spans):
        ind[i, s:e] = 1 / (e - s)
    ref = ind @ attn @ ind.T
    torch.testing.assert_close(R.average_attention_by_chunk(attn, spans), ref, atol=1e-6, rtol=1e-6)


def test_vertical_scores_mean_the_column_below_the_band():
    """get_vertical_scores: column j's mean over rows i ≥ j + proximity_ignore (numpy nanmean over a masked copy),
    NaN where no row qualifies, for proximity_ignore 1 and 2."""
    m = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(1))
    for prox in (1, 2):
        arr = m.numpy().copy()
        i, j = np.indices((6, 6))
        arr[:, i < j + prox] = np.nan
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
            ref = np.nanmean(arr, axis=1)
        got = R.get_vertical_scores(m, prox).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-6)
        assert np.isnan(got[:, -prox:]).all()


def test_compute_head_kurtosis_matches_scipy():
    """compute_head_kurtosis = scipy.stats.kurtosis(fisher=True, bias=True, nan_policy='omit') per head, on normal,
    heavy-tailed and NaN-holed scores (1e-10 relative: float64 moments)."""
    rng = np.random.default_rng(2)
    v = np.concatenate([rng.normal(size=(4, 3, 20)), rng.standard_t(2, size=(4, 3, 20))], axis=1)
    v[0, 0, :5] = np.nan
    ref = scipy.stats.kurtosis(v, axis=-1, fisher=True, bias=True, nan_policy="omit")
    got = R.compute_head_kurtosis(torch.tensor(v)).numpy()
    np.testing.assert_allclose(got, np.asarray(ref), rtol=1e-10)


def test_receiver_heads_are_the_top_kurtosis():
    """get_receiver_heads returns the k (layer, head) of highest kurtosis (numpy argsort), NaNs never chosen,
    layer 0 skipped on request."""
    k = torch.tensor([[9.0, 1.0, math.nan], [2.0, 5.0, 3.0], [0.5, 7.0, 4.0]])
    assert R.get_receiver_heads(k, 3) == [(0, 0), (2, 1), (1, 1)]
    assert R.get_receiver_heads(k, 2, skip_first_layer=True) == [(2, 1), (1, 1)]
    flat = np.nan_to_num(k.numpy(), nan=-np.inf).flatten()
    assert R.get_receiver_heads(k, 4) == [divmod(int(i), 3) for i in np.argsort(-flat)[:4]]


# ---------------------------------------------------------------- rotary


def test_apply_rotary_pos_emb_equals_hugging_face_exactly():
    """apply_rotary_pos_emb equals transformers' Llama apply_rotary_pos_emb bit for bit (torch.equal), for both
    head layouts; rotary_cos_sin equals LlamaRotaryEmbedding's cos and sin (1e-6: the same float32 angles)."""
    from transformers import LlamaConfig
    from transformers.models.llama import modeling_llama as L

    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 4, 7, 16, generator=g), torch.randn(2, 4, 7, 16, generator=g)
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=64)
    pos = torch.arange(7)[None].repeat(2, 1)
    cos, sin = L.LlamaRotaryEmbedding(cfg)(q, pos)
    for got, ref in zip(R.apply_rotary_pos_emb(q, k, cos, sin), L.apply_rotary_pos_emb(q, k, cos, sin)):
        assert torch.equal(got, ref)
    qt, kt = q.transpose(1, 2), k.transpose(1, 2)
    for got, ref in zip(R.apply_rotary_pos_emb(qt, kt, cos, sin, 2), L.apply_rotary_pos_emb(qt, kt, cos, sin, 2)):
        assert torch.equal(got, ref)
    mine = R.rotary_cos_sin(pos, 16, cfg.rope_parameters["rope_theta"])
    torch.testing.assert_close(mine[0], cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(mine[1], sin, atol=1e-6, rtol=0)


def test_apply_rotary_pos_emb_equals_transformerlens_exactly(toy):
    """With TransformerLens's own cos/sin tables, apply_rotary_pos_emb equals AbstractAttention.apply_rotary (the
    toy's layer 0, GPT-NeoX pairing) bit for bit; rotary_cos_sin reproduces those tables (1e-6)."""
    attn = toy.blocks[0].attn
    x = torch.randn(2, 9, toy.cfg.n_heads, toy.cfg.d_head, generator=torch.Generator().manual_seed(4))
    cos, sin = attn.rotary_cos[None, :9], attn.rotary_sin[None, :9]
    got, _ = R.apply_rotary_pos_emb(x, x, cos, sin, unsqueeze_dim=2)
    assert torch.equal(got, attn.apply_rotary(x))
    mine = R.rotary_cos_sin(torch.arange(9), toy.cfg.d_head, toy.cfg.rotary_base)
    torch.testing.assert_close(mine[0], attn.rotary_cos[:9], atol=1e-6, rtol=0)
    torch.testing.assert_close(mine[1], attn.rotary_sin[:9], atol=1e-6, rtol=0)


# ---------------------------------------------------------------- suppression


def test_compute_suppressed_attention_renormalises():
    """compute_suppressed_attention: rows sum to 1; the chunk's keys get 0 for queries after it; rows before the
    chunk's end are the plain softmax; the other rows are the plain pattern renormalised over the kept keys (the
    identity softmax(s with −∞ on M) = p·1[∉M] / Σ p·1[∉M])."""
    n = 10
    scores = torch.randn(3, n, n, generator=torch.Generator().manual_seed(5))
    scores = scores.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), -math.inf)
    plain = scores.softmax(-1)
    got = R.compute_suppressed_attention(scores, 3, 6)
    torch.testing.assert_close(got.sum(-1), torch.ones(3, n), atol=1e-6, rtol=0)
    assert (got[:, 6:, 3:6] == 0).all()
    torch.testing.assert_close(got[:, :6], plain[:, :6])
    keep = plain[:, 6:].clone()
    keep[..., 3:6] = 0
    torch.testing.assert_close(got[:, 6:], keep / keep.sum(-1, keepdim=True), atol=1e-6, rtol=1e-5)
    assert torch.equal(R.compute_suppressed_attention(scores[1], 3, 6), got[1])   # (q, k): one head alone


def test_suppression_hooks_give_the_suppressed_pattern(toy):
    """Under suppression_hooks, layer 0's pattern (whose input suppression cannot change) equals
    compute_suppressed_attention of the unhooked run's layer-0 scores (1e-6)."""
    tokens = TOY.make_traces(2, seed=6)["tokens"]
    s, e = TOY.line_span(1)
    _, cache = toy.run_with_cache(tokens, names_filter="blocks.0.attn.hook_attn_scores")
    seen = {}
    hooks = R.suppression_hooks(toy, s, e) + [("blocks.0.attn.hook_pattern",
                                               lambda p, hook: seen.setdefault("p", p.clone()))]
    toy.run_with_hooks(tokens, fwd_hooks=hooks)
    ref = R.compute_suppressed_attention(cache["blocks.0.attn.hook_attn_scores"], s, e)
    torch.testing.assert_close(seen["p"], ref, atol=1e-6, rtol=0)


def test_compute_suppression_kl_matches_torch():
    """compute_suppression_kl = torch.nn.functional.kl_div(log q, log p, log_target=True) summed over the vocabulary;
    0 for identical logits, ≥ 0 always."""
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    ref = torch.nn.functional.kl_div(b.double().log_softmax(-1), a.double().log_softmax(-1), log_target=True,
                                     reduction="none").sum(-1)
    torch.testing.assert_close(R.compute_suppression_kl(a, b), ref)
    assert R.compute_suppression_kl(a, a).abs().max() < 1e-12 and (R.compute_suppression_kl(a, b) >= 0).all()


# ---------------------------------------------------------------- the toy: ground truth


@pytest.fixture(scope="module")
def toy_result(toy):
    return R.toy_receivers(toy)   # the committed run's 100 traces


def test_max_excess_kurtosis_is_attained_and_never_exceeded():
    """max_excess_kurtosis(n) = n − 5 + 1/(n − 1) is scipy's kurtosis of one spike among n − 1 equal values, and no
    random vector of n values exceeds it (n = 4..20, 200 heavy-tailed draws each)."""
    rng = np.random.default_rng(8)
    for n in range(4, 21):
        spike = np.zeros(n)
        spike[0] = 1.0
        assert R.max_excess_kurtosis(n) == pytest.approx(scipy.stats.kurtosis(spike), rel=1e-12)
        assert scipy.stats.kurtosis(rng.standard_t(1, size=(200, n)), axis=1).max() <= R.max_excess_kurtosis(n) + 1e-9
    assert R.max_excess_kurtosis(5) == pytest.approx(0.25)


def test_toy_receiver_heads_attend_to_the_anchor(toy_result):
    """Spec: on the toy, receiver heads attend to the ground-truth anchor line. With the reasoning's 18 tokens as
    units (six lines would cap every head's kurtosis at 0.25, and the line-level kurtosis of every head is indeed
    below that cap), one of the three highest-kurtosis heads has its largest vertical score inside the anchor line
    in ≥ 90% of 100 traces, on the anchor's marker token; the anchor line's mean vertical score in that head
    exceeds the other units'."""
    assert toy_result["line_level"]["max_kurtosis"] <= toy_result["line_level"]["cap"] + 1e-9
    head = toy_result["heads"][toy_result["anchor_head"]]
    assert list(toy_result["heads"])[toy_result["anchor_head_rank"] - 1] == toy_result["anchor_head"]  # rank 1 = first
    assert head["anchor_top"]["p"] >= 0.9
    assert head["mean_vertical_anchor"] > head["mean_vertical_other"]
    assert int(np.argmax(head["top_token_in_line"])) == 0


def test_toy_suppression_finds_the_anchor(toy_result):
    """Suppressing the anchor line moves the answer (KL at the A token) most, in ≥ 95% of 100 traces; the fillers'
    mean KL is under a tenth of the anchor's."""
    sup = toy_result["suppression"]
    assert sup["anchor_top"]["p"] >= 0.95
    assert sup["mean_kl_filler"] < 0.1 * sup["mean_kl_anchor"]


def test_committed_toy_receivers_reproduce(toy_result, committed):
    """The committed receiver heads are today's (exact: an argmax over kurtosis with margins far above rounding),
    and the head kurtosis averaged over the same 100 traces reproduces to 1e-3 relative + 1e-4 absolute (float32
    patterns of a 2-layer model, then a fourth moment of 18 units: measured ≪ 1e-5)."""
    assert_reproduces(toy_result["receiver_heads"], committed["toy"]["receiver_heads"], exact("an argmax with a margin"))
    assert_reproduces(toy_result["kurtosis"], committed["toy"]["kurtosis"],
                      Tolerance("float32 attention, a fourth moment of 18 block means", rel=1e-3, abs=1e-4))


# ---------------------------------------------------------------- SmolLM2


def test_trace_token_spans_cover_the_reply():
    """trace_token_spans: the chunks' token spans are contiguous, end at the sequence's end, and each decodes to its
    chunk (whitespace aside)."""
    tok = hf_model("smollm2")[1]
    chunks = ["Tom starts with 7 apples.", "He gets 5 more, so 7 + 5 = 12.", "The answer is 12."]
    tokens, spans = R.trace_token_spans(tok, COT.cot_messages("Q?"), chunks)
    assert spans[-1][1] == len(tokens)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    for (s, e), c in zip(spans, chunks):
        assert tok.decode(tokens[s:e]).strip() == c


def test_committed_smollm2_first_trace_kurtosis(committed):
    """The committed first trace's per-head kurtosis is recomputed now from SmolLM2's patterns to 1e-3 relative +
    1e-3 absolute (float32 patterns through 30 layers, then a fourth moment of ≤ 6 block means; measured ≪ 1e-4)."""
    first = committed["smollm2"]["first_trace"]
    ht = smollm2_hooked()
    tokens, spans = R.trace_token_spans(ht.tokenizer, COT.cot_messages(first["question"]), first["chunks"])
    v = R.get_vertical_scores(R.average_attention_by_chunk(R.all_attention_patterns(ht, tokens), spans))
    assert_reproduces(np.nan_to_num(R.compute_head_kurtosis(v).numpy(), nan=-99.0).tolist(),
                      np.nan_to_num(np.array(first["kurtosis"], dtype=float), nan=-99.0).tolist(),
                      Tolerance("float32 patterns, a fourth moment of block means", rel=1e-3, abs=1e-3))


def test_average_attention_by_chunk_keeps_any_leading_dims():
    """The docstring's contract, '(..., q, k) -> (..., n_chunks, n_chunks)': a single (q, k) pattern and a
    (head, q, k) stack give the block means R A Rᵀ too (R the row-normalised span indicator matrix)."""
    g = torch.Generator().manual_seed(9)
    spans = [(0, 2), (2, 5), (5, 7)]
    ind = torch.zeros(len(spans), 7)
    for i, (s, e) in enumerate(spans):
        ind[i, s:e] = 1 / (e - s)
    for shape in ((7, 7), (3, 7, 7)):
        attn = torch.rand(*shape, generator=g)
        torch.testing.assert_close(R.average_attention_by_chunk(attn, spans), ind @ attn @ ind.T, atol=1e-6, rtol=1e-6)


def test_toy_example_and_top_token_counts(toy, toy_result):
    """The result's example is trace 0 of the same 100 traces: each listed head's vertical scores (NaN → 0) are
    get_vertical_scores of that trace's block-averaged patterns over toy_units, recomputed here; and
    ``top_token_in_line`` counts, over the n traces, the position within its line (0..LINE_LEN−1) of the unit with
    the largest vertical score: LINE_LEN bins summing to n."""
    ex = toy_result["example"]
    tokens = torch.tensor(ex["tokens"])
    assert torch.equal(tokens, TOY.make_traces(toy_result["n"], 11)["tokens"][0])
    vert = R.get_vertical_scores(R.average_attention_by_chunk(R.all_attention_patterns(toy, tokens), R.toy_units()))
    for name, got in ex["vertical"].items():
        layer, head = int(name[1]), int(name[3])
        np.testing.assert_allclose(got, np.nan_to_num(vert[layer, head].numpy(), nan=0.0), atol=1e-6, rtol=0)
    for stats in toy_result["heads"].values():
        assert len(stats["top_token_in_line"]) == TOY.LINE_LEN
        assert sum(stats["top_token_in_line"]) == toy_result["n"]


SHORT_TRACES = [   # tiny step-by-step traces of 5 sentences: 4 vertical scores each (the excess kurtosis of any 3
    # numbers is −1.5, so fewer would make every head's kurtosis the same)
    {"question": "2+3?", "chunks": ["2 plus 3.", "That is 5.", "Check: 5.", "So 5.", "The answer is 5."],
     "categories": ["setup", "compute", "check", "setup", "answer"], "forced_importance": [0.1, 0.5, -0.2, 0.2, 0.0]},
    {"question": "4+1?", "chunks": ["4 and 1.", "Add them.", "Sum 5.", "Yes.", "The answer is 5."],
     "categories": ["setup", "compute", "compute", "check", "answer"], "forced_importance": [0.3, -0.1, 0.4, 0.6, 0.0]},
]


def test_smollm2_receivers_aggregates_the_traces():
    """smollm2_receivers on two short traces, against each trace's vertical scores recomputed here with the tested
    primitives: kurtosis is the (layer, head) nanmean over traces; first_trace's kurtosis is trace 0's; the
    split-half Spearman compares trace 0's with trace 1's head kurtosis (scipy); the receiver score of a sentence is
    the mean over the receiver heads, NaN sentences (the last of each trace) dropped, and by category it is the
    numpy mean over that category's sentences; vertical vs forced importance is scipy's Spearman."""
    out = R.smollm2_receivers(SHORT_TRACES)
    ht = smollm2_hooked()
    verts = []
    for t in SHORT_TRACES:
        tokens, spans = R.trace_token_spans(ht.tokenizer, COT.cot_messages(t["question"]), t["chunks"])
        verts.append(R.get_vertical_scores(R.average_attention_by_chunk(R.all_attention_patterns(ht, tokens), spans)))
    kurts = [R.compute_head_kurtosis(v).numpy() for v in verts]
    assert out["n_traces"] == 2
    np.testing.assert_allclose(out["kurtosis"], np.nanmean(np.stack(kurts), 0), rtol=1e-9, atol=1e-9)
    top = R.get_receiver_heads(torch.tensor(out["kurtosis"]), 3, skip_first_layer=True)
    assert out["receiver_heads"] == [list(h) for h in top]            # the top 3 of the kurtosis it reports
    first = SHORT_TRACES[0]
    assert (out["first_trace"]["question"], out["first_trace"]["chunks"]) == (first["question"], first["chunks"])
    np.testing.assert_allclose(out["first_trace"]["kurtosis"], kurts[0], rtol=1e-9, atol=1e-9)
    assert out["split_half_spearman"] == pytest.approx(scipy.stats.spearmanr(kurts[0].ravel(), kurts[1].ravel()).statistic,
                                                       abs=1e-9)
    heads = [tuple(h) for h in out["receiver_heads"]]
    rec, imp, cats = [], [], []
    for t, v in zip(SHORT_TRACES, verts):
        score = np.mean([v[layer, h].numpy() for layer, h in heads], axis=0)
        keep = ~np.isnan(score)
        rec += score[keep].tolist()
        imp += np.asarray(t["forced_importance"])[keep].tolist()
        cats += np.asarray(t["categories"])[keep].tolist()
    assert out["n_sentences"] == len(rec) == sum(len(t["chunks"]) - 1 for t in SHORT_TRACES)
    assert out["vertical_vs_forced_importance_spearman"] == pytest.approx(scipy.stats.spearmanr(rec, imp).statistic,
                                                                         abs=1e-9)
    cats = np.asarray(cats)
    ref = {c: float(np.mean(np.asarray(rec)[cats == c])) for c in set(cats)}
    assert out["receiver_vertical_by_category"] == pytest.approx(ref, rel=1e-9)
