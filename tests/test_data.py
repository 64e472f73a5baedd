from pathlib import Path

import pandas as pd
import pytest

from components.data import COLUMNS, TsvError, parse_tsv, preprocess, read_tsv, source_text

HEADER = "\t".join(COLUMNS)
TRICKY = pd.DataFrame(
    {
        "instruction": ["Раздели\tтабуляцией", "Ответь кратко", 'Скажи "да"'],
        "input": ["", "строка 1\nстрока 2", "NA"],
        "output": ['Он сказал: "Привет"', "1. ёж\n2. ель", "да"],
        "full_output": ["", "", "None"],
    }
)


def write(tmp_path: Path, text: str | bytes, name: str = "data.tsv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_pandas_written_tabs_newlines_and_quotes_read_back_exactly(tmp_path):
    path = tmp_path / "tricky.tsv"
    TRICKY.to_csv(path, sep="\t", index=False)
    frame = read_tsv(path)
    assert list(frame.columns) == list(COLUMNS)
    assert frame.to_dict("records") == TRICKY.to_dict("records")
    assert all(isinstance(v, str) for v in frame.to_numpy().ravel())


def test_bom_and_crlf_are_accepted_exactly(tmp_path):
    path = tmp_path / "lf.tsv"
    TRICKY.to_csv(path, sep="\t", index=False)
    windows = write(tmp_path, b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"), "crlf.tsv")
    assert read_tsv(windows).to_dict("records") == TRICKY.to_dict("records")


def test_missing_values_are_empty_strings_and_columns_are_reordered(tmp_path):
    path = write(tmp_path, "output\tinstruction\tfull_output\tinput\nответ\tвопрос\t\t\n")
    assert read_tsv(path).to_dict("records") == [{"instruction": "вопрос", "input": "", "output": "ответ", "full_output": ""}]


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "instruction\tinput\toutput\nа\tб\tв\n",
            "{path} line 1: missing column(s) full_output; the header must name instruction, input, output, full_output.",
        ),
        (
            "instruction\tinput\nа\tб\n",
            "{path} line 1: missing column(s) output, full_output; the header must name instruction, input, output, full_output.",
        ),
        (f"{HEADER}\nа\t\t\t\nб\t\tв\t\n", "1 invalid row(s): {path} line 2: empty output."),
        (f"{HEADER}\n \t\t\t\n", "1 invalid row(s): {path} line 2: empty instruction and output."),
        (f"{HEADER}\nа\t\tв\t\n \t\tв\t\n", "1 invalid row(s): {path} line 3: empty instruction."),
        (f"{HEADER}\nа\t\tв\t\nа\tб\tв\n", "1 invalid row(s): {path} line 3: expected 4 tab-separated fields, found 3."),
        (f"{HEADER}\n", "{path}: the header has no rows under it."),
        ("", "{path}: the file is empty; expected a header naming instruction, input, output, full_output and rows."),
        (
            f"{HEADER}\tlabel\nа\t\tв\t\t1\n",
            "{path} line 1: unexpected or repeated column(s) ['label']; the header must name exactly instruction, input, output, full_output.",
        ),
        (
            f"{HEADER}\tinput\nа\t\tв\t\t\n",
            "{path} line 1: unexpected or repeated column(s) ['instruction', 'input', 'output', 'full_output', 'input']; "
            "the header must name exactly instruction, input, output, full_output.",
        ),
        (
            f"{HEADER}\n" + "\t\tв\t\n" * 10,
            "10 invalid row(s): " + "; ".join(f"{{path}} line {line}: empty instruction" for line in range(2, 12)) + ".",
        ),
        (
            f"{HEADER}\n" + "\t\tв\t\n" * 12,
            "12 invalid row(s): " + "; ".join(f"{{path}} line {line}: empty instruction" for line in range(2, 12)) + "; and 2 more.",
        ),
    ],
)
def test_invalid_files_are_one_sentence_naming_the_file_and_line(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(TsvError) as error:
        read_tsv(path)
    assert str(error.value) == message.format(path=path)


def test_broken_quoting_and_a_folder_are_named(tmp_path):
    path = write(tmp_path, f'{HEADER}\n"а\t\tв\t\nб\t\tв\t\n')
    with pytest.raises(TsvError, match=rf"^{path} line \d: (broken quoting|.*expected 4 tab-separated fields)"):
        read_tsv(path)
    with pytest.raises(TsvError) as error:
        read_tsv(tmp_path)
    assert str(error.value) == f"{tmp_path}: is a directory, not a TSV file."


def test_blank_lines_hold_no_row_and_a_carriage_return_inside_a_field_stays(tmp_path):
    path = write(tmp_path, f'{HEADER}\nа\t\tв\t\n\n\nб\t"x\ry"\tг\t\n')
    assert read_tsv(path).to_dict("records") == [
        {"instruction": "а", "input": "", "output": "в", "full_output": ""},
        {"instruction": "б", "input": "x\ry", "output": "г", "full_output": ""},
    ]


def test_rows_are_numbered_by_physical_line_after_multiline_fields(tmp_path):
    path = write(tmp_path, f'{HEADER}\nа\t\t"строка\nещё строка"\t\nб\t\t\t\n')
    with pytest.raises(TsvError, match=r"line 4: empty output"):
        read_tsv(path)


def test_not_utf8_names_the_line(tmp_path):
    path = write(tmp_path, f"{HEADER}\nа\t\tб\t\n".encode() + "в\t\tг\t\n".encode("cp1251"))
    with pytest.raises(TsvError, match=rf"{path} line 3: not valid UTF-8"):
        read_tsv(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(TsvError, match=r"no such file"):
        read_tsv(tmp_path / "absent.tsv")


def test_parse_returns_every_invalid_row_and_keeps_the_valid_ones(tmp_path):
    path = write(tmp_path, f"{HEADER}\nа\t\tв\t\n\t\tв\t\nб\t\t\t\nд\tе\n\nг\t\tд\t\n")
    frame, invalid = parse_tsv(path)
    assert frame["instruction"].tolist() == ["а", "г"]
    assert [(row.line, row.reason) for row in invalid] == [
        (3, "empty instruction"),
        (4, "empty output"),
        (5, "expected 4 tab-separated fields, found 2"),
    ]


def test_source_text_joins_instruction_and_input():
    assert source_text("Переведи", "кошка") == "Переведи\nкошка"
    assert source_text(" Переведи ", "  ") == "Переведи"


def test_shipped_sample_data_is_valid():
    train, test = read_tsv("data/sample/train.tsv"), read_tsv("data/sample/test.tsv")
    assert len(train) >= 200 and len(test) >= 40
    assert (train["input"] == "").any() and (train["full_output"] == "").any()
    assert train["output"].str.contains("\n").any()
    assert not set(train["instruction"]) & set(test["instruction"])


def test_preprocess_truncates_and_tokenizes_sources_and_labels(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    frame = read_tsv("data/sample/train.tsv")
    dataset = preprocess(frame, tokenizer, max_input_length=12, max_target_length=7)
    assert len(dataset) == len(frame)
    assert set(dataset.column_names) == {"input_ids", "attention_mask", "labels"}
    assert max(len(ids) for ids in dataset["input_ids"]) == 12
    assert max(len(ids) for ids in dataset["labels"]) == 7
    sources = [source_text(i, x) for i, x in zip(frame["instruction"], frame["input"])]
    assert dataset["input_ids"] == [tokenizer(text, max_length=12, truncation=True)["input_ids"] for text in sources]
    # labels are the ``output`` column (ending in </s>), never ``full_output``, which differs from it on this data
    assert (frame["full_output"] != frame["output"]).all()
    assert dataset["labels"] == [tokenizer(text_target=text, max_length=7, truncation=True)["input_ids"] for text in frame["output"]]
    assert all(labels[-1] == tokenizer.eos_token_id for labels in dataset["labels"])
