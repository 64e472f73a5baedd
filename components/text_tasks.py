"""Russian text-analysis instructions whose answers a rule computes: data the tiny model can learn.

The tiny local model (components/tiny.py) is pretrained on the texts of data/sample and knows
no task. Each row here asks a question about one sentence of those texts, and a rule
computes the answer from that sentence alone:

    Определи тип предложения по цели высказывания.   Вопросительное. / Побудительное. / Повествовательное.
    Какой знак стоит в конце текста?                 Точка. / Вопросительный знак. / Восклицательный знак. / Знака нет.
    Есть ли в тексте цифры? (запятые? кавычки?)      Да. / Нет.

So fine-tuning has something to learn in a minute on a CPU, and a pipeline that does not learn
shows it: the untuned base never answers in this form. Every answer is balanced across its
labels within a task, so always giving one answer per question scores well below a model
that reads the sentence. The rows are in the dataset's schema (``full_output`` explains the
answer) and are written to ``data/tasks/`` by

    python -m tools.text_tasks

deterministically; a test checks that the shipped files are what this module writes.
No test sentence appears in train.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.data import COLUMNS, read_tsv
from components.settings import PROJECT_ROOT, SAMPLE_DATA_DIR

TASKS_DIR = PROJECT_ROOT / "data" / "tasks"
SEED = 0
TEST_SENTENCES = 0.2  # share of the sentences kept for the test split
MAX_ROWS_PER_LABEL = {"train": 60, "test": 8}
MIN_WORDS, MAX_WORDS = 3, 12
SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
WORD = re.compile(r"[\w-]+")
# Every imperative verb that starts a sentence of the sample texts: the rule needs no guessing.
IMPERATIVES = frozenset(
    "Будьте Варите Взбейте Влейте Возьми Вставь Выдели Вырази Высыпайтесь Вычисли Гуляйте Дай Дайте Делайте Добавьте "
    "Доведите Жарьте Закрой Залейте Заложите Занимайтесь Извлеки Используйте Исправь Классифицируй Назови Найди Напиши "
    "Обжарьте Образуй Объясни Определи Отнеси Переберите Переведи Перейдите Перепиши Перескажи Перефразируй Перечисли "
    "Подбери Подскажи Поставь Посчитай Преврати Предложи Преобразуй Приведи Придумай Пришлите Прочитай Раздели Расставь "
    "Растолкуй Реши Сварите Сделай Снимите Сократи Составь Составьте Сочини Спите Сравни Укажи Упрости Учите".split()
)


@dataclass(frozen=True)
class Task:
    """A question about a sentence: its wordings, and the rule that answers it with an explanation."""

    name: str
    instructions: tuple[str, ...]
    answer: Callable[[str], tuple[str, str]]  # sentence -> (output, full_output)


def sentence_purpose(sentence: str) -> tuple[str, str]:
    first_word = WORD.findall(sentence)[0]
    if sentence.endswith("?"):
        return "Вопросительное.", "Предложение заканчивается вопросительным знаком: это вопрос."
    if first_word in IMPERATIVES:
        return "Побудительное.", f"Предложение побуждает к действию: «{first_word}» — глагол в повелительном наклонении."
    return "Повествовательное.", "Предложение сообщает о чём-то и не содержит вопроса или побуждения."


FINAL_MARKS = {".": "Точка.", "?": "Вопросительный знак.", "!": "Восклицательный знак.", "…": "Многоточие."}


def final_mark(sentence: str) -> tuple[str, str]:
    mark = FINAL_MARKS.get(sentence[-1])
    if mark is None:
        return "Знака нет.", f"Текст заканчивается на «{sentence[-1]}», знака препинания в конце нет."
    return mark, f"Последний символ текста — «{sentence[-1]}»."


def has(description: str, pattern: str) -> Callable[[str], tuple[str, str]]:
    def answer(sentence: str) -> tuple[str, str]:
        found = re.findall(pattern, sentence)
        if found:
            return "Да.", f"В тексте есть {description}: {' '.join(dict.fromkeys(found))}"
        return "Нет.", f"В тексте нет ни одного символа из группы «{description}»."

    return answer


TASKS = (
    Task("purpose", ("Определи тип предложения по цели высказывания.", "Какое это предложение по цели высказывания?"), sentence_purpose),
    Task("final_mark", ("Какой знак стоит в конце текста?", "Назови знак препинания в конце текста."), final_mark),
    Task("digits", ("Есть ли в тексте цифры?", "Встречаются ли в тексте цифры?"), has("цифры", r"\d")),
    Task("commas", ("Есть ли в тексте запятые?", "Стоит ли в тексте хотя бы одна запятая?"), has("запятые", r",")),
    Task("quotes", ("Есть ли в тексте кавычки?", "Встречаются ли в тексте кавычки-«ёлочки»?"), has("кавычки", r"[«»]")),
)


def sentences(train_tsv: Path = SAMPLE_DATA_DIR / "train.tsv") -> list[str]:
    """The distinct sentences of the sample texts (instructions, inputs, outputs) of a few words, sorted."""
    frame = read_tsv(train_tsv)
    texts = [text for column in ("instruction", "input", "output", "full_output") for text in frame[column] if text]
    found = {
        sentence
        for text in texts
        for line in text.splitlines()
        for sentence in SENTENCE_END.split(line.strip())
        if MIN_WORDS <= len(sentence.split()) <= MAX_WORDS and "\t" not in sentence and re.search("[а-яё]", sentence)
    }
    return sorted(found)


def task_rows(pool: list[str], max_per_label: int, rng: random.Random) -> list[dict]:
    """For every task, up to ``max_per_label`` sentences of each answer, so no answer dominates a task."""
    rows = []
    for task in TASKS:
        by_label: dict[str, list[str]] = {}
        for sentence in pool:
            by_label.setdefault(task.answer(sentence)[0], []).append(sentence)
        for label in sorted(by_label):
            for sentence in rng.sample(by_label[label], min(max_per_label, len(by_label[label]))):
                output, full_output = task.answer(sentence)
                rows.append(dict(zip(COLUMNS, (rng.choice(task.instructions), sentence, output, full_output), strict=True)))
    rng.shuffle(rows)
    return rows


def make_splits(seed: int = SEED) -> dict[str, pd.DataFrame]:
    rng = random.Random(seed)
    pool = sentences()
    rng.shuffle(pool)
    cut = int(len(pool) * TEST_SENTENCES)
    pools = {"train": pool[cut:], "test": pool[:cut]}
    return {name: pd.DataFrame(task_rows(pools[name], MAX_ROWS_PER_LABEL[name], rng)) for name in ("train", "test")}


def write_splits(directory: Path = TASKS_DIR) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in make_splits().items():
        paths[name] = directory / f"{name}.tsv"
        frame.to_csv(paths[name], sep="\t", index=False)
    return paths
