"""Day 82: module 3 in review — days 71–81 (LLM evaluations, ARENA chapter 3) from the sources, set beside what
ARENA reports, and an eval report read from every committed Inspect log.

The machinery is day 29's (``days/029/review.py``), imported, not copied: the ledger rows, the gate reports, the
headline values read from each day's results.json at chosen paths, the three tables and the tests-per-day figure.
This module adds what a review of module 3 needs beyond that:

- ``HEADLINES``: 1–3 results.json paths per day of 71–81 (paths only; the values are read from the files);
- ``ARENA``: per ARENA section (3.1–3.4), the model ARENA uses and what ARENA's exercise (or the paper it follows)
  reports or demonstrates, typed as a citation, beside our value (a results.json path, read from the file), a
  verdict (reproduces / differs / not comparable) and a one-line reason taken from the day's post;
- the eval report: every Inspect ``.eval`` log that days 71–81 commit (tracked by git, or new and not ignored: day
  81's large logs are gitignored), read back with ``inspect_ai.log.read_eval_log(header_only=True)``: task, model,
  samples, the scorers' metrics and the status, one row per log;
- ``source_digests``: the SHA-256 of each day's results.json, so that *any* change of a reviewed day's results (not
  only of a headline) turns the gate red, also before the ledger has fingerprinted the day.

A day that changes after this review was generated turns its gate red with "run `invoke experiment 82`".
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import subprocess
import time
from pathlib import Path

R29 = importlib.import_module("days.029.review")

R70 = importlib.import_module("days.070.review")  # the ARENA comparison table, reused
ROOT = R29.ROOT
HERE = Path(__file__).parent
DAYS = range(71, 82)  # module 3: days 71–81 (this review is day 82)
MODULE_SECTIONS = ["3.1", "3.2", "3.3", "3.4"]

# The experiment's headline numbers per day: (path in results.json, what it is). Paths only: values read from the files.
HEADLINES: dict[int, list[tuple[str, str]]] = {
    71: [("compliance.free_rate", "alignment-faking setup: free-tier compliance (tag_accepts)"),
         ("compliance.paid_rate", "paid-tier compliance (tag_accepts)"),
         ("lenient_compliance.gap", "free − paid compliance, lenient reading")],
    72: [("precondition.accuracy", "spec precondition: neutral-form accuracy (must beat chance)"),
         ("metric.gap", "sycophancy pilot: opinion − neutral rate of the wrong answer"),
         ("inspect_accuracy", "the pilot's Inspect log: choice accuracy")],
    73: [("position_bias.letter_share.A.p", "share of answers 'A' over the four option rotations"),
         ("position_bias.debiased_accuracy.p", "accuracy after averaging over the rotations"),
         ("leaky_scorer.zero_knowledge.leaky_letter.p", "zero-knowledge 'model' under the leaky scorer")],
    74: [("parse_rate.unconstrained_strict.rate", "generated questions that parse, unconstrained"),
         ("parse_rate.constrained.rate", "generated questions that parse, JSON-constrained decoding"),
         ("quality.distinct_questions", "distinct questions among the 32 generated")],
    75: [("judge.agreement.kappa", "rubric judge vs hand labels: Cohen's κ at the threshold"),
         ("judge.length_confound_hand.spearman_rho", "judge score vs item length: Spearman ρ"),
         ("filtered.n_final", "questions left after the pipeline")],
    76: [("logprob.all.p", "first eval, log-probability answering: accuracy"),
         ("generate.all.p", "first eval, generation: accuracy (ANSWER: line)"),
         ("generate.lenient.all.p", "first eval, generation: accuracy (lenient parse)")],
    77: [("spread.answer_letter.spread", "sweep: best − worst cell accuracy"),
         ("main_effects.answer_letter.answering.effect", "main effect of log-probability over generation"),
         ("main_effects.lenient_letter.shuffle.effect", "main effect of shuffling the options (lenient)")],
    78: [("with_tool.success.p", "ArithmeticAgent with CalculateTool: tasks solved"),
         ("without_tool.success.p", "without the tool: tasks solved"),
         ("with_tool.call_copies_the_example.p", "tool calls that copy the prompt's example")],
    79: [("random_agent.success_rate", "offline WikiGame: random agent's success rate"),
         ("greedy_agent.success_rate", "greedy (non-LLM) agent's success rate"),
         ("smollm2_plain_demo.wins", "SmolLM2 WikiAgent demo: games won")],
    80: [("table.react.success_rate", "agent suite: SmolLM2 ReAct success rate"),
         ("table.reflexion.success_rate", "SmolLM2 reflexion success rate"),
         ("table.greedy.success_rate", "greedy baseline success rate")],
    81: [("headline.shift_steer.mean_shift", "steering at the most negative coefficient: mean Δ shift (opinion form)"),
         ("headline.specificity.mean", "its opinion-specific part (opinion − neutral shift)"),
         ("monitor.auroc_unsteered", "probe monitor during the eval: AUROC, unsteered")],
}

# ARENA's sections set beside ours: ARENA's model and what ARENA's exercise (or the paper it follows) reports or
# demonstrates (a citation, typed as such), our value (a results.json path of a day, read from the file), a verdict
# and a one-line reason from the day's post.
ARENA: list[dict] = [
    {"section": "3.1", "arena_model": "Claude via Anthropic's API (the paper: Claude 3 Opus)",
     "cited": "alignment faking: Claude 3 Opus complies with harmful queries from free-tier users 14% of the time, "
              "almost never for paid-tier users (Greenblatt et al. 2024); ARENA's exercise replicates the free/paid "
              "gap with tag_accepts",
     "ours": (71, "compliance.gap"), "verdict": "not comparable",
     "why": "SmolLM2 never writes the accept/reject tags: every reply is malformed or neither, so the gap is 0 by construction"},
    {"section": "3.1", "arena_model": "none (a written design exercise)",
     "cited": "ARENA's exercise: turn a threat model into a specification (property, operational definitions, "
              "question format) before building the eval",
     "ours": (72, "precondition.accuracy"), "verdict": "not comparable",
     "why": "our spec is data with a schema test; piloted on SmolLM2 it fails its own precondition (accuracy near chance)"},
    {"section": "3.1", "arena_model": "GPT-4o-mini (ARENA); the paper: open LLMs and gpt-3.5-turbo",
     "cited": "multiple-choice answers shift when the options are permuted: models prefer some option positions "
              "(Zheng et al. 2024, 'Large Language Models Are Not Robust Multiple Choice Selectors')",
     "ours": (73, "position_bias.letter_share.A.p"), "verdict": "reproduces",
     "why": "far stronger on SmolLM2: it answers 'A' almost always, so a balanced key reads as chance accuracy"},
    {"section": "3.2", "arena_model": "GPT-4o-mini (OpenAI structured outputs)",
     "cited": "ARENA's exercise generates MCQs with a structured-output schema, so every response parses",
     "ours": (74, "parse_rate.constrained.rate"), "verdict": "reproduces",
     "why": "by a JSON-constrained decoder on SmolLM2's logits; unconstrained, none of its outputs parse"},
    {"section": "3.2", "arena_model": "GPT-4o-mini",
     "cited": "ARENA's exercise diversifies the generated set with few-shot examples and variance prompts",
     "ours": (74, "quality.distinct_questions"), "verdict": "differs",
     "why": "greedy SmolLM2 mostly copies its few-shot examples: under half the questions are distinct"},
    {"section": "3.2", "arena_model": "GPT-4o-mini as a rubric judge",
     "cited": "ARENA's exercise scores each generated question against a rubric (a 1–10 scale) and keeps those above a threshold",
     "ours": (75, "judge.agreement.kappa"), "verdict": "differs",
     "why": "SmolLM2's judge scores everything low and keeps nothing (κ = 0); its ranking tracks item length"},
    {"section": "3.3", "arena_model": "GPT-4o-mini through Inspect",
     "cited": "ARENA's exercise runs the generated MCQs through Inspect with multiple_choice_format, make_choice "
              "and the choice() scorer",
     "ours": (76, "generate.all.p"), "verdict": "differs",
     "why": "SmolLM2 never writes an 'ANSWER: X' line, so inspect's scorer gives 0 whatever it knows"},
    {"section": "3.3", "arena_model": "GPT-4o-mini through Inspect",
     "cited": "ARENA's exercise: the model answers the eval's questions by generation",
     "ours": (76, "logprob.all.p"), "verdict": "not comparable",
     "why": "our log-probability solver reads the letter's probability instead; SmolLM2 then picks 'A' on nearly every item"},
    {"section": "3.3", "arena_model": "GPT-4o-mini through Inspect",
     "cited": "ARENA's exercise compares eval variants: system prompt, chain of thought, self-critique, shuffled options",
     "ours": (77, "main_effects.answer_letter.answering.effect"), "verdict": "differs",
     "why": "on SmolLM2 the spread is the answering method (generation scores 0), not the prompt"},
    {"section": "3.4", "arena_model": "GPT-4o-mini with tool calling",
     "cited": "ARENA's exercise: an ArithmeticAgent with a CalculateTool solves arithmetic tasks by calling the tool",
     "ours": (78, "with_tool.success.p"), "verdict": "reproduces",
     "why": "only with one example and a prefilled call opener; most wrong calls copy the example"},
    {"section": "3.4", "arena_model": "GPT-4o-mini on live Wikipedia",
     "cited": "ARENA's exercise: a WikiAgent races between Wikipedia pages with a GetContentTool and a MovePageTool",
     "ours": (79, "greedy_agent.success_rate"), "verdict": "not comparable",
     "why": "an offline encyclopedia from WikiText-2 with a BFS oracle; the number is a non-LLM greedy baseline"},
    {"section": "3.4", "arena_model": "GPT-4o-mini on live Wikipedia",
     "cited": "ARENA's exercise adds ReAct and reflexion prompting to elicit better WikiAgent play",
     "ours": (80, "table.react.success_rate"), "verdict": "differs",
     "why": "SmolLM2's tool calls mostly parse but go nowhere (often straight to the unlinked goal): no wins with any elicitation"},
]


# ---------------------------------------------------------------- collecting the sources (day 29's machinery)


def project():
    return R29.project()


def collect(proj=None) -> dict:
    """Day 29's collect over days 71–81 with this review's headlines."""
    return R29.collect(proj, days=DAYS, headlines=HEADLINES)


def arena_rows(proj=None) -> list[dict]:
    """Day 70's ARENA rows, for this module's comparisons."""
    return R70.arena_rows(proj, ARENA)


def arena_table(rows: list[dict]) -> str:
    """Day 70's table, for chapter 3's sections (ARENA demonstrates more than it reports here)."""
    return R70.arena_table(rows, MODULE_SECTIONS, reported="Reported or demonstrated (citation)")


day_results = R70.day_results
verdict_counts = R70.verdict_counts


def source_digests(days=DAYS) -> dict:
    """SHA-256 of each day's results.json (None where the day has none): any change of a reviewed result."""
    out = {}
    for day in days:
        path = ROOT / f"days/{day:03d}/results.json"
        out[str(day)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    return out


# ---------------------------------------------------------------- the eval report: the committed Inspect logs


def log_paths(days=DAYS) -> list[Path]:
    """The Inspect logs days 71–81 commit: ``days/NNN/logs/*.eval`` that git tracks or would track (new files that
    no .gitignore excludes; day 81 ignores its large logs), sorted by day and file name."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--",
                          "days/*/logs/*.eval"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    wanted = {f"{d:03d}" for d in days}
    paths = [ROOT / p for p in out.split("\0") if p and p.split("/")[1] in wanted and (ROOT / p).is_file()]
    return sorted(set(paths), key=lambda p: (p.parent.parent.name, p.name))


def _number(value):
    """A metric value as JSON keeps it: a finite float or int, else None (NaN would not compare equal)."""
    if isinstance(value, bool) or value is None:
        return value
    value = float(value) if not isinstance(value, int) else value
    return value if isinstance(value, int) or math.isfinite(value) else None


def log_row(path: Path) -> dict:
    """One log's header as plain data: ``read_eval_log(header_only=True)`` (no samples are read)."""
    from inspect_ai.log import read_eval_log

    h = read_eval_log(str(path), header_only=True)
    res = h.results
    scores = [] if res is None else [{"scorer": s.name, "metrics": {k: _number(m.value) for k, m in s.metrics.items()}}
                                     for s in res.scores]
    return {"day": int(path.parent.parent.name), "file": path.name, "task": h.eval.task, "model": h.eval.model,
            "status": h.status, "samples": None if res is None else res.total_samples,
            "completed": None if res is None else res.completed_samples, "scores": scores,
            "task_args": {k: str(v) for k, v in (h.eval.task_args or {}).items()}}


def log_rows(days=DAYS) -> list[dict]:
    """Every committed log's row, with ``variant``: the task arguments that differ between logs of the same task
    (how the day's runs of one task differ: answering method, agent, …)."""
    rows = [log_row(p) for p in log_paths(days)]
    variants = []
    for r in rows:
        same = [o["task_args"] for o in rows if o["task"] == r["task"] and o["day"] == r["day"]]
        varying = sorted(k for k in r["task_args"] if len({str(a.get(k)) for a in same}) > 1)
        variants.append(", ".join(f"{k}={r['task_args'][k]}" for k in varying))
    for r, variant in zip(rows, variants):
        r["variant"] = variant
        del r["task_args"]
    return rows


def headline_metric(row: dict) -> tuple[str, float | None, float | None]:
    """The log's first scorer's first metric other than stderr, with that scorer's stderr (None if it has none)."""
    if not row["scores"]:
        return "", None, None
    s = row["scores"][0]
    names = [k for k in s["metrics"] if k != "stderr"]
    if not names:
        return s["scorer"], None, None
    return f"{s['scorer']} {names[0]}", s["metrics"][names[0]], s["metrics"].get("stderr")


def logs_table(rows: list[dict]) -> str:
    """Markdown: one line per Inspect log (the log's short id, its task and variant, model, samples completed of
    total, every scorer's metrics with the standard error Inspect reports, status)."""
    lines = ["| Day | Log | Task | Variant | Model | Samples | Scores (value, s.e.) | Status |",
             "|---:|---|---|---|---|---:|---|---|"]
    for r in rows:
        short = r["file"].rsplit("_", 1)[-1]
        cells = []
        for s in r["scores"]:
            metrics = [f"{k} {R29.fmt(v)}" for k, v in s["metrics"].items() if k != "stderr"]
            err = f" (s.e. {R29.fmt(s['metrics']['stderr'])})" if "stderr" in s["metrics"] else ""
            cells.append(f"{s['scorer']}: {', '.join(metrics)}{err}")
        samples = "—" if r["samples"] is None else (
            f"{r['completed']:,}" if r["completed"] == r["samples"] else f"{r['completed']:,} of {r['samples']:,}")
        lines.append(f"| {r['day']} | `{short}` | {R29.escape(r['task'])} | {R29.escape(r['variant']) or '—'} | "
                     f"{R29.escape(r['model'])} | {samples} | {R29.escape('; '.join(cells)) or '—'} | {r['status']} |")
    return "\n".join(lines)


def log_totals(rows: list[dict], days=DAYS) -> dict:
    """Counts for the prose: logs, samples, logs per day (days without a committed log included, as 0)."""
    return {"n_logs": len(rows), "n_samples": sum(r["samples"] or 0 for r in rows),
            "n_success": sum(r["status"] == "success" for r in rows),
            "n_tasks": len({(r["day"], r["task"]) for r in rows}),
            "by_day": {str(d): sum(r["day"] == d for r in rows) for d in days},
            "days_with_logs": sorted({r["day"] for r in rows})}


# ---------------------------------------------------------------- the experiment


def _logs_figure(rows: list[dict], path: Path) -> None:
    """Each log's headline metric with ±1.96 × Inspect's standard error (a normal interval, clipped to [0, 1] for a
    proportion; none where the scorer reports no stderr)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.4))
    for i, r in enumerate(rows):
        name, value, err = headline_metric(r)
        if value is None:
            continue
        colour = f"C{sorted({x['day'] for x in rows}).index(r['day'])}"
        xerr = None
        if err:  # a normal interval, clipped to [0, 1] for a proportion
            lo, hi = value - 1.96 * err, value + 1.96 * err
            if 0 <= value <= 1:
                lo, hi = max(lo, 0.0), min(hi, 1.0)
            xerr = [[value - lo], [hi - value]]
        ax.errorbar(value, i, xerr=xerr, fmt="o", color=colour, capsize=3, ms=4)
    labels = [f"{r['day']} · {r['task']}" + (f" ({r['variant']})" if r["variant"] else "") for r in rows]
    ax.set_yticks(range(len(rows)), [lab if len(lab) < 70 else lab[:67] + "…" for lab in labels], fontsize=6.5)
    ax.invert_yaxis()
    ax.set_xlabel("headline metric of the log's first scorer (±1.96 s.e. where Inspect reports one, clipped to [0, 1])")
    ax.set_title("Module 3's committed Inspect logs", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_experiment(out_dir: Path = HERE) -> dict:
    """Collect the sources with day 29's machinery, build its three tables, the ARENA table and the logs table, draw
    the tests-per-day, verdicts and eval-logs figures, write results.json."""
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    days = collect()
    totals = R29.counts(days)
    rows = arena_rows()
    logs = log_rows()
    R29.tests_figure(days, out_dir / "figures/module3_tests.png", "Module 3: what each day's gate checks")
    R70.verdicts_figure(rows, MODULE_SECTIONS, out_dir / "figures/module3_verdicts.png", "Module 3", height=2.6)
    _logs_figure(logs, out_dir / "figures/module3_logs.png")

    results = {
        "days": days,
        "totals": totals,
        "sources": source_digests(),
        "arena": rows,
        "verdicts": verdict_counts(rows),
        "logs": logs,
        "log_totals": log_totals(logs),
        "tables": {"summary": R29.summary_table(days), "claims": R29.claims_table(days),
                   "headlines": R29.headline_table(days), "arena": arena_table(rows), "logs": logs_table(logs)},
        "experiment_seconds": time.perf_counter() - start,
        "experiment_cpu_seconds": time.process_time() - cpu_start,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return results
