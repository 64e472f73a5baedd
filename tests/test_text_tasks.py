"""The learnable task data: the shipped files are what the generator writes, and its rules answer right."""

import pytest

from components.data import read_tsv
from components.text_tasks import TASKS_DIR, final_mark, has, make_splits, sentence_purpose
from tools.text_tasks import main


def test_the_shipped_files_are_what_the_generator_writes():
    for name, frame in make_splits().items():
        assert (TASKS_DIR / f"{name}.tsv").read_text(encoding="utf-8") == frame.to_csv(sep="\t", index=False), name


def test_the_command_writes_the_shipped_files_where_it_is_told(tmp_path, capsys):
    """Into folders it makes, and again over its own files."""
    folder = tmp_path / "new" / "tasks"
    for _ in range(2):
        main(["--output-dir", str(folder)])
        for name in ("train", "test"):
            assert (folder / f"{name}.tsv").read_bytes() == (TASKS_DIR / f"{name}.tsv").read_bytes(), name
    assert f"train: 687 rows in {folder / 'train.tsv'}" in capsys.readouterr().out


def test_no_test_sentence_is_trained_on():
    train, test = read_tsv(TASKS_DIR / "train.tsv"), read_tsv(TASKS_DIR / "test.tsv")
    assert not set(train["input"]) & set(test["input"])
    assert len(train) > 500 and len(test) > 80


@pytest.mark.parametrize(
    "sentence, purpose, mark",
    [
        ("Как пишется «не» с глаголами?", "Вопросительное.", "Вопросительный знак."),
        ("Объясни значение фразеологизма.", "Побудительное.", "Точка."),
        ("Снег на проводах.", "Повествовательное.", "Точка."),
        ("Какой чудесный день!", "Повествовательное.", "Восклицательный знак."),
        ("Птицы к югу все спешат,", "Повествовательное.", "Знака нет."),
    ],
)
def test_the_rules(sentence, purpose, mark):
    assert sentence_purpose(sentence)[0] == purpose
    assert final_mark(sentence)[0] == mark


def test_presence_questions_name_what_they_found():
    digits = has("цифры", r"\d")
    assert digits("В 1997 году.") == ("Да.", "В тексте есть цифры: 1 9 7")
    assert digits("Без чисел.")[0] == "Нет."
