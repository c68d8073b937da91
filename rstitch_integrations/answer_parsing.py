"""Model text out: streamed answer text split into content, ``<think>`` reasoning and tool calls.

Framework-free (no LangChain or LlamaIndex import); both adapters share this module. The split
happens incrementally on streamed text deltas (``ThinkSplitter`` for ``<think>...</think>``
reasoning, ``ToolCallStream`` for ``<tool_call>`` blocks, parsed by ``tool_calls.parse_tool_call``
as each closes; ``AnswerParser`` runs both with running totals). ``parse_output`` is those
streaming parsers fed the whole text at once, so a stream and a single call always parse the same
text the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from .tool_calls import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    InvalidToolCall,
    ParsedCall,
    ToolCall,
    new_call_id,
    parse_tool_call,
    unclosed_call,
    unless_repeated,
)

THINK_OPEN = "<think>"
"""Opens a reasoning span in model text."""
THINK_CLOSE = "</think>"
"""Closes a reasoning span in model text."""


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


class ToolCallStream:
    """Streams model text, holding back ``<tool_call>`` blocks and parsing each one as it closes.

    ``tool_names``: when given, a call to any other name is invalid. ``new_id`` makes call ids.
    """

    def __init__(
        self, tool_names: Iterable[str] | None = None, new_id: Callable[[], str] = new_call_id,
        earlier_calls: frozenset[str] = frozenset(),
    ) -> None:
        self._tags = TagSplitter(TOOL_CALL_OPEN, TOOL_CALL_CLOSE)
        self._names = frozenset(tool_names) if tool_names is not None else None
        self._earlier = earlier_calls  # call_key()s of calls made since the user's message: a repeat is invalid
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
        unclosed = unclosed_call(raw, self._new_id())
        return ToolStep(step.content, [*step.calls, unclosed])

    def _step(self, pieces: list[TagPiece]) -> ToolStep:
        content, calls = [], []
        for kind, text in pieces:
            if kind == "outside":
                content.append(text)
            elif kind == "inside":
                self._block.append(text)
            elif kind == "close":
                call = parse_tool_call("".join(self._block), self._new_id(), self._names)
                calls.append(unless_repeated(call, self._earlier))
                self._block = []
        return ToolStep("".join(content), calls)


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
    content (when ``tool_names``, the names of the tools offered, is not None). A call repeating one
    of ``earlier_calls`` (``tool_calls.call_key``) with the same arguments becomes an invalid call.
    """

    def __init__(
        self, separate_reasoning: bool, tool_names: Iterable[str] | None, earlier_calls: frozenset[str] = frozenset()
    ) -> None:
        self._think = ThinkSplitter() if separate_reasoning else None
        self._tools = ToolCallStream(tool_names, earlier_calls=earlier_calls) if tool_names is not None else None
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
