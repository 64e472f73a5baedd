"""A rank started by :class:`components.distributed.launch.LocalRanks`.

    python -m components.distributed.worker <module:function> <arguments as JSON>

Calls the entry function with rank 0's parsed arguments (as attributes of a namespace, as argparse gives them). An error
ends the rank with one line on stderr (forwarded to rank 0's log) and exit status 1.
"""

from __future__ import annotations

import importlib
import json
import sys
from types import SimpleNamespace

from components.errors import errors_end_the_process


def main() -> None:
    entry, arguments = sys.argv[1], json.loads(sys.argv[2])
    module, function = entry.split(":")
    with errors_end_the_process():  # a rank has no task to fail: rank 0 reports the run's end
        getattr(importlib.import_module(module), function)(SimpleNamespace(**arguments))


if __name__ == "__main__":
    main()
