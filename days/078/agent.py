"""Day 78: Agent scaffolding (ARENA 3.4 LLM Agents, part 1: a simple arithmetic agent).

An agent is a model in a loop: it reads a task, may call a tool, reads the tool's result, and
answers. ARENA builds one with OpenAI's native tool calling; here the model is the local
SmolLM2-135M-Instruct through the model layer of day 71 (``days/071/llm.py``), whose chat template
has no tool section: ``generate_with_tools`` renders the tool's JSON schema into the system prompt
with one concrete example, prefills ``<tool_call>{"name": "`` and parses the call. The same agent
code runs on ``gpt-*`` models with ``OPENAI_API_KEY`` set (native tools).

- ``evaluate_expression``: arithmetic without ``eval``: the expression is parsed to a Python AST and
  only numbers, ``+ - * / // % **`` and unary signs are evaluated (each with Python's own operator,
  so results equal Python's bit for bit); anything else (names, calls, attributes, subscripts,
  comprehensions, ...) and exponents whose result would exceed ``MAX_RESULT_BITS`` bits are refused
  with ``UnsafeExpression``.
- ``ArithmeticTask``, ``CalculateTool``, ``apply_tool_call_format``, ``execute_tool_calls``,
  ``SimpleAgent``, ``ArithmeticAgent``, ``agent_loop``: ARENA's names and behaviour.
- ``calculate``: the same tool as an inspect ``@tool``; its JSON schema equals
  ``CalculateTool().description``'s.
- ``run_experiment``: SmolLM2's success on fresh arithmetic tasks with and without the tool
  (proportions with Clopper-Pearson 95% intervals).
"""

from __future__ import annotations

import ast
import importlib
import json
import math
import operator
import random
import re
from pathlib import Path
from typing import Any, Literal

llm = importlib.import_module("days.071.llm")

# ---------------------------------------------------------------------------------------------
# A safe calculator
# ---------------------------------------------------------------------------------------------

MAX_RESULT_BITS = 4096        # a power whose result would need more bits than this is refused
MAX_EXPRESSION_CHARS = 1000   # longer input is refused before parsing

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class UnsafeExpression(ValueError):
    """The expression is not plain arithmetic on numbers, or its result would be too large."""


def _bits(x: int | float) -> float:
    return math.log2(abs(x)) if x not in (0, 1, -1) and isinstance(x, int) else 0.0


def _eval_node(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _eval_node(node.body)
    if isinstance(node, ast.Constant):
        if type(node.value) in (int, float):  # bool, complex, str, bytes, None are refused
            return node.value
        raise UnsafeExpression(f"only numbers are allowed, not {type(node.value).__name__} {node.value!r}")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval_node(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Pow) and isinstance(left, int) and isinstance(right, int) and right > 0:
            if _bits(left) * right > MAX_RESULT_BITS:
                raise UnsafeExpression(f"the power {left} ** {right} would have about {_bits(left) * right:.0f} "
                                       f"bits (more than {MAX_RESULT_BITS})")
        if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, int):
            if _bits(left) + _bits(right) > MAX_RESULT_BITS:
                raise UnsafeExpression(f"the product would have more than {MAX_RESULT_BITS} bits")
        try:
            return _BINARY[type(node.op)](left, right)
        except OverflowError as exc:  # float ** float beyond the float range
            raise UnsafeExpression(f"the result overflows: {exc}") from exc
    what = type(node.op).__name__ if isinstance(node, (ast.BinOp, ast.UnaryOp)) else type(node).__name__
    raise UnsafeExpression(f"{what} is not allowed: only numbers, + - * / // % ** and parentheses")


def evaluate_expression(expression: str) -> int | float:
    """ARENA's ``evaluate_expression``, without ``eval``: the value of an arithmetic expression.

    Parsed with ``ast.parse(mode="eval")``; every node must be a number (int or float), a unary
    ``+``/``-`` or a binary ``+ - * / // % **``, evaluated with Python's own ``operator`` functions,
    so the result equals Python's. Raises ``SyntaxError`` (not an expression), ``ZeroDivisionError``
    (as Python does) and ``UnsafeExpression`` (anything else, or a result over ``MAX_RESULT_BITS``).
    """
    if not isinstance(expression, str):
        raise UnsafeExpression(f"the expression must be a string, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise UnsafeExpression(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except RecursionError as exc:
        raise UnsafeExpression("the expression is nested too deeply") from exc
    try:
        return _eval_node(tree)
    except RecursionError as exc:
        raise UnsafeExpression("the expression is nested too deeply") from exc


# ---------------------------------------------------------------------------------------------
# ARENA 3.4: the task, the tool, the agent
# ---------------------------------------------------------------------------------------------

class ArithmeticTask:
    """ARENA's task: the six operations ``+ - * / % //`` on two numbers, one at a time.

    ``correct_answers`` holds Python's value of each expression; ``check_answer`` accepts an answer
    within ``math.isclose(rel_tol=1e-5, abs_tol=1e-8)``; ``update_current_task`` marks the current
    one solved and moves on (cyclically).
    """

    def __init__(self, num1: int | float, num2: int | float):
        self.num1, self.num2 = num1, num2
        self.operations: list[str] = ["+", "-", "*", "/", "%", "//"]
        self.correct_answers: dict[str, float] = self._generate_answers()
        self.is_solved: dict[str, bool] = self._generate_is_solved()
        self.current_task_number = 0

    def _generate_answers(self) -> dict[str, float]:
        return {f"{self.num1} {op} {self.num2}": evaluate_expression(f"{self.num1} {op} {self.num2}")
                for op in self.operations}

    def _generate_is_solved(self) -> dict[str, bool]:
        return {f"{self.num1} {op} {self.num2}": False for op in self.operations}

    @property
    def get_current_task(self) -> str:
        return f"{self.num1} {self.operations[self.current_task_number]} {self.num2}"

    @property
    def instruction(self) -> dict:
        return {"role": "user",
                "content": f"Calculate the result of the following expression: {self.get_current_task}. Give your "
                           "final answer in the format: <answer>NUMBER</answer>, where NUMBER is a numerical value"}

    def check_solved(self) -> bool:
        return all(self.is_solved.values())

    def check_answer(self, model_answer: str | float) -> bool:
        correct = self.correct_answers[self.get_current_task]
        return math.isclose(float(model_answer), correct, rel_tol=1e-5, abs_tol=1e-8)

    def update_current_task(self) -> None:
        self.is_solved[self.get_current_task] = True
        self.current_task_number = (self.current_task_number + 1) % len(self.operations)


class CalculateTool:
    """ARENA's calculator tool: ``execute`` returns the value as a string, or ``"Error: ..."``."""

    name = "calculate"

    @staticmethod
    def execute(expression: str, task: ArithmeticTask | None = None) -> str:
        try:
            return str(evaluate_expression(expression))
        except (SyntaxError, ZeroDivisionError, UnsafeExpression) as e:
            return f"Error: {e}"

    @property
    def description(self) -> dict:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": 'Calculates the result of an arithmetic expression. For example, you could provide an '
                               'input in the form "2+3" and the function will return 5. Or you could provide an '
                               'expression like "10/3" and the function will return 3.3333333333333335.',
                "parameters": {
                    "type": "object",
                    "properties": {"expression": {"type": "string",
                                                  "description": "The arithmetic expression that you want to be "
                                                                 "evaluated."}},
                    "required": ["expression"],
                    "additionalProperties": False,
                },
            },
        }


Calculator = CalculateTool()
TOOL_EXAMPLES = {"calculate": {"expression": "2 + 3"}}  # the one concrete example SmolLM2 is shown


def apply_tool_call_format(tool_call, content: str) -> dict:
    """ARENA's format of a tool result for the chat history (OpenAI's ``tool`` message)."""
    return llm.tool_result_message(tool_call, content)


def execute_tool_calls(tool_calls: list, tools: list, task: Any = None) -> list[str]:
    """Run each call with the tool of that name (``tool.execute(**arguments, task=task)``).

    A malformed call (``error`` set by the parser), an unknown tool or arguments the tool does not
    take give an ``"Error: ..."`` string for the model, never an exception.
    """
    responses = []
    for call in tool_calls:
        if getattr(call, "error", None):
            responses.append(f"Error: {call.error}")
            continue
        tool = next((t for t in tools if t.name == call.name), None)
        if tool is None:
            responses.append(f"Error: there is no tool named {call.name!r} (tools: {[t.name for t in tools]})")
            continue
        try:
            responses.append(tool.execute(**call.arguments, task=task))
        except TypeError as exc:
            responses.append(f"Error: bad arguments for {call.name}: {exc}")
    return responses


class SimpleAgent:
    """ARENA's ``SimpleAgent``: a chat history, a model and tools; one reply at a time."""

    def __init__(self, task: Any = None, model: str = "smollm2", tools: list | None = None,
                 chat_history: list[dict] | None = None, max_tokens: int = 48):
        self.task, self.model, self.max_tokens = task, model, max_tokens
        self.tools = tools or []
        self.chat_history = chat_history or []

    def get_response(self, use_tool: bool = True, answer_prefill: str = ""):
        """The model's reply (``llm.AssistantReply``) to the chat history, offered the tools or not."""
        # ARENA offers no tools when use_tool is False; after a tool call the tool section stays in the
        # prompt (the chat shows calls), as in the inspect provider's forced answer.
        used = any(m["role"] == "tool" for m in self.chat_history)
        tools = [t.description for t in self.tools] if use_tool or used else []
        return llm.generate_with_tools(self.model, self.chat_history, tools,
                                       tool_choice="auto" if use_tool else "none", temperature=0.0,
                                       max_tokens=self.max_tokens, tool_examples=TOOL_EXAMPLES,
                                       answer_prefill=answer_prefill if self.model in llm.LOCAL_MODELS else "",
                                       stop_sequences=None if use_tool else ["</answer>"])

    def execute_tool_calls(self, message) -> list[str]:
        """Each tool call of ``message`` executed on ``self.task`` (see ``execute_tool_calls``)."""
        if self.task is None:
            raise ValueError("the agent has no task to run tools on")
        return execute_tool_calls(message.tool_calls, self.tools, self.task)

    def run(self, with_tool: bool = True):
        response = self.get_response(use_tool=with_tool)
        self.chat_history.append(response.message)
        if response.tool_calls:
            for call, result in zip(response.tool_calls, self.execute_tool_calls(response)):
                self.chat_history.append(apply_tool_call_format(call, result))
        return response


class ArithmeticAgent(SimpleAgent):
    """ARENA's ``ArithmeticAgent``: instruction, an optional tool call, a forced final answer, a check.

    ``run`` appends the task's instruction, asks for a reply (with or without the tool); tool calls
    are executed and their results appended (``handle_tool_calls``), and then the final answer is
    asked for without tools (``generate_and_check_final_answer``); a reply without tool calls is
    the final answer itself. On SmolLM2 the final answer is prefilled with ``"<answer>"`` (the
    format the instruction asks for; ``answer_prefill=""`` turns it off). A correct answer moves
    the task on. ``history`` records each attempt.
    """

    def __init__(self, model: str = "smollm2", task: ArithmeticTask | None = None, tools: list | None = None,
                 chat_history: list[dict] | None = None, verbose: bool = False, answer_prefill: str = "<answer>",
                 max_tokens: int = 48):
        super().__init__(task=task, model=model, tools=tools, chat_history=chat_history, max_tokens=max_tokens)
        self.verbose, self.answer_prefill = verbose, answer_prefill
        self.history: list[dict] = []

    def handle_tool_calls(self, response) -> list[str]:
        """Append the reply and each tool's result to the chat history; return the results."""
        self.chat_history.append(response.message)
        results = self.execute_tool_calls(response)
        for call, result in zip(response.tool_calls, results):
            self.chat_history.append(apply_tool_call_format(call, result))
            if self.verbose:
                print(f"tool {call.name}({call.arguments}) -> {result}")
        return results

    def handle_refusal(self, response) -> None:
        """ARENA appends the refusal; a local model has no refusal field, so this only records it."""
        self.chat_history.append(response.message)

    @staticmethod
    def parse_answer(message) -> float:
        """The number between ``<answer>`` and ``</answer>`` (ValueError when absent or not a number)."""
        content = message["content"] if isinstance(message, dict) else message.content
        found = re.search(r"<answer>\s*(.*?)\s*(?:</answer>|$)", content, re.S)
        if not found:
            raise ValueError('"<answer>" not found in model response.')
        return float(found.group(1).replace(",", ""))

    def generate_and_check_final_answer(self, response=None) -> Literal["Correct", "Incorrect"]:
        """Ask for the final answer without tools (unless ``response`` is it), parse it and check it."""
        if response is None:
            response = self.get_response(use_tool=False, answer_prefill=self.answer_prefill)
        self.chat_history.append(response.message)
        try:
            correct = self.task.check_answer(self.parse_answer(response))
        except ValueError:
            correct = False
        verdict = "Correct" if correct else "Incorrect"
        self.chat_history.append({"role": "user", "content": f"{verdict}."})
        if self.verbose:
            print(f"{self.task.get_current_task}: {response.content!r} -> {verdict}")
        return verdict

    def run(self, with_tool: bool = True) -> bool:
        task = self.task.get_current_task
        self.chat_history.append(self.task.instruction)
        response = self.get_response(use_tool=True) if with_tool else None
        results = self.handle_tool_calls(response) if response and response.tool_calls else []
        # without a tool call the final answer is asked for at once (with the same prefill)
        verdict = self.generate_and_check_final_answer(None if not response or response.tool_calls else response)
        calls = response.tool_calls if response else []
        self.history.append(dict(task=task, tool_calls=[(c.name, c.arguments, c.error) for c in calls],
                                 tool_results=results, answer=self.chat_history[-2]["content"], verdict=verdict))
        if verdict == "Correct":
            self.task.update_current_task()
        return verdict == "Correct"


def agent_loop(agent: ArithmeticAgent, num_loops: int = 10, with_tool: bool = True) -> int:
    """ARENA's loop: run the agent until every operation is solved or ``num_loops`` runs; the runs used."""
    for i in range(num_loops):
        if agent.task.check_solved():
            return i
        agent.run(with_tool=with_tool)
    return num_loops


# ---------------------------------------------------------------------------------------------
# The same tool in inspect
# ---------------------------------------------------------------------------------------------

def _define_inspect_tool():
    from inspect_ai.tool import tool

    @tool(name="calculate")
    def calculate():
        async def execute(expression: str) -> str:
            """Calculates the result of an arithmetic expression. For example, you could provide an input in the form "2+3" and the function will return 5. Or you could provide an expression like "10/3" and the function will return 3.3333333333333335.

            Args:
              expression: The arithmetic expression that you want to be evaluated.
            """  # noqa: E501 - the description must equal CalculateTool's, one line
            return CalculateTool.execute(expression)

        return execute

    return calculate


calculate = _define_inspect_tool()


# ---------------------------------------------------------------------------------------------
# Experiment
# ---------------------------------------------------------------------------------------------

def random_expression(rng: random.Random, depth: int = 3) -> str:
    """A random arithmetic expression over ints and floats with + - * / // % ** and unary minus."""
    if depth == 0 or rng.random() < 0.3:
        return str(rng.randint(0, 99)) if rng.random() < 0.7 else f"{rng.uniform(0, 50):.3f}"
    op = rng.choice(["+", "-", "*", "/", "//", "%", "**", "neg"])
    if op == "neg":
        return f"-({random_expression(rng, depth - 1)})"
    if op == "**":
        return f"({random_expression(rng, depth - 1)}) ** {rng.randint(0, 3)}"
    return f"({random_expression(rng, depth - 1)}) {op} ({random_expression(rng, depth - 1)})"


def sample_tasks(n: int, seed: int = 0) -> list[ArithmeticTask]:
    """``n`` tasks with two-digit and three-digit integers (the right operand never 0)."""
    rng = random.Random(seed)
    return [ArithmeticTask(rng.randint(10, 999), rng.randint(2, 99)) for _ in range(n)]


def solve_once(task: ArithmeticTask, op_index: int, with_tool: bool, model: str = "smollm2") -> dict:
    """One fresh agent on one operation of ``task`` (a short chat: one instruction, at most one tool
    call, one answer): the attempt's record from ``ArithmeticAgent.history``."""
    task.current_task_number = op_index
    agent = ArithmeticAgent(model=model, task=task, tools=[Calculator])
    agent.run(with_tool=with_tool)
    return agent.history[-1]


def proportion(k: int, n: int) -> dict:
    """k/n with its Clopper-Pearson ("exact") 95% interval (scipy)."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return {"k": k, "n": n, "p": k / n, "ci_low": float(ci.low), "ci_high": float(ci.high)}


def summarise(records: list[dict]) -> dict:
    """Success rate, first-call validity and call correctness of a list of attempts."""
    calls = [r for r in records if r["tool_calls"]]
    good_calls = [r for r in calls if r["tool_calls"][0][2] is None]
    right_calls = [r for r in good_calls if r["tool_results"] and r["tool_results"][0] == str(
        evaluate_expression(r["task"]))]
    parsed = [r for r in records if _number_in_answer(r["answer"]) is not None]
    copied = [r for r in good_calls if r["tool_calls"][0][1] == TOOL_EXAMPLES["calculate"]]
    first_operand = [r for r in records if _number_in_answer(r["answer"]) == float(r["task"].split()[0])]
    return {"success": proportion(sum(r["verdict"] == "Correct" for r in records), len(records)),
            "called_a_tool": proportion(len(calls), len(records)),
            "call_well_formed": proportion(len(good_calls), max(len(calls), 1)) if calls else None,
            "call_computes_the_task": proportion(len(right_calls), len(good_calls)) if good_calls else None,
            "call_copies_the_example": proportion(len(copied), len(good_calls)) if good_calls else None,
            "answer_parsed": proportion(len(parsed), len(records)),
            "answer_is_the_first_operand": proportion(len(first_operand), len(records))}


def summaries(records: dict[str, list[dict]], ops: list[str]) -> dict:
    """``summarise`` of each condition's attempts, with the success rate of each operation (attempts
    are ordered task by task, the operations in ``ops`` order)."""
    return {cond: summarise(recs) | {"by_operation": {
        op: proportion(sum(r["verdict"] == "Correct" for r in recs[i::len(ops)]), len(recs[i::len(ops)]))
        for i, op in enumerate(ops)}} for cond, recs in records.items()}


def _number_in_answer(answer: str) -> float | None:
    try:
        return ArithmeticAgent.parse_answer({"content": answer})
    except ValueError:
        return None


N_TASKS = 10  # pairs of numbers; each with the six operations: 60 attempts per condition
SEED = 78


def run_experiment(out_dir: Path, n_tasks: int = N_TASKS, seed: int = SEED) -> dict:
    """SmolLM2 as ARENA's arithmetic agent on ``n_tasks`` random number pairs × 6 operations, with
    and without the calculator; each attempt a fresh chat. Writes figures/ and results.json."""
    import time

    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    tasks = sample_tasks(n_tasks, seed)
    records = {cond: [] for cond in ("with_tool", "without_tool")}
    for task in tasks:
        for op_index in range(len(task.operations)):
            for cond in records:
                records[cond].append(solve_once(task, op_index, with_tool=cond == "with_tool"))
    ops = tasks[0].operations
    results: dict[str, Any] = {
        "model": "smollm2 (SmolLM2-135M-Instruct, greedy, days/071/llm.py generate_with_tools)",
        "n_tasks": n_tasks, "seed": seed, "operations": ops, "answer_prefill": "<answer>",
        "tool_examples": TOOL_EXAMPLES,
    }
    results |= summaries(records, ops)
    results["records"] = records

    fig, ax = plt.subplots(figsize=(8, 3.6), constrained_layout=True)
    width = 0.38
    for j, cond in enumerate(records):
        ps = [results[cond]["by_operation"][op] for op in ops]
        xs = [i + (j - 0.5) * width for i in range(len(ops))]
        ax.bar(xs, [p["p"] for p in ps], width=width, label=cond.replace("_", " "))
        ax.errorbar(xs, [p["p"] for p in ps], yerr=[[p["p"] - p["ci_low"] for p in ps],
                                                    [p["ci_high"] - p["p"] for p in ps]],
                    fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_xticks(range(len(ops)), [f"a {op} b" for op in ops])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"success rate (n = {n_tasks} each)")
    ax.set_title("SmolLM2-135M as an arithmetic agent, with and without a calculator (95% CIs)")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    fig.savefig(out_dir / "figures/success.png", dpi=120)
    plt.close(fig)

    results["wall_seconds"] = time.perf_counter() - wall0
    results["cpu_seconds"] = time.process_time() - cpu0
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
