"""Wall time of each step of the tiny local pipeline, and ClearML's share of it.

    python benchmarks/pipeline.py [--output-dir runs/bench-pipeline]

Runs ``pipelines/run_pipeline.py --local --preset tiny`` once (the tiny model must be
built already, or its one-off build lands in preprocess) and reads each step's
``result.json``: ``wall`` is the step's process from start to exit (Python and library
imports included), ``in step`` the time inside the step's code, ``clearml`` the part of
that spent in ClearML calls (Task.init, artifacts up and down, scalars, close). The last
line is JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, print_json_last

from components.tiny import build_tiny_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=None, help="where the pipeline's outputs go (default: a temporary folder)")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="bench-pipeline-")).resolve()
    build_tiny_model()
    subprocess.run(
        [sys.executable, "pipelines/run_pipeline.py", "--local", "--preset", "tiny", "--output-dir", str(output_dir)],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    summary = json.loads((output_dir / "summary.json").read_text())
    rows = {}
    print(f"{'step':<11} {'wall s':>7} {'in step s':>10} {'clearml s':>10} {'clearml %':>10}")
    for name in summary["step_seconds"]:
        seconds = json.loads((output_dir / name / "result.json").read_text())["seconds"]
        wall = summary["step_seconds"][name]
        rows[name] = {
            "wall_s": wall,
            "in_step_s": seconds["step"],
            "clearml_s": seconds["clearml"],
            "clearml_share_of_wall": round(seconds["clearml"] / wall, 3),
        }
        print(f"{name:<11} {wall:>7.2f} {seconds['step']:>10.2f} {seconds['clearml']:>10.2f} {100 * seconds['clearml'] / wall:>9.1f}%")
    total = {k: round(sum(r[k] for r in rows.values()), 2) for k in ("wall_s", "in_step_s", "clearml_s")}
    print(
        f"{'total':<11} {total['wall_s']:>7.2f} {total['in_step_s']:>10.2f} {total['clearml_s']:>10.2f} {100 * total['clearml_s'] / total['wall_s']:>9.1f}%"
    )
    result = {"steps": rows, "total": total}
    print_json_last(result)
    return result


if __name__ == "__main__":
    main()
