"""`modelopt-fork upstream-suite` on a throwaway fork of a tiny synthetic upstream and a fake upstream checkout.

The fake release has modelopt/torch/export/calc.py; the series changes it (0001: ``triple`` now
off by one -- a regression upstream's test catches --, ``half`` fixed, ``gate`` added with its
upstream-style test; 0002: a line above everything and one of 0001's lines rewritten). The fake
checkout (``--source``) has upstream's layout: pyproject.toml with ``pythonpath = ["tests/"]``
and an ``addopts`` needing a plugin that is not installed, tests/_test_utils, tests/unit/torch/
export, tests/unit/torch/quantization (a module the series does not touch), tests/gpu/torch/
export, and a decoy modelopt/ that must never be imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from modelopt_fork.cli import main
from modelopt_fork.series.errors import ForkError
from modelopt_fork.series.materialize import ensure_pristine
from modelopt_fork.series.pin import load_pin
from modelopt_fork.series.upstream_suite import (
    ERROR,
    PASSED,
    default_paths,
    line_owners,
    nodeid,
    source_commit,
    touched_modules,
    upstream_suite,
)

from .fakewheel import fork_of
from .helpers import add_patch_by_edit, quiet

CALC = "modelopt/torch/export/calc.py"
PRISTINE_CALC = '''"""calc: synthetic upstream module."""


def add(a, b):
    return a + b


def triple(x):
    return 3 * x


def half(x):
    return x // 2
'''
MEMBERS = {
    "modelopt/__init__.py": "",
    "modelopt/torch/__init__.py": "",
    "modelopt/torch/export/__init__.py": "",
    CALC: PRISTINE_CALC,
    "modelopt_recipes/__init__.py": "",
}
PATCH_TEST = "tests/unit/torch/export/test_gate.py"
E = "tests/unit/torch/export/test_calc.py"


def _edit_0001(root: Path):
    calc = root / CALC
    text = calc.read_text().replace("    return 3 * x\n", "    return 3 * x + 1\n")
    text = text.replace("    return x // 2\n", "    return x / 2\n")
    text += "\n\ndef gate(x):\n    if x:\n        return 1\n    return 0\n"
    calc.write_text(text)
    test = root / "upstream_tests" / Path(PATCH_TEST).relative_to("tests")
    test.parent.mkdir(parents=True)
    test.write_text("from modelopt.torch.export.calc import gate\n\n\ndef test_gate():\n    assert gate(1) == 1\n")


def _edit_0002(root: Path):
    calc = root / CALC
    text = calc.read_text().replace('module."""\n', 'module."""\n\nSCALE = 1\n', 1)
    calc.write_text(text.replace("    return 0\n", "    return SCALE * 0\n"))


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = fork_of(tmp_path, monkeypatch, MEMBERS)
    add_patch_by_edit(root, "0001-calc.patch", _edit_0001, test="upstream_tests/unit/torch/export/test_gate.py")
    add_patch_by_edit(root, "0002-scale.patch", _edit_0002)
    src = tmp_path / "upstream"
    files = {
        "pyproject.toml": '[tool.pytest.ini_options]\naddopts = "--instafail"\npythonpath = ["tests/"]\n',
        "modelopt/__init__.py": "raise ImportError('the checkout under test imported --source\\'s own modelopt')\n",
        "tests/_test_utils/__init__.py": "",
        "tests/_test_utils/builders.py": "def three():\n    return 3\n",
        E: (
            "import modelopt\nfrom _test_utils.builders import three\n\nfrom modelopt.torch.export import calc\n\n\n"
            "def test_add():\n    assert calc.add(three(), 1) == 4\n\n\n"
            "def test_regress():\n    assert calc.triple(2) == 6\n\n\n"
            "def test_fixed():\n    assert calc.half(3) == 1.5\n\n\n"
            "class TestTree:\n    def test_not_the_source_tree(self):\n"
            "        assert 'upstream' not in modelopt.__file__\n"
        ),
        "tests/unit/torch/quantization/test_other.py": "def test_other():\n    pass\n",
        "tests/gpu/torch/export/test_g1.py": "import builtins\n\n\ndef test_g1():\n"
                                             "    assert not hasattr(builtins, '_seen')\n    builtins._seen = 1\n",
        "tests/gpu/torch/export/test_empty.py": "HELPER = 1\n",  # collects nothing: no id, no error
        "tests/gpu/torch/export/test_g2.py": "import builtins\n\n\ndef test_g2():\n"
                                             "    assert not hasattr(builtins, '_seen')\n    builtins._seen = 2\n",
    }
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    return root, src


def test_default_paths_follow_the_modules_the_patches_change(project, tmp_path):
    root, src = project
    assert touched_modules(root) == ["torch/export"]
    assert default_paths(root, src, gpu=False) == ["tests/unit/torch/export"]
    assert default_paths(root, src, gpu=True) == ["tests/gpu/torch/export"]
    (tmp_path / "empty" / "tests").mkdir(parents=True)
    with pytest.raises(ForkError, match="name them with --paths"):
        upstream_suite(root, tmp_path / "empty", log=quiet)


def test_regression_fixed_patch_tests_and_coverage(project, tmp_path, capsys):
    root, src = project
    out = tmp_path / "out"
    rc = main(["--root", str(root), "upstream-suite", "--source", str(src), "-n", "0", "--coverage",
               "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 1, text  # a regression
    doc = json.loads((out / "upstream-suite.json").read_text())
    assert doc["paths"] == ["tests/unit/torch/export"]
    assert doc["regressions"] == [f"{E}::test_regress"]
    assert doc["fixed"] == [f"{E}::test_fixed"]
    assert doc["same"] == {PASSED: 2}  # test_add and TestTree::test_not_the_source_tree
    assert doc["patch_tests"] == [PATCH_TEST] + [f"{PATCH_TEST}::test_gate"]
    pristine, fork = doc["sides"]["pristine"]["items"], doc["sides"]["fork"]["items"]
    assert pristine[PATCH_TEST][0] == ERROR and "collection error" in pristine[PATCH_TEST][1]
    assert fork[f"{PATCH_TEST}::test_gate"][0] == PASSED and PATCH_TEST not in fork
    assert fork[f"{E}::TestTree::test_not_the_source_tree"][0] == PASSED
    assert not any("quantization" in k for k in fork)  # a module the series does not touch
    assert doc["patch_tests_failing"] == []
    assert doc["sides"]["fork"]["modelopt_from"] == str(root / "modelopt")
    cov = {r["patch"]: r for r in doc["coverage"]}
    # 0001 adds in function bodies: triple's and half's returns (run by upstream's tests), gate's
    # `if` and `return 1` (run by the patch test) and `return 0`, which 0002 rewrote; plus `def gate`
    assert {k: cov["0001-calc.patch"][k] for k in ("body_added", "body_run", "body_run_upstream", "all_added",
                                                   "all_run")} == {"body_added": 4, "body_run": 4,
                                                                   "body_run_upstream": 2, "all_added": 5,
                                                                   "all_run": 5}
    assert {k: cov["0002-scale.patch"][k] for k in ("body_added", "body_run", "all_added", "all_run")} == {
        "body_added": 1, "body_run": 0, "all_added": 2, "all_run": 1}
    assert "1 regression(s), 1 fixed" in text and "| **total** | 4/5 (80%) | 2 (40%) | 6/7 (86%) |" in text
    root_xml = ET.parse(out / "junit-fork.xml").getroot()
    assert len(list(root_xml.iter("testcase"))) == 5


def test_a_run_split_in_two_calls_compares_with_the_first(project, tmp_path, capsys):
    # --side pristine writes the pristine outcomes; --side fork --pristine-from compares against them
    root, src = project
    q = "tests/unit/torch/quantization"
    common = ["--root", str(root), "upstream-suite", "--source", str(src), "-n", "0", "--paths", q]
    assert main([*common, "--side", "pristine", "--out", str(tmp_path / "one")]) == 0
    first = tmp_path / "one" / "upstream-suite.json"
    assert list(json.loads(first.read_text())["sides"]) == ["pristine"]
    capsys.readouterr()
    rc = main([*common, "--side", "fork", "--pristine-from", str(first)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "0 regression(s), 0 fixed" in text and "same: 1 (1 passed)" in text
    with pytest.raises(ForkError, match="this run is of"):
        upstream_suite(root, src, paths=["tests/unit/torch/export"], pristine_from=first, log=quiet)


def test_gpu_mode_runs_each_file_in_its_own_process(project):
    # each GPU test file asserts that no other file ran in its process before it
    root, src = project
    res = upstream_suite(root, src, gpu=True, jobs=2, sides=("fork",), log=quiet)
    assert res.paths == ["tests/gpu/torch/export"]
    ids = ["tests/gpu/torch/export/test_g1.py::test_g1", "tests/gpu/torch/export/test_g2.py::test_g2"]
    assert {k: v.outcome for k, v in res.fork.items.items()} == {i: PASSED for i in ids}
    assert res.ok


def test_a_file_past_the_timeout_is_an_error_of_that_file(project):
    root, src = project
    g2 = "tests/gpu/torch/export/test_g2.py"
    (src / g2).write_text("import time\n\n\ndef test_g2():\n    time.sleep(600)\n")
    res = upstream_suite(root, src, gpu=True, paths=[g2], timeout=5, sides=("fork",), log=quiet)
    assert res.fork.files_timed_out == [g2]
    assert res.fork.items[g2].outcome == ERROR and "timed out after 5 s" in res.fork.items[g2].message


def test_line_owners_follow_later_patches(project):
    root, _ = project
    owners = line_owners(root, ensure_pristine(root, load_pin(root), quiet))[CALC]
    lines = (root / CALC).read_text().splitlines()
    by_text = dict(zip(lines, owners, strict=True))
    assert by_text["SCALE = 1"] == "0002-scale.patch"
    assert by_text["    return SCALE * 0"] == "0002-scale.patch"
    assert by_text["    return 3 * x + 1"] == "0001-calc.patch" and by_text["def gate(x):"] == "0001-calc.patch"
    assert by_text["def triple(x):"] is None and by_text["    return a + b"] is None


def test_nodeid_of_inherited_tests_and_collection_errors(tmp_path):
    (tmp_path / "tests/unit/a").mkdir(parents=True)
    (tmp_path / "tests/unit/a/test_x.py").write_text("")
    case = ET.fromstring('<testcase classname="tests.unit.a.test_x.TestK" name="test_p[1.5-a::b]" '
                         'file="tests/_test_utils/base.py" line="3"/>')
    assert nodeid(case, tmp_path) == "tests/unit/a/test_x.py::TestK::test_p[1.5-a::b]"
    case = ET.fromstring('<testcase classname="" name="tests.unit.a.test_x" file="tests/unit/a/test_x.py"/>')
    assert nodeid(case, tmp_path) == "tests/unit/a/test_x.py"


def test_source_commit_is_the_checkouts_own(tmp_path):
    src = tmp_path / "up"
    (src / "extract").mkdir(parents=True)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x.invalid", "PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    subprocess.run(["git", "init", "-q", str(src)], check=True, env=env)
    subprocess.run(["git", "-C", str(src), "commit", "-q", "--allow-empty", "-m", "x"], check=True, env=env)
    head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert source_commit(src) == head
    # a `git archive` extract inside some other repository is not that repository's commit
    assert source_commit(src / "extract") == "unknown"
    (src / "extract" / ".source-commit").write_text("a2fbac7b\n")
    assert source_commit(src / "extract") == "a2fbac7b"
