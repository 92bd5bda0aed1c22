"""Day 79: Wikipedia racing, offline (ARENA 3.4 LLM agents).

ARENA races an agent through live Wikipedia: from a start page, follow links until the goal page is
reached. Here the encyclopedia is built offline, deterministically, from the WikiText-2 asset:

- **Pages.** Every WikiText-2 article (a ``' = Title = '`` line starts one; titles with ``<unk>`` are
  dropped, since the goal must be nameable) and every *entity*: a capitalised phrase used mid-sentence
  in at least ``min_articles`` articles ("United States", "Royal Navy", "September"). An entity's page
  is what Wikipedia's "what links here" would show: one line per article that mentions it,
  ``In <article>: <first sentence mentioning it>``.
- **Links.** Page A links to page B when B's title occurs in A's content as whole words (tokens
  ``\\w+|[^\\w\\s]``, matched as a contiguous run); a page never links to itself. This is ARENA's own
  ``get_permitted_links`` rule (a link is permitted when its title occurs in the content), applied
  to every title instead of to Wikipedia's hand-made link list.

On this graph $G = (V, E)$ the oracle is breadth-first search: the optimal number of moves from $s$ to
$g$ is $d(s, g)$, the length of a shortest directed path. A random agent that moves to a uniformly
chosen permitted link is a Markov chain with transition matrix $P_{uv} = 1/\\deg^+(u)$ for
$(u, v) \\in E$; making the goal absorbing ($P_{gg} = 1$) and dead ends absorbing, the probability that
it stands on the goal after at most $k$ moves is exactly $(P^k)_{sg}$.

ARENA's classes keep their names: ``WikiGame`` (the task), ``get_permitted_links``, ``GetContentTool``,
``MovePageTool``, ``TestPathTool``, ``WikiAgent`` (one tool call per step), ``WikiGameReAct`` /
``WikiAgentReAct`` (reason, then act), ``WikiGameReflexion`` (ReAct plus ``TestPathTool``), and
``agent_loop``. The agents are written as state machines (``next_request`` / ``receive``) so that the
same agent runs synchronously here (``run``) and inside an async Inspect solver (day 80).

Tool calls are text: the tools' JSON schemas are rendered into the system prompt with one concrete
example, and the reply is read as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; for the
local model the reply is prefilled with ``<tool_call>{"name": "`` (SmolLM2's chat template has no tool
section). A malformed call is answered with an error message, never a crash.

Importing this module loads no model and reads no file.
"""

from __future__ import annotations

import functools
import importlib
import json
import random
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

ASSET = "wikitext-2"
TOKEN_RE = re.compile(r"\w+|[^\w\s]")
HEADING_RE = re.compile(r"\s*(=(?: =)*) (.*) \1\s*")
# A capitalised phrase: capitalised words, optionally joined by one lower-case connective.
ENTITY_RE = re.compile(r"\b[A-Z][a-z]+(?: (?:of |of the |de |and )?[A-Z][a-z]+)*\b")
CONNECTIVES = {"of", "the", "de", "and"}


# ---------------------------------------------------------------------------------------------
# The offline encyclopedia
# ---------------------------------------------------------------------------------------------

def tokens(text: str) -> list[str]:
    """The word and punctuation tokens that links are matched on: ``\\w+|[^\\w\\s]``."""
    return TOKEN_RE.findall(text)


@dataclass(frozen=True)
class WikiPage:
    """One page: ARENA's ``WikipediaPage`` fields ``title``, ``content``, ``links`` and ``summary``."""

    title: str
    content: str
    links: tuple[str, ...]
    kind: str = "article"  # "article" or "entity"

    @property
    def summary(self) -> str:
        """The first paragraph after the title line (Wikipedia's lead), at most 400 characters."""
        paragraphs = [p for p in self.content.split("\n\n")[1:] if p.strip() and not p.startswith("==")]
        lead = paragraphs[0] if paragraphs else ""
        return lead if len(lead) <= 400 else lead[:400].rsplit(" ", 1)[0] + " ..."


def find_links(contents: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """For each page, the sorted titles (other than its own) whose tokens occur as a contiguous run in its content.

    Indexes titles by first token, then checks each candidate at each position: linear in the text.
    """
    by_first: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for title in contents:
        toks = tuple(tokens(title))
        if toks:
            by_first.setdefault(toks[0], []).append((title, toks))
    links = {}
    for title, content in contents.items():
        toks = tokens(content)
        found = set()
        for i, tok in enumerate(toks):
            for other, other_toks in by_first.get(tok, ()):
                if other not in found and tuple(toks[i:i + len(other_toks)]) == other_toks:
                    found.add(other)
        found.discard(title)
        links[title] = tuple(sorted(found))
    return links


class Encyclopedia:
    """A set of pages and the directed link graph between them."""

    def __init__(self, pages: dict[str, WikiPage]):
        self.pages = pages
        self.graph: dict[str, tuple[str, ...]] = {t: p.links for t, p in pages.items()}

    @classmethod
    def from_texts(cls, contents: dict[str, str], kinds: dict[str, str] | None = None) -> "Encyclopedia":
        """Pages from ``title -> content``; links by the whole-token occurrence rule (``find_links``)."""
        links = find_links(contents)
        kinds = kinds or {}
        return cls({t: WikiPage(t, c, links[t], kinds.get(t, "article")) for t, c in contents.items()})

    def __contains__(self, title: str) -> bool:
        return title in self.pages

    def __len__(self) -> int:
        return len(self.pages)

    def page(self, title: str) -> WikiPage:
        """The page with this title (exact, else case-insensitive), or ``KeyError`` naming it."""
        if title in self.pages:
            return self.pages[title]
        lowered = {t.lower(): t for t in self.pages}
        if title.lower() in lowered:
            return self.pages[lowered[title.lower()]]
        raise KeyError(f"no page titled {title!r}")

    @property
    def n_links(self) -> int:
        return sum(len(v) for v in self.graph.values())


def _detokenize(line: str) -> str:
    return importlib.import_module("days.035.tl_setup").wikitext_detokenize(line)


def read_wikitext_articles(root: Path | None = None, splits: Iterable[str] = ("valid", "test")) -> dict[str, list[str]]:
    """WikiText-2's articles: detokenized title -> detokenized lines (section headings as ``== H ==``).

    An article starts at a level-1 heading line ``' = Title = '``; titles containing ``<unk>`` are
    dropped with their article.
    """
    if root is None:
        from checks.assets import resolve

        root = resolve(ASSET)
    articles: dict[str, list[str]] = {}
    for split in splits:
        current = None
        for line in (Path(root) / f"wikitext-2-{split}.txt").read_text(encoding="utf-8").splitlines():
            heading = HEADING_RE.fullmatch(line)
            if heading and heading.group(1) == "=":
                title = _detokenize(heading.group(2))
                current = None if "<unk>" in title else title
                if current is not None:
                    articles[current] = []
            elif current is not None and line.strip():
                if heading:
                    articles[current].append(f"== {_detokenize(heading.group(2))} ==")
                else:
                    articles[current].append(_detokenize(line))
    return articles


def _sentences(paragraph: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"(])", paragraph) if s]


def _entity_mentions(sentence: str, stop: frozenset[str]) -> set[str]:
    """Capitalised phrases used *mid-sentence* (a sentence's first word is capitalised by grammar, so a
    phrase starting there is not evidence), with leading/trailing stop-words and connectives stripped."""
    found = set()
    for m in ENTITY_RE.finditer(sentence):
        words = m.group(0).split()
        at_start = m.start() == 0 or not sentence[:m.start()].strip() or sentence[:m.start()].strip()[-1] in "\"("
        while words and (words[0].lower() in stop or words[0].lower() in CONNECTIVES):
            words, at_start = words[1:], False
        while words and words[-1].lower() in CONNECTIVES:
            words = words[:-1]
        if words and not at_start and len(" ".join(words)) > 2:
            found.add(" ".join(words))
    return found


def build_encyclopedia_uncached(root: Path | None = None, min_articles: int = 4) -> Encyclopedia:
    """The WikiText-2 encyclopedia: article pages plus entity pages (see the module docstring)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    stop = frozenset(ENGLISH_STOP_WORDS)
    articles = read_wikitext_articles(root)
    mentions: dict[str, set[str]] = {}          # entity -> articles using it mid-sentence
    sentences_of: dict[str, list[str]] = {}
    for title, lines in articles.items():
        sents = [s for line in lines if not line.startswith("==") for s in _sentences(line)]
        sentences_of[title] = sents
        for s in sents:
            for e in _entity_mentions(s, stop):
                mentions.setdefault(e, set()).add(title)
    entities = sorted(e for e, arts in mentions.items() if len(arts) >= min_articles and e not in articles)
    contents = {t: f"{t}\n\n" + "\n\n".join(lines) for t, lines in articles.items()}
    kinds = {t: "article" for t in articles}
    for e in entities:
        pattern = re.compile(r"(?<!\w)" + re.escape(e) + r"(?!\w)")
        lines = []
        for title in sorted(mentions[e]):
            first = next((s for s in sentences_of[title] if pattern.search(s)), None)
            if first is not None:
                lines.append(f"In {title}: {first}")
        contents[e] = f"{e}\n\n{e} is mentioned in {len(mentions[e])} articles of this encyclopedia.\n\n" + \
            "\n\n".join(lines)
        kinds[e] = "entity"
    return Encyclopedia.from_texts(contents, kinds)


@functools.lru_cache(maxsize=4)
def build_encyclopedia(min_articles: int = 4) -> Encyclopedia:
    """``build_encyclopedia_uncached`` from the shared asset, memoised per process (about 2 s once)."""
    return build_encyclopedia_uncached(None, min_articles)


# ---------------------------------------------------------------------------------------------
# The oracle: breadth-first search, and the random walk's exact success probability
# ---------------------------------------------------------------------------------------------

def bfs_distances(graph: dict[str, Iterable[str]], source: str) -> dict[str, int]:
    """Shortest-path lengths (in moves) from ``source`` to every reachable page, by breadth-first search."""
    dist = {source: 0}
    queue = deque([source])
    while queue:
        u = queue.popleft()
        for v in graph.get(u, ()):
            if v not in dist:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def reverse_graph(graph: dict[str, Iterable[str]]) -> dict[str, list[str]]:
    """The graph with every edge turned round (for distances *to* a goal)."""
    rev: dict[str, list[str]] = {u: [] for u in graph}
    for u, vs in graph.items():
        for v in vs:
            rev.setdefault(v, []).append(u)
    return rev


def shortest_path_length(graph: dict[str, Iterable[str]], start: str, goal: str) -> int | None:
    """The optimal number of moves from start to goal (None when the goal is unreachable)."""
    return bfs_distances(graph, start).get(goal)


def shortest_path(graph: dict[str, Iterable[str]], start: str, goal: str) -> list[str] | None:
    """One shortest path (lexicographically first next page at each step), start and goal included."""
    to_goal = bfs_distances(reverse_graph(graph), goal)
    if start not in to_goal:
        return None
    path = [start]
    while path[-1] != goal:
        here = path[-1]
        path.append(min(v for v in graph[here] if to_goal.get(v) == to_goal[here] - 1))
    return path


def random_walk_matrix(graph: dict[str, Iterable[str]], goal: str) -> tuple[np.ndarray, list[str]]:
    """The random agent's transition matrix with the goal (and every dead end) absorbing.

    $P_{uv} = 1/\\deg^+(u)$ for each link $u \\to v$; $P_{gg} = 1$; a page without links keeps the
    agent where it is ($P_{uu} = 1$). Rows and columns follow the returned (sorted) node order.
    """
    nodes = sorted(set(graph) | {v for vs in graph.values() for v in vs})
    index = {n: i for i, n in enumerate(nodes)}
    P = np.zeros((len(nodes), len(nodes)))
    for u in nodes:
        out = list(graph.get(u, ()))
        if u == goal or not out:
            P[index[u], index[u]] = 1.0
        else:
            for v in out:
                P[index[u], index[v]] += 1.0 / len(out)
    return P, nodes


def random_success_probability(graph: dict[str, Iterable[str]], start: str, goal: str, k: int) -> float:
    """P(a uniformly random agent has reached the goal within k moves) = $(P^k)_{sg}$, goal absorbing."""
    P, nodes = random_walk_matrix(graph, goal)
    row = np.zeros(len(nodes))
    row[nodes.index(start)] = 1.0
    for _ in range(k):
        row = row @ P
    return float(row[nodes.index(goal)])


# ---------------------------------------------------------------------------------------------
# The game (ARENA's WikiGame) and its tools
# ---------------------------------------------------------------------------------------------

def get_permitted_links(current_page: WikiPage) -> list[str]:
    """ARENA's rule: the page's links whose title occurs in its content (case-insensitively), minus itself."""
    content = current_page.content.lower()
    return [link for link in current_page.links
            if link.lower() in content and link.lower() != current_page.title.lower()]


class WikiGame:
    """ARENA's WikiGame: the start, the goal, the current page, the history of pages visited."""

    def __init__(self, starting_page: str, goal_page: str, wiki: Encyclopedia | None = None):
        self.wiki = wiki if wiki is not None else build_encyclopedia()
        self.starting_page = self.get_page(starting_page)
        self.goal_page = self.get_page(goal_page)
        self.current_page = self.starting_page
        self.page_history = [self.starting_page.title]

    def get_page(self, title: str) -> WikiPage:
        return self.wiki.page(title)

    def get_page_summary(self, page: WikiPage) -> str:
        return page.summary

    def get_permitted_links(self, title: str | None = None) -> list[str]:
        page = self.current_page if title is None else self.get_page(title)
        return get_permitted_links(page)

    def is_permitted_link(self, link: str) -> bool:
        return link.lower() in (x.lower() for x in self.get_permitted_links())

    def move_to(self, link: str) -> None:
        self.current_page = self.get_page(link)
        self.page_history.append(self.current_page.title)

    def check_win(self) -> bool:
        """The agent has won when it stands on the goal page."""
        return self.current_page.title == self.goal_page.title

    @property
    def n_moves(self) -> int:
        return len(self.page_history) - 1

    # --- prompts (ARENA's wording, shortened for a 135M model's context) ---
    @property
    def system_instruction(self) -> dict:
        return {"role": "system", "content": (
            "You are a wikipedia-racing AI. Your aim is to reach the goal page by accessing links from a series "
            "of wikipedia pages. You call one tool per reply.")}

    @property
    def on_page_instruction(self) -> dict:
        visited = " -> ".join(self.page_history)
        links = " | ".join(self.get_permitted_links())
        return {"role": "user", "content": (
            f"You are currently on page: {self.current_page.title}. Your goal page is {self.goal_page.title}. "
            f"Pages visited so far: {visited}.\nLinks on this page: {links}")}

    @property
    def next_step_instruction(self) -> dict:
        return {"role": "user", "content": "What's your next step?"}

    @property
    def available_tools(self) -> list:
        return [GetContentTool(), MovePageTool()]


def page_content_with_links(page: WikiPage, max_chars: int | None = None) -> str:
    """ARENA's ``get_page_content``: the content with the first occurrence of each permitted link in
    ``<link></link>`` tags (longest titles first, never inside another tag), cut to ``max_chars``."""
    content = page.content.split("\n\n", 1)[1] if "\n\n" in page.content else page.content
    tagged = content
    for link in sorted(get_permitted_links(page), key=len, reverse=True):
        pattern = re.compile(r"(?<![\w<>/])(" + re.escape(link) + r")(?![\w<])(?![^<]*</link>)")
        tagged = pattern.sub(r"<link>\1</link>", tagged, count=1)
    if max_chars is not None and len(tagged) > max_chars:
        tagged = tagged[:max_chars].rsplit(" ", 1)[0] + " ..."
    return tagged


class Tool:
    name: str = ""
    parameters: dict = {}
    required: list = []
    summary: str = ""

    @property
    def description(self) -> dict:
        """The OpenAI function-calling schema (ARENA's ``description`` property)."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.summary,
            "parameters": {"type": "object", "properties": self.parameters, "required": self.required,
                           "additionalProperties": False}}}


class GetContentTool(Tool):
    """ARENA's ``get_content``: the current page's content with its links in ``<link>`` tags.

    A 135M model on a CPU cannot read a 20 kB article, so the content is cut to ``max_chars`` and
    followed by the full list of the page's permitted links (ARENA returns the whole content)."""

    name = "get_content"
    summary = "Get the content of the current wikipedia page, with links in <link></link> tags."

    def __init__(self, max_chars: int = 600):
        self.max_chars = max_chars

    def execute(self, task: WikiGame) -> str:
        page = task.current_page
        return (page_content_with_links(page, self.max_chars) + "\n\nLinks on this page: "
                + " | ".join(get_permitted_links(page)))


class MovePageTool(Tool):
    """ARENA's ``move_page``: move to a permitted link of the current page, else say why not."""

    name = "move_page"
    summary = "Move to a new page. You can only move to pages that are links on the current page."
    parameters = {"new_page": {"type": "string", "description": "The title of the page to move to."}}
    required = ["new_page"]

    def execute(self, task: WikiGame, new_page: str) -> str:
        new_page = str(new_page).strip()
        if new_page.lower() == task.current_page.title.lower():
            return f"You are already on {task.current_page.title}."
        if task.is_permitted_link(new_page):
            task.move_to(new_page)
            return f"Moving page to {task.current_page.title}"
        return f"Couldn't move page to {new_page}. This is not a valid link."


class TestPathTool(Tool):
    """ARENA's ``test_path``: check a planned path ``A -> B -> C`` link by link from the current page."""

    __test__ = False  # not a pytest class
    name = "test_path"
    summary = ("Test whether a path of pages, written 'Current page -> Page 2 -> Page 3', is made of valid links, "
               "starting from the current page.")
    parameters = {"path": {"type": "string", "description": "The path, pages separated by ' -> '."}}
    required = ["path"]

    def execute(self, task: WikiGame, path: str) -> str:
        nodes = [n.strip() for n in str(path).split("->") if n.strip()]
        if not nodes:
            return "ERROR: Empty path provided."
        if nodes[0].lower() != task.current_page.title.lower():
            return f"ERROR: The path should start with the current page: {task.current_page.title}"
        for here, there in zip(nodes, nodes[1:]):
            if here not in task.wiki and here.lower() not in (t.lower() for t in task.wiki.pages):
                return f"This path works until {here}, which is not a page."
            if there.lower() not in (x.lower() for x in task.get_permitted_links(here)):
                return f"This path works until {there}, which is not accessible from {here}."
        return "This whole path works."


class WikiGameReAct(WikiGame):
    """ARENA's ReAct task: the same game, with instructions to reason before each action."""

    @property
    def system_instruction(self) -> dict:
        return {"role": "system", "content": (
            "You are a wikipedia-racing AI. Your goal is to reach the goal page by accessing links from "
            "wikipedia pages. Think about which link is most related to the goal page, then act.")}

    @property
    def on_page_instruction(self) -> dict:
        base = super().on_page_instruction["content"]
        return {"role": "user", "content": base + f" Think about which link on this page leads closest to "
                                                  f"{self.goal_page.title}."}


class WikiGameReflexion(WikiGameReAct):
    """ARENA's reflexion exercise: ReAct plus ``TestPathTool`` to check a plan before moving."""

    @property
    def available_tools(self) -> list:
        return [GetContentTool(), MovePageTool(), TestPathTool()]

    @property
    def on_page_instruction(self) -> dict:
        base = super().on_page_instruction["content"]
        return {"role": "user", "content": base + " Before moving you may test a path with test_path."}


# ---------------------------------------------------------------------------------------------
# Text tool calls
# ---------------------------------------------------------------------------------------------

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
PREFILL = CALL_OPEN + '{"name": "'


class ToolCallError(ValueError):
    """A reply that is not a well-formed call of an available tool."""


@dataclass
class ToolCall:
    name: str
    arguments: dict


def render_tools(tools: list[Tool], example: str, situation: str = "") -> str:
    """The tools' schemas and one concrete call, for the system prompt (SmolLM2's template has no tool section)."""
    schemas = "\n".join(json.dumps(t.description["function"]) for t in tools)
    return (f"You have these tools:\n{schemas}\nCall one tool per reply. For example, {situation}\n"
            f"{CALL_OPEN}{example}{CALL_CLOSE}")


def parse_tool_call(text: str, tools: list[Tool]) -> ToolCall:
    """Read ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the closing tag optional).

    Raises ``ToolCallError`` with the reason for anything else: no call, bad JSON, an unknown tool,
    missing or unexpected arguments.
    """
    start = text.find(CALL_OPEN)
    if start < 0:
        raise ToolCallError("no <tool_call> in the reply")
    body = text[start + len(CALL_OPEN):]
    end = body.find(CALL_CLOSE)
    body = (body[:end] if end >= 0 else body).strip()
    try:
        call, _ = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as exc:
        raise ToolCallError(f"the tool call is not valid JSON ({exc.msg})") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ToolCallError("the tool call needs a string 'name'")
    by_name = {t.name: t for t in tools}
    if call["name"] not in by_name:
        raise ToolCallError(f"unknown tool {call['name']!r}; available: {sorted(by_name)}")
    args = call.get("arguments", {})
    if not isinstance(args, dict):
        raise ToolCallError("'arguments' must be an object")
    tool = by_name[call["name"]]
    missing = [p for p in tool.required if p not in args]
    extra = [p for p in args if p not in tool.parameters]
    if missing or extra:
        raise ToolCallError(f"{tool.name} takes {sorted(tool.parameters)}; missing {missing}, unexpected {extra}")
    return ToolCall(tool.name, args)


# ---------------------------------------------------------------------------------------------
# Agents
# ---------------------------------------------------------------------------------------------

EXAMPLE_CALL = '{"name": "move_page", "arguments": {"new_page": "Pet"}}'
EXAMPLE_SITUATION = "on page Dog, with goal page Cat and links Animal | Pet | Wolf, a good call is"


@dataclass
class Request:
    """One model call an agent asks for: the messages (the last may be an assistant prefill) and a limit."""

    messages: list[dict]
    max_tokens: int
    kind: str  # "act" or "reason"


@dataclass
class WikiAgent:
    """ARENA's WikiAgent: each step the model makes one tool call, which is executed on the task.

    The chat history restarts on each new page (ARENA's history-truncation exercise): system prompt,
    the page instruction, and what happened on this page. ``next_request`` says what to ask the model;
    ``receive`` takes its reply; ``run`` does both with ``generate_response`` (synchronous).
    """

    task: WikiGame
    model: str = "smollm2"
    prefill: bool = True
    act_tokens: int = 40
    verbose: bool = False
    chat_history: list[dict] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)
    n_tool_errors: int = 0
    n_calls: int = 0

    def __post_init__(self):
        self.tools = self.task.available_tools
        self.by_name = {t.name: t for t in self.tools}

    @property
    def system_message(self) -> dict:
        content = self.task.system_instruction["content"] + "\n\n" + render_tools(self.tools, EXAMPLE_CALL, EXAMPLE_SITUATION)
        return {"role": "system", "content": content}

    def start(self) -> None:
        self.reset_history()

    def reset_history(self) -> None:
        self.chat_history = [self.system_message, self.task.on_page_instruction]

    def update_history(self, message: dict | list[dict]) -> None:
        self.chat_history.extend(message if isinstance(message, list) else [message])

    def next_request(self) -> Request:
        messages = list(self.chat_history)
        if self.prefill:
            messages.append({"role": "assistant", "content": PREFILL})
        return Request(messages, self.act_tokens, "act")

    def receive(self, reply: str) -> None:
        """Execute the tool call in the reply (or answer its error) and update the history."""
        self.n_calls += 1
        text = (PREFILL + reply) if self.prefill and CALL_OPEN not in reply else reply
        if CALL_CLOSE in text:
            text = text[:text.index(CALL_CLOSE) + len(CALL_CLOSE)]
        self.update_history({"role": "assistant", "content": text})
        try:
            call = parse_tool_call(text, self.tools)
        except ToolCallError as exc:
            self.n_tool_errors += 1
            result = f"Error: {exc}. Call one tool, like {CALL_OPEN}{EXAMPLE_CALL}{CALL_CLOSE}"
            self.log.append({"page": self.task.current_page.title, "reply": text, "error": str(exc)})
            self.update_history({"role": "user", "content": result})
            return
        page_before = self.task.current_page.title
        result = self.by_name[call.name].execute(self.task, **call.arguments)
        self.log.append({"page": page_before, "tool": call.name, "arguments": call.arguments, "result": result[:200]})
        if self.verbose:
            print(f"[{page_before}] {call.name}({call.arguments}) -> {result[:120]}")
        if self.task.current_page.title != page_before:
            self.reset_history()  # a new page: a fresh, short history
        else:
            self.update_history({"role": "user", "content": f"Tool result: {result}\n\n"
                                                            + self.task.next_step_instruction["content"]})

    def get_response(self, request: Request) -> str:
        from_llm = importlib.import_module("days.071.llm")
        return from_llm.generate_response(self.model, request.messages, temperature=0.0,
                                          max_tokens=request.max_tokens,
                                          stop_sequences=[CALL_CLOSE] if request.kind == "act" else ["\n\n"])

    def run(self) -> None:
        """One step: ask the model and act on its reply (ReAct agents take two calls)."""
        done = False
        while not done:
            request = self.next_request()
            done = request.kind == "act"
            self.receive(self.get_response(request))


@dataclass
class WikiAgentReAct(WikiAgent):
    """ARENA's ReAct agent: each step first asks for a short reasoning (no tool), then for the action."""

    reason_tokens: int = 48
    _reasoned: bool = False

    def next_request(self) -> Request:
        if not self._reasoned:
            messages = list(self.chat_history) + [{"role": "user", "content": (
                f"Think step by step in one or two sentences: which link leads closest to "
                f"{self.task.goal_page.title}? Do not call a tool yet.")}]
            return Request(messages, self.reason_tokens, "reason")
        return super().next_request()

    def receive(self, reply: str) -> None:
        if not self._reasoned:
            self._reasoned = True
            self.update_history({"role": "assistant", "content": "Reasoning: " + reply.strip()})
            self.update_history({"role": "user", "content": "Now act: call one tool."})
            return
        self._reasoned = False
        super().receive(reply)


def agent_loop(agent, num_loops: int = 10) -> bool:
    """ARENA's agent_loop: start the agent, then up to ``num_loops`` steps; True once the goal is reached."""
    agent.start()
    for _ in range(num_loops):
        if agent.task.check_win():
            return True
        agent.run()
    return agent.task.check_win()


# ---------------------------------------------------------------------------------------------
# Non-LLM agents: scripted optimal, random, greedy
# ---------------------------------------------------------------------------------------------

@dataclass
class PolicyAgent:
    """An agent that moves each step to ``policy(task)`` through ``MovePageTool`` (no model)."""

    task: WikiGame
    policy: Callable[[WikiGame], str | None]

    def start(self) -> None:
        pass

    def run(self) -> None:
        choice = self.policy(self.task)
        if choice is not None:
            MovePageTool().execute(self.task, choice)


def optimal_policy(task: WikiGame) -> str | None:
    """The scripted optimal agent: a permitted link one BFS step closer to the goal (first in order)."""
    to_goal = _distances_to(task.wiki, task.goal_page.title)
    here = to_goal.get(task.current_page.title)
    if here is None:
        return None
    return min(v for v in task.get_permitted_links() if to_goal.get(v) == here - 1)


def _distances_to(wiki: Encyclopedia, goal: str) -> dict[str, int]:
    cache = wiki.__dict__.setdefault("_to_goal", {})
    if goal not in cache:
        cache[goal] = bfs_distances(reverse_graph(wiki.graph), goal)
    return cache[goal]


def random_policy(rng: random.Random) -> Callable[[WikiGame], str | None]:
    """A uniformly random permitted link each step (None on a dead end)."""
    def choose(task: WikiGame) -> str | None:
        links = task.get_permitted_links()
        return rng.choice(links) if links else None
    return choose


def _words(text: str) -> set[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in ENGLISH_STOP_WORDS}


def greedy_policy(task: WikiGame) -> str | None:
    """The non-LLM greedy baseline: the goal itself if linked, else the unvisited link whose title shares most
    words with the goal page's title and lead, ties broken by the link's own number of links, then by name."""
    links = task.get_permitted_links()
    if not links:
        return None
    goal = task.goal_page
    if goal.title in links:
        return goal.title
    target = _words(goal.title + " " + goal.summary)
    visited = set(task.page_history)
    fresh = [link for link in links if link not in visited] or links
    return max(fresh, key=lambda link: (len(_words(link) & target), len(task.wiki.graph.get(link, ())),
                                        [-ord(c) for c in link]))


def play(task: WikiGame, agent, num_loops: int) -> dict:
    """Run ``agent_loop`` and summarise: won, moves, optimal, path."""
    optimal = shortest_path_length(task.wiki.graph, task.starting_page.title, task.goal_page.title)
    won = agent_loop(agent, num_loops)
    return {"start": task.starting_page.title, "goal": task.goal_page.title, "won": won, "moves": task.n_moves,
            "optimal": optimal, "path": list(task.page_history)}


def sample_games(wiki: Encyclopedia, n: int, seed: int, distances: Iterable[int] = (2, 3),
                 kinds: tuple[str, ...] = ("article",)) -> list[tuple[str, str, int]]:
    """``n`` (start, goal, optimal) triples between pages of ``kinds``, optimal distance in ``distances``,
    drawn without replacement with a seeded RNG, balanced over the distances."""
    rng = random.Random(seed)
    titles = sorted(t for t, p in wiki.pages.items() if p.kind in kinds)
    pools: dict[int, list[tuple[str, str, int]]] = {d: [] for d in distances}
    for s in titles:
        dist = bfs_distances(wiki.graph, s)
        for g in titles:
            if g != s and dist.get(g) in pools:
                pools[dist[g]].append((s, g, dist[g]))
    out = []
    ds = list(distances)
    for i in range(n):
        d = ds[i % len(ds)]
        pick = rng.randrange(len(pools[d]))
        out.append(pools[d].pop(pick))
    return out


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------

SMALL_WORLD = {
    # A toy encyclopedia whose links follow from the same rule: for the exact random-walk check.
    "Paris": "Paris\n\nParis is the capital of France, on the Seine.",
    "France": "France\n\nFrance borders Spain and Germany; its capital is Paris.",
    "Spain": "Spain\n\nSpain borders France and Portugal.",
    "Germany": "Germany\n\nGermany borders France and Poland.",
    "Portugal": "Portugal\n\nPortugal borders Spain on the Atlantic.",
    "Poland": "Poland\n\nPoland lies east of Germany.",
    "Seine": "Seine\n\nThe Seine flows through Paris.",
    "Atlantic": "Atlantic\n\nThe Atlantic is an ocean.",
}


def run_experiment(out_dir: Path, n_games: int = 60, n_llm_games: int = 3, max_moves: int = 8,
                   n_random_sims: int = 4000) -> dict:
    """Build the encyclopedia, check the oracle and the non-LLM agents on it, play a few SmolLM2 games.

    Writes ``figures/`` (degree and distance histograms, random agent: exact vs simulated) and
    ``results.json``. Day 80 runs the full evaluation of the LLM agents.
    """
    import networkx as nx
    from scipy.stats import binomtest

    from checks.timing import single_thread

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    t0 = time.perf_counter()
    wiki = build_encyclopedia_uncached()
    build_s = time.perf_counter() - t0
    G = nx.DiGraph([(u, v) for u, vs in wiki.graph.items() for v in vs])
    G.add_nodes_from(wiki.graph)
    articles = sorted(t for t, p in wiki.pages.items() if p.kind == "article")
    # Distances between all article pairs (the game's start and goal pages are articles).
    dist_hist: dict[int, int] = {}
    unreachable = 0
    for s in articles:
        d = bfs_distances(wiki.graph, s)
        for g in articles:
            if g != s:
                if g in d:
                    dist_hist[d[g]] = dist_hist.get(d[g], 0) + 1
                else:
                    unreachable += 1
    out_degrees = [len(v) for v in wiki.graph.values()]

    # Scripted agents on sampled games.
    games = sample_games(wiki, n_games, seed=0)
    rng = random.Random(0)
    optimal_runs, random_runs, greedy_runs = [], [], []
    for s, g, _ in games:
        optimal_runs.append(_play_policy(wiki, s, g, optimal_policy, max_moves))
        random_runs.append(_play_policy(wiki, s, g, random_policy(rng), max_moves))
        greedy_runs.append(_play_policy(wiki, s, g, greedy_policy, max_moves))

    # The random agent on one real game: exact success-within-k against simulation.
    s, g, _ = games[0]
    ks = list(range(0, max_moves + 1))
    exact_curve = [random_success_probability(wiki.graph, s, g, k) for k in ks]
    sim_rng = random.Random(1)
    first_hits = []
    for _ in range(n_random_sims):
        run = _play_policy(wiki, s, g, random_policy(sim_rng), max_moves)
        first_hits.append(run["moves"] if run["won"] else None)
    sim_curve = [sum(1 for h in first_hits if h is not None and h <= k) / n_random_sims for k in ks]

    # A few SmolLM2 games (plain agent), as a demonstration; day 80 evaluates properly.
    llm_runs = []
    with single_thread():
        for s2, g2, _ in games[:n_llm_games]:
            task = WikiGame(s2, g2, wiki)
            agent = WikiAgent(task)
            run = play(task, agent, max_moves)
            llm_runs.append(run | {"model_calls": agent.n_calls, "tool_errors": agent.n_tool_errors})

    def summary(runs):
        wins = sum(r["won"] for r in runs)
        ci = binomtest(wins, len(runs)).proportion_ci(method="wilson")
        ratios = [r["moves"] / r["optimal"] for r in runs if r["won"]]
        return {"n": len(runs), "wins": wins, "success_rate": wins / len(runs), "ci95": [ci.low, ci.high],
                "mean_moves_over_optimal": float(np.mean(ratios)) if ratios else None}

    results = {
        "asset": ASSET,
        "encyclopedia": {"pages": len(wiki), "articles": len(articles), "entities": len(wiki) - len(articles),
                         "links": wiki.n_links, "build_seconds": build_s,
                         "mean_out_degree": float(np.mean(out_degrees)), "max_out_degree": int(max(out_degrees)),
                         "dead_ends": int(sum(d == 0 for d in out_degrees)),
                         "strongly_connected_largest": max(len(c) for c in nx.strongly_connected_components(G)),
                         "article_distance_histogram": {str(d): dist_hist[d] for d in sorted(dist_hist)},
                         "article_pairs_unreachable": unreachable},
        "games": {"n": n_games, "max_moves": max_moves, "seed": 0, "distances": [2, 3]},
        "optimal_agent": summary(optimal_runs) | {
            "all_exactly_optimal": all(r["won"] and r["moves"] == r["optimal"] for r in optimal_runs)},
        "random_agent": summary(random_runs),
        "greedy_agent": summary(greedy_runs),
        "random_exact_vs_simulated": {"start": s, "goal": g, "k": ks, "exact": exact_curve, "simulated": sim_curve,
                                      "n_sims": n_random_sims,
                                      "max_abs_gap": float(max(abs(a - b) for a, b in zip(exact_curve, sim_curve)))},
        "smollm2_plain_demo": summary(llm_runs) | {"games": llm_runs},
        "wall_seconds": time.perf_counter() - wall0,
        "cpu_seconds": time.process_time() - cpu0,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    draw_figure(out_dir, wiki, results)
    return results


def draw_figure(out_dir: Path, wiki: Encyclopedia, results: dict) -> None:
    """figures/wiki_graph.png: out-degrees, the article distance histogram, and the random agent's exact
    success curve against its simulation (from results.json's numbers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = results["encyclopedia"]["article_distance_histogram"]
    rv = results["random_exact_vs_simulated"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].hist([len(v) for v in wiki.graph.values()], bins=40, color="tab:blue")
    axes[0].set(xlabel="permitted links on a page", ylabel="pages", yscale="log", title="out-degree")
    ds = sorted(hist, key=int)
    axes[1].bar([int(d) for d in ds], [hist[d] for d in ds], color="tab:green")
    axes[1].set(xlabel="optimal moves (BFS)", ylabel="ordered article pairs", title="article-to-article distance",
                xticks=[int(d) for d in ds])
    axes[2].plot(rv["k"], rv["exact"], "k-", label="exact $(P^k)_{sg}$")
    axes[2].plot(rv["k"], rv["simulated"], "o", color="tab:red", label=f"simulated, n={rv['n_sims']}")
    axes[2].set(xlabel="moves allowed k", ylabel="P(reached goal)")
    axes[2].set_title(f"random agent\n{rv['start']} → {rv['goal']}", fontsize=8)
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(Path(out_dir) / "figures" / "wiki_graph.png", dpi=120)
    plt.close(fig)


def _play_policy(wiki: Encyclopedia, start: str, goal: str, policy, max_moves: int) -> dict:
    task = WikiGame(start, goal, wiki)
    return play(task, PolicyAgent(task, policy), max_moves)
