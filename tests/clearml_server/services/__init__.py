"""One module per clearml-server service; importing them registers their endpoints."""

from . import auth, events, models, projects, queues, server, task_status, tasks, workers  # noqa: F401
