"""Test fixtures shared by the interpretability days 35-39 (import them into a test module to use them).

    fixtures = importlib.import_module("days.035.fixtures")
    one_thread_module, small_gpt2 = fixtures.one_thread_module, fixtures.small_gpt2
"""

from __future__ import annotations

import pytest
import torch

from checks.models import random_gpt2
from checks.timing import single_thread


@pytest.fixture(scope="module", autouse=True)
def one_thread_module():
    """One torch/BLAS thread for the whole test module, its module-scoped fixtures included (the ``one_thread``
    fixture is per test and starts after them): on a shared 2-core machine a second thread competing with other
    processes makes SmolLM2's forward passes several times slower, and tiny tensors gain nothing from it."""
    with single_thread():
        yield


@pytest.fixture(scope="module")
def small_gpt2():
    """A 2-layer GPT-2-shaped model with random weights and the real tokenizer: (HookedTransformer, GPT2LMHeadModel)."""
    return random_gpt2(n_layers=2, d_model=64, n_heads=4, n_ctx=128)


def ioi_prompts(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two IOI sentences, the same with the subject's name swapped (equal lengths), the right and wrong answers:
    (clean, corrupted, correct, wrong)."""
    clean = model.to_tokens(["When Mary and John went to the store, John gave a drink to",
                             "When Tom and James went to the park, James gave a ball to"])
    corrupted = model.to_tokens(["When Mary and John went to the store, Mary gave a drink to",
                                 "When Tom and James went to the park, Tom gave a ball to"])
    if clean.shape != corrupted.shape:
        raise ValueError("the clean and corrupted prompts must tokenize to the same length")
    correct = torch.tensor([model.to_single_token(" Mary"), model.to_single_token(" Tom")])
    wrong = torch.tensor([model.to_single_token(" John"), model.to_single_token(" James")])
    return clean, corrupted, correct, wrong


@pytest.fixture(scope="module")
def gpt2(small_gpt2):
    """The HookedTransformer of ``small_gpt2``."""
    return small_gpt2[0]


@pytest.fixture(scope="module")
def smol_gate_run():
    """SmolLM2 in TransformerLens, day 35's gate corpus (the start of WikiText-2's validation split, 2×64 tokens)
    and one run_with_cache over it: (model, tokens, logits, cache)."""
    from checks.models import smollm2_hooked

    from .tl_setup import GATE_CORPUS, wikitext_tokens

    model = smollm2_hooked()
    tokens = wikitext_tokens(model.tokenizer, **GATE_CORPUS)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    return model, tokens, logits, cache
