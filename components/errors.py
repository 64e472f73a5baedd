"""The base of every error a user can cause and fix (bad file, wrong setting, missing input), and how a
command ends on one: a single line, exit status 1, at once.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class UserError(Exception):
    """An error whose message names the file, line or setting to fix."""


def nothing_to_close(message: str) -> None:
    """What :func:`exit_with_error` does before the exit when the process holds nothing to close."""


def exit_with_error(message: str, before_exit: Callable[[str], None] = nothing_to_close) -> None:
    """``error: message`` on stderr, ``before_exit(message)`` (closing what the process holds), exit status 1 now.

    "Now" is ``os._exit`` after the streams are flushed: no exit hook or thread a library left behind
    (ClearML's reporter, a PipelineController's monitor) can keep the process alive.
    """
    print(f"error: {message}", file=sys.stderr, flush=True)
    before_exit(message)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(1)


@contextmanager
def errors_end_the_process(before_exit: Callable[[str], None] = nothing_to_close) -> Iterator[None]:
    """Any error in the block ends the process with :func:`exit_with_error`: a user's error as its one line,
    anything else with its traceback printed first."""
    try:
        yield
    except UserError as error:
        exit_with_error(str(error), before_exit)
    except Exception as error:
        traceback.print_exc()
        exit_with_error(f"{type(error).__name__}: {error} (the traceback is above)", before_exit)
