"""The gate of day 44 (ARENA 1.3.2 Function Vectors, sections 2-3: h, average indirect effects, function vectors).

References: plain PyTorch hooks on the same Hugging Face model (what nnsight's calculate_h, intervene_with_h,
the average indirect effect and intervene_with_fn_vector's generation must equal: hidden_states, a forward hook
adding a vector, pre-hooks reading and writing o_proj's input), o_proj's weight for the function vector's closed
form, and statsmodels' Wilson interval. (Day 43 already checks nnsight's patching against TransformerLens.)

Tolerances. nnsight runs the Hugging Face model itself: its tensors equal a hooked Hugging Face run to 1e-5
(measured 0). A committed number recomputed on another CPU: a logit within ε = SMOLLM2_LOGIT_REL × max|logit|
(checks/committed.py), a log-probability within 2ε; a committed accuracy is a count of argmaxes, exact where
every argmax's margin over the runner-up exceeds 2ε, else off by at most the fraction of prompts within it.
"""

import importlib
from pathlib import Path

import pytest
import torch

from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces
from checks.models import hf_model

from . import func_vectors as F

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("smollm2-135m-instruct")

fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module


@pytest.fixture(scope="module")
def lm():
    return F.as_lm("smollm2")


@pytest.fixture(scope="module")
def hf():
    return hf_model("smollm2")[0]


@pytest.fixture(scope="module")
def icl(lm):
    """Three antonym ICL prompts with two demonstrations each, from the held-in words."""
    held_in, _ = F.split_pairs(F.word_pairs("antonyms", lm.tokenizer))
    return F.ICLDataset(held_in, size=3, n_prepended=2, seed=5)


class AddAtLast:
    """A Hugging Face forward hook that adds a vector to a decoder block's output at the last position."""

    def __init__(self, vector):
        self.vector = vector

    def __call__(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, -1] += self.vector
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def hooked_hf(hf, layer, vector):
    return hf.model.layers[layer].register_forward_hook(AddAtLast(vector))


def test_calculate_h_is_the_mean_final_hidden_state(lm, hf, icl, measure):
    """calculate_h: h_l is the mean over the ICL prompts of Hugging Face's hidden_states[l+1] at the final position
    (1e-5, the same model run), and the predictions are the argmax of Hugging Face's final logits, decoded."""
    tokens = F.tokenize(lm, icl.prompts)
    with torch.no_grad():
        out = hf(tokens, output_hidden_states=True)
    worst = 0.0
    for l in (4, 19):
        predicted, h = F.calculate_h(lm, icl, l)
        worst = max(worst, (h - out.hidden_states[l + 1][:, -1].mean(0)).abs().max().item())
    assert worst <= 1e-5
    assert predicted == [lm.tokenizer.decode([int(i)]) for i in out.logits[:, -1].argmax(-1)]
    assert torch.equal(F.calculate_hs(lm, icl, [4, 19])[19], h)   # the several-layer version, one forward pass
    measure("calculate_h_vs_hf.max_abs_err", worst, "≤ 1e-5")


def test_intervene_with_h_equals_a_hugging_face_hook(lm, hf, icl):
    """intervene_with_h: the zero-shot predictions without h are the plain model's; with h they are those of
    the Hugging Face model with a forward hook adding h to block l's output at the last position; the logits of
    final_logits_with agree with the hooked model's to 1e-5. Adding h changes some logits (it is not a no-op)."""
    held_in, _ = F.split_pairs(F.word_pairs("antonyms", lm.tokenizer))
    zs = F.zero_shot_dataset(held_in[:12])
    assert all(p == f"Q: {x}\nA:" for p, (x, _) in zip(zs.prompts, held_in[:12]))
    _, h = F.calculate_h(lm, icl, 9)
    plain, intervened = F.intervene_with_h(lm, zs, h, 9)
    tokens = F.tokenize(lm, zs.prompts)
    handle = hooked_hf(hf, 9, h)
    try:
        with torch.no_grad():
            hooked = hf(tokens).logits[:, -1]
    finally:
        handle.remove()
    with torch.no_grad():
        clean = hf(tokens).logits[:, -1]
    decode = lambda ids: [lm.tokenizer.decode([int(i)]) for i in ids]  # noqa: E731
    assert plain == decode(clean.argmax(-1)) and intervened == decode(hooked.argmax(-1))
    assert (F.final_logits_with(lm, tokens, 9, h) - hooked).abs().max() <= 1e-5
    assert (hooked - clean).abs().max() > 1.0


def o_proj_input(hf, tokens, layer):
    """The input of block ``layer``'s o_proj on ``tokens``, captured by a plain Hugging Face forward pre-hook."""
    seen = []
    handle = hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            logits = hf(tokens).logits[:, -1]
    finally:
        handle.remove()
    return seen[0], logits


def test_average_indirect_effect_matches_hugging_face_hooks(lm, hf, icl, measure):
    """calculate_fn_vectors_and_intervene: a head's AIE equals the one computed with plain Hugging Face hooks:
    o_proj's input captured on the clean prompts, its final-position slice for head h averaged, written into the
    corrupted run's o_proj input for that head by a pre-hook, mean change in log p(correct); two heads of layer
    20 (1e-5: the same model, the same float32 path)."""
    heads = [0, 4]
    ours = F.calculate_fn_vectors_and_intervene(lm, icl, [20], heads)[0]
    clean = F.tokenize(lm, icl.prompts)
    corrupted = F.tokenize(lm, icl.create_corrupted_dataset().prompts)
    answers = F.answer_ids(lm, icl)
    z_clean, _ = o_proj_input(hf, clean, 20)
    z_mean = z_clean[:, -1].mean(0)
    base = F.correct_logprob(o_proj_input(hf, corrupted, 20)[1], answers)
    theirs = []
    for h in heads:
        def patch(module, args, h=h):
            z = args[0].clone()
            z[:, -1, h * 64:(h + 1) * 64] = z_mean[h * 64:(h + 1) * 64]
            return (z,)
        handle = hf.model.layers[20].self_attn.o_proj.register_forward_pre_hook(patch)
        try:
            with torch.no_grad():
                logits = hf(corrupted).logits[:, -1]
        finally:
            handle.remove()
        theirs.append((F.correct_logprob(logits, answers) - base).mean())
    theirs = torch.stack(theirs)
    err = (ours - theirs).abs().max().item()
    assert err <= 1e-5 and (ours.max() - ours.min()) > 0.05
    measure("aie_vs_hf_hooks.max_abs_err", err, "≤ 1e-5")


def test_calculate_fn_vector_is_its_closed_form(lm, hf, icl, measure):
    """calculate_fn_vector (through block l's own o_proj module, run by nnsight) equals its closed form
    Σ z̄_{l,h} W_O^{l,h}, with z̄ from o_proj's input captured by a plain Hugging Face hook and W_O^{l,h} the
    column block h of o_proj.weight (1e-5); it is additive over disjoint sets of heads, and far from zero."""
    heads = [(10, 2), (10, 5), (21, 1)]
    fv = F.calculate_fn_vector(lm, icl, heads)
    tokens = F.tokenize(lm, icl.prompts)
    z = {l: o_proj_input(hf, tokens, l)[0][:, -1].mean(0) for l in (10, 21)}
    closed = sum(z[l][h * 64:(h + 1) * 64] @ hf.model.layers[l].self_attn.o_proj.weight[:, h * 64:(h + 1) * 64].T
                 for l, h in heads)
    err = (fv - closed).abs().max().item()
    assert err <= 1e-5
    parts = F.calculate_fn_vector(lm, icl, heads[:2]) + F.calculate_fn_vector(lm, icl, heads[2:])
    assert (parts - fv).abs().max() <= 1e-5 and fv.norm() > 0.1
    measure("fn_vector_vs_closed_form.max_abs_err", err, "≤ 1e-5")


def test_top_heads_ranks_by_aie():
    """top_heads: the k largest entries of the AIE grid, largest first, with their (layer, head), the layer read
    from the list of layers the grid covers."""
    aie = torch.tensor([[0.1, 0.5, -1.0], [0.7, 0.0, 0.2]])
    assert F.top_heads(aie, 3) == [(1, 0), (0, 1), (1, 2)]
    assert F.top_heads(aie, 2, layers=[4, 9]) == [(9, 0), (4, 1)]


def test_intervene_with_fn_vector_equals_hugging_face_generate(lm, hf, icl):
    """intervene_with_fn_vector: the completion without the vector is Hugging Face's greedy generate; with it, the
    greedy generate of the model with a forward hook adding the vector at block l's last position on every
    forward pass (prompt, then each new token); the vector changes the text."""
    fv = F.calculate_fn_vector(lm, icl, [(10, 2), (14, 3)])
    word, layer, n = "hot", 8, 4
    without, with_ = F.intervene_with_fn_vector(lm, word, layer, 8 * fv, n_tokens=n)
    tokens = F.tokenize(lm, ['The word "hot" means'])
    with torch.no_grad():
        plain = hf.generate(tokens, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        handle = hooked_hf(hf, layer, 8 * fv)
        try:
            steered = hf.generate(tokens, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        finally:
            handle.remove()
    decode = lambda ids: lm.tokenizer.decode(ids[0, tokens.shape[1]:])  # noqa: E731
    assert without == decode(plain) and with_ == decode(steered)
    assert with_ != without and word


def test_paired_bootstrap_interval():
    """The paired bootstrap interval of a gain contains the observed gain, is (0, 0) for identical outcomes, and
    lies above 0 when one arm wins every pair. (The Wilson interval is day 40's, tested there against scipy.)"""
    a = torch.tensor([0., 1, 0, 1, 0, 0, 1, 0])
    b = torch.tensor([1., 1, 0, 1, 1, 0, 1, 1])
    lo, hi = F.paired_bootstrap(a, b)
    assert lo <= (b - a).mean() <= hi and F.paired_bootstrap(a, a) == (0.0, 0.0)
    assert F.paired_bootstrap(torch.zeros(12), torch.ones(12))[0] == 1.0
    # a 95% percentile interval: scipy.stats.bootstrap's (percentile method, 10,000 resamples, its own draws) to
    # within bootstrap noise (the interval's ends move by ~0.005 between seeds; a 90% interval would be 0.06 narrower)
    import numpy as np
    from scipy.stats import bootstrap

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, generator=g, dtype=torch.float64), torch.randn(30, generator=g, dtype=torch.float64)
    ref = bootstrap(((b - a).numpy(),), np.mean, n_resamples=10_000, method="percentile", confidence_level=0.95,
                    random_state=1).confidence_interval
    assert np.allclose(F.paired_bootstrap(a, b), (ref.low, ref.high), atol=0.02)
    # every item can be drawn: one losing pair (the first) among 19 winning ones pulls the lower end below 1
    assert F.paired_bootstrap(torch.zeros(20), torch.tensor([-10.0] + [1.0] * 19))[0] < 1.0


def count_tolerance(logits, answers, eps):
    """An accuracy over these prompts reproduces exactly unless an argmax is within 2ε of its runner-up (then each
    such prompt can move it by 1/n)."""
    top2 = logits.topk(2).values
    near = int(((top2[:, 0] - top2[:, 1]) <= 2 * eps).sum())
    return Tolerance(abs=near / len(answers) + 1e-12, reason=f"{near} argmaxes within rounding of the runner-up")


def test_results_json_is_current(lm, committed, measure):
    """results.json (cited by the post): the held-out zero-shot accuracy without a vector and with the function
    vector (recomputed from the committed top heads on the committed ICL prompts) at its best layer and scale,
    each recomputed within its count tolerance (h's sweep is recomputed by the slow test); the function vector's norm within
    an activation's float32 error; the Wilson intervals follow from the counts; the figure exists."""
    r = committed
    cfg = r["experiment"]
    assert cfg == F.EXPERIMENT and r["layers"] == list(range(30))
    task = r["tasks"][cfg["tasks"][0]]
    held_in, held_out = F.split_pairs(F.word_pairs(cfg["tasks"][0], lm.tokenizer), cfg["seed"])
    icl = F.ICLDataset(held_in, cfg["icl_size"], cfg["n_prepended"], seed=cfg["seed"])
    zs = F.zero_shot_dataset(held_out)
    tokens, answers = F.tokenize(lm, zs.prompts), F.answer_ids(lm, zs)
    heads = [(e["layer"], e["head"]) for e in task["top_heads"]]
    fv = F.calculate_fn_vector(lm, icl, heads)
    worst = 0.0
    for key, layer, vector in (("zero_shot_out", None, None),
                               ("fv_best_out", task["fv_best_layer"], task["fv_best_scale"] * fv)):
        logits = F.final_logits_with(lm, tokens, layer, vector)
        eps = SMOLLM2_LOGIT_REL * logits.abs().max().item()
        acc = (logits.argmax(-1) == answers).float().mean().item()
        worst = max(worst, assert_reproduces(acc, task[key], count_tolerance(logits, answers, eps), name=key))
    n = task["n_held_out"]
    assert n == len(held_out)
    assert_reproduces(task["fv_best_out_ci"], F.P40.wilson_interval(round(task["fv_best_out"] * n), n),
                      Tolerance(abs=1e-12, reason="a formula of an integer count"), name="fv_best_out_ci")
    assert_reproduces(fv.norm().item(), task["fn_vector_norm"],
                      Tolerance(rel=SMOLLM2_LOGIT_REL, reason="a sum of head outputs: an activation's float32 error"),
                      name="fn_vector_norm")
    assert task["generations_display"] == [{k: F.display(v) for k, v in g.items()} for g in task["generations"]]
    assert (HERE / "figures/function_vectors.png").stat().st_size > 10_000
    measure("results_vs_committed", worst, "≤ 1 (fraction of the tolerance)")


@pytest.mark.slow
def test_experiment_reproduces(tmp_path, committed):
    """(slow, ~20 min on a busy 2-core machine) The whole experiment rerun: every accuracy within a statistical
    tolerance of one prompt in 50 per layer (argmaxes can flip within rounding), every AIE within 4ε, the same top
    heads; and the headline: on held-out words the function vector at its (held-in) best layer raises zero-shot
    antonym accuracy, with a paired bootstrap interval of the gain above zero."""
    from checks.committed import statistical

    r = F.run_experiment(tmp_path)
    first = committed["experiment"]["tasks"][0]
    for task in committed["experiment"]["tasks"]:
        for key in ("zero_shot_out", "h_accuracy_out", "h_accuracy_in"):
            assert_reproduces(r["tasks"][task][key], committed["tasks"][task][key],
                              statistical(0.02 + 1e-9, why="an accuracy: a prompt in ~50 may flip within rounding"),
                              name=f"{task}.{key}")
    eps = SMOLLM2_LOGIT_REL * 40  # |logit| ≤ 40 on these prompts
    assert_reproduces(r["tasks"][first]["aie"], committed["tasks"][first]["aie"],
                      Tolerance(abs=4 * eps, reason="an indirect effect: 4ε"), name="aie")
    # the top-k set is a decision: the same set whenever the k-th and (k+1)-th AIE differ by more than 8ε
    flat = torch.tensor(committed["tasks"][first]["aie"]).flatten().sort(descending=True).values
    k = committed["experiment"]["k_heads"]
    if flat[k - 1] - flat[k] > 8 * eps:
        assert {(e["layer"], e["head"]) for e in r["tasks"][first]["top_heads"]} == \
            {(e["layer"], e["head"]) for e in committed["tasks"][first]["top_heads"]}
    t = r["tasks"][first]
    assert t["fv_best_out"] > t["zero_shot_out"] and t["fv_gain_out_ci"][0] > 0
