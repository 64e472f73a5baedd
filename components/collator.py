"""Batching for a prompt-tuned seq2seq model."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import DataCollatorForSeq2Seq

from components.prompt_tuning import extend_attention_mask


@dataclass
class PTDataCollator(DataCollatorForSeq2Seq):
    """``DataCollatorForSeq2Seq`` (dynamic padding, labels padded with -100) whose
    encoder attention mask also covers the ``prompt_length`` prompt vectors.

    Only the encoder mask grows: the prompt lives in the encoder input, while the
    decoder's inputs are built from ``labels`` and keep their own length.
    """

    prompt_length: int = 0

    def __call__(self, features, return_tensors=None):
        batch = super().__call__(features, return_tensors=return_tensors)
        if self.prompt_length:
            batch["attention_mask"] = extend_attention_mask(batch["attention_mask"], self.prompt_length)
        return batch
