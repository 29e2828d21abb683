"""Upstream's lint on the series: every file a patch touches, with Model-Optimizer's ruff settings.

A finding counts only where the patched file has more of it than the pristine file (a file a
patch adds counts whole), so rules upstream's own tree breaks at the pin are not blamed on us;
``ruff format --check`` the same way. Each patch must also carry an upstream-style test: a
file under ``tests/`` in its diff (upstream's layout, materialized to ``upstream_tests/``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from unidiff import PatchSet

from .errors import ForkError
from .header import parse_patch
from .materialize import build_tree, ensure_pristine
from .pin import load_pin
from .seriesfile import load_series

RUFF_CONFIG = Path(__file__).with_name("upstream-ruff.toml")


def patch_files(diff_text: str) -> list[str]:
    """Paths (upstream layout) a patch adds or modifies."""
    return [f.path for f in PatchSet(diff_text) if not f.is_removed_file]


def _ruff(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [shutil.which("ruff")] if shutil.which("ruff") else [sys.executable, "-m", "ruff"]
    try:
        return subprocess.run([*cmd, *args, "--config", str(RUFF_CONFIG)], cwd=cwd, capture_output=True,
                              text=True, check=False)
    except FileNotFoundError as e:
        raise ForkError("check --lint needs ruff: pip install ruff (or tox -e upstream-lint)") from e


def findings(tree: Path, files: list[str]) -> Counter:
    """(file, rule) -> count of ``ruff check`` findings."""
    present = [f for f in files if (tree / f).is_file()]
    if not present:
        return Counter()
    proc = _ruff(["check", "--no-fix", "--output-format", "json", "--no-cache", *present], tree)
    try:
        items = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError as e:
        raise ForkError(f"ruff check gave no JSON: {proc.stderr.strip()[:200]}") from e
    return Counter((str(Path(i["filename"]).resolve().relative_to(tree.resolve())), i["code"]) for i in items)


def unformatted(tree: Path, files: list[str]) -> set[str]:
    """Files that ``ruff format --check`` would reformat."""
    present = [f for f in files if (tree / f).is_file()]
    if not present:
        return set()
    proc = _ruff(["format", "--diff", "--no-cache", *present], tree)
    return {ln[4:].strip() for ln in proc.stdout.splitlines() if ln.startswith("--- ")}


def lint_series(root: Path, log=print) -> list[str]:
    """Problems: new upstream-ruff findings and unformatted files per patch, patches without a test."""
    root = Path(root).resolve()
    pin, series = load_pin(root), load_series(root)
    pristine = ensure_pristine(root, pin, log)
    touched: dict[str, list[str]] = {}  # file -> patches
    problems = []
    for name in series.names:
        files = patch_files(parse_patch(name, series.path(name).read_text(encoding="utf-8")).diff_text)
        if not any(f.startswith("tests/") for f in files):
            problems.append(f"patches/{name}: no upstream-style test (no file under tests/ in its diff)")
        for f in files:
            touched.setdefault(f, []).append(name)
    py = sorted(f for f in touched if f.endswith(".py"))
    with tempfile.TemporaryDirectory(prefix="upstream-lint-") as tmp:
        fork = build_tree(root, list(series.names), Path(tmp) / "fork", log)
        new = findings(fork, py) - findings(pristine, py)
        fresh_unformatted = unformatted(fork, py) - unformatted(pristine, py)
    for (f, code), n in sorted(new.items()):
        problems.append(f"{', '.join(touched[f])}: {f}: {n} new {code} finding(s) (upstream ruff)")
    for f in sorted(fresh_unformatted):
        problems.append(f"{', '.join(touched[f])}: {f}: not formatted as `ruff format` with upstream's settings")
    return problems
