"""Run the fine-tuning pipeline: ingest -> preprocess -> train -> evaluate -> register.

    python pipelines/run_pipeline.py                                   # ClearML server: steps on agent queues
    python pipelines/run_pipeline.py --local --preset tiny --output-dir runs/tiny   # offline, this machine

With a server configured, a ClearML PipelineController runs the step scripts as tasks
on their queues (train and evaluate on ``gpu``, the rest on ``cpu``, the controller on
``services``), caching unchanged steps. With ``--local``, or no server configured, the
same steps run one after another on this machine in ClearML's offline mode, each its
own offline task, handed the upstream task ids exactly as the controller would.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import tracking
from components.errors import UserError
from components.metrics import PROTOCOL_METRICS
from components.settings import (
    CLEARML_PROJECT, DECODING, PRESETS, PROJECT_ROOT, SELECTION_METRIC, AdapterSettings, Preset, TokenizationSettings,
)
from components.training import PRECISIONS
from pipelines.definition import PARAMETER_STEPS, STEP_NAMES, STEPS, step_arguments
from pipelines.local import run_step_locally



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="published",
                        help="published: ruT5-large with the published settings; tiny: a tiny local model on data/sample (CPU, minutes)")
    parser.add_argument("--local", action="store_true", help="run offline on this machine even if a ClearML server is configured")
    parser.add_argument("--output-dir", help="local run: where steps write their outputs and summary.json (default runs/<preset>-<time>)")
    overrides = parser.add_argument_group("overrides of the preset (pipeline parameters)")
    for flag, kind, text in (
        ("--model", str, "hub id or local directory of the base model"),
        ("--train-tsv", str, "training TSV file"),
        ("--test-tsv", str, "test TSV file"),
        ("--validation-size", int, "rows carved from train for validation"),
        ("--lora-rank", int, None), ("--lora-alpha", float, None), ("--lora-dropout", float, None),
        ("--prompt-length", int, None), ("--batch-size", int, None), ("--grad-accum-steps", int, None),
        ("--learning-rate", float, None), ("--weight-decay", float, None), ("--epochs", float, None),
        ("--max-steps", int, "stop training after this many optimizer steps"),
        ("--eval-every", int, "optimizer steps between validations and checkpoints (default: once per epoch)"),
        ("--early-stopping-patience", int, "stop training after this many validations without improvement"),
        ("--max-new-tokens", int, "generation length in evaluation"),
        ("--max-test-samples", int, "evaluate on the first N test rows only"),
        ("--seed", int, None),
    ):
        overrides.add_argument(flag, type=kind, help=text)
    overrides.add_argument("--precision", choices=PRECISIONS)
    overrides.add_argument("--decoding", choices=("greedy", "beam", "sampling"), help="decoding preset of the evaluate step")
    overrides.add_argument("--metric", choices=PROTOCOL_METRICS, help="test metric that picks the model to register")
    server = parser.add_argument_group("ClearML server")
    server.add_argument("--project", default=CLEARML_PROJECT)
    server.add_argument("--pipeline-name", default="ruT5 LoRA+prompt fine-tuning")
    server.add_argument("--cpu-queue", default="cpu", help="queue of ingest, preprocess and register")
    server.add_argument("--gpu-queue", default="gpu", help="queue of train and evaluate")
    server.add_argument("--controller-queue", default="services", help="queue of the pipeline controller")
    server.add_argument("--controller-here", action="store_true", help="run the controller in this process instead of on --controller-queue")
    return parser


def pipeline_parameters(preset: Preset, args: argparse.Namespace) -> dict:
    """Every pipeline parameter: the preset's values, then the command line's overrides."""
    defaults = {
        **asdict(AdapterSettings()), **asdict(TokenizationSettings()), **asdict(preset.training),
        "model": preset.model, "train_tsv": preset.train_tsv, "test_tsv": preset.test_tsv,
        "validation_size": preset.validation_size, "max_new_tokens": preset.max_new_tokens,
        "precision": "auto", "decoding": DECODING, "metric": SELECTION_METRIC,
    }
    parameters = {name: defaults.get(name) for name in PARAMETER_STEPS}
    parameters.update({name: getattr(args, name) for name in PARAMETER_STEPS if getattr(args, name, None) is not None})
    for name in ("train_tsv", "test_tsv"):  # steps run from the repository root: make the user's paths absolute
        if getattr(args, name):
            parameters[name] = str(Path(getattr(args, name)).resolve())
    return parameters


def run_local(parameters: dict, output_dir: Path) -> dict:
    """Every step in order on this machine, each its own offline ClearML task."""
    output_dir.mkdir(parents=True, exist_ok=True)
    task_ids: dict[str, str] = {}
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}
    for step in STEPS:
        started = time.perf_counter()
        results[step.name] = run_step_locally(step, step_arguments(step.name, parameters, task_ids), output_dir / step.name)
        timings[step.name] = round(time.perf_counter() - started, 2)
        task_ids[step.name] = results[step.name]["task_id"]
    registered = results["register"]["outputs"]
    summary = {
        "metrics": {name: registered["metrics"][name] for name in PROTOCOL_METRICS},
        "all_metrics": registered["metrics"],
        "model_dir": registered["model_dir"],
        "task_ids": task_ids,
        "offline_sessions": [results[name].get("offline_session") for name in STEP_NAMES],
        "step_seconds": timings,
        "parameters": parameters,
    }
    (output_dir / "summary.json").write_text(tracking.to_json(summary), encoding="utf-8")
    return summary


def print_summary(summary: dict, output_dir: Path) -> None:
    print("\nPipeline finished (offline). Test metrics:")
    print(tracking.metrics_table(summary["metrics"]))
    print(f"\nModel directory: {summary['model_dir']}")
    print(f'  try it:  python -m components.generation --model-dir {summary["model_dir"]} "Назови столицу Франции."')
    print(f"Summary:  {output_dir / 'summary.json'}")
    print("Offline ClearML sessions, one per step; to import them into a server later:")
    for session in summary["offline_sessions"]:
        print(f'  python -c "from clearml import Task; Task.import_offline_session(\'{session}\')"')


def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    parameters = pipeline_parameters(PRESETS[args.preset], args)
    try:
        offline = tracking.prepare_clearml(args.local)
        if not offline:
            from pipelines.controller import build_controller

            queues = {"cpu": args.cpu_queue, "gpu": args.gpu_queue}
            pipe = build_controller(parameters, queues, project=args.project, name=args.pipeline_name)
            if args.controller_here:
                pipe.start_locally(run_pipeline_steps_locally=False)
            else:
                pipe.start(queue=args.controller_queue)
            return None
        if not args.local:
            print("No ClearML server is configured (clearml-init writes ~/clearml.conf): running locally in offline mode.")
        output_dir = Path(args.output_dir or PROJECT_ROOT / "runs" / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
        summary = run_local(parameters, output_dir)
    except UserError as error:
        sys.exit(f"error: {error}")
    print_summary(summary, output_dir)
    return summary


if __name__ == "__main__":
    main()
