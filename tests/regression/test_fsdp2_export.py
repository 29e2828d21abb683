"""FSDP2 export of fused experts (transformers >= 5) is the single-process export, tensor for tensor.

On 0.47.0 the FSDP2 export of a fused-experts MoE model also holds every layer's fused,
unquantized ``experts.gate_up_proj`` and ``experts.down_proj`` next to their quantized per-expert
split: ``_export_fused_experts`` deletes them from the module, but FSDP2 keeps them in its param
group and sets them back on the module when the layer reshards, so the full state-dict gather
exports them (found by ``benchmarks/gpu_multi_export.py``, CPU and 2 x H200). A world of one
process reproduces it. Fixed by patch 0013.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import modelopt
from _utils.devices import DEVICES
from _utils.tiny_moe import TRANSFORMERS_5
from modelopt_fork.bench.procs import run_worker, worker_env
from modelopt_fork.checkpoint.compare import compare_checkpoints
from modelopt_fork.twin.build import build_twin, calib_ids
from modelopt_fork.twin.fsdp2_export import calibrate_and_export

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not TRANSFORMERS_5, reason="fused experts exist only in transformers >= 5")
@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
@pytest.mark.parametrize("device", DEVICES)
def test_fsdp2_export_equals_single_process_export(device, tmp_path):
    from transformers import AutoModelForCausalLM

    twin = build_twin("qwen3-30b-a3b", seed=11, dtype=torch.bfloat16, num_experts=4, top_k=2, layers=2)
    src = tmp_path / "src"
    twin.model.save_pretrained(src)
    ids = calib_ids(twin.vocab_size, seed=11)
    torch.save(ids, src / "calib_ids.pt")

    # the reference: the same load, calibration and export in one process, no torch.distributed
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).eval().to(device)
    rec: dict = {}
    calibrate_and_export(model, ids, "NVFP4_DEFAULT_CFG", tmp_path / "single", rec)
    assert rec["stage"] == "done"

    tree = Path(modelopt.__file__).resolve().parents[1]  # the fork, or the red tree under red/green
    cmd = [sys.executable, "-m", "modelopt_fork.twin.fsdp2_export", "--src", str(src), "--ids",
           str(src / "calib_ids.pt"), "--dst", str(tmp_path / "fsdp2"), "--device", device]
    env = worker_env(ROOT, tree, cwd=ROOT)
    env["OMP_NUM_THREADS"] = "1"
    results: list[dict] = []
    rc, tail = run_worker(cmd, env=env, cwd=tmp_path, log_path=tmp_path / "fsdp2.log", on_result=results.append,
                          timeout=600)
    assert rc == 0 and results, f"exit {rc}\n{tail}"
    assert "error" not in results[0], f"{results[0]['error']}\n{results[0].get('trace', '')}"

    assert list((tmp_path / "fsdp2").glob("*.safetensors")), "the FSDP2 export wrote no safetensors"
    diff = compare_checkpoints(tmp_path / "single", tmp_path / "fsdp2")
    assert diff.identical, diff.summary()
