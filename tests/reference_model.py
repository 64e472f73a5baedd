"""An independent path to what the evaluate step reports: the plain Hugging Face model, driven by hand.

Nothing here calls the project's model assembly (``apply_peft``, ``PromptTuningEmbedding``,
``load_finetuned``, ``load_untuned``), its generation (``generate_predictions``), its source text
(``source_text``), tokenization (``preprocess``) or loss (``validation_loss``, the collator). The
encoder input is rebuilt from the documented rules instead (README, module docstrings): the
source text's format, truncation to ``max_input_length`` tokens, the prompt's vectors in front of
the token embeddings with ones in the mask, the prompt's initial vectors (vocabulary rows drawn
with seed 0), LoRA's update ``(alpha / r) B A`` folded into a copy of the weights; and it is fed
to ``T5ForConditionalGeneration`` as ``inputs_embeds``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

# PromptTuningEmbedding's documented initialisation: ids drawn uniformly from [3, 5000) (below 3:
# pad, eos, unk) with a generator seeded 0, independent of the global seed.
PROMPT_INIT_SEED, PROMPT_INIT_LOW, PROMPT_INIT_HIGH = 0, 3, 5000


def source(instruction: str, input_text: str) -> str:
    """The documented encoder text: the instruction, then the input on its own line when there is one."""
    instruction, input_text = instruction.strip(), input_text.strip()
    return instruction + ("\n" + input_text if input_text else "")


def adapter_tensors(path: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """An adapter file's tensors, and its prompt (the one tensor named ``*.prompt``)."""
    tensors = load_file(str(path))
    [prompt] = [tensor for name, tensor in tensors.items() if name.endswith(".prompt")]
    return tensors, prompt


class PlainModel:
    """A base model directory as Hugging Face loads it, with the adapter's effect added by hand."""

    def __init__(self, base_dir: str, tokenizer_dir: str):
        self.model = AutoModelForSeq2SeqLM.from_pretrained(base_dir).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.embeddings = self.model.get_input_embeddings().weight

    def initial_prompt(self, length: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(PROMPT_INIT_SEED)
        ids = torch.randint(PROMPT_INIT_LOW, min(PROMPT_INIT_HIGH, self.embeddings.shape[0]), (length,), generator=generator)
        return self.embeddings[ids].detach().clone()

    @torch.no_grad()
    def add_lora(self, tensors: dict[str, torch.Tensor], rank: int, alpha: float) -> None:
        """W += (alpha / rank) B A for every LoRA pair of an adapter file (named ``<linear>.lora_A`` / ``.lora_B``)."""
        pairs = sorted(name.removesuffix(".lora_A") for name in tensors if name.endswith(".lora_A"))
        assert pairs, "the adapter holds no LoRA tensors"
        for linear in pairs:
            weight = self.model.get_submodule(linear).weight
            weight.add_((tensors[f"{linear}.lora_B"] @ tensors[f"{linear}.lora_A"]) * (alpha / rank))

    def encode(self, text: str, max_length: int) -> list[int]:
        """Tokens of a text cut to ``max_length``, keeping the closing eos (what truncation means for T5)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[: max_length - 1] + [self.tokenizer.eos_token_id]

    def _encoder_inputs(self, token_ids: list[list[int]], prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded token embeddings behind the prompt, and the mask with ones for the prompt."""
        width = max(map(len, token_ids))
        ids = torch.tensor([row + [self.tokenizer.pad_token_id] * (width - len(row)) for row in token_ids])
        mask = torch.tensor([[1] * (len(prompt) + len(row)) + [0] * (width - len(row)) for row in token_ids])
        embeds = torch.cat([prompt.expand(len(token_ids), -1, -1), self.model.get_input_embeddings()(ids)], dim=1)
        return embeds, mask

    @torch.no_grad()
    def generate(self, texts: list[str], prompt: torch.Tensor, max_input_length: int, generate_kwargs: dict, batch_size: int = 16) -> list[str]:
        """One prediction per text. Batches as the README says the step forms them (sorted by token count,
        then cut into ``batch_size``), so that each row meets the same padding: the same arithmetic, the same tokens."""
        encoded = [self.encode(text, max_input_length) for text in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        predictions = [""] * len(texts)
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            embeds, mask = self._encoder_inputs([encoded[i] for i in indices], prompt)
            output = self.model.generate(inputs_embeds=embeds, attention_mask=mask, **generate_kwargs)
            for i, text in zip(indices, self.tokenizer.batch_decode(output, skip_special_tokens=True)):
                predictions[i] = text.strip()
        return predictions

    @torch.no_grad()
    def mean_token_loss(self, sources: list[str], targets: list[str], prompt: torch.Tensor, max_input_length: int, max_target_length: int) -> float:
        """Cross-entropy per reference token over all rows, row by row (no padding anywhere), summed in float64."""
        total, count = 0.0, 0
        for text, target in zip(sources, targets):
            embeds, mask = self._encoder_inputs([self.encode(text, max_input_length)], prompt)
            labels = torch.tensor([self.encode(target, max_target_length)])
            log_probs = self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels).logits.log_softmax(-1)
            total -= log_probs[0, torch.arange(labels.shape[1]), labels[0]].double().sum().item()
            count += labels.shape[1]
        return total / count


def protocol_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """The README's evaluation protocol restated on the libraries themselves (not components.metrics).

    sacreBLEU's corpus BLEU (13a) and chrF++; rouge_score F1 per pair and nltk's METEOR per pair on
    lowercase ``\\w+`` words with ё folded to е, Snowball Russian stems and no synonyms; means over pairs.
    """
    import re

    import sacrebleu
    from nltk.stem.snowball import SnowballStemmer
    from nltk.translate.meteor_score import single_meteor_score
    from rouge_score import rouge_scorer

    stemmer = SnowballStemmer("russian")

    def tokens(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower().replace("ё", "е"))

    class Stems:
        def tokenize(self, text: str) -> list[str]:
            return [stemmer.stem(word) for word in tokens(text)]

    class NoSynonyms:
        def synsets(self, *args, **kwargs) -> list:
            return []

    def pair_meteor(prediction: str, reference: str) -> float:
        if not tokens(prediction) or not tokens(reference):
            return 0.0
        return single_meteor_score(tokens(reference), tokens(prediction), preprocess=str, stemmer=stemmer, wordnet=NoSynonyms())

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=Stems())
    rouge = [scorer.score(reference, prediction) for prediction, reference in zip(predictions, references)]
    count = len(predictions)
    return {
        "bleu": sacrebleu.corpus_bleu(predictions, [references], tokenize="13a").score / 100,
        "chrf": sacrebleu.corpus_chrf(predictions, [references], word_order=2).score / 100,
        **{kind: sum(score[kind].fmeasure for score in rouge) / count for kind in ("rouge1", "rouge2", "rougeL")},
        "meteor": sum(pair_meteor(p, r) for p, r in zip(predictions, references)) / count,
    }
