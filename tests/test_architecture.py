"""The import direction of docs/architecture.md: each part of msgfm imports only parts below it or beside it.

Read from the sources with `ast` (imports inside functions count): a package may import the layers below its
own and the packages of its own layer, evaluation never imports training, and msgfm never imports flows.
"""

from __future__ import annotations

import ast

from dvc_repo import REPO_ROOT

# bottom to top; a name is a package folder or a top-level module of msgfm/ ("msgfm": its __init__.py)
LAYERS = (
    {
        "msgfm",
        "config",
        "sensors",
        "landcover",
        "architectures",
        "metrics",
        "decisions",
        "geo",
        "faults",
        "locks",
        "cluster",
    },
    {"sim", "ingest", "validation", "coreg", "chips"},
    {"datasets", "models"},
    {"training", "evaluation", "inference"},
    {"cli", "log_setup", "registry"},
)
FORBIDDEN = {("evaluation", "training")}
# Imports that break the rule today, each to be removed by moving code, then deleted here (none left).
KNOWN: dict[tuple[str, str], str] = {}


def _part(module: str) -> str:
    """The part of msgfm a dotted module name belongs to ("msgfm.coreg.stage" -> "coreg")."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "msgfm"


def _imports() -> set[tuple[str, str]]:
    """(importing part, imported part or "flows") for every msgfm file's import of another part."""
    edges = set()
    for path in (REPO_ROOT / "msgfm").rglob("*.py"):
        here = _part(".".join(path.relative_to(REPO_ROOT).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top == "msgfm" and _part(name) != here:
                    edges.add((here, _part(name)))
                elif top == "flows":
                    edges.add((here, "flows"))
    return edges


def _layer(part: str) -> int:
    (index,) = (i for i, layer in enumerate(LAYERS) if part in layer)
    return index


def test_every_part_of_msgfm_has_a_layer():
    parts = {p.stem for p in (REPO_ROOT / "msgfm").iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert parts - {"__init__"} | {"msgfm"} == set().union(*LAYERS)


def test_imports_go_down_or_sideways_and_never_to_flows():
    broken = {
        (here, there)
        for here, there in _imports()
        if there == "flows" or (here, there) in FORBIDDEN or _layer(there) > _layer(here)
    }
    assert broken == set(KNOWN), "new imports against docs/architecture.md, or a KNOWN entry is fixed: delete it"
