"""The benchmark scripts still run and print the fields the tables of docs/performance.md are read from.

Tiny shapes and a single round: these are smoke tests, not timings (timings live in
benchmarks/ and docs/performance.md, never in assertions).
"""

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT

from components.lora import LoRALayer

sys.path.insert(0, str(ROOT / "benchmarks"))

import distributed as distributed_benchmark  # noqa: E402
import first_run_on_agents  # noqa: E402
import generation as generation_benchmark  # noqa: E402
import mutation  # noqa: E402
import openai_server as server_benchmark  # noqa: E402
import pipeline as pipeline_benchmark  # noqa: E402
import serving as serving_benchmark  # noqa: E402
import tiny_learns  # noqa: E402
import train_step  # noqa: E402


def test_train_step_reports_every_variant_and_the_paired_ratios(capsys):
    result = train_step.main(
        [
            "--size",
            "small",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--batch-size",
            "1",
            "--input-length",
            "8",
            "--target-length",
            "8",
            "--prompt-length",
            "4",
        ]
    )
    for key in ("ours_s", "ours_lora_s", "peft_lora_s", "floor_s", "ratio_vs_peft", "ratio_vs_floor", "ours_peak_mb", "peft_peak_mb", "device"):
        assert key in result
    assert result["all_peak_mb"]["ours"] > result["all_peak_mb"]["floor"] > 0  # adapters save more for backward
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('{"ours_s"')


TRAIN_STEP_OPTIONS = [
    "--size",
    "rut5-large",
    "--batch-size",
    "2",
    "--input-length",
    "5",
    "--target-length",
    "3",
    "--lora-rank",
    "2",
    "--lora-alpha",
    "6",
    "--lora-dropout",
    "0.2",
    "--prompt-length",
    "3",
    "--precision",
    "bf16",
    "--checkpointing",
    "--warmup",
    "1",
    "--rounds",
    "2",
    "--peak-tflops",
    "0.001",
]


# Seconds of each variant's two timed rounds: the medians of the paired ratios (0.5 and 2.5 -> 1.5; 2.0 and 1.5 -> 1.75)
# are not the ratios of the medians (2.25 / 2.5 = 0.9; 2.0 / 1.25 = 1.6).
ROUND_SECONDS = {"ours": [1.0, 3.0], "ours_lora": [2.0, 2.5], "peft_lora": [4.0, 1.0], "floor": [0.5, 2.0]}
PEAK_MB = {"ours": 10.04, "ours_lora": 9.0, "peft_lora": 8.06, "floor": 7.0}


def test_train_step_benchmark_times_the_variants_its_options_ask_for(monkeypatch):
    """Every option away from its default reaches the variants timed: the adapters' rank, alpha, dropout and prompt,
    PEFT's LoRA alike, bf16 autocast, checkpointing, the batch's shape, warm-up and timed rounds. The record is the
    timer's: each variant's median seconds, the medians of the per-round ratios, each variant's memory measure, and
    the rates and model-FLOPs utilisation (4 x parameters x tokens, at the --peak-tflops given) recomputed here."""
    sizes, variants, steps = [], {}, []
    small = train_step.build_model

    def build_model(size, device):
        sizes.append(size)
        return small("small", device)

    class Recorded(train_step.Variant):
        def __init__(self, name, base, args, device):
            super().__init__(name, base, args, device)
            variants[name] = self

        def step(self, batch):
            steps.append((self.name, tuple(batch["input_ids"].shape), tuple(batch["attention_mask"].shape), tuple(batch["labels"].shape)))

    monkeypatch.setattr(train_step, "build_model", build_model)
    monkeypatch.setattr(train_step, "Variant", Recorded)
    rounds = {name: iter(seconds) for name, seconds in ROUND_SECONDS.items()}
    monkeypatch.setattr(train_step, "timed", lambda fn, sync: (fn(), next(rounds[steps[-1][0]]))[1])
    monkeypatch.setattr(train_step, "saved_activation_mb", lambda variant, batch: (variant.step(batch), PEAK_MB[variant.name])[1])
    result = train_step.main(TRAIN_STEP_OPTIONS)
    assert sizes == ["rut5-large"]
    for name in ("ours", "ours_lora"):
        lora = [m for m in variants[name].model.modules() if isinstance(m, LoRALayer)]
        assert lora and all((m.rank, m.alpha, m.dropout.p) == (2, 6.0, 0.2) for m in lora), name
    config = variants["peft_lora"].model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (2, 6.0, 0.2)
    assert [variants[name].prompt_length for name in train_step.VARIANTS] == [3, 0, 0, 0]
    assert all(v.autocast.fast_dtype == torch.bfloat16 for v in variants.values())
    assert all(any(getattr(m, "gradient_checkpointing", False) for m in v.model.modules()) for v in variants.values())
    # 1 warm-up, 2 timed rounds and the memory measure: 4 steps of each variant, each on the batch asked for
    for name in train_step.VARIANTS:
        width = 5 + variants[name].prompt_length
        assert [step[1:] for step in steps if step[0] == name] == [((2, 5), (2, width), (2, 3))] * 4, name
    base = small("small", torch.device("cpu"))
    encoder = sum(p.numel() for p in base.encoder.block.parameters())
    decoder = sum(p.numel() for p in base.decoder.block.parameters()) + base.lm_head.weight.numel()
    flops = 4.0 * (encoder * 2 * (5 + 3) + decoder * 2 * 3)
    assert {key: result[key] for key in ("ours_s", "ours_lora_s", "peft_lora_s", "floor_s", "ratio_vs_peft", "ratio_vs_floor")} == {
        "ours_s": 2.0,
        "ours_lora_s": 2.25,
        "peft_lora_s": 2.5,
        "floor_s": 1.25,
        "ratio_vs_peft": 1.5,
        "ratio_vs_floor": 1.75,
    }
    assert (result["ours_peak_mb"], result["peft_peak_mb"], result["all_peak_mb"]) == (
        10.0,
        8.1,
        {"ours": 10.0, "ours_lora": 9.0, "peft_lora": 8.1, "floor": 7.0},
    )
    assert result["ours_mfu"] == round(flops / 2.0 / 0.001e12, 4)
    assert (result["ours_samples_per_s"], result["ours_tokens_per_s"]) == (2 / 2.0, 2 * (5 + 3) / 2.0)  # rows, and their input and target tokens
    assert (result["batch"], result["precision"], result["checkpointing"], result["size"]) == ([2, 5, 3], "bf16", True, "rut5-large")


def test_the_cpu_memory_measure_is_the_bytes_saved_for_backward_without_the_parameters():
    """One step of sum(tanh(x W^T)), x requiring a gradient too: autograd keeps x (for W's gradient), W (for x's) and
    tanh's output (for its own); W, a parameter, is not counted, nor is a tensor saved twice."""

    class Step:
        model = torch.nn.Linear(8, 3, bias=False)

        def step(self, batch):
            hidden = torch.tanh(batch @ self.model.weight.t())
            (hidden.sum() + (hidden * hidden).sum()).backward()  # hidden is saved again by the product: counted once

    assert train_step.saved_activation_mb(Step(), torch.randn(4, 8, requires_grad=True)) == (4 * 8 + 4 * 3) * 4 / 2**20  # float32: 4 bytes


def test_generation_benchmark_does_equal_work_both_ways():
    result = generation_benchmark.main(["--size", "small", "--texts", "3", "--max-new-tokens", "2", "--batch-size", "3"])
    assert result["texts"] == result["single_texts"] == 3
    assert result["batched_tokens_per_s"] > 0 and result["single_tokens_per_s"] > 0


GENERATION_OPTIONS = [
    "--size",
    "rut5-large",
    "--texts",
    "5",
    "--single-texts",
    "2",
    "--max-new-tokens",
    "3",
    "--batch-size",
    "2",
    "--num-beams",
    "2",
    "--dtype",
    "bf16",
]


def test_generation_benchmark_times_the_work_its_options_ask_for(monkeypatch):
    """Every option away from its default reaches what is timed (the model built, each generate_predictions call) and
    the rates are the tokens asked for over the time measured; ruT5-large's shape is recorded, a small model stands in."""
    built, calls = [], []
    small = generation_benchmark.build_model

    def build_model(size, device):
        built.append(size)
        return small("small", device)

    def generate(model, tokenizer, texts, *, batch_size, num_beams, max_new_tokens):
        calls.append((len(texts), batch_size, num_beams, max_new_tokens, next(model.parameters()).dtype))
        return [""] * len(texts)

    seconds = iter([3.0, 2.0])  # batched, then one at a time
    monkeypatch.setattr(generation_benchmark, "build_model", build_model)
    monkeypatch.setattr(generation_benchmark, "generate_predictions", generate)
    monkeypatch.setattr(generation_benchmark, "timed", lambda fn, sync: (fn(), next(seconds))[1])
    result = generation_benchmark.main(GENERATION_OPTIONS)
    assert built == ["rut5-large"]
    # warm-up on one batch, the timed batched run, then the first 2 texts one at a time
    assert calls == [(2, 2, 2, 3, torch.bfloat16), (5, 2, 2, 3, torch.bfloat16), (1, 1, 2, 3, torch.bfloat16), (1, 1, 2, 3, torch.bfloat16)]
    assert (result["batched_tokens_per_s"], result["single_tokens_per_s"], result["speedup"]) == (5 * 3 / 3.0, 2 * 3 / 2.0, 1.67)  # (5 / 3) / (2 / 2)
    assert result["batched_s"] == 3.0
    assert {key: result[key] for key in ("texts", "single_texts", "max_new_tokens", "batch_size", "num_beams", "size", "dtype")} == {
        "texts": 5,
        "single_texts": 2,
        "max_new_tokens": 3,
        "batch_size": 2,
        "num_beams": 2,
        "size": "rut5-large",
        "dtype": "bf16",
    }


def test_distributed_benchmark_measures_each_rank_count_and_the_efficiency():
    result = distributed_benchmark.main(["--ranks", "1", "2", "--steps", "3", "--batch-size", "2", "--input-length", "8", "--target-length", "8"])
    assert set(result["ranks"]) == {1, 2} and result["ranks"][1]["efficiency"] == 1.0
    assert all(entry["samples_per_s"] > 0 and entry["efficiency"] > 0 for entry in result["ranks"].values())


DISTRIBUTED_OPTIONS = ["--size", "small", "--ranks", "1", "3", "--steps", "4", "--batch-size", "3", "--input-length", "6", "--target-length", "5"]


def test_distributed_benchmark_trains_the_shape_and_work_its_options_ask_for(monkeypatch):
    """A rank builds the shape asked for and trains --steps steps of --batch-size rows per rank, rows of the lengths
    asked for; each rank count starts that many processes, and the efficiency is samples/s over ranks x one rank's."""
    args = distributed_benchmark.build_parser().parse_args(DISTRIBUTED_OPTIONS)
    sizes, trained = [], []
    build = distributed_benchmark.build

    def build_tiny(size, device):
        sizes.append(size)
        return build("tiny", device)

    def train(model, tokenizer, rows, validation, config, *, output_dir, report, world):
        trained.append(
            (
                len(rows),
                {len(ids) for ids in rows["input_ids"]},
                {len(ids) for ids in rows["labels"]},
                config.batch_size,
                config.max_steps,
                torch.get_num_threads(),
            )
        )
        for step in range(1, config.max_steps + 1):
            report("loss", "train", 1.0, step)

    clock = iter([10.0, 10.5, 12.0, 13.0])  # the time of each step's report: 3 steps of 3 rows in 3 s after the first
    monkeypatch.setattr(distributed_benchmark, "build", build_tiny)
    monkeypatch.setattr(distributed_benchmark, "train_adapters", train)
    monkeypatch.setattr(distributed_benchmark, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    results, threads = {}, torch.get_num_threads()
    try:
        distributed_benchmark.rank_main(0, 1, args, 0, results)
    finally:
        torch.set_num_threads(threads)
    assert sizes == ["small"] and trained == [(3 * 1 * 4, {6}, {5}, 3, 4, 1)]  # one thread per rank, as the record says
    assert results[1] == {"samples_per_s": 3 * 3 / 3.0, "peak_mb_per_gpu": None}

    started = []

    def start_processes(rank_main, args, nprocs, start_method):
        started.append(nprocs)
        args[-1][nprocs] = {"samples_per_s": {1: 10.0, 3: 24.0}[nprocs], "peak_mb_per_gpu": None}

    monkeypatch.setattr(distributed_benchmark.mp, "start_processes", start_processes)
    result = distributed_benchmark.main(DISTRIBUTED_OPTIONS)
    assert started == [1, 3]
    assert result["ranks"][3] == {"samples_per_s": 24.0, "peak_mb_per_gpu": None, "samples_per_s_per_rank": 8.0, "efficiency": 0.8}
    assert (result["size"], result["batch_per_rank"], result["steps"], result["threads_per_rank"]) == ("small", 3, 4, 1)


def test_serving_benchmark_times_each_configuration_in_turns_on_the_work_its_options_ask_for(monkeypatch):
    """Eight configurations (engine, precision, batch) take turns for --repeats rounds after a warm-up; each generates
    --max-new-tokens tokens for each of --texts texts in batches, or --single-texts texts one at a time. ruT5-large's
    shape is recorded, the small shape's export stands in; the agreement counts the float32 answers that differ."""
    sizes, turns, generated = [], [], []
    export, interleaved, batch_works = serving_benchmark.export_random_model, serving_benchmark.interleaved, serving_benchmark.batch_works

    def export_small(size, folder):
        sizes.append(size)
        return export("small", folder)

    def recorded_interleaved(works, repeats):
        turns.append((list(works), repeats))
        return interleaved(works, repeats)

    engines_seen = []

    def recorded_works(generate, texts, single_texts, outputs):
        engines_seen.append(generate)
        differs = len(engines_seen) == 2  # CTranslate2 in float32: its first batched answer made to differ

        def counted(batch):
            answers = generate(batch)
            generated.append((len(batch), {len(ids) for ids in answers}))
            return [[-1], *answers[1:]] if differs and len(batch) > 1 else answers

        return batch_works(counted, texts, single_texts, outputs)

    monkeypatch.setattr(serving_benchmark, "export_random_model", export_small)
    monkeypatch.setattr(serving_benchmark, "interleaved", recorded_interleaved)
    monkeypatch.setattr(serving_benchmark, "batch_works", recorded_works)
    result = serving_benchmark.main(["--size", "rut5-large", "--texts", "3", "--single-texts", "1", "--max-new-tokens", "2", "--repeats", "2"])
    engines = [f"{engine}_{precision}" for precision in ("float32", "int8") for engine in ("transformers", "ctranslate2")]
    assert sizes == ["rut5-large"] and turns == [([f"{engine} {batch}" for engine in engines for batch in ("batch_16", "batch_1")], 2)]
    assert generated == [(3, {2}), (1, {2})] * 4 * 3  # each configuration: the warm-up and two rounds, every answer 2 tokens
    assert list(result["new_tokens_per_s"]) == engines and all(
        rate["batch_16"]["runs"] == rate["batch_1"]["runs"] == 2 for rate in result["new_tokens_per_s"].values()
    )
    assert (result["size"], result["texts"], result["single_texts"], result["max_new_tokens"], result["repeats"]) == ("rut5-large", 3, 1, 2, 2)
    medians = {engine: rate["batch_16"]["median"] for engine, rate in result["new_tokens_per_s"].items()}
    assert result["speedup_batch_16_over_transformers_float32"] == {
        engine: round(median / medians["transformers_float32"], 2) for engine, median in medians.items()
    }
    assert result["greedy_agreement"] == 0.667  # 2 of the 3 answers the same
    assert len(result["load_1min_before_after"]) == 2 and all(load >= 0 for load in result["load_1min_before_after"])  # os.getloadavg's readings


def test_server_benchmark_loads_both_servers_in_turns_with_the_clients_and_requests_asked_for(tiny_export, tmp_path, monkeypatch):
    """Two servers of the folder (batches of 16, one at a time) with the compute type and token limit asked for; a
    warm-up each, then for each clients count both servers in turn, --repeats rounds; both processes end with it."""
    from components.export.ctranslate2_model import convert_to_ctranslate2

    converted = convert_to_ctranslate2(tiny_export, tmp_path / "ctranslate2")
    started, runs = [], []
    start, load = server_benchmark.start_server, server_benchmark.load_run

    def recorded_start(folder, max_batch_size, compute_type, max_tokens):
        server = start(folder, max_batch_size, compute_type, max_tokens)
        started.append(((folder, max_batch_size, compute_type, max_tokens), server))
        return server

    def recorded_load(port, clients, requests, texts, max_tokens):
        run = load(port, clients, requests, texts, max_tokens)
        runs.append((port, clients, requests, max_tokens, len(run["latencies"])))
        return run

    monkeypatch.setattr(server_benchmark, "start_server", recorded_start)
    monkeypatch.setattr(server_benchmark, "load_run", recorded_load)
    argv = ["--model-dir", str(converted), "--compute-type", "float32", "--clients", "1,3", "--requests", "4", "--max-tokens", "3", "--repeats", "2"]
    result = server_benchmark.main(argv)
    assert [settings for settings, _ in started] == [(converted, 16, "float32", 3), (converted, 1, "float32", 3)]
    batching_port, single_port = (port for (_, (_, port)) in started)
    assert (
        runs
        == [(batching_port, 1, 2, 3, 2), (single_port, 1, 2, 3, 2)]
        + [(port, clients, 4, 3, 4) for clients in (1, 3) for port in (batching_port, single_port)] * 2
    )
    assert all(process.poll() is not None for _, (process, _) in started)
    for mode in ("dynamic batching", "one at a time"):
        assert list(result["modes"][mode]) == ["1", "3"] and all(figures["requests_per_s"]["runs"] == 2 for figures in result["modes"][mode].values())
    medians = {mode: result["modes"][mode]["3"]["requests_per_s"]["median"] for mode in result["modes"]}
    assert result["speedup_requests_per_s"]["3"] == round(medians["dynamic batching"] / medians["one at a time"], 2)
    assert (result["compute_type"], result["max_tokens"], result["requests"], result["repeats"]) == ("float32", 3, 4, 2)
    # Without --model-dir: a random model of --size, exported and converted (the tiny export stands in for it here).
    sizes = []
    monkeypatch.setattr(server_benchmark, "export_random_model", lambda size, folder: sizes.append(size) or (tiny_export, converted))
    result = server_benchmark.main(["--size", "rut5-large", "--clients", "1", "--requests", "2", "--repeats", "1"])
    assert sizes == ["rut5-large"] and result["size"] == "rut5-large" and started[-1][0] == (converted, 1, "int8", 32)


def test_server_figures_are_the_medians_of_the_rounds_and_the_percentiles_of_every_latency():
    """Three rounds of 10 requests: requests/s 10/wall; latencies 1..101 ms over the rounds (by the inclusive method
    p50 and p99 are the values 0.5 and 0.99 of the way from the first to the last: 51 and 100 ms); tokens/s, CPU and
    load as given."""
    latencies = [n / 1000 for n in range(1, 102)]
    runs = [
        {"wall_s": wall, "latencies": latencies[i::3], "tokens": tokens, "server_cpu_s": cpu, "load": load}
        for i, (wall, tokens, cpu, load) in enumerate([(2.0, 40, 1.0, 0.5), (1.0, 30, 3.0, 1.5), (4.0, 80, 2.0, 1.0)])
    ]
    assert server_benchmark.summary(runs, 10) == {
        "requests_per_s": {"median": 5.0, "min": 2.5, "max": 10.0, "runs": 3},
        "new_tokens_per_s_median": 20.0,  # of 20, 30 and 20
        "latency_s": {"p50": 0.051, "p99": 0.1},
        "server_cpu_s_median": 2.0,
        "load_1min": [0.5, 1.5],
    }


def test_interleaved_work_takes_turns_and_rates_are_medians_of_the_runs(monkeypatch):
    import common

    order, walls = [], iter([2.0, 1.0, 4.0, 1.0, 1.0, 1.0])

    def fake_sample(work):
        work()
        return common.Sample(wall_s=next(walls), cpu_s=3.0, load=len(order) / 10)

    monkeypatch.setattr(common, "sample", fake_sample)
    samples = common.interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3)
    assert order == ["a", "b"] * 3
    assert [s.wall_s for s in samples["a"]] == [2.0, 4.0, 1.0]
    assert common.rate_summary(samples["a"], 8) == {
        "median": 4.0,  # of the rates 2, 4 and 8
        "min": 2.0,
        "max": 8.0,
        "runs": 3,
        "cpu_s_median": 3.0,
        "wall_s_median": 2.0,
        "load_1min": [0.1, 0.5],
    }


def test_the_pipeline_benchmark_reads_the_run_it_made_in_output_dir(monkeypatch, tmp_path):
    """The tiny pipeline runs into --output-dir; each step's share of ClearML time and the totals are recomputed here
    from the summary and results a run wrote (a stand-in run: the real one is the README's make tiny)."""
    launched = []

    def run(command, cwd, check, stdout):
        launched.append(command)
        output = Path(command[command.index("--output-dir") + 1])
        (output / "summary.json").write_text(json.dumps({"step_seconds": {"ingest": 2.0, "train": 10.0}}))
        for step, seconds in {"ingest": {"step": 1.5, "clearml": 0.5}, "train": {"step": 8.0, "clearml": 1.0}}.items():
            (output / step).mkdir()
            (output / step / "result.json").write_text(json.dumps({"seconds": seconds}))

    monkeypatch.setattr(pipeline_benchmark.subprocess, "run", run)
    result = pipeline_benchmark.main(["--output-dir", str(tmp_path)])
    assert launched[0][1:5] == ["pipelines/run_pipeline.py", "--local", "--preset", "tiny"] and launched[0][-1] == str(tmp_path)
    assert result["steps"]["ingest"] == {"wall_s": 2.0, "in_step_s": 1.5, "clearml_s": 0.5, "clearml_share_of_wall": 0.25}
    assert result["steps"]["train"]["clearml_share_of_wall"] == 0.1
    assert result["total"] == {"wall_s": 12.0, "in_step_s": 9.5, "clearml_s": 1.5}


def test_the_tiny_learns_benchmark_clones_and_caches_in_work_dir_and_recomputes_its_ratios(monkeypatch, tmp_path):
    ran = []

    def run(command, cwd=None, env=None, check=True, stdout=None, stderr=None):
        ran.append((command, cwd, env and env["RUT5_TINY_CACHE"]))
        if command[:2] == ["git", "clone"]:
            Path(command[-1]).mkdir(parents=True)
        if command[:2] == ["make", "tiny"]:
            (cwd / "runs" / "tiny").mkdir(parents=True)
            (cwd / "runs" / "tiny" / "summary.json").write_text(
                json.dumps({"metrics": {"loss": 1.5, "chrf": 0.3}, "base_metrics": {"loss": 3.0, "chrf": 0.1}, "step_seconds": {"train": 30.0}})
            )

    clock, load = iter([100.0, 112.34, 120.0, 165.0]), iter([0.5, 1.25, 1.75])  # the build's start and end, then make tiny's
    monkeypatch.setattr(tiny_learns.subprocess, "run", run)
    monkeypatch.setattr(tiny_learns, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setattr(tiny_learns.os, "getloadavg", lambda: (next(load), 0.0, 0.0))
    result = tiny_learns.main(["--work-dir", str(tmp_path)])
    clone = tmp_path / "clone"
    assert ran[0][0][-1] == str(clone) and [cwd for _, cwd, _ in ran[1:]] == [clone, clone]
    assert {cache for _, _, cache in ran[1:]} == {str(tmp_path / "cache")}
    assert (result["loss_ratio"], result["chrf_ratio"], result["step_seconds"]) == (0.5, 3.0, {"train": 30.0})
    assert {key: result[key] for key in ("base_loss", "tuned_loss", "base_chrf", "tuned_chrf", "build_s", "make_tiny_s", "load_average_1min")} == {
        "base_loss": 3.0,
        "tuned_loss": 1.5,
        "base_chrf": 0.1,
        "tuned_chrf": 0.3,
        "build_s": 12.3,
        "make_tiny_s": 45.0,
        "load_average_1min": {"before": 0.5, "after_build": 1.25, "after_make": 1.75},
    }


def test_the_first_run_benchmark_keeps_its_server_and_logs_in_work_dir(monkeypatch, tmp_path):
    """Where --work-dir sends the server's state and the agents' logs (the run itself takes 10 minutes: a stand-in
    server stops it at its start)."""

    class Stop(Exception):
        pass

    class Server:
        def __init__(self, state_dir):
            raise Stop(state_dir)

    monkeypatch.setattr(first_run_on_agents, "ClearMLTestServer", Server)
    with pytest.raises(Stop) as stopped:
        first_run_on_agents.main(["--work-dir", str(tmp_path / "work")])
    assert stopped.value.args == (tmp_path / "work" / "server",) and (tmp_path / "work" / "logs").is_dir()


def test_the_first_run_benchmark_times_the_launch_the_run_and_each_tasks_wait_and_run(monkeypatch, tmp_path):
    """The record's times: the launch command's and the whole run's (until the controller completed) on the benchmark's
    clock, and each task's wait for an agent (created to started) and run (started to completed) from the times the
    server recorded; the step templates are left out (stand-ins for the server, agents and launch: the run takes 10 minutes)."""
    waited_for, agents_started = [], []

    class Server:
        def __init__(self, state_dir):
            pass

        def start(self):
            return self

        def environment(self):
            return {"CLEARML_API_HOST": "http://api", "CLEARML_API_ACCESS_KEY": "key", "CLEARML_API_SECRET_KEY": "secret"}

        def stop(self):
            pass

    class Api:
        def __init__(self, host, key, secret):
            pass

        def wait_for_status(self, task_id, statuses, timeout_s, diagnostics):
            waited_for.append((task_id, statuses))

        def tasks(self, order_by):
            return [
                {"name": "ingest", "tags": ["template"], "created": "2026-12-07T09:00:00", "status": "draft"},
                {
                    "name": "ingest",
                    "tags": [],
                    "created": "2026-12-07T10:00:00+00:00",
                    "started": "2026-12-07T10:00:04.500+00:00",
                    "completed": "2026-12-07T10:01:00.300+00:00",
                    "status": "completed",
                },
                {"name": "train", "created": "2026-12-07T10:01:00+00:00", "status": "queued"},
            ]

    class Runner:
        def __init__(self, clone, shell):
            pass

        def run(self, command, timeout_s):
            return SimpleNamespace(stdout="ClearML Task: created new task id=controller-1\n", stderr="")

        created_task_ids = staticmethod(lambda text: ["controller-1"] if "id=controller-1" in text else [])

    class Agents:
        def __init__(self, processes, target, work):
            pass

        def start(self, command, builds_venv, extra_env):
            agents_started.append(command)

    clock = iter([100.0, 112.5, 700.0])  # the launch's start and end, then the controller completed
    monkeypatch.setattr(first_run_on_agents, "ClearMLTestServer", Server)
    monkeypatch.setattr(first_run_on_agents, "ServerApi", Api)
    monkeypatch.setattr(first_run_on_agents, "ServerTarget", SimpleNamespace)
    monkeypatch.setattr(first_run_on_agents, "Processes", lambda logs: SimpleNamespace(stop_all=lambda: None))
    monkeypatch.setattr(first_run_on_agents, "start_git_remote", lambda processes, folder: SimpleNamespace(clone=folder / "clone"))
    monkeypatch.setattr(first_run_on_agents, "Agents", Agents)
    monkeypatch.setattr(first_run_on_agents, "ProjectRunner", Runner)
    monkeypatch.setattr(first_run_on_agents, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    result = first_run_on_agents.main(["--work-dir", str(tmp_path)])
    assert waited_for == [("controller-1", ("completed",))] and len(agents_started) == 3  # the README's cpu, gpu and services agents
    assert (result["launch_s"], result["run_s"]) == (12.5, 600.0)
    assert result["tasks"] == {
        "ingest": {"waited_s": 4.5, "ran_s": 55.8, "status": "completed"},
        "train": {"waited_s": None, "ran_s": None, "status": "queued"},
    }


def test_make_mutation_mutates_the_module_against_the_tests_given_in_a_copy(monkeypatch, tmp_path):
    """The copy's setup.cfg names the module and each pytest argument on its own line; mutmut runs there with
    --max-children; the tests that import the module are the default."""
    calls, real_run = [], subprocess.run

    def run(command, cwd, check, env=None, capture_output=False, text=False):
        if command[0] == "git":  # the copy lists the tracked files
            return real_run(command, cwd=cwd, check=check, capture_output=capture_output, text=text)
        calls.append((command[3:], Path(cwd)))
        if "export-cicd-stats" in command:
            (Path(cwd) / "mutants").mkdir()
            (Path(cwd) / "mutants" / "mutmut-cicd-stats.json").write_text(
                json.dumps({"total": 10, "killed": 8, "timeout": 1, "survived": 1, "no_tests": 0, "suspicious": 0})
            )
        return subprocess.CompletedProcess(command, 0, stdout="    components.comparison.x_ratio__mutmut_1: survived\n")

    monkeypatch.setattr(mutation, "WORK", tmp_path)
    monkeypatch.setattr(mutation.subprocess, "run", run)
    stats = mutation.main(["components/comparison.py", "--tests", "tests/test_report.py --deselect=tests/test_report.py::x", "--max-children", "1"])
    work = tmp_path / "components.comparison"
    assert calls == [(["run", "--max-children", "1"], work), (["export-cicd-stats"], work), (["results"], work)]
    config = (work / "setup.cfg").read_text()
    assert "only_mutate =\n    components/comparison.py\n" in config
    assert "pytest_add_cli_args_test_selection =\n    tests/test_report.py\n    --deselect=tests/test_report.py::x\n" in config
    assert (work / "components" / "comparison.py").read_bytes() == (ROOT / "components" / "comparison.py").read_bytes()
    importing = sorted(
        f"tests/{path.name}"
        for path in (ROOT / "tests").glob("test_*.py")
        if re.search(r"^from components\.comparison import", path.read_text(encoding="utf-8"), re.MULTILINE)
    )
    assert stats["killed"] == 8 and "tests/test_report.py" in importing and mutation.importers("components/comparison.py") == importing
