"""A tiny ruT5-shaped model and tokenizer, built locally and deterministically.

The same T5 family and layout as ruT5-large (v1.0: ReLU feed-forward, relative
attention buckets, tied embeddings) at a size that trains on a 2-core CPU in
seconds, with a Unigram tokenizer trained on the shipped sample data. It is
written with ``save_pretrained`` and loaded back through ``from_pretrained``,
the path the real model takes, so the pipeline and the tests exercise real
loading code.

Like a real base model it knows the language but not the task: its weights are
pretrained (seeded, under a minute on one CPU thread) as a denoising autoencoder on the
sample texts: each text with some of its tokens deleted is mapped back to the whole
text (BART's token deletion). It never sees an instruction mapped to its answer; that
is left for the adapters to learn (data/tasks is a task they learn in a minute).

The build is cached under ``$RUT5_TINY_CACHE`` (default ``~/.cache/rut5-peft``),
keyed by the sample data and this spec, so it happens once per machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import string
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer, get_linear_schedule_with_warmup

from components.data import read_tsv, source_text
from components.settings import RUT5_LARGE_CONFIG, SAMPLE_DATA_DIR
from components.threads import cpu_threads

TINY_ARCHITECTURE = dict(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2)
TINY_VOCAB_SIZE = 1000
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2, the order T5Tokenizer expects
ALPHABET = list("абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ«»—–…№") + list(string.printable.strip())
SEED = 0
BUILD_VERSION = 3  # bump when the build changes in a way the spec below does not show
PRETRAIN_STEPS = 300
PRETRAIN_BATCH = 32
PRETRAIN_MAX_TOKENS = 48
PRETRAIN_DELETION = 0.15  # share of the tokens deleted from a text before the model restores it
PRETRAIN_LEARNING_RATE = 3e-3


def sample_corpus(train_tsv: Path) -> list[str]:
    frame = read_tsv(train_tsv)
    sources = [source_text(i, x) for i, x in zip(frame["instruction"], frame["input"])]
    return sources + frame["output"].tolist() + [t for t in frame["full_output"] if t]


def build_tiny_tokenizer(texts: list[str]) -> T5Tokenizer:
    """A T5 tokenizer (Unigram, metaspace) trained by SentencePiece on the sample texts.

    SentencePiece trains the same vocabulary every time for a given number of threads (the
    tokenizers library's Unigram trainer does not), so the tiny model is reproducible. Each
    number adds its threads' counts in an order of its own, so it is fixed here (one).
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=TINY_VOCAB_SIZE,
        model_type="unigram",
        character_coverage=1.0,
        normalization_rule_name="identity",
        required_chars="".join(ALPHABET),
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    assert [piece for piece, _ in vocab[:3]] == SPECIAL_TOKENS
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_tiny_config(tokenizer: T5Tokenizer) -> T5Config:
    layout = {k: RUT5_LARGE_CONFIG[k] for k in ("feed_forward_proj", "relative_attention_num_buckets", "tie_word_embeddings")}
    return T5Config(
        **layout,
        **TINY_ARCHITECTURE,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )


def pretrain_to_denoise(model: T5ForConditionalGeneration, tokenizer: T5Tokenizer, texts: list[str]) -> None:
    """Teach the random model the sample texts: restore each text from a copy with tokens deleted."""
    generator = torch.Generator().manual_seed(SEED)
    encoded = [tokenizer(text, max_length=PRETRAIN_MAX_TOKENS, truncation=True)["input_ids"] for text in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LEARNING_RATE)
    scheduler = get_linear_schedule_with_warmup(optimizer, PRETRAIN_STEPS // 15, PRETRAIN_STEPS)
    model.train()
    for _ in range(PRETRAIN_STEPS):
        picks = torch.randint(len(texts), (PRETRAIN_BATCH,), generator=generator).tolist()
        targets = [torch.tensor(encoded[i]) for i in picks]
        kept = [ids[(torch.rand(len(ids), generator=generator) >= PRETRAIN_DELETION) | (ids == tokenizer.eos_token_id)] for ids in targets]
        inputs = tokenizer.pad({"input_ids": [ids.tolist() for ids in kept]}, return_tensors="pt")
        labels = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=-100)
        loss = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    model.eval()


def _cache_key(train_tsv: Path) -> str:
    spec = json.dumps(
        [
            BUILD_VERSION,
            TINY_ARCHITECTURE,
            TINY_VOCAB_SIZE,
            SPECIAL_TOKENS,
            ALPHABET,
            SEED,
            PRETRAIN_STEPS,
            PRETRAIN_BATCH,
            PRETRAIN_MAX_TOKENS,
            PRETRAIN_DELETION,
            PRETRAIN_LEARNING_RATE,
        ],
        ensure_ascii=False,
    )
    return hashlib.sha256(spec.encode() + train_tsv.read_bytes()).hexdigest()[:12]


def cache_root() -> Path:
    return Path(os.environ.get("RUT5_TINY_CACHE") or Path.home() / ".cache" / "rut5-peft")


def build_tiny_model(train_tsv: str | Path = SAMPLE_DATA_DIR / "train.tsv") -> Path:
    """Build (once) and return the directory of the tiny model and tokenizer."""
    train_tsv = Path(train_tsv)
    target = cache_root() / f"tiny-rut5-{_cache_key(train_tsv)}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time: a process that waited here finds it built
        if (target / "config.json").exists():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            texts = sample_corpus(train_tsv)
            tokenizer = build_tiny_tokenizer(texts)
            torch.manual_seed(SEED)
            model = T5ForConditionalGeneration(build_tiny_config(tokenizer))
            with cpu_threads(1):
                pretrain_to_denoise(model, tokenizer, texts)
            model.save_pretrained(scratch)
            tokenizer.save_pretrained(scratch)
            os.rename(scratch, target)  # complete or absent, for a process that does not lock (or was killed mid-build)
            Path(scratch).mkdir()  # let TemporaryDirectory clean up its (now moved) path
    return target


if __name__ == "__main__":
    print(build_tiny_model())
