"""The gate of day 98: the analysis of day 97's preregistered experiment.

Spec (issue 17, day 098): "the analysis exactly as preregistered, plus what was exploratory marked as such; effect
sizes with CIs, a robustness check (seeds, prompt sets), and what would change the conclusion." Here: every
preregistered hypothesis is analysed with the test the preregistration names, and nothing else is confirmatory;
each p-value, AUROC and interval is recomputed from the raw outcomes against independent references (an exact
enumeration of the signed-rank null distribution and scipy's wilcoxon, scikit-learn's roc_auc_score, a per-resample
loop for the paired bootstrap and scipy.stats.bootstrap, statsmodels' Holm); exploratory results are labelled;
R1–R3 are present; the "what would change" numbers are checked at their boundaries.
"""

import importlib

import numpy as np
import pytest

from checks.committed import Tolerance, assert_reproduces, exact, float_ops, statistical

P = importlib.import_module("days.098.prereg_analysis")
E97 = importlib.import_module("days.097.early_warning")


@pytest.fixture(scope="module")
def prereg():
    return E97.load_prereg()


@pytest.fixture(scope="module")
def raw():
    """Day 97's raw outcomes, through day 97's module."""
    return E97.raw_outcomes()


@pytest.fixture(scope="module")
def rerun(raw, tmp_path_factory):
    """The whole analysis recomputed from the raw outcomes (into a temporary folder)."""
    return P.run_experiment(tmp_path_factory.mktemp("a98"), raw=raw)


def _signed_rank_exact_p(d) -> float:
    """P(T+ >= t) under H0 by counting the 2^n sign patterns with a dynamic programme over rank sums (no ties)."""
    d = np.asarray(d, float)
    d = d[d != 0]
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    t = int(ranks[d > 0].sum())
    n = len(d)
    counts = np.zeros(n * (n + 1) // 2 + 1, dtype=object)
    counts[0] = 1
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[:-r].copy()
    return float(sum(counts[t:]) / 2 ** n)


def test_every_preregistered_hypothesis_is_analysed_with_its_named_test(committed, prereg):
    """Spec: "the analysis exactly as preregistered": the hypotheses analysed are the preregistration's, each with
    the test its text names, on the models its metric names, at its alpha; the preregistration is unchanged."""
    ids = [h["id"] for h in prereg["hypotheses"]]
    assert list(P.HYPOTHESES) == ids and list(committed["confirmatory"]) == ids
    for h in prereg["hypotheses"]:
        test, pos, neg = P.HYPOTHESES[h["id"]]
        assert P.TEST_WORDS[test] in h["test"], h["id"]
        assert pos in h["metric"] + h["prediction"] and neg in h["metric"] + h["prediction"]
        assert committed["confirmatory"][h["id"]]["alpha"] == h["alpha"]
        assert committed["preregistered_tests"][h["id"]] == h["test"]
    assert committed["prereg"]["unchanged_since_run"] and committed["prereg"]["sha256_now"] == E97.prereg_sha256()


def test_nothing_confirmatory_outside_the_prereg_and_exploratory_is_labelled(committed, prereg):
    """Spec: "plus what was exploratory marked as such": confirmatory holds only H1–H3, exploratory carries its
    label, robustness holds exactly the preregistered checks."""
    assert set(committed["confirmatory"]) == {h["id"] for h in prereg["hypotheses"]}
    assert committed["exploratory"]["label"].startswith("EXPLORATORY")
    assert set(committed["robustness"]) == set(prereg["analysis_plan"]["robustness"]) - {"agreement_rule"} | {
        "agreement"}
    for r in P.ROBUSTNESS:
        assert set(committed["robustness"][r]["hypotheses"]) == set(committed["confirmatory"])


def test_inputs_are_day_97s_raw_outcomes(committed, raw, prereg):
    """The analysed score vectors are day 97's committed per-prompt outcomes (primary set, layer, direction)."""
    L, s = prereg["direction"]["primary_layer"], prereg["direction"]["seed"]
    for m, v in committed["inputs"].items():
        assert v["wb"] == raw["raw"]["primary"][m]["wb"][str(s)][str(L)]
        assert v["bb"] == [float(x) for x in raw["raw"]["primary"][m]["flags"]]
    assert committed["prereg"]["sha256_at_run"] == raw["prereg"]["sha256"]


def test_wilcoxon_p_values_against_exact_enumeration_and_scipy(committed):
    """H1, H3: the one-sided signed-rank p recomputed with scipy from the raw differences, and equal to an exact
    enumeration of the null distribution (n = 48 without zeros or ties: scipy's 'auto' is exact)."""
    from scipy.stats import wilcoxon

    for h in ("H1", "H3"):
        _, pos, neg = P.HYPOTHESES[h]
        d = np.array(committed["inputs"][pos]["wb"]) - np.array(committed["inputs"][neg]["wb"])
        ref = wilcoxon(d, alternative="greater").pvalue
        tol = float_ops(100, why="a sum of 2^48 counts and a division in float64")
        assert_reproduces(committed["confirmatory"][h]["p"], ref, tol, name=h)
        assert_reproduces(P.wilcoxon_greater(d), ref, tol, name=h + " recomputed")
        assert P.wilcoxon_greater(-d) > 0.5
        if len(set(np.abs(d))) == len(d) and np.all(d != 0):
            assert_reproduces(_signed_rank_exact_p(d), ref, tol, name=h + " exact")


def test_aurocs_and_bootstrap_intervals_against_references(committed, prereg):
    """Effect sizes: AUROC against sklearn's roc_auc_score; the paired percentile CI against a per-resample loop
    (same index draws, sklearn AUROC) exactly, and against scipy.stats.bootstrap(paired) within Monte Carlo error."""
    from scipy.stats import bootstrap
    from sklearn.metrics import roc_auc_score

    b = prereg["bootstrap"]
    _, pos_m, neg_m = P.HYPOTHESES["H1"]
    pos, neg = np.array(committed["inputs"][pos_m]["wb"]), np.array(committed["inputs"][neg_m]["wb"])
    auc = roc_auc_score([1] * len(pos) + [0] * len(neg), np.concatenate([pos, neg]))
    tol = Tolerance("a mean of 2304 comparisons in float64", abs=float_ops(2304).rel)
    assert_reproduces(committed["confirmatory"]["H1"]["auroc"], auc, tol, name="auroc")
    idx = P.resample_indices(len(pos), 300, b["seed"])
    assert idx.shape == (300, len(pos)) and set(np.unique(idx)) == set(range(len(pos)))   # with replacement, all n
    loop = [roc_auc_score([1] * len(pos) + [0] * len(neg), np.concatenate([pos[i], neg[i]])) for i in idx]
    np.testing.assert_allclose(P.bootstrap_aurocs(pos, neg, 300, b["seed"]), loop, rtol=1e-12)
    g = np.random.default_rng(3)                                  # coarse scores: many ties, which count one half
    tied_p, tied_n = g.integers(0, 4, len(pos)).astype(float), g.integers(0, 3, len(neg)).astype(float)
    y = [1] * len(pos) + [0] * len(neg)
    assert P.auroc(tied_p, tied_n) == pytest.approx(roc_auc_score(y, np.concatenate([tied_p, tied_n])))
    loop = [roc_auc_score(y, np.concatenate([tied_p[i], tied_n[i]])) for i in idx]
    np.testing.assert_allclose(P.bootstrap_aurocs(tied_p, tied_n, 300, b["seed"]), loop, rtol=1e-12)
    def stat(x, y, axis=-1):
        out = P._auroc_rows(np.atleast_2d(x), np.atleast_2d(y))
        return out[0] if np.ndim(x) == 1 else out

    sp = bootstrap((pos, neg), stat, paired=True, vectorized=True, method="percentile",
                   n_resamples=b["n_resamples"], rng=np.random.default_rng(1)).confidence_interval
    # Two independent 2000-draw percentile estimates of a 2.5%/97.5% quantile: Monte Carlo sd ~ 0.005 for AUROC
    # bootstrap spreads of ~0.05; 0.03 is ~6 sd.
    tol = statistical(0.03, why="two independent 2000-resample percentile quantiles")
    assert_reproduces(committed["confirmatory"]["H1"]["auroc_ci95"], [sp.low, sp.high], tol, name="ci")


def test_h2_auroc_difference_test_against_a_loop(committed, prereg):
    """H2: Δ = AUROC_wb − AUROC_bb, its one-sided bootstrap p and CI, recomputed with a per-resample loop over the
    same index draws (sklearn AUROCs)."""
    from sklearn.metrics import roc_auc_score

    b = prereg["bootstrap"]
    _, pos_m, neg_m = P.HYPOTHESES["H2"]
    wp, wn = np.array(committed["inputs"][pos_m]["wb"]), np.array(committed["inputs"][neg_m]["wb"])
    bp, bn = np.array(committed["inputs"][pos_m]["bb"]), np.array(committed["inputs"][neg_m]["bb"])
    y = [1] * len(wp) + [0] * len(wn)

    def auc(p, n):
        return roc_auc_score(y, np.concatenate([p, n])) if len(set(np.concatenate([p, n]))) > 1 else 0.5

    deltas = np.array([auc(wp[i], wn[i]) - auc(bp[i], bn[i])
                       for i in P.resample_indices(len(wp), b["n_resamples"], b["seed"])])
    h2 = committed["confirmatory"]["H2"]
    # An AUROC is a mean of n^2 = 2304 comparisons in [0, 1]: float64 rounding up to 2304 steps, absolute.
    tol = Tolerance("a mean of 2304 comparisons in float64", abs=float_ops(2304).rel)
    assert_reproduces(h2["delta"], auc(wp, wn) - auc(bp, bn), tol, name="delta")
    assert_reproduces(h2["p"], (1 + np.sum(deltas <= 0)) / (len(deltas) + 1), exact("counts"), name="p")
    assert_reproduces(h2["ci95"], list(np.quantile(deltas, [0.025, 0.975])), tol, name="ci")


def test_holm_against_statsmodels(committed, prereg):
    """Multiplicity as preregistered: Holm-adjusted p and decisions equal statsmodels' multipletests(holm)."""
    from statsmodels.stats.multitest import multipletests

    ids = list(committed["confirmatory"])
    p = [committed["confirmatory"][h]["p"] for h in ids]
    rej, adj, _, _ = multipletests(p, alpha=prereg["multiplicity"]["family_alpha"], method="holm")
    for h, r, a in zip(ids, rej, adj):
        assert_reproduces(committed["confirmatory"][h]["p_holm"], a, float_ops(4), name=h)
        assert committed["confirmatory"][h]["decision"] == ("supported" if r else "not supported")
    got = P.holm({"a": 0.01, "b": 0.04, "c": 0.03}, 0.05)
    ref = multipletests([0.01, 0.04, 0.03], alpha=0.05, method="holm")
    assert [got[k]["p_holm"] for k in "abc"] == pytest.approx(list(ref[1]))
    # Adjusted p is capped at 1 (statsmodels too), and the decision is the preregistration's strict "adjusted p <
    # alpha": at adjusted p == alpha exactly (2 × 0.25 = 0.5 in binary) it does not support the hypothesis.
    big = P.holm({"a": 0.4, "b": 0.7, "c": 0.9}, 0.05)
    assert [big[k]["p_holm"] for k in "abc"] == pytest.approx(list(multipletests([0.4, 0.7, 0.9], method="holm")[1]))
    assert max(v["p_holm"] for v in big.values()) == 1.0
    edge = P.holm({"a": 0.25, "b": 0.75}, 0.5)
    assert edge["a"]["p_holm"] == 0.5 and edge["a"]["reject"] is False
    assert "< alpha" in prereg["hypotheses"][0]["decision_rule"]


def test_robustness_checks_present_and_agreement_computed(committed):
    """Spec: "a robustness check (seeds, prompt sets)": R1 (another draw), R2 (another family), R3 (another
    direction) each analyse H1–H3 with decisions; agreement is their equality with the primary decisions."""
    rob = committed["robustness"]
    assert (rob["R1"]["prompt_set"], rob["R2"]["prompt_set"], rob["R3"]["direction_seed"]) == ("seed_1", "family_B",
                                                                                              11)
    for h, agree in rob["agreement"].items():
        assert agree == all(rob[r]["hypotheses"][h]["decision"] == committed["confirmatory"][h]["decision"]
                            for r in P.ROBUSTNESS)
        for r in P.ROBUSTNESS:
            assert rob[r]["hypotheses"][h]["n"] == 48


def test_what_would_change_the_conclusion_at_its_boundaries(committed, raw, prereg):
    """Spec: "what would change the conclusion": the decision at the stable prefix n' and every larger n equals the
    full-n decision (and differs at n' − 1 unless n' is the smallest tried); a shift just beyond the flip shift
    flips H1/H3; H2's zero-Δ flag rate puts the binary AUROC formula at AUROC_wb."""
    w = committed["what_would_change"]
    for h, n_star in w["stable_from_n"].items():
        full = committed["confirmatory"][h]["decision"]
        for n in {n_star, (n_star + 48) // 2, 48}:
            assert P.confirmatory(raw, prereg, n=n)[h]["decision"] == full
        if n_star > 8:
            assert P.confirmatory(raw, prereg, n=n_star - 1)[h]["decision"] != full
    conf = committed["confirmatory"]
    for h, f in w["flip_shift"].items():
        if f is None:
            continue
        _, pos, neg = P.HYPOTHESES[h]
        d = np.array(committed["inputs"][pos]["wb"]) - np.array(committed["inputs"][neg]["wb"])
        others = {k: conf[k]["p"] for k in conf if k != h}
        eps = 1e-6 * max(1.0, abs(f["delta"]))
        at = [P.holm({**others, h: P.wilcoxon_greater(d - f["delta"] + s)}, 0.05)[h]["reject"] for s in (eps, -eps)]
        assert at[0] != at[1]
    h2 = conf["H2"]
    r = w["H2_bb_rate_for_zero_delta"]
    assert 0.5 + 0.5 * (r - h2["bb_rate_negative"]) == pytest.approx(h2["auroc_wb"])
    neg = np.array([1.0] * 5 + [0.0] * 15)                     # r- = 0.25; r* for AUROC_wb = 0.8 is 0.85 = 17/20
    r_star = P.zero_delta_flag_rate(0.8, neg.mean())
    pos = np.array([1.0] * round(r_star * 20) + [0.0] * (20 - round(r_star * 20)))
    assert r_star * 20 == pytest.approx(17) and P.auroc(pos, neg) == pytest.approx(0.8)


def test_committed_analysis_reproduces(committed, rerun):
    """The committed analysis is recomputed from the raw outcomes: tests' p, AUROCs, CIs and decisions (float64,
    deterministic seeds: a few roundings; decisions exactly)."""
    for h in committed["confirmatory"]:
        for key in ("p", "p_holm", "decision"):
            tol = exact("a decision") if key == "decision" else float_ops(50)
            assert_reproduces(rerun["confirmatory"][h][key], committed["confirmatory"][h][key], tol, name=f"{h}.{key}")
    assert rerun["robustness"]["agreement"] == committed["robustness"]["agreement"]
    assert rerun["what_would_change"]["stable_from_n"] == committed["what_would_change"]["stable_from_n"]
    assert_reproduces(rerun["exploratory"]["checkpoint_curve_vs_control"],
                      committed["exploratory"]["checkpoint_curve_vs_control"], float_ops(50), name="curve")
