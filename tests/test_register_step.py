"""``steps/register.py`` in forked runs (``step_runs``) on evaluate and train tasks the tests make: which candidate wins
by which metric, the model folder it leaves, what it prints and records, the model in a server's registry, each refusal."""

import json
from pathlib import Path

import pytest
from conftest import ASCII_LOCALE
from step_runs import artifacts, make_task, model_package, run_step, task_record

from components.metrics import PROTOCOL_METRICS
from steps import register
from tests.clearml_server.process import ServerProcess
from tests.e2e.server_api import ServerApi

# Each evaluation's scores: the best by bleu (the second) is not the best by chrf, the default metric (the third), and the
# fourth scored a local --model-dir (no train task).
SCORES = [{"bleu": 0.1, "chrf": 0.3}, {"bleu": 0.25, "chrf": 0.2}, {"bleu": 0.05, "chrf": 0.4}, {"bleu": 0.01, "chrf": 0.01}]


def evaluation(scores: dict, train_task_id: str | None) -> dict:
    metrics = {name: scores.get(name, 0.123456) for name in PROTOCOL_METRICS} | {"loss": 2.5}
    return {"rows": 5, "metrics": metrics, "base_metrics": None, "train_task_id": train_task_id, "test_tsv": "данные/test.tsv"}


def make_candidates(env: dict, tmp_path: Path, *, local: bool = True, count: int = len(SCORES)) -> tuple[list[str], list[str | None], list[Path]]:
    """Evaluate task ids for the first ``count`` of ``SCORES``, the train task each one scored (None for the fourth), and
    its adapter folder."""
    evaluate_ids, train_ids, adapters = [], [], []
    for number, scores in enumerate(SCORES[:count]):
        adapter = tmp_path / f"adapter-{number}"
        adapter.mkdir()
        (adapter / "adapter.safetensors").write_bytes(bytes([number]) * 64)
        (adapter / "adapter_config.json").write_text(json.dumps({"lora_rank": number + 1}), encoding="utf-8")
        train_id = make_task("train", {"adapter": adapter}, env, tmp_path, local=local) if number < 3 else None
        evaluation_file = tmp_path / f"evaluation-{number}.json"
        evaluation_file.write_text(json.dumps(evaluation(scores, train_id)), encoding="utf-8")
        evaluate_ids.append(make_task("evaluate", {"evaluation": evaluation_file}, env, tmp_path, local=local))
        train_ids.append(train_id)
        adapters.append(adapter)
    return evaluate_ids, train_ids, adapters


@pytest.fixture(scope="module")
def offline_candidates(clearml_home, tmp_path_factory) -> tuple[list[str], list[str | None], list[Path]]:
    return make_candidates(clearml_home, tmp_path_factory.mktemp("candidates"))


def files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_the_best_by_the_metric_asked_for_is_copied_with_its_evaluation(offline_candidates, clearml_home, tmp_path):
    evaluate_ids, train_ids, adapters = offline_candidates
    listed = f" {evaluate_ids[0]}, {evaluate_ids[1]} ,,{evaluate_ids[2]},{evaluate_ids[3]} "
    completed, result = run_step(register.main, ["--local", "--candidates", listed, "--metric", "bleu", "--output-dir", str(tmp_path)], clearml_home)
    assert completed.returncode == 0, completed.stderr
    model_dir = tmp_path / "model"
    record = json.loads((model_dir / "evaluation.json").read_text(encoding="utf-8"))
    assert record == {"evaluate_task_id": evaluate_ids[1], "metric": "bleu", **evaluation(SCORES[1], train_ids[1])}
    assert files(model_dir) == {**files(adapters[1]), "evaluation.json": (model_dir / "evaluation.json").read_bytes()}

    lines = completed.stdout.splitlines()
    assert [line for line in lines if line.startswith(tuple(evaluate_ids))] == [
        f"{evaluate_ids[0]}: bleu = 0.1000",
        f"{evaluate_ids[1]}: bleu = 0.2500",
        f"{evaluate_ids[2]}: bleu = 0.0500",
        f"{evaluate_ids[3]}: bleu = 0.0100",
    ]
    assert f"Best by bleu: evaluate task {evaluate_ids[1]} (0.2500); offline: not in a model registry; model directory {model_dir}." in lines
    assert result["outputs"] == {
        "model_dir": str(model_dir),
        "model_id": None,
        "best_evaluate_task_id": evaluate_ids[1],
        "metric": "bleu",
        "metrics": evaluation(SCORES[1], None)["metrics"],
    }
    assert (task_record(result)["name"], task_record(result)["type"]) == ("register", "custom")
    uploaded = artifacts(result["task_id"], clearml_home, tmp_path)
    assert list(uploaded) == ["model"] and files(uploaded["model"]) == files(model_dir)


def test_the_default_metric_picks_by_chrf_and_replaces_an_earlier_model_folder(offline_candidates, clearml_home, tmp_path):
    """Under ``ASCII_LOCALE``: the evaluation's Russian text is written as UTF-8 whatever the locale."""
    evaluate_ids, train_ids, adapters = offline_candidates
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "left-over.bin").write_bytes(b"from an earlier run")
    completed, result = run_step(
        register.main, ["--local", "--candidates", ",".join(evaluate_ids), "--output-dir", str(tmp_path)], {**clearml_home, **ASCII_LOCALE}
    )
    assert completed.returncode == 0, completed.stderr
    record = json.loads((tmp_path / "model" / "evaluation.json").read_text(encoding="utf-8"))
    assert record == {"evaluate_task_id": evaluate_ids[2], "metric": "chrf", **evaluation(SCORES[2], train_ids[2])}
    assert result["outputs"]["best_evaluate_task_id"] == evaluate_ids[2] and result["outputs"]["metric"] == "chrf"
    assert set(files(tmp_path / "model")) == {"adapter.safetensors", "adapter_config.json", "evaluation.json"}
    assert files(tmp_path / "model")["adapter.safetensors"] == files(adapters[2])["adapter.safetensors"]


@pytest.mark.parametrize(
    "candidates, sentence",
    [
        (" , ", "error: --candidates is empty; give the task ids of one or more evaluate steps, comma-separated."),
        ("LAST", "error: Evaluate task LAST scored a local --model-dir, not a train task; evaluate with --train-task-id to register."),
    ],
)
def test_a_list_without_a_registrable_best_is_refused_in_one_sentence(candidates, sentence, offline_candidates, clearml_home, tmp_path):
    evaluate_ids, _, _ = offline_candidates
    candidates = candidates.replace("LAST", evaluate_ids[3])
    completed, result = run_step(register.main, ["--local", "--candidates", candidates, "--output-dir", str(tmp_path)], clearml_home)
    assert (completed.returncode, completed.stderr.splitlines()[-1], result) == (1, sentence.replace("LAST", evaluate_ids[3]), None)


def test_on_a_server_the_winner_is_a_registered_model_with_its_scores(clearml_home, tmp_path):
    """Registered twice from the same candidates, ``SCORES``' first two: by bleu under another name as a draft, then
    with every default (by chrf, published)."""
    with ServerProcess(tmp_path / "state") as server:  # not in this process: the test forks
        env = {**clearml_home, **server.environment()}
        evaluate_ids, train_ids, _ = make_candidates(env, tmp_path, local=False, count=2)
        api = ServerApi(env["CLEARML_API_HOST"], env["CLEARML_API_ACCESS_KEY"], env["CLEARML_API_SECRET_KEY"])
        registered = []
        for options in (["--metric", "bleu", "--model-name", "Мой T5, черновик", "--publish", "false"], []):
            output_dir = tmp_path / str(len(options))
            completed, result = run_step(register.main, ["--candidates", ",".join(evaluate_ids), *options, "--output-dir", str(output_dir)], env)
            assert completed.returncode == 0, completed.stderr
            model_id = result["outputs"]["model_id"]
            assert f"registered as model {model_id}; model directory" in completed.stdout
            model = api.call("models.get_by_id", model=model_id)["model"]
            assert model["uri"].startswith(server.files_host) and model_package(model["uri"]) == files(output_dir / "model")
            registered.append((result["task_id"], model))
    expected = (("Мой T5, черновик", "bleu", False, 1), (register.build_parser().get_default("model_name"), "chrf", True, 0))
    for (task_id, model), (name, metric, ready, best) in zip(registered, expected):
        assert (model["name"], model["tags"], model["task"], model["ready"]) == (name, ["best", f"by {metric}"], task_id, ready)
        metadata = {key: (entry["value"], entry["type"]) for key, entry in model["metadata"].items()}
        assert metadata == {
            **{f"test_{score}": (str(value), "float") for score, value in evaluation(SCORES[best], None)["metrics"].items()},
            "train_task_id": (train_ids[best], "str"),
        }
