"""Grammar-constrained decoding inside the stitched loop: JSON schemas, regexes, Lark grammars, tool calls.

The grammar engine is llguidance (the library behind guidance, used by vLLM and llama.cpp). Chosen
over xgrammar, outlines-core and lm-format-enforcer because its wheel has no dependencies (xgrammar
pulls triton and a TVM runtime), its token masks are computed in Rust in tens of microseconds
(well under the 5% of an SLM step this loop can afford), and its Lark dialect takes JSON schemas
inline (``%json {...}``) and lazy "structural tags", which is exactly what a chat template's
tool-call blocks need: free text with ``<tool_call>`` segments whose body must match a schema.

Rules, enforced by ``RequestDecoder`` (``decoding.request``) and by the LLM-alone baseline:

* before entropy and token choice, the active model's logits are masked to the tokens the grammar
  allows at this position (``GrammarState.allowed``); every model sees the same state, since the
  state advances only on kept tokens (``GrammarState.consume``): a discarded SLM token never
  advances it;
* the routing entropy is that of the renormalised allowed distribution (masked tokens have p = 0),
  normalised by log |allowed| rather than log |V|: H = 1 is still "uniform over the possible
  choices", so tau keeps its meaning where a grammar leaves ten digits open (normalised by log |V|,
  a model torn between all ten digits would read H = 0.21 and look confident); a forced position
  (one allowed token) has H = 0, so the SLM writes it and the LLM is never consulted there;
* the end-of-sequence tokens are allowed exactly where the grammar may end;
* a position where the grammar allows no token ends the request with finish reason
  ``'no_allowed_token'`` (the text so far is kept);
* a forced position (exactly one allowed token) runs no forward pass at all: the token is kept at
  once, credited to the active model with H = 0, and the next pass of each model catches up on it
  with the tokens it missed. Any decoding would choose that token, so outputs are unchanged; only
  passes are saved (JSON keys and punctuation are most of a tool call). The LLM-alone baseline
  skips the same positions, so speedups compare like with like.
"""

from __future__ import annotations

import importlib
import json
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Mapping

import numpy as np
import torch

from ..errors import InvalidSettingError

if TYPE_CHECKING:
    import llguidance


def _llguidance() -> ModuleType:
    """llguidance, imported at the first grammar: free-text decoding runs without it (a bare GPU image)."""
    module = importlib.import_module("llguidance")
    importlib.import_module("llguidance.hf")
    return module

GrammarKind = Literal["json_schema", "regex", "lark"]
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""How constrained JSON is laid out (llguidance's ``x-guidance`` options), unless a schema sets its own:
one layout, the one ``json.dumps`` writes and chat templates show, so that a small model cannot wander
into whitespace and every JSON token it writes carries content."""


def _with_layout(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"x-guidance": JSON_LAYOUT, **dict(schema)}


def lark_json(schema: Mapping[str, Any]) -> str:
    """A Lark rule body (``%json {...}``) for one JSON value valid against ``schema``, in the shared layout."""
    return f"%json {json.dumps(_with_layout(schema))}"


@dataclass(frozen=True)
class Grammar:
    """What a request's output must match. Build one with the class methods; frozen and hashable."""

    kind: GrammarKind
    source: str
    """The JSON schema (as JSON text), the regex, or the Lark grammar (llguidance's dialect)."""

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | str) -> "Grammar":
        """Output: one JSON value valid against ``schema``."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as error:
                raise InvalidSettingError(f"the JSON schema is not valid JSON: {error}") from error
        if not isinstance(schema, Mapping):
            raise InvalidSettingError(f"a JSON schema is an object, got {type(schema).__name__}")
        return cls("json_schema", json.dumps(_with_layout(schema)))  # key order kept: it is the output's order

    @classmethod
    def json_object(cls) -> "Grammar":
        """Output: any JSON object (JSON mode)."""
        return cls.json_schema({"type": "object"})

    @classmethod
    def regex(cls, pattern: str) -> "Grammar":
        """Output: a string fully matching ``pattern`` (Rust regex syntax)."""
        return cls("regex", pattern)

    @classmethod
    def lark(cls, grammar: str) -> "Grammar":
        """Output: a sentence of a Lark grammar in llguidance's dialect (``start:`` rule first)."""
        return cls("lark", grammar)

    @classmethod
    def tagged_json(
        cls, open_tag: str, schema: Mapping[str, Any], close_tag: str, required: bool, trigger: str | None = None
    ) -> "Grammar":
        """Segments ``open_tag + JSON valid against schema + close_tag`` (a chat template's tool calls).

        ``required``: the output is exactly one such segment. Otherwise free text in which a
        segment starts when the model writes ``trigger`` (a lazy trigger; a prefix of ``open_tag``,
        by default all of it), and must then be complete.
        """
        if required:
            return cls.lark(f"start: {json.dumps(open_tag)} call {json.dumps(close_tag)}\ncall: {lark_json(schema)}\n")
        trigger = open_tag if trigger is None else trigger
        if not open_tag.startswith(trigger) or not trigger:
            raise InvalidSettingError(f"the trigger {trigger!r} must be a non-empty prefix of the open tag {open_tag!r}")
        tag = _llguidance().StructTag(trigger=trigger, begin=open_tag, grammar=_with_layout(schema), end=close_tag)
        return cls.lark(_llguidance().StructTag.to_grammar([tag], assume_special=False))

    def compiled(self) -> str:
        """The grammar in llguidance's serialised form."""
        if self.kind == "json_schema":
            try:
                return _llguidance().LLMatcher.grammar_from_json_schema(self.source)
            except (ValueError, RuntimeError) as error:
                raise InvalidSettingError(f"the JSON schema cannot be used as a grammar: {error}") from error
        if self.kind == "regex":
            return _llguidance().LLMatcher.grammar_from_regex(self.source)
        return _llguidance().LLMatcher.grammar_from_lark(self.source)

    def check(self) -> None:
        """Raise ``InvalidSettingError`` (with llguidance's message) if this grammar cannot be used."""
        error = _llguidance().LLMatcher.validate_grammar(self.compiled())
        if error:
            raise InvalidSettingError(f"the {self.kind} grammar cannot be compiled: {error.strip()}")


class GrammarTokenizer:
    """The pair's tokenizer as llguidance sees it, built once per engine (thread-safe, lazy)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: frozenset[int]) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self._built: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    def get(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._built is None:
                eos = self._tokenizer.eos_token_id
                if eos is None:
                    eos = min(self.eos_token_ids) if self.eos_token_ids else None
                self._built = _llguidance().hf.from_tokenizer(self._tokenizer, n_vocab=len(self._tokenizer), eos_token=eos)
            return self._built

    def start(self, grammar: Grammar) -> "GrammarState":
        """A fresh state at the start of ``grammar``; a grammar that does not compile raises here."""
        return GrammarState(grammar, self)


class GrammarState:
    """One request's position in its grammar. Invariant: it has consumed exactly the kept output tokens."""

    def __init__(self, grammar: Grammar, tokenizer: GrammarTokenizer) -> None:
        self.grammar = grammar
        self._eos = np.fromiter(sorted(t for t in tokenizer.eos_token_ids if t < tokenizer.vocab_size), dtype=np.int64)
        self._vocab_size = tokenizer.vocab_size
        self._matcher = _llguidance().LLMatcher(tokenizer.get(), grammar.compiled())
        if self._matcher.is_error():
            raise InvalidSettingError(f"the {grammar.kind} grammar cannot be compiled: {self._matcher.get_error()}")
        self._allowed: torch.Tensor | None = None
        self._allowed_count = 0

    def allowed(self) -> torch.Tensor:
        """[V] bool over the shared vocabulary: the tokens the grammar allows next (cached until ``consume``)."""
        if self._allowed is None:
            bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
            allowed = np.unpackbits(bits, bitorder="little")[: self._vocab_size].astype(bool)  # [V]
            allowed[self._eos] = self._matcher.is_accepting()  # every EOS id, exactly where the grammar may end
            self._allowed = torch.from_numpy(allowed)
            self._allowed_count = int(allowed.sum())
        return self._allowed

    def forced_token(self) -> int | None:
        """The one token the grammar allows next, or None when there is a choice (or none at all)."""
        allowed = self.allowed()
        if self._allowed_count != 1:
            return None
        return int(torch.nonzero(allowed)[0, 0])

    @property
    def allowed_count(self) -> int:
        """How many tokens the grammar allows next."""
        self.allowed()
        return self._allowed_count

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [V] with the tokens the grammar forbids at -inf (a new tensor)."""
        allowed = self.allowed().to(logits.device)
        return logits.masked_fill(~allowed, float("-inf"))

    @property
    def dead_end(self) -> bool:
        """True when the grammar allows no token at all here."""
        return not bool(self.allowed().any())

    def consume(self, token: int) -> None:
        """Advance past a kept token (an EOS ends the output and is not fed to the grammar)."""
        self._allowed = None
        if token in self._eos:
            return
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"the grammar rejected token {token} it had allowed: {self._matcher.get_error()}")
