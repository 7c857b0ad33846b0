"""The layers depend one way (docs/architecture.md): no module imports a layer above its own.

Parsed from source with `ast` (no imports executed), so lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import spatialmech

PACKAGE = Path(spatialmech.__file__).parent

# rank of each layer; a module may import its own layer and lower ranks only
FOUNDATION = 0  # errors, io, provenance, plotting, reference (the paper's numbers), the package itself
LAYERS: dict[str, int] = {
    "tasks": 1,
    "models": 2,
    "engine": 3,
    "experiments": 4,
    "report": 5,
    "pipeline": 6,
    "training": 6,
    "cli": 7,
    "api": 7,  # the public Python API: the CLI's peer at the top (the CLI is a thin layer over it)
}
# top-level modules that are not foundation: the CLI entry point and its API-backed handlers
TOP_LEVEL = {"cli": "cli", "commands": "cli"}
# the report reads result files only: besides the foundation it may import nothing below it
REPORT_MAY_IMPORT = {"report"}
COMMANDS_RANK = LAYERS["cli"]  # `<package>.commands` modules are the CLI's handlers for that package


def layer_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) < 2:
        return "foundation", FOUNDATION
    if len(parts) == 2 and parts[1] in TOP_LEVEL:
        return TOP_LEVEL[parts[1]], LAYERS[TOP_LEVEL[parts[1]]]
    if parts[-1] == "commands" and len(parts) == 3:
        return "cli", COMMANDS_RANK
    head = parts[1]
    return (head, LAYERS[head]) if head in LAYERS else ("foundation", FOUNDATION)


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from spatialmech import reference` names a module, not an attribute
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names if target == "spatialmech")
    return [(line, name) for line, name in found if name == "spatialmech" or name.startswith("spatialmech.")]


def violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "assets" in path.parts:
            continue
        module = module_name(path)
        layer, rank = layer_of(module)
        if module == "spatialmech":  # the package re-exports the public API lazily (`sm.run`, `sm.load_model`)
            rank = LAYERS["api"]
        for line, target in imported_modules(path, module):
            if target == "spatialmech":
                continue
            other, other_rank = layer_of(target)
            if layer == "report" and other_rank != FOUNDATION and other not in REPORT_MAY_IMPORT:
                bad.append(f"{module}:{line} imports {target}: the report reads result files only")
            elif other_rank > rank:
                bad.append(f"{module}:{line} ({layer}) imports {target} ({other}), a layer above it")
    return bad


def test_no_module_imports_a_layer_above_its_own():
    assert violations() == []


def test_the_checker_sees_upward_imports(tmp_path):
    assert layer_of("spatialmech.experiments.amplify") == ("experiments", 4)
    assert layer_of("spatialmech.tasks.commands") == ("cli", COMMANDS_RANK)
    assert layer_of("spatialmech.plotting") == ("foundation", FOUNDATION)
    fake = PACKAGE / "engine" / "x.py"
    source = "from spatialmech.experiments import common\nfrom . import hooks\nfrom ..report import html\n"
    tree_path = tmp_path / "x.py"
    tree_path.write_text(source)
    # parse as if it lived in the engine package
    names = [name for _, name in imported_modules(tree_path, "spatialmech.engine.x")]
    assert names == ["spatialmech.experiments", "spatialmech.engine", "spatialmech.report"]
    assert layer_of(names[0])[1] > layer_of(module_name(fake))[1]
