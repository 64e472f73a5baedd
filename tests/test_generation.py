import json
import logging
import shutil

import pytest
import torch
from tolerances import MERGED_ATOL, MERGED_RTOL

from components import modeling
from components.decoding import DECODING_PRESETS, Decoding
from components.generation import generate_predictions
from components.modeling import ModelLoadError, apply_peft, load_base_model, load_finetuned, load_tokenizer, load_untuned, save_adapter
from components.settings import AdapterSettings
from tools.generate import main as generation_main
from tools.stats import main as stats_main

TEXTS = ["Что такое фотосинтез?", "Переведи на английский\nкошка", "Назови столицу Франции.", "а"]


PROMPT_LENGTH = 4


@pytest.fixture(scope="module")
def tiny_peft(tiny_model_dir):
    """The tiny model with LoRA (B not zero: the adapters change the outputs) and a 4-vector prompt."""
    torch.manual_seed(0)
    model = apply_peft(load_base_model(str(tiny_model_dir)), prompt_length=PROMPT_LENGTH)
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


def greedy_by_hand(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int) -> list[int]:
    """A greedy loop over the full model for one (possibly padded) row."""
    decoder_ids = torch.tensor([[model.config.decoder_start_token_id]])
    for _ in range(max_new_tokens):
        logits = model(input_ids=input_ids[None], attention_mask=attention_mask[None], decoder_input_ids=decoder_ids).logits
        next_id = logits[:, -1].argmax(-1, keepdim=True)
        decoder_ids = torch.cat([decoder_ids, next_id], dim=1)
        if next_id.item() == model.config.eos_token_id:
            break
    return decoder_ids[0].tolist()


def test_the_prompt_columns_lead_the_mask_of_a_padded_batch(tiny_peft):
    """Generation on a padded batch equals a greedy loop fed each padded row with the mask [1]*P + its token mask."""
    model, tokenizer = tiny_peft
    predictions = generate_predictions(model, tokenizer, TEXTS, max_new_tokens=6, batch_size=len(TEXTS))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # some rows are padded
    for text, prediction, ids, mask in zip(TEXTS, predictions, batch["input_ids"], batch["attention_mask"]):
        mask_with_prompt = torch.tensor([1] * PROMPT_LENGTH + mask.tolist())
        expected = tokenizer.decode(greedy_by_hand(model, ids, mask_with_prompt, 6), skip_special_tokens=True).strip()
        assert prediction == expected, text


SAMPLING_SETTINGS = [dict(temperature=1.5, top_k=0, top_p=1.0), dict(temperature=0.5, top_k=3, top_p=0.8)]


def test_sampling_settings_reach_generate(tiny_peft):
    """Seeded sampling equals transformers' generate called with the same temperature, top-k and top-p."""
    model, tokenizer = tiny_peft
    by_settings = []
    for settings in SAMPLING_SETTINGS:
        predictions = generate_predictions(model, tokenizer, TEXTS, do_sample=True, seed=1, max_new_tokens=12, batch_size=1, **settings)
        assert predictions == generate_predictions(model, tokenizer, TEXTS, do_sample=True, seed=1, max_new_tokens=12, batch_size=1, **settings)
        torch.manual_seed(1)  # batches of one text follow each other on one random stream
        expected = []
        for i in sorted(range(len(TEXTS)), key=lambda i: len(tokenizer(TEXTS[i])["input_ids"])):
            encoded = tokenizer([TEXTS[i]], return_tensors="pt")
            mask = torch.cat([torch.ones(1, PROMPT_LENGTH, dtype=torch.long), encoded["attention_mask"]], dim=1)
            output = model.generate(input_ids=encoded["input_ids"], attention_mask=mask, do_sample=True, max_new_tokens=12, **settings)
            expected.append((i, tokenizer.decode(output[0], skip_special_tokens=True).strip()))
        assert predictions == [text for _, text in sorted(expected)]
        by_settings.append(predictions)
    # Discriminating: the two settings sample different answers from the same seed, and neither is greedy.
    greedy = generate_predictions(model, tokenizer, TEXTS, max_new_tokens=12)
    assert by_settings[0] != by_settings[1] and greedy not in by_settings


@pytest.mark.numeric
def test_a_fine_tuned_directory_loads_back_the_trained_model(tiny_peft, tiny_model_dir, tmp_path):
    """save_adapter then load_finetuned (merged) computes what the trained model computes, not what the base does."""
    model, tokenizer = tiny_peft
    save_adapter(model, tmp_path, str(tiny_model_dir), AdapterSettings(prompt_length=PROMPT_LENGTH), tokenizer)
    loaded, loaded_tokenizer = load_finetuned(tmp_path)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    encoded = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    inputs = dict(
        input_ids=encoded["input_ids"],
        attention_mask=torch.cat([torch.ones(2, PROMPT_LENGTH, dtype=torch.long), encoded["attention_mask"]], dim=1),
        decoder_input_ids=torch.zeros(2, 3, dtype=torch.long),
    )
    model.eval()
    with torch.no_grad():
        trained = model(**inputs).logits
        torch.testing.assert_close(loaded(**inputs).logits, trained, rtol=MERGED_RTOL, atol=MERGED_ATOL)  # merged weights: tests/tolerances.py
        torch.manual_seed(0)
        untrained = apply_peft(load_base_model(str(tiny_model_dir)), prompt_length=PROMPT_LENGTH).eval()
        assert not torch.allclose(untrained(**inputs).logits, trained, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("load", [load_finetuned, load_untuned])
def test_a_model_directory_without_its_tokenizer_is_an_error_naming_the_file(tiny_peft, tiny_model_dir, tmp_path, load):
    """Never the base model's tokenizer in its place: the directory is incomplete, and the error says which file is missing."""
    model, tokenizer = tiny_peft
    save_adapter(model, tmp_path, str(tiny_model_dir), AdapterSettings(prompt_length=PROMPT_LENGTH), tokenizer)
    load(tmp_path)  # whole, it loads
    (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(ModelLoadError, match=f"^{tmp_path / 'tokenizer_config.json'} not found"):
        load(tmp_path)


def test_generation_truncates_the_input_to_max_input_length(tiny_peft):
    """A text longer than ``max_input_length`` is answered as its first tokens (then eos) are, fed to ``generate``
    by hand; discriminating: the whole text is answered otherwise."""
    model, tokenizer = tiny_peft
    long_text = " ".join(reversed(TEXTS * 6))
    limit = 12
    ids = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 3 * limit

    def generate_by_hand(token_ids: list[int]) -> str:
        mask = torch.ones(1, PROMPT_LENGTH + len(token_ids), dtype=torch.long)
        output = model.generate(input_ids=torch.tensor([token_ids]), attention_mask=mask, num_beams=1, do_sample=False, max_new_tokens=8)
        return tokenizer.decode(output[0], skip_special_tokens=True).strip()

    truncated = generate_by_hand(ids[: limit - 1] + [tokenizer.eos_token_id])
    assert truncated != generate_by_hand(ids + [tokenizer.eos_token_id])
    assert generate_predictions(model, tokenizer, [long_text], max_input_length=limit, max_new_tokens=8) == [truncated]


def test_decoding_says_what_ran(caplog, tiny_peft):
    assert Decoding().describe().startswith("greedy decoding")
    assert Decoding(num_beams=4, temperature=0.3).describe() == (
        "beam search with 4 beams (temperature/top_k/top_p are set but do nothing without do_sample), at most 200 new tokens"
    )
    assert Decoding(num_beams=2, do_sample=True, top_k=5, max_new_tokens=9).describe() == (
        "beam sampling with 2 beams, sampling (temperature=1.0, top_k=5, top_p=1.0), at most 9 new tokens"
    )
    assert "temperature" not in DECODING_PRESETS["beam"].generate_kwargs()
    assert DECODING_PRESETS["sampling"].describe().startswith("sampling (temperature=0.7")
    model, tokenizer = tiny_peft
    with caplog.at_level(logging.INFO, logger="components.generation"):
        generate_predictions(model, tokenizer, TEXTS[:1], num_beams=2, max_new_tokens=3)
    assert "beam search with 2 beams" in caplog.text


@pytest.fixture(scope="module")
def fine_tuned_dir(tiny_peft, tiny_model_dir, tmp_path_factory):
    model, tokenizer = tiny_peft
    directory = tmp_path_factory.mktemp("fine-tuned")
    save_adapter(model, directory, str(tiny_model_dir), AdapterSettings(prompt_length=PROMPT_LENGTH), tokenizer)
    return directory


SAMPLE = ["--do-sample", "true"]
# Answers of 12 tokens, not the default 200 the untrained tiny model fills (its end token is rare): a tenth of the time.
SHORT, SHORT_ASKED = ["--max-new-tokens", "12"], dict(max_new_tokens=12)
# (options before, the option under test, the generate_predictions arguments the two together ask for): each option
# changes the answers from what the options before it give, and the command line gives what the arguments give.
CLI_OPTIONS = [
    ([], ["--max-new-tokens", "3"], dict(max_new_tokens=3)),
    (SHORT, ["--decoding", "beam"], dict(SHORT_ASKED, num_beams=4)),
    (SHORT, ["--decoding", "sampling"], dict(SHORT_ASKED, do_sample=True, temperature=0.7, top_k=50, top_p=0.95)),
    (SHORT, ["--num-beams", "3"], dict(SHORT_ASKED, num_beams=3)),
    (SHORT, SAMPLE, dict(SHORT_ASKED, do_sample=True)),
    (SHORT + SAMPLE, ["--temperature", "0.3"], dict(SHORT_ASKED, do_sample=True, temperature=0.3)),
    (SHORT + SAMPLE, ["--top-k", "2"], dict(SHORT_ASKED, do_sample=True, top_k=2)),
    (SHORT + SAMPLE, ["--top-p", "0.3"], dict(SHORT_ASKED, do_sample=True, top_p=0.3)),
    (SHORT + ["--decoding", "sampling"], ["--do-sample", "false"], dict(SHORT_ASKED, temperature=0.7, top_k=50, top_p=0.95)),
]


@pytest.mark.parametrize("before, option, asked", CLI_OPTIONS, ids=[" ".join(option) for _, option, _ in CLI_OPTIONS])
def test_the_command_line_answers_as_each_option_asks(fine_tuned_dir, before, option, asked):
    """``python -m tools.generate`` prints what generate_predictions gives the loaded model with the decoding
    each option asks for (spelled out here, not parsed); discriminating: without the option the answers differ."""
    model, tokenizer = load_finetuned(fine_tuned_dir)
    expected = generate_predictions(model, tokenizer, TEXTS, **asked)
    assert generation_main(["--model-dir", str(fine_tuned_dir), *before, *option, *TEXTS]) == expected
    assert generation_main(["--model-dir", str(fine_tuned_dir), *before, *TEXTS]) != expected


def test_the_command_line_generates_in_batches_of_batch_size(fine_tuned_dir, monkeypatch, capsys):
    """--batch-size 3 feeds generate 3 texts, then 1; by default 16 at a time (20 texts: 16, then 4). The output is
    the decoding's header, then each text with its answer."""
    batch_sizes = []

    def load_recording(path):
        model, tokenizer = load_finetuned(path)
        generate = model.generate
        model.generate = lambda input_ids, **kwargs: batch_sizes.append(len(input_ids)) or generate(input_ids=input_ids, **kwargs)
        return model, tokenizer

    monkeypatch.setattr(modeling, "load_finetuned", load_recording)
    predictions = generation_main(["--model-dir", str(fine_tuned_dir), "--batch-size", "3", "--max-new-tokens", "4", *TEXTS])
    assert batch_sizes == [3, 1]
    assert capsys.readouterr().out == "# greedy decoding, at most 4 new tokens\n" + "".join(
        f"> {text}\n{prediction}\n\n" for text, prediction in zip(TEXTS, predictions)
    )
    generation_main(["--model-dir", str(fine_tuned_dir), "--max-new-tokens", "1", *[f"{n}" for n in range(20)]])
    assert batch_sizes == [3, 1, 16, 4]


def test_the_command_line_cuts_inputs_where_the_model_was_trained_to_or_where_asked(fine_tuned_dir, tmp_path):
    """By default at the length adapter_config.json records (here 4), with --max-input-length where it says; each
    gives other answers than the others (and than the library's default of 100) on texts longer than both."""
    folder = shutil.copytree(fine_tuned_dir, tmp_path / "model")
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    (folder / "adapter_config.json").write_text(json.dumps({**config, "max_input_length": 4}), encoding="utf-8")
    model, tokenizer = load_finetuned(folder)
    answers = {length: generate_predictions(model, tokenizer, TEXTS, max_new_tokens=5, max_input_length=length) for length in (4, 7, 100)}
    assert len({tuple(texts) for texts in answers.values()}) == 3
    assert generation_main(["--model-dir", str(folder), "--max-new-tokens", "5", *TEXTS]) == answers[4]
    assert generation_main(["--model-dir", str(folder), "--max-new-tokens", "5", "--max-input-length", "7", *TEXTS]) == answers[7]


def test_the_command_line_refuses_a_missing_or_unloadable_model_directory(tmp_path, capsys):
    with pytest.raises(SystemExit) as usage:
        generation_main(["текст"])
    assert usage.value.code == 1 and "error: the following arguments are required: --model-dir\n" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        generation_main(["--model-dir", str(tmp_path / "absent"), "текст"])
    assert str(refused.value.code).startswith(f"error: {tmp_path / 'absent'}")


def test_stats_prints_the_published_figures(capsys):
    stats = stats_main([])
    assert (stats["total"], stats["trainable"]) == (740_047_872, 2_379_776)
    out = capsys.readouterr().out
    assert "740,047,872" in out and "2,379,776" in out and "0.32%" in out


def test_stats_counts_the_adapters_of_the_rank_and_prompt_length_asked_for(capsys):
    """ruT5-large's published shape, by hand: LoRA on q and v of 24 encoder blocks (self-attention) and 24 decoder
    blocks (self- and cross-attention), 144 projections of 1024 x 1024, r x (1024 + 1024) each; the prompt P x 1024."""
    base = 740_047_872 - 2_379_776
    stats = stats_main(["--lora-rank", "4", "--prompt-length", "10"])
    trainable = 144 * 4 * 2048 + 10 * 1024
    assert (stats["total"], stats["trainable"]) == (base + trainable, trainable)
    assert "LoRA r=4 on q/v + 10-token prompt" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        stats_main(["--help"])
    assert "\n    python -m tools.stats [--lora-rank R] [--prompt-length P]\n" in capsys.readouterr().out  # the docstring's layout kept


def test_adapter_settings_go_to_json_and_back_unchanged():
    """adapter_config.json's adapter fields: every setting by name, the targets as a JSON list, read back as the tuple."""
    settings = AdapterSettings(lora_rank=4, lora_alpha=8.0, lora_dropout=0.1, prompt_length=6, lora_targets=("q", "k", "v"))
    written = settings.to_dict()
    assert written == {"lora_rank": 4, "lora_alpha": 8.0, "lora_dropout": 0.1, "prompt_length": 6, "lora_targets": ["q", "k", "v"]}
    assert AdapterSettings.from_dict({**json.loads(json.dumps(written)), "base_model": "elsewhere"}) == settings
