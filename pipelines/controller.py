"""The production pipeline: a ClearML PipelineController over the step scripts.

Each step of a run is a clone of the step's template task, placed in the pipeline's
project (not among the templates) and set to run the controller's own code: the
repository, commit and uncommitted diff recorded on the controller task when it was
launched, and that code's ``requirements.txt`` as the packages the agent installs. So
every launch runs the steps at the code that launched it, with its dependencies, and
ClearML's step cache (a hash of code and arguments) reuses a step only when both are unchanged.

Templates live in ``<project>/templates``, tagged ``template``, one per step, created
from the step script on first use (their ``Args`` filled with the step's defaults):
edit a template in the UI to change what every later run starts from. When several
tasks match, the oldest is the template, so a UI clone of it is never taken for it.

Pipeline parameters reach the steps as ``Args/<name>`` overrides, upstream task ids as
``${<step>.id}``. Every parameter is always added, an unset one (None) too, which ClearML
stores and hands to the steps as ``""``: the controller re-run on the ``services`` agent
rebuilds the DAG from code, and ClearML restores only the parameters the code adds again.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from components.settings import PROJECT_ROOT, REQUIREMENTS_FILE
from pipelines.definition import STEP_NAMES, StepSpec, run_steps, step_arguments

TEMPLATE_TAG = "template"


@dataclass(frozen=True)
class CodeVersion:
    """A task's code: what an agent clones, checks out and patches before running the entry point,
    and the packages it installs first (the code's ``requirements.txt``)."""

    repository: str
    branch: str
    commit: str
    diff: str
    requirements: str

    @classmethod
    def of_task(cls, task) -> CodeVersion:
        """The code of ``task``, the task this process runs: so this checkout is that code, and its
        ``requirements.txt`` the code's (not the requirements ClearML detected for the task itself)."""
        script = task.data.script
        return cls(
            script.repository or "", script.branch or "", script.version_num or "", script.diff or "", REQUIREMENTS_FILE.read_text(encoding="utf-8")
        )

    def apply_to(self, task) -> None:
        from clearml.backend_api.services import tasks

        task.set_script(repository=self.repository, branch=self.branch, commit=self.commit, diff=self.diff)
        # Not Task.set_packages: it does nothing when the caller runs on an agent, as the controller does on services.
        task.send(tasks.SetRequirementsRequest(task=task.id, requirements={"pip": self.requirements}))


CONTROLLER_ENTRY_POINT = "pipelines/run_pipeline.py"


def complete_controller_code(task, launched) -> None:
    """Make sure the controller task records its code (``launched``: the checked repository) before it is enqueued.

    clearml 2.1.12's ``PipelineController.__init__`` calls ``Task.set_script``, which reloads the
    task outside the lock of ``Task.init``'s repository detection when that runs in a thread, and
    can write back an empty script (no repository, no entry point): the services agent would have
    nothing to run. ``SDK_OVERRIDES`` has it run in Task.init's thread instead, unless a server's
    configuration vault replaces them (see ``clearml_adapter.connection``); then this waits for it.
    """
    task._wait_for_repo_detection(timeout=300.0)
    task.reload()
    script = task.data.script
    if not (script.repository and script.entry_point):
        task.set_script(
            repository=launched.url,
            branch=launched.branch,
            commit=launched.commit,
            diff=launched.diff or "",
            working_dir=".",
            entry_point=CONTROLLER_ENTRY_POINT,
        )


def step_parser(step: StepSpec) -> argparse.ArgumentParser:
    return importlib.import_module(f"steps.{step.name}").build_parser()


def default_arguments(step: StepSpec) -> list[tuple[str, str]]:
    """The step's argparse defaults, so a new template shows its ``Args`` in the UI at once."""
    skip = {"help", "local", "output_dir"}
    return [(a.dest, "" if a.default is None else str(a.default)) for a in step_parser(step)._actions if a.dest not in skip]


def templates_project(project: str) -> str:
    return f"{project}/templates"


def find_or_create_template(step: StepSpec, project: str):
    """The step's template: the oldest matching task in ``<project>/templates``, created if there is none."""
    from clearml import Task

    found = Task.get_tasks(
        project_name=templates_project(project),
        task_name=f"^{step.name}$",
        tags=[TEMPLATE_TAG],
        allow_archived=False,
        task_filter={"order_by": ["created"], "page_size": 1, "page": 0},
    )
    if found:
        return found[0]
    template = Task.create(
        project_name=templates_project(project),
        task_name=step.name,
        task_type=step.task_type,
        repo=str(PROJECT_ROOT),
        script=step.script,
        working_directory=".",
        requirements_file=str(REQUIREMENTS_FILE),
        argparse_args=default_arguments(step),
        add_task_init_call=False,
    )
    template.add_tags([TEMPLATE_TAG])
    template.output_uri = True  # the files server, or the user's default_output_uri
    return template


def new_step_task(step: StepSpec, project: str, code: CodeVersion, parent_id: str | None):
    """A run of ``step``: a clone of its template (named after it, so after the step) in ``project``, untagged, running ``code``."""
    from clearml import Task

    template = find_or_create_template(step, project)
    run = Task.clone(source_task=template, parent=parent_id, project=Task.get_project_id(project))
    run.set_tags([tag for tag in run.get_tags() if tag != TEMPLATE_TAG])
    code.apply_to(run)
    return run


def step_factory(step: StepSpec, project: str, code: Callable[[], CodeVersion]) -> Callable[[Any], Any]:
    """A ``base_task_factory``: the controller calls it when the step is about to run."""

    def create(node) -> Any:
        from clearml import Task

        controller = Task.current_task()
        return new_step_task(step, project, code(), controller.id if controller else None)

    return create


def controller_code() -> CodeVersion:
    """The controller task's own code, recorded when it was launched (read on the ``services`` agent)."""
    from clearml import Task

    return CodeVersion.of_task(Task.current_task())


def build_controller(
    parameters: Mapping[str, Any], queues: Mapping[str, str], *, project: str, name: str, code: Callable[[], CodeVersion] = controller_code
):
    """The PipelineController, built but not started: ``get_pipeline_dag()`` shows its wiring. The parameters'
    descriptions in the UI are the help of the launch's options of the same names (``pipelines/run_pipeline.py``)."""
    from clearml import PipelineController

    # Step states are polled every 3 s (ClearML's default is 12 s): a few API calls, and short steps follow each other at once.
    pipe = PipelineController(name=name, project=project, add_pipeline_tags=True, output_uri=True, pool_frequency=0.05)
    pipe.set_default_execution_queue(queues["cpu"])
    for key, value in parameters.items():
        pipe.add_parameter(name=key, default=value)
    references = {key: f"${{pipeline.{key}}}" for key in parameters}
    upstream_ids = {step: f"${{{step}.id}}" for step in STEP_NAMES}
    for step in run_steps(parameters):  # the export step only when the parameter asks for it
        arguments = step_arguments(step.name, references, upstream_ids)
        pipe.add_step(
            name=step.name,
            parents=list(step.parents),
            base_task_factory=step_factory(step, project, code),
            execution_queue=queues[step.queue],
            parameter_override={f"Args/{key}": value for key, value in arguments.items()},
            cache_executed_step=step.cached,
        )
    return pipe
