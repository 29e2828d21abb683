"""`modelopt-fork preflight` shows its progress bar only when stderr is a terminal."""

from __future__ import annotations

import argparse
import io

import pytest


@pytest.mark.parametrize("tty", [False, True])
def test_progress_only_on_a_terminal(tty, monkeypatch):
    import modelopt_fork.preflight as pf
    from modelopt_fork.commands import preflight as cmd

    class Stderr(io.StringIO):
        def isatty(self):
            return tty

    seen = {}

    class Result:
        ok = True

    def fake_preflight(*_a, progress, **_k):
        seen["progress"] = progress
        return Result()

    monkeypatch.setattr("sys.stderr", Stderr())
    monkeypatch.setattr(pf, "preflight", fake_preflight)
    monkeypatch.setattr(pf, "format_report", lambda *a: "report")
    monkeypatch.setattr("modelopt_fork.twin.build.twin_config", lambda *a, **k: None)
    args = argparse.Namespace(model="m", qformat="nvfp4", device="cpu", experts=None, seed=0)
    assert cmd.run(args) == 0
    assert seen["progress"] is tty
