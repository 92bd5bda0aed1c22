"""Day 100, the proposal's first step: is SmolLM2's log-probability judge wrong by *calibration* or by *ranking*?

Five days validated a SmolLM2 judge against hand labels and found Cohen's κ = 0 each time (day 99's top gap). κ = 0
has two different causes. A judge whose scores order the items correctly but sit on the wrong side of the fixed
threshold (50) labels everything one way: κ = 0 with an AUROC near 1, repaired by choosing the threshold. A judge whose
scores do not order the items has an AUROC near ½ (or below), and no threshold repairs it. The pilot separates the
two on day 90's hand-labelled answers (30 items, three traits, five of each class per trait) with day 90's own judge:

- the judge's scores s_i = 100 · p(Yes) / (p(Yes) + p(No)) (``days.090.persona_vectors.judge_scores``, unchanged);
- day 90's agreement at the fixed threshold (``judge_agreement``: κ and AUROC by scikit-learn);
- the AUROC with a stratified percentile bootstrap interval (day 41's ``auroc``, ``bootstrap_auroc_ci``);
- κ with a threshold *calibrated by leave-one-out*: for each item, the threshold that maximises κ on the other
  n − 1 items classifies the held-out one; κ of these held-out labels says what calibration can buy without
  fitting the test item;
- the cost of one judged item on this CPU (wall and CPU seconds, prompt tokens), the number the proposal's
  costing scales.

The decision rule (stated before the run, in the proposal): *calibration* when the AUROC's interval lies above ½
and the leave-one-out κ is at least 0.4 (moderate agreement); *ranking* when the interval contains ½ or lies
below it; *inconclusive* otherwise.
"""

from __future__ import annotations

import importlib
import time

import numpy as np
import torch

from checks.timing import single_thread

P90 = importlib.import_module("days.090.persona_vectors")   # judge_scores, judge_agreement, rule_scores, THRESHOLD
D90 = importlib.import_module("days.090.data")              # HAND_LABELS
C41 = importlib.import_module("days.041.coup_probes")       # auroc, bootstrap_auroc_ci

KAPPA_MODERATE = 0.4     # Landis & Koch (1977): 0.41–0.60 is "moderate" agreement
N_BOOT = 2000
SEED = 100


def pilot_items(traits: tuple[str, ...] | None = None) -> tuple[list[tuple[str, str, str]], np.ndarray]:
    """Day 90's hand-labelled answers as (trait, question, response) and their labels (1 = expresses the trait);
    ``traits``: only those traits' items (all by default), in day 90's order."""
    rows = [row for row in D90.HAND_LABELS if traits is None or row[0] in traits]
    return [(t, q, r) for t, q, r, _ in rows], np.array([h for *_, h in rows], dtype=int)


def prompt_tokens(items, model="smollm2") -> list[int]:
    """Tokens of each judge prompt as the judge reads it: day 90's chat rendered by day 90's left_padded, unpadded
    length (its attention mask's sum)."""
    _, tok = P90.C41.P40.load_model(model)
    return [int(P90.left_padded(tok, [P90.judge_prompt(*it)])[1].sum()) for it in items]


def judge_pilot_scores(items, model="smollm2") -> tuple[np.ndarray, dict]:
    """Day 90's judge on the items, on one thread, timed: (scores, {wall, cpu seconds, per item, tokens})."""
    P90.C41.P40.load_model(model)                       # load outside the timed region
    with single_thread():
        wall, cpu = time.perf_counter(), time.process_time()
        scores = P90.judge_scores(items, model).numpy()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tokens = prompt_tokens(items, model)
    n = len(items)
    return scores, {"n_items": n, "wall_seconds": wall, "cpu_seconds": cpu, "cpu_seconds_per_item": cpu / n,
                    "wall_seconds_per_item": wall / n, "tokens": int(sum(tokens)), "tokens_per_item": sum(tokens) / n}


def kappa(labels, predicted) -> float:
    """Cohen's κ (scikit-learn); 0 when either side is constant (sklearn's NaN there means no agreement beyond chance)."""
    from sklearn.metrics import cohen_kappa_score

    k = float(cohen_kappa_score(np.asarray(labels, int), np.asarray(predicted, int)))
    return 0.0 if np.isnan(k) else k


def candidate_thresholds(scores) -> np.ndarray:
    """Midpoints between consecutive distinct scores, and one below the lowest and one above the highest."""
    u = np.unique(np.asarray(scores, float))
    return np.concatenate([[u[0] - 1.0], (u[1:] + u[:-1]) / 2, [u[-1] + 1.0]])


def best_threshold(scores, labels) -> float:
    """The threshold (label 1 when score > threshold) with the largest κ on these items; the lowest such on a tie."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, int)
    ts = candidate_thresholds(scores)
    ks = [kappa(labels, scores > t) for t in ts]
    return float(ts[int(np.argmax(ks))])


def loo_calibrated(scores, labels) -> np.ndarray:
    """Held-out labels: item i is labelled by the best threshold of the other n − 1 items."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, int)
    out = np.zeros(len(scores), dtype=int)
    for i in range(len(scores)):
        keep = np.arange(len(scores)) != i
        out[i] = int(scores[i] > best_threshold(scores[keep], labels[keep]))
    return out


def verdict(auroc_ci: tuple[float, float], loo_kappa: float) -> str:
    """The pre-stated decision rule: calibration, ranking or inconclusive."""
    if auroc_ci[0] > 0.5 and loo_kappa >= KAPPA_MODERATE:
        return "calibration"
    if auroc_ci[0] <= 0.5:
        return "ranking"
    return "inconclusive"


def summarise(scores, labels, traits: list[str]) -> dict:
    """Every number of the pilot from the scores: day 90's agreement at the fixed threshold, the AUROC and its
    bootstrap interval, the best in-sample threshold, the leave-one-out κ, per-trait AUROCs, the verdict."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, int)
    rules = torch.cat([P90.rule_scores(t, [r]) for (t, _, r) in traits])
    fixed = P90.judge_agreement(torch.tensor(scores), rules, torch.tensor(labels))
    auc = C41.auroc(torch.tensor(scores), torch.tensor(labels))
    ci = C41.bootstrap_auroc_ci(torch.tensor(scores), torch.tensor(labels), n_boot=N_BOOT, seed=SEED)
    held = loo_calibrated(scores, labels)
    loo_k = kappa(labels, held)
    names = [t for t, _, _ in traits]
    by_trait = {t: C41.auroc(torch.tensor(scores[[n == t for n in names]]), torch.tensor(labels[[n == t for n in names]]))
                for t in dict.fromkeys(names)}
    t_best = best_threshold(scores, labels)
    return {"n": int(len(scores)), "n_positive": int(labels.sum()), "threshold": P90.THRESHOLD,
            "fixed": fixed, "auroc": auc, "auroc_ci95": list(ci),
            "in_sample": {"threshold": t_best, "kappa": kappa(labels, scores > t_best)},
            "loo": {"kappa": loo_k, "accuracy": float((held == labels).mean()), "predicted_positive": int(held.sum())},
            "auroc_by_trait": by_trait,
            "score_spread": {"min": float(scores.min()), "max": float(scores.max()), "std": float(scores.std())},
            "verdict": verdict(ci, loo_k)}


def run_pilot(model="smollm2", traits: tuple[str, ...] | None = None) -> dict:
    """The pilot: score day 90's hand labels (``traits``: a subset, for the gate) with day 90's judge, time it,
    summarise."""
    items, labels = pilot_items(traits)
    scores, timing = judge_pilot_scores(items, model)
    return {"model": model, "scores": [float(s) for s in scores], "labels": [int(x) for x in labels],
            "timing": timing, "summary": summarise(scores, labels, items)}
