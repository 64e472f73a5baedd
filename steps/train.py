"""Step 3, train: LoRA + prompt tuning on the frozen base model -> an adapter (a few MB).

    python steps/train.py --local --preprocess-task-id offline-... --model tiny --epochs 3

Defaults are the published configuration: rank 8 on q/v, a 20-token prompt, batch
8 x accumulation 4, lr 3e-4, weight decay 0.01, 10 epochs, gradient checkpointing,
mixed precision on a GPU. Training and validation loss are reported as scalars. The
adapter of the best validation evaluation (LoRA + prompt as safetensors, never the
base) is the task's output model.

Checkpoints (adapters, optimizer, scheduler, RNG, step; no base weights) are uploaded
as the ``checkpoint`` artifact at every evaluation. A train task that is aborted or
preempted on an agent continues from its own checkpoint when enqueued again; locally,
``--resume`` continues from ``--output-dir``; ``--resume-from-task-id`` continues another
train task's run (clone it, set the id, enqueue).

Data-parallel: ``--nproc-per-node N`` trains on N ranks of this machine (one per GPU, or N CPU
processes with gloo): this process is rank 0, owns the task and starts the others. The step
also runs under ``torchrun --nproc-per-node N steps/train.py ...``, where rank 0 owns the task
and the other ranks never touch ClearML. See components/distributed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from clearml_adapter import tracking
from clearml_adapter.connection import prepare_clearml, running_on_agent
from cli.options import ArgumentParser, add_settings
from components.checkpoint import newest_checkpoint
from components.data import TOKENIZATION_FILE
from components.distributed.launch import LocalRanks
from components.distributed.world import World, join_world, leave_world, world_from_environment
from components.errors import UserError
from components.modeling import apply_adapter_settings, load_adapter_weights, load_base_model, load_tokenizer, parameter_stats, save_adapter
from components.settings import AdapterSettings
from components.threads import use_cpu_threads_for
from components.training import TrainConfig, evaluation_loader, resolve_precision, train_adapters, validation_loss
from steps.config import TrainOptions

CHECKPOINT_ARTIFACT = "checkpoint"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    add_settings(parser, TrainOptions)
    tracking.add_common_arguments(parser)
    return parser


def load_splits(directory: Path, model: str):
    from datasets import load_from_disk

    summary_path = directory / TOKENIZATION_FILE
    if not summary_path.exists():
        raise UserError(f"{directory} holds no {TOKENIZATION_FILE}; --data-dir must be the tokenized folder written by the preprocess step.")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if summary["model"] != model:
        raise UserError(f"The data was tokenized for {summary['model']!r} but --model is {model!r}; preprocess with the same --model.")
    if "max_input_length" not in summary:
        raise UserError(f"{summary_path} records no max_input_length: preprocess the data again with this version of steps/preprocess.py.")
    return load_from_disk(str(directory / "train")), load_from_disk(str(directory / "validation")), summary["max_input_length"]


def adapter_settings(args: argparse.Namespace) -> AdapterSettings:
    if args.lora_rank < 1 or args.prompt_length < 0:
        raise UserError(
            f"--lora-rank must be at least 1 and --prompt-length at least 0 (0: LoRA only); got {args.lora_rank} and {args.prompt_length}."
        )
    return AdapterSettings(args.lora_rank, args.lora_alpha, args.lora_dropout, args.prompt_length)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The training loop's settings: every option of the same name (the others keep the loop's defaults)."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name in vars(args)})


def tokenized_input(args: argparse.Namespace) -> Path:
    return tracking.upstream_input(
        args.preprocess_task_id, "tokenized", args.data_dir, ("--preprocess-task-id", "--data-dir"), "a folder of tokenized splits"
    )


def run(args: argparse.Namespace, task) -> dict | None:
    """The process that owns the task (rank 0 of its machine): the inputs, the machine's other ranks, training, the outputs."""
    adapter_settings(args)
    if args.nproc_per_node < 1:
        raise UserError(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}.")
    started_by = world_from_environment()
    if args.nproc_per_node > 1 and started_by.distributed:
        raise UserError(
            f"This process is already rank {started_by.rank} of {started_by.size} (torchrun started it); "
            "leave --nproc-per-node at 1 and give torchrun --nproc-per-node instead."
        )
    if args.nodes > 1 and started_by.distributed:
        raise UserError("--nodes starts ClearML agents' machines; under torchrun give torchrun --nnodes instead.")
    node_rank = join_nodes(args, task)
    # Before the model loads, so that a wrong --resume fails at once; the first machine's rank 0 sends the checkpoint to all.
    resume_from = checkpoint_to_resume(args, task) if node_rank == 0 else None
    tokenized = tokenized_input(args)
    inputs = load_inputs(tokenized, args.model)  # a wrong folder fails here, before any rank starts; the tiny model is built once
    if args.nproc_per_node == 1:
        return train_on_rank(args, inputs, task, resume_from)
    # The other ranks get rank 0's values (on an agent: the task's), with the data as the folder fetched here.
    rank_arguments = {**vars(args), "data_dir": str(tokenized), "preprocess_task_id": None}
    with LocalRanks(args.nproc_per_node, "steps.train:local_rank", rank_arguments, node_rank=node_rank, nodes=args.nodes):
        return train_on_rank(args, inputs, task, resume_from)


def load_inputs(tokenized: Path, model: str) -> tuple:
    """The tokenized train and validation splits, the model's tokenizer and the input length the splits were cut at."""
    train_split, validation_split, max_input_length = load_splits(tokenized, model)
    return train_split, validation_split, load_tokenizer(model), max_input_length


def join_nodes(args: argparse.Namespace, task) -> int:
    """``--nodes K``: this machine's node rank (0 on the machine of the task a user enqueued).

    ClearML's ``Task.launch_multi_node`` clones the task K-1 times onto the task's queue (each clone
    runs this step again, on another agent, and learns its node rank from the clone's runtime
    properties), waits until they run, and sets ``MASTER_ADDR`` (this machine's address, or
    ``CLEARML_MULTI_NODE_MASTER_DEF_ADDR``), ``MASTER_PORT`` (29500, or
    ``CLEARML_MULTI_NODE_MASTER_DEF_PORT``), ``RANK`` and ``WORLD_SIZE``.
    """
    if args.nodes < 1:
        raise UserError(f"--nodes must be at least 1, got {args.nodes}.")
    if args.nodes == 1:
        return 0
    if not running_on_agent():
        raise UserError(
            f"--nodes {args.nodes} trains on ClearML agents: create the train task, set Args/nodes to {args.nodes} "
            "and enqueue it on a queue that many agents serve (docs/distributed.md)."
        )
    node = task.launch_multi_node(args.nodes, wait=True, devices=args.nproc_per_node)
    os.environ.setdefault("LOCAL_RANK", "0")
    print(f"Node {node['node_rank']} of {args.nodes}; rank 0 at {node['master_addr']}:{node['master_port']}.")
    return int(node["node_rank"])


def local_rank(args: argparse.Namespace) -> None:
    """A rank started by --nproc-per-node (components/distributed/worker.py): rank 0's arguments, no ClearML."""
    args.output_dir = Path(args.output_dir)
    train_on_rank(args)


def train_on_rank(args: argparse.Namespace, inputs: tuple | None = None, task=None, resume_from: Path | None = None) -> dict | None:
    """Join the run's ranks and train; rank 0 (with ``task``) then saves, uploads and registers. Other ranks return None.

    ``inputs`` (:func:`load_inputs`) come from the process that owns the task; the other ranks load their own.
    """
    world = join_world(args.join_timeout)
    try:
        world.barrier()  # rank 0 has fetched the inputs and built the tiny model before any other rank reads them
        if inputs is None:
            if args.preprocess_task_id:  # a rank > 0 started by torchrun: the artifact from ClearML (its cache)
                prepare_clearml(args.local)
            inputs = load_inputs(tokenized_input(args), args.model)
        return _train(args, inputs, task, resume_from, world)
    finally:
        leave_world()


def _train(args: argparse.Namespace, inputs: tuple, task, resume_from: Path | None, world: World) -> dict | None:
    settings, config = adapter_settings(args), train_config(args)
    train_split, validation_split, tokenizer, max_input_length = inputs
    torch.manual_seed(args.seed)
    model = apply_adapter_settings(load_base_model(args.model), settings)
    model.to(torch.device("cuda", world.local_rank) if torch.cuda.is_available() else "cpu")
    use_cpu_threads_for(model)
    stats = parameter_stats(model)
    if world.is_main:
        print(
            f"Parameters: {stats['total']:,} total, {stats['trainable']:,} trainable ({stats['trainable_percent']:.2f}%)"
            f"{f'; {world.size} ranks' if world.distributed else ''}."
        )
    report = tracking.reporter(task) if world.is_main else None
    # The untuned model's validation loss (adapters as initialised): where the loss curve starts.
    initial_loss = validation_loss(
        model,
        evaluation_loader(model, tokenizer, validation_split, config.eval_batch_size, world),
        resolve_precision(config.precision, model.device),
        world,
    )
    if report:
        report("loss", "validation", initial_loss, 0)

    def upload_checkpoint(kind: str, directory: Path) -> None:
        tracking.flush_reports(task)  # the scalars up to this checkpoint reach the server before it does
        tracking.upload_path(task, CHECKPOINT_ARTIFACT, directory)

    result = train_adapters(
        model,
        tokenizer,
        train_split,
        validation_split,
        config,
        output_dir=args.output_dir,
        report=report,
        on_checkpoint=upload_checkpoint,
        resume_from=resume_from,
        world=world,
    )
    if not world.is_main:
        return None
    load_adapter_weights(model, args.output_dir / "checkpoints" / "best" / "adapter.safetensors")
    adapter_dir = save_adapter(model, args.output_dir / "adapter", args.model, settings, tokenizer, max_input_length=max_input_length)
    summary = {
        "model": args.model,
        "adapter": settings.to_dict(),
        "training": asdict(config),
        "ranks": world.size,
        "parameters": stats,
        "resumed_from": str(resume_from) if resume_from else None,
        "initial_validation_loss": initial_loss,
        **asdict(result),
    }
    tracking.upload_path(task, "adapter", adapter_dir)
    tracking.upload_json(task, "training", summary, args.output_dir)
    model_id = tracking.register_model(
        task,
        f"ruT5 LoRA r{settings.lora_rank} + prompt {settings.prompt_length}",
        adapter_dir,
        tags=["adapter", f"lora_rank={settings.lora_rank}", f"prompt_length={settings.prompt_length}"],
        metadata={
            "config": {**settings.to_dict(), **asdict(config), "base_model": args.model},
            result.best_metric: result.best_value,
            "best_step": result.best_step,
        },
    )
    stopped = " (stopped early)" if result.stopped_early else ""
    print(
        f"Trained {result.steps} of {result.total_steps} steps{stopped}; best {result.best_metric} {result.best_value:.4f} "
        f"at step {result.best_step} (validation loss untuned: {initial_loss:.4f}). Adapter in {adapter_dir}."
    )
    return {
        "adapter_dir": str(adapter_dir),
        "model_id": model_id,
        "steps": result.steps,
        "best_metric": result.best_metric,
        "best_value": result.best_value,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "initial_validation_loss": initial_loss,
    }


def checkpoint_to_resume(args: argparse.Namespace, task) -> Path | None:
    """This task's own checkpoint (an agent re-running it after an abort), another task's, or --output-dir's."""
    if CHECKPOINT_ARTIFACT in task.artifacts:
        print("This task already holds a checkpoint (it was aborted or preempted before): continuing from it.")
        return tracking.artifact_path(task.id, CHECKPOINT_ARTIFACT, force_download=True)
    if args.resume_from_task_id:
        return tracking.artifact_path(args.resume_from_task_id, CHECKPOINT_ARTIFACT, force_download=True)
    if args.resume:  # the newest complete checkpoint, passing over a damaged one
        local = newest_checkpoint(args.output_dir / "checkpoints")
        if local is None:
            raise UserError(
                f"--resume: no checkpoint in {args.output_dir / 'checkpoints'}; run without --resume to start, "
                "or point --output-dir at the interrupted run."
            )
        return local
    return None


def main(argv: list[str] | None = None) -> dict | None:
    with tracking.failures_end_the_process():  # a torch.distributed environment missing a variable is the user's error
        started_by = world_from_environment()
    if started_by.rank > 0:  # torchrun's other ranks: the command line's arguments, no task
        args = build_parser().parse_args(argv)
        args.output_dir = Path(args.output_dir or tempfile.gettempdir())  # rank 0 alone writes there
        with tracking.failures_end_the_process():
            train_on_rank(args)
        return None
    return tracking.run_step("train", "training", build_parser, run, argv)


if __name__ == "__main__":
    main()
