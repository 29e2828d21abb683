"""Benchmark plumbing: incremental results, worker environments, RESULT lines from a subprocess."""

from __future__ import annotations

import gc
import json
import os
import sys

from modelopt_fork.bench.measure import phase, stats
from modelopt_fork.bench.procs import NO_MULTICAST, TREE_ENV, absolute_pythonpath, run_worker, worker_env
from modelopt_fork.bench.record import Recorder


def test_recorder_writes_after_every_record(tmp_path):
    r = Recorder(tmp_path, "bench", meta={"device": "cpu"})
    assert json.loads((tmp_path / "bench.json").read_text()) == {"meta": {"device": "cpu"}, "records": []}
    r.add({"a": 1})
    r.add({"a": 2})
    r.update_meta(done=True)
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data == {"meta": {"device": "cpu", "done": True}, "records": [{"a": 1}, {"a": 2}]}
    assert [json.loads(x) for x in (tmp_path / "bench.jsonl").read_text().splitlines()] == [{"a": 1}, {"a": 2}]


def test_relative_pythonpath_is_made_absolute(tmp_path):
    value = os.pathsep.join(["/abs/site", ".devsite", "", "."])
    assert absolute_pythonpath(value, tmp_path) == [
        "/abs/site",
        str(tmp_path / ".devsite"),
        str(tmp_path),
        str(tmp_path),
    ]
    assert absolute_pythonpath("", tmp_path) == [] and absolute_pythonpath(None, tmp_path) == []


def test_worker_env_puts_the_tree_first(tmp_path):
    root, tree = tmp_path / "root", tmp_path / "tree"
    base = {"PYTHONPATH": os.pathsep.join([".devsite", "/x"]), TREE_ENV: "/stale", "NCCL_NVLS_ENABLE": "1"}
    up = worker_env(root, tree, base=base, cwd=tmp_path)
    assert up["PYTHONPATH"].split(os.pathsep) == [str(tree), str(root), str(tmp_path / ".devsite"), "/x"]
    assert up[TREE_ENV] == str(tree)
    fork = worker_env(root, None, base=base, cwd=tmp_path)
    assert fork["PYTHONPATH"].split(os.pathsep)[0] == str(root) and TREE_ENV not in fork
    for env in (up, fork):
        assert {k: env[k] for k in NO_MULTICAST} == {
            "NCCL_NVLS_ENABLE": "0",
            "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
            "NVSHMEM_DISABLE_NVLS": "1",
        }


def test_run_worker_streams_results_and_logs_the_rest(tmp_path, capsys):
    code = (
        "import json;print('hello');print('PROGRESS half way', flush=True);"
        "print('RESULT ' + json.dumps({'x': 1}));print('RESULT ' + json.dumps({'x': 2}));raise SystemExit(5)"
    )
    got = []
    rc, log_tail = run_worker(
        [sys.executable, "-c", code],
        env=dict(os.environ),
        cwd=tmp_path,
        log_path=tmp_path / "w.log",
        on_result=got.append,
    )
    assert rc == 5 and got == [{"x": 1}, {"x": 2}]
    assert "hello" in log_tail and "RESULT" not in log_tail
    assert "half way" in capsys.readouterr().out


def test_run_worker_timeout_kills(tmp_path):
    rc, _ = run_worker(
        [sys.executable, "-c", "import time; print('RESULT {}', flush=True); time.sleep(60)"],
        env=dict(os.environ),
        cwd=tmp_path,
        log_path=tmp_path / "w.log",
        on_result=lambda r: None,
        timeout=1.0,
    )
    assert rc is None


def test_phase_and_stats():
    out = {}
    with phase("cpu", out, "calibrate"):
        sum(range(1000))
    assert out["calibrate_s"] > 0 and "calibrate_peak_gib" not in out  # no accelerator memory on CPU
    assert out["calibrate_gc_full"] == 0 and 0 <= out["calibrate_gc_s"] <= out["calibrate_s"]


def test_phase_counts_full_collections():
    out = {}
    with phase("cpu", out, "export"):
        gc.collect()  # a full collection inside the phase
        gc.collect(0)
    assert out["export_gc_full"] == 1 and 0 < out["export_gc_s"] <= out["export_s"]
    assert stats([3.0, None, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0, "n": 3}
    assert stats([None]) == {}
