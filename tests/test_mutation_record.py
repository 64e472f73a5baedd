"""``benchmarks/results/mutation.md``: a row for every module of the product, with scores that are its own counts."""

from __future__ import annotations

import ast

from conftest import PRODUCT_PACKAGES, ROOT
from markdown_tables import table_rows

RECORD = ROOT / "benchmarks" / "results" / "mutation.md"
HEADER = "| module | mutants | killed | equivalent | not killed | score | score without equivalents | wall time | tests |"


def product_modules() -> set[str]:
    """Every file of the product that holds a function for mutmut to mutate (a link is measured as the file it names)."""
    files = [path for package in PRODUCT_PACKAGES for path in (ROOT / package).rglob("*.py") if not path.is_symlink()]
    return {
        path.relative_to(ROOT).as_posix()
        for path in files
        if any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))
    }


def test_every_module_of_the_product_has_a_score_computed_from_its_counts():
    rows = {cells[0].strip("`"): cells for cells in table_rows(RECORD.read_text(encoding="utf-8"), HEADER)}
    assert sorted(product_modules() - set(rows)) == [], f"modules with no row in {RECORD.relative_to(ROOT)}"
    assert sorted(set(rows) - product_modules()) == [], f"rows of {RECORD.relative_to(ROOT)} that name no module"
    for module, (_, mutants, killed, equivalent, not_killed, score, without, *_) in rows.items():
        mutants, killed, equivalent, not_killed = map(int, (mutants, killed, equivalent, not_killed))
        assert killed + equivalent + not_killed == mutants, module
        assert score == f"{100 * killed / mutants:.1f} %", module
        assert without == f"{100 * killed / (mutants - equivalent):.1f} %", module
        assert 100 * killed / (mutants - equivalent) >= 90, module
