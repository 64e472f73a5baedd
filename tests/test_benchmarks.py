"""The benchmark scripts still run and print the fields the README's tables are read from.

Tiny shapes and a single round: these are smoke tests, not timings (timings live in
benchmarks/ and the README, never in assertions).
"""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import distributed as distributed_benchmark  # noqa: E402
import generation as generation_benchmark  # noqa: E402
import serving as serving_benchmark  # noqa: E402
import train_step  # noqa: E402


def test_train_step_reports_every_variant_and_the_paired_ratios(capsys):
    result = train_step.main(["--size", "small", "--rounds", "1", "--warmup", "0", "--batch-size", "1",
                              "--input-length", "8", "--target-length", "8", "--prompt-length", "4"])
    for key in ("ours_s", "ours_lora_s", "peft_lora_s", "floor_s", "ratio_vs_peft", "ratio_vs_floor", "ours_peak_mb", "peft_peak_mb", "device"):
        assert key in result
    assert result["all_peak_mb"]["ours"] > result["all_peak_mb"]["floor"] > 0  # adapters save more for backward
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('{"ours_s"')


def test_generation_benchmark_does_equal_work_both_ways():
    result = generation_benchmark.main(["--size", "small", "--texts", "3", "--max-new-tokens", "2", "--batch-size", "3"])
    assert result["texts"] == result["single_texts"] == 3
    assert result["batched_tokens_per_s"] > 0 and result["single_tokens_per_s"] > 0


def test_distributed_benchmark_measures_each_rank_count_and_the_efficiency():
    result = distributed_benchmark.main(["--ranks", "1", "2", "--steps", "3", "--batch-size", "2", "--input-length", "8", "--target-length", "8"])
    assert set(result["ranks"]) == {1, 2} and result["ranks"][1]["efficiency"] == 1.0
    assert all(entry["samples_per_s"] > 0 and entry["efficiency"] > 0 for entry in result["ranks"].values())


def test_serving_benchmark_rates_each_engine_and_precision_at_batch_1_and_16():
    result = serving_benchmark.main(["--size", "small", "--texts", "2", "--single-texts", "1", "--max-new-tokens", "2"])
    engines = {f"{engine}_{precision}" for engine in ("transformers", "ctranslate2") for precision in ("float32", "int8")}
    assert set(result["new_tokens_per_s"]) == engines
    assert all(rate["batch_1"] > 0 and rate["batch_16"] > 0 for rate in result["new_tokens_per_s"].values())
    assert result["greedy_agreement"] == 1.0  # one search on the same weights: a difference is a conversion bug
