"""Sampling, stop strings, EOS and incremental detokenisation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from tiny import byte_level_tokenizer, metaspace_tokenizer, tiny_engine

from rstitch_engine import EntropyRouter, GenerationSettings, normalised_entropy
from rstitch_engine.decoding.detokenize import IncrementalDetokenizer, StopStringFilter, TextAssembler, _token_texts
from rstitch_engine.decoding.sampling import _entropy_numpy, _entropy_torch, choose_token, entropy_and_choice


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    engine = tiny_engine()
    settings = GenerationSettings(max_new_tokens=32, temperature=1.0, seed=7)
    first = engine.generate("The quick brown", settings, EntropyRouter(0.7))
    second = engine.generate("The quick brown", settings, EntropyRouter(0.7))
    assert first.token_ids == second.token_ids and first.text == second.text
    others = {engine.generate("The quick brown", settings.replace(seed=s), EntropyRouter(0.7)).token_ids
              for s in range(8, 12)}
    assert len(others | {first.token_ids}) > 1


def test_top_k_one_and_tiny_top_p_are_greedy():
    engine = tiny_engine()
    greedy = engine.generate("What is", GenerationSettings(max_new_tokens=24), EntropyRouter(0.7)).token_ids
    for extra in ({"top_k": 1}, {"top_p": 1e-9}):
        sampled = engine.generate(
            "What is", GenerationSettings(max_new_tokens=24, temperature=1.3, seed=1, **extra), EntropyRouter(0.7)
        )
        assert sampled.token_ids == greedy


def test_temperature_never_changes_the_routing_entropy():
    logits = torch.randn(300, dtype=torch.float64)
    assert normalised_entropy(logits) == normalised_entropy(logits.clone())
    engine = tiny_engine()
    cold = engine.generate("Café", GenerationSettings(max_new_tokens=1), EntropyRouter(0.7)).events[0]
    hot = engine.generate("Café", GenerationSettings(max_new_tokens=1, temperature=5.0, seed=0),
                          EntropyRouter(0.7)).events[0]
    assert cold.entropy == hot.entropy and cold.source == hot.source


def test_normalised_entropy_bounds_and_masked_tokens():
    assert normalised_entropy(torch.zeros(1000)) == pytest.approx(1.0)
    one_hot = torch.full((1000,), -math.inf)
    one_hot[3] = 0.0
    assert normalised_entropy(one_hot) == 0.0  # 0 log 0 is 0, not NaN
    half = torch.full((4,), -math.inf)
    half[:2] = 0.0
    assert normalised_entropy(half) == pytest.approx(0.5)  # log 2 / log 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_and_torch_entropy_paths_agree(dtype):
    generator = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 5.0, 30.0):
        logits = (torch.randn(49152, generator=generator) * scale).to(dtype)
        logits[:100] = -math.inf
        numpy_value, torch_value = _entropy_numpy(logits.numpy()), _entropy_torch(logits)
        reference = float(torch.special.entr(torch.softmax(logits.double(), -1)).sum())
        assert numpy_value == pytest.approx(reference, rel=1e-4, abs=1e-6)
        assert torch_value == pytest.approx(reference, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_greedy_entropy_and_choice_on_cpu_equal_the_separate_functions_exactly(dtype):
    """The CPU greedy path (one NumPy view, its argmax as the max) gives the very values of
    ``normalised_entropy`` and ``choose_token``: plain rows, rows with -inf (a grammar's mask), ties."""
    generator = torch.Generator().manual_seed(1)
    greedy = GenerationSettings()
    for scale in (0.1, 3.0, 30.0):
        logits = (torch.randn(5000, generator=generator) * scale).to(dtype)
        masked = logits.clone()
        masked[::3] = -math.inf
        tied = logits.clone()
        tied[[7, 4000]] = logits.max() + 1  # the first maximum wins, as torch.argmax
        for row, support in ((logits, None), (masked, int(torch.isfinite(masked).sum())), (tied, None)):
            expected = (normalised_entropy(row, support), choose_token(row, greedy, None))
            assert entropy_and_choice(row, greedy, None, support) == expected
    assert entropy_and_choice(tied, greedy, None)[1] == 7


def test_top_p_keeps_the_smallest_sufficient_set():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    settings = GenerationSettings(temperature=1.0, top_p=0.8, seed=0)
    draws = {choose_token(logits, settings, torch.Generator().manual_seed(i)) for i in range(200)}
    assert draws == {0, 1}


def test_multi_token_stop_string_stops_and_is_trimmed():
    engine = tiny_engine()
    free = engine.generate("The quick brown", GenerationSettings(max_new_tokens=40), EntropyRouter(0.7))
    # Pick a stop string that spans at least three tokens of the free-running output.
    start, end = 4, 7
    stop = engine.pair.tokenizer.decode(list(free.token_ids[start:end]))
    assert len(stop) >= 3
    stopped = engine.generate("The quick brown", GenerationSettings(max_new_tokens=40, stop=(stop,)),
                              EntropyRouter(0.7))
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(stop)]
    assert stop not in stopped.text
    assert stopped.token_ids == free.token_ids[: len(stopped.token_ids)]
    assert len(stopped.token_ids) <= end


def test_eos_ends_generation_with_stop_and_is_not_in_the_text():
    engine = tiny_engine()
    eos = engine.pair.tokenizer.eos_token_id
    for prompt, tau in [(p, t) for t in (0.8, 0.7, 0.9) for p in ("The quick brown", "What is 3 + 4?", "x")]:
        result = engine.generate(prompt, GenerationSettings(max_new_tokens=48), EntropyRouter(tau))
        if result.token_ids[-1] == eos:
            assert result.finish_reason == "stop" and "<eos>" not in result.text
            assert eos not in result.token_ids[:-1]
            return
        assert result.finish_reason == "length" and len(result.token_ids) == 48
    pytest.fail("no prompt reached EOS; choose other prompts")


def token_sequences(tokenizer) -> st.SearchStrategy[list[int]]:
    """Ids of arbitrary text (multi-byte characters split over tokens) mixed with whole tokens.

    Free random ids would mostly form invalid UTF-8 byte runs, which are outside the contract
    (SentencePiece's byte fallback replaces a whole invalid run with one U+FFFD per byte, depending
    on where the run starts), so they are drawn from text or from tokens that decode on their own.
    """
    whole = [i for i in range(len(tokenizer)) if "\ufffd" not in tokenizer.decode([i])]
    encoded = st.text(max_size=8).map(lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])
    pieces = st.lists(st.one_of(encoded, st.lists(st.sampled_from(whole), max_size=3)), max_size=8)
    return pieces.map(lambda parts: [i for part in parts for i in part])


@pytest.mark.parametrize("tokenizer_factory", [byte_level_tokenizer, metaspace_tokenizer])
@hsettings(max_examples=200, deadline=None)
@given(data=st.data())
def test_property_deltas_concatenate_to_the_full_decode(tokenizer_factory, data):
    tokenizer = tokenizer_factory()
    ids = data.draw(token_sequences(tokenizer))
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.push(i) for i in ids]
    text = "".join(deltas) + detokenizer.flush()
    full = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assume("\ufffd" not in full)  # only when the drawn text itself contains U+FFFD
    assert text == full
    assert all("\ufffd" not in delta for delta in deltas)


@pytest.mark.parametrize("tokenizer_factory", [byte_level_tokenizer, metaspace_tokenizer])
def test_multibyte_characters_and_leading_spaces_stream_correctly(tokenizer_factory):
    tokenizer = tokenizer_factory()
    sentence = " Größe: 東京 🙂 is naïve, jalapeño ½, жук."  # "жук" is unseen: byte fallback
    ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.push(i) for i in ids]
    assert "".join(deltas) + detokenizer.flush() == tokenizer.decode(ids)
    assert all("\ufffd" not in d for d in deltas)  # half a character is never emitted
    assert len(ids) > len([d for d in deltas if d])  # some tokens were held back (multi-token characters)


@pytest.mark.parametrize("tokenizer_factory", [byte_level_tokenizer, metaspace_tokenizer])
def test_a_tokenizer_s_requests_share_single_token_texts_and_each_is_that_token_s_decode(tokenizer_factory):
    tokenizer = tokenizer_factory()
    ids = tokenizer(" Größe: 東京 🙂 is naïve, жук.", add_special_tokens=False)["input_ids"]
    cold, warm = IncrementalDetokenizer(tokenizer), IncrementalDetokenizer(tokenizer)
    assert [cold.push(i) for i in ids] + [cold.flush()] == [warm.push(i) for i in ids] + [warm.flush()]
    remembered = _token_texts(tokenizer)
    assert remembered and remembered is _token_texts(tokenizer)
    for token_id, text in remembered.items():
        assert text == tokenizer.decode([token_id], skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_with_no_stop_strings_the_filter_passes_every_piece_through():
    stop_filter = StopStringFilter(())
    assert [stop_filter.push(p) for p in ("a", "", "<b", "c>")] == ["a", "", "<b", "c>"]
    assert stop_filter.flush() == "" and not stop_filter.stopped


@hsettings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.text(alphabet="ab<>/ ", max_size=4), max_size=12),
       stops=st.lists(st.text(alphabet="ab<>/", min_size=1, max_size=4), min_size=1, max_size=3))
def test_property_stop_filter_emits_the_text_before_the_first_stop(pieces, stops):
    full = "".join(pieces)
    stop_filter = StopStringFilter(tuple(stops))
    emitted = "".join(stop_filter.push(p) for p in pieces) + stop_filter.flush()
    positions = [full.find(s) for s in stops if s in full]
    first_end = min((full.find(s) + len(s) for s in stops if s in full), default=None)
    if positions:
        # The filter sees text piece by piece: it stops at the earliest *completed* stop string.
        assert stop_filter.stopped
        assert not any(s in emitted for s in stops)
        assert full.startswith(emitted) and len(emitted) < first_end
    else:
        assert emitted == full and not stop_filter.stopped


def test_text_assembler_releases_held_text_at_the_end():
    tokenizer = byte_level_tokenizer()
    ids = tokenizer("ends with <e", add_special_tokens=False)["input_ids"]
    assembler = TextAssembler(tokenizer, stop=("<eos-like>",))
    deltas = [assembler.push(i, is_last=(n == len(ids) - 1)) for n, i in enumerate(ids)]
    assert "".join(deltas) == "ends with <e" == assembler.text
