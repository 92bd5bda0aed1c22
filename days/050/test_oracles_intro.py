"""The gate of day 50 (ARENA 1.3.4: activation oracles, the machinery and an untrained oracle).

References: Hugging Face's own ``output_hidden_states`` (what early-stopped collection must equal), its
``generate`` (what the oracle's greedy generation with the hook must equal), the tokenizer's character offsets
(where the placeholders must be), scipy's Wilson interval. Tolerances: collection with an early stop runs the
very same kernels on the very same inputs as the full pass, so equality is exact; the steering hook's norm
property is one 576-term float32 norm and a few products (1e-5 relative).
"""

import time
from pathlib import Path

import pytest
import torch

from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces, exact
from checks.models import hf_model

from . import oracles_intro as O

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("smollm2-135m-instruct")
MODEL = "smollm2"
GATE_WORDS = 8          # the gate decodes the first 8 words at a few layers; the slow test all words, all layers
GATE_LAYERS = (2, 12, 20)
GATE_COEF = "2"


@pytest.fixture(scope="module")
def smol():
    """SmolLM2 (HF), its tokenizer, a short prompt and the full pass's hidden states."""
    model, tok = hf_model(MODEL)
    ids = tok(["The quick brown fox jumps over", "Paris is the capital of France"], return_tensors="pt")
    with torch.no_grad():
        full = model(input_ids=ids["input_ids"], output_hidden_states=True).hidden_states
    return model, tok, ids["input_ids"], full


@pytest.fixture(scope="module")
def gate_acts():
    """Source activations of the first GATE_WORDS words at the gate's layers (one early-stopped pass)."""
    _, tok = hf_model(MODEL)
    words = O.identity_words(tok)[:GATE_WORDS]
    return words, O.source_activations(MODEL, words, list(GATE_LAYERS))


def count_calls(model):
    """Forward pre-hooks counting calls on every block and on the unembedding."""
    calls = {"blocks": [0] * len(O.layers_of(model)), "lm_head": 0}
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: calls["blocks"].__setitem__(i, calls["blocks"][i] + 1))
               for i, b in enumerate(O.layers_of(model))]
    handles.append(model.lm_head.register_forward_pre_hook(lambda m, a: calls.__setitem__("lm_head", 1)))
    return calls, handles


def test_collect_activations_equal_the_full_pass(smol):
    """collect_activations_multiple_layers: the residual stream after blocks 0, 5 and 11 equals the full pass's
    hidden_states[l + 1] exactly (the same kernels on the same inputs), all positions; with offsets (-1, -4) it
    keeps positions -4..-2, with max_offset = -2 alone the last two, with min_offset = -1 alone all but the last."""
    model, _, ids, full = smol
    acts = O.collect_activations_multiple_layers(model, [5, 0, 11], dict(input_ids=ids))
    assert sorted(acts) == [0, 5, 11]
    for l, a in acts.items():
        assert torch.equal(a, full[l + 1]), l
    cut = O.collect_activations_multiple_layers(model, [3], dict(input_ids=ids), min_offset=-1, max_offset=-4)
    assert torch.equal(cut[3], full[4][:, -4:-1])
    # one offset alone bounds one end, the other end stays open (Python's slice with None): [-2, end) and [0, -1)
    tail = O.collect_activations_multiple_layers(model, [3], dict(input_ids=ids), max_offset=-2)
    assert torch.equal(tail[3], full[4][:, -2:])
    head = O.collect_activations_multiple_layers(model, [3], dict(input_ids=ids), min_offset=-1)
    assert torch.equal(head[3], full[4][:, :-1])


def test_early_stop_does_less_work(smol, measure):
    """The early stop: with layers up to 5 requested, blocks 0..5 run once each, blocks 6..29 and the unembedding
    never run (the full pass runs all 30 and the unembedding), and the call takes less time than the full pass."""
    model, _, ids, _ = smol
    calls, handles = count_calls(model)
    try:
        O.collect_activations_multiple_layers(model, [2, 5], dict(input_ids=ids))
        assert calls["blocks"] == [1] * 6 + [0] * 24 and calls["lm_head"] == 0
        calls["blocks"][:] = [0] * 30
        with torch.no_grad():
            model(input_ids=ids)
        assert calls["blocks"] == [1] * 30 and calls["lm_head"] == 1
    finally:
        for h in handles:
            h.remove()

    def best(fn, n=3):
        t = []
        for _ in range(n):
            s = time.perf_counter()
            fn()
            t.append(time.perf_counter() - s)
        return min(t)
    early = best(lambda: O.collect_activations_multiple_layers(model, [2, 5], dict(input_ids=ids)))
    with torch.no_grad():
        whole = best(lambda: model(input_ids=ids))
    measure("early_stop_time_ratio", early / whole, "< 1 (6 of 30 blocks)")
    assert early < whole


def test_introspection_prefix_and_find_pattern(smol):
    """get_introspection_prefix is 'Layer: l\\n' + ' ?'·n + ' \\n'; find_pattern_in_tokens returns exactly the tokens
    whose character span (the tokenizer's offsets, an independent route) is a placeholder ' ?', and refuses a wrong
    count."""
    _, tok, _, _ = smol
    prefix = O.get_introspection_prefix(7, 3)
    assert prefix == "Layer: 7\n ? ? ? \n"
    text = prefix + "What word is this?"
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    by_offsets = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if text[a:b] in (" ?", "?") and a < len(prefix)]
    assert O.find_pattern_in_tokens(enc["input_ids"], O.SPECIAL_TOKEN, 3, tok) == by_offsets and len(by_offsets) == 3
    with pytest.raises(ValueError):
        O.find_pattern_in_tokens(enc["input_ids"], O.SPECIAL_TOKEN, 2, tok)


def test_steering_hook_norm_matched_and_local(smol, measure):
    """get_hf_activation_steering_hook at block 4, positions 2, 3 of row 0 and 3, 4 of row 1 (vectors of norms from
    0.01 to 50), c = 1.5: at those positions the change r' − r has norm c·‖r‖ and the direction of v (cosine 1); every other position of
    block 4's output is untouched (bitwise), positions before the first injected one are untouched in every later
    block (causality), and later positions do change."""
    model, _, ids, full = smol
    d = model.config.hidden_size
    vectors = torch.randn(2, 2, d, generator=torch.Generator().manual_seed(1)) * torch.tensor([[[3.0], [0.01]],
                                                                                              [[50.0], [1.0]]])
    positions = [[2, 3], [3, 4]]
    c = 1.5
    seen = {}

    def capture(l):
        def hook(m, a, out):
            seen[l] = O._hidden(out).detach()
        return hook
    hook = O.get_hf_activation_steering_hook(vectors, positions, c)
    with O.add_hook(O.layers_of(model)[4], hook), O.add_hook(O.layers_of(model)[4], capture(4)), \
            O.add_hook(O.layers_of(model)[20], capture(20)), torch.no_grad():
        model(input_ids=ids)
    before = full[5]
    worst = 0.0
    mask = torch.ones(before.shape[:2], dtype=torch.bool)
    for b, pos in enumerate(positions):
        for i, p in enumerate(pos):
            r, delta = before[b, p], seen[4][b, p] - before[b, p]
            assert torch.allclose(delta.norm(), c * r.norm(), rtol=1e-5)
            cos = torch.nn.functional.cosine_similarity(delta, vectors[b, i], dim=0)
            assert cos > 1 - 1e-5
            worst = max(worst, abs(delta.norm().item() / (c * r.norm().item()) - 1))
            mask[b, p] = False
    assert torch.equal(seen[4][mask], before[mask])
    assert torch.equal(seen[20][0, :2], full[21][0, :2]) and torch.equal(seen[20][1, :3], full[21][1, :3])
    assert not torch.allclose(seen[20][0, 2:], full[21][0, 2:])
    measure("steering_norm_rel_err", worst, "≤ 1e-5")


def test_create_oracle_input(smol):
    """create_oracle_input: the chat-templated prompt contains the introspection prefix then the question and ends
    with the assistant's turn header (ChatML's generation prompt, ARENA's add_generation_prompt=True), the
    positions are the placeholder tokens, one row per activation; the identity prompt (no prefix, no chat) has its
    single placeholder at the ' ?' before the final ' ->'."""
    _, tok, _, _ = smol
    acts = torch.randn(3, 2, 576)
    oi = O.create_oracle_input("Which word is this?", 9, 2, tok, acts)
    text = tok.decode(oi.input_ids[0])
    assert O.get_introspection_prefix(9, 2) + "Which word is this?" in text and text.startswith("<|im_start|>")
    assert text.endswith("<|im_start|>assistant\n")  # the generation prompt: the oracle answers as the assistant
    assert oi.input_ids.shape[0] == 3 and oi.vectors is acts
    assert all(tok.decode(oi.input_ids[0, p]) == O.SPECIAL_TOKEN for p in oi.positions[0])
    ident = O.create_oracle_input(O.IDENTITY_PROMPT, 0, 1, tok, torch.randn(2, 576), chat=False, prefix=False)
    assert tok.decode(ident.input_ids[0]) == O.IDENTITY_PROMPT
    assert ident.positions == [[ident.input_ids.shape[1] - 2]] * 2 and ident.vectors.shape == (2, 1, 576)


def test_run_oracle_matches_hf_generate(smol, gate_acts):
    """run_oracle's greedy generation with the injection equals Hugging Face's ``generate`` (do_sample=False) with
    the same hook registered: the hook changes the prompt's pass only, and the KV-cached steps agree. Its first-step
    logits equal a plain hooked forward's (1e-4 absolute on logits up to ~40: float32 through 30 blocks, the
    shared prefix's keys computed in a batch of one). The shared-prefix path equals running every row whole."""
    model, tok, _, _ = smol
    words, acts = gate_acts
    oi = O.create_oracle_input("What is this word?", 2, 1, tok, acts[2][:2])
    new, logits = O.run_oracle(MODEL, oi, steering_coefficient=2.0, max_new_tokens=4)
    hook = O.get_hf_activation_steering_hook(oi.vectors, oi.positions, 2.0)
    with O.add_hook(O.layers_of(model)[O.INJECTION_LAYER], hook), torch.no_grad():
        ref = model.generate(oi.input_ids, attention_mask=torch.ones_like(oi.input_ids), max_new_tokens=4,
                             do_sample=False, pad_token_id=tok.eos_token_id)
        plain = model(input_ids=oi.input_ids).logits[:, -1]
    assert torch.equal(new, ref[:, oi.input_ids.shape[1]:])
    torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-4)
    whole_new, whole_logits = O.run_oracle(MODEL, oi, steering_coefficient=2.0, max_new_tokens=4, share_prefix=False)
    assert torch.equal(whole_new, new)
    torch.testing.assert_close(whole_logits, logits, rtol=1e-5, atol=1e-4)


def test_run_oracle_injects_a_placeholder_that_is_the_last_token(smol):
    """run_oracle with a prompt whose placeholder is its last token: the shared-prefix path must still run a
    steered pass of more than one position (a one-position pass is a cached generation step, which the hook leaves
    alone), so it equals running every row whole (1e-4 on the logits, as above) and differs from the unsteered
    model."""
    model, tok, _, _ = smol
    vectors = torch.randn(2, 576, generator=torch.Generator().manual_seed(3))
    oi = O.create_oracle_input("cat -> cat; hello -> hello;" + O.SPECIAL_TOKEN, 0, 1, tok, vectors, chat=False,
                               prefix=False)
    assert oi.positions == [[oi.input_ids.shape[1] - 1]] * 2
    _, shared = O.run_oracle(MODEL, oi, steering_coefficient=4.0)
    _, whole = O.run_oracle(MODEL, oi, steering_coefficient=4.0, share_prefix=False)
    with torch.no_grad():
        plain = model(input_ids=oi.input_ids).logits[:, -1]
    torch.testing.assert_close(shared, whole, rtol=1e-5, atol=1e-4)
    assert (shared - plain).abs().max() > 1.0


def test_random_like_norms_keeps_each_rows_norm():
    """random_like_norms (the control): each row is a Gaussian direction scaled to the norm of the same row of acts
    (rows of norms 0.1 to 1000: float32, 1e-5 relative); the same seed gives the same vectors, which are not the
    activations' directions."""
    acts = torch.randn(5, 64, generator=torch.Generator().manual_seed(0)) * torch.tensor([[0.1], [1.0], [7.0], [50.0],
                                                                                           [1000.0]])
    r = O.random_like_norms(acts, seed=4)
    torch.testing.assert_close(r.norm(dim=-1), acts.norm(dim=-1), rtol=1e-5, atol=0)
    assert torch.equal(r, O.random_like_norms(acts, seed=4))
    assert torch.nn.functional.cosine_similarity(r, acts, dim=-1).abs().max() < 0.9


def test_summarise_counts_exactly_half_as_at_least_half():
    """summarise: 'the layers where at least half the words decode' includes a layer at accuracy exactly 1/2;
    best layer = highest accuracy, the earliest among ties; mean accuracy over layers; the control's best."""
    def row(layer, k, n=4, predicted=("Ġcat",)):
        return dict(layer=layer, k=k, n=n, accuracy=k / n, ci=[0.0, 1.0], predicted=list(predicted))
    curve = {"2": {"oracle": [row(0, 1), row(1, 2), row(2, 3, predicted=("Ġhello",)), row(3, 3), row(4, 2), row(5, 0)],
                   "control": [row(layer, k) for layer, k in enumerate((0, 1, 0, 0, 0, 0))]}}
    s = O.summarise(curve)["2"]
    assert s["first_layer_at_least_half"] == 1 and s["last_layer_at_least_half"] == 4
    assert s["best_layer"] == 2 and s["best_accuracy"] == 0.75
    assert s["mean_accuracy"] == pytest.approx((1 + 2 + 3 + 3 + 2 + 0) / 24)
    assert s["control_max_accuracy"] == 0.25 and s["control_correct"] == 1 and s["control_n"] == 24
    assert s["hello_share"] == pytest.approx(1 / 6)


def decision_tolerance(rows: list[dict]) -> int:
    """How many argmax decisions could flip on another CPU: those whose margin (top logit − runner-up) is within
    twice a SmolLM2 logit's float32 error (SMOLLM2_LOGIT_REL × the largest |logit|, checks/committed.py)."""
    return sum(m < 2 * SMOLLM2_LOGIT_REL * r["max_abs_logit"] for r in rows for m in r["margin"])


def test_results_json_is_current(gate_acts, committed, measure):
    """results.json (cited by the post) is the experiment's: the words are today's single-token words; every
    accuracy is k/n with its Wilson interval; the summary follows from the curve; and the untrained oracle's
    decisions for the first 8 words at layers 2, 12, 20 (c = 2) and the control at layer 12, recomputed now,
    equal the committed ones except decisions within rounding of a tie (none expected). The figure exists."""
    words, acts = gate_acts
    _, tok = hf_model(MODEL)
    assert committed["words"] == O.identity_words(tok) and committed["words"][:GATE_WORDS] == words
    for c, rows in committed["curve"].items():
        for kind in ("oracle", "control"):
            for r in rows[kind]:
                assert r["k"] == sum(r["correct"]) and r["accuracy"] == r["k"] / r["n"]
                assert r["ci"] == pytest.approx(O.P40.wilson_interval(r["k"], r["n"]))
        s = committed["summary"][c]
        assert s["best_accuracy"] == max(r["accuracy"] for r in rows["oracle"])
        assert s["control_max_accuracy"] == max(r["accuracy"] for r in rows["control"])
    assert committed["summary"] == O.summarise(committed["curve"])
    rows = committed["curve"][GATE_COEF]
    flips = 0
    for l in GATE_LAYERS:
        now = O.decode_token_identity(MODEL, words, acts[l], steering_coefficient=float(GATE_COEF))
        then = rows["oracle"][l]
        assert then["layer"] == l
        allowed = decision_tolerance([dict(margin=then["margin"][:GATE_WORDS], max_abs_logit=then["max_abs_logit"])])
        differ = sum(a != b for a, b in zip(now["correct"], then["correct"][:GATE_WORDS]))
        assert differ <= allowed, (l, now["correct"], then["correct"][:GATE_WORDS])
        assert_reproduces(now["margin"], then["margin"][:GATE_WORDS],
                          Tolerance(abs=2 * SMOLLM2_LOGIT_REL * then["max_abs_logit"],
                                    reason="a difference of two SmolLM2 logits"), name=f"margin.layer{l}")
        flips += differ
    ctrl = O.decode_token_identity(MODEL, words, O.random_like_norms(acts[12], 12),
                                   steering_coefficient=float(GATE_COEF))
    assert_reproduces(sum(ctrl["correct"]), sum(rows["control"][12]["correct"][:GATE_WORDS]),
                      exact("a count of argmax decisions"), name="control")
    measure("gate_decision_flips", flips, "0")
    assert (HERE / "figures/identity_curve.png").stat().st_size > 10_000


@pytest.mark.slow
def test_identity_curve_reproduces(committed, measure):
    """(slow, several minutes: 30 layers × 3 coefficients × (activation, control) × all words) The whole curve,
    recomputed: each layer's count within the number of its decisions that sit within rounding of a tie; and the
    headline: at c = 2 the best layer's accuracy has a Wilson interval entirely above the best control's."""
    words = committed["words"]
    curve = O.identity_curve(MODEL, committed["layers"], words)
    for c, rows in curve.items():
        for kind in ("oracle", "control"):
            for now, then in zip(rows[kind], committed["curve"][c][kind]):
                allowed = decision_tolerance([then])
                assert abs(now["k"] - then["k"]) <= allowed, (c, kind, now["layer"], now["k"], then["k"])
    s = committed["summary"][GATE_COEF]
    best_ctrl = max(committed["curve"][GATE_COEF]["control"], key=lambda r: r["accuracy"])
    assert s["best_ci"][0] > best_ctrl["ci"][1]
    measure("best_accuracy_c2", s["best_accuracy"])
