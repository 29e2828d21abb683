"""The example GitHub Actions workflow (examples/github-actions/ci.yml) is valid YAML wired to real commands."""

from __future__ import annotations

import os

import yaml  # PyYAML: a dependency of transformers, so present wherever the tests run

WORKFLOW = "examples/github-actions/ci.yml"


def _runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_example_workflow(repo_root):
    wf = yaml.safe_load((repo_root / WORKFLOW).read_text(encoding="utf-8"))
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert triggers["workflow_dispatch"]["inputs"]["gpu"]["type"] == "boolean"
    assert "labeled" in triggers["pull_request"]["types"]
    jobs = wf["jobs"]

    cpu = jobs["cpu-gate"]
    assert cpu["runs-on"] == "ubuntu-latest" and ".ci/run" in _runs(cpu)
    assert os.access(repo_root / ".ci" / "run", os.X_OK)
    assert "tox -e lint" in _runs(jobs["lint"])
    assert "[testenv:lint]" in (repo_root / "tox.ini").read_text()

    gpu = jobs["gpu"]
    assert gpu["runs-on"] == ["self-hosted", "gpu"] and gpu["needs"] == "cpu-gate"
    assert "inputs.gpu" in gpu["if"] and "'gpu'" in gpu["if"] and "labels" in gpu["if"]
    assert "pytest -m gpu tests" in _runs(gpu) and "torch.cuda.is_available()" in _runs(gpu)
