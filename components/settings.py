"""The library's defaults (the published configuration of the reference run), and how a setting is declared.

The library's functions and dataclasses default to these values; the steps' options
(``steps/config.py``) declare them as their defaults, so a value is changed once. The
pipeline's presets (``pipelines/definition.py``) override them for a run.

A configurable thing's settings are the fields of a dataclass, each made with :func:`setting`: its
default and type are the field's, its help and what else it is (a pipeline parameter, a sweepable
hyperparameter, a ``--help`` section) its metadata. ``cli.options.add_settings`` turns such a
dataclass into command-line options; the pipeline's parameters, their routing to the steps and the
sweep's space are read from the same fields (``pipelines/definition.py``).
"""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# What an agent installs for every task of this project: the runtime packages (no test-only ones, no local builds).
REQUIREMENTS_FILE = PROJECT_ROOT / "requirements.txt"
BASE_MODEL = "ai-forever/ruT5-large"
DATASET_ID = "lksy/ru_instruct_gpt4"
SAMPLE_DATA_DIR = PROJECT_ROOT / "data" / "sample"
CLEARML_PROJECT = "ruT5 LoRA+Prompt"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # auto: bf16 on GPUs that support it, fp16 on older ones, fp32 on CPU
SELECTION_METRIC = "chrf"  # picks the model to register: character n-grams credit Russian inflections
DECODING = "greedy"

# ai-forever/ruT5-large's published config.json (T5 v1.0 layout; note eos_token_id 2).
RUT5_LARGE_CONFIG = dict(
    d_model=1024,
    d_ff=4096,
    d_kv=64,
    num_layers=24,
    num_decoder_layers=24,
    num_heads=16,
    vocab_size=32128,
    feed_forward_proj="relu",
    relative_attention_num_buckets=32,
    pad_token_id=0,
    decoder_start_token_id=0,
    eos_token_id=2,
    tie_word_embeddings=True,
)


@dataclass(frozen=True)
class AdapterSettings:
    """LoRA on the attention q and v projections plus an encoder prompt."""

    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    prompt_length: int = 20
    lora_targets: tuple[str, ...] = ("q", "v")

    def to_dict(self) -> dict:
        return {**asdict(self), "lora_targets": list(self.lora_targets)}

    @classmethod
    def from_dict(cls, values: dict) -> AdapterSettings:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        if "lora_targets" in kwargs:
            kwargs["lora_targets"] = tuple(kwargs["lora_targets"])
        return cls(**kwargs)


@dataclass(frozen=True)
class TokenizationSettings:
    max_input_length: int = 100
    max_target_length: int = 200


@dataclass(frozen=True)
class TrainingSettings:
    """Batch 8 x accumulation 4 = 32 examples per optimizer step, as published."""

    batch_size: int = 8
    grad_accum_steps: int = 4
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    epochs: float = 10.0
    warmup_ratio: float = 0.0
    gradient_checkpointing: bool = True
    seed: int = 42


TINY_MODEL = "tiny"  # resolved by components.modeling to the tiny model built from the sample data


@dataclass(frozen=True)
class Setting:
    """What a configuration field declares beyond its type and default."""

    help: str
    pipeline: bool | str = False  # a pipeline parameter: True under the field's own name, or the parameter's name
    sweep: str | None = None  # sweepable: the values a sweep tries unless told others ("" : not swept unless asked)
    group: str | None = None  # the section of --help it is listed in (None: the first, "options")
    choices: tuple | None = None
    switch: bool = False  # a flag that is on when given (argparse's store_true) rather than an option with a value
    bare_means_true: bool = False  # a boolean option given without a value means true


SETTING = "setting"  # the metadata key of a field's Setting


def setting(default: Any, help: str, **declared) -> Any:
    """A configuration field: ``lora_rank: int = setting(8, "LoRA rank ...", pipeline=True, sweep="4,8,16,32")``."""
    return field(default=default, metadata={SETTING: Setting(help, **declared)})


def declared(config: type) -> list[tuple[str, type, Any, Setting]]:
    """Name, value type (``int | None`` -> ``int``), default and Setting of each field of a configuration dataclass."""
    hints = typing.get_type_hints(config)
    return [(f.name, value_type(hints[f.name]), f.default, f.metadata[SETTING]) for f in fields(config)]


def value_type(hint) -> type:
    """The type of the values an option parses: ``int | None`` and ``Optional[int]`` -> ``int``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        [hint] = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return hint
