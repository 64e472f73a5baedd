"""Running step scripts on this machine, each its own offline ClearML task, as an agent would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from clearml_adapter import tracking
from cli.options import option_flag
from components.errors import UserError
from components.settings import PROJECT_ROOT
from pipelines.definition import StepSpec, script_path


class StepFailed(UserError):
    pass


def as_flags(arguments: dict) -> list[str]:
    flags = []
    for name, value in arguments.items():
        flags += [option_flag(name), str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def run_step_locally(step: StepSpec, arguments: dict, output_dir: Path) -> dict:
    command = [sys.executable, script_path(step), "--local", "--output-dir", str(output_dir), *as_flags(arguments)]
    print(f"\n=== {step.name}: {' '.join(command[1:])}", flush=True)
    completed = subprocess.run(command, cwd=PROJECT_ROOT)
    if completed.returncode != 0:
        raise StepFailed(
            f"Step {step.name} failed with exit status {completed.returncode} (its output is above); rerun it alone with: {' '.join(command[1:])}"
        )
    return json.loads((output_dir / tracking.RESULT_FILE).read_text(encoding="utf-8"))
