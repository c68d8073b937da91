"""Chat messages and tools in, model text out: the framework-free half of every adapter.

No LangChain or LlamaIndex import here; both adapters share this module.

* **In**: OpenAI-style chat messages (``{"role", "content", "tool_calls", "tool_call_id", "name"}``)
  and OpenAI-style tool schemas (``{"type": "function", "function": {"name", "description",
  "parameters"}}``) become the message dicts a Hugging Face chat template renders
  (``to_template_prompt``). A template that renders tools itself gets them as ``tools``; for one
  that does not (SmolLM2's), the schemas go into the system message and earlier tool calls into the
  assistant's text, in the same ``<tool_call>`` format the model is asked to answer in.
* **Out**: the model's text becomes content, tool calls and invalid tool calls (``parse_output``),
  and the same split happens incrementally on streamed text deltas (``ThinkSplitter`` for
  ``<think>...</think>`` reasoning, ``ToolCallStream`` for ``<tool_call>...</tool_call>`` blocks).
  ``parse_output`` is those two streaming parsers fed the whole text at once, so a stream and a
  single call always parse the same text the same way.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

THINK_OPEN = "<think>"
"""Opens a reasoning span in model text."""
THINK_CLOSE = "</think>"
"""Closes a reasoning span in model text."""
TOOL_CALL_OPEN = "<tool_call>"
"""Opens a tool call (a JSON object ``{"name": ..., "arguments": {...}}``) in model text."""
TOOL_CALL_CLOSE = "</tool_call>"
"""Closes a tool call in model text."""

# ----------------------------------------------------------------------------- data


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


@dataclass(frozen=True)
class ParsedOutput:
    """Model text split into what the user reads, the reasoning and the tool calls."""

    content: str
    """Text outside ``<think>`` and ``<tool_call>`` spans."""
    reasoning: str
    """Text inside ``<think>...</think>`` (empty when there is none or splitting is off)."""
    tool_calls: list[ToolCall] = field(default_factory=list)
    """Well-formed calls, in order."""
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)
    """Malformed calls, in order (never an exception)."""


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
        f'{TOOL_CALL_OPEN}\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n{TOOL_CALL_CLOSE}'
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


def tool_call_prefix(tool_name: str | None = None) -> str:
    """The opening of a call (to ``tool_name``, or to a tool the model names): text to put in the model's mouth."""
    if tool_name is None:
        return f'{TOOL_CALL_OPEN}\n{{"name": "'
    return f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(tool_name)}, "arguments": {{'


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """One call in the ``<tool_call>`` text format (how earlier calls are shown to the model)."""
    payload = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{payload}\n{TOOL_CALL_CLOSE}"


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


# ----------------------------------------------------------------------------- text out


TagPiece = tuple[Literal["outside", "inside", "open", "close"], str]
"""A piece of streamed text: text outside or inside the tags, or the moment a tag opens/closes."""


class TagSplitter:
    """Splits streamed text on an open/close tag pair; tags may be cut across deltas.

    Text that could still be the start of the next tag is held back until it is not.
    """

    def __init__(self, open_tag: str, close_tag: str, start_inside: bool = False) -> None:
        self.open_tag, self.close_tag = open_tag, close_tag
        self.inside = start_inside
        self._held = ""

    def feed(self, text: str) -> list[TagPiece]:
        """Pieces that are final after adding ``text``."""
        buffer, pieces = self._held + text, list[TagPiece]()
        while True:
            tag = self.close_tag if self.inside else self.open_tag
            at = buffer.find(tag)
            if at < 0:
                break
            self._emit(pieces, buffer[:at])
            self.inside = not self.inside
            pieces.append(("open", "") if self.inside else ("close", ""))
            buffer = buffer[at + len(tag):]
        keep = _partial_suffix(buffer, self.close_tag if self.inside else self.open_tag)
        self._emit(pieces, buffer[: len(buffer) - keep])
        self._held = buffer[len(buffer) - keep:]
        return pieces

    def finish(self) -> list[TagPiece]:
        """Flush held-back text at the end of the stream."""
        pieces: list[TagPiece] = []
        self._emit(pieces, self._held)
        self._held = ""
        return pieces

    def _emit(self, pieces: list[TagPiece], text: str) -> None:
        if text:
            pieces.append(("inside" if self.inside else "outside", text))


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ThinkSplitter:
    """Streams model text into (content, reasoning) deltas on ``<think>...</think>``.

    ``start_inside`` is for templates whose generation prompt already opened ``<think>``.
    """

    def __init__(self, start_inside: bool = False) -> None:
        self._tags = TagSplitter(THINK_OPEN, THINK_CLOSE, start_inside)

    @property
    def inside(self) -> bool:
        """Whether the text fed so far ends inside a reasoning span."""
        return self._tags.inside

    def feed(self, text: str) -> tuple[str, str]:
        """(content delta, reasoning delta) that are final after adding ``text``."""
        return _by_side(self._tags.feed(text))

    def finish(self) -> tuple[str, str]:
        """(content, reasoning) held back at the end of the stream."""
        return _by_side(self._tags.finish())


def _by_side(pieces: Iterable[TagPiece]) -> tuple[str, str]:
    outside = "".join(text for kind, text in pieces if kind == "outside")
    inside = "".join(text for kind, text in pieces if kind == "inside")
    return outside, inside


@dataclass(frozen=True)
class ToolStep:
    """What one delta of streamed text contributed."""

    content: str
    """Text outside tool-call blocks, final now."""
    calls: list[ParsedCall]
    """Tool-call blocks that closed in this delta, parsed."""


def new_call_id() -> str:
    """A fresh tool-call id, ``call_`` + 24 hex digits."""
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallStream:
    """Streams model text, holding back ``<tool_call>`` blocks and parsing each one as it closes.

    ``tool_names``: when given, a call to any other name is invalid. ``new_id`` makes call ids.
    """

    def __init__(self, tool_names: Iterable[str] | None = None, new_id: Callable[[], str] = new_call_id) -> None:
        self._tags = TagSplitter(TOOL_CALL_OPEN, TOOL_CALL_CLOSE)
        self._names = frozenset(tool_names) if tool_names is not None else None
        self._new_id = new_id
        self._block: list[str] = []

    @property
    def inside(self) -> bool:
        """Whether the text fed so far ends inside a ``<tool_call>`` block."""
        return self._tags.inside

    def feed(self, text: str) -> ToolStep:
        """Content and completed calls after adding ``text``."""
        return self._step(self._tags.feed(text))

    def finish(self) -> ToolStep:
        """The rest at the end of the stream; an unclosed block becomes an invalid call."""
        step = self._step(self._tags.finish())
        if not self._tags.inside:
            return step
        self._tags.inside = False
        raw = "".join(self._block)
        self._block = []
        unclosed = InvalidToolCall(self._new_id(), _name_in(raw), raw, f"the text ended before {TOOL_CALL_CLOSE}", False)
        return ToolStep(step.content, [*step.calls, unclosed])

    def _step(self, pieces: list[TagPiece]) -> ToolStep:
        content, calls = [], []
        for kind, text in pieces:
            if kind == "outside":
                content.append(text)
            elif kind == "inside":
                self._block.append(text)
            elif kind == "close":
                calls.append(parse_tool_call("".join(self._block), self._new_id(), self._names))
                self._block = []
        return ToolStep("".join(content), calls)


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


@dataclass(frozen=True)
class AnswerStep:
    """What a piece of streamed answer text added: final content, reasoning and completed tool calls."""

    content: str = ""
    reasoning: str = ""
    calls: tuple[ParsedCall, ...] = ()

    @property
    def visible(self) -> bool:
        """Whether this step shows anything to the reader."""
        return bool(self.content or self.reasoning or self.calls)

    def then(self, later: AnswerStep) -> AnswerStep:
        """This step followed by ``later``."""
        return AnswerStep(self.content + later.content, self.reasoning + later.reasoning, self.calls + later.calls)


class AnswerParser:
    """A streamed answer split into content, ``<think>`` reasoning and tool calls, with running totals.

    ``ThinkSplitter`` runs first (when ``separate_reasoning``), then ``ToolCallStream`` on the
    content (when ``tool_names``, the names of the tools offered, is not None).
    """

    def __init__(self, separate_reasoning: bool, tool_names: Iterable[str] | None) -> None:
        self._think = ThinkSplitter() if separate_reasoning else None
        self._tools = ToolCallStream(tool_names) if tool_names is not None else None
        self.content = ""
        """All content so far."""
        self.reasoning = ""
        """All reasoning so far."""
        self.tool_calls: list[ToolCall] = []
        """Well-formed calls so far."""
        self.invalid_tool_calls: list[InvalidToolCall] = []
        """Malformed calls so far."""

    @property
    def in_reasoning(self) -> bool:
        """Inside a ``<think>`` span now (the text just fed counts as reasoning)."""
        return self._think is not None and self._think.inside

    def feed(self, text: str) -> AnswerStep:
        """What ``text`` made final."""
        content, reasoning = self._think.feed(text) if self._think else (text, "")
        return self._record(self._split_calls(content, reasoning))

    def finish(self, close_tool_call: bool = False) -> AnswerStep:
        """The held-back rest; ``close_tool_call`` completes a block cut at its closing tag (a stop string)."""
        content, reasoning = self._think.finish() if self._think else ("", "")
        step = self._split_calls(content, reasoning)
        if self._tools is not None:
            if close_tool_call and self._tools.inside:
                step = step.then(AnswerStep(calls=tuple(self._tools.feed(TOOL_CALL_CLOSE).calls)))
            rest = self._tools.finish()
            step = step.then(AnswerStep(rest.content, "", tuple(rest.calls)))
        return self._record(step)

    def _split_calls(self, content: str, reasoning: str) -> AnswerStep:
        if self._tools is None:
            return AnswerStep(content, reasoning)
        tool_step = self._tools.feed(content)
        return AnswerStep(tool_step.content, reasoning, tuple(tool_step.calls))

    def _record(self, step: AnswerStep) -> AnswerStep:
        self.content += step.content
        self.reasoning += step.reasoning
        self.tool_calls += [call for call in step.calls if isinstance(call, ToolCall)]
        self.invalid_tool_calls += [call for call in step.calls if isinstance(call, InvalidToolCall)]
        return step


def parse_output(
    text: str,
    *,
    split_reasoning: bool = True,
    parse_tools: bool = True,
    tool_names: Iterable[str] | None = None,
    new_id: Callable[[], str] = new_call_id,
) -> ParsedOutput:
    """Split a whole model answer into content, reasoning, tool calls and invalid tool calls."""
    content, reasoning = text, ""
    if split_reasoning:
        splitter = ThinkSplitter()
        content, reasoning = _concat(splitter.feed(text), splitter.finish())
    if not parse_tools:
        return ParsedOutput(content, reasoning)
    tools = ToolCallStream(tool_names, new_id)
    first, last = tools.feed(content), tools.finish()
    calls = first.calls + last.calls
    return ParsedOutput(
        content=first.content + last.content,
        reasoning=reasoning,
        tool_calls=[call for call in calls if isinstance(call, ToolCall)],
        invalid_tool_calls=[call for call in calls if isinstance(call, InvalidToolCall)],
    )


def _concat(*pairs: tuple[str, str]) -> tuple[str, str]:
    return "".join(a for a, _ in pairs), "".join(b for _, b in pairs)
