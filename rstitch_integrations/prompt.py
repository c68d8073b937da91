"""Chat messages and tools in, chat-template input out: the prompt half of every adapter.

Framework-free (no LangChain or LlamaIndex import); both adapters share this module.

OpenAI-style chat messages (``{"role", "content", "tool_calls", "tool_call_id", "name"}``) and
OpenAI-style tool schemas (``{"type": "function", "function": {"name", "description",
"parameters"}}``) become the message dicts a Hugging Face chat template renders
(``to_template_prompt``). A template that renders tools itself gets them as ``tools``; for one that
does not (SmolLM2's), the schemas go into the system message, earlier tool calls into the
assistant's text in the ``<tool_call>`` format the model is asked to answer in (``tool_calls``),
and tool results into a user message saying what each tool returned (such a template has no tool
role the model was trained on; a 135M model answers from "The tool multiply returned: 42." but
not from a bare ``tool`` turn).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .tool_calls import FORMAT_EXAMPLE, TOOL_CALL_CLOSE, TOOL_CALL_OPEN, format_tool_call


@dataclass(frozen=True)
class TemplatePrompt:
    """Arguments for ``tokenizer.apply_chat_template`` (or ``StitchEngine.encode``)."""

    messages: list[dict[str, Any]]
    """Message dicts with string content, ready for the template."""
    tools: list[dict[str, Any]] | None
    """Tool schemas to pass to the template; None when they were written into the system message."""


@dataclass(frozen=True)
class TemplateSupport:
    """What a chat template renders by itself."""

    tools: bool
    """It renders a ``tools`` argument."""
    tool_calls: bool
    """It renders assistant messages' ``tool_calls``."""

    @classmethod
    def of(cls, chat_template: str | None) -> TemplateSupport:
        """Inspect a Jinja chat template's source (None: no template, nothing supported)."""
        source = chat_template or ""
        return cls(tools=re.search(r"\btools\b", source) is not None, tool_calls="tool_calls" in source)


ToolChoice = str | None
"""None/'auto': the model decides; 'none': no tools; 'required'/'any': some tool; else a tool name."""


# ----------------------------------------------------------------------------- messages in


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def to_template_prompt(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    support: TemplateSupport = TemplateSupport(tools=False, tool_calls=False),
    tool_choice: ToolChoice = None,
) -> TemplatePrompt:
    """OpenAI-style messages and tool schemas as chat-template input for a template with ``support``.

    Messages may come in any order a conversation produces. Raises ``ValueError`` naming the
    message at fault for an unknown role or non-text content.
    """
    tool_list = [normalise_tool_schema(tool) for tool in tools or ()] if tool_choice != "none" else []
    rendered = [_template_message(i, message, support) for i, message in enumerate(messages)]
    if not support.tool_calls:
        rendered = _results_as_user_text(rendered, _tool_names_by_call_id(messages))
    if not tool_list:
        return TemplatePrompt(rendered, None)
    instruction = tool_choice_instruction(tool_list, tool_choice)
    if support.tools:
        if instruction:
            rendered = _with_system_text(rendered, instruction)
        return TemplatePrompt(rendered, tool_list)
    return TemplatePrompt(_with_system_text(rendered, tools_system_text(tool_list, instruction)), None)


def normalise_tool_schema(tool: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI-style tool schema ``{"type": "function", "function": {...}}`` (a bare function dict is wrapped)."""
    function = tool.get("function", tool) if tool.get("type", "function") == "function" else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str) or not function["name"]:
        raise ValueError(f"a tool schema needs a function name, got {dict(tool)!r}")
    body: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        body["description"] = function["description"]
    body["parameters"] = dict(function.get("parameters") or {"type": "object", "properties": {}})
    return {"type": "function", "function": body}


def tools_system_text(tools: Sequence[Mapping[str, Any]], instruction: str = "") -> str:
    """System-message text that lists the tools and the ``<tool_call>`` answer format."""
    schemas = "\n".join(json.dumps(tool["function"], ensure_ascii=False) for tool in tools)
    text = (
        "# Tools\n\nYou can call the functions whose JSON schemas are listed here:\n"
        f"<tools>\n{schemas}\n</tools>\n\n"
        f"To call a function, answer with a JSON object inside {TOOL_CALL_OPEN}{TOOL_CALL_CLOSE} tags:\n"
        f"{FORMAT_EXAMPLE}"
    )
    return f"{text}\n{instruction}" if instruction else text


def tool_choice_instruction(tools: Sequence[Mapping[str, Any]], tool_choice: ToolChoice) -> str:
    """A sentence enforcing ``tool_choice`` ('' for None/'auto'); ``ValueError`` for an unknown tool name."""
    if tool_choice in (None, "auto", "none"):
        return ""
    if tool_choice in ("required", "any"):
        return "You must call one of these functions."
    names = [tool["function"]["name"] for tool in tools]
    if tool_choice not in names:
        raise ValueError(f"tool_choice {tool_choice!r} is not one of the bound tools {names}")
    return f"You must call the function {tool_choice}."



def _template_message(position: int, message: Mapping[str, Any], support: TemplateSupport) -> dict[str, Any]:
    role = _ROLES.get(str(message.get("role")))
    if role is None:
        raise ValueError(
            f"message {position} has role {message.get('role')!r}; expected one of {', '.join(_ROLES)}"
        )
    out: dict[str, Any] = {"role": role, "content": content_text(message.get("content"), position)}
    if message.get("name"):
        out["name"] = message["name"]
    if role == "tool" and message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    calls = [_call_name_and_arguments(call, position) for call in message.get("tool_calls") or ()]
    if calls and support.tool_calls:
        out["tool_calls"] = [
            {"type": "function", "id": call_id, "function": {"name": name, "arguments": arguments}}
            for call_id, name, arguments in calls
        ]
    elif calls:
        shown = "\n".join(format_tool_call(name, arguments) for _, name, arguments in calls)
        out["content"] = f"{out['content']}\n{shown}" if out["content"] else shown
    return out


def content_text(content: Any, position: int = 0) -> str:
    """Message content as plain text: a string, None, or a list of text parts (others raise ValueError)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, Mapping) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
        elif isinstance(part, Mapping) and part.get("type") in ("reasoning", "thinking", "tool_use", "tool_call"):
            continue  # not shown to the model again: calls travel in tool_calls
        else:
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise ValueError(f"message {position} has a {kind!r} content part; these models read text only")
    return "".join(parts)


def _call_name_and_arguments(call: Mapping[str, Any], position: int) -> tuple[str | None, str, dict[str, Any]]:
    function = call.get("function", call)
    name = function.get("name")
    arguments = function.get("arguments", function.get("args", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as error:
            raise ValueError(f"message {position}: tool call {name!r} has arguments that are not JSON: {error}") from None
    if not isinstance(name, str) or not isinstance(arguments, Mapping):
        raise ValueError(  # noqa: TRY004 - every bad message raises ValueError (the module's one error type)
            f"message {position}: a tool call needs a name and JSON-object arguments, got {dict(call)!r}"
        )
    return call.get("id"), name, dict(arguments)


def _with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """Append ``text`` to the leading system message, or add one."""
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n\n{text}" if first["content"] else text
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]



def _tool_names_by_call_id(messages: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    names = {}
    for message in messages:
        for call in message.get("tool_calls") or ():
            function = call.get("function", call)
            if call.get("id") and isinstance(function.get("name"), str):
                names[call["id"]] = function["name"]
    return names


TOOL_RESULTS_CLOSING = "Answer the question."
"""Ends the user message that carries tool results (for templates without a tool role)."""


def _results_as_user_text(messages: list[dict[str, Any]], names: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each run of tool messages as one user message: 'The tool <name> returned: <result>.' per result."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] != "tool":
            out.append(message)
            continue
        name = message.get("name") or names.get(message.get("tool_call_id") or "") or "called"
        line = f"The tool {name} returned: {message['content']}."
        if out and out[-1].get("tool_results"):
            previous = out.pop()
            lines = [*previous["tool_results"], line]
        else:
            lines = [line]
        out.append({"role": "user", "content": "\n".join([*lines, TOOL_RESULTS_CLOSING]), "tool_results": lines})
    return [{key: value for key, value in message.items() if key != "tool_results"} for message in out]
