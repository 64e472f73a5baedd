"""Options that act only on a ClearML server: each set to a value other than its default, and what
that changes on the server, beside what the default does there.

As in tests/test_server_errors.py, each test starts the test server fresh (only the ``default``
queue), runs the commands as a new user's shell does (the server's variables, a new HOME) and reads
the server's state through its REST API, with the SDK's default configuration.

Every command runs in its own process group, killed when it ends or runs past ``COMMAND_TIMEOUT_S``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import git, git_env, run_in_group
from tests.e2e.server_api import ServerApi
from tests.test_server_errors import api, new_user_environment, server  # noqa: F401 (api and server are fixtures)

ROOT = Path(__file__).resolve().parents[1]
COMMAND_TIMEOUT_S = 90  # one command, imports of torch and transformers included
QUEUES = ("cpu", "gpu", "services")  # what a launch with the default options enqueues on
LOCAL_REMOTE_REFUSED = (
    "error: The git remote {url} is a path on this machine, which agents elsewhere cannot clone; push to a "
    "shared remote, or pass --allow-local-repository if every agent runs on this machine."
)
# An evaluate task whose artifact ``evaluation`` scores the adapter of a train task (its artifact
# ``adapter``, a folder), as the evaluate and train steps upload them: what steps/register.py reads.
# The adapter is the folder given as the first argument, or else a folder of placeholder files.
CANDIDATE_SCRIPT = """
import hashlib, json, sys, tempfile
from dataclasses import asdict
from pathlib import Path
from clearml import Task
from clearml_adapter import tracking
from components.decoding import DECODING_PRESETS

work = Path(tempfile.mkdtemp())
adapter = Path(sys.argv[1]) if len(sys.argv) > 1 else work / "adapter"
if len(sys.argv) == 1:
    adapter.mkdir()
    for name in ("adapter.safetensors", "adapter_config.json", "tokenizer_config.json", "spiece.model"):
        (adapter / name).write_text(name)
project = "ruT5 LoRA+Prompt"
train = Task.create(project_name=project, task_name="train", task_type="training")
tracking.upload_path(train, "adapter", adapter)
evaluate = Task.create(project_name=project, task_name="evaluate", task_type="testing")
decoding = {"preset": "greedy", **asdict(DECODING_PRESETS["greedy"]), "description": DECODING_PRESETS["greedy"].describe()}
digest = hashlib.sha256((adapter / "adapter.safetensors").read_bytes()).hexdigest()  # the weights scored, as the evaluate step records them
evaluation = {"metrics": {"chrf": 0.5, "bleu": 0.25}, "rows": 4, "max_input_length": 100, "adapter_sha256": digest, "train_task_id": train.id, "decoding": decoding}
tracking.upload_json(evaluate, "evaluation", evaluation, work)
predictions = work / "predictions.tsv"  # as the evaluate step writes them, with the untuned base's
predictions.write_text("instruction\\tinput\\toutput\\tprediction\\tbase_prediction\\n"
                       + "".join(f"Ответь.\\tвопрос {i}\\tответ {i}\\tтюн {i}\\tбаза {i}\\n" for i in range(4)), encoding="utf-8")
tracking.upload_path(evaluate, "predictions", predictions)
for task in (train, evaluate):
    task.mark_started(force=True)
    task.mark_completed(force=True)
print("IDS=" + json.dumps({"train": train.id, "evaluate": evaluate.id}))
"""


@pytest.fixture
def user_shell(server, tmp_path) -> dict[str, str]:
    return new_user_environment(server, tmp_path)


@pytest.fixture
def local_remote_checkout(tmp_path) -> tuple[Path, str]:
    """A clone of this project whose git remote is a bare repository on this machine (a path): the
    current HEAD plus the working tree's uncommitted changes to tracked files, committed and pushed.
    Returns the clone and its remote's URL."""
    home = tmp_path / "git-home"
    home.mkdir()
    env = git_env(home)
    bare = tmp_path / "remote.git"
    git("init", "--quiet", "--bare", "--initial-branch", "main", str(bare), cwd=tmp_path, env=env)
    git("push", "--quiet", "--no-verify", str(bare), "HEAD:refs/heads/main", cwd=ROOT, env=env)
    clone = tmp_path / "checkout"
    git("clone", "--quiet", str(bare), str(clone), cwd=tmp_path, env=env)
    diff = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=ROOT, env=env, capture_output=True, check=True).stdout
    if diff:
        subprocess.run(["git", "apply", "--index", "-"], cwd=clone, env=env, input=diff, check=True, capture_output=True)
        git("commit", "--quiet", "-m", "uncommitted changes of the working tree", cwd=clone, env=env)
        git("push", "--quiet", "origin", "HEAD", cwd=clone, env=env)
    assert git("remote", "get-url", "origin", cwd=clone, env=env) == str(bare)
    return clone, str(bare)


def run(env: dict[str, str], *argv: str, cwd: Path = ROOT, status: int = 0) -> subprocess.CompletedProcess:
    """``python argv...`` from ``cwd``; it must end with ``status`` within COMMAND_TIMEOUT_S."""
    completed = run_in_group([sys.executable, *argv], cwd, env, COMMAND_TIMEOUT_S, what=f"`python {' '.join(argv)}`")
    assert completed.returncode == status, (
        f"`python {' '.join(argv)}` exited {completed.returncode}, not {status}:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    )
    return completed


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def create_queues(api: ServerApi, *names: str) -> dict[str, str]:
    return {name: api.queue_id(name, create=True) for name in names}


def project_id(api: ServerApi, name: str) -> str | None:
    return next((p["id"] for p in api.call("projects.get_all")["projects"] if p["name"] == name), None)


def test_register_names_the_model_and_leaves_it_a_draft_without_publish(user_shell, api, tmp_path):
    from steps.register import build_parser

    created = run(user_shell, "-c", CANDIDATE_SCRIPT).stdout
    [ids] = [json.loads(line.removeprefix("IDS=")) for line in created.splitlines() if line.startswith("IDS=")]
    draft_dir, default_dir = tmp_path / "draft", tmp_path / "default"
    run(
        user_shell,
        "steps/register.py",
        "--candidates",
        ids["evaluate"],
        "--model-name",
        "my model",
        "--publish",
        "false",
        "--output-dir",
        str(draft_dir),
    )
    run(user_shell, "steps/register.py", "--candidates", ids["evaluate"], "--output-dir", str(default_dir))  # --publish true
    draft, default = (json.loads((folder / "result.json").read_text()) for folder in (draft_dir, default_dir))

    models = {model["id"]: model for model in api.call("models.get_all")["models"]}
    assert set(models) == {draft["outputs"]["model_id"], default["outputs"]["model_id"]}
    named = models[draft["outputs"]["model_id"]]
    assert (named["name"], named["ready"], named["task"]) == ("my model", False, draft["task_id"])
    assert api.task(draft["task_id"])["status"] == "completed"  # the register task is not published either
    published = models[default["outputs"]["model_id"]]
    assert (published["name"], published["ready"], published["task"]) == (build_parser().get_default("model_name"), True, default["task_id"])
    assert named["name"] != published["name"]
    # Both are the registered adapter, with its evaluation and tags; only the name and the state differ.
    assert named["tags"] == published["tags"] == ["best", "by chrf"]
    for model in (named, published):  # the candidate's test scores (CANDIDATE_SCRIPT) and the train task, with their types
        assert {key: (entry["value"], entry["type"]) for key, entry in model["metadata"].items()} == {
            "test_chrf": ("0.5", "float"),
            "test_bleu": ("0.25", "float"),
            "train_task_id": (ids["train"], "str"),
        }
    assert sorted(path.name for path in (draft_dir / "model").iterdir()) == [
        "adapter.safetensors",
        "adapter_config.json",
        "evaluation.json",
        "spiece.model",
        "tokenizer_config.json",
    ]


def test_a_launch_from_a_local_path_remote_needs_allow_local_repository(user_shell, api, local_remote_checkout):
    clone, url = local_remote_checkout
    queues = create_queues(api, *QUEUES)  # so that the launch gets past the queue check to the repository's
    refused = run(user_shell, "pipelines/run_pipeline.py", cwd=clone, status=1)
    assert last_line(refused.stderr) == LOCAL_REMOTE_REFUSED.format(url=url)
    assert api.tasks() == []

    run(user_shell, "pipelines/run_pipeline.py", "--allow-local-repository", cwd=clone)
    [controller] = api.tasks()
    assert (controller["type"], controller["status"], controller["execution"]["queue"]) == ("controller", "queued", queues["services"])
    assert controller["script"]["repository"] == url  # what the services agent clones
    assert api.hyperparameter(controller["id"], "Args", "allow_local_repository") == "True"


def test_a_sweep_enqueued_from_a_local_path_remote_needs_allow_local_repository(user_shell, api, local_remote_checkout):
    clone, url = local_remote_checkout
    queues = create_queues(api, *QUEUES)
    refused = run(user_shell, "pipelines/run_hpo.py", "--run-on", "services", cwd=clone, status=1)
    assert last_line(refused.stderr) == LOCAL_REMOTE_REFUSED.format(url=url)
    assert api.tasks() == []

    run(user_shell, "pipelines/run_hpo.py", "--run-on", "services", "--allow-local-repository", cwd=clone)
    [optimizer] = api.tasks()
    assert (optimizer["type"], optimizer["status"], optimizer["execution"]["queue"]) == ("optimizer", "queued", queues["services"])
    assert optimizer["script"]["repository"] == url


def test_the_sweep_checks_its_cpu_queue_and_creates_its_optimizer_in_its_project(user_shell, api):
    project = "My sweeps"
    sweep = ("pipelines/run_hpo.py", "--cpu-queue", "cpu2", "--project", project)
    missing = run(user_shell, *sweep, status=1)
    assert last_line(missing.stderr).startswith(
        "error: The ClearML server has no queue 'gpu' (--queue, for the trials and the winner's evaluation) nor 'cpu2' (--cpu-queue, "
        "for the winner's register step); start their agents with `CLEARML_AGENT_PACKAGE_PYTORCH_RESOLVE=none clearml-agent daemon --queue gpu --create-queue --gpus 0`, "
        "`CLEARML_AGENT_PACKAGE_PYTORCH_RESOLVE=none clearml-agent daemon --queue cpu2 --create-queue --cpu-only`"
    )
    assert api.tasks() == []

    create_queues(api, "gpu", "cpu2")  # and no 'cpu': the sweep's default --cpu-queue is missing
    default = run(user_shell, "pipelines/run_hpo.py", status=1)
    assert last_line(default.stderr).startswith("error: The ClearML server has no queue 'cpu' (--cpu-queue, ")
    assert api.tasks() == []

    # A completed train task in the default project: the sweep must not take it for its template.
    default_project = api.call("projects.create", name="ruT5 LoRA+Prompt")["id"]
    train = api.call("tasks.create", name="train", type="training", project=default_project)["id"]
    api.call("tasks.started", task=train, force=True)
    api.call("tasks.completed", task=train, force=True)

    failed = run(user_shell, *sweep, status=1)  # past the queue check: the optimizer task exists, then finds no template in P
    message = f"No completed train or preprocess task in project {project!r}: run pipelines/run_pipeline.py first, or pass --template-task-id."
    assert last_line(failed.stderr) == f"error: {message}"
    [optimizer] = [task for task in api.tasks() if task["id"] != train]
    assert (optimizer["type"], optimizer["project"], optimizer["status"], optimizer["status_reason"]) == (
        "optimizer",
        project_id(api, project),
        "failed",
        message,
    )
    assert api.hyperparameter(optimizer["id"], "Args", "cpu_queue") == "cpu2"  # what the optimizer enqueues register on


def test_a_rating_session_adds_the_human_win_rate_to_the_registered_model(user_shell, api, tmp_path):
    created = run(user_shell, "-c", CANDIDATE_SCRIPT).stdout
    [ids] = [json.loads(line.removeprefix("IDS=")) for line in created.splitlines() if line.startswith("IDS=")]
    registered = run(user_shell, "steps/register.py", "--candidates", ids["evaluate"], "--output-dir", str(tmp_path / "register"))
    model_id = json.loads((tmp_path / "register" / "result.json").read_text())["outputs"]["model_id"]
    assert registered.returncode == 0 and model_id
    session = ["steps/rate.py", "--evaluate-task-ids", ids["evaluate"], "--session", str(tmp_path / "session.sqlite")]
    run(user_shell, *session, "--label-studio-export", str(tmp_path / "project"))
    tasks = json.loads((tmp_path / "project" / "tasks.json").read_text())
    # One annotator prefers the fine-tuned answer on three of the four pairs.
    export = [
        {
            "id": n,
            **task,
            "annotations": [
                {
                    "completed_by": 1,
                    "was_cancelled": False,
                    "result": [
                        {
                            "from_name": "preference",
                            "to_name": "preference",
                            "type": "pairwise",
                            "value": {
                                "selected": ("left" if task["data"]["left"].startswith("тюн") else "right")
                                if n < 3
                                else ("right" if task["data"]["left"].startswith("тюн") else "left")
                            },
                        }
                    ],
                }
            ],
        }
        for n, task in enumerate(tasks)
    ]
    (tmp_path / "export.json").write_text(json.dumps(export, ensure_ascii=False))
    rated = run(user_shell, *session, "--label-studio-import", str(tmp_path / "export.json"), "--output-dir", str(tmp_path / "rate"))
    assert f"Registered model {model_id}: its human win rate is in its metadata." in rated.stdout
    rate_task_id = json.loads((tmp_path / "rate" / "result.json").read_text())["task_id"]
    [model] = [m for m in api.call("models.get_all")["models"] if m["id"] == model_id]
    metadata = {key: entry["value"] for key, entry in model["metadata"].items()}
    assert (float(metadata["human_win_rate"]), metadata["human_votes"], metadata["human_evaluation_task_id"]) == (0.75, "4", rate_task_id)
    assert api.task(rate_task_id)["type"] == "qc"
