"""Day 29: module 2 in review — every verified result of days 15–28, generated from the sources.

A review post must not retype numbers: it would drift from the code the first time a day changes.
Here the tables are *built* from three sources and written into results.json, which the post
cites whole:

- the ledger, ``progress.yml``: each day's status, tests passed and failed, gate time and the
  fingerprint of the files that were gated (written by ``invoke publish``);
- the gate reports, ``.gate/NNN.json`` (a build output of ``invoke publish``, not committed): every
  number a test recorded with ``measure(name, value, bound)``; the ones with a bound are the
  checked claims, the rest are context (timings, sizes);
- each day's ``results.json``: the experiment's headline numbers, at paths chosen per day below.

Each day's row records the fingerprint (and check time) of the sources it was built from, so the
gate can tell a current table from a stale one: if a day changed after this review was generated,
its test fails and asks for ``invoke experiment 29``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from pipeline import ledger as ledger_io
from pipeline.gate import load_cached
from pipeline.project import Project

ROOT = Path(__file__).resolve().parents[2]
DAYS = range(15, 29)  # module 2: days 15–28 (this review is day 29)

# The experiment's headline numbers per day: (path in results.json, what it is). Paths only; the values
# are read from the files.
HEADLINES: dict[int, list[tuple[str, str]]] = {
    15: [("frozen_lake.max_abs_diff_exact_vs_iterative", "FrozenLake: exact vs iterative policy evaluation, max |ΔV|"),
         ("frozen_lake.z_monte_carlo_vs_exact", "FrozenLake: Monte Carlo vs exact value, z-score")],
    16: [("cliff.optimal_return", "CliffWalking: optimal return"),
         ("cliff.epsilon_soft_path_return", "CliffWalking: return of the ε-soft optimal path")],
    17: [("frozen_lake_8x8_gamma_099.max_abs_diff_vi_vs_pi", "FrozenLake 8×8: value vs policy iteration, max |ΔV|"),
         ("frozen_lake_8x8_gamma_099.same_policy", "FrozenLake 8×8: same optimal policy")],
    18: [("cartpole.final_greedy_mean_return", "DQN on CartPole: final greedy mean return"),
         ("cartpole.n_seeds_solved", "DQN: seeds solved (of 3)")],
    19: [("mean_last_5_epochs_return", "VPG on CartPole: mean return, last 5 epochs")],
    20: [("mean_final_greedy_return", "A2C on CartPole: final greedy mean return"),
         ("n_seeds_at_475", "A2C: seeds at 475 (of 3)")],
    21: [("trust_region.clipped_final_kl", "clipped objective: final KL after 300 steps"),
         ("trust_region.unclipped_final_kl", "unclipped objective: final KL after 300 steps")],
    22: [("cartpole.final_sampled_mean_return", "PPO on CartPole: final mean return"),
         ("cartpole.n_seeds_solved_greedy", "PPO: seeds solved greedily (of 3)")],
    23: [("every_bug_detected", "PPO debugging: every planted bug detected"),
         ("healthy_is_clean", "PPO debugging: healthy run raises no flag")],
    24: [("headline.test_accuracy", "reward model: held-out preference accuracy"),
         ("headline.bayes_accuracy", "reward model: Bayes-optimal accuracy"),
         ("headline.pearson_r_hat_vs_r_true", "reward model: Pearson r̂ vs r*")],
    25: [("headline.reward_before", "RLHF: reward before"),
         ("headline.reward_after", "RLHF: reward after (β = 0.5)"),
         ("headline.kl_after", "RLHF: KL to the reference after (nats)"),
         ("headline.kl_after_without_penalty", "RLHF: KL without a penalty (nats)")],
    26: [("most_changed_component", "RLHF lens: component with the largest weight change"),
         ("best_probe.tuned.test_r2", "RLHF lens: best reward probe R², tuned model"),
         ("value_head.test_r2", "RLHF lens: value head R²")],
    27: [("toy.heavy_peak_gold", "Goodhart (heavy-tailed error): peak gold of best-of-n"),
         ("toy.heavy_gold_at_max_n", "Goodhart (heavy-tailed error): gold at n = 10⁶")],
    28: [("headline.proxy_optimum_true_return", "Taxi: task return of the proxy's optimum"),
         ("headline.learned_potential_true_return", "Taxi: task return with potential shaping (learned)")],
}


def project() -> Project:
    return Project.at(ROOT)


def lookup(data, dotted: str):
    """data["a"]["b"]… for the path "a.b…" (list indices as digits), as the posts' result shortcode reads it."""
    node = data
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def fmt(value) -> str:
    """A number for a table cell: 4 significant digits, scientific outside [1e-3, 1e5)."""
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if 1e-3 <= abs(value) < 1e5 else f"{value:.2e}"
    return str(value)


def escape(text: str) -> str:
    """Table-cell text: pipes escaped, whitespace collapsed."""
    return " ".join(str(text).replace("|", "\\|").split())


# ---------------------------------------------------------------- collecting the sources


def ledger_rows(proj: Project, days=DAYS) -> list[dict]:
    """One row per day from the ledger (``days``: which days; this review's by default)."""
    ledger = ledger_io.load(proj.ledger_path)
    rows = []
    for day in days:
        e = ledger[day]
        rows.append({"day": day, "topic": e.topic, "status": e.status, "tests_passed": e.tests_passed,
                     "tests_failed": e.tests_failed, "gate_seconds": e.gate_seconds,
                     "last_check": e.last_check.isoformat(timespec="seconds") if e.last_check else None,
                     "fingerprint": e.fingerprint})
    return rows


def gate_measurements(proj: Project, day: int) -> dict | None:
    """Every measured number in the day's cached gate report, or None if there is none."""
    report = load_cached(proj, day)
    if report is None:
        return None
    measured = []
    for test in report.tests:
        if test["outcome"] not in ("passed", "xpassed"):
            continue
        name = test["nodeid"].split("::", 1)[-1]
        for m in test.get("measured", []):
            measured.append({"test": name, "name": m["name"], "value": m["value"], "bound": m.get("bound")})
    return {"fingerprint": report.fingerprint, "checked_at": report.checked_at, "n_passed": report.n_passed,
            "wall_seconds": report.wall_seconds, "measured": measured}


def headline_values(proj: Project, day: int, headlines: dict | None = None) -> list[dict]:
    """The chosen results.json values of a day (missing file or path: recorded as missing); ``headlines``:
    day -> [(path, label)], this review's HEADLINES by default."""
    headlines = HEADLINES if headlines is None else headlines
    path = proj.day_dir(day) / "results.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    out = []
    for key, label in headlines.get(day, []):
        try:
            value = lookup(data, key) if data is not None else None
            found = data is not None
        except (KeyError, IndexError, TypeError):
            value, found = None, False
        out.append({"key": key, "label": label, "value": value, "found": found})
    return out


def collect(proj: Project | None = None, days=DAYS, headlines: dict | None = None) -> dict:
    """All sources for ``days`` (days 15–28 by default) with their ``headlines``, as plain data."""
    proj = proj or project()
    out = {}
    for row in ledger_rows(proj, days):
        day = row["day"]
        out[str(day)] = {"ledger": row, "gate": gate_measurements(proj, day),
                         "headlines": headline_values(proj, day, headlines)}
    return out


# ---------------------------------------------------------------- is a committed review current?


def assert_current(recorded_days: dict, now: dict, review_day: int) -> int:
    """Raise AssertionError naming the day and `invoke experiment {review_day}` if a reviewed day changed since
    the review was generated: its fingerprint, ledger status and tests, its gate time (when the check is the same
    one), the measurements of the gate report the review read, a gate report the review has not seen, or its
    headline values. Returns how many gate reports were compared (none on a fresh clone: .gate/ is not committed)."""
    rerun = f"run `invoke experiment {review_day}`"
    compared = 0
    for day, recorded in recorded_days.items():
        led, cur = recorded["ledger"], now[day]["ledger"]
        assert cur["fingerprint"] == led["fingerprint"], f"day {day} changed since the review was generated: {rerun}"
        for key in ("status", "tests_passed", "tests_failed", "topic"):
            assert cur[key] == led[key], f"day {day}: ledger {key} {cur[key]!r} ≠ review's {led[key]!r}: {rerun}"
        if led["last_check"] == cur["last_check"]:
            assert cur["gate_seconds"] == led["gate_seconds"], f"day {day}: gate seconds: {rerun}"
        gate, gate_now = recorded["gate"], now[day]["gate"]
        if gate_now is not None and gate is not None and (gate_now["fingerprint"], gate_now["checked_at"]) == (
                gate["fingerprint"], gate["checked_at"]):
            assert gate_now["measured"] == gate["measured"], f"day {day}: gate measurements: {rerun}"
            compared += 1
        else:
            assert gate_now is None or gate is not None, f"day {day} has a gate report the review has not seen: {rerun}"
        assert now[day]["headlines"] == recorded["headlines"], f"day {day}: results.json changed since the review: {rerun}"
    return compared


# ---------------------------------------------------------------- the tables


def summary_table(days: dict) -> str:
    """Markdown: one line per day (ledger status and tests; the gate report's date and claims)."""
    lines = ["| Day | Topic | Status | Tests passed | Gate (s) | Checked claims | Gate report |",
             "|---:|---|---|---:|---:|---:|---|"]
    for day, d in days.items():
        led, gate = d["ledger"], d["gate"]
        claims = "—" if gate is None else str(sum(m["bound"] is not None for m in gate["measured"]))
        report = "none yet" if gate is None else gate["checked_at"][:10]
        seconds = "—" if led["gate_seconds"] is None else f"{led['gate_seconds']:.1f}"
        lines.append(f"| {day} | {escape(led['topic'])} | {led['status']} | {led['tests_passed']} | {seconds} | {claims} | {report} |")
    return "\n".join(lines)


def claims_table(days: dict) -> str:
    """Markdown: every measurement with a stated bound, day by day (the gate's checked claims)."""
    lines = ["| Day | Test | Measured | Value | Bound |", "|---:|---|---|---:|---|"]
    for day, d in days.items():
        if d["gate"] is None:
            continue
        for m in d["gate"]["measured"]:
            if m["bound"] is None:
                continue
            lines.append(f"| {day} | `{escape(m['test'])}` | `{escape(m['name'])}` | {escape(fmt(m['value']))} | {escape(m['bound'])} |")
    return "\n".join(lines)


def headline_table(days: dict) -> str:
    """Markdown: the experiments' headline numbers from each day's results.json."""
    lines = ["| Day | Result | Value | Source |", "|---:|---|---:|---|"]
    for day, d in days.items():
        for h in d["headlines"]:
            value = escape(fmt(h["value"])) if h["found"] else "missing"
            lines.append(f"| {day} | {escape(h['label'])} | {value} | `days/{int(day):03d}/results.json: {h['key']}` |")
    return "\n".join(lines)


def counts(days: dict) -> dict:
    """Totals for the prose: days passed, tests, claims, days with gate reports."""
    ledger = [d["ledger"] for d in days.values()]
    gates = [d["gate"] for d in days.values() if d["gate"] is not None]
    return {"n_days": len(days), "n_passed": sum(r["status"] == "passed" for r in ledger),
            "tests_passed": sum(r["tests_passed"] for r in ledger),
            "n_gate_reports": len(gates),
            "n_claims": sum(m["bound"] is not None for g in gates for m in g["measured"]),
            "n_measurements": sum(len(g["measured"]) for g in gates),
            "gate_seconds_total": round(sum(r["gate_seconds"] or 0 for r in ledger), 2),
            "not_yet_in_ledger": [r["day"] for r in ledger if r["status"] != "passed"]}


def run_experiment(out_dir: Path) -> dict:
    """Collect the sources, build the three tables, draw the tests-per-day figure, write results.json."""
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    days = collect()
    totals = counts(days)

    tests_figure(days, out_dir / "figures/module2_tests.png", "Module 2: what each day's gate checks")

    results = {
        "days": days,
        "totals": totals,
        "tables": {"summary": summary_table(days), "claims": claims_table(days), "headlines": headline_table(days)},
        "experiment_seconds": time.perf_counter() - start,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return results


def tests_figure(days: dict, path: Path, title: str) -> None:
    """Bar chart per day: tests passed (ledger) beside measurements with a bound (gate report)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(9, 0.28 * len(days)), 3.8))
    labels = list(days)
    passed = [days[d]["ledger"]["tests_passed"] for d in labels]
    claims = [0 if days[d]["gate"] is None else sum(m["bound"] is not None for m in days[d]["gate"]["measured"]) for d in labels]
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], passed, 0.4, label="tests passed (ledger)")
    ax.bar([i + 0.2 for i in x], claims, 0.4, label="measurements with a bound (gate report)")
    for i, d in enumerate(labels):
        if days[d]["ledger"]["status"] != "passed":
            ax.text(i, 1, "not yet\npublished", ha="center", fontsize=7, rotation=90, va="bottom")
    ax.set_xticks(list(x), [f"{int(d)}" for d in labels])
    ax.set_xlabel("day")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
