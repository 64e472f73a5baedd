"""Base model loading, the LoRA + prompt model, parameter counts and adapter files.

An adapter directory holds only what was trained, never the frozen base::

    adapter_config.json     base model (hub id or local dir), AdapterSettings and the input length
                            trained with (``max_input_length``: evaluation and the export cut there)
    adapter.safetensors     lora_A / lora_B of every wrapped layer, and the prompt
    tokenizer files         so the directory alone is enough to tokenize (required: loading
                            never falls back to the base model's tokenizer)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, T5Config, T5ForConditionalGeneration

from components.errors import UserError
from components.lora import LoRALayer, inject_lora, merge_lora
from components.prompt_tuning import attach_prompt
from components.settings import RUT5_LARGE_CONFIG, TINY_MODEL, AdapterSettings, TokenizationSettings

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


class ModelLoadError(UserError, RuntimeError):
    """A base model or adapter that cannot be loaded; the message names the setting."""


def rut5_large_config() -> T5Config:
    return T5Config(**RUT5_LARGE_CONFIG)


def resolve_model_path(name_or_path: str) -> str:
    """``tiny`` stands for the tiny model built from the sample data; anything else is a hub id or a directory."""
    if name_or_path == TINY_MODEL:
        from components.tiny import build_tiny_model

        return str(build_tiny_model())
    return name_or_path


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    path = resolve_model_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise ModelLoadError(_load_failure(path, "tokenizer", error)) from None


def load_base_model(name_or_path: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a seq2seq base model from a hub id or a ``save_pretrained`` directory."""
    path = resolve_model_path(name_or_path)
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(path, dtype=dtype, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise ModelLoadError(_load_failure(path, "model", error)) from None


def _load_failure(path: str, what: str, error: Exception) -> str:
    if Path(path).exists():
        return f"Cannot load the {what} from the directory {path} ({error}); set --model to a directory written by save_pretrained."
    return (
        f"Cannot load the {what} {path!r}: it is not a local directory and the Hugging Face Hub did not provide it "
        f"({type(error).__name__}); set --model to a hub id you can reach or a local model directory."
    )


def apply_peft(
    model: PreTrainedModel,
    lora_rank: int = AdapterSettings.lora_rank,
    lora_alpha: float = AdapterSettings.lora_alpha,
    lora_dropout: float = AdapterSettings.lora_dropout,
    prompt_length: int = AdapterSettings.prompt_length,
    lora_targets: tuple[str, ...] = AdapterSettings.lora_targets,
) -> PreTrainedModel:
    """Freeze the base and add LoRA to every ``q``/``v`` linear plus an encoder prompt.

    In a T5 that covers encoder self-attention, decoder self-attention and decoder
    cross-attention (144 layers in ruT5-large). Only adapter parameters train.
    """
    model.requires_grad_(False)
    inject_lora(model, lora_targets, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout)
    if prompt_length:
        attach_prompt(model, prompt_length)
    return model


def apply_adapter_settings(model: PreTrainedModel, settings: AdapterSettings) -> PreTrainedModel:
    return apply_peft(model, settings.lora_rank, settings.lora_alpha, settings.lora_dropout, settings.prompt_length, settings.lora_targets)


def parameter_stats(model: nn.Module) -> dict:
    """Total and trainable parameter counts (shared tensors counted once)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "trainable_percent": 100.0 * trainable / total}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors only: every LoRA A/B and the prompt."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def adapter_weights_bytes(model: nn.Module) -> bytes:
    """The trained tensors alone, serialized as safetensors (the file inside adapters and checkpoints)."""
    if any(layer.merged for layer in model.modules() if isinstance(layer, LoRALayer)):
        raise ValueError("Unmerge the LoRA layers before saving the adapter.")
    tensors = {name: t.to("cpu").contiguous() for name, t in adapter_state_dict(model).items()}
    return save(tensors, metadata={"format": "pt"})


def adapter_digest(model_dir: str | Path) -> str:
    """The SHA-256 of the adapter's weights file: what an evaluation records, so that its figures are never shown for other weights."""
    return hashlib.sha256((Path(model_dir) / ADAPTER_WEIGHTS).read_bytes()).hexdigest()


def save_adapter_weights(model: nn.Module, path: str | Path) -> None:
    Path(path).write_bytes(adapter_weights_bytes(model))


def save_adapter(
    model: nn.Module,
    directory: str | Path,
    base_model: str,
    settings: AdapterSettings,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_input_length: int = TokenizationSettings.max_input_length,
) -> Path:
    """Write the adapter folder; ``max_input_length`` is the input length the model was trained with."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_adapter_weights(model, directory / ADAPTER_WEIGHTS)
    config = {"base_model": base_model, **settings.to_dict(), "max_input_length": max_input_length}
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(directory)
    return directory


def load_adapter_weights(model: nn.Module, weights_path: str | Path) -> None:
    """Copy saved adapter tensors into a model built with the same AdapterSettings."""
    try:
        saved = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(
            f"{weights_path} is not a readable safetensors file ({error}); copy the folder again from the train or register step."
        ) from None
    copy_adapter_tensors(model, saved, weights_path)


def copy_adapter_tensors(model: nn.Module, saved: dict[str, torch.Tensor], weights_path: str | Path) -> None:
    """Copy adapter tensors (read from ``weights_path``, named in errors) into a model built with the same AdapterSettings."""
    expected = adapter_state_dict(model)
    missing, unexpected = expected.keys() - saved.keys(), saved.keys() - expected.keys()
    if missing or unexpected:
        raise ModelLoadError(
            f"{weights_path} does not fit the model: {len(missing)} missing and {len(unexpected)} unexpected tensors "
            f"(e.g. {sorted(missing or unexpected)[0]}); check lora_rank, prompt_length and the base model in {ADAPTER_CONFIG}."
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in saved.items():
            if not torch.isfinite(tensor).all():
                raise ModelLoadError(
                    f"{weights_path}: {name} holds non-finite values (NaN or inf); the training diverged, so evaluate another checkpoint."
                )
            if params[name].shape != tensor.shape:
                raise ModelLoadError(
                    f"{weights_path}: {name} has shape {tuple(tensor.shape)}, the model expects {tuple(params[name].shape)}: "
                    f"the adapter was not trained on the base model its {ADAPTER_CONFIG} names."
                )
            params[name].copy_(tensor)


def read_adapter_config(model_dir: str | Path) -> tuple[str, AdapterSettings]:
    path = Path(model_dir) / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if (Path(model_dir) / "config.json").is_file():
            raise ModelLoadError(
                f"{model_dir} is a plain model folder (config.json, no {ADAPTER_CONFIG}), such as the export step "
                "writes: load it with AutoModelForSeq2SeqLM, or give the adapter folder of the train or register step."
            ) from None
        raise ModelLoadError(f"{path} not found; --model-dir must be a directory written by the train or register step.") from None
    return config["base_model"], AdapterSettings.from_dict(config)


def input_length_for(model_dir: str | Path, override: int | None = None) -> int:
    """``override``, or else the input length the adapter in ``model_dir`` was trained with (recorded by :func:`save_adapter`)."""
    if override is not None:
        return override
    read_adapter_config(model_dir)  # a missing or plain folder: its own sentence
    config = json.loads((Path(model_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if "max_input_length" not in config:
        raise ModelLoadError(
            f"{Path(model_dir) / ADAPTER_CONFIG} records no max_input_length (the adapter was saved before it was recorded): "
            "give --max-input-length, the preprocess step's value it was trained with."
        )
    return int(config["max_input_length"])


def load_finetuned(model_dir: str | Path, *, merge: bool = True, dtype: torch.dtype | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Base model + adapter from a directory written by :func:`save_adapter`, ready to generate.

    With ``merge`` the LoRA updates are folded into the base weights (same outputs, faster).
    """
    base_model, settings = read_adapter_config(model_dir)
    tokenizer = _tokenizer_of(model_dir)
    model = apply_adapter_settings(load_base_model(base_model, dtype=dtype), settings)
    load_adapter_weights(model, Path(model_dir) / ADAPTER_WEIGHTS)
    if merge:
        merge_lora(model)
    model.eval()
    return model, tokenizer


def load_untuned(model_dir: str | Path, *, dtype: torch.dtype | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model of an adapter directory with the adapters as training starts them: the untuned baseline.

    Same shapes as :func:`load_finetuned` (same prompt length, so the same inputs), but LoRA's
    ``B`` is zero (every wrapped layer computes exactly the base layer) and the prompt holds its
    initial vectors: they are drawn with a fixed seed from the base's own embeddings
    (:class:`~components.prompt_tuning.PromptTuningEmbedding`), so they are exactly the ones
    the train step started from.
    """
    base_model, settings = read_adapter_config(model_dir)
    tokenizer = _tokenizer_of(model_dir)
    return apply_adapter_settings(load_base_model(base_model, dtype=dtype), settings).eval(), tokenizer


def _tokenizer_of(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside the adapter; never the base model's in its place (it may not be the one trained with)."""
    if not (Path(model_dir) / TOKENIZER_CONFIG).exists():
        raise ModelLoadError(
            f"{Path(model_dir) / TOKENIZER_CONFIG} not found: a model directory holds its tokenizer, "
            "so give the whole folder the train or register step wrote."
        )
    return load_tokenizer(str(model_dir))


def rut5_large_on_meta(settings: AdapterSettings = AdapterSettings()) -> PreTrainedModel:
    """The ruT5-large architecture with adapters, on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        model = T5ForConditionalGeneration(rut5_large_config())
    return apply_adapter_settings(model, settings)
