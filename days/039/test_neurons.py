"""The gate of day 39 (ARENA 1.2: MLP neurons, top-activating examples, direct logit attribution).

References: TransformerLens's cached ``hook_post`` (which neuron activations recomputed from the MLP's input must
equal, for GPT-2's GELU MLP and SmolLM2's gated SiLU MLP) and its residual decomposition
``ActivationCache.get_full_resid_decomposition(expand_neurons=True, apply_ln=True)`` (an independent route to every
component's direct contribution); ``torch.topk`` for the top activations; and the model's own logits, which the
attributions must sum to exactly once the final norm's scale is frozen at its cached value. Tolerances: float32
sums of ~10⁴ terms (SmolLM2's 46,080 neurons, 270 heads) of size ≤ 1 agree to 1e-4 absolutely; recomputing an
activation with the same weights to 1e-5 relative.
"""

import copy
import importlib
from pathlib import Path

import pytest
import torch

from checks import assert_parity
from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces, exact, log_space
from checks.models import smollm2_hooked

from . import neurons as N

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("gpt2-tokenizer", "smollm2-135m-instruct", "wikitext-2")


fixtures = importlib.import_module("days.035.fixtures")
one_thread_module, small_gpt2, gpt2 = fixtures.one_thread_module, fixtures.small_gpt2, fixtures.gpt2


@pytest.fixture(scope="module")
def smol():
    """SmolLM2 on day 37's landmark prompts: the batch, its answers, logits and full cache."""
    model = smollm2_hooked()
    clean, _, correct, wrong = N.hooks.landmark_batch(model.tokenizer)
    with torch.no_grad():
        logits, cache = model.run_with_cache(clean)
    return model, clean, correct, wrong, logits, cache


def ioi(model):
    """The clean IOI prompts and their answers (day 35's shared prompts)."""
    clean, _, correct, wrong = fixtures.ioi_prompts(model)
    return clean, correct, wrong


def logit_diffs(logits, correct, wrong, pos=-1):
    return (logits[:, pos].gather(-1, correct[:, None]) - logits[:, pos].gather(-1, wrong[:, None]))[:, 0]


def test_neuron_activations_are_the_mlp_hidden_layer(gpt2, smol, measure):
    """A neuron's activation is what its MLP computes from its normalised input: GELU(x W_in + b_in) in GPT-2 and
    SiLU(x W_gate) · (x W_in) in SmolLM2 equal the cached hook_post in every layer (1e-5 relative, 1e-6 absolute);
    neuron_activations caches exactly those tensors."""
    tokens, _, _ = ioi(gpt2)
    _, cache = gpt2.run_with_cache(tokens)
    for l in range(2):
        recomputed = N.mlp_hidden_from_input(gpt2, l, cache[N.act_name("normalized", l, "ln2")])
        assert_parity(recomputed, cache[N.act_name("post", l)], atol=1e-6, rtol=1e-5)
    assert torch.equal(N.neuron_activations(gpt2, tokens, [1])[1], cache["blocks.1.mlp.hook_post"])
    model, _, _, _, _, smol_cache = smol
    worst = 0.0
    for l in range(model.cfg.n_layers):
        post = smol_cache[N.act_name("post", l)]
        report = assert_parity(N.mlp_hidden_from_input(model, l, smol_cache[N.act_name("normalized", l, "ln2")]), post,
                               atol=1e-6, rtol=1e-5)
        worst = max(worst, report.max_rel_err)
    assert (smol_cache["blocks.3.mlp.hook_post"] < 0).any()  # a gated SiLU neuron can be negative
    measure("smollm2.neuron_recompute.max_rel_err", worst, "≤ 1e-5")


@pytest.mark.parametrize("n_seq, seq_len, batch_size", [(11, 5, 4), (3, 20, 2)])
def test_neuron_activations_batch_over_sequences(gpt2, n_seq, seq_len, batch_size):
    """neuron_activations goes through the corpus in batches of *sequences*: on a corpus with more sequences than
    positions (11 × 5, batches of 4, the last one short) and one with more positions than sequences (3 × 20),
    every layer's result equals hook_post of run_with_cache on each sequence alone (an independent computation,
    no batching at all; 1e-6 absolute + 1e-5 relative: the same float32 matmuls, blocked differently)."""
    tokens = N.tl_setup.wikitext_tokens(gpt2.tokenizer, n_seq, seq_len)
    acts = N.neuron_activations(gpt2, tokens, [0, 1], batch_size=batch_size)
    assert sorted(acts) == [0, 1]
    for l in (0, 1):
        alone = torch.cat([gpt2.run_with_cache(tokens[i:i + 1])[1][N.act_name("post", l)] for i in range(n_seq)])
        assert acts[l].shape == (n_seq, seq_len, gpt2.cfg.d_mlp)
        assert_parity(acts[l], alone, atol=1e-6, rtol=1e-5, name=f"layer {l}, {n_seq}x{seq_len}")


def test_context_string_drops_a_partial_first_word_exactly(gpt2):
    """context_string on hand-built GPT-2 tokens, against strings written out by hand: ' The', ' Brand', 'enburg',
    ' Gate', ' stands', ' in', ' Berlin'. A window that begins inside "Brandenburg" drops the fragment up to the
    whitespace that ends it ("…" then that whitespace); a window that begins at a word keeps it whole; a window
    that reaches the start has no "…"; a fragment with nothing after it leaves "…" alone; a newline ending the
    fragment is kept (shown as ⏎)."""
    tok = gpt2.tokenizer
    ids = [383, 13512, 37036, 12816, 6296, 287, 11307]
    assert [tok.decode([i]) for i in ids] == [" The", " Brand", "enburg", " Gate", " stands", " in", " Berlin"]
    tokens = torch.tensor([ids])
    expected = {4: "… Gate stands in⟦ Berlin⟧",          # window 'enburg Gate stands in': the fragment dropped
                5: "… Brandenburg Gate stands in⟦ Berlin⟧",  # window ' Brandenburg …': begins at a word
                6: " The Brandenburg Gate stands in⟦ Berlin⟧",  # the whole sequence: nothing cut
                9: " The Brandenburg Gate stands in⟦ Berlin⟧"}
    for before, text in expected.items():
        assert N.context_string(tok, tokens, 0, 6, before=before) == text, before
    assert N.context_string(tok, tokens, 0, 3, before=1) == "…⟦ Gate⟧"       # 'enburg' alone: all of it dropped
    assert N.context_string(tok, tokens, 0, 0, before=5) == "⟦ The⟧"
    newline = torch.tensor([[13512, 37036, 198, 12816, 6296]])              # ' Brand' 'enburg' '\n' ' Gate' ' stands'
    assert N.context_string(tok, newline, 0, 4, before=3) == "…⏎ Gate⟦ stands⟧"


def test_top_activating_contexts(gpt2):
    """top_activations returns torch.topk's k largest activations over the whole corpus, largest first, with the
    (sequence, position) they came from; on a model, top_activating_contexts finds the largest cached hook_post
    values of the neuron, and each context is the decoded text before the activating token followed by that token,
    marked."""
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(5, 30, generator=g)
    top = N.top_activations(acts, 7)
    values, _ = acts.flatten().topk(7)
    assert [v for v, _, _ in top] == values.tolist()
    assert all(acts[s, p].item() == v for v, s, p in top)
    tokens = N.tl_setup.wikitext_tokens(gpt2.tokenizer, 3, 24)
    _, cache = gpt2.run_with_cache(tokens)
    post = cache["blocks.1.mlp.hook_post"][..., 17]
    contexts = N.top_activating_contexts(gpt2, tokens, 1, 17, k=4, before=5)
    assert [c["activation"] for c in contexts] == post.flatten().topk(4).values.tolist()
    tok = gpt2.tokenizer
    for c in contexts:
        s, p = c["seq"], c["pos"]
        assert post[s, p].item() == c["activation"]
        lead, marked = c["context"].split("⟦")
        assert marked == tok.decode(tokens[s, p:p + 1]).replace("\n", "⏎") + "⟧"
        full = tok.decode(tokens[s, max(0, p - 5):p]).replace("\n", "⏎").replace("<unk>", "⟨unk⟩")
        assert full.endswith(lead.removeprefix("…")) and len(lead) <= len(full) + 1  # a suffix of the window
    assert N.context_string(tok, tokens, 0, 0).startswith("⟦")
    words = tok(" alpha beta gamma delta", return_tensors="pt").input_ids
    assert N.context_string(tok, words, 0, 3, before=2) == "… beta gamma⟦ delta⟧"
    unk = tok("x <unk> y", return_tensors="pt").input_ids
    assert "⟨unk⟩" in N.context_string(tok, unk, 0, unk.shape[1] - 1) and "<unk>" not in N.context_string(tok, unk, 0, unk.shape[1] - 1)


def test_dla_sums_to_the_logit_difference_random_gpt2(gpt2, measure):
    """Direct logit attribution on GPT-2 (LayerNorm: each component is centred, then divided by the cached final
    scale): embed + pos_embed + every head + b_O + every neuron + b_out + b_U's difference equals the model's
    logit difference for each batch row (1e-4)."""
    tokens, correct, wrong = ioi(gpt2)
    logits, cache = gpt2.run_with_cache(tokens)
    parts = N.dla_decomposition(gpt2, cache, correct, wrong)
    assert parts["heads"].shape == (2, 2, 4) and parts["neurons"].shape == (2, 2, 256) and "pos_embed" in parts
    report = assert_parity(N.dla_total(parts), logit_diffs(logits, correct, wrong), atol=1e-4)
    measure("gpt2.dla_sum_vs_logit_diff.max_abs_err", report.max_abs_err, "≤ 1e-4")


def test_dla_sums_exactly_once_the_final_scale_is_frozen_float64(small_gpt2, measure):
    """The identity behind DLA, exactly, in float64 on a random GPT-2: the final LayerNorm's scale recomputed by hand
    from the last residual stream, s = sqrt(var(x_L) + ε), equals ln_final.hook_scale, and with that hand-computed s
    the attributions sum to the logit difference to rounding (1e-12). The LayerNorm is linear once s is frozen and
    nonlinear otherwise: dividing by s is what makes the parts add up, and with s off by 1% the sum is off by 1%
    of everything but b_U's difference."""
    model = copy.deepcopy(small_gpt2[0]).to(torch.float64)
    tokens, correct, wrong = ioi(model)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    diff = logit_diffs(logits, correct, wrong)
    scale = N.final_scale(model, cache["blocks.1.hook_resid_post"][:, -1])
    assert_parity(scale, cache["ln_final.hook_scale"][:, -1], atol=1e-14)
    parts = N.dla_decomposition(model, cache, correct, wrong, scale=scale)
    report = assert_parity(N.dla_total(parts), diff, atol=1e-12)
    measure("gpt2_float64.dla_sum_vs_logit_diff.max_abs_err", report.max_abs_err, "≤ 1e-12")
    off = N.dla_decomposition(model, cache, correct, wrong, scale=1.01 * scale)
    bias = parts["unembed_bias"]
    assert_parity(N.dla_total(off) - bias, (diff - bias) / 1.01, atol=1e-12)


def test_dla_sums_to_the_logit_difference_smollm2(smol, measure):
    """On SmolLM2 (RMSNorm: no centring; rotary: no positional embedding in the stream) the attributions of
    the embedding, 270 heads, 46,080 neurons and the biases sum to the logit difference of each landmark prompt
    (1e-4). Freezing the scale is what makes it exact: the components' raw projections sum to scale × (difference
    − b_U's difference)."""
    model, _, correct, wrong, logits, cache = smol
    parts = N.dla_decomposition(model, cache, correct, wrong)
    diff = logit_diffs(logits, correct, wrong)
    assert "pos_embed" not in parts and parts["neurons"].shape == (4, 30, 1536)
    report = assert_parity(N.dla_total(parts), diff, atol=1e-4)
    measure("smollm2.dla_sum_vs_logit_diff.max_abs_err", report.max_abs_err, "≤ 1e-4")
    scale = cache["ln_final.hook_scale"][:, -1, 0]
    raw = (cache["blocks.29.hook_resid_post"][:, -1] * N.logit_direction(model, correct, wrong)).sum(-1)
    assert_parity(raw, scale * (diff - parts["unembed_bias"]), atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("which", ["gpt2", "smollm2"])
def test_dla_matches_transformer_lens_decomposition(which, gpt2, smol, measure):
    """Each neuron's, head's and the embedding's attribution equals the one read off TransformerLens's
    get_full_resid_decomposition(expand_neurons=True, apply_ln=True) projected on W_U[:, A] - W_U[:, B]
    (1e-5 on GPT-2's two IOI prompts; 1e-4 on SmolLM2's first landmark prompt: TransformerLens materialises
    every neuron's d_model-vector, 46,080 × 576 numbers a prompt)."""
    if which == "gpt2":
        model = gpt2
        tokens, correct, wrong = ioi(gpt2)
        _, cache = gpt2.run_with_cache(tokens)
        tol = 1e-5
    else:
        model, _, correct, wrong, _, cache = smol
        correct, wrong, cache = correct[:1], wrong[:1], cache.apply_slice_to_batch_dim(slice(0, 1))
        tol = 1e-4
    parts = N.dla_decomposition(model, cache, correct, wrong)
    resid, labels = cache.get_full_resid_decomposition(expand_neurons=True, apply_ln=True, pos_slice=-1, return_labels=True)
    theirs = (resid * N.logit_direction(model, correct, wrong)).sum(-1)  # resid: [component, batch, d_model]
    index = {label: i for i, label in enumerate(labels)}
    cfg = model.cfg
    neurons = torch.stack([theirs[[index[f"L{l}N{n}"] for n in range(cfg.d_mlp)]].T for l in range(cfg.n_layers)], 1)
    heads = torch.stack([theirs[[index[f"L{l}H{h}"] for h in range(cfg.n_heads)]].T for l in range(cfg.n_layers)], 1)
    report = assert_parity(parts["neurons"], neurons, atol=tol, name="neurons")
    assert_parity(parts["heads"], heads, atol=tol, name="heads")
    assert_parity(parts["embed"], theirs[index["embed"]], atol=tol)
    measure(f"{which}.neuron_dla_vs_transformer_lens.max_abs_err", report.max_abs_err, f"≤ {tol:g}")


def test_neuron_dla_is_activation_times_weight_projection(smol):
    """A neuron's attribution factorises: a_n × (W_out[n] · d) / s, so it is zero where the neuron is silent and
    flips sign with the activation; swapping the two answers negates every attribution."""
    model, _, correct, wrong, _, cache = smol
    parts = N.dla_decomposition(model, cache, correct, wrong)
    swapped = N.dla_decomposition(model, cache, wrong, correct)
    for key in ("neurons", "heads", "embed"):
        assert_parity(swapped[key], -parts[key], atol=1e-6)
    l, n = 20, 7
    a = cache[N.act_name("post", l)][:, -1, n]
    w = (model.blocks[l].mlp.W_out[n] * N.logit_direction(model, correct, wrong)).sum(-1)
    assert_parity(parts["neurons"][:, l, n], a * w / cache["ln_final.hook_scale"][:, -1, 0], atol=1e-6, rtol=1e-5)


# A SmolLM2 logit's float32 error on another CPU, relative to the logits' scale: derived in checks/committed.py.
SMOL_REL = SMOLLM2_LOGIT_REL


def logit_tolerance(logits) -> Tolerance:
    """Twice a SmolLM2 logit's float32 error on another CPU (SMOL_REL × the largest |logit|): a difference of two
    logits, or any part of one computed along the same float32 path (an attribution, a sum of attributions)."""
    err = SMOL_REL * logits.abs().max().item()
    return Tolerance(abs=2 * err, reason=f"a difference of two SmolLM2 logits (or a part of one), each within {err:.1e}")


def neuron_dla_bounds(model, cache, correct, wrong, pos=-1):
    """[batch, layer, d_mlp]: how far each neuron's attribution a_n (W_out[n]·d)/s on each prompt can move on
    another CPU. The activation a_n is computed through at most 30 layers, like a logit, so it is within SMOL_REL ×
    the layer's largest |activation| at that position (the scale of what it is computed from, as a logit's
    error is relative to the logits' scale; the attention sink's far larger activations at the first position are
    another position's); the weight projection and the scale add SMOL_REL relative
    (a 576-term float32 sum, far inside it): bound = SMOL_REL · (max|a_l| · |W_out[n]·d / s| + |DLA_n|). Far
    tighter than logit_tolerance for a single neuron (~3e-4 against ~1e-2 logits); the batch mean's bound is
    the mean of these."""
    d = N.logit_direction(model, correct, wrong)
    scale = cache["ln_final.hook_scale"][:, pos]                      # [b, 1]
    bounds = []
    for l in range(model.cfg.n_layers):
        w = (N._center(model, model.blocks[l].mlp.W_out) @ d.T).T / scale          # [b, d_mlp]
        post = cache[N.act_name("post", l)]
        a_max = post[:, pos].abs().amax(-1, keepdim=True)                           # [b, 1]
        bounds.append(SMOL_REL * (a_max * w.abs() + (post[:, pos] * w).abs()))
    return torch.stack(bounds, 1)


def assert_decided(larger: float, smaller: float, bound: float, what: str):
    """A ranking or threshold decision is reproducible on another CPU only if its margin exceeds the bound."""
    assert larger - smaller > bound, f"{what}: margin {larger - smaller:.2e} is within rounding ({bound:.2e})"


def test_results_json_is_current(smol, committed, measure):
    """results.json (cited by the post) is reproduced now from the landmark prompts, every number the post cites
    from the attribution (dla_summary and the top neurons on the prompts): the logit differences and their mean,
    per-layer and total attention/MLP attributions, the top head, within twice a logit's float32 error
    (logit_tolerance, 2.2e-4 × the largest |logit|); each neuron's attribution, the top-ten sum and the top neuron's
    share within the per-neuron bound (neuron_dla_bounds); the activations on the prompts within SMOL_REL × the
    layer's largest activation; dla_total_error, itself a rounding error, to its order of magnitude (1 decade).
    Every decision (which neurons rank 1-4 and 1-10, the most negative one, how many pass ±0.1, the strongest
    layers and head) is the committed one, and its margin is checked to exceed the rounding it could suffer. The
    recorded contexts come from the stated corpus and end at the activating token (recomputed in the slow test);
    the figures exist."""
    model, _, correct, wrong, logits, cache = smol
    results = committed
    parts = N.dla_decomposition(model, cache, correct, wrong)
    now = N.dla_summary(parts, logit_diffs(logits, correct, wrong))
    tol = logit_tolerance(logits)
    for key in ("logit_diff", "mean_logit_diff", "attn_by_layer", "mlp_by_layer", "total_attn", "total_mlp",
                "total_neurons", "embed", "top_head"):
        assert_reproduces(now[key], results[key], tol, name=key)
    assert_reproduces(now["dla_total_error"], results["dla_total_error"],
                      log_space(1.0, why="the float32 rounding left in a sum of 46 080 + 270 + … attributions"),
                      name="dla_total_error")
    assert now["dla_total_error"] < 1e-4

    per_prompt = neuron_dla_bounds(model, cache, correct, wrong)                 # [b, layer, d_mlp]
    neurons, bounds = parts["neurons"].mean(0), per_prompt.mean(0)
    flat, bflat = neurons.flatten(), bounds.flatten()
    order = flat.argsort(descending=True)
    for i in list(range(N.N_NEURONS)) + [9]:  # the order of the top four, and who is in the top ten
        assert_decided(flat[order[i]].item(), flat[order[i + 1]].item(), (bflat[order[i]] + bflat[order[i + 1]]).item(),
                       f"rank {i + 1} vs {i + 2}")
    assert_decided(flat[order[-2]].item(), flat[order[-1]].item(), (bflat[order[-2]] + bflat[order[-1]]).item(),
                   "the most negative neuron")
    for threshold in (0.1, -0.1):
        nearest = (flat - threshold).abs().argmin()
        assert_decided(abs(flat[nearest].item() - threshold), 0.0, bflat[nearest].item(), f"the count past {threshold}")
    for name, values in (("largest_attn_layer", torch.tensor(results["attn_by_layer"])),
                         ("largest_mlp_layer", torch.tensor(results["mlp_by_layer"])),
                         ("top_head", parts["heads"].mean(0).flatten())):
        top2 = values.topk(2).values
        assert_decided(top2[0].item(), top2[1].item(), 2 * tol.abs, name)
    for key in ("n_neurons_over_tenth", "n_neurons_under_minus_tenth", "largest_mlp_layer", "largest_attn_layer"):
        assert_reproduces(now[key], results[key], exact("a count or argmax whose margin was checked above"), name=key)
    # who is in the top ten is decided (checked above); ranks 5-10 may swap within rounding, so compare by neuron
    by_id = lambda entries: {(e["layer"], e["neuron"]): e["dla"] for e in entries}  # noqa: E731
    assert by_id(now["top10_neurons"]).keys() == by_id(results["top10_neurons"]).keys()
    top10 = order[:10]
    assert_reproduces(sorted(by_id(now["top10_neurons"]).items()), sorted(by_id(results["top10_neurons"]).items()),
                      Tolerance(abs=bflat[top10].max().item(), reason="one neuron's attribution (neuron_dla_bounds)"),
                      name="top10_neurons")
    assert_reproduces(now["top10_neuron_sum"], results["top10_neuron_sum"],
                      Tolerance(abs=bflat[top10].sum().item(), reason="ten neuron attributions, each within its bound"),
                      name="top10_neuron_sum")
    assert_reproduces(now["bottom_neuron"], results["bottom_neuron"],
                      Tolerance(abs=bflat[order[-1]].item(), reason="one neuron's attribution (neuron_dla_bounds)"),
                      name="bottom_neuron")
    share_bound = now["top_neuron_share_of_neurons"] * (bflat[order[0]].item() / flat[order[0]].item()
                                                         + tol.abs / abs(now["total_neurons"]))
    assert_reproduces(now["top_neuron_share_of_neurons"], results["top_neuron_share_of_neurons"],
                      Tolerance(abs=share_bound, reason="a ratio: the top neuron's bound over its value plus the "
                                                        "neurons' total's over the total"),
                      name="top_neuron_share_of_neurons")

    assert [(e["layer"], e["neuron"]) for e in results["neurons"]] == N.top_neurons(parts, N.N_NEURONS)
    worst = 0.0
    for entry in results["neurons"]:
        l, n = entry["layer"], entry["neuron"]
        prompts = N.neuron_on_prompts(parts, cache, l, n)
        assert prompts["label"] == entry["label"] == f"L{l}N{n}"
        worst = max(worst, assert_reproduces(prompts["dla"], entry["dla"], Tolerance(
            abs=bounds[l, n].item(), reason="one neuron's batch-mean attribution (neuron_dla_bounds)"),
            name=f"{entry['label']}.dla"))
        worst = max(worst, assert_reproduces(prompts["dla_by_prompt"], entry["dla_by_prompt"], Tolerance(
            abs=per_prompt[:, l, n].max().item(), reason="one neuron's attribution on one prompt (neuron_dla_bounds)"),
            name=f"{entry['label']}.dla_by_prompt"))
        a_err = SMOL_REL * cache[N.act_name("post", l)].abs().max().item()
        assert_reproduces(prompts["activation_on_prompts"], entry["activation_on_prompts"],
                          Tolerance(abs=a_err, reason=f"an activation of layer {l}: SMOL_REL × the layer's largest"),
                          name=f"{entry['label']}.activation_on_prompts")
        assert all(c["context"].endswith("⟧") for c in entry["contexts"])
        values = [c["activation"] for c in entry["contexts"]]
        assert values == sorted(values, reverse=True) and values[0] == entry["corpus_max"]
        assert entry["top_context"] == entry["contexts"][0]["context"]
    measure("neurons_vs_committed", worst, "≤ 1 (fraction of the tolerance)")
    assert results["corpus"] == N.CORPUS
    for name in ("dla", "neuron_histograms"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_corpus_numbers_reproduce(smol, committed, measure):
    """(slow, ~2 min: 96 × 128 WikiText-2 tokens through SmolLM2) What the post cites from the corpus, recomputed:
    for each top neuron its largest activation (within SMOL_REL × the layer's largest |activation| over the corpus:
    the activation's float32 error on another CPU), the fraction of tokens above half of it (within the fraction of
    tokens whose activation lies that close to the threshold), and its five top-activating contexts, exactly: their
    order is a ranking whose margins (checked) exceed twice that error, and the strings are decoded tokens."""
    model, _, correct, wrong, _, cache = smol
    parts = N.dla_decomposition(model, cache, correct, wrong)
    top = N.top_neurons(parts, N.N_NEURONS)
    tokens = N.tl_setup.wikitext_tokens(model.tokenizer, **committed["corpus"])
    acts = N.neuron_activations(model, tokens, sorted({l for l, _ in top}))
    for (l, n), entry in zip(top, committed["neurons"]):
        now = N.neuron_on_corpus(model, tokens, acts[l], l, n)
        a = acts[l][..., n]
        err = SMOL_REL * acts[l].abs().max().item()
        assert_reproduces(now["corpus_max"], entry["corpus_max"],
                          Tolerance(abs=err, reason=f"an activation of layer {l}: SMOL_REL × the layer's largest"),
                          name=f"{entry['label']}.corpus_max")
        near = int(((a - a.max() / 2).abs() < 2 * err).sum())
        assert_reproduces(now["corpus_fraction_above_half_max"], entry["corpus_fraction_above_half_max"],
                          Tolerance(abs=near / a.numel() + 1e-9, reason=f"{near} activations within rounding of the "
                                                                        "threshold (half the maximum)"),
                          name=f"{entry['label']}.corpus_fraction_above_half_max")
        top6 = a.flatten().topk(6).values
        for i in range(5):
            assert_decided(top6[i].item(), top6[i + 1].item(), 2 * err, f"{entry['label']} context rank {i + 1}")
        assert [(c["seq"], c["pos"], c["context"]) for c in now["contexts"]] == \
            [(c["seq"], c["pos"], c["context"]) for c in entry["contexts"]]
        assert_reproduces([c["activation"] for c in now["contexts"]], [c["activation"] for c in entry["contexts"]],
                          Tolerance(abs=err, reason=f"activations of layer {l}"), name=f"{entry['label']}.contexts")
        assert now["top_context"] == entry["top_context"]
        measure(f"{entry['label']}.near_threshold_tokens", near)
