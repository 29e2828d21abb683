"""Helpers for the patch-series tests: write patches by editing a materialized tree."""

from __future__ import annotations

from pathlib import Path

from modelopt_fork.series.materialize import materialize
from modelopt_fork.series.refresh import refresh

HEADER = """Description: {desc}
 Test patch made by the test suite.
Author: Test Suite <tests@example.invalid>
Origin: vendor
Bug: 
Forwarded: not-needed
Applied-Upstream: 
Last-Update: 2026-11-22
Upstream-Base: nvidia-modelopt==0.47.0
Test: {test}

"""

INIT = Path("modelopt/__init__.py")


def quiet(*_a, **_k):
    pass


def add_patch_by_edit(root: Path, name: str, edit, *, desc: str = "test change", test: str = "tests/x.py") -> Path:
    """Materialize, apply ``edit(root)`` in place, record it as patch ``name`` with a full header."""
    materialize(root, log=quiet)
    edit(root)
    refresh(root, new=name, log=quiet)
    path = root / "patches" / name
    from modelopt_fork.series.header import split_patch

    _, diff = split_patch(path.read_text())
    path.write_text(HEADER.format(desc=desc, test=test) + diff)
    materialize(root, log=quiet)  # header changed the series hash: re-stamp
    return path


def append_line(rel: str, line: str):
    def edit(root: Path):
        p = root / rel
        p.write_text(p.read_text() + line + "\n")

    return edit
