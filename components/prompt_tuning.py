"""Prompt tuning (Lester et al. 2021), written by hand, for the encoder of a seq2seq model.

``prompt_length`` trainable vectors are prepended to the token embeddings of every
encoder input::

    input_ids (B, L) -> [prompt; embed(input_ids)] (B, P + L, d_model)

The attention mask must grow by ``P`` leading ones to match; the data collator
and generation add them (HF PEFT does the same, encoder side only).

T5 shares one ``nn.Embedding`` between encoder, decoder and LM head. Only the
encoder's reference is replaced by this wrapper, so the decoder and the shared
weight are untouched.
"""

from __future__ import annotations

import torch
from torch import nn


class PromptTuningEmbedding(nn.Module):
    """An ``nn.Embedding`` with ``prompt_length`` trainable rows prepended to every sequence.

    The prompt is initialised from the embeddings of ``prompt_length`` vocabulary
    tokens drawn at random (seeded) from the first ``init_vocab_size`` ids, skipping
    the special ids below ``num_special_tokens``. Lester et al. found sampled-vocabulary
    initialisation clearly better than uniform random vectors, because the prompt then
    starts on the scale and in the region the encoder was trained on.
    """

    def __init__(self, embedding: nn.Embedding, prompt_length: int, *, init_vocab_size: int = 5000, num_special_tokens: int = 3, seed: int = 0):
        super().__init__()
        if prompt_length < 1:
            raise ValueError(f"Prompt length must be a positive integer, got prompt_length={prompt_length}.")
        self.embedding = embedding
        self.prompt_length = prompt_length
        weight = embedding.weight
        self.prompt = nn.Parameter(torch.empty(prompt_length, weight.shape[1], dtype=weight.dtype, device=weight.device))
        high = min(init_vocab_size, weight.shape[0])
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("init_token_ids", torch.randint(num_special_tokens, high, (prompt_length,), generator=generator), persistent=False)
        self.reset_prompt()

    @torch.no_grad()
    def reset_prompt(self) -> None:
        if self.prompt.is_meta:
            return
        self.prompt.copy_(self.embedding.weight[self.init_token_ids.to(self.prompt.device)].detach())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        token_embeds = self.embedding(input_ids)
        prompt = self.prompt.to(token_embeds.dtype).unsqueeze(0).expand(input_ids.shape[0], -1, -1)
        return torch.cat([prompt, token_embeds], dim=1)

    def extra_repr(self) -> str:
        return f"prompt_length={self.prompt_length}"


def attach_prompt(model: nn.Module, prompt_length: int, **init_kwargs) -> PromptTuningEmbedding:
    """Put a PromptTuningEmbedding in front of the encoder of an HF encoder-decoder model."""
    encoder = model.get_encoder()
    if isinstance(encoder.get_input_embeddings(), PromptTuningEmbedding):
        raise ValueError("This model already has a prompt attached to its encoder.")
    prompt_embedding = PromptTuningEmbedding(encoder.get_input_embeddings(), prompt_length, **init_kwargs)
    encoder.set_input_embeddings(prompt_embedding)
    return prompt_embedding


def prompt_length_of(model: nn.Module) -> int:
    """The number of prompt vectors the encoder prepends (0 without prompt tuning)."""
    embedding = model.get_encoder().get_input_embeddings()
    return embedding.prompt_length if isinstance(embedding, PromptTuningEmbedding) else 0


def extend_attention_mask(attention_mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """Prepend ``prompt_length`` ones: the prompt positions are always attended to."""
    ones = attention_mask.new_ones(attention_mask.shape[0], prompt_length)
    return torch.cat([ones, attention_mask], dim=1)
