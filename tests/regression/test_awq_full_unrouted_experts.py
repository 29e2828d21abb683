"""NVFP4_AWQ_FULL with experts that receive no calibration tokens (transformers < 5).

On 0.47.0, awq_clip disables every linear's weight quantizer for its search and re-enables it
only for linears that saw tokens: an expert the router never picked stays unquantized, and
export then crashes after calibration in requantize_resmooth_fused_llm_layers with
"AssertionError: Modules have different quantization formats" (found by the matrix:
dark-experts and awq-cache-only cells of Qwen3-MoE, Mixtral and DeepSeek-V3). Fixed by
patch 0012. Fused experts (transformers >= 5) are not AWQ-smoothed and do not take this path.
"""

from __future__ import annotations

import pytest
import torch

from _utils.devices import DEVICES
from _utils.tiny_moe import TRANSFORMERS_5
from modelopt_fork.checkpoint.load import load_tensors
from modelopt_fork.matrix.cell import run_cell, stages_for


@pytest.mark.skipif(TRANSFORMERS_5, reason="per-expert nn.Linear experts exist only in transformers < 5")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["qwen3-30b-a3b", "mixtral-8x7b"])
def test_awq_full_exports_unrouted_experts_quantized(arch, device, tmp_path):
    r = run_cell(arch, "NVFP4_AWQ_FULL_CFG", "dark-experts", device=device, out_dir=tmp_path, seed=3,
                 stages=stages_for(device))
    assert r.dark_experts["pass0"] > 0
    assert r.ok, f"{r.stage}: {r.error}\n{r.detail}"
    tensors = load_tensors(tmp_path / "ckpt")
    unquantized = [k for k, v in tensors.items()
                   if ".experts." in k and k.endswith(".weight") and v.dtype != torch.uint8]
    assert not unquantized, unquantized[:4]
