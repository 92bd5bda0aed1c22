"""The model layer of chapters 3-4: one place that talks to language models.

- ``retry_with_exponential_backoff``: ARENA 3.1's decorator-style wrapper. Attempt k (k = 1, 2, ...)
  that fails with a retryable error sleeps
  $s_k = s_0 \\prod_{i=1}^{k} b\\,(1 + j u_i)$, $u_i \\sim U[0, 1)$, $j \\in \\{0, 1\\}$,
  and after ``max_retries`` failed attempts it raises ``RetriesExhausted``.
- ``generate_response(model, messages, ...)``: ARENA's module-level function. ``"smollm2"`` runs the
  local SmolLM2-135M-Instruct in process (its chat template, one torch thread, greedy at temperature
  0); ``gpt-*``/``o1``/``o3``/``o4`` go to OpenAI and ``claude-*`` to Anthropic, clients created only
  when the package is installed and the key is set.
- ``SmolLM2API``: an Inspect model provider (``--model smollm2/smollm2``) around the same in-process
  model, batching the concurrent requests of an eval into one left-padded greedy ``generate``.
- ``logprob_multiple_choice``: an Inspect solver that answers a multiple-choice sample by the
  log-probability of each option letter right after ``"ANSWER:"``, and marks ``state.choices`` so
  inspect's own ``choice()`` scorer reads it.

- Tool calling. SmolLM2's chat template has no tool section, so tools go into the system prompt as
  JSON schemas with one concrete example call (``tools_system_prompt``, ``render_tool_chat``); the
  reply is prefilled with ``TOOL_CALL_PREFILL`` = ``<tool_call>{"name": "`` and parsed by
  ``parse_tool_calls`` (``<tool_call>{"name", "arguments"}</tool_call>``; malformed calls come back
  with an error, never an exception); tool results reach the model as ``<tool_response>`` user turns.
  ``generate_with_tools(model, messages, tools, tool_choice)`` is the ``generate_response`` of a
  hand-written (ARENA-style) agent: OpenAI-format messages in, an ``AssistantReply(content,
  tool_calls)`` out, ``tool_choice="none"`` forcing a plain answer. In Inspect the provider does the
  same with ``use_tools(...)`` + ``generate()``: malformed calls carry ``ToolCall.parse_error`` (inspect
  reports it to the model; the eval continues), and after ``force_answer_after`` tool results (model
  arg, default 1) or with ``tool_choice="none"`` it answers without tools, which ends inspect's loop.

Importing this module loads no model.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["LOCAL_MODELS", "MissingAPIKey", "RetriesExhausted", "SmolLM2API", "generate_response",
           "is_rate_limit_error", "letter_logprobs", "logprob_multiple_choice", "retry_with_exponential_backoff",
           "smollm2_generate",
           # tool calling
           "TOOL_CALL_PREFILL", "AssistantReply", "ParsedToolCall", "example_arguments", "format_tool_call",
           "generate_with_tools", "parse_tool_calls", "render_tool_chat", "tool_reply_message",
           "tool_result_message", "tool_schema", "tools_system_prompt", "tool_turns_since_user"]

LOCAL_MODELS = ("smollm2",)


# ---------------------------------------------------------------------------------------------
# Retry with exponential backoff (ARENA 3.1)
# ---------------------------------------------------------------------------------------------

class RetriesExhausted(RuntimeError):
    """Raised when every one of max_retries attempts failed with a retryable error."""


def is_rate_limit_error(exc: BaseException) -> bool:
    """ARENA's test, widened: a rate-limit / overload message (OpenAI 429, Anthropic 529)."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(key in text for key in ("rate_limit", "rate limit", "ratelimit", "429", "overloaded", "529"))


def retry_with_exponential_backoff(func: Callable, max_retries: int = 20, initial_sleep_time: float = 1.0,
                                   backoff_factor: float = 1.5, jitter: bool = True,
                                   retry_on: Callable[[BaseException], bool] = is_rate_limit_error,
                                   rng: random.Random | None = None) -> Callable:
    """Wrap ``func`` so that retryable errors (``retry_on(exc)`` true) are retried with growing sleeps.

    ARENA's schedule: before retry k the sleep is multiplied by ``backoff_factor * (1 + jitter * u)``
    with ``u ~ U[0, 1)`` drawn from ``rng`` (default: the ``random`` module), starting from
    ``initial_sleep_time``; so the first sleep is already ``initial * backoff * (1 + jitter u_1)``.
    A non-retryable error is re-raised at once; ``max_retries`` failed attempts raise
    ``RetriesExhausted`` chained to the last error.
    """
    if max_retries < 1:
        raise ValueError(f"max_retries must be at least 1, got {max_retries}")
    draw = (rng or random).random

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        sleep_time = initial_sleep_time
        last: BaseException | None = None
        for attempt in range(1, max_retries + 1):
            try:
                return func(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - filtered by retry_on
                if not retry_on(exc):
                    raise
                last = exc
                if attempt == max_retries:
                    break
                sleep_time *= backoff_factor * (1 + jitter * draw())
                time.sleep(sleep_time)
        raise RetriesExhausted(f"Maximum retries {max_retries} exceeded for {getattr(func, '__name__', func)}: "
                               f"last error: {last!r}") from last

    return wrapper


# ---------------------------------------------------------------------------------------------
# generate_response (ARENA 3.1-3.4)
# ---------------------------------------------------------------------------------------------

class MissingAPIKey(RuntimeError):
    """An API backend was asked for but its package or key is missing."""


def _provider_of(model: str) -> str:
    if model in LOCAL_MODELS:
        return "smollm2"
    if model.startswith(("gpt", "o1", "o3", "o4", "chatgpt")):
        return "openai"
    if model.startswith("claude"):
        return "anthropic"
    raise ValueError(f"unknown model {model!r}: expected one of {LOCAL_MODELS}, gpt-*/o*-* (OpenAI) or claude-*")


def _api_client(provider: str):
    """The OpenAI/Anthropic client, built only when the package is installed and its key is set."""
    key_var = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}[provider]
    if not os.environ.get(key_var):
        raise MissingAPIKey(f"{provider} model requested but {key_var} is not set")
    try:
        module = __import__(provider)
    except ImportError as exc:
        raise MissingAPIKey(f"{provider} model requested but the '{provider}' package is not installed "
                            f"(pip install {provider})") from exc
    return module.OpenAI() if provider == "openai" else module.Anthropic()


def _load_smollm2():
    from checks.models import hf_model

    return hf_model("smollm2")


def left_padded_batch(tok, conversations: list[list[dict]]):
    """Render each conversation with the chat template (a final assistant message is continued, a
    prefill; otherwise a generation prompt is added) and tokenize them left-padded into one batch."""
    prompts = []
    for messages in conversations:
        prefill = bool(messages) and messages[-1]["role"] == "assistant"
        prompts.append(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=not prefill,
                                               continue_final_message=prefill))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)


def smollm2_generate(conversations: list[list[dict]], *, max_tokens: int = 64, temperature: float = 0.0,
                     stop_sequences: list[str] | None = None, seed: int = 0) -> list[str]:
    """Batched chat generation on SmolLM2 (one torch thread): greedy when temperature is 0.

    Each conversation is a list of ``{"role", "content"}`` dicts rendered with the model's chat
    template; a conversation ending in an assistant message is continued (a prefill), otherwise a
    generation prompt is added. Prompts are left-padded into one ``generate`` call.
    """
    import torch
    from checks.timing import single_thread

    model, tok = _load_smollm2()
    batch = left_padded_batch(tok, conversations)
    kwargs: dict[str, Any] = dict(max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id)
    if temperature and temperature > 0:
        torch.manual_seed(seed)
        kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    stops = [stop for stop in stop_sequences or [] if stop]
    if stops:  # stop generating once every row has produced a stop string (the text is cut below anyway)
        kwargs.update(stop_strings=stops, tokenizer=tok)
    with single_thread(), torch.no_grad():
        out = model.generate(**batch, **kwargs)
    texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return [_cut(text, stop_sequences) for text in texts]


def _cut(text: str, stop_sequences: list[str] | None) -> str:
    for stop in stop_sequences or []:
        if stop and stop in text:
            text = text[:text.index(stop)]
    return text


def generate_response(model: str, messages: list[dict], temperature: float = 1.0, max_tokens: int = 1000,
                      verbose: bool = False, stop_sequences: list[str] | None = None) -> str:
    """ARENA's ``generate_response``: the assistant's reply text to a chat ``messages`` list.

    ``model="smollm2"`` runs locally (greedy when temperature is 0); OpenAI and Anthropic models need
    their package and key and are retried on rate limits with ``retry_with_exponential_backoff``.
    As in ARENA, Anthropic gets the system message separately.
    """
    provider = _provider_of(model)
    if verbose:
        for m in messages:
            print(f"{m['role']}: {m['content']}")
    if provider == "smollm2":
        reply = smollm2_generate([messages], max_tokens=max_tokens, temperature=temperature,
                                 stop_sequences=stop_sequences)[0]
    else:
        client = _api_client(provider)
        call = retry_with_exponential_backoff(_api_call)
        reply = call(provider, client, model, messages, temperature, max_tokens, stop_sequences or [])
    if verbose:
        print(f"assistant: {reply}")
    return reply


def _api_call(provider, client, model, messages, temperature, max_tokens, stop_sequences) -> str:
    if provider == "openai":
        response = client.chat.completions.create(model=model, messages=messages, temperature=temperature,
                                                  max_tokens=max_tokens, stop=stop_sequences or None)
        return response.choices[0].message.content
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [m for m in messages if m["role"] != "system"]
    kwargs = dict(model=model, messages=rest, temperature=temperature, max_tokens=max_tokens,
                  stop_sequences=stop_sequences)
    if system:
        kwargs["system"] = system
    response = client.messages.create(**kwargs)
    return response.content[0].text


# ---------------------------------------------------------------------------------------------
# Tool calling for a model whose chat template has no tool section (SmolLM2)
# ---------------------------------------------------------------------------------------------

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_CALL_PREFILL = TOOL_CALL_OPEN + '{"name": "'
"""The reply prefix that makes SmolLM2 call a tool (measured: 5/5 right first calls with one
concrete example and this prefill, 0/5 zero-shot)."""
TOOL_RESULT_ROLE = "user"
"""SmolLM2 was never trained on a ``tool`` role: a tool result reaches it as a user turn wrapped in
``<tool_response>`` tags."""


def tool_schema(tool) -> dict:
    """``{"name", "description", "parameters"}`` (JSON schema) of an inspect ``ToolInfo``/``ToolDef``,
    an OpenAI tool description (``{"type": "function", "function": {...}}``) or such a plain dict."""
    if hasattr(tool, "model_dump"):  # inspect ToolInfo
        tool = tool.model_dump(exclude_none=True)
    elif hasattr(tool, "as_tool") or hasattr(tool, "parameters") and hasattr(tool, "name"):  # inspect ToolDef
        tool = {"name": tool.name, "description": tool.description,
                "parameters": tool.parameters.model_dump(exclude_none=True)}
    if tool.get("type") == "function" and "function" in tool:
        tool = tool["function"]
    parameters = {k: v for k, v in tool.get("parameters", {}).items() if v not in ({}, [], None) or k == "properties"}
    parameters.setdefault("type", "object")
    parameters.setdefault("properties", {})
    return {"name": tool["name"], "description": tool.get("description", ""), "parameters": parameters}


_TYPE_EXAMPLES = {"string": "text", "integer": 2, "number": 2.5, "boolean": True, "array": [], "object": {}}


def example_arguments(schema: dict) -> dict:
    """Concrete example arguments for a tool schema: each required parameter's first ``examples``
    entry, else its ``default``, else its first ``enum`` value, else a value of its type."""
    props = schema["parameters"].get("properties", {})
    required = schema["parameters"].get("required", list(props))
    out = {}
    for name in required:
        p = props.get(name, {})
        if p.get("examples"):
            out[name] = p["examples"][0]
        elif "default" in p:
            out[name] = p["default"]
        elif p.get("enum"):
            out[name] = p["enum"][0]
        else:
            out[name] = _TYPE_EXAMPLES.get(p.get("type", "string"), "text")
    return out


def format_tool_call(name: str, arguments: dict) -> str:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``: the call syntax SmolLM2 is shown."""
    return TOOL_CALL_OPEN + json.dumps({"name": name, "arguments": arguments}) + TOOL_CALL_CLOSE


def tools_system_prompt(tools: list, examples: dict[str, dict] | None = None) -> str:
    """The tool section for the system prompt: every tool's JSON schema, the call syntax, and one
    concrete example call of the first tool (arguments from ``examples[name]`` or the schema).

    No placeholder names appear (SmolLM2 copies a generic ``TOOL_NAME`` literally).
    """
    schemas = [tool_schema(t) for t in tools]
    if not schemas:
        raise ValueError("tools_system_prompt needs at least one tool")
    first = schemas[0]
    args = (examples or {}).get(first["name"]) or example_arguments(first)
    lines = ["You can call these tools (JSON schemas):", "<tools>"]
    lines += [json.dumps(s) for s in schemas]
    lines += ["</tools>",
              "To call a tool, reply with a JSON object holding the tool's name and its arguments between "
              f"{TOOL_CALL_OPEN} and {TOOL_CALL_CLOSE}, and nothing else. For example:",
              format_tool_call(first["name"], args),
              "The tool's result comes back in <tool_response> tags; then answer the question."]
    return "\n".join(lines)


@dataclass
class ParsedToolCall:
    """One tool call read from a reply: ``error`` is set (and ``arguments`` empty) when it was malformed."""

    id: str
    name: str
    arguments: dict
    error: str | None = None
    raw: str = ""

    def to_openai(self) -> dict:
        """The call as an OpenAI chat message's ``tool_calls`` entry (arguments as a JSON string)."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments)}}


def parse_tool_calls(text: str) -> tuple[str, list[ParsedToolCall]]:
    """Split a reply into (text before the first call, the calls in ``<tool_call>{json}</tool_call>``).

    A missing closing tag is tolerated (generation stops at it). Never raises: a call whose JSON does
    not parse, is not an object, lacks a string ``name`` or has non-object ``arguments`` comes back
    with ``error`` saying so (the caller reports it to the model). ``"parameters"`` is read as
    ``"arguments"``; missing arguments are ``{}``.
    """
    content, _, rest = text.partition(TOOL_CALL_OPEN)
    if not _:
        return text.strip(), []
    calls, decoder = [], json.JSONDecoder()
    for chunk in (TOOL_CALL_OPEN + rest).split(TOOL_CALL_OPEN)[1:]:
        body = chunk.split(TOOL_CALL_CLOSE)[0].strip()
        call_id, name = f"call_{uuid.uuid4().hex[:12]}", None
        try:
            data, end = decoder.raw_decode(body)
            if not isinstance(data, dict):
                raise ValueError(f"the tool call is a JSON {type(data).__name__}, not an object")
            name = data.get("name")
            if not isinstance(name, str) or not name:
                raise ValueError('the tool call has no "name" string')
            arguments = data.get("arguments", data.get("parameters", {}))
            if isinstance(arguments, str):
                arguments = json.loads(arguments)
            if not isinstance(arguments, dict):
                raise ValueError(f'"arguments" must be a JSON object, got {type(arguments).__name__}')
            if body[end:].strip():
                raise ValueError(f"unexpected text after the JSON object: {body[end:].strip()[:60]!r}")
            calls.append(ParsedToolCall(call_id, name, arguments, raw=body))
        except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
            if not isinstance(name, str) or not name:  # a cut-off call may still name its tool
                found = re.match(r'\s*\{\s*"name"\s*:\s*"([^"]+)"', body)
                name = found.group(1) if found else None
            calls.append(ParsedToolCall(call_id, name if isinstance(name, str) and name else "unknown", {},
                                        error=f"Malformed tool call {body[:200]!r}: {exc}", raw=body))
    return content.strip(), calls


def tool_result_message(call: ParsedToolCall, content: str) -> dict:
    """The chat message carrying a tool's result (OpenAI format; ARENA's ``apply_tool_call_format``)."""
    return {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": content}


def render_tool_chat(messages: list[dict], tools: list | None = None,
                     examples: dict[str, dict] | None = None) -> list[dict]:
    """An OpenAI-format chat with tools turned into plain ``{"role", "content"}`` turns SmolLM2 reads.

    The tool section goes at the end of the system message (one is added if absent); an assistant
    message's ``tool_calls`` are written out as ``<tool_call>`` lines after its content; a ``tool``
    message becomes a ``TOOL_RESULT_ROLE`` turn ``<tool_response>{"name", "content"}</tool_response>``.
    """
    out = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = c["function"] if "function" in c else c
                args = fn["arguments"]
                calls.append(format_tool_call(fn["name"], json.loads(args) if isinstance(args, str) else args))
            content = "\n".join([content] * bool(content) + calls)
        elif role == "tool":
            role = TOOL_RESULT_ROLE
            content = "<tool_response>\n" + json.dumps({"name": m.get("name", ""), "content": content}) + \
                      "\n</tool_response>"
        out.append({"role": role, "content": content})
    if tools:
        section = tools_system_prompt(tools, examples)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"].rstrip() + "\n\n" + section}
        else:
            out.insert(0, {"role": "system", "content": section})
    return out


@dataclass
class AssistantReply:
    """A reply that may call tools: ``content`` and the parsed ``tool_calls`` (possibly malformed)."""

    content: str
    tool_calls: list[ParsedToolCall] = field(default_factory=list)
    raw: str = ""

    @property
    def message(self) -> dict:
        """The reply as an OpenAI-format assistant message, for the chat history."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        good = [c.to_openai() for c in self.tool_calls if c.error is None]
        if good:
            msg["tool_calls"] = good
        if any(c.error for c in self.tool_calls):  # the model sees what it wrote
            msg["content"] = self.raw
        return msg


def tool_turns_since_user(messages: list[dict]) -> int:
    """How many tool results follow the last user message (for forcing an answer after tool use)."""
    n = 0
    for m in reversed(messages):
        if m["role"] == "user":
            break
        n += m["role"] == "tool"
    return n


def generate_with_tools(model: str, messages: list[dict], tools: list, tool_choice: str = "auto",
                        temperature: float = 0.0, max_tokens: int = 128, prefill_tool_call: bool = True,
                        tool_examples: dict[str, dict] | None = None, verbose: bool = False,
                        answer_prefill: str = "", stop_sequences: list[str] | None = None) -> AssistantReply:
    """``generate_response`` with tools: the reply's text and its tool calls.

    ``messages`` is an OpenAI-format chat (assistant ``tool_calls``, ``tool`` results). On
    ``"smollm2"`` the tools are rendered into the system prompt (``render_tool_chat``); unless
    ``tool_choice == "none"`` the reply is prefilled with ``TOOL_CALL_PREFILL`` (when
    ``prefill_tool_call``; a tool name as ``tool_choice`` prefills that name too) and parsed with
    ``parse_tool_calls``; generation stops at ``</tool_call>``. ``tool_choice="none"`` forces a
    plain answer (ARENA's ``get_response(use_tool=False)``), continued from ``answer_prefill`` on
    SmolLM2 (e.g. ``"<answer>"``; the reply's content starts with it). OpenAI/Anthropic use their
    native tools (no prefill). ``stop_sequences`` end a plain answer (cut from it, as in
    ``generate_response``).
    """
    provider = _provider_of(model)
    if provider != "smollm2":
        return _api_call_with_tools(provider, _api_client(provider), model, messages, tools, tool_choice,
                                    temperature, max_tokens)
    chat = render_tool_chat(messages, tools, tool_examples)
    prefill = answer_prefill if tool_choice == "none" else ""
    if prefill:
        chat = chat + [{"role": "assistant", "content": prefill}]
    if tool_choice != "none" and prefill_tool_call:
        prefill = TOOL_CALL_PREFILL if tool_choice in ("auto", "any", "required") else \
            TOOL_CALL_OPEN + json.dumps({"name": tool_choice}).rstrip("}") + ', "arguments": '
        chat = chat + [{"role": "assistant", "content": prefill}]
    stops = [TOOL_CALL_CLOSE] if tool_choice != "none" else stop_sequences
    text = prefill + smollm2_generate([chat], max_tokens=max_tokens, temperature=temperature,
                                      stop_sequences=stops)[0]
    if verbose:
        print(f"assistant: {text}")
    if tool_choice == "none":
        return AssistantReply(text.strip(), [], raw=text)
    content, calls = parse_tool_calls(text)
    return AssistantReply(content, calls, raw=text)


def _api_call_with_tools(provider, client, model, messages, tools, tool_choice, temperature,
                         max_tokens) -> AssistantReply:
    """OpenAI/Anthropic native tool calling (needs a key; untested here beyond the missing-key error)."""
    schemas = [tool_schema(t) for t in tools]
    if provider == "openai":
        kwargs: dict[str, Any] = {}
        if tool_choice != "none":
            kwargs = dict(tools=[{"type": "function", "function": s} for s in schemas],
                          tool_choice=tool_choice if tool_choice in ("auto", "required") else
                          {"type": "function", "function": {"name": tool_choice}})
        call = retry_with_exponential_backoff(client.chat.completions.create)
        msg = call(model=model, messages=messages, temperature=temperature, max_tokens=max_tokens,
                   **kwargs).choices[0].message
        calls = []
        for c in msg.tool_calls or []:
            try:
                arguments = json.loads(c.function.arguments or "{}")
                calls.append(ParsedToolCall(c.id, c.function.name, arguments))
            except ValueError as exc:
                calls.append(ParsedToolCall(c.id, c.function.name, {}, error=f"Malformed arguments: {exc}"))
        return AssistantReply(msg.content or "", calls, raw=msg.content or "")
    raise NotImplementedError("generate_with_tools: Anthropic tool calling is not wired here; use inspect's "
                              "anthropic/ provider (the same tasks run on it unchanged)")



# ---------------------------------------------------------------------------------------------
# Inspect provider for the local SmolLM2
# ---------------------------------------------------------------------------------------------

def smollm2_next_token_logprobs(conversations: list[list[dict]], k: int) -> list[list[tuple[str, float]]]:
    """Top-k (token text, log-probability) of the next token after each rendered conversation."""
    import torch
    from checks.timing import single_thread

    model, tok = _load_smollm2()
    batch = left_padded_batch(tok, conversations)
    # Left padding: positions count real tokens only (as generate does), so a padded prompt sees the
    # same rotary positions as the unpadded one.
    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with single_thread(), torch.no_grad():
        logits = model(**batch, position_ids=position_ids).logits[:, -1, :]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    values, ids = logprobs.topk(k, dim=-1)
    return [[(tok.decode([i]), float(v)) for v, i in zip(row_v.tolist(), row_i.tolist())]
            for row_v, row_i in zip(values, ids)]


def _inspect_chat(input) -> list[dict]:
    """Inspect chat messages as OpenAI-format dicts (assistant tool calls, tool results with names)."""
    out = []
    for m in input:
        msg: dict[str, Any] = {"role": m.role, "content": m.text}
        if m.role == "assistant" and m.tool_calls:
            good = [c for c in m.tool_calls if not c.parse_error]
            msg["tool_calls"] = [{"id": c.id, "function": {"name": c.function, "arguments": c.arguments}}
                                 for c in good]
        elif m.role == "tool":
            msg["name"] = m.function or ""
            if m.error is not None:
                msg["content"] = f"Error: {m.error.message}"
        out.append(msg)
    return out


def _inspect_tool_call(call: ParsedToolCall, tools):
    """Our parsed call as an inspect ``ToolCall`` (via inspect's ``parse_tool_call``, which maps the
    arguments onto the tool's schema); a malformed call keeps its error in ``parse_error``."""
    from inspect_ai.model._call_tools import parse_tool_call
    from inspect_ai.tool import ToolCall

    if call.error:
        return ToolCall(id=call.id, function=call.name, arguments={}, parse_error=call.error)
    return parse_tool_call(call.id, call.name, json.dumps(call.arguments), tools)


def tool_reply_message(text: str, tools, model: str | None = None):
    """An inspect ``ChatMessageAssistant`` from a reply text (prefill included) that may call tools.

    The calls parsed by ``parse_tool_calls`` become inspect ``ToolCall``s; a malformed one keeps
    ``parse_error`` (inspect's tool loop answers it with a parsing error and the eval goes on) and the
    message content is then the raw text, so the model sees what it wrote. No call: a plain message.
    """
    from inspect_ai.model import ChatMessageAssistant

    content, calls = parse_tool_calls(text)
    if not calls:
        return ChatMessageAssistant(content=text.strip(), model=model, source="generate")
    return ChatMessageAssistant(content=text if any(c.error for c in calls) else content,
                                tool_calls=[_inspect_tool_call(c, tools) for c in calls], model=model,
                                source="generate")


class RequestBatcher:
    """Concurrent requests with the same key, arriving within ``wait`` seconds of each other, run as one
    call ``run(key, payloads) -> results`` (at most ``max_batch`` at a time) in a worker thread.

    The providers of days 071 and 081 share it: each request awaits its own result, an exception in the
    batch reaches every request in it, and a fresh event loop (each ``eval()`` runs its own) starts a
    fresh queue. ``sizes`` records the batches run (for tests).
    """

    def __init__(self, run: Callable[[Any, list], list], max_batch: int = 16, wait: float = 0.02):
        self.run, self.max_batch, self.wait = run, max_batch, wait
        self.sizes: list[int] = []
        self._loop = None

    async def submit(self, key, payload):
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._lock, self._queue = loop, asyncio.Lock(), []
        future = loop.create_future()
        self._queue.append((key, payload, future))
        await asyncio.sleep(self.wait)
        async with self._lock:
            if not future.done():
                await self._run_batch(key)
        return await future

    async def _run_batch(self, key) -> None:
        mine = [item for item in self._queue if item[0] == key][: self.max_batch]
        for item in mine:
            self._queue.remove(item)
        self.sizes.append(len(mine))
        try:
            results = await asyncio.to_thread(self.run, key, [payload for _, payload, _ in mine])
        except Exception as exc:  # noqa: BLE001 - delivered to every waiter
            for _, _, fut in mine:
                fut.set_exception(exc)
            return
        for (_, _, fut), result in zip(mine, results):
            fut.set_result(result)


def top_logprobs_object(top: list[tuple[str, float]]):
    """Inspect's ``Logprobs`` for one generated token: the first of ``top`` chosen, all of ``top`` listed."""
    from inspect_ai.model import Logprob, Logprobs, TopLogprob

    return Logprobs(content=[Logprob(token=top[0][0], logprob=top[0][1],
                                     top_logprobs=[TopLogprob(token=t, logprob=v) for t, v in top])])


def _register_provider():
    from inspect_ai.model import (ChatCompletionChoice, ChatMessageAssistant, GenerateConfig, ModelAPI, ModelOutput, ModelUsage, modelapi)
    from inspect_ai.tool import ToolFunction

    class SmolLM2API(ModelAPI):
        """Inspect ModelAPI for the in-process SmolLM2: concurrent requests are batched greedily.

        Requests that arrive within ``batch_wait`` seconds of each other (and share max_tokens, the
        logprob settings and the stop strings) run as one left-padded batch, off the event loop.
        With ``config.logprobs`` and ``max_tokens == 1`` it returns the next token's top-k log-probs.
        Usage is counted in tokens, so inspect never reaches for a tokenizer download.

        Tools (model args ``prefill_tool_call=True``, ``force_answer_after=1``, ``tool_examples``):
        the tools are rendered into the system prompt with one concrete example
        (``render_tool_chat``), the reply is prefilled with ``TOOL_CALL_PREFILL`` and parsed into
        inspect ``ToolCall``s (a malformed call carries ``parse_error``, which inspect reports to
        the model; the eval goes on). Tool results reach the model as ``<tool_response>`` turns.
        ``tool_choice="none"``, or ``force_answer_after`` tool results since the last user
        message, forces a plain answer (no prefill, no parsing): inspect's ``generate()`` loop then
        ends. ``force_answer_after=None`` never forces.
        """

        def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                     config: GenerateConfig = GenerateConfig(), max_batch: int = 16, batch_wait: float = 0.02,
                     prefill_tool_call: bool = True, force_answer_after: int | None = 1,
                     tool_examples: dict[str, dict] | None = None, **model_args):
            super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, config=config)
            self.max_batch = max_batch
            self.prefill_tool_call, self.force_answer_after = prefill_tool_call, force_answer_after
            self.tool_examples = tool_examples or {}
            self.batcher = RequestBatcher(self._run_batch, max_batch, batch_wait)
            self.batches = self.batcher.sizes  # sizes of the batches run (for tests)

        def max_connections(self) -> int:
            return self.max_batch

        async def generate(self, input, tools, tool_choice, config):
            messages = _inspect_chat(input)
            prefill, parse = "", False
            if tools:
                forced = (tool_choice == "none" or self.force_answer_after is not None
                          and tool_turns_since_user(messages) >= self.force_answer_after)
                messages = render_tool_chat(messages, tools, self.tool_examples)
                if not forced and messages[-1]["role"] != "assistant":
                    parse = True
                    if self.prefill_tool_call:
                        prefill = TOOL_CALL_PREFILL if not isinstance(tool_choice, ToolFunction) else \
                            TOOL_CALL_OPEN + json.dumps({"name": tool_choice.name}).rstrip("}") + ', "arguments": '
                        messages = messages + [{"role": "assistant", "content": prefill}]
            else:
                messages = render_tool_chat(messages)
            max_tokens = config.max_tokens or 64
            want_lp = bool(config.logprobs) and max_tokens == 1
            stops = tuple(config.stop_seqs or ()) + ((TOOL_CALL_CLOSE,) if parse else ())
            key = (max_tokens, want_lp, config.top_logprobs or 20, config.temperature or 0.0, stops)
            text, logprobs = await self.batcher.submit(key, messages)
            n_in = sum(len(m["content"]) for m in messages) // 4 + 1
            if parse:
                message = tool_reply_message(prefill + text, tools, self.model_name)
            else:
                message = ChatMessageAssistant(content=text, model=self.model_name)
            stop_reason = "tool_calls" if message.tool_calls else "max_tokens"
            return ModelOutput(model=self.model_name,
                               choices=[ChatCompletionChoice(message=message, stop_reason=stop_reason,
                                                             logprobs=logprobs)],
                               usage=ModelUsage(input_tokens=n_in, output_tokens=max_tokens,
                                                total_tokens=n_in + max_tokens))

        @staticmethod
        def _run_batch(key, convs: list[list[dict]]) -> list[tuple]:
            """One batch (in a worker thread): the next token's top log-probs, or greedy replies."""
            max_tokens, want_lp, k, temperature, stops = key
            if want_lp:
                return [(top[0][0], top_logprobs_object(top)) for top in smollm2_next_token_logprobs(convs, k)]
            texts = smollm2_generate(convs, max_tokens=max_tokens, temperature=temperature,
                                     stop_sequences=list(stops))
            return [(t, None) for t in texts]

    @modelapi(name="smollm2")
    def smollm2_provider():
        return SmolLM2API

    return SmolLM2API


SmolLM2API = _register_provider()


# ---------------------------------------------------------------------------------------------
# Log-probability multiple choice
# ---------------------------------------------------------------------------------------------

def letter_logprobs(top_logprobs: list[tuple[str, float]], letters: list[str]) -> dict[str, float]:
    """log p(letter) = logsumexp over the top tokens that strip to that letter (" B", "B"); -inf if absent."""
    out = {}
    for letter in letters:
        vals = [lp for token, lp in top_logprobs if token.strip() == letter]
        if vals:
            m = max(vals)
            out[letter] = m + math.log(sum(math.exp(v - m) for v in vals))
        else:
            out[letter] = -math.inf
    return out


def _define_solver():
    from inspect_ai.model import ChatMessageAssistant, GenerateConfig, get_model
    from inspect_ai.solver import solver
    from inspect_ai.solver._multiple_choice import SINGLE_ANSWER_TEMPLATE, prompt as mc_prompt
    from inspect_ai.util import resource

    @solver
    def logprob_multiple_choice(template: str | None = None, prefill: str = "ANSWER:", top_logprobs: int = 20):
        """Answer a multiple-choice sample by the most probable option letter after ``prefill``.

        The question is rendered with inspect's single-answer template (as ``multiple_choice()``
        does); the model is asked for one token with its top log-probs, with the assistant reply
        prefilled by ``prefill``; the answer is $\\arg\\max_L \\log p(L \\mid \\text{prompt})$ over the
        option letters. ``state.choices`` is marked and the completion set to ``ANSWER: L`` so
        inspect's ``choice()`` scorer scores it. No letter in the top-k: no choice marked (wrong).
        """
        tmpl = resource(template) if template else SINGLE_ANSWER_TEMPLATE

        async def solve(state, generate):
            if not state.choices:
                raise ValueError("logprob_multiple_choice requires samples with choices")
            letters = [chr(ord("A") + i) for i in range(len(state.choices))]
            state.user_prompt.text = mc_prompt(question=state.user_prompt.text, choices=state.choices,
                                               template=str(tmpl))
            model = get_model()
            output = await model.generate(state.messages + [ChatMessageAssistant(content=prefill)],
                                          config=GenerateConfig(max_tokens=1, logprobs=True,
                                                                top_logprobs=top_logprobs))
            lp = output.choices[0].logprobs
            top = [(t.token, t.logprob) for t in lp.content[0].top_logprobs] if lp and lp.content else []
            scores = letter_logprobs(top, letters)
            best = max(letters, key=lambda L: scores[L])
            answered = scores[best] > -math.inf
            for i, letter in enumerate(letters):
                state.choices.mark_choice(i, answered and letter == best)
            completion = f"ANSWER: {best}" if answered else "ANSWER: ?"
            output.choices[0].message = ChatMessageAssistant(content=completion, model=output.model)
            output.completion = completion
            state.output = output
            state.messages.append(output.choices[0].message)
            state.metadata["letter_logprobs"] = scores
            return state

        return solve

    return logprob_multiple_choice


logprob_multiple_choice = _define_solver()
