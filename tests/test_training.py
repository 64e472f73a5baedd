"""The training loop against independent computations: the optimizer's gradient, the validation
loss, resume equivalence under dropout, the best checkpoint, early stopping, length grouping,
the NaN guard and precision."""

import copy
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tolerances import LOSS_RTOL, assert_same_gradient
from transformers import T5ForConditionalGeneration

from components import training
from components.data import preprocess, read_tsv, source_text
from components.distributed.world import World
from components.errors import UserError
from components.generation import generate_predictions
from components.metrics import PROTOCOL_METRICS, compute_metrics
from components.modeling import adapter_state_dict, apply_peft, load_base_model, load_tokenizer
from components.prompt_tuning import prompt_length_of
from components.training import TrainConfig, TrainingError, resolve_precision, train_adapters


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def splits(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    frame = read_tsv("data/sample/train.tsv")
    return tokenizer, preprocess(frame.iloc[:48], tokenizer, 32, 32), preprocess(frame.iloc[48:60], tokenizer, 32, 32)


DIVERGING_LR = 3e-2


@pytest.fixture(scope="module")
def diverging(tiny_model_dir):
    """Training that makes validation worse: every train answer is "Да.", validation keeps the real answers.

    With CONFIG and ``DIVERGING_LR`` the validation loss is lowest at the first evaluation and
    rises after it, so the best adapter is neither the last one nor one written after step 4.
    """
    tokenizer = load_tokenizer(str(tiny_model_dir))
    frame = read_tsv("data/sample/train.tsv")
    return tokenizer, preprocess(frame.iloc[:48].assign(output="Да."), tokenizer, 32, 32), preprocess(frame.iloc[48:60], tokenizer, 32, 32)


def fresh_model(tiny_model_dir, seed=0, dropout_rate=None, **adapter):
    """The tiny model with adapters; dropout is on (T5's 0.1 and LoRA's 0.1) unless set to 0."""
    torch.manual_seed(seed)
    base = (
        load_base_model(str(tiny_model_dir))
        if dropout_rate is None
        else T5ForConditionalGeneration.from_pretrained(tiny_model_dir, dropout_rate=dropout_rate)
    )
    return apply_peft(base, **{"lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.1, "prompt_length": 4, **adapter}).train()


def record_training_batches(model) -> list[dict]:
    """Every batch the model is trained on (validation runs in eval mode and is not recorded)."""
    batches = []

    def record(module, args, kwargs):
        if module.training:
            batches.append({name: value.clone() for name, value in kwargs.items()})

    model.register_forward_pre_hook(record, with_kwargs=True)
    return batches


def token_losses(model, input_ids: list[int], labels: list[int]) -> torch.Tensor:
    """Cross-entropy of each label token of one unpadded example, the prompt columns in its mask."""
    prompt_length = prompt_length_of(model)
    logits = model(
        input_ids=torch.tensor([input_ids]),
        attention_mask=torch.ones(1, prompt_length + len(input_ids), dtype=torch.long),
        labels=torch.tensor([labels]),
    ).logits
    return F.cross_entropy(logits[0], torch.tensor(labels), reduction="none")


@contextmanager
def optimizer_steps_recorded() -> Iterator[list[dict]]:
    """Inside the block, each AdamW step records the gradients it was given, its learning rate and weight decay."""
    steps: list[dict] = []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            [group] = self.param_groups  # the training loop gives AdamW one group: the trainable tensors
            steps.append({"gradients": [p.grad.clone() for p in group["params"]], "lr": group["lr"], "weight_decay": group["weight_decay"]})
            return super().step(closure)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim, "AdamW", RecordingAdamW)
        yield steps


def assert_same_tensors(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, tensor in got.items():
        assert torch.equal(tensor, expected[name]), name


CONFIG = dict(batch_size=8, grad_accum_steps=2, learning_rate=3e-3, epochs=3, eval_every=2, gradient_checkpointing=False, seed=7)


@pytest.mark.parametrize(
    "device, bf16_supported, requested, resolved",
    [
        ("cpu", False, "auto", "fp32"),
        ("cpu", False, "fp32", "fp32"),
        ("cuda", True, "auto", "bf16"),
        ("cuda", False, "auto", "fp16"),  # T5 v1.0 overflows in fp16: only where bf16 is not supported
        ("cuda", True, "fp16", "fp16"),
        ("cuda", False, "bf16", "bf16"),
        ("cuda", True, "fp32", "fp32"),
    ],
)
def test_precision_auto_is_bf16_on_gpus_that_support_it_fp16_on_older_ones_fp32_on_cpu(device, bf16_supported, requested, resolved, monkeypatch):
    """A GPU is simulated: only ``torch.cuda.is_bf16_supported`` is asked."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16_supported)
    assert resolve_precision(requested, torch.device(device)) == resolved


@pytest.mark.parametrize(
    "requested, message",
    [
        ("bf16", "--precision bf16 needs a CUDA GPU; use --precision fp32 (or auto) on CPU."),
        ("fp16", "--precision fp16 needs a CUDA GPU; use --precision fp32 (or auto) on CPU."),
        ("fp8", "--precision must be one of auto, bf16, fp16, fp32, got 'fp8'."),
    ],
)
def test_a_precision_the_device_cannot_run_is_refused_in_one_sentence(requested, message):
    with pytest.raises(UserError) as refused:
        resolve_precision(requested, torch.device("cpu"))
    assert str(refused.value) == message


def test_mixed_precision_computes_in_its_dtype_and_fp32_in_float32():
    layer, inputs = torch.nn.Linear(4, 4), torch.ones(2, 4)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        with training._autocast(precision, torch.device("cpu")):
            assert layer(inputs).dtype == dtype, precision


def test_each_rank_evaluates_its_contiguous_shard_of_the_validation_split_in_batches_of_the_size_asked(tiny_model_dir, splits):
    """12 rows, batches of 5: one process takes them all (5, 5, 2); of 2 ranks, rank 1 takes rows 6 to 11 (5, 1)."""
    tokenizer, _, validation = splits
    model = fresh_model(tiny_model_dir)
    prompt_length = prompt_length_of(model)

    def rows_of(world):
        batches = list(training.evaluation_loader(model, tokenizer, validation, 5, world))
        return [len(batch["input_ids"]) for batch in batches], [
            ids[mask[prompt_length:].bool()].tolist() for batch in batches for ids, mask in zip(batch["input_ids"], batch["attention_mask"])
        ]

    assert rows_of(World()) == ([5, 5, 2], validation["input_ids"])
    assert rows_of(World(rank=1, size=2, local_rank=1)) == ([5, 1], validation["input_ids"][6:])


def test_an_epochs_order_is_drawn_with_the_seed_plus_the_epoch(splits):
    """So epoch 2 of seed 7 is epoch 1 of seed 8, grouped by length or not, and the next epoch is another order."""
    _, train, _ = splits
    for grouped in (True, False):

        def order(seed, epoch):
            return training.epoch_order(train, TrainConfig(seed=seed, group_by_length=grouped), 8, epoch)

        assert order(7, 2) == order(8, 1) == order(9, 0) != order(7, 3)
        assert sorted(order(7, 2)) == list(range(len(train)))


def test_generation_metrics_score_the_answers_to_the_first_validation_rows_against_their_outputs(tiny_model_dir):
    """Recomputed from the TSV's texts (not decoded from the tokenized split), with the configured answer length."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows = read_tsv("data/sample/train.tsv").iloc[48:60]
    validation = preprocess(rows, tokenizer, 512, 512)
    model = fresh_model(tiny_model_dir, dropout_rate=0.0, lora_dropout=0.0).eval()
    config = TrainConfig(generation_eval_samples=3, generation_max_new_tokens=5, eval_batch_size=2)
    first = rows.iloc[:3]
    answers = generate_predictions(model, tokenizer, [source_text(i, x) for i, x in zip(first["instruction"], first["input"])], max_new_tokens=5)
    assert max(len(tokenizer(answer)["input_ids"]) for answer in answers) <= 6  # 5 tokens and </s>: the length was applied
    expected = compute_metrics(answers, first["output"].tolist())
    assert training.validation_generation_metrics(model, tokenizer, validation, config) == {name: expected[name] for name in PROTOCOL_METRICS}


# lora_alpha sets the size of the first gradient: 8 keeps its norm under the clipping
# threshold 1.0 (even doubled), 64 puts it well above.
GRADIENT_REGIMES = {"unclipped": 8.0, "clipped": 64.0}


@pytest.fixture(params=sorted(GRADIENT_REGIMES))
def one_step(request, tiny_model_dir, splits, tmp_path_factory):
    """One optimizer step of 2 micro-batches of 4, with the gradient AdamW was given and the model before it.

    Per test (a step takes well under a second): mutmut counts a fixture's calls for the first test that uses it only."""
    tokenizer, train, validation = splits
    model = fresh_model(tiny_model_dir, dropout_rate=0.0, lora_alpha=GRADIENT_REGIMES[request.param], lora_dropout=0.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.02)  # B = 0 would give A no gradient
    initial = copy.deepcopy(model)
    batches = record_training_batches(model)
    config = TrainConfig(batch_size=4, grad_accum_steps=2, max_steps=1, eval_batch_size=5, gradient_checkpointing=False, seed=3)
    with optimizer_steps_recorded() as steps:
        result = train_adapters(model, tokenizer, train, validation, config, output_dir=tmp_path_factory.mktemp("one-step"))
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    [step] = steps
    return {
        "regime": request.param,
        "initial": initial,
        "trained": model,
        "batches": batches,
        "gradient": dict(zip(names, step["gradients"])),
        "result": result,
        "train": train,
        "validation": validation,
    }


@pytest.mark.numeric
def test_an_optimizer_step_gets_the_clipped_gradient_of_the_mean_over_every_token_of_its_batch(one_step):
    """Computed here example by example, unpadded: the step's loss (as reported) is the mean over every label token
    of its two micro-batches (not a mean of the micro-batches' means: their token counts differ), its
    gradient clipped to norm 1 (padding never counts)."""
    train, model = one_step["train"], one_step["initial"]
    prompt_length = prompt_length_of(model)
    labels_of = {tuple(row["input_ids"]): row["labels"] for row in train}
    assert len(labels_of) == len(train)  # each input identifies its example
    micro_batches = one_step["batches"]
    assert len(micro_batches) == 2
    assert any((batch["labels"] == -100).any() for batch in micro_batches)  # the labels were padded

    examples = []
    for batch in micro_batches:
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            tokens = ids[mask[prompt_length:].bool()].tolist()
            examples.append((tokens, labels_of[tuple(tokens)]))
    assert len({int((batch["labels"] != -100).sum()) for batch in micro_batches}) == 2  # the two weightings differ here
    step_tokens = sum(len(labels) for _, labels in examples)
    step_loss = 0.0
    for tokens, labels in examples:
        loss = token_losses(model, tokens, labels).sum() / step_tokens
        loss.backward()
        step_loss += loss.item()
    [(step, reported)] = one_step["result"].train_losses  # the loss training.json and the train/loss scalar report
    assert step == 1 and reported == pytest.approx(step_loss, rel=LOSS_RTOL)
    expected = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    norm = torch.sqrt(sum(g.pow(2).sum() for g in expected.values()))
    assert (norm > 1.0) == (one_step["regime"] == "clipped")
    scale = min(1.0, 1.0 / (norm.item() + 1e-6))
    assert one_step["gradient"].keys() == expected.keys()
    for name, gradient in one_step["gradient"].items():
        assert_same_gradient(gradient, expected[name] * scale, name)  # a padded batch vs one example at a time


@pytest.mark.numeric
def test_the_validation_loss_is_token_weighted_over_the_validation_split(one_step):
    model, validation = one_step["trained"].eval(), one_step["validation"]
    assert len({len(labels) for labels in validation["labels"]}) > 1  # batches of 5, 5 and 2 with unequal token counts
    with torch.no_grad():
        losses = torch.cat([token_losses(model, row["input_ids"], row["labels"]) for row in validation])
    [evaluation] = one_step["result"].history
    assert evaluation["validation_loss"] == pytest.approx(losses.mean().item(), rel=LOSS_RTOL)


def test_a_run_resumed_elsewhere_ends_bit_identical_with_the_best_so_far(tiny_model_dir, diverging, tmp_path, caplog):
    """Dropout on, the global RNG disturbed differently before each run: only the seed and the checkpoint
    decide. The resumed run writes to a fresh directory, as on another machine, so the best adapter
    (from before the interruption) can only come from the checkpoint."""
    tokenizer, train, validation = diverging
    config = TrainConfig(**{**CONFIG, "learning_rate": DIVERGING_LR})  # 9 steps; evaluations and checkpoints at 2, 4, 6, 8, 9
    straight = fresh_model(tiny_model_dir)
    torch.manual_seed(1001)
    with caplog.at_level("INFO", logger="components.training"):
        full = train_adapters(straight, tokenizer, train, validation, config, output_dir=tmp_path / "straight")
    assert full.steps == 9 and full.best_step == 2  # the best comes before the interruption
    best = full.history[0]["validation_loss"]
    assert [message for message in caplog.messages if message.startswith("step ")] == [
        f"step {evaluation['step']}: validation_loss {evaluation['validation_loss']:.4f} (best {best:.4f} at step 2)" for evaluation in full.history
    ]
    caplog.clear()

    def crash_after_step_5(title, series, value, step):
        if title == "loss" and series == "train" and step == 5:
            raise Interrupt  # dies one step after the checkpoint of step 4, mid-epoch

    interrupted = fresh_model(tiny_model_dir)
    torch.manual_seed(2002)
    with pytest.raises(Interrupt):
        train_adapters(interrupted, tokenizer, train, validation, config, output_dir=tmp_path / "interrupted", report=crash_after_step_5)
    checkpoint = tmp_path / "interrupted" / "checkpoints" / "last"
    saved = json.loads((checkpoint / "state.json").read_text())
    assert (saved["step"], saved["epoch"], saved["epoch_step"]) == (4, 1, 1)  # 3 steps of 16 rows an epoch

    resumed = fresh_model(tiny_model_dir, seed=123)  # different init: everything must come from the checkpoint
    torch.manual_seed(3003)
    with caplog.at_level("INFO", logger="components.training"):
        result = train_adapters(resumed, tokenizer, train, validation, config, output_dir=tmp_path / "elsewhere", resume_from=checkpoint)
    assert f"Resumed from {checkpoint} at step 4 (epoch 1, step 1 of it)." in caplog.messages
    assert result.steps == 9 and result.history == full.history
    assert (result.best_step, result.best_value) == (full.best_step, full.best_value)
    assert_same_tensors(adapter_state_dict(resumed), adapter_state_dict(straight))
    assert_same_tensors(*(load_file(str(tmp_path / run / "checkpoints/best/adapter.safetensors")) for run in ("elsewhere", "straight")))
    # A finished run resumed takes no further step.
    again = train_adapters(
        fresh_model(tiny_model_dir),
        tokenizer,
        train,
        validation,
        config,
        output_dir=tmp_path / "again",
        resume_from=tmp_path / "straight" / "checkpoints" / "last",
    )
    assert (again.steps, again.train_losses, again.history) == (9, full.train_losses, full.history)


@pytest.mark.numeric
def test_the_optimizer_steps_with_linear_warmup_then_linear_decay_and_the_weight_decay(tiny_model_dir, splits, tmp_path):
    """Warmup ratio 0.5 of 6 steps: the learning rate climbs from 0 over 3 steps, then falls to 0 at step 6
    (the schedule written out here, not taken from transformers); AdamW gets the configured weight decay."""
    tokenizer, train, validation = splits
    peak, total, warmup = 4e-3, 6, 3
    config = TrainConfig(
        batch_size=8,
        grad_accum_steps=1,
        learning_rate=peak,
        weight_decay=0.25,
        max_steps=total,
        warmup_ratio=0.5,
        eval_every=total,
        gradient_checkpointing=False,
    )
    with optimizer_steps_recorded() as steps:
        result = train_adapters(fresh_model(tiny_model_dir), tokenizer, train, validation, config, output_dir=tmp_path)
    expected = [peak * step / warmup if step < warmup else peak * (total - step) / (total - warmup) for step in range(total)]
    assert expected != [peak * (total - step) / total for step in range(total)]  # discriminating: no warmup differs
    assert [step["lr"] for step in steps] == pytest.approx(expected, rel=1e-12, abs=0)  # float64 arithmetic of the same ratios
    assert {step["weight_decay"] for step in steps} == {0.25}
    assert [step for step, _ in result.learning_rates] == list(range(1, total + 1))
    # learning_rates (training.json) holds the rate each step used
    assert [lr for _, lr in result.learning_rates] == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.numeric
def test_gradient_checkpointing_recomputes_each_block_in_backward_and_changes_no_weight(tiny_model_dir, splits, tmp_path):
    """On: the layers inside every encoder block run twice per micro-batch (forward, then again in backward), off:
    once; the optimizer gets the same gradient either way. The hook is inside the block: transformers checkpoints a
    block's ``forward``, so the block's own hooks run once."""
    tokenizer, train, validation = splits
    calls, gradients = {}, {}
    for checkpointing in (False, True):
        model = fresh_model(tiny_model_dir, dropout_rate=0.0, lora_dropout=0.0)
        count = []
        model.encoder.block[0].layer[0].register_forward_hook(lambda module, args, output: count.append(1) if module.training else None)
        config = TrainConfig(batch_size=8, grad_accum_steps=2, max_steps=1, gradient_checkpointing=checkpointing)
        with optimizer_steps_recorded() as steps:
            train_adapters(model, tokenizer, train, validation, config, output_dir=tmp_path / str(checkpointing))
        calls[checkpointing], [gradients[checkpointing]] = len(count), [step["gradients"] for step in steps]
    assert calls == {False: 2, True: 4}  # two micro-batches
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    for name, got, want in zip(names, gradients[True], gradients[False]):
        assert_same_gradient(got, want, name)  # activations kept or recomputed


class RecordedBar:
    """tqdm as the training loop uses it, its options and calls recorded."""

    bars: list = []

    def __init__(self, **options):
        self.options, self.updates, self.postfixes, self.closed = options, [], [], False
        RecordedBar.bars.append(self)

    def update(self, steps):
        self.updates.append(steps)

    def set_postfix(self, **values):
        self.postfixes.append(values)

    def close(self):
        self.closed = True


def test_the_progress_bar_counts_each_step_from_where_the_run_starts_with_its_loss(tiny_model_dir, splits, tmp_path, monkeypatch):
    """A bar of every step of the run, started at the step a resumed run continues from, one update per step with that
    step's loss, shown at most every 2 s on the main rank, and closed when training ends or fails."""
    tokenizer, train, validation = splits
    config = TrainConfig(**{**CONFIG, "max_steps": 4})

    def interrupt_after_step_3(title, series, value, step):
        if (title, series, step) == ("loss", "train", 3):
            raise Interrupt

    monkeypatch.setattr(RecordedBar, "bars", [])
    monkeypatch.setattr(training, "tqdm", RecordedBar)
    with pytest.raises(Interrupt):
        train_adapters(fresh_model(tiny_model_dir), tokenizer, train, validation, config, output_dir=tmp_path, report=interrupt_after_step_3)
    result = train_adapters(
        fresh_model(tiny_model_dir), tokenizer, train, validation, config, output_dir=tmp_path, resume_from=tmp_path / "checkpoints" / "last"
    )
    interrupted, resumed = RecordedBar.bars
    options = {"total": 4, "desc": "train", "unit": "step", "mininterval": 2.0, "disable": False}
    assert (interrupted.options, resumed.options) == ({**options, "initial": 0}, {**options, "initial": 2})  # the checkpoint of step 2
    assert (interrupted.updates, interrupted.closed) == ([1, 1], True)  # step 3 failed before its update
    assert (resumed.updates, resumed.closed) == ([1, 1], True)
    assert resumed.postfixes == [{"loss": f"{loss:.4f}"} for _, loss in result.train_losses[2:]]


def test_early_stopping_stops_after_patience(tiny_model_dir, splits, tmp_path):
    tokenizer, train, validation = splits
    config = TrainConfig(**{**CONFIG, "learning_rate": 0.0, "early_stopping_patience": 2, "epochs": 10})
    result = train_adapters(fresh_model(tiny_model_dir), tokenizer, train, validation, config, output_dir=tmp_path)
    # lr 0: the first evaluation is the best, the next two do not improve -> stop at step 6 of 30
    assert result.stopped_early and result.steps == 6 and result.total_steps == 30
    assert result.best_step == 2 and len(result.history) == 3
    saved = json.loads((tmp_path / "checkpoints" / "last" / "state.json").read_text())
    assert {
        key: saved[key] for key in ("step", "epoch", "epoch_step", "world_size", "best_step", "bad_evaluations", "skipped_steps", "stopped_early")
    } == {"step": 6, "epoch": 2, "epoch_step": 0, "world_size": 1, "best_step": 2, "bad_evaluations": 2, "skipped_steps": 0, "stopped_early": True}
    assert saved["history"] == result.history and saved["best_value"] == result.best_value
    assert saved["scaler"] == {}  # fp32: no grad scaler
    # resumed in the same folder (its best/ there already), a run that stopped early stays stopped
    again = train_adapters(
        fresh_model(tiny_model_dir), tokenizer, train, validation, config, output_dir=tmp_path, resume_from=tmp_path / "checkpoints" / "last"
    )
    assert (again.steps, again.stopped_early, again.history) == (6, True, result.history)


def scripted_validation_loss(values):
    return lambda *args: next(values)


def scripted_chrf(values):
    """The real generation metrics, with chrF replaced by the next scripted value."""
    real = training.validation_generation_metrics

    def metrics(*args):
        computed = real(*args)
        assert set(computed) == set(PROTOCOL_METRICS)
        return {**computed, "chrf": next(values)}

    return metrics


@pytest.mark.parametrize("epochs, steps", [(0.01, 1), (0.5, 2)])
def test_a_fraction_of_an_epoch_is_rounded_up_to_whole_steps_at_least_one(epochs, steps, tiny_model_dir, splits, tmp_path):
    """48 rows in global batches of 16: 3 steps an epoch; half an epoch is 2 steps, a hundredth 1."""
    tokenizer, train, validation = splits
    config = TrainConfig(**{**CONFIG, "epochs": epochs})
    result = train_adapters(fresh_model(tiny_model_dir), tokenizer, train, validation, config, output_dir=tmp_path)
    assert (result.total_steps, result.steps) == (steps, steps)


def test_an_improvement_starts_the_patience_again(tiny_model_dir, splits, tmp_path, monkeypatch):
    """Patience 2, validation losses 3, 4, 2, 5, 6 at steps 1 to 5: the bad evaluation at step 2 is forgotten once
    step 3 improves, so the run stops at step 5 (the second bad one since), not at step 4."""
    tokenizer, train, validation = splits
    monkeypatch.setattr(training, "validation_loss", scripted_validation_loss(iter([3.0, 4.0, 2.0, 5.0, 6.0])))
    config = TrainConfig(**{**CONFIG, "epochs": 10, "eval_every": 1}, early_stopping_patience=2)
    result = train_adapters(fresh_model(tiny_model_dir), tokenizer, train, validation, config, output_dir=tmp_path)
    assert [entry["step"] for entry in result.history] == [1, 2, 3, 4, 5] and result.best_step == 3
    assert result.stopped_early and result.steps == 5 and result.total_steps == 30


@pytest.mark.parametrize(
    "best_metric, patched, script, values, best_step",
    [
        ("validation_loss", "validation_loss", scripted_validation_loss, [3.0, 1.0, 2.0, 1.0, 1.5], 4),  # lower is better
        ("validation_chrf", "validation_generation_metrics", scripted_chrf, [0.2, 0.3, 0.5, 0.5, 0.4], 6),  # higher is better
    ],
    ids=["loss", "chrf"],
)
def test_the_best_checkpoint_holds_the_weights_of_the_best_evaluation(
    tiny_model_dir, splits, tmp_path, monkeypatch, best_metric, patched, script, values, best_step
):
    """Scripted values at the evaluations of steps 2, 4, 6, 8, 9: the best is neither the first, the last nor the other extreme,
    and a later evaluation that only ties it does not replace it."""
    tokenizer, train, validation = splits
    monkeypatch.setattr(training, patched, script(iter(values)))
    snapshots = {}

    def snapshot(kind, directory):
        assert (kind, directory) == ("last", tmp_path / "checkpoints" / "last")
        state = json.loads((directory / "state.json").read_text())
        snapshots[state["step"]] = load_file(str(directory / "adapter.safetensors"))

    config = TrainConfig(**CONFIG, best_metric=best_metric, generation_eval_samples=4, generation_max_new_tokens=4)
    result = train_adapters(fresh_model(tiny_model_dir), tokenizer, train, validation, config, output_dir=tmp_path, on_checkpoint=snapshot)
    assert [entry["step"] for entry in result.history] == [2, 4, 6, 8, 9]
    assert [entry[best_metric] for entry in result.history] == values
    assert (result.best_step, result.best_value) == (best_step, values[[2, 4, 6, 8, 9].index(best_step)])
    best = load_file(str(tmp_path / "checkpoints/best/adapter.safetensors"))
    assert_same_tensors(best, snapshots[best_step])
    assert not all(torch.equal(best[k], snapshots[9][k]) for k in best)
    # the checkpoint carries the best adapter too
    assert_same_tensors(load_file(str(tmp_path / "checkpoints/last/best_adapter.safetensors")), best)


def test_each_step_and_each_evaluation_is_reported_at_its_step_and_logged(tiny_model_dir, splits, tmp_path, caplog):
    """What the train step sends to ClearML as scalars: per step the train loss and learning rate, per evaluation every
    validation figure (its title without ``validation_``); the same numbers as the result's records."""
    tokenizer, train, validation = splits
    reported = []
    config = TrainConfig(**{**CONFIG, "epochs": 1}, generation_eval_samples=2, generation_max_new_tokens=3)
    model = fresh_model(tiny_model_dir)
    with caplog.at_level("INFO", logger="components.training"):
        result = train_adapters(model, tokenizer, train, validation, config, output_dir=tmp_path, report=lambda *call: reported.append(call))
    evaluations = {evaluation["step"]: evaluation for evaluation in result.history}
    assert sorted(evaluations) == [2, 3] and set(evaluations[2]) == {"step", "validation_loss", *(f"validation_{m}" for m in PROTOCOL_METRICS)}
    expected = []
    for (step, loss), (_, learning_rate) in zip(result.train_losses, result.learning_rates, strict=True):
        expected += [("loss", "train", loss, step), ("learning_rate", "lr", learning_rate, step)]
        expected += [
            ("loss" if name == "validation_loss" else name.removeprefix("validation_"), "validation", value, step)
            for name, value in evaluations.get(step, {}).items()
            if name != "step"
        ]
    assert [step for step, _ in result.train_losses] == [1, 2, 3] and reported == expected
    trainable = sum(p.requires_grad for p in model.parameters())
    losses = [evaluations[step]["validation_loss"] for step in (2, 3)]
    best = min(losses)
    assert caplog.messages[0] == f"Training 3 steps (3 per epoch) in fp32, {trainable} trainable tensors, 1 rank(s)."
    assert [message for message in caplog.messages if message.startswith("step ")] == [
        f"step 2: validation_loss {losses[0]:.4f} (best {losses[0]:.4f} at step 2)",
        f"step 3: validation_loss {losses[1]:.4f} (best {best:.4f} at step {2 if losses[0] <= losses[1] else 3})",
    ]


def test_a_best_metric_that_is_not_measured_is_refused_in_one_sentence(tiny_model_dir, splits, tmp_path):
    tokenizer, train, validation = splits
    with pytest.raises(UserError, match="needs --generation-eval-samples"):
        train_adapters(fresh_model(tiny_model_dir), tokenizer, train, validation, TrainConfig(best_metric="validation_bleu"), output_dir=tmp_path)
    with pytest.raises(UserError) as unknown:
        train_adapters(fresh_model(tiny_model_dir), tokenizer, train, validation, TrainConfig(best_metric="bleu"), output_dir=tmp_path)
    assert str(unknown.value) == (
        "--best-metric must be one of validation_loss, validation_bleu, validation_chrf, validation_rouge1, "
        "validation_rouge2, validation_rougeL, validation_meteor, got 'bleu'."
    )


def test_batches_are_grouped_by_length(tiny_model_dir, splits, tmp_path):
    """One epoch (12 batches of 4) with and without --group-by-length: grouping cuts the padding.

    transformers' LengthGroupedSampler sorts within mega-batches of up to 50 batches, as many as
    leave 4 mega-batches: here 4 of 3 batches (with 6 batches of 8 it would sort nothing).
    """
    tokenizer, train, validation = splits

    def padding(group_by_length: bool) -> int:
        model = fresh_model(tiny_model_dir)
        batches = record_training_batches(model)
        config = TrainConfig(
            **{**CONFIG, "batch_size": 4, "grad_accum_steps": 1, "max_steps": 12, "eval_every": 12, "group_by_length": group_by_length}
        )
        train_adapters(model, tokenizer, train, validation, config, output_dir=tmp_path / str(group_by_length))
        assert sum(len(batch["input_ids"]) for batch in batches) == len(train)
        return sum(int((batch["attention_mask"] == 0).sum()) for batch in batches)

    grouped, shuffled = padding(True), padding(False)
    assert grouped < shuffled / 2


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


def test_an_fp16_step_whose_loss_overflows_is_skipped_counted_and_too_many_stop_the_run(tiny_model_dir, diverging, tmp_path, monkeypatch):
    """fp16 (stood in for on the CPU by fp32 steps and a grad scaler): a step whose loss is not finite changes no
    weight and is counted in skipped_steps, and the run goes on; more than MAX_SKIPPED_FP16_STEPS stop it in one sentence."""
    tokenizer, train, validation = diverging
    real_backward, overflowing = training.backward_token_mean, {2, 3}

    def backward(model, micro_batches, trainable, world, precision, scaler):
        step = len(seen) + 1
        seen.append(step)
        loss_sum, tokens = real_backward(model, micro_batches, trainable, world, "fp32", scaler)
        return (math.inf, tokens) if step in overflowing else (loss_sum, tokens)

    monkeypatch.setattr(training, "resolve_precision", lambda requested, device: "fp16")
    monkeypatch.setattr(training, "backward_token_mean", backward)
    weights = {}

    def record(title, series, value, step):
        weights.setdefault(step, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    seen, model = [], fresh_model(tiny_model_dir)
    result = train_adapters(
        model, tokenizer, train, validation, TrainConfig(**{**CONFIG, "max_steps": 4}), output_dir=tmp_path / "run", report=record
    )
    assert result.skipped_steps == 2 and result.steps == 4
    scaler = json.loads((tmp_path / "run" / "checkpoints" / "last" / "state.json").read_text())["scaler"]
    assert scaler["scale"] == 2.0**16 / 4  # the grad scaler is on: its initial scale, halved at each skipped step
    assert all(torch.equal(weights[2][name], weights[1][name]) and torch.equal(weights[3][name], weights[1][name]) for name in weights[1])
    assert any(not torch.equal(weights[4][name], weights[1][name]) for name in weights[1])
    overflowing = set(range(1, 100))
    seen, model = [], fresh_model(tiny_model_dir)
    with pytest.raises(TrainingError, match=rf"^The fp16 loss was not finite in {training.MAX_SKIPPED_FP16_STEPS + 1} steps"):
        train_adapters(model, tokenizer, train, validation, TrainConfig(**{**CONFIG, "max_steps": 40}), output_dir=tmp_path / "stopped")
