"""A fine-tuned adapter folder as a plain Hugging Face checkpoint: ``save_pretrained`` files that
``AutoTokenizer`` and ``AutoModelForSeq2SeqLM`` load without this project.

- **LoRA** folds into the weights: each ``q``/``v`` linear holds ``W0 + (alpha / r) B A`` (``merge_lora``) and
  the wrappers are replaced by those plain linears.
- **The prompt** becomes ``P`` vocabulary rows: ids ``V .. V + P - 1`` past the model's ``vocab_size`` ``V``
  (the rows the original model has, padded ones included, are left as they are), holding the prompt's
  vectors, and ``P`` added special tokens ``<prompt_0> ..`` that the fast tokenizer's template
  post-processor puts before every input (``<prompt_*> $A </s>``). T5 feeds the encoder plain
  embedding rows, so the encoder sees exactly the vectors prompt tuning prepended.
- **Generation never emits them**: ``suppress_tokens`` in ``generation_config.json``. T5 ties the LM head to
  the embeddings (transformers 5 always does), so the prompt rows also get logits; ``renormalize_logits``
  takes them out of the log-softmax again after the suppression, so beam search scores the original
  vocabulary exactly as the adapter model does (it normalises before the logits processors).

The tokenizer counts the prompt tokens in its ``max_length``: ``model_max_length`` is the step's input
length plus ``P``, so ``truncation=True`` cuts inputs where the pipeline does. ``tokenizer_class`` is
``PreTrainedTokenizerFast``: ``T5Tokenizer`` rebuilds its own post-processor on loading and drops the
prompt, silently (``T5Tokenizer.from_pretrained(export)`` does so too, which the model card warns of).
There is no slow (sentencepiece) tokenizer in the export: transformers 5 loads this fast one even when
asked for a slow one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import processors
from transformers import GenerationConfig

from components.lora import LoRALayer, merge_lora
from components.modeling import load_finetuned, read_adapter_config
from components.prompt_tuning import PromptTuningEmbedding

PROMPT_TOKEN = "<prompt_{}>"
TOKENIZER_CLASS = "PreTrainedTokenizerFast"


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


def export_plain_checkpoint(model_dir: Path, output: Path, *, decoding: dict, max_input_length: int) -> dict:
    """Write the plain checkpoint of ``model_dir`` to ``output``; what it holds (prompt ids, base, decoding)."""
    model, tokenizer = load_finetuned(model_dir, merge=False)
    prompt = _unwrap(model)
    vocab_size = model.config.vocab_size
    fillers = [f"<unused_{i}>" for i in range(len(tokenizer), vocab_size)]  # padded rows keep their ids
    names = [PROMPT_TOKEN.format(i) for i in range(len(prompt))]
    tokenizer.add_tokens(fillers + names, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(names)
    if ids != list(range(vocab_size, vocab_size + len(names))):
        raise ValueError(f"The prompt tokens got ids {ids[0]}..{ids[-1]}, not {vocab_size}..: the tokenizer does not end at the vocabulary.")
    model.resize_token_embeddings(vocab_size + len(names), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[vocab_size:] = prompt
    tokenizer.backend_tokenizer.post_processor = _prompt_template(tokenizer, names, ids)
    tokenizer.model_max_length = max_input_length + len(names)

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
    tokenizer.save_pretrained(output)
    config_path = output / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config_path.write_text(json.dumps({**config, "tokenizer_class": TOKENIZER_CLASS}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    base_model, settings = read_adapter_config(model_dir)
    return {
        "base_model": base_model,
        "prompt_token_ids": ids,
        "lora_rank": settings.lora_rank,
        "decoding": decoding,
        "max_input_length": max_input_length,
    }
