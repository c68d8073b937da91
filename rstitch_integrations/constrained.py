"""What an answer must look like: the grammar, forced opening and stop strings of a tools or JSON call.

Framework-free (no LangChain or LlamaIndex import); both adapters build one ``AnswerShape`` per call
from OpenAI-style tool schemas, a tool choice and a response format.

Constrained (the default), the engine masks every step to what the grammar allows
(``rstitch_engine.Grammar``), so a call to a bound tool is always well-formed JSON valid against the
tool's parameters, and a JSON answer always matches its schema:

* tools, ``tool_choice`` None/'auto': free text in which each ``<tool_call>`` block, once the model
  opens one, must be ``{"name": <a bound tool>, "arguments": <valid arguments>}``;
* 'any'/'required': exactly one call to a bound tool (with ``parallel_calls``: one to as many calls as
  there are bound tools, a bound that keeps a small model from repeating its calls until the token
  budget runs out); a tool name: exactly one call to that tool;
* ``response_format`` json_schema / json_object: one JSON value of the schema / one JSON object;
  ``{"type": "regex", "pattern": ...}``: text fully matching the regex (Rust regex syntax).
* tools and a JSON ``response_format`` together, ``tool_choice`` None/'auto': either one
  ``<tool_call>`` block or the final answer in the format (an agent's turn: call, or finish); a
  forced choice is a call (the format applies to a later turn); 'none': the answer in the format.
  A regex format cannot be combined with tools (``InvalidSettingError``).

``tool_policy`` (``policy_tool_choice``) turns an automatic choice into a forced one for models too
small to choose: 'until_result' requires a call until a tool result follows the latest user
message, then asks for the answer (``ANSWER``: tools off, the answer cut where it would open a call).

What the grammar forces anyway (the opening of a forced call, up to its name or arguments) is put in
the model's mouth as ``prefix`` (prompt tokens cost one batched prefill instead of one step each);
the grammar starts right after it. Objects are closed (``additionalProperties: false``) wherever a
schema does not say, as OpenAI's strict mode does: a small model cannot wander into extra keys.

Unconstrained (``constrained=False``), only the forced opening is written; what the model writes
after it is parsed as it comes, and a malformed call becomes an invalid tool call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rstitch_engine import Grammar, InvalidSettingError
from rstitch_engine.decoding.constraints import lark_json

from .prompt import content_text
from .tool_calls import (
    BLOCK_CLOSE,
    BLOCK_OPEN,
    END_OF_CALL,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    call_schema,
    opening_before_arguments,
    opening_before_name,
    rest_of_name,
    tool_call_prefix,
)


ToolPolicy = Literal["auto", "until_result"]
"""How an automatic tool choice ('auto'/None) is resolved: 'auto': the model decides each turn;
'until_result': a call is required until a tool result follows the latest user message, then the
model answers (in text, or in the response format) and calls no tool again, so it cannot repeat a call."""

ANSWER = "answer"
"""The tool choice 'until_result' turns into once a tool result is in: the final answer, no tools."""


@dataclass(frozen=True)
class AnswerShape:
    """How one call's answer is constrained. ``AnswerShape()`` is free text."""

    grammar: Grammar | None = None
    """What the decoded tokens (after ``prefix``) must match; None: free text."""
    prefix: str = ""
    """Answer text written for the model after the prompt; parsed as part of the answer, not counted as output."""
    stop: tuple[str, ...] = ()
    """Stop strings this shape adds (a forced call ends at its closing tag)."""
    forced_call: bool = False
    """The answer is exactly one tool call (its closing tag is the stop string, cut from the text)."""
    json_answer: Mapping[str, Any] | None = None
    """The response format asked for (``{"type": "json_object"}`` or ``{"type": "json_schema", "schema": ...}``)."""


def tool_choice_name(tool_choice: Any) -> str | None:
    """LangChain's, LlamaIndex's and OpenAI's tool_choice forms as one string: None (auto), 'none', 'any', or a name."""
    if tool_choice is None or tool_choice is False:
        return None if tool_choice is None else "none"
    if tool_choice is True or tool_choice in ("required", "any"):
        return "any"
    if tool_choice == "auto":
        return None
    if isinstance(tool_choice, str):
        return tool_choice
    if isinstance(tool_choice, Mapping) and isinstance(tool_choice.get("function"), Mapping):
        return tool_choice["function"].get("name")
    if isinstance(tool_choice, Mapping) and isinstance(tool_choice.get("name"), str):
        return tool_choice["name"]
    raise InvalidSettingError(
        f"tool_choice must be None, 'auto', 'none', 'any', 'required', True or a tool name, got {tool_choice!r}"
    )


def policy_tool_choice(
    tool_choice: str | None, policy: ToolPolicy, messages: Sequence[Mapping[str, Any]], has_tools: bool
) -> str | None:
    """The tool choice ``policy`` makes of ``tool_choice`` (as ``tool_choice_name`` returns it) for a
    conversation of OpenAI-style ``messages``: an explicit choice, or no tools, stay as they are."""
    if policy not in ("auto", "until_result"):
        raise InvalidSettingError(f"tool_policy must be 'auto' or 'until_result', got {policy!r}")
    if policy == "auto" or tool_choice is not None or not has_tools:
        return tool_choice
    return ANSWER if has_tool_result(messages) else "any"


def has_tool_result(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a tool result (a 'tool' message) follows the latest user message."""
    for message in reversed(messages):
        if message.get("role") == "tool":
            return True
        if message.get("role") == "user":
            return False
    return False


def check_tool_choice(tools: Sequence[Mapping[str, Any]], tool_choice: str | None) -> None:
    """Raise ``InvalidSettingError`` when ``tool_choice`` (as ``tool_choice_name`` returns it) names no bound tool."""
    names = [tool["function"]["name"] for tool in tools]
    if tool_choice not in (None, "none", "any") and tool_choice not in names:
        raise InvalidSettingError(f"tool_choice {tool_choice!r} names no bound tool; the tools are {names}")


def answer_shape(
    tools: Sequence[Mapping[str, Any]],
    tool_choice: str | None,
    response_format: Mapping[str, Any] | None,
    constrained: bool,
    parallel_calls: bool = False,
) -> AnswerShape:
    """The shape of one call's answer. ``tools``: normalised OpenAI-style schemas; ``tool_choice`` as
    ``tool_choice_name`` returns it. Raises ``InvalidSettingError`` for a tool choice naming no bound
    tool and for a schema the grammar engine cannot compile."""
    check_tool_choice(tools, tool_choice)
    if tools and tool_choice is None and response_format:
        shape = _tool_or_json_shape(tools, response_format, constrained)
    elif tools and tool_choice != "none":
        shape = _tool_shape(tools, tool_choice, constrained, parallel_calls)
    elif response_format:
        shape = _json_shape(response_format, constrained)
    else:
        return AnswerShape()
    if shape.grammar is not None:
        shape.grammar.check()  # a schema llguidance cannot use fails here, before any forward pass
    return shape


# ---------------------------------------------------------------------- tool calls


def _tool_shape(
    tools: Sequence[Mapping[str, Any]], tool_choice: str | None, constrained: bool, parallel_calls: bool
) -> AnswerShape:
    by_name = {tool["function"]["name"]: strict_schema(tool["function"]["parameters"]) for tool in tools}
    if tool_choice is None:  # the model decides; blocks it opens must be valid calls
        if not constrained:
            return AnswerShape()
        grammar = Grammar.tagged_json(BLOCK_OPEN, call_schema(by_name), BLOCK_CLOSE, required=False,
                                      trigger=TOOL_CALL_OPEN)
        return AnswerShape(grammar=grammar)
    forced = tool_choice if tool_choice in by_name else (next(iter(by_name)) if len(by_name) == 1 else None)
    close = (TOOL_CALL_CLOSE,)
    if not constrained:
        return AnswerShape(prefix=tool_call_prefix(forced), stop=close, forced_call=True)
    if forced is not None:  # the prefix ends at '"arguments":'; the grammar writes ' {...}}' and the close
        grammar = Grammar.lark(f'start: " " arguments {json.dumps(END_OF_CALL)}\narguments: {lark_json(by_name[forced])}\n')
        return AnswerShape(grammar, opening_before_arguments(forced), close, True)
    # the prefix ends at '"name": "'; the grammar picks a tool and writes its arguments (and, in
    # parallel, the blocks of further calls: then the text holds every closing tag and nothing stops it early)
    opening = opening_before_name()
    start = f"start: block (\"\\n\" {json.dumps(opening)} block){{0,{len(by_name) - 1}}}" if parallel_calls else "start: block"
    rules = [start, f"block: call {json.dumps(END_OF_CALL)}",
             "call: " + " | ".join(f"call_{i}" for i in range(len(by_name)))]
    for i, (name, parameters) in enumerate(by_name.items()):
        rules.append(f"call_{i}: {json.dumps(rest_of_name(name))} arguments_{i}")
        rules.append(f"arguments_{i}: {lark_json(parameters)}")
    grammar = Grammar.lark("\n".join(rules) + "\n")
    if parallel_calls:
        return AnswerShape(grammar, opening)
    return AnswerShape(grammar, opening, close, True)


def _tool_or_json_shape(
    tools: Sequence[Mapping[str, Any]], response_format: Mapping[str, Any], constrained: bool
) -> AnswerShape:
    """One ``<tool_call>`` block, or the final answer in the response format (an agent turn that may finish)."""
    if response_format.get("type") == "regex":
        raise InvalidSettingError(
            "a regex response_format cannot be combined with tools; give a JSON schema, or tool_choice='none'"
        )
    schema = json_schema_of(response_format)
    if not constrained:  # parsed after: a call if the model writes one, else the content is the JSON answer
        return AnswerShape(json_answer=response_format)
    by_name = {tool["function"]["name"]: strict_schema(tool["function"]["parameters"]) for tool in tools}
    answer = {"type": "object"} if schema is None else strict_schema(schema)
    grammar = Grammar.lark(
        f"start: call_block | answer\n"
        f"call_block: {json.dumps(BLOCK_OPEN)} call {json.dumps(BLOCK_CLOSE)}\n"
        f"call: {lark_json(call_schema(by_name))}\n"
        f"answer: {lark_json(answer)}\n"
    )
    return AnswerShape(grammar=grammar, json_answer=response_format)


# ---------------------------------------------------------------------- JSON answers


def _json_shape(response_format: Mapping[str, Any], constrained: bool) -> AnswerShape:
    if response_format.get("type") == "regex":
        pattern = response_format.get("pattern")
        if not isinstance(pattern, str):
            raise InvalidSettingError(f"a regex response_format needs a 'pattern' string, got {dict(response_format)!r}")
        return AnswerShape(grammar=Grammar.regex(pattern) if constrained else None)
    schema = json_schema_of(response_format)
    if not constrained:
        return AnswerShape(prefix="{", json_answer=response_format)
    grammar = Grammar.json_object() if schema is None else Grammar.json_schema(strict_schema(schema))
    return AnswerShape(grammar=grammar, json_answer=response_format)


def json_schema_of(response_format: Mapping[str, Any]) -> dict[str, Any] | None:
    """The schema of a response format (None for JSON mode): ``{"type": "json_schema", "schema": ...}``,
    OpenAI's ``{"type": "json_schema", "json_schema": {"schema": ...}}``, or ``{"type": "json_object"}``."""
    kind = response_format.get("type")
    if kind == "json_object":
        return None
    if kind == "json_schema":
        schema = response_format.get("schema", (response_format.get("json_schema") or {}).get("schema"))
        if isinstance(schema, Mapping):
            return dict(schema)
    raise InvalidSettingError(
        "response_format must be {'type': 'json_object'}, {'type': 'json_schema', 'schema': {...}} "
        f"or {{'type': 'regex', 'pattern': ...}}, got {dict(response_format)!r}"
    )


def strict_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with every object that lists properties closed (``additionalProperties: false``) unless it says."""
    return _closed(schema)


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
"""Keywords whose value maps names to subschemas."""
_DATA_KEYWORDS = ("const", "enum", "default", "examples")
"""Keywords whose value is data, not a schema."""


def _closed(node: Any) -> Any:
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, Mapping):
            out[key] = {name: _closed(sub) for name, sub in value.items()}
        else:
            out[key] = value if key in _DATA_KEYWORDS else _closed(value)
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def with_json_instruction(messages: list[dict[str, Any]], response_format: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Template messages asking for a JSON answer (matching the schema, when there is one) in the system message."""
    schema = json_schema_of(response_format)
    text = "Answer with a single JSON object and nothing else."
    if schema is not None:
        text = f"Answer with a single JSON object that matches this JSON schema, and nothing else:\n{json.dumps(schema)}"
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}".strip()}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


# ---------------------------------------------------------------------- the ReAct text protocol

REACT_TOOL = re.compile(r"^> Tool Name: (?P<name>[^\n]+)\nTool Description: .*?\nTool Args: (?P<args>\{[^\n]*\})\n",
                        re.MULTILINE | re.DOTALL)
"""A tool as a ReAct system prompt lists it (LlamaIndex's ``ReActAgent`` formatter)."""
REACT_ACT = "Thought: I need to use a tool to help me answer the question.\nAction: "
"""The opening of a ReAct step that calls a tool (put in the model's mouth; it picks the tool and input)."""
REACT_ANSWER = "Thought: I can answer without using any more tools.\nAnswer: "
"""The opening of a ReAct step that answers."""


def react_shape(messages: Sequence[Mapping[str, Any]], constrained: bool) -> AnswerShape | None:
    """The shape of a ReAct step under ``tool_policy='until_result'``, or None when ``messages`` are not
    a ReAct conversation (no system message listing tools in the ReAct format).

    ReAct agents bind no tools: they list them in the system prompt and parse the reply's text
    (``Thought:`` / ``Action:`` / ``Action Input:``; ``Observation:`` comes back as a message). Until
    an observation is the latest message, the step is an action (a listed tool and JSON input
    valid against its schema, under a grammar when ``constrained``); after one, an answer.
    """
    system = next((m for m in messages if m.get("role") == "system"), None)
    tools = {}
    for found in REACT_TOOL.finditer(content_text(system.get("content"))) if system else ():
        try:
            tools[found["name"].strip()] = json.loads(found["args"])
        except json.JSONDecodeError:
            continue  # a tool whose schema is not JSON cannot be constrained: not offered
    if not tools:
        return None
    last = content_text(messages[-1].get("content")) if messages else ""
    if last.startswith("Observation:"):
        return AnswerShape(prefix=REACT_ANSWER)
    if not constrained:
        return AnswerShape(prefix=REACT_ACT)
    rules = ["start: " + " | ".join(f"action_{i}" for i in range(len(tools)))]
    for i, (name, schema) in enumerate(tools.items()):
        chosen = json.dumps(f"{name}\nAction Input: ")  # the rest of the Action line, then the input's key
        rules.append(f"action_{i}: {chosen} input_{i}")
        rules.append(f"input_{i}: {lark_json(strict_schema(schema))}")
    grammar = Grammar.lark("\n".join(rules) + "\n")
    grammar.check()
    return AnswerShape(grammar=grammar, prefix=REACT_ACT)
