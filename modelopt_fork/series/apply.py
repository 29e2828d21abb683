"""Apply one patch to a tree: exact context at the stated line (no fuzz, no offset), then `git apply`."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from unidiff import PatchSet
from unidiff.errors import UnidiffParseError

from .errors import PatchApplyError


def git_env(tree: Path) -> dict[str, str]:
    """Environment that keeps git away from any enclosing repository and from user config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_CEILING_DIRECTORIES"] = str(Path(tree).resolve().parent)
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    env["LC_ALL"] = "C"
    return env


def _strip1(path: str) -> str:
    return path.split("/", 1)[1] if "/" in path else path


@dataclass(frozen=True)
class Mismatch:
    """A part of a diff that does not match the tree: ``hunk`` is the hunk's text ('' for a whole file)."""

    path: str
    message: str
    hunk: str = ""


def context_mismatches(diff_text: str, tree: Path) -> list[Mismatch]:
    """Every hunk of ``diff_text`` whose context is not at its stated line in ``tree`` (empty = applies exactly)."""
    try:
        ps = PatchSet(diff_text)
    except UnidiffParseError as e:
        return [Mismatch("", f"not a unified diff: {e}")]
    out = []
    for pf in ps:
        src = _strip1(pf.source_file)
        tgt = _strip1(pf.target_file)
        if pf.is_added_file:
            if (tree / tgt).exists():
                out.append(Mismatch(tgt, f"{tgt}: patch adds this file but it already exists"))
            continue
        path = tree / src
        if not path.is_file():
            out.append(Mismatch(src, f"{src}: file to patch does not exist"))
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for hunk in pf:
            want = [ln.value.rstrip("\n").rstrip("\r") for ln in hunk.source_lines()]
            start = hunk.source_start - 1 if hunk.source_length else hunk.source_start
            have = lines[start : start + len(want)]
            if have != want:
                pairs = enumerate(zip(have, want, strict=False))
                bad = next((i for i, (a, b) in pairs if a != b), min(len(have), len(want)))
                got = have[bad] if bad < len(have) else "<end of file>"
                exp = want[bad] if bad < len(want) else "<end of hunk>"
                header = str(hunk).splitlines()[0]
                out.append(Mismatch(src, (
                    f"hunk {header!s} in {src} does not match at line {start + bad + 1}:\n"
                    f"    expected: {exp!r}\n"
                    f"    found:    {got!r}"
                ), str(hunk)))
    return out


def _exact_context_problem(name: str, diff_text: str, tree: Path) -> str | None:
    found = context_mismatches(diff_text, tree)
    return found[0].message if found else None


def apply_patch(name: str, patch_text: str, tree: Path, *, reverse: bool = False, check: bool = False,
                exact: bool = True) -> None:
    """Apply ``patch_text`` (header allowed) to ``tree`` with ``-p1``. Raises :class:`PatchApplyError`.

    Forward application first checks every hunk's context at its stated line
    number (no fuzz, no offset), so a stale patch fails here with the hunk named
    instead of landing somewhere nearby. ``exact=False`` skips that check and
    lets `git apply` move hunks by whole lines (still no fuzz: every context line
    must match); only for tools that regenerate the diff afterwards (stage, rebase).
    """
    from .header import split_patch

    _, diff_text = split_patch(patch_text)
    if not diff_text.strip():
        raise PatchApplyError(name, "it contains no 'diff --git' section")
    if not reverse and exact:
        problem = _exact_context_problem(name, diff_text, tree)
        if problem:
            raise PatchApplyError(name, problem)
    cmd = ["git", "apply", "-p1", "--whitespace=nowarn"]
    if reverse:
        cmd.append("--reverse")
    if check:
        cmd.append("--check")
    proc = subprocess.run(cmd, input=diff_text, text=True, cwd=tree, env=git_env(tree), capture_output=True)
    if proc.returncode != 0:
        raise PatchApplyError(name, ("reverse " if reverse else "") + "git apply: " + proc.stderr.strip())
