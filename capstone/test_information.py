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
from checks.committed import Tolerance, assert_reproduces
from checks.models import random_gpt2

from . import information as I
from . import sycophancy as S
from .test_sycophancy import SMOL_LOGIT_ERR  # a SmolLM2 logit's float32 error on these prompts, derived there

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


def test_kl_example_is_current(smol, results, measure):
    """1C.2 (SmolLM2): the committed example pair's KL(P_opinion‖P_neutral) at the answer token,
    recomputed from two forwards, matches (within SmolLM2's float32 error: every log-probability is off by
    ≤ 2·SMOL_LOGIT_ERR, so KL = Σ p·(log p − log q) by ≤ 2·err·(2 + Σ p·|log p − log q|)) and equals kl_div
    on those logits."""
    ex = results["kl"]["example"]
    pair = next(p for p in S.load_pairs() if p.id == ex["id"])
    e = S.encode_pair(smol, pair)
    with torch.no_grad():
        lo, ln = smol(torch.tensor([e.opinion, e.neutral]))[:, -1]
    kl = I.kl_divergence(lo, ln).item() / math.log(2)
    ref = F.kl_div(ln.double().log_softmax(-1), lo.double().log_softmax(-1), log_target=True, reduction="sum").item()
    logp, logq = lo.double().log_softmax(-1), ln.double().log_softmax(-1)
    spread = (logp.exp() * (logp - logq).abs()).sum().item()
    tol = Tolerance(abs=2 * SMOL_LOGIT_ERR * (2 + spread) / math.log(2),
                    reason="KL in bits of two SmolLM2 float32 distributions, each log-probability within 2 logit errors")
    assert_reproduces(kl, ex["kl_bits"], tol, name="kl.example.kl_bits")
    assert kl == pytest.approx(ref / math.log(2), rel=1e-9)
    assert ex["p_syc_vs_truth_opinion"] > 0.5 > ex["p_syc_vs_truth_neutral"]  # the example flips
    measure("1c.example_kl_bits", kl)
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


def test_committed_bayes_numbers_follow_from_the_measured_rates(results, measure):
    """1C.3 (SmolLM2): the committed numbers of observations follow from the committed rates
    (p_s = opinion-form rate, p_r = neutral-form rate) by the closed forms."""
    b = results["bayes"]
    m = b["measured"]
    assert m["p_s"] == pytest.approx(b["sycophantic_opinion"] / b["n_pairs"])
    assert m["p_r"] == pytest.approx(b["sycophantic_neutral"] / b["n_pairs"])
    assert m["n_if_all_sycophantic"] == I.observations_if_all_sycophantic(0.5, m["p_s"], m["p_r"])
    assert m["wald_expected_n"] == pytest.approx(I.expected_observations(0.5, m["p_s"], m["p_r"]))
    assert b["p_flip_rate_above_half"] == pytest.approx(I.prob_flip_rate_above_half(b["discordant_b"], b["discordant_c"]))
    measure("1c.measured_n_if_all_sycophantic", m["n_if_all_sycophantic"])
    measure("1c.measured_wald_n", m["wald_expected_n"])
