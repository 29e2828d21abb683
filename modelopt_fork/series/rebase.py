"""`modelopt-fork rebase --to VERSION`: move the patch series onto another upstream release.

The release is downloaded by name with pip (or taken from ``--wheel PATH``) and
its sha256 recorded. The series is then applied to it cumulatively, in order,
each patch graded:

* ``applies``: every hunk's context is at its stated line (what materialize needs);
* ``applies, moved``: the context is intact but at other lines; `git apply` places
  it (whole-line offsets, never fuzz) and the regenerated patch has the new lines;
* ``already upstream``: the patch's library part reverse-applies, so the release
  has it (its tests/ part is ours: upstream's wheel carries no tests);
* ``conflict``: neither; the hunks that match nowhere are shown.

A patch in conflict is left out and the next patches are tried on the tree
without it. With no conflict (and not ``dry_run``) the series is written: every
applied patch regenerated against the new base by :func:`diff.diff_trees` (the
refresh machinery: byte-stable, header kept, ``Upstream-Base`` updated), each
already-upstream patch moved to ``patches/applied-upstream/`` with
``Applied-Upstream`` set and its series line turned into a comment, and
UPSTREAM.toml pointed at the release.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from .apply import Mismatch, apply_patch, context_mismatches
from .diff import diff_trees, file_sections
from .errors import DirtyTreeError, PatchApplyError, PinError
from .header import set_field, split_patch
from .materialize import patch_tops, tree_state
from .pin import Pin, load_pin, write_pin
from .seriesfile import PATCH_DIR, SERIES_FILE, load_series, parse_series_text
from .wheel import cache_dir, pip_download, sha256_file, unpack

APPLIED_UPSTREAM_DIR = "applied-upstream"
APPLIES, MOVED, UPSTREAM, CONFLICT = "applies", "applies, moved", "already upstream", "conflict"


@dataclass
class PatchResult:
    name: str
    status: str
    problems: list[Mismatch] = field(default_factory=list)  # for a conflict: the hunks that match nowhere
    detail: str = ""
    old_text: str = ""  # the patch file as it was
    new_text: str | None = None  # the regenerated patch file (applied patches)

    @property
    def changed(self) -> bool:
        return self.new_text is not None and self.new_text != self.old_text


@dataclass
class RebaseReport:
    old: Pin
    new: Pin
    wheel: Path
    results: list[PatchResult]
    written: bool = False

    @property
    def conflicts(self) -> list[PatchResult]:
        return [r for r in self.results if r.status == CONFLICT]


def split_by_top(diff_text: str) -> dict[str, str]:
    """The file sections of a diff, joined per top-level directory of their path."""
    out: dict[str, str] = {}
    for path, section in file_sections(diff_text):
        top = path.split("/", 1)[0]
        out[top] = out.get(top, "") + section
    return out


def _hunk_source_lines(hunk: str) -> list[str]:
    return [ln[1:] for ln in hunk.splitlines()[1:] if ln[:1] in (" ", "-")]


def _matches_nowhere(m: Mismatch, tree: Path) -> bool:
    """A hunk whose context (and removed lines) appear nowhere in the file: a real conflict, not a move."""
    if not m.hunk:
        return True
    want = _hunk_source_lines(m.hunk)
    path = tree / m.path
    if not path.is_file():
        return True
    have = path.read_text(encoding="utf-8").splitlines()
    return not any(have[i : i + len(want)] == want for i in range(len(have) - len(want) + 1))


def release_wheel(root: Path, pin: Pin, version: str, wheel: Path | None, workdir: Path, log) -> Path:
    """The wheel of ``pin.distribution`` ``version``: ``wheel`` if given (checked by file name), else pip's."""
    if wheel is None:
        return pip_download(f"{pin.distribution}=={version}", workdir, log)
    wheel = Path(wheel)
    if not wheel.is_file():
        raise PinError(f"--wheel {wheel}: no such file")
    try:
        dist, ver, _, _ = parse_wheel_filename(wheel.name)
    except InvalidWheelFilename as e:
        raise PinError(f"--wheel {wheel}: {e}") from None
    if dist != canonicalize_name(pin.distribution) or ver != Version(version):
        raise PinError(f"--wheel {wheel}: that is {dist} {ver}, not {pin.distribution} {version}")
    return wheel


def grade_series(root: Path, base: Path, new_requirement: str, log) -> list[PatchResult]:
    """Apply patches/series cumulatively to the tree ``base`` (patch layout); one result per patch."""
    series = load_series(root)
    pin = load_pin(root)
    tops = patch_tops(pin)
    with tempfile.TemporaryDirectory(prefix="rebase-") as tmp:
        tree, prev = Path(tmp) / "tree", Path(tmp) / "prev"  # prev: the tree before the current patch
        for t in (tree, prev):
            shutil.copytree(base, t)
        results = []
        for name in series.names:
            text = series.path(name).read_text(encoding="utf-8")
            header, diff = split_patch(text)
            r = PatchResult(name, APPLIES, old_text=text)
            mismatches = context_mismatches(diff, tree)
            try:
                apply_patch(name, text, tree, exact=False, check=True)
            except PatchApplyError as e:
                library = "".join(s for top, s in split_by_top(diff).items() if top != "tests")
                try:
                    if not library:
                        raise PatchApplyError(name, "no library part") from None
                    apply_patch(name, library, tree, reverse=True, check=True)
                    r.status = UPSTREAM
                except PatchApplyError:
                    r.status, r.detail = CONFLICT, e.detail
                    r.problems = [m for m in mismatches if _matches_nowhere(m, tree)]
                results.append(r)
                log(f"{name}: {r.status}")
                continue
            if mismatches:
                r.status = MOVED
            apply_patch(name, text, tree, exact=False)
            new_diff = diff_trees(prev, tree, tops)
            apply_patch(name, new_diff, prev)  # exact: the regenerated patch needs no offset
            r.new_text = set_field(header, "Upstream-Base", new_requirement) + new_diff
            results.append(r)
            log(f"{name}: {r.status}")
    return results


def _series_without(root: Path, dropped: dict[str, str]) -> str:
    """patches/series with each dropped patch's line turned into a comment saying why."""
    path = Path(root) / PATCH_DIR / SERIES_FILE
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for lineno, name in parse_series_text("".join(lines)):
        if name in dropped:
            lines[lineno - 1] = f"# {name}: {dropped[name]}\n"
    return "".join(lines)


def write_rebase(root: Path, report: RebaseReport, log) -> None:
    root = Path(root)
    patch_dir = root / PATCH_DIR
    dropped = {}
    for r in report.results:
        if r.status == UPSTREAM:
            header, diff = split_patch(r.old_text)
            dest = patch_dir / APPLIED_UPSTREAM_DIR / r.name
            dest.parent.mkdir(exist_ok=True)
            dest.write_text(set_field(header, "Applied-Upstream", report.new.version) + diff, encoding="utf-8")
            (patch_dir / r.name).unlink()
            dropped[r.name] = f"applied upstream in {report.new.version} (now {PATCH_DIR}/{APPLIED_UPSTREAM_DIR}/)"
        elif r.changed:
            (patch_dir / r.name).write_text(r.new_text, encoding="utf-8")
    if dropped:
        (patch_dir / SERIES_FILE).write_text(_series_without(root, dropped), encoding="utf-8")
    cached = cache_dir(root) / report.new.wheel
    if report.wheel.resolve() != cached.resolve():
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report.wheel, cached)
        report.wheel = cached
    write_pin(root, version=report.new.version, wheel=report.new.wheel, sha256=report.new.sha256)
    report.written = True
    log(f"UPSTREAM.toml now pins {report.new.requirement}; {len(report.results) - len(dropped)} patch(es) in "
        f"the series, {len(dropped)} dropped as applied upstream")


def rebase(root: Path, version: str, *, wheel: Path | None = None, dry_run: bool = False, log=print) -> RebaseReport:
    """Grade the series against ``version`` and, with no conflict and not ``dry_run``, move the fork onto it."""
    root = Path(root).resolve()
    pin = load_pin(root)
    try:
        Version(version)
    except InvalidVersion:
        raise PinError(f"--to {version!r}: not a PEP 440 version") from None
    if Version(version) == Version(pin.version):
        raise PinError(f"UPSTREAM.toml already pins {pin.requirement}")
    if not dry_run:
        state = tree_state(root)
        if state.stamp is not None and not state.clean:
            raise DirtyTreeError(f"{root}: the generated tree has edits that are not in any patch "
                                 f"({state.edits[0]}, ...): refresh them before rebasing")
    with tempfile.TemporaryDirectory(prefix="rebase-") as tmp:
        tmp = Path(tmp)
        (tmp / "dl").mkdir()
        got = release_wheel(root, pin, version, wheel, tmp / "dl", log)
        if wheel is None:  # keep pip's download where materialize looks for the pinned wheel
            cached = cache_dir(root) / got.name
            cached.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, cached)
            got = cached
        new = dataclasses.replace(pin, version=version, wheel=got.name, sha256=sha256_file(got))
        base = tmp / "base"
        base.mkdir()
        unpack(got, base, pin.packages)
        missing = [top for top in pin.packages if not (base / top).is_dir()]
        if missing:
            raise PinError(f"{got.name}: no top-level {', '.join(missing)} (UPSTREAM.toml [upstream].packages)")
        for d in base.glob("*.dist-info"):
            shutil.rmtree(d)
        report = RebaseReport(pin, new, got, grade_series(root, base, new.requirement, log))
        if not report.conflicts and not dry_run:
            write_rebase(root, report, log)
    return report


def format_report(report: RebaseReport, dry_run: bool) -> str:
    lines = [f"rebase {report.old.requirement} -> {report.new.requirement}",
             f"  wheel  {report.new.wheel}", f"  sha256 {report.new.sha256}"]
    for r in report.results:
        lines.append(f"  {r.status:<16} {r.name}")
        if r.status == UPSTREAM:
            lines.append(f"{'':19}reverse-applies: drop it, Applied-Upstream: {report.new.version}")
        if r.status == CONFLICT:
            for m in r.problems:
                lines += [f"{'':19}{ln}" for ln in m.message.splitlines()]
                lines += [f"{'':21}{ln}" for ln in m.hunk.rstrip("\n").splitlines()]
            if not r.problems:
                lines += [f"{'':19}{ln}" for ln in r.detail.splitlines()]
    n = {s: sum(r.status == s for r in report.results) for s in (APPLIES, MOVED, UPSTREAM, CONFLICT)}
    summary = (f"rebase: {n[APPLIES] + n[MOVED]} apply ({n[MOVED]} moved), {n[UPSTREAM]} already upstream, "
               f"{n[CONFLICT]} conflict(s)")
    if report.conflicts:
        summary += "; nothing written: resolve the conflicts (see CONTRIBUTING.md, Rebasing)"
    elif dry_run:
        summary += "; dry run, nothing written"
    elif report.written:
        summary += ("; pin and series written. Next: modelopt-fork materialize && modelopt-fork check --red-green "
                    "&& modelopt-fork table --write")
    lines.append(summary)
    return "\n".join(lines)
