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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PatchApplyError
from .header import parse_patch
from .materialize import materialize
from .seriesfile import load_series


@dataclass
class Outcome:
    counts: Counter = field(default_factory=Counter)  # passed / failed / skipped
    detail: str = ""

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
    """Outcome per Test id (items attributed to the id they were collected from).

    The ids run in one pytest process. If that process cannot run them all (a
    collection error, e.g. a test importing an API the patch adds), each id is
    run on its own, and an id that cannot even be collected counts as one failure
    ("collection error"): without the patch, that is the expected red.
    """
    xml = workdir / f"junit-{len(list(workdir.iterdir()))}.xml"
    env = dict(os.environ)
    env.setdefault("HYPOTHESIS_PROFILE", "ci")  # derandomized: red/green must be reproducible
    env.pop("MODELOPT_FORK_TREE", None)
    if tree is not None:
        env["MODELOPT_FORK_TREE"] = str(tree)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rN", "-o", "junit_family=xunit1",
           f"--junitxml={xml}", *ids]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if not xml.is_file() or proc.returncode not in (0, 1):
        if len(ids) > 1:
            out: dict[str, Outcome] = {}
            for tid in ids:
                out.update(run_pytest(root, [tid], tree, workdir))
            return out
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        raised = [ln[1:].strip() for ln in lines if ln.startswith("E   ")]  # pytest's "E   Error: ..." lines
        detail = raised[-1] if raised else "\n".join(lines[-3:])
        return {ids[0]: Outcome(Counter({"failed (collection error)": 1}), detail)}
    out = {tid: Outcome() for tid in ids}
    for case in ET.parse(xml).getroot().iter("testcase"):
        file = case.get("file", "")
        name = case.get("name", "")
        kind, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                kind, message = "failed", message or (child.get("message") or "").strip()
            elif child.tag == "skipped":
                kind = "skipped"
        for tid in ids:
            tfile, _, tname = tid.partition("::")
            tname = tname.split("::")[-1]
            if file == tfile and (not tname or name == tname or name.startswith(tname + "[")):
                out[tid].counts[kind] += 1
                if message and not out[tid].detail:
                    out[tid].detail = message  # the first failure's message
    return out


def _judge(name: str, tid: str, red_tree: str, red: Outcome, pristine: Outcome | None, green: Outcome) -> Row:
    r, g = red.counts, green.counts
    if g and set(g) <= {"skipped"}:
        # cannot be proven here (e.g. a transformers>=5 test on 4.57)
        return Row(name, tid, red_tree, red, pristine, green, True, "all items skip in this environment",
                   not_applicable=True)
    failed = lambda c: c["failed"] + c["failed (collection error)"]  # noqa: E731
    why = []
    if failed(r) == 0:
        why.append("does not fail without the patch")
    if tid.startswith("tests/") and r["passed"]:
        why.append(f"{r['passed']} item(s) pass without the patch")
    if pristine is not None and (failed(pristine.counts) == 0 or pristine.counts["passed"]):
        why.append("does not fail in every item on pristine upstream")
    if failed(g) or g["passed"] == 0:
        why.append("does not pass with the patch")
    return Row(name, tid, red_tree, red, pristine, green, not why, "; ".join(why))


def red_green(root: Path, patches: list[str] | None = None, log=print) -> list[Row]:
    root = Path(root).resolve()
    series = load_series(root)
    materialize(root, log=log)  # green = the checkout, up to date with the series
    with tempfile.TemporaryDirectory(prefix="red-green-") as tmp:
        tmp = Path(tmp)
        pristine = tmp / "pristine"
        materialize(root, dest=pristine, exclude=tuple(series.names), log=log)
        jobs = []  # (patch, red tree, its description, Test ids)
        for name in patches or list(series.names):
            i = series.index(name)
            red = tmp / f"red-{i}"
            red_tree = f"series without {name}"
            try:
                materialize(root, dest=red, exclude=(name,), log=log)
            except PatchApplyError as e:
                materialize(root, dest=red, exclude=tuple(series.names[i:]), force=True, log=log)
                red_tree = f"series prefix before {name} ({e.patch} needs it)"
            jobs.append((name, red, red_tree, parse_patch(name, series.path(name).read_text(encoding="utf-8")).tests))

        def run(job):
            name, red, red_tree, ids = job
            work = tmp / f"work-{name}"
            work.mkdir()
            ours = [t for t in ids if t.startswith("tests/")]
            red_out = run_pytest(root, ids, red, work)
            pristine_out = run_pytest(root, ours, pristine, work) if ours else {}
            green_out = run_pytest(root, ids, None, work)
            return [_judge(name, t, red_tree, red_out[t], pristine_out.get(t), green_out[t]) for t in ids]

        # each job is a few pytest processes: run patches side by side, one per core
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            return [row for rows in pool.map(run, jobs) for row in rows]


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
