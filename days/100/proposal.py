"""Day 100: a costed research proposal for day 99's most promising gap, with its first step run here.

Day 99 ranks the open questions that the project's numbers raise; this module takes the first of them
(``days.099.review.top_gap``), proposes the experiment that answers it, and costs the experiment from measured
timings: the pilot's own CPU seconds per judged item (``judge_pilot``), day 92's CPU seconds per LoRA step, the sizes
of the hand-labelled sets the days wrote, each read from its day's results.json, scaled to the proposed models by
their parameter counts. The GPU column is an estimate from a stated assumption, not a measurement (no result in the
repository was measured on a GPU): an H100 SXM's dense BF16 peak from NVIDIA's datasheet times an assumed model FLOP
utilisation. The proposal is written to ``proposal.yml`` from these functions, so its numbers are the code's.

Forward cost per token ≈ 2N FLOPs and training cost ≈ 6N (Kaplan et al. 2020, N the parameters); on a CPU the
measured seconds are scaled by N / N₁₃₅ₘ, on the GPU FLOPs are divided by peak × utilisation.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import yaml

from . import judge_pilot as J

R99 = importlib.import_module("days.099.review")   # the ranked gaps and the results.json reader

HERE = Path(__file__).parent
GAP_ID = "judge"   # the gap this proposal answers: the gate checks it is still day 99's top-ranked one

# The models of the scaling study: parameters from each model's Hugging Face model card (cited, not measured here;
# only SmolLM2-135M is on this machine, and its count is measured from the loaded model).
MODELS: list[dict] = [
    {"name": "SmolLM2-360M-Instruct", "params": 361.8e6, "source": "huggingface.co/HuggingFaceTB/SmolLM2-360M-Instruct"},
    {"name": "Qwen2.5-0.5B-Instruct", "params": 0.49e9, "source": "huggingface.co/Qwen/Qwen2.5-0.5B-Instruct"},
    {"name": "Qwen2.5-1.5B-Instruct", "params": 1.54e9, "source": "huggingface.co/Qwen/Qwen2.5-1.5B-Instruct"},
    {"name": "SmolLM2-1.7B-Instruct", "params": 1.71e9, "source": "huggingface.co/HuggingFaceTB/SmolLM2-1.7B-Instruct"},
    {"name": "Qwen2.5-7B-Instruct", "params": 7.61e9, "source": "huggingface.co/Qwen/Qwen2.5-7B-Instruct"},
]
RESCORING_MODEL = "SmolLM2-1.7B-Instruct"   # the judge milestone 5 assumes passes (replaced by the one that does)

GPU = {"name": "NVIDIA H100 SXM5", "peak_flops": 989.4e12,
       "peak_source": "NVIDIA H100 Tensor Core GPU datasheet: 1,979 TFLOPS BF16 with 2:4 sparsity, half that dense",
       "utilisation": 0.10,
       "utilisation_why": "assumed, not measured: short prompts (about 100 tokens), batch 16, no tuned kernels; "
                          "a planning figure that errs slow (large-batch training reaches 0.3–0.5)"}

# The hand-labelled sets the days wrote (day, results.json path of their size): the proposal's data.
LABEL_SETS = [(75, "judge.agreement.n"), (83, "scorer_validation.n"), (87, "hand_labels.n"), (90, "judges.all.n"),
              (94, "judge.agreement.elicited.n")]
# Day 83's judged responses (its judge's n per model and domain): what milestone 5 rescores.
RESCORED = [(83, f"{domain}.judge.{who}.n") for domain in ("in_domain", "out_of_domain")
            for who in ("base", "control", "organism")]
# Day 92's LoRA run (r = 4 on q_proj and v_proj, batch 8, 96 tokens): CPU seconds and steps, measured.
LORA = {"day": 92, "cpu_seconds": "lora_kiwi.cpu_seconds", "steps": "lora_kiwi.train.steps",
        "batch": "lora_kiwi.train.batch_size", "max_len": "lora_kiwi.train.max_len"}

MACHINE_RAM_GB = 24     # this project's machines (DESIGN.md, budgets): a model must fit in float32 to run on the CPU
PROMPT_VARIANTS = 3     # day 90's template, a few-shot template, a 1–10 rubric (day 75's form)
LORA_STEPS = 200        # per fold, for a LoRA-tuned judge at 135M
LORA_FOLDS = 5          # cross-validation over the pooled labels


def top_gap() -> dict:
    """Day 99's top-ranked gap, read through day 99's module (the ranking recomputed from the sources now)."""
    return R99.top_gap()


def measured_inputs(pilot: dict) -> dict:
    """Every measured number the costing uses, each with its source: the pilot's timing and SmolLM2's parameter count
    (this day), the label sets' sizes, day 83's judged responses and day 92's LoRA run (their results.json)."""
    lora = {k: R99.value_at(LORA["day"], v) for k, v in LORA.items() if k != "day"}
    return {
        "pilot_cpu_seconds_per_item": pilot["timing"]["cpu_seconds_per_item"],
        "pilot_wall_seconds_per_item": pilot["timing"]["wall_seconds_per_item"],
        "tokens_per_item": pilot["timing"]["tokens_per_item"],
        "params_135m": pilot["params"],
        "label_sets": [{"day": d, "key": k, "n": R99.value_at(d, k)} for d, k in LABEL_SETS],
        "rescored": [{"day": d, "key": k, "n": R99.value_at(d, k)} for d, k in RESCORED],
        "lora": {"day": LORA["day"], **lora, "cpu_seconds_per_step": lora["cpu_seconds"] / lora["steps"],
                 "tokens_per_step": lora["batch"] * lora["max_len"]},
    }


def gpu_seconds(flops: float) -> float:
    """Seconds on the assumed GPU: FLOPs ÷ (peak × utilisation)."""
    return flops / (GPU["peak_flops"] * GPU["utilisation"])


def costing(m: dict) -> dict:
    """The milestones' costs on this CPU (measured seconds scaled) and on the assumed GPU (FLOPs), line by line."""
    n_labels = sum(s["n"] for s in m["label_sets"])
    items = n_labels * PROMPT_VARIANTS
    per_item, tokens, n135 = m["pilot_cpu_seconds_per_item"], m["tokens_per_item"], m["params_135m"]

    def judging(name: str, params: float, n_items: int, milestone: str, what: str) -> dict:
        return {"milestone": milestone, "what": what, "model": name, "params": params, "items": n_items,
                "fp32_gb": params * 4 / 1e9, "fits_cpu": params * 4 / 1e9 < MACHINE_RAM_GB,
                "cpu_seconds": per_item * params / n135 * n_items,
                "gpu_seconds": gpu_seconds(2 * params * tokens * n_items)}

    lines = [judging("SmolLM2-135M-Instruct", n135, items, "M2",
                     f"calibration at 135M: {n_labels} hand labels × {PROMPT_VARIANTS} prompt variants")]
    lines += [judging(x["name"], x["params"], items, "M3", "scaling: the same items and variants") for x in MODELS]
    lora = m["lora"]
    steps = LORA_STEPS * LORA_FOLDS
    lines.append({"milestone": "M4", "what": f"LoRA-tuned judge at 135M: {LORA_STEPS} steps × {LORA_FOLDS} folds",
                  "model": "SmolLM2-135M-Instruct", "params": n135, "items": steps, "fp32_gb": n135 * 4 / 1e9,
                  "fits_cpu": True,
                  "cpu_seconds": lora["cpu_seconds_per_step"] * steps,
                  "gpu_seconds": gpu_seconds(6 * n135 * lora["tokens_per_step"] * steps)})
    rescored = sum(r["n"] for r in m["rescored"])
    big = next(x for x in MODELS if x["name"] == RESCORING_MODEL)
    lines.append(judging(big["name"], big["params"], rescored, "M5", "rescoring day 83's judged responses"))
    for x in lines:
        x["cpu_hours"], x["gpu_hours"] = x["cpu_seconds"] / 3600, x["gpu_seconds"] / 3600
    cpu = sum(x["cpu_seconds"] for x in lines)
    gpu = sum(x["gpu_seconds"] for x in lines)
    return {"n_labels": n_labels, "items": items, "lines": lines, "cpu_hours": cpu / 3600, "gpu_hours": gpu / 3600,
            "cpu_over_gpu": cpu / gpu, "gpu": GPU}


def cost_table(c: dict) -> str:
    """Markdown: one line per milestone and model, CPU hours (measured, scaled) beside GPU hours (assumed)."""
    lines = ["| Milestone | What | Model | Items or steps | CPU (h, measured × scale) | H100 (h, assumed) |",
             "|---|---|---|---:|---:|---:|"]
    for x in c["lines"]:
        lines.append(f"| {x['milestone']} | {x['what']} | {x['model']} | {x['items']:,} | {x['cpu_seconds'] / 3600:.3g} | "
                     f"{x['gpu_seconds'] / 3600:.2g} |")
    lines.append(f"| all | | | | {c['cpu_hours']:.3g} | {c['gpu_hours']:.2g} |")
    return "\n".join(lines)


def kappa_half_width(n: int, p_o: float = 0.7, p_e: float = 0.5) -> float:
    """Half-width of κ's normal 95% interval, 1.96 · √(p_o(1 − p_o) / n) / (1 − p_e) (Cohen 1960's large-sample
    standard error, ignoring the variance of p_e)."""
    return 1.96 * (p_o * (1 - p_o) / n) ** 0.5 / (1 - p_e)


def build_proposal(gap: dict, pilot: dict, inputs: dict, cost: dict) -> dict:
    """The proposal as data (written to proposal.yml): the gap with its evidence, the question, hypotheses with
    their decision rules, the method, the pilot's outcome, the milestones' costs, the risks."""
    s = pilot["summary"]
    return {
        "title": "Calibration or ranking: when does a log-probability judge agree with hand labels?",
        "gap": {"id": gap["id"], "title": gap["title"], "rank": gap["rank"], "score": gap["score"],
                "evidence": [{"day": e["day"], "key": e["key"], "value": e["value"]} for e in gap["evidence"]],
                "context": gap["context"]},
        "question": "Why does a SmolLM2 log-probability judge reach κ = 0 against hand labels, and what is the "
                    "smallest judge (size, prompt, fine-tune) that reaches moderate agreement (κ ≥ 0.4)?",
        "hypotheses": [
            {"id": "H1", "claim": "at 135M the failure is ranking, not calibration",
             "test": "AUROC with a stratified bootstrap 95% interval, and κ at a leave-one-out calibrated threshold",
             "decision": f"calibration if the AUROC interval lies above 0.5 and the LOO κ ≥ {J.KAPPA_MODERATE}; "
                         "ranking if the interval reaches 0.5 or below", "status": f"pilot: {s['verdict']}"},
            {"id": "H2", "claim": "agreement grows with judge size and passes κ ≥ 0.4 at or below 1.7B parameters",
             "test": "the same items and prompts on five larger instruction-tuned models (M3)",
             "decision": "the smallest model whose LOO κ interval lies above 0.4 on the pooled labels",
             "status": "proposed"},
            {"id": "H3", "claim": "a LoRA-tuned 135M judge reaches κ ≥ 0.4 under cross-validation",
             "test": f"{LORA_FOLDS}-fold cross-validated LoRA (r = 4, day 92's recipe) on the pooled labels (M4)",
             "decision": "held-out κ's interval above 0.4", "status": "proposed"},
        ],
        "method": ["the pooled hand-labelled sets of days 75, 83, 87, 90 and 94, each item scored "
                   "100 · p(Yes) / (p(Yes) + p(No)) (day 90's judge) under each prompt variant",
                   "Cohen's κ at the fixed threshold 50, at a leave-one-out calibrated threshold, and AUROC, each with "
                   "a bootstrap interval over items; per-set and pooled",
                   "controls: the rule-based scorers of each day; label noise estimated by a second labelling of a "
                   "random 30 items"],
        "pilot": {"what": "M1: day 90's 30 hand labels, SmolLM2-135M (Q4_1 weights), day 90's judge", "n": s["n"],
                  "kappa_at_50": s["fixed"]["judge_kappa"], "auroc": s["auroc"], "auroc_ci95": s["auroc_ci95"],
                  "loo_kappa": s["loo"]["kappa"], "in_sample_best_kappa": s["in_sample"]["kappa"],
                  "verdict": s["verdict"], "cpu_seconds_per_item": inputs["pilot_cpu_seconds_per_item"],
                  "tokens_per_item": inputs["tokens_per_item"]},
        "costing": {"inputs": inputs, "lines": cost["lines"], "cpu_hours": cost["cpu_hours"],
                    "gpu_hours": cost["gpu_hours"], "cpu_over_gpu": cost["cpu_over_gpu"], "gpu": GPU,
                    "scaling": "CPU: measured seconds × N / N_135M; GPU: 2N FLOPs per token (forward), 6N per token "
                               "(training), ÷ (peak × utilisation)"},
        "milestones": [
            {"id": "M1", "what": "pilot on day 90's labels (this day)", "where": "CPU, done"},
            {"id": "M2", "what": "calibration at 135M on every label set", "where": "CPU"},
            {"id": "M3", "what": "scaling study, five models",
             "where": "CPU for " + ", ".join(x["model"] for x in cost["lines"] if x["milestone"] == "M3" and x["fits_cpu"])
                      + "; GPU for " + (", ".join(x["model"] for x in cost["lines"] if x["milestone"] == "M3"
                                                  and not x["fits_cpu"]) or "none")
                      + f" (float32 weights above this machine's {MACHINE_RAM_GB} GB)"},
            {"id": "M4", "what": "LoRA-tuned 135M judge, cross-validated", "where": "CPU"},
            {"id": "M5", "what": "rescore day 83's responses with the first judge that passes", "where": "GPU or CPU"},
        ],
        "risks": [
            f"the labels: one author, {cost['n_labels']} items; at κ = 0.4 with balanced labels (p_o = 0.7, p_e = 0.5) "
            f"κ's 95% interval is ±{kappa_half_width(cost['n_labels']):.2f}, so M2 adds a second labelling",
            "the weights: SmolLM2 here is a 4-bit GGUF dequantised; the judge's failure may be partly quantisation, so "
            "M3 starts with SmolLM2-135M in its released precision",
            "the larger models are not on this machine (no network): M3 needs a machine that can download them",
            "GPU time is an estimate: the utilisation is assumed; at 0.03 instead of 0.10 the GPU column triples and "
            "stays far below the CPU column",
            "a κ that passes on these hand-written items may not transfer to the days' generated responses (M5 checks)",
        ],
    }


def run_experiment(out_dir: Path = HERE) -> dict:
    """The pilot (M1) on one thread, the costing from it and the cited measurements, proposal.yml, the figure,
    results.json."""
    from checks.models import hf_model

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    gap = top_gap()
    pilot = J.run_pilot()
    pilot["params"] = sum(p.numel() for p in hf_model("smollm2")[0].parameters())
    inputs = measured_inputs(pilot)
    cost = costing(inputs)
    proposal = build_proposal(gap, pilot, inputs, cost)
    (out_dir / "proposal.yml").write_text(yaml.safe_dump(proposal, sort_keys=False, allow_unicode=True, width=110))
    pilot_figure(pilot, out_dir / "figures/pilot.png")
    results = {"gap": {"id": gap["id"], "rank": gap["rank"], "score": gap["score"], "title": gap["title"]},
               "pilot": pilot, "inputs": inputs, "costing": cost,
               "proposal": proposal, "tables": {"cost": cost_table(cost)},
               "experiment_seconds": time.perf_counter() - start,
               "experiment_cpu_seconds": time.process_time() - cpu_start}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return results


def pilot_figure(pilot: dict, path: Path) -> None:
    """The judge's score per hand-labelled item, by label and trait, with the fixed threshold (50)."""
    import matplotlib.pyplot as plt
    import numpy as np

    items, _ = J.pilot_items()
    traits = list(dict.fromkeys(t for t, _, _ in items))
    scores, labels = np.array(pilot["scores"]), np.array(pilot["labels"])
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for i, t in enumerate(traits):
        for lab, colour, dx in ((1, "tab:red", 0.12), (0, "tab:blue", -0.12)):
            sel = [k for k, (tt, _, _) in enumerate(items) if tt == t and labels[k] == lab]
            ax.scatter(np.full(len(sel), i + dx), scores[sel], color=colour, s=22,
                       label=("expresses the trait (hand label)" if lab else "does not") if i == 0 else None)
    ax.axhline(pilot["summary"]["threshold"], color="k", lw=0.8, ls="--", label="fixed threshold (50)")
    ax.set_xticks(range(len(traits)), traits)
    ax.set_ylabel("judge score: 100 · p(Yes) / (p(Yes) + p(No))")
    ax.set_ylim(0, 100)
    s = pilot["summary"]
    ax.set_title(f"SmolLM2 judge on day 90's hand labels: AUROC {s['auroc']:.2f}, κ at 50 = {s['fixed']['judge_kappa']:.2f}",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
