"""Fault injection for materialize/refresh: crashes and errors at every rename, a held lock,
leftover staging, a corrupted pristine cache, a refresh that would delete a whole directory.

A tiny synthetic upstream keeps each case fast.
"""

from __future__ import annotations

import fcntl
import os
import shutil

import pytest

from modelopt_fork.series.errors import ForkError
from modelopt_fork.series.materialize import materialize, pristine_dir, tree_state
from modelopt_fork.series.pin import load_pin
from modelopt_fork.series.refresh import refresh
from modelopt_fork.series.status import status_lines

from .fakewheel import fork_of, module
from .helpers import add_patch_by_edit, quiet

BASE = {
    "modelopt/__init__.py": '"""tiny modelopt."""\n',
    "modelopt/a.py": module("a"),
    "modelopt_recipes/r.yaml": "r: 1\n",
}
PATCH = "patches/0001-x.patch"


def _edit(tag: str):
    def edit(root):
        for rel in ("modelopt/a.py", "modelopt_recipes/r.yaml"):
            with open(root / rel, "a") as f:
                f.write(f"# {tag}\n")
        d = root / "upstream_tests" / "unit"
        d.mkdir(parents=True, exist_ok=True)
        (d / "test_x.py").write_text(f"# {tag}\ndef test_x():\n    pass\n")

    return edit


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """(root, {tag: patch text}): a fork of a tiny upstream whose one patch touches every top dir,
    in two versions v1 and v2; the tree is materialized at v2."""
    root = fork_of(tmp_path, monkeypatch, BASE)
    v1 = add_patch_by_edit(root, "0001-x.patch", _edit("v1")).read_text()
    _edit("v2")(root)
    refresh(root, log=quiet)
    v2 = (root / PATCH).read_text()
    assert v1 != v2 and tree_state(root).clean
    return root, {"v1": v1, "v2": v2}


def _leftovers(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith((".staging-", ".trash-")))


def _assert_tree_is(root, tag):
    st = tree_state(root)
    assert st.up_to_date and st.clean, st.edits
    for rel in ("modelopt/a.py", "modelopt_recipes/r.yaml", "upstream_tests/unit/test_x.py"):
        assert f"# {tag}\n" in (root / rel).read_text(), rel
    assert _leftovers(root) == []


def _materialize_and_die_at(root, k: int) -> int:
    """Run materialize in a forked child that is killed (no cleanup, no finally) at its k-th rename."""
    pid = os.fork()
    if pid == 0:  # child
        try:
            calls = 0
            real = os.replace

            def replace(src, dst):
                nonlocal calls
                calls += 1
                if calls == k:
                    os._exit(17)
                real(src, dst)

            os.replace = replace
            materialize(root, log=quiet)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_crash_at_each_rename_is_rebuilt_never_refreshed(tiny):
    root, text = tiny
    k = 0
    while True:
        k += 1
        old, new = ("v2", "v1") if k % 2 else ("v1", "v2")
        (root / PATCH).write_text(text[new])
        rc = _materialize_and_die_at(root, k)
        if rc == 0:
            _assert_tree_is(root, new)
            break
        assert rc == 17, f"materialize failed in the child before rename {k}"
        st = tree_state(root)
        if getattr(st, "incomplete", False) or st.stamp is None:
            # a half-swapped tree: refresh must not take it for edits
            with pytest.raises(ForkError):
                refresh(root, log=quiet)
            assert (root / PATCH).read_text() == text[new]
            lines, ok = status_lines(root)
            assert not ok and any("incomplete" in x or "not materialized" in x for x in lines), lines
        else:  # died before the swap: the old tree is whole, only stale
            assert st.clean and not st.up_to_date, (k, st.edits)
        assert materialize(root, log=quiet) is True  # rebuilt, never "edits not in any patch"
        _assert_tree_is(root, new)
    assert k > 6  # pristine unpack is cached; tests dir rename + 3 tops x (out, in)


def test_error_at_each_rename_restores_the_previous_tree(tiny, monkeypatch):
    root, text = tiny
    real = os.replace
    k = 0
    while True:
        k += 1
        calls = 0

        def replace(src, dst, k=k):
            nonlocal calls
            calls += 1
            if calls == k:
                raise OSError(f"injected failure at rename {k}")
            real(src, dst)

        (root / PATCH).write_text(text["v1"])
        monkeypatch.setattr(os, "replace", replace)
        try:
            materialize(root, log=quiet)
        except (OSError, ForkError) as e:
            assert "injected failure" in str(e)
        else:
            assert calls < k
            _assert_tree_is(root, "v1")
            break
        finally:
            monkeypatch.setattr(os, "replace", real)
        st = tree_state(root)
        assert st.clean and not getattr(st, "incomplete", False), (k, st.edits)
        for rel in ("modelopt/a.py", "modelopt_recipes/r.yaml", "upstream_tests/unit/test_x.py"):
            assert "# v2\n" in (root / rel).read_text(), (k, rel)
        assert _leftovers(root) == []
        (root / PATCH).write_text(text["v2"])
    assert k > 6


def test_concurrent_run_is_refused_while_the_lock_is_held(tiny):
    root, text = tiny
    (root / PATCH).write_text(text["v1"])
    with open(root / ".modelopt-fork" / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(ForkError, match="another modelopt-fork"):
            materialize(root, log=quiet)
        with pytest.raises(ForkError, match="another modelopt-fork"):
            refresh(root, log=quiet)
    assert (root / PATCH).read_text() == text["v1"]
    assert "# v2\n" in (root / "modelopt/a.py").read_text()
    materialize(root, log=quiet)  # lock released: runs
    _assert_tree_is(root, "v1")


def test_leftover_staging_is_cleaned(tiny):
    root, _ = tiny
    for d in (".staging-dead/tree/modelopt", ".trash-dead/modelopt_recipes"):
        (root / d).mkdir(parents=True)
        (root / d / "x.py").write_text("x = 1\n")
    unpack = pristine_dir(root, load_pin(root)).parent / ".unpack-dead"
    unpack.mkdir()
    assert materialize(root, log=quiet) is False  # up to date, and still cleans
    assert _leftovers(root) == [] and not unpack.exists()


def test_corrupted_pristine_cache_is_rebuilt_not_used(tiny):
    root, _ = tiny
    pristine = pristine_dir(root, load_pin(root))
    with open(pristine / "modelopt" / "a.py", "a") as f:
        f.write("CORRUPT = 1\n")
    (pristine / "modelopt_recipes" / "r.yaml").unlink()
    (pristine / "modelopt" / "extra.py").write_text("EXTRA = 1\n")
    materialize(root, force=True, log=quiet)
    _assert_tree_is(root, "v2")
    assert "CORRUPT" not in (root / "modelopt" / "a.py").read_text()
    assert not (root / "modelopt" / "extra.py").exists() and (root / "modelopt_recipes" / "r.yaml").is_file()
    assert "CORRUPT" not in (pristine / "modelopt" / "a.py").read_text()


@pytest.mark.parametrize("top", ["modelopt_recipes", "upstream_tests"])
def test_refresh_refuses_to_delete_a_whole_generated_dir(tiny, top):
    root, text = tiny
    shutil.rmtree(root / top)
    with pytest.raises(ForkError, match=top):
        refresh(root, log=quiet)
    assert (root / PATCH).read_text() == text["v2"]
