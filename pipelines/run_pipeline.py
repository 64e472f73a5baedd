"""Run the fine-tuning pipeline: ingest -> preprocess -> train -> evaluate -> register.

    python pipelines/run_pipeline.py                                   # ClearML server: steps on agent queues
    python pipelines/run_pipeline.py --local --preset tiny --output-dir runs/tiny   # offline, this machine

With a server configured, a ClearML PipelineController runs the step scripts as tasks
on their queues (train and evaluate on ``gpu``, the rest on ``cpu``, the controller on
``services``), caching unchanged steps. Every option of the launch is stored on the
controller task (``Args``), and the controller's re-run on the ``services`` agent reads
them back from there. With ``--local``, or no server configured, the same steps run one
after another on this machine in ClearML's offline mode, each its own offline task,
handed the upstream task ids exactly as the controller would.

``--export true`` adds a sixth step after register: the registered model as a plain Hugging Face
checkpoint (steps/export.py; ``--export-ctranslate2 true`` converts it for CTranslate2 too).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clearml_adapter import tracking
from clearml_adapter.connection import prepare_clearml, running_on_agent
from cli.options import ArgumentParser, exit_if_help_asked, option_flag, option_kwargs, shown_default
from components.comparison import comparison_table
from components.errors import UserError
from components.settings import CLEARML_PROJECT, PROJECT_ROOT, Setting
from pipelines.definition import PARAMETERS, PRESETS, Parameter, StepSpec, preset_values, run_steps, step_arguments
from pipelines.local import run_step_locally
from pipelines.queues import QueueUse, add_wait_for_start, check_queues, enqueue_and_follow
from pipelines.report import HEADLINE_METRICS, write_report
from pipelines.repository import check_repository, repository_path


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="published",
        help="published: ruT5-large with the published settings; tiny: a tiny local model on data/tasks (CPU, minutes)",
    )
    parser.add_argument("--local", action="store_true", help="run offline on this machine even if a ClearML server is configured")
    parser.add_argument("--output-dir", help="local run: where steps write their outputs and summary.json (default runs/<preset>-<time>)")
    # Each pipeline parameter is an option here, and its help is what the UI shows beside the parameter: the controller
    # task's Args hold the launch's options and the pipeline's parameters under the same names, with the options' help.
    overrides = parser.add_argument_group("overrides of the preset (pipeline parameters; unset: the preset's value)")
    presets = {preset: preset_values(values) for preset, values in PRESETS.items()}
    for parameter in PARAMETERS.values():
        overrides.add_argument(
            option_flag(parameter.name),
            help=parameter_help(parameter, presets),
            **option_kwargs(parameter.kind, Setting(parameter.help, choices=parameter.choices)),
        )
    server = parser.add_argument_group("ClearML server")
    server.add_argument(
        "--project",
        default=CLEARML_PROJECT,
        help="ClearML project of the steps' runs (the controller task is in <project>/.pipelines/<name>, the step templates in <project>/templates)",
    )
    server.add_argument("--pipeline-name", default="ruT5 LoRA+prompt fine-tuning", help="name of the pipeline (its controller task) in the UI")
    server.add_argument("--cpu-queue", default="cpu", help="queue of ingest, preprocess and register")
    server.add_argument("--gpu-queue", default="gpu", help="queue of train and evaluate")
    server.add_argument("--controller-queue", default="services", help="queue of the pipeline controller")
    server.add_argument("--controller-here", action="store_true", help="run the controller in this process instead of on --controller-queue")
    add_wait_for_start(server, "the controller")
    server.add_argument(
        "--allow-local-repository", action="store_true", help="accept a git remote that is a path on this machine (every agent runs on this machine)"
    )
    return parser


def parameter_help(parameter: Parameter, presets: Mapping[str, Mapping[str, Any]]) -> str:
    """The parameter's help and its value in each preset (preset -> every parameter's value), when one gives it a value:
    else the help says what unset means."""
    values = {preset: shown_default(values[parameter.name]) for preset, values in presets.items()}
    if all(value == "None" for value in values.values()):
        return parameter.help
    if len(set(values.values())) == 1:
        return f"{parameter.help} (default: {values.popitem()[1]})"
    return f"{parameter.help} (default: {', '.join(f'{value} in the {preset} preset' for preset, value in values.items())})"


def pipeline_parameters(preset: Mapping[str, Any], args: argparse.Namespace) -> dict:
    """Every pipeline parameter: the preset's values (one of PRESETS), then the command line's overrides."""
    parameters = preset_values(preset)
    parameters.update({name: getattr(args, name) for name in PARAMETERS if getattr(args, name, None) is not None})
    if parameters["export_ctranslate2"] and not parameters["export"]:
        raise UserError(
            "export_ctranslate2 (--export-ctranslate2 true) converts the export step's checkpoint, "
            "and this run has no export step: set export (--export true) too."
        )
    return parameters


DATA_FILES = ("train_tsv", "test_tsv")


def with_local_paths(parameters: dict) -> dict:
    """Steps run from the repository root: a user's relative path becomes absolute."""
    return {**parameters, **{name: str(Path(parameters[name]).resolve()) for name in DATA_FILES if parameters[name]}}


def with_repository_paths(parameters: dict) -> dict:
    """Agents run their own checkout: data files are committed files, relative to the repository root (or URLs)."""
    return {**parameters, **{name: repository_path(parameters[name], option_flag(name)) for name in DATA_FILES if parameters[name]}}


def run_local(parameters: dict, output_dir: Path) -> dict:
    """Every step in order on this machine, each its own offline ClearML task."""
    output_dir.mkdir(parents=True, exist_ok=True)
    task_ids: dict[str, str] = {}
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}
    for step in run_steps(parameters):
        started = time.perf_counter()
        results[step.name] = run_step_locally(step, step_arguments(step.name, parameters, task_ids), output_dir / step.name)
        timings[step.name] = round(time.perf_counter() - started, 2)
        task_ids[step.name] = results[step.name]["task_id"]
    registered = results["register"]["outputs"]
    evaluation = results["evaluate"]["outputs"]
    summary = {
        "metrics": headline(registered["metrics"]),
        "base_metrics": headline(evaluation["base_metrics"]),
        "all_metrics": registered["metrics"],
        "decoding": evaluation["decoding"]["description"],
        "model_dir": registered["model_dir"],
        "task_ids": task_ids,
        "export": results["export"]["outputs"] if "export" in results else None,
        "offline_sessions": [result.get("offline_session") for result in results.values()],
        "step_seconds": timings,
        "parameters": parameters,
    }
    summary["report"] = str(write_report(output_dir, summary))
    (output_dir / "summary.json").write_text(tracking.to_json(summary), encoding="utf-8")
    return summary


def headline(metrics: dict[str, float] | None) -> dict[str, float] | None:
    """The protocol's metrics and the test loss, in that order (None stays None: no base was scored)."""
    return None if metrics is None else {name: metrics[name] for name in HEADLINE_METRICS}


def print_summary(summary: dict, output_dir: Path) -> None:
    compared = " (the untuned base beside the fine-tuned model)" if summary["base_metrics"] else ""
    print(f"\nPipeline finished (offline). Test metrics{compared}, {summary['decoding']}:")
    print(comparison_table(summary["metrics"], summary["base_metrics"]))
    print(f"\nReport:   {summary['report']}")
    print(f"Model directory: {summary['model_dir']}")
    print(f'  try it:  python -m tools.generate --model-dir {summary["model_dir"]} "Назови столицу Франции."')
    if summary["export"]:
        print(f"Exported: {summary['export']['model_dir']} (a plain Hugging Face checkpoint)")
        if "ctranslate2_dir" in summary["export"]:
            print(f"  for CTranslate2: {summary['export']['ctranslate2_dir']}")
    print(f"Summary:  {output_dir / 'summary.json'}")
    print("Offline ClearML sessions, one per step; to import them into a server later:")
    for session in summary["offline_sessions"]:
        print(f"  python -c \"from clearml import Task; Task.import_offline_session('{session}')\"")


def pipeline_queues(args: argparse.Namespace, steps: tuple[StepSpec, ...], controller_enqueued: bool) -> list[QueueUse]:
    """The queues a launch enqueues on: the steps', and the controller's unless it runs here (or already runs on an agent)."""
    purposes = {kind: ", ".join(step.name for step in steps if step.queue == kind) for kind in ("cpu", "gpu")}
    uses = [QueueUse(args.cpu_queue, "cpu", "--cpu-queue", purposes["cpu"]), QueueUse(args.gpu_queue, "gpu", "--gpu-queue", purposes["gpu"])]
    if controller_enqueued:
        uses.append(QueueUse(args.controller_queue, "services", "--controller-queue", "the pipeline controller"))
    return uses


def launch_on_server(args: argparse.Namespace) -> None:
    """Build the PipelineController and start it on ``--controller-queue`` (or here).

    Also what the ``services`` agent runs: there ``args`` come from the controller task.
    """
    from clearml import Task

    from pipelines.controller import build_controller, complete_controller_code

    on_agent = running_on_agent()
    parameters = with_repository_paths(pipeline_parameters(PRESETS[args.preset], args))
    check_queues(pipeline_queues(args, run_steps(parameters), controller_enqueued=not (on_agent or args.controller_here)))
    launched = None if on_agent else check_repository(allow_local=args.allow_local_repository)
    pipe = build_controller(parameters, {"cpu": args.cpu_queue, "gpu": args.gpu_queue}, project=args.project, name=args.pipeline_name)
    if not on_agent:
        complete_controller_code(Task.current_task(), launched)  # the steps run this code, too
    if args.controller_here and not on_agent:
        pipe.start_locally(run_pipeline_steps_locally=False)
    elif on_agent:
        pipe.start(queue=args.controller_queue)
    else:
        controller_id = Task.current_task().id
        enqueue_and_follow(lambda: pipe.start(queue=args.controller_queue), controller_id, args.controller_queue, args.wait_for_start)


def main(argv: list[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    exit_if_help_asked(parser, argv)
    with tracking.failures_end_the_process():
        if not prepare_clearml("--local" in argv):
            launch_on_server(tracking.parse_task_arguments(parser, argv))  # stored on the controller task, read back on the agent
            return None
        args = parser.parse_args(argv)
        if not args.local:
            print("No ClearML server to use (none configured, or CLEARML_OFFLINE_MODE set): running locally in offline mode.", flush=True)
        output_dir = Path(args.output_dir or PROJECT_ROOT / "runs" / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
        summary = run_local(with_local_paths(pipeline_parameters(PRESETS[args.preset], args)), output_dir)
    print_summary(summary, output_dir)
    return summary


if __name__ == "__main__":
    main()
