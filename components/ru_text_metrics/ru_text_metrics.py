"""The project's evaluation protocol for Russian text as a Hugging Face ``evaluate`` metric.

    import evaluate
    scores = evaluate.load("components/ru_text_metrics").compute(predictions=[...], references=[...])

A thin wrapper: the scores are computed by ``compute_metrics`` of ``components/metrics.py``,
which this folder holds as a link (``metrics.py``). ``evaluate.load`` copies a local metric
script, and the files it imports relatively, into its own cache before importing them, so
the relative import below travels with the copy: the module loads from any working
directory, with the Hugging Face Hub unreachable, and its cache key changes whenever
``components/metrics.py`` does. evaluate's import scanner reads one ``import`` per line.
"""

import datasets
import evaluate

from .metrics import compute_metrics

_DESCRIPTION = """\
Reference-based scores for Russian text on a 0..1 scale (higher is better), each
computed exactly one way so that runs compare:

- bleu: sacreBLEU corpus BLEU with its 13a tokenizer (which keeps Cyrillic), divided by
  100. Counts shared word n-grams (1..4) with a brevity penalty; harsh on Russian
  inflection, where one changed ending breaks a match.
- chrf: sacreBLEU chrF++ (character n-grams up to 6 plus word uni- and bigrams), divided
  by 100. Credits shared word stems, so it suits Russian morphology best; the project
  picks its registered model by it.
- rouge1, rouge2, rougeL: rouge_score F-measure of shared unigrams, bigrams and the
  longest common subsequence, averaged over pairs. Tokens: lowercase, 'ё' folded into
  'е', regex \\w+, each stemmed with NLTK's Snowball Russian stemmer.
- meteor: NLTK's single_meteor_score on the same tokens, averaged over pairs, with exact
  and stem matches and no synonyms (English WordNet has no Russian words).

Published-table keys:

- published_rouge1, published_rouge2, published_rougeL: the same ROUGE with rouge_score's
  default tokenizer, which keeps only [a-z0-9] and so deletes every Cyrillic word. That
  is how the reference results for ruT5-large with LoRA + prompt tuning (ROUGE-1 0.0915)
  were computed: these keys set a run beside that table. Two Russian texts without
  Latin letters or digits score 0 here, whatever they say; do not use them to compare
  models.

Limitations: all scores are surface overlap with one reference per prediction; they do
not judge whether an answer is true or helpful. Nothing is downloaded at run time.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of str): generated texts.
    references (list of str): one reference text per prediction, aligned with predictions.
Returns:
    dict of float, 0..1: bleu, chrf, rouge1, rouge2, rougeL, meteor, published_rouge1,
    published_rouge2, published_rougeL (described above).
Examples:
    >>> metric = evaluate.load("components/ru_text_metrics")
    >>> scores = metric.compute(predictions=["Москва — столица России."], references=["Столица России — Москва."])
    >>> scores["rouge1"], scores["published_rouge1"]
    (1.0, 0.0)
"""

_CITATION = """\
@inproceedings{papineni-etal-2002-bleu, title = {BLEU: a Method for Automatic Evaluation of Machine Translation},
  author = {Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing}, booktitle = {ACL}, year = {2002}}
@inproceedings{popovic-2017-chrf, title = {chrF++: words helping character n-grams}, author = {Popovi{\\'c}, Maja},
  booktitle = {Proceedings of the Second Conference on Machine Translation}, year = {2017}}
@inproceedings{lin-2004-rouge, title = {ROUGE: A Package for Automatic Evaluation of Summaries}, author = {Lin, Chin-Yew},
  booktitle = {Text Summarization Branches Out}, year = {2004}}
@inproceedings{banerjee-lavie-2005-meteor, title = {METEOR: An Automatic Metric for MT Evaluation with Improved Correlation
  with Human Judgments}, author = {Banerjee, Satanjeev and Lavie, Alon}, booktitle = {ACL Workshop on Intrinsic and
  Extrinsic Evaluation Measures}, year = {2005}}
@inproceedings{post-2018-call, title = {A Call for Clarity in Reporting BLEU Scores}, author = {Post, Matt},
  booktitle = {Proceedings of the Third Conference on Machine Translation}, year = {2018}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RuTextMetrics(evaluate.Metric):
    """BLEU, chrF++, ROUGE-1/2/L and METEOR for Russian, plus the published-table ROUGE."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            codebase_urls=["https://github.com/mjpost/sacrebleu", "https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        return compute_metrics(predictions, references)
