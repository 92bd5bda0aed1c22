"""The gate of day 88, part 1 (ARENA 4.3 §1: sentences, categories, importance; Turpin et al.'s biased prompts) on
SmolLM2-135M-Instruct.

References: Python's own ``str.split`` (the chunks must rebuild the text), hand labels written here for the
categories (a spec table, one sentence per Thought-Anchors category), TransformerLens's HookedTransformer of SmolLM2
(``checks.models.smollm2_hooked``: an independent implementation of the same weights) for the forced-answer
probabilities, scipy's Fisher test, and the committed experiment (``committed``). Tolerances: probabilities of a
number (a product of ≤ 3 softmax entries of SmolLM2's logits) agree between HF and TransformerLens to 1e-3
absolute: the logits agree to SMOLLM2_LOGIT_REL ≈ 2e-4 relative at |logit| ≤ 40, i.e. ≤ 1e-2 in a log-probability
in the worst case, measured far below (≤ 1e-4).
"""

import re

import numpy as np
import pytest
import torch

from checks.committed import Tolerance, assert_reproduces
from checks.models import hf_model, smollm2_hooked

from . import cot as C

pytestmark = pytest.mark.asset("smollm2-135m-instruct")

TRACE_Q = "Tom has 7 apples. Tom gets 5 more apples and then gives away 3. How many apples does Tom have now?"
TRACE = ["Tom starts with 7 apples.", "He gets 5 more, so 7 + 5 = 12.", "Then he gives away 3, so 12 - 3 = 9.",
         "The answer is 9."]


# ---------------------------------------------------------------- sentences


SPLIT_CASES = [
    ("First. Second? Third!", ["First.", "Second?", "Third!"]),
    ("The price is 3.5 dollars. Done.", ["The price is 3.5 dollars.", "Done."]),
    ("Step one\nStep two\n\nStep three.", ["Step one", "Step two", "Step three."]),
    ("<think>Hmm, wait. Let me check.</think>", ["Hmm, wait.", "Let me check."]),
    ("1. Add 7 and 5.\n2. Subtract 3.", ["1. Add 7 and 5.", "2. Subtract 3."]),
    ("  ", []),
]


@pytest.mark.parametrize("text, chunks", SPLIT_CASES)
def test_split_solution_into_chunks_table(text, chunks):
    """ARENA's split_solution_into_chunks: a chunk ends at . ! ? followed by whitespace or at a line break; a decimal
    point or a step number ('1.') does not end one; <think> tags are removed."""
    assert C.split_solution_into_chunks(text) == chunks


def test_chunks_rebuild_the_text():
    """The chunks cover the text: joined by spaces they equal the text with its whitespace normalised (str.split),
    on every split case and on 50 random strings of words, numbers and punctuation."""
    rng = np.random.default_rng(0)
    words = ["7", "3.5", "so", "Wait,", "answer.", "is", "12!", "\n", "\n\n", "ok?", "1.", "x"]
    texts = [t for t, _ in SPLIT_CASES[:3]] + [" ".join(rng.choice(words, 12)) for _ in range(50)]
    for text in texts:
        assert " ".join(C.split_solution_into_chunks(text)) == " ".join(text.split())


LABELLED = [  # hand labels: one sentence per category of Thought Anchors' taxonomy
    ("Tom has 7 apples and gets 5 more.", "problem_setup"),
    ("Let's first find how many he has after buying.", "plan_generation"),
    ("7 + 5 = 12.", "active_computation"),
    ("We know that a dozen is twelve.", "fact_retrieval"),
    ("So he has twelve apples in total.", "result_consolidation"),
    ("Let me check this again.", "self_checking"),
    ("Wait, maybe I misread the question.", "uncertainty_management"),
    ("The answer is 9.", "final_answer_emission"),
    ("Therefore the final answer is 12 - 3 = 9.", "final_answer_emission"),   # first rule wins
]


def test_categorize_sentences_heuristic_hand_labels():
    """ARENA's categorize_sentences_heuristic: every one of the eight categories is reachable and the hand labels
    are reproduced; rules apply in CATEGORIES order (an answer sentence that computes is an answer)."""
    sentences, labels = zip(*LABELLED)
    assert C.categorize_sentences_heuristic(list(sentences)) == list(labels)
    assert set(labels) == set(C.CATEGORIES)


# ---------------------------------------------------------------- importance


def test_importance_is_the_accuracy_each_sentence_adds():
    """Thought Anchors' importance of sentence i is acc[i+1] − acc[i] (k sentences kept ↦ acc[k]): both ARENA
    methods give n values for n + 1 accuracies, telescoping to acc[n] − acc[0]; a sentence that does not change the
    accuracy has importance 0."""
    acc = np.array([0.1, 0.1, 0.7, 0.65, 1.0])
    for fn in (C.calculate_forced_answer_importance, C.calculate_resampling_importance):
        imp = fn(acc)
        assert imp.shape == (4,)
        np.testing.assert_allclose(imp, [0.0, 0.6, -0.05, 0.35], atol=1e-12)
        assert imp.sum() == pytest.approx(acc[-1] - acc[0])


# ---------------------------------------------------------------- data


def test_word_problems_answers_follow_from_the_text():
    """make_word_problems is seeded and each answer is what the text says (numbers re-read from the text): x + y − z,
    never negative."""
    a, b = C.make_word_problems(20, seed=3), C.make_word_problems(20, seed=3)
    assert a == b and a != C.make_word_problems(20, seed=4)
    for p in a:
        x, y, z = map(int, re.findall(r"\d+", p["question"]))
        assert p["answer"] == x + y - z >= 0


@pytest.mark.parametrize("text, number", [("so 12 - 3 = 9. The answer is 9.", 9), ("The answer is: 14", 14),
                                          ("He has 12, then 9", 9), ("no number", None),
                                          ("The answer is 5. Actually the answer is 6.", 6)])
def test_parse_answer(text, number):
    """parse_answer reads the last 'answer is N', else the last integer."""
    assert C.parse_answer(text) == number


def test_mc_questions_and_hint_prompts():
    """Turpin et al.'s suggested-answer bias: the right option is x + y, the hinted letter is wrong; the biased
    prompt carries a (right) suggestion in each few-shot example and the wrong one on the question, the unbiased
    prompt the same text without any suggestion."""
    items = C.make_mc_questions(30, seed=1)
    for it in items:
        x, y = map(int, re.findall(r"\d+", it["question"]))
        assert it["options"][C.LETTERS.index(it["answer"])] == x + y
        assert len(set(it["options"])) == 4 and it["hint"] != it["answer"]
    biased, plain = C.hint_messages(items[0], True), C.hint_messages(items[0], False)
    hints = [re.search(r"I think the answer is \((\w)\)", m["content"]) for m in biased if m["role"] == "user"]
    assert [h.group(1) for h in hints] == [s[2] for s in C._FEW_SHOT] + [items[0]["hint"]]
    assert not any("I think" in m["content"] for m in plain)
    assert [m["content"].replace("\n" + C.HINT_TEMPLATE.format(letter=h.group(1)), "") for m, h in
            zip([m for m in biased if m["role"] == "user"], hints)] == [m["content"] for m in plain if m["role"] == "user"]


@pytest.mark.parametrize("text, mentioned", [("You think it is (B), but 37 + 45 = 82.", True),
                                             ("37 + 45 = 82, which is option (C).", False),
                                             ("The suggested answer is wrong.", True)])
def test_mentions_hint(text, mentioned):
    """mentions_hint flags reasoning that acknowledges the user's suggestion."""
    assert C.mentions_hint(text) is mentioned


def test_hint_summary_counts():
    """hint_summary's counts recomputed independently on a random 40-item outcome: hint-following in each
    condition, switches (unbiased ≠ hint, biased = hint), silent switches; Fisher's one-sided p from scipy."""
    from scipy.stats import fisher_exact

    rng = np.random.default_rng(5)
    items = C.make_mc_questions(40, seed=2)
    unb = {"letter": list(rng.choice(list("ABCD"), 40)), "reasoning": ["x"] * 40}
    bia = {"letter": [it["hint"] if rng.random() < 0.6 else "A" for it in items],
           "reasoning": ["you think so" if rng.random() < 0.3 else "plain" for _ in items]}
    s = C.hint_summary(items, unb, bia)
    fb = np.array([L == it["hint"] for L, it in zip(bia["letter"], items)])
    fu = np.array([L == it["hint"] for L, it in zip(unb["letter"], items)])
    sw = fb & ~fu
    silent = sw & np.array([r == "plain" for r in bia["reasoning"]])
    assert (s["follows_hint_biased"]["k"], s["follows_hint_unbiased"]["k"]) == (fb.sum(), fu.sum())
    assert (s["switched_to_hint"]["k"], s["switched_without_mention"]["k"]) == (sw.sum(), silent.sum())
    assert s["fisher_p"] == pytest.approx(fisher_exact([[fb.sum(), 40 - fb.sum()], [fu.sum(), 40 - fu.sum()]],
                                                       alternative="greater")[1])
    right_b = sum(L == it["answer"] for L, it in zip(bia["letter"], items))
    right_u = sum(L == it["answer"] for L, it in zip(unb["letter"], items))
    assert (s["accuracy_biased"]["k"], s["accuracy_unbiased"]["k"]) == (right_b, right_u) and right_u > 0


# ---------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smol():
    from checks.timing import single_thread

    with single_thread():
        model, tok = hf_model("smollm2")
        yield model, tok


def test_number_probability_matches_transformerlens(smol):
    """number_probability (HF, one left-padded batch, digit by digit) equals p(digits, then no digit) computed
    from the HookedTransformer's logits on each conversation alone (no padding), for 1- and 2-digit numbers, to
    1e-3 absolute (module docstring)."""
    model, tok = smol
    ht = smollm2_hooked()
    convs = [C.cot_messages(TRACE_Q, C.forced_prefix(TRACE, k)) for k in (0, 2, 3)]
    numbers = [9, 12, 9]
    got = C.number_probability(model, tok, convs, numbers)
    digit_ids = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    for conv, n, p in zip(convs, numbers, got):
        text = tok.apply_chat_template(conv, tokenize=False, continue_final_message=True) + str(n)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logp = ht(ids)[0].log_softmax(-1)
        nd = len(str(n))
        L = ids.shape[1]
        lp = sum(float(logp[L - nd + j - 1, ids[0, L - nd + j]]) for j in range(nd))
        ref = np.exp(lp) * (1 - float(logp[-1, digit_ids].exp().sum()))
        assert p == pytest.approx(ref, abs=1e-3)
    assert 0 <= got.min() and got.max() <= 1


def test_forced_answer_importance_on_a_written_trace(smol):
    """On a hand-written trace the forced answer is right only once the computation is written: accuracy after
    '12 - 3 = 9.' exceeds accuracy before any reasoning, and that sentence has the largest forced importance."""
    acc = C.smollm2_forced_accuracies(TRACE_Q, TRACE, 9)
    imp = C.calculate_forced_answer_importance(acc)
    assert acc.shape == (len(TRACE) + 1,)
    assert acc[3] > acc[0] + 0.2
    assert int(np.argmax(imp)) == 2


def test_committed_forced_accuracies_reproduce(smol, committed):
    """The experiment's first SmolLM2 trace: its chunks are what split_solution_into_chunks gives on the committed
    reply (exact: string processing), its target is the reply's own parsed answer, and its forced accuracies
    recomputed now match the committed ones to 1e-3 (module docstring)."""
    first = committed["word_problems"]["traces"][0]
    assert C.split_solution_into_chunks(first["reply"]) == first["chunks"]      # exact: string processing
    assert first["target"] == C.parse_answer(first["reply"])
    acc = C.smollm2_forced_accuracies(first["question"], first["chunks"], first["target"])
    assert_reproduces(acc.tolist(), first["forced_accuracies"],
                      Tolerance("HF float32 logits, products of ≤ 3 softmax entries", abs=1e-3))
