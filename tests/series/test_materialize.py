"""Materializer: hash-checked, atomic, idempotent, offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modelopt_fork.series.errors import DirtyTreeError, HashMismatchError, PatchApplyError
from modelopt_fork.series.materialize import materialize, pristine_dir, tree_state
from modelopt_fork.series.pin import load_pin
from modelopt_fork.series.tree import STAMP_NAME, manifest

from .helpers import INIT, add_patch_by_edit, append_line, quiet


def _init_patch(start: int, import_line: str = "from importlib.metadata import version as _version") -> str:
    """A hand-written patch against modelopt/__init__.py whose hunk claims to start at ``start``."""
    return (
        "Description: hand-written\n\n"
        "diff --git a/modelopt/__init__.py b/modelopt/__init__.py\n"
        "--- a/modelopt/__init__.py\n"
        "+++ b/modelopt/__init__.py\n"
        f"@@ -{start},3 +{start},4 @@\n"
        ' """Nvidia Model Optimizer (modelopt)."""\n'
        " \n"
        f" {import_line}\n"
        "+X = 1\n"
    )


def _generated(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name not in ("patches", "UPSTREAM.toml", ".modelopt-fork"))


def test_materialize_applies_series_and_stamps(fork_project):
    add_patch_by_edit(fork_project, "0001-marker.patch", append_line(str(INIT), "FORK_MARKER = 1"))
    text = (fork_project / INIT).read_text()
    assert text.endswith("FORK_MARKER = 1\n")
    stamp = json.loads((fork_project / "modelopt" / STAMP_NAME).read_text())
    assert stamp["patches"] == ["0001-marker.patch"]
    assert stamp["upstream"] == "nvidia-modelopt==0.47.0"
    # the pristine tree is kept, unpatched
    pristine = (pristine_dir(fork_project, load_pin(fork_project)) / INIT).read_text()
    assert "FORK_MARKER" not in pristine and text.startswith(pristine)


def test_hash_mismatch_is_a_hard_error_and_leaves_no_tree(fork_project, tmp_path, monkeypatch, upstream_wheel):
    bad = tmp_path / upstream_wheel.name
    data = bytearray(upstream_wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setenv("MODELOPT_FORK_WHEEL", str(bad))
    with pytest.raises(HashMismatchError) as ei:
        materialize(fork_project, log=quiet)
    msg = str(ei.value)
    assert load_pin(fork_project).sha256 in msg and "sha256 mismatch" in msg and str(bad) in msg
    assert _generated(fork_project) == []
    assert not pristine_dir(fork_project, load_pin(fork_project)).exists()


def test_pin_with_wrong_hash_rejects_the_real_wheel(fork_project):
    pin = fork_project / "UPSTREAM.toml"
    real = load_pin(fork_project).sha256
    pin.write_text(pin.read_text().replace(real, "0" * 64))
    with pytest.raises(HashMismatchError, match="0{64}"):
        materialize(fork_project, log=quiet)
    assert _generated(fork_project) == []


def test_patch_that_does_not_apply_names_patch_and_hunk_and_keeps_old_tree(fork_project):
    add_patch_by_edit(fork_project, "0001-marker.patch", append_line(str(INIT), "FORK_MARKER = 1"))
    before = manifest(fork_project, ["modelopt", "modelopt_recipes"])
    stamp_before = (fork_project / "modelopt" / STAMP_NAME).read_text()
    bad = _init_patch(start=16, import_line="from importlib.metadata import version as _this_line_is_not_upstream")
    (fork_project / "patches" / "0002-stale.patch").write_text(bad)
    (fork_project / "patches" / "series").write_text("0001-marker.patch\n0002-stale.patch\n")
    with pytest.raises(PatchApplyError) as ei:
        materialize(fork_project, log=quiet)
    msg = str(ei.value)
    assert "0002-stale.patch" in msg
    assert "@@ -16,3 +16,4 @@" in msg and "modelopt/__init__.py" in msg and "line 18" in msg
    # nothing half-patched: the previous tree and stamp are untouched, no staging left behind
    assert manifest(fork_project, ["modelopt", "modelopt_recipes"]) == before
    assert (fork_project / "modelopt" / STAMP_NAME).read_text() == stamp_before
    assert not [p for p in fork_project.iterdir() if p.name.startswith((".staging-", ".trash-"))]


def test_hunk_at_an_offset_is_rejected(fork_project):
    """No fuzz and no offset: right context at the wrong line is a stale patch."""
    materialize(fork_project, log=quiet)
    text = _init_patch(start=17)  # the real context starts at line 16
    (fork_project / "patches" / "0001-offset.patch").write_text(text)
    (fork_project / "patches" / "series").write_text("0001-offset.patch\n")
    with pytest.raises(PatchApplyError, match="does not match at line 17"):
        materialize(fork_project, log=quiet)


def test_rerun_is_a_no_op(fork_project):
    add_patch_by_edit(fork_project, "0001-marker.patch", append_line(str(INIT), "FORK_MARKER = 1"))
    init = fork_project / INIT
    mtime = init.stat().st_mtime_ns
    assert materialize(fork_project, log=quiet) is False
    assert init.stat().st_mtime_ns == mtime
    assert tree_state(fork_project).up_to_date


def test_series_change_rebuilds(fork_project):
    add_patch_by_edit(fork_project, "0001-marker.patch", append_line(str(INIT), "FORK_MARKER = 1"))
    (fork_project / "patches" / "series").write_text("# emptied\n")
    assert materialize(fork_project, log=quiet) is True
    assert "FORK_MARKER" not in (fork_project / INIT).read_text()


def test_unrefreshed_edits_block_materialize_unless_forced(fork_project):
    materialize(fork_project, log=quiet)
    append_line(str(INIT), "LOCAL_EDIT = 1")(fork_project)
    # series unchanged + edits: a plain run keeps the edits (nothing to do) ...
    add = fork_project / "patches" / "series"
    add.write_text(add.read_text() + "# touched\n")  # series text changed -> rebuild needed
    with pytest.raises(DirtyTreeError, match="modified: modelopt/__init__.py"):
        materialize(fork_project, log=quiet)
    assert "LOCAL_EDIT" in (fork_project / INIT).read_text()
    assert materialize(fork_project, force=True, log=quiet) is True
    assert "LOCAL_EDIT" not in (fork_project / INIT).read_text()


def test_materialize_into_other_dest_with_exclude(fork_project, tmp_path):
    add_patch_by_edit(fork_project, "0001-marker.patch", append_line(str(INIT), "FORK_MARKER = 1"))
    dest = tmp_path / "red"
    materialize(fork_project, dest=dest, exclude=("0001-marker.patch",), log=quiet)
    assert "FORK_MARKER" not in (dest / INIT).read_text()
    assert "FORK_MARKER" in (fork_project / INIT).read_text()
    with pytest.raises(Exception, match="not in patches/series"):
        materialize(fork_project, dest=dest, exclude=("nope.patch",), log=quiet)


def test_patch_adding_upstream_test_lands_in_upstream_tests(fork_project):
    def edit(root):
        d = root / "upstream_tests" / "unit"
        d.mkdir(parents=True)
        (d / "test_new.py").write_text("def test_x():\n    assert 1 + 1 == 2\n")

    p = add_patch_by_edit(fork_project, "0001-test.patch", edit)
    text = p.read_text()
    assert "diff --git a/tests/unit/test_new.py b/tests/unit/test_new.py\nnew file mode 100644\n" in text
    assert "+++ b/tests/unit/test_new.py" in text
    shutil.rmtree(fork_project / "upstream_tests")
    materialize(fork_project, force=True, log=quiet)
    assert (fork_project / "upstream_tests" / "unit" / "test_new.py").is_file()
