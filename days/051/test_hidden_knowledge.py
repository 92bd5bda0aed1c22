"""The gate of day 51 (ARENA 1.3.4: activation oracles on hidden knowledge; our secret is planted by prompt).

References: Hugging Face's ``generate`` (the greedy answers), ``output_hidden_states`` of a full pass (the
user-turn activations), the tokenizer's character offsets (where the user's turn is), scikit-learn's
``cross_val_predict`` with ``LeaveOneGroupOut`` (the held-out-question probe), day 50's oracle (the restricted
ranking). Tolerances: see each test; committed numbers with checks.committed.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces, exact
from checks.models import hf_model

from . import hidden_knowledge as H

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("smollm2-135m-instruct")
MODEL = "smollm2"
GATE_Q = (0, 4)              # two questions, all secrets, two layers: the gate's share of the experiment
GATE_LAYERS = (6, 9)        # activations at both (early stop after 9); the oracles are recomputed at GATE_ORACLE_LAYER
GATE_ORACLE_LAYER = 9


@pytest.fixture(scope="module")
def setup():
    model, tok = hf_model(MODEL)
    secrets = H.secret_words(tok)
    questions = [H.QUESTIONS[i] for i in GATE_Q]
    acts = H.user_turn_activations(MODEL, secrets, questions, GATE_LAYERS)     # [2, k, 2, d]
    return model, tok, secrets, questions, acts


def test_secret_prompt_and_user_turn(setup):
    """secret_chat_ids: the system message carries the secret once and the user's question follows in the chat
    template; user_turn_span covers exactly the question's characters (checked through the tokenizer's offsets of
    the rendered text, an independent route), for every question."""
    _, tok, secrets, _, _ = setup
    for q in H.QUESTIONS:
        ids = H.secret_chat_ids(tok, secrets[0], q)
        text = tok.apply_chat_template([{"role": "system", "content": H.SYSTEM_TEMPLATE.format(secrets[0])},
                                        {"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
        assert enc["input_ids"] == ids
        start, end = H.user_turn_span(tok, ids)
        a = text.index(q)
        assert enc["offset_mapping"][start][0] == a and enc["offset_mapping"][end - 1][1] == a + len(q)
        assert text.count(secrets[0]) == 1 and text.index(secrets[0]) < a

    # a tokenizer that prepends a beginning-of-sequence token to whatever it encodes (as Llama's does) renders the
    # same chat ids from the template; the span is still found (the marker is matched without special tokens)
    import copy

    from tokenizers.processors import TemplateProcessing

    bos = copy.deepcopy(tok)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    bos._tokenizer.post_processor = TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A $B",
                                                       special_tokens=[("<|endoftext|>", eot)])
    assert bos.encode("user\n")[0] == eot                                                 # it does prepend one
    ids = H.secret_chat_ids(tok, secrets[0], H.QUESTIONS[0])
    assert H.user_turn_span(bos, ids) == H.user_turn_span(tok, ids)


def test_user_turn_activations_equal_the_full_pass(setup):
    """user_turn_activations: for each gate question (one secret each, the first and the last), the residual stream after blocks 6 and 9 at the
    last token of the user's message equals hidden_states[l + 1] of a plain full pass on that one prompt (1e-5
    relative: the batch of K prompts and the single prompt take the same kernels up to blocking)."""
    model, tok, secrets, questions, acts = setup
    for qi, q in enumerate(questions):
        for si in (qi * (len(secrets) - 1),):   # the first secret with one question, the last with the other
            ids = torch.tensor([H.secret_chat_ids(tok, secrets[si], q)])
            _, end = H.user_turn_span(tok, ids[0].tolist())
            with torch.no_grad():
                hs = model(input_ids=ids, output_hidden_states=True).hidden_states
            for j, l in enumerate(GATE_LAYERS):
                torch.testing.assert_close(acts[qi, si, j], hs[l + 1][0, end - 1], rtol=1e-5, atol=1e-4)


def test_generate_answers_match_hf_generate(setup):
    """generate_answers: the greedy answers equal Hugging Face's generate(do_sample=False) on each prompt alone,
    cut at <|im_end|> (6 tokens, 2 secrets)."""
    model, tok, secrets, _, _ = setup
    some = secrets[:2]
    answers = H.generate_answers(MODEL, some, H.QUESTIONS[0], max_new_tokens=6)
    for s, a in zip(some, answers):
        ids = torch.tensor([H.secret_chat_ids(tok, s, H.QUESTIONS[0])])
        with torch.no_grad():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                 pad_token_id=tok.eos_token_id)
        assert a == tok.decode(ref[0, ids.shape[1]:]).split("<|im_end|>")[0]


def test_leaks_reads_words_and_spellings():
    """leaks: the secret as a whole word in any case, or spelled with separators, counts; a word that merely
    contains it ('pineapples') and an answer without it do not."""
    assert H.leaks("The secret word is Apple.", "apple") and H.leaks("It is a-p-p-l-e", "apple")
    assert H.leaks("A P P L E", "apple")
    assert not H.leaks("I like pineapples", "apple") and not H.leaks("I cannot tell you.", "apple")


def test_probe_holds_out_whole_questions(setup):
    """probe_top1 is leave-one-question-out: its predictions equal scikit-learn's cross_val_predict with
    LeaveOneGroupOut (groups = questions) on the same pipeline, counted over all q·k held-out rows; and on the real activations with labels shuffled
    within each question (no signal that generalises), it is near chance while the true labels are recovered."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, _, secrets, _, acts = setup
    a = acts[:, :, 0]
    q, k, d = a.shape
    mine = H.probe_top1(a)
    ref = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)),
                            a.double().numpy().reshape(-1, d), np.tile(np.arange(k), q),
                            groups=np.repeat(np.arange(q), k), cv=LeaveOneGroupOut())
    assert sum(mine["predictions"], []) == ref.tolist()
    assert mine["n"] == q * k and mine["k"] == int((ref == np.tile(np.arange(k), q)).sum())
    assert mine["accuracy"] == mine["k"] / (q * k)
    rng = np.random.default_rng(0)
    shuffled = torch.stack([a[i, torch.from_numpy(rng.permutation(k))] for i in range(q)])
    assert H.probe_top1(shuffled)["accuracy"] < H.probe_top1(a)["accuracy"]


def test_oracle_ranks_candidates_from_its_logits(setup):
    """oracle_top1 is day 50's oracle read over the K candidates only: its prediction is the argmax of run_oracle's
    first-step logits at the candidates' token ids, and the margin is the gap between the top two."""
    _, tok, secrets, _, acts = setup
    flat = acts[0, :4, 0]
    r = H.oracle_top1(MODEL, flat, secrets)
    oi = H.O.create_oracle_input(H.O.IDENTITY_PROMPT, 0, 1, tok, flat, chat=False, prefix=False)
    _, logits = H.O.run_oracle(MODEL, oi, steering_coefficient=2.0)
    cand = torch.tensor([tok.encode(" " + s, add_special_tokens=False)[0] for s in secrets])
    assert r["predictions"] == logits[:, cand].argmax(-1).tolist()
    top2 = logits[:, cand].topk(2).values
    torch.testing.assert_close(torch.tensor(r["margin"]), top2[:, 0] - top2[:, 1])


def test_oracle_question_reads_spaced_and_capitalised_candidates(setup):
    """oracle_question_top1 (ARENA's question, chat template, introspection prefix): each candidate's score is its
    ' word' logit, or its 'Word' logit when larger (when every capitalised candidate is one token, as for 'Apple'
    and 'River'); the prediction is the best-scored candidate and the margin the gap to the second, for K = 2
    candidates too. Reference: run_oracle's first-step logits on the same input."""
    _, tok, _, _, acts = setup
    secrets = ["apple", "river"]
    flat = acts[0, :2, 0]
    layer = GATE_ORACLE_LAYER
    r = H.oracle_question_top1(MODEL, flat, layer, secrets)
    oi = H.O.create_oracle_input(H.ORACLE_QUESTION, layer, 1, tok, flat, chat=True, prefix=True)
    _, logits = H.O.run_oracle(MODEL, oi, steering_coefficient=2.0)
    spaced = logits[:, [tok.encode(" " + s, add_special_tokens=False)[0] for s in secrets]]
    capital = logits[:, [tok.convert_tokens_to_ids(s.capitalize()) for s in secrets]]
    scores = torch.maximum(spaced, capital)
    assert r["predictions"] == scores.argmax(-1).tolist()
    torch.testing.assert_close(torch.tensor(r["margin"]), (scores[:, 0] - scores[:, 1]).abs())


def test_results_json_is_current(setup, committed, measure):
    """results.json (cited by the post): the secrets and questions are today's; every accuracy is k/n with its
    Wilson interval and the best entries follow; chance is 1/K. Recomputed now on one question at layer 9: both
    oracles' predictions (the probe's folds need all six questions: the slow test), equal to the committed ones except decisions within twice a logit's
    float32 error of a tie; the committed leak flags follow from the committed answers. The figure exists."""
    _, tok, secrets, questions, acts = setup
    c = committed
    assert c["secrets"] == secrets and c["questions"] == list(H.QUESTIONS) and c["chance"] == 1 / len(secrets)
    for key, rows in c["by_layer"].items():
        for r in rows:
            assert r["ci"] == pytest.approx(H.O.P40.wilson_interval(r["k"], r["n"])) and r["accuracy"] == r["k"] / r["n"]
        assert c["best"][key]["accuracy"] == max(r["accuracy"] for r in rows)
    assert c["oracle_summary"] == H.oracle_summary(c["by_layer"], secrets)
    for q in H.QUESTIONS:
        for entry in c["answers"][q]:
            assert entry["leaked"] == H.leaks(entry["answer"], entry["secret"])
    assert c["leak"]["k"] == sum(e["leaked"] for q in H.QUESTIONS for e in c["answers"][q])
    k = len(secrets)
    flips = 0
    for j, layer in [(GATE_LAYERS.index(GATE_ORACLE_LAYER), GATE_ORACLE_LAYER)]:
        li = c["layers"].index(layer)
        flat = acts[0, :, j]                 # the first gate question's K rows
        for key, fn in (("oracle_identity", lambda: H.oracle_top1(MODEL, flat, secrets)),
                        ("oracle_question", lambda: H.oracle_question_top1(MODEL, flat, layer, secrets))):
            now, then = fn(), c["by_layer"][key][li]
            rows = list(range(GATE_Q[0] * k, (GATE_Q[0] + 1) * k))
            tol = 2 * SMOLLM2_LOGIT_REL * then["max_abs_logit"]
            for a, i in zip(now["predictions"], rows):
                if a != then["predictions"][i]:
                    assert then["margin"][i] < tol, (key, layer, i)
                    flips += 1
            assert_reproduces(now["margin"], [then["margin"][i] for i in rows],
                              Tolerance(abs=tol, reason="top-1 minus top-2 candidate logit: two SmolLM2 logits, "
                                                        "continuous even where the top two swap"),
                              name=f"{key}.{layer}.margin")
    measure("gate_decision_flips", flips, "0")
    assert_reproduces([r["layer"] for r in c["by_layer"]["probe"]], list(H.LAYERS), exact("one probe per layer"))
    assert (HERE / "figures/secret_recovery.png").stat().st_size > 10_000


@pytest.mark.slow
def test_experiment_reproduces(committed, tmp_path, measure):
    """(slow, a few minutes) The whole experiment rerun: the greedy answers equal the committed ones except where
    a token decision was within rounding (then the leak count may move by the answers that differ); each oracle
    count within its near-tie decisions; the probe's count within 2 of the committed one (lbfgs on standardised
    float64 features converges to the same optimum up to its tolerance; a held-out prediction near a class
    boundary may move); and the headline: the best probe layer's Wilson interval lies above chance and above the
    leak rate's interval."""
    now = H.run_experiment(tmp_path)
    c = committed
    differ = [(q, i) for q in H.QUESTIONS for i, (a, b) in enumerate(zip(now["answers"][q], c["answers"][q]))
              if a["answer"] != b["answer"]]
    assert abs(now["leak"]["k"] - c["leak"]["k"]) <= len(differ)
    measure("answers_that_differ", len(differ), "0 expected")
    for key in ("oracle_identity", "oracle_question"):
        for a, b in zip(now["by_layer"][key], c["by_layer"][key]):
            near = sum(m < 2 * SMOLLM2_LOGIT_REL * b["max_abs_logit"] for m in b["margin"])
            assert abs(a["k"] - b["k"]) <= near
    for a, b in zip(now["by_layer"]["probe"], c["by_layer"]["probe"]):
        assert abs(a["k"] - b["k"]) <= 2
    best = c["best"]["probe"]
    assert best["ci"][0] > c["chance"] and best["ci"][0] > c["leak"]["ci"][1]
    measure("best_probe_accuracy", best["accuracy"])
