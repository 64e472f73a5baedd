"""``pipelines/controller.py``'s tasks on the test ClearML server, made in forked runs (``tests/forked.py``): the step
templates, the runs cloned from them with the controller's code, and the controller task's own code. The DAG it builds
is read in ``tests/test_pipeline_wiring.py``; the whole pipeline on agents in ``tests/e2e``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

from conftest import ASCII_LOCALE
from forked import run_main
from server_runs import arguments_of, on_server, server  # noqa: F401 (server is a fixture)

from components.settings import PROJECT_ROOT, REQUIREMENTS_FILE
from pipelines.controller import CONTROLLER_ENTRY_POINT, TEMPLATE_TAG

PROJECT = "Дообучение"  # not ASCII: the templates project is named after it
REMOTE = "https://git.example.com/team/rut5.git"


def in_repository(path: str) -> str:
    """``path`` of the project as ClearML records a script: relative to the root of the git repository that holds it
    (the checkout's root, or a folder above it for the copies that ``make mutation`` tests)."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=PROJECT_ROOT, check=True, capture_output=True, text=True).stdout.strip()
    return (PROJECT_ROOT / path).relative_to(Path(root).resolve()).as_posix()


def pushed_checkout(path: Path) -> Path:
    """A committed checkout of the step scripts with a remote, as a user's clone has (the remote is only named, not reached)."""
    shutil.copytree(PROJECT_ROOT / "steps", path / "steps")
    for command in (
        ["init", "-q"],
        ["add", "."],
        ["-c", "user.name=u", "-c", "user.email=u@example.com", "commit", "-qm", "steps"],
        ["remote", "add", "origin", REMOTE],
    ):
        subprocess.run(["git", *command], cwd=path, check=True, capture_output=True)
    return path


def test_a_steps_template_is_made_once_under_templates_with_the_steps_defaults_and_the_oldest_match_is_it(server, tmp_path):
    def templates() -> dict:
        import os

        from clearml import Task

        from pipelines import controller
        from pipelines.controller import find_or_create_template
        from pipelines.definition import STEP_BY_NAME

        checkout = pushed_checkout(tmp_path / "checkout")
        controller.PROJECT_ROOT = checkout  # in this forked run only
        os.chdir(tmp_path)  # launched from another folder: python checkout/pipelines/run_pipeline.py
        Task.create(project_name=f"{PROJECT}/templates", task_name="train", task_type="training")  # older, but untagged
        first = find_or_create_template(STEP_BY_NAME["train"], PROJECT)
        # A user's clone of the template in the same project, tags and all, and tasks that only look like templates.
        clone = Task.clone(source_task=first, name="train")
        clone.set_tags([TEMPLATE_TAG])
        Task.create(project_name=f"{PROJECT}/templates", task_name="train v2", task_type="training").set_tags([TEMPLATE_TAG])
        archived = Task.create(project_name=f"{PROJECT}/templates", task_name="evaluate", task_type="testing")
        archived.set_tags([TEMPLATE_TAG])
        archived.set_archived(True)
        return {
            "first": first.id,
            "again": find_or_create_template(STEP_BY_NAME["train"], PROJECT).id,
            "clone": clone.id,
            "evaluate": find_or_create_template(STEP_BY_NAME["evaluate"], PROJECT).id,
            "archived": archived.id,
            "other_project": find_or_create_template(STEP_BY_NAME["train"], "Другой").id,
        }

    made = on_server(server, tmp_path, templates)
    assert made["again"] == made["first"] != made["clone"]  # the oldest match, not the user's newer clone
    assert made["evaluate"] != made["archived"]  # an archived template is not used: a new one is made
    assert made["other_project"] != made["first"]
    api = server.api
    template = api.task(made["first"])
    [project] = api.call("projects.get_all", id=[template["project"]], only_fields=["name"])["projects"]
    assert project["name"] == f"{PROJECT}/templates"
    assert (template["name"], template["type"], template["tags"]) == ("train", "training", [TEMPLATE_TAG])
    script = template["script"]
    assert (script["repository"], script["entry_point"], script["working_dir"]) == (REMOTE, "steps/train.py", ".")
    assert '+(__name__ != "__main__") or Task.init()' not in script.get("diff", "").splitlines()  # the step calls Task.init itself
    assert template["script"]["requirements"]["pip"].splitlines() == REQUIREMENTS_FILE.read_text(encoding="utf-8").splitlines()
    assert template["output"]["destination"] == server.env["CLEARML_FILES_HOST"]  # output_uri=True: the files server
    args = arguments_of(template)
    assert not {"help", "local", "output_dir"} & set(args)
    assert (args["lora_rank"], args["prompt_length"], args["learning_rate"], args["max_steps"]) == ("8", "20", "0.0003", "")
    evaluate = arguments_of(api.task(made["evaluate"]))
    assert (evaluate["batch_size"], evaluate["decoding"], evaluate["compare_base"]) == ("16", "greedy", "True")


def test_a_step_run_is_a_clone_of_its_template_in_the_pipeline_project_without_the_tag_running_the_given_code(server, tmp_path):
    code = {
        "repository": "https://git.example.com/team/rut5.git",
        "branch": "экспериментальная",
        "commit": "0123abc",
        "diff": "diff --git a/x b/x\n+строка\n",
        "requirements": "torch==2.13.0\nclearml\n",
    }

    def runs() -> dict:
        from clearml import Task

        from pipelines.controller import CodeVersion, find_or_create_template, new_step_task
        from pipelines.definition import STEP_BY_NAME

        template = find_or_create_template(STEP_BY_NAME["preprocess"], PROJECT)
        template.add_tags(["мой"])
        parent = Task.create(project_name=PROJECT, task_name="controller")
        run = new_step_task(STEP_BY_NAME["preprocess"], PROJECT, CodeVersion(**code), parent.id)
        orphan = new_step_task(STEP_BY_NAME["preprocess"], PROJECT, CodeVersion(**code), None)
        return {"template": template.id, "run": run.id, "parent": parent.id, "orphan": orphan.id}

    made = on_server(server, tmp_path, runs)
    api = server.api
    template, run = api.task(made["template"]), api.task(made["run"])
    [project] = api.call("projects.get_all", id=[run["project"]], only_fields=["name"])["projects"]
    assert project["name"] == PROJECT
    assert (run["name"], run["type"], run["status"], run["parent"]) == ("preprocess", "data_processing", "created", made["parent"])
    assert api.task(made["orphan"])["parent"] == made["template"]  # Task.clone's parent when none is given
    assert run["tags"] == ["мой"] and sorted(template["tags"]) == sorted([TEMPLATE_TAG, "мой"])
    script = run["script"]
    assert (script["repository"], script["branch"], script["version_num"], script["diff"]) == (
        code["repository"],
        code["branch"],
        code["commit"],
        code["diff"],
    )
    assert script["entry_point"] == in_repository("steps/preprocess.py")
    assert script["requirements"]["pip"] == code["requirements"]
    assert arguments_of(run) == arguments_of(template)
    assert template["script"]["repository"] != code["repository"]  # the template keeps its own code


def test_a_factory_run_is_the_child_of_the_task_that_runs_the_controller(server, tmp_path):
    def runs() -> dict:
        from clearml import Task

        from pipelines.controller import CodeVersion, find_or_create_template, step_factory
        from pipelines.definition import STEP_BY_NAME

        code = lambda: CodeVersion("https://git.example.com/r.git", "main", "abc", "", "clearml\n")  # noqa: E731
        create = step_factory(STEP_BY_NAME["ingest"], PROJECT, code)
        without = create(None)
        controller = Task.init(
            project_name=PROJECT, task_name="controller", auto_connect_frameworks=False, auto_resource_monitoring=False, auto_connect_streams=False
        )
        within = create(None)
        ids = {
            "without": without.id,
            "within": within.id,
            "controller": controller.id,
            "template": find_or_create_template(STEP_BY_NAME["ingest"], PROJECT).id,
        }
        controller.close()
        return ids

    made = on_server(server, tmp_path, runs)
    assert server.api.task(made["without"])["parent"] == made["template"]  # no controller task: Task.clone's default
    within = server.api.task(made["within"])
    assert within["parent"] == made["controller"]
    assert (within["name"], within["script"]["version_num"]) == ("ingest", "abc")


def test_the_controllers_code_is_what_its_task_records_with_this_checkouts_requirements(server, tmp_path):
    launched = {"url": "https://git.example.com/team/rut5.git", "branch": "main", "commit": "fedcba9"}
    diffs = {"empty": "diff --git a/x b/x\n+патч\n", "no_entry": None}  # what the launch's check found uncommitted
    controller_script = {"repository": "https://git.example.com/controller.git", "branch": "b", "commit": "c0ffee", "diff": ""}

    def codes() -> dict:
        from dataclasses import asdict

        from clearml import Task

        from pipelines.controller import CodeVersion, complete_controller_code, controller_code

        recorded = Task.create(project_name=PROJECT, task_name="recorded", repo=None)
        recorded.set_script(
            repository="https://git.example.com/other.git",
            branch="dev",
            commit="1111111",
            diff="d",
            working_dir="sub",
            entry_point="pipelines/run_pipeline.py",
        )
        complete_controller_code(recorded, SimpleNamespace(**launched, diff="unused"))
        empty = Task.create(project_name=PROJECT, task_name="empty", repo=None)
        no_entry = Task.create(project_name=PROJECT, task_name="no entry point", repo=None)
        no_entry.set_script(repository="https://git.example.com/other.git", entry_point="", diff="an older diff")
        for name, task in (("empty", empty), ("no_entry", no_entry)):
            complete_controller_code(task, SimpleNamespace(**launched, diff=diffs[name]))
        bare = Task.create(project_name=PROJECT, task_name="bare", repo=None)
        bare.set_script(repository="", branch="", commit="", diff="")
        running = Task.init(project_name=PROJECT, task_name="controller", auto_connect_frameworks=False, auto_resource_monitoring=False)
        complete_controller_code(running, SimpleNamespace(**launched, diff=None))  # waits for Task.init's own code detection
        running.set_script(**controller_script)
        return {
            "recorded": recorded.id,
            "empty": empty.id,
            "no_entry": no_entry.id,
            "code": asdict(CodeVersion.of_task(Task.get_task(task_id=recorded.id))),
            "bare_code": asdict(CodeVersion.of_task(Task.get_task(task_id=bare.id))),
            "running_code": asdict(controller_code()),
        }

    made = on_server(server, tmp_path, codes)
    api = server.api
    kept = api.task(made["recorded"])["script"]
    assert (kept["repository"], kept["branch"], kept["version_num"], kept["diff"], kept["working_dir"]) == (
        "https://git.example.com/other.git",
        "dev",
        "1111111",
        "d",
        "sub",
    )
    for name in ("empty", "no_entry"):
        script = api.task(made[name])["script"]
        assert (script["repository"], script["branch"], script["version_num"], script.get("diff", "")) == (
            launched["url"],
            launched["branch"],
            launched["commit"],
            diffs[name] or "",
        ), name
        assert (script["entry_point"], script["working_dir"]) == (CONTROLLER_ENTRY_POINT, "."), name
    requirements = REQUIREMENTS_FILE.read_text(encoding="utf-8")
    assert made["code"] == {
        "repository": "https://git.example.com/other.git",
        "branch": "dev",
        "commit": "1111111",
        "diff": "d",
        "requirements": requirements,
    }
    assert made["bare_code"] == {"repository": "", "branch": "", "commit": "", "diff": "", "requirements": requirements}
    assert made["running_code"] == {**controller_script, "requirements": requirements}  # the task this process runs


def test_the_requirements_are_read_as_utf_8_whatever_the_locale(clearml_home, tmp_path):
    """A comment in Russian in ``requirements.txt``, read under a locale that is not UTF-8."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# для обучения\nclearml\n", encoding="utf-8")
    output = tmp_path / "code.json"

    def main(_argv) -> None:
        from dataclasses import asdict

        from pipelines import controller

        controller.REQUIREMENTS_FILE = requirements  # in this forked run only
        script = SimpleNamespace(repository=None, branch=None, version_num=None, diff=None)
        output.write_text(json.dumps(asdict(controller.CodeVersion.of_task(SimpleNamespace(data=SimpleNamespace(script=script))))))

    completed = run_main(main, [], {**clearml_home, **ASCII_LOCALE})
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(output.read_text()) == {"repository": "", "branch": "", "commit": "", "diff": "", "requirements": "# для обучения\nclearml\n"}


def test_a_started_controller_is_the_launchs_pipeline_task_and_enqueues_each_step_when_its_parent_completes(server, tmp_path):
    """``build_controller``'s pipeline, started here, with an agent's part played by hand on the cpu queue: its task, the
    steps it makes from the templates with the given code, and the 3 s poll after which a completed step's child follows."""
    api = server.api
    queues = {name: api.queue_id(name, create=True) for name in ("cpu-q", "gpu-q")}
    code = {"repository": "https://git.example.com/team/rut5.git", "branch": "main", "commit": "0123abc", "diff": "", "requirements": "clearml\n"}

    def as_an_agent_sees_it() -> dict:
        import argparse
        import threading
        import time

        from clearml import Task

        from pipelines.controller import CodeVersion, build_controller, find_or_create_template
        from pipelines.definition import PRESETS, STEPS
        from pipelines.run_pipeline import pipeline_parameters

        for step in STEPS:  # made beforehand, as by an earlier launch: the poll period is what is timed below
            find_or_create_template(step, PROJECT)
        parameters = pipeline_parameters(PRESETS["tiny"], argparse.Namespace(lora_rank=4))  # no parse_args: its Args are not stored
        pipe = build_controller(parameters, {"cpu": "cpu-q", "gpu": "gpu-q"}, project=PROJECT, name="Мой конвейер", code=lambda: CodeVersion(**code))
        controller = Task.current_task()
        threading.Thread(target=pipe.start_locally, kwargs={"run_pipeline_steps_locally": False}, daemon=True).start()

        def next_task(queue: str, deadline_s: float = 60) -> str:
            deadline = time.monotonic() + deadline_s
            while time.monotonic() < deadline:
                entry = api.call("queues.get_next_task", queue=queues[queue]).get("entry")
                if entry:
                    return entry["task"]
                time.sleep(0.1)
            raise AssertionError(f"nothing was enqueued on {queue} within {deadline_s} s")

        def run(task_id: str) -> float:
            api.call("tasks.started", task=task_id)
            api.call("tasks.completed", task=task_id)
            return time.monotonic()

        ingest = next_task("cpu-q")
        completed = run(ingest)
        preprocess = next_task("cpu-q")
        followed_after_s = time.monotonic() - completed
        run(preprocess)
        return {
            "controller": controller.id,
            "ingest": ingest,
            "preprocess": preprocess,
            "train": next_task("gpu-q"),
            "followed_after_s": followed_after_s,
            "unset": sorted(name for name, value in parameters.items() if value is None),
        }

    made = on_server(server, tmp_path, as_an_agent_sees_it)
    controller = api.task(made["controller"])
    [project] = api.call("projects.get_all", id=[controller["project"]], only_fields=["name"])["projects"]
    assert (project["name"], controller["name"], controller["type"]) == (f"{PROJECT}/.pipelines/Мой конвейер", "Мой конвейер", "controller")
    assert controller["output"]["destination"] == server.env["CLEARML_FILES_HOST"]  # output_uri=True: the files server
    assert api.hyperparameter(made["controller"], "pipeline", "default_queue") == "cpu-q"
    args = {
        p["name"]: p["value"]
        for p in api.call("tasks.get_hyper_params", tasks=[made["controller"]])["params"][0]["hyperparams"]
        if p["section"] == "Args"
    }
    assert (args["lora_rank"], args["model"]) == ("4", "tiny")
    assert made["unset"] and {name: args[name] for name in made["unset"]} == dict.fromkeys(made["unset"], "")
    for name in ("ingest", "preprocess", "train"):
        step = api.task(made[name])
        [step_project] = api.call("projects.get_all", id=[step["project"]], only_fields=["name"])["projects"]
        assert (step["name"], step_project["name"], step["parent"]) == (name, PROJECT, made["controller"])
        assert step["tags"] == [f"pipe: {made['controller']}"]  # add_pipeline_tags: the steps of a run are found by its id
        assert (step["script"]["repository"], step["script"]["version_num"]) == (code["repository"], code["commit"])
    assert api.hyperparameter(made["preprocess"], "Args", "ingest_task_id") == made["ingest"]
    train = {
        name: api.hyperparameter(made["train"], "Args", name) for name in ("preprocess_task_id", "lora_rank", "max_steps", "early_stopping_patience")
    }
    assert train == {"preprocess_task_id": made["preprocess"], "lora_rank": "4", "max_steps": "", "early_stopping_patience": ""}  # unset: ""
    # The controller polls its steps every 3 s (pool_frequency=0.05 min); ClearML's default, 12 s, would double a short step's time.
    assert made["followed_after_s"] < 10
