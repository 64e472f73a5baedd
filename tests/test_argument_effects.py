"""Every command-line argument has a test of its effect.

An argument that no test sets can stop working without any test noticing: renamed on one
side of the pipeline wiring, dropped on its way into a config, read under another name.
So ``EFFECTS`` names, for every option of every command (``tools.cli_reference.COMMANDS``: the steps,
the pipeline and sweep entry points, the components' tools) and of every benchmark, a test that
sets it to a value other than its default and asserts what that changes (a value in an output
file, a shape, a schedule, an error, the work a benchmark times). A new argument comes
with such a test and its entry here: without an entry, test_every_argument_has_an_effect_entry
fails.

A test counts when it sets the option on that script's command line (itself or through a
fixture it uses), or sets the same value where the script hands it on unchanged: a pipeline
parameter or a task's ``Args`` (edited as in the UI) that the test shows reaching the step,
or the same-named field of what the step builds from it (``TrainConfig``, ``apply_peft``,
``preprocess``, ``generate_predictions``) when the test checks the output the step makes
with it. A test that passes the default value, or asserts nothing that depends on the value,
does not count.

An argument with no such test yet has the entry ``"MISSING: <what a test should set and
check>"``; test_no_argument_is_missing_an_effect_test lists them and stays red until each is
written. test_each_entry_names_a_test_that_sets_the_argument checks what can be checked
mechanically: the named test exists, and the option (``--lora-rank``) or its dest
(``lora_rank``) appears, as a whole name, in the test, in the fixtures it requests (and
theirs), or in the module-level constants and helper functions these use. That the test asserts the effect is
for the reviewer of the entry.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from functools import cache
from pathlib import Path

import pytest

from tools.cli_reference import COMMANDS, module_name, reference

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
MISSING = "MISSING:"
FUNCTION = (ast.FunctionDef, ast.AsyncFunctionDef)
# The scripts whose build_parser() the table covers: the project's commands, any step script not among them yet (a module
# of steps/ with a command line),
# and every benchmark with a command line (its options change what is measured).
ENTRY_POINTS = (
    *COMMANDS,
    *sorted(
        {str(p.relative_to(ROOT)) for p in (ROOT / "steps").glob("*.py") if "def build_parser(" in p.read_text(encoding="utf-8")} - set(COMMANDS)
    ),
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("*.py") if "ArgumentParser(" in p.read_text(encoding="utf-8")),
)

# Tests that several entries name.
INGESTED = "tests/test_ingest_step.py::test_validation_is_carved_from_train_with_the_seed_and_size_asked_for"
SKIPPED_ROWS = "tests/test_ingest_step.py::test_skipped_invalid_rows_are_recorded_and_counted"
PREPROCESSED = "tests/test_preprocess_step.py::test_an_ingest_task_id_is_read_before_a_splits_folder"
TRUNCATED = "tests/test_data.py::test_preprocess_truncates_and_tokenizes_sources_and_labels"
TRAINED_THEN_EVALUATED = "tests/test_steps.py::test_train_outputs_the_best_adapter_then_evaluate_uses_it"
RESUMED = "tests/test_steps.py::test_train_resumes_another_tasks_checkpoint_with_its_best_adapter"
ONE_STEP = "tests/test_training.py::test_an_optimizer_step_gets_the_clipped_gradient_of_the_mean_over_every_token_of_its_batch"
GROUPED = "tests/test_training.py::test_batches_are_grouped_by_length"
SCHEDULE = "tests/test_training.py::test_the_optimizer_steps_with_linear_warmup_then_linear_decay_and_the_weight_decay"
EARLY_STOPPED = "tests/test_training.py::test_early_stopping_stops_after_patience"
BEST_CHECKPOINT = "tests/test_training.py::test_the_best_checkpoint_holds_the_weights_of_the_best_evaluation"
DECODED = "tests/test_pipeline_local.py::test_the_evaluation_generates_with_the_trained_adapter_and_the_decoding_asked_for"
REGISTERED = "tests/test_pipeline_local.py::test_register_takes_the_best_of_several_candidates_by_the_metric"
AGENTS_CONTROLLER = "tests/test_agent_rerun.py::test_the_agents_controller_uses_the_launch_options"
DATA_PATHS = "tests/test_agent_rerun.py::test_data_paths_reach_agents_relative_to_the_repository"
UI_LISTS = "tests/test_agent_rerun.py::test_the_optimizer_reads_lists_edited_in_the_ui"
LOCAL_SWEEP = "tests/test_hpo.py::test_local_sweep_summary"
SERVER_OPTIMIZER = "tests/test_hpo_server.py::test_the_optimizer_is_built_with_the_sweeps_options_over_the_templates_arguments"
FOLLOWED = "tests/test_server_errors.py::test_a_controller_no_agent_takes_is_said_with_its_queue"
LOCAL_ANYWHERE = "tests/test_launch_checks.py::test_local_runs_offline_even_with_a_server_configured"
EVALUATE_FLAGS = "tests/test_steps.py::test_evaluate_samples_with_every_decoding_flag_and_cuts_inputs_and_references"
EVERY_TRAINING_OPTION = "tests/test_steps.py::test_the_train_step_hands_every_option_to_the_loop_and_the_seed_moves_only_the_training"
PIPELINE_PARAMETERS = "tests/test_agent_rerun.py::test_every_pipeline_parameter_reaches_every_step_it_sets"
RATED_TINY_PIPELINE = (
    "tests/test_human_eval_command.py::test_one_command_rates_the_tiny_pipelines_evaluation_with_two_raters_and_the_task_holds_the_verdict"
)
LABEL_STUDIO_ROUND_TRIP = "tests/test_human_eval_command.py::test_a_session_goes_to_label_studio_and_its_export_comes_back_into_the_same_statistics"
SESSION_OPTIONS = "tests/test_human_eval_command.py::test_a_session_continues_with_its_options_and_refuses_others"
EXPORTED = "tests/test_export.py::test_a_stock_runtime_generates_what_the_adapter_model_generates"
PIPELINE_EXPORT = "tests/test_export.py::test_the_pipeline_exports_its_registered_model_when_asked"
CLI_ANSWERS = "tests/test_generation.py::test_the_command_line_answers_as_each_option_asks"
SWEEP_CHOICES = "tests/test_hpo.py::test_the_sweeps_choices_are_its_trials_values"
SERVER_SWEEP = (
    "tests/test_hpo_server.py::test_a_server_sweep_runs_its_grid_on_the_queue_and_evaluates_and_registers_the_completed_trial_with_the_lowest_loss"
)


EFFECTS: dict[str, dict[str, str]] = {
    "steps/ingest.py": {
        "--train-tsv": INGESTED,
        "--test-tsv": INGESTED,
        "--dataset-id": "tests/test_ingest_step.py::test_the_hub_datasets_one_split_gives_the_published_test_size_and_drops_unusable_rows",
        "--validation-size": INGESTED,
        "--seed": INGESTED,
        "--skip-invalid-rows": SKIPPED_ROWS,
        "--local": LOCAL_ANYWHERE,
        "--output-dir": SKIPPED_ROWS,
    },
    "steps/preprocess.py": {
        "--ingest-task-id": PREPROCESSED,
        "--splits-dir": "tests/test_steps.py::test_preprocess_labels_are_the_output_column",
        "--model": PREPROCESSED,
        "--max-input-length": TRUNCATED,
        "--max-target-length": TRUNCATED,
        "--local": LOCAL_ANYWHERE,
        "--output-dir": PREPROCESSED,
    },
    "steps/train.py": {
        "--preprocess-task-id": "tests/test_steps.py::test_missing_artifact_is_named",
        "--data-dir": TRAINED_THEN_EVALUATED,
        "--model": "tests/test_train_step.py::test_data_tokenized_for_another_model_is_refused",
        "--lora-rank": TRAINED_THEN_EVALUATED,
        "--lora-alpha": ONE_STEP,
        "--lora-dropout": "tests/test_lora.py::test_same_weights_as_hf_peft_give_the_same_outputs",
        "--prompt-length": TRAINED_THEN_EVALUATED,
        "--batch-size": GROUPED,
        "--grad-accum-steps": ONE_STEP,
        "--learning-rate": EARLY_STOPPED,
        "--weight-decay": SCHEDULE,
        "--epochs": BEST_CHECKPOINT,
        "--max-steps": TRAINED_THEN_EVALUATED,
        "--warmup-ratio": SCHEDULE,
        "--gradient-checkpointing": "tests/test_training.py::test_gradient_checkpointing_recomputes_each_block_in_backward_and_changes_no_weight",
        "--precision": "tests/e2e/test_sweep_and_errors.py::test_flow6_bf16_on_an_agent_without_a_gpu_fails_the_task_with_that_reason",
        "--seed": EVERY_TRAINING_OPTION,
        "--group-by-length": GROUPED,
        "--eval-every": TRAINED_THEN_EVALUATED,
        "--best-metric": BEST_CHECKPOINT,
        "--early-stopping-patience": EARLY_STOPPED,
        "--generation-eval-samples": BEST_CHECKPOINT,
        "--nproc-per-node": "tests/test_distributed_steps.py::test_nproc_per_node_a_rank_killed_fails_the_run_in_one_sentence_and_resume_ends_bit_identical",
        "--nodes": "tests/e2e/test_ranks.py::test_flow9_two_ranks_on_one_agent_and_two_nodes_on_two_agents_train_the_same_adapters",
        "--join-timeout": "tests/test_distributed_steps.py::test_a_rank_that_cannot_join_fails_within_its_join_timeout_in_one_sentence",
        "--resume": RESUMED,
        "--resume-from-task-id": RESUMED,
        "--local": LOCAL_ANYWHERE,
        "--output-dir": TRAINED_THEN_EVALUATED,
    },
    "steps/evaluate.py": {
        "--train-task-id": DECODED,
        "--model-dir": "tests/test_steps.py::test_user_errors_are_one_line_without_traceback",
        "--ingest-task-id": "tests/test_pipeline_local.py::test_every_evaluation_scores_its_predictions_against_the_test_references",
        "--test-tsv": EVALUATE_FLAGS,
        "--max-samples": TRAINED_THEN_EVALUATED,
        "--batch-size": EVALUATE_FLAGS,
        "--max-input-length": EVALUATE_FLAGS,
        "--max-target-length": EVALUATE_FLAGS,
        "--compare-base": TRAINED_THEN_EVALUATED,
        "--seed": EVALUATE_FLAGS,
        "--decoding": DECODED,
        "--num-beams": "tests/test_steps.py::test_evaluate_flags_override_the_sampling_preset_with_a_beam_search",
        "--do-sample": EVALUATE_FLAGS,
        "--temperature": EVALUATE_FLAGS,
        "--top-k": EVALUATE_FLAGS,
        "--top-p": EVALUATE_FLAGS,
        "--max-new-tokens": EVALUATE_FLAGS,
        "--local": LOCAL_ANYWHERE,
        "--output-dir": TRAINED_THEN_EVALUATED,
    },
    "steps/register.py": {
        "--candidates": REGISTERED,
        "--metric": "tests/test_pipeline_local.py::test_register_picks_by_the_metric_it_is_given",
        "--model-name": "tests/test_server_options.py::test_register_names_the_model_and_leaves_it_a_draft_without_publish",
        "--publish": "tests/test_server_options.py::test_register_names_the_model_and_leaves_it_a_draft_without_publish",
        "--local": LOCAL_ANYWHERE,
        "--output-dir": REGISTERED,
    },
    "steps/rate.py": {
        "--evaluate-task-ids": RATED_TINY_PIPELINE,
        "--predictions": LABEL_STUDIO_ROUND_TRIP,
        "--raters": RATED_TINY_PIPELINE,
        "--overlap": SESSION_OPTIONS,
        "--items": LABEL_STUDIO_ROUND_TRIP,
        "--seed": SESSION_OPTIONS,
        "--session": SESSION_OPTIONS,
        "--host": RATED_TINY_PIPELINE,
        "--port": "tests/test_human_eval_browser.py::test_a_rater_votes_with_the_keyboard_through_a_server_kill_and_each_vote_is_stored_once",
        "--label-studio-export": LABEL_STUDIO_ROUND_TRIP,
        "--label-studio-import": LABEL_STUDIO_ROUND_TRIP,
        "--local": LOCAL_ANYWHERE,
        "--output-dir": RATED_TINY_PIPELINE,
    },
    "steps/export.py": {
        "--register-task-id": EXPORTED,
        "--model-dir": "tests/test_export.py::test_the_export_is_safetensors_with_a_tokenizer_that_prepends_the_prompt",
        "--max-input-length": EXPORTED,
        "--ctranslate2": EXPORTED,
        "--local": LOCAL_ANYWHERE,
        "--output-dir": EXPORTED,
    },
    "tools/generate.py": {
        "--model-dir": CLI_ANSWERS,
        "--batch-size": "tests/test_generation.py::test_the_command_line_generates_in_batches_of_batch_size",
        "--max-input-length": "tests/test_generation.py::test_the_command_line_cuts_inputs_where_the_model_was_trained_to_or_where_asked",
        "--decoding": CLI_ANSWERS,
        "--num-beams": CLI_ANSWERS,
        "--do-sample": CLI_ANSWERS,
        "--temperature": CLI_ANSWERS,
        "--top-k": CLI_ANSWERS,
        "--top-p": CLI_ANSWERS,
        "--max-new-tokens": CLI_ANSWERS,
    },
    "tools/serve.py": {
        **{
            option: "tests/test_openai_server.py::test_every_option_reaches_the_engine_the_app_or_uvicorn"
            for option in (
                "--model-dir",
                "--engine",
                "--model-name",
                "--host",
                "--port",
                "--device",
                "--compute-type",
                "--max-batch-size",
                "--max-wait-ms",
                "--max-queue",
                "--max-body-bytes",
                "--max-prompt-chars",
                "--max-prompts",
                "--max-tokens",
            )
        }
    },
    "tools/stats.py": {
        "--lora-rank": "tests/test_generation.py::test_stats_counts_the_adapters_of_the_rank_and_prompt_length_asked_for",
        "--prompt-length": "tests/test_generation.py::test_stats_counts_the_adapters_of_the_rank_and_prompt_length_asked_for",
    },
    "tools/text_tasks.py": {"--output-dir": "tests/test_text_tasks.py::test_the_command_writes_the_shipped_files_where_it_is_told"},
    "benchmarks/generation.py": {
        option: "tests/test_benchmarks.py::test_generation_benchmark_times_the_work_its_options_ask_for"
        for option in ("--size", "--texts", "--max-new-tokens", "--batch-size", "--num-beams", "--single-texts", "--dtype")
    },
    "benchmarks/serving.py": {
        option: "tests/test_benchmarks.py::test_serving_benchmark_times_each_configuration_in_turns_on_the_work_its_options_ask_for"
        for option in ("--size", "--texts", "--single-texts", "--max-new-tokens", "--repeats")
    },
    "benchmarks/openai_server.py": {
        option: "tests/test_benchmarks.py::test_server_benchmark_loads_both_servers_in_turns_with_the_clients_and_requests_asked_for"
        for option in ("--size", "--model-dir", "--compute-type", "--clients", "--requests", "--max-tokens", "--repeats")
    },
    "benchmarks/distributed.py": {
        option: "tests/test_benchmarks.py::test_distributed_benchmark_trains_the_shape_and_work_its_options_ask_for"
        for option in ("--size", "--ranks", "--steps", "--batch-size", "--input-length", "--target-length")
    },
    "benchmarks/train_step.py": {
        option: "tests/test_benchmarks.py::test_train_step_benchmark_times_the_variants_its_options_ask_for"
        for option in (
            "--size",
            "--batch-size",
            "--input-length",
            "--target-length",
            "--lora-rank",
            "--lora-alpha",
            "--lora-dropout",
            "--prompt-length",
            "--precision",
            "--checkpointing",
            "--warmup",
            "--rounds",
            "--peak-tflops",
        )
    },
    "benchmarks/pipeline.py": {"--output-dir": "tests/test_benchmarks.py::test_the_pipeline_benchmark_reads_the_run_it_made_in_output_dir"},
    "benchmarks/tiny_learns.py": {
        "--work-dir": "tests/test_benchmarks.py::test_the_tiny_learns_benchmark_clones_and_caches_in_work_dir_and_recomputes_its_ratios"
    },
    "benchmarks/first_run_on_agents.py": {
        "--work-dir": "tests/test_benchmarks.py::test_the_first_run_benchmark_keeps_its_server_and_logs_in_work_dir"
    },
    "benchmarks/mutation.py": {
        option: "tests/test_benchmarks.py::test_make_mutation_mutates_the_module_against_the_tests_given_in_a_copy"
        for option in ("--tests", "--max-children")
    },
    "pipelines/run_pipeline.py": {
        "--preset": "tests/e2e/test_pipeline_flows.py::test_flow1_every_step_completes_on_its_queue_at_the_launch_commit",
        "--local": LOCAL_ANYWHERE,
        "--output-dir": "tests/test_report.py::test_the_report_is_where_the_summary_says",
        "--model": PIPELINE_PARAMETERS,
        "--train-tsv": DATA_PATHS,
        "--test-tsv": DATA_PATHS,
        "--validation-size": PIPELINE_PARAMETERS,
        "--max-input-length": PIPELINE_PARAMETERS,
        "--max-target-length": PIPELINE_PARAMETERS,
        "--lora-rank": PIPELINE_PARAMETERS,
        "--lora-alpha": PIPELINE_PARAMETERS,
        "--lora-dropout": PIPELINE_PARAMETERS,
        "--prompt-length": "tests/test_agent_rerun.py::test_a_ui_edit_of_the_controller_reaches_the_steps",
        "--batch-size": PIPELINE_PARAMETERS,
        "--grad-accum-steps": PIPELINE_PARAMETERS,
        "--learning-rate": PIPELINE_PARAMETERS,
        "--warmup-ratio": PIPELINE_PARAMETERS,
        "--weight-decay": PIPELINE_PARAMETERS,
        "--epochs": "tests/test_pipeline_local.py::test_the_session_run_trained_the_one_epoch_it_was_given",
        "--max-steps": PIPELINE_PARAMETERS,
        "--gradient-checkpointing": PIPELINE_PARAMETERS,
        "--eval-every": PIPELINE_PARAMETERS,
        "--early-stopping-patience": PIPELINE_PARAMETERS,
        "--nproc-per-node": PIPELINE_PARAMETERS,
        "--max-new-tokens": "tests/e2e/test_pipeline_flows.py::"
        "test_flow2_a_new_commit_reruns_every_step_with_its_requirements_and_a_changed_parameter_only_what_it_affects",
        "--max-test-samples": "tests/test_pipeline_local.py::test_steps_received_upstream_task_ids_as_on_a_server",
        "--seed": PIPELINE_PARAMETERS,
        "--compare-base": "tests/test_pipeline_wiring.py::test_compare_base_is_a_pipeline_parameter_the_evaluate_step_receives",
        "--precision": PIPELINE_PARAMETERS,
        "--decoding": DECODED,
        "--metric": PIPELINE_PARAMETERS,
        "--export": PIPELINE_EXPORT,
        "--export-ctranslate2": PIPELINE_EXPORT,
        "--project": AGENTS_CONTROLLER,
        "--pipeline-name": AGENTS_CONTROLLER,
        "--cpu-queue": AGENTS_CONTROLLER,
        "--gpu-queue": AGENTS_CONTROLLER,
        "--controller-queue": "tests/test_agent_rerun.py::test_the_launch_is_enqueued_on_the_controller_queue_with_every_option_stored",
        "--controller-here": "tests/test_agent_rerun.py::test_the_controller_can_run_in_the_launching_shell",
        "--wait-for-start": FOLLOWED,
        "--allow-local-repository": "tests/test_server_options.py::test_a_launch_from_a_local_path_remote_needs_allow_local_repository",
    },
    "pipelines/run_hpo.py": {
        "--local": LOCAL_ANYWHERE,
        "--preset": "tests/test_run_hpo.py::test_local_only_sweep_options_are_refused_on_a_server_in_one_sentence",
        "--output-dir": LOCAL_SWEEP,
        "--lora-ranks": SWEEP_CHOICES,
        "--prompt-lengths": UI_LISTS,
        "--learning-rates": SERVER_OPTIMIZER,
        "--warmup-ratios": SERVER_OPTIMIZER,
        "--trials": LOCAL_SWEEP,
        "--seed": SERVER_OPTIMIZER,
        "--epochs": SWEEP_CHOICES,
        "--max-steps": SERVER_OPTIMIZER,
        "--eval-every": LOCAL_SWEEP,
        "--nproc-per-node": SERVER_OPTIMIZER,
        "--metric": SERVER_SWEEP,
        "--noise-seeds": "tests/test_hpo.py::test_the_seed_to_seed_noise_is_the_best_pair_trained_with_other_seeds",
        "--preprocess-task-id": "tests/test_hpo.py::test_a_sweep_on_a_given_preprocess_task_trains_on_its_data_and_evaluates_on_its_ingest",
        "--template-task-id": "tests/e2e/test_sweep_and_errors.py::test_flow6_a_wrong_template_task_id_is_one_sentence_and_nothing_on_the_server",
        "--project": "tests/test_server_options.py::test_the_sweep_checks_its_cpu_queue_and_creates_its_optimizer_in_its_project",
        "--queue": SERVER_OPTIMIZER,
        "--cpu-queue": SERVER_SWEEP,
        "--concurrent": SERVER_OPTIMIZER,
        "--wait-for-start": FOLLOWED,
        "--trial-time-limit": SERVER_OPTIMIZER,
        "--time-limit": SERVER_OPTIMIZER,
        "--run-on": UI_LISTS,
        "--allow-local-repository": "tests/test_server_options.py::test_a_sweep_enqueued_from_a_local_path_remote_needs_allow_local_repository",
    },
}


@cache
def parser_options(script: str) -> dict[str, str]:
    """Option -> dest of every option of ``script``'s ``build_parser()``, ``--help`` aside."""
    if script.startswith("benchmarks/"):  # scripts that import their neighbours (common) by name, as tests/test_benchmarks.py does
        sys.path.insert(0, str(ROOT / "benchmarks"))
        module = importlib.import_module(Path(script).stem)
    else:
        module = importlib.import_module(module_name(script))
    return {action.option_strings[0]: action.dest for action in module.build_parser()._actions if action.option_strings and action.dest != "help"}


def entries(*, missing: bool) -> list[tuple[str, str, str]]:
    """(script, option, value) of the table's MISSING entries, or of the others."""
    return [(script, option, value) for script, table in EFFECTS.items() for option, value in table.items() if value.startswith(MISSING) == missing]


@cache
def parsed(path: Path) -> tuple[list[str], ast.Module]:
    source = path.read_text(encoding="utf-8")
    return source.splitlines(), ast.parse(source)


def source_of(path: Path, node: ast.stmt) -> str:
    """The lines of a statement, a function's decorators (its parametrize lists) included."""
    lines, _ = parsed(path)
    first = min([node.lineno, *(decorator.lineno for decorator in getattr(node, "decorator_list", []))])
    return "\n".join(lines[first - 1 : node.end_lineno])


def find_function(path: Path, qualified_name: str) -> ast.stmt | None:
    """The top-level function, or method of a top-level class (``Class::method``), of that name."""
    _, tree = parsed(path)
    body = tree.body
    *classes, name = qualified_name.split("::")
    for class_name in classes:
        body = next((node.body for node in body if isinstance(node, ast.ClassDef) and node.name == class_name), [])
    return next((node for node in body if isinstance(node, FUNCTION) and node.name == name), None)


def is_fixture(node: ast.stmt) -> bool:
    return any(ast.unparse(d.func if isinstance(d, ast.Call) else d).split(".")[-1] == "fixture" for d in node.decorator_list)


def fixture_modules(path: Path) -> list[Path]:
    """Where pytest finds the fixtures of a test module: the module itself, then every conftest.py up to tests/."""
    conftests = [parent / "conftest.py" for parent in path.parents if parent == TESTS or TESTS in parent.parents]
    return [path, *(conftest for conftest in conftests if conftest.is_file() and conftest != path)]


def requested_fixtures(path: Path, function: ast.stmt) -> list[tuple[Path, ast.stmt]]:
    """The fixtures among ``function``'s arguments, each with the module that defines it."""
    found = []
    for argument in function.args.args:
        for module in fixture_modules(path):
            node = find_function(module, argument.arg)
            if node is not None and is_fixture(node):
                found.append((module, node))
                break
    return found


def assigned_names(statement: ast.stmt) -> set[str]:
    return {node.id for node in ast.walk(statement) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}


def definitions_used(path: Path, function: ast.stmt) -> list[str]:
    """The module-level assignments and functions of ``path`` whose names ``function`` uses (command lines such as
    DIVERGING_TRAINING, helpers that run a step with the options they are given)."""
    _, tree = parsed(path)
    used = {node.id for node in ast.walk(function) if isinstance(node, ast.Name)}
    return [
        source_of(path, node)
        for node in tree.body
        if (isinstance(node, (ast.Assign, ast.AnnAssign)) and assigned_names(node) & used) or (isinstance(node, FUNCTION) and node.name in used)
    ]


def setup_text(path: Path, test: ast.stmt) -> str:
    """The test's source, the fixtures it requests and theirs, and the module constants and helpers these use."""
    functions = [(path, test), *requested_fixtures(path, test)]
    functions += [fixture for module, node in functions[1:] for fixture in requested_fixtures(module, node)]
    return "\n".join(text for module, node in functions for text in (source_of(module, node), *definitions_used(module, node)))


def names_in(text: str, *words: str) -> bool:
    """Whether one of ``words`` occurs in ``text`` as a whole name (``--model`` is not in ``--model-dir``)."""
    return any(re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) for word in words)


@pytest.mark.parametrize("script", sorted({*ENTRY_POINTS, *EFFECTS}))
def test_every_argument_has_an_effect_entry(script):
    options = set(parser_options(script)) if script in ENTRY_POINTS else set()
    table = set(EFFECTS.get(script, {}))
    assert options == table, (
        f"{script}: options without an EFFECTS entry (name the test of each one's effect, or 'MISSING: ...'): "
        f"{sorted(options - table)}; entries of no option (stale): {sorted(table - options)}"
    )


@pytest.mark.parametrize("script, option, reference", [pytest.param(*entry, id=" ".join(entry[:2])) for entry in entries(missing=False)])
def test_each_entry_names_a_test_that_sets_the_argument(script, option, reference):
    entry = f"EFFECTS[{script!r}][{option!r}] = {reference!r}"
    assert option in parser_options(script), f"{entry}: {script} has no option {option}"
    path_text, _, qualified_name = reference.partition("::")
    path = ROOT / path_text
    assert qualified_name and path.is_file(), f"{entry}: not 'tests/<file>.py::<test function>' of an existing file"
    test = find_function(path, qualified_name)
    assert test is not None, f"{entry}: {path_text} defines no {qualified_name}"
    dest = parser_options(script)[option]
    assert names_in(setup_text(path, test), option, dest), (
        f"{entry}: neither {option} nor {dest} appears in the test, the fixtures it requests or the module constants they use"
    )


def test_no_argument_is_missing_an_effect_test():
    missing = [f"{script} {option}: {value.removeprefix(MISSING).strip()}" for script, option, value in entries(missing=True)]
    assert not missing, f"{len(missing)} arguments have no test of their effect yet:\n" + "\n".join(missing)


def test_the_command_line_reference_is_current():
    """docs/cli.md is what the parsers say now: an option's default, values or help changed without it fails here."""
    written = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert written == reference(), "docs/cli.md is out of date: python -m tools.cli_reference > docs/cli.md"
