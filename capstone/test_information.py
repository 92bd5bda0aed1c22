"""The gate of Part 1C (information-theoretic analysis).

References: TransformerLens's own loss (``return_type="loss"``) and ``torch.nn.functional.kl_div``;
closed forms (a uniform model costs log₂ V bits per token; Wald's identity bounds the mean stopping
time; the Beta–Binomial identity) checked against scipy and Monte Carlo. The padding identity and the
closed forms run on a small random GPT-2-shaped model (they do not depend on training); the measured
numbers come from SmolLM2-135M-Instruct and are re-checked against a few recomputed sentences and the
committed KL example.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from checks import assert_parity
from checks.committed import Tolerance, assert_reproduces, float_ops
from checks.models import random_gpt2

from . import information as I
from . import sycophancy as S
from .test_sycophancy import SMOL_DIFF_TOL, SMOL_LOGIT_ERR, count_tolerance  # SmolLM2's float32 errors, derived there

pytestmark = pytest.mark.asset("smollm2-135m-instruct", "wikitext-2")


@pytest.fixture(scope="module")
def tiny():
    return random_gpt2(n_layers=2, d_model=64, n_heads=4, seed=1)[0]


@pytest.fixture(scope="module")
def smol():
    from .models import load

    return load("smollm2")


@pytest.fixture(scope="module")
def results(committed):
    return committed["part1c"]


@pytest.fixture(scope="module")
def data(committed):
    return committed["data"]


@pytest.fixture(scope="module")
def sentences():
    return I.wikitext_sentences(100)


def test_sentences_are_100_clean_wikitext_sentences(sentences):
    """1C.1: 100 distinct sentences of WikiText-2 (test split), seeded, detokenized, no <unk>."""
    assert len(sentences) == 100 == len(set(sentences))
    assert sentences == I.wikitext_sentences(100)
    assert all("<unk>" not in s and " , " not in s and " @" not in s for s in sentences)
    assert all(s[0].isupper() or s[0] == '"' for s in sentences)


@pytest.mark.asset("gpt2-tokenizer")
def test_padded_batch_loss_equals_transformer_lens_loss(tiny, sentences, measure):
    """1C.1 per-token cross-entropy: the right-padded batch gives each sentence the same total
    nats as TransformerLens's own mean loss (return_type="loss") times its token count, sentence by
    sentence (atol 1e-4 nats: float32 sums of ~30 terms)."""
    few = sentences[:6]
    batched = I.sentence_losses(tiny, few, batch_size=6)
    ref = []
    for s in few:
        tokens, _ = I.padded_batch(tiny.tokenizer, [s])
        ref.append(tiny(tokens, return_type="loss").item() * (tokens.shape[1] - 1))
        assert tokens.shape[1] - 1 == batched["tokens"][len(ref) - 1]
    report = assert_parity(torch.tensor(batched["nats"]), torch.tensor(ref), atol=1e-4, name="1c.padded_vs_tl_loss")
    measure.parity(report)


@pytest.mark.asset("gpt2-tokenizer")
def test_a_uniform_model_costs_log2_vocab_bits(sentences):
    """1C.1 bits: with the unembedding zeroed the model predicts uniformly over V = 50257 tokens, so
    it costs exactly log₂ V bits per token and log₂ V · tokens/chars bits per character (rtol 1e-6)."""
    model = random_gpt2(n_layers=1, d_model=64, n_heads=4, seed=2)[0]
    with torch.no_grad():
        model.W_U.zero_()
        model.b_U.zero_()
    r = I.sentence_losses(model, sentences[:10])
    assert r["bits_per_token"] == pytest.approx(math.log2(50257), rel=1e-6)
    assert r["bits_per_char"] == pytest.approx(math.log2(50257) * sum(r["tokens"]) / sum(r["chars"]), rel=1e-6)


def test_smollm2_bits_per_char_is_current(smol, sentences, results, measure):
    """1C.1 (SmolLM2): the committed bits/token and bits/char; 8 sentences recomputed now give the
    committed per-sentence cross-entropy (a sum over T tokens of −log p, each within twice a logit's float32
    error, adding like a random walk: 2·SMOL_LOGIT_ERR·√T); SmolLM2 is within a factor 2 of
    Shannon's ~1 bit/char and far below a uniform coder (log₂ 49152 ≈ 15.6 bits/token)."""
    w = results["wikitext"]
    now = I.sentence_losses(smol, sentences[:8])
    longest = max(w["per_sentence_tokens"][:8])
    tol = Tolerance(abs=2 * SMOL_LOGIT_ERR * math.sqrt(longest) + 5e-6,
                    reason=f"≤ {longest} tokens' −log p, each within two SmolLM2 logit errors; stored to 5 decimals")
    measure("1c.nats_vs_committed", assert_reproduces(torch.tensor(now["nats"]), torch.tensor(w["per_sentence_nats"][:8]),
                                                      tol, name="wikitext.per_sentence_nats[:8]"), "≤ 1 (fraction of the tolerance)")
    assert w["tokens"] == sum(w["per_sentence_tokens"]) and w["chars"] == sum(len(s) for s in sentences)
    assert w["bits_per_char"] == pytest.approx(sum(w["per_sentence_nats"]) / (w["chars"] * math.log(2)))
    assert 0.5 < w["bits_per_char"] < 2.0 and w["bits_per_token"] < 8
    measure("1c.smollm2_bits_per_token", w["bits_per_token"])
    measure("1c.smollm2_bits_per_char", w["bits_per_char"], "Shannon ~1.0")


def test_kl_equals_torch_kl_div_and_is_a_divergence(measure):
    """1C.2: our KL(P‖Q) equals torch.nn.functional.kl_div(log Q, log P, log_target=True) summed
    over the vocabulary (float64, atol 1e-12); it is ≥ 0, zero for P = Q, and not symmetric; the
    two-token KL equals binary_kl."""
    g = torch.Generator().manual_seed(0)
    P, Q = torch.randn(8, 49152, generator=g) * 3, torch.randn(8, 49152, generator=g) * 3
    ours = I.kl_divergence(P, Q)
    ref = F.kl_div(Q.double().log_softmax(-1), P.double().log_softmax(-1), log_target=True, reduction="none").sum(-1)
    measure.parity(assert_parity(ours, ref, atol=1e-12, name="1c.kl_vs_kl_div"))
    assert (ours > 0).all() and I.kl_divergence(P, P).abs().max() < 1e-12
    assert not torch.allclose(ours, I.kl_divergence(Q, P))
    two = torch.tensor([[0.3, -1.2]], dtype=torch.float64), torch.tensor([[1.0, 0.4]], dtype=torch.float64)
    p, q = two[0].softmax(-1)[0, 0].item(), two[1].softmax(-1)[0, 0].item()
    assert I.kl_divergence(*two).item() == pytest.approx(I.binary_kl(p, q), rel=1e-12)


def example_tolerances(lo, ln) -> dict[str, Tolerance]:
    """How far each number of kl_example can move on another CPU, from the two float32 logit vectors it reads
    (each logit within err = SMOL_LOGIT_ERR): a log-probability is within 2·err (the logit and the log-sum-exp),
    so a KL = Σ p·(log p − log q) moves by ≤ 2·err·(2 + Σ p·|log p − log q|) (the log-ratio by 4·err, the weights
    by a factor e^(±2·err)), an entropy −Σ p log p by ≤ 2·err·(1 + H), a probability p by a factor e^(±2·err), and a
    two-answer share σ(logit_s − logit_t) by ≤ err/2 (slope ≤ 1/4, the logit difference within 2·err)."""
    err = SMOL_LOGIT_ERR
    logp, logq = lo.double().log_softmax(-1), ln.double().log_softmax(-1)
    spread = (logp.exp() * (logp - logq).abs()).sum().item()
    spread_rev = (logq.exp() * (logq - logp).abs()).sum().item()
    entropy = -(logp.exp() * logp).sum().item()
    ln2 = math.log(2)
    return {"kl": Tolerance(abs=2 * err * (2 + spread) / ln2, reason="KL in bits, log-probabilities within 2 logit errors"),
            "kl_nats": Tolerance(abs=2 * err * (2 + spread), reason="KL in nats, log-probabilities within 2 logit errors"),
            "kl_reverse": Tolerance(abs=2 * err * (2 + spread_rev) / ln2, reason="reverse KL in bits, likewise"),
            "entropy": Tolerance(abs=2 * err * (1 + entropy) / ln2, reason="an entropy in bits, likewise"),
            "prob": Tolerance(rel=math.expm1(2 * err), reason="a softmax probability, its log within 2 logit errors"),
            "share": Tolerance(abs=err / 2, reason="a two-way softmax: slope ≤ 1/4, its logit difference within 2 errors")}


def assert_example_reproduces(now: dict, committed: dict, tols: dict[str, Tolerance]) -> float:
    """Every field of a kl_example against the committed one, with example_tolerances; the text exactly."""
    for key in ("id", "opinion", "neutral", "answer_prefix", "truthful", "sycophantic"):
        assert now[key] == committed[key], key
    worst = 0.0
    for key, tol in (("kl_bits", "kl"), ("kl_nats", "kl_nats"), ("kl_reverse_bits", "kl_reverse"),
                     ("entropy_opinion_bits", "entropy"), ("p_syc_vs_truth_opinion", "share"),
                     ("p_syc_vs_truth_neutral", "share"), ("p_opinion", "prob"), ("p_neutral", "prob")):
        worst = max(worst, assert_reproduces(now[key], committed[key], tols[tol], name=f"kl.example.{key}"))
    a, b = committed["p_syc_vs_truth_opinion"], committed["p_syc_vs_truth_neutral"]
    slope = abs(math.log(a / (1 - a)) - math.log(b / (1 - b))) + abs(b - a) / (b * (1 - b))  # |∂KL/∂a| + |∂KL/∂b|
    assert_reproduces(now["binary_kl_bits"], committed["binary_kl_bits"],
                      Tolerance(abs=slope * tols["share"].abs / math.log(2), reason="KL(Bern(a)‖Bern(b)) of the shares"),
                      name="kl.example.binary_kl_bits")
    assert now["top_tokens"] == committed["top_tokens"]
    return worst


def test_kl_example_is_current(smol, results, data, measure):
    """1C.2 (SmolLM2): the committed example, recomputed by kl_example from two fresh forwards of its pair, matches
    in every field the report cites (KL both ways, the opinion distribution's entropy, both two-answer shares, the
    distributions on the top tokens: example_tolerances, derived from SmolLM2's float32 logit error); its KL equals
    kl_div on those logits; run's route to the logits (next_token_distributions of the cached residual stream after
    the last block) equals the model's own output; and the pair is the one most_shifted_flip picks from the
    committed per-pair Δ, a choice whose margins exceed their float32 error (the pair flips by more than
    SMOL_DIFF_TOL in both forms, and its shift leads every other candidate's by more than twice 2·SMOL_DIFF_TOL)."""
    ex = results["kl"]["example"]
    pair = next(p for p in S.load_pairs() if p.id == ex["id"])
    e = S.encode_pair(smol, pair)
    with torch.no_grad():
        logits, cache = smol.run_with_cache(torch.tensor([e.opinion, e.neutral]),
                                            names_filter=f"blocks.{smol.cfg.n_layers - 1}.hook_resid_post")
    lo, ln = logits[:, -1]
    routed = I.next_token_distributions(smol, cache[f"blocks.{smol.cfg.n_layers - 1}.hook_resid_post"][:, -1])
    assert_parity(routed, logits[:, -1], atol=1e-4, name="next_token_distributions vs the model's logits")
    now = I.kl_example(smol.tokenizer, pair, e, lo, ln)
    worst = assert_example_reproduces(now, ex, example_tolerances(lo, ln))
    ref = F.kl_div(ln.double().log_softmax(-1), lo.double().log_softmax(-1), log_target=True, reduction="sum").item()
    assert now["kl_bits"] == pytest.approx(ref / math.log(2), rel=1e-9)
    assert ex["p_syc_vs_truth_opinion"] > 0.5 > ex["p_syc_vs_truth_neutral"]  # the example flips

    per = data["per_pair"]
    d_op, d_ne = torch.tensor(per["diff_opinion"]), torch.tensor(per["diff_neutral"])
    i = I.most_shifted_flip(d_op, d_ne)
    assert per["id"][i] == ex["id"]
    tol = SMOL_DIFF_TOL.abs
    assert d_op[i] > tol and d_ne[i] < -tol  # a robust flip
    maybe = (d_op > -tol) & (d_ne < tol)      # any pair that could count as flipped on another CPU
    maybe[i] = False
    assert (d_op - d_ne)[i] - (d_op - d_ne)[maybe].max() > 4 * tol
    measure("1c.example_kl_bits", now["kl_bits"])
    measure("1c.example_vs_committed", worst, "≤ 1 (fraction of the tolerance)")
    measure("1c.mean_kl_bits", results["kl"]["mean_bits"])


def test_consecutive_observations_closed_form():
    """1C.3: N consecutive sycophantic answers reach 95% exactly at N* = ⌈log 19 / log(p_s/p_r)⌉
    from an even prior: N* = 6 for p_s = 0.9, p_r = 0.5 (log 19 / log 1.8 = 5.01), the posterior is
    ≥ 0.95 at N* and below at N* − 1."""
    assert I.observations_if_all_sycophantic(0.5, 0.9, 0.5) == 6
    for prior, ps, pr in [(0.5, 0.9, 0.5), (0.2, 0.7, 0.6), (0.5, 0.68, 0.63)]:
        n = I.observations_if_all_sycophantic(prior, ps, pr)
        post = lambda k: 1 / (1 + math.exp(-I.log_odds_posterior(k, k, prior, ps, pr)))
        assert post(n) >= 0.95 > post(n - 1)


@pytest.mark.parametrize("n, ps, pr", [(10, 0.9, 0.5), (25, 0.8, 0.6), (300, 0.68, 0.6)])
def test_fixed_n_power_matches_simulation(n, ps, pr, measure):
    """1C.3: the exact probability that a sycophantic model reaches 95% confidence after N answers,
    P(Bin(N, p_s) ≥ k*(N)), matches a 20 000-run Monte Carlo within 4 standard errors; the posterior
    is calibrated: among runs that reach 95%, at least 95% really are sycophantic (minus 4 s.e.)."""
    exact = I.fixed_n_power(n, 0.5, ps, pr)
    sim = I.simulate_fixed_n(n, 0.5, ps, pr, runs=20_000, seed=1)
    se = math.sqrt(exact * (1 - exact) / 10_000) + 1e-3
    assert abs(sim["power"] - exact) < 4 * se
    if sim["n_confident"] > 100:
        assert sim["precision"] >= 0.95 - 4 * math.sqrt(0.05 * 0.95 / sim["n_confident"])
    measure(f"1c.power_n{n}_exact_minus_sim", exact - sim["power"])


def test_sequential_mean_obeys_wald_identity(measure):
    """1C.3: by Wald's identity E[N]·KL = E[log-odds at stopping] − prior log-odds, and the
    log-odds overshoot log 19 by less than one step log(p_s/p_r), so
    log 19/KL ≤ E[N] < (log 19 + log(p_s/p_r))/KL; the simulated mean (4000 runs) lies inside, up to
    4 standard errors."""
    ps, pr = 0.9, 0.5
    times = I.simulate_sequential(0.5, ps, pr, runs=4000, n_max=500, seed=2)
    lo = I.expected_observations(0.5, ps, pr)
    hi = (math.log(19) + math.log(ps / pr)) / I.binary_kl(ps, pr)
    se = times.std() / math.sqrt(len(times))
    assert lo - 4 * se <= times.mean() <= hi + 4 * se
    measure("1c.textbook_wald_n", lo)
    measure("1c.textbook_simulated_mean_n", float(times.mean()))


@pytest.mark.parametrize("b, c", [(0, 0), (10, 4), (33, 21), (5, 9)])
def test_beta_binomial_identity_matches_scipy(b, c):
    """1C.3 Beta–Binomial: P(φ > ½ | b, c) under a uniform prior equals scipy's Beta(1+b, 1+c)
    survival function at ½ (atol 1e-12)."""
    assert I.prob_flip_rate_above_half(b, c) == pytest.approx(stats.beta(1 + b, 1 + c).sf(0.5), abs=1e-12)


# The Bayesian numbers are float64 closed forms, binomial tails summed in log space over up to 14 000 terms, and a
# seeded numpy simulation (bit-identical for a given numpy): float_ops over the longest sum bounds them.
BAYES_TOL = float_ops(14_000, why="float64 closed forms and log-space binomial sums of up to 14 000 terms")


def test_committed_bayes_numbers_follow_from_the_measured_rates(results, data, measure):
    """1C.3: the textbook setting (p_s = 0.9, p_r = 0.5) is recomputed in full (closed forms, the 500-run sequential
    simulation, the powers: BAYES_TOL); with SmolLM2's committed rates (p_s = opinion-form rate, p_r = neutral-form
    rate, the counts recomputed in the slow tests), the closed forms and the sequential simulation the report cites
    are recomputed (bayes_closed_forms; the power searches are in the slow test); the Beta–Binomial number follows
    from the committed discordant counts."""
    b = results["bayes"]
    m = b["measured"]
    assert m["p_s"] == b["sycophantic_opinion"] / b["n_pairs"]
    assert m["p_r"] == b["sycophantic_neutral"] / b["n_pairs"]
    assert b["n_pairs"] == data["n_pairs"]
    now = I.bayes_closed_forms(0.5, m["p_s"], m["p_r"])
    assert_reproduces(now, {k: m[k] for k in now}, BAYES_TOL, name="bayes.measured")
    textbook = I._bayes_setting(0.5, 0.9, 0.5, b["textbook"]["curve"]["n"], b["textbook"]["curve"]["n_sim"])
    assert_reproduces(textbook, b["textbook"], BAYES_TOL, name="bayes.textbook")
    assert_reproduces(I.prob_flip_rate_above_half(b["discordant_b"], b["discordant_c"]), b["p_flip_rate_above_half"],
                      BAYES_TOL, name="bayes.p_flip_rate_above_half")
    measure("1c.measured_n_if_all_sycophantic", m["n_if_all_sycophantic"])
    measure("1c.measured_wald_n", m["wald_expected_n"])


@pytest.mark.slow
def test_full_part1c_reproduces_committed_numbers(results, data, tmp_path, measure):
    """1C (slow, ~3 min: 100 sentences and the whole data set scored) information.run() itself, every number the
    report cites against the committed one: per-sentence cross-entropy (each within 2·SMOL_LOGIT_ERR·√T, stored to
    5 decimals) and the pooled bits/token, nats/token and bits/char within the sum of those over the pooled count;
    token and character counts exactly; the KL over all pairs (mean, median, max, reverse mean) within the per-pair
    bound of example_tolerances (the mean within the mean bound, the others within the largest); the example in
    every field (and its choice, checked for margins in the gate); the counts behind p_s and p_r and the
    discordant counts up to the pairs whose Δ is within SMOL_DIFF_TOL of 0, and every Bayesian number exactly what
    the closed forms give from the counts now (equal to the committed ones where the counts are: BAYES_TOL)."""
    now = I.run(tmp_path)
    w, cw = now["wikitext"], results["wikitext"]
    for key in ("n_sentences", "tokens", "chars", "chars_per_token", "example_sentence", "per_sentence_tokens"):
        assert w[key] == cw[key], key
    per_tol = [2 * SMOL_LOGIT_ERR * math.sqrt(t) + 5e-6 for t in cw["per_sentence_tokens"]]
    for i, (a, b, t) in enumerate(zip(w["per_sentence_nats"], cw["per_sentence_nats"], per_tol)):
        assert_reproduces(a, b, Tolerance(abs=t, reason="a sentence's −log p summed over its tokens"),
                          name=f"wikitext.per_sentence_nats[{i}]")
    total = sum(per_tol)
    ln2 = math.log(2)
    for key, count in (("bits_per_token", cw["tokens"] * ln2), ("nats_per_token", cw["tokens"]),
                       ("bits_per_char", cw["chars"] * ln2)):
        assert_reproduces(w[key], cw[key], Tolerance(abs=total / count, reason="the sentences' bounds, pooled"),
                          name=f"wikitext.{key}")

    ev = S.evaluate("smollm2")  # memoised: the scores run() used
    from .models import load

    smol = load("smollm2")
    lo = I.next_token_distributions(smol, ev.resid_opinion[:, -1])
    ln = I.next_token_distributions(smol, ev.resid_neutral[:, -1])
    tols = [example_tolerances(a, b) for a, b in zip(lo, ln)]
    k, ck = now["kl"], results["kl"]
    assert k["n_pairs"] == ck["n_pairs"] == data["n_pairs"]
    mean_tol = sum(t["kl"].abs for t in tols) / len(tols)
    assert_reproduces(k["mean_bits"], ck["mean_bits"], Tolerance(abs=mean_tol, reason="the mean of the per-pair KL bounds"),
                      name="kl.mean_bits")
    assert_reproduces(k["mean_reverse_bits"], ck["mean_reverse_bits"],
                      Tolerance(abs=sum(t["kl_reverse"].abs for t in tols) / len(tols), reason="likewise, reversed"),
                      name="kl.mean_reverse_bits")
    for key in ("median_bits", "max_bits"):
        assert_reproduces(k[key], ck[key], Tolerance(abs=max(t["kl"].abs for t in tols), reason="an order statistic: "
                                                         "within the largest per-pair bound"), name=f"kl.{key}")
    i = [p.id for p in ev.pairs].index(ck["example"]["id"])
    worst = assert_example_reproduces(k["example"], ck["example"], tols[i])

    b, cb = now["bayes"], results["bayes"]
    per = data["per_pair"]
    near_op = torch.tensor(per["diff_opinion"]).abs() <= SMOL_DIFF_TOL.abs
    near_ne = torch.tensor(per["diff_neutral"]).abs() <= SMOL_DIFF_TOL.abs
    assert_reproduces(b["sycophantic_opinion"], cb["sycophantic_opinion"], count_tolerance(per["diff_opinion"], b["n_pairs"]),
                      name="bayes.sycophantic_opinion")
    assert_reproduces(b["sycophantic_neutral"], cb["sycophantic_neutral"], count_tolerance(per["diff_neutral"], b["n_pairs"]),
                      name="bayes.sycophantic_neutral")
    near_pairs = int((near_op | near_ne).sum())
    for key in ("discordant_b", "discordant_c"):
        assert_reproduces(b[key], cb[key], Tolerance(abs=near_pairs, reason=f"{near_pairs} pairs with a Δ within "
                                                                            "SmolLM2's float32 error of 0"), name=f"bayes.{key}")
    n = b["n_pairs"]
    p_s, p_r = b["sycophantic_opinion"] / n, b["sycophantic_neutral"] / n
    measured = I._bayes_setting(0.5, p_s, p_r, cb["measured"]["curve"]["n"], cb["measured"]["curve"]["n_sim"])
    assert_reproduces(b["measured"], measured, BAYES_TOL, name="bayes.measured (from the counts now)")
    assert_reproduces(b["p_flip_rate_above_half"], I.prob_flip_rate_above_half(b["discordant_b"], b["discordant_c"]),
                      BAYES_TOL, name="bayes.p_flip_rate_above_half (from the counts now)")
    if (b["sycophantic_opinion"], b["sycophantic_neutral"]) == (cb["sycophantic_opinion"], cb["sycophantic_neutral"]):
        assert_reproduces(b["measured"], cb["measured"], BAYES_TOL, name="bayes.measured")
    assert_reproduces(b["textbook"], cb["textbook"], BAYES_TOL, name="bayes.textbook")
    measure("1c.slow.example_vs_committed", worst, "≤ 1 (fraction of the tolerance)")
    measure("1c.slow.pairs_near_zero", near_pairs)
    assert (tmp_path / "figures" / "part1c_kl.png").stat().st_size > 10_000
