"""Export: a fine-tuned adapter folder as a model any stock runtime serves.

- :mod:`components.export.plain_checkpoint`: a plain Hugging Face ``T5ForConditionalGeneration`` checkpoint, the
  LoRA updates merged into ``q``/``v`` and the prompt as vocabulary rows whose ids the tokenizer's template prepends.
- :mod:`components.export.model_card`: its model card, with the evaluation of these very weights.
- :mod:`components.export.ctranslate2_model`: that checkpoint converted by CTranslate2's own converter, and generation with it.
- :mod:`components.export.clearml_serving_preprocess`: clearml-serving's custom-engine module serving it.
"""
