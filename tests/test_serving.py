"""The export on a ClearML server: registered as its own model, the adapter model its parent, and served by
clearml-serving's custom engine from the registry, as README's "Serving it with clearml-serving" says.

The README's three commands run verbatim on the test server (only the ``default`` queue, a new HOME):
the export step, ``clearml-serving create`` and ``clearml-serving model add``. What clearml-serving's
inference container does is then done by its own code: its ``ModelRequestProcessor`` (the object its
FastAPI route hands each request to) reads the service task, downloads the preprocess module from it
and the model from the registry, and answers requests, in a ``python -I`` process that cannot import
this project. The answers are compared with what the tiny pipeline's adapter model decodes.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from readme_commands import commands_starting, the_command

from components.decoding import DECODING_PRESETS
from components.generation import generate_predictions
from components.modeling import load_finetuned
from tests.e2e.harness import run_in_group
from tests.test_server_errors import api, server  # noqa: F401 (fixtures)
from tests.test_server_options import CANDIDATE_SCRIPT, run, user_shell  # noqa: F401 (user_shell is a fixture)

ROOT = Path(__file__).resolve().parents[1]
CLEARML_SERVING = str(Path(sys.executable).parent / "clearml-serving")  # the console script pip installed beside python
ENDPOINT_REQUESTS = [
    {"text": "Переведи на английский.\nДоброе утро"},
    {"text": ["Кто написал «Войну и мир»?", "Дай синоним слова «быстрый».", "Сколько будет два плюс два?"]},
]
BAD_REQUESTS = [{"texts": "привет"}, {"text": []}, {"text": ["a", 1]}]
# clearml-serving's inference code, as its FastAPI app calls it (clearml_serving/serving/main.py: startup, serve_model).
SERVING_PROCESS = r"""
import asyncio, importlib.util, json, sys
from clearml_serving.serving.model_request_processor import ModelRequestProcessor
assert importlib.util.find_spec("components") is None, "the project is importable"
service_id, endpoint = sys.argv[1], sys.argv[2]
with open(sys.argv[3], encoding="utf-8") as handle:
    requests = json.load(handle)
processor = ModelRequestProcessor(task_id=service_id)
processor.launch(poll_frequency_sec=3600)

async def answer(body):
    try:
        return {"answer": await processor.process_request(base_url=endpoint, version=None, request_body=body)}
    except ValueError as error:  # clearml-serving answers HTTP 422 with the message
        return {"422": str(error)}

print("ANSWERS=" + json.dumps([asyncio.run(answer(body)) for body in requests], ensure_ascii=False))
"""


def readme_command(prefix: str, **values: str) -> list[str]:
    """The README's serving command starting with ``prefix`` (the export: the one without --local), placeholders filled."""
    [command] = [c for c in commands_starting(prefix) if "--local" not in c] if prefix.startswith("python") else [the_command(prefix)]
    for name, value in values.items():
        command = command.replace(f"<{name}>", value)
    assert "<" not in command, command
    return shlex.split(command)


def test_the_export_is_registered_from_its_adapter_and_clearml_serving_answers_with_it(tiny_pipeline, user_shell, api, tmp_path):
    created = run(user_shell, "-c", CANDIDATE_SCRIPT, str(tiny_pipeline / "train" / "adapter")).stdout
    [ids] = [json.loads(line.removeprefix("IDS=")) for line in created.splitlines() if line.startswith("IDS=")]
    run(user_shell, "steps/register.py", "--candidates", ids["evaluate"], "--output-dir", str(tmp_path / "register"))
    register = json.loads((tmp_path / "register" / "result.json").read_text())
    adapter_id = register["outputs"]["model_id"]

    export_argv = readme_command("python steps/export.py", **{"register task id": register["task_id"]})
    exported = run(user_shell, *export_argv[1:], "--output-dir", str(tmp_path / "export"))
    export = json.loads((tmp_path / "export" / "result.json").read_text())
    model_id = export["outputs"]["model_id"]
    assert f"Registered the export as model {model_id}, from adapter model {adapter_id}." in exported.stdout
    models = {model["id"]: model for model in api.call("models.get_all")["models"]}
    assert set(models) == {adapter_id, model_id}
    model = models[model_id]
    assert (model["name"], model["parent"], model["task"], model["ready"], model["tags"]) == (
        f"{models[adapter_id]['name']} (plain checkpoint)",
        adapter_id,
        export["task_id"],
        True,
        ["plain checkpoint"],
    )
    metadata = {key: entry["value"] for key, entry in model["metadata"].items()}
    assert (metadata["adapter_model_id"], float(metadata["test_chrf"]), metadata["prompt_tokens"]) == (adapter_id, 0.5, "20")
    assert "ctranslate2" not in [artifact["key"] for artifact in api.task(export["task_id"])["execution"].get("artifacts", [])]

    service = run_in_group([CLEARML_SERVING, *readme_command("clearml-serving create")[1:]], ROOT, user_shell, 60, "clearml-serving create")
    assert service.returncode == 0, service.stdout + service.stderr
    [service_id] = re.findall(r"New Serving Service created: id=(\w+)", service.stdout)
    add_argv = readme_command("clearml-serving --id", **{"service id": service_id, "exported model id": model_id})
    added = run_in_group([CLEARML_SERVING, *add_argv[1:]], ROOT, user_shell, 60, "clearml-serving model add")
    assert added.returncode == 0, added.stdout + added.stderr
    endpoint = add_argv[add_argv.index("--endpoint") + 1]

    empty = tmp_path / "empty"
    empty.mkdir()
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps(ENDPOINT_REQUESTS + BAD_REQUESTS, ensure_ascii=False), encoding="utf-8")
    served = run_in_group(
        [sys.executable, "-I", "-c", SERVING_PROCESS, service_id, endpoint, str(requests)],
        empty,
        user_shell,
        120,
        "clearml-serving's request processor",
    )
    assert served.returncode == 0, served.stdout[-3000:] + served.stderr[-3000:]
    [answers] = [json.loads(line.removeprefix("ANSWERS=")) for line in served.stdout.splitlines() if line.startswith("ANSWERS=")]

    # What the adapter model answers, decoded as the evaluation did (greedy: the candidate's evaluation.json).
    texts = [ENDPOINT_REQUESTS[0]["text"], *ENDPOINT_REQUESTS[1]["text"]]
    expected = generate_predictions(*load_finetuned(tiny_pipeline / "train" / "adapter"), texts, **asdict(DECODING_PRESETS["greedy"]))
    assert len(set(expected)) > 1  # answers that tell the texts apart
    assert answers[:2] == [{"answer": {"text": expected[0]}}, {"answer": {"text": expected[1:]}}]
    assert [set(answer) for answer in answers[2:]] == [{"422"}] * len(BAD_REQUESTS)
    assert all("\n" not in answer["422"] and '{"text": "..."}' in answer["422"] for answer in answers[2:])
