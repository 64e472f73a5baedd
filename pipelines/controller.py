"""The production pipeline: a ClearML PipelineController over the step scripts.

Each step runs from a template task in ``<project>/templates`` (created from the step
script on first use, so a fresh server needs no preparation; edit a template in the UI
to change what every later run starts from). Pipeline parameters reach the steps as
``Args/<name>`` overrides, upstream task ids as ``${<step>.id}``. Unchanged steps are
reused from earlier runs (ClearML caching; it needs the code committed with a commit id).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from components.settings import PROJECT_ROOT
from pipelines.definition import STEP_NAMES, STEPS, StepSpec, step_arguments

TEMPLATE_TAG = "template"
DESCRIPTIONS = {
    "model": "hub id or local directory of the base model",
    "lora_rank": "LoRA rank on the attention q and v projections",
    "prompt_length": "number of trainable prompt vectors prepended to the encoder input",
    "metric": "test metric that picks the model to register",
}


def step_parser(step: StepSpec) -> argparse.ArgumentParser:
    return importlib.import_module(f"steps.{step.name}").build_parser()


def default_arguments(step: StepSpec) -> list[tuple[str, str]]:
    """The step's argparse defaults, so a new template shows its ``Args`` in the UI at once."""
    skip = {"help", "local", "output_dir"}
    return [(a.dest, "" if a.default is None else str(a.default)) for a in step_parser(step)._actions if a.dest not in skip]


def templates_project(project: str) -> str:
    return f"{project}/templates"


def template_factory(step: StepSpec, project: str) -> Callable[[Any], Any]:
    """A ``base_task_factory``: clone the step's template task, creating it if missing."""

    def create(node) -> Any:
        from clearml import Task

        found = Task.get_tasks(project_name=templates_project(project), task_name=f"^{step.name}$", tags=[TEMPLATE_TAG], allow_archived=False)
        if found:
            template = found[0]
        else:
            template = Task.create(
                project_name=templates_project(project),
                task_name=step.name,
                task_type=step.task_type,
                repo=str(PROJECT_ROOT),
                script=step.script,
                working_directory=".",
                requirements_file=str(PROJECT_ROOT / "requirements.txt"),
                argparse_args=default_arguments(step),
                add_task_init_call=False,
            )
            template.add_tags([TEMPLATE_TAG])
        return Task.clone(source_task=template, name=step.name)

    return create


def build_controller(parameters: Mapping[str, Any], queues: Mapping[str, str], *, project: str, name: str, version: str | None = None):
    """The PipelineController, built but not started: ``get_pipeline_dag()`` shows its wiring."""
    from clearml import PipelineController

    pipe = PipelineController(name=name, project=project, version=version, add_pipeline_tags=True)
    pipe.set_default_execution_queue(queues["cpu"])
    set_parameters = {key: value for key, value in parameters.items() if value is not None}
    for key, value in set_parameters.items():
        pipe.add_parameter(name=key, default=value, description=DESCRIPTIONS.get(key))
    references = {key: f"${{pipeline.{key}}}" for key in set_parameters}
    upstream_ids = {step: f"${{{step}.id}}" for step in STEP_NAMES}
    for step in STEPS:
        arguments = step_arguments(step.name, references, upstream_ids)
        pipe.add_step(
            name=step.name,
            parents=list(step.parents),
            base_task_factory=template_factory(step, project),
            execution_queue=queues[step.queue],
            parameter_override={f"Args/{key}": value for key, value in arguments.items()},
            cache_executed_step=step.name != "register",
        )
    return pipe
