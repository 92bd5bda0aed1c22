"""The gate of day 78: Agent scaffolding (ARENA 3.4, the arithmetic agent).

References: Python's own evaluation of the same expressions (``eval`` on generated, trusted strings
only) and the ``operator`` module; inspect's own tool schema (``ToolDef``) for the inspect tool;
scipy's Clopper-Pearson interval for the committed proportions.
"""

from __future__ import annotations

import asyncio
import operator
import random
import time

import pytest

from checks.committed import assert_reproduces, float_ops, statistical

from . import agent as A

needs_smollm2 = pytest.mark.asset("smollm2-135m-instruct")


# --------------------------------------------------------------------------- the calculator


def test_calculator_equals_python_on_200_random_expressions(measure):
    """Issue 15, CalculateTool "against Python's own evaluation of 200 random expressions": the AST
    evaluator gives exactly Python's value (same type, same bits) or raises as Python does."""
    rng = random.Random(0)
    expressions = [A.random_expression(rng) for _ in range(200)]
    kinds = {"int": 0, "float": 0, "zero_division": 0}
    for expr in expressions:
        try:
            expected = eval(expr, {"__builtins__": {}})  # the reference, on our own generated strings
        except ZeroDivisionError:
            with pytest.raises(ZeroDivisionError):
                A.evaluate_expression(expr)
            assert A.CalculateTool.execute(expr).startswith("Error: ")
            kinds["zero_division"] += 1
            continue
        got = A.evaluate_expression(expr)
        assert type(got) is type(expected) and (got == expected or got != got and expected != expected), expr
        assert A.CalculateTool.execute(expr) == str(expected)
        kinds[type(got).__name__] += 1
    assert min(kinds.values()) >= 5, kinds  # the sample exercises ints, floats and errors
    for kind, count in kinds.items():
        measure(f"calculator.{kind}", count)


MALICIOUS = [
    "__import__('os').system('echo pwned')",
    "(1).__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "open('/etc/passwd').read()",
    "x + 1",
    "(lambda: 1)()",
    "[1, 2][0]",
    "'a' * 10",
    "1 if 1 else 2",
    "True + 1",
    "2j * 3",
    "1 << 100000",
    "9 ** 9 ** 9",
    "2 ** 100000",
    "10 ** 10 ** 10",
    "(10 ** 600) * (10 ** 700)",
    "1.5 ** 100000",
    "+".join(["1"] * 600),
]


@pytest.mark.parametrize("expression", MALICIOUS)
def test_calculator_refuses_malicious_input(expression):
    """Issue 15, CalculateTool: malicious input (imports, attribute access, names, calls, huge
    exponents) is refused with a clear error, quickly, and the tool returns "Error: ..." instead."""
    start = time.perf_counter()
    with pytest.raises(A.UnsafeExpression) as info:
        A.evaluate_expression(expression)
    assert time.perf_counter() - start < 5.0  # 9 ** 9 ** 9 computed would never return
    assert "not allowed" in str(info.value) or "bits" in str(info.value) or "overflows" in str(info.value) \
        or "only numbers" in str(info.value) or "longer than" in str(info.value)
    assert A.CalculateTool.execute(expression) == f"Error: {info.value}"


def test_calculator_statements_are_syntax_errors():
    """Statements are not expressions: ``import os`` is a SyntaxError (reported by the tool as an error)."""
    with pytest.raises(SyntaxError):
        A.evaluate_expression("import os")
    assert A.CalculateTool.execute("import os").startswith("Error: ")


def test_calculator_length_limit_is_inclusive():
    """The length guard refuses only what is LONGER than MAX_EXPRESSION_CHARS: an expression of exactly that many
    characters is evaluated."""
    at_limit = " " * (A.MAX_EXPRESSION_CHARS - 1) + "7"
    assert A.evaluate_expression(at_limit) == 7
    with pytest.raises(A.UnsafeExpression, match="longer than"):
        A.evaluate_expression(" " + at_limit)


def test_random_expressions_nest_at_most_depth_operators():
    """random_expression(rng, depth) builds a tree of at most `depth` operators from root to leaf (each operator
    recurses with depth - 1), and depth 3 reaches 3: measured on the parsed expression (ast), over 300 draws."""
    def nesting(node):
        if isinstance(node, A.ast.BinOp):
            return 1 + max(nesting(node.left), nesting(node.right))
        return 1 + nesting(node.operand) if isinstance(node, A.ast.UnaryOp) else 0

    rng = random.Random(1)
    depths = [nesting(A.ast.parse(A.random_expression(rng, 3), mode="eval").body) for _ in range(300)]
    assert max(depths) == 3 and min(depths) == 0


# --------------------------------------------------------------------------- ArithmeticTask


def test_arithmetic_task():
    """ARENA 3.4 ArithmeticTask: the six operations' answers are Python's (operator module), the
    instruction asks for <answer>NUMBER</answer>, check_answer accepts within isclose, and
    update_current_task marks solved and cycles until check_solved."""
    task = A.ArithmeticTask(844, 26)
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "%": operator.mod,
           "//": operator.floordiv}
    assert task.correct_answers == {f"844 {op} 26": f(844, 26) for op, f in ops.items()}
    assert task.get_current_task == "844 + 26" and "<answer>NUMBER</answer>" in task.instruction["content"]
    assert task.check_answer("870") and task.check_answer(870.000001) and not task.check_answer(871)
    # ARENA's tolerance, math.isclose(rel_tol=1e-5, abs_tol=1e-8): either side of the relative bound
    assert task.check_answer(870 * (1 + 0.9e-5)) and not task.check_answer(870 * (1 + 1.1e-5))
    for i, op in enumerate(ops):
        assert task.get_current_task == f"844 {op} 26" and not task.check_solved()
        task.update_current_task()
    assert task.check_solved() and task.current_task_number == 0


# --------------------------------------------------------------------------- tools: hand-written and inspect


def test_inspect_tool_schema_equals_the_hand_written_one():
    """Issue 15: the same tool as an inspect @tool whose JSON schema equals CalculateTool's description,
    and which computes the same result."""
    from inspect_ai.tool._tool_def import ToolDef

    tdef = ToolDef(A.calculate())
    hand = A.CalculateTool().description["function"]
    assert A.llm.tool_schema(tdef) == hand
    assert tdef.parameters.model_dump(exclude_none=True) == hand["parameters"]
    for expr in ("844 / 26", "2 ** 10", "1 / 0", "__import__('os')"):
        assert asyncio.run(A.calculate()(expr)) == A.CalculateTool.execute(expr)


def test_execute_tool_calls():
    """ARENA execute_tool_calls: each call runs the named tool on its arguments; a malformed call, an
    unknown tool or wrong arguments give an "Error: ..." string for the model, never an exception."""
    _, calls = A.llm.parse_tool_calls(
        A.llm.format_tool_call("calculate", {"expression": "6 * 7"})
        + '<tool_call>{"name": "calculate", "arguments": {"expression": "1 +')
    calls += [A.llm.ParsedToolCall("c3", "search", {"query": "x"}), A.llm.ParsedToolCall("c4", "calculate", {"expr": "1"})]
    out = A.execute_tool_calls(calls, [A.Calculator], task=A.ArithmeticTask(1, 2))
    assert out[0] == "42"
    assert out[1].startswith("Error: Malformed tool call")
    assert out[2].startswith("Error: there is no tool named 'search'")
    assert out[3].startswith("Error: bad arguments for calculate")
    msg = A.apply_tool_call_format(calls[0], out[0])
    assert msg == {"role": "tool", "tool_call_id": calls[0].id, "name": "calculate", "content": "42"}
    with pytest.raises(ValueError, match="no task"):
        A.SimpleAgent(tools=[A.Calculator]).execute_tool_calls(A.llm.AssistantReply("", calls[:1]))


@pytest.mark.parametrize("text,value", [("<answer>42</answer>", 42.0), ("<answer> 3.5 </answer> done", 3.5),
                                        ("<answer>1,234", 1234.0), ("I think <answer>-7</answer>", -7.0)])
def test_parse_answer(text, value):
    """ARENA ArithmeticAgent.parse_answer: the number in <answer> tags (a missing closing tag is
    accepted: generation stops at it)."""
    assert A.ArithmeticAgent.parse_answer({"content": text}) == value


@pytest.mark.parametrize("text", ["42", "<answer>forty-two</answer>", ""])
def test_parse_answer_refuses(text):
    """No <answer> tag, or no number in it: ValueError (the agent scores the attempt Incorrect)."""
    with pytest.raises(ValueError):
        A.ArithmeticAgent.parse_answer({"content": text})


# --------------------------------------------------------------------------- real SmolLM2 steps


def _judged_correct(task_text: str, answer) -> bool:
    """check_answer of the parsed answer on a fresh task set to ``task_text`` (False when no number parses)."""
    num1, op, num2 = task_text.split()
    task = A.ArithmeticTask(int(num1), int(num2))
    task.current_task_number = task.operations.index(op)
    try:
        return task.check_answer(A.ArithmeticAgent.parse_answer(answer))
    except ValueError:
        return False


@pytest.fixture(scope="module")
def smol_agent():
    task = A.ArithmeticTask(108, 40)
    agent = A.ArithmeticAgent(model="smollm2", task=task, tools=[A.Calculator])
    solved = A.agent_loop(agent, num_loops=1, with_tool=True)
    returned = agent.run(with_tool=True)                  # the second step by hand, to see what run returns
    return agent, solved, returned


@needs_smollm2
def test_smollm2_run_without_the_tool():
    """run(with_tool=False), ARENA's no-tool baseline: no tool call is asked for; the step is instruction ->
    final answer (prefilled with <answer>) -> verdict, recorded with no calls and no results."""
    agent = A.ArithmeticAgent(model="smollm2", task=A.ArithmeticTask(108, 40), tools=[A.Calculator])
    returned = agent.run(with_tool=False)
    user, answer, verdict = agent.chat_history
    assert (user["role"], answer["role"], verdict["role"]) == ("user", "assistant", "user")
    assert "expression: 108 + 40." in user["content"] and answer["content"].startswith("<answer>")
    [record] = agent.history
    assert (record["task"], record["tool_calls"], record["tool_results"]) == ("108 + 40", [], [])
    ok = _judged_correct(record["task"], answer)
    assert returned == ok and verdict["content"] == ("Correct." if ok else "Incorrect.") == record["verdict"] + "."


@needs_smollm2
def test_smollm2_agent_loop_steps(smol_agent, measure):
    """ARENA agent_loop on SmolLM2 (one step) and one more ArithmeticAgent.run: each step is instruction -> tool
    call -> tool result -> forced final answer -> verdict; the tool's result is the calculator's value of the
    call; the verdict is check_answer of the parsed answer, recorded with that answer; run returns whether it
    was correct; correct answers move the task on."""
    agent, used, returned = smol_agent
    assert used == 1 and len(agent.history) == 2
    assert returned == (agent.history[-1]["verdict"] == "Correct")
    h = agent.chat_history
    assert [m["role"] for m in h] == ["user", "assistant", "tool", "assistant", "user"] * 2
    n_correct = 0
    for step, record in enumerate(agent.history):
        user, call_msg, result, answer, verdict = h[5 * step: 5 * step + 5]
        assert user["role"] == "user" and "<answer>NUMBER</answer>" in user["content"]
        assert f"expression: {record['task']}." in user["content"]
        [call] = call_msg["tool_calls"]
        assert call["function"]["name"] == "calculate"
        expression = A.json.loads(call["function"]["arguments"])["expression"]
        assert result["content"] == A.CalculateTool.execute(expression)
        assert answer["content"].startswith("<answer>") and record["answer"] == answer["content"]
        ok = _judged_correct(record["task"], answer)
        assert verdict["content"] == ("Correct." if ok else "Incorrect.") == record["verdict"] + "."
        n_correct += ok
    assert agent.task.current_task_number == n_correct  # each correct answer moved the task on
    measure("gate.smollm2_steps_correct", n_correct)


# --------------------------------------------------------------------------- committed results


def test_committed_numbers_are_consistent(committed):
    """The committed summaries are those of the committed attempts (exact: counts), each proportion's
    interval is scipy's Clopper-Pearson interval of its k and n, and every attempt's verdict is the
    task's own check of its answer (recomputed here)."""
    now = A.summaries(committed["records"], committed["operations"])
    for cond in ("with_tool", "without_tool"):
        records = committed["records"][cond]
        assert len(records) == committed["n_tasks"] * 6
        assert now[cond] == committed[cond]
        for r in records:
            num1, op, num2 = r["task"].split()
            task = A.ArithmeticTask(int(num1), int(num2))
            task.current_task_number = task.operations.index(op)
            number = A._number_in_answer(r["answer"])
            assert r["verdict"] == ("Correct" if number is not None and task.check_answer(number) else "Incorrect")
    # the post's claim: once the call computes the task, the answer copies its result correctly
    with_tool = committed["records"]["with_tool"]
    right_calls = [r for r in with_tool if r["tool_results"] and r["tool_results"][0] == A.CalculateTool.execute(r["task"])]
    assert len(right_calls) == committed["with_tool"]["call_computes_the_task"]["k"]
    assert all(r["verdict"] == "Correct" for r in right_calls)
    tasks = A.sample_tasks(committed["n_tasks"], committed["seed"])
    assert [r["task"] for r in committed["records"]["with_tool"]] == [
        f"{t.num1} {op} {t.num2}" for t in tasks for op in t.operations]
    for cond in ("with_tool", "without_tool"):
        p = committed[cond]["success"]
        q = A.proportion(p["k"], p["n"])
        assert (q["k"], q["n"]) == (p["k"], p["n"])
        assert_reproduces([q["ci_low"], q["ci_high"]], [p["ci_low"], p["ci_high"]],
                          float_ops(200, why="scipy's beta quantiles (an iterative root find, ~200 float64 "
                                             "steps), recomputed from the same integers"), name=f"{cond}.ci")


@pytest.mark.slow
@needs_smollm2
def test_experiment_reproduces_the_headline(tmp_path, committed, measure):
    """(slow, ~23 min wall / 6.5 CPU min on a busy 2-core machine: 120 agent attempts) run_experiment again: the success
    rates with and without the calculator reproduce within 2 binomial standard errors at the
    committed rate (greedy decoding is deterministic on one machine; another CPU's kernels can
    flip near-tied tokens, which moves a few attempts), and the tool helps."""
    now = A.run_experiment(tmp_path, n_tasks=committed["n_tasks"], seed=committed["seed"])
    measure("slow.wall_seconds", now["wall_seconds"])
    measure("slow.cpu_seconds", now["cpu_seconds"])
    for cond in ("with_tool", "without_tool"):
        then = committed[cond]["success"]
        se = max((then["p"] * (1 - then["p"]) / then["n"]) ** 0.5, 1 / then["n"])
        assert_reproduces(now[cond]["success"]["p"], then["p"],
                          statistical(2 * se, why="near-tied greedy tokens flip on other kernels"), name=cond)
    assert now["with_tool"]["success"]["ci_low"] > now["without_tool"]["success"]["ci_high"]
