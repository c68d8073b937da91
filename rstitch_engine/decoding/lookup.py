"""Prompt lookup: the active model checks tokens copied from the context in the same pass.

Answers to retrieval prompts, multi-turn chats and tool results copy spans of their context
(names, numbers, whole phrases). Before a pass, ``propose`` looks for the most recent earlier
occurrence of the request's last n tokens (n = ``MAX_NGRAM`` down to ``MIN_NGRAM``) in x + y and
proposes up to k tokens that followed it. The active model is fed them after its unseen tokens in
the same forward pass (the model's runner, ``models.runner``), so the pass also yields its next-token distribution
after each proposed token.

Exactness. ``RequestDecoder.advance`` then applies Algorithm 1 position by position, exactly as
one pass per position would: the distribution after proposed tokens p_1..p_i is the one a plain
step would see only if p_1..p_i are the tokens the request kept, so it walks on while the kept
token equals the next proposed one and the same model stays in control, and stops at the first
position where either fails (a different token, an SLM token discarded, the LLM handing back, or
the end of the request). The proposal's cache entries beyond what was kept are dropped
(``ModelRunner.rewind``). Every decision is made on the same distribution as without lookup, so tokens and
sources are the same, up to floating-point summation order (a pass over several tokens is a
different kernel from a one-token pass; bit-equal in float64 on the tests' pairs).

When it is on: ``GenerationSettings.prompt_lookup_tokens`` > 0, or None (the default) with a policy
that turns it on (``policy.Policy.prompt_lookup_tokens``): the LLM alone (``quality='exact'``) does, since there it
is a pure speedup of the LLM's own answer; the stitched routers do not, since in Algorithm 1 the LLM
hands back as soon as it is confident, which is where copied spans are, and the measured gain was
small (docs/prompt-lookup.md).

Where it applies: greedy decoding (a sampled token would need a rejection rule that changes the
random stream), with or without a grammar (each position is masked by the grammar's state after the
kept tokens before it), a cache that can drop entries (dynamic, plain layers), and for the SLM
only with a router that needs no hidden state (R-Stitch+ reads the SLM's hidden state at every
position, and a pass gives it for the last fed token only). Otherwise a step is a plain step.

Cost. A pass over 1 + k tokens costs more than a one-token decode pass, and proposed tokens that
are not kept are that cost wasted, so k is bounded (``LLM_ALONE_LOOKUP_TOKENS`` by default) and
never more than the tokens the request may still keep.
"""

from __future__ import annotations

import numpy as np

LLM_ALONE_LOOKUP_TOKENS = 6
"""Proposal length where the LLM writes every token (the LLM-alone policies), on by default
there, chosen on the generalisation suite's tuning part (benchmarks/RESULTS.md, "Prompt lookup")."""
MAX_NGRAM = 3
"""The longest suffix of x + y looked up in the context."""
MIN_NGRAM = 1
"""The shortest: a single-token match proposes more that is then rejected, but on the tuning part it
confirmed more than it cost (against two-token matches at least, with each k from 2 to 8)."""


def propose(tokens: list[int], max_tokens: int, max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM
            ) -> tuple[int, ...]:
    """Up to ``max_tokens`` tokens that followed the most recent earlier occurrence of the longest
    suffix of ``tokens`` (of ``max_ngram`` down to ``min_ngram`` tokens) that occurs earlier; () if none.
    """
    if max_tokens <= 0 or len(tokens) <= min_ngram:
        return ()
    context = np.asarray(tokens, dtype=np.int64)
    for n in range(min(max_ngram, len(tokens) - 1), min_ngram - 1, -1):
        suffix = context[-n:]
        # windows[i] = context[i : i + n] for the starts i whose window ends before the suffix's last token
        windows = np.lib.stride_tricks.sliding_window_view(context[:-1], n)
        starts = np.flatnonzero((windows == suffix).all(axis=1))
        if starts.size:
            follower = int(starts[-1]) + n  # the most recent match; tokens from here followed it
            return tuple(tokens[follower: follower + max_tokens])
    return ()
