"""The dataset's TSV schema: reading, validation, source text and tokenization.

lksy/ru_instruct_gpt4 has four text columns. Files are TSV as pandas writes them
(fields with tabs, newlines or quotes are quoted, quotes doubled). Every problem a
user can cause is reported with the file and the physical line it starts on.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.errors import UserError
from components.settings import TokenizationSettings

COLUMNS = ("instruction", "input", "output", "full_output")
SPLITS = ("train", "validation", "test")
TOKENIZATION_FILE = "tokenization.json"  # written next to the tokenized splits: which tokenizer, which lengths
REQUIRED_NONEMPTY = ("instruction", "output")
MAX_LISTED_ROWS = 10


class TsvError(UserError, ValueError):
    """A TSV file the pipeline cannot use; the message names the file and line."""


@dataclass(frozen=True)
class InvalidRow:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path} line {self.line}: {self.reason}"


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TsvError(f"{path}: no such file; check the TSV path.") from None
    except IsADirectoryError:
        raise TsvError(f"{path}: is a directory, not a TSV file.") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise TsvError(f"{path} line {line}: not valid UTF-8 (byte {error.start}); save the file as UTF-8.") from None
    # A file converted to CRLF as a whole has CRLF inside quoted fields too; normalise
    # so that it reads exactly like its LF original.
    return text.replace("\r\n", "\n")


def parse_tsv(path: str | Path) -> tuple[pd.DataFrame, list[InvalidRow]]:
    """Read a dataset TSV file: the valid rows, and the rows that are not.

    Whole-file problems (missing file, not UTF-8, bad header, broken quoting, no
    rows) raise :class:`TsvError`. Row problems (wrong number of fields, empty
    instruction or output) are returned as :class:`InvalidRow` so the caller can
    fail on them or skip them knowingly. Values are ``str``; missing values are ``''``.
    """
    path = Path(path)
    reader = csv.reader(io.StringIO(_decode(path), newline=""), delimiter="\t", quotechar='"', strict=True)
    records: list[tuple[int, list[str]]] = []
    try:
        next_line = 1
        for fields in reader:
            if fields:  # a blank line holds no record
                records.append((next_line, fields))
            next_line = reader.line_num + 1
    except csv.Error as error:
        raise TsvError(f"{path} line {reader.line_num}: broken quoting ({error}); quote fields as pandas.to_csv does.") from None
    if not records:
        raise TsvError(f"{path}: the file is empty; expected a header naming {', '.join(COLUMNS)} and rows.")

    header_line, header = records[0]
    header = [name.strip() for name in header]
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        raise TsvError(f"{path} line {header_line}: missing column(s) {', '.join(missing)}; the header must name {', '.join(COLUMNS)}.")
    unknown = [name for name in header if name not in COLUMNS]
    if unknown or len(set(header)) != len(header):
        raise TsvError(
            f"{path} line {header_line}: unexpected or repeated column(s) {unknown or header}; the header must name exactly {', '.join(COLUMNS)}."
        )
    if len(records) == 1:
        raise TsvError(f"{path}: the header has no rows under it.")

    order = [header.index(name) for name in COLUMNS]
    rows, invalid = [], []
    for line, fields in records[1:]:
        if len(fields) != len(header):
            invalid.append(InvalidRow(str(path), line, f"expected {len(header)} tab-separated fields, found {len(fields)}"))
            continue
        row = [fields[i] for i in order]
        empty = [name for name, value in zip(COLUMNS, row) if name in REQUIRED_NONEMPTY and not value.strip()]
        if empty:
            invalid.append(InvalidRow(str(path), line, f"empty {' and '.join(empty)}"))
            continue
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS), dtype=str), invalid


def describe_invalid_rows(invalid: list[InvalidRow]) -> str:
    shown = "; ".join(str(row) for row in invalid[:MAX_LISTED_ROWS])
    more = f"; and {len(invalid) - MAX_LISTED_ROWS} more" if len(invalid) > MAX_LISTED_ROWS else ""
    return f"{len(invalid)} invalid row(s): {shown}{more}"


def read_tsv(path: str | Path) -> pd.DataFrame:
    """Read a dataset TSV file strictly: any invalid row raises :class:`TsvError`."""
    frame, invalid = parse_tsv(path)
    if invalid:
        raise TsvError(describe_invalid_rows(invalid) + ".")
    return frame


def source_text(instruction: str, input_text: str) -> str:
    """The encoder's text: the instruction, then the input on its own line when there is one."""
    instruction, input_text = instruction.strip(), input_text.strip()
    return f"{instruction}\n{input_text}" if input_text else instruction


def preprocess(
    frame: pd.DataFrame,
    tokenizer,
    max_input_length: int = TokenizationSettings.max_input_length,
    max_target_length: int = TokenizationSettings.max_target_length,
):
    """Tokenize a split: ``input_ids``/``attention_mask`` from the source text, ``labels`` from ``output``.

    Returns a ``datasets.Dataset`` (Arrow), tokenized in batches by the fast tokenizer.
    """
    from datasets import Dataset

    def tokenize(batch: dict) -> dict:
        sources = [source_text(i, x) for i, x in zip(batch["instruction"], batch["input"])]
        encoded = tokenizer(sources, max_length=max_input_length, truncation=True)
        encoded["labels"] = tokenizer(text_target=batch["output"], max_length=max_target_length, truncation=True)["input_ids"]
        return encoded

    dataset = Dataset.from_pandas(frame[list(COLUMNS)].reset_index(drop=True), preserve_index=False)
    return dataset.map(tokenize, batched=True, batch_size=1000, remove_columns=list(COLUMNS), desc="tokenize")
