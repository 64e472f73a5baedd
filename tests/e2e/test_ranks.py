"""Flow 9: the train step on two ranks through agents, as docs/distributed.md says.

A UI clone of the session pipeline's train task with ``nproc_per_node`` 2 runs on the gpu agent (two
CPU ranks, gloo); another with ``nodes`` 2 on the README's multinode agent command, started twice
(two machines, here one: the master's address 127.0.0.1, a free port). Both runs are world size 2,
with the same shards and per-rank seeds, so they must train the same adapters bit for bit.
"""

from __future__ import annotations

import io
import urllib.request
import zipfile

from tests.e2e.flows import AGENTS, GPU, artifact_uri, clone_and_enqueue, download_json
from tests.e2e.harness import free_port

MULTINODE = "multinode"
ARGS = {"max_steps": "6", "eval_every": "3"}


def adapter_weights(task: dict) -> bytes:
    """adapter.safetensors from the task's ``adapter`` artifact (a folder, uploaded as a zip)."""
    with urllib.request.urlopen(artifact_uri(task, "adapter"), timeout=30) as response:
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    [name] = [name for name in archive.namelist() if name.endswith("adapter.safetensors")]
    return archive.read(name)


def test_flow9_two_ranks_on_one_agent_and_two_nodes_on_two_agents_train_the_same_adapters(pipeline_run, clearml_server, project, agents):
    api = clearml_server.api
    on_one_machine = {"CLEARML_MULTI_NODE_MASTER_DEF_ADDR": "127.0.0.1", "CLEARML_MULTI_NODE_MASTER_DEF_PORT": str(free_port())}
    for name in (MULTINODE, f"{MULTINODE}-2"):
        agents.start(AGENTS[MULTINODE], name=name, extra_env=on_one_machine)
    source = pipeline_run["steps"]["train"]["id"]
    two_ranks = clone_and_enqueue(project, source, "train on 2 ranks", {**ARGS, "nproc_per_node": "2"}, GPU)
    two_nodes = clone_and_enqueue(project, source, "train on 2 nodes", {**ARGS, "nodes": "2"}, MULTINODE)
    logs = lambda: agents.log(GPU) + agents.log(MULTINODE) + agents.log(f"{MULTINODE}-2")  # noqa: E731
    ranks_task = api.wait_for_status(two_ranks, ("completed",), timeout_s=300, diagnostics=logs)
    nodes_task = api.wait_for_status(two_nodes, ("completed",), timeout_s=300, diagnostics=logs)

    [node_1] = api.tasks(parent=[two_nodes], system_tags=["multi_node_instance"], only_fields=["id"])
    node_1 = api.wait_for_status(node_1["id"], ("completed",), timeout_s=60)
    assert {nodes_task["last_worker"], node_1["last_worker"]} == {f"e2e-{MULTINODE}", f"e2e-{MULTINODE}-2"}
    assert "Node 1 of 2" in api.task_log(node_1["id"]) and "Node 0 of 2" in api.task_log(two_nodes)
    assert api.models_of(node_1["id"]) == []  # rank 0's task alone registers the adapter
    assert "[rank 1] " in api.task_log(two_ranks)  # the second rank's console output reaches the task's log

    trained = {task["id"]: download_json(artifact_uri(task, "training")) for task in (ranks_task, nodes_task)}
    assert [training["ranks"] for training in trained.values()] == [2, 2]
    assert trained[two_ranks]["train_losses"] == trained[two_nodes]["train_losses"]
    assert trained[two_ranks]["history"] == trained[two_nodes]["history"]
    assert adapter_weights(ranks_task) == adapter_weights(nodes_task)
    assert api.scalar_iterations(two_nodes, "loss", "train") == list(range(1, 7))  # once per step, not once per rank
