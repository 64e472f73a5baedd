"""``components/tiny.py``: the tiny ruT5-shaped model's tokenizer, layout and pretraining, and its cached build."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

from components import tiny
from components.settings import RUT5_LARGE_CONFIG, SAMPLE_DATA_DIR
from components.threads import cpu_threads


def test_the_tiny_tokenizer_is_reproducible_quiet_and_keeps_every_character_as_written(capfd):
    """No character of the sample becomes <unk>, none is normalized (… stays …, № stays №), and SentencePiece's
    training log stays off the terminal."""
    texts = tiny.sample_corpus(SAMPLE_DATA_DIR / "train.tsv")
    first, second = tiny.build_tiny_tokenizer(texts), tiny.build_tiny_tokenizer(texts)
    assert capfd.readouterr() == ("", "")
    assert first.get_vocab() == second.get_vocab() and len(first) == 1000
    assert (first.pad_token_id, first.eos_token_id, first.unk_token_id) == (0, 1, 2)
    for text in [*texts, "Ёжик в тумане… № 5 — «да»."]:
        ids = first(text)["input_ids"]
        assert first.unk_token_id not in ids and first.decode(ids, skip_special_tokens=True) == " ".join(text.split()), text


def settings_of(config: T5Config) -> dict:
    """The config's settings, without the two that ``save_pretrained`` adds (the model class and its dtype)."""
    return {key: value for key, value in config.to_diff_dict().items() if key not in ("architectures", "dtype")}


def test_the_tiny_model_has_the_layout_of_rut5_large_at_a_small_size(tiny_model_dir):
    tokenizer = T5Tokenizer.from_pretrained(tiny_model_dir)
    config = tiny.build_tiny_config(tokenizer)
    assert (config.feed_forward_proj, config.relative_attention_num_buckets, config.tie_word_embeddings) == ("relu", 32, True)
    assert {key: RUT5_LARGE_CONFIG[key] for key in ("feed_forward_proj", "relative_attention_num_buckets", "tie_word_embeddings")} == {
        "feed_forward_proj": "relu",
        "relative_attention_num_buckets": 32,
        "tie_word_embeddings": True,
    }
    assert (config.d_model, config.d_ff, config.d_kv, config.num_heads, config.num_layers, config.num_decoder_layers) == (64, 128, 16, 4, 2, 2)
    assert (config.vocab_size, config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (1000, 0, 1, 0)
    assert settings_of(T5Config.from_pretrained(tiny_model_dir)) == settings_of(config)  # the build saved it


PRETRAIN_STEPS = 30  # of the build's 300, enough to see each part of a step


def pretrain_recorded(tokenizer, texts: list[str], global_seed: int) -> dict:
    """A short pretraining of a fresh tiny model with each step's batch, loss, learning rate and gradient norm recorded;
    ``global_seed`` is torch's global RNG state after the model is made (which dropout draws from)."""
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(tiny.build_tiny_config(tokenizer))
    torch.manual_seed(global_seed)
    record = {"batches": [], "losses": [], "lrs": [], "norms": []}

    def batch(module, args, kwargs):
        record["batches"].append({name: kwargs[name].clone() for name in ("input_ids", "attention_mask", "labels")})

    def loss(module, args, kwargs, output):
        record["losses"].append(output.loss.item())

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            [group] = self.param_groups
            record["lrs"].append(group["lr"])
            record["norms"].append(torch.sqrt(sum(p.grad.pow(2).sum() for p in group["params"] if p.grad is not None)).item())
            return super().step(closure)

    model.register_forward_pre_hook(batch, with_kwargs=True)
    model.register_forward_hook(loss, with_kwargs=True)
    with pytest.MonkeyPatch.context() as patch, cpu_threads(1):
        patch.setattr(tiny, "PRETRAIN_STEPS", PRETRAIN_STEPS)
        patch.setattr(torch.optim, "AdamW", RecordingAdamW)
        tiny.pretrain_to_denoise(model, tokenizer, texts)
    record["eval_mode"] = not model.training
    return record


def is_subsequence(short: list[int], long: list[int]) -> bool:
    remaining = iter(long)
    return all(token in remaining for token in short)


def test_pretraining_restores_each_text_from_a_copy_with_some_of_its_tokens_deleted(tiny_model_dir):
    """Each step: 32 sample texts (at most 48 tokens, ending in </s>) as labels, each input its label with about 15 % of
    its tokens deleted but </s>; AdamW at 3e-3, warmed up linearly over the first 1/15 of the steps then decayed to 0,
    gradients clipped to norm 1. The draws come from the build's own seed, whatever torch's global RNG holds."""
    tokenizer = T5Tokenizer.from_pretrained(tiny_model_dir)
    texts = tiny.sample_corpus(SAMPLE_DATA_DIR / "train.tsv")
    encoded = {tuple(tokenizer(text, max_length=48, truncation=True)["input_ids"]) for text in texts}
    first = pretrain_recorded(tokenizer, texts, global_seed=1)
    assert first["eval_mode"] and len(first["batches"]) == PRETRAIN_STEPS
    kept = total = 0
    for step in first["batches"]:
        assert len(step["labels"]) == 32
        for ids, mask, labels in zip(step["input_ids"], step["attention_mask"], step["labels"]):
            target, source = labels[labels != -100].tolist(), ids[mask.bool()].tolist()
            assert tuple(target) in encoded and target[-1] == tokenizer.eos_token_id
            assert is_subsequence(source, target) and source[-1] == tokenizer.eos_token_id
            kept, total = kept + len(source) - 1, total + len(target) - 1
    assert 0.80 < kept / total < 0.90  # 15 % deleted: over these ~10,000 tokens, 4 standard deviations are 1.5 points

    warmup = PRETRAIN_STEPS // 15
    expected = [3e-3 * (step / warmup if step < warmup else (PRETRAIN_STEPS - step) / (PRETRAIN_STEPS - warmup)) for step in range(PRETRAIN_STEPS)]
    assert first["lrs"] == pytest.approx(expected, rel=1e-12)
    assert max(first["norms"]) <= 1.0 + 1e-5 and any(norm > 0.999 for norm in first["norms"])  # clipped at 1
    assert sum(first["losses"][-5:]) / 5 < sum(first["losses"][:5]) / 5 - 0.5  # it learns (here 7.3 nats to 6.5 over the 30 steps)

    second = pretrain_recorded(tokenizer, texts, global_seed=2)
    for mine, theirs in zip(first["batches"], second["batches"], strict=True):
        assert all(torch.equal(mine[name], theirs[name]) for name in mine)


def test_the_cache_is_under_the_home_folder_unless_rut5_tiny_cache_names_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RUT5_TINY_CACHE")
    assert tiny.cache_root() == tmp_path / ".cache" / "rut5-peft"
    monkeypatch.setenv("RUT5_TINY_CACHE", "")
    assert tiny.cache_root() == tmp_path / ".cache" / "rut5-peft"
    monkeypatch.setenv("RUT5_TINY_CACHE", str(tmp_path / "elsewhere"))
    assert tiny.cache_root() == tmp_path / "elsewhere"


def test_the_build_is_named_by_its_spec_and_its_data(tmp_path, monkeypatch):
    """A change to the build's settings, its alphabet or the sample data makes another build; the same ones find it."""
    sample = SAMPLE_DATA_DIR / "train.tsv"
    key = tiny._cache_key(sample)
    assert len(key) == 12 and int(key, 16) >= 0 and tiny._cache_key(sample) == key
    edited = tmp_path / "train.tsv"
    edited.write_bytes(sample.read_bytes()[:-1])  # one byte less
    assert tiny._cache_key(edited) != key
    for name, value in (
        ("BUILD_VERSION", tiny.BUILD_VERSION + 1),
        ("PRETRAIN_STEPS", 301),
        ("ALPHABET", [*tiny.ALPHABET, "ў"]),
        ("TINY_ARCHITECTURE", {**tiny.TINY_ARCHITECTURE, "d_ff": 256}),
    ):
        with monkeypatch.context() as changed:
            changed.setattr(tiny, name, value)
            assert tiny._cache_key(sample) != key, name


def test_a_build_pretrains_the_new_model_on_one_thread_in_a_scratch_folder_beside_the_cache(tmp_path, monkeypatch):
    """In a cache folder that does not exist yet; the scratch folder is in it, so that the finished build is renamed into
    place (atomic), not copied across file systems. A build found in the cache is returned without waiting on the lock."""
    cache = tmp_path / "not" / "yet"
    monkeypatch.setenv("RUT5_TINY_CACHE", str(cache))
    seen = {}

    def pretrain(model, tokenizer, texts):
        seen.update(model=model, tokenizer=tokenizer, texts=texts, threads=torch.get_num_threads(), cache=[p.name for p in cache.iterdir()])

    monkeypatch.setattr(tiny, "pretrain_to_denoise", pretrain)
    built = tiny.build_tiny_model()
    assert built.parent == cache and seen["threads"] == 1 and seen["texts"] == tiny.sample_corpus(SAMPLE_DATA_DIR / "train.tsv")
    assert len(seen["tokenizer"]) == 1000 and settings_of(seen["model"].config) == settings_of(tiny.build_tiny_config(seen["tokenizer"]))
    [scratch] = [name for name in seen["cache"] if not name.endswith(".lock")]
    assert scratch != built.name and not (cache / scratch).exists()
    saved = T5ForConditionalGeneration.from_pretrained(built)
    assert torch.equal(saved.shared.weight, seen["model"].shared.weight)  # the model pretraining was given is the one saved

    def locked(*args):
        raise AssertionError("the lock was taken for a model already built")

    monkeypatch.setattr(tiny.fcntl, "flock", locked)
    assert tiny.build_tiny_model() == built


def test_two_builds_of_the_tiny_model_at_once_pretrain_it_once(tmp_path, monkeypatch):
    """The second waits for the first and takes its build (the pretraining, replaced here by a counted pause, is 35 s).
    Two threads: flock locks an open file, so they exclude each other as two processes do."""
    pretrained = []

    def pretrain(model, tokenizer, texts):
        pretrained.append(threading.current_thread().name)
        time.sleep(1)

    monkeypatch.setenv("RUT5_TINY_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny, "pretrain_to_denoise", pretrain)
    built = {}
    builders = [threading.Thread(target=lambda n=n: built.setdefault(n, tiny.build_tiny_model()), name=f"builder {n}") for n in range(2)]
    for builder in builders:
        builder.start()
    for builder in builders:
        builder.join(timeout=60)
    assert len(pretrained) == 1 and built[0] == built[1] and (built[0] / "config.json").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([built[0].name, f"{built[0].name}.lock"])  # no scratch folder left


def test_a_build_that_dies_before_its_last_file_leaves_no_model_behind(tmp_path, monkeypatch):
    """The build is written in a scratch folder renamed into place when whole: a build stopped after the model's files
    but before the tokenizer's leaves nothing a later call would take for a built model, and that call builds it whole."""

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setenv("RUT5_TINY_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny, "pretrain_to_denoise", lambda model, tokenizer, texts: None)
    tokenizer_class = type(tiny.build_tiny_tokenizer(tiny.sample_corpus(tiny.SAMPLE_DATA_DIR / "train.tsv")))
    with monkeypatch.context() as dying:
        dying.setattr(tokenizer_class, "save_pretrained", killed)
        with pytest.raises(KeyboardInterrupt):
            tiny.build_tiny_model()
    assert [path.suffix for path in tmp_path.iterdir()] == [".lock"]
    built = tiny.build_tiny_model()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {path.name for path in built.iterdir()}
