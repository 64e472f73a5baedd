"""A fine-tuned adapter folder as a plain Hugging Face checkpoint: ``save_pretrained`` files that
``AutoTokenizer`` and ``AutoModelForSeq2SeqLM`` load without this project.

- **LoRA** folds into the weights: each ``q``/``v`` linear holds ``W0 + (alpha / r) B A`` (``merge_lora``) and
  the wrappers are replaced by those plain linears. Every weight is checked finite before anything is written.
- **The prompt** becomes ``P`` vocabulary rows: ids ``V .. V + P - 1`` past the model's ``vocab_size`` ``V``
  (the rows the original model has, padded ones included, are left as they are), holding the prompt's
  vectors. The tokenizer's template post-processor puts those ids before every input
  (``<prompt_*> $A </s>``). T5 feeds the encoder plain embedding rows, so the encoder sees exactly the
  vectors prompt tuning prepended. The prompt tokens are not in the tokenizer's vocabulary, only in its
  template: no user text can produce them (``<prompt_3>`` typed by a user is plain text, as in training).
- **Generation never emits them**: ``suppress_tokens`` in ``generation_config.json``. T5 ties the LM head to
  the embeddings (transformers 5 always does), so the prompt rows also get logits; ``renormalize_logits``
  takes them out of the log-softmax again after the suppression, so beam search scores the original
  vocabulary exactly as the adapter model does (it normalises before the logits processors).

**The input length is the export's own**: ``tokenizer.json`` truncates at the trained input length plus
``P`` (what a runtime reading the file alone applies) and ``model_max_length`` is the same (what
transformers applies with ``truncation=True``), so both cut inputs where the pipeline did; nothing of
the adapter tokenizer's own truncation or padding is kept. ``tokenizer_class`` is
``PreTrainedTokenizerFast``, which transformers 4 and 5 load from ``tokenizer.json`` as it is. T5's own
tokenizer classes rebuild the template and would drop the prompt without a word: ``extra_ids`` (which
only they read) holds a sentence instead of a number, so they refuse to load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, processors
from transformers import GenerationConfig

from components.lora import LoRALayer, merge_lora
from components.modeling import ModelLoadError, load_finetuned, read_adapter_config
from components.prompt_tuning import PromptTuningEmbedding

PROMPT_TOKEN = "<prompt_{}>"
FILLER_TOKEN = "<unused_{}>"  # the names of the model's padded vocabulary rows, in a runtime that needs a name for every id
TOKENIZER_CLASS = "PreTrainedTokenizerFast"
# Read only by T5Tokenizer / T5TokenizerFast, which expect a number here: they fail on loading instead of dropping the prompt.
T5_CLASSES_REFUSED = "not for T5Tokenizer: it rebuilds the template and drops the trained prompt; load this folder with AutoTokenizer"


def _unwrap(model) -> torch.Tensor:
    """Turn the adapter model into a plain one in place (LoRA merged, wrappers gone); the prompt's vectors."""
    merge_lora(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALayer):
            parent, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(parent), attribute, module.base)
    wrapper = model.encoder.embed_tokens
    if not isinstance(wrapper, PromptTuningEmbedding):
        raise TypeError("The model has no prompt to export.")
    model.encoder.embed_tokens = wrapper.embedding
    return wrapper.prompt.detach().clone()


def _prompt_template(tokenizer, names: list[str], ids: list[int]) -> processors.TemplateProcessing:
    eos = tokenizer.eos_token
    prompt = " ".join(names)
    return processors.TemplateProcessing(
        single=f"{prompt} $A {eos}", pair=f"{prompt} $A {eos} $B {eos}", special_tokens=[*zip(names, ids), (eos, tokenizer.eos_token_id)]
    )


def _check_finite(model, model_dir: Path) -> None:
    for name, tensor in model.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise ModelLoadError(
                f"{model_dir}: the merged {name} holds non-finite values (NaN or inf), from its base model or the LoRA update; nothing was exported."
            )


def _write_tokenizer(tokenizer, output: Path, template: processors.TemplateProcessing, max_length: int) -> None:
    """``tokenizer.json`` (the adapter tokenizer's model and added tokens, the prompt template, truncation at
    ``max_length``) and a ``tokenizer_config.json`` holding only what a stock loader needs."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy: the loaded tokenizer is left as it was
    backend.post_processor = template
    backend.no_padding()
    backend.enable_truncation(max_length)
    backend.save(str(output / "tokenizer.json"))
    config = {
        "tokenizer_class": TOKENIZER_CLASS,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "unk_token": tokenizer.unk_token,
        "model_max_length": max_length,
        # T5 takes no token_type_ids, which PreTrainedTokenizerFast returns by default in transformers 4: generate() refuses them.
        "model_input_names": ["input_ids", "attention_mask"],
        "clean_up_tokenization_spaces": tokenizer.clean_up_tokenization_spaces,
        "extra_ids": T5_CLASSES_REFUSED,
    }
    (output / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def export_plain_checkpoint(model_dir: Path, output: Path, *, decoding: dict, max_input_length: int) -> dict:
    """Write the plain checkpoint of ``model_dir`` to ``output``, inputs cut at ``max_input_length``; what it holds (prompt ids, base, decoding)."""
    model, tokenizer = load_finetuned(model_dir, merge=False)
    prompt = _unwrap(model)
    vocab_size = model.config.vocab_size
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens, more than the model's {vocab_size} rows: the prompt's ids would be some of its tokens'."
        )
    ids = list(range(vocab_size, vocab_size + len(prompt)))
    model.resize_token_embeddings(vocab_size + len(ids), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[vocab_size:] = prompt
    _check_finite(model, model_dir)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=model.config.decoder_start_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
        suppress_tokens=ids,
        renormalize_logits=True,
        **{key: decoding[key] for key in ("num_beams", "do_sample", "temperature", "top_k", "top_p", "max_new_tokens")},
    )
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    _write_tokenizer(tokenizer, output, _prompt_template(tokenizer, prompt_token_names(len(ids)), ids), max_input_length + len(ids))
    base_model, settings = read_adapter_config(model_dir)
    return {
        "base_model": base_model,
        "prompt_token_ids": ids,
        "lora_rank": settings.lora_rank,
        "decoding": decoding,
        "max_input_length": max_input_length,
    }


def prompt_token_names(count: int) -> list[str]:
    return [PROMPT_TOKEN.format(i) for i in range(count)]


def name_every_id(tokenizer, prompt_ids: list[int]) -> None:
    """Give ``tokenizer`` (a copy of the export's, loaded for a runtime that addresses tokens by name: CTranslate2's
    converter) a name for the ids it has none for: the model's padded rows and the prompt tokens. The export's own
    tokenizer never holds them, so that user text cannot produce them."""
    names = prompt_token_names(len(prompt_ids))
    tokenizer.add_tokens([FILLER_TOKEN.format(i) for i in range(len(tokenizer), prompt_ids[0])] + names, special_tokens=True)
    if tokenizer.convert_tokens_to_ids(names) != prompt_ids:
        raise ValueError(
            f"The prompt tokens got ids {tokenizer.convert_tokens_to_ids(names)}, not {prompt_ids}: the tokenizer does not end at the vocabulary."
        )
