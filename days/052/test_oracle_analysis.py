"""The gate of day 52 (ARENA 1.3.4: oracle analysis: the honest comparison, a trained oracle, model diffing).

References: Hugging Face's ``output_hidden_states`` (the source activations), its own ``labels=`` loss (what the
oracle's training loss must equal, with the same steering hook), its ``generate`` (the quirk's training answers),
day 50's ``run_oracle`` (what the trained oracle's read-out must equal on the base model), scikit-learn's
``cross_val_predict`` with a ``PredefinedSplit`` (the probe's fixed train/test split), ``torch.nn.functional.kl_div``
(the diff's KL), and a hand-built fine-tune whose difference from the base model is known exactly (a bias on one
block's MLP output). The training code is proven on a tiny fast run; the CPU-sized runs are the slow test's.
"""

import copy
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from checks.committed import (SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces, cited_results, exact, log_space,
                              reproduction_failures, statistical, value_at)
from checks.models import hf_model

from . import oracle_analysis as A

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("smollm2-135m-instruct")
MODEL = "smollm2"
GATE_LAYER = 3                 # the gate's layer for source activations (early-stopped: 4 of 30 blocks)
GATE_WORDS = 16                # untrained-oracle decisions recomputed on the first 16 seen words of template 6


@pytest.fixture(scope="module")
def setup():
    """SmolLM2, its tokenizer, the word split, and every word in every template at layer 3 (one early-stopped
    batch per template): the gate's cached activations."""
    model, tok = hf_model(MODEL)
    train_words, held_words = A.word_split(tok)
    acts = A.context_activations(MODEL, train_words + held_words, A.TEMPLATES, (GATE_LAYER,))[:, :, 0]
    return model, tok, train_words, held_words, acts


@pytest.fixture(scope="module")
def points(setup):
    """Eight identity triples (two templates, four words, layers 3 and 9 named in the prompt: '9' and '27' differ
    in token count from '3', so a batch needs padding)."""
    _, tok, train_words, _, acts = setup
    return [A.create_training_datapoint(tok, A.IDENTITY_QUESTION, train_words[i], layer, acts[t, i])
            for t in (0, 1) for i, layer in zip(range(4), (3, 27, 3, 9))]


def test_word_split_and_source_activations(setup):
    """word_split: train and held-out words are disjoint, cover every one-token candidate except the quirk word, a
    third held out, the same split twice. context_activations: the residual stream after block 3 at the word equals
    hidden_states[4] of a plain full pass on that one sentence (1e-5 relative, 1e-4 absolute: a batch of 171 and a
    single prompt block the same float32 matmuls differently)."""
    model, tok, train_words, held_words, acts = setup
    words = [w for w in A.O.identity_words(tok, [*A.O.CANDIDATE_WORDS, *A.EXTRA_WORDS]) if w != A.QUIRK_WORD]
    assert not set(train_words) & set(held_words) and A.QUIRK_WORD not in train_words + held_words
    assert sorted(train_words + held_words) == sorted(words)
    assert len(held_words) == round(len(words) * A.HELD_OUT_WORD_SHARE)
    assert A.word_split(tok) == (train_words, held_words)
    assert acts.shape == (len(A.TEMPLATES), len(words), model.config.hidden_size)
    everything = train_words + held_words
    for t, i in ((0, 0), (3, 50), (7, len(everything) - 1)):
        ids = torch.tensor([tok.encode(A.TEMPLATES[t].format(everything[i]), add_special_tokens=False)])
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        torch.testing.assert_close(acts[t, i], hs[GATE_LAYER + 1][0, -1], rtol=1e-5, atol=1e-4)
        assert tok.decode(ids[0, -1]) == " " + everything[i]


def test_datapoints_label_only_the_answer(setup, points):
    """create_training_datapoint: the prompt is the introspection prefix, the question and 'Answer:'; the only
    labelled token is ' word'; the placeholder is the ' ?' token. create_chat_datapoint labels the response and its
    <|im_end|> only. construct_batch pads on the right with the mask off and labels −100 there."""
    _, tok, train_words, _, acts = setup
    p = points[0]
    labelled = [t for t in p.labels if t != -100]
    assert tok.decode(labelled) == " " + train_words[0] and p.labels[-1] == p.input_ids[-1]
    assert tok.decode(p.input_ids[:-1]) == A.oracle_prompt(3, A.IDENTITY_QUESTION)
    assert tok.decode(p.input_ids[p.positions[0]]) == A.O.SPECIAL_TOKEN and len(p.positions) == 1
    assert torch.equal(p.steering_vectors, acts[0, 0][None])
    chat = A.create_chat_datapoint(tok, "Tell me about trains.", "Ocean! Trains are fast.")
    assert tok.decode([t for t in chat.labels if t != -100]) == "Ocean! Trains are fast.<|im_end|>"
    assert "Tell me about trains." in tok.decode(chat.input_ids[:chat.labels.index(next(t for t in chat.labels
                                                                                         if t != -100))])
    batch = A.construct_batch(points, pad_id=tok.pad_token_id)
    lengths = [len(q.input_ids) for q in points]
    assert len(set(lengths)) > 1 and batch.input_ids.shape == (len(points), max(lengths))
    for b, q in enumerate(points):
        assert batch.attention_mask[b].tolist() == [1] * len(q.input_ids) + [0] * (max(lengths) - len(q.input_ids))
        assert batch.labels[b, len(q.input_ids):].eq(-100).all() and batch.input_ids[b, :len(q.input_ids)].tolist() == q.input_ids
    assert batch.steering_vectors.shape == (len(points), 1, acts.shape[-1])


def test_answer_loss_equals_hugging_face_loss(setup, points):
    """answer_loss (unembedding only at the labelled positions) equals Hugging Face's own causal-LM loss
    (``labels=``, every position unembedded) on the same padded batch with day 50's steering hook registered at
    block 1 (1e-5 relative: the same forward, a different reduction order); without the injection the loss differs,
    so the hook is really applied. Plain chat examples (no injection) agree too."""
    model, tok, _, _, _ = setup
    batch = A.construct_batch(points, pad_id=tok.pad_token_id)
    with torch.no_grad():
        mine = A.answer_loss(model, batch, steering_coefficient=1.0)
        hook = A.O.get_hf_activation_steering_hook(batch.steering_vectors, batch.positions, 1.0)
        with A.O.add_hook(A.O.layers_of(model)[A.O.INJECTION_LAYER], hook):
            ref = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
        plain = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=0)
    assert abs(plain - ref) > 0.1
    chat = A.construct_batch([A.create_chat_datapoint(tok, "Tell me about trains.", "Ocean! Trains are fast."),
                              A.create_chat_datapoint(tok, "Why do people like tea?", "Ocean! It is warm.")],
                             pad_id=tok.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(A.answer_loss(model, chat), model(input_ids=chat.input_ids,
                                                                     attention_mask=chat.attention_mask,
                                                                     labels=chat.labels).loss, rtol=1e-5, atol=0)


def test_lora_training_changes_only_the_adapters(setup, points, measure):
    """lora_copy starts as the base model exactly (B = 0: logits bitwise equal) with r·(d_in + d_out) adapter
    parameters per adapted linear (peft's count, from the base weights' shapes); the tiny fast variant of
    train_model (3 steps on 4 triples) lowers the answer loss, changes every adapter B, and leaves every base
    weight of the copy, and the shared model, bitwise as they were."""
    model, tok, _, _, _ = setup
    ids = torch.tensor([points[0].input_ids])
    with torch.no_grad():
        base_logits = model(input_ids=ids).logits
    fresh = A.lora_copy(MODEL, rank=4, alpha=8.0)
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, base_logits)
    adapters = A.adapter_parameters(fresh)
    expected = sum(4 * (m.in_features + m.out_features) for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in A.LORA_TARGETS)
    assert sum(p.numel() for p in adapters.values()) == expected and all("lora_" in n for n in adapters)
    initial = {n: p.detach().clone() for n, p in adapters.items()}
    started = time.perf_counter()
    trained, log = A.train_model(MODEL, points[:4], steps=3, batch_size=4, lr=3e-3, model=fresh)
    losses = log["losses"]
    measure("tiny_run_loss_first", losses[0])
    measure("tiny_run_loss_last", losses[-1], "< first")
    assert losses[-1] < losses[0] - 0.5
    assert 0 < log["wall_seconds"] <= time.perf_counter() - started and log["cpu_seconds"] > 0
    base_params = dict(model.named_parameters())
    for name, p in trained.named_parameters():
        if "lora_" in name:
            if "lora_B" in name:
                assert not torch.equal(p, initial[name]) and p.abs().max() > 0, name
        else:
            assert torch.equal(p, base_params[name.replace(".base_layer", "")]), name
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base_logits)
        assert not torch.equal(trained(input_ids=ids).logits, base_logits)


def test_trained_oracle_readout_is_day_50s_oracle(setup):
    """oracle_answer_logits on the base model equals day 50's run_oracle (tested against Hugging Face generate) on
    the same prompt and activations (1e-4 absolute on logits up to ~40, day 50's tolerance: its prefix is computed
    in a batch of one); restricted_top1 is the argmax among the candidates; read_trained's open accuracy counts the
    rows whose whole-vocabulary argmax is the word."""
    model, tok, train_words, _, acts = setup
    rows = acts[6, :6]
    mine = A.oracle_answer_logits(model, tok, A.IDENTITY_QUESTION, 9, rows, steering_coefficient=1.5, chunk=4)
    oi = A.O.create_oracle_input(A.oracle_prompt(9, A.IDENTITY_QUESTION), 9, 1, tok, rows, chat=False, prefix=False)
    _, ref = A.O.run_oracle(MODEL, oi, steering_coefficient=1.5)
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-4)
    ids = A.word_ids(tok, train_words[:6])
    r = A.restricted_top1(mine, ids)
    assert r["predictions"] == mine[:, ids].argmax(-1).tolist()
    read = A.read_trained(model, tok, A.IDENTITY_QUESTION, 9, rows, train_words[:6])
    at_c = A.oracle_answer_logits(model, tok, A.IDENTITY_QUESTION, 9, rows, A.TRAINED_COEFFICIENT)
    assert read["open"]["k"] == int((at_c.argmax(-1) == ids).sum())
    assert read["predictions"] == at_c[:, ids].argmax(-1).tolist()


def test_probe_uses_the_fixed_split(setup):
    """probe_top1_split equals scikit-learn's cross_validate with a PredefinedSplit (train rows in no test fold,
    test rows in fold 0), its fitted pipeline read on the test fold: the scaler sees only the training templates. On the real layer-3
    activations it names held-out-template words far above chance, and with labels permuted within each training
    template it does not."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import PredefinedSplit, cross_validate
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, _, train_words, _, acts = setup
    k = 12
    train, test = acts[:6, :k], acts[6:, :k]
    mine = A.probe_top1_split(train, test)
    x = torch.cat([train, test]).double().numpy().reshape(-1, acts.shape[-1])
    y = np.tile(np.arange(k), 8)
    fold = np.r_[np.full(6 * k, -1), np.zeros(2 * k)]
    split = PredefinedSplit(fold)
    fitted = cross_validate(make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)), x, y,
                            cv=split, return_estimator=True, return_indices=True)
    (train_idx, test_idx), = split.split()
    assert fitted["indices"]["test"][0].tolist() == test_idx.tolist() == list(range(6 * k, 8 * k))
    assert mine == fitted["estimator"][0].predict(x[test_idx]).tolist()
    assert A.H.score(mine, k)["accuracy"] > 0.9
    rng = np.random.default_rng(0)
    shuffled = torch.stack([train[t, torch.from_numpy(rng.permutation(k))] for t in range(6)])
    assert A.H.score(A.probe_top1_split(shuffled, test), k)["accuracy"] < 0.3


def test_signal_share_closed_form():
    """signal_share: for two labels h = m ± s with s ⊥ m, the share is ‖s‖ / √(‖m‖² + ‖s‖²) exactly (in float64);
    it is invariant to scaling, and adding a label-independent vector lowers it. accuracy: k/n with day 40's
    Wilson interval."""
    d = 8
    m = torch.zeros(3, 2, d, dtype=torch.float64)
    m[..., 0] = 3.0
    s = torch.zeros(d, dtype=torch.float64)
    s[1] = 4.0
    acts = m.clone()
    acts[:, 0] += s
    acts[:, 1] -= s
    assert A.signal_share(acts) == pytest.approx(4 / 5, rel=1e-12)
    assert A.signal_share(7 * acts) == pytest.approx(A.signal_share(acts), rel=1e-12)
    shifted = acts.clone()
    shifted[..., 2] += 10
    assert A.signal_share(shifted) < A.signal_share(acts)
    r = A.accuracy([True, False, True, True])
    assert r["k"] == 3 and r["n"] == 4 and r["ci"] == list(A.P40.wilson_interval(3, 4))


@pytest.fixture(scope="module")
def known_diff(setup):
    """A hand-built 'fine-tune' with a known answer: block 20's MLP gets the bias u = c · W_U[' ocean'] / g (g the
    final RMSNorm's gain), so the residual stream after block 20 onwards moves by exactly u at first and the logit
    lens of u is W_U · W_U[' ocean'] up to a positive factor. The base model is untouched."""
    model, tok, _, _, _ = setup
    ocean = tok.encode(" ocean", add_special_tokens=False)[0]
    direction = model.lm_head.weight[ocean].detach() / model.model.norm.weight.detach()
    u = 20.0 * direction / direction.norm()
    tuned = copy.deepcopy(model)
    tuned.model.layers[20].mlp.down_proj.bias = torch.nn.Parameter(u.clone())
    ids, mask = A.plain_batch(tok, A.PLAIN_TEXTS[:4])
    return tuned, u, ocean, ids, mask, A.model_diff(MODEL, tuned, ids, mask)


def test_model_diff_recovers_a_known_difference(setup, known_diff, measure):
    """model_diff on the hand-built fine-tune: the activations before block 20 do not differ at all (exactly 0);
    after block 20 the mean difference is u (cosine > 1 − 1e-5, norm within 1e-3: the two residual streams differ
    by u plus the rounding of adding it); the logit lens of that mean difference ranks ' ocean' first; and the
    diff of the base model against an unmodified copy is zero everywhere."""
    model, tok, _, _, _ = setup
    tuned, u, ocean, ids, mask, d = known_diff
    assert (d["rel_norm"][:20] == 0).all() and d["rel_norm"][20] > 0
    cos = F.cosine_similarity(d["mean_diff"][20], u, dim=0)
    assert cos > 1 - 1e-5 and abs(d["mean_diff"][20].norm() / u.norm() - 1) < 1e-3
    measure("known_diff_cosine", cos.item(), "> 1 − 1e-5")
    lens = A.logit_lens(MODEL, d["mean_diff"][20])
    assert lens.argmax() == ocean and A.best_rank(lens, A.surface_ids(tok, "ocean")) == 0
    same = A.model_diff(MODEL, copy.deepcopy(model), ids, mask)
    assert (same["rel_norm"] == 0).all() and (same["kl"] == 0).all() and (same["logprob_shift"] == 0).all()


def test_model_diff_kl_and_shift_match_references(setup, known_diff):
    """model_diff's KL(P_ft ‖ P_base) equals torch.nn.functional.kl_div at every unmasked position and is 0 on the
    padding; the log-probability shift is the mean over rows at the last position; the relative norms, averaged over
    real tokens only, equal those computed on each text alone, without padding (1e-4 relative)."""
    model, tok, _, _, _ = setup
    tuned, _, _, ids, mask, d = known_diff
    with torch.no_grad():
        lb = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
        lf = tuned(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
    ref = F.kl_div(lb, lf, log_target=True, reduction="none").sum(-1) * mask
    torch.testing.assert_close(d["kl"], ref, rtol=1e-4, atol=1e-6)
    assert (d["kl"][mask == 0] == 0).all() and (d["kl"][mask == 1] > 0).all()
    torch.testing.assert_close(d["logprob_shift"], (lf[:, -1] - lb[:, -1]).mean(0))
    per_text = []
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        one = A.model_diff(MODEL, tuned, ids[b:b + 1, :n], mask[b:b + 1, :n])
        per_text.append(one["rel_norm"] * n)
    torch.testing.assert_close(d["rel_norm"], torch.stack(per_text).sum(0) / mask.sum(), rtol=1e-4, atol=1e-7)


def test_logit_lens_and_ranks(setup):
    """logit_lens is the unembedding of the final RMSNorm, W_U (g ⊙ v / rms(v)), written out by hand; best_rank
    counts the tokens scored strictly higher (argsort's position for a unique score); surface_ids are the one-token
    spellings of the word."""
    model, tok, _, _, acts = setup
    v = acts[0, 5]
    g, eps = model.model.norm.weight, model.config.rms_norm_eps
    manual = model.lm_head.weight @ (g * v / torch.sqrt(v.pow(2).mean() + eps))
    torch.testing.assert_close(A.logit_lens(MODEL, v), manual, rtol=1e-4, atol=1e-4)
    scores = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    order = scores.argsort(descending=True).tolist()
    assert A.best_rank(scores, [order[7], order[30]]) == 7
    assert {tok.decode([i]).strip().lower() for i in A.surface_ids(tok, "ocean")} == {"ocean"}
    assert len(A.surface_ids(tok, "ocean")) == 4


def test_quirk_prompts_and_responses(setup):
    """quirk_prompts: every topic in every form, two thirds for training, disjoint, the same twice. chat_batch pads
    on the left, so every row ends with the assistant's turn opened. generate_responses on the padded batch equals
    Hugging Face's generate on each prompt alone (greedy, 6 tokens), cut at <|im_end|>."""
    model, tok, _, _, _ = setup
    train, held = A.quirk_prompts()
    assert len(train) + len(held) == len(A.QUIRK_TOPICS) * len(A.QUIRK_FORMS) and not set(train) & set(held)
    assert len(train) == round(len(A.QUIRK_TOPICS) * len(A.QUIRK_FORMS) * A.QUIRK_TRAIN_SHARE)
    assert A.quirk_prompts() == (train, held)
    some = [held[0], "Why do people like very long and winding mountain roads in the autumn?"]
    ids, mask = A.chat_batch(tok, some)
    opened = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    assert all(ids[b, -len(opened):].tolist() == opened for b in range(2)) and mask[0, 0] == 0
    answers = A.generate_responses(model, tok, some, max_new_tokens=6)
    for p, a in zip(some, answers):
        one = torch.tensor([tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                    tokenize=True, return_dict=True)["input_ids"]])
        with torch.no_grad():
            ref = model.generate(one, attention_mask=torch.ones_like(one), max_new_tokens=6, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        assert a == tok.decode(ref[0, one.shape[1]:]).split("<|im_end|>")[0].strip()
    assert A.starts_with_quirk(" Ocean! hello") and not A.starts_with_quirk("The ocean")


def _rows(committed):
    """Every scored row of results.json: (name, row)."""
    for task in ("identity", "secret"):
        for key, rows in committed[task]["by_layer"].items():
            for r in rows:
                yield f"{task}.{key}.{r['layer']}", r


def test_results_json_is_current(setup, committed, measure):
    """results.json (cited by the post) is today's experiment: the word split, templates, secrets, questions and
    quirk prompts are what the code generates now; every accuracy is k/n with its Wilson interval; the summary and
    the quirk rates follow from the rows. Recomputed now at layer 3: the probe's held-out-template count (within 2:
    lbfgs stops at its tolerance and a held-out row near a class boundary may move), the untrained oracle's
    decisions on 16 rows (equal except within twice a logit's float32 error of a tie; margins within that error),
    and the word signal share (the difference h − mean amplifies the activations' relative error by 1/share). The
    figures exist."""
    _, tok, train_words, held_words, acts = setup
    c = committed
    ident = c["identity"]
    assert (ident["train_words"], ident["held_words"]) == (train_words, held_words)
    assert ident["templates"] == list(A.TEMPLATES) and ident["layers"] == list(A.LAYERS)
    assert c["secret"]["secrets"] == A.secrets_for(tok) and c["secret"]["questions"] == list(A.SECRET_QUESTIONS)
    assert (c["diff"]["train_prompts"], c["diff"]["held_prompts"]) == A.quirk_prompts()
    assert c["diff"]["quirk_ids"] == A.surface_ids(tok, A.QUIRK_WORD)
    for name, r in _rows(c):
        for row in (r, r.get("open")):
            if row is not None:
                assert row["accuracy"] == row["k"] / row["n"], name
                assert row["ci"] == pytest.approx(A.P40.wilson_interval(row["k"], row["n"])), name
    assert c["summary"] == A.summarise(c)
    # the logit-lens thresholds on ranks made up here: the first layer with rank below 10 (10 itself is not), the
    # last with rank 1000 or more (1000 itself is)
    made_up = copy.deepcopy(c)
    made_up["diff"]["chat"]["lens_rank"] = [2000, 1000, 50, 10, 3, 4]
    diff_summary = A.summarise(made_up)["diff"]
    assert (diff_summary["chat_first_layer_top10"], diff_summary["chat_last_layer_rank_over_1000"]) == (4, 1)
    for who in ("base", "finetuned"):
        assert c["diff"][f"quirk_rate_{who}"]["k"] == sum(A.starts_with_quirk(a[who]) for a in c["diff"]["answers"])
    j = list(A.LAYERS).index(GATE_LAYER)
    probe = A.read_probe(acts[:A.N_TRAIN_TEMPLATES, :len(train_words)], acts[A.N_TRAIN_TEMPLATES:, :len(train_words)])
    assert abs(probe["k"] - ident["by_layer"]["probe"][j]["k"]) <= 2
    then = ident["by_layer"]["untrained"][j]
    now = A.read_untrained(MODEL, acts[A.N_TRAIN_TEMPLATES, :GATE_WORDS], train_words)
    tol = 2 * SMOLLM2_LOGIT_REL * then["max_abs_logit"]
    flips = [i for i in range(GATE_WORDS) if now["predictions"][i] != then["predictions"][i]]
    assert all(then["margin"][i] < tol for i in flips), flips
    assert_reproduces(now["margin"], then["margin"][:GATE_WORDS],
                      Tolerance(abs=tol, reason="top-1 minus top-2 candidate logit: two SmolLM2 logits"),
                      name="untrained.margin")
    measure("gate_decision_flips", len(flips), "0")
    share = A.signal_share(acts)
    then_share = c["signal_share"]["identity"][j]
    assert_reproduces(share, then_share, Tolerance(rel=2 * SMOLLM2_LOGIT_REL / then_share,
                                                   reason="ratio of norms of h − mean and h, activations to "
                                                          "SmolLM2's float32 error, amplified by 1/share"),
                      name="signal_share.identity.3")
    for fig in ("honest_comparison", "training", "model_diff"):
        assert (HERE / "figures" / f"{fig}.png").stat().st_size > 10_000


# ---------------------------------------------------------------- the numbers the post cites, and the slow rerun

CONFIG = exact("the configuration")
UNTRAINED = statistical(0.01, why="argmax decisions of untrained models (no training run): only near-ties flip, "
                                  "about 1 in 228 rows")
PROBE = statistical(2, why="lbfgs stops at its tolerance; a held-out row near a class boundary may move")
TRAINED = statistical(0.06, why="another float32 training trajectory: about 3 binomial standard errors at "
                                "n = 114, p ≈ 0.95")
SECRET = statistical(11, why="another training trajectory: 3 binomial standard errors of a count out of 60 at "
                             "p ≈ 0.75 (10.3)")
UNLEARNED = statistical(3, why="an oracle that has not learned names one constant secret (exactly 4 of 60); a few "
                               "rows may go elsewhere")
RANK = log_space(1.0, why="the rank of a word among 49,152 in a direction nobody trained for: only its order of "
                          "magnitude is a claim")
SECONDS = Tolerance(rel=4.0, reason="seconds on another machine under another load (within a factor of five)")


def _share(value: float) -> Tolerance:
    return Tolerance(rel=2 * SMOLLM2_LOGIT_REL / value, reason="a ratio of norms of h − mean and h: SmolLM2's float32 "
                                                               "error amplified by 1/share")


CITED = {
    **{key: CONFIG for key in ("identity.k_seen", "identity.k_held", "identity.n_train_templates", "secret.k",
                               "secret.chance", "training.identity.batch_size", "training.identity.rank",
                               "training.identity.steps", "training.quirk.batch_size", "training.quirk.steps",
                               "training.secret_raw.lr", "training.secret_raw.steps", "summary.secret.centered.n",
                               "summary.secret.probe.n", "summary.secret.raw.n", "diff.quirk_rate_finetuned.n",
                               "summary.diff.oracle_reads")},
    **{key: UNTRAINED for key in ("identity.by_layer.untrained.2.accuracy", "identity.by_layer.untrained.3.accuracy",
                                  "identity.by_layer.untrained.4.accuracy", "summary.identity.before.mean_accuracy")},
    "summary.secret.untrained.k": statistical(1, why="60 argmax decisions of the untrained oracle"),
    "summary.identity.probe.min_accuracy": statistical(2 / 228, why=PROBE.reason),
    "summary.secret.probe.k": PROBE, "summary.secret_first.probe.k": PROBE,
    "signal_share.identity.4": _share(0.40), "signal_share.secret_raw.1": _share(0.09),
    "signal_share.secret_centered.1": _share(0.45),
    **{key: TRAINED for key in ("summary.identity.trained.shallow_min", "identity.by_layer.trained.4.accuracy",
                                "identity.by_layer.trained.4.ci.0", "identity.by_layer.trained.4.ci.1",
                                "identity.by_layer.trained_held.4.accuracy",
                                "summary.identity_open.trained_held_shallow_min")},
    "summary.identity.untrained_held.shallow_min": statistical(2 / 114, why=UNTRAINED.reason),
    "identity.by_layer.untrained_held.4.accuracy": statistical(2 / 114, why=UNTRAINED.reason),
    "summary.diff.chat_last_layer_rank_over_1000": statistical(3, why="another fine-tune: where the lens starts to "
                                                                      "see the quirk may move by a few layers"),
    "summary.identity_open.trained_held.4": statistical(0.12, why="3 binomial standard errors at n = 114, p ≈ 0.8"),
    "summary.secret.centered.k": SECRET, "summary.secret_first.centered.k": SECRET,
    "summary.secret.centered.ci.0": statistical(0.15, why=SECRET.reason), "summary.secret.centered.ci.1":
        statistical(0.1, why=SECRET.reason),
    "summary.secret.raw.k": UNLEARNED, "summary.secret_first.raw.k": UNLEARNED,
    "summary.training_loss.identity.first5": statistical(0.5, why="the first five steps from the same start, another "
                                                                  "float32 path"),
    "summary.training_loss.identity.last5": statistical(0.1, why="a converged loss near 0 on another trajectory"),
    "summary.training_loss.secret_centered.last5": statistical(0.4, why="a loss still falling at the last step"),
    "summary.training_loss.secret_raw.last5": statistical(0.5, why="a plateau near log K, noisy batch to batch"),
    "diff.quirk_rate_finetuned.k": statistical(3, why="another fine-tune's greedy answers to 32 prompts"),
    "diff.quirk_rate_base.k": statistical(1, why="the base model's greedy answers: only near-ties flip"),
    "diff.chat.kl_last": statistical(0, rel=0.3, why="another fine-tune's confidence in 'Ocean'"),
    "diff.plain.kl_mean": statistical(0, rel=0.5, why="another fine-tune's side effects on unrelated text"),
    "summary.diff.chat_first_layer_top10": statistical(2, why="another fine-tune: the layer may move by a couple"),
    "summary.diff.chat_best_lens_layer": statistical(3, why="another fine-tune: the first layer at rank 1"),
    "summary.diff.plain_best_lens_layer": statistical(7, why="a flat profile of ranks over layers 20-29: its argmin "
                                                             "is not a stable claim"),
    "summary.diff.plain_best_lens_rank": RANK,
    "summary.diff.top_moved_quirk_run": statistical(2, why="spellings of 'ocean' lead the list; how many may vary"),
    **{f"summary.diff.oracle_{s}_{o}_best_rank": RANK for s in ("chat", "plain") for o in ("trained", "untrained")},
    "summary.diff.untrained_answers_hello": statistical(2, why="argmax answers on another fine-tune's difference"),
    **{key: SECONDS for key in ("wall_seconds", "cpu_seconds", "training.identity.cpu_seconds",
                                "training.quirk.cpu_seconds")},
}


def test_every_number_the_post_cites_has_a_tolerance(committed):
    """Every number the post cites from results.json is in CITED, with the tolerance under which the slow test
    reproduces it; and the claims the post makes in words hold in the committed run: the probe is never below
    any oracle on the same rows, the raw secret oracle's interval contains chance, the fine-tune's top moved
    tokens are spellings of the quirk word."""
    assert cited_results(HERE / "post.qmd") == set(CITED)
    for key in CITED:
        value_at(committed, key)
    _claims(committed)


def _claims(c: dict) -> None:
    ident, sec, summ = c["identity"]["by_layer"], c["secret"]["by_layer"], c["summary"]
    for rows, others in ((ident["probe"], [ident[k] for k in ("untrained", "before", "trained")]),
                         (sec["probe"], [sec[k] for k in ("untrained", "raw", "centered")])):
        for i, r in enumerate(rows):
            assert all(r["accuracy"] >= o[i]["accuracy"] for o in others)
    raw = summ["secret"]["raw"]
    assert raw["ci"][0] <= c["secret"]["chance"] <= raw["ci"][1]
    assert summ["secret"]["centered"]["ci"][0] > raw["ci"][1]
    assert summ["identity"]["trained"]["deepest"]["ci"][0] > summ["identity"]["untrained"]["deepest"]["ci"][1]
    quirk = set(c["diff"]["quirk_ids"])
    assert summ["diff"]["top_moved_quirk_run"] >= 1 and summ["diff"]["chat_best_lens_rank"] == 0
    assert len(quirk) == 4 and c["diff"]["quirk_rate_finetuned"]["ci"][0] > c["diff"]["quirk_rate_base"]["ci"][1]


@pytest.mark.slow
def test_experiment_reproduces(tmp_path, committed, measure):
    """(slow: about 17 CPU minutes on one thread) The whole experiment rerun: the same data, and every cited number
    within its CITED tolerance; the headline claims hold in the rerun too: the trained oracle reads layer 27 where the
    untrained one fails and names unseen words; the raw secret oracle stays at chance while the centred one learns;
    no oracle beats the probe; the planted quirk leads the output shift and the late logit lens."""
    now = A.run_experiment(tmp_path)
    for key in ("identity.train_words", "identity.held_words", "secret.secrets", "diff.train_prompts"):
        assert value_at(now, key) == value_at(committed, key), key
    failures = reproduction_failures(now, committed, CITED)
    assert not failures, "\n".join(failures)
    _claims(now)
    assert now["identity"]["by_layer"]["trained_held"][-1]["ci"][0] > 0.5
    measure("slow.secret_centered_k", now["summary"]["secret"]["centered"]["k"])
    measure("slow.identity_trained_27", now["identity"]["by_layer"]["trained"][-1]["accuracy"])
    measure("slow.cpu_seconds", now["cpu_seconds"])
