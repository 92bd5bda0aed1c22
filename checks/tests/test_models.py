"""checks.models: the shared GPT-2-shaped and SmolLM2 models load offline and agree with Hugging Face."""

import os

import pytest
import torch

from checks import assert_parity
from checks import models as M

pytestmark = pytest.mark.asset("gpt2-tokenizer")


def test_gpt2_tokenizer_is_openais_bpe():
    """The shared files give GPT-2's tokenizer: 50,257 tokens, 'Hello world' -> [15496, 995]."""
    tok = M.gpt2_tokenizer()
    assert len(tok) == 50257 and tok("Hello world")["input_ids"] == [15496, 995]
    assert tok.decode([15496, 995]) == "Hello world"


def test_gpt2_small_shape_has_hf_parameter_count():
    """At GPT-2 small's shape Hugging Face counts 124,439,808 parameters (embedding tied to unembedding)."""
    model, hf = M.random_gpt2(tokenizer=False)
    assert sum(p.numel() for p in hf.parameters()) == 124_439_808
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.n_heads, model.cfg.d_vocab) == (12, 768, 12, 50257)


def test_random_gpt2_matches_hugging_face(measure):
    """TransformerLens and HF give the same log-probabilities for the same random weights (LayerNorm
    randomised, so folding is exercised); tolerance 1e-4 for float32 over 2 layers."""
    model, hf = M.random_gpt2(n_layers=2, d_model=64, n_heads=4, n_ctx=64)
    tokens = M.gpt2_tokenizer()("The quick brown fox jumps over the lazy dog", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
        ref = hf(tokens).logits.log_softmax(-1)
    measure.parity(assert_parity(ours, ref, atol=1e-4, name="gpt2_tl_vs_hf_logprobs"))


@pytest.mark.asset("smollm2-135m-instruct")
def test_smollm2_answers_and_hooked_matches_hf(measure):
    """SmolLM2-135M-Instruct answers the chat example greedily, and its HookedTransformer gives
    the same log-probabilities as Hugging Face (max |Δ| ≤ 1e-3, same top-1 token everywhere)."""
    hf, tok = M.smollm2()
    question, answer = M.SMOLLM2_CHAT_EXAMPLE
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt")["input_ids"]
    out = hf.generate(ids, max_new_tokens=12, do_sample=False)
    assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == answer
    hooked = M.smollm2_hooked()
    assert M.smollm2_hooked() is hooked  # memoised per process
    with torch.no_grad():
        ref = hf(ids).logits.log_softmax(-1)
        ours = hooked(ids).log_softmax(-1)
    measure.parity(assert_parity(ours, ref, atol=1e-3, name="smollm2_tl_vs_hf_logprobs"))
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


@pytest.mark.asset("smollm2-135m-instruct")
def test_models_by_name_are_the_memoised_loaders():
    """Analyses take a model by name: 'smollm2' and 'gpt2-random' are the local ones (memoised,
    the same objects as the loaders'), and any other name goes to the Hub: offline, that is a
    clear ModelUnavailable naming the local choices."""
    assert M.hooked_model("smollm2") is M.smollm2_hooked()
    assert M.hf_model("smollm2") == M.smollm2()
    assert M.hooked_model("gpt2-random").cfg.d_model == 768
    if os.environ.get("HF_HUB_OFFLINE"):
        with pytest.raises(M.ModelUnavailable, match="offline, use one of smollm2, gpt2-random"):
            M.hf_model("no-such-org/no-such-model")
