"""The dense behaviour gate on a subset (the whole gate: ``tox -e dense-gate``; both outside the CPU
gate for its time budget, recorded in docs/dense-gate.md).

Outside MoE the fork must export what pristine 0.47.0 (+ the CPU shim) exports, file for file
and tensor for tensor, unless a patch declares the change (``dense.DECLARED``). Each item here
was red before the patch it names: FP8 q/k/v and gate/up siblings shared one weight scale
(0014 shared it for FP8 too, where export does not fuse FP8 groups), and a dense MistralMLP's
down_proj pre_quant_scale was folded into up_proj in the kept-scale AWQ form (0010 applied its
expert fold to every unlisted gated MLP).
"""

from __future__ import annotations

import pytest

from modelopt_fork.matrix.dense import DECLARED, compare_dirs, run_gate

CELLS = [("llama", "FP8_DEFAULT_CFG"), ("llama", "NVFP4_AWQ_LITE_CFG"), ("mistral", "NVFP4_AWQ_LITE_CFG:kept")]


@pytest.fixture(scope="module")
def rows(repo_root, tmp_path_factory):
    return {(r["arch"], r["cfg"]): r for r in run_gate(repo_root, CELLS, tmp_path_factory.mktemp("dense"))}


@pytest.mark.slow  # two exporting subprocesses, about 45 s: the CI budget
def test_fp8_dense_checkpoint_is_pristines(rows):
    assert rows[("llama", "FP8_DEFAULT_CFG")]["status"] == "identical", rows[("llama", "FP8_DEFAULT_CFG")]


@pytest.mark.slow  # two exporting subprocesses, about 45 s: the CI budget
def test_kept_scale_awq_dense_checkpoint_is_pristines(rows):
    r = rows[("mistral", "NVFP4_AWQ_LITE_CFG:kept")]
    assert r["status"] == "identical", r


@pytest.mark.slow  # two exporting subprocesses, about 45 s: the CI budget
def test_declared_awq_fold_shows(rows):
    r = rows[("llama", "NVFP4_AWQ_LITE_CFG")]
    assert r["status"] == "declared" and r["patch"] == DECLARED["NVFP4_AWQ_LITE_CFG"][0], r
    assert "pre_quant_scale" in r["detail"]  # the fold: pristine's scales are gone from the fork's


def test_compare_dirs_sees_a_changed_json_and_tensor(tmp_path):
    import json

    import torch
    from safetensors.torch import save_file

    for name, v in (("a", 1.0), ("b", 2.0)):
        d = tmp_path / name
        d.mkdir()
        save_file({"w": torch.full((2, 2), v)}, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps({"k": v}))
    diff = compare_dirs(tmp_path / "a", tmp_path / "b")
    assert any(x.startswith("config.json") for x in diff) and any("differ" in x for x in diff), diff
    assert compare_dirs(tmp_path / "a", tmp_path / "a") == []
