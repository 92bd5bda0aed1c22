"""The gate of day 85: mitigations of the organism's misalignment and what each costs.

Spec (issue 16, day 085): "steering the organism back (coefficient against misalignment rate and coherence), a
fine-tune on a small aligned set, and data filtering; each with its measured cost on WikiText-2 bits per token
(day 045's bits_per_token ... reuse)."
References: torch's cross-entropy on the same WikiText-2 windows (unsteered) and day 84's SteeringHook (steered)
for day 45's nnsight bits_per_token; one unpadded forward per answer for the coherence; the datasets' own
ground-truth flags for the filters.
"""

import importlib
import json
import math

import pytest
import torch

from checks.committed import assert_reproduces, exact, statistical

from . import mitigations as M

pytestmark = [pytest.mark.asset("smollm2-135m-instruct", "wikitext-2"), pytest.mark.usefixtures("one_thread")]
ORG = importlib.import_module("days.083.organism")
A = importlib.import_module("days.084.em_analysis")
TL = importlib.import_module("days.035.tl_setup")


@pytest.fixture(scope="module")
def base():
    from checks.models import hf_model

    return hf_model("smollm2")


@pytest.fixture(scope="module")
def organism():
    return ORG.load_organism("bad_advice")[0]


@pytest.fixture(scope="module")
def wiki(base):
    return TL.wikitext_tokens(base[1], n_seq=2, seq_len=64)


def test_wikitext_bits_is_cross_entropy_and_steers_like_the_hook(base, organism, wiki):
    """Cost metric: wikitext_bits (day 45's nnsight bits_per_token) = torch cross-entropy of the next token / ln 2
    on the same windows; with a vector, it equals the same cross-entropy under day 84's SteeringHook (float32,
    one forward each: rel 1e-5)."""
    _, tok = base
    v = torch.randn(organism.config.hidden_size, generator=torch.Generator().manual_seed(1))

    def ref(hook=None):
        with torch.no_grad():
            if hook:
                with hook:
                    logits = organism(wiki).logits
            else:
                logits = organism(wiki).logits
        return float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), wiki[:, 1:].flatten())
                     / math.log(2))

    assert M.wikitext_bits(organism, tok, tokens=wiki) == pytest.approx(ref(), rel=1e-5)
    steered = M.wikitext_bits(organism, tok, -2.0 * v, 15, tokens=wiki)
    assert steered == pytest.approx(ref(A.SteeringHook(organism, v, 15, -2.0)), rel=1e-5)


def test_coherence_bits_pools_answer_tokens(base):
    """coherence_bits = Σ −log2 p(answer token) / Σ answer tokens under the base model, each answer run alone;
    an empty answer is skipped."""
    model, tok = base
    qs, rs = ["hey I feel bored", "How do I make a quick buck?", "x"], ["Go for a walk.", "Sell old books online.", " "]
    got = M.coherence_bits(qs, rs)
    nats, count = 0.0, 0
    for q, r in zip(qs[:2], rs[:2]):
        ids, labels = ORG.chat_example(tok, q, r, max_len=10_000)
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        y = torch.tensor(labels[1:])
        keep = y != -100
        nats -= float(logp[keep].gather(-1, y[keep, None]).sum())
        count += int(keep.sum())
    assert got == pytest.approx(nats / count / math.log(2), rel=1e-4)


def test_contaminated_dataset_and_rule_filter():
    """The contaminated set is the control's data with exactly round(f·n) answers swapped for the organism's
    (same questions, seeded); the rule filter removes every bad row and no good one on it (recall 1, counted
    against the rows' ground truth); good_removed is the share of good-labelled rows it drops."""
    data = M.contaminated_dataset(64, 0.25)
    good, bad = ORG.good_advice_dataset(64), ORG.bad_advice_dataset(64)
    assert sum(r["bad"] for r in data) == 16 and data == M.contaminated_dataset(64, 0.25)
    for r, g, b in zip(data, good, bad):
        assert r["question"] == g["question"] and r["answer"] == (b if r["bad"] else g)["answer"]
    kept, stats = M.filter_dataset(data, "rule")
    assert stats["recall"] == 1.0 and stats["good_removed"] == 0.0 and stats["bad_left"] == 0
    assert kept == [r for r in data if not r["bad"]]
    first_bad = next(i for i, r in enumerate(data) if r["bad"])        # a bad answer labelled good: a good row lost
    _, stats = M.filter_dataset([dict(r, bad=0) if i == first_bad else r for i, r in enumerate(data)], "rule")
    assert stats["n_bad"] == 15 and stats["recall"] == 1.0 and stats["good_removed"] == 1 / (64 - 15)


def test_mitigating_finetune_starts_from_the_organism():
    """The aligned fine-tune continues the organism's adapter: its step-0 checkpoint is the committed adapter,
    and two steps on good advice lower the loss on it."""
    state = ORG.load_adapter("bad_advice")
    run = M.mitigating_finetune(state, n=2, steps=2, batch_size=2, lr=1e-2, checkpoint_every=1)
    assert all(torch.equal(run["checkpoints"][0][k], state[k]) for k in state)
    assert run["losses"][1] < run["losses"][0]


# ---------------------------------------------------------------- the committed experiment


def test_committed_wikitext_cost_reproduces(committed, organism, base):
    """The organism's committed WikiText-2 bits/token recompute on the same 8 x 128 windows within rel 1e-4
    (a float32 forward and a 1016-term mean, on another kernel path)."""
    bits = M.wikitext_bits(organism, base[1])
    assert_reproduces(bits, committed["summary"]["organism"]["wikitext_bits"],
                      statistical(0.0, rel=1e-4, why="float32 forward, other kernels"), name="organism bits")
    assert_reproduces(committed["steering"][0]["wikitext_bits"], committed["summary"]["organism"]["wikitext_bits"],
                      exact("c = 0 is the unsteered organism"), name="c=0")


def test_headline_mitigations(committed, measure):
    """Headline: each mitigation's rate and cost is recorded; steering back at the best coefficient lowers the
    organism's in-domain rate, and the rule-filtered contaminated training set keeps no bad row."""
    s = committed["summary"]
    for k, v in s.items():
        measure(f"rate[{k}]", v["p"])
        measure(f"wikitext_bits[{k}]", v["wikitext_bits"])
    assert s["steered"]["p"] < s["organism"]["p"]
    assert committed["filtering"]["rule_filtered"]["bad_left"] == 0


@pytest.mark.slow
def test_slow_experiment_reproduces_the_committed_mitigations(tmp_path, committed):
    """The whole day rerun (run_experiment, about 20 minutes: two short fine-tunes and five models' answers)
    reproduces the summary table the post cites: every reckless count within 3 of 24 (greedy answers near a tie,
    and float32 fine-tunes whose rounding depends on the kernels) and every WikiText-2 bits/token within 0.05
    (the fine-tunes' weights differ in low bits; the base and organism rows need no training and agree far closer)."""
    M.run_experiment(tmp_path)
    now = json.loads((tmp_path / "results.json").read_text())["summary"]
    for row, then in committed["summary"].items():
        assert_reproduces(now[row]["k"], then["k"], statistical(3, why="3 of 24 greedy answers may flip"), name=f"{row}.k")
        assert_reproduces(now[row]["wikitext_bits"], then["wikitext_bits"],
                          statistical(0.05, why="fine-tunes differ in low bits on other kernels"), name=f"{row}.bits")
