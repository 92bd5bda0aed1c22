"""The gate of day 35 (ARENA 1.2 §1: TransformerLens, run_with_cache, activation names, attention patterns).

References: TransformerLens's own ``get_act_name``, its cached ``hook_pattern`` and ``hook_rot_q``/``hook_rot_k``,
its head detector (``compute_head_attention_similarity_score``), and Hugging Face's Llama (SmolLM2) for the
rotary embedding (``apply_rotary_pos_emb``) and the attention weights of its eager attention. Models: a
GPT-2-shaped HookedTransformer with random weights and the real GPT-2 tokenizer (GPT-2 small's weights do not
exist on our machines) and SmolLM2-135M-Instruct loaded into TransformerLens.

Tolerances (float32): recomputing a pattern from the cached rotated q and k repeats TransformerLens's own
arithmetic, so 1e-6; rotating q and k ourselves changes the rounding of cos/sin (angles up to 64 rad at
float32 resolution ~4e-6), hence 1e-5 on probabilities; Hugging Face's attention runs on unfolded RMSNorm
weights and another matmul order, hence 1e-4.
"""

from pathlib import Path

import pytest
import torch
from transformer_lens.head_detector import compute_head_attention_similarity_score, get_previous_token_head_detection_pattern
from transformer_lens.utilities import get_act_name

from checks import assert_parity
from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces
from checks.models import smollm2

from . import tl_setup as T
from .fixtures import gpt2, one_thread_module, small_gpt2, smol_gate_run  # noqa: F401 (fixtures)

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("gpt2-tokenizer", "smollm2-135m-instruct", "wikitext-2")


@pytest.fixture(scope="module")
def smol(smol_gate_run):
    return smol_gate_run


@pytest.fixture(scope="module")
def smol_accuracy(smol):
    model, tokens, _, _ = smol
    return T.next_token_accuracy(model, tokens)


@pytest.fixture(scope="module")
def hf_eager(smol):
    """Hugging Face's SmolLM2 on the same tokens, eager attention (so that it returns its attention weights)."""
    hf, _ = smollm2()
    hf.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return hf(smol[1], output_attentions=True)
    finally:
        hf.set_attn_implementation("sdpa")


def test_act_name_matches_transformer_lens(gpt2, smol):
    """Activation names: act_name gives every hook name a run_with_cache records (GPT-2 and SmolLM2, incl.
    rot_q/rot_k, ln scales, mlp pre_linear) and equals TransformerLens's get_act_name on each."""
    _, _, _, smol_cache = smol
    _, gpt2_cache = gpt2.run_with_cache(gpt2.to_tokens("Hello world"))
    names = [n for n in list(gpt2_cache.keys()) + list(smol_cache.keys()) if not n.startswith("unembed.")]
    assert {"blocks.0.attn.hook_rot_q", "blocks.29.mlp.hook_pre_linear", "ln_final.hook_scale"} <= set(names)
    for full in names:
        short, layer, sublayer = T.parse_act_name(full)
        assert T.act_name(short, layer, sublayer) == full
        assert get_act_name(short, layer, sublayer) == full
    assert T.act_name("pattern", 3) == "blocks.3.attn.hook_pattern" and T.act_name("resid_pre", 0) == "blocks.0.hook_resid_pre"
    with pytest.raises(ValueError):
        T.act_name("scale", 2)  # a block has two norms: say which


def test_run_with_cache_records_every_hook_with_its_shape(gpt2):
    """run_with_cache: the logits equal a plain forward pass exactly; every HookPoint is recorded; residual
    activations are [batch, pos, d_model], q/k/v/z [batch, pos, head, d_head], patterns are causal
    probability distributions over keys (rows sum to 1, zero above the diagonal)."""
    tokens = gpt2.to_tokens(["The cat sat on the mat", "A dog ran in the park!"])
    logits, cache = gpt2.run_with_cache(tokens)
    assert torch.equal(logits, gpt2(tokens))
    # every HookPoint fires except those behind off-by-default flags (use_attn_result, use_split_qkv_input, ...)
    optional = {"attn.hook_result", "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in"}
    assert set(cache.keys()) <= set(gpt2.hook_dict)
    assert {n for n in gpt2.hook_dict if n not in cache.keys()} == {f"blocks.{l}.{o}" for l in range(2) for o in optional}
    b, p = tokens.shape
    cfg = gpt2.cfg
    for l in range(cfg.n_layers):
        for name in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"):
            assert cache[T.act_name(name, l)].shape == (b, p, cfg.d_model)
        for name in ("q", "k", "v", "z"):
            assert cache[T.act_name(name, l)].shape == (b, p, cfg.n_heads, cfg.d_head)
        assert cache[T.act_name("post", l)].shape == (b, p, cfg.d_mlp)
        pattern = cache[T.act_name("pattern", l)]
        assert pattern.shape == (b, cfg.n_heads, p, p)
        assert_parity(pattern.sum(-1), torch.ones(b, cfg.n_heads, p), atol=1e-6)
        assert torch.equal(pattern.triu(1), torch.zeros_like(pattern))
    # the residual stream is a sum: resid_post = resid_pre + attn_out + mlp_out
    assert_parity(cache["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_pre"] + cache["blocks.1.hook_attn_out"]
                  + cache["blocks.1.hook_mlp_out"], atol=1e-5)


def test_smollm2_keys_are_cached_per_key_value_head(smol):
    """Grouped-query attention in SmolLM2: hook_q has 9 heads but hook_k, hook_v, hook_rot_k hold the 3 key/value
    heads, not repeated; TransformerLens's W_K property repeats them with repeat_interleave (query head h uses
    key head h // 3), which repeat_kv reproduces exactly."""
    model, tokens, _, cache = smol
    b, p = tokens.shape
    assert cache["blocks.0.attn.hook_q"].shape == (b, p, 9, 64)
    for name in ("k", "v", "rot_k"):
        assert cache[T.act_name(name, 0)].shape == (b, p, 3, 64)
    attn = model.blocks[0].attn
    assert attn._W_K.shape == (3, 576, 64) and attn.W_K.shape == (9, 576, 64)
    stacked = T.repeat_kv(attn._W_K.permute(1, 0, 2)[None], 9)[0].permute(1, 0, 2)  # heads on axis 2 as in hook_k
    assert torch.equal(stacked, attn.W_K)


def test_parameter_counts_differ_by_what_transformer_lens_adds_and_folds(smol):
    """TransformerLens's SmolLM2 has exactly d_vocab·(d_model + 1) + n_layers·(biases) − (2·n_layers + 1)·d_model
    more parameters than Hugging Face's: its own unembedding W_U and b_U (Llama ties W_U to the embedding), zero
    biases b_Q, b_K, b_V, b_O, b_in, b_out that Llama lacks, minus the 61 RMSNorm weight vectors it folds away."""
    model = smol[0]
    hf, _ = smollm2()
    c = model.cfg
    n_kv = c.n_key_value_heads
    biases = c.n_heads * c.d_head + 2 * n_kv * c.d_head + c.d_model + c.d_mlp + c.d_model
    expected = c.d_vocab * (c.d_model + 1) + c.n_layers * biases - (2 * c.n_layers + 1) * c.d_model
    assert T.model_facts(model)["n_parameters"] - sum(p.numel() for p in hf.parameters()) == expected


def test_pattern_recomputed_from_q_and_k_equals_cache_random_gpt2(gpt2, measure):
    """The attention pattern recomputed from the cached hook_q and hook_k (scaled by 1/sqrt(d_head), causal
    mask, softmax) equals the cached hook_pattern in every layer of a random GPT-2 (atol 1e-6)."""
    tokens = gpt2.to_tokens("When Mary and John went to the store, John gave a drink to Mary")
    _, cache = gpt2.run_with_cache(tokens)
    worst = 0.0
    for l in range(gpt2.cfg.n_layers):
        report = assert_parity(T.recompute_pattern(gpt2, cache, l), cache[T.act_name("pattern", l)], atol=1e-6)
        worst = max(worst, report.max_abs_err)
    measure("gpt2.recomputed_pattern.max_abs_err", worst, "≤ 1e-6")


def test_pattern_recomputed_from_q_and_k_equals_cache_smollm2(smol, measure):
    """On SmolLM2 (rotary, GQA) in all 30 layers: the pattern from hook_rot_q/hook_rot_k with the key heads
    repeated equals hook_pattern (1e-6), and so does the pattern from the unrotated hook_q/hook_k rotated by our
    apply_rotary (1e-5). Sharing key heads the wrong way (tiling instead of interleaving) is caught."""
    model, _, _, cache = smol
    worst = {"cached": 0.0, "ours": 0.0}
    for l in range(model.cfg.n_layers):
        cached = cache[T.act_name("pattern", l)]
        for way, tol in (("cached", 1e-6), ("ours", 1e-5)):
            report = assert_parity(T.recompute_pattern(model, cache, l, way), cached, atol=tol, name=f"L{l} {way}")
            worst[way] = max(worst[way], report.max_abs_err)
    measure("smollm2.recomputed_pattern_rot_hooks.max_abs_err", worst["cached"], "≤ 1e-6")
    measure("smollm2.recomputed_pattern_our_rotary.max_abs_err", worst["ours"], "≤ 1e-5")
    q, k = cache["blocks.5.attn.hook_rot_q"], cache["blocks.5.attn.hook_rot_k"]
    tiled = T.causal_pattern(q, k.repeat(1, 1, 3, 1), model.cfg.attn_scale)
    assert (tiled - cache["blocks.5.attn.hook_pattern"]).abs().max() > 0.1


def test_rotary_matches_hugging_face_and_is_relative(smol, measure):
    """apply_rotary is Hugging Face's Llama rotary: with the same cos/sin, apply_rotary_pos_emb rotates q and k
    exactly as we do (float64, 1e-12: the same pairs i, i + 32 and the same signs), and our float64 angles agree
    with LlamaRotaryEmbedding's float32 ones to within its rounding, p·2⁻²³ ≤ 1.5e-5 for positions p < 128.
    Rotated dot products depend only on the relative position (float64, 1e-10)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = smol[0]
    hf, _ = smollm2()
    base = model.cfg.rotary_base
    assert base == hf.config.rope_parameters["rope_theta"] == 1e5  # the post's b = 10^5
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 128, 9, 64, generator=g, dtype=torch.float64)
    k = torch.randn(2, 128, 3, 64, generator=g, dtype=torch.float64)
    cos, sin = T.rotary_cos_sin(128, 64, base, dtype=torch.float64)
    q_hf, k_hf = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos[None], sin[None])
    report = assert_parity(T.apply_rotary(q, base), q_hf.transpose(1, 2), atol=1e-12, name="rotary_q")
    assert_parity(T.apply_rotary(k, base), k_hf.transpose(1, 2), atol=1e-12)
    measure("rotary_vs_hugging_face.max_abs_err", report.max_abs_err, "≤ 1e-12")
    cos_hf, sin_hf = hf.model.rotary_emb(q.float(), torch.arange(128)[None])
    angle_report = assert_parity(torch.cat([cos, sin], -1), torch.cat([cos_hf[0], sin_hf[0]], -1), atol=128 * 2**-23)
    measure("rotary_cos_sin_vs_hugging_face_float32.max_abs_err", angle_report.max_abs_err, "≤ 1.5e-5")
    x = torch.randn(1, 1, 1, 64, generator=g, dtype=torch.float64).expand(1, 40, 1, 64)  # the same q at every position
    y = torch.randn(1, 1, 1, 64, generator=g, dtype=torch.float64).expand(1, 40, 1, 64)  # the same k at every position
    dots = (T.apply_rotary(x, base) * T.apply_rotary(y, base)).sum(-1)[0, :, 0]  # q(p)·k(p): offset 0 everywhere
    assert_parity(dots, dots[0].expand(40), atol=1e-10)
    z = torch.randn(1, 40, 1, 64, generator=g, dtype=torch.float64)
    assert_parity(T.apply_rotary(z, base, offset=7), T.apply_rotary(torch.cat([z[:, :7], z], 1), base)[:, 7:], atol=1e-12)


def test_patterns_match_hugging_face_eager_attention(smol, hf_eager, measure):
    """TransformerLens's SmolLM2 attends like Hugging Face's: hook_pattern equals the eager attention weights of
    LlamaForCausalLM (output_attentions=True) in every layer (atol 1e-4)."""
    _, _, _, cache = smol
    attentions = hf_eager.attentions
    worst = max(assert_parity(cache[T.act_name("pattern", l)], a, atol=1e-4).max_abs_err for l, a in enumerate(attentions))
    measure("smollm2.pattern_vs_hugging_face.max_abs_err", worst, "≤ 1e-4")


def test_next_token_accuracy(smol, smol_accuracy, hf_eager, gpt2, measure):
    """ARENA's exercise: the fraction of positions where the argmax prediction is the next token. On WikiText-2
    SmolLM2's accuracy equals Hugging Face's argmax accuracy (to one near-tie in 126) and is far above a random
    model's (< 2%)."""
    model, tokens, logits, _ = smol
    accuracy, correct = smol_accuracy
    assert correct.shape == (tokens.shape[0], tokens.shape[1] - 1)
    assert torch.equal(correct, logits[:, :-1].argmax(-1) == tokens[:, 1:])
    hf_acc = (hf_eager.logits[:, :-1].argmax(-1) == tokens[:, 1:]).float().mean().item()
    assert abs(accuracy - hf_acc) <= 1 / correct.numel() + 1e-9
    random_acc, _ = T.next_token_accuracy(gpt2, T.wikitext_tokens(gpt2.tokenizer, **T.GATE_CORPUS))
    measure("smollm2.wikitext_accuracy", accuracy, "> 0.3")
    measure("random_gpt2.wikitext_accuracy", random_acc, "< 0.02")
    assert accuracy > 0.3 and random_acc < 0.02


def test_wikitext_detokenizer_and_corpus(smol):
    """The corpus: WikiText-2's tokenization is undone (" @-@ " joins, no space before punctuation, headings
    lose their "=" marks, <unk> stays), and the gate corpus is 2 windows of 64 consecutive tokens that decode
    back to the start of the validation split."""
    assert T.wikitext_detokenize(" = = Life cycle = = ") == "Life cycle"
    assert T.wikitext_detokenize(" = Homarus gammarus = ") == "Homarus gammarus"
    assert (T.wikitext_detokenize(' It is 3 @.@ 1 m ( 10 ft ) long , red @-@ tipped ; " <unk> " isn \'t . ')
            == 'It is 3.1 m (10 ft) long, red-tipped; "<unk>" isn\'t.')
    model, tokens, _, _ = smol
    assert tokens.shape == (2, 64)
    text = model.tokenizer.decode(tokens.flatten())
    assert text.startswith("Homarus gammarus\nHomarus gammarus, known as the European lobster")


def test_wikitext_tokens_are_the_running_text_of_any_split_file(smol, tmp_path):
    """wikitext_tokens on a split file of its own (path=): the tokens decode to the file's non-blank lines,
    detokenized, each ending in a newline, from the first line on; exactly as many tokens as the file has are
    served, one more is a clear error."""
    tok = smol[0].tokenizer
    lines = ["First line , here .", "", " = Heading = ", "Last line ."]
    (tmp_path / "wikitext-2-valid.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    text = "First line, here.\nHeading\nLast line.\n"
    total = len(tok(text, add_special_tokens=False)["input_ids"])
    tokens = T.wikitext_tokens(tok, 1, total, path=tmp_path)
    assert tok.decode(tokens.flatten()) == text
    assert tok.decode(T.wikitext_tokens(tok, 2, 3, path=tmp_path).flatten()) == tok.decode(tokens[0, :6])
    with pytest.raises(ValueError, match=f"has only {total} tokens, {total + 1} requested"):
        T.wikitext_tokens(tok, 1, total + 1, path=tmp_path)


def test_diagonal_scores_on_constructed_patterns():
    """The detectors on patterns with known answers: the identity is a pure current-token head, the shifted
    identity a pure previous-token head, attention to position 0 a pure first-token head; on a sequence
    repeated with period n, the stripe at offset n - 1 from query n + 1 on is the induction score."""
    n = 12
    eye = torch.eye(n)
    prev = torch.zeros(n, n)
    prev[0, 0] = 1
    prev[torch.arange(1, n), torch.arange(n - 1)] = 1
    first = torch.zeros(n, n)
    first[:, 0] = 1
    # (current, previous, first); query 1's previous token is position 0, so a previous-token head puts
    # 1 of its n - 1 scored rows on the first token (and a first-token head 1 on the previous token)
    for pattern, expected in ((eye, (1, 0, 0)), (prev, (0, 1, 1 / (n - 1))), (first, (0, 1 / (n - 1), 1))):
        scores = (T.diagonal_attention(pattern, 0), T.diagonal_attention(pattern, 1), T.first_token_attention(pattern))
        assert [s.item() for s in scores] == pytest.approx(expected, abs=1e-7)
    uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    assert T.first_token_attention(uniform).item() == pytest.approx(sum(1 / (i + 1) for i in range(1, n)) / (n - 1))
    half = 5  # [BOS, r1..r5, r1..r5]: query 5 + j attends to key j + 1
    induction = torch.zeros(11, 11)
    induction[:6, 0] = 1
    induction[torch.arange(6, 11), torch.arange(2, 7)] = 1
    assert T.diagonal_attention(induction, half - 1, first_query=half + 1).item() == 1.0
    assert T.detect_heads(torch.tensor([[0.1, 0.9], [0.6, 0.2]]), 0.5) == ["0.1", "1.0"]
    assert T.detect_heads(torch.tensor([[0.5, 0.9], [0.25, 0.2]]), 0.5) == ["0.1"]   # "exceeds": 0.5 is not above 0.5
    # head_detector_scores: [layer, batch, head, q, k] patterns, one detector per head, averaged over the batch
    patterns = torch.stack([eye, prev, first])[None, None].expand(2, 3, 3, n, n)
    scores = T.head_detector_scores(patterns)
    assert {k: v.shape for k, v in scores.items()} == {k: (2, 3) for k in ("current", "previous", "first")}
    assert scores["current"][0].tolist() == pytest.approx([1, 0, 0], abs=1e-7)
    assert scores["previous"][1].tolist() == pytest.approx([0, 1, 1 / (n - 1)], abs=1e-7)
    assert scores["first"][0].tolist() == pytest.approx([0, 1 / (n - 1), 1], abs=1e-7)


def test_previous_token_score_equals_transformer_lens_head_detector(smol, measure):
    """Our previous-token score equals TransformerLens's head detector ("mul" score with its previous-token
    detection pattern) for all 270 SmolLM2 heads, after converting its normalisation: the detector divides the
    attention on the stripe by all N rows, we average over the N - 1 rows that have a previous token (1e-6)."""
    model, tokens, _, cache = smol
    n = tokens.shape[1]
    detection = get_previous_token_head_detection_pattern(tokens[:1])
    patterns = torch.stack([cache[T.act_name("pattern", l)] for l in range(model.cfg.n_layers)])
    ours = T.diagonal_attention(patterns[:, 0], 1)  # first sequence: [layer, head]
    theirs = torch.tensor([[compute_head_attention_similarity_score(patterns[l, 0, h], detection, exclude_bos=False,
                                                                      exclude_current_token=False, error_measure="mul")
                            for h in range(model.cfg.n_heads)] for l in range(model.cfg.n_layers)])
    report = assert_parity(ours, theirs * n / (n - 1), atol=1e-6)
    measure("previous_token_score_vs_head_detector.max_abs_err", report.max_abs_err, "≤ 1e-6")


def test_detectors_find_heads_in_smollm2_not_in_a_random_model(smol, gpt2, committed, measure):
    """The detectors find structure in a trained model: SmolLM2 has a previous-token head scoring > 0.7 and
    first-token (attention-sink) heads > 0.9 on WikiText-2, where no head of a random GPT-2 reaches 0.5 on
    either; the strongest heads agree with the experiment's larger corpus (results.json)."""
    model, tokens, _, cache = smol
    scores = T.head_detector_scores(torch.stack([cache[T.act_name("pattern", l)] for l in range(model.cfg.n_layers)]))
    random_scores = T.head_detector_scores(T.cached_patterns(gpt2, T.wikitext_tokens(gpt2.tokenizer, **T.GATE_CORPUS)))
    prev, first = T.top_head(scores["previous"]), T.top_head(scores["first"])
    measure("smollm2.top_previous_token_score", prev[2], "> 0.7")
    measure("smollm2.top_first_token_score", first[2], "> 0.9")
    measure("random_gpt2.top_previous_token_score", T.top_head(random_scores["previous"])[2], "< 0.5")
    assert prev[2] > 0.7 and first[2] > 0.9
    assert random_scores["previous"].max() < 0.5 and random_scores["first"].max() < 0.5
    recorded = committed["top_heads"]  # an argmax over heads: the runner-up scores 0.14 lower, far above rounding
    assert (prev[0], prev[1]) == (recorded["previous"]["layer"], recorded["previous"]["head"])


# A SmolLM2 logit's float32 error on another CPU, relative to the logits' scale: derived in checks/committed.py.
SMOL_LOGIT_ERR = 30 * SMOLLM2_LOGIT_REL


def accuracy_tolerance(logits, n_predictions: int) -> Tolerance:
    """An argmax accuracy can move by one prediction per near-tie: a top-2 gap below twice a logit's error."""
    top2 = logits[:, :-1].topk(2, dim=-1).values
    near_ties = int((top2[..., 0] - top2[..., 1] < 2 * SMOL_LOGIT_ERR).sum())
    return Tolerance(abs=near_ties / n_predictions + 1e-6,  # + the float32 rounding of the mean itself
                     reason=f"{near_ties} of {n_predictions} argmax predictions have a top-2 gap below twice "
                            f"SmolLM2's float32 logit error ({2 * SMOL_LOGIT_ERR:.1e})")


def test_results_json_is_current(smol, smol_accuracy, committed):
    """results.json (cited by the post) comes from this code: SmolLM2's facts, Hugging Face's parameter count and
    both corpora (exactly), the
    gate corpus's accuracy (recomputed now: a count of argmax hits, which may differ by the near-ties, predictions
    whose top-2 logits are within twice SmolLM2's float32 error, SMOL_LOGIT_ERR), exact recomputation errors within
    the gate's bounds, and both figures."""
    model, tokens, logits, _ = smol
    results = committed
    assert results["facts"] == T.model_facts(model)
    assert results["hf_n_parameters"] == sum(p.numel() for p in smollm2()[0].parameters())
    assert results["gate_corpus"] == T.GATE_CORPUS and results["corpus"] == T.EXPERIMENT_CORPUS
    accuracy, correct = smol_accuracy
    assert_reproduces(accuracy, results["gate_accuracy"], accuracy_tolerance(logits, correct.numel()), name="gate_accuracy")
    assert results["recompute_max_abs_err"]["cached"] <= 1e-6 and results["recompute_max_abs_err"]["ours"] <= 1e-5
    assert 0.3 < results["accuracy"] < 1
    for name in ("head_scores", "attention_patterns"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000


def score_tolerance(scores_max_abs: float) -> float:
    """A head score is a mean of attention probabilities; a softmax moves each probability by at most twice the
    largest error of the scores it normalises, and a score's float32 error is SMOLLM2_LOGIT_REL × the layer's
    largest |score| (the same depth of rounding as a logit)."""
    return 2 * SMOLLM2_LOGIT_REL * scores_max_abs


@pytest.mark.slow
def test_experiment_reproduces_what_the_post_cites(committed, measure):
    """The experiment recomputed on its 16×128 WikiText-2 tokens (every number the post cites from results.json):
    SmolLM2's greedy accuracy (within the near-ties of accuracy_tolerance), and the three detectors' maps: the
    strongest head of each kind and its score, the number of first-token heads above 0.5 and how many sit before
    layer 12, and layer 0's scores. A score is within score_tolerance of the largest |attention score| of its
    layer; a count may move by the heads within that tolerance of 0.5; the strongest head is the committed one up
    to the tolerances (its score within both of the maximum)."""
    from checks.models import smollm2_hooked

    model = smollm2_hooked()
    results = committed
    tokens = T.wikitext_tokens(model.tokenizer, **T.EXPERIMENT_CORPUS)
    hits, near, patterns, scale = 0, 0, [], torch.zeros(model.cfg.n_layers)
    for chunk in tokens.split(4):
        with torch.no_grad():
            logits, cache = model.run_with_cache(chunk, names_filter=lambda n: n.endswith(("hook_pattern", "hook_attn_scores")))
        hits += T.next_token_accuracy(model, chunk)[1].sum().item()
        top2 = logits[:, :-1].topk(2, dim=-1).values
        near += int((top2[..., 0] - top2[..., 1] < 2 * SMOL_LOGIT_ERR).sum())
        patterns.append(torch.stack([cache[T.act_name("pattern", l)] for l in range(model.cfg.n_layers)]))
        for l in range(model.cfg.n_layers):
            s = cache[T.act_name("attn_scores", l)]
            scale[l] = max(scale[l], s[s.isfinite()].abs().max())
    n = tokens[:, 1:].numel()
    measure("slow.accuracy", hits / n)
    assert abs(hits / n - results["accuracy"]) <= near / n + 1e-6
    scores = T.head_detector_scores(torch.cat(patterns, 1))
    tol = torch.tensor([score_tolerance(s) for s in scale.tolist()])[:, None].expand(-1, model.cfg.n_heads)
    measure("slow.score_tolerance.max", tol.max())
    for name, values in scores.items():
        layer, head, value = T.top_head(values)
        recorded = results["top_heads"][name]
        l, h = recorded["layer"], recorded["head"]
        assert value - values[l, h] <= tol[layer, head] + tol[l, h], f"{name}: L{l}H{h} is not the strongest head"
        assert abs(values[l, h] - recorded["score"]) <= tol[l, h]
        measure(f"slow.{name}.lead_over_runner_up", value - values.flatten().topk(2).values[1])
        assert_reproduces(values[0], results["layer0_scores"][name], Tolerance(abs=tol[0].max().item(),
                          reason="layer 0's largest |attention score| × 2 SMOLLM2_LOGIT_REL"), name=f"layer0_scores.{name}")
    first = scores["first"]
    ambiguous = (first - 0.5).abs() <= tol
    above = first > 0.5
    assert abs(int(above.sum()) - results["n_heads_above_half"]["first"]) <= int(ambiguous.sum())
    assert abs(int(above[:12].sum()) - results["first_heads_above_half_before_layer_12"]) <= int(ambiguous[:12].sum())
    measure("slow.first_heads_within_tolerance_of_half", int(ambiguous.sum()))
