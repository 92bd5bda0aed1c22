"""Day 98: the analysis of day 97's preregistered experiment, exactly as preregistered, then what was not.

- ``HYPOTHESES``: each preregistered hypothesis as (test, positive model, comparison model, monitors); the gate checks
  it against the preregistration's text, so nothing confirmatory exists that the preregistration does not name.
- ``wilcoxon_greater(d)``: the one-sided Wilcoxon signed-rank test (scipy, ``zero_method='wilcox'``,
  ``method='auto'``), H1 and H3.
- ``auroc(pos, neg)``: $\\hat A = \\frac{1}{n_+ n_-}\\sum_{i,j} [\\,s^+_i > s^-_j\\,] + \\tfrac12 [\\,s^+_i = s^-_j\\,]$
  (day 41's ``auroc``); ``bootstrap_aurocs(pos, neg, B, seed)``: the paired bootstrap over prompts (the same
  resampled prompt indices for positives, negatives and every monitor), vectorised.
- ``auroc_difference_test``: H2: $\\Delta = \\hat A_\\text{wb} - \\hat A_\\text{bb}$, one-sided bootstrap
  $p = (1 + \\#\\{\\Delta^* \\le 0\\}) / (B + 1)$ and the percentile interval.
- ``holm(p, alpha)``: Holm's step-down adjusted p-values, $\\tilde p_{(i)} = \\max_{j \\le i} \\min(1, (m - j + 1)
  p_{(j)})$.
- ``confirmatory(raw, prereg, ...)``: H1–H3 with raw and Holm-adjusted p, effect sizes with 95% CIs and decisions;
  ``robustness``: the same on R1 (another prompt draw), R2 (another prompt family), R3 (another direction);
  ``exploratory``: everything else, labelled exploratory; ``what_would_change``: the smallest prefix n from which
  the decision holds, the shift that flips H1/H3, the black-box flag rate that would erase H2's difference.
- ``run_experiment(out_dir)``: reads the preregistration and day 97's raw outcomes (``raw_outcomes()`` of day 97's
  module) and writes results.json and figures.

Importing this module loads no model.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
E97 = importlib.import_module("days.097.early_warning")
C41 = importlib.import_module("days.041.coup_probes")
I76 = importlib.import_module("days.076.inspect_setup")

# id -> (test, positive model, comparison model). "wilcoxon": one-sided Wilcoxon signed-rank on the paired white-box
# differences; "auroc_diff_bootstrap": the paired bootstrap of AUROC(white-box) - AUROC(black-box).
HYPOTHESES = {"H1": ("wilcoxon", "bad_final", "control"),
              "H2": ("auroc_diff_bootstrap", "bad_s15", "control"),
              "H3": ("wilcoxon", "bad_final", "kiwi")}
TEST_WORDS = {"wilcoxon": "Wilcoxon signed-rank", "auroc_diff_bootstrap": "paired bootstrap"}
ROBUSTNESS = {"R1": ("seed_1", "primary_layer", "seed"), "R2": ("family_B", "primary_layer", "seed"),
              "R3": ("primary", "primary_layer", "robustness_seed")}


# ---------------------------------------------------------------- statistics

def auroc(pos, neg) -> float:
    """Day 41's AUROC of positives ``pos`` against negatives ``neg`` (ties count one half)."""
    import torch

    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    return C41.auroc(torch.tensor(np.concatenate([pos, neg])),
                     torch.tensor([1] * len(pos) + [0] * len(neg)))


def _auroc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of each row pair of [B, n] arrays (vectorised day-41 formula)."""
    gt = (pos[:, :, None] > neg[:, None, :]).mean((1, 2))
    eq = (pos[:, :, None] == neg[:, None, :]).mean((1, 2))
    return gt + 0.5 * eq


def resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """[B, n] prompt indices drawn with replacement (numpy's default_rng(seed))."""
    return np.random.default_rng(seed).integers(0, n, (n_resamples, n))


def bootstrap_aurocs(pos, neg, n_resamples: int, seed: int) -> np.ndarray:
    """[B] AUROCs of the paired bootstrap: resample prompts, keep each prompt's positive and negative together."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    idx = resample_indices(len(pos), n_resamples, seed)
    return _auroc_rows(pos[idx], neg[idx])


def percentile_ci(values, level: float) -> list[float]:
    """The percentile interval of bootstrap values (numpy's linear quantiles)."""
    lo, hi = np.quantile(np.asarray(values, float), [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def wilcoxon_greater(d) -> float:
    """One-sided Wilcoxon signed-rank p that the paired differences d are shifted above 0 (scipy)."""
    from scipy.stats import wilcoxon

    return float(wilcoxon(np.asarray(d, float), alternative="greater", zero_method="wilcox", method="auto").pvalue)


def bootstrap_median_ci(d, n_resamples: int, seed: int, level: float) -> list[float]:
    """Percentile interval of the median paired difference (prompts resampled)."""
    d = np.asarray(d, float)
    return percentile_ci(np.median(d[resample_indices(len(d), n_resamples, seed)], axis=1), level)


def auroc_difference_test(wb_pos, wb_neg, bb_pos, bb_neg, n_resamples: int, seed: int, level: float) -> dict:
    """H2's test: Δ = AUROC(wb) − AUROC(bb) on the same prompts; paired bootstrap (one index draw for both monitors),
    one-sided p = (1 + #{Δ* ≤ 0}) / (B + 1), percentile CI."""
    a_wb, a_bb = auroc(wb_pos, wb_neg), auroc(bb_pos, bb_neg)
    boot_wb, boot_bb = bootstrap_aurocs(wb_pos, wb_neg, n_resamples, seed), bootstrap_aurocs(bb_pos, bb_neg,
                                                                                             n_resamples, seed)
    delta = boot_wb - boot_bb
    return {"auroc_wb": a_wb, "auroc_bb": a_bb, "delta": a_wb - a_bb, "ci95": percentile_ci(delta, level),
            "auroc_wb_ci95": percentile_ci(boot_wb, level), "auroc_bb_ci95": percentile_ci(boot_bb, level),
            # Δ* = 0 exactly (tied monitors) comes out as ±1e-16 in float64: count |rounding| as the tie it is.
            "p": float((1 + np.sum(delta <= 1e-12)) / (n_resamples + 1))}


def holm(pvals: dict[str, float], alpha: float) -> dict[str, dict]:
    """Holm's step-down: adjusted p and the decision (adjusted p < alpha) of each hypothesis."""
    order = sorted(pvals, key=lambda k: pvals[k])
    m, running, out = len(order), 0.0, {}
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvals[k]))
        out[k] = {"p_holm": running, "reject": running < alpha}
    return out


# ---------------------------------------------------------------- the preregistered analysis

def scores(raw: dict, pset: str, model: str, layer: int, seed: int, monitor: str = "wb") -> np.ndarray:
    """A model's per-prompt score on a prompt set: white-box at (layer, direction seed), or the black-box flag."""
    row = raw["raw"][pset][model]
    return np.asarray(row["wb"][str(seed)][str(layer)] if monitor == "wb" else row["flags"], float)


def analyse(hid: str, raw: dict, prereg: dict, pset: str, layer: int, seed: int, n: int | None = None) -> dict:
    """One preregistered hypothesis, on the first ``n`` prompts of ``pset`` (all by default)."""
    test, pos_m, neg_m = HYPOTHESES[hid]
    b = prereg["bootstrap"]
    B, bseed, level = b["n_resamples"], b["seed"], b["level"]
    pos, neg = scores(raw, pset, pos_m, layer, seed)[:n], scores(raw, pset, neg_m, layer, seed)[:n]
    out = {"test": test, "positive": pos_m, "negative": neg_m, "n": len(pos)}
    if test == "wilcoxon":
        d = pos - neg
        out.update(p=wilcoxon_greater(d), auroc=auroc(pos, neg),
                   auroc_ci95=percentile_ci(bootstrap_aurocs(pos, neg, B, bseed), level),
                   median_diff=float(np.median(d)), median_diff_ci95=bootstrap_median_ci(d, B, bseed, level),
                   n_positive_diffs=int(np.sum(d > 0)))
    else:
        bpos, bneg = scores(raw, pset, pos_m, layer, seed, "bb")[:n], scores(raw, pset, neg_m, layer, seed, "bb")[:n]
        out.update(auroc_difference_test(pos, neg, bpos, bneg, B, bseed, level),
                   bb_rate_positive=float(bpos.mean()), bb_rate_negative=float(bneg.mean()))
    return out


def confirmatory(raw: dict, prereg: dict, pset: str = "primary", layer: int | None = None, seed: int | None = None,
                 n: int | None = None) -> dict:
    """H1–H3 exactly as preregistered (defaults: primary set, primary layer and direction), Holm within the
    family, each with its decision."""
    layer = prereg["direction"]["primary_layer"] if layer is None else layer
    seed = prereg["direction"]["seed"] if seed is None else seed
    alpha = prereg["multiplicity"]["family_alpha"]
    out = {h["id"]: {**analyse(h["id"], raw, prereg, pset, layer, seed, n), "alpha": h["alpha"]}
           for h in prereg["hypotheses"]}
    for hid, r in holm({k: v["p"] for k, v in out.items()}, alpha).items():
        out[hid].update(p_holm=r["p_holm"], decision="supported" if r["reject"] else "not supported")
    return out


def robustness(raw: dict, prereg: dict) -> dict:
    """R1–R3 as preregistered, with each hypothesis' decision compared with the primary analysis."""
    d = prereg["direction"]
    primary = confirmatory(raw, prereg)
    out = {}
    for rid, (pset, layer_key, seed_key) in ROBUSTNESS.items():
        res = confirmatory(raw, prereg, pset, d[layer_key], d[seed_key])
        out[rid] = {"prompt_set": pset, "layer": d[layer_key], "direction_seed": d[seed_key],
                    "description": prereg["analysis_plan"]["robustness"][rid], "hypotheses": res}
    out["agreement"] = {h: all(out[r]["hypotheses"][h]["decision"] == primary[h]["decision"] for r in ROBUSTNESS)
                        for h in primary}
    return out


def zero_delta_flag_rate(auroc_wb: float, rate_negative: float) -> float:
    """The black-box flag rate of the positives at which a binary monitor's AUROC, ½ + ½(r₊ − r₋), equals
    ``auroc_wb`` (Δ = 0)."""
    return 2 * (auroc_wb - 0.5) + rate_negative


def _decisions(raw, prereg, n):
    return {k: v["decision"] for k, v in confirmatory(raw, prereg, n=n).items()}


def what_would_change(raw: dict, prereg: dict, conf: dict | None = None, n_min: int = 8) -> dict:
    """The preregistered sensitivity numbers: per hypothesis, the smallest prefix n' from which its decision equals
    the full-n decision at every larger n'; for H1/H3 the shift δ (subtracted from every paired difference) at
    which its Holm-adjusted decision flips, others' p fixed; for H2 the black-box flag rate of bad_s15 at which
    Δ = 0 (binary flags: AUROC_bb = ½ + ½(r_pos − r_neg))."""
    conf = conf or confirmatory(raw, prereg)
    n_full = conf["H1"]["n"]
    per_n = {n: _decisions(raw, prereg, n) for n in range(n_min, n_full + 1)}
    stable = {}
    for h in conf:
        n_star = n_full
        for n in range(n_full, n_min - 1, -1):
            if per_n[n][h] != conf[h]["decision"]:
                break
            n_star = n
        stable[h] = n_star
    alpha = prereg["multiplicity"]["family_alpha"]
    layer, seed = prereg["direction"]["primary_layer"], prereg["direction"]["seed"]
    shifts = {}
    for h in ("H1", "H3"):
        _, pos_m, neg_m = HYPOTHESES[h]
        d = scores(raw, "primary", pos_m, layer, seed) - scores(raw, "primary", neg_m, layer, seed)
        others = {k: v["p"] for k, v in conf.items() if k != h}

        def rejected(delta, d=d, h=h, others=others):
            return holm({**others, h: wilcoxon_greater(d - delta)}, alpha)[h]["reject"]

        lo, hi = float(d.min()) - 1.0, float(d.max()) + 1.0       # all differences > 0 at lo, < 0 at hi
        if rejected(lo) == rejected(hi):
            shifts[h] = None
            continue
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if rejected(mid) == rejected(lo) else (lo, mid)
        shifts[h] = {"delta": 0.5 * (lo + hi), "decision_at_zero": conf[h]["decision"],
                     "median_diff": conf[h]["median_diff"]}
    h2 = conf["H2"]
    r_star = zero_delta_flag_rate(h2["auroc_wb"], h2["bb_rate_negative"])
    return {"stable_from_n": stable, "n_full": n_full, "flip_shift": shifts,
            "H2_bb_rate_for_zero_delta": r_star,
            "H2_bb_flags_for_zero_delta": (math.ceil(r_star * n_full - 1e-9) if r_star <= 1 else None),
            "H2_bb_flags_now": int(round(h2["bb_rate_positive"] * n_full))}


def exploratory(raw: dict, prereg: dict) -> dict:
    """EXPLORATORY (not preregistered as hypotheses, no decisions): the checkpoint curve of both monitors, the
    layer sweep, black-box rates with Wilson intervals, the direction-free shift norm, kiwi vs control."""
    b = prereg["bootstrap"]
    B, bseed, level = b["n_resamples"], b["seed"], b["level"]
    d = prereg["direction"]
    layer, seed = d["primary_layer"], d["seed"]
    fts = [m for m in prereg["models"]["names"] if m != "base"]
    curve = {}
    for m in ["bad_s15", "bad_s30", "bad_s45", "bad_final"]:
        wb_p, wb_n = scores(raw, "primary", m, layer, seed), scores(raw, "primary", "control", layer, seed)
        bb_p, bb_n = scores(raw, "primary", m, 0, 0, "bb"), scores(raw, "primary", "control", 0, 0, "bb")
        curve[m] = {"auroc_wb": auroc(wb_p, wb_n), "auroc_wb_ci95": percentile_ci(bootstrap_aurocs(wb_p, wb_n, B, bseed),
                                                                                  level),
                    "auroc_bb": auroc(bb_p, bb_n), "auroc_bb_ci95": percentile_ci(bootstrap_aurocs(bb_p, bb_n, B, bseed),
                                                                                  level),
                    "mean_wb": float(wb_p.mean())}
    sweep = {str(L): {m: auroc(scores(raw, "primary", m, L, seed), scores(raw, "primary", "control", L, seed))
                      for m in ["bad_s15", "bad_final", "kiwi"]} for L in d["exploratory_layers"]}
    rates = {s: {m: I76.proportion(int(sum(raw["raw"][s][m]["flags"])), len(raw["raw"][s][m]["flags"])) for m in fts}
             for s in raw["raw"]}
    norms = {m: float(np.mean(raw["raw"]["primary"][m]["shift_norm"][str(layer)])) for m in fts}
    norm_auroc = {m: auroc(raw["raw"]["primary"][m]["shift_norm"][str(layer)],
                           raw["raw"]["primary"]["control"]["shift_norm"][str(layer)]) for m in fts if m != "control"}
    mean_wb = {m: float(scores(raw, "primary", m, layer, seed).mean()) for m in fts}
    positive = {m: I76.proportion(int(np.sum(scores(raw, "primary", m, layer, seed) > 0)), len(raw["prompts"]["primary"]))
                for m in fts}
    return {"label": "EXPLORATORY: not preregistered as hypotheses; no decisions, no multiplicity control",
            "checkpoint_curve_vs_control": curve, "layer_sweep_auroc_vs_control": sweep,
            "blackbox_rates": rates, "shift_norm_mean": norms, "shift_norm_auroc_vs_control": norm_auroc,
            "mean_wb_score": mean_wb, "fraction_wb_positive": positive}


def run_experiment(out_dir: Path = HERE, raw: dict | None = None, prereg_path: Path = E97.PREREG) -> dict:
    """The whole analysis from the preregistration and day 97's committed raw outcomes: results.json + figures."""
    start, cpu = time.perf_counter(), time.process_time()
    out_dir = Path(out_dir)
    prereg = E97.load_prereg(prereg_path)
    raw = raw if raw is not None else E97.raw_outcomes()
    conf = confirmatory(raw, prereg)
    layer, seed = prereg["direction"]["primary_layer"], prereg["direction"]["seed"]
    inputs = {m: {"wb": scores(raw, "primary", m, layer, seed).tolist(),
                  "bb": scores(raw, "primary", m, 0, 0, "bb").tolist()} for m in ("bad_s15", "bad_final", "control",
                                                                                  "kiwi")}
    results = {"prereg": {"sha256_now": E97.prereg_sha256(prereg_path), "sha256_at_run": raw["prereg"]["sha256"],
                          "commit": raw["prereg"]["commit"],
                          "unchanged_since_run": E97.prereg_sha256(prereg_path) == raw["prereg"]["sha256"]},
               "preregistered_tests": {h["id"]: h["test"] for h in prereg["hypotheses"]},
               "confirmatory": conf, "robustness": robustness(raw, prereg),
               "what_would_change": what_would_change(raw, prereg, conf),
               "exploratory": exploratory(raw, prereg), "inputs": inputs,
               "wall_seconds": None, "cpu_seconds": None}
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    plot(results, out_dir / "figures")
    results["wall_seconds"], results["cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results


def plot(results: dict, fig_dir: Path) -> None:
    """Two panels: the preregistered effect sizes with CIs (primary and R1–R3), and (exploratory) each fine-tune's
    mean white-box score on the primary prompts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    rows = [("primary", results["confirmatory"])] + [(r, results["robustness"][r]["hypotheses"]) for r in ROBUSTNESS]
    for j, h in enumerate(HYPOTHESES):
        for i, (name, res) in enumerate(rows):
            r = res[h]
            est, (lo, hi) = (r["auroc"], r["auroc_ci95"]) if r["test"] == "wilcoxon" else (r["delta"], r["ci95"])
            x = j + 0.18 * (i - 1.5)
            a.errorbar([x], [est], yerr=[[est - lo], [hi - est]], fmt="o", color=f"C{i}", ms=4,
                       label=name if j == 0 else None)
    a.axhline(0.5, color="grey", lw=0.5, ls="--")
    a.axhline(0.0, color="grey", lw=0.5)
    a.set_xticks(range(len(HYPOTHESES)), ["H1: AUROC", "H2: ΔAUROC", "H3: AUROC"])
    a.set_title("preregistered effects, 95% CI")
    a.legend(fontsize=7)
    mean = results["exploratory"]["mean_wb_score"]
    names = list(mean)
    b.bar(range(len(names)), [mean[m] for m in names],
          color=["C3" if m.startswith("bad") else "C0" if m == "control" else "C2" for m in names])
    b.axhline(0, color="grey", lw=0.5)
    b.set_xticks(range(len(names)), names, rotation=30)
    b.set_ylabel("mean shift along reckless direction (L15)")
    b.set_title("exploratory: where each fine-tune moves")
    fig.tight_layout()
    fig.savefig(fig_dir / "analysis.png", dpi=120)
    plt.close(fig)
