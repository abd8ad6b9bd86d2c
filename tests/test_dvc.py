"""dvc.yaml as its users expect: every stage depends on the code it runs.

A stage's code is what its `msgfm <command>` imports: the `from msgfm... import` lines of the typer
command in msgfm/cli/ (and of the cli helpers it calls), then every msgfm module those modules import,
at the top or inside a function, until none is new (read from the sources with `ast`; a fresh interpreter
importing the commands' modules checks that the scan misses nothing). Each such file must lie under one of
the stage's deps, and each msgfm dep must hold one of them: `dvc status` sees every code change of a
stage, and no dep names code the stage never runs.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from dvc.repo import Repo
from dvc_repo import DVC, REPO_ROOT, make_repo, run
from tiny_world import tiny_params

from msgfm.config import load_params

CLI = sorted((REPO_ROOT / "msgfm" / "cli").glob("*.py"))
# Every command imports these; they hold no stage logic (commands pass params to the library), so
# editing them re-runs nothing.
ENTRY_POINTS = {p.relative_to(REPO_ROOT).as_posix() for p in CLI} | {"msgfm/__init__.py"}


def _cli_functions() -> dict[str, ast.FunctionDef]:
    """The module-level functions of the msgfm/cli/ modules by name (commands and helpers; no name is reused)."""
    functions = [node for path in CLI for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)]
    by_name = {node.name: node for node in functions}
    assert len(by_name) == len(functions), "two msgfm/cli/ modules define a function of the same name"
    return by_name


def _commands() -> dict[str, str]:
    """Typer command name -> name of its function in msgfm/cli/."""
    from typer.main import get_command_name

    from msgfm.cli import app

    return {
        info.name or get_command_name(info.callback.__name__): info.callback.__name__
        for info in app.registered_commands
    }


def _command_imports(function: str) -> set[str]:
    """msgfm modules the cli function imports in its body or in the cli helpers it calls."""
    functions, todo, seen, modules = _cli_functions(), [function], set(), set()
    while todo:
        name = todo.pop()
        seen.add(name)
        for node in ast.walk(functions[name]):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "msgfm":
                modules.add(node.module)
            elif isinstance(node, ast.Name) and node.id in functions and node.id not in seen:
                todo.append(node.id)
    return modules


def _module_imports(module: str) -> set[str]:
    """msgfm modules that importing `module` loads directly: its parent packages and every import statement in it."""
    spec = importlib.util.find_spec(module)
    parts = module.split(".")
    found = {".".join(parts[:i]) for i in range(1, len(parts))}
    package = module if spec.submodule_search_locations else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            found.add(base)
            if base.split(".")[0] == "msgfm" and importlib.util.find_spec(base).submodule_search_locations:
                found |= {f"{base}.{a.name}" for a in node.names if importlib.util.find_spec(f"{base}.{a.name}")}
    return {m for m in found if m.split(".")[0] == "msgfm"}


def _imported_modules(modules: set[str]) -> set[str]:
    """Every msgfm module that importing `modules` and calling their functions loads (the import closure)."""
    todo, seen = list(modules), set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += _module_imports(module)
    return seen


def _runs_code(path: Path) -> bool:
    """False for a file holding nothing but a docstring (most package `__init__.py`): editing it changes no output."""
    body = ast.parse(path.read_text()).body
    docstring = bool(body) and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    return len(body) > int(docstring)


def _files(modules: set[str]) -> set[str]:
    """Repository-relative paths of the modules' files that run code, without the entry points."""
    paths = {Path(importlib.util.find_spec(m).origin).resolve() for m in modules}
    return {p.relative_to(REPO_ROOT).as_posix() for p in paths if _runs_code(p)} - ENTRY_POINTS


class Stage(NamedTuple):
    """A stage of dvc.yaml: its command line, its dep paths, and whether DVC caches each of its outputs."""

    cmd: list[str]
    deps: list[str]
    outs: dict[str, bool]


def _stages() -> dict[str, Stage]:
    """Every stage of the project's dvc.yaml, foreach expanded."""
    with Repo(str(REPO_ROOT)) as repo:
        return {
            stage.addressing: Stage(
                stage.cmd.split(), [d.def_path for d in stage.deps], {o.def_path: o.use_cache for o in stage.outs}
            )
            for stage in repo.index.stages
        }


STAGES = _stages()


def test_every_stage_runs_an_msgfm_command():
    # foreach expanded, pretrain_variant over the params list pretrain_variants.run
    assert {"simulate", "pretrain_variant@single_s2", "finetune@segmentation", "evaluate"} <= set(STAGES)
    commands = _commands()
    assert {(stage.cmd[0], stage.cmd[1] in commands) for stage in STAGES.values()} == {("msgfm", True)}


@pytest.fixture(scope="module")
def imported() -> dict[str, set[str]]:
    """Per msgfm command of dvc.yaml, the msgfm modules it imports."""
    commands = _commands()
    return {s.cmd[1]: _imported_modules(_command_imports(commands[s.cmd[1]])) for s in STAGES.values()}


LOADED = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] == "msgfm")))
"""


def test_import_closure_misses_nothing_a_real_import_loads(imported):
    """Importing every command's modules in a fresh interpreter loads no msgfm module the closure lacks."""
    seeds = {m for name in imported for m in _command_imports(_commands()[name])}
    done = subprocess.run(
        [sys.executable, "-c", LOADED, *sorted(seeds)],
        cwd=REPO_ROOT,
        env=os.environ | {"PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert {"msgfm.sim.simulate", "msgfm.training.finetune", "msgfm.models.encoder"} <= loaded
    assert loaded <= set().union(*imported.values())


def _covered(file: str, deps: list[str]) -> bool:
    """Whether `file` is one of `deps` or lies in a dep folder."""
    return any(file == dep or file.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_every_module_it_imports(stage, imported):
    deps = STAGES[stage].deps
    files = _files(imported[STAGES[stage].cmd[1]])
    assert {"msgfm/config/__init__.py", "msgfm/sensors.py"} <= files  # the closure reached the shared modules
    missing = sorted(f for f in files if not _covered(f, deps))
    assert not missing, f"stage {stage} imports {missing}, which no dep of dvc.yaml covers"
    unused = [d for d in deps if d.split("/")[0] == "msgfm" and not any(_covered(f, [d]) for f in files)]
    assert not unused, f"stage {stage} depends on {unused}, which it never imports"


# --- what goes to git: metrics, plots and reports; never what DVC caches -----------------------------


def _git_ignored(path: str) -> bool:
    """Whether the project's .gitignore ignores `path` (existing or not)."""
    done = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO_ROOT)
    assert done.returncode in (0, 1), f"git check-ignore failed on {path}"
    return done.returncode == 0


def test_outputs_are_git_ignored_exactly_when_dvc_caches_them():
    outs = {path: cached for stage in STAGES.values() for path, cached in stage.outs.items()}
    assert sum(not cached for cached in outs.values()) >= 30  # metrics, plot tables, PNGs, reports
    assert {path: _git_ignored(path) for path in outs} == outs
    params = load_params(REPO_ROOT / "params.yaml")
    run_state = [params.pretrain.checkpoint_dir, params.retrain.lock_path, params.retrain.registry_path]
    assert all(_git_ignored(str(path)) for path in run_state)  # Ray checkpoints, retrain lock, model registry


def _download_repo(path: Path) -> Path:
    """The project's simulate and download stages on the tiny world, in a fresh git + DVC repository."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    return make_repo(path, {"stages": {k: stages[k] for k in ("simulate", "download")}}, tiny_params(REPO_ROOT))


def _published_items(repo: Path) -> int:
    """Items of the simulated catalog: one folder per item under its collection's folder."""
    return sum(path.is_dir() for path in (repo / "data/source").glob("*/*"))


@pytest.mark.slow  # simulate and download twice (repro, then an experiment): 20 s idle, 40 s on a loaded machine
def test_repro_then_experiment_keep_metrics_in_git(tmp_path):
    """After `dvc repro` git sees only dvc.lock and the metric; `dvc exp show` reads both commits' metrics."""
    repo = _download_repo(tmp_path / "repo")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # bytecode beside the sources
    run([*DVC, "repro"], repo, env)
    assert (repo / "msgfm/sim/__pycache__").is_dir()
    assert "up to date" in run([*DVC, "status"], repo, env)  # .dvcignore: the bytecode changed no folder dep
    untracked = run(["git", "status", "--porcelain", "--untracked-files=all"], repo).splitlines()
    assert sorted(untracked) == ["?? data/reports/download.json", "?? dvc.lock"]
    metrics = json.loads(run([*DVC, "metrics", "show", "--json"], repo))
    items = _published_items(repo)
    assert metrics[""]["data"]["data/reports/download.json"]["data"]["items"] == items

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "baseline run"], repo)
    run([*DVC, "exp", "run", "-S", "simulate.s1_dates=4"], repo, env)
    more = _published_items(repo)
    assert more == items + 2  # one more S1 date in each of the two AOIs
    (baseline,) = (row for row in json.loads(run([*DVC, "exp", "show", "--json"], repo)) if row["rev"] != "workspace")
    (experiment,) = baseline["experiments"][0]["revs"]
    for row, expected, s1_dates in ((baseline, items, 3), (experiment, more, 4)):
        assert row["data"]["params"]["params.yaml"]["data"]["simulate"]["s1_dates"] == s1_dates
        assert row["data"]["metrics"]["data/reports/download.json"]["data"]["items"] == expected
