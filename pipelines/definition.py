"""The pipeline's shape, shared by the local runner and the ClearML PipelineController.

One table of steps, the pipeline's parameters (read from the steps' options, ``steps/config.py``),
the presets, and one function that says which arguments each step gets. The
local runner turns them into command-line flags and real (offline) task ids; the
controller turns them into ``Args/<name>`` overrides, ``${pipeline.<name>}``
parameters and ``${<step>.id}`` references. The same names reach the steps either way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cli.options import option_flag, shown_default
from components.settings import PROJECT_ROOT, TINY_MODEL, Setting, declared, setting
from steps.config import STEP_OPTIONS


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


@dataclass(frozen=True)
class RunOptions:
    """Pipeline parameters that no step takes: they shape the run."""

    export: bool = setting(
        False,
        "after register, export the registered model as a plain Hugging Face checkpoint (steps/export.py; a few GB for ruT5-large)",
        pipeline=True,
    )


@dataclass(frozen=True)
class Parameter:
    """A pipeline parameter, read from the fields of the steps' options that declare it."""

    name: str
    kind: type
    default: Any  # the published configuration's value
    choices: tuple | None
    help: str  # its description in the UI: the steps' help, each step's where they differ
    arguments: dict[str, str]  # step -> the name of the step's argument it sets (``max_test_samples`` is evaluate's ``max_samples``)
    sweep: str | None  # sweepable: the values a sweep tries unless told others ("": not swept unless asked); None: not sweepable

    @property
    def sweep_option(self) -> str:
        """The sweep's option (``pipelines/run_hpo.py``) that holds the values it tries: ``lora_ranks`` for ``lora_rank``."""
        return f"{self.name}s"


def declared_parameters(options_of: Mapping[str | None, type]) -> dict[str, Parameter]:
    """Every pipeline parameter that the options of the steps (step -> its options; None -> those no step takes) declare,
    in the order of the steps that take it."""
    declarations: dict[str, list[tuple[str | None, str, type, Any, Setting]]] = {}
    for step, options in options_of.items():
        for argument, kind, default, declared_as in declared(options):
            if declared_as.sweep is not None and (step, declared_as.pipeline) != ("train", True):
                raise TypeError(
                    f"{options.__name__}.{argument} is sweepable: only a pipeline parameter of the train step (same name) "
                    "can be, as a sweep sets it on trials of the train step."
                )
            if declared_as.pipeline:
                name = argument if declared_as.pipeline is True else declared_as.pipeline
                declarations.setdefault(name, []).append((step, argument, kind, default, declared_as))
    return {name: parameter_of(name, found) for name, found in declarations.items()}


def parameter_of(name: str, declarations: list[tuple[str | None, str, type, Any, Setting]]) -> Parameter:
    signatures = {(kind, default, declared_as.choices) for _, _, kind, default, declared_as in declarations}
    if len(signatures) > 1:
        raise TypeError(f"The steps declare the pipeline parameter {name} with different types, defaults or choices: {signatures}.")
    [(kind, default, choices)] = signatures
    helps = {declared_as.help for *_, declared_as in declarations}
    help_text = helps.pop() if len(helps) == 1 else "; ".join(f"{step}: {declared_as.help}" for step, *_, declared_as in declarations)
    sweep = next((declared_as.sweep for *_, declared_as in declarations if declared_as.sweep is not None), None)
    return Parameter(name, kind, default, choices, help_text, {step: argument for step, argument, *_ in declarations if step}, sweep)


PARAMETERS = declared_parameters({**STEP_OPTIONS, None: RunOptions})

# What a run trains on, as values of pipeline parameters; a parameter a preset does not name has the steps' default.
PRESETS: dict[str, dict[str, Any]] = {
    "published": {},  # ruT5-large on the hub dataset with the published settings: the steps' defaults
    # The tiny model on data/tasks, questions about Russian sentences that it learns in about a minute on a CPU
    # (components/text_tasks.py). Paths are relative to the repository root: the working directory of every step,
    # locally and on agents.
    "tiny": {
        "model": TINY_MODEL,
        "train_tsv": "data/tasks/train.tsv",
        "test_tsv": "data/tasks/test.tsv",
        "validation_size": 60,
        "grad_accum_steps": 1,
        "learning_rate": 1e-2,
        "epochs": 5.0,
        "gradient_checkpointing": False,
        "eval_every": 40,
        "max_new_tokens": 16,
    },
}


def preset_values(preset: Mapping[str, Any]) -> dict[str, Any]:
    """Every pipeline parameter's value in a run of ``preset`` (one of PRESETS) that sets nothing else."""
    unknown = set(preset) - set(PARAMETERS)
    if unknown:
        raise KeyError(f"A preset sets {sorted(unknown)}, which are no pipeline parameters.")
    return {**{name: parameter.default for name, parameter in PARAMETERS.items()}, **preset}


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
        PARAMETERS[name].arguments[step]: value for name, value in parameters.items() if step in PARAMETERS[name].arguments and value is not None
    }
    for argument, upstream in UPSTREAM_ARGUMENTS.get(step, {}).items():
        arguments[argument] = upstream_ids[upstream]
    return arguments


def script_path(step: StepSpec) -> str:
    return str(PROJECT_ROOT / step.script)


def configuration_reference() -> str:
    """docs/configuration.md: every pipeline parameter with its value in each preset, the steps it reaches and its sweep option."""
    values = {preset: preset_values(PRESETS[preset]) for preset in PRESETS}
    lines = [
        "# Configuration",
        "",
        "The pipeline's parameters: options of `python pipelines/run_pipeline.py`, and parameters of the pipeline in the ClearML UI "
        "(edit them there and re-run). Each is an option of the steps it reaches, declared once in `steps/config.py`; a sweepable "
        "one is swept by `python pipelines/run_hpo.py` with the option named in the last column. Every option of every command: "
        "[cli.md](cli.md).",
        "",
        "Written by `python -m pipelines.definition > docs/configuration.md` (`tests/test_pipeline_wiring.py` checks it is current).",
        "",
        f"| parameter | {' | '.join(PRESETS)} | steps (their option) | sweep | description |",
        f"|---|{'---|' * len(PRESETS)}---|---|---|",
    ]
    for name, parameter in PARAMETERS.items():
        presets = " | ".join(f"`{shown_default(values[preset][name])}`" if values[preset][name] is not None else "" for preset in PRESETS)
        steps = ", ".join(step if argument == name else f"{step} (`{option_flag(argument)}`)" for step, argument in parameter.arguments.items())
        sweep = "" if parameter.sweep is None else f"`{option_flag(parameter.sweep_option)}` ({parameter.sweep or 'only when given'})"
        description = parameter.help.replace("|", "\\|")
        lines.append(f"| `{option_flag(name)}` | {presets} | {steps or 'adds the ' + name + ' step'} | {sweep} | {description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(configuration_reference(), end="")
