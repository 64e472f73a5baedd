"""The mutation score of one product module, with mutmut: how many small bugs its tests catch.

    make mutation MODULE=components/metrics.py [TESTS="tests/test_metrics.py tests/test_report.py"]

mutmut writes every mutant of MODULE, runs the tests once to learn which of them call each mutated
function (its coverage-based selection), then runs only those tests against each mutant, one worker
per core. A mutant survives when every test still passes with it.

The run happens in ``.mutation/<module>/``, a copy of the repository's tracked files whose
``setup.cfg`` names MODULE, so the checkout is never touched and each module's results stay there for
``mutmut results`` and ``mutmut show <mutant>`` (run from that folder).

TESTS defaults to the test files outside ``tests/e2e`` that import MODULE; the end-to-end flows run
every step on a simulated agent and take minutes per mutant.

mutmut learns which tests reach a function inside the pytest process only, but most tests run the steps
the way a user does, as scripts in subprocesses (and some fork children). So the copy's
``tests/network_guard/sitecustomize.py``, which every step a test starts loads, and its ``tests/conftest.py``
get ``HIT_RECORDER``: while mutmut collects its stats, a subprocess or forked child appends each mutated
function it reaches to a file, and the test's teardown hands them to mutmut as if the test had called them.
During the mutant runs the subprocesses inherit mutmut's ``MUTANT_UNDER_TEST`` and run the mutant. ``benchmarks/results/mutation.md`` records
the tests each module's score was measured with.

Why ``OMP_NUM_THREADS=1``: mutmut forks one child per mutant from a process that has already run torch;
children that inherit torch's OpenMP thread pool can deadlock and show up as false timeouts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("components", "cli", "clearml_adapter", "steps", "pipelines", "tools", "benchmarks")
WORK = ROOT / ".mutation"


HIT_RECORDER = """
# Added by benchmarks/mutation.py. A script run as __main__ (python steps/train.py, python -m tools.generate)
# runs its own mutants, and the mutated functions that subprocesses and forked children reach count for the test.
import os as _mutation_os
import sys as _mutation_sys
from pathlib import Path as _MutationPath

import mutmut.mutation.trampoline as _mutation_trampoline


def _mutation_main_module():
    \"\"\"The dotted name of the script this interpreter runs as __main__, if it is a file of the mutated copy.\"\"\"
    arguments = iter(_mutation_sys.orig_argv[1:])
    for argument in arguments:
        if argument == "-m":
            return next(arguments, None)
        if argument == "-c":
            return None
        if not argument.startswith("-"):
            path, root = _MutationPath(argument).resolve(), _MutationPath(_mutation_os.environ["MUTATION_ROOT"])
            return ".".join(path.relative_to(root).with_suffix("").parts) if root in path.parents else None
    return None


_mutation_main = _mutation_main_module()
_mutation_parent = int(_mutation_os.environ.setdefault("MUTATION_HITS_PARENT", str(_mutation_os.getpid())))
_mutation_record, _mutation_active, _mutation_written = _mutation_trampoline.record_trampoline_hit, _mutation_trampoline.get_mutant_under_test, set()


def _mutation_active_here():
    active = _mutation_active()
    module, _, mutant = active.rpartition(".")
    return f"__main__.{mutant}" if _mutation_main and module == _mutation_main else active


def _mutation_record_hit(name, caller=None):  # mutmut calls it only while it collects its stats
    if name.startswith("__main__.") and _mutation_main:
        name = _mutation_main + name.removeprefix("__main__")
    if _mutation_os.getpid() == _mutation_parent:
        return _mutation_record(name, caller=caller)
    if name not in _mutation_written:
        _mutation_written.add(name)
        with open(_mutation_os.environ["MUTATION_HITS"], "a", encoding="utf-8") as hits:  # a method's name holds "ǁ"; any locale
            hits.write(name + "\\n")


_mutation_trampoline.record_trampoline_hit, _mutation_trampoline.get_mutant_under_test = _mutation_record_hit, _mutation_active_here
"""
# Added to the copy's tests/conftest.py: the teardown that hands the recorded hits to mutmut before its own teardown reads them.
HITS_TO_MUTMUT = """

import pytest as _mutation_pytest


@_mutation_pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    hits = _mutation_os.environ["MUTATION_HITS"]
    if _mutation_os.path.exists(hits):
        from mutmut.state import state
        with open(hits, encoding="utf-8") as recorded:
            state()._stats.update(filter(None, recorded.read().splitlines()))
        _mutation_os.remove(hits)
"""


def importers(module: str) -> list[str]:
    """The test files (e2e aside) that import ``module`` (``components/metrics.py``) by its dotted name."""
    package, _, name = module.removesuffix(".py").replace("/", ".").rpartition(".")
    pattern = re.compile(
        rf"^\s*(from {re.escape(package)}\.{name} import|import {re.escape(package)}\.{name}\b|from {re.escape(package)} import [^\n]*\b{name}\b)",
        re.MULTILINE,
    )
    return sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").glob("test_*.py") if pattern.search(path.read_text(encoding="utf-8")))


def setup_cfg(module: str, tests: list[str]) -> str:
    package = module.split("/")[0]
    lines = ["[mutmut]", f"source_paths = {package}/", "only_mutate =", f"    {module}", "also_copy ="]
    # README.md and docs/: the tests that run the documentation's own command lines read them there (tests/readme_commands.py);
    # requirements.txt: the packages a pipeline step's task records (components/settings.py's REQUIREMENTS_FILE).
    lines += [
        f"    {path}"
        for path in (
            "tests/",
            "data/",
            "configs/",
            "docs/",
            "pyproject.toml",
            "README.md",
            "requirements.txt",
            *(f"{p}/" for p in PACKAGES if p != package),
        )
    ]
    # mutmut splits list options on newlines only: one test path per line.
    lines += ["pytest_add_cli_args = -p no:xdist -p no:cacheprovider -q", "pytest_add_cli_args_test_selection ="]
    lines += [f"    {path}" for path in tests]
    return "\n".join(lines) + "\n"


def copy_tracked_files(target: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name, follow_symlinks=False)  # a link stays a link (components/ru_text_metrics/metrics.py)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("module", help="a product file, e.g. components/metrics.py")
    parser.add_argument(
        "--tests", help="pytest's arguments, space-separated: test files, node ids, --deselect=... (default: the test files that import the module)"
    )
    parser.add_argument("--max-children", type=int, default=os.cpu_count(), help="mutants tested at once (default: one per core)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.module.split("/")[0] not in PACKAGES or not (ROOT / args.module).is_file():
        sys.exit(f"error: MODULE={args.module}: not a .py file under {', '.join(PACKAGES)}.")
    tests = args.tests.split() if args.tests else importers(args.module)
    if not tests:
        sys.exit(f"error: no test file imports {args.module}; name the tests that exercise it with TESTS=.")
    work = WORK / args.module.removesuffix(".py").replace("/", ".")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    copy_tracked_files(work)
    (work / "setup.cfg").write_text(setup_cfg(args.module, tests), encoding="utf-8")
    for name, addition in (("tests/network_guard/sitecustomize.py", HIT_RECORDER), ("tests/conftest.py", HIT_RECORDER + HITS_TO_MUTMUT)):
        with open(work / name, "a", encoding="utf-8") as file:
            file.write(addition)
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MUTATION_HITS": str(work / "subprocess-hits.txt"),
        "MUTATION_ROOT": str(work / "mutants"),
    }
    environment.pop("MUTATION_HITS_PARENT", None)
    print(f"Mutating {args.module} against {' '.join(tests)} in {work}", flush=True)
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)], cwd=work, env=environment, check=True)
    subprocess.run([sys.executable, "-m", "mutmut", "export-cicd-stats"], cwd=work, env=environment, check=True, capture_output=True)
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text(encoding="utf-8"))
    survivors = subprocess.run(
        [sys.executable, "-m", "mutmut", "results"], cwd=work, env=environment, check=True, capture_output=True, text=True
    ).stdout
    killed = stats["killed"] + stats["timeout"]
    print(survivors)
    print(
        f"{args.module}: {stats['total']} mutants, {killed} killed, score {100 * killed / max(stats['total'], 1):.1f} % "
        f"(survived {stats['survived']}, no tests {stats['no_tests']}, suspicious {stats['suspicious']}, timeout {stats['timeout']})"
    )
    return stats


if __name__ == "__main__":
    main()
