"""The notebooks are the source: the package is in sync with them, and they are committed clean."""

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from paths import ROOT

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    "A copy of the project's sources, for nbdev to rewrite without touching the working tree."
    dst = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "pyproject.toml", dst)  # nbdev's settings, and ruff's
    shutil.copytree(ROOT / "nbs", dst / "nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(ROOT / "mlops_day28", dst / "mlops_day28", ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def out_of_sync(cmp: filecmp.dircmp, prefix: str = "") -> list[str]:
    "Files that differ, or are on one side only, in the folder and every folder under it."
    here = [prefix + name for name in cmp.diff_files + cmp.left_only + cmp.right_only]
    return here + [f for name, sub in sorted(cmp.subdirs.items()) for f in out_of_sync(sub, f"{prefix}{name}/")]


def test_nbdev_export_leaves_no_diff(copy):
    "What `make export` does: nbdev-export, then ruff sorts the imports and formats the modules."
    for cmd in (
        ["nbdev-export"],
        ["ruff", "check", "--quiet", "--select", "I", "--fix", "mlops_day28"],
        ["ruff", "format", "--quiet", "mlops_day28"],
    ):
        r = subprocess.run([BIN / cmd[0], *cmd[1:]], cwd=copy, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    stale = out_of_sync(filecmp.dircmp(ROOT / "mlops_day28", copy / "mlops_day28", ignore=["__pycache__"]))
    assert not stale, f"mlops_day28/ is out of sync with nbs/ ({stale}): run `make export` and commit"


def test_notebooks_are_clean(copy):
    "What `make clean-nbs` does: ruff formats the code cells, nbdev-clean strips outputs and metadata."
    for cmd in (["ruff", "format", "--quiet", "nbs"], ["nbdev-clean"]):
        r = subprocess.run([BIN / cmd[0], *cmd[1:]], cwd=copy, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    dirty = [
        str(p.relative_to(ROOT / "nbs"))
        for p in sorted((ROOT / "nbs").rglob("*.ipynb"))
        if p.read_bytes() != (copy / p.relative_to(ROOT)).read_bytes()
    ]
    assert not dirty, f"notebooks with outputs or metadata: {dirty}: run `make clean-nbs` and commit"
