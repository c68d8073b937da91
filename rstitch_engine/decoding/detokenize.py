"""Incremental detokenisation with stop strings.

Text deltas are exact: concatenating every delta gives ``tokenizer.decode(output_ids)`` up to the
first stop string (special tokens skipped). Two things make that hard token by token:

* A token can carry part of a multi-byte character (byte-level BPE): its text is held back until
  the character is complete (no U+FFFD is ever emitted for a character that completes later).
* SentencePiece-style tokenizers drop a word's leading space when it is decoded alone: each delta is
  the difference of two decodes over a short window of preceding tokens, so spaces survive.

Stop strings may span several tokens; text that could still be the start of a stop string is held
back until it is not, and the stop string itself never reaches the output.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from transformers.tokenization_utils_tokenizers import TokenizersBackend

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns token ids into text deltas (the prefix/read-offset scheme of TGI and vLLM)."""

    def __init__(self, tokenizer: Any) -> None:
        self._decode = _decoder_of(tokenizer)
        self._token_texts = _token_texts(tokenizer)
        self._ids: list[int] = []
        self._prefix_offset = 0  # decode window start: context for spacing
        self._read_offset = 0  # ids[:read_offset] have been emitted as text

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now final (possibly empty)."""
        self._ids.append(token_id)
        emitted, current = self._window_texts()
        if len(current) > len(emitted) and not current.endswith(REPLACEMENT_CHAR):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return current[len(emitted):]
        return ""

    def flush(self) -> str:
        """Whatever text is still held back (an incomplete character stays as U+FFFD)."""
        emitted, current = self._window_texts()
        self._prefix_offset = self._read_offset = len(self._ids)
        return current[len(emitted):]

    def _token_text(self, token_id: int) -> str:
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self._decode([token_id])
        return text

    def _window_texts(self) -> tuple[str, str]:
        start, read = self._prefix_offset, self._read_offset
        # after a push that emitted, the emitted window is that push's one token
        emitted = self._token_text(self._ids[start]) if read - start == 1 else self._decode(self._ids[start:read])
        current = self._decode(self._ids[start:])
        return emitted, current


def _decoder_of(tokenizer: Any) -> Callable[[list[int]], str]:
    """``ids -> tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)``.

    For a transformers fast tokenizer whose ``_decode`` is the library's own, that is its Rust
    ``backend_tokenizer.decode(ids, skip_special_tokens=True)`` (transformers adds only argument
    handling around it, which would cost more than the decode of a short window, twice a token)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(tokenizer)._decode is TokenizersBackend._decode:
        return functools.partial(backend.decode, skip_special_tokens=True)
    return functools.partial(tokenizer.decode, skip_special_tokens=True, clean_up_tokenization_spaces=False)


_TOKEN_TEXTS: "weakref.WeakKeyDictionary[Any, dict[int, str]]" = weakref.WeakKeyDictionary()


def _token_texts(tokenizer: Any) -> dict[int, str]:
    """The texts of single tokens decoded so far (``decode([id])``), shared by the tokenizer's requests for
    its lifetime: a token alone always decodes to the same text. At most one entry per vocabulary id."""
    try:
        return _TOKEN_TEXTS.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: remembered for this request only
        return {}


@dataclass
class StopStringFilter:
    """Holds back text that might begin a stop string; reports when one is complete."""

    stop: tuple[str, ...]
    _pending: str = field(default="", init=False)
    stopped: bool = field(default=False, init=False)

    def push(self, text: str) -> str:
        """Add text; return what is safe to emit. After a match, ``stopped`` is True."""
        if self.stopped:
            return ""
        if not self.stop:  # nothing is ever held back
            return text
        self._pending += text
        # Emitted text never contains the start of a stop string, so a match lies in _pending.
        matches = [i for i in (self._pending.find(s) for s in self.stop) if i >= 0]
        if matches:
            cut = min(matches)
            safe, self._pending, self.stopped = self._pending[:cut], "", True
            return safe
        held = self._longest_stop_prefix_suffix()
        safe = self._pending[: len(self._pending) - held]
        self._pending = self._pending[len(self._pending) - held:]
        return safe

    def flush(self) -> str:
        """At the end of generation: the held text was not a stop string after all."""
        safe, self._pending = self._pending, ""
        return "" if self.stopped else safe

    def _longest_stop_prefix_suffix(self) -> int:
        """Length of the longest suffix of _pending that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stop:
            for length in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:length]):
                    best = length
                    break
        return best


class TextAssembler:
    """Token ids in, output text deltas out: detokenisation followed by stop-string filtering."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self._detokenizer = IncrementalDetokenizer(tokenizer)
        self._filter = StopStringFilter(stop)
        self.text = ""

    @property
    def stopped(self) -> bool:
        """A stop string has been completed; nothing more is emitted."""
        return self._filter.stopped

    def push(self, token_id: int, is_last: bool) -> str:
        """Text delta for this token; ``is_last`` releases everything still held back."""
        delta = self._filter.push(self._detokenizer.push(token_id))
        if is_last and not self._filter.stopped:
            delta += self._filter.push(self._detokenizer.flush())
            delta += self._filter.flush()
        self.text += delta
        return delta
