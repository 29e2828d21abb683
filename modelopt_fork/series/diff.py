"""Turn two trees into a byte-stable unified diff in upstream layout (paths a/modelopt/..., -p1).

The diff text depends only on file contents: git is run with no user or
system configuration, fixed algorithm and context, no renames, no colour.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .apply import git_env
from .tree import iter_files

_GIT_DIFF = [
    "git", "-c", "core.quotepath=false", "diff", "--no-index", "--no-prefix", "--no-color",
    "--no-ext-diff", "--no-textconv", "--no-renames", "--diff-algorithm=myers", "--unified=3",
]
_DIFF_LINE = re.compile(r"^diff --git (\S+) (\S+)$", re.M)


def patched_files(diff_text: str) -> list:
    """The files of a git diff, in order, as :class:`unidiff.PatchedFile` (path, hunks, added/removed)."""
    from unidiff import PatchSet

    return list(PatchSet(diff_text))


def file_sections(diff_text: str) -> list[tuple[str, str]]:
    """``(path, text)`` of each file's section of a git diff, in order; the texts join back to ``diff_text``."""
    return [(pf.path, str(pf)) for pf in patched_files(diff_text)]


def _normalize(text: str) -> str:
    # With --no-index the two sides are the literal paths "a/<p>" and "b/<p>"; an added
    # file shows as "b/<p> b/<p>". Rewrite every header to the canonical "a/<p> b/<p>".
    def fix(m: re.Match) -> str:
        path = m.group(2).split("/", 1)[1]
        return f"diff --git a/{path} b/{path}"

    return _DIFF_LINE.sub(fix, text)


def diff_trees(base: Path, target: Path, tops: list[str]) -> str:
    """Unified diff from ``base`` to ``target`` over the top-level dirs ``tops``.

    Both trees are in patch layout. Only files that differ are copied, so the
    diff is fast on a large tree.
    """
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        a.mkdir()
        b.mkdir()
        changed = False
        for top in sorted(tops):
            old = set(iter_files(base / top))
            new = set(iter_files(target / top))
            for rel in sorted(old | new):
                src, dst = base / top / rel, target / top / rel
                if rel in old and rel in new and src.read_bytes() == dst.read_bytes():
                    continue
                changed = True
                for side, f in ((a, src), (b, dst)):
                    if f.is_file():
                        out = side / top / rel
                        out.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(f, out)
        if not changed:
            return ""
        proc = subprocess.run(_GIT_DIFF + ["a", "b"], cwd=tmp, env=git_env(Path(tmp) / "x"),
                              capture_output=True, text=True)
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"git diff failed: {proc.stderr.strip()}")
        return _normalize(proc.stdout)
