"""LoRA fine-tuning: examples → token batches → a peft adapter, with checkpoints to resume from.

Plain PyTorch, no Trainer: the loop is short, and owning it gives exact control over what a
checkpoint holds and where a resumed run picks up (bench/finetune.py compares it with a bare
loop over the same batches). The database knows nothing here; the job service
(finetuning.py) passes callbacks for progress and cancellation.

- Device: CUDA with bfloat16 autocast when a GPU is there, the CPU in float32 otherwise;
  chosen when the run starts, never at import (a Celery parent that forks must not touch CUDA).
- Data order is a function of the seed and the epoch, so a run resumed at step k sees exactly
  the batches k+1 … that the first attempt would have seen.
- The loss is the weighted mean over examples of each example's mean token loss on the
  completion (prompt tokens are masked), so a corrected draft (weight 2) counts double.
"""

import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .hyperparameters import TrainingSettings, planned_epochs
from .inference.local import pick_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    messages: list[dict]
    completion: str
    weight: float = 1.0
    # False for an answer cut at a token limit: scored as far as it goes, without an end of turn it never had.
    # Only measuring uses such examples; training on them would teach the model to stop mid-sentence.
    ends: bool = True


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    tokens: int  # completion tokens: what tokens/s counts


@dataclass
class Progress:
    step: int
    total_steps: int
    loss: float
    tokens_per_second: float
    eta_seconds: float


class TrainingCancelled(Exception):
    pass


@dataclass
class TrainingResult:
    adapter_path: Path
    steps: int
    loss_history: list[list[float]] = field(default_factory=list)
    tokens_per_second: float = 0.0
    device: str = ""


def encode(tokenizer, example: Example, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of prompt + completion + end of turn, and labels that mask the prompt (-100).

    The prompt is the chat template with the generation prompt, exactly what generation feeds
    the model; the completion ends with the end-of-turn token at which generation stops (unless it
    was cut at a limit: Example.ends).
    """
    prompt = tokenizer.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(prompt, list):  # transformers 5 may return a BatchEncoding
        prompt = list(prompt["input_ids"])
    completion = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    completion += [tokenizer.eos_token_id] if example.ends else []
    completion = completion[: max_length - 1]
    prompt = prompt[-(max_length - len(completion)) :]  # a long prompt loses its start, never the answer
    return prompt + completion, [-100] * len(prompt) + completion


def batches_for_epoch(examples: list[Example], settings: TrainingSettings, epoch: int) -> list[list[Example]]:
    order = list(range(len(examples)))
    random.Random(settings.seed * 1000 + epoch).shuffle(order)
    size = settings.batch_size
    return [[examples[i] for i in order[start : start + size]] for start in range(0, len(order), size)]


def collate(tokenizer, examples: list[Example], max_length: int) -> Batch:
    encoded = [encode(tokenizer, example, max_length) for example in examples]
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, label) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(label)] = torch.tensor(label)
        attention_mask[row, : len(ids)] = 1
    weights = torch.tensor([example.weight for example in examples], dtype=torch.float32)
    return Batch(input_ids, attention_mask, labels, weights, tokens=int((labels != -100).sum()))


def completion_logits(model, batch: Batch, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) from the position before the batch's first completion token on: the prompts' own
    positions predict nothing the loss counts, and the vocabulary projection of a long prompt is a good part
    of a step's work. weighted_loss gives the same loss on these as on the whole width."""
    labelled = (batch.labels != -100).any(dim=0).nonzero()
    start = max(int(labelled[0]) - 1, 0) if len(labelled) else 0
    keep = batch.input_ids.shape[1] - start
    logits = model(
        input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), logits_to_keep=keep
    ).logits
    return logits, batch.labels[:, start:].to(device)


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each example's mean completion-token loss, then their weighted mean."""
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)), shifted_labels.reshape(-1), reduction="none"
    ).view(shifted_labels.shape)
    mask = (shifted_labels != -100).float()
    per_example = (token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    weights = weights.to(per_example.device)
    return (per_example * weights).sum() / weights.sum()


def load_trainable(base_model: str, adapter_path: str, settings: TrainingSettings, device: torch.device):
    """The base model in float32 (autocast gives bf16 compute on a GPU) with a trainable LoRA adapter:
    the parent version's adapter when it has one (training continues from it), a new one otherwise."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32, local_files_only=True)
    if adapter_path:
        model = PeftModel.from_pretrained(model, adapter_path, is_trainable=True)
    else:
        config = LoraConfig(
            r=settings.lora_rank,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    return model.to(device), tokenizer


def train(
    *,
    base_model: str,
    parent_adapter: str,
    examples: list[Example],
    settings: TrainingSettings,
    work_dir: Path,
    on_progress: Callable[[Progress], None] = lambda progress: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> TrainingResult:
    """Train, checkpointing into work_dir/checkpoint; resumes from it if it is there. The adapter ends up in
    work_dir/adapter. Raises TrainingCancelled when should_stop() says so (the checkpoint stays)."""
    if not examples:
        raise ValueError("Nothing to train on.")
    device, _ = pick_device()
    torch.manual_seed(settings.seed)
    model, tokenizer = load_trainable(base_model, parent_adapter, settings, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    epochs = planned_epochs(len(examples), settings)
    plan = [batch for epoch in range(epochs) for batch in batches_for_epoch(examples, settings, epoch)]
    total = len(plan)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total))
    checkpoint = work_dir / "checkpoint"
    start, history = _resume(checkpoint, model, optimizer, scheduler)
    if start:
        logger.info("resuming at step %d of %d from %s", start, total, checkpoint)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _NoAutocast()
    model.train()
    tokens_done, started = 0, time.perf_counter()
    for step in range(start + 1, total + 1):
        if should_stop():
            _save_checkpoint(checkpoint, model, optimizer, scheduler, step - 1, history)
            raise TrainingCancelled()
        batch = collate(tokenizer, plan[step - 1], settings.max_length)
        with autocast:
            logits, labels = completion_logits(model, batch, device)
        loss = weighted_loss(logits, labels, batch.weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        history.append([step, round(loss.item(), 5)])
        tokens_done += batch.tokens
        elapsed = time.perf_counter() - started
        rate = tokens_done / elapsed if elapsed > 0 else 0.0
        per_step = elapsed / (step - start)
        on_progress(Progress(step, total, history[-1][1], rate, per_step * (total - step)))
        if step % settings.checkpoint_every == 0 and step < total:
            _save_checkpoint(checkpoint, model, optimizer, scheduler, step, history)
    adapter = work_dir / "adapter"
    partial = work_dir / "adapter.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    shutil.rmtree(adapter, ignore_errors=True)
    partial.rename(adapter)
    elapsed = time.perf_counter() - started
    return TrainingResult(
        adapter_path=adapter,
        steps=total,
        loss_history=history,
        tokens_per_second=tokens_done / elapsed if elapsed > 0 else 0.0,
        device=device.type,
    )


class _NoAutocast:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _save_checkpoint(path: Path, model, optimizer, scheduler, step: int, history: list) -> None:
    """Adapter weights, optimizer and scheduler at `step`; written beside and renamed, so a kill mid-save
    leaves the previous checkpoint whole."""
    from peft import get_peft_model_state_dict

    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    torch.save(
        {
            "step": step,
            "history": history,
            "adapter": get_peft_model_state_dict(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            # dropout draws from these: a resumed run continues exactly as the first attempt would have
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        partial / "state.pt",
    )
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)


def _resume(path: Path, model, optimizer, scheduler) -> tuple[int, list]:
    state_file = path / "state.pt"
    if not state_file.is_file():
        return 0, []
    from peft import set_peft_model_state_dict

    state = torch.load(state_file, map_location="cpu", weights_only=False)
    set_peft_model_state_dict(model, state["adapter"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"], state["history"]
