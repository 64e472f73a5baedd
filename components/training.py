"""The training loop for the adapters: readable top to bottom, adapters only.

Why not ``transformers.Trainer``: its checkpoints hold the whole model (3 GB of frozen
ruT5-large per save) and its resume path expects that. Here every checkpoint and the
final output hold only what trains (LoRA A/B and the prompt), as safetensors.

One optimizer step = ``grad_accum_steps`` micro-batches of ``batch_size`` examples.
Mixed precision: bf16 autocast where the GPU supports it (T5 v1.0 overflows in fp16),
fp16 autocast with a grad scaler on older GPUs, fp32 on CPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup
from transformers.trainer_pt_utils import LengthGroupedSampler

from components.collator import PTDataCollator
from components.errors import UserError
from components.prompt_tuning import prompt_length_of
from components.settings import TrainingSettings

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# report(title, series, value, iteration): where scalars go (ClearML in the train step).
Reporter = Callable[[str, str, float, int], None]


class TrainingError(UserError):
    """Training cannot go on (e.g. a non-finite loss); the message says why and what to change."""


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto``: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."""
    if requested not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}.")
    if device.type != "cuda":
        if requested in ("bf16", "fp16"):
            raise UserError(f"--precision {requested} needs a CUDA GPU; use --precision fp32 (or auto) on CPU.")
        return "fp32"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return requested


@dataclass
class TrainConfig:
    batch_size: int = TrainingSettings.batch_size
    grad_accum_steps: int = TrainingSettings.grad_accum_steps
    learning_rate: float = TrainingSettings.learning_rate
    weight_decay: float = TrainingSettings.weight_decay
    epochs: float = TrainingSettings.epochs
    max_steps: int | None = None
    warmup_ratio: float = TrainingSettings.warmup_ratio
    gradient_checkpointing: bool = TrainingSettings.gradient_checkpointing
    precision: str = "auto"
    seed: int = TrainingSettings.seed
    eval_batch_size: int = 16
    group_by_length: bool = True


@dataclass
class TrainResult:
    steps: int
    epochs_completed: float
    train_loss: float
    validation_loss: float | None
    precision: str
    history: list[dict] = field(default_factory=list)


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _loader(dataset, collator, batch_size: int, *, shuffle_seed: int | None, group_by_length: bool) -> DataLoader:
    if shuffle_seed is None:
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    generator = torch.Generator().manual_seed(shuffle_seed)
    if group_by_length:
        sampler = LengthGroupedSampler(batch_size, dataset=dataset, lengths=[len(ids) for ids in dataset["input_ids"]], generator=generator)
    else:
        sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collator)


@torch.no_grad()
def validation_loss(model, loader: DataLoader, precision: str) -> float:
    """Token-weighted mean cross-entropy over a whole split."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in loader:
        batch = batch.to(model.device)
        with _autocast(precision, model.device):
            loss = model(**batch).loss
        n = int((batch["labels"] != -100).sum())
        total, tokens = total + loss.float().item() * n, tokens + n
    model.train(was_training)
    return total / max(tokens, 1)


def train_adapters(model, tokenizer, train_dataset, validation_dataset, config: TrainConfig, report: Reporter | None = None) -> TrainResult:
    """Train the model's trainable parameters (the adapters) and return the loss history."""
    report = report or (lambda *args: None)
    device = model.device
    precision = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    collator = PTDataCollator(tokenizer, model=model, prompt_length=prompt_length_of(model))
    steps_per_epoch = max(1, math.ceil(len(train_dataset) / config.batch_size) // config.grad_accum_steps)
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable()
    model.config.use_cache = False
    eval_loader = _loader(validation_dataset, collator, config.eval_batch_size, shuffle_seed=None, group_by_length=False) if validation_dataset else None

    log.info("Training %d steps (%d per epoch) in %s, %d trainable tensors.", total_steps, steps_per_epoch, precision, len(trainable))
    model.train()
    history: list[dict] = []
    step, epoch, running, micro = 0, 0, 0.0, 0
    val_loss = None
    progress = tqdm(total=total_steps, desc="train", unit="step", mininterval=2.0)
    while step < total_steps:
        loader = _loader(train_dataset, collator, config.batch_size, shuffle_seed=config.seed + epoch, group_by_length=config.group_by_length)
        for batch in loader:
            with _autocast(precision, device):
                loss = model(**batch.to(device)).loss
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"The loss became {loss.item()} at step {step + 1} ({precision}); lower --learning-rate or use --precision bf16/fp32."
                )
            scaler.scale(loss / config.grad_accum_steps).backward()
            running += loss.item() / config.grad_accum_steps
            micro += 1
            if micro % config.grad_accum_steps:
                continue
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            report("loss", "train", running, step)
            report("learning_rate", "lr", scheduler.get_last_lr()[0], step)
            history.append({"step": step, "train_loss": running})
            progress.update(1)
            progress.set_postfix(loss=f"{running:.4f}")
            running = 0.0
            if step % steps_per_epoch == 0 or step == total_steps:
                if eval_loader is not None:
                    val_loss = validation_loss(model, eval_loader, precision)
                    report("loss", "validation", val_loss, step)
                    history[-1]["validation_loss"] = val_loss
                    log.info("step %d: validation loss %.4f", step, val_loss)
            if step >= total_steps:
                break
        epoch += 1
    progress.close()
    model.eval()
    return TrainResult(
        steps=step,
        epochs_completed=step / steps_per_epoch,
        train_loss=history[-1]["train_loss"],
        validation_loss=val_loss,
        precision=precision,
        history=history,
    )
