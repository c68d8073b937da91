"""Distilling a draft: end to end on tiny random models, the loss, resuming, saving and loading."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
import torch.nn.functional as F
from tiny import byte_level_tokenizer, tiny_model
from transformers import PreTrainedTokenizerFast

import rstitch_engine.training.distill as distill_module
from rstitch_engine.errors import InvalidSettingError, ModelLoadError
from rstitch_engine.models.draft import (
    DRAFT_CONFIG,
    DRAFT_WEIGHTS,
    build_draft,
    draft_layer_parameters,
    load_draft,
    save_draft,
)
from rstitch_engine.training.distill import (
    DistillSettings,
    checkpoint_path,
    distill,
    distillation_loss,
    split_for_validation,
    teacher_data,
    train_draft,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A minimal chat template for the tiny tokenizer (it has none): role-tagged turns, then the prompt.
CHAT_TEMPLATE = (
    "{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<bos>assistant: {% endif %}"
)
PROMPTS = [
    [{"role": "user", "content": text}]
    for text in ("What is 3 + 4?", "The quick brown fox", "When the small model is unsure", "Café, naïve",
                 "def add(a, b):", "What is 12 * 3?")
]
FAST = DistillSettings(num_layers=2, max_new_tokens=8, generation_batch_size=4, top_k=16, steps=5, batch_size=3,
                       learning_rate=1e-2, warmup_steps=2, checkpoint_every=2)


@pytest.fixture(scope="module")
def tokenizer():
    base = byte_level_tokenizer()  # cached and shared: give this module its own copy with a template
    return PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, eos_token="<eos>", bos_token="<bos>",
                                   pad_token="<pad>", chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def llm(tokenizer):
    return tiny_model("qwen2", len(tokenizer), seed=2, layers=3, hidden=48)


@pytest.fixture(scope="module")
def data(llm, tokenizer, tmp_path_factory):
    return teacher_data(llm, tokenizer, PROMPTS, FAST, len(tokenizer), tmp_path_factory.mktemp("teacher"), False)


def _logits(model, ids=(5, 6, 7, 8, 9, 10)):
    with torch.no_grad():
        return model(input_ids=torch.tensor([list(ids)])).logits


def _quiet(_line: str) -> None:
    pass


def test_distil_end_to_end_and_the_saved_draft_reloads_to_identical_logits(llm, tokenizer, tmp_path):
    out = tmp_path / "draft"
    draft = distill(llm, tokenizer, PROMPTS, out, FAST, base_model="tiny-qwen2", progress=False, log=_quiet)
    assert {p.name for p in out.iterdir()} == {DRAFT_CONFIG, DRAFT_WEIGHTS, "work"}
    config = json.loads((out / DRAFT_CONFIG).read_text())
    assert config["layers"] == [0, 2] and config["base_model"] == "tiny-qwen2" and config["dtype"] == "bfloat16"
    assert config["training"]["prompts"] == len(PROMPTS) and config["training"]["settings"]["steps"] == FAST.steps
    reloaded = load_draft(out, llm)
    assert torch.equal(_logits(reloaded), _logits(draft))
    # Training changed the kept layers: the draft is not simply the LLM's layers 0 and 2.
    assert not torch.equal(_logits(draft), _logits(build_draft(llm, [0, 2])))
    # The draft shares the LLM's embeddings, norm and head; its own tensors are its layers only.
    assert reloaded.lm_head.weight is llm.lm_head.weight
    assert reloaded.model.embed_tokens.weight is llm.model.embed_tokens.weight
    assert reloaded.model.norm.weight is llm.model.norm.weight
    llm_tensors = {p.data_ptr() for p in llm.parameters()}
    own = {p.data_ptr() for p in draft_layer_parameters(reloaded).values()}
    assert {p.data_ptr() for p in reloaded.parameters()} - llm_tensors == own


def test_rerunning_distil_on_the_same_work_folder_gives_the_same_draft(llm, tokenizer, tmp_path):
    first = distill(llm, tokenizer, PROMPTS, tmp_path / "a", FAST, work_dir=tmp_path / "work", progress=False,
                    log=_quiet)
    lines: list[str] = []
    second = distill(llm, tokenizer, PROMPTS, tmp_path / "b", FAST, work_dir=tmp_path / "work", progress=False,
                     log=lines.append)
    assert any("resumed" in line for line in lines)  # training was not redone
    assert torch.equal(_logits(first), _logits(second))
    assert (tmp_path / "a" / DRAFT_WEIGHTS).read_bytes() == (tmp_path / "b" / DRAFT_WEIGHTS).read_bytes()


def test_teacher_data_is_the_llms_greedy_answer_with_its_top_k(llm, tokenizer, data):
    assert len(data) == len(PROMPTS)
    for sequence, prompt in zip(data, PROMPTS):
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
        assert sequence.ids[:sequence.prompt_length].tolist() == list(prompt_ids)
        answer = sequence.ids[sequence.prompt_length:]
        assert 1 <= len(answer) <= FAST.max_new_tokens and sequence.topk_ids.shape == (len(answer), FAST.top_k)
        logprobs = torch.log_softmax(_logits(llm, sequence.ids.tolist())[0].float(), dim=-1)
        for j, token in enumerate(answer.tolist()):
            row = logprobs[sequence.prompt_length + j - 1]
            assert int(row.argmax()) == token == int(sequence.topk_ids[j, 0])  # greedy answer
            torch.testing.assert_close(sequence.topk_logprobs[j], row[sequence.topk_ids[j]], rtol=0, atol=1e-5)


def test_loss_goes_down_on_a_fixed_batch(llm, data, tmp_path):
    settings = DistillSettings(num_layers=2, steps=12, batch_size=len(data), learning_rate=1e-2, warmup_steps=1,
                               checkpoint_every=100)  # every batch is the whole data: one fixed objective
    draft = build_draft(llm, [0, 2])
    history = train_draft(draft, data, settings, llm.config.vocab_size, tmp_path, progress=False, log=_quiet)
    assert len(history) == 12 and history[0] > 0.5
    assert history[-1] < 0.25 * history[0]
    assert not draft.training and not any(p.requires_grad for p in draft.parameters())


def test_validation_answers_never_enter_a_batch_and_their_loss_is_logged(llm, data, tmp_path, monkeypatch):
    settings = DistillSettings(num_layers=2, steps=4, batch_size=2, learning_rate=1e-2, warmup_steps=1,
                               checkpoint_every=2, validation_share=0.34)
    train, held = split_for_validation(len(data), settings)
    assert len(held) == 2 and sorted(train + held) == list(range(len(data)))
    assert split_for_validation(len(data), settings) == (train, held)  # seeded
    seen: list[int] = []
    real_loss_on = distill_module._loss_on

    def recording_loss_on(draft, batch, vocab_size, device, greedy_weight):
        if draft.training:  # training batches only; validation runs in eval mode
            seen.extend(next(i for i, s in enumerate(data) if s is item) for item in batch)
        return real_loss_on(draft, batch, vocab_size, device, greedy_weight)

    monkeypatch.setattr(distill_module, "_loss_on", recording_loss_on)
    lines: list[str] = []
    train_draft(build_draft(llm, [0, 2]), data, settings, llm.config.vocab_size, tmp_path, progress=False,
                log=lines.append)
    assert len(seen) == settings.steps * settings.batch_size and not set(seen) & set(held)
    assert [line.split(":")[0] for line in lines] == ["step 2", "step 4"]
    assert all("validation loss" in line and "(2 answers)" in line for line in lines)


def test_bfloat16_training_reduces_the_loss_and_keeps_float32_master_weights(llm, data, tmp_path):
    llm32 = copy.deepcopy(llm).float()  # autocast lowers float32 matmuls (the tiny models are float64)
    histories = {}
    for compute_dtype in ("float32", "bfloat16"):
        settings = DistillSettings(num_layers=2, steps=10, batch_size=len(data), learning_rate=1e-2, warmup_steps=1,
                                   checkpoint_every=100, compute_dtype=compute_dtype)
        draft = build_draft(llm32, [0, 2])
        (tmp_path / compute_dtype).mkdir()
        histories[compute_dtype] = train_draft(draft, data, settings, llm.config.vocab_size, tmp_path / compute_dtype,
                                               progress=False, log=_quiet)
        assert histories[compute_dtype][-1] < 0.5 * histories[compute_dtype][0]
        assert all(p.dtype == torch.float32 for p in draft_layer_parameters(draft).values())
    assert histories["float32"][0] != histories["bfloat16"][0]  # the bf16 matmuls really ran


class _Interrupted(Exception):
    pass


def test_resuming_from_a_checkpoint_gives_the_same_weights_as_one_run(llm, data, tmp_path, monkeypatch):
    settings = DistillSettings(num_layers=2, steps=6, batch_size=2, learning_rate=1e-2, warmup_steps=2,
                               checkpoint_every=3)
    vocab = llm.config.vocab_size
    (tmp_path / "whole").mkdir()
    (tmp_path / "resumed").mkdir()
    whole = build_draft(llm, [0, 2])
    whole_history = train_draft(whole, data, settings, vocab, tmp_path / "whole", progress=False, log=_quiet)

    real_save = distill_module._save_checkpoint

    def save_then_stop(path, own, optimizer, schedule, step, history):
        real_save(path, own, optimizer, schedule, step, history)
        if step == 3:
            raise _Interrupted  # the process dies right after the first checkpoint

    monkeypatch.setattr(distill_module, "_save_checkpoint", save_then_stop)
    with pytest.raises(_Interrupted):
        train_draft(build_draft(llm, [0, 2]), data, settings, vocab, tmp_path / "resumed", progress=False, log=_quiet)
    monkeypatch.setattr(distill_module, "_save_checkpoint", real_save)
    resumed = build_draft(llm, [0, 2])  # a fresh process: the draft starts again from the LLM's layers
    lines: list[str] = []
    history = train_draft(resumed, data, settings, vocab, tmp_path / "resumed", progress=False, log=lines.append)
    assert lines == [f"resumed from {checkpoint_path(tmp_path / 'resumed', settings)} at step 3"]
    assert history == whole_history
    for name, p in draft_layer_parameters(whole).items():
        assert torch.equal(p, draft_layer_parameters(resumed)[name]), name


def test_runs_with_other_settings_share_the_work_folder_but_never_resume_each_other(llm, data, tmp_path):
    first = DistillSettings(num_layers=2, steps=2, batch_size=2, learning_rate=1e-2, warmup_steps=1,
                            checkpoint_every=2)
    vocab = llm.config.vocab_size
    first_history = train_draft(build_draft(llm, [0, 2]), data, first, vocab, tmp_path, progress=False, log=_quiet)
    other = DistillSettings(**{**first.__dict__, "steps": 4, "greedy_weight": 1.0})
    assert checkpoint_path(tmp_path, other) != checkpoint_path(tmp_path, first)
    lines: list[str] = []
    assert len(train_draft(build_draft(llm, [0, 2]), data, other, vocab, tmp_path, progress=False,
                           log=lines.append)) == 4
    assert not any(line.startswith("resumed") for line in lines)  # trained from the start
    # How often checkpoints are written is not part of the recipe: the first run resumes (nothing left to do).
    more_often = DistillSettings(**{**first.__dict__, "checkpoint_every": 1})
    assert checkpoint_path(tmp_path, more_often) == checkpoint_path(tmp_path, first)
    lines.clear()
    assert train_draft(build_draft(llm, [0, 2]), data, more_often, vocab, tmp_path, progress=False,
                       log=lines.append) == first_history
    assert lines == [f"resumed from {checkpoint_path(tmp_path, first)} at step 2"]


def test_distilling_from_an_existing_draft_starts_from_its_weights(llm, tokenizer, tmp_path):
    start = tmp_path / "start"
    distill(llm, tokenizer, PROMPTS, start, FAST, work_dir=tmp_path / "work", progress=False, log=_quiet)
    settings = DistillSettings(**{**FAST.__dict__, "init_from": str(start), "greedy_weight": 1.0, "steps": 2})
    assert settings.draft_layers(3) == (0, 2)
    out = tmp_path / "tuned"
    lines: list[str] = []
    distill(llm, tokenizer, PROMPTS, out, settings, work_dir=tmp_path / "work-tuned", progress=False,
            log=lines.append)
    # The first step's loss is the starting draft's loss on the first batch: training began from its weights.
    data = teacher_data(llm, tokenizer, PROMPTS, FAST, len(tokenizer), tmp_path / "work", False)
    first_batch = distill_module._batch_order(split_for_validation(len(data), settings)[0], settings,
                                              [len(s.ids) for s in data])[0]
    expected = distill_module._loss_on(load_draft(start, llm), [data[i] for i in first_batch], len(tokenizer),
                                       torch.device("cpu"), 1.0)
    recorded = torch.load(checkpoint_path(tmp_path / "work-tuned", settings), weights_only=True)["history"][0]
    assert recorded == round(expected.item(), 5)
    config = json.loads((out / DRAFT_CONFIG).read_text())
    assert config["layers"] == [0, 2] and config["training"]["settings"]["init_from"] == str(start)
    assert config["training"]["init_from_training"] == json.loads((start / DRAFT_CONFIG).read_text())["training"]
    assert not torch.equal(_logits(load_draft(out, llm)), _logits(load_draft(start, llm)))
    with pytest.raises(InvalidSettingError, match="either layers or init_from"):
        DistillSettings(layers=(0, 1), init_from=str(start))


def test_distillation_loss_is_zero_for_the_teacher_itself_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(7, 50) * 3  # [N, V]
    top = torch.log_softmax(logits, dim=-1).topk(10, dim=-1)
    assert distillation_loss(logits, top.indices, top.values).item() == 0.0
    other = logits + 0.5 * torch.randn(7, 50)
    assert distillation_loss(other, top.indices, top.values).item() > 1e-3
    # Only the top-k and the lumped rest count: moving mass around inside the rest changes nothing.
    shuffled = logits.clone()
    for row in range(7):  # permute each row's logits outside the teacher's top-k among themselves
        rest = torch.ones(50, dtype=torch.bool).scatter(0, top.indices[row], False).nonzero().squeeze(1)
        shuffled[row, rest] = logits[row, rest.flip(0)]
    torch.testing.assert_close(distillation_loss(shuffled, top.indices, top.values),
                               distillation_loss(logits, top.indices, top.values), rtol=0, atol=1e-6)


def test_distillation_loss_with_the_whole_vocabulary_is_the_full_kl():
    torch.manual_seed(1)
    teacher, student = torch.randn(5, 40, dtype=torch.float64), torch.randn(5, 40, dtype=torch.float64)
    top = torch.log_softmax(teacher, dim=-1).topk(40, dim=-1)
    full = F.kl_div(torch.log_softmax(student, -1), torch.log_softmax(teacher, -1), log_target=True,
                    reduction="batchmean")
    torch.testing.assert_close(distillation_loss(student, top.indices, top.values.float()), full.float(),
                               rtol=1e-4, atol=1e-4)


def test_the_greedy_target_is_cross_entropy_on_the_teachers_token_blended_with_the_kl():
    torch.manual_seed(2)
    teacher, student = torch.randn(6, 30), torch.randn(6, 30)
    top = torch.log_softmax(teacher, dim=-1).topk(8, dim=-1)
    greedy = top.indices[:, 0]
    kl = distillation_loss(student, top.indices, top.values)
    cross_entropy = F.cross_entropy(student, greedy)
    torch.testing.assert_close(distillation_loss(student, top.indices, top.values, greedy, 1.0), cross_entropy,
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(distillation_loss(student, top.indices, top.values, greedy, 0.25),
                               0.75 * kl + 0.25 * cross_entropy, rtol=0, atol=1e-6)
    assert distillation_loss(student, top.indices, top.values, greedy, 0.0) == kl  # the tokens are unused at w = 0
    with pytest.raises(InvalidSettingError, match="greedy tokens"):
        distillation_loss(student, top.indices, top.values, None, 0.5)


def test_training_on_the_greedy_target_makes_the_draft_write_the_teachers_tokens(llm, data, tmp_path):
    settings = DistillSettings(num_layers=2, steps=12, batch_size=len(data), learning_rate=1e-2, warmup_steps=1,
                               checkpoint_every=100, greedy_weight=1.0)
    draft = build_draft(llm, [0, 2])

    def agreement() -> float:
        hits = total = 0
        for sequence in data:
            predicted = _logits(draft, sequence.ids.tolist())[0, sequence.prompt_length - 1:-1].argmax(-1)
            hits += int((predicted == sequence.ids[sequence.prompt_length:]).sum())
            total += len(predicted)
        return hits / total

    before = agreement()
    history = train_draft(draft, data, settings, llm.config.vocab_size, tmp_path, progress=False, log=_quiet)
    assert history[-1] < 0.25 * history[0]
    assert agreement() > max(before, 0.9)


def test_a_draft_refuses_an_llm_of_another_shape(llm, tmp_path):
    from rstitch_engine.models.draft import DraftConfig, llm_fingerprint

    draft = build_draft(llm, [0, 2])
    save_draft(draft, tmp_path, DraftConfig("tiny-qwen2", (0, 2), llm_fingerprint(llm)))
    wider = tiny_model("qwen2", llm.config.vocab_size, seed=2, layers=3, hidden=32)
    with pytest.raises(ModelLoadError, match=r"distilled from 'tiny-qwen2'.*hidden_size: draft expects 48, LLM has 32"):
        load_draft(tmp_path, wider)
    deeper = tiny_model("qwen2", llm.config.vocab_size, seed=2, layers=4, hidden=48)
    with pytest.raises(ModelLoadError, match="num_hidden_layers: draft expects 3, LLM has 4"):
        load_draft(tmp_path, deeper)
    # Same shapes, other head weights (the fingerprint is a sum of |head|: a 1% change shows).
    other_weights = tiny_model("qwen2", llm.config.vocab_size, seed=2, layers=3, hidden=48)
    with torch.no_grad():
        other_weights.lm_head.weight.mul_(1.01)
    with pytest.warns(UserWarning, match="other weights"):
        load_draft(tmp_path, other_weights)


def test_a_draft_of_all_layers_is_the_llm(llm):
    everything = build_draft(llm, range(3))
    ids = (3, 1, 4, 1, 5, 9, 2, 6)
    assert torch.equal(_logits(everything, ids), _logits(llm, ids))
    assert not torch.equal(_logits(build_draft(llm, [0, 2]), ids), _logits(llm, ids))


def test_bad_layers_and_settings_are_refused(llm):
    with pytest.raises(InvalidSettingError, match="draft layers"):
        build_draft(llm, [0, 3])
    with pytest.raises(InvalidSettingError, match="draft layers"):
        build_draft(llm, [])
    with pytest.raises(InvalidSettingError, match="steps"):
        DistillSettings(steps=0)
    with pytest.raises(InvalidSettingError, match="compute_dtype"):
        DistillSettings(compute_dtype="float16")
    with pytest.raises(InvalidSettingError, match="validation_share"):
        DistillSettings(validation_share=0.5)
    with pytest.raises(InvalidSettingError, match="greedy_weight"):
        DistillSettings(greedy_weight=1.5)


def test_length_windows_keep_every_answer_once_per_epoch_and_batch_similar_lengths():
    lengths = [random.Random(i).choice([20, 40, 1000]) for i in range(96)]
    settings = DistillSettings(steps=12, batch_size=8, length_window=4)  # one epoch = 12 batches = 3 windows
    grouped = distill_module._batch_order(range(96), settings, lengths)
    assert sorted(i for batch in grouped for i in batch) == list(range(96))
    window_of = {i: n // 4 for n, batch in enumerate(grouped) for i in batch}
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in grouped)
    plain = distill_module._batch_order(range(96), DistillSettings(steps=12, batch_size=8, length_window=1), lengths)
    assert spread < sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain) / 2
    assert plain == distill_module._batch_order(range(96), DistillSettings(steps=12, batch_size=8))  # no lengths
    shuffled = [i for batch in plain for i in batch]  # the same seeded shuffle, windows of 32 answers sorted
    assert all(window_of[i] == position // 32 for position, i in enumerate(shuffled))
