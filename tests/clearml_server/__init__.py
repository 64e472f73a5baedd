"""A ClearML API + files test server (test infrastructure, not product).

It speaks the part of clearml-server's REST API that this project's flows use, with the
server's semantics (each handler names the clearml-server source it follows), keeps its
state in memory and writes it to a directory. Unknown endpoints and unsupported request
fields are refused and logged, never answered "ok".

    python -m tests.clearml_server --port 8008 --state-dir /tmp/clearml-state
"""

from .server import ClearMLTestServer
from .store import load_calls, load_state, unimplemented_calls

__all__ = ["ClearMLTestServer", "load_calls", "load_state", "unimplemented_calls"]
