"""The gate of day 73 (ARENA 3.1 pitfalls of evals, measured on SmolLM2: answer-position bias under option
permutation, accuracy across paraphrased templates, memorisation by per-token loss, and a leaky scorer that a
zero-knowledge model games, caught by a better scorer).

References: Hugging Face's own unbatched forward (full-vocabulary log-softmax) and its ``labels=`` loss; a
hand-written greedy loop for the continuations; day 71's inspect log-probability solver on the same prompts;
brute-force loops for the bias summaries on a synthetic model whose letter prior and content preference are
known; inspect's ``choice()`` scorer and ``score()`` re-scoring; scipy's chi-square and Wilson intervals.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from pathlib import Path

import pytest
import torch
from inspect_ai.log import read_eval_log
from scipy.stats import binomtest, chi2

from checks.committed import SMOLLM2_LOGIT_REL, assert_reproduces, exact, float_ops, statistical
from checks.timing import single_thread

from . import pitfalls as P

HERE = Path(__file__).parent
# Selected here, not with the exercise factual_records: on a practice copy its stub must fail its own test, not
# the module's collection (test_factual_records_are_the_factual_category checks the exercise against this).
FACTUAL = [r for r in P.setup.load_records() if r["behavior_category"] == "factual"]
needs_smollm2 = pytest.mark.asset("smollm2-135m-instruct")


@pytest.fixture(scope="module", autouse=True)
def one_thread_module():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def smol():
    from checks.models import hf_model

    return hf_model("smollm2")


# --------------------------------------------------------------------------- options under permutation


def test_cyclic_shifts_move_the_target_with_its_text():
    """Position bias needs every option at every position: the k cyclic shifts of each record are the
    rotations of its options (collections.deque.rotate), the correct text is at the target letter in each,
    and the target visits every letter exactly once."""
    for r in FACTUAL + [x for x in P.setup.load_records() if len(x["answers"]) == 2]:
        texts = list(r["answers"].values())
        shifts = P.cyclic_shifts(r)
        assert shifts[0]["answers"] == r["answers"]
        right = r["answers"][r["answer_matching_behavior"][0]]
        for s, shifted in enumerate(shifts):
            d = deque(texts)
            d.rotate(-s)
            assert list(shifted["answers"].values()) == list(d)
            assert shifted["answers"][shifted["answer_matching_behavior"][0]] == right
            assert sorted(shifted["answer_matching_behavior"] + shifted["answer_not_matching_behavior"]) == \
                list(shifted["answers"])
        assert sorted(x["answer_matching_behavior"][0] for x in shifts) == list(r["answers"])
    with pytest.raises(ValueError, match="not a permutation"):
        P.permute_record(FACTUAL[0], [0, 0, 1, 2])


# --------------------------------------------------------------------------- bias summaries on a known model


def synthetic_logprobs(prior, content):
    """l[q, s, j] = prior[j] + content[q, option shown at j under shift s] (option (j + s) mod k)."""
    Q, k = content.shape
    return torch.stack([torch.stack([prior + content[q, [(j + s) % k for j in range(k)]] for s in range(k)])
                        for q in range(Q)])


def test_bias_summary_and_debiasing_on_a_model_with_a_known_letter_prior():
    """On a synthetic scorer with a strong additive letter prior (A by +3 nats) and a weak content preference,
    position_bias_summary's counts, per-position accuracy and consistency equal brute-force loops, and
    shift-averaging recovers exactly the content's argmax (the prior cancels: the Derive section's claim);
    the chi-square p-value equals scipy's chi2 survival function of the formula."""
    g = torch.Generator().manual_seed(0)
    Q, k = 12, 4
    content = torch.randn(Q, k, generator=g)
    prior = torch.tensor([3.0, 0.0, -0.5, 0.2])
    lp = synthetic_logprobs(prior, content)
    targets = [random.Random(q).randrange(k) for q in range(Q)]
    got = P.position_bias_summary(lp, targets)
    answers = [[int(lp[q, s].argmax()) for s in range(k)] for q in range(Q)]
    counts = Counter(a for row in answers for a in row)
    assert got["letter_counts"] == {P.LETTERS[j]: counts.get(j, 0) for j in range(k)}
    for p in range(k):
        hits = [answers[q][s] == p for q in range(Q) for s in range(k) if (targets[q] - s) % k == p]
        assert got["accuracy_by_correct_position"][P.LETTERS[p]]["k"] == sum(hits)
        assert got["accuracy_by_correct_position"][P.LETTERS[p]]["n"] == len(hits) == Q
    chosen = [[(answers[q][s] + s) % k for s in range(k)] for q in range(Q)]
    assert got["consistent_across_shifts"]["k"] == sum(len(set(c)) == 1 for c in chosen)
    assert P.debiased_answers(lp).tolist() == content.argmax(-1).tolist()
    assert got["debiased_accuracy"]["k"] == sum(int(content[q].argmax()) == targets[q] for q in range(Q))
    assert got["letter_counts"]["A"] > 0.9 * Q * k  # the prior dominates the raw answers
    expected = Q * k / k
    stat = sum((c - expected) ** 2 / expected for c in got["letter_counts"].values())
    assert got["chi2_uniform_p"] == pytest.approx(float(chi2.sf(stat, k - 1)), rel=1e-9)
    # without a prior the model answers by content: the same text under every shift, and the raw accuracy
    # is the content's accuracy in every position
    no_prior = P.position_bias_summary(synthetic_logprobs(torch.zeros(k), content), targets)
    assert no_prior["consistent_across_shifts"]["k"] == Q
    assert no_prior["accuracy"]["k"] == k * no_prior["debiased_accuracy"]["k"]
    lo, hi = got["accuracy"]["ci95"]
    ref = binomtest(got["accuracy"]["k"], Q * k).proportion_ci(method="wilson")
    assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-12, abs=1e-15)


# --------------------------------------------------------------------------- letter log-probs on SmolLM2


@pytest.fixture(scope="module")
def few_logprobs():
    """The first factual question under all four shifts, inspect's template: [1, 4, 4]."""
    return P.position_logprobs(FACTUAL[:1], P.TEMPLATES["inspect"])


def _hf_letter_logprobs(smol, conversation, letters="ABCD"):
    model, tok = smol
    ids = tok.apply_chat_template(conversation, continue_final_message=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        lp = torch.log_softmax(model(**ids).logits[0, -1].float(), -1)
    spell = [[tok.convert_tokens_to_ids(t) for t in (L, "Ġ" + L)] for L in letters]  # "A" and " A"
    return torch.stack([torch.logsumexp(lp[s], 0) for s in spell]), lp


@needs_smollm2
def test_letter_logprobs_equal_hf_unbatched_forward(smol, few_logprobs):
    """letter_logprobs_full (left-padded batches) equals HF's unpadded forward: full-vocabulary log-softmax
    after the chat-templated prompt and the "ANSWER:" prefill, logsumexp over "A"/" A". Tolerance 1e-4:
    left padding changes only the float32 summation order (measured ~5e-6 on day 71)."""
    for q, r in enumerate(FACTUAL[:1]):
        for s, shifted in enumerate(P.cyclic_shifts(r)):
            ref, _ = _hf_letter_logprobs(smol, P.mcq_conversation(shifted))
            assert few_logprobs[q, s].tolist() == pytest.approx(ref.tolist(), abs=1e-4)


@needs_smollm2
def test_letter_logprobs_agree_with_day71_inspect_solver(tmp_path, few_logprobs):
    """The same prompts through inspect (day 71's logprob_multiple_choice on the smollm2 provider, top-20
    log-probs): the same answer letter, and each letter the solver saw has at most our full-vocabulary
    value (it may miss a spelling outside the top 20, never add one)."""
    from inspect_ai import Task, eval
    from inspect_ai.dataset import MemoryDataset
    from inspect_ai.scorer import choice

    samples = [P.setup.record_to_sample(shifted) for r in FACTUAL[:1] for shifted in P.cyclic_shifts(r)]
    [log] = eval(Task(dataset=MemoryDataset(samples), solver=P.llm.logprob_multiple_choice(), scorer=choice()),
                 model="smollm2/smollm2", log_dir=str(tmp_path), display="none")
    assert log.status == "success", log.error
    back = read_eval_log(log.location)
    ours = few_logprobs.reshape(4, 4)
    for i, sample in enumerate(back.samples):
        theirs = sample.metadata["letter_logprobs"]
        assert sample.scores["choice"].answer == P.LETTERS[int(ours[i].argmax())]
        for j, L in enumerate("ABCD"):
            if math.isfinite(theirs[L]):
                assert theirs[L] <= float(ours[i, j]) + 1e-4


# --------------------------------------------------------------------------- memorisation


@needs_smollm2
def test_per_token_loss_equals_hf_labels_loss(smol):
    """per_token_loss's mean equals Hugging Face's own shifted cross-entropy (model(ids, labels=ids).loss)
    on a famous passage and its paraphrase (float32 log-softmax over 49k logits, ~50 tokens: rel 1e-5)."""
    model, tok = smol
    texts = [P.FAMOUS[0][1], P.FAMOUS[0][2]]
    got = P.per_token_loss(texts)
    for text, per_token in zip(texts, got):
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ref = float(model(input_ids=ids, labels=ids).loss)
        assert len(per_token) == ids.shape[1] - 1
        assert sum(per_token) / len(per_token) == pytest.approx(ref, rel=1e-5)
    assert sum(got[0]) / len(got[0]) < sum(got[1]) / len(got[1])  # the famous wording is the likelier one


@needs_smollm2
def test_greedy_continuation_equals_a_hand_written_greedy_loop(smol):
    """greedy_continuation's tokens equal an argmax loop over full forwards (no cache, no generate), and its
    verbatim count is the length of the common prefix with the true continuation."""
    model, tok = smol
    text = P.FAMOUS[0][1]
    [got] = P.greedy_continuation([text], n_prefix_words=8, n_new=8)
    ids = tok(" ".join(text.split()[:8]), return_tensors="pt")["input_ids"]
    n_prefix = ids.shape[1]
    with torch.no_grad():
        for _ in range(8):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    gen = ids[0, n_prefix:].tolist()
    assert got["continuation"] == tok.decode(gen)
    truth = tok(text)["input_ids"][n_prefix:n_prefix + 8]
    run = 0
    while run < 8 and gen[run] == truth[run]:
        run += 1
    assert got["verbatim_tokens"] == run


@pytest.mark.asset("wikitext-2")
def test_controls_shuffle_and_wikitext(asset):
    """The controls: a word shuffle keeps the multiset of words (seeded, reproducible, and not the
    original order); the WikiText-2 passages are n distinct sentences of 20-40 words, detokenized, without
    <unk> or the @-@ markers."""
    for i, (_, text, _) in enumerate(P.FAMOUS):
        sh = P.shuffle_words(text, i)
        assert Counter(sh.split()) == Counter(text.split()) and sh == P.shuffle_words(text, i) and sh != text
    wiki = P.wikitext_passages(asset("wikitext-2") / "wikitext-2-valid.txt", n=12)
    assert len(set(wiki)) == 12
    for w in wiki:
        assert 20 <= len(w.split()) <= 40 and "<unk>" not in w and "@" not in w and " ," not in w


def test_wikitext_word_bounds_are_inclusive(tmp_path):
    """On hand-made WikiText-2 lines: headings and paragraphs with <unk> are skipped; a first sentence of exactly
    ``min_words`` or ``max_words`` words (its full stop included) is kept, one word fewer or more is not; with fewer
    than 4n paragraphs the spacing is 1, so every paragraph is looked at."""
    def paragraph(k):
        return " " + " ".join(f"w{i}" for i in range(k - 1)) + " end . A second sentence , not counted ."
    lines = [" = Heading = ", paragraph(20), " = = Sub = = ", paragraph(40), " <unk>" + paragraph(25), paragraph(19),
             paragraph(41), ""]
    (tmp_path / "wiki.txt").write_text("\n".join(lines), encoding="utf-8")
    got = P.wikitext_passages(tmp_path / "wiki.txt", n=10, min_words=20, max_words=40)
    assert [len(s.split()) for s in got] == [20, 40] and all(s.endswith(" end.") for s in got)


# --------------------------------------------------------------------------- the leaky scorer


def test_zero_knowledge_model_games_the_leaky_scorer_and_choice_catches_it(tmp_path):
    """A scorer that accepts any completion containing the target letter is gamed to 100% by a model that
    ignores the question and replies "ANSWER: ABCD"; inspect's choice() (after multiple_choice()) and the
    strict answer_letter score the same replies 0%."""
    records = P.setup.load_records()[::5]
    log = P.gaming_eval(records, tmp_path)
    assert {s.output.completion for s in log.samples} == {"ANSWER: ABCD"}
    shares = P.score_shares(log, ["leaky_letter", "choice", "answer_letter"])
    assert shares["leaky_letter"]["k"] == len(records)
    assert shares["choice"]["k"] == 0 and shares["answer_letter"]["k"] == 0


def test_rescoring_day76_log_reproduces_its_scores():
    """Re-scoring day 76's committed SmolLM2 generation log with inspect's score() gives back, sample by
    sample, the strict and lenient values day 76 recorded (the rescoring path is faithful), and the leaky
    scorer credits every sample the strict one credits, and more."""
    path = P.day076_generation_log()
    original = read_eval_log(str(path))
    rescored = P.rescore_generation_log(path)
    for a, b in zip(original.samples, rescored.samples):
        assert a.scores["answer_letter"].value == b.scores["answer_letter"].value
        assert a.scores["lenient_letter"].value == b.scores["lenient_letter"].value
        if b.scores["answer_letter"].value == "C":
            assert b.scores["leaky_letter"].value == "C"
    shares = P.score_shares(rescored, ["leaky_letter", "answer_letter"])
    assert shares["leaky_letter"]["k"] > shares["answer_letter"]["k"]


# --------------------------------------------------------------------------- committed results


def test_committed_summaries_follow_from_committed_raw_numbers(committed):
    """Every summary in results.json is recomputed from the raw numbers committed beside it: the bias
    summaries from each template's letter log-probs (exact: argmaxes and counts; the committed values are
    rounded to 1e-5, and no committed argmax is within 1e-4 of a tie), the swing, the memorisation means and
    t intervals from per-passage losses (float64, a few dozen operations), the leaky-scorer shares from the
    committed log."""
    records = P.factual_records()
    targets = [P.LETTERS.index(r["answer_matching_behavior"][0]) for r in records]
    for name, block in committed["templates"].items():
        lp = torch.tensor(block["logprobs"])
        top2 = lp.topk(2, dim=-1).values
        assert float((top2[..., 0] - top2[..., 1]).min()) > 1e-4, name
        now = P.position_bias_summary(lp, targets)
        assert_reproduces(now, {k: block[k] for k in now}, float_ops(50, why="Wilson/chi2 of the same counts"),
                          name=name)
    accs = [b["accuracy"]["p"] for b in committed["templates"].values()]
    assert committed["template_swing"]["accuracy"] == pytest.approx(max(accs) - min(accs), abs=1e-12)
    mem = committed["memorisation"]
    for name, losses in mem["per_passage_loss"].items():
        assert_reproduces(P._mean_ci(losses), mem["mean_token_loss"][name], float_ops(50), name=name)
    log = read_eval_log(str(HERE / "logs" / committed["leaky_scorer"]["log_file"]))
    assert_reproduces(P.score_shares(log, ["leaky_letter", "choice", "answer_letter"]),
                      committed["leaky_scorer"]["zero_knowledge"], exact("counts from the same log"))
    for f in ("position_bias.png", "templates.png", "memorisation_leaky.png"):
        assert (HERE / "figures" / f).stat().st_size > 10_000


def test_figures_redraw_from_committed_results(committed, tmp_path):
    """plot_results draws all three figures from results.json alone (an interval touching 0 or 1 included)."""
    P.plot_results(committed, tmp_path)
    for f in ("position_bias.png", "templates.png", "memorisation_leaky.png"):
        assert (tmp_path / f).stat().st_size > 10_000


@needs_smollm2
def test_committed_logprobs_and_losses_reproduce_on_this_cpu(committed, few_logprobs):
    """The committed letter log-probs of the first question (all shifts, inspect's template) and the
    losses of two passages are recomputed here. Tolerance: a log-prob is a difference of float32 logits
    (SMOLLM2_LOGIT_REL ≈ 2e-4 relative to |logit| ≲ 40 on two terms, ~2e-2 worst case; measured across
    kernels ≤ 5.4e-5 per logit), plus the committed rounding to 1e-5: abs 2e-3 is conservative by ~20x."""
    tol = statistical(2e-3, why="float32 logits on another CPU's kernels; committed values rounded to 1e-5")
    assert tol.abs <= 40 * SMOLLM2_LOGIT_REL * 2
    assert_reproduces(few_logprobs.tolist(), committed["templates"]["inspect"]["logprobs"][:1], tol, name="logprobs")
    now = [sum(x) / len(x) for x in P.per_token_loss([P.FAMOUS[0][1], P.FAMOUS[0][2]])]
    then = [committed["memorisation"]["per_passage_loss"][k][0] for k in ("famous", "paraphrase")]
    assert_reproduces(now, then, tol, name="loss")


@pytest.mark.slow
@needs_smollm2
@pytest.mark.asset("wikitext-2")
def test_experiment_reproduces_the_committed_headlines(tmp_path, committed, measure, asset):
    """(slow) run_experiment again: every template's raw and debiased accuracy within 3/n of the committed one
    (argmaxes may flip where two letters are within rounding on other kernels), the letter-A share of the
    position-bias run likewise, memorisation mean losses within 2e-3 nats, the leaky-scorer counts exactly."""
    now = P.run_experiment(tmp_path)
    measure("slow.wall_seconds", now["wall_seconds"])
    measure("slow.cpu_seconds", now["cpu_seconds"])
    for name, block in now["templates"].items():
        for key in ("accuracy", "debiased_accuracy"):
            n = block[key]["n"]
            assert_reproduces(block[key]["p"], committed["templates"][name][key]["p"],
                              statistical(3 / n, why="argmax flips near ties"), name=f"{name}.{key}")
    pb = now["position_bias"]["letter_share"]["A"]
    assert_reproduces(pb["p"], committed["position_bias"]["letter_share"]["A"]["p"],
                      statistical(3 / pb["n"], why="argmax flips near ties"), name="A share")
    for name, block in now["memorisation"]["mean_token_loss"].items():
        assert_reproduces(block["mean"], committed["memorisation"]["mean_token_loss"][name]["mean"],
                          statistical(2e-3, why="float32 logits"), name=name)
    assert_reproduces(now["leaky_scorer"]["zero_knowledge"], committed["leaky_scorer"]["zero_knowledge"],
                      exact("a deterministic reply"))


def test_factual_records_are_the_factual_category():
    """factual_records: the day-076 dataset's records of category "factual", in file order."""
    assert P.factual_records() == FACTUAL and len(FACTUAL) > 0
