"""The router protocol: what a router sees (``RouterState``) and what it decides.

The engine applies Algorithm 1 of the R-Stitch paper. With H the normalised entropy of the active
model's next-token distribution and tau the router's threshold:

* H <= tau: the token is kept; if the LLM was active, control returns to the SLM.
* H > tau and the SLM is active: the router is consulted; if it ``wants_llm``, the SLM token is
  discarded and the LLM decodes that same position.
* H > tau and the LLM is active: the LLM's token is kept and the LLM stays active. The router is
  not consulted there: its answer could not change anything.

A learned router (R-Stitch+) implements the same protocol with ``needs_hidden_state = True``.

Optional hand-back hook: a router with a ``hands_back(state)`` method (``HandBackRouter``) decides
instead of the first rule when the LLM returns control, after every LLM token (trace replay uses
it). Without one the rules above hold bit for bit. ``EntropyRouter`` has one: with no
``hand_back_threshold`` it is the first rule itself (tested equal to a router without a hook).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class RouterState:
    """What a router sees at an uncertain SLM position."""

    entropy: float
    """Normalised entropy of the SLM's untempered next-token distribution, > threshold."""
    context_length: int
    """Tokens before the position being decoded (prompt + kept output)."""
    proposed_token: int
    """The token the SLM chose there."""
    slm_hidden: torch.Tensor | None
    """[hidden_size] SLM last-layer hidden state at the previous position; None unless asked for."""


@runtime_checkable
class Router(Protocol):
    """Decides whether an uncertain SLM token is handed to the LLM."""

    @property
    def threshold(self) -> float:
        """tau: the router is consulted only when the SLM's entropy is above it."""
        ...

    @property
    def needs_hidden_state(self) -> bool:
        """Whether ``RouterState.slm_hidden`` must be filled (costs nothing extra on the SLM pass)."""
        ...

    def wants_llm(self, state: RouterState) -> bool:
        """True to discard the SLM token and let the LLM decode this position."""
        ...


@runtime_checkable
class HandBackRouter(Protocol):
    """Optional extension of ``Router``: decides when the LLM hands control back to the SLM."""

    def hands_back(self, state: RouterState) -> bool:
        """Consulted after every kept LLM token (``state.entropy`` is the LLM's, ``slm_hidden`` None):
        True to return control to the SLM after it."""
        ...


def starts_on_llm(router: object) -> bool:
    """Whether the router never lets the SLM keep a token (its ``llm_only`` attribute, False if it has none).

    Such a request starts on the LLM: the SLM's pass over the prompt would only write a token to
    discard. Its tokens are those it would get starting on the SLM; only that pass (and its discard
    and switch in the stats) is saved.
    """
    return bool(getattr(router, "llm_only", False))


def hand_back_hook(router: object) -> Callable[[RouterState], bool] | None:
    """The router's ``hands_back`` method, or None for the default rule (hand back when H <= tau)."""
    method = getattr(router, "hands_back", None)
    return method if callable(method) else None
