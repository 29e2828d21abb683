"""stage: the mboxes apply with `git am` to pristine 0.47.0 and their tests pass there; PR descriptions."""

from __future__ import annotations

import mailbox
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from email.header import decode_header, make_header
from pathlib import Path

import pytest

from modelopt_fork.series.errors import ForkError
from modelopt_fork.series.header import parse_patch, set_field
from modelopt_fork.series.materialize import ensure_pristine
from modelopt_fork.series.pin import load_pin
from modelopt_fork.series.stage import stage

from .helpers import INIT, add_patch_by_edit, append_line, quiet

PR_FIXES = ["0001-export-fuse-per-channel-input-amax.patch", "0002-nvfp4-replace-zero-activation-scales.patch"]
TESTER = ("Stage Tester", "stage.tester@example.invalid")


@pytest.fixture
def git_user(monkeypatch):
    """The identity `git config user.name/user.email` reports, whatever the machine's config says."""
    monkeypatch.setenv("GIT_CONFIG_COUNT", "2")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "user.name")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", TESTER[0])
    monkeypatch.setenv("GIT_CONFIG_KEY_1", "user.email")
    monkeypatch.setenv("GIT_CONFIG_VALUE_1", TESTER[1])
    return TESTER


def _git(repo: Path, *args: str, input: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_CEILING_DIRECTORIES=str(repo.parent),
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.invalid")
    p = subprocess.run(["git", *args], cwd=repo, env=env, input=input, capture_output=True, text=True)
    assert p.returncode == 0, f"git {' '.join(args)}: {p.stderr}"
    return p.stdout


def _pristine_repo(root: Path, dest: Path) -> Path:
    """A git repository of the pristine upstream tree materialize starts from (wheel packages only)."""
    pin = load_pin(root)
    pristine = ensure_pristine(root, pin, log=quiet)
    for top in pin.packages:
        shutil.copytree(pristine / top, dest / top)
    _git(dest, "init", "-q", "-b", "main")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "pristine")
    return dest


def _pytest_counts(repo: Path, files: list[str], xml: Path) -> dict[str, int]:
    """Run pytest on ``files`` with ``repo`` first on sys.path; counts from its junit report."""
    env = dict(os.environ, PYTHONPATH=str(repo))
    env.pop("MODELOPT_FORK_TREE", None)
    where = subprocess.run([sys.executable, "-c", "import modelopt; print(modelopt.__file__)"], cwd=repo, env=env,
                           capture_output=True, text=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(repo.resolve()), f"modelopt imports from {where}, not {repo}"
    (repo / "pytest.ini").write_text("[pytest]\n")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                    f"--junitxml={xml}", *files], cwd=repo, env=env, capture_output=True, text=True)
    assert xml.is_file(), f"pytest wrote no report for {files}"
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in ET.parse(xml).getroot().iter("testsuite"):
        for k in counts:
            counts[k] += int(suite.get(k, 0))
    (repo / "pytest.ini").unlink()
    return counts


# each param runs upstream's test twice in a fresh pristine repo (~45 s): the second is slow
@pytest.mark.parametrize("name", [PR_FIXES[0], *(pytest.param(n, marks=pytest.mark.slow) for n in PR_FIXES[1:])])
def test_staged_mbox_applies_to_pristine_with_git_am_and_its_test_passes(name, repo_root, git_user, tmp_path):
    out = tmp_path / "out"
    (st,) = stage(repo_root, [name], out, run_tests=False, log=quiet)
    assert st.mbox.is_file() and st.markdown.is_file() and st.depends_on == []
    text = (repo_root / "patches" / name).read_text(encoding="utf-8")
    group = [name, *(parse_patch(name, text).get("Stage-With") or "").split()]  # 0001 goes with 0006
    patches = [parse_patch(n, (repo_root / "patches" / n).read_text(encoding="utf-8")) for n in group]

    # the mails: From = DCO sign-off = the configured identity (the sender), Subject = each header's summary
    msgs = list(mailbox.mbox(st.mbox))
    assert len(msgs) == len(group)
    summaries = [str(p.fields["Description"]).splitlines()[0].strip() for p in patches]
    for i, (msg, patch, summary) in enumerate(zip(msgs, patches, summaries, strict=True)):
        subject = " ".join(str(make_header(decode_header(msg["Subject"]))).split())
        assert subject == (f"[PATCH {i + 1}/{len(group)}] {summary}" if len(group) > 1 else f"[PATCH] {summary}")
        assert " ".join(msg["From"].split()) == f"{git_user[0]} <{git_user[1]}>" != patch.get("Author")
        body = msg.get_payload()
        assert f"Signed-off-by: {git_user[0]} <{git_user[1]}>" in body
        assert "Co-authored-by" not in body  # the series' Author: is a placeholder address: no credit line
        assert "upstream_tests/" not in body
    assert any("placeholder" in n for n in st.notes)

    repo = _pristine_repo(repo_root, tmp_path / "repo")
    _git(repo, "am", "-q", str(st.mbox))
    assert _git(repo, "log", "--format=%s", f"-{len(group)}").strip().split("\n")[::-1] == summaries
    base = f"HEAD~{len(group)}"
    added = _git(repo, "diff", "--name-only", "--diff-filter=A", base, "HEAD").split()
    tests = [f for f in added if f.startswith("tests/unit/")]
    assert tests == st.upstream_tests and len(tests) == len(group), added

    # every new file carries upstream's Apache-2.0 SPDX header, in the form upstream's own files use
    pin = load_pin(repo_root)
    upstream_head = (repo / pin.packages[0] / "__init__.py").read_text().splitlines()[:14]
    assert upstream_head[1] == "# SPDX-License-Identifier: Apache-2.0"
    for f in added:
        lines = (repo / f).read_text().splitlines()
        assert lines[0].startswith("# SPDX-FileCopyrightText: Copyright (c) ")
        assert lines[0].endswith(" NVIDIA CORPORATION & AFFILIATES. All rights reserved."), f
        assert lines[1:14] == upstream_head[1:14], f

    green = _pytest_counts(repo, tests, tmp_path / "green.xml")
    assert green["tests"] > 0 and green["failures"] == green["errors"] == green["skipped"] == 0, green
    # and the test is a real one: with the code change reverted it fails
    code = _git(repo, "diff", base, "HEAD", "--", *pin.packages)
    _git(repo, "apply", "-R", input=code)
    red = _pytest_counts(repo, tests, tmp_path / "red.xml")
    assert red["failures"] + red["errors"] > 0, red


def test_staging_is_byte_stable(repo_root, git_user, tmp_path):
    a = stage(repo_root, PR_FIXES[:1], tmp_path / "a", run_tests=False, log=quiet)[0]
    b = stage(repo_root, PR_FIXES[:1], tmp_path / "b", run_tests=False, log=quiet)[0]
    assert a.mbox.read_bytes() == b.mbox.read_bytes()
    assert a.markdown.read_bytes() == b.markdown.read_bytes()


MARKER_TEST = '''"""FORK_MARKER is exported."""

import modelopt


def test_marker():
    assert modelopt.FORK_MARKER == 1
'''


def _forwarded(root: Path, name: str, value: str) -> None:
    path = root / "patches" / name
    text = path.read_text()
    header, diff = text.split("diff --git", 1)
    path.write_text(set_field(header, "Forwarded", value) + "diff --git" + diff)


def _marker_edit(root: Path) -> None:
    append_line(str(INIT), "FORK_MARKER = 1")(root)
    test = root / "upstream_tests" / "unit" / "test_marker.py"
    test.parent.mkdir(parents=True)
    test.write_text(MARKER_TEST)  # no license header: stage must add upstream's


def _wrong_edit(root: Path) -> None:
    append_line(str(INIT), "WRONG = 1")(root)
    test = root / "upstream_tests" / "unit" / "test_wrong.py"
    test.write_text(MARKER_TEST.replace("FORK_MARKER", "WRONG").replace("== 1", "== 2"))


def test_stage_runs_tests_writes_description_and_skips_not_needed(fork_project, git_user, tmp_path):
    add_patch_by_edit(fork_project, "0001-marker.patch", _marker_edit, desc="Export FORK_MARKER",
                      test="upstream_tests/unit/test_marker.py")
    _forwarded(fork_project, "0001-marker.patch", "no")
    add_patch_by_edit(fork_project, "0002-local.patch", append_line(str(INIT), "LOCAL = 2"))  # not-needed
    add_patch_by_edit(fork_project, "0003-wrong.patch", _wrong_edit, test="upstream_tests/unit/test_wrong.py")
    _forwarded(fork_project, "0003-wrong.patch", "no")
    staged, skipped, wrong = stage(fork_project, None, tmp_path / "out", log=quiet)
    assert skipped.skipped.startswith("Forwarded: not-needed") and skipped.mbox is None
    assert not (tmp_path / "out" / "0002-local.mbox").exists()
    assert [n for n in staged.notes if "placeholder" not in n] == [
        "tests/unit/test_marker.py: added upstream's Apache-2.0 SPDX header"]
    mbox = staged.mbox.read_text()
    assert "+# SPDX-License-Identifier: Apache-2.0" in mbox and "b/tests/unit/test_marker.py" in mbox

    runs = {r.tree: r.outcome.counts for r in staged.runs}
    assert runs == {"nvidia-modelopt==0.47.0 without the fix": {"failed": 1},
                    "nvidia-modelopt==0.47.0 + this change": {"passed": 1}}, runs
    md = staged.markdown.read_text()
    sections = [ln for ln in md.splitlines() if ln.startswith("## ")]
    assert sections == ["## What", "## How to reproduce", "## The fix", "## Why it is safe", "## Validation"]
    assert md.startswith("# Export FORK_MARKER\n")
    assert "python -m pytest tests/unit/test_marker.py" in md
    assert "| `tests/unit/test_marker.py` | nvidia-modelopt==0.47.0 + this change | 1 passed |" in md
    assert "without the fix | 1 failed (first failure: `AttributeError" in md

    # 0003 appends below the lines 0001 and 0002 append: staged on top of them, and the description says so
    assert wrong.depends_on == ["0001-marker.patch", "0002-local.patch"]
    wrong_md = wrong.markdown.read_text()
    assert "with the fork's 0001-marker.patch, 0002-local.patch applied first (send those changes first)" in wrong_md
    # a staged test that fails even with its change is flagged, not passed off as validation
    assert [r.outcome.counts for r in wrong.runs] == [{"failed": 1}, {"failed": 1}]
    base = "nvidia-modelopt==0.47.0 + 0001-marker.patch, 0002-local.patch"
    assert any(f"does not pass on {base} + this change alone" in n for n in wrong.notes), wrong.notes
    assert "> note: its upstream-style test does not pass" in wrong_md


def _set(root: Path, name: str, field: str, value: str) -> None:
    path = root / "patches" / name
    header, diff = path.read_text().split("diff --git", 1)
    path.write_text(set_field(header, field, value) + "diff --git" + diff)


@pytest.mark.slow  # ~35 s of git/pip on 2 cores; in CI the real 0001+0006 staging (above) covers Stage-With
def test_stage_with_makes_one_pull_request(fork_project, git_user, tmp_path):
    def new_file(root: Path) -> None:
        (root / "modelopt" / "c.py").write_text("C = 3\n")

    edits = (("0001-a.patch", append_line(str(INIT), "A = 1")), ("0002-b.patch", append_line(str(INIT), "B = 2")),
             ("0003-c.patch", new_file))
    for name, edit in edits:
        add_patch_by_edit(fork_project, name, edit)
        _forwarded(fork_project, name, "no")
    _set(fork_project, "0001-a.patch", "Stage-With", "0003-c.patch")
    _set(fork_project, "0003-c.patch", "Author", "Jane Dev <jane@nvidia.com>")  # a real person: credited
    results = stage(fork_project, ["0003-c.patch"], tmp_path / "out", run_tests=False, log=quiet)
    member, group = results
    assert member.name == "0003-c.patch" and member.skipped.startswith("staged with 0001-a.patch")
    assert group.name == "0001-a.patch" and member.mbox is None
    msgs = list(mailbox.mbox(group.mbox))
    assert [str(make_header(decode_header(m["Subject"]))).split("]")[0] for m in msgs] == ["[PATCH 1/2", "[PATCH 2/2"]
    assert {" ".join(m["From"].split()) for m in msgs} == {f"{git_user[0]} <{git_user[1]}>"}
    assert "Co-authored-by: Jane Dev <jane@nvidia.com>" in msgs[1].get_payload()
    assert "Co-authored-by" not in msgs[0].get_payload()
    diff = group.mbox.read_text()
    assert "+A = 1" in diff and "+C = 3" in diff and "+B = 2" not in diff  # 0002 is not part of it

    _set(fork_project, "0003-c.patch", "Stage-With", "0001-a.patch")  # only later patches can join
    with pytest.raises(ForkError, match="0003-c.patch: Stage-With names '0001-a.patch', which is not a later"):
        stage(fork_project, ["0003-c.patch"], tmp_path / "out2", run_tests=False, log=quiet)


def test_stage_requires_a_git_identity(fork_project, monkeypatch, tmp_path):
    add_patch_by_edit(fork_project, "0001-a.patch", append_line(str(INIT), "A = 1"))
    _forwarded(fork_project, "0001-a.patch", "no")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "2")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "user.name")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "Someone")
    monkeypatch.setenv("GIT_CONFIG_KEY_1", "user.email")
    monkeypatch.setenv("GIT_CONFIG_VALUE_1", "")
    with pytest.raises(ForkError, match=r"git config user\.email is not set .*git config --global user\.email"):
        stage(fork_project, None, tmp_path / "out", run_tests=False, log=quiet)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("email, placeholder", [
    ("maintainers@users.noreply.b-seed-4e0f4bad.example", True), ("t@example.invalid", True),
    ("a@example.com", True), ("a@x.test", True), ("1+me@users.noreply.github.com", True), ("nobody", True),
    ("jane@nvidia.com", False), ("dev@example-corp.de", False), ("a@examples.org", False),
])
def test_placeholder_addresses(email, placeholder):
    from modelopt_fork.series.stage import is_placeholder

    assert is_placeholder(email) is placeholder
