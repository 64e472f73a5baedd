"""After evaluate: people rate the answers side by side, blind, in the browser; the verdict goes to ClearML.

    python steps/rate.py --local --evaluate-task-ids offline-... --raters anna,boris --overlap 2

One evaluate task gives its fine-tuned model against the untuned base (the predictions' two
columns); several give every pair of them, the systems named by their task ids. Local evaluate
output folders (or their predictions.tsv) work too: ``--predictions dir1,dir2``.

The command prints one link per rater (a rater's token, to be sent to that rater only) and one
to the results, serves them (on 127.0.0.1 unless ``--host`` says otherwise) until every rater has
voted on every item or it is stopped (Ctrl-C, SIGTERM), then reports the statistics to its task:
the ratings as a TSV artifact, single values, tables and a plot. The session lives in
``--session``: started again with the same options, the command continues it (no vote is lost,
a rater continues where they stopped); with other options it refuses, and another file starts
another session. Label Studio instead of this page: ``--label-studio-export`` writes the project
and ``--label-studio-import`` reads its JSON export into the same statistics.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd

from clearml_adapter import tracking
from clearml_adapter.human_evaluation import add_win_rates_to_registered_models, report_summary
from cli.options import ArgumentParser
from components.errors import UserError
from components.human_eval import label_studio
from components.human_eval.session import assign, items_from_evaluation, items_from_evaluations, sample_items
from components.human_eval.store import RatingStore
from components.human_eval.summary import summarise
from components.human_eval.web import start_server

LINGER_S = 1  # served on after the last vote
SESSION_OPTIONS = ("sources", "raters", "overlap", "items", "seed")  # what makes a session: reopening checks them


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--evaluate-task-ids", default="", help="comma-separated ClearML task ids of evaluate steps")
    parser.add_argument("--predictions", default="", help="instead of task ids: comma-separated evaluate output folders or predictions.tsv files")
    parser.add_argument("--raters", default="rater1,rater2", help="comma-separated rater names (each gets a link)")
    parser.add_argument("--overlap", type=int, default=2, help="how many raters rate each item (2 or more measures agreement)")
    parser.add_argument("--items", type=int, default=50, help="pairs to rate, sampled with --seed (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample, the assignment and the left/right order")
    parser.add_argument("--session", default="runs/rating/session.sqlite", help="the session's SQLite file: created, or continued when it exists")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8642, help="port to serve on (0: a free one)")
    parser.add_argument(
        "--label-studio-export",
        default=None,
        metavar="DIR",
        help="write the session as a Label Studio project to DIR instead of serving (default: serve the rating page)",
    )
    parser.add_argument(
        "--label-studio-import",
        default=None,
        metavar="FILE",
        help="read Label Studio's JSON export of that project instead of serving (default: serve the rating page)",
    )
    tracking.add_common_arguments(parser)
    return parser


def _listed(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _predictions_file(path: str) -> Path:
    path = Path(path)
    return path / "predictions.tsv" if path.is_dir() else path


def build_items(args: argparse.Namespace) -> list:
    """The session's pairs: from evaluate tasks (their ``predictions`` artifacts) or local predictions."""
    task_ids, paths = _listed(args.evaluate_task_ids), _listed(args.predictions)
    if bool(task_ids) == bool(paths):
        raise UserError("Give --evaluate-task-ids (ClearML task ids of evaluate steps) or --predictions (their output folders), one of the two.")
    if task_ids:
        named = {task_id: tracking.artifact_path(task_id, "predictions") for task_id in task_ids}
    else:
        named = {Path(path).resolve().name if Path(path).is_dir() else str(path): _predictions_file(path) for path in paths}
        if len(named) < len(paths):
            raise UserError(f"--predictions names two folders alike ({args.predictions}); give each evaluation a folder of its own name.")
    if len(named) == 1:
        return items_from_evaluation(next(iter(named.values())))
    return items_from_evaluations(named)


def open_session(args: argparse.Namespace) -> RatingStore:
    """The session of ``--session``: continued when the file exists (with the same options), created otherwise."""
    path = Path(args.session)
    raters = _listed(args.raters)
    if not raters:
        raise UserError("--raters is empty; give the raters' names, comma-separated.")
    options = {
        "sources": args.evaluate_task_ids or args.predictions,
        "raters": ",".join(raters),
        "overlap": str(args.overlap),
        "items": str(args.items),
        "seed": str(args.seed),
    }
    if path.exists():
        store = RatingStore(path)
        stored = {key: store.setting(key) for key in SESSION_OPTIONS}
        changed = [key for key in SESSION_OPTIONS if stored[key] != options[key]]
        if changed:
            differences = ", ".join(f"{key} {stored[key]!r}, not {options[key]!r}" for key in changed)
            raise UserError(
                f"{path} is a session with other options ({differences}); "
                "give the same options to continue it, or another --session to start a new one."
            )
        print(f"Continuing the session in {path}.")
        return store
    items = sample_items(build_items(args), args.items or None, args.seed)
    store = RatingStore.create(path, items, assign(items, raters, args.overlap, args.seed), options)
    print(f"A new session of {len(items)} pairs in {path}.")
    return store


def print_outside_task_log(text: str) -> None:
    """Write to the terminal only: ClearML copies stdout into the task's console log, and rater links are secrets.

    (An agent records the process's output itself: on an agent the links reach the log anyway.)
    """
    sys.stdout.flush()
    os.write(1, text.encode())


def link_base(host: str, port: int) -> str:
    """The links' start: served on every interface (``0.0.0.0``, ``::``), this machine's name; an IPv6 address in brackets."""
    if host in ("0.0.0.0", "::"):
        host = socket.getfqdn()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def serve(store: RatingStore, host: str, port: int) -> bool:
    """Serve the raters' pages until every vote is in (True) or a signal stops it (False)."""
    finished = threading.Event()

    def check_complete() -> None:
        if all(done == total for done, total in store.all_progress().values()):
            finished.set()

    check_complete()
    if finished.is_set():
        print("Every rater has voted on every item; nothing to serve.")
        return True
    server = start_server(store, host, port, on_vote=check_complete)
    stopped = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopped.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=server.serve_forever, name="rating-server", daemon=True)
    thread.start()
    base = link_base(host, server.port)
    links = "".join(f"  {rater}: {base}/r/{token}\n" for rater, token in store.tokens().items())
    print_outside_task_log(f"Rater links (send each rater their own):\n{links}Results: {base}/results/{store.setting('results_token')}\n")
    print(f"Serving {len(store.tokens())} raters on {base}; stop with Ctrl-C.", flush=True)
    try:
        while not (finished.wait(0.2) or stopped.is_set()):
            pass
        if finished.is_set():
            stopped.wait(LINGER_S)  # the last rater's browser follows its redirect to the page that says "done"
    finally:
        server.shutdown()
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return finished.is_set()


def run(args: argparse.Namespace, task) -> dict:
    store = open_session(args)
    task.set_user_properties(*({"name": f"compared {n}", "value": task_id} for n, task_id in enumerate(_listed(args.evaluate_task_ids), 1)))
    if args.label_studio_export:
        written = label_studio.export_project(store, Path(args.label_studio_export))
        print(
            f"Label Studio project written: {', '.join(str(p) for p in written)}; import the tasks there, then run again with --label-studio-import."
        )
        return {"session": str(store.path), "label_studio_export": [str(p) for p in written]}
    if args.label_studio_import:
        votes, ratings = label_studio.import_votes(store, Path(args.label_studio_import))
        complete = None
    else:
        complete = serve(store, args.host, args.port)
        votes, ratings = store.votes(), store.ratings()
    summary = summarise(votes, store.items())
    ratings_path = args.output_dir / "ratings.tsv"
    pd.DataFrame(ratings).to_csv(ratings_path, sep="\t", index=False)
    tracking.upload_path(task, "ratings", ratings_path)
    statistics = summary.as_dict()
    summary_path = tracking.upload_json(task, "human_evaluation", statistics, args.output_dir)
    report_summary(task, summary)
    if not task.is_offline() and args.evaluate_task_ids:
        for model_id in add_win_rates_to_registered_models(task, summary, _listed(args.evaluate_task_ids)):
            print(f"Registered model {model_id}: its human win rate is in its metadata.")
    state = "complete" if complete else "stopped before every vote was in" if complete is False else "imported from Label Studio"
    print(f"{summary.votes} votes ({state}); statistics in {summary_path} and the task's results.")
    return {"session": str(store.path), "votes": summary.votes, "complete": complete, "summary": statistics}


def main(argv: list[str] | None = None) -> dict:
    return tracking.run_step("rate", "qc", build_parser, run, argv)


if __name__ == "__main__":
    main()
