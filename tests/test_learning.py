"""The tiny pipeline learns: fine-tuning beats the untuned base by the README's targets, and both adapters trained.

All from the session's one pipeline run (``tiny_pipeline``): the train step's validation
losses, the evaluate step's base-vs-tuned numbers, and the registered adapter taken apart
(its LoRA updates removed, its prompt compared with the initial vectors) on the test rows.
"""

import functools
import json
from pathlib import Path

import pytest
import torch
from tolerances import LOSS_RTOL

from components.data import preprocess, read_tsv
from components.lora import lora_layers, merge_lora
from components.modeling import ADAPTER_WEIGHTS, load_adapter_weights, load_untuned
from components.prompt_tuning import PromptTuningEmbedding
from components.training import evaluation_loader, validation_loss

# The targets of the tiny setting (README, "The tiny setting learns").
MAX_LOSS_RATIO = 0.7  # tuned loss at most 70% of the untuned base's
MIN_CHRF_RATIO = 3.0
MIN_CHRF = 0.15
# Taking the LoRA updates out of the trained model raises the test loss by at least this factor,
# and the trained prompt is at least this far (relative norm) from its initial vectors.
MIN_ABLATION_RATIO = 1.3
MIN_PROMPT_CHANGE = 0.05


@pytest.fixture(scope="module")
def summary(tiny_pipeline) -> dict:
    return json.loads((tiny_pipeline / "summary.json").read_text())


def test_training_lowers_the_validation_loss_by_the_target(tiny_pipeline):
    training = json.loads((tiny_pipeline / "train" / "training.json").read_text())
    assert training["best_value"] <= MAX_LOSS_RATIO * training["initial_validation_loss"]
    assert training["history"][-1]["validation_loss"] < training["history"][0]["validation_loss"]


def test_the_tuned_model_beats_the_untuned_base_on_test(summary):
    tuned, base = summary["metrics"], summary["base_metrics"]
    assert tuned["loss"] <= MAX_LOSS_RATIO * base["loss"]
    assert tuned["chrf"] >= MIN_CHRF_RATIO * base["chrf"] and tuned["chrf"] >= MIN_CHRF


@pytest.fixture(scope="module")
def test_loss_of(summary, tiny_pipeline):
    """Test loss of the registered adapter, whole or with its LoRA updates removed (every B back at zero)."""
    model_dir = Path(summary["model_dir"])
    evaluated = json.loads((tiny_pipeline / "evaluate" / "evaluation.json").read_text())["rows"]
    test = read_tsv(tiny_pipeline / "ingest" / "splits" / "test.tsv").head(evaluated)  # the rows the evaluate step scored
    parameters = summary["parameters"]

    @functools.cache
    def loss(keep_lora: bool = True) -> float:
        model, tokenizer = load_untuned(model_dir)
        load_adapter_weights(model, model_dir / ADAPTER_WEIGHTS)
        if not keep_lora:
            with torch.no_grad():
                for layer in lora_layers(model):
                    layer.lora_B.zero_()
        merge_lora(model)
        rows = preprocess(test, tokenizer, parameters["max_input_length"], parameters["max_target_length"])
        return validation_loss(model, evaluation_loader(model, tokenizer, rows, 32), "fp32")

    return loss


@pytest.mark.numeric
def test_the_whole_adapter_scores_what_the_evaluate_step_reported(test_loss_of, summary):
    assert test_loss_of() == pytest.approx(summary["metrics"]["loss"], rel=LOSS_RTOL)  # batches of 32 here, 16 in the step


def test_lora_carries_what_was_learned(test_loss_of):
    """Fails when LoRA did not train (a B that never left zero): taking its updates out must cost."""
    assert test_loss_of(keep_lora=False) >= MIN_ABLATION_RATIO * test_loss_of()


def test_the_prompt_was_trained(summary):
    """Fails when the prompt did not train (cut off from its gradient, or not given to the optimizer).

    With LoRA beside it the prompt carries little of the tiny task, so what is checked is that
    the train step moved it away from the initial vectors the untuned base holds.
    """
    model_dir = Path(summary["model_dir"])
    untuned, _ = load_untuned(model_dir)
    initial = prompt_of(untuned).detach().clone()
    load_adapter_weights(untuned, model_dir / ADAPTER_WEIGHTS)
    trained = prompt_of(untuned).detach()
    assert (trained - initial).norm() >= MIN_PROMPT_CHANGE * initial.norm()


def prompt_of(model) -> torch.Tensor:
    return next(module for module in model.modules() if isinstance(module, PromptTuningEmbedding)).prompt


def test_the_untuned_base_holds_the_adapters_as_training_starts_them(tiny_model_dir, tmp_path):
    """load_untuned rebuilds exactly the initial adapters: the prompt's vectors do not depend on the global seed
    (the train step seeds it with --seed), and LoRA starts as the identity (B = 0)."""
    from components.modeling import apply_adapter_settings, load_base_model, load_tokenizer, save_adapter
    from components.settings import AdapterSettings

    settings = AdapterSettings(lora_rank=4, prompt_length=6)
    starts = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        starts.append(apply_adapter_settings(load_base_model(str(tiny_model_dir)), settings))
    trained = starts[0]
    with torch.no_grad():
        prompt_of(trained).add_(1.0)
        for layer in lora_layers(trained):
            layer.lora_B.normal_()
    save_adapter(trained, tmp_path, str(tiny_model_dir), settings, load_tokenizer(str(tiny_model_dir)))

    untuned, _ = load_untuned(tmp_path)
    assert torch.equal(prompt_of(untuned), prompt_of(starts[1]))
    assert all(not layer.lora_B.any() for layer in lora_layers(untuned))
