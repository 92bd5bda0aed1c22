"""The gate of day 34 (ARENA 1.1: sampling, beam search, KV cache).

References: Hugging Face's logits warpers (``TemperatureLogitsWarper``, ``TopKLogitsWarper``,
``TopPLogitsWarper``) for the filters, and ``GPT2LMHeadModel.generate`` (greedy and beam search)
on a random GPT-2 whose weights our DemoTransformer carries; exhaustive search over every
continuation on a tiny vocabulary; full recomputation for the KV cache; SmolLM2-135M-Instruct's
known greedy answer for real behaviour.

Statistical tests draw 40,000 samples and apply Pearson's chi-square goodness-of-fit test against
the renormalised distribution at level 1e-4: a correct sampler fails with probability 1e-4 per
test (and the seeds are fixed, so a pass is reproducible); a sampler that ignores the
renormalisation or leaks mass outside the set is rejected with near certainty.
"""

from pathlib import Path

import pytest
import torch
from scipy import stats
from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from checks import assert_parity
from checks.committed import assert_reproduces, exact, float_ops
from checks.models import SMOLLM2_CHAT_EXAMPLE, gpt2_tokenizer, random_gpt2

from . import sampling as S

HERE = Path(__file__).parent
ALPHA = 1e-4
N_DRAWS = 40_000


pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny forward passes: one torch/BLAS thread (checks.timing)


def logits(batch, vocab, seed=0, scale=2.0):
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def draws(sampler, row, n=N_DRAWS, seed=0):
    """n independent draws from a one-row sampler (the row repeated n times, one generator)."""
    return sampler(row.expand(n, -1), torch.Generator().manual_seed(seed))


def chi_square(samples, probs, support, measure, name):
    """Pearson's chi-square of the sample counts on ``support`` against ``probs`` (renormalised there)."""
    counts = torch.bincount(samples, minlength=len(probs)).double()
    assert counts[~support].sum() == 0, f"{name}: sampled outside its set"
    expected = probs[support] / probs[support].sum() * len(samples)
    stat, p_value = stats.chisquare(counts[support].numpy(), expected.numpy())
    measure(f"{name}.chi2_p_value", float(p_value), f"> {ALPHA:g}")
    assert p_value > ALPHA, f"{name}: chi-square {stat:.1f}, p = {p_value:.2e}"


# ---------------------------------------------------------------- greedy and temperature


def test_temperature_to_zero_is_greedy(measure):
    """T = 0 is greedy_search exactly, and T → 0 converges to it: at T = 1e-3 (every top-2 gap ≥ 0.05 here,
    so a non-argmax token has probability below V·e^{-50}) all 2,000 draws equal the argmax."""
    l = logits(2000, 50, seed=1)
    top2 = l.topk(2).values
    keep = (top2[:, 0] - top2[:, 1]) > 0.05
    l = l[keep]
    ids = torch.zeros(len(l), 1, dtype=torch.long)  # the prompt does not matter without a frequency penalty
    assert torch.equal(S.sample_next_token(ids, l, temperature=0.0), l.argmax(-1))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(S.sample_next_token(ids, l, temperature=1e-3, generator=g), l.argmax(-1))
    mass = S.apply_temperature(l, 1e-3).softmax(-1).max(-1).values
    measure("T_1e-3.min_argmax_mass", mass.min(), "≥ 1 - 1e-12")
    assert (mass > 1 - 1e-12).all()
    with pytest.raises(ValueError):
        S.apply_temperature(l, 0.0)


def test_filters_match_hugging_face_warpers(measure):
    """apply_temperature, top_k_filter and top_p_filter equal Hugging Face's TemperatureLogitsWarper,
    TopKLogitsWarper and TopPLogitsWarper on 64 random rows: the same kept set and the same values."""
    l = logits(64, 100, seed=2).float()
    ids = torch.zeros(64, 1, dtype=torch.long)
    for t in (0.3, 1.0, 2.5):
        assert torch.equal(S.apply_temperature(l, t), TemperatureLogitsWarper(t)(ids, l.clone()))
    for k in (1, 5, 37, 100):
        assert torch.equal(S.top_k_filter(l, k), TopKLogitsWarper(k)(ids, l.clone()))
    sizes = []
    for p in (0.1, 0.5, 0.9, 0.99):
        ours = S.top_p_filter(l, p)
        assert torch.equal(ours, TopPLogitsWarper(p)(ids, l.clone())), p
        sizes.append(ours.isfinite().sum(-1).float().mean().item())
    measure("top_p_0.9.mean_nucleus_size", sizes[2])


def test_sampling_at_temperature_follows_softmax(measure):
    """Plain sampling at T = 2 follows softmax(ℓ / 2) (chi-square at level 1e-4, 40,000 draws)."""
    row = logits(1, 12, seed=3)
    ids = torch.zeros(N_DRAWS, 1, dtype=torch.long)
    samples = draws(lambda x, g: S.sample_next_token(ids, x, temperature=2.0, generator=g), row)
    chi_square(samples, (row[0] / 2).softmax(-1), torch.ones(12, dtype=torch.bool), measure, "temperature_2")


def test_top_k_never_leaves_its_set_and_matches_the_renormalised_distribution(measure):
    """Top-k (k = 5 of 30) samples only the 5 most likely tokens, with frequencies p_v / Σ_top-k p
    (chi-square at level 1e-4, 40,000 draws)."""
    row = logits(1, 30, seed=4)
    support = torch.zeros(30, dtype=torch.bool)
    support[row[0].topk(5).indices] = True
    samples = draws(lambda x, g: S.sample_top_k(x, 5, generator=g), row)
    chi_square(samples, row[0].softmax(-1), support, measure, "top_k_5")


def test_top_p_never_leaves_its_set_and_matches_the_renormalised_distribution(measure):
    """Top-p (p = 0.8) samples only the nucleus, the smallest most-likely set with mass ≥ 0.8 (checked
    against its definition), with frequencies renormalised over it (chi-square at level 1e-4)."""
    row = logits(1, 30, seed=5)
    probs = row[0].softmax(-1)
    order = probs.argsort(descending=True)
    size = int((probs[order].cumsum(0) < 0.8).sum()) + 1  # the first prefix whose mass reaches 0.8
    support = torch.zeros(30, dtype=torch.bool)
    support[order[:size]] = True
    assert probs[support].sum() >= 0.8 > probs[order[:size - 1]].sum()
    assert torch.equal(S.top_p_filter(row, 0.8)[0].isfinite(), support)
    samples = draws(lambda x, g: S.sample_top_p(x, 0.8, generator=g), row)
    measure("top_p_0.8.nucleus_size", size)
    chi_square(samples, probs, support, measure, "top_p_0.8")


def test_frequency_penalty_subtracts_counts():
    """The frequency penalty is ℓ_v - α·count_v(input), with counts from torch.bincount per row; with a
    large penalty sampling never repeats a token that already occurred."""
    l = logits(3, 10, seed=6)
    ids = torch.tensor([[1, 1, 2, 9], [0, 0, 0, 0], [5, 6, 7, 8]])
    expected = l - 0.7 * torch.stack([torch.bincount(r, minlength=10).double() for r in ids])
    assert_parity(S.apply_frequency_penalty(ids, l, 0.7), expected, atol=1e-15)
    model = S.random_tiny_model(d_vocab=12, seed=3)
    out = S.generate(model, torch.tensor([[0]]), 11, temperature=1.0, frequency_penalty=1e6,
                     generator=torch.Generator().manual_seed(0))
    assert len(set(out[0].tolist())) == 12


# ---------------------------------------------------------------- generation and the KV cache


def test_kv_cache_forward_equals_full_forward(measure):
    """Running a sequence in chunks through forward_with_cache gives the same logits as one full forward
    (float64, 1e-12): cached keys/values and the offset positions are exactly what recomputation gives."""
    torch.manual_seed(0)
    model = S.DemoTransformer(S.gpt2.Config(d_model=32, n_layers=3, n_heads=4, d_head=8, d_mlp=64, n_ctx=32, d_vocab=50)).double().eval()
    toks = torch.randint(0, 50, (2, 20))
    full = model(toks)
    cache, pieces = None, []
    for a, b in [(0, 7), (7, 8), (8, 15), (15, 20)]:
        out, cache = S.forward_with_cache(model, toks[:, a:b], cache)
        pieces.append(out)
    report = assert_parity(torch.cat(pieces, dim=1), full, atol=1e-12, name="kv_chunks")
    assert cache.length == 20
    measure("kv_cache_chunks.max_abs_err", report.max_abs_err, "≤ 1e-12")


KV_SETTINGS = {"greedy": dict(temperature=0.0), "sampling": dict(temperature=1.0), "top_k": dict(temperature=0.8, top_k=10),
               "top_p_penalty": dict(temperature=1.0, top_p=0.9, frequency_penalty=0.5)}


@pytest.mark.parametrize("name", KV_SETTINGS)
def test_generation_with_kv_cache_equals_generation_without(name, measure):
    """Generation with the KV cache produces the same tokens as without it, for greedy and for sampling with one
    seed, and the same next-token logits at every step (float64, 1e-12)."""
    torch.manual_seed(1)
    model = S.DemoTransformer(S.gpt2.Config(d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=64, n_ctx=64, d_vocab=40)).double().eval()
    prompt = torch.randint(0, 40, (3, 5))
    runs = [S.generate(model, prompt, 30, use_cache=c, return_logits=True,
                       generator=torch.Generator().manual_seed(7), **KV_SETTINGS[name]) for c in (True, False)]
    assert torch.equal(runs[0][0], runs[1][0])
    report = assert_parity(torch.stack(runs[0][1]), torch.stack(runs[1][1]), atol=1e-12)
    measure(f"kv_generation_{name}.max_abs_err", report.max_abs_err, "≤ 1e-12")


@pytest.fixture(scope="module")
def gpt2_pair():
    """A random 2-layer GPT-2 (Hugging Face) and our DemoTransformer with its weights."""
    tl, hf = random_gpt2(n_layers=2, d_model=64, n_heads=4, tokenizer=False)
    ours = S.DemoTransformer(S.gpt2.config_from_hooked(tl.cfg))
    S.gpt2.load_transformer_lens_state_dict(ours, convert_gpt2_weights(hf, tl.cfg))
    return ours.eval(), hf


@pytest.mark.asset("gpt2-tokenizer")
def test_greedy_generation_matches_hugging_face_generate(gpt2_pair):
    """Greedy decoding (with and without the cache) gives the same 24 tokens as GPT2LMHeadModel.generate(do_sample=False)."""
    ours, hf = gpt2_pair
    prompt = gpt2_tokenizer()("The capital of France is", return_tensors="pt").input_ids
    expected = hf.generate(prompt, max_new_tokens=24, do_sample=False, pad_token_id=0)
    for use_cache in (False, True):
        assert torch.equal(S.generate(ours, prompt, 24, temperature=0.0, use_cache=use_cache), expected)


@pytest.mark.asset("gpt2-tokenizer")
def test_cached_hugging_face_adapter_generates_the_same_tokens(gpt2_pair):
    """CachedHF (Hugging Face's KV cache behind our generate) gives the same sampled tokens, for one seed, as
    recomputing the whole prefix with the plain model at every step."""
    _, hf = gpt2_pair
    prompt = gpt2_tokenizer()(["The capital of France is", "One two three four five"], return_tensors="pt").input_ids
    runs = [S.generate(fn, prompt, 16, temperature=1.0, top_k=50, generator=torch.Generator().manual_seed(3))
            for fn in (S.CachedHF(hf), lambda ids: hf(ids).logits)]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.asset("gpt2-tokenizer")
def test_beam_search_matches_hugging_face_generate(gpt2_pair, measure):
    """Beam search (4 beams, 6 new tokens) returns the same 4 sequences, in order, as GPT2LMHeadModel.generate
    with num_beams=4 and length_penalty=0 (raw log-probability sums), and the same scores (float32, 1e-4)."""
    ours, hf = gpt2_pair
    prompt = gpt2_tokenizer()("The capital of France is", return_tensors="pt").input_ids
    out = hf.generate(prompt, max_new_tokens=6, num_beams=4, num_return_sequences=4, do_sample=False, length_penalty=0.0,
                      early_stopping=False, output_scores=True, return_dict_in_generate=True, eos_token_id=None,
                      pad_token_id=0)
    beams = S.beam_search(ours, prompt, num_beams=4, max_new_tokens=6)
    assert torch.equal(torch.stack([b for _, b in beams]), out.sequences)
    report = assert_parity(torch.tensor([s for s, _ in beams]), out.sequences_scores, atol=1e-4, name="beam_scores")
    measure("beam_vs_hf.score_max_abs_err", report.max_abs_err, "≤ 1e-4")


@pytest.mark.parametrize("d_vocab, length", [(3, 4), (4, 3), (5, 3)])
def test_beam_search_equals_exhaustive_search_on_a_tiny_vocabulary(d_vocab, length):
    """With num_beams = V^(L-1) beam search keeps every prefix, so it is exhaustive: its beams are the best
    sequences of all V^L, in order, with the same log-probability sums (float64, 1e-12); one beam is greedy."""
    for seed in range(5):
        model = S.random_tiny_model(d_vocab, seed)
        prompt = torch.tensor([[seed % d_vocab, (seed + 1) % d_vocab]])
        width = d_vocab ** (length - 1)
        beams = S.beam_search(model, prompt, width, length)
        exhaustive = S.exhaustive_search(model, prompt, length, d_vocab)
        assert len(exhaustive) == d_vocab ** length
        for (s_b, t_b), (s_e, t_e) in zip(beams, exhaustive[:width]):
            assert torch.equal(t_b, t_e) and abs(s_b - s_e) < 1e-12
        greedy = S.generate(model, prompt, length, temperature=0.0)
        assert torch.equal(S.beam_search(model, prompt, 1, length)[0][1], greedy[0])


def test_beam_search_stops_beams_at_eos():
    """A beam that emits eos leaves the live set and is returned with its score at that point."""
    model = S.random_tiny_model(4, seed=2)
    prompt = torch.tensor([[0]])
    beams = S.beam_search(model, prompt, 4, 5, eos_token_id=3)
    for score, toks in beams:
        gen = toks[1:].tolist()
        assert 3 not in gen[:-1]  # nothing continues after eos
        lp = model(toks[None, :-1]).log_softmax(-1)[0, torch.arange(len(gen)), toks[1:]].sum().item()
        assert score == pytest.approx(lp, abs=1e-12)
    scores = [s for s, _ in beams]
    assert any(t[-1] == 3 and len(t) < 6 for _, t in beams) and scores == sorted(scores, reverse=True)


def test_sample_next_token_rejects_each_invalid_setting_alone():
    """ARENA's sample_next_token asserts temperature ≥ 0, top_k ≥ 0 and 0 ≤ top_p ≤ 1: each violation, with
    the other two settings valid, raises ValueError (none may be silently ignored)."""
    rows = logits(2, 10, seed=7)
    ids = torch.zeros(2, 1, dtype=torch.long)
    for bad in (dict(temperature=-0.5), dict(top_k=-1), dict(top_p=-0.1), dict(top_p=1.5),
                dict(temperature=1.0, top_k=-3, top_p=0.5)):
        with pytest.raises(ValueError):
            S.sample_next_token(ids, rows, generator=torch.Generator().manual_seed(0), **bad)


def test_beam_width_study_gap_is_the_average_shortfall_from_the_optimum():
    """beam_width_study: the gap of one model is (exhaustive optimum) - (beam's best Σ log p) ≥ 0, zero exactly
    where beam search finds the optimum, and mean_gap (like hit_rate) is the average over the models. Recovered
    without assuming anything about the models: a study of the first n models averages n values, so model 1's
    gap is 2·mean_gap(2 models) - mean_gap(1 model), and its hit is 2·hit_rate(2) - hit_rate(1). With greedy
    (width 1) model 0 misses and model 1 hits, so a sum not divided by n leaves model 1 a non-zero gap;
    width V^(L-1) = 125 is exhaustive, so its gaps are 0."""
    one = S.beam_width_study(seeds=1, widths=(1, 125))
    two = S.beam_width_study(seeds=2, widths=(1, 125))
    for i, w in enumerate((1, 125)):
        gaps = [one["mean_gap"][i], 2 * two["mean_gap"][i] - one["mean_gap"][i]]
        hits = [one["hit_rate"][i], 2 * two["hit_rate"][i] - one["hit_rate"][i]]
        for model, (gap, hit) in enumerate(zip(gaps, hits)):
            assert hit in (0.0, 1.0) and gap >= -1e-12, (w, model, gap, hit)
            assert (abs(gap) < 1e-9) == (hit == 1.0), (w, model, gap, hit)
        if w == 1:
            assert hits == [0.0, 1.0]  # the case that gives the averaging its power (see the docstring)
        else:
            assert hits == [1.0, 1.0]


@pytest.mark.slow
def test_beam_width_study_reproduces_its_committed_numbers(committed):
    """Slow (≈40 s: 200 exhaustive searches): the whole committed beam-width study (the post's hit rates and mean
    gaps) recomputes from the code: hit rates exactly (a hit is |found - best| < 1e-9, decisions far above float64
    rounding), mean gaps to float64 rounding of sums of a few log-probabilities (absolute 1e-12)."""
    beams = committed["beam_width"]
    now = S.beam_width_study(seeds=beams["seeds"], d_vocab=beams["d_vocab"], length=beams["length"], widths=beams["widths"])
    assert_reproduces(now["hit_rate"], beams["hit_rate"], exact("hit decisions with margin ≫ rounding"), name="hit_rate")
    assert_reproduces(now["mean_gap"], beams["mean_gap"], float_ops(200, why="average of 200 log-prob differences",
                                                                    abs=1e-12), name="mean_gap")


@pytest.mark.slow
def test_smollm2_greedy_answer(asset, measure):
    """Real behaviour (slow: nine forward passes of a 135M model without a cache): greedy decoding of
    SmolLM2-135M-Instruct (through our generic generate, logits from Hugging Face) answers the chat prompt
    "What is the capital of France?" with "The capital of France is Paris." """
    from checks.models import smollm2

    asset("smollm2-135m-instruct")
    hf, tok = smollm2()
    question, answer = SMOLLM2_CHAT_EXAMPLE
    chat = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    sampler = S.TransformerSampler(lambda ids: hf(ids).logits, tok)
    text = sampler.sample(chat, max_tokens_generated=9, temperature=0.0)
    assert text[len(chat):].strip().startswith(answer)


def test_results_json_is_current(committed, measure):
    """results.json (cited by the post) matches the code: the beam-width study's first 20 models recompute to the
    same optima (hit rates: argmax decisions, compared exactly), width V^(L-1) always finds the optimum (the first 26
    models: the study takes any number of models, here more than V² = 25), and the
    KV-cache benchmark generated the same tokens both ways, faster with the cache."""
    results = committed
    beams = results["beam_width"]
    small = S.beam_width_study(seeds=26, widths=(1, beams["d_vocab"] ** (beams["length"] - 1)))
    assert small["hit_rate"][1] == 1.0 and beams["hit_rate"][beams["widths"].index(125)] == 1.0
    assert beams["hit_rate"][0] < 1.0  # greedy misses the optimum on some models
    assert results["kv_cache"]["same_tokens"] and results["kv_cache"]["speedup_total"] > 1
    assert set(results["smollm2"]["settings"]) == set(S.SETTINGS)
    for name in ("next_token_sets", "decoding_tradeoff", "beam_width", "kv_cache"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
    measure("kv_cache.speedup_total", results["kv_cache"]["speedup_total"])
    measure("beam_width.greedy_hit_rate", beams["hit_rate"][0])
