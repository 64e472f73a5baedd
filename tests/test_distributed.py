"""Data-parallel training (gloo on CPU) against the single-device loop.

The ranks are forked copies of the test process (no interpreter or torch start-up) joined through
a file store; each trains the same pristine model. The equivalence test is the issue's: one rank of
batch 8, one rank of 4 x accumulation 2, two ranks of 4, two ranks of 2 x accumulation 2 must end
with the same adapters and validation losses, on training rows whose answers differ in length (so a
mean of micro-batch means would weigh them differently) and whose count leaves a partial last batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from forked import exited_cleanly, start_child, wait_children
from safetensors.torch import load_file, save_file
from tolerances import LOSS_RTOL, same_sgd_trajectory_atol
from transformers import T5ForConditionalGeneration

from components.data import preprocess, read_tsv
from components.distributed.world import World
from components.modeling import adapter_state_dict, apply_peft, load_tokenizer
from components.training import TrainConfig, epoch_order, rank_micro_batches, train_adapters

TRAIN_ROWS = 30  # 30 = 3 x 8 + 6: the last optimizer step of each epoch is partial
SCALES = {  # name: (ranks, batch size, accumulation), each a global batch of 8
    "1 rank, batch 8": (1, 8, 1),
    "1 rank, batch 4 x 2": (1, 4, 2),
    "2 ranks, batch 4": (2, 4, 1),
    "2 ranks, batch 2 x 2": (2, 2, 2),
}


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    frame = read_tsv("data/sample/train.tsv")
    train = preprocess(frame.iloc[:TRAIN_ROWS], tokenizer, 32, 32)
    assert len({len(labels) for labels in train["labels"]}) > 5  # answers of many lengths
    torch.manual_seed(0)
    # No dropout (the base's or LoRA's): each rank draws its own masks, so runs of different shapes could not agree.
    base = T5ForConditionalGeneration.from_pretrained(tiny_model_dir, dropout_rate=0.0)
    model = apply_peft(base, lora_rank=4, lora_alpha=32, lora_dropout=0.0, prompt_length=4)
    return model, tokenizer, train, preprocess(frame.iloc[TRAIN_ROWS : TRAIN_ROWS + 11], tokenizer, 32, 32)


class RecordingSGD(torch.optim.SGD):
    """Plain SGD in AdamW's place, recording each step's largest gradient element of every tensor.

    SGD's update is linear in the gradient, so runs whose gradients agree to rounding end with parameters that
    agree to rounding (see ``tolerances.same_sgd_trajectory_atol``). AdamW's is not: its first updates are about
    lr * sign(g), and an element whose gradient is at rounding level (cancellation) moves by up to 2 lr per step
    depending on the order of the sums, which differs between CPU kernels. The objective, the sharding and the
    gradient sums under test are the same whichever optimizer applies them.
    """

    largest_gradients: list[dict[int, float]] = []  # per step: parameter index -> max |gradient|; a forked child's own copy

    def __init__(self, params, lr, weight_decay):
        super().__init__(params, lr=lr, weight_decay=weight_decay)

    def step(self, closure=None):
        parameters = self.param_groups[0]["params"]
        RecordingSGD.largest_gradients.append({i: p.grad.abs().max().item() for i, p in enumerate(parameters) if p.grad is not None})
        return super().step(closure)


def train_at_scale(setup, ranks: int, batch_size: int, accumulation: int, output_dir: Path, **config) -> tuple[dict, list, list]:
    """Train in ``ranks`` forked processes; rank 0's adapters, validation history and largest gradients per step."""
    model, tokenizer, train, validation = setup
    config = TrainConfig(batch_size=batch_size, grad_accum_steps=accumulation, eval_batch_size=3, **config)

    def rank_work(rank: int) -> None:
        if ranks > 1:
            dist.init_process_group("gloo", init_method=f"file://{output_dir}/store", rank=rank, world_size=ranks)
        world = World(rank=rank, size=ranks, local_rank=rank)
        called = set()
        result = train_adapters(
            model,
            tokenizer,
            train,
            validation,
            config,
            output_dir=output_dir,
            world=world,
            report=lambda *args: called.add("report"),
            on_checkpoint=lambda *args: called.add("on_checkpoint"),
        )
        (output_dir / f"steps-of-rank-{rank}").write_text(str(result.steps))
        (output_dir / f"hooks-of-rank-{rank}").write_text(json.dumps(sorted(called)))
        if world.is_main:
            save_file(adapter_state_dict(model), output_dir / "trained.safetensors")
            (output_dir / "history.json").write_text(json.dumps(result.history))
            (output_dir / "gradients.json").write_text(json.dumps(RecordingSGD.largest_gradients))

    output_dir.mkdir(parents=True)
    statuses = wait_children([start_child(lambda rank=rank: rank_work(rank)) for rank in range(ranks)])
    assert all(exited_cleanly(status) for status in statuses), statuses
    assert len({(output_dir / f"steps-of-rank-{rank}").read_text() for rank in range(ranks)}) == 1  # every rank stopped at one step
    hooks = [json.loads((output_dir / f"hooks-of-rank-{rank}").read_text()) for rank in range(ranks)]
    assert hooks == [["on_checkpoint", "report"]] + [[]] * (ranks - 1)  # rank 0 alone reports and hands on checkpoints
    gradients = json.loads((output_dir / "gradients.json").read_text())  # empty unless RecordingSGD stood in for AdamW
    return (
        load_file(str(output_dir / "trained.safetensors")),
        json.loads((output_dir / "history.json").read_text()),
        [{int(i): value for i, value in step.items()} for step in gradients],
    )


LEARNING_RATE, STEPS = 1e-2, 4


@pytest.mark.numeric
def test_every_scale_of_the_same_global_batch_trains_the_same_adapters(setup, tmp_path, monkeypatch):
    """4 optimizer steps (one epoch, the last of 6 rows), evaluated after steps 2 and 4, with SGD applying them.

    Tolerance: ``tolerances.same_sgd_trajectory_atol`` of the reference run's recorded gradients, per tensor (the
    runs' gradients are the same sums in another order). With the loss a mean of micro-batch means (seen) the
    adapters of batch 4 x 2 differ by far more than it.
    """
    monkeypatch.setattr(torch.optim, "AdamW", RecordingSGD)  # the forked ranks inherit it
    runs = {
        name: train_at_scale(
            setup,
            *shape,
            tmp_path / name.replace(" ", "_"),
            learning_rate=LEARNING_RATE,
            epochs=1,
            eval_every=2,
            gradient_checkpointing=False,
            seed=11,
        )
        for name, shape in SCALES.items()
    }
    reference_adapters, reference_history, reference_gradients = runs["1 rank, batch 8"]
    assert [entry["step"] for entry in reference_history] == [2, STEPS] and len(reference_gradients) == STEPS
    trainable = [name for name, parameter in setup[0].named_parameters() if parameter.requires_grad]  # the optimizer's order
    atol = {
        name: same_sgd_trajectory_atol(LEARNING_RATE, [step[index] for step in reference_gradients], reference_adapters[name].abs().max().item())
        for index, name in enumerate(trainable)
    }
    for name, (adapters, history, _) in runs.items():
        assert adapters.keys() == reference_adapters.keys()
        for tensor_name, tensor in adapters.items():
            difference = (tensor - reference_adapters[tensor_name]).abs().max().item()
            assert difference <= atol[tensor_name], f"{name}: {tensor_name} differs by {difference:.2g} (bound {atol[tensor_name]:.2g})"
        # the validation loss: the same token-weighted mean over the split, sharded or not
        assert [entry["step"] for entry in history] == [2, STEPS]
        assert [entry["validation_loss"] for entry in history] == pytest.approx(
            [entry["validation_loss"] for entry in reference_history], rel=LOSS_RTOL
        )


@pytest.mark.parametrize("ranks, batch_size, accumulation", [(1, 4, 2), (2, 4, 1), (2, 2, 2), (3, 2, 2)])
def test_the_ranks_shards_are_disjoint_and_cover_each_epoch_once_in_the_order_of_one_rank(setup, ranks, batch_size, accumulation):
    """30 rows in global batches of batch x accumulation x ranks; the epoch's order (length-grouped) is one for all ranks."""
    _, _, train, _ = setup
    config = TrainConfig(batch_size=batch_size, grad_accum_steps=accumulation, seed=4)
    global_batch = batch_size * accumulation * ranks
    order = epoch_order(train, config, global_batch, epoch=1)
    assert order != epoch_order(train, config, global_batch, epoch=2) and sorted(order) == list(range(TRAIN_ROWS))
    steps = -(-TRAIN_ROWS // global_batch)
    for step in range(steps):
        shards = [rank_micro_batches(order, step, config, World(rank=rank, size=ranks, local_rank=rank)) for rank in range(ranks)]
        assert all(len(shard) <= accumulation for shard in shards)
        assert all(0 < len(chunk) <= batch_size for shard in shards for chunk in shard)
        taken = sorted(i for shard in shards for chunk in shard for i in chunk)
        assert taken == sorted(order[step * global_batch : (step + 1) * global_batch])  # disjoint, and the step's global batch
    assert rank_micro_batches(order, steps, config, World(rank=0, size=ranks, local_rank=0)) == []


def test_early_stopping_stops_every_rank_at_the_same_step(setup, tmp_path):
    """lr 0: the first evaluation stays the best, and two more without improvement stop all ranks at step 3 of 12."""
    _, history, _ = train_at_scale(
        setup, 2, 4, 1, tmp_path / "run", learning_rate=0.0, epochs=3, eval_every=1, early_stopping_patience=2, gradient_checkpointing=False
    )
    assert [entry["step"] for entry in history] == [1, 2, 3]
