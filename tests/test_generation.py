import logging

import pytest
import torch

from components.generation import DECODING_PRESETS, Decoding, generate_predictions
from components.modeling import apply_peft, load_base_model, load_tokenizer
from components.stats import main as stats_main

TEXTS = ["Что такое фотосинтез?", "Переведи на английский\nкошка", "Назови столицу Франции.", "а"]


@pytest.fixture(scope="module")
def tiny_peft(tiny_model_dir):
    torch.manual_seed(0)
    model = apply_peft(load_base_model(str(tiny_model_dir)), prompt_length=4)
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):
            torch.nn.init.normal_(p, std=0.05)
    return model, load_tokenizer(str(tiny_model_dir))


def test_batched_length_sorted_generation_keeps_input_order(tiny_peft):
    model, tokenizer = tiny_peft
    batched = generate_predictions(model, tokenizer, TEXTS, max_new_tokens=12, batch_size=3)
    one_by_one = [generate_predictions(model, tokenizer, [t], max_new_tokens=12)[0] for t in TEXTS]
    assert batched == one_by_one
    assert any(batched)


def test_the_prompt_columns_are_in_the_mask(tiny_peft):
    """Generation equals a manual greedy loop over the full model with the widened mask."""
    model, tokenizer = tiny_peft
    [prediction] = generate_predictions(model, tokenizer, [TEXTS[0]], max_new_tokens=6)
    encoded = tokenizer([TEXTS[0]], return_tensors="pt")
    mask = torch.cat([torch.ones(1, 4, dtype=torch.long), encoded["attention_mask"]], dim=1)
    decoder_ids = torch.tensor([[model.config.decoder_start_token_id]])
    for _ in range(6):
        logits = model(input_ids=encoded["input_ids"], attention_mask=mask, decoder_input_ids=decoder_ids).logits
        next_id = logits[:, -1].argmax(-1, keepdim=True)
        decoder_ids = torch.cat([decoder_ids, next_id], dim=1)
        if next_id.item() == model.config.eos_token_id:
            break
    assert prediction == tokenizer.decode(decoder_ids[0], skip_special_tokens=True).strip()


def test_sampling_is_seeded_and_differs_from_greedy(tiny_peft):
    model, tokenizer = tiny_peft
    kwargs = dict(do_sample=True, temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=12)
    first = generate_predictions(model, tokenizer, TEXTS, seed=1, **kwargs)
    assert first == generate_predictions(model, tokenizer, TEXTS, seed=1, **kwargs)
    assert first != generate_predictions(model, tokenizer, TEXTS, max_new_tokens=12)


def test_decoding_says_what_ran(caplog, tiny_peft):
    assert Decoding().describe().startswith("greedy decoding")
    assert "do nothing without do_sample" in Decoding(num_beams=4, temperature=0.3).describe()
    assert "temperature" not in DECODING_PRESETS["beam"].generate_kwargs()
    assert DECODING_PRESETS["sampling"].describe().startswith("sampling (temperature=0.7")
    model, tokenizer = tiny_peft
    with caplog.at_level(logging.INFO, logger="components.generation"):
        generate_predictions(model, tokenizer, TEXTS[:1], num_beams=2, max_new_tokens=3)
    assert "beam search with 2 beams" in caplog.text


def test_stats_prints_the_published_figures(capsys):
    stats = stats_main([])
    assert (stats["total"], stats["trainable"]) == (740_047_872, 2_379_776)
    out = capsys.readouterr().out
    assert "740,047,872" in out and "2,379,776" in out and "0.32%" in out
