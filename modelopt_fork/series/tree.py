"""Layout of the generated tree and content manifests used to detect edits.

Patch paths are relative to the upstream source layout (``modelopt/...``,
``modelopt_recipes/...``, ``tests/...``). In the checkout, upstream-style tests
carried by patches live in ``upstream_tests/`` so they never mix with ours.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .pin import Pin

UPSTREAM_TESTS_DIR = "upstream_tests"
STAMP_NAME = ".fork-stamp.json"
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".hypothesis"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


def layout(pin: Pin) -> dict[str, str]:
    """Map patch-path top directory -> checkout directory."""
    m = {p: p for p in pin.packages}
    m["tests"] = UPSTREAM_TESTS_DIR
    return m


def iter_files(base: Path):
    """Relative POSIX paths of the regular files under ``base`` that belong to the tree, sorted."""
    if not base.is_dir():
        return []
    out = []
    for p in base.rglob("*"):
        rel = p.relative_to(base)
        if any(part in _SKIP_DIRS for part in rel.parts) or p.name == STAMP_NAME:
            continue
        if p.suffix in _SKIP_SUFFIXES or not p.is_file():
            continue
        out.append(rel.as_posix())
    return sorted(out)


def manifest(tree_root: Path, tops: list[str] | tuple[str, ...]) -> dict[str, str]:
    """sha256 of every file under each top dir of ``tree_root``, keyed by ``top/rel``."""
    out = {}
    for top in tops:
        for rel in iter_files(tree_root / top):
            out[f"{top}/{rel}"] = hashlib.sha256((tree_root / top / rel).read_bytes()).hexdigest()
    return out


def diff_manifests(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Human lines 'modified: x', 'added: y', 'removed: z'."""
    lines = []
    for k in sorted(set(old) | set(new)):
        if k not in new:
            lines.append(f"removed: {k}")
        elif k not in old:
            lines.append(f"added: {k}")
        elif old[k] != new[k]:
            lines.append(f"modified: {k}")
    return lines
