"""The ``<tool_call>`` wire format: the one module that knows how a tool call is written in model text.

Framework-free. A call is a block ``<tool_call>\n{"name": <tool>, "arguments": {...}}\n</tool_call>``
(the Hermes/Qwen format, which templates without tool support are asked to answer in). Everything
that writes, forces or parses that text goes through here: showing earlier calls to the model
(``format_tool_call``), describing the format in a system message (``FORMAT_EXAMPLE``), the
openings put in the model's mouth and the grammar pieces of a constrained call (``opening_*``,
``rest_of_name``, ``END_OF_CALL``, ``BLOCK_OPEN``/``BLOCK_CLOSE``, ``call_schema``), and reading a
block back (``parse_tool_call``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
"""Opens a tool call (a JSON object ``{"name": ..., "arguments": {...}}``) in model text."""
TOOL_CALL_CLOSE = "</tool_call>"
"""Closes a tool call in model text."""
BLOCK_OPEN = f"{TOOL_CALL_OPEN}\n"
"""What a call block starts with (the JSON payload follows)."""
BLOCK_CLOSE = f"\n{TOOL_CALL_CLOSE}"
"""What a call block ends with, after the JSON payload."""
END_OF_CALL = "}" + BLOCK_CLOSE
"""What follows a call's arguments: the payload's closing brace and the block's end."""
FORMAT_EXAMPLE = f'{BLOCK_OPEN}{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}{BLOCK_CLOSE}'
"""The format as a system message describes it."""


@dataclass(frozen=True)
class ToolCall:
    """A well-formed tool call parsed from model text."""

    id: str
    """Call id (generated; models in this format do not write ids)."""
    name: str
    """Name of the tool to call."""
    arguments: dict[str, Any]
    """Arguments as a JSON object."""


@dataclass(frozen=True)
class InvalidToolCall:
    """A ``<tool_call>`` block that could not be turned into a call: kept, with the reason."""

    id: str
    """Call id (generated)."""
    name: str | None
    """Tool name when it could be read from the block, else None."""
    raw: str
    """The block's text exactly as the model wrote it (between the tags)."""
    error: str
    """Why the block is not a valid call."""
    closed: bool = True
    """False when the text ended inside the block (no closing tag)."""

    @property
    def text(self) -> str:
        """The whole block as the model wrote it, tags included."""
        return f"{TOOL_CALL_OPEN}{self.raw}{TOOL_CALL_CLOSE if self.closed else ''}"


ParsedCall = ToolCall | InvalidToolCall
"""What one ``<tool_call>`` block parses to."""


# ----------------------------------------------------------------------------- writing calls


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """One whole call block (how earlier calls are shown to the model)."""
    payload = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
    return f"{BLOCK_OPEN}{payload}{BLOCK_CLOSE}"


def opening_before_name() -> str:
    """A call's opening up to the tool name's first character (the model names the tool)."""
    return f'{BLOCK_OPEN}{{"name": "'


def rest_of_name(name: str) -> str:
    """What follows ``opening_before_name()`` for a call to ``name``, up to its arguments' value."""
    return json.dumps(name)[1:] + ', "arguments": '


def opening_before_arguments(name: str) -> str:
    """A call to ``name`` up to the arguments' value (``... "arguments":``; a grammar writes the value)."""
    return f'{BLOCK_OPEN}{{"name": {json.dumps(name)}, "arguments":'


def tool_call_prefix(tool_name: str | None = None) -> str:
    """The opening of a call free generation continues (to ``tool_name``, through the arguments' opening
    brace; or to a tool the model names)."""
    if tool_name is None:
        return opening_before_name()
    return opening_before_arguments(tool_name) + " {"


def call_schema(parameters_by_name: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """JSON schema of one call payload ``{"name": ..., "arguments": ...}`` to any of the tools (name first)."""
    calls = [
        {"type": "object", "properties": {"name": {"const": name}, "arguments": parameters},
         "required": ["name", "arguments"], "additionalProperties": False}
        for name, parameters in parameters_by_name.items()
    ]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


# ----------------------------------------------------------------------------- reading calls


def new_call_id() -> str:
    """A fresh tool-call id, ``call_`` + 24 hex digits."""
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_tool_call(raw: str, call_id: str, tool_names: frozenset[str] | None = None) -> ParsedCall:
    """One block's text (``{"name": ..., "arguments": {...}}``) as a call, or an invalid call saying why."""

    def invalid(error: str) -> InvalidToolCall:
        return InvalidToolCall(call_id, _name_in(raw), raw, error)

    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as error:
        return invalid(f"not valid JSON: {error}")
    if not isinstance(payload, dict):
        return invalid("a tool call must be a JSON object with 'name' and 'arguments'")
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        return invalid("the tool call has no 'name' string")
    arguments = payload.get("arguments", payload.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as error:
            return invalid(f"'arguments' is a string that is not JSON: {error}")
    if not isinstance(arguments, dict):
        return invalid("'arguments' must be a JSON object")
    if tool_names is not None and name not in tool_names:
        return invalid(f"unknown tool {name!r}; the bound tools are {sorted(tool_names)}")
    return ToolCall(call_id, name, arguments)


def _name_in(raw: str) -> str | None:
    found = re.search(r'"name"\s*:\s*"([^"\\]+)"', raw)
    return found.group(1) if found else None



def call_key(name: str, arguments: Mapping[str, Any]) -> str:
    """A call's identity for spotting repeats: its name and arguments, key order ignored."""
    return json.dumps([name, arguments], sort_keys=True, ensure_ascii=False)


def unless_repeated(call: ParsedCall, earlier: frozenset[str]) -> ParsedCall:
    """``call``, or an invalid call when it repeats one of the ``earlier`` calls (``call_key``) with the
    same arguments: its result is already in the conversation, and an agent loop that runs it again
    would run until its step limit (a small model copies its last call)."""
    if isinstance(call, ToolCall) and call_key(call.name, call.arguments) in earlier:
        raw = format_tool_call(call.name, call.arguments)[len(TOOL_CALL_OPEN):-len(TOOL_CALL_CLOSE)]
        return InvalidToolCall(call.id, call.name, raw, f"repeats the call {call.name}({json.dumps(call.arguments)}) "
                               "whose result is already in the conversation")
    return call


def unclosed_call(raw: str, call_id: str) -> InvalidToolCall:
    """A block the text ended inside (no closing tag), as an invalid call."""
    return InvalidToolCall(call_id, _name_in(raw), raw, f"the text ended before {TOOL_CALL_CLOSE}", closed=False)
