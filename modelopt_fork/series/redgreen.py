"""`modelopt-fork check --red-green`: each patch's Test: ids fail without it and pass with it.

For patch P, the red tree is the series with P left out (materialized into a
temporary directory; if a later patch needs P to apply, the series prefix
before P is used and the table says so). Each Test: id is run with pytest
against the red tree (MODELOPT_FORK_TREE, see the root conftest.py) and must
fail; ids under tests/ must fail in every item that runs (a strict xfail).
Ids under tests/ are also run against pristine upstream (no patch at all) and
must fail there the same way. Then every id is run against the full series
and must pass. An id whose items all skip in this environment (say, a test for
transformers>=5 fused experts on transformers 4.57) is reported as "n/a here",
not as a failure; CI runs the check under each supported transformers version.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PatchApplyError
from .header import parse_patch
from .materialize import materialize
from .seriesfile import load_series


@dataclass
class Outcome:
    counts: Counter = field(default_factory=Counter)  # passed / failed / skipped / error

    def text(self) -> str:
        return ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items())) or "nothing ran"


@dataclass
class Row:
    patch: str
    test_id: str
    red_tree: str
    red: Outcome
    pristine: Outcome | None
    green: Outcome
    ok: bool
    why: str = ""
    not_applicable: bool = False


def run_pytest(root: Path, ids: list[str], tree: Path | None, workdir: Path) -> dict[str, Outcome]:
    """Outcome per Test id (items attributed to the id they were collected from)."""
    xml = workdir / f"junit-{os.getpid()}-{len(list(workdir.iterdir()))}.xml"
    env = dict(os.environ)
    env.pop("MODELOPT_FORK_TREE", None)
    if tree is not None:
        env["MODELOPT_FORK_TREE"] = str(tree)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rN", "-o", "junit_family=xunit1",
           f"--junitxml={xml}", *ids]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if not xml.is_file() or proc.returncode not in (0, 1):
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"pytest could not run {ids} (exit {proc.returncode}):\n{tail}")
    out = {tid: Outcome() for tid in ids}
    for case in ET.parse(xml).getroot().iter("testcase"):
        file = case.get("file", "")
        name = case.get("name", "")
        kind = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                kind = "failed"
            elif child.tag == "skipped":
                kind = "skipped"
        for tid in ids:
            tfile, _, tname = tid.partition("::")
            tname = tname.split("::")[-1]
            if file == tfile and (not tname or name == tname or name.startswith(tname + "[")):
                out[tid].counts[kind] += 1
    return out


def red_green(root: Path, patches: list[str] | None = None, log=print) -> list[Row]:
    root = Path(root).resolve()
    series = load_series(root)
    materialize(root, log=log)  # green = the checkout, up to date with the series
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="red-green-") as tmp:
        tmp = Path(tmp)
        pristine = tmp / "pristine"
        materialize(root, dest=pristine, exclude=tuple(series.names), log=log)
        for name in patches or list(series.names):
            i = series.index(name)
            p = parse_patch(name, series.path(name).read_text(encoding="utf-8"))
            red = tmp / f"red-{i}"
            red_tree = f"series without {name}"
            try:
                materialize(root, dest=red, exclude=(name,), log=log)
            except PatchApplyError as e:
                later = tuple(series.names[i:])
                materialize(root, dest=red, exclude=later, force=True, log=log)
                red_tree = f"series prefix before {name} ({e.patch} needs it)"
            ids = p.tests
            ours = [t for t in ids if t.startswith("tests/")]
            red_out = run_pytest(root, ids, red, tmp)
            pristine_out = run_pytest(root, ours, pristine, tmp) if ours else {}
            green_out = run_pytest(root, ids, None, tmp)
            for tid in ids:
                r, g = red_out[tid].counts, green_out[tid].counts
                pr = pristine_out.get(tid)
                if set(r) <= {"skipped"} and set(g) <= {"skipped"} and r and g:
                    rows.append(Row(name, tid, red_tree, red_out[tid], pr, green_out[tid], True,
                                    "all items skip in this environment", not_applicable=True))
                    continue
                why = []
                if r["failed"] == 0:
                    why.append("does not fail without the patch")
                if tid in ours and r["passed"]:
                    why.append(f"{r['passed']} item(s) pass without the patch")
                if pr is not None and (pr.counts["failed"] == 0 or pr.counts["passed"]):
                    why.append("does not fail in every item on pristine upstream")
                if g["failed"] or g["passed"] == 0:
                    why.append("does not pass with the patch")
                rows.append(Row(name, tid, red_tree, red_out[tid], pr, green_out[tid], not why, "; ".join(why)))
    return rows


def format_rows(rows: list[Row]) -> str:
    lines = ["red/green: each patch's Test: ids without the patch (red) and with the full series (green)"]
    for r in rows:
        status = "n/a " if r.not_applicable else ("ok  " if r.ok else "FAIL")
        lines.append(f"{status} {r.patch}  {r.test_id}")
        lines.append(f"       red   [{r.red_tree}]: {r.red.text()}")
        if r.pristine is not None:
            lines.append(f"       red   [pristine upstream]: {r.pristine.text()}")
        lines.append(f"       green [full series]: {r.green.text()}")
        if r.why:
            lines.append(f"       -> {r.why}")
    n_bad = sum(not r.ok for r in rows)
    n_na = sum(r.not_applicable for r in rows)
    for patch in dict.fromkeys(r.patch for r in rows):
        if all(r.not_applicable for r in rows if r.patch == patch):
            lines.append(f"warning: no Test: id of {patch} runs in this environment")
    lines.append(f"red/green: {len(rows) - n_bad - n_na} ok, {n_bad} failing, {n_na} n/a here")
    return "\n".join(lines)
