"""Low-rank adaptation (LoRA, Hu et al. 2021), written by hand.

A frozen linear layer ``W0`` is augmented with a trainable low-rank update::

    x -> W0 x + (alpha / r) * B A dropout(x)

``A`` (r x in) starts Kaiming-uniform and ``B`` (out x r) starts at zero, so at
initialisation the wrapped layer computes exactly what the base layer computes.
For inference the update can be merged into ``W0`` (no extra matmuls) and
unmerged again to keep training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


class LoRALayer(nn.Module):
    """Wraps a frozen ``nn.Linear`` with a trainable rank-``rank`` update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got lora_rank={rank}.")
        self.base = base
        self.base.requires_grad_(False)
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.empty(base.out_features, rank, device=base.weight.device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A as ``nn.Linear`` initialises its weight (Kaiming-uniform, a=sqrt(5)); B zeros."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        if self.merged:
            return result
        # Adapters may be kept in fp32 under a bf16/fp16 base: compute in their dtype.
        h = self.dropout(x).to(self.lora_A.dtype)
        update = F.linear(F.linear(h, self.lora_A), self.lora_B) * self.scaling
        return result + update.to(result.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The dense update ``(alpha / r) * B A`` that merging adds to ``W0``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight; forward then costs one matmul."""
        if not self.merged:
            weight = self.base.weight
            weight.add_(self.delta_weight().to(weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the base weight (inverse of :meth:`merge`)."""
        if self.merged:
            weight = self.base.weight
            weight.sub_(self.delta_weight().to(weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def inject_lora(model: nn.Module, target_names: Iterable[str], rank: int, alpha: float, dropout: float = 0.0) -> list[str]:
    """Replace every ``nn.Linear`` whose attribute name is in ``target_names`` by a LoRALayer.

    Matching is on the last component of the module path (``q`` matches
    ``encoder.block.0.layer.0.SelfAttention.q``), as in HF PEFT's ``target_modules``.
    Returns the full names of the wrapped layers.
    """
    targets = set(target_names)
    matches = [(name, module) for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in targets and isinstance(module, nn.Linear)]
    if not matches:
        raise ValueError(f"No nn.Linear named {sorted(targets)} in {type(model).__name__}: check the LoRA target modules.")
    for name, module in matches:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, LoRALayer(module, rank, alpha, dropout))
    return [name for name, _ in matches]


def lora_layers(model: nn.Module) -> list[LoRALayer]:
    return [m for m in model.modules() if isinstance(m, LoRALayer)]


def merge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model):
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model):
        layer.unmerge()
