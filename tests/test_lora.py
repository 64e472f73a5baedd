import copy
import math

import pytest
import torch
from torch import nn

from components.lora import LoRALayer, inject_lora, lora_layers, merge_lora, unmerge_lora
from components.modeling import apply_peft


def test_initialisation_is_kaiming_uniform_a_and_zero_b():
    torch.manual_seed(0)
    layer = LoRALayer(nn.Linear(256, 128), rank=8, alpha=16)
    bound = 1 / math.sqrt(256)  # kaiming_uniform_ with a=sqrt(5): gain sqrt(1/3) * sqrt(3 / fan_in)
    assert layer.lora_A.shape == (8, 256) and layer.lora_B.shape == (128, 8)
    assert layer.lora_A.abs().max() <= bound
    assert layer.lora_A.abs().max() > 0.95 * bound
    assert layer.lora_A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.count_nonzero(layer.lora_B) == 0
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad


def test_output_equals_base_at_init_and_reference_after_b_changes():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = LoRALayer(copy.deepcopy(base), rank=4, alpha=8)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)

    with torch.no_grad():
        layer.lora_B.normal_()
    expected = x @ base.weight.T + base.bias + (8 / 4) * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), expected)


def test_merge_and_unmerge_round_trip():
    torch.manual_seed(0)
    layer = LoRALayer(nn.Linear(16, 12), rank=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.normal_()
    original_weight = layer.base.weight.clone()
    x = torch.randn(7, 16)
    unmerged_out = layer(x)

    layer.merge()
    torch.testing.assert_close(layer.base.weight, original_weight + layer.delta_weight())
    torch.testing.assert_close(layer(x), unmerged_out)
    layer.merge()  # idempotent
    torch.testing.assert_close(layer(x), unmerged_out)

    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, original_weight)
    torch.testing.assert_close(layer(x), unmerged_out)


def test_dropout_applies_to_the_update_only():
    torch.manual_seed(0)
    layer = LoRALayer(nn.Linear(16, 12), rank=4, alpha=8, dropout=0.5).train()
    x = torch.randn(4, 16)
    # B = 0: whatever dropout does to the update, the base path is untouched.
    torch.testing.assert_close(layer(x), layer.base(x))


def test_inject_wraps_every_q_and_v_of_a_t5(small_t5):
    names = inject_lora(small_t5, ("q", "v"), rank=2, alpha=4)
    config = small_t5.config
    # encoder self-attention, decoder self-attention and decoder cross-attention
    assert len(names) == 2 * (config.num_layers + 2 * config.num_decoder_layers)
    assert any("EncDecAttention.q" in n for n in names) and any("decoder" in n and "SelfAttention.v" in n for n in names)
    assert all(n.rsplit(".", 1)[-1] in ("q", "v") for n in names)


def test_inject_without_match_names_the_targets(small_t5):
    with pytest.raises(ValueError, match="target modules"):
        inject_lora(small_t5, ("query",), rank=2, alpha=4)


def test_same_weights_as_hf_peft_give_the_same_outputs(small_t5):
    """Our LoRA and HF PEFT's LoRA, holding the same A and B, compute the same model."""
    peft = pytest.importorskip("peft")
    ours = apply_peft(copy.deepcopy(small_t5), lora_rank=4, lora_alpha=8, lora_dropout=0.0, prompt_length=0)
    reference = peft.get_peft_model(
        copy.deepcopy(small_t5), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q", "v"])
    )
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == reference.get_nb_trainable_parameters()[0]

    torch.manual_seed(1)
    ours_params = dict(ours.named_parameters())
    peft_params = dict(reference.named_parameters())
    for name, tensor in ours_params.items():
        if name.endswith(("lora_A", "lora_B")):
            with torch.no_grad():
                tensor.normal_(std=0.2)
                prefix, kind = name.rsplit(".", 1)
                peft_params[f"base_model.model.{prefix}.{kind}.default.weight"].copy_(tensor)

    input_ids = torch.randint(2, 64, (2, 9))
    labels = torch.randint(2, 64, (2, 5))
    ours_out = ours(input_ids=input_ids, labels=labels)
    peft_out = reference(input_ids=input_ids, labels=labels)
    torch.testing.assert_close(ours_out.logits, peft_out.logits)
    assert not torch.allclose(ours_out.logits, small_t5(input_ids=input_ids, labels=labels).logits)

    merge_lora(ours)
    reference.merge_adapter()
    torch.testing.assert_close(ours(input_ids=input_ids, labels=labels).logits, reference(input_ids=input_ids, labels=labels).logits)
    unmerge_lora(ours)
    assert not any(layer.merged for layer in lora_layers(ours))
