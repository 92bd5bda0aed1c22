"""The gate of day 45 (ARENA 1.3.2 Function Vectors, section 4: steering with activation additions).

References: Hugging Face's ``output_hidden_states``, its loss and its ``generate`` with a forward pre-hook on the
same model (what nnsight's reads, bits per token and steered generation must equal), TransformerLens's
``hook_resid_pre`` hooks on its own rebuild of SmolLM2 (the same additions applied by another library: logits and
greedy generations), and sentences written out by hand for the word-list classifier.

Tolerances. nnsight runs the Hugging Face model itself: 1e-5 (measured 0). TransformerLens computes the same
function by another float32 path: each logit within ε = SMOLLM2_LOGIT_REL × max|logit| (checks/committed.py).
Bits per token on another CPU: a mean of log-probabilities, each within 2ε, so within 2ε / ln 2.
"""

import importlib
import math
from pathlib import Path

import pytest
import torch

from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces, exact
from checks.models import hf_model, hooked_model

from . import steering as S

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("smollm2-135m-instruct", "wikitext-2")

fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module
tl_setup = importlib.import_module("days.035.tl_setup")

LAYER = 8


@pytest.fixture(scope="module")
def lm():
    return S.as_lm("smollm2")


@pytest.fixture(scope="module")
def hf():
    return hf_model("smollm2")[0]


@pytest.fixture(scope="module")
def v(lm):
    """The mean-difference vector from two positive and two negative sentences."""
    return S.mean_diff_vector(lm, S.POSITIVE[:2], S.NEGATIVE[:2], LAYER)


class PreAdd:
    """A Hugging Face forward pre-hook adding a vector to a block's input: at every position of every forward
    pass ("all"), or to the first positions of the first pass only ("prefix")."""

    def __init__(self, vector, mode="all"):
        self.vector, self.mode, self.calls = vector, mode, 0

    def __call__(self, module, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"]).clone()
        self.calls += 1
        if self.mode == "all":
            hidden = hidden + self.vector
        elif self.calls == 1:
            hidden[:, :self.vector.shape[0]] += self.vector
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}


def hooked(hf, vector, mode="all"):
    return hf.model.layers[LAYER].register_forward_pre_hook(PreAdd(vector, mode), with_kwargs=True)


def test_sentiment_score_counts_listed_words():
    """sentiment_score: (#positive − #negative listed words) per word ×100, case and punctuation ignored; a
    sentence without listed words scores 0; the two lists are disjoint."""
    assert S.sentiment_score("I love this wonderful day") == pytest.approx(100 * 2 / 5)
    assert S.sentiment_score("Awful! I HATE it, a terrible, terrible mess.") == pytest.approx(-100 * 4 / 8)
    assert S.sentiment_score("The train left at noon.") == 0.0 and S.sentiment_score("") == 0.0
    assert S.sentiment_score("good bad") == 0.0
    assert not S.POSITIVE_WORDS & S.NEGATIVE_WORDS


def test_actadd_vector_is_the_weighted_sum_of_residual_streams(lm, hf):
    """actadd_vector: Σ c_i · hidden_states[l] of the steering prompts (BOS, the prompt, then space tokens up to a
    common length), against Hugging Face's hidden states of the same padded tokens (1e-5); one layer only."""
    adds = [(LAYER, 3.0, "Love"), (LAYER, -3.0, "Hate it")]
    layer, vec = S.actadd_vector(lm, adds)
    tok = lm.tokenizer
    space = tok(" ", add_special_tokens=False)["input_ids"][0]
    ids = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] for _, _, t in adds]
    width = max(map(len, ids))
    assert layer == LAYER and vec.shape == (width, 576) and len(ids[0]) < width
    with torch.no_grad():
        hs = hf(torch.tensor([i + [space] * (width - len(i)) for i in ids]), output_hidden_states=True).hidden_states[LAYER]
    assert (vec - (3 * hs[0] - 3 * hs[1])).abs().max() <= 1e-5
    with pytest.raises(ValueError):
        S.actadd_vector(lm, [(3, 1.0, "Love"), (4, -1.0, "Hate")])


def test_mean_diff_vector_and_random_control(lm, hf, v):
    """mean_diff_vector: the mean of Hugging Face's hidden_states[l] at the last position over the positive
    prompts minus that over the negative ones (1e-5); swapping the sets negates it. random_direction: the same
    norm, seeded, and (576 dimensions) nearly orthogonal to v."""
    def last(text):
        ids = torch.tensor([[lm.tokenizer.bos_token_id] + lm.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            return hf(ids, output_hidden_states=True).hidden_states[LAYER][0, -1]
    ref = torch.stack([last(t) for t in S.POSITIVE[:2]]).mean(0) - torch.stack([last(t) for t in S.NEGATIVE[:2]]).mean(0)
    assert (v - ref).abs().max() <= 1e-5
    assert torch.equal(S.mean_diff_vector(lm, S.NEGATIVE[:2], S.POSITIVE[:2], LAYER), -v)
    r = S.random_direction(v, seed=3)
    assert torch.isclose(r.norm(), v.norm(), rtol=1e-6) and torch.equal(r, S.random_direction(v, seed=3))
    assert abs(torch.cosine_similarity(r, v, 0)) < 0.25


def test_nnsight_and_transformer_lens_steer_the_logits_alike(lm, v, measure):
    """The same additions through nnsight (writing layers[l].input) and through a TransformerLens hook on
    blocks.l.hook_resid_pre: the steered log-probabilities of a prompt agree within 2ε (log-probabilities, since
    TransformerLens centres the unembedding and so shifts every logit of a position by one constant), for the
    mean-difference vector at every position and for ActAdd's Love − Hate tensor at the first positions; and each
    addition moves them by far more than 2ε (the comparison is not of two unsteered runs)."""
    ht = hooked_model("smollm2")
    tokens = torch.tensor([S._ids(lm, "When I walked into the room,", True)])
    _, act = S.actadd_vector(lm, [(LAYER, 4.0, "Love"), (LAYER, -4.0, "Hate")])
    worst = 0.0
    for mode, vector in (("all", 4 * v), ("prefix", act)):
        with torch.no_grad(), lm.trace(tokens):
            if mode == "all":
                S.P.layer(lm, LAYER).input[:] += vector
            else:
                S.P.layer(lm, LAYER).input[:, :vector.shape[0]] += vector
            ours = lm.lm_head.output.save()
        with torch.no_grad():
            theirs = ht.run_with_hooks(tokens, fwd_hooks=S.tl_hooks(LAYER, vector, mode))
            plain = ht(tokens)
        eps = SMOLLM2_LOGIT_REL * ours.abs().max().item()
        err = (ours.log_softmax(-1) - theirs.log_softmax(-1)).abs().max().item()
        assert err <= 2 * eps, mode
        assert (theirs.log_softmax(-1) - plain.log_softmax(-1)).abs().max() > 100 * eps
        worst = max(worst, err)
    measure("steered_logits_nnsight_vs_transformer_lens.max_abs_err", worst)


def test_steered_generation_matches_hugging_face_and_transformer_lens(lm, hf, v):
    """generate / calculate_and_apply_steering_vector: greedy steered completions equal Hugging Face's generate with
    a forward pre-hook doing the same addition (every pass for "all", the prompt's pass for ActAdd), and
    TransformerLens's generate under the same hooks; steering changes the text; unsteered equals plain generate."""
    prompt, n = "Yesterday at work, my boss", 6
    tokens = torch.tensor([S._ids(lm, prompt, True)])
    adds = [(LAYER, 6.0, "Love"), (LAYER, -6.0, "Hate")]
    _, act = S.actadd_vector(lm, adds)
    plain, actadd = S.calculate_and_apply_steering_vector(lm, prompt, adds, n)
    steered = S.generate(lm, [prompt], n, LAYER, 6 * v)[0]
    decode = lambda out: lm.tokenizer.decode(out[0, tokens.shape[1]:])  # noqa: E731
    with torch.no_grad():
        assert plain == decode(hf.generate(tokens, max_new_tokens=n, min_new_tokens=n, do_sample=False))
        for text, vector, mode in ((steered, 6 * v, "all"), (actadd, act, "prefix")):
            handle = hooked(hf, vector, mode)
            try:
                assert text == decode(hf.generate(tokens, max_new_tokens=n, min_new_tokens=n, do_sample=False)), mode
            finally:
                handle.remove()
            ht = hooked_model("smollm2")
            with ht.hooks(fwd_hooks=S.tl_hooks(LAYER, vector, mode)):
                out = ht.generate(tokens, max_new_tokens=n, stop_at_eos=False, do_sample=False, verbose=False,
                                  use_past_kv_cache=True)
            assert text == decode(out), mode
    assert steered != plain and actadd != plain
    # no vector means no steering in either mode; an ActAdd tensor as long as the prompt itself is allowed (only a
    # longer one is an error), and a zero one changes nothing
    assert S.generate(lm, [prompt], n, LAYER, None, mode="prefix")[0] == plain
    zeros = torch.zeros(tokens.shape[1], v.shape[-1])
    assert S.generate(lm, [prompt], n, LAYER, zeros, mode="prefix")[0] == plain
    with pytest.raises(ValueError, match="longer than the prompt"):
        S.generate(lm, [prompt], n, LAYER, torch.zeros(tokens.shape[1] + 1, v.shape[-1]), mode="prefix")


def test_bits_per_token_is_hugging_face_loss(lm, hf, v):
    """bits_per_token: Hugging Face's causal-LM loss (mean next-token cross-entropy, nats) / ln 2, unsteered and
    with the vector added through a pre-hook (1e-5 relative); adding the vector costs bits."""
    tokens = tl_setup.wikitext_tokens(lm.tokenizer, 2, 32)
    with torch.no_grad():
        loss = hf(tokens, labels=tokens).loss.item()
        handle = hooked(hf, 6 * v)
        try:
            steered = hf(tokens, labels=tokens).loss.item()
        finally:
            handle.remove()
    assert S.bits_per_token(lm, tokens) == pytest.approx(loss / math.log(2), rel=1e-5)
    assert S.bits_per_token(lm, tokens, LAYER, 6 * v) == pytest.approx(steered / math.log(2), rel=1e-5)
    assert steered > loss


def test_results_json_is_current(lm, committed):
    """results.json (cited by the post): the vector's norm within an activation's float32 error; every committed
    sentiment score is the word-list score of its committed text (exactly: a count); WikiText-2 bits per token
    unsteered and at the largest coefficient (steered and random) within 2ε / ln 2; the figure exists."""
    r = committed
    cfg = r["experiment"]
    assert cfg["coefficients"] == S.EXPERIMENT["coefficients"] and cfg["layer"] == S.EXPERIMENT["layer"]
    v = S.mean_diff_vector(lm, S.POSITIVE, S.NEGATIVE, cfg["layer"])
    assert_reproduces(v.norm().item(), r["vector_norm"], Tolerance(rel=SMOLLM2_LOGIT_REL, reason="an activation's "
                      "float32 error on another CPU, relative to its scale"), name="vector_norm")
    for kind in ("steer", "random"):
        for e in r["curves"][kind]:
            assert_reproduces([S.sentiment_score(t) for t in e["texts"]], e["scores"], exact("word counts"), name=kind)
    wiki = tl_setup.wikitext_tokens(lm.tokenizer, **cfg["wikitext"])
    rand = S.random_direction(v, cfg["seed"])
    top = cfg["coefficients"][-1]
    for kind, vector, entry in ((None, None, r["curves"]["steer"][0]), ("steer", top * v, r["curves"]["steer"][-1]),
                                ("random", top * rand, r["curves"]["random"][-1])):
        with torch.no_grad(), lm.trace(wiki):
            logits = lm.lm_head.output.save()
        eps = SMOLLM2_LOGIT_REL * logits.abs().max().item()
        now = S.bits_per_token(lm, wiki, cfg["layer"] if vector is not None else None, vector)
        assert_reproduces(now, entry["bits_per_token"], Tolerance(abs=2 * eps / math.log(2), reason="a mean of "
                          "log-probabilities, each within 2ε"), name=f"bits_per_token {kind}")
    assert (HERE / "figures/dose_response.png").stat().st_size > 10_000


@pytest.mark.slow
def test_experiment_reproduces(tmp_path, committed):
    """(slow) The whole experiment rerun: the same greedy texts (and so the same scores) except where a token's
    argmax is within rounding (at most one prompt in four per coefficient allowed to differ), bits per token within
    2ε / ln 2 (ε for |logit| ≤ 40); and the measured headline, a null for the effect and a clear cost: at c = 2
    and 4 the steered and random sentiment intervals overlap, and bits per token rise with c for both."""
    r = S.run_experiment(tmp_path)
    eps = SMOLLM2_LOGIT_REL * 40
    for kind in ("steer", "random"):
        for now, then in zip(r["curves"][kind], committed["curves"][kind]):
            same = sum(a == b for a, b in zip(now["texts"], then["texts"]))
            assert same >= 0.75 * len(then["texts"]), (kind, now["coef"])
            assert_reproduces(now["bits_per_token"], then["bits_per_token"],
                              Tolerance(abs=2 * eps / math.log(2), reason="2ε / ln 2"), name="bits_per_token")
    # the measured headline (a null for the effect, a clear cost): up to c = 4 the steered and random sentiment
    # intervals overlap, and bits per token rise with the coefficient for both directions
    for steer, rand in zip(r["curves"]["steer"][1:3], r["curves"]["random"][1:3]):
        assert steer["sentiment_ci"][0] <= rand["sentiment_ci"][1] and rand["sentiment_ci"][0] <= steer["sentiment_ci"][1]
    for kind in ("steer", "random"):
        bits = [e["bits_per_token"] for e in r["curves"][kind]]
        assert bits == sorted(bits) and bits[-1] > bits[0] + 1
