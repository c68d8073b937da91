"""A model pair: SLM and LLM sharing one tokenizer and one real vocabulary."""

from __future__ import annotations

import dataclasses
import threading
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedModel

from ..errors import TokenizerMismatchError
from .execution import ExecutionConfig
from .loaded import LoadedModel, as_id_set

if TYPE_CHECKING:
    from .llamacpp import LlamaCppModel


@dataclass(frozen=True)
class ModelPair:
    """The two models of a stitched decoder and their shared tokenizer."""

    slm: "LoadedModel | LlamaCppModel"
    llm: "LoadedModel | LlamaCppModel"
    tokenizer: Any
    pass_lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)
    """Held for every forward pass on these models, by every engine built on them (a pair with
    other execution configs, from ``with_execution``, keeps it): their passes never overlap."""

    @property
    def vocab_size(self) -> int:
        return self.llm.vocab_size

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Every id either model or the tokenizer declares as end of sequence."""
        ids: set[int] = set()
        for loaded in (self.slm, self.llm):
            ids.update(loaded.declared_eos_ids)
        ids.update(as_id_set(getattr(self.tokenizer, "eos_token_id", None)))
        return frozenset(i for i in ids if 0 <= i < self.vocab_size)

    def with_execution(self, slm: ExecutionConfig | None = None, llm: ExecutionConfig | None = None) -> "ModelPair":
        """The same models and tokenizer with other execution configs (None: keep that model's)."""
        def renewed(loaded: LoadedModel, execution: ExecutionConfig | None) -> LoadedModel:
            same = execution is None or execution == loaded.execution
            return loaded if same else dataclasses.replace(loaded, execution=execution)  # type: ignore[type-var]  # fresh pool and steps
        return dataclasses.replace(self, slm=renewed(self.slm, slm), llm=renewed(self.llm, llm))

    @classmethod
    def from_models(
        cls,
        slm: PreTrainedModel,
        llm: PreTrainedModel,
        tokenizer: Any,
        slm_tokenizer: Any | None = None,
        slm_name: str = "",
        llm_name: str = "",
    ) -> "ModelPair":
        """Pair two loaded models. ``tokenizer`` is the LLM's; ``slm_tokenizer``, when given, must match it.

        Raises ``TokenizerMismatchError`` saying how the tokenizers differ.
        """
        if slm_tokenizer is not None:
            check_same_tokenizer(slm_tokenizer, tokenizer)
        vocab_size = shared_vocab_size(tokenizer, slm, llm)
        return cls(
            slm=LoadedModel("slm", slm, vocab_size, slm_name),
            llm=LoadedModel("llm", llm, vocab_size, llm_name),
            tokenizer=tokenizer,
        )


def output_rows(model: PreTrainedModel) -> int:
    """Number of logits the model produces (its output layer may be padded past the vocabulary)."""
    head = model.get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(model.config.get_text_config(decoder=True).vocab_size)


def shared_vocab_size(tokenizer: Any, slm: PreTrainedModel, llm: PreTrainedModel) -> int:
    """|V| of the shared real vocabulary: the tokenizer's size, within both output layers.

    Rows past it are padding (e.g. Qwen2-1.5B has 151,936 logits and Qwen2-72B 152,064 for one
    151,665-token vocabulary); both models' logits are sliced to |V| before softmax, sampling and
    entropy, and |V| is the entropy normaliser.
    """
    real = len(tokenizer)
    rows = min(output_rows(slm), output_rows(llm))
    if real > rows:
        warnings.warn(
            f"the tokenizer has {real} tokens but a model has only {rows} output rows; "
            f"using the first {rows} as the shared vocabulary",
            stacklevel=2,
        )
    return min(real, rows)


def check_same_tokenizer(slm_tokenizer: Any, llm_tokenizer: Any) -> None:
    """Raise ``TokenizerMismatchError`` unless both map every token string to the same id."""
    slm_vocab, llm_vocab = slm_tokenizer.get_vocab(), llm_tokenizer.get_vocab()
    problems: list[str] = []
    if len(slm_vocab) != len(llm_vocab):
        problems.append(f"vocabulary sizes differ: SLM {len(slm_vocab)}, LLM {len(llm_vocab)}")
    differing = sorted(
        (token for token in slm_vocab.keys() | llm_vocab.keys() if slm_vocab.get(token) != llm_vocab.get(token)),
        key=lambda token: min(slm_vocab.get(token, 1 << 62), llm_vocab.get(token, 1 << 62)),
    )
    if differing:
        examples = ", ".join(
            f"{token!r}: SLM {slm_vocab.get(token)} / LLM {llm_vocab.get(token)}" for token in differing[:5]
        )
        problems.append(f"{len(differing)} tokens map to different ids (first: {examples})")
    for attribute in ("eos_token_id", "bos_token_id"):
        slm_id, llm_id = getattr(slm_tokenizer, attribute, None), getattr(llm_tokenizer, attribute, None)
        if slm_id != llm_id:
            problems.append(f"{attribute} differs: SLM {slm_id}, LLM {llm_id}")
    if problems:
        raise TokenizerMismatchError(
            "the SLM and LLM must share one tokenizer, but " + "; ".join(problems)
            + ". Pick models of one family (same tokenizer files)."
        )
