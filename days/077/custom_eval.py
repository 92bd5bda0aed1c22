"""Day 77: a custom eval in Inspect, swept over how the question is asked (ARENA 3.3).

ARENA section: 3.3 Running Evals (https://learn.arena.education/chapter3_llm_evals/03_running_evals/).

ARENA's ``alignment_eval`` runs the dataset it generated and filtered (days 074–075) as an Inspect
task and varies how each question is put to the model. Here the four choices ARENA varies form a
full factorial **sweep** of $2^4 = 16$ cells:

- ``system``: the record's system prompt as a system message, or dropped;
- ``cot``: answer at once, or reason first (ARENA's ``TEMPLATE_MCQ_COT`` → ``generate`` →
  ``make_choice``) and then answer;
- ``shuffle``: the options in the dataset's order, or permuted with a fixed seed (the target letter
  follows its text: day 076's ``record_to_sample_full``);
- ``answering``: ``generate`` (ARENA's way: the model writes ``ANSWER: X``) or ``logprob`` (ours, for a
  135M model: the most probable option letter after ``ANSWER:``, day 071's solver).

Every cell renders the question with the same template (ARENA's ``TEMPLATE_MCQ``) and is scored by
the same two scorers of day 076 (strict ``ANSWER: X``; lenient), so the only difference between two
cells is the factor that differs. The metric is the rate of answers that match the behaviour the
dataset measures (its ``answer_matching_behavior``), with a Wilson interval per cell; the *spread*
is the largest minus the smallest rate, and because every cell answers the same records, the two
extreme cells are compared with an exact McNemar test on the records where they disagree.

Importing this module loads no model. The task runs unchanged on ``openai/...`` or ``anthropic/...``.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from inspect_ai import Task, task
from inspect_ai.dataset import json_dataset
from inspect_ai.solver import generate

HERE = Path(__file__).parent
DAY_075 = Path(importlib.import_module("days.075").__file__).parent   # by import: a practice copy lives elsewhere
ROOT = DAY_075.parents[1]
SETUP = importlib.import_module("days.076.inspect_setup")   # record_to_sample_full, solvers, scorers, intervals
llm = importlib.import_module("days.071.llm")                # the smollm2 provider, the log-prob solver

DATASET_PATH = DAY_075 / "data/filtered_questions.json"   # day 074 generated, day 075 filtered
SEED = 77
MAX_TOKENS = {"answer": 32, "reasoning": 96, "choice": 16}
SCORERS = ("answer_letter", "lenient_letter")


@dataclass(frozen=True)
class Cell:
    """One way of asking: the four factors of the sweep."""

    system: bool
    cot: bool
    shuffle: bool
    answering: str  # "generate" or "logprob"

    @property
    def name(self) -> str:
        return "/".join([self.answering, "system" if self.system else "no-system", "cot" if self.cot else "direct",
                         "shuffled" if self.shuffle else "ordered"])


def sweep_grid() -> list[Cell]:
    """The $2^4$ cells, answering method slowest, shuffle fastest."""
    return [Cell(system, cot, shuffle, answering) for answering, system, cot, shuffle in
            itertools.product(("generate", "logprob"), (True, False), (False, True), (False, True))]


def cell_solver(cell: Cell) -> list:
    """The solver chain of a cell.

    direct:    [multiple_choice_format(TEMPLATE_MCQ), answer]
    cot:       [multiple_choice_format(TEMPLATE_MCQ_COT), generate(reasoning), make_choice(), answer]
    answer = ``generate`` (one short reply) or day 071's ``logprob_multiple_choice`` with the template
    ``"{question}"``, which leaves the conversation as the chain built it and scores the letters after a
    prefilled ``ANSWER:``.
    """
    if cell.answering == "generate":
        answer = generate(max_tokens=MAX_TOKENS["choice" if cell.cot else "answer"], temperature=0.0)
    elif cell.answering == "logprob":
        answer = llm.logprob_multiple_choice(template="{question}")
    else:
        raise ValueError(f"answering must be 'generate' or 'logprob', got {cell.answering!r}")
    if cell.cot:
        return [SETUP.multiple_choice_format(SETUP.TEMPLATE_MCQ_COT),
                generate(max_tokens=MAX_TOKENS["reasoning"], temperature=0.0), SETUP.make_choice(), answer]
    return [SETUP.multiple_choice_format(SETUP.TEMPLATE_MCQ), answer]


@task
def custom_eval(system: bool = True, cot: bool = False, shuffle: bool = False, answering: str = "logprob",
                json_dataset_path: str = str(DATASET_PATH), n: int | None = None, seed: int = SEED) -> Task:
    """ARENA's ``alignment_eval`` for one cell of the sweep, on the first ``n`` records
    (``inspect eval days/077/custom_eval.py -T cot=true -T answering=generate --model ...``)."""
    cell = Cell(system, cot, shuffle, answering)
    rng = random.Random(seed)
    dataset = json_dataset(str(json_dataset_path), lambda r: SETUP.record_to_sample_full(
        r, "system" if cell.system else None, shuffle=cell.shuffle, rng=rng), limit=n)
    return Task(dataset=dataset, solver=cell_solver(cell), scorer=[SETUP.answer_letter(), SETUP.lenient_letter()],
                metadata={"cell": asdict(cell)}, name=f"custom_eval_{cell.name.replace('/', '_')}")


# ---------------------------------------------------------------------------------------------------- reading logs


def summarise_cell(log) -> dict:
    """A cell's numbers from its log: per scorer the matching rate with its Wilson interval, how many
    samples got an answer at all, and per sample (by id) whether it matched (for the paired test)."""
    out = {"cell": log.eval.metadata["cell"], "n": len(log.samples),
           # what a model that always answers A would score here: the letter prior, not the property
           "always_a": SETUP.proportion(sum(list(s.target) == ["A"] for s in log.samples), len(log.samples))}
    for name in SCORERS:
        matched = {str(s.id): s.scores[name].value == "C" for s in log.samples}
        answered = sum(s.scores[name].answer not in (None, "") for s in log.samples)
        out[name] = {**SETUP.proportion(sum(matched.values()), len(matched)), "answered": answered,
                     "matched": dict(sorted(matched.items()))}
    for name, field in (("answer_letter", "answer_letters"), ("lenient_letter", "lenient_letters")):
        letters: dict[str, int] = {}
        for s in log.samples:
            key = s.scores[name].answer or "none"
            letters[key] = letters.get(key, 0) + 1
        out[field] = dict(sorted(letters.items()))
    return out


def mcnemar(a: dict[str, bool], b: dict[str, bool]) -> dict:
    """Exact McNemar test of two cells on the same records: b10 = records only ``a`` matched, b01 = only
    ``b``; under H0 (no difference) b10 ~ Binomial(b10 + b01, 1/2); two-sided p-value (1 when no record
    disagrees)."""
    from scipy.stats import binomtest

    if set(a) != set(b):
        raise ValueError("McNemar needs the same records in both cells")
    b10 = sum(a[k] and not b[k] for k in a)
    b01 = sum(b[k] and not a[k] for k in a)
    p = 1.0 if b10 + b01 == 0 else float(binomtest(b10, b10 + b01, 0.5).pvalue)
    return {"only_first": b10, "only_second": b01, "p_value": p}


def spread(cells: list[dict], scorer: str = "lenient_letter") -> dict:
    """The largest minus the smallest matching rate across cells, the two cells, and their McNemar test."""
    hi = max(cells, key=lambda c: c[scorer]["p"])
    lo = min(cells, key=lambda c: c[scorer]["p"])
    return {"scorer": scorer, "max": {"cell": Cell(**hi["cell"]).name, "p": hi[scorer]["p"]},
            "min": {"cell": Cell(**lo["cell"]).name, "p": lo[scorer]["p"]},
            "spread": hi[scorer]["p"] - lo[scorer]["p"],
            "mcnemar": mcnemar(hi[scorer]["matched"], lo[scorer]["matched"])}


def main_effects(cells: list[dict], scorer: str = "lenient_letter") -> dict:
    """For each factor: the mean rate over the cells at its second level minus at its first (each mean
    over the 8 cells that share that level: a balanced design, so other factors cancel)."""
    levels = {"system": (False, True), "cot": (False, True), "shuffle": (False, True),
              "answering": ("generate", "logprob")}
    out = {}
    for factor, (first, second) in levels.items():
        mean = {lv: sum(c[scorer]["p"] for c in cells if c["cell"][factor] == lv) /
                sum(c["cell"][factor] == lv for c in cells) for lv in (first, second)}
        out[factor] = {"levels": [str(first), str(second)], "effect": mean[second] - mean[first]}
    return out


def dataset_sha256(path: Path = DATASET_PATH) -> str:
    """The dataset's bytes, hashed: the committed sweep is about this file and no other."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_back(log_dir: Path) -> list[dict]:
    """Every cell's summary, read from the ``.eval`` logs in ``log_dir`` (in the sweep's order)."""
    from inspect_ai.log import read_eval_log

    order = [c.name for c in sweep_grid()]
    cells = []
    for path in sorted(Path(log_dir).glob("*.eval")):
        log = read_eval_log(str(path))
        cells.append(summarise_cell(log) | {"log_file": path.name})
    return sorted(cells, key=lambda c: order.index(Cell(**c["cell"]).name))


def results_from_logs(log_dir: Path, n_records: int) -> dict:
    """What results.json records about the sweep, all of it computed from the logs."""
    cells = read_back(log_dir)
    return {"n_records": n_records, "cells": cells,
            "spread": {s: spread(cells, s) for s in SCORERS},
            "main_effects": {s: main_effects(cells, s) for s in SCORERS}}


# ---------------------------------------------------------------------------------------------------- experiment


def run_sweep(model, log_dir: Path, *, cells: list[Cell] | None = None, n: int | None = None,
              dataset_path: Path = DATASET_PATH, max_tasks: int = 4) -> list:
    """Run each cell as its own task (one ``.eval`` log per cell) in one ``eval`` call on one shared model;
    ``max_tasks`` cells run at once, so the local provider batches their requests together."""
    from inspect_ai import eval as inspect_eval

    cells = cells or sweep_grid()
    tasks = [custom_eval(**asdict(cell), json_dataset_path=str(dataset_path), n=n) for cell in cells]
    logs = inspect_eval(tasks, model=model, log_dir=str(log_dir), log_format="eval", display="none",
                        max_tasks=max_tasks)
    for cell, log in zip(cells, logs):
        if log.status != "success":
            raise RuntimeError(f"{cell.name}: eval failed: {log.error}")
    return logs


def run_experiment(out_dir: Path = HERE, model_name: str = "smollm2/smollm2") -> dict:
    """The full sweep on SmolLM2 (16 cells × the whole dataset, one torch thread), logs in out_dir/logs,
    results.json computed from the logs read back, and the figure."""
    from inspect_ai.model import get_model

    from checks.timing import single_thread

    out_dir = Path(out_dir)
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*.eval"):
        old.unlink()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with single_thread():
        run_sweep(get_model(model_name), log_dir)
    n_records = len(SETUP.load_records(DATASET_PATH))
    results = {"model": model_name, "dataset": str(DATASET_PATH.relative_to(ROOT)),
               "dataset_sha256": dataset_sha256(), "seed": SEED,
               **results_from_logs(log_dir, n_records),
               "wall_seconds": time.perf_counter() - wall0, "cpu_seconds": time.process_time() - cpu0}
    plot_sweep(results, out_dir / "figures" / "sweep.png")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


def plot_sweep(results: dict, path: Path) -> None:
    """Each cell's matching rate with its 95% Wilson interval (strict and lenient scoring), grouped by
    answering method; the spread's two extreme cells marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    cells = results["cells"]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    for j, (scorer, colour) in enumerate((("answer_letter", "tab:blue"), ("lenient_letter", "tab:orange"))):
        xs = [i + (j - 0.5) * 0.35 for i in range(len(cells))]
        ps = [c[scorer]["p"] for c in cells]
        err = [[max(0.0, c[scorer]["p"] - c[scorer]["ci95"][0]) for c in cells],
               [max(0.0, c[scorer]["ci95"][1] - c[scorer]["p"]) for c in cells]]
        ax.errorbar(xs, ps, yerr=err, fmt="o", ms=4, capsize=2, color=colour,
                    label={"answer_letter": "strict (ANSWER: X)", "lenient_letter": "lenient"}[scorer])
    for i, c in enumerate(cells):
        ax.hlines(c["always_a"]["p"], i - 0.4, i + 0.4, color="grey", lw=1.5, ls="--",
                  label="a model that always answers A" if i == 0 else None)
    names = [Cell(**c["cell"]).name.split("/", 1)[1].replace("/", "\n") for c in cells]
    ax.set_xticks(range(len(cells)), names, fontsize=6)
    ax.axvline(len(cells) / 2 - 0.5, color="grey", lw=0.8)
    ax.text(len(cells) / 4 - 0.5, 1.02, "generate", ha="center", fontsize=9)
    ax.text(3 * len(cells) / 4 - 0.5, 1.02, "log-prob letters", ha="center", fontsize=9)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("answers matching the behaviour\n(95% Wilson CI)")
    s = results["spread"]["lenient_letter"]
    ax.set_title(f"One dataset, 16 ways of asking: spread {s['spread']:.2f} (lenient), n = {results['n_records']}",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
