"""Hostile environments and inputs: full and read-only disks, absurd headers and dates, exposed services.

The disk cases mount a real tmpfs (1 MiB, filled up, or remounted read-only) so the kernel itself says
ENOSPC or EROFS; where mounting is not allowed (not root, no CAP_SYS_ADMIN) they are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from coreg_world import RawWorld
from stac_fixture import make_catalog
from tiny_world import working_directory
from typer.testing import CliRunner

from msgfm.cli import ENVIRONMENT_EXIT, app

# --- environment faults (item: disk full, read-only) ------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, *, full: bool = False, leave: int = 0, read_only: bool = False) -> Iterator[Path]:
    """A 1 MiB tmpfs at `path`, filled up but `leave` bytes, or remounted read-only; unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with mount rights): {mounted.stderr.decode().strip()}")
    try:
        if full:
            with contextlib.suppress(OSError), open(path / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            with open(path / "filler", "r+b") as f:
                f.truncate(max(0, f.seek(0, 2) - leave))
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _project(root: Path, repo_root: Path, **sections: dict) -> Path:
    """params.yaml of the repository under `root`, with the given sections updated."""
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    for name, values in sections.items():
        params[name].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _msgfm(root: Path, stage: str):
    """Run one stage in-process in `root`; the result (never raises)."""
    with working_directory(root):
        return CliRunner().invoke(app, [stage, "--params", "params.yaml"])


def _assert_environment_error(result, what: str) -> None:
    """Exit ENVIRONMENT_EXIT with `what` and advice in one line, no traceback."""
    assert result.exit_code == ENVIRONMENT_EXIT, result.output
    assert isinstance(result.exception, SystemExit), f"a traceback instead of a clear error: {result.exception!r}"
    assert f"error: environment error: {what}" in result.output, result.output
    assert "point out_dir elsewhere" in result.output, result.output
    assert "Traceback" not in result.output


def _coreg_world(root: Path) -> None:
    """One small AOI: an S2 date and an S1 date, accepted by the raw gate."""
    world = RawWorld(root, size=48, fine_size=48)
    world.add_s2("2024-05-01")
    world.add_s1("2024-05-02", (0.8, 0.4))
    world.finish()


@pytest.mark.parametrize("disk", ["full", "read-only"])
def test_coregister_on_a_broken_disk_aborts_and_quarantines_nothing(tmp_path, repo_root, disk):
    """A full or read-only out_dir aborts coregister with exit 3 and the reason; no good raster becomes a failed row."""
    _coreg_world(tmp_path)
    with tmpfs(tmp_path / "mnt", full=disk == "full", read_only=disk == "read-only") as mnt:
        _project(tmp_path, repo_root, coregister={"out_dir": str(mnt / "coreg"), "report": str(mnt / "c.json")})
        result = _msgfm(tmp_path, "coregister")
        _assert_environment_error(result, "no space left on device" if disk == "full" else "read-only file system")
        assert str(mnt) in result.output
        assert not (mnt / "coreg" / "rasters.parquet").exists()


@pytest.mark.parametrize("disk", ["full", "read-only"])
def test_download_onto_a_broken_disk_aborts_without_failing_items(tmp_path, repo_root, disk):
    """download into a full or read-only out_dir exits 3 with the reason, not a pyarrow/OSError traceback."""
    catalog = make_catalog(tmp_path / "source", [("s1", dt.date(2024, 6, 1)), ("s1", dt.date(2024, 6, 13))])
    with tmpfs(tmp_path / "mnt", full=disk == "full", read_only=disk == "read-only") as mnt:
        _project(tmp_path, repo_root, source={"href": str(catalog)}, download={"out_dir": str(mnt / "raw")})
        result = _msgfm(tmp_path, "download")
        _assert_environment_error(result, "no space left on device" if disk == "full" else "read-only file system")
        assert not (mnt / "raw" / "acquisitions.parquet").exists()


def test_download_filling_the_disk_midway_lists_no_item_as_failed(tmp_path, repo_root):
    """The disk fills up after some items landed: exit 3; with space freed, the rerun completes, no item failed."""
    catalog = make_catalog(tmp_path / "source", [("s2", dt.date(2024, 6, d)) for d in range(1, 29, 3)])
    with tmpfs(tmp_path / "mnt", full=True, leave=160 * 1024) as mnt:
        _project(
            tmp_path, repo_root, source={"href": str(catalog)}, download={"out_dir": str(mnt / "raw"), "workers": 1}
        )
        _assert_environment_error(_msgfm(tmp_path, "download"), "no space left on device")
        assert any((mnt / "raw").rglob("item.json")), "the test meant some items to land before the disk filled"
        (mnt / "filler").unlink()
        assert _msgfm(tmp_path, "download").exit_code == 0
        ledger = pd.read_parquet(mnt / "raw" / "acquisitions.parquet")
    assert len(ledger) == 10 and (ledger["error"] == "").all(), ledger["error"].tolist()


def test_validate_raw_into_a_read_only_gates_dir_aborts(tmp_path, repo_root):
    """The raw gate cannot write its decisions: exit 3 with the reason, not an OSError traceback."""
    catalog = make_catalog(tmp_path / "source", [("s1", dt.date(2024, 6, 1))])
    _project(tmp_path, repo_root, source={"href": str(catalog)}, download={"out_dir": str(tmp_path / "raw")})
    assert _msgfm(tmp_path, "download").exit_code == 0
    with tmpfs(tmp_path / "mnt", read_only=True) as mnt:
        _project(
            tmp_path,
            repo_root,
            source={"href": str(catalog)},
            download={"out_dir": str(tmp_path / "raw")},
            gates={"dir": str(mnt / "gates"), "reports_dir": str(mnt / "reports")},
        )
        _assert_environment_error(_msgfm(tmp_path, "validate_raw"), "read-only file system")
