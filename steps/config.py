"""Every step's settings, each declared once: a dataclass per step, a field per option.

A field's type and default are the option's; :func:`components.settings.setting` adds its help and
whether it is a pipeline parameter (``pipeline=True``, or the parameter's name when the step
calls it otherwise) and sweepable (``sweep``: the values a sweep tries by default). From these
fields come each step's ``--help`` and ClearML ``Args/`` section (the field names),
``pipelines/run_pipeline.py``'s parameters with their UI descriptions, which step each parameter
reaches (``pipelines/definition.py``), the sweep's options (``pipelines/run_hpo.py``) and
``docs/configuration.md``.

Defaults are the published configuration, read from the library (``components/settings.py``),
which uses the same values when called directly. A pipeline parameter that several steps take
(``seed``) has the same type, default and choices in each (checked when the pipeline reads
them); its description in the UI is their help, each step's where they differ.

This module imports no torch: a launch and its ``--help`` answer at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.decoding import DecodingOptions
from components.metrics import BEST_METRICS, PROTOCOL_METRICS
from components.settings import BASE_MODEL, DATASET_ID, PRECISIONS, SELECTION_METRIC, AdapterSettings, TokenizationSettings, TrainingSettings, setting

MODEL_HELP = "hub id or local directory of the base model"
MAX_INPUT_HELP = "tokens kept of each input (instruction and input) in training; the model records it for evaluation and the export"
TRAINED_INPUT_HELP = "tokens kept of each input (default: the length the model was trained with, recorded in its adapter_config.json)"
MAX_TARGET_HELP = "tokens kept of each reference output: in training and in the test loss"


@dataclass(frozen=True)
class IngestOptions:
    train_tsv: str | None = setting(
        None,
        "training TSV file (instruction, input, output, full_output): a path or a URL (http, s3, gs, azure); default: the hub dataset --dataset-id",
        pipeline=True,
    )
    test_tsv: str | None = setting(
        None, "test TSV file, kept untouched as the test split: a path or a URL; default: the hub dataset's test split", pipeline=True
    )
    dataset_id: str = setting(DATASET_ID, "hub dataset used when no TSV files are given")
    validation_size: int = setting(1000, "rows carved from train for validation; at most a tenth of train on small data", pipeline=True)
    seed: int = setting(TrainingSettings.seed, "seed of the validation split (and of the hub dataset's test split)", pipeline=True)
    skip_invalid_rows: bool = setting(False, "skip invalid rows (recorded as an artifact) instead of failing", switch=True)


@dataclass(frozen=True)
class PreprocessOptions:
    ingest_task_id: str | None = setting(None, "ClearML task id of the ingest step, whose split artifacts are used (default: --splits-dir)")
    splits_dir: str | None = setting(None, "instead of a task id: a folder with train.tsv, validation.tsv, test.tsv (default: none)")
    model: str = setting(BASE_MODEL, MODEL_HELP, pipeline=True)
    max_input_length: int = setting(TokenizationSettings.max_input_length, MAX_INPUT_HELP, pipeline=True)
    max_target_length: int = setting(TokenizationSettings.max_target_length, MAX_TARGET_HELP, pipeline=True)


ADAPTER, TRAINING, VALIDATION, RANKS, RESUMING = (
    "adapter",
    "training",
    "validation, best model and early stopping",
    "data-parallel training (see components/distributed)",
    "resuming",
)


@dataclass(frozen=True)
class TrainOptions:
    preprocess_task_id: str | None = setting(None, "ClearML task id of the preprocess step, whose tokenized artifact is used (default: --data-dir)")
    data_dir: str | None = setting(None, "instead of a task id: a folder of tokenized splits written by the preprocess step (default: none)")
    model: str = setting(BASE_MODEL, MODEL_HELP, pipeline=True)
    lora_rank: int = setting(
        AdapterSettings.lora_rank, "LoRA rank on the attention q and v projections", pipeline=True, sweep="4,8,16,32", group=ADAPTER
    )
    lora_alpha: float = setting(
        AdapterSettings.lora_alpha, "LoRA scaling: the low-rank update is multiplied by alpha / rank", pipeline=True, group=ADAPTER
    )
    lora_dropout: float = setting(AdapterSettings.lora_dropout, "dropout on the input of the LoRA branch", pipeline=True, group=ADAPTER)
    prompt_length: int = setting(
        AdapterSettings.prompt_length,
        "trainable prompt vectors prepended to the encoder input (0: LoRA only)",
        pipeline=True,
        sweep="10,20,50",
        group=ADAPTER,
    )
    batch_size: int = setting(TrainingSettings.batch_size, "training examples per batch, on each rank", pipeline=True, group=TRAINING)
    grad_accum_steps: int = setting(
        TrainingSettings.grad_accum_steps, "batches whose gradients add up to one optimizer step", pipeline=True, group=TRAINING
    )
    learning_rate: float = setting(
        TrainingSettings.learning_rate, "AdamW's peak learning rate, decayed linearly to 0 over the run", pipeline=True, sweep="", group=TRAINING
    )
    weight_decay: float = setting(TrainingSettings.weight_decay, "AdamW's weight decay", pipeline=True, group=TRAINING)
    epochs: float = setting(
        TrainingSettings.epochs, "passes over the training rows (a fraction is rounded up to whole steps)", pipeline=True, group=TRAINING
    )
    max_steps: int | None = setting(None, "stop after this many optimizer steps (default: the steps of --epochs)", pipeline=True, group=TRAINING)
    warmup_ratio: float = setting(
        TrainingSettings.warmup_ratio,
        "share of the optimizer steps over which the learning rate rises linearly from 0 to its peak",
        pipeline=True,
        sweep="",
        group=TRAINING,
    )
    gradient_checkpointing: bool = setting(
        TrainingSettings.gradient_checkpointing,
        "recompute activations in the backward pass: less GPU memory, more time",
        pipeline=True,
        group=TRAINING,
    )
    precision: str = setting(
        "auto", "auto: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU", pipeline=True, choices=PRECISIONS, group=TRAINING
    )
    seed: int = setting(TrainingSettings.seed, "seed of the adapters' initialisation, the batch order and dropout", pipeline=True, group=TRAINING)
    group_by_length: bool = setting(True, "batch similar lengths together (less padding)", group=TRAINING)
    eval_every: int | None = setting(
        None, "optimizer steps between validations and checkpoints (default: once per epoch)", pipeline=True, group=VALIDATION
    )
    best_metric: str = setting("validation_loss", "picks the final adapter among the validations", choices=BEST_METRICS, group=VALIDATION)
    early_stopping_patience: int | None = setting(
        None, "stop after this many validations without improvement (default: never)", pipeline=True, group=VALIDATION
    )
    generation_eval_samples: int = setting(0, "validation rows to generate at each validation for text metrics", group=VALIDATION)
    nproc_per_node: int = setting(1, "ranks to start on this machine: one per GPU (nccl), or CPU processes (gloo)", pipeline=True, group=RANKS)
    nodes: int = setting(
        1,
        "machines to train on, --nproc-per-node ranks each: on a ClearML server the task is cloned for an agent "
        "of its queue per further machine (Task.launch_multi_node)",
        group=RANKS,
    )
    join_timeout: float = setting(60.0, "seconds a rank waits for the others to join before the step fails", group=RANKS)
    resume: bool = setting(False, "continue from the last checkpoint in --output-dir", switch=True, group=RESUMING)
    resume_from_task_id: str | None = setting(
        None,
        "continue from the checkpoint artifact of this train task (default: start anew, or from this task's own checkpoint when an agent re-runs it)",
        group=RESUMING,
    )


@dataclass(frozen=True)
class EvaluateOptions(DecodingOptions):
    train_task_id: str | None = setting(None, "ClearML task id of the train step, whose adapter artifact is evaluated (default: --model-dir)")
    model_dir: str | None = setting(None, "instead of a task id: an adapter directory written by the train step (default: none)")
    ingest_task_id: str | None = setting(None, "ClearML task id of the ingest step, whose test split is used (default: --test-tsv)")
    test_tsv: str | None = setting(None, "instead of a task id: a test TSV file (default: none)")
    max_samples: int | None = setting(None, "score only the first N test rows (default: all)", pipeline="max_test_samples")
    batch_size: int = setting(16, "test rows generated and scored together")
    max_input_length: int | None = setting(None, TRAINED_INPUT_HELP)
    max_target_length: int = setting(TokenizationSettings.max_target_length, MAX_TARGET_HELP, pipeline=True)
    compare_base: bool = setting(True, "also score the untuned base (adapters at their initial values) on the same rows", pipeline=True)
    seed: int = setting(0, "seed of sampling (--decoding sampling)")


@dataclass(frozen=True)
class RegisterOptions:
    candidates: str = setting("", "comma-separated ClearML task ids of evaluate steps")
    metric: str = setting(SELECTION_METRIC, "test metric that picks the best candidate (higher is better)", pipeline=True, choices=PROTOCOL_METRICS)
    model_name: str = setting("ruT5-large LoRA+prompt", "name of the registered model")
    publish: bool = setting(True, "publish the registered model (server only)")


@dataclass(frozen=True)
class ExportOptions:
    register_task_id: str | None = setting(None, "ClearML task id of the register step, whose model artifact is exported (default: --model-dir)")
    model_dir: str | None = setting(None, "instead of a task id: a model folder written by the register or train step (default: none)")
    max_input_length: int | None = setting(None, TRAINED_INPUT_HELP)
    ctranslate2: bool = setting(
        False,
        "also convert the export for CTranslate2 (float32; quantize with compute_type when loading) into <output-dir>/ctranslate2",
        pipeline="export_ctranslate2",
        bare_means_true=True,
    )


STEP_OPTIONS: dict[str, type] = {
    "ingest": IngestOptions,
    "preprocess": PreprocessOptions,
    "train": TrainOptions,
    "evaluate": EvaluateOptions,
    "register": RegisterOptions,
    "export": ExportOptions,
}
