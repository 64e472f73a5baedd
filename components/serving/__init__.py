"""An OpenAI-compatible server for the exported model (``python -m tools.serve``).

- :mod:`components.serving.engines`: the two ways to generate, CTranslate2 (the export's ``ctranslate2``
  folder) and transformers (its ``model`` folder, through the clearml-serving module's own code), each
  texts in, new token ids out, streaming a token at a time where the engine can.
- :mod:`components.serving.batching`: dynamic batching: requests that arrive together and decode alike
  are generated as one batch, in a thread of their own, behind a bounded queue.
- :mod:`components.serving.openai_api`: the HTTP API (Starlette): ``/v1/completions``,
  ``/v1/chat/completions``, ``/v1/models`` and ``/health``, with streaming, per-request decoding, size
  limits and an optional API key.
"""
