"""The gate of day 56 (ARENA 1.4.1 IOI, §4: the minimal circuit, mean ablation by template, and Wang et al.'s
faithfulness, completeness and minimality with bootstrap intervals).

References: the template means recomputed from separate runs of each template's prompts; masks built by hand; a
mean ablation written independently (hooks that set every z to its template mean); the identities of the method
(keeping every head is the model itself, exactly; ablating every head is the ABC mean baseline; K = ∅ in
completeness is faithfulness); scipy's bootstrap for the intervals. Structure and identities on the 2-layer
GPT-2-shaped random model in float64; the circuit's numbers on SmolLM2, against results.json.

Tolerances on SmolLM2: a logit difference is within 2ε of another float32 path, ε = SMOLLM2_LOGIT_REL × max|logit|
(checks/committed.py); the template means are averages of float32 activations of the same depth, so an ablated run
is another float32 path of the same kind and obeys the same bound.
"""

import copy
import importlib
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from checks import assert_parity
from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces
from checks.models import hooked_model

from . import ablation as V

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("gpt2-tokenizer", "smollm2-135m-instruct")

fixtures = importlib.import_module("days.035.fixtures")
one_thread_module, small_gpt2 = fixtures.one_thread_module, fixtures.small_gpt2
ioi, cd = V.ioi, V.cd

N_GATE = 8
SMALL_CIRCUIT = {"a": [(0, 1)], "b": [(1, 2), (1, 3)], "c": [(0, 3)]}
SMALL_POS = {"a": "end", "b": "S2", "c": "all"}


@pytest.fixture(scope="module")
def g64(small_gpt2):
    """The 2-layer, 4-head random GPT-2 in float64; 12 prompts from 3 templates (so templates repeat), their ABC
    twins."""
    model = copy.deepcopy(small_gpt2[0]).to(torch.float64)
    ds = ioi.IOIDataset("mixed", 12, model.tokenizer, seed=2, templates=[0, 5, 8])
    return model, ds, ds.gen_flipped_prompts(ioi.ABC)


def direct_means(model, abc):
    """Template means the other way: each template's prompts run on their own (unpadded, a separate batch), z
    averaged over them; returned as {template: [layer, seq, head, d_head]}."""
    out = {}
    for t in {p["template"] for p in abc.prompts}:
        rows = [i for i, p in enumerate(abc.prompts) if p["template"] == t]
        sub = abc[rows]
        with torch.no_grad():
            _, cache = model.run_with_cache(sub.toks)
        out[t] = torch.stack([cache["z", l].mean(0) for l in range(model.cfg.n_layers)])
    return out


def test_template_groups_and_means(g64, measure):
    """compute_means_by_template: the groups partition the prompts by template (ABBA and BABA twins apart); each
    prompt's row holds the mean z of its template's prompts, equal to a separate run of those prompts alone
    (1e-12, over the template's own positions)."""
    model, _, abc = g64
    groups = V.template_groups(abc)
    assert sorted(i for g in groups for i in g) == list(range(len(abc)))
    assert all(len({abc.prompts[i]["template"] for i in g}) == 1 for g in groups) and len(groups) > 1
    assert any(len(g) > 1 for g in groups)
    means = V.compute_means_by_template(abc, model)
    ref = direct_means(model, abc)
    worst = 0.0
    for i, p in enumerate(abc.prompts):
        width = abc.word_idx["end"][i] + 1
        worst = max(worst, assert_parity(means[:, i, :width], ref[p["template"]][:, :width], atol=1e-12).max_abs_err)
    measure("gpt2_float64.means_by_template_vs_separate_runs.max_abs_err", worst, "≤ 1e-12")


def test_masks_keep_each_prompts_positions(g64):
    """get_heads_and_posns_to_keep: a head of a class is kept exactly at each prompt's own position for that class
    ('end', 'S2', 'S1+1', …; 'all' = every position), and nowhere else; heads outside the circuit nowhere."""
    model, ds, abc = g64
    masks = V.get_heads_and_posns_to_keep(abc, model, SMALL_CIRCUIT, SMALL_POS)
    where = cd.word_positions(abc)
    for layer in range(2):
        expected = torch.zeros(len(abc), abc.toks.shape[1], 4, dtype=torch.bool)
        for i in range(len(abc)):
            if layer == 0:
                expected[i, where["end"][i], 1] = True
                expected[i, :, 3] = True
            else:
                expected[i, where["S2"][i], 2] = expected[i, where["S2"][i], 3] = True
        assert torch.equal(masks[layer], expected), layer
    assert len(set(where["end"].tolist())) > 1          # prompts of different lengths: positions are per prompt
    other = V.get_heads_and_posns_to_keep(abc, model, {"p": [(1, 0)]}, {"p": "S1+1"})
    assert other[1][:, :, 0].sum() == len(abc) and other[0].sum() == 0
    assert all(other[1][i, where["S1"][i] + 1, 0] for i in range(len(abc)))


def test_keeping_everything_is_the_model(g64):
    """Ablating nothing: with every head kept at every position, the hooked model's logits are the model's own
    (exactly), so faithfulness F(C)/F(M) is 1 exactly with the interval [1, 1]; the mean_ablation block leaves no
    hook behind."""
    model, ds, abc = g64
    everything = {"all": V.all_heads(model)}
    with torch.no_grad():
        clean = model(ds.toks)
    with V.mean_ablation(model, abc, everything, {"all": "all"}):
        with torch.no_grad():
            kept = model(ds.toks)
        assert len(model.hook_dict["blocks.0.attn.hook_z"].fwd_hooks) == 1
    assert torch.equal(kept, clean)
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
    ev = V.Evaluator(model, ds, abc, everything, {"all": "all"})
    f = V.faithfulness(ev, n_boot=200)
    assert f["ratio"] == {"value": 1.0, "ci": [1.0, 1.0]} and f["gap"]["value"] == 0.0


def test_ablating_everything_is_the_abc_mean_baseline(g64, measure):
    """Mean-ablating every head (the empty circuit, or C \\ C) gives the ABC mean-ablated baseline: the logit
    differences equal those of an independent ablation (every z set by hooks to its template mean from separate
    runs, 1e-12); knocking a set K out of the model (M \\ K) equals that same ablation restricted to K; completeness
    with K = ∅ is the faithfulness gap; F(∅) is far from F(M) (the ablation does something)."""
    model, ds, abc = g64
    ref_means = direct_means(model, abc)

    def set_to_means(z, hook, heads):
        for i, p in enumerate(abc.prompts):
            width = abc.word_idx["end"][i] + 1
            m = ref_means[p["template"]][hook.layer()]
            z[i, :width, heads] = m[:width, heads]
        return z

    def reference(heads_by_layer):
        hooks = [(f"blocks.{l}.attn.hook_z", partial(set_to_means, heads=hs)) for l, hs in heads_by_layer.items()]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            logits = model(ds.toks)
        return ioi.logits_to_ave_logit_diff(logits, ds.answer_tokens, per_prompt=True, end=ds.word_idx["end"])

    ev = V.Evaluator(model, ds, abc, SMALL_CIRCUIT, SMALL_POS)
    means = ev.means
    empty = V.logit_diffs(model, ds, abc, means, {}, {})
    everyone = [h for hs in SMALL_CIRCUIT.values() for h in hs]
    report = assert_parity(empty, reference({0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}), atol=1e-12)
    assert_parity(ev.of_circuit(everyone), empty, atol=1e-12)
    assert V.circuit_minus(SMALL_CIRCUIT, everyone) == {}
    assert_parity(ev.of_model([(1, 2), (0, 3)]), reference({0: [3], 1: [2]}), atol=1e-12)
    assert (ev.full() - empty).abs().max() > 1e-3
    comp = V.completeness(ev, {"empty": []}, n_boot=200)["empty"]
    assert abs(comp["incompleteness"]["value"] - abs(V.faithfulness(ev, n_boot=200)["gap"]["value"])) < 1e-12
    measure("gpt2_float64.empty_circuit_vs_independent_mean_ablation.max_abs_err", report.max_abs_err, "≤ 1e-12")


def test_minimality_and_completeness_are_wangs_differences(g64):
    """minimality: for each head v, |F(C \\ (K ∪ {v})) − F(C \\ K)| with K the rest of v's class or ∅, the larger
    reported, each equal to the difference of two ablated runs computed directly (1e-12); completeness: for each
    K, |F(C \\ K) − F(M \\ K)|; completeness_sets gives ∅, each class, and seeded random subsets of C."""
    model, ds, abc = g64
    ev = V.Evaluator(model, ds, abc, SMALL_CIRCUIT, SMALL_POS)
    mini = V.minimality(ev, n_boot=100)
    assert set(mini) == {"L0H1", "L1H2", "L1H3", "L0H3"}
    for v, K in (((1, 2), [(1, 3)]), ((0, 1), [])):
        direct = lambda ks: V.logit_diffs(model, ds, abc, ev.means, V.circuit_minus(SMALL_CIRCUIT, ks), SMALL_POS)  # noqa: E731
        gap = abs(direct(K + [v]).mean() - direct(K).mean()).item()
        assert abs(mini[cd.label(v)]["by_K"]["class" if K else "empty"]["value"] - gap) < 1e-12
    sets = V.completeness_sets(SMALL_CIRCUIT, 3, seed=1)
    assert sets == V.completeness_sets(SMALL_CIRCUIT, 3, seed=1) and list(sets)[:4] == ["empty", "class: a", "class: b", "class: c"]
    assert all(set(map(tuple, k)) <= {h for hs in SMALL_CIRCUIT.values() for h in hs} for k in sets.values())
    comp = V.completeness(ev, {"b": SMALL_CIRCUIT["b"]}, n_boot=100)["b"]
    assert abs(comp["incompleteness"]["value"] - abs(comp["F_C_minus_K"] - comp["F_M_minus_K"])) < 1e-12


TWO_HEAD_CIRCUIT = {"a": [(0, 1), (1, 0)], "b": [(0, 2)]}
TWO_HEAD_POS = {"a": "end", "b": "all"}


def test_criteria_are_their_formulas_on_a_class_of_two(g64):
    """On a circuit whose class "a" has two heads that both write to the end position (so each matters):
    minimality with K = the rest of v's class is |F(C \\ {rest, v}) − F(C \\ {rest})| (Wang et al.), its
    fraction_of_F_C is that score divided by F(C), both from ablated runs computed directly (1e-12); faithfulness'
    "normalised" is (F(C) − F(∅)) / (F(M) − F(∅)) of its own F entries (1e-12)."""
    model, ds, abc = g64
    ev = V.Evaluator(model, ds, abc, TWO_HEAD_CIRCUIT, TWO_HEAD_POS)
    direct = lambda ks: V.logit_diffs(model, ds, abc, ev.means, V.circuit_minus(TWO_HEAD_CIRCUIT, ks),  # noqa: E731
                                      TWO_HEAD_POS).mean().item()
    f_c = direct([])
    mini = V.minimality(ev, n_boot=50)
    for v, rest in (((0, 1), [(1, 0)]), ((1, 0), [(0, 1)])):
        gap = abs(direct(rest + [v]) - direct(rest))
        assert gap > 1e-6                                                 # the class row is not a trivial zero
        row = mini[cd.label(v)]
        assert abs(row["by_K"]["class"]["value"] - gap) < 1e-12
        assert abs(row["fraction_of_F_C"] - row["value"] / f_c) < 1e-12
    f = V.faithfulness(ev, n_boot=50)
    m, c, e = f["F_M"]["value"], f["F_C"]["value"], f["F_empty"]["value"]
    assert abs(c - f_c) < 1e-12
    assert f["normalised"]["value"] == pytest.approx((c - e) / (m - e), abs=1e-12)


def test_means_by_template_on_a_one_layer_model():
    """compute_means_by_template on any HookedTransformer, a one-layer one included: each prompt's row holds its
    template's mean z from a separate run of those prompts (1e-12, float64)."""
    from checks.models import random_gpt2

    model = random_gpt2(n_layers=1, d_model=32, n_heads=2, n_ctx=64)[0].to(torch.float64)
    ds = ioi.IOIDataset("mixed", 4, model.tokenizer, seed=2, templates=[0, 5])
    means = V.compute_means_by_template(ds, model)
    ref = direct_means(model, ds)
    assert means.dtype == torch.float64 and means.shape[0] == 1
    for i, p in enumerate(ds.prompts):
        width = ds.word_idx["end"][i] + 1
        assert_parity(means[:, i, :width], ref[p["template"]][:, :width], atol=1e-12)


def test_bootstrap_resamples_every_prompt():
    """bootstrap_ci resamples the prompts with replacement, each of the n equally likely: with n = 4 and the
    statistic "share of draws that are prompt j", each resample's value is Binomial(4, 1/4)/4, nonzero with
    probability 1 − (3/4)^4 ≈ 0.68, so the 97.5% percentile is > 0 and the point is 1/4, for every j (the first
    included)."""
    n = 4
    for j in range(n):
        onehot = np.zeros(n)
        onehot[j] = 1.0
        point, lo, hi = V.bootstrap_ci(np.mean, onehot, n_boot=400, seed=0)
        assert point == 0.25 and lo == 0.0 and hi >= 0.5


def test_bootstrap_interval():
    """bootstrap_ci: the percentile interval of the mean agrees with scipy.stats.bootstrap's percentile interval on
    the same sample (within the Monte Carlo error of 4000 resamples: 10% of the width), contains the point estimate,
    is reproducible by seed, and pairs its samples (the gap between a sample and itself is [0, 0]); an absolute
    gap's interval is the signed one's image under |·|, so it contains |gap| even when the gap is near zero."""
    from scipy import stats

    x = np.random.default_rng(3).normal(2.0, 1.5, size=60)
    point, lo, hi = V.bootstrap_ci(np.mean, x, n_boot=4000, seed=1)
    ref = stats.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=2).confidence_interval
    width = hi - lo
    assert abs(lo - ref.low) < 0.1 * width and abs(hi - ref.high) < 0.1 * width
    assert lo < point < hi and point == pytest.approx(x.mean(), abs=1e-12)
    assert V.bootstrap_ci(np.mean, x, n_boot=500, seed=1) == V.bootstrap_ci(np.mean, x, n_boot=500, seed=1)
    assert V.bootstrap_ci(V.mean_gap, x, x, n_boot=200)[1:] == (0.0, 0.0)
    # |gap|'s interval is the signed interval's image under |·|: it always contains |gap|
    assert V.abs_entry((0.01, -0.2, 0.3)) == {"value": 0.01, "ci": [0.0, 0.3], "signed": 0.01}
    assert V.abs_entry((-0.5, -0.7, -0.2))["ci"] == [0.2, 0.7]


# ---------------------------------------------------------------- SmolLM2 and the committed results


@pytest.fixture(scope="module")
def smol():
    """SmolLM2; the experiment's prompts and ABC twins (the means need all of them); day 55's circuit; an Evaluator
    on the first 8 prompts with the means over all the experiment's ABC prompts."""
    model = hooked_model("smollm2")
    ds, abc = ioi.build(model)
    ds, abc = ds[:V.EXPERIMENT["N"]], abc[:V.EXPERIMENT["N"]]
    circuit, pos = cd.load_circuit()
    # a template's mean needs only that template's prompts: run the experiment's ABC prompts of the gate prompts'
    # templates (the same groups as over all 64), not all of them
    templates = {p["template"] for p in abc.prompts[:N_GATE]}
    rows = [i for i, p in enumerate(abc.prompts) if p["template"] in templates]
    means = V.compute_means_by_template(abc[rows], model)
    sub, sub_abc = ds[:N_GATE], abc[:N_GATE]
    width = sub.toks.shape[1]
    pick = [rows.index(i) for i in range(N_GATE)]
    return model, V.Evaluator(model, sub, sub_abc, circuit, pos, means=means[:, pick, :width])


def test_results_json_is_current(smol, committed, measure):
    """results.json (cited by the post): the circuit is day 55's; the logit differences of the model, the circuit
    and the all-ablated model on the first 8 prompts, recomputed now (means over all 64 ABC prompts), within 2ε of
    the committed per-prompt values (the model's own also within 2ε of day 53's); every committed interval contains its point estimate; the summary is read off
    the committed tables."""
    model, ev = smol
    c = committed
    assert c["experiment"] == V.EXPERIMENT
    assert c["circuit"] == {k: [cd.label(h) for h in v] for k, v in ev.circuit.items()}
    everyone = [h for hs in ev.circuit.values() for h in hs]
    now = {"F_M": ev.full(), "F_C": ev.of_circuit(), "F_empty": ev.of_circuit(everyone)}
    tol = Tolerance(abs=2 * SMOLLM2_LOGIT_REL * max(ev.max_abs_logit, c["max_abs_logit"]),
                    reason="a difference of two SmolLM2 logits, each within ε")
    worst = 0.0
    for key, values in now.items():
        worst = max(worst, assert_reproduces(values, c["per_prompt"][key][:N_GATE], tol, name=key))
    day53 = V.day53_committed("logit_diff")[:N_GATE]
    worst = max(worst, assert_reproduces(now["F_M"], day53, tol, name="F_M vs day 53"))   # the same prompts, unablated
    intervals = [v for v in c["faithfulness"].values()] + [v["incompleteness"] for v in c["completeness"].values()] + \
        [v for v in c["minimality"].values()] + [k for v in c["minimality"].values() for k in v["by_K"].values()]
    for item in intervals:
        assert item["ci"][0] <= item["value"] <= item["ci"][1], item
    f = c["faithfulness"]
    assert abs(f["F_M"]["value"] - np.mean(c["per_prompt"]["F_M"])) < 1e-9
    assert abs(f["ratio"]["value"] - np.mean(c["per_prompt"]["F_C"]) / np.mean(c["per_prompt"]["F_M"])) < 1e-9
    mini = c["minimality"]
    assert c["summary"]["least_minimal_head"] == min(mini, key=lambda k: mini[k]["value"])
    assert (HERE / "figures/validation.png").stat().st_size > 10_000
    measure("results_vs_committed", worst, "≤ 1 (fraction of the tolerance)")


@pytest.mark.slow
def test_experiment_reproduces(tmp_path, committed, measure):
    """(slow: ~50 ablated forward passes of 64 prompts through SmolLM2) The experiment rerun: every per-prompt logit
    difference and every F(·), incompleteness and minimality value within 2ε (a mean, or the difference of two
    means, of logit differences), the ratios within the same error propagated through F(M); the bootstrap
    intervals (same seed, resampling the same prompts) within the same tolerance; the summary's choices exactly where
    their margin exceeds twice the tolerance."""
    r = V.run_experiment(tmp_path)
    c = committed
    eps = SMOLLM2_LOGIT_REL * c["max_abs_logit"]
    ld = Tolerance(abs=4 * eps, reason="a difference of two means of logit differences, each within 2ε")
    worst = assert_reproduces(r["per_prompt"], c["per_prompt"], ld, name="per_prompt")
    f_m = c["faithfulness"]["F_M"]["value"]
    base = f_m - c["faithfulness"]["F_empty"]["value"]
    ratio = Tolerance(abs=4 * eps * 3 / min(f_m, base), reason="a ratio of means of logit differences, each within "
                      "2ε, |ratio| ≤ 2: error ≤ 2ε(1 + |ratio|)/denominator")
    for key, value in c["faithfulness"].items():
        tol = ratio if key in ("ratio", "normalised") else ld
        worst = max(worst, assert_reproduces(r["faithfulness"][key], value, tol, name=key))
    for key in ("completeness", "minimality"):
        worst = max(worst, assert_reproduces(
            {k: {"value": v["incompleteness" if key == "completeness" else "by_K"]} for k, v in r[key].items()},
            {k: {"value": v["incompleteness" if key == "completeness" else "by_K"]} for k, v in c[key].items()},
            ld, name=key))
    assert r["circuit"] == c["circuit"]
    # a choice (argmax / argmin) is reproduced where its margin exceeds twice the tolerance
    for key, values, pick in (("worst_incompleteness_K", {k: v["incompleteness"]["value"] for k, v in c["completeness"].items()}, max),
                              ("least_minimal_head", {k: v["value"] for k, v in c["minimality"].items()}, min)):
        ordered = sorted(values.values(), reverse=pick is max)
        if abs(ordered[0] - ordered[1]) > 2 * ld.abs:
            assert r["summary"][key] == c["summary"][key], key
    measure("experiment_vs_committed", worst, "≤ 1 (fraction of the tolerance)")
    measure("experiment.wall_seconds", r["wall_seconds"])
