"""matrix.upstream: patched upstream trees are cached by content, other releases' wheels by a recorded hash."""

from __future__ import annotations

import pytest

from modelopt_fork.matrix.upstream import tree_key, upstream_tree, upstream_wheel
from modelopt_fork.series.errors import ForkError
from modelopt_fork.series.pin import load_pin
from modelopt_fork.series.wheel import cache_dir

from .helpers import INIT, add_patch_by_edit, append_line, quiet


def test_an_edited_patch_gets_a_new_tree(fork_project):
    add_patch_by_edit(fork_project, "0001-a.patch", append_line(str(INIT), "A = 1"))
    version = load_pin(fork_project).version
    first = upstream_tree(fork_project, version, ("0001-a.patch",), log=quiet)
    assert "A = 1" in (first / INIT).read_text()
    patch = fork_project / "patches" / "0001-a.patch"
    patch.write_text(patch.read_text().replace("+A = 1", "+A = 2"))  # same name, other content
    second = upstream_tree(fork_project, version, ("0001-a.patch",), log=quiet)
    assert second != first and "A = 2" in (second / INIT).read_text()
    assert upstream_tree(fork_project, version, ("0001-a.patch",), log=quiet) == second  # and cached
    assert tree_key(fork_project, version, ()) != tree_key(fork_project, version, ("0001-a.patch",))


def test_a_cached_wheel_of_another_release_is_checked(fork_project, tmp_path):
    cache = cache_dir(fork_project)
    cache.mkdir(parents=True)
    wheel = cache / "nvidia_modelopt-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel bytes")
    import hashlib

    (cache / (wheel.name + ".sha256")).write_text(hashlib.sha256(b"wheel bytes").hexdigest() + f"  {wheel.name}\n")
    assert upstream_wheel(fork_project, "0.1.0", log=quiet) == wheel
    wheel.write_bytes(b"tampered")
    with pytest.raises(ForkError, match=r"nvidia_modelopt-0\.1\.0-py3-none-any\.whl: sha256 .* was recorded"):
        upstream_wheel(fork_project, "0.1.0", log=quiet)
