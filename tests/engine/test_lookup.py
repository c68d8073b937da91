"""Prompt lookup (``decoding.lookup``): proposed tokens checked in the active model's pass.

The tiny pairs are float64, so a pass over several tokens and one-token passes agree to ~1e-15 and
every greedy choice and routing decision is the same: tokens, sources, switches and catch-ups are
compared exactly with the same requests decoded without lookup. Random-weight models rarely repeat
their context, so most tests replace the n-gram lookup by an *oracle* that proposes the tokens the
request will really keep (optionally with one wrong token): that makes every walk through a
proposal long, and a wrong token shows the stop at the first mismatch. Each test also checks that
proposals were confirmed and passes saved, so a lookup that silently proposed nothing would fail.
"""

from __future__ import annotations

import pytest
from helpers import assert_cache_is_fresh_prefill
from tiny import tiny_pair

from rstitch_engine import EntropyRouter, GenerationSettings, InvalidSettingError, StitchEngine
from rstitch_engine.decoding import request as request_module
from rstitch_engine.decoding.constraints import Grammar
from rstitch_engine.decoding.lookup import propose
from rstitch_engine.decoding.policy import Routing
from rstitch_engine.decoding.routers import AlwaysLLMRouter

PROMPTS = ["The quick brown fox jumps over the lazy dog. The quick brown", "What is 3 + 4? It is 7. What is",
           "def add(a, b):", "Café 東京 Café", "When the small model", "x", "12 * 3", "lazy dog and the quick fox"]
TAUS = (0.5, 0.7, 0.8, -1.0, 2.0)
"""Stitched thresholds of several switch rates, the LLM alone (tau < 0) and the SLM alone (tau >= 1)."""
PLAIN = GenerationSettings(max_new_tokens=24, prompt_lookup_tokens=0)
LOOKUP = PLAIN.replace(prompt_lookup_tokens=4)
ROUTERS_DEFAULT = GenerationSettings(max_new_tokens=24)
"""``prompt_lookup_tokens=None``: the policy decides."""


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


@pytest.fixture(scope="module")
def plain_runs(pair):
    """Each (prompt, tau) decoded without lookup, passes one at a time."""
    engine = StitchEngine(pair, EntropyRouter(0.7), PLAIN, max_batch_size=1)
    return {(p, tau): engine.generate(p, PLAIN, EntropyRouter(tau)) for p in PROMPTS for tau in TAUS}


def signature(result):
    """Everything Algorithm 1 decides, and the catch-ups it causes."""
    stats = result.stats
    return (result.token_ids, tuple(e.source for e in result.events), tuple(e.took_over for e in result.events),
            tuple(e.hands_back for e in result.events), stats.switches_to_llm, stats.switches_to_slm,
            stats.discarded_slm_tokens, stats.slm.catchup_tokens, stats.llm.catchup_tokens, stats.finish_reason)


def passes(result) -> int:
    return result.stats.slm.forward_passes + result.stats.llm.forward_passes


@pytest.fixture
def oracle(monkeypatch, pair, plain_runs):
    """Replace the n-gram lookup by proposals of the tokens the request keeps without lookup.

    ``oracle(wrong_at=j)`` makes the j-th proposed token a wrong one (its successor in the vocabulary).
    """
    def install(tau: float, wrong_at: int | None = None) -> None:
        engine = StitchEngine(pair, EntropyRouter(tau), PLAIN)
        kept = {tuple(engine.encode(p)): list(plain_runs[p, tau].token_ids) for p in PROMPTS}

        def proposal(tokens: list[int], max_tokens: int, *args: object) -> tuple[int, ...]:
            prompt = next(ids for ids in kept if tuple(tokens[: len(ids)]) == ids)
            future = kept[prompt][len(tokens) - len(prompt):][:max_tokens]
            if wrong_at is not None and wrong_at < len(future):
                future[wrong_at] = (future[wrong_at] + 1) % pair.vocab_size
            return tuple(future)

        monkeypatch.setattr(request_module, "propose", proposal)
    return install


# ------------------------------------------------------------------------------- the n-gram lookup


def test_propose_copies_what_followed_the_most_recent_match_of_the_longest_suffix():
    context = [5, 6, 7, 1, 5, 6, 8, 2, 9, 5, 6]
    assert propose(context, 2) == (8, 2)  # [5, 6] last occurred at 4; [9, 5, 6] never did
    assert propose([1, 2, 3, 9, 2, 3, 7, 1, 2, 3], 3) == (9, 2, 3)  # the 3-gram [1, 2, 3] beats the later [2, 3]
    assert propose(context, 1) == (8,)


def test_propose_needs_a_match_of_min_ngram_tokens_and_room():
    assert propose([4, 1, 2, 3, 4], 2) == (1, 2)  # a one-token match ([4]) is enough by default
    assert propose([4, 1, 2, 3, 4], 2, min_ngram=2) == ()
    assert propose([1, 2, 3], 2) == ()  # nothing earlier matches
    assert propose([1, 2, 9, 1, 2], 0) == ()
    assert propose([1], 4) == ()
    assert propose([1, 2, 9, 1, 2], 10) == (9, 1, 2)  # the rest of the context, not past its end
    assert propose([3, 3, 3], 2) == (3,)  # an overlapping match still proposes what followed it


# ------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("max_batch_size", [1, 8])
@pytest.mark.parametrize("tau", TAUS)
def test_lookup_keeps_every_decision_and_saves_passes(pair, plain_runs, oracle, tau, max_batch_size):
    oracle(tau)
    engine = StitchEngine(pair, EntropyRouter(tau), PLAIN, max_batch_size=max_batch_size)
    results = ([engine.generate(p, LOOKUP) for p in PROMPTS] if max_batch_size == 1
               else engine.generate_batch(PROMPTS, LOOKUP))
    for prompt, result in zip(PROMPTS, results):
        plain = plain_runs[prompt, tau]
        assert signature(result) == signature(plain)
        assert result.text == plain.text
    assert sum(r.stats.confirmed_tokens for r in results) > len(PROMPTS)
    assert sum(passes(r) for r in results) < sum(passes(plain_runs[p, tau]) for p in PROMPTS)
    if max_batch_size > 1:
        assert max(r.stats.largest_batch for r in results) > 1


@pytest.mark.parametrize("wrong_at", [0, 1, 3])
def test_a_wrong_proposed_token_ends_the_walk_there(pair, plain_runs, oracle, wrong_at):
    tau = 0.7
    oracle(tau, wrong_at=wrong_at)
    engine = StitchEngine(pair, EntropyRouter(tau), PLAIN, max_batch_size=8)
    results = engine.generate_batch(PROMPTS, LOOKUP)
    for prompt, result in zip(PROMPTS, results):
        assert signature(result) == signature(plain_runs[prompt, tau])
        assert result.stats.confirmed_tokens < result.stats.proposed_tokens
    confirmed = sum(r.stats.confirmed_tokens for r in results)
    assert (confirmed == 0) == (wrong_at == 0)  # a wrong first token confirms nothing


def test_caches_hold_exactly_the_kept_tokens_after_every_step(pair, oracle):
    """Proposed tokens that were not kept leave no entry behind (``Slot.rewind``)."""
    tau = 0.7
    oracle(tau, wrong_at=2)
    engine = StitchEngine(pair, EntropyRouter(tau), PLAIN, max_batch_size=1)
    for prompt in PROMPTS[:4]:
        stream = engine.stream(prompt, LOOKUP)
        for _ in stream:
            for slot in stream.request.slots.values():
                assert slot.n_cached <= len(stream.request.tokens)
                assert_cache_is_fresh_prefill(slot, stream.request.tokens, atol=1e-10)
        assert stream.stats.confirmed_tokens > 0


def test_the_real_ngram_lookup_on_repetitive_prompts(pair, plain_runs):
    engine = StitchEngine(pair, EntropyRouter(0.7), PLAIN, max_batch_size=8)
    for tau in TAUS:
        results = engine.generate_batch(PROMPTS, LOOKUP, EntropyRouter(tau))
        assert [signature(r) for r in results] == [signature(plain_runs[p, tau]) for p in PROMPTS]
        assert sum(r.stats.proposed_tokens for r in results) > 0


# ------------------------------------------------------------------------------- under a grammar

SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no", "maybe"]},
                                           "count": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["answer", "count"], "additionalProperties": False}


def decisions(result):
    """What Algorithm 1 and the grammar decide. Catch-up counts are left out: without lookup a pass
    after forced tokens feeds them as a catch-up, with lookup they may have been fed as proposals."""
    stats = result.stats
    return (result.text, result.token_ids, tuple(e.source for e in result.events), tuple(e.took_over for e in result.events),
            tuple(e.hands_back for e in result.events), stats.switches_to_llm, stats.switches_to_slm,
            stats.discarded_slm_tokens, stats.forced_tokens, stats.finish_reason)


@pytest.mark.parametrize("max_batch_size", [1, 8])
@pytest.mark.parametrize("router", [EntropyRouter(0.5), EntropyRouter(0.7), EntropyRouter(-1.0), AlwaysLLMRouter()],
                         ids=["tau-0.5", "tau-0.7", "tau--1", "llm-alone"])
def test_lookup_under_a_grammar_keeps_every_decision_and_counts_forced_tokens(pair, monkeypatch, router, max_batch_size):
    """The oracle proposes the tokens each request keeps without lookup, so walks run through
    positions the JSON grammar forces (keys, quotes, the rest of an enum value)."""
    plain_settings = PLAIN.replace(max_new_tokens=40, grammar=Grammar.json_schema(SCHEMA))
    lone = StitchEngine(pair, router, plain_settings, max_batch_size=1)
    plain = {p: lone.generate(p, plain_settings, router) for p in PROMPTS}
    kept = {tuple(lone.encode(p)): list(plain[p].token_ids) for p in PROMPTS}

    def oracle(tokens: list[int], max_tokens: int, *args: object) -> tuple[int, ...]:
        prompt = next(ids for ids in kept if tuple(tokens[: len(ids)]) == ids)
        return tuple(kept[prompt][len(tokens) - len(prompt):][:max_tokens])

    forced_without_a_pass = []
    forced = request_module.RequestDecoder.forced

    def counting_forced(decoder):
        event = forced(decoder)
        forced_without_a_pass.append(event is not None)
        return event

    monkeypatch.setattr(request_module, "propose", oracle)
    monkeypatch.setattr(request_module.RequestDecoder, "forced", counting_forced)
    engine = StitchEngine(pair, router, plain_settings, max_batch_size=max_batch_size)
    settings = plain_settings.replace(prompt_lookup_tokens=4)
    results = ([engine.generate(p, settings, router) for p in PROMPTS] if max_batch_size == 1
               else engine.generate_batch(PROMPTS, settings, router))
    assert [decisions(r) for r in results] == [decisions(plain[p]) for p in PROMPTS]
    assert sum(r.stats.confirmed_tokens for r in results) > len(PROMPTS)
    assert sum(passes(r) for r in results) < sum(passes(plain[p]) for p in PROMPTS)
    forced_in_walks = sum(r.stats.forced_tokens for r in results) - sum(forced_without_a_pass)
    assert forced_in_walks > 0  # forced positions were decided inside walks, and counted


# ------------------------------------------------------------------------------- where it is off


def test_lookup_is_off_where_it_does_not_apply(pair, oracle):
    oracle(-1.0)
    engine = StitchEngine(pair, AlwaysLLMRouter(), PLAIN)
    sampled = engine.generate(PROMPTS[0], LOOKUP.replace(temperature=0.8, seed=3))
    assert sampled.stats.proposed_tokens == 0
    assert sampled.token_ids == engine.generate(PROMPTS[0], PLAIN.replace(temperature=0.8, seed=3)).token_ids
    assert engine.generate(PROMPTS[0], PLAIN).stats.proposed_tokens == 0  # 0 is off
    assert engine.generate(PROMPTS[0], LOOKUP).stats.confirmed_tokens > 0  # the control


def test_by_default_lookup_is_on_for_the_llm_alone_and_off_for_stitching(pair, plain_runs, oracle):
    oracle(-1.0)
    exact = StitchEngine(pair, settings=ROUTERS_DEFAULT, routing=Routing(quality="exact")).generate(PROMPTS[0])
    assert exact.stats.confirmed_tokens > 0
    assert signature(exact)[:2] == signature(plain_runs[PROMPTS[0], -1.0])[:2]
    for quality in ("balanced", "fast"):
        stitched = StitchEngine(pair, settings=ROUTERS_DEFAULT, routing=Routing(quality=quality)).generate(PROMPTS[0])
        assert stitched.stats.proposed_tokens == 0


def test_invalid_lookup_settings_are_refused():
    assert GenerationSettings().prompt_lookup_tokens is None
    for bad in (-1, 1.5, True, "4"):
        with pytest.raises(InvalidSettingError, match="prompt_lookup_tokens"):
            GenerationSettings(prompt_lookup_tokens=bad)
