"""The library's defaults: the published configuration of the reference run.

The library's functions and dataclasses default to these values; the steps' options
(``steps/config.py``) declare them as their defaults, so a value is changed once. The
pipeline's presets (``pipelines/definition.py``) override them for a run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

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
