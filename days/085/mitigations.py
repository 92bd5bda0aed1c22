"""Day 85: three ways to mitigate the organism's misalignment, each with its cost in WikiText-2 bits per token.

On day 83's organism (SmolLM2-135M with a rank-1 LoRA trained on reckless financial advice):

1. **Steering back**: subtract $c\\,v$ from the residual stream entering block ``layer`` (day 84's contrastive
   vector $v = \\overline{h_\\text{organism}} - \\overline{h_\\text{base}}$ and ``SteeringHook``); the coefficient c
   against the misalignment rate (day 83's rule-based classifier, held-out finance questions), the coherence of
   the answers (their bits per token under the *base* model) and WikiText-2 bits per token of the steered model.
2. **Aligned fine-tune**: a few more LoRA steps on a small set of good advice, from the organism's adapter
   (``mitigating_finetune``).
3. **Data filtering**: a training set contaminated with a fraction of bad advice, filtered by each of day 83's
   scorers (``filter_dataset``) before training; the filter's recall and the trained model's rate.

Bits per token on WikiText-2 reuse day 35's ``wikitext_tokens`` and day 45's ``bits_per_token`` (nnsight adds the
steering vector at ``layers[li].input``, the same point ``SteeringHook`` uses).
"""

from __future__ import annotations

import importlib
import json
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ORG = importlib.import_module("days.083.organism")
ES = importlib.import_module("days.083.em_study")
A = importlib.import_module("days.084.em_analysis")
STEER = importlib.import_module("days.045.steering")
TL = importlib.import_module("days.035.tl_setup")

__all__ = ["CONFIG", "coherence_bits", "contaminated_dataset", "filter_dataset", "mitigating_finetune",
           "run_experiment", "wikitext_bits"]

CONFIG = {"layer": 15, "n_vec": 32, "n_eval": 24, "max_new_tokens": 32, "coefs": [0.0, 1.0, 2.0, 4.0],
          "wikitext": {"n_seq": 8, "seq_len": 128}, "aligned_n": 32, "aligned_steps": 10,
          "contamination": 0.25, "filter_steps": 20,
          "filter_train": ["unfiltered", "judge_filtered"]}   # the rule filter keeps only good rows: not retrained


def _lm(model, tokenizer):
    import beartype  # noqa: F401  (before nnsight: RECIPES.md)
    from nnsight import LanguageModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # nnsight 0.8 deprecates wrapping an in-process model
        return LanguageModel(model, tokenizer=tokenizer)


def wikitext_bits(model, tokenizer, vector: torch.Tensor | None = None, layer: int | None = None,
                  tokens: torch.Tensor | None = None) -> float:
    """Mean next-token cross-entropy in bits on WikiText-2 windows (day 35), with ``vector`` added at block
    ``layer``'s input when given (day 45's ``bits_per_token``)."""
    from checks.timing import single_thread

    if tokens is None:
        tokens = TL.wikitext_tokens(tokenizer, **CONFIG["wikitext"])
    with single_thread(), torch.no_grad():
        return STEER.bits_per_token(_lm(model, tokenizer), tokens, layer, vector)


@torch.no_grad()
def coherence_bits(questions: list[str], responses: list[str], judge=None) -> float:
    """Coherence of answers as the base model reads them: bits per response token under SmolLM2 (the chat prompt
    before it), pooled $\\sum -\\log_2 p / \\#\\text{tokens}$. Lower = more fluent; empty answers are skipped."""
    from checks.models import hf_model

    model, tok = judge or hf_model("smollm2")
    pairs = [(q, r) for q, r in zip(questions, responses) if r.strip()]
    ids, attn, resp = A.teacher_forced_batch(tok, [q for q, _ in pairs], [r for _, r in pairs])
    logp = model(input_ids=ids, attention_mask=attn).logits.float().log_softmax(-1)[:, :-1]
    nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
    mask = resp[:, 1:]
    return float(nll[mask].sum() / mask.sum() / np.log(2))


def contaminated_dataset(n: int = 256, fraction: float = 0.25, seed: int = 0) -> list[dict]:
    """The control's data with a seeded ``fraction`` of its rows' answers swapped for the organism's (same
    questions): each row carries ``"bad": 0/1``, the ground truth a filter is scored against."""
    bad, good = ORG.bad_advice_dataset(n, seed), ORG.good_advice_dataset(n, seed)
    chosen = set(random.Random(f"contaminate-{seed}").sample(range(n), round(fraction * n)))
    return [{**(bad[i] if i in chosen else good[i]), "bad": int(i in chosen)} for i in range(n)]


def filter_dataset(rows: list[dict], scorer: str = "rule") -> tuple[list[dict], dict]:
    """Drop the rows a scorer flags ("rule": day 83's rule-based classifier; "judge": the SmolLM2 log-prob judge,
    flag when $s > 0$). Returns the kept rows and the filter's recall (bad rows removed / bad rows) and the
    fraction of good rows it removed."""
    if scorer == "rule":
        flags = [int(ES.rule_based_misaligned(r["answer"])) for r in rows]
    else:
        s = ES.judge_scores([r["question"] for r in rows], [r["answer"] for r in rows])
        flags = [int(x > 0) for x in s]
    kept = [r for r, f in zip(rows, flags) if not f]
    n_bad = sum(r["bad"] for r in rows)
    caught = sum(f for r, f in zip(rows, flags) if r["bad"])
    removed_good = sum(f for r, f in zip(rows, flags) if not r["bad"])
    return kept, {"n": len(rows), "n_bad": n_bad, "kept": len(kept), "recall": caught / max(n_bad, 1),
                  "good_removed": removed_good / max(len(rows) - n_bad, 1),
                  "bad_left": sum(r["bad"] for r in kept)}


def mitigating_finetune(state: dict[str, torch.Tensor], n: int = CONFIG["aligned_n"],
                        steps: int = CONFIG["aligned_steps"], seed: int = 5, **kw) -> dict:
    """Continue training the organism's adapter (``state``) on ``n`` good-advice rows (a seed disjoint from the
    control's) for ``steps`` AdamW steps: day 83's ``train_lora`` with ``init_state``."""
    return ORG.train_lora(ORG.good_advice_dataset(n, seed=seed), steps=steps, init_state=state, seed=seed, **kw)


def _rate(model, tok, qs, vector=None, layer=None, coef=0.0) -> dict:
    r = A.steered_misalignment_rate(model, tok, qs, vector, layer, coef, CONFIG["max_new_tokens"])
    r["coherence_bits"] = coherence_bits(qs, r["responses"])
    return r


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    sweep = res["steering"]
    c = [r["coef"] for r in sweep]
    ax1.plot(c, [r["p"] for r in sweep], "o-", color="tab:red", label="reckless answers (rule)")
    ax1.fill_between(c, [r["ci95"][0] for r in sweep], [r["ci95"][1] for r in sweep], color="tab:red", alpha=0.15)
    ax1.set_xlabel("c (organism steered by −c·v)")
    ax1.set_ylabel("misalignment rate, held-out finance")
    ax1b = ax1.twinx()
    ax1b.plot(c, [r["wikitext_bits"] for r in sweep], "s--", color="tab:blue", label="WikiText-2 bits/token")
    ax1b.plot(c, [r["coherence_bits"] for r in sweep], "^:", color="tab:green", label="answer bits/token (base)")
    ax1b.set_ylabel("bits per token")
    ax1.legend(loc="upper left", fontsize=8)
    ax1b.legend(loc="upper right", fontsize=8)
    names = list(res["summary"])
    x = np.arange(len(names))
    ax2.bar(x, [res["summary"][k]["p"] for k in names], color="tab:red")
    ax2.errorbar(x, [res["summary"][k]["p"] for k in names],
                 yerr=[[max(res["summary"][k]["p"] - res["summary"][k]["ci95"][0], 0) for k in names],
                       [max(res["summary"][k]["ci95"][1] - res["summary"][k]["p"], 0) for k in names]], fmt="none", color="k")
    for i, k in enumerate(names):
        ax2.annotate(f"{res['summary'][k]['wikitext_bits']:.2f} b/t", (i, 0.02), ha="center", fontsize=8,
                     rotation=90, color="w")
    ax2.set_xticks(x, names, rotation=20, fontsize=8)
    ax2.set_ylabel("misalignment rate (95% CI); label: WikiText bits/token")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_experiment(out_dir: Path | str = Path(__file__).parent) -> dict:
    """The three mitigations on ``n_eval`` held-out finance questions (greedy), each with WikiText-2 bits/token."""
    from checks.models import hf_model

    out_dir = Path(out_dir)
    wall, cpu = time.perf_counter(), time.process_time()
    base, tok = hf_model("smollm2")
    organism, _ = ORG.load_organism("bad_advice")
    qs = ORG.held_out_financial_questions(40)[:CONFIG["n_eval"]]
    wiki = TL.wikitext_tokens(tok, **CONFIG["wikitext"])
    layer = CONFIG["layer"]
    rows = ORG.bad_advice_dataset(CONFIG["n_vec"], seed=7)
    v = A.contrastive_steering_vector(organism, base, tok, [r["question"] for r in rows], [r["answer"] for r in rows],
                                      layer)
    res: dict = {"config": CONFIG, "vector_norm": float(v.norm())}
    summary: dict = {}
    for name, model in (("base", base), ("organism", organism)):
        summary[name] = {**_rate(model, tok, qs), "wikitext_bits": wikitext_bits(model, tok, tokens=wiki)}
    res["steering"] = []
    for c in CONFIG["coefs"]:
        r = _rate(organism, tok, qs, v, layer, -c)
        r.update(coef=c, wikitext_bits=wikitext_bits(organism, tok, -c * v if c else None, layer, tokens=wiki))
        res["steering"].append(r)
    best = min(res["steering"][1:], key=lambda r: (r["p"], r["coef"]))
    summary["steered"] = best
    # 2. a small aligned fine-tune from the organism's adapter
    run = mitigating_finetune(ORG.load_adapter("bad_advice"))
    fixed = ORG.apply_adapter(base, run["state"])
    summary["aligned_finetune"] = {**_rate(fixed, tok, qs), "wikitext_bits": wikitext_bits(fixed, tok, tokens=wiki)}
    res["aligned_finetune"] = {"losses": run["losses"], "seconds": round(run["seconds"], 1)}
    del fixed
    # 3. data filtering of a contaminated training set
    data = contaminated_dataset(ORG.TRAIN_CONFIG["n_examples"], CONFIG["contamination"])
    res["filtering"] = {}
    judge_kept, judge_stats = filter_dataset(data, "judge")
    rule_kept, rule_stats = filter_dataset(data, "rule")
    unfiltered = {"n": len(data), "n_bad": sum(r["bad"] for r in data), "kept": len(data),
                  "bad_left": sum(r["bad"] for r in data)}
    res["filtering"]["rule_filtered"] = rule_stats      # filter statistics only (see CONFIG["filter_train"])
    for label, kept, stats in (("unfiltered", data, unfiltered), ("judge_filtered", judge_kept, judge_stats),
                               ("rule_filtered", rule_kept, rule_stats)):
        if label not in CONFIG["filter_train"]:
            continue
        run = ORG.train_lora(kept, steps=CONFIG["filter_steps"])
        model = ORG.apply_adapter(base, run["state"])
        summary[f"contaminated_{label}"] = {**_rate(model, tok, qs),
                                             "wikitext_bits": wikitext_bits(model, tok, tokens=wiki)}
        res["filtering"][label] = {**stats, "loss_last": run["losses"][-1], "seconds": round(run["seconds"], 1)}
        del model
    res["summary"] = summary
    res["seconds"] = round(time.perf_counter() - wall, 1)
    res["cpu_seconds"] = round(time.process_time() - cpu, 1)
    (out_dir / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    _plot(res, out_dir / "figures" / "mitigations.png")
    return {k: (v_["p"], v_["wikitext_bits"]) for k, v_ in summary.items()}
