"""The gate of day 80 (ARENA 3.4 agents as Inspect tasks: success rate and path length over optimal).

References: networkx's shortest paths for every sample's optimal length; day 79's agents replayed outside
Inspect (the scores in the log must be theirs); statsmodels' Wilson interval for the CI; inspect's own
``mean()`` and ``read_eval_log`` for the log. Every eval in the gate writes to ``tmp_path``. SmolLM2 runs for
real through the ``smollm2/smollm2`` provider on a couple of one-move games (scaffolding; the measured rates
come from the slow run and its committed logs).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from inspect_ai import eval as inspect_eval
from inspect_ai.log import read_eval_log
from statsmodels.stats.proportion import proportion_confint

from checks.committed import assert_reproduces, exact, statistical

from . import agent_eval as A

W = importlib.import_module("days.079.wiki_race")
HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("wikitext-2")


def run(tmp_path, agent, model="none", **kwargs):
    [log] = inspect_eval(A.wiki_race(agent=agent, **kwargs), model=model, log_dir=str(tmp_path),
                         log_format="eval", display="none", max_samples=16, max_connections=16)
    assert log.status == "success", log.error
    return read_eval_log(log.location)


@pytest.fixture(scope="module")
def wiki():
    return W.build_encyclopedia()


@pytest.fixture(scope="module")
def greedy_log(tmp_path_factory):
    return run(tmp_path_factory.mktemp("greedy"), "greedy", n_games=12)


def test_dataset_targets_and_optimal_lengths(wiki):
    """Spec (scorer for path length over optimal): every sample's target is its goal page and its optimal length
    is networkx's shortest path length (2 or 3); the seeded draw is reproducible and has no repeated game."""
    G = nx.DiGraph([(u, v) for u, vs in wiki.graph.items() for v in vs])
    ds = A.wiki_dataset(12, seed=0)
    assert len(ds) == 12
    for s in ds:
        m = s.metadata
        assert s.target == m["goal"] and m["optimal"] == nx.shortest_path_length(G, m["start"], m["goal"]) in (2, 3)
    again = A.wiki_dataset(12, seed=0)
    assert [s.metadata for s in ds] == [s.metadata for s in again]
    assert len({(s.metadata["start"], s.metadata["goal"]) for s in ds}) == 12


def test_optimal_agent_scores_perfectly(tmp_path):
    """The scorer on the oracle: the scripted optimal agent succeeds on every sample with moves / optimal = 1."""
    log = run(tmp_path, "optimal", n_games=8)
    for s in log.samples:
        v = s.scores["wiki_race_scorer"].value
        assert v == {"success": 1.0, "moves_over_optimal": 1.0}
    row = A.summarise_log(log)
    assert row["wins"] == 8 and row["mean_moves_over_optimal"] == 1.0


def test_scores_equal_a_replay_outside_inspect(greedy_log, wiki, measure):
    """The solver wraps day 79's agent loop faithfully: each sample's success and moves/optimal equal a replay of
    the greedy agent with day 79's agent_loop outside Inspect; inspect's mean() of success and our
    mean_over_successes equal numpy's means over the same samples."""
    successes, ratios = [], []
    for s in greedy_log.samples:
        m = s.metadata
        task = W.WikiGame(m["start"], m["goal"], wiki)
        won = W.agent_loop(W.PolicyAgent(task, W.greedy_policy), num_loops=8)
        v = s.scores["wiki_race_scorer"].value
        assert v["success"] == float(won) and m["path"] == task.page_history
        assert v["moves_over_optimal"] == (task.n_moves / m["optimal"] if won else 0.0)
        successes.append(float(won))
        if won:
            ratios.append(task.n_moves / m["optimal"])
    row = A.summarise_log(greedy_log)
    assert row["inspect_metrics"]["success.mean"] == pytest.approx(np.mean(successes), abs=1e-12)
    assert row["inspect_metrics"]["moves_over_optimal.mean_over_successes"] == pytest.approx(np.mean(ratios), abs=1e-12)
    measure("greedy.success_rate", row["success_rate"])


def test_wilson_interval_equals_statsmodels(greedy_log):
    """Spec (with CIs): the success rate's 95% interval is Wilson's (statsmodels' proportion_confint as reference)."""
    row = A.summarise_log(greedy_log)
    low, high = proportion_confint(row["wins"], row["n"], alpha=0.05, method="wilson")
    assert row["ci95"] == pytest.approx([low, high], abs=1e-9)


def test_random_agent_is_seeded_per_sample(tmp_path, wiki):
    """The random baseline is reproducible: the same seed gives the same paths, each path a chain of permitted links."""
    a, b = run(tmp_path / "a", "random", n_games=6), run(tmp_path / "b", "random", n_games=6)
    assert [s.metadata["path"] for s in a.samples] == [s.metadata["path"] for s in b.samples]
    for s in a.samples:
        p = s.metadata["path"]
        assert all(v in wiki.graph[u] for u, v in zip(p, p[1:]))


def test_classify_moves_on_replayed_steps(wiki):
    """The action census that the post cites: each move_page record lands in exactly one class (to a permitted
    link, to the page it is on, to an unlinked goal, to another unlinked title), other tools and malformed calls
    are counted apart; the records are those day 79's WikiAgent writes, replayed on a real game."""
    from types import SimpleNamespace

    s, g, _ = W.sample_games(wiki, 1, seed=0)[0]
    task = W.WikiGame(s, g, wiki)
    agent = W.WikiAgent(task)
    agent.start()
    nxt = W.optimal_policy(task)
    for reply in (f'move_page", "arguments": {{"new_page": "{s}"}}}}</tool_call>',
                  f'move_page", "arguments": {{"new_page": "{g}"}}}}</tool_call>',
                  'move_page", "arguments": {"new_page": "Atlantis"}}</tool_call>',
                  'get_content", "arguments": {}}</tool_call>', 'oops',
                  f'move_page", "arguments": {{"new_page": "{nxt}"}}}}</tool_call>'):
        agent.receive(reply)
    sample = SimpleNamespace(metadata={"goal": g, "steps": agent.log})
    assert A.classify_moves([sample]) == {"move_permitted": 1, "move_to_current_page": 1, "move_to_unlinked_goal": 1,
                                          "move_to_other_unlinked": 1, "get_content": 1, "test_path": 0,
                                          "malformed": 1}


def test_unknown_agent_and_paid_models_fail_clearly():
    """The same task runs on an API model for a user with a key; without the package/key inspect says so (here:
    the openai package is missing), and an unknown agent name is a ValueError naming the choices."""
    from inspect_ai.model import get_model

    with pytest.raises(Exception, match="(?i)openai"):
        get_model("openai/gpt-4o-mini")
    with pytest.raises(ValueError, match="unknown agent"):
        A.wiki_race(agent="telepathy")


@pytest.mark.asset("wikitext-2", "smollm2-135m-instruct")
def test_smollm2_solver_runs_through_inspect(tmp_path, wiki, measure):
    """Spec: a solver wrapping the agent loop, on SmolLM2 through Inspect: a one-move ReAct game (a reasoning
    request, then an action request) completes; every model request is a model event in the sample's log; a move
    can only follow a permitted link; both scores exist. (The provider's batching is day 71's gate.)"""
    log = run(tmp_path, "react", model="smollm2/smollm2", n_games=1, max_moves=1, act_tokens=24, reason_tokens=16)
    for s in log.samples:
        assert [e.event for e in s.events].count("model") == 2 and s.metadata["model_calls"] == 1
        p = s.metadata["path"]
        assert len(p) <= 2 and all(v in wiki.graph[u] for u, v in zip(p, p[1:]))
        assert set(s.scores["wiki_race_scorer"].value) == {"success", "moves_over_optimal"}
    measure("smollm2.tool_errors", A.summarise_log(log)["tool_errors"])


def test_committed_table_is_read_from_the_committed_logs(committed):
    """The post's table comes from the eval logs: each row of results.json equals summarise_log of its committed
    .eval file read back with read_eval_log (exactly: the same log, the same arithmetic)."""
    for agent, row in committed["table"].items():
        path = HERE / "logs" / row["log"]
        assert path.exists(), f"{row['log']} is not committed"
        again = A.summarise_log(read_eval_log(str(path)))
        keys = ("n", "wins", "success_rate", "ci95", "actions", "tool_errors", "model_calls")
        assert_reproduces({k: again[k] for k in keys}, {k: row[k] for k in keys},
                          exact("the same log read back"), name=agent)


def test_baselines_reproduce_the_committed_rows(tmp_path, committed):
    """The non-LLM rows rerun now (model none): seeded Python play, so wins are reproduced exactly."""
    n, moves = committed["n_games"], committed["max_moves"]
    for agent in ("random", "greedy"):
        row = A.summarise_log(run(tmp_path / agent, agent, n_games=n, max_moves=moves))
        assert_reproduces(row["wins"], committed["table"][agent]["wins"], exact("seeded integer play"), name=agent)


@pytest.mark.slow
@pytest.mark.asset("wikitext-2", "smollm2-135m-instruct")
def test_experiment_reproduces(tmp_path, committed, measure):
    """(slow: SmolLM2 plays every game with each elicitation) run_experiment again: the baselines' wins exactly; each
    SmolLM2 elicitation's wins within 1 game (greedy decoding; another CPU's rounding could flip a near-tie)."""
    now = A.run_experiment(tmp_path)
    measure("slow.wall_seconds", now["wall_seconds"])
    measure("slow.cpu_seconds", now["cpu_seconds"])
    for agent, row in committed["table"].items():
        tol = exact("seeded play") if row["model"] == "none/none" else statistical(1, why="a greedy near-tie")
        assert_reproduces(now["table"][agent]["wins"], row["wins"], tol, name=agent)

