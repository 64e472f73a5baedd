"""Write the text-analysis task TSV files (train.tsv, test.tsv) of components/text_tasks.py.

    python -m tools.text_tasks [--output-dir data/tasks]

The files are written deterministically: a test checks that the shipped data/tasks is what this writes.
"""

from __future__ import annotations

from pathlib import Path

from cli.options import ArgumentParser
from components.data import read_tsv
from components.text_tasks import TASKS_DIR, write_splits


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", type=Path, default=TASKS_DIR, help="where train.tsv and test.tsv go (default: data/tasks)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    for name, path in write_splits(args.output_dir).items():
        print(f"{name}: {len(read_tsv(path))} rows in {path}")


if __name__ == "__main__":
    main()
