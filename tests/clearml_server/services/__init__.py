"""One module per clearml-server service; importing them registers their endpoints."""

from . import auth, events, models, pipelines, projects, queues, server, task_status, tasks, workers  # noqa: F401
