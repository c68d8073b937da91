"""``rstitch distill``: train a draft SLM that matches an LLM's next-token distributions.

Two stages, each resumable from ``work_dir``:

1. **Teacher data.** The LLM answers every prompt of the pool (greedy, batched ``generate``). At
   each answer position we keep the LLM's top-k log-probabilities over the shared vocabulary; the
   remaining probability mass is one lumped bucket. Saved in chunks (``teacher-NNNN.pt``).
2. **Training.** The draft (``draft.build_draft``: kept LLM layers on the LLM's embeddings, norm
   and head) is trained, kept layers only, to minimise KL(teacher || draft) over the top-k tokens
   plus the lumped rest, at answer positions (optionally blended with cross-entropy on the token the
   teacher wrote, ``greedy_weight``; ``init_from`` starts from an existing draft instead). AdamW, linear warm-up then cosine decay, gradient
   clipping. A checkpoint (``checkpoint-<recipe>.pt``, one per set of training settings) is written
   every ``checkpoint_every`` steps.

Everything random (pool, batch order) comes from ``seed``; on one machine a rerun gives the same
draft. Checkpoints and teacher chunks are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..errors import InvalidSettingError
from ..models.draft import (
    DraftConfig,
    build_draft,
    default_layers,
    draft_layer_parameters,
    llm_fingerprint,
    load_draft,
    round_to_storage,
    save_draft,
)
from ..models.hardware import native_bfloat16
from ..models.pair import shared_vocab_size

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class DistillSettings:
    """How to distil a draft; the defaults are the ones used for the shipped SmolLM2 draft."""

    num_layers: int = 4
    """Decoder layers in the draft (taken from the LLM: the first n-1 and the last, ``draft.default_layers``)."""
    layers: tuple[int, ...] | None = None
    """Exact LLM layer indices to start from; overrides ``num_layers``."""
    init_from: str | None = None
    """A draft folder to start from instead of the LLM's own layers (fine-tuning an existing draft,
    e.g. with another ``greedy_weight``); the draft keeps that folder's layer indices."""
    max_new_tokens: int = 64
    """Length cap of the teacher's answers."""
    generation_batch_size: int = 16
    top_k: int = 64
    """Teacher log-probs kept per position; the rest of the mass is one bucket."""
    greedy_weight: float = 0.0
    """Weight w of the greedy target in the loss (1 - w) * KL(teacher || draft) + w * CE(teacher's greedy
    token). KL (w = 0) makes the draft copy the LLM's distribution, uncertainty included; the greedy
    target (w = 1) makes the draft's probability of a token estimate the chance that it *is* the
    LLM's greedy token, so under greedy decoding its entropy flags likely disagreement rather than the
    LLM's own uncertainty (``distillation_loss``)."""
    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 5e-4
    length_window: int = 32
    """Batches sorted by length together (``_batch_order``); 1 keeps the plain shuffled order."""
    warmup_steps: int = 50
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    checkpoint_every: int = 100
    seed: int = 0
    storage_dtype: str = "bfloat16"
    compute_dtype: str = "auto"
    """Matmul precision while training: 'bfloat16' (autocast; master weights stay float32),
    'float32', or 'auto' = bfloat16 where the device computes it natively (CUDA, or a CPU with
    AVX512-BF16/AMX), else float32. Teacher answers always come from the LLM as loaded."""
    validation_share: float = 0.03
    """Share of the pool's answers held out of training; their loss is logged at each checkpoint."""

    def __post_init__(self) -> None:
        for name in ("num_layers", "max_new_tokens", "generation_batch_size", "top_k", "steps", "batch_size",
                     "checkpoint_every", "length_window"):
            if getattr(self, name) < 1:
                raise InvalidSettingError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise InvalidSettingError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.compute_dtype not in ("auto", "float32", "bfloat16"):
            raise InvalidSettingError(f"compute_dtype must be auto, float32 or bfloat16, got {self.compute_dtype!r}")
        if self.init_from is not None and self.layers is not None:
            raise InvalidSettingError("give either layers or init_from (which brings its own layers), not both")
        if not 0 <= self.greedy_weight <= 1:
            raise InvalidSettingError(f"greedy_weight must be in [0, 1], got {self.greedy_weight}")
        if not 0 <= self.validation_share < 0.5:
            raise InvalidSettingError(f"validation_share must be in [0, 0.5), got {self.validation_share}")

    def draft_layers(self, num_llm_layers: int) -> tuple[int, ...]:
        if self.init_from is not None:
            return DraftConfig.read(Path(self.init_from).expanduser()).layers
        return self.layers if self.layers is not None else default_layers(num_llm_layers, self.num_layers)

    def training_recipe(self) -> dict[str, Any]:
        """Every setting that shapes the trained weights (not how often checkpoints are written), as JSON values."""
        recipe = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        del recipe["checkpoint_every"]
        return recipe


@dataclass
class TeacherSequence:
    """One prompt and the LLM's answer, with the LLM's top-k log-probs at each answer position."""

    ids: torch.Tensor
    """[P + R] int64: prompt then answer (ends at EOS or the length cap)."""
    prompt_length: int
    topk_ids: torch.Tensor
    """[R, k] int64: the LLM's k likeliest tokens at each answer position."""
    topk_logprobs: torch.Tensor
    """[R, k] float32: their log-probabilities over the shared vocabulary."""

    def to_dict(self) -> dict[str, Any]:
        return {"ids": self.ids, "prompt_length": self.prompt_length, "topk_ids": self.topk_ids,
                "topk_logprobs": self.topk_logprobs}


def distill(
    llm: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[Messages],
    out_dir: Path,
    settings: DistillSettings = DistillSettings(),
    *,
    base_model: str = "",
    work_dir: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    pool_recipe: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """Distil a draft for ``llm`` and save it to ``out_dir``; returns the draft (equal to the saved one).

    ``pool_recipe`` (how ``prompts`` were made, e.g. ``prompt_pool``'s arguments) is saved with the
    training record, so the pool can be rebuilt and checked later."""
    started = time.perf_counter()
    work_dir = work_dir if work_dir is not None else out_dir / "work"
    work_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = shared_vocab_size(tokenizer, llm, llm)
    data = teacher_data(llm, tokenizer, prompts, settings, vocab_size, work_dir, progress)
    log(f"teacher data: {len(data)} answers, {sum(len(s.topk_ids) for s in data)} answer tokens")
    layers = settings.draft_layers(len(llm.get_decoder().layers))
    started_from: DraftConfig | None = None  # read before saving: out_dir may be the init_from folder itself
    if settings.init_from is not None:
        started_from = DraftConfig.read(Path(settings.init_from).expanduser())
        draft = load_draft(settings.init_from, llm)
    else:
        draft = build_draft(llm, layers)
    history = train_draft(draft, data, settings, vocab_size, work_dir, progress, log)
    round_to_storage(draft, settings.storage_dtype)
    held_out = [data[i] for i in split_for_validation(len(data), settings)[1]]
    held_out_loss = (validation_loss(draft, held_out, vocab_size, settings.batch_size, settings.greedy_weight)
                     if held_out else None)
    config = DraftConfig(
        base_model=base_model or str(getattr(llm.config, "_name_or_path", "")),
        layers=tuple(layers),
        fingerprint=llm_fingerprint(llm),
        dtype=settings.storage_dtype,
        training={
            "settings": {**settings.training_recipe(), "checkpoint_every": settings.checkpoint_every},
            "prompts": len(prompts),
            **({"pool": pool_recipe} if pool_recipe is not None else {}),
            "answer_tokens": sum(len(s.topk_ids) for s in data),
            "final_loss": history[-1] if history else None,
            "validation_answers": len(held_out),
            "validation_loss": None if held_out_loss is None else round(held_out_loss, 5),
            "seconds": round(time.perf_counter() - started, 1),
            # How the starting draft was made, so a chain of fine-tunes keeps its whole recipe.
            **({"init_from_training": started_from.training} if started_from is not None else {}),
        },
    )
    save_draft(draft, out_dir, config)
    log(f"saved the draft ({len(layers)} layers from {list(layers)}) to {out_dir}")
    return draft


# ----------------------------------------------------------------------------- stage 1: teacher data


def teacher_data(
    llm: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[Messages],
    settings: DistillSettings,
    vocab_size: int,
    work_dir: Path,
    progress: bool = True,
) -> list[TeacherSequence]:
    """The LLM's greedy answers with top-k log-probs.

    Answers already saved in ``work_dir`` (any ``teacher-*.pt`` chunk) are reused by prompt, so
    growing a pool only answers the new prompts. New prompts are answered in batches of similar
    length (less padding), in an order fixed by their lengths.
    """
    encoded = [_render(tokenizer, messages) for messages in prompts]
    known = _saved_answers(work_dir)
    missing = sorted({tuple(ids) for ids in encoded} - known.keys(), key=lambda ids: (len(ids), ids))
    batches = [missing[i:i + settings.generation_batch_size] for i in range(0, len(missing), settings.generation_batch_size)]
    first_new = len(list(work_dir.glob("teacher-*.pt")))
    for number, batch in enumerate(tqdm(batches, desc="teacher answers", unit="batch", disable=not progress)):
        sequences = _answer_batch(llm, tokenizer, [list(ids) for ids in batch], settings, vocab_size)
        chunk = work_dir / f"teacher-{first_new + number:04d}.pt"
        partial = chunk.with_suffix(".partial")
        torch.save({"sequences": [s.to_dict() for s in sequences]}, partial)
        partial.replace(chunk)
        known.update(zip(batch, sequences))
    return [known[tuple(ids)] for ids in encoded]


def _saved_answers(work_dir: Path) -> dict[tuple[int, ...], TeacherSequence]:
    """Every answer saved in ``work_dir``, by its prompt's token ids."""
    answers = {}
    for chunk in sorted(work_dir.glob("teacher-*.pt")):
        for item in torch.load(chunk, weights_only=True)["sequences"]:
            sequence = TeacherSequence(**item)
            answers[tuple(sequence.ids[:sequence.prompt_length].tolist())] = sequence
    return answers


@torch.inference_mode()
def _answer_batch(
    llm: PreTrainedModel, tokenizer: Any, prompts: list[list[int]], settings: DistillSettings, vocab_size: int
) -> list[TeacherSequence]:
    device = next(llm.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    # Left padding: every prompt ends at column ``width``, where the answers start.
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    out = llm.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=settings.max_new_tokens,
        do_sample=False, pad_token_id=pad_id, output_logits=True, return_dict_in_generate=True,
        top_p=None, top_k=None, temperature=None,
    )
    answers = out.sequences[:, width:]  # [B, R_max]
    logits = torch.stack(out.logits, dim=1)[..., :vocab_size].float()  # [B, R_max, V]: raw, untempered
    eos_ids = _eos_ids(llm, tokenizer)
    sequences = []
    for row, prompt in enumerate(prompts):
        length = _answer_length(answers[row].tolist(), eos_ids)
        logprobs = torch.log_softmax(logits[row, :length], dim=-1)
        top = logprobs.topk(settings.top_k, dim=-1)
        sequences.append(TeacherSequence(
            ids=torch.tensor(prompt + answers[row, :length].tolist()),
            prompt_length=len(prompt),
            topk_ids=top.indices.cpu(),
            topk_logprobs=top.values.cpu(),
        ))
    return sequences


def _answer_length(answer: list[int], eos_ids: set[int]) -> int:
    """Tokens up to and including the first EOS (generate pads finished rows after it)."""
    for position, token in enumerate(answer):
        if token in eos_ids:
            return position + 1
    return len(answer)


def _eos_ids(llm: PreTrainedModel, tokenizer: Any) -> set[int]:
    ids = llm.generation_config.eos_token_id
    found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return found


def _render(tokenizer: Any, messages: Messages) -> list[int]:
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(rendered["input_ids"])


# ----------------------------------------------------------------------------- stage 2: training


def distillation_loss(
    student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
    greedy_tokens: torch.Tensor | None = None, greedy_weight: float = 0.0,
) -> torch.Tensor:
    """Mean over positions of (1 - w) * KL(teacher || student) + w * CE(greedy token), w = ``greedy_weight``.

    student_logits: [N, V]; topk_ids, topk_logprobs: [N, k]; greedy_tokens: [N], the token the
    teacher wrote at each position (needed when w > 0). The KL is taken on the teacher's top-k plus
    one lumped bucket holding the probability both put outside it, so it is a true KL between two
    (k+1)-way distributions and is 0 exactly when the student matches the teacher on the top-k. The
    cross-entropy is a proper scoring rule for "which token will the teacher write": minimised, the
    student's probability of a token is its estimate that the teacher writes that token.
    """
    student = torch.log_softmax(student_logits.float(), dim=-1)
    kl = _topk_kl(student, topk_ids, topk_logprobs) if greedy_weight < 1 else student.new_zeros(())
    if greedy_weight == 0:
        return kl
    if greedy_tokens is None:
        raise InvalidSettingError("a greedy_weight above 0 needs the teacher's greedy tokens")
    cross_entropy = -student.gather(-1, greedy_tokens[:, None]).mean()
    return (1 - greedy_weight) * kl + greedy_weight * cross_entropy


def _topk_kl(student: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per the docstring above, averaged over positions; student: [N, V] log-probs."""
    student_top = student.gather(-1, topk_ids)  # [N, k]
    teacher_rest = _log_rest(topk_logprobs)
    student_rest = _log_rest(student_top)
    teacher_p = topk_logprobs.exp()
    kl_top = (teacher_p * (topk_logprobs - student_top)).sum(-1)
    kl_rest = teacher_rest.exp() * (teacher_rest - student_rest)
    return (kl_top + kl_rest).mean()


def _log_rest(top_logprobs: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(top))), clamped away from log(0)."""
    covered = torch.logsumexp(top_logprobs, dim=-1).clamp(max=-1e-6)
    return torch.log1p(-covered.exp()).clamp(min=-30.0)


def train_draft(
    draft: PreTrainedModel,
    data: Sequence[TeacherSequence],
    settings: DistillSettings,
    vocab_size: int,
    work_dir: Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[float]:
    """Train the draft's own layers in place, resuming from this recipe's checkpoint in ``work_dir``
    (``checkpoint_path``). Returns the loss per step.

    ``settings.validation_share`` of the answers (a seeded choice) never enter a batch; their mean
    loss is logged at each checkpoint, so over-fitting shows while training runs.
    """
    own = _trainable_draft_layers(draft)
    optimizer = torch.optim.AdamW(own.values(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(settings.warmup_steps, settings.steps))
    checkpoint = checkpoint_path(work_dir, settings)
    start_step, history = _resume(checkpoint, own, optimizer, schedule, log)
    train, validation = split_for_validation(len(data), settings)
    batches = _batch_order(train, settings, [len(sequence.ids) for sequence in data])
    device = next(draft.parameters()).device
    precision = _training_precision(device, settings.compute_dtype)
    draft.train()
    bar = tqdm(range(start_step, settings.steps), desc="distilling", unit="step", disable=not progress,
               initial=start_step, total=settings.steps)
    try:
        for step in bar:
            with precision:
                loss = _loss_on(draft, [data[i] for i in batches[step]], vocab_size, device, settings.greedy_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(own.values(), settings.max_grad_norm)
            optimizer.step()
            schedule.step()
            history.append(round(loss.item(), 5))
            bar.set_postfix(loss=f"{sum(history[-20:]) / len(history[-20:]):.4f}")
            done = step + 1
            if done % settings.checkpoint_every == 0 or done == settings.steps:
                _save_checkpoint(checkpoint, own, optimizer, schedule, done, history)
                if validation:
                    with precision:
                        held = validation_loss(draft, [data[i] for i in validation], vocab_size, settings.batch_size,
                                               settings.greedy_weight)
                    log(f"step {done}: train loss {sum(history[-50:]) / len(history[-50:]):.4f} "
                        f"(last 50 steps), validation loss {held:.4f} ({len(validation)} answers)")
    finally:
        draft.eval()
        for p in draft.parameters():
            p.requires_grad_(False)
    return history


def _trainable_draft_layers(draft: PreTrainedModel) -> dict[str, torch.nn.Parameter]:
    """Freeze everything the draft shares with the LLM; only its own layers train."""
    own = draft_layer_parameters(draft)
    for p in draft.parameters():
        p.requires_grad_(False)
    for p in own.values():
        p.requires_grad_(True)
    return own


def _resume(checkpoint: Path, own: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
            schedule: torch.optim.lr_scheduler.LRScheduler, log: Callable[[str], None]) -> tuple[int, list[float]]:
    """Load this recipe's checkpoint into the weights, optimiser and schedule: (next step, loss history)."""
    if not checkpoint.is_file():
        return 0, []
    state = torch.load(checkpoint, weights_only=True)
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(state["weights"][name])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    log(f"resumed from {checkpoint} at step {state['step']}")
    return state["step"], list(state["history"])


def split_for_validation(count: int, settings: DistillSettings) -> tuple[list[int], list[int]]:
    """(training indices, validation indices): a seeded ``validation_share`` of ``range(count)`` is held out."""
    indices = list(range(count))
    held = sorted(random.Random(f"validation-{settings.seed}").sample(indices, int(count * settings.validation_share)))
    held_set = set(held)
    return [i for i in indices if i not in held_set], held


@torch.no_grad()
def validation_loss(draft: PreTrainedModel, data: Sequence[TeacherSequence], vocab_size: int, batch_size: int,
                    greedy_weight: float = 0.0) -> float:
    """Mean distillation loss per answer position over ``data`` (no training)."""
    was_training = draft.training
    draft.eval()
    device = next(draft.parameters()).device
    total, positions = 0.0, 0
    for start in range(0, len(data), batch_size):
        batch = list(data[start:start + batch_size])
        count = sum(len(s.topk_ids) for s in batch)
        total += _loss_on(draft, batch, vocab_size, device, greedy_weight).item() * count
        positions += count
    draft.train(was_training)
    return total / max(positions, 1)


def _training_precision(device: torch.device, compute_dtype: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where asked (or, for 'auto', where the device has native bf16 matmuls); else nothing."""
    wanted = compute_dtype == "bfloat16" or (compute_dtype == "auto" and native_bfloat16(device))
    return torch.autocast(device.type, dtype=torch.bfloat16) if wanted else contextlib.nullcontext()


def _loss_on(draft: PreTrainedModel, batch: list[TeacherSequence], vocab_size: int, device: torch.device,
             greedy_weight: float = 0.0) -> torch.Tensor:
    width = max(len(s.ids) for s in batch)
    # Right padding; the pads sit after every answer position, so causal attention never sees them.
    input_ids = torch.zeros(len(batch), width, dtype=torch.long)
    for row, sequence in enumerate(batch):
        input_ids[row, :len(sequence.ids)] = sequence.ids
    hidden = draft.get_decoder()(input_ids=input_ids.to(device)).last_hidden_state  # [B, T, H]
    # The answer token at position P + j is predicted from position P + j - 1.
    rows = torch.cat([torch.full((len(s.topk_ids),), r) for r, s in enumerate(batch)])
    cols = torch.cat([torch.arange(len(s.topk_ids)) + s.prompt_length - 1 for s in batch])
    logits = draft.get_output_embeddings()(hidden[rows.to(device), cols.to(device)])[:, :vocab_size]  # [N, V]
    topk_ids = torch.cat([s.topk_ids for s in batch]).to(device)
    topk_logprobs = torch.cat([s.topk_logprobs for s in batch]).to(device)
    greedy_tokens = torch.cat([s.ids[s.prompt_length:] for s in batch]).to(device)  # [N]: what the teacher wrote
    return distillation_loss(logits, topk_ids, topk_logprobs, greedy_tokens, greedy_weight)


def _batch_order(indices: Sequence[int], settings: DistillSettings,
                 lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Each step's batch: seeded shuffles of ``indices`` (the training answers), epoch after epoch.

    With ``lengths`` (tokens per answer's sequence) and ``settings.length_window`` > 1, each run of
    ``length_window`` batches of an epoch is sorted by length, cut into batches, and those batches
    shuffled: a batch pads to similar lengths (one 1,000-token RAG prompt no longer pads 15 short
    questions), while every answer still comes once per epoch in a seeded order.
    """
    rng = random.Random(settings.seed)
    size, window = settings.batch_size, settings.length_window
    order: list[int] = []
    while len(order) < settings.steps * size:
        epoch = list(indices)
        rng.shuffle(epoch)
        if lengths is not None and window > 1:  # windows stay inside one epoch
            epoch = [i for start in range(0, len(epoch), size * window)
                     for i in _sorted_batches(epoch[start:start + size * window], size, lengths, rng)]
        order += epoch
    return [order[i * size:(i + 1) * size] for i in range(settings.steps)]


def _sorted_batches(window: list[int], size: int, lengths: Sequence[int], rng: random.Random) -> list[int]:
    """``window`` sorted by length, cut into batches of ``size``, the batches shuffled, flattened."""
    ordered = sorted(window, key=lambda i: lengths[i])
    batches = [ordered[i:i + size] for i in range(0, len(ordered), size)]
    rng.shuffle(batches)
    return [i for batch in batches for i in batch]


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def checkpoint_path(work_dir: Path, settings: DistillSettings) -> Path:
    """Where a run keeps its checkpoint: one file per training recipe, so runs with other settings share the
    folder's teacher answers without ever resuming each other's training."""
    recipe = json.dumps(settings.training_recipe(), sort_keys=True)
    return work_dir / f"checkpoint-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}.pt"


def _save_checkpoint(path: Path, own: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                     schedule: Any, step: int, history: list[float]) -> None:
    partial = path.with_suffix(".partial")
    torch.save({
        "weights": {name: p.detach().clone() for name, p in own.items()},
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "step": step,
        "history": history,
    }, partial)
    partial.replace(path)
