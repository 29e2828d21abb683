"""`modelopt-fork stage`: each patch as an upstream pull request (git mbox + PR description).

For patch P the change is rebuilt in a throwaway git repository made from the
pristine upstream tree (the tree `materialize` starts from): one commit holding
the wheel's packages, then P applied (context must match exactly; hunks may
move by whole lines, which the commit's regenerated diff absorbs). If P only
applies on top of earlier patches of the series, those are committed first and
the PR description says so. New files get upstream's Apache-2.0 SPDX header if
they lack it, the commit message is the DEP-3 Description, and the author and
the sign-off (DCO) are both the configured git identity, the person sending it
(a header Author who is someone else is credited with a Co-authored-by trailer;
a placeholder identity is reported in the notes). The mbox
is `git format-patch` output, checked with `git am` onto the same base before it
is written. A header field `Stage-With: LATER.patch ...` makes one pull request of
P and those later patches: one mbox with a commit per patch, one description;
staging any member stages the group. Tests: the upstream-style test files P carries (tests/unit/...) run
in that repository without the fix (red) and with it (green), and P's own fork
Test: ids run against the full series; their counts go into the description.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path

from .apply import apply_patch
from .diff import file_sections
from .errors import PatchApplyError, SeriesError
from .gitrepo import GitError, am, commit_all, format_patch, git, git_identity, head, init_repo, tree_of
from .header import PatchFile, parse_patch
from .materialize import ensure_pristine, materialize
from .pin import Pin, load_pin
from .prdesc import environment_line, pr_description
from .redgreen import Outcome, run_pytest
from .seriesfile import Series, load_series
from .tree import UPSTREAM_TESTS_DIR

NOT_NEEDED = "not-needed"
SPDX_MARK = "SPDX-License-Identifier"
# File types whose comments start with '#', the form of upstream's header.
HASH_COMMENT_SUFFIXES = (".py", ".sh", ".yaml", ".yml", ".toml", ".cfg")


@dataclass
class TestRun:
    what: str  # the test file or id
    tree: str  # the tree it ran against
    outcome: Outcome


@dataclass
class Staged:
    name: str
    skipped: str = ""
    mbox: Path | None = None
    markdown: Path | None = None
    depends_on: list[str] = field(default_factory=list)
    upstream_tests: list[str] = field(default_factory=list)
    runs: list[TestRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ran_tests: bool = False


# Domains reserved for documentation and tests (RFC 2606, RFC 6761), and GitHub's no-reply addresses.
_PLACEHOLDER_DOMAIN = re.compile(r"(^|\.)(example|invalid|test|localhost)$|^example\.(com|net|org)$|users\.noreply\.")


def is_placeholder(email: str) -> bool:
    """Whether ``email`` cannot be a real person's address (a reserved or no-reply domain)."""
    local, at, domain = email.lower().rpartition("@")
    return not (local and at and domain) or bool(_PLACEHOLDER_DOMAIN.search(domain))


def commit_message(patch: PatchFile) -> str:
    """Subject plus the Description body, wrapped as in the header."""
    lines = str(patch.fields.get("Description", "")).splitlines()
    body = ["" if ln.strip() == "." else ln[1:] if ln[:1] in (" ", "\t") else ln for ln in lines[1:]]
    return "\n".join([lines[0].strip(), "", *body]).rstrip() + "\n"


def upstream_spdx_header(pristine: Path, pin: Pin, year: int) -> str:
    """The license header upstream puts on its files (read from the package's __init__.py), dated ``year``."""
    src = pristine / pin.packages[0] / "__init__.py"
    head_lines = []
    for line in src.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.startswith("#"):
            break
        head_lines.append(line)
    text = "".join(head_lines)
    if SPDX_MARK not in text:
        raise SeriesError(f"{src}: no {SPDX_MARK} header to copy")
    return re.sub(r"Copyright \(c\) \d{4}(-\d{4})?", f"Copyright (c) {year}", text, count=1) + "\n"


def _patch_files(patch: PatchFile) -> list[str]:
    return [path for path, _ in file_sections(patch.diff_text)]


def _candidate_bases(series: Series, patches: dict[str, PatchFile], name: str) -> list[list[str]]:
    """Prerequisite sets to try, smallest first: none, earlier patches touching P's files, all earlier ones."""
    earlier = list(series.names[: series.index(name)])
    mine = set(_patch_files(patches[name]))
    overlapping = [n for n in earlier if mine & set(_patch_files(patches[n]))]
    out = [[]]
    for cand in (overlapping, earlier):
        if cand and cand not in out:
            out.append(cand)
    return out


def stage_groups(series: Series, patches: dict[str, PatchFile]) -> dict[str, list[str]]:
    """Each patch's pull request: the patches staged with it (``Stage-With:``), its own name first."""
    groups = {n: [n] for n in series.names}
    for n in series.names:
        for other in (patches[n].get("Stage-With") or "").split():
            if other not in groups or series.index(other) <= series.index(n):
                raise SeriesError(f"patches/{n}: Stage-With names {other!r}, which is not a later patch of the series")
            if groups[other] != [other]:
                raise SeriesError(f"patches/{n}: Stage-With names {other!r}, already staged with {groups[other][0]}")
            groups[n].append(other)
            groups[other] = groups[n]
    return groups


def _build_commit(repo: Path, pristine_commit: str, series: Series, patches: dict[str, PatchFile], name: str,
                  identity: tuple[str, str]) -> list[str]:
    """Apply ``name`` (and the fewest earlier patches it needs) to ``repo``; the prerequisites used."""
    errors = []
    for base in _candidate_bases(series, patches, name):
        git(repo, "reset", "-q", "--hard", pristine_commit)
        git(repo, "clean", "-fdq")
        try:
            for dep in base:
                apply_patch(dep, series.path(dep).read_text(encoding="utf-8"), repo, exact=False)
            if base:
                commit_all(repo, f"Fork patches this change builds on: {', '.join(base)}\n", author=identity,
                           committer=identity, date=_date(patches[name]), signoff=False)
            apply_patch(name, series.path(name).read_text(encoding="utf-8"), repo, exact=False)
            return base
        except PatchApplyError as e:
            errors.append(f"on pristine{' + ' + ', '.join(base) if base else ''}: {e.detail}")
    raise SeriesError(f"cannot stage {name}: it does not apply\n  " + "\n  ".join(errors))


def _date(patch: PatchFile) -> str:
    day = patch.get("Last-Update") or _dt.date.today().isoformat()
    return f"{day}T00:00:00+0000"


def _add_spdx_headers(repo: Path, base_rev: str, header: str) -> list[str]:
    """Prepend upstream's header to each new file (since ``base_rev``) that lacks one; notes on what changed."""
    git(repo, "add", "-A")
    added = git(repo, "diff", "--cached", "--name-only", "--diff-filter=A", base_rev).split()
    notes = []
    for rel in added:
        path = repo / rel
        if not rel.endswith(HASH_COMMENT_SUFFIXES):
            notes.append(f"{rel}: new file of a type without '#' comments; add upstream's license header by hand")
            continue
        text = path.read_text(encoding="utf-8")
        if SPDX_MARK in "".join(text.splitlines(keepends=True)[:20]):
            continue
        lines = text.splitlines(keepends=True)
        shebang = lines[0] if lines and lines[0].startswith("#!") else ""
        path.write_text(shebang + header + text[len(shebang):], encoding="utf-8")
        notes.append(f"{rel}: added upstream's Apache-2.0 SPDX header")
    return notes


def _verify_mbox(repo: Path, base_rev: str, mbox: Path, want_tree: str) -> None:
    """``git am`` the mbox onto ``base_rev`` and require the exact tree of the staged commit."""
    fix_commit = head(repo)
    git(repo, "checkout", "-q", "--detach", base_rev)
    am(repo, mbox)
    got = tree_of(repo, "HEAD")
    git(repo, "checkout", "-q", "--detach", fix_commit)
    if got != want_tree:
        raise GitError(f"{mbox}: git am onto the base gives tree {got}, the staged commit has {want_tree}")


def _imports_modelopt_from(repo: Path) -> None:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", "import modelopt; print(modelopt.__file__)"], cwd=repo,
                       capture_output=True, text=True)
    where = p.stdout.strip()
    if p.returncode != 0 or not Path(where).resolve().is_relative_to(repo.resolve()):
        raise SeriesError(f"running tests in {repo}: modelopt imports from {where or p.stderr.strip()!r}, "
                          "not from that tree")


def _run_staged_tests(repo: Path, base_rev: str, fix_rev: str, files: list[str], pin: Pin, base_label: str,
                      work: Path) -> list[TestRun]:
    """The staged test files without the fix's code (red), then with it (green), in the staged repo."""
    (repo / "pytest.ini").write_text("[pytest]\n")  # rootdir = repo, so junit paths are tests/...
    with open(repo / ".git" / "info" / "exclude", "a") as f:
        f.write("pytest.ini\n")
    _imports_modelopt_from(repo)
    code_diff = git(repo, "diff", "--no-renames", base_rev, fix_rev, "--", *pin.packages)
    runs = []
    if code_diff:
        apply_patch("fix (reverse)", code_diff, repo, reverse=True)
        red = run_pytest(repo, files, None, work)
        git(repo, "checkout", "-q", "-f", fix_rev, "--", ".")
        git(repo, "clean", "-fdq")
        runs += [TestRun(f, f"{base_label} without the fix", red[f]) for f in files]
    green = run_pytest(repo, files, None, work)
    runs += [TestRun(f, f"{base_label} + this change", green[f]) for f in files]
    return runs


@dataclass
class _Job:
    st: Staged
    patch: PatchFile
    repo: Path
    base_rev: str
    fix_rev: str


def _commit_patch(repo: Path, patch: PatchFile, identity: tuple[str, str], st: Staged) -> str:
    """Commit the applied ``patch`` as the sender (author and sign-off); the commit's id."""
    message = commit_message(patch)
    author = parseaddr(patch.get("Author") or "")
    if all(author) and author[1].lower() != identity[1].lower() and not is_placeholder(author[1]):
        message += f"\nCo-authored-by: {author[0]} <{author[1]}>\n"
    for who, email in (("the patch's Author:", author[1]), ("the git identity that signs off", identity[1])):
        note = (f"{who} {email} is a placeholder address: a DCO check needs a real identity "
                "(git config user.name / user.email) before this is sent")
        if email and is_placeholder(email) and note not in st.notes:
            st.notes.append(note)
    return commit_all(repo, message, author=identity, committer=identity, date=_date(patch), signoff=True)


def _stage_commit(root: Path, pin: Pin, series: Series, patches: dict[str, PatchFile], group: list[str],
                  pristine: Path, identity: tuple[str, str], repo: Path, out: Path) -> _Job:
    """Build the commits of ``group`` (a pull request) in the new dir ``repo``, write and verify its mbox."""
    name = group[0]
    patch = patches[name]
    st = Staged(name)
    repo.mkdir()
    for top in pin.packages:
        shutil.copytree(pristine / top, repo / top)
    pristine_commit = init_repo(repo, f"{pin.requirement} (pristine wheel tree)\n")
    st.depends_on = _build_commit(repo, pristine_commit, series, patches, name, identity)
    base_rev = head(repo)
    year = int(_date(patch)[:4])
    st.notes += _add_spdx_headers(repo, base_rev, upstream_spdx_header(pristine, pin, year))
    fix_rev = _commit_patch(repo, patch, identity, st)
    for member in group[1:]:
        try:
            apply_patch(member, series.path(member).read_text(encoding="utf-8"), repo, exact=False)
        except PatchApplyError as e:
            raise SeriesError(f"cannot stage {member} with {name} (Stage-With): {e.detail}") from e
        fix_rev = _commit_patch(repo, patches[member], identity, st)
    if group[1:]:
        st.notes.append(f"one pull request of {len(group)} commits: {', '.join(group)} (Stage-With)")
    st.mbox = out / f"{name.removesuffix('.patch')}.mbox"
    st.mbox.write_text(format_patch(repo, fix_rev, count=len(group)), encoding="utf-8")
    _verify_mbox(repo, base_rev, st.mbox, tree_of(repo, fix_rev))
    st.upstream_tests = git(repo, "diff", "--name-only", base_rev, fix_rev, "--", "tests").split()
    if not st.upstream_tests:
        st.notes.append("carries no upstream-style test (tests/unit/...): add one before sending")
    for tid in [t for member in group for t in patches[member].tests]:
        mapped = "tests/" + tid.split("::", 1)[0].removeprefix(UPSTREAM_TESTS_DIR + "/")
        if tid.startswith(UPSTREAM_TESTS_DIR + "/") and mapped not in st.upstream_tests:
            st.notes.append(f"Test: id {tid} is not a file this patch adds as {mapped}")
    return _Job(st, patch, repo, base_rev, fix_rev)


def _run_tests(root: Path, pin: Pin, job: _Job, fork_tree: Path | None, work: Path) -> None:
    st = job.st
    st.ran_tests = True
    work.mkdir()
    base_label = pin.requirement + (f" + {', '.join(st.depends_on)}" if st.depends_on else "")
    if st.upstream_tests:
        st.runs += _run_staged_tests(job.repo, job.base_rev, job.fix_rev, st.upstream_tests, pin, base_label, work)
        green = [r for r in st.runs if r.tree.endswith("+ this change")]
        if any(not set(r.outcome.counts) <= {"passed", "skipped"} for r in green):
            st.notes.append(f"its upstream-style test does not pass on {base_label} + this change alone (see "
                            "Validation): it may need another patch of the series, or hardware this run lacked")
    ours = [t for t in job.patch.tests if t.startswith("tests/")]
    if ours:
        res = run_pytest(root, ours, fork_tree, work)
        st.runs += [TestRun(t, f"fork series on {pin.requirement}", res[t]) for t in ours]


def stage(root: Path, names: list[str] | None, out: Path, *, run_tests: bool = True, log=print) -> list[Staged]:
    """Stage ``names`` (default: the whole series) into ``out``; one :class:`Staged` per patch, in order."""
    root, out = Path(root).resolve(), Path(out).resolve()
    pin, series = load_pin(root), load_series(root)
    names = list(dict.fromkeys(names or series.names))
    for n in names:
        series.index(n)
    patches = {n: parse_patch(n, series.path(n).read_text(encoding="utf-8")) for n in series.names}
    results = {n: Staged(n, skipped=f"Forwarded: {NOT_NEEDED} (fork-only change)")
               for n in names if patches[n].get("Forwarded") == NOT_NEEDED}
    groups = stage_groups(series, patches)
    todo = []
    for n in names:
        head_name = groups[n][0]
        if head_name != n and n not in results:
            results[n] = Staged(n, skipped=f"staged with {head_name} (Stage-With: one pull request)")
        if head_name not in todo and patches[head_name].get("Forwarded") != NOT_NEEDED:
            todo.append(head_name)
    if not todo:
        return [results[n] for n in names]
    identity = git_identity(root)
    pristine = ensure_pristine(root, pin, log)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stage-") as tmp:
        tmp = Path(tmp)
        jobs = [_stage_commit(root, pin, series, patches, groups[n], pristine, identity, tmp / f"repo-{i}", out)
                for i, n in enumerate(todo)]
        if run_tests:
            fork_tree = None
            if any(t.startswith("tests/") for j in jobs for t in j.patch.tests):
                fork_tree = tmp / "series"
                materialize(root, dest=fork_tree, log=log)
            log(f"running the tests of {len(jobs)} patch(es)")
            # each patch has its own repository: run them side by side, one per core
            with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
                list(pool.map(lambda ij: _run_tests(root, pin, ij[1], fork_tree, tmp / f"work-{ij[0]}"),
                              enumerate(jobs)))
        env_line = environment_line() if run_tests else ""
        for job in jobs:
            st = job.st
            st.markdown = st.mbox.with_suffix(".md")
            numstat = git(job.repo, "diff", "--numstat", "--no-renames", job.base_rev, job.fix_rev)
            st.markdown.write_text(pr_description(job.patch, st, pin, numstat, env_line), encoding="utf-8")
            results[st.name] = st
            log(f"staged {st.name} -> {st.mbox.name}, {st.markdown.name}")
    return [results[n] for n in dict.fromkeys([*names, *todo])]
