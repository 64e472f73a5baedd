"""A rating session in SQLite: its items, raters, assignments and votes, none of them lost or counted twice.

One database file per session, in WAL mode with ``synchronous=FULL``: :meth:`RatingStore.record_vote`
returns only after the vote's transaction is on disk, so a server killed at any moment keeps every
vote it acknowledged. A vote's key is (rater, item): a repeated submission (a double click, a resent
request) finds its vote stored and changes nothing. Every call opens its own connection, so raters
served by several threads or processes never overwrite each other; SQLite's lock serialises the writes.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from components.errors import UserError
from components.human_eval.session import Assignment, PairItem
from components.human_eval.statistics import CHOICES, Vote

SCHEMA = f"""
CREATE TABLE items (id TEXT PRIMARY KEY, row INTEGER NOT NULL, instruction TEXT NOT NULL, input TEXT NOT NULL, reference TEXT NOT NULL,
                    system_a TEXT NOT NULL, answer_a TEXT NOT NULL, system_b TEXT NOT NULL, answer_b TEXT NOT NULL);
CREATE TABLE raters (name TEXT PRIMARY KEY, token TEXT NOT NULL UNIQUE);
CREATE TABLE assignments (rater TEXT NOT NULL REFERENCES raters(name), position INTEGER NOT NULL, item_id TEXT NOT NULL REFERENCES items(id),
                          left_system TEXT NOT NULL, PRIMARY KEY (rater, position), UNIQUE (rater, item_id));
CREATE TABLE votes (rater TEXT NOT NULL, item_id TEXT NOT NULL, choice TEXT NOT NULL CHECK (choice IN ({", ".join(repr(c) for c in CHOICES)})),
                    comment TEXT NOT NULL DEFAULT '', voted_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                    PRIMARY KEY (rater, item_id), FOREIGN KEY (rater, item_id) REFERENCES assignments(rater, item_id));
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# The ratings TSV's columns (before "preferred"): the vote, the order its rater saw, the item's texts.
RATING_COLUMNS = (
    "item",
    "row",
    "rater",
    "position",
    "left_system",
    "right_system",
    "choice",
    "comment",
    "voted_at",
    "instruction",
    "input",
    "reference",
    "system_a",
    "answer_a",
    "system_b",
    "answer_b",
)
BUSY_TIMEOUT_S = 30  # how long a write waits for another's lock before failing


@dataclass(frozen=True)
class Shown:
    """An assignment as the rater's page shows it: the item's texts, its answers in the drawn left/right order."""

    position: int
    item_id: str
    instruction: str
    input: str
    left_answer: str
    right_answer: str


class RatingStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no rating session there; create one first.")

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)) as connection:
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            yield connection

    @classmethod
    def create(cls, path: Path, items: list[PairItem], assignments: list[Assignment], settings: dict[str, str]) -> RatingStore:
        """A new session file; every rater of ``assignments`` gets an unguessable token, and the results view one of its own."""
        path = Path(path)
        if path.exists():
            raise UserError(f"{path} already exists: a session is never overwritten; choose another file.")
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path, isolation_level=None)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")  # stays set in the file
            connection.executescript(f"BEGIN; {SCHEMA}")
            connection.executemany(
                "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(i.id, i.row, i.instruction, i.input, i.reference, i.system_a, i.answer_a, i.system_b, i.answer_b) for i in items],
            )
            raters = sorted({a.rater for a in assignments})
            connection.executemany("INSERT INTO raters VALUES (?, ?)", [(name, secrets.token_urlsafe(16)) for name in raters])
            connection.executemany(
                "INSERT INTO assignments VALUES (?, ?, ?, ?)", [(a.rater, a.position, a.item_id, a.left_system) for a in assignments]
            )
            connection.executemany("INSERT INTO settings VALUES (?, ?)", [*settings.items(), ("results_token", secrets.token_urlsafe(16))])
            connection.execute("COMMIT")
        return cls(path)

    def tokens(self) -> dict[str, str]:
        """Rater name -> the token of their link."""
        with self._connection() as connection:
            return dict(connection.execute("SELECT name, token FROM raters ORDER BY name"))

    def setting(self, key: str) -> str:
        with self._connection() as connection:
            [(value,)] = connection.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchall()
        return value

    def rater_of(self, token: str) -> str | None:
        with self._connection() as connection:
            found = connection.execute("SELECT name FROM raters WHERE token = ?", (token,)).fetchone()
        return found[0] if found else None

    def progress(self, rater: str) -> tuple[int, int]:
        """(items voted, items assigned) of a rater."""
        with self._connection() as connection:
            [(done, total)] = connection.execute(
                "SELECT (SELECT count(*) FROM votes WHERE rater = ?), (SELECT count(*) FROM assignments WHERE rater = ?)", (rater, rater)
            )
        return done, total

    def next_item(self, rater: str) -> Shown | None:
        """The rater's first assignment without a vote (where a returning rater continues); None when all are voted."""
        with self._connection() as connection:
            found = connection.execute(
                "SELECT a.position, i.id, i.instruction, i.input, a.left_system, i.system_a, i.answer_a, i.answer_b FROM assignments a "
                "JOIN items i ON i.id = a.item_id LEFT JOIN votes v ON v.rater = a.rater AND v.item_id = a.item_id "
                "WHERE a.rater = ? AND v.item_id IS NULL ORDER BY a.position LIMIT 1",
                (rater,),
            ).fetchone()
        if found is None:
            return None
        position, item_id, instruction, text, left_system, system_a, answer_a, answer_b = found
        left, right = (answer_a, answer_b) if left_system == system_a else (answer_b, answer_a)
        return Shown(position, item_id, instruction, text, left, right)

    def item_at(self, rater: str, position: int) -> str | None:
        """The item a rater was shown at ``position`` (the page posts positions: item ids name the systems)."""
        with self._connection() as connection:
            found = connection.execute("SELECT item_id FROM assignments WHERE rater = ? AND position = ?", (rater, position)).fetchone()
        return found[0] if found else None

    def record_vote(self, rater: str, item_id: str, choice: str, comment: str = "") -> bool:
        """Store a vote durably; True when it is new, False when this rater's vote on the item was already stored.

        A repeated submission keeps the first vote, so a resent request counts once.
        """
        if choice not in CHOICES:
            raise UserError(f"A vote is one of {', '.join(CHOICES)}, got {choice!r}.")
        with self._connection() as connection:
            try:
                inserted = connection.execute(
                    "INSERT OR IGNORE INTO votes (rater, item_id, choice, comment) VALUES (?, ?, ?, ?)", (rater, item_id, choice, comment)
                ).rowcount
            except sqlite3.IntegrityError:
                raise UserError(f"Item {item_id!r} is not assigned to rater {rater!r}.") from None
        return inserted == 1

    def all_progress(self) -> dict[str, tuple[int, int]]:
        """Rater name -> (items voted, items assigned)."""
        with self._connection() as connection:
            rows = connection.execute(
                "SELECT a.rater, count(v.item_id), count(*) FROM assignments a "
                "LEFT JOIN votes v ON v.rater = a.rater AND v.item_id = a.item_id GROUP BY a.rater ORDER BY a.rater"
            ).fetchall()
        return {rater: (done, total) for rater, done, total in rows}

    def items(self) -> list[PairItem]:
        with self._connection() as connection:
            rows = connection.execute("SELECT * FROM items ORDER BY row, id").fetchall()
        return [PairItem(*row) for row in rows]

    def _vote_rows(self, extra_columns: str = "") -> list[dict]:
        """One row per vote (rater order), with the left/right order its rater saw, plus ``extra_columns``."""
        with self._connection() as connection:
            connection.row_factory = sqlite3.Row
            rows = connection.execute(
                "SELECT v.item_id AS item, v.rater, a.left_system, "
                "CASE WHEN a.left_system = i.system_a THEN i.system_b ELSE i.system_a END AS right_system, v.choice"
                + extra_columns
                + " FROM votes v JOIN assignments a ON a.rater = v.rater AND a.item_id = v.item_id JOIN items i ON i.id = v.item_id "
                "ORDER BY v.rater, a.position"
            ).fetchall()
        return list(map(dict, rows))

    def ratings(self) -> list[dict[str, str | int]]:
        """Every vote with the order its rater saw, the system preferred, the comment, the time and the item's texts."""
        rows = self._vote_rows(
            ", i.row, a.position, v.comment, v.voted_at, i.instruction, i.input, i.reference, i.system_a, i.answer_a, i.system_b, i.answer_b"
        )
        return [
            {
                **{column: row[column] for column in RATING_COLUMNS},
                "preferred": Vote(row["item"], row["rater"], row["left_system"], row["right_system"], row["choice"]).preferred,
            }
            for row in rows
        ]

    def votes(self) -> list[Vote]:
        """Every stored vote, with the left/right order its rater saw (no texts read)."""
        return [Vote(r["item"], r["rater"], r["left_system"], r["right_system"], r["choice"]) for r in self._vote_rows()]
