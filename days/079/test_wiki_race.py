"""The gate of day 79 (ARENA 3.4: the WikiGame, its tools and agents, over an offline encyclopedia).

References: the raw WikiText-2 files counted by an independent regular expression (articles), Python's
``re`` whole-word search (the link rule, against the token matcher), networkx's shortest paths (the BFS
oracle), an exhaustive enumeration of every random walk in exact rational arithmetic (the absorbing
Markov chain), and a binomial tolerance for the simulated random agent. The LLM agent runs for real on
SmolLM2 for a few steps (scaffolding and robustness; its score is measured on day 80).
"""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction

import networkx as nx
import pytest

from checks.committed import assert_reproduces, exact, float_ops, statistical

from . import wiki_race as W

pytestmark = pytest.mark.asset("wikitext-2")
needs_smollm2 = pytest.mark.asset("wikitext-2", "smollm2-135m-instruct")


@pytest.fixture(scope="module")
def wiki():
    return W.build_encyclopedia()


@pytest.fixture(scope="module")
def games(wiki):
    return W.sample_games(wiki, 30, seed=0)


@pytest.fixture(scope="module")
def small():
    return W.Encyclopedia.from_texts(W.SMALL_WORLD)


def test_articles_are_the_level_one_headings(wiki, asset):
    """Spec: pages come from the WikiText-2 asset, an article per ' = Title = ' line (titles with <unk> dropped).
    Counted independently on the raw files: every such line without <unk> is an article page, nothing else is."""
    root = asset("wikitext-2")
    raw = [m.group(1) for split in ("valid", "test")
           for m in re.finditer(r"^ = ([^=].*?) = $", (root / f"wikitext-2-{split}.txt").read_text(), re.M)]
    kept = [t for t in raw if "<unk>" not in t]
    articles = [t for t, p in wiki.pages.items() if p.kind == "article"]
    assert len(articles) == len(set(kept)) == 51
    # The detokenized titles are the raw ones with WikiText's spacing undone (same words, same order).
    assert sorted(re.sub(r"\W", "", t) for t in articles) == sorted(re.sub(r"\W|@", "", t) for t in set(kept))
    for t in articles:
        assert wiki.page(t).content.startswith(t + "\n\n")


def test_links_are_whole_word_title_occurrences(wiki, measure):
    """Spec: link A -> B when B's title occurs in A's text. Our token matcher against Python's re with word
    boundaries ((?<!\\w)title(?!\\w)) on every entity page and every third article page: the same link sets."""
    patterns = {t: re.compile(r"(?<!\w)" + re.escape(t) + r"(?!\w)") for t in wiki.pages}
    articles = sorted(t for t, p in wiki.pages.items() if p.kind == "article")
    checked = [t for t, p in wiki.pages.items() if p.kind == "entity"] + articles[::3]
    for a in checked:
        expected = tuple(sorted(b for b in wiki.pages if b != a and patterns[b].search(wiki.pages[a].content)))
        assert wiki.pages[a].links == expected, a
    measure("pages", len(wiki))
    measure("links", wiki.n_links)
    measure("pages_checked_against_re", len(checked))


def test_find_links_on_edge_cases():
    """The rule on hand-made pages: whole words only ('Paris' is not in 'Parisian'), multi-word titles, punctuation
    inside titles, overlapping titles both linked, no self-link."""
    contents = {"Paris": "Paris\n\nA Parisian view of New York City and M-82 (Michigan highway).",
                "New York": "New York\n\nNew York.", "New York City": "New York City\n\nParis is far.",
                "M-82 (Michigan highway)": "M-82 (Michigan highway)\n\nA road.", "Michigan": "Michigan\n\nM-82 runs here."}
    links = W.find_links(contents)
    assert links["Paris"] == ("M-82 (Michigan highway)", "Michigan", "New York", "New York City")
    assert links["New York"] == ()
    assert links["New York City"] == ("New York", "Paris")
    assert links["Michigan"] == ()


def test_get_permitted_links_is_arenas_rule():
    """ARENA get_permitted_links: a page's links whose title occurs in its content, minus the page itself."""
    page = W.WikiPage("Paris", "Paris\n\nParis is in France.", ("France", "Paris", "Zebra"))
    assert W.get_permitted_links(page) == ["France"]


def test_bfs_equals_networkx(wiki):
    """Spec: the optimal path length from breadth-first search, with networkx as an independent reference: the
    distance from every article to every page, unreachable pages absent; shortest_path is a real path of that length."""
    G = nx.DiGraph([(u, v) for u, vs in wiki.graph.items() for v in vs])
    G.add_nodes_from(wiki.graph)
    articles = sorted(t for t, p in wiki.pages.items() if p.kind == "article")
    for s in articles:
        assert W.bfs_distances(wiki.graph, s) == nx.single_source_shortest_path_length(G, s)
    s, g = articles[0], articles[-1]
    path = W.shortest_path(wiki.graph, s, g)
    assert len(path) - 1 == nx.shortest_path_length(G, s, g) == W.shortest_path_length(wiki.graph, s, g)
    assert all(v in wiki.graph[u] for u, v in zip(path, path[1:]))
    dead = next(t for t in articles if not wiki.graph[t])  # an article that mentions no other title
    assert W.shortest_path_length(wiki.graph, dead, s) is None and W.shortest_path(wiki.graph, dead, s) is None


def test_optimal_agent_wins_in_exactly_the_optimal_number_of_moves(wiki, games, measure):
    """Spec: a scripted optimal agent wins in exactly the optimal number of moves (30 seeded games at BFS distance
    2 and 3), every move made through MovePageTool on a permitted link."""
    for s, g, d in games:
        task = W.WikiGame(s, g, wiki)
        won = W.agent_loop(W.PolicyAgent(task, W.optimal_policy), num_loops=10)
        assert won and task.check_win() and task.n_moves == d == W.shortest_path_length(wiki.graph, s, g)
        assert all(v in wiki.graph[u] for u, v in zip(task.page_history, task.page_history[1:]))
    measure("optimal_games", len(games))


def all_walks_probability(graph, start, goal, k) -> Fraction:
    """P(reach goal within k uniformly random moves), by enumerating every walk (exact fractions; no matrix)."""
    if start == goal:
        return Fraction(1)
    links = graph[start]
    if k == 0 or not links:
        return Fraction(0)
    return sum((all_walks_probability(graph, v, goal, k - 1) for v in links), Fraction(0)) / len(links)


def test_small_world_links(small):
    """The toy encyclopedia's links follow the same rule (a check of the hand-made graph the next test uses)."""
    assert small.graph["Paris"] == ("France", "Seine")
    assert small.graph["France"] == ("Germany", "Paris", "Spain")
    assert small.graph["Atlantic"] == ()


@pytest.mark.parametrize("start,goal", [("Spain", "Seine"), ("Poland", "Portugal"), ("Seine", "Atlantic")])
def test_random_walk_probability_is_exact(small, start, goal):
    """The absorbing Markov chain: (P^k)_{sg} equals the sum over every random walk of its probability, for
    k = 0..6 (float64 against exact fractions: a few dozen roundings, 1e-12)."""
    for k in range(7):
        assert W.random_success_probability(small.graph, start, goal, k) == pytest.approx(
            float(all_walks_probability(small.graph, start, goal, k)), abs=1e-12)


def test_random_agent_matches_its_analytic_success_rate(small, measure):
    """Spec: a random agent matches its analytic success rate on a small graph: 3000 seeded games of at most 5
    moves, Spain -> Seine, within 4 binomial standard errors of (P^5)_{sg} (a false alarm once in 16 000)."""
    p = W.random_success_probability(small.graph, "Spain", "Seine", 5)
    rng = random.Random(0)
    n = 3000
    wins = sum(W.agent_loop(W.PolicyAgent(task := W.WikiGame("Spain", "Seine", small), W.random_policy(rng)), 5)
               and task.n_moves <= 5 for _ in range(n))
    se = math.sqrt(p * (1 - p) / n)
    measure("random.analytic", p)
    measure("random.simulated", wins / n, f"within 4 SE ({4 * se:.3f})")
    assert 0.1 < p < 0.9 and abs(wins / n - p) <= 4 * se


def test_move_page_tool_and_check_win(wiki, games):
    """ARENA MovePageTool / check_win: a permitted link moves (history grows), anything else is refused with
    ARENA's message and the page stays; the game is won exactly on the goal page."""
    s, g, _ = games[0]
    task = W.WikiGame(s, g, wiki)
    tool = W.MovePageTool()
    assert tool.execute(task, "Not A Page At All") == "Couldn't move page to Not A Page At All. This is not a valid link."
    not_linked = next(t for t in wiki.pages if t not in wiki.graph[s] and t != s)
    assert "not a valid link" in tool.execute(task, not_linked)
    assert task.page_history == [s] and not task.check_win()
    path = W.shortest_path(wiki.graph, s, g)
    for step in path[1:]:
        assert tool.execute(task, step.lower()) == f"Moving page to {step}"  # ARENA compares case-insensitively
    assert task.page_history == path and task.check_win()


def test_get_content_tool_tags_links(wiki, games):
    """ARENA GetContentTool: the page's content with permitted links in <link></link> tags (each tag holds a
    permitted link; no nested tags) and, here, the full list of permitted links after it."""
    task = W.WikiGame(games[0][0], games[0][1], wiki)
    text = W.GetContentTool(max_chars=5000).execute(task)
    tagged = re.findall(r"<link>(.*?)</link>", text)
    permitted = W.get_permitted_links(task.current_page)
    assert tagged and set(tagged) <= set(permitted)
    assert "<link><link>" not in text and not re.search(r"<link>[^<]*<link>", text)
    assert text.endswith("Links on this page: " + " | ".join(permitted))
    assert re.sub(r"</?link>", "", text.split("\n\nLinks on this page:")[0]).rstrip(" .") in task.current_page.content


def test_test_path_tool(wiki, games):
    """ARENA TestPathTool: a BFS path from the current page works; a path with a missing link fails at that link;
    a path not starting at the current page is an error."""
    s, g, _ = games[1]
    task = W.WikiGame(s, g, wiki)
    tool = W.TestPathTool()
    path = W.shortest_path(wiki.graph, s, g)
    assert tool.execute(task, " -> ".join(path)) == "This whole path works."
    bad = next(t for t in wiki.pages if t not in wiki.graph[path[1]] and t != path[1])
    assert tool.execute(task, f"{s} -> {path[1]} -> {bad}") == f"This path works until {bad}, which is not accessible from {path[1]}."
    assert tool.execute(task, f"{g} -> {s}").startswith("ERROR: The path should start with the current page")
    assert tool.execute(task, "") == "ERROR: Empty path provided."


@pytest.mark.parametrize("reply,reason", [
    ("I will move to France.", "no <tool_call>"),
    ('<tool_call>{"name": "move_page", "arguments": {"new_page": }}</tool_call>', "not valid JSON"),
    ('<tool_call>{"name": "fly_to", "arguments": {}}</tool_call>', "unknown tool"),
    ('<tool_call>{"name": "move_page", "arguments": {}}</tool_call>', "missing ['new_page']"),
    ('<tool_call>{"name": "get_content", "arguments": {"page": "X"}}</tool_call>', "unexpected ['page']"),
    ('<tool_call>["move_page"]</tool_call>', "needs a string 'name'"),
])
def test_malformed_tool_calls_are_errors_not_crashes(wiki, games, reply, reason):
    """Issue 15: tool-call parsing on malformed outputs gives a clear error, never a crash: parse_tool_call raises
    ToolCallError with the reason; the agent answers it in the history and the game goes on unchanged."""
    task = W.WikiGame(games[0][0], games[0][1], wiki)
    with pytest.raises(W.ToolCallError, match=re.escape(reason)):
        W.parse_tool_call(reply, task.available_tools)
    agent = W.WikiAgent(task, prefill=False)
    agent.start()
    agent.receive(reply)
    assert agent.n_tool_errors == 1 and task.page_history == [games[0][0]]
    assert agent.chat_history[-1]["role"] == "user" and reason in agent.chat_history[-1]["content"]


def test_agent_executes_well_formed_calls_and_resets_history_on_a_new_page(wiki, games):
    """ARENA WikiAgent.run's bookkeeping, on replies written as the model would continue the prefill: get_content
    answers in the history; a move to the optimal link moves and restarts the history on the new page
    (system + page instruction); ReAct alternates a reasoning request (no prefill) and an action request."""
    s, g, _ = games[0]
    task = W.WikiGame(s, g, wiki)
    agent = W.WikiAgent(task)
    agent.start()
    request = agent.next_request()
    assert request.messages[-1] == {"role": "assistant", "content": W.PREFILL} and request.kind == "act"
    assert "Links on this page: " + " | ".join(task.get_permitted_links()) in request.messages[1]["content"]
    agent.receive('get_content", "arguments": {}}</tool_call>')
    assert agent.chat_history[-1]["content"].startswith("Tool result: ") and task.n_moves == 0
    nxt = W.optimal_policy(task)
    agent.receive(f'move_page", "arguments": {{"new_page": "{nxt}"}}}}</tool_call> trailing words')
    assert task.page_history == [s, nxt] and len(agent.chat_history) == 2
    assert agent.chat_history[1]["content"].startswith(f"You are currently on page: {nxt}.")
    react = W.WikiAgentReAct(W.WikiGameReAct(s, g, wiki))
    react.start()
    assert react.next_request().kind == "reason" and react.next_request().messages[-1]["role"] == "user"
    react.receive("France is closer.")
    assert react.next_request().kind == "act" and react.chat_history[-2]["content"] == "Reasoning: France is closer."
    refl = W.WikiAgentReAct(W.WikiGameReflexion(s, g, wiki))
    assert [t.name for t in refl.tools] == ["get_content", "move_page", "test_path"]
    assert '"name": "test_path"' in refl.system_message["content"]


def test_tool_schemas_are_openai_function_schemas():
    """ARENA's tool.description: an OpenAI function schema whose required parameters exist."""
    for tool in (W.GetContentTool(), W.MovePageTool(), W.TestPathTool()):
        d = tool.description
        assert d["type"] == "function" and d["function"]["name"] == tool.name
        params = d["function"]["parameters"]
        assert params["type"] == "object" and set(params["required"]) <= set(params["properties"])


def test_greedy_baseline(small, wiki, games):
    """The non-LLM greedy baseline: the goal when it is linked; else the unvisited link sharing most words with
    the goal's title and lead (Seine's lead names Paris, so from France it goes to Paris)."""
    assert W.greedy_policy(W.WikiGame("Spain", "France", small)) == "France"
    assert W.greedy_policy(W.WikiGame("France", "Seine", small)) == "Paris"
    wins = sum(W.agent_loop(W.PolicyAgent(W.WikiGame(s, g, wiki), W.greedy_policy), 8) for s, g, _ in games)
    assert wins >= len(games) // 2  # a strong baseline on this graph (measured in the experiment)


def test_greedy_prefers_unvisited_links_and_falls_back_to_visited(small):
    """greedy_policy's docstring: when the goal is not linked it picks among the *unvisited* links (France → Seine
    goes to Paris, whose lead is the goal's; once Paris has been visited it picks Germany or Spain instead); on a
    page whose every link was visited it still moves (Poland's only link, Germany, where the game began)."""
    task = W.WikiGame("France", "Seine", small)
    task.move_to("Paris")
    task.move_to("France")
    assert W.greedy_policy(task) in {"Germany", "Spain"}
    stuck = W.WikiGame("Germany", "Atlantic", small)
    stuck.move_to("Poland")
    assert W.greedy_policy(stuck) == "Germany"


@needs_smollm2
def test_smollm2_agent_plays_without_crashing(wiki, games, measure):
    """Issue 15: the WikiAgent on SmolLM2 (model layer of day 71, greedy) plays a step end to end: its reply is
    either executed or answered with an error (a call cut by the token limit included); only a permitted move
    can happen. (ReAct's two-request step runs on SmolLM2 in day 80's gate, through Inspect.)"""
    from checks.timing import single_thread

    s, g, _ = games[0]
    with single_thread():
        task = W.WikiGame(s, g, wiki)
        agent = W.WikiAgent(task, act_tokens=24)
        W.agent_loop(agent, num_loops=1)
    assert agent.n_calls == 1 and len(agent.log) == 1
    assert ("tool" in agent.log[0]) != ("error" in agent.log[0])
    assert agent.log[0]["reply"].startswith(W.PREFILL) if "error" in agent.log[0] else True
    assert all(v in wiki.graph[u] for u, v in zip(task.page_history, task.page_history[1:]))
    measure("smollm2.tool_errors", agent.n_tool_errors)
    measure("smollm2.moves", task.n_moves)


def test_committed_numbers_reproduce(wiki, committed):
    """The committed experiment's graph numbers recomputed: counts and the distance histogram exactly (integer
    graph work); the optimal agent exactly optimal; the random agent's exact curve (a product of k ≤ 8 stochastic
    matrices, ~200-term float64 sums per entry: float_ops(2000)); the simulated random curve within 4 binomial
    SE of the exact one (n = 4000: sampling, not rounding)."""
    enc = committed["encyclopedia"]
    assert_reproduces({"pages": len(wiki), "links": wiki.n_links,
                       "entities": sum(p.kind == "entity" for p in wiki.pages.values())},
                      {k: enc[k] for k in ("pages", "links", "entities")}, exact("integer graph construction"))
    assert committed["optimal_agent"]["all_exactly_optimal"] is True
    rv = committed["random_exact_vs_simulated"]
    now = [W.random_success_probability(wiki.graph, rv["start"], rv["goal"], k) for k in rv["k"]]
    assert_reproduces(now, rv["exact"], float_ops(2000, "float64", abs=1e-15), name="random.exact")
    n = rv["n_sims"]
    for p, q in zip(now, rv["simulated"]):
        assert_reproduces(q, p, statistical(4 * math.sqrt(p * (1 - p) / n) + 1e-12, why="binomial sampling"))


@pytest.mark.slow
@pytest.mark.asset("wikitext-2", "smollm2-135m-instruct")
def test_experiment_reproduces(tmp_path, committed, measure):
    """(slow, a few CPU minutes: three SmolLM2 games) run_experiment again: graph, agents' wins and the distance
    histogram exactly (integer work, seeded Python RNGs); the SmolLM2 demo's wins within one game (greedy decoding:
    another CPU's rounding could flip a near-tie between two tokens and so one game)."""
    now = W.run_experiment(tmp_path)
    measure("slow.wall_seconds", now["wall_seconds"])
    measure("slow.cpu_seconds", now["cpu_seconds"])
    for key in ("optimal_agent", "random_agent", "greedy_agent"):
        assert_reproduces(now[key]["wins"], committed[key]["wins"], exact("seeded integer game play"), name=key)
    assert_reproduces(now["encyclopedia"]["article_distance_histogram"],
                      committed["encyclopedia"]["article_distance_histogram"], exact("BFS on the same graph"))
    assert_reproduces(now["smollm2_plain_demo"]["wins"], committed["smollm2_plain_demo"]["wins"],
                      statistical(1, why="a greedy near-tie may flip one game"), name="smollm2.wins")
