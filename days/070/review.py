"""Day 70: module 1 in review — every day of 30–69 from the sources, set beside what ARENA reports, and practice
problems on our own trained toys.

The machinery is day 29's (``days/029/review.py``), imported, not copied: the ledger rows, the gate reports, the
headline values read from each day's results.json at chosen paths, the three tables and the tests-per-day figure.
This module adds what a review of module 1 needs beyond that:

- ``HEADLINES``: 1–3 results.json paths per day of 30–69 (paths only; the values are read from the files);
- ``ARENA``: per ARENA section, the model ARENA uses and what ARENA (or the paper it follows) reports, typed as a
  citation, beside our value (a results.json path, read from the file), a verdict (reproduces / differs / not
  comparable) and a one-line reason taken from the day's post; ``arena_table`` generates the table;
- ``PRACTICE``: questions a learner answers by running code on the toys committed with days 58, 60 and 62, each
  answered here by a function that uses the day's own code; the gate checks every answer against an independent
  computation (``test_review.py``).

A day that changes after this review was generated turns its gate red with "run `invoke experiment 70`".
"""

from __future__ import annotations

import importlib
import json
import math
import time
from pathlib import Path

import torch

from checks.timing import single_thread

R29 = importlib.import_module("days.029.review")

ROOT = R29.ROOT
HERE = Path(__file__).parent
DAYS = range(30, 70)  # module 1: days 30–69 (this review is day 70)
MODULE_SECTIONS = ["1.1", "1.2", "1.3.1", "1.3.2", "1.3.3", "1.3.4", "1.4.1", "1.4.2", "1.5.1", "1.5.2", "1.5.3", "1.5.4"]

# The experiment's headline numbers per day: (path in results.json, what it is). Paths only: values read from the files.
HEADLINES: dict[int, list[tuple[str, str]]] = {
    30: [("at_d_head_64.unscaled.entropy", "attention entropy without the 1/√d_head scale (d_head 64, nats)"),
         ("at_d_head_64.scaled.entropy", "attention entropy with the scale (uniform: 4.16 nats)")],
    31: [("total_tied", "GPT-2 small parameters, tied embeddings"),
         ("mlp_to_attention_ratio", "MLP to attention parameters")],
    32: [("errors.tl_log_probs", "our GPT-2 vs TransformerLens: max |Δ log-prob|"),
         ("errors.hf_log_probs", "our GPT-2 vs Hugging Face: max |Δ log-prob|")],
    33: [("final_val_bits_per_char", "char transformer trained on a CPU: validation bits per char"),
         ("baselines.bigram", "bigram baseline (nats per char)")],
    34: [("next_token.top1_prob", "SmolLM2: P(top-1 next token) for the Paris prompt"),
         ("kv_cache.speedup_total", "KV cache: speed-up of a 40-token generation")],
    35: [("top_heads.previous.score", "SmolLM2's best previous-token head score"),
         ("n_heads_above_half.first", "heads attending >½ to the first token")],
    36: [("final_accuracy", "logit lens: top-1 accuracy at the last layer"),
         ("first_layer_with_half_final_accuracy", "logit lens: first layer with half the final accuracy")],
    37: [("resid_handover_layer", "fact patching: layer where the last position takes over"),
         ("head_patching_top.0.value", "fact patching: top head's share of the logit difference")],
    38: [("full.induction_head_score", "2-layer toy trained here: induction head score"),
         ("smollm2.top_induction_head.score", "SmolLM2: top induction head score"),
         ("smollm2.n_heads_over_half", "SmolLM2: heads with induction score > ½")],
    39: [("total_attn", "DLA of the attention layers (logit difference)"),
         ("top_neuron_share_of_neurons", "top neuron's share of the neurons' DLA")],
    40: [("headline.accuracy", "truth probe, held-out accuracy (best layer)"),
         ("best_layer", "truth probe: best layer"),
         ("control.mean", "control task accuracy at that layer")],
    41: [("held_out.auroc", "deception probe: held-out AUROC (instructed pairs)"),
         ("on_policy.auroc.false_answer", "deception probe: AUROC on the model's own false answers")],
    42: [("shift.neg_cities.accuracy", "truth probe on negated statements"),
         ("spurious.anti.accuracy", "keyword-confounded probe on anti-correlated data")],
    43: [("gap", "antonym ICL: clean − corrupted log-prob"),
         ("top_heads.0.delta", "top head's patching effect (log-prob)")],
    44: [("tasks.antonyms.zero_shot_out", "zero-shot antonyms, held out"),
         ("tasks.antonyms.fv_best_out", "zero-shot antonyms + function vector, held out")],
    45: [("actadd_mean_sentiment_change", "ActAdd Love − Hate: mean sentiment change (word list)")],
    46: [("architectures.topk.fraction_recovered", "TopK SAE: planted features recovered"),
         ("dead.none.fraction_recovered", "no resampling: planted features recovered")],
    47: [("metrics.ours.ce_loss_recovered", "our TopK SAE on SmolLM2 layer 15: CE loss recovered"),
         ("metrics.sae_lens.ce_loss_recovered", "sae-lens's trainer, same data: CE loss recovered"),
         ("metrics.ours.explained_variance", "our SAE: explained variance")],
    48: [("median_auroc", "interpreted latents: median detection AUROC"),
         ("median_mismatched_auroc", "same, with mismatched explanations")],
    49: [("on_policy.instructed.monitor_1.auroc", "SAE monitor on the model's own answers: AUROC (instruction)"),
         ("monitor_share_on_first_3_tokens", "monitor's weight on the first 3 response tokens")],
    50: [("summary.4.best_accuracy", "untrained oracle: token identity, best layer (c = 4)"),
         ("summary.4.control_correct", "random same-norm vector: correct of 2,100")],
    51: [("leak.rate", "secret leaked in answers"),
         ("best.probe.accuracy", "linear probe for the secret, best layer")],
    52: [("summary.identity.before.mean_accuracy", "oracle before LoRA training: token identity"),
         ("identity.by_layer.trained_held.4.accuracy", "after training, held-out templates (layer 4)")],
    53: [("performance.accuracy", "SmolLM2 IOI: fraction with IO above S"),
         ("performance.mean_logit_diff", "SmolLM2 IOI: mean logit difference")],
    54: [("act_head_out_top.0.label", "head with the largest patching effect"),
         ("act_head_out_top.0.value", "its effect (fraction of the logit difference)")],
    55: [("class_lists.name_mover", "SmolLM2's name movers"),
         ("class_lists.negative_name_mover", "negative name mover"),
         ("class_lists.backup_name_mover", "backup name movers")],
    56: [("faithfulness.ratio.value", "circuit faithfulness F(C)/F(M)"),
         ("summary.worst_incompleteness_K", "worst incompleteness")],
    57: [("float64_chain_rule_vs_jacrev.latent_to_latent", "forward-mode chain rule vs jacrev (float64)"),
         ("sinks.kept.ce_loss_recovered", "layer-15 SAE: CE recovered (sinks kept)")],
    58: [("graphs.mean_influence_share", "pruned attribution graphs: influence kept"),
         ("graphs.mean_node_share", "pruned graphs: share of nodes kept"),
         ("swap.flip_rate", "feature swap flips the answer")],
    59: [("role_share.IO", "SAE latents at IO: share of the logit difference"),
         ("ablate_IO.measured_over_ld", "ablating the top IO latents (fraction of LD)")],
    60: [("test.accuracy", "bracket classifier on 10,000 fresh strings"),
         ("test.n_errors", "errors of 10,000")],
    61: [("analysis.ln_r2.ln_final_pos0", "final LayerNorm as a linear map: R²"),
         ("analysis.detector_heads.direct.elevation", "head that flags elevation failures (direct)"),
         ("analysis.detector_neurons.elevation", "layer-2 neuron that flags elevation failures")],
    62: [("grokked_step_mean", "grokking step (mean of 3 seeds)"),
         ("trial_frac_0_3.last.test_accuracy", "30% training data: test accuracy at the end")],
    63: [("committed.key_share_W_E", "key frequencies' share of W_E's Fourier norm"),
         ("committed.trig_fit_accuracy", "trig fit: accuracy on every input")],
    64: [("landmarks.restricted_loss_halfway_step", "restricted loss halfway down (step)"),
         ("landmarks.test_loss_halfway_step", "test loss halfway down (step)")],
    65: [("test.legal_rate", "Othello-GPT trained here: top move legal"),
         ("headline.mine_best_occupied", "mine/theirs probe on occupied squares (best layer)")],
    66: [("interventions.1.edit_vs_edited", "after a probe edit: legal moves of the edited board (of the top 5)"),
         ("interventions.1.edit_vs_original", "after a probe edit: legal moves of the original board")],
    67: [("pentagon.n_pentagons", "5→2: instances forming a pentagon (of 8)"),
         ("phase_diagram.agreement_decided", "n=2, m=1 phase diagram: agreement with theory")],
    68: [("geometry.sticky_shares.1/2", "features at dimensionality ½"),
         ("double_descent.summary.last_test_loss", "double-descent sweep: test loss at the largest T")],
    69: [("resample_none.n_dead_final_total", "toy SAE without resampling: dead latents at the end"),
         ("resample_simple.n_dead_final_total", "with simple resampling: dead latents at the end"),
         ("shrinkage_standard.at_true_l0.ratio", "standard (L1) SAE: shrinkage ratio at the true L0"),
         ("shrinkage_gated.at_true_l0.ratio", "Gated SAE: shrinkage ratio at the true L0")],
}

# ARENA's sections set beside ours: ARENA's model and the result ARENA or its paper reports (a citation, typed as
# such), our value (a results.json path of a day, read from the file), a verdict and a one-line reason from the post.
ARENA: list[dict] = [
    {"section": "1.1", "arena_model": "GPT-2 small",
     "cited": "a from-scratch GPT-2 small loaded with OpenAI's weights matches the reference model's logits (ARENA 1.1's load test)",
     "ours": (32, "errors.tl_log_probs"), "verdict": "reproduces",
     "why": "same model and weights; our forward equals TransformerLens's"},
    {"section": "1.1", "arena_model": "GPT-2 small",
     "cited": "124M parameters with tied embeddings (Radford et al. 2019 list 117M; HF counts 124,439,808)",
     "ours": (31, "total_tied"), "verdict": "reproduces", "why": "counted from the same shapes"},
    {"section": "1.1", "arena_model": "a small transformer trained on a GPU",
     "cited": "ARENA 1.1 trains a small transformer on a text corpus for a few epochs on a GPU",
     "ours": (33, "final_val_bits_per_char"), "verdict": "not comparable",
     "why": "a 0.8M-parameter character model trained for 1,000 steps on one CPU thread"},
    {"section": "1.2", "arena_model": "GPT-2 small",
     "cited": "induction heads 5.1, 5.5, 6.9, 7.2, 7.10 (ARENA 1.2's induction scores on GPT-2 small)",
     "ours": (38, "smollm2.top_induction_head.layer"), "verdict": "differs",
     "why": "SmolLM2-135M (30 layers): its induction heads sit in layers 17–18"},
    {"section": "1.2", "arena_model": "attn-only 2-layer model",
     "cited": "a previous-token head in layer 0 K-composes with induction heads in layer 1 (ARENA 1.2; Elhage et al. 2021)",
     "ours": (38, "full.induction_head_score"), "verdict": "reproduces",
     "why": "a 2-layer toy trained here on repeated random tokens, not ARENA's download"},
    {"section": "1.2", "arena_model": "GPT-2 small",
     "cited": "the logit lens: predictions take shape in the middle layers (nostalgebraist 2020)",
     "ours": (36, "first_layer_with_half_final_accuracy"), "verdict": "differs",
     "why": "SmolLM2's lens reads out late (layer 25 of 30); its middle layers decode worse than uniform"},
    {"section": "1.3.1", "arena_model": "Llama-2-13B",
     "cited": "linear truth probes on cities reach >90% in the middle layers; mass-mean probes are causal (Marks & Tegmark 2023)",
     "ours": (40, "headline.accuracy"), "verdict": "reproduces",
     "why": "SmolLM2 (135M) knows fewer facts: probes trained on the 126 cities it knows"},
    {"section": "1.3.1", "arena_model": "Llama-2-13B",
     "cited": "probes trained on cities generalise poorly to negated statements (Marks & Tegmark 2023)",
     "ours": (42, "shift.neg_cities.accuracy"), "verdict": "reproduces",
     "why": "on SmolLM2 the direction flips: accuracy far below chance"},
    {"section": "1.3.2", "arena_model": "GPT-J 6B",
     "cited": "a function vector added to zero-shot prompts raises antonym accuracy from near 0 (Todd et al. 2024)",
     "ours": (44, "tasks.antonyms.fv_best_out"), "verdict": "reproduces",
     "why": "SmolLM2: smaller gain, 59 held-out words"},
    {"section": "1.3.2", "arena_model": "GPT-2 XL",
     "cited": "ActAdd's Love − Hate steers the sentiment of completions (Turner et al. 2023)",
     "ours": (45, "actadd_mean_sentiment_change"), "verdict": "differs",
     "why": "SmolLM2 at layer 8, 6 prompts, a word-list judge: no effect beyond a random direction"},
    {"section": "1.3.3", "arena_model": "toy model with planted features",
     "cited": "an SAE recovers the planted features; resampling revives dead latents (ARENA 1.3.3; Bricken et al. 2023)",
     "ours": (46, "architectures.topk.fraction_recovered"), "verdict": "reproduces", "why": "same construction"},
    {"section": "1.3.3", "arena_model": "GPT-2 small / Gemma-2 with sae-lens SAEs",
     "cited": "TopK SAEs recover most of the CE loss at small L0 (Gao et al. 2024)",
     "ours": (47, "metrics.ours.ce_loss_recovered"), "verdict": "reproduces",
     "why": "trained here on SmolLM2's layer 15, checked against sae-lens's own trainer on the same batches"},
    {"section": "1.3.4", "arena_model": "a larger chat model with a trained oracle",
     "cited": "a LoRA-trained activation oracle answers questions about a model's activations (ARENA 1.3.4)",
     "ours": (52, "identity.by_layer.trained_held.4.accuracy"), "verdict": "not comparable",
     "why": "SmolLM2 reads its own activations; trained here on token identity only, CPU budget"},
    {"section": "1.3.4", "arena_model": "a model with a secret in its system prompt",
     "cited": "hidden knowledge is linearly decodable where the model will not say it (ARENA 1.3.4)",
     "ours": (51, "best.probe.accuracy"), "verdict": "reproduces",
     "why": "SmolLM2 leaks its secret in over half its answers, so the probe's task is easier"},
    {"section": "1.4.1", "arena_model": "GPT-2 small",
     "cited": "IOI circuit: name movers 9.9, 9.6, 10.0; negative name movers 10.7, 11.10; backup name movers (Wang et al. 2022)",
     "ours": (55, "class_lists.name_mover"), "verdict": "differs",
     "why": "SmolLM2: name movers in layer 23, one negative name mover, no backup (it switches off instead)"},
    {"section": "1.4.1", "arena_model": "GPT-2 small",
     "cited": "circuit faithfulness 87% of the model's logit difference (Wang et al. 2022)",
     "ours": (56, "faithfulness.ratio.value"), "verdict": "differs",
     "why": "SmolLM2's circuit found on 64 prompts keeps under half; completeness fails at the negative name mover"},
    {"section": "1.4.2", "arena_model": "Gemma-2 / Claude 3.5 Haiku with transcoders",
     "cited": "pruned attribution graphs keep most of the influence with a small share of nodes (Ameisen et al. 2025)",
     "ours": (58, "graphs.mean_influence_share"), "verdict": "not comparable",
     "why": "a two-hop toy trained here with its own transcoders, graphs exact in float64"},
    {"section": "1.4.2", "arena_model": "GPT-2 small with SAEs",
     "cited": "a few SAE latents at the IO position carry the IOI logit difference (ARENA 1.4.2)",
     "ours": (59, "ablate_IO.measured_over_ld"), "verdict": "reproduces",
     "why": "SmolLM2 with our layer-16 SAE; first-order attribution undershoots ablation about 2×"},
    {"section": "1.5.1", "arena_model": "ARENA's pretrained 3-layer bracket classifier",
     "cited": "the downloaded model classifies balanced brackets almost perfectly; heads 2.0 and 2.1 detect the two failure kinds (ARENA 1.5.1)",
     "ours": (60, "test.accuracy"), "verdict": "reproduces",
     "why": "same architecture trained here on a CPU (the checkpoint is committed)"},
    {"section": "1.5.1", "arena_model": "ARENA's pretrained 3-layer bracket classifier",
     "cited": "the final LayerNorm is close to linear on the [start] position (ARENA 1.5.1, get_ln_fit)",
     "ours": (61, "analysis.ln_r2.ln_final_pos0"), "verdict": "reproduces",
     "why": "our model's detector heads and neurons are not ARENA's: read from our weights"},
    {"section": "1.5.2", "arena_model": "1-layer transformer, p = 113, 30% of pairs",
     "cited": "grokking after ~10k steps; key frequencies 14, 35, 41, 42, 52 (Nanda et al. 2023)",
     "ours": (62, "grokked_step_mean"), "verdict": "differs",
     "why": "p = 37 with half the pairs (CPU budget; 30% never generalised), so other frequencies and steps"},
    {"section": "1.5.2", "arena_model": "1-layer transformer, p = 113",
     "cited": "the circuit forms (restricted loss falls) before the test loss drops; cleanup follows (Nanda et al. 2023)",
     "ours": (64, "landmarks.restricted_loss_halfway_step"), "verdict": "reproduces",
     "why": "on our p = 37 model: restricted loss halfway down at step 2,100, test loss at 3,500"},
    {"section": "1.5.3", "arena_model": "Othello-GPT, 8 layers, trained on synthetic games",
     "cited": "a linear probe reads mine/theirs at >90% in the middle layers; probe edits change the moves (Nanda 2023; Li et al. 2023)",
     "ours": (65, "headline.mine_best_occupied"), "verdict": "differs",
     "why": "a 3-layer model trained here on one CPU thread: the world model barely forms"},
    {"section": "1.5.3", "arena_model": "Othello-GPT, 8 layers",
     "cited": "editing the board along the probe makes the model predict the edited board's legal moves (Nanda 2023)",
     "ours": (66, "interventions.1.edit_vs_edited"), "verdict": "differs",
     "why": "our model has no linear world model: its moves do not follow the edit (a negative control)"},
    {"section": "1.5.4", "arena_model": "toy models of superposition",
     "cited": "5 features in 2 dimensions form a pentagon; the n=2, m=1 phase diagram (Elhage et al. 2022)",
     "ours": (67, "phase_diagram.agreement_decided"), "verdict": "reproduces", "why": "same toys, trained on a CPU"},
    {"section": "1.5.4", "arena_model": "toy models of superposition",
     "cited": "double descent as the number of training examples grows (Henighan et al. 2023)",
     "ours": (68, "double_descent.summary.last_test_loss"), "verdict": "differs",
     "why": "not reproduced at CPU scale; the example-to-feature transition is"},
    {"section": "1.5.4", "arena_model": "SAEs on the toy model's hidden layer",
     "cited": "Gated SAEs remove the L1 penalty's shrinkage of reconstructions (Rajamanoharan et al. 2024)",
     "ours": (69, "shrinkage_gated.at_true_l0.ratio"), "verdict": "reproduces",
     "why": "same construction on day 67's toy, beside a standard SAE's ratio at the same L0 (day 69)"},
]


# ---------------------------------------------------------------- collecting the sources (day 29's machinery)


def day_results(day: int) -> dict | None:
    """A day's committed results.json as plain JSON, or None if the day has none yet."""
    path = ROOT / f"days/{day:03d}/results.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def project():
    return R29.project()


def collect(proj=None) -> dict:
    """Day 29's collect over days 30–69 with this review's headlines."""
    return R29.collect(proj, days=DAYS, headlines=HEADLINES)


def arena_rows(proj=None, arena: list[dict] | None = None) -> list[dict]:
    """ARENA's rows (``arena``, this module's ``ARENA`` by default; day 82 passes its own) with our value read from
    the day's results.json (None and found False when the file or path is missing)."""
    proj = proj or project()
    rows = []
    for r in ARENA if arena is None else arena:
        day, key = r["ours"]
        value = R29.headline_values(proj, day, {day: [(key, "")]})[0]
        rows.append({"section": r["section"], "arena_model": r["arena_model"], "cited": r["cited"], "day": day,
                     "key": key, "value": value["value"], "found": value["found"], "verdict": r["verdict"],
                     "why": r["why"]})
    return rows


def arena_table(rows: list[dict], sections: list[str] | None = None, reported: str = "Reported (citation)") -> str:
    """Markdown: one line per comparison, grouped by section in ARENA's order (``sections``, module 1's by default)."""
    lines = [f"| § | ARENA's model | {reported} | Ours | Source | Verdict | Why |", "|---|---|---|---:|---|---|---|"]
    for section in MODULE_SECTIONS if sections is None else sections:
        for r in rows:
            if r["section"] != section:
                continue
            value = R29.escape(R29.fmt(r["value"])) if r["found"] else "missing"
            lines.append(f"| {section} | {R29.escape(r['arena_model'])} | {R29.escape(r['cited'])} | {value} | "
                         f"`days/{r['day']:03d}/results.json: {r['key']}` | {r['verdict']} | {R29.escape(r['why'])} |")
    return "\n".join(lines)


def verdict_counts(rows: list[dict]) -> dict:
    """How many comparisons reproduce, differ, are not comparable (keys with underscores, for the post's shortcodes)."""
    return {v.replace(" ", "_"): sum(r["verdict"] == v for r in rows) for v in ("reproduces", "differs", "not comparable")}


def arena_row_problems(arena: list[dict], sections: list[str], ledger_days: dict[int, dict]) -> list[str]:
    """What is wrong with a review's ARENA rows: a section with no row or a row outside ``sections``, a row whose day
    belongs to another ARENA section (the ledger's ``arena`` field), a verdict outside the three, an empty citation,
    reason or model. Empty when the rows are sound."""
    problems = []
    if {r["section"] for r in arena} != set(sections):
        problems.append(f"sections with rows {sorted({r['section'] for r in arena})} are not {sections}")
    for r in arena:
        day = r["ours"][0]
        own = (ledger_days[day].get("arena") or "").split()[:1]
        if own != [r["section"]]:
            problems.append(f"day {day} is {ledger_days[day].get('arena')}, not {r['section']}")
        if r["verdict"] not in ("reproduces", "differs", "not comparable"):
            problems.append(f"day {day}: verdict {r['verdict']!r}")
        if not (r["cited"] and r["why"] and r["arena_model"]):
            problems.append(f"day {day}: a row without its citation, reason or model")
    return problems


def verdicts_figure(rows: list[dict], sections: list[str], path: Path, module: str, height: float) -> None:
    """Stacked bars: per ARENA section, how many comparisons reproduce, differ, are not comparable."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, height))
    colours = {"reproduces": "tab:green", "differs": "tab:orange", "not comparable": "tab:gray"}
    for i, section in enumerate(sections):
        left = 0
        for v, c in colours.items():
            n = sum(r["section"] == section and r["verdict"] == v for r in rows)
            ax.barh(i, n, left=left, color=c, label=v if i == 0 else None)
            left += n
    ax.set_yticks(range(len(sections)), sections)
    ax.invert_yaxis()
    ax.set_xlabel("comparisons with ARENA's result")
    ax.set_title(f"{module} against ARENA, section by section", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- practice problems on our own toys

B = None  # day 60's module, imported on first use (importing it loads TransformerLens)
G = None  # day 62's
F = None  # day 63's
T = None  # day 58's

PRACTICE_SEED = 70
PRACTICE_N = 2_000
PRACTICE_LEN = 40


def _days():
    global B, G, F
    if B is None:
        B = importlib.import_module("days.060.brackets")
        G = importlib.import_module("days.062.grokking")
        F = importlib.import_module("days.063.fourier")
    return B, G, F


def _two_hop():
    global T
    if T is None:
        T = importlib.import_module("days.058.feature_flow")
    return T


PRACTICE = [
    {"id": "brackets_accuracy", "day": 60,
     "question": f"Load day 60's committed bracket classifier (`load_brackets_model`). On {PRACTICE_N:,} fresh strings "
                 f"drawn from day 60's mixture with seed {PRACTICE_SEED}, what fraction does it classify correctly, "
                 "and how many strings does it get wrong?"},
    {"id": "brackets_uniform_head", "day": 61,
     "question": f"Among those strings, take the ones of length {PRACTICE_LEN}. Which layer-0 head's attention from "
                 "[start] is closest to uniform over the 42 positions (mean entropy divided by log 42), and how close?"},
    {"id": "grokking_key_freqs", "day": 63,
     "question": "Load day 62's grokked model (`load_grokking_model`). Which frequencies k carry W_E's Fourier norm "
                 "(the key frequencies), and what share of the non-constant norm do they carry together?"},
    {"id": "grokking_accuracy", "day": 62,
     "question": "On all p² inputs (a, b, =), on what fraction does the grokked model's top logit equal (a + b) mod p, "
                 "and on how many inputs is it wrong?"},
    {"id": "two_hop_entity_head", "day": 58,
     "question": f"Load day 58's two-hop toy (`load_toy`). On {PRACTICE_N:,} fresh prompts (`generate_prompts`, seed "
                 f"{PRACTICE_SEED}), which head's attention from the relation token (the last position) falls most on "
                 "the entity's slot, averaged over the prompts, and how much?"},
]


def practice_bracket_data():
    """The practice strings: day 60's generator with the practice seed, as day 60's BracketsDataset."""
    B, _, _ = _days()
    return B.BracketsDataset(B.generate_brackets_data(PRACTICE_N, PRACTICE_SEED))


@torch.no_grad()
def answer_brackets_accuracy(model, data) -> dict:
    """Day 60's own ``class_logits``: argmax class against the for-loop labels."""
    B, _, _ = _days()
    wrong = int((B.class_logits(model, data).argmax(-1).bool() != data.isbal).sum())
    return {"n": len(data), "n_errors": wrong, "accuracy": 1 - wrong / len(data)}


@torch.no_grad()
def answer_brackets_uniform_head(model, data) -> dict:
    """Entropy of [start]'s layer-0 attention (TransformerLens's hook_pattern) over log(seq), per head, averaged over
    the strings of length PRACTICE_LEN; the head closest to 1."""
    B, _, _ = _days()
    sub = B.BracketsDataset.with_length(list(zip(data.strs, data.isbal.tolist())), PRACTICE_LEN)
    _, cache = model.run_with_cache(sub.toks, names_filter="blocks.0.attn.hook_pattern")
    pattern = cache["blocks.0.attn.hook_pattern"][:, :, 0].double()        # [batch, head, key]
    ratio = (-(pattern * pattern.clamp_min(1e-30).log()).sum(-1) / math.log(pattern.shape[-1])).mean(0)
    head = int(ratio.argmax())
    return {"n_strings": len(sub), "head": f"L0H{head}", "entropy_over_uniform": float(ratio[head]),
            "by_head": [float(x) for x in ratio]}


@torch.no_grad()
def answer_grokking_key_freqs(model) -> dict:
    """Day 63's ``find_key_freqs`` on the residues' embeddings."""
    _, _, F = _days()
    p = model.cfg.d_vocab_out
    keys, share = F.find_key_freqs(model.W_E[:p])
    return {"p": p, "key_freqs": keys, "share": share}


@torch.no_grad()
def answer_grokking_accuracy(model) -> dict:
    """Day 62's ``final_position_logits`` on ``all_pairs``, against ``labels_of``; and how many of the errors fall on
    the pairs the model was trained on (day 62's split, with the checkpoint's recorded seed and fraction)."""
    _, G, _ = _days()
    p = model.cfg.d_vocab_out
    tokens = G.all_pairs(p)
    wrong = G.final_position_logits(model, tokens).argmax(-1) != G.labels_of(tokens, p)
    train = json.loads(G.CHECKPOINT_META.read_text())["train_config"]
    train_idx, _ = G.train_test_split(p, train["frac_train"], train["data_seed"])
    return {"p": p, "n": p * p, "n_errors": int(wrong.sum()), "accuracy": 1 - int(wrong.sum()) / (p * p),
            "n_errors_on_training_pairs": int(wrong[train_idx].sum())}


@torch.no_grad()
def answer_two_hop_entity_head(model, data: dict) -> dict:
    """Mean attention from the last position to the entity's slot, per head (TransformerLens's hook_pattern); the
    largest."""
    _, cache = model.run_with_cache(data["tokens"], names_filter=lambda n: n.endswith("hook_pattern"))
    rows = torch.arange(len(data["pos"]))
    by_head = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][rows, :, -1, data["pos"]].double().mean(0)
                           for l in range(model.cfg.n_layers)])                        # [layer, head]
    layer, head = divmod(int(by_head.argmax()), model.cfg.n_heads)
    return {"head": f"L{layer}H{head}", "attention_on_entity": float(by_head[layer, head]),
            "by_head": by_head.tolist()}


def practice_answers() -> dict:
    """Every practice answer, computed from the committed checkpoints (one torch thread)."""
    B, G, _ = _days()
    T = _two_hop()
    with single_thread():
        brackets = B.load_brackets_model()
        data = practice_bracket_data()
        grok = G.load_grokking_model()
        return {"brackets_accuracy": answer_brackets_accuracy(brackets, data),
                "brackets_uniform_head": answer_brackets_uniform_head(brackets, data),
                "grokking_key_freqs": answer_grokking_key_freqs(grok),
                "grokking_accuracy": answer_grokking_accuracy(grok),
                "two_hop_entity_head": answer_two_hop_entity_head(T.load_toy()[0], two_hop_data())}


def two_hop_data() -> dict:
    """The practice prompts of the two-hop toy: day 58's generator with the practice seed."""
    T = _two_hop()
    return T.generate_prompts(T.TASK, PRACTICE_N, PRACTICE_SEED)


def checkpoint_bytes() -> dict:
    """Sizes of the checkpoints the problems read (a changed checkpoint changes the answers: the gate recomputes)."""
    B, G, _ = _days()
    T = _two_hop()
    return {"brackets": B.CHECKPOINT.stat().st_size, "grokking": G.CHECKPOINT.stat().st_size,
            "two_hop": T.CHECKPOINT.stat().st_size}


# ---------------------------------------------------------------- the experiment


def run_experiment(out_dir: Path = HERE) -> dict:
    """Collect the sources with day 29's machinery, build its three tables and the ARENA table, answer the practice
    problems, draw the tests-per-day figure and the verdicts figure, write results.json."""

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    days = collect()
    totals = R29.counts(days)
    rows = arena_rows()
    R29.tests_figure(days, out_dir / "figures/module1_tests.png", "Module 1: what each day's gate checks")

    verdicts = verdict_counts(rows)
    verdicts_figure(rows, MODULE_SECTIONS, out_dir / "figures/module1_verdicts.png", "Module 1", height=3.2)

    results = {
        "days": days,
        "totals": totals,
        "arena": rows,
        "verdicts": verdicts,
        "practice": {"questions": PRACTICE, "answers": practice_answers(), "checkpoint_bytes": checkpoint_bytes()},
        "tables": {"summary": R29.summary_table(days), "claims": R29.claims_table(days),
                   "headlines": R29.headline_table(days), "arena": arena_table(rows)},
        "experiment_seconds": time.perf_counter() - start,
        "experiment_cpu_seconds": time.process_time() - cpu_start,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return results
