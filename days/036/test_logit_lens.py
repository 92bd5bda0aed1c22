"""The gate of day 36 (the logit lens: decode each layer's residual stream through the final norm and W_U).

References: TransformerLens's own final norm modules (LN, LNPre, RMS, RMSPre) and its
``accumulated_resid``; Hugging Face's models, whose hidden states decoded through their own final norm and
``lm_head`` are an independent logit lens (GPT-2 for the random model, Llama for SmolLM2); torch's
``F.cross_entropy`` and ``F.kl_div`` for the statistics. Tolerances: float64 comparisons of the same formula
1e-12; float32 log-probabilities of two implementations of the same model (TransformerLens folds and centres
weights, Hugging Face does not) 1e-4 for a 2-layer model and 5e-4 through SmolLM2's 30 layers, whose residual
stream reaches norms of ~10³.
"""

import importlib
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from checks import assert_parity
from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces
from checks.models import gpt2_config, smollm2

from . import logit_lens as L

HERE = Path(__file__).parent
tl_setup = L.tl_setup
pytestmark = pytest.mark.asset("gpt2-tokenizer", "smollm2-135m-instruct", "wikitext-2")


fixtures = importlib.import_module("days.035.fixtures")
one_thread_module, small_gpt2, smol = fixtures.one_thread_module, fixtures.small_gpt2, fixtures.smol_gate_run




@pytest.mark.parametrize("kind", ["LN", "LNPre", "RMS", "RMSPre"])
def test_final_norm_matches_transformer_lens(kind, measure):
    """final_norm written out equals the model's own ln_final module for each normalisation TransformerLens uses
    (LayerNorm and RMSNorm, with weights or folded), with random weights and biases (float64, 1e-12)."""
    cfg = gpt2_config(n_layers=1, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=16, d_vocab=50,
                      normalization_type=kind, dtype=torch.float64)
    model = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.ln_final.parameters():
            p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = 3 * torch.randn(4, 7, 32, generator=g, dtype=torch.float64) + 1
    report = assert_parity(L.final_norm(model, x), model.ln_final(x), atol=1e-12)
    measure(f"final_norm_{kind}.max_abs_err", report.max_abs_err, "≤ 1e-12")


def test_residual_stack_is_accumulated_resid(small_gpt2):
    """The stack [x_0, …, x_L] (resid_pre of every block, then the last resid_post) is exactly TransformerLens's
    cache.accumulated_resid()."""
    model, _ = small_gpt2
    _, cache = model.run_with_cache(model.to_tokens("The logit lens reads the residual stream"))
    assert torch.equal(L.residual_stack(cache, 2), cache.accumulated_resid())
    assert L.layer_labels(2) == ["embed", "after 1 block", "after 2 blocks"]


def test_last_layer_lens_is_the_model_output(small_gpt2, smol, measure):
    """The last layer's lens equals the model's output logits: random GPT-2 (1e-5) and SmolLM2 (1e-4; logits of
    size ~30 in float32)."""
    model, _ = small_gpt2
    tokens = model.to_tokens("When Mary and John went to the store, John gave a drink to")
    logits, cache = model.run_with_cache(tokens)
    report = assert_parity(L.lens_logits(model, L.residual_stack(cache, 2)[-1]), logits, atol=1e-5)
    measure("gpt2.last_layer_lens_vs_logits.max_abs_err", report.max_abs_err, "≤ 1e-5")
    smol_model, _, smol_logits, smol_cache = smol
    report = assert_parity(L.lens_logits(smol_model, L.residual_stack(smol_cache, 30)[-1]), smol_logits, atol=1e-4)
    measure("smollm2.last_layer_lens_vs_logits.max_abs_err", report.max_abs_err, "≤ 1e-4")


def test_lens_matches_hugging_face_lens_random_gpt2(small_gpt2, measure):
    """Every layer's lens on the random GPT-2 equals Hugging Face's: lm_head(ln_f(hidden_states[l])) gives the
    same log-probabilities (1e-4), although TransformerLens's residual stream is centred and its ln_f folded."""
    model, hf = small_gpt2
    tokens = model.to_tokens("When Mary and John went to the store, John gave a drink to")
    _, cache = model.run_with_cache(tokens)
    with torch.no_grad():
        hidden = hf(tokens, output_hidden_states=True).hidden_states  # the last one is already ln_f-ed
        refs = [hf.lm_head(hf.transformer.ln_f(h)) for h in hidden[:-1]] + [hf.lm_head(hidden[-1])]
    worst = 0.0
    for l, (x, ref) in enumerate(zip(L.residual_stack(cache, 2), refs)):
        worst = max(worst, assert_parity(L.lens_logits(model, x).log_softmax(-1), ref.log_softmax(-1), atol=1e-4,
                                         name=f"layer {l}").max_abs_err)
    measure("gpt2.lens_vs_hugging_face.max_abs_err", worst, "≤ 1e-4")


def test_lens_matches_hugging_face_lens_smollm2(smol, measure):
    """Every layer's lens on SmolLM2 equals Hugging Face's lm_head(norm(hidden_states[l])) (log-probabilities over
    the whole vocabulary, 5e-4, at every 8th position of the first window: a full vocabulary projection costs
    the same per position and layer), and TransformerLens's residual stream is Hugging Face's hidden state at
    every position of that window (RMSNorm models are not centred)."""
    model, tokens, _, cache = smol
    hf, _ = smollm2()
    positions = torch.arange(0, tokens.shape[1], 8)
    with torch.no_grad():
        hidden = hf(tokens[:1], output_hidden_states=True).hidden_states  # 31 entries; the last is already normed
        stack = L.residual_stack(cache, 30)
        worst = 0.0
        for l in range(31):
            h = hidden[l][0, positions]
            ref = hf.lm_head(h if l == 30 else hf.model.norm(h)).log_softmax(-1)
            worst = max(worst, assert_parity(L.lens_logits(model, stack[l][0, positions]).log_softmax(-1), ref,
                                             atol=5e-4, name=f"layer {l}").max_abs_err)
            if l < 30:  # float32 through up to 30 layers, |x| up to ~10³
                assert_parity(stack[l][:1], hidden[l], atol=1e-3, rtol=1e-5)
    measure("smollm2.lens_vs_hugging_face.max_abs_err", worst, "≤ 5e-4")


def test_lens_equals_transformer_lens_accumulated_resid_but_not_the_frozen_scale(small_gpt2, measure):
    """TransformerLens 3.9's accumulated_resid(apply_ln=True) is a logit lens too (it re-normalises every layer's
    stream with its own statistics): it equals final_norm at every layer (1e-5). The trap is its sibling
    apply_ln_to_stack, which divides every layer by the FINAL layer's cached scale (right for a linear
    attribution, day 39): it agrees with the lens at the last layer only."""
    model, _ = small_gpt2
    _, cache = model.run_with_cache(model.to_tokens("The logit lens reads the residual stream"))
    stack = L.residual_stack(cache, 2)
    report = assert_parity(L.final_norm(model, stack), cache.accumulated_resid(apply_ln=True), atol=1e-5)
    measure("gpt2.lens_vs_accumulated_resid_apply_ln.max_abs_err", report.max_abs_err, "≤ 1e-5")
    frozen = cache.apply_ln_to_stack(stack, layer=2)
    assert_parity(L.final_norm(model, stack[-1]), frozen[-1], atol=1e-5)
    gap = (L.final_norm(model, stack[0]) - frozen[0]).abs().max().item()
    measure("frozen_scale_gap_at_embeddings", gap, "> 0.1")
    assert gap > 0.1


def test_lens_statistics_match_torch_losses(small_gpt2):
    """lens_statistics's definitions, against torch: loss = F.cross_entropy of the lens logits, kl =
    F.kl_div(lens ‖ final) summed over the vocabulary, accuracy and agreement = argmax hits, for every layer;
    batching does not change them (float32, 1e-5)."""
    model, _ = small_gpt2
    tokens = tl_setup.wikitext_tokens(model.tokenizer, 3, 20)
    stats = L.lens_statistics(model, tokens, batch_size=2)
    _, cache = model.run_with_cache(tokens)
    stack = L.residual_stack(cache, 2)[:, :, :-1]
    target = tokens[:, 1:].flatten()
    final = L.lens_logits(model, stack[-1]).flatten(0, 1).log_softmax(-1)
    for l in range(3):
        logits = L.lens_logits(model, stack[l]).flatten(0, 1)
        assert stats["loss"][l].item() == pytest.approx(F.cross_entropy(logits, target).item(), abs=1e-5)
        kl = F.kl_div(logits.log_softmax(-1), final, log_target=True, reduction="batchmean").item()
        assert stats["kl"][l].item() == pytest.approx(kl, abs=1e-5)
        assert stats["accuracy"][l].item() == pytest.approx((logits.argmax(-1) == target).float().mean().item())
        assert stats["agreement"][l].item() == pytest.approx((logits.argmax(-1) == final.argmax(-1)).float().mean().item())
    assert stats["kl"][-1].item() == pytest.approx(0, abs=1e-7) and stats["agreement"][-1].item() == 1
    whole = L.lens_statistics(model, tokens, batch_size=3)
    some = L.lens_statistics(model, tokens, layers=[2, 0])
    for key in stats:  # another batching changes only float32 rounding inside the matmuls
        assert_parity(stats[key], whole[key], atol=1e-5)
        assert_parity(some[key], stats[key][[2, 0]], atol=1e-5)


GATE_LAYERS = [0, 15, 29, 30]  # stack indices the gate recomputes (each costs a 49,152-wide projection)
# A SmolLM2 logit's float32 error on another CPU, relative to the logits' scale: derived in checks/committed.py.
SMOL_REL = SMOLLM2_LOGIT_REL


def test_smollm2_accuracy_by_layer(smol, committed, measure):
    """On SmolLM2 over the gate's 128 WikiText-2 tokens: the last layer's lens accuracy is the model's accuracy
    (argmax of the logits of run_with_cache), the embeddings' lens is nearly useless (< 5%), the final layer's
    reaches > 30% and beats the middle; and at these four stack indices the accuracy and loss equal the curve the
    experiment committed to results.json, within SmolLM2's float32 rounding: a lens logit may be off by
    2.2e-4 × the layer's largest |logit| (SMOL_REL), so a loss by twice that, and an accuracy by one prediction
    in 126 per near-tie (a top-2 gap below twice a logit's error)."""
    model, tokens, logits, cache = smol
    stats = L.lens_statistics(model, tokens, layers=GATE_LAYERS)
    accuracy = stats["accuracy"]
    model_accuracy = (logits[:, :-1].argmax(-1) == tokens[:, 1:]).float().mean().item()
    assert accuracy[-1].item() == pytest.approx(model_accuracy, abs=1e-7)  # a float32 mean vs a float64 count
    measure("smollm2.lens_accuracy.embed", accuracy[0].item(), "< 0.05")
    measure("smollm2.lens_accuracy.middle", accuracy[GATE_LAYERS.index(15)].item())
    measure("smollm2.lens_accuracy.final", accuracy[-1].item(), "> 0.3")
    assert accuracy[0] < 0.05 and accuracy[-1] > 0.3 and accuracy[-1] > accuracy[GATE_LAYERS.index(15)]
    recorded = committed
    assert recorded["gate_corpus"] == L.GATE_CORPUS
    stack = L.residual_stack(cache, model.cfg.n_layers)[:, :, :-1]
    n = tokens[:, 1:].numel()
    worst = 0.0
    for i, l in enumerate(GATE_LAYERS):
        with torch.no_grad():
            lens = L.lens_logits(model, stack[l])
        err = SMOL_REL * lens.abs().max().item()  # one lens logit's float32 error at this layer
        top2 = lens.topk(2, dim=-1).values
        near_ties = int((top2[..., 0] - top2[..., 1] < 2 * err).sum())
        acc_tol = Tolerance(abs=near_ties / n + 1e-6, reason=f"{near_ties} near-ties of {n} argmax predictions at "
                                                              f"stack index {l} (+ a float32 mean's rounding)")
        loss_tol = Tolerance(abs=2 * err, reason=f"−log softmax moves by ≤ 2 × a lens logit's float32 error ({err:.1e})")
        worst = max(worst, assert_reproduces(accuracy[i].item(), recorded["gate_by_layer"]["accuracy"][l], acc_tol,
                                             name=f"gate_by_layer.accuracy[{l}]"))
        worst = max(worst, assert_reproduces(stats["loss"][i].item(), recorded["gate_by_layer"]["loss"][l], loss_tol,
                                             name=f"gate_by_layer.loss[{l}]"))
    measure("smollm2.gate_by_layer_vs_committed", worst, "≤ 1 (fraction of the tolerance)")


def test_results_json_is_current(committed):
    """results.json (cited by the post) holds the experiment's curves: 31 points each, the last layer's KL zero and
    agreement one, the headline numbers read off the curves, and both figures."""
    results = committed
    by_layer = results["by_layer"]
    assert all(len(v) == 31 for v in by_layer.values())
    assert by_layer["kl"][-1] == pytest.approx(0, abs=1e-6) and by_layer["agreement"][-1] == 1
    assert results["final_accuracy"] == by_layer["accuracy"][-1] and results["embed_accuracy"] == by_layer["accuracy"][0]
    assert results["max_loss"] == max(by_layer["loss"])
    loss = by_layer["loss"]
    assert results["uniform_loss"] == pytest.approx(math.log(49152))
    assert results["peak_loss_after_embed"] == max(loss[1:]) == loss[results["peak_loss_after_embed_layer"]]
    first = results["first_layer_below_uniform"]
    assert loss[first] < results["uniform_loss"] <= min(loss[1:first])
    assert results["middle_loss"] == loss[15] and results["penultimate_accuracy"] == by_layer["accuracy"][-2]
    for name in ("lens_by_layer", "lens_table"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
