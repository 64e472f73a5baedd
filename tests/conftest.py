"""Shared fixtures: small T5 models built locally (no hub access anywhere in the suite)."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent
# The product's packages, one per layer (tests/test_layers.py says what each may import).
PRODUCT_PACKAGES = ("components", "cli", "clearml_adapter", "steps", "pipelines", "tools")
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RUT5_TINY_CACHE", str(ROOT / ".cache" / "tiny"))
NETWORK_GUARD = ROOT / "tests" / "network_guard"
# A machine whose locale encoding is not UTF-8 (ASCII here: the C locale, with Python's UTF-8 coercion and mode off):
# a file the product opens without encoding="utf-8" fails on Russian text there.
ASCII_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


def small_t5_config(**overrides) -> T5Config:
    """A T5 v1.0-shaped config small enough for exact comparisons in milliseconds."""
    values = dict(
        vocab_size=64,
        d_model=32,
        d_ff=64,
        d_kv=8,
        num_heads=4,
        num_layers=2,
        num_decoder_layers=3,
        feed_forward_proj="relu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5Config(**{**values, **overrides})


@pytest.fixture
def small_t5() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    return T5ForConditionalGeneration(small_t5_config()).eval()


@pytest.fixture
def one_thread():
    """Steps compute the tiny model on one thread (use_cpu_threads_for): a test recomputing their figures does the same
    (the same reductions in the same order), so that generated tokens and sampled draws can be compared exactly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from components.tiny import build_tiny_model

    return build_tiny_model()


TINY_EXPORT_PROMPT = 4  # prompt tokens of the tiny export
TINY_EXPORT_MAX_TOKENS = 12  # the input length the tiny export's tokenizer truncates at, its prompt tokens included


@pytest.fixture(scope="session")
def tiny_export(tiny_model_dir, tmp_path_factory) -> Path:
    """A random adapter on the tiny model exported as the export step does (components/export/plain_checkpoint.py):
    prompt tokens past the vocabulary, suppressed in generation, inputs cut at ``TINY_EXPORT_MAX_TOKENS`` tokens, and a model card."""
    from components.decoding import Decoding
    from components.export.plain_checkpoint import export_plain_checkpoint
    from components.settings import AdapterSettings

    folder = tmp_path_factory.mktemp("tiny-export")
    adapter = random_adapter(tiny_model_dir, folder / "adapter", AdapterSettings(prompt_length=TINY_EXPORT_PROMPT))
    decoding = {**asdict(Decoding()), "description": Decoding().describe()}
    export_plain_checkpoint(adapter, folder / "model", decoding=decoding, max_input_length=TINY_EXPORT_MAX_TOKENS - TINY_EXPORT_PROMPT)
    (folder / "model" / "README.md").write_text("---\nlicense: mit\n---\n# Модель\n", encoding="utf-8")
    return folder / "model"


def random_adapter(base: Path, folder: Path, settings) -> Path:
    """An adapter folder as the train step writes it, for ``settings`` (AdapterSettings), with random (non-zero) LoRA B and prompt tensors."""
    from components.modeling import apply_adapter_settings, load_base_model, load_tokenizer, save_adapter

    model = apply_adapter_settings(load_base_model(str(base)), settings)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return save_adapter(model, folder, str(base), settings, load_tokenizer(str(base)))


@pytest.fixture
def unconfigured_sdk(monkeypatch, tmp_path) -> Path:
    """This process as a machine with no ClearML configuration, for tests that call the SDK here: no ClearML variables,
    HOME in ``tmp_path``, and ``CLEARML_CONFIG_FILE`` naming ``tmp_path/clearml.conf`` (absent until a test writes it),
    so the developer's own ``~/clearml.conf`` is never read. The SDK's configuration starts unloaded and what the test
    loads (``prepare_clearml`` does) is dropped afterwards: the tests forked later from this process inherit none of it.
    Returns that file's path."""
    from clearml.config import ConfigSDKWrapper, ConfigWrapper

    monkeypatch.setattr(ConfigWrapper, "_config", None)
    monkeypatch.setattr(ConfigSDKWrapper, "_config_sdk", None)
    for name in list(os.environ):
        if name.startswith(("CLEARML_", "TRAINS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "clearml.conf"))
    return tmp_path / "clearml.conf"


@pytest.fixture(scope="session")
def clearml_home(tmp_path_factory) -> dict[str, str]:
    """Environment for step subprocesses: no ClearML configuration at all, sessions in a temp dir, and no network.

    The Hugging Face libraries are told they are offline, and tests/network_guard blocks
    (and logs to ``NETWORK_GUARD_LOG``) every connection that would leave this machine.
    """
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))}
    python_path = os.pathsep.join(filter(None, [str(NETWORK_GUARD), env.get("PYTHONPATH")]))
    env.update(
        HOME=str(home),
        CLEARML_CACHE_DIR=str(home / "clearml-cache"),
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=python_path,
        NETWORK_GUARD_LOG=str(home / "network-guard.log"),
    )
    return env


def run_script(env: dict, *command: str, check: bool = True, timeout: int = 600):
    """Run a project script the way a user does, from the repository root."""
    import subprocess

    completed = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and completed.returncode != 0:
        raise AssertionError(f"{command} exited {completed.returncode}:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    return completed


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model_dir, clearml_home, tmp_path_factory) -> Path:
    """One local end-to-end run of the tiny pipeline, shared by the tests that inspect it.

    It evaluates with beam search, not the default greedy decoding, so that the tests can
    tell whether the pipeline's ``--decoding`` reached the evaluate step (on the first 16
    test rows: generation dominates the evaluate step's time), and it ends with the export
    step, which only runs when asked.
    """
    output_dir = tmp_path_factory.mktemp("pipeline")
    run_script(
        clearml_home,
        "pipelines/run_pipeline.py",
        "--local",
        "--preset",
        "tiny",
        "--output-dir",
        str(output_dir),
        "--epochs",
        "1",
        "--decoding",
        "beam",
        "--max-test-samples",
        "16",
        "--export",
        "true",
        "--export-ctranslate2",
        "true",
    )
    return output_dir


# The longest units besides the end-to-end flows, longest first (pytest --durations=0 summed by unit, two workers):
# about 180 (plus the tiny model's build on a fresh clone), 115, 115, 80, 55, 45, 40, 35, 35, 30, 30, 30, 30, 20 and 15 s.
LONG_UNITS = (
    "tiny_pipeline",
    "tests/test_server_errors.py",
    "tests/test_distributed_steps.py",
    "tests/test_hpo.py",
    "tests/test_hpo_server.py",
    "tests/test_server_options.py",
    "tests/test_train_step.py",
    "tests/test_register_step.py",
    "tests/test_export_step.py",
    "tests/test_agent_rerun.py",
    "tests/test_launch_checks.py",
    "tests/test_steps.py",
    "tests/test_rate_step.py",
    "tests/test_tracking.py",
    "tests/test_ingest_step.py",
)


# A test that uses one of these runs the project's scripts in subprocesses (seconds to minutes each): marked runs_steps.
STEP_FIXTURES = {"clearml_home", "tiny_pipeline"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    """Marks the tests that run the project's scripts (``runs_steps``), and forms the work units of ``make test``'s pytest-xdist workers (``--dist loadgroup``).

    The end-to-end flows share one server, its agents and one pipeline run: one unit, which a
    worker runs while the others run the rest (the flows spend much of their time waiting on
    agents). The tests of the session's tiny pipeline run are one unit, so that the run is made
    once; every other file is a unit with its module fixtures.

    Units are handed out in this order (``make test`` passes ``--no-loadscope-reorder``; xdist's
    default orders them by their number of tests, which put the flows behind minutes of other
    units). The end-to-end unit, the longest by far, comes first; then the long units, so the other
    workers run them while the flows run; the short ones last. A worker takes its next unit when
    its current one has two tests left, so the unit after the flows waits behind their last two:
    it had better be short.
    """
    for item in items:
        if STEP_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.runs_steps)
        if item.get_closest_marker("xdist_group"):
            continue
        if item.nodeid.startswith("tests/e2e/"):
            group = "e2e"
        elif "tiny_pipeline" in item.fixturenames:
            group = "tiny_pipeline"
        else:
            group = item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
    order = {"e2e": -1, **{group: rank for rank, group in enumerate(LONG_UNITS)}}
    items.sort(key=lambda item: order.get(item.get_closest_marker("xdist_group").args[0], len(LONG_UNITS)))  # stable
