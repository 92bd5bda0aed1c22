"""The gate of day 48 (ARENA 1.3.3 SAEs: interpreting latents).

References: torch.topk and explicit slicing for the indexing helpers; scikit-learn's roc_auc_score,
precision_score and recall_score for the detection scores; Hugging Face's SmolLM2 (final RMSNorm weight and
lm_head) for show_top_logits; sae-lens's own SAE with its error term and a hook on hook_sae_acts_post for latent
ablation; TransformerLens's generate for steering at coefficient 0.

The gate never reads the headline SAE of day 47 (tens of minutes to train): it trains a small TopK SAE on 16
windows in its module fixture (seconds) and checks the tools on it. The written explanations belong to the
headline SAE; the gate checks that they are well formed and that results.json is consistent with them, and the
slow test reruns the whole experiment on the headline SAE (trained and cached on first use).
"""

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from checks import assert_parity
from checks.committed import assert_reproduces, exact, statistical

from . import features as Fe

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("smollm2-135m-instruct", "wikitext-2", "tinyshakespeare")

fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module
S = Fe.sae_train

GATE = S.TrainConfig(d_sae=512, k=16, batch_size=128, steps=100, lr=3e-3, dead_steps=50)


@pytest.fixture(scope="module")
def model():
    from checks.models import hooked_model

    return hooked_model("smollm2")


@pytest.fixture(scope="module")
def setup(model):
    """A small TopK SAE trained on 16 windows of 64 tokens (WikiText-2 valid, Tiny Shakespeare), and 4 held-out
    windows of WikiText-2 test with their residual streams."""
    tok = model.tokenizer
    train_tokens = S.mixed_tokens(tok, [("wikitext-valid", 8), ("shakespeare", 8)], seq_len=64)
    train_acts = S.resid_activations(model, train_tokens)
    sae, _ = S.train_ours(S.non_sink(train_acts), GATE, log_freq=50)
    return sae, train_tokens, train_acts


def test_get_k_largest_indices_against_topk_and_its_greedy_definition():
    """ARENA 1.3.3, get_k_largest_indices: without no_overlap, the k largest of x away from the edges (the ±buffer
    window fits), as torch.topk finds them on x with its edges masked; with no_overlap, ARENA's greedy rule: each
    chosen index is the largest element not within buffer of an earlier choice in the same sequence."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 30, generator=g)
    b, k = 3, 10
    masked = x.clone()
    masked[:, :b] = masked[:, -b:] = -torch.inf
    ref = masked.flatten().topk(k).indices
    got = Fe.get_k_largest_indices(x, k, buffer=b, no_overlap=False)
    assert torch.equal(got[:, 0] * x.shape[1] + got[:, 1], ref)
    chosen = Fe.get_k_largest_indices(x, k, buffer=b, no_overlap=True)
    assert chosen.shape == (k, 2)
    allowed = torch.isfinite(masked)
    for r, c in chosen.tolist():
        assert allowed[r, c] and x[r, c] == x[allowed].max()
        allowed[r, max(0, c - b):c + b + 1] = False
    assert not torch.equal(chosen, got)              # this x has near neighbours among its top 10: the rule matters
    # no buffer: simply the k largest, edges included
    plain = Fe.get_k_largest_indices(x, k, buffer=0, no_overlap=False)
    assert torch.equal(plain[:, 0] * x.shape[1] + plain[:, 1], x.flatten().topk(k).indices)
    edge = torch.zeros(1, 20)
    edge[0, [8, 11, 15]] = torch.tensor([5.0, 4.0, 3.0])  # 11 is exactly buffer = 3 from 8: it overlaps
    assert Fe.get_k_largest_indices(edge, 2, buffer=3).tolist() == [[0, 8], [0, 15]]


def test_index_with_buffer_is_slicing():
    """ARENA 1.3.3, index_with_buffer: x at each (seq, pos), or the 2·buffer + 1 elements around it, as explicit
    slicing gives them; near an end the window is shifted to fit (ARENA clamps the centre)."""
    x = torch.arange(5 * 20).reshape(5, 20)
    idx = torch.tensor([[0, 5], [3, 10], [4, 3], [1, 16]])
    assert torch.equal(Fe.index_with_buffer(x, idx), torch.stack([x[r, c] for r, c in idx.tolist()]))
    assert torch.equal(Fe.index_with_buffer(x, idx, buffer=3), torch.stack([x[r, c - 3:c + 4] for r, c in idx.tolist()]))
    edges = torch.tensor([[2, 1], [0, 19], [1, 3], [3, 16]])  # windows that would run off an end are shifted to fit
    assert torch.equal(Fe.index_with_buffer(x, edges, buffer=3), torch.stack([x[2, 0:7], x[0, 13:20], x[1, 0:7], x[3, 13:20]]))


def test_max_activating_examples_are_the_latent_on_the_model(model, setup, measure):
    """ARENA 1.3.3, fetch_max_activating_examples and display_top_seqs: for the gate SAE's most frequent latent, the
    k scores are its largest activations over the corpus (non-overlapping, largest first); each score is the latent
    recomputed from a fresh run_with_cache of that window at that position; the window's middle string token is the
    token there, and display_top_seqs marks exactly it."""
    sae, tokens, acts = setup
    lat = Fe.latent_activations(model, sae, tokens, acts=acts)
    latent = int((lat > 0).sum((0, 1)).argmax())
    data = Fe.fetch_max_activating_examples(model, sae, tokens, latent, k=5, buffer=4)
    scores = [d[0] for d in data]
    assert scores == sorted(scores, reverse=True) and scores[0] == lat[..., latent].max().item()
    idx = Fe.get_k_largest_indices(lat[..., latent], 5, buffer=4)
    for (score, toks, pos), (r, c) in zip(data, idx.tolist()):
        _, cache = model.run_with_cache(tokens[r:r + 1], names_filter=[S.HOOK], stop_at_layer=S.LAYER + 1)
        again = sae.encode(cache[S.HOOK][0, c])[latent].item()
        assert abs(again - score) <= 1e-5 * abs(score), (again, score)
        assert toks[pos] == model.tokenizer.decode([tokens[r, c].item()]) and len(toks) == 9
    lines = Fe.display_top_seqs(data).splitlines()
    assert len(lines) == 5 and all(f"⟦{d[1][4]}⟧".replace("\n", "⏎") in line for d, line in zip(data, lines))
    hist = Fe.show_activation_histogram(lat[..., latent])
    fired = lat[..., latent] > 0
    assert sum(hist["counts"]) == int(fired.sum()) and hist["frac_active"] == fired.float().mean().item()
    measure("gate.latent_frequency", hist["frac_active"])


def test_show_top_logits_is_the_decoder_through_hugging_faces_unembedding(model, setup):
    """ARENA 1.3.3, show_top_logits: the tokens the latent's decoder direction d promotes directly, d W_U. Hugging
    Face's SmolLM2 computes it as (d ⊙ g) lm_headᵀ with g the final RMSNorm's weight (TransformerLens folds g into
    W_U and centres W_U over the vocabulary, which shifts every logit of one latent by one constant): the same top
    and bottom tokens, and the same values once both are centred (1e-4 relative to the largest)."""
    from checks.models import hf_model

    sae, _, _ = setup
    hf, _ = hf_model("smollm2")
    for latent in (0, 7, 100):
        ours = Fe.show_top_logits(model, sae, latent, k=10)
        d = Fe.decoder_direction(sae, latent).detach()
        with torch.no_grad():
            ref = (d * hf.model.norm.weight) @ hf.lm_head.weight.T
        ref = ref - ref.mean()
        decode = model.tokenizer.decode
        for key, largest in (("top", True), ("bottom", False)):
            values, indices = ref.topk(10, largest=largest)
            assert [t for t, _ in ours[key]] == [decode([i]) for i in indices.tolist()]
            assert_parity(torch.tensor([v for _, v in ours[key]]), values, atol=1e-4 * ref.abs().max().item())


def test_latent_ablation_equals_sae_lens_with_its_error_term(model, setup, measure):
    """ARENA 1.3.3, latent ablation: zeroing latent i with the SAE's error term kept is x ↦ x − a_i(x)·d_i (decoder
    row in model units). sae-lens's own SAE (ours loaded into its TopKSAE, use_error_term=True, a hook on
    hook_sae_acts_post zeroing the latent) returns the same activations (1e-5 × ‖x‖); a latent that fires nowhere
    changes nothing; ablation_effect is the loss difference of two runs."""
    sae, tokens, acts = setup
    x = acts[:4]
    lat = sae.encode(x)
    latent = int((lat > 0).sum((0, 1)).argmax())
    ours = Fe.latent_ablation_hook(x, None, sae, latent, exclude_sinks=False)
    theirs = S.to_sae_lens_inference(sae)
    with pytest.warns(DeprecationWarning):
        theirs.use_error_term = True

    def zero(a, hook):
        a = a.clone()
        a[..., latent] = 0.0
        return a

    theirs.hook_sae_acts_post.add_hook(zero)
    with torch.no_grad():
        ref = theirs(x)
    theirs.reset_hooks()
    norm = x.norm(dim=-1, keepdim=True)
    report = assert_parity(ours / norm, ref / norm, atol=1e-5, name="ablated / ‖x‖")
    measure("ablation_vs_sae_lens.max_rel_err", report.max_abs_err, "≤ 1e-5")
    W = sae.W_dec.detach()
    assert_parity((x - ours) / norm, lat[..., latent:latent + 1] / sae.scale * W[latent] / norm, atol=1e-5)
    silent = int((lat == 0).all(0).all(0).nonzero()[0]) if (lat == 0).all(0).all(0).any() else None
    if silent is not None:
        assert torch.equal(Fe.latent_ablation_hook(x, None, sae, silent, exclude_sinks=False), x)
    effect = Fe.ablation_effect(model, sae, tokens[:2, :32], latent)
    assert effect.shape == (2, 31) and effect.abs().max() > 0
    # loss(ablated) − loss(clean), each recomputed here with cross_entropy on the model's logits
    from functools import partial

    import torch.nn.functional as F

    t = tokens[:2, :32]
    with torch.no_grad():
        clean = F.cross_entropy(model(t)[:, :-1].flatten(0, 1).float(), t[:, 1:].flatten(), reduction="none")
        hooked = model.run_with_hooks(t, fwd_hooks=[(Fe.HOOK, partial(Fe.latent_ablation_hook, sae=sae,
                                                                        latent_idx=latent))])
        ablated = F.cross_entropy(hooked[:, :-1].flatten(0, 1).float(), t[:, 1:].flatten(), reduction="none")
    assert_parity(effect.flatten(), ablated - clean, atol=1e-5)


def test_steering_adds_the_decoder_direction(model, setup):
    """ARENA 1.3.3, steering_hook and generate_with_steering: the hook adds c × the unit decoder direction at every
    position; at c = 0 greedy generation equals TransformerLens's plain generate; with a large c the SAE reads its
    own latent back as active at every position."""
    sae, _, acts = setup
    x = acts[:2, 1:]
    lat = sae.encode(x)
    latent = int((lat > 0).sum((0, 1)).argmax())
    d = Fe.decoder_direction(sae, latent)
    assert abs(d.norm().item() - 1) < 1e-6
    steered = Fe.steering_hook(x, None, sae, latent, 5.0)
    assert_parity(steered - x, (5.0 * d).expand_as(x), atol=1e-4)
    assert (sae.encode(Fe.steering_hook(x, None, sae, latent, 50 * x.norm(dim=-1).max().item()))[..., latent] > 0).all()
    prompt = "The weather today is"
    plain = model.generate(prompt, max_new_tokens=6, do_sample=False, verbose=False, prepend_bos=False)
    zero = Fe.generate_with_steering(model, sae, prompt, latent, 0.0, max_new_tokens=6, do_sample=False,
                                     prepend_bos=False)
    assert zero == plain


def test_detection_scores_equal_sklearn():
    """The detection test of an explanation: AUROC of the latent's activation against the explanation's marks (ties
    in the activation, mostly zeros, count ½) equals scikit-learn's roc_auc_score; precision P(fires | marked) and
    recall P(marked | fires) equal precision_score and recall_score with "fires" as the truth; R-precision is the
    fraction marked among the n_marked largest activations (numpy's stable argsort); masked tokens are left out."""
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    g = torch.Generator().manual_seed(0)
    labels = torch.rand(8, 50, generator=g) < 0.2
    acts = torch.where(torch.rand(8, 50, generator=g) < 0.7, 0.0, torch.rand(8, 50, generator=g).round(decimals=1))
    acts = acts + labels * (torch.rand(8, 50, generator=g) < 0.6) * 0.5
    mask = torch.rand(8, 50, generator=g) > 0.1
    got = Fe.detection_scores(acts, labels, mask)
    a, y = acts[mask].numpy(), labels[mask].numpy()
    assert abs(got["auroc"] - roc_auc_score(y, a)) < 1e-12
    assert abs(got["precision"] - precision_score(a > 0, y)) < 1e-12
    assert abs(got["recall"] - recall_score(a > 0, y)) < 1e-12
    assert got["n_tokens"] == int(mask.sum()) and got["n_marked"] == int(y.sum())
    n = int(y.sum())
    top = np.argsort(-a, kind="stable")[:n]
    assert got["r_precision"] == y[top].mean()


def test_rules_mark_tokens_in_context():
    """An explanation as data: Rule(token, before, not_before) marks a token whose stripped text fullmatches
    ``token`` when the text of the preceding window contains ``before`` and not ``not_before``; rule_labels applies
    it to every token; keyword_rule marks exactly the token texts at a latent's top activations."""
    toks = [" The", " king", " of", " France", ",", " the", " King", " said"]
    assert Fe.rule_labels(Fe.Rule(token="king"), [toks]).tolist() == [[False, True, False, False, False, False, True, False]]
    assert Fe.Rule(token="king", before=r"France")(toks, 6) and not Fe.Rule(token="king", before="France")(toks, 1)
    assert not Fe.Rule(token="said", not_before="King")(toks, 7)
    assert Fe.Rule(token=r"\s", keep_space=True)([" "], 0) and not Fe.Rule(token=r"\s")([" "], 0)
    acts = torch.zeros(1, 8)
    acts[0, [1, 6]] = torch.tensor([2.0, 1.0])
    rule = Fe.keyword_rule(acts, [toks], n_top=2)
    assert Fe.rule_labels(rule, [toks]).tolist() == [[False, True, False, False, False, False, True, False]]


def test_choose_latents_is_seeded_and_in_range():
    """The latents to explain are chosen before looking at them: a seeded random draw among latents whose firing
    frequency lies in [low, high]; the same seed gives the same draw."""
    freq = torch.linspace(0, 0.1, 200, dtype=torch.float64)
    a = Fe.choose_latents(freq, 12, 0.01, 0.05, seed=0)
    assert a == Fe.choose_latents(freq, 12, 0.01, 0.05, seed=0) != Fe.choose_latents(freq, 12, 0.01, 0.05, seed=1)
    assert len(set(a)) == 12 and all(0.01 <= freq[i] <= 0.05 for i in a)
    # both ends of [low, high] are in range
    assert Fe.choose_latents(torch.tensor([0.01, 0.02, 0.05, 0.051, 0.0099]), 5, 0.01, 0.05, seed=0) == [0, 1, 2]


def test_autointerp_prompt_and_no_call_without_a_key(model, setup, monkeypatch):
    """ARENA 1.3.3, autointerp: create_prompt lists the latent's top-k examples, numbered, each with exactly the
    activating token marked <<like this>>, under ARENA's system message, and prefills the reply "This latent fires
    on"; get_autointerp_explanation sends it to a frontier model only when an API key is set, and says so
    otherwise (no network call is ever made here)."""
    sae, tokens, acts = setup
    lat = Fe.latent_activations(model, sae, tokens, acts=acts)
    latent = int((lat > 0).sum((0, 1)).argmax())
    prompt = Fe.create_prompt(model, sae, tokens, latent, k=4, buffer=3, latent_acts=lat[..., latent])
    data = Fe.fetch_max_activating_examples(model, sae, tokens, latent, k=4, buffer=3, latent_acts=lat[..., latent])
    lines = prompt["user"].split("\n\n", 1)[1].split("\n")
    assert len(lines) == 4 or all(line.count("<<") == 1 for line in lines)
    for i, (_, toks, pos) in enumerate(data):
        assert prompt["user"].count(f"{i + 1}. ") >= 1 and f"<<{toks[pos]}>>" in prompt["user"]
    assert "activates" in prompt["system"] and prompt["assistant"] == "This latent fires on"
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(Fe.ApiKeyMissing):
        Fe.get_autointerp_explanation(model, sae, tokens, latent)
    with pytest.raises(Fe.ApiKeyMissing):                         # a provider named, but no key for it
        Fe.get_autointerp_explanation(model, sae, tokens, latent, provider="anthropic")
    # the paid API cannot be reached here: urlopen is replaced by a stand-in that records the request and answers as
    # the Messages API does; the request carries the prompt and the default model, the reply continues the prefill
    import urllib.request

    sent = []

    class Reply:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return json.dumps({"content": [{"text": " the word 'the'. "}]}).encode()

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout: sent.append(request) or Reply())
    out = Fe.get_autointerp_explanation(model, sae, tokens, latent, k=4, buffer=3)
    body = json.loads(sent[0].data)
    assert sent[0].full_url == "https://api.anthropic.com/v1/messages" and sent[0].headers["X-api-key"] == "test-key"
    assert body["model"] == "claude-sonnet-4-5" and body["messages"][-1]["content"] == prompt["assistant"]
    assert out == ["This latent fires on the word 'the'."]


def test_keyword_rule_and_decoder_direction_and_histogram():
    """keyword_rule lists the tokens at the latent's top activations, only where it fires (> 0), matched as written
    (case-sensitive); decoder_direction is the unit decoder row whatever its norm; show_activation_histogram titles
    its axis (by default "activations")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acts = torch.zeros(2, 4)
    acts[0, 1], acts[1, 3] = 2.0, 1.0
    toks = [[" a", " Cat", " b", " c"], [" d", " e", " f", " Dog"]]
    rule = Fe.keyword_rule(acts, toks, n_top=20)
    assert [rule(t, i) for t in toks for i in range(4)] == [False, True, False, False, False, False, False, True]
    assert not rule([" cat"], 0)

    class Stub:
        W_dec = torch.tensor([[3.0, 4.0], [0.0, 2.0]])

    assert Fe.decoder_direction(Stub(), 0).tolist() == pytest.approx([0.6, 0.8])
    fig, ax = plt.subplots()
    Fe.show_activation_histogram(acts, ax=ax)
    assert ax.get_title() == "activations"
    Fe.show_activation_histogram(acts, ax=ax, title="latent 7")
    assert ax.get_title() == "latent 7"
    plt.close(fig)


def test_explanations_are_written_as_rules():
    """The day's deliverable: explanations for at least 10 latents of the headline SAE, each a sentence and the same
    claim as an executable rule whose regular expressions compile, for distinct latents."""
    import re

    assert len(Fe.EXPLANATIONS) >= 10
    for latent, e in Fe.EXPLANATIONS.items():
        assert e.latent == latent and len(e.text) > 10
        for rule in e.rule.rules if isinstance(e.rule, Fe.AnyOf) else (e.rule,):
            for pattern in (rule.token, rule.before, rule.not_before):
                if pattern is not None:
                    re.compile(pattern)
    either = Fe.AnyOf((Fe.Rule(token="king"), Fe.Rule(token="of", before="king$")))
    assert Fe.rule_labels(either, [[" the", " king", " of", " of"]]).tolist() == [[False, True, True, False]]


def test_results_json_is_current(committed):
    """results.json (cited by the post) belongs to today's explanations: the latents are the explained ones and were
    the seeded choice; each explanation's text and rule as written in features.py; the medians are those of the
    per-latent AUROCs; the figures exist."""
    r = committed
    assert r["latents"] == sorted(Fe.EXPLANATIONS) == r["chosen"]
    assert r["choice"] == Fe.CHOICE and r["heldout_parts"] == [list(p) for p in Fe.HELDOUT_PARTS]
    for latent, e in Fe.EXPLANATIONS.items():
        entry = r["per_latent"][str(latent)]
        assert entry["explanation"] == e.text
        assert entry["rule"] == json.loads(json.dumps(Fe.rule_spec(e.rule)))
    for key, kind in (("median_auroc", "detection"), ("median_keyword_auroc", "keyword_detection"),
                      ("median_mismatched_auroc", "mismatched_detection")):
        values = [r["per_latent"][str(i)][kind]["auroc"] for i in r["latents"]]
        assert_reproduces(r[key], float(np.median(values)), exact("the median of the committed values"), name=key)
    for name in ("detection", "histograms"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
    json.dumps(r)


@pytest.mark.slow
def test_experiment_reproduces_the_headline(tmp_path, committed, measure):
    """(slow: minutes with day 47's SAE cached, about an hour without) The whole experiment on the headline SAE: the
    written explanations predict where their latents fire on held-out text (median AUROC ≥ 0.8, at least 10
    latents), better than the other latent's explanation (median ≤ 0.6), and every number the post cites within a
    float32 run's spread (statistical: 0.02 in AUROC)."""
    r = Fe.run_experiment(tmp_path)
    measure("slow.median_auroc", r["median_auroc"], "≥ 0.8")
    assert len(r["latents"]) >= 10 and r["median_auroc"] >= 0.8 and r["median_mismatched_auroc"] <= 0.6
    for key in ("median_auroc", "median_keyword_auroc", "median_mismatched_auroc"):
        assert_reproduces(r[key], committed[key], statistical(0.02, why="a float32 SAE and model"), name=key)
    assert r["latents"] == committed["latents"]
