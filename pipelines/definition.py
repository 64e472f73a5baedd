"""The pipeline's shape, shared by the local runner and the ClearML PipelineController.

One table of steps and one function that says which arguments each step gets. The
local runner turns them into command-line flags and real (offline) task ids; the
controller turns them into ``Args/<name>`` overrides, ``${pipeline.<name>}``
parameters and ``${<step>.id}`` references. The same names reach the steps either way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.settings import PROJECT_ROOT


@dataclass(frozen=True)
class StepSpec:
    name: str
    script: str
    task_type: str
    queue: str  # "cpu" or "gpu": resolved to a queue name by the runner's flags
    parents: tuple[str, ...]
    cached: bool = True  # on a server, ClearML reuses an earlier run's task when the step's code and arguments are unchanged
    asked_by: str | None = None  # the pipeline parameter that puts the step in a run; None: every run has it


STEPS = (
    StepSpec("ingest", "steps/ingest.py", "data_processing", "cpu", ()),
    StepSpec("preprocess", "steps/preprocess.py", "data_processing", "cpu", ("ingest",)),
    StepSpec("train", "steps/train.py", "training", "gpu", ("preprocess",)),
    StepSpec("evaluate", "steps/evaluate.py", "testing", "gpu", ("train",)),
    StepSpec("register", "steps/register.py", "custom", "cpu", ("evaluate",), cached=False),
    # A few GB for ruT5-large: only when asked.
    StepSpec("export", "steps/export.py", "custom", "cpu", ("register",), cached=False, asked_by="export"),
)
STEP_NAMES = tuple(step.name for step in STEPS)
STEP_BY_NAME = {step.name: step for step in STEPS}


def run_steps(parameters: Mapping[str, Any]) -> tuple[StepSpec, ...]:
    """The steps of a run with these pipeline parameters, in order: those no parameter asks for, and those asked for."""
    return tuple(step for step in STEPS if step.asked_by is None or parameters[step.asked_by])


# What a sweep minimises: the validation loss scalar the train step reports (never the test split).
OBJECTIVE = {"title": "loss", "series": "validation", "sign": "min"}


def grid_size(space: dict[str, list]) -> int:
    """Combinations of a sweep's search space (swept name -> values): no sweep runs more trials than this."""
    return math.prod(len(values) for values in space.values())

# Pipeline parameter -> the steps whose argument of the same name it sets (``export`` sets none: it adds the export step).
PARAMETER_STEPS: dict[str, tuple[str, ...]] = {
    "train_tsv": ("ingest",),
    "test_tsv": ("ingest",),
    "validation_size": ("ingest",),
    "model": ("preprocess", "train"),
    "max_input_length": ("preprocess", "evaluate", "export"),
    "max_target_length": ("preprocess", "evaluate"),
    "lora_rank": ("train",),
    "lora_alpha": ("train",),
    "lora_dropout": ("train",),
    "prompt_length": ("train",),
    "batch_size": ("train",),
    "grad_accum_steps": ("train",),
    "learning_rate": ("train",),
    "weight_decay": ("train",),
    "epochs": ("train",),
    "max_steps": ("train",),
    "gradient_checkpointing": ("train",),
    "precision": ("train",),
    "eval_every": ("train",),
    "early_stopping_patience": ("train",),
    "nproc_per_node": ("train",),
    "seed": ("ingest", "train"),
    "decoding": ("evaluate",),
    "max_new_tokens": ("evaluate",),
    "max_test_samples": ("evaluate",),
    "compare_base": ("evaluate",),
    "metric": ("register",),
    "export": (),
    "export_ctranslate2": ("export",),
}
RENAMED = {("evaluate", "max_test_samples"): "max_samples", ("export", "export_ctranslate2"): "ctranslate2"}

# Step argument that carries an upstream task id -> the upstream step.
UPSTREAM_ARGUMENTS: dict[str, dict[str, str]] = {
    "preprocess": {"ingest_task_id": "ingest"},
    "train": {"preprocess_task_id": "preprocess"},
    "evaluate": {"train_task_id": "train", "ingest_task_id": "ingest"},
    "register": {"candidates": "evaluate"},
    "export": {"register_task_id": "register"},
}


def step_arguments(step: str, parameters: Mapping[str, Any], upstream_ids: Mapping[str, str]) -> dict[str, Any]:
    """The arguments (argparse dest -> value) of ``step``; ``None`` values are left to the step's default."""
    arguments = {
        RENAMED.get((step, name), name): value
        for name, value in parameters.items()
        if step in PARAMETER_STEPS[name] and value is not None
    }
    for argument, upstream in UPSTREAM_ARGUMENTS.get(step, {}).items():
        arguments[argument] = upstream_ids[upstream]
    return arguments


def script_path(step: StepSpec) -> str:
    return str(PROJECT_ROOT / step.script)
