"""The tiny setting's targets, measured as a new user meets them: a fresh clone, the base built once, ``make tiny``.

    python benchmarks/tiny_learns.py [--work-dir DIR]

1. ``git clone`` of this repository's committed HEAD into a scratch folder;
2. the tiny base built there into an empty cache (``python -m components.tiny``): the
   first-time cost;
3. ``make tiny`` in the clone with that cache (pip finds every requirement installed);
4. base vs tuned from the run's ``summary.json``, checked against the targets (test loss at
   most 0.7x the base's, chrF at least 3x the base's and at least 0.15).

Wall times are of whole commands, imports and ClearML included; the machine's load average
is printed beside them (a shared machine slows everything). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, print_json_last

TARGETS = {"build_s": 60.0, "make_tiny_s": 90.0, "loss_ratio": 0.7, "chrf_ratio": 3.0, "chrf": 0.15}


def timed(command: list[str], cwd: Path, env: dict) -> tuple[float, list[float]]:
    """Seconds the command ran, and the 1-minute load average when it ended."""
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(time.perf_counter() - started, 1), round(os.getloadavg()[0], 2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", help="where the clone and the cache go (default: a temporary folder)")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="tiny-learns-")).resolve()
    clone = work / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "RUT5_TINY_CACHE": str(work / "cache"), "PYTHON": sys.executable}
    load_before = round(os.getloadavg()[0], 2)
    build_s, load_build = timed([sys.executable, "-m", "components.tiny"], clone, env)
    make_s, load_make = timed(["make", "tiny", f"PYTHON={sys.executable}"], clone, env)
    summary = json.loads((clone / "runs" / "tiny" / "summary.json").read_text())
    tuned, base = summary["metrics"], summary["base_metrics"]
    result = {
        "build_s": build_s,
        "make_tiny_s": make_s,
        "load_average_1min": {"before": load_before, "after_build": load_build, "after_make": load_make},
        "base_loss": round(base["loss"], 4),
        "tuned_loss": round(tuned["loss"], 4),
        "loss_ratio": round(tuned["loss"] / base["loss"], 3),
        "base_chrf": round(base["chrf"], 4),
        "tuned_chrf": round(tuned["chrf"], 4),
        "chrf_ratio": round(tuned["chrf"] / base["chrf"], 2),
        "step_seconds": summary["step_seconds"],
        "cpu": f"{os.cpu_count()} cores",
    }
    result["targets_met"] = {
        "build_s": build_s <= TARGETS["build_s"],
        "make_tiny_s": make_s <= TARGETS["make_tiny_s"],
        "loss_ratio": result["loss_ratio"] <= TARGETS["loss_ratio"],
        "chrf": result["chrf_ratio"] >= TARGETS["chrf_ratio"] and tuned["chrf"] >= TARGETS["chrf"],
    }
    print(f"tiny base build (first time): {build_s} s; make tiny (base cached): {make_s} s; load average {result['load_average_1min']}")
    print(f"test loss  base {base['loss']:.4f}  tuned {tuned['loss']:.4f}  ({result['loss_ratio']}x)")
    print(f"test chrF  base {base['chrf']:.4f}  tuned {tuned['chrf']:.4f}  ({result['chrf_ratio']}x)")
    print_json_last(result)
    return result


if __name__ == "__main__":
    main()
