"""Smoke test of the server path: a step run against the server, cloned and edited through
the SDK, executed by a real clearml-agent from the git remote."""

from __future__ import annotations

from tests.e2e.flows import AGENTS, CPU, artifact_uris, clone_and_enqueue, download

SPLIT_ARTIFACTS = ("train", "validation", "test")
INGEST = "python steps/ingest.py --train-tsv data/sample/train.tsv --test-tsv data/sample/test.tsv"


def test_step_cloned_edited_and_run_by_an_agent(clearml_server, agents, project, git_remote):
    api, files_host = clearml_server.api, clearml_server.env["CLEARML_FILES_HOST"]
    agents.start(AGENTS[CPU])

    ran = project.run(INGEST)
    (source_id,) = project.created_task_ids(ran.stdout + ran.stderr)
    source = api.wait_for_status(source_id, ("completed",), timeout_s=10)
    assert set(SPLIT_ARTIFACTS) <= set(artifact_uris(source))

    clone_id = clone_and_enqueue(project, source_id, "ingest (agent smoke test)", {"validation_size": "10"}, CPU)
    clone = api.wait_for_status(clone_id, ("completed",), timeout_s=120, diagnostics=lambda: agents.log(CPU))

    assert clone["parent"] == source_id
    assert clone["last_worker"] == f"e2e-{CPU}"
    assert clone["script"]["repository"] == git_remote.url
    assert clone["script"]["version_num"] == git_remote.head()
    assert api.hyperparameter(clone_id, "Args", "validation_size") == "10"

    uris = artifact_uris(clone)
    assert set(uris) == {*SPLIT_ARTIFACTS, "ingest_report"}, "the clone keeps none of its source's output artifacts"
    assert all(uri.startswith(files_host + "/") for uri in uris.values()), uris
    assert all(f".{clone_id}/" in uri for uri in uris.values()), "the clone uploaded its own artifacts"
    assert len(download(uris["validation"]).splitlines()) == 1 + 10  # header + the edited validation size

    log = api.task_log(clone_id)
    assert f"commit: {git_remote.head()}" in log and f"url: {git_remote.url}" in log  # the agent's checkout
    assert "Splits: 227 train, 10 validation, 49 test rows" in log  # the step's own output
