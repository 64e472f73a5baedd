"""The ClearML test server's semantics, checked against what clearml-server does (each test
names the server behaviour it pins). No agent, no SDK: plain API calls (and the server run as its own
process), in seconds."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.clearml_server import ClearMLTestServer, load_calls, load_state, unimplemented_calls
from tests.e2e.server_api import ApiError, ServerApi


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ClearMLTestServer(tmp_path_factory.mktemp("clearml-state")) as running:
        yield running


@pytest.fixture(scope="module")
def api(server) -> ServerApi:
    env = server.environment()
    return ServerApi(env["CLEARML_API_HOST"], env["CLEARML_API_ACCESS_KEY"], env["CLEARML_API_SECRET_KEY"])


@pytest.fixture(scope="module")
def project(api) -> str:
    return api.call("projects.create", name="unit")["id"]


def refused(call, code: int, subcode: int) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    assert (caught.value.code, caught.value.subcode) == (code, subcode), caught.value
    return caught.value


def new_task(api, project, name="unit task", **fields) -> str:
    return api.call("tasks.create", name=name, type="training", project=project, **fields)["id"]


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _param(section, name, value, **extra):
    return {"section": section, "name": name, "value": value, **extra}


# ---- transport: unknown calls, unknown fields, credentials ------------------------------


def test_unknown_endpoint_is_refused_as_the_server_refuses_it_and_logged(server, api):
    error = refused(lambda: api.call("tasks.frobnicate", task="x"), 404, 0)
    assert error.message == "Unable to find endpoint for name tasks.frobnicate and version 2.31"
    assert any(c.get("endpoint") == "tasks.frobnicate" for c in unimplemented_calls(server.state_dir))


def test_a_request_field_the_server_does_not_implement_is_refused_by_name(api, project):
    error = refused(lambda: api.call("tasks.get_all", search_text="loss"), 400, 12)
    assert "'search_text'" in error.message
    error = refused(lambda: api.call("tasks.create", name="x task", type="training", project=project, colour="red"), 400, 12)
    assert "'colour'" in error.message


def test_calls_without_credentials_are_unauthorized(server):
    request = urllib.request.Request(f"{server.api_host}/tasks.get_all", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    meta = json.load(caught.value)["meta"]
    assert (meta["result_code"], meta["result_subcode"]) == (401, 20)


def test_any_key_pair_logs_in_and_the_token_tells_the_api_level(api):
    token = api.call("auth.login")["token"]
    claims = json.loads(urllib.request.base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert (claims["api_version"], claims["server_version"], claims["feature_set"]) == ("2.31", "2.0.0", "basic")


def test_names_shorter_than_three_characters_are_refused_as_mongoengine_refuses_them(api, project):
    refused(lambda: api.call("queues.create", name="c1"), 400, 800)
    refused(lambda: new_task(api, project, name="ab"), 400, 800)


# ---- the status machine ----------------------------------------------------------------


def test_status_changes_follow_the_state_machine_unless_forced(api, project):
    task = new_task(api, project)
    error = refused(lambda: api.call("tasks.completed", task=task), 400, 110)
    assert "current_status=created, new_status=completed" in error.message
    api.call("tasks.started", task=task)
    api.call("tasks.completed", task=task)
    api.call("tasks.publish", task=task)
    refused(lambda: api.call("tasks.started", task=task), 400, 110)
    api.call("tasks.started", task=task, force=True)
    assert api.task(task)["status"] == "in_progress"


def test_enqueue_dequeue_and_the_agent_pulling_the_task(api, project):
    queue = api.queue_id("unit-queue", create=True)
    task = new_task(api, project, system_tags=["development"])
    api.call("tasks.enqueue", task=task, queue=queue)
    queued = api.task(task)
    assert (queued["status"], queued["execution"]["queue"], queued["system_tags"]) == ("queued", queue, [])
    refused(lambda: api.call("tasks.enqueue", task=task, queue=queue), 400, 706)
    api.call("tasks.dequeue", task=task)
    assert api.task(task)["status"] == "created"
    assert api.call("queues.get_by_id", queue=queue)["queue"]["entries"] == []
    api.call("tasks.enqueue", task=task, queue=queue)
    entry = api.call("queues.get_next_task", queue=queue)["entry"]
    assert entry["task"] == task and api.call("queues.get_next_task", queue=queue) == {}


def test_k8s_glue_queues_are_hidden_unless_searched_for(api):
    """``queues.py:_hidden_query`` with ``services.queues.hidden_tags: [k8s-glue]``: left out of
    queues.get_all unless ``search_hidden``, ``id`` or ``name`` is given."""
    hidden = api.call("queues.create", name="unit-k8s-glue", system_tags=["k8s-glue"])["id"]
    listed = lambda **query: {q["id"] for q in api.call("queues.get_all", only_fields=["id"], **query)["queues"]}  # noqa: E731
    assert hidden not in listed() and api.queue_id("unit-queue", create=True) in listed()
    assert hidden in listed(search_hidden=True)
    assert listed(id=[hidden]) == {hidden} and listed(name="^unit-k8s-glue$") == {hidden}


def test_verify_watched_queue_ignores_workers_whose_registration_expired(api, project):
    """``QueueBLL.check_for_workers`` reads ``WorkerBLL.get_all``: a worker's entry expires
    ``timeout`` seconds after its last report (a Redis TTL), and then watches nothing."""
    queue = api.queue_id("unit-expiring-queue", create=True)
    api.call("workers.register", worker="unit-expiring-worker", queues=[queue], timeout=1)
    assert api.call("tasks.enqueue", task=new_task(api, project), queue=queue, verify_watched_queue=True)["queue_watched"] is True
    time.sleep(1.2)
    assert api.call("tasks.enqueue", task=new_task(api, project), queue=queue, verify_watched_queue=True)["queue_watched"] is False


def test_a_completed_task_must_be_reset_before_it_is_enqueued_again(api, project):
    queue = api.queue_id("unit-queue", create=True)
    task = new_task(api, project)
    api.call("tasks.started", task=task)
    api.call("tasks.completed", task=task)
    refused(lambda: api.call("tasks.enqueue", task=task, queue=queue), 400, 110)
    api.call("tasks.reset", task=task)
    api.call("tasks.enqueue", task=task, queue=queue)
    assert api.task(task)["status"] == "queued"


def test_stop_of_a_task_no_worker_reports_on_stops_it_at_once(api, project):
    task = new_task(api, project)
    api.call("tasks.started", task=task)
    api.call("tasks.stop", task=task)
    assert api.task(task)["status"] == "stopped"


def test_stop_of_a_task_a_worker_runs_only_asks_the_worker_to_stop(api, project):
    task = new_task(api, project)
    api.call("tasks.started", task=task)
    api.call("workers.register", worker="unit-worker", queues=[])
    api.call("workers.status_report", worker="unit-worker", task=task, timestamp=0)
    api.call("tasks.stop", task=task)
    assert (api.task(task)["status"], api.task(task)["status_message"]) == ("in_progress", "stopping")


# ---- what reset and clone keep and drop ------------------------------------------------


def _finished_task_with_outputs(api, project) -> tuple[str, str]:
    task = new_task(
        api,
        project,
        hyperparams={"Args": {"rank": {"section": "Args", "name": "rank", "value": "8"}}},
        script={"repository": "git://example/repo.git", "version_num": "abc", "entry_point": "steps/train.py"},
    )
    api.call("tasks.started", task=task)
    api.call(
        "tasks.add_or_update_artifacts",
        task=task,
        artifacts=[
            {"key": "checkpoint", "type": "custom", "uri": "http://files/checkpoint.zip"},
            {"key": "data", "type": "custom", "mode": "input", "uri": "http://files/data.tsv"},
        ],
    )
    model = api.call("models.create", name="unit model", uri="http://files/model.zip", task=task, ready=False)["id"]
    api.call("tasks.add_or_update_model", task=task, name="adapter", model=model, type="output")
    api.call("tasks.edit", task=task, force=True, runtime={"progress": "100"})
    api.call_batch(
        "events.add_batch", [{"task": task, "type": "training_stats_scalar", "metric": "loss", "variant": "train", "value": 1.0, "iter": 3}]
    )
    api.call("tasks.completed", task=task)
    return task, model


def test_clone_drops_output_artifacts_models_metrics_and_runtime(api, project):
    source, _ = _finished_task_with_outputs(api, project)
    clone = api.task(api.call("tasks.clone", task=source)["id"])
    assert clone["status"] == "created" and clone["parent"] == source
    assert [a["key"] for a in clone["execution"]["artifacts"]] == ["data"]
    assert clone["models"]["output"] == [] and clone["last_metrics"] == {} and clone["runtime"] == {}
    assert clone["script"]["version_num"] == "abc" and clone["hyperparams"]["Args"]["rank"]["value"] == "8"
    grandchild = api.task(api.call("tasks.clone", task=clone["id"])["id"])
    assert grandchild["parent"] == source  # the source's parent, when it has one


def test_reset_clears_outputs_events_and_draft_models(api, project):
    task, model = _finished_task_with_outputs(api, project)
    api.call("tasks.reset", task=task)
    reset = api.task(task)
    assert reset["status"] == "created" and [a["key"] for a in reset["execution"]["artifacts"]] == ["data"]
    assert (reset["last_metrics"], reset["last_iteration"], reset["models"]["output"], reset["runtime"]) == ({}, 0, [], {})
    assert reset["hyperparams"]["Args"]["rank"]["value"] == "8" and reset["script"]["version_num"] == "abc"
    refused(lambda: api.call("models.get_by_id", model=model), 400, 201)


def test_draft_models_kept_by_reset_or_delete_lose_or_redirect_their_task_link(api, project):
    """``task_cleanup.py:cleanup_task`` with ``delete_output_models=false``: the draft output
    models are handled as published ones: reset unlinks them, delete points them (and the
    task's children) at ``__DELETED__<task>``, counted in ``updated_models`` / ``updated_children``."""
    task, model = _finished_task_with_outputs(api, project)
    reset = api.call("tasks.reset", task=task, delete_output_models=False)
    assert reset["deleted_models"] == 0 and "task" not in api.call("models.get_by_id", model=model)["model"]

    task, model = _finished_task_with_outputs(api, project)
    child = new_task(api, project, name="child task", parent=task)
    deleted = api.call("tasks.delete", task=task, force=True, delete_output_models=False)
    assert (deleted["deleted_models"], deleted["updated_models"], deleted["updated_children"]) == (0, 1, 1)
    assert api.call("models.get_by_id", model=model)["model"]["task"] == f"__DELETED__{task}"
    assert api.task(child)["parent"] == f"__DELETED__{task}"


def test_reset_and_delete_list_the_files_left_behind_only_when_asked(api, project):
    """``CleanupResult.to_res_dict``: ``urls`` (draft model and output artifact URIs; event URLs
    never) with ``return_file_urls``; otherwise none: null from delete, absent from reset."""
    listed = {"model_urls": ["http://files/model.zip"], "artifact_urls": ["http://files/checkpoint.zip"], "event_urls": []}
    task, _ = _finished_task_with_outputs(api, project)
    assert "urls" not in api.call("tasks.reset", task=task, delete_external_artifacts=False)
    task, _ = _finished_task_with_outputs(api, project)
    assert api.call("tasks.reset", task=task, return_file_urls=True, delete_external_artifacts=False)["urls"] == listed
    task, _ = _finished_task_with_outputs(api, project)
    assert api.call("tasks.delete", task=task, force=True, delete_external_artifacts=False)["urls"] is None
    task, model = _finished_task_with_outputs(api, project)
    new_task(api, project, name="uses the model", models={"input": [{"name": "base", "model": model}]})
    deleted = api.call("tasks.delete", task=task, force=True, return_file_urls=True, delete_external_artifacts=False)
    assert deleted["urls"] == {**listed, "model_urls": []}  # a model another task uses stays, and is not listed


def test_a_published_task_is_not_reset_without_force(api, project):
    task, _ = _finished_task_with_outputs(api, project)
    api.call("tasks.publish", task=task)
    refused(lambda: api.call("tasks.reset", task=task), 400, 110)


# ---- get_all ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalogue(api):
    root = api.call("projects.create", name="catalogue")["id"]
    sub = api.call("projects.create", name="catalogue/sub/deep")["id"]
    names = {}
    for name, tags, project_id in (("alpha one", ["a"], root), ("alpha two", ["a", "b"], root), ("beta", ["b"], sub), ("gamma", [], sub)):
        names[name] = new_task(api, project_id, name=name, tags=tags)
    hidden = new_task(api, root, name="hidden one", system_tags=["hidden"])
    return {"root": root, "sub": sub, "hidden": hidden, **names}


def _names(api, **query) -> list[str]:
    return [t["name"] for t in api.tasks(only_fields=["name"], **query)]


def test_get_all_name_is_a_regular_expression(api, catalogue):
    assert sorted(_names(api, name="^alpha", project=[catalogue["root"]])) == ["alpha one", "alpha two"]


def test_get_all_tags_with_exclusion_and_operators(api, catalogue):
    root, sub = catalogue["root"], catalogue["sub"]
    both = [root, sub]
    assert sorted(_names(api, project=both, tags=["a"])) == ["alpha one", "alpha two"]
    assert sorted(_names(api, project=both, tags=["-b"])) == ["alpha one", "gamma"]
    assert sorted(_names(api, project=both, tags=["__$all", "a", "b"])) == ["alpha two"]
    assert sorted(_names(api, project=both, tags=["__$not", "a"])) == ["beta", "gamma"]
    assert sorted(_names(api, project=both, tags=[None])) == ["gamma"]


def test_get_all_projects_include_subprojects_only_when_asked(api, catalogue):
    parent = api.call("projects.get_by_id", project=catalogue["sub"])["project"]["parent"]
    assert api.call("projects.get_by_id", project=parent)["project"]["name"] == "catalogue/sub"
    assert sorted(_names(api, project=[catalogue["root"]])) == ["alpha one", "alpha two"]
    assert sorted(_names(api, project=[catalogue["root"]], include_subprojects=True)) == ["alpha one", "alpha two", "beta", "gamma"]


def test_get_all_hides_hidden_tasks_unless_asked(api, catalogue):
    assert "hidden one" not in _names(api, project=[catalogue["root"]])
    assert "hidden one" in _names(api, project=[catalogue["root"]], search_hidden=True)
    assert _names(api, id=[catalogue["hidden"]]) == ["hidden one"]


def test_get_all_orders_pages_and_projects(api, catalogue):
    query = dict(project=[catalogue["root"], catalogue["sub"]])
    assert _names(api, order_by=["-name"], **query) == ["gamma", "beta", "alpha two", "alpha one"]
    assert _names(api, order_by=["name"], page=1, page_size=3, **query) == ["gamma"]
    (task,) = api.tasks(id=[catalogue["beta"]], only_fields=["name", "execution.queue", "runtime.version"])
    assert task == {"id": catalogue["beta"], "name": "beta", "execution": {}, "runtime": {}}
    # "*" is get_all_ex's (ProjectionHelper); mongoengine's only() of get_all cannot resolve it
    assert refused(lambda: api.tasks(id=[catalogue["beta"]], projection=["*", "execution.*"]), 500, 0).message == 'Cannot resolve field "*"'


def test_get_all_by_status_parent_and_hyperparameter(api, project):
    source = new_task(api, project, name="source", hyperparams={"Args": {"rank": {"section": "Args", "name": "rank", "value": "16"}}})
    clone = api.call("tasks.clone", task=source)["id"]
    api.call("tasks.started", task=clone)
    assert [t["id"] for t in api.tasks(parent=[source], status=["in_progress"])] == [clone]
    assert {t["id"] for t in api.tasks(**{"hyperparams.Args.rank.value": ["16"]})} == {source, clone}


def test_ordering_by_a_hyperparameter_uses_the_servers_numeric_string_collation(api):
    """``Task._field_collation_overrides``: ``hyperparams.`` orders with ICU's en_US collation
    with ``numericOrdering``: digit runs by value (not the string as a number), punctuation
    before digits before letters, case third; the whole item orders as an embedded document
    (field by field: section, name, value); other fields order by binary comparison."""
    project = api.call("projects.create", name="unit collation")["id"]
    values = ["11", "2", "1.5", "1.25", "-1", "-2", "b", "A"]
    ids = {value: new_task(api, project, name=f"rank {value}", hyperparams={"Args": {"rank": _param("Args", "rank", value)}}) for value in values}
    by_value = [t["id"] for t in api.tasks(project=[project], order_by=["hyperparams.Args.rank.value"])]
    assert by_value == [ids[v] for v in ["-1", "-2", "1.5", "1.25", "2", "11", "A", "b"]]
    by_item = [t["id"] for t in api.tasks(project=[project], order_by=["-hyperparams.Args.rank"])]
    assert by_item == [ids[v] for v in ["b", "A", "11", "2", "1.25", "1.5", "-2", "-1"]]
    by_name = [t["name"] for t in api.tasks(project=[project], order_by=["name"], only_fields=["name"])]
    assert by_name[:2] == ["rank -1", "rank -2"] and by_name[-3:] == ["rank 2", "rank A", "rank b"]  # binary: "1" < "2" < "A" < "b"
    assert [t["name"] for t in api.tasks(project=[project], order_by=["name"], only_fields=["name"], **{"hyperparams.Args.rank.value": values})][
        -3:
    ] == ["rank 11", "rank A", "rank b"]


# ---- hyperparameters -------------------------------------------------------------------


def test_edit_hyper_params_merges_replaces_a_section_or_everything(api, project):
    def item(section, name, value):
        return {"section": section, "name": name, "value": value}

    task = new_task(
        api, project, hyperparams={"Args": {"a": item("Args", "a", "1"), "b": item("Args", "b", "2")}, "General": {"c": item("General", "c", "3")}}
    )

    def values():
        return {(p["section"], p["name"]): p["value"] for p in api.call("tasks.get_hyper_params", tasks=[task])["params"][0]["hyperparams"]}

    api.call("tasks.edit_hyper_params", task=task, hyperparams=[item("Args", "a", "10")])
    assert values() == {("Args", "a"): "10", ("Args", "b"): "2", ("General", "c"): "3"}
    api.call("tasks.edit_hyper_params", task=task, hyperparams=[item("Args", "z", "0")], replace_hyperparams="section")
    assert values() == {("Args", "z"): "0", ("General", "c"): "3"}
    api.call("tasks.edit_hyper_params", task=task, hyperparams=[item("General", "d", "4")], replace_hyperparams="all")
    assert values() == {("General", "d"): "4"}
    api.call("tasks.started", task=task)
    refused(lambda: api.call("tasks.edit_hyper_params", task=task, hyperparams=[item("Args", "a", "1")]), 400, 110)
    api.call("tasks.edit_hyper_params", task=task, hyperparams=[item("properties", "x", "1")])


def test_hyperparameters_and_configuration_are_checked_as_the_request_schema_and_documents_check_them(api, project):
    """Request schema (``params_item`` / ``configuration_item``: objects of strings; 400/12 as
    jsonschema words it), ``params_prepare_for_save`` (no empty names; 400/12) and the strict
    ``ParamsItem`` (no other fields: 400/12; a missing value fails the save: 400/800)."""

    def create(**fields):
        return lambda: new_task(api, project, name="checked params", **fields)

    error = refused(create(hyperparams={"Args": {"rank": {"section": "Args", "name": "rank", "value": 8}}}), 400, 12)
    assert "8 is not of type 'string'" in error.message and "path=(hyperparams, Args, rank, value)" in error.message
    refused(create(hyperparams={"Args": "rank=8"}), 400, 12)
    refused(create(hyperparams={"Args": {"rank": "8"}}), 400, 12)
    assert "Empty section name" in refused(create(hyperparams={"": {"rank": _param("", "rank", "8")}}), 400, 12).message
    assert "Empty parameter name" in refused(create(hyperparams={"Args": {"": _param("Args", "", "8")}}), 400, 12).message
    error = refused(create(hyperparams={"Args": {"rank": _param("Args", "rank", "8", colour="red")}}), 400, 12)
    assert "document=ParamsItem, field=colour" in error.message
    refused(create(hyperparams={"Args": {"rank": {"section": "Args", "name": "rank"}}}), 400, 800)
    refused(create(configuration={"design": {"name": "design", "value": {"layers": 2}}}), 400, 12)
    task = new_task(api, project, name="checked params", hyperparams={"Args": {"rank": _param("Args", "rank", "8", type=None)}})
    assert api.task(task)["hyperparams"] == {"Args": {"rank": _param("Args", "rank", "8")}}  # null fields are not stored
    refused(lambda: api.call("tasks.edit_hyper_params", task=task, hyperparams=[_param("Args", "rank", 16)]), 400, 12)
    refused(lambda: api.call("tasks.clone", task=task, new_task_hyperparams={"Args": {"rank": _param("Args", "rank", True)}}), 400, 12)


# ---- pipelines: the web UI's "New run" ------------------------------------------------


def _controller(api, project_name, name, **fields) -> str:
    project = api.call("projects.create", name=project_name)["id"]
    hyperparams = {
        "Args": {"lora_rank": _param("Args", "lora_rank", "8", type="int"), "epochs": _param("Args", "epochs", "3", type="int")},
        "properties": {"version": _param("properties", "version", "1.0")},
    }
    return api.call(
        "tasks.create", name=name, type="controller", project=project, hyperparams=hyperparams, system_tags=["pipeline", "development"], **fields
    )["id"]


def test_start_pipeline_enqueues_a_clone_with_the_args_as_the_ui_new_run_does(api):
    """``pipelines.start_pipeline``: ``clone_task`` with the args as ``Args`` overrides (each
    item replaced whole, its type gone), ``_update_task_name`` (``<last part of the project
    name> #N``, N counting the project's pipeline tasks of that name, the new run included)
    and ``enqueue_task`` with the status message "Starting pipeline"."""
    queue = api.queue_id("unit-pipelines", create=True)
    controller = _controller(api, "unit/.pipelines/lora sweep", "lora sweep")
    started = api.call(
        "pipelines.start_pipeline", task=controller, queue=queue, args=[{"name": "lora_rank", "value": "16"}, {"name": "seed", "value": "7"}]
    )
    assert set(started) == {"pipeline", "enqueued"} and started["enqueued"] is True
    run = api.task(started["pipeline"])
    assert run["name"] == "lora sweep #2" and run["type"] == "controller"
    assert run["hyperparams"] == {
        "Args": {
            "lora_rank": _param("Args", "lora_rank", "16"),
            "seed": _param("Args", "seed", "7"),
            "epochs": _param("Args", "epochs", "3", type="int"),
        },
        "properties": {"version": _param("properties", "version", "1.0")},
    }
    assert (run["status"], run["status_message"], run["execution"]["queue"]) == ("queued", "Starting pipeline", queue)
    assert run["parent"] == controller and run["system_tags"] == ["pipeline"]
    assert run["id"] in [e["task"] for e in api.call("queues.get_by_id", queue=queue)["queue"]["entries"]]
    assert api.task(controller)["hyperparams"]["Args"]["lora_rank"]["value"] == "8"
    again = api.call("pipelines.start_pipeline", task=controller, queue=queue)
    assert api.task(again["pipeline"])["name"] == "lora sweep #3"
    assert api.task(again["pipeline"])["hyperparams"]["Args"]["lora_rank"]["value"] == "8"  # no args: the source's


def test_start_pipeline_names_a_run_by_its_project_and_counts_only_pipeline_tasks(api):
    """The count is a regex search (``<name>( #\\d+)?$``, not anchored at the start) over the
    project's tasks tagged ``pipeline``, the new run (still named as its source) included."""
    queue = api.queue_id("unit-pipelines", create=True)
    controller = _controller(api, "unit/.pipelines/nightly", "nightly controller")
    project = api.task(controller)["project"]
    new_task(api, project, name="nightly #5")  # not a pipeline task: not counted
    first = api.call("pipelines.start_pipeline", task=controller, queue=queue)["pipeline"]
    assert api.task(first)["name"] == "nightly"  # no task of that name yet: no number
    second = api.call("pipelines.start_pipeline", task=controller, queue=queue)["pipeline"]
    assert api.task(second)["name"] == "nightly #1"
    other = _controller(api, "unit/.pipelines/weekly", "the weekly")  # ends with the name: counted
    assert api.task(api.call("pipelines.start_pipeline", task=other, queue=queue)["pipeline"])["name"] == "weekly #2"


def test_start_pipeline_tells_whether_a_worker_watches_the_queue(api):
    queue = api.queue_id("unit-pipelines-watched", create=True)
    controller = _controller(api, "unit/.pipelines/watched", "watched")
    assert api.call("pipelines.start_pipeline", task=controller, queue=queue, verify_watched_queue=True)["queue_watched"] is False
    api.call("workers.register", worker="unit-pipelines-worker", queues=[queue])
    assert api.call("pipelines.start_pipeline", task=controller, queue=queue, verify_watched_queue=True)["queue_watched"] is True


def test_start_pipeline_refuses_an_unknown_task_queue_or_argument(api):
    queue = api.queue_id("unit-pipelines", create=True)
    controller = _controller(api, "unit/.pipelines/refused", "refused")
    refused(lambda: api.call("pipelines.start_pipeline", task="no-such-task", queue=queue), 400, 101)
    refused(lambda: api.call("pipelines.start_pipeline", task=controller), 400, 12)  # queue is required
    refused(lambda: api.call("pipelines.start_pipeline", task=controller, queue=queue, args=[{"name": "lora_rank"}]), 400, 12)
    error = refused(lambda: api.call("pipelines.start_pipeline", task=controller, queue=queue, args=[], colour="red"), 400, 12)
    assert "'colour'" in error.message
    refused(lambda: api.call("pipelines.start_pipeline", task=controller, queue="no-such-queue"), 400, 701)
    project = api.task(controller)["project"]
    # as on the server, the clone is made before the enqueueing fails, and stays
    assert sorted(t["status"] for t in api.tasks(project=[project], search_hidden=True)) == ["created", "created"]


# ---- events ----------------------------------------------------------------------------


def _scalar(task, value, iteration, timestamp, variant="train"):
    return {
        "task": task,
        "type": "training_stats_scalar",
        "metric": "loss",
        "variant": variant,
        "value": value,
        "iter": iteration,
        "timestamp": timestamp,
    }


def test_scalar_events_update_last_metrics_as_the_server_does(api, project):
    task = new_task(api, project)
    api.call("tasks.started", task=task)
    api.call_batch("events.add_batch", [_scalar(task, 3.0, 0, 1), _scalar(task, 1.0, 1, 2), _scalar(task, 2.0, 2, 3)])
    api.call_batch("events.add_batch", [_scalar(task, 1.5, 5, 4), _scalar(task, 4.0, 4, 5)])
    stored = api.task(task)
    metric = stored["last_metrics"][md5("loss")][md5("train")]
    assert (metric["metric"], metric["variant"], metric["value"]) == ("loss", "train", 1.5)  # the latest iteration of the batch
    assert (metric["min_value"], metric["min_value_iteration"]) == (1.0, 1)  # kept: the second batch's minimum is higher
    assert (metric["max_value"], metric["max_value_iteration"]) == (4.0, 4)
    assert (metric["first_value"], metric["first_value_iteration"]) == (3.0, 0)
    assert (metric["count"], metric["mean_value"]) == (5, 2.3)
    assert stored["last_iteration"] == 5
    histogram = api.call("events.scalar_metrics_iter_histogram", task=task)
    assert histogram["loss"]["train"] == {"name": "train", "x": [0, 1, 2, 4, 5], "y": [3.0, 1.0, 2.0, 4.0, 1.5]}


def test_machine_monitoring_events_do_not_move_the_task_iteration(api, project):
    """``EventBLL.add_events``: metrics in ``services.events.ignore_iteration.metrics``
    (``:monitor:machine``, ``:monitor:gpu``) leave ``last_iteration`` alone; they are stored
    and summarized in ``last_metrics`` as any scalar."""
    task = new_task(api, project)
    api.call("tasks.started", task=task)
    monitor = [{**_scalar(task, 42.0, 500, 1), "metric": metric, "variant": "cpu_usage"} for metric in (":monitor:machine", ":monitor:gpu")]
    api.call_batch("events.add_batch", [_scalar(task, 1.0, 3, 1), *monitor])
    stored = api.task(task)
    assert stored["last_iteration"] == 3
    assert stored["last_metrics"][md5(":monitor:machine")][md5("cpu_usage")]["value"] == 42.0
    assert len(api.call("events.get_task_events", task=task)["events"]) == 3


def test_events_of_a_published_task_are_added_only_with_allow_locked(api, project):
    """``EventBLL._get_valid_entities``: a published task takes events whose ``allow_locked``
    is set; a task's events must agree on it (``Inconsistent allow_locked setting``)."""
    task = new_task(api, project)
    api.call("tasks.started", task=task)
    api.call("tasks.completed", task=task, publish=True)
    refused(lambda: api.call_batch("events.add_batch", [_scalar(task, 1.0, 0, 1)]), 400, 131)
    assert api.call_batch("events.add_batch", [{**_scalar(task, 1.0, 0, 1), "allow_locked": True}])["added"] == 1
    mixed = [{**_scalar(task, 1.0, 1, 2), "allow_locked": True}, _scalar(task, 2.0, 2, 3)]
    assert "Inconsistent allow_locked" in refused(lambda: api.call_batch("events.add_batch", mixed), 400, 12).message
    assert [e["iter"] for e in api.call("events.get_task_events", task=task)["events"]] == [0]


def test_task_log_pages_from_the_latest_or_the_earliest(api, project):
    task = new_task(api, project)
    api.call_batch("events.add_batch", [{"task": task, "type": "log", "msg": f"line {i}", "timestamp": i} for i in range(5)])
    latest = api.call("events.get_task_log", task=task, batch_size=2)
    assert ([e["msg"] for e in latest["events"]], latest["total"]) == (["line 4", "line 3"], 5)
    earliest = api.call("events.get_task_log", task=task, batch_size=2, navigate_earlier=False, from_timestamp=1)
    assert [e["msg"] for e in earliest["events"]] == ["line 2", "line 3"]


def test_an_event_replaces_the_stored_one_with_its_id(api, project):
    """``EventBLL._get_event_id``: task, iteration, metric and variant name an event; the latest wins,
    within a batch too. Log lines are never replaced."""
    task = new_task(api, project)
    api.call_batch("events.add_batch", [_scalar(task, 1.0, 0, 1), _scalar(task, 2.0, 1, 2)])
    api.call_batch("events.add_batch", [_scalar(task, 3.0, 0, 3), _scalar(task, 4.0, 1, 4), _scalar(task, 5.0, 1, 5)])
    logs = [{"task": task, "type": "log", "msg": "same", "timestamp": 6}] * 2
    api.call_batch("events.add_batch", logs)
    events = api.call("events.get_task_events", task=task)["events"]
    assert [(e["type"], e.get("iter"), e.get("value")) for e in events] == [
        ("training_stats_scalar", 0, 3.0),
        ("training_stats_scalar", 1, 5.0),
        ("log", None, None),
        ("log", None, None),
    ]


def test_task_events_page_by_iteration_and_bring_along_the_last_iteration(api, project):
    """``events.get_task_events`` as ``Task._get_all_events`` (Task.delete) and
    ``get_all_reported_scalars`` read it: by iteration, the page's last iteration whole."""
    task = new_task(api, project)
    scalars = [_scalar(task, float(i), i, 10 + i) for i in (0, 1, 2, 2, 3)]
    scalars[3]["variant"] = "validation"
    api.call_batch("events.add_batch", [*scalars, {"task": task, "type": "log", "msg": "hello", "timestamp": 1}])
    first = api.call("events.get_task_events", task=task, event_type="training_stats_scalar", batch_size=3)
    assert [(e["iter"], e["variant"]) for e in first["events"]] == [(0, "train"), (1, "train"), (2, "train"), (2, "validation")]
    assert (first["returned"], first["total"]) == (4, 5)
    second = api.call("events.get_task_events", task=task, scroll_id=first["scroll_id"])
    assert ([e["iter"] for e in second["events"]], second["total"]) == ([3], 5)
    assert api.call("events.get_task_events", task=task, scroll_id=second["scroll_id"])["events"] == []
    everything = api.call("events.get_task_events", task=task, order="desc")
    assert [e.get("iter") for e in everything["events"]][:2] == [3, 2] and everything["events"][-1]["type"] == "log"
    validation = api.call("events.get_task_events", task=task, metrics=[{"metric": "loss", "variants": ["validation"]}])
    assert [e["value"] for e in validation["events"]] == [2.0]
    assert api.call("events.get_task_events", task=task, event_type="training_debug_image")["events"] == []


def test_event_pages_past_the_elasticsearch_result_window_are_refused(api, project):
    """``get_task_events`` caps ``batch_size`` at ``max_raw_scalars_size`` (200,000), and
    Elasticsearch refuses any search of more than ``index.max_result_window`` (10,000) hits:
    a general data error (500/100), as is a task log page of more than 10,000 lines."""
    task = new_task(api, project)
    api.call_batch("events.add_batch", [_scalar(task, 1.0, 0, 1), {"task": task, "type": "log", "msg": "line", "timestamp": 2}])
    assert api.call("events.get_task_events", task=task, batch_size=10_000)["returned"] == 2
    assert "Result window is too large" in refused(lambda: api.call("events.get_task_events", task=task, batch_size=10_001), 500, 100).message
    assert api.call("events.get_task_log", task=task, batch_size=10_000)["returned"] == 1
    refused(lambda: api.call("events.get_task_log", task=task, batch_size=20_000), 500, 100)


# ---- models ----------------------------------------------------------------------------


def test_models_are_ready_by_default_and_publishing_one_publishes_its_task(api, project):
    assert api.call("models.get_by_id", model=api.call("models.create", name="ready model", uri="http://f/m")["id"])["model"]["ready"]
    task = new_task(api, project)
    api.call("tasks.started", task=task)
    api.call("tasks.completed", task=task)
    model = api.call("models.create", name="draft model", uri="http://f/m", task=task, ready=False)["id"]
    api.call("models.add_or_update_metadata", model=model, metadata=[{"key": "bleu", "type": "float", "value": "0.1"}])
    api.call("models.add_or_update_metadata", model=model, metadata=[{"key": "chrf", "type": "float", "value": "0.2"}])
    api.call("models.set_ready", model=model)
    stored = api.call("models.get_by_id", model=model)["model"]
    assert stored["ready"] and sorted(stored["metadata"]) == ["bleu", "chrf"]
    assert api.task(task)["status"] == "published"
    refused(lambda: api.call("models.set_ready", model=model), 400, 203)


def test_set_ready_publishes_the_models_task_but_not_the_tasks_last_output_model(api, project):
    """``models.set_ready``: ``publish_task`` is called without ``publish_model_func``, so the
    task's last output model (unlike with tasks.publish) stays a draft."""
    task = new_task(api, project)
    api.call("tasks.started", task=task)
    first = api.call("models.create", name="first model", uri="http://f/1", task=task, ready=False)["id"]
    last = api.call("models.create", name="last model", uri="http://f/2", task=task, ready=False)["id"]
    api.call("tasks.add_or_update_model", task=task, name="first", model=first, type="output")
    api.call("tasks.add_or_update_model", task=task, name="last", model=last, type="output")
    api.call("tasks.completed", task=task)
    published = api.call("models.set_ready", model=first)["published_task"]
    assert published["id"] == task and api.task(task)["status"] == "published"
    assert api.call("models.get_by_id", model=last)["model"]["ready"] is False


# ---- files and state -------------------------------------------------------------------


def _upload(server, path: str, content: bytes) -> list[str]:
    """A multipart upload of one file, as the SDK's ``_HttpDriver`` sends it."""
    boundary = "unitboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{path}"; filename="{path}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        server.files_host + "/", data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    return json.load(urllib.request.urlopen(request, timeout=10))


def test_files_round_trip_and_stay_inside_the_files_folder(server):
    assert _upload(server, "p/a b.bin", b"\x00\r\n\xff") == ["p/a b.bin"]
    assert urllib.request.urlopen(f"{server.files_host}/p/a%20b.bin", timeout=10).read() == b"\x00\r\n\xff"
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{server.files_host}/../calls.jsonl", timeout=10)  # beside files/, there from the start
    assert caught.value.code == 404


def test_state_and_calls_are_written_to_the_state_directory(tmp_path):
    with ClearMLTestServer(tmp_path) as running:
        env = running.environment()
        api = ServerApi(env["CLEARML_API_HOST"], env["CLEARML_API_ACCESS_KEY"], env["CLEARML_API_SECRET_KEY"])
        task = new_task(api, api.call("projects.create", name="saved")["id"], name="saved task")
    assert load_state(tmp_path)["tasks"][task]["name"] == "saved task"
    assert [c["endpoint"] for c in load_calls(tmp_path)] == ["auth.login", "projects.create", "tasks.create"]


SPANS_A_RESTART = """
import pathlib, sys, time
from clearml import Task
task = Task.init(project_name="restart", task_name="spans a restart")
task.get_logger().report_scalar("loss", "train", value=1.0, iteration=0)
print("ready", flush=True)
go = pathlib.Path(sys.argv[1])
while not go.exists():
    time.sleep(0.1)
task.upload_artifact("after", {"restarted": True}, wait_on_upload=True)
task.get_logger().report_scalar("loss", "train", value=0.5, iteration=1)
task.close()
"""


def test_a_restart_on_the_same_state_directory_keeps_state_and_tokens_and_a_run_across_it_completes(tmp_path):
    """clearml-server keeps its databases and its token secret (``secure.auth.token_secret``) across a restart;
    agents then find their queue by the id they hold, and a task whose process spans the restart completes with
    its token from before. The SDK's own configuration (its reporting subprocess) runs the task."""
    state, go = tmp_path / "state", tmp_path / "go"
    first = ClearMLTestServer(state).start()
    env = first.environment()
    api = ServerApi(env["CLEARML_API_HOST"], env["CLEARML_API_ACCESS_KEY"], env["CLEARML_API_SECRET_KEY"])
    queue = api.queue_id("cpu", create=True)
    user_env = {**{k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}, **env, "HOME": str(tmp_path)}
    run = subprocess.Popen(
        [sys.executable, "-c", SPANS_A_RESTART, str(go)],
        env=user_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        printed = ""
        while not printed.endswith("ready\n") and run.poll() is None:
            printed += run.stdout.readline()
        assert run.poll() is None, printed
        first.stop()
        second = ClearMLTestServer(state, port=int(env["CLEARML_API_HOST"].rsplit(":", 1)[1])).start()
        try:
            go.touch()
            output, _ = run.communicate(timeout=120)
            assert run.returncode == 0, output
            assert api.queue_id("cpu") == queue  # the token from before the restart, and the queue by its id
            [task] = api.tasks(name="^spans a restart$")
            assert task["status"] == "completed"
            assert [a["key"] for a in task["execution"]["artifacts"]] == ["after"]
            assert api.scalar_iterations(task["id"], "loss", "train") == [0, 1]
        finally:
            second.stop()
    finally:
        os.killpg(run.pid, signal.SIGKILL) if run.poll() is None else None


def _stored_files(server, paths: list[str], timeout_s: float = 5.0) -> set[str]:
    """Which of ``paths`` are still on the files server once the deletion job had its pass."""
    deadline = time.monotonic() + timeout_s
    while True:
        present = {p for p in paths if (server.state_dir / "files" / p).exists()}
        if time.monotonic() > deadline or not any(p.startswith("gone/") for p in present):
            return present
        time.sleep(0.1)


def test_delete_external_artifacts_deletes_the_task_files_on_the_files_server(server, api, project):
    """``_delete_task_events`` with ``delete_external_artifacts`` (default true): the draft
    models, output artifacts, debug images and plot images of the task are scheduled
    (``UrlToDelete``) and the ``async_urls_delete`` job deletes those of this files server;
    input artifacts, published models and other hosts' files are not deleted."""
    paths = ["gone/model.bin", "gone/checkpoint.zip", "gone/image 1.png", "gone/plot.png", "kept/data.tsv", "kept/published.bin"]
    for path in paths:
        _upload(server, path, b"x")
    url = lambda path: f"{server.files_host}/{urllib.parse.quote(path)}"  # noqa: E731
    task = new_task(api, project, name="task with files")
    api.call("tasks.started", task=task)
    api.call(
        "tasks.add_or_update_artifacts",
        task=task,
        artifacts=[
            {"key": "checkpoint", "type": "custom", "uri": url("gone/checkpoint.zip")},
            {"key": "data", "type": "custom", "mode": "input", "uri": url("kept/data.tsv")},
            {"key": "elsewhere", "type": "custom", "uri": "http://elsewhere.example/file.bin"},
        ],
    )
    api.call("models.create", name="draft model", uri=url("gone/model.bin"), task=task, ready=False)
    api.call("models.create", name="published model", uri=url("kept/published.bin"), task=task, ready=True)
    plot = json.dumps({"layout": {"images": [{"source": url("gone/plot.png")}]}})
    api.call_batch(
        "events.add_batch",
        [
            {"task": task, "type": "training_debug_image", "metric": "m", "variant": "v", "iter": 1, "url": url("gone/image 1.png")},
            {"task": task, "type": "plot", "metric": "m", "variant": "p", "iter": 1, "plot_str": plot},
        ],
    )
    kept = new_task(api, project, name="task keeping files")
    api.call("tasks.add_or_update_artifacts", task=kept, artifacts=[{"key": "c", "type": "custom", "uri": url("kept/data.tsv")}])
    api.call("tasks.reset", task=kept, delete_external_artifacts=False)
    api.call("tasks.delete", task=task, force=True)
    assert _stored_files(server, paths) == {"kept/data.tsv", "kept/published.bin"}
    with server.store.lock:
        failed = [e for e in server.store.urls_to_delete if e["task"] == task]
    assert [(e["url"], e["status"]) for e in failed] == [("http://elsewhere.example/file.bin", "failed")]


def _as_a_background_job() -> None:
    """A shell without job control starts ``cmd &`` with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_server_process_stops_at_once_on_sigterm_and_ctrl_c(tmp_path, signum):
    """``python -m tests.clearml_server`` stops cleanly (state written, exit 0) within seconds
    of SIGTERM, or of Ctrl-C even when started as a background job that ignores SIGINT."""
    command = [sys.executable, "-m", "tests.clearml_server", "--port", "0", "--state-dir", str(tmp_path)]
    process = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True, preexec_fn=_as_a_background_job)
    try:
        assert process.stdout.readline().startswith("CLEARML_API_HOST=")
        process.send_signal(signum)
        assert process.wait(timeout=5) == 0
        assert (tmp_path / "state.json").exists()
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def test_workers_get_all_names_the_queues_and_the_current_one_as_entries(api, project):
    """``WorkerBLL.get_all``: queue ids become ``{id, name}`` entries; ``queue`` (what the worker reported
    working from, as an agent running a task does) is the entry among its queues, or None. The SDK
    refuses a bare id there (``Expected queue of type QueueEntry, got str``)."""
    queue = api.queue_id("unit-busy-queue", create=True)
    api.call("workers.register", worker="busy-worker", queues=[queue])
    api.call("workers.status_report", worker="busy-worker", timestamp=0, queue=queue)
    [worker] = [w for w in api.call("workers.get_all")["workers"] if w["id"] == "busy-worker"]
    entry = {"id": queue, "name": "unit-busy-queue"}
    assert (worker["queues"], worker["queue"]) == ([entry], entry)
    api.call("workers.status_report", worker="busy-worker", timestamp=0, queue="not-one-of-its-queues")
    [worker] = [w for w in api.call("workers.get_all")["workers"] if w["id"] == "busy-worker"]
    assert worker["queue"] is None
