"""The modelopt-fork CLI: exit codes and messages a user sees."""

from __future__ import annotations

import subprocess
import sys

from modelopt_fork.series.materialize import materialize

from .helpers import INIT, append_line, quiet


def run(root, *args):
    return subprocess.run([sys.executable, "-m", "modelopt_fork", "--root", str(root), *args],
                          capture_output=True, text=True)


def test_status_reports_clean_then_modified(fork_project):
    materialize(fork_project, log=quiet)
    p = run(fork_project, "status")
    assert p.returncode == 0, p.stderr
    assert "nvidia-modelopt==0.47.0" in p.stdout and "tree:      clean" in p.stdout
    assert "modified" not in p.stdout and "edits" not in p.stdout
    append_line(str(INIT), "X = 1")(fork_project)
    p = run(fork_project, "status")
    assert p.returncode == 1
    assert "modified: modelopt/__init__.py" in p.stdout and "not refreshed" in p.stdout


def test_errors_are_one_message_without_traceback(fork_project):
    (fork_project / "UPSTREAM.toml").write_text("[upstream]\nversion = '0.47.0'\n[fork]\n")
    p = run(fork_project, "materialize")
    assert p.returncode == 2
    assert "missing key 'distribution'" in p.stderr and "Traceback" not in p.stderr


def test_cli_materialize_check_refresh(fork_project):
    p = run(fork_project, "materialize")
    assert p.returncode == 0, p.stderr
    assert (fork_project / INIT).is_file()
    p = run(fork_project, "check", "--no-tests")
    assert p.returncode == 0, p.stdout + p.stderr
    append_line(str(INIT), "X = 1")(fork_project)
    p = run(fork_project, "refresh", "--new", "0001-x.patch")
    assert p.returncode == 0, p.stderr
    p = run(fork_project, "check", "--no-tests")
    assert p.returncode == 1 and "header field Description still has a TODO" in p.stdout
