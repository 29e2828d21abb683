"""check: series/files/headers agree, Test: ids exist, every patch applies."""

from __future__ import annotations

import pytest

from modelopt_fork.series.check import check

from .helpers import INIT, add_patch_by_edit, append_line

# A Test: id that really exists in this repository's test suite.
REAL_TEST = "tests/series/test_check.py::test_clean_series_passes"


def _project_with_patch(fork_project, repo_root):
    add_patch_by_edit(fork_project, "0001-a.patch", append_line(str(INIT), "A = 1"), test=REAL_TEST)
    # Test: ids are resolved against the project root: give it this repo's tests.
    (fork_project / "tests").symlink_to(repo_root / "tests")
    return fork_project


def test_clean_series_passes(fork_project, repo_root):
    root = _project_with_patch(fork_project, repo_root)
    assert check(root) == []


def test_unlisted_patch_is_reported(fork_project, repo_root):
    root = _project_with_patch(fork_project, repo_root)
    (root / "patches" / "0099-orphan.patch").write_text((root / "patches" / "0001-a.patch").read_text())
    assert any("0099-orphan.patch: not listed" in p for p in check(root, collect_tests=False))


def test_duplicate_entry_is_reported(fork_project, repo_root):
    root = _project_with_patch(fork_project, repo_root)
    s = root / "patches" / "series"
    s.write_text(s.read_text() + "0001-a.patch\n")
    problems = check(root, collect_tests=False)
    assert any("0001-a.patch listed twice" in p for p in problems)


def test_missing_listed_file_is_reported(fork_project, repo_root):
    root = _project_with_patch(fork_project, repo_root)
    s = root / "patches" / "series"
    s.write_text(s.read_text() + "0002-ghost.patch\n")
    assert any("0002-ghost.patch does not exist" in p for p in check(root, collect_tests=False))


def test_missing_and_bad_header_fields_are_reported(fork_project, repo_root):
    root = _project_with_patch(fork_project, repo_root)
    p = root / "patches" / "0001-a.patch"
    text = p.read_text()
    text = text.replace("Forwarded: not-needed\n", "Forwarded: maybe\n")
    text = text.replace("Last-Update: 2026-11-22\n", "")
    text = text.replace("Upstream-Base: nvidia-modelopt==0.47.0", "Upstream-Base: nvidia-modelopt==0.46.0")
    p.write_text(text)
    problems = check(root, collect_tests=False)
    assert "patches/0001-a.patch: header field Last-Update is missing" in problems
    assert any("Forwarded must be a URL, 'no' or 'not-needed', got 'maybe'" in x for x in problems)
    assert any("Upstream-Base is 'nvidia-modelopt==0.46.0'" in x for x in problems)


def test_unknown_test_id_is_reported(fork_project, repo_root):
    root = _project_with_patch(fork_project, repo_root)
    p = root / "patches" / "0001-a.patch"
    p.write_text(p.read_text().replace(REAL_TEST, "tests/series/test_check.py::test_does_not_exist tests/nope.py"))
    problems = check(root)
    assert any("test_does_not_exist (pytest collected nothing for it)" in x for x in problems)
    assert any("tests/nope.py (no file tests/nope.py)" in x for x in problems)


def test_patch_that_no_longer_applies_is_reported(fork_project, repo_root):
    root = _project_with_patch(fork_project, repo_root)
    p = root / "patches" / "0001-a.patch"
    p.write_text(p.read_text().replace(' version as _version\n', ' version as _v\n', 1))
    problems = check(root, collect_tests=False)
    assert any(x.startswith("patch 0001-a.patch does not apply: hunk @@") for x in problems)


def test_missing_pytest_is_named_not_reported_per_id(repo_root, monkeypatch):
    import importlib.util

    from modelopt_fork.series.check import missing_test_ids
    from modelopt_fork.series.errors import SeriesError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytest" else real(name, *a))
    with pytest.raises(SeriesError, match=r"needs pytest, which .* does not have: pip install -e '\.\[fork-test\]'"):
        missing_test_ids(repo_root, ["tests/series/test_check.py"])
