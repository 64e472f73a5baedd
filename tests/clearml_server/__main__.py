"""``python -m tests.clearml_server --port N --state-dir DIR``: serve until interrupted."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from .server import ClearMLTestServer


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.clearml_server", description=__doc__)
    parser.add_argument("--port", type=int, default=8008, help="API port; the files server takes the next one (0: any free pair)")
    parser.add_argument("--state-dir", type=Path, required=True, help="where the state (state.json, calls.jsonl, files/) is written")
    args = parser.parse_args()
    server = ClearMLTestServer(args.state_dir, args.port).start()
    for name, value in server.environment().items():
        print(f"{name}={value}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.stop()


if __name__ == "__main__":
    main()
