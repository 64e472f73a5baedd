"""Export: a fine-tuned adapter folder as a model any stock runtime serves.

- :mod:`components.export.plain_checkpoint`: a plain Hugging Face ``T5ForConditionalGeneration`` checkpoint, the
  LoRA updates merged into ``q``/``v`` and the prompt as added vocabulary tokens that the tokenizer prepends.
- :mod:`components.export.ctranslate2_model`: that checkpoint converted by CTranslate2's own converter.
- :mod:`components.export.clearml_serving_preprocess`: clearml-serving's custom-engine module serving it.
"""
