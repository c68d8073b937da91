"""The router protocol: what a router sees (``RouterState``) and what it decides.

The engine applies Algorithm 1 of the R-Stitch paper. With H the normalised entropy of the active
model's next-token distribution and tau the router's threshold:

* H <= tau: the token is kept; if the LLM was active, control returns to the SLM.
* H > tau and the SLM is active: the router is consulted; if it ``wants_llm``, the SLM token is
  discarded and the LLM decodes that same position.
* H > tau and the LLM is active: the LLM's token is kept and the LLM stays active.

After every kept LLM token the router's ``hands_back`` decides whether control returns to the SLM;
the default (``RouterBase``) is exactly the two rules above (H <= tau). A looser hand-back (trace
replay, ``EntropyRouter.hand_back_threshold``) overrides it.

A learned router (R-Stitch+) implements the same protocol with ``needs_hidden_state = True``.

Every member the engine uses is declared in ``Router``; ``RouterBase`` gives the defaults
(``hands_back``: the first rule above, H <= tau; ``llm_only`` False; no LLM opening; no hidden state), so a router
only states what it changes. ``check_router`` refuses an object that lacks a member, before any pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ..errors import InvalidSettingError


@dataclass(frozen=True)
class RouterState:
    """What a router sees at an uncertain SLM position (or, for ``hands_back``, after an LLM token)."""

    entropy: float
    """Normalised entropy of the active model's untempered next-token distribution."""
    context_length: int
    """Tokens before the position being decoded (prompt + kept output)."""
    proposed_token: int
    """The token the active model chose there."""
    slm_hidden: torch.Tensor | None
    """[hidden_size] SLM last-layer hidden state at the previous position; None unless asked for."""


@runtime_checkable
class Router(Protocol):
    """Decides whether an uncertain SLM token is handed to the LLM, and when the LLM hands back."""

    @property
    def threshold(self) -> float:
        """tau: the router is consulted only when the SLM's entropy is above it."""
        ...

    @property
    def needs_hidden_state(self) -> bool:
        """Whether ``RouterState.slm_hidden`` must be filled (costs nothing extra on the SLM pass)."""
        ...

    @property
    def llm_only(self) -> bool:
        """True if the SLM never keeps a token: requests then start on the LLM (the SLM's pass over the
        prompt would only write a token to discard), the SLM never runs, ``hands_back`` is never
        consulted, and no entropy is computed unless ``GenerationSettings.token_entropy`` asks."""
        ...

    @property
    def llm_opening_tokens(self) -> int:
        """The LLM writes the first this many output tokens whatever the entropies (requests start on it and it
        keeps control through them); Algorithm 1 applies from the last of them on. 0: from the first token."""
        ...

    def wants_llm(self, state: RouterState) -> bool:
        """True to discard the SLM token and let the LLM decode this position."""
        ...

    def hands_back(self, state: RouterState) -> bool:
        """Consulted after every kept LLM token (``state.entropy`` is the LLM's, ``slm_hidden`` None):
        True to return control to the SLM after it."""
        ...


class RouterBase:
    """The defaults of a ``Router``: Algorithm 1's hand-back rule (H <= tau), no hidden state, not LLM-only,
    and every uncertain SLM token goes to the LLM. Subclasses set ``threshold`` and override what they change."""

    threshold: float
    needs_hidden_state: bool = False
    llm_only: bool = False
    llm_opening_tokens: int = 0

    def wants_llm(self, state: RouterState) -> bool:
        return True

    def hands_back(self, state: RouterState) -> bool:
        return state.entropy <= self.threshold


def check_router(router: object) -> Router:
    """``router`` if it has every member of ``Router``; else a clear ``InvalidSettingError``."""
    if not isinstance(router, Router):
        missing = [name for name in ("threshold", "needs_hidden_state", "llm_only", "llm_opening_tokens", "wants_llm",
                                     "hands_back")
                   if not hasattr(router, name)]
        raise InvalidSettingError(
            f"{type(router).__name__} is not a router: it lacks {', '.join(missing)} "
            "(subclass rstitch_engine.RouterBase for the defaults)")
    return router
