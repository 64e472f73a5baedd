import pytest
import sacrebleu

from components.metrics import RussianTokenizer, compute_metrics, meteor, words


def test_words_lowercase_fold_yo_and_keep_cyrillic():
    assert words("Ёжик, ЁЛКА и 2 Ели!") == ["ежик", "елка", "и", "2", "ели"]


@pytest.mark.numeric
def test_rouge_on_hand_checked_russian_pairs():
    predictions = ["Кошка сидит на ковре.", "Москва — столица России"]
    references = ["Кошка сидела на ковре.", "Столица России — Москва."]
    # stems: кошк сид на ковр vs кошк сидел на ковр -> 3 of 4 shared unigrams, F1 = 0.75
    # pair 2: the same three stems in another order -> F1 = 1; bigrams: 1 of 2 shared ("столиц росс")
    assert RussianTokenizer().tokenize("Кошка сидит на ковре") == ["кошк", "сид", "на", "ковр"]
    scores = compute_metrics(predictions, references)
    assert scores["rouge1"] == pytest.approx((0.75 + 1.0) / 2)
    assert scores["rouge2"] == pytest.approx((1 / 3 + 0.5) / 2)  # pair 1: "на ковр" of 3 bigrams each
    assert scores["rougeL"] == pytest.approx((0.75 + 2 / 3) / 2)  # LCS 3 of 4, then 2 of 3


@pytest.mark.numeric
def test_published_tokenizer_deletes_cyrillic_and_ours_does_not():
    scores = compute_metrics(["Привет, мир"], ["Привет, мир"])
    assert scores["rouge1"] == pytest.approx(1.0)
    assert scores["published_rouge1"] == 0.0


@pytest.mark.numeric
def test_bleu_and_chrf_are_sacrebleu_on_a_0_to_1_scale():
    predictions = ["Кошка сидит на ковре у окна.", "Сегодня хорошая погода."]
    references = ["Кошка сидела на ковре у окна.", "Сегодня отличная погода."]
    scores = compute_metrics(predictions, references)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references], tokenize="13a").score / 100)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references], word_order=2).score / 100)
    assert 0 < scores["bleu"] < 1 and 0 < scores["chrf"] < 1


@pytest.mark.numeric
def test_meteor_hand_checked():
    # 4 identical words: P = R = 1, one chunk -> penalty 0.5 * (1/4)^3
    assert meteor("Кошка сидит на ковре", "кошка сидит на ковре") == pytest.approx(1 - 0.5 / 64)
    # ё/е and case fold, and a stem match counts like an exact one
    assert meteor("ЁЖ спит", "еж спит") == pytest.approx(1 - 0.5 / 8)
    assert meteor("кошки спят", "кошка спят") == pytest.approx(1 - 0.5 / 8)
    assert meteor("", "что-то") == meteor("что-то", "") == 0.0


def test_the_corpus_meteor_is_the_mean_of_the_pairs_and_the_published_rouge_stems_english():
    """compute_metrics' METEOR averages meteor() over the pairs; the published ROUGE (rouge_score's own tokenizer,
    Latin letters and digits) stems with Porter: "cats running" and "cat runs" share both stems."""
    predictions, references = ["Кошка сидит на ковре", "cats running"], ["кошка сидит на ковре", "cat runs"]
    scores = compute_metrics(predictions, references)
    assert scores["meteor"] == pytest.approx((meteor(*predictions[:1], *references[:1]) + meteor(predictions[1], references[1])) / 2)
    assert scores["published_rouge1"] == pytest.approx((0.0 + 1.0) / 2)  # the Russian pair has no Latin token to score


def test_empty_predictions_score_zero_and_break_nothing():
    scores = compute_metrics(["", ""], ["Ответ один.", "Ответ два."])
    assert all(value == 0.0 for value in scores.values())


def test_misaligned_or_empty_lists_are_refused():
    with pytest.raises(ValueError, match=r"^1 predictions for 2 references; the lists must align\.$"):
        compute_metrics(["а"], ["а", "б"])
    with pytest.raises(ValueError, match=r"^No predictions to score\.$"):
        compute_metrics([], [])
