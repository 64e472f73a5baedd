"""Float comparisons use torch.testing.assert_close's float32 defaults, which hold for the same operations up to
reassociation (tests/tolerances.py)."""

import copy
import math

import peft
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from components.lora import LoRALayer, inject_lora, lora_layers, merge_lora, unmerge_lora
from components.modeling import apply_peft


@pytest.mark.numeric
def test_initialisation_is_kaiming_uniform_a_and_zero_b():
    torch.manual_seed(0)
    layer = LoRALayer(nn.Linear(256, 128), rank=8, alpha=16)
    bound = 1 / math.sqrt(256)  # kaiming_uniform_ with a=sqrt(5): gain sqrt(1/3) * sqrt(3 / fan_in)
    assert layer.lora_A.shape == (8, 256) and layer.lora_B.shape == (128, 8)
    assert layer.lora_A.abs().max() <= bound
    assert layer.lora_A.abs().max() > 0.95 * bound
    # the standard deviation of 2,048 uniform draws: relative standard error sqrt((9/5 - 1) / (4 * 2048)) = 1%, so 5% is five of them
    assert layer.lora_A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.count_nonzero(layer.lora_B) == 0
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad


@pytest.mark.numeric
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


@pytest.mark.numeric
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


@pytest.mark.numeric
def test_dropout_drops_the_input_of_the_update_only():
    """x -> W0 x + (alpha/r) B A dropout(x): the mask falls on x (16 wide), not on A x (4 wide), and never on W0 x."""
    torch.manual_seed(0)
    layer = LoRALayer(nn.Linear(16, 12), rank=4, alpha=8, dropout=0.5).train()
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 16)
    torch.manual_seed(1)
    got = layer(x)
    torch.manual_seed(1)  # the same draw as the layer's dropout
    dropped = F.dropout(x, p=0.5, training=True)
    torch.testing.assert_close(got, layer.base(x) + 2.0 * (dropped @ layer.lora_A.T @ layer.lora_B.T))
    assert not torch.allclose(got, layer.eval()(x))  # in eval mode nothing is dropped


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


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.numeric
def test_same_weights_as_hf_peft_give_the_same_outputs(small_t5, dropout):
    """Our LoRA and HF PEFT's LoRA, holding the same A and B, compute the same model (in training
    mode with dropout, under the same random state: the same units are dropped)."""
    ours = apply_peft(copy.deepcopy(small_t5), lora_rank=4, lora_alpha=8, lora_dropout=dropout, prompt_length=0).train()
    reference = peft.get_peft_model(
        copy.deepcopy(small_t5), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q", "v"])
    ).train()
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
    torch.manual_seed(2)
    ours_out = ours(input_ids=input_ids, labels=labels)
    torch.manual_seed(2)
    peft_out = reference(input_ids=input_ids, labels=labels)
    torch.testing.assert_close(ours_out.logits, peft_out.logits)
    assert not torch.allclose(ours_out.logits, small_t5(input_ids=input_ids, labels=labels).logits)
    if dropout:
        torch.manual_seed(3)  # another draw drops other units
        assert not torch.allclose(ours(input_ids=input_ids, labels=labels).logits, ours_out.logits)

    ours.eval()  # merged weights: compared without dropout
    reference.eval()
    merge_lora(ours)
    reference.merge_adapter()
    torch.testing.assert_close(ours(input_ids=input_ids, labels=labels).logits, reference(input_ids=input_ids, labels=labels).logits)
    unmerge_lora(ours)
    assert not any(layer.merged for layer in lora_layers(ours))


def test_rank_one_is_accepted_and_rank_zero_refused_naming_lora_rank():
    assert LoRALayer(nn.Linear(4, 3), rank=1, alpha=1).lora_A.shape == (1, 4)
    with pytest.raises(ValueError, match=r"^LoRA rank must be a positive integer, got lora_rank=0\.$"):
        LoRALayer(nn.Linear(4, 3), rank=0, alpha=1)


def test_repr_shows_rank_alpha_and_merged_state():
    layer = LoRALayer(nn.Linear(4, 3), rank=2, alpha=8)
    assert layer.extra_repr() == "rank=2, alpha=8, merged=False"
    layer.merge()
    assert layer.extra_repr() == "rank=2, alpha=8, merged=True"


def test_adapters_are_created_on_the_base_layers_device():
    """A base on the meta device (as when a model is built without memory) gets its adapters on meta too."""
    layer = LoRALayer(nn.Linear(16, 12, device="meta"), rank=4, alpha=8)
    assert layer.lora_A.is_meta and layer.lora_B.is_meta


def test_zero_dropout_adds_no_dropout_module_and_is_the_default_of_inject(small_t5):
    assert isinstance(LoRALayer(nn.Linear(4, 3), rank=2, alpha=4, dropout=0.0).dropout, nn.Identity)
    assert isinstance(LoRALayer(nn.Linear(4, 3), rank=2, alpha=4, dropout=0.1).dropout, nn.Dropout)
    inject_lora(small_t5, ("q", "v"), rank=2, alpha=4)
    assert all(isinstance(layer.dropout, nn.Identity) for layer in lora_layers(small_t5))


@pytest.mark.numeric
def test_fp32_adapters_under_a_bf16_base_compute_in_fp32_and_return_bf16():
    torch.manual_seed(0)
    base = nn.Linear(16, 12).to(torch.bfloat16)
    layer = LoRALayer(base, rank=4, alpha=8)  # adapters are created in the default dtype, float32
    with torch.no_grad():
        layer.lora_B.normal_()
    assert layer.lora_A.dtype == torch.float32 and layer.lora_B.dtype == torch.float32
    x = torch.randn(3, 16).to(torch.bfloat16)
    got = layer(x)
    assert got.dtype == torch.bfloat16
    update = (x.float() @ layer.lora_A.T @ layer.lora_B.T) * 2.0
    torch.testing.assert_close(got, base(x) + update.to(torch.bfloat16), rtol=0, atol=0)


def test_inject_error_names_the_model_class(small_t5):
    with pytest.raises(ValueError, match=r"No nn\.Linear named \['query'\] in T5ForConditionalGeneration"):
        inject_lora(small_t5, ("query",), rank=2, alpha=4)
