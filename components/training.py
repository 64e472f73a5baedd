"""The training loop for the adapters: readable top to bottom, adapters only.

Why not ``transformers.Trainer``: its checkpoints hold the whole model (3 GB of frozen
ruT5-large per save) and its resume path expects that. Here every checkpoint and the
final output hold only what trains (LoRA A/B and the prompt), as safetensors; see
components/checkpoint.py.

- One optimizer step takes a global batch of ``batch_size x grad_accum_steps x ranks``
  examples, cut into micro-batches of ``batch_size`` dealt to the ranks in turn; an epoch's
  last, partial global batch still makes a step (a rank may get fewer micro-batches, or none).
- The step's loss is the mean over every target token of its global batch: each micro-batch
  adds its tokens' summed cross-entropy divided by the global batch's token count, and the
  ranks' gradients are summed. A short answer weighs as little as its few tokens wherever it
  falls, so batch 8, batch 4 x accumulation 2 and two ranks of batch 4 are one objective
  (transformers' ``num_items_in_batch``; a mean of micro-batch means is not).
- The epoch's order is drawn with ``seed + epoch`` and grouped by length over global batches
  (less padding), the same on every rank, so the ranks' shards are disjoint and cover the
  epoch once, and a resumed run sees exactly the batches an uninterrupted one would.
- Data-parallel (``world``, see components/distributed): every rank holds the whole model, the
  adapters' gradients are summed over the ranks once per optimizer step (a few MB: one
  all-reduce, with no overlap to gain from DDP's buckets, and exact for ranks left without
  a micro-batch), so the adapters stay identical on every rank. The validation loss is summed
  over the ranks' shards; rank 0 alone generates for the text metrics, writes checkpoints and
  the best adapter and reports, and every decision (best, early stopping, a non-finite loss)
  is taken from values all ranks share. Each rank draws its own dropout masks (seed + rank).
- Every ``eval_every`` steps (default: once per epoch) and at the end: validation loss,
  optionally generation metrics on a validation subset, a checkpoint (``last``), the
  adapter when the chosen metric improved (``best``), and early stopping after
  ``early_stopping_patience`` evaluations without improvement.
- Mixed precision: bf16 autocast where the GPU supports it (T5 v1.0 overflows in fp16),
  fp16 autocast with a grad scaler on older GPUs, fp32 on CPU. A non-finite loss stops
  the run (fp16: the step is skipped, and the run stops if it keeps happening); the last
  good checkpoint stays.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup
from transformers.trainer_pt_utils import LengthGroupedSampler

from components.checkpoint import LAST, read_checkpoint, restore_checkpoint, rng_state, save_checkpoint, write_file_atomically
from components.collator import PTDataCollator
from components.distributed.world import World
from components.errors import UserError
from components.generation import generate_predictions
from components.metrics import BEST_METRICS, PROTOCOL_METRICS, compute_metrics
from components.modeling import adapter_weights_bytes
from components.prompt_tuning import prompt_length_of
from components.settings import PRECISIONS, TrainingSettings

log = logging.getLogger(__name__)

MAX_SKIPPED_FP16_STEPS = 10
# report(title, series, value, iteration): where scalars go (ClearML in the train step).
Reporter = Callable[[str, str, float, int], None]
# on_checkpoint("last", directory): called after each checkpoint; the train step uploads it.
CheckpointHook = Callable[[str, Path], None]
BEST_ADAPTER = "adapter.safetensors"
BEST_IN_CHECKPOINT = "best_adapter.safetensors"


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
    eval_every: int | None = None  # optimizer steps between evaluations; None: once per epoch
    best_metric: str = "validation_loss"
    early_stopping_patience: int | None = None  # evaluations without improvement; None: never stop early
    generation_eval_samples: int = 0  # validation rows to generate for text metrics at each evaluation
    generation_max_new_tokens: int = 64


@dataclass
class TrainResult:
    steps: int
    total_steps: int
    precision: str
    best_metric: str
    best_value: float | None
    best_step: int | None
    stopped_early: bool
    skipped_steps: int
    history: list[dict] = field(default_factory=list)
    train_losses: list[list[float]] = field(default_factory=list)  # [step, loss] of every optimizer step
    learning_rates: list[list[float]] = field(default_factory=list)  # [step, learning rate the step used]


def lower_is_better(metric: str) -> bool:
    return metric == "validation_loss"


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def epoch_order(dataset, config: TrainConfig, global_batch: int, epoch: int) -> list[int]:
    """The epoch's example order, the same on every rank: drawn with ``seed + epoch``, grouped by length over global batches."""
    generator = torch.Generator().manual_seed(config.seed + epoch)
    if config.group_by_length:
        lengths = [len(ids) for ids in dataset["input_ids"]]
        return list(LengthGroupedSampler(global_batch, dataset=dataset, lengths=lengths, generator=generator))
    return list(RandomSampler(dataset, generator=generator))


def rank_micro_batches(order: list[int], step_in_epoch: int, config: TrainConfig, world: World) -> list[list[int]]:
    """This rank's micro-batches (example indices) of the epoch's optimizer step ``step_in_epoch``.

    The step's global batch is cut into chunks of ``batch_size``; chunk ``c`` goes to rank ``c % ranks``, so
    the ranks' shards are disjoint, cover the global batch, and at each micro-step hold neighbours in length.
    """
    global_batch = config.batch_size * config.grad_accum_steps * world.size
    indices = order[step_in_epoch * global_batch : (step_in_epoch + 1) * global_batch]
    chunks = [indices[start : start + config.batch_size] for start in range(0, len(indices), config.batch_size)]
    return chunks[world.rank :: world.size]


def evaluation_loader(model, tokenizer, dataset, batch_size: int, world: World = World()) -> DataLoader:
    """Batches of this rank's contiguous shard of a tokenized split, in order, with the prompt columns in the encoder mask."""
    collator = PTDataCollator(tokenizer, model=model, prompt_length=prompt_length_of(model))
    shard = dataset.shard(num_shards=world.size, index=world.rank, contiguous=True) if world.distributed else dataset
    return DataLoader(shard, batch_size=batch_size, collate_fn=collator, generator=torch.Generator())


def label_tokens(batch) -> int:
    return int((batch["labels"] != -100).sum())


@torch.no_grad()
def validation_loss(model, loader: DataLoader, precision: str, world: World = World()) -> float:
    """Token-weighted mean cross-entropy over a whole split (every rank's shard, summed in float64)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64)  # summed token losses, tokens
    for batch in loader:
        batch = batch.to(model.device)
        with _autocast(precision, model.device):
            loss = model(**batch).loss
        n = label_tokens(batch)
        sums += torch.tensor([loss.double().item() * n, n], dtype=torch.float64)
    model.train(was_training)
    total, tokens = world.sum_(sums).tolist()
    return total / max(tokens, 1)


def validation_generation_metrics(model, tokenizer, dataset, config: TrainConfig) -> dict[str, float]:
    """Text metrics on the first ``generation_eval_samples`` validation rows (texts decoded from the tokens)."""
    subset = dataset.select(range(min(config.generation_eval_samples, len(dataset))))
    sources = tokenizer.batch_decode(list(subset["input_ids"]), skip_special_tokens=True)
    references = tokenizer.batch_decode([[t for t in ids if t != -100] for ids in subset["labels"]], skip_special_tokens=True)
    predictions = generate_predictions(model, tokenizer, sources, max_new_tokens=config.generation_max_new_tokens, batch_size=config.eval_batch_size)
    metrics = compute_metrics(predictions, references)
    return {name: metrics[name] for name in PROTOCOL_METRICS}


def train_adapters(
    model,
    tokenizer,
    train_dataset,
    validation_dataset,
    config: TrainConfig,
    *,
    output_dir: Path,
    report: Reporter | None = None,
    on_checkpoint: CheckpointHook | None = None,
    resume_from: Path | None = None,
    world: World = World(),
) -> TrainResult:
    """Train the model's trainable parameters (the adapters); see the module docstring.

    Checkpoints go to ``output_dir/checkpoints/last`` (crash-safe, see components/checkpoint.py) and the best
    adapter to ``output_dir/checkpoints/best/adapter.safetensors`` (and into each checkpoint). ``resume_from`` is a
    checkpoint directory of an earlier run with the same configuration (see :func:`~components.checkpoint.newest_checkpoint`).
    In a data-parallel run every rank calls this with the same arguments; ``output_dir``, ``report``, ``on_checkpoint``
    and ``resume_from`` are used on rank 0 only (it sends the checkpoint to the others).
    """
    if config.best_metric not in BEST_METRICS:
        raise UserError(f"--best-metric must be one of {', '.join(BEST_METRICS)}, got {config.best_metric!r}.")
    if config.best_metric != "validation_loss" and not config.generation_eval_samples:
        raise UserError(f"--best-metric {config.best_metric} needs --generation-eval-samples above 0.")
    report = (report if world.is_main else None) or (lambda *args: None)
    on_checkpoint = (on_checkpoint if world.is_main else None) or (lambda *args: None)
    device = model.device
    precision = resolve_precision(config.precision, device)
    checkpoints_dir = output_dir / "checkpoints"
    last_dir, best_dir = checkpoints_dir / LAST, checkpoints_dir / "best"
    if world.is_main:
        best_dir.mkdir(parents=True, exist_ok=True)

    collator = PTDataCollator(tokenizer, model=model, prompt_length=prompt_length_of(model))
    global_batch = config.batch_size * config.grad_accum_steps * world.size
    steps_per_epoch = math.ceil(len(train_dataset) / global_batch)
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    eval_every = config.eval_every or steps_per_epoch
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable()
    model.config.use_cache = False
    eval_loader = evaluation_loader(model, tokenizer, validation_dataset, config.eval_batch_size, world)

    state = {
        "step": 0,
        "epoch": 0,
        "epoch_step": 0,
        "world_size": world.size,
        "best_value": None,
        "best_step": None,
        "bad_evaluations": 0,
        "skipped_steps": 0,
        "stopped_early": False,
        "history": [],
        "train_losses": [],
        "learning_rates": [],
    }
    torch.manual_seed(config.seed + world.rank)
    best_weights = None  # the best adapter so far, as written into each checkpoint (rank 0)
    checkpoint = world.broadcast(read_checkpoint(resume_from) if world.is_main and resume_from is not None else None)
    if checkpoint is not None:
        state = restore_checkpoint(checkpoint, model, optimizer, scheduler, scaler, rank=world.rank, world_size=world.size)
        if world.is_main:
            best_weights = checkpoint[BEST_IN_CHECKPOINT]
            write_file_atomically(best_dir / BEST_ADAPTER, best_weights)
            log.info("Resumed from %s at step %d (epoch %d, step %d of it).", resume_from, state["step"], state["epoch"], state["epoch_step"])

    def evaluate_and_checkpoint() -> bool:
        """Validate, checkpoint, keep the best; returns True when early stopping says stop."""
        nonlocal best_weights
        step = state["step"]
        values = {"validation_loss": validation_loss(model, eval_loader, precision, world)}
        if config.generation_eval_samples and world.is_main:
            values.update({f"validation_{k}": v for k, v in validation_generation_metrics(model, tokenizer, validation_dataset, config).items()})
        values = world.broadcast(values)  # every rank decides on rank 0's numbers
        for name, value in values.items():
            report(name.split("_", 1)[1] if name != "validation_loss" else "loss", "validation", value, step)
        state["history"].append({"step": step, **values})
        value = values[config.best_metric]
        best = state["best_value"]
        improved = best is None or (value < best if lower_is_better(config.best_metric) else value > best)
        if improved:
            state.update(best_value=value, best_step=step, bad_evaluations=0)
            best_weights = adapter_weights_bytes(model) if world.is_main else None
        else:
            state["bad_evaluations"] += 1
        log.info("step %d: %s %.4f (best %.4f at step %d)", step, config.best_metric, value, state["best_value"], state["best_step"])
        stop = config.early_stopping_patience is not None and state["bad_evaluations"] >= config.early_stopping_patience
        state["stopped_early"] = stop
        rng_states = world.gather(rng_state())
        if world.is_main:
            # The best adapter travels inside the checkpoint, so a run resumed on another machine keeps it;
            # best/ is written after the checkpoint, so it never holds a best the checkpoints do not know.
            save_checkpoint(
                checkpoints_dir, model, optimizer, scheduler, scaler, state, extra_files={BEST_IN_CHECKPOINT: best_weights}, rng_states=rng_states
            )
            if improved:
                write_file_atomically(best_dir / BEST_ADAPTER, best_weights)
            on_checkpoint("last", last_dir)
        world.barrier()  # no rank runs ahead of a checkpoint that may yet fail
        return stop

    log.info(
        "Training %d steps (%d per epoch) in %s, %d trainable tensors, %d rank(s).",
        total_steps,
        steps_per_epoch,
        precision,
        len(trainable),
        world.size,
    )
    model.train()
    progress = tqdm(total=total_steps, initial=state["step"], desc="train", unit="step", mininterval=2.0, disable=not world.is_main)
    stop = state.get("stopped_early", False) or state["step"] >= total_steps
    try:  # the bar's line ends before any error message is printed
        while not stop:
            order = epoch_order(train_dataset, config, global_batch, state["epoch"])
            for step_in_epoch in range(state["epoch_step"], steps_per_epoch):
                micro_batches = [collator([train_dataset[i] for i in chunk]) for chunk in rank_micro_batches(order, step_in_epoch, config, world)]
                step_loss_sum, step_tokens = backward_token_mean(model, micro_batches, trainable, world, precision, scaler)
                non_finite = not math.isfinite(step_loss_sum)
                if non_finite and precision != "fp16":
                    raise TrainingError(
                        f"The loss became {step_loss_sum} at step {state['step'] + 1} ({precision}); the last good checkpoint is in "
                        f"{last_dir}. Lower --learning-rate, then rerun with --resume."
                    )
                step_learning_rate = scheduler.get_last_lr()[0]
                if not non_finite:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                    scaler.step(optimizer)
                    scaler.update()
                else:  # fp16 overflow: skip the step and halve the loss scale, as the scaler does for inf gradients
                    state["skipped_steps"] += 1
                    scaler.update(scaler.get_scale() / 2)
                    if state["skipped_steps"] > MAX_SKIPPED_FP16_STEPS:
                        raise TrainingError(
                            f"The fp16 loss was not finite in {state['skipped_steps']} steps (T5 overflows in fp16); the last good "
                            f"checkpoint is in {last_dir}. Use --precision bf16 (or fp32), then rerun with --resume."
                        )
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                # The data position after this step: where a resumed run continues.
                last_of_epoch = step_in_epoch + 1 == steps_per_epoch
                state.update(
                    step=state["step"] + 1, **({"epoch": state["epoch"] + 1, "epoch_step": 0} if last_of_epoch else {"epoch_step": step_in_epoch + 1})
                )
                step_loss = step_loss_sum / step_tokens
                state["train_losses"].append([state["step"], step_loss])
                state["learning_rates"].append([state["step"], step_learning_rate])
                report("loss", "train", step_loss, state["step"])
                report("learning_rate", "lr", step_learning_rate, state["step"])
                progress.update(1)
                progress.set_postfix(loss=f"{step_loss:.4f}")
                if state["step"] % eval_every == 0 or state["step"] >= total_steps:
                    stop = evaluate_and_checkpoint() or state["step"] >= total_steps
                if stop:
                    break
    finally:
        progress.close()
    model.eval()
    return TrainResult(
        steps=state["step"],
        total_steps=total_steps,
        precision=precision,
        best_metric=config.best_metric,
        best_value=state["best_value"],
        best_step=state["best_step"],
        stopped_early=bool(state.get("stopped_early")),
        skipped_steps=state["skipped_steps"],
        history=state["history"],
        train_losses=state["train_losses"],
        learning_rates=state["learning_rates"],
    )


def _sum_over_ranks(world: World, local_sums: list[float]) -> list[float]:
    return world.sum_(torch.tensor(local_sums, dtype=torch.float64)).tolist()


def backward_token_mean(model, micro_batches: list, trainable: list[torch.Tensor], world: World, precision: str, scaler) -> tuple[float, int]:
    """Backpropagate the optimizer step's loss: the mean over every target token of its global batch (all ranks).

    Each micro-batch adds its tokens' summed cross-entropy divided by the global batch's token count, and the
    ranks' gradients are summed, so the trainable tensors hold the same gradient on every rank. Returns the
    step's summed token loss and its token count over all ranks; a non-finite sum (a nan or inf in any
    micro-batch of any rank, the same on every rank) means the step must not be taken.
    """
    [step_tokens] = _sum_over_ranks(world, [sum(label_tokens(batch) for batch in micro_batches)])
    loss_sum = 0.0
    for batch in micro_batches:
        with _autocast(precision, model.device):
            outputs = model(**batch.to(model.device))
        token_loss_sum = outputs.loss.float() * label_tokens(batch)  # the mean over the micro-batch's tokens, times them
        loss_sum += token_loss_sum.item()
        if torch.isfinite(token_loss_sum):
            scaler.scale(token_loss_sum / step_tokens).backward()
    [step_loss_sum] = _sum_over_ranks(world, [loss_sum])
    if world.distributed:
        _sum_gradients(trainable, world)
    return step_loss_sum, int(step_tokens)


def _sum_gradients(trainable: list[torch.Tensor], world: World) -> None:
    """Sum the adapters' gradients over the ranks in one all-reduce; a rank without a micro-batch adds zeros."""
    gradients = [p.grad if p.grad is not None else torch.zeros_like(p) for p in trainable]
    flat = world.sum_(torch.cat([g.reshape(-1) for g in gradients]))
    for parameter, gradient in zip(trainable, flat.split([p.numel() for p in trainable])):
        parameter.grad = gradient.view_as(parameter).clone()
