"""Day 80: an agent eval suite in Inspect (ARENA 3.4, with 3.3's tooling).

Day 79's Wikipedia-racing agents become an Inspect task:

- ``wiki_race(agent, n_games, seed, max_moves)`` (``@task``): one sample per game, a seeded draw of
  (start, goal) article pairs at breadth-first distance 2 or 3 (day 79's ``sample_games``); the target
  is the goal page.
- ``wiki_agent_solver(elicitation)`` (``@solver``): runs day 79's agent loop, the model reached through
  Inspect's ``get_model()`` (so ``--model smollm2/smollm2`` here, ``openai/...`` or ``anthropic/...``
  for a user with a key): ``plain`` (``WikiAgent``), ``react`` (``WikiAgentReAct``) and ``reflexion``
  (``WikiAgentReAct`` on ``WikiGameReflexion``, with ``TestPathTool``).
- ``policy_solver(name)``: the non-LLM agents through the same game: ``random`` (a uniformly random
  permitted link), ``greedy`` (the link sharing most words with the goal's title and lead) and
  ``optimal`` (BFS); run with ``--model none``.
- ``wiki_race_scorer()``: ``success`` (1 when the goal was reached within ``max_moves``) and
  ``moves_over_optimal`` = moves / BFS distance for a won game (≥ 1; 0 marks a lost game, and the metric
  ``mean_over_successes`` averages the won games only).

The success rate is a proportion of $n$ games; its 95% interval is Wilson's,
$\\frac{\\hat p + z^2/2n \\pm z\\sqrt{\\hat p(1-\\hat p)/n + z^2/4n^2}}{1 + z^2/n}$, computed from the log.

Importing this module loads no model (it registers day 71's ``smollm2`` provider).
"""

from __future__ import annotations

import importlib
import json
import random
import time
from pathlib import Path

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser, GenerateConfig, ModelOutput, get_model
from inspect_ai.scorer import Score, mean, metric, scorer, stderr
from inspect_ai.solver import solver

W = importlib.import_module("days.079.wiki_race")
llm = importlib.import_module("days.071.llm")  # registers the smollm2/smollm2 provider

ELICITATIONS = {"plain": (W.WikiGame, W.WikiAgent), "react": (W.WikiGameReAct, W.WikiAgentReAct),
                "reflexion": (W.WikiGameReflexion, W.WikiAgentReAct)}
POLICIES = ("random", "greedy", "optimal")
AGENTS = (*ELICITATIONS, *POLICIES)


def wiki_dataset(n_games: int = 12, seed: int = 0, wiki=None):
    """``n_games`` samples: input names start and goal, target the goal, metadata start/goal/optimal."""
    wiki = wiki if wiki is not None else W.build_encyclopedia()
    samples = [Sample(input=f"Race from {s} to {g}.", target=g, id=i,
                      metadata={"start": s, "goal": g, "optimal": d})
               for i, (s, g, d) in enumerate(W.sample_games(wiki, n_games, seed=seed))]
    return MemoryDataset(samples, name=f"wiki_race_seed{seed}")


def _to_inspect(messages: list[dict]):
    cls = {"system": ChatMessageSystem, "user": ChatMessageUser, "assistant": ChatMessageAssistant}
    return [cls[m["role"]](content=m["content"]) for m in messages]


def _finish(state, task, extra: dict):
    """Record the game in the sample's metadata and output (the path, as the answer)."""
    state.metadata.update({"won": task.check_win(), "moves": task.n_moves, "path": list(task.page_history)} | extra)
    state.output = ModelOutput.from_content(model="agent", content=" -> ".join(task.page_history))
    return state


@solver
def wiki_agent_solver(elicitation: str = "plain", max_moves: int = 8, act_tokens: int = 40,
                      reason_tokens: int = 32, prefill: bool | None = None):
    """Day 79's agent loop as an Inspect solver: each model request goes through ``get_model().generate``.

    ``prefill`` (default: only for the local smollm2 provider) ends each action request with the
    assistant turn ``<tool_call>{"name": "``; an API model gets the same prompt without it."""
    game_cls, agent_cls = ELICITATIONS[elicitation]

    async def solve(state, generate):
        model = get_model()
        use_prefill = str(model).startswith("smollm2") if prefill is None else prefill
        meta = state.metadata
        task = game_cls(meta["start"], meta["goal"], W.build_encyclopedia())
        kwargs = dict(prefill=use_prefill, act_tokens=act_tokens)
        if agent_cls is W.WikiAgentReAct:
            kwargs["reason_tokens"] = reason_tokens
        agent = agent_cls(task, **kwargs)
        agent.start()
        for _ in range(max_moves):
            if task.check_win():
                break
            done = False
            while not done:
                request = agent.next_request()
                done = request.kind == "act"
                output = await model.generate(_to_inspect(request.messages),
                                              config=GenerateConfig(max_tokens=request.max_tokens,
                                                                    temperature=0.0))
                agent.receive(output.completion)
        return _finish(state, task, {"model_calls": agent.n_calls, "tool_errors": agent.n_tool_errors,
                                     "steps": agent.log})

    return solve


@solver
def policy_solver(name: str = "random", max_moves: int = 8, seed: int = 0):
    """A non-LLM agent through the same game: ``random`` (seeded per sample), ``greedy`` or ``optimal``."""
    async def solve(state, generate):
        meta = state.metadata
        task = W.WikiGame(meta["start"], meta["goal"], W.build_encyclopedia())
        policy = {"greedy": W.greedy_policy, "optimal": W.optimal_policy}.get(name)
        if policy is None:
            policy = W.random_policy(random.Random(1000 * seed + int(state.sample_id)))
        W.agent_loop(W.PolicyAgent(task, policy), num_loops=max_moves)
        return _finish(state, task, {})

    return solve


@metric
def mean_over_successes():
    """The mean of the positive values (won games' moves / optimal); NaN-free: 0 when nothing was won."""
    def compute(scores):
        floats = [getattr(s, "score", s).as_float() for s in scores]  # SampleScore or Score (dict values)
        vals = [v for v in floats if v > 0]
        return sum(vals) / len(vals) if vals else 0.0
    return compute


@scorer(metrics={"success": [mean(), stderr()], "moves_over_optimal": [mean_over_successes()]})
def wiki_race_scorer():
    """success = 1 if the goal was reached; moves_over_optimal = moves / BFS distance if won, else 0."""
    async def score(state, target):
        meta = state.metadata
        won = bool(meta.get("won")) and meta["path"][-1] == target.text
        ratio = meta["moves"] / meta["optimal"] if won else 0.0
        return Score(value={"success": 1.0 if won else 0.0, "moves_over_optimal": ratio},
                     answer=" -> ".join(meta.get("path", [])),
                     explanation=f"{meta.get('moves')} moves, optimal {meta['optimal']}")

    return score


@task
def wiki_race(agent: str = "plain", n_games: int = 12, seed: int = 0, max_moves: int = 8, act_tokens: int = 40,
              reason_tokens: int = 32):
    """Wikipedia racing on the offline encyclopedia: ``agent`` is an elicitation (plain, react, reflexion:
    needs a model) or a policy (random, greedy, optimal: run with model 'none')."""
    if agent not in AGENTS:
        raise ValueError(f"unknown agent {agent!r}; expected one of {AGENTS}")
    solver = (wiki_agent_solver(agent, max_moves=max_moves, act_tokens=act_tokens, reason_tokens=reason_tokens)
              if agent in ELICITATIONS
              else policy_solver(agent, max_moves=max_moves, seed=seed))
    return Task(dataset=wiki_dataset(n_games, seed), solver=solver, scorer=wiki_race_scorer(),
                metadata={"agent": agent, "max_moves": max_moves, "seed": seed})


def classify_moves(samples) -> dict:
    """What the agent's actions were, from the per-sample step records in the log: move_page calls to a permitted
    link, to the page it is on, straight to an unlinked goal, or to another unlinked title; other tools; and
    malformed calls."""
    counts = {"move_permitted": 0, "move_to_current_page": 0, "move_to_unlinked_goal": 0, "move_to_other_unlinked": 0,
              "get_content": 0, "test_path": 0, "malformed": 0}
    for s in samples:
        goal = s.metadata["goal"].lower()
        for step in s.metadata.get("steps") or []:
            if "error" in step:
                counts["malformed"] += 1
            elif step["tool"] != "move_page":
                counts[step["tool"]] += 1
            else:
                target = str(step["arguments"].get("new_page", "")).strip().lower()
                if step["result"].startswith("Moving page to"):
                    counts["move_permitted"] += 1
                elif target == step["page"].lower():
                    counts["move_to_current_page"] += 1
                elif target == goal:
                    counts["move_to_unlinked_goal"] += 1
                else:
                    counts["move_to_other_unlinked"] += 1
    return counts


def summarise_log(log) -> dict:
    """The numbers of one eval log, read back: n, wins, success rate with its Wilson 95% interval, and the
    mean moves / optimal over won games (from the per-sample scores, checked against inspect's metrics)."""
    from scipy.stats import binomtest

    values = [s.scores["wiki_race_scorer"].value for s in log.samples]
    wins = int(sum(v["success"] for v in values))
    n = len(values)
    ci = binomtest(wins, n).proportion_ci(method="wilson")
    ratios = [v["moves_over_optimal"] for v in values if v["success"]]
    metrics = {f"{sc.name}.{name}": m.value for sc in log.results.scores for name, m in sc.metrics.items()}
    out = {"agent": log.eval.task_args.get("agent"), "model": log.eval.model, "n": n, "wins": wins,
           "success_rate": wins / n, "ci95": [float(ci.low), float(ci.high)],
           "mean_moves_over_optimal": sum(ratios) / len(ratios) if ratios else None,
           "inspect_metrics": metrics,
           "tool_errors": sum(s.metadata.get("tool_errors") or 0 for s in log.samples),
           "model_calls": sum(s.metadata.get("model_calls") or 0 for s in log.samples),
           "actions": classify_moves(log.samples)}
    return out


def run_experiment(out_dir: Path, n_games: int = 8, max_moves: int = 4, seed: int = 0,
                   elicitations=("plain", "react", "reflexion")) -> dict:
    """Every agent on the same games; logs into ``out_dir/logs`` (``.eval``); results.json read back from them."""
    from inspect_ai import eval as inspect_eval

    from checks.timing import single_thread

    out_dir = Path(out_dir)
    logs_dir = out_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    for old in logs_dir.glob("*.eval"):
        old.unlink()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    runs = {}
    for agent, model in [(p, "none") for p in POLICIES] + [(e, "smollm2/smollm2") for e in elicitations]:
        t0 = time.perf_counter()
        with single_thread():
            [log] = inspect_eval(wiki_race(agent=agent, n_games=n_games, seed=seed, max_moves=max_moves),
                                 model=model, log_dir=str(logs_dir), log_format="eval", display="none",
                                 max_samples=n_games, max_connections=n_games)
        runs[agent] = (Path(log.location).name, time.perf_counter() - t0)
    return write_results(out_dir, runs, dict(n_games=n_games, max_moves=max_moves, seed=seed),
                         wall_seconds=time.perf_counter() - wall0, cpu_seconds=time.process_time() - cpu0)


def write_results(out_dir: Path, runs: dict[str, tuple[str, float]], config: dict, *, wall_seconds: float,
                  cpu_seconds: float) -> dict:
    """results.json and the figure, from the logs alone: ``runs`` maps each agent to (log file name in
    ``out_dir/logs``, the eval's wall seconds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from inspect_ai.log import read_eval_log

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    rows = []
    for agent, (name, wall) in runs.items():
        path = out_dir / "logs" / name
        rows.append(summarise_log(read_eval_log(str(path))) | {"log": name, "log_bytes": path.stat().st_size,
                                                              "wall_seconds": wall})
    fig, ax = plt.subplots(figsize=(7, 3.4))
    err = [[r["success_rate"] - r["ci95"][0] for r in rows], [r["ci95"][1] - r["success_rate"] for r in rows]]
    colors = ["tab:gray" if r["model"].startswith("none") else "tab:blue" for r in rows]
    ax.bar([r["agent"] for r in rows], [r["success_rate"] for r in rows], yerr=err, capsize=4, color=colors)
    ax.set(ylabel=f"success rate (n = {config['n_games']}, Wilson 95%)", ylim=(0, 1.05),
           title=f"Wikipedia racing, at most {config['max_moves']} moves: no model (grey), SmolLM2 (blue)")
    fig.tight_layout()
    fig.savefig(out_dir / "figures" / "success.png", dpi=120)
    plt.close(fig)
    results = config | {"table": {r["agent"]: r for r in rows}, "wall_seconds": wall_seconds,
                        "cpu_seconds": cpu_seconds}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n", encoding="utf-8")
    return results
