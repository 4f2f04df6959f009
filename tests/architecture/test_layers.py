"""The layout by party holds: import-linter's contracts (pyproject.toml) pass on this tree, and fail, naming the
broken contract, on a copy with one planted upward import, one cycle or one top-level ``flows`` import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _copy_tree(tmp_path: Path) -> Path:
    """fedrec/ with its flows/tasks/models symlinks resolved into the copy, and pyproject.toml."""
    dst = tmp_path / "tree"
    dst.mkdir()
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    for name in ("fedrec", "flows", "tasks", "models"):
        shutil.copytree(ROOT / name, dst / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dst


def _lint_imports(tree: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(tree)}  # the copy's fedrec, ahead of the editable install
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache", "--config", str(tree / "pyproject.toml")],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=300)


def test_the_contracts_hold_on_this_tree(tmp_path):
    # Act
    result = _lint_imports(_copy_tree(tmp_path))

    # Assert
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, planted, contract", [
    # the core reaching up into a party
    ("fedrec/core/metrics.py", "from fedrec.silo import agent", "Layers by party"),
    # a silo reading the coordinator's code (the two parties are independent)
    ("fedrec/silo/store.py", "from fedrec.coordinator import strategy", "Layers by party"),
    # the crypto layer importing Prefect
    ("fedrec/crypto/masking.py", "import prefect", "never reach Prefect"),
    # a cycle inside one layer
    ("fedrec/core/errors.py", "from fedrec.core import config", "No cycles"),
])
def test_a_planted_import_breaks_its_contract(tmp_path, module, planted, contract):
    # Prepare
    tree = _copy_tree(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by the test\n")

    # Act
    result = _lint_imports(tree)

    # Assert
    assert result.returncode == 1, result.stdout
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in broken and Path(module).stem in broken  # the culprit named (cycles name it relatively)


def test_ruff_refuses_a_top_level_flows_import(tmp_path):
    # Prepare: a module importing the checkout's flows/ as a top-level package
    tree = _copy_tree(tmp_path)
    (tree / "fedrec" / "core" / "planted.py").write_text('"""Planted."""\n\nimport flows.federated  # noqa: F401\n')

    # Act
    result = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "fedrec/core/planted.py"], cwd=tree,
                            capture_output=True, text=True, timeout=120)

    # Assert
    assert result.returncode == 1
    assert "TID251" in result.stdout and "fedrec.flows" in result.stdout
