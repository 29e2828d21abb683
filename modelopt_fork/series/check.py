"""`modelopt-fork check`: the series, the patch files and their headers agree, and every patch applies."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import ForkError, SeriesError
from .header import header_problems, parse_patch
from .materialize import build_tree
from .pin import load_pin
from .seriesfile import load_series, series_problems
from .stage import stage_groups


def missing_test_ids(root: Path, ids: list[str]) -> list[str]:
    """Test ids that pytest cannot collect (file, class or function missing)."""
    if not ids:
        return []
    missing = []
    for tid in ids:
        file = tid.split("::", 1)[0]
        if not (root / file).is_file():
            missing.append(f"{tid} (no file {file})")
    present = [t for t in ids if (root / t.split("::", 1)[0]).is_file()]
    if present:
        import importlib.util

        if importlib.util.find_spec("pytest") is None:
            raise SeriesError(f"checking the patches' Test: ids needs pytest, which {sys.executable} does not have: "
                              "pip install -e '.[fork-test]' (or check --no-tests)")
        # whole files, in one run: pytest collects nothing at all when one node id is not found
        files = list(dict.fromkeys(t.split("::", 1)[0] for t in present))
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
             *files],
            cwd=root, capture_output=True, text=True,
        )
        collected = [ln.strip() for ln in proc.stdout.splitlines() if "::" in ln]
        for tid in present:
            if not any(c == tid or c.startswith(tid + "[") or c.startswith(tid + "::") for c in collected):
                missing.append(f"{tid} (pytest collected nothing for it)")
    return missing


def check(root: Path, *, collect_tests: bool = True, log=print) -> list[str]:
    """All problems found (empty list = the series is healthy)."""
    root = Path(root).resolve()
    pin = load_pin(root)
    problems = series_problems(root)
    series = load_series(root)
    patches = []
    for name in dict.fromkeys(series.names):
        if not series.path(name).is_file():
            continue
        p = parse_patch(name, series.path(name).read_text(encoding="utf-8"))
        problems += header_problems(p, pin.requirement)
        patches.append(p)
    if len(patches) == len(series.names):
        try:  # Stage-With: names later patches, each in one group
            stage_groups(series, {p.name: p for p in patches})
        except SeriesError as e:
            problems.append(str(e))
    if collect_tests:  # one pytest collection for every patch's ids (each start imports torch)
        missing = {m.split(" ", 1)[0]: m for m in missing_test_ids(root, list(dict.fromkeys(
            t for p in patches for t in p.tests)))}
        for p in patches:
            problems += [f"patches/{p.name}: Test: {missing[t]}" for t in p.tests if t in missing]
    # Every patch applies, in order, to the pristine tree: exact context, no offset.
    with tempfile.TemporaryDirectory() as tmp:
        try:
            build_tree(root, [p.name for p in patches], Path(tmp) / "tree", log)
        except ForkError as e:
            problems.append(str(e))
    return problems
