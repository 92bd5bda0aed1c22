"""The gate of day 33 (ARENA 1.1: loading pretrained weights; training a transformer).

References: TransformerLens's own GPT-2 converter (``convert_gpt2_weights``), which must produce the
same tensors as our mapping, and Hugging Face's ``GPT2LMHeadModel``, whose log-probabilities and
hidden states our model must reproduce after a ``save_pretrained`` / ``load_pretrained`` round trip
through a temporary directory: the same code that downloads GPT-2 small on a machine with
internet. Tolerance 1e-5 in float32 (both sides do the same arithmetic in a different order; a
transposed or mis-split head moves log-probabilities by O(0.1)).

Training is checked on Tiny Shakespeare: a tiny model must beat the unigram baseline within a few
seconds, and the slow experiment's model must beat the bigram baseline.
"""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
from transformers import GPT2LMHeadModel

from checks import assert_parity
from checks.committed import assert_reproduces, float_ops, statistical
from checks.models import gpt2_config, gpt2_tokenizer, random_gpt2

from . import pretrained as P

HERE = Path(__file__).parent
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"


def small_hf(n_layers=2, d_model=64, n_heads=4, seed=0):
    return random_gpt2(n_layers=n_layers, d_model=d_model, n_heads=n_heads, seed=seed, tokenizer=False)[1]


def test_mapping_equals_transformer_lens_converter():
    """Our Hugging Face -> DemoTransformer mapping gives exactly TransformerLens's tensors for every weight
    (Conv1D orientation, the fused c_attn split into heads, W_O's rows, the tied W_U = W_Eᵀ), and b_U = 0."""
    hf = small_hf(n_layers=2, d_model=48, n_heads=3)
    cfg = P.config_from_hf(hf.config)
    ours = P.hf_to_demo_state_dict(hf.state_dict(), cfg)
    ref = convert_gpt2_weights(hf, gpt2_config(n_layers=2, d_model=48, n_heads=3, d_head=16, d_mlp=192))
    assert set(ref) | {"unembed.b_U"} == set(ours)
    for key, tensor in ref.items():
        assert torch.equal(ours[key], tensor), key
    assert torch.equal(ours["unembed.b_U"], torch.zeros(cfg.d_vocab))
    assert ours["blocks.0.attn.W_Q"].shape == (3, 48, 16) and ours["blocks.0.attn.W_O"].shape == (3, 16, 48)


@pytest.mark.asset("gpt2-tokenizer")
def test_save_pretrained_round_trip_matches_hugging_face(tmp_path, measure):
    """The real loading path on a random GPT-2 saved with save_pretrained into a temporary directory:
    load_pretrained(dir) reproduces GPT2LMHeadModel's log-probabilities and every hidden state (float32, 1e-5)."""
    hf = small_hf()
    hf.save_pretrained(tmp_path)
    ours = P.load_pretrained(tmp_path)
    assert ours.cfg == P.config_from_hf(hf.config) and ours.cfg.n_layers == 2 and ours.cfg.d_vocab == 50257
    toks = gpt2_tokenizer()(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits, residuals = ours.run_with_residuals(toks)
        out = hf(toks, output_hidden_states=True)
    report = assert_parity(logits.log_softmax(-1), out.logits.log_softmax(-1), atol=1e-5, name="round_trip_log_probs")
    for x, h in zip(residuals[:-1], out.hidden_states[:-1]):
        assert_parity(x, h, atol=1e-5)
    assert_parity(ours.ln_final(residuals[-1]), out.hidden_states[-1], atol=1e-5)
    assert_parity(logits, out.logits, atol=1e-5)  # same unembedding, so even raw logits agree
    measure("round_trip.log_probs.max_abs_err", report.max_abs_err, "≤ 1e-5")


def test_mapping_refuses_checkpoints_that_do_not_fit():
    """A checkpoint with a tensor missing, an unknown extra tensor, or fewer layers than the config is a
    KeyError naming the tensor, never a half-loaded model."""
    hf = small_hf()
    cfg = P.config_from_hf(hf.config)
    state = dict(hf.state_dict())
    missing = {k: v for k, v in state.items() if k != "transformer.h.1.mlp.c_fc.bias"}
    with pytest.raises(KeyError, match="h.1.mlp.c_fc.bias"):
        P.hf_to_demo_state_dict(missing, cfg)
    with pytest.raises(KeyError, match="not mapped"):
        P.hf_to_demo_state_dict({**state, "transformer.h.2.ln_1.weight": torch.ones(64)}, cfg)
    with pytest.raises(KeyError, match="3 layers"):
        P.hf_to_demo_state_dict(state, P.Config(**{**cfg.__dict__, "n_layers": 3}))


def test_config_reads_n_inner_or_defaults_to_four_d_model():
    """config_from_hf follows GPT2Config: n_inner is the MLP width, and None (the default) means 4 · n_embd."""
    from transformers import GPT2Config

    assert P.config_from_hf(GPT2Config(n_embd=48, n_head=3, n_layer=2)).d_mlp == 192
    assert P.config_from_hf(GPT2Config(n_embd=48, n_head=3, n_layer=2, n_inner=100)).d_mlp == 100


def test_unembedding_comes_from_lm_head_or_the_tied_embedding():
    """GPT-2's unembedding is tied to the embedding: a checkpoint that saves it once (no lm_head.weight, as
    safetensors does) gives W_U = wteᵀ; a checkpoint that carries lm_head.weight gives W_U = lm_head.weightᵀ (here
    made different from wte, so the two routes are told apart)."""
    hf = small_hf(n_layers=1, d_model=32, n_heads=4)
    cfg = P.config_from_hf(hf.config)
    state = dict(hf.state_dict())
    wte = state["transformer.wte.weight"]
    once = {k: v for k, v in state.items() if k != "lm_head.weight"}
    assert torch.equal(P.hf_to_demo_state_dict(once, cfg)["unembed.W_U"], wte.T)
    untied = {**state, "lm_head.weight": 2 * wte + 1}
    assert torch.equal(P.hf_to_demo_state_dict(untied, cfg)["unembed.W_U"], (2 * wte + 1).T)


def test_unmapped_tensors_error_names_the_count_and_three_examples():
    """The refusal of unknown tensors says how many there are and names the first three (the message's 'e.g.')."""
    hf = small_hf(n_layers=1, d_model=32, n_heads=4)
    cfg = P.config_from_hf(hf.config)
    extra = [f"transformer.extra_{i}" for i in range(4)]
    with pytest.raises(KeyError) as err:
        P.hf_to_demo_state_dict({**hf.state_dict(), **{k: torch.ones(1) for k in extra}}, cfg)
    names = [k.removeprefix("transformer.") for k in extra]
    assert err.value.args[0] == f"4 checkpoint tensors were not mapped, e.g. {names[:3]}"


@pytest.mark.asset("gpt2-tokenizer")
def test_heads_are_split_in_order(measure):
    """Head h of our model is head h of Hugging Face's: zeroing W_O[h] in ours equals zeroing rows
    h·d_head:(h+1)·d_head of c_proj.weight in Hugging Face's (float32, 1e-5), for every head."""
    hf = small_hf(n_layers=1, d_model=32, n_heads=4)
    toks = gpt2_tokenizer()(TEXT, return_tensors="pt").input_ids[:, :10]
    for h in range(4):
        ours = P.from_hf_model(hf)
        ablated = GPT2LMHeadModel(hf.config).eval()
        ablated.load_state_dict(hf.state_dict())
        with torch.no_grad():
            ours.blocks[0].attn.W_O[h] = 0
            ablated.transformer.h[0].attn.c_proj.weight[h * 8:(h + 1) * 8] = 0
            assert_parity(ours(toks).log_softmax(-1), ablated(toks).logits.log_softmax(-1), atol=1e-5, name=f"head_{h}")


def test_real_path_asks_the_hub_for_gpt2():
    """load_pretrained() defaults to the Hub's "gpt2" (GPT-2 small): the function the round trip exercised
    (not called with its default here: it would download 500 MB, or fail offline)."""
    import inspect

    assert inspect.signature(P.load_pretrained).parameters["name_or_path"].default == "gpt2"


def test_character_tokenizer_and_baselines(asset):
    """Tiny Shakespeare has 65 characters; encode/decode round-trips; the unigram baseline equals the
    cross-entropy of log-frequency logits (F.cross_entropy, 1e-9), and the bigram baseline is lower."""
    tok, train_ids, val_ids = P.shakespeare(asset("tinyshakespeare"))
    assert len(tok.chars) == 65 and len(train_ids) + len(val_ids) == 1_115_394
    assert tok.decode(tok.encode("First Citizen:\nBefore we proceed")) == "First Citizen:\nBefore we proceed"
    counts = torch.bincount(train_ids, minlength=65).double() + 1
    expected = F.cross_entropy(counts.log().expand(len(val_ids), 65), val_ids).item()
    assert P.unigram_loss(train_ids, val_ids, 65) == pytest.approx(expected, abs=1e-9)
    assert P.bigram_loss(train_ids, val_ids, 65) < P.unigram_loss(train_ids, val_ids, 65) - 0.5


def test_tiny_model_learns_beyond_character_frequencies(asset, measure):
    """Training works: a 1-layer, 32-wide DemoTransformer trained for 80 steps on Tiny Shakespeare reaches a
    validation loss below the unigram baseline (it uses context, not just character frequencies)."""
    tok, train_ids, val_ids = P.shakespeare(asset("tinyshakespeare"))
    args = P.TrainArgs(d_model=32, n_layers=1, n_heads=2, n_ctx=32, batch_size=16, steps=80, lr=1e-2, warmup=10,
                       eval_every=80, eval_batches=4)
    _, history = P.train(args, train_ids, val_ids, 65, log=lambda *_: None)
    unigram = P.unigram_loss(train_ids, val_ids, 65)
    final = history["val"][-1]["loss"]
    measure("tiny_training.val_loss", final, f"< unigram {unigram:.3f}")
    assert history["val"][0]["loss"] == pytest.approx(math.log(65), abs=0.15)  # an untrained model is near uniform
    assert final < unigram


def test_lr_schedule_warms_up_then_decays():
    """The learning-rate factor rises linearly over the warm-up, peaks near 1 and decays to 0.1 at the end."""
    args = P.TrainArgs(steps=1000, warmup=50)
    f = [P.lr_factor(s, args) for s in range(1001)]
    assert f[0] == pytest.approx(1 / 50, rel=1e-2) and max(f) == pytest.approx(1.0, abs=0.01)
    assert f[-1] == pytest.approx(0.1, abs=1e-9) and all(a >= b for a, b in zip(f[60:], f[61:]))


@pytest.mark.slow
def test_shakespeare_training_reproduces_the_headline(asset, committed, measure):
    """The slow experiment: the 4-layer character GPT reaches validation loss below 2.0 nats per character
    (beating the bigram baseline), within 0.05 of the committed results.json (a float32 training run: another
    CPU's rounding takes another trajectory, so it reproduces only to the stated spread)."""
    tok, train_ids, val_ids = P.shakespeare(asset("tinyshakespeare"))
    _, history = P.train(P.TrainArgs(), train_ids, val_ids, 65, log=lambda *_: None)
    final = history["val"][-1]["loss"]
    measure("slow.shakespeare.val_loss", final, "< 2.0")
    assert final < 2.0 and final < P.bigram_loss(train_ids, val_ids, 65)
    assert_reproduces(final, committed["final_val_loss"],
                      statistical(0.05, why="a float32 training run: rounding changes its trajectory"), name="final_val_loss")


# The baselines are means over the validation characters of −log p: the bigram's p is float32 (exact integer counts,
# one division, a log that vectorised and scalar libm round differently by a few ulp) summed by torch's float32
# cascade (4 levels of ≤ 16 terms below 2^19 terms): ≲ 90 roundings per term, all terms positive, so
# float_ops(90, float32) ≈ 4e-5 relative. The unigram's is float64: Higham's n·u for n validation characters.
BIGRAM_TOL = float_ops(90, "float32", why="a float32 cascade mean of positive −log p (≲ 90 roundings per term)")


def test_results_json_is_current(asset, committed, measure):
    """results.json (cited by the post) was written by this code: today's settings and baselines (the bigram's a
    float32 mean, to 4e-5 relative, BIGRAM_TOL; the unigram's float64), a validation loss that fell below the
    bigram baseline, samples of the stated length, and the figure."""
    results = committed
    from dataclasses import asdict

    assert results["args"] == asdict(P.TrainArgs())
    tok, train_ids, val_ids = P.shakespeare(asset("tinyshakespeare"))
    assert_reproduces(P.bigram_loss(train_ids, val_ids, 65), results["baselines"]["bigram"], BIGRAM_TOL, name="bigram")
    assert_reproduces(P.unigram_loss(train_ids, val_ids, 65), results["baselines"]["unigram"],
                      float_ops(len(val_ids), why="a float64 mean of −log p over the validation characters"), name="unigram")
    vals = [h["loss"] for h in results["history"]["val"]]
    assert vals[-1] == results["final_val_loss"] < results["baselines"]["bigram"] < vals[0]
    assert results["parameters"] == sum(p.numel() for p in P.make_model(P.TrainArgs(), 65).parameters())
    assert all(len(s) == len("ROMEO:\n") + 300 for s in results["samples"].values())
    assert (HERE / "figures/loss_curve.png").stat().st_size > 10_000
    measure("shakespeare.final_val_loss", results["final_val_loss"])
