"""The pull-request description `stage` writes next to each mbox (Markdown).

Sections: What / How to reproduce / The fix / Why it is safe / Validation.
Text comes from the patch's DEP-3 header (Description paragraphs, Bug), the
figures from the test runs `stage` made; nothing is invented: a section with
no source says so.
"""

from __future__ import annotations

import platform
import re
from importlib import metadata

from .header import PatchFile
from .pin import Pin

# Sentences of the fix paragraphs that say what keeps its old behaviour.
_SAFETY = re.compile(
    r"\b(unchanged|exactly|as before|took before|left as|still|bit-exact|bit-identical|instead of|"
    r"only (?:an?|the) |never)\b", re.I)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


def description_parts(patch: PatchFile) -> tuple[str, list[str]]:
    """(summary line, paragraphs) of the DEP-3 Description (' .' separates paragraphs)."""
    lines = str(patch.fields.get("Description", "")).splitlines()
    summary = lines[0].strip() if lines else patch.name
    paragraphs, cur = [], []
    for raw in lines[1:]:
        text = raw.strip()
        if text == ".":
            if cur:
                paragraphs.append(" ".join(cur))
            cur = []
        elif text:
            cur.append(text)
    if cur:
        paragraphs.append(" ".join(cur))
    return summary, paragraphs


def environment_line() -> str:
    def ver(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (f"Python {platform.python_version()}, torch {ver('torch')}, transformers {ver('transformers')}, "
            f"{platform.system()} {platform.machine()}")


def _result(outcome) -> str:
    text = outcome.text()
    if outcome.detail:
        first = outcome.detail.splitlines()[0]
        text += f" (first failure: `{first[:200]}`)"
    return text


def _numstat_rows(numstat: str) -> list[tuple[str, str, str]]:
    rows = []
    for line in numstat.splitlines():
        added, removed, path = line.split("\t", 2)
        rows.append((path, added, removed))
    return rows


def pr_description(patch: PatchFile, st, pin: Pin, numstat: str, env_line: str) -> str:
    summary, paragraphs = description_parts(patch)
    what = paragraphs[0] if paragraphs else summary
    fix = paragraphs[1:]
    base = f"the nvidia-modelopt {pin.version} release (the tree of `{pin.wheel}`)"
    if st.depends_on:
        them = "that change" if len(st.depends_on) == 1 else "those changes"
        base += f" with the fork's {', '.join(st.depends_on)} applied first (send {them} first)"
    rows = _numstat_rows(numstat)
    library = [r for r in rows if not r[0].startswith("tests/")]
    out = [f"# {summary}", "", "## What", "", what, ""]
    bug, fwd = patch.get("Bug"), patch.get("Forwarded")
    if bug:
        out += [f"Bug: {bug}", ""]
    if fwd.startswith("http") and fwd != bug:
        out += [f"Forwarded as: {fwd}", ""]

    out += ["## How to reproduce", "", f"On {base}, add the test file(s) of this change without the fix and run:", ""]
    if st.upstream_tests:
        out += ["```", f"python -m pytest {' '.join(st.upstream_tests)}", "```", ""]
        red = [r for r in st.runs if r.tree.endswith("without the fix")]
        if red:
            out += [f"- `{r.what}`: {_result(r.outcome)}" for r in red] + [""]
        elif not st.ran_tests:
            out += ["(Tests were not run when this was staged: `modelopt-fork stage --no-run-tests`.)", ""]
    else:
        out += ["This change carries no unit test yet; see What for the failure.", ""]

    out += ["## The fix", ""]
    out += [p + "\n" for p in fix] if fix else ["See What above and the diff.", ""]
    out += ["| file | added | removed |", "|---|---|---|"]
    out += [f"| `{p}` | {a} | {r} |" for p, a, r in rows] + [""]

    out += ["## Why it is safe", ""]
    safe = [s for p in fix for s in _SENTENCE.split(p) if _SAFETY.search(s)]
    out += [f"- {s}" for s in safe] or ["- (The description states no compatibility argument.)"]
    n_add = sum(int(a) for _, a, _ in library if a.isdigit())
    n_del = sum(int(r) for _, _, r in library if r.isdigit())
    out += [f"- Scope: {len(library)} library file(s), +{n_add} -{n_del} lines; "
            f"{len(rows) - len(library)} test file(s).", ""]

    out += ["## Validation", ""]
    if st.runs:
        out += ["| test | tree | result |", "|---|---|---|"]
        out += [f"| `{r.what}` | {r.tree} | {_result(r.outcome)} |" for r in st.runs] + [""]
        out += [f"Environment: {env_line}.", ""]
    elif st.ran_tests:
        out += ["No tests to run for this change.", ""]
    else:
        out += ["Tests were not run when this was staged (`--no-run-tests`).", ""]
    out += [f"The patch applies with `git am` to {base} and gives exactly the staged tree (checked when staged).",
            ""]
    for note in st.notes:
        out += [f"> note: {note}"]
    return "\n".join(out).rstrip() + "\n"
