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
from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces
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


def test_results_json_is_current(smol, committed):
    """results.json (cited by the post) is reproduced now: the landmark logit differences, the per-layer
    attention/MLP attributions, the top neurons and their attributions, all in logit units and all within
    twice a logit's float32 error (2.2e-4 × the largest |logit|, SMOL_REL: each attribution is a part of the logit
    difference, computed along the same float32 path); the recorded contexts come from the stated corpus and end
    at the activating token; the figures exist."""
    model, _, correct, wrong, logits, cache = smol
    results = committed
    parts = N.dla_decomposition(model, cache, correct, wrong)
    err = SMOL_REL * logits.abs().max().item()
    tol = Tolerance(abs=2 * err, reason=f"a difference of two SmolLM2 logits (or a part of one), each within {err:.1e}")
    assert_reproduces(logit_diffs(logits, correct, wrong), results["logit_diff"], tol, name="logit_diff")
    attn, mlp = N.dla_by_layer(parts)
    assert_reproduces({"attn_by_layer": attn, "mlp_by_layer": mlp},
                      {k: results[k] for k in ("attn_by_layer", "mlp_by_layer")}, tol, name="dla")
    assert results["dla_total_error"] < 1e-4
    for entry in results["neurons"]:
        assert_reproduces(parts["neurons"][:, entry["layer"], entry["neuron"]].mean().item(), entry["dla"], tol,
                          name=f"neurons.L{entry['layer']}N{entry['neuron']}.dla")
        assert all(c["context"].endswith("⟧") for c in entry["contexts"])
        values = [c["activation"] for c in entry["contexts"]]
        assert values == sorted(values, reverse=True) and values[0] == entry["corpus_max"]
    assert results["corpus"] == N.CORPUS
    for name in ("dla", "neuron_histograms"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
