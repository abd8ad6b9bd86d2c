"""A copy of the project in a temporary git + DVC repository, and shell commands run in it as a user would.

Shared by the tests that run real DVC (tests/test_flows.py, tests/test_dvc.py): the repository holds the
msgfm sources, the project's .gitignore, .dvcignore and DVC config, a given dvc.yaml and params.yaml,
everything committed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DVC = [sys.executable, "-m", "dvc"]
PROJECT_FILES = (".gitignore", ".dvcignore", "data/.gitkeep")


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command as a shell user would in `cwd`: the venv's bin on PATH, the repository's msgfm imported."""
    env = (env or os.environ) | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(cwd),
    }
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def make_repo(path: Path, dvc_yaml: dict, params: dict) -> Path:
    """A git + DVC repository with the msgfm sources, `dvc_yaml` and `params`, everything committed."""
    path.mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "msgfm", path / "msgfm", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in PROJECT_FILES:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / name, path / name)
    (path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], path)
    run(["git", "config", "user.email", "test@msgfm.invalid"], path)
    run(["git", "config", "user.name", "msgfm tests"], path)
    run([*DVC, "init", "-q"], path)  # keeps the project's .dvcignore
    shutil.copyfile(REPO_ROOT / ".dvc" / "config", path / ".dvc" / "config")
    run([*DVC, "config", "core.site_cache_dir", str(path.parent / "dvc-site")], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-q", "-m", "test repository"], path)
    return path
