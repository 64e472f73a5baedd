"""Reference-based metrics for Russian text, on a 0..1 scale.

The protocol (every run is scored exactly this way, so runs compare):

- ``bleu``: sacrebleu corpus BLEU, tokenize='13a', / 100.
- ``chrf``: sacrebleu corpus chrF++ (word_order=2), / 100.
- ``rouge1``, ``rouge2``, ``rougeL``: rouge_score F-measure averaged over pairs, tokens
  = lowercase, 'ё' -> 'е', regex ``\\w+``, each stemmed with Snowball Russian.
- ``meteor``: nltk ``single_meteor_score`` on the same lowercase ``\\w+`` tokens with the
  Snowball Russian stemmer and no synonyms, averaged over pairs.

``published_rouge*`` repeat ROUGE with rouge_score's default tokenizer, which keeps only
``[a-z0-9]`` and so deletes every Cyrillic word: that is how the published ROUGE-1
(0.0915) was computed, and these keys let a run be set beside the published table.
Nothing here downloads anything (``evaluate.load("rouge")`` would); the same protocol as an
``evaluate`` module, loaded from this repository, is ``components/ru_text_metrics``.

nltk (which rouge_score imports too) takes about a second to import, for its whole package: it is
imported where a score needs it, not by every step that only names the metrics.
"""

from __future__ import annotations

import re
from functools import cache
from statistics import fmean

import sacrebleu

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
PROTOCOL_METRICS = ("bleu", "chrf", *ROUGE_TYPES, "meteor")  # the keys every run is compared on
BEST_METRICS = ("validation_loss", *(f"validation_{m}" for m in PROTOCOL_METRICS))  # what can pick a run's best adapter
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lowercase ``\\w+`` tokens with 'ё' folded into 'е'."""
    return _WORD.findall(text.lower().replace("ё", "е"))


@cache
def _snowball():
    from nltk.stem.snowball import SnowballStemmer

    return SnowballStemmer("russian")


@cache
def stem(word: str) -> str:
    """Snowball Russian, cached: stemming dominates metric time otherwise."""
    return _snowball().stem(word)


class RussianTokenizer:
    """The tokenizer rouge_score is given: words() then Snowball stems."""

    def tokenize(self, text: str) -> list[str]:
        return [stem(w) for w in words(text)]


class CachedStemmer:
    """The ``stemmer`` nltk's METEOR calls as ``.stem(word)``."""

    def stem(self, word: str) -> str:
        return stem(word)


class NoSynonyms:
    """Stands in for WordNet: English WordNet has no Russian words, and it cannot be downloaded here."""

    def synsets(self, *args, **kwargs) -> list:
        return []


def rouge(predictions: list[str], references: list[str], tokenizer=None) -> dict[str, float]:
    """Mean ROUGE F-measures; ``tokenizer=None`` is rouge_score's default (Latin and digits only)."""
    from rouge_score import rouge_scorer

    if tokenizer is None:
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    else:
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=tokenizer)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {kind: fmean([s[kind].fmeasure for s in scores]) for kind in ROUGE_TYPES}


def meteor(prediction: str, reference: str) -> float:
    from nltk.translate.meteor_score import single_meteor_score

    # nltk scores an empty side 0; preprocess=str: words() has already lowercased and folded ё.
    return single_meteor_score(words(reference), words(prediction), preprocess=str, stemmer=CachedStemmer(), wordnet=NoSynonyms())


def compute_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Every metric of the protocol, 0..1, over aligned prediction/reference lists."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references; the lists must align.")
    if not predictions:
        raise ValueError("No predictions to score.")
    results = {
        "bleu": sacrebleu.corpus_bleu(predictions, [references], tokenize="13a").score / 100,
        "chrf": sacrebleu.corpus_chrf(predictions, [references], word_order=2).score / 100,
        **rouge(predictions, references, RussianTokenizer()),
        "meteor": fmean([meteor(p, r) for p, r in zip(predictions, references)]),
    }
    results.update({f"published_{k}": v for k, v in rouge(predictions, references).items()})
    return results
