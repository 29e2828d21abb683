"""The dense behaviour gate on a subset, in the CPU gate (the whole gate: ``tox -e dense-gate``,
recorded in docs/dense-gate.md).

Outside MoE the fork must export what pristine 0.47.0 (+ the CPU shim) exports, file for file
and tensor for tensor, unless a patch declares the change (``dense.DECLARED``). Each item here
was red before the patch it names: FP8 q/k/v and gate/up siblings shared one weight scale
(0014 shared it for FP8 too, where export does not fuse FP8 groups), a dense MistralMLP's
down_proj pre_quant_scale was folded into up_proj in the kept-scale AWQ form (0010 applied its
expert fold to every unlisted gated MLP), and dense AWQ checkpoints were folded by default
(0016's fold, now opt-in for dense models).
"""

from __future__ import annotations

from modelopt_fork.matrix.dense import DECLARED, compare_dirs, run_gate

CELLS = [("llama", "FP8_DEFAULT_CFG"), ("mistral", "NVFP4_AWQ_LITE_CFG"), ("llama", "NVFP4_AWQ_LITE_CFG:folded")]


def test_dense_gate_subset(repo_root, tmp_path):
    # one test, so the six exports (two worker processes) run once under xdist; about 45 s on 2 cores
    rows = {(r["arch"], r["cfg"]): r for r in run_gate(repo_root, CELLS, tmp_path / "dense", log=lambda *a: None)}
    fp8 = rows[("llama", "FP8_DEFAULT_CFG")]
    assert fp8["status"] == "identical", fp8  # 0014 once shared FP8 sibling weight scales
    awq = rows[("mistral", "NVFP4_AWQ_LITE_CFG")]
    assert awq["status"] == "identical", awq  # 0010 once folded a dense MLP's down_proj scale, 0016 every scale
    declared = rows[("llama", "NVFP4_AWQ_LITE_CFG:folded")]
    assert declared["status"] == "declared", declared
    assert declared["patch"] == DECLARED["NVFP4_AWQ_LITE_CFG:folded"][0], declared
    assert "pre_quant_scale" in declared["detail"]  # the fold: pristine's scales are gone from the fork's


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
