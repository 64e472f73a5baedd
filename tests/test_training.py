"""The training loop: resume equivalence, early stopping, best checkpoint, NaN guard, precision."""

import json

import pytest
import torch
from safetensors.torch import load_file

from components.data import preprocess, read_tsv
from components.errors import UserError
from components.modeling import adapter_state_dict, apply_peft, load_base_model, load_tokenizer
from components import training
from components.training import TrainConfig, TrainingError, resolve_precision, train_adapters


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def splits(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    frame = read_tsv("data/sample/train.tsv")
    return tokenizer, preprocess(frame.iloc[:48], tokenizer, 32, 32), preprocess(frame.iloc[48:60], tokenizer, 32, 32)


def fresh_model(tiny_model_dir, seed=0):
    torch.manual_seed(seed)
    return apply_peft(load_base_model(str(tiny_model_dir)), lora_rank=4, lora_alpha=8, lora_dropout=0.1, prompt_length=4).train()


CONFIG = dict(batch_size=8, grad_accum_steps=2, learning_rate=3e-3, epochs=3, eval_every=2, gradient_checkpointing=False, seed=7)


def test_precision_auto_is_fp32_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        resolve_precision("bf16", torch.device("cpu"))


def test_an_interrupted_and_resumed_run_ends_with_the_same_adapter(tiny_model_dir, splits, tmp_path):
    tokenizer, train, validation = splits
    config = TrainConfig(**CONFIG)  # 6 batches/epoch -> 3 steps/epoch, 9 steps; checkpoints every 2 steps
    straight = fresh_model(tiny_model_dir)
    full = train_adapters(straight, tokenizer, train, validation, config, output_dir=tmp_path / "straight")
    assert full.steps == 9

    def crash_after_step_5(title, series, value, step):
        if title == "loss" and series == "train" and step == 5:
            raise Interrupt  # dies one step after the checkpoint of step 4, mid-epoch

    interrupted = fresh_model(tiny_model_dir)
    with pytest.raises(Interrupt):
        train_adapters(interrupted, tokenizer, train, validation, config, output_dir=tmp_path / "resumed", report=crash_after_step_5)
    checkpoint = tmp_path / "resumed" / "checkpoints" / "last"
    saved = json.loads((checkpoint / "state.json").read_text())
    assert (saved["step"], saved["epoch"], saved["batch"]) == (4, 1, 2)

    resumed = fresh_model(tiny_model_dir, seed=123)  # different init: everything must come from the checkpoint
    result = train_adapters(resumed, tokenizer, train, validation, config, output_dir=tmp_path / "resumed", resume_from=checkpoint)
    assert result.steps == 9
    expected = adapter_state_dict(straight)
    for name, tensor in adapter_state_dict(resumed).items():
        assert torch.equal(tensor, expected[name]), name
    assert result.history == full.history
    assert load_file(str(tmp_path / "resumed/checkpoints/best/adapter.safetensors")).keys() == expected.keys()


def test_early_stopping_stops_after_patience(tiny_model_dir, splits, tmp_path):
    tokenizer, train, validation = splits
    config = TrainConfig(**{**CONFIG, "learning_rate": 0.0, "early_stopping_patience": 2, "epochs": 10})
    result = train_adapters(fresh_model(tiny_model_dir), tokenizer, train, validation, config, output_dir=tmp_path)
    # lr 0: the first evaluation is the best, the next two do not improve -> stop at step 6 of 30
    assert result.stopped_early and result.steps == 6 and result.total_steps == 30
    assert result.best_step == 2 and len(result.history) == 3


def test_the_best_checkpoint_holds_the_weights_of_the_best_evaluation(tiny_model_dir, splits, tmp_path, monkeypatch):
    tokenizer, train, validation = splits
    scripted = iter([3.0, 1.0, 2.0, 2.5, 1.5])  # validation losses of the evaluations at steps 2, 4, 6, 8, 9
    monkeypatch.setattr(training, "validation_loss", lambda *args: next(scripted))
    snapshots = {}

    def snapshot(kind, directory):
        state = json.loads((directory / "state.json").read_text())
        snapshots[state["step"]] = load_file(str(directory / "adapter.safetensors"))

    result = train_adapters(fresh_model(tiny_model_dir), tokenizer, train, validation, TrainConfig(**CONFIG), output_dir=tmp_path, on_checkpoint=snapshot)
    assert [entry["step"] for entry in result.history] == [2, 4, 6, 8, 9]
    assert (result.best_step, result.best_value) == (4, 1.0)
    best = load_file(str(tmp_path / "checkpoints/best/adapter.safetensors"))
    assert all(torch.equal(best[k], snapshots[4][k]) for k in best)
    assert not all(torch.equal(best[k], snapshots[9][k]) for k in best)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_model_dir, splits, tmp_path):
    tokenizer, train, validation = splits
    model = fresh_model(tiny_model_dir)
    calls = {"n": 0}

    def inject_nan(module, args, output):
        calls["n"] += module.training
        if module.training and calls["n"] == 7:  # 2 micro-batches a step: step 4, after the checkpoint of step 2
            output.loss = output.loss * float("nan")
        return output

    model.register_forward_hook(inject_nan)
    with pytest.raises(TrainingError, match=r"The loss became nan at step 4 \(fp32\).*last good checkpoint is in .*checkpoints/last"):
        train_adapters(model, tokenizer, train, validation, TrainConfig(**CONFIG), output_dir=tmp_path)
    state = json.loads((tmp_path / "checkpoints/last/state.json").read_text())
    assert state["step"] == 2


def test_generation_metrics_can_pick_the_best(tiny_model_dir, splits, tmp_path):
    tokenizer, train, validation = splits
    config = TrainConfig(**{**CONFIG, "epochs": 1, "generation_eval_samples": 4, "generation_max_new_tokens": 4, "best_metric": "validation_chrf"})
    result = train_adapters(fresh_model(tiny_model_dir), tokenizer, train, validation, config, output_dir=tmp_path)
    assert all("validation_chrf" in entry and "validation_loss" in entry for entry in result.history)
    assert result.best_value == max(entry["validation_chrf"] for entry in result.history)
    with pytest.raises(UserError, match="needs --generation-eval-samples"):
        train_adapters(fresh_model(tiny_model_dir), tokenizer, train, validation, TrainConfig(best_metric="validation_bleu"), output_dir=tmp_path)
