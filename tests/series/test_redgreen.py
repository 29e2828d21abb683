"""check --red-green on a throwaway project: a real red/green patch passes, a vacuous Test: id is caught."""

from __future__ import annotations

import shutil
from collections import Counter

from modelopt_fork.series.redgreen import format_rows, red_green, run_pytest

from .helpers import INIT, add_patch_by_edit, append_line, quiet

RED_GREEN_TEST = '''
import modelopt


def test_marker():
    assert getattr(modelopt, "FORK_MARKER", None) == 1


def test_vacuous():
    assert True
'''


def _marker_project(fork_project, repo_root):
    """The throwaway project with its tests and 0001-marker.patch, proven by tests/test_marker.py::test_marker."""
    shutil.copyfile(repo_root / "conftest.py", fork_project / "conftest.py")
    (fork_project / "pytest.ini").write_text("[pytest]\n")
    (fork_project / "tests").mkdir()
    (fork_project / "tests" / "test_marker.py").write_text(RED_GREEN_TEST)
    add_patch_by_edit(fork_project, "0001-marker.patch", append_line(str(INIT), "FORK_MARKER = 1"),
                      test="tests/test_marker.py::test_marker")


def test_red_green_detects_proven_and_unproven_patches(fork_project, repo_root):
    _marker_project(fork_project, repo_root)
    add_patch_by_edit(fork_project, "0002-other.patch", append_line(str(INIT), "OTHER = 2"),
                      test="tests/test_marker.py::test_vacuous")
    rows = red_green(fork_project, log=quiet)
    by_patch = {r.patch: r for r in rows}
    good, bad = by_patch["0001-marker.patch"], by_patch["0002-other.patch"]
    assert good.ok, format_rows(rows)
    assert good.red.counts["failed"] == 1 and good.green.counts["passed"] == 1
    assert not bad.ok and "does not fail without the patch" in bad.why
    assert "red/green: 1 ok, 1 failing, 0 n/a here" in format_rows(rows)


def test_a_file_that_cannot_be_collected_fails_its_ids_only(tmp_path):
    # red runs all of a patch's ids in one pytest process: a test file importing an API the
    # patch adds fails to collect; that is a failure of its ids, not of the others
    (tmp_path / "test_bad.py").write_text("import not_a_module_anywhere\n\n\ndef test_a():\n    pass\n")
    (tmp_path / "test_good.py").write_text("def test_b():\n    pass\n")
    work = tmp_path / "work"
    work.mkdir()
    out = run_pytest(tmp_path, ["test_bad.py::test_a", "test_good.py::test_b", "test_bad.py"], None, work)
    assert out["test_bad.py::test_a"].counts == Counter({"failed (collection error)": 1})
    assert out["test_bad.py"].counts == Counter({"failed (collection error)": 1})
    assert "not_a_module_anywhere" in out["test_bad.py::test_a"].detail
    assert out["test_good.py::test_b"].counts == Counter({"passed": 1})


def test_green_outcomes_can_come_from_the_suite_report(fork_project, repo_root, tmp_path):
    # the suite's own junit report stands in for the green run: here it says the test failed,
    # although it passes on the full series, so the verdict must follow the report
    _marker_project(fork_project, repo_root)
    report = tmp_path / "suite.xml"
    report.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_marker" name="test_marker" file="tests/test_marker.py" line="4">'
        '<failure message="assert 2 == 1">suite run</failure></testcase></testsuite></testsuites>'
    )
    (row,) = red_green(fork_project, log=quiet, green_from=report)
    assert row.green.counts == Counter({"failed": 1}) and row.green.detail == "assert 2 == 1"
    assert not row.ok and "does not pass with the patch" in row.why
