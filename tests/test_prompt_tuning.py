"""Float comparisons use torch.testing.assert_close's float32 defaults, which hold for the same operations up to
reassociation (tests/tolerances.py)."""

import copy

import pytest
import torch
from tolerances import assert_same_gradient

from components.collator import PTDataCollator
from components.modeling import adapter_state_dict, apply_peft, parameter_stats
from components.prompt_tuning import PromptTuningEmbedding, attach_prompt, extend_attention_mask, prompt_length_of


@pytest.mark.numeric
def test_prompt_is_initialised_from_vocabulary_rows(small_t5):
    prompt = PromptTuningEmbedding(small_t5.shared, prompt_length=5, init_vocab_size=40)
    ids = prompt.init_token_ids
    assert ids.min() >= 3 and ids.max() < 40
    torch.testing.assert_close(prompt.prompt.detach(), small_t5.shared.weight[ids])
    assert prompt.prompt.requires_grad


@pytest.mark.numeric
def test_prompt_reaches_the_encoder_only(small_t5):
    base = copy.deepcopy(small_t5)
    attach_prompt(small_t5, prompt_length=3)
    assert prompt_length_of(small_t5) == 3 and prompt_length_of(base) == 0
    shared_weight = small_t5.shared.weight
    assert small_t5.get_decoder().get_input_embeddings().weight is shared_weight
    assert small_t5.get_encoder().get_input_embeddings().embedding.weight is shared_weight

    input_ids = torch.randint(2, 64, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    labels = torch.randint(2, 64, (2, 4))
    encoder_out = small_t5.get_encoder()(input_ids=input_ids, attention_mask=extend_attention_mask(mask, 3))
    assert encoder_out.last_hidden_state.shape[1] == 6 + 3

    # Reference: the untouched base, fed [prompt; embed(ids)] by hand.
    prompt = small_t5.get_encoder().get_input_embeddings().prompt
    embeds = torch.cat([prompt.expand(2, -1, -1), base.shared(input_ids)], dim=1)
    expected = base(inputs_embeds=embeds, attention_mask=extend_attention_mask(mask, 3), labels=labels).logits
    got = small_t5(input_ids=input_ids, attention_mask=extend_attention_mask(mask, 3), labels=labels).logits
    torch.testing.assert_close(got, expected)
    assert got.shape[1] == labels.shape[1]  # the decoder side keeps its own length


def test_attaching_twice_is_refused(small_t5):
    attach_prompt(small_t5, prompt_length=2)
    with pytest.raises(ValueError, match=r"^This model already has a prompt attached to its encoder\.$"):
        attach_prompt(small_t5, prompt_length=2)


def test_collator_pads_labels_and_widens_the_encoder_mask_only(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    features = [
        {"input_ids": [5, 6, 7, 1], "attention_mask": [1, 1, 1, 1], "labels": [8, 1]},
        {"input_ids": [5, 1], "attention_mask": [1, 1], "labels": [8, 9, 10, 1]},
    ]
    batch = PTDataCollator(tokenizer, prompt_length=4)(features)
    assert batch["input_ids"].shape == (2, 4)
    assert batch["attention_mask"].shape == (2, 4 + 4)
    assert batch["attention_mask"][:, :4].eq(1).all()
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert batch["labels"].tolist() == [[8, 1, -100, -100], [8, 9, 10, 1]]
    assert "decoder_attention_mask" not in batch


def test_only_adapters_train_and_counts_add_up(small_t5):
    base_total = parameter_stats(small_t5)["total"]
    model = apply_peft(small_t5, lora_rank=2, lora_alpha=4, lora_dropout=0.0, prompt_length=5)
    config = model.config
    n_layers = 2 * (config.num_layers + 2 * config.num_decoder_layers)
    inner = config.num_heads * config.d_kv
    expected_trainable = n_layers * 2 * (config.d_model + inner) + 5 * config.d_model
    stats = parameter_stats(model)
    assert stats["trainable"] == expected_trainable
    assert stats["total"] == base_total + expected_trainable
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_state_dict(model))
    assert all(name.endswith(("lora_A", "lora_B", "prompt")) for name in trainable)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.numeric
def test_every_adapter_gets_its_gradient(small_t5, checkpointing):
    """With activation checkpointing on, decoder adapters included, gradients equal the plain ones."""

    def gradients(use_checkpointing: bool) -> dict:
        torch.manual_seed(0)
        model = apply_peft(copy.deepcopy(small_t5), lora_rank=2, lora_alpha=4, lora_dropout=0.0, prompt_length=3)
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                torch.nn.init.normal_(p, std=0.1)  # B = 0 would zero A's gradient
        model.train()
        if use_checkpointing:
            model.activation_checkpointing_enable()
        input_ids = torch.randint(2, 64, (2, 6))
        labels = torch.randint(2, 64, (2, 5))
        mask = extend_attention_mask(torch.ones(2, 6, dtype=torch.long), 3)
        model(input_ids=input_ids, attention_mask=mask, labels=labels).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    grads = gradients(checkpointing)
    assert any(".decoder." in f".{n}" and "EncDecAttention" in n for n in grads)
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
    if checkpointing:
        for name, grad in gradients(False).items():
            assert_same_gradient(grads[name], grad, name)  # activations recomputed: the same terms, summed in another order


def seeded_ids(low: int, high: int, count: int, seed: int) -> torch.Tensor:
    return torch.randint(low, high, (count,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.numeric
def test_default_init_draws_ids_3_to_4999_from_seed_0_whatever_the_global_seed():
    torch.manual_seed(123)  # the draw has its own generator: the global random state does not matter
    prompt = PromptTuningEmbedding(torch.nn.Embedding(6000, 4), prompt_length=50)
    torch.testing.assert_close(prompt.init_token_ids, seeded_ids(3, 5000, 50, seed=0), rtol=0, atol=0)


@pytest.mark.numeric
def test_init_draws_below_the_vocabulary_size_when_it_is_under_init_vocab_size():
    prompt = PromptTuningEmbedding(torch.nn.Embedding(50, 8), prompt_length=30, seed=4)
    torch.testing.assert_close(prompt.init_token_ids, seeded_ids(3, 50, 30, seed=4), rtol=0, atol=0)


@pytest.mark.numeric
def test_attach_prompt_passes_the_init_settings_on(small_t5):
    prompt = attach_prompt(small_t5, prompt_length=20, init_vocab_size=10, num_special_tokens=5, seed=7)
    torch.testing.assert_close(prompt.init_token_ids, seeded_ids(5, 10, 20, seed=7), rtol=0, atol=0)


def test_init_token_ids_are_not_saved_in_the_state_dict(small_t5):
    prompt = PromptTuningEmbedding(small_t5.shared, prompt_length=3)
    assert set(prompt.state_dict()) == {"prompt", "embedding.weight"}


def test_length_one_is_accepted_and_zero_refused_naming_prompt_length(small_t5):
    assert PromptTuningEmbedding(small_t5.shared, prompt_length=1).prompt.shape == (1, 32)
    with pytest.raises(ValueError, match=r"^Prompt length must be a positive integer, got prompt_length=0\.$"):
        PromptTuningEmbedding(small_t5.shared, prompt_length=0)


def test_prompt_takes_the_embeddings_dtype_and_device():
    half = PromptTuningEmbedding(torch.nn.Embedding(64, 8).to(torch.bfloat16), prompt_length=3)
    assert half.prompt.dtype == torch.bfloat16
    meta = PromptTuningEmbedding(torch.nn.Embedding(64, 8, device="meta"), prompt_length=3)
    assert meta.prompt.is_meta


def test_an_fp32_prompt_before_bf16_embeddings_gives_bf16_inputs():
    embedding = torch.nn.Embedding(64, 8).to(torch.bfloat16)
    prompt = PromptTuningEmbedding(embedding, prompt_length=3)
    prompt.prompt.data = prompt.prompt.data.float()  # an fp32 master copy of the trainable prompt
    out = prompt(torch.randint(3, 64, (2, 5)))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3 + 5, 8)


def test_collator_honours_the_return_tensors_of_the_call(tiny_model_dir):
    import numpy as np
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    features = [{"input_ids": [5, 6, 1], "attention_mask": [1, 1, 1], "labels": [8, 1]}]
    batch = PTDataCollator(tokenizer)(features, return_tensors="np")
    assert isinstance(batch["input_ids"], np.ndarray) and isinstance(batch["labels"], np.ndarray)
