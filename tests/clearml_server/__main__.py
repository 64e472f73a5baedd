"""``python -m tests.clearml_server --port N --state-dir DIR``: serve until SIGTERM or Ctrl-C.

It prints the variables that point a client at it, the one key pair it accepts among them;
started again on the same ``--state-dir`` it continues with the state and tokens it had."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from .server import ClearMLTestServer

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # SIGINT even when inherited ignored (a shell's background job)
WAKE_S = 0.2  # the main thread's longest sleep between checks for a stop signal


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.clearml_server", description=__doc__)
    parser.add_argument("--port", type=int, default=8008, help="API port; the files server takes the next one (0: any free pair)")
    parser.add_argument("--state-dir", type=Path, required=True, help="where the state (state.json, calls.jsonl, files/) is written")
    args = parser.parse_args()
    stop = threading.Event()
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda *_: stop.set())
    server = ClearMLTestServer(args.state_dir, args.port).start()
    for name, value in server.environment().items():
        print(f"{name}={value}", flush=True)
    while not stop.wait(WAKE_S):
        pass
    server.stop()


if __name__ == "__main__":
    main()
