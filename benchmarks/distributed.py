"""Data-parallel scaling of the training loop: samples/s at 1, 2, 4, ... ranks (weak scaling: batch per rank fixed).

    python benchmarks/distributed.py --size tiny --ranks 1 2            # CPU, gloo, one thread per rank
    python benchmarks/distributed.py --size rut5-large --ranks 1 2 4 8  # one GPU per rank, nccl, bf16

Each rank count starts its ranks fresh (``torch.multiprocessing``, spawn), every rank trains the same
model (random weights of the named shape, the project's LoRA rank 8 on q/v and a 20-vector prompt)
with :func:`components.training.train_adapters` on synthetic rows (100 input / 200 target tokens, as
the published lengths), so the figure includes collation, the gradient all-reduce and the optimizer.
The rate is measured between the first and the last optimizer step (the first step's warm-up and the
final evaluation left out). Scaling efficiency: samples/s at N ranks / (N x samples/s at 1 rank).
The last line is JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import SIZES, build_model, device_name, print_json_last

from components.distributed.launch import free_port
from components.distributed.world import World
from components.modeling import apply_peft, load_tokenizer
from components.tiny import build_tiny_model
from components.training import TrainConfig, train_adapters

VOCABULARY_IDS = (3, 1000)  # token ids drawn for the synthetic rows: in every shape's vocabulary


def synthetic_rows(count: int, input_length: int, target_length: int, seed: int):
    from datasets import Dataset

    generator = torch.Generator().manual_seed(seed)
    draw = lambda length: torch.randint(*VOCABULARY_IDS, (length,), generator=generator).tolist() + [1]  # noqa: E731
    return Dataset.from_dict({"input_ids": [draw(input_length - 1) for _ in range(count)], "labels": [draw(target_length - 1) for _ in range(count)]})


def build(size: str, device: torch.device):
    tiny_dir = build_tiny_model()
    if size == "tiny":
        from transformers import T5ForConditionalGeneration

        base = T5ForConditionalGeneration.from_pretrained(tiny_dir).to(device)
    else:
        base = build_model(size, device)
    return apply_peft(base, lora_rank=8, lora_alpha=16, lora_dropout=0.05, prompt_length=20), load_tokenizer(str(tiny_dir))


def rank_main(rank: int, ranks: int, args: argparse.Namespace, port: int, results: dict) -> None:
    torch.set_num_threads(1)
    if ranks > 1:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(rank)
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=ranks)
    device = torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
    model, tokenizer = build(args.size, device)
    rows = synthetic_rows(args.batch_size * ranks * args.steps, args.input_length, args.target_length, seed=1)
    config = TrainConfig(
        batch_size=args.batch_size,
        grad_accum_steps=1,
        max_steps=args.steps,
        eval_every=args.steps,
        gradient_checkpointing=False,
        precision="auto",
        eval_batch_size=args.batch_size,
    )
    stamps: list[float] = []

    def report(title, series, value, step):
        if (title, series) == ("loss", "train"):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as output_dir:
        train_adapters(
            model,
            tokenizer,
            rows,
            rows.select(range(args.batch_size)),
            config,
            output_dir=Path(output_dir),
            report=report,
            world=World(rank=rank, size=ranks, local_rank=rank),
        )
    if rank == 0:
        samples_per_s = (len(stamps) - 1) * args.batch_size * ranks / (stamps[-1] - stamps[0])
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        results[ranks] = {"samples_per_s": round(samples_per_s, 2), "peak_mb_per_gpu": round(peak, 1) if peak else None}
    if ranks > 1:
        dist.destroy_process_group()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", *SIZES], default="tiny")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8, help="per rank")
    parser.add_argument("--input-length", type=int, default=100)
    parser.add_argument("--target-length", type=int, default=200)
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = mp.Manager().dict()
    for ranks in args.ranks:
        mp.start_processes(rank_main, args=(ranks, args, free_port(), results), nprocs=ranks, start_method="spawn")
        print(f"{ranks} rank(s): {results[ranks]['samples_per_s']} samples/s", flush=True)
    one = results[args.ranks[0]]["samples_per_s"] / args.ranks[0]
    scaling = {
        ranks: {
            **results[ranks],
            "samples_per_s_per_rank": round(results[ranks]["samples_per_s"] / ranks, 2),
            "efficiency": round(results[ranks]["samples_per_s"] / (ranks * one), 3),
        }
        for ranks in args.ranks
    }
    cuda = torch.cuda.is_available()
    device = device_name(torch.device("cuda")) if cuda else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    result = {
        "benchmark": "distributed.py",
        "size": args.size,
        "device": device,
        "threads_per_rank": 1,
        "batch_per_rank": args.batch_size,
        "steps": args.steps,
        "ranks": scaling,
    }
    print_json_last(result)
    return result


if __name__ == "__main__":
    main()
