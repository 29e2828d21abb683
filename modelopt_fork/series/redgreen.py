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

    The ids run in one pytest process (``--continue-on-collection-errors``): a
    test file that cannot be collected (e.g. it imports an API the patch adds)
    counts as one failure ("collection error") for each of its ids; without the
    patch, that is the expected red. Only if that process leaves no report (an
    internal error) is each id run on its own.
    """
    xml = workdir / f"junit-{len(list(workdir.iterdir()))}.xml"
    env = dict(os.environ)
    env.setdefault("HYPOTHESIS_PROFILE", "ci")  # derandomized: red/green must be reproducible
    env.pop("MODELOPT_FORK_TREE", None)
    if tree is not None:
        env["MODELOPT_FORK_TREE"] = str(tree)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rN", "-o", "junit_family=xunit1",
           "--continue-on-collection-errors", f"--junitxml={xml}", *ids]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    cases = _testcases(xml)
    if not cases:
        if len(ids) > 1:
            out: dict[str, Outcome] = {}
            for tid in ids:
                out.update(run_pytest(root, [tid], tree, workdir))
            return out
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        detail = _last_raised(lines) or "\n".join(lines[-3:])
        return {ids[0]: Outcome(Counter({"failed (collection error)": 1}), detail)}
    return outcomes(cases, ids)


def _last_raised(lines: list[str]) -> str:
    """The last of pytest's ``E   Error: ...`` lines ("" if none)."""
    raised = [ln[1:].strip() for ln in lines if ln.startswith("E   ")]
    return raised[-1] if raised else ""


def _testcases(xml: Path) -> list:
    return list(ET.parse(xml).getroot().iter("testcase")) if Path(xml).is_file() else []


def outcomes(cases, ids: list[str]) -> dict[str, Outcome]:
    """Outcome per Test id from junit ``testcase`` elements (pytest's xunit1 report)."""
    out = {tid: Outcome() for tid in ids}
    for case in cases:
        file = case.get("file", "")
        name = case.get("name", "")
        kind, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                kind, message = "failed", message or (child.get("message") or "").strip()
                if message == "collection failure":  # the whole file: say what it raised
                    kind = "failed (collection error)"
                    message = _last_raised((child.text or "").splitlines()) or message
            elif child.tag == "skipped":
                kind = "skipped"
        for tid in ids:
            tfile, _, tname = tid.partition("::")
            tname = tname.split("::")[-1]
            whole_file = kind == "failed (collection error)"
            if file == tfile and (whole_file or not tname or name == tname or name.startswith(tname + "[")):
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


def red_green(root: Path, patches: list[str] | None = None, log=print, green_from: Path | None = None) -> list[Row]:
    """Judge each patch. ``green_from``: a junit report (``-o junit_family=xunit1``) of a pytest run
    of the full series, e.g. the test suite's own run; ids with an item in it take their green
    outcome from it, the others are run."""
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

        # One pytest process per red tree; one for every patch's ids under tests/ against
        # pristine upstream, one for every id against the full series (each process pays the
        # torch/transformers/modelopt imports once). Run side by side, one per core.
        every = list(dict.fromkeys(t for *_, ids in jobs for t in ids))
        green_known: dict[str, Outcome] = {}
        if green_from is not None:
            green_known = {t: o for t, o in outcomes(_testcases(green_from), every).items() if o.counts}
        # An id whose every item skips with the full series cannot be proven here (n/a): its red
        # and pristine runs would only skip too, so they are not started.
        skip_only = {t for t, o in green_known.items() if set(o.counts) <= {"skipped"}}
        ours = [t for t in every if t.startswith("tests/") and t not in skip_only]
        runs = {}
        to_run = [t for t in every if t not in green_known]
        if to_run:
            runs[("green", None)] = (to_run, None)  # the longest runs first
        if ours:
            runs[("pristine", None)] = (ours, pristine)
        runs.update({("red", name): (live, red) for name, red, _, ids in jobs
                     if (live := [t for t in ids if t not in skip_only])})

        def run(key):
            work = tmp / f"work-{key[0]}-{key[1] or 'all'}"
            work.mkdir()
            ids, tree = runs[key]
            return key, run_pytest(root, ids, tree, work)

        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            got = dict(pool.map(run, list(runs)))
        pristine_out, green_out = got.get(("pristine", None), {}), {**got.get(("green", None), {}), **green_known}
        return [
            _judge(name, t, red_tree, got.get(("red", name), {}).get(t, Outcome(detail="not run: n/a here")),
                   pristine_out.get(t), green_out[t])
            for name, _, red_tree, ids in jobs
            for t in ids
        ]


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
