"""The folders are the layers, and each imports only what its layer may.

- ``components/``: the hand-written library (adapters, model, data, training with distributed,
  evaluation with metrics and generation, export, human evaluation). It imports none of the
  project's other packages, never ClearML and never argparse: it runs the same with or without a
  server, called from any code.
- ``cli/``: what every command line shares (argparse's parser, booleans, a dataclass's options); the library.
- ``clearml_adapter/``: the one place that talks to ClearML; the library and cli.
- ``steps/``: each step's options and its ``run``; the layers above.
- ``pipelines/``: the pipeline's definition, controller, runners, launch checks and the sweep; the layers above.
- ``tools/``: the command-line tools that are not steps (try a model, count its parameters, write the
  tiny tasks, write docs/cli.md, which reads every command); any of them.

Every import counts, those inside functions too (they run as surely, only later), and no module
reaches itself through the imports of others.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import PRODUCT_PACKAGES, ROOT

# Layer -> the project's packages it may import besides its own.
MAY_IMPORT = {
    "components": set(),
    "cli": {"components"},
    "clearml_adapter": {"components", "cli"},
    "steps": {"components", "cli", "clearml_adapter"},
    "pipelines": {"components", "cli", "clearml_adapter", "steps"},
    "tools": {"components", "cli", "clearml_adapter", "steps", "pipelines"},
}
assert tuple(MAY_IMPORT) == PRODUCT_PACKAGES  # every package of the product is a layer, in their order

NEVER_IN_THE_LIBRARY = ("clearml", "clearml_agent", "clearml_serving", "argparse")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for layer in MAY_IMPORT for path in sorted((ROOT / layer).rglob("*.py"))}


def imported_by(module: str) -> set[str]:
    """Every module ``module`` imports (``from a import b`` is ``a.b`` when that is a module of the project, else ``a``)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # a relative import, from the module's own package upwards
                base = ".".join(filter(None, [package.rsplit(".", node.level - 1)[0] if node.level > 1 else package, base]))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names)
    return found


IMPORTS = {module: imported_by(module) for module in MODULES}


def layer_of(module: str) -> str:
    return module.split(".")[0]


def test_the_library_never_imports_clearml_or_argparse():
    reached = {
        module: sorted(name for name in imports if name.split(".")[0] in NEVER_IN_THE_LIBRARY)
        for module, imports in IMPORTS.items()
        if layer_of(module) == "components"
    }
    assert {module: names for module, names in reached.items() if names} == {}


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_each_layer_imports_only_the_layers_below_it(layer):
    others = set(MAY_IMPORT) - {layer} - MAY_IMPORT[layer]
    crossing = {
        module: sorted(name for name in imports if layer_of(name) in others) for module, imports in IMPORTS.items() if layer_of(module) == layer
    }
    assert {module: names for module, names in crossing.items() if names} == {}


def cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle among the project's modules, as the path that closes it (found by depth-first search)."""
    found, finished, path = [], set(), []

    def visit(module: str) -> None:
        path.append(module)
        for imported in sorted(imports.get(module, ())):
            if imported in path:
                found.append(path[path.index(imported) :] + [imported])
            elif imported in imports and imported not in finished:
                visit(imported)
        path.pop()
        finished.add(module)

    for module in sorted(imports):
        if module not in finished:
            visit(module)
    return found


def test_no_module_imports_itself_through_others():
    project = {module: {name for name in imports if name in MODULES} for module, imports in IMPORTS.items()}
    assert cycles(project) == []


def test_a_circle_is_found_however_deep_and_a_shared_import_is_none():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"a"}}) == [["a", "a"]]


def test_imports_are_read_inside_functions_and_from_packages_as_modules():
    assert "components.tiny" in IMPORTS["components.modeling"]  # a function's import: resolve_model_path builds the tiny model
    assert "clearml_adapter.tracking" in IMPORTS["steps.train"]  # from clearml_adapter import tracking
    assert "clearml" in IMPORTS["clearml_adapter.tracking"]
