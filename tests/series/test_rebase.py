"""rebase onto a synthetic second upstream: graded per patch; the pin and series written only without conflicts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from unidiff import PatchSet

from modelopt_fork.series.check import check
from modelopt_fork.series.errors import DirtyTreeError, PinError
from modelopt_fork.series.header import parse_patch, split_patch
from modelopt_fork.series.materialize import materialize
from modelopt_fork.series.pin import load_pin
from modelopt_fork.series.rebase import APPLIES, CONFLICT, MOVED, UPSTREAM, format_report, rebase
from modelopt_fork.series.seriesfile import load_series

from .fakewheel import build_wheel, fork_of, module, sha256
from .helpers import add_patch_by_edit, quiet

BASE = {
    "modelopt/__init__.py": '"""tiny modelopt."""\n',
    "modelopt/a.py": module("a"),
    "modelopt/b.py": module("b"),
    "modelopt/c.py": module("c"),
    "modelopt_recipes/r.yaml": "r: 1\n",
}
# 0.48.0 with three kinds of change: has 0001's fix, moved 0002's lines, rewrote the line 0003 changes
MIXED = {**BASE, "modelopt/a.py": module("a", changed={5: "    return 50"}), "modelopt/b.py": module("b", prepend=4),
         "modelopt/c.py": module("c", changed={15: "    return -15"})}
# 0.48.0 the series moves onto: has 0001's fix, 0002's file untouched, 0003's lines moved by 3
GOOD = {**BASE, "modelopt/a.py": module("a", changed={5: "    return 50"}), "modelopt/c.py": module("c", prepend=3)}
TEST_B = "from modelopt.b import f_10\n\n\ndef test_f_10():\n    assert f_10() == 100\n"


def _replace(rel: str, old: str, new: str):
    def edit(root):
        p = root / rel
        text = p.read_text()
        assert text.count(old) == 1, (rel, old)
        p.write_text(text.replace(old, new))

    return edit


def _edit_b(root):
    _replace("modelopt/b.py", "    return 10\n", "    return 100\n")(root)
    (root / "upstream_tests" / "unit").mkdir(parents=True)
    (root / "upstream_tests" / "unit" / "test_b.py").write_text(TEST_B)


@pytest.fixture
def tiny_fork(tmp_path, monkeypatch):
    """A fork of a tiny synthetic nvidia-modelopt 0.47.0 with three patches (a, b + its test, c)."""
    root = fork_of(tmp_path, monkeypatch, BASE)
    add_patch_by_edit(root, "0001-a.patch", _replace("modelopt/a.py", "    return 5\n", "    return 50\n"))
    add_patch_by_edit(root, "0002-b.patch", _edit_b)
    add_patch_by_edit(root, "0003-c.patch", _replace("modelopt/c.py", "    return 15\n", "    return 150\n"))
    return root


def _state(root):
    files = sorted(p for p in (root / "patches").rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in [root / "UPSTREAM.toml", *files]}


def test_conflict_is_reported_with_its_hunk_and_nothing_is_written(tiny_fork, tmp_path):
    wheel = build_wheel(tmp_path / "wheels-0.48.0", "0.48.0", MIXED)
    before = _state(tiny_fork)
    report = rebase(tiny_fork, "0.48.0", wheel=wheel, log=quiet)  # not a dry run: the conflict stops it
    status = {r.name: r.status for r in report.results}
    assert status == {"0001-a.patch": UPSTREAM, "0002-b.patch": MOVED, "0003-c.patch": CONFLICT}
    assert report.new.sha256 == sha256(wheel) and not report.written
    (conflict,) = report.conflicts
    (problem,) = conflict.problems
    assert problem.path == "modelopt/c.py" and "-    return 15\n" in problem.hunk
    assert "expected: '    return 15'" in problem.message and "found:    '    return -15'" in problem.message
    assert _state(tiny_fork) == before

    # the same through the CLI: exit 1, the hunk shown
    p = subprocess.run([sys.executable, "-m", "modelopt_fork", "--root", str(tiny_fork), "rebase", "--to", "0.48.0",
                        "--wheel", str(wheel)], capture_output=True, text=True)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"sha256 {sha256(wheel)}" in p.stdout
    assert "already upstream 0001-a.patch" in p.stdout and "applies, moved   0002-b.patch" in p.stdout
    assert "conflict         0003-c.patch" in p.stdout and "-    return 15" in p.stdout
    assert "1 conflict(s); nothing written" in p.stdout
    assert _state(tiny_fork) == before


def test_rebase_writes_pin_and_refreshed_series(tiny_fork, tmp_path, monkeypatch):
    wheel = build_wheel(tmp_path / "wheels-0.48.0", "0.48.0", GOOD)
    before = _state(tiny_fork)
    old = {n: (tiny_fork / "patches" / n).read_text() for n in load_series(tiny_fork).names}

    report = rebase(tiny_fork, "0.48.0", wheel=wheel, dry_run=True, log=quiet)
    assert [r.status for r in report.results] == [UPSTREAM, APPLIES, MOVED]
    assert "dry run, nothing written" in format_report(report, True)
    assert _state(tiny_fork) == before

    report = rebase(tiny_fork, "0.48.0", wheel=wheel, log=quiet)
    assert report.written and [r.status for r in report.results] == [UPSTREAM, APPLIES, MOVED]
    pin = load_pin(tiny_fork)
    assert (pin.version, pin.wheel, pin.sha256) == ("0.48.0", wheel.name, sha256(wheel))
    assert load_series(tiny_fork).names == ("0002-b.patch", "0003-c.patch")
    assert "# 0001-a.patch: applied upstream in 0.48.0" in (tiny_fork / "patches" / "series").read_text()

    # already upstream: moved out of the series, Applied-Upstream set, nothing else changed
    assert not (tiny_fork / "patches" / "0001-a.patch").exists()
    dropped = (tiny_fork / "patches" / "applied-upstream" / "0001-a.patch").read_text()
    assert parse_patch("0001-a.patch", dropped).get("Applied-Upstream") == "0.48.0"
    assert dropped.replace("Applied-Upstream: 0.48.0\n", "Applied-Upstream: \n") == old["0001-a.patch"]

    def upstream_base_only(name):
        new = (tiny_fork / "patches" / name).read_text()
        assert parse_patch(name, new).get("Upstream-Base") == "nvidia-modelopt==0.48.0"
        old_head, new_head = split_patch(old[name])[0], split_patch(new)[0]
        assert new_head == old_head.replace("nvidia-modelopt==0.47.0", "nvidia-modelopt==0.48.0")
        return split_patch(old[name])[1], split_patch(new)[1]

    # applies exactly: the regenerated diff is byte-identical
    old_b, new_b = upstream_base_only("0002-b.patch")
    assert new_b == old_b and "b/tests/unit/test_b.py" in new_b
    # moved: same hunk, 3 lines further down
    old_c, new_c = upstream_base_only("0003-c.patch")
    (h_old,), (h_new,) = (list(PatchSet(d)[0]) for d in (old_c, new_c))
    assert (h_new.source_start, h_new.target_start) == (h_old.source_start + 3, h_old.target_start + 3)
    assert str(h_new).splitlines()[1:] == str(h_old).splitlines()[1:]

    # the new pin builds from the cache (no env override) and the series applies with no fuzz
    monkeypatch.delenv("MODELOPT_FORK_WHEEL")
    assert check(tiny_fork, collect_tests=False, log=quiet) == []
    materialize(tiny_fork, log=quiet)
    assert (tiny_fork / "modelopt" / "a.py").read_text() == GOOD["modelopt/a.py"]
    assert (tiny_fork / "modelopt" / "b.py").read_text() == module("b", changed={10: "    return 100"})
    assert (tiny_fork / "modelopt" / "c.py").read_text() == module("c", prepend=3, changed={15: "    return 150"})
    assert (tiny_fork / "upstream_tests" / "unit" / "test_b.py").read_text() == TEST_B
    with pytest.raises(PinError, match="already pins nvidia-modelopt==0.48.0"):
        rebase(tiny_fork, "0.48.0", wheel=wheel, log=quiet)


def test_release_is_downloaded_by_name_with_pip(tiny_fork, tmp_path, monkeypatch):
    index = tmp_path / "index"
    wheel = build_wheel(index, "0.48.0", GOOD)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip reads its options from PIP_*: a local, offline index
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    before = _state(tiny_fork)
    report = rebase(tiny_fork, "0.48.0", dry_run=True, log=quiet)
    assert report.new.sha256 == sha256(wheel) and report.new.wheel == wheel.name
    assert (tiny_fork / ".modelopt-fork" / "cache" / wheel.name).read_bytes() == wheel.read_bytes()
    assert [r.status for r in report.results] == [UPSTREAM, APPLIES, MOVED]
    assert _state(tiny_fork) == before
    with pytest.raises(PinError, match=r"pip download .*nvidia-modelopt==0\.49\.0"):
        rebase(tiny_fork, "0.49.0", dry_run=True, log=quiet)


def test_refuses_wrong_wheel_and_unrefreshed_edits(tiny_fork, tmp_path):
    wheel = build_wheel(tmp_path / "w", "0.48.0", GOOD)
    with pytest.raises(PinError, match="not nvidia-modelopt 0.49.0"):
        rebase(tiny_fork, "0.49.0", wheel=wheel, dry_run=True, log=quiet)
    b = tiny_fork / "modelopt" / "b.py"
    b.write_text(b.read_text() + "X = 1\n")
    with pytest.raises(DirtyTreeError, match="modified: modelopt/b.py"):
        rebase(tiny_fork, "0.48.0", wheel=wheel, log=quiet)
    assert not rebase(tiny_fork, "0.48.0", wheel=wheel, dry_run=True, log=quiet).conflicts
